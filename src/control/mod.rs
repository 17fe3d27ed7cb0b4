//! The control channel of a live daemon, reached through its mount: `stratafs stats` (and
//! `stratafs-mount ls`, and `stratafs refresh`) send their requests as an ioctl on the
//! mount's root directory, so the kernel carries them to the daemon serving it with the
//! caller's uid, which the daemon checks (the mount's owner or root).
//!
//! The ioctl is a FUSE "restricted" one: its command ([`crate::sys::CONTROL_IOCTL`],
//! `_IOWR('S', 1, [u8; 16320])`) tells the kernel how many bytes to copy in and out, at most
//! 16383 (the size field has 14 bits). One message is a 64-byte [`Header`] and up to
//! [`DATA_LEN`] bytes of data; an answer bigger than that (a stats snapshot) is read in
//! pieces: the daemon keeps what it serialized under an id, and each call names the id and
//! the offset it wants (docs/ARCHITECTURE.md has the whole protocol).
//!
//! This module is the protocol and the client side; the daemon's side is
//! `crate::fuse::control`.

pub mod cli;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::stats::Snapshot;
use crate::sys::CONTROL_SIZE;

/// `"STRF"`: the first four bytes of every message (native endian).
pub const MAGIC: u32 = 0x5354_5246;
/// The protocol version this side speaks.
pub const VERSION: u16 = 1;
/// Bytes of a message's header.
pub const HEADER_LEN: usize = 64;
/// Bytes of data one message carries at most.
pub const DATA_LEN: usize = CONTROL_SIZE - HEADER_LEN;

/// What a message asks for.
pub mod op {
    /// Read a statistics snapshot (JSON of [`crate::stats::Snapshot`]): `id` 0 takes a new
    /// one, otherwise the piece of snapshot `id` from `offset`.
    pub const STATS: u16 = 1;
    /// Refresh what the data names: NUL-terminated paths relative to the mount's root, or
    /// nothing for the whole mount. The answer's `id` is a ticket for [`REFRESH_STATUS`].
    pub const REFRESH: u16 = 2;
    /// How refresh `id` is going: the answer's flags have [`super::DONE`] once it is done,
    /// and its data is then a [`super::RefreshDone`] (JSON).
    pub const REFRESH_STATUS: u16 = 3;
}

/// [`op::REFRESH_STATUS`]: the refresh is done.
pub const DONE: u32 = 1;

/// What a refresh did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefreshDone {
    /// Nodes resolved again.
    pub resolved: u64,
    /// Of them, those whose object was gone from their name.
    pub gone: u64,
    /// Notifications the kernel took.
    pub notified: u64,
    /// Notifications it refused (other than for names and nodes it does not hold).
    pub failed: u64,
}

/// A message's header, as the wire carries it (native endian):
///
/// | bytes | field |
/// |---|---|
/// | 0..4 | magic, [`MAGIC`] |
/// | 4..6 | version, [`VERSION`] |
/// | 6..8 | op ([`op`]) |
/// | 8..12 | flags (0) |
/// | 12..16 | len: bytes of data after the header |
/// | 16..24 | id: the snapshot (0: take a new one) |
/// | 24..32 | offset: where the data starts in the whole answer |
/// | 32..40 | total: the whole answer's length (in answers) |
/// | 40..64 | reserved, 0 |
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// What is asked ([`op`]).
    pub op: u16,
    /// Flags of the op (none so far).
    pub flags: u32,
    /// Bytes of data that follow.
    pub len: u32,
    /// Snapshot id.
    pub id: u64,
    /// Offset of the data in the whole answer.
    pub offset: u64,
    /// Length of the whole answer.
    pub total: u64,
}

/// Why a message was refused: the errno the daemon answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub i32);

impl Header {
    /// Writes the header (and `data`) into the start of `buf`; returns the bytes used.
    pub fn write(&self, data: &[u8], buf: &mut [u8]) -> usize {
        let n = HEADER_LEN + data.len();
        buf[..HEADER_LEN].fill(0);
        buf[0..4].copy_from_slice(&MAGIC.to_ne_bytes());
        buf[4..6].copy_from_slice(&VERSION.to_ne_bytes());
        buf[6..8].copy_from_slice(&self.op.to_ne_bytes());
        buf[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        buf[12..16].copy_from_slice(&(data.len() as u32).to_ne_bytes());
        buf[16..24].copy_from_slice(&self.id.to_ne_bytes());
        buf[24..32].copy_from_slice(&self.offset.to_ne_bytes());
        buf[32..40].copy_from_slice(&self.total.to_ne_bytes());
        buf[HEADER_LEN..n].copy_from_slice(data);
        n
    }

    /// Reads a message: its header and its data. `EINVAL` for what is no message of this
    /// protocol, `EPROTONOSUPPORT` for another version of it.
    pub fn read(buf: &[u8]) -> Result<(Header, &[u8]), Refused> {
        let u16_at = |i: usize| u16::from_ne_bytes([buf[i], buf[i + 1]]);
        let u32_at = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[i..i + 8]);
            u64::from_ne_bytes(b)
        };
        if buf.len() < HEADER_LEN || u32_at(0) != MAGIC {
            return Err(Refused(libc::EINVAL));
        }
        if u16_at(4) != VERSION {
            return Err(Refused(libc::EPROTONOSUPPORT));
        }
        let h = Header {
            op: u16_at(6),
            flags: u32_at(8),
            len: u32_at(12),
            id: u64_at(16),
            offset: u64_at(24),
            total: u64_at(32),
        };
        let data = buf
            .get(HEADER_LEN..HEADER_LEN + h.len as usize)
            .ok_or(Refused(libc::EINVAL))?;
        Ok((h, data))
    }
}

/// What went wrong talking to a daemon; each says it in one line.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The path is no stratafs mount point.
    #[error("'{0}' is not a stratafs mount point")]
    NotStratafs(PathBuf),
    /// The path cannot be opened or resolved.
    #[error("'{path}': {}", crate::config::os_error_text(.error))]
    Open {
        /// The path.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// The daemon refused: the caller is neither the mount's owner nor root.
    #[error("'{0}': permission denied: only the user who mounted it, or root, may ask its daemon")]
    Permission(PathBuf),
    /// The daemon answers no control requests (it predates them) or another version.
    #[error("'{0}': its daemon does not answer control requests (an older stratafs?)")]
    Unsupported(PathBuf),
    /// The daemon is gone.
    #[error("'{0}': its daemon is gone (the mount is dead: unmount it)")]
    Gone(PathBuf),
    /// Another failure of the ioctl.
    #[error("'{path}': {}", crate::config::os_error_text(.error))]
    Call {
        /// The mount point.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// The daemon's answer makes no sense.
    #[error("'{0}': the daemon's answer is malformed: {1}")]
    Malformed(PathBuf, String),
}

/// The control channel to the daemon serving one mount.
#[derive(Debug)]
pub struct Channel {
    path: PathBuf,
    fd: OwnedFd,
}

impl Channel {
    /// Opens the channel to the daemon serving the stratafs mount on `mountpoint` (the mount
    /// point itself: the newest mount there must be `fuse.stratafs`).
    pub fn open(mountpoint: &Path) -> Result<Channel, ControlError> {
        let path = mountpoint.to_path_buf();
        let canon =
            std::fs::canonicalize(mountpoint).map_err(|error| match error.raw_os_error() {
                Some(libc::ENOTCONN) => ControlError::Gone(path.clone()),
                _ => ControlError::Open {
                    path: path.clone(),
                    error,
                },
            })?;
        match crate::daemon::mount_type(&canon) {
            Some(t) if t == "fuse.stratafs" => {}
            _ => return Err(ControlError::NotStratafs(path)),
        }
        let fd = rustix::fs::open(
            &canon,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| ControlError::Open {
            path: path.clone(),
            error: e.into(),
        })?;
        Ok(Channel { path, fd })
    }

    /// Sends one message and returns the answer's header and data.
    pub fn call(&self, h: &Header, data: &[u8]) -> Result<(Header, Vec<u8>), ControlError> {
        let mut buf = Box::new([0u8; CONTROL_SIZE]);
        h.write(data, &mut buf[..]);
        if let Err(error) = crate::sys::control_ioctl(self.fd.as_fd(), &mut buf) {
            let path = self.path.clone();
            return Err(match error.raw_os_error() {
                Some(libc::EPERM) => ControlError::Permission(path),
                Some(libc::ENOTTY | libc::ENOSYS | libc::EPROTONOSUPPORT) => {
                    ControlError::Unsupported(path)
                }
                Some(libc::ENOTCONN) => ControlError::Gone(path),
                _ => ControlError::Call { path, error },
            });
        }
        let (h, data) = Header::read(&buf[..])
            .map_err(|_| ControlError::Malformed(self.path.clone(), "bad header".into()))?;
        Ok((h, data.to_vec()))
    }

    /// A statistics snapshot of the daemon.
    pub fn stats(&self) -> Result<Snapshot, ControlError> {
        let bad = |why: String| ControlError::Malformed(self.path.clone(), why);
        // A snapshot dropped between two pieces (other readers took newer ones): again.
        'again: for _ in 0..5 {
            let ask = Header {
                op: op::STATS,
                ..Header::default()
            };
            let (first, mut json) = self.call(&ask, &[])?;
            while (json.len() as u64) < first.total {
                let ask = Header {
                    op: op::STATS,
                    id: first.id,
                    offset: json.len() as u64,
                    ..Header::default()
                };
                match self.call(&ask, &[]) {
                    Ok((h, piece)) if h.offset == json.len() as u64 && !piece.is_empty() => {
                        json.extend_from_slice(&piece)
                    }
                    Ok(_) => return Err(bad("a piece out of place".into())),
                    Err(ControlError::Call { error, .. })
                        if error.raw_os_error() == Some(libc::ESTALE) =>
                    {
                        continue 'again
                    }
                    Err(e) => return Err(e),
                }
            }
            let s: Snapshot = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
            if s.format != crate::stats::FORMAT {
                return Err(ControlError::Unsupported(self.path.clone()));
            }
            return Ok(s);
        }
        Err(bad("snapshots kept vanishing".into()))
    }
}

impl Channel {
    /// Refreshes `paths` (relative to the mount's root, `/`-separated; none: the whole
    /// mount) and waits until the daemon and the kernel have forgotten what they cached.
    pub fn refresh(&self, paths: &[Vec<u8>]) -> Result<RefreshDone, ControlError> {
        let bad = |why: String| ControlError::Malformed(self.path.clone(), why);
        // Paths in messages of at most DATA_LEN bytes, each NUL-terminated.
        let mut batches: Vec<Vec<u8>> = vec![Vec::new()];
        for p in paths {
            if p.len() + 1 > DATA_LEN {
                return Err(ControlError::Call {
                    path: self.path.clone(),
                    error: io::Error::from_raw_os_error(libc::ENAMETOOLONG),
                });
            }
            if batches
                .last()
                .is_some_and(|b| b.len() + p.len() + 1 > DATA_LEN)
            {
                batches.push(Vec::new());
            }
            if let Some(b) = batches.last_mut() {
                b.extend_from_slice(p);
                b.push(0);
            }
        }
        let mut total = RefreshDone::default();
        for batch in batches {
            let ask = Header {
                op: op::REFRESH,
                ..Header::default()
            };
            let (started, _) = self.call(&ask, &batch)?;
            let mut pause = std::time::Duration::from_millis(1);
            let done: RefreshDone = loop {
                let ask = Header {
                    op: op::REFRESH_STATUS,
                    id: started.id,
                    ..Header::default()
                };
                let (h, data) = self.call(&ask, &[])?;
                if h.flags & DONE != 0 {
                    break serde_json::from_slice(&data).map_err(|e| bad(e.to_string()))?;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            };
            total.resolved += done.resolved;
            total.gone += done.gone;
            total.notified += done.notified;
            total.failed += done.failed;
        }
        Ok(total)
    }
}

/// A statistics snapshot of the daemon serving the stratafs mount on `mountpoint`.
pub fn stats(mountpoint: &Path) -> Result<Snapshot, ControlError> {
    Channel::open(mountpoint)?.stats()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = Header {
            op: op::STATS,
            flags: 0,
            len: 3,
            id: 7,
            offset: 16256,
            total: 40000,
        };
        let mut buf = vec![0u8; CONTROL_SIZE];
        assert_eq!(h.write(b"abc", &mut buf), HEADER_LEN + 3);
        let (back, data) = Header::read(&buf).unwrap();
        assert_eq!(back, h);
        assert_eq!(data, b"abc");
    }

    #[test]
    fn foreign_messages_are_refused() {
        let mut buf = vec![0u8; CONTROL_SIZE];
        assert_eq!(Header::read(&buf), Err(Refused(libc::EINVAL)));
        Header::default().write(&[], &mut buf);
        buf[4] = 9;
        assert_eq!(Header::read(&buf), Err(Refused(libc::EPROTONOSUPPORT)));
        Header::default().write(&[], &mut buf);
        buf[12..16].copy_from_slice(&(CONTROL_SIZE as u32).to_ne_bytes());
        assert_eq!(
            Header::read(&buf),
            Err(Refused(libc::EINVAL)),
            "len past the end"
        );
    }

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn the_command_is_a_restricted_read_write_of_the_message_size() {
        let cmd = crate::sys::CONTROL_IOCTL as u32;
        assert_eq!(cmd >> 30, 3, "_IOC_READ | _IOC_WRITE");
        assert_eq!(((cmd >> 16) & 0x3fff) as usize, CONTROL_SIZE);
        assert_eq!((cmd >> 8) & 0xff, u32::from(b'S'));
    }
}

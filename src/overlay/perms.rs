//! `xattr_permissions=1|2`: owner and mode kept in an xattr instead of the layer files' own
//! (fuse-overlayfs's scheme, which containers/storage uses with `force_mask`, and rootless
//! daemons use to record owners they cannot `chown` to).
//!
//! The value is `UID:GID:MODE[:TYPE]`, MODE in octal (containers/storage writes `0:0:0644`,
//! fuse-overlayfs `0:0:100644`, with the file type bits), TYPE as containers/storage writes
//! it (`file`, `dir`, `symlink`, `pipe`, `socket`, `char-MAJ-MIN`, `block-MAJ-MIN`), kept as
//! is and copied up with the object. A special file containers/storage stored as an empty
//! regular file (it cannot make devices under `force_mask`) is shown as the type and device
//! number its TYPE records. The override is read from whichever layer holds the object's
//! topmost copy, under any of the known names; it is written under the name the option selects (1:
//! `security.fuseoverlayfs.override_stat`, 2: `user.containers.override_stat`) whenever the
//! owner or mode changes, on new objects and on copy-up. The layer file's own owner and mode
//! then only need to let the daemon use it.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use super::{Overlay, Result};
use crate::sys::{Object, Stat};

/// `xattr_permissions=1`.
pub const SECURITY_OVERRIDE: &str = "security.fuseoverlayfs.override_stat";
/// `xattr_permissions=2` (containers/storage's name).
pub const CONTAINERS_OVERRIDE: &str = "user.containers.override_stat";
/// What fuse-overlayfs before 1.14 wrote for `xattr_permissions=2`.
pub const FUSEOVERLAYFS_OVERRIDE: &str = "user.fuseoverlayfs.override_stat";

/// Every name an override may be found under, most specific first.
const READ_ORDER: [&str; 3] = [
    CONTAINERS_OVERRIDE,
    SECURITY_OVERRIDE,
    FUSEOVERLAYFS_OVERRIDE,
];

/// The xattr name written for `xattr_permissions=level`.
pub fn override_name(level: u8) -> Option<&'static str> {
    match level {
        1 => Some(SECURITY_OVERRIDE),
        2 => Some(CONTAINERS_OVERRIDE),
        _ => None,
    }
}

/// A parsed override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Owner as stored (before any uid mapping).
    pub uid: u32,
    /// Group as stored.
    pub gid: u32,
    /// Permission bits (`07777`).
    pub perm: u32,
    /// containers/storage's TYPE field, kept as written.
    pub kind: Option<String>,
}

impl Override {
    /// Parses `UID:GID:MODE[:TYPE]`; `None` for anything else.
    pub fn parse(v: &[u8]) -> Option<Override> {
        let s = std::str::from_utf8(v).ok()?;
        let mut f = s.trim_end_matches('\0').splitn(4, ':');
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let mode = u32::from_str_radix(f.next()?, 8).ok()?;
        let kind = f.next().map(str::to_string);
        Some(Override {
            uid,
            gid,
            perm: mode & 0o7777,
            kind,
        })
    }

    /// The file type and device number the TYPE field records for a special file (`pipe`,
    /// `socket`, `char-MAJ-MIN`, `block-MAJ-MIN`), which containers/storage stores as an
    /// empty regular file under `force_mask`; `None` for the other types (kept as they are).
    pub fn special(&self) -> Option<(u32, u64)> {
        let k = self.kind.as_deref()?;
        match k {
            "pipe" => return Some((libc::S_IFIFO, 0)),
            "socket" => return Some((libc::S_IFSOCK, 0)),
            _ => {}
        }
        let (fmt, dev) = match (k.strip_prefix("char-"), k.strip_prefix("block-")) {
            (Some(d), _) => (libc::S_IFCHR, d),
            (_, Some(d)) => (libc::S_IFBLK, d),
            _ => return None,
        };
        let (major, minor) = dev.split_once('-')?;
        Some((fmt, libc::makedev(major.parse().ok()?, minor.parse().ok()?)))
    }

    /// The value as containers/storage writes it.
    pub fn format(&self) -> String {
        match &self.kind {
            Some(k) => format!("{}:{}:0{:o}:{k}", self.uid, self.gid, self.perm),
            None => format!("{}:{}:0{:o}", self.uid, self.gid, self.perm),
        }
    }
}

fn get(at: Object<'_>, name: &str) -> Option<Vec<u8>> {
    at.get_xattr(OsStr::new(name)).ok().flatten()
}

impl Overlay {
    /// The override of the object at `at`, if the mount keeps owners in xattrs and it has
    /// one.
    pub(crate) fn read_override(&self, at: Object<'_>) -> Option<Override> {
        self.perm_xattr?;
        READ_ORDER
            .iter()
            .find_map(|n| get(at, n).and_then(|v| Override::parse(&v)))
    }

    /// `st` with the owner and mode its override records (unchanged without one). An empty
    /// regular file whose override records a special file type is shown as that type (with
    /// its device number), as it was in the image.
    pub(crate) fn overridden(&self, st: Stat, at: Object<'_>) -> Stat {
        with_override(st, self.read_override(at).as_ref())
    }

    /// Records owner and mode for the object at `at` (a no-op unless the mount keeps owners
    /// in xattrs). A TYPE an earlier override recorded is kept.
    pub(crate) fn write_override(
        &self,
        at: Object<'_>,
        uid: u32,
        gid: u32,
        perm: u32,
    ) -> Result<()> {
        if self.perm_xattr.is_none() {
            return Ok(());
        }
        let kind = self.read_override(at).and_then(|o| o.kind);
        self.write_raw_override(
            at,
            &Override {
                uid,
                gid,
                perm: perm & 0o7777,
                kind,
            },
        )
    }

    /// Writes override `o` for the object at `at`, under the name the mount uses.
    pub(crate) fn write_raw_override(&self, at: Object<'_>, o: &Override) -> Result<()> {
        let Some(name) = self.perm_xattr else {
            return Ok(());
        };
        Ok(at.set_xattr(OsStr::new(name), o.format().as_bytes(), 0)?)
    }

    /// True when owners and modes live in override xattrs.
    pub(crate) fn keeps_perms_in_xattrs(&self) -> bool {
        self.perm_xattr.is_some()
    }
}

/// `st` as override `o` shows it (see [`Overlay::overridden`]).
pub(crate) fn with_override(mut st: Stat, o: Option<&Override>) -> Stat {
    if let Some(o) = o {
        st.uid = o.uid;
        st.gid = o.gid;
        st.mode = (st.mode & libc::S_IFMT) | o.perm;
        if st.mode & libc::S_IFMT == libc::S_IFREG && st.size == 0 {
            if let Some((fmt, rdev)) = o.special() {
                st.mode = fmt | o.perm;
                st.rdev = rdev;
            }
        }
    }
    st
}

/// The `xattr_permissions` level a stack asks for by itself: the level of the first override
/// found on a layer root (fuse-overlayfs's auto-detection), else 0.
pub fn detect(roots: &[BorrowedFd<'_>]) -> u8 {
    for root in roots {
        for (name, level) in [
            (CONTAINERS_OVERRIDE, 2),
            (FUSEOVERLAYFS_OVERRIDE, 2),
            (SECURITY_OVERRIDE, 1),
        ] {
            if get(Object::Fd(*root), name).is_some() {
                return level;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let o = Override::parse(b"1000:1000:0750").unwrap();
        assert_eq!(
            (o.uid, o.gid, o.perm, o.kind.as_deref()),
            (1000, 1000, 0o750, None)
        );
        assert_eq!(o.format(), "1000:1000:0750");
        // fuse-overlayfs writes the type bits too.
        let o = Override::parse(b"0:0:100755").unwrap();
        assert_eq!(o.perm, 0o755);
        let o = Override::parse(b"5:6:04755:char-1-3").unwrap();
        assert_eq!(o.perm, 0o4755);
        assert_eq!(o.format(), "5:6:04755:char-1-3");
        for bad in [&b""[..], b"1:2", b"a:b:c", b"1:2:9", b"1:2:", b"\xff"] {
            assert_eq!(Override::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn special_types() {
        let t = |v: &[u8]| Override::parse(v).and_then(|o| o.special());
        assert_eq!(
            t(b"0:0:0666:char-1-3"),
            Some((libc::S_IFCHR, libc::makedev(1, 3)))
        );
        assert_eq!(
            t(b"0:0:0660:block-259-1"),
            Some((libc::S_IFBLK, libc::makedev(259, 1)))
        );
        assert_eq!(t(b"0:0:0644:pipe"), Some((libc::S_IFIFO, 0)));
        assert_eq!(t(b"0:0:0644:socket"), Some((libc::S_IFSOCK, 0)));
        for plain in [
            &b"0:0:0644"[..],
            b"0:0:0644:file",
            b"0:0:0755:dir",
            b"0:0:0777:symlink",
        ] {
            assert_eq!(t(plain), None);
        }
        for bad in [
            &b"0:0:0644:char-1"[..],
            b"0:0:0644:char-x-1",
            b"0:0:0644:fifo",
        ] {
            assert_eq!(t(bad), None);
        }
    }

    #[test]
    fn names_per_level() {
        assert_eq!(override_name(0), None);
        assert_eq!(override_name(1), Some(SECURITY_OVERRIDE));
        assert_eq!(override_name(2), Some(CONTAINERS_OVERRIDE));
    }
}

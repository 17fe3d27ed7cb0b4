//! The one dispatcher every transport feeds: a request's bytes in, the call on
//! [`StrataFs`], the reply's bytes out through the transport that brought it. It checks who
//! may ask (`allow_root`), opens a tracing span per request (request id, operation, node,
//! pid), and logs each failed request once, at the level its error calls for.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tracing::{debug, error, trace, warn, Level};

use super::abi::{self, fattr, op, Args, InHeader, Malformed};
use super::{Fh, StrataFs};
use crate::inode::NodeId;
use crate::overlay::{Error, SetAttr};
use crate::sys::{self, FileReplyError, SetTime};

/// Who may use the mount besides the kernel's own checks (`allow_other`, `allow_root`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only the user who mounted it (the kernel enforces this without `allow_other`).
    Owner,
    /// That user and root (`allow_root`: mounted `allow_other`, filtered here).
    RootAndOwner,
    /// Everyone (`allow_other`).
    All,
}

/// The caller of a request.
#[derive(Debug, Clone, Copy)]
pub struct Req {
    /// The request's id.
    pub unique: u64,
    /// fs uid.
    pub uid: u32,
    /// fs gid.
    pub gid: u32,
    /// Thread group id.
    pub pid: u32,
}

/// What a handler answers with.
#[derive(Debug)]
pub enum Response {
    /// Nothing: the request expects no reply (forget).
    NoReply,
    /// Success with this body (possibly empty).
    Body(Vec<u8>),
    /// Success with at most `len` bytes of `fd` from `offset`, fewer at end of file: a
    /// READ served through the daemon. Each transport moves the bytes its cheapest way
    /// ([`Transport::reply_file`]).
    File {
        /// The open file.
        fd: Arc<OwnedFd>,
        /// Where the read starts.
        offset: u64,
        /// How much the kernel asked for.
        len: usize,
    },
    /// Success with this body (an OPEN's), sent after the transport put the whole of the
    /// small lower file `fd` in the kernel's page cache of `node`, where it can
    /// ([`Transport::store`]): the reader's first READ is answered before it is asked.
    Prefetched {
        /// The reply.
        body: Vec<u8>,
        /// The node opened.
        node: NodeId,
        /// The file opened.
        fd: Arc<OwnedFd>,
        /// Its size, where the open learned it.
        size: Option<u64>,
    },
}

impl Response {
    /// Success with no body.
    pub fn empty() -> Response {
        Response::Body(Vec::new())
    }
}

/// A handler's result.
pub type Outcome = Result<Response, Error>;

/// Carries replies back to the kernel: the `/dev/fuse` fd a request was read from, or an
/// io_uring entry.
pub trait Transport {
    /// Sends the reply to request `unique`: `error` is 0 or a negative errno.
    fn reply(&self, unique: u64, error: i32, body: &[u8]) -> io::Result<()>;

    /// Sends the successful reply to request `unique`: at most `len` bytes of `fd` from
    /// `offset`, fewer at end of file. By default they are read into memory and sent with
    /// [`Transport::reply`].
    fn reply_file(
        &self,
        unique: u64,
        fd: &Arc<OwnedFd>,
        offset: u64,
        len: usize,
    ) -> Result<(), FileReplyError> {
        reply_copied(self, unique, fd.as_fd(), offset, len)
    }

    /// Puts the whole of the small file `fd` (of `size` bytes, where known) in the kernel's
    /// page cache of `node`, where the transport can and it is worth a system call; true
    /// when it dealt with the file (stored it, or found it empty or too big to store), so
    /// that later opens need not try again. By default it does not.
    fn store(&self, _node: NodeId, _fd: &Arc<OwnedFd>, _size: Option<u64>) -> bool {
        false
    }
}

/// The reply of file data read into memory and sent with [`Transport::reply`].
pub fn reply_copied<T: Transport + ?Sized>(
    t: &T,
    unique: u64,
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> Result<(), FileReplyError> {
    let data = sys::pread_exact_or_eof(fd, len, offset).map_err(FileReplyError::Read)?;
    t.reply(unique, 0, &data).map_err(FileReplyError::Send)
}

/// Whether the serving loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next request.
    Continue,
    /// The kernel said goodbye (`FUSE_DESTROY`).
    Stop,
}

/// The dispatcher of one mount.
#[derive(Debug)]
pub struct Dispatcher {
    fs: StrataFs,
    access: Access,
    owner: u32,
    /// Requests per opcode, with their latencies.
    requests: crate::stats::Requests,
    control: super::control::Control,
}

/// Logs the failure `e` of request `h` (operation `name`) once, at the level it calls for,
/// and answers it with its errno.
fn fail(t: &dyn Transport, h: &InHeader, name: &str, e: &Error) -> io::Result<()> {
    let code = e.errno();
    match e.level() {
        // The request's id, operation and node in the line itself: the span carrying them
        // is off at the default level.
        Level::ERROR => {
            error!(id = h.unique, op = name, node = h.nodeid.get(), errno = code, error = %e, "failed")
        }
        Level::WARN => {
            warn!(id = h.unique, op = name, node = h.nodeid.get(), errno = code, error = %e, "failed")
        }
        Level::DEBUG => debug!(errno = code, error = %e, "failed"),
        _ => trace!(errno = code, error = %e, "failed"),
    }
    t.reply(h.unique, -code, &[])
}

/// Answers a request whose header does not parse (starting `buf`) with `EIO`, if its id
/// can be read.
fn malformed(buf: &[u8], t: &dyn Transport) -> Flow {
    warn!(len = buf.len(), "malformed FUSE request header");
    if let Some(u) = buf.get(8..16) {
        let mut b = [0u8; 8];
        b.copy_from_slice(u);
        let _ = t.reply(u64::from_ne_bytes(b), -libc::EIO, &[]);
    }
    Flow::Continue
}

/// An errno as an [`Error`].
pub(crate) fn os(code: i32) -> Error {
    Error::Io(io::Error::from_raw_os_error(code))
}

impl Dispatcher {
    /// A dispatcher serving `fs` for requests `access` allows (`owner`: the mounting user).
    pub fn new(fs: StrataFs, access: Access, owner: u32) -> Dispatcher {
        Dispatcher {
            fs,
            access,
            owner,
            requests: crate::stats::Requests::default(),
            control: super::control::Control::new(owner),
        }
    }

    /// The front end it serves.
    pub fn fs(&self) -> &StrataFs {
        &self.fs
    }

    /// The request counters.
    pub fn requests(&self) -> &crate::stats::Requests {
        &self.requests
    }

    pub(crate) fn control(&self) -> &super::control::Control {
        &self.control
    }

    /// Serves one request read from `t` and replies through it.
    pub fn handle(&self, buf: &[u8], t: &dyn Transport) -> Flow {
        match abi::parse_request(buf) {
            Ok((h, args)) => self.serve(h, args, t),
            Err(Malformed) => malformed(buf, t),
        }
    }

    /// Serves one request that arrived in parts (FUSE over io_uring: the header, the
    /// operation's first argument and the payload, see [`abi::parse_parts`]), read where
    /// they lie, and replies through `t`.
    pub fn handle_parts(
        &self,
        header: &[u8],
        op_in: &[u8],
        payload: &[u8],
        t: &dyn Transport,
    ) -> Flow {
        match abi::parse_parts(header, op_in, payload) {
            Ok((h, args)) => self.serve(h, args, t),
            Err(Malformed) => malformed(header, t),
        }
    }

    /// Serves the request `h` with arguments `args`.
    fn serve(&self, h: InHeader, mut args: Args<'_>, t: &dyn Transport) -> Flow {
        // Counted (with its latency) when this drops, whichever way the request ends.
        let mut timing = self.requests.start(h.opcode);
        let name = abi::op_name(h.opcode);
        let span = tracing::debug_span!(
            "req",
            id = h.unique,
            op = name,
            node = h.nodeid.get(),
            pid = h.pid
        );
        let _in_span = span.enter();
        debug!(uid = h.uid, len = h.len, "request");
        if h.opcode == op::DESTROY {
            let _ = t.reply(h.unique, 0, &[]);
            return Flow::Stop;
        }
        let outcome = if self.refused(&h) {
            Err(os(libc::EACCES))
        } else {
            let req = Req {
                unique: h.unique,
                uid: h.uid,
                gid: h.gid,
                pid: h.pid,
            };
            match self.call(&h, &mut args, &req) {
                Ok(o) => o,
                Err(Malformed) => {
                    warn!("malformed arguments");
                    Err(os(libc::EINVAL))
                }
            }
        };
        timing.failed = outcome.is_err();
        let sent = match outcome {
            Ok(Response::NoReply) => return Flow::Continue,
            Ok(Response::Body(b)) => t.reply(h.unique, 0, &b),
            Ok(Response::Prefetched {
                body,
                node,
                fd,
                size,
            }) => {
                if t.store(node, &fd, size) {
                    // Later opens need not try again.
                    self.fs.overlay.give_data(node);
                }
                t.reply(h.unique, 0, &body)
            }
            Ok(Response::File { fd, offset, len }) => {
                match t.reply_file(h.unique, &fd, offset, len) {
                    Ok(()) => Ok(()),
                    Err(FileReplyError::Read(e)) => fail(t, &h, name, &Error::Io(e)),
                    Err(FileReplyError::Send(e)) => Err(e),
                    Err(FileReplyError::Unsupported) => fail(t, &h, name, &os(libc::EIO)),
                }
            }
            Err(e) => fail(t, &h, name, &e),
        };
        // ENOENT: the request was interrupted and the kernel no longer waits for it.
        if let Err(e) = sent {
            if e.raw_os_error() != Some(libc::ENOENT) {
                debug!(error = %e, "reply not sent");
            }
        }
        Flow::Continue
    }

    /// `allow_root`: requests of other users are refused, except those the kernel sends
    /// on behalf of no one in particular (writeback, release, forget). Without
    /// `allow_other` the kernel itself lets no one but the owner in, so whatever reaches
    /// the daemon is served: the requests the kernel makes on its own (the flusher writing
    /// back data and times, as uid 0) included.
    fn refused(&self, h: &InHeader) -> bool {
        let other = match self.access {
            Access::All | Access::Owner => false,
            Access::RootAndOwner => h.uid != self.owner && h.uid != 0,
        };
        other
            && !matches!(
                h.opcode,
                op::READ
                    | op::READDIR
                    | op::READDIRPLUS
                    | op::FORGET
                    | op::BATCH_FORGET
                    | op::WRITE
                    | op::FSYNC
                    | op::FSYNCDIR
                    | op::RELEASE
                    | op::RELEASEDIR
            )
    }

    /// Decodes the arguments of `h`'s operation and calls its handler.
    fn call(&self, h: &InHeader, a: &mut Args<'_>, req: &Req) -> Result<Outcome, Malformed> {
        let fs = &self.fs;
        let node = h.nodeid;
        Ok(match h.opcode {
            op::LOOKUP => fs.lookup(node, a.name()?),
            op::FORGET => {
                fs.forget(node, a.u64()?);
                Ok(Response::NoReply)
            }
            op::BATCH_FORGET => {
                let count = a.u32()?;
                a.u32()?;
                for _ in 0..count {
                    let (id, n) = (a.node()?, a.u64()?);
                    fs.forget(id, n);
                }
                Ok(Response::NoReply)
            }
            op::GETATTR => {
                let flags = a.u32()?;
                a.u32()?;
                let fh = a.fh()?;
                fs.getattr(node, (flags & abi::GETATTR_FH != 0).then_some(fh))
            }
            op::SETATTR => {
                let (set, fh) = setattr_args(a)?;
                fs.setattr(req, node, set, fh)
            }
            op::READLINK => fs.readlink(node),
            op::SYMLINK => {
                let name = a.name()?;
                let target = a.name()?;
                fs.symlink(req, node, name, target)
            }
            op::MKNOD => {
                let (mode, rdev, umask) = (a.u32()?, a.u32()?, a.u32()?);
                a.u32()?;
                fs.mknod(req, node, a.name()?, mode, umask, rdev)
            }
            op::MKDIR => {
                let (mode, umask) = (a.u32()?, a.u32()?);
                fs.mkdir(req, node, a.name()?, mode, umask)
            }
            op::UNLINK => fs.unlink(node, a.name()?),
            op::RMDIR => fs.rmdir(node, a.name()?),
            op::RENAME | op::RENAME2 => {
                let newdir = a.node()?;
                let flags = if h.opcode == op::RENAME2 {
                    let f = a.u32()?;
                    a.u32()?;
                    f
                } else {
                    0
                };
                let (from, to) = (a.name()?, a.name()?);
                fs.rename(node, from, newdir, to, flags)
            }
            op::LINK => {
                let old = a.node()?;
                fs.link(old, node, a.name()?)
            }
            op::OPEN => {
                let flags = a.u32()?;
                fs.open(req, node, flags as i32)
            }
            op::READ => {
                let (fh, offset, size) = (a.fh()?, a.u64()?, a.u32()?);
                fs.read(node, fh, offset, size)
            }
            op::WRITE => {
                let (fh, offset, size) = (a.fh()?, a.u64()?, a.u32()?);
                a.u32()?;
                a.u64()?;
                a.u32()?;
                a.u32()?;
                let data = a.bytes(size as usize)?;
                fs.write(req, node, fh, offset, data)
            }
            op::STATFS => fs.statfs(),
            op::RELEASE => fs.release(node, a.fh()?),
            op::FSYNC => {
                let fh = a.fh()?;
                let flags = a.u32()?;
                fs.fsync(node, fh, flags & 1 != 0)
            }
            op::SETXATTR => {
                let (size, flags) = (a.u32()?, a.u32()?);
                let name = a.name()?;
                let value = a.bytes(size as usize)?;
                fs.setxattr(req, node, name, value, flags as i32)
            }
            op::GETXATTR => {
                let size = a.u32()?;
                a.u32()?;
                fs.getxattr(node, a.name()?, size)
            }
            op::LISTXATTR => fs.listxattr(node, a.u32()?),
            op::REMOVEXATTR => fs.removexattr(node, a.name()?),
            // Nothing to flush: data goes to the layer file on each write (or through
            // passthrough; the writeback cache is written back by the kernel before it
            // would send FLUSH), and locks are the kernel's. ENOSYS makes the kernel stop
            // sending FLUSH: one round trip less per close().
            op::FLUSH => Err(os(libc::ENOSYS)),
            op::OPENDIR => fs.opendir(node),
            op::READDIR | op::READDIRPLUS => {
                let (fh, offset, size) = (a.fh()?, a.u64()?, a.u32()?);
                fs.readdir(node, fh, offset, size, h.opcode == op::READDIRPLUS)
            }
            op::RELEASEDIR => fs.releasedir(a.fh()?),
            op::FSYNCDIR => fs.fsyncdir(node),
            op::ACCESS => fs.access(node, a.u32()? as i32),
            op::CREATE => {
                let (flags, mode, umask) = (a.u32()?, a.u32()?, a.u32()?);
                a.u32()?;
                fs.create(req, node, a.name()?, mode, umask, flags as i32)
            }
            op::IOCTL => {
                a.u64()?;
                a.u32()?;
                let cmd = a.u32()?;
                a.u64()?;
                let (in_size, out_size) = (a.u32()?, a.u32()?);
                let data = a.bytes(in_size as usize)?;
                if cmd == super::control::CMD {
                    self.control_request(req, data, out_size)
                } else {
                    fs.ioctl(node, cmd, data, out_size)
                }
            }
            op::FALLOCATE => {
                let (fh, offset, length, mode) = (a.fh()?, a.u64()?, a.u64()?, a.u32()?);
                fs.fallocate(node, fh, offset, length, mode as i32)
            }
            op::LSEEK => {
                let (fh, offset, whence) = (a.fh()?, a.u64()?, a.u32()?);
                fs.lseek(node, fh, offset as i64, whence as i32)
            }
            op::COPY_FILE_RANGE => {
                let (fh_in, off_in) = (a.fh()?, a.u64()?);
                a.u64()?;
                let (fh_out, off_out, len) = (a.fh()?, a.u64()?, a.u64()?);
                fs.copy_file_range(node, fh_in, off_in, fh_out, off_out, len)
            }
            // INIT is answered once, before serving starts; one now is a protocol error.
            op::INIT => Err(os(libc::EIO)),
            // Interrupts: ENOSYS tells the kernel not to send them (requests are short).
            // Locks (GETLK/SETLK) stay the kernel's local ones; the rest is not offered.
            _ => Err(os(libc::ENOSYS)),
        })
    }
}

/// Decodes `struct fuse_setattr_in` into the changes and the handle it names.
fn setattr_args(a: &mut Args<'_>) -> Result<(SetAttr, Option<Fh>), Malformed> {
    let valid = a.u32()?;
    a.u32()?;
    let fh = a.fh()?;
    let size = a.u64()?;
    a.u64()?;
    let (atime, mtime) = (a.u64()?, a.u64()?);
    a.u64()?;
    let (atimensec, mtimensec) = (a.u32()?, a.u32()?);
    a.u32()?;
    let mode = a.u32()?;
    a.u32()?;
    let (uid, gid) = (a.u32()?, a.u32()?);
    let time = |set: u32, now: u32, secs: u64, nsec: u32| {
        if valid & now != 0 {
            Some(SetTime::Now)
        } else if valid & set != 0 {
            Some(SetTime::At(abi::time_from_parts(secs, nsec)))
        } else {
            None
        }
    };
    let set = SetAttr {
        mode: (valid & fattr::MODE != 0).then_some(mode),
        uid: (valid & fattr::UID != 0).then_some(uid),
        gid: (valid & fattr::GID != 0).then_some(gid),
        size: (valid & fattr::SIZE != 0).then_some(size),
        atime: time(fattr::ATIME, fattr::ATIME_NOW, atime, atimensec),
        mtime: time(fattr::MTIME, fattr::MTIME_NOW, mtime, mtimensec),
    };
    Ok((set, (valid & fattr::FH != 0).then_some(fh)))
}

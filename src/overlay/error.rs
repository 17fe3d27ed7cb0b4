//! Why an overlay operation failed: one variant per answer the union semantics mean, and
//! [`Error::Syscall`] for a layer's system call that failed, naming the call and the object.
//! Each error maps to exactly one errno ([`Error::errno`]) and knows how loudly it should be
//! logged ([`Error::level`]): an answer the caller asked for (no such name, not empty, a
//! rename the union refuses) at `DEBUG` or `TRACE`, a layer that fails (`EIO`, `ENOSPC`,
//! `EMFILE`, ...) at `WARN` or `ERROR`, so an operator sees a failing mount in the log.

use std::ffi::OsStr;
use std::fmt;
use std::io;

use tracing::Level;

/// Why an operation failed; each maps to one errno.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a layer failed: which call, on which name (a name in its directory,
    /// or a path from the layer root). Made with [`Context::ctx`].
    #[error("{op}{}: {source}", Named(name))]
    Syscall {
        /// The call (`mkdir`, `rename`, `copy up`...).
        op: &'static str,
        /// The object's name or path fragment; empty for a layer root or an open fd.
        name: Box<OsStr>,
        /// What the call answered.
        source: io::Error,
    },
    /// A system call failed where nothing says which (an `io::Error` converted with `?`).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The name does not exist in the merged view. Kept without the name: lookups of
    /// missing names are the hottest failure and must not allocate.
    #[error("no such entry")]
    NotFound,
    /// The node id is not (or no longer) known, or what the kernel holds for it is out of date.
    #[error("unknown node {0}")]
    StaleNode(crate::inode::NodeId),
    /// A write on a read-only union (`ro`, or no upper layer).
    #[error("read-only union")]
    ReadOnly,
    /// The name is reserved by the whiteout format (`.wh.*`).
    #[error("name is reserved for whiteouts")]
    ReservedName,
    /// Not a single path component: empty, `.`, `..` or holding a `/`.
    #[error("not a valid name")]
    InvalidName,
    /// The name already exists in the merged view.
    #[error("already exists")]
    Exists,
    /// A directory that must be empty (rmdir, rename over it) has entries in the merged view.
    #[error("directory not empty")]
    NotEmpty,
    /// The object is not a directory.
    #[error("not a directory")]
    NotDir,
    /// The object is a directory.
    #[error("is a directory")]
    IsDir,
    /// Not a symlink (readlink).
    #[error("not a symlink")]
    NotSymlink,
    /// A rename the union cannot do in place: a directory with lower copies (without
    /// `redirect_dir`, as the kernel's overlayfs answers, so `mv` falls back to copying).
    #[error("cross-device rename: {0}")]
    CrossDevice(&'static str),
    /// An operation the union refuses whatever the caller's rights (`EPERM`), and why.
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// An argument that cannot apply to this object (`EINVAL`), and why.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// An inode-flag ioctl on a kind of file that takes none (`ENOTTY`, as the kernel answers).
    #[error("no inode flags on this kind of file")]
    NoInodeFlags,
    /// The caller's uid or gid has no mapping to the layers (`uidmapping=`, `gidmapping=`),
    /// so nothing it creates could be owned (`EOVERFLOW`, as the kernel answers).
    #[error("caller's id has no mapping in the layers")]
    Unmapped,
    /// A new owner (chown, a named ACL entry) has no mapping to the layers (`EINVAL`).
    #[error("owner has no mapping in the layers")]
    UnmappedOwner,
    /// The node table holds a cycle of parents: a bug, refused rather than spun on.
    #[error("cycle in the node table")]
    NodeCycle,
    /// An xattr that is not there (or private to the overlay).
    #[error("no such attribute")]
    NoXattr,
    /// Xattrs are switched off (`noxattrs`).
    #[error("xattrs not supported")]
    XattrUnsupported,
    /// A concurrent change moved a name between lookup and lock; the operation retries.
    #[error("raced with a concurrent change")]
    Raced,
    /// A metacopy file whose data no layer below holds (`EIO`, as the kernel's lookup
    /// answers).
    #[error("metacopy with no lower data found")]
    NoLowerData,
    /// An `overlay.metacopy` value too short for the kernel's format (`EIO`, as the
    /// kernel's lookup answers).
    #[error("metacopy file has too small xattr")]
    BadMetacopy,
    /// `verity=on|require`: the data of a metacopy file does not have the fs-verity digest
    /// the file records (or has none), or `require` finds no digest recorded (`EIO`, as
    /// the kernel's open answers).
    #[error("fs-verity: {0}")]
    Verity(&'static str),
    /// `index=on`: the index entry of a lower hard link is not a file of its type (a
    /// whiteout, another type) (`EIO`, as the kernel's lookup answers).
    #[error("bad index found")]
    BadIndex,
}

/// Shows a [`Error::Syscall`]'s name after its operation, quoted and escaped, or nothing
/// when it has none.
struct Named<'a>(&'a OsStr);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " {:?}", self.0)
        }
    }
}

impl Error {
    /// The errno to report.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Syscall { source: e, .. } | Error::Io(e) => {
                e.raw_os_error().unwrap_or(libc::EIO)
            }
            Error::NotFound => libc::ENOENT,
            Error::StaleNode(_) => libc::ESTALE,
            Error::ReadOnly => libc::EROFS,
            Error::ReservedName | Error::InvalidName => libc::EINVAL,
            Error::Exists => libc::EEXIST,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotSymlink => libc::EINVAL,
            Error::CrossDevice(_) => libc::EXDEV,
            Error::NotPermitted(_) => libc::EPERM,
            Error::Invalid(_) => libc::EINVAL,
            Error::NoInodeFlags => libc::ENOTTY,
            Error::Unmapped => libc::EOVERFLOW,
            Error::UnmappedOwner => libc::EINVAL,
            Error::NodeCycle => libc::ELOOP,
            Error::NoXattr => libc::ENODATA,
            Error::XattrUnsupported => libc::ENOTSUP,
            Error::Raced => libc::EAGAIN,
            Error::NoLowerData | Error::BadMetacopy | Error::Verity(_) | Error::BadIndex => {
                libc::EIO
            }
        }
    }

    /// How loudly a request that failed with this error is logged: `TRACE` for the answers
    /// asked for many times a second (a missing name, a missing xattr, a retried race),
    /// `DEBUG` for the other answers the union means, and for a layer's system call the
    /// level of its errno ([`errno_level`]). A bug the core refused to act on is `ERROR`.
    pub fn level(&self) -> Level {
        match self {
            Error::Syscall { .. } | Error::Io(_) => errno_level(self.errno()),
            Error::NotFound | Error::NoXattr | Error::Raced => Level::TRACE,
            Error::NodeCycle => Level::ERROR,
            Error::NoLowerData | Error::BadMetacopy | Error::Verity(_) | Error::BadIndex => {
                Level::WARN
            }
            Error::StaleNode(_)
            | Error::ReadOnly
            | Error::ReservedName
            | Error::InvalidName
            | Error::Exists
            | Error::NotEmpty
            | Error::NotDir
            | Error::IsDir
            | Error::NotSymlink
            | Error::CrossDevice(_)
            | Error::NotPermitted(_)
            | Error::Invalid(_)
            | Error::NoInodeFlags
            | Error::Unmapped
            | Error::UnmappedOwner
            | Error::XattrUnsupported => Level::DEBUG,
        }
    }

    /// The layer's own answer, when a system call failed.
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            Error::Syscall { source, .. } | Error::Io(source) => Some(source),
            _ => None,
        }
    }

    /// A layer's call found no object there (`ENOENT`, or `ENOTDIR` on the way).
    pub(crate) fn is_absent(&self) -> bool {
        self.os_error().is_some_and(crate::layer::is_absent)
    }
}

/// The log level of a layer's system call that failed with `errno`: `DEBUG` for the answers
/// a file system gives callers every day (`ENOENT`, `EEXIST`, `EACCES`, `ENOTSUP`...), which
/// say nothing about the layer's health; `ERROR` for a layer that cannot be read right
/// (`EIO`, a corrupted file system); `WARN` for everything else: a full or read-only layer
/// (`ENOSPC`, `EDQUOT`, `EROFS`), exhausted resources (`EMFILE`, `ENFILE`, `ENOMEM`) and
/// any errno the core does not expect.
pub fn errno_level(errno: i32) -> Level {
    match errno {
        libc::ENOENT
        | libc::ENOTDIR
        | libc::EISDIR
        | libc::EEXIST
        | libc::ENOTEMPTY
        | libc::ENODATA
        | libc::EACCES
        | libc::EPERM
        | libc::EINVAL
        | libc::ENAMETOOLONG
        | libc::ELOOP
        | libc::EXDEV
        | libc::ENOTSUP
        | libc::ENOSYS
        | libc::ENOTTY
        | libc::EAGAIN
        | libc::EINTR
        | libc::ESTALE
        | libc::ERANGE
        | libc::E2BIG
        | libc::EFBIG
        | libc::EOVERFLOW
        | libc::EBUSY
        | libc::ETXTBSY
        | libc::EMLINK
        | libc::ENXIO => Level::DEBUG,
        libc::EIO | libc::EUCLEAN | libc::EBADMSG => Level::ERROR,
        _ => Level::WARN,
    }
}

/// Names the system call and the object of a failed layer call:
/// `sys::mkdir_at(dir, name, mode).ctx("mkdir", name)?`. The name is copied only when the
/// call failed.
pub trait Context<T> {
    /// Turns the error into [`Error::Syscall`] with `op` and `name`.
    fn ctx<N: AsRef<OsStr> + ?Sized>(self, op: &'static str, name: &N) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, io::Error> {
    fn ctx<N: AsRef<OsStr> + ?Sized>(self, op: &'static str, name: &N) -> Result<T, Error> {
        self.map_err(|source| Error::Syscall {
            op,
            name: name.as_ref().into(),
            source,
        })
    }
}

impl<T> Context<T> for Result<T, rustix::io::Errno> {
    fn ctx<N: AsRef<OsStr> + ?Sized>(self, op: &'static str, name: &N) -> Result<T, Error> {
        self.map_err(io::Error::from).ctx(op, name)
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::Io(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    /// Every variant that is not a system call: its errno, its level and its text.
    fn domain() -> Vec<(Error, i32, Level, &'static str)> {
        use Level as L;
        vec![
            (Error::NotFound, libc::ENOENT, L::TRACE, "no such entry"),
            (
                Error::StaleNode(crate::inode::NodeId::from_wire(7)),
                libc::ESTALE,
                L::DEBUG,
                "unknown node 7",
            ),
            (Error::ReadOnly, libc::EROFS, L::DEBUG, "read-only union"),
            (
                Error::ReservedName,
                libc::EINVAL,
                L::DEBUG,
                "name is reserved for whiteouts",
            ),
            (
                Error::InvalidName,
                libc::EINVAL,
                L::DEBUG,
                "not a valid name",
            ),
            (Error::Exists, libc::EEXIST, L::DEBUG, "already exists"),
            (
                Error::NotEmpty,
                libc::ENOTEMPTY,
                L::DEBUG,
                "directory not empty",
            ),
            (Error::NotDir, libc::ENOTDIR, L::DEBUG, "not a directory"),
            (Error::IsDir, libc::EISDIR, L::DEBUG, "is a directory"),
            (Error::NotSymlink, libc::EINVAL, L::DEBUG, "not a symlink"),
            (
                Error::CrossDevice("why"),
                libc::EXDEV,
                L::DEBUG,
                "cross-device rename: why",
            ),
            (
                Error::NotPermitted("why"),
                libc::EPERM,
                L::DEBUG,
                "operation not permitted: why",
            ),
            (
                Error::Invalid("why"),
                libc::EINVAL,
                L::DEBUG,
                "invalid argument: why",
            ),
            (
                Error::NoInodeFlags,
                libc::ENOTTY,
                L::DEBUG,
                "no inode flags on this kind of file",
            ),
            (
                Error::Unmapped,
                libc::EOVERFLOW,
                L::DEBUG,
                "caller's id has no mapping in the layers",
            ),
            (
                Error::UnmappedOwner,
                libc::EINVAL,
                L::DEBUG,
                "owner has no mapping in the layers",
            ),
            (
                Error::NodeCycle,
                libc::ELOOP,
                L::ERROR,
                "cycle in the node table",
            ),
            (Error::NoXattr, libc::ENODATA, L::TRACE, "no such attribute"),
            (
                Error::XattrUnsupported,
                libc::ENOTSUP,
                L::DEBUG,
                "xattrs not supported",
            ),
            (
                Error::Raced,
                libc::EAGAIN,
                L::TRACE,
                "raced with a concurrent change",
            ),
        ]
    }

    #[test]
    fn domain_variants_map_to_their_errno_level_and_text() {
        for (e, errno, level, text) in domain() {
            assert_eq!(e.errno(), errno, "{e:?}");
            assert_eq!(e.level(), level, "{e:?}");
            assert_eq!(e.to_string(), text, "{e:?}");
            assert!(e.os_error().is_none(), "{e:?}");
        }
    }

    #[test]
    fn a_syscall_keeps_its_errno_and_names_the_call_and_the_object() {
        let e: Result<(), _> = Err(os(libc::ENOSPC));
        let e = e.ctx("copy up", OsStr::new("a/b")).unwrap_err();
        assert_eq!(e.errno(), libc::ENOSPC);
        assert_eq!(e.level(), Level::WARN);
        let text = e.to_string();
        assert!(text.starts_with("copy up \"a/b\": "), "{text}");
        assert!(text.contains(&os(libc::ENOSPC).to_string()), "{text}");
        assert_eq!(
            e.os_error().and_then(io::Error::raw_os_error),
            Some(libc::ENOSPC)
        );
    }

    #[test]
    fn a_syscall_name_is_escaped_and_an_empty_one_left_out() {
        let e = Err::<(), _>(os(libc::EIO))
            .ctx("rename", OsStr::new("x\ny"))
            .unwrap_err();
        assert!(e.to_string().starts_with("rename \"x\\ny\": "), "{e}");
        let e = Err::<(), _>(rustix::io::Errno::MFILE)
            .ctx("open", "")
            .unwrap_err();
        assert!(e.to_string().starts_with("open: "), "{e}");
        assert_eq!(e.errno(), libc::EMFILE);
    }

    #[test]
    fn an_io_error_without_context_keeps_its_errno() {
        assert_eq!(Error::from(os(libc::ENOENT)).errno(), libc::ENOENT);
        assert_eq!(Error::from(rustix::io::Errno::NOSPC).errno(), libc::ENOSPC);
        let plain = Error::from(io::Error::other("no errno"));
        assert_eq!(plain.errno(), libc::EIO);
        assert_eq!(plain.level(), Level::ERROR);
    }

    #[test]
    fn absent_means_enoent_or_enotdir_from_a_layer() {
        assert!(Error::from(os(libc::ENOENT)).is_absent());
        assert!(Err::<(), _>(os(libc::ENOTDIR))
            .ctx("open", "d")
            .unwrap_err()
            .is_absent());
        assert!(!Error::NotFound.is_absent());
        assert!(!Error::from(os(libc::EIO)).is_absent());
    }

    #[test]
    fn layer_failures_are_loud_and_everyday_answers_quiet() {
        for quiet in [
            libc::ENOENT,
            libc::EEXIST,
            libc::ENOTEMPTY,
            libc::ENODATA,
            libc::EACCES,
            libc::EPERM,
            libc::EXDEV,
            libc::ENOTSUP,
        ] {
            assert_eq!(errno_level(quiet), Level::DEBUG, "{}", os(quiet));
        }
        for warn in [
            libc::ENOSPC,
            libc::EDQUOT,
            libc::EROFS,
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EBADF,
        ] {
            assert_eq!(errno_level(warn), Level::WARN, "{}", os(warn));
        }
        for error in [libc::EIO, libc::EUCLEAN, libc::EBADMSG] {
            assert_eq!(errno_level(error), Level::ERROR, "{}", os(error));
        }
    }
}

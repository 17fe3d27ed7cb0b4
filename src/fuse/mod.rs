//! The thin `fuser::Filesystem` adapter: convert the request, call [`Overlay`], reply.
//!
//! It owns what only FUSE has: open file and directory handles, the kernel's cache timeouts,
//! and the capabilities negotiated at init. Every failed operation is logged at debug level
//! with its errno; nothing here can panic.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::path::Path;
use tracing::debug;

use crate::config::Passthrough;
use crate::overlay::{Attr, Caller, Error, Listing, NewObject, Overlay, RenameFlag, SetAttr};
use crate::sys::{self, FileKind};

/// An open handle.
#[derive(Debug)]
enum Handle {
    File(Arc<OpenFile>),
    Dir(Arc<DirHandle>),
}

/// An open file.
#[derive(Debug)]
struct OpenFile {
    fd: parking_lot::RwLock<Arc<OwnedFd>>,
    /// Opened on a lower layer: once the file is copied up, reads go to the upper copy (as
    /// with the kernel's overlayfs).
    lower: AtomicBool,
    /// The file had setuid/setgid bits when last looked at.
    setid: AtomicBool,
    /// Reads and writes go straight to the backing file in the kernel.
    passthrough: bool,
    /// Opened to execute the file.
    exec: bool,
}

impl OpenFile {
    fn current(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.fd.read())
    }
}

const SETID: u32 = libc::S_ISUID | libc::S_ISGID;

/// The inode-flag ioctls the kernel's fileattr calls send (`linux/fs.h`).
const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;
const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;

/// `__FMODE_EXEC`: the kernel passes it in the open flags of the open that `execve` makes.
const FMODE_EXEC: i32 = 0x20;

/// File capabilities: dropped on a write by an unprivileged caller, like setuid.
const CAPS_XATTR: &str = "security.capability";

/// The permission bits `mode` keeps after a write or truncate by the caller of `req` (not
/// root): setuid goes, setgid goes when the group may execute or the caller is not in the
/// file's group `gid`.
fn kept_mode(mode: u32, gid: u32, req: &Request) -> u32 {
    let mut m = mode & 0o7777 & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !caller_in_group(req, gid)) {
        m &= !libc::S_ISGID;
    }
    m
}

/// True when the caller of `req` is in group `gid` (its primary group or one of the
/// supplementary groups its process lists).
fn caller_in_group(req: &Request, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        .unwrap_or(false)
}

/// An open directory: the listing its last read used, kept while it is current (a listing
/// too big for the shared cache is then not rebuilt for every read). Offsets are cookies:
/// 1 is after ".", 2 after "..", an entry's cookie after that entry.
#[derive(Debug, Default)]
struct DirHandle {
    listing: parking_lot::Mutex<Option<Arc<Listing>>>,
}

/// The FUSE front end of one mount.
#[derive(Debug)]
pub struct StrataFs {
    overlay: Arc<Overlay>,
    handles: DashMap<u64, Handle>,
    /// Open files per node.
    node_io: DashMap<u64, NodeIo>,
    next_fh: AtomicU64,
    ttl: Duration,
    /// The kernel granted FUSE passthrough (root only).
    passthrough: bool,
}

/// The open files of one node.
///
/// Passthrough policy: the kernel wants every open of an inode to use one backing file,
/// and no mixing of passthrough and cached opens. A regular file is opened in passthrough
/// when it has no setuid/setgid bits or capabilities (a write through the backing file
/// would not drop them) and no cached open of it is live; once one passthrough open is
/// live, every further open of the node shares its backing file. The backing file is the
/// upper copy, or while the file has none, its lower copy opened read-only (only readers
/// open a lower copy: a writer copies it up first).
///
/// A copy-up while the lower copy is open in passthrough: the open handles keep reading
/// the lower copy (as files opened read-only before a copy-up do on the kernel's
/// overlayfs), and the next open of the node, which needs the upper copy, cannot share
/// their backing file. The node is then retired ([`Overlay::retire`]) and that open
/// answered `ESTALE`: the kernel walks the path again, its lookup makes a new node for the
/// name (with an inode number of its own while the old one is held), and the open proceeds
/// on it.
#[derive(Debug)]
struct NodeIo {
    /// Open handles.
    opens: usize,
    /// The newest open fd: a file unlinked while open has no name left, and `fstat` sends
    /// no handle, so its attributes come from here.
    newest: Arc<OwnedFd>,
    /// How many of the handles are in passthrough, all on `backing`.
    passthrough: usize,
    /// How many of the handles were opened to execute the file (`__FMODE_EXEC`): while
    /// any is, a truncating open gets `ETXTBSY`, as the kernel gives it.
    execs: usize,
    backing: Option<Arc<fuser::BackingId>>,
    /// `backing` is the upper copy (else a lower copy, read-only).
    backing_upper: bool,
}

impl StrataFs {
    /// Answers a request that yields a (new or looked-up) entry.
    fn reply_entry(&self, reply: ReplyEntry, op: &str, ino: u64, result: Result<Attr, Error>) {
        match result {
            Ok(a) => reply.entry(&self.ttl, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(op, ino, &e)),
        }
    }

    /// A front end serving `overlay`, telling the kernel to cache entries and attributes for
    /// `ttl`.
    pub fn new(overlay: Arc<Overlay>, ttl: Duration) -> StrataFs {
        StrataFs {
            overlay,
            handles: DashMap::new(),
            node_io: DashMap::new(),
            next_fh: AtomicU64::new(1),
            ttl,
            passthrough: false,
        }
    }

    /// Registers an open file of node `ino` (`lower`: opened on a lower layer) and returns
    /// its handle and, for a passthrough open, the backing file to reply with. `None` when
    /// the open cannot share the node's passthrough backing file: that is a lower copy, and
    /// the node has been copied up since (see [`NodeIo`]); `fd` is then closed.
    fn add_file(
        &self,
        ino: u64,
        fd: OwnedFd,
        lower: bool,
        exec: bool,
        open_backing: impl FnOnce(&OwnedFd) -> io::Result<fuser::BackingId>,
    ) -> Option<(FileHandle, Arc<OpenFile>, Option<Arc<fuser::BackingId>>)> {
        // Privileges a write must drop: setuid/setgid bits or file capabilities. Such files
        // are never in passthrough (writes through the backing file would keep them).
        let setid = sys::stat_fd(fd.as_fd())
            .map(|st| st.mode & SETID != 0)
            .unwrap_or(false)
            || matches!(
                sys::get_xattr(fd.as_fd(), OsStr::new(CAPS_XATTR)),
                Ok(Some(_))
            );
        let fd = Arc::new(fd);
        let opts = self.overlay.options();
        let eligible = self.passthrough
            && !setid
            && (!lower || opts.read_only || opts.passthrough == Passthrough::All);
        let mut io = self.node_io.entry(ino).or_insert_with(|| NodeIo {
            opens: 0,
            newest: Arc::clone(&fd),
            passthrough: 0,
            execs: 0,
            backing: None,
            backing_upper: false,
        });
        if io.passthrough > 0 && !io.backing_upper && self.overlay.is_copied_up(ino) {
            return None;
        }
        let cached_live = io.opens - io.passthrough > 0;
        io.opens += 1;
        io.execs += usize::from(exec);
        io.newest = Arc::clone(&fd);
        let backing = if io.passthrough > 0 {
            io.backing.clone()
        } else if eligible && !cached_live {
            // A read-only open of a file with no upper copy: its own fd is the backing file.
            let opened = if lower && !self.overlay.is_copied_up(ino) {
                open_backing(&fd).map(|b| (b, false)).map_err(Error::from)
            } else {
                self.overlay
                    .backing_fd(ino)
                    .and_then(|(b, upper)| Ok((open_backing(&b)?, upper)))
            };
            match opened {
                Ok((b, upper)) => {
                    io.backing_upper = upper;
                    Some(Arc::new(b))
                }
                Err(e) => {
                    debug!(ino, error = %e, "no passthrough for this open");
                    None
                }
            }
        } else {
            None
        };
        if backing.is_some() {
            io.passthrough += 1;
            io.backing = backing.clone();
        }
        drop(io);
        let of = Arc::new(OpenFile {
            fd: parking_lot::RwLock::new(fd),
            lower: AtomicBool::new(lower),
            setid: AtomicBool::new(setid),
            passthrough: backing.is_some(),
            exec,
        });
        Some((self.add_handle(Handle::File(Arc::clone(&of))), of, backing))
    }

    fn open_file(&self, fh: FileHandle) -> Option<Arc<OpenFile>> {
        match self.handles.get(&fh.0).as_deref() {
            Some(Handle::File(f)) => Some(Arc::clone(f)),
            _ => None,
        }
    }

    /// The fd to read `fh` from: a handle opened on a lower copy moves to the upper copy once
    /// the file has been copied up.
    fn read_fd(&self, fh: FileHandle, ino: u64) -> Option<Arc<OwnedFd>> {
        let of = self.open_file(fh)?;
        if of.lower.load(Ordering::Acquire) && self.overlay.is_copied_up(ino) {
            let mut cur = of.fd.write();
            if of.lower.load(Ordering::Acquire) {
                match self.overlay.open(ino, libc::O_RDONLY) {
                    Ok(f) => {
                        *cur = Arc::new(f.fd);
                        of.lower.store(false, Ordering::Release);
                    }
                    Err(e) => debug!(ino, error = %e, "reopen after copy-up failed"),
                }
            }
        }
        Some(of.current())
    }

    /// A write by someone other than root drops setuid, and setgid when the group may
    /// execute or the writer is not in the file's group, and file capabilities: what a local
    /// filesystem does (the kernel leaves it to us under handle_killpriv_v2).
    fn kill_setid(&self, ino: u64, of: &OpenFile, req: &Request) {
        if req.uid() == 0 || !of.setid.load(Ordering::Relaxed) {
            return;
        }
        let fd = of.current();
        let Ok(st) = sys::stat_fd(fd.as_fd()) else {
            return;
        };
        let mode = kept_mode(st.mode, self.overlay.idmap().gid_to_mount(st.gid), req);
        if mode != st.mode & 0o7777 {
            match rustix::fs::fchmod(&*fd, rustix::fs::Mode::from_raw_mode(mode)) {
                Ok(()) => self.overlay.attrs_changed(ino),
                Err(e) => debug!(error = %e, "dropping setuid/setgid bits failed"),
            }
        }
        if let Err(e) = sys::remove_xattr(fd.as_fd(), OsStr::new(CAPS_XATTR)) {
            if e.raw_os_error() != Some(libc::ENODATA) {
                debug!(error = %e, "dropping file capabilities failed");
            }
        }
        of.setid.store(false, Ordering::Relaxed);
    }

    /// After an access ACL was set by a caller outside the file's group (and not root), the
    /// setgid bit goes, as a local filesystem's `posix_acl_update_mode` drops it. The kernel
    /// would say so with `FUSE_SETXATTR_ACL_KILL_SGID`, but only in the extended setxattr
    /// request that fuser 0.18 cannot parse, so the daemon decides from the caller itself.
    fn acl_kill_sgid(&self, ino: u64, req: &Request) -> Result<(), crate::overlay::Error> {
        if req.uid() == 0 {
            return Ok(());
        }
        let a = self.overlay.getattr(ino)?;
        let perm = u32::from(a.perm);
        if perm & libc::S_ISGID == 0 || caller_in_group(req, a.gid) {
            return Ok(());
        }
        let set = crate::overlay::SetAttr {
            mode: Some(perm & !libc::S_ISGID),
            ..Default::default()
        };
        self.overlay.setattr(ino, set, None).map(|_| ())
    }

    /// An open fd on node `ino`, if any file of it is open.
    fn open_fd(&self, ino: u64) -> Option<Arc<OwnedFd>> {
        self.node_io.get(&ino).map(|e| Arc::clone(&e.newest))
    }

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.insert(fh, h);
        FileHandle(fh)
    }

    fn file(&self, fh: FileHandle) -> Option<Arc<OwnedFd>> {
        self.open_file(fh).map(|f| f.current())
    }

    /// The current listing of open directory `fh` (of node `ino`).
    fn listing(&self, fh: FileHandle, ino: u64) -> Result<Arc<Listing>, Errno> {
        let dir = match self.handles.get(&fh.0).as_deref() {
            Some(Handle::Dir(d)) => Arc::clone(d),
            _ => return Err(Errno::from_i32(libc::EBADF)),
        };
        let mut cur = dir.listing.lock();
        if let Some(l) = &*cur {
            if self.overlay.listing_still_current(ino, l) {
                return Ok(Arc::clone(l));
            }
        }
        let l = self
            .overlay
            .listing(ino)
            .map_err(|e| errno("readdir", ino, &e))?;
        *cur = Some(Arc::clone(&l));
        Ok(l)
    }
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: SystemTime::UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: if a.blksize == 0 { 4096 } else { a.blksize },
        flags: 0,
    }
}

/// Attributes that carry only a node id (`.`/`..` entries).
fn dot_attr(ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    caller_with_umask(req, 0)
}

/// The caller of a request that creates something, with the umask the kernel sent.
fn caller_with_umask(req: &Request, umask: u32) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        umask,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<sys::SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => sys::SetTime::Now,
        TimeOrNow::SpecificTime(t) => sys::SetTime::At(t),
    })
}

fn errno(op: &str, ino: u64, e: &Error) -> Errno {
    let code = e.errno();
    debug!(op, ino, errno = code, error = %e, "failed");
    Errno::from_i32(code)
}

fn io_errno(op: &str, ino: u64, e: io::Error) -> Errno {
    errno(op, ino, &Error::Io(e))
}

/// Answers a request whose only result is success or an errno.
fn reply_empty(reply: ReplyEmpty, op: &str, ino: u64, result: Result<(), Error>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, ino, &e)),
    }
}

/// Replies to xattr requests: the size when asked for it, ERANGE when the buffer is short.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

impl fuser::Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        for cap in [
            // Always readdirplus (no _AUTO): a listing is nearly always followed by stats of
            // its entries, and each separate LOOKUP is a round trip.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_MAX_PAGES,
            // The truncation of an O_TRUNC open happens at FUSE_OPEN: a lower file is then
            // copied up without its data (otherwise the kernel opens for writing, which
            // copies everything up, and truncates after). The kernel checks ETXTBSY for
            // writable opens before FUSE_OPEN but for `O_RDONLY|O_TRUNC` only after it, so
            // the daemon refuses to truncate a node open for execution itself (`execs`).
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            // We drop setuid/setgid/capabilities ourselves: otherwise the kernel asks for
            // security.capability before every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            if config.add_capabilities(cap).is_err() {
                debug!(?cap, "kernel lacks capability");
            }
        }
        // POSIX ACLs: the kernel enforces them from the ACL xattrs, and leaves the umask to
        // the daemon (which skips it under a default ACL, as the filesystem does).
        if self.overlay.acl()
            && config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_ok()
            && config.add_capabilities(InitFlags::FUSE_DONT_MASK).is_err()
        {
            debug!("kernel lacks FUSE_DONT_MASK");
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Passthrough needs CAP_SYS_ADMIN for the backing-file ioctl, and a stacking depth
        // of 1 (layers on ordinary filesystems; this mount may still sit under an overlay).
        if sys::admin_in_initial_userns()
            && self.overlay.options().passthrough != Passthrough::Off
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough = true;
        }
        // Otherwise (a daemon without CAP_SYS_ADMIN: rootless podman's) the writeback cache,
        // as fuse-overlayfs's `writeback=1`: writes gather in the page cache and reach the
        // daemon as large requests. The two are exclusive. Handles are opened read-write
        // whatever the open asked for (the kernel reads pages to fill partial writes), and
        // never O_APPEND (the kernel places appended data itself).
        let writeback = !self.passthrough
            && self.overlay.options().writeback
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok();
        debug!(passthrough = self.passthrough, writeback, "init");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        debug!(op = "lookup", parent = parent.0, ?name);
        // A missing name is answered ENOENT, not as a negative entry the kernel could cache
        // (node id 0 with a timeout): a negative entry the kernel trusts is never asked about
        // again, so a node left at a stale name (see `flush`) could not heal; and with them
        // the load test saw a persistent ENOENT.
        self.reply_entry(
            reply,
            "lookup",
            parent.0,
            self.overlay.lookup(parent.0, name),
        )
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.overlay.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        debug!(op = "getattr", ino = ino.0);
        // An open file may have lost its name (unlinked while open): stat the handle.
        if let Some(fd) = fh.and_then(|fh| self.file(fh)) {
            match self.overlay.attr_of_fd(ino.0, fd.as_fd()) {
                Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
                Err(e) => reply.error(errno("getattr", ino.0, &e)),
            }
            return;
        }
        let r = match self.overlay.getattr(ino.0) {
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ESTALE) => match self.open_fd(ino.0)
            {
                Some(fd) => self.overlay.attr_of_fd(ino.0, fd.as_fd()),
                None => Err(e),
            },
            r => r,
        };
        match r {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno("getattr", ino.0, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        debug!(op = "readlink", ino = ino.0);
        match self.overlay.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", ino.0, &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        debug!(op = "open", ino = ino.0, flags = flags.0);
        // With atomic O_TRUNC the kernel checks ETXTBSY for `O_RDONLY|O_TRUNC` only after
        // this open has truncated: a running program would be destroyed (see `init`).
        if flags.0 & libc::O_TRUNC != 0 && self.node_io.get(&ino.0).is_some_and(|io| io.execs > 0) {
            reply.error(Errno::from_i32(libc::ETXTBSY));
            return;
        }
        let exec = flags.0 & FMODE_EXEC != 0;
        match self.overlay.open(ino.0, flags.0) {
            Ok(f) => {
                let keep = if f.immutable {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                let Some((fh, of, backing)) =
                    self.add_file(ino.0, f.fd, f.immutable, exec, |fd| reply.open_backing(fd))
                else {
                    debug!(
                        ino = ino.0,
                        "open after a copy-up under passthrough: node retired"
                    );
                    self.overlay.retire(ino.0);
                    reply.error(Errno::from_i32(libc::ESTALE));
                    return;
                };
                if flags.0 & libc::O_TRUNC != 0 {
                    // A truncating open is a write (atomic O_TRUNC: no setattr follows).
                    self.kill_setid(ino.0, &of, req);
                }
                match backing {
                    Some(b) => reply.opened_passthrough(fh, FopenFlags::empty(), &b),
                    None => reply.opened(fh, keep),
                }
            }
            Err(e) => reply.error(errno("open", ino.0, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(fd) = self.read_fd(fh, ino.0) else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        match sys::pread_exact_or_eof(fd.as_fd(), size as usize, offset) {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(io_errno("read", ino.0, e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some((_, Handle::File(of))) = self.handles.remove(&fh.0) {
            self.node_io.remove_if_mut(&ino.0, |_, io| {
                io.opens = io.opens.saturating_sub(1);
                if of.exec {
                    io.execs = io.execs.saturating_sub(1);
                }
                if of.passthrough {
                    io.passthrough = io.passthrough.saturating_sub(1);
                    if io.passthrough == 0 {
                        io.backing = None;
                    }
                }
                io.opens == 0
            });
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        debug!(op = "opendir", ino = ino.0);
        match self.overlay.check_dir(ino.0) {
            Ok(()) => {
                let fh = self.add_handle(Handle::Dir(Arc::new(DirHandle::default())));
                // The kernel caches the entries per inode, filled by whichever handle reads;
                // offsets are name cookies served from the current listing, so every handle
                // fills it alike. The kernel drops its cache by itself when a change goes
                // through the mount; after a change it cannot see (a copy-up reorders the
                // merge) the last listing handed out is no longer current, and the open then
                // asks it to drop the cache.
                let mut flags = FopenFlags::FOPEN_CACHE_DIR;
                if self.overlay.listing_is_current(ino.0) {
                    flags |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(fh, flags);
            }
            Err(e) => reply.error(errno("opendir", ino.0, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.listing(fh, ino.0) {
            Ok(l) => l,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let parent = self.overlay.parent_of(ino.0);
        let dots = [(1u64, ino.0, "."), (2, parent, "..")];
        for (next, dino, name) in dots {
            if offset < next && reply.add(INodeNo(dino), next, FileType::Directory, name) {
                reply.ok();
                return;
            }
        }
        for e in list.after(offset) {
            let Ok(eino) = self.overlay.entry_ino(ino.0, e) else {
                // Gone since the listing was taken: skip it, as a fresh listing would.
                continue;
            };
            if reply.add(INodeNo(eino), e.cookie, file_type(e.kind), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let list = match self.listing(fh, ino.0) {
            Ok(l) => l,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        // "." and ".." carry no lookup reference: the kernel never links dot entries of a
        // readdirplus reply to inodes (fuse_direntplus_link returns early for them), and fuser
        // sends `attr.ino` as d_ino, which must not be 0 or libc hides the entry.
        let dots = [(1u64, ino.0, "."), (2, self.overlay.parent_of(ino.0), "..")];
        for (next, dino, name) in dots {
            if offset < next {
                let attr = dot_attr(dino);
                if reply.add(
                    INodeNo(dino),
                    next,
                    name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    reply.ok();
                    return;
                }
            }
        }
        for e in list.after(offset) {
            let attr = match self.overlay.lookup_entry(ino.0, &list, e) {
                Ok(a) => a,
                // Gone since the listing was taken: skip it, as a fresh listing would.
                Err(_) => continue,
            };
            if reply.add(
                INodeNo(attr.ino),
                e.cookie,
                &e.name,
                &self.ttl,
                &file_attr(&attr),
                Generation(0),
            ) {
                // Not sent: give back the reference the lookup took.
                self.overlay.forget(attr.ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.handles.remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.overlay.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", 1, &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        debug!(op = "getxattr", ino = ino.0, ?name);
        match self.overlay.getxattr(ino.0, name) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno("getxattr", ino.0, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        debug!(op = "listxattr", ino = ino.0);
        match self.overlay.listxattr(ino.0) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno("listxattr", ino.0, &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        reply_empty(
            reply,
            "access",
            ino.0,
            self.overlay.access(ino.0, mask.bits()),
        )
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(fd) = self.file(fh) else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        match sys::seek(fd.as_fd(), offset, whence) {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => reply.error(io_errno("lseek", ino.0, e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        debug!(op = "setattr", ino = ino.0, ?mode, ?uid, ?gid, ?size);
        let req = _req;
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let file = fh.and_then(|fh| self.file(fh));
        let r = match self
            .overlay
            .setattr(ino.0, set, file.as_ref().map(|f| f.as_fd()))
        {
            // No name left (unlinked while open): change the open file itself.
            Err(e) if e.errno() == libc::ENOENT && file.is_none() => match self.open_fd(ino.0) {
                Some(fd) => self.overlay.setattr(ino.0, set, Some(fd.as_fd())),
                None => Err(e),
            },
            r => r,
        };
        // With handle_killpriv_v2 a truncate by someone other than root drops the setuid
        // and setgid bits here, as a local filesystem would.
        let r = match r {
            Ok(a) if size.is_some() && mode.is_none() && req.uid() != 0 => {
                let kept = kept_mode(u32::from(a.perm), a.gid, req);
                if kept != u32::from(a.perm) {
                    let set = SetAttr {
                        mode: Some(kept),
                        ..SetAttr::default()
                    };
                    self.overlay
                        .setattr(ino.0, set, file.as_ref().map(|f| f.as_fd()))
                } else {
                    Ok(a)
                }
            }
            r => r,
        };
        match r {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno("setattr", ino.0, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        debug!(op = "mknod", parent = parent.0, ?name, mode, rdev);
        let obj = if mode & libc::S_IFMT == libc::S_IFREG {
            NewObject::File {
                flags: libc::O_RDONLY,
            }
        } else {
            NewObject::Node {
                file_type: mode & libc::S_IFMT,
                rdev: u64::from(rdev),
            }
        };
        self.reply_entry(
            reply,
            "mknod",
            parent.0,
            self.overlay
                .create(parent.0, name, obj, mode, caller_with_umask(req, umask))
                .map(|(a, _)| a),
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        debug!(op = "mkdir", parent = parent.0, ?name, mode);
        self.reply_entry(
            reply,
            "mkdir",
            parent.0,
            self.overlay
                .create(
                    parent.0,
                    name,
                    NewObject::Dir,
                    mode,
                    caller_with_umask(req, umask),
                )
                .map(|(a, _)| a),
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        debug!(op = "symlink", parent = parent.0, ?link_name, ?target);
        let obj = NewObject::Symlink(target.as_os_str().to_os_string());
        self.reply_entry(
            reply,
            "symlink",
            parent.0,
            self.overlay
                .create(parent.0, link_name, obj, 0o777, caller(req))
                .map(|(a, _)| a),
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        debug!(op = "create", parent = parent.0, ?name, mode, flags);
        match self.overlay.create(
            parent.0,
            name,
            NewObject::File { flags },
            mode,
            caller_with_umask(req, umask),
        ) {
            Ok((a, Some(fd))) => {
                // A new object's node has no earlier opens, so it shares no backing file.
                let Some((fh, _, backing)) =
                    self.add_file(a.ino, fd, false, false, |fd| reply.open_backing(fd))
                else {
                    self.overlay.forget(a.ino, 1);
                    reply.error(Errno::from_i32(libc::EIO));
                    return;
                };
                let attr = file_attr(&a);
                match backing {
                    Some(b) => reply.created_passthrough(
                        &self.ttl,
                        &attr,
                        Generation(0),
                        fh,
                        FopenFlags::empty(),
                        &b,
                    ),
                    None => reply.created(&self.ttl, &attr, Generation(0), fh, FopenFlags::empty()),
                }
            }
            Ok((a, None)) => {
                self.overlay.forget(a.ino, 1);
                reply.error(Errno::from_i32(libc::EIO));
            }
            Err(e) => reply.error(errno("create", parent.0, &e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!(op = "unlink", parent = parent.0, ?name);
        reply_empty(
            reply,
            "unlink",
            parent.0,
            self.overlay.unlink(parent.0, name),
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!(op = "rmdir", parent = parent.0, ?name);
        reply_empty(reply, "rmdir", parent.0, self.overlay.rmdir(parent.0, name))
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        debug!(
            op = "rename",
            parent = parent.0,
            ?name,
            newparent = newparent.0,
            ?newname,
            flags = flags.bits()
        );
        let flag = if flags.is_empty() {
            RenameFlag::Plain
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameFlag::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameFlag::Exchange
        } else {
            // RENAME_WHITEOUT from a client, or a combination: not for callers of a union.
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        };
        reply_empty(
            reply,
            "rename",
            parent.0,
            self.overlay
                .rename(parent.0, name, newparent.0, newname, flag),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        debug!(op = "link", ino = ino.0, newparent = newparent.0, ?newname);
        self.reply_entry(
            reply,
            "link",
            ino.0,
            self.overlay.link(ino.0, newparent.0, newname),
        )
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(of) = self.open_file(fh) else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        match sys::pwrite_all(of.current().as_fd(), data, offset) {
            Ok(()) => {
                self.kill_setid(ino.0, &of, req);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(io_errno("write", ino.0, e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush: data goes to the layer file on each write (or through
        // passthrough; the writeback cache is written back by the kernel before it would
        // send FLUSH), and locks are the kernel's. ENOSYS makes the kernel stop sending
        // FLUSH: one round trip less per close(). (It was answered until the race it
        // exposed under load, a node left at a name it no longer had, was found to heal
        // itself: such requests now get ESTALE and the kernel looks the name up again.)
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let Some(fd) = self.file(fh) else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        reply_empty(
            reply,
            "fsync",
            ino.0,
            self.overlay.fsync(fd.as_fd(), datasync),
        )
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, "fsyncdir", ino.0, self.overlay.fsyncdir(ino.0))
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        debug!(op = "setxattr", ino = ino.0, ?name);
        let mut r = self.overlay.setxattr(ino.0, name, value, flags);
        if r.is_ok() && name == crate::layer::idmap::ACCESS_ACL && self.overlay.acl() {
            r = self.acl_kill_sgid(ino.0, req);
        }
        reply_empty(reply, "setxattr", ino.0, r)
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!(op = "removexattr", ino = ino.0, ?name);
        reply_empty(
            reply,
            "removexattr",
            ino.0,
            self.overlay.removexattr(ino.0, name),
        )
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(fd) = self.file(fh) else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        reply_empty(
            reply,
            "fallocate",
            ino.0,
            sys::fallocate(fd.as_fd(), mode, offset, length).map_err(Error::Io),
        )
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        // The kernel's fileattr calls (lsattr, chattr, xfs_io's fsxattr) reach us as these
        // ioctls on a handle it opened for the purpose. A get reads the visible copy, a set
        // copies up first; the kernel has checked the caller's rights. Anything else: ENOTTY.
        let ino = ino.0;
        let r = match cmd {
            FS_IOC_GETFLAGS | FS_IOC32_GETFLAGS => self
                .overlay
                .inode_flags(ino)
                .map(|f| f.to_ne_bytes().to_vec()),
            FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS => match <[u8; 4]>::try_from(in_data) {
                Ok(b) => self
                    .overlay
                    .set_inode_flags(ino, u32::from_ne_bytes(b))
                    .map(|()| Vec::new()),
                Err(_) => Err(Error::Io(io::Error::from_raw_os_error(libc::EINVAL))),
            },
            FS_IOC_FSGETXATTR => self.overlay.fs_xattr(ino).map(|a| a.to_vec()),
            FS_IOC_FSSETXATTR => match <[u8; sys::FSXATTR_SIZE]>::try_from(in_data) {
                Ok(a) => self.overlay.set_fs_xattr(ino, a).map(|()| Vec::new()),
                Err(_) => Err(Error::Io(io::Error::from_raw_os_error(libc::EINVAL))),
            },
            _ => Err(Error::Io(io::Error::from_raw_os_error(libc::ENOTTY))),
        };
        match r {
            Ok(data) if data.len() <= out_size as usize => reply.ioctl(0, &data),
            Ok(_) => reply.error(Errno::from_i32(libc::EINVAL)),
            Err(e) => reply.error(errno("ioctl", ino, &e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let (Some(src), Some(dst)) = (self.file(fh_in), self.file(fh_out)) else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        let len = len.min(u64::from(u32::MAX >> 1)) as usize;
        match sys::copy_range(src.as_fd(), offset_in, dst.as_fd(), offset_out, len) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(io_errno("copy_file_range", ino_in.0, e)),
        }
    }
}

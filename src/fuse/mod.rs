//! The FUSE front end: the handlers behind the [`dispatch::Dispatcher`] (convert the
//! request, call [`Overlay`], encode the reply), over either transport: [`devfuse`], or FUSE
//! over io_uring ([`uring`]).
//!
//! It owns what only FUSE has: open file and directory handles, passthrough backing files,
//! the kernel's cache timeouts, and the capabilities negotiated at init. Node ids and the
//! `st_ino` shown are kept apart on the wire ([`abi`]). Nothing here can panic.

pub mod abi;
mod control;
pub mod devfuse;
pub mod dispatch;
pub mod uring;

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use fuser::{InitFlags, KernelConfig};
use tracing::debug;

use self::abi::{fopen, DirBuf, Out, WireAttr};
use self::dispatch::{os, Outcome, Req, Response};
use crate::config::Passthrough;
use crate::inode::NodeId;
use crate::overlay::{Attr, Caller, Error, Listing, NewObject, Overlay, RenameFlag, SetAttr};
use crate::sys::{self, FileKind};

/// The largest write the kernel sends (and read it asks for): 256 pages, the kernel's
/// default `max_pages_limit`.
pub const MAX_WRITE: u32 = 1 << 20;

/// A file handle: what an open or opendir answers, and later requests on the open file or
/// directory name (FUSE's `fh`). Handed out by [`StrataFs`]'s handle table; only the wire
/// takes it as a `u64` ([`Fh::from_wire`], [`Fh::get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh(u64);

impl Fh {
    /// A handle as the kernel sends it back.
    pub const fn from_wire(n: u64) -> Fh {
        Fh(n)
    }

    /// The handle as the wire carries it.
    pub const fn get(self) -> u64 {
        self.0
    }
}

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
fn kept_mode(mode: u32, gid: u32, req: &Req) -> u32 {
    let mut m = mode & 0o7777 & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !caller_in_group(req, gid)) {
        m &= !libc::S_ISGID;
    }
    m
}

/// True when the caller of `req` is in group `gid` (its primary group or one of the
/// supplementary groups its process lists).
fn caller_in_group(req: &Req, gid: u32) -> bool {
    if req.gid == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", req.pid)).unwrap_or_default();
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
    handles: DashMap<Fh, Handle>,
    /// Open files per node.
    node_io: DashMap<NodeId, NodeIo>,
    next_fh: AtomicU64,
    ttl: Duration,
    /// The connection, for passthrough backing files: set when the kernel granted FUSE
    /// passthrough (root only).
    backing_dev: Option<Arc<OwnedFd>>,
    /// Names answered as missing, which the kernel may cache: a refresh drops them.
    missing: Arc<control::MissingNames>,
}

/// A passthrough backing file registered with the kernel, unregistered when dropped.
#[derive(Debug)]
struct Backing {
    dev: Arc<OwnedFd>,
    id: u32,
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Err(e) = sys::fuse_backing_close(self.dev.as_fd(), self.id) {
            debug!(id = self.id, error = %e, "backing file not closed");
        }
    }
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
    backing: Option<Arc<Backing>>,
    /// `backing` is the upper copy (else a lower copy, read-only).
    backing_upper: bool,
    /// The file may carry privileges a write by an unprivileged caller drops (setuid or
    /// setgid bits, file capabilities): looked at when it is opened, set again whenever
    /// a chmod or setxattr through the mount may have given it some while open.
    setid: bool,
}

/// How a file handed to [`StrataFs::add_file`] was opened.
#[derive(Debug, Clone, Copy)]
struct HowOpened {
    /// On a lower copy (read-only).
    lower: bool,
    /// For execution.
    exec: bool,
    /// For writing.
    writable: bool,
    /// With `O_DIRECT`.
    direct: bool,
    /// Whether it has privileges a write drops, where the caller knows.
    setid: Option<bool>,
}

impl StrataFs {
    /// Registers an open file of node `ino` (`lower`: opened on a lower layer) and returns
    /// its handle and, for a passthrough open, the backing file to reply with. `None` when
    /// the open cannot share the node's passthrough backing file: that is a lower copy, and
    /// the node has been copied up since (see [`NodeIo`]); `fd` is then closed. `known`:
    /// whether the file has privileges a write drops, where the caller knows (a file it
    /// has just created has no capabilities, and the mode it was given). `direct`: it was
    /// opened with `O_DIRECT`, which a file the daemon reads and writes itself (not in
    /// passthrough) loses.
    fn add_file(
        &self,
        ino: NodeId,
        fd: OwnedFd,
        how: HowOpened,
    ) -> Option<(Fh, Arc<OpenFile>, Option<Arc<Backing>>)> {
        let HowOpened {
            lower,
            exec,
            writable,
            direct,
            setid: known,
        } = how;
        // Privileges a write must drop: setuid/setgid bits or file capabilities. Such files
        // are never in passthrough (root's writes through the backing file would drop them).
        // Only an open that may write, or may get passthrough, needs to look (two system
        // calls less for every read-only open of a daemon without passthrough).
        let setid = known.unwrap_or_else(|| {
            (writable || self.backing_dev.is_some())
                && (sys::stat_fd(fd.as_fd())
                    .map(|st| st.mode & SETID != 0)
                    .unwrap_or(false)
                    || matches!(
                        sys::get_xattr(fd.as_fd(), OsStr::new(CAPS_XATTR)),
                        Ok(Some(_))
                    ))
        });
        let fd = Arc::new(fd);
        let opts = self.overlay.options();
        let eligible = self.backing_dev.is_some()
            && !setid
            && (!lower || opts.read_only || opts.passthrough == Passthrough::All);
        let mut io = self.node_io.entry(ino).or_insert_with(|| NodeIo {
            opens: 0,
            newest: Arc::clone(&fd),
            passthrough: 0,
            execs: 0,
            backing: None,
            backing_upper: false,
            setid: false,
        });
        io.setid |= setid;
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
                self.open_backing(&fd).map(|b| (b, false))
            } else {
                self.overlay
                    .backing_fd(ino)
                    .and_then(|(b, upper)| Ok((self.open_backing(&b)?, upper)))
            };
            match opened {
                Ok((b, upper)) => {
                    io.backing_upper = upper;
                    Some(Arc::new(b))
                }
                Err(e) => {
                    debug!(ino = ino.get(), error = %e, "no passthrough for this open");
                    None
                }
            }
        } else {
            None
        };
        if backing.is_some() {
            io.passthrough += 1;
            io.backing = backing.clone();
        } else if direct {
            // The kernel still does direct I/O for the caller (no page cache of ours); the
            // daemon's own reads and writes of the layer file go through its page cache.
            if let Err(e) = sys::clear_direct(fd.as_fd()) {
                debug!(ino = ino.get(), error = %e, "O_DIRECT kept");
            }
        }
        drop(io);
        let of = Arc::new(OpenFile {
            fd: parking_lot::RwLock::new(fd),
            lower: AtomicBool::new(lower),
            passthrough: backing.is_some(),
            exec,
        });
        Some((self.add_handle(Handle::File(Arc::clone(&of))), of, backing))
    }

    /// Registers `fd` as a passthrough backing file.
    fn open_backing(&self, fd: &OwnedFd) -> Result<Backing, Error> {
        let dev = self.backing_dev.as_ref().ok_or(os(libc::EOPNOTSUPP))?;
        let id = sys::fuse_backing_open(dev.as_fd(), fd.as_fd())?;
        Ok(Backing {
            dev: Arc::clone(dev),
            id,
        })
    }

    fn open_file(&self, fh: Fh) -> Option<Arc<OpenFile>> {
        match self.handles.get(&fh).as_deref() {
            Some(Handle::File(f)) => Some(Arc::clone(f)),
            _ => None,
        }
    }

    /// The fd to read `fh` from: a handle opened on a lower copy moves to the upper copy once
    /// the file has been copied up.
    fn read_fd(&self, fh: Fh, ino: NodeId) -> Option<Arc<OwnedFd>> {
        let of = self.open_file(fh)?;
        if of.lower.load(Ordering::Acquire) && self.overlay.is_copied_up(ino) {
            let mut cur = of.fd.write();
            if of.lower.load(Ordering::Acquire) {
                match self.overlay.open(ino, libc::O_RDONLY) {
                    Ok(f) => {
                        *cur = Arc::new(f.fd);
                        of.lower.store(false, Ordering::Release);
                    }
                    Err(e) => debug!(ino = ino.get(), error = %e, "reopen after copy-up failed"),
                }
            }
        }
        Some(of.current())
    }

    /// A write by someone other than root drops setuid, and setgid when the group may
    /// execute or the writer is not in the file's group, and file capabilities: what a local
    /// filesystem does (the kernel leaves it to us under handle_killpriv_v2).
    fn kill_setid(&self, ino: NodeId, of: &OpenFile, req: &Req) {
        if req.uid == 0 || !self.node_io.get(&ino).is_some_and(|io| io.setid) {
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
        if let Some(mut io) = self.node_io.get_mut(&ino) {
            io.setid = false;
        }
    }

    /// Node `ino` may have been given privileges a write must drop (see [`NodeIo::setid`]).
    fn may_have_gained_setid(&self, ino: NodeId) {
        if let Some(mut io) = self.node_io.get_mut(&ino) {
            io.setid = true;
        }
    }

    /// After an access ACL was set by a caller outside the file's group (and not root), the
    /// setgid bit goes, as a local filesystem's `posix_acl_update_mode` drops it. The kernel
    /// would say so with `FUSE_SETXATTR_ACL_KILL_SGID`, but only in the extended setxattr
    /// request, which is not negotiated, so the daemon decides from the caller itself.
    fn acl_kill_sgid(&self, ino: NodeId, req: &Req) -> Result<(), Error> {
        if req.uid == 0 {
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
    fn open_fd(&self, ino: NodeId) -> Option<Arc<OwnedFd>> {
        self.node_io.get(&ino).map(|e| Arc::clone(&e.newest))
    }

    fn add_handle(&self, h: Handle) -> Fh {
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
        self.handles.insert(fh, h);
        fh
    }

    fn file(&self, fh: Fh) -> Option<Arc<OwnedFd>> {
        self.open_file(fh).map(|f| f.current())
    }

    /// The current listing of open directory `fh` (of node `ino`).
    fn listing(&self, fh: Fh, ino: NodeId) -> Result<Arc<Listing>, Error> {
        let dir = match self.handles.get(&fh).as_deref() {
            Some(Handle::Dir(d)) => Arc::clone(d),
            _ => return Err(os(libc::EBADF)),
        };
        let mut cur = dir.listing.lock();
        if let Some(l) = &*cur {
            if self.overlay.listing_still_current(ino, l) {
                return Ok(Arc::clone(l));
            }
        }
        let l = self.overlay.listing(ino)?;
        *cur = Some(Arc::clone(&l));
        Ok(l)
    }
}

/// Type bits of `st_mode` for a kind of file.
fn type_bits(k: FileKind) -> u32 {
    match k {
        FileKind::Regular => libc::S_IFREG,
        FileKind::Directory => libc::S_IFDIR,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::Fifo => libc::S_IFIFO,
        FileKind::Socket => libc::S_IFSOCK,
        FileKind::CharDevice => libc::S_IFCHR,
        FileKind::BlockDevice => libc::S_IFBLK,
    }
}

/// What the kernel is told `stat` shows for `a`.
fn wire_attr(a: &Attr) -> WireAttr {
    WireAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: abi::time_parts(a.atime),
        mtime: abi::time_parts(a.mtime),
        ctime: abi::time_parts(a.ctime),
        mode: type_bits(a.kind) | u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: if a.blksize == 0 { 4096 } else { a.blksize },
    }
}

/// The FUSE node id of the object `a` describes.
fn node_id(a: &Attr) -> NodeId {
    a.node
}

fn caller(req: &Req) -> Caller {
    caller_with_umask(req, 0)
}

/// The caller of a request that creates something, with the umask the kernel sent.
fn caller_with_umask(req: &Req, umask: u32) -> Caller {
    Caller {
        uid: req.uid,
        gid: req.gid,
        umask,
    }
}

/// Appends `struct fuse_open_out` for handle `fh` with `flags`, and in passthrough the
/// backing file.
fn open_out(o: &mut Out, fh: Fh, flags: u32, backing: Option<&Backing>) {
    match backing {
        Some(b) => o.open(fh, flags | fopen::PASSTHROUGH, b.id),
        None => o.open(fh, flags, 0),
    };
}

/// The reply to xattr requests: the size when asked for it, ERANGE when the buffer is short.
fn xattr_reply(size: u32, data: Vec<u8>) -> Outcome {
    if size == 0 {
        let mut o = Out::with_capacity(8);
        o.u32(data.len() as u32).u32(0);
        Ok(Response::Body(o.buf))
    } else if data.len() > size as usize {
        Err(os(libc::ERANGE))
    } else {
        Ok(Response::Body(data))
    }
}

/// What the kernel granted at INIT, beyond the capabilities every mount asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Granted {
    /// FUSE passthrough (root only).
    pub passthrough: bool,
    /// FUSE over io_uring (asked for only when `io_uring` is wanted).
    pub io_uring: bool,
    /// The minor version of the kernel's FUSE protocol (what its notifications accept).
    pub kernel_minor: u32,
    /// The writeback cache: the kernel keeps its own size and times of regular files.
    pub writeback: bool,
}

/// The capabilities asked of the kernel in its INIT request (FUSE over io_uring only with
/// `io_uring`); returns what it granted of passthrough and io_uring.
pub fn negotiate(
    overlay: &Overlay,
    config: &mut KernelConfig,
    io_uring: crate::config::Uring,
) -> Granted {
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
    if overlay.acl()
        && config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_ok()
        && config.add_capabilities(InitFlags::FUSE_DONT_MASK).is_err()
    {
        debug!("kernel lacks FUSE_DONT_MASK");
    }
    let _ = config.set_max_write(MAX_WRITE);
    let _ = config.set_max_background(64);
    let _ = config.set_congestion_threshold(48);
    // Passthrough needs CAP_SYS_ADMIN for the backing-file ioctl, and a stacking depth
    // of 1 (layers on ordinary filesystems; this mount may still sit under an overlay).
    let passthrough = sys::admin_in_initial_userns()
        && overlay.options().passthrough != Passthrough::Off
        && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        && config.set_max_stack_depth(1).is_ok();
    // Otherwise (a daemon without CAP_SYS_ADMIN: rootless podman's) the writeback cache,
    // as fuse-overlayfs's `writeback=1`: writes gather in the page cache and reach the
    // daemon as large requests. The two are exclusive. Handles are opened read-write
    // whatever the open asked for (the kernel reads pages to fill partial writes), and
    // never O_APPEND (the kernel places appended data itself).
    let writeback = !passthrough
        && overlay.options().writeback
        && config
            .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
            .is_ok();
    // The transport: the kernel offers io_uring only where `enable_uring` is on (and the
    // kernel has it); requests go on through /dev/fuse until every ring queue is ready.
    // By default only with passthrough: without it every byte goes through the daemon,
    // and /dev/fuse serves reads faster (see `config::Uring::Auto`).
    let io_uring = io_uring.wanted(passthrough)
        && config
            .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
            .is_ok();
    debug!(passthrough, writeback, io_uring, "init");
    Granted {
        passthrough,
        io_uring,
        kernel_minor: config.kernel_abi().1,
        writeback,
    }
}

impl StrataFs {
    /// A front end serving `overlay`, telling the kernel to cache entries and attributes for
    /// `ttl`; `backing_dev` is the connection when the kernel granted passthrough.
    pub fn new(
        overlay: Arc<Overlay>,
        ttl: Duration,
        backing_dev: Option<Arc<OwnedFd>>,
    ) -> StrataFs {
        StrataFs {
            overlay,
            handles: DashMap::new(),
            node_io: DashMap::new(),
            next_fh: AtomicU64::new(1),
            ttl,
            backing_dev,
            missing: Arc::default(),
        }
    }

    /// The reply naming a (new or looked-up) entry.
    fn entry(&self, a: &Attr) -> Response {
        let mut o = Out::with_capacity(abi::ENTRY_OUT_LEN);
        o.entry(node_id(a), self.ttl, &wire_attr(a));
        Response::Body(o.buf)
    }

    /// The reply carrying attributes.
    fn attr(&self, a: &Attr) -> Response {
        let mut o = Out::with_capacity(104);
        o.attr_out(self.ttl, &wire_attr(a));
        Response::Body(o.buf)
    }

    /// The reply to an open: handle `fh`, `flags`, and the backing file in passthrough.
    fn opened(fh: Fh, flags: u32, backing: Option<&Backing>) -> Response {
        Response::Body(Self::open_body(fh, flags, backing))
    }

    /// The body of [`StrataFs::opened`].
    fn open_body(fh: Fh, flags: u32, backing: Option<&Backing>) -> Vec<u8> {
        let mut o = Out::with_capacity(16);
        open_out(&mut o, fh, flags, backing);
        o.buf
    }

    pub(crate) fn lookup(&self, parent: NodeId, name: &OsStr) -> Outcome {
        match self.overlay.lookup(parent, name) {
            Ok(a) => Ok(self.entry(&a)),
            // A name found nowhere is a negative entry (node id 0) the kernel caches for the
            // entry timeout, as fuse-overlayfs gives it: `[ -e /etc/nothere ]` and the
            // probes of a dynamic loader cost no round trip after the first. Only names
            // made through the mount replace it (the kernel looks names up under the
            // directory's lock, which creates and renames hold exclusively, and never
            // revalidates a negative entry: an expired one is looked up afresh).
            Err(Error::NotFound) => {
                self.missing.record(parent, name);
                let mut o = Out::with_capacity(abi::ENTRY_OUT_LEN);
                o.entry(abi::NO_NODE, self.ttl, &WireAttr::default());
                Ok(Response::Body(o.buf))
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn forget(&self, ino: NodeId, nlookup: u64) {
        self.overlay.forget(ino, nlookup);
    }

    pub(crate) fn getattr(&self, ino: NodeId, fh: Option<Fh>) -> Outcome {
        // An open file may have lost its name (unlinked while open): stat the handle (moved
        // to the upper copy first where one was made since it was opened on a lower copy,
        // or on a metacopy file's data).
        if let Some(fd) = fh.and_then(|fh| self.read_fd(fh, ino)) {
            return Ok(self.attr(&self.overlay.attr_of_fd(ino, fd.as_fd())?));
        }
        let a = match self.overlay.getattr(ino) {
            Err(e) if matches!(e.errno(), libc::ENOENT | libc::ESTALE) => match self.open_fd(ino) {
                Some(fd) => self.overlay.attr_of_fd(ino, fd.as_fd()),
                None => Err(e),
            },
            r => r,
        }?;
        Ok(self.attr(&a))
    }

    pub(crate) fn readlink(&self, ino: NodeId) -> Outcome {
        Ok(Response::Body(self.overlay.readlink(ino)?))
    }

    pub(crate) fn open(&self, req: &Req, ino: NodeId, flags: i32) -> Outcome {
        // With atomic O_TRUNC the kernel checks ETXTBSY for `O_RDONLY|O_TRUNC` only after
        // this open has truncated: a running program would be destroyed (see `negotiate`).
        if flags & libc::O_TRUNC != 0 && self.node_io.get(&ino).is_some_and(|io| io.execs > 0) {
            return Err(os(libc::ETXTBSY));
        }
        let exec = flags & FMODE_EXEC != 0;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let f = self.overlay.open(ino, flags)?;
        let keep = if f.immutable { fopen::KEEP_CACHE } else { 0 };
        // A lower file opened to be read through the daemon (no passthrough), by no one
        // else: its data may be put in the kernel's page cache before the open is answered,
        // which saves the reader the round trip of its first READ (small files only: the
        // transport looks at the size). Not while another handle is open: a reader's
        // readahead then holds page locks the store would wait for.
        let store = f.immutable
            && !writable
            && flags & libc::O_DIRECT == 0
            && self.backing_dev.is_none()
            && !self.node_io.contains_key(&ino)
            && !self.overlay.data_given(ino);
        let Some((fh, of, backing)) = self.add_file(
            ino,
            f.fd,
            HowOpened {
                lower: f.immutable,
                exec,
                writable,
                direct: flags & libc::O_DIRECT != 0,
                setid: None,
            },
        ) else {
            debug!(
                ino = ino.get(),
                "open after a copy-up under passthrough: node retired"
            );
            self.overlay.retire(ino);
            return Err(os(libc::ESTALE));
        };
        if flags & libc::O_TRUNC != 0 {
            // A truncating open is a write (atomic O_TRUNC: no setattr follows).
            self.kill_setid(ino, &of, req);
        }
        Ok(match backing {
            Some(b) => Self::opened(fh, 0, Some(&b)),
            None if store => Response::Prefetched {
                body: Self::open_body(fh, keep, None),
                node: ino,
                fd: of.current(),
                size: f.size,
            },
            None => Self::opened(fh, keep, None),
        })
    }

    pub(crate) fn read(&self, ino: NodeId, fh: Fh, offset: u64, size: u32) -> Outcome {
        let fd = self.read_fd(fh, ino).ok_or(os(libc::EBADF))?;
        Ok(Response::File {
            fd,
            offset,
            len: size.min(MAX_WRITE) as usize,
        })
    }

    pub(crate) fn release(&self, ino: NodeId, fh: Fh) -> Outcome {
        if let Some((_, Handle::File(of))) = self.handles.remove(&fh) {
            self.node_io.remove_if_mut(&ino, |_, io| {
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
        Ok(Response::empty())
    }

    pub(crate) fn opendir(&self, ino: NodeId) -> Outcome {
        self.overlay.check_dir(ino)?;
        let fh = self.add_handle(Handle::Dir(Arc::new(DirHandle::default())));
        // The kernel caches the entries per inode, filled by whichever handle reads;
        // offsets are name cookies served from the current listing, so every handle
        // fills it alike. It is kept across opens only for a directory unchanged since
        // it was first listed (see `Node::listed_is_current`): otherwise the open asks
        // the kernel to drop it.
        let mut flags = fopen::CACHE_DIR;
        if self.overlay.listing_is_current(ino) {
            flags |= fopen::KEEP_CACHE;
        }
        Ok(Self::opened(fh, flags, None))
    }

    /// READDIR, or READDIRPLUS (`plus`: each entry with its attributes and a lookup
    /// reference), of at most `size` bytes from `offset` (a cookie).
    pub(crate) fn readdir(
        &self,
        ino: NodeId,
        fh: Fh,
        offset: u64,
        size: u32,
        plus: bool,
    ) -> Outcome {
        let list = self.listing(fh, ino)?;
        let mut buf = DirBuf::new(size as usize);
        // "." and ".." carry no lookup reference: the kernel never links dot entries of a
        // readdirplus reply to inodes (fuse_direntplus_link returns early for them). Their
        // d_ino must not be 0, or libc hides the entry.
        let dots = [(1u64, ino, "."), (2, self.overlay.parent_of(ino), "..")];
        for (next, dino, name) in dots {
            if offset >= next {
                continue;
            }
            let fits = if plus {
                let attr = WireAttr {
                    ino: self.overlay.shown_of(dino),
                    mode: libc::S_IFDIR,
                    ..WireAttr::default()
                };
                buf.push_plus(abi::NO_NODE, Duration::ZERO, &attr, next, OsStr::new(name))
            } else {
                buf.push(
                    self.overlay.shown_of(dino),
                    next,
                    libc::S_IFDIR,
                    OsStr::new(name),
                )
            };
            if !fits {
                return Ok(Response::Body(buf.into_bytes()));
            }
        }
        for e in list.after(offset) {
            let fits = if plus {
                let Ok(attr) = self.overlay.lookup_entry(ino, &list, e) else {
                    // Gone since the listing was taken: skip it, as a fresh listing would.
                    continue;
                };
                let fits = buf.push_plus(
                    node_id(&attr),
                    self.ttl,
                    &wire_attr(&attr),
                    e.cookie,
                    &e.name,
                );
                if !fits {
                    // Not sent: give back the reference the lookup took.
                    self.overlay.forget(node_id(&attr), 1);
                }
                fits
            } else {
                let Ok(eino) = self.overlay.entry_ino(ino, e) else {
                    continue;
                };
                buf.push(eino, e.cookie, type_bits(e.kind), &e.name)
            };
            if !fits {
                break;
            }
        }
        Ok(Response::Body(buf.into_bytes()))
    }

    pub(crate) fn releasedir(&self, fh: Fh) -> Outcome {
        self.handles.remove(&fh);
        Ok(Response::empty())
    }

    pub(crate) fn statfs(&self) -> Outcome {
        let s = self.overlay.statfs()?;
        let mut o = Out::with_capacity(80);
        o.u64(s.blocks)
            .u64(s.bfree)
            .u64(s.bavail)
            .u64(s.files)
            .u64(s.ffree);
        o.u32(s.bsize).u32(s.namelen).u32(s.frsize).u32(0);
        for _ in 0..6 {
            o.u32(0);
        }
        Ok(Response::Body(o.buf))
    }

    pub(crate) fn getxattr(&self, ino: NodeId, name: &OsStr, size: u32) -> Outcome {
        xattr_reply(size, self.overlay.getxattr(ino, name)?)
    }

    pub(crate) fn listxattr(&self, ino: NodeId, size: u32) -> Outcome {
        xattr_reply(size, self.overlay.listxattr(ino)?)
    }

    pub(crate) fn access(&self, ino: NodeId, mask: i32) -> Outcome {
        self.overlay.access(ino, mask)?;
        Ok(Response::empty())
    }

    pub(crate) fn lseek(&self, _ino: NodeId, fh: Fh, offset: i64, whence: i32) -> Outcome {
        let fd = self.file(fh).ok_or(os(libc::EBADF))?;
        let pos = sys::seek(fd.as_fd(), offset, whence)?;
        let mut o = Out::with_capacity(8);
        o.u64(pos);
        Ok(Response::Body(o.buf))
    }

    pub(crate) fn setattr(&self, req: &Req, ino: NodeId, set: SetAttr, fh: Option<Fh>) -> Outcome {
        debug!(mode = ?set.mode, uid = ?set.uid, gid = ?set.gid, size = ?set.size, "setattr");
        let file = fh.and_then(|fh| self.file(fh));
        let r = match self
            .overlay
            .setattr(ino, set, file.as_ref().map(|f| f.as_fd()))
        {
            // No name left (unlinked while open): change the open file itself.
            Err(e) if e.errno() == libc::ENOENT && file.is_none() => match self.open_fd(ino) {
                Some(fd) => self.overlay.setattr(ino, set, Some(fd.as_fd())),
                None => Err(e),
            },
            r => r,
        };
        // With handle_killpriv_v2 a truncate by someone other than root drops the setuid
        // and setgid bits here, as a local filesystem would.
        let a = match r {
            Ok(a) if set.size.is_some() && set.mode.is_none() && req.uid != 0 => {
                let kept = kept_mode(u32::from(a.perm), a.gid, req);
                if kept != u32::from(a.perm) {
                    let set = SetAttr {
                        mode: Some(kept),
                        ..SetAttr::default()
                    };
                    self.overlay
                        .setattr(ino, set, file.as_ref().map(|f| f.as_fd()))
                } else {
                    Ok(a)
                }
            }
            r => r,
        }?;
        if set.mode.is_some_and(|m| m & SETID != 0) {
            self.may_have_gained_setid(ino);
        }
        Ok(self.attr(&a))
    }

    pub(crate) fn mknod(
        &self,
        req: &Req,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Outcome {
        debug!(?name, mode, rdev, "mknod");
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
        let (a, _) = self
            .overlay
            .create(parent, name, obj, mode, caller_with_umask(req, umask))?;
        Ok(self.entry(&a))
    }

    pub(crate) fn mkdir(
        &self,
        req: &Req,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Outcome {
        debug!(?name, mode, "mkdir");
        let (a, _) = self.overlay.create(
            parent,
            name,
            NewObject::Dir,
            mode,
            caller_with_umask(req, umask),
        )?;
        Ok(self.entry(&a))
    }

    pub(crate) fn symlink(
        &self,
        req: &Req,
        parent: NodeId,
        name: &OsStr,
        target: &OsStr,
    ) -> Outcome {
        debug!(?name, ?target, "symlink");
        let obj = NewObject::Symlink(target.to_os_string());
        let (a, _) = self.overlay.create(parent, name, obj, 0o777, caller(req))?;
        Ok(self.entry(&a))
    }

    pub(crate) fn create(
        &self,
        req: &Req,
        parent: NodeId,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Outcome {
        debug!(?name, mode, flags, "create");
        let (a, fd) = self.overlay.create(
            parent,
            name,
            NewObject::File { flags },
            mode,
            caller_with_umask(req, umask),
        )?;
        // A new object's node has no earlier opens, so it shares no backing file; and it
        // has no capabilities yet.
        let setid = u32::from(a.perm) & SETID != 0;
        let how = HowOpened {
            lower: false,
            exec: false,
            writable: true,
            direct: flags & libc::O_DIRECT != 0,
            setid: Some(setid),
        };
        let Some((fh, _, backing)) = fd.and_then(|fd| self.add_file(node_id(&a), fd, how)) else {
            self.overlay.forget(node_id(&a), 1);
            return Err(os(libc::EIO));
        };
        let mut o = Out::with_capacity(abi::ENTRY_OUT_LEN + 16);
        o.entry(node_id(&a), self.ttl, &wire_attr(&a));
        open_out(&mut o, fh, 0, backing.as_deref());
        Ok(Response::Body(o.buf))
    }

    pub(crate) fn unlink(&self, parent: NodeId, name: &OsStr) -> Outcome {
        debug!(?name, "unlink");
        self.overlay.unlink(parent, name)?;
        Ok(Response::empty())
    }

    pub(crate) fn rmdir(&self, parent: NodeId, name: &OsStr) -> Outcome {
        debug!(?name, "rmdir");
        self.overlay.rmdir(parent, name)?;
        Ok(Response::empty())
    }

    pub(crate) fn rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        newparent: NodeId,
        newname: &OsStr,
        flags: u32,
    ) -> Outcome {
        debug!(
            ?name,
            newparent = newparent.get(),
            ?newname,
            flags,
            "rename"
        );
        let flag = match flags {
            0 => RenameFlag::Plain,
            libc::RENAME_NOREPLACE => RenameFlag::NoReplace,
            libc::RENAME_EXCHANGE => RenameFlag::Exchange,
            // RENAME_WHITEOUT from a client, or a combination: not for callers of a union.
            _ => return Err(os(libc::EINVAL)),
        };
        self.overlay
            .rename(parent, name, newparent, newname, flag)?;
        Ok(Response::empty())
    }

    pub(crate) fn link(&self, ino: NodeId, newparent: NodeId, newname: &OsStr) -> Outcome {
        debug!(newparent = newparent.get(), ?newname, "link");
        Ok(self.entry(&self.overlay.link(ino, newparent, newname)?))
    }

    pub(crate) fn write(
        &self,
        req: &Req,
        ino: NodeId,
        fh: Fh,
        offset: u64,
        data: &[u8],
    ) -> Outcome {
        let of = self.open_file(fh).ok_or(os(libc::EBADF))?;
        sys::pwrite_all(of.current().as_fd(), data, offset)?;
        self.kill_setid(ino, &of, req);
        let mut o = Out::with_capacity(8);
        o.u32(data.len() as u32).u32(0);
        Ok(Response::Body(o.buf))
    }

    pub(crate) fn fsync(&self, _ino: NodeId, fh: Fh, datasync: bool) -> Outcome {
        let fd = self.file(fh).ok_or(os(libc::EBADF))?;
        self.overlay.fsync(fd.as_fd(), datasync)?;
        Ok(Response::empty())
    }

    pub(crate) fn fsyncdir(&self, ino: NodeId) -> Outcome {
        self.overlay.fsyncdir(ino)?;
        Ok(Response::empty())
    }

    pub(crate) fn setxattr(
        &self,
        req: &Req,
        ino: NodeId,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Outcome {
        debug!(?name, "setxattr");
        self.overlay.setxattr(ino, name, value, flags)?;
        if name == OsStr::new(CAPS_XATTR) {
            self.may_have_gained_setid(ino);
        }
        if name == crate::layer::idmap::ACCESS_ACL && self.overlay.acl() {
            self.acl_kill_sgid(ino, req)?;
        }
        Ok(Response::empty())
    }

    pub(crate) fn removexattr(&self, ino: NodeId, name: &OsStr) -> Outcome {
        debug!(?name, "removexattr");
        self.overlay.removexattr(ino, name)?;
        Ok(Response::empty())
    }

    pub(crate) fn fallocate(
        &self,
        _ino: NodeId,
        fh: Fh,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Outcome {
        let fd = self.file(fh).ok_or(os(libc::EBADF))?;
        sys::fallocate(fd.as_fd(), mode, offset, length)?;
        Ok(Response::empty())
    }

    pub(crate) fn ioctl(&self, ino: NodeId, cmd: u32, in_data: &[u8], out_size: u32) -> Outcome {
        // The kernel's fileattr calls (lsattr, chattr, xfs_io's fsxattr) reach us as these
        // ioctls on a handle it opened for the purpose. A get reads the visible copy, a set
        // copies up first; the kernel has checked the caller's rights. Anything else: ENOTTY.
        let data = match cmd {
            FS_IOC_GETFLAGS | FS_IOC32_GETFLAGS => {
                self.overlay.inode_flags(ino)?.to_ne_bytes().to_vec()
            }
            FS_IOC_SETFLAGS | FS_IOC32_SETFLAGS => {
                let b = <[u8; 4]>::try_from(in_data).map_err(|_| os(libc::EINVAL))?;
                self.overlay.set_inode_flags(ino, u32::from_ne_bytes(b))?;
                Vec::new()
            }
            FS_IOC_FSGETXATTR => self.overlay.fs_xattr(ino)?.to_vec(),
            FS_IOC_FSSETXATTR => {
                let a =
                    <[u8; sys::FSXATTR_SIZE]>::try_from(in_data).map_err(|_| os(libc::EINVAL))?;
                self.overlay.set_fs_xattr(ino, a)?;
                Vec::new()
            }
            _ => return Err(os(libc::ENOTTY)),
        };
        if data.len() > out_size as usize {
            return Err(os(libc::EINVAL));
        }
        // struct fuse_ioctl_out { result, flags, in_iovs, out_iovs }, then the data.
        let mut o = Out::with_capacity(16 + data.len());
        o.u32(0).u32(0).u32(0).u32(0);
        o.buf.extend_from_slice(&data);
        Ok(Response::Body(o.buf))
    }

    pub(crate) fn copy_file_range(
        &self,
        _ino_in: NodeId,
        fh_in: Fh,
        offset_in: u64,
        fh_out: Fh,
        offset_out: u64,
        len: u64,
    ) -> Outcome {
        let (Some(src), Some(dst)) = (self.file(fh_in), self.file(fh_out)) else {
            return Err(os(libc::EBADF));
        };
        let len = len.min(u64::from(u32::MAX >> 1)) as usize;
        let n = sys::copy_range(src.as_fd(), offset_in, dst.as_fd(), offset_out, len)?;
        let mut o = Out::with_capacity(8);
        o.u32(n as u32).u32(0);
        Ok(Response::Body(o.buf))
    }
}

//! The only place that talks to the kernel directly, and the only module allowed `unsafe`.
//!
//! Everything above this module reaches a layer through a directory fd and the confined helpers
//! here: [`open_beneath`] resolves relative paths with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so a symlink inside a layer is never followed
//! by the daemon, and [`stat_at`] / xattr helpers act on a single name under a directory fd
//! without following the final component.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, StatxFlags};

pub use rustix::io::Errno;

/// The file types a layer can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl FileKind {
    /// The kind encoded in an `st_mode`.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(FileKind::Regular),
            libc::S_IFDIR => Some(FileKind::Directory),
            libc::S_IFLNK => Some(FileKind::Symlink),
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDevice),
            libc::S_IFBLK => Some(FileKind::BlockDevice),
            _ => None,
        }
    }

    /// The kind encoded in a `d_type`, if the filesystem filled it in.
    pub fn from_dirent(t: rustix::fs::FileType) -> Option<FileKind> {
        use rustix::fs::FileType as T;
        match t {
            T::RegularFile => Some(FileKind::Regular),
            T::Directory => Some(FileKind::Directory),
            T::Symlink => Some(FileKind::Symlink),
            T::Fifo => Some(FileKind::Fifo),
            T::Socket => Some(FileKind::Socket),
            T::CharacterDevice => Some(FileKind::CharDevice),
            T::BlockDevice => Some(FileKind::BlockDevice),
            _ => None,
        }
    }
}

/// The attributes of one object in one layer, as `statx` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Inode number on its own filesystem.
    pub ino: u64,
    /// Device of the filesystem holding it (`makedev(major, minor)`).
    pub dev: u64,
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
    /// Device number for device nodes (`makedev(major, minor)`).
    pub rdev: u64,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

impl Stat {
    /// The file type, or `None` for a mode the kernel should never report.
    pub fn kind(&self) -> Option<FileKind> {
        FileKind::from_mode(self.mode)
    }

    /// Permission bits including setuid/setgid/sticky.
    pub fn perm(&self) -> u16 {
        (self.mode & 0o7777) as u16
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// `major(rdev)`.
    pub fn rdev_major(&self) -> u32 {
        dev_major(self.rdev)
    }

    /// `minor(rdev)`.
    pub fn rdev_minor(&self) -> u32 {
        dev_minor(self.rdev)
    }
}

/// `major(dev)`.
pub fn dev_major(dev: u64) -> u32 {
    libc::major(dev)
}

/// `minor(dev)`.
pub fn dev_minor(dev: u64) -> u32 {
    libc::minor(dev)
}

fn timestamp(ts: rustix::fs::StatxTimestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(ts.tv_nsec.min(999_999_999)));
    if ts.tv_sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts.tv_sec as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.tv_sec.unsigned_abs()) + nanos
    }
}

fn from_statx(s: &rustix::fs::Statx) -> Stat {
    Stat {
        ino: s.stx_ino,
        dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
        mode: u32::from(s.stx_mode),
        nlink: s.stx_nlink,
        uid: s.stx_uid,
        gid: s.stx_gid,
        size: s.stx_size,
        blocks: s.stx_blocks,
        blksize: s.stx_blksize,
        rdev: libc::makedev(s.stx_rdev_major, s.stx_rdev_minor),
        atime: timestamp(s.stx_atime),
        mtime: timestamp(s.stx_mtime),
        ctime: timestamp(s.stx_ctime),
    }
}

/// Beneath the directory, following no symlink and crossing no mount point: a mount inside
/// a layer directory is not part of the layer (the kernel's overlayfs works on private
/// clones of the layers' mounts, which have none).
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Opens `path` (relative, `/`-separated, no `..` needed) beneath `dir` with `openat2`.
///
/// No symlink is followed, in intermediate components or the last one: a path that crosses
/// one fails with `ELOOP` (or, with `O_PATH | O_NOFOLLOW`, returns the link itself). An empty
/// path opens `dir` itself again.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    openat2_retrying(dir, OsStr::from_bytes(path), flags, Mode::empty())
}

/// `openat2` beneath `dir`, retried when a rename raced the walk (`RESOLVE_BENEATH` fails
/// with `EAGAIN` then), and once more after the fd caches gave fds back when the process
/// ran out of them ([`reclaim_fds`]).
fn openat2_retrying(
    dir: BorrowedFd<'_>,
    path: &OsStr,
    flags: OFlags,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let mut tries = 0;
    let mut reclaimed = false;
    loop {
        match rustix::fs::openat2(dir, path, flags, mode, RESOLVE) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            Err(Errno::MFILE | Errno::NFILE) if !reclaimed && reclaim_fds() => reclaimed = true,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Something that keeps fds open for speed and can close some of them when the process
/// runs out (the directory-fd cache).
pub trait FdReclaim: Send + Sync {
    /// Closes some of the fds kept; returns how many it let go of.
    fn reclaim(&self) -> usize;
}

/// The live fd keepers of this process (several in one process only in tests).
static RECLAIMERS: parking_lot::Mutex<Vec<std::sync::Weak<dyn FdReclaim>>> =
    parking_lot::Mutex::new(Vec::new());

/// Registers `r`, asked to give fds back whenever an open fails with `EMFILE`/`ENFILE`.
pub fn register_fd_reclaimer(r: std::sync::Weak<dyn FdReclaim>) {
    let mut all = RECLAIMERS.lock();
    all.retain(|w| w.strong_count() > 0);
    all.push(r);
}

/// Asks every registered keeper to give fds back; true when any did.
fn reclaim_fds() -> bool {
    let live: Vec<_> = RECLAIMERS
        .lock()
        .iter()
        .filter_map(|w| w.upgrade())
        .collect();
    live.iter().map(|r| r.reclaim()).sum::<usize>() > 0
}

/// The soft limit on open fds (`RLIMIT_NOFILE`).
pub fn nofile_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Opens a directory beneath `dir` as an `O_PATH` handle: enough for `*at` calls and `statx`,
/// and no read permission needed.
pub fn open_dir_path(dir: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    open_beneath(dir, path, OFlags::PATH | OFlags::DIRECTORY)
}

/// The inode flags of an open file or directory (`FS_IOC_GETFLAGS`, what `lsattr` shows).
pub fn inode_flags(fd: BorrowedFd<'_>) -> io::Result<u32> {
    rustix::fs::ioctl_getflags(fd)
        .map(|f| f.bits())
        .map_err(io::Error::from)
}

/// Sets the inode flags of an open file or directory (`FS_IOC_SETFLAGS`, `chattr`).
pub fn set_inode_flags(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    rustix::fs::ioctl_setflags(fd, rustix::fs::IFlags::from_bits_retain(flags))
        .map_err(io::Error::from)
}

/// Size of `struct fsxattr` (`FS_IOC_FSGETXATTR`): five `u32` fields and 8 bytes of padding.
pub const FSXATTR_SIZE: usize = 28;

/// The extended inode attributes of an open file or directory (`FS_IOC_FSGETXATTR`:
/// xflags, extent size hint, project id...), as the raw `struct fsxattr`.
pub fn fs_xattr(fd: BorrowedFd<'_>) -> io::Result<[u8; FSXATTR_SIZE]> {
    const GET: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<[u8; FSXATTR_SIZE]>(b'X', 31);
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr` (28 bytes, no pointers) into the
    // buffer the Getter provides, whose size the opcode encodes.
    unsafe { rustix::ioctl::ioctl(fd, rustix::ioctl::Getter::<GET, [u8; FSXATTR_SIZE]>::new()) }
        .map_err(io::Error::from)
}

/// Sets the extended inode attributes of an open file or directory (`FS_IOC_FSSETXATTR`).
pub fn set_fs_xattr(fd: BorrowedFd<'_>, attr: [u8; FSXATTR_SIZE]) -> io::Result<()> {
    const SET: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<[u8; FSXATTR_SIZE]>(b'X', 32);
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` (28 bytes, no pointers) from the
    // value the Setter holds, whose size the opcode encodes.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            rustix::ioctl::Setter::<SET, [u8; FSXATTR_SIZE]>::new(attr),
        )
    }
    .map_err(io::Error::from)
}

/// The largest fs-verity digest (SHA-512), in bytes.
pub const VERITY_MAX_DIGEST: usize = 64;

/// The fs-verity digest of the file `fd` is open on (`FS_IOC_MEASURE_VERITY`): its hash
/// algorithm (`FS_VERITY_HASH_ALG_*`: 1 for SHA-256, 2 for SHA-512) and the digest. `None`
/// when the file has no fs-verity, or its filesystem or the kernel has none.
pub fn measure_verity(fd: BorrowedFd<'_>) -> io::Result<Option<(u16, Vec<u8>)>> {
    // _IOWR('f', 134, struct fsverity_digest): the struct is a 4-byte header (algorithm,
    // digest size) followed by as many digest bytes as its size field says there is room
    // for, which the opcode's size cannot encode.
    const FS_IOC_MEASURE_VERITY: u32 = 0xc004_6686;
    let mut buf = [0u8; 4 + VERITY_MAX_DIGEST];
    buf[2..4].copy_from_slice(&(VERITY_MAX_DIGEST as u16).to_ne_bytes());
    // SAFETY: the kernel reads the 4-byte header at the pointer, whose digest size field
    // says VERITY_MAX_DIGEST bytes follow (`buf` has them), and writes the header and at
    // most that many digest bytes back; `buf` is alive and borrowed mutably for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_MEASURE_VERITY as _, buf.as_mut_ptr()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP | libc::ENOTTY) => Ok(None),
            _ => Err(e),
        };
    }
    let algo = u16::from_ne_bytes([buf[0], buf[1]]);
    let size = usize::from(u16::from_ne_bytes([buf[2], buf[3]])).min(VERITY_MAX_DIGEST);
    Ok(Some((algo, buf[4..4 + size].to_vec())))
}

/// Turns fs-verity on for the file `fd` is open on (read-only, no writer anywhere):
/// SHA-256, 4096-byte blocks, no salt nor signature (`FS_IOC_ENABLE_VERITY`, as
/// `fsverity enable` does by default). For tests and tools that build layers.
pub fn enable_verity(fd: BorrowedFd<'_>) -> io::Result<()> {
    const SIZE: usize = 128;
    const ENABLE: rustix::ioctl::Opcode = rustix::ioctl::opcode::write::<[u8; SIZE]>(b'f', 133);
    // struct fsverity_enable_arg: version 1, hash algorithm 1 (SHA-256), block size, then
    // salt and signature sizes and pointers, all zero.
    let mut arg = [0u8; SIZE];
    arg[0..4].copy_from_slice(&1u32.to_ne_bytes());
    arg[4..8].copy_from_slice(&1u32.to_ne_bytes());
    arg[8..12].copy_from_slice(&4096u32.to_ne_bytes());
    // SAFETY: the kernel reads one 128-byte struct fsverity_enable_arg from the value the
    // Setter holds (its size is in the opcode); its pointer fields are null with zero
    // sizes, so nothing else is read.
    unsafe { rustix::ioctl::ioctl(fd, rustix::ioctl::Setter::<ENABLE, [u8; SIZE]>::new(arg)) }
        .map_err(io::Error::from)
}

/// Size of one message of stratafs's control channel (`crate::control`): what its ioctl
/// command encodes, and so what the kernel copies in and out (14 bits of size at most).
pub const CONTROL_SIZE: usize = 16320;

/// The control channel's ioctl command: `_IOWR('S', 0x01, [u8; CONTROL_SIZE])`.
pub const CONTROL_IOCTL: rustix::ioctl::Opcode =
    rustix::ioctl::opcode::read_write::<[u8; CONTROL_SIZE]>(b'S', 0x01);

/// Sends `msg` to the stratafs daemon serving the file or directory `fd` is open on, and
/// leaves its answer in `msg` ([`CONTROL_IOCTL`]).
pub fn control_ioctl(fd: BorrowedFd<'_>, msg: &mut [u8; CONTROL_SIZE]) -> io::Result<()> {
    // SAFETY: the command is restricted (its direction and size are in the opcode), so the
    // kernel reads and writes at most CONTROL_SIZE bytes at the pointer, which is `msg`,
    // borrowed mutably for the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            rustix::ioctl::Updater::<CONTROL_IOCTL, [u8; CONTROL_SIZE]>::new(msg),
        )
    }
    .map_err(io::Error::from)
}

/// `statx(dir, name, AT_SYMLINK_NOFOLLOW)`: one name directly under `dir`. An empty name
/// stats `dir` itself.
///
/// A name that is a mount point fails with `EXDEV`: `statx` would report the root of what
/// is mounted there, which is not part of the layer (and may be this daemon's own mount).
/// Layers cloned with [`private_mount_clone`] have no mount points inside.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    if name.is_empty() {
        let flags = AtFlags::SYMLINK_NOFOLLOW | AtFlags::EMPTY_PATH;
        return rustix::fs::statx(dir, name, flags, StatxFlags::BASIC_STATS)
            .map(|s| from_statx(&s))
            .map_err(io::Error::from);
    }
    let s = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT,
        StatxFlags::BASIC_STATS,
    )?;
    if s.stx_attributes
        .contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
    {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    Ok(from_statx(&s))
}

/// A private, detached copy of the mount `dir` is on, rooted at `dir`, without the mounts
/// below it: what the kernel's overlayfs makes of each layer (`clone_private_mount`). What
/// is mounted inside the directory later, or propagated there (this daemon's own mount
/// among them), never shows in the copy. Needs `CAP_SYS_ADMIN` over the mount's namespace
/// (root, or root in the user namespace that owns it, as rootless podman's mount program
/// is); `EPERM` otherwise.
pub fn private_mount_clone(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let clone = rustix::mount::open_tree(
        dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    // A clone of a shared mount joins its peer group: make it private, so nothing mounted
    // elsewhere propagates into it.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) reads `size` bytes of `attr`, a live, properly laid out
    // `struct mount_attr` (four u64s), and the empty C string; it writes nothing of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            clone.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(clone)
}

/// Stats the object an fd refers to (`O_PATH` fds included).
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    stat_at(fd, OsStr::new(""))
}

/// Opens the object `fd` (an `O_PATH` fd) refers to anew with `flags`, through
/// `/proc/self/fd`: this works for a file that has no name left.
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(path.as_str(), flags | OFlags::CLOEXEC, Mode::empty()).map_err(io::Error::from)
}

/// [`stat_at`], with the object's birth time in nanoseconds since the epoch (0 where the
/// filesystem keeps none). An inode number names an object only until it is freed; with
/// the birth time it names one object for good (ext4, xfs, btrfs and tmpfs keep it), at no
/// extra system call.
pub fn stat_at_born(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(Stat, u64)> {
    let flags = if name.is_empty() {
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT
    };
    let s = rustix::fs::statx(
        dir,
        name,
        flags,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )?;
    // A mount point under a name is refused as `stat_at` refuses it.
    if !name.is_empty()
        && s.stx_attributes
            .contains(rustix::fs::StatxAttributes::MOUNT_ROOT)
    {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    let born = if s.stx_mask & StatxFlags::BTIME.bits() != 0 {
        let t = s.stx_btime;
        (t.tv_sec.max(0) as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(t.tv_nsec))
            .max(1)
    } else {
        0
    };
    Ok((from_statx(&s), born))
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirEntry {
    /// The name (never `.` or `..`).
    pub name: OsString,
    /// Inode number as the directory reports it.
    pub ino: u64,
    /// Type from `d_type`, when the filesystem reports it.
    pub kind: Option<FileKind>,
}

/// Lists a directory given by an fd (an `O_PATH` fd is fine: it is reopened for reading).
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<RawDirEntry>> {
    list_open_dir(open_dir_to_list(dir)?)
}

/// Directory `dir` (an `O_PATH` fd or a readable one) opened for reading its entries: a fd
/// of its own, whose position no other reader moves, and on which xattr calls are one
/// system call each (on an `O_PATH` fd they fail and go through `/proc/self/fd`).
pub fn open_dir_to_list(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    open_beneath(dir, b".", OFlags::RDONLY | OFlags::DIRECTORY)
}

/// The entries of a directory opened by [`open_dir_to_list`] and not read yet.
pub fn list_open_dir(fd: OwnedFd) -> io::Result<Vec<RawDirEntry>> {
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::new(fd)?;
    while let Some(ent) = d.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(RawDirEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: ent.ino(),
            kind: FileKind::from_dirent(ent.file_type()),
        });
    }
    Ok(out)
}

/// Reads a symlink given by an `O_PATH | O_NOFOLLOW` fd on the link itself.
pub fn read_link_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    rustix::fs::readlinkat(fd, "", Vec::new())
        .map(|c| c.into_bytes())
        .map_err(io::Error::from)
}

/// Filesystem statistics of the filesystem holding `fd`.
pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<rustix::fs::StatVfs> {
    rustix::fs::fstatvfs(fd).map_err(io::Error::from)
}

pub mod fanotify;
pub mod uring;
mod xattr;
pub use xattr::*;

// --- process ------------------------------------------------------------------------------

/// Which side of a [`fork`] we are on.
#[derive(Debug, PartialEq, Eq)]
pub enum Forked {
    /// The original process; the child's pid.
    Parent(i32),
    /// The new process.
    Child,
}

/// `fork(2)`.
///
/// Call only while the process has a single thread (before the FUSE session starts): the child
/// gets a copy of the calling thread alone. Fails when the process has more than one.
pub fn fork() -> io::Result<Forked> {
    // The contract is checked, not trusted: a second thread could hold a lock (the
    // allocator's, a logger's) that the child would then wait on forever.
    let threads = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if threads != Some(1) {
        return Err(io::Error::other(format!(
            "fork with {} threads",
            threads.map_or_else(|| "an unknown number of".to_string(), |n| n.to_string())
        )));
    }
    // SAFETY: the process has a single thread (checked above), so no lock can be held by a
    // thread that does not exist in the child.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Starts a new session (detaches from the controlling terminal).
pub fn setsid() -> io::Result<()> {
    rustix::process::setsid().map(drop).map_err(io::Error::from)
}

/// Points stdin, stdout and stderr at `/dev/null`, so that whoever launched the daemon and
/// waits for EOF on our stderr pipe sees it.
pub fn detach_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let fd = null.as_fd();
    rustix::stdio::dup2_stdin(fd)?;
    rustix::stdio::dup2_stdout(fd)?;
    rustix::stdio::dup2_stderr(fd)?;
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: the daemon holds an fd per open file.
pub fn raise_nofile_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if lim.current != lim.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
}

/// The effective gid of the daemon.
pub fn egid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// The process umask, read without changing it for longer than the call.
pub fn current_umask() -> u32 {
    let old = rustix::process::umask(Mode::empty());
    rustix::process::umask(old);
    old.bits()
}

/// The effective uid of the daemon.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// True when this process holds CAP_SYS_ADMIN in the initial user namespace (what FUSE
/// passthrough's backing files need): root, in a user namespace that maps every id to
/// itself, with the capability effective. A daemon that is root only inside a user
/// namespace (rootless podman's) is not.
pub fn admin_in_initial_userns() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    if euid() != 0 {
        return false;
    }
    let identity = std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let f: Vec<&str> = m.split_whitespace().collect();
        f == ["0", "0", "4294967295"]
    });
    let cap = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|c| c & (1 << CAP_SYS_ADMIN) != 0)
    });
    identity && cap
}

/// The most bytes a file handle takes (the kernel's `MAX_HANDLE_SZ`).
pub const MAX_HANDLE_SZ: usize = 128;

/// A file handle as `name_to_handle_at` gives it: the filesystem's handle type and its
/// bytes (what the kernel's overlayfs records of a lower object in `overlay.origin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHandle {
    /// The handle type (`FILEID_*`, the filesystem's own).
    pub kind: i32,
    /// The handle's bytes.
    pub bytes: Vec<u8>,
}

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawFileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// The file handle of entry `name` directly under `dir` (the directory itself when `name`
/// is empty), never following a symlink; the handle is the non-connectable kind (no
/// parent), as the kernel's overlayfs encodes its origins. `name` is one component.
pub fn file_handle_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<FileHandle> {
    if name.as_bytes().contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let c_name = CString::new(name.as_bytes())?;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    let mut raw = RawFileHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `c_name` is a NUL-terminated string alive for the call; `raw` is a `struct
    // file_handle` whose `handle_bytes` says MAX_HANDLE_SZ bytes follow (they do), which
    // the kernel fills and updates; `mount_id` is a writable int. No pointer is kept.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            c_name.as_ptr(),
            &mut raw as *mut RawFileHandle,
            &mut mount_id as *mut libc::c_int,
            flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (raw.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle {
        kind: raw.handle_type,
        bytes: raw.f_handle[..len].to_vec(),
    })
}

/// Opens the object file handle `h` names on the filesystem `mount` (any fd on it) is on,
/// as an `O_PATH` fd (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH). The object
/// may be anywhere on that filesystem: callers only stat it.
pub fn open_by_handle(mount: BorrowedFd<'_>, h: &FileHandle) -> io::Result<OwnedFd> {
    if h.bytes.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut raw = RawFileHandle {
        handle_bytes: h.bytes.len() as u32,
        handle_type: h.kind,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    raw.f_handle[..h.bytes.len()].copy_from_slice(&h.bytes);
    // SAFETY: `raw` is a `struct file_handle` whose `handle_bytes` bytes follow it, alive
    // for the call; the kernel only reads it. The fd returned is new and owned here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut raw as *mut RawFileHandle,
            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by the kernel, open, and owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The 16-byte uuid of the filesystem `fd` (any fd, `O_PATH` included) is on, as the
/// kernel keeps it (`s_uuid`, `FS_IOC_GETFSUUID`, Linux 6.5+); all zeros for a filesystem
/// that has none.
pub fn fs_uuid(fd: BorrowedFd<'_>) -> io::Result<[u8; 16]> {
    // _IOR(0x15, 0, struct fsuuid2): a length byte, then 16 bytes.
    const FS_IOC_GETFSUUID: u32 = 0x8011_1500;
    let file = reopen(fd, OFlags::RDONLY)?;
    let mut buf = [0u8; 17];
    // SAFETY: FS_IOC_GETFSUUID writes one `struct fsuuid2` (17 bytes, no pointers) into
    // `buf`, which is alive and borrowed mutably for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETFSUUID as _, buf.as_mut_ptr()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ENOTTY: the filesystem has no uuid (the kernel's s_uuid is null).
        return match e.raw_os_error() {
            Some(libc::ENOTTY) => Ok([0; 16]),
            _ => Err(e),
        };
    }
    let len = usize::from(buf[0]).min(16);
    let mut uuid = [0u8; 16];
    uuid[..len].copy_from_slice(&buf[1..1 + len]);
    Ok(uuid)
}

/// Lazily detaches the mount at `path` (`umount2(MNT_DETACH)`).
pub fn unmount_lazy(path: &std::path::Path) -> io::Result<()> {
    rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).map_err(io::Error::from)
}

/// Reads into `buf` at `offset` without moving the file position.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    rustix::io::pread(fd, buf, offset).map_err(io::Error::from)
}

/// Reads up to `len` bytes at `offset` into a new buffer (short only at end of file),
/// without zeroing memory the read overwrites anyway.
pub fn pread_exact_or_eof(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        let spare = rustix::buffer::spare_capacity(&mut buf);
        match rustix::io::pread(fd, spare, at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        // `spare_capacity` extended the length by what was read (at most the capacity,
        // `len`).
    }
    Ok(buf)
}

/// `lseek` for `SEEK_DATA` / `SEEK_HOLE` / `SEEK_SET` / `SEEK_CUR` / `SEEK_END`.
pub fn seek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<u64> {
    use rustix::fs::SeekFrom;
    let pos = match whence {
        libc::SEEK_SET => SeekFrom::Start(offset as u64),
        libc::SEEK_CUR => SeekFrom::Current(offset),
        libc::SEEK_END => SeekFrom::End(offset),
        libc::SEEK_DATA => SeekFrom::Data(offset as u64),
        libc::SEEK_HOLE => SeekFrom::Hole(offset as u64),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    rustix::fs::seek(fd, pos).map_err(io::Error::from)
}

// --- the write side ------------------------------------------------------------------------
//
// Names passed here are single components under a directory fd (FUSE never sends a name with
// a '/', and the overlay refuses "." and ".."), so a `*at` call with AT_SYMLINK_NOFOLLOW
// cannot leave the directory.

/// Creates and opens a new regular file `name` under `dir` (`O_CREAT | O_EXCL`).
pub fn create_file(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlags,
    mode: u32,
) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    openat2_retrying(dir, name, flags, Mode::from_raw_mode(mode))
}

/// `mkdirat`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)).map_err(io::Error::from)
}

/// `mknodat` for fifos, sockets and device nodes (a char device 0/0 is a whiteout).
pub fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let kind = rustix::fs::FileType::from_raw_mode(mode);
    rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(mode & 0o7777), rdev)
        .map_err(io::Error::from)
}

/// `symlinkat`.
pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(io::Error::from)
}

/// `linkat` without following symlinks.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> io::Result<()> {
    rustix::fs::linkat(old_dir, old, new_dir, new, AtFlags::empty()).map_err(io::Error::from)
}

/// `unlinkat`, of a directory when `dir_flag`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, dir_flag: bool) -> io::Result<()> {
    let flags = if dir_flag {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rustix::fs::unlinkat(dir, name, flags).map_err(io::Error::from)
}

/// How a rename should behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace the target if any.
    Replace,
    /// Fail with EEXIST if the target exists.
    NoReplace,
    /// Swap source and target atomically.
    Exchange,
    /// Replace the target and leave a whiteout (char 0/0) at the source, atomically.
    Whiteout,
}

/// `renameat2`.
pub fn rename_at(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
    mode: RenameMode,
) -> io::Result<()> {
    use rustix::fs::RenameFlags as F;
    let flags = match mode {
        RenameMode::Replace => F::empty(),
        RenameMode::NoReplace => F::NOREPLACE,
        RenameMode::Exchange => F::EXCHANGE,
        RenameMode::Whiteout => F::WHITEOUT,
    };
    rustix::fs::renameat_with(old_dir, old, new_dir, new, flags).map_err(io::Error::from)
}

/// `fchownat(AT_SYMLINK_NOFOLLOW)`; `None` leaves that id unchanged.
pub fn chown_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let flags = if name.is_empty() {
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    rustix::fs::chownat(
        dir,
        name,
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
        flags,
    )
    .map_err(io::Error::from)
}

/// `fchmod` on an fd opened for I/O, or `fchmodat` of a name (symlinks have no mode of their
/// own: callers never chmod one).
pub fn chmod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    rustix::fs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// A timestamp to set: a value, the current time, or leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// Leave unchanged.
    Omit,
    /// The current time.
    Now,
    /// This time.
    At(SystemTime),
}

fn timespec(t: SetTime) -> rustix::fs::Timespec {
    match t {
        SetTime::Omit => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        SetTime::Now => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        SetTime::At(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => rustix::fs::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()) as _,
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -i64::from(d.subsec_nanos()));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                rustix::fs::Timespec {
                    tv_sec: s,
                    tv_nsec: ns as _,
                }
            }
        },
    }
}

/// `utimensat(AT_SYMLINK_NOFOLLOW)`; an empty name sets the times of `dir` itself.
pub fn set_times_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    atime: SetTime,
    mtime: SetTime,
) -> io::Result<()> {
    let ts = rustix::fs::Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(mtime),
    };
    let flags = if name.is_empty() {
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::EMPTY_PATH
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    rustix::fs::utimensat(dir, name, &ts, flags).map_err(io::Error::from)
}

/// `ftruncate`.
pub fn truncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    rustix::fs::ftruncate(fd, len).map_err(io::Error::from)
}

/// `fsync`, or `fdatasync` when `data_only`.
pub fn sync(fd: BorrowedFd<'_>, data_only: bool) -> io::Result<()> {
    if data_only {
        rustix::fs::fdatasync(fd)
    } else {
        rustix::fs::fsync(fd)
    }
    .map_err(io::Error::from)
}

/// `pwrite` of the whole buffer.
pub fn pwrite_all(fd: BorrowedFd<'_>, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::pwrite(fd, buf, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `pwrite`, returning how much was written.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    rustix::io::pwrite(fd, buf, offset).map_err(io::Error::from)
}

/// `fallocate`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    rustix::fs::fallocate(
        fd,
        rustix::fs::FallocateFlags::from_bits_retain(mode as u32),
        offset,
        len,
    )
    .map_err(io::Error::from)
}

/// `copy_file_range` between two fds at explicit offsets.
pub fn copy_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    let mut so = src_off;
    let mut d = dst_off;
    rustix::fs::copy_file_range(src, Some(&mut so), dst, Some(&mut d), len).map_err(io::Error::from)
}

/// Clones `src` into `dst` (FICLONE) when the filesystem shares extents.
pub fn reflink(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::ioctl_ficlone(dst, src).map_err(io::Error::from)
}

/// Sets the process umask (the daemon creates with exact modes and applies them itself).
pub fn set_umask(mask: u32) {
    rustix::process::umask(Mode::from_raw_mode(mask));
}

/// Removes `name` under `dir` and everything below it (used on the work directory only).
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.is_dir() {
        let sub = open_dir_path(dir, name.as_bytes())?;
        for e in list_dir(sub.as_fd())? {
            remove_tree(sub.as_fd(), &e.name)?;
        }
        unlink_at(dir, name, true)
    } else {
        unlink_at(dir, name, false)
    }
}

/// Kernel flags of a FUSE mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuseMountFlags {
    /// `MS_RDONLY`
    pub read_only: bool,
    /// `MS_NODEV`
    pub nodev: bool,
    /// `MS_NOSUID`
    pub nosuid: bool,
    /// `MS_NOEXEC`
    pub noexec: bool,
    /// `MS_NOATIME`
    pub noatime: bool,
    /// `MS_DIRSYNC`
    pub dirsync: bool,
    /// `MS_SYNCHRONOUS`
    pub sync: bool,
}

/// Mounts a FUSE filesystem of type `fuse.SUBTYPE` on `target`, served through `dev` (an open
/// `/dev/fuse`). Needs `CAP_SYS_ADMIN`; `options` are the FUSE mount options after the fd,
/// rootmode and ids, which this adds.
pub fn mount_fuse(
    dev: BorrowedFd<'_>,
    source: &str,
    target: &std::path::Path,
    subtype: &str,
    options: &str,
    flags: FuseMountFlags,
) -> io::Result<()> {
    use rustix::mount::MountFlags as M;
    let root_mode = rustix::fs::stat(target)?.st_mode;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        root_mode & libc::S_IFMT,
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    if !options.is_empty() {
        data.push(',');
        data.push_str(options);
    }
    let data = CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut mf = M::empty();
    for (on, f) in [
        (flags.read_only, M::RDONLY),
        (flags.nodev, M::NODEV),
        (flags.nosuid, M::NOSUID),
        (flags.noexec, M::NOEXEC),
        (flags.noatime, M::NOATIME),
        (flags.dirsync, M::DIRSYNC),
        (flags.sync, M::SYNCHRONOUS),
    ] {
        if on {
            mf |= f;
        }
    }
    let fstype = format!("fuse.{subtype}");
    rustix::mount::mount(source, target, fstype.as_str(), mf, data.as_c_str())
        .map_err(io::Error::from)
}

/// Unmounts `path`; when it is busy, detaches it lazily instead.
pub fn unmount(path: &std::path::Path) -> io::Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::empty()) {
        Err(Errno::BUSY) => unmount_lazy(path),
        r => r.map_err(io::Error::from),
    }
}

/// `FUSE_NOTIFY_PRUNE` (protocol 7.45, Linux 6.16): asks the kernel to drop its unused
/// dentries of these nodes, so their inodes are evicted and forgotten.
const FUSE_NOTIFY_PRUNE: i32 = 9;

/// Writes one notification `code` with payload `body` down the FUSE connection `dev`.
fn fuse_notify(dev: BorrowedFd<'_>, code: i32, body: &[&[u8]]) -> io::Result<()> {
    // A notification is a reply to request 0 whose error field holds the notify code.
    let len = body.iter().map(|p| p.len()).sum();
    let header = fuse_out_header(0, code, len);
    let mut parts: smallvec::SmallVec<[&[u8]; 3]> = smallvec::smallvec![&header[..]];
    parts.extend_from_slice(body);
    fuse_write_message(dev, &parts)
}

/// Size of `struct fuse_out_header`.
pub const FUSE_OUT_HEADER_LEN: usize = 16;

/// `struct fuse_out_header` for request `unique`: `error` is 0, a negative errno, or (for
/// request 0) a notification code; `body_len` is the length of what follows.
pub fn fuse_out_header(unique: u64, error: i32, body_len: usize) -> [u8; FUSE_OUT_HEADER_LEN] {
    let mut h = [0u8; FUSE_OUT_HEADER_LEN];
    let len = (FUSE_OUT_HEADER_LEN + body_len) as u32;
    h[0..4].copy_from_slice(&len.to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// Sends one `FUSE_NOTIFY_PRUNE` for `nodes` down the FUSE connection `dev`. Dentries in use
/// (open files, working directories, mount points) are left alone by the kernel. Fails with
/// `EINVAL` on kernels without the notification.
pub fn fuse_notify_prune(dev: BorrowedFd<'_>, nodes: &[u64]) -> io::Result<()> {
    let count =
        u32::try_from(nodes.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    // struct fuse_notify_prune_out { count: u32, padding: u32, spare: u64 }, then the ids.
    let mut body = Vec::with_capacity(16 + 8 * nodes.len());
    body.extend_from_slice(&count.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&0u64.to_ne_bytes());
    for n in nodes {
        body.extend_from_slice(&n.to_ne_bytes());
    }
    fuse_notify(dev, FUSE_NOTIFY_PRUNE, &[&body])
}

const FUSE_NOTIFY_STORE: i32 = 4;

/// Sends one `FUSE_NOTIFY_STORE`: `data` becomes the kernel's cached content of node `ino`
/// from byte `offset` (the pages it fills whole, or up to the file's end, are then read
/// without a READ). It waits for the locks of those pages, which a reader holds while its
/// READ of them is unanswered. Fails with `ENOENT` when the kernel does not hold the node.
pub fn fuse_notify_store(
    dev: BorrowedFd<'_>,
    ino: u64,
    offset: u64,
    data: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    // struct fuse_notify_store_out { nodeid: u64, offset: u64, size: u32, padding: u32 },
    // then the data.
    let mut out = [0u8; 24];
    out[0..8].copy_from_slice(&ino.to_ne_bytes());
    out[8..16].copy_from_slice(&offset.to_ne_bytes());
    out[16..20].copy_from_slice(&size.to_ne_bytes());
    fuse_notify(dev, FUSE_NOTIFY_STORE, &[&out, data])
}

const FUSE_NOTIFY_INVAL_INODE: i32 = 2;

/// Sends one `FUSE_NOTIFY_INVAL_INODE` for node `ino` down the FUSE connection `dev`, for
/// its attributes only (offset -1: the page cache is left alone, so the kernel never waits
/// for page locks or writeback, and the call cannot block on a request in flight). Fails
/// with `ENOENT` when the kernel does not hold the node.
pub fn fuse_notify_inval_attrs(dev: BorrowedFd<'_>, ino: u64) -> io::Result<()> {
    // struct fuse_notify_inval_inode_out { ino: u64, off: i64, len: i64 }
    let mut body = [0u8; 24];
    body[0..8].copy_from_slice(&ino.to_ne_bytes());
    body[8..16].copy_from_slice(&(-1i64).to_ne_bytes());
    fuse_notify(dev, FUSE_NOTIFY_INVAL_INODE, &[&body])
}

/// Sends one `FUSE_NOTIFY_INVAL_INODE` for node `ino` down the FUSE connection `dev`, for
/// its attributes and everything it caches of the node's data: its page cache, a
/// directory's cached listing, a symlink's cached target. Dirty pages are written back
/// first, so the call waits for requests the daemon must answer: never from a thread that
/// serves requests. Fails with `ENOENT` when the kernel does not hold the node.
pub fn fuse_notify_inval_inode(dev: BorrowedFd<'_>, ino: u64) -> io::Result<()> {
    // struct fuse_notify_inval_inode_out { ino: u64, off: i64, len: i64 }: off 0, len 0
    // (to the end).
    let mut body = [0u8; 24];
    body[0..8].copy_from_slice(&ino.to_ne_bytes());
    fuse_notify(dev, FUSE_NOTIFY_INVAL_INODE, &[&body])
}

const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;

/// `FUSE_EXPIRE_ONLY` (protocol 7.38, Linux 6.2): the entry only expires.
const FUSE_EXPIRE_ONLY: u32 = 1;

/// Sends one `FUSE_NOTIFY_INVAL_ENTRY` for `name` in directory node `parent`. With
/// `expire_only` (Linux 6.2+; older kernels ignore the flag) the kernel's dentry only
/// expires: its next use looks the name up again, and only a name that now holds another
/// node (or none) is dropped. Without it the dentry is dropped at once with every dentry
/// below it, and mounts on them are detached: for negative dentries only. It takes the
/// directory's lock, so the call waits for requests in that directory: never from a thread
/// that serves requests. Fails with `ENOENT` when the kernel holds no such dentry.
pub fn fuse_notify_inval_entry(
    dev: BorrowedFd<'_>,
    parent: u64,
    name: &std::ffi::OsStr,
    expire_only: bool,
) -> io::Result<()> {
    let name = name.as_bytes();
    let len = u32::try_from(name.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    // struct fuse_notify_inval_entry_out { parent: u64, namelen: u32, flags: u32 }, then
    // the name and a NUL.
    let mut body = Vec::with_capacity(16 + name.len() + 1);
    body.extend_from_slice(&parent.to_ne_bytes());
    body.extend_from_slice(&len.to_ne_bytes());
    let flags = if expire_only { FUSE_EXPIRE_ONLY } else { 0 };
    body.extend_from_slice(&flags.to_ne_bytes());
    body.extend_from_slice(name);
    body.push(0);
    fuse_notify(dev, FUSE_NOTIFY_INVAL_ENTRY, &[&body])
}

/// `FUSE_DEV_IOC_CLONE` (`_IOR(229, 0, uint32_t)`).
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;
/// `FUSE_DEV_IOC_BACKING_OPEN` (`_IOW(229, 1, struct fuse_backing_map)`).
const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE` (`_IOW(229, 2, uint32_t)`).
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// A second `/dev/fuse` fd on the connection of `dev`, with its own request queue
/// position: each serving thread reads from its own (`FUSE_DEV_IOC_CLONE`).
pub fn fuse_dev_clone(dev: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new = open_fuse_device()?;
    let src: u32 = dev
        .as_raw_fd()
        .try_into()
        .map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the fd to clone) through the pointer, which
    // points at `src`, alive for the call; `new` is an open fd.
    let r = unsafe { libc::ioctl(new.as_raw_fd(), FUSE_DEV_IOC_CLONE, &src as *const u32) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(new)
}

/// Registers `file` as a passthrough backing file of the connection `dev` and returns its
/// id (`FUSE_DEV_IOC_BACKING_OPEN`; needs `CAP_SYS_ADMIN`).
///
/// The kernel writes to a backing file with the credentials of the thread that registered
/// it, and a write by a process with `CAP_FSETID` keeps setuid and setgid bits. A file made
/// setuid while open in passthrough must lose the bits at the next write by anyone, so the
/// file is registered with `CAP_FSETID` out of this thread's effective set (capabilities are
/// per thread; the set is restored after). Without that, no registration.
pub fn fuse_backing_open(dev: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<u32> {
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
    let caps = capabilities(None)?;
    let mut without = caps;
    without.effective.remove(CapabilitySet::FSETID);
    set_capabilities(None, without)?;
    let r = backing_open_ioctl(dev, file);
    if let Err(e) = set_capabilities(None, caps) {
        tracing::warn!(error = %e, "cannot restore CAP_FSETID after registering a backing file");
    }
    r
}

fn backing_open_ioctl(dev: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<u32> {
    // struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; }
    let mut map = [0u8; 16];
    map[0..4].copy_from_slice(&file.as_raw_fd().to_ne_bytes());
    // SAFETY: the ioctl reads one 16-byte struct fuse_backing_map through the pointer, which
    // points at `map`, alive and 16 bytes long for the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, map.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EIO))
}

/// Drops backing file `id` of the connection `dev` (`FUSE_DEV_IOC_BACKING_CLOSE`).
pub fn fuse_backing_close(dev: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    // SAFETY: the ioctl reads one u32 through the pointer, which points at `id`, alive for
    // the call.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            FUSE_DEV_IOC_BACKING_CLOSE,
            &id as *const u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes one reply (`header` then `body`) down the FUSE connection `dev` in one system call.
pub fn fuse_write_reply(dev: BorrowedFd<'_>, header: &[u8], body: &[u8]) -> io::Result<()> {
    fuse_write_message(dev, &[header, body])
}

/// Writes one message made of `parts` to the FUSE connection `dev` in one call (the kernel
/// takes a message whole or not at all).
fn fuse_write_message(dev: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
    let slices: smallvec::SmallVec<[io::IoSlice<'_>; 3]> =
        parts.iter().map(|p| io::IoSlice::new(p)).collect();
    let n = rustix::io::writev(dev, &slices)?;
    if n != parts.iter().map(|p| p.len()).sum::<usize>() {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// Why a reply of file data was not sent.
#[derive(Debug)]
pub enum FileReplyError {
    /// Reading the file failed: nothing was sent; the request is to be answered with the
    /// error.
    Read(io::Error),
    /// The reply could not be sent (the request may have been interrupted).
    Send(io::Error),
    /// This way of sending cannot carry it (a file without splice, a pipe too small):
    /// nothing was sent or read; send it another way.
    Unsupported,
}

/// Two pipes that carry file data into a FUSE reply without copying it through the
/// daemon's memory: the data is spliced from the file into `data` (page references, no
/// copy), the reply header written into `msg` and the data moved in behind it
/// (pipe to pipe, no copy), and the message spliced to `/dev/fuse` in one call, as the
/// kernel takes a reply. The kernel then copies the data once, from the file's page cache
/// into the request's pages; through `pread` and `writev` it is copied twice. Two pipes
/// because the header, which carries the length, goes first, and the length is known only
/// once the data is read (a short read at end of file).
#[derive(Debug)]
pub struct ReplyPipes {
    data_r: OwnedFd,
    data_w: OwnedFd,
    msg_r: OwnedFd,
    msg_w: OwnedFd,
    /// The most data one reply may carry through these pipes.
    max: usize,
}

impl ReplyPipes {
    /// Pipes for replies of up to `want` bytes (fewer when the pipe size limit,
    /// `/proc/sys/fs/pipe-max-size`, is lower: [`ReplyPipes::max`]).
    pub fn new(want: usize) -> io::Result<ReplyPipes> {
        use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, PipeFlags};
        let flags = PipeFlags::CLOEXEC | PipeFlags::NONBLOCK;
        let (data_r, data_w) = pipe_with(flags)?;
        let (msg_r, msg_w) = pipe_with(flags)?;
        let page = rustix::param::page_size().max(4096);
        // Data at a page-unaligned offset spans one page more than its length; the message
        // pipe holds the header's page too.
        let data_want = want + page;
        let msg_want = want + 2 * page;
        // An unprivileged process may not exceed pipe-max-size (1 MiB by default): the
        // largest power of two below what is wanted then.
        let grow = |fd: &OwnedFd, want: usize| -> io::Result<usize> {
            let mut size = want;
            while fcntl_setpipe_size(fd, size).is_err() && size > 2 * page {
                size = (size - 1).next_power_of_two() / 2;
            }
            fcntl_getpipe_size(fd).map_err(io::Error::from)
        };
        let data_cap = grow(&data_w, data_want)?;
        let msg_cap = grow(&msg_w, msg_want)?;
        let max = data_cap
            .saturating_sub(page)
            .min(msg_cap.saturating_sub(2 * page))
            .min(want);
        Ok(ReplyPipes {
            data_r,
            data_w,
            msg_r,
            msg_w,
            max,
        })
    }

    /// The most data a reply through these pipes may carry.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Sends the reply to request `unique` down `dev`: at most `len` bytes of `file` from
    /// `offset` (fewer at end of file). After an error the pipes may hold leftovers: drop
    /// them.
    pub fn reply(
        &self,
        dev: BorrowedFd<'_>,
        unique: u64,
        file: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), FileReplyError> {
        use rustix::pipe::{splice, SpliceFlags};
        if len > self.max {
            return Err(FileReplyError::Unsupported);
        }
        let flags = SpliceFlags::NONBLOCK;
        let mut off = offset;
        let mut moved = 0;
        while moved < len {
            match splice(file, Some(&mut off), &self.data_w, None, len - moved, flags) {
                Ok(0) => break,
                Ok(n) => moved += n,
                Err(rustix::io::Errno::INTR) => continue,
                // No splice from this file (its filesystem lacks it), or a full pipe.
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::AGAIN) if moved == 0 => {
                    return Err(FileReplyError::Unsupported)
                }
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::AGAIN) => {
                    return Err(FileReplyError::Send(io::Error::other(
                        "splice stopped halfway",
                    )))
                }
                Err(e) => return Err(FileReplyError::Read(e.into())),
            }
        }
        let header = fuse_out_header(unique, 0, moved);
        let send = |e: rustix::io::Errno| FileReplyError::Send(e.into());
        if rustix::io::write(&self.msg_w, &header).map_err(send)? != header.len() {
            return Err(FileReplyError::Send(io::Error::other("short header write")));
        }
        let mut behind = 0;
        while behind < moved {
            match splice(&self.data_r, None, &self.msg_w, None, moved - behind, flags) {
                Ok(0) => return Err(FileReplyError::Send(io::Error::other("pipe emptied"))),
                Ok(n) => behind += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(send(e)),
            }
        }
        let total = header.len() + moved;
        loop {
            match splice(&self.msg_r, None, dev, None, total, flags) {
                Ok(n) if n == total => return Ok(()),
                Ok(_) => return Err(FileReplyError::Send(io::Error::other("short reply"))),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(send(e)),
            }
        }
    }
}

/// Reads `buf.len()` bytes of `fd` from `offset`, or up to end of file; returns how many.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Clears `O_DIRECT` on an open file: the daemon reads and writes it through buffers of its
/// own, which direct I/O would refuse (`EINVAL`) for not being aligned.
pub fn clear_direct(fd: BorrowedFd<'_>) -> io::Result<()> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl};
    let fl = fcntl_getfl(fd)?;
    if fl.contains(OFlags::DIRECT) {
        fcntl_setfl(fd, fl - OFlags::DIRECT)?;
    }
    Ok(())
}

/// Reads one request from the FUSE connection `dev` into `buf`.
pub fn fuse_read_request(dev: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    rustix::io::read(dev, buf).map_err(io::Error::from)
}

/// Opens `/dev/fuse` for a new session.
pub fn open_fuse_device() -> io::Result<OwnedFd> {
    rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(io::Error::from)
}

/// `truncate(2)` of a path (a size change without an open file; tools and tests use it).
pub fn truncate_path(path: &std::path::Path, len: u64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `c` is a NUL-terminated path that lives for the call.
    let r = unsafe { libc::truncate(c.as_ptr(), len) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    /// A file without fs-verity (or on a filesystem or kernel without it) measures as none.
    #[test]
    fn a_file_without_verity_has_no_digest() {
        let f = tempfile::tempfile().expect("tempfile");
        assert_eq!(
            super::measure_verity(std::os::fd::AsFd::as_fd(&f)).expect("measure"),
            None
        );
    }

    /// The test harness runs each test on a thread of its own, so this process has several:
    /// `fork` must refuse rather than leave the child a lock held by a thread it lacks.
    #[test]
    fn fork_refuses_a_threaded_process() {
        let e = super::fork().err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|m| m.starts_with("fork with")),
            "{e:?}"
        );
    }
}

//! The command line and `-o` options, parsed into a typed [`MountConfig`] and validated.
//!
//! The grammar is fuse-overlayfs's, because container engines drive us exactly as they drive it:
//! `stratafs [SOURCE] MOUNTPOINT [-o OPTS]... [-f] [-d] [-h|--help] [-V|--version]`.

use std::path::PathBuf;
use std::time::Duration;

mod parse;
mod validate;

pub use parse::parse_args;
pub use validate::validate;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// `-h` / `--help`: print usage and exit 0.
    Help,
    /// `-V` / `--version`: print the version and exit 0.
    Version,
    /// `--demo`: mount the sample layer stack shipped with the sources and show it.
    Demo,
    /// Mount a union.
    Mount(Box<MountConfig>),
}

/// One `C:H:S` triple of `uidmapping=` / `gidmapping=`, as containers/storage writes them:
/// ids `C..C+S` as stored in the layers (the container's ids) are shown through the mount as
/// `H..H+S` (ids of the namespace the daemon runs in, which a user namespace then maps back
/// to the container's view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    /// First id of the range as stored in the layers.
    pub container: u32,
    /// First id of the range as shown through the mount.
    pub host: u32,
    /// How many consecutive ids the range covers.
    pub len: u32,
}

/// `xino=`: how `st_ino` is composed when layers span several filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Xino {
    /// Use the high bits for the filesystem index when needed (the default).
    #[default]
    Auto,
    /// Always compose.
    On,
    /// Never compose; inode numbers may collide across filesystems.
    Off,
}

/// `redirect_dir=`: only `off` and `nofollow` behaviours exist today (renaming a lower
/// directory gets EXDEV); the value is kept so it can be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedirectDir {
    /// Do not create redirects (EXDEV for lower directories).
    #[default]
    Off,
    /// Accepted for compatibility; behaves as `off` for writes.
    On,
    /// Follow redirects found in layers, never create them.
    Follow,
    /// Neither follow nor create.
    NoFollow,
}

/// `markers=` (stratafs): which opaque and copy-up markers are written in the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Markers {
    /// The kernel's where the upper layer takes the kernel's formats (char 0/0 whiteouts,
    /// owners kept on the files), fuse-overlayfs's as well where it does not.
    #[default]
    Auto,
    /// Only the kernel's (the upper layer stays mountable by the kernel's overlayfs).
    Kernel,
    /// fuse-overlayfs's as well: `.wh..wh..opq` and `user.fuseoverlayfs.opaque` in opaque
    /// directories, `user.fuseoverlayfs.origin` on copied-up files.
    FuseOverlayfs,
}

/// `passthrough=` (stratafs): which files a daemon allowed FUSE passthrough opens in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passthrough {
    /// Every regular file, lower copies too (handles opened on a lower copy keep reading it
    /// after a copy-up).
    #[default]
    All,
    /// Only upper copies (and any file of a read-only union): reads of lower copies go
    /// through the daemon, and follow a copy-up as on the kernel's overlayfs.
    Upper,
    /// None (the writeback cache is used instead).
    Off,
}

/// A kernel mount flag given as an `-o` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFlag {
    /// `ro`
    ReadOnly,
    /// `rw`
    ReadWrite,
    /// `dev`
    Dev,
    /// `nodev`
    NoDev,
    /// `suid`
    Suid,
    /// `nosuid`
    NoSuid,
    /// `exec`
    Exec,
    /// `noexec`
    NoExec,
    /// `atime`
    Atime,
    /// `noatime`
    NoAtime,
    /// `dirsync`
    DirSync,
    /// `sync`
    Sync,
    /// `async`
    Async,
}

/// Everything a mount needs, typed. Paths are as given (made absolute against the current
/// directory); [`validate()`] checks them against the filesystem.
#[derive(Debug, Clone, PartialEq)]
pub struct MountConfig {
    /// The SOURCE positional (`overlay` from mount.fuse3), shown as the fsname.
    pub source: Option<String>,
    /// Where the union is mounted.
    pub mountpoint: PathBuf,
    /// Lower layers, topmost first (`lowerdir=top:...:bottom`).
    pub lowerdirs: Vec<PathBuf>,
    /// The writable layer; without it the mount is read-only.
    pub upperdir: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem.
    pub workdir: Option<PathBuf>,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-d` / `-o debug`: log every request (implies foreground).
    pub debug: bool,
    /// `uidmapping=C:H:S[:C:H:S...]`
    pub uid_mappings: Vec<IdMapping>,
    /// `gidmapping=C:H:S[:C:H:S...]`
    pub gid_mappings: Vec<IdMapping>,
    /// `squash_to_root`: every file appears owned by root.
    pub squash_to_root: bool,
    /// `squash_to_uid=N`
    pub squash_to_uid: Option<u32>,
    /// `squash_to_gid=N`
    pub squash_to_gid: Option<u32>,
    /// `static_nlink`: directories report nlink 1.
    pub static_nlink: bool,
    /// `noacl`: POSIX ACLs are not supported.
    pub noacl: bool,
    /// `xino=auto|on|off`
    pub xino: Xino,
    /// `ino32_t`: fold inode numbers into 32 bits.
    pub ino32: bool,
    /// `fsync=0|1` (default 1): whether fsync reaches the upper layer.
    pub fsync: bool,
    /// `volatile`: skip all syncs (implies fsync=0).
    pub volatile: bool,
    /// `threaded=0|1`: accepted for compatibility (the daemon is always multi-threaded).
    pub threaded: bool,
    /// `timeout=SECONDS`: entry and attribute cache time given to the kernel.
    pub timeout: Duration,
    /// `node_limit=N` (stratafs): how many nodes the daemon keeps before it asks the kernel
    /// to forget unused ones (default 160000, about 60 MiB of daemon memory).
    pub node_limit: usize,
    /// `writeback=0|1`: enable the kernel writeback cache.
    pub writeback: bool,
    /// `fast_ino=0|1`: accepted for compatibility.
    pub fast_ino: bool,
    /// `markers=auto|kernel|fuse-overlayfs` (stratafs).
    pub markers: Markers,
    /// `passthrough=all|upper|off` (stratafs).
    pub passthrough: Passthrough,
    /// `noxattrs`: xattr requests get ENOTSUP.
    pub noxattrs: bool,
    /// `xattr_permissions=0|1|2`: keep owner and mode in an xattr (1: security., 2: user.).
    pub xattr_permissions: u8,
    /// `plugins=a:b`: accepted and ignored (fuse-overlayfs layer plugins).
    pub plugins: Vec<String>,
    /// `redirect_dir=`
    pub redirect_dir: RedirectDir,
    /// `context="..."`: SELinux context, accepted and ignored.
    pub context: Option<String>,
    /// Kernel mount flags, in the order given.
    pub kernel_flags: Vec<KernelFlag>,
    /// `allow_other`
    pub allow_other: bool,
    /// `allow_root`
    pub allow_root: bool,
    /// `default_permissions` (always on; kept so it can be reported).
    pub default_permissions: bool,
    /// Unknown option keys, warned about on stderr and otherwise ignored.
    pub unknown: Vec<String>,
}

impl MountConfig {
    /// A configuration with fuse-overlayfs's defaults for everything but the paths.
    pub fn new(mountpoint: PathBuf, lowerdirs: Vec<PathBuf>) -> Self {
        MountConfig {
            source: None,
            mountpoint,
            lowerdirs,
            upperdir: None,
            workdir: None,
            foreground: false,
            debug: false,
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            static_nlink: false,
            noacl: false,
            xino: Xino::Auto,
            ino32: false,
            fsync: true,
            volatile: false,
            threaded: false,
            timeout: Duration::from_secs(1_000_000_000),
            node_limit: 160_000,
            writeback: true,
            fast_ino: false,
            markers: Markers::Auto,
            passthrough: Passthrough::All,
            noxattrs: false,
            xattr_permissions: 0,
            plugins: Vec::new(),
            redirect_dir: RedirectDir::Off,
            context: None,
            kernel_flags: Vec::new(),
            allow_other: false,
            allow_root: false,
            default_permissions: true,
            unknown: Vec::new(),
        }
    }

    /// True when there is no upper layer: every write gets EROFS.
    pub fn read_only(&self) -> bool {
        self.upperdir.is_none() || self.kernel_flags.contains(&KernelFlag::ReadOnly)
    }
}

/// Why a command line or a layer set was refused. Each displays as one line naming the problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A usage error on the command line.
    #[error("{0}")]
    Usage(String),
    /// An option value that does not parse.
    #[error("invalid value for option '{key}': {reason}")]
    BadValue {
        /// The option key.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A directory or layer arrangement that cannot be mounted.
    #[error("{0}")]
    Layout(String),
}

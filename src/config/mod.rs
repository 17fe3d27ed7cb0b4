//! The command line and `-o` options, parsed into a typed [`MountConfig`] and validated.
//!
//! The grammar is fuse-overlayfs's, because container engines drive us exactly as they drive it:
//! `stratafs [SOURCE] MOUNTPOINT [-o OPTS]... [-f] [-d] [-h|--help] [-V|--version]`.

use std::path::PathBuf;
use std::time::Duration;

mod parse;
mod validate;

pub use parse::{parse_args, IGNORED_KEYS, KERNEL_FLAG_KEYS, OPTION_KEYS};
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

/// The default of `udba_watches=`: the most layer directories watched with `udba=notify`
/// (each watch costs the kernel about 1 KiB, and counts against
/// `fs.fanotify.max_user_marks` or `fs.inotify.max_user_watches`).
pub const UDBA_WATCHES: usize = 8192;

/// `udba=` (aufs's name, "user's direct branch access"): what the daemon does about changes
/// made to the layers behind the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Udba {
    /// Nothing: such changes show only after `stratafs refresh` (the kernel's overlayfs calls
    /// them undefined behaviour).
    #[default]
    None,
    /// The daemon watches the layer directories it has looked into (fanotify where it may,
    /// else inotify) and refreshes what changed in them (see docs/SEMANTICS.md).
    Notify,
}

/// `redirect_dir=`, with the kernel's values. Redirects found in layers (`overlay.redirect`
/// on a directory the kernel renamed) are followed by `on`, `follow` and `off` (the kernel's
/// `off` is `follow` where it is built with `redirect_always_follow`, as this kernel is);
/// `nofollow` refuses to look such a directory up (`EPERM`), as the kernel does. With `on`
/// a rename of a directory with lower copies moves its upper copy with a redirect; with the
/// others it gets `EXDEV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedirectDir {
    /// Write no redirects; follow those found (the kernel's `off` with
    /// `redirect_always_follow`).
    #[default]
    Off,
    /// Redirects enabled: followed, and written by renames of directories with lower
    /// copies.
    On,
    /// Follow redirects found in layers, never create them.
    Follow,
    /// Neither follow nor create: a directory with a redirect cannot be looked up.
    NoFollow,
}

impl RedirectDir {
    /// True when lookups follow redirects.
    pub fn follows(self) -> bool {
        self != RedirectDir::NoFollow
    }

    /// The mode as the kernel names it once `off` is resolved (in its messages).
    pub fn kernel_name(self) -> &'static str {
        match self {
            RedirectDir::On => "on",
            RedirectDir::Off | RedirectDir::Follow => "follow",
            RedirectDir::NoFollow => "nofollow",
        }
    }
}

/// `verity=` (the kernel's): whether the fs-verity digest a metacopy file records of its
/// data is checked when the data is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verity {
    /// Digests are not checked (nor recorded at copy-ups).
    #[default]
    Off,
    /// A recorded digest must match the data's fs-verity digest; copy-ups record the
    /// digest of data with fs-verity.
    On,
    /// As `On`, and a metacopy file without a digest is refused; a copy-up of data
    /// without fs-verity copies the data.
    Require,
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

/// `io_uring=` (stratafs): which transport serves the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Uring {
    /// FUSE over io_uring where the kernel offers it and passthrough is granted (the data
    /// of open files then bypasses the daemon, and the rings serve the metadata requests
    /// faster); `/dev/fuse` otherwise, where every byte goes through the daemon and the
    /// rings' extra copy and single queue per CPU make big reads slower
    /// (docs/PERFORMANCE.md, "FUSE over io_uring against /dev/fuse").
    #[default]
    Auto,
    /// FUSE over io_uring wherever the kernel offers it.
    On,
    /// `/dev/fuse` only.
    Off,
}

impl Uring {
    /// Whether the rings are wanted for a connection that was (or was not) granted FUSE
    /// passthrough.
    pub fn wanted(self, passthrough: bool) -> bool {
        match self {
            Uring::On => true,
            Uring::Auto => passthrough,
            Uring::Off => false,
        }
    }
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

/// Where the daemon logs (`log=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error (gone once the daemon detaches, unless `-f`).
    Stderr,
    /// `log=PATH`: appended to this file (made absolute at parse time).
    File(PathBuf),
    /// `log=syslog`: the local syslog socket (`/dev/log`), facility daemon.
    Syslog,
}

/// Everything a mount needs, typed. Paths are as given (made absolute against the current
/// directory); [`validate()`] checks them against the filesystem.
#[derive(Debug, Clone, PartialEq)]
pub struct MountConfig {
    /// The SOURCE positional (`overlay` from mount.fuse3), shown as the fsname.
    pub source: Option<String>,
    /// Where the union is mounted.
    pub mountpoint: PathBuf,
    /// Lower layers, topmost first (`lowerdir=top:...:bottom`, or `lowerdir+=` each).
    pub lowerdirs: Vec<PathBuf>,
    /// Data-only lower layers, below the others (`lowerdir=...::data1::data2`, or
    /// `datadir+=` each): never part of the tree, only the data of metacopy files that
    /// redirect there by absolute path.
    pub datadirs: Vec<PathBuf>,
    /// The writable layer; without it the mount is read-only.
    pub upperdir: Option<PathBuf>,
    /// Scratch directory on the upper's filesystem.
    pub workdir: Option<PathBuf>,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-d` / `-o debug`: log every request (implies foreground).
    pub debug: bool,
    /// `log=PATH|syslog`: where the daemon's log goes (stderr by default, which a detached
    /// daemon no longer has).
    pub log: LogTarget,
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
    /// to forget unused ones (default 160000, about 40 MiB of daemon memory).
    pub node_limit: usize,
    /// `udba=none|notify` (stratafs): see [`Udba`].
    pub udba: Udba,
    /// `udba_watches=N` (stratafs): the most layer directories watched with `udba=notify`.
    pub udba_watches: usize,
    /// `writeback=0|1`: enable the kernel writeback cache.
    pub writeback: bool,
    /// `fast_ino=0|1`: accepted for compatibility.
    pub fast_ino: bool,
    /// `markers=auto|kernel|fuse-overlayfs` (stratafs).
    pub markers: Markers,
    /// `passthrough=all|upper|off` (stratafs).
    pub passthrough: Passthrough,
    /// `io_uring[=auto|on|off]` (stratafs): when to serve requests through FUSE over
    /// io_uring (see [`Uring`]).
    pub io_uring: Uring,
    /// `noxattrs`: xattr requests get ENOTSUP.
    pub noxattrs: bool,
    /// `xattr_permissions=0|1|2`: keep owner and mode in an xattr (1: security., 2: user.).
    pub xattr_permissions: u8,
    /// `plugins=a:b`: accepted and ignored (fuse-overlayfs layer plugins).
    pub plugins: Vec<String>,
    /// `redirect_dir=`: as given (`None`: not given); see [`MountConfig::redirect_mode`].
    pub redirect_dir: Option<RedirectDir>,
    /// `metacopy=on|off`: as given (`None`: not given, which is off); see
    /// [`MountConfig::metacopy_on`].
    pub metacopy: Option<bool>,
    /// `index=on|off` (default off): lower hard links stay one file across copy-ups,
    /// through the kernel's inodes index in the work directory.
    pub index: bool,
    /// `verity=off|on|require`.
    pub verity: Verity,
    /// `userxattr`: the overlay's own xattrs are the `user.overlay.*` ones even as root, as
    /// with the kernel's option (an upper shared with rootless kernel mounts).
    pub userxattr: bool,
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
            datadirs: Vec::new(),
            upperdir: None,
            workdir: None,
            foreground: false,
            debug: false,
            log: LogTarget::Stderr,
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
            udba: Udba::None,
            udba_watches: UDBA_WATCHES,
            writeback: true,
            fast_ino: false,
            markers: Markers::Auto,
            passthrough: Passthrough::All,
            io_uring: Uring::Auto,
            noxattrs: false,
            xattr_permissions: 0,
            plugins: Vec::new(),
            redirect_dir: None,
            metacopy: None,
            index: false,
            verity: Verity::Off,
            userxattr: false,
            context: None,
            kernel_flags: Vec::new(),
            allow_other: false,
            allow_root: false,
            default_permissions: true,
            unknown: Vec::new(),
        }
    }

    /// The `redirect_dir` mode in force: as given, else `off`, or `nofollow` with
    /// `userxattr` (as the kernel silently turns its default off there), or `on` with
    /// `metacopy=on` (which needs it, as the kernel turns it on).
    pub fn redirect_mode(&self) -> RedirectDir {
        match self.redirect_dir {
            Some(m) => m,
            None if self.metacopy == Some(true) => RedirectDir::On,
            None if self.userxattr => RedirectDir::NoFollow,
            None => RedirectDir::Off,
        }
    }

    /// True with `metacopy=on`: lookups follow metacopy files to their data, and changes of
    /// a lower file's metadata copy up its metadata alone.
    pub fn metacopy_on(&self) -> bool {
        self.metacopy == Some(true)
    }

    /// True when the inodes index is used: `index=on` on a writable union (the kernel
    /// ignores it without an upper layer, and a `ro` mount sets no index up).
    pub fn index_on(&self) -> bool {
        self.index && !self.read_only()
    }

    /// True when there is no upper layer: every write gets EROFS.
    pub fn read_only(&self) -> bool {
        self.upperdir.is_none() || self.kernel_flags.contains(&KernelFlag::ReadOnly)
    }
}

/// Why a command line or a layer set was refused. Each displays as one line naming the problem
/// (control characters of paths and values shown escaped, see [`one_line`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A usage error on the command line.
    #[error("{}", one_line(.0))]
    Usage(String),
    /// An option value that does not parse.
    #[error("invalid value for option '{}': {}", one_line(key), one_line(reason))]
    BadValue {
        /// The option key.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A directory or layer arrangement that cannot be mounted.
    #[error("{}", one_line(.0))]
    Layout(String),
}

/// `msg` fit for one line of stderr: control characters (a newline in a path or an option
/// value, an escape sequence) are shown escaped (`\n`, `\u{1b}`); everything else is kept.
pub fn one_line(msg: &str) -> std::borrow::Cow<'_, str> {
    if !msg.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len() + 8);
    for c in msg.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The text of an OS error for a message line: std's `Display` of an `io::Error` (and
/// rustix's of an `Errno`) appends ` (os error N)`; error lines carry the strerror text only.
pub fn os_error_text(err: &std::io::Error) -> String {
    strip_os_error_codes(&err.to_string())
}

/// `msg` with every ` (os error N)` removed (messages built from nested `io::Error`s carry
/// one per level).
pub fn strip_os_error_codes(msg: &str) -> String {
    const MARK: &str = " (os error ";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'-')
            .count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + MARK.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn os_error_codes_are_stripped() {
        let e = std::io::Error::from_raw_os_error(libc::EROFS);
        assert_eq!(os_error_text(&e), "Read-only file system");
        assert_eq!(
            strip_os_error_codes("workdir '/w': Not a directory (os error 20)"),
            "workdir '/w': Not a directory"
        );
        assert_eq!(
            strip_os_error_codes("a (os error 1): b (os error 13) c"),
            "a: b c"
        );
        // Only the exact form goes.
        for keep in [
            "x (os error )",
            "x (os error 2",
            "x (os error two)",
            "(os error 3)",
        ] {
            assert_eq!(strip_os_error_codes(keep), keep);
        }
        assert_eq!(os_error_text(&std::io::Error::other("plain")), "plain");
    }

    #[test]
    fn messages_stay_on_one_line() {
        assert_eq!(one_line("plain 'é'"), "plain 'é'");
        assert_eq!(one_line("a\nb\tc\u{1b}[1m\r"), "a\\nb\\tc\\u{1b}[1m\\r");
        let e = ConfigError::Layout("lowerdir '/x\ny' does not exist".into());
        assert_eq!(e.to_string(), "lowerdir '/x\\ny' does not exist");
        let e = ConfigError::BadValue {
            key: "k\n".into(),
            reason: "'1\n2' is bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "invalid value for option 'k\\n': '1\\n2' is bad"
        );
    }
}

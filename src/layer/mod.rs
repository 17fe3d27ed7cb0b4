//! One layer directory on disk, held by an fd, and the stack of them.

pub mod format;
pub mod idmap;
pub mod ino;

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

pub use format::OverlayXattrs;
pub use idmap::IdMap;
pub use ino::{Ino, InoScheme, LayerIno};

use crate::sys::{self, RenameMode, Stat};

/// Index of a layer in the stack: 0 is the topmost (the upper layer when there is one).
pub type LayerIdx = u16;

/// Where a non-directory is when it is found only in the inodes index (`index=on`): a
/// lower hard link none of whose names in the upper layer holds this name, but another
/// of whose names was copied up into the index (`WORKDIR/index`). Never a real layer's
/// index: a stack has fewer layers.
pub const INDEX_LAYER: LayerIdx = LayerIdx::MAX;

/// One layer directory, opened once at mount time and afterwards reached only through its fd.
#[derive(Debug)]
pub struct Layer {
    /// The directory as given on the command line; for messages only, never opened again.
    pub path: PathBuf,
    root: OwnedFd,
    /// The filesystem the layer lives on.
    pub dev: u64,
    /// Index of `dev` among the distinct filesystems of the stack (0 for the topmost one).
    pub fs_index: u32,
    /// True for the writable upper layer.
    pub upper: bool,
    /// The namespace of the overlay xattrs read in it (the stack's, see
    /// [`LayerStack::xattrs`]).
    pub xattrs: OverlayXattrs,
}

/// What one layer says about one name in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Nothing by that name, and no whiteout for it.
    Missing,
    /// A whiteout (char device 0/0 or `.wh.NAME`): hides the name in lower layers.
    Whiteout,
    /// An object, and its birth time (see [`sys::stat_at_born`]).
    Found(Stat, u64),
}

impl Layer {
    /// Opens the layer directory. The path is resolved once, here (following symlinks, as
    /// podman's `l/` short names need); everything after goes through the fd.
    pub fn open(path: &Path, upper: bool) -> io::Result<Layer> {
        let root: OwnedFd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        // A lower layer is reached through a private clone of its mount, so that mounts
        // inside it (and this daemon's own, propagated there) never show, as on the kernel's
        // overlayfs. The upper layer is cloned with the work directory
        // ([`LayerStack::open`]): renames between the two need one mount. Where the daemon
        // may not clone mounts, mount points inside the layer are refused instead
        // (`sys::stat_at`, `RESOLVE_NO_XDEV`).
        let root = if upper {
            root
        } else {
            sys::private_mount_clone(root.as_fd()).unwrap_or(root)
        };
        Layer::from_fd(path, root, upper)
    }

    fn from_fd(path: &Path, root: OwnedFd, upper: bool) -> io::Result<Layer> {
        let st = sys::stat_fd(root.as_fd())?;
        Ok(Layer {
            path: path.to_path_buf(),
            root,
            dev: st.dev,
            fs_index: 0,
            upper,
            xattrs: if sys::euid() == 0 {
                OverlayXattrs::Trusted
            } else {
                OverlayXattrs::User
            },
        })
    }

    /// The layer's root directory fd.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Looks `name` up in directory `dir` of this layer: the object, a whiteout for it, or
    /// nothing. An object wins over a `.wh.` file for the same name in the same layer: a
    /// whiteout only hides the layers below it. An xattr whiteout is found as the empty
    /// file it is (see [`may_be_xattr_whiteout`]): whether it is one depends on its
    /// directory, which the caller knows best.
    pub fn probe(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Probe> {
        match sys::stat_at_born(dir, name) {
            Ok((st, _)) if format::is_whiteout_stat(&st) => Ok(Probe::Whiteout),
            Ok((st, born)) => Ok(Probe::Found(st, born)),
            Err(e) if is_absent(&e) => match sys::stat_at(dir, &format::whiteout_name(name)) {
                Ok(_) => Ok(Probe::Whiteout),
                Err(e) if is_absent(&e) => Ok(Probe::Missing),
                Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => Ok(Probe::Missing),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// True when directory `name` under `parent` in this layer hides the layers below it:
    /// an opaque xattr set to `y` (kernel root or `userxattr` form, or fuse-overlayfs's) or a
    /// `.wh..wh..opq` file inside.
    pub fn is_opaque(&self, parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
        let names = xattr_list(parent, name)?;
        self.is_opaque_listed(parent, name, &names)
    }

    /// What directory `name` under `parent` in this layer says to a lookup going on into
    /// the layers below: whether it is opaque (asked only when `more` layers are to be
    /// looked in, or the directory has a redirect, which an opaque one does not follow), and
    /// its `overlay.redirect` (see [`crate::overlay`]'s redirect module). One xattr listing
    /// where it has neither.
    pub fn dir_markers(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        more: bool,
    ) -> io::Result<(bool, Option<Vec<u8>>)> {
        let names = xattr_list(parent, name)?;
        let has_redirect = sys::split_xattr_list(&names).any(|x| x == self.xattrs.redirect());
        if (more || has_redirect) && self.is_opaque_listed(parent, name, &names)? {
            return Ok((true, None));
        }
        let redirect = if has_redirect {
            absent_if_unsupported(sys::get_xattr_at(parent, name, self.xattrs.redirect()))?
        } else {
            None
        };
        Ok((false, redirect))
    }

    /// [`Layer::is_opaque`], the directory's xattr names `names` listed already.
    fn is_opaque_listed(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        names: &[u8],
    ) -> io::Result<bool> {
        for x in sys::split_xattr_list(names) {
            if format::OPAQUE_XATTRS.iter().any(|o| OsStr::new(o) == x) {
                if let Some(v) = sys::get_xattr_at(parent, name, x)? {
                    if format::is_opaque_value(&v) {
                        return Ok(true);
                    }
                }
            }
        }
        let mut marker = name.as_bytes().to_vec();
        marker.push(b'/');
        marker.extend_from_slice(format::OPAQUE_MARKER.as_bytes());
        match sys::open_beneath(parent, &marker, OFlags::PATH) {
            Ok(_) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// True when `st`, found as `name` in layer directory `dir`, is an xattr whiteout (Linux 6.7+):
/// an empty regular file with `overlay.whiteout`, in a directory marked `overlay.opaque=x`.
/// Only an empty regular file costs anything: one xattr read, and the directory's where the
/// file has the whiteout xattr.
///
/// The kernel's lookup takes such a file for a whiteout in any directory, but its listing
/// only in a lower directory marked `x`, and lists the name elsewhere; here a whiteout is
/// one in both, in every layer, exactly where the directory is marked (docs/SEMANTICS.md).
pub fn is_xattr_whiteout(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    st: &Stat,
    ns: OverlayXattrs,
) -> io::Result<bool> {
    Ok(may_be_xattr_whiteout(st)
        && has_whiteout_xattr(dir, name, ns)?
        && is_xwhiteouts_dir(dir, ns)?)
}

/// True when `st` is of the kind an xattr whiteout is: an empty regular file.
pub fn may_be_xattr_whiteout(st: &Stat) -> bool {
    st.kind() == Some(sys::FileKind::Regular) && st.size == 0
}

/// True when entry `name` of layer directory `dir` has `overlay.whiteout`.
pub fn has_whiteout_xattr(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    ns: OverlayXattrs,
) -> io::Result<bool> {
    Ok(absent_if_unsupported(sys::get_xattr_at(dir, name, ns.whiteout()))?.is_some())
}

/// True when layer directory `dir` is marked `overlay.opaque=x`: its empty regular files
/// with `overlay.whiteout` are whiteouts (see [`is_xattr_whiteout`]).
pub fn is_xwhiteouts_dir(dir: BorrowedFd<'_>, ns: OverlayXattrs) -> io::Result<bool> {
    Ok(absent_if_unsupported(sys::get_xattr(dir, ns.opaque()))?
        .is_some_and(|v| format::is_xwhiteouts_value(&v)))
}

/// True when `st` looks like a metacopy file the kernel made (`overlay.metacopy`): a regular
/// file with fewer blocks than its size needs (metacopy files have no data blocks). A small
/// one whose xattr block covers its size (ext4) does not: see [`is_impure_dir`].
pub fn looks_sparse(st: &Stat) -> bool {
    st.kind() == Some(sys::FileKind::Regular)
        && st.size > 0
        && st.blocks.saturating_mul(512) < st.size
}

/// True when layer directory `dir` is marked `overlay.impure` (it holds entries copied up
/// with an origin, as every metacopy file the kernel makes is).
pub fn is_impure_dir(dir: BorrowedFd<'_>, ns: OverlayXattrs) -> io::Result<bool> {
    Ok(absent_if_unsupported(sys::get_xattr(dir, ns.impure()))?.is_some())
}

/// The `overlay.metacopy` of entry `name` of layer directory `dir`, if it has one (see
/// [`format::metacopy_value_ok`]).
pub fn metacopy_xattr(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    ns: OverlayXattrs,
) -> io::Result<Option<Vec<u8>>> {
    absent_if_unsupported(sys::get_xattr_at(dir, name, ns.metacopy()))
}

/// The `overlay.redirect` of entry `name` of layer directory `dir`, if it has one.
pub fn redirect_xattr(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    ns: OverlayXattrs,
) -> io::Result<Option<Vec<u8>>> {
    absent_if_unsupported(sys::get_xattr_at(dir, name, ns.redirect()))
}

/// The xattr names of entry `name` under `dir` (none where the filesystem has no xattrs).
fn xattr_list(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    match sys::list_xattr_at(dir, name) {
        Ok(n) => Ok(n),
        Err(e) if is_unsupported(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// An xattr read where a filesystem without xattrs has none.
fn absent_if_unsupported(r: io::Result<Option<Vec<u8>>>) -> io::Result<Option<Vec<u8>>> {
    match r {
        Err(e) if is_unsupported(&e) => Ok(None),
        r => r,
    }
}

/// True when directory `dir` holds a `.wh.NAME` file for `name`. A name too long to carry
/// the prefix cannot have one.
pub fn dot_whiteout_exists(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    match sys::stat_at(dir, &format::whiteout_name(name)) {
        Ok(_) => Ok(true),
        Err(e) if is_absent(&e) || e.raw_os_error() == Some(libc::ENAMETOOLONG) => Ok(false),
        Err(e) => Err(e),
    }
}

/// ENOENT, or ENOTDIR when a path component turned out not to be a directory.
pub fn is_absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// The filesystem does not do xattrs at all.
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTSUP))
}

/// How whiteouts are written into the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Char device 0/0, the kernel's format (needs CAP_MKNOD on the upper filesystem).
    CharDevice,
    /// An empty `.wh.NAME` file (rootless, as fuse-overlayfs writes them).
    DotWh,
}

/// The work directory (`WORKDIR/work`) where copies and new objects are staged before they
/// are renamed into the upper layer, and the formats this mount writes.
#[derive(Debug)]
pub struct WorkDir {
    fd: OwnedFd,
    /// The work directory given (`WORKDIR`, whose `work` is `fd`).
    base: OwnedFd,
    /// Whiteout format written on delete.
    pub whiteout: WhiteoutFormat,
    /// `trusted.overlay.` as root, `user.overlay.` otherwise (the kernel's `userxattr`).
    pub xattr_prefix: &'static str,
    /// The same, as the overlay xattrs' namespace.
    pub xattrs: OverlayXattrs,
    /// Serialises replacing the shared whiteout when it is full of links.
    shared_whiteout: parking_lot::Mutex<()>,
}

/// The shared char 0/0 whiteout in the work directory that whiteouts are hard links of.
const SHARED_WHITEOUT: &str = "#whiteout";

impl WorkDir {
    /// Opens `workdir/work` (creating it), clears entries a crash left in it, and finds out
    /// which whiteout format the upper filesystem allows.
    pub fn open(workdir: &Path) -> io::Result<WorkDir> {
        WorkDir::open_in(workdir, None, false)
    }

    /// [`WorkDir::open`], through `base` (the work directory, opened already) when given;
    /// `userxattr` forces the `user.overlay.` names.
    fn open_in(workdir: &Path, base: Option<OwnedFd>, userxattr: bool) -> io::Result<WorkDir> {
        let base: OwnedFd = match base {
            Some(b) => b,
            None => rustix::fs::open(
                workdir,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| annotate(e.into(), "workdir", workdir))?,
        };
        // Mode 0 as the kernel makes it; a daemon without CAP_DAC_OVERRIDE could not use
        // that, so it makes (or mends) its own 0700.
        let root = sys::euid() == 0;
        // A `work` that is not a directory (a file, a symlink: removed, not followed) is
        // made afresh, as the kernel's overlayfs replaces it.
        if let Ok(st) = sys::stat_at(base.as_fd(), OsStr::new("work")) {
            if !st.is_dir() {
                sys::unlink_at(base.as_fd(), OsStr::new("work"), false)
                    .map_err(|e| annotate(e, "workdir", workdir))?;
            }
        }
        match sys::mkdir_at(
            base.as_fd(),
            OsStr::new("work"),
            if root { 0 } else { 0o700 },
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if !root {
                    let _ = sys::chmod_at(base.as_fd(), OsStr::new("work"), 0o700);
                }
            }
            Err(e) => return Err(annotate(e, "workdir", workdir)),
        }
        let fd = sys::open_dir_path(base.as_fd(), b"work")
            .map_err(|e| annotate(e, "workdir", workdir))?;
        for e in sys::list_dir(fd.as_fd()).map_err(|e| annotate(e, "workdir", workdir))? {
            sys::remove_tree(fd.as_fd(), &e.name).map_err(|e| annotate(e, "workdir", workdir))?;
        }
        let probe = OsStr::new("#whiteout-probe");
        let whiteout = match sys::mknod_at(fd.as_fd(), probe, libc::S_IFCHR, 0) {
            Ok(()) => {
                let _ = sys::unlink_at(fd.as_fd(), probe, false);
                WhiteoutFormat::CharDevice
            }
            Err(_) => WhiteoutFormat::DotWh,
        };
        // `trusted.` xattrs need CAP_SYS_ADMIN in the initial user namespace: a daemon that
        // is root only in a user namespace (rootless podman's) uses `user.overlay.`, as the
        // kernel's overlayfs does with `userxattr`.
        let probe_key = OsStr::new("trusted.overlay.stratafs.probe");
        let xattrs = if !userxattr
            && sys::euid() == 0
            && match sys::set_xattr(fd.as_fd(), probe_key, b"y", 0) {
                Ok(()) => {
                    let _ = sys::remove_xattr(fd.as_fd(), probe_key);
                    true
                }
                Err(e) => e.raw_os_error() != Some(libc::EPERM),
            } {
            OverlayXattrs::Trusted
        } else {
            OverlayXattrs::User
        };
        Ok(WorkDir {
            fd,
            base,
            whiteout,
            xattr_prefix: xattrs.prefix(),
            xattrs,
            shared_whiteout: parking_lot::Mutex::new(()),
        })
    }

    /// Removes the shared whiteout (at unmount: the work directory is left empty, as the
    /// kernel leaves it; the whiteouts linked to it stay valid).
    pub fn remove_shared_whiteout(&self) {
        let _g = self.shared_whiteout.lock();
        let _ = sys::unlink_at(self.fd(), OsStr::new(SHARED_WHITEOUT), false);
    }

    /// Makes `name` in `dir` a char 0/0 whiteout that is a hard link of one shared whiteout
    /// inode, as the kernel's overlayfs does since Linux 5.8: deleting a lower tree then
    /// costs a link per name instead of a new inode (inode allocation dominated `rm -rf`).
    /// Falls back to a whiteout of its own where the upper filesystem refuses the link.
    pub fn link_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let shared = OsStr::new(SHARED_WHITEOUT);
        for _ in 0..3 {
            match sys::link_at(self.fd(), shared, dir, name) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let _g = self.shared_whiteout.lock();
                    match sys::mknod_at(self.fd(), shared, libc::S_IFCHR, 0) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(_) => break,
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {
                    // Full of links: a fresh inode takes its place (the links stay valid).
                    let _g = self.shared_whiteout.lock();
                    let fresh = OsStr::new("#whiteout-fresh");
                    let _ = sys::unlink_at(self.fd(), fresh, false);
                    if sys::mknod_at(self.fd(), fresh, libc::S_IFCHR, 0).is_err()
                        || sys::rename_at(self.fd(), fresh, self.fd(), shared, RenameMode::Replace)
                            .is_err()
                    {
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(e),
                Err(_) => break,
            }
        }
        sys::mknod_at(dir, name, libc::S_IFCHR, 0)
    }

    /// The work directory's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The fd of the directory given as `workdir` (`work` and `index` are in it).
    pub fn base(&self) -> BorrowedFd<'_> {
        self.base.as_fd()
    }

    /// The full name of overlay xattr `key` (`opaque`, `impure`, ...) for this mount.
    pub fn xattr(&self, key: &str) -> std::ffi::OsString {
        format!("{}{key}", self.xattr_prefix).into()
    }
}

/// The layers of one mount, topmost first.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Layer>,
    has_upper: bool,
    /// How many of the bottom layers are data-only.
    data_layers: usize,
    work: Option<WorkDir>,
    /// How `st_ino` is composed from a layer object's inode number.
    pub ino: InoScheme,
    /// The namespace of the overlay's own xattrs read and written in the layers.
    xattrs: OverlayXattrs,
}

impl LayerStack {
    /// Opens the upper layer (if any) and the lowers, topmost first.
    pub fn open(
        upper: Option<(&Path, &Path)>,
        lowers: &[PathBuf],
        xino: crate::config::Xino,
        ino32: bool,
    ) -> io::Result<LayerStack> {
        LayerStack::open_with(upper, lowers, &[], xino, ino32, false)
    }

    /// [`LayerStack::open`], with data-only layers `datas` below the lowers (see
    /// [`LayerStack::merged_len`]); `userxattr` makes the overlay xattrs the
    /// `user.overlay.` ones even as root, as the kernel's option does.
    pub fn open_with(
        upper: Option<(&Path, &Path)>,
        lowers: &[PathBuf],
        datas: &[PathBuf],
        xino: crate::config::Xino,
        ino32: bool,
        userxattr: bool,
    ) -> io::Result<LayerStack> {
        let mut layers = Vec::with_capacity(lowers.len() + datas.len() + 1);
        let mut work = None;
        if let Some((u, w)) = upper {
            let mut layer = Layer::open(u, true).map_err(|e| annotate(e, "upperdir", u))?;
            let mut work_base = None;
            if let Some((cu, cw)) = clone_upper_and_work(&layer, u, w) {
                layer = Layer::from_fd(u, cu, true).map_err(|e| annotate(e, "upperdir", u))?;
                work_base = Some(cw);
            }
            layers.push(layer);
            work = Some(WorkDir::open_in(w, work_base, userxattr)?);
        }
        for l in lowers {
            layers.push(Layer::open(l, false).map_err(|e| annotate(e, "lowerdir", l))?);
        }
        for l in datas {
            layers.push(Layer::open(l, false).map_err(|e| annotate(e, "datadir", l))?);
        }
        if layers.len() > usize::from(LayerIdx::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "too many layers ({}), at most {}",
                    layers.len(),
                    LayerIdx::MAX
                ),
            ));
        }
        // A read-only stack reads the names a writable one would write.
        let xattrs = match &work {
            Some(w) => w.xattrs,
            None if sys::euid() == 0 && !userxattr => OverlayXattrs::Trusted,
            None => OverlayXattrs::User,
        };
        let mut devs: Vec<u64> = Vec::new();
        for l in &mut layers {
            l.xattrs = xattrs;
            let idx = match devs.iter().position(|d| *d == l.dev) {
                Some(i) => i,
                None => {
                    devs.push(l.dev);
                    devs.len() - 1
                }
            };
            l.fs_index = idx as u32;
        }
        let ino = InoScheme::new(devs.len(), xino, ino32);
        Ok(LayerStack {
            has_upper: upper.is_some(),
            data_layers: datas.len(),
            layers,
            work,
            ino,
            xattrs,
        })
    }

    /// The namespace of the overlay's own xattrs (`overlay.opaque`, `overlay.whiteout`,
    /// `overlay.redirect`...) in this mount.
    pub fn xattrs(&self) -> OverlayXattrs {
        self.xattrs
    }

    /// All layers, topmost first.
    pub fn all(&self) -> &[Layer] {
        &self.layers
    }

    /// Layer `idx`. [`INDEX_LAYER`] (a file found only in the inodes index, which is on
    /// the upper layer's filesystem) is the upper layer.
    pub fn get(&self, idx: LayerIdx) -> Option<&Layer> {
        if idx == INDEX_LAYER {
            return self.upper();
        }
        self.layers.get(usize::from(idx))
    }

    /// The `st_ino` shown for layer object `obj`: its number composed with its layer's
    /// filesystem (see [`InoScheme::compose`]).
    pub fn shown_ino(&self, obj: LayerIno) -> Ino {
        let fs = self.get(obj.layer).map(|l| l.fs_index).unwrap_or(0);
        self.ino.compose(fs, obj.ino)
    }

    /// The writable layer, if the mount has one.
    pub fn upper(&self) -> Option<&Layer> {
        if self.has_upper {
            self.layers.first()
        } else {
            None
        }
    }

    /// The work directory, when the mount is writable.
    pub fn work(&self) -> Option<&WorkDir> {
        self.work.as_ref()
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Number of layers that make the tree: all but the data-only ones at the bottom,
    /// which lookups and listings never enter (only the data of a metacopy file that
    /// redirects there is read from them).
    pub fn merged_len(&self) -> usize {
        self.layers.len() - self.data_layers
    }

    /// The data-only layers, topmost first.
    pub fn data_only(&self) -> std::ops::Range<LayerIdx> {
        self.merged_len() as LayerIdx..self.layers.len() as LayerIdx
    }

    /// Never true for a mounted stack; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

/// The upper and work directories through one private clone of their mount (see
/// [`sys::private_mount_clone`]), made at their deepest common directory so that both are
/// in it; `None` where the daemon may not clone mounts, or the clone does not lead to the
/// same upper directory (`upper`, opened already).
fn clone_upper_and_work(upper: &Layer, u: &Path, w: &Path) -> Option<(OwnedFd, OwnedFd)> {
    let cu = std::fs::canonicalize(u).ok()?;
    let cw = std::fs::canonicalize(w).ok()?;
    let common: PathBuf = cu
        .components()
        .zip(cw.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let base = rustix::fs::open(
        &common,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let clone = sys::private_mount_clone(base.as_fd()).ok()?;
    let open = |p: &Path| {
        let rel = p.strip_prefix(&common).ok()?;
        sys::open_dir_path(clone.as_fd(), rel.as_os_str().as_bytes()).ok()
    };
    let (ufd, wfd) = (open(&cu)?, open(&cw)?);
    let same = |a: BorrowedFd<'_>, b: BorrowedFd<'_>| matches!((sys::stat_fd(a), sys::stat_fd(b)), (Ok(x), Ok(y)) if (x.dev, x.ino) == (y.dev, y.ino));
    same(ufd.as_fd(), upper.root()).then_some((ufd, wfd))
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} '{}': {e}", path.display()))
}

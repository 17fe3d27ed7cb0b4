//! `stratafs::overlay::Overlay` driven in-process, as the FUSE front end drives it, with
//! the part of the kernel's VFS a mount would put in front of it: paths are walked one
//! lookup at a time, and the checks the VFS makes before it asks the filesystem
//! (`EEXIST` for `O_EXCL`, `EISDIR`/`ENOTDIR` of unlink and rename, a rename into its own
//! subtree, the two names of one object) are made here, in the kernel's order.
//!
//! Every lookup takes a reference on its node, as the kernel's does. A *cold* driver
//! forgets them all after each call, as a kernel under memory pressure forgets its
//! dentries; a *hot* one keeps them, as a kernel that caches everything.

use std::ffi::OsStr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use stratafs::config::MountConfig;
use stratafs::inode::NodeId;
use stratafs::overlay::{Attr, Caller, NewObject, Overlay, RenameFlag, SetAttr};
use stratafs::sys::FileKind;

use crate::ops::{Flag, How, Op, P};
use crate::reference::{Shown, Tree, Xattrs};
use crate::stack::{name_of, parent_of, NAMES};

/// The root's node id.
const ROOT: NodeId = stratafs::inode::ROOT;

/// Mount options a case runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flavor {
    /// `markers=fuse-overlayfs`: `.wh..wh..opq` files and fuse-overlayfs's xattrs too.
    pub fuse_markers: bool,
    /// `xattr_permissions=2`: modes (and owners) in `user.containers.override_stat`.
    pub xattr_perms: bool,
}

/// An overlay over upper `u`, work `w` and `lowers` (topmost first), as the daemon opens
/// one (without a mount: a daemon that may not clone mounts falls back by itself).
pub fn open_overlay(u: &Path, w: &Path, lowers: &[PathBuf], flavor: Flavor) -> Overlay {
    let mut cfg = MountConfig::new(u.with_file_name("mnt"), lowers.to_vec());
    if flavor.fuse_markers {
        cfg.markers = stratafs::config::Markers::FuseOverlayfs;
    }
    if flavor.xattr_perms {
        cfg.xattr_permissions = 2;
    }
    cfg.upperdir = Some(u.to_path_buf());
    cfg.workdir = Some(w.to_path_buf());
    // No fsync per copy-up: crashes are the durability tests' business.
    cfg.volatile = true;
    stratafs::daemon::open_overlay(&cfg).unwrap()
}

/// The overlay, and the node references the kernel would hold.
pub struct Driver {
    /// The overlay under test.
    pub ov: Overlay,
    /// Its upper, work and lower directories, and its options.
    dirs: (PathBuf, PathBuf, Vec<PathBuf>, Flavor),
    hot: bool,
    refs: Vec<NodeId>,
    caller: Caller,
}

fn errno(e: stratafs::overlay::Error) -> i32 {
    e.errno()
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Driver {
    /// Drives an overlay over upper `u`, work `w` and `lowers`; `hot` keeps every node
    /// reference taken.
    pub fn open(u: &Path, w: &Path, lowers: &[PathBuf], flavor: Flavor, hot: bool) -> Driver {
        let ov = open_overlay(u, w, lowers, flavor);
        let caller = Caller {
            uid: stratafs::sys::euid(),
            gid: stratafs::sys::egid(),
            umask: 0,
        };
        Driver {
            ov,
            dirs: (u.to_path_buf(), w.to_path_buf(), lowers.to_vec(), flavor),
            hot,
            refs: Vec::new(),
            caller,
        }
    }

    /// Gives back the references a cold driver does not keep.
    fn release(&mut self) {
        for ino in self.refs.drain(..) {
            if !self.hot {
                self.ov.forget(ino, 1);
            }
        }
    }

    fn took(&mut self, a: Attr) -> Attr {
        self.refs.push(a.node);
        a
    }

    fn lookup(&mut self, dir: NodeId, name: &str) -> Result<Attr, i32> {
        let a = self.ov.lookup(dir, OsStr::new(name)).map_err(errno)?;
        Ok(self.took(a))
    }

    /// `name`, or `None` where it is missing.
    fn lookup_opt(&mut self, dir: NodeId, name: &str) -> Result<Option<Attr>, i32> {
        match self.lookup(dir, name) {
            Ok(a) => Ok(Some(a)),
            Err(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The node of the directory holding `path`'s last component.
    fn parent(&mut self, path: &str) -> Result<NodeId, i32> {
        let mut cur = ROOT;
        let dir = parent_of(path);
        if dir.is_empty() {
            return Ok(cur);
        }
        for c in dir.split('/') {
            let a = self.lookup(cur, c)?;
            match a.kind {
                FileKind::Directory => cur = a.node,
                FileKind::Symlink => return Err(libc::ELOOP),
                _ => return Err(libc::ENOTDIR),
            }
        }
        Ok(cur)
    }

    fn resolve(&mut self, path: &str) -> Result<(NodeId, Attr), i32> {
        let dir = self.parent(path)?;
        Ok((dir, self.lookup(dir, name_of(path))?))
    }

    /// The checks of a call that makes `path` (`LOOKUP_EXCL`): its directory's node.
    fn creatable(&mut self, path: &str) -> Result<NodeId, i32> {
        let dir = self.parent(path)?;
        match self.lookup_opt(dir, name_of(path))? {
            Some(_) => Err(libc::EEXIST),
            None => Ok(dir),
        }
    }

    fn create(&mut self, path: &str, obj: NewObject, mode: u32) -> Result<Attr, i32> {
        let dir = self.creatable(path)?;
        let (a, fd) = self
            .ov
            .create(dir, OsStr::new(name_of(path)), obj, mode, self.caller)
            .map_err(errno)?;
        let a = self.took(a);
        if let Some(fd) = fd {
            drop(fd);
        }
        Ok(a)
    }

    /// Runs `op`: its result.
    pub fn apply(&mut self, op: &Op) -> Result<(), i32> {
        let r = self.run(&op.picked(|p| p.at()));
        self.release();
        r
    }

    fn run(&mut self, op: &Op) -> Result<(), i32> {
        match *op {
            Op::Create(P::At(path), data, mode) => {
                let dir = self.creatable(path)?;
                let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
                let (a, fd) = self
                    .ov
                    .create(
                        dir,
                        OsStr::new(name_of(path)),
                        NewObject::File { flags },
                        libc::S_IFREG | mode,
                        self.caller,
                    )
                    .map_err(errno)?;
                self.took(a);
                let file = std::fs::File::from(fd.unwrap());
                file.write_all_at(data.as_bytes(), 0).map_err(io_errno)?;
            }
            Op::Mkdir(P::At(path), mode) => {
                self.create(path, NewObject::Dir, libc::S_IFDIR | mode)?;
            }
            Op::Symlink(P::At(path), target) => {
                self.create(path, NewObject::Symlink(target.into()), 0o777)?;
            }
            Op::Unlink(P::At(path)) => {
                let (dir, a) = self.resolve(path)?;
                if a.kind == FileKind::Directory {
                    return Err(libc::EISDIR);
                }
                self.ov
                    .unlink(dir, OsStr::new(name_of(path)))
                    .map_err(errno)?;
            }
            Op::Rmdir(P::At(path)) => {
                let (dir, a) = self.resolve(path)?;
                if a.kind != FileKind::Directory {
                    return Err(libc::ENOTDIR);
                }
                self.ov
                    .rmdir(dir, OsStr::new(name_of(path)))
                    .map_err(errno)?;
            }
            Op::Link(P::At(from), P::At(to)) => {
                let (_, src) = self.resolve(from)?;
                let dir = self.creatable(to)?;
                if src.kind == FileKind::Directory {
                    return Err(libc::EPERM);
                }
                let a = self
                    .ov
                    .link(src.node, dir, OsStr::new(name_of(to)))
                    .map_err(errno)?;
                self.took(a);
            }
            Op::Rename(P::At(from), P::At(to), flag) => self.rename(from, to, flag)?,
            Op::Write(P::At(path), data, how) => {
                let (_, a) = self.resolve(path)?;
                if a.kind == FileKind::Symlink {
                    return Err(libc::ELOOP);
                }
                let mut flags = libc::O_WRONLY;
                if how == How::Trunc {
                    flags |= libc::O_TRUNC;
                }
                let fd = self.ov.open_for_write(a.node, flags).map_err(errno)?;
                let file = std::fs::File::from(fd);
                let at = match how {
                    How::Append => file.metadata().map_err(io_errno)?.len(),
                    How::Trunc | How::AtZero => 0,
                };
                file.write_all_at(data.as_bytes(), at).map_err(io_errno)?;
            }
            Op::Truncate(P::At(path), size) => {
                let (_, a) = self.resolve(path)?;
                match a.kind {
                    FileKind::Directory => return Err(libc::EISDIR),
                    FileKind::Symlink => return Err(libc::ELOOP),
                    _ => {}
                }
                let set = SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                };
                self.ov.setattr(a.node, set, None).map_err(errno)?;
            }
            Op::Chmod(P::At(path), mode) => {
                let (_, a) = self.resolve(path)?;
                if a.kind == FileKind::Symlink {
                    return Err(libc::ELOOP);
                }
                let set = SetAttr {
                    mode: Some(mode),
                    ..SetAttr::default()
                };
                self.ov.setattr(a.node, set, None).map_err(errno)?;
            }
            Op::SetXattr(P::At(path), name, value) => {
                let (_, a) = self.resolve(path)?;
                if a.kind == FileKind::Symlink {
                    return Err(libc::ELOOP);
                }
                self.ov
                    .setxattr(a.node, OsStr::new(name), value.as_bytes(), 0)
                    .map_err(errno)?;
            }
            Op::RmXattr(P::At(path), name) => {
                let (_, a) = self.resolve(path)?;
                if a.kind == FileKind::Symlink {
                    return Err(libc::ELOOP);
                }
                self.ov
                    .removexattr(a.node, OsStr::new(name))
                    .map_err(errno)?;
            }
            Op::Remount => {
                // The kernel forgets every node at unmount.
                self.refs.clear();
                self.ov.unmounted();
                let (u, w, lowers, flavor) = &self.dirs;
                self.ov = open_overlay(u, w, lowers, *flavor);
            }
            _ => unreachable!("paths are picked before an operation runs"),
        }
        Ok(())
    }

    /// `renameat2` as `do_renameat2` and `vfs_rename` check it before the filesystem's
    /// `rename`.
    fn rename(&mut self, from: &str, to: &str, flag: Flag) -> Result<(), i32> {
        let sdir = self.parent(from)?;
        let ddir = self.parent(to)?;
        let src = self.lookup(sdir, name_of(from))?;
        let dst = self.lookup_opt(ddir, name_of(to))?;
        match (flag, dst) {
            (Flag::NoReplace, Some(_)) => return Err(libc::EEXIST),
            (Flag::Exchange, None) => return Err(libc::ENOENT),
            _ => {}
        }
        if from == to {
            return Ok(());
        }
        let below = |inner: &str, outer: &str| {
            inner.len() > outer.len()
                && inner.starts_with(outer)
                && inner.as_bytes()[outer.len()] == b'/'
        };
        // lock_rename()'s trap: the source above the target's directory, or the target
        // above the source's.
        if below(to, from) {
            return Err(libc::EINVAL);
        }
        if below(from, to) {
            return Err(if flag == Flag::Exchange {
                libc::EINVAL
            } else {
                libc::ENOTEMPTY
            });
        }
        if let Some(d) = dst {
            if d.node == src.node {
                return Ok(());
            }
            let (s_dir, d_dir) = (
                src.kind == FileKind::Directory,
                d.kind == FileKind::Directory,
            );
            if flag != Flag::Exchange && s_dir && !d_dir {
                return Err(libc::ENOTDIR);
            }
            if flag != Flag::Exchange && !s_dir && d_dir {
                return Err(libc::EISDIR);
            }
        }
        let flag = match flag {
            Flag::Plain => RenameFlag::Plain,
            Flag::NoReplace => RenameFlag::NoReplace,
            Flag::Exchange => RenameFlag::Exchange,
        };
        self.ov
            .rename(
                sdir,
                OsStr::new(name_of(from)),
                ddir,
                OsStr::new(name_of(to)),
                flag,
            )
            .map_err(errno)
    }

    /// Every xattr `listxattr` shows on node `ino`, with the value `getxattr` gives.
    fn xattrs(&self, ino: NodeId, p: &str) -> Result<Xattrs, String> {
        let list = self
            .ov
            .listxattr(ino)
            .map_err(|e| format!("listxattr of '{p}': {e}"))?;
        let mut out = Xattrs::new();
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
            let v = self
                .ov
                .getxattr(ino, OsStr::new(&name))
                .map_err(|e| format!("getxattr {name} of '{p}', which listxattr shows: {e}"))?;
            out.insert(name, v);
        }
        Ok(out)
    }

    /// The whole merged tree as the overlay shows it, each listing checked against
    /// lookups: every listed name looks up to the listed type with `st_ino` equal to the
    /// listing's `d_ino` and to what `getattr` says, and every name of [`NAMES`] the
    /// listing leaves out looks up to `ENOENT`.
    pub fn tree(&mut self) -> Result<Tree, String> {
        let mut out = Tree::new();
        let r = self.walk(ROOT, "", &mut out);
        self.release();
        r.map(|()| out)
    }

    fn walk(&mut self, dir: NodeId, path: &str, out: &mut Tree) -> Result<(), String> {
        let at = |name: &str| {
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}/{name}")
            }
        };
        let entries = self
            .ov
            .read_dir(dir)
            .map_err(|e| format!("readdir of '{path}': {e}"))?;
        let mut listed = Vec::new();
        for e in &entries {
            let name = e
                .name
                .to_str()
                .ok_or("a name that is not UTF-8")?
                .to_string();
            let p = at(&name);
            let a = self
                .lookup(dir, &name)
                .map_err(|n| format!("'{p}' is listed, but its lookup fails: errno {n}"))?;
            if a.kind != e.kind {
                return Err(format!(
                    "'{p}' is listed as {:?}, looked up as {:?}",
                    e.kind, a.kind
                ));
            }
            let d_ino = self.ov.entry_ino(dir, e).map_err(|e| e.to_string())?;
            if d_ino != a.ino {
                return Err(format!("'{p}': d_ino {d_ino} but st_ino {}", a.ino));
            }
            let g = self
                .ov
                .getattr(a.node)
                .map_err(|e| format!("getattr of '{p}': {e}"))?;
            if (g.node, g.ino, g.kind, g.perm, g.size, g.nlink)
                != (a.node, a.ino, a.kind, a.perm, a.size, a.nlink)
            {
                return Err(format!("'{p}': getattr says {g:?}, its lookup said {a:?}"));
            }
            let perm = u32::from(a.perm) & 0o7777;
            let shown = match a.kind {
                FileKind::Directory => Shown::Dir(perm, self.xattrs(a.node, &p)?),
                FileKind::Regular => {
                    let f = self
                        .ov
                        .open(a.node, libc::O_RDONLY)
                        .map_err(|e| format!("open of '{p}': {e}"))?;
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(&mut std::fs::File::from(f.fd), &mut data)
                        .map_err(|e| format!("read of '{p}': {e}"))?;
                    if data.len() as u64 != a.size {
                        return Err(format!(
                            "'{p}': size {} but {} bytes read",
                            a.size,
                            data.len()
                        ));
                    }
                    Shown::File(perm, data, a.nlink, self.xattrs(a.node, &p)?)
                }
                FileKind::Symlink => {
                    let t = self
                        .ov
                        .readlink(a.node)
                        .map_err(|e| format!("readlink of '{p}': {e}"))?;
                    Shown::Symlink(t, a.nlink)
                }
                k => return Err(format!("'{p}' shows as {k:?}")),
            };
            out.insert(p.clone(), (shown, a.ino.get()));
            listed.push(name);
            if a.kind == FileKind::Directory {
                self.walk(a.node, &p, out)?;
            }
        }
        for name in NAMES {
            if listed.iter().any(|l| l == name) {
                continue;
            }
            match self.lookup(dir, name) {
                Err(libc::ENOENT) => {}
                Ok(a) => {
                    return Err(format!(
                        "'{}' looks up (as {:?}) but is not listed",
                        at(name),
                        a.kind
                    ))
                }
                Err(n) => return Err(format!("lookup of '{}': errno {n}", at(name))),
            }
        }
        Ok(())
    }
}

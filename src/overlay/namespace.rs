//! Changes to the names in directories: create, mkdir, mknod, symlink, link, unlink, rmdir,
//! rename. Every change lands in the upper layer; removing a name that a lower layer still
//! holds leaves a whiteout, and a directory made where a lower one was deleted is opaque.
//!
//! Locking: copy-ups (which take the copied node's lock, then its parent's directory lock)
//! run before an operation takes its own directory locks; an operation then holds the lock of
//! each directory it changes, two of them in node-id order for a rename.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::OFlags;

use super::copyup::UPPER;

use super::{Attr, Context, Error, Overlay, Result};
use crate::inode::{Location, Node, NodeId, ObjectId};
use crate::layer::idmap::DEFAULT_ACL;
use crate::layer::LayerIno;
use crate::layer::{format, WhiteoutFormat};
use crate::sys::Object;
use crate::sys::{self, FileKind, RenameMode};

/// What to create.
#[derive(Debug, Clone)]
pub enum NewObject {
    /// A regular file, opened with these `open(2)` flags.
    File {
        /// Flags for the returned fd.
        flags: i32,
    },
    /// A directory.
    Dir,
    /// A fifo, socket or device node.
    Node {
        /// The `S_IFMT` bits of the type.
        file_type: u32,
        /// Device number for devices.
        rdev: u64,
    },
    /// A symlink to this target.
    Symlink(OsString),
}

/// The caller of an operation, for ownership of what it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// fsuid.
    pub uid: u32,
    /// fsgid.
    pub gid: u32,
    /// The caller's umask, applied to what it creates unless the directory has a default
    /// ACL (the kernel leaves both to the daemon when POSIX ACLs are on).
    pub umask: u32,
}

/// Rename behaviour asked by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameFlag {
    /// Replace the target.
    Plain,
    /// `RENAME_NOREPLACE`.
    NoReplace,
    /// `RENAME_EXCHANGE`.
    Exchange,
}

/// What the upper layer holds at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperSlot {
    Empty,
    /// A whiteout at the name itself: a char 0/0 device, or an xattr whiteout.
    CharWhiteout,
    /// Only a `.wh.NAME` file.
    DotWhiteout,
    /// An object (the `bool`: it is a directory).
    Object(bool),
}

/// Why a directory with lower copies is not renamed: without `redirect_dir=on` the kernel's
/// overlayfs answers `EXDEV` too, and `mv` copies instead.
const MERGED_DIR: &str = "a directory with lower copies moves only by copying";

fn check_component(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(Error::InvalidName);
    }
    if format::is_reserved_name(name) {
        return Err(Error::ReservedName);
    }
    Ok(())
}

impl Overlay {
    fn upper_slot(&self, pfd: BorrowedFd<'_>, name: &OsStr) -> Result<UpperSlot> {
        match sys::stat_at(pfd, name) {
            Ok(st) if format::is_whiteout_stat(&st) => Ok(UpperSlot::CharWhiteout),
            Ok(st) if crate::layer::is_xattr_whiteout(pfd, name, &st, self.layers.xattrs())? => {
                Ok(UpperSlot::CharWhiteout)
            }
            Ok(st) => Ok(UpperSlot::Object(st.is_dir())),
            Err(e) if crate::layer::is_absent(&e) => {
                Ok(if crate::layer::dot_whiteout_exists(pfd, name)? {
                    UpperSlot::DotWhiteout
                } else {
                    UpperSlot::Empty
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The default ACL of directory `dir`'s upper copy, open as `fd` (from
    /// [`Overlay::upper_dir`]): read once per cached directory fd, as every creation in the
    /// directory needs it (a setxattr or removexattr of it through the mount drops the fd).
    fn default_acl(&self, dir: &Node, fd: &Arc<OwnedFd>) -> Option<Arc<[u8]>> {
        if let Some(v) = self
            .dirfds
            .fact(dir.id, UPPER, fd, |f| f.default_acl.clone())
        {
            return v;
        }
        let v: Option<Arc<[u8]>> = Object::named(fd.as_fd(), OsStr::new(""))
            .get_xattr(OsStr::new(DEFAULT_ACL))
            .unwrap_or(None)
            .map(Into::into);
        let known = v.clone();
        self.dirfds
            .set_fact(dir.id, UPPER, fd, |f| f.default_acl = Some(known));
        v
    }

    /// True when a layer below the upper one still shows `name` in `dir`.
    fn lower_has(&self, dir: &Node, name: &OsStr) -> Result<bool> {
        let chain = dir.with_location(|l| l.layers.clone());
        let start = chain
            .iter()
            .position(|l| *l != UPPER)
            .unwrap_or(chain.len());
        Ok(self.resolve_in(dir, &chain, name, start)?.is_some())
    }

    /// Writes a whiteout for `name` into upper directory `pfd`, where nothing is.
    fn write_whiteout(&self, pfd: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let (_, work) = self.writable()?;
        match work.whiteout {
            WhiteoutFormat::CharDevice => work.link_whiteout(pfd, name)?,
            WhiteoutFormat::DotWh => {
                drop(sys::create_file(
                    pfd,
                    &format::whiteout_name(name),
                    OFlags::WRONLY,
                    0,
                )?);
            }
        }
        Ok(())
    }

    /// Removes the upper object `name` from `pfd`, leaving a whiteout when `whiteout`
    /// (atomically with `RENAME_WHITEOUT` where the upper filesystem allows it).
    fn remove_upper(
        &self,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        is_dir: bool,
        whiteout: bool,
    ) -> Result<()> {
        let (_, work) = self.writable()?;
        let tmp = self.temp_name();
        if whiteout && work.whiteout == WhiteoutFormat::CharDevice {
            // Atomically: a shared whiteout swapped in for the object (the kernel's way),
            // else RENAME_WHITEOUT (a whiteout inode of its own).
            let swapped = work.link_whiteout(work.fd(), &tmp).is_ok()
                && match sys::rename_at(work.fd(), &tmp, pfd, name, RenameMode::Exchange) {
                    Ok(()) => true,
                    Err(_) => {
                        let _ = sys::unlink_at(work.fd(), &tmp, false);
                        false
                    }
                };
            if swapped || sys::rename_at(pfd, name, work.fd(), &tmp, RenameMode::Whiteout).is_ok() {
                sys::remove_tree(work.fd(), &tmp).ctx("remove", name)?;
                return Ok(());
            }
        }
        if is_dir {
            // A directory's upper copy may still hold whiteouts: move it out whole first.
            sys::rename_at(pfd, name, work.fd(), &tmp, RenameMode::NoReplace)
                .ctx("rename", name)?;
            sys::remove_tree(work.fd(), &tmp).ctx("remove", name)?;
        } else {
            sys::unlink_at(pfd, name, false).ctx("unlink", name)?;
        }
        if whiteout {
            self.write_whiteout(pfd, name)?;
        }
        Ok(())
    }

    /// Sets the opaque marker on a new upper directory: the kernel's xattr, or where the
    /// upper filesystem refuses it, a `.wh..wh..opq` file. With fuse-overlayfs's markers,
    /// `user.fuseoverlayfs.opaque` and `.wh..wh..opq` as well, as fuse-overlayfs writes them.
    fn make_opaque(&self, dir: BorrowedFd<'_>) -> Result<()> {
        let (_, work) = self.writable()?;
        let refused = |e: &std::io::Error| {
            matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM))
        };
        let kernel = match sys::set_xattr(dir, &work.xattr("opaque"), b"y", 0) {
            Ok(()) => true,
            Err(e) if refused(&e) => false,
            Err(e) => return Err(e.into()),
        };
        if self.fuse_markers {
            match sys::set_xattr(dir, OsStr::new(format::FUSE_OVERLAYFS_OPAQUE), b"y", 0) {
                Ok(()) => {}
                Err(e) if refused(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !kernel || self.fuse_markers {
            // A directory made opaque before (over a whiteout) has its marker already.
            match sys::create_file(dir, OsStr::new(format::OPAQUE_MARKER), OFlags::WRONLY, 0) {
                Ok(marker) => drop(marker),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Creates `name` in directory `parent`. Returns the new object's attributes (one kernel
    /// reference taken) and, for a file, the open fd.
    pub fn create(
        &self,
        parent: NodeId,
        name: &OsStr,
        obj: NewObject,
        mode: u32,
        caller: Caller,
    ) -> Result<(Attr, Option<OwnedFd>)> {
        check_component(name)?;
        let (_, work) = self.writable()?;
        // New objects are owned by the caller's ids as stored; a caller the mapping does
        // not cover cannot own anything here.
        let caller =
            match self.owner_to_disk(Some(caller.uid), Some(caller.gid), Error::Unmapped)? {
                (Some(uid), Some(gid)) => Caller {
                    uid,
                    gid,
                    umask: caller.umask,
                },
                _ => caller,
            };
        if let NewObject::Node { file_type, rdev: 0 } = obj {
            // A char device 0/0 is a whiteout on disk: it could never be shown. The kernel's
            // overlayfs refuses it the same way.
            if file_type & libc::S_IFMT == libc::S_IFCHR {
                return Err(Error::NotPermitted("a 0/0 character device is a whiteout"));
            }
        }
        let dir = self.node(parent)?;
        if dir.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        let pfd = self.upper_dir(&dir)?;
        let guard = dir.lock_dir();
        // A name found missing at the version the directory had until now (the lookup
        // the kernel makes before a creation) is missing still: the layers below need not
        // be probed again.
        if !self.negative.is_missing(dir.id, guard.before(), name) {
            let chain = dir.with_location(|l| l.layers.clone());
            if self.resolve_in(&dir, &chain, name, 0)?.is_some() {
                return Err(Error::Exists);
            }
        }
        let slot = self.upper_slot(pfd.as_fd(), name)?;
        let pst = sys::stat_fd(pfd.as_fd())?;
        // A setgid directory hands its group (and, to directories, the bit) down.
        let gid = if pst.mode & libc::S_ISGID != 0 {
            pst.gid
        } else {
            caller.gid
        };
        // A directory's default ACL replaces the umask: the filesystem derives the new
        // object's ACL and mode from it (posix_acl_create), as it does for the daemon's own
        // creation in that directory.
        let default_acl = if self.opts.acl {
            self.default_acl(&dir, &pfd)
        } else {
            None
        };
        let mut perm = mode & 0o7777;
        if default_acl.is_none() {
            perm &= !(caller.umask & 0o777);
        }
        if pst.mode & libc::S_ISGID != 0 && matches!(obj, NewObject::Dir) {
            perm |= libc::S_ISGID;
        }
        // Over a whiteout the object is staged in the work directory and swapped in, so the
        // name is never missing (and a directory there is opaque before anyone sees it). To
        // inherit a default ACL there, it is staged in a directory of its own that has it.
        let staged = slot == UpperSlot::CharWhiteout;
        let stage = match (&default_acl, staged) {
            (Some(acl), true) => Some(self.acl_stage(acl)?),
            _ => None,
        };
        let (tdir, tname): (BorrowedFd<'_>, OsString) = match (&stage, staged) {
            (Some((fd, _)), _) => (fd.as_fd(), self.temp_name()),
            (None, true) => (work.fd(), self.temp_name()),
            (None, false) => (pfd.as_fd(), name.to_os_string()),
        };
        // What to remove when the creation fails: the staging directory, or the object.
        let (undo_dir, undo_name) = match &stage {
            Some((_, stage_name)) => (work.fd(), stage_name.clone()),
            None => (tdir, tname.clone()),
        };
        // The group the filesystem gives a new entry of the directory it is made in.
        let tst = if staged { sys::stat_fd(tdir)? } else { pst };
        let default_gid = if tst.mode & libc::S_ISGID != 0 {
            tst.gid
        } else {
            sys::egid()
        };
        let made = self.make_object(
            tdir,
            &tname,
            &obj,
            perm,
            (caller.uid, gid, default_gid),
            default_acl.is_some(),
        );
        let fd = match made {
            Ok(fd) => fd,
            Err(e) => {
                if staged {
                    let _ = sys::remove_tree(undo_dir, &undo_name);
                }
                return Err(e);
            }
        };
        let finish = (|| -> Result<()> {
            if matches!(obj, NewObject::Dir) && slot != UpperSlot::Empty {
                let d = sys::open_dir_path(tdir, tname.as_bytes()).ctx("open", name)?;
                self.make_opaque(d.as_fd())?;
            }
            if staged {
                if matches!(obj, NewObject::Dir) {
                    sys::rename_at(tdir, &tname, pfd.as_fd(), name, RenameMode::Exchange)
                        .ctx("rename", name)?;
                    sys::remove_tree(tdir, &tname).ctx("remove", name)?;
                } else {
                    sys::rename_at(tdir, &tname, pfd.as_fd(), name, RenameMode::Replace)
                        .ctx("rename", name)?;
                }
            }
            if let Some((_, stage_name)) = &stage {
                sys::remove_tree(work.fd(), stage_name).ctx("remove", name)?;
            }
            if slot == UpperSlot::DotWhiteout {
                sys::unlink_at(pfd.as_fd(), &format::whiteout_name(name), false)
                    .ctx("unlink whiteout", name)?;
            }
            Ok(())
        })();
        if let Err(e) = finish {
            let _ = sys::remove_tree(undo_dir, &undo_name);
            return Err(e);
        }
        let (raw, born) = sys::stat_at_born(pfd.as_fd(), name)?;
        let st = self.overridden(raw, Object::At(pfd.as_fd(), name));
        let kind = st.kind().unwrap_or(FileKind::Regular);
        let obj = LayerIno::new(UPPER, raw.ino);
        let node = self.nodes.remember(
            self.layers.shown_ino(obj),
            kind,
            Location {
                parent,
                name: name.into(),
                layers: smallvec::smallvec![UPPER],
                object: Some(ObjectId::new(obj, born)),
                redirects: None,
            },
        );
        Ok((self.attr_from(node.id, node.id.shown(), &st, false), fd))
    }

    /// Creates the object as `name` in `dir` with permissions `perm` and owner `uid`:`gid`,
    /// where `default_gid` is the group the filesystem itself gives a new entry of `dir`.
    /// Owner and mode are set afterwards only when creation could not give them.
    /// `inherits_acl`: the directory has a default ACL, from which the filesystem derived
    /// the permission bits.
    fn make_object(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        obj: &NewObject,
        perm: u32,
        (uid, gid, default_gid): (u32, u32, u32),
        inherits_acl: bool,
    ) -> Result<Option<OwnedFd>> {
        let fd = match obj {
            NewObject::File { flags } => {
                let acc = flags & libc::O_ACCMODE;
                let mut f = if acc == libc::O_RDONLY {
                    OFlags::RDONLY
                } else {
                    OFlags::RDWR
                };
                if flags & libc::O_DIRECT != 0 {
                    f |= OFlags::DIRECT;
                }
                Some(sys::create_file(dir, name, f, perm & 0o777).ctx("create", name)?)
            }
            NewObject::Dir => {
                sys::mkdir_at(dir, name, perm & 0o777).ctx("mkdir", name)?;
                None
            }
            NewObject::Node { file_type, rdev } => {
                sys::mknod_at(
                    dir,
                    name,
                    (file_type & libc::S_IFMT) | (perm & 0o777),
                    *rdev,
                )
                .ctx("mknod", name)?;
                None
            }
            NewObject::Symlink(target) => {
                sys::symlink_at(target, dir, name).ctx("symlink", name)?;
                None
            }
        };
        if self.keeps_perms_in_xattrs() {
            // The owner goes into the override (the daemon may not be able to chown);
            // symlinks and device nodes take no user xattrs, and keep the daemon's owner.
            // Under a default ACL the permission bits are those the filesystem derived.
            let perm = if inherits_acl && !matches!(obj, NewObject::Symlink(_)) {
                (sys::stat_at(dir, name)?.mode & 0o777) | (perm & 0o7000)
            } else {
                perm
            };
            if let Err(e) = self.write_override(Object::At(dir, name), uid, gid, perm) {
                if !matches!(obj, NewObject::Symlink(_) | NewObject::Node { .. }) {
                    return Err(e);
                }
            }
        } else if uid != sys::euid() || gid != default_gid {
            sys::chown_at(dir, name, Some(uid), Some(gid)).ctx("chown", name)?;
        }
        // The daemon's umask is 0 (set at startup), so only special bits need a chmod; a
        // library caller with another umask gets the mode set explicitly.
        let exact = (self.exact_modes || inherits_acl) && perm & 0o7000 == 0;
        if !matches!(obj, NewObject::Symlink(_)) && !exact {
            // Under a default ACL the permission bits are the filesystem's (they mirror
            // the inherited ACL); only the special bits are added.
            let bits = if inherits_acl {
                sys::stat_at(dir, name)?.mode & 0o777
            } else {
                perm & 0o777
            };
            sys::chmod_at(dir, name, bits | (perm & 0o7000)).ctx("chmod", name)?;
        }
        Ok(fd)
    }

    /// A fresh directory in the work directory with default ACL `acl`: what is created in
    /// it inherits from it as from the directory it will be moved to. Returns an `O_PATH`
    /// fd on it and its name there.
    fn acl_stage(&self, acl: &[u8]) -> Result<(OwnedFd, OsString)> {
        let (_, work) = self.writable()?;
        let name = self.temp_name();
        sys::mkdir_at(work.fd(), &name, 0o700)?;
        let staged = (|| -> Result<OwnedFd> {
            Object::named(work.fd(), &name).set_xattr(OsStr::new(DEFAULT_ACL), acl, 0)?;
            Ok(sys::open_dir_path(work.fd(), name.as_bytes())?)
        })();
        match staged {
            Ok(fd) => Ok((fd, name)),
            Err(e) => {
                let _ = sys::remove_tree(work.fd(), &name);
                Err(e)
            }
        }
    }

    /// Removes non-directory `name` from `parent`.
    pub fn unlink(&self, parent: NodeId, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    /// Removes empty directory `name` from `parent`.
    pub fn rmdir(&self, parent: NodeId, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: NodeId, name: &OsStr, want_dir: bool) -> Result<()> {
        Overlay::check_name(name)?;
        self.writable()?;
        let dir = self.node(parent)?;
        let mut chain = dir.with_location(|l| l.layers.clone());
        if want_dir {
            // Only an empty directory goes; its listing is taken before the lock (a listing
            // takes locks of its own), and the name is checked again under it.
            let r = self
                .resolve_in(&dir, &chain, name, 0)?
                .ok_or(Error::NotFound)?;
            if r.kind() != FileKind::Directory {
                return Err(Error::NotDir);
            }
            let attr = self.lookup(parent, name)?;
            let empty = self.read_dir(attr.node).map(|e| e.is_empty());
            self.forget(attr.node, 1);
            if !empty? {
                return Err(Error::NotEmpty);
            }
        }
        // (It may copy the directory up: its chain is read again after.)
        if !want_dir && self.link_up_before_removal(&dir, name)? {
            chain = dir.with_location(|l| l.layers.clone());
        }
        let pfd = self.upper_dir(&dir)?;
        let _guard = dir.lock_dir();
        // What the name holds now, under the lock (nothing else changes the directory
        // meanwhile): one resolution says what goes and what the upper layer holds.
        let r = self
            .resolve_in(&dir, &chain, name, 0)?
            .ok_or(Error::NotFound)?;
        let is_dir = r.kind() == FileKind::Directory;
        if is_dir != want_dir {
            return Err(if want_dir {
                Error::NotDir
            } else {
                Error::IsDir
            });
        }
        // A name found below the upper layer needs a whiteout, and the upper layer holds
        // nothing under it (anything there would have hidden it).
        let on_upper = r.layers.first() == Some(&UPPER);
        let whiteout = !on_upper || self.lower_has(&dir, name)?;
        let node = self.nodes.get(self.nodes.visible_id(r.ino));
        // The node dies with its last name (a lower object's node is this name's alone: see
        // `nondir_ino`). It is marked before an upper inode is freed, as the filesystem may
        // hand the number to an object created concurrently in another directory, which
        // must not be taken for this one; and before copy-ups and opens by name can see
        // the whiteout.
        // (With the index, every name of a file is its node: it dies with its last link.)
        let last =
            is_dir || r.top.nlink <= 1 || (r.layers.first() != Some(&UPPER) && !self.indexes());
        let dying = node.as_ref().filter(|_| last);
        if let Some(n) = dying {
            // A non-directory's object is kept for the requests that raced with its removal
            // (an open through the dentry the kernel found before this unlink reached it),
            // as the kernel's overlayfs inode lives on while referenced: the kernel holds
            // the node until the dentry goes.
            let kept = if is_dir {
                None
            } else {
                let top = r.layers.first().copied().unwrap_or(UPPER);
                let dfd = if on_upper {
                    Ok(Arc::clone(&pfd))
                } else {
                    self.dir_fd(&dir, top)
                };
                dfd.ok()
                    .and_then(|d| sys::open_beneath(d.as_fd(), name.as_bytes(), OFlags::PATH).ok())
            };
            self.nodes.mark_dead_keeping(n.id, kept);
        }
        let slot = if on_upper {
            self.upper_slot(pfd.as_fd(), name)
        } else {
            Ok(UpperSlot::Empty)
        };
        // An indexed file's entry goes with its last name.
        let entry = (!is_dir && on_upper)
            .then(|| self.entry_of_upper(pfd.as_fd(), name))
            .flatten();
        if let Some(iname) = &entry {
            self.settle_nlink(iname)?;
        }
        let removed = match slot {
            Ok(UpperSlot::Object(d)) => self.remove_upper(pfd.as_fd(), name, d, whiteout),
            Ok(_) if whiteout => self.write_whiteout(pfd.as_fd(), name),
            Ok(_) => Err(Error::NotFound),
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            if let Some(n) = dying {
                self.nodes.revive(n.id);
            }
            return Err(e);
        }
        if let Some(iname) = entry {
            self.drop_entry_if_orphan(&iname);
        }
        if let Some(n) = node {
            if is_dir {
                self.dirfds.drop_node(n.id, self.layers.len());
                self.unwatch_dir(n.id);
            } else {
                self.nodes.drop_name(n.id, parent, name);
                self.locate_other_name(n.id);
            }
        }
        Ok(())
    }

    /// Adds a hard link `newname` in `newparent` to non-directory `ino`, copying it up first.
    pub fn link(&self, id: NodeId, newparent: NodeId, newname: &OsStr) -> Result<Attr> {
        check_component(newname)?;
        let (_, work) = self.writable()?;
        let node = self.named(id)?;
        if node.kind == FileKind::Directory {
            return Err(Error::NotPermitted("hard link to a directory"));
        }
        self.copy_up_meta(&node)?;
        let src_parent = self.node(node.parent())?;
        let spfd = self.upper_dir(&src_parent)?;
        if self.is_metacopy_node(&node) {
            // Every name of it must find its data: it gets an absolute redirect, as the
            // kernel's link of a metacopy file gives it.
            let sname = node.with_location(|l| l.name.clone());
            self.set_file_redirect(&node, spfd.as_fd(), &sname, false)?;
            self.locate_data_again(&node, &src_parent, &sname)?;
        }
        let dir = self.node(newparent)?;
        let npfd = self.upper_dir(&dir)?;
        let _guard = dir.lock_dir();
        let chain = dir.with_location(|l| l.layers.clone());
        if self.resolve_in(&dir, &chain, newname, 0)?.is_some() {
            return Err(Error::Exists);
        }
        let sname = node.with_location(|l| l.name.clone());
        if let Some(iname) = self.entry_of_upper(spfd.as_fd(), &sname) {
            self.settle_nlink(&iname)?;
        }
        match self.upper_slot(npfd.as_fd(), newname)? {
            UpperSlot::CharWhiteout => {
                let tmp = self.temp_name();
                sys::link_at(spfd.as_fd(), &sname, work.fd(), &tmp).ctx("link", newname)?;
                if let Err(e) =
                    sys::rename_at(work.fd(), &tmp, npfd.as_fd(), newname, RenameMode::Replace)
                {
                    let _ = sys::unlink_at(work.fd(), &tmp, false);
                    return Err(e.into());
                }
            }
            slot => {
                sys::link_at(spfd.as_fd(), &sname, npfd.as_fd(), newname).ctx("link", newname)?;
                if slot == UpperSlot::DotWhiteout {
                    sys::unlink_at(npfd.as_fd(), &format::whiteout_name(newname), false)
                        .ctx("unlink whiteout", newname)?;
                }
            }
        }
        // A copied-up file's `st_ino` is its origin's, which listings look for only in a
        // directory marked impure (as the kernel's `ovl_create_or_link` marks it).
        self.mark_impure(npfd.as_fd());
        let mut st = self.overridden(
            sys::stat_at(npfd.as_fd(), newname)?,
            Object::At(npfd.as_fd(), newname),
        );
        st.nlink = self.indexed_nlink(Object::At(npfd.as_fd(), newname), &st);
        let n = self.nodes.remember(
            node.id.shown(),
            node.kind,
            Location {
                parent: newparent,
                name: newname.into(),
                // A metacopy file's data is where its (absolute) redirect says.
                layers: node.with_location(|l| l.layers.clone()),
                object: None,
                redirects: node.with_location(|l| l.redirects.clone()),
            },
        );
        Ok(self.attr_from(n.id, n.id.shown(), &st, false))
    }

    /// Renames `name` in `parent` to `newname` in `newparent`.
    pub fn rename(
        &self,
        parent: NodeId,
        name: &OsStr,
        newparent: NodeId,
        newname: &OsStr,
        flag: RenameFlag,
    ) -> Result<()> {
        Overlay::check_name(name)?;
        check_component(newname)?;
        let (_, work) = self.writable()?;
        let sdir = self.node(parent)?;
        let ddir = self.node(newparent)?;
        // The names are looked up before the directories are locked (copy-ups must run
        // first); if a concurrent change moved either name meanwhile, start again.
        let mut tries = 0;
        loop {
            let src_attr = self.lookup(parent, name)?;
            let dst_attr = match self.lookup(newparent, newname) {
                Ok(a) => Some(a),
                Err(Error::NotFound) => None,
                Err(e) => {
                    self.forget(src_attr.node, 1);
                    return Err(e);
                }
            };
            let r =
                self.rename_looked_up(&sdir, name, &ddir, newname, flag, src_attr, dst_attr, work);
            self.forget(src_attr.node, 1);
            if let Some(d) = dst_attr {
                self.forget(d.node, 1);
            }
            match r {
                Err(Error::Raced) if tries < 64 => tries += 1,
                r => return r,
            }
        }
    }

    /// The node id a name of `dir` resolves to now (call with `dir`'s lock held).
    fn current_id(&self, dir: &Node, name: &OsStr) -> Result<Option<NodeId>> {
        let chain = dir.with_location(|l| l.layers.clone());
        Ok(self
            .resolve_in(dir, &chain, name, 0)?
            .map(|r| self.nodes.visible_id(r.ino)))
    }

    #[allow(clippy::too_many_arguments)]
    fn rename_looked_up(
        &self,
        sdir: &Arc<Node>,
        name: &OsStr,
        ddir: &Arc<Node>,
        newname: &OsStr,
        flag: RenameFlag,
        src_attr: Attr,
        dst_attr: Option<Attr>,
        work: &crate::layer::WorkDir,
    ) -> Result<()> {
        // By node id: a name of a lower hard link shows the lower file's st_ino instead.
        let src = self.node(src_attr.node)?;
        let dst = dst_attr.map(|a| self.node(a.node)).transpose()?;
        let has_lower = |n: &Node| n.with_location(|l| l.layers.iter().any(|x| *x != UPPER));
        match (&dst, flag) {
            (Some(_), RenameFlag::NoReplace) => return Err(Error::Exists),
            (None, RenameFlag::Exchange) => return Err(Error::NotFound),
            _ => {}
        }
        if let Some(d) = &dst {
            if d.id == src.id {
                // Two names of one file: POSIX says rename does nothing.
                return Ok(());
            }
        }
        // With `redirect_dir=on` a plain rename of one moves its upper copy alone, which
        // gets a redirect to the lower ones.
        // With `redirect_dir=on` a rename of one moves its upper copy alone, which gets a
        // redirect to the lower ones.
        let redirects = self.opts.redirect_dir == crate::config::RedirectDir::On;
        let src_merged = src.kind == FileKind::Directory && has_lower(&src);
        let dst_merged = flag == RenameFlag::Exchange
            && dst
                .as_ref()
                .is_some_and(|d| d.kind == FileKind::Directory && has_lower(d));
        if (src_merged || dst_merged) && !redirects {
            return Err(Error::CrossDevice(MERGED_DIR));
        }
        if let Some(d) = &dst {
            if flag != RenameFlag::Exchange {
                match (
                    src.kind == FileKind::Directory,
                    d.kind == FileKind::Directory,
                ) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) if !self.read_dir(d.id)?.is_empty() => {
                        return Err(Error::NotEmpty);
                    }
                    _ => {}
                }
            }
        }
        // A directory cannot move below itself.
        if src.kind == FileKind::Directory {
            let mut p = ddir.id;
            loop {
                if p == src.id {
                    return Err(Error::Invalid("a directory cannot move below itself"));
                }
                if Overlay::is_root_id(p) {
                    break;
                }
                p = self.parent_of(p);
            }
        }
        // A name of an indexed lower file that is replaced is linked up first, so that
        // the file's link count drops with it.
        if dst.as_ref().is_some_and(|d| d.kind != FileKind::Directory)
            && flag != RenameFlag::Exchange
        {
            self.link_up_before_removal(ddir, newname)?;
        }
        // A regular file moves with its metadata alone with metacopy=on (a redirect then
        // leads to its data). A name of an indexed lower file is linked up (its node may
        // be at another of its names).
        let linked = src.kind != FileKind::Directory && self.link_up_before_removal(sdir, name)?;
        if !linked {
            self.copy_up_meta(&src)?;
        }
        if let (Some(d), RenameFlag::Exchange) = (&dst, flag) {
            self.copy_up_meta(d)?;
        }
        let spfd = self.upper_dir(sdir)?;
        let dpfd = self.upper_dir(ddir)?;
        let (_g1, _g2) = if sdir.id == ddir.id {
            (Some(sdir.lock_dir()), None)
        } else if sdir.id < ddir.id {
            let a = sdir.lock_dir();
            (Some(a), Some(ddir.lock_dir()))
        } else {
            let b = ddir.lock_dir();
            (Some(sdir.lock_dir()), Some(b))
        };
        if self.current_id(sdir, name)? != Some(src.id)
            || self.current_id(ddir, newname)? != dst.as_ref().map(|d| d.id)
        {
            return Err(Error::Raced);
        }
        let samedir = sdir.id == ddir.id;
        let src_meta = self.is_metacopy_node(&src);
        let dst_meta =
            flag == RenameFlag::Exchange && dst.as_ref().is_some_and(|d| self.is_metacopy_node(d));
        if src_meta {
            self.set_file_redirect(&src, spfd.as_fd(), name, samedir)?;
        }
        if let (Some(d), true) = (&dst, dst_meta) {
            self.set_file_redirect(d, dpfd.as_fd(), newname, samedir)?;
        }
        if flag == RenameFlag::Exchange {
            // A directory swapped onto a name that a lower layer holds must hide it, unless
            // a redirect leads it to its own lower copies.
            if let Some(d) = &dst {
                if src_merged {
                    self.set_redirect(&src, &spfd, name, samedir)?;
                } else if src.kind == FileKind::Directory && self.lower_has(ddir, newname)? {
                    let fd = sys::open_dir_path(spfd.as_fd(), name.as_bytes())?;
                    self.make_opaque(fd.as_fd())?;
                }
                if dst_merged {
                    self.set_redirect(d, &dpfd, newname, samedir)?;
                } else if d.kind == FileKind::Directory && self.lower_has(sdir, name)? {
                    let fd = sys::open_dir_path(dpfd.as_fd(), newname.as_bytes())?;
                    self.make_opaque(fd.as_fd())?;
                }
            }
            sys::rename_at(
                spfd.as_fd(),
                name,
                dpfd.as_fd(),
                newname,
                RenameMode::Exchange,
            )?;
            self.nodes
                .relocate(src.id, (sdir.id, name), ddir.id, newname.to_os_string());
            if let Some(d) = &dst {
                self.nodes
                    .relocate(d.id, (ddir.id, newname), sdir.id, name.to_os_string());
            }
            if src_merged {
                self.merge_again(&src, ddir, newname)?;
            }
            if let (Some(d), true) = (&dst, dst_merged) {
                self.merge_again(d, sdir, name)?;
            }
            if src_meta {
                self.locate_data_again(&src, ddir, newname)?;
            }
            if let (Some(d), true) = (&dst, dst_meta) {
                self.locate_data_again(d, sdir, name)?;
            }
            self.mark_impure(dpfd.as_fd());
            self.mark_impure(spfd.as_fd());
            return Ok(());
        }
        let src_whiteout = self.lower_has(sdir, name)?;
        let dst_slot = self.upper_slot(dpfd.as_fd(), newname)?;
        if src_merged {
            self.set_redirect(&src, &spfd, name, samedir)?;
        }
        // A replaced object whose last name this was dies, before its inode is freed (see
        // `remove`).
        let dst_dies = match &dst {
            Some(d) => {
                d.kind == FileKind::Directory
                    || (!Overlay::in_upper(d) && !self.indexes())
                    || dst_attr.map(|a| a.nlink <= 1).unwrap_or(true)
            }
            None => false,
        };
        if let (Some(d), true) = (&dst, dst_dies) {
            self.nodes.mark_dead(d.id);
        }
        // A directory moved onto a name a lower layer holds must hide it, whatever hid it
        // before: the object replaced may be an opaque upper directory, whose marker goes.
        let dst_lower = self.lower_has(ddir, newname)?;
        let dst_entry = dst
            .as_ref()
            .filter(|d| d.kind != FileKind::Directory)
            .and_then(|_| self.entry_of_upper(dpfd.as_fd(), newname));
        if let Some(iname) = &dst_entry {
            self.settle_nlink(iname)?;
        }
        let moved = self.rename_into_place(
            // A redirected directory finds its lower copies by its redirect, never by its
            // new name: it is not made opaque (which would stop it following the redirect).
            dst_lower && !src_merged,
            name,
            newname,
            &src,
            &spfd,
            &dpfd,
            dst_slot,
            src_whiteout,
            work,
        );
        if let Err(e) = moved {
            if let (Some(d), true) = (&dst, dst_dies) {
                self.nodes.revive(d.id);
            }
            return Err(e);
        }
        if let Some(iname) = dst_entry {
            self.drop_entry_if_orphan(&iname);
        }
        if let Some(d) = &dst {
            self.nodes.drop_name(d.id, ddir.id, newname);
            self.locate_other_name(d.id);
        }
        self.nodes
            .relocate(src.id, (sdir.id, name), ddir.id, newname.to_os_string());
        if src_merged {
            self.merge_again(&src, ddir, newname)?;
            // Its copies below have their own origin: as the kernel marks the parent.
            self.mark_impure(dpfd.as_fd());
        } else if src.kind == FileKind::Directory {
            self.nodes.set_layers(src.id, smallvec::smallvec![UPPER]);
        } else if src_meta {
            self.locate_data_again(&src, ddir, newname)?;
        }
        Ok(())
    }

    /// The plain (non-exchange) rename in the upper layer, with the whiteout and opacity
    /// it needs; the caller holds both directory locks.
    #[allow(clippy::too_many_arguments)]
    fn rename_into_place(
        &self,
        dst_lower: bool,
        name: &OsStr,
        newname: &OsStr,
        src: &Node,
        spfd: &OwnedFd,
        dpfd: &OwnedFd,
        dst_slot: UpperSlot,
        src_whiteout: bool,
        work: &crate::layer::WorkDir,
    ) -> Result<()> {
        if src.kind == FileKind::Directory && dst_lower {
            let fd = sys::open_dir_path(spfd.as_fd(), name.as_bytes())?;
            self.make_opaque(fd.as_fd())?;
        }
        // Clear what the upper layer holds at the target when a plain rename cannot replace
        // it: a whiteout under a directory, or a directory holding whiteouts.
        match dst_slot {
            UpperSlot::CharWhiteout if src.kind == FileKind::Directory => {
                sys::unlink_at(dpfd.as_fd(), newname, false).ctx("unlink", newname)?;
            }
            UpperSlot::Object(true) => {
                let tmp = self.temp_name();
                sys::rename_at(
                    dpfd.as_fd(),
                    newname,
                    work.fd(),
                    &tmp,
                    RenameMode::NoReplace,
                )?;
                sys::remove_tree(work.fd(), &tmp).ctx("remove", newname)?;
            }
            _ => {}
        }
        let moved = if src_whiteout && work.whiteout == WhiteoutFormat::CharDevice {
            match sys::rename_at(
                spfd.as_fd(),
                name,
                dpfd.as_fd(),
                newname,
                RenameMode::Whiteout,
            ) {
                Ok(()) => true,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) => {
                    false
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            false
        };
        if !moved {
            sys::rename_at(
                spfd.as_fd(),
                name,
                dpfd.as_fd(),
                newname,
                RenameMode::Replace,
            )?;
            if src_whiteout {
                self.write_whiteout(spfd.as_fd(), name)?;
            }
        }
        if dst_slot == UpperSlot::DotWhiteout {
            sys::unlink_at(dpfd.as_fd(), &format::whiteout_name(newname), false)
                .ctx("unlink whiteout", newname)?;
        }
        if src.kind != FileKind::Directory {
            self.mark_impure(dpfd.as_fd());
        }
        Ok(())
    }

    /// Gives directory `node`, about to be renamed from `name` in upper directory `pfd`,
    /// the redirect the rename needs (see [`Overlay::redirect_for_rename`]); set before the
    /// move, as the kernel sets it. `EXDEV` where the upper layer takes no such xattr.
    fn set_redirect(&self, node: &Node, pfd: &OwnedFd, name: &OsStr, samedir: bool) -> Result<()> {
        let Some(v) = self.redirect_for_rename(node, samedir)? else {
            return Ok(());
        };
        let fd = sys::open_dir_path(pfd.as_fd(), name.as_bytes())?;
        match sys::set_xattr(fd.as_fd(), self.layers.xattrs().redirect(), &v, 0) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
                Err(Error::CrossDevice(MERGED_DIR))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Directory `node`, renamed with a redirect to `name` in `dir`, has its copies where a
    /// fresh lookup of that name finds them.
    fn merge_again(&self, node: &Node, dir: &Node, name: &OsStr) -> Result<()> {
        let chain = dir.with_location(|l| l.layers.clone());
        match self.resolve_in(dir, &chain, name, 0)? {
            Some(r) => self.nodes.set_merge(node.id, r.layers, r.redirects),
            None => self.nodes.set_layers(node.id, smallvec::smallvec![UPPER]),
        }
        Ok(())
    }

    fn is_root_id(id: NodeId) -> bool {
        id == crate::inode::ROOT
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::RenameFlag;
    use crate::inode::ROOT;

    /// A name of a lower hard link in a writable union is a node of its own that shows the
    /// lower file's number (see `Overlay::shown_ino`). A rename that took the number shown
    /// for the node id found no node by it and failed with ESTALE (8593f9a; with the id
    /// types, an `Ino` is no `NodeId`).
    #[test]
    fn a_lower_hard_link_can_be_renamed() {
        let (_t, ov) = super::super::scratch_overlay(|l, _| {
            std::fs::write(l.join("a"), "data").unwrap();
            std::fs::hard_link(l.join("a"), l.join("b")).unwrap();
        });
        let a = ov.lookup(ROOT, OsStr::new("a")).unwrap();
        assert_ne!(a.node.get(), a.ino.get(), "each name is its own node");
        ov.rename(
            ROOT,
            OsStr::new("a"),
            ROOT,
            OsStr::new("c"),
            RenameFlag::Plain,
        )
        .unwrap();
        let c = ov.lookup(ROOT, OsStr::new("c")).unwrap();
        assert_eq!(c.node, a.node);
        assert_eq!(ov.getattr(c.node).unwrap().size, 4);
        assert!(ov.lookup(ROOT, OsStr::new("a")).is_err());
    }
}

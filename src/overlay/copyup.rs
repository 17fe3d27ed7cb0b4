//! Copy-up: bringing a lower object (and its parent directories) into the upper layer before
//! it changes.
//!
//! A copy is built in `WORKDIR/work` under a temporary name — data, owner, xattrs, mode and
//! times — fsync'd unless the mount is `volatile`/`fsync=0`, and only then renamed into the
//! upper layer, so a crash leaves either no copy or a complete one. A node keeps its node id
//! and `st_ino` across its copy-up; for non-directories the number is also recorded in an
//! overlay-private xattr so it survives a remount.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustix::fs::OFlags;

use super::{Context, Error, Overlay, Result};
use crate::inode::{Node, ROOT};
use crate::layer::{format, Ino, Layer, WorkDir, INDEX_LAYER};
use crate::sys::Object;
use crate::sys::{self, FileKind, SetTime, Stat};

/// The upper layer's index.
pub(crate) const UPPER: u16 = 0;

/// Key of the xattr that keeps a copied-up object's original `st_ino`.
pub(crate) const ORIGIN_INO: &str = "stratafs.origin-ino";

impl Overlay {
    /// The upper layer and work directory, or EROFS.
    pub(crate) fn writable(&self) -> Result<(&Layer, &WorkDir)> {
        if self.opts.read_only {
            return Err(Error::ReadOnly);
        }
        match (self.layers.upper(), self.layers.work()) {
            (Some(u), Some(w)) => Ok((u, w)),
            _ => Err(Error::ReadOnly),
        }
    }

    /// A fresh name for staging in the work directory.
    pub(crate) fn temp_name(&self) -> OsString {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        format!("#{}.{n}", std::process::id()).into()
    }

    /// True when node `n` has an upper copy.
    pub(crate) fn in_upper(n: &Node) -> bool {
        n.with_location(|l| l.top() == Some(UPPER))
    }

    /// Makes sure directory `dir` exists in the upper layer (copying it and its parents up)
    /// and returns its upper fd.
    pub(crate) fn upper_dir(&self, dir: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        let (_, work) = self.writable()?;
        if dir.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        if Overlay::in_upper(dir) {
            return self.dir_fd(dir, UPPER);
        }
        let _copy = dir.copy_lock.lock();
        if Overlay::in_upper(dir) {
            return self.dir_fd(dir, UPPER);
        }
        let parent = self.node(dir.parent())?;
        let pfd = self.upper_dir(&parent)?;
        let (name, chain) = dir.with_location(|l| (l.name.clone(), l.layers.clone()));
        let top = *chain.first().ok_or(Error::StaleNode(dir.id))?;
        let src = self.dir_fd(dir, top)?;
        let st = sys::stat_fd(src.as_fd())?;
        let _dir_guard = parent.lock_dir();
        let started = std::time::Instant::now();
        let tmp = self.temp_name();
        sys::mkdir_at(work.fd(), &tmp, 0o700).ctx("copy up mkdir", &name)?;
        let staged = (|| -> Result<()> {
            let fd = sys::open_dir_path(work.fd(), tmp.as_bytes())?;
            self.copy_meta(src.as_fd(), fd.as_fd(), work.fd(), &tmp, &st)?;
            place_copy(work, &tmp, pfd.as_fd(), &name)
        })();
        if let Err(e) = staged {
            let _ = sys::remove_tree(work.fd(), &tmp);
            return Err(e);
        }
        let mut layers: crate::inode::Layers = smallvec::smallvec![UPPER];
        layers.extend(chain);
        self.nodes.set_layers(dir.id, layers);
        self.copy_ups.record(0, started.elapsed());
        // The directory is shown from its new upper copy, and its parent changed.
        self.attrs_changed(dir.id);
        self.attrs_changed(parent.id);
        self.dir_fd(dir, UPPER)
    }

    /// Copies non-directory `node` up (its data too unless `with_data` is false, for an open
    /// with `O_TRUNC` or a truncate to zero). Concurrent callers produce one copy.
    pub(crate) fn copy_up(&self, node: &Arc<Node>, with_data: bool) -> Result<()> {
        self.check_before_copy_up(node)?;
        self.copy_up_as(node, with_data, false)
    }

    /// The data of a metacopy file is opened before any copy-up of it, as the kernel's
    /// copy-up first looks up the data in a data-only layer (`ENOENT` where it is missing)
    /// and, with `verity=on|require`, checks it (`EIO`: see [`Overlay::check_verity`]).
    fn check_before_copy_up(&self, node: &Node) -> Result<()> {
        let loc = node.location();
        if !Overlay::is_metacopy_loc(node.kind, &loc)
            || (self.opts.verity == crate::config::Verity::Off && !self.in_data_only(&loc))
        {
            return Ok(());
        }
        self.open_data(node, &loc, OFlags::RDONLY).map(drop)
    }

    /// Copies `node` up for a change of its metadata alone (chmod, chown, utimes, xattrs,
    /// link, rename). With `metacopy=on` a lower regular file gets an upper copy without its
    /// data, as the kernel's `metacopy=on` makes it: the same size (a sparse file), the
    /// metadata, and an empty `overlay.metacopy`; its data stays below until an open for
    /// writing or a truncate copies it. Anything else is copied up whole.
    pub(crate) fn copy_up_meta(&self, node: &Arc<Node>) -> Result<()> {
        let meta = self.opts.metacopy && node.kind == FileKind::Regular;
        self.check_before_copy_up(node)?;
        if meta && Overlay::in_upper(node) {
            return Ok(());
        }
        self.copy_up_as(node, true, meta)
    }

    /// [`Overlay::copy_up`], or a metadata-only copy of a regular file with `meta`.
    fn copy_up_as(&self, node: &Arc<Node>, with_data: bool, meta: bool) -> Result<()> {
        let (_, work) = self.writable()?;
        if node.kind == FileKind::Directory {
            self.upper_dir(node)?;
            return Ok(());
        }
        let has_data = |n: &Node| {
            n.with_location(|l| l.top() == Some(UPPER) && !Overlay::is_metacopy_loc(n.kind, l))
        };
        if has_data(node) {
            return Ok(());
        }
        let _copy = node.copy_lock.lock();
        if Overlay::in_upper(node) {
            if meta {
                return Ok(());
            }
            // A metacopy file: its data joins it.
            return self.copy_up_data(node, with_data);
        }
        let parent = self.node(node.parent())?;
        let pfd = self.upper_dir(&parent)?;
        let (name, top, below, top_name) = node.with_location(|l| {
            (
                l.name.clone(),
                l.top(),
                l.layers.clone(),
                l.top_name().to_os_string(),
            )
        });
        let top = top.ok_or(Error::StaleNode(node.id))?;
        if top == INDEX_LAYER {
            // Another name of it was copied up: this one is linked to the same file (whose
            // data may still be below, a metacopy file).
            {
                let _dir_guard = parent.lock_dir();
                // Removed while this waited for the lock: a link would bring it back.
                if node.is_dead() {
                    return Err(Error::NotFound);
                }
                self.link_up_locked(pfd.as_fd(), &name, &top_name)?;
                let mut layers: crate::inode::Layers = smallvec::smallvec![UPPER];
                layers.extend_from_slice(below.get(1..).unwrap_or_default());
                self.nodes.set_layers(node.id, layers);
            }
            self.attrs_changed(node.id);
            self.attrs_changed(parent.id);
            if meta {
                return Ok(());
            }
            return self.copy_up_data(node, with_data);
        }
        let src_dir = self.dir_fd(&parent, top)?;
        let st = sys::stat_at(src_dir.as_fd(), &name)?;
        let indexed =
            self.needs_index(&st) && !Overlay::is_metacopy_loc(node.kind, &node.location());
        let _dir_guard = parent.lock_dir();
        // Removed while this waited for the lock: a copy would bring it back.
        if node.is_dead() {
            return Err(Error::NotFound);
        }
        let started = std::time::Instant::now();
        let tmp = self.temp_name();
        // A file copied up into the index is copied whole (its other names read it).
        let mut meta = meta && !indexed && st.kind() == Some(FileKind::Regular);
        let with_data = with_data || indexed;
        let staged = if meta {
            self.stage_meta_copy(node, src_dir.as_fd(), &name, &st, &tmp)
                .map(|m| meta = m)
        } else {
            self.stage_copy(node, src_dir.as_fd(), &name, &st, &tmp, with_data)
        };
        let staged = staged.and_then(|()| self.record_origin(src_dir.as_fd(), &name, top, &tmp));
        let placed = staged.and_then(|origin| match (indexed, origin) {
            (true, origin) => {
                let fh = match origin {
                    Some(fh) => fh,
                    None => self.origin_of(src_dir.as_fd(), &name, top)?,
                };
                self.place_indexed(&tmp, &st, pfd.as_fd(), &name, &fh)
            }
            (false, _) => place_copy(work, &tmp, pfd.as_fd(), &name),
        });
        if let Err(e) = placed {
            let _ = sys::remove_tree(work.fd(), &tmp);
            return Err(e);
        }
        self.mark_impure(pfd.as_fd());
        if meta {
            // The data stays where it was: the layer below a lower metacopy file that was
            // copied, else the lower file's own (where redirects put it, as before).
            let data = if below.len() > 1 {
                &below[1..]
            } else {
                &below[..]
            };
            let mut layers: crate::inode::Layers = smallvec::smallvec![UPPER];
            layers.extend_from_slice(data);
            self.nodes.set_layers(node.id, layers);
        } else {
            self.nodes.set_layers(node.id, smallvec::smallvec![UPPER]);
        }
        let copied = if with_data && !meta && st.kind() == Some(FileKind::Regular) {
            st.size
        } else {
            0
        };
        self.copy_ups.record(copied, started.elapsed());
        self.attrs_changed(node.id);
        self.attrs_changed(parent.id);
        Ok(())
    }

    /// Builds the copy of `name` (in `src_dir`) as `tmp` in the work directory.
    fn stage_copy(
        &self,
        node: &Node,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
        tmp: &OsStr,
        with_data: bool,
    ) -> Result<()> {
        let (_, work) = self.writable()?;
        let src =
            sys::open_beneath(src_dir, name.as_bytes(), OFlags::PATH).ctx("copy up open", name)?;
        match st.kind() {
            Some(FileKind::Regular) => {
                let dst = sys::create_file(work.fd(), tmp, OFlags::RDWR, 0o600)
                    .ctx("copy up create", name)?;
                if with_data && st.size > 0 {
                    let loc = node.location();
                    let data = if Overlay::is_metacopy_loc(node.kind, &loc) {
                        // A metacopy file in a lower layer: its data is further down.
                        self.open_data(node, &loc, OFlags::RDONLY)?
                    } else {
                        sys::open_beneath(src_dir, name.as_bytes(), OFlags::RDONLY)
                            .ctx("copy up open", name)?
                    };
                    copy_data(data.as_fd(), dst.as_fd(), st.size).ctx("copy up data", name)?;
                }
                self.copy_meta(src.as_fd(), dst.as_fd(), work.fd(), tmp, st)?;
                if self.opts.sync_writes {
                    sys::sync(dst.as_fd(), false).ctx("copy up fsync", name)?;
                }
            }
            Some(FileKind::Symlink) => {
                let target = sys::read_link_fd(src.as_fd())?;
                sys::symlink_at(OsStr::from_bytes(&target), work.fd(), tmp)
                    .ctx("copy up symlink", name)?;
                let dst = sys::open_beneath(work.fd(), tmp.as_bytes(), OFlags::PATH)?;
                self.copy_meta(src.as_fd(), dst.as_fd(), work.fd(), tmp, st)?;
            }
            Some(_) => {
                sys::mknod_at(work.fd(), tmp, st.mode, st.rdev).ctx("copy up mknod", name)?;
                let dst = sys::open_beneath(work.fd(), tmp.as_bytes(), OFlags::PATH)?;
                self.copy_meta(src.as_fd(), dst.as_fd(), work.fd(), tmp, st)?;
            }
            None => return Err(Error::Invalid("a kind of file that cannot be copied up")),
        }
        let dst = sys::open_beneath(work.fd(), tmp.as_bytes(), OFlags::PATH)?;
        let key = work.xattr(ORIGIN_INO);
        // Best effort: without it the copy shows its own inode number after a remount.
        let _ = sys::set_xattr(dst.as_fd(), &key, node.id.shown().to_origin().as_bytes(), 0);
        if self.fuse_markers && st.kind() == Some(FileKind::Regular) {
            // As fuse-overlayfs records it: the path in the layers, NUL-terminated (user
            // xattrs may be refused by the upper filesystem; fuse-overlayfs skips it then).
            let mut origin = self.rel_path(node)?;
            origin.push(0);
            match sys::set_xattr(
                dst.as_fd(),
                OsStr::new(format::FUSE_OVERLAYFS_ORIGIN),
                &origin,
                0,
            ) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Builds the metadata-only copy of regular file `name` (in `src_dir`) as `tmp` in the
    /// work directory: no data, the size of `st`, and an empty `overlay.metacopy` (the
    /// kernel's form without an fs-verity digest; with `verity=on|require` the data's
    /// digest where it has one). Where the upper filesystem takes no such xattr, or
    /// `verity=require` finds no digest, the data is copied after all (as the kernel's
    /// copy-up does): false then.
    fn stage_meta_copy(
        &self,
        node: &Node,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
        tmp: &OsStr,
    ) -> Result<bool> {
        let (_, work) = self.writable()?;
        let src =
            sys::open_beneath(src_dir, name.as_bytes(), OFlags::PATH).ctx("copy up open", name)?;
        let loc = node.location();
        let open_data = || -> Result<OwnedFd> {
            if Overlay::is_metacopy_loc(node.kind, &loc) {
                self.open_data(node, &loc, OFlags::RDONLY)
            } else {
                Ok(sys::open_beneath(src_dir, name.as_bytes(), OFlags::RDONLY)
                    .ctx("copy up open", name)?)
            }
        };
        let value = match self.opts.verity {
            crate::config::Verity::Off => Some(Vec::new()),
            _ => self.metacopy_value_for(open_data()?.as_fd())?,
        };
        let dst =
            sys::create_file(work.fd(), tmp, OFlags::RDWR, 0o600).ctx("copy up create", name)?;
        let meta = match value
            .map(|v| sys::set_xattr(dst.as_fd(), self.layers.xattrs().metacopy(), &v, 0))
        {
            None => false,
            Some(Ok(())) => true,
            Some(Err(e)) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => {
                tracing::debug!(?name, error = %e, "no metacopy xattr: the data is copied");
                false
            }
            Some(Err(e)) => return Err(e).ctx("copy up metacopy", name),
        };
        if meta {
            sys::truncate(dst.as_fd(), st.size).ctx("copy up size", name)?;
        } else if st.size > 0 {
            copy_data(open_data()?.as_fd(), dst.as_fd(), st.size).ctx("copy up data", name)?;
        }
        self.copy_meta(src.as_fd(), dst.as_fd(), work.fd(), tmp, st)?;
        if self.opts.sync_writes {
            sys::sync(dst.as_fd(), false).ctx("copy up fsync", name)?;
        }
        let key = work.xattr(ORIGIN_INO);
        // Best effort, as for a whole copy.
        let _ = sys::set_xattr(dst.as_fd(), &key, node.id.shown().to_origin().as_bytes(), 0);
        Ok(meta)
    }

    /// Applies owner, xattrs, mode and times of `st` (from `src`) to `dst` (`name` in `dir`),
    /// in the order that keeps setuid bits: owner first, mode after.
    pub(crate) fn copy_meta(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
    ) -> Result<()> {
        // When owners live in override xattrs, the copy's own owner is best effort (a
        // rootless daemon cannot chown) and the owner and mode shown go into its override.
        let chowned = sys::chown_at(dir, name, Some(st.uid), Some(st.gid));
        if !self.keeps_perms_in_xattrs() {
            chowned?;
        }
        copy_xattrs(src, dst, self.xattr_names()).ctx("copy up xattrs", name)?;
        if st.kind() != Some(FileKind::Symlink) {
            sys::chmod_at(dir, name, st.mode).ctx("copy up chmod", name)?;
        }
        if self.keeps_perms_in_xattrs() {
            // The copy's override records what the source shows, its TYPE included.
            let source = self.read_override(Object::Fd(src));
            let shown = super::perms::with_override(*st, source.as_ref());
            let copied = super::perms::Override {
                uid: shown.uid,
                gid: shown.gid,
                perm: shown.mode & 0o7777,
                kind: source.and_then(|o| o.kind),
            };
            let written = self.write_raw_override(Object::At(dir, name), &copied);
            // Symlinks and device nodes take no user xattrs.
            if matches!(st.kind(), Some(FileKind::Regular | FileKind::Directory)) {
                written?;
            }
        }
        sys::set_times_at(dir, name, SetTime::At(st.atime), SetTime::At(st.mtime))
            .ctx("copy up utimes", name)?;
        Ok(())
    }

    /// Marks an upper directory as holding copied-up entries (the kernel's `impure`), so
    /// listings know to look for their original inode numbers.
    pub(crate) fn mark_impure(&self, dir: BorrowedFd<'_>) {
        if self.layers.work().is_some() {
            let key = self.layers.xattrs().impure();
            if !matches!(sys::get_xattr(dir, key), Ok(Some(_))) {
                let _ = sys::set_xattr(dir, key, b"y", 0);
            }
        }
    }

    /// The `st_ino` recorded on an upper entry at copy-up, if any.
    pub(crate) fn origin_ino(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<Ino> {
        let work = self.layers.work()?;
        let v = sys::get_xattr_at(dir, name, &work.xattr(ORIGIN_INO)).ok()??;
        Ino::from_origin(&v)
    }

    /// With the index, records the kernel's `overlay.origin` (the handle of the lower
    /// object `name` in `src_dir` of layer `layer`) on copy `tmp` in the work directory,
    /// as the kernel's copy-up records it; returns the handle recorded.
    fn record_origin(
        &self,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        layer: crate::layer::LayerIdx,
        tmp: &OsStr,
    ) -> Result<Option<Vec<u8>>> {
        let (_, work) = self.writable()?;
        if !self.indexes() || self.layers.get(layer).is_none_or(|l| l.upper) {
            return Ok(None);
        }
        let fh = self.origin_of(src_dir, name, layer)?;
        sys::set_xattr_at(work.fd(), tmp, self.layers.xattrs().origin(), &fh, 0)
            .ctx("copy up origin", name)?;
        Ok(Some(fh))
    }

    /// Places copy `tmp` of lower hard link `name` (with attributes `st`, whose origin is
    /// `fh`) into the index, under the hex of its origin, and links it up as `name` in
    /// upper directory `pfd`. If another name of it got there first (a copy-up
    /// through another node), the copy is dropped and that entry is linked up instead.
    fn place_indexed(
        &self,
        tmp: &OsStr,
        st: &Stat,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        fh: &[u8],
    ) -> Result<()> {
        let (_, work) = self.writable()?;
        let index = self.index_dir()?;
        let iname = format::index_name(fh);
        match sys::rename_at(
            work.fd(),
            tmp,
            index.as_fd(),
            &iname,
            sys::RenameMode::NoReplace,
        ) {
            Ok(()) => {
                // The names shown are the lower file's (the copy has one link, the entry).
                self.set_indexed_nlink(Object::At(index.as_fd(), &iname), 1, st.nlink)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                sys::remove_tree(work.fd(), tmp)?;
            }
            Err(e) => return Err(e).ctx("copy up index", name),
        }
        self.link_entry(&iname, pfd, name)
    }

    /// Links index entry `iname` as `name` in upper directory `pfd`, keeping the link count
    /// shown (a lower name becomes an upper one: the kernel's `ovl_link_up`). The
    /// directory's times are put back, as after a copy-up.
    fn link_entry(&self, iname: &OsStr, pfd: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let index = self.index_dir()?;
        let entry = Object::At(index.as_fd(), iname);
        let st = sys::stat_at(index.as_fd(), iname)?;
        let shown = self.indexed_nlink(entry, &st);
        // As the kernel's link-up: the count relative to the lower file while the upper
        // one changes, so that a crash in between leaves it right.
        self.set_lower_relative_nlink(entry, shown)?;
        let before = sys::stat_fd(pfd)?;
        let linked = match sys::link_at(index.as_fd(), iname, pfd, name) {
            Ok(()) => 1,
            // Linked up already (through another node of the name): nothing changes.
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && sys::stat_at(pfd, name)
                        .is_ok_and(|u| (u.dev, u.ino) == (st.dev, st.ino)) =>
            {
                0
            }
            Err(e) => {
                self.set_indexed_nlink(entry, st.nlink, shown)?;
                return Err(e).ctx("link up", name);
            }
        };
        if linked == 1 {
            put_times_back(pfd, &before)?;
        }
        self.set_indexed_nlink(entry, st.nlink + linked, shown)
    }

    /// Links up `name` in `parent`, a name of a file in the index (entry `iname`) with no
    /// upper name there yet.
    pub(crate) fn link_up(&self, parent: &Arc<Node>, name: &OsStr, iname: &OsStr) -> Result<()> {
        let pfd = self.upper_dir(parent)?;
        let _dir_guard = parent.lock_dir();
        self.link_up_locked(pfd.as_fd(), name, iname)
    }

    /// [`Overlay::link_up`] into upper directory `pfd`, its node's lock held.
    fn link_up_locked(&self, pfd: BorrowedFd<'_>, name: &OsStr, iname: &OsStr) -> Result<()> {
        self.link_entry(iname, pfd, name)?;
        self.mark_impure(pfd);
        Ok(())
    }

    /// The root is always merged with the upper layer: nothing to copy.
    pub(crate) fn is_root(n: &Node) -> bool {
        n.id == ROOT
    }
}

/// Renames a finished copy from the work directory into upper directory `pfd`. A copy-up
/// does not change what the directory lists, so its times are put back as they were (as
/// the kernel's overlayfs does).
fn place_copy(work: &WorkDir, tmp: &OsStr, pfd: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    let before = sys::stat_fd(pfd)?;
    sys::rename_at(work.fd(), tmp, pfd, name, sys::RenameMode::NoReplace)
        .ctx("copy up rename", name)?;
    put_times_back(pfd, &before)
}

/// Gives directory `dir` the times of `before` again (after a copy-up placed an entry).
fn put_times_back(dir: BorrowedFd<'_>, before: &Stat) -> Result<()> {
    sys::set_times_at(
        dir,
        OsStr::new(""),
        SetTime::At(before.atime),
        SetTime::At(before.mtime),
    )?;
    Ok(())
}

/// Copies the xattrs a copy-up keeps: everything but the overlay's private names (escaped
/// ones, which the mount shows, included).
/// Attributes the upper filesystem refuses (`security.*` under some LSMs) are skipped.
fn copy_xattrs(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mapping: format::XattrNames,
) -> io::Result<()> {
    let names = match sys::list_xattr(src) {
        Ok(n) => n,
        Err(e) if crate::layer::is_unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in sys::split_xattr_list(&names) {
        if !mapping.copied_up(name) {
            continue;
        }
        let Some(value) = sys::get_xattr(src, name)? else {
            continue;
        };
        match sys::set_xattr(dst, name, &value, 0) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOTSUP)) => {
                tracing::debug!(?name, error = %e, "xattr not copied up");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `len` bytes: a reflink when the filesystem shares extents, else `copy_file_range`
/// over the data segments only (holes stay holes), else a read/write loop.
pub(crate) fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    if sys::reflink(src, dst).is_ok() {
        return Ok(());
    }
    let mut off = 0u64;
    while off < len {
        let data = match sys::seek(src, off as i64, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(_) => off, // no SEEK_DATA support: treat everything as data
        };
        if data >= len {
            break;
        }
        let hole = sys::seek(src, data as i64, libc::SEEK_HOLE)
            .unwrap_or(len)
            .min(len);
        copy_segment(src, dst, data, hole - data)?;
        off = hole;
    }
    sys::truncate(dst, len)?;
    Ok(())
}

fn copy_segment(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    mut off: u64,
    mut len: u64,
) -> io::Result<()> {
    while len > 0 {
        let chunk = len.min(1 << 30) as usize;
        match sys::copy_range(src, off, dst, off, chunk) {
            Ok(0) => break,
            Ok(n) => {
                off += n as u64;
                len -= n as u64;
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV)
                        | Some(libc::EINVAL)
                        | Some(libc::ENOSYS)
                        | Some(libc::EOPNOTSUPP)
                ) =>
            {
                return rw_copy(src, dst, off, len);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn rw_copy(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, mut off: u64, mut len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while len > 0 {
        let want = (len as usize).min(buf.len());
        let n = sys::pread(src, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        sys::pwrite_all(dst, &buf[..n], off)?;
        off += n as u64;
        len -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use crate::inode::ROOT;
    use crate::layer::INDEX_LAYER;
    use crate::overlay::Error;

    /// A name of a lower hard link whose file is in the index (another name was copied
    /// up), removed while its copy-up waited for the directory lock: the copy-up must not
    /// link it up again. It used to link it up without looking, so the unlink was undone.
    #[test]
    fn a_name_removed_before_its_link_up_is_not_brought_back() {
        let (t, mut ov) = crate::overlay::scratch_overlay(|l, _| {
            std::fs::write(l.join("a"), "a").unwrap();
            std::fs::hard_link(l.join("a"), l.join("b")).unwrap();
        });
        ov.enable_index().unwrap();
        let a = ov.lookup(ROOT, OsStr::new("a")).unwrap().node;
        ov.copy_up(&ov.node(a).unwrap(), true).unwrap();
        let b = ov.lookup(ROOT, OsStr::new("b")).unwrap().node;
        let node = ov.node(b).unwrap();
        assert_eq!(node.location().top(), Some(INDEX_LAYER));
        // As an unlink that took the lock first leaves it.
        ov.nodes.mark_dead(b);
        let copied = ov.copy_up(&node, true);
        assert!(matches!(copied, Err(Error::NotFound)), "{copied:?}");
        assert!(!t.path().join("u/b").exists());
    }
}

//! Metacopy files (the kernel's `metacopy=on`, "Metadata only copy up").
//!
//! A regular file with `overlay.metacopy` carries the metadata of a file whose data is in a
//! layer below: at the same path, or where its `overlay.redirect` says (an absolute path from
//! the layer root, or another name in the same parent), passing other metacopy files on the
//! way. A lookup that finds one records the data's layer as the second of the node's layers
//! (and where the data is, when a redirect put it elsewhere); reads go to the data, `st_blocks`
//! is the data's, everything else the metacopy file's. The data is copied into the upper file
//! at the first open for writing or truncate, and the xattr goes. Without `metacopy=on` a
//! lookup of a metacopy file fails with `EPERM`, and one whose data is nowhere with `EIO`, as
//! the kernel's lookup answers.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use rustix::fs::OFlags;

use super::redirect::Redirect;
use super::{Context, Error, Overlay, Result};
use crate::config::Verity;
use crate::inode::{LayerPath, Location, Node};
use crate::layer::{Layer, LayerIdx};
use crate::sys::{self, FileKind, Stat};

impl Overlay {
    /// True when `name` in `dir` (of `layer`, with attributes `st`) is a metacopy file. With
    /// `metacopy=on` the xattr of every regular file is read (the kernel makes metacopy
    /// files of empty files too). Without, only where one may be (to be refused, as the
    /// kernel refuses it): a sparse-looking file, or any regular file in a directory marked
    /// impure (`impure`, asked last), so a lookup in a tree without copy-ups reads no xattr.
    pub(crate) fn is_metacopy(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
        layer: &Layer,
        impure: impl FnOnce() -> Result<bool>,
    ) -> Result<bool> {
        if st.kind() != Some(FileKind::Regular) {
            return Ok(false);
        }
        let ask = self.opts.metacopy || crate::layer::looks_sparse(st) || impure()?;
        if !ask {
            return Ok(false);
        }
        match crate::layer::metacopy_xattr(dir, name, layer.xattrs)? {
            None => Ok(false),
            Some(v) if crate::layer::format::metacopy_value_ok(&v) => Ok(true),
            Some(_) => Err(Error::BadMetacopy),
        }
    }

    /// The redirect of metacopy file `name` in `dir`, if it has one.
    pub(crate) fn metacopy_redirect(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        layer: &Layer,
    ) -> Result<Option<Redirect>> {
        match crate::layer::redirect_xattr(dir, name, layer.xattrs)? {
            Some(v) => Ok(Some(super::redirect::parse(&v)?)),
            None => Ok(None),
        }
    }

    /// True when node `node` is a metacopy file now (its data in a layer below).
    pub(crate) fn is_metacopy_node(&self, node: &Node) -> bool {
        node.with_location(|l| Overlay::is_metacopy_loc(node.kind, l))
    }

    /// Gives metacopy file `node`, about to be renamed from (or linked as) `name` in upper
    /// directory `pfd`, the redirect that leads to its data, in the kernel's form (see
    /// [`Overlay::redirect_for_rename`]): its old name within the same parent, else the
    /// absolute path of its data; one it has that stays right is kept. `EXDEV` where the
    /// upper layer takes no such xattr.
    pub(crate) fn set_file_redirect(
        &self,
        node: &Node,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        samedir: bool,
    ) -> Result<()> {
        let Some(v) = self.redirect_for_rename(node, samedir)? else {
            return Ok(());
        };
        match sys::set_xattr_at(pfd, name, self.layers.xattrs().redirect(), &v, 0) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) => Err(
                Error::CrossDevice("the upper layer takes no overlay.redirect"),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Metacopy file `node`, now `name` in `dir` with the redirect it was given, has its data
    /// where a fresh lookup of that name finds it.
    pub(crate) fn locate_data_again(&self, node: &Node, dir: &Node, name: &OsStr) -> Result<()> {
        let chain = dir.with_location(|l| l.layers.clone());
        if let Some(r) = self.resolve_in(dir, &chain, name, 0)? {
            if r.layers.len() > 1 {
                self.nodes.set_merge(node.id, r.layers, r.redirects);
            }
        }
        Ok(())
    }

    /// True when `loc` is that of a metacopy file: a non-directory with a second layer,
    /// which holds its data.
    pub(crate) fn is_metacopy_loc(kind: FileKind, loc: &Location) -> bool {
        kind != FileKind::Directory && loc.layers.len() > 1
    }

    /// Where the data of metacopy node `node` (at `loc`) is: a directory fd in the data's
    /// layer and the data's name there.
    pub(crate) fn data_place(
        &self,
        node: &Node,
        loc: &Location,
    ) -> Result<(Arc<OwnedFd>, std::ffi::OsString)> {
        let li = *loc.layers.get(1).ok_or(Error::StaleNode(node.id))?;
        let parent = || self.node(loc.parent);
        Ok(match loc.redirect_in(li) {
            None => (self.dir_fd(&*parent()?, li)?, loc.name.to_os_string()),
            Some(LayerPath::InParent(n)) => (self.dir_fd(&*parent()?, li)?, n.clone()),
            Some(LayerPath::FromRoot(p)) => {
                let layer = self.layers.get(li).ok_or(Error::StaleNode(node.id))?;
                let (last, dirs) = p.split_last().ok_or(Error::StaleNode(node.id))?;
                let path = std::path::PathBuf::from_iter(dirs);
                let fd = sys::open_dir_path(layer.root(), path.as_os_str().as_bytes())?;
                (Arc::new(fd), last.clone())
            }
        })
    }

    /// Opens the data of metacopy node `node` (at `loc`) read-only, checking its fs-verity
    /// digest with `verity=on|require` (see [`Overlay::check_verity`]).
    pub(crate) fn open_data(&self, node: &Node, loc: &Location, flags: OFlags) -> Result<OwnedFd> {
        let (dir, name) = self.data_place(node, loc)?;
        let fd = match sys::open_beneath(dir.as_fd(), name.as_bytes(), flags) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && flags.contains(OFlags::NOATIME) => {
                sys::open_beneath(dir.as_fd(), name.as_bytes(), flags - OFlags::NOATIME)
            }
            r => r,
        };
        let fd = fd.ctx("open metacopy data", &name)?;
        self.check_verity(node, loc, fd.as_fd())?;
        Ok(fd)
    }

    /// With `verity=on|require`, checks the data of metacopy node `node` (at `loc`, open as
    /// `data`) against the fs-verity digest its topmost metacopy file records, as the
    /// kernel does at every open and before a copy-up: `EIO` where the data has no
    /// fs-verity or another digest, and with `require` where no digest is recorded.
    pub(crate) fn check_verity(
        &self,
        node: &Node,
        loc: &Location,
        data: BorrowedFd<'_>,
    ) -> Result<()> {
        if self.opts.verity == Verity::Off {
            return Ok(());
        }
        let top = loc.top().ok_or(Error::StaleNode(node.id))?;
        let layer = self.layers.get(top).ok_or(Error::StaleNode(node.id))?;
        let dir = self.dir_fd(&*self.node(loc.parent)?, top)?;
        let value = crate::layer::metacopy_xattr(dir.as_fd(), loc.top_name(), layer.xattrs)?;
        let Some((algo, digest)) = value
            .as_deref()
            .and_then(crate::layer::format::metacopy_digest)
        else {
            return match self.opts.verity {
                Verity::Require => Err(Error::Verity("the metacopy file records no digest")),
                _ => Ok(()),
            };
        };
        match sys::measure_verity(data)? {
            None => Err(Error::Verity("the data has no fs-verity digest")),
            Some((a, d)) if a == u16::from(algo) && d == digest => Ok(()),
            Some(_) => Err(Error::Verity("the data has another fs-verity digest")),
        }
    }

    /// The `overlay.metacopy` value a metadata copy of a file whose data is `data` gets:
    /// empty, or with `verity=on|require` the data's fs-verity digest where it has one.
    /// `None` where `verity=require` finds none: the data is then copied, as the kernel's
    /// copy-up does.
    pub(crate) fn metacopy_value_for(&self, data: BorrowedFd<'_>) -> Result<Option<Vec<u8>>> {
        if self.opts.verity == Verity::Off {
            return Ok(Some(Vec::new()));
        }
        Ok(match sys::measure_verity(data)? {
            Some((algo, digest)) => Some(crate::layer::format::metacopy_with_digest(
                u8::try_from(algo).unwrap_or(0),
                &digest,
            )),
            None if self.opts.verity == Verity::Require => None,
            None => Some(Vec::new()),
        })
    }

    /// `st_blocks` of the data of metacopy node `node` (at `loc`, its own attributes
    /// `meta`); where a data-only layer was to have the data and has not, the kernel's
    /// estimate (see [`Overlay::find_data`]).
    pub(crate) fn data_blocks(&self, node: &Node, loc: &Location, meta: &Stat) -> Result<u64> {
        let (dir, name) = match self.data_place(node, loc) {
            Err(e) if e.is_absent() && self.in_data_only(loc) => return Ok(estimated_blocks(meta)),
            r => r?,
        };
        match sys::stat_at(dir.as_fd(), &name) {
            Err(e) if crate::layer::is_absent(&e) && self.in_data_only(loc) => {
                Ok(estimated_blocks(meta))
            }
            r => Ok(r?.blocks),
        }
    }

    /// True when the data of the metacopy file at `loc` is in a data-only layer.
    pub(crate) fn in_data_only(&self, loc: &Location) -> bool {
        loc.layers
            .get(1)
            .is_some_and(|li| self.layers.data_only().contains(li))
    }

    /// The data-only layer that holds the data of a metacopy file, whose attributes are
    /// `meta`, at absolute path `path` (the first that has a regular file there, reached
    /// without symlinks or mount crossings), and that file's `st_blocks`. Where none has it,
    /// the first data-only layer and the kernel's estimate of the blocks: the kernel looks
    /// the data up at the first open, which then fails with `ENOENT`, and so does ours.
    pub(crate) fn find_data(&self, path: &[OsString], meta: &Stat) -> Result<(LayerIdx, u64)> {
        let data = self.layers.data_only();
        let (last, dirs) = path.split_last().ok_or(Error::NoLowerData)?;
        let dirs = std::path::PathBuf::from_iter(dirs);
        for li in data.clone() {
            let layer = self.layers.get(li).ok_or(Error::NoLowerData)?;
            let Ok(dir) = sys::open_dir_path(layer.root(), dirs.as_os_str().as_bytes()) else {
                continue;
            };
            match sys::stat_at(dir.as_fd(), last) {
                Ok(st) if st.kind() == Some(FileKind::Regular) => return Ok((li, st.blocks)),
                _ => continue,
            }
        }
        Ok((data.start, estimated_blocks(meta)))
    }

    /// Copies the data of metacopy node `node` into its upper copy, which then stands alone:
    /// its `overlay.metacopy` goes, and the node has the upper layer only. The upper copy
    /// keeps its file capabilities (which a write drops); its mtime becomes the time of the
    /// copy where data was copied, as with the kernel's (whose copy is a write too).
    /// Without `with_data` (a truncate to zero follows) nothing is copied.
    pub(crate) fn copy_up_data(&self, node: &Node, with_data: bool) -> Result<()> {
        let loc = node.location();
        if !Overlay::is_metacopy_loc(node.kind, &loc) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (dir, name) = self.place_in(node, super::copyup::UPPER)?;
        let name = OsStr::from_bytes(&name);
        let upper = sys::open_beneath(dir.as_fd(), name.as_bytes(), OFlags::RDWR)
            .ctx("open for data copy-up", name)?;
        let st = sys::stat_fd(upper.as_fd())?;
        let mut copied = 0;
        if with_data && st.size > 0 {
            let caps = OsStr::new("security.capability");
            let cap = match sys::get_xattr(upper.as_fd(), caps) {
                Ok(v) => v,
                Err(e) if crate::layer::is_unsupported(&e) => None,
                Err(e) => return Err(e.into()),
            };
            let data = self.open_data(node, &loc, OFlags::RDONLY)?;
            super::copyup::copy_data(data.as_fd(), upper.as_fd(), st.size)
                .ctx("copy up data", name)?;
            if let Some(v) = cap {
                sys::set_xattr(upper.as_fd(), caps, &v, 0).ctx("copy up capabilities", name)?;
            }
            if self.opts.sync_writes {
                sys::sync(upper.as_fd(), false).ctx("copy up fsync", name)?;
            }
            copied = st.size;
        }
        match sys::remove_xattr(upper.as_fd(), self.layers.xattrs().metacopy()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e).ctx("remove metacopy", name),
        }
        self.nodes
            .set_layers(node.id, smallvec::smallvec![super::copyup::UPPER]);
        self.copy_ups.record(copied, started.elapsed());
        self.attrs_changed(node.id);
        Ok(())
    }
}

/// The kernel's `st_blocks` of a metacopy file whose data it has not looked up yet: its
/// size rounded up to whole I/O blocks, in 512-byte units.
fn estimated_blocks(meta: &Stat) -> u64 {
    let blk = u64::from(meta.blksize.max(512));
    meta.size.div_ceil(blk) * blk / 512
}

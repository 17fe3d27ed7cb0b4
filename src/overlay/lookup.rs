//! Name resolution across layers, one name at a time.
//!
//! The layers of the parent directory are probed top-down with one `statx` each (plus one for
//! a `.wh.` file where nothing was found). The first non-directory wins; a directory merges
//! with directories below it until an opaque one; a whiteout stops the search. A whole
//! directory is never loaded to answer a lookup.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::redirect::Walk;
use super::{Attr, Error, Overlay, Result};
use crate::inode::{LayerPath, Layers, Location, Node, NodeId, ObjectId, ROOT};
use crate::layer::{Ino, LayerIdx, LayerIno, Probe};
use crate::sys::Object;
use crate::sys::{FileKind, Stat};

/// A name resolved in the merged view.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The object's layers: for a directory its merge chain, else the one layer.
    pub(crate) layers: Layers,
    /// Attributes of the topmost copy.
    pub(crate) top: Stat,
    /// `st_ino` as shown (for a directory, from the bottom of its merge chain, so it stays
    /// the same when the directory is later copied up).
    pub(crate) ino: Ino,
    /// Which object the topmost copy is (for a directory, its bottom copy).
    pub(crate) object: ObjectId,
    /// Where redirects put the directory in layers of `layers` (see [`Location`]).
    pub(crate) redirects: Option<Arc<[(LayerIdx, LayerPath)]>>,
}

impl Resolved {
    pub(crate) fn kind(&self) -> FileKind {
        self.top.kind().unwrap_or(FileKind::Regular)
    }

    /// Where the object was found, as the node table records it.
    pub(crate) fn location(&self, parent: NodeId, name: &OsStr) -> Location {
        Location {
            parent,
            name: name.into(),
            layers: self.layers.clone(),
            object: Some(self.object),
            redirects: self.redirects.clone(),
        }
    }
}

/// The state of a lookup's walk down the layers that a redirect changes: where the layers
/// below are looked in (`target`), which layers (`order`, from `pos`), and whether the
/// walk stops after this layer.
struct Redirected<'a, 'o> {
    target: &'a mut Option<LayerPath>,
    order: &'a mut std::borrow::Cow<'o, [LayerIdx]>,
    pos: &'a mut usize,
    stop_after: &'a mut bool,
}

impl Redirected<'_, '_> {
    /// Follows redirect `r` (if any) found on an object reached at the path `walked` (if
    /// an absolute walk rewrote it): an absolute one continues in every layer of `below`,
    /// from their roots, whatever an opaque directory on the way said.
    fn follow(
        &mut self,
        walked: Option<Vec<std::ffi::OsString>>,
        r: Option<super::redirect::Redirect>,
        below: std::ops::Range<LayerIdx>,
    ) {
        if let Some(w) = walked {
            *self.target = Some(LayerPath::FromRoot(w));
        }
        if let Some(r) = r {
            if matches!(r, super::redirect::Redirect::Absolute(_)) {
                *self.stop_after = false;
                *self.order = std::borrow::Cow::Owned(below.collect());
                *self.pos = 0;
            }
            *self.target = Some(super::redirect::redirected(self.target.as_ref(), r));
        }
    }
}

/// The components of `r` if it is an absolute redirect.
fn absolute_path(r: Option<&super::redirect::Redirect>) -> Option<Vec<std::ffi::OsString>> {
    match r {
        Some(super::redirect::Redirect::Absolute(p)) => Some(p.clone()),
        _ => None,
    }
}

/// Where a path of the merged view comes from, for people inspecting a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// File type.
    pub kind: FileKind,
    /// The layers that provide it, topmost first (several for a merged directory).
    pub layers: Vec<LayerIdx>,
    /// True when the topmost layer's directory is opaque or the merge was cut by a whiteout.
    pub opaque: bool,
}

impl Overlay {
    /// Resolves `name` in directory `dir` (whose merge chain is `chain`), probing the chain
    /// from position `start`; the caller knows the layers above hold neither the name nor a
    /// whiteout for it. A directory found with a redirect is looked for in the layers below
    /// where the redirect says (see the `redirect` module), or refused with
    /// `redirect_dir=nofollow`, as the kernel refuses it.
    pub(crate) fn resolve_in(
        &self,
        dir: &Node,
        chain: &[LayerIdx],
        name: &OsStr,
        start: usize,
    ) -> Result<Option<Resolved>> {
        let mut found: Option<Resolved> = None;
        let mut bottom: Option<LayerIno> = None;
        let mut origin: Option<Ino> = None;
        let follow = self.opts.redirect_dir.follows();
        // The layers to look in, and where: under the name in the parent's copy until a
        // redirect says otherwise; an absolute one continues in every layer below.
        let mut order = std::borrow::Cow::Borrowed(chain.get(start..).unwrap_or_default());
        let mut target: Option<LayerPath> = None;
        let mut redirects: Vec<(LayerIdx, LayerPath)> = Vec::new();
        // A metacopy file was found on top: the layers below are looked in for its data.
        let mut metacopy = false;
        // The last metacopy file on the way is in a lower layer and redirects by absolute
        // path: where its data is in the data-only layers if no layer of the tree has it.
        let mut data_path: Option<Vec<std::ffi::OsString>> = None;
        // Followed only towards a data-only layer (metacopy=off or redirect_dir=nofollow
        // let the kernel follow a lower metacopy file there, and nothing else): anything
        // found in the tree below is refused.
        let mut data_only_follow = false;
        let merged = self.layers.merged_len();
        let mut pos = 0;
        'layers: while let Some(&li) = order.get(pos) {
            pos += 1;
            if target.is_some() && !follow && !data_only_follow {
                return Err(Error::NotPermitted(
                    "a redirected directory is not followed (redirect_dir=nofollow)",
                ));
            }
            let layer = self.layers.get(li).ok_or(Error::StaleNode(dir.id))?;
            // The last layer the kernel would look in: it reads no marker there.
            let last = if follow {
                usize::from(li) + 1 == merged
            } else {
                pos == order.len()
            };
            let mut stop_after = false;
            let mut walked: Option<Vec<std::ffi::OsString>> = None;
            let (dfd, pname): (Arc<OwnedFd>, &OsStr) = match &target {
                None | Some(LayerPath::InParent(_)) => match self.dir_fd(dir, li) {
                    Ok(fd) => (
                        fd,
                        match &target {
                            Some(LayerPath::InParent(n)) => n.as_os_str(),
                            _ => name,
                        },
                    ),
                    Err(e) if e.is_absent() => continue,
                    Err(e) => return Err(e),
                },
                Some(LayerPath::FromRoot(p)) => match self.walk_redirect(layer, p, last)? {
                    Walk::Missing => continue,
                    Walk::Stop => break,
                    Walk::At {
                        dir,
                        stop_after: s,
                        rewritten,
                    } => {
                        stop_after = s;
                        walked = rewritten;
                        (
                            Arc::new(dir),
                            p.last().map(|c| c.as_os_str()).unwrap_or(name),
                        )
                    }
                },
            };
            // An empty file may be an xattr whiteout: its directory's marker is read first
            // (once per cached directory), the file's xattr only in a marked one.
            let probed = match layer.probe(dfd.as_fd(), pname)? {
                Probe::Found(st, _)
                    if crate::layer::may_be_xattr_whiteout(&st)
                        && match target {
                            Some(LayerPath::FromRoot(_)) => {
                                crate::layer::is_xwhiteouts_dir(dfd.as_fd(), layer.xattrs)?
                            }
                            _ => self.xwhiteouts_dir(dir, li, &dfd)?,
                        }
                        && crate::layer::has_whiteout_xattr(dfd.as_fd(), pname, layer.xattrs)? =>
                {
                    Probe::Whiteout
                }
                p => p,
            };
            // The redirect of the object found here (a metacopy file's or a directory's).
            let redirect = 'probed: {
                match probed {
                    Probe::Missing => None,
                    Probe::Whiteout => break 'layers,
                    Probe::Found(..) if data_only_follow => {
                        return Err(Error::NotPermitted(
                            "a metacopy file is followed only into a data-only layer",
                        ));
                    }
                    Probe::Found(st, _) if metacopy => {
                        // Only a regular file below a metacopy file can hold its data; another
                        // metacopy file on the way is passed (its redirect followed).
                        if st.kind() != Some(FileKind::Regular) {
                            break 'layers;
                        }
                        if self.is_metacopy(dfd.as_fd(), pname, &st, layer, || Ok(true))? {
                            let redirect = self.metacopy_redirect(dfd.as_fd(), pname, layer)?;
                            data_path = absolute_path(redirect.as_ref());
                            break 'probed redirect;
                        }
                        metacopy = false;
                        if let Some(r) = &mut found {
                            r.layers.push(li);
                            r.top.blocks = st.blocks;
                            if let Some(t) = &target {
                                redirects.push((li, t.clone()));
                            }
                            if layer.upper || self.layers.get(r.layers[0]).is_some_and(|l| l.upper)
                            {
                                bottom = Some(LayerIno::new(li, st.ino));
                            }
                        }
                        break 'layers;
                    }
                    Probe::Found(st, born) => {
                        let is_dir = st.is_dir();
                        let obj = LayerIno::new(li, st.ino);
                        match &mut found {
                            None => {
                                found = Some(Resolved {
                                    layers: smallvec::smallvec![li],
                                    top: self.overridden(st, Object::At(dfd.as_fd(), pname)),
                                    ino: Ino::ROOT,
                                    object: ObjectId::new(obj, born),
                                    redirects: None,
                                });
                                if !is_dir {
                                    bottom = Some(obj);
                                    if layer.upper {
                                        origin = self.origin_ino(dfd.as_fd(), pname);
                                        if self.indexes() && st.nlink > 1 {
                                            if origin.is_none() {
                                                origin = self.kernel_origin_ino(dfd.as_fd(), pname);
                                            }
                                            if let Some(r) = found.as_mut() {
                                                r.top.nlink = self.indexed_nlink(
                                                    Object::At(dfd.as_fd(), pname),
                                                    &r.top,
                                                );
                                            }
                                        }
                                    }
                                    let impure = || match target {
                                        Some(LayerPath::FromRoot(_)) => Ok(
                                            crate::layer::is_impure_dir(dfd.as_fd(), layer.xattrs)?,
                                        ),
                                        _ => self.impure_dir(dir, li, &dfd),
                                    };
                                    if self.is_metacopy(dfd.as_fd(), pname, &st, layer, impure)? {
                                        metacopy = true;
                                        let redirect =
                                            self.metacopy_redirect(dfd.as_fd(), pname, layer)?;
                                        if !layer.upper {
                                            data_path = absolute_path(redirect.as_ref());
                                        }
                                        // Its data is below (the kernel refuses to follow it
                                        // without metacopy=on, but for a lower file's redirect
                                        // into a data-only layer).
                                        if !self.opts.metacopy {
                                            if data_path.is_none()
                                                || self.layers.data_only().is_empty()
                                            {
                                                return Err(Error::NotPermitted(
                                                "a metacopy file is not followed (metacopy=off)",
                                            ));
                                            }
                                            data_only_follow = true;
                                        }
                                        break 'probed redirect;
                                    }
                                    if !layer.upper && self.needs_index(&st) {
                                        // Another name of it may have been copied up.
                                        if let Some(e) =
                                            self.index_entry(dfd.as_fd(), pname, li, st.kind())?
                                        {
                                            // A metacopy entry's data is this lower file.
                                            let mut layers: Layers =
                                                smallvec::smallvec![crate::layer::INDEX_LAYER];
                                            if e.metacopy {
                                                layers.push(li);
                                            }
                                            found = Some(Resolved {
                                                layers,
                                                object: Overlay::index_object(&e),
                                                redirects: Some(Overlay::index_placement(&e)),
                                                top: e.st,
                                                ino: Ino::ROOT,
                                            });
                                        }
                                    }
                                    break 'layers;
                                }
                            }
                            Some(r) => {
                                if !is_dir {
                                    // A non-directory below a directory is hidden by it.
                                    break 'layers;
                                }
                                r.layers.push(li);
                                if let Some(t) = &target {
                                    redirects.push((li, t.clone()));
                                }
                                // A directory is the object of its bottom copy (its number).
                                r.object = ObjectId::new(obj, born);
                            }
                        }
                        bottom = Some(obj);
                        if last {
                            break 'layers;
                        }
                        let more = pos < order.len();
                        let (opaque, redirect) = layer.dir_markers(dfd.as_fd(), pname, more)?;
                        if opaque
                            || (more && crate::layer::dot_whiteout_exists(dfd.as_fd(), pname)?)
                        {
                            break 'layers;
                        }
                        match redirect {
                            Some(v) => Some(super::redirect::parse(&v)?),
                            None => None,
                        }
                    }
                }
            };
            // Where the next layer is looked in: at the walked path, then where a redirect
            // of the object found here says.
            let mut at = Redirected {
                target: &mut target,
                order: &mut order,
                pos: &mut pos,
                stop_after: &mut stop_after,
            };
            at.follow(walked, redirect, li + 1..merged as LayerIdx);
            if stop_after {
                break;
            }
        }
        if metacopy {
            // No layer of the tree has the data: a data-only layer may, where the last
            // metacopy file's absolute redirect says.
            let (Some(path), Some(r)) = (data_path, found.as_mut()) else {
                return Err(Error::NoLowerData);
            };
            if self.layers.data_only().is_empty() {
                return Err(Error::NoLowerData);
            }
            let (li, blocks) = self.find_data(&path, &r.top)?;
            r.layers.push(li);
            r.top.blocks = blocks;
            redirects.push((li, LayerPath::FromRoot(path)));
        }
        Ok(found.map(|mut r| {
            if let Some(ino) = origin {
                r.ino = ino;
            } else if let Some(obj) = bottom {
                r.ino = if r.top.is_dir() {
                    self.layers.shown_ino(obj)
                } else {
                    self.nondir_ino(obj, r.top.nlink, dir.id, name)
                };
            }
            if !redirects.is_empty() {
                r.redirects = Some(redirects.into());
            }
            r
        }))
    }

    /// `st_ino` of non-directory `obj` (with `nlink` links) found as `name` in `dir`.
    ///
    /// In a writable union each name of a lower hard link is its own object (a copy-up breaks
    /// the link, as the kernel's overlayfs does without `index`), so it cannot share a FUSE
    /// node with the other names: its number is derived from the inode, the directory and
    /// the name, the same in lookups and listings and across remounts.
    pub(crate) fn nondir_ino(&self, obj: LayerIno, nlink: u32, dir: NodeId, name: &OsStr) -> Ino {
        let Some(layer) = self.layers.get(obj.layer) else {
            return self.layers.shown_ino(obj);
        };
        if nlink > 1 && !layer.upper && self.splits_lower_links() {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            let bytes = obj
                .ino
                .to_le_bytes()
                .into_iter()
                .chain(dir.get().to_le_bytes())
                .chain(std::os::unix::ffi::OsStrExt::as_bytes(name).iter().copied());
            for b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            // A number standing for this name's own inode (see above).
            self.layers.ino.compose(layer.fs_index, h | (1 << 63))
        } else {
            self.layers.shown_ino(obj)
        }
    }

    /// Looks `name` up in directory `parent`, counting one kernel reference on the result.
    pub fn lookup(&self, parent: NodeId, name: &OsStr) -> Result<Attr> {
        Overlay::check_name(name)?;
        let dir = self.node(parent)?;
        if dir.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        let Some(seen) = dir.quiet_version() else {
            return self.lookup_in(&dir, name, None);
        };
        if self.negative.is_missing(dir.id, seen, name) {
            return Err(Error::NotFound);
        }
        let r = self.lookup_in(&dir, name, None);
        // Missing, and no change in the directory meanwhile: missing at that version.
        if matches!(r, Err(Error::NotFound)) && dir.dir_version() == seen {
            self.negative.remember_missing(dir.id, seen, name);
        }
        r
    }

    /// Looks up an entry of `listing` of `parent` (readdirplus), starting at the layer the
    /// listing found it in rather than probing the layers above again, as long as the
    /// listing is still current; otherwise (a copy-up or another change landed since) from
    /// the top, as a lookup does.
    pub fn lookup_entry(
        &self,
        parent: NodeId,
        listing: &super::Listing,
        entry: &super::DirEntry,
    ) -> Result<Attr> {
        let dir = self.node(parent)?;
        self.lookup_in(&dir, &entry.name, Some((listing.version, entry.from)))
    }

    /// Resolves `name` in `dir` and records it with the node table, unless a change in the
    /// directory raced with the resolution: the kernel revalidates cached names with
    /// lookups it does not serialise with renames, and a resolution of a name that a rename
    /// then moved must not put the node back under its old name. Such a resolution is
    /// retaken; after a few tries, under the directory's lock. `hint` is a listing's version
    /// and the position in the merge chain where it found the name.
    fn lookup_in(&self, dir: &Node, name: &OsStr, hint: Option<(u64, usize)>) -> Result<Attr> {
        for _ in 0..3 {
            let Some(seen) = dir.quiet_version() else {
                break;
            };
            let start = match hint {
                Some((version, from)) if version == seen => from,
                _ => 0,
            };
            let chain = dir.with_location(|l| l.layers.clone());
            let r = self
                .resolve_in(dir, &chain, name, start)?
                .ok_or(Error::NotFound)?;
            #[cfg(test)]
            tests::BETWEEN.with(crate::test_hook::Hook::fire);
            let loc = r.location(dir.id, name);
            if let Ok(node) = self
                .nodes
                .remember_if(r.ino, r.kind(), loc, || dir.dir_version() == seen)
            {
                return Ok(self.attr_for(&node, &r));
            }
        }
        let _held = dir.hold_dir();
        let chain = dir.with_location(|l| l.layers.clone());
        let r = self
            .resolve_in(dir, &chain, name, 0)?
            .ok_or(Error::NotFound)?;
        Ok(self.remember(dir.id, name, &r))
    }

    /// Registers a resolved child with the node table and returns its attributes.
    pub(crate) fn remember(&self, parent: NodeId, name: &OsStr, r: &Resolved) -> Attr {
        let node = self
            .nodes
            .remember(r.ino, r.kind(), r.location(parent, name));
        self.attr_for(&node, r)
    }

    /// The attributes of `r`, recorded as `node`.
    fn attr_for(&self, node: &Node, r: &Resolved) -> Attr {
        let ino = self.shown_ino(node.id, r.layers.first().copied(), &r.top);
        self.attr_from(node.id, ino, &r.top, r.layers.len() > 1)
    }

    /// The `st_ino` shown for node `node`, whose object is found in layer `layer` with
    /// `st`: the node id, except for a lower hard link in a writable union. Each of its names
    /// is its own node (a copy-up of one name must not change the others), but until it is
    /// copied up every name reports the lower file's number, as the kernel's overlayfs does
    /// without `index`, so tools that find links by `st_ino` and `st_nlink` see one file.
    pub(crate) fn shown_ino(&self, node: NodeId, layer: Option<LayerIdx>, st: &Stat) -> Ino {
        self.lower_link_ino(layer, st).unwrap_or(node.shown())
    }

    /// The lower file's number, which every name of a lower hard link in a writable union
    /// shows (see [`Overlay::shown_ino`]), when `st` (found in `layer`) is one.
    pub(crate) fn lower_link_ino(&self, layer: Option<LayerIdx>, st: &Stat) -> Option<Ino> {
        let li = layer?;
        let l = self.layers.get(li)?;
        (st.nlink > 1
            && !l.upper
            && st.kind() != Some(FileKind::Directory)
            && self.splits_lower_links())
        .then(|| self.layers.shown_ino(LayerIno::new(li, st.ino)))
    }

    /// Drops `n` kernel references to node `id`.
    pub fn forget(&self, id: NodeId, n: u64) {
        if self.nodes.forget(id, n) {
            self.dirfds.drop_node(id, self.layers.len());
            self.listings.remove(id);
            self.unwatch_dir(id);
        }
    }

    /// The attributes of node `ino`, read from its topmost copy now.
    ///
    /// A non-directory is stat'ed at its recorded name; what is found there must be the
    /// node's object (see [`Overlay::is_its_object`]): a rename that moved the object while
    /// the request was on its way leaves a whiteout or another object at the name, whose
    /// attributes (a character device) would make the kernel take the inode for bad (EIO).
    /// A dead node whose object was kept is stat'ed through it.
    pub fn getattr(&self, id: NodeId) -> Result<Attr> {
        let node = match self.reach(id)? {
            super::Reach::Kept(node, fd) => return self.kept_attr(&node, &fd),
            super::Reach::Named(node) => node,
        };
        // One snapshot: a rename moves parent, name and layers together.
        let loc = node.location();
        let top = loc.top().ok_or(Error::StaleNode(id))?;
        let st = if node.kind == FileKind::Directory {
            let fd = self.dir_fd(&node, top)?;
            self.overridden(crate::sys::stat_fd(fd.as_fd())?, Object::Fd(fd.as_fd()))
        } else {
            let parent = self.node(loc.parent)?;
            let pfd = self.dir_fd(&parent, top)?;
            let seen = parent.quiet_version();
            let found = crate::sys::stat_at_born(pfd.as_fd(), loc.top_name()).map_err(Error::from);
            // Removed meanwhile: the name may hold a whiteout or another object by now.
            if let Some(fd) = self.nodes.kept(&node) {
                return self.kept_attr(&node, &fd);
            }
            let (raw, born) = self.still_named(&node, found)?;
            let mut st = self.overridden(raw, Object::At(pfd.as_fd(), loc.top_name()));
            if loc.upper_side() {
                st.nlink = self.indexed_nlink(Object::At(pfd.as_fd(), loc.top_name()), &st);
            }
            if !self.is_its_object(&node, &loc, &raw, born, st.kind()) {
                return match self.nodes.kept(&node) {
                    Some(fd) => self.kept_attr(&node, &fd),
                    None => Err(self.not_its_object(&node)),
                };
            }
            if Overlay::is_metacopy_loc(node.kind, &loc) {
                // The blocks are the data's, as the kernel reports them.
                st.blocks = self.data_blocks(&node, &loc, &st)?;
            }
            if loc.object.is_none() && seen.is_some_and(|v| parent.dir_version() == v) {
                // Not known since a copy-up, and no change in the directory meanwhile.
                let object = ObjectId::new(LayerIno::new(top, raw.ino), born);
                self.nodes.learn_object(id, &loc, object);
            }
            st
        };
        let ino = self.shown_ino(node.id, loc.top(), &st);
        Ok(self.attr_from(node.id, ino, &st, loc.layers.len() > 1))
    }

    /// Resolves a `/`-separated path of the merged view (relative to its root) and tells
    /// which layers provide it. Each step is a lookup that is forgotten again at the end.
    pub fn provenance(&self, path: &OsStr) -> Result<Provenance> {
        let mut taken: Vec<NodeId> = Vec::new();
        let out = self.provenance_walk(path, &mut taken);
        for id in taken {
            self.forget(id, 1);
        }
        out
    }

    fn provenance_walk(&self, path: &OsStr, taken: &mut Vec<NodeId>) -> Result<Provenance> {
        let mut cur = ROOT;
        for comp in std::path::Path::new(path).components() {
            let name = match comp {
                std::path::Component::Normal(n) => n,
                std::path::Component::RootDir | std::path::Component::CurDir => continue,
                _ => return Err(Error::NotFound),
            };
            let attr = self.lookup(cur, name)?;
            taken.push(attr.node);
            cur = attr.node;
        }
        let node = self.node(cur)?;
        let layers = node.with_location(|l| l.layers.clone());
        let opaque = match layers.last() {
            Some(&last) if node.kind == FileKind::Directory && cur != ROOT => {
                let parent = self.node(node.parent())?;
                let pfd = self.dir_fd(&parent, last)?;
                let layer = self.layers.get(last).ok_or(Error::StaleNode(cur))?;
                let name = node.with_location(|l| l.name.clone());
                usize::from(last) + 1 < self.layers.merged_len()
                    && layer.is_opaque(pfd.as_fd(), &name)?
            }
            _ => false,
        };
        Ok(Provenance {
            kind: node.kind,
            layers: layers.to_vec(),
            opaque,
        })
    }
}

impl Overlay {
    /// The parent of node `id` (the root for the root, or for a node no longer known).
    pub fn parent_of(&self, id: NodeId) -> NodeId {
        self.nodes.get(id).map(|n| n.parent()).unwrap_or(ROOT)
    }
}

impl Overlay {
    /// The attributes of node `id` read from an open fd on it (which works after an unlink).
    pub fn attr_of_fd(&self, id: NodeId, fd: std::os::fd::BorrowedFd<'_>) -> Result<Attr> {
        let node = self.node(id)?;
        if !node.is_dead() && node.with_location(|l| Overlay::is_metacopy_loc(node.kind, l)) {
            // A handle on a metacopy file reads its data: the attributes are the node's.
            if let Ok(a) = self.getattr(id) {
                return Ok(a);
            }
        }
        let mut st = self.overridden(crate::sys::stat_fd(fd)?, Object::Fd(fd));
        let (merged, top, upper) =
            node.with_location(|l| (l.layers.len() > 1, l.top(), l.upper_side()));
        if upper {
            st.nlink = self.indexed_nlink(Object::Fd(fd), &st);
        }
        let ino = self.shown_ino(node.id, top, &st);
        Ok(self.attr_from(node.id, ino, &st, merged))
    }
}

impl Overlay {
    /// True when node `id` now lives in the upper layer (a metacopy file's data too).
    pub fn is_copied_up(&self, id: NodeId) -> bool {
        self.nodes
            .get(id)
            .map(|n| {
                n.with_location(|l| l.top() == Some(0) && !Overlay::is_metacopy_loc(n.kind, l))
                    && self.layers.upper().is_some()
            })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::super::{Error, RenameFlag};
    use crate::inode::ROOT;
    use crate::test_hook::Hook;

    thread_local! {
        /// Run once by this thread's next lookup, between its resolution and its record.
        pub(super) static BETWEEN: Hook = Hook::default();
    }

    /// A lookup of a name that a rename moves while it is resolved (the kernel revalidates
    /// cached names without the directory's lock) must not record the old name on the node:
    /// it used to, and the node's next request by id went to a name that no longer held it.
    #[test]
    fn lookup_overtaken_by_a_rename_keeps_the_new_name() {
        let (_t, ov) = super::super::scratch_overlay(|_, u| {
            std::fs::write(u.join("a"), "data").unwrap();
        });
        let ov = std::sync::Arc::new(ov);
        let a = ov.lookup(ROOT, OsStr::new("a")).unwrap();
        let mover = std::sync::Arc::clone(&ov);
        BETWEEN.with(|b| {
            b.arm(move || {
                mover
                    .rename(
                        ROOT,
                        OsStr::new("a"),
                        ROOT,
                        OsStr::new("b"),
                        RenameFlag::Plain,
                    )
                    .unwrap();
            })
        });
        // Resolved before the rename, recorded after it: retaken, and "a" is gone.
        let again = ov.lookup(ROOT, OsStr::new("a"));
        assert!(again.is_err(), "{again:?}");
        let node = ov.nodes.get(a.node).unwrap();
        assert_eq!(node.location().name, "b");
        assert_eq!(ov.getattr(a.node).unwrap().size, 4);
    }

    /// A name found missing is remembered for that version of its directory only: each way
    /// a name can appear through the mount (create, rename into the directory, link, a
    /// change in a directory copied up meanwhile) moves the version on.
    #[test]
    fn missing_names_are_remembered_until_the_directory_changes() {
        let (t, ov) = super::super::scratch_overlay(|l, _| {
            std::fs::write(l.join("src"), "x").unwrap();
            std::fs::create_dir(l.join("d")).unwrap();
        });
        let upper = t.path().join("u");
        let caller = super::super::Caller {
            uid: 0,
            gid: 0,
            umask: 0,
        };
        let missing = |dir, name| matches!(ov.lookup(dir, OsStr::new(name)), Err(Error::NotFound));
        assert!(missing(ROOT, "n"));
        // Remembered: a file put in the upper layer behind the mount's back is not seen
        // (changes to the layers of a mounted overlay are undefined, as for the kernel's).
        std::fs::write(upper.join("n"), "behind").unwrap();
        assert!(missing(ROOT, "n"));
        std::fs::remove_file(upper.join("n")).unwrap();
        // Created through the mount.
        let file = || super::super::NewObject::File {
            flags: libc::O_RDWR,
        };
        ov.create(ROOT, OsStr::new("n"), file(), 0o644, caller)
            .unwrap();
        assert!(!missing(ROOT, "n"));
        // Renamed into the directory.
        assert!(missing(ROOT, "m"));
        let d = ov.lookup(ROOT, OsStr::new("d")).unwrap().node;
        ov.create(d, OsStr::new("x"), file(), 0o644, caller)
            .unwrap();
        ov.rename(d, OsStr::new("x"), ROOT, OsStr::new("m"), RenameFlag::Plain)
            .unwrap();
        assert!(!missing(ROOT, "m"));
        // Linked into it.
        assert!(missing(ROOT, "l"));
        let src = ov.lookup(ROOT, OsStr::new("src")).unwrap().node;
        ov.link(src, ROOT, OsStr::new("l")).unwrap();
        assert!(!missing(ROOT, "l"));
    }

    /// Issue 14 item 10: a rename moved a node's object while a request was on its way, and
    /// left a whiteout at its recorded name (here put there directly). A stat used to
    /// report the whiteout's attributes (a character device: the kernel then marks the
    /// inode bad, EIO) and an open opened it (ENXIO). Neither is the node's object: ESTALE,
    /// and the kernel walks the path again.
    #[test]
    fn whiteout_at_a_live_nodes_name_is_never_served() {
        let (t, ov) = super::super::scratch_overlay(|_, u| {
            std::fs::write(u.join("a"), "data").unwrap();
            std::fs::write(u.join("b"), "other").unwrap();
            std::os::unix::fs::symlink("mine", u.join("s")).unwrap();
        });
        let a = ov.lookup(ROOT, OsStr::new("a")).unwrap();
        let b = ov.lookup(ROOT, OsStr::new("b")).unwrap();
        let s = ov.lookup(ROOT, OsStr::new("s")).unwrap();
        assert_eq!(ov.readlink(s.node).unwrap(), b"mine");
        let u = t.path().join("u");
        std::fs::remove_file(u.join("a")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            u.join("a"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        let errno = |r: super::Result<()>| r.map_err(|e| e.errno());
        assert_eq!(errno(ov.getattr(a.node).map(|_| ())), Err(libc::ESTALE));
        assert_eq!(
            errno(ov.open(a.node, libc::O_RDONLY).map(|_| ())),
            Err(libc::ESTALE)
        );
        // Another object at the name (replaced behind the mount) is not the node's either.
        std::fs::remove_file(u.join("b")).unwrap();
        std::fs::write(u.join("b.new"), "intruder").unwrap();
        std::fs::rename(u.join("b.new"), u.join("b")).unwrap();
        assert_eq!(errno(ov.getattr(b.node).map(|_| ())), Err(libc::ESTALE));
        assert_eq!(
            errno(ov.open(b.node, libc::O_RDONLY).map(|_| ())),
            Err(libc::ESTALE)
        );
        // Nor is another symlink's target the node's.
        std::fs::remove_file(u.join("s")).unwrap();
        std::os::unix::fs::symlink("someone else's", u.join("s2")).unwrap();
        std::fs::rename(u.join("s2"), u.join("s")).unwrap();
        assert_eq!(errno(ov.readlink(s.node).map(|_| ())), Err(libc::ESTALE));
    }

    /// An open for writing reaches its file by its path: one that found another object
    /// there (a rename over the name landing during the open; here a replacement behind
    /// the mount) used to open it, and a truncating open truncated that other file before
    /// anything was checked. Now nothing is truncated until the opened file is known to be
    /// the node's, and the answer is ESTALE.
    #[test]
    fn truncating_open_never_truncates_another_object() {
        let (t, ov) = super::super::scratch_overlay(|_, u| {
            std::fs::write(u.join("b"), "mine").unwrap();
        });
        let b = ov.lookup(ROOT, OsStr::new("b")).unwrap();
        let u = t.path().join("u");
        std::fs::write(u.join("b.new"), "someone else's").unwrap();
        std::fs::rename(u.join("b.new"), u.join("b")).unwrap();
        let r = ov.open(b.node, libc::O_WRONLY | libc::O_TRUNC);
        assert_eq!(r.map(|_| ()).map_err(|e| e.errno()), Err(libc::ESTALE));
        assert_eq!(std::fs::read(u.join("b")).unwrap(), b"someone else's");
    }

    /// A live node whose recorded name no longer holds its object (what the kernel holds
    /// for it is out of date) answers by-name requests with ESTALE, not ENOENT: the kernel
    /// then walks the path again, and the lookup records where the object is now. A node
    /// whose object was removed through the mount is served from the object kept at the
    /// removal (no links left); one whose object is gone unkept (retired), and whose name
    /// holds nothing, answers ENOENT.
    #[test]
    fn stale_location_answers_estale_and_a_lookup_heals_it() {
        let (_t, ov) = super::super::scratch_overlay(|_, u| {
            std::fs::write(u.join("a"), "data").unwrap();
        });
        let a = ov.lookup(ROOT, OsStr::new("a")).unwrap();
        // The node is told of a move that did not happen.
        ov.nodes
            .relocate(a.node, (ROOT, OsStr::new("a")), ROOT, "elsewhere".into());
        fn errno<T>(r: super::Result<T>) -> Result<(), i32> {
            r.map(|_| ()).map_err(|e| e.errno())
        }
        assert_eq!(errno(ov.getattr(a.node)), Err(libc::ESTALE));
        assert_eq!(errno(ov.open(a.node, libc::O_RDONLY)), Err(libc::ESTALE));
        assert_eq!(ov.lookup(ROOT, OsStr::new("a")).unwrap().ino, a.ino);
        assert_eq!(ov.getattr(a.node).unwrap().size, 4);
        ov.unlink(ROOT, OsStr::new("a")).unwrap();
        let gone = ov.getattr(a.node).unwrap();
        assert_eq!((gone.size, gone.nlink), (4, 0));
        let mut s = String::new();
        std::io::Read::read_to_string(
            &mut std::fs::File::from(ov.open(a.node, libc::O_RDONLY).unwrap().fd),
            &mut s,
        )
        .unwrap();
        assert_eq!(s, "data");
        // Without the kept object (dropped by a revival), a retired node is gone.
        ov.nodes.revive(a.node);
        ov.retire(a.node);
        assert_eq!(errno(ov.getattr(a.node)), Err(libc::ENOENT));
    }
}

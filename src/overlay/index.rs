//! The inodes index (`index=on`), in the kernel's overlayfs format.
//!
//! A lower non-directory with several links is copied up into `WORKDIR/index`, under the
//! hex of its `overlay.origin` file handle (`struct ovl_fb`), and its upper name is a hard
//! link to that entry. Every other name of the lower file then finds the entry by the
//! lower object's handle, so all names stay one file. The link count shown is kept in
//! `overlay.nlink` on the upper inode, relative to its own (`U+N`): the upper inode's
//! count counts the index entry and the names linked up, the lower names not yet linked
//! up are the `N`. An upper link or unlink changes both counts alike, so only a copy-up
//! into the index and a link-up of another name write it.
//!
//! At mount, the upper root's `overlay.origin` must be the first lower root's handle, and
//! the index directory's `overlay.upper` the upper root's: an upper used with other lower
//! layers is refused, in the kernel's words.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::{Error, Overlay, Result};
use crate::inode::LayerPath;
use crate::layer::format::{self, IndexNlink};
use crate::layer::{LayerIdx, LayerIno, INDEX_LAYER};
use crate::sys::{self, FileKind, Object, Stat};

/// The index directory's name in the work directory given.
const INDEX_DIR: &str = "index";

/// The kernel's advice when the index does not belong with the layers.
const ADVICE: &str =
    "try deleting index dir or mounting with '-o index=off' to disable inodes index";

/// The open inodes index of a mount.
#[derive(Debug)]
pub(crate) struct Index {
    /// `WORKDIR/index`.
    dir: Arc<OwnedFd>,
    /// The uuid of each layer's filesystem, by layer index (recorded in handles).
    uuids: Vec<[u8; 16]>,
    /// Each layer's root opened for reading (`open_by_handle_at` takes no `O_PATH` fd for
    /// the filesystem), by layer index.
    roots: Vec<OwnedFd>,
}

/// How the upper file of an indexed lower hard link is found.
#[derive(Debug, Clone)]
pub(crate) struct IndexEntry {
    /// Its name in the index directory.
    pub(crate) name: OsString,
    /// Its attributes, the link count as shown.
    pub(crate) st: Stat,
    /// Its birth time.
    pub(crate) born: u64,
    /// It is a metacopy file (a kernel copy-up with `metacopy=on`): its data is the lower
    /// file's.
    pub(crate) metacopy: bool,
}

impl Overlay {
    /// Turns the inodes index on, as the kernel's `index=on` mounts it: checks (or records,
    /// on a first mount) that the upper root's origin is the first lower root and that the
    /// index directory belongs to this upper root, then clears what a crash or the last
    /// unlinks left in the index. Without an upper layer (or mounted `ro`) the option does
    /// nothing, as the kernel ignores it. The error is one line for the mount's refusal.
    pub fn enable_index(&mut self) -> std::result::Result<(), String> {
        if self.opts.read_only {
            return Ok(());
        }
        let (Some(upper), Some(work), Some(lower)) =
            (self.layers.upper(), self.layers.work(), self.layers.get(1))
        else {
            return Ok(());
        };
        let io = |what: &str, e: std::io::Error| {
            format!("index: {what}: {}", crate::config::os_error_text(&e))
        };
        let mut uuids = Vec::with_capacity(self.layers.len());
        let mut roots = Vec::with_capacity(self.layers.len());
        for l in self.layers.all() {
            uuids.push(sys::fs_uuid(l.root()).map_err(|e| io("filesystem uuid", e))?);
            roots.push(
                sys::reopen(
                    l.root(),
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                )
                .map_err(|e| io("layer root", e))?,
            );
        }
        // As the kernel's `ovl_get_fsid`: lower filesystems whose handles could be taken
        // for each other's turn the index off.
        let lowers = (1..self.layers.merged_len()).filter_map(|li| {
            let l = self.layers.get(LayerIdx::try_from(li).ok()?)?;
            Some((l.dev, uuids[li]))
        });
        if let Some((l, uuid)) = bad_uuid_layer(upper.dev, lowers)
            .and_then(|i| Some((self.layers.all().get(i + 1)?, uuids.get(i + 1)?)))
        {
            tracing::warn!(
                "{} uuid detected in lower fs '{}', falling back to index=off",
                if *uuid == [0; 16] {
                    "null"
                } else {
                    "conflicting"
                },
                crate::config::one_line(&l.path.display().to_string())
            );
            return Ok(());
        }
        let handle = |fd: BorrowedFd<'_>, li: usize, upper: bool| {
            let h = sys::file_handle_at(fd, OsStr::new(""))
                .map_err(|e| io("file handle of a layer root", e))?;
            format::origin_handle(&uuids[li], h.kind, &h.bytes, upper)
                .ok_or_else(|| "index: a layer root's file handle is too long".to_string())
        };
        let xattrs = self.layers.xattrs();
        let lower_root = handle(lower.root(), 1, false)?;
        let verify = |fd: BorrowedFd<'_>, key: &OsStr, want: &[u8], set: bool, what: &str| {
            match sys::get_xattr(fd, key).map_err(|e| io(what, e))? {
                Some(v) if v == want => Ok(()),
                Some(_) => Err(format!("failed to verify {what}: {ADVICE}")),
                None if set => sys::set_xattr(fd, key, want, 0).map_err(|e| io(what, e)),
                None => Ok(()),
            }
        };
        verify(
            upper.root(),
            xattrs.origin(),
            &lower_root,
            true,
            "upper root origin",
        )?;
        let base = work.base();
        let name = OsStr::new(INDEX_DIR);
        if let Ok(st) = sys::stat_at(base, name) {
            if !st.is_dir() {
                sys::unlink_at(base, name, false).map_err(|e| io("index dir", e))?;
            }
        }
        match sys::mkdir_at(base, name, if sys::euid() == 0 { 0 } else { 0o700 }) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(io("index dir", e)),
        }
        let dir = sys::open_dir_path(base, INDEX_DIR.as_bytes()).map_err(|e| io("index dir", e))?;
        let upper_root = handle(upper.root(), 0, true)?;
        // Older kernels recorded the upper root as the index directory's origin.
        verify(
            dir.as_fd(),
            xattrs.origin(),
            &upper_root,
            false,
            "index dir 'upper' xattr",
        )?;
        verify(
            dir.as_fd(),
            xattrs.upper(),
            &upper_root,
            true,
            "index dir 'upper' xattr",
        )?;
        self.index = Some(Index {
            dir: Arc::new(dir),
            uuids,
            roots,
        });
        self.clean_index().map_err(|e| io("index dir", e))
    }

    /// Removes what a crash left in the index (staging names, which start with `#`) and
    /// orphans: entries of files no name of which is left (only the index links the inode,
    /// and its `overlay.nlink` counts no lower name), as the kernel does at mount; and
    /// stale entries, as it does too: one whose `overlay.origin` is not its name, or, with
    /// no upper name, whose lower file is gone ([`Origin::Gone`]; not one that could not be
    /// opened for another reason, whose data the lower names may still read). Whiteouts,
    /// directories and entries the kernel cannot verify (a name of no handle, no origin: it
    /// refuses the mount) are left as they are.
    fn clean_index(&self) -> std::io::Result<()> {
        let Some(index) = &self.index else {
            return Ok(());
        };
        let dir = index.dir.as_fd();
        let origin_key = self.layers.xattrs().origin();
        for e in sys::list_dir(dir)? {
            if e.name.as_encoded_bytes().starts_with(b"#") {
                sys::remove_tree(dir, &e.name)?;
                continue;
            }
            let Ok(st) = sys::stat_at(dir, &e.name) else {
                continue;
            };
            if st.is_dir() || format::is_whiteout_stat(&st) {
                continue;
            }
            let entry = Object::At(dir, &e.name);
            let (Some(fh), Some(origin)) = (
                format::index_name_handle(&e.name),
                entry.get_xattr(origin_key).ok().flatten(),
            ) else {
                continue;
            };
            // Gone, or of another type than the entry (the kernel's "invalid origin"); an
            // origin not found for another reason (`open_by_handle_at` refused) is no sign.
            let stale = origin != fh
                || (st.nlink == 1
                    && match self.origin_object(entry) {
                        Origin::Gone => true,
                        Origin::Found(_, o) => o.kind() != st.kind(),
                        Origin::Unknown => false,
                    });
            if stale || (st.nlink == 1 && self.is_orphan(entry, &st)) {
                tracing::debug!(name = ?e.name, stale, "index entry removed");
                sys::unlink_at(dir, &e.name, false)?;
            }
        }
        Ok(())
    }

    /// The index entry of upper non-directory `name` in `dir`, if it is an indexed file:
    /// the entry named after its `overlay.origin` is the same inode.
    pub(crate) fn entry_of_upper(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<OsString> {
        let index = self.index.as_ref()?;
        let origin = sys::get_xattr_at(dir, name, self.layers.xattrs().origin()).ok()??;
        let iname = format::index_name(&origin);
        let (a, b) = (
            sys::stat_at(dir, name).ok()?,
            sys::stat_at(index.dir.as_fd(), &iname).ok()?,
        );
        (a.dev == b.dev && a.ino == b.ino).then_some(iname)
    }

    /// Removes index entry `iname` when no name of its file is left, as the kernel's last
    /// unlink does (`ovl_cleanup_index`).
    pub(crate) fn drop_entry_if_orphan(&self, iname: &OsStr) {
        let Some(index) = &self.index else {
            return;
        };
        let dir = index.dir.as_fd();
        let Ok(st) = sys::stat_at(dir, iname) else {
            return;
        };
        if st.nlink == 1 && self.is_orphan(Object::At(dir, iname), &st) {
            if let Err(e) = sys::unlink_at(dir, iname, false) {
                tracing::warn!(name = ?iname, error = %e, "orphan index entry not removed");
            }
        }
    }

    /// True when index entry `entry` (attributes `st`) is an orphan: its `overlay.nlink`
    /// counts no name (the kernel's `ovl_get_nlink` giving 0).
    fn is_orphan(&self, entry: Object<'_>, st: &Stat) -> bool {
        matches!(self.recorded_nlink(entry, st), Some(None))
    }

    /// The link count the `overlay.nlink` of indexed file `obj` (attributes `st`) gives,
    /// `None` inside when it counts no name; `None` without a usable value (none, or one
    /// relative to a lower file that is not found).
    fn recorded_nlink(&self, obj: Object<'_>, st: &Stat) -> Option<Option<u32>> {
        let v = obj.get_xattr(self.layers.xattrs().nlink()).ok().flatten()?;
        let n = IndexNlink::parse(&v)?;
        // Relative to the lower file (left by a link-up cut short): its count is read.
        let lower = match n {
            IndexNlink::Lower(_) => Some(self.origin_object(obj).found()?.1.nlink),
            IndexNlink::Upper(_) => None,
        };
        Some(n.shown(st.nlink, lower))
    }

    /// True when lower hard links are copied up through the index.
    pub(crate) fn indexes(&self) -> bool {
        self.index.is_some()
    }

    /// The index directory's fd.
    pub(crate) fn index_dir(&self) -> Result<Arc<OwnedFd>> {
        self.index
            .as_ref()
            .map(|i| Arc::clone(&i.dir))
            .ok_or(Error::StaleNode(crate::inode::ROOT))
    }

    /// The `overlay.origin` (`struct ovl_fb`) of object `name` in `dir` of layer `layer`.
    pub(crate) fn origin_of(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        layer: LayerIdx,
    ) -> Result<Vec<u8>> {
        let index = self.index.as_ref().ok_or(Error::Invalid("no index"))?;
        let uuid = index
            .uuids
            .get(usize::from(layer))
            .ok_or(Error::StaleNode(crate::inode::ROOT))?;
        let h = sys::file_handle_at(dir, name)?;
        format::origin_handle(uuid, h.kind, &h.bytes, false)
            .ok_or(Error::Invalid("a file handle too long for overlay.origin"))
    }

    /// True when lower non-directory `st` is copied up through the index (the kernel's
    /// `ovl_need_index`: a lower file with other links).
    pub(crate) fn needs_index(&self, st: &Stat) -> bool {
        self.indexes() && st.nlink > 1 && st.kind() != Some(FileKind::Directory)
    }

    /// The index entry of lower object `name` in `dir` (of layer `layer`), with `kind`, if
    /// one of its names was copied up. An entry of another type, or a whiteout, is a bad
    /// index (`EIO`), as the kernel finds it.
    pub(crate) fn index_entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        layer: LayerIdx,
        kind: Option<FileKind>,
    ) -> Result<Option<IndexEntry>> {
        let fh = self.origin_of(dir, name, layer)?;
        let index = self.index_dir()?;
        let iname = format::index_name(&fh);
        let (st, born) = match sys::stat_at_born(index.as_fd(), &iname) {
            Ok(found) => found,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if st.kind() != kind || format::is_whiteout_stat(&st) {
            tracing::warn!(index = ?iname, "bad index found");
            return Err(Error::BadIndex);
        }
        let metacopy = self.opts.metacopy
            && kind == Some(FileKind::Regular)
            && crate::layer::metacopy_xattr(index.as_fd(), &iname, self.layers.xattrs())?.is_some();
        let mut st = self.overridden(st, Object::At(index.as_fd(), &iname));
        st.nlink = self.indexed_nlink(Object::At(index.as_fd(), &iname), &st);
        Ok(Some(IndexEntry {
            name: iname,
            st,
            born,
            metacopy,
        }))
    }

    /// Where a lower name whose file is in the index is found: layer [`INDEX_LAYER`], under
    /// its entry's name.
    pub(crate) fn index_placement(entry: &IndexEntry) -> Arc<[(LayerIdx, LayerPath)]> {
        Arc::from(vec![(INDEX_LAYER, LayerPath::InParent(entry.name.clone()))])
    }

    /// The object of an index entry, as the node table records it.
    pub(crate) fn index_object(entry: &IndexEntry) -> crate::inode::ObjectId {
        crate::inode::ObjectId::new(LayerIno::new(INDEX_LAYER, entry.st.ino), entry.born)
    }

    /// The link count shown for upper non-directory `obj` with attributes `st`: with the
    /// index, its `overlay.nlink` applied (the names of the lower file not linked up
    /// count); else, or without a usable value, its own.
    pub(crate) fn indexed_nlink(&self, obj: Object<'_>, st: &Stat) -> u32 {
        if !self.indexes() || st.nlink < 1 || st.kind() == Some(FileKind::Directory) {
            return st.nlink;
        }
        self.recorded_nlink(obj, st).flatten().unwrap_or(st.nlink)
    }

    /// Records the link count shown for indexed upper file `obj`, whose upper inode has
    /// `upper_nlink` links, as `shown` (the kernel's `ovl_set_nlink_upper`).
    pub(crate) fn set_indexed_nlink(
        &self,
        obj: Object<'_>,
        upper_nlink: u32,
        shown: u32,
    ) -> Result<()> {
        self.writable()?;
        self.record_nlink(obj, IndexNlink::Upper, shown, upper_nlink)
    }

    /// Records `shown` as the link count of indexed file `obj`, relative to `base` (made
    /// an `overlay.nlink` value by `relative`).
    fn record_nlink(
        &self,
        obj: Object<'_>,
        relative: fn(i32) -> IndexNlink,
        shown: u32,
        base: u32,
    ) -> Result<()> {
        let diff = i32::try_from(i64::from(shown) - i64::from(base))
            .map_err(|_| Error::Invalid("link count"))?;
        obj.set_xattr(self.layers.xattrs().nlink(), &relative(diff).encode(), 0)?;
        Ok(())
    }

    /// Before a lower name of an indexed (or to be indexed) file is removed or renamed
    /// over, it is copied up, or linked up to its index entry, so that the link count the
    /// index records drops with it (the kernel's `ovl_nlink_start`). Nothing for other
    /// names. True when the name was linked up or copied up here.
    pub(crate) fn link_up_before_removal(
        &self,
        dir: &Arc<crate::inode::Node>,
        name: &OsStr,
    ) -> Result<bool> {
        if !self.indexes() {
            return Ok(false);
        }
        let chain = dir.with_location(|l| l.layers.clone());
        let Some(r) = self.resolve_in(dir, &chain, name, 0)? else {
            return Ok(false);
        };
        let top = r.layers.first().copied();
        let lower_link = top
            .is_some_and(|li| li != INDEX_LAYER && self.layers.get(li).is_some_and(|l| !l.upper))
            && self.needs_index(&r.top);
        if top == Some(INDEX_LAYER) {
            if let Some((_, LayerPath::InParent(iname))) =
                r.redirects.as_deref().and_then(|p| p.first())
            {
                self.link_up(dir, name, iname)?;
                // A node at this name now finds it in the upper layer.
                let id = self.nodes.visible_id(r.ino);
                self.nodes.set_layers_at(
                    id,
                    (dir.id, name),
                    smallvec::smallvec![crate::inode::UPPER_LAYER],
                );
                return Ok(true);
            }
        } else if lower_link {
            let attr = self.lookup(dir.id, name)?;
            let copied = self.node(attr.node).and_then(|n| self.copy_up(&n, true));
            self.forget(attr.node, 1);
            copied?;
            return Ok(true);
        }
        Ok(false)
    }

    /// With the index, after a name of file node `id` was removed: the node moved to
    /// another name of it, which may be a lower name found in the index rather than an
    /// upper one, so it is resolved again there.
    pub(crate) fn locate_other_name(&self, id: crate::inode::NodeId) {
        if !self.indexes() {
            return;
        }
        let Some(node) = self.nodes.get(id) else {
            return;
        };
        let (p, name) = node.with_location(|l| (l.parent, l.name.clone()));
        let Ok(parent) = self.node(p) else {
            return;
        };
        let chain = parent.with_location(|l| l.layers.clone());
        if let Ok(Some(r)) = self.resolve_in(&parent, &chain, &name, 0) {
            if self.nodes.visible_id(r.ino) == id {
                self.nodes.set_location(id, r.location(p, &name));
            }
        }
    }

    /// Records the link count shown for indexed file `obj` as `shown`, relative to its lower
    /// file's count (the kernel's `ovl_set_nlink_lower`), where that file is found.
    pub(crate) fn set_lower_relative_nlink(&self, obj: Object<'_>, shown: u32) -> Result<()> {
        let Some((_, lower)) = self.origin_object(obj).found() else {
            return Ok(());
        };
        self.record_nlink(obj, IndexNlink::Lower, shown, lower.nlink)
    }

    /// Before an upper name of indexed file `iname` is linked, unlinked or replaced: a count
    /// left relative to the lower file (by a link-up a crash cut short) is recorded
    /// relative to the upper inode again, so that the change moves both counts alike (the
    /// kernel's `ovl_nlink_start`).
    pub(crate) fn settle_nlink(&self, iname: &OsStr) -> Result<()> {
        let Ok(index) = self.index_dir() else {
            return Ok(());
        };
        let entry = Object::At(index.as_fd(), iname);
        let value = entry.get_xattr(self.layers.xattrs().nlink()).ok().flatten();
        if !matches!(
            value.as_deref().and_then(IndexNlink::parse),
            Some(IndexNlink::Lower(_))
        ) {
            return Ok(());
        }
        let st = sys::stat_at(index.as_fd(), iname)?;
        let shown = self.indexed_nlink(entry, &st);
        self.set_indexed_nlink(entry, st.nlink, shown)
    }

    /// The lower file's `st_ino` for an upper file the kernel copied up through the index
    /// (it records no stratafs origin): the lower object its `overlay.origin` names. `None`
    /// for a file that is not indexed, or whose origin is gone: it shows its upper number.
    pub(crate) fn kernel_origin_ino(
        &self,
        upper_dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Option<crate::layer::Ino> {
        self.entry_of_upper(upper_dir, name)?;
        let (layer, st) = self.origin_object(Object::At(upper_dir, name)).found()?;
        Some(self.layers.shown_ino(LayerIno::new(layer, st.ino)))
    }

    /// The lower non-directory upper object `obj`'s `overlay.origin` names, and its layer:
    /// found by its handle (and only stat'ed) on the filesystem of a lower layer with the
    /// handle's uuid. [`Origin::Gone`] only when it is truly gone, as the kernel's
    /// `ovl_check_origin_fh` finds it (`ESTALE`): no lower layer has the handle's uuid, or
    /// on each that has, the handle is stale. Any other failure is [`Origin::Unknown`].
    fn origin_object(&self, obj: Object<'_>) -> Origin {
        let Some(index) = self.index.as_ref() else {
            return Origin::Unknown;
        };
        let Ok(Some(origin)) = obj.get_xattr(self.layers.xattrs().origin()) else {
            return Origin::Unknown;
        };
        let Some((uuid, kind, fid)) = format::parse_origin_handle(&origin) else {
            return Origin::Unknown;
        };
        let handle = sys::FileHandle {
            kind,
            bytes: fid.to_vec(),
        };
        let mut found = Origin::Gone;
        for (li, root) in index.roots.iter().enumerate().skip(1) {
            if index.uuids.get(li) != Some(&uuid) {
                continue;
            }
            let fd = match sys::open_by_handle(root.as_fd(), &handle) {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => {
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "origin file handle not opened");
                    found = Origin::Unknown;
                    continue;
                }
            };
            let Ok(st) = sys::stat_fd(fd.as_fd()) else {
                return Origin::Unknown;
            };
            if st.is_dir() {
                // No non-directory stands for one: the kernel's "invalid origin", `ESTALE`.
                return Origin::Gone;
            }
            // The layer of that filesystem (its objects' numbers are composed with it).
            let layer = self
                .layers
                .all()
                .iter()
                .position(|x| !x.upper && x.dev == st.dev)
                .and_then(|l| LayerIdx::try_from(l).ok());
            return match layer {
                Some(layer) => Origin::Found(layer, st),
                None => Origin::Unknown,
            };
        }
        found
    }
}

/// What became of the lower file an `overlay.origin` names (see
/// [`Overlay::origin_object`]).
enum Origin {
    /// Found in lower layer `.0`, with attributes `.1`.
    Found(LayerIdx, Stat),
    /// Gone: a stale handle, a filesystem of no lower layer, or a directory.
    Gone,
    /// Not known: no usable origin, or a failure other than a stale handle.
    Unknown,
}

impl Origin {
    /// The lower file's layer and attributes, where it was found.
    fn found(self) -> Option<(LayerIdx, Stat)> {
        match self {
            Origin::Found(layer, st) => Some((layer, st)),
            Origin::Gone | Origin::Unknown => None,
        }
    }
}

/// Which of the lower layers `lowers` (filesystem and its uuid, topmost first) makes the
/// kernel's overlayfs fall back to `index=off` (`ovl_lower_uuid_ok`), by its place in
/// `lowers`: the first on a filesystem other than the upper's (`upper_dev`) and the lower
/// layers' before it whose uuid is that of a filesystem a lower layer before it is on
/// (two filesystems of no uuid among them): a handle's uuid would not tell which
/// filesystem it is of. One lower filesystem of no uuid is no matter.
fn bad_uuid_layer(upper_dev: u64, lowers: impl Iterator<Item = (u64, [u8; 16])>) -> Option<usize> {
    // The filesystems met, with their uuids, and whether a lower layer is on them.
    let mut seen: Vec<(u64, [u8; 16], bool)> = Vec::new();
    for (i, (dev, uuid)) in lowers.enumerate() {
        if let Some(fs) = seen.iter_mut().find(|fs| fs.0 == dev) {
            fs.2 = true;
            continue;
        }
        if dev == upper_dev {
            seen.push((dev, uuid, true));
            continue;
        }
        if seen.iter().any(|fs| fs.2 && fs.1 == uuid) {
            return Some(i);
        }
        seen.push((dev, uuid, true));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::bad_uuid_layer;

    #[test]
    fn lower_filesystems_of_one_uuid_turn_the_index_off() {
        let (a, b) = ([1; 16], [2; 16]);
        let bad = |l: &[(u64, [u8; 16])]| bad_uuid_layer(9, l.iter().copied());
        assert_eq!(bad(&[(1, a), (2, b), (1, a)]), None);
        assert_eq!(bad(&[(1, a), (2, a)]), Some(1));
        assert_eq!(bad(&[(1, [0; 16]), (2, b), (3, [0; 16])]), Some(2));
        assert_eq!(bad(&[(1, [0; 16])]), None);
        // The upper filesystem counts once a lower layer is on it.
        assert_eq!(bad(&[(1, a), (9, b)]), None);
        assert_eq!(bad(&[(9, a), (1, a)]), Some(1));
        assert_eq!(bad_uuid_layer(9, [(1, a)].into_iter()), None);
    }
}

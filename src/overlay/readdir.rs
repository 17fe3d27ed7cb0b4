//! Merged directory listings.
//!
//! A listing is built by reading the directory's layers top to bottom, each name taken from
//! the first layer that shows it; whiteouts (char 0/0 devices, `.wh.` files, and xattr
//! whiteouts in a directory marked `overlay.opaque=x`) hide a name from the layers *below*
//! their own, and the whiteout format's own names are never listed.
//!
//! Listings are shared: one listing per directory version, kept in a bounded LRU, handed to
//! every reader of the directory until a change (through [`crate::inode::Node::lock_dir`])
//! moves the version on.
//!
//! Offsets are *cookies*, not positions: each entry's cookie is a keyed hash of its name
//! (the key is random per mount, so a layer cannot craft collisions), and a listing is
//! sorted by cookie. A read continues with the entries whose cookie is above the offset, in
//! the directory's *current* listing. So an offset means the same thing in every version of
//! a directory, as a hash cookie does on ext4: a reader whose directory changes under it
//! still returns every entry that was neither added nor removed exactly once, and every
//! handle that fills the kernel's per-inode directory cache (`FOPEN_CACHE_DIR`) fills it
//! with current entries at agreeing offsets. (Positions into per-version snapshots could
//! not do that: a handle still reading an old snapshot would add its entries to a cache
//! being filled from the new one, dropping or repeating names.)

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::{DirMark, Error, Overlay, Result};
use crate::inode::NodeId;
use crate::layer::{format, Ino, LayerIno};
use crate::sys::{self, FileKind};

/// One entry of a merged listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name.
    pub name: OsString,
    /// File type.
    pub kind: FileKind,
    /// Position in the directory's merge chain of the topmost layer showing the name (the
    /// layers above it hold neither the name nor a whiteout for it).
    pub(crate) from: usize,
    /// The object in that layer (its inode number as that layer's directory reports it).
    pub(crate) object: LayerIno,
    /// The entry's offset cookie (above 2; 1 and 2 are `.` and `..`).
    pub cookie: u64,
    /// The entry is in an upper directory holding copied-up entries.
    pub(crate) impure: bool,
}

/// A merged listing of one version of a directory (without `.` and `..`).
#[derive(Debug)]
pub struct Listing {
    /// The directory version it was taken at ([`crate::inode::Node::dir_version`]).
    pub version: u64,
    /// The entries, sorted by cookie.
    pub entries: Vec<DirEntry>,
}

impl Listing {
    /// The entries after offset `offset` (a cookie, or 0..=2 for the start and the dots).
    pub fn after(&self, offset: u64) -> &[DirEntry] {
        let start = self.entries.partition_point(|e| e.cookie <= offset);
        &self.entries[start..]
    }
}

/// Current listings, by directory node id, bounded by the total number of entries held.
/// The lock is held only to look up or insert one `Arc`.
#[derive(Debug)]
pub(crate) struct ListingCache {
    inner: Mutex<ListingLru>,
    budget: usize,
    lookups: crate::stats::HitCounter,
}

#[derive(Debug)]
struct ListingLru {
    lru: LruCache<NodeId, Arc<Listing>>,
    entries: usize,
}

impl ListingCache {
    pub(crate) fn new(budget: usize) -> ListingCache {
        ListingCache {
            inner: Mutex::new(ListingLru {
                lru: LruCache::unbounded(),
                entries: 0,
            }),
            budget,
            lookups: crate::stats::HitCounter::default(),
        }
    }

    /// Its size (listings, and the names they hold), budget and hit counts.
    pub(crate) fn stats(&self) -> (crate::stats::CacheStats, u64) {
        let (listings, names) = {
            let c = self.inner.lock();
            (c.lru.len() as u64, c.entries as u64)
        };
        let (hits, misses) = self.lookups.get();
        let s = crate::stats::CacheStats {
            entries: listings,
            capacity: self.budget as u64,
            hits,
            misses,
        };
        (s, names)
    }

    /// The cached listing of directory `ino` if it is of version `version`.
    fn get(&self, ino: NodeId, version: u64) -> Option<Arc<Listing>> {
        let found = {
            let mut c = self.inner.lock();
            match c.lru.get(&ino) {
                Some(l) if l.version == version => Some(Arc::clone(l)),
                _ => None,
            }
        };
        self.lookups.record(found.is_some());
        found
    }

    fn put(&self, ino: NodeId, listing: &Arc<Listing>) {
        // A listing bigger than the whole budget is used by its handles but not kept.
        let weight = listing.entries.len().max(1);
        if weight > self.budget {
            self.remove(ino);
            return;
        }
        let mut c = self.inner.lock();
        if let Some(old) = c.lru.put(ino, Arc::clone(listing)) {
            c.entries -= old.entries.len().max(1);
        }
        c.entries += weight;
        while c.entries > self.budget {
            match c.lru.pop_lru() {
                Some((_, old)) => c.entries -= old.entries.len().max(1),
                None => break,
            }
        }
    }

    /// Drops the listing of `ino` (the node is gone).
    pub(crate) fn remove(&self, ino: NodeId) {
        let mut c = self.inner.lock();
        if let Some(old) = c.lru.pop(&ino) {
            c.entries -= old.entries.len().max(1);
        }
    }
}

/// What a listing entry's `d_ino` is: a node id (mapped as the node table maps it), or a
/// number shown as is (a lower hard link's).
enum Shown {
    Node(Ino),
    Ino(Ino),
}

impl Overlay {
    /// The current merged listing of directory `ino`, sorted by cookie: the shared one when
    /// it is still of the directory's version, else a fresh one (which then becomes the
    /// shared one).
    pub fn listing(&self, ino: NodeId) -> Result<Arc<Listing>> {
        let dir = self.node(ino)?;
        // The version is read before the layers: a change that lands while they are read
        // moves the version on, and this listing is never taken for current again.
        let version = dir.dir_version();
        let listing = match self.listings.get(ino, version) {
            Some(l) => l,
            None => {
                let l = Arc::new(Listing {
                    version,
                    entries: self.read_dir(ino)?,
                });
                // (Taken while a change is under way: good for this reader, not to share.)
                if version & 1 == 0 {
                    self.listings.put(ino, &l);
                }
                l
            }
        };
        dir.set_listed(version);
        Ok(listing)
    }

    /// True when `listing` is still the current one of directory `ino`.
    pub fn listing_still_current(&self, ino: NodeId, listing: &Listing) -> bool {
        self.nodes
            .get(ino)
            .map(|dir| dir.dir_version() == listing.version)
            .unwrap_or(false)
    }

    /// True when the directory has not changed since its first listing was handed out, so
    /// the kernel may keep a directory cache it filled from an earlier open (see
    /// [`crate::inode::Node::listed_is_current`]).
    pub fn listing_is_current(&self, ino: NodeId) -> bool {
        self.nodes
            .get(ino)
            .map(|dir| dir.listed_is_current())
            .unwrap_or(false)
    }

    /// True when lower hard links get one identity per name (a writable union without
    /// the index: with it, all names of a lower file are one file before and after a
    /// copy-up).
    pub(crate) fn splits_lower_links(&self) -> bool {
        !self.opts.read_only && self.layers.upper().is_some() && !self.indexes()
    }

    /// Checks that `ino` is a directory that can be listed.
    pub fn check_dir(&self, ino: NodeId) -> Result<()> {
        match self.node(ino)?.kind {
            FileKind::Directory => Ok(()),
            _ => Err(Error::NotDir),
        }
    }

    /// The `st_ino` of entry `e` of a listing of directory `dir`, equal to what a lookup of
    /// the name reports. Worked out only when a plain readdir needs it (readdirplus looks
    /// the entry up anyway): a directory's number comes from the bottom of its merge chain,
    /// a copied-up file's from its recorded origin, a lower hard link's is the lower file's
    /// (see [`Overlay::shown_ino`]).
    pub fn entry_ino(&self, dir: NodeId, e: &DirEntry) -> Result<Ino> {
        match self.raw_entry_ino(dir, e)? {
            Shown::Node(i) => Ok(self.nodes.visible_id(i).shown()),
            Shown::Ino(i) => Ok(i),
        }
    }

    fn raw_entry_ino(&self, dir: NodeId, e: &DirEntry) -> Result<Shown> {
        let node = self.node(dir)?;
        let chain = node.with_location(|l| l.layers.clone());
        let layer = self
            .layers
            .get(e.object.layer)
            .ok_or(Error::StaleNode(dir))?;
        let resolved = || {
            self.resolve_in(&node, &chain, &e.name, e.from)?
                .map(|r| Shown::Node(r.ino))
                .ok_or(Error::NotFound)
        };
        if e.kind == FileKind::Directory {
            return resolved();
        }
        let dfd = self.dir_fd(&node, e.object.layer)?;
        // With the index a file of several links may take its number from a lower name's
        // index entry, or a kernel copy's origin: what a lookup finds. One of a single link
        // is neither (an index entry is a second link of its upper file, and only a lower
        // file of several links is looked for in the index): it is numbered as without the
        // index, but where a metacopy file may lead a lookup elsewhere.
        if self.indexes()
            && (self.opts.metacopy
                || !self.layers.data_only().is_empty()
                || sys::stat_at(dfd.as_fd(), &e.name)?.nlink > 1)
        {
            return resolved();
        }
        if e.impure {
            if let Some(o) = self.origin_ino(dfd.as_fd(), &e.name) {
                return Ok(Shown::Node(o));
            }
        }
        if !layer.upper && self.splits_lower_links() {
            let st = sys::stat_at(dfd.as_fd(), &e.name)?;
            let own = self.nondir_ino(e.object, st.nlink, dir, &e.name);
            return Ok(match self.lower_link_ino(Some(e.object.layer), &st) {
                Some(i) if i != own => Shown::Ino(i),
                _ => Shown::Node(own),
            });
        }
        Ok(Shown::Node(self.layers.shown_ino(e.object)))
    }

    /// The merged listing of directory `ino` (without `.` and `..`).
    pub fn read_dir(&self, ino: NodeId) -> Result<Vec<DirEntry>> {
        let dir = self.node(ino)?;
        if dir.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        let chain = dir.with_location(|l| l.layers.clone());
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut out = Vec::new();
        for (pos, &li) in chain.iter().enumerate() {
            let layer = self.layers.get(li).ok_or(Error::StaleNode(ino))?;
            let dfd = match self.dir_fd(&dir, li) {
                Ok(fd) => fd,
                Err(e) if e.is_absent() => continue,
                Err(e) => return Err(e),
            };
            // The xattrs are read on the directory open for listing: one call each.
            let open = sys::open_dir_to_list(dfd.as_fd())?;
            // Its empty regular files may be whiteouts.
            let xwhiteouts =
                self.dir_mark(DirMark::XWhiteouts, &dir, li, &dfd, open.as_fd(), false)?;
            // Marked impure: copied-up entries keep their original inode number in an xattr
            // (upper layer: read afresh, as copy-ups mark it), and the lookup of each regular
            // file asks it (metacopy files are in impure directories), so it is known before
            // a readdirplus's lookups come. (A mark that cannot be read here counts as none,
            // and a lookup reads it again.)
            let marked_impure = self
                .dir_mark(DirMark::Impure, &dir, li, &dfd, open.as_fd(), layer.upper)
                .unwrap_or(false);
            let impure = layer.upper && self.layers.work().is_some() && marked_impure;
            let entries = sys::list_open_dir(open)?;
            let mut hidden_below: Vec<OsString> = Vec::new();
            for e in entries {
                if format::is_reserved_name(&e.name) {
                    if let Some(t) = format::whiteout_target(&e.name) {
                        hidden_below.push(t.to_os_string());
                    }
                    continue;
                }
                if seen.contains(&e.name) {
                    continue;
                }
                let kind = match e.kind {
                    Some(FileKind::Regular) if xwhiteouts => None,
                    Some(k) if k != FileKind::CharDevice => Some(k),
                    _ => None,
                };
                let kind = match kind {
                    Some(k) => k,
                    None => {
                        // Unknown d_type, or a char device or a regular file that may be a
                        // whiteout.
                        let st = match sys::stat_at(dfd.as_fd(), &e.name) {
                            Ok(st) => st,
                            Err(err) if crate::layer::is_absent(&err) => continue,
                            Err(err) => return Err(err.into()),
                        };
                        if format::is_whiteout_stat(&st)
                            || (xwhiteouts
                                && crate::layer::may_be_xattr_whiteout(&st)
                                && crate::layer::has_whiteout_xattr(
                                    dfd.as_fd(),
                                    &e.name,
                                    self.layers.xattrs(),
                                )?)
                        {
                            seen.insert(e.name);
                            continue;
                        }
                        st.kind().unwrap_or(FileKind::Regular)
                    }
                };
                seen.insert(e.name.clone());
                out.push(DirEntry {
                    cookie: self.cookie(&e.name),
                    name: e.name,
                    kind,
                    from: pos,
                    object: LayerIno::new(li, e.ino),
                    impure,
                });
            }
            seen.extend(hidden_below);
        }
        out.sort_unstable_by(|a, b| a.cookie.cmp(&b.cookie).then_with(|| a.name.cmp(&b.name)));
        // Two names with one hash (never seen with a 63-bit keyed hash, but a listing must
        // not lose a name to it): the later one takes the next free cookie.
        for i in 1..out.len() {
            if out[i].cookie <= out[i - 1].cookie {
                out[i].cookie = out[i - 1].cookie + 1;
            }
        }
        Ok(out)
    }

    /// The offset cookie of `name` in this mount: a keyed hash, above 2.
    fn cookie(&self, name: &std::ffi::OsStr) -> u64 {
        use std::hash::BuildHasher;
        // Offsets are signed 64-bit in the kernel; keep clear of the top too.
        3 + self.cookie_key.hash_one(name) % ((i64::MAX as u64) - 1024)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::ffi::OsStr;

    use super::super::{Caller, NewObject};
    use crate::inode::ROOT;

    fn names(entries: &[super::DirEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.name.to_string_lossy().into_owned())
            .collect()
    }

    /// With the index, a plain listing numbers every entry as a lookup does: lower hard
    /// links before and after one of their names is copied up (the others then in the
    /// index), a file of one link, an upper file, a copied-up one.
    #[test]
    fn listed_numbers_with_the_index_are_the_lookups() {
        let (_t, mut ov) = super::super::scratch_overlay(|l, u| {
            std::fs::write(l.join("a"), "a").unwrap();
            std::fs::hard_link(l.join("a"), l.join("b")).unwrap();
            std::fs::write(l.join("one"), "1").unwrap();
            std::fs::write(l.join("two"), "2").unwrap();
            std::fs::write(u.join("up"), "u").unwrap();
        });
        ov.enable_index().unwrap();
        let check = |ov: &super::super::Overlay| {
            let listing = ov.listing(ROOT).unwrap();
            for e in &listing.entries {
                let looked_up = ov.lookup(ROOT, &e.name).unwrap();
                let listed = ov.entry_ino(ROOT, e).unwrap();
                assert_eq!(listed, looked_up.ino, "{:?}", e.name);
                ov.forget(looked_up.node, 1);
            }
        };
        check(&ov);
        for name in ["a", "two"] {
            let n = ov.lookup(ROOT, OsStr::new(name)).unwrap().node;
            ov.copy_up(&ov.node(n).unwrap(), true).unwrap();
        }
        check(&ov);
    }

    /// An offset taken from one version of a directory still means "after this entry" in
    /// the next: a reader whose directory changes under it returns every entry that was
    /// neither added nor removed exactly once. (With positions into per-version snapshots,
    /// a name added in front shifted the rest, and a continuing reader, or the kernel's
    /// directory cache, repeated or dropped names.)
    #[test]
    fn offsets_survive_changes_between_reads() {
        let (_t, ov) = super::super::scratch_overlay(|l, _| {
            for n in (0..200).map(|i| format!("n{i:03}")) {
                std::fs::write(l.join(&n), "x").unwrap();
            }
        });
        let caller = Caller {
            uid: 0,
            gid: 0,
            umask: 0,
        };
        for split in [0, 1, 57, 199] {
            let first = ov.listing(ROOT).unwrap();
            let present: BTreeSet<String> = names(&first.entries)
                .into_iter()
                .filter(|n| !n.starts_with("new"))
                .collect();
            let seen_before = names(&first.entries[..split]);
            let cookie = if split == 0 {
                2
            } else {
                first.entries[split - 1].cookie
            };
            // Changes between two reads: new names (they land in the upper layer, which a
            // merge lists first) and a removal of an entry already returned.
            for i in 0..5 {
                let name = format!("new{split}-{i}");
                let (a, _) = ov
                    .create(ROOT, OsStr::new(&name), NewObject::Dir, 0o755, caller)
                    .unwrap();
                ov.forget(a.node, 1);
            }
            // (The directories made by earlier rounds are skipped: this removes a file.)
            if let Some(gone) = seen_before.iter().find(|n| !n.starts_with("new")) {
                ov.unlink(ROOT, OsStr::new(gone)).unwrap();
            }
            let rest = ov.listing(ROOT).unwrap();
            assert_ne!(rest.version, first.version);
            let seen_after = names(rest.after(cookie));
            let mut all: Vec<String> = seen_before.into_iter().chain(seen_after).collect();
            all.retain(|n| !n.starts_with("new"));
            let unique: BTreeSet<String> = all.iter().cloned().collect();
            assert_eq!(all.len(), unique.len(), "a name repeated (split {split})");
            assert_eq!(unique, present, "a name lost (split {split})");
        }
    }
}

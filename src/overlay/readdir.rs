//! Merged directory listings.
//!
//! A listing is built by reading the directory's layers top to bottom, each name taken from
//! the first layer that shows it; whiteouts (char 0/0 devices and `.wh.` files) hide a name
//! from the layers *below* their own, and the whiteout format's own names are never listed.
//!
//! Listings are shared: one listing per directory version, kept in a bounded LRU, handed to
//! every handle that opens the directory until a change (through [`crate::inode::Node::lock_dir`]) moves
//! the version on. Offsets into a listing are therefore the same for every handle of one
//! version, which is what lets the kernel cache a directory's entries across opens
//! (`FOPEN_CACHE_DIR`): whichever handle fills the kernel's cache, the offsets agree.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::{Error, Overlay, Result};
use crate::layer::{format, LayerIdx};
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
    /// That layer.
    pub(crate) layer: LayerIdx,
    /// The inode number that layer's directory reports.
    pub(crate) raw_ino: u64,
    /// The entry is in an upper directory holding copied-up entries.
    pub(crate) impure: bool,
}

/// A merged listing of one version of a directory (without `.` and `..`).
#[derive(Debug)]
pub struct Listing {
    /// The directory version it was taken at ([`crate::inode::Node::dir_version`]).
    pub version: u64,
    /// The entries, in the order offsets index them.
    pub entries: Vec<DirEntry>,
}

/// Current listings, by directory node id, bounded by the total number of entries held.
/// The lock is held only to look up or insert one `Arc`.
#[derive(Debug)]
pub(crate) struct ListingCache {
    inner: Mutex<ListingLru>,
    budget: usize,
}

#[derive(Debug)]
struct ListingLru {
    lru: LruCache<u64, Arc<Listing>>,
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
        }
    }

    /// The cached listing of `ino` if it is of version `version`.
    fn get(&self, ino: u64, version: u64) -> Option<Arc<Listing>> {
        let mut c = self.inner.lock();
        match c.lru.get(&ino) {
            Some(l) if l.version == version => Some(Arc::clone(l)),
            _ => None,
        }
    }

    fn put(&self, ino: u64, listing: &Arc<Listing>) {
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
    pub(crate) fn remove(&self, ino: u64) {
        let mut c = self.inner.lock();
        if let Some(old) = c.lru.pop(&ino) {
            c.entries -= old.entries.len().max(1);
        }
    }
}

impl Overlay {
    /// The current merged listing of directory `ino`: the shared one when it is still of the
    /// directory's version, else a fresh one (which then becomes the shared one).
    pub fn listing(&self, ino: u64) -> Result<Arc<Listing>> {
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
                self.listings.put(ino, &l);
                l
            }
        };
        dir.set_listed(version);
        Ok(listing)
    }

    /// True when the directory has not changed since its last listing was handed out: a
    /// listing built again now would be the same, entry for entry and offset for offset
    /// (the layers' own directories have not changed, so neither has their order), so the
    /// kernel may keep a directory cache it filled from an earlier open.
    pub fn listing_is_current(&self, ino: u64) -> bool {
        self.nodes
            .get(ino)
            .map(|dir| dir.listed_is_current())
            .unwrap_or(false)
    }

    /// True when lower hard links get one identity per name (a writable union).
    fn splits_lower_links(&self) -> bool {
        !self.opts.read_only && self.layers.upper().is_some()
    }

    /// Checks that `ino` is a directory that can be listed.
    pub fn check_dir(&self, ino: u64) -> Result<()> {
        match self.node(ino)?.kind {
            FileKind::Directory => Ok(()),
            _ => Err(Error::NotDir),
        }
    }

    /// The `st_ino` of entry `e` of a listing of directory `dir`, equal to what a lookup of
    /// the name reports. Worked out only when a plain readdir needs it (readdirplus looks
    /// the entry up anyway): a directory's number comes from the bottom of its merge chain,
    /// a copied-up file's from its recorded origin, a lower hard link's from its name.
    pub fn entry_ino(&self, dir: u64, e: &DirEntry) -> Result<u64> {
        self.raw_entry_ino(dir, e).map(|i| self.nodes.visible_id(i))
    }

    fn raw_entry_ino(&self, dir: u64, e: &DirEntry) -> Result<u64> {
        let node = self.node(dir)?;
        let chain = node.with_location(|l| l.layers.clone());
        let layer = self.layers.get(e.layer).ok_or(Error::StaleNode(dir))?;
        if e.kind == FileKind::Directory {
            return self
                .resolve_in(&node, &chain, &e.name, e.from)?
                .map(|r| r.ino)
                .ok_or(Error::NotFound);
        }
        let dfd = self.dir_fd(&node, e.layer)?;
        if e.impure {
            if let Some(o) = self.origin_ino(dfd.as_fd(), &e.name) {
                return Ok(o);
            }
        }
        if !layer.upper && self.splits_lower_links() {
            let st = sys::stat_at(dfd.as_fd(), &e.name)?;
            return Ok(self.nondir_ino(e.layer, e.raw_ino, st.nlink, dir, &e.name));
        }
        Ok(self.layers.ino.compose(layer.fs_index, e.raw_ino))
    }

    /// The merged listing of directory `ino` (without `.` and `..`).
    pub fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>> {
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
                Err(Error::Io(e)) if crate::layer::is_absent(&e) => continue,
                Err(e) => return Err(e),
            };
            let entries = sys::list_dir(dfd.as_fd())?;
            // Copied-up entries keep their original inode number in an xattr.
            let impure = layer.upper && self.is_impure(dfd.as_fd());
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
                    Some(k) if k != FileKind::CharDevice => k,
                    _ => {
                        // Unknown d_type, or a char device that may be a whiteout.
                        let st = match sys::stat_at(dfd.as_fd(), &e.name) {
                            Ok(st) => st,
                            Err(err) if crate::layer::is_absent(&err) => continue,
                            Err(err) => return Err(err.into()),
                        };
                        if format::is_whiteout_stat(&st) {
                            seen.insert(e.name);
                            continue;
                        }
                        st.kind().unwrap_or(FileKind::Regular)
                    }
                };
                seen.insert(e.name.clone());
                out.push(DirEntry {
                    name: e.name,
                    kind,
                    from: pos,
                    layer: li,
                    raw_ino: e.ino,
                    impure,
                });
            }
            seen.extend(hidden_below);
        }
        Ok(out)
    }
}

//! Names known to be missing from a directory, per directory version.
//!
//! The front end answers a missing name as a negative entry the kernel keeps for the entry
//! timeout, but the kernel asks again whenever it lost or expired the entry (memory
//! pressure, a short `timeout=`), and each such lookup would probe every layer of the merge
//! chain for the name and for its `.wh.` whiteout. A name found
//! missing at directory version `v` stays missing while the version is `v`: every change to
//! the directory's entries, and every change of its merge chain, moves the version on
//! (versions are unique across nodes, so an entry can never be taken for another
//! directory's). The cache is split into shards behind their own short locks and LRU-bounded.

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::hash::BuildHasher;

use lru::LruCache;
use parking_lot::Mutex;

use super::dirfd::{lru_shards, shard_stats, SHARDS};
use crate::inode::NodeId;

/// (directory node, keyed hash of the name) -> (directory version, the name).
type Shard = Mutex<LruCache<(NodeId, u64), (u64, OsString)>>;

#[derive(Debug)]
pub(crate) struct NegativeCache {
    shards: Vec<Shard>,
    /// Random per mount, so names in a layer cannot be crafted to collide.
    key: RandomState,
    lookups: crate::stats::HitCounter,
}

impl NegativeCache {
    /// A cache of about `capacity` names; 0 remembers nothing.
    pub(crate) fn new(capacity: usize) -> NegativeCache {
        NegativeCache {
            shards: if capacity == 0 {
                Vec::new()
            } else {
                lru_shards(capacity)
            },
            key: RandomState::new(),
            lookups: crate::stats::HitCounter::default(),
        }
    }

    fn slot(&self, dir: NodeId, name: &OsStr) -> Option<(&Shard, (NodeId, u64))> {
        let h = self.key.hash_one(name);
        let shard = self.shards.get((h as usize) % SHARDS)?;
        Some((shard, (dir, h)))
    }

    /// True when `name` was found missing from directory `dir` at its version `version`.
    pub(crate) fn is_missing(&self, dir: NodeId, version: u64, name: &OsStr) -> bool {
        let missing = self.slot(dir, name).is_some_and(|(shard, key)| {
            matches!(shard.lock().get(&key), Some((v, n)) if *v == version && n == name)
        });
        self.lookups.record(missing);
        missing
    }

    /// Its size, capacity and hit counts (a hit: a lookup answered without the layers).
    pub(crate) fn stats(&self) -> crate::stats::CacheStats {
        shard_stats(&self.shards, &self.lookups)
    }

    /// Records that `name` is missing from directory `dir` at version `version`.
    pub(crate) fn remember_missing(&self, dir: NodeId, version: u64, name: &OsStr) {
        if let Some((shard, key)) = self.slot(dir, name) {
            shard.lock().put(key, (version, name.to_os_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_name_is_missing_only_at_the_version_it_was_found_missing() {
        let c = NegativeCache::new(64);
        let n = OsStr::new("gone");
        assert!(!c.is_missing(NodeId::from_wire(7), 2, n));
        c.remember_missing(NodeId::from_wire(7), 2, n);
        assert!(c.is_missing(NodeId::from_wire(7), 2, n));
        assert!(
            !c.is_missing(NodeId::from_wire(7), 4, n),
            "a newer version of the directory"
        );
        assert!(
            !c.is_missing(NodeId::from_wire(8), 2, n),
            "another directory"
        );
        assert!(
            !c.is_missing(NodeId::from_wire(7), 2, OsStr::new("other")),
            "another name"
        );
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let c = NegativeCache::new(0);
        c.remember_missing(NodeId::from_wire(7), 2, OsStr::new("gone"));
        assert!(!c.is_missing(NodeId::from_wire(7), 2, OsStr::new("gone")));
    }

    #[test]
    fn bounded() {
        let c = NegativeCache::new(SHARDS);
        for i in 0..1000 {
            c.remember_missing(NodeId::from_wire(1), 2, OsStr::new(&format!("n{i}")));
        }
        let held: usize = c.shards.iter().map(|s| s.lock().len()).sum();
        assert!(held <= SHARDS, "{held}");
    }
}

//! A bounded cache of `O_PATH` directory fds, keyed by (node, layer).
//!
//! Resolving a name needs the parent directory in each layer; reopening it by path on every
//! request would walk the whole path again. The cache is split into shards, each behind its
//! own short lock, so lookups in different directories do not wait for each other, and it is
//! LRU-bounded so the daemon's fd count does not grow with the tree.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use crate::layer::LayerIdx;

/// How many shards a sharded cache has.
pub(crate) const SHARDS: usize = 16;

/// The shards of an LRU cache of about `capacity` entries in all (at least one per shard).
pub(crate) fn lru_shards<K: std::hash::Hash + Eq, V>(
    capacity: usize,
) -> Vec<Mutex<LruCache<K, V>>> {
    let per = NonZeroUsize::new((capacity / SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
    (0..SHARDS)
        .map(|_| Mutex::new(LruCache::new(per)))
        .collect()
}

type Shard = Mutex<LruCache<(u64, LayerIdx), Arc<OwnedFd>>>;

#[derive(Debug)]
pub(crate) struct DirFdCache {
    shards: Vec<Shard>,
}

impl DirFdCache {
    pub(crate) fn new(capacity: usize) -> DirFdCache {
        DirFdCache {
            shards: lru_shards(capacity),
        }
    }

    fn shard(&self, ino: u64) -> &Shard {
        // Node ids of one directory's children are close together; mix before picking.
        let h = ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60;
        &self.shards[(h as usize) % SHARDS]
    }

    pub(crate) fn get(&self, ino: u64, layer: LayerIdx) -> Option<Arc<OwnedFd>> {
        self.shard(ino).lock().get(&(ino, layer)).cloned()
    }

    pub(crate) fn put(&self, ino: u64, layer: LayerIdx, fd: Arc<OwnedFd>) {
        self.shard(ino).lock().put((ino, layer), fd);
    }

    /// Forgets every fd of node `ino` (the node was dropped, or its directory replaced).
    pub(crate) fn drop_node(&self, ino: u64, layers: usize) {
        let mut shard = self.shard(ino).lock();
        for l in 0..layers {
            shard.pop(&(ino, l as LayerIdx));
        }
    }
}

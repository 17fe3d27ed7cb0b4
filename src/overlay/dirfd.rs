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

use crate::inode::NodeId;
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

/// The size and capacity of sharded LRU cache `shards`, with the hits and misses of
/// `lookups`.
pub(crate) fn shard_stats<K: std::hash::Hash + Eq, V>(
    shards: &[Mutex<LruCache<K, V>>],
    lookups: &crate::stats::HitCounter,
) -> crate::stats::CacheStats {
    let (mut entries, mut capacity) = (0, 0);
    for s in shards {
        let s = s.lock();
        entries += s.len() as u64;
        capacity += s.cap().get() as u64;
    }
    let (hits, misses) = lookups.get();
    crate::stats::CacheStats {
        entries,
        capacity,
        hits,
        misses,
    }
}

/// A cached directory fd, and what is known of the directory.
struct Cached {
    fd: Arc<OwnedFd>,
    facts: Facts,
}

/// What is read of a cached directory once (`None` until then) and forgotten with its fd.
#[derive(Debug, Default, Clone)]
pub(crate) struct Facts {
    /// It is marked `overlay.opaque=x` (holds xattr whiteouts).
    pub(crate) xwhiteouts: Option<bool>,
    /// It is marked `overlay.impure` (holds copied-up entries).
    pub(crate) impure: Option<bool>,
    /// Its default ACL (`system.posix_acl_default`), if it has one.
    pub(crate) default_acl: Option<Option<Arc<[u8]>>>,
}

type Shard = Mutex<LruCache<(NodeId, LayerIdx), Cached>>;

#[derive(Debug)]
pub(crate) struct DirFdCache {
    shards: Vec<Shard>,
    lookups: crate::stats::HitCounter,
}

/// The share of the process's fd limit the cache may hold: the rest is for open files,
/// listings being read and the FUSE connection.
const SHARE_OF_FD_LIMIT: u64 = 4;

impl DirFdCache {
    /// A cache of at most `capacity` fds, and at most a quarter of the process's fd limit
    /// (a daemon started under `ulimit -n 1024` would otherwise fill its limit with cached
    /// directories and fail every open after). Registered to give fds back when an open
    /// fails with `EMFILE` all the same ([`crate::sys::FdReclaim`]).
    pub(crate) fn new(capacity: usize) -> Arc<DirFdCache> {
        let budget = crate::sys::nofile_limit() / SHARE_OF_FD_LIMIT;
        let capacity = capacity.min(usize::try_from(budget).unwrap_or(usize::MAX));
        let cache = Arc::new(DirFdCache {
            shards: lru_shards(capacity),
            lookups: crate::stats::HitCounter::default(),
        });
        let weak: std::sync::Weak<dyn crate::sys::FdReclaim> = Arc::downgrade(&cache) as _;
        crate::sys::register_fd_reclaimer(weak);
        cache
    }

    fn shard(&self, ino: NodeId) -> &Shard {
        // Node ids of one directory's children are close together; mix before picking.
        let h = ino.get().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60;
        &self.shards[(h as usize) % SHARDS]
    }

    pub(crate) fn get(&self, ino: NodeId, layer: LayerIdx) -> Option<Arc<OwnedFd>> {
        let fd = self
            .shard(ino)
            .lock()
            .get(&(ino, layer))
            .map(|c| Arc::clone(&c.fd));
        self.lookups.record(fd.is_some());
        fd
    }

    /// Its size, capacity and hit counts.
    pub(crate) fn stats(&self) -> crate::stats::CacheStats {
        shard_stats(&self.shards, &self.lookups)
    }

    /// Caches `fd` as node `ino`'s directory in layer `layer` if `still()` (returned), which is asked
    /// under the lock [`DirFdCache::drop_node`] takes: a caller that changes what `still`
    /// reads before it drops the node's fds never finds this fd cached after.
    pub(crate) fn put_if(
        &self,
        ino: NodeId,
        layer: LayerIdx,
        fd: Arc<OwnedFd>,
        still: impl FnOnce() -> bool,
    ) -> bool {
        let mut shard = self.shard(ino).lock();
        let still = still();
        if still {
            shard.put(
                (ino, layer),
                Cached {
                    fd,
                    facts: Facts::default(),
                },
            );
        }
        still
    }

    /// What `get` reads of the facts known of the directory cached as `fd` (none once
    /// another fd took its place).
    pub(crate) fn fact<T>(
        &self,
        ino: NodeId,
        layer: LayerIdx,
        fd: &Arc<OwnedFd>,
        get: impl FnOnce(&Facts) -> Option<T>,
    ) -> Option<T> {
        let shard = self.shard(ino).lock();
        let c = shard.peek(&(ino, layer))?;
        if Arc::ptr_eq(&c.fd, fd) {
            get(&c.facts)
        } else {
            None
        }
    }

    /// Records a fact (`set`) of the directory cached as `fd`.
    pub(crate) fn set_fact(
        &self,
        ino: NodeId,
        layer: LayerIdx,
        fd: &Arc<OwnedFd>,
        set: impl FnOnce(&mut Facts),
    ) {
        if let Some(c) = self.shard(ino).lock().peek_mut(&(ino, layer)) {
            if Arc::ptr_eq(&c.fd, fd) {
                set(&mut c.facts);
            }
        }
    }

    /// Forgets every fd of node `ino` (the node was dropped, or its directory replaced).
    pub(crate) fn drop_node(&self, ino: NodeId, layers: usize) {
        let mut shard = self.shard(ino).lock();
        for l in 0..layers {
            shard.pop(&(ino, l as LayerIdx));
        }
    }
}

impl crate::sys::FdReclaim for DirFdCache {
    /// Drops the older half of every shard.
    fn reclaim(&self) -> usize {
        let mut freed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock();
            for _ in 0..shard.len().div_ceil(2) {
                if shard.pop_lru().is_some() {
                    freed += 1;
                }
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sys::FdReclaim;

    fn fd() -> Arc<OwnedFd> {
        Arc::new(OwnedFd::from(std::fs::File::open("/").unwrap()))
    }

    #[test]
    fn reclaim_drops_the_older_half() {
        let c = DirFdCache::new(SHARDS * 64);
        for ino in 0..64 {
            c.put_if(NodeId::from_wire(ino), 0, fd(), || true);
        }
        let freed = c.reclaim();
        assert!(freed >= 32, "freed {freed}");
        let kept = (0..64)
            .filter(|i| c.get(NodeId::from_wire(*i), 0).is_some())
            .count();
        assert_eq!(kept + freed, 64);
    }

    #[test]
    fn capacity_follows_the_fd_limit() {
        let limit = crate::sys::nofile_limit();
        let c = DirFdCache::new(usize::MAX);
        let cap: usize = c.shards.iter().map(|s| s.lock().cap().get()).sum();
        assert!(
            cap as u64 <= (limit / SHARE_OF_FD_LIMIT).max(SHARDS as u64),
            "{cap} for {limit}"
        );
    }
}

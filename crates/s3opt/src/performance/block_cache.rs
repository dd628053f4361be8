//! The block cache every [`ObjectReader`](crate::performance::reader::ObjectReader) of a
//! client shares: fixed-size, aligned blocks of object data, bounded in bytes, least
//! recently used evicted first, with hit/miss counters read from real lookups.
//!
//! Blocks are keyed by an object identity (bucket, key, size and, when known, a version tag
//! such as the ETag, so a rewritten object never serves stale blocks) and a block index.
//! Bytes of prefetches in flight are reserved here too, so cached plus in-flight read data
//! stays within one bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use serde::Serialize;

/// Size of a cache block: the smallest GET a reader makes (less at the object's end).
pub const BLOCK_SIZE: u64 = 16 * 1024;

/// Which object a block belongs to: bucket, key, size and version tag (ETag), joined.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId(Arc<str>);

impl ObjectId {
    /// Identity of `bucket/key` with `size` bytes and, if known, a version tag (ETag).
    pub fn new(bucket: &str, key: &str, size: u64, version: Option<&str>) -> Self {
        Self(format!("{bucket}\0{key}\0{size}\0{}", version.unwrap_or_default()).into())
    }
}

/// Counters of a cache, measured from lookups and inserts.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CacheStats {
    /// Block lookups answered from the cache.
    pub hits: u64,
    /// Block lookups that had to go to S3 (or wait for a prefetch).
    pub misses: u64,
    /// Blocks evicted to stay within capacity.
    pub evictions: u64,
    /// Bytes cached now.
    pub bytes: u64,
    /// Most bytes the cache holds (cached plus reserved for prefetches in flight).
    pub capacity: u64,
    /// Bytes reserved for prefetches in flight now.
    pub reserved: u64,
    /// Size of one block.
    pub block_size: u64,
}

struct Entry {
    data: Bytes,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(ObjectId, u64), Entry>,
    /// Last-use tick -> block, oldest first.
    lru: BTreeMap<u64, (ObjectId, u64)>,
    tick: u64,
    bytes: u64,
    reserved: u64,
}

/// A bounded, shared LRU cache of object blocks.
pub struct BlockCache {
    inner: std::sync::Mutex<Inner>,
    block_size: u64,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl BlockCache {
    /// A cache of at most `capacity` bytes in blocks of `block_size` bytes.
    pub fn new(capacity: u64, block_size: u64) -> Self {
        assert!(block_size > 0, "block size must be positive");
        Self {
            inner: std::sync::Mutex::new(Inner::default()),
            block_size,
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Size of one block.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Most bytes held.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Looks a block up, counting a hit or a miss, and marks it recently used.
    pub fn get(&self, object: &ObjectId, index: u64) -> Option<Bytes> {
        let found = self.peek(object, index);
        match found {
            Some(_) => self.hits.fetch_add(1, Relaxed),
            None => self.misses.fetch_add(1, Relaxed),
        };
        found
    }

    /// Looks a block up without counting (marks it recently used).
    pub fn peek(&self, object: &ObjectId, index: u64) -> Option<Bytes> {
        let mut g = self.inner.lock().expect("cache lock");
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let key = (object.clone(), index);
        let entry = inner.map.get_mut(&key)?;
        inner.lru.remove(&entry.tick);
        entry.tick = tick;
        inner.lru.insert(tick, key);
        Some(entry.data.clone())
    }

    /// Stores a block (replacing any older copy), evicting the least recently used blocks
    /// to stay within capacity. A block larger than the whole capacity is not stored.
    pub fn insert(&self, object: &ObjectId, index: u64, data: Bytes) {
        let len = data.len() as u64;
        if len > self.capacity {
            return;
        }
        let mut g = self.inner.lock().expect("cache lock");
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let key = (object.clone(), index);
        if let Some(old) = inner.map.remove(&key) {
            inner.lru.remove(&old.tick);
            inner.bytes -= old.data.len() as u64;
        }
        inner.bytes += len;
        inner.lru.insert(tick, key.clone());
        inner.map.insert(key, Entry { data, tick });
        self.evict(inner);
    }

    /// Reserves `n` bytes for a prefetch in flight if cached plus reserved bytes can make
    /// room for it (by evicting cached blocks) without passing `limit` reserved bytes.
    /// Returns whether the reservation was made; release it with [`BlockCache::release`].
    pub fn try_reserve(&self, n: u64, limit: u64) -> bool {
        let mut g = self.inner.lock().expect("cache lock");
        let inner = &mut *g;
        if inner.reserved + n > limit.min(self.capacity) {
            return false;
        }
        inner.reserved += n;
        self.evict(inner);
        true
    }

    /// Gives back a reservation.
    pub fn release(&self, n: u64) {
        let mut g = self.inner.lock().expect("cache lock");
        g.reserved = g.reserved.saturating_sub(n);
    }

    fn evict(&self, inner: &mut Inner) {
        while inner.bytes + inner.reserved > self.capacity {
            let Some((_, key)) = inner.lru.pop_first() else { break };
            if let Some(old) = inner.map.remove(&key) {
                inner.bytes -= old.data.len() as u64;
                self.evictions.fetch_add(1, Relaxed);
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let g = self.inner.lock().expect("cache lock");
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            bytes: g.bytes,
            capacity: self.capacity,
            reserved: g.reserved,
            block_size: self.block_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    #[test]
    fn counts_hits_and_misses() {
        let cache = BlockCache::new(1024, 100);
        let obj = ObjectId::new("b", "k", 1000, None);
        assert!(cache.get(&obj, 0).is_none());
        cache.insert(&obj, 0, block(100, 7));
        assert_eq!(cache.get(&obj, 0).unwrap()[0], 7);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.bytes), (1, 1, 100));
    }

    #[test]
    fn evicts_least_recently_used_to_stay_within_capacity() {
        let cache = BlockCache::new(300, 100);
        let obj = ObjectId::new("b", "k", 1000, None);
        for i in 0..3 {
            cache.insert(&obj, i, block(100, i as u8));
        }
        // Touch block 0 so block 1 is the oldest.
        assert!(cache.peek(&obj, 0).is_some());
        cache.insert(&obj, 3, block(100, 3));
        assert!(cache.peek(&obj, 1).is_none(), "oldest block evicted");
        assert!(cache.peek(&obj, 0).is_some());
        assert!(cache.peek(&obj, 3).is_some());
        let s = cache.stats();
        assert_eq!((s.bytes, s.evictions), (300, 1));
    }

    #[test]
    fn different_versions_of_an_object_do_not_share_blocks() {
        let cache = BlockCache::new(1024, 100);
        let v1 = ObjectId::new("b", "k", 1000, Some("\"e1\""));
        let v2 = ObjectId::new("b", "k", 1000, Some("\"e2\""));
        cache.insert(&v1, 0, block(100, 1));
        assert!(cache.peek(&v2, 0).is_none());
    }

    #[test]
    fn reservations_evict_cached_blocks_and_are_bounded() {
        let cache = BlockCache::new(300, 100);
        let obj = ObjectId::new("b", "k", 1000, None);
        for i in 0..3 {
            cache.insert(&obj, i, block(100, 0));
        }
        assert!(cache.try_reserve(200, 200));
        assert_eq!(cache.stats().bytes, 100, "two blocks made room for the reservation");
        assert!(!cache.try_reserve(1, 200), "limit on reserved bytes");
        cache.release(200);
        assert!(cache.try_reserve(250, 1000));
        assert_eq!(cache.stats().bytes, 0);
        assert_eq!(cache.stats().reserved, 250);
    }

    #[test]
    fn replacing_a_block_keeps_the_byte_count_right() {
        let cache = BlockCache::new(1000, 100);
        let obj = ObjectId::new("b", "k", 1000, None);
        cache.insert(&obj, 0, block(100, 0));
        cache.insert(&obj, 0, block(50, 0));
        assert_eq!(cache.stats().bytes, 50);
    }
}

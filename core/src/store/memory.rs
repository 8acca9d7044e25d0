//! The bounded, sharded in-memory store.
//!
//! Keys arrive as 64-bit fingerprints (a randomly seeded hash of the key bytes, see
//! `Limiter`), so an entry is `(u64, V)`: 16 bytes for the GCRA fast path, whatever
//! the key's length. The map is split into shards (a power of two), each a
//! `crossbeam_utils::sync::ShardedLock` (one reader lock per core, so readers on
//! different cores never touch the same cache line) over two hashbrown tables, the *young* and the *old*
//! generation:
//!
//! - a lookup takes the shard's read lock, finds the key in `young` and hands its
//!   value (atomics) to the caller: no write lock, no allocation;
//! - a new key, or one found in `old`, takes the shard's write lock and is put in
//!   `young` (moved out of `old`);
//! - when `young` holds `gen_cap` keys, the shard *rotates*: `old` is dropped
//!   whole and `young` becomes `old`. Keys not touched for a whole generation go:
//!   an approximate LRU in O(1), with no background thread and no scan. This only
//!   happens when the store is full, and may forget a key that still had state;
//! - when `idle_ns` has passed since the last rotation, the shard also rotates on
//!   its next write: every key still in `old` was then idle for at least `idle_ns`
//!   (at least the longest time any quota state matters, and at least 30 s), so
//!   dropping it changes no decision.
//!
//! A shard never holds more than `2 * gen_cap` keys, so the store never holds more
//! than `max_keys`. The only pauses are hashbrown's growth of one shard's table
//! (amortized O(1)) and freeing a dropped generation (O(1) for the fast path,
//! whose values need no drop).

use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use hashbrown::HashTable;

/// Shards rotate by time at most this often (30 s), even when quota state expires
/// sooner: a rotation moves every live key to `old`, and each must then be promoted
/// back on its next use (a write lock), so rotating every few seconds would cost
/// busy keys a slow path each time. Waiting longer only keeps idle keys a little
/// longer, still within `max_keys`; dropping them stays exact.
const MIN_ROTATION_NS: u64 = 30_000_000_000;

/// One shard: two generations of `(fingerprint, value)` entries.
#[derive(Debug)]
struct Shard<V> {
    young: HashTable<(u64, V)>,
    old: HashTable<(u64, V)>,
    /// Time (ns) of the last rotation: every key in `old` was last used before it.
    rotated_at: u64,
}

/// A bounded map from key fingerprints to values.
#[derive(Debug)]
pub(crate) struct MemoryStore<V> {
    shards: Box<[ShardedLock<Shard<V>>]>,
    /// `shards.len() - 1`; the length is a power of two.
    mask: usize,
    /// Most keys one generation of one shard holds.
    gen_cap: usize,
    /// Time-based rotation period: at least the time after which a key's state no
    /// longer matters, and at least MIN_ROTATION_NS.
    idle_ns: u64,
    /// Keys dropped by size rotations (possibly with live state), for stats.
    evicted: StdAtomicU64,
}

/// Heap each shard's `ShardedLock` holds besides the shard: crossbeam's 8 reader
/// locks, each padded to its own cache line (1 KiB a shard on x86_64). Its API
/// does not show them; `core/tests/memory.rs` holds `memory_bytes` to the real
/// heap, so a change in crossbeam's layout fails a test.
const READER_LOCKS_BYTES: usize =
    8 * std::mem::size_of::<crossbeam_utils::CachePadded<std::sync::RwLock<()>>>();

/// The shard index comes from bits 32.. of the fingerprint, leaving hashbrown the low
/// bits (bucket index) and the top 7 (control byte) of the same, uniformly random, value.
#[inline]
fn shard_index(fp: u64, mask: usize) -> usize {
    (fp >> 32) as usize & mask
}

/// Read access. A panic is never raised while a shard is locked, so poisoning
/// cannot happen; if it somehow did, the data is still consistent (every update is
/// a single table operation), so it is used as is.
#[inline]
fn read<T>(lock: &ShardedLock<T>) -> ShardedLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[inline]
fn write<T>(lock: &ShardedLock<T>) -> ShardedLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[inline]
fn fingerprint_of<V>(entry: &(u64, V)) -> u64 {
    entry.0
}

impl<V> MemoryStore<V> {
    /// A store holding at most `max_keys` keys (>= 1) in `shards` shards (rounded to a
    /// power of two and lowered so each generation holds at least 32 keys).
    pub(crate) fn new(max_keys: usize, shards: usize, idle_ns: u64) -> Self {
        let mut count = shards.clamp(1, 4096).next_power_of_two();
        while count > 1 && max_keys / (2 * count) < 32 {
            count /= 2;
        }
        let gen_cap = (max_keys / (2 * count)).max(1);
        let shards = (0..count)
            .map(|_| {
                ShardedLock::new(Shard {
                    young: HashTable::new(),
                    old: HashTable::new(),
                    rotated_at: 0,
                })
            })
            .collect();
        Self {
            shards,
            mask: count - 1,
            gen_cap,
            idle_ns: idle_ns.max(MIN_ROTATION_NS),
            evicted: StdAtomicU64::new(0),
        }
    }

    #[inline]
    fn shard(&self, fp: u64) -> &ShardedLock<Shard<V>> {
        #[allow(clippy::indexing_slicing)] // shard_index() <= mask = len - 1
        &self.shards[shard_index(fp, self.mask)]
    }

    /// Runs `f` on the key's value, inserting `init()` first if the key is new.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        fp: u64,
        now: u64,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        let shard = self.shard(fp);
        {
            let guard = read(shard);
            if let Some(entry) = guard.young.find(fp, |e| e.0 == fp) {
                return f(&entry.1);
            }
        }
        self.with_slow(shard, fp, now, init, f)
    }

    #[cold]
    fn with_slow<R>(
        &self,
        shard: &ShardedLock<Shard<V>>,
        fp: u64,
        now: u64,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        let mut guard = write(shard);
        let s = &mut *guard;
        if now.saturating_sub(s.rotated_at) >= self.idle_ns {
            // Everything in `old` has been idle for >= idle_ns: forgetting it is exact.
            s.old = std::mem::replace(&mut s.young, HashTable::new());
            s.rotated_at = now;
        }
        if let Some(entry) = s.young.find(fp, |e| e.0 == fp) {
            return f(&entry.1);
        }
        let value = match s.old.find_entry(fp, |e| e.0 == fp) {
            Ok(entry) => entry.remove().0.1,
            Err(_) => init(),
        };
        if s.young.len() >= self.gen_cap {
            // The new young table grows as keys arrive (amortized O(1)): preallocating
            // gen_cap would double memory for a store that only just reached its cap.
            let dropped = std::mem::replace(&mut s.young, HashTable::new());
            let dropped = std::mem::replace(&mut s.old, dropped);
            // Relaxed: a statistics counter, read without ordering needs.
            self.evicted
                .fetch_add(dropped.len() as u64, StdOrdering::Relaxed);
            s.rotated_at = s.rotated_at.max(now);
        }
        let entry = s.young.insert_unique(fp, (fp, value), fingerprint_of);
        f(&entry.get().1)
    }

    /// Runs `f` on the key's value if the key is held, without inserting it.
    pub(crate) fn read<R>(&self, fp: u64, f: impl FnOnce(Option<&V>) -> R) -> R {
        let guard = read(self.shard(fp));
        let found = guard
            .young
            .find(fp, |e| e.0 == fp)
            .or_else(|| guard.old.find(fp, |e| e.0 == fp));
        f(found.map(|e| &e.1))
    }

    /// Forgets the key; true if it was held.
    pub(crate) fn remove(&self, fp: u64) -> bool {
        let mut guard = write(self.shard(fp));
        let s = &mut *guard;
        let young = s
            .young
            .find_entry(fp, |e| e.0 == fp)
            .map(|e| e.remove())
            .is_ok();
        let old = s
            .old
            .find_entry(fp, |e| e.0 == fp)
            .map(|e| e.remove())
            .is_ok();
        young || old
    }

    /// Keys held (takes each shard's read lock in turn: O(shards)).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let g = read(s);
                g.young.len() + g.old.len()
            })
            .sum()
    }

    /// Bytes allocated by the tables and shards, their locks included (not by
    /// values' own heap data).
    pub(crate) fn table_bytes(&self) -> usize {
        let tables: usize = self
            .shards
            .iter()
            .map(|s| {
                let g = read(s);
                g.young.allocation_size() + g.old.allocation_size()
            })
            .sum();
        tables + std::mem::size_of_val(&*self.shards) + self.shards.len() * READER_LOCKS_BYTES
    }

    /// The most keys this store ever holds.
    pub(crate) fn capacity(&self) -> usize {
        2 * self.gen_cap * self.shards.len()
    }

    /// Keys dropped because the store was full (they may have had live state).
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(StdOrdering::Relaxed)
    }

    /// Calls `f` with every key held and its value, one shard at a time (each
    /// under its read lock: other shards stay free). Keys changed meanwhile in
    /// shards already visited are seen as they were.
    #[cfg_attr(not(feature = "policy"), allow(dead_code))] // a policy reload's carry-over
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, &V)) {
        for shard in self.shards.iter() {
            let g = read(shard);
            for (fp, v) in g.young.iter().chain(g.old.iter()) {
                f(*fp, v);
            }
        }
    }

    /// Forgets every key.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut g = write(shard);
            g.young = HashTable::new();
            g.old = HashTable::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn never_holds_more_than_capacity() {
        let store: MemoryStore<u64> = MemoryStore::new(1_000, 8, u64::MAX);
        assert!(store.capacity() <= 1_000);
        for fp in 0..100_000u64 {
            let fp = fp.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            store.with(fp, 0, || fp, |v| assert_eq!(*v, fp));
            assert!(store.len() <= store.capacity());
        }
        assert!(store.evicted() > 90_000);
    }

    #[test]
    fn hot_keys_survive_rotation() {
        let store: MemoryStore<u64> = MemoryStore::new(256, 1, u64::MAX);
        let hot = 42u64;
        store.with(hot, 0, || 7, |_| ());
        for fp in 1000..100_000u64 {
            store.with(fp, 0, || 0, |_| ());
            if fp % 50 == 0 {
                // Touching it moves it back to the young generation.
                store.with(hot, 0, || 0, |v| assert_eq!(*v, 7));
            }
        }
    }

    #[test]
    fn idle_keys_expire_after_idle_time() {
        // State lifetime 100 ns, but shards rotate at most every MIN_ROTATION_NS, and
        // only on a write (a new key or a promotion).
        const P: u64 = MIN_ROTATION_NS;
        let store: MemoryStore<u64> = MemoryStore::new(1_000_000, 1, 100);
        store.with(1, 0, || 1, |_| ());
        store.with(2, P / 2, || 2, |_| ()); // too soon to rotate
        store.with(4, P + 50, || 4, |_| ()); // first rotation: 1 and 2 move to old
        store.read(1, |v| {
            assert!(v.is_some(), "one rotation only moves keys to old")
        });
        store.with(2, P + 60, || 0, |_| ()); // 2 is promoted back to young
        store.with(3, 2 * P + 100, || 3, |_| ()); // second rotation: old (key 1) dropped
        let inits = Cell::new(0);
        store.read(1, |v| {
            assert!(v.is_none(), "idle for two rotations: dropped")
        });
        store.with(
            2,
            2 * P + 110,
            || {
                inits.set(1);
                0
            },
            |v| assert_eq!(*v, 2),
        );
        assert_eq!(inits.get(), 0, "key 2 was promoted, not re-created");
        assert_eq!(store.evicted(), 0, "idle expiry is not eviction");
    }

    #[test]
    fn remove_and_clear() {
        let store: MemoryStore<u64> = MemoryStore::new(100, 1, u64::MAX);
        store.with(5, 0, || 5, |_| ());
        assert!(store.remove(5));
        assert!(!store.remove(5));
        store.with(6, 0, || 6, |_| ());
        store.clear();
        assert_eq!(store.len(), 0);
    }
}

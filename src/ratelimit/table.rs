//! Sharded, bounded key → state table shared by the exact per-key algorithms.
//!
//! Each key's whole state is one `AtomicU64` cell, so a decision for a key already present
//! takes only the shard's read lock and then runs the algorithm's lock-free CAS on the cell.
//! The write lock is taken to insert a new key, and by eviction.
//!
//! Bounding: `len` counts entries over all shards and a slot is reserved in it before every
//! insert, so the table never holds more than `max_keys` entries. When no slot is free, the
//! inserting thread evicts idle entries from its own shard, then from other shards it can
//! lock without waiting, until a slot frees. Every shard keeps an `evictable_at` hint (a
//! lower bound of its entries' idle times): a shard is scanned (O(max_keys/64)) only when it
//! may hold an idle entry, and when no hint has passed the insert path does not even take a
//! write lock, so a flood of new keys against a full table costs O(64) hint loads each.
//! A key that still finds no slot is decided against the single shared *overflow* cell: all
//! keys that cannot be tracked share one key's quota, so untracked traffic stays limited in
//! aggregate (never fails open) and tracked keys keep their exact state (no LRU churn an
//! attacker could use to reset a victim's quota).

use super::key::{PassThroughBuild, Probe, StoredKey};
use super::{Decision, Key};
use ahash::RandomState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// 64 shards: on a many-core edge box, reads of different keys rarely share a lock word.
const SHARDS: usize = 64;

/// The overflow cell's stand-in hash (only fixed-window phase depends on it).
const OVERFLOW_HASH: u64 = 0;

/// An algorithm whose entire per-key state fits in one `u64` cell.
pub(crate) trait CellAlgo {
    /// Cell value of a key never seen before; it must count as idle.
    const FRESH: u64;
    /// Decide one request against `cell` at `now` (ns since the limiter's epoch).
    fn decide(&self, cell: &AtomicU64, now: i64, hash: u64) -> Decision;
    /// The earliest time from which `cell` behaves exactly like `FRESH` if nothing else
    /// hits it; `<= now` means idle now, so dropping the entry cannot change any decision.
    fn idle_from(&self, cell: u64, now: i64, hash: u64) -> i64;
}

type Map = HashMap<StoredKey, AtomicU64, PassThroughBuild>;

// Padded to two cache lines so neighbouring shards' lock words never share a line.
#[repr(align(128))]
struct Shard {
    map: RwLock<Map>,
    /// Lower bound of every entry's `idle_from`; a scan before it cannot free anything.
    evictable_at: AtomicI64,
}

pub(crate) struct Table<A> {
    algo: A,
    seed: RandomState,
    shards: Box<[Shard]>,
    len: AtomicUsize,
    max_keys: usize,
    overflow: AtomicU64,
    overflow_decisions: AtomicU64,
}

// The maps hold only plain data and every critical section leaves them consistent, so a
// panic elsewhere while a guard was held is no reason to stop rate limiting.
fn read(lock: &RwLock<Map>) -> RwLockReadGuard<'_, Map> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<Map>) -> RwLockWriteGuard<'_, Map> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl<A: CellAlgo> Table<A> {
    pub(crate) fn new(algo: A, max_keys: usize) -> Self {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                map: RwLock::new(Map::default()),
                evictable_at: AtomicI64::new(i64::MAX),
            })
            .collect();
        Table {
            algo,
            seed: RandomState::new(),
            shards,
            len: AtomicUsize::new(0),
            max_keys,
            overflow: AtomicU64::new(A::FRESH),
            overflow_decisions: AtomicU64::new(0),
        }
    }

    fn shard_index(hash: u64) -> usize {
        // Bits 32.. pick the shard: hashbrown uses the low bits for the bucket index and the
        // top 7 for its tag, so this leaves both uniformly distributed inside a shard.
        (hash >> 32) as usize % SHARDS
    }

    pub(crate) fn check(&self, key: Key<'_>, now: i64) -> Decision {
        let probe = Probe {
            hash: self.seed.hash_one(key),
            key,
        };
        let index = Self::shard_index(probe.hash);
        if let Some(cell) = read(&self.shards[index].map).get(probe.as_lookup()) {
            return self.algo.decide(cell, now, probe.hash);
        }
        self.insert_and_check(index, probe, now)
    }

    #[cold]
    fn insert_and_check(&self, index: usize, probe: Probe<'_>, now: i64) -> Decision {
        // Full with nothing evictable yet: answer without the write lock, so a flood of new
        // keys does not serialize on shard locks. Racy, but only ever sends to overflow a
        // key that a concurrent thread has just inserted or made room for.
        if self.len.load(Relaxed) >= self.max_keys && !self.any_evictable(now) {
            return self.overflow(now);
        }
        let shard = &self.shards[index];
        let mut map = write(&shard.map);
        // Another thread may have inserted the key between our read and write lock.
        if let Some(cell) = map.get(probe.as_lookup()) {
            return self.algo.decide(cell, now, probe.hash);
        }
        if !self.reserve_slot() {
            self.evict_for_insert(&mut map, index, now);
            if !self.reserve_slot() {
                drop(map);
                return self.overflow(now);
            }
        }
        let cell = AtomicU64::new(A::FRESH);
        let decision = self.algo.decide(&cell, now, probe.hash);
        let idle_from = self.algo.idle_from(cell.load(Relaxed), now, probe.hash);
        shard.evictable_at.fetch_min(idle_from, Relaxed);
        map.insert(probe.to_stored(), cell);
        decision
    }

    fn overflow(&self, now: i64) -> Decision {
        self.overflow_decisions.fetch_add(1, Relaxed);
        self.algo.decide(&self.overflow, now, OVERFLOW_HASH)
    }

    fn any_evictable(&self, now: i64) -> bool {
        self.shards
            .iter()
            .any(|s| now >= s.evictable_at.load(Relaxed))
    }

    /// Frees at least one slot if any shard holds an idle entry: the caller's own shard
    /// first (its write lock is held), then the others.
    fn evict_for_insert(&self, own: &mut Map, index: usize, now: i64) {
        let shard = &self.shards[index];
        if now >= shard.evictable_at.load(Relaxed) && self.evict_idle(own, shard, now) > 0 {
            return;
        }
        for i in 1..SHARDS {
            let other = &self.shards[(index + i) % SHARDS];
            if now < other.evictable_at.load(Relaxed) {
                continue;
            }
            // Never block here: we hold our own shard's write lock, and a thread doing the
            // same from that other shard would deadlock with us.
            let mut map = match other.map.try_write() {
                Ok(map) => map,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            if self.evict_idle(&mut map, other, now) > 0 {
                return;
            }
        }
    }

    fn reserve_slot(&self) -> bool {
        self.len
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max_keys).then_some(n + 1))
            .is_ok()
    }

    /// Drops every idle entry of one shard (caller holds its write lock) and re-arms the hint.
    fn evict_idle(&self, map: &mut Map, shard: &Shard, now: i64) -> usize {
        let before = map.len();
        let mut next = i64::MAX;
        map.retain(|key, cell| {
            let at = self.algo.idle_from(*cell.get_mut(), now, key.hash64());
            if at <= now {
                return false;
            }
            next = next.min(at);
            true
        });
        shard.evictable_at.store(next, Relaxed);
        let evicted = before - map.len();
        self.len.fetch_sub(evicted, Relaxed);
        evicted
    }

    /// Evicts idle entries from every shard that may hold one; returns how many.
    pub(crate) fn sweep(&self, now: i64) -> usize {
        let mut evicted = 0;
        for shard in &*self.shards {
            // A stale hint only postpones eviction to a later sweep; it never evicts wrongly.
            if now < shard.evictable_at.load(Relaxed) {
                continue;
            }
            let mut map = write(&shard.map);
            evicted += self.evict_idle(&mut map, shard, now);
            // Give back memory after a flood; amortised, since it needs len <= capacity/4.
            let len = map.len();
            if map.capacity() > 64 && len <= map.capacity() / 4 {
                map.shrink_to(len * 2);
            }
        }
        evicted
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    pub(crate) fn overflow_decisions(&self) -> u64 {
        self.overflow_decisions.load(Relaxed)
    }
}

#[cfg(test)]
impl<A: CellAlgo> Table<A> {
    /// Entries actually held by the maps, to check `len` against ground truth.
    pub(crate) fn counted_len(&self) -> usize {
        self.shards.iter().map(|s| read(&s.map).len()).sum()
    }
}

//! Per-key sequence state: where each key's dense sequence comes from.
//!
//! In **tracked** mode walcast assigns the sequence. The durable state of a key is the
//! last message of its subject in the JetStream stream (its envelope's `sequence` and
//! the `Walcast-Position` header: the WAL position of the change that got it). This
//! module keeps a bounded LRU cache of that state; a miss is loaded from the stream by
//! the caller. Entries whose change is not yet acknowledged are never evicted, so a
//! reload can never see an older state than the one handed out.
//!
//! A change at or before the stored position of its key is a replay of something
//! already published: it is recognised and not given a new sequence.
//!
//! In **column** mode the sequence is a column of the row, kept by the trigger in
//! `sql/sequence_column.sql`.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use lru::LruCache;

pub use crate::wire::Position;

/// What is known of a key's last published change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    pub sequence: u64,
    pub position: Position,
    /// The key's last envelope is a `delete`.
    pub deleted: bool,
}

/// Where a table's sequence comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceMode {
    /// walcast assigns it; state is loaded from the stream on a cache miss.
    Tracked,
    /// walcast assigns it from memory only (no JetStream): not durable across
    /// restarts. Only with `--volatile-sequences`.
    Volatile,
    /// The value of this column (insert 1, update old + 1; a delete carries old + 1).
    Column(String),
}

/// Result of looking a key up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Known (or known to be new).
    Known(Option<KeyState>),
    /// Not in memory: load it from the stream first.
    Missing,
}

/// Bounded LRU of key states; unacknowledged entries are pinned.
#[derive(Debug)]
pub struct KeyStateCache {
    entries: LruCache<String, Option<KeyState>, RandomState>,
    capacity: usize,
    /// Changes at or before this position are acknowledged by the sink.
    acked: Position,
    /// Whether a miss means "new key" (volatile) or "load it" (tracked).
    authoritative: bool,
}

impl KeyStateCache {
    /// `authoritative`: the cache is the only state (volatile mode), so a miss is a
    /// new key.
    pub fn new(capacity: usize, authoritative: bool) -> Self {
        KeyStateCache {
            entries: LruCache::unbounded_with_hasher(RandomState::default()),
            capacity: capacity.max(1),
            acked: Position::default(),
            authoritative,
        }
    }

    pub fn lookup(&mut self, key: &str) -> Lookup {
        match self.entries.get(key) {
            Some(state) => Lookup::Known(*state),
            None if self.authoritative => Lookup::Known(None),
            None => Lookup::Missing,
        }
    }

    /// Whether a lookup of `key` would be `Missing` (no recency change).
    pub fn needs_load(&self, key: &str) -> bool {
        !self.authoritative && !self.entries.contains(key)
    }

    /// The most states kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Record the state loaded from the stream (`None`: the key has no message).
    pub fn loaded(&mut self, key: String, state: Option<KeyState>) {
        self.entries.put(key, state);
        self.evict();
    }

    /// Record a newly assigned sequence.
    pub fn assigned(&mut self, key: &str, state: KeyState) {
        match self.entries.get_mut(key) {
            Some(slot) => *slot = Some(state),
            None => {
                self.entries.put(key.to_string(), Some(state));
            }
        }
        self.evict();
    }

    /// Every change at or before `position` is acknowledged downstream.
    pub fn acknowledged(&mut self, position: Position) {
        self.acked = self.acked.max(position);
        self.evict();
    }

    fn evict(&mut self) {
        if self.authoritative {
            return; // the only copy of the state: never dropped
        }
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.entries.peek_lru() else {
                break;
            };
            let acked = oldest.is_none_or(|s| s.position <= self.acked);
            if !acked {
                break; // pinned until the sink confirms it
            }
            self.entries.pop_lru();
        }
    }
}

/// A Bloom filter of the subjects that have (or may have) a message in the stream.
/// A key whose subject is not in it has never been published: it starts at sequence
/// 1 without a round-trip to the stream. False positives only cost a load.
#[derive(Debug, Clone)]
pub struct SubjectFilter {
    bits: Vec<u64>,
    hashes: u32,
    /// Seeded per process: the filter lives in memory only.
    hasher: RandomState,
}

impl SubjectFilter {
    /// Sized for `expected` subjects at about 1 % false positives.
    pub fn with_capacity(expected: usize) -> Self {
        let bits = (expected.max(1024) as f64 * 9.6).ceil() as usize;
        SubjectFilter {
            bits: vec![0; bits.div_ceil(64)],
            hashes: 7,
            hasher: RandomState::default(),
        }
    }

    /// The bit positions of `subject`: double hashing from one 64-bit hash, the
    /// second one derived by a SplitMix64 finaliser.
    fn positions(&self, subject: &str) -> impl Iterator<Item = usize> {
        let h1 = self.hasher.hash_one(subject.as_bytes());
        let mut h2 = h1 ^ 0x9E37_79B9_7F4A_7C15;
        h2 = (h2 ^ (h2 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h2 = (h2 ^ (h2 >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let h2 = (h2 ^ (h2 >> 31)) | 1;
        let m = (self.bits.len() * 64) as u64;
        (0..u64::from(self.hashes)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % m) as usize)
    }

    pub fn insert(&mut self, subject: &str) {
        for p in self.positions(subject) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    pub fn may_contain(&self, subject: &str) -> bool {
        self.positions(subject)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Lsn;

    fn st(seq: u64, lsn: u64) -> KeyState {
        KeyState {
            sequence: seq,
            position: Position {
                commit_lsn: Lsn(lsn),
                ordinal: 0,
            },
            deleted: false,
        }
    }

    #[test]
    fn positions_order_and_round_trip() {
        let a = Position {
            commit_lsn: Lsn(10),
            ordinal: 5,
        };
        let b = Position {
            commit_lsn: Lsn(11),
            ordinal: 0,
        };
        assert!(a < b);
        assert_eq!(Position::from_header(&a.to_header()), Some(a));
        assert_eq!(Position::from_header("x"), None);
    }

    #[test]
    fn evicts_only_acknowledged_entries() {
        let mut c = KeyStateCache::new(2, false);
        assert_eq!(c.lookup("a"), Lookup::Missing);
        c.loaded("a".into(), None);
        assert_eq!(c.lookup("a"), Lookup::Known(None));
        c.assigned("a", st(1, 100));
        c.assigned("b", st(1, 200));
        c.assigned("c", st(1, 300));
        // Nothing acknowledged: all three pinned, over capacity.
        assert_eq!(c.entries.len(), 3);
        c.acknowledged(Position {
            commit_lsn: Lsn(250),
            ordinal: 0,
        });
        // a and b are acknowledged; the least recently used goes first.
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.lookup("a"), Lookup::Missing);
        assert_eq!(c.lookup("c"), Lookup::Known(Some(st(1, 300))));
    }

    #[test]
    fn volatile_cache_treats_misses_as_new_keys() {
        let mut c = KeyStateCache::new(1, true);
        assert_eq!(c.lookup("x"), Lookup::Known(None));
        c.assigned("x", st(1, 1));
        c.assigned("y", st(1, 2));
        assert_eq!(c.entries.len(), 2);
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut f = SubjectFilter::with_capacity(10_000);
        for i in 0..10_000 {
            f.insert(&format!("walcast.public.t.{i}"));
        }
        assert!((0..10_000).all(|i| f.may_contain(&format!("walcast.public.t.{i}"))));
        let fp = (10_000..20_000)
            .filter(|i| f.may_contain(&format!("walcast.public.t.{i}")))
            .count();
        assert!(fp < 300, "{fp} false positives of 10000");
    }
}

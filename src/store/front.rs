//! A small direct-mapped table in front of the local store's moka cache, for the keys read
//! most.
//!
//! A moka hit records the read for its eviction policy (a channel send, an LRU reordering,
//! housekeeping every few reads) and checks its own per-entry expiry: together more than
//! the lookup itself. Most reads of a read-heavy service go to a few keys, so their entries
//! are copied here, where a hit is a hash, one slot and a few atomic loads.
//!
//! A copy must never outlive a write or an invalidation of its key. Each slot has a version,
//! bumped after every insert or removal of a key mapped to it; and the table has an epoch,
//! bumped after every removal of a whole class or of everything. A copy records the version
//! and the epoch read *before* its value was looked up in moka, and is used only while both
//! are unchanged. So a copy made from a value that a concurrent write replaced carries an old
//! version, and is never used: once a write or an invalidation has returned, no read that
//! starts afterwards can see what it replaced.
//!
//! One read in [`RECORD_EVERY`] skips the table, so that moka's policy still sees the hot
//! keys as hot and keeps them when it must evict.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};

/// Slots in the table: a few hundred KiB per store, enough for the hot set of most services.
const SLOTS: usize = 4096;

/// One read in this many (per thread) goes to moka, for its eviction policy.
const RECORD_EVERY: u32 = 32;

/// When a slot holds another key's valid copy, one lookup in this many replaces it, so that
/// two hot keys sharing a slot do not replace each other on every read.
const REPLACE_EVERY: u32 = 8;

thread_local! {
    static TICKS: Cell<u32> = const { Cell::new(0) };
}

/// A thread's read counter: spreads the sampled reads without a shared cache line.
fn tick() -> u32 {
    TICKS.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        n
    })
}

struct Copy<K, V> {
    key: K,
    value: V,
    version: u64,
    epoch: u64,
}

struct Slot<K, V> {
    version: AtomicU64,
    copy: ArcSwapOption<Copy<K, V>>,
}

/// Where a read's key lives in the table, and the state it saw before looking anywhere.
pub(crate) struct Ticket {
    slot: usize,
    version: u64,
    epoch: u64,
}

/// A copy found for a key: holds it without touching its reference counts.
pub(crate) struct Found<K, V>(Guard<Option<Arc<Copy<K, V>>>>);

impl<K, V> Found<K, V> {
    pub(crate) fn value(&self) -> Option<&V> {
        self.0.as_ref().map(|c| &c.value)
    }
}

pub(crate) struct Front<K, V, S> {
    slots: Box<[Slot<K, V>]>,
    epoch: AtomicU64,
    hasher: S,
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher> Front<K, V, S> {
    pub(crate) fn new(hasher: S) -> Self {
        Front {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    version: AtomicU64::new(0),
                    copy: ArcSwapOption::const_empty(),
                })
                .collect(),
            epoch: AtomicU64::new(0),
            hasher,
        }
    }

    fn slot_of(&self, key: &K) -> usize {
        // The high bits: the low ones may be what the hasher mixes least.
        (self.hasher.hash_one(key) >> 40) as usize % SLOTS
    }

    /// The state of `key`'s slot, read before the key is looked up anywhere.
    #[inline]
    pub(crate) fn ticket(&self, key: &K) -> Ticket {
        let slot = self.slot_of(key);
        Ticket {
            slot,
            version: self.slots[slot].version.load(Ordering::Acquire),
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    /// The copy of `key`, if there is a valid one and this read is not one of those sampled
    /// for moka's policy.
    #[inline]
    pub(crate) fn get(&self, key: &K, ticket: &Ticket) -> Option<Found<K, V>> {
        if tick() % RECORD_EVERY == 0 {
            return None;
        }
        let copy = self.slots[ticket.slot].copy.load();
        let valid = matches!(&*copy, Some(c) if c.version == ticket.version
            && c.epoch == ticket.epoch
            && c.key == *key);
        valid.then_some(Found(copy))
    }

    /// Keeps a copy of `value`, just read from moka under `ticket`, unless the slot holds
    /// another key's valid copy (then only now and then).
    pub(crate) fn promote(&self, key: &K, value: &V, ticket: &Ticket) {
        let slot = &self.slots[ticket.slot];
        let current = slot.copy.load();
        let occupied = matches!(&*current, Some(c) if c.key != *key
            && c.version == slot.version.load(Ordering::Relaxed)
            && c.epoch == self.epoch.load(Ordering::Relaxed));
        if occupied && tick() % REPLACE_EVERY != 0 {
            return;
        }
        slot.copy.store(Some(Arc::new(Copy {
            key: key.clone(),
            value: value.clone(),
            version: ticket.version,
            epoch: ticket.epoch,
        })));
    }

    /// After `key` was written or removed in moka: voids its copy, and drops it so that the
    /// table never keeps a value alive longer than the store does.
    pub(crate) fn changed(&self, key: &K) {
        let slot = &self.slots[self.slot_of(key)];
        slot.version.fetch_add(1, Ordering::AcqRel);
        let current = slot.copy.load();
        if matches!(&*current, Some(c) if c.key == *key) {
            slot.copy.compare_and_swap(&*current, None);
        }
    }

    /// After a sweep that removed many keys: voids every copy.
    pub(crate) fn changed_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for slot in self.slots.iter() {
            slot.copy.store(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = Front<u32, u64, foldhash::fast::RandomState>;

    fn table() -> Table {
        Front::new(foldhash::fast::RandomState::default())
    }

    /// A read through the table, as the store does it: the copy, else the source (and a
    /// copy of what it gave).
    fn read(front: &Table, source: &std::sync::Mutex<Option<u64>>, key: u32) -> Option<u64> {
        let ticket = front.ticket(&key);
        if let Some(found) = front.get(&key, &ticket) {
            return found.value().copied();
        }
        let value = *source.lock().expect("source");
        if let Some(v) = value {
            front.promote(&key, &v, &ticket);
        }
        value
    }

    #[test]
    fn a_change_voids_the_copy() {
        let front = table();
        let source = std::sync::Mutex::new(Some(1));
        for _ in 0..100 {
            assert_eq!(read(&front, &source, 7), Some(1));
        }
        *source.lock().expect("source") = Some(2);
        front.changed(&7);
        for _ in 0..100 {
            assert_eq!(read(&front, &source, 7), Some(2));
        }
        *source.lock().expect("source") = None;
        front.changed_all();
        assert_eq!(read(&front, &source, 7), None);
    }

    #[test]
    fn no_read_after_a_change_sees_the_value_it_replaced() {
        // A writer publishes 1, 2, 3, … and records each number once its change has
        // returned; readers check that they never see a number older than the last one
        // recorded before they started.
        let front = Arc::new(table());
        let source = Arc::new(std::sync::Mutex::new(Some(0u64)));
        let done = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (front, source, done, reads) =
                    (front.clone(), source.clone(), done.clone(), reads.clone());
                std::thread::spawn(move || {
                    // Holds a count of `reads` until this reader stops, even by a panic.
                    let reads = reads;
                    let mut copies = 0u64;
                    while done.load(Ordering::Acquire) < 20_000 {
                        reads.fetch_add(1, Ordering::AcqRel);
                        let floor = done.load(Ordering::Acquire);
                        let ticket = front.ticket(&7);
                        let seen = match front.get(&7, &ticket) {
                            Some(found) => {
                                copies += 1;
                                found.value().copied()
                            }
                            None => {
                                let v = *source.lock().expect("source");
                                if let Some(v) = v {
                                    front.promote(&7, &v, &ticket);
                                }
                                v
                            }
                        };
                        let seen = seen.expect("always set");
                        assert!(seen >= floor, "read {seen} after {floor} was published");
                    }
                    copies
                })
            })
            .collect();
        let writer = {
            let (front, source, done, reads) =
                (front.clone(), source.clone(), done.clone(), reads.clone());
            std::thread::spawn(move || {
                for n in 1..=20_000u64 {
                    *source.lock().expect("source") = Some(n);
                    front.changed(&7);
                    done.store(n, Ordering::Release);
                    // Let the readers read between changes, so that some are served copies
                    // (not after the last one: they stop once they see it).
                    // Not once every reader has stopped, so that a failed check fails the
                    // test instead of leaving the writer waiting.
                    let before = reads.load(Ordering::Acquire);
                    while n < 20_000
                        && reads.load(Ordering::Acquire) < before + 8
                        && Arc::strong_count(&reads) > 2
                    {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        writer.join().expect("writer");
        let copies: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
        // The check above is only meaningful if some reads went through the table.
        assert!(copies > 0, "no read was served from the table");
    }
}

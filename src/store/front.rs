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
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwapOption, Guard};

/// Slots in the table, two copies each (so that two hot keys sharing a slot both stay):
/// about 100 KiB per store, enough for the hot set of most services.
const SLOTS: usize = 4096;

/// One read in this many (per thread) goes to moka, for its eviction policy.
const RECORD_EVERY: u32 = 32;

/// When a slot holds another key's valid copy, one lookup in this many replaces it, so that
/// two hot keys sharing a slot do not replace each other on every read.
const REPLACE_EVERY: u32 = 8;

thread_local! {
    static TICKS: Cell<u32> = const { Cell::new(0) };
}

/// The clock the table checks deadlines with: the CPU's time-stamp counter where it is
/// reliable (a few nanoseconds a read, against tens for the system clock, which a hit would
/// otherwise read every time), the system's monotonic clock elsewhere.
static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();

fn clock() -> &'static quanta::Clock {
    // Calibrated once per process, when the first store is built: not on a read.
    CLOCK.get_or_init(quanta::Clock::new)
}

/// When a copy stops being fresh, and when it expires, on the table's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    fresh_until: quanta::Instant,
    expires_at: quanta::Instant,
}

impl Deadlines {
    /// The same instants as `fresh_until` and `expires_at`, on the table's clock.
    pub(crate) fn of(fresh_until: Instant, expires_at: Instant) -> Self {
        let (now, std_now) = (clock().now(), Instant::now());
        let left = |at: Instant| at.saturating_duration_since(std_now);
        // Past the clock's range: some 34 years, else expired (a copy is never needed).
        let far = |d: Duration| {
            now.checked_add(d)
                .or_else(|| now.checked_add(Duration::from_secs(1 << 30)))
                .unwrap_or(now)
        };
        Deadlines {
            fresh_until: far(left(fresh_until)),
            expires_at: far(left(expires_at)),
        }
    }
}

/// Where a copy stands now: `None` once expired, else whether it is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stale(pub(crate) bool);

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
    deadlines: Deadlines,
    version: u64,
    epoch: u64,
}

struct Slot<K, V> {
    /// Bumped by a change of any key mapped to the slot: voids both copies.
    version: AtomicU64,
    copies: [ArcSwapOption<Copy<K, V>>; 2],
}

/// Where a read's key lives in the table, and the state it saw before looking anywhere.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    slot: usize,
    version: u64,
    epoch: u64,
}

/// A copy found for a key: holds it without touching its reference counts.
pub(crate) struct Found<K, V>(Guard<Option<Arc<Copy<K, V>>>>);

impl<K, V> Found<K, V> {
    /// The copy's value, unless it has expired; with whether it is stale.
    #[inline]
    pub(crate) fn value(&self) -> Option<(&V, Stale)> {
        let copy = self.0.as_ref()?;
        let now = clock().now();
        (now < copy.deadlines.expires_at)
            .then_some((&copy.value, Stale(now >= copy.deadlines.fresh_until)))
    }
}

pub(crate) struct Front<K, V, S> {
    slots: Box<[Slot<K, V>]>,
    epoch: AtomicU64,
    hasher: S,
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher> Front<K, V, S> {
    pub(crate) fn new(hasher: S) -> Self {
        clock();
        Front {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    version: AtomicU64::new(0),
                    copies: [ArcSwapOption::const_empty(), ArcSwapOption::const_empty()],
                })
                .collect(),
            epoch: AtomicU64::new(0),
            hasher,
        }
    }

    /// The slot `key` maps to (see [`changed_slot`](Self::changed_slot)).
    pub(crate) fn slot_of(&self, key: &K) -> usize {
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

    /// Whether no key of the ticket's slot has changed since it was taken (nor the whole
    /// table): then a moka lookup made after the ticket still holds.
    pub(crate) fn unchanged_since(&self, ticket: &Ticket) -> bool {
        self.slots[ticket.slot].version.load(Ordering::Acquire) == ticket.version
            && self.epoch.load(Ordering::Acquire) == ticket.epoch
    }

    /// The copy of `key`, if there is a valid one and this read is not one of those sampled
    /// for moka's policy.
    #[inline]
    pub(crate) fn get(&self, key: &K, ticket: &Ticket) -> Option<Found<K, V>> {
        if tick() % RECORD_EVERY == 0 {
            return None;
        }
        let slot = &self.slots[ticket.slot];
        let is_it = |copy: &Option<Arc<Copy<K, V>>>| {
            matches!(copy, Some(c) if c.version == ticket.version
                && c.epoch == ticket.epoch
                && c.key == *key)
        };
        let first = slot.copies[0].load();
        if is_it(&first) {
            return Some(Found(first));
        }
        let second = slot.copies[1].load();
        is_it(&second).then_some(Found(second))
    }

    /// Keeps a copy of `value`, just read from moka under `ticket`, unless the slot holds a
    /// valid copy already: of this key (a read sampled for moka's policy), or of another
    /// (then only now and then). `deadlines` is only asked for when a copy is made.
    pub(crate) fn promote(
        &self,
        key: &K,
        value: &V,
        deadlines: impl FnOnce() -> Deadlines,
        ticket: &Ticket,
    ) {
        let slot = &self.slots[ticket.slot];
        let version = slot.version.load(Ordering::Relaxed);
        let epoch = self.epoch.load(Ordering::Relaxed);
        let mut free = None;
        for (i, place) in slot.copies.iter().enumerate() {
            match &*place.load() {
                Some(c) if c.version == version && c.epoch == epoch => {
                    if c.key == *key {
                        return;
                    }
                }
                _ => free = free.or(Some(i)),
            }
        }
        // Both hold other keys' valid copies: replace one now and then, so that a third hot
        // key gets its turn without every read paying for a copy.
        let place = match free {
            Some(i) => i,
            None if tick() % REPLACE_EVERY == 0 => (tick() / REPLACE_EVERY % 2) as usize,
            None => return,
        };
        slot.copies[place].store(Some(Arc::new(Copy {
            key: key.clone(),
            value: value.clone(),
            deadlines: deadlines(),
            version: ticket.version,
            epoch: ticket.epoch,
        })));
    }

    /// After `key` was written or removed in moka: voids its copy.
    pub(crate) fn changed(&self, key: &K) {
        self.changed_slot(self.slot_of(key));
    }

    /// After a key of `slot` was written or removed in moka: the version voids both copies
    /// of the slot, and both are dropped so that the table never keeps a value alive longer
    /// than the store does (a neighbour's copy is made again on its next read).
    pub(crate) fn changed_slot(&self, slot: usize) {
        let slot = &self.slots[slot];
        slot.version.fetch_add(1, Ordering::AcqRel);
        for place in &slot.copies {
            // Most slots of written keys hold no copy (copies are made by reads): a store
            // would cost a swap and a walk of the readers' debts for nothing.
            if place.load().is_some() {
                place.store(None);
            }
        }
    }

    /// After a sweep that removed many keys: voids every copy.
    pub(crate) fn changed_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for slot in self.slots.iter() {
            for place in &slot.copies {
                place.store(None);
            }
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

    fn forever() -> Deadlines {
        let far = Instant::now() + Duration::from_secs(3600);
        Deadlines::of(far, far)
    }

    /// A read through the table, as the store does it: the copy, else the source (and a
    /// copy of what it gave).
    fn read(front: &Table, source: &std::sync::Mutex<Option<u64>>, key: u32) -> Option<u64> {
        let ticket = front.ticket(&key);
        if let Some(found) = front.get(&key, &ticket) {
            return found.value().map(|(v, _)| *v);
        }
        let value = *source.lock().expect("source");
        if let Some(v) = value {
            front.promote(&key, &v, forever, &ticket);
        }
        value
    }

    #[test]
    fn a_copy_expires_and_goes_stale_on_time() {
        let front = table();
        let now = Instant::now();
        let ticket = front.ticket(&1);
        front.promote(
            &1,
            &10,
            || Deadlines::of(now, now + Duration::from_secs(60)),
            &ticket,
        );
        let found = front.get(&1, &ticket).or_else(|| front.get(&1, &ticket));
        let (value, stale) = found
            .as_ref()
            .and_then(Found::value)
            .expect("kept for its grace");
        assert_eq!((*value, stale), (10, Stale(true)));
        // A table of its own: in the first, key 2 might share key 1's slot.
        let front = table();
        let ticket = front.ticket(&2);
        front.promote(&2, &20, || Deadlines::of(now, now), &ticket);
        let found = front.get(&2, &ticket).or_else(|| front.get(&2, &ticket));
        assert!(found.expect("a valid copy").value().is_none(), "expired");
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
                                found.value().map(|(v, _)| *v)
                            }
                            None => {
                                let v = *source.lock().expect("source");
                                if let Some(v) = v {
                                    front.promote(&7, &v, forever, &ticket);
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

//! The local store: the in-process L1 in front of Redis, and the fallback while Redis is down.
//!
//! It holds *decoded* values, so a hit costs a moka lookup, a downcast and a clone — no
//! decoding. One moka cache serves every value type of a [`Cache`](crate::Cache): entries
//! are type-erased, and a lookup with another type than the one stored is simply a miss.
//!
//! Each entry carries its own deadline (TTL plus fail-safe grace) through moka's per-entry
//! expiry, and its tags, so that a tag or class invalidation can reach it here as well as in
//! Redis.
//!
//! Each entry also records when it was written. With several instances, an entry is only as
//! good as the invalidation messages this instance received since it was written (see the
//! backplane in `coherence`); when the channel has a gap, every entry written before the
//! gap ended is *suspect*. Marking them is one atomic store of a watermark — no sweep — and a
//! read compares the entry's write time with it.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;
use moka::Expiry;

use super::front::{Deadlines, Front, Stale, Ticket};
use super::tag_index::TagIndex;
use crate::key::Key;
use crate::model::ClassId;

/// How big the local store may grow.
///
/// ```
/// use stormcache::LocalCapacity;
/// let by_count = LocalCapacity::Entries(100_000);
/// let by_size = LocalCapacity::Bytes(256 * 1024 * 1024);
/// # let _ = (by_count, by_size);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalCapacity {
    /// At most this many entries.
    Entries(u64),
    /// At most about this many bytes: the encoded size of each value plus its key and a
    /// fixed per-entry overhead.
    Bytes(u64),
}

/// The default bound: 256 MiB of weighed values. A bound in bytes rather than in entries,
/// so that many large values (HTTP responses up to a megabyte each, for one) cannot hold
/// more memory than it says.
impl Default for LocalCapacity {
    fn default() -> Self {
        LocalCapacity::Bytes(256 * 1024 * 1024)
    }
}

/// An entry's identity in the local store: its class and its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LocalKey {
    pub(crate) class: ClassId,
    pub(crate) key: Key,
}

/// What the store knows of an entry besides its value.
///
/// Instants are kept as nanoseconds since the store was created (an `Instant` takes twice
/// the room): 40 bytes in all, on every entry.
#[derive(Debug)]
pub(crate) struct EntryMeta {
    /// When it stops being fresh.
    pub(crate) fresh_until: u64,
    /// When it expires: `fresh_until` plus the fail-safe grace.
    pub(crate) expires_at: u64,
    /// Most entries have no tags: one pointer, null for them.
    pub(crate) tagged: Option<Box<Tagged>>,
    pub(crate) weight: u32,
    /// When it was written, in nanoseconds since the store was created.
    pub(crate) written: u64,
}

/// An entry's tags, and the id of the insert that made it (see the tag index).
#[derive(Debug)]
pub(crate) struct Tagged {
    id: u64,
    tags: Box<[Key]>,
}

struct Entry<T> {
    meta: EntryMeta,
    value: T,
}

/// A type-erased entry.
trait Stored: Send + Sync + 'static {
    fn meta(&self) -> &EntryMeta;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Send + Sync + 'static> Stored for Entry<T> {
    fn meta(&self) -> &EntryMeta {
        &self.meta
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

type Value = Arc<dyn Stored>;

/// Each entry's own deadline, from the store's origin of time.
struct PerEntryExpiry {
    created: Instant,
}

impl PerEntryExpiry {
    fn left(&self, v: &Value, now: Instant) -> Duration {
        at(self.created, v.meta().expires_at).saturating_duration_since(now)
    }
}

impl Expiry<LocalKey, Value> for PerEntryExpiry {
    fn expire_after_create(&self, _: &LocalKey, v: &Value, now: Instant) -> Option<Duration> {
        Some(self.left(v, now))
    }

    fn expire_after_update(
        &self,
        _: &LocalKey,
        v: &Value,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.left(v, now))
    }
}

/// The instant `nanos` after `origin`: at most some 584 years, within any clock's range on
/// the platforms we know; past it, some 34 years, else `origin` itself.
fn at(origin: Instant, nanos: u64) -> Instant {
    origin
        .checked_add(Duration::from_nanos(nanos))
        .or_else(|| origin.checked_add(Duration::from_secs(1 << 30)))
        .unwrap_or(origin)
}

/// `base` nanoseconds plus `d`, saturating.
fn plus(base: u64, d: Duration) -> u64 {
    base.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The state of the store a lookup saw; see [`LocalStore::get_seen`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen(Ticket);

/// A value found in the local store.
#[derive(Debug)]
pub(crate) struct LocalHit<T> {
    pub(crate) value: T,
    /// Past its TTL but inside its fail-safe grace.
    pub(crate) stale: bool,
    /// Written before the end of the last gap in the invalidation channel: it may have
    /// missed an invalidation, so it is only served while Redis cannot be asked.
    pub(crate) suspect: bool,
    /// When it stops being fresh.
    pub(crate) fresh_until: Instant,
}

/// Bytes charged per entry on top of key and value in [`LocalCapacity::Bytes`] mode.
const ENTRY_OVERHEAD: u32 = 160;

/// moka's default hasher is SipHash; foldhash (randomly seeded per cache) hashes a short
/// key several times faster, and the hit path is mostly hashing.
type Hasher = foldhash::fast::RandomState;

pub(crate) struct LocalStore {
    cache: Moka<LocalKey, Value, Hasher>,
    /// Copies of the entries read most, checked before moka.
    front: Arc<Front<LocalKey, Value, Hasher>>,
    /// Tag → the keys of the entries that carry it.
    index: Arc<TagIndex<LocalKey>>,
    /// Ids of tagged inserts.
    next_id: AtomicU64,
    by_bytes: bool,
    /// The origin of write times.
    created: Instant,
    /// Entries written before this (nanoseconds since `created`) are suspect; `u64::MAX`
    /// while the invalidation channel is down.
    trusted_from: AtomicU64,
    /// The same for client-side tracking (feature `client-tracking`), kept apart because
    /// the two channels fail and recover independently: an entry is suspect if either says
    /// so. Stays 0 when tracking is off.
    tracked_from: AtomicU64,
}

impl LocalStore {
    pub(crate) fn new(capacity: LocalCapacity) -> Self {
        let created = Instant::now();
        let index: Arc<TagIndex<LocalKey>> = Arc::new(TagIndex::default());
        let front: Arc<Front<LocalKey, Value, Hasher>> = Arc::new(Front::new(Hasher::default()));
        let (forget, voided) = (Arc::clone(&index), Arc::clone(&front));
        let builder = Moka::builder()
            .expire_after(PerEntryExpiry { created })
            .eviction_listener(move |key: Arc<LocalKey>, value: Value, _| {
                // Voided here, as soon as moka has removed or replaced the entry and before
                // the index forgets it: once forgotten, an invalidation of one of its tags
                // finds nothing to remove and returns at once, perhaps before the thread
                // that removed the entry has voided the copy itself. Evicted and expired
                // entries are voided only here.
                voided.changed(&*key);
                if let Some(tagged) = &value.meta().tagged {
                    forget.forget(&tagged.tags, &key, tagged.id);
                }
            });
        let (cache, by_bytes) = match capacity {
            LocalCapacity::Entries(n) => (
                builder.max_capacity(n).build_with_hasher(Hasher::default()),
                false,
            ),
            LocalCapacity::Bytes(n) => (
                builder
                    .max_capacity(n)
                    .weigher(|_: &LocalKey, v: &Value| v.meta().weight)
                    .build_with_hasher(Hasher::default()),
                true,
            ),
        };
        LocalStore {
            cache,
            front,
            index,
            next_id: AtomicU64::new(0),
            by_bytes,
            created,
            trusted_from: AtomicU64::new(0),
            tracked_from: AtomicU64::new(0),
        }
    }

    fn nanos_since_created(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.created).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// From now on every entry is suspect, until [`trust_from_now`](Self::trust_from_now).
    pub(crate) fn distrust_all(&self) {
        self.trusted_from.store(u64::MAX, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Every entry is trusted again.
    pub(crate) fn trust_all(&self) {
        self.trusted_from.store(0, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Entries written from now on are trusted; older ones stay suspect.
    pub(crate) fn trust_from_now(&self) {
        let now = self.nanos_since_created(Instant::now());
        self.trusted_from.store(now, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "client-tracking"), allow(dead_code))]
    /// From now on every entry is suspect as far as tracking is concerned, until
    /// [`tracked_from_now`](Self::tracked_from_now).
    pub(crate) fn untrack_all(&self) {
        self.tracked_from.store(u64::MAX, Ordering::SeqCst);
    }

    #[cfg_attr(not(feature = "client-tracking"), allow(dead_code))]
    /// Entries written from now on are covered by tracking; older ones stay suspect.
    pub(crate) fn tracked_from_now(&self) {
        let now = self.nanos_since_created(Instant::now());
        self.tracked_from.store(now, Ordering::SeqCst);
    }

    /// Whether inserts need the value's encoded size.
    pub(crate) fn weighs_bytes(&self) -> bool {
        self.by_bytes
    }

    #[inline]
    pub(crate) fn get<T: Clone + Send + Sync + 'static>(
        &self,
        key: &LocalKey,
    ) -> Option<LocalHit<T>> {
        self.get_seen(key).0
    }

    /// [`get`](Self::get), with what the store looked like before the lookup: a later
    /// [`unchanged_since`](Self::unchanged_since) says whether the answer still holds.
    #[inline]
    pub(crate) fn get_seen<T: Clone + Send + Sync + 'static>(
        &self,
        key: &LocalKey,
    ) -> (Option<LocalHit<T>>, Seen) {
        let ticket = self.front.ticket(key);
        (self.get_with(key, ticket), Seen(ticket))
    }

    /// Whether no insert can have changed the answer to the lookup that returned `seen`:
    /// every insert moves the version of its key's slot after the write.
    pub(crate) fn unchanged_since(&self, seen: &Seen) -> bool {
        self.front.unchanged_since(&seen.0)
    }

    #[inline]
    fn get_with<T: Clone + Send + Sync + 'static>(
        &self,
        key: &LocalKey,
        ticket: Ticket,
    ) -> Option<LocalHit<T>> {
        if let Some(found) = self.front.get(key, &ticket) {
            if let Some(hit) = found
                .value()
                .and_then(|(stored, Stale(stale))| self.hit(stored, stale))
            {
                return Some(hit);
            }
        }
        let stored = self.cache.get(key)?;
        let meta = stored.meta();
        // Only entries with a grace period can be alive past their TTL: the others need no
        // clock read (moka checked their expiry).
        let stale = meta.expires_at > meta.fresh_until
            && self.nanos_since_created(Instant::now()) >= meta.fresh_until;
        let hit = self.hit(&stored, stale);
        if hit.is_some() {
            let deadlines = || {
                let (fresh_until, expires_at) = (
                    at(self.created, meta.fresh_until),
                    at(self.created, meta.expires_at),
                );
                Deadlines::of(fresh_until, expires_at)
            };
            self.front.promote(key, &stored, deadlines, &ticket);
        }
        hit
    }

    /// The hit an entry gives, if it holds a `T`.
    #[inline]
    fn hit<T: Clone + Send + Sync + 'static>(
        &self,
        stored: &Value,
        stale: bool,
    ) -> Option<LocalHit<T>> {
        let entry = stored.as_any().downcast_ref::<Entry<T>>()?;
        let meta = &entry.meta;
        let suspect = meta.written
            < self
                .trusted_from
                .load(Ordering::Relaxed)
                .max(self.tracked_from.load(Ordering::Relaxed));
        Some(LocalHit {
            value: entry.value.clone(),
            stale,
            suspect,
            fresh_until: at(self.created, meta.fresh_until),
        })
    }

    pub(crate) fn insert<T: Send + Sync + 'static>(
        &self,
        key: LocalKey,
        value: T,
        fresh_for: Duration,
        grace: Duration,
        tags: &[Key],
        encoded_len: usize,
    ) {
        let now = self.nanos_since_created(Instant::now());
        let fresh_until = plus(now, fresh_for);
        let weight = u32::try_from(encoded_len + key.key.as_str().len())
            .unwrap_or(u32::MAX)
            .saturating_add(ENTRY_OVERHEAD);
        // Indexed before it is visible: a tag invalidation that runs after this insert (the
        // flights order the two) finds it.
        let id = (!tags.is_empty()).then(|| self.next_id.fetch_add(1, Ordering::Relaxed));
        let tagged = id.map(|id| {
            self.index.add(tags, &key, id);
            Box::new(Tagged {
                id,
                tags: tags.into(),
            })
        });
        let entry: Value = Arc::new(Entry {
            meta: EntryMeta {
                fresh_until,
                expires_at: plus(fresh_until, grace),
                tagged,
                weight,
                written: now,
            },
            value,
        });
        // Found before the key moves into moka, to void the slot's copies after the write.
        let slot = self.front.slot_of(&key);
        match id {
            None => self.cache.insert(key, entry),
            Some(id) => {
                self.cache.insert(key.clone(), entry);
                // And recorded again once visible: a racing write of the same key, landing
                // first and replaced by this one, forgets the record it wrote over ours.
                self.index.keep(tags, &key, id);
            }
        }
        self.front.changed_slot(slot);
    }

    pub(crate) fn remove(&self, key: &LocalKey) {
        self.cache.invalidate(key);
        self.front.changed(key);
    }

    /// Removes the entries that carry `tag`: those its index records, so the cost is theirs,
    /// whatever the size of the store.
    pub(crate) fn invalidate_tag(&self, tag: &Key) {
        // Another invalidation of the tag may have taken its records a moment ago and still
        // be removing: its keys come too, so that this one returns only once they are gone.
        let taken = self.index.take(tag);
        for key in taken.keys() {
            self.cache.invalidate(key);
            self.front.changed(key);
        }
    }

    pub(crate) fn invalidate_class(&self, class: ClassId) {
        self.invalidate_if(move |k, _| k.class == class);
    }

    pub(crate) fn invalidate_all(&self) {
        self.cache.invalidate_all();
        self.index.clear();
        self.front.changed_all();
    }

    fn invalidate_if(&self, predicate: impl Fn(&LocalKey, &Value) -> bool + Send + Sync + 'static) {
        // Not moka's `invalidate_entries_if`: under concurrent invalidations a race on its
        // "no predicates" flag lets `get` return entries a registered predicate matches
        // (measured: 32 of 80,000 entries still visible right after the call, 4 threads).
        // A sweep removes every match present when it starts, before it returns. Classes
        // are flushed after outages, seldom enough that an index of every entry by class
        // would cost more memory than the sweeps cost time.
        for (key, value) in self.cache.iter() {
            if predicate(&key, &value) {
                self.cache.invalidate(&*key);
            }
        }
        self.front.changed_all();
    }

    /// Approximate weighted size: bytes when bounded in bytes, entries otherwise.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Approximate number of entries (moka's counts are eventually consistent).
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests;

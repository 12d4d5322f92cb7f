//! Single-flight: concurrent misses of one key in one process run one load.
//!
//! The first caller of a cold key becomes the *leader* and loads; the others wait on the
//! flight for its result. The leader's guard publishes the value, or a failure, and removes
//! the flight. If the leader is cancelled (its future dropped mid-load), the flight closes
//! without a result and the waiters elect a new leader among themselves, so nobody is left
//! waiting on a load that will never finish. When the leader's loader fails, each waiter runs
//! its own load and so sees its own error: an error type need not be `Clone`.

use std::any::Any;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::Notify;

use crate::key::Key;
use crate::model::{ClassId, Invalidation, Origin};
use crate::store::LocalKey;

/// A finished load's value, type-erased.
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;

/// How a flight ended, as its waiters learn it.
#[derive(Clone)]
pub(crate) enum Outcome {
    Done(Shared, Origin),
    Failed,
    /// The leader gave up at its hard timeout.
    TimedOut,
    /// The leader left without an outcome (cancelled, or it published to nobody).
    Cancelled,
}

/// One load in progress, shared by its leader, its waiters and the map.
///
/// Most loads are never joined, so this is one small allocation, and the leader wakes
/// anyone only if someone holds the flight besides itself.
#[derive(Default)]
pub(crate) struct Flight {
    outcome: OnceLock<Outcome>,
    /// Set after `outcome` (if any) once the leader is gone.
    closed: AtomicBool,
    ended: Notify,
}

/// The map of loads in progress, and the invalidation epochs that keep loads and
/// invalidations in order.
///
/// A load may read the origin (or another cached value) before a change and finish after the
/// change's invalidation; what it then stores would outlive the invalidation, and a caller
/// joining it would get the old value. So an invalidation advances an epoch when it starts
/// and when it is done, and counts itself active in between; a load samples the epoch when
/// it starts:
///
/// - a caller only joins a flight that sampled the same epoch;
/// - a load stores only if it started while no invalidation was active and the epoch has not
///   moved since, and it counts itself *storing* from that check until its value is in both
///   stores;
/// - an invalidation, once counted, waits until nothing is storing (on its shards, below)
///   before removing anything, so a store that passed its check lands before the removal,
///   and one that did not pass stores nothing.
///
/// A load that may not store is still returned to its own callers, who asked while the
/// change was being made.
///
/// **Scopes.** The epochs, activity and storing counts are kept in 64 shards, and each
/// *scope* an invalidation can name maps to one: a key (in whichever class) or a tag hashes
/// to one of 56, a class has one of the other 8. An invalidation moves the shards of what it
/// names — the volatile classes are each volatile class, `everything` is every shard — and a
/// load samples the shards of every scope that can reach its entry: its key, each of its
/// tags (known from its options before it loads) and its class. So an invalidation that can
/// remove a load's entry always moves a shard the load sampled, and one that cannot usually
/// does not (a hash collision only costs a store). With each membership change
/// invalidating a user's tag on every instance, loads of other users' entries still store.
///
/// An [`Epoch`] is the set of shards sampled and the *sum* of their epochs: epochs only
/// grow, so the same sum over the same shards later means none of them moved.
///
/// **Stores never wait.** A store counts itself on each of its shards *before* checking
/// their epochs; an invalidation advances its shards' epochs *before* reading their storing
/// counts (all `SeqCst`, so these four accesses fall in one total order). Of a store and an
/// invalidation on a shard, whichever comes second in that order sees the first: either the
/// store's check reads the advanced epoch (and it stores nothing), or the invalidation reads
/// the store's count (and waits for it to land), or both. Neither can miss the other: if the
/// check read the old epoch, the check came before the advance, and the count, before the
/// check, came before the read of the counts. So an invalidation waits only for stores on its
/// own shards, and a store never waits at all. A load begun during an invalidation of its
/// shards is not quiet and never counts itself; one begun before it and storing after it
/// has begun counts itself, fails its check and uncounts at once: neither holds the
/// invalidation up for longer than that, nor is held up by it.
pub(crate) struct Flights {
    /// Loads in progress, by key, in a few maps so that loads of different keys on different
    /// threads seldom take the same lock.
    maps: [Mutex<FlightMap>; MAPS],
    shards: [Shard; SHARDS],
    /// Invalidations begun, on any shard, and those still active: for a read that learns
    /// only from Redis's answer which tags its entry has (see [`Flights::widen_after_read`]).
    begun: AtomicU64,
    active: AtomicU64,
}

const SHARDS: usize = 64;

type FlightMap = HashMap<LocalKey, (FlightEpoch, Arc<Flight>)>;
const MAPS: usize = 16;

/// What a flight is matched on: the shards sampled and the sum of their epochs.
type FlightEpoch = (ShardMask, u64);

impl Default for Flights {
    fn default() -> Self {
        Flights {
            maps: std::array::from_fn(|_| Mutex::default()),
            shards: std::array::from_fn(|_| Shard::default()),
            begun: AtomicU64::new(0),
            active: AtomicU64::new(0),
        }
    }
}

/// A set of shards, one bit each.
pub(crate) type ShardMask = u64;

/// Every shard.
pub(crate) const ALL_SHARDS: ShardMask = u64::MAX;

#[derive(Default)]
struct Shard {
    epoch: AtomicU64,
    active: AtomicU64,
    /// Of the active invalidations, those of this process whose Redis half is not done:
    /// Redis may still hold what they remove.
    redis_pending: AtomicU64,
    /// Stores past (or at) their check on this shard.
    storing: AtomicU64,
    /// Woken each time `storing` drops to zero.
    landed: Notify,
}

/// What an invalidation names and what reaches a cached entry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope<'a> {
    /// A key, in whichever class.
    Key(&'a Key),
    Tag(&'a Key),
    Class(ClassId),
}

/// The shards keys and tags hash to; the rest are the classes'.
const NAME_SHARDS: usize = SHARDS - CLASS_SHARDS;
/// The shards of classes. Every load of a class samples its class's shard, so a key or tag
/// sharing it would fence off every load of the class: classes get shards of their own.
/// Class ids are dense from 0, so up to this many declared classes get one each.
const CLASS_SHARDS: usize = 8;

/// The shard of a scope.
pub(crate) fn shard_of(scope: Scope<'_>) -> usize {
    use std::hash::BuildHasher;
    let hasher = foldhash::fast::FixedState::default();
    // The kind is hashed too, so that a key and a tag of the same name are two scopes
    // (and do not always collide).
    let hash = match scope {
        Scope::Key(key) => hasher.hash_one((0u8, key.as_str())),
        Scope::Tag(tag) => hasher.hash_one((1u8, tag.as_str())),
        Scope::Class(class) => return NAME_SHARDS + usize::from(class) % CLASS_SHARDS,
    };
    (hash % NAME_SHARDS as u64) as usize
}

fn bit(scope: Scope<'_>) -> ShardMask {
    1 << shard_of(scope)
}

/// The shards an invalidation moves: those of the keys, tags and classes it names, where
/// `classes` are the declared classes it names (volatile ones included). A class this
/// cache does not declare has no entries (they are not cached), so it moves nothing.
pub(crate) fn mask_of(inv: &Invalidation, classes: &[ClassId]) -> ShardMask {
    if inv.everything {
        return ALL_SHARDS;
    }
    let keys = inv.keys.iter().map(Scope::Key);
    let tags = inv.tags.iter().map(Scope::Tag);
    let classes = classes.iter().map(|&class| Scope::Class(class));
    keys.chain(tags)
        .chain(classes)
        .fold(0, |mask, s| mask | bit(s))
}

/// The shards a load of `key` tagged `tags` samples: every scope an invalidation can remove
/// its entry by.
fn mask_of_entry(key: &LocalKey, tags: &[Key]) -> ShardMask {
    tags.iter().fold(
        bit(Scope::Key(&key.key)) | bit(Scope::Class(key.class)),
        |mask, tag| mask | bit(Scope::Tag(tag)),
    )
}

/// When a load started, as far as invalidations are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Epoch {
    /// The shards sampled.
    mask: ShardMask,
    /// The sum of their epochs (see [`Flights`]).
    sum: u64,
    /// No invalidation was active on them: what the load reads is at least as new as the
    /// last one.
    quiet: bool,
    /// No invalidation of this process was removing from Redis on them: Redis is as current
    /// as the local store.
    redis_current: bool,
    /// How many invalidations had begun, on any shard, and whether none was active.
    begun: u64,
    all_quiet: bool,
}

impl Epoch {
    /// Whether Redis may be read: no invalidation of this process was removing from Redis
    /// when the load began. While one is (its Redis half may run in the background), Redis
    /// may still hold what it removes, so such a load goes to the loader.
    pub(crate) fn redis_is_current(&self) -> bool {
        self.redis_current
    }
}

/// Every shard's epoch, and which shards had an invalidation active; see
/// [`Flights::snapshot`].
pub(crate) struct Snapshot {
    epochs: [u64; SHARDS],
    active: ShardMask,
}

/// Held while a load writes its value; see [`Flights::begin_store`]. Dropping it uncounts
/// the store and wakes the invalidations waiting for it.
pub(crate) struct StoreGuard<'a> {
    flights: &'a Flights,
    mask: ShardMask,
}

impl Drop for StoreGuard<'_> {
    fn drop(&mut self) {
        for shard in self.flights.shards_in(self.mask) {
            if shard.storing.fetch_sub(1, Ordering::SeqCst) == 1 {
                shard.landed.notify_waiters();
            }
        }
    }
}

/// An invalidation in progress; ends (advancing the epochs again) when dropped, however the
/// invalidation returns or is cancelled.
pub(crate) struct InvalidationInProgress<'a> {
    flights: &'a Flights,
    mask: ShardMask,
    redis_pending: bool,
}

impl InvalidationInProgress<'_> {
    /// Waits for the stores on this invalidation's shards that passed their check before it
    /// began (see [`Flights`] for why no other store can be missed or waited for).
    pub(crate) async fn stores_landed(&self) {
        for shard in self.flights.shards_in(self.mask) {
            loop {
                // Registered before the count is read: a store that drops it to zero after
                // the read wakes this one (`notify_waiters` reaches every `Notified` created
                // before it), so no wake-up is lost between the read and the wait.
                let mut landed = std::pin::pin!(shard.landed.notified());
                landed.as_mut().enable();
                if shard.storing.load(Ordering::SeqCst) == 0 {
                    break;
                }
                landed.await;
            }
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Whether no store is in progress on this invalidation's shards right now (then there
    /// is nothing to wait for).
    pub(crate) fn stores_idle(&self) -> bool {
        self.flights
            .shards_in(self.mask)
            .all(|shard| shard.storing.load(Ordering::SeqCst) == 0)
    }
}

impl Drop for InvalidationInProgress<'_> {
    fn drop(&mut self) {
        for shard in self.flights.shards_in(self.mask) {
            shard.epoch.fetch_add(1, Ordering::SeqCst);
            if self.redis_pending {
                shard.redis_pending.fetch_sub(1, Ordering::SeqCst);
            }
            shard.active.fetch_sub(1, Ordering::SeqCst);
        }
        self.flights.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Either lead the load of a key or wait for its leader.
pub(crate) enum Join<'a> {
    Leader(Leader<'a>),
    Waiter(Arc<Flight>),
}

impl Flights {
    /// The map that holds `key`'s flight.
    fn map_of(&self, key: &LocalKey) -> &Mutex<FlightMap> {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::default().hash_one(key.key.as_str());
        &self.maps[(hash % MAPS as u64) as usize]
    }

    fn shards_in(&self, mask: ShardMask) -> impl Iterator<Item = &Shard> {
        let mut left = mask;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let index = left.trailing_zeros() as usize;
            left &= left - 1;
            Some(&self.shards[index])
        })
    }

    fn sum(&self, mask: ShardMask) -> u64 {
        self.shards_in(mask)
            .map(|shard| shard.epoch.load(Ordering::SeqCst))
            .fold(0, u64::wrapping_add)
    }

    /// The epoch a load of `key`, tagged `tags`, starting now belongs to.
    pub(crate) fn epoch(&self, key: &LocalKey, tags: &[Key]) -> Epoch {
        // Counted before the shards, as `begin` counts them before it moves a shard.
        let begun = self.begun.load(Ordering::SeqCst);
        let all_quiet = self.active.load(Ordering::SeqCst) == 0;
        let mask = mask_of_entry(key, tags);
        // Epochs first, activity second: an invalidation counts itself active before it
        // advances a shard's epoch and advances it before it stops counting, so a sample
        // never pairs a pre-invalidation epoch of a shard with "quiet".
        let sum = self.sum(mask);
        let quiet = self
            .shards_in(mask)
            .all(|shard| shard.active.load(Ordering::SeqCst) == 0);
        let redis_current = quiet
            || self
                .shards_in(mask)
                .all(|shard| shard.redis_pending.load(Ordering::SeqCst) == 0);
        Epoch {
            mask,
            sum,
            quiet,
            redis_current,
            begun,
            all_quiet,
        }
    }

    /// `epoch` widened to `tags`, which the load learned from Redis's answer (tags its
    /// loader added, carried by the entry): storing with it is refused if any invalidation
    /// has begun since `epoch` was sampled, or was active then. A read takes a round trip,
    /// so refusing on any invalidation in that time costs little; the shards of the tags
    /// join the epoch so that invalidations from now on are ordered with the store as usual.
    pub(crate) fn widen_after_read(&self, epoch: Epoch, tags: &[Key]) -> Epoch {
        let added = tags.iter().fold(0, |mask, tag| mask | bit(Scope::Tag(tag))) & !epoch.mask;
        if added == 0 {
            return epoch;
        }
        // Shards first, the count second: an invalidation that moved an added shard before
        // this sample has been counted by then.
        let sum = epoch.sum.wrapping_add(self.sum(added));
        let unchanged = epoch.all_quiet && self.begun.load(Ordering::SeqCst) == epoch.begun;
        Epoch {
            mask: epoch.mask | added,
            sum,
            quiet: epoch.quiet && unchanged,
            ..epoch
        }
    }

    /// Every shard's epoch and activity, for a load whose loader may add tags to its entry
    /// (see [`widen`](Self::widen)). Sampled as [`epoch`](Self::epoch) samples.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let epochs = std::array::from_fn(|i| self.shards[i].epoch.load(Ordering::SeqCst));
        let active = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, shard)| shard.active.load(Ordering::SeqCst) != 0)
            .fold(0, |mask, (i, _)| mask | 1 << i);
        Snapshot { epochs, active }
    }

    /// `epoch` widened to the shards of tags the loader added, as they were at `before`
    /// (taken before the loader ran): storing with it is refused if an invalidation of one
    /// of those tags was active then or has started since.
    pub(crate) fn widen(&self, epoch: Epoch, before: &Snapshot, tags: &[Key]) -> Epoch {
        let added = tags.iter().fold(0, |mask, tag| mask | bit(Scope::Tag(tag))) & !epoch.mask;
        let mut sum = epoch.sum;
        let mut left = added;
        while left != 0 {
            let index = left.trailing_zeros() as usize;
            left &= left - 1;
            sum = sum.wrapping_add(before.epochs[index]);
        }
        Epoch {
            mask: epoch.mask | added,
            sum,
            quiet: epoch.quiet && before.active & added == 0,
            ..epoch
        }
    }

    /// Starts an invalidation of the scopes in `mask`'s shards: their loads begun before now
    /// will not be joined nor stored.
    pub(crate) fn begin_invalidation(&self, mask: ShardMask) -> InvalidationInProgress<'_> {
        self.begin(mask, false)
    }

    /// [`begin_invalidation`](Self::begin_invalidation) for an invalidation that will also
    /// remove from Redis: until it is done, loads of its shards do not read Redis.
    pub(crate) fn begin_invalidation_of_redis(
        &self,
        mask: ShardMask,
    ) -> InvalidationInProgress<'_> {
        self.begin(mask, true)
    }

    fn begin(&self, mask: ShardMask, redis_pending: bool) -> InvalidationInProgress<'_> {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.begun.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards_in(mask) {
            shard.active.fetch_add(1, Ordering::SeqCst);
            if redis_pending {
                shard.redis_pending.fetch_add(1, Ordering::SeqCst);
            }
            shard.epoch.fetch_add(1, Ordering::SeqCst);
        }
        InvalidationInProgress {
            flights: self,
            mask,
            redis_pending,
        }
    }

    /// Permission for a load begun in `epoch` to store its value: `None` if an invalidation
    /// of one of its shards was active then or has started since. Hold the guard until the
    /// value is stored. It never waits (see [`Flights`]).
    pub(crate) fn begin_store(&self, epoch: Epoch) -> Option<StoreGuard<'_>> {
        if !epoch.quiet {
            return None;
        }
        // Counted first, checked second: the order the proof in the type's docs relies on.
        // A failed check drops the guard, which uncounts.
        for shard in self.shards_in(epoch.mask) {
            shard.storing.fetch_add(1, Ordering::SeqCst);
        }
        let guard = StoreGuard {
            flights: self,
            mask: epoch.mask,
        };
        (self.sum(epoch.mask) == epoch.sum).then_some(guard)
    }

    /// Joins the flight of `key` begun in `epoch`, or leads a new one (replacing a flight of
    /// an older epoch, which finishes for its own callers only).
    pub(crate) fn join(&self, key: &LocalKey, epoch: Epoch) -> Join<'_> {
        let epoch = (epoch.mask, epoch.sum);
        let mut map = self
            .map_of(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let flight = match map.entry(key.clone()) {
            Entry::Occupied(found) if found.get().0 == epoch => {
                return Join::Waiter(Arc::clone(&found.get().1));
            }
            Entry::Occupied(mut older) => {
                let flight = Arc::new(Flight::default());
                older.insert((epoch, Arc::clone(&flight)));
                flight
            }
            Entry::Vacant(vacant) => {
                let flight = Arc::new(Flight::default());
                vacant.insert((epoch, Arc::clone(&flight)));
                flight
            }
        };
        Join::Leader(Leader {
            flights: self,
            key: key.clone(),
            flight,
        })
    }
}

/// Held by the leader; dropping it without [`Leader::succeed`] or [`Leader::fail`] counts as a
/// cancellation.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: LocalKey,
    flight: Arc<Flight>,
}

impl Leader<'_> {
    /// The load succeeded: waiters get the value `share` makes. Made only when someone
    /// waits (most loads have no waiter, and a copy of a large value costs an allocation
    /// and a copy). A caller that joins after this check, before the flight is removed, sees
    /// it end without a value and looks in the store again.
    pub(crate) fn succeed(self, share: impl FnOnce() -> Shared, origin: Origin) {
        // The map's reference and this one: anyone else holds it to wait.
        if Arc::strong_count(&self.flight) > 2 {
            self.publish(Outcome::Done(share(), origin));
        }
    }

    pub(crate) fn fail(self) {
        self.publish(Outcome::Failed);
    }

    /// The load was given up at the hard timeout: the waiters give up too rather than
    /// start loads of their own that would hit the same deadline.
    pub(crate) fn time_out(self) {
        self.publish(Outcome::TimedOut);
    }

    fn publish(&self, outcome: Outcome) {
        // Once per flight: the methods above take the leader by value.
        let _ = self.flight.outcome.set(outcome);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Publish first (above), close second, remove third: a caller arriving before the
        // removal joins a finished flight and reads its result instead of starting another
        // load.
        self.flight.closed.store(true, Ordering::Release);
        {
            let mut map = self
                .flights
                .map_of(&self.key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // One lookup: put back the rare flight that replaced this one.
            if let Some((key, (epoch, flight))) = map.remove_entry(&self.key) {
                if !Arc::ptr_eq(&flight, &self.flight) {
                    map.insert(key, (epoch, flight));
                }
            }
        }
        // No one can join any more: only those holding the flight now can be waiting.
        if Arc::strong_count(&self.flight) > 1 {
            self.flight.ended.notify_waiters();
        }
    }
}

/// Waits for the leader of a flight.
pub(crate) async fn wait(flight: Arc<Flight>) -> Outcome {
    loop {
        // Registered before the flight is read: the leader's wake-up after it closes the
        // flight reaches this one (`notify_waiters` wakes every enabled `Notified`).
        let ended = flight.ended.notified();
        let mut ended = std::pin::pin!(ended);
        ended.as_mut().enable();
        if flight.closed.load(Ordering::Acquire) {
            return flight.outcome.get().cloned().unwrap_or(Outcome::Cancelled);
        }
        ended.await;
    }
}

#[cfg(test)]
mod tests;

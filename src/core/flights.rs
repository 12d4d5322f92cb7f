//! Single-flight: concurrent misses of one key in one process run one load.
//!
//! The first caller of a cold key becomes the *leader* and loads; the others wait on a watch
//! channel for its result. The leader's guard publishes the value, or a failure, and removes
//! the flight. If the leader is cancelled (its future dropped mid-load), the channel closes
//! without a result and the waiters elect a new leader among themselves, so nobody is left
//! waiting on a load that will never finish. When the leader's loader fails, each waiter runs
//! its own load and so sees its own error: an error type need not be `Clone`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::key::Key;
use crate::model::{Invalidation, Origin};
use crate::store::LocalKey;

/// A finished load's value, type-erased.
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
pub(crate) enum State {
    Pending,
    Done(Shared, Origin),
    Failed,
}

/// What a waiter learns.
pub(crate) enum Outcome {
    Done(Shared, Origin),
    Failed,
    Cancelled,
}

/// The map of loads in progress, and the invalidation epochs that keep loads and
/// invalidations in order.
///
/// A load may read the origin (or another cached value) before a change and finish after the
/// change's invalidation; what it then stores would outlive the invalidation, and a caller
/// joining it would get the old value. So an invalidation advances the epoch when it starts
/// and when it is done, and counts itself active in between; a load samples the epoch when
/// it starts:
///
/// - a caller only joins a flight that sampled the same epoch;
/// - a load stores only if it started while no invalidation was active and the epoch has not
///   moved since, and it holds the `stores` barrier (shared) from that check until its value
///   is in both stores;
/// - an invalidation, once counted, waits for the barrier (exclusively) before removing
///   anything, so a store that passed its check lands before the removal, and one that did
///   not pass stores nothing.
///
/// A load that may not store is still returned to its own callers, who asked while the
/// change was being made.
///
/// The epoch is sharded by key (64 shards): an invalidation of named keys only moves their
/// shards, so with many instances publishing key invalidations, unrelated loads still store.
/// Tags, classes and flushes can reach any key and move every shard.
pub(crate) struct Flights {
    map: Mutex<HashMap<LocalKey, (u64, watch::Receiver<State>)>>,
    shards: [Shard; SHARDS],
    stores: tokio::sync::RwLock<()>,
}

const SHARDS: usize = 64;

impl Default for Flights {
    fn default() -> Self {
        Flights {
            map: Mutex::default(),
            shards: std::array::from_fn(|_| Shard::default()),
            stores: tokio::sync::RwLock::default(),
        }
    }
}

/// The shards an invalidation moves, one bit each.
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
}

/// The shard of a key, in whichever class.
pub(crate) fn shard_of(key: &Key) -> usize {
    use std::hash::BuildHasher;
    (foldhash::fast::FixedState::default().hash_one(key.as_str()) % SHARDS as u64) as usize
}

/// The shards an invalidation can reach.
pub(crate) fn mask_of(inv: &Invalidation) -> ShardMask {
    if !inv.tags.is_empty() || !inv.classes.is_empty() || inv.volatile || inv.everything {
        return ALL_SHARDS;
    }
    inv.keys
        .iter()
        .fold(0, |mask, key| mask | 1 << shard_of(key))
}

/// When a load started, as far as invalidations are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Epoch {
    shard: usize,
    value: u64,
    /// No invalidation was active: what the load reads is at least as new as the last one.
    quiet: bool,
    /// No invalidation of this process was removing from Redis: Redis is as current as the
    /// local store.
    redis_current: bool,
}

impl Epoch {
    /// Whether Redis may be read: no invalidation of this process was removing from Redis
    /// when the load began. While one is (its Redis half may run in the background), Redis
    /// may still hold what it removes, so such a load goes to the loader.
    pub(crate) fn redis_is_current(&self) -> bool {
        self.redis_current
    }
}

/// Held while a load writes its value; see [`Flights::begin_store`].
pub(crate) type StoreGuard<'a> = tokio::sync::RwLockReadGuard<'a, ()>;

/// An invalidation in progress; ends (advancing the epoch again) when dropped, however the
/// invalidation returns or is cancelled.
pub(crate) struct InvalidationInProgress<'a> {
    flights: &'a Flights,
    mask: ShardMask,
    redis_pending: bool,
}

impl InvalidationInProgress<'_> {
    /// Waits for the stores that passed their check before this invalidation began.
    pub(crate) async fn stores_landed(&self) {
        drop(self.flights.stores.write().await);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Whether no store is in progress right now (then there is nothing to wait for).
    pub(crate) fn stores_idle(&self) -> bool {
        self.flights.stores.try_write().is_ok()
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
    }
}

/// Either lead the load of a key or wait for its leader.
pub(crate) enum Join<'a> {
    Leader(Leader<'a>),
    Waiter(watch::Receiver<State>),
}

impl Flights {
    fn shards_in(&self, mask: ShardMask) -> impl Iterator<Item = &Shard> {
        self.shards
            .iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
            .map(|(_, shard)| shard)
    }

    /// The epoch a load of `key` starting now belongs to.
    pub(crate) fn epoch(&self, key: &Key) -> Epoch {
        let index = shard_of(key);
        let shard = &self.shards[index];
        // Epoch first, activity second: an invalidation counts itself active before it
        // advances the epoch and advances it before it stops counting, so a sample never
        // pairs a pre-invalidation epoch with "quiet".
        let value = shard.epoch.load(Ordering::SeqCst);
        let quiet = shard.active.load(Ordering::SeqCst) == 0;
        let redis_current = quiet || shard.redis_pending.load(Ordering::SeqCst) == 0;
        Epoch {
            shard: index,
            value,
            quiet,
            redis_current,
        }
    }

    /// Starts an invalidation of the keys in `mask`'s shards: their loads begun before now
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
    /// of its shard was active then or has started since. Hold the guard until the value is
    /// stored.
    pub(crate) async fn begin_store(&self, epoch: Epoch) -> Option<StoreGuard<'_>> {
        if !epoch.quiet {
            return None;
        }
        let guard = self.stores.read().await;
        (self.shards[epoch.shard].epoch.load(Ordering::SeqCst) == epoch.value).then_some(guard)
    }

    /// Joins the flight of `key` begun in `epoch`, or leads a new one (replacing a flight of
    /// an older epoch, which finishes for its own callers only).
    pub(crate) fn join(&self, key: &LocalKey, epoch: Epoch) -> Join<'_> {
        let epoch = epoch.value;
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((flight_epoch, rx)) = map.get(key) {
            if *flight_epoch == epoch {
                return Join::Waiter(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(State::Pending);
        map.insert(key.clone(), (epoch, rx));
        Join::Leader(Leader {
            flights: self,
            key: key.clone(),
            tx,
        })
    }
}

/// Held by the leader; dropping it without [`Leader::finish`] counts as a cancellation.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: LocalKey,
    tx: watch::Sender<State>,
}

impl Leader<'_> {
    pub(crate) fn succeed(self, value: Shared, origin: Origin) {
        self.tx.send_replace(State::Done(value, origin));
    }

    pub(crate) fn fail(self) {
        self.tx.send_replace(State::Failed);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Publish first (above), remove second: a caller arriving in between joins a finished
        // flight and reads its result instead of starting another load.
        let mut map = self
            .flights
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.key)
            .is_some_and(|(_, rx)| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

/// Waits for the leader of a flight.
pub(crate) async fn wait(mut rx: watch::Receiver<State>) -> Outcome {
    loop {
        match &*rx.borrow_and_update() {
            State::Done(v, origin) => return Outcome::Done(Arc::clone(v), *origin),
            State::Failed => return Outcome::Failed,
            State::Pending => {}
        }
        if rx.changed().await.is_err() {
            // The leader is gone; it may still have published just before leaving.
            return match &*rx.borrow() {
                State::Done(v, origin) => Outcome::Done(Arc::clone(v), *origin),
                State::Failed => Outcome::Failed,
                State::Pending => Outcome::Cancelled,
            };
        }
    }
}

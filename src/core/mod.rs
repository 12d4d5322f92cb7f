//! The engine under every [`Cache`](crate::Cache) handle: the two stores, the breaker in front
//! of Redis, the flights that keep loads and invalidations in order, and the counters.
//!
//! [`Core`]'s fields are private. The read-through path, the invalidator and the background
//! tasks (health monitor, backplane, Sentinel watcher) all talk to it through the methods
//! below, so each behaviour has one owner: reading and keeping values here, applying an
//! invalidation in `coherence`, the public handle in `cache`. Background tasks hold a
//! `Weak<Core>` and stop when the last handle is dropped.

mod breaker;
mod events;
mod flights;
mod io;
mod known_flushes;
mod read;
mod shape;
mod stats;
mod superseded;
mod suspect_writes;
mod tag_trims;
pub(crate) mod telemetry;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use self::breaker::Breaker;
pub(crate) use self::events::Events;
pub(crate) use self::flights::{
    wait, Epoch, Flights, Join, Outcome, ShardMask, Snapshot, ALL_SHARDS,
};
pub(crate) use self::io::WriteIf;
pub(crate) use self::read::{Lease, RedisRead};
pub(crate) use self::shape::Shape;
pub(crate) use self::stats::Stats;
pub(crate) use self::telemetry::Telemetry;

use self::known_flushes::KnownFlushes;
use self::suspect_writes::SuspectWrites;
use self::tag_trims::TagTrims;
use crate::key::Key;
use crate::model::{ClassId, Classes, EntryOptions, HealthState};
use crate::redis::RedisStore;
use crate::store::{Codec, LocalHit, LocalKey, LocalStore, Seen};

/// The shared state of one cache; see the module docs.
pub(crate) struct Core {
    namespace: Arc<str>,
    classes: Classes,
    local: LocalStore,
    redis: Option<RedisStore>,
    codec: Arc<dyn Codec>,
    /// Encoded values from this size up are compressed in Redis (feature `compression`).
    compress_above: Option<usize>,
    flights: Flights,
    stats: Stats,
    breaker: Breaker,
    /// The request deadline of one Redis command.
    command_timeout: Duration,
    /// Undeclared class names already reported.
    unknown_classes: std::sync::Mutex<std::collections::HashSet<Box<str>>>,
    /// Keys whose write may have left a stale value in Redis.
    suspect_writes: SuspectWrites,
    /// Tags whose set in Redis is due for a trim.
    tag_trims: TagTrims,
    /// The flush generations last read from Redis, for the leases.
    flushes: KnownFlushes,
    events: Events,
}

/// What a [`Core`] is made of; see [`Core::new`].
pub(crate) struct Parts {
    pub(crate) namespace: Arc<str>,
    pub(crate) classes: Classes,
    pub(crate) local: LocalStore,
    pub(crate) redis: Option<RedisStore>,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) compress_above: Option<usize>,
    pub(crate) breaker: Breaker,
    pub(crate) command_timeout: Duration,
    pub(crate) events: Events,
}

impl Core {
    pub(crate) fn new(parts: Parts) -> Self {
        let telemetry = Telemetry::new(&parts.namespace, &parts.classes);
        let flushes = KnownFlushes::new(parts.classes.iter().count());
        Core {
            namespace: parts.namespace,
            classes: parts.classes,
            local: parts.local,
            redis: parts.redis,
            codec: parts.codec,
            compress_above: parts.compress_above,
            flights: Flights::default(),
            stats: Stats::new(telemetry),
            breaker: parts.breaker,
            command_timeout: parts.command_timeout,
            unknown_classes: Default::default(),
            suspect_writes: SuspectWrites::default(),
            tag_trims: TagTrims::default(),
            flushes,
            events: parts.events,
        }
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A read of `options`' class that did not use the cache (counted, not cached).
    pub(crate) fn count_bypass(&self, options: &EntryOptions) {
        if let Some(class) = self.classes.resolve(options.class.as_deref()) {
            self.stats.bypassed(class);
        }
    }

    /// The name of class `id`.
    pub(crate) fn class_name(&self, id: ClassId) -> &str {
        self.classes.get(id).name()
    }

    /// The keys whose write may have left a stale value in Redis, for the one task that
    /// invalidates them; `None` once taken.
    pub(crate) fn take_suspect_writes(&self) -> Option<tokio::sync::mpsc::Receiver<Key>> {
        self.suspect_writes.take()
    }

    /// The tags due for a trim of their set in Redis, for the one task that trims them;
    /// `None` once taken.
    pub(crate) fn take_tag_trims(&self) -> Option<tokio::sync::mpsc::Receiver<Key>> {
        self.tag_trims.take()
    }

    /// Trims `tag`'s set in Redis (see `trim` in the Redis module), burying the entries
    /// that a tag invalidation may have missed meanwhile.
    pub(crate) async fn trim_tag(&self, tag: &Key) -> Result<(), crate::error::Error> {
        let Some(redis) = self.redis() else {
            return Ok(());
        };
        let missed = redis.trim_tag(tag, tag_trims::SAMPLE).await?;
        if !missed.is_empty() {
            tracing::debug!(tag = %tag, keys = missed.len(), "a tag invalidation ran during a trim; burying what it may have missed");
            redis
                .bury(
                    missed,
                    crate::store::envelope::tombstone(),
                    crate::store::envelope::is_tombstone,
                )
                .await?;
        }
        Ok(())
    }

    pub(crate) fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.flights
    }

    /// Where events are reported (see [`CacheEvent`](crate::CacheEvent)).
    pub(crate) fn events(&self) -> &Events {
        &self.events
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The local identity of `key` under `options`' class; the key back if the class is not
    /// declared (see [`Core::class_id`]).
    #[inline]
    pub(crate) fn local_key(&self, key: Key, options: &EntryOptions) -> Result<LocalKey, Key> {
        match self.class_id(options) {
            Some(class) => Ok(LocalKey { class, key }),
            None => Err(key),
        }
    }

    /// The class `options` name, `None` if this cache does not declare it. An undeclared
    /// class is a configuration mistake, and guessing would hide it where it hurts: in the
    /// default class a volatile entry (a permission, a session) would outlive the outage
    /// flush meant for it. So such entries are not cached at all, and the mistake is
    /// logged as an error, once per name.
    #[inline]
    fn class_id(&self, options: &EntryOptions) -> Option<ClassId> {
        let id = self.classes.resolve(options.class.as_deref());
        if id.is_none() {
            self.report_unknown_class(options.class.as_deref().unwrap_or_default());
        }
        id
    }

    #[cold]
    fn report_unknown_class(&self, name: &str) {
        let mut reported = self
            .unknown_classes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if reported.insert(name.into()) {
            tracing::error!(
                class = name,
                declared = ?self.classes.iter().map(|(_, c)| c.name()).collect::<Vec<_>>(),
                "entries of a class this cache does not declare are not cached; declare it on the builder"
            );
        }
    }

    /// The names of the cache's classes.
    #[cfg_attr(not(feature = "client-tracking"), allow(dead_code))]
    pub(crate) fn class_names(&self) -> Vec<String> {
        self.classes
            .iter()
            .map(|(_, c)| c.name().to_owned())
            .collect()
    }

    /// Whether the cache declares the class `name`.
    pub(crate) fn declares(&self, name: &str) -> bool {
        self.classes.resolve(Some(name)).is_some()
    }

    /// The TTL of an entry of `class` written with `options`.
    pub(crate) fn ttl_of(&self, class: ClassId, options: &EntryOptions) -> Duration {
        options
            .ttl
            .or(self.classes.get(class).default_ttl())
            .unwrap_or(Duration::from_secs(300))
    }

    /// A local entry of `key`, if any, whatever its state (see [`Core::serves`]).
    #[inline]
    pub(crate) fn lookup<T: Clone + Send + Sync + 'static>(
        &self,
        key: &LocalKey,
    ) -> Option<LocalHit<T>> {
        self.local.get(key)
    }

    /// [`lookup`](Self::lookup), with what the local store looked like before it.
    #[inline]
    pub(crate) fn lookup_seen<T: Clone + Send + Sync + 'static>(
        &self,
        key: &LocalKey,
    ) -> (Option<LocalHit<T>>, Seen) {
        self.local.get_seen(key)
    }

    /// Whether nothing was stored locally that could change the answer of the lookup that
    /// returned `seen`.
    pub(crate) fn local_unchanged_since(&self, seen: &Seen) -> bool {
        self.local.unchanged_since(seen)
    }

    /// Whether a local hit may be served: fresh, and either trusted or the best there is
    /// because Redis cannot be asked (see the backplane's reconciliation rule).
    #[inline]
    pub(crate) fn serves<T>(&self, hit: &LocalHit<T>) -> bool {
        !hit.stale && (!hit.suspect || !self.breaker.allows_requests())
    }

    /// Approximate entries in the local store.
    pub(crate) fn local_entry_count(&self) -> u64 {
        self.local.entry_count()
    }

    /// Approximate weighted size of the local store (bytes, or entries).
    pub(crate) fn local_weighted_size(&self) -> u64 {
        self.local.weighted_size()
    }

    /// Removes one entry from the local store only.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn remove_local(&self, key: &LocalKey) {
        self.local.remove(key);
    }

    /// What this instance knew of the flush generations in Redis no longer holds (Redis may
    /// have lost data): the next read of Redis reads them again.
    pub(crate) fn forget_flushes(&self) {
        self.flushes.forget_namespace();
    }

    /// From now on every local entry is suspect (the invalidation channel has a gap).
    pub(crate) fn distrust_local(&self) {
        self.local.distrust_all();
    }

    /// Local entries written from now on are trusted; older ones stay suspect.
    pub(crate) fn trust_local_from_now(&self) {
        self.local.trust_from_now();
    }

    /// Every local entry is trusted again.
    pub(crate) fn trust_local(&self) {
        self.local.trust_all();
    }

    /// From now on every local entry is suspect: client-side tracking may have missed
    /// writes (its connection dropped or was replaced).
    #[cfg_attr(not(feature = "client-tracking"), allow(dead_code))]
    pub(crate) fn untrack_local(&self) {
        self.local.untrack_all();
    }

    /// Tracking is armed again: local entries written from now on are covered by it.
    /// Independent of the backplane's trust: an entry is served only if both vouch for it.
    #[cfg_attr(not(feature = "client-tracking"), allow(dead_code))]
    pub(crate) fn track_local_from_now(&self) {
        self.local.tracked_from_now();
    }

    /// Whether a Redis URL was configured.
    pub(crate) fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Redis, when configured and the breaker lets requests through.
    #[inline]
    pub(crate) fn redis(&self) -> Option<&RedisStore> {
        self.redis
            .as_ref()
            .filter(|_| self.breaker.allows_requests())
    }

    /// Redis whatever the breaker says: for probes, recovery and maintenance.
    pub(crate) fn redis_always(&self) -> Option<&RedisStore> {
        self.redis.as_ref()
    }

    /// The Redis key of a local entry.
    pub(crate) fn entry_key(&self, redis: &RedisStore, key: &LocalKey) -> String {
        redis.entry_key(self.classes.get(key.class).name(), &key.key)
    }

    /// The Redis key of a local entry's stampede lock.
    pub(crate) fn lock_key(&self, redis: &RedisStore, key: &LocalKey) -> String {
        redis.lock_key(self.classes.get(key.class).name(), &key.key)
    }

    /// The breaker's state, as the status reports it.
    pub(crate) fn health_state(&self) -> HealthState {
        if self.redis.is_some() {
            self.breaker.state()
        } else {
            HealthState::LocalOnly
        }
    }

    /// Sets the gauges: the breaker's state, the journal (operations waiting, and for how
    /// long), the local store, and the invalidation channel (`None`: no channel).
    pub(crate) fn publish_gauges(
        &self,
        journal_len: usize,
        journal_waiting: Option<Duration>,
        channel_connected: Option<bool>,
    ) {
        let g = self.stats.telemetry().gauges();
        g.breaker_state
            .set(telemetry::state_value(self.health_state()));
        g.journal_operations.set(journal_len as f64);
        g.journal_oldest
            .set(journal_waiting.map_or(0.0, |d| d.as_secs_f64()));
        g.local_entries.set(self.local.entry_count() as f64);
        g.local_weight.set(self.local.weighted_size() as f64);
        if let Some(connected) = channel_connected {
            g.backplane_connected.set(if connected { 1.0 } else { 0.0 });
        }
    }
}

//! A snapshot of a cache's health and counters, for operators and the admin endpoint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::FlushScope;

/// What [`Cache::status`](crate::Cache::status) reports.
///
/// ```
/// # fn main() -> Result<(), stormcache::Error> {
/// let cache = stormcache::Cache::builder("docs").build()?;
/// let status = cache.status();
/// assert_eq!(status.state, stormcache::HealthState::LocalOnly);
/// assert_eq!(status.journal_len, 0);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The cache's namespace.
    pub namespace: String,
    /// The breaker's state.
    pub state: HealthState,
    /// When the current outage started (Unix milliseconds), if Redis is down.
    pub down_since_ms: Option<u64>,
    /// The last outage and what recovery did about it.
    pub last_outage: Option<OutageRecord>,
    /// The last 16 outages, oldest first (the last one is `last_outage`).
    pub outages: Vec<OutageRecord>,
    /// Invalidation operations waiting for Redis.
    pub journal_len: usize,
    /// Whether the journal overflowed (recovery will flush the namespace).
    pub journal_overflowed: bool,
    /// Approximate entries in the local store.
    pub local_entries: u64,
    /// Counters since start.
    pub counters: Counters,
    /// The invalidation channel between instances (`None` without Redis or with the
    /// backplane turned off).
    pub backplane: Option<BackplaneStatus>,
    /// Client-side tracking (`None` unless turned on with `CacheBuilder::client_tracking`,
    /// feature `client-tracking`).
    pub tracking: Option<TrackingStatus>,
}

/// The state of the invalidation channel between instances; see
/// [`CacheBuilder::backplane`](crate::CacheBuilder::backplane).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BackplaneStatus {
    /// The channel is known to work: this instance's last ping came back. While it is
    /// `false`, local entries are revalidated against Redis before being served.
    pub connected: bool,
    /// Invalidations this instance published.
    pub published: u64,
    /// Invalidations received from other instances and applied locally.
    pub received: u64,
    /// Gaps in the channel after which local entries were revalidated.
    pub reconciliations: u64,
}

/// The state of client-side tracking (feature `client-tracking`): Redis reporting every
/// change to the namespace's entry keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TrackingStatus {
    /// Every Redis master tracks this instance's connection: a change made since the last
    /// (re)arming is reported. While it is `false`, local entries are revalidated against
    /// Redis before being served.
    pub armed: bool,
    /// Reported key changes that named an entry of this cache (its own writes included),
    /// each removing the local copy if there was one.
    pub keys: u64,
    /// Times tracking was armed again after a reconnect, a failover or a lost report (the
    /// first arming is not counted).
    pub rearms: u64,
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthState {
    /// Redis is in use.
    Healthy,
    /// Redis is considered down; requests do not touch it.
    Down,
    /// Redis answers again; the journal and the outage tier are being applied.
    Recovering,
    /// No Redis is configured: the local store is all there is.
    LocalOnly,
}

/// What the last outage was and what recovery did about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OutageRecord {
    /// When the breaker opened (Unix milliseconds).
    pub started_at_ms: u64,
    /// When Redis was back in use (Unix milliseconds).
    pub ended_at_ms: u64,
    /// How long this process saw Redis gone.
    pub outage: Duration,
    /// How old the data Redis came back with was (`None`: no heartbeat, Redis came back
    /// empty).
    pub data_age: Option<Duration>,
    /// What the policy (or a journal overflow) flushed.
    pub scope: FlushScope,
    /// Keys the flush removed from Redis.
    pub flushed_redis_keys: u64,
    /// Journaled invalidations replayed to Redis.
    pub replayed: usize,
    /// Whether the journal had overflowed (which escalates to a namespace flush).
    pub journal_overflowed: bool,
}

/// A snapshot of a cache's counters since it was built.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), stormcache::Error> {
/// use stormcache::{Cache, EntryOptions, Key};
///
/// let cache = Cache::builder("docs").build()?;
/// let key = Key::literal("answer")?;
/// let _: u32 = cache.get_or_load(key.clone(), &EntryOptions::new(), || async { 42 }).await;
/// let _: u32 = cache.get_or_load(key, &EntryOptions::new(), || async { 42 }).await;
/// let c = cache.counters();
/// assert_eq!((c.loader_calls, c.l1_hits), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Counters {
    /// Reads answered by the local store.
    pub l1_hits: u64,
    /// Reads answered by Redis.
    pub l2_hits: u64,
    /// Reads that found nothing usable and went to the loader.
    pub misses: u64,
    /// Expired values served because the loader failed (fail-safe).
    pub stale_served: u64,
    /// Loader invocations.
    pub loader_calls: u64,
    /// Redis failures absorbed (the request carried on without Redis).
    pub redis_errors: u64,
    /// Cached bytes that did not decode and were treated as a miss.
    pub decode_errors: u64,
    /// Misses answered by waiting for another instance's load (distributed lock).
    pub lock_waits: u64,
    /// Background refreshes started by eager refresh.
    pub eager_refreshes: u64,
    /// Reads that stopped waiting for a loader at its soft timeout (answered stale) or its
    /// hard timeout (answered stale, or failed).
    pub load_timeouts: u64,
    /// Reads answered by another caller's load: a concurrent miss of the same key in this
    /// process, or, through the distributed lock, another instance's.
    pub coalesced: u64,
}

/// Milliseconds since the Unix epoch (0 before it), as status records and the bytes in Redis
/// carry times.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

//! A snapshot of a cache's health and counters, for operators and the admin endpoint.

use serde::Serialize;

use crate::cache::Cache;
use crate::envelope::unix_ms;
use crate::health_monitor::{HealthState, OutageRecord};
use crate::stats::Counters;

/// What [`Cache::status`] reports.
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

impl Cache {
    /// The cache's current status.
    pub fn status(&self) -> Status {
        let inner = &*self.inner;
        let state = if inner.redis.is_some() {
            inner.health.state()
        } else {
            HealthState::LocalOnly
        };
        Status {
            namespace: self.namespace().to_owned(),
            state,
            down_since_ms: inner.health.down_since().map(unix_ms),
            last_outage: inner.health.last_outage(),
            journal_len: inner.journal.len(),
            journal_overflowed: inner.journal.overflowed(),
            local_entries: self.local_entry_count(),
            counters: self.counters(),
            backplane: inner.backplane.as_ref().map(|b| b.status()),
        }
    }

    /// Publishes the counters, journal length and health through the `metrics` facade
    /// (the health monitor does this on every probe when Redis is configured).
    pub fn publish_metrics(&self) {
        self.inner.publish_metrics();
    }

    /// Whether requests currently use Redis.
    pub fn redis_in_use(&self) -> bool {
        self.inner.redis().is_some()
    }

    /// Whether local entries are served as they are: true without Redis or without the
    /// backplane, and otherwise once the invalidation channel is confirmed working. While
    /// it is false and Redis is in use, local entries are revalidated against Redis before
    /// being served (see [`CacheBuilder::backplane`](crate::CacheBuilder::backplane)).
    ///
    /// A service has both `redis_in_use()` and `coherent()` a moment after start (one ping
    /// over the channel) and again a moment after Redis comes back from an outage.
    pub fn coherent(&self) -> bool {
        self.inner
            .backplane
            .as_ref()
            .map_or(true, |b| b.is_connected())
    }
}

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
}

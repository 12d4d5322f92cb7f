//! A snapshot of a cache's health and counters, for operators and the admin endpoint.

use serde::Serialize;

use crate::cache::Cache;
use crate::stats::Counters;

/// What [`Cache::status`] reports.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// The cache's namespace.
    pub namespace: String,
    /// Whether a Redis URL is configured.
    pub redis_configured: bool,
    /// Approximate entries in the local store.
    pub local_entries: u64,
    /// Counters since start.
    pub counters: Counters,
}

impl Cache {
    /// The cache's current status.
    pub fn status(&self) -> Status {
        Status {
            namespace: self.namespace().to_owned(),
            redis_configured: self.has_redis(),
            local_entries: self.local_entry_count(),
            counters: self.counters(),
        }
    }
}

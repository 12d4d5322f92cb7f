//! What happened to a cache, as [`Cache::events`](crate::Cache::events) tells it.

use serde::Serialize;

use super::OutageRecord;

/// Something that happened to a cache, for an application to alert or log on.
///
/// Delivered to every receiver of [`Cache::events`](crate::Cache::events); a receiver that
/// falls more than 256 events behind loses the oldest (and is told so by the channel).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormcache::Error> {
/// use stormcache::{Cache, CacheEvent};
///
/// let cache = Cache::builder("docs").build()?;
/// let mut events = cache.events();
/// tokio::spawn(async move {
///     while let Ok(event) = events.recv().await {
///         if let CacheEvent::Recovered { outage } = &event {
///             eprintln!("Redis back: flushed {:?}", outage.scope);
///         }
///     }
/// });
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CacheEvent {
    /// The circuit breaker opened: requests keep off Redis and the local store answers.
    BreakerOpened {
        /// Why (a failed probe, a lost connection, failures in a row, writes lost).
        reason: String,
    },
    /// Redis is in use again after an outage, with what recovery did (tier, flushed,
    /// replayed).
    Recovered {
        /// The outage and its recovery.
        outage: OutageRecord,
    },
    /// The invalidation channel between instances, or client-side tracking (feature
    /// `client-tracking`), had a gap: local entries are revalidated against Redis until it
    /// works again.
    GapOpened {
        /// Why (a ping not echoed, the subscription lost); for tracking it starts with
        /// `client tracking:`.
        reason: String,
    },
    /// The gap ended.
    GapClosed {
        /// Whether what the other instances published during the gap was applied from the
        /// invalidation log (otherwise older local entries stay distrusted). Always false
        /// after a tracking gap: what Redis did not report is not logged anywhere.
        caught_up: bool,
    },
    /// The invalidation journal overflowed while Redis was down: recovery will flush the
    /// whole namespace.
    JournalOverflowed,
    /// A miss waited twice the stampede lock's TTL for another instance's load, and loaded
    /// without the lock.
    LockWaitTimedOut,
}

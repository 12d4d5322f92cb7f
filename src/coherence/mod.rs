//! Keeping every instance's view coherent: the invalidator (the one path that applies an
//! invalidation everywhere), the journal of what Redis has not got yet, the health monitor and
//! its recovery, the Sentinel watcher, the backplane between instances, and client-side
//! tracking of the changes made to Redis by anyone (feature `client-tracking`).
//!
//! Everything here works on a [`Core`](crate::core::Core) it is given; the background tasks
//! hold a `Weak<Core>` and their own state, and stop when the last cache handle is dropped.

mod backplane;
mod gauges;
mod invalidator;
mod journal;
mod monitor;
mod recovery;
mod sentinel_watch;
mod suspect_writes;
mod tag_trims;
mod tracking;

pub(crate) use self::backplane::Backplane;
pub(crate) use self::invalidator::Invalidator;
pub(crate) use self::journal::Journal;
pub(crate) use self::monitor::MonitorConfig;
pub(crate) use self::tracking::Tracking;

use std::sync::Arc;

use crate::core::Core;
use crate::redis::RedisSettings;

/// Starts the one background task of a cache without Redis: its gauges.
pub(crate) fn spawn_local(
    core: &Arc<Core>,
    invalidator: &Arc<Invalidator>,
    every: std::time::Duration,
) {
    gauges::spawn(core, invalidator, every);
}

/// Starts the background tasks of a cache with Redis: the health monitor, the backplane's
/// subscriber (if the invalidator has a backplane), for a Sentinel URL the watcher of master
/// switches, the invalidator of writes that may be stale, and client-side tracking if the
/// invalidator has it.
pub(crate) fn spawn(
    core: &Arc<Core>,
    invalidator: &Arc<Invalidator>,
    settings: &RedisSettings,
    monitor: MonitorConfig,
) {
    let reapply_window = monitor.reapply_window;
    monitor::spawn(core, invalidator, monitor);
    backplane::spawn(core, invalidator, settings);
    sentinel_watch::spawn(core, invalidator, &settings.url, reapply_window);
    suspect_writes::spawn(core, invalidator);
    tag_trims::spawn(core);
    #[cfg(feature = "client-tracking")]
    tracking::spawn(core, invalidator, settings, core.class_names());
}

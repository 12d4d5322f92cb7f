//! The gauges of a cache without Redis: no health monitor runs to set them, so this task
//! does, every probe interval, until the last cache handle is dropped.

use std::sync::Arc;
use std::time::Duration;

use super::invalidator::Invalidator;
use crate::core::Core;

/// Starts the task if there is a Tokio runtime to run it on (a local-only cache may be
/// built outside one; then its gauges are set by `Cache::publish_metrics` only).
pub(crate) fn spawn(core: &Arc<Core>, invalidator: &Arc<Invalidator>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let core = Arc::downgrade(core);
    let invalidator = Arc::clone(invalidator);
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(core) = core.upgrade() else { return };
            invalidator.publish_gauges(&core);
        }
    });
}

//! Following Sentinel's master switches, so writes stop going to a demoted master.
//!
//! fred asks Sentinel for the master only when it (re)connects. After a manual failover with
//! the old master still alive, it keeps writing to the old master, which is demoted about
//! ten seconds later, losing those writes. For a cache the lost writes that matter are
//! invalidations: a lost DEL resurrects stale data on every instance. So on each switch
//! Sentinel announces, this task forces fred to reconnect (it then asks Sentinel again and
//! lands on the new master) and has the invalidator re-apply the invalidations of the last
//! `failover_replay_window`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::invalidator::Invalidator;
use crate::core::Core;
use crate::redis::master_switches;

/// Starts the watcher for a `redis-sentinel://` URL; nothing for other URLs. It stops within
/// a second of the last cache handle being dropped.
pub(crate) fn spawn(
    core: &Arc<Core>,
    invalidator: &Arc<Invalidator>,
    url: &str,
    reapply_window: Duration,
) {
    let Some(mut switches) = master_switches(url) else {
        return;
    };
    let core = Arc::downgrade(core);
    let invalidator = Arc::clone(invalidator);
    tokio::spawn(async move {
        loop {
            let switch = tokio::time::timeout(Duration::from_secs(1), switches.recv()).await;
            if core.strong_count() == 0 {
                break;
            }
            match switch {
                Ok(Some(new_master)) => {
                    on_switch(&core, &invalidator, &new_master, reapply_window).await;
                }
                Ok(None) => break,
                Err(_) => continue,
            }
        }
    });
}

async fn on_switch(
    core: &Weak<Core>,
    invalidator: &Invalidator,
    new_master: &str,
    reapply_window: Duration,
) {
    let Some(core) = core.upgrade() else { return };
    let Some(redis) = core.redis_always() else {
        return;
    };
    tracing::warn!(
        new_master,
        "Sentinel switched masters; moving to the new master"
    );
    // Until the channel echoes on the new master, what the others publish may not reach
    // this instance: its local entries are revalidated against Redis meanwhile.
    core.distrust_local();
    if let Some(backplane) = invalidator.backplane() {
        backplane.restart();
    }
    // Tracking too may be on the demoted master, which no longer sees the writes.
    if let Some(tracking) = invalidator.tracking() {
        tracking.restart();
    }
    if redis
        .force_reconnection(Duration::from_secs(2))
        .await
        .is_err()
    {
        core.breaker().trip("reconnecting to the new master failed");
    }
    let reapplied = invalidator.reapply_recent(&core, reapply_window).await;
    tracing::info!(
        reapplied = reapplied.count,
        "recent invalidations re-applied to the new master"
    );
    core.breaker().poke();
}

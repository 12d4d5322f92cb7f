//! The health monitor: probes Redis, opens the breaker when it fails, and runs recovery
//! when it answers again.
//!
//! fred alone does not make a cache resilient: with a dead or frozen server each command
//! waits for its deadline, and nothing says when Redis is back or what it came back with.
//! The breaker (in `core`) keeps requests off a sick Redis; this task decides when it is
//! well again. It opens the breaker on two failed probes in a row or a connection error
//! reported by fred (a closed or unresponsive connection, a Sentinel that names a dead
//! master), and starts recovery after `recovery_probes` successful PINGs in a row.
//! Recovery replays the journal and applies the outage tier before requests use Redis
//! again. While Redis is healthy, each probe also drains what the journal holds (an
//! invalidation that missed its deadline, or was made while recovery ran); journaling one
//! wakes the monitor at once. While healthy, every probe also writes the heartbeat, whose age tells recovery how
//! old the data Redis came back with is.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tracing::Instrument;

use super::invalidator::Invalidator;
use super::recovery::{self, Outage};
use crate::core::Core;
use crate::model::{unix_ms, CacheEvent, FlushScope, HealthState, OutagePolicy, OutageRecord};
use crate::redis::ConnectionEvent;

/// The monitor's settings. Set through [`CacheBuilder`](crate::CacheBuilder).
#[derive(Clone, Debug)]
pub(crate) struct MonitorConfig {
    pub(crate) probe_interval: Duration,
    pub(crate) recovery_probes: u32,
    pub(crate) policy: OutagePolicy,
    /// The least window of invalidations re-applied after any recovery.
    pub(crate) reapply_window: Duration,
}

/// Starts the monitor and the listener of fred's connection events; they stop when the last
/// cache handle is dropped.
pub(crate) fn spawn(core: &Arc<Core>, invalidator: &Arc<Invalidator>, config: MonitorConfig) {
    let Some(redis) = core.redis_always() else {
        return;
    };
    let mut events = redis.events();
    let weak = Arc::downgrade(core);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let Some(core) = weak.upgrade() else { return };
            match event {
                ConnectionEvent::Lost(error) => core.breaker().trip(&error.to_string()),
                ConnectionEvent::Connected => core.breaker().poke(),
            }
        }
    });
    let monitor = Monitor {
        core: Arc::downgrade(core),
        invalidator: Arc::clone(invalidator),
        config,
    };
    tokio::spawn(monitor.run());
}

struct Monitor {
    core: Weak<Core>,
    invalidator: Arc<Invalidator>,
    config: MonitorConfig,
}

impl Monitor {
    async fn run(self) {
        let mut probe_failures = 0u32;
        loop {
            {
                // Holding the cache for one interval at most: it is dropped right after.
                let Some(core) = self.core.upgrade() else {
                    return;
                };
                core.breaker()
                    .wait_for_poke(self.config.probe_interval)
                    .await;
            }
            let Some(core) = self.core.upgrade() else {
                return;
            };
            let Some(redis) = core.redis_always() else {
                return;
            };
            let breaker = core.breaker();
            self.invalidator.publish_gauges(&core);
            match breaker.state() {
                HealthState::Healthy => match redis.ping().await {
                    Ok(()) => {
                        probe_failures = 0;
                        breaker.record_success();
                        match redis.write_heartbeat(true).await {
                            Ok(true) => {}
                            // Not an outage as seen from here, but Redis came back without
                            // what it had acknowledged: recovered like one.
                            Ok(false) => breaker.trip(
                                "Redis lost acknowledged writes (this instance's heartbeat \
                                 went back in time): restarted from a snapshot, or failed over \
                                 to a lagging replica",
                            ),
                            Err(error) => tracing::debug!(%error, "heartbeat not written"),
                        }
                        if self.invalidator.journal().has_pending() {
                            if let Err(error) = self.invalidator.drain_journal(&core).await {
                                tracing::debug!(%error, "journal not drained; retried at the next probe");
                            }
                        }
                    }
                    Err(error) => {
                        probe_failures += 1;
                        if probe_failures >= 2 {
                            breaker.trip(&format!("probe failed: {error}"));
                        }
                    }
                },
                HealthState::Down => {
                    probe_failures = 0;
                    if self.consecutive_pings(&core).await {
                        let span = tracing::info_span!(
                            "stormcache.recovery",
                            cache.namespace = core.namespace(),
                        );
                        self.recover(&core).instrument(span).await;
                    }
                }
                HealthState::Recovering | HealthState::LocalOnly => {}
            }
        }
    }

    /// `recovery_probes` PINGs in a row, a few milliseconds apart.
    async fn consecutive_pings(&self, core: &Core) -> bool {
        let Some(redis) = core.redis_always() else {
            return false;
        };
        for i in 0..self.config.recovery_probes.max(1) {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if redis.ping().await.is_err() {
                return false;
            }
        }
        true
    }

    /// Replays the journal and applies the outage tier, then lets requests back onto Redis.
    async fn recover(&self, core: &Core) {
        let breaker = core.breaker();
        let Some(redis) = core.redis_always() else {
            return;
        };
        if !breaker.set_recovering() {
            return;
        }
        // Redis may be back from a snapshot, or empty: the flush generations this instance
        // knew may be ahead of Redis's now, so they are read again before they are relied on.
        core.forget_flushes();
        let (length, since_wall) = match breaker.outage() {
            Some((length, since)) => (Some(length), since),
            None => (None, SystemTime::now()),
        };
        // First connection since start: this process missed nothing, but Redis may hold
        // old data all the same (restored from a snapshot while the service restarted), so
        // its age is read before anything writes a fresh heartbeat.
        let first_connect = length.is_none();
        let heartbeats = match redis.heartbeats().await {
            Ok(found) => found,
            Err(error) => {
                tracing::debug!(%error, "heartbeat unreadable; recovery postponed");
                breaker.back_to_down();
                return;
            }
        };
        // Redis may have come back without writes it had acknowledged (a restart from a
        // snapshot, a failover that lost the old master's last writes): every invalidation
        // made since the data's age goes again before Redis is read. Taken before the journal
        // replay, which remembers what it applies.
        let (invalidations_since, writes_since) =
            recovery::reapply_window(self.config.reapply_window, heartbeats);
        let remembered = self
            .invalidator
            .journal()
            .remembered(invalidations_since, writes_since);
        let data_age = heartbeats.data_age;
        // The journal first: the other instances are waiting for it.
        let Ok(replayed) = self.invalidator.replay_journal(core).await else {
            breaker.back_to_down();
            return;
        };
        // What fails is journaled, and then recovery waits for the next probe.
        let reapplied = self.invalidator.reapply(core, remembered).await;
        if self.invalidator.journal().has_pending()
            && self.invalidator.replay_journal(core).await.is_err()
        {
            breaker.back_to_down();
            return;
        }
        let scope = recovery::flush_scope(
            &self.config.policy,
            Outage {
                length,
                data_age,
                journal_overflowed: replayed.overflowed,
                memory_incomplete: !reapplied.complete,
            },
        );
        let mut flushed = 0;
        if let Some(inv) = scope.to_invalidation() {
            match self
                .invalidator
                .flush_after_outage(core, inv, replayed.overflowed)
                .await
            {
                Ok(n) => flushed = n,
                Err(_) => {
                    breaker.back_to_down();
                    return;
                }
            }
        }
        if let Err(error) = redis.write_heartbeat(false).await {
            tracing::debug!(%error, "heartbeat not written");
        }
        let outage_len = length.unwrap_or(Duration::ZERO);
        let record =
            (!first_connect || replayed.applied > 0 || scope != FlushScope::Nothing).then(|| {
                OutageRecord {
                    started_at_ms: unix_ms(since_wall),
                    ended_at_ms: unix_ms(SystemTime::now()),
                    outage: outage_len,
                    data_age,
                    scope: scope.clone(),
                    flushed_redis_keys: flushed,
                    replayed: replayed.applied,
                    journal_overflowed: replayed.overflowed,
                }
            });
        if reapplied.count > 0 {
            tracing::info!(
                reapplied = reapplied.count,
                "recent invalidations applied again after the outage"
            );
        }
        if !reapplied.complete {
            tracing::warn!(
                data_age_ms = data_age.map(|d| d.as_millis() as u64),
                "Redis came back older than the invalidations this process still remembers; \
                 the whole namespace is flushed"
            );
        }
        if first_connect {
            tracing::info!(
                data_age_ms = data_age.map(|d| d.as_millis() as u64),
                ?scope,
                "Redis connected"
            );
        } else {
            log_recovered(outage_len, data_age, &scope, flushed, replayed.applied);
        }
        core.stats().telemetry().recovered(&scope);
        if let Some(outage) = &record {
            core.events().emit(|| CacheEvent::Recovered {
                outage: outage.clone(),
            });
        }
        breaker.set_healthy(record);
    }
}

fn log_recovered(
    outage: Duration,
    data_age: Option<Duration>,
    scope: &FlushScope,
    flushed: u64,
    replayed: usize,
) {
    tracing::warn!(
        outage_ms = outage.as_millis() as u64,
        data_age_ms = data_age.map(|d| d.as_millis() as u64),
        ?scope,
        flushed,
        replayed,
        "Redis outage over: tier applied, Redis back in use"
    );
}

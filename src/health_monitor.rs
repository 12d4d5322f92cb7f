//! The health monitor: a circuit breaker in front of Redis, and the recovery it runs.
//!
//! fred alone does not make a cache resilient: with a dead or frozen server each command
//! waits for its deadline, and nothing says when Redis is back or what it came back with.
//! The monitor keeps one of three states:
//!
//! - **healthy**: requests use Redis;
//! - **down** (since T): no request touches Redis — only the monitor's probe does — so a
//!   request pays an atomic load, not a timeout;
//! - **recovering**: Redis answers again; requests still keep off it while the journal is
//!   replayed and the outage policy's tier is applied.
//!
//! It goes down on the first of: `failure_threshold` request failures in a row, two failed
//! probes in a row, or a connection error reported by fred (a closed or unresponsive
//! connection, a Sentinel that names a dead master). It recovers after `recovery_probes`
//! successful PINGs in a row. While healthy, every probe also writes the heartbeat, whose age
//! tells recovery how old the data Redis came back with is.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::Notify;

use crate::cache::Inner;
use crate::envelope::unix_ms;
use crate::outage_policy::{FlushScope, OutagePolicy};

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

const HEALTHY: u8 = 0;
const DOWN: u8 = 1;
const RECOVERING: u8 = 2;

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

/// Settings of the monitor. Set through [`CacheBuilder`](crate::CacheBuilder).
#[derive(Clone, Debug)]
pub(crate) struct HealthConfig {
    pub(crate) probe_interval: Duration,
    pub(crate) recovery_probes: u32,
    pub(crate) failure_threshold: u32,
    pub(crate) policy: OutagePolicy,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    since_wall: SystemTime,
}

#[derive(Debug)]
pub(crate) struct Health {
    state: AtomicU8,
    failures: AtomicU32,
    outage: Mutex<Option<Outage>>,
    last: Mutex<Option<OutageRecord>>,
    wake: Notify,
    pub(crate) config: HealthConfig,
}

impl Health {
    /// Starts *down*: until the first probe answers, requests do not wait on Redis.
    pub(crate) fn new(config: HealthConfig) -> Self {
        Health {
            state: AtomicU8::new(DOWN),
            failures: AtomicU32::new(0),
            outage: Mutex::new(None),
            last: Mutex::new(None),
            wake: Notify::new(),
            config,
        }
    }

    /// Whether requests may use Redis. One relaxed load: this is on every miss.
    #[inline]
    pub(crate) fn allows_requests(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HEALTHY
    }

    pub(crate) fn state(&self) -> HealthState {
        match self.state.load(Ordering::Relaxed) {
            HEALTHY => HealthState::Healthy,
            RECOVERING => HealthState::Recovering,
            _ => HealthState::Down,
        }
    }

    /// When the current outage started, if Redis is not healthy and was ever up.
    pub(crate) fn down_since(&self) -> Option<SystemTime> {
        self.lock_outage().as_ref().map(|o| o.since_wall)
    }

    pub(crate) fn last_outage(&self) -> Option<OutageRecord> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn lock_outage(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_failure(&self, what: &str) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.failure_threshold {
            self.trip(what);
        }
    }

    /// Opens the breaker (no-op if already open).
    pub(crate) fn trip(&self, reason: &str) {
        let was = self.state.swap(DOWN, Ordering::AcqRel);
        if was == HEALTHY {
            *self.lock_outage() = Some(Outage {
                since: Instant::now(),
                since_wall: SystemTime::now(),
            });
            tracing::warn!(
                reason,
                "Redis outage: circuit open, serving from the local store"
            );
            self.wake.notify_one();
        }
    }

    fn set_recovering(&self) -> bool {
        self.state
            .compare_exchange(DOWN, RECOVERING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn back_to_down(&self) {
        self.state.store(DOWN, Ordering::Release);
    }

    fn set_healthy(&self, record: Option<OutageRecord>) {
        self.failures.store(0, Ordering::Relaxed);
        *self.lock_outage() = None;
        if let Some(record) = record {
            *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(record);
        }
        self.state.store(HEALTHY, Ordering::Release);
    }

    /// Asks the monitor to probe now (e.g. fred reconnected, or Sentinel switched masters).
    pub(crate) fn poke(&self) {
        self.wake.notify_one();
    }
}

/// Starts the monitor and the fred event listeners; they stop when the cache is dropped.
pub(crate) fn spawn(inner: &Arc<Inner>) {
    let Some(redis) = inner.redis.as_ref() else {
        return;
    };
    let (mut errors, mut reconnects) = redis.events();
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            match errors.recv().await {
                Ok((error, _server)) => match weak.upgrade() {
                    Some(inner) => inner.health.trip(&error.to_string()),
                    None => return,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let weak = Arc::downgrade(inner);
    tokio::spawn(async move {
        loop {
            match reconnects.recv().await {
                Ok(_) => match weak.upgrade() {
                    Some(inner) => inner.health.poke(),
                    None => return,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    tokio::spawn(run(Arc::downgrade(inner)));
}

async fn run(weak: Weak<Inner>) {
    let interval = match weak.upgrade() {
        Some(inner) => inner.health.config.probe_interval,
        None => return,
    };
    let mut probe_failures = 0u32;
    loop {
        {
            // Holding the cache for one interval at most: it is dropped right after.
            let Some(inner) = weak.upgrade() else { return };
            let _ = tokio::time::timeout(interval, inner.health.wake.notified()).await;
        }
        let Some(inner) = weak.upgrade() else { return };
        let Some(redis) = inner.redis.as_ref() else {
            return;
        };
        let health = &inner.health;
        inner.publish_metrics();
        match health.state() {
            HealthState::Healthy => match redis.ping().await {
                Ok(()) => {
                    probe_failures = 0;
                    health.record_success();
                    if let Err(error) = redis.write_heartbeat().await {
                        tracing::debug!(%error, "heartbeat not written");
                    }
                }
                Err(error) => {
                    probe_failures += 1;
                    if probe_failures >= 2 {
                        health.trip(&format!("probe failed: {error}"));
                    }
                }
            },
            HealthState::Down => {
                probe_failures = 0;
                if consecutive_pings(&inner).await {
                    recover(&inner).await;
                }
            }
            HealthState::Recovering | HealthState::LocalOnly => {}
        }
    }
}

/// `recovery_probes` PINGs in a row, a few milliseconds apart.
async fn consecutive_pings(inner: &Inner) -> bool {
    let Some(redis) = inner.redis.as_ref() else {
        return false;
    };
    for i in 0..inner.health.config.recovery_probes.max(1) {
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
async fn recover(inner: &Inner) {
    let health = &inner.health;
    let Some(redis) = inner.redis.as_ref() else {
        return;
    };
    if !health.set_recovering() {
        return;
    }
    let (outage, since_wall) = match &*health.lock_outage() {
        Some(o) => (Some(o.since.elapsed()), o.since_wall),
        None => (None, SystemTime::now()),
    };
    // First connection since start: nothing was missed, only the journal (if any) to send.
    let first_connect = outage.is_none();
    let data_age = if first_connect {
        None
    } else {
        match redis.heartbeat_age().await {
            Ok(age) => age,
            Err(error) => {
                tracing::debug!(%error, "heartbeat unreadable; recovery postponed");
                health.back_to_down();
                return;
            }
        }
    };

    let replay = inner.journal.take();
    // Logged before it is published: an instance still resubscribing after this outage
    // reads the log when its channel is back (see the backplane's reconciliation).
    if let (Some(backplane), false) = (&inner.backplane, replay.invalidations.is_empty()) {
        if let Err(error) = backplane.log_replay(inner, &replay.invalidations).await {
            tracing::debug!(%error, "replayed invalidations not logged for the other instances");
        }
    }
    let mut replayed = 0;
    for inv in &replay.invalidations {
        if let Err(error) = inner.apply_redis(inv).await {
            tracing::warn!(%error, "journal replay interrupted; Redis is down again");
            let rest = crate::journal::Replay {
                invalidations: replay.invalidations[replayed..].to_vec(),
                overflowed: replay.overflowed,
            };
            inner.journal.restore(rest);
            health.back_to_down();
            return;
        }
        replayed += 1;
    }
    if replayed > 0 {
        tracing::info!(replayed, "journaled invalidations replayed to Redis");
    }

    let outage_len = outage.unwrap_or(Duration::ZERO);
    let mut scope = health
        .config
        .policy
        .decide(outage_len, data_age)
        .map_or(FlushScope::Nothing, |t| t.scope.clone());
    if first_connect && !replay.overflowed {
        scope = FlushScope::Nothing;
    }
    if replay.overflowed {
        scope = FlushScope::All;
    }
    let mut flushed = 0;
    if let Some(inv) = scope.to_invalidation() {
        inner.apply_local(&inv);
        match inner.apply_redis(&inv).await {
            Ok(n) => flushed = n,
            Err(error) => {
                tracing::warn!(%error, "outage flush interrupted; Redis is down again");
                if replay.overflowed {
                    inner.journal.restore(crate::journal::Replay {
                        invalidations: Vec::new(),
                        overflowed: true,
                    });
                } else {
                    inner.journal.push(inv);
                }
                health.back_to_down();
                return;
            }
        }
    }
    if let Err(error) = redis.write_heartbeat().await {
        tracing::debug!(%error, "heartbeat not written");
    }
    let record = (!first_connect || replayed > 0).then(|| OutageRecord {
        started_at_ms: unix_ms(since_wall),
        ended_at_ms: unix_ms(SystemTime::now()),
        outage: outage_len,
        data_age,
        scope: scope.clone(),
        flushed_redis_keys: flushed,
        replayed,
        journal_overflowed: replay.overflowed,
    });
    if first_connect {
        tracing::info!("Redis connected");
    } else {
        tracing::warn!(
            outage_ms = outage_len.as_millis() as u64,
            data_age_ms = data_age.map(|d| d.as_millis() as u64),
            ?scope,
            flushed,
            replayed,
            "Redis outage over: tier applied, Redis back in use"
        );
    }
    health.set_healthy(record);
}

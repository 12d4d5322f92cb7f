//! The circuit breaker in front of Redis.
//!
//! With a dead or frozen server every command waits for its deadline. The breaker keeps one
//! of three states, read with one relaxed load on every miss:
//!
//! - **healthy**: requests use Redis;
//! - **down** (since T): no request touches Redis — only the health monitor's probe does — so
//!   a request pays an atomic load, not a timeout;
//! - **recovering**: Redis answers again; requests still keep off it while the monitor
//!   replays the journal and applies the outage tier.
//!
//! It opens on `failure_threshold` request failures in a row or when told to
//! ([`Breaker::trip`]: a failed probe, a lost connection). It starts *down*: until the first
//! probe answers, requests do not wait on Redis. Closing it is the monitor's decision.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use crate::model::{HealthState, OutageRecord};

const HEALTHY: u8 = 0;
const DOWN: u8 = 1;
const RECOVERING: u8 = 2;

#[derive(Debug)]
struct Outage {
    since: Instant,
    since_wall: SystemTime,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    outage: Mutex<Option<Outage>>,
    last: Mutex<Option<OutageRecord>>,
    wake: Notify,
    failure_threshold: u32,
}

impl Breaker {
    /// Starts *down*: until the first probe answers, requests do not wait on Redis.
    pub(crate) fn new(failure_threshold: u32) -> Self {
        Breaker {
            state: AtomicU8::new(DOWN),
            failures: AtomicU32::new(0),
            outage: Mutex::new(None),
            last: Mutex::new(None),
            wake: Notify::new(),
            failure_threshold: failure_threshold.max(1),
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

    /// How long the current outage has lasted and when it began; `None` if Redis is
    /// healthy or was never up.
    pub(crate) fn outage(&self) -> Option<(Duration, SystemTime)> {
        self.lock_outage()
            .as_ref()
            .map(|o| (o.since.elapsed(), o.since_wall))
    }

    /// Waits until [`poke`](Self::poke)d or [`trip`](Self::trip)ped, or `at_most`.
    pub(crate) async fn wait_for_poke(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.wake.notified()).await;
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
        if n >= self.failure_threshold {
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

    pub(crate) fn set_recovering(&self) -> bool {
        self.state
            .compare_exchange(DOWN, RECOVERING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub(crate) fn back_to_down(&self) {
        self.state.store(DOWN, Ordering::Release);
    }

    pub(crate) fn set_healthy(&self, record: Option<OutageRecord>) {
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

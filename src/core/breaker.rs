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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::Events;
use crate::model::{CacheEvent, HealthState, OutageRecord};

/// How many outages [`Breaker::outages`] keeps.
pub(crate) const OUTAGES_KEPT: usize = 16;

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
    /// The last [`OUTAGES_KEPT`] outages, oldest first.
    last: Mutex<VecDeque<OutageRecord>>,
    wake: Notify,
    failure_threshold: u32,
    /// Counted at each change: to healthy, to recovering, to down.
    transitions: [metrics::Counter; 3],
    events: Events,
}

impl Breaker {
    /// Starts *down*: until the first probe answers, requests do not wait on Redis.
    pub(crate) fn new(failure_threshold: u32) -> Self {
        Breaker {
            state: AtomicU8::new(DOWN),
            failures: AtomicU32::new(0),
            outage: Mutex::new(None),
            last: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            failure_threshold: failure_threshold.max(1),
            transitions: std::array::from_fn(|_| metrics::Counter::noop()),
            events: Events::default(),
        }
    }

    /// Reports its changes of state as metrics of `namespace`, and its opening to `events`.
    pub(crate) fn reporting_to(mut self, namespace: &str, events: Events) -> Self {
        self.transitions = super::telemetry::breaker_transitions(namespace);
        self.events = events;
        self
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
        self.lock_last().back().cloned()
    }

    /// The last outages, oldest first.
    pub(crate) fn outages(&self) -> Vec<OutageRecord> {
        self.lock_last().iter().cloned().collect()
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, VecDeque<OutageRecord>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
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
            self.events.emit(|| CacheEvent::BreakerOpened {
                reason: reason.to_owned(),
            });
            self.wake.notify_one();
        }
        if was != DOWN {
            self.transitions[2].increment(1);
        }
    }

    pub(crate) fn set_recovering(&self) -> bool {
        let moved = self
            .state
            .compare_exchange(DOWN, RECOVERING, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if moved {
            self.transitions[1].increment(1);
        }
        moved
    }

    pub(crate) fn back_to_down(&self) {
        self.state.store(DOWN, Ordering::Release);
        self.transitions[2].increment(1);
    }

    pub(crate) fn set_healthy(&self, record: Option<OutageRecord>) {
        self.failures.store(0, Ordering::Relaxed);
        *self.lock_outage() = None;
        if let Some(record) = record {
            let mut last = self.lock_last();
            if last.len() == OUTAGES_KEPT {
                last.pop_front();
            }
            last.push_back(record);
        }
        self.state.store(HEALTHY, Ordering::Release);
        self.transitions[0].increment(1);
    }

    /// Asks the monitor to probe now (e.g. fred reconnected, or Sentinel switched masters).
    pub(crate) fn poke(&self) {
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FlushScope;

    /// A breaker that has been through recovery: requests use Redis.
    fn healthy(failure_threshold: u32) -> Breaker {
        let breaker = Breaker::new(failure_threshold);
        assert!(breaker.set_recovering());
        breaker.set_healthy(None);
        breaker
    }

    fn record(started_at_ms: u64) -> OutageRecord {
        OutageRecord {
            started_at_ms,
            ended_at_ms: started_at_ms + 1_000,
            outage: Duration::from_secs(1),
            data_age: None,
            scope: FlushScope::Nothing,
            flushed_redis_keys: 0,
            replayed: 0,
            journal_overflowed: false,
        }
    }

    fn assert_down(breaker: &Breaker) {
        assert_eq!(breaker.state(), HealthState::Down);
        assert!(!breaker.allows_requests());
        assert!(breaker.outage().is_some(), "an outage is under way");
        assert!(breaker.down_since().is_some());
    }

    #[test]
    fn it_starts_down_with_no_outage_since_redis_was_never_up() {
        let breaker = Breaker::new(3);
        assert_eq!(breaker.state(), HealthState::Down);
        assert!(!breaker.allows_requests());
        assert!(breaker.outage().is_none());
        assert!(breaker.down_since().is_none());
        assert!(breaker.last_outage().is_none());
    }

    #[test]
    fn failures_below_the_threshold_keep_it_healthy() {
        let breaker = healthy(3);
        breaker.record_failure("test");
        breaker.record_failure("test");
        assert_eq!(breaker.state(), HealthState::Healthy);
        assert!(breaker.allows_requests());
        assert!(breaker.outage().is_none());
    }

    #[test]
    fn failures_at_the_threshold_trip_it() {
        let breaker = healthy(3);
        for _ in 0..3 {
            breaker.record_failure("test");
        }
        assert_down(&breaker);
    }

    #[test]
    fn failures_not_in_a_row_do_not_trip_it() {
        let breaker = healthy(3);
        breaker.record_failure("test");
        breaker.record_failure("test");
        breaker.record_success();
        breaker.record_failure("test");
        breaker.record_failure("test");
        assert!(
            breaker.allows_requests(),
            "a success starts the count again"
        );
        breaker.record_failure("test");
        assert_down(&breaker);
    }

    #[test]
    fn recovery_starts_the_failure_count_afresh() {
        let breaker = healthy(3);
        breaker.record_failure("test");
        breaker.record_failure("test");
        breaker.trip("probe failed");
        assert!(breaker.set_recovering());
        breaker.set_healthy(None);
        breaker.record_failure("test");
        breaker.record_failure("test");
        assert!(breaker.allows_requests());
    }

    #[test]
    fn tripping_it_again_keeps_the_start_of_the_outage() {
        let breaker = healthy(3);
        breaker.trip("first");
        let since = breaker.down_since().expect("down");
        // Let the wall clock move on, so that a second start would be told apart.
        while SystemTime::now() <= since {
            std::hint::spin_loop();
        }
        breaker.trip("second");
        assert_eq!(breaker.down_since(), Some(since));
        assert!(breaker.set_recovering());
        breaker.trip("failed while recovering");
        assert_eq!(breaker.down_since(), Some(since));
        assert_down(&breaker);
    }

    #[test]
    fn it_recovers_only_from_down() {
        let breaker = Breaker::new(3);
        assert!(breaker.set_recovering());
        assert_eq!(breaker.state(), HealthState::Recovering);
        assert!(
            !breaker.allows_requests(),
            "requests keep off Redis while recovering"
        );
        assert!(!breaker.set_recovering(), "already recovering");
        breaker.set_healthy(None);
        assert!(!breaker.set_recovering(), "healthy");
        assert_eq!(breaker.state(), HealthState::Healthy);
    }

    #[test]
    fn a_failed_recovery_goes_back_to_down() {
        let breaker = Breaker::new(3);
        assert!(breaker.set_recovering());
        breaker.back_to_down();
        assert_eq!(breaker.state(), HealthState::Down);
        assert!(!breaker.allows_requests());
        assert!(breaker.set_recovering(), "recovery may start again");
    }

    #[test]
    fn healthy_with_a_record_keeps_it_as_the_last_outage_and_ends_the_outage() {
        let breaker = healthy(3);
        breaker.trip("test");
        assert!(breaker.set_recovering());
        assert!(breaker.outage().is_some(), "still out while recovering");
        breaker.set_healthy(Some(record(1_000)));
        assert_eq!(breaker.state(), HealthState::Healthy);
        assert!(breaker.allows_requests());
        assert_eq!(breaker.last_outage(), Some(record(1_000)));
        assert!(breaker.outage().is_none());
        assert!(breaker.down_since().is_none());
    }

    #[test]
    fn healthy_without_a_record_keeps_the_previous_last_outage() {
        let breaker = healthy(3);
        breaker.trip("test");
        assert!(breaker.set_recovering());
        breaker.set_healthy(Some(record(1_000)));
        breaker.trip("test");
        assert!(breaker.set_recovering());
        breaker.set_healthy(None);
        assert_eq!(breaker.last_outage(), Some(record(1_000)));
        assert!(breaker.outage().is_none());
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_poke_wakes_the_waiter_before_its_timeout() {
        let breaker = Breaker::new(3);
        let start = tokio::time::Instant::now();
        tokio::join!(breaker.wait_for_poke(WAIT), async {
            tokio::time::advance(Duration::from_secs(1)).await;
            breaker.poke();
        });
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(1), "it did wait: {waited:?}");
        assert!(
            waited < WAIT,
            "woken by the poke, not the timeout: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_poke_while_nobody_waits_wakes_the_next_wait() {
        let breaker = Breaker::new(3);
        breaker.poke();
        let start = tokio::time::Instant::now();
        breaker.wait_for_poke(WAIT).await;
        assert!(start.elapsed() < WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn tripping_a_healthy_breaker_wakes_the_waiter() {
        let breaker = healthy(3);
        let start = tokio::time::Instant::now();
        tokio::join!(breaker.wait_for_poke(WAIT), async {
            tokio::time::advance(Duration::from_secs(1)).await;
            breaker.trip("connection lost");
        });
        assert!(start.elapsed() < WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_poke_the_wait_ends_at_its_timeout() {
        let breaker = Breaker::new(3);
        let start = tokio::time::Instant::now();
        breaker.wait_for_poke(WAIT).await;
        assert!(start.elapsed() >= WAIT);
    }
}

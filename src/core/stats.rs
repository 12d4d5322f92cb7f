//! Counters of what the cache did, kept with relaxed atomics so the hit path stays cheap,
//! and reported as metrics at the event (see `telemetry`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::telemetry::{ReadResult, Telemetry};
use crate::model::{ClassId, Counters};

#[derive(Debug)]
pub(crate) struct Stats {
    telemetry: Telemetry,
    coalesced: AtomicU64,
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    loader_calls: AtomicU64,
    redis_errors: AtomicU64,
    decode_errors: AtomicU64,
    load_timeouts: AtomicU64,
    lock_waits: AtomicU64,
    eager_refreshes: AtomicU64,
}

impl Stats {
    pub(crate) fn new(telemetry: Telemetry) -> Self {
        Stats {
            telemetry,
            coalesced: AtomicU64::new(0),
            l1_hits: AtomicU64::new(0),
            l2_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            loader_calls: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            load_timeouts: AtomicU64::new(0),
            lock_waits: AtomicU64::new(0),
            eager_refreshes: AtomicU64::new(0),
        }
    }

    /// The metric handles, for what is reported apart from these counters.
    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    #[inline]
    pub(crate) fn l1_hit(&self, class: ClassId) {
        self.l1_hits.fetch_add(1, Relaxed);
        self.telemetry.read(class, ReadResult::L1Hit);
    }
    pub(crate) fn l2_hit(&self, class: ClassId) {
        self.l2_hits.fetch_add(1, Relaxed);
        self.telemetry.read(class, ReadResult::L2Hit);
    }
    /// A read answered by the loader, which ran for `took`.
    pub(crate) fn loaded(&self, class: Option<ClassId>, took: Duration) {
        self.misses.fetch_add(1, Relaxed);
        self.loader_calls.fetch_add(1, Relaxed);
        if let Some(class) = class {
            self.telemetry.read(class, ReadResult::Miss);
            self.telemetry.loader_ran(class, took);
        }
    }
    /// A loader run that answered no read (a background refresh), for `took`.
    pub(crate) fn refreshed(&self, class: ClassId, took: Duration) {
        self.loader_calls.fetch_add(1, Relaxed);
        self.telemetry.loader_ran(class, took);
    }
    pub(crate) fn stale_served(&self, class: ClassId) {
        self.stale_served.fetch_add(1, Relaxed);
        self.telemetry.read(class, ReadResult::Stale);
    }
    /// A read answered by another caller's load.
    pub(crate) fn coalesced(&self, class: ClassId) {
        self.coalesced.fetch_add(1, Relaxed);
        self.telemetry.read(class, ReadResult::Coalesced);
    }
    /// A read the cache was bypassed for.
    pub(crate) fn bypassed(&self, class: ClassId) {
        self.telemetry.read(class, ReadResult::Bypass);
    }
    pub(crate) fn redis_error(&self) {
        self.redis_errors.fetch_add(1, Relaxed);
        self.telemetry.redis_error();
    }
    /// A read stopped waiting for a loader at its soft (`hard == false`) or hard timeout.
    pub(crate) fn load_timed_out(&self, hard: bool) {
        self.load_timeouts.fetch_add(1, Relaxed);
        self.telemetry.load_timed_out(hard);
    }
    pub(crate) fn decode_error(&self) {
        self.decode_errors.fetch_add(1, Relaxed);
        self.telemetry.decode_error();
    }
    pub(crate) fn lock_wait(&self) {
        self.lock_waits.fetch_add(1, Relaxed);
    }
    pub(crate) fn eager_refresh(&self) {
        self.eager_refreshes.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Counters {
        Counters {
            l1_hits: self.l1_hits.load(Relaxed),
            l2_hits: self.l2_hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            stale_served: self.stale_served.load(Relaxed),
            loader_calls: self.loader_calls.load(Relaxed),
            redis_errors: self.redis_errors.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            load_timeouts: self.load_timeouts.load(Relaxed),
            lock_waits: self.lock_waits.load(Relaxed),
            eager_refreshes: self.eager_refreshes.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
        }
    }
}

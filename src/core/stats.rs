//! Counters of what the cache did, kept with relaxed atomics so the hit path stays cheap.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::model::Counters;

#[derive(Debug, Default)]
pub(crate) struct Stats {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    stale_served: AtomicU64,
    loader_calls: AtomicU64,
    redis_errors: AtomicU64,
    decode_errors: AtomicU64,
    lock_waits: AtomicU64,
    eager_refreshes: AtomicU64,
}

impl Stats {
    #[inline]
    pub(crate) fn l1_hit(&self) {
        self.l1_hits.fetch_add(1, Relaxed);
    }
    pub(crate) fn l2_hit(&self) {
        self.l2_hits.fetch_add(1, Relaxed);
    }
    pub(crate) fn miss(&self) {
        self.misses.fetch_add(1, Relaxed);
    }
    pub(crate) fn stale_served(&self) {
        self.stale_served.fetch_add(1, Relaxed);
    }
    pub(crate) fn loader_call(&self) {
        self.loader_calls.fetch_add(1, Relaxed);
    }
    pub(crate) fn redis_error(&self) {
        self.redis_errors.fetch_add(1, Relaxed);
    }
    pub(crate) fn decode_error(&self) {
        self.decode_errors.fetch_add(1, Relaxed);
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
            lock_waits: self.lock_waits.load(Relaxed),
            eager_refreshes: self.eager_refreshes.load(Relaxed),
        }
    }
}

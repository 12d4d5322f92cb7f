//! How long, and where, one stored entry lives: its TTL with the jitter drawn, the limit on
//! its local copy, its grace, and which stores the call uses.
//!
//! The jitter is drawn once per store and the local copy never outlives what Redis was
//! given: an instance that reads the entry from Redis later keeps it for what is left of
//! the freshness written with it, so the instances' copies expire no later than Redis's.

use std::time::Duration;

use super::Core;
use crate::model::{ClassId, EntryOptions, Lifetime, LONGEST};

/// See the module docs; made by [`Core::shape`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// The TTL as configured, before any jitter.
    pub(crate) ttl: Duration,
    /// The most the TTL is shortened by.
    jitter: Duration,
    /// The longest the local copy lives.
    local_ttl: Option<Duration>,
    /// Fail-safe grace after the TTL.
    pub(crate) grace: Duration,
    /// Whether the call reads and writes the local store.
    pub(crate) local: bool,
    /// Whether the call reads and writes Redis.
    pub(crate) redis: bool,
}

impl Shape {
    /// The TTL of one store of the entry: up to the jitter shorter than configured.
    pub(crate) fn draw_ttl(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.ttl;
        }
        let span = u64::try_from(self.jitter.as_micros()).unwrap_or(u64::MAX);
        let cut = random_u64() % span.saturating_add(1);
        self.ttl.saturating_sub(Duration::from_micros(cut))
    }

    /// The shape of one store whose value set its own lifetime: its TTL exactly (no jitter:
    /// the value's source already chose it) and its grace, for those it gives.
    pub(crate) fn with_lifetime(mut self, lifetime: Lifetime) -> Shape {
        if let Some(ttl) = lifetime.ttl {
            self.ttl = ttl.min(LONGEST);
            self.jitter = Duration::ZERO;
        }
        if let Some(grace) = lifetime.grace {
            self.grace = grace.min(LONGEST);
        }
        self
    }

    /// How long the local copy of a value fresh for `fresh_for` stays fresh.
    pub(crate) fn local_fresh_for(&self, fresh_for: Duration) -> Duration {
        self.local_ttl
            .map_or(fresh_for, |limit| limit.min(fresh_for))
    }
}

impl Core {
    /// The shape of an entry of `class` stored with `options`: the call's settings, else the
    /// class's.
    pub(crate) fn shape(&self, class: ClassId, options: &EntryOptions) -> Shape {
        self.shape_with_ttl(class, options, self.ttl_of(class, options))
    }

    /// [`shape`](Core::shape) with the TTL a loader chose (the jitter scales with it).
    pub(crate) fn shape_with_ttl(
        &self,
        class: ClassId,
        options: &EntryOptions,
        ttl: Duration,
    ) -> Shape {
        let declared = self.classes.get(class);
        let ttl = ttl.min(LONGEST);
        Shape {
            ttl,
            jitter: options
                .ttl_jitter
                .or(declared.default_ttl_jitter())
                .map_or(Duration::ZERO, |j| j.max_for(ttl)),
            local_ttl: options.local_ttl.or(declared.default_local_ttl()),
            grace: options.stale_for.unwrap_or(Duration::ZERO).min(LONGEST),
            local: !options.skip_local,
            redis: !options.skip_redis,
        }
    }
}

/// A cheap random number: a per-process random seed hashing a counter. Spreading expiries
/// needs no cryptographic quality, and a store already costs far more.
fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    SEED.get_or_init(Default::default)
        .hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(ttl: Duration, jitter: Duration, local_ttl: Option<Duration>) -> Shape {
        Shape {
            ttl,
            jitter,
            local_ttl,
            grace: Duration::ZERO,
            local: true,
            redis: true,
        }
    }

    #[test]
    fn drawn_ttls_spread_over_the_jitter() {
        let (ttl, jitter) = (Duration::from_secs(100), Duration::from_secs(10));
        let s = shape(ttl, jitter, None);
        let drawn: Vec<Duration> = (0..2_000).map(|_| s.draw_ttl()).collect();
        assert!(drawn.iter().all(|d| *d <= ttl && *d >= ttl - jitter));
        // Spread, not clustered: each tenth of the range gets some.
        for tenth in 0..10u32 {
            let low = ttl - jitter + jitter * tenth / 10;
            let high = low + jitter / 10;
            assert!(
                drawn.iter().any(|d| *d >= low && *d <= high),
                "nothing drawn in {low:?}..{high:?}"
            );
        }
        assert_eq!(shape(ttl, Duration::ZERO, None).draw_ttl(), ttl);
    }

    #[test]
    fn the_local_copy_lives_no_longer_than_its_limit_or_the_store() {
        let s = shape(
            Duration::from_secs(60),
            Duration::ZERO,
            Some(Duration::from_secs(5)),
        );
        assert_eq!(
            s.local_fresh_for(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        assert_eq!(
            s.local_fresh_for(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        let unlimited = shape(Duration::from_secs(60), Duration::ZERO, None);
        assert_eq!(
            unlimited.local_fresh_for(Duration::from_secs(7)),
            Duration::from_secs(7)
        );
    }
}

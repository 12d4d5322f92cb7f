//! Metrics, through the [`metrics`] facade: their names, labels and units, and the handles
//! the hot path increments.
//!
//! Counters are incremented where the event happens, with or without Redis. The handles of
//! the hot path (a read's result per class, the loader's duration per class) are registered
//! once, when the cache is built, so a hit costs one increment on a handle and never builds
//! a label set. Install the recorder (e.g. `metrics-exporter-prometheus`) before building
//! caches, as the `metrics` crate recommends: a cache built before it reports to no one.
//!
//! Names follow Prometheus conventions; every series carries `namespace`. See the README's
//! "Operating stormcache" for what each one means during an incident.

use std::sync::Once;
use std::time::Duration;

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};

use crate::model::{Classes, FlushScope, HealthState, RedisOutcome};

/// Reads by result: `stormcache_requests_total{namespace, class, result}`.
pub(crate) const REQUESTS: &str = "stormcache_requests_total";
/// `stormcache_loader_duration_seconds{namespace, class}`.
pub(crate) const LOADER_DURATION: &str = "stormcache_loader_duration_seconds";
/// `stormcache_redis_command_duration_seconds{namespace}`: one request-path command, from
/// its issue to its answer or deadline.
pub(crate) const REDIS_COMMAND_DURATION: &str = "stormcache_redis_command_duration_seconds";
/// `stormcache_invalidation_propagation_seconds{namespace}`: the time a message on the
/// invalidation channel takes to come back to its sender's subscriber (the pings' echo).
pub(crate) const PROPAGATION: &str = "stormcache_invalidation_propagation_seconds";
/// `stormcache_invalidations_total{namespace, outcome}`.
pub(crate) const INVALIDATIONS: &str = "stormcache_invalidations_total";
/// `stormcache_breaker_transitions_total{namespace, to}`.
pub(crate) const BREAKER_TRANSITIONS: &str = "stormcache_breaker_transitions_total";
/// `stormcache_recoveries_total{namespace, scope}`: outages recovered from, by the scope
/// flushed.
pub(crate) const RECOVERIES: &str = "stormcache_recoveries_total";
/// `stormcache_redis_errors_total{namespace}`: Redis failures a request absorbed.
pub(crate) const REDIS_ERRORS: &str = "stormcache_redis_errors_total";
/// `stormcache_decode_errors_total{namespace}`: cached bytes that did not decode (a miss).
pub(crate) const DECODE_ERRORS: &str = "stormcache_decode_errors_total";
/// `stormcache_load_timeouts_total{namespace, timeout}`: reads that stopped waiting for a
/// loader at its soft or hard timeout.
pub(crate) const LOAD_TIMEOUTS: &str = "stormcache_load_timeouts_total";
/// `stormcache_backplane_gaps_total{namespace}`: gaps in the invalidation channel.
pub(crate) const BACKPLANE_GAPS: &str = "stormcache_backplane_gaps_total";
/// `stormcache_breaker_state{namespace}`: 0 healthy, 1 recovering, 2 down, 3 local only.
pub(crate) const BREAKER_STATE: &str = "stormcache_breaker_state";
/// `stormcache_journal_operations{namespace}`: invalidation operations waiting for Redis.
pub(crate) const JOURNAL_OPERATIONS: &str = "stormcache_journal_operations";
/// `stormcache_journal_oldest_seconds{namespace}`: how long the oldest has waited.
pub(crate) const JOURNAL_OLDEST: &str = "stormcache_journal_oldest_seconds";
/// `stormcache_local_entries{namespace}`.
pub(crate) const LOCAL_ENTRIES: &str = "stormcache_local_entries";
/// `stormcache_local_weight{namespace}`: the local store's weighted size (bytes when it is
/// bounded in bytes, entries otherwise).
pub(crate) const LOCAL_WEIGHT: &str = "stormcache_local_weight";
/// `stormcache_backplane_connected{namespace}`: 1 while the channel is confirmed.
pub(crate) const BACKPLANE_CONNECTED: &str = "stormcache_backplane_connected";

/// What a read came to, as `result` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadResult {
    /// Answered by the local store.
    L1Hit,
    /// Answered by Redis.
    L2Hit,
    /// Answered by the loader.
    Miss,
    /// An expired value served because the loader failed.
    Stale,
    /// Answered by another caller's load (in this process or, through the lock, another).
    Coalesced,
    /// Not served from the cache at all (the HTTP layer: `no-store`, credentials, a request
    /// the rules do not cache).
    Bypass,
}

impl ReadResult {
    const ALL: [ReadResult; 6] = [
        ReadResult::L1Hit,
        ReadResult::L2Hit,
        ReadResult::Miss,
        ReadResult::Stale,
        ReadResult::Coalesced,
        ReadResult::Bypass,
    ];

    fn label(self) -> &'static str {
        match self {
            ReadResult::L1Hit => "l1_hit",
            ReadResult::L2Hit => "l2_hit",
            ReadResult::Miss => "miss",
            ReadResult::Stale => "stale",
            ReadResult::Coalesced => "coalesced",
            ReadResult::Bypass => "bypass",
        }
    }
}

/// The cache's metric handles, all registered when it is built: every series exists (at
/// zero) from the start, so dashboards and alerts never query a series that is not there.
#[derive(Debug)]
pub(crate) struct Telemetry {
    /// Per class id, per [`ReadResult`].
    reads: Box<[[Counter; ReadResult::ALL.len()]]>,
    /// Per class id.
    loader: Box<[Histogram]>,
    redis_errors: Counter,
    decode_errors: Counter,
    /// `[soft, hard]`.
    load_timeouts: [Counter; 2],
    /// Per outcome, in the order of [`OUTCOMES`].
    invalidations: [Counter; OUTCOMES.len()],
    /// Per scope, in the order of [`SCOPES`].
    recoveries: [Counter; SCOPES.len()],
    gaps: Counter,
    propagation: Histogram,
    gauges: Gauges,
}

/// The `outcome` labels of [`INVALIDATIONS`].
const OUTCOMES: [&str; 5] = [
    "applied",
    "journaled",
    "overflowed",
    "local_only",
    "pending",
];
/// The `scope` labels of [`RECOVERIES`].
const SCOPES: [&str; 4] = ["nothing", "classes", "volatile", "all"];

/// The gauges, set every probe interval.
#[derive(Debug)]
pub(crate) struct Gauges {
    pub(crate) breaker_state: Gauge,
    pub(crate) journal_operations: Gauge,
    pub(crate) journal_oldest: Gauge,
    pub(crate) local_entries: Gauge,
    pub(crate) local_weight: Gauge,
    pub(crate) backplane_connected: Gauge,
}

impl Telemetry {
    /// Registers the handles of `classes` under `namespace`.
    pub(crate) fn new(namespace: &str, classes: &Classes) -> Self {
        describe();
        let ns = || namespace.to_owned();
        let reads = classes
            .iter()
            .map(|(_, class)| {
                ReadResult::ALL.map(|result| {
                    metrics::counter!(
                        REQUESTS,
                        "namespace" => ns(),
                        "class" => class.name().to_string(),
                        "result" => result.label()
                    )
                })
            })
            .collect();
        let loader = classes
            .iter()
            .map(|(_, class)| {
                metrics::histogram!(
                    LOADER_DURATION,
                    "namespace" => ns(),
                    "class" => class.name().to_string()
                )
            })
            .collect();
        let gauge = |name: &'static str| metrics::gauge!(name, "namespace" => ns());
        Telemetry {
            reads,
            loader,
            redis_errors: metrics::counter!(REDIS_ERRORS, "namespace" => ns()),
            decode_errors: metrics::counter!(DECODE_ERRORS, "namespace" => ns()),
            load_timeouts: ["soft", "hard"]
                .map(|t| metrics::counter!(LOAD_TIMEOUTS, "namespace" => ns(), "timeout" => t)),
            invalidations: OUTCOMES.map(|outcome| {
                metrics::counter!(INVALIDATIONS, "namespace" => ns(), "outcome" => outcome)
            }),
            recoveries: SCOPES
                .map(|scope| metrics::counter!(RECOVERIES, "namespace" => ns(), "scope" => scope)),
            gaps: metrics::counter!(BACKPLANE_GAPS, "namespace" => ns()),
            propagation: metrics::histogram!(PROPAGATION, "namespace" => ns()),
            gauges: Gauges {
                breaker_state: gauge(BREAKER_STATE),
                journal_operations: gauge(JOURNAL_OPERATIONS),
                journal_oldest: gauge(JOURNAL_OLDEST),
                local_entries: gauge(LOCAL_ENTRIES),
                local_weight: gauge(LOCAL_WEIGHT),
                backplane_connected: gauge(BACKPLANE_CONNECTED),
            },
        }
    }

    /// A read of `class` came to `result`; off the local hit path, the read's span (see
    /// [`read_span`]) records it too.
    #[inline]
    pub(crate) fn read(&self, class: u16, result: ReadResult) {
        if let Some(counters) = self.reads.get(usize::from(class)) {
            counters[result as usize].increment(1);
        }
        if result != ReadResult::L1Hit {
            tracing::Span::current().record("cache.result", result.label());
        }
    }

    /// A loader of `class` ran for `took`.
    pub(crate) fn loader_ran(&self, class: u16, took: Duration) {
        if let Some(h) = self.loader.get(usize::from(class)) {
            h.record(took.as_secs_f64());
        }
    }

    pub(crate) fn redis_error(&self) {
        self.redis_errors.increment(1);
    }

    pub(crate) fn decode_error(&self) {
        self.decode_errors.increment(1);
    }

    /// A read stopped waiting for a loader at its soft (`hard == false`) or hard timeout.
    pub(crate) fn load_timed_out(&self, hard: bool) {
        self.load_timeouts[usize::from(hard)].increment(1);
    }

    /// An invalidation made by this instance ended with `outcome`: `applied` (Redis has
    /// it), `journaled`, `overflowed` (journaled into a full journal), `local_only` (no
    /// Redis) or `pending`.
    pub(crate) fn invalidation(&self, outcome: &RedisOutcome) {
        let i = match outcome {
            RedisOutcome::Applied => 0,
            RedisOutcome::Journaled { overflowed: false } => 1,
            RedisOutcome::Journaled { overflowed: true } => 2,
            RedisOutcome::NotConfigured => 3,
            RedisOutcome::Pending => 4,
        };
        self.invalidations[i].increment(1);
        tracing::Span::current().record("cache.outcome", OUTCOMES[i]);
    }

    /// An outage was recovered from, flushing `scope`.
    pub(crate) fn recovered(&self, scope: &FlushScope) {
        let i = match scope {
            FlushScope::Nothing => 0,
            FlushScope::Classes(_) => 1,
            FlushScope::Volatile => 2,
            FlushScope::All => 3,
        };
        self.recoveries[i].increment(1);
    }

    /// The invalidation channel had a gap.
    pub(crate) fn backplane_gap(&self) {
        self.gaps.increment(1);
    }

    /// A channel message came back to its sender after `took`.
    pub(crate) fn propagated(&self, took: Duration) {
        self.propagation.record(took.as_secs_f64());
    }

    /// A histogram of request-path Redis command durations, for the Redis store to keep.
    pub(crate) fn redis_command_histogram(namespace: &str) -> Histogram {
        describe();
        metrics::histogram!(REDIS_COMMAND_DURATION, "namespace" => namespace.to_owned())
    }

    /// The gauges.
    pub(crate) fn gauges(&self) -> &Gauges {
        &self.gauges
    }
}

/// The breaker's transition counters, by the state gone to (healthy, recovering, down).
pub(crate) fn breaker_transitions(namespace: &str) -> [Counter; 3] {
    describe();
    [
        HealthState::Healthy,
        HealthState::Recovering,
        HealthState::Down,
    ]
    .map(|to| {
        metrics::counter!(
            BREAKER_TRANSITIONS,
            "namespace" => namespace.to_owned(),
            "to" => state_label(to)
        )
    })
}

/// The span of a read that goes past the local store: `stormcache.fetch` at DEBUG, with
/// `cache.namespace`, `cache.class`, `cache.key_template` if the options carry one and,
/// once known, `cache.result`. Key values are never recorded: they can carry personal data.
pub(crate) fn read_span(namespace: &str, class: &str, key_template: Option<&str>) -> tracing::Span {
    tracing::debug_span!(
        "stormcache.fetch",
        cache.namespace = namespace,
        cache.class = class,
        cache.key_template = key_template,
        cache.result = tracing::field::Empty,
    )
}

/// A read the local store answered: a span like [`read_span`]'s, closed at once (nothing
/// when DEBUG is off, which is one check of a static).
#[inline]
pub(crate) fn local_hit_span(namespace: &str, class: &str, key_template: Option<&str>) {
    let span = tracing::debug_span!(
        "stormcache.fetch",
        cache.namespace = namespace,
        cache.class = class,
        cache.key_template = key_template,
        cache.result = "l1_hit",
    );
    drop(span);
}

fn state_label(state: HealthState) -> &'static str {
    match state {
        HealthState::Healthy => "healthy",
        HealthState::Recovering => "recovering",
        HealthState::Down => "down",
        HealthState::LocalOnly => "local_only",
    }
}

/// The value of [`BREAKER_STATE`].
pub(crate) fn state_value(state: HealthState) -> f64 {
    match state {
        HealthState::Healthy => 0.0,
        HealthState::Recovering => 1.0,
        HealthState::Down => 2.0,
        HealthState::LocalOnly => 3.0,
    }
}

/// Describes every metric to the recorder (once per process; a recorder installed later
/// misses the descriptions, not the values).
fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_counter!(REQUESTS, Unit::Count, "Cache reads, by class and result.");
        describe_histogram!(
            LOADER_DURATION,
            Unit::Seconds,
            "Time the loader (the origin) took, by class."
        );
        describe_histogram!(
            REDIS_COMMAND_DURATION,
            Unit::Seconds,
            "Time a request-path Redis command took, up to its deadline."
        );
        describe_histogram!(
            PROPAGATION,
            Unit::Seconds,
            "Time a message on the invalidation channel takes to reach a subscriber."
        );
        describe_counter!(
            INVALIDATIONS,
            Unit::Count,
            "Invalidations made by this instance, by outcome."
        );
        describe_counter!(
            BREAKER_TRANSITIONS,
            Unit::Count,
            "Changes of the Redis circuit breaker's state."
        );
        describe_counter!(
            RECOVERIES,
            Unit::Count,
            "Redis outages recovered from, by the scope the tier policy flushed."
        );
        describe_counter!(
            REDIS_ERRORS,
            Unit::Count,
            "Redis failures a request absorbed (it carried on without Redis)."
        );
        describe_counter!(
            DECODE_ERRORS,
            Unit::Count,
            "Cached bytes that did not decode (treated as a miss)."
        );
        describe_counter!(
            LOAD_TIMEOUTS,
            Unit::Count,
            "Reads that stopped waiting for a loader at its soft or hard timeout."
        );
        describe_counter!(
            BACKPLANE_GAPS,
            Unit::Count,
            "Gaps in the invalidation channel, after which local entries were revalidated."
        );
        describe_gauge!(
            BREAKER_STATE,
            Unit::Count,
            "Redis circuit breaker: 0 healthy, 1 recovering, 2 down, 3 local only."
        );
        describe_gauge!(
            JOURNAL_OPERATIONS,
            Unit::Count,
            "Invalidation operations waiting for Redis."
        );
        describe_gauge!(
            JOURNAL_OLDEST,
            Unit::Seconds,
            "How long the oldest journaled invalidation has waited for Redis."
        );
        describe_gauge!(LOCAL_ENTRIES, Unit::Count, "Entries in the local store.");
        describe_gauge!(
            LOCAL_WEIGHT,
            Unit::Bytes,
            "Weighted size of the local store (bytes when bounded in bytes)."
        );
        describe_gauge!(
            BACKPLANE_CONNECTED,
            Unit::Count,
            "1 while the invalidation channel is confirmed working, else 0."
        );
    });
}

//! The cache builder: everything a [`Cache`] is configured with, checked once.

use std::sync::Arc;
use std::time::Duration;

use super::Cache;
use crate::coherence::{self, Backplane, Invalidator, Journal, MonitorConfig, Tracking};
use crate::core::{self, Breaker, Core, Events, Telemetry};
use crate::error::Error;
use crate::key::check_name;
use crate::model::{Class, Classes, FlushScope, OutagePolicy, LONGEST};
use crate::redis::{RedisSettings, RedisStore};
use crate::store::{codec, Codec, LocalCapacity, LocalStore, MessagePack};

/// Builds a [`Cache`]. Get one from [`Cache::builder`].
///
/// Without a Redis URL the cache runs on its local store only; application code is the same
/// either way. A duration longer than about a century (`Duration::MAX` for "never", say)
/// counts as a century.
///
/// ```
/// use std::time::Duration;
/// use stormcache::{Cache, Class};
///
/// # fn main() -> Result<(), stormcache::Error> {
/// let cache = Cache::builder("accounts")
///     .redis_url(std::env::var("REDIS_URL").ok()) // None: local store only
///     .default_ttl(Duration::from_secs(600))
///     .class(Class::new("permissions").ttl(Duration::from_secs(900)).volatile())
///     .class(Class::new("resources").ttl(Duration::from_secs(12 * 3600)))
///     .build()?;
/// # let _ = cache; Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct CacheBuilder {
    namespace: String,
    redis_url: Option<String>,
    capacity: LocalCapacity,
    default_ttl: Duration,
    command_timeout: Duration,
    connect_timeout: Duration,
    reconnect_delay: Duration,
    max_in_flight: usize,
    maintenance_timeout: Duration,
    scan_batch: u32,
    codec: Arc<dyn Codec>,
    /// Whether `codec` is a built-in one (which alone may use the reserved ids).
    codec_builtin: bool,
    compress_above: Option<usize>,
    classes: Vec<Class>,
    probe_interval: Duration,
    recovery_probes: u32,
    failure_threshold: u32,
    policy: OutagePolicy,
    journal_capacity: usize,
    failover_replay_window: Duration,
    backplane: bool,
    /// Client-side tracking; only the `client-tracking` feature can turn it on.
    client_tracking: bool,
}

impl CacheBuilder {
    pub(super) fn new(namespace: impl Into<String>) -> Self {
        CacheBuilder {
            namespace: namespace.into(),
            redis_url: None,
            capacity: LocalCapacity::default(),
            default_ttl: Duration::from_secs(300),
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            reconnect_delay: Duration::from_millis(200),
            max_in_flight: 1024,
            maintenance_timeout: Duration::from_secs(5),
            scan_batch: 500,
            codec: Arc::new(MessagePack),
            codec_builtin: true,
            // Below about a kilobyte LZ4 saves little and a value fits a packet anyway.
            compress_above: cfg!(feature = "compression").then_some(1024),
            classes: Vec::new(),
            probe_interval: Duration::from_millis(500),
            recovery_probes: 3,
            failure_threshold: 3,
            policy: OutagePolicy::default(),
            journal_capacity: 10_000,
            failover_replay_window: Duration::from_secs(30),
            backplane: true,
            client_tracking: false,
        }
    }

    /// Redis to use as the shared L2, in fred's URL forms:
    /// `redis://[user:pw@]host:port[/db]`, `rediss://…` (feature `tls`),
    /// `redis-sentinel://s1:26379/db?sentinelServiceName=mymaster&node=s2:26379`,
    /// `redis-cluster://h1:p1?node=h2:p2`. `None` (or never calling this) means local only.
    pub fn redis_url(mut self, url: impl Into<Option<String>>) -> Self {
        self.redis_url = url.into().filter(|u| !u.trim().is_empty());
        self
    }

    /// How big the local store may grow (default [`LocalCapacity::Bytes`] of 256 MiB).
    ///
    /// The default bounds memory whatever the size of the values: a bound in entries lets
    /// 10,000 responses of a megabyte hold 10 GB. Weighing costs an encoding of each value
    /// stored locally when the cache has no Redis (with Redis the encoding is made for the
    /// Redis write anyway); [`LocalCapacity::Entries`] skips it, for small values.
    pub fn local_capacity(mut self, capacity: LocalCapacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// TTL of entries whose call and class give none (default 5 minutes).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl.min(LONGEST);
        self
    }

    /// The longest a request waits for one Redis command (default 100 ms). Past it the
    /// request carries on without Redis.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout.min(LONGEST);
        self
    }

    /// Deadline to establish a connection, and how long a silent connection may stay
    /// unanswered before fred drops it (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.min(LONGEST);
        self
    }

    /// Delay between reconnection attempts (default 200 ms; retried forever).
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay.min(LONGEST);
        self
    }

    /// Most Redis commands in flight from request paths; beyond it reads skip Redis
    /// instead of queueing (default 1,024).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Deadline of each step of a flush or tag invalidation (default 5 s).
    pub fn maintenance_timeout(mut self, timeout: Duration) -> Self {
        self.maintenance_timeout = timeout.min(LONGEST);
        self
    }

    /// Keys per SCAN/SSCAN page and per UNLINK batch in flushes (default 500).
    pub fn scan_batch(mut self, n: u32) -> Self {
        self.scan_batch = n;
        self
    }

    /// Value format in Redis (default [`MessagePack`]; [`Json`](crate::Json) with feature
    /// `json`; or your own [`Codec`]).
    ///
    /// Entries written with another codec, or by another build's envelope format, are
    /// misses for this cache, never errors. A codec other than the built-in ones must use an
    /// id from 128 up: [`build`](Self::build) refuses it otherwise.
    pub fn codec<C: Codec>(mut self, codec: C) -> Self {
        self.codec_builtin = codec::is_builtin::<C>();
        self.codec = Arc::new(codec);
        self
    }

    /// Compresses (LZ4) the values whose encoded size is at least `bytes` before they go to
    /// Redis (default 1 KiB); `None` turns compression off. Values LZ4 does not shrink, and
    /// values over 64 MiB, are stored as they are.
    ///
    /// Compressed entries are written in a newer envelope version: readers built without the
    /// `compression` feature, or before it existed, take them for misses (and load the value
    /// themselves), so turn it on once every instance sharing the namespace has the feature.
    /// Uncompressed entries stay readable by all.
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
    pub fn compress_above(mut self, bytes: impl Into<Option<usize>>) -> Self {
        self.compress_above = bytes.into();
        self
    }

    /// Declares a class. A class named `default` is added if you declare none.
    pub fn class(mut self, class: Class) -> Self {
        self.classes.push(class);
        self
    }

    /// The tiered flush-on-outage policy (default: nothing under 5 minutes, the volatile
    /// classes from 5 minutes, everything from 30; see [`OutagePolicy`]).
    pub fn outage_policy(mut self, policy: OutagePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How often the health monitor probes Redis and writes the heartbeat (default 500 ms).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval.min(LONGEST);
        self
    }

    /// Successful probes in a row before Redis is used again after an outage (default 3).
    pub fn recovery_probes(mut self, n: u32) -> Self {
        self.recovery_probes = n;
        self
    }

    /// Failed request commands in a row that open the circuit (default 3).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// Most invalidation operations kept while Redis is down (default 10,000); past it,
    /// recovery flushes the whole namespace.
    ///
    /// As many applied ones are remembered, so that when Redis comes back without writes it
    /// had acknowledged (restarted from a snapshot, or a failover) every invalidation made
    /// since the data's age is applied again. If the data is older than the oldest
    /// remembered one, and invalidations were forgotten since, recovery flushes the whole
    /// namespace too: it is the only scope certain to cover them.
    pub fn journal_capacity(mut self, n: usize) -> Self {
        self.journal_capacity = n;
        self
    }

    /// How far back invalidations are re-applied at least, after a Sentinel master switch
    /// or any recovery, since writes acknowledged by an old master may be lost (default
    /// 30 s). After a restart from a snapshot older than this, they are re-applied from the
    /// snapshot's age (see [`journal_capacity`](Self::journal_capacity)).
    pub fn failover_replay_window(mut self, window: Duration) -> Self {
        self.failover_replay_window = window.min(LONGEST);
        self
    }

    /// Whether invalidations travel between instances over Redis pub/sub (default on with
    /// Redis).
    ///
    /// With it, an invalidation made by one instance reaches every other instance's local
    /// store, and after a gap in the channel each instance revalidates its local entries
    /// against Redis (see [multi-instance coherence](crate#multi-instance-coherence)). Turn it
    /// off only for a single instance, or where serving a local entry until its TTL after
    /// another instance invalidated it is acceptable.
    pub fn backplane(mut self, enabled: bool) -> Self {
        self.backplane = enabled;
        self
    }

    /// Whether Redis reports every change to this cache's entries, so that local copies of
    /// entries changed outside stormcache are dropped too (default off; feature
    /// `client-tracking`).
    ///
    /// The backplane carries what stormcache instances do. It does not see a `DEL` from
    /// redis-cli, another service writing an entry's key, or an entry that expires or is
    /// evicted in Redis: without tracking, every instance keeps serving its local copy until
    /// the copy's own TTL. With tracking, each instance opens one more connection per Redis
    /// master (RESP3, Redis 6.2 or later) and arms `CLIENT TRACKING ON BCAST` with one
    /// prefix per class (`<namespace>:<class>:`); each key Redis reports removes the local
    /// entry of that class and key, typically within a millisecond or two of the change.
    /// Works on standalone servers, Sentinel groups (moving to the new master on a switch)
    /// and Clusters (every master is armed).
    ///
    /// What it does not replace: the backplane still carries tag, class and namespace
    /// invalidations (a tag invalidation deletes keys in Redis, which tracking would report
    /// one by one, but the local entries it reaches by tag may have no key in Redis), and
    /// FLUSHALL/FLUSHDB are not reported. Tracking has gaps of its own: a server forgets it
    /// when a connection drops, and changes made meanwhile are never reported. So from the
    /// first sign of trouble until every master tracks again, local entries are revalidated
    /// against Redis on their next read instead of being served (as during a backplane gap;
    /// [`Cache::coherent`](crate::Cache::coherent) is false meanwhile), and entries written
    /// before it stay so until rewritten.
    ///
    /// It needs RESP3 and `CLIENT TRACKINGINFO` (Redis 6.2 or later): against an older
    /// server tracking is never armed, so local entries are always revalidated against Redis
    /// and [`Cache::coherent`](crate::Cache::coherent) (and readiness) stays false — turn it
    /// on only where every server qualifies.
    ///
    /// The cost: this instance's own writes are reported too, and a report cannot be told
    /// apart from another writer's change made right after, so an entry written through
    /// this instance usually loses its local copy and is read back from Redis once (a GET,
    /// not a load). Loads that race a report are not stored locally.
    #[cfg(feature = "client-tracking")]
    #[cfg_attr(docsrs, doc(cfg(feature = "client-tracking")))]
    pub fn client_tracking(mut self, enabled: bool) -> Self {
        self.client_tracking = enabled;
        self
    }

    /// Checks the configuration and builds the cache.
    ///
    /// With a Redis URL this must run inside a Tokio runtime: the connection is made in the
    /// background, and an unreachable Redis is not an error.
    pub fn build(self) -> Result<Cache, Error> {
        check_name("namespace", &self.namespace)?;
        if self.default_ttl.is_zero() {
            return Err(Error::Config("default_ttl must be positive".into()));
        }
        if self.command_timeout.is_zero() {
            return Err(Error::Config("command_timeout must be positive".into()));
        }
        if self.probe_interval.is_zero() {
            return Err(Error::Config("probe_interval must be positive".into()));
        }
        if !self.codec_builtin && self.codec.id() < codec::FIRST_USER_ID {
            return Err(Error::Config(format!(
                "codec `{}` has id {}: ids below {} are reserved for the built-in codecs",
                self.codec.name(),
                self.codec.id(),
                codec::FIRST_USER_ID
            )));
        }
        let classes = Classes::new(self.classes, self.default_ttl)?;
        let settings = match &self.redis_url {
            None => None,
            Some(url) => Some(RedisSettings {
                url: url.clone(),
                command_timeout: self.command_timeout,
                connect_timeout: self.connect_timeout,
                reconnect_delay: self.reconnect_delay,
                max_in_flight: self.max_in_flight,
                maintenance_timeout: self.maintenance_timeout,
                scan_batch: self.scan_batch,
            }),
        };
        let redis = match &settings {
            None => None,
            Some(settings) => Some(
                RedisStore::connect(settings, &self.namespace)?
                    .reporting_commands_to(Telemetry::redis_command_histogram(&self.namespace)),
            ),
        };
        let backplane = (redis.is_some() && self.backplane).then(|| {
            Arc::new(Backplane::new(
                &self.namespace,
                self.command_timeout,
                self.probe_interval,
            ))
        });
        let tracking = (redis.is_some() && self.client_tracking)
            .then(|| Arc::new(Tracking::new(self.probe_interval, self.command_timeout)));
        let events = Events::default();
        let breaker =
            Breaker::new(self.failure_threshold).reporting_to(&self.namespace, events.clone());
        let core = Arc::new(Core::new(core::Parts {
            namespace: Arc::from(self.namespace),
            classes,
            local: LocalStore::new(self.capacity),
            redis,
            codec: self.codec,
            compress_above: self.compress_above,
            breaker,
            command_timeout: self.command_timeout,
            events: events.clone(),
        }));
        // Past the age at which recovery flushes everything, a remembered invalidation is of
        // no more use.
        let memory_horizon = self
            .policy
            .tiers()
            .iter()
            .find(|t| t.scope == FlushScope::All)
            .map(|t| t.from.max(self.failover_replay_window));
        let invalidator = Arc::new(
            Invalidator::new(
                Journal::new(self.journal_capacity, memory_horizon).reporting_to(events.clone()),
                backplane,
            )
            .with_tracking(tracking),
        );
        if let Some(settings) = &settings {
            let monitor = MonitorConfig {
                probe_interval: self.probe_interval,
                recovery_probes: self.recovery_probes.max(1),
                policy: self.policy,
                reapply_window: self.failover_replay_window,
            };
            coherence::spawn(&core, &invalidator, settings, monitor);
        } else {
            coherence::spawn_local(&core, &invalidator, self.probe_interval);
        }
        Ok(Cache::from_parts(core, invalidator))
    }
}

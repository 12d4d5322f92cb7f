//! The [`Cache`] handle: its reads (in `read`), writes, invalidations and status.
//!
//! A read goes local store → Redis → loader, and each level that answers fills the levels
//! above it. Redis is optional at every step: when it is not configured, not answering, or
//! answers with bytes that do not decode, the read carries on as if Redis had missed. So a
//! request never fails because of the cache; at worst it costs one command deadline.

pub mod adapt;
mod builder;
mod eager_refresh;
mod global;
mod load;
mod read;
mod stampede;

use std::sync::Arc;
use std::time::Duration;

pub use self::builder::CacheBuilder;
use self::eager_refresh::Refreshing;
pub use self::global::{global, install};
use crate::coherence::Invalidator;
use crate::core::Core;
use crate::key::Key;
use crate::model::unix_ms;
use crate::model::{Cacheable, Counters, EntryOptions, Invalidation, InvalidationReport, Status};

/// A read-through cache: a local store in front of an optional Redis.
///
/// Cheap to clone (an `Arc`), `Send + Sync`: build one at start-up and share it.
///
/// ```
/// use std::time::Duration;
/// use stormcache::{Cache, EntryOptions, Key};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormcache::Error> {
/// let cache = Cache::builder("shop").build()?; // add .redis_url(..) for Redis
///
/// let user = "alice";
/// let key = Key::builder("user:groups:").value(user).build();
/// let opts = EntryOptions::new().ttl(Duration::from_secs(900));
/// let groups: Vec<String> = cache
///     .get_or_load(key, &opts, || async { vec!["staff".to_owned()] })
///     .await;
/// assert_eq!(groups, ["staff"]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    // One `Arc`, so that a clone is one atomic increment: tower and axum clone services, and
    // so their caches, per request.
    shared: Arc<Shared>,
}

/// What every handle on one cache shares. The core and the invalidator have `Arc`s of their
/// own because background tasks hold them (the core weakly) without the handle.
struct Shared {
    core: Arc<Core>,
    invalidator: Arc<Invalidator>,
    refreshing: Arc<Refreshing>,
}

impl Cache {
    /// Starts building a cache whose keys live under `namespace` (1 to 64 of
    /// `A-Z a-z 0-9 _ . -`), so several services can share one Redis database.
    pub fn builder(namespace: impl Into<String>) -> CacheBuilder {
        CacheBuilder::new(namespace)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        self.shared.core.namespace()
    }

    /// Whether a Redis URL was configured.
    pub fn has_redis(&self) -> bool {
        self.shared.core.has_redis()
    }

    /// Whether the cache declares the class `name` (`default` always is). Entries of an
    /// undeclared class are not cached: the mistake is logged as an error, and
    /// `CacheLayer::class` refuses it when the router is built.
    pub fn has_class(&self, name: &str) -> bool {
        self.shared.core.declares(name)
    }

    /// The counters since the cache was built.
    pub fn counters(&self) -> Counters {
        self.shared.core.stats().snapshot()
    }

    /// Approximate number of entries in the local store.
    pub fn local_entry_count(&self) -> u64 {
        self.shared.core.local_entry_count()
    }

    /// Approximate weighted size of the local store: bytes under [`LocalCapacity::Bytes`]
    /// (the default; each value's encoded size plus its key and a fixed overhead per
    /// entry), entries under [`LocalCapacity::Entries`]. Pending evictions run first, so
    /// it is within the bound.
    ///
    /// [`LocalCapacity::Bytes`]: crate::LocalCapacity::Bytes
    /// [`LocalCapacity::Entries`]: crate::LocalCapacity::Entries
    pub fn local_weighted_size(&self) -> u64 {
        self.shared.core.local_weighted_size()
    }

    /// Removes `key` (of `options`' class) from this process's local store only: no Redis,
    /// no other instance. For bounds kept per caller (the HTTP layer's `max_entries`).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn forget_local(&self, key: &Key, options: &EntryOptions) {
        let core = &*self.shared.core;
        if let Ok(local_key) = core.local_key(key.clone(), options) {
            core.remove_local(&local_key);
        }
    }

    /// Writes a value to the local store and to Redis; other instances drop their local
    /// copies of the key (see [multi-instance coherence](crate#multi-instance-coherence)).
    ///
    /// Loads of the key begun before the write do not store over it. If Redis is down, or
    /// the write or the announcement fails, an invalidation of the key is journaled: Redis's
    /// old value and the other instances' copies go as soon as Redis answers, while this
    /// instance serves the new value.
    pub async fn set<T: Cacheable>(&self, key: Key, value: T, options: &EntryOptions) {
        let core = &*self.shared.core;
        // An undeclared class: not cached (the core has logged why).
        let Ok(local_key) = core.local_key(key, options) else {
            return;
        };
        let shape = core.shape(local_key.class, options);
        self.shared
            .invalidator
            .write(core, &local_key, &value, &shape, &options.tags)
            .await;
    }

    /// Removes what `inv` names from the local store, then from Redis, and tells the other
    /// instances; returns when all of it is done.
    ///
    /// Never fails: if Redis is down or fails, the Redis half goes to the journal and is
    /// replayed as soon as Redis answers, before Redis is read again after an outage. Once
    /// started it finishes even if this future is dropped. A large tag or class can take a
    /// while; on a request path use [`invalidate_promptly`](Cache::invalidate_promptly).
    pub async fn invalidate(&self, inv: &Invalidation) -> InvalidationReport {
        self.shared
            .invalidator
            .invalidate(&self.shared.core, inv, None)
            .await
    }

    /// [`invalidate`](Cache::invalidate) for request paths: waits for the local store, and
    /// for Redis and the other instances no longer than one command deadline
    /// ([`CacheBuilder::command_timeout`]). Past it the report says
    /// [`RedisOutcome::Pending`](crate::RedisOutcome::Pending) and the invalidation carries
    /// on in the background, journaled and retried if Redis fails. `InvalidateLayer` and
    /// `#[invalidate]` use it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormcache::Error> {
    /// use stormcache::{Cache, Invalidation, Key};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let report = cache
    ///     .invalidate_promptly(&Invalidation::new().tag(Key::literal("user:alice")?))
    ///     .await;
    /// assert_eq!(report.redis, stormcache::RedisOutcome::NotConfigured);
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_promptly(&self, inv: &Invalidation) -> InvalidationReport {
        self.invalidate_within(inv, self.shared.core.command_timeout())
            .await
    }

    /// [`invalidate`](Cache::invalidate), waiting for Redis no longer than `wait`.
    pub(crate) async fn invalidate_within(
        &self,
        inv: &Invalidation,
        wait: Duration,
    ) -> InvalidationReport {
        self.shared
            .invalidator
            .invalidate(&self.shared.core, inv, Some(wait))
            .await
    }

    /// Removes one key, in whichever class it was stored.
    pub async fn remove(&self, key: &Key) -> InvalidationReport {
        self.invalidate(&Invalidation::new().key(key.clone())).await
    }

    /// Removes every entry carrying `tag`.
    pub async fn invalidate_tag(&self, tag: &Key) -> InvalidationReport {
        self.invalidate(&Invalidation::new().tag(tag.clone())).await
    }

    /// Removes every entry of a class.
    pub async fn flush_class(&self, class: &str) -> InvalidationReport {
        self.invalidate(&Invalidation::new().class(class)).await
    }

    /// Removes everything in the namespace (never anything outside it).
    pub async fn flush_all(&self) -> InvalidationReport {
        self.invalidate(&Invalidation::new().everything()).await
    }

    /// The cache's current status.
    pub fn status(&self) -> Status {
        let core = &*self.shared.core;
        let breaker = core.breaker();
        let journal = self.shared.invalidator.journal();
        Status {
            namespace: self.namespace().to_owned(),
            state: core.health_state(),
            down_since_ms: breaker.down_since().map(unix_ms),
            last_outage: breaker.last_outage(),
            outages: breaker.outages(),
            journal_len: journal.len(),
            journal_overflowed: journal.overflowed(),
            local_entries: self.local_entry_count(),
            counters: self.counters(),
            backplane: self.shared.invalidator.backplane().map(|b| b.status()),
            tracking: self.shared.invalidator.tracking().map(|t| t.status()),
        }
    }

    /// Sets the gauges of the `metrics` facade now: breaker state, journal, local store,
    /// invalidation channel. A background task does so every probe interval; counters and
    /// histograms are reported as things happen (see the README's "Operating stormcache").
    pub fn publish_metrics(&self) {
        self.shared.invalidator.publish_gauges(&self.shared.core);
    }

    /// Whether requests currently use Redis.
    pub fn redis_in_use(&self) -> bool {
        self.shared.core.redis().is_some()
    }

    /// Whether local entries are served as they are: true without Redis or without the
    /// backplane, and otherwise once the invalidation channel is confirmed working. While
    /// it is false and Redis is in use, local entries are revalidated against Redis before
    /// being served (see [`CacheBuilder::backplane`](crate::CacheBuilder::backplane)).
    ///
    /// A service has both `redis_in_use()` and `coherent()` a moment after start (one ping
    /// over the channel) and again a moment after Redis comes back from an outage.
    ///
    /// With client-side tracking (feature `client-tracking`), it also needs tracking armed
    /// on every master (see `CacheBuilder::client_tracking`).
    pub fn coherent(&self) -> bool {
        let invalidator = &self.shared.invalidator;
        invalidator.backplane().map_or(true, |b| b.is_connected())
            && invalidator.tracking().map_or(true, |t| t.is_armed())
    }

    /// Counts a read that `options`' caller served without the cache (the HTTP layer's
    /// bypass), as `result="bypass"`.
    pub(crate) fn count_bypass(&self, options: &EntryOptions) {
        self.shared.core.count_bypass(options);
    }

    /// Whether the cache is ready to serve as configured: without Redis, always; with Redis,
    /// once it is in use and [`coherent`](Self::coherent). What `/readyz` of the
    /// [admin router](crate::admin::router) answers.
    ///
    /// A cache that is not ready still answers every request (from its local store and the
    /// loader); readiness says whether it does so with Redis behind it.
    pub fn is_ready(&self) -> bool {
        !self.has_redis() || (self.redis_in_use() && self.coherent())
    }

    /// Resolves once the cache [is ready](Self::is_ready), checking every 10 ms: for a
    /// service that wants Redis in use before it takes traffic. Bound it with a timeout — a
    /// cache whose Redis never answers is never ready.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormcache::Error> {
    /// let cache = stormcache::Cache::builder("docs").build()?;
    /// let ready = tokio::time::timeout(std::time::Duration::from_secs(5), cache.ready()).await;
    /// assert!(ready.is_ok(), "a local-only cache is ready at once");
    /// # Ok(()) }
    /// ```
    pub async fn ready(&self) {
        while !self.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What happens to this cache from now on — the breaker opening, a recovery and what it
    /// flushed and replayed, gaps in the invalidation channel, a journal overflow, a
    /// stampede lock wait that timed out — for an application to alert or log on. See
    /// [`CacheEvent`](crate::CacheEvent).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<crate::model::CacheEvent> {
        self.shared.core.events().subscribe()
    }
}

impl Cache {
    /// A handle on a built core; the builder has started its background tasks.
    fn from_parts(core: Arc<Core>, invalidator: Arc<Invalidator>) -> Self {
        Cache {
            shared: Arc::new(Shared {
                core,
                invalidator,
                refreshing: Arc::default(),
            }),
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.shared.core.namespace())
            .field("redis", &self.shared.core.has_redis())
            .finish_non_exhaustive()
    }
}

//! The [`Cache`] handle and its read-through path.
//!
//! A read goes local store → Redis → loader, and each level that answers fills the levels
//! above it. Redis is optional at every step: when it is not configured, not answering, or
//! answers with bytes that do not decode, the read carries on as if Redis had missed. So a
//! request never fails because of the cache; at worst it costs one command deadline.
//!
//! The hit path is kept short on purpose — one local lookup, a downcast, a clone and a
//! relaxed counter — and everything else lives in the boxed slow path.

mod builder;
mod eager_refresh;
mod global;
mod load;
mod stampede;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use self::builder::CacheBuilder;
use self::eager_refresh::Refreshing;
pub use self::global::{global, install};
use self::load::Looked;
use crate::coherence::Invalidator;
use crate::core::Core;
use crate::key::Key;
use crate::model::unix_ms;
use crate::model::{
    Cacheable, Counters, EntryOptions, Fetched, Invalidation, InvalidationReport, Lifetime, Status,
};
use tracing::Instrument;

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

    /// Read-through: the cached value of `key`, or the loader's, which is then cached.
    ///
    /// Concurrent misses of one key in this process run the loader once.
    pub async fn get_or_load<T, F, Fut>(&self, key: Key, options: &EntryOptions, loader: F) -> T
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let loaded = self
            .fetch(key, options, || async {
                Ok::<T, Infallible>(loader().await)
            })
            .await;
        match loaded {
            Ok(fetched) => fetched.value,
            Err(never) => match never {},
        }
    }

    /// Read-through with a fallible loader: only `Ok` values are cached, and the loader's
    /// own error is returned.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormcache::Error> {
    /// use stormcache::{Cache, EntryOptions, Key};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let key = Key::literal("config")?;
    /// let failed: Result<String, &str> =
    ///     cache.try_get_or_load(key.clone(), &EntryOptions::new(), || async { Err("db down") }).await;
    /// assert_eq!(failed, Err("db down"));
    /// let loaded: Result<String, &str> =
    ///     cache.try_get_or_load(key, &EntryOptions::new(), || async { Ok("v1".into()) }).await;
    /// assert_eq!(loaded.as_deref(), Ok("v1"));
    /// # Ok(()) }
    /// ```
    pub async fn try_get_or_load<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<T, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.fetch(key, options, loader).await.map(|f| f.value)
    }

    /// The synchronous first step of [`fetch`](Cache::fetch): a fresh value of `key` in the
    /// local store, counted as a local hit, or the key back (`Err`) to go on with `fetch`.
    ///
    /// For callers whose hit path must not allocate or await, such as the HTTP layer.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormcache::Error> {
    /// use stormcache::{Cache, EntryOptions, Key};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let opts = EntryOptions::new();
    /// let key = Key::literal("answer")?;
    /// let key = cache.get_local::<u32>(key, &opts).expect_err("nothing yet");
    /// cache.set(key.clone(), 42u32, &opts).await;
    /// assert_eq!(cache.get_local::<u32>(key, &opts).ok(), Some(42));
    /// # Ok(()) }
    /// ```
    pub fn get_local<T: Cacheable>(&self, key: Key, options: &EntryOptions) -> Result<T, Key> {
        if options.skip_local {
            return Err(key);
        }
        let core = &*self.shared.core;
        let local_key = core.local_key(key, options)?;
        match core.lookup::<T>(&local_key) {
            Some(hit) if core.serves(&hit) => {
                core.stats().l1_hit(local_key.class);
                Ok(hit.value)
            }
            _ => Err(local_key.key),
        }
    }

    /// Read-through that also says where the value came from (the HTTP layer uses it for
    /// `x-cache`). With `stale_for` in the options, a failing loader is answered with the
    /// expired value if it is still inside its grace ([`Origin::Stale`](crate::Origin::Stale)).
    pub async fn fetch<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // The same steps as `fetch_with_lifetime`, not a call to it: the hit path stays
        // one future deep.
        let core = &*self.shared.core;
        match load::look_locally::<T>(core, key, options) {
            Looked::Hit(fetched) => Ok(fetched),
            Looked::Undeclared => load::uncached(core, loader()).await,
            Looked::Miss(local_key, stale) => {
                let span = load::read_span(core, &local_key, options);
                let loader = |_: Option<&T>| loader();
                // Boxed so the hit path's future stays small.
                Box::pin(
                    load::load_coalesced(core, local_key, options, stale, loader, |_: &T| None)
                        .instrument(span),
                )
                .await
            }
        }
    }

    /// [`fetch`](Cache::fetch) where the loader is shown the stale value, if one is kept (the
    /// HTTP layer revalidates it with the origin), and a loaded value may set its own TTL
    /// and grace (`lifetime_of`): the HTTP layer stores a response for as long as its own
    /// headers say it is fresh, which is only known once it is loaded.
    pub(crate) async fn fetch_with_lifetime<T, E, F, Fut, L>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
        lifetime_of: L,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        F: FnOnce(Option<&T>) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        L: FnOnce(&T) -> Option<Lifetime>,
    {
        let core = &*self.shared.core;
        match load::look_locally::<T>(core, key, options) {
            Looked::Hit(fetched) => Ok(fetched),
            Looked::Undeclared => load::uncached(core, loader(None)).await,
            Looked::Miss(local_key, stale) => {
                let span = load::read_span(core, &local_key, options);
                Box::pin(
                    load::load_coalesced(core, local_key, options, stale, loader, lifetime_of)
                        .instrument(span),
                )
                .await
            }
        }
    }

    /// The cached value of `key`, if any (local store, then Redis); no loader.
    pub async fn get<T: Cacheable>(&self, key: &Key, options: &EntryOptions) -> Option<T> {
        let result: Result<Fetched<T>, ()> =
            self.fetch(key.clone(), options, || async { Err(()) }).await;
        result.ok().map(|f| f.value)
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

    /// [`fetch`](Cache::fetch) with eager refresh: with
    /// [`EntryOptions::eager_refresh`], a local hit past the threshold of its TTL is served
    /// and refreshed in the background, once per key at a time.
    ///
    /// The loader must own what it uses (`'static`), since it may outlive the call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use stormcache::{Cache, EntryOptions, Key};
    ///
    /// let cache = Cache::builder("docs").build()?;
    /// let opts = EntryOptions::new().ttl(Duration::from_secs(60)).eager_refresh(0.8);
    /// let sku = String::from("sku-1");
    /// let price = cache
    ///     .fetch_refreshing(Key::builder("price:").value(&sku).build(), &opts, move || async move {
    ///         Ok::<u32, std::io::Error>(if sku == "sku-1" { 990 } else { 0 })
    ///     })
    ///     .await?;
    /// assert_eq!(price.value, 990);
    /// # Ok(()) }
    /// ```
    pub async fn fetch_refreshing<T, E, F, Fut>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        // Without the local store there is no hit to refresh early.
        let Some(threshold) = options.eager_refresh.filter(|_| !options.skip_local) else {
            return self.fetch(key, options, loader).await;
        };
        let local_key = match self.shared.core.local_key(key, options) {
            Ok(local_key) => local_key,
            Err(key) => return self.fetch(key, options, loader).await,
        };
        match eager_refresh::serve_and_refresh(
            &self.shared.core,
            &self.shared.invalidator,
            &self.shared.refreshing,
            local_key,
            options,
            threshold,
            loader,
        ) {
            Ok(fetched) => Ok(fetched),
            Err((local_key, loader)) => self.fetch(local_key.key, options, loader).await,
        }
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
    pub fn coherent(&self) -> bool {
        self.shared
            .invalidator
            .backplane()
            .map_or(true, |b| b.is_connected())
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

//! The [`Cache`] handle and its read-through path.
//!
//! A read goes local store → Redis → loader, and each level that answers fills the levels
//! above it. Redis is optional at every step: when it is not configured, not answering, or
//! answers with bytes that do not decode, the read carries on as if Redis had missed. So a
//! request never fails because of the cache; at worst it costs one command deadline.
//!
//! The hit path is kept short on purpose — one local lookup, a downcast, a clone and a
//! relaxed counter — and everything else lives in the boxed slow path.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backplane::Backplane;
use crate::builder::CacheBuilder;
use crate::class::{ClassId, Classes};
use crate::codec::Codec;
use crate::envelope;
use crate::error::Error;
use crate::health_monitor::Health;
use crate::invalidation::Invalidation;
use crate::journal::Journal;
use crate::key::Key;
use crate::local_store::{LocalHit, LocalKey, LocalStore};
use crate::options::EntryOptions;
use crate::redis_store::RedisStore;
use crate::single_flight::{self, Flights, Join, Outcome};
use crate::stampede_lock::LockOutcome;
use crate::stats::{Counters, Stats};

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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) namespace: Arc<str>,
    pub(crate) classes: Classes,
    pub(crate) local: LocalStore,
    pub(crate) redis: Option<RedisStore>,
    pub(crate) codec: Codec,
    pub(crate) flights: Flights,
    pub(crate) stats: Stats,
    pub(crate) health: Health,
    pub(crate) journal: Journal,
    pub(crate) backplane: Option<Backplane>,
    /// The request deadline of one Redis command.
    pub(crate) command_timeout: Duration,
    /// Keys being refreshed in the background (eager refresh), so each is refreshed once.
    pub(crate) refreshing: std::sync::Mutex<std::collections::HashSet<LocalKey>>,
}

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// The local store (L1).
    Local,
    /// Redis (L2).
    Redis,
    /// The loader ran.
    Loader,
    /// The loader failed and an expired value inside its grace was served.
    Stale,
}

/// What a Redis read found.
pub(crate) enum RedisRead<T> {
    /// A fresh value.
    Fresh(Fresh<T>),
    /// A value past its TTL (usable as a fail-safe fallback only).
    Expired(T),
    /// Nothing usable: absent, undecodable, or the read was shed.
    Miss,
    /// Redis failed to answer.
    Failed,
}

/// A fresh value read from Redis.
pub(crate) struct Fresh<T> {
    pub(crate) value: T,
    /// How long it stays fresh, by the time written with it.
    pub(crate) fresh_for: Duration,
    /// Its encoded size in bytes.
    pub(crate) len: usize,
}

/// A value and where it came from. See [`Cache::fetch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub origin: Origin,
}

/// The bounds of a cacheable value.
///
/// Implemented for every `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`
/// type.
pub trait Cacheable: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Cacheable for T {}

impl Cache {
    /// Starts building a cache whose keys live under `namespace` (1 to 64 of
    /// `A-Z a-z 0-9 _ . -`), so several services can share one Redis database.
    pub fn builder(namespace: impl Into<String>) -> CacheBuilder {
        CacheBuilder::new(namespace)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Whether a Redis URL was configured.
    pub fn has_redis(&self) -> bool {
        self.inner.redis.is_some()
    }

    /// The counters since the cache was built.
    pub fn counters(&self) -> Counters {
        self.inner.stats.snapshot()
    }

    /// Approximate number of entries in the local store.
    pub fn local_entry_count(&self) -> u64 {
        self.inner.local.entry_count()
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
        let inner = &*self.inner;
        let local_key = LocalKey {
            class: inner.class_id(options),
            key,
        };
        match inner.local.get::<T>(&local_key) {
            Some(hit) if inner.serves(&hit) => {
                inner.stats.l1_hit();
                Ok(hit.value)
            }
            _ => Err(local_key.key),
        }
    }

    /// Read-through that also says where the value came from (the HTTP layer uses it for
    /// `x-cache`). With `stale_for` in the options, a failing loader is answered with the
    /// expired value if it is still inside its grace ([`Origin::Stale`]).
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
        let inner = &*self.inner;
        let local_key = LocalKey {
            class: inner.class_id(options),
            key,
        };
        let mut stale = None;
        if let Some(hit) = inner.local.get::<T>(&local_key) {
            if inner.serves(&hit) {
                inner.stats.l1_hit();
                return Ok(Fetched {
                    value: hit.value,
                    origin: Origin::Local,
                });
            }
            // Expired inside its grace, or suspect: kept for a failing loader only.
            if hit.stale || options.stale_for.is_some() {
                stale = Some(hit.value);
            }
        }
        // Boxed so the hit path's future stays small.
        Box::pin(self.load_coalesced(local_key, options, stale, loader)).await
    }

    /// The slow path: join or lead the key's flight.
    async fn load_coalesced<T, E, F, Fut>(
        &self,
        local_key: LocalKey,
        options: &EntryOptions,
        stale: Option<T>,
        loader: F,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // Loads begun before a later invalidation are neither joined nor stored.
        let epoch = self.inner.flights.epoch(&local_key.key);
        let leader = loop {
            match self.inner.flights.join(&local_key, epoch) {
                Join::Leader(leader) => break Some(leader),
                Join::Waiter(rx) => match single_flight::wait(rx).await {
                    Outcome::Done(value, origin) => match value.downcast_ref::<T>() {
                        Some(value) => {
                            return Ok(Fetched {
                                value: value.clone(),
                                origin,
                            })
                        }
                        // Same key read as another type: not ours to share.
                        None => break None,
                    },
                    Outcome::Failed => break None,
                    Outcome::Cancelled => continue,
                },
            }
        };
        // A flight may have finished between our first look and our joining (or the
        // cancelled leader's successor may have finished): look again before loading.
        if let Some(hit) = self
            .inner
            .local
            .get::<T>(&local_key)
            .filter(|h| self.inner.serves(h))
        {
            self.inner.stats.l1_hit();
            if let Some(leader) = leader {
                leader.succeed(Arc::new(hit.value.clone()), Origin::Local);
            }
            return Ok(Fetched {
                value: hit.value,
                origin: Origin::Local,
            });
        }
        let result = self
            .load_through(&local_key, options, stale, loader, epoch)
            .await;
        if let Some(leader) = leader {
            match &result {
                Ok(fetched) => leader.succeed(Arc::new(fetched.value.clone()), fetched.origin),
                Err(_) => leader.fail(),
            }
        }
        result
    }

    /// Redis, then the loader; fills what missed.
    async fn load_through<T, E, F, Fut>(
        &self,
        local_key: &LocalKey,
        options: &EntryOptions,
        mut stale: Option<T>,
        loader: F,
        epoch: single_flight::Epoch,
    ) -> Result<Fetched<T>, E>
    where
        T: Cacheable,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let inner = &*self.inner;
        let ttl = inner.ttl_of(local_key.class, options);
        let grace = options.stale_for.unwrap_or(Duration::ZERO);
        // Where to write the loaded value: only if Redis answered the read.
        let mut redis_key = None;
        if let Some(redis) = inner.redis() {
            let full_key =
                redis.entry_key(inner.classes.get(local_key.class).name(), &local_key.key);
            match inner.read_redis::<T>(redis, &full_key).await {
                RedisRead::Fresh(fresh) => {
                    inner
                        .keep_from_redis(local_key, &fresh, ttl, options, epoch)
                        .await;
                    return Ok(Fetched {
                        value: fresh.value,
                        origin: Origin::Redis,
                    });
                }
                RedisRead::Expired(value) => {
                    if !grace.is_zero() && stale.is_none() {
                        stale = Some(value);
                    }
                    redis_key = Some(full_key);
                }
                RedisRead::Miss => redis_key = Some(full_key),
                // Do not write either: a request waits for one deadline at most.
                RedisRead::Failed => {}
            }
        }

        // Across instances, too, one load: wait for the holder of the lock, if asked to.
        let mut lock = None;
        if let (Some(lock_ttl), Some(full_key)) = (options.lock, redis_key.as_deref()) {
            match self
                .lock_or_wait::<T>(local_key, full_key, options, lock_ttl, epoch)
                .await
            {
                LockOutcome::Held(guard) => lock = Some(guard),
                LockOutcome::Filled(value) => {
                    return Ok(Fetched {
                        value,
                        origin: Origin::Redis,
                    })
                }
                LockOutcome::Unavailable => {}
            }
        }

        inner.stats.miss();
        inner.stats.loader_call();
        let loaded = loader().await;
        if let Ok(value) = &loaded {
            // The loader may have read the origin before a change whose invalidation has
            // started since: then the value is returned but not stored.
            if let Some(_storing) = inner.flights.begin_store(epoch).await {
                inner
                    .store(
                        local_key,
                        redis_key.as_deref(),
                        value,
                        ttl,
                        grace,
                        &options.tags,
                    )
                    .await;
            } else {
                tracing::debug!(key = %local_key.key, "an invalidation ran during the load; its value is not stored");
            }
        }
        if let Some(lock) = lock {
            lock.release(inner.command_timeout).await;
        }
        match loaded {
            Ok(value) => Ok(Fetched {
                value,
                origin: Origin::Loader,
            }),
            Err(error) => match stale {
                Some(value) => {
                    inner.stats.stale_served();
                    tracing::warn!(key = %local_key.key, "loader failed; serving the stale value inside its grace");
                    Ok(Fetched {
                        value,
                        origin: Origin::Stale,
                    })
                }
                None => Err(error),
            },
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
    pub async fn set<T: Cacheable>(&self, key: Key, value: T, options: &EntryOptions) {
        let inner = &*self.inner;
        let class_id = inner.class_id(options);
        let local_key = LocalKey {
            class: class_id,
            key,
        };
        let redis_key = inner
            .redis()
            .map(|r| r.entry_key(inner.classes.get(class_id).name(), &local_key.key));
        let ttl = inner.ttl_of(class_id, options);
        let grace = options.stale_for.unwrap_or(Duration::ZERO);
        inner
            .store(
                &local_key,
                redis_key.as_deref(),
                &value,
                ttl,
                grace,
                &options.tags,
            )
            .await;
        if redis_key.is_some() {
            inner.announce_write(local_key.key).await;
        }
    }
}

impl Inner {
    #[inline]
    pub(crate) fn class_id(&self, options: &EntryOptions) -> ClassId {
        match self.classes.resolve(options.class.as_deref()) {
            Some(id) => id,
            None => {
                tracing::warn!(class = ?options.class, "unknown class; using the default class");
                self.classes.default_id()
            }
        }
    }

    pub(crate) fn ttl_of(&self, class: ClassId, options: &EntryOptions) -> Duration {
        options
            .ttl
            .or(self.classes.get(class).default_ttl())
            .unwrap_or(Duration::from_secs(300))
    }

    /// Tells the other instances that `key` has a new value in Redis: they drop their local
    /// copies and read it from Redis next time.
    pub(crate) async fn announce_write(&self, key: Key) {
        if let Some(backplane) = &self.backplane {
            let changed = Invalidation::new().key(key);
            if let Err(error) = backplane.publish(self, &changed).await {
                tracing::warn!(%error, "other instances not told of the new value; their copies expire with their TTL");
            }
        }
    }

    /// Whether a local hit may be served: fresh, and either trusted or the best there is
    /// because Redis cannot be asked (see the [backplane](crate::backplane)'s rule).
    #[inline]
    pub(crate) fn serves<T>(&self, hit: &LocalHit<T>) -> bool {
        !hit.stale && (!hit.suspect || !self.health.allows_requests())
    }

    /// Redis, when configured and the breaker lets requests through.
    #[inline]
    pub(crate) fn redis(&self) -> Option<&RedisStore> {
        self.redis
            .as_ref()
            .filter(|_| self.health.allows_requests())
    }

    /// Publishes the counters through the `metrics` facade.
    pub(crate) fn publish_metrics(&self) {
        let c = self.stats.snapshot();
        let ns = self.namespace.to_string();
        for (name, value) in [
            ("stormcache_l1_hits", c.l1_hits),
            ("stormcache_l2_hits", c.l2_hits),
            ("stormcache_misses", c.misses),
            ("stormcache_stale_served", c.stale_served),
            ("stormcache_loader_calls", c.loader_calls),
            ("stormcache_redis_errors", c.redis_errors),
            ("stormcache_decode_errors", c.decode_errors),
        ] {
            metrics::counter!(name, "namespace" => ns.clone()).absolute(value);
        }
        metrics::gauge!("stormcache_journal_len", "namespace" => ns.clone())
            .set(self.journal.len() as f64);
        metrics::gauge!("stormcache_redis_healthy", "namespace" => ns).set(
            if self.health.allows_requests() {
                1.0
            } else {
                0.0
            },
        );
    }

    /// Reads an entry from Redis. Undecodable bytes are a miss (and get overwritten); a
    /// failure is counted against Redis's health, shedding is not.
    pub(crate) async fn read_redis<T: Cacheable>(
        &self,
        redis: &RedisStore,
        full_key: &str,
    ) -> RedisRead<T> {
        match redis.get(full_key).await {
            Ok(Some(bytes)) => {
                self.health.record_success();
                match self.decode::<T>(&bytes) {
                    Ok((value, fresh_until)) => match fresh_until.duration_since(SystemTime::now())
                    {
                        Ok(fresh_for) if !fresh_for.is_zero() => RedisRead::Fresh(Fresh {
                            value,
                            fresh_for,
                            len: bytes.len(),
                        }),
                        _ => RedisRead::Expired(value),
                    },
                    Err(error) => {
                        self.stats.decode_error();
                        tracing::warn!(key = %full_key, %error, "undecodable cached bytes; treating as a miss");
                        RedisRead::Miss
                    }
                }
            }
            Ok(None) => {
                self.health.record_success();
                RedisRead::Miss
            }
            // Shedding load is not a sign of a sick Redis.
            Err(Error::Overloaded) => RedisRead::Miss,
            Err(error) => {
                self.stats.redis_error();
                self.health.record_failure("read failed");
                tracing::debug!(key = %full_key, %error, "Redis read failed; carrying on without it");
                RedisRead::Failed
            }
        }
    }

    /// Keeps a value read from Redis in the local store, for what is left of its freshness
    /// but no longer than `ttl` — unless it was read before an invalidation that has started
    /// since: then it is served but not kept.
    pub(crate) async fn keep_from_redis<T: Cacheable>(
        &self,
        local_key: &LocalKey,
        fresh: &Fresh<T>,
        ttl: Duration,
        options: &EntryOptions,
        epoch: single_flight::Epoch,
    ) {
        if let Some(_storing) = self.flights.begin_store(epoch).await {
            self.local.insert(
                local_key.clone(),
                fresh.value.clone(),
                fresh.fresh_for.min(ttl),
                options.stale_for.unwrap_or(Duration::ZERO),
                &options.tags,
                fresh.len,
            );
        }
        self.stats.l2_hit();
    }

    fn decode<T: Cacheable>(&self, bytes: &[u8]) -> Result<(T, SystemTime), Error> {
        let opened = envelope::open(self.codec, bytes)?;
        let value = self.codec.decode(opened.payload)?;
        Ok((value, opened.fresh_until))
    }

    /// Writes a loaded value to Redis (if `redis_key`) and to the local store.
    pub(crate) async fn store<T: Cacheable>(
        &self,
        local_key: &LocalKey,
        redis_key: Option<&str>,
        value: &T,
        ttl: Duration,
        grace: Duration,
        tags: &[Key],
    ) {
        let mut encoded_len = 0;
        if redis_key.is_some() || self.local.weighs_bytes() {
            match self.codec.encode(value) {
                Ok(payload) => {
                    encoded_len = payload.len();
                    if let (Some(redis), Some(full_key)) = (self.redis(), redis_key) {
                        let sealed = envelope::seal(self.codec, SystemTime::now() + ttl, &payload);
                        match redis.set(full_key, sealed, ttl + grace, tags).await {
                            Ok(()) | Err(Error::Overloaded) => {}
                            Err(error) => {
                                self.stats.redis_error();
                                self.health.record_failure("write failed");
                                tracing::debug!(key = %full_key, %error, "Redis write failed; kept locally");
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(key = %local_key.key, %error, "value could not be encoded; cached locally only");
                }
            }
        }
        self.local.insert(
            local_key.clone(),
            value.clone(),
            ttl,
            grace,
            tags,
            encoded_len,
        );
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.namespace)
            .field("redis", &self.inner.redis.is_some())
            .finish_non_exhaustive()
    }
}

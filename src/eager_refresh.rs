//! Eager refresh: hot keys are reloaded in the background before they expire.
//!
//! Without it, a hot key's expiry sends every caller of that moment to the slow path, and
//! the latency of its loader shows up on the request path once per TTL. With
//! [`EntryOptions::eager_refresh`], a hit late in its TTL is served at once and also starts a
//! background load that replaces the entry in both stores before it expires.
//!
//! Once per key: a key being refreshed is in the cache's `refreshing` set, and hits meanwhile
//! just serve. With a [distributed lock](crate::stampede_lock) in the options, the refresh
//! also takes the key's lock without waiting, so among the instances only one refreshes a
//! key. The refreshed value is announced like a `set`: the other instances drop their
//! copies and read the new one from Redis. As for any load, a refresh that overlapped an
//! invalidation stores nothing.

use std::future::Future;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use crate::cache::{Cache, Cacheable, Fetched, Origin, RedisRead};
use crate::key::Key;
use crate::local_store::LocalKey;
use crate::options::EntryOptions;

/// Removes a key from the `refreshing` set however its refresh ends.
struct Claim {
    cache: Cache,
    key: Option<LocalKey>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.cache
                .inner
                .refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
    }
}

impl Cache {
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
        let inner = &*self.inner;
        let Some(threshold) = options.eager_refresh else {
            return self.fetch(key, options, loader).await;
        };
        let local_key = LocalKey {
            class: inner.class_id(options),
            key,
        };
        if let Some(hit) = inner.local.get::<T>(&local_key) {
            if inner.serves(&hit) {
                inner.stats.l1_hit();
                let ttl = inner.ttl_of(local_key.class, options);
                let left = hit.fresh_until.saturating_duration_since(Instant::now());
                let refresh_window = ttl.mul_f64(1.0 - f64::from(threshold) / 1000.0);
                if left < refresh_window {
                    self.refresh_in_background(local_key, options, refresh_window, loader);
                }
                return Ok(Fetched {
                    value: hit.value,
                    origin: Origin::Local,
                });
            }
        }
        self.fetch(local_key.key, options, loader).await
    }

    fn refresh_in_background<T, E, F, Fut>(
        &self,
        key: LocalKey,
        options: &EntryOptions,
        refresh_window: Duration,
        loader: F,
    ) where
        T: Cacheable,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let inner = &*self.inner;
        if !inner
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
        {
            return;
        }
        let claim = Claim {
            cache: self.clone(),
            key: Some(key.clone()),
        };
        let options = options.clone();
        inner.stats.eager_refresh();
        tokio::spawn(async move {
            let inner = &*claim.cache.inner;
            let epoch = inner.flights.epoch(&key.key);
            let ttl = inner.ttl_of(key.class, &options);
            let redis = inner.redis();
            let redis_key =
                redis.map(|r| r.entry_key(inner.classes.get(key.class).name(), &key.key));
            // Among instances, one refresh: skip if another holds the key's lock.
            let mut lock = None;
            if let (Some(lock_ttl), Some(redis)) = (options.lock, redis) {
                let lock_key = redis.lock_key(inner.classes.get(key.class).name(), &key.key);
                match redis
                    .try_lock(&lock_key, lock_ttl, inner.command_timeout)
                    .await
                {
                    Ok(Some(guard)) => lock = Some(guard),
                    Ok(None) => return,
                    Err(_) => {}
                }
            }
            // Another instance may have refreshed it already: then take its value.
            if let (Some(redis), Some(full_key)) = (redis, redis_key.as_deref()) {
                if let RedisRead::Fresh(fresh) = inner.read_redis::<T>(redis, full_key).await {
                    if fresh.fresh_for >= refresh_window {
                        inner
                            .keep_from_redis(&key, &fresh, ttl, &options, epoch)
                            .await;
                        if let Some(lock) = lock {
                            lock.release(inner.command_timeout).await;
                        }
                        return;
                    }
                }
            }
            inner.stats.loader_call();
            if let Ok(value) = loader().await {
                let stored = match inner.flights.begin_store(epoch).await {
                    Some(_storing) => {
                        let grace = options.stale_for.unwrap_or(Duration::ZERO);
                        inner
                            .store(
                                &key,
                                redis_key.as_deref(),
                                &value,
                                ttl,
                                grace,
                                &options.tags,
                            )
                            .await;
                        true
                    }
                    None => false,
                };
                if stored && redis_key.is_some() {
                    inner.announce_write(key.key.clone()).await;
                }
            } else {
                tracing::debug!(key = %key.key, "eager refresh failed; the entry expires as usual");
            }
            if let Some(lock) = lock {
                lock.release(inner.command_timeout).await;
            }
        });
    }
}

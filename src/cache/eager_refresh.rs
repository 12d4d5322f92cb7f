//! Eager refresh: hot keys are reloaded in the background before they expire.
//!
//! Without it, a hot key's expiry sends every caller of that moment to the slow path, and
//! the latency of its loader shows up on the request path once per TTL. With
//! [`EntryOptions::eager_refresh`], a hit late in its TTL is served at once and also starts a
//! background load that replaces the entry in both stores before it expires.
//!
//! Once per key: a key being refreshed is in the cache's [`Refreshing`] set, and hits
//! meanwhile just serve. With a distributed lock in the options, the refresh
//! also takes the key's lock without waiting, so among the instances only one refreshes a
//! key. The refreshed value is announced like a `set`: the other instances drop their
//! copies and read the new one from Redis. As for any load, a refresh that overlapped an
//! invalidation stores nothing.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{adapt, Cache};
use crate::coherence::Invalidator;
use crate::core::{Core, RedisRead, WriteIf};
use crate::key::Key;
use crate::model::{Cacheable, EntryOptions, Fetched, Lifetime, Origin, LONGEST};
use crate::store::LocalKey;

/// The keys being refreshed in the background, so each is refreshed once at a time.
#[derive(Default)]
pub(super) struct Refreshing {
    keys: Mutex<HashSet<LocalKey>>,
}

impl Refreshing {
    /// Claims `key` for a refresh; `None` if it is being refreshed already.
    fn claim(self: &Arc<Self>, key: &LocalKey) -> Option<Claim> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.insert(key.clone()).then(|| Claim {
            refreshing: Arc::clone(self),
            key: key.clone(),
        })
    }
}

/// Removes a key from the [`Refreshing`] set however its refresh ends.
struct Claim {
    refreshing: Arc<Refreshing>,
    key: LocalKey,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.refreshing
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// How long a background refresh holds the key's lock across instances when the options
/// name no [`distributed_lock`](EntryOptions::distributed_lock): long enough for a slow
/// handler, short enough that a crashed instance does not stop the others for long.
const REFRESH_LOCK: Duration = Duration::from_secs(30);

impl Cache {
    /// Refreshes `key` in the background with `loader`, whose value may set its own
    /// lifetime (`lifetime_of`), as an expired value is being served meanwhile (the HTTP
    /// layer's `stale-while-revalidate`). Once per key at a time in this process; across
    /// instances, the refresh takes the key's lock without waiting (the options' lock TTL,
    /// else 30 s) and gives up if another instance holds it, or has stored a fresh value
    /// already (then that value is kept here). A failed load stores nothing. Counted with
    /// the eager refreshes. Returns whether a refresh started.
    pub(crate) fn refresh_in_background<T, E, F, Fut, L>(
        &self,
        key: Key,
        options: &EntryOptions,
        loader: F,
        lifetime_of: L,
    ) -> bool
    where
        T: Cacheable,
        E: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        L: FnOnce(&T) -> Option<Lifetime> + Send + 'static,
    {
        let core = &self.shared.core;
        let Ok(local_key) = core.local_key(key, options) else {
            return false;
        };
        let Some(claim) = self.shared.refreshing.claim(&local_key) else {
            return false;
        };
        let mut options = options.clone();
        options.lock = options.lock.or(Some(REFRESH_LOCK));
        let loader = move || async move {
            let loaded = loader().await;
            if let Some(lifetime) = loaded.as_ref().ok().and_then(lifetime_of) {
                adapt::record_lifetime(lifetime);
            }
            loaded
        };
        core.stats().eager_refresh();
        tokio::spawn(refresh(
            Arc::clone(core),
            Arc::clone(&self.shared.invalidator),
            claim,
            options,
            // Any fresh value another instance stored is as good as this refresh's.
            Duration::ZERO,
            loader,
        ));
        true
    }
}

/// A fresh local hit, refreshed in the background if it is past the threshold of its TTL;
/// `Err` with the key back if there is no hit to serve.
pub(super) fn serve_and_refresh<T, E, F, Fut>(
    core: &Arc<Core>,
    invalidator: &Arc<Invalidator>,
    refreshing: &Arc<Refreshing>,
    local_key: LocalKey,
    options: &EntryOptions,
    threshold: u16,
    loader: F,
) -> Result<Fetched<T>, (LocalKey, F)>
where
    T: Cacheable,
    E: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let Some(hit) = core.lookup::<T>(&local_key).filter(|hit| core.serves(hit)) else {
        return Err((local_key, loader));
    };
    core.stats().l1_hit(local_key.class);
    // The threshold is of the local copy's life, which a local TTL may cut short.
    let shape = core.shape(local_key.class, options);
    let lifetime = shape.local_fresh_for(shape.ttl);
    let left = hit.fresh_until.saturating_duration_since(Instant::now());
    let refresh_window = lifetime.mul_f64(1.0 - f64::from(threshold) / 1000.0);
    if left < refresh_window {
        if let Some(claim) = refreshing.claim(&local_key) {
            core.stats().eager_refresh();
            tokio::spawn(refresh(
                Arc::clone(core),
                Arc::clone(invalidator),
                claim,
                options.clone(),
                refresh_window,
                loader,
            ));
        }
    }
    Ok(Fetched {
        value: hit.value,
        origin: Origin::Local,
    })
}

/// Reloads `claim`'s key and stores it in both stores, unless another instance did already.
async fn refresh<T, E, F, Fut>(
    core: Arc<Core>,
    invalidator: Arc<Invalidator>,
    claim: Claim,
    options: EntryOptions,
    refresh_window: Duration,
    loader: F,
) where
    T: Cacheable,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let key = &claim.key;
    let epoch = core.flights().epoch(key, &options.tags);
    let shape = core.shape(key.class, &options);
    let redis = core.redis().filter(|_| shape.redis);
    let redis_key = redis.map(|r| core.entry_key(r, key));
    // Among instances, one refresh: skip if another holds the key's lock.
    let mut lock = None;
    if let (Some(lock_ttl), Some(redis)) = (options.lock, redis) {
        let lock_key = core.lock_key(redis, key);
        match redis
            .try_lock(&lock_key, lock_ttl.min(LONGEST), core.command_timeout())
            .await
        {
            Ok(Some(guard)) => lock = Some(guard),
            Ok(None) => return,
            Err(_) => {}
        }
    }
    // Another instance may have refreshed it already: then take its value. The refreshed
    // value is written over what this read saw only (the lease), never over a newer one.
    let mut leased: Option<(String, WriteIf)> = None;
    if let (Some(redis), Some(full_key)) = (redis, redis_key) {
        let lease = match core
            .read_redis::<T>(redis, key.class, &full_key, &options.tags)
            .await
        {
            RedisRead::Fresh(fresh, lease) => {
                if fresh.fresh_for >= refresh_window {
                    core.keep_from_redis(key, &fresh, &shape, &options, epoch);
                    if let Some(lock) = lock {
                        lock.release(core.command_timeout()).await;
                    }
                    return;
                }
                Some(lease)
            }
            RedisRead::Expired(_, lease) | RedisRead::Miss(lease) => Some(lease),
            RedisRead::Failed => None,
        };
        leased = lease.map(|lease| (full_key, WriteIf::Unchanged(lease)));
    }
    let before = core.flights().snapshot();
    let started = Instant::now();
    let (loaded, adjust) = adapt::scoped(loader()).await;
    core.stats().refreshed(key.class, started.elapsed());
    let plan = loaded
        .is_ok()
        .then(|| adapt::plan(&core, key, &options, shape, epoch, &before, adjust))
        .flatten();
    if let (Ok(value), Some(plan)) = (loaded, plan) {
        let leased =
            leased.map(|(full_key, write_if)| (full_key, write_if.with_unread_tags(plan.added)));
        let in_redis = match core.flights().begin_store(plan.epoch) {
            Some(_storing) => {
                core.store(key, leased, &value, &plan.shape, &plan.tags, plan.added)
                    .await
            }
            None => false,
        };
        if in_redis {
            invalidator.announce_write(&core, key.key.clone()).await;
        }
    } else {
        tracing::debug!(key = %key.key, "eager refresh failed; the entry expires as usual");
    }
    if let Some(lock) = lock {
        lock.release(core.command_timeout()).await;
    }
}

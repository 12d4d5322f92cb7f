//! The slow path of a read: join or lead the key's flight, then Redis, then the loader.
//!
//! Concurrent misses of one key in this process run one load (see the flights in `core`);
//! with a distributed lock in the options, one load across instances. A value the loader
//! produced is stored in both stores unless an invalidation began while it was loading:
//! then it is returned to its own callers but not stored.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tracing::Span;

use super::stampede::{self, LockOutcome};
use crate::core::{telemetry, wait, Core, Epoch, Join, Outcome, RedisRead, WriteIf};
use crate::key::Key;
use crate::model::{Cacheable, EntryOptions, Fetched, Lifetime, Origin};
use crate::store::LocalKey;

/// What the synchronous first look in the local store found.
pub(super) enum Looked<T> {
    /// A value the local store may serve.
    Hit(Fetched<T>),
    /// Nothing to serve locally: load, with the expired value kept for a failing loader (or
    /// a revalidating one), if any.
    Miss(LocalKey, Option<T>),
    /// A class the cache does not declare: not cached (the core has logged why).
    Undeclared,
}

/// The first step of a read: the local store, counted and traced on a hit.
#[inline]
pub(super) fn look_locally<T: Cacheable>(
    core: &Core,
    key: Key,
    options: &EntryOptions,
) -> Looked<T> {
    let Ok(local_key) = core.local_key(key, options) else {
        return Looked::Undeclared;
    };
    // A plain bool on the options, already in cache: the hit path stays one lookup.
    let found = match options.skip_local {
        true => None,
        false => core.lookup::<T>(&local_key),
    };
    let mut stale = None;
    if let Some(hit) = found {
        if core.serves(&hit) {
            core.stats().l1_hit(local_key.class);
            telemetry::local_hit_span(
                core.namespace(),
                core.class_name(local_key.class),
                options.key_template_name(),
            );
            return Looked::Hit(Fetched {
                value: hit.value,
                origin: Origin::Local,
            });
        }
        // Expired inside its grace, or suspect: kept for a failing loader only.
        if hit.stale || options.stale_for.is_some() {
            stale = Some(hit.value);
        }
    }
    Looked::Miss(local_key, stale)
}

/// The span of a read that goes past the local store.
pub(super) fn read_span(core: &Core, local_key: &LocalKey, options: &EntryOptions) -> Span {
    telemetry::read_span(
        core.namespace(),
        core.class_name(local_key.class),
        options.key_template_name(),
    )
}

/// A read of an undeclared class: the loader's value, not cached.
pub(super) async fn uncached<T, E>(
    core: &Core,
    loading: impl Future<Output = Result<T, E>>,
) -> Result<Fetched<T>, E> {
    let started = Instant::now();
    let loaded = loading.await;
    core.stats().loaded(None, started.elapsed());
    loaded.map(|value| Fetched {
        value,
        origin: Origin::Loader,
    })
}

/// The slow path: join or lead the key's flight.
///
/// The loader is shown the stale value, if any; `lifetime_of` may give a loaded value a
/// lifetime of its own (see [`Lifetime`]).
pub(super) async fn load_coalesced<T, E, F, Fut, L>(
    core: &Core,
    local_key: LocalKey,
    options: &EntryOptions,
    stale: Option<T>,
    loader: F,
    lifetime_of: L,
) -> Result<Fetched<T>, E>
where
    T: Cacheable,
    F: FnOnce(Option<&T>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    L: FnOnce(&T) -> Option<Lifetime>,
{
    // Loads begun before a later invalidation are neither joined nor stored.
    let epoch = core.flights().epoch(&local_key, &options.tags);
    let leader = loop {
        match core.flights().join(&local_key, epoch) {
            Join::Leader(leader) => break Some(leader),
            Join::Waiter(rx) => match wait(rx).await {
                Outcome::Done(value, origin) => match value.downcast_ref::<T>() {
                    Some(value) => {
                        core.stats().coalesced(local_key.class);
                        return Ok(Fetched {
                            value: value.clone(),
                            origin,
                        });
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
    let again = match options.skip_local {
        true => None,
        false => core.lookup::<T>(&local_key).filter(|h| core.serves(h)),
    };
    if let Some(hit) = again {
        core.stats().l1_hit(local_key.class);
        if let Some(leader) = leader {
            leader.succeed(Arc::new(hit.value.clone()), Origin::Local);
        }
        return Ok(Fetched {
            value: hit.value,
            origin: Origin::Local,
        });
    }
    let result = load_through(core, &local_key, options, stale, loader, lifetime_of, epoch).await;
    if let Some(leader) = leader {
        match &result {
            Ok(fetched) => leader.succeed(Arc::new(fetched.value.clone()), fetched.origin),
            Err(_) => leader.fail(),
        }
    }
    result
}

/// Redis, then the loader; fills what missed.
async fn load_through<T, E, F, Fut, L>(
    core: &Core,
    local_key: &LocalKey,
    options: &EntryOptions,
    mut stale: Option<T>,
    loader: F,
    lifetime_of: L,
    epoch: Epoch,
) -> Result<Fetched<T>, E>
where
    T: Cacheable,
    F: FnOnce(Option<&T>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    L: FnOnce(&T) -> Option<Lifetime>,
{
    let shape = core.shape(local_key.class, options);
    let grace = shape.grace;
    // Where to write the loaded value: only if Redis answered the read. While this process
    // is removing from Redis something that can reach this entry (its key, a tag, its
    // class), Redis may still hold what it removes, so the load goes to the loader (and, as
    // any load begun then, stores nothing). The write is conditional on what the read saw
    // (the lease): an invalidation by any instance between the two makes Redis refuse it.
    let mut redis_key = None;
    let redis = core.redis().filter(|_| shape.redis);
    if let Some(redis) = redis.filter(|_| epoch.redis_is_current()) {
        let full_key = core.entry_key(redis, local_key);
        match core.read_redis::<T>(redis, &full_key, &options.tags).await {
            RedisRead::Fresh(fresh, _) => {
                core.keep_from_redis(local_key, &fresh, &shape, options, epoch);
                return Ok(Fetched {
                    value: fresh.value,
                    origin: Origin::Redis,
                });
            }
            RedisRead::Expired(value, lease) => {
                if !grace.is_zero() && stale.is_none() {
                    stale = Some(value);
                }
                redis_key = Some((full_key, lease));
            }
            RedisRead::Miss(lease) => redis_key = Some((full_key, lease)),
            // Do not write either: a request waits for one deadline at most.
            RedisRead::Failed => {}
        }
    }

    // Across instances, too, one load: wait for the holder of the lock, if asked to.
    let mut lock = None;
    if let (Some(lock_ttl), Some((full_key, _))) = (options.lock, redis_key.as_ref()) {
        match stampede::lock_or_wait::<T>(core, local_key, full_key, options, lock_ttl, epoch).await
        {
            LockOutcome::Held(guard, lease) => {
                lock = Some(guard);
                // What Redis held when the lock was taken is the newer observation.
                if let (Some(lease), Some((_, old))) = (lease, redis_key.as_mut()) {
                    *old = lease;
                }
            }
            LockOutcome::Filled(value) => {
                core.stats().coalesced(local_key.class);
                return Ok(Fetched {
                    value,
                    origin: Origin::Redis,
                });
            }
            LockOutcome::Unavailable => {}
        }
    }

    let started = Instant::now();
    // The loader may look at the stale value (to revalidate it); its future may not.
    let loaded = loader(stale.as_ref()).await;
    core.stats()
        .loaded(Some(local_key.class), started.elapsed());
    if let Ok(value) = &loaded {
        // The loader may have read the origin before a change whose invalidation has
        // started since: then the value is returned but not stored.
        if let Some(_storing) = core.flights().begin_store(epoch) {
            let shape = match lifetime_of(value) {
                Some(lifetime) => shape.with_lifetime(lifetime),
                None => shape,
            };
            core.store(
                local_key,
                redis_key.map(|(key, lease)| (key, WriteIf::Unchanged(lease))),
                value,
                &shape,
                &options.tags,
            )
            .await;
        } else {
            tracing::debug!(key = %local_key.key, "an invalidation ran during the load; its value is not stored");
        }
    }
    if let Some(lock) = lock {
        lock.release(core.command_timeout()).await;
    }
    match loaded {
        Ok(value) => Ok(Fetched {
            value,
            origin: Origin::Loader,
        }),
        Err(error) => match stale {
            Some(value) => {
                core.stats().stale_served(local_key.class);
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

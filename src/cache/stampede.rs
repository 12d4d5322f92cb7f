//! Distributed stampede protection: one load per key across every instance.
//!
//! Single-flight coalesces the misses of one process; with ten replicas a cold key still
//! costs ten loads. With [`EntryOptions::distributed_lock`], the in-process leader of a miss
//! (one per instance) also takes a lock in Redis (`SET NX PX`, released by compare-and-delete). The instance that gets
//! it loads and stores the value; the others poll Redis for the value — every 2 ms at first,
//! backing off to 20 ms — and retry the lock each time, so when a holder dies its lock's TTL
//! is all the others wait before one of them takes over.
//!
//! A holder checks Redis once more right after taking the lock: the previous holder may have
//! stored the value and released the lock between our miss and our lock. Any Redis failure
//! on the way means "load without the lock": a sick Redis must never stop a read. Waiting
//! is bounded by twice the lock's TTL whatever happens.

use std::time::{Duration, Instant};

use crate::core::{Core, Epoch, Lease, RedisRead};
use crate::model::{CacheEvent, Cacheable, EntryOptions, LONGEST};
use crate::redis::LockGuard;
use crate::store::LocalKey;

/// How a distributed miss ended up.
pub(crate) enum LockOutcome<T> {
    /// This instance holds the lock: load, store, release. With what Redis held once the lock
    /// was taken, if it answered.
    Held(LockGuard, Option<Lease>),
    /// Another instance loaded it; here is its value (already kept locally).
    Filled(T),
    /// No lock to be had (Redis down, slow or failing): load without it.
    Unavailable,
}

const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(20);

/// Takes the key's lock, or waits for the value of the instance that has it.
pub(super) async fn lock_or_wait<T: Cacheable>(
    core: &Core,
    local_key: &LocalKey,
    full_key: &str,
    options: &EntryOptions,
    lock_ttl: Duration,
    epoch: Epoch,
) -> LockOutcome<T> {
    let Some(redis) = core.redis() else {
        return LockOutcome::Unavailable;
    };
    let shape = core.shape(local_key.class, options);
    let lock_key = core.lock_key(redis, local_key);
    let lock_ttl = lock_ttl.min(LONGEST);
    // Past the clock's range (not on the usual platforms), the caller's timeouts end it.
    let give_up = Instant::now().checked_add(lock_ttl * 2);
    let mut poll = FIRST_POLL;
    loop {
        match redis
            .try_lock(&lock_key, lock_ttl, core.command_timeout())
            .await
        {
            Ok(Some(guard)) => {
                return match core
                    .read_redis::<T>(redis, local_key.class, full_key, &options.tags)
                    .await
                {
                    RedisRead::Fresh(fresh, _) => {
                        guard.release(core.command_timeout()).await;
                        core.keep_from_redis(local_key, &fresh, &shape, options, epoch);
                        core.stats().lock_wait();
                        LockOutcome::Filled(fresh.value)
                    }
                    RedisRead::Expired(_, lease) | RedisRead::Miss(lease) => {
                        LockOutcome::Held(guard, Some(lease))
                    }
                    RedisRead::Failed => LockOutcome::Held(guard, None),
                };
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, key = %local_key.key, "stampede lock unavailable; loading without it");
                return LockOutcome::Unavailable;
            }
        }
        if give_up.is_some_and(|at| Instant::now() + poll >= at) {
            tracing::warn!(key = %local_key.key, "waited twice the lock's TTL; loading without it");
            core.events().emit(|| CacheEvent::LockWaitTimedOut);
            return LockOutcome::Unavailable;
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(MAX_POLL);
        match core
            .read_redis::<T>(redis, local_key.class, full_key, &options.tags)
            .await
        {
            RedisRead::Fresh(fresh, _) => {
                core.keep_from_redis(local_key, &fresh, &shape, options, epoch);
                core.stats().lock_wait();
                return LockOutcome::Filled(fresh.value);
            }
            RedisRead::Failed => return LockOutcome::Unavailable,
            RedisRead::Expired(..) | RedisRead::Miss(_) => {}
        }
    }
}

//! The slow path of a read: join or lead the key's flight, then Redis, then the loader.
//!
//! Concurrent misses of one key in this process run one load (see the flights in `core`);
//! with a distributed lock in the options, one load across instances. A value the loader
//! produced is stored in both stores unless an invalidation began while it was loading:
//! then it is returned to its own callers but not stored.
//!
//! Waiting is bounded by the options' loader timeouts (see [`Deadlines`]): waiting for
//! another caller's load, for another instance's lock, or for the loader itself.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::stampede::{self, LockOutcome};
use tracing::Instrument;

use super::adapt;
use crate::core::{telemetry, wait, Core, Epoch, Join, Lease, Outcome, RedisRead, WriteIf};
use crate::error::LoadTimeout;
use crate::model::{Cacheable, EntryOptions, Fetched, Origin, StaleNow, ValueGrace};
use crate::store::{LocalKey, Seen};

/// Turns a hard timeout into the caller's error; `None` for calls that cannot fail
/// ([`Cache::get_or_load`](crate::Cache::get_or_load)), which then wait for their loader.
pub(super) type OnTimeout<E> = Option<fn(LoadTimeout) -> E>;

/// When a read stops waiting for a load: see [`EntryOptions::soft_timeout`] and
/// [`EntryOptions::hard_timeout`]. Both count from the start of the slow path.
#[derive(Clone, Copy, Debug)]
pub(super) struct Deadlines {
    soft: Option<Instant>,
    hard: Option<Instant>,
    /// Whether a hard timeout without a stale value can fail the call.
    can_fail: bool,
}

impl Deadlines {
    pub(super) fn new(options: &EntryOptions, can_fail: bool) -> Self {
        // Most reads have no timeout: they do not read the clock for one.
        let now =
            (options.soft_timeout.is_some() || options.hard_timeout.is_some()).then(Instant::now);
        Deadlines {
            // A timeout past the clock's range is no timeout.
            soft: now
                .zip(options.soft_timeout)
                .and_then(|(now, after)| now.checked_add(after)),
            hard: now
                .zip(options.hard_timeout)
                .and_then(|(now, after)| now.checked_add(after)),
            can_fail,
        }
    }

    /// When a caller that waits for someone else's load stops, and whether that is the
    /// hard timeout: at the soft timeout if it has a stale value to answer, else at the
    /// hard one if it has an answer then.
    fn waiting(&self, has_stale: bool) -> Option<(Instant, bool)> {
        let hard = self.loading(has_stale).map(|at| (at, true));
        match (self.soft.filter(|_| has_stale), hard) {
            (Some(soft), Some((hard, _))) if hard <= soft => Some((hard, true)),
            (Some(soft), _) => Some((soft, false)),
            (None, hard) => hard,
        }
    }

    /// When a caller with an answer to give (a stale value, or an error) stops waiting.
    fn loading(&self, has_stale: bool) -> Option<Instant> {
        self.hard.filter(|_| has_stale || self.can_fail)
    }

    /// The hard timeout.
    fn hard_at(&self) -> Option<Instant> {
        self.hard
    }
}

/// The answer of a read that stopped waiting: the stale value if it has one, else the
/// timeout as the caller's error. `None` if it has neither ([`Deadlines`] never stops such a
/// caller).
fn gave_up<T: Cacheable, E>(
    core: &Core,
    local_key: &LocalKey,
    stale: Option<T>,
    options: &EntryOptions,
    on_timeout: OnTimeout<E>,
    hard: bool,
) -> Option<Result<Fetched<T>, E>> {
    let exit = match (StaleNow::at_timeout(options, stale), on_timeout) {
        (Some(value), _) => Exit::Stale(value),
        (None, Some(fail)) => Exit::Fail(fail),
        (None, None) => return None,
    };
    Some(exit.answer(core, local_key, options, hard))
}

/// What a caller running the loader answers at the hard timeout.
enum Exit<T, E> {
    /// The stale value it holds.
    Stale(T),
    /// The timeout, as its error.
    Fail(fn(LoadTimeout) -> E),
}

impl<T: Cacheable, E> Exit<T, E> {
    fn into_stale(self) -> Option<T> {
        match self {
            Exit::Stale(value) => Some(value),
            Exit::Fail(_) => None,
        }
    }

    fn answer(
        self,
        core: &Core,
        local_key: &LocalKey,
        options: &EntryOptions,
        hard: bool,
    ) -> Result<Fetched<T>, E> {
        core.stats().load_timed_out(hard);
        match self {
            Exit::Stale(value) => {
                core.stats().stale_served(local_key.class);
                tracing::debug!(key = %local_key.key, hard, "loader timeout; serving the stale value");
                Ok(Fetched {
                    value,
                    origin: Origin::Stale,
                })
            }
            Exit::Fail(fail) => {
                let after = options.hard_timeout.unwrap_or_default();
                tracing::warn!(key = %local_key.key, ?after, "loader hard timeout with no stale value; the read fails");
                Err(fail(LoadTimeout::new(after)))
            }
        }
    }
}

/// Runs `fut` until `deadline`, if any; `None` if it passed first.
async fn until<F: Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at.into(), fut).await.ok(),
        None => Some(fut.await),
    }
}

/// What a read that the local store could not answer takes to its slow path.
pub(super) struct Missed<T> {
    /// The value kept for a failing loader: one past its TTL inside its grace, or a
    /// suspect one when the options give a grace.
    pub(super) stale: Option<T>,
    /// What the local store looked like before the lookup (`None` when it was not asked).
    seen: Option<Seen>,
}

/// The local store's answer to a read: a hit it may serve (`Ok`), or else what the slow
/// path needs (`Err`).
#[inline]
pub(super) fn first_look<T: Cacheable>(
    core: &Core,
    local_key: &LocalKey,
    options: &EntryOptions,
) -> Result<Fetched<T>, Missed<T>> {
    // A plain bool on the options, already in cache: the hit path stays one lookup.
    if options.skip_local {
        return Err(Missed {
            stale: None,
            seen: None,
        });
    }
    let (hit, seen) = core.lookup_seen::<T>(local_key);
    let Some(hit) = hit else {
        return Err(Missed {
            stale: None,
            seen: Some(seen),
        });
    };
    if core.serves(&hit) {
        core.stats().l1_hit(local_key.class);
        telemetry::local_hit_span(
            core.namespace(),
            core.class_name(local_key.class),
            options.key_template_name(),
        );
        return Ok(Fetched {
            value: hit.value,
            origin: Origin::Local,
        });
    }
    let stale = (hit.stale || options.stale_for.is_some()).then_some(hit.value);
    Err(Missed {
        stale,
        seen: Some(seen),
    })
}

/// A read whose load may outlive it ([`Cache::fetch_refreshing`](crate::Cache::fetch_refreshing)
/// with a soft timeout): a fresh local hit is served; otherwise, with a stale value at hand,
/// the slow path runs in a task of its own and the read answers the stale value if that
/// task has not finished by the soft timeout. The task goes on and stores what it loads.
pub(super) async fn load_detached<T, E, F, Fut>(
    core: &Arc<Core>,
    local_key: LocalKey,
    options: &EntryOptions,
    loader: F,
    on_timeout: OnTimeout<E>,
) -> Result<Fetched<T>, E>
where
    T: Cacheable,
    E: Send + 'static,
    F: FnOnce(Option<&T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let deadlines = Deadlines::new(options, on_timeout.is_some());
    let missed = match first_look(core, &local_key, options) {
        Ok(hit) => return Ok(hit),
        Err(missed) => missed,
    };
    let span = telemetry::read_span(
        core.namespace(),
        core.class_name(local_key.class),
        options.key_template_name(),
    );
    // A value kept only to be revalidated answers nothing early: the read waits.
    let early = missed
        .stale
        .filter(|v| !StaleNow::holds(options.revalidate_only, v));
    let (Some(stale), Some(soft)) = (early, deadlines.soft) else {
        // Nothing to answer early: the read waits for its load as any other.
        let missed = Missed {
            stale: None,
            seen: missed.seen,
        };
        return load_coalesced(core, local_key, options, missed, loader, on_timeout)
            .instrument(span)
            .await;
    };
    let task = {
        let (core, options, stale) = (Arc::clone(core), options.clone(), stale.clone());
        let local_key = local_key.clone();
        tokio::spawn(
            async move {
                let missed = Missed {
                    stale: Some(stale),
                    seen: None,
                };
                load_coalesced(&core, local_key, &options, missed, loader, on_timeout).await
            }
            .instrument(span),
        )
    };
    match tokio::time::timeout_at(soft.into(), task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // The runtime is shutting down, or the soft timeout passed: the stale value.
        Ok(Err(_)) | Err(_) => Exit::<T, E>::Stale(stale).answer(core, &local_key, options, false),
    }
}

/// The slow path: join or lead the key's flight.
pub(super) async fn load_coalesced<T, E, F, Fut>(
    core: &Core,
    local_key: LocalKey,
    options: &EntryOptions,
    missed: Missed<T>,
    loader: F,
    on_timeout: OnTimeout<E>,
) -> Result<Fetched<T>, E>
where
    T: Cacheable,
    F: FnOnce(Option<&T>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let Missed { stale, seen } = missed;
    let deadlines = Deadlines::new(options, on_timeout.is_some());
    // Whether this caller waited for another's load (then it looks in the store again).
    let mut waited = false;
    // Loads begun before a later invalidation are neither joined nor stored.
    let epoch = core.flights().epoch(&local_key, &options.tags);
    let leader = loop {
        let rx = match core.flights().join(&local_key, epoch) {
            Join::Leader(leader) => break Some(leader),
            Join::Waiter(rx) => rx,
        };
        waited = true;
        let servable = stale
            .as_ref()
            .is_some_and(|v| !StaleNow::holds(options.revalidate_only, v));
        let outcome = match deadlines.waiting(servable) {
            None => wait(rx).await,
            Some((at, hard)) => match until(Some(at), wait(rx)).await {
                Some(outcome) => outcome,
                None => match gave_up(core, &local_key, stale.clone(), options, on_timeout, hard) {
                    Some(answer) => return answer,
                    None => break None,
                },
            },
        };
        match outcome {
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
            // The leader gave up at the hard timeout, which for this caller is no later:
            // the same answer now rather than another load.
            Outcome::TimedOut => {
                if let Some(answer) =
                    gave_up(core, &local_key, stale.clone(), options, on_timeout, true)
                {
                    return answer;
                }
                break None;
            }
            Outcome::Failed => break None,
            Outcome::Cancelled => continue,
        }
    };
    // A flight may have finished between our first look and our joining (or the
    // cancelled leader's successor may have finished): look again before loading, unless
    // nothing was stored under the key's slot since the first look (most misses).
    let unchanged = !waited && seen.is_some_and(|seen| core.local_unchanged_since(&seen));
    let again = match options.skip_local || unchanged {
        true => None,
        false => core.lookup::<T>(&local_key).filter(|h| core.serves(h)),
    };
    if let Some(hit) = again {
        core.stats().l1_hit(local_key.class);
        if let Some(leader) = leader {
            leader.succeed(|| Arc::new(hit.value.clone()), Origin::Local);
        }
        return Ok(Fetched {
            value: hit.value,
            origin: Origin::Local,
        });
    }
    let (result, timed_out) = load_through(
        core, &local_key, options, stale, loader, epoch, deadlines, on_timeout,
    )
    .await;
    if let Some(leader) = leader {
        match &result {
            Ok(fetched) => leader.succeed(|| Arc::new(fetched.value.clone()), fetched.origin),
            Err(_) if timed_out => leader.time_out(),
            Err(_) => leader.fail(),
        }
    }
    result
}

/// Redis, then the loader; fills what missed. Also says whether the read gave up at the
/// hard timeout.
#[allow(clippy::too_many_arguments)]
async fn load_through<T, E, F, Fut>(
    core: &Core,
    local_key: &LocalKey,
    options: &EntryOptions,
    mut stale: Option<T>,
    loader: F,
    epoch: Epoch,
    deadlines: Deadlines,
    on_timeout: OnTimeout<E>,
) -> (Result<Fetched<T>, E>, bool)
where
    T: Cacheable,
    F: FnOnce(Option<&T>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
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
        match core
            .read_redis::<T>(redis, local_key.class, &full_key, &options.tags)
            .await
        {
            RedisRead::Fresh(fresh, _) => {
                core.keep_from_redis(local_key, &fresh, &shape, options, epoch);
                let fetched = Fetched {
                    value: fresh.value,
                    origin: Origin::Redis,
                };
                return (Ok(fetched), false);
            }
            RedisRead::Expired(value, lease) => {
                // Redis keeps an entry for its grace only, so an expired one is inside it:
                // the options' grace, or the one the value declares for itself.
                let kept =
                    !grace.is_zero() || !ValueGrace::of(options.value_grace, &value).is_zero();
                if kept && stale.is_none() {
                    stale = Some(value);
                }
                redis_key = Some((full_key, lease));
            }
            RedisRead::Miss(lease) => redis_key = Some((full_key, lease)),
            // Do not write either: a request waits for one deadline at most.
            RedisRead::Failed => {}
        }
    }

    // A stale value the caller answers at once (and refreshes in the background itself):
    // neither the lock nor the loader is waited for.
    if let Some(value) = stale.take_if(|v| StaleNow::holds(options.stale_now, v)) {
        core.stats().stale_served(local_key.class);
        let fetched = Fetched {
            value,
            origin: Origin::Stale,
        };
        return (Ok(fetched), false);
    }

    // Across instances, too, one load: wait for the holder of the lock, if asked to.
    let mut lock = None;
    if let (Some(lock_ttl), Some((full_key, _))) = (options.lock, redis_key.as_ref()) {
        let servable = stale
            .as_ref()
            .is_some_and(|v| !StaleNow::holds(options.revalidate_only, v));
        let waiting = deadlines.waiting(servable);
        // Boxed, here and for the writes below: off the path of a read that Redis answers,
        // and inline they would make every read's future tens of kilobytes.
        let locking = Box::pin(stampede::lock_or_wait::<T>(
            core, local_key, full_key, options, lock_ttl, epoch,
        ));
        let outcome = match until(waiting.map(|(at, _)| at), locking).await {
            Some(outcome) => outcome,
            None => {
                let hard = waiting.is_some_and(|(_, hard)| hard);
                match gave_up(core, local_key, stale.clone(), options, on_timeout, hard) {
                    Some(answer) => return (answer, hard),
                    // Never so (such a caller has no deadline), but a load is the safe way on.
                    None => LockOutcome::Unavailable,
                }
            }
        };
        match outcome {
            LockOutcome::Held(guard, lease) => {
                lock = Some(guard);
                // What Redis held when the lock was taken is the newer observation.
                if let (Some(lease), Some((_, old))) = (lease, redis_key.as_mut()) {
                    *old = lease;
                }
            }
            LockOutcome::Filled(value) => {
                core.stats().coalesced(local_key.class);
                let fetched = Fetched {
                    value,
                    origin: Origin::Redis,
                };
                return (Ok(fetched), false);
            }
            LockOutcome::Unavailable => {}
        }
    }

    // Before the loader runs, for the tags it may add (see `adapt::plan`).
    let before = core.flights().snapshot();
    let started = Instant::now();
    // The loader may look at the stale value (to revalidate it); its future may not.
    let loading = adapt::scoped(loader(stale.as_ref()));
    // What to answer at the hard timeout: with nothing to answer, there is no deadline. A
    // value kept only to be revalidated is not an answer then, but is still the stale
    // value a failed load hands back (its caller decides, as for any failure).
    let kept_to_revalidate = stale
        .as_ref()
        .is_some_and(|v| StaleNow::holds(options.revalidate_only, v));
    let (stale, revalidate_only) = match kept_to_revalidate {
        true => (None, stale),
        false => (stale, None),
    };
    let exit = match (stale, on_timeout) {
        (Some(value), _) => Some(Exit::Stale(value)),
        (None, Some(fail)) => Some(Exit::Fail(fail)),
        (None, None) => None,
    };
    let ((loaded, adjust), stale) = match exit {
        None => (loading.await, revalidate_only),
        Some(exit) => match until(deadlines.hard_at(), loading).await {
            Some(loaded) => (loaded, exit.into_stale().or(revalidate_only)),
            None => {
                // The loader is dropped, and its lock released so that another instance
                // can take it and load.
                if let Some(lock) = lock {
                    Box::pin(lock.release(core.command_timeout())).await;
                }
                return (exit.answer(core, local_key, options, true), true);
            }
        },
    };
    core.stats()
        .loaded(Some(local_key.class), started.elapsed());
    let plan = loaded
        .is_ok()
        .then(|| adapt::plan(core, local_key, options, shape, epoch, &before, adjust))
        .flatten();
    let value = loaded.as_ref().ok();
    if let (Some(value), Some(plan)) = (value, plan) {
        // The loader may have read the origin before a change whose invalidation has
        // started since: then the value is returned but not stored.
        if let Some(_storing) = core.flights().begin_store(plan.epoch) {
            let lease = |(key, lease): (String, Lease)| {
                (key, WriteIf::Unchanged(lease).with_unread_tags(plan.added))
            };
            Box::pin(core.store(
                local_key,
                redis_key.map(lease),
                value,
                &plan.shape,
                &plan.tags,
                plan.added,
            ))
            .await;
        } else {
            tracing::debug!(key = %local_key.key, "an invalidation ran during the load; its value is not stored");
        }
    }
    if let Some(lock) = lock {
        Box::pin(lock.release(core.command_timeout())).await;
    }
    (answer(core, local_key, loaded, stale), false)
}

/// The answer to a load: its value, or on an error the stale value if there is one.
fn answer<T: Cacheable, E>(
    core: &Core,
    local_key: &LocalKey,
    loaded: Result<T, E>,
    stale: Option<T>,
) -> Result<Fetched<T>, E> {
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

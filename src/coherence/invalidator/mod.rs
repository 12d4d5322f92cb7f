//! The one path that applies an invalidation: local store, Redis, the journal until Redis
//! has it, the other instances, and the invalidation log they catch up from.
//!
//! Every invalidation goes through here — the public calls, the layers and macros (through
//! them), outage recovery, the Sentinel re-apply and what peers publish — so its order is
//! decided in one place:
//!
//! 1. loads in progress that may hold what it removes are fenced off (they are neither
//!    joined nor stored), and stores that passed their check land first;
//! 2. the **local store** is cleaned, so this process never serves what it was just told
//!    is stale;
//! 3. **Redis** follows, if the breaker lets requests through; then the invalidation is
//!    **published** to the other instances, since they must not re-read a value Redis
//!    still has;
//! 4. if Redis is down or either step fails, the invalidation goes to the **journal**, which
//!    is replayed as soon as Redis answers (after an outage, before Redis is read again).
//!
//! Every publish is also appended, in the same script, to the **invalidation log** in Redis,
//! so an instance whose channel had a gap applies what it missed when the gap ends.
//!
//! Applied invalidations are also remembered, since Redis can lose writes it acknowledged (a
//! Sentinel failover, the old master's last writes; a restart from a snapshot, everything
//! since the snapshot); after either they are applied again.
//!
//! Redis and the channel are reached through [`Remote`], so the order above is tested
//! against an in-memory stand-in as well as against real servers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tracing::Instrument;

use super::backplane::Backplane;
use super::journal::{Journal, Remembered, Replay};
use super::tracking::Tracking;
use crate::core::{Core, Shape, WriteIf};
use crate::error::Error;
use crate::key::Key;
use crate::model::{Cacheable, Invalidation, InvalidationReport, RedisOutcome};
use crate::store::LocalKey;

/// Where an invalidation goes besides this process's local store.
pub(crate) trait Remote {
    /// Whether there is a shared store at all (no Redis URL: the local store is all).
    fn configured(&self) -> bool;
    /// Removes what `inv` names from the shared store; keys removed.
    async fn remove(&self, inv: &Invalidation) -> Result<u64, Error>;
    /// Tells the other instances, and logs it for those whose channel is down.
    async fn publish(&self, inv: &Invalidation) -> Result<(), Error>;
    /// What the other instances published since `since`; `None` if that cannot be told.
    async fn missed_since(&self, since: SystemTime) -> Option<Vec<Invalidation>>;
}

/// Redis and the backplane, as the running cache has them.
struct RedisRemote<'a> {
    core: &'a Core,
    backplane: Option<&'a Backplane>,
}

impl Remote for RedisRemote<'_> {
    fn configured(&self) -> bool {
        self.core.has_redis()
    }

    async fn remove(&self, inv: &Invalidation) -> Result<u64, Error> {
        self.core.apply_redis(inv).await
    }

    async fn publish(&self, inv: &Invalidation) -> Result<(), Error> {
        match (self.backplane, self.core.redis_always()) {
            (Some(backplane), Some(redis)) => backplane.publish(redis, inv).await,
            _ => Ok(()),
        }
    }

    async fn missed_since(&self, since: SystemTime) -> Option<Vec<Invalidation>> {
        match (self.backplane, self.core.redis_always()) {
            (Some(backplane), Some(redis)) => backplane.missed_since(redis, since).await,
            _ => None,
        }
    }
}

/// What a journal replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Invalidations applied to Redis and published.
    pub(crate) applied: usize,
    /// The journal had overflowed: only a namespace flush covers what it lost.
    pub(crate) overflowed: bool,
}

/// What re-applying the remembered invalidations did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reapplied {
    /// Invalidations applied to Redis again and published.
    pub(crate) count: usize,
    /// False if some made in the window were no longer remembered: only a namespace flush
    /// covers those.
    pub(crate) complete: bool,
}

/// Applies invalidations everywhere; see the module docs. Holds no [`Core`]: each call is
/// given one, so background tasks can hold this and a `Weak<Core>` without keeping the cache
/// alive.
pub(crate) struct Invalidator {
    journal: Journal,
    backplane: Option<Arc<Backplane>>,
    /// Client-side tracking, when turned on: not a path invalidations take, but it shares
    /// the backplane's owners (the cache's status, the Sentinel watcher).
    tracking: Option<Arc<Tracking>>,
}

impl Invalidator {
    pub(crate) fn new(journal: Journal, backplane: Option<Arc<Backplane>>) -> Self {
        Invalidator {
            journal,
            backplane,
            tracking: None,
        }
    }

    /// With client-side tracking's state.
    pub(crate) fn with_tracking(mut self, tracking: Option<Arc<Tracking>>) -> Self {
        self.tracking = tracking;
        self
    }

    pub(crate) fn tracking(&self) -> Option<&Arc<Tracking>> {
        self.tracking.as_ref()
    }

    /// Sets the cache's gauges (see [`Core::publish_gauges`]).
    pub(crate) fn publish_gauges(&self, core: &Core) {
        core.publish_gauges(
            self.journal.len(),
            self.journal.pending_for(),
            self.backplane.as_ref().map(|b| b.is_connected()),
        );
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    pub(crate) fn backplane(&self) -> Option<&Arc<Backplane>> {
        self.backplane.as_ref()
    }

    fn remote<'a>(&'a self, core: &'a Core) -> RedisRemote<'a> {
        RedisRemote {
            core,
            backplane: self.backplane.as_deref(),
        }
    }

    /// An invalidation asked for by this process (the public API, the layers, the macros).
    ///
    /// With Redis it runs as a task of its own, so a caller that gives up — a request
    /// timeout, a client gone — cannot cut it short between the local store and Redis and the
    /// other instances. The caller waits for the local store, then for the rest up to
    /// `redis_wait` (`None`: until it is done); past that the report says
    /// [`RedisOutcome::Pending`] and the task carries on, journaling what fails.
    pub(crate) async fn invalidate(
        self: &Arc<Self>,
        core: &Arc<Core>,
        inv: &Invalidation,
        redis_wait: Option<Duration>,
    ) -> InvalidationReport {
        let span = invalidation_span(core, inv);
        if !core.has_redis() {
            return self
                .invalidate_via(core, &self.remote(core), inv, || {})
                .instrument(span)
                .await;
        }
        let (local_done, local_cleaned) = oneshot::channel();
        let task = tokio::spawn({
            let this = Arc::clone(self);
            let core = Arc::clone(core);
            let inv = inv.clone();
            async move {
                let remote = this.remote(&core);
                this.invalidate_via(&core, &remote, &inv, move || {
                    let _ = local_done.send(());
                })
                .await
            }
            .instrument(span)
        });
        // This process must not serve what it was just told is stale: the local half is
        // always waited for (it waits only for stores already past their check).
        let _ = local_cleaned.await;
        let finished = match redis_wait {
            Some(wait) => tokio::time::timeout(wait, task).await.ok(),
            None => Some(task.await),
        };
        match finished {
            Some(Ok(report)) => report,
            Some(Err(error)) => {
                // The task panicked: whatever it did, the journal will do it again.
                tracing::error!(%error, "invalidation task failed; journaled");
                let kept = self.journal.push(inv.clone());
                core.breaker().poke();
                InvalidationReport {
                    redis_keys_removed: 0,
                    redis: RedisOutcome::Journaled { overflowed: !kept },
                    unknown_classes: core.class_ids(inv).1,
                }
            }
            None => InvalidationReport {
                redis_keys_removed: 0,
                redis: RedisOutcome::Pending,
                unknown_classes: core.class_ids(inv).1,
            },
        }
    }

    async fn invalidate_via(
        &self,
        core: &Core,
        remote: &impl Remote,
        inv: &Invalidation,
        local_done: impl FnOnce(),
    ) -> InvalidationReport {
        // Loads in progress may hold what this removes: they must not be joined or stored,
        // neither now nor until the Redis half is done (dropping `in_progress` ends it); and
        // until then no load reads Redis, which may still hold it.
        let in_progress = if remote.configured() {
            core.flights()
                .begin_invalidation_of_redis(core.mask_of(inv))
        } else {
            core.flights().begin_invalidation(core.mask_of(inv))
        };
        in_progress.stores_landed().await;
        let unknown_classes = core.class_ids(inv).1;
        core.apply_local(inv);
        local_done();
        let mut report = InvalidationReport {
            redis_keys_removed: 0,
            redis: RedisOutcome::NotConfigured,
            unknown_classes,
        };
        if !remote.configured() {
            core.stats().telemetry().invalidation(&report.redis);
            return report;
        }
        if core.breaker().allows_requests() {
            match apply_remote(remote, inv).await {
                Ok(removed) => {
                    core.breaker().record_success();
                    self.journal.remember(inv);
                    report.redis_keys_removed = removed;
                    report.redis = RedisOutcome::Applied;
                    core.stats().telemetry().invalidation(&report.redis);
                    return report;
                }
                Err(error) => {
                    core.stats().redis_error();
                    core.breaker().record_failure("invalidation failed");
                    tracing::warn!(%error, "invalidation not applied to Redis; journaled");
                }
            }
        }
        let kept = self.journal.push(inv.clone());
        // Redis may be answering (a deadline missed, a publish lost): the monitor drains the
        // journal as soon as a probe succeeds, not only after an outage.
        core.breaker().poke();
        report.redis = RedisOutcome::Journaled { overflowed: !kept };
        core.stats().telemetry().invalidation(&report.redis);
        report
    }

    /// A write (`Cache::set`): the value in both stores, and the other instances told to
    /// drop their copies. It is ordered like an invalidation: loads begun before it neither
    /// store over it nor are joined. If Redis did not take the value (down, failed, shed) or
    /// the others were not told, an invalidation of the key is journaled, so Redis's old value
    /// and the others' copies go as soon as Redis answers; this process keeps the new value.
    ///
    /// A write that skips Redis is this process's alone, as without Redis: nothing is
    /// announced or journaled. One that skips the local store drops this process's older
    /// copy, as the announcement does the others'.
    pub(crate) async fn write<T: Cacheable>(
        &self,
        core: &Core,
        local_key: &LocalKey,
        value: &T,
        shape: &Shape,
        tags: &[Key],
    ) {
        let changed = Invalidation::new().key(local_key.key.clone());
        let configured = core.has_redis() && shape.redis;
        let in_progress = if configured {
            core.flights()
                .begin_invalidation_of_redis(core.mask_of(&changed))
        } else {
            core.flights().begin_invalidation(core.mask_of(&changed))
        };
        in_progress.stores_landed().await;
        if !shape.local {
            core.apply_local(&changed);
        }
        // Unconditional: an explicit write is the newest value, and loads that read before it
        // cannot write over it (their leases saw something else).
        let redis_key = core
            .redis()
            .filter(|_| shape.redis)
            .map(|redis| (core.entry_key(redis, local_key), WriteIf::Always));
        let in_redis = core
            .store(local_key, redis_key, value, shape, tags, 0)
            .await;
        if !configured {
            return;
        }
        let told = in_redis
            && match self.remote(core).publish(&changed).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "other instances not told of the new value; journaled");
                    false
                }
            };
        if told {
            // A restore from a snapshot would bring the old value back.
            self.journal.remember_write(&changed);
        } else {
            self.journal.push(changed);
            core.breaker().poke();
        }
    }

    /// Tells the other instances that `key` has a new value in Redis: they drop their local
    /// copies and read it from Redis next time.
    pub(crate) async fn announce_write(&self, core: &Core, key: Key) {
        if self.backplane.is_none() {
            return;
        }
        let changed = Invalidation::new().key(key);
        if let Err(error) = self.remote(core).publish(&changed).await {
            tracing::warn!(%error, "other instances not told of the new value; their copies expire with their TTL");
        }
    }

    /// An invalidation another instance published: the local store only, behind the same
    /// fence as this process's own.
    pub(crate) async fn apply_from_peer(&self, core: &Core, inv: &Invalidation) {
        // Remove at once for a prompt effect; if stores were already past their check, let
        // them land and remove again.
        let in_progress = core.flights().begin_invalidation(core.mask_of(inv));
        core.apply_local(inv);
        if !in_progress.stores_idle() {
            in_progress.stores_landed().await;
            core.apply_local(inv);
        }
    }

    /// Applies and publishes the journal in order (each publish is logged for the
    /// instances whose channel is still down). `Err` if Redis failed again; what was not replayed is back in the journal.
    pub(crate) async fn replay_journal(&self, core: &Core) -> Result<Replayed, Error> {
        self.replay_journal_via(core, &self.remote(core)).await
    }

    async fn replay_journal_via(
        &self,
        core: &Core,
        remote: &impl Remote,
    ) -> Result<Replayed, Error> {
        let replay = self.journal.take();
        let mut applied = 0;
        for inv in &replay.invalidations {
            if let Err(error) = apply_again(core, remote, inv).await {
                tracing::warn!(%error, "journal replay interrupted; Redis is down again");
                self.journal.restore(Replay {
                    invalidations: replay.invalidations[applied..].to_vec(),
                    overflowed: replay.overflowed,
                });
                return Err(error);
            }
            self.journal.remember(inv);
            applied += 1;
        }
        if applied > 0 {
            tracing::info!(applied, "journaled invalidations replayed to Redis");
        }
        Ok(Replayed {
            applied,
            overflowed: replay.overflowed,
        })
    }

    /// Replays the journal while Redis is in use: what missed a deadline or lost its publish
    /// with the breaker closed, and what was made while recovery ran, reaches Redis and the
    /// other instances as soon as Redis answers, not at the next outage. A journal that
    /// overflowed flushes the namespace, as after an outage.
    pub(crate) async fn drain_journal(&self, core: &Core) -> Result<Replayed, Error> {
        let replayed = self.replay_journal(core).await?;
        if replayed.overflowed {
            let everything = Invalidation::new().everything();
            self.flush_after_outage(core, everything, true).await?;
        }
        Ok(replayed)
    }

    /// Recovery: flushes the outage tier's scope locally and in Redis. If Redis fails again
    /// the flush is journaled (an overflow stays an overflow, which flushes everything).
    pub(crate) async fn flush_after_outage(
        &self,
        core: &Core,
        inv: Invalidation,
        overflowed: bool,
    ) -> Result<u64, Error> {
        self.flush_after_outage_via(core, &self.remote(core), inv, overflowed)
            .await
    }

    async fn flush_after_outage_via(
        &self,
        core: &Core,
        remote: &impl Remote,
        inv: Invalidation,
        overflowed: bool,
    ) -> Result<u64, Error> {
        let span = tracing::info_span!(
            "stormcache.flush",
            cache.namespace = core.namespace(),
            volatile = inv.volatile,
            everything = inv.everything,
            classes = inv.classes.len(),
        );
        core.apply_local(&inv);
        match apply_remote(remote, &inv).instrument(span).await {
            Ok(removed) => {
                self.journal.remember(&inv);
                Ok(removed)
            }
            Err(error) => {
                tracing::warn!(%error, "outage flush interrupted; Redis is down again");
                if overflowed {
                    self.journal.restore(Replay {
                        invalidations: Vec::new(),
                        overflowed: true,
                    });
                } else {
                    self.journal.push(inv);
                }
                Err(error)
            }
        }
    }

    /// Re-applies the invalidations made in the last `age`, since Redis may have lost them
    /// (a Sentinel master switch loses the old master's last writes). A failure goes to the
    /// journal.
    pub(crate) async fn reapply_recent(&self, core: &Core, age: Duration) -> Reapplied {
        // Writes are not re-applied on a switch alone: nothing says they were lost, and
        // re-applying one removes the value written.
        self.reapply(core, self.journal.remembered(age, Duration::ZERO))
            .await
    }

    /// Re-applies `remembered` (taken from [`Journal::remembered`] before a journal replay,
    /// so that what the replay applies is not applied twice).
    pub(crate) async fn reapply(&self, core: &Core, remembered: Remembered) -> Reapplied {
        self.reapply_via(core, &self.remote(core), remembered).await
    }

    async fn reapply_via(
        &self,
        core: &Core,
        remote: &impl Remote,
        remembered: Remembered,
    ) -> Reapplied {
        let mut reapplied = 0;
        for inv in remembered.invalidations {
            match apply_again(core, remote, &inv).await {
                Ok(_) => reapplied += 1,
                Err(_) => {
                    self.journal.push(inv);
                }
            }
        }
        Reapplied {
            count: reapplied,
            complete: remembered.complete,
        }
    }

    /// At the end of a gap in this instance's channel, or after messages were lost to a slow
    /// reader: applies to the local store what the other instances published since `since`,
    /// from the invalidation log. False if the log cannot tell (then the caller must not
    /// trust entries from before `since`).
    pub(crate) async fn catch_up_since(&self, core: &Core, since: SystemTime) -> bool {
        self.catch_up_since_via(core, &self.remote(core), since)
            .await
    }

    async fn catch_up_since_via(
        &self,
        core: &Core,
        remote: &impl Remote,
        since: SystemTime,
    ) -> bool {
        match remote.missed_since(since).await {
            Some(missed) => {
                if !missed.is_empty() {
                    tracing::info!(
                        missed = missed.len(),
                        "invalidations the channel did not deliver applied from the log"
                    );
                }
                for inv in &missed {
                    core.apply_local(inv);
                }
                true
            }
            None => false,
        }
    }
}

/// `stormcache.invalidate`, at INFO: how many keys, tags and classes (never their values),
/// and, once known, `cache.outcome`.
fn invalidation_span(core: &Core, inv: &Invalidation) -> tracing::Span {
    tracing::info_span!(
        "stormcache.invalidate",
        cache.namespace = core.namespace(),
        keys = inv.keys.len(),
        tags = inv.tags.len(),
        classes = inv.classes.len(),
        volatile = inv.volatile,
        everything = inv.everything,
        cache.outcome = tracing::field::Empty,
    )
}

/// An invalidation applied once more (a journal replay, a re-apply after a failover or a
/// restore): while it was waiting, this instance may have read the old value back from Redis
/// into its local store, and it skips its own published messages. So it is fenced like a new
/// one and cleaned locally too, after Redis.
async fn apply_again(core: &Core, remote: &impl Remote, inv: &Invalidation) -> Result<u64, Error> {
    let in_progress = core
        .flights()
        .begin_invalidation_of_redis(core.mask_of(inv));
    in_progress.stores_landed().await;
    let removed = apply_remote(remote, inv).await?;
    core.apply_local(inv);
    Ok(removed)
}

/// Redis first, then the other instances: they must not re-read what Redis still has.
async fn apply_remote(remote: &impl Remote, inv: &Invalidation) -> Result<u64, Error> {
    let removed = remote.remove(inv).await?;
    remote.publish(inv).await?;
    Ok(removed)
}

#[cfg(test)]
mod tests;

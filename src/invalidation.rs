//! Invalidation: what a mutation makes stale, and removing it from both stores.
//!
//! Seed 002's lesson is that one mutation ripples through several cache layers — removing
//! a user from a group makes `user:groups:{user}` *and* `resources:{user}` stale — and that
//! the rules saying so should be declared once and reused. An [`Invalidation`] is such a
//! set of keys, tags and classes; an [`InvalidationRule`] is a reusable piece of one (the
//! `#[invalidate]` attribute and the HTTP `InvalidateLayer` both build on it).
//!
//! The local store is always cleaned first, so this process never serves what it was just
//! told is stale; Redis follows. A Redis failure never fails the caller: the Redis half goes
//! to the [journal](crate::journal) and is replayed on recovery.

use std::collections::BTreeSet;

use crate::cache::{Cache, Inner};
use crate::class::ClassId;
use crate::error::Error;
use crate::key::Key;
use crate::local_store::LocalKey;
use crate::single_flight::mask_of;

/// Keys, tags and classes to invalidate together.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormcache::Error> {
/// use stormcache::{Cache, Invalidation, Key};
///
/// let cache = Cache::builder("docs").build()?;
/// let user = "alice";
/// let stale = Invalidation::new()
///     .key(Key::builder("user:groups:").value(user).build())
///     .tag(Key::builder("user:").value(user).build());
/// let report = cache.invalidate(&stale).await;
/// assert!(report.unknown_classes.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Invalidation {
    pub(crate) keys: BTreeSet<Key>,
    pub(crate) tags: BTreeSet<Key>,
    pub(crate) classes: BTreeSet<String>,
    pub(crate) volatile: bool,
    pub(crate) everything: bool,
}

impl Invalidation {
    /// An empty invalidation.
    pub fn new() -> Self {
        Self::default()
    }

    /// A key, in whichever class it was stored.
    pub fn key(mut self, key: Key) -> Self {
        self.keys.insert(key);
        self
    }

    /// Every entry carrying `tag`.
    pub fn tag(mut self, tag: Key) -> Self {
        self.tags.insert(tag);
        self
    }

    /// Every entry of a class.
    pub fn class(mut self, class: impl Into<String>) -> Self {
        self.classes.insert(class.into());
        self
    }

    /// Every entry of every volatile class.
    pub fn volatile_classes(mut self) -> Self {
        self.volatile = true;
        self
    }

    /// Everything in the cache's namespace.
    pub fn everything(mut self) -> Self {
        self.everything = true;
        self
    }

    /// Adds what a reusable rule names.
    pub fn rule(mut self, rule: &(impl InvalidationRule + ?Sized)) -> Self {
        rule.add_to(&mut self);
        self
    }

    /// Whether nothing is named.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.tags.is_empty()
            && self.classes.is_empty()
            && !self.volatile
            && !self.everything
    }

    /// Adds another invalidation's contents.
    pub fn merge(&mut self, other: &Invalidation) {
        self.keys.extend(other.keys.iter().cloned());
        self.tags.extend(other.tags.iter().cloned());
        self.classes.extend(other.classes.iter().cloned());
        self.volatile |= other.volatile;
        self.everything |= other.everything;
    }
}

/// A reusable invalidation rule: the keys and tags one kind of mutation makes stale.
///
/// ```
/// use stormcache::{Invalidation, InvalidationRule, Key};
///
/// /// Group membership of a user changed.
/// struct UserGroups<'a> {
///     user_id: &'a str,
/// }
///
/// impl InvalidationRule for UserGroups<'_> {
///     fn add_to(&self, inv: &mut Invalidation) {
///         *inv = std::mem::take(inv)
///             .key(Key::builder("user:groups:").value(self.user_id).build())
///             .key(Key::builder("resources:").value(self.user_id).build());
///     }
/// }
///
/// let inv = Invalidation::new().rule(&UserGroups { user_id: "alice" });
/// assert!(!inv.is_empty());
/// ```
pub trait InvalidationRule {
    /// Adds this rule's keys, tags and classes to `inv`.
    fn add_to(&self, inv: &mut Invalidation);
}

impl InvalidationRule for Invalidation {
    fn add_to(&self, inv: &mut Invalidation) {
        inv.merge(self);
    }
}

impl<R: InvalidationRule + ?Sized> InvalidationRule for &R {
    fn add_to(&self, inv: &mut Invalidation) {
        (**self).add_to(inv);
    }
}

/// What happened to an invalidation in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisOutcome {
    /// No Redis configured: the local store was all there was.
    NotConfigured,
    /// Applied to Redis.
    Applied,
    /// Redis is down (or failed): the local store was cleaned and the Redis half is in the
    /// journal, replayed on recovery before Redis is read again. `overflowed` means the
    /// journal was full and recovery will flush the whole namespace instead.
    Journaled {
        /// The journal overflowed.
        overflowed: bool,
    },
}

/// What an invalidation did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidationReport {
    /// Keys removed from Redis (entries, plus tag sets).
    pub redis_keys_removed: u64,
    /// How Redis took it.
    pub redis: RedisOutcome,
    /// Class names that this cache does not declare (ignored).
    pub unknown_classes: Vec<String>,
}

impl Inner {
    /// The classes an invalidation names, and the names this cache does not declare.
    fn class_ids(&self, inv: &Invalidation) -> (Vec<ClassId>, Vec<String>) {
        let mut unknown = Vec::new();
        let mut ids: Vec<ClassId> = inv
            .classes
            .iter()
            .filter_map(|name| {
                let id = self.classes.resolve(Some(name));
                if id.is_none() {
                    unknown.push(name.clone());
                }
                id
            })
            .collect();
        if inv.volatile {
            ids.extend(
                self.classes
                    .iter()
                    .filter(|(_, c)| c.is_volatile())
                    .map(|(id, _)| id),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        (ids, unknown)
    }

    /// Removes what `inv` names from the local store.
    pub(crate) fn apply_local(&self, inv: &Invalidation) {
        if inv.everything {
            self.local.invalidate_all();
            return;
        }
        for key in &inv.keys {
            for (class, _) in self.classes.iter() {
                self.local.remove(&LocalKey {
                    class,
                    key: key.clone(),
                });
            }
        }
        for tag in &inv.tags {
            self.local.invalidate_tag(tag);
        }
        for class in self.class_ids(inv).0 {
            self.local.invalidate_class(class);
        }
    }

    /// Removes what `inv` names from Redis (whatever the breaker says); keys removed.
    pub(crate) async fn apply_redis(&self, inv: &Invalidation) -> Result<u64, Error> {
        let Some(redis) = self.redis.as_ref() else {
            return Ok(0);
        };
        if inv.everything {
            let removed = redis.flush_pattern(&redis.namespace_pattern()).await?.keys;
            self.publish(inv).await?;
            return Ok(removed);
        }
        let mut removed = 0;
        if !inv.keys.is_empty() {
            let full_keys = inv
                .keys
                .iter()
                .flat_map(|key| {
                    self.classes
                        .iter()
                        .map(move |(_, c)| redis.entry_key(c.name(), key))
                })
                .collect();
            removed += redis.unlink(full_keys).await?.keys;
        }
        for tag in &inv.tags {
            removed += redis.invalidate_tag(tag).await?.keys;
        }
        for class in self.class_ids(inv).0 {
            let pattern = redis.class_pattern(self.classes.get(class).name());
            removed += redis.flush_pattern(&pattern).await?.keys;
        }
        self.publish(inv).await?;
        Ok(removed)
    }

    /// Tells the other instances (their local stores) about an invalidation applied to
    /// Redis. A failure is returned like a Redis failure, so the caller journals the
    /// invalidation and recovery applies and publishes it again.
    async fn publish(&self, inv: &Invalidation) -> Result<(), Error> {
        match &self.backplane {
            Some(backplane) => backplane.publish(self, inv).await,
            None => Ok(()),
        }
    }

    /// Applies an invalidation another instance published: the local store only.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn apply_remote(&self, inv: &Invalidation) {
        // As for our own invalidations, loads in progress must not store what this removes.
        // Remove at once for a prompt effect; if stores were already past their check, let
        // them land and remove again.
        let in_progress = self.flights.begin_invalidation(mask_of(inv));
        self.apply_local(inv);
        if !in_progress.stores_idle() {
            in_progress.stores_landed().await;
            self.apply_local(inv);
        }
    }
}

impl Cache {
    /// Removes what `inv` names from the local store, then from Redis.
    ///
    /// Never fails: if Redis is down or fails, the Redis half goes to the journal and is
    /// replayed on recovery, before Redis is read again.
    pub async fn invalidate(&self, inv: &Invalidation) -> InvalidationReport {
        let inner = &*self.inner;
        // Loads in progress may hold what this removes: they must not be joined or stored,
        // neither now nor until the Redis half is done (dropping `in_progress` ends it).
        let in_progress = inner.flights.begin_invalidation(mask_of(inv));
        in_progress.stores_landed().await;
        let unknown_classes = inner.class_ids(inv).1;
        // Local first: this process must not serve what it was just told is stale.
        inner.apply_local(inv);
        let mut report = InvalidationReport {
            redis_keys_removed: 0,
            redis: RedisOutcome::NotConfigured,
            unknown_classes,
        };
        if inner.redis.is_none() {
            return report;
        }
        if inner.health.allows_requests() {
            match inner.apply_redis(inv).await {
                Ok(removed) => {
                    inner.health.record_success();
                    inner.journal.remember(inv);
                    report.redis_keys_removed = removed;
                    report.redis = RedisOutcome::Applied;
                    return report;
                }
                Err(error) => {
                    inner.stats.redis_error();
                    inner.health.record_failure("invalidation failed");
                    tracing::warn!(%error, "invalidation not applied to Redis; journaled");
                }
            }
        }
        let kept = inner.journal.push(inv.clone());
        report.redis = RedisOutcome::Journaled { overflowed: !kept };
        report
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
}

//! Invalidation: what a mutation makes stale, and removing it from both stores.
//!
//! Seed 002's lesson is that one mutation ripples through several cache layers — removing
//! a user from a group makes `user:groups:{user}` *and* `resources:{user}` stale — and that
//! the rules saying so should be declared once and reused. An [`Invalidation`] is such a
//! set of keys, tags and classes; an [`InvalidationRule`] is a reusable piece of one (the
//! `#[invalidate]` attribute and the HTTP `InvalidateLayer` both build on it).
//!
//! The local store is always cleaned first, so this process never serves what it was just
//! told is stale; Redis follows. A Redis failure never fails the caller: it is reported.

use std::collections::BTreeSet;

use crate::cache::Cache;
use crate::key::Key;

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
    /// Redis failed; the local store was cleaned, Redis was not (the error says why).
    Failed(String),
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

impl Cache {
    /// Removes what `inv` names from the local store, then from Redis.
    pub async fn invalidate(&self, inv: &Invalidation) -> InvalidationReport {
        let inner = &*self.inner;
        let mut unknown_classes = Vec::new();
        let mut class_ids = Vec::new();
        for name in &inv.classes {
            match inner.classes.resolve(Some(name)) {
                Some(id) => class_ids.push(id),
                None => unknown_classes.push(name.clone()),
            }
        }
        if inv.volatile {
            class_ids.extend(inner.classes.iter().filter(|(_, c)| c.is_volatile()).map(|(id, _)| id));
        }
        class_ids.sort_unstable();
        class_ids.dedup();

        // Local first: this process must not serve what it was just told is stale.
        if inv.everything {
            inner.local.invalidate_all();
        } else {
            for key in &inv.keys {
                for (class, _) in inner.classes.iter() {
                    inner.local.remove(&crate::local_store::LocalKey {
                        class,
                        key: key.clone(),
                    });
                }
            }
            for tag in &inv.tags {
                inner.local.invalidate_tag(tag);
            }
            for &class in &class_ids {
                inner.local.invalidate_class(class);
            }
        }

        let Some(redis) = inner.redis() else {
            return InvalidationReport {
                redis_keys_removed: 0,
                redis: RedisOutcome::NotConfigured,
                unknown_classes,
            };
        };
        let applied = async {
            let mut removed = 0;
            if inv.everything {
                removed += redis.flush_pattern(&redis.namespace_pattern()).await?.keys;
                return Ok(removed);
            }
            if !inv.keys.is_empty() {
                let full_keys = inv
                    .keys
                    .iter()
                    .flat_map(|key| inner.classes.iter().map(move |(_, c)| redis.entry_key(c.name(), key)))
                    .collect();
                removed += redis.unlink(full_keys).await?.keys;
            }
            for tag in &inv.tags {
                removed += redis.invalidate_tag(tag).await?.keys;
            }
            for &class in &class_ids {
                let pattern = redis.class_pattern(inner.classes.get(class).name());
                removed += redis.flush_pattern(&pattern).await?.keys;
            }
            Ok::<u64, crate::Error>(removed)
        };
        match applied.await {
            Ok(removed) => InvalidationReport {
                redis_keys_removed: removed,
                redis: RedisOutcome::Applied,
                unknown_classes,
            },
            Err(error) => {
                inner.stats.redis_error();
                tracing::warn!(%error, "invalidation not applied to Redis");
                InvalidationReport {
                    redis_keys_removed: 0,
                    redis: RedisOutcome::Failed(error.to_string()),
                    unknown_classes,
                }
            }
        }
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

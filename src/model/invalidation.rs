//! Invalidation as a value: what a mutation makes stale.
//!
//! One mutation ripples through several cached views — removing a user from a group makes
//! `user:groups:{user}` *and* `resources:{user}` stale — and the rules saying so should be
//! declared once and reused. An [`Invalidation`] is such a set of keys, tags and classes; an
//! [`InvalidationRule`] is a reusable piece of one (the `#[invalidate]` attribute and the
//! HTTP `InvalidateLayer` both build on it). Applying one is the cache's job, not this
//! module's: see [`Cache::invalidate`](crate::Cache::invalidate).

use std::collections::BTreeSet;

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
    /// Redis is down (or failed): the local store was cleaned and the Redis half is in the
    /// journal, replayed as soon as Redis answers (and on recovery, before Redis is read
    /// again). `overflowed` means the journal was full and the whole namespace will be
    /// flushed instead.
    Journaled {
        /// The journal overflowed.
        overflowed: bool,
    },
    /// The local store was cleaned; Redis and the other instances had not confirmed within
    /// the caller's wait (see [`Cache::invalidate_promptly`](crate::Cache::invalidate_promptly)).
    /// The invalidation carries on in the background and is journaled if it fails.
    Pending,
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

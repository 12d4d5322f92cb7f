//! Per-call options of the read-through and write calls.
//!
//! They say how long an entry lives, which class it belongs to (part of its identity: read
//! and write a key with the same options) and which tags reach it.

use std::borrow::Cow;
use std::time::Duration;

use crate::key::Key;

/// Options of one cached call: TTL, class, tags, fail-safe grace, distributed stampede
/// lock and eager refresh.
///
/// ```
/// use std::time::Duration;
/// use stormcache::{EntryOptions, Key};
///
/// let opts = EntryOptions::new()
///     .class("permissions")
///     .ttl(Duration::from_secs(15 * 60))
///     .tag(Key::builder("user:").value("alice").build());
/// assert_eq!(opts.class_name(), Some("permissions"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct EntryOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) class: Option<Cow<'static, str>>,
    pub(crate) tags: Vec<Key>,
    pub(crate) stale_for: Option<Duration>,
    pub(crate) lock: Option<Duration>,
    /// Per mille of the TTL after which a hit refreshes.
    pub(crate) eager_refresh: Option<u16>,
    /// How the key was made, for traces (`user:groups:{id}`), never its values.
    pub(crate) key_template: Option<Cow<'static, str>>,
}

impl EntryOptions {
    /// No TTL (the class's), the default class, no tags, no grace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time to live, overriding the class's default.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The class the entry belongs to. Unknown names fall back to the default class, with a
    /// warning.
    pub fn class(mut self, class: impl Into<Cow<'static, str>>) -> Self {
        self.class = Some(class.into());
        self
    }

    /// Adds a tag: invalidating the tag removes the entry.
    pub fn tag(mut self, tag: Key) -> Self {
        self.tags.push(tag);
        self
    }

    /// Adds several tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = Key>) -> Self {
        self.tags.extend(tags);
        self
    }

    /// Fail-safe grace: for this long after the TTL, an expired value is kept and served
    /// (marked stale) if the loader fails.
    pub fn stale_for(mut self, grace: Duration) -> Self {
        self.stale_for = Some(grace);
        self
    }

    /// Distributed stampede protection: on a miss in both stores, only the instance that
    /// takes a lock in Redis runs the loader; the others wait for its value to appear in
    /// Redis. The lock expires after `ttl`, so a holder that dies (or hangs) blocks the
    /// others for at most that long, after which one of them takes the lock and loads.
    /// Choose `ttl` above the loader's usual duration.
    ///
    /// Without Redis, or when Redis is down, each instance loads for itself (within one
    /// process, concurrent misses still run one load).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormcache::EntryOptions;
    ///
    /// let opts = EntryOptions::new().distributed_lock(Duration::from_secs(5));
    /// # let _ = opts;
    /// ```
    pub fn distributed_lock(mut self, ttl: Duration) -> Self {
        self.lock = Some(ttl.max(Duration::from_millis(1)));
        self
    }

    /// Eager refresh: a hit after `threshold` (a fraction, `0.0..1.0`) of the entry's TTL has
    /// passed is served as usual and also refreshed in the background, once per key at a
    /// time, so that hot keys do not expire under load. `0.8` refreshes hits in the last
    /// 20 % of the TTL.
    ///
    /// Only [`Cache::fetch_refreshing`](crate::Cache::fetch_refreshing) acts on it, since a
    /// background refresh needs a loader that owns what it uses (`'static`).
    ///
    /// ```
    /// use stormcache::EntryOptions;
    ///
    /// let opts = EntryOptions::new().eager_refresh(0.8);
    /// # let _ = opts;
    /// ```
    pub fn eager_refresh(mut self, threshold: f64) -> Self {
        let per_mille = (threshold.clamp(0.0, 1.0) * 1000.0).round() as u16;
        self.eager_refresh = Some(per_mille);
        self
    }

    /// The key's template (`user:groups:{id}`), recorded as `cache.key_template` on the
    /// read's span: traces can then tell reads apart without the key's values, which can
    /// carry personal data. `#[cached]` and `CacheLayer` set it; for other calls it is
    /// optional.
    ///
    /// ```
    /// use stormcache::EntryOptions;
    ///
    /// let opts = EntryOptions::new().key_template("user:groups:{id}");
    /// assert_eq!(opts.key_template_name(), Some("user:groups:{id}"));
    /// ```
    pub fn key_template(mut self, template: impl Into<Cow<'static, str>>) -> Self {
        self.key_template = Some(template.into());
        self
    }

    /// The key template given, if any.
    pub fn key_template_name(&self) -> Option<&str> {
        self.key_template.as_deref()
    }

    /// The class name given, if any.
    pub fn class_name(&self) -> Option<&str> {
        self.class.as_deref()
    }

    /// The tags given.
    pub fn tag_list(&self) -> &[Key] {
        &self.tags
    }
}

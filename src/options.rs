//! Per-call options of the read-through and write calls.
//!
//! They say how long an entry lives, which class it belongs to (part of its identity: read
//! and write a key with the same options) and which tags reach it.

use std::borrow::Cow;
use std::time::Duration;

use crate::key::Key;

/// Options of one cached call: TTL, class, tags and fail-safe grace.
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

    /// The class name given, if any.
    pub fn class_name(&self) -> Option<&str> {
        self.class.as_deref()
    }

    /// The tags given.
    pub fn tag_list(&self) -> &[Key] {
        &self.tags
    }
}

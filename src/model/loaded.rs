//! What a loader may say about the value it produced: its TTL, its tags, or that it must
//! not be cached. See [`Loaded`].

use std::time::Duration;

use super::options::Lifetime;
use crate::key::Key;

/// A loaded value with how to cache it, decided by the loader — for values whose freshness
/// or reach is known only once they are loaded: a token that expires when its issuer says,
/// a document tagged by the folders it sits in, a "not found" not worth keeping.
///
/// Return it from the loader of [`Cache::fetch_adaptive`](crate::Cache::fetch_adaptive).
/// Loaders whose return type must stay `T` (`#[cached]` functions, say) use
/// [`adapt`](crate::adapt) instead, to the same effect.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormcache::Error> {
/// use std::time::Duration;
/// use stormcache::{Cache, EntryOptions, Key, Loaded};
///
/// let cache = Cache::builder("docs").build()?;
/// let token = cache
///     .fetch_adaptive(Key::literal("token")?, &EntryOptions::new(), || async {
///         // The issuer says it expires in 90 s.
///         Ok::<_, stormcache::Error>(Loaded::new("t0k3n".to_owned()).ttl(Duration::from_secs(90)))
///     })
///     .await?;
/// assert_eq!(token.value, "t0k3n");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Loaded<T> {
    pub(crate) value: T,
    pub(crate) adjust: Adjust,
}

impl<T> Loaded<T> {
    /// The value, cached as the call's options say.
    pub fn new(value: T) -> Self {
        Loaded {
            value,
            adjust: Adjust::default(),
        }
    }

    /// Caches it for `ttl` instead of the options' TTL (the options' jitter and local TTL
    /// still apply).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.adjust.ttl = Some(ttl);
        self
    }

    /// Adds a tag beside the options' tags.
    pub fn tag(mut self, tag: Key) -> Self {
        self.adjust.tags.push(tag);
        self
    }

    /// Adds tags beside the options' tags.
    pub fn tags(mut self, tags: impl IntoIterator<Item = Key>) -> Self {
        self.adjust.tags.extend(tags);
        self
    }

    /// Returns the value to the callers of this load without caching it.
    pub fn no_store(mut self) -> Self {
        self.adjust.no_store = true;
        self
    }

    /// The value.
    pub fn into_value(self) -> T {
        self.value
    }
}

/// What a loader changed of its entry's caching.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Adjust {
    pub(crate) ttl: Option<Duration>,
    pub(crate) tags: Vec<Key>,
    pub(crate) no_store: bool,
    /// A lifetime the value's own metadata gives it: an exact TTL and a grace.
    pub(crate) lifetime: Option<Lifetime>,
}

impl Adjust {
    /// Adds what `other` says; a later TTL wins.
    pub(crate) fn merge(&mut self, other: Adjust) {
        if other.ttl.is_some() {
            self.ttl = other.ttl;
        }
        self.tags.extend(other.tags);
        self.no_store |= other.no_store;
        if other.lifetime.is_some() {
            self.lifetime = other.lifetime;
        }
    }
}

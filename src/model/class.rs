//! Classes: named groups of entries with their own TTL and volatility.
//!
//! After a long Redis outage the outage policy flushes "the volatile data" — sessions,
//! permissions, group memberships — without touching stable data such as resource metadata.
//! So every entry belongs to a class, the class name is a segment of the entry's Redis key
//! (`namespace:class:key`), and one class of one namespace can be found with a single SCAN
//! pattern and flushed, on every master of a Cluster, without an index that could drift.

use std::time::Duration;

use super::options::TtlJitter;
use crate::error::Error;
use crate::key::check_name;

/// The class entries go to when the call names none.
pub const DEFAULT_CLASS: &str = "default";

/// A named class of entries.
///
/// ```
/// use std::time::Duration;
/// use stormcache::Class;
///
/// let permissions = Class::new("permissions")
///     .ttl(Duration::from_secs(15 * 60))
///     .ttl_jitter(0.1)
///     .local_ttl(Duration::from_secs(60))
///     .volatile();
/// assert!(permissions.is_volatile());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Class {
    name: String,
    ttl: Option<Duration>,
    ttl_jitter: Option<TtlJitter>,
    local_ttl: Option<Duration>,
    volatile: bool,
}

impl Class {
    /// A stable (non-volatile) class that uses the cache's default TTL.
    ///
    /// The name must be 1 to 64 of `A-Z a-z 0-9 _ . -`; it is checked when the cache is built.
    pub fn new(name: impl Into<String>) -> Self {
        Class {
            name: name.into(),
            ttl: None,
            ttl_jitter: None,
            local_ttl: None,
            volatile: false,
        }
    }

    /// The TTL of entries of this class when the call does not give one.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// TTL jitter of the class's entries when the call gives none: each stored entry's TTL
    /// is shortened by a random amount up to `jitter` (a [`Duration`], or a fraction of the
    /// TTL), so that entries written together do not expire together. See
    /// [`EntryOptions::ttl_jitter`](crate::EntryOptions::ttl_jitter).
    pub fn ttl_jitter(mut self, jitter: impl Into<TtlJitter>) -> Self {
        self.ttl_jitter = Some(jitter.into());
        self
    }

    /// The longest the local copy of an entry of this class is kept, when the call gives no
    /// limit; Redis keeps the entry for its full TTL. See
    /// [`EntryOptions::local_ttl`](crate::EntryOptions::local_ttl). Must not be zero.
    pub fn local_ttl(mut self, ttl: Duration) -> Self {
        self.local_ttl = Some(ttl);
        self
    }

    /// Marks the class volatile: flushed by the outage policy's middle tier.
    pub fn volatile(mut self) -> Self {
        self.volatile = true;
        self
    }

    /// The class's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the outage policy's volatile tier flushes this class.
    pub fn is_volatile(&self) -> bool {
        self.volatile
    }

    /// The class's own default TTL, if it has one.
    pub fn default_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The class's TTL jitter, if it has one.
    pub fn default_ttl_jitter(&self) -> Option<TtlJitter> {
        self.ttl_jitter
    }

    /// The class's limit on the local copy's TTL, if it has one.
    pub fn default_local_ttl(&self) -> Option<Duration> {
        self.local_ttl
    }
}

/// Index of a class in its cache's registry; part of an entry's local identity.
pub(crate) type ClassId = u16;

/// The classes of one cache, resolved by name on each call.
#[derive(Debug)]
pub(crate) struct Classes {
    list: Box<[Class]>,
}

impl Classes {
    pub(crate) fn new(mut declared: Vec<Class>, default_ttl: Duration) -> Result<Self, Error> {
        if !declared.iter().any(|c| c.name == DEFAULT_CLASS) {
            declared.insert(0, Class::new(DEFAULT_CLASS));
        }
        for i in 0..declared.len() {
            let (before, rest) = declared.split_at_mut(i);
            let class = &mut rest[0];
            check_name("class", &class.name)?;
            if before.iter().any(|c| c.name == class.name) {
                return Err(Error::Config(format!(
                    "class `{}` is declared twice",
                    class.name
                )));
            }
            let ttl = *class.ttl.get_or_insert(default_ttl);
            if ttl.is_zero() {
                return Err(Error::Config(format!(
                    "class `{}` has a zero TTL",
                    class.name
                )));
            }
            if class.local_ttl.is_some_and(|t| t.is_zero()) {
                return Err(Error::Config(format!(
                    "class `{}` has a zero local TTL (use `EntryOptions::skip_local` to keep \
                     entries out of the local store)",
                    class.name
                )));
            }
        }
        if declared.len() > usize::from(ClassId::MAX) {
            return Err(Error::Config("too many classes".into()));
        }
        Ok(Classes {
            list: declared.into(),
        })
    }

    /// Resolves a name; `None` means the default class.
    #[inline]
    pub(crate) fn resolve(&self, name: Option<&str>) -> Option<ClassId> {
        let name = name.unwrap_or(DEFAULT_CLASS);
        // A handful of classes: a linear scan beats hashing the name.
        self.list
            .iter()
            .position(|c| c.name == name)
            .map(|i| i as ClassId)
    }

    pub(crate) fn get(&self, id: ClassId) -> &Class {
        &self.list[usize::from(id)]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ClassId, &Class)> {
        self.list.iter().enumerate().map(|(i, c)| (i as ClassId, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_adds_default_and_rejects_bad_names() {
        let day = Duration::from_secs(86_400);
        let classes =
            Classes::new(vec![Class::new("sessions").volatile()], day).expect("valid classes");
        assert_eq!(
            classes.get(classes.resolve(None).expect("default")).name(),
            DEFAULT_CLASS
        );
        let sessions = classes.resolve(Some("sessions")).expect("declared");
        assert!(classes.get(sessions).is_volatile());
        assert_eq!(classes.get(sessions).default_ttl(), Some(day));
        assert!(classes.resolve(Some("nope")).is_none());
        assert!(Classes::new(vec![Class::new("a*")], day).is_err());
        assert!(Classes::new(vec![Class::new("a"), Class::new("a")], day).is_err());
        assert!(Classes::new(vec![Class::new("a").local_ttl(Duration::ZERO)], day).is_err());
        let shaped = Class::new("a").ttl_jitter(0.2).local_ttl(day / 24);
        assert_eq!(shaped.default_ttl_jitter(), Some(TtlJitter::fraction(0.2)));
        assert_eq!(shaped.default_local_ttl(), Some(day / 24));
    }
}

//! The tiered flush-on-outage policy.
//!
//! While Redis is away, this process keeps answering from its local store and journals its
//! own invalidations — but it cannot know what *other* writers changed, and Redis may come
//! back from an RDB snapshot hours old. The answer is a table: a short blip changes
//! nothing, a long outage makes security-sensitive (volatile) data untrustworthy, a very long
//! one makes everything untrustworthy. The tier is chosen by the larger of how long this
//! process saw Redis gone and how old the data Redis came back with is (measured by the
//! heartbeat), so a 10-second outage that comes back with three-hour-old data is treated as
//! the three-hour outage it effectively was.

use std::time::Duration;

use serde::Serialize;

use super::Invalidation;

/// What one tier flushes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FlushScope {
    /// Flush nothing.
    Nothing,
    /// Every class declared volatile.
    Volatile,
    /// These classes.
    Classes(Vec<String>),
    /// Everything in the namespace.
    All,
}

impl FlushScope {
    /// The invalidation this scope stands for; `None` for [`FlushScope::Nothing`].
    pub fn to_invalidation(&self) -> Option<Invalidation> {
        match self {
            FlushScope::Nothing => None,
            FlushScope::Volatile => Some(Invalidation::new().volatile_classes()),
            FlushScope::Classes(names) => Some(
                names
                    .iter()
                    .fold(Invalidation::new(), |inv, name| inv.class(name.clone())),
            ),
            FlushScope::All => Some(Invalidation::new().everything()),
        }
    }
}

/// One row of the policy: from this much staleness on, flush this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tier {
    /// Staleness (outage length or data age) at which the tier starts.
    pub from: Duration,
    /// What it flushes.
    pub scope: FlushScope,
}

/// An ordered list of tiers; below the first one nothing is flushed.
///
/// The default: under 5 minutes nothing (a blip under 30 s changes nothing, and between
/// 30 s and 5 min the journal has kept this process's own invalidations, so nothing is
/// flushed there either), from 5 minutes the volatile classes, from 30 minutes everything
/// in the namespace.
///
/// ```
/// use std::time::Duration;
/// use stormcache::{FlushScope, OutagePolicy};
///
/// let policy = OutagePolicy::default();
/// assert_eq!(policy.tier_for(Duration::from_secs(20)), None);
/// assert_eq!(policy.tier_for(Duration::from_secs(120)), None);
/// assert_eq!(policy.tier_for(Duration::from_secs(600)).map(|t| &t.scope), Some(&FlushScope::Volatile));
/// assert_eq!(policy.tier_for(Duration::from_secs(7200)).map(|t| &t.scope), Some(&FlushScope::All));
///
/// // Compressed for a test or a very sensitive service:
/// let strict = OutagePolicy::new()
///     .tier(Duration::from_secs(1), FlushScope::Classes(vec!["sessions".into()]))
///     .tier(Duration::from_secs(3), FlushScope::Volatile)
///     .tier(Duration::from_secs(6), FlushScope::All);
/// assert_eq!(strict.tiers().len(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[must_use]
pub struct OutagePolicy {
    tiers: Vec<Tier>,
}

impl Default for OutagePolicy {
    fn default() -> Self {
        OutagePolicy::new()
            .tier(Duration::from_secs(5 * 60), FlushScope::Volatile)
            .tier(Duration::from_secs(30 * 60), FlushScope::All)
    }
}

impl OutagePolicy {
    /// A policy with no tiers: never flush.
    pub fn new() -> Self {
        OutagePolicy { tiers: Vec::new() }
    }

    /// Adds a tier; tiers are kept ordered by `from`.
    pub fn tier(mut self, from: Duration, scope: FlushScope) -> Self {
        self.tiers.push(Tier { from, scope });
        self.tiers.sort_by_key(|t| t.from);
        self
    }

    /// The tiers, shortest first.
    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The tier that applies to this much staleness, if any.
    pub fn tier_for(&self, staleness: Duration) -> Option<&Tier> {
        self.tiers.iter().rev().find(|t| staleness >= t.from)
    }

    /// The tier for an outage of `outage` that came back with data `data_age` old (`None`:
    /// Redis came back empty, or its age is unknown).
    pub fn decide(&self, outage: Duration, data_age: Option<Duration>) -> Option<&Tier> {
        self.tier_for(outage.max(data_age.unwrap_or(Duration::ZERO)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn larger_of_outage_and_data_age_decides() {
        let p = OutagePolicy::default();
        let ten_s = Duration::from_secs(10);
        assert_eq!(p.decide(ten_s, None), None);
        assert_eq!(
            p.decide(ten_s, Some(Duration::from_secs(3 * 3600)))
                .map(|t| &t.scope),
            Some(&FlushScope::All)
        );
        assert_eq!(
            p.decide(Duration::from_secs(301), Some(ten_s))
                .map(|t| &t.scope),
            Some(&FlushScope::Volatile)
        );
    }
}

//! What recovery flushes after an outage: the decision, apart from the doing.
//!
//! The tier comes from the larger of how long this process saw Redis gone and how old the
//! data Redis came back with is (see [`OutagePolicy`]). On the first connection since start
//! this process missed nothing, so the data's age alone decides: Redis may have been
//! restored from an old snapshot while the service restarted. A journal that overflowed lost
//! invalidations that only a namespace flush is certain to cover.

use std::time::Duration;

use crate::model::{FlushScope, OutagePolicy};

/// What recovery knows when it decides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outage {
    /// How long this process saw Redis gone (`None`: never up before, the first connection).
    pub(crate) length: Option<Duration>,
    /// How old the data Redis came back with is (`None`: no heartbeat, Redis came back empty).
    pub(crate) data_age: Option<Duration>,
    /// The journal overflowed during the outage.
    pub(crate) journal_overflowed: bool,
}

/// The scope recovery flushes, locally and in Redis, before Redis is read again.
pub(crate) fn flush_scope(policy: &OutagePolicy, outage: Outage) -> FlushScope {
    if outage.journal_overflowed {
        return FlushScope::All;
    }
    policy
        .decide(outage.length.unwrap_or(Duration::ZERO), outage.data_age)
        .map_or(FlushScope::Nothing, |tier| tier.scope.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn outage(length: Option<Duration>, data_age: Option<Duration>) -> Outage {
        Outage {
            length,
            data_age,
            journal_overflowed: false,
        }
    }

    #[test]
    fn the_default_tiers() {
        let p = OutagePolicy::default();
        let scope = |length, age| flush_scope(&p, outage(Some(length), age));
        assert_eq!(scope(Duration::from_secs(20), None), FlushScope::Nothing);
        assert_eq!(scope(2 * MIN, None), FlushScope::Nothing);
        assert_eq!(scope(5 * MIN, None), FlushScope::Volatile);
        assert_eq!(scope(29 * MIN, None), FlushScope::Volatile);
        assert_eq!(scope(30 * MIN, None), FlushScope::All);
    }

    #[test]
    fn old_data_counts_like_a_long_outage() {
        let p = OutagePolicy::default();
        // A ten-second blip that came back from a three-hour-old snapshot.
        let scope = flush_scope(&p, outage(Some(Duration::from_secs(10)), Some(180 * MIN)));
        assert_eq!(scope, FlushScope::All);
        let scope = flush_scope(&p, outage(Some(Duration::from_secs(10)), Some(6 * MIN)));
        assert_eq!(scope, FlushScope::Volatile);
    }

    #[test]
    fn the_first_connection_is_decided_by_the_data_age() {
        let p = OutagePolicy::default();
        assert_eq!(flush_scope(&p, outage(None, None)), FlushScope::Nothing);
        assert_eq!(
            flush_scope(&p, outage(None, Some(MIN))),
            FlushScope::Nothing
        );
        assert_eq!(
            flush_scope(&p, outage(None, Some(180 * MIN))),
            FlushScope::All
        );
    }

    #[test]
    fn an_overflowed_journal_flushes_everything() {
        let p = OutagePolicy::default();
        for length in [None, Some(Duration::from_secs(1))] {
            let o = Outage {
                length,
                data_age: None,
                journal_overflowed: true,
            };
            assert_eq!(flush_scope(&p, o), FlushScope::All);
        }
    }

    #[test]
    fn configured_tiers_are_used() {
        let p = OutagePolicy::new().tier(
            Duration::from_secs(1),
            FlushScope::Classes(vec!["sessions".into()]),
        );
        assert_eq!(
            flush_scope(&p, outage(Some(Duration::from_secs(2)), None)),
            FlushScope::Classes(vec!["sessions".into()])
        );
        assert_eq!(
            flush_scope(&p, outage(Some(Duration::from_millis(500)), None)),
            FlushScope::Nothing
        );
    }
}

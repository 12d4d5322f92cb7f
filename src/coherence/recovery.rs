//! What recovery flushes after an outage: the decision, apart from the doing.
//!
//! The tier comes from the larger of how long this process saw Redis gone and how old the
//! data Redis came back with is (see [`OutagePolicy`]). On the first connection since start
//! this process missed nothing, so the data's age alone decides: Redis may have been
//! restored from an old snapshot while the service restarted. A journal that overflowed lost
//! invalidations that only a namespace flush is certain to cover, and so did a memory of
//! applied invalidations that no longer reaches back to the data's age.

use std::time::Duration;

use crate::model::{FlushScope, OutagePolicy};
use crate::redis::Heartbeats;

/// What recovery knows when it decides.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outage {
    /// How long this process saw Redis gone (`None`: never up before, the first connection).
    pub(crate) length: Option<Duration>,
    /// How old the data Redis came back with is (`None`: no heartbeat, Redis came back empty).
    pub(crate) data_age: Option<Duration>,
    /// The journal overflowed during the outage.
    pub(crate) journal_overflowed: bool,
    /// Invalidations made since the data's age were no longer remembered, so they could not
    /// be applied again.
    pub(crate) memory_incomplete: bool,
}

/// How far back the remembered invalidations, and the remembered writes, are applied again.
///
/// Everything since this instance's own heartbeat in the data Redis came back with (what was
/// applied before that heartbeat was written is in the data, as it went first on the same
/// connection; a little more, for the wall clock the heartbeat carries against the monotonic
/// one the memory uses), all of them if the data predates its first heartbeat. Invalidations
/// go at least `least` back, also when Redis came back empty (a failover's lost writes are
/// not always visible in a heartbeat); writes only as far as the heartbeat shows, since
/// re-applying one removes the value written.
pub(crate) fn reapply_window(least: Duration, heartbeats: Heartbeats) -> (Duration, Duration) {
    if heartbeats.data_age.is_none() {
        // Empty now is no proof of empty for long: a master restarted without its data is
        // replaced by, or resynchronised from, one that has it. Invalidations go again as
        // after any outage; writes do not (there is nothing older for them to undo).
        return (least, Duration::ZERO);
    }
    match heartbeats.own_age {
        None => (Duration::MAX, Duration::MAX),
        Some(age) => {
            let since_own = age
                .saturating_add(age / 1000)
                .saturating_add(Duration::from_millis(20));
            (least.max(since_own), since_own)
        }
    }
}

/// The scope recovery flushes, locally and in Redis, before Redis is read again.
pub(crate) fn flush_scope(policy: &OutagePolicy, outage: Outage) -> FlushScope {
    if outage.journal_overflowed || outage.memory_incomplete {
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
            memory_incomplete: false,
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
    fn an_overflowed_journal_or_a_forgetful_memory_flushes_everything() {
        let p = OutagePolicy::default();
        for length in [None, Some(Duration::from_secs(1))] {
            let o = Outage {
                length,
                data_age: None,
                journal_overflowed: true,
                memory_incomplete: false,
            };
            assert_eq!(flush_scope(&p, o), FlushScope::All);
            let o = Outage {
                journal_overflowed: false,
                memory_incomplete: true,
                ..o
            };
            assert_eq!(flush_scope(&p, o), FlushScope::All);
        }
    }

    #[test]
    fn everything_since_the_own_heartbeat_is_applied_again() {
        let least = Duration::from_secs(30);
        let window = |data_age, own_age| reapply_window(least, Heartbeats { data_age, own_age });
        let (second, now) = (Some(Duration::from_secs(1)), Some(Duration::ZERO));
        let (s2, s40) = (Duration::from_secs(2), Duration::from_secs(40));
        let slack = |age: Duration| age + age / 1000 + Duration::from_millis(20);
        assert_eq!(window(None, now), (least, Duration::ZERO), "empty");
        assert_eq!(window(second, Some(s2)), (least, slack(s2)));
        assert_eq!(window(second, Some(s40)), (slack(s40), slack(s40)));
        assert_eq!(
            window(second, None),
            (Duration::MAX, Duration::MAX),
            "older than this process's first heartbeat"
        );
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

//! Telling a value in Redis that an invalidation has already removed everywhere else.
//!
//! On a Cluster a load's write checks only its own key; the generations of the entry's tags,
//! class and namespace are read again after it (see `redis::lease`). A load racing a tag
//! invalidation or a flush can so land its value after the invalidation's scan, where it
//! stays until that check has made the load remove it. Such writes record in their envelope
//! what the load had seen (its lineage), and a reader compares it with the generations it
//! reads or knows anyway.
//!
//! The tags a loader adds at run time are the exception: their generations were never read,
//! by the load or by a reader that does not name them. Such a reader reads them after the
//! entry, but only while the entry is young ([`unread_tags`]).

use std::time::{Duration, SystemTime};

use crate::key::Key;
use crate::model::unix_ms;
use crate::redis::{Flushes, LEASE_TTL};
use crate::store::envelope::{Lineage, Seen};

/// How long after its write a value may still be a racing load's that its tags' generations
/// would show: a generation lives [`LEASE_TTL`] after the invalidation that set it, so a read
/// later than that finds nothing to compare. Doubled for instances whose clocks differ.
const YOUNG: Duration = LEASE_TTL.saturating_mul(2);

/// The tags whose generations a reader must read after the entry before it may use it: the
/// tags its loader added (`carried`, from the envelope) that the reader did not name
/// (`named`, whose generations it read with the entry) — if a load wrote it less than
/// [`YOUNG`] before `now`. Empty for explicit writes, which no invalidation supersedes, and
/// for entries that record no lineage (only a Cluster's writes do).
pub(super) fn unread_tags(
    lineage: &Lineage,
    carried: &[Key],
    named: &[Key],
    now: SystemTime,
) -> Vec<Key> {
    let Lineage::Loaded(seen) = lineage else {
        return Vec::new();
    };
    let young = u64::try_from(YOUNG.as_millis()).unwrap_or(u64::MAX);
    // A write time ahead of this clock is another instance's clock: young too.
    if unix_ms(now).saturating_sub(seen.written) >= young {
        return Vec::new();
    }
    carried
        .iter()
        .filter(|tag| !named.contains(tag))
        .cloned()
        .collect()
}

/// Whether a value whose writer had seen `lineage` is older than an invalidation, by the
/// generations read with it: those of its `tags` (`now`, in order) and the flushes'. A
/// flush generation only grows, so one the writer had seen behind the current one means a
/// flush since; a tag's generation is never used twice, so a set one the writer had not
/// seen means an invalidation of the tag since.
pub(super) fn superseded(
    lineage: &Lineage,
    tags: &[Key],
    now: &[Option<i64>],
    flushes: Flushes,
) -> bool {
    let unrecorded = Seen::default();
    let seen = match lineage {
        Lineage::Explicit => return false,
        Lineage::Unrecorded => &unrecorded,
        Lineage::Loaded(seen) => seen,
    };
    let behind = |seen: Option<i64>, now: Option<i64>| seen.unwrap_or(0) < now.unwrap_or(0);
    behind(seen.class, flushes.class)
        || behind(seen.namespace, flushes.namespace)
        || tags
            .iter()
            .zip(now)
            .any(|(tag, now)| now.is_some_and(|now| seen.tag(tag) != Some(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::literal(s).expect("valid")
    }

    fn loaded(class: Option<i64>, namespace: Option<i64>, tags: &[(&str, i64)]) -> Lineage {
        Lineage::Loaded(Seen {
            class,
            namespace,
            tags: tags.iter().map(|&(t, g)| (key(t), g)).collect(),
            written: 0,
        })
    }

    fn flushes(class: Option<i64>, namespace: Option<i64>) -> Flushes {
        Flushes { class, namespace }
    }

    #[test]
    fn a_tag_generation_the_writer_had_not_seen_supersedes() {
        let tags = [key("a"), key("b")];
        let seen = loaded(None, None, &[("a", 7)]);
        let none = flushes(None, None);
        assert!(!superseded(&seen, &tags, &[Some(7), None], none), "as seen");
        assert!(superseded(&seen, &tags, &[Some(8), None], none), "a moved");
        assert!(
            superseded(&seen, &tags, &[Some(7), Some(1)], none),
            "b set since"
        );
        // Expired since: no invalidation within the generations' life.
        assert!(!superseded(&seen, &tags, &[None, None], none));
        // Tags read in another order than written.
        let reversed = [key("b"), key("a")];
        assert!(!superseded(&seen, &reversed, &[None, Some(7)], none));
    }

    #[test]
    fn a_flush_generation_behind_the_current_one_supersedes() {
        let seen = loaded(Some(3), None, &[]);
        assert!(!superseded(&seen, &[], &[], flushes(Some(3), None)));
        assert!(superseded(&seen, &[], &[], flushes(Some(4), None)));
        assert!(superseded(&seen, &[], &[], flushes(Some(3), Some(1))));
        // A reader that has not heard of a flush the writer had seen is no reason to miss.
        assert!(!superseded(&seen, &[], &[], flushes(Some(2), None)));
        assert!(!superseded(&seen, &[], &[], flushes(None, None)));
    }

    #[test]
    fn explicit_writes_stand_and_unrecorded_ones_stand_only_before_any_invalidation() {
        let tags = [key("a")];
        let moved = flushes(Some(9), Some(9));
        assert!(!superseded(&Lineage::Explicit, &tags, &[Some(5)], moved));
        let none = flushes(None, None);
        assert!(!superseded(&Lineage::Unrecorded, &tags, &[None], none));
        assert!(superseded(&Lineage::Unrecorded, &tags, &[Some(5)], none));
        assert!(superseded(
            &Lineage::Unrecorded,
            &[],
            &[],
            flushes(Some(1), None)
        ));
    }

    #[test]
    fn a_young_loaded_entry_has_its_unnamed_carried_tags_read() {
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let lineage = Lineage::Loaded(Seen {
            written: unix_ms(written),
            ..Seen::default()
        });
        let carried = [key("folder:1"), key("folder:2")];
        let named = [key("folder:2")];
        let at = |secs| written + Duration::from_secs(secs);
        assert_eq!(
            unread_tags(&lineage, &carried, &named, at(0)),
            [key("folder:1")]
        );
        assert_eq!(
            unread_tags(&lineage, &carried, &named, at(19)),
            [key("folder:1")]
        );
        // Written "later" by another instance's clock: young.
        assert_eq!(
            unread_tags(&lineage, &carried, &named, written - Duration::from_secs(5)),
            [key("folder:1")]
        );
        assert!(unread_tags(&lineage, &carried, &named, at(20)).is_empty());
        assert!(unread_tags(&lineage, &carried, &carried, at(0)).is_empty());
        assert!(unread_tags(&Lineage::Explicit, &carried, &[], at(0)).is_empty());
        assert!(unread_tags(&Lineage::Unrecorded, &carried, &[], at(0)).is_empty());
    }
}

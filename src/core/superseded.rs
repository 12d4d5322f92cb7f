//! Telling a value in Redis that an invalidation has already removed everywhere else.
//!
//! On a Cluster a load's write checks only its own key; the generations of the entry's tags,
//! class and namespace are read again after it (see `redis::lease`). A load racing a tag
//! invalidation or a flush can so land its value after the invalidation's scan, where it
//! stays until that check has made the load remove it. Such writes record in their envelope
//! what the load had seen (its lineage), and a reader compares it with the generations it
//! reads or knows anyway.

use crate::key::Key;
use crate::redis::Flushes;
use crate::store::envelope::{Lineage, Seen};

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
}

//! The invalidation journal: what could not reach Redis, kept until it can.
//!
//! An invalidation made while Redis is down is applied to the local store at once, but Redis
//! would otherwise come back still holding the stale entries and hand them to every other
//! instance. So the Redis half is journaled and replayed on recovery, *before* reads from
//! Redis resume. The journal is bounded; when it overflows it does not drop anything
//! silently — it remembers that it overflowed, and recovery escalates to flushing the whole
//! namespace, the only scope certain to cover what was lost.
//!
//! It also remembers the invalidations that succeeded: Redis can come back without writes it
//! had acknowledged — a Sentinel failover loses the old master's last writes, a restart from
//! an RDB snapshot loses everything since the snapshot — and then every invalidation made
//! since goes again. The memory is bounded like the journal (by operations, oldest forgotten
//! first), and it says when it has forgotten something a recovery would need: then only a
//! namespace flush is certain to cover it.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::core::Events;
use crate::model::{CacheEvent, Invalidation};

#[derive(Debug, Default)]
struct State {
    pending: VecDeque<Invalidation>,
    pending_ops: usize,
    /// When the journal last went from empty to not.
    pending_since: Option<Instant>,
    /// `pending_since` of the last [`Journal::take`], for a [`Journal::restore`].
    taken_since: Option<Instant>,
    overflowed: bool,
    /// When each was applied, and whether it stands for a write (`Cache::set`).
    recent: VecDeque<(Instant, Invalidation, bool)>,
    recent_ops: usize,
    /// When the newest invalidation dropped from `recent` was made.
    forgot_up_to: Option<Instant>,
}

/// What recovery has to replay.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub(crate) invalidations: Vec<Invalidation>,
    pub(crate) overflowed: bool,
}

/// The remembered invalidations made since some moment, for re-applying.
#[derive(Debug, Default)]
pub(crate) struct Remembered {
    /// Oldest first; an invalidation made several times appears once, at its latest place.
    pub(crate) invalidations: Vec<Invalidation>,
    /// False if an invalidation made since that moment was forgotten (the memory was full).
    pub(crate) complete: bool,
}

#[derive(Debug)]
pub(crate) struct Journal {
    capacity: usize,
    /// How long an applied invalidation is remembered at most (`None`: until the memory is
    /// full). Past the age at which recovery flushes everything it is of no more use.
    horizon: Option<Duration>,
    state: Mutex<State>,
    events: Events,
}

fn ops(inv: &Invalidation) -> usize {
    (inv.keys.len()
        + inv.tags.len()
        + inv.classes.len()
        + usize::from(inv.volatile)
        + usize::from(inv.everything))
    .max(1)
}

impl Journal {
    /// A journal of at most `capacity` pending operations, which also remembers as many
    /// applied ones for `horizon` (`None`: for as long as there is room).
    pub(crate) fn new(capacity: usize, horizon: Option<Duration>) -> Self {
        Journal {
            capacity,
            horizon,
            state: Mutex::new(State::default()),
            events: Events::default(),
        }
    }

    /// Reports an overflow to `events`.
    pub(crate) fn reporting_to(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps an invalidation Redis did not get; returns false if it overflowed.
    pub(crate) fn push(&self, inv: Invalidation) -> bool {
        let mut s = self.lock();
        let n = ops(&inv);
        if s.overflowed || s.pending_ops + n > self.capacity {
            if !s.overflowed {
                tracing::warn!(
                    capacity = self.capacity,
                    "invalidation journal full; recovery will flush the namespace"
                );
                self.events.emit(|| CacheEvent::JournalOverflowed);
            }
            s.overflowed = true;
            s.pending.clear();
            s.pending_ops = 0;
            return false;
        }
        s.pending_ops += n;
        s.pending.push_back(inv);
        s.pending_since.get_or_insert_with(Instant::now);
        true
    }

    /// Remembers an invalidation Redis did get, in case Redis loses it.
    pub(crate) fn remember(&self, inv: &Invalidation) {
        self.keep(inv, false);
    }

    /// Remembers a write Redis did get, as the invalidation of its key that undoes an older
    /// value coming back. Unlike an invalidation it is applied again only when the data is
    /// known to predate it, since it also removes the value written.
    pub(crate) fn remember_write(&self, inv: &Invalidation) {
        self.keep(inv, true);
    }

    fn keep(&self, inv: &Invalidation, write: bool) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut s = self.lock();
        s.recent_ops += ops(inv);
        s.recent.push_back((now, inv.clone(), write));
        while let Some((made, oldest, _)) = s.recent.front() {
            let full = s.recent_ops > self.capacity;
            let too_old = self.horizon.is_some_and(|h| now.duration_since(*made) > h);
            if !(full || too_old) {
                break;
            }
            let (made, n) = (*made, ops(oldest));
            s.recent.pop_front();
            s.recent_ops -= n;
            s.forgot_up_to = Some(s.forgot_up_to.map_or(made, |f| f.max(made)));
        }
    }

    /// The invalidations remembered from the last `age` and the writes from the last
    /// `writes_age`, oldest first, and whether that is all of them.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn remembered(&self, age: Duration, writes_age: Duration) -> Remembered {
        let now = Instant::now();
        let since = now.checked_sub(age);
        let writes_since = now.checked_sub(writes_age);
        let s = self.lock();
        let oldest = match (since, writes_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        let complete = match (s.forgot_up_to, oldest) {
            (None, _) => true,
            (Some(forgot), Some(oldest)) => forgot < oldest,
            (Some(_), None) => false,
        };
        let mut invalidations: Vec<Invalidation> = Vec::new();
        for (made, inv, write) in s.recent.iter().rev() {
            let from = if *write { writes_since } else { since };
            if from.is_some_and(|from| *made < from) {
                continue;
            }
            if !invalidations.contains(inv) {
                invalidations.push(inv.clone());
            }
        }
        invalidations.reverse();
        Remembered {
            invalidations,
            complete,
        }
    }

    /// Takes everything pending, for replay.
    pub(crate) fn take(&self) -> Replay {
        let mut s = self.lock();
        s.pending_ops = 0;
        s.taken_since = s.pending_since.take();
        Replay {
            invalidations: s.pending.drain(..).collect(),
            overflowed: std::mem::take(&mut s.overflowed),
        }
    }

    /// Puts back what could not be replayed (Redis failed again), ahead of newer entries.
    pub(crate) fn restore(&self, replay: Replay) {
        let mut s = self.lock();
        s.overflowed |= replay.overflowed;
        s.pending_since = match (s.pending_since, s.taken_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b).or_else(|| Some(Instant::now())),
        };
        for inv in replay.invalidations.into_iter().rev() {
            s.pending_ops += ops(&inv);
            s.pending.push_front(inv);
        }
    }

    /// How long the journal has held something, if it does.
    pub(crate) fn pending_for(&self) -> Option<Duration> {
        let s = self.lock();
        if s.pending.is_empty() && !s.overflowed {
            return None;
        }
        Some(s.pending_since.map_or(Duration::ZERO, |t| t.elapsed()))
    }

    /// Pending operations (keys, tags, classes).
    pub(crate) fn len(&self) -> usize {
        self.lock().pending_ops
    }

    /// Whether anything waits for Redis: invalidations, or an overflow's namespace flush.
    pub(crate) fn has_pending(&self) -> bool {
        let s = self.lock();
        !s.pending.is_empty() || s.overflowed
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    fn key(n: usize) -> Invalidation {
        Invalidation::new().key(Key::builder("k:").value(n).build())
    }

    #[test]
    fn overflow_is_remembered_not_dropped_silently() {
        let j = Journal::new(3, None);
        assert!(j.push(key(1)));
        assert!(j.push(key(2)));
        assert!(j.push(key(3)));
        assert_eq!(j.len(), 3);
        assert!(!j.push(key(4)));
        let replay = j.take();
        assert!(replay.overflowed);
        assert_eq!(j.len(), 0);
        assert!(!j.overflowed());
    }

    #[test]
    fn restore_keeps_order() {
        let j = Journal::new(10, None);
        j.push(key(1));
        let replay = j.take();
        j.push(key(2));
        j.restore(replay);
        let all = j.take().invalidations;
        assert_eq!(all, vec![key(1), key(2)]);
    }

    #[test]
    fn remembers_the_recent_ones_once_each_in_order() {
        let j = Journal::new(10, None);
        for n in [1, 2, 1, 3] {
            j.remember(&key(n));
        }
        let r = j.remembered(Duration::from_secs(60), Duration::from_secs(60));
        assert!(r.complete);
        assert_eq!(r.invalidations, vec![key(2), key(1), key(3)]);
        assert!(j
            .remembered(Duration::ZERO, Duration::ZERO)
            .invalidations
            .is_empty());
    }

    #[test]
    fn a_full_memory_says_what_it_cannot_cover() {
        let j = Journal::new(2, None);
        j.remember(&key(1));
        std::thread::sleep(Duration::from_millis(20));
        j.remember(&key(2));
        j.remember(&key(3));
        // key(1) was forgotten 20 ms before the others were made: a window that reaches
        // back to it is incomplete, one that does not is complete.
        let all = j.remembered(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!all.complete);
        assert_eq!(all.invalidations, vec![key(2), key(3)]);
        assert!(
            j.remembered(Duration::from_millis(10), Duration::from_millis(10))
                .complete
        );
    }

    #[test]
    fn past_the_horizon_it_is_forgotten() {
        let j = Journal::new(10, Some(Duration::from_millis(10)));
        j.remember(&key(1));
        std::thread::sleep(Duration::from_millis(20));
        j.remember(&key(2));
        let r = j.remembered(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!r.complete);
        assert_eq!(r.invalidations, vec![key(2)]);
    }

    #[test]
    fn a_memory_of_nothing_remembers_nothing() {
        let j = Journal::new(0, None);
        j.remember(&key(1));
        assert!(j
            .remembered(Duration::from_secs(60), Duration::ZERO)
            .invalidations
            .is_empty());
    }

    #[test]
    fn writes_go_again_only_as_far_back_as_asked_for_them() {
        let j = Journal::new(10, None);
        j.remember_write(&key(1));
        j.remember(&key(2));
        let minute = Duration::from_secs(60);
        assert_eq!(
            j.remembered(minute, minute).invalidations,
            vec![key(1), key(2)]
        );
        assert_eq!(
            j.remembered(minute, Duration::ZERO).invalidations,
            vec![key(2)]
        );
    }
}

//! The invalidation journal: what could not reach Redis, kept until it can.
//!
//! An invalidation made while Redis is down is applied to the local store at once, but Redis
//! would otherwise come back still holding the stale entries and hand them to every other
//! instance. So the Redis half is journaled and replayed on recovery, *before* reads from
//! Redis resume. The journal is bounded; when it overflows it does not drop anything
//! silently — it remembers that it overflowed, and recovery escalates to flushing the whole
//! namespace, the only scope certain to cover what was lost.
//!
//! It also remembers the invalidations of the last few seconds even when they succeeded:
//! after a Sentinel failover, writes acknowledged by the old master may be lost, so those
//! are re-applied to the new master.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::model::Invalidation;

#[derive(Debug, Default)]
struct State {
    pending: VecDeque<Invalidation>,
    pending_ops: usize,
    overflowed: bool,
    recent: VecDeque<(Instant, Invalidation)>,
}

/// What recovery has to replay.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub(crate) invalidations: Vec<Invalidation>,
    pub(crate) overflowed: bool,
}

#[derive(Debug)]
pub(crate) struct Journal {
    capacity: usize,
    recent_window: Duration,
    state: Mutex<State>,
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
    pub(crate) fn new(capacity: usize, recent_window: Duration) -> Self {
        Journal {
            capacity,
            recent_window,
            state: Mutex::new(State::default()),
        }
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
            }
            s.overflowed = true;
            s.pending.clear();
            s.pending_ops = 0;
            return false;
        }
        s.pending_ops += n;
        s.pending.push_back(inv);
        true
    }

    /// Remembers an invalidation Redis did get, for the failover replay window.
    pub(crate) fn remember(&self, inv: &Invalidation) {
        if self.recent_window.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut s = self.lock();
        while s
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.recent_window)
        {
            s.recent.pop_front();
        }
        s.recent.push_back((now, inv.clone()));
    }

    /// The invalidations of the replay window, oldest first.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn recent(&self) -> Vec<Invalidation> {
        let now = Instant::now();
        self.lock()
            .recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= self.recent_window)
            .map(|(_, inv)| inv.clone())
            .collect()
    }

    /// Takes everything pending, for replay.
    pub(crate) fn take(&self) -> Replay {
        let mut s = self.lock();
        s.pending_ops = 0;
        Replay {
            invalidations: s.pending.drain(..).collect(),
            overflowed: std::mem::take(&mut s.overflowed),
        }
    }

    /// Puts back what could not be replayed (Redis failed again), ahead of newer entries.
    pub(crate) fn restore(&self, replay: Replay) {
        let mut s = self.lock();
        s.overflowed |= replay.overflowed;
        for inv in replay.invalidations.into_iter().rev() {
            s.pending_ops += ops(&inv);
            s.pending.push_front(inv);
        }
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
        let j = Journal::new(3, Duration::from_secs(30));
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
        let j = Journal::new(10, Duration::ZERO);
        j.push(key(1));
        let replay = j.take();
        j.push(key(2));
        j.restore(replay);
        let all = j.take().invalidations;
        assert_eq!(all, vec![key(1), key(2)]);
    }
}

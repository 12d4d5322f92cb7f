//! The flush generations this instance last read from Redis, which a load's lease carries.
//!
//! A load's write is checked against the generations of its class and of the namespace as
//! they stood *before* the load read the origin: a flush moves its generation before it
//! deletes anything, so a load that read the origin before a flush and wrote after the
//! flush's scan sees the move when it reads them back after its write. Reading them with
//! every entry would add commands to every read of Redis; instead each instance keeps what
//! its writes last read back. Generations only grow, so a value kept here is never ahead of
//! Redis, and any flush after it differs from it. A value behind Redis only costs a false
//! alarm: that write is invalidated, and the newer value is kept for the next loads. Redis
//! back from a snapshot, or empty, can hold generations behind what is kept here, so after
//! an outage they are read again before they are relied on.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::model::ClassId;
use crate::redis::Flushes;

/// Not read yet.
const UNKNOWN: i64 = -1;
/// Read, and absent (a flush's first move makes it 1).
const ABSENT: i64 = 0;

pub(crate) struct KnownFlushes {
    namespace: AtomicI64,
    /// By class id.
    classes: Box<[AtomicI64]>,
}

fn encode(generation: Option<i64>) -> i64 {
    generation.map_or(ABSENT, |g| g.max(ABSENT))
}

fn decode(stored: i64) -> Option<i64> {
    (stored != ABSENT).then_some(stored)
}

impl KnownFlushes {
    pub(crate) fn new(classes: usize) -> Self {
        KnownFlushes {
            namespace: AtomicI64::new(UNKNOWN),
            classes: (0..classes).map(|_| AtomicI64::new(UNKNOWN)).collect(),
        }
    }

    /// The generations last read for `class`, unless they were never read.
    pub(crate) fn get(&self, class: ClassId) -> Option<Flushes> {
        let class = self
            .classes
            .get(usize::from(class))?
            .load(Ordering::Acquire);
        let namespace = self.namespace.load(Ordering::Acquire);
        (class != UNKNOWN && namespace != UNKNOWN).then(|| Flushes {
            class: decode(class),
            namespace: decode(namespace),
        })
    }

    /// Keeps what a read of Redis answered for `class`.
    pub(crate) fn learn(&self, class: ClassId, flushes: Flushes) {
        self.learn_class(class, flushes.class);
        self.learn_namespace(flushes.namespace);
    }

    /// Keeps `class`'s generation as this instance moved it, or as read.
    pub(crate) fn learn_class(&self, class: ClassId, generation: Option<i64>) {
        if let Some(known) = self.classes.get(usize::from(class)) {
            known.store(encode(generation), Ordering::Release);
        }
    }

    /// Keeps the namespace's generation as this instance moved it, or as read.
    pub(crate) fn learn_namespace(&self, generation: Option<i64>) {
        self.namespace.store(encode(generation), Ordering::Release);
    }

    /// `class` was flushed: its generation has moved, so the next read of Redis reads it
    /// again rather than every write after it raising a false alarm.
    pub(crate) fn forget_class(&self, class: ClassId) {
        if let Some(known) = self.classes.get(usize::from(class)) {
            known.store(UNKNOWN, Ordering::Release);
        }
    }

    /// The namespace was flushed: see [`forget_class`](Self::forget_class).
    pub(crate) fn forget_namespace(&self) {
        self.namespace.store(UNKNOWN, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_learnt_then_what_was_read() {
        let known = KnownFlushes::new(2);
        assert_eq!(known.get(1), None);
        let read = Flushes {
            class: None,
            namespace: Some(3),
        };
        known.learn(1, read);
        assert_eq!(known.get(1), Some(read));
        assert_eq!(known.get(0), None, "another class is still unknown");
        assert_eq!(known.get(7), None, "no such class");
        known.forget_namespace();
        assert_eq!(known.get(1), None, "read again after a flush");
        known.learn_namespace(Some(4));
        assert_eq!(known.get(1).map(|f| f.namespace), Some(Some(4)));
        known.forget_class(1);
        assert_eq!(known.get(1), None);
    }
}

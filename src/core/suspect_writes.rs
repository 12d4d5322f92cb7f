//! Writes to Redis that may have left a stale value behind, waiting to be invalidated.
//!
//! A load's write can be stale in two ways its lease cannot refuse on the spot: one of the
//! entry's tags was invalidated between the read and the write (the invalidation could not
//! see an entry not yet in the tag's set), or the write failed in a way that leaves its
//! outcome unknown (a deadline: it may still land). Such a key must be invalidated like any
//! other — in Redis, locally, on the other instances, journaled if Redis does not answer —
//! and that is the coherence layer's job, so the store only reports it here; a task there
//! drains the queue.

use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::key::Key;
use crate::store::LocalKey;

/// Keys reported and not yet taken; beyond this, reports are dropped with a warning (the
/// entry then lives until its TTL).
const CAPACITY: usize = 4096;

pub(crate) struct SuspectWrites {
    tx: mpsc::Sender<Key>,
    rx: Mutex<Option<mpsc::Receiver<Key>>>,
}

impl Default for SuspectWrites {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        SuspectWrites {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl SuspectWrites {
    /// `key`'s entry in Redis may be stale.
    pub(crate) fn report(&self, key: &LocalKey) {
        if self.tx.try_send(key.key.clone()).is_err() {
            tracing::warn!(key = %key.key, "too many suspect writes queued; this one lives until its TTL");
        }
    }

    /// The queue's receiving end, for the one task that drains it.
    pub(crate) fn take(&self) -> Option<mpsc::Receiver<Key>> {
        self.rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

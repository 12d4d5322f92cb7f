//! Tags due for a trim of their set in Redis (see `trim` in the Redis module): every
//! [`EVERY`]-th tagged write of this instance names its tags here, and a task in the
//! coherence layer drains the queue, off the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::key::Key;

/// One trim per this many tagged writes. With [`SAMPLE`] members checked per trim, dead
/// members stay under about `EVERY / SAMPLE` of a set that gains one per write.
const EVERY: u64 = 16;
/// Members checked per trim.
pub(crate) const SAMPLE: usize = 64;
/// Trims queued and not yet run; more are dropped (the next one comes soon enough).
const CAPACITY: usize = 256;

pub(crate) struct TagTrims {
    writes: AtomicU64,
    tx: mpsc::Sender<Key>,
    rx: Mutex<Option<mpsc::Receiver<Key>>>,
}

impl Default for TagTrims {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        TagTrims {
            writes: AtomicU64::new(0),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl TagTrims {
    /// An entry with `tags` was written to Redis.
    pub(crate) fn wrote(&self, tags: &[Key]) {
        for tag in tags {
            if self.writes.fetch_add(1, Ordering::Relaxed) % EVERY == EVERY - 1 {
                // A full queue drops this trim: the tag's next writes ask again.
                let _ = self.tx.try_send(tag.clone());
            }
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

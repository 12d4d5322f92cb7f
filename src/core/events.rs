//! The broadcast behind [`Cache::events`](crate::Cache::events).

use tokio::sync::broadcast;

use crate::model::CacheEvent;

/// How many events a slow receiver may fall behind before it loses the oldest.
const CAPACITY: usize = 256;

/// The sending half, shared by whatever reports events (the breaker, the monitor, the
/// channel's task, the journal's owner).
#[derive(Clone, Debug)]
pub(crate) struct Events(broadcast::Sender<CacheEvent>);

impl Default for Events {
    fn default() -> Self {
        Events(broadcast::channel(CAPACITY).0)
    }
}

impl Events {
    /// Tells every receiver; nothing (not even a clone) when nobody listens.
    pub(crate) fn emit(&self, event: impl FnOnce() -> CacheEvent) {
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(event());
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<CacheEvent> {
        self.0.subscribe()
    }
}

//! Single-flight: concurrent misses of one key in one process run one load.
//!
//! The first caller of a cold key becomes the *leader* and loads; the others wait on a watch
//! channel for its result. The leader's guard publishes the value, or a failure, and removes
//! the flight. If the leader is cancelled (its future dropped mid-load), the channel closes
//! without a result and the waiters elect a new leader among themselves, so nobody is left
//! waiting on a load that will never finish. When the leader's loader fails, each waiter runs
//! its own load and so sees its own error: an error type need not be `Clone`.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::cache::Origin;
use crate::local_store::LocalKey;

/// A finished load's value, type-erased.
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
pub(crate) enum State {
    Pending,
    Done(Shared, Origin),
    Failed,
}

/// What a waiter learns.
pub(crate) enum Outcome {
    Done(Shared, Origin),
    Failed,
    Cancelled,
}

/// The map of loads in progress.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<LocalKey, watch::Receiver<State>>>,
}

/// Either lead the load of a key or wait for its leader.
pub(crate) enum Join<'a> {
    Leader(Leader<'a>),
    Waiter(watch::Receiver<State>),
}

impl Flights {
    pub(crate) fn join(&self, key: &LocalKey) -> Join<'_> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = map.get(key) {
            return Join::Waiter(rx.clone());
        }
        let (tx, rx) = watch::channel(State::Pending);
        map.insert(key.clone(), rx);
        Join::Leader(Leader {
            flights: self,
            key: key.clone(),
            tx,
        })
    }
}

/// Held by the leader; dropping it without [`Leader::finish`] counts as a cancellation.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: LocalKey,
    tx: watch::Sender<State>,
}

impl Leader<'_> {
    pub(crate) fn succeed(self, value: Shared, origin: Origin) {
        self.tx.send_replace(State::Done(value, origin));
    }

    pub(crate) fn fail(self) {
        self.tx.send_replace(State::Failed);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        // Publish first (above), remove second: a caller arriving in between joins a finished
        // flight and reads its result instead of starting another load.
        let mut map = self
            .flights
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

/// Waits for the leader of a flight.
pub(crate) async fn wait(mut rx: watch::Receiver<State>) -> Outcome {
    loop {
        match &*rx.borrow_and_update() {
            State::Done(v, origin) => return Outcome::Done(Arc::clone(v), *origin),
            State::Failed => return Outcome::Failed,
            State::Pending => {}
        }
        if rx.changed().await.is_err() {
            // The leader is gone; it may still have published just before leaving.
            return match &*rx.borrow() {
                State::Done(v, origin) => Outcome::Done(Arc::clone(v), *origin),
                State::Failed => Outcome::Failed,
                State::Pending => Outcome::Cancelled,
            };
        }
    }
}

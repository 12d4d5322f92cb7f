//! The limiter of request `no-cache` refreshes: one [`Slot`] per key refreshed lately (see
//! `refresh`), kept in a small moka cache with an expiry, bounded in entries, so that the
//! limiter cannot itself be made to grow. A slot evicted early only allows one more refresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache as Moka;
use moka::Expiry;
use tokio::sync::OnceCell;

use crate::Key;

/// The default interval between two refreshes of one key by `no-cache` requests.
pub const DEFAULT_REQUEST_NO_CACHE_INTERVAL: Duration = Duration::from_secs(1);

/// How many keys the limiter remembers at most (a slot is a few dozen bytes).
const REMEMBERED_KEYS: u64 = 10_000;

/// How long a slot whose refresh has not finished is kept: past it, a handler that still has
/// not answered no longer holds back the refreshes of its key.
const PENDING_FOR: Duration = Duration::from_secs(60);

/// One key's refresh: set once it is done, to whether it stored a response (which those
/// who joined it read from the local store: the slot holds no body).
#[derive(Default)]
pub(super) struct Slot {
    pub(super) done: OnceCell<bool>,
}

/// What a request's `no-cache` leads to.
pub(super) enum Refresh {
    /// The request did not ask (or the layer does not honour it).
    No,
    /// The key was refreshed less than the interval ago: answered as any request.
    Limited,
    /// Leads or joins the key's refresh.
    Join(Arc<Slot>),
}

/// The refreshes of one layer: a slot per key refreshed lately.
pub(crate) struct Refreshes {
    slots: Moka<Key, Arc<Slot>, foldhash::fast::RandomState>,
}

struct SlotExpiry {
    interval: Duration,
}

impl SlotExpiry {
    fn life(&self, slot: &Slot) -> Duration {
        if slot.done.initialized() {
            self.interval
        } else {
            PENDING_FOR.max(self.interval)
        }
    }
}

impl Expiry<Key, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &Key, slot: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(self.life(slot))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        slot: &Arc<Slot>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.life(slot))
    }
}

impl Refreshes {
    pub(super) fn new(interval: Duration) -> Self {
        Refreshes {
            slots: Moka::builder()
                .max_capacity(REMEMBERED_KEYS)
                .expire_after(SlotExpiry { interval })
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// What a `no-cache` request of `key` does: join the key's refresh, or none if one
    /// finished less than the interval ago.
    pub(super) fn admit(&self, key: &Key) -> Refresh {
        let slot = self
            .slots
            .get_with_by_ref(key, || Arc::new(Slot::default()));
        if slot.done.initialized() {
            tracing::trace!(%key, "request no-cache inside the refresh interval; not refreshing");
            Refresh::Limited
        } else {
            Refresh::Join(slot)
        }
    }

    /// The refresh in `slot` is done: the interval starts now. Written again only if it is
    /// still the key's slot, so that a newer one (after this one was evicted) is kept.
    pub(super) fn finished(&self, key: &Key, slot: &Arc<Slot>) {
        self.slots
            .entry_by_ref(key)
            .and_compute_with(|current| match current {
                Some(entry) if Arc::ptr_eq(entry.value(), slot) => Op::Put(Arc::clone(slot)),
                _ => Op::Nop,
            });
    }
}

//! Client-side tracking (feature `client-tracking`): Redis reports every change to the
//! namespace's entry keys, and this instance drops its local copies of them.
//!
//! The backplane only carries what stormcache instances do. A `DEL` from redis-cli, another
//! service writing an entry's key, a key that expires or is evicted: none of them is
//! published, so every instance keeps serving its local copy until its TTL. Redis's
//! server-assisted client-side caching sees them all: with `CLIENT TRACKING ON BCAST PREFIX
//! ns:class:` on one connection per master, each change under a class's prefix is pushed
//! to this instance, which removes the local entry of that class and key. Internal keys
//! (`ns:~…`: tag sets, locks, heartbeats, the invalidation log) are outside every prefix,
//! so their constant writes are never reported.
//!
//! **Its own writes.** They are reported too: the writes go through the store's
//! connection, the reports come on the tracker's, and Redis's NOLOOP only spares the
//! connection that tracks. A report cannot be told apart from another writer's change to
//! the same key made right after (Redis merges the keys reported in one event-loop turn), so
//! none is ignored: an entry this instance just wrote to Redis may lose its local copy and
//! be read back from Redis once (one GET, never an origin load). Serving a stale copy is
//! the failure that matters; a miss is the price.
//!
//! **Ordering with loads.** Each report is applied like a peer's key invalidation: loads
//! in progress on the key's shard are fenced off (a load that read Redis before the change
//! and stores after the report would otherwise bring the old value back), and stores past
//! their check land before the entry is removed again.
//!
//! **Gaps.** Tracking lives on connections: a server forgets it when a connection drops,
//! and changes made while it was off are never reported. So, as for the backplane, every
//! local entry becomes suspect from the first sign of trouble (a connection error, a
//! connection found not tracking, reports lost to a slow reader, a Sentinel master switch,
//! a check that fails)
//! — revalidated against Redis on its next read instead of being served — until every
//! master is tracking again; then loads in progress are fenced off and entries written
//! from then on are trusted. Entries from before stay suspect until they are rewritten:
//! there is no log of what was missed. The check (`CLIENT TRACKINGINFO` on every master,
//! arming the connections that are not tracking) runs after every reconnect and every
//! probe interval, so a connection replaced without an event is also caught.
//!
//! Not seen: FLUSHALL/FLUSHDB (Redis reports them with an empty payload, which fred drops)
//! and changes to tags or classes as such (the backplane carries those).

#[cfg(feature = "client-tracking")]
mod task;

#[cfg(feature = "client-tracking")]
pub(crate) use self::task::spawn;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::model::TrackingStatus;

/// Client-side tracking's state, shared by the task that runs it and the cache handle.
pub(crate) struct Tracking {
    /// Every master tracks this instance's connection since the last gap.
    armed: AtomicBool,
    keys: AtomicU64,
    rearms: AtomicU64,
    /// How often every master is asked whether it still tracks.
    #[cfg_attr(not(feature = "client-tracking"), allow(dead_code))]
    check_interval: Duration,
    /// The deadline of one tracking command.
    #[cfg_attr(not(feature = "client-tracking"), allow(dead_code))]
    command_timeout: Duration,
    /// Asks the task for new connections (see [`Tracking::restart`]).
    #[cfg_attr(not(feature = "client-tracking"), allow(dead_code))]
    restart: tokio::sync::Notify,
}

impl Tracking {
    pub(crate) fn new(check_interval: Duration, command_timeout: Duration) -> Self {
        Tracking {
            armed: AtomicBool::new(false),
            keys: AtomicU64::new(0),
            rearms: AtomicU64::new(0),
            check_interval,
            command_timeout,
            restart: tokio::sync::Notify::new(),
        }
    }

    /// Whether every master reports changes to this instance.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    pub(crate) fn status(&self) -> TrackingStatus {
        TrackingStatus {
            armed: self.is_armed(),
            keys: self.keys.load(Ordering::Relaxed),
            rearms: self.rearms.load(Ordering::Relaxed),
        }
    }

    /// Has the task reconnect, as after a Sentinel master switch: its connection may be on
    /// the demoted master, which no longer sees the writes.
    pub(crate) fn restart(&self) {
        // The task opens the gap (and reports it) when it takes the request.
        self.restart.notify_one();
    }
}

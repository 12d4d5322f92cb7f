//! Everything that talks to Redis, and the only module that names fred.
//!
//! - `store`: the connection the cache reads, writes and publishes through, with a deadline on
//!   every command and a bound on commands in flight;
//! - `bulk_delete`: tag invalidation and pattern flushes in small commands;
//! - `lock`: the stampede lock; `heartbeat`: how old the data Redis came back with is;
//! - `pubsub`: the invalidation channel's subscriber; `sentinel`: master switches;
//! - `trim`: removing expired entries from a tag's set;
//! - `tracking` (feature `client-tracking`): the client-side tracking connection;
//! - `error`: fred's errors as the crate's, keeping their kind.
//!
//! The `redis` feature is switched here and nowhere else. Without it, `disabled` provides the
//! same types, uninhabited: no value of them can exist, so every method body is
//! `match *self {}`, the compiler proves that no Redis path runs, and the layers above need
//! no `cfg` of their own.

mod settings;

pub(crate) use self::settings::RedisSettings;

#[cfg(feature = "redis")]
mod bulk_delete;
#[cfg(feature = "redis")]
mod error;
#[cfg(feature = "redis")]
mod heartbeat;
#[cfg(feature = "redis")]
mod lease;
#[cfg(feature = "redis")]
mod lock;
#[cfg(feature = "redis")]
mod pubsub;
#[cfg(feature = "redis")]
mod sentinel;
#[cfg(feature = "redis")]
mod store;
#[cfg(feature = "client-tracking")]
mod tracking;
#[cfg(feature = "redis")]
mod trim;

#[cfg(feature = "redis")]
pub(crate) use self::{
    lock::LockGuard,
    pubsub::{Subscriber, SubscriberEvent},
    sentinel::master_switches,
    store::{ConnectionEvent, RedisStore},
};

#[cfg(feature = "client-tracking")]
pub(crate) use self::tracking::{Armed, Tracker, TrackerEvent};

#[cfg(not(feature = "redis"))]
mod disabled;

#[cfg(not(feature = "redis"))]
pub(crate) use self::disabled::{
    master_switches, ConnectionEvent, LockGuard, RedisStore, Subscriber, SubscriberEvent,
};

/// What a deletion (keys, a tag, a pattern) removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Keys removed from Redis.
    pub(crate) keys: u64,
}

/// How long tombstones and tag generations live (see `lease`); a load's write is only
/// attempted within half of it.
pub(crate) const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// What a load's read found at an entry's key: its write is made only if it is still so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing.
    Absent,
    /// These exact bytes: a tombstone, or a value no longer fresh or not ours.
    Bytes(bytes::Bytes),
}

/// What a load's read of an entry saw, which its write is conditioned on (see `lease`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Leased<'a> {
    /// What the entry's key held.
    pub(crate) seen: &'a Seen,
    /// The generations of the entry's tags, in order.
    pub(crate) generations: &'a [Option<i64>],
    /// The entry's class, and the generations of its flushes and the namespace's.
    pub(crate) class: &'a str,
    pub(crate) flushes: Flushes,
}

/// What the heartbeats in Redis say after an outage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Heartbeats {
    /// The age of the oldest shared heartbeat: how old the data is (`None`: Redis came back
    /// empty).
    pub(crate) data_age: Option<std::time::Duration>,
    /// The age of this instance's own oldest heartbeat: every invalidation it made since may
    /// be missing. `None` if the data predates this instance's first heartbeat, so that any
    /// of them may be; `Some(ZERO)` if Redis came back empty.
    pub(crate) own_age: Option<std::time::Duration>,
}

/// What a conditional write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// Stored.
    Stored,
    /// Not stored: the key changed since it was read, or (where the write checks them
    /// itself) one of its tags was invalidated, or its class or the namespace flushed.
    Refused,
    /// Stored, but one of its tags was invalidated, or its class or the namespace flushed,
    /// since it was read (found after the write, on a Cluster): the caller must invalidate
    /// it.
    Moved,
}

/// The generations of an entry's class and of the whole namespace (`None`: never flushed,
/// or the key was lost with the data). A flush moves its generation before it deletes
/// anything, so that a load that read before the flush and wrote after its scan learns of
/// it (see `lease`). They never expire: a generation that came back to a value a load had
/// seen would hide a flush.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flushes {
    pub(crate) class: Option<i64>,
    pub(crate) namespace: Option<i64>,
}

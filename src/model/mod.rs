//! Plain data: what callers configure and what the cache reports. No I/O, no async.
//!
//! Every layer above names these types, so they depend on nothing but [`key`](crate::key)
//! and the error type; the behaviour that acts on them lives in the layers that own it.

mod class;
mod event;
mod fetched;
mod invalidation;
mod loaded;
mod nonce;
mod options;
mod policy;
mod status;

pub use self::class::{Class, DEFAULT_CLASS};
pub(crate) use self::class::{ClassId, Classes};
pub use self::event::CacheEvent;
pub use self::fetched::{Cacheable, Fetched, Origin};
pub use self::invalidation::{Invalidation, InvalidationReport, InvalidationRule, RedisOutcome};
pub(crate) use self::loaded::Adjust;
pub use self::loaded::Loaded;
pub(crate) use self::nonce::nonce;
pub use self::options::{EntryOptions, TtlJitter};
pub(crate) use self::options::{Lifetime, StaleNow, ValueGrace, LONGEST};
pub use self::policy::{FlushScope, OutagePolicy, Tier};
pub(crate) use self::status::unix_ms;
pub use self::status::{
    BackplaneStatus, Counters, HealthState, OutageRecord, Status, TrackingStatus,
};

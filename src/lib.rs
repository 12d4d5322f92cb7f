//! # stormcache
//!
//! Read-through caching for async Rust services that keeps answering while Redis
//! misbehaves: a local L1 ([moka]) in front of Redis ([fred]: standalone, Sentinel or
//! Cluster, chosen by URL), with a local fallback when Redis is down or slow, tag and class
//! invalidation, and declarative invalidation rules.
//!
//! ```
//! use std::time::Duration;
//! use stormcache::{Cache, Class, EntryOptions, Key};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stormcache::Error> {
//! let cache = Cache::builder("accounts")
//!     .redis_url(std::env::var("REDIS_URL").ok()) // no URL: local store only
//!     .class(Class::new("permissions").ttl(Duration::from_secs(900)).volatile())
//!     .build()?;
//!
//! let user = "alice";
//! let groups: Vec<String> = cache
//!     .get_or_load(
//!         Key::builder("user:groups:").value(user).build(),
//!         &EntryOptions::new()
//!             .class("permissions")
//!             .tag(Key::builder("user:").value(user).build()),
//!         || async { vec!["staff".to_owned()] }, // the origin, e.g. a database query
//!     )
//!     .await;
//! assert_eq!(groups, ["staff"]);
//!
//! // Group membership changed: everything tagged with the user goes, in L1 and Redis.
//! cache.invalidate_tag(&Key::builder("user:").value(user).build()).await;
//! # Ok(()) }
//! ```
//!
//! ## Where things are
//! - [`key`](mod@key): keys, templates and the escaping of values spliced into them;
//! - [`Codec`] and the envelope: how values are stored in Redis;
//! - the local store and the Redis store: the two levels, in files named after them;
//! - [`Cache`]: the read-through path; [`Invalidation`]: what a mutation makes stale.
//!
//! ## Feature flags
//! - `redis` (default): Redis as the shared L2, through fred;
//! - `axum` (default): tower layers and the admin router;
//! - `macros` (default): `#[cached]`, `#[invalidate]` and `key!`;
//! - `json`: the JSON codec;
//! - `tls`: `rediss://` through rustls.
//!
//! [moka]: https://docs.rs/moka
//! [fred]: https://docs.rs/fred
#![warn(missing_docs)]
#![deny(unsafe_code)]

mod builder;
mod cache;
mod class;
mod codec;
mod envelope;
mod error;
mod global;
mod health_monitor;
#[cfg(feature = "redis")]
mod heartbeat;
mod invalidation;
mod journal;
pub mod key;
mod local_store;
mod options;
mod outage_policy;
#[cfg_attr(not(feature = "redis"), path = "redis_disabled.rs")]
mod redis_store;
#[cfg_attr(not(feature = "redis"), path = "sentinel_watch_disabled.rs")]
mod sentinel_watch;
mod single_flight;
mod stats;
mod status;

#[cfg(feature = "macros")]
#[doc(hidden)]
pub mod __private;
#[cfg(feature = "axum")]
pub mod admin;
#[cfg(feature = "axum")]
pub mod layer;

pub use builder::CacheBuilder;
pub use cache::{Cache, Cacheable, Fetched, Origin};
pub use class::{Class, DEFAULT_CLASS};
pub use codec::Codec;
pub use error::Error;
pub use global::{global, install};
pub use health_monitor::{HealthState, OutageRecord};
pub use invalidation::{Invalidation, InvalidationReport, InvalidationRule, RedisOutcome};
pub use key::{Key, KeyBuilder, KeyTemplate};
pub use local_store::LocalCapacity;
pub use options::EntryOptions;
pub use outage_policy::{FlushScope, OutagePolicy, Tier};
pub use stats::Counters;
pub use status::Status;
#[cfg(feature = "macros")]
pub use stormcache_macros::{cached, invalidate, key, InvalidationRule};

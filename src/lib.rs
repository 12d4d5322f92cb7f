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
//! - [`Cache`] and [`CacheBuilder`]: the handle every read, write and invalidation goes
//!   through;
//! - [`key`](mod@key): keys, templates and the escaping of values spliced into them;
//! - [`EntryOptions`], [`Class`], [`Invalidation`], [`OutagePolicy`], [`Status`]: the data you
//!   configure a cache with and read back from it;
//! - [`Codec`] and [`MessagePack`] (the default): how values are encoded in Redis, and the
//!   trait for your own codec;
//! - [`layer`] and [`admin`] (feature `axum`): tower layers for axum routers, and the admin
//!   router for invalidating by hand;
//! - [`cached`], [`invalidate`] and [`key!`] (feature `macros`): the same on service
//!   functions.
//!
//! ## Multi-instance coherence
//! Every replica has its own local store, so an invalidation must reach all of them:
//!
//! - **Backplane** (on by default with Redis, [`CacheBuilder::backplane`]): each invalidation
//!   that reaches Redis — keys, tags, classes, flushes — is published on the Redis channel
//!   `<namespace>:~inv` and applied by every other instance to its local store. An instance
//!   skips its own messages.
//! - **Gaps**: pub/sub loses what is published while a subscriber is away, so each instance
//!   pings itself over the channel. From the first sign of a gap (connection lost, ping not
//!   echoed, Redis down) until an echo on a fresh subscription, local entries are *suspect*:
//!   they are revalidated against Redis on their next read instead of being served — except
//!   while Redis is down, when the local store is the fallback. [`Cache::coherent`] says
//!   whether the channel is confirmed.
//! - **After a gap**: if only the channel failed, every entry written before the gap ended
//!   stays suspect, and is revalidated against Redis on its next read. If Redis itself was
//!   down, the **outage tier policy** decides for the local store as for Redis (nothing
//!   under the first tier, then the volatile classes, then everything), and the rest is
//!   trusted again.
//! - **Writes made outside stormcache** (feature `client-tracking`,
//!   `CacheBuilder::client_tracking`): Redis's client-side tracking reports every change to
//!   the namespace's entries — a `DEL` from redis-cli, another service's write, an expiry —
//!   and the local copies are dropped. The backplane stays for tags, classes, flushes and
//!   its own gap detection; a tracking connection that drops is a gap of the same kind.
//! - **Distributed stampede protection** ([`EntryOptions::distributed_lock`]): one load per
//!   key across all instances; a dead lock holder blocks the others for the lock's TTL at
//!   most.
//! - **Eager refresh** ([`EntryOptions::eager_refresh`], [`Cache::fetch_refreshing`]): hot
//!   keys are reloaded in the background before they expire.
//!
//! ## Feature flags
//! - `redis` (default): Redis as the shared L2, through fred;
//! - `axum` (default): tower layers and the admin router;
//! - `macros` (default): `#[cached]`, `#[invalidate]` and `key!`;
//! - `json`: the JSON codec ([`Json`]);
//! - `client-tracking`: Redis client-side tracking, so that writes made outside stormcache
//!   and expiries in Redis drop local copies;
//! - `compression`: LZ4 compression of large values in Redis
//!   (`CacheBuilder::compress_above`);
//! - `tls`: `rediss://` through rustls.
//!
//! [moka]: https://docs.rs/moka
//! [fred]: https://docs.rs/fred
#![warn(missing_docs)]
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without Redis the stand-in types in `redis` are uninhabited, so the compiler proves every
// Redis path unreachable and says so at each of them; the build with Redis is the one that
// checks for dead code.
#![cfg_attr(
    not(feature = "redis"),
    allow(dead_code, unreachable_code, unused_variables, unused_mut)
)]

// The layers, lowest first; each names only those below it.
mod cache;
mod coherence;
mod core;
pub mod key;
mod model;
mod redis;
mod store;

#[cfg(feature = "macros")]
#[doc(hidden)]
pub mod __private;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod admin;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod layer;

pub use crate::cache::{adapt, global, install, Cache, CacheBuilder};
pub use crate::error::{Error, LoadError, LoadTimeout, RedisErrorKind};
pub use crate::key::{Key, KeyBuilder, KeyTemplate};
pub use crate::model::{
    BackplaneStatus, CacheEvent, Cacheable, Class, Counters, EntryOptions, Fetched, FlushScope,
    HealthState, Invalidation, InvalidationReport, InvalidationRule, Loaded, Origin, OutagePolicy,
    OutageRecord, RedisOutcome, Status, Tier, TrackingStatus, TtlJitter, DEFAULT_CLASS,
};
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use crate::store::Json;
pub use crate::store::{Codec, CodecExt, Decoder, Encodable, LocalCapacity, MessagePack};
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use stormcache_macros::{cached, invalidate, key, InvalidationRule};

mod error;

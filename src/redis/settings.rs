//! How stormcache talks to Redis, as the builder configures it.
//!
//! Both the Redis store and its stand-in without the `redis` feature take these settings,
//! so the builder fills them the same way whichever is compiled.

use std::time::Duration;

/// How stormcache talks to Redis: deadlines, reconnection and concurrency.
///
/// Set through [`CacheBuilder`](crate::CacheBuilder); the defaults suit a service whose Redis
/// is on the same network.
#[derive(Clone, Debug)]
// Without the `redis` feature the settings are accepted and ignored.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct RedisSettings {
    pub(crate) url: String,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_delay: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) maintenance_timeout: Duration,
    pub(crate) scan_batch: u32,
}

//! Cache builders shared by the tests: the classes most tests cache into, and the timings of
//! the tests that run a [`Cache`] against real Redis.

use std::time::{Duration, Instant};

use stormcache::{Cache, CacheBuilder, Class};

/// Adds the two classes the tests (and the examples) cache into: `permissions` (15 min,
/// volatile, i.e. flushed first in an outage) and `resources` (1 h).
pub fn with_permissions_and_resources(builder: CacheBuilder) -> CacheBuilder {
    builder
        .class(
            Class::new("permissions")
                .ttl(Duration::from_secs(900))
                .volatile(),
        )
        .class(Class::new("resources").ttl(Duration::from_secs(3600)))
}

#[cfg(feature = "redis")]
/// A builder for `namespace` on `url` with short connect, probe and reconnect timings, so a
/// test sees an outage detected and the recovery made within a second or two. Each test adds
/// its own classes and policy.
pub fn fast_redis_builder(namespace: &str, url: String, command_timeout: Duration) -> CacheBuilder {
    Cache::builder(namespace)
        .redis_url(url)
        .command_timeout(command_timeout)
        .connect_timeout(Duration::from_millis(300))
        .probe_interval(Duration::from_millis(100))
        .reconnect_delay(Duration::from_millis(50))
}

/// Waits until `cache` uses Redis and its invalidation channel is confirmed (a cache starts on
/// its local store and switches to Redis only after its first successful probe), checking every
/// 10 ms; panics with the cache's status if that takes longer than `limit`.
#[cfg(feature = "redis")]
pub async fn wait_redis_ready(cache: &Cache, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !(cache.redis_in_use() && cache.coherent()) {
        assert!(
            Instant::now() < deadline,
            "cache never started using Redis and its invalidation channel within {limit:?}: {:?}",
            cache.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

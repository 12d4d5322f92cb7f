//! Redis restarted from an RDB snapshot comes back without every invalidation acknowledged
//! since the snapshot was taken. Each instance applies its own again, from the age of the
//! data as *it* wrote it, however old the snapshot is and whichever instance recovered first.
//!
//! The caches here never flush on an outage (no tiers) and re-apply only 500 ms of
//! invalidations after a plain failover, so nothing but the data's age can cover an
//! invalidation 1.5 s old.

#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stormcache::{Cache, EntryOptions, Key, Origin, OutagePolicy, RedisOutcome};
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::{until, FaultProxy, RedisServer};

const DEADLINE: Duration = Duration::from_millis(100);

fn cache(url: String) -> Cache {
    fast_redis_builder("sr", url, DEADLINE)
        .outage_policy(OutagePolicy::new())
        .failover_replay_window(Duration::from_millis(500))
        .build()
        .expect("valid configuration")
}

fn key() -> Key {
    Key::literal("user:groups:alice").expect("valid key")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Waits until `cache` has recovered from an outage that began at or after `since_ms`.
async fn recovered(cache: &Cache, since_ms: u64) {
    until("recovery", Duration::from_secs(20), || {
        cache.redis_in_use()
            && cache.coherent()
            && cache
                .status()
                .last_outage
                .is_some_and(|r| r.started_at_ms >= since_ms)
    })
    .await;
}

/// `v1` stored in Redis by `a`, a snapshot with it, then `a` invalidates it; returns the
/// snapshot once the invalidation is older than the replay window (500 ms) by a second.
async fn snapshot_then_invalidate(server: &RedisServer, a: &Cache) -> std::path::PathBuf {
    a.set(key(), "v1".to_owned(), &EntryOptions::new()).await;
    server.bgsave_and_wait();
    let snapshot = server.dir().join("before-the-invalidation.rdb");
    server.copy_rdb(&snapshot);
    let report = a.remove(&key()).await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    let invalidated = Instant::now();
    // The invalidation's age is what is tested: let it grow past the replay window.
    until("the invalidation to age", Duration::from_secs(5), || {
        invalidated.elapsed() > Duration::from_millis(1500)
    })
    .await;
    snapshot
}

/// What a reader gets once everything has recovered: the origin's `v2`, not the `v1` the
/// snapshot brought back.
async fn assert_no_stale_read(reader: &Cache) {
    let fetched = reader
        .fetch(key(), &EntryOptions::new(), || async {
            Ok::<_, ()>("v2".to_owned())
        })
        .await
        .expect("infallible");
    assert_eq!(
        (fetched.value.as_str(), fetched.origin),
        ("v2", Origin::Loader),
        "the snapshot's value came back after the invalidation was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_older_than_the_replay_window_is_applied_again_after_a_restore() {
    let server = RedisServer::builder().save(true).start();
    let (a, b) = (cache(server.url()), cache(server.url()));
    wait_redis_ready(&a, Duration::from_secs(20)).await;
    wait_redis_ready(&b, Duration::from_secs(20)).await;
    let snapshot = snapshot_then_invalidate(&server, &a).await;

    let restored = now_ms();
    server.restart_from_rdb(&snapshot);
    recovered(&a, restored).await;
    recovered(&b, restored).await;
    assert_no_stale_read(&b).await;
}

/// The case a shared heartbeat gets wrong: B recovers first and writes a fresh heartbeat, a
/// snapshot is taken then (the old entry still in it, A not yet back), and Redis is restored
/// from that one. By the shared heartbeat the data is a moment old; by A's own, it predates
/// A's invalidation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_dated_by_another_instance_still_gets_every_invalidation_again() {
    let server = RedisServer::builder().save(true).start();
    let proxy = FaultProxy::start(server.port());
    let (a, b) = (cache(proxy.url()), cache(server.url()));
    wait_redis_ready(&a, Duration::from_secs(20)).await;
    wait_redis_ready(&b, Duration::from_secs(20)).await;
    let snapshot = snapshot_then_invalidate(&server, &a).await;

    // A is cut off, so it cannot recover before the second snapshot.
    let cut = now_ms();
    proxy.blackhole();
    until("A to see Redis down", Duration::from_secs(5), || {
        !a.redis_in_use()
    })
    .await;
    let restored = now_ms();
    server.restart_from_rdb(&snapshot);
    recovered(&b, restored).await;
    server.bgsave_and_wait();
    let dated_by_b = server.dir().join("dated-by-b.rdb");
    server.copy_rdb(&dated_by_b);
    let restored = now_ms();
    server.restart_from_rdb(&dated_by_b);
    recovered(&b, restored).await;

    proxy.pass();
    recovered(&a, cut).await;
    assert_no_stale_read(&b).await;
}

/// A value written with `Cache::set` after the snapshot is undone by the restore: the older
/// value must not come back in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_restore_undid_does_not_bring_the_older_value_back() {
    let server = RedisServer::builder().save(true).start();
    let (a, b) = (cache(server.url()), cache(server.url()));
    wait_redis_ready(&a, Duration::from_secs(20)).await;
    wait_redis_ready(&b, Duration::from_secs(20)).await;
    a.set(key(), "v1".to_owned(), &EntryOptions::new()).await;
    server.bgsave_and_wait();
    let snapshot = server.dir().join("before-the-write.rdb");
    server.copy_rdb(&snapshot);
    a.set(key(), "v2".to_owned(), &EntryOptions::new()).await;
    let written = Instant::now();
    until("the write to age", Duration::from_secs(5), || {
        written.elapsed() > Duration::from_millis(1500)
    })
    .await;

    let restored = now_ms();
    server.restart_from_rdb(&snapshot);
    recovered(&a, restored).await;
    recovered(&b, restored).await;
    assert_no_stale_read(&b).await;
}

//! Each fred 10.1 trap from the shared notes, shown handled on a real server.
//!
//! - no default reconnect policy: a killed and restarted server is used again;
//! - no default command timeout: a frozen server costs a request one deadline, no more;
//! - `max_command_buffer_len`: 2,000 concurrent misses all complete, none hangs;
//! - a plain SCAN sees one Cluster node: a class flush empties every master;
//! - multi-key commands across slots fail with CROSSSLOT: tag and key invalidation on a
//!   Cluster remove entries spread over many slots.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormcache::{Cache, Class, EntryOptions, Invalidation, Key, Origin, RedisOutcome};
use support::topology::Topology;
use support::RedisServer;

async fn wait_in_use(cache: &Cache, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while (cache.redis_in_use() && cache.coherent()) != want {
        assert!(
            Instant::now() < deadline,
            "redis_in_use never became {want}: {:?}",
            cache.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn key(s: &str) -> Key {
    Key::literal(s).expect("valid key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_is_killed_and_restarted() {
    let server = RedisServer::start();
    let cache = Cache::builder("rc")
        .redis_url(server.url())
        .build()
        .expect("valid");
    wait_in_use(&cache, true).await;
    cache.set(key("before"), 1u8, &EntryOptions::new()).await;
    assert!(server.dbsize() > 0);

    server.kill();
    wait_in_use(&cache, false).await;
    // Still answering, from the loader and the local store.
    let v: u8 = cache
        .get_or_load(key("during"), &EntryOptions::new(), || async { 2 })
        .await;
    assert_eq!(v, 2);

    server.restart();
    wait_in_use(&cache, true).await;
    cache.set(key("after"), 3u8, &EntryOptions::new()).await;
    let stored = server.cmd(&["EXISTS", "rc:default:after"]);
    assert_eq!(
        stored.as_int(),
        Some(1),
        "writes reach the restarted server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_costs_one_deadline_then_nothing() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(100);
    let cache = Cache::builder("fz")
        .redis_url(server.url())
        .command_timeout(timeout)
        .build()
        .expect("valid");
    wait_in_use(&cache, true).await;
    server.freeze();
    let mut slowest = Duration::ZERO;
    for i in 0..20u32 {
        let started = Instant::now();
        let v = cache
            .get_or_load(
                Key::builder("k:").value(i).build(),
                &EntryOptions::new(),
                || async move { i },
            )
            .await;
        assert_eq!(v, i);
        slowest = slowest.max(started.elapsed());
    }
    server.resume();
    // A read and a write may each wait one deadline; nothing waits for the freeze to end.
    assert!(
        slowest < timeout * 2 + Duration::from_millis(100),
        "a call took {slowest:?}"
    );
    assert!(cache.counters().redis_errors >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_misses_all_complete() {
    let server = RedisServer::start();
    let cache = Cache::builder("bp")
        .redis_url(server.url())
        .build()
        .expect("valid");
    wait_in_use(&cache, true).await;
    let mut tasks = Vec::new();
    for i in 0..2000u32 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(
                    Key::builder("k:").value(i).build(),
                    &EntryOptions::new(),
                    || async move { i * 2 },
                )
                .await
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    })
    .await
    .expect("no call hangs");
    assert!(all.iter().enumerate().all(|(i, v)| *v == i as u32 * 2));
    // The client is not wedged: it is (again) in use and a round trip through Redis works.
    wait_in_use(&cache, true).await;
    cache.set(key("after"), 5u32, &EntryOptions::new()).await;
    let fresh = Cache::builder("bp")
        .redis_url(server.url())
        .build()
        .expect("valid");
    wait_in_use(&fresh, true).await;
    let fetched = fresh
        .fetch(key("after"), &EntryOptions::new(), || async {
            Err::<u32, _>("not called")
        })
        .await
        .expect("served from Redis");
    assert_eq!((fetched.origin, fetched.value), (Origin::Redis, 5));
    eprintln!("after 2,000 concurrent misses: {:?}", cache.counters());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_flush_reaches_every_master_and_invalidation_never_crossslots() {
    let t = Topology::cluster();
    let cache = Cache::builder("cl")
        .redis_url(t.url())
        .class(Class::new("sessions").volatile())
        .class(Class::new("resources"))
        .build()
        .expect("valid");
    wait_in_use(&cache, true).await;
    let tag = Key::literal("tenant:1").expect("valid");
    for i in 0..200u32 {
        let opts = EntryOptions::new().class("sessions").tag(tag.clone());
        cache
            .set(Key::builder("s:").value(i).build(), i, &opts)
            .await;
        cache
            .set(
                Key::builder("r:").value(i).build(),
                i,
                &EntryOptions::new().class("resources"),
            )
            .await;
    }
    let sessions = t.keys("cl:sessions:*");
    assert_eq!(sessions.len(), 200);
    let masters_holding = t
        .master_ports()
        .into_iter()
        .filter(|p| {
            support::resp::cmd(
                *p,
                &["SCAN", "0", "MATCH", "cl:sessions:*", "COUNT", "1000"],
            )
            .map(|r| format!("{r:?}").contains("cl:sessions:"))
            .unwrap_or(false)
        })
        .count();
    assert_eq!(
        masters_holding, 3,
        "entries are spread over the three masters"
    );

    // Keys in many slots, one call: no CROSSSLOT.
    let many = (0..20u32).fold(Invalidation::new(), |inv, i| {
        inv.key(Key::builder("r:").value(i).build())
    });
    let report = cache.invalidate(&many).await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    assert_eq!(report.redis_keys_removed, 20);

    // A tag over 200 slots.
    let report = cache.invalidate_tag(&tag).await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    assert_eq!(report.redis_keys_removed, 200);
    // (The key invalidation above left short tombstones for r:0..19 in every class.)
    assert!(t.keys("cl:sessions:s:*").is_empty());

    // A class flush over every master.
    let report = cache.flush_class("resources").await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    // 180 entries and the 20 tombstones.
    assert_eq!(report.redis_keys_removed, 200);
    assert!(t.keys("cl:resources:*").is_empty());
    let fetched = cache
        .fetch(
            Key::builder("r:").value(100).build(),
            &EntryOptions::new().class("resources"),
            || async { Ok::<u32, ()>(0) },
        )
        .await
        .expect("infallible");
    assert_eq!(fetched.origin, Origin::Loader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushing_never_reaches_outside_the_namespace() {
    let server = RedisServer::start();
    server.cmd(&["SET", "other:default:k", "theirs"]);
    server.cmd(&["SET", "nsx:default:k", "similar prefix"]);
    let cache = Cache::builder("ns")
        .redis_url(server.url())
        .build()
        .expect("valid");
    wait_in_use(&cache, true).await;
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..10u32 {
        let calls = Arc::clone(&calls);
        cache
            .get_or_load(
                Key::builder("k:").value(i).build(),
                &EntryOptions::new(),
                || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    i
                },
            )
            .await;
    }
    let report = cache.flush_all().await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    assert!(report.redis_keys_removed >= 10);
    assert_eq!(
        server.cmd(&["GET", "other:default:k"]).as_text().as_deref(),
        Some("theirs")
    );
    assert_eq!(
        server.cmd(&["GET", "nsx:default:k"]).as_text().as_deref(),
        Some("similar prefix")
    );
}

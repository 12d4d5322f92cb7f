//! The read-through core on real Redis: standalone, a Sentinel group and a Cluster.
//!
//! Each topology runs the same scenarios (each in its own namespace): hit and miss through
//! both levels, TTL expiry, class flush, tag invalidation, undecodable bytes and
//! single-flight. One group per topology keeps the suite quick on two cores.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormcache::{Cache, EntryOptions, Key, Loaded, Origin, RedisOutcome};
use support::caches::{wait_redis_ready, with_permissions_and_resources};
use support::topology::{topology_tests, Topology};

fn cache(topology: &Topology, namespace: &str) -> Cache {
    with_permissions_and_resources(Cache::builder(namespace).redis_url(topology.url()))
        .build()
        .expect("valid configuration")
}

/// Waits until the cache's breaker lets requests use Redis (it starts closed on Redis only
/// after the first successful probe).
async fn connected(cache: Cache) -> Cache {
    wait_redis_ready(&cache, Duration::from_secs(15)).await;
    cache
}

fn key(text: &str) -> Key {
    Key::literal(text).expect("valid key")
}

async fn hit_and_miss_through_both_levels(t: &Topology) {
    let a = connected(cache(t, "hm")).await;
    let b = connected(cache(t, "hm")).await;
    let opts = EntryOptions::new().class("resources");
    let calls = AtomicUsize::new(0);
    let load = || async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>(vec!["r1".to_owned(), "r2".to_owned()])
    };

    let first = a
        .fetch(key("resources:all"), &opts, load)
        .await
        .expect("loaded");
    assert_eq!(first.origin, Origin::Loader);
    let second = a
        .fetch(key("resources:all"), &opts, load)
        .await
        .expect("cached");
    assert_eq!(second.origin, Origin::Local);
    // Another instance (its own local store) finds it in Redis, then locally.
    let from_b = b
        .fetch(key("resources:all"), &opts, load)
        .await
        .expect("cached");
    assert_eq!(
        (from_b.origin, &from_b.value),
        (Origin::Redis, &first.value)
    );
    let again_b = b
        .fetch(key("resources:all"), &opts, load)
        .await
        .expect("cached");
    assert_eq!(again_b.origin, Origin::Local);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the loader ran once for both instances"
    );
    assert!(
        t.keys("hm:resources:*")
            .contains(&"hm:resources:resources:all".to_owned()),
        "the entry is in Redis under namespace:class:key"
    );
    // A plain get and set round-trip too.
    a.set(key("plain"), 7u64, &EntryOptions::new()).await;
    assert_eq!(
        b.get::<u64>(&key("plain"), &EntryOptions::new()).await,
        Some(7)
    );
    assert_eq!(
        b.get::<u64>(&key("absent"), &EntryOptions::new()).await,
        None
    );
}

async fn ttl_expiry(t: &Topology) {
    let c = connected(cache(t, "ttl")).await;
    let opts = EntryOptions::new().ttl(Duration::from_millis(300));
    let calls = AtomicUsize::new(0);
    let started = Instant::now();
    let load = || async { calls.fetch_add(1, Ordering::SeqCst) };
    let v0 = c.get_or_load(key("short"), &opts, load).await;
    assert_eq!(
        c.get_or_load(key("short"), &opts, load).await,
        v0,
        "fresh: cached"
    );
    // Wait for Redis to expire it, then the cache must load again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.keys("ttl:default:short").is_empty() {
        assert!(Instant::now() < deadline, "Redis never expired the entry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v1 = c.get_or_load(key("short"), &opts, load).await;
    assert_ne!(v1, v0, "an expired entry is loaded again");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

async fn class_flush(t: &Topology) {
    let c = connected(cache(t, "cf")).await;
    let perms = EntryOptions::new().class("permissions");
    let res = EntryOptions::new().class("resources");
    for i in 0..50 {
        let k = Key::builder("user:groups:").value(i).build();
        c.get_or_load(k, &perms, || async { i }).await;
        let k = Key::builder("resources:").value(i).build();
        c.get_or_load(k, &res, || async { i }).await;
    }
    assert_eq!(t.keys("cf:permissions:*").len(), 50);
    let report = c.flush_class("permissions").await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    assert_eq!(report.redis_keys_removed, 50);
    assert!(
        t.keys("cf:permissions:*").is_empty(),
        "every master flushed"
    );
    assert_eq!(
        t.keys("cf:resources:*").len(),
        50,
        "other classes untouched"
    );
    let reloaded = AtomicUsize::new(0);
    c.get_or_load(
        Key::builder("user:groups:").value(1).build(),
        &perms,
        || async {
            reloaded.fetch_add(1, Ordering::SeqCst);
            1
        },
    )
    .await;
    c.get_or_load(
        Key::builder("resources:").value(1).build(),
        &res,
        || async {
            reloaded.fetch_add(10, Ordering::SeqCst);
            1
        },
    )
    .await;
    assert_eq!(
        reloaded.load(Ordering::SeqCst),
        1,
        "only the flushed class reloads"
    );
}

async fn tag_invalidation(t: &Topology) {
    let a = connected(cache(t, "tag")).await;
    let user_tag = |u: &str| Key::builder("user:").value(u).build();
    let groups = |u: &str| Key::builder("user:groups:").value(u).build();
    let resources = |u: &str| Key::builder("resources:").value(u).build();
    for user in ["alice", "bob", "*"] {
        let p = EntryOptions::new().class("permissions").tag(user_tag(user));
        let r = EntryOptions::new().class("resources").tag(user_tag(user));
        a.get_or_load(groups(user), &p, || async { format!("{user}-groups") })
            .await;
        a.get_or_load(resources(user), &r, || async { format!("{user}-res") })
            .await;
    }
    // Hostile input: the tag of user "*" must reach only that user's entries.
    let report = a.invalidate_tag(&user_tag("*")).await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    assert_eq!(report.redis_keys_removed, 2);
    let report = a.invalidate_tag(&user_tag("alice")).await;
    assert_eq!(report.redis_keys_removed, 2);

    // A fresh instance sees Redis only: alice and "*" are gone, bob is not.
    let b = connected(cache(t, "tag")).await;
    for (user, gone) in [("alice", true), ("*", true), ("bob", false)] {
        let p = EntryOptions::new().class("permissions").tag(user_tag(user));
        let fetched = b
            .fetch(groups(user), &p, || async {
                Ok::<_, ()>("reloaded".to_owned())
            })
            .await
            .expect("infallible");
        assert_eq!(
            fetched.origin == Origin::Loader,
            gone,
            "user {user}: {fetched:?}"
        );
        // And the instance that invalidated does not serve it locally either.
        let local = a
            .fetch(
                resources(user),
                &EntryOptions::new().class("resources"),
                || async { Ok::<_, ()>("reloaded".to_owned()) },
            )
            .await
            .expect("infallible");
        assert_eq!(
            local.origin == Origin::Loader,
            gone,
            "user {user}: {local:?}"
        );
    }
}

async fn undecodable_bytes_are_a_miss(t: &Topology) {
    let c = connected(cache(t, "bad")).await;
    t.cmd(&["SET", "bad:default:garbage", "\u{0}\u{1}not an envelope"]);
    // Right envelope header, wrong payload type.
    let other_type = {
        let d = connected(cache(t, "bad")).await;
        d.set(key("typed"), "a string".to_owned(), &EntryOptions::new())
            .await;
        d
    };
    drop(other_type);
    let loaded: Vec<u32> = c
        .get_or_load(key("garbage"), &EntryOptions::new(), || async {
            vec![1, 2]
        })
        .await;
    assert_eq!(loaded, [1, 2]);
    let typed: Vec<u32> = c
        .get_or_load(key("typed"), &EntryOptions::new(), || async { vec![3] })
        .await;
    assert_eq!(typed, [3]);
    assert_eq!(c.counters().decode_errors, 2);
    // The bad bytes were overwritten: another instance now decodes them.
    let e = connected(cache(t, "bad")).await;
    let fetched = e
        .fetch(key("garbage"), &EntryOptions::new(), || async {
            Err::<Vec<u32>, _>("not called")
        })
        .await
        .expect("served from Redis");
    assert_eq!((fetched.origin, fetched.value), (Origin::Redis, vec![1, 2]));
}

async fn single_flight(t: &Topology) {
    let c = connected(cache(t, "sf")).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            c.get_or_load(key("cold"), &EntryOptions::new(), || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Slow origin, so the callers overlap.
                tokio::time::sleep(Duration::from_millis(100)).await;
                42u32
            })
            .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 42);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "1,000 cold callers, one load"
    );
}

/// A TTL meant as "forever" is stored (a century), and another instance reads it from Redis.
async fn a_forever_ttl_reaches_redis(t: &Topology) {
    let a = connected(cache(t, "forever")).await;
    let b = connected(cache(t, "forever")).await;
    let forever = EntryOptions::new()
        .ttl(Duration::MAX)
        .stale_for(Duration::MAX);
    a.set(key("forever:k"), 5u32, &forever).await;
    let read = b
        .fetch(key("forever:k"), &forever, || async { Ok::<u32, ()>(6) })
        .await
        .expect("cached");
    assert_eq!((read.value, read.origin), (5, Origin::Redis));
}

async fn all_scenarios(t: Topology) {
    hit_and_miss_through_both_levels(&t).await;
    ttl_expiry(&t).await;
    class_flush(&t).await;
    tag_invalidation(&t).await;
    undecodable_bytes_are_a_miss(&t).await;
    single_flight(&t).await;
    a_forever_ttl_reaches_redis(&t).await;
}

topology_tests!(all_scenarios: standalone, sentinel, cluster);

#[tokio::test]
async fn local_only_needs_no_redis_and_no_code_change() {
    let c = Cache::builder("local").build().expect("valid");
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = c
            .get_or_load(key("k"), &EntryOptions::new(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                "v".to_owned()
            })
            .await;
        assert_eq!(v, "v");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.remove(&key("k")).await.redis, RedisOutcome::NotConfigured);
    assert!(c
        .get::<String>(&key("k"), &EntryOptions::new())
        .await
        .is_none());
}

/// Every duration of the builder and of a loader's choice at `Duration::MAX` ("never"):
/// the cache connects, stores through Redis and reads back.
#[tokio::test]
async fn durations_meaning_forever_configure_a_working_cache() {
    let server = support::RedisServer::start();
    let forever = Duration::MAX;
    let build = || {
        Cache::builder("forever-builder")
            .redis_url(server.url())
            .default_ttl(forever)
            .command_timeout(forever)
            .connect_timeout(forever)
            .reconnect_delay(forever)
            .maintenance_timeout(forever)
            .failover_replay_window(forever)
            .build()
            .expect("valid configuration")
    };
    let (a, b) = (connected(build()).await, connected(build()).await);
    let opts = EntryOptions::new().local_ttl(forever);
    let loaded = a
        .fetch_adaptive(key("k"), &opts, || async {
            Ok::<_, ()>(Loaded::new(5u32).ttl(forever))
        })
        .await
        .expect("loaded");
    assert_eq!((loaded.value, loaded.origin), (5, Origin::Loader));
    let read = b
        .fetch(key("k"), &opts, || async { Ok::<u32, ()>(6) })
        .await
        .expect("cached");
    assert_eq!((read.value, read.origin), (5, Origin::Redis));
}

//! Adaptive entries, on real Redis: the loader chooses its value's TTL, adds tags, or asks
//! for it not to be cached — through [`Loaded`] with `fetch_adaptive`, or through
//! `stormcache::adapt` from a loader (or a `#[cached]` function) that returns the value
//! itself. Tags a loader adds reach the entry in both stores, and an invalidation of such a
//! tag while the load runs keeps its value out of both.

#![cfg(all(feature = "redis", feature = "macros"))]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormcache::{adapt, cached, Cache, EntryOptions, Key, Loaded, Origin};
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::{scaled, RedisServer};
use tokio::sync::watch;

const LONG: Duration = Duration::from_secs(3600);

fn key(text: &str) -> Key {
    Key::literal(text).expect("valid key")
}

async fn cache(server: &RedisServer, namespace: &str, backplane: bool) -> Cache {
    let cache = fast_redis_builder(namespace, server.url(), Duration::from_millis(500))
        .backplane(backplane)
        .build()
        .expect("valid configuration");
    let limit = scaled(Duration::from_secs(10));
    if backplane {
        wait_redis_ready(&cache, limit).await;
    } else {
        let deadline = Instant::now() + limit;
        while !cache.redis_in_use() {
            assert!(
                Instant::now() < deadline,
                "never used Redis: {:?}",
                cache.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    cache
}

/// Redis's copy of `key` in the default class of `namespace`, if any.
fn in_redis(server: &RedisServer, namespace: &str, key: &str) -> Option<Vec<u8>> {
    let full = format!("{namespace}:default:{key}");
    server
        .cmd(&["GET", full.as_str()])
        .as_bytes()
        .map(<[u8]>::to_vec)
}

fn pttl_ms(server: &RedisServer, namespace: &str, key: &str) -> i64 {
    let full = format!("{namespace}:default:{key}");
    server
        .cmd(&["PTTL", full.as_str()])
        .as_int()
        .expect("PTTL answers an integer")
}

/// Polls `done` every 10 ms until it holds; panics with `what` after 5 s (scaled).
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_loader_chooses_the_ttl_of_its_value_in_both_stores() {
    let server = RedisServer::start();
    let cache = cache(&server, "adapt_ttl", true).await;
    let opts = EntryOptions::new().ttl(LONG);
    let read = cache
        .fetch_adaptive(key("token"), &opts, || async {
            Ok::<_, stormcache::Error>(Loaded::new(7u32).ttl(Duration::from_millis(300)))
        })
        .await
        .expect("loaded");
    assert_eq!(read.value, 7);
    let left = pttl_ms(&server, "adapt_ttl", "token");
    assert!(
        (1..=300).contains(&left),
        "Redis keeps it {left} ms, not the loader's 300 ms"
    );
    // The local copy goes with it, and the next read loads again.
    let loads = AtomicUsize::new(0);
    eventually("the local copy outlived the loader's TTL", || {
        cache.get_local::<u32>(key("token"), &opts).is_err()
    })
    .await;
    let again: u32 = cache
        .get_or_load(key("token"), &opts, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            8
        })
        .await;
    assert_eq!((again, loads.load(Ordering::SeqCst)), (8, 1));
    // Without a word from the loader, the options' TTL.
    assert!(pttl_ms(&server, "adapt_ttl", "token") > 3_000_000);
}

#[tokio::test]
async fn a_loader_that_says_no_store_is_answered_and_not_cached() {
    let server = RedisServer::start();
    let cache = cache(&server, "adapt_nostore", true).await;
    let opts = EntryOptions::new().ttl(LONG);
    let loads = AtomicUsize::new(0);
    for expected in 1..=2 {
        let value: Option<String> = cache
            .get_or_load(key("missing"), &opts, || async {
                loads.fetch_add(1, Ordering::SeqCst);
                assert!(adapt::no_store(), "inside a load");
                None
            })
            .await;
        assert_eq!(value, None);
        assert_eq!(loads.load(Ordering::SeqCst), expected);
    }
    assert_eq!(in_redis(&server, "adapt_nostore", "missing"), None);
    // Outside a load, the calls do nothing and say so.
    assert!(!adapt::no_store());
    assert!(!adapt::ttl(Duration::from_secs(1)));
}

#[tokio::test]
async fn a_tag_the_loader_adds_invalidates_the_entry_on_every_instance() {
    let server = RedisServer::start();
    let a = cache(&server, "adapt_tag", true).await;
    let b = cache(&server, "adapt_tag", true).await;
    let opts = EntryOptions::new().ttl(LONG);
    let folder = key("folder:3");
    let read = a
        .fetch_adaptive(key("doc:7"), &opts, || async {
            Ok::<_, stormcache::Error>(Loaded::new("text".to_owned()).tag(folder.clone()))
        })
        .await
        .expect("loaded");
    assert_eq!(read.origin, Origin::Loader);
    assert!(in_redis(&server, "adapt_tag", "doc:7").is_some());
    // B reads it from Redis, then invalidates the tag only A's loader knew.
    let from_b: String = b
        .get_or_load(key("doc:7"), &opts, || async { "b".into() })
        .await;
    assert_eq!(from_b, "text");
    b.invalidate_tag(&folder).await;
    let redis_only = opts.clone().skip_local();
    assert_eq!(b.get::<String>(&key("doc:7"), &redis_only).await, None);
    assert!(b.get_local::<String>(key("doc:7"), &opts).is_err());
    eventually("A kept its copy after the tag's invalidation", || {
        a.get_local::<String>(key("doc:7"), &opts).is_err()
    })
    .await;
}

/// A loader that adds `tag` and waits for the test to open the gate.
async fn gated_tagged_load(
    tag: Key,
    mut gate: watch::Receiver<bool>,
    started: Arc<AtomicUsize>,
) -> u32 {
    assert!(adapt::tag(tag));
    started.fetch_add(1, Ordering::SeqCst);
    let _ = gate.wait_for(|open| *open).await;
    1
}

#[tokio::test]
async fn an_added_tag_invalidated_during_the_load_keeps_the_value_out_of_both_stores() {
    let server = RedisServer::start();
    let cache = cache(&server, "adapt_race", true).await;
    let opts = EntryOptions::new().ttl(LONG);
    let tag = key("folder:9");
    let (open, gate) = watch::channel(false);
    let started = Arc::new(AtomicUsize::new(0));
    let load = {
        let (cache, opts, tag, started) = (
            cache.clone(),
            opts.clone(),
            tag.clone(),
            Arc::clone(&started),
        );
        tokio::spawn(async move {
            cache
                .get_or_load(key("doc:9"), &opts, || {
                    gated_tagged_load(tag, gate, started)
                })
                .await
        })
    };
    eventually("the load never started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    // The change the loader may have read before: its invalidation comes first.
    cache.invalidate_tag(&tag).await;
    open.send_replace(true);
    assert_eq!(
        load.await.expect("task"),
        1,
        "its own caller still gets the value"
    );
    assert!(
        cache.get_local::<u32>(key("doc:9"), &opts).is_err(),
        "stored locally although its tag was invalidated while it loaded"
    );
    let redis_only = opts.clone().skip_local();
    assert_eq!(cache.get::<u32>(&key("doc:9"), &redis_only).await, None);
}

#[tokio::test]
async fn an_added_tag_invalidated_elsewhere_during_the_load_is_caught_by_redis() {
    let server = RedisServer::start();
    // A hears nothing from the other instances: only Redis can tell it the tag moved.
    let a = cache(&server, "adapt_remote", false).await;
    let b = cache(&server, "adapt_remote", false).await;
    let opts = EntryOptions::new().ttl(LONG);
    let tag = key("folder:5");
    let (open, gate) = watch::channel(false);
    let started = Arc::new(AtomicUsize::new(0));
    let load = {
        let (a, opts, tag, started) = (a.clone(), opts.clone(), tag.clone(), Arc::clone(&started));
        tokio::spawn(async move {
            a.get_or_load(key("doc:5"), &opts, || {
                gated_tagged_load(tag, gate, started)
            })
            .await
        })
    };
    eventually("the load never started", || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    b.invalidate_tag(&tag).await;
    open.send_replace(true);
    assert_eq!(load.await.expect("task"), 1);
    // B reads what Redis holds (its own local store has nothing of the key).
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    let redis_only = opts.clone().skip_local();
    while b.get::<u32>(&key("doc:5"), &redis_only).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "Redis kept a value whose tag was invalidated while it loaded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

static MACRO_CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

#[cached(key = "profile:{id}", ttl = "1h", cache = MACRO_CACHE.get().expect("set by the test"))]
async fn profile(id: u32) -> String {
    if id == 0 {
        // The guest profile changes often: keep it for a moment only.
        adapt::ttl(Duration::from_millis(300));
        return "guest".to_owned();
    }
    format!("user {id}")
}

#[tokio::test]
async fn a_cached_function_keeps_its_return_type_and_adapts_its_ttl() {
    let server = RedisServer::start();
    let cache = MACRO_CACHE.get_or_init(|| {
        fast_redis_builder("adapt_macro", server.url(), Duration::from_millis(500))
            .build()
            .expect("valid configuration")
    });
    wait_redis_ready(cache, scaled(Duration::from_secs(10))).await;
    assert_eq!(profile(1).await, "user 1");
    assert!(pttl_ms(&server, "adapt_macro", "profile:1") > 3_000_000);
    assert_eq!(profile(0).await, "guest");
    let left = pttl_ms(&server, "adapt_macro", "profile:0");
    assert!(
        (1..=300).contains(&left),
        "Redis keeps the guest profile {left} ms"
    );
}

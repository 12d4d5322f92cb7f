//! `examples/service_functions.rs` (seed 002's multi-layer case) on a real Redis: after
//! `remove_user_from_group`, the stale entries are gone from Redis too, the next
//! `user_resources` call reflects the removal, and another instance reads the fresh answer.

mod support;

#[allow(dead_code)]
#[path = "../examples/service_functions.rs"]
mod service_functions;

use std::sync::atomic::Ordering;
use std::time::Duration;

use service_functions::{build_cache, db, demo, remove_user_from_group, user_resources};
use stormcache::{Cache, EntryOptions, Key, Origin};
use support::caches::wait_redis_ready;
use support::RedisServer;

async fn in_use(cache: &Cache) {
    wait_redis_ready(cache, Duration::from_secs(20)).await;
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.holds_entry(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_removal_is_reflected_on_redis() {
    let server = RedisServer::start();
    let cache = build_cache(Some(server.url())).expect("valid configuration");
    in_use(&cache).await;
    stormcache::install(cache.clone()).expect("installed once");

    // What the example's main does once the cache is installed.
    let (before, after) = demo().await.expect("the demo succeeds");
    assert!(before.contains(&"prod-db".to_owned()) && !after.contains(&"prod-db".to_owned()));

    // Step by step, from a clean namespace.
    cache.flush_all().await;
    db::seed();
    let queries = || db::QUERIES.load(Ordering::SeqCst);
    assert_eq!(
        user_resources("alice").await.expect("loaded"),
        ["roadmap", "prod-db"]
    );
    let groups_key = "service-functions:permissions:user:groups:alice";
    let resources_key = "service-functions:permissions:resources:alice";
    let all_key = "service-functions:resources:resources:all";
    for key in [groups_key, resources_key, all_key] {
        assert!(exists(&server, key), "{key} written to Redis");
    }

    assert!(remove_user_from_group("alice", "admins")
        .await
        .expect("removed"));
    assert!(!exists(&server, groups_key), "UserGroups reached Redis");
    assert!(
        !exists(&server, resources_key),
        "UserResources reached Redis"
    );
    assert!(
        exists(&server, all_key),
        "resources:all is not the removal's business"
    );

    let after_mutation = queries();
    assert_eq!(
        user_resources("alice").await.expect("reloaded"),
        ["roadmap"]
    );
    assert_eq!(
        queries() - after_mutation,
        1,
        "only alice's groups were queried again"
    );

    // Another instance (its own empty local store) reads the fresh answer from Redis.
    let other = build_cache(Some(server.url())).expect("valid configuration");
    in_use(&other).await;
    let fetched = other
        .fetch(
            Key::builder("resources:").value("alice").build(),
            &EntryOptions::new().class("permissions"),
            || async { Err::<Vec<String>, _>("must come from Redis") },
        )
        .await
        .expect("in Redis");
    assert_eq!(
        (fetched.origin, fetched.value),
        (Origin::Redis, vec!["roadmap".to_owned()])
    );
}

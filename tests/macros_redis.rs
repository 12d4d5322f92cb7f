//! `#[cached]` and `#[invalidate]` on a real Redis: entries are shared between instances,
//! invalidations and refreshes reach Redis, and an invalidation during an outage never
//! fails the mutation (it is journaled and replayed on recovery).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stormcache::{cached, invalidate, Cache, Class, EntryOptions, HealthState, Key, Origin};
use support::caches::fast_redis_builder;
use support::{until, RedisServer};

const NS: &str = "macros-redis";

static VERSION: AtomicUsize = AtomicUsize::new(0);

fn cache(url: String) -> Cache {
    fast_redis_builder(NS, url, Duration::from_millis(100))
        .class(
            Class::new("permissions")
                .ttl(Duration::from_secs(900))
                .volatile(),
        )
        .build()
        .expect("valid configuration")
}

/// One service instance: its own cache handle (and so its own local store).
struct Groups {
    cache: Cache,
    loads: AtomicUsize,
}

impl Groups {
    async fn start(url: String) -> Groups {
        let groups = Groups {
            cache: cache(url),
            loads: AtomicUsize::new(0),
        };
        until("Redis in use", Duration::from_secs(20), || {
            groups.cache.redis_in_use() && groups.cache.coherent()
        })
        .await;
        groups
    }

    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    #[cached(
        key = "user:groups:{user}",
        ttl = "15m",
        class = "permissions",
        tags = ["user:{user}"],
        cache = self.cache
    )]
    async fn of(&self, user: &str) -> Result<Vec<String>, String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        // A version counted across instances, so two loads never look alike.
        let n = VERSION.fetch_add(1, Ordering::SeqCst);
        Ok(vec![format!("{user}-v{n}")])
    }

    /// A slow origin behind distributed stampede protection.
    #[cached(key = "report:{year}", ttl = "1h", distributed_lock = "5s", cache = self.cache)]
    async fn report(&self, year: u16) -> String {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        format!("report {year}")
    }

    #[invalidate(keys = ["user:groups:{user}"], cache = self.cache)]
    async fn leave(&self, user: &str, group: &str) -> Result<(), String> {
        let _ = (user, group);
        Ok(())
    }

    #[invalidate(tags = ["user:{user}"], cache = self.cache)]
    async fn rename(&self, user: &str) -> Result<(), String> {
        let _ = user;
        Ok(())
    }
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.holds_entry(key)
}

const ANN: &str = "macros-redis:permissions:user:groups:ann";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_entries_and_invalidations_reach_redis() {
    let server = RedisServer::start();
    let a = Groups::start(server.url()).await;
    let b = Groups::start(server.url()).await;

    let first = a.of("ann").await.expect("loaded");
    assert!(exists(&server, ANN));
    assert_eq!(b.of("ann").await.expect("from Redis"), first);
    assert_eq!(
        (a.loads(), b.loads()),
        (1, 0),
        "b read a's entry from Redis"
    );

    a.leave("ann", "admins").await.expect("left");
    assert!(!exists(&server, ANN), "the key invalidation reached Redis");
    let c = Groups::start(server.url()).await;
    assert_ne!(c.of("ann").await.expect("reloaded"), first);
    assert_eq!(c.loads(), 1);

    a.rename("ann").await.expect("renamed");
    assert!(!exists(&server, ANN), "the tag invalidation reached Redis");

    // A refresh writes through to Redis; a fresh instance reads it from there.
    let fresh = a.of_refresh("ann").await.expect("refreshed");
    let d = Groups::start(server.url()).await;
    assert_eq!(d.of("ann").await.expect("from Redis"), fresh);
    assert_eq!(d.loads(), 0);

    // The companion invalidation removes the entry everywhere too.
    a.of_invalidate("ann").await;
    assert!(!exists(&server, ANN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_dropped_while_its_invalidation_awaits_redis_still_invalidates() {
    let server = RedisServer::start();
    let a = Groups::start(server.url()).await;
    a.of("ann").await.expect("loaded");
    assert!(exists(&server, ANN));
    let mut mutation = Box::pin(a.leave("ann", "admins"));
    // One poll: the body runs and the invalidation starts; then the caller gives up (a
    // request timeout, a closed connection).
    // (On this multi-threaded runtime the invalidation may even have finished already.)
    tokio::select! {
        biased;
        _ = &mut mutation => {}
        () = std::future::ready(()) => {}
    }
    drop(mutation);
    until("the entry to leave Redis", Duration::from_secs(5), || {
        !exists(&server, ANN)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_an_outage_never_fails_the_mutation() {
    let server = RedisServer::builder().save(true).start();
    let a = Groups::start(server.url()).await;
    let stale = a.of("ann").await.expect("loaded");
    server.bgsave_and_wait(); // the snapshot Redis will come back with holds the entry
    server.kill();
    until("the circuit to open", Duration::from_secs(5), || {
        a.cache.status().state == HealthState::Down
    })
    .await;

    assert_eq!(
        a.of("ann").await.expect("local"),
        stale,
        "reads go on from the local store"
    );
    let started = Instant::now();
    a.leave("ann", "admins")
        .await
        .expect("the mutation succeeds while Redis is down");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "no waiting on a dead Redis"
    );
    assert_eq!(
        a.cache.status().journal_len,
        1,
        "the Redis half is journaled"
    );
    assert_ne!(
        a.of("ann").await.expect("reloaded"),
        stale,
        "the local store was cleaned"
    );

    server.restart(); // back with the stale entry, from its snapshot
    until("recovery", Duration::from_secs(30), || {
        a.cache.redis_in_use() && a.cache.status().journal_len == 0
    })
    .await;
    let b = Groups::start(server.url()).await;
    let fetched = b
        .cache
        .fetch(
            Key::builder("user:groups:").value("ann").build(),
            &EntryOptions::new().class("permissions"),
            || async { Ok::<_, ()>(vec!["fresh".to_owned()]) },
        )
        .await
        .expect("infallible");
    assert_ne!(
        fetched.value, stale,
        "the journal replay removed the stale entry"
    );
    assert_ne!(fetched.origin, Origin::Stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_lock_attribute_loads_once_across_instances() {
    let server = RedisServer::start();
    let instances = [
        std::sync::Arc::new(Groups::start(server.url()).await),
        std::sync::Arc::new(Groups::start(server.url()).await),
        std::sync::Arc::new(Groups::start(server.url()).await),
    ];
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let g = std::sync::Arc::clone(&instances[i % 3]);
        calls.spawn(async move { g.report(2026).await });
    }
    while let Some(r) = calls.join_next().await {
        assert_eq!(r.expect("call"), "report 2026");
    }
    let loads: usize = instances.iter().map(|g| g.loads()).sum();
    assert_eq!(loads, 1, "one load across the three instances");
}

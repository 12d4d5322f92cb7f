//! Partial faults on real Redis: one command, one connection or one request goes wrong while
//! the rest of the system looks healthy. Each test pins a promise a user relies on:
//!
//! - an invalidation whose PUBLISH missed its deadline, with the breaker still closed, reaches
//!   the other instances as soon as Redis answers again — not at the next full outage;
//! - a mutation on a request path waits for Redis no longer than one command deadline, even
//!   when Redis froze a moment ago and the breaker has not opened yet;
//! - a mutation whose response future is dropped halfway (a timeout, a client gone) still
//!   invalidates everywhere;
//! - flushing the namespace keeps the invalidation log the other instances reconcile from;
//! - a restart from a snapshot taken before an invalidation does not bring the invalidated
//!   value back.

#![cfg(all(feature = "redis", feature = "axum", feature = "macros"))]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use stormcache::layer::InvalidateLayer;
use stormcache::{Cache, EntryOptions, Invalidation, Key, KeyTemplate, RedisOutcome};
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::{scaled, FaultProxy, RedisServer, TempDir};
use tower::ServiceExt;

const DEADLINE: Duration = Duration::from_millis(100);

/// An origin whose value is a version that every mutation bumps.
#[derive(Clone, Default)]
struct Origin(Arc<AtomicU64>);

impl Origin {
    fn read(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    fn bump(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

fn key() -> Key {
    Key::literal("user:groups:alice").expect("valid key")
}

/// The user's groups, tagged with the user.
async fn read(cache: &Cache, origin: &Origin) -> u64 {
    let origin = origin.clone();
    let options = EntryOptions::new().tag(Key::literal("user:alice").expect("valid tag"));
    cache
        .get_or_load(key(), &options, || async move { origin.read() })
        .await
}

/// Reads through `cache` until it returns `want`; fails after `limit`. Returns how long it
/// took.
async fn reads_eventually(cache: &Cache, origin: &Origin, want: u64, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = read(cache, origin).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < scaled(limit),
            "still reads version {got} {limit:?} after version {want} was invalidated: {:?}",
            cache.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys matching `pattern` on `server`, by SCAN.
fn keys(server: &RedisServer, pattern: &str) -> Vec<String> {
    support::resp::scan_keys(&[server.port()], pattern)
}

/// A cache on `url` with the tests' deadline, once it uses Redis and its channel.
async fn instance(namespace: &str, url: String) -> Cache {
    ready(
        fast_redis_builder(namespace, url, DEADLINE)
            .build()
            .expect("valid"),
    )
    .await
}

async fn ready(cache: Cache) -> Cache {
    wait_redis_ready(&cache, scaled(Duration::from_secs(10))).await;
    cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidation_whose_publish_missed_its_deadline_reaches_the_peers_once_redis_answers() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    // A's probes are 1 s apart and its breaker needs many failures: the slow moment below
    // stays a partial fault, never an outage with a recovery.
    let a = ready(
        fast_redis_builder("pubmiss", proxy.url(), DEADLINE)
            .probe_interval(Duration::from_secs(1))
            .failure_threshold(100)
            .build()
            .expect("valid"),
    )
    .await;
    let b = instance("pubmiss", server.url()).await;
    let origin = Origin::default();
    assert_eq!(read(&b, &origin).await, 0);
    assert_eq!(read(&a, &origin).await, 0);

    // A's connection turns slow: the UNLINK still lands (its deadline is the maintenance
    // one), the PUBLISH misses its 100 ms.
    proxy.delay(Duration::from_millis(300));
    let v1 = origin.bump();
    let report = a.invalidate(&Invalidation::new().key(key())).await;
    proxy.pass();
    assert!(
        matches!(report.redis, RedisOutcome::Journaled { .. }),
        "the lost publish is journaled: {report:?}"
    );
    assert!(a.status().last_outage.is_none(), "no outage was seen");

    let took = reads_eventually(&b, &origin, v1, Duration::from_secs(5)).await;
    println!("peer reads the new version {took:?} after the invalidation");
    assert_eq!(a.status().journal_len, 0, "the journal drained");
    assert!(
        a.status().last_outage.is_none(),
        "still no outage: drained while healthy"
    );
}

/// An axum app whose `POST /users/alice/groups` mutates the origin and invalidates the
/// user's key (`with_key`) and tag through `InvalidateLayer`.
fn membership_app(cache: &Cache, origin: &Origin, with_key: bool) -> Router {
    let mut layer =
        InvalidateLayer::new(cache.clone()).tag(KeyTemplate::parse("user:{u}").expect("template"));
    if with_key {
        layer = layer.key(KeyTemplate::parse("user:groups:{u}").expect("template"));
    }
    let origin = origin.clone();
    Router::new()
        .route(
            "/users/{u}/groups",
            post(move || {
                let origin = origin.clone();
                async move {
                    origin.bump();
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .layer(layer)
}

fn mutation() -> Request<Body> {
    Request::post("/users/alice/groups")
        .body(Body::empty())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutation_waits_one_command_deadline_when_redis_just_froze() {
    let server = RedisServer::start();
    let cache = instance("frozen", server.url()).await;
    let origin = Origin::default();
    assert_eq!(read(&cache, &origin).await, 0);
    // A tag only: its first step is an SSCAN page, which has no deadline of fred's own.
    let app = membership_app(&cache, &origin, false);

    server.freeze();
    let start = Instant::now();
    let res = app.oneshot(mutation()).await.expect("infallible");
    let waited = start.elapsed();
    server.resume();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    println!("the mutation's response took {waited:?} with Redis frozen");
    assert!(
        waited < DEADLINE + scaled(Duration::from_millis(300)),
        "a request waited {waited:?} for a frozen Redis; one command deadline is {DEADLINE:?}"
    );
    // The local store was cleaned before the response, and Redis gets it once it thaws.
    assert_eq!(read(&cache, &origin).await, 1);
    support::wait_until(
        scaled(Duration::from_secs(10)),
        "the key leaves Redis",
        || keys(&server, "frozen:*user:groups:alice").is_empty(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mutation_whose_response_is_dropped_still_invalidates_every_instance() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let a = ready(
        fast_redis_builder("dropped", proxy.url(), Duration::from_secs(1))
            .build()
            .expect("valid"),
    )
    .await;
    let b = instance("dropped", server.url()).await;
    let origin = Origin::default();
    assert_eq!(read(&a, &origin).await, 0);
    assert_eq!(read(&b, &origin).await, 0);
    let app = membership_app(&a, &origin, true);

    // Each of A's commands takes 200 ms: the caller gives up while the invalidation is
    // between Redis and the publish.
    proxy.delay(Duration::from_millis(200));
    let gave_up = tokio::time::timeout(Duration::from_millis(250), app.oneshot(mutation())).await;
    assert!(gave_up.is_err(), "the caller gave up before the response");
    assert_eq!(origin.read(), 1, "the mutation was committed");
    proxy.pass();

    let took = reads_eventually(&b, &origin, 1, Duration::from_secs(5)).await;
    println!("the other instance reads the new version {took:?} after the caller gave up");
    assert_eq!(read(&a, &origin).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushing_the_namespace_keeps_the_invalidation_log() {
    let server = RedisServer::start();
    let cache = instance("keeplog", server.url()).await;
    let origin = Origin::default();
    read(&cache, &origin).await;
    server.cmd(&[
        "RPUSH",
        "keeplog:~invlog",
        "an entry another instance reads",
    ]);
    let report = cache.flush_all().await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    assert!(
        keys(&server, "keeplog:user*").is_empty() && keys(&server, "keeplog:default:*").is_empty(),
        "the entries are flushed"
    );
    assert_eq!(
        keys(&server, "keeplog:~invlog"),
        ["keeplog:~invlog"],
        "the invalidation log survives the flush"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_from_an_older_snapshot_does_not_bring_an_invalidated_value_back() {
    let server = RedisServer::builder().save(true).start();
    let a = instance("restore", server.url()).await;
    let origin = Origin::default();
    assert_eq!(read(&a, &origin).await, 0);
    // The snapshot holds version 0; then the value changes and is invalidated.
    server.bgsave_and_wait();
    let snapshot = TempDir::new("restore-rdb");
    let rdb = snapshot.path().join("old.rdb");
    server.copy_rdb(&rdb);
    let v1 = origin.bump();
    assert_eq!(
        a.invalidate(&Invalidation::new().key(key())).await.redis,
        RedisOutcome::Applied
    );
    assert_eq!(read(&a, &origin).await, v1);

    // Redis crashes and comes back from the snapshot, seconds old.
    server.restart_from_rdb(&rdb);
    assert!(
        !keys(&server, "restore:*user:groups:alice").is_empty(),
        "the snapshot brought the old entry back"
    );
    // A second instance, started after the restore, reads through Redis.
    let b = instance("restore", server.url()).await;
    wait_redis_ready(&a, scaled(Duration::from_secs(10))).await;
    let took = reads_eventually(&b, &origin, v1, Duration::from_secs(5)).await;
    println!("the new instance reads the new version {took:?} after both are ready");
    assert_eq!(read(&a, &origin).await, v1);
}

/// A tag only: the first step of its Redis half is an SSCAN page, which has no deadline of
/// fred's own.
#[stormcache::invalidate(tags = ["user:{user}"], cache = cache, double_delete)]
async fn remove_from_group(cache: &Cache, origin: &Origin, user: &str) {
    let _ = user;
    origin.bump();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_double_delete_waits_one_command_deadline_when_redis_just_froze() {
    let server = RedisServer::start();
    let cache = instance("frozen2", server.url()).await;
    let origin = Origin::default();
    assert_eq!(read(&cache, &origin).await, 0);

    server.freeze();
    let start = Instant::now();
    remove_from_group(&cache, &origin, "alice").await;
    let waited = start.elapsed();
    server.resume();
    println!("the double delete took {waited:?} with Redis frozen");
    assert!(
        waited < DEADLINE + scaled(Duration::from_millis(300)),
        "a call waited {waited:?} for a frozen Redis; one command deadline is {DEADLINE:?}"
    );
    assert_eq!(read(&cache, &origin).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidations_published_while_an_instance_was_cut_off_reach_it_when_it_is_back() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let a = instance("cutoff", server.url()).await;
    // B reaches Redis, its subscriber included, through the proxy.
    let b = instance("cutoff", proxy.url()).await;
    let origin = Origin::default();
    assert_eq!(read(&a, &origin).await, 0);
    assert_eq!(read(&b, &origin).await, 0);

    // B is cut off (its connections reset, new ones refused): its breaker opens and its
    // channel goes down. A, healthy, invalidates meanwhile.
    proxy.reset();
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while b.redis_in_use() {
        assert!(
            Instant::now() < deadline,
            "B never noticed: {:?}",
            b.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v1 = origin.bump();
    assert_eq!(
        a.invalidate(&Invalidation::new().key(key())).await.redis,
        RedisOutcome::Applied
    );
    proxy.pass();
    wait_redis_ready(&b, scaled(Duration::from_secs(10))).await;
    let took = reads_eventually(&b, &origin, v1, Duration::from_secs(3)).await;
    println!("B reads the new version {took:?} after its channel is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidation_made_during_a_master_switch_reaches_every_instance() {
    let group = tokio::task::block_in_place(support::SentinelGroup::start);
    let builder = || {
        fast_redis_builder("switch", group.url(), Duration::from_millis(250))
            .build()
            .expect("valid")
    };
    let a = ready(builder()).await;
    let b = ready(builder()).await;
    let origin = Origin::default();
    assert_eq!(read(&a, &origin).await, 0);
    assert_eq!(read(&b, &origin).await, 0);

    // A manual failover with the old master alive; A invalidates while the instances move.
    tokio::task::block_in_place(|| group.failover());
    let v1 = origin.bump();
    a.invalidate(&Invalidation::new().key(key())).await;
    let took = reads_eventually(&b, &origin, v1, Duration::from_secs(5)).await;
    println!("B reads the new version {took:?} after the invalidation");
    // And it stays new once both have settled on the new master.
    wait_redis_ready(&a, scaled(Duration::from_secs(20))).await;
    wait_redis_ready(&b, scaled(Duration::from_secs(20))).await;
    assert_eq!(read(&b, &origin).await, v1);
    assert_eq!(read(&a, &origin).await, v1);
}

/// Writes the origin's next version through `cache.set`, as a write-through service does.
async fn write_through(cache: &Cache, origin: &Origin) -> u64 {
    let v = origin.bump();
    let options = EntryOptions::new().tag(Key::literal("user:alice").expect("valid tag"));
    cache.set(key(), v, &options).await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_redis_refused_does_not_leave_the_old_value_to_the_peers() {
    let server = RedisServer::start();
    let builder = || {
        fast_redis_builder("setrefused", server.url(), DEADLINE)
            .failure_threshold(100)
            .build()
            .expect("valid")
    };
    let a = ready(builder()).await;
    let b = ready(builder()).await;
    let origin = Origin::default();
    assert_eq!(read(&a, &origin).await, 0);
    assert_eq!(read(&b, &origin).await, 0);

    // Redis refuses writes for a moment (out of memory): A's SET fails, its PUBLISH does not.
    server.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    server.cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    let v1 = write_through(&a, &origin).await;
    server.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(read(&a, &origin).await, v1);
    let took = reads_eventually(&b, &origin, v1, Duration::from_secs(5)).await;
    println!("the peer reads the written version {took:?} after the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_made_while_redis_was_down_does_not_lose_to_the_old_value() {
    let server = RedisServer::builder().save(true).start();
    let a = instance("setdown", server.url()).await;
    let origin = Origin::default();
    assert_eq!(read(&a, &origin).await, 0);
    // Redis goes down with version 0 on disk; A writes version 1 meanwhile.
    server.bgsave_and_wait();
    server.kill();
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while a.redis_in_use() {
        assert!(
            Instant::now() < deadline,
            "A never noticed: {:?}",
            a.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v1 = write_through(&a, &origin).await;
    assert_eq!(read(&a, &origin).await, v1);
    tokio::task::block_in_place(|| server.restart());
    wait_redis_ready(&a, scaled(Duration::from_secs(10))).await;
    // A second instance reads through Redis, which came back with version 0.
    let b = instance("setdown", server.url()).await;
    let took = reads_eventually(&b, &origin, v1, Duration::from_secs(5)).await;
    println!("a new instance reads the written version {took:?} after both are ready");
    assert_eq!(read(&a, &origin).await, v1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undeclared_class_is_not_cached_in_another_class() {
    let server = RedisServer::start();
    let cache = ready(
        support::caches::with_permissions_and_resources(fast_redis_builder(
            "typo",
            server.url(),
            DEADLINE,
        ))
        .build()
        .expect("valid"),
    )
    .await;
    let loads = Arc::new(AtomicU64::new(0));
    // "permisions": a typo for the volatile class the outage flush empties.
    let options = EntryOptions::new().class("permisions");
    for _ in 0..2 {
        let loads = Arc::clone(&loads);
        let v: u64 = cache
            .get_or_load(key(), &options, || async move {
                loads.fetch_add(1, Ordering::SeqCst) + 1
            })
            .await;
        assert!(v >= 1);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 2, "not cached");
    assert!(
        keys(&server, "typo:*")
            .iter()
            .all(|k| !k.ends_with("user:groups:alice")),
        "nothing stored in Redis under another class: {:?}",
        keys(&server, "typo:*")
    );
    assert!(cache.has_class("permissions") && !cache.has_class("permisions"));
}

fn tagged(name: &str, i: usize) -> (Key, EntryOptions) {
    let key = Key::literal(&format!("{name}:{i}")).expect("valid key");
    let tag = Key::literal(&format!("user:{i}")).expect("valid tag");
    (key, EntryOptions::new().tag(tag))
}

/// Waits until `cache`'s backplane has received more than `count` messages.
async fn received_beyond(cache: &Cache, count: u64) {
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while cache.status().backplane.expect("on").received <= count {
        assert!(Instant::now() < deadline, "{:?}", cache.status());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_peer_tag_invalidations_leaves_the_other_local_entries_trusted() {
    // Far beyond the 32 messages fred buffers by default for a reader that is behind.
    const BURST: usize = 200;
    let server = RedisServer::start();
    let a = instance("burst", server.url()).await;
    let b = instance("burst", server.url()).await;
    for i in 0..BURST {
        let (key, options) = tagged("groups", i);
        b.get_or_load(key, &options, || async { 1u64 }).await;
    }
    let others: Vec<_> = (0..20).map(|i| tagged("profile", BURST + i)).collect();
    for (key, options) in &others {
        b.get_or_load(key.clone(), options, || async { 1u64 }).await;
    }
    let before = b.status().backplane.expect("on");

    // A invalidates every user's tag at once: B gets the messages as one burst.
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..BURST {
        let (a, (_, options)) = (a.clone(), tagged("groups", i));
        let inv = Invalidation::new().tag(options.tag_list()[0].clone());
        burst.spawn(async move { a.invalidate(&inv).await });
    }
    while burst.join_next().await.is_some() {}
    // Every invalidated entry is gone from B's local store.
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while (0..BURST).any(|i| {
        let (key, options) = tagged("groups", i);
        b.get_local::<u64>(key, &options).is_ok()
    }) {
        assert!(Instant::now() < deadline, "{:?}", b.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let after = b.status().backplane.expect("on");
    assert!(after.connected, "{after:?}");
    assert_eq!(
        after.reconciliations, before.reconciliations,
        "no gap: B never distrusted its local store"
    );
    let counted = b.counters();
    for (key, options) in &others {
        let got = b.get_or_load(key.clone(), options, || async { 2u64 }).await;
        assert_eq!(got, 1, "an entry no invalidation named is kept");
    }
    let now = b.counters();
    assert_eq!(now.l1_hits - counted.l1_hits, others.len() as u64);
    assert_eq!(
        (now.l2_hits, now.loader_calls),
        (counted.l2_hits, counted.loader_calls)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_in_flight_is_stored_while_a_peer_invalidates_a_tag_it_does_not_carry() {
    let server = RedisServer::start();
    let a = instance("inflight", server.url()).await;
    let b = instance("inflight", server.url()).await;
    // Their shards differ (a shared one would only cost this store).
    let (key, options) = tagged("profile", 1);
    let (_, invalidated) = tagged("groups", 2);
    let (started, loading) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn({
        let (b, key, options) = (b.clone(), key.clone(), options.clone());
        async move {
            let loader = || async move {
                let _ = started.send(());
                let _ = released.await;
                1u64
            };
            b.get_or_load(key, &options, loader).await
        }
    });
    loading.await.expect("the load started");
    let received = b.status().backplane.expect("on").received;
    let inv = Invalidation::new().tag(invalidated.tag_list()[0].clone());
    a.invalidate(&inv).await;
    received_beyond(&b, received).await;
    release.send(()).expect("the load waits");
    assert_eq!(load.await.expect("no panic"), 1);

    let counted = b.counters();
    assert_eq!(b.get_or_load(key, &options, || async { 2u64 }).await, 1);
    assert_eq!(
        b.counters().l1_hits,
        counted.l1_hits + 1,
        "stored: an L1 hit"
    );
}

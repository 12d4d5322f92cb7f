//! The cache-aside race across instances, on real Redis: instance A misses, reads the origin,
//! and writes back slowly; meanwhile instance B changes the origin and invalidates. A's write
//! must not bring the old value back into Redis, whether the invalidation named the key or a
//! tag of the entry, and whatever A's own process has heard of it.
//!
//! B runs without its invalidation channel here, so A does not hear of B's invalidation: A
//! stands for an instance whose write goes out before B's message reaches it, which no
//! in-process fence can cover. C, a third instance, is the reader.

#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormcache::{Cache, EntryOptions, Invalidation, Key, RedisOutcome};
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::{scaled, ClusterGroup, RedisServer};
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_millis(200);

fn key() -> Key {
    Key::literal("user:groups:alice").expect("valid key")
}

fn tag() -> Key {
    Key::literal("user:alice").expect("valid tag")
}

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

async fn ready(cache: Cache) -> Cache {
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while !cache.redis_in_use() {
        assert!(
            Instant::now() < deadline,
            "never used Redis: {:?}",
            cache.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cache
}

/// A normal instance on `url`.
async fn instance(namespace: &str, url: &str) -> Cache {
    let cache = fast_redis_builder(namespace, url.to_owned(), DEADLINE)
        .build()
        .expect("valid");
    wait_redis_ready(&cache, scaled(Duration::from_secs(10))).await;
    cache
}

/// A and C, normal instances, and B, whose channel is off, on `url`.
async fn instances(namespace: &str, url: &str) -> (Cache, Cache, Cache) {
    let b = ready(
        fast_redis_builder(namespace, url.to_owned(), DEADLINE)
            .backplane(false)
            .build()
            .expect("valid"),
    )
    .await;
    (
        instance(namespace, url).await,
        b,
        instance(namespace, url).await,
    )
}

fn options() -> EntryOptions {
    EntryOptions::new().tag(tag())
}

async fn read(cache: &Cache, origin: &Origin) -> u64 {
    let origin = origin.clone();
    cache
        .get_or_load(key(), &options(), || async move { origin.read() })
        .await
}

/// Starts a load on `a` that reads the origin at once and returns what it read when
/// `release` fires; returns once the origin was read.
async fn slow_load(
    a: &Cache,
    origin: &Origin,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<u64>) {
    let (read_tx, read_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (a, origin) = (a.clone(), origin.clone());
    let load = tokio::spawn(async move {
        a.get_or_load(key(), &options(), move || async move {
            let value = origin.read();
            let _ = read_tx.send(());
            let _ = release_rx.await;
            value
        })
        .await
    });
    read_rx.await.expect("the loader ran");
    (release_tx, load)
}

/// B invalidates with `inv` while A's load of the old version is in flight; then A's load
/// finishes. C must read the new version from then on (within `bound`).
async fn race(url: &str, namespace: &str, inv: Invalidation, bound: Duration) {
    let (a, b, c) = instances(namespace, url).await;
    let origin = Origin::default();
    let (release, load) = slow_load(&a, &origin).await;

    let v1 = origin.bump();
    let report = b.invalidate(&inv).await;
    assert_eq!(
        report.redis,
        RedisOutcome::Applied,
        "invalidation reached Redis: {report:?}"
    );
    release.send(()).expect("load still waiting");
    assert_eq!(
        load.await.expect("load task"),
        0,
        "A's load read before the change"
    );

    // A's write is done (or refused) when its load returns; whatever it did, C reads the
    // new version, from Redis or the origin, within the bound and from then on.
    let start = Instant::now();
    loop {
        let got = read(&c, &origin).await;
        if got == v1 {
            break;
        }
        assert!(
            start.elapsed() < scaled(bound),
            "C still reads version {got} {:?} after A's late write (bound {bound:?})",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And it stays so: the old value is not in Redis any more.
    let fresh = instance(namespace, url).await;
    for _ in 0..5 {
        assert_eq!(read(&c, &origin).await, v1);
        assert_eq!(
            read(&fresh, &origin).await,
            v1,
            "a new instance reads Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_that_read_before_a_key_invalidation_does_not_write_the_old_value_back() {
    let server = RedisServer::start();
    // The key's write is refused by Redis itself: B never reads the old value.
    race(
        &server.url(),
        "lease-key",
        Invalidation::new().key(key()),
        Duration::ZERO,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_load_that_read_before_a_tag_invalidation_does_not_keep_the_old_value() {
    let server = RedisServer::start();
    // The entry was not in the tag's set yet when B invalidated it: A's write lands, and is
    // buried once A sees the tag moved.
    race(
        &server.url(),
        "lease-tag",
        Invalidation::new().tag(tag()),
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_neither_a_key_nor_a_tag_invalidation_is_undone_by_a_late_load() {
    let cluster = ClusterGroup::start();
    race(
        &cluster.url(),
        "lease-cluster-key",
        Invalidation::new().key(key()),
        Duration::ZERO,
    )
    .await;
    race(
        &cluster.url(),
        "lease-cluster-tag",
        Invalidation::new().tag(tag()),
        Duration::from_millis(500),
    )
    .await;
}

//! Multi-instance coherence, on real `redis-server` processes started by the bench.
//!
//! Each section is one function, run from [`run`]; `cargo bench --bench coherence -- NAME`
//! runs only the sections whose name contains `NAME`.
//!
//! - `tags_standalone`, `tags_cluster`: a tag carried by 100,000 entries, invalidated through [`Cache::invalidate_tag`]
//!   (local store and Redis) by the instance that wrote them. `tag_invalidate_100k_ms`
//!   (standalone) and `tag_invalidate_100k_cluster_ms` (3-master Cluster), target ≤ 1000;
//!   `tag_invalidate_max_block_ms` / `..._cluster_ms`: the longest any single command ran
//!   on a Redis server meanwhile, from Redis's own SLOWLOG (execution time, the time every
//!   other client of that server waited), target < 10.
//! - `propagation`: three instances on one standalone server; A removes a key that B and C
//!   hold in their local stores, 500 times per run. `invalidation_propagation_p50_ms` /
//!   `_p99_ms`: from the start of A's call until the key is gone from both B's and C's local
//!   store, target ≤ 50. Beside it, the raw baseline in the same run: `raw_pubsub_p50_ms` /
//!   `_p99_ms`, a PUBLISH by one plain fred client until another's subscription has it, and
//!   `invalidation_propagation_vs_raw_pubsub_p50` (the median of the runs' ratios).
//! - `stampede`: 1,000 concurrent callers of one cold key spread over three instances, the
//!   loader taking 50 ms. `stampede_3_instances_loader_calls` with
//!   [`EntryOptions::distributed_lock`] (target 1); beside it the same without the lock
//!   (`stampede_3_instances_no_lock_loader_calls`: one load per instance), and the time
//!   until every caller has its value, with and without (`..._wall_ms`).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::time::{Duration, Instant};

use common::{figure, percentile_us, summarize};
use futures_util::StreamExt;
use stormcache::{Cache, EntryOptions, Key, RedisOutcome};
use support::{slowlog_entries, slowlog_start, ClusterGroup, RedisServer};

fn main() {
    common::runtime().block_on(run());
}

/// Whether the section `name` was asked for (no filter: every section).
fn selected(name: &str) -> bool {
    // cargo passes `--bench`; the other arguments are filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

async fn run() {
    if selected("tags_standalone") {
        tags_standalone().await;
    }
    if selected("tags_cluster") {
        tags_cluster().await;
    }
    if selected("propagation") {
        propagation().await;
    }
    if selected("stampede") {
        stampede().await;
    }
}

async fn connected(cache: Cache) -> Cache {
    let started = Instant::now();
    while !cache.redis_in_use() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "cache never started using Redis: {:?}",
            cache.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cache
}

// --- tags ------------------------------------------------------------------------------

/// Entries carrying the invalidated tag.
const TAG_ENTRIES: u64 = 100_000;
/// Timed invalidations per topology (after one warm-up).
const TAG_RUNS: usize = 5;
/// Concurrent writers filling the cache before each run.
const TAG_WRITERS: usize = 64;

async fn tags_standalone() {
    let server = RedisServer::start();
    tag_invalidation(server.url(), &[server.port()], "").await;
}

async fn tags_cluster() {
    let cluster = ClusterGroup::start();
    tag_invalidation(cluster.url(), &cluster.master_ports(), "_cluster").await;
}

/// Fills, then invalidates, a 100,000-entry tag `TAG_RUNS` times on the deployment at `url`
/// (whose masters are `masters`), and prints its two figures, their names ending in `suffix`.
async fn tag_invalidation(url: String, masters: &[u16], suffix: &str) {
    let cache = connected(
        Cache::builder("bench")
            .redis_url(url)
            .default_ttl(Duration::from_secs(3600))
            // Filling is a burst on two cores: a slow write must not count as an outage.
            .command_timeout(Duration::from_secs(1))
            .build()
            .expect("cache"),
    )
    .await;
    let tag = Key::literal("bench-tag").expect("valid tag");
    let options = EntryOptions::new().tag(tag.clone());
    let (mut took_ms, mut block_ms) = (Vec::new(), Vec::new());
    for run in 0..=TAG_RUNS {
        futures_util::stream::iter(0..TAG_ENTRIES)
            .for_each_concurrent(TAG_WRITERS, |i| {
                let (cache, options) = (&cache, &options);
                async move {
                    cache
                        .set(Key::builder("item:").value(i).build(), i, options)
                        .await;
                }
            })
            .await;
        // Log every command (threshold 0) and keep them all: the longest is the figure.
        slowlog_start(masters, 0, 2 * TAG_ENTRIES);
        let started = Instant::now();
        let report = cache.invalidate_tag(&tag).await;
        let took = started.elapsed();
        let slowest = slowlog_entries(masters)
            .into_iter()
            .max_by_key(|e| e.micros)
            .expect("the invalidation's commands are logged");
        assert_eq!(report.redis, RedisOutcome::Applied);
        assert_eq!(
            report.redis_keys_removed, TAG_ENTRIES,
            "every entry removed"
        );
        if run > 0 {
            took_ms.push(took.as_secs_f64() * 1000.0);
            block_ms.push(slowest.micros as f64 / 1000.0);
        }
        if run == TAG_RUNS {
            println!("#      slowest command of the last run: {slowest:?}");
        }
    }
    // Back to the default, so other sections' commands are not all logged.
    slowlog_start(masters, 10_000, 128);
    figure(
        &format!("tag_invalidate_100k{suffix}_ms"),
        summarize(took_ms),
        "ms",
    );
    let worst = block_ms.iter().copied().fold(0.0, f64::max);
    figure(
        &format!("tag_invalidate_max_block{suffix}_ms"),
        summarize(block_ms),
        "ms",
    );
    println!("#      tag_invalidate_max_block{suffix}_ms: worst of all runs {worst:.3} ms");
}

// --- propagation -------------------------------------------------------------------------

/// Invalidations timed per run.
const PROPAGATION_INVALIDATIONS: usize = 500;
/// Timed runs (after one warm-up run); each also times the raw pub/sub baseline.
const PROPAGATION_RUNS: usize = 5;
/// Longer than this, an invalidation counts as lost and the bench fails.
const PROPAGATION_GIVE_UP: Duration = Duration::from_secs(5);

/// Three instances (each its own connections and subscriber) on one standalone server that
/// the bench starts, all using Redis with a confirmed invalidation channel.
async fn three_instances(url: &str, namespace: &str) -> [Cache; 3] {
    let build = || {
        Cache::builder(namespace)
            .redis_url(url.to_owned())
            .default_ttl(Duration::from_secs(3600))
            .build()
            .expect("cache")
    };
    let instances = [build(), build(), build()];
    for cache in &instances {
        let started = Instant::now();
        while !(cache.redis_in_use() && cache.coherent()) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "instance never used Redis with a confirmed channel: {:?}",
                cache.status()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    instances
}

/// `invalidation_propagation_p50_ms` / `_p99_ms`: A removes a key that B and C hold in their
/// local stores; the time from the start of A's call until the key is gone from both B's and
/// C's local store (spinning on [`Cache::get_local`]), over `PROPAGATION_INVALIDATIONS`
/// keys per run. The same run times the raw baseline: a PUBLISH by one fred client until
/// another fred client's subscription has the message, measured the same way (`raw_pubsub_*`),
/// and the ratio of the two p50s (per run; the median of the runs' ratios).
async fn propagation() {
    let server = RedisServer::start();
    let [a, b, c] = three_instances(&server.url(), "bench-coherence").await;
    let raw = RawPubsub::start(&server.url()).await;
    let opts = EntryOptions::new();
    let (mut p50, mut p99, mut raw_p50, mut raw_p99, mut ratio) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let reconciliations = |cache: &Cache| cache.status().backplane.map_or(0, |s| s.reconciliations);
    let gaps_before = reconciliations(&b) + reconciliations(&c);
    for run in 0..=PROPAGATION_RUNS {
        let mut raw_samples = raw.round_trips(PROPAGATION_INVALIDATIONS).await;
        let mut samples = Vec::with_capacity(PROPAGATION_INVALIDATIONS);
        for i in 0..PROPAGATION_INVALIDATIONS {
            let key = Key::builder("propagation:")
                .value(run * PROPAGATION_INVALIDATIONS + i)
                .build();
            // Loaded (not `set`, which also tells B and C to drop their copies: a message
            // that could arrive after they read it below).
            let value: u64 = a
                .get_or_load(key.clone(), &opts, || async { i as u64 })
                .await;
            assert_eq!(value, i as u64, "a fresh key");
            for holder in [&b, &c] {
                let value: u64 = holder
                    .get_or_load(key.clone(), &opts, || async { u64::MAX })
                    .await;
                assert_eq!(value, i as u64, "read from Redis, not loaded");
                assert!(
                    holder.get_local::<u64>(key.clone(), &opts).is_ok(),
                    "held in the local store"
                );
            }
            let started = Instant::now();
            let invalidation = tokio::spawn({
                let (a, key) = (a.clone(), key.clone());
                async move { a.remove(&key).await }
            });
            // Spin (yielding the core) until both have dropped it.
            let (mut b_gone, mut c_gone) = (None, None);
            while b_gone.is_none() || c_gone.is_none() {
                for (holder, gone) in [(&b, &mut b_gone), (&c, &mut c_gone)] {
                    if gone.is_none() && holder.get_local::<u64>(key.clone(), &opts).is_err() {
                        *gone = Some(started.elapsed());
                    }
                }
                assert!(
                    started.elapsed() < PROPAGATION_GIVE_UP,
                    "invalidation {i} not propagated within {PROPAGATION_GIVE_UP:?}: B {:?}, C {:?}",
                    b.status().backplane,
                    c.status().backplane
                );
                std::thread::yield_now();
            }
            samples.push(b_gone.max(c_gone).expect("both gone"));
            let report = invalidation.await.expect("invalidation task");
            assert_eq!(report.redis, RedisOutcome::Applied);
        }
        if run > 0 {
            let (ours, theirs) = (
                percentile_us(&mut samples, 50.0) / 1000.0,
                percentile_us(&mut raw_samples, 50.0) / 1000.0,
            );
            p50.push(ours);
            p99.push(percentile_us(&mut samples, 99.0) / 1000.0);
            raw_p50.push(theirs);
            raw_p99.push(percentile_us(&mut raw_samples, 99.0) / 1000.0);
            ratio.push(ours / theirs);
        }
    }
    assert_eq!(
        reconciliations(&b) + reconciliations(&c),
        gaps_before,
        "a gap in the channel during the runs: local entries were distrusted, not invalidated"
    );
    let received = |cache: &Cache| cache.status().backplane.map_or(0, |s| s.received);
    println!(
        "#      {PROPAGATION_RUNS} runs of {PROPAGATION_INVALIDATIONS} invalidations (+1 warm-up run); \
         B received {}, C received {}",
        received(&b),
        received(&c)
    );
    figure("invalidation_propagation_p50_ms", summarize(p50), "ms");
    figure("invalidation_propagation_p99_ms", summarize(p99), "ms");
    figure("raw_pubsub_p50_ms", summarize(raw_p50), "ms");
    figure("raw_pubsub_p99_ms", summarize(raw_p99), "ms");
    figure(
        "invalidation_propagation_vs_raw_pubsub_p50",
        summarize(ratio),
        "x",
    );
}

/// The baseline: two plain fred clients, one publishing, one subscribed.
struct RawPubsub {
    publisher: fred::clients::Client,
    /// Kept for the life of the baseline.
    _subscriber: fred::clients::SubscriberClient,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    listener: tokio::task::JoinHandle<()>,
}

const RAW_CHANNEL: &str = "bench-raw-pubsub";

impl RawPubsub {
    async fn start(url: &str) -> RawPubsub {
        use fred::prelude::{Builder, ClientLike, Config, EventInterface, PubsubInterface};
        let config = Config::from_url(url).expect("url");
        let publisher = Builder::from_config(config.clone())
            .build()
            .expect("publisher");
        publisher.init().await.expect("publisher connects");
        let subscriber = Builder::from_config(config)
            .build_subscriber_client()
            .expect("subscriber");
        subscriber.init().await.expect("subscriber connects");
        subscriber.subscribe(RAW_CHANNEL).await.expect("subscribed");
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut messages = subscriber.message_rx();
        let listener = tokio::spawn({
            let received = received.clone();
            async move {
                loop {
                    let message = match messages.recv().await {
                        Ok(message) => message,
                        // Only the highest number counts, so a lagging reader loses nothing.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    };
                    // The payload is the message's number: counts messages in order.
                    if let Some(n) = message.value.as_u64() {
                        received.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        });
        RawPubsub {
            publisher,
            _subscriber: subscriber,
            received,
            listener,
        }
    }

    /// Publishes `n` messages one at a time, each from a spawned task, timing each until the
    /// subscriber's task has it (spinning, like the propagation figure).
    async fn round_trips(&self, n: usize) -> Vec<Duration> {
        use fred::prelude::PubsubInterface;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let seq = self.received.load(std::sync::atomic::Ordering::SeqCst) + 1;
            let started = Instant::now();
            let publish = tokio::spawn({
                let publisher = self.publisher.clone();
                async move { publisher.publish::<i64, _, _>(RAW_CHANNEL, seq).await }
            });
            while self.received.load(std::sync::atomic::Ordering::SeqCst) < seq {
                assert!(
                    started.elapsed() < PROPAGATION_GIVE_UP,
                    "raw message {seq} not received"
                );
                std::thread::yield_now();
            }
            samples.push(started.elapsed());
            let receivers = publish.await.expect("publish task").expect("published");
            assert_eq!(receivers, 1, "one subscriber");
        }
        samples
    }
}

impl Drop for RawPubsub {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

// --- stampede ----------------------------------------------------------------------------

/// Concurrent cold callers per run, spread round-robin over the three instances.
const STAMPEDE_CALLERS: usize = 1000;
/// Timed runs (after one warm-up run).
const STAMPEDE_RUNS: usize = 5;
/// How long the loader takes.
const STAMPEDE_LOAD: Duration = Duration::from_millis(50);

/// `stampede_3_instances_loader_calls`: `STAMPEDE_CALLERS` callers of one cold key, spread
/// over three instances, all released at once, with [`EntryOptions::distributed_lock`];
/// loader calls in total (target 1). Beside it, the same without the lock
/// (`stampede_3_instances_no_lock_loader_calls`: one load per instance), and the wall time
/// until every caller has its value, with and without.
async fn stampede() {
    let server = RedisServer::start();
    let instances = three_instances(&server.url(), "bench-stampede").await;
    let variants = [
        (
            "",
            EntryOptions::new().distributed_lock(Duration::from_secs(2)),
        ),
        ("_no_lock", EntryOptions::new()),
    ];
    let mut calls: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let lock_waits =
        |instances: &[Cache; 3]| -> u64 { instances.iter().map(|c| c.counters().lock_waits).sum() };
    let waits_before = lock_waits(&instances);
    for run in 0..=STAMPEDE_RUNS {
        for (v, (name, opts)) in variants.iter().enumerate() {
            let key = Key::builder("stampede:")
                .value(format!("{run}{name}"))
                .build();
            let loads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(STAMPEDE_CALLERS + 1));
            let callers: Vec<_> = (0..STAMPEDE_CALLERS)
                .map(|i| {
                    let cache = instances[i % 3].clone();
                    let (key, opts, loads, barrier) =
                        (key.clone(), opts.clone(), loads.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        cache
                            .get_or_load(key, &opts, || async {
                                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                tokio::time::sleep(STAMPEDE_LOAD).await;
                                7u64
                            })
                            .await
                    })
                })
                .collect();
            barrier.wait().await;
            let started = Instant::now();
            for caller in callers {
                assert_eq!(caller.await.expect("caller"), 7);
            }
            if run > 0 {
                wall[v].push(started.elapsed().as_secs_f64() * 1000.0);
                calls[v].push(loads.load(std::sync::atomic::Ordering::SeqCst) as f64);
            }
        }
    }
    let worst = calls[0].iter().copied().fold(0.0, f64::max);
    println!(
        "#      {STAMPEDE_RUNS} runs of {STAMPEDE_CALLERS} callers over 3 instances, loader {STAMPEDE_LOAD:?}; \
         most loader calls in one run with the lock: {worst}; lock waits: {}",
        lock_waits(&instances) - waits_before
    );
    for (v, (name, _)) in variants.iter().enumerate() {
        figure(
            &format!("stampede_3_instances{name}_loader_calls"),
            summarize(calls[v].clone()),
            "calls",
        );
        figure(
            &format!("stampede_3_instances{name}_wall_ms"),
            summarize(wall[v].clone()),
            "ms",
        );
    }
}

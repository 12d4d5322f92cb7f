//! What an outage costs a service using stormcache, on real processes.
//!
//! - `blackhole_detect_ms`: from a TCP blackhole (the harness's proxy) to the open circuit;
//! - `blackhole_p99_added_us`: p99 latency of cached calls after detection minus before the
//!   fault; `blackhole_errors`: calls that failed or hung;
//! - `freeze_max_call_ms`: the longest cached call while the server is SIGSTOPped;
//! - `sentinel_kill_errors`, `sentinel_kill_l2_back_ms`: a Sentinel master SIGKILLed under
//!   load, and the time from the new master's promotion to the first read served by Redis.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{figure, percentile_us, summarize};
use stormcache::{Cache, EntryOptions, HealthState, Key, Origin};
use support::{FaultProxy, RedisServer, SentinelGroup};

const TIMEOUT: Duration = Duration::from_millis(100);

fn cache(url: String) -> Cache {
    Cache::builder("bench")
        .redis_url(url)
        .command_timeout(TIMEOUT)
        .probe_interval(Duration::from_millis(100))
        .reconnect_delay(Duration::from_millis(50))
        .build()
        .expect("cache")
}

async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

/// Cached calls in a loop, recording each call's latency and errors.
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<(Instant, Duration)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(cache: &Cache) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (cache, stop, errors, samples) =
                (cache.clone(), stop.clone(), errors.clone(), samples.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                // Short TTLs: a steady share of reads reaches Redis (or would).
                let opts = EntryOptions::new().ttl(Duration::from_millis(200));
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = Key::builder("load:").value(i % 500).build();
                    let started = Instant::now();
                    let r: Result<u64, ()> = tokio::time::timeout(
                        Duration::from_secs(2),
                        cache.try_get_or_load(key, &opts, || async move { Ok(i) }),
                    )
                    .await
                    .unwrap_or(Err(()));
                    let took = started.elapsed();
                    if r.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut s) = samples.lock() {
                        s.push((started, took));
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        Load {
            stop,
            errors,
            samples,
            task,
        }
    }

    async fn finish(self) -> (u64, Vec<(Instant, Duration)>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        (self.errors.load(Ordering::Relaxed), samples)
    }
}

fn main() {
    common::runtime().block_on(run());
}

async fn run() {
    // --- blackhole ---------------------------------------------------------------------
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let c = cache(proxy.url());
    until(Duration::from_secs(10), || c.redis_in_use()).await;
    let (mut detect, mut added, mut errors) = (Vec::new(), Vec::new(), 0u64);
    for _ in 0..5 {
        let load = Load::start(&c);
        tokio::time::sleep(Duration::from_millis(500)).await; // steady state before the fault
        let fault = Instant::now();
        proxy.blackhole();
        let took = until(Duration::from_secs(5), || {
            c.status().state == HealthState::Down
        })
        .await;
        let detected = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await; // steady state while down
        let (errs, samples) = load.finish().await;
        errors += errs;
        let mut before: Vec<Duration> = samples
            .iter()
            .filter(|(t, _)| *t < fault)
            .map(|s| s.1)
            .collect();
        let mut after: Vec<Duration> = samples
            .iter()
            .filter(|(t, _)| *t > detected)
            .map(|s| s.1)
            .collect();
        detect.push(took.as_secs_f64() * 1000.0);
        added.push(percentile_us(&mut after, 99.0) - percentile_us(&mut before, 99.0));
        proxy.pass();
        until(Duration::from_secs(10), || c.redis_in_use()).await;
    }
    figure("blackhole_detect_ms", summarize(detect), "ms");
    figure("blackhole_p99_added_us", summarize(added), "us");
    println!("figure blackhole_errors {errors} calls");
    drop(c);
    drop(proxy);

    // --- freeze ------------------------------------------------------------------------
    let c = cache(server.url());
    until(Duration::from_secs(10), || c.redis_in_use()).await;
    let mut longest = Vec::new();
    for _ in 0..3 {
        let load = Load::start(&c);
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.freeze();
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.resume();
        until(Duration::from_secs(10), || c.redis_in_use()).await;
        let (errs, samples) = load.finish().await;
        assert_eq!(errs, 0, "calls failed during a freeze");
        let max = samples.iter().map(|s| s.1).max().unwrap_or_default();
        longest.push(max.as_secs_f64() * 1000.0);
    }
    figure("freeze_max_call_ms", summarize(longest), "ms");
    drop(c);
    drop(server);

    // --- Sentinel master SIGKILL ---------------------------------------------------------
    let (mut back, mut errors) = (Vec::new(), 0u64);
    for _ in 0..3 {
        let group = SentinelGroup::start();
        let c = cache(group.url());
        until(Duration::from_secs(10), || c.redis_in_use()).await;
        for i in 0..2000u32 {
            c.set(
                Key::builder("pre:").value(i).build(),
                i,
                &EntryOptions::new().ttl(Duration::from_secs(600)),
            )
            .await;
        }
        group.wait_for_replicas(2, Duration::from_secs(10));
        let probe = Cache::builder("bench")
            .redis_url(group.url())
            .command_timeout(TIMEOUT)
            .probe_interval(Duration::from_millis(100))
            .build()
            .expect("cache");
        until(Duration::from_secs(10), || probe.redis_in_use()).await;
        let load = Load::start(&c);
        let old = group.kill_master();
        group.wait_for_new_master(old, Duration::from_secs(30));
        let promoted = Instant::now();
        // First read answered by Redis: each key is read once, so L1 never answers.
        let mut i = 0u32;
        loop {
            let f = probe
                .fetch(
                    Key::builder("pre:").value(i).build(),
                    &EntryOptions::new(),
                    || async { Ok::<u32, ()>(0) },
                )
                .await
                .expect("infallible");
            if f.origin == Origin::Redis {
                break;
            }
            i += 1;
            assert!(
                i < 2000 && promoted.elapsed() < Duration::from_secs(20),
                "L2 never came back"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        back.push(promoted.elapsed().as_secs_f64() * 1000.0);
        let (errs, _) = load.finish().await;
        errors += errs;
    }
    println!("figure sentinel_kill_errors {errors} calls");
    figure("sentinel_kill_l2_back_ms", summarize(back), "ms");
}

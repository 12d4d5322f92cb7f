//! The hot path beside its raw baselines, measured in one run.
//!
//! - `l1_hit_ns` vs `raw_moka_get_ns`: a read-through that hits the local store (key built
//!   from a template with one argument) against a bare `moka::sync::Cache::get` of a prebuilt
//!   key, same value type;
//! - `l2_hit_p50_us` vs `raw_fred_get_p50_us`: a read that misses L1 and hits Redis (1 KiB
//!   value) against a bare fred GET, sequentially;
//! - `l2_hit_c64_ops` vs `raw_fred_get_c64_ops`: the same with 64 concurrent tasks; beside
//!   them `raw_fred_get_fill_c64_ops`, the raw GET whose bytes are then put in a raw moka
//!   cache (the floor of a read that fills L1), and `l2_hit_no_fill_c64_ops`, our read
//!   with `skip_local` (Redis only);
//! - `l1_bytes_per_entry` vs `raw_moka_bytes_per_entry`: heap bytes per entry with 1 KiB
//!   values, 100k entries, counted by a wrapping global allocator; beside them
//!   `moka_as_store_bytes_per_entry`, moka configured as a store of typed values with
//!   per-entry deadlines needs (per-entry expiry, an eviction listener, the value behind an
//!   `Arc` with its metadata).
//!
//! It starts its own `redis-server` on a free loopback port (the test harness's).

#[path = "../tests/support/mod.rs"]
mod support;

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{figure, figure1, percentile_us, repeat, summarize};
use fred::prelude::{Builder, ClientLike, Config, KeysInterface, ReconnectPolicy};
use stormcache::{Cache, EntryOptions, Key, LocalCapacity};

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RUNS: usize = 5;
const VALUE_1K: usize = 1024;

fn main() {
    let rt = common::runtime();
    // Caches with Redis start their connection on this runtime.
    let _runtime = rt.enter();
    // --- Bytes per 1 KiB entry: first, while nothing else runs (the allocator count is
    // global, and a task freeing memory meanwhile would be subtracted). ---------------------
    let opts = EntryOptions::new();
    let n = 100_000u32;
    let big = "v".repeat(VALUE_1K);
    let raw_bytes = {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let m: moka::sync::Cache<String, String> = moka::sync::Cache::new(u64::from(n) * 2);
        for i in 0..n {
            m.insert(format!("user:groups:{i}"), big.clone());
        }
        m.run_pending_tasks();
        let used = ALLOCATED.load(Ordering::Relaxed).saturating_sub(before);
        drop(m);
        used as f64 / f64::from(n)
    };
    // moka as a store of typed values with per-entry deadlines needs it: per-entry expiry,
    // an eviction listener, and the value type-erased behind an `Arc` with 56 bytes of
    // metadata (two deadlines, a weight, a write time, a tag pointer).
    let moka_as_store_bytes = {
        struct Expiry;
        impl moka::Expiry<String, Arc<dyn std::any::Any + Send + Sync>> for Expiry {
            fn expire_after_create(
                &self,
                _: &String,
                _: &Arc<dyn std::any::Any + Send + Sync>,
                _: std::time::Instant,
            ) -> Option<Duration> {
                Some(Duration::from_secs(3600))
            }
        }
        let before = ALLOCATED.load(Ordering::Relaxed);
        let m: moka::sync::Cache<String, Arc<dyn std::any::Any + Send + Sync>> =
            moka::sync::Cache::builder()
                .max_capacity(u64::from(n) * 2)
                .expire_after(Expiry)
                .eviction_listener(|_, _, _| {})
                .build();
        for i in 0..n {
            let value: Arc<dyn std::any::Any + Send + Sync> = Arc::new(([0u64; 7], big.clone()));
            m.insert(format!("user:groups:{i}"), value);
        }
        m.run_pending_tasks();
        let used = ALLOCATED.load(Ordering::Relaxed).saturating_sub(before);
        drop(m);
        used as f64 / f64::from(n)
    };
    let l1_bytes = {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let c = Cache::builder("mem")
            .local_capacity(LocalCapacity::Entries(u64::from(n) * 2))
            .build()
            .expect("cache");
        rt.block_on(async {
            for i in 0..n {
                c.set(
                    Key::builder("user:groups:").value(i).build(),
                    big.clone(),
                    &opts,
                )
                .await;
            }
        });
        let entries = c.local_entry_count();
        let used = ALLOCATED.load(Ordering::Relaxed).saturating_sub(before);
        assert_eq!(entries, u64::from(n), "every entry stayed");
        drop(c);
        used as f64 / f64::from(n)
    };
    figure1("raw_moka_bytes_per_entry", raw_bytes, "B");
    figure1("l1_bytes_per_entry", l1_bytes, "B");
    figure1("l1_bytes_vs_raw_moka", l1_bytes / raw_bytes, "x");
    figure1("moka_as_store_bytes_per_entry", moka_as_store_bytes, "B");
    figure1(
        "l1_bytes_vs_moka_as_store",
        l1_bytes / moka_as_store_bytes,
        "x",
    );
    let server = support::RedisServer::start();
    println!(
        "# hot_path: redis-server {} on {}",
        redis_version(&server),
        server.addr()
    );

    // --- L1 hit vs raw moka get -------------------------------------------------------
    let value = "g".repeat(64);
    let raw: moka::sync::Cache<String, String> = moka::sync::Cache::new(10_000);
    let cache = Cache::builder("bench").build().expect("cache");
    for i in 0..1000u32 {
        raw.insert(format!("user:groups:{i}"), value.clone());
    }
    warm(&rt, &cache, &value);
    let prebuilt: Vec<String> = (0..1000).map(|i| format!("user:groups:{i}")).collect();
    let iters = 400_000u64;
    // The first pair is a warm-up, left out.
    let (l1_runs, raw_runs) = l1_beside_raw(&rt, &cache, &raw, &prebuilt, iters);
    let raw_moka = summarize(raw_runs.clone());
    let l1 = summarize(l1_runs.clone());
    figure("raw_moka_get_ns", raw_moka, "ns");
    figure("l1_hit_ns", l1, "ns");
    figure(
        "l1_hit_vs_raw_moka",
        summarize(ratios_of(&l1_runs, &raw_runs)),
        "x",
    );
    // Where the difference goes (diagnostics, not targets).
    let key_build = repeat(RUNS, || {
        common::ns_per_iter(iters, |i| {
            std::hint::black_box(
                Key::builder("user:groups:")
                    .value((i % 1000) as u32)
                    .build(),
            );
        })
    });
    figure("diag_key_build_ns", key_build, "ns");

    // --- L2 hit vs raw fred GET ----------------------------------------------------------
    // Every stormcache run uses a fresh reader (empty local store) and reads each key once, so
    // every read misses L1, hits Redis and fills L1, as a first read in production does.
    let payload = "x".repeat(VALUE_1K);
    let fred = rt.block_on(raw_client(&server.url()));
    let writer = Cache::builder("bench")
        .redis_url(server.url())
        .build()
        .expect("cache");
    const KEYS: u64 = 64 * 1000;
    rt.block_on(async {
        wait_in_use(&writer).await;
        let mut tasks = Vec::new();
        for t in 0..64 {
            let (writer, fred, payload) = (writer.clone(), fred.clone(), payload.clone());
            tasks.push(tokio::spawn(async move {
                for i in (t..KEYS).step_by(64) {
                    let k = Key::builder("doc:").value(i).build();
                    writer
                        .set(
                            k,
                            payload.clone(),
                            &EntryOptions::new().ttl(Duration::from_secs(3600)),
                        )
                        .await;
                    let _: () = fred
                        .set(format!("raw:{i}"), payload.as_str(), None, None, false)
                        .await
                        .expect("raw set");
                }
            }));
        }
        for t in tasks {
            t.await.expect("populate");
        }
    });
    let reader = || {
        let c = Cache::builder("bench")
            .redis_url(server.url())
            .local_capacity(LocalCapacity::Entries(2 * KEYS))
            .build()
            .expect("cache");
        rt.block_on(wait_in_use(&c));
        c
    };
    let samples = 4000u64;
    let raw_p50 = repeat(RUNS, || {
        rt.block_on(async {
            let mut d = Vec::with_capacity(samples as usize);
            for i in 0..samples {
                let started = Instant::now();
                let v: Option<Bytes> = fred.get(format!("raw:{i}")).await.expect("get");
                d.push(started.elapsed());
                std::hint::black_box(v);
            }
            percentile_us(&mut d, 50.0)
        })
    });
    // Each run with a fresh reader, kept to the end as the concurrent runs' readers are (see
    // there).
    let mut kept_p50 = Vec::new();
    let mut l2_p50_with = |options: &EntryOptions, origins: &mut Origins| {
        repeat(RUNS, || {
            let c = reader();
            let p50 = rt.block_on(async {
                let mut d = Vec::with_capacity(samples as usize);
                for i in 0..samples {
                    let started = Instant::now();
                    let v: String = c
                        .get_or_load(Key::builder("doc:").value(i).build(), options, || async {
                            String::new()
                        })
                        .await;
                    d.push(started.elapsed());
                    std::hint::black_box(v);
                }
                percentile_us(&mut d, 50.0)
            });
            origins.count(&c);
            kept_p50.push(c);
            p50
        })
    };
    let mut origins = Origins::default();
    let l2_p50 = l2_p50_with(&opts, &mut origins);
    origins.report("sequential");
    // The same reads not filling L1 (`skip_local`): the read path without the insert.
    let mut origins = Origins::default();
    let l2_no_fill_p50 = l2_p50_with(&EntryOptions::new().skip_local(), &mut origins);
    origins.report("sequential, not filling L1");
    drop(kept_p50);
    figure("raw_fred_get_p50_us", raw_p50, "us");
    figure("l2_hit_p50_us", l2_p50, "us");
    figure("l2_hit_no_fill_p50_us", l2_no_fill_p50, "us");
    figure1(
        "l2_hit_p50_vs_raw_fred",
        l2_p50.median / raw_p50.median,
        "x",
    );
    figure1(
        "l2_hit_no_fill_p50_vs_raw_fred",
        l2_no_fill_p50.median / raw_p50.median,
        "x",
    );

    // --- a miss: read Redis, load, write back under the lease --------------------------------
    // Beside a raw GET then SET of the same bytes. The write is a script that checks the key
    // still holds what the read saw; a tagged entry also reads its tags' generations with the
    // entry and again after joining its sets.
    let mut run = 0u64;
    let mut next_run = || {
        run += 1;
        run
    };
    let raw_miss = repeat(RUNS, || {
        let r = next_run();
        rt.block_on(async {
            let mut d = Vec::with_capacity(samples as usize);
            for i in 0..samples {
                let key = format!("rawmiss:{r}:{i}");
                let started = Instant::now();
                let v: Option<Bytes> = fred.get(key.as_str()).await.expect("get");
                let _: () = fred
                    .set(key.as_str(), payload.as_str(), None, None, false)
                    .await
                    .expect("set");
                d.push(started.elapsed());
                std::hint::black_box(v);
            }
            percentile_us(&mut d, 50.0)
        })
    });
    let miss = |tagged: bool, r: u64| {
        let c = reader();
        let options = if tagged {
            opts.clone().tag(Key::literal("bench:tag").expect("tag"))
        } else {
            opts.clone()
        };
        rt.block_on(async {
            let mut d = Vec::with_capacity(samples as usize);
            for i in 0..samples {
                let key = Key::builder("miss:").value(r).value(i).build();
                let started = Instant::now();
                let v: String = c
                    .get_or_load(key, &options, || async { payload.clone() })
                    .await;
                d.push(started.elapsed());
                std::hint::black_box(v);
            }
            percentile_us(&mut d, 50.0)
        })
    };
    let miss_p50 = repeat(RUNS, || miss(false, next_run()));
    let miss_tagged_p50 = repeat(RUNS, || miss(true, next_run()));
    figure("raw_fred_get_set_p50_us", raw_miss, "us");
    figure("miss_store_p50_us", miss_p50, "us");
    figure("miss_store_tagged_p50_us", miss_tagged_p50, "us");
    figure1(
        "miss_store_vs_raw_get_set",
        miss_p50.median / raw_miss.median,
        "x",
    );

    // --- 64 concurrent tasks, each reading its share of the 64k keys once ---------------------
    // The four reads take turns within each round, in an order that rotates from round to
    // round, so that a slow spell of this shared machine falls on all of them; the ratios
    // are medians of per-round ratios.
    // Ops per second of each round: raw GET, raw GET filling a raw moka, our read, our read
    // not filling L1.
    let mut c64: [Vec<f64>; 4] = Default::default();
    let mut kept_moka = Vec::new();
    let mut kept = Vec::new();
    let (mut fill_origins, mut no_fill_origins) = (Origins::default(), Origins::default());
    for round in 0..=C64_ROUNDS {
        for turn in 0..4 {
            let which = (round + turn) % 4;
            let ops = match which {
                0 => rt.block_on(read_all_c64({
                    let fred = fred.clone();
                    move |i| {
                        let fred = fred.clone();
                        async move {
                            let v: Option<Bytes> = fred.get(format!("raw:{i}")).await.expect("get");
                            std::hint::black_box(v);
                        }
                    }
                })),
                // The floor of a read that fills L1: the same raw GET, the bytes made a
                // `String` and put in a raw moka cache, as an L2 hit does with its value.
                1 => {
                    let moka: moka::sync::Cache<String, String> = moka::sync::Cache::new(2 * KEYS);
                    let ops = rt.block_on(read_all_c64({
                        let (fred, moka) = (fred.clone(), moka.clone());
                        move |i| {
                            let (fred, moka) = (fred.clone(), moka.clone());
                            async move {
                                let key = format!("raw:{i}");
                                let v: Option<Bytes> = fred.get(key.as_str()).await.expect("get");
                                let v = String::from_utf8(v.expect("populated").to_vec())
                                    .expect("utf-8");
                                moka.insert(key, v.clone());
                                std::hint::black_box(v);
                            }
                        }
                    }));
                    // Dropped after every round, as the readers below are.
                    kept_moka.push(moka);
                    ops
                }
                _ => {
                    let (options, origins) = if which == 2 {
                        (EntryOptions::new(), &mut fill_origins)
                    } else {
                        (EntryOptions::new().skip_local(), &mut no_fill_origins)
                    };
                    let c = reader();
                    let ops = rt.block_on(read_all_c64({
                        let c = c.clone();
                        move |i| {
                            let (c, options) = (c.clone(), options.clone());
                            async move {
                                let k = Key::builder("doc:").value(i).build();
                                let v: String =
                                    c.get_or_load(k, &options, || async { String::new() }).await;
                                std::hint::black_box(v);
                            }
                        }
                    }));
                    // Counted after the warm-up round too: every read must come from Redis.
                    origins.count(&c);
                    // Kept until every round is done: a cache dropped here would free its
                    // 64k entries on the runtime's workers while the next read measures.
                    kept.push(c);
                    ops
                }
            };
            // Round 0 warms the server, the connections and the allocator.
            if round > 0 {
                c64[which].push(ops);
            }
        }
    }
    fill_origins.report("concurrent");
    no_fill_origins.report("concurrent, not filling L1");
    drop(kept);
    drop(kept_moka);
    let [raw_c64, raw_fill_c64, l2_c64, l2_c64_no_fill] = c64;
    figure("raw_fred_get_c64_ops", summarize(raw_c64.clone()), "ops/s");
    figure(
        "raw_fred_get_fill_c64_ops",
        summarize(raw_fill_c64.clone()),
        "ops/s",
    );
    figure("l2_hit_c64_ops", summarize(l2_c64.clone()), "ops/s");
    figure(
        "l2_hit_no_fill_c64_ops",
        summarize(l2_c64_no_fill.clone()),
        "ops/s",
    );
    figure(
        "l2_c64_vs_raw_fred",
        summarize(ratios_of(&l2_c64, &raw_c64)),
        "x",
    );
    figure(
        "raw_fred_fill_vs_raw_fred",
        summarize(ratios_of(&raw_fill_c64, &raw_c64)),
        "x",
    );
    figure(
        "l2_c64_vs_raw_fred_fill",
        summarize(ratios_of(&l2_c64, &raw_fill_c64)),
        "x",
    );
    figure(
        "l2_c64_no_fill_vs_raw_fred",
        summarize(ratios_of(&l2_c64_no_fill, &raw_c64)),
        "x",
    );

    // --- The L1 hit with telemetry on ----------------------------------------------------
    // Last, since both are global: a tracing subscriber at INFO (the read spans are DEBUG),
    // then a metrics recorder, each measured beside raw moka in the same runs.
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("no subscriber yet");
    let (with_subscriber, raw_then) = l1_beside_raw(&rt, &cache, &raw, &prebuilt, iters);
    figure(
        "l1_hit_with_subscriber_ns",
        summarize(with_subscriber.clone()),
        "ns",
    );
    figure(
        "l1_hit_with_subscriber_vs_raw_moka",
        summarize(ratios_of(&with_subscriber, &raw_then)),
        "x",
    );
    let _recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no recorder yet");
    // Built after the recorder: its handles report to it.
    let recorded = Cache::builder("bench-recorded").build().expect("cache");
    warm(&rt, &recorded, &value);
    let (with_recorder, raw_then) = l1_beside_raw(&rt, &recorded, &raw, &prebuilt, iters);
    figure(
        "l1_hit_with_recorder_ns",
        summarize(with_recorder.clone()),
        "ns",
    );
    figure(
        "l1_hit_with_recorder_vs_raw_moka",
        summarize(ratios_of(&with_recorder, &raw_then)),
        "x",
    );
}

/// Loads keys `user:groups:0..1000` into `cache`'s local store.
fn warm(rt: &tokio::runtime::Runtime, cache: &Cache, value: &str) {
    rt.block_on(async {
        for i in 0..1000u32 {
            let v = value.to_owned();
            let _: String = cache
                .get_or_load(
                    Key::builder("user:groups:").value(i).build(),
                    &EntryOptions::new(),
                    || async { v },
                )
                .await;
        }
    });
}

/// L1 hits of `cache` (keys `user:groups:0..1000`, all warm) and raw moka gets of the same
/// keys, interleaved, [`RUNS`] of each after a warm-up pair: (stormcache, raw moka) ns/op.
fn l1_beside_raw(
    rt: &tokio::runtime::Runtime,
    cache: &Cache,
    raw: &moka::sync::Cache<String, String>,
    prebuilt: &[String],
    iters: u64,
) -> (Vec<f64>, Vec<f64>) {
    let opts = EntryOptions::new();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..=RUNS {
        theirs.push(common::ns_per_iter(iters, |i| {
            std::hint::black_box(raw.get(&prebuilt[(i % 1000) as usize]));
        }));
        ours.push(rt.block_on(async {
            let started = Instant::now();
            for i in 0..iters {
                let v: String = cache
                    .get_or_load(
                        Key::builder("user:groups:")
                            .value((i % 1000) as u32)
                            .build(),
                        &opts,
                        || async { unreachable!("all keys are warm") },
                    )
                    .await;
                std::hint::black_box(v);
            }
            started.elapsed().as_nanos() as f64 / iters as f64
        }));
    }
    (ours[1..].to_vec(), theirs[1..].to_vec())
}

/// Rounds of the 64-task reads (after a warm-up round).
const C64_ROUNDS: usize = 5;

fn ratios_of(ours: &[f64], theirs: &[f64]) -> Vec<f64> {
    ours.iter().zip(theirs).map(|(a, b)| a / b).collect()
}

/// 64 tasks read keys `0..KEYS` once between them; ops per second.
async fn read_all_c64<F, Fut>(op: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    const KEYS: u64 = 64 * 1000;
    let started = Instant::now();
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in (t..KEYS).step_by(64) {
                    op(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    KEYS as f64 / started.elapsed().as_secs_f64()
}

async fn raw_client(url: &str) -> fred::clients::Client {
    let mut builder = Builder::from_config(Config::from_url(url).expect("url"));
    builder.set_policy(ReconnectPolicy::new_constant(0, 100));
    let client = builder.build().expect("client");
    client.init().await.expect("connect");
    client
}

async fn wait_in_use(cache: &Cache) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(cache.redis_in_use() && cache.coherent()) {
        assert!(Instant::now() < deadline, "Redis never in use");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn redis_version(server: &support::RedisServer) -> String {
    server
        .info_field("server", "redis_version")
        .unwrap_or_else(|| "?".into())
}

/// Where a measurement's stormcache reads were answered: a figure of Redis reads means
/// something only if they came from Redis.
#[derive(Default)]
struct Origins {
    redis: u64,
    other: u64,
}

impl Origins {
    /// Adds the reads `cache` has answered so far.
    fn count(&mut self, cache: &Cache) {
        let n = cache.counters();
        self.redis += n.l2_hits;
        self.other += n.l1_hits + n.loader_calls;
    }

    /// Prints them as a `#` comment line beside the figures.
    fn report(&self, reads: &str) {
        println!(
            "# {reads} stormcache reads: {} from Redis, {} otherwise",
            self.redis, self.other
        );
    }
}

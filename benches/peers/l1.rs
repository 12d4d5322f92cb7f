//! An attribute-macro local-store hit, stormcache beside the `cached` crate and raw moka, in
//! one run.
//!
//! Every function returns a 1 KiB `String` for one of 1000 warm users; every timed call is a
//! hit (checked: no loader runs after the warm-up).
//!
//! - `macro_l1_hit_ns`: stormcache's `#[cached(key = "user:groups:{user}", ttl = "15m",
//!   cache = CACHE)]` on an `async fn` (local store only, no Redis);
//! - `cached_macro_l1_hit_ns`: `cached`'s `#[cached(max_size = 10_000, ttl_secs = 900)]` on
//!   an `async fn` (its LRU + TTL store behind one async mutex; keyed by the argument, no key
//!   formatting);
//! - `concurrent_cached_l1_hit_ns`: `cached`'s `#[concurrent_cached(max_size = 10_000,
//!   ttl_secs = 900)]` on an `async fn` (sharded store, per-shard locks);
//! - `raw_moka_get_ns`: `moka::sync::Cache::get` of a prebuilt `String` key
//!   (`user:groups:{i}`), the floor;
//! - `moka_future_get_ns`: `moka::future::Cache::get` of a prebuilt key, awaited;
//! - `moka_future_get_fmt_key_ns`: the same with the key formatted on every call.
//!
//! Diagnostics beside them: `cached`'s unbounded default `#[cached]` (async), and the sync
//! forms of `#[cached]` / `#[concurrent_cached]` on a plain `fn`.
//!
//! Every run measures every variant once, in an order rotated from run to run, so load on
//! this shared machine falls on all alike; figures are medians of the runs (min beside), and
//! each ratio is the median of the per-run ratios.
//!
//! ```text
//! cargo bench --manifest-path benches/peers/Cargo.toml --bench peers_l1
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use common::{figure, summarize};
use stormcache::Cache;

const RUNS: usize = 101;
const ITERS: u64 = 50_000;
const USERS: u32 = 1000;
const VALUE_LEN: usize = 1024;

static CACHE: LazyLock<Cache> =
    LazyLock::new(|| Cache::builder("bench-peers").build().expect("cache"));

/// Loader calls, all variants together: must not move once everything is warm.
static LOADS: AtomicU64 = AtomicU64::new(0);

/// A 1 KiB value for `user`.
fn load(user: u32) -> String {
    LOADS.fetch_add(1, Ordering::Relaxed);
    let mut s = format!("user-{user}:");
    s.extend(std::iter::repeat_n('x', VALUE_LEN - s.len()));
    s
}

#[stormcache::cached(key = "user:groups:{user}", ttl = "15m", cache = CACHE)]
async fn stormcache_macro(user: u32) -> String {
    load(user)
}

#[cached::macros::cached(max_size = 10_000, ttl_secs = 900)]
async fn cached_macro(user: u32) -> String {
    load(user)
}

#[cached::macros::cached]
async fn cached_macro_unbound(user: u32) -> String {
    load(user)
}

#[cached::macros::concurrent_cached(max_size = 10_000, ttl_secs = 900)]
async fn concurrent_cached_macro(user: u32) -> String {
    load(user)
}

#[cached::macros::cached(max_size = 10_000, ttl_secs = 900)]
fn cached_macro_sync(user: u32) -> String {
    load(user)
}

#[cached::macros::concurrent_cached(max_size = 10_000, ttl_secs = 900)]
fn concurrent_cached_sync(user: u32) -> String {
    load(user)
}

fn user_of(i: u64) -> u32 {
    (i % u64::from(USERS)) as u32
}

/// Nanoseconds per awaited call over [`ITERS`] calls cycling through the warm users.
fn time_async<F, Fut, T>(rt: &tokio::runtime::Runtime, call: F) -> f64
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = T>,
{
    rt.block_on(async {
        let started = Instant::now();
        for i in 0..ITERS {
            black_box(call(black_box(user_of(i))).await);
        }
        started.elapsed().as_nanos() as f64 / ITERS as f64
    })
}

/// Nanoseconds per call of a synchronous `call`.
fn time_sync<T>(call: impl Fn(u32) -> T) -> f64 {
    common::ns_per_iter(ITERS, |i| {
        black_box(call(black_box(user_of(i))));
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys: Vec<String> = (0..USERS).map(|u| format!("user:groups:{u}")).collect();
    let raw: moka::sync::Cache<String, String> = moka::sync::Cache::new(10_000);
    let fut: moka::future::Cache<String, String> = moka::future::Cache::new(10_000);
    rt.block_on(async {
        for user in 0..USERS {
            stormcache_macro(user).await;
            cached_macro(user).await;
            cached_macro_unbound(user).await;
            concurrent_cached_macro(user).await;
            cached_macro_sync(user);
            concurrent_cached_sync(user);
            raw.insert(keys[user as usize].clone(), load(user));
            fut.insert(keys[user as usize].clone(), load(user)).await;
        }
    });
    let loads = LOADS.load(Ordering::Relaxed);
    assert_eq!(loads, u64::from(USERS) * 8, "one load per user and variant");

    type Variant<'a> = (&'static str, Box<dyn Fn() -> f64 + 'a>);
    let rt = &rt;
    let (raw, fut, keys) = (&raw, &fut, &keys);
    let variants: Vec<Variant> = vec![
        (
            "macro_l1_hit_ns",
            Box::new(|| time_async(rt, stormcache_macro)),
        ),
        (
            "cached_macro_l1_hit_ns",
            Box::new(|| time_async(rt, cached_macro)),
        ),
        (
            "concurrent_cached_l1_hit_ns",
            Box::new(|| time_async(rt, concurrent_cached_macro)),
        ),
        (
            "raw_moka_get_ns",
            Box::new(|| time_sync(|u| raw.get(&keys[u as usize]))),
        ),
        (
            "moka_future_get_ns",
            Box::new(|| time_async(rt, |u| fut.get(&keys[u as usize]))),
        ),
        (
            "moka_future_get_fmt_key_ns",
            Box::new(|| {
                time_async(rt, |u| async move {
                    let key = format!("user:groups:{u}");
                    fut.get(&key).await
                })
            }),
        ),
        (
            "cached_macro_unbound_l1_hit_ns",
            Box::new(|| time_async(rt, cached_macro_unbound)),
        ),
        (
            "cached_macro_sync_l1_hit_ns",
            Box::new(|| time_sync(cached_macro_sync)),
        ),
        (
            "concurrent_cached_sync_l1_hit_ns",
            Box::new(|| time_sync(concurrent_cached_sync)),
        ),
    ];
    println!(
        "# peers_l1: {ITERS} calls per run over {USERS} warm keys, 1 KiB String values, \
         {RUNS} runs (+1 warm-up), every variant in every run, local store only"
    );
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for run in 0..=RUNS {
        for k in 0..variants.len() {
            let v = (run + k) % variants.len();
            let t = (variants[v].1)();
            if run > 0 {
                times[v].push(t);
            }
        }
    }
    for (v, (name, _)) in variants.iter().enumerate() {
        figure(name, summarize(times[v].clone()), "ns");
    }
    let ratio = |a: usize, b: usize| {
        summarize(times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect())
    };
    figure("macro_vs_cached", ratio(0, 1), "x");
    figure("macro_vs_concurrent_cached", ratio(0, 2), "x");
    figure("macro_vs_raw_moka", ratio(0, 3), "x");
    figure("macro_vs_moka_future", ratio(0, 4), "x");
    figure("cached_vs_raw_moka", ratio(1, 3), "x");
    assert_eq!(
        LOADS.load(Ordering::Relaxed),
        loads,
        "every timed call was a hit"
    );
}

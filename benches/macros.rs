//! What `#[cached]` costs on a local-store hit, against the same call written by hand with
//! the core API, in one run.
//!
//! - `macro_l1_hit_ns`: `#[cached(key = "user:groups:{user}", ttl = "15m", class =
//!   "permissions", cache = CACHE)]` on a function, called with warm keys;
//! - `manual_l1_hit_ns`: `CACHE.get_or_load(Key::builder("user:groups:").value(user).build(),
//!   &EntryOptions::new().ttl(..).class("permissions"), loader)`, same keys, same entries;
//! - `macro_vs_manual`: the median of the per-run ratios (target ≤ 1.05).
//!
//! Diagnostics beside them (not targets): the same pair with a tag template
//! (`macro_tagged_l1_hit_ns`, `manual_tagged_l1_hit_ns`, whose tag keys are built on every
//! call by both), and the process-wide cache (`macro_global_l1_hit_ns`).
//!
//! Runs are short and interleaved (macro, manual, manual, macro, …) so drift and load hit
//! both alike; each figure is the median of the runs, with the minimum beside it, and the
//! ratio is the median of the per-pair ratios. No Redis: the figure is the
//! macro's own overhead, which a Redis behind the local store would not change.

mod common;

use std::hint::black_box;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::{figure, summarize, Runs};
use stormcache::{cached, Cache, Class, EntryOptions, Key};

/// Many short interleaved runs: on a busy two-core machine, neighbouring runs share the
/// same load, so the median of the per-pair ratios is steadier than a ratio of medians.
const RUNS: usize = 31;
const ITERS: u64 = 50_000;
const USERS: u64 = 1000;

static CACHE: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder("bench-macros")
        .class(
            Class::new("permissions")
                .ttl(Duration::from_secs(900))
                .volatile(),
        )
        .build()
        .expect("valid configuration")
});

fn load(user: u32) -> u64 {
    u64::from(user) * 3
}

#[cached(key = "user:groups:{user}", ttl = "15m", class = "permissions", cache = CACHE)]
async fn groups_macro(user: u32) -> u64 {
    load(user)
}

async fn groups_manual(user: u32) -> u64 {
    CACHE
        .get_or_load(
            Key::builder("user:groups:").value(user).build(),
            &EntryOptions::new()
                .ttl(Duration::from_secs(900))
                .class("permissions"),
            || async move { load(user) },
        )
        .await
}

#[cached(
    key = "user:resources:{user}",
    ttl = "15m",
    class = "permissions",
    tags = ["user:{user}"],
    cache = CACHE
)]
async fn resources_macro(user: u32) -> u64 {
    load(user)
}

async fn resources_manual(user: u32) -> u64 {
    CACHE
        .get_or_load(
            Key::builder("user:resources:").value(user).build(),
            &EntryOptions::new()
                .ttl(Duration::from_secs(900))
                .class("permissions")
                .tag(Key::builder("user:").value(user).build()),
            || async move { load(user) },
        )
        .await
}

#[cached(key = "user:global:{user}", ttl = "15m", class = "permissions")]
async fn global_macro(user: u32) -> u64 {
    load(user)
}

/// Nanoseconds per call of `call` over `ITERS` calls cycling through the warm users.
fn time<F, Fut>(rt: &tokio::runtime::Runtime, call: F) -> f64
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    rt.block_on(async {
        let started = Instant::now();
        for i in 0..ITERS {
            black_box(call(black_box((i % USERS) as u32)).await);
        }
        started.elapsed().as_nanos() as f64 / ITERS as f64
    })
}

/// Interleaved runs of two calls (one warm-up pair first); the two summaries and the
/// summary of the per-run ratios `a / b`.
fn pair<A, AF, B, BF>(rt: &tokio::runtime::Runtime, a: A, b: B) -> (Runs, Runs, Runs)
where
    A: Fn(u32) -> AF,
    AF: std::future::Future<Output = u64>,
    B: Fn(u32) -> BF,
    BF: std::future::Future<Output = u64>,
{
    let (mut a_runs, mut b_runs) = (Vec::new(), Vec::new());
    for run in 0..=RUNS {
        let (ta, tb) = if run % 2 == 0 {
            let ta = time(rt, &a);
            (ta, time(rt, &b))
        } else {
            let tb = time(rt, &b);
            (time(rt, &a), tb)
        };
        if run > 0 {
            a_runs.push(ta);
            b_runs.push(tb);
        }
    }
    let ratios = a_runs.iter().zip(&b_runs).map(|(a, b)| a / b).collect();
    (summarize(a_runs), summarize(b_runs), summarize(ratios))
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ = stormcache::install(CACHE.clone());
    // Warm every key through the macro; the hand-written calls must then hit the very same
    // entries (same class and key), which checks that both address the same identity.
    rt.block_on(async {
        for user in 0..USERS as u32 {
            groups_macro(user).await;
            resources_macro(user).await;
            global_macro(user).await;
        }
    });
    let loads = CACHE.counters().loader_calls;
    println!("# macros: {ITERS} calls per run over {USERS} warm keys, {RUNS} runs (+1 warm-up), local store only");

    let (macro_hit, manual_hit, ratio) = pair(&rt, groups_macro, groups_manual);
    figure("macro_l1_hit_ns", macro_hit, "ns");
    figure("manual_l1_hit_ns", manual_hit, "ns");
    figure("macro_vs_manual", ratio, "x");

    let (macro_tagged, manual_tagged, tagged_ratio) = pair(&rt, resources_macro, resources_manual);
    figure("macro_tagged_l1_hit_ns", macro_tagged, "ns");
    figure("manual_tagged_l1_hit_ns", manual_tagged, "ns");
    figure("macro_tagged_vs_manual", tagged_ratio, "x");

    let (global_hit, _, global_ratio) = pair(&rt, global_macro, groups_manual);
    figure("macro_global_l1_hit_ns", global_hit, "ns");
    figure("macro_global_vs_manual", global_ratio, "x");

    assert_eq!(
        CACHE.counters().loader_calls,
        loads,
        "every timed call was a local-store hit"
    );
}

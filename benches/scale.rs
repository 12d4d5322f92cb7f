//! How the local costs grow with the local store: a read-through hit, and the invalidation
//! of a tag carried by 10 entries, with 10k, 100k and 1M entries in the store (no Redis).
//!
//! - `l1_hit_<n>_ns`: a read-through local hit of a random key among `n`;
//! - `local_tag_invalidation_10_of_<n>_us`: `Cache::invalidate_tag` of a tag carried by 10
//!   of the `n` entries (the 10 are written again before each run);
//! - `raw_moka_sweep_<n>_us`: one pass over a bare `moka::sync::Cache` of `n` entries, what
//!   a local invalidation costs when it must look at every entry to find its targets.

mod common;

use std::time::Instant;

use common::{figure, repeat};
use stormcache::{Cache, EntryOptions, Key, LocalCapacity};

const SIZES: [(usize, &str); 3] = [(10_000, "10k"), (100_000, "100k"), (1_000_000, "1m")];
const RUNS: usize = 7;

fn key(i: usize) -> Key {
    Key::builder("item:").value(i).build()
}

fn main() {
    let rt = common::runtime();
    let _runtime = rt.enter();
    for (n, label) in SIZES {
        let cache = Cache::builder("scale")
            .local_capacity(LocalCapacity::Entries(2 * n as u64))
            .build()
            .expect("valid configuration");
        let plain = EntryOptions::new();
        let tag = Key::literal("hot").expect("valid tag");
        let tagged = EntryOptions::new().tag(tag.clone());
        rt.block_on(async {
            for i in 0..n {
                let opts = if i < 10 { &tagged } else { &plain };
                cache.set(key(i), i as u64, opts).await;
            }
        });

        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let hit = repeat(RUNS, || {
            let iters = 200_000;
            let started = Instant::now();
            for _ in 0..iters {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = 10 + (rng % (n as u64 - 10)) as usize;
                let got = cache.get_local::<u64>(key(i), &plain);
                std::hint::black_box(got.ok());
            }
            started.elapsed().as_nanos() as f64 / f64::from(iters)
        });
        figure(&format!("l1_hit_{label}_ns"), hit, "ns");

        let invalidation = repeat(RUNS, || {
            rt.block_on(async {
                for i in 0..10 {
                    cache.set(key(i), i as u64, &tagged).await;
                }
                let started = Instant::now();
                cache.invalidate_tag(&tag).await;
                let took = started.elapsed().as_nanos() as f64 / 1000.0;
                assert!(
                    cache.get_local::<u64>(key(3), &tagged).is_err(),
                    "the tag's entry survived its invalidation"
                );
                took
            })
        });
        figure(
            &format!("local_tag_invalidation_10_of_{label}_us"),
            invalidation,
            "us",
        );
        drop(cache);

        let raw: moka::sync::Cache<u64, u64> = moka::sync::Cache::new(2 * n as u64);
        for i in 0..n as u64 {
            raw.insert(i, i);
        }
        raw.run_pending_tasks();
        let sweep = repeat(RUNS, || {
            let started = Instant::now();
            let mut matched = 0u64;
            for (k, _) in raw.iter() {
                matched += u64::from(*k < 10);
            }
            std::hint::black_box(matched);
            started.elapsed().as_nanos() as f64 / 1000.0
        });
        figure(&format!("raw_moka_sweep_{label}_us"), sweep, "us");
    }
}

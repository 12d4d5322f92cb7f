//! The read-through path on the local store alone: single-flight under cancellation and
//! failure, fail-safe stale values, and the byte-bounded capacity.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stormcache::{Cache, EntryOptions, Key, LocalCapacity, Origin};
use support::rng::Rng;
use tokio::sync::Notify;

fn key(s: &str) -> Key {
    Key::literal(s).expect("valid key")
}

#[tokio::test]
async fn a_cancelled_leader_does_not_strand_its_waiters() {
    let cache = Cache::builder("sf").build().expect("valid");
    let leader_started = Arc::new(Notify::new());
    let leader = {
        let (cache, started) = (cache.clone(), Arc::clone(&leader_started));
        tokio::spawn(async move {
            cache
                .get_or_load(key("k"), &EntryOptions::new(), || async move {
                    started.notify_one();
                    std::future::pending::<u32>().await
                })
                .await
        })
    };
    leader_started.notified().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let (cache, calls) = (cache.clone(), Arc::clone(&calls));
            tokio::spawn(async move {
                cache
                    .get_or_load(key("k"), &EntryOptions::new(), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        7u32
                    })
                    .await
            })
        })
        .collect();
    // Let every waiter reach the flight, then cancel its leader.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    leader.abort();
    for w in waiters {
        let v = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("a waiter was stranded")
            .expect("task");
        assert_eq!(v, 7);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one waiter took over the load"
    );
}

#[tokio::test]
async fn a_failed_load_is_not_cached_and_each_caller_gets_its_own_error() {
    let cache = Cache::builder("err").build().expect("valid");
    let r: Result<u32, String> = cache
        .try_get_or_load(key("k"), &EntryOptions::new(), || async {
            Err("db down".to_owned())
        })
        .await;
    assert_eq!(r, Err("db down".to_owned()));
    let r: Result<u32, String> = cache
        .try_get_or_load(key("k"), &EntryOptions::new(), || async { Ok(1) })
        .await;
    assert_eq!(r, Ok(1), "the error was not cached");
}

#[tokio::test]
async fn fail_safe_serves_an_expired_value_inside_its_grace() {
    let cache = Cache::builder("fs").build().expect("valid");
    let opts = EntryOptions::new()
        .ttl(Duration::from_millis(50))
        .stale_for(Duration::from_secs(60));
    let _: u32 = cache.get_or_load(key("k"), &opts, || async { 1 }).await;
    // Let the TTL pass (the grace keeps the value).
    tokio::time::sleep(Duration::from_millis(80)).await;
    let stale = cache
        .fetch(key("k"), &opts, || async { Err::<u32, _>("origin down") })
        .await
        .expect("served stale");
    assert_eq!((stale.value, stale.origin), (1, Origin::Stale));
    assert_eq!(cache.counters().stale_served, 1);
    // A successful load replaces it.
    let fresh = cache
        .fetch(key("k"), &opts, || async { Ok::<u32, &str>(2) })
        .await
        .expect("loaded");
    assert_eq!((fresh.value, fresh.origin), (2, Origin::Loader));
    // Without a grace, an expired value is never served.
    let strict = EntryOptions::new().ttl(Duration::from_millis(20));
    let _: u32 = cache.get_or_load(key("s"), &strict, || async { 1 }).await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    let r = cache
        .fetch(key("s"), &strict, || async { Err::<u32, _>("down") })
        .await;
    assert_eq!(r, Err("down"));
}

#[tokio::test]
async fn byte_capacity_bounds_the_local_store() {
    let cache = Cache::builder("cap")
        .local_capacity(LocalCapacity::Bytes(64 * 1024))
        .build()
        .expect("valid");
    for i in 0..200u32 {
        cache
            .set(
                Key::builder("big:").value(i).build(),
                "x".repeat(1024),
                &EntryOptions::new(),
            )
            .await;
    }
    let n = cache.local_entry_count();
    assert!(n > 10 && n < 64, "about 64 KiB of 1 KiB entries, got {n}");
}

#[tokio::test]
async fn process_wide_cache_says_what_to_do_before_install() {
    // This test binary never installs one.
    let err = stormcache::global().expect_err("not installed");
    assert!(err.to_string().contains("stormcache::install"), "{err}");
}

/// Readers load tagged entries from a versioned origin while a mutator bumps the versions
/// and invalidates the tag: once an invalidation has returned, no read that starts after it
/// sees an older version — the tag index reaches every entry stored concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tag_invalidations_reach_entries_stored_concurrently() {
    use std::sync::atomic::{AtomicBool, AtomicU64};

    const KEYS: usize = 16;
    let cache = Cache::builder("tagidx")
        .local_capacity(LocalCapacity::Entries(100_000))
        .build()
        .expect("valid");
    let tag = key("group:1");
    let opts = EntryOptions::new().tag(tag.clone());
    let version = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let stale = Arc::new(AtomicUsize::new(0));
    // The version every read starting now must see at least.
    let acknowledged = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..6)
        .map(|r| {
            let (cache, opts, version, stop, stale, acknowledged) = (
                cache.clone(),
                opts.clone(),
                Arc::clone(&version),
                Arc::clone(&stop),
                Arc::clone(&stale),
                Arc::clone(&acknowledged),
            );
            tokio::spawn(async move {
                let mut i = r;
                while !stop.load(Ordering::SeqCst) {
                    i = (i * 7 + 3) % KEYS;
                    let floor = acknowledged.load(Ordering::SeqCst);
                    let seen: u64 = cache
                        .get_or_load(key(&format!("k{i}")), &opts, || async {
                            version.load(Ordering::SeqCst)
                        })
                        .await;
                    if seen < floor {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for _ in 0..2_000 {
        let next = version.fetch_add(1, Ordering::SeqCst) + 1;
        cache.invalidate_tag(&tag).await;
        acknowledged.store(next, Ordering::SeqCst);
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.expect("reader");
    }
    assert_eq!(
        stale.load(Ordering::SeqCst),
        0,
        "reads after an acknowledged tag invalidation saw an older version"
    );
}

/// Two writes of one key race; whichever value stays, invalidating the key's tag afterwards
/// removes it from the local store.
#[test]
fn racing_writes_of_one_key_stay_reachable_by_their_tag() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cache = rt.block_on(async {
        Cache::builder("racing")
            .local_capacity(LocalCapacity::Entries(100_000))
            .build()
            .expect("valid")
    });
    let tag = key("group:1");
    let opts = EntryOptions::new().tag(tag.clone());
    let mut survived = 0;
    for round in 0..10_000u32 {
        let k = key(&format!("k{round}"));
        // Two threads, so that the writes truly overlap.
        let start = Arc::new(std::sync::Barrier::new(2));
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let (cache, k, opts, start) =
                    (cache.clone(), k.clone(), opts.clone(), Arc::clone(&start));
                let handle = rt.handle().clone();
                std::thread::spawn(move || {
                    start.wait();
                    handle.block_on(cache.set(k, w, &opts));
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        rt.block_on(async {
            cache.invalidate_tag(&tag).await;
            survived += usize::from(cache.get::<u32>(&k, &opts).await.is_some());
        });
    }
    assert_eq!(survived, 0, "values read after their tag was invalidated");
}

/// Two invalidations of one tag race: whichever returns first or second, nothing the tag
/// reached is readable once it has returned, even while the other is still removing.
#[test]
fn racing_invalidations_of_one_tag_both_return_after_its_entries_are_gone() {
    const KEYS: u32 = 2_000;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cache = rt.block_on(async {
        Cache::builder("racing-inv")
            .local_capacity(LocalCapacity::Entries(100_000))
            .build()
            .expect("valid")
    });
    let tag = key("group:1");
    let opts = EntryOptions::new().tag(tag.clone());
    let mut seen_after = 0;
    for round in 0..40u32 {
        rt.block_on(async {
            for i in 0..KEYS {
                cache.set(key(&format!("r{round}:{i}")), i, &opts).await;
            }
        });
        let start = Arc::new(std::sync::Barrier::new(2));
        let invalidators: Vec<_> = (0..2)
            .map(|_| {
                let (cache, tag, opts, start) =
                    (cache.clone(), tag.clone(), opts.clone(), Arc::clone(&start));
                let handle = rt.handle().clone();
                std::thread::spawn(move || {
                    start.wait();
                    handle.block_on(async {
                        cache.invalidate_tag(&tag).await;
                        // Read at once, before the other invalidation may have finished.
                        let mut seen = 0;
                        for i in 0..KEYS {
                            let k = key(&format!("r{round}:{i}"));
                            seen += usize::from(cache.get::<u32>(&k, &opts).await.is_some());
                        }
                        seen
                    })
                })
            })
            .collect();
        for i in invalidators {
            seen_after += i.join().expect("invalidator");
        }
    }
    assert_eq!(
        seen_after, 0,
        "entries read after their tag's invalidation returned"
    );
}

/// A randomized check through the whole read path: threads change a "database" and then
/// invalidate what the change made stale (the key, one of its tags, its class or
/// everything), while reads load from that database through the cache. A read that begins
/// after an invalidation has returned never answers older than what that invalidation
/// was for, whatever runs beside it: loads, coalesced waiters, other invalidations.
#[test]
fn no_read_after_an_acknowledged_invalidation_answers_older() {
    use std::sync::atomic::AtomicU64;
    use stormcache::{Class, Invalidation};

    const KEYS: usize = 32;
    const THREADS: u64 = 4;
    const OPS: u64 = 4_000;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cache = rt.block_on(async {
        Cache::builder("randomized")
            .class(Class::new("a").ttl(Duration::from_secs(60)))
            .class(Class::new("b").ttl(Duration::from_secs(60)))
            .local_capacity(LocalCapacity::Entries(24))
            .build()
            .expect("valid")
    });
    let class = |i: usize| if i % 2 == 0 { "a" } else { "b" };
    let tags = |i: usize| [i % 4, 4 + (i / 4) % 3];
    let tag = |t: usize| key(&format!("t{t}"));
    let options = move |i: usize| {
        tags(i)
            .into_iter()
            .fold(EntryOptions::new().class(class(i)), |o, t| o.tag(tag(t)))
    };
    let db: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..THREADS)
        .map(|seed| {
            let (cache, db, acked) = (cache.clone(), Arc::clone(&db), Arc::clone(&acked));
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut next = move |n: usize| rng.index(n);
                let mut stale = Vec::new();
                for _ in 0..OPS {
                    let i = next(KEYS);
                    if next(100) < 60 {
                        let floor = acked[i].load(Ordering::SeqCst);
                        let db = Arc::clone(&db);
                        // The origin answers after a while, as a database does: loads and
                        // invalidations overlap.
                        let took = Duration::from_micros(next(300) as u64);
                        let seen: u64 = handle.block_on(cache.get_or_load(
                            key(&format!("k{i}")),
                            &options(i),
                            || async move {
                                let v = db[i].load(Ordering::SeqCst);
                                tokio::time::sleep(took).await;
                                v
                            },
                        ));
                        if seen < floor {
                            stale.push((i, seen, floor));
                        }
                        continue;
                    }
                    db[i].fetch_add(1, Ordering::SeqCst);
                    let (inv, reached): (Invalidation, Vec<usize>) = match next(20) {
                        0..=7 => (Invalidation::new().key(key(&format!("k{i}"))), vec![i]),
                        8..=16 => {
                            let t = tags(i)[next(2)];
                            (
                                Invalidation::new().tag(tag(t)),
                                (0..KEYS).filter(|&j| tags(j).contains(&t)).collect(),
                            )
                        }
                        17..=18 => (
                            Invalidation::new().class(class(i)),
                            (0..KEYS).filter(|&j| class(j) == class(i)).collect(),
                        ),
                        _ => (Invalidation::new().everything(), (0..KEYS).collect()),
                    };
                    // What the database held when the invalidation began: every read that
                    // begins after it returns must see at least that.
                    let versions: Vec<u64> = reached
                        .iter()
                        .map(|&j| db[j].load(Ordering::SeqCst))
                        .collect();
                    handle.block_on(cache.invalidate(&inv));
                    for (&j, v) in reached.iter().zip(versions) {
                        acked[j].fetch_max(v, Ordering::SeqCst);
                    }
                }
                stale
            })
        })
        .collect();
    let stale: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    assert!(
        stale.is_empty(),
        "{} reads answered older than an acknowledged invalidation (key, seen, floor): {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
}

#[tokio::test]
async fn durations_meaning_forever_are_kept_as_a_century_not_a_panic() {
    let cache = Cache::builder("forever").build().expect("valid");
    let forever = EntryOptions::new()
        .ttl(Duration::MAX)
        .stale_for(Duration::MAX)
        .soft_timeout(Duration::MAX)
        .hard_timeout(Duration::MAX)
        .distributed_lock(Duration::MAX);
    let loaded = cache
        .get_or_load(key("f"), &forever, || async { 7u32 })
        .await;
    assert_eq!(loaded, 7);
    let again = cache
        .fetch(key("f"), &forever, || async { Ok::<u32, ()>(8) })
        .await
        .expect("cached");
    assert_eq!((again.value, again.origin), (7, Origin::Local));
    cache.set(key("g"), 9u32, &forever).await;
    assert_eq!(
        cache.get::<u32>(&key("g"), &EntryOptions::new()).await,
        Some(9)
    );
}

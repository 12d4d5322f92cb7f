//! Soft and hard loader timeouts: a slow origin costs a read the soft timeout when a stale
//! value is at hand, and never more than the hard timeout — for the caller running the
//! loader, for the callers waiting for it in the process, and for the instances waiting for
//! its distributed lock. The load a soft timeout leaves behind finishes and is stored.

#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormcache::{Cache, EntryOptions, Key, LoadTimeout, Origin};
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::{scaled, RedisServer};
use tokio::sync::watch;

const SOFT: Duration = Duration::from_millis(150);
const HARD: Duration = Duration::from_millis(400);
/// Far above either timeout: a read that took this long waited for the loader.
const SLOW: Duration = Duration::from_secs(3);

fn key(text: &str) -> Key {
    Key::literal(text).expect("valid key")
}

fn local_cache(namespace: &str) -> Cache {
    Cache::builder(namespace)
        .build()
        .expect("valid configuration")
}

/// A loader gate: loads block in [`Gate::pass`] until the test opens it.
#[derive(Clone)]
struct Gate {
    open: Arc<watch::Sender<bool>>,
    calls: Arc<AtomicUsize>,
    /// Loads whose future was dropped before they finished.
    dropped: Arc<AtomicUsize>,
}

/// Counts a load's future dropped before it finished.
struct Unfinished(Arc<AtomicUsize>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            open: Arc::new(watch::channel(false).0),
            calls: Arc::default(),
            dropped: Arc::default(),
        }
    }
}

impl Gate {
    async fn pass<T>(&self, value: T) -> Result<T, std::io::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let unfinished = Unfinished(Arc::clone(&self.dropped));
        let mut open = self.open.subscribe();
        // Only an error if the sender is gone, which the gate itself keeps alive.
        let _ = open.wait_for(|open| *open).await;
        std::mem::forget(unfinished);
        Ok(value)
    }

    fn open(&self) {
        self.open.send_replace(true);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Stores `value` with a TTL short enough to pass at once and a long grace, then waits until
/// the local copy is expired (inside its grace): the stale value the timeouts answer.
async fn expired_in_grace(cache: &Cache, k: &Key, value: u32) -> EntryOptions {
    let writing = EntryOptions::new()
        .ttl(Duration::from_millis(50))
        .stale_for(Duration::from_secs(600));
    cache.set(k.clone(), value, &writing).await;
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while cache.get_local::<u32>(k.clone(), &writing).is_ok() {
        assert!(Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writing
}

#[tokio::test]
async fn hard_timeout_fails_a_read_with_nothing_stale_and_drops_its_loader() {
    let cache = local_cache("timeouts_hard");
    let gate = Gate::default();
    let opts = EntryOptions::new().hard_timeout(HARD);
    let started = Instant::now();
    let read: Result<u32, std::io::Error> = cache
        .try_get_or_load(key("k"), &opts, || gate.pass(1))
        .await;
    let took = started.elapsed();
    let error = read.expect_err("the loader never finishes");
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    assert!(took >= HARD, "gave up before the hard timeout: {took:?}");
    assert!(
        took < SLOW,
        "waited {took:?} for a hard timeout of {HARD:?}"
    );
    assert_eq!(
        gate.dropped.load(Ordering::SeqCst),
        1,
        "the loader was not cancelled"
    );
    assert_eq!(cache.counters().load_timeouts, 1);

    // The error type says which timeout passed.
    let typed: Result<u32, stormcache::Error> = cache
        .try_get_or_load(key("k2"), &opts, || async {
            std::future::pending::<()>().await;
            Ok(2)
        })
        .await;
    match typed {
        Err(stormcache::Error::LoadTimeout(timeout)) => assert_eq!(timeout.after(), HARD),
        other => panic!("expected a LoadTimeout, got {other:?}"),
    }
}

#[tokio::test]
async fn hard_timeout_answers_the_stale_value_inside_its_grace() {
    let cache = local_cache("timeouts_hard_stale");
    let k = key("k");
    let opts = expired_in_grace(&cache, &k, 1).await.hard_timeout(HARD);
    let gate = Gate::default();
    let started = Instant::now();
    let read = cache
        .fetch(k, &opts, || gate.pass(2u32))
        .await
        .expect("stale value");
    assert_eq!((read.value, read.origin), (1, Origin::Stale));
    assert!(started.elapsed() < SLOW);
}

#[tokio::test]
async fn hard_timeout_reaches_the_callers_waiting_for_the_load() {
    let cache = local_cache("timeouts_waiters");
    let gate = Gate::default();
    let opts = EntryOptions::new().hard_timeout(HARD);
    let read = || {
        let (cache, gate, opts) = (cache.clone(), gate.clone(), opts.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let read: Result<u32, std::io::Error> = cache
                .try_get_or_load(key("k"), &opts, || gate.pass(1))
                .await;
            (read, started.elapsed())
        })
    };
    let (a, b) = (read(), read());
    for (read, took) in [a.await.expect("task"), b.await.expect("task")] {
        assert_eq!(
            read.expect_err("nobody finishes").kind(),
            std::io::ErrorKind::TimedOut
        );
        assert!(took < SLOW, "waited {took:?}");
    }
    // The waiter took the leader's outcome rather than loading (and waiting) again.
    assert_eq!(gate.calls(), 1);
}

#[tokio::test]
async fn soft_timeout_answers_waiters_stale_while_the_borrowing_leader_loads() {
    let cache = local_cache("timeouts_soft_waiters");
    let k = key("k");
    let opts = expired_in_grace(&cache, &k, 1).await.soft_timeout(SOFT);
    let gate = Gate::default();
    let leader = {
        let (cache, gate, opts, k) = (cache.clone(), gate.clone(), opts.clone(), k.clone());
        tokio::spawn(async move { cache.fetch(k, &opts, || gate.pass(2u32)).await })
    };
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while gate.calls() == 0 {
        assert!(
            Instant::now() < deadline,
            "the leader never started loading"
        );
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let waiter = cache
        .fetch(k.clone(), &opts, || gate.pass(3u32))
        .await
        .expect("stale value");
    assert_eq!((waiter.value, waiter.origin), (1, Origin::Stale));
    assert!(started.elapsed() < SLOW);
    assert_eq!(gate.calls(), 1, "the waiter ran a load of its own");

    // The leader runs a loader that borrows from it: it waits for it, and stores it.
    gate.open();
    let led = leader.await.expect("task").expect("loaded");
    assert_eq!((led.value, led.origin), (2, Origin::Loader));
    assert_eq!(cache.get_local::<u32>(k, &opts).ok(), Some(2));
}

#[tokio::test]
async fn soft_timeout_answers_stale_and_the_owned_load_finishes_and_is_stored_in_redis() {
    let server = RedisServer::start();
    let build = || {
        fast_redis_builder("timeouts_soft", server.url(), Duration::from_millis(500))
            .build()
            .expect("valid configuration")
    };
    let (a, b) = (build(), build());
    wait_redis_ready(&a, scaled(Duration::from_secs(10))).await;
    wait_redis_ready(&b, scaled(Duration::from_secs(10))).await;
    let k = key("k");
    let opts = expired_in_grace(&a, &k, 1)
        .await
        .ttl(Duration::from_secs(600))
        .soft_timeout(SOFT);
    let gate = Gate::default();
    let started = Instant::now();
    let loader = {
        let gate = gate.clone();
        move || async move { gate.pass(2u32).await }
    };
    let read = a
        .fetch_refreshing(k.clone(), &opts, loader)
        .await
        .expect("stale value");
    assert_eq!((read.value, read.origin), (1, Origin::Stale));
    assert!(started.elapsed() < SLOW);
    assert_eq!(a.counters().load_timeouts, 1);

    // The load goes on after the read returned; once it finishes, both stores have it.
    gate.open();
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while a.get_local::<u32>(k.clone(), &opts).ok() != Some(2) {
        assert!(
            Instant::now() < deadline,
            "the background load was never stored locally"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let from_b = b
        .fetch(k, &opts, || async { Ok::<u32, std::io::Error>(9) })
        .await
        .expect("read");
    assert_eq!((from_b.value, from_b.origin), (2, Origin::Redis));
    assert_eq!(gate.calls(), 1);
}

#[tokio::test]
async fn hard_timeout_bounds_the_wait_for_another_instances_lock() {
    let server = RedisServer::start();
    let build = || {
        fast_redis_builder("timeouts_lock", server.url(), Duration::from_millis(500))
            .build()
            .expect("valid configuration")
    };
    let (a, b) = (build(), build());
    wait_redis_ready(&a, scaled(Duration::from_secs(10))).await;
    wait_redis_ready(&b, scaled(Duration::from_secs(10))).await;
    // A lock held for up to 10 s: without a hard timeout, B would wait that long. A waits
    // for its own loader longer than B's hard timeout, so A holds the lock all the while
    // (at its own hard timeout A would release it, and B could take it and load).
    let lock = EntryOptions::new().distributed_lock(Duration::from_secs(10));
    let a_opts = lock.clone().hard_timeout(Duration::from_secs(30));
    let b_opts = lock.hard_timeout(Duration::from_millis(800));
    let gate = Gate::default();
    let holder = {
        let (a, gate) = (a.clone(), gate.clone());
        tokio::spawn(async move {
            let read: Result<u32, std::io::Error> =
                a.try_get_or_load(key("k"), &a_opts, || gate.pass(1)).await;
            read
        })
    };
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while gate.calls() == 0 {
        assert!(Instant::now() < deadline, "A never started loading");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b_loads = AtomicUsize::new(0);
    let started = Instant::now();
    let read: Result<u32, LoadTimeout> = b
        .try_get_or_load(key("k"), &b_opts, || async {
            b_loads.fetch_add(1, Ordering::SeqCst);
            Ok(2)
        })
        .await;
    let took = started.elapsed();
    assert!(read.is_err(), "B got {read:?} while A held the lock");
    assert!(took < SLOW, "B waited {took:?} for A's lock");
    assert_eq!(
        b_loads.load(Ordering::SeqCst),
        0,
        "B loaded despite A's lock"
    );
    // A's load goes on, and finishes when its loader does.
    gate.open();
    assert_eq!(holder.await.expect("task").expect("A's load"), 1);
}

#[cfg(feature = "macros")]
mod cached_functions {
    use super::*;
    use stormcache::cached;

    static CACHE: std::sync::LazyLock<Cache> =
        std::sync::LazyLock::new(|| local_cache("timeouts_macro"));

    #[derive(Debug, thiserror::Error)]
    enum DbError {
        #[error(transparent)]
        TimedOut(#[from] LoadTimeout),
    }

    #[cached(key = "slow:{id}", hard_timeout = "300ms", cache = CACHE)]
    async fn slow(id: u32) -> Result<u32, DbError> {
        std::future::pending::<()>().await;
        Ok(id)
    }

    #[tokio::test]
    async fn a_cached_function_fails_with_its_own_error_at_the_hard_timeout() {
        let started = Instant::now();
        match slow(1).await {
            Err(DbError::TimedOut(timeout)) => {
                assert_eq!(timeout.after(), Duration::from_millis(300))
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < SLOW);
    }

    static SOFT_CACHE: std::sync::LazyLock<Cache> =
        std::sync::LazyLock::new(|| local_cache("timeouts_macro_soft"));
    static SOFT_GATE: std::sync::LazyLock<Gate> = std::sync::LazyLock::new(Gate::default);

    /// Owned arguments: the load can outlive the call, so every caller gets the stale value
    /// at the soft timeout.
    #[cached(key = "quote:{id}", ttl = "50ms", stale_for = "10m", soft_timeout = "150ms", cache = SOFT_CACHE)]
    async fn quote(id: u32) -> Result<u32, std::io::Error> {
        let calls = SOFT_GATE.calls();
        if calls == 0 {
            SOFT_GATE.calls.fetch_add(1, Ordering::SeqCst);
            return Ok(id);
        }
        SOFT_GATE.pass(id + 100).await
    }

    #[tokio::test]
    async fn a_cached_function_with_owned_arguments_answers_stale_and_loads_in_the_background() {
        assert_eq!(quote(1).await.expect("loaded"), 1);
        let opts = EntryOptions::new().ttl(Duration::from_millis(50));
        let deadline = Instant::now() + scaled(Duration::from_secs(5));
        while SOFT_CACHE.get_local::<u32>(key("quote:1"), &opts).is_ok() {
            assert!(Instant::now() < deadline, "the entry never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The caller that finds the entry expired runs the reload, and still gets the
        // stale value at the soft timeout.
        let started = Instant::now();
        assert_eq!(quote(1).await.expect("stale value"), 1);
        assert!(started.elapsed() < SLOW);
        assert_eq!(
            SOFT_CACHE.counters().load_timeouts,
            1,
            "not answered at the soft timeout"
        );
        assert_eq!(SOFT_GATE.calls(), 2, "the reload did not start");
        SOFT_GATE.open();
        let deadline = Instant::now() + scaled(Duration::from_secs(5));
        while quote(1).await.expect("read") != 101 {
            assert!(
                Instant::now() < deadline,
                "the background load was never stored"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

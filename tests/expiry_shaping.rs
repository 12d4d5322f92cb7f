//! Expiry shaping and per-call store selection, on real Redis: TTL jitter spreads the
//! expiries of entries written together, a local TTL makes the local copy expire before
//! Redis's (the next read is an L2 hit), and `skip_local` / `skip_redis` / `local_only` keep
//! a call out of one store while invalidations still reach both.

#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stormcache::{Cache, Class, EntryOptions, Key, Origin};
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::{scaled, RedisServer};

const TTL: Duration = Duration::from_secs(100);

fn key(text: &str) -> Key {
    Key::literal(text).expect("valid key")
}

async fn cache(server: &RedisServer, namespace: &str) -> Cache {
    let cache = fast_redis_builder(namespace, server.url(), Duration::from_millis(500))
        .class(Class::new("spread").ttl(TTL).ttl_jitter(0.2))
        .class(
            Class::new("short_local")
                .ttl(TTL)
                .local_ttl(Duration::from_millis(300)),
        )
        .build()
        .expect("valid configuration");
    wait_redis_ready(&cache, scaled(Duration::from_secs(10))).await;
    cache
}

/// The TTL Redis has left on `full_key`, in milliseconds.
fn pttl(server: &RedisServer, full_key: &str) -> i64 {
    server
        .cmd(&["PTTL", full_key])
        .as_int()
        .expect("PTTL answers an integer")
}

/// Loads `n` keys with `opts`; the Redis TTLs they got, in milliseconds.
async fn stored_ttls(
    cache: &Cache,
    server: &RedisServer,
    class: &str,
    prefix: &str,
    n: usize,
    opts: &EntryOptions,
) -> Vec<i64> {
    for i in 0..n {
        let k = key(&format!("{prefix}{i}"));
        let _: u32 = cache.get_or_load(k, opts, || async { 1 }).await;
    }
    (0..n)
        .map(|i| {
            pttl(
                server,
                &format!("{}:{class}:{prefix}{i}", cache.namespace()),
            )
        })
        .collect()
}

#[tokio::test]
async fn jitter_spreads_redis_ttls_and_none_leaves_them_exact() {
    let server = RedisServer::start();
    let cache = cache(&server, "jit").await;
    let ttl_ms = TTL.as_millis() as i64;
    // Time the test itself may take: PTTL counts down while it runs.
    let slack = scaled(Duration::from_secs(5)).as_millis() as i64;

    // The class's jitter: up to 20 % shorter.
    let by_class = EntryOptions::new().class("spread");
    let ttls = stored_ttls(&cache, &server, "spread", "c", 200, &by_class).await;
    let low = ttl_ms - ttl_ms / 5 - slack;
    assert!(
        ttls.iter().all(|t| (low..=ttl_ms).contains(t)),
        "TTLs outside [ttl - jitter, ttl]: {ttls:?}"
    );
    let (min, max) = (ttls.iter().min(), ttls.iter().max());
    let spread = max.zip(min).map_or(0, |(max, min)| max - min);
    assert!(
        spread > ttl_ms / 10,
        "200 TTLs drawn over 20 s span only {spread} ms"
    );
    let mut distinct = ttls.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() > 150, "TTLs cluster: {distinct:?}");

    // The call's jitter overrides the class's: up to 5 s shorter.
    let by_call = by_class.clone().ttl_jitter(Duration::from_secs(5));
    let ttls = stored_ttls(&cache, &server, "spread", "o", 50, &by_call).await;
    assert!(
        ttls.iter()
            .all(|t| (ttl_ms - 5_000 - slack..=ttl_ms).contains(t)),
        "the call's jitter did not override the class's: {ttls:?}"
    );

    // No jitter: the TTL as configured, less only the time the test took.
    let exact = by_class.clone().ttl_jitter(Duration::ZERO);
    for ttls in [
        stored_ttls(&cache, &server, "spread", "z", 20, &exact).await,
        stored_ttls(
            &cache,
            &server,
            "default",
            "d",
            20,
            &EntryOptions::new().ttl(TTL),
        )
        .await,
    ] {
        assert!(
            ttls.iter().all(|t| (ttl_ms - slack..=ttl_ms).contains(t)),
            "TTLs without jitter are not exact: {ttls:?}"
        );
    }
    // `set` draws its TTL as well.
    cache.set(key("s"), 1u32, &by_class).await;
    let t = pttl(&server, "jit:spread:s");
    assert!((ttl_ms - ttl_ms / 5 - slack..=ttl_ms).contains(&t), "{t}");
}

/// Reads `k` until the local copy has expired: the first origin that is not the local
/// store, and how long after `since` it came.
async fn read_until_not_local(
    cache: &Cache,
    k: &Key,
    opts: &EntryOptions,
    since: Instant,
) -> (Origin, Duration) {
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    loop {
        let read = cache
            .fetch(k.clone(), opts, || async { Ok::<u32, ()>(2) })
            .await
            .expect("cached");
        if read.origin != Origin::Local {
            return (read.origin, since.elapsed());
        }
        assert!(Instant::now() < deadline, "the local copy never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_local_copy_expires_first_and_the_next_read_is_an_l2_hit() {
    let server = RedisServer::start();
    let cache = cache(&server, "lt").await;
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<u32, ()>(1)
    };
    for (name, opts) in [
        (
            "call",
            EntryOptions::new()
                .ttl(TTL)
                .local_ttl(Duration::from_millis(300)),
        ),
        ("class", EntryOptions::new().class("short_local")),
    ] {
        let k = key(name);
        let stored = Instant::now();
        let first = cache.fetch(k.clone(), &opts, load).await.expect("loaded");
        assert_eq!(first.origin, Origin::Loader);
        let again = cache.fetch(k.clone(), &opts, load).await.expect("cached");
        assert_eq!(again.origin, Origin::Local, "{name}: before its local TTL");
        let (origin, after) = read_until_not_local(&cache, &k, &opts, stored).await;
        assert_eq!(origin, Origin::Redis, "{name}: after its local TTL");
        assert!(
            after >= Duration::from_millis(290),
            "{name}: expired after {after:?}"
        );
        // Kept locally again, for the local TTL at most.
        let kept = cache.fetch(k.clone(), &opts, load).await.expect("cached");
        assert_eq!(kept.origin, Origin::Local, "{name}: kept from Redis");
        let class = opts.class_name().unwrap_or("default");
        let left = pttl(&server, &format!("lt:{class}:{name}"));
        assert!(
            left > (TTL / 2).as_millis() as i64,
            "{name}: Redis keeps its TTL: {left}"
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 2, "one load per key");

    // The call's limit overrides the class's: a long local TTL keeps it local.
    let long = EntryOptions::new()
        .class("short_local")
        .local_ttl(Duration::from_secs(60));
    let k = key("override");
    let _: u32 = cache.get_or_load(k.clone(), &long, || async { 1 }).await;
    let waited = Instant::now() + Duration::from_millis(600);
    while Instant::now() < waited {
        let read = cache.fetch(k.clone(), &long, load).await.expect("cached");
        assert_eq!(
            read.origin,
            Origin::Local,
            "the call's local TTL overrides the class's"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn skip_redis_and_local_only_never_touch_redis() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "sr").await, cache(&server, "sr").await);
    for (name, opts) in [
        ("skip", EntryOptions::new().skip_redis()),
        ("only", EntryOptions::new().local_only()),
        // No lock in Redis either.
        (
            "locked",
            EntryOptions::new()
                .skip_redis()
                .distributed_lock(Duration::from_secs(5)),
        ),
    ] {
        let k = key(name);
        // Another instance holds the key's lock: a call that took locks would wait for it.
        server.cmd(&[
            "SET",
            &format!("sr:~lock:default:{name}"),
            "other",
            "PX",
            "60000",
        ]);
        let started = Instant::now();
        let first = a
            .fetch(k.clone(), &opts, || async { Ok::<u32, ()>(1) })
            .await;
        assert_eq!(first.map(|f| f.origin), Ok(Origin::Loader), "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name} waited for a lock"
        );
        let again = a
            .fetch(k.clone(), &opts, || async { Ok::<u32, ()>(2) })
            .await;
        assert_eq!(
            again.map(|f| (f.origin, f.value)),
            Ok((Origin::Local, 1)),
            "{name}"
        );
        assert!(
            !server.holds_entry(&format!("sr:default:{name}")),
            "{name} reached Redis"
        );
        // Another instance finds nothing in Redis.
        let other = b
            .fetch(k, &EntryOptions::new(), || async { Ok::<u32, ()>(3) })
            .await;
        assert_eq!(other.map(|f| f.origin), Ok(Origin::Loader), "{name}");
    }
    // A write that skips Redis changes this instance's copy only.
    let opts = EntryOptions::new().local_only();
    a.set(key("written"), 5u32, &opts).await;
    assert_eq!(a.get_local::<u32>(key("written"), &opts).ok(), Some(5));
    assert!(!server.holds_entry("sr:default:written"));
    assert_eq!(a.counters().redis_errors, 0);
}

#[tokio::test]
async fn skip_local_reads_redis_each_time_and_keeps_nothing_locally() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server, "sl").await, cache(&server, "sl").await);
    let opts = EntryOptions::new().skip_local();
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<u32, ()>(1)
    };
    let first = a.fetch(key("k"), &opts, load).await.expect("loaded");
    assert_eq!(first.origin, Origin::Loader);
    assert!(server.holds_entry("sl:default:k"));
    for _ in 0..3 {
        let read = a.fetch(key("k"), &opts, load).await.expect("cached");
        assert_eq!(
            read.origin,
            Origin::Redis,
            "a call that skips the local store reads Redis"
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(a.get_local::<u32>(key("k"), &EntryOptions::new()).is_err());
    assert!(a.get_local::<u32>(key("k"), &opts).is_err());
    assert_eq!(a.local_entry_count(), 0, "nothing was kept locally");
    // Eager refresh needs a local hit: without one it is a plain read.
    let refreshing = opts.clone().eager_refresh(0.5);
    let read = a
        .fetch_refreshing(key("k"), &refreshing, || async { Ok::<u32, ()>(9) })
        .await
        .expect("cached");
    assert_eq!((read.origin, read.value), (Origin::Redis, 1));

    // A local copy a normal call left is not read by a call that skips the local store,
    // and a write that skips it drops it, here as on the other instances.
    let normal = EntryOptions::new();
    let _: u32 = a.get_or_load(key("w"), &normal, || async { 1 }).await;
    let _: u32 = b.get_or_load(key("w"), &normal, || async { 1 }).await;
    let read = a
        .fetch(key("w"), &opts, || async { Ok::<u32, ()>(0) })
        .await;
    assert_eq!(
        read.map(|f| f.origin),
        Ok(Origin::Redis),
        "the local copy was read"
    );
    assert!(a.get_local::<u32>(key("w"), &opts).is_err());
    assert!(a.get_local::<u32>(key("w"), &normal).is_ok());
    a.set(key("w"), 2u32, &opts).await;
    assert!(
        a.get_local::<u32>(key("w"), &normal).is_err(),
        "the older local copy stayed"
    );
    let read = a
        .fetch(key("w"), &normal, || async { Ok::<u32, ()>(0) })
        .await;
    assert_eq!(read.map(|f| (f.origin, f.value)), Ok((Origin::Redis, 2)));
    support::until(
        "the other instance drops its copy",
        scaled(Duration::from_secs(5)),
        || b.get_local::<u32>(key("w"), &normal).is_err(),
    )
    .await;
}

#[tokio::test]
async fn invalidations_reach_the_store_each_entry_is_in() {
    let server = RedisServer::start();
    let cache = cache(&server, "iv").await;
    let tag = key("user:alice");
    let redis_only = EntryOptions::new().skip_local().tag(tag.clone());
    let local_only = EntryOptions::new().local_only().tag(tag.clone());

    let _: u32 = cache
        .get_or_load(key("r"), &redis_only, || async { 1 })
        .await;
    let _: u32 = cache
        .get_or_load(key("l"), &local_only, || async { 1 })
        .await;
    assert!(server.holds_entry("iv:default:r"));
    assert!(cache.get_local::<u32>(key("l"), &local_only).is_ok());
    cache.remove(&key("r")).await;
    cache.remove(&key("l")).await;
    assert!(
        !server.holds_entry("iv:default:r"),
        "a key invalidation missed Redis"
    );
    assert!(
        cache.get_local::<u32>(key("l"), &local_only).is_err(),
        "… or the local store"
    );

    let _: u32 = cache
        .get_or_load(key("r"), &redis_only, || async { 1 })
        .await;
    let _: u32 = cache
        .get_or_load(key("l"), &local_only, || async { 1 })
        .await;
    cache.invalidate_tag(&tag).await;
    assert!(
        !server.holds_entry("iv:default:r"),
        "a tag invalidation missed Redis"
    );
    assert!(
        cache.get_local::<u32>(key("l"), &local_only).is_err(),
        "… or the local store"
    );
}

#[tokio::test]
async fn without_either_store_nothing_is_cached() {
    let cache = Cache::builder("none").build().expect("valid");
    let opts = EntryOptions::new().skip_local().skip_redis();
    let loads = AtomicUsize::new(0);
    for _ in 0..3 {
        let read = cache
            .fetch(key("k"), &opts, || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<u32, ()>(1)
            })
            .await
            .expect("loaded");
        assert_eq!(read.origin, Origin::Loader);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    assert_eq!(cache.local_entry_count(), 0);
}

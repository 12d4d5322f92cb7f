//! Multi-instance coherence on real Redis, standalone and Cluster (and Sentinel for the
//! propagation): three `Cache` instances on
//! their own connections stand for three replicas of a service.
//!
//! - an invalidation (key, tag, class, flush) or a `set` on A leaves B's and C's local stores
//!   within 100 ms, and A ignores its own echoes;
//! - a subscriber connection killed with `CLIENT KILL TYPE pubsub` loses a message, and the
//!   instance still never serves the stale entry: it revalidates against Redis, then
//!   reconciles once the channel is back;
//! - distributed stampede protection: 1,000 cold callers over 3 instances, 1 load; a dead
//!   lock holder blocks the others for no longer than the lock's TTL;
//! - eager refresh: a hit late in its TTL is served at once and refreshed once;
//! - a load racing a flush, or a tag invalidation after the tag's generation expired, does
//!   not leave its old value in Redis; on a Cluster, where it can land for a moment, readers
//!   take it for a miss;
//! - a randomized check (standalone, Sentinel, Cluster): loads on two instances race the
//!   invalidations and flushes of one, and none of its reads answers older than an
//!   acknowledged one.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormcache::{Cache, Class, EntryOptions, Invalidation, Key, Loaded, Origin};
use support::caches::wait_redis_ready;
use support::rng::Rng;
use support::scaled;
use support::topology::Topology;

fn builder(t: &Topology, namespace: &str) -> stormcache::CacheBuilder {
    Cache::builder(namespace)
        .redis_url(t.url())
        // These tests are about the channel, not deadlines: with the default 100 ms, three
        // slow commands on two loaded cores open the breaker, which opens a gap and makes
        // every local entry suspect (seen as "warmed into the local store" failing).
        .command_timeout(scaled(Duration::from_secs(1)))
        .class(Class::new("sessions").volatile())
        .class(Class::new("resources"))
}

/// Waits until the cache uses Redis and its invalidation channel is confirmed.
async fn ready(cache: Cache) -> Cache {
    wait_redis_ready(&cache, scaled(Duration::from_secs(20))).await;
    cache
}

async fn three(t: &Topology, namespace: &str) -> [Cache; 3] {
    [
        ready(builder(t, namespace).build().expect("valid")).await,
        ready(builder(t, namespace).build().expect("valid")).await,
        ready(builder(t, namespace).build().expect("valid")).await,
    ]
}

fn key(text: &str) -> Key {
    Key::literal(text).expect("valid key")
}

/// Polls `gone` until true; fails after `limit`. Returns how long it took.
async fn within(limit: Duration, what: &str, mut gone: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let deadline = start + scaled(limit);
    while !gone() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// Every instance reads `key` so that each holds it in its local store.
async fn warm(caches: &[Cache], key: &Key, opts: &EntryOptions, value: &str) {
    for cache in caches {
        let v: String = cache
            .get_or_load(key.clone(), opts, || async { value.to_owned() })
            .await;
        assert_eq!(v, value);
        assert_eq!(
            cache.get_local::<String>(key.clone(), opts).ok().as_deref(),
            Some(value),
            "warmed into the local store"
        );
    }
}

async fn invalidations_reach_every_instance(t: &Topology) {
    let [a, b, c] = three(t, "coh").await;
    let peers = [b.clone(), c.clone()];
    let opts = EntryOptions::new().class("resources");
    let gone = |k: &Key, o: &EntryOptions| {
        let (k, o) = (k.clone(), o.clone());
        let peers = peers.clone();
        move || {
            peers
                .iter()
                .all(|p| p.get_local::<String>(k.clone(), &o).is_err())
        }
    };

    // A key.
    let k = key("doc:1");
    warm(&[a.clone(), b.clone(), c.clone()], &k, &opts, "v1").await;
    a.remove(&k).await;
    within(
        Duration::from_millis(100),
        "key invalidation",
        gone(&k, &opts),
    )
    .await;

    // A tag, with a user-supplied value that must not widen it.
    let tag = Key::builder("user:").value("*").build();
    let tagged = EntryOptions::new().class("resources").tag(tag.clone());
    let k2 = key("doc:2");
    let untouched = key("doc:3");
    warm(&[a.clone(), b.clone(), c.clone()], &k2, &tagged, "v1").await;
    warm(&[a.clone(), b.clone(), c.clone()], &untouched, &opts, "v1").await;
    a.invalidate_tag(&tag).await;
    within(
        Duration::from_millis(100),
        "tag invalidation",
        gone(&k2, &tagged),
    )
    .await;
    assert!(
        b.get_local::<String>(untouched.clone(), &opts).is_ok(),
        "an untagged entry stays"
    );

    // A class (volatile classes, as the outage tier names them).
    let session = EntryOptions::new().class("sessions");
    let k4 = key("session:1");
    warm(&[a.clone(), b.clone(), c.clone()], &k4, &session, "s1").await;
    a.invalidate(&Invalidation::new().volatile_classes()).await;
    within(
        Duration::from_millis(100),
        "class invalidation",
        gone(&k4, &session),
    )
    .await;
    assert!(b.get_local::<String>(untouched.clone(), &opts).is_ok());

    // A new value written on A: the others drop their copies and read it from Redis.
    warm(&[a.clone(), b.clone(), c.clone()], &k, &opts, "v1").await;
    a.set(k.clone(), "v2".to_owned(), &opts).await;
    within(Duration::from_millis(100), "set", gone(&k, &opts)).await;
    let from_b = b
        .fetch(k.clone(), &opts, || async { Err::<String, _>("no load") })
        .await
        .expect("in Redis");
    assert_eq!(
        (from_b.value.as_str(), from_b.origin),
        ("v2", Origin::Redis)
    );

    // Everything.
    a.flush_all().await;
    within(Duration::from_millis(100), "flush", gone(&untouched, &opts)).await;

    // A never applied its own messages; B and C applied all of A's. B counts a message once
    // it has applied all of it, which can be just after its local copies are gone.
    let bpa = a.status().backplane.expect("on");
    assert_eq!(bpa.received, 0, "A skipped its own echoes: {bpa:?}");
    assert!(bpa.published >= 5, "{bpa:?}");
    let counted = |cache: &Cache| cache.status().backplane.map(|bp| bp.received);
    within(
        Duration::from_millis(100),
        "B and C applied each of A's",
        || counted(&b) == Some(bpa.published) && counted(&c) == Some(bpa.published),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_every_instance_standalone() {
    invalidations_reach_every_instance(&Topology::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_every_instance_sentinel() {
    invalidations_reach_every_instance(&Topology::sentinel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_every_instance_cluster() {
    invalidations_reach_every_instance(&Topology::cluster()).await;
}

/// Subscribers of the namespace's channel, as Redis counts them (on Cluster, summed over
/// the masters: a classic subscription lives on one node).
fn subscribers(t: &Topology, namespace: &str) -> i64 {
    let channel = format!("{namespace}:~inv");
    t.master_ports()
        .into_iter()
        .map(|port| {
            let reply = support::resp::cmd(port, &["PUBSUB", "NUMSUB", &channel])
                .unwrap_or_else(|e| panic!("PUBSUB NUMSUB: {e}"));
            match reply.as_array() {
                Some([_, n]) => n.as_int().unwrap_or(0),
                _ => panic!("PUBSUB NUMSUB answered {reply:?}"),
            }
        })
        .sum()
}

async fn a_lost_message_is_reconciled(t: &Topology) {
    // Slow reconnection, so that the gap is wide enough to publish into.
    let slow = |ns| {
        builder(t, ns)
            .reconnect_delay(Duration::from_millis(1500))
            .build()
            .expect("valid")
    };
    let a = ready(slow("gap")).await;
    let b = ready(slow("gap")).await;
    let opts = EntryOptions::new().class("resources");
    let k = key("profile:1");
    warm(&[a.clone(), b.clone()], &k, &opts, "old").await;
    assert_eq!(subscribers(t, "gap"), 2);

    for port in t.master_ports() {
        support::resp::cmd(port, &["CLIENT", "KILL", "TYPE", "pubsub"]).expect("CLIENT KILL");
    }
    // The change happens while nobody listens: its message is lost for good.
    assert_eq!(subscribers(t, "gap"), 0);
    a.remove(&k).await;
    assert_eq!(subscribers(t, "gap"), 0, "the message had no receiver");

    // B still holds "old" locally, but never serves it: it knows about the gap (the
    // connection dropped) and revalidates against Redis, which no longer has it.
    within(Duration::from_secs(1), "B notices the gap", || {
        !b.coherent()
    })
    .await;
    let read = b
        .fetch(k.clone(), &opts, || async { Ok::<_, ()>("new".to_owned()) })
        .await
        .expect("loads");
    assert_eq!((read.value.as_str(), read.origin), ("new", Origin::Loader));

    // Channel back: B reconciles and trusts what it writes from then on.
    let b = ready(b).await;
    let bp = b.status().backplane.expect("on");
    assert!(bp.reconciliations >= 1, "{bp:?}");
    let after = b
        .fetch(k.clone(), &opts, || async { Err::<String, _>("no load") })
        .await
        .expect("cached");
    assert_eq!(after.value, "new");
    let again = b
        .fetch(k.clone(), &opts, || async { Err::<String, _>("no load") })
        .await
        .expect("cached");
    assert_eq!((again.value.as_str(), again.origin), ("new", Origin::Local));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_is_reconciled_standalone() {
    a_lost_message_is_reconciled(&Topology::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_message_is_reconciled_cluster() {
    a_lost_message_is_reconciled(&Topology::cluster()).await;
}

async fn one_load_across_three_instances(t: &Topology) {
    let caches = three(t, "stampede").await;
    let loads = Arc::new(AtomicUsize::new(0));
    let opts = EntryOptions::new()
        .class("resources")
        .distributed_lock(Duration::from_secs(5));
    let k = key("report:2026");
    let mut callers = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let cache = caches[i % 3].clone();
        let (loads, opts, k) = (Arc::clone(&loads), opts.clone(), k.clone());
        callers.spawn(async move {
            cache
                .get_or_load(k, &opts, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "report".to_owned()
                })
                .await
        });
    }
    while let Some(v) = callers.join_next().await {
        assert_eq!(v.expect("caller"), "report");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load in all");
    let waits: u64 = caches.iter().map(|c| c.counters().lock_waits).sum();
    assert_eq!(waits, 2, "the two other instances waited for it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_across_three_instances_standalone() {
    one_load_across_three_instances(&Topology::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_across_three_instances_cluster() {
    one_load_across_three_instances(&Topology::cluster()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_holder_blocks_for_the_lock_ttl_at_most() {
    let t = Topology::standalone();
    let cache = ready(builder(&t, "dead").build().expect("valid")).await;
    let lock_ttl = Duration::from_millis(1500);
    let opts = EntryOptions::new().distributed_lock(lock_ttl);
    // A holder in another process took the lock and died before storing anything.
    let lock_ms = lock_ttl.as_millis().to_string();
    let set = t.cmd(&[
        "SET",
        "dead:~lock:default:k",
        "dead-holder",
        "NX",
        "PX",
        &lock_ms,
    ]);
    assert!(set.is_ok(), "{set:?}");
    let started = Instant::now();
    let loads = AtomicUsize::new(0);
    let v: String = cache
        .get_or_load(key("k"), &opts, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            "loaded".to_owned()
        })
        .await;
    let waited = started.elapsed();
    assert_eq!((v.as_str(), loads.load(Ordering::SeqCst)), ("loaded", 1));
    assert!(
        waited >= lock_ttl - Duration::from_millis(100),
        "it did wait for the holder: {waited:?}"
    );
    assert!(
        waited <= lock_ttl + scaled(Duration::from_millis(500)),
        "blocked past the lock's TTL: {waited:?}"
    );
    // The lock it took is released once the value is stored.
    assert!(t.cmd(&["GET", "dead:~lock:default:k"]).is_nil());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lock_holder_releases_its_lock() {
    let t = Topology::standalone();
    let [a, b, _] = three(&t, "cancel").await;
    let opts = EntryOptions::new().distributed_lock(Duration::from_secs(30));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let holder = {
        let opts = opts.clone();
        tokio::spawn(async move {
            let _: String = a
                .get_or_load(key("k"), &opts, || async move {
                    let _ = started_tx.send(());
                    std::future::pending::<()>().await;
                    unreachable!("never finishes")
                })
                .await;
        })
    };
    started_rx.await.expect("A is loading, holding the lock");
    assert!(!t.cmd(&["GET", "cancel:~lock:default:k"]).is_nil());
    holder.abort();
    let _ = holder.await;
    // B need not wait 30 s: the cancelled holder's lock is released.
    let v = tokio::time::timeout(
        scaled(Duration::from_secs(5)),
        b.get_or_load(key("k"), &opts, || async { "from b".to_owned() }),
    )
    .await
    .expect("B got the lock");
    assert_eq!(v, "from b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_serves_at_once_and_refreshes_once() {
    let t = Topology::standalone();
    let [a, b, _] = three(&t, "eager").await;
    let ttl = Duration::from_secs(2);
    let opts = EntryOptions::new()
        .ttl(ttl)
        .eager_refresh(0.5)
        .distributed_lock(Duration::from_secs(5));
    let loads = Arc::new(AtomicUsize::new(0));
    let fetch = |cache: &Cache| {
        let cache = cache.clone();
        let (opts, loads) = (opts.clone(), Arc::clone(&loads));
        async move {
            cache
                .fetch_refreshing(key("hot"), &opts, move || async move {
                    let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, ()>(format!("v{n}"))
                })
                .await
                .expect("infallible")
        }
    };
    let first = fetch(&a).await;
    assert_eq!((first.value.as_str(), first.origin), ("v1", Origin::Loader));
    let on_b = fetch(&b).await;
    assert_eq!((on_b.value.as_str(), on_b.origin), ("v1", Origin::Redis));
    // Early in the TTL: a hit is only a hit.
    assert_eq!(fetch(&a).await.origin, Origin::Local);
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // Past half the TTL, 100 hits on each instance at once: all served the cached value
    // at once, one refresh in all (whichever instance takes the lock first refreshes; the
    // lock keeps the other from refreshing too).
    tokio::time::sleep(ttl / 2 + Duration::from_millis(100)).await;
    let hits: Vec<_> =
        futures_util::future::join_all((0..200).map(|i| fetch(if i % 2 == 0 { &a } else { &b })))
            .await;
    assert!(hits
        .iter()
        .all(|h| h.value == "v1" && h.origin == Origin::Local));
    let holds_v2 =
        |c: &Cache| c.get_local::<String>(key("hot"), &opts).ok().as_deref() == Some("v2");
    within(Duration::from_secs(2), "the refresh lands", || {
        holds_v2(&a) || holds_v2(&b)
    })
    .await;
    assert_eq!(loads.load(Ordering::SeqCst), 2, "refreshed once");
    let (refresher, other) = if holds_v2(&a) { (&a, &b) } else { (&b, &a) };
    // The other was told, dropped its copy, and reads the refreshed value from Redis.
    within(
        Duration::from_millis(100),
        "the other drops its old copy",
        || other.get_local::<String>(key("hot"), &opts).is_err(),
    )
    .await;
    let on_other = fetch(other).await;
    assert_eq!(
        (on_other.value.as_str(), on_other.origin),
        ("v2", Origin::Redis)
    );
    // And the refreshed value has a whole TTL ahead: the next hit refreshes nothing.
    assert_eq!(fetch(refresher).await.value, "v2");
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

/// An invalidation made while Redis is down is journaled and replayed after the outage,
/// maybe before the other instances have resubscribed: they read it from the invalidation log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_journaled_during_an_outage_reaches_the_other_instances() {
    let t = Topology::standalone();
    let Topology::Standalone(server) = &t else {
        unreachable!("standalone")
    };
    let with_reconnect_delay = |delay| {
        builder(&t, "journaled")
            .probe_interval(Duration::from_millis(100))
            .reconnect_delay(delay)
            .build()
            .expect("valid")
    };
    // A is back within 50 ms and replays at once; B's channel comes back long after A
    // published, so only the invalidation log can tell B.
    let a = ready(with_reconnect_delay(Duration::from_millis(50))).await;
    let b = ready(with_reconnect_delay(Duration::from_millis(1500))).await;
    let opts = EntryOptions::new().class("resources");
    let k = key("profile:7");
    warm(&[a.clone(), b.clone()], &k, &opts, "old").await;

    server.kill();
    within(Duration::from_secs(5), "both see the outage", || {
        !a.redis_in_use() && !b.redis_in_use()
    })
    .await;
    let report = a.remove(&k).await;
    assert!(
        matches!(report.redis, stormcache::RedisOutcome::Journaled { .. }),
        "{report:?}"
    );
    // B cannot know yet: while Redis is down its local store is the fallback.
    assert!(b.get_local::<String>(k.clone(), &opts).is_ok());

    server.restart();
    let b = ready(b).await;
    let _a = ready(a).await;
    within(
        Duration::from_secs(3),
        "B drops the entry A removed",
        || b.get_local::<String>(k.clone(), &opts).is_err(),
    )
    .await;
    let read = b
        .fetch(k.clone(), &opts, || async { Ok::<_, ()>("new".to_owned()) })
        .await
        .expect("loads");
    assert_eq!(read.value, "new");
}

/// A randomized check on Redis: threads change a "database" and invalidate on instance A
/// what the change made stale (the key, one of its tags, its class or everything), while
/// reads on A and on B load through their caches from that database, B's loads writing back
/// to Redis beside A's. A read on A never answers older than what one of A's acknowledged
/// invalidations was for:
///
/// - after a key invalidation, from the moment it returns: the tombstone refuses a racing
///   load's write;
/// - after a tag invalidation or a flush, from the moment it returns: where one script
///   checks the generations and writes (standalone), a racing load's write is refused; on a
///   Cluster it can land after the invalidation's scan, and a reader takes it for a miss by
///   the generations its writer had seen.
///
/// Some keys get one of their tags from their loader rather than from the options.
fn no_read_after_an_acknowledged_invalidation_answers_older(t: &Topology) {
    use std::sync::Mutex;

    const KEYS: usize = 24;
    const THREADS: u64 = 4;
    const OPS: u64 = 1_500;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let caches: Vec<Cache> = rt.block_on(async {
        let mut caches = Vec::new();
        for _ in 0..2 {
            let cache = builder(t, "randomized").build().expect("valid");
            caches.push(ready(cache).await);
        }
        caches
    });
    let tags = |i: usize| [i % 4, 4 + (i / 4) % 3];
    let tag = |t: usize| key(&format!("t{t}"));
    let class = |i: usize| if i % 2 == 0 { "sessions" } else { "resources" };
    // A third of the keys get their second tag from their loader (`Loaded::tag`), not from
    // the options: neither their load nor their readers read its generation with the entry.
    let added = move |i: usize| (i % 3 == 2).then(|| tag(tags(i)[1]));
    let options = move |i: usize| {
        let named = &tags(i)[..if added(i).is_some() { 1 } else { 2 }];
        named
            .iter()
            .fold(EntryOptions::new().class(class(i)), |o, &t| o.tag(tag(t)))
    };
    let db: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    // What each key's acknowledged key invalidations were for, and its other invalidations
    // with when they returned.
    let by_key: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let by_others: Arc<Mutex<Vec<(usize, u64, Instant)>>> = Arc::default();
    let threads: Vec<_> = (0..THREADS)
        .map(|seed| {
            let (db, by_key, by_others) =
                (Arc::clone(&db), Arc::clone(&by_key), Arc::clone(&by_others));
            let (a, b) = (caches[0].clone(), caches[1].clone());
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut next = move |n: usize| rng.index(n);
                let mut stale = Vec::new();
                for _ in 0..OPS {
                    let i = next(KEYS);
                    let roll = next(100);
                    if roll < 70 {
                        let on_a = roll < 35;
                        let began = Instant::now();
                        let floor = by_key[i].load(Ordering::SeqCst).max(
                            by_others
                                .lock()
                                .expect("acks")
                                .iter()
                                .filter(|&&(k, _, ended)| k == i && ended <= began)
                                .map(|&(_, v, _)| v)
                                .max()
                                .unwrap_or(0),
                        );
                        let db = Arc::clone(&db);
                        // The origin answers after a while, as a database does.
                        let took = Duration::from_micros(next(2_000) as u64);
                        let load = || async move {
                            let v = db[i].load(Ordering::SeqCst);
                            tokio::time::sleep(took).await;
                            let loaded = added(i).into_iter().fold(Loaded::new(v), Loaded::tag);
                            Ok::<_, std::convert::Infallible>(loaded)
                        };
                        let cache = if on_a { &a } else { &b };
                        let Ok(fetched) = handle.block_on(cache.fetch_adaptive(
                            key(&format!("k{i}")),
                            &options(i),
                            load,
                        ));
                        if on_a && fetched.value < floor {
                            stale.push(format!(
                                "k{i}: {} from {:?}, after {floor}",
                                fetched.value, fetched.origin
                            ));
                        }
                        continue;
                    }
                    db[i].fetch_add(1, Ordering::SeqCst);
                    let (inv, reaches): (Invalidation, Box<dyn Fn(usize) -> bool>) = match next(20)
                    {
                        0..=9 => {
                            // What the database held when the invalidation began: every
                            // read that begins after it returns must see at least that.
                            let v = db[i].load(Ordering::SeqCst);
                            let inv = Invalidation::new().key(key(&format!("k{i}")));
                            handle.block_on(a.invalidate(&inv));
                            by_key[i].fetch_max(v, Ordering::SeqCst);
                            continue;
                        }
                        10..=16 => {
                            let t = tags(i)[next(2)];
                            let inv = Invalidation::new().tag(tag(t));
                            (inv, Box::new(move |j| tags(j).contains(&t)))
                        }
                        17..=18 => {
                            let c = class(i);
                            let inv = Invalidation::new().class(c);
                            (inv, Box::new(move |j| class(j) == c))
                        }
                        _ => (Invalidation::new().everything(), Box::new(|_| true)),
                    };
                    let reached: Vec<(usize, u64)> = (0..KEYS)
                        .filter(|&j| reaches(j))
                        .map(|j| (j, db[j].load(Ordering::SeqCst)))
                        .collect();
                    handle.block_on(a.invalidate(&inv));
                    let ended = Instant::now();
                    let mut acks = by_others.lock().expect("acks");
                    acks.extend(reached.into_iter().map(|(j, v)| (j, v, ended)));
                }
                stale
            })
        })
        .collect();
    let stale: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    for cache in &caches {
        assert!(
            cache.redis_in_use(),
            "Redis stayed in use: {:?}",
            cache.status()
        );
    }
    assert!(
        stale.is_empty(),
        "{} reads on A answered older than an acknowledged invalidation: {:#?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
}

#[test]
fn no_read_after_an_acknowledged_invalidation_answers_older_standalone() {
    no_read_after_an_acknowledged_invalidation_answers_older(&Topology::standalone());
}

#[test]
fn no_read_after_an_acknowledged_invalidation_answers_older_sentinel() {
    no_read_after_an_acknowledged_invalidation_answers_older(&Topology::sentinel());
}

#[test]
fn no_read_after_an_acknowledged_invalidation_answers_older_cluster() {
    no_read_after_an_acknowledged_invalidation_answers_older(&Topology::cluster());
}

/// A load on `cache` whose loader has read the origin and waits to be let go, so that a test
/// can change the origin and flush in between.
struct RacingLoad {
    task: tokio::task::JoinHandle<u64>,
    go: Arc<tokio::sync::Notify>,
}

impl RacingLoad {
    /// Starts a load of `k`; returns once its loader has read `origin`.
    async fn start(cache: &Cache, k: &Key, opts: &EntryOptions, origin: &Arc<AtomicU64>) -> Self {
        use tokio::sync::Notify;
        let (read, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let task = {
            let (cache, k, opts, origin) =
                (cache.clone(), k.clone(), opts.clone(), Arc::clone(origin));
            let (read, go) = (Arc::clone(&read), Arc::clone(&go));
            tokio::spawn(async move {
                cache
                    .get_or_load(k, &opts, || async move {
                        let v = origin.load(Ordering::SeqCst);
                        read.notify_one();
                        go.notified().await;
                        v
                    })
                    .await
            })
        };
        read.notified().await;
        RacingLoad { task, go }
    }

    /// Lets the load write what it read; what its caller got.
    async fn finish(self) -> u64 {
        self.go.notify_one();
        self.task.await.expect("load")
    }
}

/// Checks that the racing load's write left no value at `entry` in Redis, once the load has
/// returned. Where one script checks the generations and writes (standalone, Sentinel), the
/// write was refused: the key holds nothing, at once (the callers run no key invalidation,
/// so a tombstone there could only be the racing write's own invalidation, after it
/// landed). On a Cluster the write lands and is invalidated after its check: this waits
/// for that, two command deadlines at most.
async fn racing_write_gone(t: &Topology, entry: &str) {
    let get = || t.cmd(&["GET", entry]);
    match t {
        Topology::Cluster(_) => {
            within(
                Duration::from_secs(2),
                "the racing write invalidated in Redis",
                || match get() {
                    support::resp::RespValue::Nil => true,
                    support::resp::RespValue::Bulk(bytes) => bytes.get(..3) == Some(b"SC\0"),
                    other => panic!("GET {entry}: {other:?}"),
                },
            )
            .await;
        }
        _ => assert_eq!(
            get(),
            support::resp::RespValue::Nil,
            "the racing write was never made"
        ),
    }
}

/// A load on B reads the origin, then A changes it and flushes (the class, or everything),
/// then B writes what it read. B has not heard of the flush (no backplane here), so its
/// write lands in Redis after the flush's scan; the flush's generation, read back after the
/// write, tells B to invalidate it. Without that, the old value would stay in Redis until
/// its TTL and every instance would load it from there.
async fn a_load_racing_a_flush_does_not_bring_its_value_back(t: &Topology, flush: Invalidation) {
    let namespace = "flushrace";
    let a = ready(builder(t, namespace).build().expect("valid")).await;
    let b = ready(
        builder(t, namespace)
            .backplane(false)
            .build()
            .expect("valid"),
    )
    .await;
    let k = key("doc:1");
    let opts = EntryOptions::new().class("resources");
    let origin = Arc::new(AtomicU64::new(1));
    let racing = RacingLoad::start(&b, &k, &opts, &origin).await;
    origin.store(2, Ordering::SeqCst);
    a.invalidate(&flush).await;
    assert_eq!(racing.finish().await, 1, "B's caller gets what B loaded");
    // B's write was refused, or landed and was invalidated: from then on no instance reads
    // the old value.
    racing_write_gone(t, &format!("{namespace}:resources:doc:1")).await;
    for cache in [&a, &b] {
        let v: u64 = cache
            .get_or_load(k.clone(), &opts, || async { origin.load(Ordering::SeqCst) })
            .await;
        assert_eq!(v, 2, "read after the flush and the racing write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_class_flush_does_not_bring_its_value_back_standalone() {
    let t = Topology::standalone();
    a_load_racing_a_flush_does_not_bring_its_value_back(&t, Invalidation::new().class("resources"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_namespace_flush_does_not_bring_its_value_back_standalone() {
    let t = Topology::standalone();
    a_load_racing_a_flush_does_not_bring_its_value_back(&t, Invalidation::new().everything()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_class_flush_does_not_bring_its_value_back_cluster() {
    let t = Topology::cluster();
    a_load_racing_a_flush_does_not_bring_its_value_back(&t, Invalidation::new().class("resources"))
        .await;
}

/// A load on B reads the origin and its tag's generation just before that generation
/// expires; then A changes the origin and invalidates the tag, then B writes what it read.
/// The invalidation's scan cannot see B's entry, so only the generation tells B to remove
/// it, and a generation that starts counting again from nothing after expiring would read
/// exactly what B read before (the expiry is made at once here with DEL, which is what it
/// does in Redis).
async fn a_tag_generation_that_expired_still_shows_the_next_invalidation(t: &Topology) {
    let namespace = "tagexpiry";
    let a = ready(builder(t, namespace).build().expect("valid")).await;
    let b = ready(
        builder(t, namespace)
            .backplane(false)
            .build()
            .expect("valid"),
    )
    .await;
    let (k, tag) = (key("doc:1"), key("grp"));
    let opts = EntryOptions::new().class("resources").tag(tag.clone());
    let invalidation = Invalidation::new().tag(tag);
    a.invalidate(&invalidation).await;
    let origin = Arc::new(AtomicU64::new(1));
    let racing = RacingLoad::start(&b, &k, &opts, &origin).await;
    let generation = format!("{namespace}:~tagv:grp");
    assert_eq!(
        t.cmd(&["DEL", &generation]),
        support::resp::RespValue::Int(1),
        "the first invalidation left a generation"
    );
    origin.store(2, Ordering::SeqCst);
    a.invalidate(&invalidation).await;
    assert_eq!(racing.finish().await, 1, "B's caller gets what B loaded");
    racing_write_gone(t, &format!("{namespace}:resources:doc:1")).await;
    for cache in [&a, &b] {
        let v: u64 = cache
            .get_or_load(k.clone(), &opts, || async { origin.load(Ordering::SeqCst) })
            .await;
        assert_eq!(v, 2, "read after the invalidation and the racing write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_generation_that_expired_still_shows_the_next_invalidation_standalone() {
    a_tag_generation_that_expired_still_shows_the_next_invalidation(&Topology::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_generation_that_expired_still_shows_the_next_invalidation_cluster() {
    a_tag_generation_that_expired_still_shows_the_next_invalidation(&Topology::cluster()).await;
}

/// On a Cluster a load racing a tag invalidation or a flush can land its value after the
/// invalidation's scan, and it stays in Redis until the load's own check after the write has
/// removed it. Meanwhile a reader must take it for a miss. The racing write is made by hand
/// here: the bytes a load wrote before the change, put back after the invalidation returned.
/// An explicit `set` after an invalidation is still read from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_landed_after_an_invalidation_is_not_read_cluster() {
    let t = Topology::cluster();
    let namespace = "landedlate";
    let a = ready(builder(&t, namespace).build().expect("valid")).await;
    let (k, tag) = (key("doc:1"), key("grp"));
    let opts = EntryOptions::new().class("resources").tag(tag.clone());
    let entry = format!("{namespace}:resources:doc:1");
    let origin = Arc::new(AtomicU64::new(1));
    let load = || {
        let origin = Arc::clone(&origin);
        move || async move { origin.load(Ordering::SeqCst) }
    };
    for inv in [
        Invalidation::new().tag(tag.clone()),
        Invalidation::new().class("resources"),
        Invalidation::new().everything(),
    ] {
        let before = origin.load(Ordering::SeqCst);
        assert_eq!(a.get_or_load(k.clone(), &opts, load()).await, before);
        let support::resp::RespValue::Bulk(written) = t.cmd(&["GET", &entry]) else {
            panic!("{entry}: the load's value in Redis");
        };
        origin.store(before + 1, Ordering::SeqCst);
        a.invalidate(&inv).await;
        land_late(&t, &entry, &written);
        let read = a.fetch(k.clone(), &opts, load_ok(&origin)).await;
        assert_eq!(
            read.map(|f| (f.value, f.origin)),
            Ok((before + 1, Origin::Loader)),
            "read after {inv:?}"
        );
    }
    // An explicit write is the newest value, whatever the generations say.
    a.invalidate(&Invalidation::new().tag(tag.clone())).await;
    let b = ready(builder(&t, namespace).build().expect("valid")).await;
    a.set(k.clone(), 42u64, &opts).await;
    let read = b.fetch(k.clone(), &opts, load_ok(&origin)).await;
    assert_eq!(read.map(|f| (f.value, f.origin)), Ok((42, Origin::Redis)));
}

/// The same for a tag the loader adds at run time (`Loaded::tag`): neither the load nor a
/// reader that does not name the tag reads its generation with the entry, so while the entry
/// is young the reader reads it after the entry. Before the invalidation, the same read of
/// the same entry is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_its_loader_tagged_that_landed_after_the_invalidation_is_not_read_cluster() {
    let t = Topology::cluster();
    let namespace = "landedlateadded";
    let a = ready(builder(&t, namespace).build().expect("valid")).await;
    let (k, tag) = (key("doc:1"), key("folder:7"));
    // The reader names no tag: the loader adds it.
    let opts = EntryOptions::new().class("resources");
    let entry = format!("{namespace}:resources:doc:1");
    let origin = Arc::new(AtomicU64::new(1));
    let load = |origin: &Arc<AtomicU64>| {
        let (v, tag) = (origin.load(Ordering::SeqCst), tag.clone());
        move || std::future::ready(Ok::<_, std::convert::Infallible>(Loaded::new(v).tag(tag)))
    };
    let loaded = a.fetch_adaptive(k.clone(), &opts, load(&origin)).await;
    assert_eq!(loaded.map(|f| (f.value, f.origin)), Ok((1, Origin::Loader)));
    let support::resp::RespValue::Bulk(written) = t.cmd(&["GET", &entry]) else {
        panic!("{entry}: the load's value in Redis");
    };
    // Another instance reads the young entry from Redis (never from a local copy, which the
    // invalidation's message reaches in its own time).
    let b = ready(builder(&t, namespace).build().expect("valid")).await;
    let b_opts = opts.clone().skip_local();
    let read = b.fetch_adaptive(k.clone(), &b_opts, load(&origin)).await;
    assert_eq!(read.map(|f| (f.value, f.origin)), Ok((1, Origin::Redis)));
    origin.store(2, Ordering::SeqCst);
    a.invalidate(&Invalidation::new().tag(tag.clone())).await;
    land_late(&t, &entry, &written);
    for (cache, opts) in [(&b, &b_opts), (&a, &opts)] {
        let read = cache.fetch_adaptive(k.clone(), opts, load(&origin)).await;
        assert_eq!(read.map(|f| (f.value, f.origin)), Ok((2, Origin::Loader)));
    }
}

/// The write of a load that raced an invalidation, landing after its scan: the bytes the
/// load wrote before, put back at `entry` on the Cluster `t`.
fn land_late(t: &Topology, entry: &str, written: &[u8]) {
    let Topology::Cluster(cluster) = t else {
        unreachable!("a Cluster")
    };
    let landed = cluster.cmd(&[
        b"SET".as_slice(),
        entry.as_bytes(),
        written,
        b"PX".as_slice(),
        b"60000".as_slice(),
    ]);
    assert!(landed.is_ok(), "{landed:?}");
}

/// A loader that reads `origin` and never fails.
fn load_ok(
    origin: &Arc<AtomicU64>,
) -> impl FnOnce() -> std::future::Ready<Result<u64, std::convert::Infallible>> {
    let v = origin.load(Ordering::SeqCst);
    move || std::future::ready(Ok(v))
}

/// Flushes still stop a racing load after Redis came back empty, its flush generations gone:
/// A flushed a class three times and knew generation 3; Redis restarts empty; A's load reads
/// the origin; the origin changes and C flushes the class three times, which brings the
/// generation back to 3; A writes what it read. What A knew before the outage must not stand
/// for what Redis holds after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_counted_again_after_redis_came_back_empty_are_still_seen() {
    let t = Topology::standalone();
    let Topology::Standalone(server) = &t else {
        unreachable!("a standalone topology")
    };
    let namespace = "flushreset";
    // No backplane on A: it hears of C's flushes only through the generations.
    let a = ready(
        builder(&t, namespace)
            .backplane(false)
            .build()
            .expect("valid"),
    )
    .await;
    let c = ready(builder(&t, namespace).build().expect("valid")).await;
    let class = Invalidation::new().class("resources");
    for _ in 0..3 {
        a.invalidate(&class).await;
    }
    server.kill();
    within(Duration::from_secs(10), "A saw Redis go", || {
        !a.redis_in_use()
    })
    .await;
    server.restart();
    within(Duration::from_secs(20), "A back on Redis", || {
        a.redis_in_use()
    })
    .await;
    let c = ready(c).await;
    let k = key("doc:1");
    let opts = EntryOptions::new().class("resources");
    let origin = Arc::new(AtomicU64::new(1));
    let racing = RacingLoad::start(&a, &k, &opts, &origin).await;
    origin.store(2, Ordering::SeqCst);
    for _ in 0..3 {
        c.invalidate(&class).await;
    }
    assert_eq!(racing.finish().await, 1);
    racing_write_gone(&t, &format!("{namespace}:resources:doc:1")).await;
    let v: u64 = c
        .get_or_load(k, &opts, || async { origin.load(Ordering::SeqCst) })
        .await;
    assert_eq!(v, 2, "read after the flushes and the racing write");
}

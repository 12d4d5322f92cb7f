//! Client-side tracking (feature `client-tracking`) on real Redis: standalone, Sentinel and
//! Cluster.
//!
//! - a `DEL` and a `SET` made by a raw client on an entry's key remove the local copy; so
//!   does the key expiring in Redis;
//! - on a Cluster, keys served by every master are caught (each master is armed);
//! - after a kill and restart of the server, tracking is armed again and an outside write
//!   is caught again; while it was down nothing was served as trusted;
//! - propagation: the time from an outside `DEL` to the local copy's removal, printed next
//!   to the backplane's (an invalidation by another instance).
//!
//! Every report is counted in `Status::tracking`, this instance's own writes included: each
//! step that writes waits for its report, so a late report never removes a copy a later
//! step relies on.
#![cfg(feature = "client-tracking")]

mod support;

use std::time::{Duration, Instant};

use stormcache::{Cache, CacheEvent, Class, EntryOptions, Key};
use support::caches::wait_redis_ready;
use support::topology::Topology;
use support::{scaled, until};

const NS: &str = "trk";

fn builder(t: &Topology, namespace: &str) -> stormcache::CacheBuilder {
    Cache::builder(namespace)
        .redis_url(t.url())
        // Deadlines are not under test: on two loaded cores the default 100 ms opens the
        // breaker now and then, which makes every local entry suspect.
        .command_timeout(scaled(Duration::from_secs(1)))
        .probe_interval(Duration::from_millis(100))
        .reconnect_delay(Duration::from_millis(50))
        .class(Class::new("resources"))
}

async fn ready(cache: Cache) -> Cache {
    wait_redis_ready(&cache, scaled(Duration::from_secs(20))).await;
    cache
}

/// An instance on `t` with client tracking, ready.
async fn tracked(t: &Topology) -> Cache {
    ready(builder(t, NS).client_tracking(true).build().expect("valid")).await
}

fn key(text: &str) -> Key {
    Key::literal(text).expect("valid key")
}

fn opts() -> EntryOptions {
    EntryOptions::new().class("resources")
}

/// Reports applied so far.
fn reported(cache: &Cache) -> u64 {
    cache.status().tracking.expect("tracking on").keys
}

fn held(cache: &Cache, k: &Key) -> bool {
    cache.get_local::<String>(k.clone(), &opts()).is_ok()
}

/// Waits until a report beyond `before` has been applied.
async fn report_after(cache: &Cache, before: u64, what: &str) {
    until(what, scaled(Duration::from_secs(5)), || {
        reported(cache) > before
    })
    .await;
}

/// Runs a write that Redis reports (`write` returns once it is made), then waits until its
/// report is applied, so that no report is still on its way when the next step begins.
async fn reported_write<T>(
    cache: &Cache,
    what: &str,
    write: impl std::future::Future<Output = T>,
) -> T {
    let before = reported(cache);
    let out = write.await;
    report_after(cache, before, what).await;
    out
}

/// Puts `value` under `k` in Redis (through the cache, which reports its own write back)
/// and then in the local store, read back from Redis.
///
/// The read back is repeated until the copy is held: right after a failover, on loaded
/// cores, a report of an earlier write can arrive late (a re-applied invalidation, a write
/// that timed out and is invalidated) and be taken for this write's, or a connection can be
/// replaced once more (a gap): either drops the copy just read, and only costs a read.
async fn warm(cache: &Cache, k: &Key, value: &str) {
    let before = reported(cache);
    let v: String = cache
        .get_or_load(k.clone(), &opts(), || async { value.to_owned() })
        .await;
    assert_eq!(v, value);
    report_after(cache, before, "the cache's own write reported").await;
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    loop {
        let v: String = cache
            .get_or_load(k.clone(), &opts(), || async { "loaded again".to_owned() })
            .await;
        assert_eq!(v, value, "read back from Redis");
        if held(cache, k) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never held in the local store: {:?}",
            cache.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls (yielding, not sleeping, for resolution) until `k` is no longer held; how long
/// it took from `from`.
async fn dropped_within(cache: &Cache, k: &Key, from: Instant, what: &str) -> Duration {
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    while held(cache, k) {
        assert!(Instant::now() < deadline, "{what}: local copy still held");
        tokio::task::yield_now().await;
    }
    from.elapsed()
}

fn full_key(k: &str) -> String {
    format!("{NS}:resources:{k}")
}

/// Deletes the entry `name` with a raw client, then waits until the local copy is dropped
/// (`what` names the wait) and the DEL's report is applied; how long the drop took.
async fn outside_del(t: &Topology, cache: &Cache, name: &str, what: &str) -> Duration {
    let before = reported(cache);
    let from = Instant::now();
    assert_eq!(t.cmd(&["DEL", &full_key(name)]).as_int(), Some(1));
    let took = dropped_within(cache, &key(name), from, what).await;
    report_after(cache, before, "DEL reported").await;
    took
}

/// Warms 12 entries `<prefix>:<i>` (enough to cover a Cluster's three slot ranges), then
/// checks that an outside DEL of each is caught.
async fn outside_dels_caught_on_every_master(
    t: &Topology,
    cache: &Cache,
    prefix: &str,
    what: &str,
) {
    let names: Vec<String> = (0..12).map(|i| format!("{prefix}:{i}")).collect();
    for name in &names {
        warm(cache, &key(name), "v").await;
    }
    for name in &names {
        outside_del(t, cache, name, what).await;
    }
}

async fn outside_writes_are_caught(t: Topology) {
    let cache = tracked(&t).await;

    // A DEL by redis-cli.
    let k = key("doc:del");
    warm(&cache, &k, "v1").await;
    let took = outside_del(&t, &cache, "doc:del", "outside DEL").await;
    println!("outside DEL -> local copy dropped in {took:?}");
    let v: String = reported_write(
        &cache,
        "the reload's write reported",
        cache.get_or_load(k.clone(), &opts(), || async { "v2".to_owned() }),
    )
    .await;
    assert_eq!(v, "v2", "the next read loads again");

    // Another service writes the key (anything: stormcache reads it as a miss).
    let k = key("doc:set");
    warm(&cache, &k, "v1").await;
    let before = reported(&cache);
    assert!(t.cmd(&["SET", &full_key("doc:set"), "foreign"]).is_ok());
    dropped_within(&cache, &k, Instant::now(), "outside SET").await;
    report_after(&cache, before, "SET reported").await;

    // The key expires in Redis: PEXPIRE is itself a change (reported), then the expiry is.
    let k = key("doc:exp");
    warm(&cache, &k, "v1").await;
    let before = reported(&cache);
    assert_eq!(
        t.cmd(&["PEXPIRE", &full_key("doc:exp"), "1500"]).as_int(),
        Some(1)
    );
    report_after(&cache, before, "PEXPIRE reported").await;
    let v: String = cache
        .get_or_load(k.clone(), &opts(), || async { "loaded".to_owned() })
        .await;
    assert_eq!(v, "v1", "still in Redis");
    assert!(held(&cache, &k), "held again until the expiry");
    let before = reported(&cache);
    dropped_within(&cache, &k, Instant::now(), "expiry in Redis").await;
    report_after(&cache, before, "expiry reported").await;

    // Keys on every master (Cluster).
    outside_dels_caught_on_every_master(&t, &cache, "spread", "outside DEL on any master").await;

    // Internal keys are outside the tracked prefixes: a heartbeat or tag-set write is
    // never reported (nothing else writes meanwhile, so the count stays).
    let before = reported(&cache);
    assert!(t.cmd(&["SET", &format!("{NS}:~probe"), "x"]).is_ok());
    let k = key("doc:after-probe");
    warm(&cache, &k, "v").await;
    assert_eq!(reported(&cache), before + 1, "only the entry's own write");
    // Each check found every master still tracking: never armed twice on a healthy run.
    let status = cache.status().tracking.expect("tracking on");
    assert!(status.armed);
    assert_eq!(status.rearms, 0, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone() {
    outside_writes_are_caught(Topology::standalone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel() {
    outside_writes_are_caught(Topology::sentinel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster() {
    outside_writes_are_caught(Topology::cluster()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rearmed_after_a_restart() {
    let t = Topology::standalone();
    let Topology::Standalone(server) = &t else {
        unreachable!()
    };
    let cache = tracked(&t).await;
    let k = key("doc:1");
    warm(&cache, &k, "v1").await;

    server.kill();
    until("tracking disarmed", scaled(Duration::from_secs(5)), || {
        !cache.status().tracking.expect("on").armed
    })
    .await;
    server.restart();
    until(
        "tracking armed again",
        scaled(Duration::from_secs(20)),
        || cache.coherent() && cache.redis_in_use(),
    )
    .await;
    let status = cache.status().tracking.expect("on");
    assert!(status.armed && status.rearms >= 1, "{status:?}");

    // An outside write is caught again.
    warm(&cache, &key("doc:2"), "v1").await;
    outside_del(&t, &cache, "doc:2", "outside DEL after the restart").await;
}

/// The id of the tracking connection (the one speaking RESP3) on a standalone server.
fn tracking_connection_id(t: &Topology) -> String {
    let list = t.cmd(&["CLIENT", "LIST"]).to_display();
    let line = list
        .lines()
        .find(|l| l.contains(" resp=3"))
        .unwrap_or_else(|| panic!("no RESP3 connection in {list}"));
    line.split(' ')
        .find_map(|field| field.strip_prefix("id="))
        .expect("an id field")
        .to_owned()
}

/// Only the tracking connection is killed, and an outside write lands while it is gone: it
/// is never reported, yet the stale copy is never served. The entry is suspect from the
/// connection's loss (the backplane stays connected all along) and, after re-arming,
/// entries written before it are revalidated against Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_missed_while_the_tracking_connection_is_down_is_never_served() {
    let t = Topology::standalone();
    let cache = tracked(&t).await;
    let k = key("doc:1");
    warm(&cache, &k, "v1").await;
    let rearms = cache.status().tracking.expect("on").rearms;
    let mut events = cache.events();

    let id = tracking_connection_id(&t);
    assert_eq!(t.cmd(&["CLIENT", "KILL", "ID", &id]).as_int(), Some(1));
    // Not armed on any connection now: this write is reported to no one.
    assert!(t.cmd(&["SET", &full_key("doc:1"), "foreign"]).is_ok());
    until(
        "tracking armed again",
        scaled(Duration::from_secs(10)),
        || {
            let status = cache.status().tracking.expect("on");
            status.armed && status.rearms > rearms
        },
    )
    .await;
    assert!(
        cache.status().backplane.expect("on").connected,
        "the backplane saw no gap"
    );
    assert!(
        !held(&cache, &k),
        "the copy from before the gap is not served"
    );
    let v: String = cache
        .get_or_load(k.clone(), &opts(), || async { "fresh".to_owned() })
        .await;
    assert_eq!(
        v, "fresh",
        "revalidated against Redis, which holds no entry of ours"
    );

    // The gap was reported, and its end.
    let mut opened = false;
    let mut closed = false;
    while let Ok(event) = events.try_recv() {
        match event {
            CacheEvent::GapOpened { reason } => opened |= reason.starts_with("client tracking:"),
            CacheEvent::GapClosed { caught_up } => closed |= !caught_up,
            _ => {}
        }
    }
    assert!(
        opened && closed,
        "gap events: opened {opened}, closed {closed}"
    );
}

/// A master dies and a replica takes over: tracking is armed on the new master and an
/// outside write there is caught (on a Cluster, keys on every master, the new one among them).
async fn rearmed_after_a_failover(t: Topology) {
    let cache = tracked(&t).await;
    let k = key("doc:before");
    warm(&cache, &k, "v1").await;
    let rearms = cache.status().tracking.expect("on").rearms;

    match &t {
        Topology::Sentinel(group) => {
            let old = group.kill_master();
            group.wait_for_new_master(old, scaled(Duration::from_secs(30)));
        }
        Topology::Cluster(cluster) => {
            let old = cluster.master_ports()[0];
            cluster.kill_node(old);
            cluster.wait_for_promotion(old, scaled(Duration::from_secs(30)));
        }
        Topology::Standalone(_) => unreachable!("no replica to fail over to"),
    }
    finish_failover(&t, &cache, rearms).await;
}

/// `SENTINEL FAILOVER` with the old master alive: fred would stay on it, and it would
/// report nothing of the writes now made on the new master; the Sentinel watcher moves
/// tracking too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rearmed_after_a_manual_sentinel_failover() {
    let t = Topology::sentinel();
    let cache = tracked(&t).await;
    let rearms = cache.status().tracking.expect("on").rearms;
    let Topology::Sentinel(group) = &t else {
        unreachable!()
    };
    group.failover();
    finish_failover(&t, &cache, rearms).await;
}

/// After a failover: tracking is armed again (more than `rearms` times) and outside DELs
/// on keys of every master are caught.
async fn finish_failover(t: &Topology, cache: &Cache, rearms: u64) {
    until(
        "tracking armed again on the new master",
        scaled(Duration::from_secs(30)),
        || {
            let status = cache.status().tracking.expect("on");
            status.armed && status.rearms > rearms && cache.coherent() && cache.redis_in_use()
        },
    )
    .await;

    outside_dels_caught_on_every_master(t, cache, "after", "outside DEL after the failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rearmed_after_a_sentinel_failover() {
    rearmed_after_a_failover(Topology::sentinel()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rearmed_after_a_cluster_failover() {
    rearmed_after_a_failover(Topology::cluster()).await;
}

/// Percentile `p` (0–100) of sorted `samples`.
fn pct(samples: &[Duration], p: usize) -> Duration {
    samples[(samples.len() - 1) * p / 100]
}

/// Outside DEL → tracked instance drops its copy, next to: invalidation on instance A →
/// instance B (backplane) drops its copy. Printed (run with `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_next_to_the_backplane() {
    const ROUNDS: usize = 50;
    let t = Topology::standalone();
    let Topology::Standalone(server) = &t else {
        unreachable!()
    };
    let tracked = tracked(&t).await;
    let a = ready(builder(&t, "bp").build().expect("valid")).await;
    let b = ready(builder(&t, "bp").build().expect("valid")).await;
    let mut conn = support::resp::Conn::connect(server.port()).expect("raw connection");

    let mut tracking = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let name = format!("p:{i}");
        let k = key(&name);
        warm(&tracked, &k, "v").await;
        let before = reported(&tracked);
        let from = Instant::now();
        let reply = conn.cmd(&["DEL", &full_key(&name)]).expect("DEL");
        assert_eq!(reply.as_int(), Some(1));
        tracking.push(dropped_within(&tracked, &k, from, "outside DEL").await);
        report_after(&tracked, before, "DEL reported").await;
    }

    let mut backplane = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let k = key(&format!("p:{i}"));
        let v: String = a
            .get_or_load(k.clone(), &opts(), || async { "v".to_owned() })
            .await;
        let w: String = b
            .get_or_load(k.clone(), &opts(), || async { "other".to_owned() })
            .await;
        assert_eq!((v.as_str(), w.as_str()), ("v", "v"));
        assert!(held(&b, &k));
        let from = Instant::now();
        a.remove(&k).await;
        backplane.push(dropped_within(&b, &k, from, "backplane invalidation").await);
    }

    tracking.sort();
    backplane.sort();
    println!(
        "propagation over {ROUNDS} rounds (p50 / p90 / max): client tracking, outside DEL: \
         {:?} / {:?} / {:?}; backplane, invalidation on another instance: {:?} / {:?} / {:?}",
        pct(&tracking, 50),
        pct(&tracking, 90),
        pct(&tracking, 100),
        pct(&backplane, 50),
        pct(&backplane, 90),
        pct(&backplane, 100),
    );
    assert!(pct(&tracking, 50) < scaled(Duration::from_millis(100)));
}

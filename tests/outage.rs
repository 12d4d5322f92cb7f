//! Outage resilience against real processes, with the policy's thresholds compressed to
//! seconds (tiers at 1 s / 3 s / 6 s).
//!
//! Faults covered: standalone SIGKILL + restart (short and long outage), SIGSTOP … SIGCONT,
//! TCP blackhole, connection reset and added delay through the harness's proxy, Sentinel
//! master SIGKILL, manual `SENTINEL FAILOVER` with the old master alive, Cluster master
//! SIGKILL, restart from an old RDB snapshot, invalidation during an outage, and journal
//! overflow. In each, a loop of cached calls runs throughout and must see no error and no
//! call longer than the command deadline allows; the test then asserts the tier applied and
//! what it flushed.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stormcache::{
    Cache, Class, EntryOptions, FlushScope, HealthState, Key, Origin, OutagePolicy, OutageRecord,
    RedisOutcome,
};
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::topology::Topology;
use support::{until, FaultProxy, RedisServer, SentinelGroup};

const TIMEOUT: Duration = Duration::from_millis(100);

fn policy() -> OutagePolicy {
    OutagePolicy::new()
        .tier(
            Duration::from_secs(1),
            FlushScope::Classes(vec!["sessions".into()]),
        )
        .tier(Duration::from_secs(3), FlushScope::Volatile)
        .tier(Duration::from_secs(6), FlushScope::All)
}

fn cache(url: String, namespace: &str) -> Cache {
    fast_redis_builder(namespace, url, TIMEOUT)
        .outage_policy(policy())
        .class(Class::new("sessions").volatile())
        .class(Class::new("permissions").volatile())
        .class(Class::new("resources"))
        .build()
        .expect("valid configuration")
}

async fn in_use(cache: &Cache) {
    wait_redis_ready(cache, Duration::from_secs(20)).await;
}

async fn down(cache: &Cache) {
    until("the circuit to open", Duration::from_secs(5), || {
        cache.status().state == HealthState::Down
    })
    .await;
}

/// Waits for the record of an outage that started after `started_ms`, and checks that the
/// tier applied is the policy's for what was measured.
async fn recovered_after(cache: &Cache, _since: Instant, started_ms: u64) -> OutageRecord {
    until("recovery", Duration::from_secs(30), || {
        cache.redis_in_use()
            && cache.coherent()
            && cache
                .status()
                .last_outage
                .is_some_and(|r| r.started_at_ms >= started_ms)
    })
    .await;
    let record = cache.status().last_outage.expect("a record");
    if !record.journal_overflowed {
        let expected = policy()
            .decide(record.outage, record.data_age)
            .map_or(FlushScope::Nothing, |t| t.scope.clone());
        assert_eq!(record.scope, expected, "{record:?}");
    }
    record
}

/// A loop of cached calls over a few keys of each class, counting errors and the slowest call.
struct Traffic {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    slowest_us: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(cache: &Cache) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let slowest_us = Arc::new(AtomicU64::new(0));
        let task = {
            let (cache, stop, calls, errors, slowest_us) = (
                cache.clone(),
                stop.clone(),
                calls.clone(),
                errors.clone(),
                slowest_us.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let class = ["sessions", "permissions", "resources"][(i % 3) as usize];
                    let key = Key::builder("loop:").value(i % 20).build();
                    let opts = EntryOptions::new().class(class);
                    let started = Instant::now();
                    let r: Result<u64, &str> = tokio::time::timeout(
                        Duration::from_secs(2),
                        cache.try_get_or_load(key, &opts, || async move { Ok(i) }),
                    )
                    .await
                    .unwrap_or(Err("hung"));
                    let took = started.elapsed().as_micros() as u64;
                    slowest_us.fetch_max(took, Ordering::Relaxed);
                    calls.fetch_add(1, Ordering::Relaxed);
                    if r.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        Traffic {
            stop,
            calls,
            errors,
            slowest_us,
            task,
        }
    }

    /// Stops the loop and checks it: calls made, none failed, none waited much past one
    /// command deadline.
    async fn finish(self) -> Duration {
        // Keep the loop going for a few more calls after recovery, so every test sees traffic
        // on both sides of the fault however short it was.
        let target = self.calls.load(Ordering::Relaxed) + 20;
        until("20 more cached calls", Duration::from_secs(10), || {
            self.calls.load(Ordering::Relaxed) >= target
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("traffic task");
        let calls = self.calls.load(Ordering::Relaxed);
        assert!(calls >= 20, "the loop ran ({calls} calls)");
        assert_eq!(
            self.errors.load(Ordering::Relaxed),
            0,
            "cached calls failed"
        );
        let slowest = Duration::from_micros(self.slowest_us.load(Ordering::Relaxed));
        // One command deadline, plus scheduling noise on a busy two-core machine.
        assert!(
            slowest < TIMEOUT + Duration::from_millis(200),
            "a call took {slowest:?}"
        );
        slowest
    }
}

fn start_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// One fault, from the moment Redis is broken to the outage record of its recovery.
struct Outage {
    /// When the fault was injected.
    since: Instant,
    started_ms: u64,
}

impl Outage {
    /// Notes the time, breaks Redis with `fault` and waits for the circuit to open.
    async fn begin(cache: &Cache, fault: impl FnOnce()) -> Outage {
        let outage = Outage {
            since: Instant::now(),
            started_ms: start_ms(),
        };
        fault();
        down(cache).await;
        outage
    }

    /// Repairs Redis with `repair` and waits for the record of this outage (its tier checked
    /// against the policy, see [`recovered_after`]).
    async fn end(self, cache: &Cache, repair: impl FnOnce()) -> OutageRecord {
        repair();
        recovered_after(cache, self.since, self.started_ms).await
    }
}

async fn fill(cache: &Cache) {
    for class in ["sessions", "permissions", "resources"] {
        for i in 0..5u32 {
            let key = Key::builder("fill:").value(i).build();
            cache.set(key, i, &EntryOptions::new().class(class)).await;
        }
    }
}

async fn origin_of(cache: &Cache, class: &'static str) -> Origin {
    let key = Key::builder("fill:").value(0).build();
    cache
        .fetch(key, &EntryOptions::new().class(class), || async {
            Ok::<u32, ()>(99)
        })
        .await
        .expect("infallible")
        .origin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_quick_restart_flushes_nothing() {
    let server = RedisServer::start();
    let c = cache(server.url(), "k1");
    in_use(&c).await;
    fill(&c).await;
    let traffic = Traffic::start(&c);
    let outage = Outage::begin(&c, || server.kill()).await;
    let record = outage.end(&c, || server.restart()).await;
    traffic.finish().await;
    assert!(record.outage < Duration::from_secs(1), "{record:?}");
    assert_eq!(record.data_age, None, "an empty server has no heartbeat");
    assert_eq!(record.scope, FlushScope::Nothing);
    assert_eq!(
        origin_of(&c, "sessions").await,
        Origin::Local,
        "nothing flushed locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_outage_flushes_the_volatile_classes() {
    let server = RedisServer::start();
    let c = cache(server.url(), "k2");
    in_use(&c).await;
    fill(&c).await;
    let traffic = Traffic::start(&c);
    let outage = Outage::begin(&c, || server.kill()).await;
    // Stay down past the 3 s tier (and short of the 6 s one).
    until("3.5 s of outage", Duration::from_secs(10), || {
        c.status()
            .down_since_ms
            .is_some_and(|s| start_ms() >= s + 3_500)
    })
    .await;
    let record = outage.end(&c, || server.restart()).await;
    traffic.finish().await;
    assert!(record.outage >= Duration::from_secs(3) && record.outage < Duration::from_secs(6));
    assert_eq!(record.scope, FlushScope::Volatile);
    assert_eq!(origin_of(&c, "sessions").await, Origin::Loader);
    assert_eq!(origin_of(&c, "permissions").await, Origin::Loader);
    assert_eq!(
        origin_of(&c, "resources").await,
        Origin::Local,
        "stable data kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_then_sigcont() {
    let server = RedisServer::start();
    let c = cache(server.url(), "fz");
    in_use(&c).await;
    let traffic = Traffic::start(&c);
    let outage = Outage::begin(&c, || server.freeze()).await;
    let frozen_for = Instant::now();
    until("1.2 s of freeze", Duration::from_secs(5), || {
        frozen_for.elapsed() > Duration::from_millis(1200)
    })
    .await;
    let record = outage.end(&c, || server.resume()).await;
    let slowest = traffic.finish().await;
    eprintln!("freeze: slowest call {slowest:?}, record {record:?}");
    let expected = policy()
        .decide(record.outage, record.data_age)
        .map_or(FlushScope::Nothing, |t| t.scope.clone());
    assert_eq!(record.scope, expected);
    assert!(record.outage >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_reset_and_delay_through_a_proxy() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let c = cache(proxy.url(), "px");
    in_use(&c).await;
    let traffic = Traffic::start(&c);

    // Blackhole: nothing answers, nothing closes.
    let blackhole = Outage::begin(&c, || proxy.blackhole()).await;
    let detect = blackhole.since.elapsed();
    assert!(
        detect <= Duration::from_secs(1),
        "blackhole detected after {detect:?}"
    );
    blackhole.end(&c, || proxy.pass()).await;

    // Reset: every connection torn down.
    let reset = Outage::begin(&c, || proxy.reset()).await;
    reset.end(&c, || proxy.pass()).await;

    // Delay under the deadline: Redis stays in use.
    proxy.delay(Duration::from_millis(10));
    let l2_before = c.counters().redis_errors;
    let until_t = Instant::now();
    until("a second of slow traffic", Duration::from_secs(3), || {
        until_t.elapsed() > Duration::from_secs(1)
    })
    .await;
    assert!(c.redis_in_use(), "10 ms of latency is not an outage");
    assert_eq!(c.counters().redis_errors, l2_before);

    // Delay over the deadline: treated as down.
    let slow = Outage::begin(&c, || proxy.delay(Duration::from_millis(400))).await;
    slow.end(&c, || proxy.pass()).await;
    traffic.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_sigkill() {
    let group = SentinelGroup::start();
    let c = cache(group.url(), "sk");
    in_use(&c).await;
    fill(&c).await;
    // Writes newer than the last heartbeat that reached the replicas count as possibly lost
    // in a failover (and are undone); these must not be, so a heartbeat goes first.
    let filled = start_ms();
    until(
        "a heartbeat after the writes",
        Duration::from_secs(5),
        || {
            group
                .master()
                .cmd(&["GET", "sk:~hb"])
                .as_text()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|hb| hb > filled)
        },
    )
    .await;
    group.wait_for_replicas(2, Duration::from_secs(10));
    let traffic = Traffic::start(&c);
    let old = group.kill_master();
    let new = group.wait_for_new_master(old, Duration::from_secs(20));
    let promoted = Instant::now();
    until("L2 back", Duration::from_secs(10), || c.redis_in_use()).await;
    eprintln!(
        "sentinel: L2 back {:?} after promotion was seen",
        promoted.elapsed()
    );
    traffic.finish().await;
    // A fresh instance reads what was written before the kill from the new master.
    let fresh = cache(group.url(), "sk");
    in_use(&fresh).await;
    assert_eq!(origin_of(&fresh, "resources").await, Origin::Redis);
    assert_ne!(old, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_failover_with_the_old_master_alive_loses_no_invalidation() {
    let group = SentinelGroup::start();
    let c = cache(group.url(), "mf");
    in_use(&c).await;
    let k = Key::literal("doomed").expect("valid");
    c.set(k.clone(), 1u32, &EntryOptions::new()).await;
    group.wait_for_replicas(2, Duration::from_secs(10));
    let old = group.current_master_port();
    let sentinel = group.sentinel_ports()[0];
    let reply =
        support::resp::cmd(sentinel, &["SENTINEL", "FAILOVER", "mymaster"]).expect("sentinel");
    assert!(!reply.is_error(), "{reply:?}");
    // Wait for a replica to be promoted: from now on the old master is still writable but
    // no longer replicated from; a DEL that lands there is lost when it is demoted.
    let replicas: Vec<u16> = group
        .data_ports()
        .into_iter()
        .filter(|p| *p != old)
        .collect();
    until("a replica to be promoted", Duration::from_secs(20), || {
        replicas.iter().any(|p| {
            group
                .server_by_port(*p)
                .info_field("replication", "role")
                .as_deref()
                == Some("master")
        })
    })
    .await;
    let report = c.remove(&k).await;
    assert_ne!(report.redis, RedisOutcome::NotConfigured);
    let new = group.wait_for_new_master(old, Duration::from_secs(20));
    // The old master is demoted and resynced from the new one (that is when a lost DEL would
    // resurrect the key); our +switch-master handler must have re-applied it by then.
    until(
        "the old master to resync as a replica",
        Duration::from_secs(60),
        || {
            let node = group.server_by_port(old);
            node.info_field("replication", "role").as_deref() == Some("slave")
                && node
                    .info_field("replication", "master_link_status")
                    .as_deref()
                    == Some("up")
        },
    )
    .await;
    in_use(&c).await;
    assert!(
        !group.server_by_port(new).holds_entry("mf:default:doomed"),
        "the invalidation survived the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_sigkill() {
    let t = Topology::cluster();
    let Topology::Cluster(cluster) = &t else {
        unreachable!()
    };
    let c = cache(t.url(), "ck");
    in_use(&c).await;
    let traffic = Traffic::start(&c);
    let victim = cluster.master_ports()[0];
    cluster.kill_node(victim);
    cluster.wait_for_promotion(victim, Duration::from_secs(20));
    until("L2 back", Duration::from_secs(20), || c.redis_in_use()).await;
    traffic.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_an_old_snapshot_is_tiered_by_data_age() {
    let server = RedisServer::builder().save(true).start();
    let c = cache(server.url(), "rdb");
    in_use(&c).await;
    fill(&c).await;
    server.bgsave_and_wait();
    let snapshot = server.dir().join("old.rdb");
    server.copy_rdb(&snapshot);
    let saved = Instant::now();
    // Let the snapshot age past the 6 s tier while the service keeps writing newer data.
    let traffic = Traffic::start(&c);
    until("6.5 s of newer writes", Duration::from_secs(15), || {
        saved.elapsed() > Duration::from_millis(6500)
    })
    .await;
    let t0 = (Instant::now(), start_ms());
    server.restart_from_rdb(&snapshot);
    let record = recovered_after(&c, t0.0, t0.1).await;
    traffic.finish().await;
    assert!(
        record.outage < Duration::from_secs(3),
        "a short outage: {record:?}"
    );
    assert!(
        record.data_age.is_some_and(|a| a >= Duration::from_secs(6)),
        "{record:?}"
    );
    assert_eq!(record.scope, FlushScope::All);
    assert!(record.flushed_redis_keys >= 15, "{record:?}");
    assert_eq!(
        origin_of(&c, "resources").await,
        Origin::Loader,
        "local store flushed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_an_outage_is_replayed_before_reads_resume() {
    let server = RedisServer::builder().save(true).start();
    let a = cache(server.url(), "jr");
    in_use(&a).await;
    let k = Key::literal("user:groups:alice").expect("valid");
    a.set(
        k.clone(),
        vec!["admins".to_owned()],
        &EntryOptions::new().class("permissions"),
    )
    .await;
    server.bgsave_and_wait();
    let outage = Outage::begin(&a, || server.kill()).await;
    let report = a.remove(&k).await;
    assert_eq!(report.redis, RedisOutcome::Journaled { overflowed: false });
    assert_eq!(a.status().journal_len, 1);
    // Back with the stale entry, from its RDB file.
    let record = outage.end(&a, || server.restart()).await;
    assert_eq!(record.replayed, 1);
    assert_eq!(a.status().journal_len, 0);
    let b = cache(server.url(), "jr");
    in_use(&b).await;
    let fetched = b
        .fetch(k, &EntryOptions::new().class("permissions"), || async {
            Ok::<_, ()>(vec!["users".to_owned()])
        })
        .await
        .expect("infallible");
    assert_eq!(
        fetched.origin,
        Origin::Loader,
        "no stale read after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_overflow_escalates_to_a_namespace_flush() {
    let server = RedisServer::builder().save(true).start();
    let c = Cache::builder("jo")
        .redis_url(server.url())
        .command_timeout(TIMEOUT)
        .probe_interval(Duration::from_millis(100))
        .reconnect_delay(Duration::from_millis(50))
        .journal_capacity(5)
        .class(Class::new("resources"))
        .build()
        .expect("valid");
    in_use(&c).await;
    for i in 0..10u32 {
        c.set(
            Key::builder("k:").value(i).build(),
            i,
            &EntryOptions::new().class("resources"),
        )
        .await;
    }
    server.bgsave_and_wait();
    let outage = Outage::begin(&c, || server.kill()).await;
    for i in 0..10u32 {
        c.remove(&Key::builder("k:").value(i).build()).await;
    }
    assert!(c.status().journal_overflowed);
    let record = outage.end(&c, || server.restart()).await;
    assert!(record.journal_overflowed);
    assert_eq!(record.scope, FlushScope::All);
    assert!(record.flushed_redis_keys >= 10, "{record:?}");
    assert_eq!(
        server.cmd(&["EXISTS", "jo:resources:k:3"]).as_int(),
        Some(0)
    );
}

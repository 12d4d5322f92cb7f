//! A randomized fault checker in the style of Jepsen/Elle: three `Cache` instances read and
//! invalidate a versioned origin while a seeded nemesis breaks Redis; every read,
//! invalidation and fault goes into a history, and a pure checker looks for stale reads
//! afterwards.
//!
//! # Workload
//!
//! The origin is a map key → version (`u64`) in the test process, shared by the instances.
//! Three caches (same namespace, each with its own connections and backplane; standalone:
//! each behind its own [`FaultProxy`], so a fault can hit one instance) serve 20 keys, the
//! first 10 tagged `user:{i % 5}` by their options and the next 5 by their loader
//! (`fetch_adaptive`, `Loaded::tag`). Per instance, [`READERS`] tasks loop over random keys with
//! `cache.fetch(key, &opts, || origin.read(key))` (the read-through path of `get_or_load`,
//! which also says where the value came from), and one mutator every 100–300 ms bumps a key
//! (or every key of a tag) in the origin, then invalidates it on its instance
//! (`Invalidation::new().key(k)` or `.tag(t)`), recording an `Ack` when that returns. Entries
//! live 10 minutes ([`TTL`]): a stale value must disappear because of the invalidation, so
//! one that outlives it shows up.
//!
//! # Checker
//!
//! A read of key `k` is a violation if an acknowledged invalidation of `k` carried a newer
//! version and the read began more than [`BOUND`] after the acknowledgement. The README
//! states no propagation bound, so the bound is derived from the configuration the caches are
//! given: 2 × probe interval (100 ms) + command deadline (100 ms) + echo timeout (3 × the
//! probe interval, at least 300 ms) = **600 ms**: time for the breaker or the channel's ping
//! to notice trouble, for the command in flight to time out, and for an unechoed ping to
//! open a gap. See `support::history` for the checker itself; it is unit-tested below.
//!
//! Each violation is reported with the reading instance, key, versions, how late the read
//! was, where its value came from, the acknowledgement's outcome (`Applied` or `Journaled`),
//! the faults active between the acknowledgement and the read, and the history around it.
//!
//! Every read must also return within one command deadline plus a scheduling allowance
//! ([`READ_LATENCY_LIMIT`] = 100 ms + 250 ms): the crate's promise that no request waits more
//! than one command deadline because the cache is sick.
//!
//! # Nemesis
//!
//! One fault at a time, at random intervals and for random durations, chosen by a seeded
//! SplitMix64 from the kinds of the topology ([`Fault`]), each start and heal recorded in the
//! history. After the last fault everything is healed, the caches settle (each reports
//! `redis_in_use() && coherent()`), and every instance reads every key once more; those final
//! reads are checked like any other.
//!
//! # Running it
//!
//! `cargo test --test fault_checker` runs the checker's unit tests and one short run per
//! topology (`standalone`, `sentinel`, `cluster`) with a fixed seed and the fault kinds of
//! `CI_FAULTS_*` (every kind of each topology). The three runs take a lock, so they never
//! overlap.
//!
//! By hand, for a long run (all fault kinds unless restricted):
//!
//! ```sh
//! STORMCACHE_CHECKER_SECS=300 STORMCACHE_CHECKER_SEED=42 \
//!   cargo test --test fault_checker -- --nocapture standalone
//! ```
//!
//! - `STORMCACHE_CHECKER_SECS`: how long the nemesis runs (setting it selects the long mode);
//! - `STORMCACHE_CHECKER_SEED`: the seed (decimal or `0x` hex; default [`DEFAULT_SEED`]);
//! - `STORMCACHE_CHECKER_FAULTS`: a comma list of fault kinds (names as in [`Fault::name`]),
//!   or `none` for a run without faults (the baseline);
//! - `STORMCACHE_CHECKER_HISTORY`: a file to write the whole history to.
//!
//! The run ends with a report: seed, duration, reads / acks / faults per kind, hit rate, the
//! slowest read, and the violations grouped by the fault they are attributed to.

mod support;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use stormcache::{Cache, Class, EntryOptions, Invalidation, Key, Loaded, Origin, RedisOutcome};
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::history::{
    check, context, fault_spans, summarize, Event, FaultSpan, Recorder, Violation,
};
use support::resp;
use support::rng::Rng;
use support::{scaled, ClusterGroup, FaultProxy, RedisServer, SentinelGroup};

// ---------------------------------------------------------------------------------------------
// Configuration.
// ---------------------------------------------------------------------------------------------

/// The caches' probe interval (health monitor and backplane pings).
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// The caches' command deadline.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(100);
/// The backplane's echo timeout for this probe interval: 3 intervals, at least 300 ms.
const ECHO_TIMEOUT: Duration = Duration::from_millis(300);
/// How long after an acknowledged invalidation a read may still return the older version:
/// 2 × probe interval + command deadline + echo timeout = 600 ms.
const BOUND: Duration = Duration::from_millis(
    2 * PROBE_INTERVAL.as_millis() as u64
        + COMMAND_TIMEOUT.as_millis() as u64
        + ECHO_TIMEOUT.as_millis() as u64,
);
/// How long after every fault has healed a read may still return an older version: the
/// bound plus the recovery of the slowest instance (a probe, three PINGs, the heartbeats,
/// its journal replayed, the recent invalidations applied again), 1 s here.
const RECOVERY_BOUND: Duration = Duration::from_millis(BOUND.as_millis() as u64 + 1_000);
/// The longest a read may take: one command deadline plus a scheduling allowance.
const READ_LATENCY_LIMIT: Duration = Duration::from_millis(100 + 250);
/// A read still running after this is recorded as hung.
const HANG_LIMIT: Duration = Duration::from_secs(5);
/// Entries live long enough that only invalidation removes a stale one.
const TTL: Duration = Duration::from_secs(600);
/// Keys `item:0` … `item:19`; the first [`TAGGED`] carry the tag `user:{i % TAGS}` by their
/// options, the next [`ADAPTIVE`] by their loader (`Loaded::tag`), which other instances
/// learn from the entry in Redis.
const KEYS: usize = 20;
const TAGGED: usize = 10;
const ADAPTIVE: usize = 5;
const TAGS: usize = 5;
/// Reader tasks per instance.
const READERS: usize = 3;
/// The caches' namespace.
const NAMESPACE: &str = "chk";

/// The seed when `STORMCACHE_CHECKER_SEED` is not set.
const DEFAULT_SEED: u64 = 0x5eed_2026;
/// How long the nemesis runs in the CI mode.
const CI_RUN: Duration = Duration::from_secs(18);

/// Fault kinds of the CI run on a standalone server. The run fails on a stale read that
/// breaks the promise: with no fault active, no instance using Redis returns a version older
/// than an invalidation applied to Redis more than [`BOUND`] after it; after a fault, none
/// more than [`RECOVERY_BOUND`] after every fault has healed. Stale reads during a fault (an
/// instance serving its local store while it cannot use Redis, or before a journaled
/// invalidation reaches Redis) are reported, not failed.
///
/// All kinds: `old_rdb` joined once each instance applied its own invalidations again from
/// its own heartbeat's age (seed 11, 40 s of restores only: 129 stale reads, 46 past the
/// bound, before; 1 within the recovery bound after).
const CI_FAULTS_STANDALONE: &[Fault] = &[
    Fault::Delay,
    Fault::Blackhole,
    Fault::Outage,
    Fault::Freeze,
    Fault::Kill,
    Fault::PubsubKill,
    Fault::OldRdb,
];
/// Fault kinds of the CI run on a Sentinel group: all.
const CI_FAULTS_SENTINEL: &[Fault] = &[Fault::PubsubKill, Fault::KillMaster, Fault::Failover];
/// Fault kinds of the CI run on a Cluster: all.
const CI_FAULTS_CLUSTER: &[Fault] = &[Fault::PubsubKill, Fault::KillMaster, Fault::FreezeMaster];

// ---------------------------------------------------------------------------------------------
// Fault kinds.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Standalone: one instance's proxy adds 20–400 ms each way.
    Delay,
    /// Standalone: one instance's proxy forwards nothing.
    Blackhole,
    /// Standalone: every proxy blackholed (the whole service loses Redis).
    Outage,
    /// Standalone: the server SIGSTOPped, then SIGCONTinued.
    Freeze,
    /// Standalone: the server SIGKILLed, then restarted (empty: no persistence).
    Kill,
    /// Standalone: the server restarted from an RDB snapshot taken earlier in the run.
    OldRdb,
    /// Every topology: `CLIENT KILL TYPE pubsub` on every data node.
    PubsubKill,
    /// Sentinel and Cluster: the master (Cluster: one master) SIGKILLed, a replica promoted,
    /// the old one restarted later (it rejoins as a replica).
    KillMaster,
    /// Sentinel: `SENTINEL FAILOVER` with the old master alive.
    Failover,
    /// Cluster: one master SIGSTOPped, then SIGCONTinued (past ~1 s its replica takes over).
    FreezeMaster,
}

const ALL_STANDALONE: &[Fault] = &[
    Fault::Delay,
    Fault::Blackhole,
    Fault::Outage,
    Fault::Freeze,
    Fault::Kill,
    Fault::OldRdb,
    Fault::PubsubKill,
];
const ALL_SENTINEL: &[Fault] = &[Fault::KillMaster, Fault::Failover, Fault::PubsubKill];
const ALL_CLUSTER: &[Fault] = &[Fault::FreezeMaster, Fault::KillMaster, Fault::PubsubKill];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Delay => "delay",
            Fault::Blackhole => "blackhole",
            Fault::Outage => "outage",
            Fault::Freeze => "freeze",
            Fault::Kill => "kill",
            Fault::OldRdb => "old_rdb",
            Fault::PubsubKill => "pubsub_kill",
            Fault::KillMaster => "kill_master",
            Fault::Failover => "failover",
            Fault::FreezeMaster => "freeze_master",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Standalone,
    Sentinel,
    Cluster,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Standalone => "standalone",
            Kind::Sentinel => "sentinel",
            Kind::Cluster => "cluster",
        }
    }

    fn all_faults(self) -> &'static [Fault] {
        match self {
            Kind::Standalone => ALL_STANDALONE,
            Kind::Sentinel => ALL_SENTINEL,
            Kind::Cluster => ALL_CLUSTER,
        }
    }

    fn ci_faults(self) -> &'static [Fault] {
        match self {
            Kind::Standalone => CI_FAULTS_STANDALONE,
            Kind::Sentinel => CI_FAULTS_SENTINEL,
            Kind::Cluster => CI_FAULTS_CLUSTER,
        }
    }
}

/// What one run does: how long, which seed, which faults.
#[derive(Debug)]
struct RunConfig {
    run_for: Duration,
    seed: u64,
    faults: Vec<Fault>,
    long: bool,
    history_file: Option<PathBuf>,
}

impl RunConfig {
    /// The CI run, or the long run the environment asks for.
    fn from_env(kind: Kind) -> RunConfig {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let secs = var("STORMCACHE_CHECKER_SECS").map(|s| {
            s.trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("STORMCACHE_CHECKER_SECS={s:?}: {e}"))
        });
        let seed = var("STORMCACHE_CHECKER_SEED").map_or(DEFAULT_SEED, |s| {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("STORMCACHE_CHECKER_SEED={s:?}: {e}"))
        });
        let long = secs.is_some();
        let faults = match var("STORMCACHE_CHECKER_FAULTS") {
            Some(list) if list.trim() == "none" => Vec::new(),
            Some(list) => {
                let names: Vec<&str> = list.split(',').map(str::trim).collect();
                for name in &names {
                    let known = [ALL_STANDALONE, ALL_SENTINEL, ALL_CLUSTER]
                        .iter()
                        .any(|all| all.iter().any(|f| f.name() == *name));
                    assert!(
                        known,
                        "STORMCACHE_CHECKER_FAULTS: unknown fault kind {name:?}"
                    );
                }
                kind.all_faults()
                    .iter()
                    .copied()
                    .filter(|f| names.contains(&f.name()))
                    .collect()
            }
            None if long => kind.all_faults().to_vec(),
            None => kind.ci_faults().to_vec(),
        };
        RunConfig {
            run_for: secs.map_or(CI_RUN, Duration::from_secs_f64),
            seed,
            faults,
            long,
            history_file: var("STORMCACHE_CHECKER_HISTORY").map(PathBuf::from),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The deployment and the nemesis.
// ---------------------------------------------------------------------------------------------

enum Deployment {
    Standalone {
        server: RedisServer,
        /// One per cache instance.
        proxies: Vec<FaultProxy>,
    },
    Sentinel(SentinelGroup),
    Cluster(ClusterGroup),
}

impl Deployment {
    fn start(kind: Kind) -> Deployment {
        match kind {
            Kind::Standalone => {
                let server = RedisServer::start();
                let proxies = (0..3).map(|_| FaultProxy::start(server.port())).collect();
                Deployment::Standalone { server, proxies }
            }
            Kind::Sentinel => Deployment::Sentinel(SentinelGroup::start()),
            Kind::Cluster => Deployment::Cluster(ClusterGroup::start()),
        }
    }

    /// The URL instance `i` is given.
    fn url(&self, i: usize) -> String {
        match self {
            Deployment::Standalone { proxies, .. } => proxies[i].url(),
            Deployment::Sentinel(g) => g.url(),
            Deployment::Cluster(c) => c.url(),
        }
    }

    /// Ports of the data nodes to run `CLIENT KILL TYPE pubsub` on.
    fn data_ports(&self) -> Vec<u16> {
        match self {
            Deployment::Standalone { server, .. } => vec![server.port()],
            Deployment::Sentinel(g) => g.data_ports(),
            Deployment::Cluster(c) => c.ports(),
        }
    }
}

/// The nemesis: one fault at a time, each recorded with its start and heal.
struct Nemesis {
    deployment: Arc<Deployment>,
    faults: Vec<Fault>,
    rng: Rng,
    rec: Recorder,
    next_id: u64,
    /// Standalone: the snapshot `OldRdb` restores.
    snapshot: Option<PathBuf>,
    /// How many faults of each kind were injected.
    injected: Vec<(Fault, usize)>,
}

impl Nemesis {
    fn run(mut self, run_for: Duration) -> Vec<(Fault, usize)> {
        let end = Instant::now() + run_for;
        if self.faults.is_empty() {
            thread::sleep(run_for);
            return self.injected;
        }
        if self.faults.contains(&Fault::OldRdb) {
            // Let the readers fill Redis first, so the snapshot holds versions that later
            // invalidations make stale.
            thread::sleep(Duration::from_millis(1500).min(run_for));
            self.take_snapshot();
        }
        loop {
            let gap = self.rng.millis(300, 1500);
            if Instant::now() + gap >= end {
                break;
            }
            thread::sleep(gap);
            let fault = self.faults[self.rng.below(self.faults.len() as u64) as usize];
            self.inject(fault);
            match self.injected.iter_mut().find(|(f, _)| *f == fault) {
                Some((_, n)) => *n += 1,
                None => self.injected.push((fault, 1)),
            }
            self.settle_topology();
        }
        self.injected
    }

    fn start(&mut self, fault: Fault, detail: String) -> u64 {
        self.next_id += 1;
        self.rec.push(Event::FaultStart {
            id: self.next_id,
            kind: fault.name(),
            detail,
            at: self.rec.now(),
        });
        self.next_id
    }

    fn end(&self, id: u64, fault: Fault) {
        self.rec.push(Event::FaultEnd {
            id,
            kind: fault.name(),
            at: self.rec.now(),
        });
    }

    /// How long a fault lasts.
    fn hold(&mut self) -> Duration {
        self.rng.millis(200, 2500)
    }

    fn inject(&mut self, fault: Fault) {
        let deployment = Arc::clone(&self.deployment);
        match (&*deployment, fault) {
            (_, Fault::PubsubKill) => {
                let id = self.start(fault, "CLIENT KILL TYPE pubsub on every data node".into());
                for port in deployment.data_ports() {
                    // A node that is down has no subscriber to kill.
                    let _ = resp::cmd(port, &["CLIENT", "KILL", "TYPE", "pubsub"]);
                }
                self.end(id, fault);
            }
            (Deployment::Standalone { proxies, .. }, Fault::Delay) => {
                let i = self.rng.below(3) as usize;
                let latency = self.rng.millis(20, 400);
                let hold = self.hold();
                let id = self.start(fault, format!("i{i} +{latency:?} for {hold:?}"));
                proxies[i].delay(latency);
                thread::sleep(hold);
                proxies[i].pass();
                self.end(id, fault);
            }
            (Deployment::Standalone { proxies, .. }, Fault::Blackhole) => {
                let i = self.rng.below(3) as usize;
                let hold = self.hold();
                let id = self.start(fault, format!("i{i} for {hold:?}"));
                proxies[i].blackhole();
                thread::sleep(hold);
                proxies[i].pass();
                self.end(id, fault);
            }
            (Deployment::Standalone { proxies, .. }, Fault::Outage) => {
                let hold = self.hold();
                let id = self.start(fault, format!("every proxy for {hold:?}"));
                proxies.iter().for_each(FaultProxy::blackhole);
                thread::sleep(hold);
                proxies.iter().for_each(FaultProxy::pass);
                self.end(id, fault);
            }
            (Deployment::Standalone { server, .. }, Fault::Freeze) => {
                let hold = self.hold();
                let id = self.start(fault, format!("server for {hold:?}"));
                server.freeze();
                thread::sleep(hold);
                server.resume();
                self.end(id, fault);
            }
            (Deployment::Standalone { server, .. }, Fault::Kill) => {
                let hold = self.hold();
                let id = self.start(fault, format!("server down for {hold:?}"));
                server.kill();
                thread::sleep(hold);
                server.restart();
                self.end(id, fault);
            }
            (Deployment::Standalone { server, .. }, Fault::OldRdb) => {
                let snapshot = self.snapshot.clone().expect("a snapshot was taken first");
                let id = self.start(fault, "restart from the snapshot".into());
                server.restart_from_rdb(&snapshot);
                // The server has it in memory; a later plain restart must come back empty.
                let _ = std::fs::remove_file(server.rdb_path());
                self.end(id, fault);
                if self.rng.chance(50) {
                    self.take_snapshot();
                }
            }
            (Deployment::Sentinel(group), Fault::KillMaster) => {
                let hold = self.hold();
                let old = group.current_master_port();
                let id = self.start(fault, format!("master {old}, restarted after {hold:?}"));
                group.server_by_port(old).kill();
                let new = group.wait_for_new_master(old, scaled(Duration::from_secs(30)));
                self.rec.note(format!("sentinel promoted {new}"));
                thread::sleep(hold);
                group.restart_node(old);
                self.end(id, fault);
            }
            (Deployment::Sentinel(group), Fault::Failover) => {
                let old = group.current_master_port();
                let id = self.start(fault, format!("SENTINEL FAILOVER from {old}"));
                let new = group.failover();
                self.rec.note(format!("sentinel promoted {new}"));
                self.end(id, fault);
            }
            (Deployment::Cluster(cluster), Fault::FreezeMaster) => {
                let masters = cluster.master_ports();
                let victim = masters[self.rng.below(masters.len() as u64) as usize];
                let hold = self.hold();
                let id = self.start(fault, format!("master {victim} for {hold:?}"));
                cluster.node(victim).freeze();
                thread::sleep(hold);
                cluster.node(victim).resume();
                self.end(id, fault);
            }
            (Deployment::Cluster(cluster), Fault::KillMaster) => {
                let masters = cluster.master_ports();
                let victim = masters[self.rng.below(masters.len() as u64) as usize];
                let hold = self.hold();
                let id = self.start(
                    fault,
                    format!("master {victim}, restarted {hold:?} after the promotion"),
                );
                cluster.kill_node(victim);
                let promoted = cluster.wait_for_promotion(victim, scaled(Duration::from_secs(30)));
                self.rec.note(format!("cluster promoted {promoted}"));
                thread::sleep(hold);
                cluster.restart_node(victim);
                self.end(id, fault);
            }
            (_, fault) => panic!("fault {fault:?} does not apply to this topology"),
        }
    }

    /// Standalone: BGSAVE, keep the file as the snapshot, and remove `dump.rdb` so that a
    /// plain restart comes back empty.
    fn take_snapshot(&mut self) {
        let Deployment::Standalone { server, .. } = &*self.deployment else {
            return;
        };
        server.bgsave_and_wait();
        let path = server.dir().join("snapshot.rdb");
        server.copy_rdb(&path);
        let _ = std::fs::remove_file(server.rdb_path());
        self.rec
            .note(format!("snapshot taken ({} keys)", server.dbsize()));
        self.snapshot = Some(path);
    }

    /// Before the next fault: the group is whole again (replicas linked), so that every
    /// fault starts from a healthy topology.
    fn settle_topology(&self) {
        let limit = scaled(Duration::from_secs(60));
        match &*self.deployment {
            Deployment::Standalone { .. } => {}
            Deployment::Sentinel(group) => group.wait_for_replicas(2, limit),
            Deployment::Cluster(cluster) => {
                let mut problem = String::new();
                let settled =
                    support::poll_until(
                        limit,
                        Duration::from_millis(50),
                        || match cluster_problem(cluster) {
                            None => Some(()),
                            Some(p) => {
                                problem = p;
                                None
                            }
                        },
                    );
                assert!(
                    settled.is_some(),
                    "cluster not whole again within {limit:?}: {problem}"
                );
            }
        }
    }
}

/// Why the cluster is not whole (every node `cluster_state:ok`, three masters each with an
/// online replica), or `None`.
fn cluster_problem(cluster: &ClusterGroup) -> Option<String> {
    let mut masters = 0;
    for port in cluster.ports() {
        let info = match resp::cmd(port, &["CLUSTER", "INFO"]) {
            Ok(v) => resp::parse_info(&v.to_display()),
            Err(e) => return Some(format!("node {port}: {e}")),
        };
        if info.get("cluster_state").map(String::as_str) != Some("ok") {
            return Some(format!(
                "node {port}: cluster_state {:?}",
                info.get("cluster_state")
            ));
        }
        let replication = resp::info(port, "replication").unwrap_or_default();
        match replication.get("role").map(String::as_str) {
            Some("master") => {
                masters += 1;
                let online = replication
                    .iter()
                    .filter(|(k, v)| k.starts_with("slave") && v.contains("state=online"))
                    .count();
                if online < 1 {
                    return Some(format!("master {port} has no online replica"));
                }
            }
            Some("slave") => {
                if replication.get("master_link_status").map(String::as_str) != Some("up") {
                    return Some(format!("replica {port}: link down"));
                }
            }
            other => return Some(format!("node {port}: role {other:?}")),
        }
    }
    (masters != 3).then(|| format!("{masters} masters"))
}

// ---------------------------------------------------------------------------------------------
// The workload.
// ---------------------------------------------------------------------------------------------

/// The versioned origin: key → version, starting at 1.
struct OriginDb {
    versions: Vec<AtomicU64>,
}

impl OriginDb {
    fn new() -> Self {
        OriginDb {
            versions: (0..KEYS).map(|_| AtomicU64::new(1)).collect(),
        }
    }

    fn read(&self, key: usize) -> u64 {
        self.versions[key].load(Ordering::SeqCst)
    }

    /// Bumps the version of `key`; the new version.
    fn bump(&self, key: usize) -> u64 {
        self.versions[key].fetch_add(1, Ordering::SeqCst) + 1
    }
}

fn key(i: usize) -> Key {
    Key::builder("item:").value(i).build()
}

fn tag(t: usize) -> Key {
    Key::builder("user:").value(t).build()
}

fn options(i: usize) -> EntryOptions {
    let opts = EntryOptions::new().class("data");
    if i < TAGGED {
        opts.tag(tag(i % TAGS))
    } else {
        opts
    }
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::Local => "Local",
        Origin::Redis => "Redis",
        Origin::Loader => "Loader",
        Origin::Stale => "Stale",
        _ => "other",
    }
}

fn outcome_name(outcome: &RedisOutcome) -> &'static str {
    match outcome {
        RedisOutcome::Applied => "Applied",
        RedisOutcome::Journaled { overflowed: false } => "Journaled",
        RedisOutcome::Journaled { overflowed: true } => "Journaled+overflow",
        RedisOutcome::NotConfigured => "NotConfigured",
        _ => "other",
    }
}

/// One read of key `k` through `cache`, recorded.
async fn read_once(
    cache: &Cache,
    instance: usize,
    k: usize,
    origin: &Arc<OriginDb>,
    rec: &Recorder,
    final_read: bool,
) {
    let redis_in_use = cache.redis_in_use();
    let start = rec.now();
    let opts = options(k);
    let fetched = if (TAGGED..TAGGED + ADAPTIVE).contains(&k) {
        let load = cache.fetch_adaptive(key(k), &opts, || async {
            Ok::<_, Infallible>(Loaded::new(origin.read(k)).tag(tag(k % TAGS)))
        });
        tokio::time::timeout(HANG_LIMIT, load).await
    } else {
        let load = cache.fetch(key(k), &opts, || async {
            Ok::<u64, Infallible>(origin.read(k))
        });
        tokio::time::timeout(HANG_LIMIT, load).await
    };
    let end = rec.now();
    match fetched {
        Ok(Ok(fetched)) => rec.push(Event::Read {
            instance,
            key: k,
            version: fetched.value,
            start,
            end,
            origin: origin_name(fetched.origin),
            redis_in_use,
            final_read,
        }),
        Ok(Err(never)) => match never {},
        Err(_) => rec.push(Event::Hung {
            instance,
            key: k,
            start,
            end,
        }),
    }
}

async fn reader(
    cache: Cache,
    instance: usize,
    origin: Arc<OriginDb>,
    rec: Recorder,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) {
    while !stop.load(Ordering::Relaxed) {
        let k = rng.below(KEYS as u64) as usize;
        read_once(&cache, instance, k, &origin, &rec, false).await;
        tokio::time::sleep(Duration::from_millis(2 + rng.below(4))).await;
    }
}

async fn mutator(
    cache: Cache,
    instance: usize,
    origin: Arc<OriginDb>,
    rec: Recorder,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.millis(100, 300)).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (keys, by_tag, inv) = if rng.chance(25) {
            let t = rng.below(TAGS as u64) as usize;
            let keys: Vec<(usize, u64)> = (0..TAGGED + ADAPTIVE)
                .filter(|k| k % TAGS == t)
                .map(|k| (k, origin.bump(k)))
                .collect();
            (
                keys,
                Some(tag(t).as_str().to_owned()),
                Invalidation::new().tag(tag(t)),
            )
        } else {
            let k = rng.below(KEYS as u64) as usize;
            (
                vec![(k, origin.bump(k))],
                None,
                Invalidation::new().key(key(k)),
            )
        };
        rec.push(Event::Mutate {
            instance,
            keys: keys.clone(),
            tag: by_tag,
            at: rec.now(),
        });
        let report = cache.invalidate(&inv).await;
        let at = rec.now();
        for (k, version) in keys {
            rec.push(Event::Ack {
                instance,
                key: k,
                version,
                at,
                outcome: outcome_name(&report.redis),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One run.
// ---------------------------------------------------------------------------------------------

/// The three runs share the machine's two cores: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run_topology(kind: Kind) {
    let _serial = serial();
    let config = RunConfig::from_env(kind);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(kind, config));
}

async fn run(kind: Kind, config: RunConfig) {
    let setup_started = Instant::now();
    let deployment = Arc::new(Deployment::start(kind));
    let rec = Recorder::new();
    let mut caches = Vec::new();
    for i in 0..3 {
        let cache = fast_redis_builder(NAMESPACE, deployment.url(i), COMMAND_TIMEOUT)
            .probe_interval(PROBE_INTERVAL)
            .class(Class::new("data").ttl(TTL))
            .build()
            .expect("valid configuration");
        caches.push(cache);
    }
    for cache in &caches {
        wait_redis_ready(cache, scaled(Duration::from_secs(30))).await;
    }
    let setup = setup_started.elapsed();
    rec.note(format!(
        "{} ready after {setup:?}; seed {:#x}",
        kind.name(),
        config.seed
    ));

    let origin = Arc::new(OriginDb::new());
    let mut rng = Rng::new(config.seed);
    let nemesis_rng = rng.fork();
    let stop_readers = Arc::new(AtomicBool::new(false));
    let stop_mutators = Arc::new(AtomicBool::new(false));
    let mut readers = tokio::task::JoinSet::new();
    let mut mutators = tokio::task::JoinSet::new();
    for (i, cache) in caches.iter().enumerate() {
        for _ in 0..READERS {
            readers.spawn(reader(
                cache.clone(),
                i,
                Arc::clone(&origin),
                rec.clone(),
                Arc::clone(&stop_readers),
                rng.fork(),
            ));
        }
        mutators.spawn(mutator(
            cache.clone(),
            i,
            Arc::clone(&origin),
            rec.clone(),
            Arc::clone(&stop_mutators),
            rng.fork(),
        ));
    }

    let run_started = Instant::now();
    let nemesis = Nemesis {
        deployment: Arc::clone(&deployment),
        faults: config.faults.clone(),
        rng: nemesis_rng,
        rec: rec.clone(),
        next_id: 0,
        snapshot: None,
        injected: Vec::new(),
    };
    let run_for = config.run_for;
    let injected = tokio::task::spawn_blocking(move || nemesis.run(run_for)).await;
    stop_mutators.store(true, Ordering::Relaxed);
    while let Some(done) = mutators.join_next().await {
        done.expect("mutator task");
    }
    let injected = match injected {
        Ok(injected) => injected,
        Err(panic) => {
            stop_readers.store(true, Ordering::Relaxed);
            std::panic::resume_unwind(panic.into_panic());
        }
    };
    let nemesis_time = run_started.elapsed();

    // Everything is healed (each fault heals itself before the next): wait for the caches.
    let settle_started = Instant::now();
    let settle_limit = scaled(Duration::from_secs(60));
    let mut unsettled = Vec::new();
    while caches.iter().any(|c| !(c.redis_in_use() && c.coherent())) {
        if settle_started.elapsed() > settle_limit {
            unsettled = caches.iter().map(|c| format!("{:?}", c.status())).collect();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rec.note(format!(
        "settled after {:?}{}",
        settle_started.elapsed(),
        if unsettled.is_empty() {
            ""
        } else {
            " (NOT settled)"
        }
    ));
    // The final reads begin past the bound of the last acknowledgement.
    let last_ack = rec
        .snapshot()
        .iter()
        .filter_map(|e| match e {
            Event::Ack { at, .. } => Some(*at),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let bound_ns = BOUND.as_nanos() as u64;
    while rec.now() <= last_ack + bound_ns {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_readers.store(true, Ordering::Relaxed);
    while let Some(done) = readers.join_next().await {
        done.expect("reader task");
    }
    for (i, cache) in caches.iter().enumerate() {
        for k in 0..KEYS {
            read_once(cache, i, k, &origin, &rec, true).await;
        }
    }

    let history = rec.snapshot();
    let report = Report::new(
        kind,
        &config,
        &history,
        &caches,
        &injected,
        setup,
        nemesis_time,
    );
    println!("{}", report.text);
    if let Some(path) = &config.history_file {
        let lines: Vec<String> = history.iter().map(Event::describe).collect();
        std::fs::write(path, lines.join("\n") + "\n")
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("history written to {}", path.display());
    }
    drop(caches);
    assert!(
        unsettled.is_empty(),
        "the caches did not settle within {settle_limit:?} after the last fault (seed {:#x}): {unsettled:#?}\n{}",
        config.seed,
        report.text
    );
    // The promise, as the README's "Guarantees" states it: in a healthy stretch, within
    // BOUND of an invalidation applied to Redis; after a fault, within RECOVERY_BOUND of the
    // heal. Stale reads during a fault are reported above, not failed.
    let after_heal = check(&history, RECOVERY_BOUND);
    let broken: Vec<&Violation> = report
        .violations
        .iter()
        .filter(|v| v.breaks_the_healthy_promise())
        .chain(
            after_heal
                .iter()
                .filter(|v| v.breaks_the_promise_after_heal()),
        )
        .collect();
    assert!(
        broken.is_empty() && report.slow_reads.is_empty(),
        "{} stale reads that break the promise (of {} stale reads in all) and {} reads slower than {READ_LATENCY_LIMIT:?} (seed {:#x}{}); see the report above; the first: {}",
        broken.len(),
        report.violations.len(),
        report.slow_reads.len(),
        config.seed,
        if config.long { ", long mode" } else { "" },
        broken.first().map_or_else(String::new, |v| v.describe())
    );
}

/// What a run found, and its printed form.
struct Report {
    violations: Vec<Violation>,
    slow_reads: Vec<Event>,
    text: String,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn new(
        kind: Kind,
        config: &RunConfig,
        history: &[Event],
        caches: &[Cache],
        injected: &[(Fault, usize)],
        setup: Duration,
        nemesis_time: Duration,
    ) -> Report {
        use std::fmt::Write as _;
        let violations = check(history, BOUND);
        let limit_ns = READ_LATENCY_LIMIT.as_nanos() as u64;
        let slow_reads: Vec<Event> = history
            .iter()
            .filter(|e| match e {
                Event::Read { start, end, .. } | Event::Hung { start, end, .. } => {
                    end - start > limit_ns
                }
                _ => false,
            })
            .cloned()
            .collect();
        let (mut reads, mut finals, mut hung, mut mutations, mut acks, mut journaled) =
            (0, 0, 0, 0, 0, 0);
        let mut max_latency = 0u64;
        for e in history {
            match e {
                Event::Read {
                    start,
                    end,
                    final_read,
                    ..
                } => {
                    reads += 1;
                    finals += usize::from(*final_read);
                    max_latency = max_latency.max(end - start);
                }
                Event::Hung { start, end, .. } => {
                    hung += 1;
                    max_latency = max_latency.max(end - start);
                }
                Event::Mutate { .. } => mutations += 1,
                Event::Ack { outcome, .. } => {
                    acks += 1;
                    journaled += usize::from(*outcome != "Applied");
                }
                _ => {}
            }
        }
        let counters: Vec<_> = caches.iter().map(Cache::counters).collect();
        let l1: u64 = counters.iter().map(|c| c.l1_hits).sum();
        let l2: u64 = counters.iter().map(|c| c.l2_hits).sum();
        let misses: u64 = counters.iter().map(|c| c.misses).sum();
        let redis_errors: u64 = counters.iter().map(|c| c.redis_errors).sum();
        let hit_rate = 100.0 * (l1 + l2) as f64 / (l1 + l2 + misses).max(1) as f64;
        let spans = fault_spans(history);
        let faults: Vec<String> = injected
            .iter()
            .map(|(f, n)| format!("{} ×{n}", f.name()))
            .collect();
        let kinds: Vec<&str> = config.faults.iter().map(|f| f.name()).collect();

        let mut text = String::new();
        let _ = writeln!(
            text,
            "== fault checker: {}, seed {:#x} ({}), {:.1} s of faults after {:.1} s of setup; bound {} ms",
            kind.name(),
            config.seed,
            if config.long { "long mode" } else { "CI mode" },
            nemesis_time.as_secs_f64(),
            setup.as_secs_f64(),
            BOUND.as_millis()
        );
        let _ = writeln!(text, "fault kinds allowed: {kinds:?}");
        let _ = writeln!(
            text,
            "faults injected: {} ({})",
            spans.len(),
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(", ")
            }
        );
        let _ = writeln!(
            text,
            "reads {reads} (final {finals}), hung {hung}, mutations {mutations}, acks {acks} ({journaled} not applied to Redis at once)"
        );
        let _ = writeln!(
            text,
            "hit rate {hit_rate:.1} % (local {l1}, redis {l2}, misses {misses}); redis errors absorbed {redis_errors}"
        );
        let journals: Vec<String> = caches
            .iter()
            .map(|c| {
                let st = c.status();
                format!(
                    "{}{}",
                    st.journal_len,
                    if st.journal_overflowed {
                        "+overflow"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        let _ = writeln!(
            text,
            "journal lengths at the end (invalidations not yet in Redis), per instance: {journals:?}"
        );
        let _ = writeln!(
            text,
            "max read latency {:.1} ms (limit {} ms); reads over the limit: {}",
            max_latency as f64 / 1e6,
            READ_LATENCY_LIMIT.as_millis(),
            slow_reads.len()
        );
        for e in slow_reads.iter().take(10) {
            let around: Vec<String> = spans
                .iter()
                .filter(|s| s.overlaps(e.at().saturating_sub(1_000_000_000), e.at()))
                .map(FaultSpan::describe)
                .collect();
            let _ = writeln!(text, "  slow: {}; faults: {around:?}", e.describe());
        }
        let _ = writeln!(text, "violations: {}", violations.len());
        if !violations.is_empty() {
            text.push_str(&summarize(&violations));
            // One example per fault kind: the latest read among those that outlived every
            // fault with the reader on Redis, else among those that outlived every fault, else
            // among all.
            let mut kinds_seen: Vec<&str> = Vec::new();
            for v in &violations {
                if !kinds_seen.contains(&v.attributed_to()) {
                    kinds_seen.push(v.attributed_to());
                }
            }
            for kind in kinds_seen {
                let of_kind = || violations.iter().filter(|v| v.attributed_to() == kind);
                let rank = |v: &&Violation| (v.after_heal && v.redis_in_use, v.after_heal, v.late);
                let Some(v) = of_kind().max_by_key(rank) else {
                    continue;
                };
                let _ = writeln!(text, "  example ({kind}): {}", v.describe());
                text.push_str(&context(
                    history,
                    v,
                    Duration::from_millis(1500),
                    Duration::from_millis(50),
                    40,
                ));
            }
            // Episodes: one line per reader, key, stale version and ack, the latest first.
            let mut index = std::collections::HashMap::new();
            let mut episodes: Vec<(&Violation, usize, u64)> = Vec::new();
            for v in &violations {
                let id = (v.instance, v.key, v.read_version, v.ack_version);
                match index.get(&id) {
                    Some(&at) => {
                        let (_, n, last): &mut (&Violation, usize, u64) = &mut episodes[at];
                        *n += 1;
                        *last = (*last).max(v.read_start);
                    }
                    None => {
                        index.insert(id, episodes.len());
                        episodes.push((v, 1, v.read_start));
                    }
                }
            }
            episodes.sort_by_key(|(e, _, last)| std::cmp::Reverse(last - e.ack_at));
            let _ = writeln!(
                text,
                "  {} episodes (reader, key, stale version, ack), the longest first (at most 40):",
                episodes.len()
            );
            for (first, n, last) in episodes.iter().take(40) {
                let _ = writeln!(
                    text,
                    "    x{n} until {} ({} ms after the ack): {}",
                    support::history::ms(*last),
                    (last - first.ack_at) / 1_000_000,
                    first.describe()
                );
            }
        }
        Report {
            violations,
            slow_reads,
            text,
        }
    }
}

#[test]
fn standalone() {
    run_topology(Kind::Standalone);
}

#[test]
fn sentinel() {
    run_topology(Kind::Sentinel);
}

#[test]
fn cluster() {
    run_topology(Kind::Cluster);
}

// ---------------------------------------------------------------------------------------------
// The checker on hand-made histories.
// ---------------------------------------------------------------------------------------------

mod checker {
    use super::*;

    const MS: u64 = 1_000_000;

    fn read(instance: usize, key: usize, version: u64, start_ms: u64) -> Event {
        Event::Read {
            instance,
            key,
            version,
            start: start_ms * MS,
            end: start_ms * MS + MS,
            origin: "Local",
            redis_in_use: true,
            final_read: false,
        }
    }

    fn ack(instance: usize, key: usize, version: u64, at_ms: u64) -> Event {
        Event::Ack {
            instance,
            key,
            version,
            at: at_ms * MS,
            outcome: "Applied",
        }
    }

    fn fault(id: u64, kind: &'static str, start_ms: u64, end_ms: u64) -> [Event; 2] {
        [
            Event::FaultStart {
                id,
                kind,
                detail: String::new(),
                at: start_ms * MS,
            },
            Event::FaultEnd {
                id,
                kind,
                at: end_ms * MS,
            },
        ]
    }

    fn bound() -> Duration {
        Duration::from_millis(600)
    }

    #[test]
    fn an_older_version_read_past_the_bound_is_a_violation() {
        let history = [ack(0, 3, 2, 1_000), read(1, 3, 1, 1_601)];
        let found = check(&history, bound());
        assert_eq!(found.len(), 1, "{found:?}");
        let v = &found[0];
        assert_eq!((v.instance, v.key, v.read_version), (1, 3, 1));
        assert_eq!((v.ack_instance, v.ack_version), (0, 2));
        assert_eq!(v.late, Duration::from_millis(601));
        assert_eq!(v.attributed_to(), "none");
    }

    #[test]
    fn an_older_version_read_within_the_bound_is_not() {
        let history = [
            ack(0, 3, 2, 1_000),
            read(1, 3, 1, 1_600),
            read(2, 3, 1, 1_200),
        ];
        assert!(check(&history, bound()).is_empty());
    }

    #[test]
    fn a_read_that_began_before_the_ack_is_not() {
        let history = [read(1, 3, 1, 900), ack(0, 3, 2, 1_000)];
        assert!(check(&history, Duration::ZERO).is_empty());
    }

    #[test]
    fn the_acked_version_or_a_newer_one_is_fine() {
        let history = [
            ack(0, 3, 2, 1_000),
            read(1, 3, 2, 5_000),
            read(1, 3, 7, 5_000),
        ];
        assert!(check(&history, bound()).is_empty());
    }

    #[test]
    fn only_acks_of_the_same_key_count() {
        let history = [ack(0, 4, 9, 1_000), read(1, 3, 1, 5_000)];
        assert!(check(&history, bound()).is_empty());
    }

    #[test]
    fn the_earliest_ack_newer_than_the_read_is_reported() {
        // v2 acked at 1 s, v3 at 2 s (acks can land out of version order, too: v5 at 1.5 s
        // from a concurrent mutator).
        let history = [
            ack(0, 3, 2, 1_000),
            ack(2, 3, 5, 1_500),
            ack(1, 3, 3, 2_000),
            read(1, 3, 2, 2_200),
            read(0, 3, 1, 3_000),
        ];
        let found = check(&history, bound());
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            (found[0].read_version, found[0].ack_version, found[0].ack_at),
            (2, 5, 1_500 * MS)
        );
        assert_eq!(found[0].late, Duration::from_millis(700));
        assert_eq!((found[1].ack_version, found[1].ack_instance), (2, 0));
        assert_eq!(found[1].late, Duration::from_millis(2_000));
        // The tightest window on the cause: the latest ack newer than the read.
        assert_eq!(
            (found[0].latest_ack_version, found[0].latest_ack_at),
            (5, 1_500 * MS)
        );
        assert_eq!(
            (found[1].latest_ack_version, found[1].latest_ack_instance),
            (3, 1)
        );
    }

    #[test]
    fn a_stale_read_is_reported_with_the_faults_around_it() {
        let mut history = vec![ack(0, 3, 2, 1_000), read(1, 3, 1, 3_000)];
        history.extend(fault(1, "kill", 100, 500)); // before the ack
        history.extend(fault(2, "blackhole", 800, 1_200)); // around the ack
        history.extend(fault(3, "freeze", 2_000, 2_100)); // between ack and read
        history.extend(fault(4, "delay", 4_000, 4_500)); // after the read
        history.sort_by_key(Event::at);
        let found = check(&history, bound());
        assert_eq!(found.len(), 1);
        let kinds: Vec<&str> = found[0].faults.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, ["blackhole", "freeze"]);
        assert_eq!(found[0].attributed_to(), "blackhole");
        assert_eq!(
            found[0].preceding_fault.as_ref().map(|f| f.kind),
            Some("kill")
        );
        assert!(found[0].describe().contains("blackhole"));
        assert!(context(&history, &found[0], bound(), bound(), 40).contains("HEALED #3 freeze"));
    }

    #[test]
    fn with_no_fault_in_the_window_the_last_one_before_is_named() {
        let mut history = vec![ack(0, 3, 2, 1_000), read(1, 3, 1, 3_000)];
        history.extend(fault(1, "old_rdb", 100, 500));
        history.sort_by_key(Event::at);
        let found = check(&history, bound());
        assert_eq!(found.len(), 1);
        assert!(found[0].faults.is_empty());
        assert_eq!(found[0].attributed_to(), "old_rdb");
    }

    #[test]
    fn final_reads_count_like_any_read() {
        let history = [
            ack(0, 3, 2, 1_000),
            Event::Read {
                instance: 2,
                key: 3,
                version: 1,
                start: 9_000 * MS,
                end: 9_001 * MS,
                origin: "Local",
                redis_in_use: true,
                final_read: true,
            },
        ];
        let found = check(&history, bound());
        assert_eq!(found.len(), 1);
        assert!(found[0].final_read);
        assert!(summarize(&found).contains("1 final reads"));
    }

    #[test]
    fn a_clean_history_passes() {
        let mut history = Vec::new();
        for i in 0..100u64 {
            history.push(ack((i % 3) as usize, (i % 5) as usize, i + 2, i * 100));
            // Each read returns what the last ack of its key set, or newer.
            history.push(read(
                ((i + 1) % 3) as usize,
                (i % 5) as usize,
                i + 2,
                i * 100 + 700,
            ));
        }
        history.sort_by_key(Event::at);
        assert!(check(&history, bound()).is_empty());
    }

    #[test]
    fn the_rng_is_deterministic() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..5).map(|_| a.below(1000)).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.below(1000)).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(8).next_u64(), Rng::new(7).next_u64());
    }

    #[test]
    fn the_bound_is_600_ms() {
        assert_eq!(BOUND, Duration::from_millis(600));
    }
}

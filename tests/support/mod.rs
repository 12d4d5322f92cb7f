//! Shared integration-test harness: real Redis topologies and a fault-injecting TCP proxy.
//!
//! # Why this exists
//!
//! stormcache promises to keep answering while Redis misbehaves. Mocks cannot reproduce what
//! actually goes wrong: a Sentinel failover, a replica promotion in a Cluster, `MOVED` redirects,
//! a server that reloads an old RDB snapshot, a frozen process, a partitioned or slow link. So the
//! integration tests drive real `redis-server` processes, and this module is the single place that
//! knows how to start them, wait for them, break them and clean up after them. Every test binary
//! includes it with `mod support;` and uses the subset it needs (hence `allow(dead_code)`).
//!
//! # Rules every helper follows
//!
//! * **Loopback only.** Servers bind `127.0.0.1`; helpers only connect to `127.0.0.1`.
//! * **No leaked processes.** Each child process is owned by a value whose `Drop` sends SIGKILL to
//!   its PID and reaps it, so a panicking test still cleans up. Each server's temp dir is removed
//!   on drop. On Linux children also get `PR_SET_PDEATHSIG(SIGKILL)`, so they die with the test
//!   process even if it is killed outright (e.g. by a nextest timeout) and no destructor runs;
//!   the temp dirs such a process leaves behind are swept by the next test process.
//! * **No bare sleeps.** Readiness and state changes are awaited by polling with a deadline
//!   ([`poll_until`], [`wait_until`]); a missed deadline panics with the relevant log tail.
//! * **Parallel-safe.** Ports come from binding `127.0.0.1:0` and are never handed out twice in one
//!   process. Test processes running in parallel (nextest) can still race for a port, so a server
//!   that fails to bind is started again on a fresh port, and startup checks the `process_id` in
//!   `INFO server` to be sure the server answering is ours.
//! * **Loud failures.** A missing `redis-server` / `redis-cli` panics with an install hint.
//!   Nothing is skipped silently.
//!
//! # Environment knobs
//!
//! * `STORMCACHE_REDIS_SERVER`, `STORMCACHE_REDIS_CLI`: binary name or path (defaults
//!   `redis-server`, `redis-cli`).
//! * `STORMCACHE_TEST_TIMEOUT_SCALE`: multiplies every deadline (e.g. `3` on a very slow box).
//! * `STORMCACHE_KEEP_TEST_DIRS=1`: keep the temp dirs (logs, RDB files) for a post-mortem.
//!
//! # Contents
//!
//! * Ports, binaries, temp dirs and polling helpers: [`free_port`], [`free_cluster_port`],
//!   [`redis_server_bin`], [`TempDir`], [`poll_until`], [`wait_until`].
//! * [`resp`]: a tiny synchronous, binary-safe RESP2 client with timeouts.
//! * [`RedisServer`]: one standalone server (also used for every node of the groups).
//! * [`SentinelGroup`]: 1 master + 2 replicas + 3 sentinels.
//! * [`ClusterGroup`]: 6-node cluster (3 masters, 3 replicas).
//! * [`FaultProxy`]: TCP proxy with pass / blackhole / reset / delay modes on its own thread.
//! * [`topology`]: one interface over the three deployments, so a scenario is written once.
//! * [`slowlog_start`] / [`slowlog_entries`]: how long single commands held a server.
//! * [`history`]: the history a randomized fault run records, and the stale-read checker.
//! * [`http`] (feature `axum`): a `Router` served on `127.0.0.1:0` and an HTTP client to it,
//!   with the answer's header helpers, for the tests that go through the real HTTP stack.
//!
//! Each part lives in its own file (`child.rs`, `resp.rs`, `redis_server.rs`, `sentinel.rs`,
//! `cluster.rs`, `fault_proxy.rs`, `slowlog.rs`, `topology.rs`) and is re-exported here, so
//! tests write `support::RedisServer`, `support::FaultProxy`, ...

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The only address the harness binds or connects to.
pub const LOCALHOST: &str = "127.0.0.1";

/// Install instructions appended to the "binary not found" panic.
pub const INSTALL_HINT: &str =
    "install it with `apt-get install redis-server redis-tools` (Debian/Ubuntu)";

/// Env var naming the `redis-server` binary (name on PATH or a path).
pub const REDIS_SERVER_ENV: &str = "STORMCACHE_REDIS_SERVER";
/// Env var naming the `redis-cli` binary (name on PATH or a path).
pub const REDIS_CLI_ENV: &str = "STORMCACHE_REDIS_CLI";
/// Env var multiplying every harness deadline.
pub const TIMEOUT_SCALE_ENV: &str = "STORMCACHE_TEST_TIMEOUT_SCALE";
/// Env var that, when set to `1`, keeps temp dirs after the test.
pub const KEEP_DIRS_ENV: &str = "STORMCACHE_KEEP_TEST_DIRS";

/// Name of the master monitored by [`SentinelGroup`].
pub const SENTINEL_MASTER_NAME: &str = "mymaster";

// ---------------------------------------------------------------------------------------------
// Small shared helpers: deadlines, polling, locks.
// ---------------------------------------------------------------------------------------------

/// Scales `d` by `STORMCACHE_TEST_TIMEOUT_SCALE` (≥ 1, default 1).
pub fn scaled(d: Duration) -> Duration {
    static SCALE: OnceLock<f64> = OnceLock::new();
    let scale = *SCALE.get_or_init(|| {
        std::env::var(TIMEOUT_SCALE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 1.0)
            .unwrap_or(1.0)
    });
    d.mul_f64(scale)
}

/// Calls `probe` every `interval` until it returns `Some`, or `timeout` has passed (`None`).
/// `probe` is always called at least once, and once more at the deadline.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(interval.min(deadline - now));
    }
}

/// Polls `condition` every 20 ms and panics with `what` if it is not true within `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    if poll_until(timeout, Duration::from_millis(20), || {
        condition().then_some(())
    })
    .is_none()
    {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// The async form of [`wait_until`], for tokio tests: checks `cond` every 10 ms without
/// blocking the runtime, and panics with `what` if it is not true within `limit`.
pub async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data; keep going.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Ports.
// ---------------------------------------------------------------------------------------------

fn handed_out_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A free loopback port, never returned twice by this process.
pub fn free_port() -> u16 {
    allocate_port(false)
}

/// A free loopback port `p` whose cluster bus port `p + 10000` is also free; neither is
/// returned again by this process.
pub fn free_cluster_port() -> u16 {
    allocate_port(true)
}

fn allocate_port(with_bus: bool) -> u16 {
    for _ in 0..1000 {
        let listener =
            TcpListener::bind((LOCALHOST, 0)).expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        // Held until we return so nothing else in this process can take it meanwhile.
        let _bus_listener = if with_bus {
            match port
                .checked_add(10_000)
                .map(|bus| TcpListener::bind((LOCALHOST, bus)))
            {
                Some(Ok(bus_listener)) => Some(bus_listener),
                _ => continue,
            }
        } else {
            None
        };
        let mut taken = lock(handed_out_ports());
        let bus_taken = with_bus && taken.contains(&(port + 10_000));
        if taken.contains(&port) || bus_taken {
            continue;
        }
        taken.insert(port);
        if with_bus {
            taken.insert(port + 10_000);
        }
        return port;
    }
    panic!("could not find a free loopback port after 1000 attempts");
}

fn reserve_port(port: u16) {
    lock(handed_out_ports()).insert(port);
}

// ---------------------------------------------------------------------------------------------
// Binaries.
// ---------------------------------------------------------------------------------------------

/// Path of `redis-server` (or of `$STORMCACHE_REDIS_SERVER`); panics with an install hint.
pub fn redis_server_bin() -> PathBuf {
    binary_from_env("redis-server", REDIS_SERVER_ENV)
}

/// Path of `redis-cli` (or of `$STORMCACHE_REDIS_CLI`); panics with an install hint.
pub fn redis_cli_bin() -> PathBuf {
    binary_from_env("redis-cli", REDIS_CLI_ENV)
}

/// Resolves the binary named by `env_var`, or `default` when it is unset or empty.
pub fn binary_from_env(default: &str, env_var: &str) -> PathBuf {
    let name = std::env::var(env_var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned());
    find_binary(default, &name, env_var)
}

/// Resolves `name` (searched on PATH, or used as a path when it contains `/`). Panics with
/// "`role` not found on PATH: install it with ..." when it is missing.
pub fn find_binary(role: &str, name: &str, env_var: &str) -> PathBuf {
    fn is_executable(path: &Path) -> bool {
        fs::metadata(path)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    let found = if name.contains('/') {
        Some(PathBuf::from(name)).filter(|p| is_executable(p))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| is_executable(p))
        })
    };
    found.unwrap_or_else(|| {
        panic!("{role} not found on PATH: {INSTALL_HINT}. (Looked for `{name}`; set {env_var} to use another binary.)")
    })
}

// ---------------------------------------------------------------------------------------------
// Temp dirs.
// ---------------------------------------------------------------------------------------------

/// A directory under `std::env::temp_dir()` named `stormcache-<label>-<pid>-<n>`, removed on drop
/// (unless `STORMCACHE_KEEP_TEST_DIRS=1`).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        static SWEEP: OnceLock<()> = OnceLock::new();
        SWEEP.get_or_init(remove_dirs_of_dead_test_processes);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("stormcache-{label}-{}-{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                // Left over by a dead process that had our pid: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temp dir {}: {e}", path.display()),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes `stormcache-<label>-<pid>-<n>` dirs left by test processes that died without running
/// destructors (e.g. SIGKILLed by a timeout). Only dirs whose pid no longer exists are touched,
/// and nothing is removed while `STORMCACHE_KEEP_TEST_DIRS=1`.
fn remove_dirs_of_dead_test_processes() {
    if std::env::var(KEEP_DIRS_ENV).as_deref() == Ok("1") {
        return;
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("stormcache-") else {
            continue;
        };
        // <label>-<pid>-<n>: the pid is the second-to-last field.
        let mut fields = rest.rsplit('-');
        let (Some(_n), Some(pid)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<libc::pid_t>() else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the pid exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var(KEEP_DIRS_ENV).as_deref() == Ok("1") {
            eprintln!("keeping test dir {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parts, one job each.
// ---------------------------------------------------------------------------------------------

/// Cache builders shared by the tests.
pub mod caches;
mod child;
mod cluster;
mod fault_proxy;
/// The randomized fault checker's history: events, the stale-read checker, reports.
pub mod history;
/// A real HTTP client to an app listening on a socket.
#[cfg(feature = "axum")]
pub mod http;
/// The package's examples as separate OS processes.
pub mod process;
mod redis_server;
pub mod resp;
pub mod rng;
mod sentinel;
mod slowlog;
/// [`topology::Topology`]: one interface over standalone, Sentinel and Cluster.
pub mod topology;

// Re-exported so tests keep writing `support::RedisServer` etc.; each test binary uses a subset.
#[allow(unused_imports)]
pub use cluster::ClusterGroup;
#[allow(unused_imports)]
pub use fault_proxy::{FaultProxy, ProxyMode};
#[allow(unused_imports)]
pub use redis_server::{RedisServer, RedisServerBuilder};
#[allow(unused_imports)]
pub use sentinel::SentinelGroup;
#[allow(unused_imports)]
pub use slowlog::{slowlog_entries, slowlog_start, SlowCommand};

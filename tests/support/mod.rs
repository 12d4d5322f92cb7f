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

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use self::resp::RespValue;

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

/// Deadline for one server to answer PING after spawn.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a whole Sentinel group to be ready for a failover.
const SENTINEL_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline for a whole cluster to be created and settled.
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many fresh ports a first start tries when the port is stolen by another process.
const PORT_ATTEMPTS: usize = 8;
/// Lines of log shown in startup/deadline panics.
const LOG_TAIL_LINES: usize = 40;

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
// Child processes.
// ---------------------------------------------------------------------------------------------

/// Spawns `cmd`. On Linux the child gets PR_SET_PDEATHSIG(SIGKILL). That signal fires when the
/// *thread* that forked the child exits, so every spawn goes through one thread that lives as
/// long as the process.
fn spawn(cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("stormcache-test-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in jobs_rx {
                    let _ = reply.send(spawn_with_parent_death_signal(&mut cmd));
                }
            })
            .expect("start the process-spawner thread");
        Mutex::new(jobs_tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    lock(spawner)
        .send((cmd, reply_tx))
        .expect("process-spawner thread is gone");
    reply_rx.recv().expect("process-spawner thread is gone")
}

#[cfg(target_os = "linux")]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("test process exited during spawn"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[cfg(not(target_os = "linux"))]
fn spawn_with_parent_death_signal(cmd: &mut Command) -> io::Result<Child> {
    cmd.spawn()
}

/// A spawned child that is SIGKILLed and reaped on drop.
struct ChildProcess {
    child: Child,
    reaped: bool,
}

impl ChildProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        if self.reaped {
            return Err(io::Error::other("process already exited"));
        }
        // SAFETY: plain syscall; the pid is our unreaped child, so it cannot have been reused.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `Some(status)` once the child has exited (it is then reaped).
    fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.reaped {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.reaped = true;
                Some(status)
            }
            _ => None,
        }
    }

    fn kill(&mut self) {
        if !self.reaped {
            let _ = self.signal(libc::SIGKILL);
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} not readable)", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// RESP client.
// ---------------------------------------------------------------------------------------------

/// A tiny synchronous RESP2 client over `std::net::TcpStream`, with timeouts, for test plumbing
/// (checking state, writing fixtures). Binary-safe: arguments and values are bytes.
///
/// Transport and protocol failures are `Err(String)`; a Redis error reply is
/// `Ok(RespValue::Error(..))`.
pub mod resp {
    use std::collections::HashMap;
    use std::fmt;
    use std::io::{self, BufRead, BufReader, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// Connect, read and write timeout used by [`cmd`] and [`Conn::connect`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    const MAX_DEPTH: usize = 32;
    const MAX_REDIRECTS: usize = 8;

    /// A RESP2 reply. A null bulk string and a null array are both [`RespValue::Nil`].
    #[derive(Clone, PartialEq, Eq)]
    pub enum RespValue {
        Simple(String),
        Error(String),
        Int(i64),
        Bulk(Vec<u8>),
        Nil,
        Array(Vec<RespValue>),
    }

    impl RespValue {
        pub fn is_error(&self) -> bool {
            matches!(self, RespValue::Error(_))
        }

        pub fn is_nil(&self) -> bool {
            matches!(self, RespValue::Nil)
        }

        /// True for `+OK`.
        pub fn is_ok(&self) -> bool {
            matches!(self, RespValue::Simple(s) if s == "OK")
        }

        /// Bytes of a simple or bulk string.
        pub fn as_bytes(&self) -> Option<&[u8]> {
            match self {
                RespValue::Simple(s) => Some(s.as_bytes()),
                RespValue::Bulk(b) => Some(b),
                _ => None,
            }
        }

        /// Text of a simple or bulk string (lossy UTF-8).
        pub fn as_text(&self) -> Option<String> {
            self.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        }

        /// An integer reply, or a string reply holding an integer.
        pub fn as_int(&self) -> Option<i64> {
            match self {
                RespValue::Int(i) => Some(*i),
                other => other.as_text().and_then(|t| t.trim().parse().ok()),
            }
        }

        pub fn as_array(&self) -> Option<&[RespValue]> {
            match self {
                RespValue::Array(items) => Some(items),
                _ => None,
            }
        }

        pub fn error_message(&self) -> Option<&str> {
            match self {
                RespValue::Error(e) => Some(e),
                _ => None,
            }
        }

        /// redis-cli-like rendering: strings as text, `(nil)`, arrays one item per line.
        pub fn to_display(&self) -> String {
            match self {
                RespValue::Simple(s) | RespValue::Error(s) => s.clone(),
                RespValue::Int(i) => i.to_string(),
                RespValue::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                RespValue::Nil => "(nil)".to_owned(),
                RespValue::Array(items) => items
                    .iter()
                    .map(RespValue::to_display)
                    .collect::<Vec<_>>()
                    .join("\n"),
            }
        }

        /// A flat `[field, value, field, value, ...]` array (e.g. `SENTINEL MASTER`) as a map.
        pub fn to_field_map(&self) -> HashMap<String, String> {
            let items = self.as_array().unwrap_or(&[]);
            items
                .chunks(2)
                .filter_map(|pair| match pair {
                    [k, v] => Some((k.as_text()?, v.to_display())),
                    _ => None,
                })
                .collect()
        }
    }

    impl fmt::Debug for RespValue {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                RespValue::Simple(s) => write!(f, "+{s}"),
                RespValue::Error(e) => write!(f, "-{e}"),
                RespValue::Int(i) => write!(f, ":{i}"),
                RespValue::Bulk(b) => write!(f, "b\"{}\"", b.escape_ascii()),
                RespValue::Nil => f.write_str("nil"),
                RespValue::Array(items) => f.debug_list().entries(items).finish(),
            }
        }
    }

    /// Encodes a command as a RESP array of bulk strings.
    pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let arg = arg.as_ref();
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Reads one RESP2 value.
    pub fn read_value<R: BufRead>(reader: &mut R) -> Result<RespValue, String> {
        read_value_at_depth(reader, 0)
    }

    fn read_value_at_depth<R: BufRead>(reader: &mut R, depth: usize) -> Result<RespValue, String> {
        if depth > MAX_DEPTH {
            return Err("RESP nesting too deep".into());
        }
        let line = read_line(reader)?;
        let (kind, rest) = line.split_first().ok_or("empty RESP line")?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        let length = || -> Result<i64, String> {
            text()
                .parse::<i64>()
                .map_err(|_| format!("bad RESP length {:?}", text()))
        };
        match kind {
            b'+' => Ok(RespValue::Simple(text())),
            b'-' => Ok(RespValue::Error(text())),
            b':' => text()
                .parse()
                .map(RespValue::Int)
                .map_err(|_| format!("bad RESP integer {:?}", text())),
            b'$' => match length()? {
                -1 => Ok(RespValue::Nil),
                n if n < 0 => Err(format!("bad bulk length {n}")),
                n => {
                    let mut data = vec![0u8; n as usize + 2];
                    reader.read_exact(&mut data).map_err(describe_io)?;
                    if !data.ends_with(b"\r\n") {
                        return Err("bulk string not terminated by CRLF".into());
                    }
                    data.truncate(n as usize);
                    Ok(RespValue::Bulk(data))
                }
            },
            b'*' => match length()? {
                -1 => Ok(RespValue::Nil),
                n if n < 0 => Err(format!("bad array length {n}")),
                n => (0..n)
                    .map(|_| read_value_at_depth(reader, depth + 1))
                    .collect::<Result<_, _>>()
                    .map(RespValue::Array),
            },
            other => Err(format!("unsupported RESP type byte {:?}", *other as char)),
        }
    }

    fn read_line<R: BufRead>(reader: &mut R) -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).map_err(describe_io)?;
        if n == 0 {
            return Err("connection closed by peer".into());
        }
        if !line.ends_with(b"\r\n") {
            return Err(format!(
                "truncated RESP line {:?}",
                line.escape_ascii().to_string()
            ));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn describe_io(e: io::Error) -> String {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("timed out ({e})"),
            io::ErrorKind::UnexpectedEof => "connection closed by peer".into(),
            _ => e.to_string(),
        }
    }

    fn command_name<A: AsRef<[u8]>>(args: &[A]) -> String {
        args.first()
            .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
            .unwrap_or_default()
    }

    /// One connection to `127.0.0.1:port`. After any transport or protocol error the connection
    /// is poisoned (its stream may be out of sync) and every later call fails.
    pub struct Conn {
        port: u16,
        reader: BufReader<TcpStream>,
        poisoned: bool,
    }

    impl Conn {
        pub fn connect(port: u16) -> Result<Conn, String> {
            Conn::connect_timeout(port, DEFAULT_TIMEOUT)
        }

        /// Connects with `timeout` used for connecting, reading and writing.
        pub fn connect_timeout(port: u16, timeout: Duration) -> Result<Conn, String> {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let stream = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| format!("connect to {addr}: {}", describe_io(e)))?;
            let _ = stream.set_nodelay(true);
            let mut conn = Conn {
                port,
                reader: BufReader::new(stream),
                poisoned: false,
            };
            conn.set_timeout(timeout)?;
            Ok(conn)
        }

        pub fn port(&self) -> u16 {
            self.port
        }

        /// Sets the read and write timeout.
        pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), String> {
            let stream = self.reader.get_ref();
            stream
                .set_read_timeout(Some(timeout))
                .and_then(|_| stream.set_write_timeout(Some(timeout)))
                .map_err(|e| e.to_string())
        }

        /// Sends one command and reads its reply.
        pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<RespValue, String> {
            if self.poisoned {
                return Err(format!(
                    "127.0.0.1:{} {}: connection unusable after an earlier error",
                    self.port,
                    command_name(args)
                ));
            }
            let result = self
                .reader
                .get_mut()
                .write_all(&encode(args))
                .map_err(describe_io)
                .and_then(|_| read_value(&mut self.reader));
            result.map_err(|e| {
                self.poisoned = true;
                format!("127.0.0.1:{} {}: {e}", self.port, command_name(args))
            })
        }
    }

    /// Runs one command on a fresh connection with [`DEFAULT_TIMEOUT`].
    pub fn cmd<A: AsRef<[u8]>>(port: u16, args: &[A]) -> Result<RespValue, String> {
        cmd_timeout(port, args, DEFAULT_TIMEOUT)
    }

    /// Runs one command on a fresh connection; `timeout` bounds connect, write and read.
    pub fn cmd_timeout<A: AsRef<[u8]>>(
        port: u16,
        args: &[A],
        timeout: Duration,
    ) -> Result<RespValue, String> {
        Conn::connect_timeout(port, timeout)?.cmd(args)
    }

    /// Runs one command and renders the reply like redis-cli ([`RespValue::to_display`]).
    /// Panics on a transport error or an error reply.
    pub fn cmd_str<A: AsRef<[u8]>>(port: u16, args: &[A]) -> String {
        match cmd(port, args) {
            Ok(RespValue::Error(e)) => {
                panic!("127.0.0.1:{port} {}: error reply: {e}", command_name(args))
            }
            Ok(value) => value.to_display(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Parses `INFO` / `CLUSTER INFO` text into field → value.
    pub fn parse_info(text: &str) -> HashMap<String, String> {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// `INFO section` as a map.
    pub fn info(port: u16, section: &str) -> Result<HashMap<String, String>, String> {
        match cmd(port, &["INFO", section])? {
            RespValue::Bulk(text) => Ok(parse_info(&String::from_utf8_lossy(&text))),
            other => Err(format!(
                "127.0.0.1:{port} INFO {section}: unexpected reply {other:?}"
            )),
        }
    }

    /// One field of `INFO section`; `None` if the server is unreachable or lacks the field.
    pub fn info_field(port: u16, section: &str, field: &str) -> Option<String> {
        info(port, section).ok()?.remove(field)
    }

    /// Runs a command against a cluster starting at `seed_port`, following `-MOVED` and `-ASK`
    /// redirects (at most 8). Other replies, including `-CLUSTERDOWN`, are returned as they are.
    pub fn cluster_cmd<A: AsRef<[u8]>>(seed_port: u16, args: &[A]) -> Result<RespValue, String> {
        let mut port = seed_port;
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let reply = if asking {
                let mut conn = Conn::connect(port)?;
                conn.cmd(&["ASKING"])?;
                conn.cmd(args)?
            } else {
                cmd(port, args)?
            };
            let redirect = match &reply {
                RespValue::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    e.clone()
                }
                _ => return Ok(reply),
            };
            asking = redirect.starts_with("ASK ");
            port = redirect
                .rsplit(' ')
                .next()
                .and_then(|addr| addr.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .ok_or_else(|| format!("cannot parse redirect {redirect:?}"))?;
        }
        Err(format!(
            "{}: more than {MAX_REDIRECTS} cluster redirects",
            command_name(args)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// RedisServer.
// ---------------------------------------------------------------------------------------------

/// What a [`RedisServer`] process is.
#[derive(Clone, Debug)]
enum NodeKind {
    /// A data node started from command-line arguments.
    Data {
        save: bool,
        cluster: bool,
        extra_args: Vec<String>,
    },
    /// A sentinel started from `sentinel.conf` in its dir, monitoring `master_port`.
    Sentinel { master_port: u16 },
}

enum LaunchError {
    /// The port (or cluster bus port) was taken; worth retrying on another port.
    PortInUse(String),
    Failed(String),
}

/// Options for [`RedisServer`]; see [`RedisServer::builder`].
#[derive(Clone, Debug, Default)]
pub struct RedisServerBuilder {
    save: bool,
    cluster: bool,
    args: Vec<String>,
    binary: Option<String>,
    preferred_port: Option<u16>,
}

impl RedisServerBuilder {
    /// Enables the default RDB save points (default: off, i.e. `--save ""`).
    pub fn save(mut self, enabled: bool) -> Self {
        self.save = enabled;
        self
    }

    /// Adds one extra command-line argument (e.g. `"--maxmemory"`, then `"10mb"`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds extra command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Tries this port first; if it is taken, falls back to free ports like any other start.
    pub fn preferred_port(mut self, port: u16) -> Self {
        self.preferred_port = Some(port);
        self
    }

    /// Uses this binary (name on PATH or path) instead of `$STORMCACHE_REDIS_SERVER`.
    pub fn server_binary(mut self, name: impl Into<String>) -> Self {
        self.binary = Some(name.into());
        self
    }

    /// Starts the server and waits until it answers PING with `loading:0` (10 s deadline).
    pub fn start(self) -> RedisServer {
        let binary = match &self.binary {
            Some(name) => find_binary("redis-server", name, REDIS_SERVER_ENV),
            None => redis_server_bin(),
        };
        let kind = NodeKind::Data {
            save: self.save,
            cluster: self.cluster,
            extra_args: self.args,
        };
        RedisServer::start_new(binary, kind, self.preferred_port)
    }
}

/// One `redis-server` process (a standalone server, a group's data node or a sentinel) on
/// `127.0.0.1`, with its own temp dir holding `redis.log`, `stdout.log` and `dump.rdb`.
///
/// All methods take `&self`, so a server can be shared (e.g. in an `Arc`) with helper threads.
/// Dropping it SIGKILLs the process and removes the dir.
pub struct RedisServer {
    port: u16,
    kind: NodeKind,
    binary: PathBuf,
    process: Mutex<Option<ChildProcess>>,
    frozen: AtomicBool,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a standalone server with default options (no persistence).
    pub fn start() -> RedisServer {
        RedisServer::builder().start()
    }

    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    fn start_sentinel(master_port: u16) -> RedisServer {
        RedisServer::start_new(redis_server_bin(), NodeKind::Sentinel { master_port }, None)
    }

    /// First start: picks a port (`preferred_port` first), and picks another one if it turns
    /// out to be taken, e.g. by a test process running in parallel.
    fn start_new(binary: PathBuf, kind: NodeKind, preferred_port: Option<u16>) -> RedisServer {
        let (label, cluster) = match &kind {
            NodeKind::Data { cluster: true, .. } => ("cluster-node", true),
            NodeKind::Data { .. } => ("redis", false),
            NodeKind::Sentinel { .. } => ("sentinel", false),
        };
        let mut server = RedisServer {
            port: 0,
            kind,
            binary,
            process: Mutex::new(None),
            frozen: AtomicBool::new(false),
            dir: TempDir::new(label),
        };
        let mut collisions = Vec::new();
        let mut preferred_port = preferred_port;
        for _ in 0..PORT_ATTEMPTS {
            server.port = match preferred_port.take() {
                Some(port) => {
                    reserve_port(port);
                    port
                }
                None if cluster => free_cluster_port(),
                None => free_port(),
            };
            server.prepare_first_launch();
            match server.launch() {
                Ok(()) => return server,
                Err(LaunchError::PortInUse(detail)) => {
                    eprintln!(
                        "{} was taken ({detail}); retrying on another port",
                        server.port
                    );
                    collisions.push(format!("port {}: {detail}", server.port));
                }
                Err(LaunchError::Failed(message)) => panic!("{message}"),
            }
        }
        panic!(
            "redis-server could not get a free port after {PORT_ATTEMPTS} attempts:\n{}",
            collisions.join("\n")
        );
    }

    /// Resets per-port state in the dir before a first launch (or a retry on a new port).
    fn prepare_first_launch(&self) {
        let _ = fs::remove_file(self.dir.path().join("nodes.conf"));
        if let NodeKind::Sentinel { master_port } = &self.kind {
            let dir = self.dir.path().display();
            let config = format!(
                "port {port}\n\
                 bind {LOCALHOST}\n\
                 protected-mode no\n\
                 daemonize no\n\
                 dir \"{dir}\"\n\
                 logfile \"{dir}/redis.log\"\n\
                 sentinel monitor {SENTINEL_MASTER_NAME} {LOCALHOST} {master_port} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER_NAME} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER_NAME} 3000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER_NAME} 1\n",
                port = self.port
            );
            fs::write(self.sentinel_config_path(), config).expect("write sentinel.conf");
        }
    }

    fn sentinel_config_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.conf")
    }

    fn launch_args(&self) -> Vec<String> {
        let dir = self.dir.path().display().to_string();
        match &self.kind {
            NodeKind::Data {
                save,
                cluster,
                extra_args,
            } => {
                let mut args: Vec<String> = [
                    "--port",
                    &self.port.to_string(),
                    "--bind",
                    LOCALHOST,
                    "--dir",
                    &dir,
                    "--protected-mode",
                    "no",
                    "--daemonize",
                    "no",
                    "--logfile",
                    &self.log_path().display().to_string(),
                    "--appendonly",
                    "no",
                    // Redis 7 waits 5 s before a diskless full sync by default; every replica
                    // (re)link in a test would pay it.
                    "--repl-diskless-sync-delay",
                    "0",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if !save {
                    args.extend(["--save".to_owned(), String::new()]);
                }
                if *cluster {
                    args.extend(
                        [
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--cluster-node-timeout",
                            "1000",
                        ]
                        .map(String::from),
                    );
                }
                args.extend(extra_args.iter().cloned());
                args
            }
            NodeKind::Sentinel { .. } => {
                vec![
                    self.sentinel_config_path().display().to_string(),
                    "--sentinel".to_owned(),
                ]
            }
        }
    }

    /// Spawns the process on `self.port` and waits until it is ready.
    fn launch(&self) -> Result<(), LaunchError> {
        let mut guard = lock(&self.process);
        if let Some(mut old) = guard.take() {
            old.kill();
        }
        self.frozen.store(false, Ordering::SeqCst);
        let log_offset = file_len(&self.log_path());
        let stdout_offset = file_len(&self.stdout_path());
        let stdout = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdout_path())
            .map_err(|e| {
                LaunchError::Failed(format!("open {}: {e}", self.stdout_path().display()))
            })?;
        let stderr = stdout
            .try_clone()
            .map_err(|e| LaunchError::Failed(e.to_string()))?;
        let mut command = Command::new(&self.binary);
        command
            .args(self.launch_args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut child = spawn(command)
            .map(|child| ChildProcess {
                child,
                reaped: false,
            })
            .map_err(|e| {
                LaunchError::Failed(format!("failed to spawn {}: {e}", self.binary.display()))
            })?;

        let timeout = scaled(SERVER_START_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let mut last_problem;
        loop {
            if let Some(status) = child.try_exited() {
                let new_output = read_from(&self.log_path(), log_offset)
                    + &read_from(&self.stdout_path(), stdout_offset);
                if let Some(line) = new_output.lines().find(|l| l.contains("already in use")) {
                    return Err(LaunchError::PortInUse(line.trim().to_owned()));
                }
                return Err(LaunchError::Failed(format!(
                    "{} exited during startup ({status}).\n{}",
                    self.describe(),
                    self.log_tail()
                )));
            }
            match self.probe_ready(child.pid()) {
                Ok(()) => {
                    *guard = Some(child);
                    return Ok(());
                }
                Err(problem) => last_problem = problem,
            }
            if Instant::now() >= deadline {
                child.kill();
                return Err(LaunchError::Failed(format!(
                    "{} not ready within {timeout:?}: {last_problem}\n{}",
                    self.describe(),
                    self.log_tail()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ready = PING answers PONG, the answering process is ours, and (data nodes) not loading.
    fn probe_ready(&self, pid: u32) -> Result<(), String> {
        // Short: whatever holds the port may never answer (then our process exits and the
        // next poll notices); a real redis answers PING in microseconds.
        let mut conn = resp::Conn::connect_timeout(self.port, Duration::from_millis(300))?;
        match conn.cmd(&["PING"])? {
            RespValue::Simple(pong) if pong == "PONG" => {}
            other => return Err(format!("PING answered {other:?}")),
        }
        let server_info = conn
            .cmd(&["INFO", "server"])?
            .as_text()
            .map(|t| resp::parse_info(&t))
            .unwrap_or_default();
        let answering_pid = server_info.get("process_id").cloned().unwrap_or_default();
        if answering_pid != pid.to_string() {
            return Err(format!(
                "port {} is answered by pid {answering_pid:?}, not ours ({pid})",
                self.port
            ));
        }
        if matches!(self.kind, NodeKind::Data { .. }) {
            let persistence = conn
                .cmd(&["INFO", "persistence"])?
                .as_text()
                .map(|t| resp::parse_info(&t))
                .unwrap_or_default();
            if persistence.get("loading").map(String::as_str) != Some("0") {
                return Err("still loading its dataset".into());
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let what = match &self.kind {
            NodeKind::Data { cluster: true, .. } => "redis cluster node",
            NodeKind::Data { .. } => "redis-server",
            NodeKind::Sentinel { .. } => "redis sentinel",
        };
        format!(
            "{what} on 127.0.0.1:{} (dir {})",
            self.port,
            self.dir.path().display()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("{LOCALHOST}:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"`.
    pub fn url(&self) -> String {
        format!("redis://{LOCALHOST}:{}", self.port)
    }

    /// The server's temp dir (holds `redis.log`, `dump.rdb`, `nodes.conf` / `sentinel.conf`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    /// The last lines of `redis.log` and of the process's stdout/stderr.
    pub fn log_tail(&self) -> String {
        format!(
            "--- {} (last {LOG_TAIL_LINES} lines) ---\n{}\n--- stdout/stderr ---\n{}",
            self.log_path().display(),
            tail_of_file(&self.log_path(), LOG_TAIL_LINES),
            tail_of_file(&self.stdout_path(), 10)
        )
    }

    pub fn rdb_path(&self) -> PathBuf {
        self.dir.path().join("dump.rdb")
    }

    /// PID of the running process; panics if it is not running.
    pub fn pid(&self) -> u32 {
        lock(&self.process)
            .as_ref()
            .map(ChildProcess::pid)
            .unwrap_or_else(|| panic!("{} is not running", self.describe()))
    }

    /// True while the process started by the harness is alive (frozen counts as alive).
    pub fn is_running(&self) -> bool {
        let mut guard = lock(&self.process);
        let exited = match guard.as_mut() {
            Some(child) => child.try_exited().is_some(),
            None => return false,
        };
        if exited {
            *guard = None;
        }
        !exited
    }

    /// True between [`freeze`](Self::freeze) and [`resume`](Self::resume).
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    /// Running and not frozen: expected to answer commands.
    pub fn is_serving(&self) -> bool {
        self.is_running() && !self.is_frozen()
    }

    /// SIGKILLs the process and reaps it. No-op if it is not running.
    pub fn kill(&self) {
        if let Some(mut child) = lock(&self.process).take() {
            child.kill();
        }
        self.frozen.store(false, Ordering::SeqCst);
    }

    fn send_signal(&self, signal: libc::c_int, name: &str) {
        let guard = lock(&self.process);
        let child = guard
            .as_ref()
            .unwrap_or_else(|| panic!("cannot {name} {}: not running", self.describe()));
        child
            .signal(signal)
            .unwrap_or_else(|e| panic!("cannot {name} {}: {e}", self.describe()));
    }

    /// SIGSTOPs the process: it keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        self.send_signal(libc::SIGSTOP, "freeze");
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// SIGCONTs a frozen process.
    pub fn resume(&self) {
        self.send_signal(libc::SIGCONT, "resume");
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Kills the process (if running) and starts it again on the same port and dir, with the
    /// same options, so it loads `dump.rdb` if there is one. Waits until it is ready.
    ///
    /// A sentinel restarts from its own (rewritten) `sentinel.conf`; a replica restarts with its
    /// original `--replicaof`; a cluster node from its `nodes.conf`.
    pub fn restart(&self) {
        self.kill();
        let timeout = scaled(SERVER_START_TIMEOUT);
        let deadline = Instant::now() + timeout;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(LaunchError::Failed(message)) => panic!("restart failed: {message}"),
                Err(LaunchError::PortInUse(detail)) if Instant::now() >= deadline => panic!(
                    "restart of {} failed: port still in use after {timeout:?} ({detail}); \
                     another process took it while the server was down",
                    self.describe()
                ),
                Err(LaunchError::PortInUse(_)) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs BGSAVE and waits until it has finished successfully (10 s deadline).
    pub fn bgsave_and_wait(&self) {
        let timeout = scaled(Duration::from_secs(10));
        let saves_before = self.persistence_field("rdb_saves");
        let started = poll_until(timeout, Duration::from_millis(20), || {
            match self.cmd(&["BGSAVE"]) {
                RespValue::Simple(_) => Some(()),
                // Another save (or an AOF rewrite) is running: ours must start after it.
                RespValue::Error(e) if e.contains("in progress") => None,
                other => panic!("BGSAVE on {} failed: {other:?}", self.describe()),
            }
        });
        started.unwrap_or_else(|| {
            panic!(
                "BGSAVE on {} could not start within {timeout:?}",
                self.describe()
            )
        });
        // rdb_bgsave_in_progress turns 1 synchronously with BGSAVE's reply, so 0 means ours ended.
        wait_until(timeout, "BGSAVE to finish", || {
            self.persistence_field("rdb_bgsave_in_progress") == "0"
        });
        let status = self.persistence_field("rdb_last_bgsave_status");
        assert_eq!(
            status,
            "ok",
            "BGSAVE on {} failed\n{}",
            self.describe(),
            self.log_tail()
        );
        let saves_after = self.persistence_field("rdb_saves");
        assert_ne!(
            saves_before,
            saves_after,
            "rdb_saves did not change after BGSAVE on {}",
            self.describe()
        );
    }

    fn persistence_field(&self, field: &str) -> String {
        resp::info_field(self.port, "persistence", field)
            .unwrap_or_else(|| panic!("INFO persistence on {} has no {field}", self.describe()))
    }

    /// Copies the current `dump.rdb` to `to` (e.g. to restart from it later).
    pub fn copy_rdb(&self, to: &Path) {
        fs::copy(self.rdb_path(), to).unwrap_or_else(|e| {
            panic!(
                "copy {} to {}: {e}",
                self.rdb_path().display(),
                to.display()
            )
        });
    }

    /// Kills the server, installs `rdb` as its `dump.rdb` and starts it again on the same port:
    /// "the server came back from an old snapshot".
    pub fn restart_from_rdb(&self, rdb: &Path) {
        self.kill();
        if rdb != self.rdb_path() {
            fs::copy(rdb, self.rdb_path()).unwrap_or_else(|e| {
                panic!(
                    "install {} as {}: {e}",
                    rdb.display(),
                    self.rdb_path().display()
                )
            });
        }
        self.restart();
    }

    /// Runs a command; panics on a transport error (an error reply is returned).
    pub fn cmd<A: AsRef<[u8]>>(&self, args: &[A]) -> RespValue {
        self.try_cmd(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs a command; transport errors are `Err`.
    pub fn try_cmd<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<RespValue, String> {
        resp::cmd(self.port, args)
    }

    /// One field of `INFO section`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        resp::info_field(self.port, section, field)
    }

    /// Waits until at least `n` replicas are online and have acknowledged this master's
    /// replication offset as of the call, i.e. they hold every write made before it. Panics after
    /// `timeout`. Replicas acknowledge about once a second, so this can take up to ~1 s.
    ///
    /// Prefer this to `WAIT` from a helper connection: `WAIT` only covers writes made on the
    /// *same* connection, so on a fresh connection it returns at once.
    pub fn wait_for_replicas(&self, n: usize, timeout: Duration) {
        let target: u64 = self
            .info_field("replication", "master_repl_offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| panic!("{} reported no master_repl_offset", self.describe()));
        let mut caught_up = 0;
        let done = poll_until(timeout, Duration::from_millis(20), || {
            caught_up = replicas_at_offset(self.port, target);
            (caught_up >= n).then_some(())
        });
        if done.is_none() {
            panic!(
                "{}: only {caught_up} of {n} replicas reached offset {target} within {timeout:?}: {:?}",
                self.describe(),
                resp::info(self.port, "replication")
            );
        }
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> u64 {
        let reply = self.cmd(&["DBSIZE"]);
        reply
            .as_int()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or_else(|| panic!("DBSIZE on {} answered {reply:?}", self.describe()))
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The process goes first, then the `dir` field removes the temp dir.
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel.
// ---------------------------------------------------------------------------------------------

/// One master, two replicas (`--replicaof`) and three sentinels (quorum 2,
/// `down-after-milliseconds 1000`, `failover-timeout 3000`), all on loopback.
///
/// [`SentinelGroup::start`] returns only once a failover can actually happen: both replicas are
/// linked and every sentinel knows both replicas and both other sentinels.
pub struct SentinelGroup {
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    pub fn start() -> SentinelGroup {
        let timeout = scaled(SENTINEL_START_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let master = RedisServer::start();
        let master_port = master.port().to_string();
        let mut data = vec![master];
        for _ in 0..2 {
            data.push(
                RedisServer::builder()
                    .args(["--replicaof", LOCALHOST, &master_port])
                    .start(),
            );
        }
        // Sentinels discover replicas from the master's INFO, which they refresh only every 10 s
        // outside a failover: start them once the master lists both replicas as online.
        let master_port = data[0].port();
        let replicas_linked = poll_until(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(50),
            || {
                (online_replica_count(master_port) == 2
                    && data[1..].iter().all(|r| {
                        r.info_field("replication", "master_link_status").as_deref() == Some("up")
                    }))
                .then_some(())
            },
        );
        if replicas_linked.is_none() {
            panic!(
                "sentinel group: replicas did not link to the master within {timeout:?}\n{}\n{}",
                data[1].log_tail(),
                data[0].log_tail()
            );
        }
        let sentinels: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_sentinel(master_port))
            .collect();
        let group = SentinelGroup { data, sentinels };
        let mut last_view = String::new();
        let ready = poll_until(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(50),
            || {
                let views: Vec<_> = group
                    .sentinels
                    .iter()
                    .map(|s| sentinel_view(s.port()))
                    .collect();
                last_view = format!("{views:?}");
                views
                    .iter()
                    .all(|v| v.as_ref().is_ok_and(|v| v.ready_for_failover(master_port)))
                    .then_some(())
            },
        );
        if ready.is_none() {
            panic!(
                "sentinel group not ready for failover within {timeout:?}; sentinel views: {last_view}\n{}",
                group.sentinels[0].log_tail()
            );
        }
        group
    }

    pub fn master_name(&self) -> &'static str {
        SENTINEL_MASTER_NAME
    }

    /// fred's form: `redis-sentinel://127.0.0.1:S1/0?sentinelServiceName=mymaster&node=127.0.0.1:S2&node=127.0.0.1:S3`.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// Like [`url`](Self::url) with database `db`.
    pub fn url_db(&self, db: u8) -> String {
        let ports = self.sentinel_ports();
        let others: String = ports[1..]
            .iter()
            .map(|p| format!("&node={LOCALHOST}:{p}"))
            .collect();
        format!(
            "redis-sentinel://{LOCALHOST}:{}/{db}?sentinelServiceName={SENTINEL_MASTER_NAME}{others}",
            ports[0]
        )
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// Ports of the three data nodes (the initial master first).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(RedisServer::port).collect()
    }

    /// The sentinels.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The data node or sentinel on `port` (kill / freeze / resume / restart it through this).
    pub fn server_by_port(&self, port: u16) -> &RedisServer {
        self.data
            .iter()
            .chain(&self.sentinels)
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no node of this sentinel group listens on port {port}"))
    }

    /// The master named by most serving sentinels (`SENTINEL get-master-addr-by-name`); right
    /// after a switch some sentinels may still name the old one. Panics if none answers.
    pub fn current_master_port(&self) -> u16 {
        let answers = self.sentinel_answers();
        let mut votes: HashMap<u16, usize> = HashMap::new();
        for port in answers.iter().filter_map(|a| a.as_ref().ok()) {
            *votes.entry(*port).or_default() += 1;
        }
        votes
            .into_iter()
            .max_by_key(|&(port, count)| (count, std::cmp::Reverse(port)))
            .map(|(port, _)| port)
            .unwrap_or_else(|| panic!("no sentinel named the master: {answers:?}"))
    }

    /// The data node that sentinels currently name as master.
    pub fn master(&self) -> &RedisServer {
        self.server_by_port(self.current_master_port())
    }

    /// SIGKILLs the current master; returns its port.
    pub fn kill_master(&self) -> u16 {
        let port = self.current_master_port();
        self.server_by_port(port).kill();
        port
    }

    fn sentinel_answers(&self) -> Vec<Result<u16, String>> {
        self.sentinels
            .iter()
            .filter(|s| s.is_serving())
            .map(|s| sentinel_master_port(s.port()))
            .collect()
    }

    /// The master if every serving sentinel names the same node and it reports `role:master`;
    /// otherwise a description of the disagreement.
    fn settled_master(&self) -> Result<u16, String> {
        let answers = self.sentinel_answers();
        let first = match answers.first() {
            Some(Ok(port)) => *port,
            _ => return Err(format!("sentinels said {answers:?}")),
        };
        if !answers.iter().all(|a| a.as_ref() == Ok(&first)) {
            return Err(format!("sentinels disagree: {answers:?}"));
        }
        match resp::info_field(first, "replication", "role") {
            Some(role) if role == "master" => Ok(first),
            role => Err(format!(
                "sentinels name {first}, which reports role {role:?}"
            )),
        }
    }

    /// Roles of the data nodes and sentinel answers, for panic messages.
    fn describe_state(&self) -> String {
        let nodes: Vec<String> = self
            .data
            .iter()
            .map(|n| match resp::info(n.port(), "replication") {
                Ok(info) => format!(
                    "{}: role={} master_port={} link={}",
                    n.port(),
                    info.get("role").map_or("?", String::as_str),
                    info.get("master_port").map_or("-", String::as_str),
                    info.get("master_link_status").map_or("-", String::as_str)
                ),
                Err(e) => format!("{}: {e}", n.port()),
            })
            .collect();
        format!(
            "data nodes: {nodes:?}; sentinels {:?} said {:?}\n{}",
            self.sentinel_ports(),
            self.sentinel_answers(),
            self.sentinels[0].log_tail()
        )
    }

    /// Polls until every serving sentinel names the same master other than `old_port`, and that
    /// node reports `role:master`. Returns its port; panics after `timeout`.
    pub fn wait_for_new_master(&self, old_port: u16, timeout: Duration) -> u16 {
        let found = poll_until(timeout, Duration::from_millis(50), || {
            self.settled_master().ok().filter(|&port| port != old_port)
        });
        found.unwrap_or_else(|| {
            panic!(
                "no new master replaced 127.0.0.1:{old_port} within {timeout:?}; {}",
                self.describe_state()
            )
        })
    }

    /// Manual failover (`SENTINEL FAILOVER mymaster`) with the master alive; waits for the switch
    /// and returns the new master's port (30 s deadline).
    pub fn failover(&self) -> u16 {
        let timeout = scaled(Duration::from_secs(30));
        let deadline = Instant::now() + timeout;
        let old = self.current_master_port();
        let mut last_error = String::new();
        // -NOGOODSLAVE / -INPROG are transient right after startup or another failover.
        let accepted = poll_until(timeout, Duration::from_millis(200), || {
            self.sentinels
                .iter()
                .filter(|s| s.is_serving())
                .find_map(|s| {
                    match resp::cmd(s.port(), &["SENTINEL", "FAILOVER", SENTINEL_MASTER_NAME]) {
                        Ok(reply) if reply.is_ok() => Some(()),
                        Ok(reply) => {
                            last_error = format!("{reply:?}");
                            None
                        }
                        Err(e) => {
                            last_error = e;
                            None
                        }
                    }
                })
        });
        if accepted.is_none() {
            panic!("SENTINEL FAILOVER was refused for {timeout:?}: {last_error}");
        }
        self.wait_for_new_master(old, deadline.saturating_duration_since(Instant::now()))
    }

    /// Waits until the current master has at least `n` online replicas holding every write made
    /// before the call (see [`RedisServer::wait_for_replicas`]); e.g. before killing the master,
    /// or after a failover once sentinels have repointed the other nodes. Panics after `timeout`.
    ///
    /// The master is looked up again on every poll, so a failover during the wait (e.g. a
    /// spurious one on an overloaded machine) does not pin it to a node that is now a replica.
    pub fn wait_for_replicas(&self, n: usize, timeout: Duration) {
        // (master port, its replication offset when first seen as master)
        let mut target: Option<(u16, u64)> = None;
        let done = poll_until(timeout, Duration::from_millis(20), || {
            let master = self.settled_master().ok()?;
            let offset = match target {
                Some((port, offset)) if port == master => offset,
                _ => {
                    let offset = resp::info_field(master, "replication", "master_repl_offset")?
                        .parse()
                        .ok()?;
                    target = Some((master, offset));
                    offset
                }
            };
            (replicas_at_offset(master, offset) >= n).then_some(())
        });
        if done.is_none() {
            panic!(
                "the master did not get {n} caught-up replicas within {timeout:?} (target {target:?}); {}",
                self.describe_state()
            );
        }
    }

    /// Restarts the data node or sentinel on `port` (same port and dir; see
    /// [`RedisServer::restart`]). Sentinels will reconfigure a returning old master as a replica.
    pub fn restart_node(&self, port: u16) {
        self.server_by_port(port).restart();
    }
}

/// What one sentinel knows about `mymaster`.
#[derive(Debug)]
struct SentinelView {
    master_port: Option<u16>,
    flags: String,
    replicas: Vec<(u16, String)>,
    other_sentinels: usize,
}

impl SentinelView {
    fn ready_for_failover(&self, master_port: u16) -> bool {
        self.master_port == Some(master_port)
            && self.flags == "master"
            && self.other_sentinels == 2
            && self.replicas.len() == 2
            && self.replicas.iter().all(|(_, flags)| flags == "slave")
    }
}

fn sentinel_view(port: u16) -> Result<SentinelView, String> {
    let master = resp::cmd(port, &["SENTINEL", "MASTER", SENTINEL_MASTER_NAME])?;
    if let Some(e) = master.error_message() {
        return Err(e.to_owned());
    }
    let master = master.to_field_map();
    let replicas = resp::cmd(port, &["SENTINEL", "REPLICAS", SENTINEL_MASTER_NAME])?;
    let replicas = replicas
        .as_array()
        .unwrap_or(&[])
        .iter()
        .map(|r| {
            let r = r.to_field_map();
            (
                r.get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
                r.get("flags").cloned().unwrap_or_default(),
            )
        })
        .collect();
    Ok(SentinelView {
        master_port: master.get("port").and_then(|p| p.parse().ok()),
        flags: master.get("flags").cloned().unwrap_or_default(),
        replicas,
        other_sentinels: master
            .get("num-other-sentinels")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    })
}

fn sentinel_master_port(sentinel_port: u16) -> Result<u16, String> {
    let reply = resp::cmd(
        sentinel_port,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER_NAME],
    )?;
    reply
        .as_array()
        .and_then(|addr| addr.get(1))
        .and_then(RespValue::as_int)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("sentinel {sentinel_port} answered {reply:?}"))
}

/// Number of replicas a master lists as online with an acknowledged offset of at least `offset`.
fn replicas_at_offset(master_port: u16, offset: u64) -> usize {
    let Ok(info) = resp::info(master_port, "replication") else {
        return 0;
    };
    replica_lines(&info)
        .filter(|fields| fields.get("state").map(String::as_str) == Some("online"))
        .filter(|fields| {
            fields
                .get("offset")
                .and_then(|o| o.parse::<u64>().ok())
                .is_some_and(|o| o >= offset)
        })
        .count()
}

/// The `slaveN:ip=..,port=..,state=..,offset=..,lag=..` lines of `INFO replication`, parsed.
fn replica_lines(
    info: &HashMap<String, String>,
) -> impl Iterator<Item = HashMap<String, String>> + '_ {
    info.iter()
        .filter(|(k, _)| {
            k.strip_prefix("slave")
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .map(|(_, v)| {
            v.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
}

/// Number of replicas a master lists with `state=online` in `INFO replication`.
fn online_replica_count(master_port: u16) -> usize {
    let Ok(info) = resp::info(master_port, "replication") else {
        return 0;
    };
    if info.get("role").map(String::as_str) != Some("master") {
        return 0;
    }
    replica_lines(&info)
        .filter(|fields| fields.get("state").map(String::as_str) == Some("online"))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Cluster.
// ---------------------------------------------------------------------------------------------

/// A 6-node Redis Cluster (3 masters with one replica each, `cluster-node-timeout 1000`) created
/// with `redis-cli --cluster create`. [`ClusterGroup::start`] returns once every node reports
/// `cluster_state:ok` with all 16384 slots, knows all 6 nodes, and every replica is linked.
pub struct ClusterGroup {
    nodes: Vec<RedisServer>,
    /// Replica port → master port, refreshed at start and before every kill.
    replica_of: Mutex<HashMap<u16, u16>>,
}

impl ClusterGroup {
    pub fn start() -> ClusterGroup {
        let timeout = scaled(CLUSTER_START_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let cli = redis_cli_bin();
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServerBuilder {
                    cluster: true,
                    ..RedisServerBuilder::default()
                }
                .start()
            })
            .collect();
        let group = ClusterGroup {
            nodes,
            replica_of: Mutex::new(HashMap::new()),
        };

        let output_path = group.nodes[0].dir().join("cluster-create.log");
        let output = fs::File::create(&output_path).expect("create cluster-create.log");
        let mut command = Command::new(&cli);
        command
            .arg("--cluster")
            .arg("create")
            .args(group.nodes.iter().map(RedisServer::addr))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone file handle"))
            .stderr(output);
        let mut create = spawn(command)
            .map(|child| ChildProcess {
                child,
                reaped: false,
            })
            .unwrap_or_else(|e| panic!("failed to run {} --cluster create: {e}", cli.display()));
        let status = poll_until(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(50),
            || create.try_exited(),
        );
        let transcript = || fs::read_to_string(&output_path).unwrap_or_default();
        match status {
            Some(status)
                if status.success() && transcript().contains("All 16384 slots covered") => {}
            Some(status) => panic!(
                "redis-cli --cluster create failed ({status}):\n{}",
                transcript()
            ),
            None => panic!(
                "redis-cli --cluster create did not finish within {timeout:?}:\n{}",
                transcript()
            ),
        }
        drop(create);

        let mut problem = String::new();
        let settled = poll_until(
            deadline.saturating_duration_since(Instant::now()),
            Duration::from_millis(50),
            || match group.settled_problem() {
                None => Some(()),
                Some(p) => {
                    problem = p;
                    None
                }
            },
        );
        if settled.is_none() {
            panic!(
                "cluster not settled within {timeout:?}: {problem}\n{}",
                group.nodes[0].log_tail()
            );
        }
        group.refresh_replica_map();
        group
    }

    /// Why the cluster is not (yet) fully healthy, or `None` if it is.
    fn settled_problem(&self) -> Option<String> {
        let mut masters = 0;
        for node in &self.nodes {
            let port = node.port();
            let cluster = match resp::cmd(port, &["CLUSTER", "INFO"]) {
                Ok(v) => resp::parse_info(&v.to_display()),
                Err(e) => return Some(e),
            };
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", "16384"),
                ("cluster_known_nodes", "6"),
            ] {
                if cluster.get(field).map(String::as_str) != Some(want) {
                    return Some(format!("node {port}: {field} is {:?}", cluster.get(field)));
                }
            }
            let nodes = resp::cmd(port, &["CLUSTER", "NODES"])
                .map(|v| v.to_display())
                .unwrap_or_default();
            if let Some(bad) = nodes.lines().find(|line| {
                let flags = line.split(' ').nth(2).unwrap_or("");
                flags.contains("fail")
                    || flags.contains("handshake")
                    || flags.contains("noaddr")
                    || !line.contains(" connected")
            }) {
                return Some(format!("node {port} sees {bad:?}"));
            }
            let replication = resp::info(port, "replication").unwrap_or_default();
            match replication.get("role").map(String::as_str) {
                Some("master") => {
                    masters += 1;
                    if online_replica_count(port) < 1 {
                        return Some(format!("master {port} has no online replica yet"));
                    }
                }
                Some("slave") => {
                    if replication.get("master_link_status").map(String::as_str) != Some("up") {
                        return Some(format!("replica {port}: master link not up"));
                    }
                }
                other => return Some(format!("node {port}: role {other:?}")),
            }
        }
        (masters != 3).then(|| format!("{masters} masters instead of 3"))
    }

    fn refresh_replica_map(&self) {
        let mut map = lock(&self.replica_of);
        for node in self.nodes.iter().filter(|n| n.is_serving()) {
            let Ok(info) = resp::info(node.port(), "replication") else {
                continue;
            };
            if info.get("role").map(String::as_str) == Some("slave") {
                if let Some(master) = info.get("master_port").and_then(|p| p.parse().ok()) {
                    map.insert(node.port(), master);
                }
            } else {
                map.remove(&node.port());
            }
        }
    }

    /// fred's form: `redis-cluster://127.0.0.1:p1?node=127.0.0.1:p2&node=127.0.0.1:p3`.
    pub fn url(&self) -> String {
        let p = self.ports();
        format!(
            "redis-cluster://{LOCALHOST}:{}?node={LOCALHOST}:{}&node={LOCALHOST}:{}",
            p[0], p[1], p[2]
        )
    }

    /// All six node ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Ports of serving nodes that report `role:master`.
    pub fn master_ports(&self) -> Vec<u16> {
        self.ports_with_role("master")
    }

    /// Ports of serving nodes that report `role:slave`.
    pub fn replica_ports(&self) -> Vec<u16> {
        self.ports_with_role("slave")
    }

    fn ports_with_role(&self, role: &str) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_serving())
            .filter(|n| {
                // A serving node that cannot say its role would silently skew counts: fail loudly.
                let reported = resp::info(n.port(), "replication").unwrap_or_else(|e| {
                    panic!("cluster node {} did not answer INFO: {e}", n.port())
                });
                reported.get("role").map(String::as_str) == Some(role)
            })
            .map(RedisServer::port)
            .collect()
    }

    /// The node on `port` (kill / freeze / resume / restart it through this).
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on port {port}"))
    }

    /// SIGKILLs the node on `port`, remembering which replicas it had (for
    /// [`wait_for_promotion`](Self::wait_for_promotion)).
    pub fn kill_node(&self, port: u16) {
        self.refresh_replica_map();
        self.node(port).kill();
    }

    /// Restarts the node on `port` from its `nodes.conf` (an old master rejoins as a replica).
    pub fn restart_node(&self, port: u16) {
        self.node(port).restart();
    }

    /// Polls until a former replica of `killed_master_port` reports `role:master` and every
    /// serving node reports `cluster_state:ok`. Returns the promoted port; panics after `timeout`.
    pub fn wait_for_promotion(&self, killed_master_port: u16, timeout: Duration) -> u16 {
        let candidates: Vec<u16> = lock(&self.replica_of)
            .iter()
            .filter(|(_, master)| **master == killed_master_port)
            .map(|(replica, _)| *replica)
            .collect();
        assert!(
            !candidates.is_empty(),
            "no known replica of {killed_master_port}: kill masters with ClusterGroup::kill_node"
        );
        let mut state = String::new();
        let promoted = poll_until(timeout, Duration::from_millis(50), || {
            let promoted = candidates.iter().copied().find(|p| {
                self.node(*p).is_serving()
                    && resp::info_field(*p, "replication", "role").as_deref() == Some("master")
            });
            let states: Vec<(u16, Option<String>)> = self
                .nodes
                .iter()
                .filter(|n| n.is_serving())
                .map(|n| {
                    (
                        n.port(),
                        resp::cmd(n.port(), &["CLUSTER", "INFO"])
                            .ok()
                            .and_then(|v| {
                                resp::parse_info(&v.to_display()).remove("cluster_state")
                            }),
                    )
                })
                .collect();
            state = format!("promoted: {promoted:?}, cluster_state per node: {states:?}");
            let all_ok = states.iter().all(|(_, s)| s.as_deref() == Some("ok"));
            promoted.filter(|_| all_ok)
        });
        let promoted = promoted.unwrap_or_else(|| {
            panic!(
                "no replica of {killed_master_port} was promoted within {timeout:?} ({state})\n{}",
                self.node(candidates[0]).log_tail()
            )
        });
        self.refresh_replica_map();
        promoted
    }

    /// Keys matching `pattern` on all serving masters, via `SCAN ... MATCH pattern COUNT 1000`
    /// (never KEYS). Sorted, deduplicated, lossy UTF-8.
    pub fn keys_on_all_masters(&self, pattern: &str) -> Vec<String> {
        let mut keys = BTreeSet::new();
        for port in self.master_ports() {
            let mut cursor = String::from("0");
            loop {
                let reply = resp::cmd(port, &["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])
                    .unwrap_or_else(|e| panic!("{e}"));
                match reply.as_array() {
                    Some([next, RespValue::Array(batch)]) => {
                        keys.extend(
                            batch
                                .iter()
                                .filter_map(|k| k.as_bytes().map(<[u8]>::to_vec)),
                        );
                        cursor = next.as_text().unwrap_or_default();
                    }
                    _ => panic!("SCAN on {port} answered {reply:?}"),
                }
                if cursor == "0" {
                    break;
                }
            }
        }
        keys.into_iter()
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }

    /// Waits until every serving master's replica holds every write made before the call (see
    /// [`RedisServer::wait_for_replicas`]), e.g. before killing a master. Panics after `timeout`.
    pub fn wait_for_replication(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for port in self.master_ports() {
            self.node(port)
                .wait_for_replicas(1, deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// Sum of `DBSIZE` over serving masters.
    pub fn dbsize_total(&self) -> u64 {
        self.master_ports()
            .into_iter()
            .map(|p| self.node(p).dbsize())
            .sum()
    }

    /// Runs a command through the cluster ([`resp::cluster_cmd`]) from the first serving node;
    /// panics on a transport error.
    pub fn cmd<A: AsRef<[u8]>>(&self, args: &[A]) -> RespValue {
        let seed = self
            .nodes
            .iter()
            .find(|n| n.is_serving())
            .map(RedisServer::port)
            .expect("no serving cluster node");
        resp::cluster_cmd(seed, args).unwrap_or_else(|e| panic!("{e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// FaultProxy.
// ---------------------------------------------------------------------------------------------

/// Behaviour of a [`FaultProxy`]; switchable at any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    Pass,
    /// Network partition: connections stay open and new ones are accepted, but nothing is
    /// forwarded either way. Bytes already read are held and delivered in order after the
    /// partition heals (like TCP retransmission); the upstream is not dialled until then.
    Blackhole,
    /// Every existing connection is closed with an RST, and new ones are reset immediately.
    Reset,
    /// Forward after adding this latency to each chunk, in both directions, preserving order.
    Delay(Duration),
}

/// A fault-injecting TCP proxy on `127.0.0.1:<free port>` forwarding to `127.0.0.1:target`.
///
/// It runs on its own OS thread with its own current-thread tokio runtime, so it works the same
/// under any test runtime flavour and keeps working while test code blocks. Dropping it stops the
/// runtime and closes every connection.
pub struct FaultProxy {
    port: u16,
    target_port: u16,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    live: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:target_port` in [`ProxyMode::Pass`].
    pub fn start(target_port: u16) -> FaultProxy {
        let listener =
            TcpListener::bind((LOCALHOST, 0)).expect("bind the fault proxy to 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("make the proxy listener non-blocking");
        let port = listener.local_addr().expect("proxy local_addr").port();
        reserve_port(port);
        let target = SocketAddr::from(([127, 0, 0, 1], target_port));
        let (mode, mode_rx) = tokio::sync::watch::channel(ProxyMode::Pass);
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let live = Arc::new(AtomicUsize::new(0));
        let live_in_thread = Arc::clone(&live);
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the fault proxy's tokio runtime");
                runtime.block_on(proxy_accept_loop(
                    listener,
                    target,
                    mode_rx,
                    shutdown_rx,
                    live_in_thread,
                ));
                // Dropping the runtime drops every connection task and so closes its sockets.
            })
            .expect("spawn the fault proxy thread");
        FaultProxy {
            port,
            target_port,
            mode,
            live,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn target_port(&self) -> u16 {
        self.target_port
    }

    /// `"127.0.0.1:PORT"` of the proxy.
    pub fn addr(&self) -> String {
        format!("{LOCALHOST}:{}", self.port)
    }

    /// `"redis://127.0.0.1:PORT"` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{LOCALHOST}:{}", self.port)
    }

    /// Client connections the proxy currently holds. A client that hangs up while the proxy is
    /// blackholed is only noticed once the partition heals (the proxy is not reading then).
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    pub fn pass(&self) {
        self.set_mode(ProxyMode::Pass);
    }

    pub fn blackhole(&self) {
        self.set_mode(ProxyMode::Blackhole);
    }

    pub fn delay(&self, latency: Duration) {
        self.set_mode(ProxyMode::Delay(latency));
    }

    /// Switches to [`ProxyMode::Reset`] and waits (5 s deadline) until every existing connection
    /// has been reset.
    pub fn reset(&self) {
        self.set_mode(ProxyMode::Reset);
        wait_until(
            scaled(Duration::from_secs(5)),
            "the fault proxy to reset its connections",
            || self.connections() == 0,
        );
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !thread::panicking() {
                panic!("the fault proxy thread panicked");
            }
        }
    }
}

/// Decrements the live-connection count when a connection task ends (or is dropped).
struct LiveConnection(Arc<AtomicUsize>);

impl LiveConnection {
    fn new(live: &Arc<AtomicUsize>) -> LiveConnection {
        live.fetch_add(1, Ordering::SeqCst);
        LiveConnection(Arc::clone(live))
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn proxy_accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: tokio::sync::watch::Receiver<ProxyMode>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
    live: Arc<AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::from_std(listener)
        .expect("register the proxy listener with tokio");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let guard = LiveConnection::new(&live);
                    tokio::spawn(proxy_connection(client, target, mode.clone(), guard));
                }
                // E.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// Makes the next close of `fd` send an RST instead of a FIN.
fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a valid `linger`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn abort_stream(stream: tokio::net::TcpStream) {
    set_linger_zero(stream.as_raw_fd());
    drop(stream);
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    target: SocketAddr,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
    _live: LiveConnection,
) {
    // During a partition the upstream is not even dialled; a reset refuses the connection.
    loop {
        let current = *mode.borrow_and_update();
        match current {
            ProxyMode::Reset => return abort_stream(client),
            ProxyMode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            ProxyMode::Pass | ProxyMode::Delay(_) => break,
        }
    }
    let mut client = client;
    let mut upstream = match tokio::net::TcpStream::connect(target).await {
        Ok(upstream) => upstream,
        // Like connecting to a dead port: the client sees a reset.
        Err(_) => return abort_stream(client),
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let must_reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let relay = async {
            tokio::try_join!(
                proxy_pump(&mut client_read, &mut upstream_write, mode.clone()),
                proxy_pump(&mut upstream_read, &mut client_write, mode.clone()),
            )
        };
        tokio::select! {
            result = relay => result.is_err(),
            _ = wait_for_mode(mode.clone(), |m| m == ProxyMode::Reset) => true,
        }
    };
    if must_reset {
        abort_stream(client);
        abort_stream(upstream);
    }
}

/// Resolves once `accept(mode)` holds; never resolves if the proxy is being dropped.
async fn wait_for_mode(
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
    accept: impl Fn(ProxyMode) -> bool,
) {
    loop {
        if accept(*mode.borrow_and_update()) {
            return;
        }
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Copies `reader` to `writer` honouring the mode: holds data while blackholed and delays each
/// chunk by the current latency (measured from when it was read, so order is kept and latency
/// does not accumulate). Propagates EOF as a FIN.
async fn proxy_pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    mode: tokio::sync::watch::Receiver<ProxyMode>,
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let not_blackholed = |m: ProxyMode| m != ProxyMode::Blackhole;
    let (chunks_tx, mut chunks_rx) =
        tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(64);
    let read_mode = mode.clone();
    let read_side = async move {
        loop {
            wait_for_mode(read_mode.clone(), not_blackholed).await;
            let mut buf = vec![0u8; 16 * 1024];
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            buf.truncate(n);
            let latency = match *read_mode.borrow() {
                ProxyMode::Delay(latency) => latency,
                _ => Duration::ZERO,
            };
            if chunks_tx
                .send((tokio::time::Instant::now() + latency, buf))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write_side = async {
        while let Some((due, chunk)) = chunks_rx.recv().await {
            tokio::time::sleep_until(due).await;
            wait_for_mode(mode.clone(), not_blackholed).await;
            writer.write_all(&chunk).await?;
        }
        wait_for_mode(mode.clone(), not_blackholed).await;
        let _ = writer.shutdown().await;
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(read_side, write_side).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Deployment-agnostic scenarios.
// ---------------------------------------------------------------------------------------------

/// [`topology::Topology`]: one interface over standalone, Sentinel and Cluster.
pub mod topology;

// ---------------------------------------------------------------------------------------------
// SLOWLOG: how long single commands held a server.
// ---------------------------------------------------------------------------------------------

/// One SLOWLOG entry: a command and how long it ran on the server (its execution only, not
/// the I/O around it, i.e. how long it kept every other client of that server waiting).
#[derive(Clone, Debug)]
pub struct SlowCommand {
    pub port: u16,
    pub micros: u64,
    /// How many arguments the command had, its name included.
    pub args: usize,
    /// The command and its first arguments, as the server logged them.
    pub command: String,
}

/// From now on, each server in `ports` logs every command that runs `threshold_us` or longer,
/// keeping the last `max_len`: sets `slowlog-log-slower-than` and `slowlog-max-len`, then
/// empties the log.
pub fn slowlog_start(ports: &[u16], threshold_us: u64, max_len: u64) {
    for &port in ports {
        for args in [
            vec![
                "CONFIG".to_owned(),
                "SET".to_owned(),
                "slowlog-log-slower-than".to_owned(),
                threshold_us.to_string(),
            ],
            vec![
                "CONFIG".to_owned(),
                "SET".to_owned(),
                "slowlog-max-len".to_owned(),
                max_len.to_string(),
            ],
            vec!["SLOWLOG".to_owned(), "RESET".to_owned()],
        ] {
            let reply = resp::cmd(port, &args).unwrap_or_else(|e| panic!("{e}"));
            assert!(reply.is_ok(), "{args:?} on {port} answered {reply:?}");
        }
    }
}

/// The commands the servers in `ports` logged since [`slowlog_start`], leaving out the
/// harness's own CONFIG and SLOWLOG calls.
pub fn slowlog_entries(ports: &[u16]) -> Vec<SlowCommand> {
    let mut entries = Vec::new();
    for &port in ports {
        let len = resp::cmd(port, &["SLOWLOG", "LEN"])
            .ok()
            .and_then(|r| r.as_int())
            .unwrap_or_else(|| panic!("SLOWLOG LEN on {port} failed"));
        let reply = resp::cmd_timeout(
            port,
            &["SLOWLOG", "GET", &len.max(1).to_string()],
            scaled(Duration::from_secs(30)),
        )
        .unwrap_or_else(|e| panic!("SLOWLOG GET on {port}: {e}"));
        for entry in reply.as_array().unwrap_or(&[]) {
            // id, timestamp, microseconds, [command, args...], client address, client name
            let fields = entry.as_array().unwrap_or(&[]);
            let (Some(micros), Some(args)) = (
                fields.get(2).and_then(RespValue::as_int),
                fields.get(3).and_then(RespValue::as_array),
            ) else {
                panic!("unexpected SLOWLOG entry on {port}: {entry:?}");
            };
            // The log keeps 32 arguments at most, the last one then saying
            // "... (N more arguments)".
            let more = args.last().and_then(RespValue::as_text).and_then(|t| {
                t.strip_prefix("... (")?
                    .strip_suffix(" more arguments)")?
                    .parse::<usize>()
                    .ok()
            });
            let count = match more {
                Some(more) => args.len() - 1 + more,
                None => args.len(),
            };
            let command: Vec<String> = args.iter().take(4).filter_map(|a| a.as_text()).collect();
            let name = command.first().map(|c| c.to_ascii_uppercase());
            if matches!(name.as_deref(), Some("CONFIG" | "SLOWLOG")) {
                continue;
            }
            entries.push(SlowCommand {
                port,
                micros: u64::try_from(micros).unwrap_or(0),
                args: count,
                command: command.join(" "),
            });
        }
    }
    entries
}

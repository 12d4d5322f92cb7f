//! [`RedisServer`]: one `redis-server` process (a standalone server, a group's data node or a
//! sentinel), and what a master reports about its replicas.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::child::{file_len, read_from, spawn, tail_of_file, ChildProcess};
use super::resp::{self, RespValue};
use super::{
    find_binary, free_cluster_port, free_port, lock, poll_until, redis_server_bin, reserve_port,
    scaled, wait_until, TempDir, LOCALHOST, REDIS_SERVER_ENV, SENTINEL_MASTER_NAME,
};

/// Deadline for one server to answer PING after spawn.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports a first start tries when the port is stolen by another process.
const PORT_ATTEMPTS: usize = 8;
/// Lines of log shown in startup/deadline panics.
const LOG_TAIL_LINES: usize = 40;

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
    pub(super) save: bool,
    pub(super) cluster: bool,
    pub(super) args: Vec<String>,
    pub(super) binary: Option<String>,
    pub(super) preferred_port: Option<u16>,
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

    pub(super) fn start_sentinel(master_port: u16) -> RedisServer {
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
    /// Whether `key` holds a cache entry: present, and not the short tombstone a key
    /// invalidation leaves in an entry's place (`SC`, version 0, 8 bytes).
    pub fn holds_entry(&self, key: &str) -> bool {
        match self.cmd(&["GET", key]).as_bytes() {
            Some(bytes) => !(bytes.len() == 11 && bytes.starts_with(b"SC\0")),
            None => false,
        }
    }

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

/// Number of replicas a master lists as online with an acknowledged offset of at least `offset`.
pub(super) fn replicas_at_offset(master_port: u16, offset: u64) -> usize {
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
pub(super) fn replica_lines(
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
pub(super) fn online_replica_count(master_port: u16) -> usize {
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

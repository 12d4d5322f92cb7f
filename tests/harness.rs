//! Tests of the shared integration-test harness in `tests/support`: each helper is exercised
//! against real `redis-server` processes, so the other integration tests can rely on it.

mod support;

use std::collections::HashSet;
use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::resp::{self, RespValue};
use support::{
    free_cluster_port, free_port, scaled, wait_until, ClusterGroup, FaultProxy, ProxyMode,
    RedisServer, SentinelGroup, TempDir, INSTALL_HINT,
};

const MISSING_SERVER_MESSAGE: &str =
    "redis-server not found on PATH: install it with `apt-get install redis-server redis-tools` (Debian/Ubuntu)";

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "<non-string panic payload>".to_owned())
}

/// True if a process with this pid exists (a reaped child no longer does).
fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

// ---------------------------------------------------------------------------------------------
// Ports, binaries, RESP parsing.
// ---------------------------------------------------------------------------------------------

#[test]
fn free_ports_are_unique_and_cluster_ports_have_a_bus_port() {
    let mut seen = HashSet::new();
    for _ in 0..50 {
        assert!(
            seen.insert(free_port()),
            "free_port handed out a port twice"
        );
    }
    for _ in 0..20 {
        let port = free_cluster_port();
        assert!(port <= 55_535, "cluster port {port} has no valid bus port");
        assert!(
            seen.insert(port),
            "free_cluster_port handed out a port twice"
        );
        assert!(
            !seen.contains(&(port + 10_000)),
            "a bus port was handed out as a port"
        );
    }
}

#[test]
fn missing_server_binary_panics_with_install_hint() {
    let result = panic::catch_unwind(|| {
        RedisServer::builder()
            .server_binary("stormcache-no-such-redis-server")
            .start()
    });
    let message = panic_message(result.expect_err("starting a missing binary must panic"));
    assert!(
        message.starts_with(MISSING_SERVER_MESSAGE),
        "unexpected panic message: {message}"
    );
    assert!(
        message.contains("stormcache-no-such-redis-server"),
        "message should name the binary: {message}"
    );

    let result =
        panic::catch_unwind(|| support::find_binary("redis-cli", "/nonexistent/redis-cli", "X"));
    let message = panic_message(result.expect_err("a missing redis-cli must panic"));
    assert!(
        message.starts_with(&format!("redis-cli not found on PATH: {INSTALL_HINT}")),
        "{message}"
    );
}

/// Env var marking the child process spawned by the test below.
const CHILD_MARKER_ENV: &str = "STORMCACHE_HARNESS_CHILD";

/// Checks the env-var path end to end without mutating this process's environment: the test
/// re-runs itself in a child process with `STORMCACHE_REDIS_SERVER` set to a bogus name; there
/// (marker set) it just starts a server, which must fail with the install hint.
#[test]
fn missing_server_binary_via_env_var_panics_with_install_hint() {
    const NAME: &str = "missing_server_binary_via_env_var_panics_with_install_hint";
    if std::env::var(CHILD_MARKER_ENV).as_deref() == Ok("1") {
        let _server = RedisServer::start();
        return;
    }
    let exe = std::env::current_exe().expect("current test executable");
    let output = Command::new(exe)
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(support::REDIS_SERVER_ENV, "stormcache-bogus-redis-server")
        .env(CHILD_MARKER_ENV, "1")
        .output()
        .expect("run the test binary as a child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("running 1 test"),
        "child did not run the test:\n{text}"
    );
    assert!(
        !output.status.success(),
        "child should have failed:\n{text}"
    );
    assert!(
        text.contains(MISSING_SERVER_MESSAGE),
        "child output lacks the install hint:\n{text}"
    );
    assert!(
        text.contains("stormcache-bogus-redis-server"),
        "child output lacks the binary name:\n{text}"
    );
}

#[test]
fn resp_parser_handles_every_reply_type() {
    let wire = b"*7\r\n+OK\r\n-ERR bad\r\n:-42\r\n$5\r\na\r\n\x00\xff\r\n$-1\r\n*-1\r\n*2\r\n*1\r\n$0\r\n\r\n:1\r\n";
    let value = resp::read_value(&mut Cursor::new(&wire[..])).expect("valid RESP");
    assert_eq!(
        value,
        RespValue::Array(vec![
            RespValue::Simple("OK".into()),
            RespValue::Error("ERR bad".into()),
            RespValue::Int(-42),
            RespValue::Bulk(b"a\r\n\x00\xff".to_vec()),
            RespValue::Nil,
            RespValue::Nil,
            RespValue::Array(vec![
                RespValue::Array(vec![RespValue::Bulk(Vec::new())]),
                RespValue::Int(1)
            ]),
        ])
    );
    assert!(
        resp::read_value(&mut Cursor::new(&b"$3\r\nab"[..])).is_err(),
        "truncated bulk"
    );
    assert!(
        resp::read_value(&mut Cursor::new(&b""[..])).is_err(),
        "empty input"
    );
    assert_eq!(
        resp::encode(&["GET", "k"]),
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
    );
}

// ---------------------------------------------------------------------------------------------
// Standalone server.
// ---------------------------------------------------------------------------------------------

#[test]
fn standalone_set_get_kill_and_restart_from_old_rdb() {
    let server = RedisServer::start();
    assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    let garbage: Vec<u8> = (0..=255u8).rev().chain([0, b'\r', b'\n', 0]).collect();

    assert!(server.cmd(&["SET", "k", "old"]).is_ok());
    assert!(server.cmd(&[b"SET".as_slice(), b"bin", &garbage]).is_ok());
    assert_eq!(resp::cmd_str(server.port(), &["GET", "k"]), "old");
    assert_eq!(
        server.cmd(&["GET", "bin"]),
        RespValue::Bulk(garbage.clone())
    );
    server.bgsave_and_wait();
    let snapshots = TempDir::new("snapshots");
    let snapshot: PathBuf = snapshots.path().join("old.rdb");
    server.copy_rdb(&snapshot);

    assert!(server.cmd(&["SET", "k", "new"]).is_ok());
    assert!(server.cmd(&["SET", "extra", "1"]).is_ok());
    assert_eq!(server.dbsize(), 3);

    let old_pid = server.pid();
    server.kill();
    assert!(!server.is_running());
    assert!(
        !process_exists(old_pid),
        "killed server pid {old_pid} still exists"
    );
    assert!(resp::cmd_timeout(server.port(), &["PING"], Duration::from_millis(500)).is_err());

    server.restart_from_rdb(&snapshot);
    assert_ne!(server.pid(), old_pid);
    assert_eq!(resp::cmd_str(server.port(), &["GET", "k"]), "old");
    assert_eq!(server.cmd(&["GET", "bin"]), RespValue::Bulk(garbage));
    assert!(server.cmd(&["GET", "extra"]).is_nil());
    assert_eq!(server.dbsize(), 2);

    // Plain restart without a save in between: same snapshot again.
    assert!(server.cmd(&["SET", "k", "lost"]).is_ok());
    server.restart();
    assert_eq!(resp::cmd_str(server.port(), &["GET", "k"]), "old");
}

#[test]
fn a_taken_port_is_replaced_by_a_fresh_one() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a squatter");
    let taken = squatter.local_addr().expect("squatter addr").port();
    let server = RedisServer::builder().preferred_port(taken).start();
    assert_ne!(server.port(), taken);
    assert_eq!(resp::cmd_str(server.port(), &["PING"]), "PONG");
    let log = std::fs::read_to_string(server.log_path()).expect("read redis.log");
    assert!(
        log.contains("already in use"),
        "first attempt should have hit the squatter:\n{log}"
    );

    drop(squatter);
    let free = free_port();
    let server = RedisServer::builder().preferred_port(free).start();
    assert_eq!(server.port(), free);
}

#[test]
fn builder_options_reach_the_server() {
    let server = RedisServer::builder()
        .save(true)
        .args(["--maxmemory", "7mb"])
        .start();
    assert_eq!(
        resp::cmd_str(server.port(), &["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n7340032"
    );
    assert_ne!(
        resp::cmd_str(server.port(), &["CONFIG", "GET", "save"]),
        "save\n"
    );
    assert_eq!(
        resp::cmd_str(server.port(), &["CONFIG", "GET", "appendonly"]),
        "appendonly\nno"
    );
    let default = RedisServer::start();
    assert_eq!(
        resp::cmd_str(default.port(), &["CONFIG", "GET", "save"]),
        "save\n"
    );
    assert_eq!(
        default.info_field("server", "tcp_port"),
        Some(default.port().to_string())
    );
}

#[test]
fn freeze_and_resume() {
    let server = RedisServer::start();
    server.freeze();
    assert!(server.is_frozen() && server.is_running());
    let started = Instant::now();
    let frozen = resp::cmd_timeout(server.port(), &["PING"], Duration::from_millis(300));
    assert!(frozen.is_err(), "a frozen server answered: {frozen:?}");
    assert!(frozen.unwrap_err().contains("timed out"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.resume();
    assert_eq!(resp::cmd_str(server.port(), &["PING"]), "PONG");
}

#[test]
fn drop_kills_the_process_and_removes_the_dir_even_on_panic() {
    let server = RedisServer::start();
    let (pid, dir) = (server.pid(), server.dir().to_path_buf());
    server.freeze(); // SIGKILL must work on a stopped process too
    drop(server);
    assert!(!process_exists(pid), "pid {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());

    let mut seen = None;
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let server = RedisServer::start();
        seen = Some((server.pid(), server.dir().to_path_buf()));
        panic!("simulated test failure");
    }));
    assert!(result.is_err());
    let (pid, dir) = seen.expect("server started before the panic");
    assert!(!process_exists(pid), "pid {pid} survived a panicking test");
    assert!(!dir.exists(), "{} survived a panicking test", dir.display());
}

// ---------------------------------------------------------------------------------------------
// Sentinel.
// ---------------------------------------------------------------------------------------------

#[test]
fn sentinel_failover_after_master_kill_keeps_replicated_data() {
    let started = Instant::now();
    let group = SentinelGroup::start();
    eprintln!("sentinel group ready in {:?}", started.elapsed());
    let s = group.sentinel_ports();
    assert_eq!(
        group.url(),
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=mymaster&node=127.0.0.1:{}&node=127.0.0.1:{}",
            s[0], s[1], s[2]
        )
    );
    assert!(group
        .url_db(3)
        .starts_with(&format!("redis-sentinel://127.0.0.1:{}/3?", s[0])));

    let master = group.current_master_port();
    assert_eq!(master, group.data_ports()[0]);
    // WAIT covers the writes of its own connection only, so SET and WAIT share one.
    let mut conn = resp::Conn::connect(master).expect("connect to the master");
    assert!(conn
        .cmd(&["SET", "survives", "failover"])
        .expect("SET")
        .is_ok());
    let acked = conn.cmd(&["WAIT", "2", "2000"]).expect("WAIT").as_int();
    assert_eq!(acked, Some(2), "both replicas should acknowledge the write");
    assert!(resp::cmd(master, &["SET", "also", "replicated"])
        .expect("SET")
        .is_ok());
    group.wait_for_replicas(2, scaled(Duration::from_secs(5)));

    let killed_at = Instant::now();
    let old = group.kill_master();
    assert_eq!(old, master);
    let new = group.wait_for_new_master(old, scaled(Duration::from_secs(30)));
    eprintln!(
        "sentinel failover after SIGKILL took {:?}",
        killed_at.elapsed()
    );
    assert_ne!(new, old);
    assert_eq!(
        group
            .server_by_port(new)
            .info_field("replication", "role")
            .as_deref(),
        Some("master")
    );
    assert_eq!(resp::cmd_str(new, &["GET", "survives"]), "failover");
    assert_eq!(resp::cmd_str(new, &["GET", "also"]), "replicated");
    assert!(resp::cmd(new, &["SET", "after", "1"]).expect("SET").is_ok());

    let repointed = Instant::now();
    group.wait_for_replicas(1, scaled(Duration::from_secs(20)));
    eprintln!(
        "remaining replica re-linked {:?} after the switch",
        repointed.elapsed()
    );

    let rejoined = Instant::now();
    group.restart_node(old);
    group.wait_for_replicas(2, scaled(Duration::from_secs(30)));
    assert_eq!(
        resp::cmd_str(old, &["GET", "after"]),
        "1",
        "the old master resynced from the new one"
    );
    eprintln!(
        "restarted old master rejoined as replica in {:?}",
        rejoined.elapsed()
    );
    assert_eq!(
        group
            .server_by_port(old)
            .info_field("replication", "role")
            .as_deref(),
        Some("slave")
    );
}

#[test]
fn sentinel_manual_failover() {
    let group = SentinelGroup::start();
    let old = group.current_master_port();
    let started = Instant::now();
    let new = group.failover();
    eprintln!("manual sentinel failover took {:?}", started.elapsed());
    assert_ne!(new, old);
    assert_eq!(group.current_master_port(), new);
    assert!(resp::cmd(new, &["SET", "k", "v"]).expect("SET").is_ok());
    let demoted = Instant::now();
    wait_until(
        scaled(Duration::from_secs(30)),
        "the old master to replicate from the new one",
        || {
            let old_node = group.server_by_port(old);
            old_node.info_field("replication", "master_port") == Some(new.to_string())
                && old_node
                    .info_field("replication", "master_link_status")
                    .as_deref()
                    == Some("up")
        },
    );
    eprintln!(
        "old master linked to the new one {:?} after the switch",
        demoted.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Cluster.
// ---------------------------------------------------------------------------------------------

#[test]
fn cluster_writes_scan_and_promotion() {
    let started = Instant::now();
    let cluster = ClusterGroup::start();
    eprintln!("cluster ready in {:?}", started.elapsed());
    let p = cluster.ports();
    assert_eq!(p.len(), 6);
    assert_eq!(
        cluster.url(),
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            p[0], p[1], p[2]
        )
    );
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3);
    assert_eq!(cluster.replica_ports().len(), 3);

    for i in 0..200 {
        let reply = cluster.cmd(&["SET", &format!("harness:{i}"), &format!("v{i}")]);
        assert!(reply.is_ok(), "SET harness:{i}: {reply:?}");
    }
    assert!(cluster.cmd(&["SET", "other", "x"]).is_ok());
    assert_eq!(cluster.keys_on_all_masters("harness:*").len(), 200);
    assert_eq!(cluster.dbsize_total(), 201);
    for &master in &masters {
        assert!(
            cluster.node(master).dbsize() > 0,
            "master {master} holds no keys"
        );
    }
    cluster.wait_for_replication(scaled(Duration::from_secs(5)));

    let victim = masters[0];
    let killed_at = Instant::now();
    cluster.kill_node(victim);
    let promoted = cluster.wait_for_promotion(victim, scaled(Duration::from_secs(30)));
    eprintln!(
        "cluster promotion after SIGKILL took {:?}",
        killed_at.elapsed()
    );
    assert!(!cluster.master_ports().contains(&victim));
    assert!(cluster.master_ports().contains(&promoted));
    let per_node: Vec<String> = cluster
        .ports()
        .into_iter()
        .filter(|&p| cluster.node(p).is_serving())
        .map(|p| {
            let n = cluster.node(p);
            format!(
                "{p}: role={:?} dbsize={} ",
                n.info_field("replication", "role"),
                n.dbsize()
            )
        })
        .collect();
    assert_eq!(
        cluster.keys_on_all_masters("harness:*").len(),
        200,
        "masters {:?}, promoted {promoted}, nodes {per_node:?}\n{}",
        cluster.master_ports(),
        resp::cmd_str(promoted, &["CLUSTER", "NODES"])
    );
    assert_eq!(
        cluster.cmd(&["GET", "harness:7"]).as_text().as_deref(),
        Some("v7")
    );

    let rejoined = Instant::now();
    cluster.restart_node(victim);
    wait_until(
        scaled(Duration::from_secs(20)),
        "the old master to rejoin as a replica",
        || {
            cluster
                .node(victim)
                .info_field("replication", "master_link_status")
                .as_deref()
                == Some("up")
        },
    );
    eprintln!(
        "old cluster master rejoined as replica in {:?}",
        rejoined.elapsed()
    );
    assert_eq!(cluster.master_ports().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Fault proxy.
// ---------------------------------------------------------------------------------------------

fn ping_through(port: u16, timeout: Duration) -> Result<RespValue, String> {
    resp::cmd_timeout(port, &["PING"], timeout)
}

#[test]
fn proxy_modes_against_real_redis() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}", proxy.port()));
    assert_eq!(proxy.addr(), format!("127.0.0.1:{}", proxy.port()));
    let short = Duration::from_millis(300);

    // Pass.
    let mut held = resp::Conn::connect(proxy.port()).expect("connect through the proxy");
    assert_eq!(held.cmd(&["PING"]), Ok(RespValue::Simple("PONG".into())));
    wait_until(Duration::from_secs(2), "one live proxy connection", || {
        proxy.connections() == 1
    });

    // Blackhole: existing and new connections time out; nothing reaches the server.
    proxy.blackhole();
    assert_eq!(proxy.mode(), ProxyMode::Blackhole);
    held.set_timeout(short).expect("set timeout");
    let err = held
        .cmd(&["SET", "during-partition", "1"])
        .expect_err("blackholed reply");
    assert!(err.contains("timed out"), "{err}");
    let err = ping_through(proxy.port(), short).expect_err("new connection during blackhole");
    assert!(err.contains("timed out"), "{err}");
    assert!(
        server.cmd(&["GET", "during-partition"]).is_nil(),
        "a blackholed write reached the server"
    );

    // Healing delivers what was held, in order; new connections work again.
    proxy.pass();
    assert_eq!(
        ping_through(proxy.port(), short),
        Ok(RespValue::Simple("PONG".into()))
    );
    wait_until(
        Duration::from_secs(2),
        "the held write to be delivered",
        || {
            server
                .cmd(&["GET", "during-partition"])
                .as_text()
                .as_deref()
                == Some("1")
        },
    );

    // Delay: every round trip pays the latency in both directions.
    let latency = Duration::from_millis(100);
    proxy.delay(latency);
    let mut slow = resp::Conn::connect(proxy.port()).expect("connect through the proxy");
    for _ in 0..3 {
        let sent = Instant::now();
        assert_eq!(slow.cmd(&["PING"]), Ok(RespValue::Simple("PONG".into())));
        let rtt = sent.elapsed();
        assert!(
            rtt >= 2 * latency,
            "round trip {rtt:?} shorter than 2 x {latency:?}"
        );
    }
    let payload = vec![b'x'; 256 * 1024];
    assert!(slow
        .cmd(&[b"SET".as_slice(), b"big", &payload])
        .expect("big SET")
        .is_ok());
    assert_eq!(slow.cmd(&["GET", "big"]), Ok(RespValue::Bulk(payload)));

    // Reset: live connections die with an error, new ones are refused with a reset.
    wait_until(Duration::from_secs(2), "the live proxy connections", || {
        proxy.connections() >= 2
    });
    proxy.reset();
    assert_eq!(proxy.connections(), 0);
    let err = slow.cmd(&["PING"]).expect_err("reset connection");
    assert!(!err.contains("timed out"), "reset should fail fast: {err}");
    let err = ping_through(proxy.port(), short).expect_err("new connection during reset");
    assert!(!err.contains("timed out"), "reset should fail fast: {err}");

    // Back to pass.
    proxy.pass();
    assert_eq!(
        ping_through(proxy.port(), short),
        Ok(RespValue::Simple("PONG".into()))
    );

    // Drop closes the listener.
    let port = proxy.port();
    drop(proxy);
    assert!(
        ping_through(port, short).is_err(),
        "proxy still answering after drop"
    );
}

#[test]
fn proxy_resets_clients_when_upstream_is_down() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    assert_eq!(
        ping_through(proxy.port(), Duration::from_secs(1)),
        Ok(RespValue::Simple("PONG".into()))
    );
    server.kill();
    let err = ping_through(proxy.port(), Duration::from_secs(1)).expect_err("upstream is down");
    assert!(!err.contains("timed out"), "{err}");
    server.restart();
    assert_eq!(
        ping_through(proxy.port(), Duration::from_secs(1)),
        Ok(RespValue::Simple("PONG".into()))
    );
}

/// The proxy has its own runtime thread: it serves an async client on a current-thread test
/// runtime, even while the test blocks that runtime's only thread.
#[tokio::test(flavor = "current_thread")]
async fn proxy_works_under_a_current_thread_runtime() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let mut stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buf))
        .await
        .expect("reply within 2 s")
        .expect("read");
    assert_eq!(&buf, b"+PONG\r\n");
    // Blocking synchronous client on this runtime's thread: the proxy still answers.
    proxy.delay(Duration::from_millis(20));
    assert_eq!(
        ping_through(proxy.port(), Duration::from_secs(2)),
        Ok(RespValue::Simple("PONG".into()))
    );
}

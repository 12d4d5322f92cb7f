//! [`ClusterGroup`]: a 6-node Redis Cluster (3 masters, 3 replicas).

use std::collections::HashMap;
use std::fs;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::child::{spawn, ChildProcess};
use super::redis_server::{online_replica_count, RedisServer, RedisServerBuilder};
use super::resp::{self, RespValue};
use super::{lock, poll_until, redis_cli_bin, scaled, LOCALHOST};

/// Deadline for a whole cluster to be created and settled.
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(30);

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
        resp::scan_keys(&self.master_ports(), pattern)
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

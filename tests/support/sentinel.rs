//! [`SentinelGroup`]: 1 master + 2 replicas + 3 sentinels, ready for a failover.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::redis_server::{online_replica_count, replicas_at_offset, RedisServer};
use super::resp::{self, RespValue};
use super::{poll_until, scaled, LOCALHOST, SENTINEL_MASTER_NAME};

/// Deadline for a whole Sentinel group to be ready for a failover.
const SENTINEL_START_TIMEOUT: Duration = Duration::from_secs(20);

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

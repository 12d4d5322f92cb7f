//! One interface over the three deployments, so a scenario is written once and run on each.

use std::collections::BTreeSet;

use super::resp::{self, RespValue};
use super::{ClusterGroup, RedisServer, SentinelGroup};

/// A running Redis deployment of one of the three kinds.
pub enum Topology {
    Standalone(RedisServer),
    Sentinel(SentinelGroup),
    Cluster(ClusterGroup),
}

impl Topology {
    pub fn standalone() -> Self {
        Topology::Standalone(RedisServer::start())
    }

    pub fn sentinel() -> Self {
        Topology::Sentinel(SentinelGroup::start())
    }

    pub fn cluster() -> Self {
        Topology::Cluster(ClusterGroup::start())
    }

    /// The URL stormcache is given (fred's forms).
    pub fn url(&self) -> String {
        match self {
            Topology::Standalone(s) => s.url(),
            Topology::Sentinel(g) => g.url(),
            Topology::Cluster(c) => c.url(),
        }
    }

    /// Runs a command on the master that owns it; panics on a transport error.
    pub fn cmd(&self, args: &[&str]) -> RespValue {
        match self {
            Topology::Standalone(s) => s.cmd(args),
            Topology::Sentinel(g) => g.master().cmd(args),
            Topology::Cluster(c) => c.cmd(args),
        }
    }

    /// Ports of the masters.
    pub fn master_ports(&self) -> Vec<u16> {
        match self {
            Topology::Standalone(s) => vec![s.port()],
            Topology::Sentinel(g) => vec![g.current_master_port()],
            Topology::Cluster(c) => c.master_ports(),
        }
    }

    /// Keys matching `pattern` on every master, by SCAN (never KEYS); sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = BTreeSet::new();
        for port in self.master_ports() {
            let mut cursor = String::from("0");
            loop {
                let reply = resp::cmd(port, &["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])
                    .unwrap_or_else(|e| panic!("SCAN on {port}: {e}"));
                match reply.as_array() {
                    Some([next, RespValue::Array(batch)]) => {
                        keys.extend(batch.iter().filter_map(|k| {
                            k.as_bytes()
                                .map(|b| String::from_utf8_lossy(b).into_owned())
                        }));
                        cursor = next.as_text().unwrap_or_default();
                    }
                    _ => panic!("SCAN on {port} answered {reply:?}"),
                }
                if cursor == "0" {
                    break;
                }
            }
        }
        keys.into_iter().collect()
    }
}

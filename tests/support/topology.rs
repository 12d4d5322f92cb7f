//! One interface over the three deployments, so a scenario is written once and run on each.

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
        resp::scan_keys(&self.master_ports(), pattern)
    }
}

/// Defines one `#[tokio::test]` per deployment named, each running the async fn `$scenarios`
/// on a fresh deployment of that kind: `topology_tests!(all_scenarios: standalone, cluster);`
/// defines tests `standalone` and `cluster`, which run
/// `all_scenarios(Topology::standalone()).await` and `all_scenarios(Topology::cluster()).await`.
#[allow(unused_macros)]
macro_rules! topology_tests {
    ($scenarios:ident: $($kind:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $kind() {
                $scenarios($crate::support::topology::Topology::$kind()).await;
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use topology_tests;

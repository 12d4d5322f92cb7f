//! Server-assisted client-side caching ("client tracking") in broadcast mode, on a
//! connection of its own (feature `client-tracking`).
//!
//! `CLIENT TRACKING ON BCAST PREFIX p …` makes Redis report, on the connection that sent it,
//! every key under the prefixes that changes — whoever changed it, and keys that expire or
//! are evicted. It needs RESP3 (the reports are push frames on the same connection), so the
//! tracker is a client of its own: the store stays on RESP2.
//!
//! Tracking is per connection and per server, and fred 10.1 does not keep it:
//! - after a reconnect the server has forgotten it, and fred does not re-enable it;
//! - on a Cluster, fred's `start_tracking` in broadcast mode sends the command to a single
//!   node, but every master must report the keys it serves.
//!
//! So the tracker arms every master itself, and [`Tracker::ensure_armed`] asks each one
//! (`CLIENT TRACKINGINFO`) whether its connection still tracks, arming the ones that do not:
//! the owner runs it after every reconnect and periodically, which also proves the
//! connections alive. A FLUSHALL/FLUSHDB is reported with an empty payload, which fred
//! drops: it is not seen here.

use std::collections::HashMap;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientInterface, ClusterInterface, TrackingInterface};
use fred::prelude::{ClientLike, Config, EventInterface};
use fred::types::client::Invalidation;
use fred::types::config::Server;
use fred::types::{RespVersion, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::pubsub::channel_builder;
use super::RedisSettings;
use crate::error::Error;

/// What happened on the tracking connections.
#[derive(Debug)]
pub(crate) enum TrackerEvent {
    /// These keys changed (full Redis keys; those that are not UTF-8 are left out).
    Keys(Vec<String>),
    /// This many reports were lost to a slow reader.
    Lagged(u64),
    /// A connection was (re)established: its server no longer tracks it.
    Reconnected,
    /// A connection failed.
    Failed,
    /// The client is gone.
    Closed,
}

/// What [`Tracker::ensure_armed`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Armed {
    /// Every master already tracked this client's connection: nothing was missed since the
    /// last check.
    Already,
    /// At least one master was not tracking it (a new or replaced connection) and now is:
    /// changes made before were not reported.
    Now,
}

/// Reports fred keeps for a reader that is behind (a burst of writes to many keys).
const REPORT_BUFFER: usize = 4096;

/// The tracking client.
pub(crate) struct Tracker {
    client: Client,
    prefixes: Vec<String>,
    reports: Receiver<Invalidation>,
    reconnects: Receiver<Server>,
    errors: Receiver<(fred::error::Error, Option<Server>)>,
}

impl Tracker {
    /// Builds the client (RESP3) and starts connecting in the background; `prefixes` are
    /// the key prefixes to track.
    pub(crate) fn connect(settings: &RedisSettings, prefixes: Vec<String>) -> Result<Self, Error> {
        let mut config = Config::from_url(&settings.url)?;
        config.version = RespVersion::RESP3;
        // fred's default of 32 is outrun by a burst of writes; what overflows is a gap.
        let client = channel_builder(settings, config, REPORT_BUFFER).build()?;
        let reports = client.invalidation_rx();
        let reconnects = client.reconnect_rx();
        let errors = client.error_rx();
        // Runs the connections (and their reconnections) for the client's life.
        let _connection = client.connect();
        Ok(Tracker {
            client,
            prefixes,
            reports,
            reconnects,
            errors,
        })
    }

    /// The next event on the connections.
    pub(crate) async fn next_event(&mut self) -> TrackerEvent {
        loop {
            tokio::select! {
                report = self.reports.recv() => match report {
                    Ok(report) => {
                        let keys: Vec<String> = report
                            .keys
                            .into_iter()
                            .filter_map(|k| k.into_string())
                            .collect();
                        if keys.is_empty() {
                            continue;
                        }
                        return TrackerEvent::Keys(keys);
                    }
                    Err(RecvError::Lagged(n)) => return TrackerEvent::Lagged(n),
                    Err(RecvError::Closed) => return TrackerEvent::Closed,
                },
                event = self.reconnects.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => return TrackerEvent::Reconnected,
                    Err(RecvError::Closed) => return TrackerEvent::Closed,
                },
                event = self.errors.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => return TrackerEvent::Failed,
                    Err(RecvError::Closed) => return TrackerEvent::Closed,
                },
            }
        }
    }

    /// Makes sure every master tracks this client's connection to it, in broadcast mode
    /// over the prefixes; each step within `deadline`. `Err` if a master could not be asked
    /// or armed (on a Cluster, also while the routing table is not known yet).
    pub(crate) async fn ensure_armed(&self, deadline: Duration) -> Result<Armed, Error> {
        let mut armed = Armed::Already;
        if self.client.is_clustered() {
            let Some(routing) = self.client.cached_cluster_state() else {
                return Err(Error::redis(
                    crate::error::RedisErrorKind::Other,
                    "the cluster's routing table is not known yet".to_owned(),
                ));
            };
            for server in routing.unique_primary_nodes() {
                let node = self.client.with_cluster_node(server);
                if self.arm_if_needed(&node, deadline).await? == Armed::Now {
                    armed = Armed::Now;
                }
            }
        } else {
            armed = self.arm_if_needed(&self.client, deadline).await?;
        }
        Ok(armed)
    }

    async fn arm_if_needed<C: ClientInterface + Sync>(
        &self,
        node: &C,
        deadline: Duration,
    ) -> Result<Armed, Error> {
        let info = within(deadline, node.client_trackinginfo::<Value>()).await?;
        if tracking_is_on(info) {
            return Ok(Armed::Already);
        }
        let prefixes = self.prefixes.clone();
        within(
            deadline,
            node.client_tracking::<(), _, _>("on", None, prefixes, true, false, false, false),
        )
        .await?;
        Ok(Armed::Now)
    }

    /// Drops the connections and makes new ones (on Sentinel, asking for the master again).
    pub(crate) async fn force_reconnection(&self, deadline: Duration) {
        let _ = tokio::time::timeout(deadline, self.client.force_reconnection()).await;
    }

    /// Closes the connections.
    pub(crate) async fn quit(self) {
        let _ = self.client.quit().await;
    }
}

/// Runs `fut` within `deadline`.
async fn within<T>(
    deadline: Duration,
    fut: impl std::future::Future<Output = Result<T, fred::error::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(result) => result.map_err(Error::from),
        Err(_) => Err(Error::redis_timeout("client tracking", deadline)),
    }
}

/// Whether a `CLIENT TRACKINGINFO` reply says tracking is on: its `flags` hold `on`.
fn tracking_is_on(info: Value) -> bool {
    let fields: HashMap<String, Value> = match info {
        Value::Map(_) | Value::Array(_) => info.convert().unwrap_or_default(),
        _ => return false,
    };
    fields.get("flags").is_some_and(|flags| {
        flags
            .clone()
            .into_array()
            .iter()
            .any(|flag| flag.as_str().is_some_and(|f| f == "on"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(flags: &[&str]) -> Value {
        let flags: Vec<Value> = flags.iter().map(|f| Value::from(*f)).collect();
        let pairs: Vec<Value> = vec![
            "flags".into(),
            Value::Array(flags),
            "redirect".into(),
            Value::Integer(-1),
            "prefixes".into(),
            Value::Array(vec!["ns:a:".into()]),
        ];
        Value::Array(pairs)
    }

    #[test]
    fn trackinginfo_flags_are_read() {
        assert!(tracking_is_on(info(&["on", "bcast"])));
        assert!(!tracking_is_on(info(&["off"])));
        assert!(!tracking_is_on(Value::Null));
    }
}

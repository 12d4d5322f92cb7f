//! The heartbeat: how recovery tells how old the data Redis came back with is.
//!
//! While Redis is healthy, every instance's monitor writes the current time to a heartbeat
//! key — on a Cluster, one on every master, since each master can be restored from its own
//! snapshot. After an outage the oldest heartbeat found is the data's age: a server restarted
//! from a three-hour-old RDB file carries a three-hour-old heartbeat, however short the
//! outage looked from here. A server that came back empty has no heartbeat at all, and an
//! empty cache has nothing stale to flush.

use std::time::{Duration, SystemTime};

use fred::prelude::{ClientLike, ClusterInterface, KeysInterface};

use super::RedisStore;
use crate::error::Error;
use crate::model::unix_ms;

impl RedisStore {
    /// The heartbeat keys: one, or one per Cluster master (hash-tagged into its slots).
    fn heartbeat_keys(&self) -> Vec<String> {
        let base = format!("{}~hb", self.prefix());
        if !self.client().is_clustered() {
            return vec![base];
        }
        let Some(routing) = self.client().cached_cluster_state() else {
            return vec![base];
        };
        let mut masters: Vec<_> = routing.slots().iter().map(|r| r.primary.clone()).collect();
        masters.sort_by(|a, b| (&*a.host, a.port).cmp(&(&*b.host, b.port)));
        masters.dedup();
        let mut keys = Vec::with_capacity(masters.len());
        for master in masters {
            // A hash tag whose slot this master owns; a few tries on average.
            let key = (0u32..100_000)
                .map(|i| format!("{base}:{{{i}}}"))
                .find(|k| {
                    let slot = fred::util::redis_keyslot(k.as_bytes());
                    routing
                        .slots()
                        .iter()
                        .any(|r| r.primary == master && (r.start..=r.end).contains(&slot))
                });
            keys.extend(key);
        }
        keys
    }

    /// Writes the current time to every heartbeat key.
    pub(crate) async fn write_heartbeat(&self) -> Result<(), Error> {
        let now = unix_ms(SystemTime::now()).to_string();
        for key in self.heartbeat_keys() {
            let _: () = self
                .maintenance(self.client().set(key, now.as_str(), None, None, false))
                .await?;
        }
        Ok(())
    }

    /// Age of the oldest heartbeat, or `None` if there is none (Redis came back empty).
    pub(crate) async fn heartbeat_age(&self) -> Result<Option<Duration>, Error> {
        let now = unix_ms(SystemTime::now());
        let mut oldest: Option<Duration> = None;
        for key in self.heartbeat_keys() {
            let value: Option<String> = self.maintenance(self.client().get(key)).await?;
            if let Some(ms) = value.and_then(|v| v.parse::<u64>().ok()) {
                let age = Duration::from_millis(now.saturating_sub(ms));
                oldest = Some(oldest.map_or(age, |o| o.max(age)));
            }
        }
        Ok(oldest)
    }
}

//! The heartbeat: how recovery tells how old the data Redis came back with is.
//!
//! While Redis is healthy, every instance's monitor writes the current time to a heartbeat
//! key — on a Cluster, one on every master, since each master can be restored from its own
//! snapshot. After an outage the oldest heartbeat found is the data's age: a server restarted
//! from a three-hour-old RDB file carries a three-hour-old heartbeat, however short the
//! outage looked from here. A server that came back empty has no heartbeat at all, and an
//! empty cache has nothing stale to flush.
//!
//! Each instance also writes a heartbeat of its own (`ns:~hb:<instance>`). The shared one
//! dates the data for the outage tiers, but it cannot tell an instance which of *its*
//! invalidations the data lacks: the first instance to recover after a restore writes a
//! fresh shared heartbeat before the others have applied theirs again, and a snapshot taken
//! then pairs old entries with a new date. An instance's own heartbeat in the data is older
//! than every invalidation of its own the data may lack, whoever wrote what since.

use std::time::{Duration, SystemTime};

use fred::prelude::{ClientLike, ClusterInterface, KeysInterface, LuaInterface};

use super::{Heartbeats, RedisStore};
use crate::error::Error;
use crate::model::unix_ms;

/// How long an instance's own heartbeat outlives its last write: the instances that stopped
/// leave nothing behind for long, and data older than this is past every outage tier.
const OWN_HEARTBEAT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Writes the shared and the own heartbeat (`KEYS[1]`, `KEYS[2]`) to `ARGV[1]`, the own one
/// expiring after `ARGV[2]` ms, unless `ARGV[3]` is `1` and the own heartbeat is neither
/// `ARGV[4]` (the last this process saw written) nor `ARGV[5]` (the last it tried, whose
/// outcome it may not know): then nothing is written and the answer is 0.
const WRITE_HEARTBEAT: &str = "local own = redis.call('GET', KEYS[2])
if ARGV[3] == '1' and own ~= ARGV[4] and own ~= ARGV[5] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1";

impl RedisStore {
    /// The shared heartbeat keys: one, or one per Cluster master (hash-tagged into its
    /// slots), each with this instance's own beside it (same hash tag).
    fn heartbeat_keys(&self) -> Vec<(String, String)> {
        let base = format!("{}~hb", self.prefix());
        let own = |shared: &str| match shared.find('{') {
            Some(tag) => format!(
                "{}:{}{}",
                &shared[..tag - 1],
                self.instance(),
                &shared[tag - 1..]
            ),
            None => format!("{shared}:{}", self.instance()),
        };
        if !self.client().is_clustered() {
            let own = own(&base);
            return vec![(base, own)];
        }
        let Some(routing) = self.client().cached_cluster_state() else {
            let own = own(&base);
            return vec![(base, own)];
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
            keys.extend(key.map(|shared| {
                let own = own(&shared);
                (shared, own)
            }));
        }
        keys
    }

    /// Writes the current time to every heartbeat key, shared and own.
    ///
    /// With `check`, a key whose own heartbeat is not the last one this process wrote there
    /// is left alone and the call answers `false`: Redis lost writes it had acknowledged
    /// (restarted from a snapshot, or a failover to a replica that lagged), and recovery
    /// needs the heartbeat it came back with. Recovery itself writes without `check`.
    pub(crate) async fn write_heartbeat(&self, check: bool) -> Result<bool, Error> {
        let now = unix_ms(SystemTime::now()).to_string();
        let ttl = (OWN_HEARTBEAT_TTL.as_millis() as u64).to_string();
        let mut intact = true;
        for (shared, own) in self.heartbeat_keys() {
            let (confirmed, attempted) = {
                let mut written = self.own_heartbeats();
                let entry = written.entry(own.clone()).or_default();
                let before = entry.clone();
                entry.1 = now.clone();
                before
            };
            let expect = if check && !confirmed.is_empty() {
                "1"
            } else {
                "0"
            };
            let args = vec![now.as_str(), ttl.as_str(), expect, &confirmed, &attempted];
            let written: i64 = self
                .maintenance(
                    "EVAL",
                    self.client()
                        .eval(WRITE_HEARTBEAT, vec![shared, own.clone()], args),
                )
                .await?;
            if written == 1 {
                self.own_heartbeats().entry(own).or_default().0 = now.clone();
            } else {
                intact = false;
            }
        }
        Ok(intact)
    }

    /// What the heartbeats say: the data's age, and this instance's own.
    pub(crate) async fn heartbeats(&self) -> Result<Heartbeats, Error> {
        let now = unix_ms(SystemTime::now());
        let age = |value: Option<String>| {
            value
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| Duration::from_millis(now.saturating_sub(ms)))
        };
        let mut found = Heartbeats {
            data_age: None,
            own_age: Some(Duration::ZERO),
        };
        for (shared, own) in self.heartbeat_keys() {
            let (shared, own): (Option<String>, Option<String>) = self
                .maintenance("MGET", self.client().mget(vec![shared, own]))
                .await?;
            let Some(shared) = age(shared) else {
                // This server came back empty: nothing of ours to miss on it.
                continue;
            };
            found.data_age = Some(found.data_age.map_or(shared, |o| o.max(shared)));
            found.own_age = match (found.own_age, age(own)) {
                (Some(known), Some(own)) => Some(known.max(own)),
                _ => None,
            };
        }
        Ok(found)
    }
}

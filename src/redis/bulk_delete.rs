//! Deleting many keys: tag invalidation, class flushes and namespace flushes.
//!
//! # Small commands, many in flight
//!
//! Tag invalidation, class flushes and `flush_all` can reach hundreds of thousands of keys,
//! and Redis runs one command at a time: a single `UNLINK` of 100,000 keys, or a Lua script
//! looping over a tag set, would stall every other client of that server for tens of
//! milliseconds. So every command stays small — a SCAN/SSCAN page of `scan_batch` keys, an
//! SREM of one page, an `UNLINK` of at most [`MAX_KEYS_PER_UNLINK`] keys of one hash slot —
//! and speed comes from not waiting for them one at a time: [`PAGES_IN_FLIGHT`] pages are
//! worked on at once, their `UNLINK`s go out in pipelines of [`UNLINKS_PER_PIPELINE`] (fred
//! routes each command of a pipeline to its Cluster master), and the next page is fetched
//! while the current ones are deleted. This matters most on a Cluster, where a page's keys
//! are spread over thousands of hash slots: a 500-key page becomes ~500 one-key `UNLINK`s.
//! So on a Cluster each master instead gets one small script ([`UNLINK_ON_NODE`], at most
//! [`MAX_KEYS_PER_UNLINK`] keys, allowed across slots by Redis 7) for the page's keys it
//! serves, with the per-slot `UNLINK`s as the fallback. Every step keeps the maintenance
//! deadline. (`cargo bench --bench coherence` measures a 100,000-entry tag.)
//!
//! # Tag invalidation removes members, it never deletes the set
//!
//! [`RedisStore::invalidate_tag`] walks the tag set with SSCAN and, for each page, UNLINKs
//! the page's entries, SREMs them from the set, then UNLINKs them once more. It never deletes
//! the set itself (Redis drops a set once it is empty). So an entry written while the
//! invalidation runs either had its membership removed before its last deletion, or keeps it
//! and stays reachable by the next invalidation of the tag; deleting the set at the end
//! instead would forget entries added behind the scan, and they would outlive every later
//! invalidation of the tag until their TTL. An invalidation cut short (a deadline, an outage)
//! leaves the members it did not reach in the set, so running it again (the journal does)
//! finishes the job; and since a page's entries are deleted before their membership is
//! removed, a cut between the two steps — the SREM may land although its reply timed out —
//! leaves nothing alive outside the set. Two invalidations running at once only repeat each
//! other's
//! idempotent deletes. This needs an entry to be
//! written before it joins its tag sets: one connection keeps that order on a standalone
//! server, while on a Cluster, where the entry and a set can live on different nodes,
//! [`RedisStore::set`] waits for the entry's write first (a round trip more per tagged
//! write).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use fred::prelude::{ClientLike, ClusterInterface, KeysInterface, LuaInterface, SetsInterface};
use fred::types::cluster::ClusterRouting;
use fred::types::config::Server;
use fred::types::scan::Scanner;
use fred::types::Value;
use futures_util::{stream, Stream, StreamExt, TryStreamExt};

use super::{RedisStore, Removed};
use crate::error::{Error, RedisErrorKind};
use crate::key::Key;

/// Most keys one `UNLINK` names: deleting a few hundred small values takes well under a
/// millisecond of Redis's time.
const MAX_KEYS_PER_UNLINK: usize = 250;

/// Cluster: unlinks the keys given as arguments, which may lie in several hash slots of the
/// master it runs on (`allow-cross-slot-keys`, Redis 7). At most [`MAX_KEYS_PER_UNLINK`]
/// keys, so it holds the server no longer than one such `UNLINK` would.
const UNLINK_ON_NODE: &str = "#!lua flags=allow-cross-slot-keys
local n = 0
for i = 1, #ARGV do n = n + redis.call('UNLINK', ARGV[i]) end
return n";

/// `UNLINK`s sent as one pipeline: one message to fred's router and one reply for them all,
/// instead of a future, a channel and a wake-up per command.
const UNLINKS_PER_PIPELINE: usize = 100;

/// Pipelines in flight at once per [`RedisStore::unlink`] call.
const PIPELINES_IN_FLIGHT: usize = 4;

/// SCAN/SSCAN pages worked on at once. With [`PIPELINES_IN_FLIGHT`] this hides the round
/// trips while keeping the burst small enough that requests sharing the connections are not
/// queued behind it for long.
const PAGES_IN_FLIGHT: usize = 4;

impl RedisStore {
    /// Deletes full keys, in small commands sent concurrently: on a Cluster one script per
    /// master for the keys it serves when the servers allow it, else (and on a standalone
    /// server) UNLINKs of one hash slot each.
    pub(crate) async fn unlink(&self, keys: Vec<String>) -> Result<Removed, Error> {
        if self.client.is_clustered() && self.node_scripts.load(Ordering::Relaxed) {
            if let Some(routing) = self.client.cached_cluster_state() {
                return self.unlink_per_node(keys, &routing).await;
            }
        }
        self.unlink_per_slot(keys).await
    }

    /// Cluster: the keys grouped by the master that serves them, at most
    /// [`MAX_KEYS_PER_UNLINK`] per [`UNLINK_ON_NODE`] script. A page of keys spread over
    /// hundreds of hash slots then costs a few commands instead of one per slot. A group the
    /// script cannot delete (slots moved since the routing table was read) falls back to
    /// per-slot UNLINKs, as does one that fails otherwise (a deadline); a server that does
    /// not know script flags (Redis < 7) turns the scripts off for good.
    async fn unlink_per_node(
        &self,
        keys: Vec<String>,
        routing: &ClusterRouting,
    ) -> Result<Removed, Error> {
        let mut by_node: HashMap<Server, Vec<String>> = HashMap::new();
        let mut unrouted = Vec::new();
        for key in keys {
            match routing.get_server(fred::util::redis_keyslot(key.as_bytes())) {
                Some(server) => by_node.entry(server.clone()).or_default().push(key),
                None => unrouted.push(key),
            }
        }
        let mut groups: Vec<(Option<Server>, Vec<String>)> = Vec::new();
        for (server, keys) in by_node {
            for chunk in keys.chunks(MAX_KEYS_PER_UNLINK) {
                groups.push((Some(server.clone()), chunk.to_vec()));
            }
        }
        if !unrouted.is_empty() {
            groups.push((None, unrouted));
        }
        let removed = stream::iter(groups)
            .map(|(server, keys)| async move {
                let Some(server) = server else {
                    return self.unlink_per_slot(keys).await;
                };
                let node = self.client.with_cluster_node(server);
                let no_keys: Vec<String> = Vec::new();
                let script = node.eval::<i64, _, _, _>(UNLINK_ON_NODE, no_keys, keys.clone());
                match self.maintenance("EVAL", script).await {
                    Ok(n) => Ok(Removed {
                        keys: u64::try_from(n).unwrap_or(0),
                    }),
                    Err(error) => {
                        // Redis < 7 cannot compile the shebang line, or knows no such flag:
                        // a refusal by the server, unlike a deadline or a lost connection.
                        let text = error.to_string();
                        if error.redis_kind() == Some(RedisErrorKind::Refused)
                            && (text.contains("compiling script") || text.contains("shebang"))
                        {
                            self.node_scripts.store(false, Ordering::Relaxed);
                            tracing::debug!(
                                %error,
                                "per-node UNLINK script refused; using per-slot UNLINKs"
                            );
                        }
                        self.unlink_per_slot(keys).await
                    }
                }
            })
            .buffer_unordered(PIPELINES_IN_FLIGHT)
            .try_fold(0u64, |sum, r| async move { Ok(sum + r.keys) })
            .await?;
        Ok(Removed { keys: removed })
    }

    /// UNLINKs of at most [`MAX_KEYS_PER_UNLINK`] keys of one hash slot each (Cluster-safe),
    /// pipelined and sent concurrently.
    async fn unlink_per_slot(&self, keys: Vec<String>) -> Result<Removed, Error> {
        let mut pipelines: Vec<Vec<Vec<String>>> = Vec::new();
        for batch in unlink_batches(keys, self.client.is_clustered(), MAX_KEYS_PER_UNLINK) {
            match pipelines.last_mut() {
                Some(pipeline) if pipeline.len() < UNLINKS_PER_PIPELINE => pipeline.push(batch),
                _ => pipelines.push(vec![batch]),
            }
        }
        let removed = stream::iter(pipelines)
            .map(|batches| {
                self.maintenance("PIPELINE", async move {
                    let pipeline = self.client.pipeline();
                    for batch in batches {
                        pipeline.unlink::<(), _>(batch).await?;
                    }
                    pipeline.all::<Value>().await
                })
            })
            .buffer_unordered(PIPELINES_IN_FLIGHT)
            .try_fold(0u64, |sum, replies| async move { Ok(sum + count(replies)) })
            .await?;
        Ok(Removed { keys: removed })
    }

    /// Deletes every entry that carries `tag`, in batches, emptying the tag's set as it
    /// goes (see the module docs).
    pub(crate) async fn invalidate_tag(&self, tag: &Key) -> Result<Removed, Error> {
        // First: a load of a tagged entry that read the old generation will check it again
        // after its write (see `lease`).
        self.bump_tag_generation(tag).await?;
        let tag_key = self.tag_key(tag);
        let tag_key = tag_key.as_str();
        let pages = self
            .client
            .sscan(tag_key, "*", Some(self.scan_batch))
            .map_ok(|mut page| strings(page.take_results()));
        let keys = self
            .with_deadline(pages)
            .map_ok(|members| async move {
                if members.is_empty() {
                    return Ok(0);
                }
                // Entries, membership, entries again (see the module docs): a deadline or an
                // outage between two steps never leaves an entry alive outside its set.
                let removed = self.unlink(members.clone()).await?.keys;
                let _: i64 = self
                    .maintenance("SREM", self.client.srem(tag_key, members.clone()))
                    .await?;
                Ok(removed + self.unlink(members).await?.keys)
            })
            .try_buffer_unordered(PAGES_IN_FLIGHT)
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await?;
        Ok(Removed { keys })
    }

    /// Deletes every key that matches `pattern` on every master: SCAN + UNLINK in batches.
    pub(crate) async fn flush_pattern(&self, pattern: &str) -> Result<Removed, Error> {
        self.flush_matching(pattern, |_| true).await
    }

    /// Deletes every entry of `class`, after moving the class's generation (see `lease`);
    /// returns what it removed and the generation it moved to.
    pub(crate) async fn flush_class(&self, class: &str) -> Result<(Removed, i64), Error> {
        let generation = self
            .bump_flush_generation(&self.class_generation_key(class))
            .await?;
        Ok((
            self.flush_pattern(&self.class_pattern(class)).await?,
            generation,
        ))
    }

    /// Deletes everything in the namespace, after moving its generation (see `lease`;
    /// returned with what it removed), except its bookkeeping: the invalidation log, which
    /// the other instances reconcile from after this very flush; the heartbeats, which date
    /// the data for the next recovery; and the generations, which loads racing this flush
    /// (or a later one) check.
    pub(crate) async fn flush_namespace(&self) -> Result<(Removed, i64), Error> {
        let generation = self
            .bump_flush_generation(&self.namespace_generation_key())
            .await?;
        let replay_log = self.invalidation_log_key();
        let prefix = self.prefix();
        let kept = [
            format!("{prefix}~hb"),
            format!("{prefix}~tagv:"),
            format!("{prefix}~clsv:"),
            self.namespace_generation_key(),
        ];
        let removed = self
            .flush_matching(&self.namespace_pattern(), move |key| {
                key != replay_log && !kept.iter().any(|k| key.starts_with(k.as_str()))
            })
            .await?;
        Ok((removed, generation))
    }

    async fn flush_matching(
        &self,
        pattern: &str,
        keep_if: impl Fn(&str) -> bool,
    ) -> Result<Removed, Error> {
        let select = |mut keys: Vec<String>| {
            keys.retain(|key| keep_if(key));
            keys
        };
        // A plain SCAN on a Cluster client sees one node only.
        if self.client.is_clustered() {
            let pages = self
                .client
                .scan_cluster(pattern.to_owned(), Some(self.scan_batch), None)
                .map_ok(|mut page| select(key_strings(page.take_results())));
            self.unlink_pages(pages).await
        } else {
            let pages = self
                .client
                .scan(pattern.to_owned(), Some(self.scan_batch), None)
                .map_ok(|mut page| select(key_strings(page.take_results())));
            self.unlink_pages(pages).await
        }
    }

    /// Unlinks the keys of every page of a SCAN, a few pages at a time.
    async fn unlink_pages(
        &self,
        pages: impl Stream<Item = Result<Vec<String>, fred::error::Error>>,
    ) -> Result<Removed, Error> {
        let keys = self
            .with_deadline(pages)
            .map_ok(|keys| async move { Ok(self.unlink(keys).await?.keys) })
            .try_buffer_unordered(PAGES_IN_FLIGHT)
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await?;
        Ok(Removed { keys })
    }

    /// `pages` with the maintenance deadline on the wait for each page. (fred asks for the
    /// next page as soon as a page is dropped, so the next one is on its way while the
    /// current one is worked on.)
    fn with_deadline<'a, T: 'a>(
        &'a self,
        pages: impl Stream<Item = Result<T, fred::error::Error>> + 'a,
    ) -> impl Stream<Item = Result<T, Error>> + 'a {
        stream::unfold(Box::pin(pages), move |mut pages| async move {
            let next = self
                .maintenance("SCAN", async { pages.next().await.transpose() })
                .await
                .transpose()?;
            Some((next, pages))
        })
    }
}

/// The sum of the integer replies of a pipeline (one reply may come unwrapped).
fn count(replies: Value) -> u64 {
    match replies {
        Value::Array(replies) => replies.into_iter().map(count).sum(),
        Value::Integer(n) => u64::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// The members of an SSCAN page.
pub(super) fn strings(values: Option<Vec<Value>>) -> Vec<String> {
    values
        .unwrap_or_default()
        .into_iter()
        .filter_map(Value::into_string)
        .collect()
}

/// The keys of a SCAN page.
fn key_strings(keys: Option<Vec<fred::types::Key>>) -> Vec<String> {
    keys.unwrap_or_default()
        .into_iter()
        .filter_map(fred::types::Key::into_string)
        .collect()
}

/// Splits keys into UNLINK batches of at most `max` keys, each in one hash slot on Cluster.
fn unlink_batches(keys: Vec<String>, clustered: bool, max: usize) -> Vec<Vec<String>> {
    let groups = if clustered {
        let mut groups: HashMap<u16, Vec<String>> = HashMap::new();
        for key in keys {
            groups
                .entry(fred::util::redis_keyslot(key.as_bytes()))
                .or_default()
                .push(key);
        }
        groups.into_values().collect()
    } else {
        vec![keys]
    };
    let mut batches = Vec::with_capacity(groups.len());
    for group in groups {
        if group.len() <= max {
            batches.push(group);
        } else {
            batches.extend(group.chunks(max.max(1)).map(<[String]>::to_vec));
        }
    }
    batches.retain(|batch| !batch.is_empty());
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_grouped_by_slot_on_cluster_only() {
        let keys: Vec<String> = (0..50).map(|i| format!("ns:c:{i}")).collect();
        assert_eq!(unlink_batches(keys.clone(), false, 250).len(), 1);
        let groups = unlink_batches(keys, true, 250);
        assert!(groups.len() > 1);
        for g in groups {
            let slot = fred::util::redis_keyslot(g[0].as_bytes());
            assert!(g
                .iter()
                .all(|k| fred::util::redis_keyslot(k.as_bytes()) == slot));
        }
        assert!(unlink_batches(Vec::new(), false, 250).is_empty());
    }

    #[test]
    fn unlink_batches_are_small_and_keep_every_key() {
        // One hash slot (a hash tag), so only the size limit splits them.
        let keys: Vec<String> = (0..1001).map(|i| format!("ns:{{t}}:{i}")).collect();
        for clustered in [false, true] {
            let batches = unlink_batches(keys.clone(), clustered, 250);
            assert_eq!(batches.len(), 5);
            assert!(batches.iter().all(|b| b.len() <= 250));
            let mut all: Vec<String> = batches.concat();
            all.sort();
            let mut expected = keys.clone();
            expected.sort();
            assert_eq!(all, expected);
        }
    }
}

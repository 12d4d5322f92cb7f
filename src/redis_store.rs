//! The Redis store: the shared L2, on a standalone server, a Sentinel group or a Cluster.
//!
//! fred does the protocol work, but its defaults are wrong for a cache (see the shared notes
//! on fred 10.1): no reconnect policy (a dead server is never reconnected), no command
//! timeout (a GET waits forever on a frozen server), and a bounded command buffer that loses
//! track of commands under load. So this module always sets a reconnect policy, puts a
//! deadline on every command, never sets `max_command_buffer_len`, and bounds the number of
//! commands in flight itself, shedding (treating as a miss) what does not fit.
//!
//! Layout of the keys it writes, all under the namespace prefix:
//! - `ns:class:key` — an entry, its value in the [envelope](crate::envelope);
//! - `ns:~tag:tag` — a set of the full keys that carry a tag.
//!
//! `~` cannot start a class name, so a class's SCAN pattern never meets a tag set, while the
//! namespace pattern `ns:*` reaches everything. Nothing is ever deleted with KEYS, FLUSHALL or
//! FLUSHDB, and multi-key commands are grouped by hash slot, so Cluster never answers
//! CROSSSLOT.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, Expiration, KeysInterface, ReconnectPolicy,
    SetsInterface,
};
use fred::types::config::{Options, UnresponsiveConfig};
use fred::types::scan::Scanner;
use fred::types::{ExpireOptions, Value};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::error::Error;
use crate::key::Key;

/// How stormcache talks to Redis: deadlines, reconnection and concurrency.
///
/// Set through [`CacheBuilder`](crate::CacheBuilder); the defaults suit a service whose Redis
/// is on the same network.
#[derive(Clone, Debug)]
pub(crate) struct RedisSettings {
    pub(crate) url: String,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_delay: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) maintenance_timeout: Duration,
    pub(crate) scan_batch: u32,
}

pub(crate) struct RedisStore {
    client: fred::clients::Client,
    prefix: Arc<str>,
    options: Options,
    command_timeout: Duration,
    maintenance_timeout: Duration,
    scan_batch: u32,
    in_flight: Semaphore,
}

/// What a maintenance operation (flush, tag invalidation) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) keys: u64,
}

impl RedisStore {
    /// Creates the client and starts connecting in the background.
    ///
    /// Fails only on a bad URL or without a runtime: an unreachable Redis is not an error,
    /// the cache runs on its local store until Redis answers.
    pub(crate) fn connect(settings: &RedisSettings, namespace: &str) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let config = Config::from_url(&settings.url).map_err(|e| Error::InvalidUrl {
            url: mask_password(&settings.url),
            reason: e.details().to_string(),
        })?;
        let mut builder = Builder::from_config(config);
        let delay_ms = u32::try_from(settings.reconnect_delay.as_millis()).unwrap_or(u32::MAX);
        // 0 attempts = retry forever: a cache must come back by itself.
        builder.set_policy(ReconnectPolicy::new_constant(0, delay_ms.max(1)));
        builder.with_performance_config(|perf| {
            perf.default_command_timeout = settings.command_timeout;
        });
        builder.with_connection_config(|conn| {
            conn.connection_timeout = settings.connect_timeout;
            conn.internal_command_timeout = settings.connect_timeout;
            // A frozen server is only noticed if fred is told what "too slow" means.
            conn.unresponsive = UnresponsiveConfig {
                max_timeout: Some(settings.connect_timeout),
                interval: (settings.connect_timeout / 4).max(Duration::from_millis(10)),
            };
        });
        let client = builder.build().map_err(|e| Error::InvalidUrl {
            url: mask_password(&settings.url),
            reason: e.details().to_string(),
        })?;
        // Runs the connection (and its reconnections) in the background for the client's life.
        let _connection = client.connect();
        Ok(RedisStore {
            client,
            prefix: Arc::from(format!("{namespace}:")),
            options: Options {
                timeout: Some(settings.command_timeout),
                fail_fast: true,
                max_attempts: Some(1),
                ..Options::default()
            },
            command_timeout: settings.command_timeout,
            maintenance_timeout: settings.maintenance_timeout,
            scan_batch: settings.scan_batch.max(10),
            in_flight: Semaphore::new(settings.max_in_flight.max(1)),
        })
    }

    /// The underlying fred client.
    pub(crate) fn client(&self) -> &fred::clients::Client {
        &self.client
    }

    /// `ns:`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `ns:class:key`.
    pub(crate) fn entry_key(&self, class: &str, key: &Key) -> String {
        let mut k = String::with_capacity(self.prefix.len() + class.len() + 1 + key.as_str().len());
        k.push_str(&self.prefix);
        k.push_str(class);
        k.push(':');
        k.push_str(key.as_str());
        k
    }

    /// `ns:~tag:tag`.
    pub(crate) fn tag_key(&self, tag: &Key) -> String {
        format!("{}~tag:{}", self.prefix, tag.as_str())
    }

    /// The SCAN pattern of a class.
    pub(crate) fn class_pattern(&self, class: &str) -> String {
        format!("{}{class}:*", self.prefix)
    }

    /// The SCAN pattern of the whole namespace.
    pub(crate) fn namespace_pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// Runs one request-path command under the in-flight bound and the command deadline.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, Error> {
        // Shed rather than queue: a request must not wait behind a backlog for its cache.
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| Error::Overloaded)?;
        match tokio::time::timeout(self.command_timeout, fut).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Redis(format!(
                "no answer within {:?}",
                self.command_timeout
            ))),
        }
    }

    /// A maintenance step with the longer maintenance deadline.
    pub(crate) async fn maintenance<T>(
        &self,
        fut: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.maintenance_timeout, fut).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Redis(format!(
                "maintenance step took longer than {:?}",
                self.maintenance_timeout
            ))),
        }
    }

    pub(crate) async fn get(&self, full_key: &str) -> Result<Option<Bytes>, Error> {
        let client = self.client.with_options(&self.options);
        self.bounded(client.get::<Option<Bytes>, _>(full_key)).await
    }

    /// Writes an entry with its TTL and adds it to its tags' sets.
    pub(crate) async fn set(
        &self,
        full_key: &str,
        bytes: Vec<u8>,
        ttl: Duration,
        tags: &[Key],
    ) -> Result<(), Error> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        if tags.is_empty() {
            let client = self.client.with_options(&self.options);
            return self
                .bounded(client.set::<(), _, _>(
                    full_key,
                    bytes,
                    Some(Expiration::PX(ttl_ms)),
                    None,
                    false,
                ))
                .await;
        }
        let pipeline = self.client.pipeline();
        let queue = async {
            pipeline
                .set::<(), _, _>(full_key, bytes, Some(Expiration::PX(ttl_ms)), None, false)
                .await?;
            for tag in tags {
                let tag_key = self.tag_key(tag);
                pipeline
                    .sadd::<(), _, _>(tag_key.as_str(), full_key)
                    .await?;
                // A tag set lives as long as its longest-lived member: NX sets a first TTL,
                // GT only ever extends it.
                pipeline
                    .pexpire::<(), _>(tag_key.as_str(), ttl_ms, Some(ExpireOptions::NX))
                    .await?;
                pipeline
                    .pexpire::<(), _>(tag_key.as_str(), ttl_ms, Some(ExpireOptions::GT))
                    .await?;
            }
            pipeline.all::<Value>().await.map(|_| ())
        };
        self.bounded(queue).await
    }

    /// Deletes full keys, one UNLINK per hash slot (Cluster-safe).
    pub(crate) async fn unlink(&self, keys: Vec<String>) -> Result<Removed, Error> {
        let mut removed = Removed::default();
        for group in by_slot(keys, self.client.is_clustered()) {
            let n: i64 = self.maintenance(self.client.unlink(group)).await?;
            removed.keys += u64::try_from(n).unwrap_or(0);
        }
        Ok(removed)
    }

    /// Deletes every entry that carries `tag`, then the tag's set, in batches.
    pub(crate) async fn invalidate_tag(&self, tag: &Key) -> Result<Removed, Error> {
        let tag_key = self.tag_key(tag);
        let mut removed = Removed::default();
        let mut pages = self
            .client
            .sscan(tag_key.as_str(), "*", Some(self.scan_batch))
            .boxed();
        loop {
            let page = match self
                .maintenance(async { pages.next().await.transpose() })
                .await?
            {
                Some(page) => page,
                None => break,
            };
            let mut page = page;
            let members: Vec<String> = page
                .take_results()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| v.into_string())
                .collect();
            if !members.is_empty() {
                removed.keys += self.unlink(members).await?.keys;
            }
            // Dropping the page asks for the next one.
            drop(page);
        }
        let _: i64 = self
            .maintenance(self.client.unlink(tag_key.as_str()))
            .await?;
        Ok(removed)
    }

    /// Deletes every key that matches `pattern` on every master: SCAN + UNLINK in batches.
    pub(crate) async fn flush_pattern(&self, pattern: &str) -> Result<Removed, Error> {
        let mut removed = Removed::default();
        // A plain SCAN on a Cluster client sees one node only.
        let mut pages = if self.client.is_clustered() {
            self.client
                .scan_cluster(pattern.to_owned(), Some(self.scan_batch), None)
                .boxed()
        } else {
            self.client
                .scan(pattern.to_owned(), Some(self.scan_batch), None)
                .boxed()
        };
        loop {
            let mut page = match self
                .maintenance(async { pages.next().await.transpose() })
                .await?
            {
                Some(page) => page,
                None => break,
            };
            let keys: Vec<String> = page
                .take_results()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|k| k.into_string())
                .collect();
            if !keys.is_empty() {
                removed.keys += self.unlink(keys).await?.keys;
            }
            drop(page);
        }
        Ok(removed)
    }

    /// A PING with the request deadline, for probes.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        let client = self.client.with_options(&self.options);
        match tokio::time::timeout(self.command_timeout, client.ping::<()>(None)).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::Redis("PING timed out".into())),
        }
    }

    /// fred's connection events: errors, and (re)connections.
    pub(crate) fn events(&self) -> (ErrorEvents, ReconnectEvents) {
        (self.client.error_rx(), self.client.reconnect_rx())
    }
}

pub(crate) type ErrorEvents =
    tokio::sync::broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>;
pub(crate) type ReconnectEvents = tokio::sync::broadcast::Receiver<fred::types::config::Server>;

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Close the connection and stop reconnecting once the last cache handle is gone.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            handle.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

/// Groups keys so that each group lives in one hash slot (only needed on Cluster).
fn by_slot(keys: Vec<String>, clustered: bool) -> Vec<Vec<String>> {
    if !clustered {
        return vec![keys];
    }
    let mut groups: HashMap<u16, Vec<String>> = HashMap::new();
    for key in keys {
        groups
            .entry(fred::util::redis_keyslot(key.as_bytes()))
            .or_default()
            .push(key);
    }
    groups.into_values().collect()
}

/// Hides the password of a URL for error messages and logs.
pub(crate) fn mask_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => format!("{}***{}", &url[..scheme_end + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("redis://user:secret@127.0.0.1:6379/0"),
            "redis://user:***@127.0.0.1:6379/0"
        );
        assert_eq!(mask_password("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(mask_password("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn keys_are_grouped_by_slot_on_cluster_only() {
        let keys: Vec<String> = (0..50).map(|i| format!("ns:c:{i}")).collect();
        assert_eq!(by_slot(keys.clone(), false).len(), 1);
        let groups = by_slot(keys, true);
        assert!(groups.len() > 1);
        for g in groups {
            let slot = fred::util::redis_keyslot(g[0].as_bytes());
            assert!(g
                .iter()
                .all(|k| fred::util::redis_keyslot(k.as_bytes()) == slot));
        }
    }
}

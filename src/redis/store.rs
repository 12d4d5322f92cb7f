//! The Redis store: the shared L2, on a standalone server, a Sentinel group or a Cluster.
//!
//! fred does the protocol work, but its defaults are wrong for a cache (measured with fred
//! 10.1): no reconnect policy (a dead server is never reconnected), no command
//! timeout (a GET waits forever on a frozen server), and a bounded command buffer that loses
//! track of commands under load. So this module always sets a reconnect policy, puts a
//! deadline on every command, never sets `max_command_buffer_len`, and bounds the number of
//! commands in flight itself, shedding (treating as a miss) what does not fit.
//!
//! Layout of the keys it writes, all under the namespace prefix:
//! - `ns:class:key` — an entry: its value in an envelope that carries its freshness;
//! - `ns:~tag:tag` — a set of the full keys that carry a tag; `ns:~tagv:tag` — a value
//!   every invalidation of the tag changes, kept a few seconds; `ns:~clsv:class` and `ns:~allv` — how often a class
//!   and the whole namespace were flushed (see `lease`). An entry's key may also hold a
//!   short-lived tombstone left by a key invalidation.
//!
//! - `ns:~lock:class:key` — a stampede lock; `ns:~hb` — the heartbeat, `ns:~hb:<instance>`
//!   each instance's own; `ns:~inv` — the
//!   invalidation channel; `ns:~invlog` — the log of what was published on it.
//!
//! `~` cannot start a class name, so a class's SCAN pattern never meets a tag set, while the
//! namespace pattern `ns:*` reaches everything. Nothing is ever deleted with KEYS, FLUSHALL or
//! FLUSHDB, and multi-key commands are grouped by hash slot, so Cluster never answers
//! CROSSSLOT.

use std::future::Future;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, KeysInterface, ListInterface, LuaInterface,
    PubsubInterface, ReconnectPolicy,
};
use fred::types::config::{Options, UnresponsiveConfig};
use fred::types::Value;
use tokio::sync::broadcast::error::RecvError;

use super::RedisSettings;
use crate::error::Error;
use crate::key::Key;

/// Appends ARGV[1] to the log KEYS[1] as `<ms>:<message>` (Redis's own clock, so instances
/// whose clocks differ agree on the order), trims it to the last ARGV[3] entries, gives it a
/// TTL of ARGV[4] ms, and PUBLISHes ARGV[1] on the channel ARGV[2]. One script, so a message
/// is never published without being logged.
const PUBLISH_LOGGED: &str = "local t = redis.call('TIME')
local at = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('RPUSH', KEYS[1], at .. ':' .. ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('PUBLISH', ARGV[2], ARGV[1])";

/// The connection to Redis the cache reads, writes and invalidates through.
pub(crate) struct RedisStore {
    pub(super) client: fred::clients::Client,
    prefix: Arc<str>,
    options: Options,
    command_timeout: Duration,
    maintenance_timeout: Duration,
    pub(super) scan_batch: u32,
    in_flight: InFlight,
    /// Whether the Cluster's masters run the per-node UNLINK script; cleared by the first
    /// refusal.
    pub(super) node_scripts: AtomicBool,
    /// A random id for this process's own keys (its heartbeat).
    instance: u64,
    /// Where request-path command durations are reported.
    command_duration: metrics::Histogram,
    /// The host and port the URL names, for spans.
    server_address: Arc<str>,
    /// Per own heartbeat key: the last value this process saw written, and the last it
    /// tried to write.
    own_heartbeats: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

/// How many request-path commands are in flight, against a bound. A counter rather than a
/// semaphore: commands never wait for room (they are shed), and a semaphore's release takes
/// a lock on every command.
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl InFlight {
    fn new(max: usize) -> Self {
        InFlight {
            now: std::sync::atomic::AtomicUsize::new(0),
            max,
        }
    }

    /// Counts a command in, unless the bound is reached; it is counted out when the
    /// returned guard drops.
    fn enter(&self) -> Option<InFlightGuard<'_>> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.now.fetch_add(1, Relaxed);
        let guard = InFlightGuard(&self.now);
        (before < self.max).then_some(guard)
    }
}

/// One command counted in [`InFlight`].
struct InFlightGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A connection event fred reports.
#[derive(Debug)]
pub(crate) enum ConnectionEvent {
    /// A connection failed or closed.
    Lost(Error),
    /// A connection was (re)established.
    Connected,
}

/// fred's connection events, as the health monitor needs them.
pub(crate) struct ConnectionEvents {
    errors:
        tokio::sync::broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
    reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
}

impl ConnectionEvents {
    /// The next event; `None` once the client is gone. Events missed by a slow reader are
    /// skipped: only the latest state matters to the monitor.
    pub(crate) async fn next(&mut self) -> Option<ConnectionEvent> {
        loop {
            tokio::select! {
                error = self.errors.recv() => match error {
                    Ok((error, _server)) => return Some(ConnectionEvent::Lost(error.into())),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
                reconnect = self.reconnects.recv() => match reconnect {
                    Ok(_) => return Some(ConnectionEvent::Connected),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
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
        #[cfg(feature = "redis-tracing")]
        builder.with_config(|config| {
            config.tracing = fred::types::config::TracingConfig::new(true);
        });
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
            in_flight: InFlight::new(settings.max_in_flight.max(1)),
            node_scripts: AtomicBool::new(true),
            own_heartbeats: std::sync::Mutex::default(),
            command_duration: metrics::Histogram::noop(),
            server_address: Arc::from(first_address(&settings.url)),
            instance: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(std::process::id())
            },
        })
    }

    /// Reports the duration of every request-path command to `histogram`.
    pub(crate) fn reporting_commands_to(mut self, histogram: metrics::Histogram) -> Self {
        self.command_duration = histogram;
        self
    }

    /// The underlying fred client.
    pub(super) fn client(&self) -> &fred::clients::Client {
        &self.client
    }

    /// What this process wrote to its own heartbeat keys.
    pub(super) fn own_heartbeats(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, String)>> {
        self.own_heartbeats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This process's id in key names, as 16 hex digits.
    pub(super) fn instance(&self) -> String {
        format!("{:016x}", self.instance)
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

    /// `ns:~clsv:class`: how often `class` was flushed (see `lease`).
    pub(crate) fn class_generation_key(&self, class: &str) -> String {
        format!("{}~clsv:{class}", self.prefix)
    }

    /// `ns:~allv`: how often the whole namespace was flushed (see `lease`).
    pub(crate) fn namespace_generation_key(&self) -> String {
        format!("{}~allv", self.prefix)
    }

    /// The SCAN pattern of a class.
    pub(crate) fn class_pattern(&self, class: &str) -> String {
        format!("{}{class}:*", self.prefix)
    }

    /// `ns:~invlog`: the log of recently published invalidations.
    pub(crate) fn invalidation_log_key(&self) -> String {
        format!("{}~invlog", self.prefix)
    }

    /// The SCAN pattern of the whole namespace.
    pub(crate) fn namespace_pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// The options of request-path commands: the command deadline, no retries.
    pub(super) fn request_options(&self) -> &Options {
        &self.options
    }

    /// The deadline of one request-path command.
    pub(super) fn command_deadline(&self) -> Duration {
        self.command_timeout
    }

    /// The deadline of a maintenance step.
    pub(super) fn maintenance_deadline(&self) -> Duration {
        self.maintenance_timeout
    }

    /// Runs one request-path command (`op`, as OpenTelemetry's `db.operation.name` has it)
    /// under the in-flight bound and the command deadline, which fred applies to each
    /// command (the client's default and the request options both carry it): no timer of
    /// our own. Several commands that must share one deadline go through
    /// [`bounded_steps`](Self::bounded_steps).
    pub(super) async fn bounded<T, F, Fut>(&self, op: &'static str, command: F) -> Result<T, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        // Shed rather than queue: a request must not wait behind a backlog for its cache.
        let _permit = self.in_flight.enter().ok_or(Error::Overloaded)?;
        let started = std::time::Instant::now();
        // The command's future is made here, where it is awaited, rather than passed in:
        // an argument would be kept beside it in this future's state, doubling the size of
        // every read's future (fred's run to kilobytes).
        let result = command()
            .instrument(self.command_span(op))
            .await
            .map_err(Error::from);
        self.command_duration
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// [`bounded`](Self::bounded) for several commands in sequence (`steps`, boxed by the
    /// caller so that this future stays small): each has fred's deadline, and together they
    /// have one more, so that a slow server cannot make the request wait a deadline per step.
    pub(super) async fn bounded_steps<T, S>(&self, op: &'static str, steps: S) -> Result<T, Error>
    where
        S: Future<Output = Result<T, fred::error::Error>>,
    {
        self.bounded_within(op, self.command_timeout, steps).await
    }

    /// [`bounded_steps`](Self::bounded_steps) within `deadline`: what is left of one
    /// command deadline that earlier commands of the same request have used part of.
    pub(super) async fn bounded_within<T, S>(
        &self,
        op: &'static str,
        deadline: Duration,
        steps: S,
    ) -> Result<T, Error>
    where
        S: Future<Output = Result<T, fred::error::Error>>,
    {
        let timed = self
            .bounded(op, || async move {
                Ok::<_, fred::error::Error>(tokio::time::timeout(deadline, steps).await)
            })
            .await?;
        match timed {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::redis_timeout("command", deadline)),
        }
    }

    /// A span for one command, named as OpenTelemetry's database conventions have it, at
    /// DEBUG. `server.address` is the address the URL names (on Sentinel and Cluster, the
    /// first seed, not the node that answers).
    fn command_span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!(
            "redis",
            db.system.name = "redis",
            db.operation.name = op,
            server.address = &*self.server_address,
        )
    }

    /// A maintenance step (`op`, as for [`bounded`](Self::bounded)) with the longer
    /// maintenance deadline.
    pub(super) async fn maintenance<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, fred::error::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.maintenance_timeout, fut)
            .instrument(self.command_span(op))
            .await
        {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::redis_timeout(
                "maintenance step",
                self.maintenance_timeout,
            )),
        }
    }

    pub(crate) async fn get(&self, full_key: &str) -> Result<Option<Bytes>, Error> {
        let client = self.client.with_options(&self.options);
        self.bounded("GET", || client.get::<Option<Bytes>, _>(full_key))
            .await
    }

    /// A PING with the request deadline, for probes.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        let client = self.client.with_options(&self.options);
        match tokio::time::timeout(self.command_timeout, client.ping::<()>(None)).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::redis_timeout("PING", self.command_timeout)),
        }
    }

    /// fred's connection events: errors, and (re)connections.
    pub(crate) fn events(&self) -> ConnectionEvents {
        ConnectionEvents {
            errors: self.client.error_rx(),
            reconnects: self.client.reconnect_rx(),
        }
    }

    /// Drops the connections and makes new ones (on Sentinel, asking for the master again).
    pub(crate) async fn force_reconnection(&self, deadline: Duration) -> Result<(), Error> {
        match tokio::time::timeout(deadline, self.client.force_reconnection()).await {
            Ok(result) => result.map_err(Error::from),
            Err(_) => Err(Error::redis_timeout("reconnection", deadline)),
        }
    }

    /// PUBLISHes `message` on `channel` with the request deadline.
    pub(crate) async fn publish(&self, channel: &str, message: Bytes) -> Result<(), Error> {
        let publish = self.client.publish::<i64, _, _>(channel, message);
        match tokio::time::timeout(self.command_timeout, publish).await {
            Ok(result) => result.map(|_| ()).map_err(Error::from),
            Err(_) => Err(Error::redis_timeout("PUBLISH", self.command_timeout)),
        }
    }

    /// PUBLISHes `message` on `channel` and appends it, stamped with Redis's clock, to the
    /// list `log`, in one script: a subscriber that missed the message finds it in the log.
    /// The log keeps its last `keep` entries and lives `ttl` after the last one. An entry is
    /// `<unix ms>:<message>`. Runs with the request deadline.
    pub(crate) async fn publish_logged(
        &self,
        channel: &str,
        log: &str,
        message: Bytes,
        keep: i64,
        ttl: Duration,
    ) -> Result<(), Error> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let args: Vec<Value> = vec![
            Value::Bytes(message),
            channel.into(),
            keep.into(),
            ttl_ms.into(),
        ];
        let script = self.client.eval::<i64, _, _, _>(PUBLISH_LOGGED, log, args);
        match tokio::time::timeout(self.command_timeout, script).await {
            Ok(result) => result.map(|_| ()).map_err(Error::from),
            Err(_) => Err(Error::redis_timeout("logged PUBLISH", self.command_timeout)),
        }
    }

    /// Every item of the list `key`.
    pub(crate) async fn read_log(&self, key: &str) -> Result<Vec<Bytes>, Error> {
        self.maintenance("LRANGE", self.client.lrange::<Vec<Bytes>, _>(key, 0, -1))
            .await
    }
}

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

/// The first `host:port` of a Redis URL (after any credentials), for spans.
fn first_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?', ','])
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_address_of_a_url() {
        assert_eq!(
            super::first_address("redis://127.0.0.1:6379/0"),
            "127.0.0.1:6379"
        );
        assert_eq!(super::first_address("rediss://u:p@h:1"), "h:1");
        assert_eq!(
            super::first_address("redis-sentinel://s1:26379/0?sentinelServiceName=m&node=s2:1"),
            "s1:26379"
        );
    }

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
}

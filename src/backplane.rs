//! The backplane: invalidations made by one instance reach every other instance's local store.
//!
//! Each instance keeps a local store (L1) in front of the shared Redis. When instance A
//! invalidates a key, Redis is cleaned, but B and C still hold the old value in their L1 —
//! and serve it until it expires. So every invalidation that reaches Redis is also published
//! on a Redis pub/sub channel (`<namespace>:~inv`), and every instance applies what the others
//! publish to its own L1. An instance recognises its own messages by a random id and skips
//! them.
//!
//! Pub/sub is fire-and-forget: a subscriber that is disconnected when a message is published
//! never gets it. So the channel is watched end to end: every probe interval each instance
//! publishes a *ping* and expects its own echo back. The channel has a **gap** from the first
//! sign of trouble — the subscriber's connection dropped or reconnected, a ping not echoed in
//! time, messages lost to a slow reader, or Redis itself unusable — until a ping is echoed
//! again on a fresh subscription.
//!
//! **The reconciliation rule.** While there is a gap, every L1 entry is suspect: it may have
//! missed an invalidation. A suspect entry is never served while Redis can be asked; the
//! read goes to Redis instead, and the entry is replaced by what Redis holds now. Only while
//! Redis is down is a suspect entry served, as the fallback it is there to be. When the gap
//! ends (an echo on a fresh subscription):
//!
//! - **the channel alone failed** (Redis was usable; say the subscriber connection was
//!   killed): every entry written before the gap *ended* stays suspect, so it is revalidated
//!   against Redis on its next read. Entries written during the gap are included: they may
//!   have been read from Redis just before a missed invalidation removed them there. The
//!   cost is one Redis read per key, not an origin load, since Redis still holds the data.
//! - **Redis itself was down** (an outage began within two seconds of the gap): the outage
//!   tier policy decides, for L1 as for Redis. Recovery has already flushed the tier's
//!   scope from the local store (nothing under the first tier, the volatile classes, or
//!   everything), and what is left is trusted again. Invalidations the other instances made
//!   during the outage were journaled; an instance that replays its journal first appends it
//!   to a replay log in Redis (`<namespace>:~replayed`, kept 10 minutes), then publishes it.
//!   So an instance whose channel comes back after that publication finds it in the log,
//!   which it reads before trusting its entries again, and one whose channel came back
//!   before gets the message.
//!
//! Marking is one atomic store of a watermark, not a sweep, so a gap costs nothing up front.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, KeysInterface, ListInterface, PubsubInterface,
    ReconnectPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use crate::cache::Inner;
use crate::envelope::unix_ms;
use crate::error::Error;
use crate::invalidation::Invalidation;
use crate::key::Key;
use crate::redis_store::{RedisSettings, RedisStore};
use crate::single_flight::ALL_SHARDS;
use crate::status::BackplaneStatus;

/// Version of the wire format; messages of another version are ignored.
const WIRE_VERSION: u8 = 1;

/// Replayed invalidations kept in the replay log: the last ones, for ten minutes.
const REPLAY_LOG_LEN: i64 = 10_000;
const REPLAY_LOG_TTL_MS: i64 = 600_000;

/// One instance's end of the channel.
pub(crate) struct Backplane {
    /// This instance's id: messages carrying it are our own echoes.
    id: u64,
    channel: String,
    /// The replay log: journaled invalidations replayed after an outage.
    replay_log: String,
    command_timeout: Duration,
    ping_interval: Duration,
    /// A ping not echoed within this is a gap.
    echo_timeout: Duration,
    /// A ping was echoed since the last gap began.
    connected: AtomicBool,
    /// When the current gap began.
    gap_since: Mutex<Option<SystemTime>>,
    received: AtomicU64,
    published: AtomicU64,
    /// Gaps reconciled (the first subscription is not counted).
    reconciliations: AtomicU64,
}

/// What goes over the channel.
#[derive(Serialize, Deserialize)]
struct Message {
    from: u64,
    body: Body,
}

#[derive(Serialize, Deserialize)]
enum Body {
    Ping(u64),
    Invalidate {
        keys: Vec<String>,
        tags: Vec<String>,
        classes: Vec<String>,
        volatile: bool,
        everything: bool,
    },
}

fn encode(message: &Message) -> Result<Vec<u8>, Error> {
    let mut bytes = vec![WIRE_VERSION];
    rmp_serde::encode::write(&mut bytes, message)
        .map_err(|e| Error::Redis(format!("backplane message not encodable: {e}")))?;
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Option<Message> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => rmp_serde::from_slice(rest).ok(),
        _ => None,
    }
}

fn to_wire(inv: &Invalidation) -> Body {
    let strings = |keys: &std::collections::BTreeSet<Key>| {
        keys.iter().map(|k| k.as_str().to_owned()).collect()
    };
    Body::Invalidate {
        keys: strings(&inv.keys),
        tags: strings(&inv.tags),
        classes: inv.classes.iter().cloned().collect(),
        volatile: inv.volatile,
        everything: inv.everything,
    }
}

/// Keys arrive escaped already; they only ever name exact local entries, so a forged message
/// can remove entries but never widen what a pattern reaches.
fn from_wire(body: Body) -> Option<Invalidation> {
    let Body::Invalidate {
        keys,
        tags,
        classes,
        volatile,
        everything,
    } = body
    else {
        return None;
    };
    Some(Invalidation {
        keys: keys
            .into_iter()
            .map(|k| Key::from_escaped(k.into()))
            .collect(),
        tags: tags
            .into_iter()
            .map(|k| Key::from_escaped(k.into()))
            .collect(),
        classes: classes.into_iter().collect(),
        volatile,
        everything,
    })
}

/// A random id per instance: two instances must not take each other for an echo.
fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl Backplane {
    /// The backplane of a cache on `_store`.
    pub(crate) fn for_store(
        _store: &RedisStore,
        namespace: &str,
        command_timeout: Duration,
        ping_interval: Duration,
    ) -> Self {
        Backplane {
            id: instance_id(),
            channel: format!("{namespace}:~inv"),
            replay_log: format!("{namespace}:~replayed"),
            command_timeout,
            ping_interval,
            echo_timeout: (ping_interval * 3).max(Duration::from_millis(300)),
            connected: AtomicBool::new(false),
            gap_since: Mutex::new(None),
            received: AtomicU64::new(0),
            published: AtomicU64::new(0),
            reconciliations: AtomicU64::new(0),
        }
    }

    fn lock_gap(&self) -> std::sync::MutexGuard<'_, Option<SystemTime>> {
        self.gap_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the channel is known to work (a ping echoed since the last gap began).
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn status(&self) -> BackplaneStatus {
        BackplaneStatus {
            connected: self.is_connected(),
            published: self.published.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            reconciliations: self.reconciliations.load(Ordering::Relaxed),
        }
    }

    /// Tells the other instances about an invalidation that reached Redis.
    pub(crate) async fn publish(&self, inner: &Inner, inv: &Invalidation) -> Result<(), Error> {
        self.send(inner, to_wire(inv)).await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Appends journaled invalidations about to be replayed to the replay log.
    pub(crate) async fn log_replay(
        &self,
        inner: &Inner,
        invalidations: &[Invalidation],
    ) -> Result<(), Error> {
        let Some(redis) = inner.redis.as_ref() else {
            return Ok(());
        };
        let messages = invalidations
            .iter()
            .map(|inv| {
                encode(&Message {
                    from: self.id,
                    body: to_wire(inv),
                })
                .map(Bytes::from)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = redis.client();
        let key = self.replay_log.as_str();
        redis
            .maintenance(async {
                client.rpush::<i64, _, _>(key, messages).await?;
                client.ltrim::<(), _>(key, -REPLAY_LOG_LEN, -1).await?;
                client.pexpire::<(), _>(key, REPLAY_LOG_TTL_MS, None).await
            })
            .await
    }

    /// The other instances' replayed invalidations still in the replay log.
    async fn read_replay_log(&self, inner: &Inner) -> Vec<Invalidation> {
        let Some(redis) = inner.redis.as_ref() else {
            return Vec::new();
        };
        let read = redis
            .maintenance(
                redis
                    .client()
                    .lrange::<Vec<Bytes>, _>(self.replay_log.as_str(), 0, -1),
            )
            .await;
        match read {
            Ok(messages) => messages
                .iter()
                .filter_map(|bytes| decode(bytes))
                .filter(|m| m.from != self.id)
                .filter_map(|m| from_wire(m.body))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "replay log unreadable");
                Vec::new()
            }
        }
    }

    async fn send(&self, inner: &Inner, body: Body) -> Result<(), Error> {
        let Some(redis) = inner.redis.as_ref() else {
            return Ok(());
        };
        let bytes = Bytes::from(encode(&Message {
            from: self.id,
            body,
        })?);
        let publish = redis
            .client()
            .publish::<i64, _, _>(self.channel.as_str(), bytes);
        match tokio::time::timeout(self.command_timeout, publish).await {
            Ok(result) => result.map(|_| ()).map_err(Error::from),
            Err(_) => Err(Error::Redis(format!(
                "PUBLISH took longer than {:?}",
                self.command_timeout
            ))),
        }
    }
}

/// Starts the subscriber for `inner`'s backplane; it stops when the cache is dropped.
pub(crate) fn spawn(inner: &std::sync::Arc<Inner>, settings: &RedisSettings) {
    if inner.backplane.is_none() {
        return;
    }
    // Until the first echo, nothing in L1 has been covered by the channel.
    inner.local.distrust_all();
    let subscriber = match subscriber(settings) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "backplane subscriber not built; L1 is revalidated against Redis");
            return;
        }
    };
    tokio::spawn(run(std::sync::Arc::downgrade(inner), subscriber));
}

fn subscriber(settings: &RedisSettings) -> Result<SubscriberClient, Error> {
    let config = Config::from_url(&settings.url).map_err(Error::from)?;
    let mut builder = Builder::from_config(config);
    let delay_ms = u32::try_from(settings.reconnect_delay.as_millis()).unwrap_or(u32::MAX);
    builder.set_policy(ReconnectPolicy::new_constant(0, delay_ms.max(1)));
    builder.with_connection_config(|conn| {
        conn.connection_timeout = settings.connect_timeout;
        conn.internal_command_timeout = settings.connect_timeout;
    });
    builder.build_subscriber_client().map_err(Error::from)
}

/// Why the channel may have lost messages.
fn gap(inner: &Inner, backplane: &Backplane, reason: &str) {
    if backplane.connected.swap(false, Ordering::SeqCst) {
        *backplane.lock_gap() = Some(SystemTime::now());
        tracing::warn!(
            reason,
            "invalidation channel gap: local entries are revalidated against Redis"
        );
    }
    inner.local.distrust_all();
}

/// After an echo on a working subscription: entries written from now on are trusted.
async fn reconcile(inner: &Inner, backplane: &Backplane, first: bool) {
    // A load that read Redis during the gap must not store after this point with a fresh
    // write time: advance the epoch and let stores already past their check land first.
    let in_progress = inner.flights.begin_invalidation(ALL_SHARDS);
    in_progress.stores_landed().await;
    let gap_since = backplane.lock_gap().take();
    let outage = gap_since.is_some_and(|since| was_an_outage(inner, since));
    if outage {
        // What the others replayed while our channel was still down.
        for inv in backplane.read_replay_log(inner).await {
            inner.apply_local(&inv);
        }
        inner.local.trust_all();
    } else {
        inner.local.trust_from_now();
    }
    drop(in_progress);
    backplane.connected.store(true, Ordering::SeqCst);
    if !first {
        backplane.reconciliations.fetch_add(1, Ordering::Relaxed);
        if outage {
            tracing::info!("invalidation channel back after a Redis outage: the outage tier applied to local entries");
        } else {
            tracing::info!("invalidation channel back: entries from before the gap are revalidated on their next read");
        }
    }
}

/// Whether a Redis outage, now over, began within two seconds of the gap: then the gap was
/// the outage, and the outage policy has dealt with the local store.
fn was_an_outage(inner: &Inner, gap_since: SystemTime) -> bool {
    let Some(record) = inner.health.last_outage() else {
        return false;
    };
    let gap_ms = unix_ms(gap_since);
    record.started_at_ms + 2_000 >= gap_ms && record.ended_at_ms >= gap_ms
}

/// The pings sent and not yet echoed.
#[derive(Default)]
struct Pings {
    next: u64,
    /// The oldest ping not echoed yet, and when it was sent.
    oldest_unechoed: Option<(u64, Instant)>,
    /// The first ping sent on the current subscription: only its echo, or a later one,
    /// vouches for the channel (an older one may still arrive from a dropped connection).
    subscribed_from: u64,
}

impl Pings {
    fn subscribed(&mut self, ok: bool) -> bool {
        self.subscribed_from = if ok { self.next } else { u64::MAX };
        self.oldest_unechoed = None;
        ok
    }
}

async fn run(weak: Weak<Inner>, subscriber: SubscriberClient) {
    let _connection = subscriber.connect();
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let mut errors = subscriber.error_rx();
    let Some((channel, interval)) = weak.upgrade().and_then(|inner| {
        inner
            .backplane
            .as_ref()
            .map(|b| (b.channel.clone(), b.ping_interval))
    }) else {
        return;
    };
    let mut subscribed = false;
    let mut ever_connected = false;
    let mut pings = Pings {
        subscribed_from: u64::MAX,
        ..Pings::default()
    };
    // Pings go out every interval; while the channel is not confirmed, much more often, so
    // that a gap ends (and local entries are trusted again) soon after Redis is back.
    let unconfirmed_interval = interval.min(Duration::from_millis(25));
    let mut next_tick = tokio::time::Instant::now();
    loop {
        tokio::select! {
            message = messages.recv() => {
                let Some(inner) = weak.upgrade() else { break };
                let Some(backplane) = inner.backplane.as_ref() else { break };
                match message {
                    Ok(message) => {
                        let Some(bytes) = message.value.as_bytes() else { continue };
                        let Some(message) = decode(bytes) else {
                            tracing::debug!("undecodable backplane message ignored");
                            continue;
                        };
                        if message.from == backplane.id {
                            if let Body::Ping(seq) = message.body {
                                if pings.oldest_unechoed.is_some_and(|(oldest, _)| seq >= oldest) {
                                    pings.oldest_unechoed = None;
                                }
                                if !backplane.is_connected()
                                    && seq >= pings.subscribed_from
                                    && inner.health.allows_requests()
                                {
                                    reconcile(&inner, backplane, !ever_connected).await;
                                    ever_connected = true;
                                }
                            }
                            continue;
                        }
                        if let Some(inv) = from_wire(message.body) {
                            inner.apply_remote(&inv).await;
                            backplane.received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(RecvError::Lagged(n)) => gap(&inner, backplane, &format!("{n} messages lost to a slow reader")),
                    Err(RecvError::Closed) => break,
                }
            }
            event = reconnects.recv() => {
                let Some(inner) = weak.upgrade() else { break };
                let Some(backplane) = inner.backplane.as_ref() else { break };
                if matches!(event, Err(RecvError::Closed)) { break }
                gap(&inner, backplane, "subscriber reconnected");
                subscribed = pings.subscribed(
                    try_subscribe(&subscriber, &channel, backplane.command_timeout * 10).await,
                );
            }
            event = errors.recv() => {
                let Some(inner) = weak.upgrade() else { break };
                let Some(backplane) = inner.backplane.as_ref() else { break };
                if matches!(event, Err(RecvError::Closed)) { break }
                gap(&inner, backplane, "subscriber connection error");
            }
            _ = tokio::time::sleep_until(next_tick) => {
                let Some(inner) = weak.upgrade() else { break };
                let Some(backplane) = inner.backplane.as_ref() else { break };
                next_tick = tokio::time::Instant::now()
                    + if backplane.is_connected() { interval } else { unconfirmed_interval };
                if !inner.health.allows_requests() {
                    // Pings cannot be sent, so the channel cannot be vouched for.
                    gap(&inner, backplane, "Redis unavailable");
                    pings.oldest_unechoed = None;
                    continue;
                }
                if !subscribed {
                    subscribed = pings.subscribed(
                        try_subscribe(&subscriber, &channel, backplane.command_timeout * 10).await,
                    );
                    if !subscribed { continue }
                }
                if let Some((_, sent)) = pings.oldest_unechoed {
                    if sent.elapsed() <= backplane.echo_timeout && !backplane.is_connected() {
                        // Still waiting for the first echo of this subscription.
                        continue;
                    }
                    if sent.elapsed() > backplane.echo_timeout {
                        gap(&inner, backplane, "ping not echoed");
                        pings.oldest_unechoed = None;
                        // A silent connection: make a new one (the reconnect resubscribes).
                        let _ = tokio::time::timeout(backplane.echo_timeout, subscriber.force_reconnection()).await;
                        continue;
                    }
                }
                let seq = pings.next;
                pings.next += 1;
                match backplane.send(&inner, Body::Ping(seq)).await {
                    Ok(()) => {
                        pings.oldest_unechoed.get_or_insert((seq, Instant::now()));
                    }
                    Err(error) => tracing::debug!(%error, "backplane ping not sent"),
                }
            }
        }
    }
    let _ = subscriber.quit().await;
}

async fn try_subscribe(subscriber: &SubscriberClient, channel: &str, deadline: Duration) -> bool {
    match tokio::time::timeout(deadline, subscriber.subscribe(channel)).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::debug!(%error, "backplane subscription failed; retrying");
            false
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_survive_the_wire() {
        let inv = Invalidation::new()
            .key(Key::builder("user:groups:").value("a*b").build())
            .tag(Key::literal("t").expect("valid"))
            .class("sessions")
            .volatile_classes();
        let bytes = encode(&Message {
            from: 7,
            body: to_wire(&inv),
        })
        .expect("encodes");
        let message = decode(&bytes).expect("decodes");
        assert_eq!(message.from, 7);
        assert_eq!(from_wire(message.body), Some(inv));
    }

    #[test]
    fn foreign_bytes_are_ignored() {
        assert!(decode(b"").is_none());
        assert!(decode(b"\x02whatever").is_none());
        assert!(decode(b"\x01\xc1").is_none());
    }
}

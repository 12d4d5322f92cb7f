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
//! time, or Redis itself unusable — until a ping is echoed again on a fresh subscription.
//!
//! **The invalidation log.** Every invalidation is published together with an append to a
//! list in Redis (`<namespace>:~invlog`, one script, stamped with Redis's clock; the last
//! 10,000 for ten minutes after the last), so what a subscriber missed can be read back.
//!
//! Messages lost to a slow reader (a burst beyond fred's buffer) are not a gap: the
//! connection is fine, and the lost messages are read back from the log at once; only if
//! the log cannot tell is it a gap.
//!
//! **The reconciliation rule.** While there is a gap, every L1 entry is suspect: it may have
//! missed an invalidation. A suspect entry is never served while Redis can be asked; the
//! read goes to Redis instead, and the entry is replaced by what Redis holds now. Only while
//! Redis is down is a suspect entry served, as the fallback it is there to be. When the gap
//! ends (an echo on a fresh subscription), whatever the gap was — a killed connection, a
//! Redis outage, a master switch — the instance reads the log from a few seconds before the
//! gap began and applies to its L1 every invalidation the others published since:
//!
//! - if the log reaches back that far, every entry is trusted again: nothing it missed is
//!   left. After an outage the tier policy has also run (recovery flushes the tier's scope
//!   locally and in Redis, and re-applies the recent invalidations Redis may have lost);
//! - if it does not (over 10,000 invalidations, or a gap longer than the log lives), every
//!   entry written before the gap *ended* stays suspect and is revalidated against Redis on
//!   its next read: one Redis read per key, not an origin load.
//!
//! Marking is one atomic store of a watermark, not a sweep, so a gap costs nothing up front.
//!
//! This module keeps the channel's state and talks to Redis; `task` runs the subscriber and
//! applies the rule above; `wire` is the message format.

mod task;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub(crate) use self::task::spawn;
use self::wire::{decode, encode, from_wire, instance_id, to_wire, Body, Message};
use crate::error::Error;
use crate::model::{unix_ms, BackplaneStatus, Invalidation};
use crate::redis::RedisStore;

/// Published invalidations kept in the log: the last ones, for ten minutes after the last.
const LOG_LEN: i64 = 10_000;
const LOG_TTL: Duration = Duration::from_secs(600);
/// How far before a gap the log is read: the log is stamped with Redis's clock, the gap with
/// this host's, and the two may differ a little.
const LOG_CLOCK_MARGIN: Duration = Duration::from_secs(5);

/// One instance's end of the channel: its identity, the channel's state and its counters.
pub(crate) struct Backplane {
    /// This instance's id: messages carrying it are our own echoes.
    id: u64,
    channel: String,
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
    /// Asks the task for a new subscription (see [`Backplane::restart`]).
    restart: tokio::sync::Notify,
}

impl Backplane {
    /// The channel of `namespace`, pinged every `ping_interval`.
    pub(crate) fn new(namespace: &str, command_timeout: Duration, ping_interval: Duration) -> Self {
        Backplane {
            id: instance_id(),
            channel: format!("{namespace}:~inv"),
            command_timeout,
            ping_interval,
            echo_timeout: (ping_interval * 3).max(Duration::from_millis(300)),
            connected: AtomicBool::new(false),
            gap_since: Mutex::new(None),
            received: AtomicU64::new(0),
            published: AtomicU64::new(0),
            reconciliations: AtomicU64::new(0),
            restart: tokio::sync::Notify::new(),
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

    /// Opens a gap now and has the task subscribe anew, as after a Sentinel master switch:
    /// the subscription may be on the demoted master.
    pub(crate) fn restart(&self) {
        self.open_gap();
        self.restart.notify_one();
    }

    async fn restart_requested(&self) {
        self.restart.notified().await;
    }

    /// Marks the start of a gap; true if the channel was connected until now.
    fn open_gap(&self) -> bool {
        let was_connected = self.connected.swap(false, Ordering::SeqCst);
        if was_connected {
            *self.lock_gap() = Some(SystemTime::now());
        }
        was_connected
    }

    /// Ends the gap: the channel is confirmed; returns when the gap began.
    fn close_gap(&self, first: bool) -> Option<SystemTime> {
        let since = self.lock_gap().take();
        self.connected.store(true, Ordering::SeqCst);
        if !first {
            self.reconciliations.fetch_add(1, Ordering::Relaxed);
        }
        since
    }

    /// Tells the other instances about an invalidation that reached Redis, and logs it for
    /// those whose channel is down (see [`Backplane::missed_since`]).
    pub(crate) async fn publish(
        &self,
        redis: &RedisStore,
        inv: &Invalidation,
    ) -> Result<(), Error> {
        let message = Bytes::from(encode(&Message {
            from: self.id,
            body: to_wire(inv),
        })?);
        let log = redis.invalidation_log_key();
        redis
            .publish_logged(&self.channel, &log, message, LOG_LEN, LOG_TTL)
            .await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// What the other instances published since `since`, from the log; `None` if the log
    /// cannot tell (unreadable, or it no longer reaches back that far).
    pub(crate) async fn missed_since(
        &self,
        redis: &RedisStore,
        since: SystemTime,
    ) -> Option<Vec<Invalidation>> {
        if since.elapsed().unwrap_or_default() + LOG_CLOCK_MARGIN >= LOG_TTL {
            return None;
        }
        match redis.read_log(&redis.invalidation_log_key()).await {
            Ok(entries) => missed(&entries, since, self.id),
            Err(error) => {
                tracing::warn!(%error, "invalidation log unreadable");
                None
            }
        }
    }

    async fn send(&self, redis: &RedisStore, body: Body) -> Result<(), Error> {
        let bytes = Bytes::from(encode(&Message {
            from: self.id,
            body,
        })?);
        redis.publish(&self.channel, bytes).await
    }
}

/// The invalidations other than `own_id`'s in the log `entries` (oldest first, each
/// `<unix ms>:<message>`) stamped at or after `since` less [`LOG_CLOCK_MARGIN`]; `None` if
/// the log was trimmed past that point, so that some may be missing.
fn missed(entries: &[Bytes], since: SystemTime, own_id: u64) -> Option<Vec<Invalidation>> {
    let from_ms = unix_ms(since).saturating_sub(LOG_CLOCK_MARGIN.as_millis() as u64);
    let stamped: Vec<(u64, &[u8])> = entries.iter().filter_map(|e| parse_entry(e)).collect();
    let trimmed = entries.len() as i64 >= LOG_LEN;
    if trimmed && !stamped.first().is_some_and(|(at, _)| *at <= from_ms) {
        return None;
    }
    Some(
        stamped
            .into_iter()
            .filter(|(at, _)| *at >= from_ms)
            .filter_map(|(_, message)| decode(message))
            .filter(|m| m.from != own_id)
            .filter_map(|m| from_wire(m.body))
            .collect(),
    )
}

/// `<unix ms>:<message>` → (ms, message).
fn parse_entry(entry: &[u8]) -> Option<(u64, &[u8])> {
    let colon = entry.iter().position(|&b| b == b':')?;
    let at = std::str::from_utf8(&entry[..colon]).ok()?.parse().ok()?;
    Some((at, &entry[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// When the gap began, in Unix milliseconds.
    const GAP_MS: u64 = 1_700_000_000_000;
    const ME: u64 = 1;
    const PEER: u64 = 2;

    fn gap_since() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(GAP_MS)
    }

    fn inv(key: &str) -> Invalidation {
        Invalidation::new().key(crate::key::Key::literal(key).expect("valid"))
    }

    /// A log entry published by `from`, `offset` ms from the gap's start.
    fn entry(offset: i64, from: u64, key: &str) -> Bytes {
        let at = GAP_MS.checked_add_signed(offset).expect("in range");
        let message = encode(&Message {
            from,
            body: to_wire(&inv(key)),
        })
        .expect("encodes");
        let mut bytes = format!("{at}:").into_bytes();
        bytes.extend_from_slice(&message);
        Bytes::from(bytes)
    }

    #[test]
    fn what_the_peers_published_during_the_gap_is_found() {
        let log = [
            entry(-60_000, PEER, "long-before"),
            entry(1_000, PEER, "during"),
            entry(2_000, ME, "mine"),
            entry(3_000, PEER, "later"),
        ];
        assert_eq!(
            missed(&log, gap_since(), ME),
            Some(vec![inv("during"), inv("later")])
        );
    }

    #[test]
    fn the_log_is_read_from_a_little_before_the_gap() {
        // Redis's clock and this host's may differ: a margin before the gap is included.
        let log = [
            entry(
                -(LOG_CLOCK_MARGIN.as_millis() as i64) - 1,
                PEER,
                "too-early",
            ),
            entry(-1_000, PEER, "just-before"),
        ];
        assert_eq!(
            missed(&log, gap_since(), ME),
            Some(vec![inv("just-before")])
        );
    }

    #[test]
    fn an_empty_log_means_nothing_was_missed() {
        assert_eq!(missed(&[], gap_since(), ME), Some(Vec::new()));
    }

    #[test]
    fn a_log_trimmed_past_the_gap_cannot_tell() {
        let full: Vec<Bytes> = (0..LOG_LEN).map(|i| entry(i, PEER, "k")).collect();
        assert_eq!(missed(&full, gap_since(), ME), None);
        // Trimmed, but it still reaches back before the gap: complete.
        let mut reaching: Vec<Bytes> = vec![entry(-10_000, PEER, "old")];
        reaching.extend((1..LOG_LEN).map(|i| entry(i, PEER, "k")));
        assert!(missed(&reaching, gap_since(), ME).is_some());
    }

    #[test]
    fn entries_that_do_not_parse_are_skipped() {
        let log = [
            Bytes::from_static(b"garbage"),
            Bytes::from_static(b"12:\x02nope"),
            entry(1, PEER, "good"),
        ];
        assert_eq!(missed(&log, gap_since(), ME), Some(vec![inv("good")]));
    }

    fn backplane() -> Backplane {
        Backplane::new(
            "test",
            Duration::from_millis(100),
            Duration::from_millis(500),
        )
    }

    fn recorded_gap(backplane: &Backplane) -> Option<SystemTime> {
        *backplane.lock_gap()
    }

    #[test]
    fn a_gap_before_the_first_connection_has_no_start() {
        let backplane = backplane();
        assert!(!backplane.is_connected());
        assert!(!backplane.open_gap(), "never connected");
        assert_eq!(recorded_gap(&backplane), None);
        assert_eq!(backplane.close_gap(true), None);
        assert!(backplane.is_connected());
        assert_eq!(
            backplane.status().reconciliations,
            0,
            "the first connection"
        );
    }

    #[test]
    fn the_first_sign_of_a_gap_records_when_it_began() {
        let backplane = backplane();
        backplane.close_gap(true);
        let before = SystemTime::now();
        assert!(backplane.open_gap());
        let after = SystemTime::now();
        assert!(!backplane.is_connected());
        let since = recorded_gap(&backplane).expect("recorded");
        assert!(before <= since && since <= after);
        // Let the wall clock move on, so that a later start would be told apart.
        while SystemTime::now() <= since {
            std::hint::spin_loop();
        }
        assert!(!backplane.open_gap(), "the same gap");
        assert_eq!(recorded_gap(&backplane), Some(since));
        assert_eq!(backplane.close_gap(false), Some(since));
        assert_eq!(recorded_gap(&backplane), None);
    }

    #[test]
    fn closing_a_gap_after_the_first_connection_counts_a_reconciliation() {
        let backplane = backplane();
        backplane.close_gap(true);
        backplane.open_gap();
        backplane.close_gap(false);
        assert!(backplane.is_connected());
        assert!(backplane.status().connected);
        assert_eq!(backplane.status().reconciliations, 1);
        backplane.open_gap();
        backplane.close_gap(true);
        assert_eq!(backplane.status().reconciliations, 1, "a first connection");
    }
}

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
use crate::model::{unix_ms, BackplaneStatus, Invalidation, OutageRecord};
use crate::redis::RedisStore;

/// Replayed invalidations kept in the replay log: the last ones, for ten minutes.
const REPLAY_LOG_LEN: i64 = 10_000;
const REPLAY_LOG_TTL: Duration = Duration::from_secs(600);

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

    /// Tells the other instances about an invalidation that reached Redis.
    pub(crate) async fn publish(
        &self,
        redis: &RedisStore,
        inv: &Invalidation,
    ) -> Result<(), Error> {
        self.send(redis, to_wire(inv)).await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Appends journaled invalidations about to be replayed to the replay log.
    pub(crate) async fn log_replay(
        &self,
        redis: &RedisStore,
        invalidations: &[Invalidation],
    ) -> Result<(), Error> {
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
        redis
            .append_log(
                &redis.replay_log_key(),
                messages,
                REPLAY_LOG_LEN,
                REPLAY_LOG_TTL,
            )
            .await
    }

    /// The other instances' replayed invalidations still in the replay log.
    pub(crate) async fn read_replay_log(&self, redis: &RedisStore) -> Vec<Invalidation> {
        match redis.read_log(&redis.replay_log_key()).await {
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

    async fn send(&self, redis: &RedisStore, body: Body) -> Result<(), Error> {
        let bytes = Bytes::from(encode(&Message {
            from: self.id,
            body,
        })?);
        redis.publish(&self.channel, bytes).await
    }
}

/// Whether a Redis outage, now over, began within two seconds of a gap that began at
/// `gap_since`: then the gap was the outage, and the outage policy has dealt with the local
/// store.
fn was_an_outage(last_outage: Option<&OutageRecord>, gap_since: SystemTime) -> bool {
    let Some(record) = last_outage else {
        return false;
    };
    let gap_ms = unix_ms(gap_since);
    let began_near_the_gap =
        record.started_at_ms + 2_000 >= gap_ms && record.started_at_ms <= gap_ms + 2_000;
    began_near_the_gap && record.ended_at_ms >= gap_ms
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::model::FlushScope;

    /// When the gap began, in Unix milliseconds.
    const GAP_MS: u64 = 1_700_000_000_000;

    fn gap_since() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(GAP_MS)
    }

    /// An outage from `GAP_MS + started` to `GAP_MS + ended` (milliseconds, may be negative).
    fn outage(started: i64, ended: i64) -> OutageRecord {
        let at = |offset: i64| GAP_MS.checked_add_signed(offset).expect("in range");
        OutageRecord {
            started_at_ms: at(started),
            ended_at_ms: at(ended),
            outage: Duration::from_millis(ended.abs_diff(started)),
            data_age: None,
            scope: FlushScope::Nothing,
            flushed_redis_keys: 0,
            replayed: 0,
            journal_overflowed: false,
        }
    }

    #[test]
    fn an_outage_that_began_just_before_the_gap_and_ended_after_it_was_the_gap() {
        for started in [-2_000, -1_000, 0] {
            assert!(
                was_an_outage(Some(&outage(started, 30_000)), gap_since()),
                "began {started} ms from the gap"
            );
        }
    }

    #[test]
    fn an_outage_that_began_just_after_the_gap_was_the_gap() {
        // The subscriber may notice a dead server before the breaker trips.
        for started in [1, 1_500, 2_000] {
            assert!(
                was_an_outage(Some(&outage(started, 30_000)), gap_since()),
                "began {started} ms after the gap"
            );
        }
    }

    #[test]
    fn an_outage_that_began_well_before_the_gap_was_not_the_gap() {
        assert!(!was_an_outage(Some(&outage(-2_001, 30_000)), gap_since()));
        assert!(!was_an_outage(Some(&outage(-60_000, 30_000)), gap_since()));
    }

    #[test]
    fn an_outage_that_ended_before_the_gap_was_not_the_gap() {
        assert!(!was_an_outage(Some(&outage(-1_500, -1)), gap_since()));
    }

    #[test]
    fn an_outage_that_began_well_after_the_gap_was_not_the_gap() {
        // The channel failed alone first: what it missed before Redis went down is not
        // covered by the outage policy.
        assert!(!was_an_outage(Some(&outage(2_001, 30_000)), gap_since()));
        assert!(!was_an_outage(Some(&outage(60_000, 90_000)), gap_since()));
    }

    #[test]
    fn no_outage_means_the_channel_failed_alone() {
        assert!(!was_an_outage(None, gap_since()));
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

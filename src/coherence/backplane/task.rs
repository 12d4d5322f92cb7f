//! The subscriber task: applies what the other instances publish, pings itself to prove the
//! channel works, and opens and closes gaps by the reconciliation rule (see the module docs
//! of `backplane`).
//!
//! It holds a `Weak<Core>`, the invalidator and the channel's state, and stops when the last
//! cache handle is dropped.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use tracing::Instrument;

use super::wire::{decode, from_wire, Body};
use super::Backplane;
use crate::coherence::invalidator::Invalidator;
use crate::core::{Core, ALL_SHARDS};
use crate::model::CacheEvent;
use crate::redis::{RedisSettings, Subscriber, SubscriberEvent};

/// Starts the subscriber of `invalidator`'s backplane, if it has one.
pub(crate) fn spawn(core: &Arc<Core>, invalidator: &Arc<Invalidator>, settings: &RedisSettings) {
    let Some(backplane) = invalidator.backplane().cloned() else {
        return;
    };
    // Until the first echo, nothing in the local store has been covered by the channel.
    core.distrust_local();
    let subscriber = match Subscriber::connect(settings) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "backplane subscriber not built; local entries are revalidated against Redis");
            return;
        }
    };
    let task = Task {
        core: Arc::downgrade(core),
        invalidator: Arc::clone(invalidator),
        backplane,
        pings: Pings::new(),
        ever_connected: false,
        caught_up_at: None,
    };
    tokio::spawn(task.run(subscriber));
}

struct Task {
    core: Weak<Core>,
    invalidator: Arc<Invalidator>,
    backplane: Arc<Backplane>,
    pings: Pings,
    ever_connected: bool,
    /// When the reader last had every message fred received: messages lost to a lag arrived
    /// after it (see [`Task::lagged`]).
    caught_up_at: Option<SystemTime>,
}

impl Task {
    async fn run(mut self, mut subscriber: Subscriber) {
        let interval = self.backplane.ping_interval;
        // Pings go out every interval; while the channel is not confirmed, much more often,
        // so that a gap ends (and local entries are trusted again) soon after Redis is back.
        let unconfirmed_interval = interval.min(Duration::from_millis(25));
        let subscribe_deadline = self.backplane.command_timeout * 10;
        let mut subscribed = false;
        let mut next_tick = tokio::time::Instant::now();
        loop {
            tokio::select! {
                event = subscriber.next_event() => {
                    let Some(core) = self.core.upgrade() else { break };
                    match event {
                        SubscriberEvent::Message(bytes) => {
                            self.note_caught_up(&subscriber);
                            self.on_message(&core, &bytes).await;
                        }
                        SubscriberEvent::Lagged(n) => self.lagged(&core, n).await,
                        SubscriberEvent::Reconnected => {
                            self.gap(&core, "subscriber reconnected");
                            let ok = subscriber.subscribe(&self.backplane.channel, subscribe_deadline).await;
                            subscribed = self.pings.subscribed(ok);
                        }
                        SubscriberEvent::Failed => self.gap(&core, "subscriber connection error"),
                        SubscriberEvent::Closed => break,
                    }
                }
                _ = self.backplane.restart_requested() => {
                    let Some(core) = self.core.upgrade() else { break };
                    self.restart(&core, &subscriber).await;
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    let Some(core) = self.core.upgrade() else { break };
                    self.note_caught_up(&subscriber);
                    let connected = self.backplane.is_connected();
                    next_tick = tokio::time::Instant::now()
                        + if connected { interval } else { unconfirmed_interval };
                    if !core.breaker().allows_requests() {
                        // Pings cannot be sent, so the channel cannot be vouched for.
                        self.gap(&core, "Redis unavailable");
                        self.pings.lost();
                        continue;
                    }
                    if !subscribed {
                        let ok = subscriber.subscribe(&self.backplane.channel, subscribe_deadline).await;
                        subscribed = self.pings.subscribed(ok);
                        if !subscribed { continue }
                    }
                    match self.pings.due(Instant::now(), self.backplane.echo_timeout, connected) {
                        Due::Wait => {}
                        Due::Overdue => {
                            self.gap(&core, "ping not echoed");
                            self.pings.lost();
                            // A silent connection: make a new one (the reconnect resubscribes).
                            subscriber.force_reconnection(self.backplane.echo_timeout).await;
                        }
                        Due::Send => self.ping(&core).await,
                    }
                }
            }
        }
        subscriber.quit().await;
    }

    async fn on_message(&mut self, core: &Core, bytes: &[u8]) {
        let Some(message) = decode(bytes) else {
            tracing::debug!("undecodable backplane message ignored");
            return;
        };
        if message.from == self.backplane.id {
            if let Body::Ping(seq) = message.body {
                if let Some(took) = self.pings.round_trip(seq, Instant::now()) {
                    core.stats().telemetry().propagated(took);
                }
                if self.pings.echoed(seq)
                    && !self.backplane.is_connected()
                    && core.breaker().allows_requests()
                {
                    let span = tracing::info_span!(
                        "stormcache.reconcile",
                        cache.namespace = core.namespace(),
                    );
                    self.reconcile(core).instrument(span).await;
                }
            }
            return;
        }
        if let Some(inv) = from_wire(message.body) {
            self.invalidator.apply_from_peer(core, &inv).await;
            self.backplane
                .received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    async fn ping(&mut self, core: &Core) {
        let Some(redis) = core.redis_always() else {
            return;
        };
        let seq = self.pings.next();
        match self.backplane.send(redis, Body::Ping(seq)).await {
            Ok(()) => self.pings.sent(seq, Instant::now()),
            Err(error) => tracing::debug!(%error, "backplane ping not sent"),
        }
    }

    /// Records that the reader is caught up, if it is (nothing waits in fred's buffer).
    fn note_caught_up(&mut self, subscriber: &Subscriber) {
        // The time is taken before the buffer is looked at: every message that arrived
        // before it was read by then.
        let now = SystemTime::now();
        if subscriber.caught_up() {
            self.caught_up_at = Some(now);
        }
    }

    /// `lost` messages overflowed fred's buffer while this task was applying earlier ones.
    ///
    /// That is not a broken connection: what the other instances published is all in the
    /// invalidation log, so the lost ones are read back from it and applied, and the local
    /// store stays trusted. Only if the log cannot tell (trimmed past that point, unreadable)
    /// is it a gap, with every local entry revalidated.
    ///
    /// Read from when? The lost messages were not in the buffer when the reader was last
    /// caught up (it had read all that were), so they arrived after `caught_up_at`; and a
    /// message arrives a network hop after Redis stamped it in the log, since fred's reader
    /// runs on its own task and never waits for this one. The log is read from
    /// `caught_up_at` less its clock margin (5 s, far above such a hop plus the clocks'
    /// skew). Not from when the last message before the lag was *read*: that message may
    /// have sat in the buffer behind thousands of others, each applied within a deadline
    /// but all together for longer than the margin. `caught_up_at` stays recent while the
    /// channel is healthy: this task's own pings echo every interval, and each await in its
    /// loop is bounded by a deadline, so it comes back to the buffer soon enough.
    async fn lagged(&mut self, core: &Core, lost: u64) {
        // Our own echoes may be among the lost: an unechoed ping here is not a silent channel.
        self.pings.lost();
        let since = match self.caught_up_at {
            Some(since) if self.backplane.is_connected() => since,
            // In a gap already, or never caught up: the gap's reconciliation covers it.
            _ => {
                self.gap(core, &format!("{lost} messages lost to a slow reader"));
                return;
            }
        };
        // As in a reconciliation: a load that read before the catch-up must not store after
        // it, and stores already past their check land before it.
        let in_progress = core.flights().begin_invalidation(ALL_SHARDS);
        in_progress.stores_landed().await;
        if self.invalidator.catch_up_since(core, since).await {
            tracing::info!(
                lost,
                "invalidation messages lost to a slow reader were applied from the log"
            );
        } else {
            self.gap(
                core,
                &format!("{lost} messages lost to a slow reader, and the log cannot tell which"),
            );
        }
        drop(in_progress);
    }

    /// The channel may have lost messages: every local entry is suspect from now on.
    fn gap(&self, core: &Core, reason: &str) {
        if self.backplane.open_gap() {
            core.stats().telemetry().backplane_gap();
            core.events().emit(|| CacheEvent::GapOpened {
                reason: reason.to_owned(),
            });
            tracing::warn!(
                reason,
                "invalidation channel gap: local entries are revalidated against Redis"
            );
        }
        core.distrust_local();
    }

    /// After an echo on a working subscription: what the other instances published during
    /// the gap is applied from the invalidation log, and the local store is trusted again —
    /// all of it if the log covered the gap, otherwise only what is written from now on.
    async fn reconcile(&mut self, core: &Core) {
        // A load that read Redis during the gap must not store after this point with a fresh
        // write time: advance the epoch and let stores already past their check land first.
        let in_progress = core.flights().begin_invalidation(ALL_SHARDS);
        in_progress.stores_landed().await;
        let gap_since = self.backplane.lock_gap().as_ref().copied();
        let covered = match gap_since {
            Some(since) => self.invalidator.catch_up_since(core, since).await,
            // Never connected before: entries from before the first echo were never covered.
            None => false,
        };
        if covered {
            core.trust_local();
        } else {
            core.trust_local_from_now();
        }
        drop(in_progress);
        let first = !self.ever_connected;
        self.ever_connected = true;
        self.backplane.close_gap(first);
        if !first {
            core.events()
                .emit(|| CacheEvent::GapClosed { caught_up: covered });
            if covered {
                tracing::info!(
                    "invalidation channel back: what it missed was applied from the log"
                );
            } else {
                tracing::info!("invalidation channel back, the log does not cover the gap: entries from before it are revalidated on their next read");
            }
        }
    }

    /// Sentinel switched masters: the subscription may be on the demoted master, whose
    /// messages the others no longer see. A gap until a new subscription echoes.
    async fn restart(&mut self, core: &Core, subscriber: &Subscriber) {
        self.gap(core, "Redis master switched");
        self.pings.lost();
        subscriber
            .force_reconnection(self.backplane.echo_timeout)
            .await;
    }
}

/// What the ping schedule asks for at a tick.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// Waiting for the first echo on this subscription.
    Wait,
    /// A ping went unechoed for too long: the channel has a gap.
    Overdue,
    /// Send the next ping.
    Send,
}

/// The pings sent and not yet echoed.
#[derive(Debug)]
struct Pings {
    next: u64,
    /// The oldest ping not echoed yet, and when it was sent.
    oldest_unechoed: Option<(u64, Instant)>,
    /// The first ping sent on the current subscription: only its echo, or a later one,
    /// vouches for the channel (an older one may still arrive from a dropped connection).
    subscribed_from: u64,
}

impl Pings {
    fn new() -> Self {
        Pings {
            next: 0,
            oldest_unechoed: None,
            subscribed_from: u64::MAX,
        }
    }

    /// A (re)subscription happened (`ok`) or failed; returns `ok`.
    fn subscribed(&mut self, ok: bool) -> bool {
        self.subscribed_from = if ok { self.next } else { u64::MAX };
        self.oldest_unechoed = None;
        ok
    }

    /// The pings in flight will not be echoed (Redis unusable, connection replaced).
    fn lost(&mut self) {
        self.oldest_unechoed = None;
    }

    /// The sequence number of the next ping.
    fn next(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        seq
    }

    /// Ping `seq` went out at `at`.
    fn sent(&mut self, seq: u64, at: Instant) {
        self.oldest_unechoed.get_or_insert((seq, at));
    }

    /// How long ping `seq` took to come back, if it is the one whose sending time is kept.
    fn round_trip(&self, seq: u64, now: Instant) -> Option<Duration> {
        self.oldest_unechoed
            .filter(|(oldest, _)| *oldest == seq)
            .map(|(_, sent)| now.saturating_duration_since(sent))
    }

    /// Ping `seq` came back; true if it vouches for the current subscription.
    fn echoed(&mut self, seq: u64) -> bool {
        if self
            .oldest_unechoed
            .is_some_and(|(oldest, _)| seq >= oldest)
        {
            self.oldest_unechoed = None;
        }
        seq >= self.subscribed_from
    }

    fn due(&self, now: Instant, echo_timeout: Duration, connected: bool) -> Due {
        match self.oldest_unechoed {
            Some((_, sent)) if now.saturating_duration_since(sent) > echo_timeout => Due::Overdue,
            Some(_) if !connected => Due::Wait,
            _ => Due::Send,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO_TIMEOUT: Duration = Duration::from_secs(3);

    /// Sends the next ping at `at`; its sequence number.
    fn send(pings: &mut Pings, at: Instant) -> u64 {
        let seq = pings.next();
        pings.sent(seq, at);
        seq
    }

    #[test]
    fn an_echo_of_a_ping_from_before_the_subscription_does_not_vouch() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        assert!(pings.subscribed(true));
        let old = send(&mut pings, t0);
        // The connection was replaced: the old ping may still come back on the old one.
        assert!(pings.subscribed(true));
        let new = send(&mut pings, t0);
        assert!(!pings.echoed(old));
        assert!(pings.echoed(new));
    }

    #[test]
    fn an_echo_of_a_later_ping_vouches_too() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        assert!(pings.subscribed(true));
        send(&mut pings, t0);
        let later = send(&mut pings, t0);
        assert!(pings.echoed(later));
    }

    #[test]
    fn a_failed_subscription_vouches_for_nothing() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        let before_any = send(&mut pings, t0);
        assert!(!pings.echoed(before_any), "not subscribed yet");
        assert!(pings.subscribed(true));
        let vouching = send(&mut pings, t0);
        assert!(!pings.subscribed(false));
        let after = send(&mut pings, t0);
        assert!(!pings.echoed(vouching));
        assert!(!pings.echoed(after));
    }

    #[test]
    fn the_first_ping_is_awaited_until_the_channel_is_confirmed() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        pings.subscribed(true);
        assert_eq!(pings.due(t0, ECHO_TIMEOUT, false), Due::Send);
        send(&mut pings, t0);
        let soon = t0 + ECHO_TIMEOUT / 2;
        assert_eq!(pings.due(soon, ECHO_TIMEOUT, false), Due::Wait);
        assert_eq!(
            pings.due(soon, ECHO_TIMEOUT, true),
            Due::Send,
            "a confirmed channel keeps pinging"
        );
    }

    #[test]
    fn a_ping_unechoed_past_the_echo_timeout_is_overdue() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        pings.subscribed(true);
        send(&mut pings, t0);
        let late = t0 + ECHO_TIMEOUT + Duration::from_millis(1);
        assert_eq!(pings.due(late, ECHO_TIMEOUT, false), Due::Overdue);
        assert_eq!(pings.due(late, ECHO_TIMEOUT, true), Due::Overdue);
    }

    #[test]
    fn the_echo_timeout_runs_from_the_oldest_unechoed_ping() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        pings.subscribed(true);
        send(&mut pings, t0);
        send(&mut pings, t0 + ECHO_TIMEOUT / 2);
        let late = t0 + ECHO_TIMEOUT + Duration::from_millis(1);
        assert_eq!(pings.due(late, ECHO_TIMEOUT, true), Due::Overdue);
    }

    #[test]
    fn lost_pings_are_no_longer_awaited() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        pings.subscribed(true);
        send(&mut pings, t0);
        pings.lost();
        let late = t0 + 2 * ECHO_TIMEOUT;
        assert_eq!(pings.due(late, ECHO_TIMEOUT, false), Due::Send);
    }

    #[test]
    fn a_new_subscription_no_longer_awaits_pings_in_flight() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        pings.subscribed(true);
        send(&mut pings, t0);
        pings.subscribed(true);
        let late = t0 + 2 * ECHO_TIMEOUT;
        assert_eq!(pings.due(late, ECHO_TIMEOUT, false), Due::Send);
    }

    #[test]
    fn an_echo_of_a_later_ping_clears_an_older_pending_one() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        pings.subscribed(true);
        send(&mut pings, t0);
        let later = send(&mut pings, t0 + Duration::from_millis(10));
        pings.echoed(later);
        let late = t0 + 2 * ECHO_TIMEOUT;
        assert_eq!(pings.due(late, ECHO_TIMEOUT, false), Due::Send);
    }

    #[test]
    fn an_echo_of_an_earlier_ping_leaves_a_pending_one_pending() {
        let t0 = Instant::now();
        let mut pings = Pings::new();
        pings.subscribed(true);
        let unsent = pings.next(); // its publish failed
        send(&mut pings, t0);
        pings.echoed(unsent);
        let late = t0 + 2 * ECHO_TIMEOUT;
        assert_eq!(pings.due(late, ECHO_TIMEOUT, false), Due::Overdue);
    }
}

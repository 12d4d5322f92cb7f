//! The tracking task: applies what Redis reports, keeps every master tracking, and opens
//! and closes gaps (see the module docs of `tracking`).
//!
//! It holds a `Weak<Core>`, the invalidator and the shared state, and stops when the last
//! cache handle is dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Tracking;
use crate::coherence::invalidator::Invalidator;
use crate::core::{Core, ALL_SHARDS};
use crate::error::RedisErrorKind;
use crate::key::Key;
use crate::model::{CacheEvent, Invalidation};
use crate::redis::{Armed, RedisSettings, Tracker, TrackerEvent};

/// Starts the tracking task of `invalidator`'s tracking state, if it has one. `classes` are
/// the names of the cache's classes: one prefix is tracked per class.
pub(crate) fn spawn(
    core: &Arc<Core>,
    invalidator: &Arc<Invalidator>,
    settings: &RedisSettings,
    classes: Vec<String>,
) {
    let Some(tracking) = invalidator.tracking().cloned() else {
        return;
    };
    // Until the first arming, no change to Redis would have been seen.
    core.untrack_local();
    let namespace_prefix = format!("{}:", core.namespace());
    let prefixes = classes
        .iter()
        .map(|class| format!("{namespace_prefix}{class}:"))
        .collect();
    let tracker = match Tracker::connect(settings, prefixes) {
        Ok(t) => t,
        Err(error) => {
            tracing::warn!(%error, "client tracking not started; local entries are revalidated against Redis");
            return;
        }
    };
    let task = Task {
        core: Arc::downgrade(core),
        invalidator: Arc::clone(invalidator),
        tracking,
        namespace_prefix,
        ever_armed: false,
    };
    tokio::spawn(task.run(tracker));
}

struct Task {
    core: Weak<Core>,
    invalidator: Arc<Invalidator>,
    tracking: Arc<Tracking>,
    /// `ns:`.
    namespace_prefix: String,
    ever_armed: bool,
}

impl Task {
    async fn run(mut self, mut tracker: Tracker) {
        let interval = self.tracking.check_interval;
        // While not armed, check much more often, so that local entries are trusted again
        // soon after the connections are back.
        let unarmed_interval = interval.min(Duration::from_millis(25));
        // Arming is a maintenance step, off the request path: a few command deadlines.
        let deadline = (self.tracking.command_timeout * 5).max(Duration::from_millis(300));
        let mut next_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                event = tracker.next_event() => {
                    let Some(core) = self.core.upgrade() else { break };
                    match event {
                        TrackerEvent::Keys(keys) => self.apply(&core, &keys).await,
                        TrackerEvent::Lagged(lost) => {
                            self.gap(&core, &format!("{lost} tracking reports lost to a slow reader"));
                            next_check = tokio::time::Instant::now();
                        }
                        // Not a gap by itself: fred also reports the first connection,
                        // and a connection that was lost reported an error first. Whether
                        // this one tracks is checked at once; a new one does not, and that
                        // check opens the gap.
                        TrackerEvent::Reconnected => next_check = tokio::time::Instant::now(),
                        TrackerEvent::Failed => self.gap(&core, "tracking connection error"),
                        TrackerEvent::Closed => break,
                    }
                }
                _ = self.tracking.restart.notified() => {
                    let Some(core) = self.core.upgrade() else { break };
                    self.gap(&core, "Redis master switched");
                    tracker.force_reconnection(deadline).await;
                }
                _ = tokio::time::sleep_until(next_check) => {
                    let Some(core) = self.core.upgrade() else { break };
                    next_check = tokio::time::Instant::now()
                        + if self.tracking.is_armed() { interval } else { unarmed_interval };
                    match tracker.ensure_armed(deadline).await {
                        Ok(Armed::Already) if self.tracking.is_armed() => {}
                        Ok(Armed::Now) => {
                            // A connection that did not track: what changed before it was
                            // armed was not reported.
                            self.gap(&core, "tracking connection replaced");
                            self.resume(&core).await;
                        }
                        // Armed all along after a sign of trouble: every change from here
                        // on is reported.
                        Ok(Armed::Already) => self.resume(&core).await,
                        Err(error) => {
                            self.gap(&core, &format!("tracking check failed: {error}"));
                            if error.redis_kind() == Some(RedisErrorKind::Timeout) {
                                // A silent connection: make a new one.
                                tracker.force_reconnection(deadline).await;
                            }
                        }
                    }
                }
            }
        }
        tracker.quit().await;
    }

    /// Removes the local copies of the entries among `keys` (full Redis keys).
    async fn apply(&self, core: &Core, keys: &[String]) {
        let mut inv = Invalidation::new();
        let mut count = 0;
        for full_key in keys {
            if let Some(key) = entry_key(&self.namespace_prefix, full_key, |c| core.declares(c)) {
                inv = inv.key(key);
                count += 1;
            }
        }
        if count == 0 {
            return;
        }
        // As a peer's key invalidation: fenced loads, a second removal after racing stores.
        self.invalidator.apply_from_peer(core, &inv).await;
        self.tracking.keys.fetch_add(count, Ordering::Relaxed);
    }

    /// Tracking may have missed changes: every local entry is suspect from now on.
    fn gap(&self, core: &Core, reason: &str) {
        if self.tracking.armed.swap(false, Ordering::SeqCst) {
            core.events().emit(|| CacheEvent::GapOpened {
                reason: format!("client tracking: {reason}"),
            });
            tracing::warn!(
                reason,
                "client tracking interrupted: local entries are revalidated against Redis"
            );
        }
        core.untrack_local();
    }

    /// Every master tracks again: entries written from now on are trusted.
    async fn resume(&mut self, core: &Core) {
        // A load that read Redis before the arming must not store after it with a fresh
        // write time: advance the epoch and let stores already past their check land first.
        let in_progress = core.flights().begin_invalidation(ALL_SHARDS);
        in_progress.stores_landed().await;
        core.track_local_from_now();
        drop(in_progress);
        if self.ever_armed {
            self.tracking.rearms.fetch_add(1, Ordering::Relaxed);
            core.events()
                .emit(|| CacheEvent::GapClosed { caught_up: false });
            tracing::info!("client tracking armed again; entries from before are revalidated on their next read");
        }
        self.ever_armed = true;
        self.tracking.armed.store(true, Ordering::SeqCst);
    }
}

/// The entry key (`class:key` after the namespace prefix `ns:`) that `full_key` names, if it
/// names one of a class `declared` accepts.
fn entry_key(
    namespace_prefix: &str,
    full_key: &str,
    declared: impl Fn(&str) -> bool,
) -> Option<Key> {
    let rest = full_key.strip_prefix(namespace_prefix)?;
    let (class, key) = rest.split_once(':')?;
    if key.is_empty() || !declared(class) {
        return None;
    }
    Some(Key::from_escaped(key.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(full_key: &str) -> Option<String> {
        entry_key("ns:", full_key, |c| matches!(c, "default" | "resources"))
            .map(|k| k.as_str().to_owned())
    }

    #[test]
    fn entry_keys_map_back_to_their_key() {
        assert_eq!(parse("ns:resources:doc:1").as_deref(), Some("doc:1"));
        assert_eq!(parse("ns:default:a").as_deref(), Some("a"));
    }

    #[test]
    fn other_keys_are_ignored() {
        assert_eq!(parse("ns:~hb"), None, "internal key");
        assert_eq!(parse("ns:~tag:t"), None, "tag set");
        assert_eq!(parse("ns:unknown:k"), None, "undeclared class");
        assert_eq!(parse("other:resources:k"), None, "another namespace");
        assert_eq!(parse("ns:resources:"), None, "no key");
    }
}

//! The invalidator's ordering rules, over an in-memory stand-in for Redis and the channel.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use super::*;
use crate::core::{self, Breaker};
use crate::error::RedisErrorKind;
use crate::model::{Classes, EntryOptions};
use crate::store::{LocalCapacity, LocalKey, LocalStore, MessagePack};

/// What the fake remote was asked to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Remove(Invalidation),
    Publish(Invalidation),
}

/// Redis and the channel in memory: records every call, fails when told to.
struct FakeRemote<'a> {
    configured: bool,
    steps: RefCell<Vec<Step>>,
    removes: Cell<usize>,
    /// `remove` fails from this call on (0-based).
    fail_removes_from: Cell<Option<usize>>,
    fail_publish: Cell<bool>,
    /// What `remove` reports as removed.
    removed: u64,
    /// What `missed_since` answers.
    missed: Option<Vec<Invalidation>>,
    /// Runs at the start of each `remove`.
    on_remove: Option<Box<dyn Fn() + 'a>>,
}

impl<'a> FakeRemote<'a> {
    fn new() -> Self {
        FakeRemote {
            configured: true,
            steps: RefCell::new(Vec::new()),
            removes: Cell::new(0),
            fail_removes_from: Cell::new(None),
            fail_publish: Cell::new(false),
            removed: 2,
            missed: Some(Vec::new()),
            on_remove: None,
        }
    }

    fn failing_removes(self) -> Self {
        self.fail_removes_from.set(Some(0));
        self
    }

    fn on_remove(mut self, hook: impl Fn() + 'a) -> Self {
        self.on_remove = Some(Box::new(hook));
        self
    }

    fn steps(&self) -> Vec<Step> {
        self.steps.borrow().clone()
    }
}

fn redis_error() -> Error {
    Error::Redis {
        kind: RedisErrorKind::Connection,
        message: "fake remote told to fail".into(),
    }
}

impl Remote for FakeRemote<'_> {
    fn configured(&self) -> bool {
        self.configured
    }

    async fn remove(&self, inv: &Invalidation) -> Result<u64, Error> {
        if let Some(hook) = &self.on_remove {
            hook();
        }
        self.steps.borrow_mut().push(Step::Remove(inv.clone()));
        let n = self.removes.get();
        self.removes.set(n + 1);
        match self.fail_removes_from.get() {
            Some(from) if n >= from => Err(redis_error()),
            _ => Ok(self.removed),
        }
    }

    async fn publish(&self, inv: &Invalidation) -> Result<(), Error> {
        self.steps.borrow_mut().push(Step::Publish(inv.clone()));
        if self.fail_publish.get() {
            Err(redis_error())
        } else {
            Ok(())
        }
    }

    async fn missed_since(&self, _since: std::time::SystemTime) -> Option<Vec<Invalidation>> {
        self.missed.clone()
    }
}

/// A core with a local store and no Redis; its breaker starts down, as a real one does.
fn core() -> Core {
    Core::new(core::Parts {
        namespace: Arc::from("test"),
        classes: Classes::new(vec![], Duration::from_secs(300)).expect("classes"),
        local: LocalStore::new(LocalCapacity::Entries(1000)),
        redis: None,
        codec: Arc::new(MessagePack),
        compress_above: None,
        breaker: Breaker::new(3),
        command_timeout: Duration::from_millis(100),
        events: core::Events::default(),
    })
}

/// A core whose breaker lets requests through to "Redis".
fn healthy_core() -> Core {
    let core = core();
    assert!(core.breaker().set_recovering());
    core.breaker().set_healthy(None);
    core
}

fn invalidator() -> Invalidator {
    Invalidator::new(Journal::new(100, None), None)
}

fn key(name: &str) -> Key {
    Key::literal(name).expect("valid key")
}

fn inv(name: &str) -> Invalidation {
    Invalidation::new().key(key(name))
}

/// Puts `name` in the local store.
async fn put(core: &Core, name: &str) -> LocalKey {
    let local_key = core
        .local_key(key(name), &EntryOptions::new())
        .expect("the default class");
    let shape = core.shape(
        local_key.class,
        &EntryOptions::new().ttl(Duration::from_secs(60)),
    );
    core.store(&local_key, None, &7u32, &shape, &[], 0).await;
    assert!(cached(core, &local_key), "stored");
    local_key
}

fn cached(core: &Core, key: &LocalKey) -> bool {
    core.lookup::<u32>(key).is_some()
}

// invalidate

#[tokio::test]
async fn the_local_store_is_cleaned_before_redis_is_asked() {
    let core = healthy_core();
    let a = put(&core, "a").await;
    let cached_at_remove = RefCell::new(Vec::new());
    let remote = FakeRemote::new().on_remove(|| {
        cached_at_remove.borrow_mut().push(cached(&core, &a));
    });
    invalidator()
        .invalidate_via(&core, &remote, &inv("a"), || {})
        .await;
    assert_eq!(*cached_at_remove.borrow(), [false]);
}

#[tokio::test]
async fn peers_are_told_after_redis() {
    let core = healthy_core();
    let remote = FakeRemote::new();
    invalidator()
        .invalidate_via(&core, &remote, &inv("a"), || {})
        .await;
    assert_eq!(
        remote.steps(),
        [Step::Remove(inv("a")), Step::Publish(inv("a"))]
    );
}

#[tokio::test]
async fn a_failed_remove_is_not_published() {
    let core = healthy_core();
    let remote = FakeRemote::new().failing_removes();
    invalidator()
        .invalidate_via(&core, &remote, &inv("a"), || {})
        .await;
    assert_eq!(remote.steps(), [Step::Remove(inv("a"))]);
}

#[tokio::test]
async fn an_applied_invalidation_is_remembered_not_journaled() {
    let core = healthy_core();
    let a = put(&core, "a").await;
    let invalidator = invalidator();
    let report = invalidator
        .invalidate_via(&core, &FakeRemote::new(), &inv("a"), || {})
        .await;
    assert_eq!(report.redis, RedisOutcome::Applied);
    assert_eq!(report.redis_keys_removed, 2, "what the remote removed");
    assert!(!cached(&core, &a));
    assert_eq!(invalidator.journal().len(), 0);
    assert_eq!(
        invalidator
            .journal()
            .remembered(Duration::from_secs(30), Duration::ZERO)
            .invalidations,
        [inv("a")]
    );
}

#[tokio::test]
async fn an_applied_invalidation_resets_the_breakers_count() {
    let core = healthy_core();
    core.breaker().record_failure("test");
    core.breaker().record_failure("test");
    invalidator()
        .invalidate_via(&core, &FakeRemote::new(), &inv("a"), || {})
        .await;
    core.breaker().record_failure("test");
    core.breaker().record_failure("test");
    assert!(core.breaker().allows_requests());
}

#[tokio::test]
async fn a_failed_remove_journals_and_counts_against_the_breaker() {
    let core = healthy_core();
    let a = put(&core, "a").await;
    let invalidator = invalidator();
    let remote = FakeRemote::new().failing_removes();
    let report = invalidator
        .invalidate_via(&core, &remote, &inv("a"), || {})
        .await;
    assert_eq!(report.redis, RedisOutcome::Journaled { overflowed: false });
    assert_eq!(report.redis_keys_removed, 0);
    assert!(
        !cached(&core, &a),
        "the local store is cleaned all the same"
    );
    assert_eq!(invalidator.journal().len(), 1);
    assert!(invalidator
        .journal()
        .remembered(Duration::from_secs(30), Duration::ZERO)
        .invalidations
        .is_empty());
    assert_eq!(core.stats().snapshot().redis_errors, 1);
    assert!(core.breaker().allows_requests(), "one failure of three");
    invalidator
        .invalidate_via(&core, &remote, &inv("b"), || {})
        .await;
    invalidator
        .invalidate_via(&core, &remote, &inv("c"), || {})
        .await;
    assert!(!core.breaker().allows_requests(), "three failures in a row");
    assert_eq!(
        invalidator.journal().take().invalidations,
        [inv("a"), inv("b"), inv("c")]
    );
}

#[tokio::test]
async fn a_failed_publish_journals_too() {
    let core = healthy_core();
    let invalidator = invalidator();
    let remote = FakeRemote::new();
    remote.fail_publish.set(true);
    let report = invalidator
        .invalidate_via(&core, &remote, &inv("a"), || {})
        .await;
    assert_eq!(
        remote.steps(),
        [Step::Remove(inv("a")), Step::Publish(inv("a"))]
    );
    assert_eq!(report.redis, RedisOutcome::Journaled { overflowed: false });
    assert_eq!(invalidator.journal().take().invalidations, [inv("a")]);
    assert!(invalidator
        .journal()
        .remembered(Duration::from_secs(30), Duration::ZERO)
        .invalidations
        .is_empty());
}

#[tokio::test]
async fn while_the_breaker_is_down_nothing_is_sent_and_all_is_journaled() {
    let core = core();
    let a = put(&core, "a").await;
    let invalidator = invalidator();
    let remote = FakeRemote::new();
    let report = invalidator
        .invalidate_via(&core, &remote, &inv("a"), || {})
        .await;
    assert!(remote.steps().is_empty());
    assert!(!cached(&core, &a));
    assert_eq!(report.redis, RedisOutcome::Journaled { overflowed: false });
    assert_eq!(invalidator.journal().take().invalidations, [inv("a")]);
}

#[tokio::test]
async fn without_redis_only_the_local_store_is_cleaned() {
    let core = healthy_core();
    let a = put(&core, "a").await;
    let invalidator = invalidator();
    let remote = FakeRemote {
        configured: false,
        ..FakeRemote::new()
    };
    let report = invalidator
        .invalidate_via(&core, &remote, &inv("a"), || {})
        .await;
    assert_eq!(report.redis, RedisOutcome::NotConfigured);
    assert!(remote.steps().is_empty());
    assert!(!cached(&core, &a));
    assert_eq!(invalidator.journal().len(), 0);
}

#[tokio::test]
async fn a_full_journal_reports_the_overflow() {
    let core = core();
    let invalidator = Invalidator::new(Journal::new(1, None), None);
    let remote = FakeRemote::new();
    let first = invalidator
        .invalidate_via(&core, &remote, &inv("a"), || {})
        .await;
    assert_eq!(first.redis, RedisOutcome::Journaled { overflowed: false });
    let second = invalidator
        .invalidate_via(&core, &remote, &inv("b"), || {})
        .await;
    assert_eq!(second.redis, RedisOutcome::Journaled { overflowed: true });
    assert!(invalidator.journal().overflowed());
}

// replay_journal

#[tokio::test]
async fn a_replay_is_applied_and_published_in_journal_order() {
    let invalidator = invalidator();
    for name in ["a", "b", "c"] {
        invalidator.journal().push(inv(name));
    }
    let remote = FakeRemote::new();
    let replayed = invalidator
        .replay_journal_via(&healthy_core(), &remote)
        .await
        .expect("replayed");
    assert_eq!(
        replayed,
        Replayed {
            applied: 3,
            overflowed: false
        }
    );
    assert_eq!(
        remote.steps(),
        [
            Step::Remove(inv("a")),
            Step::Publish(inv("a")),
            Step::Remove(inv("b")),
            Step::Publish(inv("b")),
            Step::Remove(inv("c")),
            Step::Publish(inv("c")),
        ]
    );
    assert_eq!(invalidator.journal().len(), 0);
}

#[tokio::test]
async fn an_empty_journal_replays_nothing() {
    let remote = FakeRemote::new();
    let replayed = invalidator()
        .replay_journal_via(&healthy_core(), &remote)
        .await
        .expect("replayed");
    assert_eq!(replayed, Replayed::default());
    assert!(remote.steps().is_empty());
}

#[tokio::test]
async fn a_replay_reports_an_overflowed_journal() {
    let invalidator = Invalidator::new(Journal::new(1, None), None);
    invalidator.journal().push(inv("a"));
    invalidator.journal().push(inv("b"));
    let replayed = invalidator
        .replay_journal_via(&healthy_core(), &FakeRemote::new())
        .await
        .expect("replayed");
    assert!(replayed.overflowed);
    assert!(!invalidator.journal().overflowed(), "taken by the replay");
}

#[tokio::test]
async fn an_interrupted_replay_puts_the_rest_back_ahead_of_newer_entries() {
    let invalidator = invalidator();
    for name in ["a", "b", "c"] {
        invalidator.journal().push(inv(name));
    }
    // An invalidation journaled while the replay runs (requests still keep off Redis).
    let newer_pushed = Cell::new(false);
    let remote = FakeRemote::new().on_remove(|| {
        if !newer_pushed.replace(true) {
            invalidator.journal().push(inv("newer"));
        }
    });
    remote.fail_removes_from.set(Some(1));
    let result = invalidator
        .replay_journal_via(&healthy_core(), &remote)
        .await;
    assert!(result.is_err());
    assert_eq!(
        remote.steps(),
        [
            Step::Remove(inv("a")),
            Step::Publish(inv("a")),
            Step::Remove(inv("b")),
        ]
    );
    assert_eq!(
        invalidator.journal().take().invalidations,
        [inv("b"), inv("c"), inv("newer")]
    );
}

// flush_after_outage

#[tokio::test]
async fn the_outage_flush_cleans_the_local_store_first() {
    let core = core();
    let a = put(&core, "a").await;
    let cached_at_remove = RefCell::new(Vec::new());
    let remote = FakeRemote::new().on_remove(|| {
        cached_at_remove.borrow_mut().push(cached(&core, &a));
    });
    let everything = Invalidation::new().everything();
    let removed = invalidator()
        .flush_after_outage_via(&core, &remote, everything.clone(), false)
        .await
        .expect("flushed");
    assert_eq!(removed, 2);
    assert_eq!(*cached_at_remove.borrow(), [false]);
    assert_eq!(
        remote.steps(),
        [Step::Remove(everything.clone()), Step::Publish(everything)]
    );
}

#[tokio::test]
async fn a_failed_outage_flush_is_journaled() {
    let core = core();
    let a = put(&core, "a").await;
    let invalidator = invalidator();
    let remote = FakeRemote::new().failing_removes();
    let volatile = Invalidation::new().volatile_classes();
    let result = invalidator
        .flush_after_outage_via(&core, &remote, Invalidation::new().everything(), false)
        .await;
    assert!(result.is_err());
    assert!(
        !cached(&core, &a),
        "the local store is flushed all the same"
    );
    let result = invalidator
        .flush_after_outage_via(&core, &remote, volatile.clone(), false)
        .await;
    assert!(result.is_err());
    let replay = invalidator.journal().take();
    assert_eq!(
        replay.invalidations,
        [Invalidation::new().everything(), volatile]
    );
    assert!(!replay.overflowed);
}

#[tokio::test]
async fn a_failed_flush_after_an_overflow_restores_the_overflow() {
    let core = core();
    let invalidator = invalidator();
    let remote = FakeRemote::new().failing_removes();
    let result = invalidator
        .flush_after_outage_via(&core, &remote, Invalidation::new().everything(), true)
        .await;
    assert!(result.is_err());
    assert!(invalidator.journal().overflowed());
    assert_eq!(invalidator.journal().len(), 0);
}

// reapply_recent, catch_up_since

#[tokio::test]
async fn after_a_failover_recent_invalidations_are_applied_again_in_order() {
    let core = healthy_core();
    let invalidator = invalidator();
    invalidator
        .invalidate_via(&core, &FakeRemote::new(), &inv("a"), || {})
        .await;
    invalidator
        .invalidate_via(&core, &FakeRemote::new(), &inv("b"), || {})
        .await;
    let remote = FakeRemote::new();
    let reapplied = invalidator
        .reapply_via(
            &core,
            &remote,
            invalidator
                .journal()
                .remembered(Duration::from_secs(30), Duration::ZERO),
        )
        .await;
    assert_eq!(
        reapplied,
        Reapplied {
            count: 2,
            complete: true
        }
    );
    assert_eq!(
        remote.steps(),
        [
            Step::Remove(inv("a")),
            Step::Publish(inv("a")),
            Step::Remove(inv("b")),
            Step::Publish(inv("b")),
        ]
    );
    assert_eq!(invalidator.journal().len(), 0);
}

#[tokio::test]
async fn a_failed_reapply_goes_to_the_journal() {
    let core = healthy_core();
    let invalidator = invalidator();
    for name in ["a", "b"] {
        invalidator
            .invalidate_via(&core, &FakeRemote::new(), &inv(name), || {})
            .await;
    }
    let remote = FakeRemote::new();
    remote.fail_removes_from.set(Some(1));
    let reapplied = invalidator
        .reapply_via(
            &core,
            &remote,
            invalidator
                .journal()
                .remembered(Duration::from_secs(30), Duration::ZERO),
        )
        .await;
    assert_eq!(reapplied.count, 1);
    assert_eq!(invalidator.journal().take().invalidations, [inv("b")]);
}

#[tokio::test]
async fn catching_up_applies_what_was_missed_locally_only() {
    let core = healthy_core();
    let a = put(&core, "a").await;
    let b = put(&core, "b").await;
    let remote = FakeRemote {
        missed: Some(vec![inv("a")]),
        ..FakeRemote::new()
    };
    let caught_up = invalidator()
        .catch_up_since_via(&core, &remote, std::time::SystemTime::now())
        .await;
    assert!(caught_up);
    assert!(!cached(&core, &a));
    assert!(cached(&core, &b));
    assert!(remote.steps().is_empty());
}

#[tokio::test]
async fn a_log_that_cannot_tell_is_reported() {
    let core = healthy_core();
    let a = put(&core, "a").await;
    let remote = FakeRemote {
        missed: None,
        ..FakeRemote::new()
    };
    let caught_up = invalidator()
        .catch_up_since_via(&core, &remote, std::time::SystemTime::now())
        .await;
    assert!(!caught_up, "the caller must keep the entries suspect");
    assert!(cached(&core, &a));
}

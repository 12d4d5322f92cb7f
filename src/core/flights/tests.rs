//! The scoped epochs and the per-shard store fence.
//!
//! Scopes hash to 64 shards, so two names may share one; each test picks names whose
//! shards it needs apart (and says so) rather than trusting the hash to spread them.

use std::time::Duration;

use super::*;

fn key(name: &str) -> Key {
    Key::literal(name).expect("valid key")
}

fn local(name: &str, class: ClassId) -> LocalKey {
    LocalKey {
        class,
        key: key(name),
    }
}

/// The first name `prefix<i>` whose scope (as made by `scope`) falls outside `taken`.
fn name_outside(prefix: &str, taken: ShardMask, scope: impl Fn(&Key) -> ShardMask) -> Key {
    (0..1000)
        .map(|i| key(&format!("{prefix}{i}")))
        .find(|k| scope(k) & taken == 0)
        .expect("some name falls in another shard")
}

/// Stands for an invalidation that was made and is done: it moved its shards.
async fn invalidate(flights: &Flights, mask: ShardMask) {
    let in_progress = flights.begin_invalidation(mask);
    in_progress.stores_landed().await;
}

#[tokio::test]
async fn a_tag_invalidation_stops_only_the_loads_carrying_the_tag() {
    let flights = Flights::default();
    let class = 0;
    let tag = key("user:alice");
    let tag_shard = bit(Scope::Tag(&tag));
    let untagged = local(name_outside("key", tag_shard, key_shard).as_str(), class);
    let tagged = local("tagged", class);

    let plain = flights.epoch(&untagged, &[]);
    let carrying = flights.epoch(&tagged, std::slice::from_ref(&tag));
    invalidate(&flights, mask_of(&Invalidation::new().tag(tag), &[])).await;

    assert!(
        flights.begin_store(plain).is_some(),
        "a load the tag cannot reach stores"
    );
    assert!(
        flights.begin_store(carrying).is_none(),
        "a load of an entry carrying the tag may hold what it removed"
    );
}

#[tokio::test]
async fn a_class_invalidation_stops_only_the_loads_of_that_class() {
    let flights = Flights::default();
    let flushed: ClassId = 1;
    let flushed_shard = bit(Scope::Class(flushed));
    let other = (2..100)
        .find(|&c| bit(Scope::Class(c)) & flushed_shard == 0)
        .expect("some class falls in another shard");
    let k = name_outside("key", flushed_shard, key_shard);

    let of_flushed = flights.epoch(&local(k.as_str(), flushed), &[]);
    let of_other = flights.epoch(&local(k.as_str(), other), &[]);
    invalidate(
        &flights,
        mask_of(&Invalidation::new().class("flushed"), &[flushed]),
    )
    .await;

    assert!(flights.begin_store(of_flushed).is_none());
    assert!(flights.begin_store(of_other).is_some());
}

#[tokio::test]
async fn everything_stops_every_load() {
    let flights = Flights::default();
    let epoch = flights.epoch(&local("k", 0), &[]);
    invalidate(&flights, mask_of(&Invalidation::new().everything(), &[])).await;
    assert!(flights.begin_store(epoch).is_none());
}

#[tokio::test]
async fn a_key_invalidation_stops_its_key_in_every_class() {
    let flights = Flights::default();
    let epochs = [0, 1, 2].map(|class| flights.epoch(&local("k", class), &[]));
    invalidate(&flights, mask_of(&Invalidation::new().key(key("k")), &[])).await;
    for epoch in epochs {
        assert!(flights.begin_store(epoch).is_none());
    }
}

#[tokio::test]
async fn a_load_begun_during_an_invalidation_of_its_shards_neither_stores_nor_reads_redis() {
    let flights = Flights::default();
    let k = local("k", 0);
    let in_progress = flights.begin_invalidation_of_redis(mask_of_entry(&k, &[]));
    let during = flights.epoch(&k, &[]);
    assert!(!during.redis_is_current());
    drop(in_progress);
    assert!(flights.begin_store(during).is_none());
    let after = flights.epoch(&k, &[]);
    assert!(after.redis_is_current());
    assert!(flights.begin_store(after).is_some());
}

#[tokio::test]
async fn a_flight_is_joined_only_in_the_same_epoch() {
    let flights = Flights::default();
    let k = local("k", 0);
    let first = flights.epoch(&k, &[]);
    let Join::Leader(_leader) = flights.join(&k, first) else {
        panic!("the first caller leads");
    };
    assert!(matches!(
        flights.join(&k, flights.epoch(&k, &[])),
        Join::Waiter(_)
    ));
    invalidate(&flights, mask_of_entry(&k, &[])).await;
    assert!(matches!(
        flights.join(&k, flights.epoch(&k, &[])),
        Join::Leader(_)
    ));
}

/// A store in progress of key `a`; `a` and `b` are the shards of an invalidation of key `a`
/// and of key `b`, which the store does not sample.
struct OneStore<'a> {
    flights: &'a Flights,
    store: Option<StoreGuard<'a>>,
    a: ShardMask,
    b: ShardMask,
    b_key: LocalKey,
}

fn key_shard(k: &Key) -> ShardMask {
    bit(Scope::Key(k))
}

fn one_store(flights: &Flights) -> OneStore<'_> {
    let a = local("a", 0);
    let b = local(
        name_outside("b", mask_of_entry(&a, &[]), key_shard).as_str(),
        0,
    );
    let store = flights.begin_store(flights.epoch(&a, &[]));
    assert!(store.is_some(), "nothing moved: the store may go ahead");
    OneStore {
        flights,
        store,
        a: key_shard(&a.key),
        b: key_shard(&b.key),
        b_key: b,
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_delays_only_the_invalidations_of_its_own_shards() {
    let flights = Flights::default();
    let mut s = one_store(&flights);

    let elsewhere = s.flights.begin_invalidation(s.b);
    assert!(elsewhere.stores_idle());
    tokio::time::timeout(Duration::from_millis(1), elsewhere.stores_landed())
        .await
        .expect("another shard's store is not waited for");

    let here = s.flights.begin_invalidation(s.a);
    assert!(!here.stores_idle());
    let mut landed = std::pin::pin!(here.stores_landed());
    assert!(
        tokio::time::timeout(Duration::from_secs(1), landed.as_mut())
            .await
            .is_err(),
        "a store past its check lands before its shard's invalidation removes anything"
    );
    drop(s.store.take());
    tokio::time::timeout(Duration::from_millis(1), landed)
        .await
        .expect("the store landed: the invalidation goes ahead");
}

#[tokio::test(start_paused = true)]
async fn a_new_store_never_waits_behind_an_invalidation_waiting_for_an_old_one() {
    let flights = Flights::default();
    let mut s = one_store(&flights);
    // Sampled before the invalidation below, stored while it waits.
    let b_load = s.flights.epoch(&s.b_key, &[]);

    let here = s.flights.begin_invalidation(s.a | s.b);
    let mut landed = std::pin::pin!(here.stores_landed());
    assert!(
        tokio::time::timeout(Duration::from_millis(10), landed.as_mut())
            .await
            .is_err()
    );
    // `begin_store` is not async: it cannot queue behind the waiting invalidation. This one
    // fails its check (the invalidation moved b's shard) and leaves at once.
    assert!(s.flights.begin_store(b_load).is_none());

    let c = local(name_outside("c", s.a | s.b, key_shard).as_str(), 0);
    let c_store = s.flights.begin_store(s.flights.epoch(&c, &[]));
    assert!(
        c_store.is_some(),
        "a shard nobody invalidates stores at once"
    );

    drop(s.store.take());
    tokio::time::timeout(Duration::from_millis(1), landed)
        .await
        .expect("the new store (of another shard) does not hold the invalidation up");
}

#[test]
fn stores_and_invalidations_racing_on_one_shard_never_both_pass() {
    // Many rounds of a store and an invalidation of its shard, started together: either the
    // store fails its check or the invalidation sees it storing.
    let flights = Flights::default();
    let k = local("k", 0);
    let mask = mask_of_entry(&k, &[]);
    for _ in 0..2000 {
        let epoch = flights.epoch(&k, &[]);
        let (stored, idle) = std::thread::scope(|scope| {
            let store = scope.spawn(|| flights.begin_store(epoch).map(std::mem::forget).is_some());
            let inv = scope.spawn(|| {
                let in_progress = flights.begin_invalidation(mask);
                let idle = in_progress.stores_idle();
                std::mem::forget(in_progress);
                idle
            });
            (
                store.join().expect("no panic"),
                inv.join().expect("no panic"),
            )
        });
        assert!(
            !(stored && idle),
            "a store passed its check unseen by the invalidation"
        );
        // Reset: uncount the leaked guard and end the leaked invalidation.
        for shard in flights.shards_in(mask) {
            if stored {
                shard.storing.fetch_sub(1, Ordering::SeqCst);
            }
            shard.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

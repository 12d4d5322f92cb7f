//! The local store's own tests: typed hits, deadlines, and tags and classes reaching entries
//! under concurrency.

use super::*;
use std::sync::Arc;

#[test]
fn tag_invalidation_hides_entries_at_once_under_concurrency() {
    let store = std::sync::Arc::new(LocalStore::new(LocalCapacity::Entries(16)));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = std::sync::Arc::clone(&store);
            std::thread::spawn(move || {
                let mut visible = 0;
                for i in 0..2_000 {
                    let tag = Key::literal(&format!("t{t}-{i}")).expect("valid");
                    let key = lk(0, &format!("k{t}-{i}"));
                    let ttl = Duration::from_secs(60);
                    store.insert(
                        key.clone(),
                        i,
                        ttl,
                        Duration::ZERO,
                        std::slice::from_ref(&tag),
                        0,
                    );
                    store.invalidate_tag(&tag);
                    visible += usize::from(store.get::<i32>(&key).is_some());
                }
                visible
            })
        })
        .collect();
    let visible: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert_eq!(
        visible, 0,
        "entries still visible right after their tag was invalidated"
    );
}

#[test]
fn concurrent_writes_of_one_key_stay_reachable_by_their_tag() {
    // Two writers of the same key with the same tag race: whichever value moka keeps,
    // invalidating the tag afterwards must remove it.
    let store = std::sync::Arc::new(LocalStore::new(LocalCapacity::Entries(16)));
    let tag = Key::literal("user:1").expect("valid");
    let mut survived = 0;
    for round in 0..20_000u32 {
        let key = lk(0, &format!("k{round}"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let writers: Vec<_> = (0..2u32)
            .map(|w| {
                let (store, key, tag) = (std::sync::Arc::clone(&store), key.clone(), tag.clone());
                let barrier = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    store.insert(
                        key,
                        w,
                        Duration::from_secs(60),
                        Duration::ZERO,
                        std::slice::from_ref(&tag),
                        0,
                    );
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        store.invalidate_tag(&tag);
        survived += usize::from(store.get::<u32>(&key).is_some());
    }
    assert_eq!(survived, 0, "values left after their tag was invalidated");
}

fn lk(class: ClassId, key: &str) -> LocalKey {
    LocalKey {
        class,
        key: Key::literal(key).expect("valid key"),
    }
}

#[test]
fn typed_hits_and_type_mismatch_is_a_miss() {
    let store = LocalStore::new(LocalCapacity::Entries(100));
    store.insert(
        lk(0, "a"),
        7u32,
        Duration::from_secs(60),
        Duration::ZERO,
        &[],
        0,
    );
    let hit = store.get::<u32>(&lk(0, "a")).expect("hit");
    assert_eq!(hit.value, 7);
    assert!(!hit.stale);
    assert!(store.get::<String>(&lk(0, "a")).is_none());
    assert!(
        store.get::<u32>(&lk(1, "a")).is_none(),
        "class is part of identity"
    );
}

#[test]
fn tags_and_classes_reach_entries() {
    let store = LocalStore::new(LocalCapacity::Entries(100));
    let tag = Key::literal("user:1").expect("valid");
    let ttl = Duration::from_secs(60);
    store.insert(
        lk(0, "x"),
        1u8,
        ttl,
        Duration::ZERO,
        std::slice::from_ref(&tag),
        0,
    );
    store.insert(
        lk(1, "y"),
        2u8,
        ttl,
        Duration::ZERO,
        std::slice::from_ref(&tag),
        0,
    );
    store.insert(lk(1, "z"), 3u8, ttl, Duration::ZERO, &[], 0);
    store.insert(lk(2, "w"), 4u8, ttl, Duration::ZERO, &[], 0);
    store.invalidate_tag(&tag);
    assert!(store.get::<u8>(&lk(0, "x")).is_none());
    assert!(store.get::<u8>(&lk(1, "y")).is_none());
    assert!(store.get::<u8>(&lk(1, "z")).is_some());
    store.invalidate_class(1);
    assert!(store.get::<u8>(&lk(1, "z")).is_none());
    assert!(store.get::<u8>(&lk(2, "w")).is_some());
}

#[test]
fn a_key_written_again_stays_reachable_by_its_tag() {
    let store = LocalStore::new(LocalCapacity::Entries(100));
    let tag = Key::literal("user:1").expect("valid");
    let ttl = Duration::from_secs(60);
    let tags = std::slice::from_ref(&tag);
    store.insert(lk(0, "x"), 1u8, ttl, Duration::ZERO, tags, 0);
    store.insert(lk(0, "x"), 2u8, ttl, Duration::ZERO, tags, 0);
    // The replaced value's removal is reported now; it must not unindex the new one.
    store.cache.run_pending_tasks();
    store.invalidate_tag(&tag);
    assert!(store.get::<u8>(&lk(0, "x")).is_none());
    // Entries removed otherwise leave the index too.
    store.insert(lk(0, "y"), 3u8, ttl, Duration::ZERO, tags, 0);
    store.remove(&lk(0, "y"));
    store.cache.run_pending_tasks();
    assert_eq!(store.index.records(), 0);
}

#[test]
fn entry_metadata_stays_small() {
    // Every entry carries it: the per-entry memory figures count on this size.
    assert!(std::mem::size_of::<EntryMeta>() <= 40);
}

#[test]
fn deadlines_far_ahead_do_not_overflow() {
    let store = LocalStore::new(LocalCapacity::Entries(100));
    store.insert(lk(0, "f"), 1u8, Duration::MAX, Duration::MAX, &[], 0);
    let hit = store.get::<u8>(&lk(0, "f")).expect("kept");
    assert!(!hit.stale);
    assert!(hit.fresh_until > Instant::now() + Duration::from_secs(86_400 * 365));
}

#[test]
fn grace_keeps_an_expired_value_marked_stale() {
    let store = LocalStore::new(LocalCapacity::Entries(100));
    store.insert(
        lk(0, "s"),
        5u8,
        Duration::ZERO,
        Duration::from_secs(60),
        &[],
        0,
    );
    let hit = store.get::<u8>(&lk(0, "s")).expect("kept for the grace");
    assert!(hit.stale);
}

/// A randomized check of the store under concurrency: threads write, read, remove and
/// invalidate by tag and by class over a few keys, in a store small enough to evict, and
/// every read that began after an invalidation had returned must not see a value whose
/// write had returned before that invalidation began.
#[test]
fn no_read_sees_what_a_finished_invalidation_removed() {
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    const KEYS: u64 = 24;
    const TAGS: u64 = 4;
    const CLASSES: u64 = 2;
    const THREADS: u64 = 4;
    const OPS: u64 = 20_000;

    #[derive(Clone, Copy, Debug)]
    enum Gone {
        Key(u64),
        Tag(u64),
        Class(u64),
    }
    struct Write {
        key: u64,
        tags: u64,
        ended: u64,
    }
    #[derive(Default)]
    struct History {
        writes: HashMap<u64, Write>,
        removals: Vec<(Gone, u64, u64)>,
        reads: Vec<(u64, u64, u64)>,
    }
    use std::collections::HashMap;

    let store = Arc::new(LocalStore::new(LocalCapacity::Entries(16)));
    let clock = Arc::new(AtomicU64::new(0));
    let versions = Arc::new(AtomicU64::new(1));
    let history = Arc::new(Mutex::new(History::default()));
    let class_of = |key: u64| (key % CLASSES) as ClassId;
    let local_key = move |key: u64| lk(class_of(key), &format!("k{key}"));
    let tag = |t: u64| Key::literal(&format!("t{t}")).expect("valid");
    let threads: Vec<_> = (0..THREADS)
        .map(|seed| {
            let (store, clock, versions, history) = (
                Arc::clone(&store),
                Arc::clone(&clock),
                Arc::clone(&versions),
                Arc::clone(&history),
            );
            std::thread::spawn(move || {
                let mut rng =
                    0x9E37_79B9_7F4A_7C15u64 ^ (seed + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let tick = || clock.fetch_add(1, Ordering::SeqCst);
                for _ in 0..OPS {
                    let (op, key) = (next() % 100, next() % KEYS);
                    let began = tick();
                    match op {
                        0..=39 => {
                            let version = versions.fetch_add(1, Ordering::SeqCst);
                            let tags = next() % (1 << TAGS);
                            let keys: Vec<Key> = (0..TAGS)
                                .filter(|t| tags & (1 << t) != 0)
                                .map(tag)
                                .collect();
                            store.insert(
                                local_key(key),
                                version,
                                Duration::from_secs(60),
                                Duration::ZERO,
                                &keys,
                                0,
                            );
                            let ended = tick();
                            let mut h = history.lock().expect("history");
                            h.writes.insert(version, Write { key, tags, ended });
                        }
                        40..=89 => {
                            if let Some(hit) = store.get::<u64>(&local_key(key)) {
                                let mut h = history.lock().expect("history");
                                h.reads.push((key, hit.value, began));
                            }
                        }
                        90..=95 => {
                            store.remove(&local_key(key));
                            let gone = (Gone::Key(key), began, tick());
                            history.lock().expect("history").removals.push(gone);
                        }
                        96..=98 => {
                            let t = next() % TAGS;
                            store.invalidate_tag(&tag(t));
                            let gone = (Gone::Tag(t), began, tick());
                            history.lock().expect("history").removals.push(gone);
                        }
                        _ => {
                            let c = next() % CLASSES;
                            store.invalidate_class(c as ClassId);
                            let gone = (Gone::Class(c), began, tick());
                            history.lock().expect("history").removals.push(gone);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let h = history.lock().expect("history");
    let mut stale = Vec::new();
    for &(key, version, began) in &h.reads {
        let w = &h.writes[&version];
        assert_eq!(w.key, key, "a read returned another key's value");
        let removed = h.removals.iter().find(|&&(gone, start, end)| {
            let reaches = match gone {
                Gone::Key(k) => k == key,
                Gone::Tag(t) => w.tags & (1 << t) != 0,
                Gone::Class(c) => c == key % CLASSES,
            };
            reaches && start > w.ended && end < began
        });
        if let Some((gone, start, end)) = removed {
            stale.push(format!(
                "v{version} of key {key} (tags {:04b}, written by tick {}) read at tick \
                 {began}, after {gone:?} over ticks {start}..{end}",
                w.tags, w.ended
            ));
        }
    }
    assert!(
        h.reads.len() > 1_000,
        "too few hits to tell: {}",
        h.reads.len()
    );
    assert!(
        stale.is_empty(),
        "{} of {} reads saw a value removed before they began, first: {:#?}",
        stale.len(),
        h.reads.len(),
        &stale[..stale.len().min(5)]
    );
}

//! Tag sets in Redis stay bounded, on real Redis (standalone and a 3-master Cluster): a tag
//! whose entries expire — one short-lived entry per distinct request, say — keeps only its
//! live members once its writes go on, instead of one dead member per entry ever written.
//! A tag invalidation still removes every live entry afterwards.

#![cfg(feature = "redis")]

mod support;

use std::time::{Duration, Instant};

use stormcache::{Cache, EntryOptions, Key};
use support::topology::{topology_tests, Topology};

const DEAD: u64 = 40;
const LIVE: u64 = 24;

fn item(i: u64) -> Key {
    Key::builder("item:").value(i).build()
}

fn scard(t: &Topology, tag_key: &str) -> i64 {
    t.cmd(&["SCARD", tag_key])
        .as_int()
        .expect("SCARD answers an integer")
}

async fn trims_dead_members(t: Topology) {
    let cache = Cache::builder("trim")
        .redis_url(t.url())
        .command_timeout(Duration::from_secs(1))
        .build()
        .expect("valid configuration");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cache.redis_in_use() {
        assert!(
            Instant::now() < deadline,
            "never used Redis: {:?}",
            cache.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tag = Key::literal("path:/search").expect("valid tag");
    let tag_key = "trim:~tag:path:/search";
    let short = EntryOptions::new()
        .ttl(Duration::from_millis(200))
        .tag(tag.clone())
        .skip_local();
    let long = EntryOptions::new()
        .ttl(Duration::from_secs(600))
        .tag(tag.clone());
    // One long-lived member keeps the set alive (a set lives as long as its longest member).
    cache.set(item(999), 999, &long).await;
    for i in 0..DEAD {
        cache.set(item(i), i, &short).await;
    }
    assert_eq!(scard(&t, tag_key), DEAD as i64 + 1);
    // Their entries expire in Redis; their memberships stay.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.keys("trim:default:item:*").len() != 1 {
        assert!(Instant::now() < deadline, "the short entries never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(scard(&t, tag_key), DEAD as i64 + 1);

    // Writes of the tag go on; trims follow them in the background.
    for i in 1000..1000 + LIVE {
        cache.set(item(i), i, &long).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while scard(&t, tag_key) != LIVE as i64 + 1 {
        assert!(
            Instant::now() < deadline,
            "the tag's set kept {} members for {} live entries",
            scard(&t, tag_key),
            LIVE + 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Nothing live was trimmed: the tag still reaches every live entry.
    cache.invalidate_tag(&tag).await;
    let reader = EntryOptions::new().skip_local();
    for i in (1000..1000 + LIVE).chain([999]) {
        assert_eq!(
            cache.get::<u64>(&item(i), &reader).await,
            None,
            "item {i} survived"
        );
    }
}

topology_tests!(trims_dead_members: standalone, cluster);

//! Codecs and compression on real Redis: a large value is stored compressed and reads back,
//! a cache with its own codec reads its own entries, and a cache with another codec takes
//! them for misses (never errors).

mod support;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use stormcache::{Cache, CacheBuilder, Codec, CodecExt, Decoder, Encodable, EntryOptions, Error};
use stormcache::{Key, MessagePack, Origin};
use support::caches::wait_redis_ready;
use support::resp::RespValue;
use support::RedisServer;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Account {
    id: u64,
    email: String,
    groups: Vec<String>,
    active: bool,
}

/// A JSON-ish value: 112 accounts much alike, as a listing is (about 10 KiB as JSON).
fn accounts() -> Vec<Account> {
    (0..112)
        .map(|id| Account {
            id,
            email: format!("user{id}@example.com"),
            groups: vec!["staff".into(), "readers".into(), format!("team-{}", id % 7)],
            active: id % 3 != 0,
        })
        .collect()
}

/// JSON under an id of its own: a user's codec, through the erased path.
#[derive(Debug)]
struct TextJson;

impl Codec for TextJson {
    fn id(&self) -> u8 {
        200
    }

    fn name(&self) -> &str {
        "text-json"
    }

    fn encode(&self, value: Encodable<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
        serde_json::to_writer(out, &value).map_err(|e| Error::Encode(e.to_string()))
    }

    fn decode(&self, bytes: &[u8], into: Decoder<'_>) -> Result<(), Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        into.deserialize_from(&mut de)?;
        de.end().map_err(|e| Error::Decode(e.to_string()))
    }
}

/// The same id as a built-in codec: refused.
#[derive(Debug)]
struct Squatter;

impl Codec for Squatter {
    fn id(&self) -> u8 {
        1
    }

    fn name(&self) -> &str {
        "squatter"
    }

    fn encode(&self, _: Encodable<'_>, _: &mut Vec<u8>) -> Result<(), Error> {
        Err(Error::Encode("never".into()))
    }

    fn decode(&self, _: &[u8], _: Decoder<'_>) -> Result<(), Error> {
        Err(Error::Decode("never".into()))
    }
}

fn builder(redis: &RedisServer, namespace: &str) -> CacheBuilder {
    Cache::builder(namespace).redis_url(redis.url())
}

async fn ready(builder: CacheBuilder) -> Cache {
    let cache = builder.build().expect("valid configuration");
    wait_redis_ready(&cache, Duration::from_secs(15)).await;
    cache
}

fn key(text: &str) -> Key {
    Key::literal(text).expect("valid key")
}

fn raw(redis: &RedisServer, key: &str) -> Vec<u8> {
    match redis.cmd(&["GET", key]) {
        RespValue::Bulk(bytes) => bytes,
        other => panic!("GET {key}: {other:?}"),
    }
}

#[cfg(feature = "compression")]
fn strlen(redis: &RedisServer, key: &str) -> usize {
    match redis.cmd(&["STRLEN", key]) {
        RespValue::Int(n) => usize::try_from(n).expect("a length"),
        other => panic!("STRLEN {key}: {other:?}"),
    }
}

/// Reads `key` from Redis through a fresh cache (its local store is empty).
async fn fetch_fresh<C: Codec>(
    redis: &RedisServer,
    namespace: &str,
    codec: C,
    key_text: &str,
) -> (Origin, Vec<Account>, u64) {
    let cache = ready(builder(redis, namespace).codec(codec)).await;
    let fetched = cache
        .fetch(key(key_text), &EntryOptions::new(), || async {
            Ok::<_, ()>(Vec::<Account>::new())
        })
        .await
        .expect("the loader does not fail");
    (
        fetched.origin,
        fetched.value,
        cache.counters().decode_errors,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_codecs_read_their_own_entries_and_miss_others() {
    let redis = RedisServer::start();
    let refused = builder(&redis, "cx").codec(Squatter).build();
    assert!(
        matches!(refused, Err(Error::Config(ref m)) if m.contains("reserved")),
        "{refused:?}"
    );

    let writer = ready(builder(&redis, "cx").codec(TextJson)).await;
    // Small enough to stay uncompressed, so the payload can be seen.
    let few = accounts()[..3].to_vec();
    writer
        .set(key("accounts"), few.clone(), &EntryOptions::new())
        .await;
    let bytes = raw(&redis, "cx:default:accounts");
    assert_eq!(&bytes[..4], b"SC\x01\xc8", "version 1, codec id 200");
    assert_eq!(bytes[12], b'[', "the payload is JSON text");

    // Another instance with the same codec reads it from Redis.
    let (origin, value, errors) = fetch_fresh(&redis, "cx", TextJson, "accounts").await;
    assert_eq!((origin, errors), (Origin::Redis, 0));
    assert_eq!(value, few);

    // One with the default codec takes it for a miss and loads; nothing fails.
    let (origin, value, errors) = fetch_fresh(&redis, "cx", MessagePack, "accounts").await;
    assert_eq!((origin, errors), (Origin::Loader, 1));
    assert!(value.is_empty());
    // Its load replaced the entry, which is now a miss for the JSON cache.
    assert_eq!(raw(&redis, "cx:default:accounts")[3], MessagePack.id());
    let (origin, _, errors) = fetch_fresh(&redis, "cx", TextJson, "accounts").await;
    assert_eq!((origin, errors), (Origin::Loader, 1));
}

#[cfg(feature = "compression")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_are_stored_compressed_and_read_back() {
    let redis = RedisServer::start();
    let packed_len = MessagePack.to_vec(&accounts()).expect("encodes").len();

    // The default threshold (1 KiB) with the feature on.
    let writer = ready(builder(&redis, "lz")).await;
    writer
        .set(key("big"), accounts(), &EntryOptions::new())
        .await;
    writer
        .set(key("small"), accounts()[..2].to_vec(), &EntryOptions::new())
        .await;
    let stored = strlen(&redis, "lz:default:big");
    let bytes = raw(&redis, "lz:default:big");
    assert_eq!(
        &bytes[..5],
        b"SC\x02\x01\x01",
        "version 2, MessagePack, LZ4"
    );
    assert!(
        stored * 2 < packed_len,
        "{packed_len} bytes packed, {stored} stored"
    );
    // The same value with the JSON codec, for the figures.
    let json_writer = ready(builder(&redis, "lz").codec(stormcache::Json)).await;
    json_writer
        .set(key("big-json"), accounts(), &EntryOptions::new())
        .await;
    let json_len = serde_json::to_vec(&accounts()).expect("encodes").len();
    let json_stored = strlen(&redis, "lz:default:big-json");
    assert!(json_stored * 2 < json_len, "{json_len} -> {json_stored}");
    eprintln!(
        "accounts: MessagePack {packed_len} bytes, {stored} stored; JSON {json_len} bytes, {json_stored} stored"
    );
    assert_eq!(raw(&redis, "lz:default:small")[2], 1, "small: version 1");

    // Another instance reads both from Redis, even with compression turned off (it only
    // stops writing compressed entries).
    for compress_above in [Some(1024), None] {
        let reader = ready(builder(&redis, "lz").compress_above(compress_above)).await;
        let fetched = reader
            .fetch(key("big"), &EntryOptions::new(), || async {
                Err::<Vec<Account>, _>("not called")
            })
            .await
            .expect("served from Redis");
        assert_eq!(
            (fetched.origin, &fetched.value),
            (Origin::Redis, &accounts())
        );
        assert_eq!(reader.counters().decode_errors, 0);
    }

    // Compression off: stored as is.
    let plain = ready(builder(&redis, "lz").compress_above(None)).await;
    plain
        .set(key("plain"), accounts(), &EntryOptions::new())
        .await;
    assert_eq!(strlen(&redis, "lz:default:plain"), 12 + packed_len);

    // A compressed entry whose block is corrupt is a miss, loaded again and overwritten.
    let mut corrupt = bytes.clone();
    let end = corrupt.len();
    corrupt.truncate(end - 10);
    redis.cmd(&[
        b"SET".as_slice(),
        b"lz:default:big".as_slice(),
        corrupt.as_slice(),
    ]);
    let (origin, value, errors) = fetch_fresh(&redis, "lz", MessagePack, "big").await;
    assert_eq!((origin, errors), (Origin::Loader, 1));
    assert!(value.is_empty());
}

/// A compressed entry made by hand (an LZ4 block of literals only): read with the
/// `compression` feature, a miss without it — never an error either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_entries_need_the_feature_and_are_misses_without_it() {
    let redis = RedisServer::start();
    let fresh_until = std::time::SystemTime::now() + Duration::from_secs(600);
    let ms = fresh_until
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let payload = MessagePack.to_vec(&7u32).expect("encodes");
    assert_eq!(payload, [7], "a positive fixint");
    let mut entry = b"SC\x02\x01\x01".to_vec(); // version 2, MessagePack, LZ4
    entry.extend_from_slice(&ms.to_le_bytes());
    entry.extend_from_slice(&1u32.to_le_bytes()); // one byte once decompressed
    entry.extend_from_slice(&[0x10, 7]); // token: 1 literal, no match; the literal
    redis.cmd(&[
        b"SET".as_slice(),
        b"hand:default:seven".as_slice(),
        entry.as_slice(),
    ]);

    let cache = ready(builder(&redis, "hand")).await;
    let fetched = cache
        .fetch(key("seven"), &EntryOptions::new(), || async {
            Ok::<_, ()>(0u32)
        })
        .await
        .expect("never an error");
    if cfg!(feature = "compression") {
        assert_eq!((fetched.origin, fetched.value), (Origin::Redis, 7));
        assert_eq!(cache.counters().decode_errors, 0);
    } else {
        assert_eq!((fetched.origin, fetched.value), (Origin::Loader, 0));
        assert_eq!(cache.counters().decode_errors, 1);
    }
}

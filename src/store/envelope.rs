//! The versioned envelope around every value stored in Redis.
//!
//! A value in Redis outlives the process that wrote it: it may be read by the next release,
//! by another service sharing the database, or come back from an old RDB snapshot. The
//! envelope says which format the payload is in and until when it is fresh, so a reader can
//! tell "fresh", "stale but usable as a fail-safe" and "not ours" apart without guessing.
//!
//! Layout (little-endian): `b"SC"`, format version (1), codec id, fresh-until as Unix
//! milliseconds (u64), then the payload.
//!
//! A key invalidation leaves a *tombstone* in the entry's place for a few seconds:
//! `b"SC"`, version 0, then 8 bytes unique to that invalidation. Readers take it for a miss;
//! a load whose read came before it cannot write over it (Redis compares the exact bytes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::codec::Codec;
use crate::error::Error;
use crate::model::unix_ms;

const MAGIC: &[u8; 2] = b"SC";
const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 2 + 1 + 1 + 8;

const TOMBSTONE: u8 = 0;
const TOMBSTONE_LEN: usize = 2 + 1 + 8;

/// A tombstone no other invalidation, in any process, leaves.
pub(crate) fn tombstone() -> bytes::Bytes {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    // A random seed per process, and a counter within it.
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nonce = SEED
        .get_or_init(Default::default)
        .hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut out = Vec::with_capacity(TOMBSTONE_LEN);
    out.extend_from_slice(MAGIC);
    out.push(TOMBSTONE);
    out.extend_from_slice(&nonce.to_le_bytes());
    out.into()
}

/// Whether `bytes` is a tombstone.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.len() == TOMBSTONE_LEN && &bytes[..2] == MAGIC && bytes[2] == TOMBSTONE
}

/// Wraps an encoded payload.
pub(crate) fn seal(codec: Codec, fresh_until: SystemTime, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(codec.id());
    out.extend_from_slice(&unix_ms(fresh_until).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// An opened envelope.
#[derive(Debug)]
pub(crate) struct Opened<'a> {
    pub(crate) fresh_until: SystemTime,
    pub(crate) payload: &'a [u8],
}

/// Checks the header; anything but our own version and codec is a decode error.
pub(crate) fn open(codec: Codec, bytes: &[u8]) -> Result<Opened<'_>, Error> {
    if bytes.len() < HEADER_LEN || &bytes[..2] != MAGIC {
        return Err(Error::Decode("not a stormcache envelope".into()));
    }
    if bytes[2] != VERSION {
        return Err(Error::Decode(format!(
            "envelope version {} unknown",
            bytes[2]
        )));
    }
    if bytes[3] != codec.id() {
        return Err(Error::Decode(format!(
            "written with codec {}, this cache uses {}",
            bytes[3],
            codec.id()
        )));
    }
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&bytes[4..12]);
    Ok(Opened {
        fresh_until: UNIX_EPOCH + Duration::from_millis(u64::from_le_bytes(ms)),
        payload: &bytes[HEADER_LEN..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_unique_and_never_open_as_values() {
        let (a, b) = (tombstone(), tombstone());
        assert_ne!(a, b);
        assert!(is_tombstone(&a) && is_tombstone(&b));
        assert!(open(Codec::MessagePack, &a).is_err());
    }

    #[test]
    fn round_trip_and_rejections() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let sealed = seal(Codec::MessagePack, t, b"abc");
        let opened = open(Codec::MessagePack, &sealed).expect("our envelope");
        assert_eq!(opened.fresh_until, t);
        assert_eq!(opened.payload, b"abc");
        assert!(open(Codec::MessagePack, b"garbage").is_err());
        assert!(open(Codec::MessagePack, &sealed[..5]).is_err());
        let mut other_version = sealed.clone();
        other_version[2] = 9;
        assert!(open(Codec::MessagePack, &other_version).is_err());
        assert!(!is_tombstone(&sealed));
    }
}

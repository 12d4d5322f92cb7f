//! The versioned envelope around every value stored in Redis.
//!
//! A value in Redis outlives the process that wrote it: it may be read by the next release,
//! by another service sharing the database, or come back from an old RDB snapshot. The
//! envelope says which format the payload is in and until when it is fresh, so a reader can
//! tell "fresh", "stale but usable as a fail-safe" and "not ours" apart without guessing.
//!
//! Layout (little-endian): `b"SC"`, format version, codec id, then
//! - version 1: fresh-until as Unix milliseconds (u64), then the payload;
//! - version 2: a flags byte, fresh-until (u64), then the payload; flag bit 1 (tags) means
//!   a tags section comes first — a count (u16), then each tag as a length (u16) and its
//!   bytes; flag bit 0 (LZ4) means the payload is the uncompressed length (u32) followed by
//!   an LZ4 block.
//!
//! The tags section carries the tags a loader added to its entry (the caller's options name
//! the others), so that every instance reading the entry from Redis indexes its local copy
//! under them and a later invalidation of such a tag reaches that copy too.
//!
//! Writers use version 1 whenever the payload is not compressed and carries no tags, so that readers built
//! before version 2 existed keep reading those entries during a rolling deploy (they take a
//! version 2 entry for a miss, as every reader does with a version or codec it does not
//! know). A reader built without the `compression` feature takes a compressed entry for a
//! miss too.
//!
//! A key invalidation leaves a *tombstone* in the entry's place for a few seconds:
//! `b"SC"`, version 0, then 8 bytes unique to that invalidation. Readers take it for a miss;
//! a load whose read came before it cannot write over it (Redis compares the exact bytes).

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::codec::{Codec, Encodable};
use crate::error::Error;
use crate::key::Key;
use crate::model::{nonce, unix_ms};

const MAGIC: &[u8; 2] = b"SC";
const V1: u8 = 1;
const V2: u8 = 2;
/// The header of a version 1 envelope.
pub(crate) const HEADER_LEN: usize = 2 + 1 + 1 + 8;
/// The header of a version 2 envelope.
const V2_HEADER_LEN: usize = HEADER_LEN + 1;

/// Version 2 flag: the payload is LZ4-compressed.
const FLAG_LZ4: u8 = 1;
/// Version 2 flag: a tags section precedes the payload.
const FLAG_TAGS: u8 = 2;
/// The flags this build understands; an entry with any other is a miss.
#[cfg(feature = "compression")]
const KNOWN_FLAGS: u8 = FLAG_LZ4 | FLAG_TAGS;
#[cfg(not(feature = "compression"))]
const KNOWN_FLAGS: u8 = FLAG_TAGS;

/// The largest payload compressed, and so the largest a reader decompresses: the bound on
/// the buffer a corrupt or hostile length prefix can make a reader allocate.
#[cfg(feature = "compression")]
const MAX_DECOMPRESSED: usize = 64 << 20;
/// An LZ4 block decompresses to at most about 255 times its size (a run length grows by one
/// byte per 255 bytes of match); a length prefix beyond that is a lie.
#[cfg(feature = "compression")]
const MAX_LZ4_RATIO: usize = 256;

const TOMBSTONE: u8 = 0;
const TOMBSTONE_LEN: usize = 2 + 1 + 8;

/// A tombstone no other invalidation, in any process, leaves.
pub(crate) fn tombstone() -> bytes::Bytes {
    let mut out = Vec::with_capacity(TOMBSTONE_LEN);
    out.extend_from_slice(MAGIC);
    out.push(TOMBSTONE);
    out.extend_from_slice(&nonce().to_le_bytes());
    out.into()
}

/// Whether `bytes` is a tombstone.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.len() == TOMBSTONE_LEN && &bytes[..2] == MAGIC && bytes[2] == TOMBSTONE
}

/// A value sealed for Redis.
#[derive(Debug)]
pub(crate) struct Sealed {
    /// The envelope's bytes.
    pub(crate) bytes: Vec<u8>,
    /// The size of the encoded value, before any compression.
    pub(crate) encoded_len: usize,
}

/// Encodes `value` with `codec` straight after a version 1 header (no copy), then, if the
/// payload is at least `compress_above` bytes and LZ4 makes it smaller, rewrites it as a
/// compressed version 2 envelope. Without the `compression` feature `compress_above` is
/// ignored.
pub(crate) fn seal(
    codec: &dyn Codec,
    fresh_until: SystemTime,
    value: Encodable<'_>,
    compress_above: Option<usize>,
    tags: &[Key],
) -> Result<Sealed, Error> {
    let sealed = seal_value(codec, fresh_until, value, compress_above)?;
    if tags.is_empty() {
        return Ok(sealed);
    }
    Ok(Sealed {
        bytes: with_tags(sealed.bytes, tags)?,
        encoded_len: sealed.encoded_len,
    })
}

/// A version 1 or 2 envelope rewritten as version 2 with a tags section.
fn with_tags(sealed: Vec<u8>, tags: &[Key]) -> Result<Vec<u8>, Error> {
    let (flags, header_len) = match sealed[2] {
        V2 => (sealed[4], V2_HEADER_LEN),
        _ => (0, HEADER_LEN),
    };
    let too_many = || Error::Encode("too many tags, or a tag too long, for an entry".into());
    let count = u16::try_from(tags.len()).map_err(|_| too_many())?;
    let section: usize = tags.iter().map(|t| 2 + t.as_str().len()).sum();
    let mut out = Vec::with_capacity(sealed.len() + 1 + 2 + section);
    out.extend_from_slice(&[MAGIC[0], MAGIC[1], V2, sealed[3], flags | FLAG_TAGS]);
    out.extend_from_slice(&sealed[header_len - 8..header_len]);
    out.extend_from_slice(&count.to_le_bytes());
    for tag in tags {
        let len = u16::try_from(tag.as_str().len()).map_err(|_| too_many())?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(tag.as_str().as_bytes());
    }
    out.extend_from_slice(&sealed[header_len..]);
    Ok(out)
}

/// Reads a tags section; the tags and what follows them.
fn read_tags(body: &[u8]) -> Result<(Vec<Key>, &[u8]), Error> {
    let corrupt = || Error::Decode("tags section cut short or not UTF-8".into());
    let (count, mut rest) = body.split_first_chunk::<2>().ok_or_else(corrupt)?;
    let count = u16::from_le_bytes(*count);
    let mut tags = Vec::with_capacity(usize::from(count).min(rest.len() / 2));
    for _ in 0..count {
        let (len, after) = rest.split_first_chunk::<2>().ok_or_else(corrupt)?;
        let len = usize::from(u16::from_le_bytes(*len));
        if after.len() < len {
            return Err(corrupt());
        }
        let (text, after) = after.split_at(len);
        let text = std::str::from_utf8(text).map_err(|_| corrupt())?;
        tags.push(Key::from_escaped(text.into()));
        rest = after;
    }
    Ok((tags, rest))
}

fn seal_value(
    codec: &dyn Codec,
    fresh_until: SystemTime,
    value: Encodable<'_>,
    compress_above: Option<usize>,
) -> Result<Sealed, Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(MAGIC);
    out.push(V1);
    out.push(codec.id());
    out.extend_from_slice(&unix_ms(fresh_until).to_le_bytes());
    codec.encode(value, &mut out)?;
    let encoded_len = out.len() - HEADER_LEN;
    #[cfg(feature = "compression")]
    if let Some(threshold) = compress_above {
        if encoded_len >= threshold && encoded_len <= MAX_DECOMPRESSED {
            if let Some(compressed) = compress(&out) {
                return Ok(Sealed {
                    bytes: compressed,
                    encoded_len,
                });
            }
        }
    }
    #[cfg(not(feature = "compression"))]
    let _ = compress_above;
    Ok(Sealed {
        bytes: out,
        encoded_len,
    })
}

/// The version 2, LZ4 form of a version 1 envelope, if it is smaller.
#[cfg(feature = "compression")]
fn compress(v1: &[u8]) -> Option<Vec<u8>> {
    let payload = &v1[HEADER_LEN..];
    let len = u32::try_from(payload.len()).ok()?;
    let start = V2_HEADER_LEN + 4;
    let mut out = vec![0u8; start + lz4_flex::block::get_maximum_output_size(payload.len())];
    out[..3].copy_from_slice(&[MAGIC[0], MAGIC[1], V2]);
    out[3] = v1[3];
    out[4] = FLAG_LZ4;
    out[5..V2_HEADER_LEN].copy_from_slice(&v1[4..HEADER_LEN]);
    out[V2_HEADER_LEN..start].copy_from_slice(&len.to_le_bytes());
    let n = lz4_flex::block::compress_into(payload, &mut out[start..]).ok()?;
    out.truncate(start + n);
    (out.len() < v1.len()).then_some(out)
}

/// An opened envelope.
#[derive(Debug)]
pub(crate) struct Opened<'a> {
    pub(crate) fresh_until: SystemTime,
    /// The tags the envelope carries (see the module docs); empty for most entries.
    pub(crate) tags: Vec<Key>,
    /// The encoded value: borrowed from the envelope, or decompressed from it.
    pub(crate) payload: Cow<'a, [u8]>,
}

/// Checks the header and decompresses the payload; a version, codec or flag this build does
/// not know, or a payload that does not decompress, is a decode error (so, a miss).
pub(crate) fn open<'a>(codec: &dyn Codec, bytes: &'a [u8]) -> Result<Opened<'a>, Error> {
    if bytes.len() < HEADER_LEN || &bytes[..2] != MAGIC {
        return Err(Error::Decode("not a stormcache envelope".into()));
    }
    let (flags, header_len) = match bytes[2] {
        V1 => (0, HEADER_LEN),
        V2 if bytes.len() >= V2_HEADER_LEN => (bytes[4], V2_HEADER_LEN),
        version => {
            return Err(Error::Decode(format!("envelope version {version} unknown")));
        }
    };
    if bytes[3] != codec.id() {
        return Err(Error::Decode(format!(
            "written with codec id {}, this cache uses {} (id {})",
            bytes[3],
            codec.name(),
            codec.id()
        )));
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Error::Decode(format!(
            "envelope flags {flags:#04x} unknown to this build (compressed entries need the `compression` feature)"
        )));
    }
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&bytes[header_len - 8..header_len]);
    let (tags, body) = match flags & FLAG_TAGS {
        0 => (Vec::new(), &bytes[header_len..]),
        _ => read_tags(&bytes[header_len..])?,
    };
    let payload = if flags & FLAG_LZ4 != 0 {
        Cow::Owned(decompress(body)?)
    } else {
        Cow::Borrowed(body)
    };
    Ok(Opened {
        fresh_until: UNIX_EPOCH + Duration::from_millis(u64::from_le_bytes(ms)),
        tags,
        payload,
    })
}

/// Decompresses a length-prefixed LZ4 block, allocating no more than the length it claims,
/// and only when that length is plausible for the block and within [`MAX_DECOMPRESSED`].
/// (lz4_flex's `checked-decode` feature is what makes a corrupt block an error rather than a
/// panic in its safe decoder.)
#[cfg(feature = "compression")]
fn decompress(body: &[u8]) -> Result<Vec<u8>, Error> {
    let corrupt = |why: String| Error::Decode(format!("compressed payload: {why}"));
    let (len, block) = body
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("too short".into()))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_DECOMPRESSED || len > block.len().saturating_mul(MAX_LZ4_RATIO) {
        return Err(corrupt(format!(
            "claims {len} bytes from {} compressed",
            block.len()
        )));
    }
    // `decompress` fails unless the block fills exactly `len` bytes, and never writes past.
    lz4_flex::block::decompress(block, len).map_err(|e| corrupt(e.to_string()))
}

#[cfg(not(feature = "compression"))]
fn decompress(_body: &[u8]) -> Result<Vec<u8>, Error> {
    // Unreachable: `open` refuses the LZ4 flag first in a build without compression.
    Err(Error::Decode(
        "compressed entry; built without the `compression` feature".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::{CodecExt, MessagePack};

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
    }

    fn sealed(value: &impl serde::Serialize, compress_above: Option<usize>) -> Sealed {
        seal(
            &MessagePack,
            at(),
            Encodable::new(value),
            compress_above,
            &[],
        )
        .expect("encodes")
    }

    /// A value LZ4 shrinks well: a JSON-ish list of similar records, about 10 KiB packed.
    fn big() -> Vec<(String, u32, String)> {
        (0..200)
            .map(|i| (format!("user-{i}"), i, "member of staff, reads".to_owned()))
            .collect()
    }

    #[test]
    fn tombstones_are_unique_and_never_open_as_values() {
        let (a, b) = (tombstone(), tombstone());
        assert_ne!(a, b);
        assert!(is_tombstone(&a) && is_tombstone(&b));
        assert!(open(&MessagePack, &a).is_err());
    }

    #[test]
    fn v1_round_trip_and_rejections() {
        let s = sealed(&"abc", None);
        let payload = MessagePack.to_vec(&"abc").expect("encodes");
        assert_eq!(s.encoded_len, payload.len());
        assert_eq!(&s.bytes[..4], [b'S', b'C', V1, MessagePack.id()]);
        assert_eq!(s.bytes[HEADER_LEN..], payload[..]);
        let opened = open(&MessagePack, &s.bytes).expect("our envelope");
        assert_eq!(opened.fresh_until, at());
        assert!(matches!(opened.payload, Cow::Borrowed(p) if p == payload));
        assert!(open(&MessagePack, b"garbage").is_err());
        assert!(open(&MessagePack, &s.bytes[..5]).is_err());
        let mut other_version = s.bytes.clone();
        other_version[2] = 9;
        assert!(open(&MessagePack, &other_version).is_err());
        let mut other_codec = s.bytes.clone();
        other_codec[3] = 200;
        assert!(open(&MessagePack, &other_codec).is_err());
        assert!(!is_tombstone(&s.bytes));
    }

    #[test]
    fn v2_without_flags_opens() {
        let v1 = sealed(&"abc", None).bytes;
        let mut v2 = v1[..3].to_vec();
        v2[2] = V2;
        v2.push(v1[3]);
        v2.push(0);
        v2.extend_from_slice(&v1[4..]);
        let opened = open(&MessagePack, &v2).expect("version 2, no flags");
        assert_eq!(opened.fresh_until, at());
        assert_eq!(&*opened.payload, &v1[HEADER_LEN..]);
        assert!(open(&MessagePack, &v2[..V2_HEADER_LEN - 1]).is_err());
        let mut unknown_flag = v2.clone();
        unknown_flag[4] = 0x80;
        assert!(open(&MessagePack, &unknown_flag).is_err());
    }

    #[test]
    fn small_or_incompressible_payloads_stay_v1() {
        assert_eq!(sealed(&"abc", Some(0)).bytes[2], V1);
        // Bytes no compressor shrinks.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(sealed(&serde_bytes_like(&noise), Some(16)).bytes[2], V1);
        assert_eq!(sealed(&big(), None).bytes[2], V1);
    }

    /// `Vec<u8>` would encode as a list of numbers; a borrowed slice of bytes as a binary.
    fn serde_bytes_like(bytes: &[u8]) -> impl serde::Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl serde::Serialize for B<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(bytes)
    }

    #[cfg(feature = "compression")]
    #[test]
    fn large_payloads_compress_and_open() {
        let plain = sealed(&big(), None);
        let packed = sealed(&big(), Some(1024));
        assert_eq!(packed.encoded_len, plain.encoded_len);
        assert_eq!(
            &packed.bytes[..5],
            [b'S', b'C', V2, MessagePack.id(), FLAG_LZ4]
        );
        assert!(
            packed.bytes.len() * 3 < plain.bytes.len(),
            "{} -> {}",
            plain.bytes.len(),
            packed.bytes.len()
        );
        let opened = open(&MessagePack, &packed.bytes).expect("compressed envelope");
        assert_eq!(opened.fresh_until, at());
        assert_eq!(&*opened.payload, &plain.bytes[HEADER_LEN..]);
        let back: Vec<(String, u32, String)> =
            MessagePack.from_slice(&opened.payload).expect("decodes");
        assert_eq!(back, big());
        // Below the threshold, or with compression off: version 1.
        assert_eq!(sealed(&big(), Some(plain.encoded_len + 1)).bytes[2], V1);
    }

    #[cfg(feature = "compression")]
    #[test]
    fn corrupt_compressed_payloads_are_misses() {
        let packed = sealed(&big(), Some(1024)).bytes;
        let len_at = V2_HEADER_LEN;
        // Truncated block.
        assert!(open(&MessagePack, &packed[..packed.len() - 7]).is_err());
        // No room for the length.
        assert!(open(&MessagePack, &packed[..len_at + 2]).is_err());
        // A length that does not match the block.
        let mut wrong_len = packed.clone();
        wrong_len[len_at] ^= 1;
        assert!(open(&MessagePack, &wrong_len).is_err());
        // A bomb: a huge claimed length is refused before anything is allocated.
        let mut bomb = packed.clone();
        bomb[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = open(&MessagePack, &bomb).expect_err("refused");
        assert!(err.to_string().contains("claims"), "{err}");
        // Garbage in the block.
        let mut garbage = packed.clone();
        for b in &mut garbage[len_at + 4..] {
            *b = 0xff;
        }
        assert!(open(&MessagePack, &garbage).is_err());
        // No corruption panics: every flipped byte and every truncation is an error or, at
        // worst, different bytes (which the codec then refuses).
        for i in len_at..packed.len() {
            let mut flipped = packed.clone();
            flipped[i] ^= 0x5a;
            let _ = open(&MessagePack, &flipped);
            let _ = open(&MessagePack, &packed[..i]);
        }
    }

    #[cfg(not(feature = "compression"))]
    #[test]
    fn compressed_entries_are_misses_without_the_feature() {
        let v1 = sealed(&"abc", Some(0)).bytes;
        let mut v2 = vec![b'S', b'C', V2, v1[3], FLAG_LZ4];
        v2.extend_from_slice(&v1[4..HEADER_LEN]);
        v2.extend_from_slice(&[3, 0, 0, 0, 0x30, b'a', b'b', b'c']);
        assert!(open(&MessagePack, &v2).is_err());
    }

    #[test]
    fn tags_travel_with_the_entry_and_a_cut_section_is_a_miss() {
        let tags = [
            Key::from_escaped("folder:3".into()),
            Key::from_escaped("a:b".into()),
        ];
        let small = seal(&MessagePack, at(), Encodable::new(&7u32), None, &tags).expect("encodes");
        let opened = open(&MessagePack, &small.bytes).expect("opens");
        assert_eq!(opened.tags, tags);
        assert_eq!(opened.fresh_until, at());
        assert_eq!(
            MessagePack
                .from_slice::<u32>(&opened.payload)
                .expect("decodes"),
            7
        );
        // Without tags, the entry stays version 1 and carries none.
        let plain = sealed(&7u32, None);
        assert_eq!(plain.bytes[2], V1);
        assert!(open(&MessagePack, &plain.bytes)
            .expect("opens")
            .tags
            .is_empty());
        // Compressed and tagged.
        #[cfg(feature = "compression")]
        {
            let both =
                seal(&MessagePack, at(), Encodable::new(&big()), Some(64), &tags).expect("encodes");
            assert_eq!(both.bytes[4], FLAG_LZ4 | FLAG_TAGS);
            let opened = open(&MessagePack, &both.bytes).expect("opens");
            assert_eq!(opened.tags, tags);
            let back: Vec<(String, u32, String)> =
                MessagePack.from_slice(&opened.payload).expect("decodes");
            assert_eq!(back, big());
        }
        // Any cut inside the tags section is an error (a miss), never a panic.
        for len in V2_HEADER_LEN..small.bytes.len() - 1 {
            let _ = open(&MessagePack, &small.bytes[..len]);
        }
        assert!(open(&MessagePack, &small.bytes[..V2_HEADER_LEN + 5]).is_err());
    }
}

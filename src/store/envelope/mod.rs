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
//!   bytes; flag bit 2 (lineage) means a lineage section follows (see `lineage`); flag bit 0
//!   (LZ4) means the payload is the uncompressed length (u32) followed by an LZ4 block.
//!
//! The tags section carries the tags a loader added to its entry (the caller's options name
//! the others), so that every instance reading the entry from Redis indexes its local copy
//! under them and a later invalidation of such a tag reaches that copy too.
//!
//! Writers use version 1 whenever the payload is not compressed and carries no tags and no
//! lineage (only a Cluster's writes record one), so that readers built
//! before version 2 existed keep reading those entries during a rolling deploy (they take a
//! version 2 entry for a miss, as every reader does with a version or codec it does not
//! know). A reader built without the `compression` feature takes a compressed entry for a
//! miss too.
//!
//! A key invalidation leaves a *tombstone* in the entry's place for a few seconds:
//! `b"SC"`, version 0, then 8 bytes unique to that invalidation. Readers take it for a miss;
//! a load whose read came before it cannot write over it (Redis compares the exact bytes).

mod lineage;

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use self::lineage::{Lineage, Seen};

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
/// Version 2 flag: a lineage section precedes the payload (after any tags section).
const FLAG_LINEAGE: u8 = 4;
/// The flags this build understands; an entry with any other is a miss.
#[cfg(feature = "compression")]
const KNOWN_FLAGS: u8 = FLAG_LZ4 | FLAG_TAGS | FLAG_LINEAGE;
#[cfg(not(feature = "compression"))]
const KNOWN_FLAGS: u8 = FLAG_TAGS | FLAG_LINEAGE;

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
    lineage: &Lineage,
) -> Result<Sealed, Error> {
    let sealed = seal_value(codec, fresh_until, value, compress_above)?;
    if tags.is_empty() && *lineage == Lineage::Unrecorded {
        return Ok(sealed);
    }
    Ok(Sealed {
        bytes: with_sections(sealed.bytes, tags, lineage)?,
        encoded_len: sealed.encoded_len,
    })
}

/// A version 1 or 2 envelope rewritten as version 2 with a tags section (if `tags`) and a
/// lineage section (unless [`Lineage::Unrecorded`]).
fn with_sections(sealed: Vec<u8>, tags: &[Key], lineage: &Lineage) -> Result<Vec<u8>, Error> {
    let (mut flags, header_len) = match sealed[2] {
        V2 => (sealed[4], V2_HEADER_LEN),
        _ => (0, HEADER_LEN),
    };
    let too_many = || Error::Encode("too many tags, or a tag too long, for an entry".into());
    let count = u16::try_from(tags.len()).map_err(|_| too_many())?;
    let section: usize = tags.iter().map(|t| 2 + t.as_str().len()).sum();
    let mut out = Vec::with_capacity(sealed.len() + 1 + 2 + section + lineage.len());
    if !tags.is_empty() {
        flags |= FLAG_TAGS;
    }
    if *lineage != Lineage::Unrecorded {
        flags |= FLAG_LINEAGE;
    }
    out.extend_from_slice(&[MAGIC[0], MAGIC[1], V2, sealed[3], flags]);
    out.extend_from_slice(&sealed[header_len - 8..header_len]);
    if !tags.is_empty() {
        out.extend_from_slice(&count.to_le_bytes());
        for tag in tags {
            write_tag(&mut out, tag)?;
        }
    }
    lineage.write(&mut out)?;
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
        let (tag, after) = read_tag(rest).ok_or_else(corrupt)?;
        tags.push(tag);
        rest = after;
    }
    Ok((tags, rest))
}

/// Appends `tag` as its length (u16) and its bytes.
fn write_tag(out: &mut Vec<u8>, tag: &Key) -> Result<(), Error> {
    let len = u16::try_from(tag.as_str().len())
        .map_err(|_| Error::Encode("a tag too long for an entry".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(tag.as_str().as_bytes());
    Ok(())
}

/// Reads a tag [`write_tag`] wrote, and what follows it; `None` if cut short or not UTF-8.
fn read_tag(body: &[u8]) -> Option<(Key, &[u8])> {
    let (len, after) = body.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len));
    if after.len() < len {
        return None;
    }
    let (text, after) = after.split_at(len);
    let text = std::str::from_utf8(text).ok()?;
    Some((Key::from_escaped(text.into()), after))
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
    /// What its writer had seen (see `lineage`).
    pub(crate) lineage: Lineage,
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
    let (lineage, body) = match flags & FLAG_LINEAGE {
        0 => (Lineage::Unrecorded, body),
        _ => Lineage::read(body)?,
    };
    let payload = if flags & FLAG_LZ4 != 0 {
        Cow::Owned(decompress(body)?)
    } else {
        Cow::Borrowed(body)
    };
    Ok(Opened {
        fresh_until: UNIX_EPOCH + Duration::from_millis(u64::from_le_bytes(ms)),
        tags,
        lineage,
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
mod tests;

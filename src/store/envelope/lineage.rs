//! The lineage section: what the writer of an entry had seen of the invalidations that could
//! reach it.
//!
//! Where a load's write cannot compare the generations of the entry's tags, class and
//! namespace in the same step as it writes (a Cluster spreads them over nodes), its value can
//! land in Redis after a tag invalidation or a flush has scanned for it, and stays there until
//! the load's own check after the write removes it. A reader reads the tags' generations with
//! the entry anyway, and knows the flush generations: with the lineage beside them it can tell
//! such a value from one loaded after the invalidation.
//!
//! The tags a loader adds to its entry at run time are not known before the load, so their
//! generations were never read: a reader that does not name them either reads them after the
//! entry, while the entry is young enough for a racing write to be still in place (see
//! `core::superseded`). The section records when the value was written for that.
//!
//! Layout: a kind byte, `1` (written explicitly) or `3` (written by a load); for a load, a
//! byte whose bits 0 and 1 say whether a class and a namespace generation follow, both as
//! i64 (zero when absent), the time of the write as Unix milliseconds (u64), then a count
//! (u16) of tags whose generation was set, each as a length (u16), its bytes and its
//! generation (i64).

use super::{read_tag, write_tag};
use crate::error::Error;
use crate::key::Key;

const EXPLICIT: u8 = 1;
/// `2` was a load's record without its write time, written by earlier builds: an unknown
/// kind now, so such an entry is a miss rather than a misread.
const LOADED: u8 = 3;

/// What the writer of an entry had seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Lineage {
    /// Not recorded: written where the write checks the generations itself, or by a build
    /// that did not record them.
    #[default]
    Unrecorded,
    /// Written explicitly (`Cache::set`): the newest value, whatever came before.
    Explicit,
    /// Written by a load, which had seen these generations.
    Loaded(Seen),
}

/// The generations a load had seen when it read Redis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Its class's flush generation, and the namespace's.
    pub(crate) class: Option<i64>,
    pub(crate) namespace: Option<i64>,
    /// Its tags whose generation was set, with that generation.
    pub(crate) tags: Vec<(Key, i64)>,
    /// When the value was written, as Unix milliseconds.
    pub(crate) written: u64,
}

impl Seen {
    /// The generation `tag` had, if it had one.
    pub(crate) fn tag(&self, tag: &Key) -> Option<i64> {
        self.tags.iter().find(|(t, _)| t == tag).map(|&(_, g)| g)
    }
}

impl Lineage {
    /// Appends the section to `out`.
    pub(super) fn write(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let seen = match self {
            Lineage::Unrecorded => return Ok(()),
            Lineage::Explicit => {
                out.push(EXPLICIT);
                return Ok(());
            }
            Lineage::Loaded(seen) => seen,
        };
        out.push(LOADED);
        out.push(u8::from(seen.class.is_some()) | u8::from(seen.namespace.is_some()) << 1);
        out.extend_from_slice(&seen.class.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&seen.namespace.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&seen.written.to_le_bytes());
        let count = u16::try_from(seen.tags.len())
            .map_err(|_| Error::Encode("too many tags for an entry".into()))?;
        out.extend_from_slice(&count.to_le_bytes());
        for (tag, generation) in &seen.tags {
            write_tag(out, tag)?;
            out.extend_from_slice(&generation.to_le_bytes());
        }
        Ok(())
    }

    /// The bytes [`write`](Self::write) appends, for sizing a buffer.
    pub(super) fn len(&self) -> usize {
        match self {
            Lineage::Unrecorded => 0,
            Lineage::Explicit => 1,
            Lineage::Loaded(seen) => {
                let tags: usize = seen
                    .tags
                    .iter()
                    .map(|(t, _)| 2 + t.as_str().len() + 8)
                    .sum();
                1 + 1 + 8 + 8 + 8 + 2 + tags
            }
        }
    }

    /// Reads a section; the lineage and what follows it.
    pub(super) fn read(body: &[u8]) -> Result<(Lineage, &[u8]), Error> {
        let corrupt = || Error::Decode("lineage section cut short, unknown or not UTF-8".into());
        let (&kind, rest) = body.split_first().ok_or_else(corrupt)?;
        match kind {
            EXPLICIT => return Ok((Lineage::Explicit, rest)),
            LOADED => {}
            _ => return Err(corrupt()),
        }
        let (&present, rest) = rest.split_first().ok_or_else(corrupt)?;
        let (class, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
        let (namespace, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
        let (written, rest) = rest.split_first_chunk::<8>().ok_or_else(corrupt)?;
        let (count, mut rest) = rest.split_first_chunk::<2>().ok_or_else(corrupt)?;
        let count = usize::from(u16::from_le_bytes(*count));
        let mut tags = Vec::with_capacity(count.min(rest.len() / 10));
        for _ in 0..count {
            let (tag, after) = read_tag(rest).ok_or_else(corrupt)?;
            let (generation, after) = after.split_first_chunk::<8>().ok_or_else(corrupt)?;
            tags.push((tag, i64::from_le_bytes(*generation)));
            rest = after;
        }
        let seen = Seen {
            class: (present & 1 != 0).then(|| i64::from_le_bytes(*class)),
            namespace: (present & 2 != 0).then(|| i64::from_le_bytes(*namespace)),
            tags,
            written: u64::from_le_bytes(*written),
        };
        Ok((Lineage::Loaded(seen), rest))
    }
}

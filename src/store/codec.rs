//! Codecs: how values become bytes in Redis.
//!
//! The default is MessagePack with named fields (`rmp-serde`): compact, fast, and tolerant of
//! the most common schema change, a new `#[serde(default)]` field, so a rolling deploy does
//! not turn every entry into a miss. bincode is discontinued, and postcard breaks on that very
//! change. JSON is there (feature `json`) for caches other tools read.
//!
//! Bytes that do not decode are never an error to the caller: every read path treats them as
//! a miss, logs them, and the loader's fresh value overwrites them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// The serialization format of values stored in Redis.
///
/// ```
/// use stormcache::Codec;
///
/// let bytes = Codec::MessagePack.encode(&vec![1, 2, 3])?;
/// let back: Vec<u32> = Codec::MessagePack.decode(&bytes)?;
/// assert_eq!(back, [1, 2, 3]);
/// # Ok::<(), stormcache::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack with struct fields by name (the default).
    #[default]
    MessagePack,
    /// JSON (feature `json`).
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    Json,
}

impl Codec {
    /// The byte that names this codec in the envelope.
    pub(crate) fn id(self) -> u8 {
        match self {
            Codec::MessagePack => 1,
            #[cfg(feature = "json")]
            Codec::Json => 2,
        }
    }

    /// Serializes a value.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, Error> {
        match self {
            Codec::MessagePack => {
                rmp_serde::to_vec_named(value).map_err(|e| Error::Encode(e.to_string()))
            }
            #[cfg(feature = "json")]
            Codec::Json => serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string())),
        }
    }

    /// Deserializes a value.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, Error> {
        match self {
            Codec::MessagePack => {
                rmp_serde::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))
            }
            #[cfg(feature = "json")]
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string())),
        }
    }
}

//! Codecs: how values become bytes in Redis.
//!
//! The default is MessagePack with named fields (`rmp-serde`): compact, fast, and tolerant of
//! the most common schema change, a new `#[serde(default)]` field, so a rolling deploy does
//! not turn every entry into a miss. bincode is discontinued, and postcard breaks on that very
//! change. JSON is there (feature `json`) for caches other tools read.
//!
//! [`Codec`] is a trait object in the cache (one `Arc<dyn Codec>` per cache), so it cannot
//! have generic methods. Values cross it as [`Encodable`] and [`Decoder`]: the built-in
//! codecs reach back through them into code monomorphized for the value's type (one virtual
//! call each way, no allocation), and other codecs go through `erased-serde`, which is
//! slower on decode (it boxes every value larger than two words as it builds them up) but
//! works with any serde format.
//!
//! Bytes that do not decode are never an error to the caller: every read path treats them as
//! a miss, logs them, and the loader's fresh value overwrites them.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserializer, Serialize, Serializer};

use crate::error::Error;

/// The serialization format of values stored in Redis.
///
/// A cache holds one codec (see `CacheBuilder::codec`); its [`id`](Codec::id) is written in
/// every entry, and a cache reading an entry written with another id takes it for a miss, so
/// caches with different codecs can share a Redis namespace without misreading each other.
///
/// Built in: [`MessagePack`] (id 1, the default) and [`Json`] (id 2, feature `json`). Ids
/// 0 to 127 are reserved for built-in codecs: a cache refuses to build with another codec
/// whose id is in that range. Your own codecs take ids 128 to 255.
///
/// To implement one, serialize [`Encodable`] (it implements [`serde::Serialize`]) with your
/// format, and hand your format's deserializer to [`Decoder::deserialize_from`]:
///
/// ```
/// use serde::Serialize as _;
/// use stormcache::{Codec, CodecExt, Decoder, Encodable, Error};
///
/// /// JSON with two-space indentation, for caches people read with `redis-cli`.
/// #[derive(Debug)]
/// struct PrettyJson;
///
/// impl Codec for PrettyJson {
///     fn id(&self) -> u8 {
///         200
///     }
///
///     fn name(&self) -> &str {
///         "pretty-json"
///     }
///
///     fn encode(&self, value: Encodable<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
///         let mut ser = serde_json::Serializer::pretty(out);
///         value.serialize(&mut ser).map_err(|e| Error::Encode(e.to_string()))
///     }
///
///     fn decode(&self, bytes: &[u8], into: Decoder<'_>) -> Result<(), Error> {
///         let mut de = serde_json::Deserializer::from_slice(bytes);
///         into.deserialize_from(&mut de)?;
///         de.end().map_err(|e| Error::Decode(e.to_string()))
///     }
/// }
///
/// let bytes = PrettyJson.to_vec(&vec![1, 2, 3])?;
/// assert_eq!(bytes, b"[\n  1,\n  2,\n  3\n]");
/// let back: Vec<u32> = PrettyJson.from_slice(&bytes)?;
/// assert_eq!(back, [1, 2, 3]);
///
/// // And in a cache:
/// let cache = stormcache::Cache::builder("docs").codec(PrettyJson).build();
/// # drop(cache);
/// # Ok::<(), stormcache::Error>(())
/// ```
pub trait Codec: fmt::Debug + Send + Sync + 'static {
    /// The byte that names this codec in every entry it writes: 0 to 127 are reserved for
    /// the built-in codecs, 128 to 255 are yours. Two codecs that cannot read each other's
    /// bytes must not share an id.
    fn id(&self) -> u8;

    /// A short name, for logs and error messages.
    fn name(&self) -> &str;

    /// Appends the bytes of `value` to `out` (which may already hold bytes: leave them).
    fn encode(&self, value: Encodable<'_>, out: &mut Vec<u8>) -> Result<(), Error>;

    /// Reads one value from `bytes` into `into`. Trailing bytes should be an error.
    fn decode(&self, bytes: &[u8], into: Decoder<'_>) -> Result<(), Error>;
}

/// Typed shortcuts over any [`Codec`], `dyn Codec` included.
///
/// ```
/// use stormcache::{CodecExt, MessagePack};
///
/// let bytes = MessagePack.to_vec(&vec![1, 2, 3])?;
/// let back: Vec<u32> = MessagePack.from_slice(&bytes)?;
/// assert_eq!(back, [1, 2, 3]);
/// # Ok::<(), stormcache::Error>(())
/// ```
pub trait CodecExt: Codec {
    /// Serializes a value.
    fn to_vec<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.encode(Encodable::new(value), &mut out)?;
        Ok(out)
    }

    /// Deserializes a value.
    // Named after serde_json's and rmp-serde's `to_vec` / `from_slice`, which it pairs with.
    #[allow(clippy::wrong_self_convention)]
    fn from_slice<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error> {
        let mut slot = Slot::<T>(None);
        self.decode(bytes, Decoder(&mut slot))?;
        slot.0
            .ok_or_else(|| Error::Decode(format!("codec {} produced no value", self.name())))
    }
}

impl<C: Codec + ?Sized> CodecExt for C {}

/// MessagePack with struct fields by name (`rmp-serde`): the default codec, id 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessagePack;

impl Codec for MessagePack {
    fn id(&self) -> u8 {
        1
    }

    fn name(&self) -> &str {
        "messagepack"
    }

    fn encode(&self, value: Encodable<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
        value.0.messagepack(out)
    }

    fn decode(&self, bytes: &[u8], into: Decoder<'_>) -> Result<(), Error> {
        into.0.messagepack(bytes)
    }
}

/// JSON (`serde_json`), id 2 (feature `json`): for caches other tools read.
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    fn id(&self) -> u8 {
        2
    }

    fn name(&self) -> &str {
        "json"
    }

    fn encode(&self, value: Encodable<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
        value.0.json(out)
    }

    fn decode(&self, bytes: &[u8], into: Decoder<'_>) -> Result<(), Error> {
        into.0.json(bytes)
    }
}

/// Whether `C` is one of the built-in codecs, which alone may use ids 0 to 127.
pub(crate) fn is_builtin<C: Codec>() -> bool {
    use std::any::TypeId;
    let id = TypeId::of::<C>();
    #[cfg(feature = "json")]
    if id == TypeId::of::<Json>() {
        return true;
    }
    id == TypeId::of::<MessagePack>()
}

/// The lowest id a codec other than the built-in ones may use.
pub(crate) const FIRST_USER_ID: u8 = 128;

/// A value on its way into a [`Codec`]; serialize it with [`serde::Serialize`].
#[derive(Clone, Copy)]
pub struct Encodable<'a>(&'a dyn Source);

impl<'a> Encodable<'a> {
    /// Wraps a value (the cache does this; you need it only to call [`Codec::encode`]).
    pub fn new<T: Serialize>(value: &'a T) -> Self {
        Encodable(value)
    }
}

impl fmt::Debug for Encodable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Encodable")
    }
}

impl Serialize for Encodable<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        erased_serde::serialize(self.0.erased(), serializer)
    }
}

/// Where a [`Codec`] puts the value it decodes: hand it your format's deserializer.
pub struct Decoder<'a>(&'a mut dyn Sink);

impl Decoder<'_> {
    /// Deserializes the value from `deserializer`.
    pub fn deserialize_from<'de, D: Deserializer<'de>>(self, deserializer: D) -> Result<(), Error> {
        let mut erased = <dyn erased_serde::Deserializer<'de>>::erase(deserializer);
        self.0
            .erased(&mut erased)
            .map_err(|e| Error::Decode(e.to_string()))
    }
}

impl fmt::Debug for Decoder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Decoder")
    }
}

/// A value of a known type, serializable through the built-in formats directly.
trait Source {
    fn erased(&self) -> &dyn erased_serde::Serialize;
    fn messagepack(&self, out: &mut Vec<u8>) -> Result<(), Error>;
    #[cfg(feature = "json")]
    fn json(&self, out: &mut Vec<u8>) -> Result<(), Error>;
}

impl<T: Serialize> Source for T {
    fn erased(&self) -> &dyn erased_serde::Serialize {
        self
    }

    fn messagepack(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
        self.serialize(&mut ser)
            .map_err(|e| Error::Encode(e.to_string()))
    }

    #[cfg(feature = "json")]
    fn json(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        serde_json::to_writer(out, self).map_err(|e| Error::Encode(e.to_string()))
    }
}

/// A place for a value of a known type, filled by the built-in formats directly.
trait Sink {
    fn erased<'de>(
        &mut self,
        deserializer: &mut dyn erased_serde::Deserializer<'de>,
    ) -> Result<(), erased_serde::Error>;
    fn messagepack(&mut self, bytes: &[u8]) -> Result<(), Error>;
    #[cfg(feature = "json")]
    fn json(&mut self, bytes: &[u8]) -> Result<(), Error>;
}

/// The value a [`Decoder`] fills.
struct Slot<T>(Option<T>);

impl<T: DeserializeOwned> Sink for Slot<T> {
    fn erased<'de>(
        &mut self,
        deserializer: &mut dyn erased_serde::Deserializer<'de>,
    ) -> Result<(), erased_serde::Error> {
        self.0 = Some(erased_serde::deserialize(deserializer)?);
        Ok(())
    }

    fn messagepack(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.0 = Some(rmp_serde::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))?);
        Ok(())
    }

    #[cfg(feature = "json")]
    fn json(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.0 = Some(serde_json::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Row {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    /// MessagePack again, but through the erased path a user's codec takes.
    #[derive(Debug)]
    struct ErasedMessagePack;

    impl Codec for ErasedMessagePack {
        fn id(&self) -> u8 {
            201
        }
        fn name(&self) -> &str {
            "erased-messagepack"
        }
        fn encode(&self, value: Encodable<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
            let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
            value
                .serialize(&mut ser)
                .map_err(|e| Error::Encode(e.to_string()))
        }
        fn decode(&self, bytes: &[u8], into: Decoder<'_>) -> Result<(), Error> {
            into.deserialize_from(&mut rmp_serde::Deserializer::from_read_ref(bytes))
        }
    }

    fn row() -> Row {
        Row {
            id: 7,
            name: "alice".into(),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn built_in_and_erased_paths_write_the_same_bytes() {
        let direct = MessagePack.to_vec(&row()).expect("encode");
        let erased = ErasedMessagePack.to_vec(&row()).expect("encode");
        assert_eq!(direct, erased);
        assert_eq!(direct, rmp_serde::to_vec_named(&row()).expect("encode"));
        let back: Row = ErasedMessagePack.from_slice(&direct).expect("decode");
        assert_eq!(back, row());
        let dynamic: &dyn Codec = &MessagePack;
        let back: Row = dynamic.from_slice(&direct).expect("decode");
        assert_eq!(back, row());
    }

    #[test]
    fn encode_appends() {
        let mut out = b"head".to_vec();
        MessagePack
            .encode(Encodable::new(&1u8), &mut out)
            .expect("encode");
        assert_eq!(out, b"head\x01");
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips() {
        let bytes = Json.to_vec(&row()).expect("encode");
        assert_eq!(&bytes[..8], br#"{"id":7,"#);
        let back: Row = Json.from_slice(&bytes).expect("decode");
        assert_eq!(back, row());
        assert!(MessagePack.from_slice::<Row>(&bytes).is_err());
    }

    #[test]
    fn reserved_ids_are_for_built_ins() {
        assert!(is_builtin::<MessagePack>());
        assert!(!is_builtin::<ErasedMessagePack>());
        assert!(MessagePack.id() < FIRST_USER_ID);
    }
}

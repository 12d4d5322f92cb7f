//! The local store and the bytes written to Redis: how values are kept in process, how they
//! are encoded, and the envelope that carries their freshness.

pub(crate) mod codec;
pub(crate) mod envelope;
mod front;
mod local;
mod tag_index;

#[cfg(feature = "json")]
pub use self::codec::Json;
pub use self::codec::{Codec, CodecExt, Decoder, Encodable, MessagePack};
pub use self::local::LocalCapacity;
pub(crate) use self::local::{LocalHit, LocalKey, LocalStore, Seen};

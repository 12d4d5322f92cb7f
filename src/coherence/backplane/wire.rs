//! What goes over the invalidation channel: a version byte, then a MessagePack message
//! naming its sender and either a ping or an invalidation.
//!
//! Messages of another version are ignored, so instances of two releases can share a
//! channel during a rolling upgrade without misreading each other.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::key::Key;
use crate::model::Invalidation;

/// Version of the wire format; messages of another version are ignored.
const WIRE_VERSION: u8 = 1;

/// What goes over the channel.
#[derive(Serialize, Deserialize)]
pub(super) struct Message {
    pub(super) from: u64,
    pub(super) body: Body,
}

#[derive(Serialize, Deserialize)]
pub(super) enum Body {
    Ping(u64),
    Invalidate {
        keys: Vec<String>,
        tags: Vec<String>,
        classes: Vec<String>,
        volatile: bool,
        everything: bool,
    },
}

pub(super) fn encode(message: &Message) -> Result<Vec<u8>, Error> {
    let mut bytes = vec![WIRE_VERSION];
    rmp_serde::encode::write(&mut bytes, message)
        .map_err(|e| Error::Encode(format!("backplane message: {e}")))?;
    Ok(bytes)
}

pub(super) fn decode(bytes: &[u8]) -> Option<Message> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => rmp_serde::from_slice(rest).ok(),
        _ => None,
    }
}

pub(super) fn to_wire(inv: &Invalidation) -> Body {
    let strings = |keys: &std::collections::BTreeSet<Key>| {
        keys.iter().map(|k| k.as_str().to_owned()).collect()
    };
    Body::Invalidate {
        keys: strings(&inv.keys),
        tags: strings(&inv.tags),
        classes: inv.classes.iter().cloned().collect(),
        volatile: inv.volatile,
        everything: inv.everything,
    }
}

/// Keys arrive escaped already; they only ever name exact local entries, so a forged message
/// can remove entries but never widen what a pattern reaches.
pub(super) fn from_wire(body: Body) -> Option<Invalidation> {
    let Body::Invalidate {
        keys,
        tags,
        classes,
        volatile,
        everything,
    } = body
    else {
        return None;
    };
    Some(Invalidation {
        keys: keys
            .into_iter()
            .map(|k| Key::from_escaped(k.into()))
            .collect(),
        tags: tags
            .into_iter()
            .map(|k| Key::from_escaped(k.into()))
            .collect(),
        classes: classes.into_iter().collect(),
        volatile,
        everything,
    })
}

/// A random id per instance: two instances must not take each other for an echo.
pub(super) fn instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_survive_the_wire() {
        let inv = Invalidation::new()
            .key(Key::builder("user:groups:").value("a*b").build())
            .tag(Key::literal("t").expect("valid"))
            .class("sessions")
            .volatile_classes();
        let bytes = encode(&Message {
            from: 7,
            body: to_wire(&inv),
        })
        .expect("encodes");
        let message = decode(&bytes).expect("decodes");
        assert_eq!(message.from, 7);
        assert_eq!(from_wire(message.body), Some(inv));
    }

    #[test]
    fn foreign_bytes_are_ignored() {
        assert!(decode(b"").is_none());
        assert!(decode(b"\x02whatever").is_none());
        assert!(decode(b"\x01\xc1").is_none());
    }
}

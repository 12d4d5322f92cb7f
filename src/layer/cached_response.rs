//! The stored form of a response: status, the headers worth replaying, the body, when it
//! was stored and how old it already was then (for `Age`), how long it was fresh for, and
//! whether it may be served stale.
//!
//! In memory it is an `Arc`, so a local hit clones a pointer, and the body is a `Bytes`, so
//! building the response clones a reference count rather than the bytes. In Redis it is the
//! cache's codec (MessagePack by default) of `{status, headers, body, stored_at_ms,
//! age_ms, fresh_ms, must_revalidate}`, the body and header values as binary strings. The
//! last three were added later: an entry written without them reads as age 0, no known
//! lifetime, may be served stale — what the layer did when it wrote them. `swr_ms`,
//! `sie_ms` (stale windows), `no_cache`, `etag_generated` and `variant` are written only
//! when set, so most entries do without them and an entry without them reads as none.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

/// A response as the cache keeps it. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CachedResponse(Arc<Stored>);

#[derive(Debug, PartialEq, Eq)]
struct Stored {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    stored_at: SystemTime,
    meta: Meta,
    /// Set on a response stored under a request's key that varies on fields the key does
    /// not hold: which fields, and the selector of the request it answered (see
    /// `layer::vary`).
    variant: Option<Box<Variant>>,
}

/// The fields a stored response varies on, and the selector it was stored for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Variant {
    pub(crate) fields: Vec<HeaderName>,
    pub(crate) selector: String,
}

/// What the layer learnt of a response's freshness when it stored it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    /// How old the response already was when stored (the upstream's `Age`, and more).
    pub(crate) initial_age: Duration,
    /// How long it was fresh for from when it was stored, when known.
    pub(crate) fresh_for: Option<Duration>,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub(crate) must_revalidate: bool,
    /// Whether `fresh_for` came from the response itself (its own lifetime, or the
    /// `Last-Modified` heuristic) rather than the layer's TTL; only needed when storing,
    /// so not written.
    pub(crate) explicit: bool,
    /// How long after it stops being fresh it is answered at once while being refreshed in
    /// the background (`stale-while-revalidate`, or the layer's default).
    pub(crate) stale_while_revalidate: Option<Duration>,
    /// How long after it stops being fresh it may stand in for a failing handler
    /// (`stale-if-error`).
    pub(crate) stale_if_error: Option<Duration>,
    /// `Cache-Control: no-cache`: revalidated with the handler before each use.
    pub(crate) no_cache: bool,
    /// Its `ETag` was made by the layer (`CacheLayer::etag`): the handler does not know it,
    /// so it is never sent to the handler in `If-None-Match`.
    pub(crate) etag_generated: bool,
}

/// Headers that describe one connection or one transfer, or that the layer sets itself:
/// never replayed from a stored response.
fn is_replayable(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::CONNECTION
            | header::TRANSFER_ENCODING
            | header::TE
            | header::TRAILER
            | header::UPGRADE
            | header::PROXY_AUTHENTICATE
            | header::PROXY_AUTHORIZATION
            | header::CONTENT_LENGTH
            | header::AGE
            | header::SET_COOKIE
    ) && name.as_str() != "keep-alive"
        && name.as_str() != super::X_CACHE
}

impl CachedResponse {
    /// Captures a response's status and replayable headers with its whole body. Fields the
    /// response's `Connection` header lists describe this one connection and are left out.
    pub(crate) fn new(status: StatusCode, headers: &HeaderMap, body: Bytes, meta: Meta) -> Self {
        let listed = |name: &HeaderName| {
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
        };
        let headers = headers
            .iter()
            .filter(|(n, _)| is_replayable(n) && !listed(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        CachedResponse(Arc::new(Stored {
            status,
            headers,
            body,
            stored_at: SystemTime::now(),
            meta,
            variant: None,
        }))
    }

    /// The same response, marked as the variant that `selector` picks among the responses
    /// varying on `fields`.
    pub(crate) fn with_variant(self, fields: Vec<HeaderName>, selector: String) -> Self {
        let stored = &*self.0;
        CachedResponse(Arc::new(Stored {
            status: stored.status,
            headers: stored.headers.clone(),
            body: stored.body.clone(),
            stored_at: stored.stored_at,
            meta: stored.meta,
            variant: Some(Box::new(Variant { fields, selector })),
        }))
    }

    /// The fields it varies on and the selector it was stored for, when it was stored
    /// under a request's key and varies on fields the key does not hold.
    pub(crate) fn variant(&self) -> Option<&Variant> {
        self.0.variant.as_deref()
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.0.meta
    }

    /// The first stored value of a header.
    pub(crate) fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.0
            .headers
            .iter()
            .find_map(|(n, v)| (n == name).then_some(v))
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.0.status
    }

    pub(crate) fn body(&self) -> &Bytes {
        &self.0.body
    }

    /// When the response was stored.
    pub(crate) fn stored_at(&self) -> SystemTime {
        self.0.stored_at
    }

    /// Writes the stored headers `keep` accepts into `map`.
    pub(crate) fn write_headers_where(
        &self,
        map: &mut HeaderMap,
        keep: impl Fn(&HeaderName) -> bool,
    ) {
        for (n, v) in self.0.headers.iter().filter(|(n, _)| keep(n)) {
            map.append(n.clone(), v.clone());
        }
    }

    /// Writes the stored headers into `map`.
    pub(crate) fn write_headers(&self, map: &mut HeaderMap) {
        // Room for what `respond` adds: `age`, `Cache-Status`, `x-cache` (a grow would
        // reallocate on every hit).
        map.reserve(self.0.headers.len() + 3);
        for (n, v) in &self.0.headers {
            map.append(n.clone(), v.clone());
        }
    }

    /// How long ago the response was stored (0 if the clock went backwards).
    fn resident(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.0.stored_at)
            .unwrap_or(Duration::ZERO)
    }

    /// The response's age in seconds (RFC 9111 §4.2.3): how old it was when stored plus
    /// how long it has been stored.
    #[cfg(test)]
    pub(crate) fn age(&self) -> u64 {
        (self.0.meta.initial_age + self.resident()).as_secs()
    }

    /// How long it has been stale, `None` while fresh or when its lifetime is unknown.
    pub(crate) fn staleness(&self) -> Option<Duration> {
        let fresh_for = self.0.meta.fresh_for?;
        self.resident()
            .checked_sub(fresh_for)
            .filter(|d| !d.is_zero())
    }

    /// Seconds of freshness left, when its lifetime is known: rounded away from zero, so
    /// that it is positive while the response is fresh and negative once it is stale.
    #[cfg(test)]
    pub(crate) fn ttl(&self) -> Option<i64> {
        self.ttl_after(self.resident())
    }

    /// [`age`](Self::age) and [`ttl`](Self::ttl) from one reading of the clock, as a hit
    /// needs both.
    pub(crate) fn age_and_ttl(&self) -> (u64, Option<i64>) {
        let resident = self.resident();
        (
            (self.0.meta.initial_age + resident).as_secs(),
            self.ttl_after(resident),
        )
    }

    fn ttl_after(&self, resident: Duration) -> Option<i64> {
        let fresh_for = self.0.meta.fresh_for?;
        let ceil_secs = |d: Duration| {
            let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
            i64::try_from(secs).unwrap_or(i64::MAX)
        };
        Some(match fresh_for.checked_sub(resident) {
            Some(left) => ceil_secs(left),
            None => -ceil_secs(resident - fresh_for),
        })
    }
}

/// `&[u8]` serialized as a binary string (MessagePack `bin`), not a sequence of numbers.
struct Bin<'a>(&'a [u8]);

impl Serialize for Bin<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Reads a binary string, or a sequence of numbers (what the JSON codec writes).
struct BinBuf(Vec<u8>);

impl<'de> Deserialize<'de> for BinBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BinBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<BinBuf, E> {
                Ok(BinBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<BinBuf, E> {
                Ok(BinBuf(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BinBuf, E> {
                Ok(BinBuf(v.as_bytes().to_vec()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BinBuf, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(BinBuf(out))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

struct HeadersSer<'a>(&'a [(HeaderName, HeaderValue)]);

impl Serialize for HeadersSer<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (n, v) in self.0 {
            seq.serialize_element(&(n.as_str(), Bin(v.as_bytes())))?;
        }
        seq.end()
    }
}

impl Serialize for CachedResponse {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let stored = &*self.0;
        let at_ms = stored
            .stored_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // The fields added later are written only when set: most entries do without them.
        let later = usize::from(stored.meta.no_cache)
            + usize::from(stored.meta.etag_generated)
            + usize::from(stored.variant.is_some())
            + usize::from(stored.meta.stale_while_revalidate.is_some())
            + usize::from(stored.meta.stale_if_error.is_some());
        let mut st = s.serialize_struct("CachedResponse", 7 + later)?;
        // A variant is written with status 0 and its real status beside its fields: a
        // decoder from before variants existed refuses status 0, so it reads the entry as
        // a miss rather than serving one client's variant to every client.
        let status = if stored.variant.is_some() {
            0
        } else {
            stored.status.as_u16()
        };
        st.serialize_field("status", &status)?;
        st.serialize_field("headers", &HeadersSer(&stored.headers))?;
        st.serialize_field("body", &Bin(&stored.body))?;
        st.serialize_field("stored_at_ms", &at_ms)?;
        st.serialize_field("age_ms", &ms(stored.meta.initial_age))?;
        st.serialize_field("fresh_ms", &stored.meta.fresh_for.map(ms))?;
        st.serialize_field("must_revalidate", &stored.meta.must_revalidate)?;
        if let Some(swr) = stored.meta.stale_while_revalidate {
            st.serialize_field("swr_ms", &ms(swr))?;
        }
        if let Some(sie) = stored.meta.stale_if_error {
            st.serialize_field("sie_ms", &ms(sie))?;
        }
        if stored.meta.no_cache {
            st.serialize_field("no_cache", &true)?;
        }
        if stored.meta.etag_generated {
            st.serialize_field("etag_generated", &true)?;
        }
        if let Some(v) = &stored.variant {
            let fields: Vec<&str> = v.fields.iter().map(HeaderName::as_str).collect();
            st.serialize_field("variant", &(stored.status.as_u16(), fields, &v.selector))?;
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for CachedResponse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            status: u16,
            headers: Vec<(String, BinBuf)>,
            body: BinBuf,
            stored_at_ms: u64,
            // Absent from entries written before they existed.
            #[serde(default)]
            age_ms: u64,
            #[serde(default)]
            fresh_ms: Option<u64>,
            #[serde(default)]
            must_revalidate: bool,
            #[serde(default)]
            swr_ms: Option<u64>,
            #[serde(default)]
            sie_ms: Option<u64>,
            #[serde(default)]
            no_cache: bool,
            #[serde(default)]
            etag_generated: bool,
            #[serde(default)]
            variant: Option<(u16, Vec<String>, String)>,
        }
        let wire = Wire::deserialize(d)?;
        let (status, variant) = match wire.variant {
            None => (wire.status, None),
            Some((status, fields, selector)) => {
                let fields = fields
                    .iter()
                    .map(|f| HeaderName::from_bytes(f.as_bytes()).map_err(de::Error::custom))
                    .collect::<Result<Vec<_>, D::Error>>()?;
                (status, Some(Box::new(Variant { fields, selector })))
            }
        };
        let status = StatusCode::from_u16(status).map_err(de::Error::custom)?;
        let headers = wire
            .headers
            .into_iter()
            .map(|(n, v)| {
                let name = HeaderName::from_bytes(n.as_bytes()).map_err(de::Error::custom)?;
                let value = HeaderValue::from_bytes(&v.0).map_err(de::Error::custom)?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, D::Error>>()?;
        Ok(CachedResponse(Arc::new(Stored {
            status,
            headers,
            body: Bytes::from(wire.body.0),
            stored_at: UNIX_EPOCH + Duration::from_millis(wire.stored_at_ms),
            meta: Meta {
                initial_age: Duration::from_millis(wire.age_ms),
                fresh_for: wire.fresh_ms.map(Duration::from_millis),
                must_revalidate: wire.must_revalidate,
                explicit: false,
                stale_while_revalidate: wire.swr_ms.map(Duration::from_millis),
                stale_if_error: wire.sie_ms.map(Duration::from_millis),
                no_cache: wire.no_cache,
                etag_generated: wire.etag_generated,
            },
            variant,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Codec, CodecExt, Json, MessagePack};

    fn sample() -> CachedResponse {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(
            "x-bin",
            HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
        );
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        let meta = Meta {
            initial_age: Duration::from_secs(30),
            fresh_for: Some(Duration::from_secs(60)),
            must_revalidate: true,
            explicit: false,
            stale_while_revalidate: Some(Duration::from_secs(5)),
            stale_if_error: Some(Duration::from_secs(7)),
            no_cache: true,
            etag_generated: true,
        };
        CachedResponse::new(
            StatusCode::CREATED,
            &h,
            Bytes::from_static(b"{\"a\":1}"),
            meta,
        )
    }

    #[test]
    fn transfer_headers_are_not_kept() {
        let r = sample();
        let mut out = HeaderMap::new();
        r.write_headers(&mut out);
        assert!(out.contains_key(header::CONTENT_TYPE));
        assert!(!out.contains_key(header::CONTENT_LENGTH));
        assert!(!out.contains_key(header::CONNECTION));
        assert!(!out.contains_key("x-hop"), "listed in Connection");
        assert!(out.contains_key("x-bin"));
    }

    #[test]
    fn round_trips_through_both_codecs() {
        let r = sample();
        for codec in [&MessagePack as &dyn Codec, &Json] {
            let bytes = codec.to_vec(&r).expect("encode");
            let back: CachedResponse = codec.from_slice(&bytes).expect("decode");
            assert_eq!(back.status(), r.status());
            assert_eq!(back.body(), r.body());
            assert_eq!(back.0.headers, r.0.headers);
            assert_eq!(back.0.meta, r.0.meta);
            assert!(back.age() >= 30);
            // Millisecond precision on the wire.
            assert!(r.age() == back.age());
        }
        // Binary strings, not arrays of numbers (bytes ≥ 0x80 would take 2 bytes each, about
        // 2,000 in all): the body, then about a hundred bytes of named fields.
        let big = CachedResponse::new(
            StatusCode::OK,
            &HeaderMap::new(),
            Bytes::from(vec![0xAB; 1000]),
            Meta::default(),
        );
        let packed = MessagePack.to_vec(&big).expect("encode");
        assert!(packed.len() < 1100, "{} bytes", packed.len());
    }

    #[test]
    fn entries_written_before_the_freshness_fields_still_decode() {
        #[derive(Serialize)]
        struct Old<'a> {
            status: u16,
            headers: Vec<(&'a str, Bin<'a>)>,
            body: Bin<'a>,
            stored_at_ms: u64,
        }
        let old = Old {
            status: 200,
            headers: vec![("etag", Bin(b"\"v1\""))],
            body: Bin(b"old"),
            stored_at_ms: 1,
        };
        for codec in [&MessagePack as &dyn Codec, &Json] {
            let bytes = codec.to_vec(&old).expect("encode");
            let back: CachedResponse = codec.from_slice(&bytes).expect("an old entry decodes");
            assert_eq!(back.body(), &Bytes::from_static(b"old"));
            assert_eq!(*back.meta(), Meta::default());
            assert_eq!(back.ttl(), None);
        }
    }

    #[test]
    fn variants_round_trip_and_older_decoders_refuse_them() {
        let fields = vec![HeaderName::from_static("accept-language")];
        let r = sample().with_variant(fields, "accept-language=fr".to_owned());
        for codec in [&MessagePack as &dyn Codec, &Json] {
            let bytes = codec.to_vec(&r).expect("encode");
            let back: CachedResponse = codec.from_slice(&bytes).expect("decode");
            assert_eq!(back.status(), StatusCode::CREATED);
            assert_eq!(back.variant(), r.variant());
            assert_eq!(back.0.meta, r.0.meta);
            // What a decoder without the `variant` field reads: status 0, refused.
            #[derive(Deserialize)]
            struct Before {
                status: u16,
            }
            let before: Before = codec.from_slice(&bytes).expect("decode");
            assert!(StatusCode::from_u16(before.status).is_err());
        }
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let bad = MessagePack
            .to_vec(&(999u16, Vec::<(String, Vec<u8>)>::new()))
            .expect("encode");
        assert!(MessagePack.from_slice::<CachedResponse>(&bad).is_err());
    }
}

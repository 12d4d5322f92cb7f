//! What the handler answered, as the cache layer sees it: whether it is a failure a stale
//! response may stand in for, and the reading of a storable response's body up to the size
//! limit, placed among the variants of its key (see `layer::vary`) and, with
//! `CacheLayer::etag(true)`, given an `ETag`.

use std::collections::VecDeque;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, ETAG};
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::config::Config;
use super::rules::{store_plan, unstamped};
use crate::layer::body::ResponseBody;
use crate::layer::cached_response::CachedResponse;
use crate::layer::vary::{selector, uncovered_fields};

/// The `detail` of a variant's response that no longer varies on the fields its key was
/// chosen by: not stored, and the request's entry is removed so that the next request
/// learns the new fields.
pub(super) const VARY_CHANGED: &str = "vary-changed";

/// Which key a response is loaded under.
#[derive(Clone, Copy, Debug)]
pub(super) enum Level<'a> {
    /// The request's key: a response that varies is stored there marked as the variant of
    /// this request.
    Base,
    /// The key of a variant of responses varying on these fields.
    Variant(&'a [HeaderName]),
}

/// A response passed on unstored, with why.
pub(super) type NotCaptured<B> = (Response<ResponseBody<B>>, &'static str);

/// Reads a response whose headers allow storing it, up to the size limit. `Ok`: the whole
/// response, to store under a key of `level` for a request with `request` headers. `Err`:
/// the response to pass on (with what was read of its body) and why it is not stored.
pub(super) async fn capture<B: Body>(
    res: Response<B>,
    config: &Config,
    requested: SystemTime,
    level: Level<'_>,
    request: &HeaderMap,
) -> Result<CachedResponse, NotCaptured<B>> {
    let mut meta = match store_plan(&res, config, requested) {
        Ok(meta) => meta,
        Err(reason) => {
            tracing::debug!(status = %res.status(), %reason, "response not stored");
            return Err((res.map(ResponseBody::inner), reason));
        }
    };
    let (mut parts, body) = res.into_parts();
    let mut body = Box::pin(body);
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0usize;
    let mut trailers = false;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
                if let Some(data) = frame.data_ref() {
                    len += data.len();
                } else {
                    trailers = true;
                }
                frames.push_back(frame);
                if len > config.max_body {
                    tracing::debug!(
                        limit = config.max_body,
                        "response body over the size limit; streaming it uncached"
                    );
                    let res =
                        Response::from_parts(parts, ResponseBody::replay(frames, Ok(Some(body))));
                    return Err((res, "size"));
                }
            }
            Some(Err(error)) => {
                tracing::debug!("response body failed while being read; not stored");
                return Err((
                    Response::from_parts(parts, ResponseBody::replay(frames, Err(error))),
                    "body-error",
                ));
            }
        }
    }
    if trailers {
        tracing::debug!("response has trailers; not stored");
        return Err((
            Response::from_parts(parts, ResponseBody::replay(frames, Ok(None))),
            "trailers",
        ));
    }
    let body = match frames.len() {
        0 => Bytes::new(),
        1 => frames
            .pop_front()
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for frame in frames {
                if let Ok(data) = frame.into_data() {
                    all.extend_from_slice(&data);
                }
            }
            all.freeze()
        }
    };
    if config.etag && parts.status.is_success() && !parts.headers.contains_key(ETAG) {
        parts.headers.insert(ETAG, body_etag(&parts.headers, &body));
        meta.etag_generated = true;
    }
    let stored = CachedResponse::new(parts.status, &parts.headers, body, meta);
    // `store_plan` refused `Vary: *` and a `Vary` that is not a list of names.
    let fields = uncovered_fields(&parts.headers, &config.vary).unwrap_or_default();
    match level {
        Level::Base if fields.is_empty() => Ok(stored),
        Level::Base => match selector(request, &fields) {
            Some(selector) => Ok(stored.with_variant(fields, selector)),
            None => Err((unstamped(&stored, false), "vary")),
        },
        Level::Variant(by) if by == fields.as_slice() => Ok(stored),
        Level::Variant(_) => {
            tracing::debug!("a variant's response varies on other fields now; not stored");
            Err((unstamped(&stored, false), VARY_CHANGED))
        }
    }
}

/// A strong `ETag` made from the body and the fields that tell its representation apart
/// (`Content-Type`, `Content-Encoding`): the 64-bit FNV-1a hash, which every instance and
/// every version computes alike, so they agree on it.
fn body_etag(headers: &HeaderMap, body: &[u8]) -> HeaderValue {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
        }
    };
    for name in [CONTENT_TYPE, CONTENT_ENCODING] {
        for value in headers.get_all(name) {
            feed(value.as_bytes());
        }
        // A separator, so that moving bytes between the fields changes the hash.
        feed(&[0]);
    }
    feed(body);
    HeaderValue::from_str(&format!("\"{hash:016x}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_etags_are_stable_and_tell_representations_apart() {
        let plain = HeaderMap::new();
        let mut gzip = HeaderMap::new();
        gzip.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(body_etag(&plain, b"hello"), body_etag(&plain, b"hello"));
        assert_eq!(body_etag(&plain, b"hello").len(), 18);
        assert_ne!(body_etag(&plain, b"hello"), body_etag(&plain, b"hellp"));
        assert_ne!(body_etag(&plain, b"hello"), body_etag(&gzip, b"hello"));
        // FNV-1a of the two separators alone: fixed, whatever the process or version.
        assert_eq!(body_etag(&plain, b""), "\"08328807b4eb6fed\"");
    }
}

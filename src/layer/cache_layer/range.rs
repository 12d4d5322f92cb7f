//! Range requests answered from a stored response (RFC 9110 §14): a single byte range
//! (`bytes=a-b`, `bytes=a-`, `bytes=-n`) of a fresh, complete `200` the local store holds is
//! cut out of it and answered `206 Partial Content` with `Content-Range`, the stored header
//! fields kept. Anything else — several ranges, another unit, a range the body cannot
//! satisfy, `If-Range`, a stored response that varies or must be revalidated, a miss — goes
//! to the handler as before, and its answer is not stored (the layer stores whole responses
//! only).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_RANGE};
use http::{Response, StatusCode};
use http_body::Body;

use super::rules::{respond, Stamp};
use crate::layer::body::ResponseBody;
use crate::layer::cache_status::Outcome;
use crate::layer::cached_response::CachedResponse;

/// The first and last byte (inclusive) a `Range` value asks of a body of `len` bytes, when
/// it is one satisfiable byte range.
pub(super) fn byte_range(range: &HeaderValue, len: usize) -> Option<(usize, usize)> {
    let spec = range.to_str().ok()?.trim();
    let (unit, set) = spec.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') || len == 0 {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<usize>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => {
            let n = number(last)?;
            (n > 0).then(|| (len - n.min(len), len - 1))
        }
        // `a-`: from a to the end.
        (false, true) => {
            let first = number(first)?;
            (first < len).then_some((first, len - 1))
        }
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            (first <= last && first < len).then(|| (first, last.min(len - 1)))
        }
        (true, true) => None,
    }
}

/// The `206` for `range` of a stored response, if the layer answers it (see the module).
pub(super) fn partial<B: Body>(
    stored: &CachedResponse,
    range: &HeaderValue,
    stamp: Stamp,
) -> Option<Response<ResponseBody<B>>> {
    if stored.status() != StatusCode::OK || stored.variant().is_some() || stored.meta().no_cache {
        return None;
    }
    let body: &Bytes = stored.body();
    let (first, last) = byte_range(range, body.len())?;
    let content_range = format!("bytes {first}-{last}/{}", body.len());
    let content_range = HeaderValue::from_str(&content_range).ok()?;
    let full = respond::<B>(stored, false, stamp, Outcome::Hit, None);
    let (mut parts, _) = full.into_parts();
    parts.status = StatusCode::PARTIAL_CONTENT;
    parts.headers.insert(CONTENT_RANGE, content_range);
    let part = ResponseBody::full(body.slice(first..=last));
    Some(Response::from_parts(parts, part))
}

#[cfg(test)]
mod tests {
    use super::byte_range;
    use http::HeaderValue;

    fn range(v: &'static str, len: usize) -> Option<(usize, usize)> {
        byte_range(&HeaderValue::from_static(v), len)
    }

    #[test]
    fn single_byte_ranges() {
        assert_eq!(range("bytes=0-4", 10), Some((0, 4)));
        assert_eq!(range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(range("bytes=-30", 10), Some((0, 9)));
        assert_eq!(range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(range("Bytes = 1-1", 10), Some((1, 1)));
    }

    #[test]
    fn everything_else_goes_to_the_handler() {
        for v in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=10-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=-",
            "bytes=a-b",
            "bytes",
        ] {
            assert_eq!(range(v, 10), None, "{v}");
        }
        assert_eq!(range("bytes=0-", 0), None);
    }
}

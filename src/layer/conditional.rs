//! Conditional requests answered from a stored response (RFC 9110 §13, RFC 9111 §4.3.2):
//! `If-None-Match` with the weak comparison, else `If-Modified-Since` against the stored
//! `Last-Modified` (or `Date`, or the time stored); a `304 Not Modified` carries the
//! headers RFC 9110 §15.4.5 asks for and no body.

use http::header::{
    CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderValue};

use super::cached_response::CachedResponse;
use super::freshness::first_date;

/// A request's preconditions. They stay on the request the handler gets on a miss: a
/// handler that answers them itself (a 304) is passed on, unstored; one that answers in
/// full is stored, and the layer evaluates them on what it stored.
#[derive(Clone, Debug, Default)]
pub(crate) struct Conditions {
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Conditions {
    /// Whether the request has a precondition the layer answers.
    #[inline]
    pub(crate) fn present(headers: &HeaderMap) -> bool {
        headers.contains_key(IF_NONE_MATCH) || headers.contains_key(IF_MODIFIED_SINCE)
    }

    /// The request's preconditions.
    pub(crate) fn of(headers: &HeaderMap) -> Conditions {
        Conditions {
            if_none_match: headers.get_all(IF_NONE_MATCH).iter().cloned().collect(),
            if_modified_since: headers.get(IF_MODIFIED_SINCE).cloned(),
        }
    }

    /// Whether `stored` is what the client already has, so a 304 answers it.
    pub(crate) fn not_modified(&self, stored: &CachedResponse) -> bool {
        if !self.if_none_match.is_empty() {
            // If-Modified-Since is ignored when If-None-Match is present.
            let etag = stored.header(&ETAG).map(HeaderValue::as_bytes);
            return self
                .if_none_match
                .iter()
                .any(|list| list_matches(list.as_bytes(), etag));
        }
        let Some(since) = self
            .if_modified_since
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        else {
            return false;
        };
        let mut headers = HeaderMap::new();
        for name in [LAST_MODIFIED, DATE] {
            if let Some(v) = stored.header(&name) {
                headers.insert(name, v.clone());
            }
        }
        let modified = first_date(&headers, LAST_MODIFIED)
            .or_else(|| first_date(&headers, DATE))
            .unwrap_or_else(|| stored.stored_at());
        modified <= since
    }
}

/// Whether an `If-None-Match` value (`*` or a list of entity-tags) matches `etag` by the
/// weak comparison: the opaque tags are equal, whether either is weak or not.
fn list_matches(list: &[u8], etag: Option<&[u8]>) -> bool {
    if list.trim_ascii() == b"*" {
        return true;
    }
    let Some(wanted) = etag.and_then(opaque) else {
        return false;
    };
    let mut rest = list;
    loop {
        rest = rest.trim_ascii_start();
        while let Some(after) = rest.strip_prefix(b",") {
            rest = after.trim_ascii_start();
        }
        if rest.is_empty() {
            return false;
        }
        let Some((tag, after)) = next_tag(rest) else {
            // Not an entity-tag: the rest cannot be read reliably; no match.
            return false;
        };
        if tag == wanted {
            return true;
        }
        rest = after;
    }
}

/// The opaque tag (quotes included) of one entity-tag, `W/` taken off.
fn opaque(etag: &[u8]) -> Option<&[u8]> {
    let (tag, rest) = next_tag(etag.trim_ascii())?;
    rest.trim_ascii().is_empty().then_some(tag)
}

/// Splits `W/"x", …` into `"x"` and what follows.
fn next_tag(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let s = s.strip_prefix(b"W/").unwrap_or(s);
    if s.first() != Some(&b'"') {
        return None;
    }
    let close = s[1..].iter().position(|&b| b == b'"')? + 1;
    Some((&s[..=close], &s[close + 1..]))
}

/// The headers a 304 carries from the stored response (RFC 9110 §15.4.5); `Last-Modified`
/// too when there is no `ETag`, as it then guides the client's cache.
pub(crate) fn not_modified_headers(stored: &CachedResponse, into: &mut HeaderMap) {
    let has_etag = stored.header(&ETAG).is_some();
    stored.write_headers_where(into, |name| {
        matches!(
            *name,
            ETAG | CACHE_CONTROL | EXPIRES | VARY | DATE | CONTENT_LOCATION
        ) || (*name == LAST_MODIFIED && !has_etag)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_comparison() {
        for (list, etag, matches) in [
            ("\"v1\"", "\"v1\"", true),
            ("W/\"v1\"", "\"v1\"", true),
            ("\"v1\"", "W/\"v1\"", true),
            ("\"v0\", W/\"v1\"", "\"v1\"", true),
            ("\"a,b\", \"v1\"", "\"v1\"", true),
            ("\"v2\"", "\"v1\"", false),
            ("\"v1", "\"v1\"", false),
            ("v1", "\"v1\"", false),
            ("*", "\"v1\"", true),
            ("\"v1\"", "v1", false),
        ] {
            assert_eq!(
                list_matches(list.as_bytes(), Some(etag.as_bytes())),
                matches,
                "{list} vs {etag}"
            );
        }
        assert!(list_matches(b"*", None));
        assert!(!list_matches(b"\"v1\"", None));
    }
}

//! The few `Cache-Control` (and `Pragma`, `Vary`) rules the layers need, parsed without
//! allocating.
//!
//! Only the directives that change what a shared cache may do are read: on requests
//! `no-cache` and `no-store`; on responses `no-store`, `no-cache`, `private`, and a zero
//! `max-age` / `s-maxage`. Directive names are matched case-insensitively and a directive
//! with a value (`private="set-cookie"`) counts as the directive.

use http::header::{CACHE_CONTROL, PRAGMA, VARY};
use http::{HeaderMap, HeaderName};

/// What a request's `Cache-Control` (or `Pragma: no-cache`) asks of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    /// Do not answer from the cache (a fresh response may still be stored).
    pub(crate) no_cache: bool,
    /// Neither answer from nor store into the cache.
    pub(crate) no_store: bool,
}

/// Reads a request's directives. `Pragma: no-cache` counts only when there is no
/// `Cache-Control` header, as RFC 9111 says.
pub(crate) fn request_directives(headers: &HeaderMap) -> RequestDirectives {
    let mut out = RequestDirectives::default();
    for (name, _) in directives(headers) {
        if name.eq_ignore_ascii_case("no-cache") {
            out.no_cache = true;
        } else if name.eq_ignore_ascii_case("no-store") {
            out.no_store = true;
        }
    }
    if !headers.contains_key(CACHE_CONTROL) {
        out.no_cache = headers
            .get_all(PRAGMA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
    }
    out
}

/// Why a response's own headers forbid storing it in a shared cache, if they do.
pub(crate) fn response_forbids_storing(headers: &HeaderMap) -> Option<&'static str> {
    for (n, value) in directives(headers) {
        if n.eq_ignore_ascii_case("no-store") {
            return Some("cache-control: no-store");
        }
        if n.eq_ignore_ascii_case("private") {
            return Some("cache-control: private");
        }
        if n.eq_ignore_ascii_case("no-cache") {
            return Some("cache-control: no-cache");
        }
        if (n.eq_ignore_ascii_case("max-age") || n.eq_ignore_ascii_case("s-maxage"))
            && value.is_some_and(|v| v.trim_matches('"').trim() == "0")
        {
            return Some("cache-control: max-age=0");
        }
    }
    None
}

/// Checks a response's `Vary` against the headers the layer keys on: storing is only safe
/// when every header the response varies on is part of the key.
pub(crate) fn vary_is_covered(headers: &HeaderMap, declared: &[HeaderName]) -> Result<(), String> {
    for value in headers.get_all(VARY) {
        let Ok(value) = value.to_str() else {
            return Err("vary: (not text)".to_owned());
        };
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Err("vary: *".to_owned());
            }
            if !declared
                .iter()
                .any(|d| d.as_str().eq_ignore_ascii_case(name))
            {
                return Err(format!("vary: {name} (not declared with CacheLayer::vary)"));
            }
        }
    }
    Ok(())
}

/// Every `name[=value]` directive of every `Cache-Control` header.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (&str, Option<&str>)> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            Some(match d.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (d, None),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn request_directives_are_read_case_insensitively() {
        let d = request_directives(&map(&[("cache-control", "max-age=0, No-Cache")]));
        assert!(d.no_cache && !d.no_store);
        let d = request_directives(&map(&[("cache-control", "no-store")]));
        assert!(d.no_store);
        let d = request_directives(&map(&[("pragma", "no-cache")]));
        assert!(d.no_cache);
        // Cache-Control present: Pragma is ignored.
        let d = request_directives(&map(&[
            ("cache-control", "max-stale"),
            ("pragma", "no-cache"),
        ]));
        assert!(!d.no_cache);
    }

    #[test]
    fn response_rules() {
        assert!(
            response_forbids_storing(&map(&[("cache-control", "public, max-age=60")])).is_none()
        );
        for v in [
            "no-store",
            "private",
            "PRIVATE=\"x\"",
            "no-cache",
            "s-maxage=0",
            "max-age=\"0\"",
        ] {
            let h = map(&[("cache-control", v)]);
            assert!(response_forbids_storing(&h).is_some(), "{v}");
        }
    }

    #[test]
    fn vary_must_be_declared() {
        let accept = HeaderName::from_static("accept-language");
        assert!(vary_is_covered(&map(&[]), &[]).is_ok());
        assert!(vary_is_covered(
            &map(&[("vary", "Accept-Language")]),
            std::slice::from_ref(&accept)
        )
        .is_ok());
        assert!(vary_is_covered(
            &map(&[("vary", "accept-language, origin")]),
            std::slice::from_ref(&accept)
        )
        .is_err());
        assert!(vary_is_covered(&map(&[("vary", "*")]), &[accept]).is_err());
    }
}

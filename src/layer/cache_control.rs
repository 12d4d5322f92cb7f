//! The `Cache-Control` (and `Pragma`) rules the layers need, parsed without
//! allocating.
//!
//! On requests `no-cache` and `no-store` are read; on responses `no-store`, `no-cache`,
//! `private`, `must-revalidate`, `proxy-revalidate`, `max-age`, `s-maxage`, and RFC 5861's
//! `stale-while-revalidate` and `stale-if-error`. Directive
//! names are matched case-insensitively and a directive with a value (`private="set-cookie"`)
//! counts as the directive.
//!
//! Hand-written rather than `headers::CacheControl` on purpose: that parser matches names
//! case-sensitively and drops the qualified forms (`Private`, `private="x"`,
//! `no-cache="set-cookie"` all read as absent, so a shared cache would store them), has no
//! accessor for `proxy-revalidate`, and fails the whole header on one malformed value.

use http::header::{CACHE_CONTROL, PRAGMA};
use http::HeaderMap;

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

/// What a response's `Cache-Control` says to a shared cache. For a directive given twice
/// the first occurrence counts (RFC 9111 §4.2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    /// `public`: storable whatever its status (RFC 9111 §3).
    pub(crate) public: bool,
    /// `must-revalidate`, `proxy-revalidate`, or `s-maxage` (which implies
    /// `proxy-revalidate` for a shared cache): never served stale.
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<Delta>,
    pub(crate) s_maxage: Option<Delta>,
    /// RFC 5861 `stale-while-revalidate=N`.
    pub(crate) stale_while_revalidate: Option<Delta>,
    /// RFC 5861 `stale-if-error=N`.
    pub(crate) stale_if_error: Option<Delta>,
}

/// A `delta-seconds` value: a number of seconds, or a value that is not one (the response
/// is then treated as stale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delta {
    Secs(u64),
    Invalid,
}

/// The largest delta-seconds a cache needs to represent (RFC 9111 §1.2.2): larger values,
/// and overflowing ones, count as this.
const DELTA_MAX: u64 = 2_147_483_648;

impl Delta {
    /// The seconds, as a duration; `None` for an invalid value (which grants nothing).
    pub(crate) fn secs(self) -> Option<std::time::Duration> {
        match self {
            Delta::Secs(secs) => Some(std::time::Duration::from_secs(secs)),
            Delta::Invalid => None,
        }
    }

    fn parse(value: Option<&str>) -> Delta {
        let Some(v) = value.map(|v| v.trim().trim_matches('"')) else {
            return Delta::Invalid;
        };
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Delta::Invalid;
        }
        Delta::Secs(v.parse::<u64>().map_or(DELTA_MAX, |n| n.min(DELTA_MAX)))
    }
}

/// Reads a response's directives.
pub(crate) fn response_directives(headers: &HeaderMap) -> ResponseDirectives {
    let mut out = ResponseDirectives::default();
    for (n, value) in directives(headers) {
        if n.eq_ignore_ascii_case("no-store") {
            out.no_store = true;
        } else if n.eq_ignore_ascii_case("no-cache") {
            out.no_cache = true;
        } else if n.eq_ignore_ascii_case("private") {
            out.private = true;
        } else if n.eq_ignore_ascii_case("public") {
            out.public = true;
        } else if n.eq_ignore_ascii_case("must-revalidate")
            || n.eq_ignore_ascii_case("proxy-revalidate")
        {
            out.must_revalidate = true;
        } else if n.eq_ignore_ascii_case("max-age") {
            out.max_age.get_or_insert(Delta::parse(value));
        } else if n.eq_ignore_ascii_case("s-maxage") {
            out.s_maxage.get_or_insert(Delta::parse(value));
            out.must_revalidate = true;
        } else if n.eq_ignore_ascii_case("stale-while-revalidate") {
            out.stale_while_revalidate
                .get_or_insert(Delta::parse(value));
        } else if n.eq_ignore_ascii_case("stale-if-error") {
            out.stale_if_error.get_or_insert(Delta::parse(value));
        }
    }
    out
}

/// Why a response's directives forbid a shared cache to store it, if they do. `no-cache`
/// allows storing it with revalidation before each use, which needs a validator
/// (`has_validators`: an `ETag` or `Last-Modified` of its own): without one it is not
/// stored.
pub(crate) fn directives_forbid_storing(
    d: &ResponseDirectives,
    has_validators: bool,
) -> Option<&'static str> {
    if d.no_store {
        Some("no-store")
    } else if d.private {
        Some("private")
    } else if d.no_cache && !has_validators {
        Some("no-cache")
    } else {
        None
    }
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

    fn forbids(value: &'static str) -> bool {
        let d = response_directives(&map(&[("cache-control", value)]));
        directives_forbid_storing(&d, false).is_some()
    }

    #[test]
    fn response_rules() {
        assert!(!forbids("public, max-age=60"));
        for v in [
            "no-store",
            "private",
            "PRIVATE=\"x\"",
            "no-cache",
            "No-Cache=\"set-cookie\"",
        ] {
            assert!(forbids(v), "{v}");
        }
        // `no-cache` with a validator: stored, revalidated before each use.
        let d = response_directives(&map(&[("cache-control", "no-cache")]));
        assert_eq!(directives_forbid_storing(&d, true), None);
        let d = response_directives(&map(&[("cache-control", "no-cache, no-store")]));
        assert_eq!(directives_forbid_storing(&d, true), Some("no-store"));
    }

    #[test]
    fn response_freshness_directives() {
        let d = response_directives(&map(&[(
            "cache-control",
            "Max-Age=\"60\", max-age=5, S-MAXAGE=10",
        )]));
        // The first max-age counts; s-maxage implies proxy-revalidate.
        assert_eq!(d.max_age, Some(Delta::Secs(60)));
        assert_eq!(d.s_maxage, Some(Delta::Secs(10)));
        assert!(d.must_revalidate);
        let d = response_directives(&map(&[("cache-control", "max-age=1.5, proxy-revalidate")]));
        assert_eq!(d.max_age, Some(Delta::Invalid));
        assert!(d.must_revalidate && d.s_maxage.is_none());
        let d = response_directives(&map(&[(
            "cache-control",
            "max-age=99999999999999999999999",
        )]));
        assert_eq!(d.max_age, Some(Delta::Secs(DELTA_MAX)));
        assert_eq!(
            response_directives(&map(&[("cache-control", "max-age")])).max_age,
            Some(Delta::Invalid)
        );
    }

    #[test]
    fn rfc5861_directives() {
        let d = response_directives(&map(&[(
            "cache-control",
            "max-age=1, Stale-While-Revalidate=30, stale-if-error=\"600\"",
        )]));
        assert_eq!(d.stale_while_revalidate, Some(Delta::Secs(30)));
        assert_eq!(d.stale_if_error, Some(Delta::Secs(600)));
        let d = response_directives(&map(&[("cache-control", "stale-while-revalidate")]));
        assert_eq!(d.stale_while_revalidate.and_then(Delta::secs), None);
    }
}

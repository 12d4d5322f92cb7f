//! How the cache layer answered a request, told in `Cache-Status` (RFC 9211) and in
//! `x-cache`.
//!
//! The values a hit needs (`age`, `Cache-Status` with its `ttl`) come from small tables of
//! static header values filled on first use, so the hit path writes them without
//! allocating; numbers past the tables are formatted as usual.

use std::sync::OnceLock;

use http::{HeaderName, HeaderValue, StatusCode};

use super::x_cache::XCache;

/// The name of the `Cache-Status` header.
#[allow(clippy::declare_interior_mutable_const)]
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Whether the handler's response was stored, and if not why (a `detail` token:
/// `no-store`, `private`, `no-cache`, `status`, `set-cookie`, `vary`, `vary-changed`,
/// `size`, `stale`…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    Yes,
    No(&'static str),
}

/// How a response got its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// From the cache, the handler not called.
    Hit,
    /// From the cache although the request said `no-cache`: its key was refreshed less
    /// than the layer's interval ago.
    RateLimited,
    /// From another `no-cache` request's refresh of the same key, joined while it ran.
    RefreshCollapsed,
    /// From another request's load of the same key, joined while it ran.
    Collapsed,
    /// From the handler, and stored or not.
    Miss(Stored),
    /// From the handler, and stored or not, the request's entry holding another request's
    /// variant (a response that varies on fields whose values differ).
    VaryMiss(Stored),
    /// From the handler because the request said `no-cache`, and stored or not.
    Refresh(Stored),
    /// The stale entry, which the handler's `304 Not Modified` freshened (and it was
    /// stored again).
    Revalidated,
    /// The stale entry, inside its `stale-while-revalidate` window, answered at once while
    /// the handler refreshes it in the background.
    StaleWhileRevalidate,
    /// A stored `no-cache` response, which the handler's `304 Not Modified` confirmed
    /// before this use.
    Validated,
    /// The stale entry, the handler having failed (`status`: its status, `None` for an
    /// error of the inner service).
    Stale { status: Option<StatusCode> },
    /// Not looked up: the request's method is not cached.
    Method,
    /// Not looked up, for the reason given (a token: `no-store`, `range`, `credentials`…).
    Bypass(&'static str),
}

impl Outcome {
    pub(crate) fn x_cache(self) -> XCache {
        match self {
            Outcome::Hit
            | Outcome::Collapsed
            | Outcome::RateLimited
            | Outcome::RefreshCollapsed => XCache::Hit,
            Outcome::Miss(_) | Outcome::VaryMiss(_) | Outcome::Refresh(_) => XCache::Miss,
            Outcome::Stale { .. } | Outcome::StaleWhileRevalidate => XCache::Stale,
            Outcome::Revalidated | Outcome::Validated => XCache::Revalidated,
            Outcome::Method | Outcome::Bypass(_) => XCache::Bypass,
        }
    }

    /// The `Cache-Status` member of this layer; `ttl` is the stored response's freshness
    /// left, in seconds, when known (negative once stale).
    pub(crate) fn cache_status(self, ttl: Option<i64>) -> HeaderValue {
        if let (Outcome::Hit, Some(ttl)) = (self, ttl) {
            if let Some(value) = usize::try_from(ttl).ok().and_then(hit_with_ttl) {
                return value;
            }
        }
        let base = match self {
            Outcome::Hit => "stormcache; hit",
            Outcome::Collapsed => "stormcache; fwd=miss; collapsed",
            Outcome::RateLimited => "stormcache; hit",
            Outcome::RefreshCollapsed => "stormcache; fwd=request; collapsed",
            Outcome::Miss(Stored::Yes) => "stormcache; fwd=miss; stored",
            Outcome::Miss(Stored::No(_)) => "stormcache; fwd=miss",
            Outcome::VaryMiss(Stored::Yes) => "stormcache; fwd=vary-miss; stored",
            Outcome::VaryMiss(Stored::No(_)) => "stormcache; fwd=vary-miss",
            Outcome::Refresh(Stored::Yes) => "stormcache; fwd=request; stored",
            Outcome::Refresh(Stored::No(_)) => "stormcache; fwd=request",
            Outcome::Stale { .. } => "stormcache; fwd=stale",
            // Not forwarded: the handler runs in the background, for the next requests.
            Outcome::StaleWhileRevalidate => "stormcache; hit",
            Outcome::Revalidated => "stormcache; fwd=stale; fwd-status=304; stored",
            Outcome::Validated => "stormcache; fwd=stale; fwd-status=304",
            Outcome::Method => "stormcache; fwd=method",
            Outcome::Bypass(_) => "stormcache; fwd=bypass",
        };
        let mut value = String::from(base);
        match self {
            Outcome::Stale {
                status: Some(status),
            } => {
                value.push_str("; fwd-status=");
                value.push_str(status.as_str());
            }
            Outcome::Stale { status: None } => value.push_str("; detail=error"),
            Outcome::Bypass(detail)
            | Outcome::Miss(Stored::No(detail))
            | Outcome::VaryMiss(Stored::No(detail))
            | Outcome::Refresh(Stored::No(detail)) => {
                value.push_str("; detail=");
                value.push_str(detail);
            }
            _ => {}
        }
        let with_ttl = matches!(
            self,
            Outcome::Hit
                | Outcome::Collapsed
                | Outcome::RateLimited
                | Outcome::RefreshCollapsed
                | Outcome::Stale { .. }
                | Outcome::StaleWhileRevalidate
                | Outcome::Revalidated
                | Outcome::Validated
                | Outcome::Miss(Stored::Yes)
                | Outcome::VaryMiss(Stored::Yes)
                | Outcome::Refresh(Stored::Yes)
        );
        if let (true, Some(ttl)) = (with_ttl, ttl) {
            value.push_str("; ttl=");
            value.push_str(&ttl.to_string());
        }
        if self == Outcome::RateLimited {
            // After `ttl`: the member reads as a hit, then says why `no-cache` was not
            // followed.
            value.push_str("; detail=rate-limited");
        }
        if self == Outcome::StaleWhileRevalidate {
            value.push_str("; detail=stale-while-revalidate");
        }
        if value.len() == base.len() {
            return HeaderValue::from_static(base);
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(base))
    }
}

/// How many small numbers the tables hold.
const TABLE: usize = 512;

/// `Age: <secs>`, without allocating for the first [`TABLE`] seconds.
pub(crate) fn age_value(secs: u64) -> HeaderValue {
    static AGES: [OnceLock<HeaderValue>; TABLE] = [const { OnceLock::new() }; TABLE];
    match usize::try_from(secs).ok().and_then(|i| AGES.get(i)) {
        Some(slot) => slot.get_or_init(|| leaked(secs.to_string())).clone(),
        None => HeaderValue::from(secs),
    }
}

/// `stormcache; hit; ttl=<secs>` from its table, for the first [`TABLE`] seconds.
fn hit_with_ttl(secs: usize) -> Option<HeaderValue> {
    static HITS: [OnceLock<HeaderValue>; TABLE] = [const { OnceLock::new() }; TABLE];
    let slot = HITS.get(secs)?;
    Some(
        slot.get_or_init(|| leaked(format!("stormcache; hit; ttl={secs}")))
            .clone(),
    )
}

/// A static header value made once: cloning it copies a pointer, where a value made from
/// a `String` each time would allocate on every hit. At most `2 × TABLE` short strings
/// are ever made this way.
fn leaked(text: String) -> HeaderValue {
    HeaderValue::from_static(Box::leak(text.into_boxed_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let cases = [
            (Outcome::Hit, None, "stormcache; hit"),
            (Outcome::Hit, Some(12), "stormcache; hit; ttl=12"),
            (Outcome::Hit, Some(100_000), "stormcache; hit; ttl=100000"),
            (
                Outcome::Miss(Stored::Yes),
                Some(60),
                "stormcache; fwd=miss; stored; ttl=60",
            ),
            (
                Outcome::Miss(Stored::No("no-store")),
                None,
                "stormcache; fwd=miss; detail=no-store",
            ),
            (
                Outcome::Refresh(Stored::No("status")),
                Some(5),
                "stormcache; fwd=request; detail=status",
            ),
            (
                Outcome::Stale {
                    status: Some(StatusCode::SERVICE_UNAVAILABLE),
                },
                Some(-3),
                "stormcache; fwd=stale; fwd-status=503; ttl=-3",
            ),
            (
                Outcome::Stale { status: None },
                None,
                "stormcache; fwd=stale; detail=error",
            ),
            (Outcome::Method, None, "stormcache; fwd=method"),
            (
                Outcome::Bypass("range"),
                Some(5),
                "stormcache; fwd=bypass; detail=range",
            ),
            (Outcome::Collapsed, None, "stormcache; fwd=miss; collapsed"),
            (
                Outcome::RateLimited,
                Some(30),
                "stormcache; hit; ttl=30; detail=rate-limited",
            ),
            (
                Outcome::RefreshCollapsed,
                Some(30),
                "stormcache; fwd=request; collapsed; ttl=30",
            ),
            (
                Outcome::StaleWhileRevalidate,
                Some(-3),
                "stormcache; hit; ttl=-3; detail=stale-while-revalidate",
            ),
            (
                Outcome::VaryMiss(Stored::Yes),
                Some(60),
                "stormcache; fwd=vary-miss; stored; ttl=60",
            ),
            (
                Outcome::VaryMiss(Stored::No("vary-changed")),
                None,
                "stormcache; fwd=vary-miss; detail=vary-changed",
            ),
            (
                Outcome::Validated,
                Some(30),
                "stormcache; fwd=stale; fwd-status=304; ttl=30",
            ),
        ];
        for (outcome, ttl, want) in cases {
            assert_eq!(outcome.cache_status(ttl), want, "{outcome:?}");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(age_value(0), "0");
        assert_eq!(age_value(0), "0");
        assert_eq!(age_value(511), "511");
        assert_eq!(age_value(512), "512");
        assert_eq!(age_value(u64::MAX), u64::MAX.to_string().as_str());
    }
}

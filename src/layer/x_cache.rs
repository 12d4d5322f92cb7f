//! The `x-cache` header: how the cache layer answered a request.

use http::{HeaderName, HeaderValue};

/// The name of the header that says how the cache layer answered.
pub const X_CACHE: &str = "x-cache";

#[allow(clippy::declare_interior_mutable_const)]
pub(super) const X_CACHE_HEADER: HeaderName = HeaderName::from_static(X_CACHE);

/// How a response got its answer, as told in `x-cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum XCache {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl XCache {
    pub(super) fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            XCache::Hit => "hit",
            XCache::Miss => "miss",
            XCache::Stale => "stale",
            XCache::Revalidated => "revalidated",
            XCache::Bypass => "bypass",
        })
    }
}

//! Which statuses a response may be stored with, and how long one that gives no lifetime
//! of its own stays fresh (RFC 9111 §3, §4.2.2).
//!
//! The layer's [`statuses`](super::CacheLayer::statuses) (default the heuristically
//! cacheable ones of RFC 9110 §15.1) are the statuses stored on the layer's *heuristic*:
//! a response that sets its own lifetime (`max-age`, `s-maxage`, `Expires`) or says
//! `public` is stored whatever its final status — the origin chose to let caches keep it —
//! except `206` (the layer does not store parts) and `304` (not a response to store).
//!
//! Without a lifetime of its own, a response with a `Last-Modified` is fresh for a tenth of
//! the time since it was modified, at most [`heuristic_max`](super::CacheLayer::heuristic_max)
//! (default: the layer's TTL when set, else a day); one without stays fresh for the
//! layer's TTL as before.

use std::time::Duration;

use http::header::EXPIRES;
use http::{HeaderMap, StatusCode};

use super::config::Config;
use super::CacheLayer;
use crate::layer::cache_control::ResponseDirectives;
use crate::model::LONGEST;

/// Whether a response of this status may be stored: a status the layer stores on its
/// heuristic, or any final status but `206` and `304` when the response gives its own
/// lifetime or says `public`.
pub(super) fn storable_status(
    status: StatusCode,
    headers: &HeaderMap,
    directives: &ResponseDirectives,
    config: &Config,
) -> bool {
    if config.statuses.contains(&status) {
        return true;
    }
    let explicit = directives.s_maxage.is_some()
        || directives.max_age.is_some()
        || directives.public
        || headers.contains_key(EXPIRES);
    explicit
        && !status.is_informational()
        && status != StatusCode::PARTIAL_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

impl CacheLayer {
    /// The most a response that gives no lifetime of its own but has a `Last-Modified` is
    /// fresh for (RFC 9111 §4.2.2): such a response is fresh for a tenth of the time
    /// between its `Last-Modified` and its `Date`, at most this (default: the layer's
    /// [`ttl`](CacheLayer::ttl) when set, else a day), within
    /// [`min_ttl`](CacheLayer::min_ttl) and [`max_ttl`](CacheLayer::max_ttl). A response
    /// with neither is fresh for the layer's `ttl`.
    ///
    /// Set it apart from `ttl` to store responses that say nothing already stale
    /// (`ttl(Duration::ZERO)`: revalidated or served stale, never reused while the handler
    /// answers) while still reusing those whose `Last-Modified` says they change rarely.
    pub fn heuristic_max(mut self, max: Duration) -> Self {
        self.config().heuristic_max = Some(max.min(LONGEST));
        self
    }
}

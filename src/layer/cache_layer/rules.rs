//! The HTTP rules of the cache layer: which requests may share an entry and under which key
//! (credentials, `Vary`, principal, nested layers), which responses may be stored, and how
//! an answer is written (`age`, `HEAD`, `304`, `x-cache`, `Cache-Status`).

use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, AGE, CONTENT_LENGTH, ETAG, LAST_MODIFIED, SET_COOKIE};
use http::{Request, Response, StatusCode};
use http_body::Body;

use super::config::Config;
use super::heads::Heads;
use super::heuristic::storable_status;
use super::stale::declared_grace;
use crate::layer::body::ResponseBody;
use crate::layer::cache_control::{
    directives_forbid_storing, response_directives, Delta, ResponseDirectives,
};
use crate::layer::cache_status::{age_value, Outcome, CACHE_STATUS};
use crate::layer::cached_response::{CachedResponse, Meta};
use crate::layer::conditional::{not_modified_headers, Conditions};
use crate::layer::freshness::Freshness;
use crate::layer::request_info::{original_uri, RequestInfo};
use crate::layer::request_key::{custom_base, default_base, finish, with_host};
use crate::layer::vary::uncovered_fields;
use crate::layer::x_cache::{XCache, X_CACHE_HEADER};
use crate::model::Lifetime;
use crate::Key;

/// Marks a request that a `CacheLayer` passes on to its inner service without answering it
/// from the cache, so that a `CacheLayer` further in (a `route_layer` under a router-wide
/// layer) keys it apart instead of joining the outer layer's load of the same key.
#[derive(Clone, Copy, Debug)]
struct Nested;

pub(super) fn mark_nested<B>(mut req: Request<B>) -> Request<B> {
    req.extensions_mut().insert(Nested);
    req
}

/// Whether an outer `CacheLayer` passed the request on (see [`Nested`]).
pub(super) fn is_nested(extensions: &http::Extensions) -> bool {
    extensions.get::<Nested>().is_some()
}

/// Marks a response answered by a `CacheLayer` under another one: the outer layer neither
/// stores it again nor changes how it says it was answered. An extension rather than the
/// `x-cache` header, which can be turned off, and which an upstream may send too.
#[derive(Clone, Copy, Debug)]
struct AnsweredInside;

/// How the answers to one request are marked: whether it came through an outer
/// `CacheLayer`, and whether `x-cache` is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    pub(super) nested: bool,
    pub(super) x_cache: bool,
}

/// The key of a request, or why it bypasses the cache (a `detail` token of
/// `Cache-Status`).
pub(super) fn plan_key(
    config: &Config,
    parts: &http::request::Parts,
    heads: Heads,
    params: Option<&axum::extract::RawPathParams>,
    principal: Option<&str>,
) -> Result<Key, &'static str> {
    if principal.is_none() && !config.shared_with_credentials && heads.credentials() {
        tracing::trace!("request with credentials and no principal; bypassing the cache");
        return Err("credentials");
    }
    let uri = original_uri(parts);
    let mut base = match &config.key_fn {
        None => default_base(uri.path(), uri.query(), &config.query),
        Some(f) => custom_base(&f(&RequestInfo::with(parts, params, principal)).ok_or("key")?),
    };
    if config.key_host {
        base = with_host(base, &parts.headers, uri).ok_or("host")?;
    }
    if is_nested(&parts.extensions) {
        // Under another CacheLayer, which is loading this very request: the same key in
        // the same class would join the outer layer's load and wait for itself.
        base = base.literal("|n:");
    }
    finish(base, &parts.headers, &config.vary, principal).ok_or("key")
}

/// What storing the response would keep of its freshness, or why its head forbids storing
/// it (a `detail` token of `Cache-Status`). `requested` is when the request went to the
/// inner service.
pub(super) fn store_plan<B: Body>(
    res: &Response<B>,
    config: &Config,
    requested: SystemTime,
) -> Result<Meta, &'static str> {
    let headers = res.headers();
    let directives = response_directives(headers);
    if !storable_status(res.status(), headers, &directives, config) {
        return Err("status");
    }
    if res.extensions().get::<AnsweredInside>().is_some() {
        // A `route_layer` cache inside a router-wide one: the inner, more specific layer
        // owns the entry (its TTL, class and tags); storing it again here would keep a copy
        // its invalidation cannot reach.
        return Err("inner");
    }
    if headers.contains_key(SET_COOKIE) {
        return Err("set-cookie");
    }
    if let Some(reason) = directives_forbid_storing(&directives, has_own_validators(headers)) {
        return Err(reason);
    }
    // A response that varies is stored as a variant (see `layer::vary`); `Vary: *` never.
    uncovered_fields(headers, &config.vary)?;
    let declared_len = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let hinted = res.body().size_hint().lower();
    let limit = config.max_body as u64;
    if declared_len.is_some_and(|n| n > limit) || hinted > limit {
        return Err("size");
    }
    meta_of(headers, &directives, config, requested)
}

/// What the layer keeps of a storable response's freshness, or `stale` when it is stale on
/// arrival.
pub(super) fn meta_of(
    headers: &http::HeaderMap,
    directives: &ResponseDirectives,
    config: &Config,
    requested: SystemTime,
) -> Result<Meta, &'static str> {
    let freshness = Freshness::of(headers, directives, requested, SystemTime::now());
    let (fresh_for, explicit) = match freshness.remaining() {
        // `no-cache`: revalidated before each use whatever its age, so `max-age=0` beside
        // it changes nothing; it is kept for the layer's TTL.
        Some(Duration::ZERO) if directives.no_cache => (config.options.ttl, false),
        // Stale on arrival: storing it would only be worth it with revalidation.
        Some(Duration::ZERO) => return Err("stale"),
        Some(left) => (Some(config.clamp_ttl(left)), true),
        // The heuristic (RFC 9111 §4.2.2): a tenth of the time since `Last-Modified`, at
        // most the layer's cap; the entry lives that long. Zero (modified just now, or
        // older than that tenth already) stores it stale, kept for revalidation and the
        // grace like a response stored with a TTL of zero.
        None => match freshness.heuristic_remaining(config.heuristic_cap()) {
            Some(left) => (Some(config.clamp_ttl(left)), true),
            // Nothing to go on: the layer's TTL, when it sets one (else the class's).
            None => (config.options.ttl, false),
        },
    };
    // A `no-cache` response counts as one that must be revalidated: it gets no stale window.
    let must_revalidate = freshness.must_revalidate || directives.no_cache;
    // RFC 5861 windows: the response's own, else (for `stale-while-revalidate`) the
    // layer's default; an invalid value grants nothing. None for what must be revalidated.
    let may_be_stale = !must_revalidate;
    let stale_while_revalidate = directives
        .stale_while_revalidate
        .map_or(config.stale_while_revalidate, Delta::secs)
        .filter(|w| may_be_stale && !w.is_zero());
    let stale_if_error = directives
        .stale_if_error
        .and_then(Delta::secs)
        .filter(|w| may_be_stale && !w.is_zero());
    Ok(Meta {
        initial_age: freshness.initial_age,
        fresh_for,
        // A `no-cache` response is never served without the handler's word: not stale
        // either when the handler fails.
        must_revalidate,
        explicit,
        stale_while_revalidate,
        stale_if_error,
        no_cache: directives.no_cache,
        etag_generated: false,
    })
}

/// Whether a stored response has a validator the handler knows to revalidate it with (an
/// `ETag` the layer generated is not one).
pub(super) fn has_validators(stored: &CachedResponse) -> bool {
    (stored.header(&ETAG).is_some() && !stored.meta().etag_generated)
        || stored.header(&LAST_MODIFIED).is_some()
}

/// Whether the response carries a validator of its own (`ETag`, `Last-Modified`).
pub(super) fn has_own_validators(headers: &http::HeaderMap) -> bool {
    headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED)
}

/// The lifetime of a response in the cache: its own freshness when it gives one (or the
/// `Last-Modified` heuristic does), kept past it for the grace only to be revalidated when
/// it must be revalidated; `None` for the layer's TTL and grace.
///
/// A response with `stale-while-revalidate` or `stale-if-error` is kept for the largest of
/// those windows and the layer's `grace`, so that it is there to be served.
pub(super) fn lifetime_of(stored: &CachedResponse, grace: Option<Duration>) -> Option<Lifetime> {
    let meta = stored.meta();
    let declared = declared_grace(stored);
    let lifetime = Lifetime {
        ttl: meta.fresh_for.filter(|_| meta.explicit),
        grace: match declared {
            // Kept past its freshness only to be revalidated (RFC 9111 §4.2.4 forbids
            // serving it stale: `stale::may_stand_in` and `in_revalidate_window` refuse
            // it, and a timeout waits or answers 504): so only with a validator.
            _ if meta.must_revalidate && has_validators(stored) => grace,
            _ if meta.must_revalidate => Some(Duration::ZERO),
            Some(declared) => Some(declared.max(grace.unwrap_or_default())),
            None => None,
        },
    };
    (lifetime != Lifetime::default()).then_some(lifetime)
}

/// Builds the response for a stored entry: in full, or `304 Not Modified` when the
/// request's preconditions say the client has it.
pub(super) fn respond<B: Body>(
    stored: &CachedResponse,
    head: bool,
    stamp: Stamp,
    outcome: Outcome,
    conditions: Option<&Conditions>,
) -> Response<ResponseBody<B>> {
    let mut res = if conditions.is_some_and(|c| c.not_modified(stored)) {
        let mut res = Response::new(ResponseBody::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        not_modified_headers(stored, res.headers_mut());
        res
    } else {
        unstamped(stored, head)
    };
    let headers = res.headers_mut();
    // On a miss too: the upstream's own `Age` was kept with the entry.
    let (age, ttl) = stored.age_and_ttl();
    if outcome.x_cache() != XCache::Miss || age > 0 {
        headers.insert(AGE, age_value(age));
    }
    headers.append(CACHE_STATUS, outcome.cache_status(ttl));
    if stamp.x_cache {
        headers.insert(X_CACHE_HEADER, outcome.x_cache().header_value());
    }
    if stamp.nested {
        res.extensions_mut().insert(AnsweredInside);
    }
    res
}

/// A stored response as it was stored, not yet marked with how it was answered.
pub(super) fn unstamped<B: Body>(stored: &CachedResponse, head: bool) -> Response<ResponseBody<B>> {
    let body = if head {
        ResponseBody::empty()
    } else {
        ResponseBody::full(stored.body().clone())
    };
    let mut res = Response::new(body);
    *res.status_mut() = stored.status();
    let headers = res.headers_mut();
    stored.write_headers(headers);
    if head {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(stored.body().len()));
    }
    res
}

/// Marks a response that did not come from a stored entry with how it was answered.
pub(super) fn stamp_response<B: Body>(
    mut res: Response<ResponseBody<B>>,
    stamp: Stamp,
    outcome: Outcome,
) -> Response<ResponseBody<B>> {
    if res.extensions().get::<AnsweredInside>().is_some() {
        // An inner `CacheLayer` already said how it answered: its word stands.
        return res;
    }
    let headers = res.headers_mut();
    // After any members an upstream cache wrote: the list runs from the origin outwards.
    headers.append(CACHE_STATUS, outcome.cache_status(None));
    if stamp.x_cache {
        headers.insert(X_CACHE_HEADER, outcome.x_cache().header_value());
    }
    if stamp.nested {
        res.extensions_mut().insert(AnsweredInside);
    }
    res
}

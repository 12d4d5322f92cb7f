//! [`CacheService`]: the decisions taken in `call` — bypass, the hit path answered from the
//! local store without a future boxed — and the hand-over of a miss to the load.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::RANGE;
use http::{HeaderName, Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::background::refresh_stale;
use super::config::Config;
use super::heads::Heads;
use super::limiter::Refresh;
use super::load::Run;
use super::range::partial;
use super::refresh::refresh_then_run;
use super::rules::{is_nested, mark_nested, plan_key, respond, Stamp};
use super::stale::in_revalidate_window;
use super::unsafe_methods::{call_and_invalidate, is_unsafe};
use super::ResponseFuture;
use crate::layer::body::ResponseBody;
use crate::layer::cache_control::{request_directives, RequestDirectives};
use crate::layer::cache_status::Outcome;
use crate::layer::cached_response::CachedResponse;
use crate::layer::conditional::Conditions;
use crate::layer::inner_service::{define_inner_service_accessors, take_ready};
use crate::layer::request_info::{path_params, RequestInfo};
use crate::layer::request_key::path_tag;
use crate::layer::vary::{selector, variant_key};
use crate::{Cache, EntryOptions, Key};

/// The service [`CacheLayer`](super::CacheLayer) wraps around an inner service.
///
/// ```
/// use axum::body::Body;
/// use axum::http::{Request, Response};
/// use stormcache::layer::CacheLayer;
/// use stormcache::Cache;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::builder("docs").build()?;
/// let svc = ServiceBuilder::new()
///     .layer(CacheLayer::new(cache))
///     .service(service_fn(|_req: Request<Body>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Body::from("hello")))
///     }));
/// let res = svc.oneshot(Request::get("/").body(Body::empty())?).await?;
/// assert_eq!(res.headers()["x-cache"], "miss");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheService<S> {
    pub(super) inner: S,
    pub(super) cache: Cache,
    pub(super) config: Arc<Config>,
}

impl<S> CacheService<S> {
    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt_fields(
            f.debug_struct("CacheService")
                .field("inner", &self.inner)
                .field("cache", &self.cache),
        )
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Send,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let head = req.method() == Method::HEAD;
        let stamp = Stamp {
            nested: is_nested(req.extensions()),
            x_cache: self.config.x_cache,
        };
        if !(head || req.method() == Method::GET) {
            if self.config.invalidate_on_unsafe && self.config.tag_path && is_unsafe(req.method()) {
                let inner = take_ready(&mut self.inner);
                let cache = self.cache.clone();
                let fut = call_and_invalidate(cache, inner, req, stamp);
                return ResponseFuture::boxed(Box::pin(fut), stamp);
            }
            return ResponseFuture::bypass(self.inner.call(req), stamp, Outcome::Method);
        }
        let heads = Heads::scan(req.headers(), &self.config.credential_headers);
        // A range request is answered from a stored response only when it is at hand (see
        // `range`); else it goes to the handler, whose partial answer is not stored.
        let range = heads
            .range()
            .then(|| req.headers().get(RANGE).cloned())
            .flatten();
        if range.is_some() && (head || heads.if_range()) {
            return self.bypass(req, stamp, "range");
        }
        let directives = if heads.directives() {
            request_directives(req.headers())
        } else {
            RequestDirectives::default()
        };
        if directives.no_store {
            tracing::trace!("request cache-control: no-store; bypassing the cache");
            return self.bypass(req, stamp, "no-store");
        }
        let config = &*self.config;
        let (mut parts, body) = req.into_parts();
        let params = if config.needs_params() {
            path_params(&mut parts)
        } else {
            None
        };
        let principal = config
            .principal_fn
            .as_ref()
            .and_then(|f| f(&RequestInfo::with(&parts, params.as_ref(), None)));
        let key = match plan_key(config, &parts, heads, params.as_ref(), principal.as_deref()) {
            Ok(key) => key,
            Err(detail) => return self.bypass(Request::from_parts(parts, body), stamp, detail),
        };
        if let Some(range) = range {
            if !directives.no_cache && !heads.conditions() {
                if let Ok(stored) = self.cache.get_local::<CachedResponse>(key, &config.options) {
                    if let Some(res) = partial(&stored, &range, stamp) {
                        return ResponseFuture::ready(res, stamp);
                    }
                }
            }
            tracing::trace!("range request not answered from the cache; bypassing it");
            return self.bypass(Request::from_parts(parts, body), stamp, "range");
        }
        // Only a request that has preconditions pays for reading them.
        let conditions = heads.conditions().then(|| Conditions::of(&parts.headers));
        // A `no-cache` the layer honours: lead or join the key's refresh, unless the key
        // was refreshed less than the interval ago.
        let refresh = match config.refreshes.as_ref().filter(|_| directives.no_cache) {
            Some(refreshes) => refreshes.admit(&key),
            None => Refresh::No,
        };
        if let Some(entries) = &config.entries {
            entries.touch(&key);
        }
        // The hit path: a synchronous look in the local store, no allocation but the key's,
        // no future boxed, the inner service left alone.
        let refreshing = matches!(refresh, Refresh::Join(_));
        // Inside the interval, a `no-cache` request is answered as if it had not asked.
        let hit = match refresh {
            Refresh::Limited => Outcome::RateLimited,
            _ => Outcome::Hit,
        };
        let mut found = Found::default();
        let mut key = if refreshing {
            key
        } else {
            match self.cache.get_local::<CachedResponse>(key, &config.options) {
                Ok(stored) if stored.variant().is_none() && !stored.meta().no_cache => {
                    let res = respond(&stored, head, stamp, hit, conditions.as_ref());
                    return ResponseFuture::ready(res, stamp);
                }
                // A response that varies, or that must be revalidated before use: the key
                // went into the lookup, so it is made again (the same as above).
                Ok(stored) => {
                    match plan_key(config, &parts, heads, params.as_ref(), principal.as_deref()) {
                        Ok(key) => match self.resolve(key, stored, &parts.headers) {
                            Resolved::Hit(stored) => {
                                let res = respond(&stored, head, stamp, hit, conditions.as_ref());
                                return ResponseFuture::ready(res, stamp);
                            }
                            Resolved::Load(key, then) => {
                                found = then;
                                key
                            }
                        },
                        Err(detail) => {
                            return self.bypass(Request::from_parts(parts, body), stamp, detail)
                        }
                    }
                }
                Err(key) => key,
            }
        };
        let planned = plan_options(config, &parts, params.as_ref(), principal.as_deref());
        let Some(options) = planned else {
            return self.bypass(Request::from_parts(parts, body), stamp, "tag");
        };
        // A `no-cache` entry found above is revalidated by the load, never answered stale.
        if !refreshing && found.validate.is_none() {
            // Inside its `stale-while-revalidate` window, the stale response answers now and
            // the handler refreshes it in the background: only the request's own variant,
            // never another request's, nor a `no-cache` response.
            let entry_options = options.as_ref().unwrap_or(&config.options);
            let (back, stale) = self
                .cache
                .get_local_stale::<CachedResponse>(key, entry_options);
            key = back;
            let own = |stale: &CachedResponse| {
                !stale.meta().no_cache
                    && stale.variant().map_or(true, |v| {
                        selector(&parts.headers, &v.fields).as_deref() == Some(v.selector.as_str())
                    })
            };
            if let Some(stale) = stale.filter(|s| in_revalidate_window(s) && own(s)) {
                let outcome = Outcome::StaleWhileRevalidate;
                let res = respond(&stale, head, stamp, outcome, conditions.as_ref());
                let inner = self.inner.clone();
                // When `key` is the request's variant's, its response is stored as one.
                let fields = found.variant_of.map(|(_, fields)| fields);
                let started = refresh_stale(
                    &self.cache,
                    &self.config,
                    key,
                    entry_options,
                    inner,
                    parts,
                    body,
                    stale,
                    fields,
                );
                tracing::debug!(
                    started,
                    "stale-while-revalidate: answered the stale response"
                );
                return ResponseFuture::ready(res, stamp);
            }
        }
        let req = Request::from_parts(parts, body);

        let inner = take_ready(&mut self.inner);
        let run = Run {
            cache: self.cache.clone(),
            config: Arc::clone(&self.config),
            key,
            options,
            head,
            stamp,
            conditions,
            variant_of: found.variant_of,
            validate: found.validate,
        };
        match refresh {
            Refresh::Join(slot) => {
                ResponseFuture::boxed(Box::pin(refresh_then_run(run, slot, inner, req)), stamp)
            }
            Refresh::No | Refresh::Limited => {
                ResponseFuture::boxed(Box::pin(run.run(inner, req)), stamp)
            }
        }
    }
}

/// What the hit path learnt from an entry it could not answer with.
#[derive(Default)]
struct Found {
    /// The request's own key and the fields its variants vary on, when the key to load is
    /// its variant's.
    variant_of: Option<(Key, Vec<HeaderName>)>,
    /// A `no-cache` response to revalidate before use.
    validate: Option<CachedResponse>,
}

/// Where the hit path goes from an entry that varies or must be revalidated.
enum Resolved {
    /// A response to answer with.
    Hit(CachedResponse),
    /// The key to load, and what is known of it.
    Load(Key, Found),
}

impl<S> CacheService<S> {
    /// Follows a stored response that varies to the request's variant (in the local store
    /// too, when there), and says which `no-cache` response is to be revalidated.
    fn resolve(&self, key: Key, stored: CachedResponse, request: &http::HeaderMap) -> Resolved {
        let mut found = Found::default();
        let (key, stored) = match stored.variant() {
            None => (key, stored),
            Some(variant) => match selector(request, &variant.fields) {
                Some(own) if own == variant.selector => (key, stored),
                // Values that are not text: the load passes the request to the handler.
                None => return Resolved::Load(key, found),
                Some(own) => {
                    let fields = variant.fields.clone();
                    let options = &self.config.options;
                    let own_key = variant_key(&key, &own);
                    // With `max_entries`, a variant's key is used in the LRU order as the
                    // request's key was in `call`.
                    if let Some(entries) = &self.config.entries {
                        entries.touch(&own_key);
                    }
                    let in_store = self.cache.get_local::<CachedResponse>(own_key, options);
                    let variant_key = match in_store {
                        Ok(stored) if !stored.meta().no_cache => return Resolved::Hit(stored),
                        Ok(stored) => {
                            found.validate = Some(stored);
                            variant_key(&key, &own)
                        }
                        Err(variant_key) => variant_key,
                    };
                    found.variant_of = Some((key, fields));
                    return Resolved::Load(variant_key, found);
                }
            },
        };
        if stored.meta().no_cache {
            found.validate = Some(stored);
            return Resolved::Load(key, found);
        }
        Resolved::Hit(stored)
    }

    /// Passes the request to the inner service, uncached, counted as a bypass.
    fn bypass<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
        stamp: Stamp,
        detail: &'static str,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body,
    {
        self.cache.count_bypass(&self.config.options);
        ResponseFuture::bypass(
            self.inner.call(mark_nested(req)),
            stamp,
            Outcome::Bypass(detail),
        )
    }
}

/// The options of a request that missed: `Some(None)` for the layer's own, `Some(Some(_))`
/// when tags vary per request; `None` to bypass (a tag that cannot be rendered).
fn plan_options(
    config: &Config,
    parts: &http::request::Parts,
    params: Option<&axum::extract::RawPathParams>,
    principal: Option<&str>,
) -> Option<Option<EntryOptions>> {
    if !config.has_dynamic_tags() {
        return Some(None);
    }
    let info = RequestInfo::with(parts, params, principal);
    let mut tags = Vec::with_capacity(1 + config.tag_templates.len());
    if config.tag_path {
        tags.push(path_tag(info.path()));
    }
    for template in &config.tag_templates {
        match info.render(template) {
            Ok(tag) => tags.push(tag),
            Err(error) => {
                tracing::warn!(%error, "tag template cannot be rendered for this request; not caching it");
                return None;
            }
        }
    }
    if let Some(f) = &config.tags_fn {
        tags.extend(f(&info));
    }
    Some(Some(config.options.clone().tags(tags)))
}

//! [`CacheLayer`]: read-through caching of `GET`/`HEAD` responses.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderValue, AGE, CONTENT_LENGTH, SET_COOKIE};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::body::ResponseBody;
use super::cache_control::{request_directives, response_forbids_storing, vary_is_covered};
use super::cached_response::CachedResponse;
use super::inner_service::{define_inner_service_accessors, take_ready, Drive};
use super::request_info::{original_uri, path_params, RequestInfo};
use super::request_key::{custom_base, default_base, finish, has_credentials, path_tag};
use super::{XCache, X_CACHE_HEADER};
use crate::{Cache, EntryOptions, Fetched, Key, KeyTemplate, Origin};

type KeyFn = Arc<dyn Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync>;
type TagsFn = Arc<dyn Fn(&RequestInfo<'_>) -> Vec<Key> + Send + Sync>;
type PrincipalFn = Arc<dyn Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync>;

/// The default largest body stored: 1 MiB. Larger bodies stream through uncached.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;

/// Caches responses to `GET` and `HEAD` requests in a [`Cache`].
///
/// A request is answered from the cache when it can be, otherwise by the inner service,
/// whose response is stored when it may be. The cache is the same read-through [`Cache`] the
/// rest of the application uses, so its behaviour during a Redis outage applies: Redis down
/// means the local store answers, and when it cannot, the handler does.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use stormcache::layer::CacheLayer;
/// use stormcache::Cache;
/// use tower::ServiceExt; // for `oneshot`
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::builder("docs").build()?;
/// let app = Router::new()
///     .route("/resources", get(|| async { "[\"wiki\",\"ci\"]" }))
///     .layer(CacheLayer::new(cache).ttl(Duration::from_secs(60)));
///
/// let request = || axum::http::Request::get("/resources").body(axum::body::Body::empty());
/// let first = app.clone().oneshot(request()?).await?;
/// assert_eq!(first.headers()["x-cache"], "miss");
/// let second = app.oneshot(request()?).await?;
/// assert_eq!(second.headers()["x-cache"], "hit");
/// assert_eq!(second.headers()["age"], "0");
/// # Ok(()) }
/// ```
///
/// # What is cached, under which key
///
/// - Only `GET` responses are stored; `HEAD` is answered from `GET`'s entry and passed to
///   the handler on a miss. Other methods pass through (`x-cache: bypass`).
/// - The key is built from the path (the full one, even under `nest`), the query with its
///   pairs sorted by name, the values of the headers declared with
///   [`vary`](CacheLayer::vary), and the principal (see below). A
///   [`key_fn`](CacheLayer::key_fn) replaces the path-and-query part.
/// - Keys and tags live in the cache's namespace under `http:`, apart from the keys the
///   application uses directly.
///
/// # Credentials: the secure default
///
/// A request with `Authorization` or `Cookie` is neither answered from nor stored into an
/// entry shared with other clients: it bypasses the cache, unless a
/// [`principal`](CacheLayer::principal) function names who is asking, in which case the
/// principal becomes part of the key. [`shared_with_credentials`](CacheLayer::shared_with_credentials)
/// turns the rule off for routes whose answer does not depend on who asks.
///
/// # HTTP rules
///
/// - Request `Cache-Control: no-store`: bypass. `no-cache` (or `Pragma: no-cache`): the
///   handler answers and a storable response replaces the entry.
/// - A response is stored only when its status is one of
///   [`statuses`](CacheLayer::statuses) (default `200`), it has no `Set-Cookie`, no
///   `Cache-Control: no-store`, `private`, `no-cache` or zero `max-age`/`s-maxage`, every
///   header of its `Vary` is declared, and its body is at most
///   [`max_body_size`](CacheLayer::max_body_size) (default [`DEFAULT_MAX_BODY_SIZE`]);
///   a larger body streams through as it is read.
/// - Every response gets `x-cache: hit | miss | stale | bypass`; responses from the cache
///   get `age` (seconds since stored, across processes: the time travels with the entry).
/// - With [`stale_for`](CacheLayer::stale_for), an expired entry inside its grace answers
///   when the handler fails (a 5xx status or an error of the inner service) — `x-cache:
///   stale`. A non-5xx answer that is not storable is passed on instead.
///
/// # Placement
///
/// `Router::layer` caches every route; `route_layer` (or a layer on a `MethodRouter`) runs
/// after routing, which is what [`RequestInfo::param`] and
/// [`RequestInfo::matched_path`] need, and gives each route its own TTL, class and tags.
#[derive(Clone)]
#[must_use]
pub struct CacheLayer {
    cache: Cache,
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    options: EntryOptions,
    statuses: Vec<StatusCode>,
    max_body: usize,
    vary: Vec<HeaderName>,
    key_fn: Option<KeyFn>,
    tag_templates: Vec<KeyTemplate>,
    tags_fn: Option<TagsFn>,
    principal_fn: Option<PrincipalFn>,
    shared_with_credentials: bool,
    tag_path: bool,
}

impl Config {
    /// Whether the functions need the path parameters (their extraction allocates).
    fn needs_params(&self) -> bool {
        self.key_fn.is_some() || !self.tag_templates.is_empty() || self.tags_fn.is_some()
    }

    fn has_dynamic_tags(&self) -> bool {
        self.tag_path || !self.tag_templates.is_empty() || self.tags_fn.is_some()
    }
}

impl CacheLayer {
    /// A layer storing responses in `cache`: TTL of the cache's default class, status 200
    /// only, bodies up to 1 MiB, no `Vary` headers, no principal.
    pub fn new(cache: Cache) -> Self {
        CacheLayer {
            cache,
            config: Arc::new(Config {
                options: EntryOptions::new(),
                statuses: vec![StatusCode::OK],
                max_body: DEFAULT_MAX_BODY_SIZE,
                vary: Vec::new(),
                key_fn: None,
                tag_templates: Vec::new(),
                tags_fn: None,
                principal_fn: None,
                shared_with_credentials: false,
                tag_path: true,
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// How long a stored response is fresh (default: the class's TTL).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        let options = std::mem::take(&mut self.config().options);
        self.config().options = options.ttl(ttl);
        self
    }

    /// The class entries go to (a class declared on the cache; the outage policy flushes
    /// volatile classes).
    pub fn class(mut self, class: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        let options = std::mem::take(&mut self.config().options);
        self.config().options = options.class(class);
        self
    }

    /// A fixed tag on every entry this layer stores.
    pub fn tag(mut self, tag: Key) -> Self {
        let options = std::mem::take(&mut self.config().options);
        self.config().options = options.tag(tag);
        self
    }

    /// A tag rendered per request from the path parameters (and `{principal}`), e.g.
    /// `user:{id}`. A request whose tag cannot be rendered is not cached, so that no entry
    /// escapes its invalidation.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use stormcache::layer::CacheLayer;
    /// use stormcache::{Cache, KeyTemplate};
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = Cache::builder("docs").build()?;
    /// let per_user = CacheLayer::new(cache).tag_template(KeyTemplate::parse("user:{id}")?);
    /// let app: Router = Router::new()
    ///     .route("/users/{id}/groups", get(|| async { "[]" }).route_layer(per_user));
    /// # let _ = app; Ok(()) }
    /// ```
    pub fn tag_template(mut self, template: KeyTemplate) -> Self {
        self.config().tag_templates.push(template);
        self
    }

    /// Tags computed per request by a function.
    pub fn tags_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Vec<Key> + Send + Sync + 'static,
    {
        self.config().tags_fn = Some(Arc::new(f));
        self
    }

    /// Whether every entry is tagged with its path (`http:path:<path>`), which the
    /// [`InvalidateLayer`](super::InvalidateLayer) removes after a successful mutation of the
    /// same path (default `true`). Turning it off saves a tag per request.
    pub fn tag_path(mut self, enabled: bool) -> Self {
        self.config().tag_path = enabled;
        self
    }

    /// Fail-safe grace: an expired response is kept this long and served (`x-cache: stale`)
    /// when the handler fails.
    pub fn stale_for(mut self, grace: Duration) -> Self {
        let options = std::mem::take(&mut self.config().options);
        self.config().options = options.stale_for(grace);
        self
    }

    /// Replaces the entry options (TTL, class, fixed tags, grace) at once.
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.config().options = options;
        self
    }

    /// The statuses whose responses are stored (default: `200` only).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config().statuses = statuses.into_iter().collect();
        self
    }

    /// The largest body stored, in bytes (default [`DEFAULT_MAX_BODY_SIZE`]). A larger body
    /// streams through to the client uncached.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config().max_body = bytes;
        self
    }

    /// Declares a request header the response depends on: its value becomes part of the key.
    /// A response whose `Vary` names a header not declared here is not stored.
    pub fn vary(mut self, header: HeaderName) -> Self {
        self.config().vary.push(header);
        self
    }

    /// Replaces the path-and-query part of the key. Returning `None` passes the request
    /// through uncached. Declared `Vary` headers and the principal are still appended, so
    /// a key function cannot make a credentialed request shared by accident.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use stormcache::layer::{CacheLayer, RequestInfo};
    /// use stormcache::{Cache, Key};
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = Cache::builder("docs").build()?;
    /// // Ignore tracking parameters: key on the route and the `id` parameter only.
    /// let layer = CacheLayer::new(cache).key_fn(|req: &RequestInfo<'_>| {
    ///     Some(
    ///         Key::builder("route:")
    ///             .value(req.matched_path()?)
    ///             .literal(":")
    ///             .value(req.param("id")?)
    ///             .build(),
    ///     )
    /// });
    /// let app: Router = Router::new().route("/items/{id}", get(|| async { "item" }).route_layer(layer));
    /// # let _ = app; Ok(()) }
    /// ```
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync + 'static,
    {
        self.config().key_fn = Some(Arc::new(f));
        self
    }

    /// Names who is asking (a user id from an authentication extension, a token's
    /// subject…). When it returns `Some`, the principal is part of the key, so a request
    /// with credentials gets its own entry instead of bypassing the cache.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use stormcache::layer::{CacheLayer, RequestInfo};
    /// use stormcache::Cache;
    ///
    /// #[derive(Clone)]
    /// struct User(String); // inserted by an authentication middleware
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = Cache::builder("docs").build()?;
    /// let layer = CacheLayer::new(cache)
    ///     .principal(|req: &RequestInfo<'_>| req.extensions().get::<User>().map(|u| u.0.clone()));
    /// let app: Router = Router::new().route("/me", get(|| async { "me" })).layer(layer);
    /// # let _ = app; Ok(()) }
    /// ```
    pub fn principal<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static,
    {
        self.config().principal_fn = Some(Arc::new(f));
        self
    }

    /// Lets requests with `Authorization` or `Cookie` and no principal share entries with
    /// everyone (default `false`). Only for routes whose answer is the same whoever asks.
    pub fn shared_with_credentials(mut self, enabled: bool) -> Self {
        self.config().shared_with_credentials = enabled;
        self
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            cache: self.cache.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config
            .fmt_fields(f.debug_struct("CacheLayer").field("cache", &self.cache))
    }
}

impl Config {
    fn fmt_fields(&self, d: &mut fmt::DebugStruct<'_, '_>) -> fmt::Result {
        d.field("options", &self.options)
            .field("statuses", &self.statuses)
            .field("max_body_size", &self.max_body)
            .field("vary", &self.vary)
            .field("key_fn", &self.key_fn.is_some())
            .field("tag_templates", &self.tag_templates)
            .field("tags_fn", &self.tags_fn.is_some())
            .field("principal", &self.principal_fn.is_some())
            .field("shared_with_credentials", &self.shared_with_credentials)
            .field("tag_path", &self.tag_path);
        d.finish()
    }
}

/// The service [`CacheLayer`] wraps around an inner service.
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
    inner: S,
    cache: Cache,
    config: Arc<Config>,
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
        if !(head || req.method() == Method::GET) {
            return ResponseFuture::bypass(self.inner.call(req));
        }
        let directives = request_directives(req.headers());
        if directives.no_store {
            tracing::trace!("request cache-control: no-store; bypassing the cache");
            return ResponseFuture::bypass(self.inner.call(mark_nested(req)));
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
        let Some(key) = plan_key(config, &parts, params.as_ref(), principal.as_deref()) else {
            let req = Request::from_parts(parts, body);
            return ResponseFuture::bypass(self.inner.call(mark_nested(req)));
        };
        // The hit path: a synchronous look in the local store, no allocation but the key's,
        // no future boxed, the inner service left alone.
        let key = if directives.no_cache {
            key
        } else {
            match self.cache.get_local::<CachedResponse>(key, &config.options) {
                Ok(stored) => {
                    return ResponseFuture::ready(respond(&stored, head, XCache::Hit));
                }
                Err(key) => key,
            }
        };
        let planned = plan_options(config, &parts, params.as_ref(), principal.as_deref());
        let req = Request::from_parts(parts, body);
        let Some(options) = planned else {
            return ResponseFuture::bypass(self.inner.call(mark_nested(req)));
        };

        let inner = take_ready(&mut self.inner);
        let run = Run {
            cache: self.cache.clone(),
            config: Arc::clone(&self.config),
            key,
            options,
            head,
            refresh: directives.no_cache,
        };
        ResponseFuture {
            kind: Drive::Boxed {
                fut: Box::pin(run.run(inner, req)),
            },
        }
    }
}

/// Marks a request that a `CacheLayer` passes on to its inner service without answering it
/// from the cache, so that a `CacheLayer` further in (a `route_layer` under a router-wide
/// layer) keys it apart instead of joining the outer layer's load of the same key.
#[derive(Clone, Copy, Debug)]
struct Nested;

fn mark_nested<B>(mut req: Request<B>) -> Request<B> {
    req.extensions_mut().insert(Nested);
    req
}

/// The key of a request, or `None` to bypass the cache.
fn plan_key(
    config: &Config,
    parts: &http::request::Parts,
    params: Option<&axum::extract::RawPathParams>,
    principal: Option<&str>,
) -> Option<Key> {
    if principal.is_none() && !config.shared_with_credentials && has_credentials(&parts.headers) {
        tracing::trace!("request with credentials and no principal; bypassing the cache");
        return None;
    }
    let uri = original_uri(parts);
    let mut base = match &config.key_fn {
        None => default_base(uri.path(), uri.query()),
        Some(f) => custom_base(&f(&RequestInfo::with(parts, params, principal))?),
    };
    if parts.extensions.get::<Nested>().is_some() {
        // Under another CacheLayer, which is loading this very request: the same key in
        // the same class would join the outer layer's load and wait for itself.
        base = base.literal("|n:");
    }
    finish(base, &parts.headers, &config.vary, principal)
}

/// The options of a request that missed: `Ok(None)` for the layer's own, `Some` when tags
/// vary per request; `None` to bypass (a tag that cannot be rendered).
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

/// Everything the cached path needs once the request has left `call`.
struct Run {
    cache: Cache,
    config: Arc<Config>,
    key: Key,
    options: Option<EntryOptions>,
    head: bool,
    refresh: bool,
}

/// The result of the inner service, when it is not stored.
type Passed<B, E> = Result<Response<ResponseBody<B>>, E>;

impl Run {
    /// The cached path. Kept small on a hit (its future is boxed per request): the refresh
    /// path and the loader, which hold the inner service's future and the body reader, are
    /// boxed on their own, only when they run.
    async fn run<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send,
        S::Error: Send,
        ReqBody: Send + 'static,
        ResBody: Body + Send + 'static,
        ResBody::Data: Send,
        ResBody::Error: Send,
    {
        let Run {
            cache,
            config,
            key,
            options,
            head,
            refresh,
        } = self;
        let options = options.as_ref().unwrap_or(&config.options);

        if refresh {
            return Box::pin(refresh_entry(
                &cache, &config, key, options, head, inner, req,
            ))
            .await;
        }

        let mut passed: Option<Passed<ResBody, S::Error>> = None;
        let mut ran = false;
        let (passed_slot, ran_flag, config_ref) = (&mut passed, &mut ran, &*config);
        let fetched = cache
            .fetch(key, options, move || -> LoadFuture<'_> {
                Box::pin(async move {
                    *ran_flag = true;
                    let res = match inner.call(mark_nested(req)).await {
                        Ok(res) => res,
                        Err(e) => {
                            *passed_slot = Some(Err(e));
                            return Err(());
                        }
                    };
                    if head {
                        // A HEAD response has no body to store; GET will fill the entry.
                        *passed_slot = Some(Ok(res.map(ResponseBody::inner)));
                        return Err(());
                    }
                    match capture(res, config_ref).await {
                        Ok(stored) => Ok(stored),
                        Err(res) => {
                            *passed_slot = Some(Ok(res));
                            Err(())
                        }
                    }
                })
            })
            .await;

        match fetched {
            Ok(Fetched { value, origin }) => Ok(match origin {
                // Our loader ran and the response was stored.
                Origin::Loader if ran => respond(&value, head, XCache::Miss),
                Origin::Stale => match passed {
                    // The handler answered with something not storable but not a failure:
                    // that answer wins over the stale entry.
                    Some(Ok(res)) if !res.status().is_server_error() => {
                        with_x_cache(res, XCache::Miss)
                    }
                    _ => respond(&value, head, XCache::Stale),
                },
                // The local store, Redis, or another request's load of the same key.
                _ => respond(&value, head, XCache::Hit),
            }),
            Err(()) => match passed {
                Some(Ok(res)) => Ok(with_x_cache(res, XCache::Miss)),
                Some(Err(e)) => Err(e),
                None => {
                    // Unreachable: the loader fills the slot before every `Err`.
                    tracing::error!("cache layer lost the inner response; answering 502");
                    let mut res = Response::new(ResponseBody::empty());
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    Ok(with_x_cache(res, XCache::Miss))
                }
            },
        }
    }
}

/// The loader's future, boxed: it only exists on a miss.
type LoadFuture<'a> = Pin<Box<dyn Future<Output = Result<CachedResponse, ()>> + Send + 'a>>;

/// `Cache-Control: no-cache`: the handler answers, and what it says replaces the entry when
/// it may be stored.
async fn refresh_entry<S, ReqBody, ResBody>(
    cache: &Cache,
    config: &Config,
    key: Key,
    options: &EntryOptions,
    head: bool,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let res = inner.call(mark_nested(req)).await?;
    Ok(match capture(res, config).await {
        Ok(stored) => {
            if !head {
                cache.set(key, stored.clone(), options).await;
            }
            respond(&stored, head, XCache::Miss)
        }
        Err(passed) => with_x_cache(passed, XCache::Miss),
    })
}

/// Reads a response whose headers allow storing it, up to the size limit. `Ok`: the whole
/// response, to store. `Err`: the response to pass on (with what was read of its body).
async fn capture<B: Body>(
    res: Response<B>,
    config: &Config,
) -> Result<CachedResponse, Response<ResponseBody<B>>> {
    if let Some(reason) = not_storable(&res, config) {
        tracing::debug!(status = %res.status(), %reason, "response not stored");
        return Err(res.map(ResponseBody::inner));
    }
    let (parts, body) = res.into_parts();
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
                    return Err(res);
                }
            }
            Some(Err(error)) => {
                tracing::debug!("response body failed while being read; not stored");
                return Err(Response::from_parts(
                    parts,
                    ResponseBody::replay(frames, Err(error)),
                ));
            }
        }
    }
    if trailers {
        tracing::debug!("response has trailers; not stored");
        return Err(Response::from_parts(
            parts,
            ResponseBody::replay(frames, Ok(None)),
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
    Ok(CachedResponse::new(parts.status, &parts.headers, body))
}

/// Why the response's head forbids storing it, if it does.
fn not_storable<B: Body>(res: &Response<B>, config: &Config) -> Option<String> {
    if !config.statuses.contains(&res.status()) {
        return Some(format!("status {} is not cached", res.status().as_u16()));
    }
    let headers = res.headers();
    if headers.contains_key(X_CACHE_HEADER) {
        // A `route_layer` cache inside a router-wide one: the inner, more specific layer
        // owns the entry (its TTL, class and tags); storing it again here would keep a copy
        // its invalidation cannot reach.
        return Some("answered by an inner CacheLayer".to_owned());
    }
    if headers.contains_key(SET_COOKIE) {
        return Some("set-cookie".to_owned());
    }
    if let Some(reason) = response_forbids_storing(headers) {
        return Some(reason.to_owned());
    }
    if let Err(reason) = vary_is_covered(headers, &config.vary) {
        return Some(reason);
    }
    let declared_len = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let hinted = res.body().size_hint().lower();
    let limit = config.max_body as u64;
    if declared_len.is_some_and(|n| n > limit) || hinted > limit {
        return Some(format!("body larger than {limit} bytes"));
    }
    None
}

/// Builds the response for a stored entry.
fn respond<B: Body>(
    stored: &CachedResponse,
    head: bool,
    x_cache: XCache,
) -> Response<ResponseBody<B>> {
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
    if x_cache != XCache::Miss {
        headers.insert(AGE, HeaderValue::from(stored.age()));
    }
    headers.insert(X_CACHE_HEADER, x_cache.header_value());
    res
}

fn with_x_cache<B: Body>(
    mut res: Response<ResponseBody<B>>,
    x_cache: XCache,
) -> Response<ResponseBody<B>> {
    // An inner `CacheLayer` already said how it answered: its word stands.
    res.headers_mut()
        .entry(X_CACHE_HEADER)
        .or_insert_with(|| x_cache.header_value());
    res
}

pin_project! {
    /// The response future of [`CacheService`].
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        kind: Drive<F, Result<Response<ResponseBody<B>>, E>>,
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    fn bypass(fut: F) -> Self {
        ResponseFuture {
            kind: Drive::Inner { fut },
        }
    }

    fn ready(res: Response<ResponseBody<B>>) -> Self {
        ResponseFuture {
            kind: Drive::Ready { out: Some(Ok(res)) },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().kind.poll_map(cx, |out| {
            out.map(|res| with_x_cache(res.map(ResponseBody::inner), XCache::Bypass))
        })
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("kind", &self.kind.label(["bypass", "cached", "ready"]))
            .finish()
    }
}

//! [`CacheLayer`] and its configuration: the builder methods and `impl Layer`.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tower_layer::Layer;

use super::config::Config;
use super::limiter::DEFAULT_REQUEST_NO_CACHE_INTERVAL;
use super::stale::with_value_grace;
use super::CacheService;
use crate::layer::query_filter::QueryFilter;
use crate::layer::RequestInfo;
use crate::{model::LONGEST, Cache, EntryOptions, Key, KeyTemplate};

/// The default largest body stored: 1 MiB. Larger bodies stream through uncached.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;

/// The statuses stored by default: those RFC 9110 §15.1 calls heuristically cacheable,
/// less `206 Partial Content` (the layer does not store ranges).
pub const HEURISTIC_STATUSES: [StatusCode; 11] = [
    StatusCode::OK,
    StatusCode::NON_AUTHORITATIVE_INFORMATION,
    StatusCode::NO_CONTENT,
    StatusCode::MULTIPLE_CHOICES,
    StatusCode::MOVED_PERMANENTLY,
    StatusCode::PERMANENT_REDIRECT,
    StatusCode::NOT_FOUND,
    StatusCode::METHOD_NOT_ALLOWED,
    StatusCode::GONE,
    StatusCode::URI_TOO_LONG,
    StatusCode::NOT_IMPLEMENTED,
];

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
///   the handler on a miss. Other methods pass through (`x-cache: bypass`); a `2xx` or
///   `3xx` answer to an unsafe one invalidates the request's URI (see
///   [`invalidate_on_unsafe`](CacheLayer::invalidate_on_unsafe)).
/// - The key is built from the path (the full one, even under `nest`), the query with its
///   pairs sorted by name, the values of the headers declared with
///   [`vary`](CacheLayer::vary), and the principal (see below). A
///   [`key_fn`](CacheLayer::key_fn) replaces the path-and-query part;
///   [`query_params`](CacheLayer::query_params) and
///   [`ignore_query_params`](CacheLayer::ignore_query_params) leave parameters out of it.
/// - [`max_entries`](CacheLayer::max_entries) caps the entries one layer keeps in the local
///   store, which is itself bounded in bytes by default
///   ([`CacheBuilder::local_capacity`](crate::CacheBuilder::local_capacity)).
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
/// The layer behaves as a shared cache (RFC 9111) on these points:
///
/// - Request `Cache-Control: no-store`: bypass. `no-cache` (or `Pragma: no-cache`): ignored
///   unless [`request_no_cache(true)`](CacheLayer::request_no_cache); then the handler
///   answers and a storable response replaces the entry, once for all the concurrent
///   `no-cache` requests of a key and at most once per
///   [`request_no_cache_interval`](CacheLayer::request_no_cache_interval). A single byte
///   `Range` is cut from a fresh stored `200` at hand; others go to the handler, unstored.
/// - A response is stored only when its status is one of [`statuses`](CacheLayer::statuses)
///   (default [`HEURISTIC_STATUSES`]) or it sets a lifetime or `public` (any final status
///   but `206`, `304`; a stale stored 5xx never stands in for a failure), it has no
///   `Set-Cookie`, no `Cache-Control: no-store` or `private`, no `no-cache` unless it
///   has an `ETag` or `Last-Modified` (see below), no `Vary: *`, it is not stale on
///   arrival, and its body is at most [`max_body_size`](CacheLayer::max_body_size)
///   (default [`DEFAULT_MAX_BODY_SIZE`]); a larger body streams through as it is read.
///   Fields named in its `Connection` header are not stored.
/// - A response whose `Vary` names request fields (RFC 9111 §4.1) is stored for the
///   values the request had, normalized: field lines combined, whitespace around commas
///   dropped, `Accept`, `Accept-Charset` and `Accept-Language` lowercased, and
///   `Accept-Encoding` reduced to the codings it accepts ranked by q-value (ties in the
///   order `zstd`, `br`, `gzip`, `deflate`, `identity`, as tower-http's compression picks
///   them), so that browsers' many spellings share a handful of variants. The request's
///   key holds the first response with the fields it varies on; a request whose values
///   differ reads its own variant under a second key (as Varnish does), and requests
///   waiting for another request's load of the key are answered with it only when their
///   values are the same (else they ask the handler). A variant whose response varies on
///   other fields now is passed on unstored and the request's entry removed, so the next
///   request stores the new shape. Invalidating a path or a tag removes every variant.
/// - A `no-cache` response with an `ETag` or `Last-Modified` is stored, and every request
///   it would answer goes to the handler first, made conditional on them (unless the
///   client sent preconditions of its own): a `304 Not Modified` answers with the stored
///   response, its fields updated (`Cache-Status: stormcache; fwd=stale; fwd-status=304`,
///   `x-cache: revalidated`), and a storable `200` replaces it. It is never served stale;
///   `max-age=0` beside `no-cache` changes nothing (it is kept for the layer's TTL).
///   Requests that joined the load that stored it are answered with it.
/// - Freshness comes from the response: `s-maxage`, else `max-age`, else `Expires` less
///   `Date` (an invalid or past `Expires`, such as `Expires: 0`, is stale: not stored),
///   less the age it already had on arrival (its `Age`, or `Date` when older). The entry
///   lives that long in the cache, within [`min_ttl`](CacheLayer::min_ttl) and
///   [`max_ttl`](CacheLayer::max_ttl) when set. Else a tenth of its age by `Last-Modified`,
///   at most [`heuristic_max`](CacheLayer::heuristic_max); else [`ttl`](CacheLayer::ttl).
/// - A `GET` or `HEAD` answered from a stored response (a hit, or the response a miss just
///   stored) honours `If-None-Match` (weak comparison, `*` included) and, when there is
///   none, `If-Modified-Since` (against the stored `Last-Modified`, else its `Date`, else
///   the time stored): `304 Not Modified` with `ETag`, `Cache-Control`, `Expires`, `Vary`,
///   `Date`, `Content-Location` (`Last-Modified` when there is no `ETag`) and no body. The
///   preconditions still reach the handler on a miss: a handler that answers 304 itself is
///   passed on, unstored.
/// - Every response gets `Cache-Status` (RFC 9211), after any member an upstream cache
///   wrote: `stormcache; hit; ttl=12`, `stormcache; fwd=miss; stored; ttl=60`,
///   `stormcache; fwd=miss; detail=no-store` (not stored, and why: `no-store`, `private`,
///   `no-cache`, `status`, `set-cookie`, `vary`, `vary-changed`, `size`, `stale`,
///   `head`…),
///   `stormcache; fwd=miss; collapsed` (joined another request's load),
///   `stormcache; fwd=vary-miss; stored` (the entry held another request's variant),
///   `stormcache; fwd=request; stored` (request `no-cache`),
///   `stormcache; fwd=request; collapsed` (joined another `no-cache` request's refresh),
///   `stormcache; hit; ttl=3; detail=rate-limited` (`no-cache` inside the interval),
///   `stormcache; fwd=stale; fwd-status=503; ttl=-4`,
///   `stormcache; fwd=stale; fwd-status=304; stored; ttl=60` (revalidated),
///   `stormcache; fwd=stale; fwd-status=304; ttl=60` (a `no-cache` response confirmed),
///   `stormcache; fwd=method`,
///   `stormcache; fwd=bypass; detail=credentials` (also `no-store`, `range`, `key`,
///   `host`, `tag`). `ttl` is the freshness left in seconds, when known. It also gets
///   `x-cache: hit | miss | stale | revalidated | bypass` unless [`x_cache`](CacheLayer::x_cache) turns
///   it off. Responses from the cache get `age`: the age the response had when stored
///   (the upstream's `Age`) plus the time since, across processes (the time travels with
///   the entry).
/// - With [`stale_for`](CacheLayer::stale_for), an expired entry inside its grace answers
///   when the handler fails (a 5xx status or an error of the inner service) — `x-cache:
///   stale`. A non-5xx answer that is not storable is passed on instead. A response with
///   `must-revalidate`, `proxy-revalidate` or `s-maxage` is never served stale. A `408`
///   (tower-http's `TimeoutLayer` inside the cache) counts as a failure too.
/// - `stale-if-error=N` (RFC 5861 §4) is a grace the response declares: for `N` seconds
///   after it stops being fresh it answers when the handler fails, as with `stale_for`.
/// - `stale-while-revalidate=N` (RFC 5861 §3), or the layer's
///   [`stale_while_revalidate`](CacheLayer::stale_while_revalidate) default: for `N` seconds
///   after it stops being fresh, the stored response answers at once (`x-cache: stale`,
///   `Cache-Status: stormcache; hit; ttl=-3; detail=stale-while-revalidate`) and the handler
///   refreshes it in the background, once per key here and once across instances. An entry
///   is kept in both stores for its freshness plus the largest of these windows and the
///   grace. The windows are void on responses that must be revalidated.
/// - With [`stale_for`](CacheLayer::stale_for) too, an expired entry with an `ETag` or a
///   `Last-Modified` is revalidated: the handler gets the request with `If-None-Match` /
///   `If-Modified-Since` from them (unless the client sent preconditions of its own), and
///   its `304 Not Modified` freshens the entry — the stored body, the 304's header fields
///   — which answers with `x-cache: revalidated`. Entries that must be revalidated are kept
///   for this only (with a validator), never served stale: a timeout waits or answers 504.
///
/// # Placement
///
/// `Router::layer` caches every route; `route_layer` (or a layer on a `MethodRouter`) runs
/// after routing, which is what [`RequestInfo::param`] and
/// [`RequestInfo::matched_path`] need, and gives each route its own TTL, class and tags.
///
#[doc = include_str!("tower_http.md")]
#[doc = include_str!("compression.md")]
#[derive(Clone)]
#[must_use]
pub struct CacheLayer {
    pub(super) cache: Cache,
    pub(super) config: Arc<Config>,
    /// The configuration the services get, with the state shared by all the services of
    /// this layer (the refresh limiter, the `max_entries` registry): made by the first
    /// `layer` call, and made again after any builder method.
    pub(super) built: Arc<OnceLock<Arc<Config>>>,
}

impl CacheLayer {
    /// A layer storing responses in `cache`: TTL of the cache's default class, status 200
    /// only, bodies up to 1 MiB, no `Vary` headers, no principal.
    pub fn new(cache: Cache) -> Self {
        CacheLayer {
            cache,
            config: Arc::new(Config {
                options: with_value_grace(EntryOptions::new()),
                statuses: HEURISTIC_STATUSES.to_vec(),
                max_body: DEFAULT_MAX_BODY_SIZE,
                vary: Vec::new(),
                key_fn: None,
                tag_templates: Vec::new(),
                tags_fn: None,
                principal_fn: None,
                shared_with_credentials: false,
                credential_headers: Vec::new(),
                key_host: true,
                tag_path: true,
                min_ttl: None,
                max_ttl: None,
                x_cache: true,
                honor_request_no_cache: false,
                refresh_interval: DEFAULT_REQUEST_NO_CACHE_INTERVAL,
                query: QueryFilter::default(),
                max_entries: None,
                refreshes: None,
                entries: None,
                stale_while_revalidate: None,
                invalidate_on_unsafe: true,
                etag: false,
                heuristic_max: None,
            }),
            built: Arc::default(),
        }
    }

    pub(super) fn config(&mut self) -> &mut Config {
        // The services of a layer configured further are not those of the layer it was.
        self.built = Arc::default();
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
    ///
    /// # Panics
    /// If the cache declares no such class: a typo would otherwise leave the entries
    /// uncached, and this is configuration, checked when the router is built.
    pub fn class(mut self, class: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        let options = std::mem::take(&mut self.config().options);
        self.config().options = options.class(class);
        self.check_class();
        self
    }

    fn check_class(&self) {
        if let Some(class) = self.config.options.class_name() {
            assert!(
                self.cache.has_class(class),
                "CacheLayer: the cache declares no class `{class}`; declare it with CacheBuilder::class"
            );
        }
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
    /// [`InvalidateLayer`](crate::layer::InvalidateLayer) removes after a successful mutation
    /// of the same path (default `true`). Turning it off saves a tag per request.
    pub fn tag_path(mut self, enabled: bool) -> Self {
        self.config().tag_path = enabled;
        self
    }

    /// The floor of a response's own freshness (`s-maxage`, `max-age`, `Expires`): a
    /// response fresh for less is stored for `ttl` (default: none). A response stale on
    /// arrival (`max-age=0`, an `Expires` in the past) is still not stored.
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.config().min_ttl = Some(ttl.min(LONGEST));
        self
    }

    /// The ceiling of a response's own freshness: a response fresh for longer is stored for
    /// `ttl` (default: none, the response's word).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.config().max_ttl = Some(ttl.min(LONGEST));
        self
    }

    /// Whether a request's `Cache-Control: no-cache` (or `Pragma: no-cache`) is honoured
    /// (default `false`).
    ///
    /// By default it is ignored, as CDNs and Varnish do: any anonymous client could
    /// otherwise make every request for a page run its handler and rewrite its entry on
    /// every instance, which is origin load on demand. RFC 9111 words it as a preference
    /// of the client. With `true`, such a request is answered by the handler and a storable
    /// answer replaces the entry (`Cache-Status: stormcache; fwd=request`), within two
    /// bounds that keep it from being origin load on demand:
    ///
    /// - `no-cache` requests of one key that arrive while its handler runs share that one
    ///   call: they get the response it stored (`fwd=request; collapsed`), or, if it stored
    ///   nothing, go on as requests without `no-cache`;
    /// - a key is refreshed at most once per
    ///   [`request_no_cache_interval`](Self::request_no_cache_interval) (default
    ///   [`DEFAULT_REQUEST_NO_CACHE_INTERVAL`], 1 s): a `no-cache` request inside it is
    ///   answered from the entry just refreshed (`Cache-Status: stormcache; hit;
    ///   detail=rate-limited`). The limiter remembers the last 10,000 keys refreshed, no
    ///   more, and is kept per process: `k` instances refresh a key at most `k` times per
    ///   interval.
    pub fn request_no_cache(mut self, honor: bool) -> Self {
        self.config().honor_request_no_cache = honor;
        self
    }

    /// Whether responses say how they were answered in `x-cache` too (default `true`), beside
    /// `Cache-Status`, which they always carry.
    pub fn x_cache(mut self, enabled: bool) -> Self {
        self.config().x_cache = enabled;
        self
    }

    /// Fail-safe grace: an expired response is kept this long and served (`x-cache: stale`)
    /// when the handler fails.
    pub fn stale_for(mut self, grace: Duration) -> Self {
        let options = std::mem::take(&mut self.config().options);
        self.config().options = options.stale_for(grace);
        self
    }

    /// Soft handler timeout: a request that holds an expired response inside its
    /// [`stale_for`](Self::stale_for) grace and has waited this long for the handler, run by
    /// another request for the same key (here, or on another instance with a distributed
    /// lock), is answered with the stale response (`Cache-Status: stormcache; fwd=stale`).
    /// The request running the handler waits for it, and its response is stored as usual
    /// (see [`EntryOptions::soft_timeout`](crate::EntryOptions::soft_timeout)).
    pub fn soft_timeout(mut self, after: Duration) -> Self {
        let options = std::mem::take(&mut self.config().options);
        self.config().options = options.soft_timeout(after);
        self
    }

    /// Hard handler timeout: no request waits for the handler longer than this. It is
    /// answered with the stale response if the grace allows, else `504 Gateway Timeout`
    /// (`Cache-Status: stormcache; fwd=miss; detail=timeout`); the handler's future is
    /// dropped (see [`EntryOptions::hard_timeout`](crate::EntryOptions::hard_timeout)).
    pub fn hard_timeout(mut self, after: Duration) -> Self {
        let options = std::mem::take(&mut self.config().options);
        self.config().options = options.hard_timeout(after);
        self
    }

    /// Replaces the entry options (TTL, class, fixed tags, grace) at once.
    ///
    /// # Panics
    /// If they name a class the cache does not declare (see [`class`](Self::class)).
    pub fn options(mut self, options: EntryOptions) -> Self {
        self.config().options = with_value_grace(options);
        self.check_class();
        self
    }

    /// The statuses stored on the heuristic (default [`HEURISTIC_STATUSES`]); a response that
    /// gives its own lifetime or says `public` is stored whatever its final status.
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

    /// Declares a request header every response of the route depends on: its value becomes
    /// part of the key, as it is sent (no normalization).
    ///
    /// Not needed for a response's own `Vary`: a response that varies on headers not declared
    /// here is stored as a variant, found by the request's normalized values of those
    /// headers (see [HTTP rules](CacheLayer#http-rules)). Declaring a header saves the
    /// second lookup a variant costs, for a header every response varies on.
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

    /// Headers that carry credentials besides `Authorization` and `Cookie` (an API key, a
    /// session header): a request with one of them and no principal bypasses shared entries
    /// as those do.
    ///
    /// ```
    /// use axum::http::HeaderName;
    /// use stormcache::layer::CacheLayer;
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = stormcache::Cache::builder("docs").build()?;
    /// let layer = CacheLayer::new(cache).credential_headers([HeaderName::from_static("x-api-key")]);
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn credential_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.config().credential_headers.extend(names);
        self
    }

    /// Whether the request's host is part of the key (default `true`): an application that
    /// serves several hosts (tenants, locales) must not answer one host's request with
    /// another's page. Turn it off only when every host serves the same content.
    pub fn key_host(mut self, enabled: bool) -> Self {
        self.config().key_host = enabled;
        self
    }

    /// The `stale-while-revalidate` window (RFC 5861) of responses that do not give one
    /// (default: none). For this long after a stored response stops being fresh, it answers
    /// at once (`x-cache: stale`, `Cache-Status: stormcache; hit; ttl=-3;
    /// detail=stale-while-revalidate`) while the handler refreshes it in the background:
    /// once per key here, and once across instances (the refresh takes the key's
    /// [`distributed_lock`](crate::EntryOptions::distributed_lock), else a 30 s one, without
    /// waiting). A failed refresh keeps the stale entry. A response's own
    /// `stale-while-revalidate=N` wins; none for those that must be revalidated.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config().stale_while_revalidate = Some(window.min(LONGEST));
        self
    }

    /// Whether a `2xx` or `3xx` answer to an unsafe method (not `GET`, `HEAD`, `OPTIONS`,
    /// `TRACE`) invalidates what is stored for its path and its same-host `Location` and
    /// `Content-Location` (RFC 9111 §4.4), every variant, on every instance, before the
    /// response returns (default `true`). Through the path tags: needs
    /// [`tag_path`](Self::tag_path).
    pub fn invalidate_on_unsafe(mut self, enabled: bool) -> Self {
        self.config().invalidate_on_unsafe = enabled;
        self
    }

    /// Whether a stored `2xx` response without an `ETag` gets a strong one made from a hash
    /// of its body, `Content-Type` and `Content-Encoding` (default `false`), so that clients
    /// can revalidate it with `If-None-Match` and get `304 Not Modified` from the cache.
    ///
    /// The hash is 64-bit FNV-1a, the same on every instance and every version, so
    /// instances that store the same body give it the same `ETag`. The layer never sends
    /// the `ETag` it made to the handler (which does not know it) when it revalidates an
    /// entry, and it does not count as a validator: a `no-cache` response without one of
    /// its own is still not stored.
    ///
    /// ```
    /// use axum::{body::Body, http::Request, routing::get, Router};
    /// use stormcache::layer::CacheLayer;
    /// use stormcache::Cache;
    /// use tower::ServiceExt; // for `oneshot`
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = Cache::builder("docs").build()?;
    /// let app = Router::new()
    ///     .route("/report", get(|| async { "quarterly figures" }))
    ///     .layer(CacheLayer::new(cache).etag(true));
    ///
    /// let first = app.clone().oneshot(Request::get("/report").body(Body::empty())?).await?;
    /// let etag = first.headers()["etag"].clone();
    /// let again = Request::get("/report").header("if-none-match", etag).body(Body::empty())?;
    /// assert_eq!(app.oneshot(again).await?.status(), 304);
    /// # Ok(()) }
    /// ```
    pub fn etag(mut self, enabled: bool) -> Self {
        self.config().etag = enabled;
        self
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            cache: self.cache.clone(),
            config: self.built(),
        }
    }
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config
            .fmt_fields(f.debug_struct("CacheLayer").field("cache", &self.cache))
    }
}

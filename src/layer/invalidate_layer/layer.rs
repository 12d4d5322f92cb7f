//! [`InvalidateLayer`] and its configuration: the builder methods, `impl Layer`, and the
//! rendering of what a request invalidates.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::response::IntoResponse;
use http::request::Parts;
use http::{Method, StatusCode};
use tower_layer::Layer;

use super::InvalidateService;
use crate::layer::request_info::RequestInfo;
use crate::layer::request_key::path_tag;
use crate::{Cache, Invalidation, KeyTemplate};

pub(super) type RuleFn = Arc<dyn Fn(&RequestInfo<'_>) -> Invalidation + Send + Sync>;
pub(super) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub(super) type ExtractFn =
    Arc<dyn for<'a> Fn(&'a mut Parts) -> BoxFuture<'a, Option<Invalidation>> + Send + Sync>;

/// Invalidates cache entries after a mutating request (`POST`, `PUT`, `PATCH`, `DELETE`)
/// gets a `2xx` response, or `303 See Other` (the post/redirect/get answer to a form) — the
/// HTTP twin of `#[invalidate]`. [`when_status`](InvalidateLayer::when_status) changes which
/// answers count as success.
///
/// What goes is computed from the request before the handler runs: key and tag
/// [templates](KeyTemplate) rendered with the path parameters, rule functions over a
/// [`RequestInfo`], and rules fed by any axum extractor. By default the layer also removes
/// the responses a [`CacheLayer`](crate::layer::CacheLayer) cached for the same path (a `PUT
/// /items/7` refreshes `GET /items/7`, a `POST /items` refreshes `GET /items`).
///
/// The invalidation finishes before the response is returned, so the client that made the
/// change reads its own write. The local store is cleaned first; if Redis fails, the
/// response still goes out (the failure is logged) — the layer never fails a request.
///
/// ```
/// use axum::{routing::{delete, get}, Router};
/// use stormcache::layer::{CacheLayer, InvalidateLayer};
/// use stormcache::{Cache, KeyTemplate};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::builder("docs").build()?;
/// let app = Router::new()
///     .route(
///         "/users/{u}/groups",
///         get(|| async { "[\"staff\"]" })
///             .route_layer(CacheLayer::new(cache.clone()).tag_template(KeyTemplate::parse("user:{u}")?)),
///     )
///     .route(
///         "/groups/{g}/members/{u}",
///         delete(|| async { "removed" })
///             .route_layer(InvalidateLayer::new(cache).tag(KeyTemplate::parse("user:{u}")?)),
///     );
///
/// let get_groups = || axum::http::Request::get("/users/alice/groups").body(axum::body::Body::empty());
/// app.clone().oneshot(get_groups()?).await?; // miss, stored
/// let hit = app.clone().oneshot(get_groups()?).await?;
/// assert_eq!(hit.headers()["x-cache"], "hit");
///
/// let remove = axum::http::Request::delete("/groups/staff/members/alice").body(axum::body::Body::empty())?;
/// assert!(app.clone().oneshot(remove).await?.status().is_success());
/// let after = app.oneshot(get_groups()?).await?;
/// assert_eq!(after.headers()["x-cache"], "miss");
/// # Ok(()) }
/// ```
///
/// Path parameters exist once axum has routed the request: add the layer with
/// `route_layer` or on a `MethodRouter`, as above.
#[derive(Clone)]
#[must_use]
pub struct InvalidateLayer {
    cache: Cache,
    config: Arc<Config>,
}

/// What an [`InvalidateLayer`] was configured with, shared by every service it builds.
#[derive(Clone)]
pub(super) struct Config {
    pub(super) fixed: Invalidation,
    pub(super) keys: Vec<KeyTemplate>,
    pub(super) tags: Vec<KeyTemplate>,
    pub(super) rules: Vec<RuleFn>,
    pub(super) extractors: Vec<ExtractFn>,
    pub(super) same_path: bool,
    pub(super) methods: Vec<Method>,
    /// Which answers mean the mutation happened.
    pub(super) succeeded: Arc<dyn Fn(StatusCode) -> bool + Send + Sync>,
}

/// A `2xx`, or `303 See Other` (a form post answered with a redirect to the result).
fn succeeded_by_default(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::SEE_OTHER
}

impl InvalidateLayer {
    /// A layer that, on `POST`/`PUT`/`PATCH`/`DELETE` answered `2xx` or `303 See Other`,
    /// invalidates the cached responses of the same path, and whatever else is added with the
    /// other methods.
    pub fn new(cache: Cache) -> Self {
        InvalidateLayer {
            cache,
            config: Arc::new(Config {
                fixed: Invalidation::new(),
                keys: Vec::new(),
                tags: Vec::new(),
                rules: Vec::new(),
                extractors: Vec::new(),
                same_path: true,
                methods: vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
                succeeded: Arc::new(succeeded_by_default),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// A key to invalidate, rendered from the path parameters: `user:groups:{u}`.
    pub fn key(mut self, template: KeyTemplate) -> Self {
        self.config().keys.push(template);
        self
    }

    /// A tag to invalidate, rendered from the path parameters: `user:{u}`.
    pub fn tag(mut self, template: KeyTemplate) -> Self {
        self.config().tags.push(template);
        self
    }

    /// A class to flush on every matching mutation.
    pub fn class(mut self, class: impl Into<String>) -> Self {
        let fixed = std::mem::take(&mut self.config().fixed);
        self.config().fixed = fixed.class(class);
        self
    }

    /// A fixed invalidation (keys, tags, classes) added on every matching mutation.
    pub fn invalidation(mut self, inv: &Invalidation) -> Self {
        self.config().fixed.merge(inv);
        self
    }

    /// A rule computed from the request.
    ///
    /// ```
    /// use stormcache::layer::{InvalidateLayer, RequestInfo};
    /// use stormcache::{Cache, Invalidation, Key};
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = Cache::builder("docs").build()?;
    /// let layer = InvalidateLayer::new(cache).rule(|req: &RequestInfo<'_>| match req.param("u") {
    ///     Some(u) => Invalidation::new().key(Key::builder("resources:").value(u).build()),
    ///     None => Invalidation::new(),
    /// });
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn rule<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Invalidation + Send + Sync + 'static,
    {
        self.config().rules.push(Arc::new(f));
        self
    }

    /// A rule fed by an axum extractor (anything `FromRequestParts<()>`: `Path`, `Query`,
    /// `Extension`, a typed header, your own). When the extractor rejects the request, the
    /// rule adds nothing (and a warning is logged): the handler, which usually extracts the
    /// same thing, then rejects it too.
    ///
    /// ```
    /// use axum::extract::Path;
    /// use stormcache::layer::InvalidateLayer;
    /// use stormcache::{Cache, Invalidation, Key};
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = Cache::builder("docs").build()?;
    /// let layer = InvalidateLayer::new(cache).extract(|Path((_group, user)): Path<(String, String)>| {
    ///     Invalidation::new()
    ///         .key(Key::builder("user:groups:").value(&user).build())
    ///         .key(Key::builder("resources:").value(&user).build())
    /// });
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn extract<E, F>(mut self, f: F) -> Self
    where
        E: FromRequestParts<()> + Send + 'static,
        F: Fn(E) -> Invalidation + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let rule: ExtractFn = Arc::new(move |parts: &mut Parts| {
            let f = Arc::clone(&f);
            Box::pin(async move {
                match E::from_request_parts(parts, &()).await {
                    Ok(extracted) => Some(f(extracted)),
                    Err(rejection) => {
                        let status = rejection.into_response().status();
                        tracing::warn!(%status, extractor = std::any::type_name::<E>(), "invalidation extractor rejected the request; its rule adds nothing");
                        None
                    }
                }
            })
        });
        self.config().extractors.push(rule);
        self
    }

    /// Whether the responses cached for the request's own path are invalidated (default
    /// `true`).
    pub fn same_path(mut self, enabled: bool) -> Self {
        self.config().same_path = enabled;
        self
    }

    /// The methods that trigger invalidation (default `POST`, `PUT`, `PATCH`, `DELETE`).
    /// Other methods pass through untouched.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config().methods = methods.into_iter().collect();
        self
    }

    /// Which answers mean the mutation happened, so the invalidation is made (default: any
    /// `2xx`, and `303 See Other`, the post/redirect/get answer). An answer that fails it —
    /// an error, a validation failure — invalidates nothing.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use stormcache::layer::InvalidateLayer;
    ///
    /// # fn main() -> Result<(), stormcache::Error> {
    /// let cache = stormcache::Cache::builder("docs").build()?;
    /// // Also after a 302 Found, as some frameworks redirect after a post.
    /// let layer = InvalidateLayer::new(cache).when_status(|status| {
    ///     status.is_success() || status == StatusCode::SEE_OTHER || status == StatusCode::FOUND
    /// });
    /// # let _ = layer; Ok(()) }
    /// ```
    pub fn when_status(
        mut self,
        succeeded: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.config().succeeded = Arc::new(succeeded);
        self
    }
}

impl<S> Layer<S> for InvalidateLayer {
    type Service = InvalidateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InvalidateService {
            inner,
            cache: self.cache.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl Config {
    pub(super) fn fmt_fields(&self, d: &mut fmt::DebugStruct<'_, '_>) -> fmt::Result {
        d.field("fixed", &self.fixed)
            .field("keys", &self.keys)
            .field("tags", &self.tags)
            .field("rules", &self.rules.len())
            .field("extractors", &self.extractors.len())
            .field("same_path", &self.same_path)
            .field("methods", &self.methods)
            .finish()
    }

    /// The part of the invalidation that needs no extractor.
    pub(super) fn sync_part(&self, info: &RequestInfo<'_>) -> Invalidation {
        let mut inv = self.fixed.clone();
        if self.same_path {
            inv = inv.tag(path_tag(info.path()));
        }
        for (templates, is_tag) in [(&self.keys, false), (&self.tags, true)] {
            for template in templates {
                match info.render(template) {
                    Ok(key) if is_tag => inv = inv.tag(key),
                    Ok(key) => inv = inv.key(key),
                    Err(error) => {
                        tracing::error!(%error, path = info.path(), "invalidation template cannot be rendered for this request; that part is skipped");
                    }
                }
            }
        }
        for rule in &self.rules {
            inv.merge(&rule(info));
        }
        inv
    }
}

impl fmt::Debug for InvalidateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt_fields(
            f.debug_struct("InvalidateLayer")
                .field("cache", &self.cache),
        )
    }
}

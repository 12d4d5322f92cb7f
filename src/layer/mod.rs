//! Tower layers for axum: response caching and invalidation on mutating routes.
//!
//! - [`CacheLayer`] answers `GET`/`HEAD` requests from the [`Cache`](crate::Cache) and
//!   stores what the handler says when HTTP allows it, for as long as the response says
//!   it is fresh; every response says how it was answered in `Cache-Status` (RFC 9211) and
//!   `x-cache: hit | miss | stale | revalidated | bypass`.
//! - [`InvalidateLayer`] removes entries after a successful `POST`/`PUT`/`PATCH`/`DELETE`:
//!   the HTTP twin of `#[invalidate]`.
//!
//! Both are `Clone`, compose with `Router::layer`, `Router::route_layer`, a `MethodRouter`
//! and `tower::ServiceBuilder`, work with any body type, and never fail a request: their
//! error type is the inner service's (`Infallible` under axum). Because they use the same
//! [`Cache`](crate::Cache) as the rest of the application, a Redis outage does not reach the
//! client: the local store answers, then the handler.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::{delete, get}, Router};
//! use stormcache::layer::{CacheLayer, InvalidateLayer};
//! use stormcache::{Cache, Class, KeyTemplate};
//!
//! # fn main() -> Result<(), stormcache::Error> {
//! let cache = Cache::builder("shop")
//!     .redis_url(std::env::var("REDIS_URL").ok()) // none: local store only
//!     .class(Class::new("permissions").ttl(Duration::from_secs(900)).volatile())
//!     .build()?;
//! let user_tag = KeyTemplate::parse("user:{u}")?;
//!
//! let app: Router = Router::new()
//!     .route("/resources", get(|| async { "[]" }))
//!     .route(
//!         "/users/{u}/resources",
//!         get(|| async { "[]" }).route_layer(
//!             CacheLayer::new(cache.clone()).class("permissions").tag_template(user_tag.clone()),
//!         ),
//!     )
//!     .route(
//!         "/groups/{g}/members/{u}",
//!         delete(|| async { "" }).route_layer(InvalidateLayer::new(cache.clone()).tag(user_tag)),
//!     )
//!     .layer(CacheLayer::new(cache).ttl(Duration::from_secs(60)));
//! # let _ = app; Ok(()) }
//! ```
//!
//! When a route has a [`CacheLayer`] of its own (`route_layer`) inside a router-wide one, the
//! inner, more specific layer owns the route's entries: the outer layer sees that the inner
//! one answered and neither stores the response again nor changes its `x-cache` and
//! `Cache-Status`.

mod body;
mod cache_control;
pub mod cache_layer;
mod cache_status;
mod cached_response;
mod conditional;
mod freshness;
mod http_date;
mod inner_service;
pub mod invalidate_layer;
mod query_filter;
mod request_info;
mod request_key;
mod vary;
mod x_cache;

pub use body::ResponseBody;
pub use cache_layer::{
    CacheLayer, CacheService, DEFAULT_MAX_BODY_SIZE, DEFAULT_REQUEST_NO_CACHE_INTERVAL,
    HEURISTIC_STATUSES,
};
pub use invalidate_layer::{InvalidateLayer, InvalidateService};
pub use request_info::RequestInfo;
pub use x_cache::X_CACHE;

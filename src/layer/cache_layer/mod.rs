//! [`CacheLayer`]: read-through caching of `GET`/`HEAD` responses.
//!
//! ```
//! use std::time::Duration;
//! use axum::body::Body;
//! use axum::http::Request;
//! use axum::{routing::get, Router};
//! use stormcache::layer::CacheLayer;
//! use stormcache::Cache;
//! use tower::ServiceExt; // for `oneshot`
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder("docs").build()?;
//! let app = Router::new()
//!     .route("/items", get(|| async { "[\"a\",\"b\"]" }).post(|| async { "created" }))
//!     .layer(CacheLayer::new(cache).ttl(Duration::from_secs(60)));
//!
//! let get_items = Request::get("/items").body(Body::empty())?;
//! assert_eq!(app.clone().oneshot(get_items).await?.headers()["x-cache"], "miss");
//!
//! // `HEAD` is answered from `GET`'s entry: the same headers, no body.
//! let head = app.clone().oneshot(Request::head("/items").body(Body::empty())?).await?;
//! assert_eq!(head.headers()["x-cache"], "hit");
//! assert_eq!(head.headers()["content-length"], "9");
//!
//! // Other methods go to the handler untouched.
//! let post = app.oneshot(Request::post("/items").body(Body::empty())?).await?;
//! assert_eq!(post.headers()["x-cache"], "bypass");
//! # Ok(()) }
//! ```
//!
//! A [`CacheLayer`] holds the configuration and wraps each inner service in a
//! [`CacheService`], whose future is a [`ResponseFuture`]. Inside, the service decides in
//! `call` whether the request bypasses the cache or is answered from the local store (the
//! request headers it decides on are found in one pass, `heads`); a miss
//! goes to the load, which asks the inner service once per key and stores what the HTTP
//! rules allow. A request's `no-cache`, when honoured, goes through the refresh (one per key
//! at a time, one per interval: `refresh`, `limiter`); `max_entries` keeps its own record of
//! the keys stored (`registry`); `limits` holds the builder methods of these bounds.
//! The configuration itself is `config`. A response is read and placed among the variants of
//! its key in `capture`; `store` is the one path of the requests whose handler answers
//! before an entry is used (the refresh of a request's `no-cache`, a stored `no-cache`
//! response revalidated), so a refresh stores the request's own variant too.

mod background;
mod capture;
mod config;
mod future;
mod heads;
mod heuristic;
mod layer;
mod limiter;
mod limits;
mod load;
mod range;
mod refresh;
mod registry;
mod revalidate;
mod rules;
mod service;
mod stale;
mod store;
mod unsafe_methods;

pub use future::ResponseFuture;
pub use layer::{CacheLayer, DEFAULT_MAX_BODY_SIZE, HEURISTIC_STATUSES};
pub use limiter::DEFAULT_REQUEST_NO_CACHE_INTERVAL;
pub use service::CacheService;

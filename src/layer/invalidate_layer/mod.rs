//! [`InvalidateLayer`]: invalidation after successful mutations, the HTTP twin of
//! `#[invalidate]`.
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use axum::{routing::put, Router};
//! use stormcache::layer::InvalidateLayer;
//! use stormcache::{Cache, EntryOptions, Key, KeyTemplate};
//! use tower::ServiceExt; // for `oneshot`
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder("docs").build()?;
//! let key = Key::builder("item:").value("7").build();
//! cache.set(key.clone(), "old".to_owned(), &EntryOptions::new()).await;
//!
//! let app = Router::new().route(
//!     "/items/{id}",
//!     put(|| async { "updated" })
//!         .route_layer(InvalidateLayer::new(cache.clone()).key(KeyTemplate::parse("item:{id}")?)),
//! );
//! let update = Request::put("/items/7").body(Body::empty())?;
//! assert_eq!(app.oneshot(update).await?.status(), StatusCode::OK);
//! assert_eq!(cache.get::<String>(&key, &EntryOptions::new()).await, None);
//! # Ok(()) }
//! ```
//!
//! An [`InvalidateLayer`] holds what to invalidate and wraps each inner service in an
//! [`InvalidateService`], whose future is a [`ResponseFuture`]: the request's invalidation
//! is computed before the handler runs and applied once it has answered with a `2xx`.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::InvalidateLayer;
pub use service::InvalidateService;

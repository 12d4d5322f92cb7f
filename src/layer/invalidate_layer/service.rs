//! [`InvalidateService`]: passes other methods through, and runs the invalidation after a
//! successful mutation, before the response is returned.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::layer::Config;
use super::ResponseFuture;
use crate::layer::inner_service::{define_inner_service_accessors, take_ready, Drive};
use crate::layer::request_info::{original_uri, path_params, RequestInfo};
use crate::{Cache, RedisOutcome};

/// The service [`InvalidateLayer`](super::InvalidateLayer) wraps around an inner service.
///
/// ```
/// use axum::body::Body;
/// use axum::http::{Request, Response, StatusCode};
/// use stormcache::layer::InvalidateLayer;
/// use stormcache::{Cache, Invalidation, Key};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::builder("docs").build()?;
/// let key = Key::literal("resources:all")?;
/// cache.set(key.clone(), 1u32, &Default::default()).await;
///
/// let svc = ServiceBuilder::new()
///     .layer(InvalidateLayer::new(cache.clone()).invalidation(&Invalidation::new().key(key.clone())))
///     .service(service_fn(|_req: Request<Body>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Body::from("created")))
///     }));
/// let res = svc.oneshot(Request::post("/resources").body(Body::empty())?).await?;
/// assert_eq!(res.status(), StatusCode::OK);
/// assert_eq!(cache.get::<u32>(&key, &Default::default()).await, None);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct InvalidateService<S> {
    pub(super) inner: S,
    pub(super) cache: Cache,
    pub(super) config: Arc<Config>,
}

impl<S> InvalidateService<S> {
    define_inner_service_accessors!();
}

impl<S: fmt::Debug> fmt::Debug for InvalidateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt_fields(
            f.debug_struct("InvalidateService")
                .field("inner", &self.inner)
                .field("cache", &self.cache),
        )
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for InvalidateService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if !self.config.methods.contains(req.method()) {
            return ResponseFuture {
                kind: Drive::Inner {
                    fut: self.inner.call(req),
                },
            };
        }
        let (mut parts, body) = req.into_parts();
        let params = path_params(&mut parts);
        let inv = self
            .config
            .sync_part(&RequestInfo::with(&parts, params.as_ref(), None));
        let mut inner = take_ready(&mut self.inner);
        let cache = self.cache.clone();
        let config = Arc::clone(&self.config);
        let fut = async move {
            let mut inv = inv;
            for extractor in &config.extractors {
                if let Some(more) = extractor(&mut parts).await {
                    inv.merge(&more);
                }
            }
            let path = original_uri(&parts).path().to_owned();
            let res = inner.call(Request::from_parts(parts, body)).await?;
            if (config.succeeded)(res.status()) && !inv.is_empty() {
                let report = cache.invalidate_promptly(&inv).await;
                match &report.redis {
                    RedisOutcome::Journaled { overflowed } => {
                        tracing::warn!(%path, overflowed, "invalidated locally; Redis is down, the rest is journaled");
                    }
                    _ => {
                        tracing::debug!(%path, removed = report.redis_keys_removed, "invalidated after a successful mutation")
                    }
                }
            }
            Ok(res)
        };
        ResponseFuture {
            kind: Drive::Boxed { fut: Box::pin(fut) },
        }
    }
}

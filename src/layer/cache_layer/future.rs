//! [`ResponseFuture`]: the future of [`CacheService`](super::CacheService), unboxed when the
//! request bypasses the cache or is answered in `call`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::rules::with_x_cache;
use crate::layer::body::ResponseBody;
use crate::layer::inner_service::Drive;
use crate::layer::x_cache::XCache;

pin_project! {
    /// The response future of [`CacheService`](super::CacheService).
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        pub(super) kind: Drive<F, Result<Response<ResponseBody<B>>, E>>,
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(super) fn bypass(fut: F) -> Self {
        ResponseFuture {
            kind: Drive::Inner { fut },
        }
    }

    pub(super) fn ready(res: Response<ResponseBody<B>>) -> Self {
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

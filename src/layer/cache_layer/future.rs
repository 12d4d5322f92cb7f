//! [`ResponseFuture`]: the future of [`CacheService`](super::CacheService), unboxed when the
//! request bypasses the cache or is answered in `call`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use http_body::Body;
use pin_project_lite::pin_project;

use super::rules::{stamp_response, Stamp};
use crate::layer::body::ResponseBody;
use crate::layer::cache_status::Outcome;
use crate::layer::inner_service::{BoxFuture, Drive};

pin_project! {
    /// The response future of [`CacheService`](super::CacheService).
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        pub(super) kind: Drive<F, Result<Response<ResponseBody<B>>, E>>,
        // How a bypassed response is marked.
        pub(super) mark: (Stamp, Outcome),
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(super) fn bypass(fut: F, stamp: Stamp, outcome: Outcome) -> Self {
        ResponseFuture {
            kind: Drive::Inner { fut },
            mark: (stamp, outcome),
        }
    }

    pub(super) fn ready(res: Response<ResponseBody<B>>, stamp: Stamp) -> Self {
        ResponseFuture {
            kind: Drive::Ready { out: Some(Ok(res)) },
            mark: (stamp, Outcome::Hit),
        }
    }

    pub(super) fn boxed(
        fut: BoxFuture<Result<Response<ResponseBody<B>>, E>>,
        stamp: Stamp,
    ) -> Self {
        ResponseFuture {
            kind: Drive::Boxed { fut },
            // Unused: the boxed path marks its own answers.
            mark: (stamp, Outcome::Hit),
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
        let this = self.project();
        let (stamp, outcome) = *this.mark;
        this.kind.poll_map(cx, |out| {
            out.map(|res| stamp_response(res.map(ResponseBody::inner), stamp, outcome))
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

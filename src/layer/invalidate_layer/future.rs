//! [`ResponseFuture`]: the future of [`InvalidateService`](super::InvalidateService),
//! unboxed when the method does not trigger invalidation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::layer::inner_service::Drive;

pin_project! {
    /// The response future of [`InvalidateService`](super::InvalidateService).
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        pub(super) kind: Drive<F, Result<Response<B>, E>>,
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().kind.poll_map(cx, |out| out)
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field(
                "kind",
                &self.kind.label(["passthrough", "invalidating", "ready"]),
            )
            .finish()
    }
}

//! How both layers' services hold and drive the service they wrap.
//!
//! [`CacheService`](super::CacheService) and [`InvalidateService`](super::InvalidateService)
//! treat their inner service the same way, and the tower rules behind it are easy to get
//! subtly wrong, so they live here once:
//!
//! - the accessors (`get_ref`, `get_mut`, `into_inner`) every tower middleware offers;
//! - [`take_ready`]: a request whose work outlives `call` needs an owned inner service, and
//!   it must be the one `poll_ready` prepared, not a fresh clone;
//! - [`Drive`]: what a response future polls. The pass-through paths forward the inner
//!   service's future unboxed, so bypassing a layer costs no allocation; only the layer's
//!   own work is boxed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

/// Defines `get_ref`, `get_mut` and `into_inner` over a service's `inner` field (the
/// accessors tower-http gives every middleware).
macro_rules! define_inner_service_accessors {
    () => {
        /// The wrapped service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub(super) use define_inner_service_accessors;

/// Takes the inner service that `poll_ready` drove to readiness and leaves a clone for the
/// next call: a clone is not necessarily ready, so it must not be the one called now.
pub(super) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// The boxed future of a layer's own work.
pub(super) type BoxFuture<O> = Pin<Box<dyn Future<Output = O> + Send>>;

pin_project! {
    /// What a response future drives, producing `O`.
    #[project = DriveProj]
    pub(super) enum Drive<F, O> {
        /// The inner service's own future, unboxed: the request passes through the layer.
        Inner { #[pin] fut: F },
        /// The layer's own work around the inner service.
        Boxed { fut: BoxFuture<O> },
        /// An answer known in `call` (a cache hit).
        Ready { out: Option<O> },
    }
}

impl<F: Future, O> Drive<F, O> {
    /// Polls whichever future this is; `map` turns the inner service's output into `O`.
    pub(super) fn poll_map(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        map: impl FnOnce(F::Output) -> O,
    ) -> Poll<O> {
        match self.project() {
            DriveProj::Inner { fut } => fut.poll(cx).map(map),
            DriveProj::Boxed { fut } => fut.as_mut().poll(cx),
            DriveProj::Ready { out } => match out.take() {
                Some(out) => Poll::Ready(out),
                None => panic!("`ResponseFuture` polled after completion"),
            },
        }
    }
}

impl<F, O> Drive<F, O> {
    /// The name of the variant, among `[inner, boxed, ready]`, for `Debug`.
    pub(super) fn label(&self, names: [&'static str; 3]) -> &'static str {
        match self {
            Drive::Inner { .. } => names[0],
            Drive::Boxed { .. } => names[1],
            Drive::Ready { .. } => names[2],
        }
    }
}

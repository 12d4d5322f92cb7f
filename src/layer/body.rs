//! [`ResponseBody`]: the body of every response that went through a
//! [`CacheLayer`](super::CacheLayer).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`CacheService`](super::CacheService): a stored body served from
    /// the cache, the inner service's body passed through, or the part of a body read while
    /// deciding whether to store it followed by the rest.
    ///
    /// Its data is [`Bytes`]; its error is the inner body's.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use stormcache::layer::ResponseBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let body = ResponseBody::<Full<Bytes>>::full(Bytes::from_static(b"cached"));
    /// let bytes = body.collect().await.expect("infallible").to_bytes();
    /// assert_eq!(&bytes[..], b"cached");
    /// # }
    /// ```
    pub struct ResponseBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Full { data: Option<Bytes> },
        Inner { #[pin] body: B },
        Replay {
            buffered: VecDeque<Frame<Bytes>>,
            error: Option<B::Error>,
            // Boxed: it was polled (pinned) while the layer read the head of it.
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> ResponseBody<B> {
    /// A body holding `data` (empty data is an empty body).
    pub fn full(data: Bytes) -> Self {
        let data = if data.is_empty() { None } else { Some(data) };
        ResponseBody {
            kind: Kind::Full { data },
        }
    }

    /// An empty body (a `HEAD` response served from the cache).
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full { data: None },
        }
    }

    /// The inner service's body, passed through untouched.
    pub fn inner(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    /// Frames already read from a body, then either what is left of it (`Ok(None)`: it had
    /// ended) or the error it failed with.
    pub(crate) fn replay(
        buffered: VecDeque<Frame<Bytes>>,
        rest: Result<Option<Pin<Box<B>>>, B::Error>,
    ) -> Self {
        let (error, rest) = match rest {
            Ok(rest) => (None, rest),
            Err(e) => (Some(e), None),
        };
        ResponseBody {
            kind: Kind::Replay {
                buffered,
                error,
                rest,
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { body } => poll_inner(body, cx),
            KindProj::Replay {
                buffered,
                error,
                rest,
            } => {
                if let Some(frame) = buffered.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(body) => poll_inner(body.as_mut(), cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Replay {
                buffered,
                error,
                rest,
            } => {
                buffered.is_empty()
                    && error.is_none()
                    && rest.as_ref().map_or(true, |b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Replay {
                buffered,
                error,
                rest,
            } => {
                let have: u64 = buffered
                    .iter()
                    .filter_map(Frame::data_ref)
                    .map(|d| d.len() as u64)
                    .sum();
                if error.is_some() {
                    let mut hint = SizeHint::new();
                    hint.set_lower(have);
                    return hint;
                }
                let mut hint = rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                // Raise the upper bound first: `set_lower` checks against it.
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + have);
                }
                hint.set_lower(hint.lower() + have);
                hint
            }
        }
    }
}

fn poll_inner<B>(
    body: Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body,
{
    match body.poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
            frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
        ))),
        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

impl<B: Body> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner { .. } => "Inner",
            Kind::Replay { .. } => "Replay",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

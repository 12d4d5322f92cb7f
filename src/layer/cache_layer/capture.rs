//! What the handler answered, as the cache layer sees it: whether it is a failure a stale
//! response may stand in for, and the reading of a storable response's body up to the size
//! limit.

use std::collections::VecDeque;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::layer::Config;
use super::rules::store_plan;
use crate::layer::body::ResponseBody;
use crate::layer::cached_response::CachedResponse;

/// Whether the handler's answer is a failure the stale response may stand in for: a 5xx
/// (`504` included), or the `408` tower-http's `TimeoutLayer` answers by default when the
/// handler is too slow.
pub(super) fn failed(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT
}

/// Reads a response whose headers allow storing it, up to the size limit. `Ok`: the whole
/// response, to store. `Err`: the response to pass on (with what was read of its body) and
/// why it is not stored.
pub(super) async fn capture<B: Body>(
    res: Response<B>,
    config: &Config,
    requested: SystemTime,
) -> Result<CachedResponse, (Response<ResponseBody<B>>, &'static str)> {
    let meta = match store_plan(&res, config, requested) {
        Ok(meta) => meta,
        Err(reason) => {
            tracing::debug!(status = %res.status(), %reason, "response not stored");
            return Err((res.map(ResponseBody::inner), reason));
        }
    };
    let (parts, body) = res.into_parts();
    let mut body = Box::pin(body);
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0usize;
    let mut trailers = false;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
                if let Some(data) = frame.data_ref() {
                    len += data.len();
                } else {
                    trailers = true;
                }
                frames.push_back(frame);
                if len > config.max_body {
                    tracing::debug!(
                        limit = config.max_body,
                        "response body over the size limit; streaming it uncached"
                    );
                    let res =
                        Response::from_parts(parts, ResponseBody::replay(frames, Ok(Some(body))));
                    return Err((res, "size"));
                }
            }
            Some(Err(error)) => {
                tracing::debug!("response body failed while being read; not stored");
                return Err((
                    Response::from_parts(parts, ResponseBody::replay(frames, Err(error))),
                    "body-error",
                ));
            }
        }
    }
    if trailers {
        tracing::debug!("response has trailers; not stored");
        return Err((
            Response::from_parts(parts, ResponseBody::replay(frames, Ok(None))),
            "trailers",
        ));
    }
    let body = match frames.len() {
        0 => Bytes::new(),
        1 => frames
            .pop_front()
            .and_then(|f| f.into_data().ok())
            .unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for frame in frames {
                if let Ok(data) = frame.into_data() {
                    all.extend_from_slice(&data);
                }
            }
            all.freeze()
        }
    };
    Ok(CachedResponse::new(
        parts.status,
        &parts.headers,
        body,
        meta,
    ))
}

//! `stale-while-revalidate` (RFC 5861 §3): the stale response answers at once, and the
//! handler refreshes it in the background with the request's head — once per key in this
//! process, once across instances (see
//! [`Cache::refresh_in_background`](crate::Cache)). The refresh revalidates with the
//! stored validators when there are any, so an unchanged resource costs a `304`.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::capture::{capture, Level};
use super::config::Config;
use super::revalidate::{add_validators, freshen};
use super::rules::{has_validators, lifetime_of, mark_nested};
use super::stale::failed;

use crate::layer::cached_response::CachedResponse;
use crate::{Cache, EntryOptions, Key};

/// Starts the background refresh of `key`, whose `stale` response is being answered.
/// Returns whether it started (`false`: a refresh of the key is running already). `fields`:
/// when `key` is a variant's key, the fields its response varies on (a response varying on
/// others now is not stored, the stale entry is kept).
#[allow(clippy::too_many_arguments)]
pub(super) fn refresh_stale<S, ReqBody, ResBody>(
    cache: &Cache,
    config: &Arc<Config>,
    key: Key,
    options: &EntryOptions,
    inner: S,
    mut parts: http::request::Parts,
    body: ReqBody,
    stale: CachedResponse,
    fields: Option<Vec<HeaderName>>,
) -> bool
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Send,
{
    // The refresh is for the entry, not for this client: its preconditions are its own
    // (it has been answered already), and a `HEAD` would bring no body to store.
    parts.method = Method::GET;
    for name in [
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_MATCH,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
    ] {
        parts.headers.remove(name);
    }
    // The request's own values of the fields its response varies on pick the variant the
    // refresh stores.
    let request = parts.headers.clone();
    let revalidate = has_validators(&stale);
    if revalidate {
        add_validators(&stale, &mut parts.headers);
    }
    let req = mark_nested(Request::from_parts(parts, body));
    let config = Arc::clone(config);
    let grace = options.stale_for;
    let loader = move || async move {
        let mut inner = inner;
        // A clone of the inner service: it must be ready before it is called.
        if std::future::poll_fn(|cx| inner.poll_ready(cx))
            .await
            .is_err()
        {
            tracing::debug!("inner service not ready; the background refresh stores nothing");
            return Err(());
        }
        let requested = SystemTime::now();
        let Ok(res) = inner.call(req).await else {
            tracing::debug!("inner service failed; the stale entry is kept");
            return Err(());
        };
        if revalidate && res.status() == StatusCode::NOT_MODIFIED {
            return freshen(&stale, res.headers(), &config, requested).map_err(|(_, why)| {
                tracing::debug!(
                    why,
                    "the refresh's 304 cannot be stored; the stale entry is kept"
                );
            });
        }
        if failed(res.status()) {
            tracing::debug!(status = %res.status(), "handler failed; the stale entry is kept");
            return Err(());
        }
        let level = fields.as_deref().map_or(Level::Base, Level::Variant);
        capture(res, &config, requested, level, &request)
            .await
            .map_err(|(_, why)| {
                tracing::debug!(
                    why,
                    "the refreshed response is not storable; the stale entry is kept"
                );
            })
    };
    cache.refresh_in_background(key, options, loader, move |stored: &CachedResponse| {
        lifetime_of(stored, grace)
    })
}

//! A request's `Cache-Control: no-cache`, when the layer honours it
//! ([`request_no_cache(true)`](super::CacheLayer::request_no_cache)): the handler answers and
//! a storable response replaces the entry — once per key at a time, and at most once per
//! [interval](super::CacheLayer::request_no_cache_interval).
//!
//! Without these bounds one client could make the handler run, and the entry be rewritten,
//! as often as it sends requests. So the refreshes of a key go through a [`Slot`]:
//!
//! - the first `no-cache` request of a key leads the refresh; those arriving while it runs
//!   wait for it and share the response it stored (`fwd=request; collapsed`);
//! - once done, the slot is kept for the interval: a `no-cache` request of the key meanwhile
//!   is answered as if it had not asked (`hit; detail=rate-limited` from the entry just
//!   refreshed);
//! - the slots live in a small moka cache with an expiry, bounded in entries (see
//!   `limiter`): the limiter cannot itself be made to grow.
//!
//! A `HEAD` request's refresh stores nothing (there is no body), but it counts as the key's
//! refresh all the same: otherwise `HEAD` with `no-cache` would reach the handler as often as
//! it is sent.

use std::sync::Arc;

use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::capture::Level;
use super::config::Config;
use super::limiter::Slot;
use super::load::{selects, Run};
use super::rules::{respond, stamp_response, Stamp};
use super::store::{answer_directly, Direct, Target};
use crate::layer::body::ResponseBody;
use crate::layer::cache_status::{Outcome, Stored};
use crate::layer::cached_response::CachedResponse;
use crate::layer::conditional::Conditions;
use crate::{Cache, EntryOptions, Key};

/// The cached path of a request whose `no-cache` leads or joins the refresh in `slot`; when
/// the refresh stored nothing, it goes on as a request without `no-cache` ([`Run::run`]).
pub(super) async fn refresh_then_run<S, ReqBody, ResBody>(
    run: Run,
    slot: Arc<Slot>,
    inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Send,
{
    let config = Arc::clone(&run.config);
    let request = req.headers().clone();
    let (level, base) = match &run.variant_of {
        Some((base, fields)) => (Level::Variant(fields), Some(base)),
        None => (Level::Base, None),
    };
    let refreshing = Refreshing {
        cache: &run.cache,
        config: &config,
        key: &run.key,
        options: run.options.as_ref().unwrap_or(&config.options),
        head: run.head,
        stamp: run.stamp,
        conditions: run.conditions.as_ref(),
        level,
        base,
        request: &request,
    };
    // With `max_entries`, the key is recorded once the refresh may have stored it (see
    // `registry`), also if this request is dropped mid-way.
    let recording = config.entries.as_ref().map(|e| e.recording(&run.key));
    match Box::pin(coalesced(refreshing, slot, inner, req)).await {
        Ok((answered, stored)) => {
            if let Some(recording) = recording.filter(|_| !stored) {
                recording.skip();
            }
            answered
        }
        // The refresh it joined stored nothing: on as any request (which records its key
        // itself).
        Err((inner, req)) => {
            if let Some(recording) = recording {
                recording.skip();
            }
            run.run(inner, req).await
        }
    }
}

/// Everything [`coalesced`] needs of the request besides the inner service.
#[derive(Clone, Copy)]
pub(super) struct Refreshing<'a> {
    pub(super) cache: &'a Cache,
    pub(super) config: &'a Config,
    pub(super) key: &'a Key,
    pub(super) options: &'a EntryOptions,
    pub(super) head: bool,
    pub(super) stamp: Stamp,
    pub(super) conditions: Option<&'a Conditions>,
    /// Whether `key` is the request's own or its variant's.
    pub(super) level: Level<'a>,
    /// The request's own key when `key` is its variant's.
    pub(super) base: Option<&'a Key>,
    /// The request's headers: a joined refresh answers only the requests it selects.
    pub(super) request: &'a HeaderMap,
}

/// What the request answers from its refresh: `Ok` the answer and whether the refresh
/// stored a response, or `Err` the inner service and the request back when the refresh it
/// joined stored nothing it can answer (it goes on as a request without `no-cache`).
type Refreshed<S, ReqBody, ResBody, E> =
    Result<(Result<Response<ResponseBody<ResBody>>, E>, bool), (S, Request<ReqBody>)>;

/// Leads or joins the refresh in `slot`.
pub(super) async fn coalesced<S, ReqBody, ResBody>(
    r: Refreshing<'_>,
    slot: Arc<Slot>,
    inner: S,
    req: Request<ReqBody>,
) -> Refreshed<S, ReqBody, ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let mut parts = Some((inner, req));
    let mut mine: Option<RefreshResult<ResBody, S::Error>> = None;
    let (parts_slot, mine_slot) = (&mut parts, &mut mine);
    // If the leader's request is dropped mid-way, a waiting one runs its own refresh.
    let stored = *slot
        .done
        .get_or_init(|| async move {
            let Some((inner, req)) = parts_slot.take() else {
                return false;
            };
            let result = refresh_entry(&r, inner, req).await;
            let stored = matches!(result, Ok(Ok(_)));
            *mine_slot = Some(result);
            stored
        })
        .await;
    let answer =
        |stored: &CachedResponse, outcome| respond(stored, r.head, r.stamp, outcome, r.conditions);
    let Some(parts) = parts else {
        // This request ran the refresh.
        if let Some(refreshes) = &r.config.refreshes {
            refreshes.finished(r.key, &slot);
        }
        let answered = match mine {
            Some(Ok(Ok(stored))) => Ok(answer(&stored, Outcome::Refresh(Stored::Yes))),
            Some(Ok(Err((res, why)))) => Ok(stamp_response(
                res,
                r.stamp,
                Outcome::Refresh(Stored::No(why)),
            )),
            Some(Err(error)) => Err(error),
            None => {
                // Unreachable: the refresh fills `mine` before it is done.
                tracing::error!("cache layer lost the refreshed response; answering 502");
                let mut res = Response::new(ResponseBody::empty());
                *res.status_mut() = http::StatusCode::BAD_GATEWAY;
                Ok(stamp_response(
                    res,
                    r.stamp,
                    Outcome::Refresh(Stored::No("lost")),
                ))
            }
        };
        return Ok((answered, stored));
    };
    // Joined: the response the refresh stored, read from the local store rather than kept in
    // the slot, so that the limiter holds no bodies. Gone already (evicted, invalidated, or
    // a class that skips the local store), or another request's variant: on as any request.
    if stored {
        if let Ok(fresh) = r
            .cache
            .get_local::<CachedResponse>(r.key.clone(), r.options)
        {
            if selects(&fresh, r.request) {
                return Ok((Ok(answer(&fresh, Outcome::RefreshCollapsed)), true));
            }
        }
    }
    Err(parts)
}

/// What a refresh gives its leader: the stored response, or the response passed on with why
/// it was not stored, or the inner service's error.
type RefreshResult<B, E> =
    Result<Result<CachedResponse, (Response<ResponseBody<B>>, &'static str)>, E>;

/// The handler answers, and what it says replaces the entry when it may be stored (under
/// the request's own variant when it varies; see `store::answer_directly`). `Ok(Ok(_))`:
/// the stored response; `Ok(Err(_))`: the response passed on, with why it was not stored.
async fn refresh_entry<S, ReqBody, ResBody>(
    r: &Refreshing<'_>,
    inner: S,
    req: Request<ReqBody>,
) -> RefreshResult<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let target = Target {
        cache: r.cache,
        config: r.config,
        key: r.key.clone(),
        options: r.options,
        level: r.level,
        base: r.base,
        head: r.head,
    };
    Ok(match answer_directly(target, inner, req, None).await? {
        Direct::Stored(stored) => Ok(stored),
        Direct::Passed(res, why) => Err((res, why)),
        // Only a stored `no-cache` response is validated, and a refresh has none.
        Direct::Validated(stored) => Ok(stored),
    })
}

//! The miss path of the cache layer: [`Run`] loads the response through the [`Cache`] (one
//! load per key, the stale entry on failure or inside its `stale-while-revalidate` window),
//! follows a varying response's entry to the request's own variant, and sends the requests
//! whose handler must answer before an entry is used (a stored `no-cache` response) straight
//! to it (see `store`). A request's honoured `no-cache` goes through `refresh` first, which
//! uses the same path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::LoadTimeout;

use super::background::refresh_stale;
use super::capture::{capture, Level, VARY_CHANGED};
use super::config::Config;
use super::revalidate::{add_validators, freshen};
use super::rules::{
    has_validators, lifetime_of, mark_nested, respond, stamp_response, unstamped, Stamp,
};
use super::stale::{failed, in_revalidate_window, may_stand_in};
use super::store::{answer_directly, forget, Direct, Target};
use crate::layer::body::ResponseBody;
use crate::layer::cache_status::{Outcome, Stored};
use crate::layer::cached_response::CachedResponse;
use crate::layer::conditional::Conditions;
use crate::layer::vary::{selector, variant_key};
use crate::{Cache, EntryOptions, Fetched, Key, Origin};

/// Everything the cached path needs once the request has left `call`.
pub(super) struct Run {
    pub(super) cache: Cache,
    pub(super) config: Arc<Config>,
    pub(super) key: Key,
    pub(super) options: Option<EntryOptions>,
    pub(super) head: bool,
    pub(super) stamp: Stamp,
    pub(super) conditions: Option<Conditions>,
    /// When `key` is the key of the request's variant (found in `call`): the request's own
    /// key, and the fields its variants vary on.
    pub(super) variant_of: Option<(Key, Vec<HeaderName>)>,
    /// A `no-cache` response found in `call`, to revalidate with the handler before use.
    pub(super) validate: Option<CachedResponse>,
}

/// The result of the inner service, when it is not stored: the response with why it was
/// not, or the inner service's error.
type Passed<B, E> = Result<(Response<ResponseBody<B>>, &'static str), E>;

/// The answer of the cached path.
type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// What one key's load came to.
enum Step<B: Body, E> {
    /// The answer.
    Done(Answer<B, E>),
    /// A response this request may be answered with, found in the cache or loaded by
    /// another request (`Hit` or `Collapsed`): the handler was not called for it.
    Cached(CachedResponse, Outcome),
    /// The entry is another request's variant: the request's own is read by these fields.
    OtherVariant(Vec<HeaderName>),
    /// Redis's stale copy of the request's own entry, inside its `stale-while-revalidate`
    /// window: answered at once, refreshed in the background.
    StaleWhileRevalidate(CachedResponse),
}

/// What every step of one request shares.
struct Ctx<'a> {
    cache: &'a Cache,
    config: &'a Config,
    options: &'a EntryOptions,
    head: bool,
    stamp: Stamp,
    conditions: Option<&'a Conditions>,
    /// The request's headers, which pick its variant (the request itself goes to the
    /// handler).
    request: &'a HeaderMap,
}

impl Ctx<'_> {
    fn answer<B: Body>(
        &self,
        value: &CachedResponse,
        outcome: Outcome,
    ) -> Response<ResponseBody<B>> {
        respond(value, self.head, self.stamp, outcome, self.conditions)
    }

    fn pass<B: Body>(
        &self,
        res: Response<ResponseBody<B>>,
        why: &'static str,
    ) -> Response<ResponseBody<B>> {
        stamp_response(res, self.stamp, Outcome::Miss(Stored::No(why)))
    }
}

/// Whether a stored response may answer a request with these headers: it does not vary, or
/// it is the variant the request selects.
pub(super) fn selects(stored: &CachedResponse, request: &HeaderMap) -> bool {
    stored.variant().map_or(true, |v| {
        selector(request, &v.fields).as_deref() == Some(v.selector.as_str())
    })
}

impl Run {
    /// The cached path. Kept small on a hit (its future is boxed per request): the direct
    /// path and the loader, which hold the inner service's future and the body reader, are
    /// boxed on their own, only when they run.
    ///
    /// With `max_entries`, each key is recorded once whatever may store it has run, and
    /// skipped when nothing was stored there (see `registry`): the variant's key when the
    /// response stored is a variant's.
    pub(super) async fn run<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Answer<ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send,
        S::Error: Send,
        ReqBody: Send + 'static,
        ResBody: Body + Send + 'static,
        ResBody::Data: Send,
        ResBody::Error: Send,
    {
        let Run {
            cache,
            config,
            key,
            options,
            head,
            stamp,
            conditions,
            variant_of,
            validate,
        } = self;
        let request = req.headers().clone();
        let ctx = Ctx {
            cache: &cache,
            config: &config,
            options: options.as_ref().unwrap_or(&config.options),
            head,
            stamp,
            conditions: conditions.as_ref(),
            request: &request,
        };
        let (mut base, mut fields) = match variant_of {
            Some((base, fields)) => (Some(base), Some(fields)),
            None => (None, None),
        };
        let mut key = key;
        if let Some(validate) = &validate {
            let level = fields.as_deref().map_or(Level::Base, Level::Variant);
            let base = base.as_ref();
            return direct(&ctx, key, level, base, inner, req, Some(validate)).await;
        }
        let mut req = Some(req);
        loop {
            let level = fields.as_deref().map_or(Level::Base, Level::Variant);
            let loading = load_key(
                &ctx,
                key.clone(),
                level,
                base.as_ref(),
                &mut inner,
                &mut req,
            );
            let step = match Box::pin(loading).await {
                Step::Done(answer) => return answer,
                step => step,
            };
            // Not `Done`: the loader did not run, the request is still here.
            let Some(req_now) = req.take() else {
                return Ok(lost(&ctx));
            };
            match step {
                Step::Done(answer) => return answer,
                Step::StaleWhileRevalidate(stale) => {
                    let (parts, body) = req_now.into_parts();
                    let by = fields.clone();
                    let options = ctx.options;
                    let value = stale.clone();
                    refresh_stale(&cache, &config, key, options, inner, parts, body, value, by);
                    return Ok(ctx.answer(&stale, Outcome::StaleWhileRevalidate));
                }
                Step::Cached(stored, Outcome::Hit) if stored.meta().no_cache => {
                    let (base, stored) = (base.as_ref(), Some(&stored));
                    return direct(&ctx, key, level, base, inner, req_now, stored).await;
                }
                Step::Cached(stored, outcome) => return Ok(ctx.answer(&stored, outcome)),
                Step::OtherVariant(by) if base.is_none() => {
                    let Some(selector) = selector(&request, &by) else {
                        // Field values that are not text: no variant of theirs is read or
                        // written; the handler answers.
                        return direct(&ctx, key, level, None, inner, req_now, None).await;
                    };
                    let variant = variant_key(&key, &selector);
                    base = Some(std::mem::replace(&mut key, variant));
                    fields = Some(by);
                    req = Some(req_now);
                }
                // A variant's key never holds another variant; answered by the handler.
                Step::OtherVariant(_) => {
                    let base = base.as_ref();
                    return direct(&ctx, key, level, base, inner, req_now, None).await;
                }
            }
        }
    }
}

/// A request the handler answers before any entry is used (see `store::answer_directly`):
/// a stored `no-cache` response to revalidate, or a request with no variant to read.
async fn direct<S, ReqBody, ResBody>(
    ctx: &Ctx<'_>,
    key: Key,
    level: Level<'_>,
    base: Option<&Key>,
    inner: S,
    req: Request<ReqBody>,
    validate: Option<&CachedResponse>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    // With `max_entries`, the key is recorded once the handler's answer may have been
    // stored there, also if the request is dropped mid-way.
    let recording = ctx.config.entries.as_ref().map(|e| e.recording(&key));
    let target = Target {
        cache: ctx.cache,
        config: ctx.config,
        key,
        options: ctx.options,
        level,
        base,
        head: ctx.head,
    };
    let answered = Box::pin(answer_directly(target, inner, req, validate)).await;
    if let Some(recording) = recording.filter(|_| !matches!(answered, Ok(Direct::Stored(_)))) {
        recording.skip();
    }
    Ok(match answered? {
        Direct::Stored(value) => ctx.answer(&value, Outcome::Miss(Stored::Yes)),
        Direct::Validated(value) => ctx.answer(&value, Outcome::Validated),
        Direct::Passed(res, why) => stamp_response(res, ctx.stamp, Outcome::Miss(Stored::No(why))),
    })
}

/// Loads one key: the request's own (`Level::Base`) or its variant's.
async fn load_key<S, ReqBody, ResBody>(
    ctx: &Ctx<'_>,
    key: Key,
    level: Level<'_>,
    base: Option<&Key>,
    inner: &mut S,
    req: &mut Option<Request<ReqBody>>,
) -> Step<ResBody, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send,
    ResBody: Body + Send,
    ResBody::Data: Send,
    ResBody::Error: Send,
{
    let Ctx {
        cache,
        config,
        options,
        head,
        conditions,
        request,
        ..
    } = *ctx;
    // With `max_entries`, the key is recorded once whatever may store it has run (see
    // `registry`).
    let recording = config.entries.as_ref().map(|e| e.recording(&key));
    let mut passed: Option<Passed<ResBody, S::Error>> = None;
    let mut ran = false;
    let mut revalidated = false;
    // A stale entry is revalidated with its validators, unless the client sent
    // preconditions of its own (those reach the handler as they are), or it is another
    // request's variant.
    let may_revalidate = !head && conditions.is_none();
    let (passed_slot, ran_flag, revalidated_flag) = (&mut passed, &mut ran, &mut revalidated);
    let fetched = cache
        .fetch_with_lifetime(
            key,
            options,
            move |stale: Option<&CachedResponse>| -> LoadFuture<'_> {
                // A failure the stale entry stands in for is not stored even when it gives
                // itself a lifetime (a middleware's `max-age` on every answer): the grace
                // the layer or the response grants is kept to hide such failures.
                let covered = stale
                    .is_some_and(|s| selects(s, request) && may_stand_in(s, options.stale_for));
                let stale = stale
                    .filter(|s| may_revalidate && has_validators(s) && selects(s, request))
                    .cloned();
                let req = req.take();
                Box::pin(async move {
                    *ran_flag = true;
                    let Some(req) = req else {
                        return Err(NotStored::Passed);
                    };
                    let mut req = mark_nested(req);
                    if let Some(stale) = &stale {
                        add_validators(stale, req.headers_mut());
                    }
                    let requested = SystemTime::now();
                    let res = match inner.call(req).await {
                        Ok(res) => res,
                        Err(e) => {
                            *passed_slot = Some(Err(e));
                            return Err(NotStored::Passed);
                        }
                    };
                    if let Some(stale) = stale.filter(|_| res.status() == StatusCode::NOT_MODIFIED)
                    {
                        return match freshen(&stale, res.headers(), config, requested) {
                            Ok(fresh) => {
                                *revalidated_flag = true;
                                Ok(fresh)
                            }
                            Err((merged, why)) => {
                                *passed_slot = Some(Ok((unstamped(&merged, false), why)));
                                Err(NotStored::Passed)
                            }
                        };
                    }
                    if covered && failed(res.status()) {
                        *passed_slot = Some(Ok((res.map(ResponseBody::inner), "status")));
                        return Err(NotStored::Passed);
                    }
                    if head {
                        // A HEAD response has no body to store; GET will fill the entry.
                        *passed_slot = Some(Ok((res.map(ResponseBody::inner), "head")));
                        return Err(NotStored::Passed);
                    }
                    match capture(res, config, requested, level, request).await {
                        Ok(stored) => Ok(stored),
                        Err((res, why)) => {
                            if let (VARY_CHANGED, Some(base)) = (why, base) {
                                forget(cache, base).await;
                            }
                            *passed_slot = Some(Ok((res, why)));
                            Err(NotStored::Passed)
                        }
                    }
                })
            },
            |stored: &CachedResponse| lifetime_of(stored, options.stale_for),
        )
        .await;
    // A value from the loader, Redis or another request's load is in the local store now;
    // a stale one was there already, and a failed load stored nothing.
    let stored = matches!(&fetched, Ok(f) if !matches!(f.origin, Origin::Stale));
    if let Some(recording) = recording.filter(|_| !stored) {
        recording.skip();
    }

    // RFC 9211's `fwd=vary-miss`: the request's entry held another request's variant.
    let miss = |stored| match level {
        Level::Base => Outcome::Miss(stored),
        Level::Variant(_) => Outcome::VaryMiss(stored),
    };
    let other_variant = |value: &CachedResponse| {
        let fields = value.variant().map(|v| v.fields.clone());
        Step::OtherVariant(fields.unwrap_or_default())
    };
    match fetched {
        Ok(Fetched { value, origin }) => match origin {
            // Our loader ran: the handler's 304 freshened the stale entry...
            Origin::Loader if revalidated => {
                Step::Done(Ok(ctx.answer(&value, Outcome::Revalidated)))
            }
            // ...or its response was stored.
            Origin::Loader if ran => Step::Done(Ok(ctx.answer(&value, miss(Stored::Yes)))),
            // Another request's load of the same key, joined: its response answers this
            // request only if this request selects it too.
            Origin::Loader if selects(&value, request) => Step::Cached(value, Outcome::Collapsed),
            Origin::Loader => other_variant(&value),
            // Redis's stale copy of the request's own entry, inside its
            // `stale-while-revalidate` window: answered now, refreshed in the background.
            Origin::Stale
                if !ran
                    && !value.meta().no_cache
                    && selects(&value, request)
                    && in_revalidate_window(&value) =>
            {
                Step::StaleWhileRevalidate(value)
            }
            Origin::Stale => Step::Done(stale_answer(ctx, &value, passed)),
            // The local store or Redis.
            _ if selects(&value, request) => Step::Cached(value, Outcome::Hit),
            _ => other_variant(&value),
        },
        // Nobody waits for a handler past the hard timeout: 504, as a gateway would.
        Err(NotStored::TimedOut) => {
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            Step::Done(Ok(ctx.pass(res, "timeout")))
        }
        Err(NotStored::Passed) => Step::Done(match passed {
            Some(Ok((res, why))) => Ok(stamp_response(res, ctx.stamp, miss(Stored::No(why)))),
            Some(Err(e)) => Err(e),
            None => Ok(lost(ctx)),
        }),
    }
}

/// The answer when the handler failed and the cache kept an expired entry.
fn stale_answer<B: Body, E>(
    ctx: &Ctx<'_>,
    value: &CachedResponse,
    passed: Option<Passed<B, E>>,
) -> Answer<B, E> {
    // `must-revalidate` and its kin (and `no-cache`) are never served stale, not even when
    // the handler fails (the cache stores such entries without grace, but one may still be
    // read from an older write); nor is another request's variant, nor an entry kept for
    // its `stale-while-revalidate` window past the grace a failure allows.
    let ours = selects(value, ctx.request);
    let forbidden = !ours || !may_stand_in(value, ctx.options.stale_for);
    let why = match (ours, value.meta().must_revalidate) {
        (false, _) => "vary",
        (true, true) => "must-revalidate",
        (true, false) => "stale",
    };
    match passed {
        // The handler answered with something not storable but not a failure: that answer
        // wins over the stale entry.
        Some(Ok((res, why))) if !failed(res.status()) => Ok(ctx.pass(res, why)),
        Some(Ok((res, _))) if forbidden => Ok(ctx.pass(res, why)),
        Some(Err(e)) if forbidden => Err(e),
        Some(Ok((res, _))) => Ok(ctx.answer(
            value,
            Outcome::Stale {
                status: Some(res.status()),
            },
        )),
        // The hard timeout, with nothing to stand in (or only another request's variant).
        None if forbidden => {
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            Ok(ctx.pass(res, "timeout"))
        }
        _ => Ok(ctx.answer(value, Outcome::Stale { status: None })),
    }
}

/// The answer when the inner response was lost: unreachable, as the loader fills its slot
/// before every `Err` and a step that is not `Done` leaves the request where it was.
fn lost<B: Body>(ctx: &Ctx<'_>) -> Response<ResponseBody<B>> {
    tracing::error!("cache layer lost the inner response; answering 502");
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    ctx.pass(res, "lost")
}

/// The loader's future, boxed: it only exists on a miss.
type LoadFuture<'a> = Pin<Box<dyn Future<Output = Result<CachedResponse, NotStored>> + Send + 'a>>;

/// Why a load stored nothing.
#[derive(Debug)]
enum NotStored {
    /// The handler's answer (or error) is in the loader's slot, to be passed on.
    Passed,
    /// The handler did not answer within the layer's hard timeout.
    TimedOut,
}

impl From<LoadTimeout> for NotStored {
    fn from(_: LoadTimeout) -> Self {
        NotStored::TimedOut
    }
}

//! The miss path of the cache layer: [`Run`] loads the response through the [`Cache`] (one
//! load per key, the stale entry on failure), and the handler's response is read (see
//! `capture`) and stored. A request's honoured `no-cache` goes through `refresh` first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::LoadTimeout;

use super::background::refresh_stale;
use super::capture::{capture, failed};
use super::layer::Config;
use super::revalidate::{add_validators, freshen, has_validators};
use super::rules::{lifetime_of, mark_nested, respond, stamp_response, unstamped, Stamp};
use super::stale::{in_revalidate_window, may_stand_in};
use crate::layer::body::ResponseBody;
use crate::layer::cache_status::{Outcome, Stored};
use crate::layer::cached_response::CachedResponse;
use crate::layer::conditional::Conditions;
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
}

/// The result of the inner service, when it is not stored: the response with why it was
/// not, or the inner service's error.
type Passed<B, E> = Result<(Response<ResponseBody<B>>, &'static str), E>;

impl Run {
    /// The cached path. Kept small on a hit (its future is boxed per request): the refresh
    /// path and the loader, which hold the inner service's future and the body reader, are
    /// boxed on their own, only when they run.
    pub(super) async fn run<S, ReqBody, ResBody>(
        self,
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
        let Run {
            cache,
            config,
            key,
            options,
            head,
            stamp,
            conditions,
        } = self;
        let options = options.as_ref().unwrap_or(&config.options);
        let conditions = conditions.as_ref();
        let answer =
            |value: &CachedResponse, outcome| respond(value, head, stamp, outcome, conditions);
        // With `max_entries`, the key is recorded once whatever may store it has run (see
        // `registry`).
        let recording = config
            .entries
            .as_ref()
            .map(|entries| entries.recording(&key));

        let mut passed: Option<Passed<ResBody, S::Error>> = None;
        let mut ran = false;
        let mut revalidated = false;
        // A stale entry is revalidated with its validators, unless the client sent
        // preconditions of its own: those reach the handler as they are.
        let may_revalidate = !head && conditions.is_none();
        // The inner service and the request, for the loader; or, when the stale entry from
        // Redis answers at once (`stale-while-revalidate`), for the background refresh.
        let mut pending = Some((inner, req));
        let refresh_key = key.clone();
        let (passed_slot, ran_flag, revalidated_flag, config_ref, pending_slot) = (
            &mut passed,
            &mut ran,
            &mut revalidated,
            &*config,
            &mut pending,
        );
        let fetched = cache
            .fetch_with_lifetime(
                key,
                options,
                move |stale: Option<&CachedResponse>| -> LoadFuture<'_> {
                    let stale = stale
                        .filter(|s| may_revalidate && has_validators(s))
                        .cloned();
                    let Some((mut inner, req)) = pending_slot.take() else {
                        // Unreachable: the loader runs once. Answered as a lost response.
                        return Box::pin(async { Err(NotStored::Passed) });
                    };
                    Box::pin(async move {
                        *ran_flag = true;
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
                        if let Some(stale) =
                            stale.filter(|_| res.status() == StatusCode::NOT_MODIFIED)
                        {
                            return match freshen(&stale, res.headers(), config_ref, requested) {
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
                        if head {
                            // A HEAD response has no body to store; GET will fill the entry.
                            *passed_slot = Some(Ok((res.map(ResponseBody::inner), "head")));
                            return Err(NotStored::Passed);
                        }
                        match capture(res, config_ref, requested).await {
                            Ok(stored) => Ok(stored),
                            Err(passed) => {
                                *passed_slot = Some(Ok(passed));
                                Err(NotStored::Passed)
                            }
                        }
                    })
                },
                |stored: &CachedResponse| lifetime_of(stored, options.stale_for),
            )
            .await;

        // A value from the loader, Redis or another request's load is in the local store
        // now; a stale one was there already, and a failed load stored nothing.
        let stored = matches!(&fetched, Ok(f) if !matches!(f.origin, Origin::Stale));
        if !stored {
            if let Some(recording) = recording {
                recording.skip();
            }
        }
        let passed_on = |res, why| stamp_response(res, stamp, Outcome::Miss(Stored::No(why)));
        match fetched {
            Ok(Fetched { value, origin }) => Ok(match origin {
                // Our loader ran: the handler's 304 freshened the stale entry...
                Origin::Loader if revalidated => answer(&value, Outcome::Revalidated),
                // ...or its response was stored.
                Origin::Loader if ran => answer(&value, Outcome::Miss(Stored::Yes)),
                // Another request's load of the same key, joined.
                Origin::Loader => answer(&value, Outcome::Collapsed),
                // Redis's stale copy, inside its `stale-while-revalidate` window: answered
                // now, refreshed in the background.
                Origin::Stale if !ran && in_revalidate_window(&value) => {
                    if let Some((inner, req)) = pending.take() {
                        let (parts, body) = req.into_parts();
                        let stale = value.clone();
                        refresh_stale(
                            &cache,
                            &config,
                            refresh_key,
                            options,
                            inner,
                            parts,
                            body,
                            stale,
                        );
                    }
                    answer(&value, Outcome::StaleWhileRevalidate)
                }
                Origin::Stale => match passed {
                    // The handler answered with something not storable but not a failure:
                    // that answer wins over the stale entry.
                    Some(Ok((res, why))) if !failed(res.status()) => passed_on(res, why),
                    // `must-revalidate` and its kin: never served stale, not even when the
                    // handler fails (the cache stores such entries without grace, but one
                    // may still be read from an older write). Nor an entry kept for its
                    // `stale-while-revalidate` window past the grace a failure allows.
                    Some(Ok((res, _))) if !may_stand_in(&value, options.stale_for) => {
                        let why = match value.meta().must_revalidate {
                            true => "must-revalidate",
                            false => "stale",
                        };
                        passed_on(res, why)
                    }
                    Some(Err(e)) if !may_stand_in(&value, options.stale_for) => return Err(e),
                    // A timeout with nothing to stand in: as a gateway would.
                    None if !may_stand_in(&value, options.stale_for) => {
                        let mut res = Response::new(ResponseBody::empty());
                        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                        passed_on(res, "timeout")
                    }
                    Some(Ok((res, _))) => answer(
                        &value,
                        Outcome::Stale {
                            status: Some(res.status()),
                        },
                    ),
                    _ => answer(&value, Outcome::Stale { status: None }),
                },
                // The local store or Redis.
                _ => answer(&value, Outcome::Hit),
            }),
            // Nobody waits for a handler past the hard timeout: 504, as a gateway would.
            Err(NotStored::TimedOut) => {
                let mut res = Response::new(ResponseBody::empty());
                *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                Ok(passed_on(res, "timeout"))
            }
            Err(NotStored::Passed) => match passed {
                Some(Ok((res, why))) => Ok(passed_on(res, why)),
                Some(Err(e)) => Err(e),
                None => {
                    // Unreachable: the loader fills the slot before every `Err`.
                    tracing::error!("cache layer lost the inner response; answering 502");
                    let mut res = Response::new(ResponseBody::empty());
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    Ok(passed_on(res, "lost"))
                }
            },
        }
    }
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

//! Where a handler's response that may be stored goes when the handler answers first:
//! [`answer_directly`], the one path of the requests whose handler answers before any use of the entry (a request's
//! honoured `no-cache`, led by `refresh`; a stored `no-cache` response to revalidate),
//! whose storable answer is written over the entry.

use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::capture::{capture, Level, VARY_CHANGED};
use super::config::Config;
use super::revalidate::{add_validators, freshen};
use super::rules::{has_validators, lifetime_of, mark_nested, unstamped};
use crate::layer::body::ResponseBody;
use crate::layer::cached_response::CachedResponse;
use crate::model::Lifetime;
use crate::{Cache, EntryOptions, Invalidation, Key};

/// The options of a `set` for a response with a lifetime of its own: the TTL it gives,
/// without jitter, and no grace if it must be revalidated.
pub(super) fn with_lifetime(options: &EntryOptions, lifetime: Lifetime) -> EntryOptions {
    let mut options = options.clone();
    if let Some(ttl) = lifetime.ttl {
        options = options.ttl(ttl).ttl_jitter(Duration::ZERO);
    }
    if let Some(grace) = lifetime.grace {
        options = options.stale_for(grace);
    }
    options
}

/// How a request that went straight to the handler was answered.
pub(super) enum Direct<B: Body> {
    /// The handler's response, stored under the key.
    Stored(CachedResponse),
    /// The handler's `304` to the stored response's validators: the stored response,
    /// freshened with the 304's fields (not written back: the entry keeps its lifetime and
    /// is revalidated again on its next use).
    Validated(CachedResponse),
    /// The handler's response, passed on unstored, with why.
    Passed(Response<ResponseBody<B>>, &'static str),
}

/// Where a request that goes straight to the handler stores its answer.
pub(super) struct Target<'a> {
    pub(super) cache: &'a Cache,
    pub(super) config: &'a Config,
    pub(super) key: Key,
    pub(super) options: &'a EntryOptions,
    pub(super) level: Level<'a>,
    /// The request's own key when `key` is a variant's: removed when the variant's
    /// response varies on other fields.
    pub(super) base: Option<&'a Key>,
    pub(super) head: bool,
}

/// The handler answers, and what it says replaces the entry when it may be stored. With
/// `validate`, a stored response the request may not be answered with before the handler
/// confirms it (`no-cache`): the request is made conditional on its validators unless it
/// has preconditions of its own, and a `304` answers with it.
pub(super) async fn answer_directly<S, ReqBody, ResBody>(
    target: Target<'_>,
    mut inner: S,
    mut req: Request<ReqBody>,
    validate: Option<&CachedResponse>,
) -> Result<Direct<ResBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let Target {
        cache,
        config,
        key,
        options,
        level,
        base,
        head,
    } = target;
    let request = req.headers().clone();
    let validate = validate.filter(|stored| {
        has_validators(stored) && !crate::layer::conditional::Conditions::present(&request)
    });
    if let Some(stored) = validate {
        add_validators(stored, req.headers_mut());
    }
    let requested = SystemTime::now();
    let res = inner.call(mark_nested(req)).await?;
    if let Some(stored) = validate.filter(|_| res.status() == StatusCode::NOT_MODIFIED) {
        return Ok(match freshen(stored, res.headers(), config, requested) {
            Ok(fresh) => Direct::Validated(fresh),
            Err((merged, why)) => Direct::Passed(unstamped(&merged, head), why),
        });
    }
    if head {
        // A HEAD response has no body to store.
        return Ok(Direct::Passed(res.map(ResponseBody::inner), "head"));
    }
    let stored = match capture(res, config, requested, level, &request).await {
        Ok(stored) => stored,
        Err((res, why)) => {
            if why == VARY_CHANGED {
                if let Some(base) = base {
                    forget(cache, base).await;
                }
            }
            return Ok(Direct::Passed(res, why));
        }
    };
    let options = match lifetime_of(&stored, options.stale_for) {
        None => options.clone(),
        Some(lifetime) => with_lifetime(options, lifetime),
    };
    cache.set(key, stored.clone(), &options).await;
    Ok(Direct::Stored(stored))
}

/// Removes a request's entry whose variants vary on other fields now: the next request
/// stores the new response there and learns the new fields. Waits for Redis no longer
/// than one command deadline.
pub(super) async fn forget(cache: &Cache, base: &Key) {
    cache
        .invalidate_promptly(&Invalidation::new().key(base.clone()))
        .await;
}

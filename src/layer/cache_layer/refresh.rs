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
//! - the slots live in a small moka cache with an expiry, bounded in entries: the limiter
//!   cannot itself be made to grow. A slot evicted early only allows one more refresh.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Request, Response};
use http_body::Body;
use moka::ops::compute::Op;
use moka::sync::Cache as Moka;
use moka::Expiry;
use tokio::sync::OnceCell;
use tower_service::Service;

use super::layer::Config;
use super::load::capture;
use super::rules::{lifetime_of, mark_nested, respond, stamp_response, Stamp};
use crate::layer::body::ResponseBody;
use crate::layer::cache_status::{Outcome, Stored};
use crate::layer::cached_response::CachedResponse;
use crate::layer::conditional::Conditions;
use crate::model::Lifetime;
use crate::{Cache, EntryOptions, Key};

/// The default interval between two refreshes of one key by `no-cache` requests.
pub const DEFAULT_REQUEST_NO_CACHE_INTERVAL: Duration = Duration::from_secs(1);

/// How many keys the limiter remembers at most (a slot is a few dozen bytes).
const REMEMBERED_KEYS: u64 = 10_000;

/// How long a slot whose refresh has not finished is kept: past it, a handler that still has
/// not answered no longer holds back the refreshes of its key.
const PENDING_FOR: Duration = Duration::from_secs(60);

/// One key's refresh: set once it is done, with the response it stored, if any.
#[derive(Default)]
pub(super) struct Slot {
    done: OnceCell<Option<CachedResponse>>,
}

/// What a request's `no-cache` leads to.
pub(super) enum Refresh {
    /// The request did not ask (or the layer does not honour it).
    No,
    /// The key was refreshed less than the interval ago: answered as any request.
    Limited,
    /// Leads or joins the key's refresh.
    Join(Arc<Slot>),
}

/// The refreshes of one layer: a slot per key refreshed lately.
pub(crate) struct Refreshes {
    slots: Moka<Key, Arc<Slot>, foldhash::fast::RandomState>,
}

struct SlotExpiry {
    interval: Duration,
}

impl SlotExpiry {
    fn life(&self, slot: &Slot) -> Duration {
        if slot.done.initialized() {
            self.interval
        } else {
            PENDING_FOR.max(self.interval)
        }
    }
}

impl Expiry<Key, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &Key, slot: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(self.life(slot))
    }

    fn expire_after_update(
        &self,
        _: &Key,
        slot: &Arc<Slot>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.life(slot))
    }
}

impl Refreshes {
    pub(super) fn new(interval: Duration) -> Self {
        Refreshes {
            slots: Moka::builder()
                .max_capacity(REMEMBERED_KEYS)
                .expire_after(SlotExpiry { interval })
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// What a `no-cache` request of `key` does: join the key's refresh, or none if one
    /// finished less than the interval ago.
    pub(super) fn admit(&self, key: &Key) -> Refresh {
        let slot = self
            .slots
            .get_with_by_ref(key, || Arc::new(Slot::default()));
        if slot.done.initialized() {
            tracing::trace!(%key, "request no-cache inside the refresh interval; not refreshing");
            Refresh::Limited
        } else {
            Refresh::Join(slot)
        }
    }

    /// The refresh in `slot` is done: the interval starts now. Written again only if it is
    /// still the key's slot, so that a newer one (after this one was evicted) is kept.
    fn finished(&self, key: &Key, slot: &Arc<Slot>) {
        self.slots
            .entry_by_ref(key)
            .and_compute_with(|current| match current {
                Some(entry) if Arc::ptr_eq(entry.value(), slot) => Op::Put(Arc::clone(slot)),
                _ => Op::Nop,
            });
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
}

/// What the request answers from its refresh: `Ok` the answer and whether the refresh
/// stored a response, or `Err` the inner service and the request back when the refresh it
/// joined stored nothing (it goes on as a request without `no-cache`, to be coalesced with
/// the others).
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
    type Passed<B, E> = Result<(Response<ResponseBody<B>>, &'static str), E>;
    let mut parts = Some((inner, req));
    let mut passed: Option<Passed<ResBody, S::Error>> = None;
    let (parts_slot, passed_slot) = (&mut parts, &mut passed);
    // If the leader's request is dropped mid-way, a waiting one runs its own refresh.
    let stored = slot
        .done
        .get_or_init(|| async move {
            let (inner, req) = parts_slot.take()?;
            match refresh_entry(&r, inner, req).await {
                Ok(Ok(stored)) => Some(stored),
                Ok(Err(not_stored)) => {
                    *passed_slot = Some(Ok(not_stored));
                    None
                }
                Err(error) => {
                    *passed_slot = Some(Err(error));
                    None
                }
            }
        })
        .await
        .clone();
    let answer = |stored: &CachedResponse, outcome| {
        respond(stored, r.head, r.stamp, outcome, r.conditions)
    };
    let Some(parts) = parts else {
        // This request ran the refresh.
        if let Some(refreshes) = &r.config.refreshes {
            refreshes.finished(r.key, &slot);
        }
        let was_stored = stored.is_some();
        let answered = match (stored, passed) {
            (Some(stored), _) => Ok(answer(&stored, Outcome::Refresh(Stored::Yes))),
            (None, Some(Ok((res, why)))) => Ok(stamp_response(
                res,
                r.stamp,
                Outcome::Refresh(Stored::No(why)),
            )),
            (None, Some(Err(error))) => Err(error),
            (None, None) => {
                // Unreachable: the refresh fills the slot whenever it stores nothing.
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
        return Ok((answered, was_stored));
    };
    match stored {
        Some(stored) => Ok((Ok(answer(&stored, Outcome::RefreshCollapsed)), true)),
        None => Err(parts),
    }
}

/// The handler answers, and what it says replaces the entry when it may be stored.
/// `Ok(Ok(_))`: the stored response; `Ok(Err(_))`: the response passed on, with why it was
/// not stored.
async fn refresh_entry<S, ReqBody, ResBody>(
    r: &Refreshing<'_>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Result<CachedResponse, (Response<ResponseBody<ResBody>>, &'static str)>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let requested = SystemTime::now();
    let res = inner.call(mark_nested(req)).await?;
    if r.head {
        // A HEAD response has no body to store.
        return Ok(Err((res.map(ResponseBody::inner), "head")));
    }
    let stored = match capture(res, r.config, requested).await {
        Ok(stored) => stored,
        Err(passed) => return Ok(Err(passed)),
    };
    let options = match lifetime_of(&stored) {
        None => r.options.clone(),
        Some(lifetime) => with_lifetime(r.options, lifetime),
    };
    r.cache.set(r.key.clone(), stored.clone(), &options).await;
    Ok(Ok(stored))
}

/// The options of a `set` for a response with a lifetime of its own: the TTL it gives,
/// without jitter, and no grace if it must be revalidated.
fn with_lifetime(options: &EntryOptions, lifetime: Lifetime) -> EntryOptions {
    let mut options = options.clone();
    if let Some(ttl) = lifetime.ttl {
        options = options.ttl(ttl).ttl_jitter(Duration::ZERO);
    }
    if let Some(grace) = lifetime.grace {
        options = options.stale_for(grace);
    }
    options
}

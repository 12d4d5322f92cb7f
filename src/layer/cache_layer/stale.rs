//! The stale windows of a stored response: the grace it declares for itself
//! (`stale-while-revalidate`, `stale-if-error`, RFC 5861), whether it is inside its
//! `stale-while-revalidate` window, and whether it may stand in for a failing handler.

use std::time::Duration;

use http::StatusCode;

use crate::layer::cached_response::CachedResponse;
use crate::model::{StaleNow, ValueGrace};
use crate::EntryOptions;

/// The options with the readers of a stored response's own windows: an instance that reads
/// it from Redis keeps it as long as the one that stored it, and answers it at once inside
/// its `stale-while-revalidate` window.
pub(super) fn with_value_grace(mut options: EntryOptions) -> EntryOptions {
    options.value_grace = Some(ValueGrace(declared_grace));
    options.stale_now = Some(StaleNow(answers_now));
    options.revalidate_only = Some(StaleNow(kept_to_revalidate));
    options
}

/// Whether an expired stored response is kept only to be revalidated (see
/// `EntryOptions::revalidate_only`): one that must be revalidated, which RFC 9111 §4.2.4
/// forbids serving stale, so a soft or hard timeout does not answer with it either.
fn kept_to_revalidate(value: &dyn std::any::Any) -> bool {
    value
        .downcast_ref::<CachedResponse>()
        .is_some_and(|stored| stored.meta().must_revalidate)
}

/// [`in_revalidate_window`] for a value of any type (see `EntryOptions::stale_now`).
fn answers_now(value: &dyn std::any::Any) -> bool {
    value
        .downcast_ref::<CachedResponse>()
        .is_some_and(in_revalidate_window)
}

/// The grace a stored response declares for itself: the larger of its
/// `stale-while-revalidate` and `stale-if-error` windows (see `EntryOptions::value_grace`).
pub(super) fn declared_grace(value: &dyn std::any::Any) -> Option<Duration> {
    let meta = value.downcast_ref::<CachedResponse>()?.meta();
    if meta.must_revalidate {
        return None;
    }
    meta.stale_while_revalidate.max(meta.stale_if_error)
}

/// Whether a stored response is inside its `stale-while-revalidate` window: stale, for no
/// longer than the window.
pub(super) fn in_revalidate_window(stored: &CachedResponse) -> bool {
    let meta = stored.meta();
    match (meta.stale_while_revalidate, stored.staleness()) {
        (Some(window), Some(stale)) => !meta.must_revalidate && stale <= window,
        _ => false,
    }
}

/// Whether the handler's answer is a failure the stale response may stand in for: a 5xx
/// (`504` included), or the `408` tower-http's `TimeoutLayer` answers by default when the
/// handler is too slow.
pub(super) fn failed(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT
}

/// Whether a stale stored response may answer for a failing handler: never when it must be
/// revalidated; otherwise inside the layer's grace ([`stale_for`](super::CacheLayer::stale_for))
/// or its own `stale-if-error` window. The entry may be kept longer than both, for its
/// `stale-while-revalidate` window, which is no licence to hide an error.
///
/// Nor is a stored failure (a `5xx` the origin gave a lifetime): fresh, it answers as a hit,
/// the origin's own choice; stale, it is no better an answer than the handler's failure of
/// now, which is passed on instead.
pub(super) fn may_stand_in(stored: &CachedResponse, grace: Option<Duration>) -> bool {
    let meta = stored.meta();
    if meta.must_revalidate || failed(stored.status()) {
        return false;
    }
    match stored.staleness() {
        // Fresh, or of unknown lifetime: the cache kept it for the layer's grace.
        None => true,
        Some(stale) => {
            stale
                <= grace
                    .unwrap_or_default()
                    .max(meta.stale_if_error.unwrap_or_default())
        }
    }
}

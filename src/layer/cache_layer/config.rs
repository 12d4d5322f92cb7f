//! What a [`CacheLayer`](super::CacheLayer) was configured with, shared by every service
//! it builds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};

use super::limiter::Refreshes;
use super::registry::Registry;
use crate::layer::query_filter::QueryFilter;
use crate::layer::RequestInfo;
use crate::{EntryOptions, Key, KeyTemplate};

pub(super) type KeyFn = Arc<dyn Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync>;
pub(super) type TagsFn = Arc<dyn Fn(&RequestInfo<'_>) -> Vec<Key> + Send + Sync>;
pub(super) type PrincipalFn = Arc<dyn Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync>;

/// What a [`CacheLayer`] was configured with, shared by every service it builds.
#[derive(Clone)]
pub(super) struct Config {
    pub(super) options: EntryOptions,
    pub(super) statuses: Vec<StatusCode>,
    pub(super) max_body: usize,
    pub(super) vary: Vec<HeaderName>,
    pub(super) key_fn: Option<KeyFn>,
    pub(super) tag_templates: Vec<KeyTemplate>,
    pub(super) tags_fn: Option<TagsFn>,
    pub(super) principal_fn: Option<PrincipalFn>,
    pub(super) shared_with_credentials: bool,
    pub(super) credential_headers: Vec<HeaderName>,
    pub(super) key_host: bool,
    pub(super) tag_path: bool,
    pub(super) min_ttl: Option<Duration>,
    pub(super) max_ttl: Option<Duration>,
    pub(super) x_cache: bool,
    /// Whether a request's `no-cache` makes the handler answer (and refresh the entry).
    pub(super) honor_request_no_cache: bool,
    /// The least time between two refreshes of one key by `no-cache` requests.
    pub(super) refresh_interval: Duration,
    /// Which query parameters are part of the key.
    pub(super) query: QueryFilter,
    /// The most entries this layer keeps in the local store.
    pub(super) max_entries: Option<u64>,
    /// Built by `layer`: the refreshes of `no-cache` requests, when honoured.
    pub(super) refreshes: Option<Arc<Refreshes>>,
    /// Built by `layer`: the keys stored, with `max_entries`.
    pub(super) entries: Option<Arc<Registry>>,
    /// The `stale-while-revalidate` window of responses that do not give one.
    pub(super) stale_while_revalidate: Option<Duration>,
    /// Whether a successful unsafe request invalidates what is stored for its URIs.
    pub(super) invalidate_on_unsafe: bool,
    /// Whether a stored response without an `ETag` gets one made from its body.
    pub(super) etag: bool,
    /// The most the `Last-Modified` heuristic makes a response fresh for (see
    /// `CacheLayer::heuristic_max`).
    pub(super) heuristic_max: Option<Duration>,
}

impl Config {
    /// Whether the functions need the path parameters (their extraction allocates).
    pub(super) fn needs_params(&self) -> bool {
        self.key_fn.is_some() || !self.tag_templates.is_empty() || self.tags_fn.is_some()
    }

    pub(super) fn has_dynamic_tags(&self) -> bool {
        self.tag_path || !self.tag_templates.is_empty() || self.tags_fn.is_some()
    }

    /// The ceiling of the `Last-Modified` heuristic: [`heuristic_max`](Self::heuristic_max)
    /// when set, else the layer's TTL when set (the operator's word on responses that say
    /// nothing of their freshness), else a day.
    pub(super) fn heuristic_cap(&self) -> Duration {
        const DAY: Duration = Duration::from_secs(86_400);
        self.heuristic_max.or(self.options.ttl).unwrap_or(DAY)
    }

    /// A response's own freshness within the floor and ceiling set on the layer.
    pub(super) fn clamp_ttl(&self, ttl: Duration) -> Duration {
        let ttl = self.min_ttl.map_or(ttl, |floor| ttl.max(floor));
        self.max_ttl.map_or(ttl, |ceiling| ttl.min(ceiling))
    }
}

impl Config {
    pub(super) fn fmt_fields(&self, d: &mut fmt::DebugStruct<'_, '_>) -> fmt::Result {
        d.field("options", &self.options)
            .field("statuses", &self.statuses)
            .field("max_body_size", &self.max_body)
            .field("vary", &self.vary)
            .field("key_fn", &self.key_fn.is_some())
            .field("tag_templates", &self.tag_templates)
            .field("tags_fn", &self.tags_fn.is_some())
            .field("principal", &self.principal_fn.is_some())
            .field("shared_with_credentials", &self.shared_with_credentials)
            .field("credential_headers", &self.credential_headers)
            .field("key_host", &self.key_host)
            .field("tag_path", &self.tag_path)
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .field("x_cache", &self.x_cache)
            .field("honor_request_no_cache", &self.honor_request_no_cache)
            .field("request_no_cache_interval", &self.refresh_interval)
            .field("query", &self.query)
            .field("max_entries", &self.max_entries)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("invalidate_on_unsafe", &self.invalidate_on_unsafe)
            .field("etag", &self.etag)
            .field("heuristic_max", &self.heuristic_max);
        d.finish()
    }
}

//! Revalidation of a stale stored response with the handler (RFC 9111 §4.3): the request
//! goes on with the stored validators (`If-None-Match` from its `ETag`, `If-Modified-Since`
//! from its `Last-Modified`); a `304 Not Modified` freshens the stored response — its body
//! kept, its header fields updated from the 304's — instead of sending the body again.

use std::time::SystemTime;

use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::HeaderMap;

use super::config::Config;
use super::rules::{has_own_validators, meta_of};
use crate::layer::cache_control::{directives_forbid_storing, response_directives};
use crate::layer::cached_response::{CachedResponse, Meta};

/// Makes the request conditional on the stored response's validators.
pub(super) fn add_validators(stored: &CachedResponse, headers: &mut HeaderMap) {
    if let Some(etag) = stored
        .header(&ETAG)
        .filter(|_| !stored.meta().etag_generated)
    {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.header(&LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, modified.clone());
    }
}

/// The stored response freshened by the handler's 304: each field the 304 carries
/// replaces the stored field of that name (RFC 9111 §3.2; `Content-Length` and the fields
/// never stored are left out as when storing). `Err` when the updated response may not be
/// stored (the 304 said `no-store`, or gave no freshness left): it is still the answer,
/// with why it is not stored.
pub(super) fn freshen(
    stale: &CachedResponse,
    not_modified: &HeaderMap,
    config: &Config,
    requested: SystemTime,
) -> Result<CachedResponse, (CachedResponse, &'static str)> {
    let mut merged = HeaderMap::new();
    stale.write_headers(&mut merged);
    for name in not_modified.keys() {
        merged.remove(name);
    }
    for (name, value) in not_modified {
        merged.append(name.clone(), value.clone());
    }
    let directives = response_directives(&merged);
    let meta = match directives_forbid_storing(&directives, has_own_validators(&merged)) {
        Some(why) => Err(why),
        None => meta_of(&merged, &directives, config, requested),
    };
    match meta {
        Ok(mut meta) => {
            meta.etag_generated = stale.meta().etag_generated;
            let fresh = CachedResponse::new(stale.status(), &merged, stale.body().clone(), meta);
            // Still the variant it was: the request it answers was checked against it.
            Ok(match stale.variant() {
                Some(v) => fresh.with_variant(v.fields.clone(), v.selector.clone()),
                None => fresh,
            })
        }
        Err(why) => Err((
            CachedResponse::new(
                stale.status(),
                &merged,
                stale.body().clone(),
                Meta::default(),
            ),
            why,
        )),
    }
}

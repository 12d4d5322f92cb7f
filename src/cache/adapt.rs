//! Adaptive caching from inside a loader whose return type stays `T`.
//!
//! A load run by the cache runs inside a task-local scope; these functions record what the
//! loader says about its value, and the cache applies it when it stores the value. Outside
//! a load (a direct call, a task the loader spawned) there is no scope and they do nothing
//! but say so.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stormcache::Error> {
//! use std::time::Duration;
//! use stormcache::{adapt, Cache, EntryOptions, Key};
//!
//! let cache = Cache::builder("docs").build()?;
//! let opts = EntryOptions::new().ttl(Duration::from_secs(600));
//! let found: Option<String> = cache
//!     .get_or_load(Key::literal("user:7")?, &opts, || async {
//!         let row: Option<String> = None; // the database had nothing
//!         if row.is_none() {
//!             // Keep "not found" for a minute only.
//!             adapt::ttl(Duration::from_secs(60));
//!         }
//!         row
//!     })
//!     .await;
//! assert_eq!(found, None);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use crate::core::{Core, Epoch, Shape, Snapshot};
use crate::key::Key;
use crate::model::{Adjust, EntryOptions, Lifetime};
use crate::store::LocalKey;

tokio::task_local! {
    static LOADING: RefCell<Adjust>;
}

/// Runs a loader's future in a scope the functions below record into; returns its output
/// and what it recorded.
pub(super) async fn scoped<F: Future>(fut: F) -> (F::Output, Adjust) {
    LOADING
        .scope(RefCell::new(Adjust::default()), async {
            let output = fut.await;
            let adjust = LOADING.with(|cell| cell.take());
            (output, adjust)
        })
        .await
}

/// Records `adjust` in the current load's scope; false outside one.
pub(super) fn record(adjust: Adjust) -> bool {
    LOADING
        .try_with(|cell| cell.borrow_mut().merge(adjust))
        .is_ok()
}

/// The lifetime the loaded value's own metadata gives it (an HTTP response's freshness).
pub(super) fn record_lifetime(lifetime: Lifetime) {
    record(Adjust {
        lifetime: Some(lifetime),
        ..Adjust::default()
    });
}

/// The value being loaded is cached for `ttl` instead of its options' TTL. Returns whether
/// a load of the cache is running here (otherwise it does nothing).
pub fn ttl(ttl: Duration) -> bool {
    record(Adjust {
        ttl: Some(ttl),
        ..Adjust::default()
    })
}

/// The value being loaded is also tagged `tag`. Returns whether a load of the cache is
/// running here (otherwise it does nothing).
pub fn tag(tag: Key) -> bool {
    record(Adjust {
        tags: vec![tag],
        ..Adjust::default()
    })
}

/// The value being loaded is returned to its callers but not cached. Returns whether a load
/// of the cache is running here (otherwise it does nothing).
pub fn no_store() -> bool {
    record(Adjust {
        no_store: true,
        ..Adjust::default()
    })
}

/// How a loaded value is stored once its loader has had its say.
pub(super) struct Plan<'a> {
    pub(super) shape: Shape,
    /// The load's epoch, widened to the tags the loader added.
    pub(super) epoch: Epoch,
    /// The options' tags, then the loader's.
    pub(super) tags: Cow<'a, [Key]>,
    /// How many of `tags` the loader added (their generations were not read).
    pub(super) added: usize,
}

/// The plan for storing what a load of `local_key` produced, given what its loader said
/// (`adjust`) and the flights as they were before it ran; `None` if it must not be stored.
pub(super) fn plan<'a>(
    core: &Core,
    local_key: &LocalKey,
    options: &'a EntryOptions,
    shape: Shape,
    epoch: Epoch,
    before: &Snapshot,
    adjust: Adjust,
) -> Option<Plan<'a>> {
    if adjust.no_store {
        tracing::debug!(key = %local_key.key, "the loader asked for its value not to be cached");
        return None;
    }
    let shape = match adjust.ttl {
        Some(ttl) => core.shape_with_ttl(local_key.class, options, ttl),
        None => shape,
    };
    let shape = match adjust.lifetime {
        Some(lifetime) => shape.with_lifetime(lifetime),
        None => shape,
    };
    let mut added = adjust.tags;
    added.retain(|tag| !options.tags.contains(tag));
    added.dedup();
    if added.is_empty() {
        return Some(Plan {
            shape,
            epoch,
            tags: Cow::Borrowed(&options.tags),
            added: 0,
        });
    }
    Some(Plan {
        shape,
        epoch: core.flights().widen(epoch, before, &added),
        added: added.len(),
        tags: Cow::Owned(options.tags.iter().cloned().chain(added).collect()),
    })
}

//! [`max_entries`](super::CacheLayer::max_entries): the keys one layer stored in the local
//! store, at most `n` of them.
//!
//! A small moka cache of the keys (LRU, bounded in entries) whose eviction listener removes
//! the evicted key's entry from the local store. A key is recorded *after* whatever may
//! have put its entry in the local store (a load, a Redis hit, a refresh): if the registry
//! evicts the key while the entry is being stored, the entry is stored before the key is
//! recorded again, so the next eviction of the key reaches it. The reverse order would let
//! an entry stored just after its key's eviction stay in the local store unrecorded, out of
//! the cap's reach until its TTL. A request dropped mid-way records its key all the same
//! (the store may have happened): a key recorded for nothing only makes the cap count one
//! entry that is not there.

use std::sync::Arc;

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache as Moka;

use crate::{Cache, EntryOptions, Key};

/// The keys a layer stored, bounded.
pub(crate) struct Registry {
    keys: Moka<Key, (), foldhash::fast::RandomState>,
}

impl Registry {
    /// A registry of at most `max` keys, whose evictions remove the entries of `options`'
    /// class from `cache`'s local store.
    pub(super) fn new(max: u64, cache: Cache, options: EntryOptions) -> Self {
        let keys = Moka::builder()
            .max_capacity(max)
            // The least recently stored or used key goes, as the layer documents; moka's
            // default (TinyLFU) could refuse a new key instead.
            .eviction_policy(EvictionPolicy::lru())
            .eviction_listener(move |key: Arc<Key>, (), cause| {
                // `Replaced` is a key recorded again; only a key pushed out by the bound
                // loses its entry.
                if cause == RemovalCause::Size {
                    tracing::trace!(key = %key, "max_entries: evicting the entry from the local store");
                    cache.forget_local(&key, &options);
                }
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Registry { keys }
    }

    /// Marks `key` as used (a hit), for the LRU order.
    #[inline]
    pub(super) fn touch(&self, key: &Key) {
        let _ = self.keys.get(key);
    }

    /// Records `key`, evicting what is beyond the bound now rather than at moka's next
    /// maintenance, so that the bound holds as each entry is stored.
    fn record(&self, key: Key) {
        self.keys.insert(key, ());
        self.keys.run_pending_tasks();
    }

    /// A guard that records `key` when dropped, unless [`Recording::skip`]ped.
    pub(super) fn recording(&self, key: &Key) -> Recording<'_> {
        Recording {
            registry: self,
            key: Some(key.clone()),
        }
    }
}

/// Records a key when dropped: when the request is answered, or dropped mid-way.
pub(super) struct Recording<'a> {
    registry: &'a Registry,
    key: Option<Key>,
}

impl Recording<'_> {
    /// Nothing was stored: the key is not recorded.
    pub(super) fn skip(mut self) {
        self.key = None;
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.registry.record(key);
        }
    }
}

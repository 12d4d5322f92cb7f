//! Which local entries carry a tag, so that invalidating a tag costs the entries it removes
//! and not a sweep of the whole local store.
//!
//! Each indexed entry is recorded with the id of the insert that made it. A key written
//! again with the same tag is recorded again under its new id, and the removal of the older
//! value (reported later by the store's eviction listener) forgets only a record with the
//! older id: the newer entry stays reachable by its tag. Two writes of one key can land in
//! the other order than they recorded, so each write records again once its value is
//! visible, if the key has no record by then. A record whose entry is gone can linger until
//! the listener reports it, or for good after such a race; invalidating it then removes
//! whatever the key holds, which costs at most one miss.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, PoisonError};

use crate::key::Key;

/// Mutexes, so that invalidations and inserts of different tags seldom wait for each other.
const SHARDS: usize = 16;

type Members<K> = HashMap<K, u64, foldhash::fast::RandomState>;
type Shard<K> = Mutex<HashMap<Key, Records<K>, foldhash::fast::RandomState>>;

/// A tag's records, and the keys that invalidations of it still removing took.
struct Records<K> {
    members: Members<K>,
    /// Kept until each taker has removed its keys: a second invalidation of the tag that
    /// starts meanwhile finds the records gone, and must not return before those keys are
    /// removed, so it removes them too.
    taking: Vec<Arc<[K]>>,
}

impl<K> Default for Records<K> {
    fn default() -> Self {
        Records {
            members: HashMap::default(),
            taking: Vec::new(),
        }
    }
}

impl<K> Records<K> {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.taking.is_empty()
    }
}

/// The keys an invalidation of a tag must remove: those recorded under it, and those that
/// other invalidations of it still in progress took. Until dropped, later invalidations of
/// the tag remove its own keys as well.
pub(crate) struct Taken<'a, K: Hash + Eq + Clone> {
    index: &'a TagIndex<K>,
    tag: Key,
    /// This invalidation's keys (absent when it took none), then the others'.
    mine: Option<Arc<[K]>>,
    others: Vec<Arc<[K]>>,
}

impl<K: Hash + Eq + Clone> Taken<'_, K> {
    /// Every key to remove; a key can appear more than once.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.mine
            .iter()
            .chain(&self.others)
            .flat_map(|list| list.iter())
    }
}

impl<K: Hash + Eq + Clone> Drop for Taken<'_, K> {
    fn drop(&mut self) {
        let Some(mine) = &self.mine else { return };
        let mut shard = self
            .index
            .shard(&self.tag)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(records) = shard.get_mut(&self.tag) {
            records.taking.retain(|list| !Arc::ptr_eq(list, mine));
            if records.is_empty() {
                shard.remove(&self.tag);
            }
        }
    }
}

/// Tag → the keys (`K`) of the entries that carry it, each with its insert's id.
pub(crate) struct TagIndex<K> {
    shards: [Shard<K>; SHARDS],
    hasher: foldhash::fast::RandomState,
}

impl<K> Default for TagIndex<K> {
    fn default() -> Self {
        TagIndex {
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<K: Hash + Eq + Clone> TagIndex<K> {
    fn shard(&self, tag: &Key) -> &Shard<K> {
        let i = self.hasher.hash_one(tag.as_str()) as usize % SHARDS;
        &self.shards[i]
    }

    /// Records that insert `id` gave `key` the `tags`.
    pub(crate) fn add(&self, tags: &[Key], key: &K, id: u64) {
        for tag in tags {
            let mut shard = self
                .shard(tag)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shard
                .entry(tag.clone())
                .or_default()
                .members
                .insert(key.clone(), id);
        }
    }

    /// Records `key` under each of `tags` that has no record of it, as insert `id`: called
    /// once the insert's value is visible. Two writes of one key can race so that the value
    /// moka keeps is the one whose record the removal of the other forgot (`A` records,
    /// `B` records over it, `B` lands, `A` lands over `B`, and the report of `B`'s removal
    /// forgets `B`'s record); recording again after the value is visible closes that gap.
    pub(crate) fn keep(&self, tags: &[Key], key: &K, id: u64) {
        for tag in tags {
            let mut shard = self
                .shard(tag)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match shard.get_mut(tag) {
                Some(records) => {
                    records.members.entry(key.clone()).or_insert(id);
                }
                None => {
                    shard
                        .entry(tag.clone())
                        .or_default()
                        .members
                        .insert(key.clone(), id);
                }
            }
        }
    }

    /// Forgets what insert `id` recorded, unless a later insert of `key` replaced it.
    pub(crate) fn forget(&self, tags: &[Key], key: &K, id: u64) {
        for tag in tags {
            let mut shard = self
                .shard(tag)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(records) = shard.get_mut(tag) {
                if records.members.get(key) == Some(&id) {
                    records.members.remove(key);
                    if records.is_empty() {
                        shard.remove(tag);
                    }
                }
            }
        }
    }

    /// The keys recorded under `tag`, no longer recorded, with those that invalidations of
    /// it still in progress took: remove them all before dropping what this returns.
    pub(crate) fn take(&self, tag: &Key) -> Taken<'_, K> {
        let mut taken = Taken {
            index: self,
            tag: tag.clone(),
            mine: None,
            others: Vec::new(),
        };
        let mut shard = self
            .shard(tag)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(records) = shard.get_mut(tag) else {
            return taken;
        };
        taken.others.clone_from(&records.taking);
        if !records.members.is_empty() {
            let mine: Arc<[K]> = records.members.drain().map(|(key, _)| key).collect();
            records.taking.push(Arc::clone(&mine));
            taken.mine = Some(mine);
        } else if records.taking.is_empty() {
            shard.remove(tag);
        }
        taken
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn records(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap_or_else(PoisonError::into_inner);
                shard.values().map(|r| r.members.len()).sum::<usize>()
            })
            .sum()
    }
}

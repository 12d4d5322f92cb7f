//! Moving values between the stores: keeping what a read of Redis answered (the read itself
//! is `read`), storing what a loader produced, and removing what an invalidation names.
//!
//! Redis is optional at every step: a write that is not made, fails or is shed leaves the
//! value in the local store only. A failure counts against the breaker; shedding (too many
//! commands in flight) does not.

use std::time::{Duration, SystemTime};

use super::read::{Fresh, Lease};
use super::{flights, Core, Epoch, Shape, ShardMask, ALL_SHARDS};
use crate::error::Error;
use crate::key::Key;
use crate::model::{unix_ms, Cacheable, ClassId, EntryOptions, Invalidation, ValueGrace};
use crate::redis::{Leased, RedisStore, WriteOutcome, LEASE_TTL};
use crate::store::envelope::{self, Lineage};
use crate::store::{Encodable, LocalKey};

/// Under which condition a value is written to Redis.
pub(crate) enum WriteIf {
    /// Only if nothing was invalidated since the read that gave this lease.
    Unchanged(Lease),
    /// Always: an explicit write is the newest value.
    Always,
}

impl WriteIf {
    /// See [`Lease::with_unread_tags`].
    pub(crate) fn with_unread_tags(self, n: usize) -> Self {
        match self {
            WriteIf::Unchanged(lease) => WriteIf::Unchanged(lease.with_unread_tags(n)),
            WriteIf::Always => WriteIf::Always,
        }
    }

    /// What the envelope of a value so written records of what its writer had seen; `tags`
    /// are the entry's, in the order the lease read their generations.
    fn lineage(&self, tags: &[Key]) -> Lineage {
        match self {
            WriteIf::Always => Lineage::Explicit,
            WriteIf::Unchanged(lease) => Lineage::Loaded(envelope::Seen {
                class: lease.flushes.class,
                namespace: lease.flushes.namespace,
                tags: tags
                    .iter()
                    .zip(&lease.generations)
                    .filter_map(|(tag, g)| g.map(|g| (tag.clone(), g)))
                    .collect(),
                written: unix_ms(SystemTime::now()),
            }),
        }
    }
}

/// What became of a value's write to Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    Stored,
    /// Not written: no Redis, a failure, shed, or a load that outlived its lease.
    Not,
    /// Refused (the key or a generation changed since the load's read: an invalidation,
    /// or another load's write), or written and then found to be reached by an
    /// invalidation since the read: the value may be older than what an invalidation
    /// stood for.
    Superseded,
}

impl Core {
    /// Keeps a value read from Redis in the local store, for what is left of its freshness
    /// but no longer than the shape's TTL or local limit — unless it was read before an
    /// invalidation that has started since (then it is served but not kept), or the call
    /// skips the local store.
    pub(crate) fn keep_from_redis<T: Cacheable>(
        &self,
        local_key: &LocalKey,
        fresh: &Fresh<T>,
        shape: &Shape,
        options: &EntryOptions,
        epoch: Epoch,
    ) {
        if shape.local {
            // The tags the loader added widen the epoch, as they did the loader's own.
            let epoch = match fresh.tags.is_empty() {
                true => epoch,
                false => self.flights.widen_after_read(epoch, &fresh.tags),
            };
            if let Some(_storing) = self.flights.begin_store(epoch) {
                let tags: std::borrow::Cow<'_, [Key]> = match fresh.tags.is_empty() {
                    true => (&options.tags[..]).into(),
                    false => options.tags.iter().chain(&fresh.tags).cloned().collect(),
                };
                self.local.insert(
                    local_key.clone(),
                    fresh.value.clone(),
                    shape.local_fresh_for(fresh.fresh_for.min(shape.ttl)),
                    shape
                        .grace
                        .max(ValueGrace::of(options.value_grace, &fresh.value)),
                    &tags,
                    fresh.len,
                );
            }
        }
        self.stats.l2_hit(local_key.class);
    }

    /// Writes a loaded value to Redis (if `redis_key`, under its condition) and to the local
    /// store (unless the shape skips it, or Redis showed that an invalidation reached the
    /// entry since the load's read), with one TTL drawn for both. Returns whether Redis has
    /// the value now: false without a Redis key, or if the write failed, was shed or
    /// refused, or the value did not encode.
    ///
    /// The last `added` of `tags` are the loader's own: the envelope carries them, so that
    /// the instances reading the entry from Redis learn them.
    pub(crate) async fn store<T: Cacheable>(
        &self,
        local_key: &LocalKey,
        redis_key: Option<(String, WriteIf)>,
        value: &T,
        shape: &Shape,
        tags: &[Key],
        added: usize,
    ) -> bool {
        let (ttl, grace) = (shape.draw_ttl(), shape.grace);
        let mut written = Written::Not;
        let mut encoded_len = 0;
        if redis_key.is_some() || (shape.local && self.local.weighs_bytes()) {
            // Compressing is for Redis only: without a Redis key the bytes are just weighed.
            let compress_above = self.compress_above.filter(|_| redis_key.is_some());
            let fresh_until = SystemTime::now() + ttl;
            let carried = &tags[tags.len().saturating_sub(added)..];
            // Only where the write cannot check the generations itself do readers need them.
            let lineage = match &redis_key {
                Some((_, write_if))
                    if self
                        .redis_always()
                        .is_some_and(RedisStore::checks_after_write) =>
                {
                    write_if.lineage(tags)
                }
                _ => Lineage::Unrecorded,
            };
            match envelope::seal(
                &*self.codec,
                fresh_until,
                Encodable::new(value),
                compress_above,
                carried,
                &lineage,
            ) {
                Ok(sealed) => {
                    encoded_len = sealed.encoded_len;
                    if let Some((full_key, write_if)) = redis_key {
                        written = self
                            .write_redis(
                                local_key,
                                &full_key,
                                sealed.bytes,
                                ttl + grace,
                                tags,
                                write_if,
                            )
                            .await;
                    }
                }
                Err(error) => {
                    tracing::warn!(key = %local_key.key, %error, "value could not be encoded; cached locally only");
                }
            }
        }
        // An invalidation this instance may not have heard of yet reached the entry: the
        // value is the caller's answer, but not to be served again.
        if shape.local && written != Written::Superseded {
            self.local.insert(
                local_key.clone(),
                value.clone(),
                shape.local_fresh_for(ttl),
                grace,
                tags,
                encoded_len,
            );
        }
        written == Written::Stored
    }

    async fn write_redis(
        &self,
        local_key: &LocalKey,
        full_key: &str,
        sealed: Vec<u8>,
        ttl: Duration,
        tags: &[Key],
        write_if: WriteIf,
    ) -> Written {
        let Some(redis) = self.redis() else {
            return Written::Not;
        };
        let lease = match write_if {
            // Past half its life, the lease's tombstones and generations may have expired
            // and could no longer tell an invalidation happened.
            WriteIf::Unchanged(lease) if lease.read_at.elapsed() > LEASE_TTL / 2 => {
                tracing::debug!(key = %full_key, "load outlived its lease; not written to Redis");
                return Written::Not;
            }
            WriteIf::Unchanged(lease) => Some(lease),
            WriteIf::Always => None,
        };
        let leased = lease.as_ref().map(|l| Leased {
            seen: &l.seen,
            generations: &l.generations,
            class: self.classes.get(local_key.class).name(),
            flushes: l.flushes,
        });
        let written = redis.set_if(full_key, sealed, ttl, tags, leased).await;
        if let Ok((_, Some(flushes))) = &written {
            self.flushes.learn(local_key.class, *flushes);
        }
        match written.map(|(outcome, _)| outcome) {
            Ok(WriteOutcome::Stored) => {
                self.tag_trims.wrote(tags);
                Written::Stored
            }
            Ok(WriteOutcome::Refused) => {
                tracing::debug!(key = %full_key, "invalidated since it was read; not written to Redis");
                Written::Superseded
            }
            Ok(WriteOutcome::Moved) => {
                tracing::debug!(key = %full_key, "a tag was invalidated or a flush ran while it loaded; invalidating it");
                self.suspect_writes.report(local_key);
                Written::Superseded
            }
            Err(Error::Overloaded) => Written::Not,
            Err(error) => {
                self.stats.redis_error();
                self.breaker.record_failure("write failed");
                tracing::debug!(key = %full_key, %error, "Redis write failed; kept locally");
                if lease.is_some() {
                    // It may have reached Redis all the same, or still land, after an
                    // invalidation this process has not heard of.
                    self.suspect_writes.report(local_key);
                }
                Written::Not
            }
        }
    }

    /// The classes an invalidation names, and the names this cache does not declare.
    pub(crate) fn class_ids(&self, inv: &Invalidation) -> (Vec<ClassId>, Vec<String>) {
        let mut unknown = Vec::new();
        let mut ids: Vec<ClassId> = inv
            .classes
            .iter()
            .filter_map(|name| {
                let id = self.classes.resolve(Some(name));
                if id.is_none() {
                    unknown.push(name.clone());
                }
                id
            })
            .collect();
        if inv.volatile {
            ids.extend(
                self.classes
                    .iter()
                    .filter(|(_, c)| c.is_volatile())
                    .map(|(id, _)| id),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        (ids, unknown)
    }

    /// The shards of what `inv` names, for the flights (see their docs): an invalidation
    /// fences off only the loads it can reach.
    pub(crate) fn mask_of(&self, inv: &Invalidation) -> ShardMask {
        if inv.everything {
            return ALL_SHARDS;
        }
        flights::mask_of(inv, &self.class_ids(inv).0)
    }

    /// Removes what `inv` names from the local store.
    pub(crate) fn apply_local(&self, inv: &Invalidation) {
        if inv.everything {
            self.flushes.forget_namespace();
            self.local.invalidate_all();
            return;
        }
        for key in &inv.keys {
            for (class, _) in self.classes.iter() {
                self.local.remove(&LocalKey {
                    class,
                    key: key.clone(),
                });
            }
        }
        for tag in &inv.tags {
            self.local.invalidate_tag(tag);
        }
        for class in self.class_ids(inv).0 {
            self.flushes.forget_class(class);
            self.local.invalidate_class(class);
        }
    }

    /// Removes what `inv` names from Redis (whatever the breaker says); keys removed.
    /// Telling the other instances is the invalidator's job.
    pub(crate) async fn apply_redis(&self, inv: &Invalidation) -> Result<u64, Error> {
        let Some(redis) = self.redis.as_ref() else {
            return Ok(0);
        };
        if inv.everything {
            // Boxed, as the flushes below: an invalidation's future is nested in every
            // request path that invalidates, and the compiler bounds how deep a type goes.
            let (removed, generation) = Box::pin(redis.flush_namespace()).await?;
            self.flushes.learn_namespace(Some(generation));
            return Ok(removed.keys);
        }
        let mut removed = 0;
        if !inv.keys.is_empty() {
            let full_keys = inv
                .keys
                .iter()
                .flat_map(|key| {
                    self.classes
                        .iter()
                        .map(move |(_, c)| redis.entry_key(c.name(), key))
                })
                .collect();
            // Tombstones, not deletions: a load on another instance that read before this
            // cannot write its older value back.
            removed += redis
                .bury(full_keys, envelope::tombstone(), envelope::is_tombstone)
                .await?
                .keys;
        }
        for tag in &inv.tags {
            removed += redis.invalidate_tag(tag).await?.keys;
        }
        for class in self.class_ids(inv).0 {
            let (flushed, generation) =
                Box::pin(redis.flush_class(self.classes.get(class).name())).await?;
            self.flushes.learn_class(class, Some(generation));
            removed += flushed.keys;
        }
        Ok(removed)
    }
}

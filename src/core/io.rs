//! Moving values between the stores: reading Redis, keeping what it answered, storing what
//! a loader produced, and removing what an invalidation names.
//!
//! Redis is optional at every step: when it is not configured, not answering, or answers with
//! bytes that do not decode, the read carries on as if Redis had missed, and a write failure
//! leaves the value in the local store only. A failure counts against the breaker; shedding
//! (too many commands in flight) does not.

use std::time::{Duration, SystemTime};

use super::{flights, Core, Epoch, ShardMask, ALL_SHARDS};
use crate::error::Error;
use crate::key::Key;
use crate::model::{Cacheable, ClassId, EntryOptions, Invalidation};
use crate::redis::RedisStore;
use crate::store::{envelope, LocalKey};

/// What a Redis read found.
pub(crate) enum RedisRead<T> {
    /// A fresh value.
    Fresh(Fresh<T>),
    /// A value past its TTL (usable as a fail-safe fallback only).
    Expired(T),
    /// Nothing usable: absent, undecodable, or the read was shed.
    Miss,
    /// Redis failed to answer.
    Failed,
}

/// A fresh value read from Redis.
pub(crate) struct Fresh<T> {
    pub(crate) value: T,
    /// How long it stays fresh, by the time written with it.
    pub(crate) fresh_for: Duration,
    /// Its encoded size in bytes.
    pub(crate) len: usize,
}

impl Core {
    /// Reads an entry from Redis. Undecodable bytes are a miss (and get overwritten); a
    /// failure is counted against Redis's health, shedding is not.
    pub(crate) async fn read_redis<T: Cacheable>(
        &self,
        redis: &RedisStore,
        full_key: &str,
    ) -> RedisRead<T> {
        match redis.get(full_key).await {
            Ok(Some(bytes)) => {
                self.breaker.record_success();
                match self.decode::<T>(&bytes) {
                    Ok((value, fresh_until)) => match fresh_until.duration_since(SystemTime::now())
                    {
                        Ok(fresh_for) if !fresh_for.is_zero() => RedisRead::Fresh(Fresh {
                            value,
                            fresh_for,
                            len: bytes.len(),
                        }),
                        _ => RedisRead::Expired(value),
                    },
                    Err(error) => {
                        self.stats.decode_error();
                        tracing::warn!(key = %full_key, %error, "undecodable cached bytes; treating as a miss");
                        RedisRead::Miss
                    }
                }
            }
            Ok(None) => {
                self.breaker.record_success();
                RedisRead::Miss
            }
            // Shedding load is not a sign of a sick Redis.
            Err(Error::Overloaded) => RedisRead::Miss,
            Err(error) => {
                self.stats.redis_error();
                self.breaker.record_failure("read failed");
                tracing::debug!(key = %full_key, %error, "Redis read failed; carrying on without it");
                RedisRead::Failed
            }
        }
    }

    /// Keeps a value read from Redis in the local store, for what is left of its freshness
    /// but no longer than `ttl` — unless it was read before an invalidation that has started
    /// since: then it is served but not kept.
    pub(crate) fn keep_from_redis<T: Cacheable>(
        &self,
        local_key: &LocalKey,
        fresh: &Fresh<T>,
        ttl: Duration,
        options: &EntryOptions,
        epoch: Epoch,
    ) {
        if let Some(_storing) = self.flights.begin_store(epoch) {
            self.local.insert(
                local_key.clone(),
                fresh.value.clone(),
                fresh.fresh_for.min(ttl),
                options.stale_for.unwrap_or(Duration::ZERO),
                &options.tags,
                fresh.len,
            );
        }
        self.stats.l2_hit();
    }

    fn decode<T: Cacheable>(&self, bytes: &[u8]) -> Result<(T, SystemTime), Error> {
        let opened = envelope::open(self.codec, bytes)?;
        let value = self.codec.decode(opened.payload)?;
        Ok((value, opened.fresh_until))
    }

    /// Writes a loaded value to Redis (if `redis_key`) and to the local store.
    /// Returns whether Redis has the value now: false without a Redis key, or if the write
    /// failed, was shed, or the value did not encode.
    pub(crate) async fn store<T: Cacheable>(
        &self,
        local_key: &LocalKey,
        redis_key: Option<&str>,
        value: &T,
        ttl: Duration,
        grace: Duration,
        tags: &[Key],
    ) -> bool {
        let mut in_redis = false;
        let mut encoded_len = 0;
        if redis_key.is_some() || self.local.weighs_bytes() {
            match self.codec.encode(value) {
                Ok(payload) => {
                    encoded_len = payload.len();
                    if let (Some(redis), Some(full_key)) = (self.redis(), redis_key) {
                        let sealed = envelope::seal(self.codec, SystemTime::now() + ttl, &payload);
                        match redis.set(full_key, sealed, ttl + grace, tags).await {
                            Ok(()) => in_redis = true,
                            Err(Error::Overloaded) => {}
                            Err(error) => {
                                self.stats.redis_error();
                                self.breaker.record_failure("write failed");
                                tracing::debug!(key = %full_key, %error, "Redis write failed; kept locally");
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(key = %local_key.key, %error, "value could not be encoded; cached locally only");
                }
            }
        }
        self.local.insert(
            local_key.clone(),
            value.clone(),
            ttl,
            grace,
            tags,
            encoded_len,
        );
        in_redis
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
            let removed = redis.flush_namespace().await?.keys;
            return Ok(removed);
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
            removed += redis.unlink(full_keys).await?.keys;
        }
        for tag in &inv.tags {
            removed += redis.invalidate_tag(tag).await?.keys;
        }
        for class in self.class_ids(inv).0 {
            let pattern = redis.class_pattern(self.classes.get(class).name());
            removed += redis.flush_pattern(&pattern).await?.keys;
        }
        Ok(removed)
    }
}

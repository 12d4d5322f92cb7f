//! Moving values between the stores: reading Redis, keeping what it answered, storing what
//! a loader produced, and removing what an invalidation names.
//!
//! Redis is optional at every step: when it is not configured, not answering, or answers with
//! bytes that do not decode, the read carries on as if Redis had missed, and a write failure
//! leaves the value in the local store only. A failure counts against the breaker; shedding
//! (too many commands in flight) does not.

use std::time::{Duration, Instant, SystemTime};

use super::superseded::superseded;
use super::{flights, Core, Epoch, Shape, ShardMask, ALL_SHARDS};
use crate::error::Error;
use crate::key::Key;
use crate::model::{Cacheable, ClassId, EntryOptions, Invalidation, ValueGrace};
use crate::redis::{Flushes, Leased, RedisStore, Seen, WriteOutcome, LEASE_TTL};
use crate::store::envelope::{self, Lineage};
use crate::store::{CodecExt, Encodable, LocalKey};

/// What a Redis read found. Each answer carries the [`Lease`] a write of a newly loaded
/// value needs.
pub(crate) enum RedisRead<T> {
    /// A fresh value.
    Fresh(Fresh<T>, Lease),
    /// A value past its TTL (usable as a fail-safe fallback only).
    Expired(T, Lease),
    /// Nothing usable: absent, a tombstone, or undecodable.
    Miss(Lease),
    /// Redis failed to answer, or the read was shed: nothing may be written back either.
    Failed,
}

/// What a read of Redis saw, so that the value loaded after it is written only if no
/// invalidation ran in between (see `Seen` and the lease script in `redis`).
#[derive(Debug)]
pub(crate) struct Lease {
    seen: Seen,
    /// The generations of the entry's tags at the read.
    generations: Vec<Option<i64>>,
    /// The generations of its class's and the namespace's flushes, as known at the read.
    flushes: Flushes,
    read_at: Instant,
}

impl Lease {
    /// The lease of an entry whose loader added `n` tags to those it was read with. Their
    /// generations were not read, so they count as not bumped lately: a tag invalidated
    /// within a lease's life — during the load, or shortly before — makes the write
    /// invalidate the entry again, which costs a miss and never a stale read.
    pub(crate) fn with_unread_tags(mut self, n: usize) -> Self {
        self.generations.resize(self.generations.len() + n, None);
        self
    }
}

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
            }),
        }
    }
}

/// What a read of Redis read beside the entry, and whether entries there record their
/// lineage.
struct Read<'a> {
    /// The entry's tags, and their generations, in order.
    tags: &'a [Key],
    generations: Vec<Option<i64>>,
    /// The flush generations, as known or read.
    flushes: Flushes,
    read_at: Instant,
    /// Whether writes record their lineage, for readers to check (see
    /// `RedisStore::checks_after_write`).
    lineage_checked: bool,
}

/// A value read from Redis, and what its envelope said of it.
struct Decoded<T> {
    value: T,
    fresh_until: SystemTime,
    /// Its encoded size (before any compression, as the local store weighs it).
    len: usize,
    /// The tags its loader added.
    tags: Vec<Key>,
    lineage: Lineage,
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

/// A fresh value read from Redis.
pub(crate) struct Fresh<T> {
    pub(crate) value: T,
    /// How long it stays fresh, by the time written with it.
    pub(crate) fresh_for: Duration,
    /// Its encoded size in bytes (uncompressed).
    pub(crate) len: usize,
    /// The tags its loader added, which the reader's options need not name.
    pub(crate) tags: Vec<Key>,
}

impl Core {
    /// Reads an entry from Redis. Undecodable bytes are a miss (and get overwritten); a
    /// failure is counted against Redis's health, shedding is not.
    /// `tags` are the entry's: their generations are read along, for the lease.
    pub(crate) async fn read_redis<T: Cacheable>(
        &self,
        redis: &RedisStore,
        class: ClassId,
        full_key: &str,
        tags: &[Key],
    ) -> RedisRead<T> {
        let read_at = Instant::now();
        // Taken before the read, so before any load that follows reads the origin. Until
        // this instance knows them, they are read along with the entry.
        let known = self.flushes.get(class);
        let flushes_of = known.is_none().then(|| self.classes.get(class).name());
        match redis.get_leased(full_key, tags, flushes_of).await {
            Ok((entry, generations, read)) => {
                if let Some(read) = read {
                    self.flushes.learn(class, read);
                }
                let flushes = known.or(read).unwrap_or_default();
                let read = Read {
                    tags,
                    generations,
                    flushes,
                    read_at,
                    lineage_checked: redis.checks_after_write(),
                };
                self.answer_of(full_key, entry, read)
            }
            // Shedding load is not a sign of a sick Redis.
            Err(Error::Overloaded) => RedisRead::Failed,
            Err(error) => {
                self.stats.redis_error();
                self.breaker.record_failure("read failed");
                tracing::debug!(key = %full_key, %error, "Redis read failed; carrying on without it");
                RedisRead::Failed
            }
        }
    }

    /// What a read of Redis that answered found.
    fn answer_of<T: Cacheable>(
        &self,
        full_key: &str,
        entry: Option<bytes::Bytes>,
        read: Read<'_>,
    ) -> RedisRead<T> {
        let Read {
            tags,
            generations,
            flushes,
            read_at,
            lineage_checked,
        } = read;
        match entry {
            Some(bytes) => {
                self.breaker.record_success();
                let decoded = if envelope::is_tombstone(&bytes) {
                    None
                } else {
                    match self.decode::<T>(&bytes) {
                        Ok(decoded) => Some(decoded),
                        Err(error) => {
                            self.stats.decode_error();
                            tracing::warn!(key = %full_key, %error, "undecodable cached bytes; treating as a miss");
                            None
                        }
                    }
                };
                // A racing load's value that an invalidation's scan missed, not yet removed
                // by the load's own check after its write: a miss, whose load replaces it.
                let decoded = decoded.filter(|d| {
                    let older = lineage_checked
                        && superseded(&d.lineage, tags, &generations, flushes);
                    if older {
                        tracing::debug!(key = %full_key, "value written by a load older than an invalidation; treating as a miss");
                    }
                    !older
                });
                let lease = Lease {
                    seen: Seen::Bytes(bytes),
                    generations,
                    flushes,
                    read_at,
                };
                match decoded {
                    Some(Decoded {
                        value,
                        fresh_until,
                        len,
                        tags,
                        ..
                    }) => match fresh_until.duration_since(SystemTime::now()) {
                        Ok(fresh_for) if !fresh_for.is_zero() => RedisRead::Fresh(
                            Fresh {
                                value,
                                fresh_for,
                                len,
                                tags,
                            },
                            lease,
                        ),
                        _ => RedisRead::Expired(value, lease),
                    },
                    None => RedisRead::Miss(lease),
                }
            }
            None => {
                self.breaker.record_success();
                RedisRead::Miss(Lease {
                    seen: Seen::Absent,
                    generations,
                    flushes,
                    read_at,
                })
            }
        }
    }

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

    /// Opens an envelope and decodes its value.
    fn decode<T: Cacheable>(&self, bytes: &[u8]) -> Result<Decoded<T>, Error> {
        let opened = envelope::open(&*self.codec, bytes)?;
        Ok(Decoded {
            value: self.codec.from_slice(&opened.payload)?,
            fresh_until: opened.fresh_until,
            len: opened.payload.len(),
            tags: opened.tags,
            lineage: opened.lineage,
        })
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

//! Reading Redis: what a read found, and the lease a load's write after it needs.
//!
//! A read that fails, or answers with bytes that do not decode, carries on as if Redis had
//! missed. A failure counts against the breaker; shedding (too many commands in flight)
//! does not.

use std::time::{Duration, Instant, SystemTime};

use super::superseded::{superseded, unread_tags};
use super::Core;
use crate::error::Error;
use crate::key::Key;
use crate::model::{Cacheable, ClassId};
use crate::redis::{Flushes, RedisStore, Seen};
use crate::store::envelope::{self, Lineage};
use crate::store::CodecExt;

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
    pub(super) seen: Seen,
    /// The generations of the entry's tags at the read.
    pub(super) generations: Vec<Option<i64>>,
    /// The generations of its class's and the namespace's flushes, as known at the read.
    pub(super) flushes: Flushes,
    pub(super) read_at: Instant,
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

/// What a read of Redis that answered comes to: the answer, or first a read of the
/// generations of tags the reader did not name (see `superseded::unread_tags`).
enum Answer<'a, T> {
    Done(RedisRead<T>),
    ReadTags(Box<Unconfirmed<'a, T>>),
}

/// A value read from Redis that may be used only once the generations of its `unread` tags
/// are known.
struct Unconfirmed<'a, T> {
    bytes: bytes::Bytes,
    decoded: Decoded<T>,
    read: Read<'a>,
    unread: Vec<Key>,
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
                match self.answer_of(full_key, entry, read) {
                    Answer::Done(answer) => answer,
                    // Seldom (a young Cluster entry its loader tagged): boxed, so that the
                    // future of every other read does not carry a second read.
                    Answer::ReadTags(unconfirmed) => {
                        Box::pin(self.answer_after(redis, full_key, *unconfirmed)).await
                    }
                }
            }
            Err(error) => self.read_failed(full_key, &error),
        }
    }

    /// A read of Redis that failed: counted against Redis's health, unless it was shed
    /// (shedding load is not a sign of a sick Redis).
    fn read_failed<T>(&self, full_key: &str, error: &Error) -> RedisRead<T> {
        if !matches!(error, Error::Overloaded) {
            self.stats.redis_error();
            self.breaker.record_failure("read failed");
            tracing::debug!(key = %full_key, %error, "Redis read failed; carrying on without it");
        }
        RedisRead::Failed
    }

    /// What a read of Redis that answered comes to.
    fn answer_of<'a, T: Cacheable>(
        &self,
        full_key: &str,
        entry: Option<bytes::Bytes>,
        read: Read<'a>,
    ) -> Answer<'a, T> {
        self.breaker.record_success();
        let Some(bytes) = entry else {
            return Answer::Done(RedisRead::Miss(Lease {
                seen: Seen::Absent,
                generations: read.generations,
                flushes: read.flushes,
                read_at: read.read_at,
            }));
        };
        let decoded = match self.opened::<T>(full_key, &bytes) {
            Some(decoded) if read.lineage_checked => {
                let unread = unread_tags(
                    &decoded.lineage,
                    &decoded.tags,
                    read.tags,
                    SystemTime::now(),
                );
                if !unread.is_empty() {
                    return Answer::ReadTags(Box::new(Unconfirmed {
                        bytes,
                        decoded,
                        read,
                        unread,
                    }));
                }
                Some(decoded)
            }
            other => other,
        };
        Answer::Done(self.answer_with(full_key, bytes, decoded, read, (&[], &[])))
    }

    /// The answer to a read whose value needs the generations of tags its reader did not
    /// name, once they are read.
    async fn answer_after<T: Cacheable>(
        &self,
        redis: &RedisStore,
        full_key: &str,
        unconfirmed: Unconfirmed<'_, T>,
    ) -> RedisRead<T> {
        let Unconfirmed {
            bytes,
            decoded,
            read,
            unread,
        } = unconfirmed;
        match redis.generations_after(&unread, read.read_at).await {
            Ok(now) => self.answer_with(full_key, bytes, Some(decoded), read, (&unread, &now)),
            Err(error) => self.read_failed(full_key, &error),
        }
    }

    /// The answer to a read of `bytes`, `decoded` unless a tombstone or undecodable; `unread`
    /// are tags the reader did not name, with their generations as read after the entry.
    fn answer_with<T: Cacheable>(
        &self,
        full_key: &str,
        bytes: bytes::Bytes,
        decoded: Option<Decoded<T>>,
        read: Read<'_>,
        unread: (&[Key], &[Option<i64>]),
    ) -> RedisRead<T> {
        let Read {
            tags,
            generations,
            flushes,
            read_at,
            lineage_checked,
        } = read;
        // A racing load's value that an invalidation's scan missed, not yet removed by the
        // load's own check after its write: a miss, whose load replaces it.
        let decoded = decoded.filter(|d| {
            let older = lineage_checked
                && (superseded(&d.lineage, tags, &generations, flushes)
                    || superseded(&d.lineage, unread.0, unread.1, flushes));
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
        let Some(Decoded {
            value,
            fresh_until,
            len,
            tags,
            ..
        }) = decoded
        else {
            return RedisRead::Miss(lease);
        };
        match fresh_until.duration_since(SystemTime::now()) {
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
        }
    }

    /// The value in `bytes`; `None` for a tombstone, or bytes that do not decode (counted,
    /// and logged: they are overwritten by the load that follows).
    fn opened<T: Cacheable>(&self, full_key: &str, bytes: &[u8]) -> Option<Decoded<T>> {
        if envelope::is_tombstone(bytes) {
            return None;
        }
        match self.decode::<T>(bytes) {
            Ok(decoded) => Some(decoded),
            Err(error) => {
                self.stats.decode_error();
                tracing::warn!(key = %full_key, %error, "undecodable cached bytes; treating as a miss");
                None
            }
        }
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
}

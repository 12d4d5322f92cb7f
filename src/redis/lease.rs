//! Leases: a load's write cannot bring back what an invalidation removed after the load read.
//!
//! The race: instance A misses key K, reads the origin, and is slow to write back; meanwhile
//! instance B changes the origin and invalidates K. If A's write lands after B's removal, the
//! old value sits in Redis until its TTL, and A's own process may not have heard of B's
//! invalidation in time to stop it. A write that times out is worse: it may still land
//! seconds later. So, as memcache leases do, a load's write is made conditional on what the
//! load saw, and checked by Redis itself when the write is executed:
//!
//! - removing a key by a *key* invalidation leaves a short-lived **tombstone** in its place
//!   (a unique value per invalidation, made by the caller) instead of deleting it;
//! - a load remembers what its read found — nothing, a tombstone, or a value past its TTL —
//!   and its write is a script that stores only if the key still holds exactly that
//!   ([`LEASE_SET`]). Any invalidation since then changed it, so the write is refused;
//! - a *tag* invalidation cannot leave tombstones for entries that are not in the tag's set
//!   yet, so it moves the tag's **generation** (`ns:~tagv:tag`) before it deletes anything,
//!   and a load of a tagged entry reads its tags' generations with the entry. A generation
//!   expires, so a counter could come back to the very value a load read (1 read just before
//!   it expired, then one invalidation counts 1 again) and hide that invalidation: a move
//!   sets a value never used before instead;
//! - a *class* or *namespace* flush scans for keys, and cannot see an entry written after
//!   its scan went by, so it moves the class's (`ns:~clsv:class`) or the namespace's
//!   (`ns:~allv`) generation first. A load's lease carries both as its instance last knew
//!   them (see `core::known_flushes`). These two never expire.
//!
//! Where every key lives on one server (standalone, Sentinel), one script
//! ([`LEASE_SET_CHECKED`]) compares the key and all the generations with the lease and only
//! then writes the entry and adds it to its tags' sets: either the write comes first, and
//! the invalidation's scan finds the entry, or the generation moved first, and nothing is
//! written. No reader ever sees the load's value. On a Cluster the keys are spread over
//! nodes: the write ([`LEASE_SET`]) checks the key only, the entry then joins its tags' sets,
//! and the generations are read again after that. If one moved, the caller invalidates the
//! entry; until then the envelope's record of what the load had seen tells readers, who read
//! the tags' generations with the entry and know the flushes', to take it for a miss (see
//! `core::superseded`).
//!
//! Tombstones and tag generations live [`LEASE_TTL`]; a load that took longer than half of
//! that does not write to Redis at all, so an expired lease can never pass for an untouched
//! one.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::{Client, Pipeline};
use fred::prelude::{ClientLike, Expiration, KeysInterface, LuaInterface, SetsInterface};
use fred::types::{ExpireOptions, Value};

use super::{Flushes, Leased, RedisStore, Removed, Seen, WriteOutcome, LEASE_TTL};
use crate::error::{Error, RedisErrorKind};
use crate::key::Key;
use crate::model::nonce;

/// KEYS[1] = entry; ARGV[1] = value, ARGV[2] = TTL in ms, ARGV[3] = "0" if the load saw no
/// value and "1" if it saw ARGV[4]. Returns 1 if written, 0 if the key changed since.
const LEASE_SET: &str = "local cur = redis.call('GET', KEYS[1])
if ARGV[3] == '0' then
  if cur then return 0 end
elseif cur ~= ARGV[4] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1";

/// The whole conditional write where every key lives on one server (not on a Cluster), in
/// one round trip and atomically: no invalidation can fall between the checks and the write.
///
/// KEYS[1] = entry, KEYS[2] and KEYS[3] = the class's and the namespace's flush generations,
/// then n tag generations, then the n tags' sets. ARGV[1..4] as [`LEASE_SET`], ARGV[5] and
/// ARGV[6] = the flush generations the load knew ("" for none), then the n tag generations
/// its read saw. Returns {0} if the key changed since; {2, class generation, namespace
/// generation} without writing if a generation moved; else writes the entry, adds it to its
/// tags' sets (which live as long as their longest-lived member: NX sets a first TTL, GT
/// only ever extends it) and returns {1, class generation, namespace generation}.
const LEASE_SET_CHECKED: &str = "local cur = redis.call('GET', KEYS[1])
if ARGV[3] == '0' then
  if cur then return {0} end
elseif cur ~= ARGV[4] then
  return {0}
end
local class = redis.call('GET', KEYS[2])
local all = redis.call('GET', KEYS[3])
if (class or '') ~= ARGV[5] or (all or '') ~= ARGV[6] then
  return {2, class, all}
end
local n = (#KEYS - 3) / 2
for i = 1, n do
  if (redis.call('GET', KEYS[3 + i]) or '') ~= ARGV[6 + i] then
    return {2, class, all}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 1, n do
  local set = KEYS[3 + n + i]
  redis.call('SADD', set, KEYS[1])
  redis.call('PEXPIRE', set, ARGV[2], 'NX')
  redis.call('PEXPIRE', set, ARGV[2], 'GT')
end
return {1, class, all}";

/// The arguments of [`LEASE_SET`], which [`LEASE_SET_CHECKED`] begins with.
fn lease_args(bytes: Vec<u8>, ttl_ms: i64, seen: &Seen) -> Vec<Value> {
    let (flag, expected) = match seen {
        Seen::Absent => ("0", Bytes::new()),
        Seen::Bytes(b) => ("1", b.clone()),
    };
    vec![
        Value::Bytes(Bytes::from(bytes)),
        Value::Integer(ttl_ms),
        Value::from(flag),
        Value::Bytes(expected),
    ]
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Generations read as the tags' then the class's and the namespace's.
fn split_flushes(mut generations: Vec<Option<i64>>) -> (Vec<Option<i64>>, Flushes) {
    let namespace = generations.pop().flatten();
    let class = generations.pop().flatten();
    (generations, Flushes { class, namespace })
}

impl RedisStore {
    /// `ns:~tagv:tag`: changed to a new value by every invalidation of `tag`; expires
    /// [`LEASE_TTL`] after the last.
    pub(crate) fn tag_generation_key(&self, tag: &Key) -> String {
        format!("{}~tagv:{}", self.prefix(), tag.as_str())
    }

    /// Whether a leased write learns only after writing that a generation moved since its
    /// read ([`WriteOutcome::Moved`]): on a Cluster, where the entry, its tags' sets and the
    /// generations live on different nodes. Elsewhere one script checks, then writes.
    pub(crate) fn checks_after_write(&self) -> bool {
        self.client().is_clustered()
    }

    /// Writes an entry and adds it to its tags' sets; with a `lease`, only if its key still
    /// holds what the load's read saw and none of the generations of its tags, its class and
    /// the namespace moved since. Returns those flush generations as read at the write. One
    /// deadline for all of it.
    pub(crate) async fn set_if(
        &self,
        full_key: &str,
        bytes: Vec<u8>,
        ttl: Duration,
        tags: &[Key],
        lease: Option<Leased<'_>>,
    ) -> Result<(WriteOutcome, Option<Flushes>), Error> {
        let ttl_ms = ttl_ms(ttl);
        // Boxed: a write is a miss, which waits for Redis anyway, and its many awaits would
        // otherwise make every read's future larger.
        match lease {
            Some(lease) if !self.checks_after_write() => {
                self.bounded("EVAL", || {
                    Box::pin(self.set_checked(full_key, bytes, ttl_ms, tags, lease))
                })
                .await
            }
            lease => {
                let op = if lease.is_some() { "EVAL" } else { "SET" };
                let steps = Box::pin(self.set_then_check(full_key, bytes, ttl_ms, tags, lease));
                self.bounded_steps(op, steps).await
            }
        }
    }

    /// A leased write where all its keys live on one server: checks and writes in one
    /// script ([`LEASE_SET_CHECKED`]), so that an entry a tag invalidation or a flush could
    /// miss is never written at all.
    async fn set_checked(
        &self,
        full_key: &str,
        bytes: Vec<u8>,
        ttl_ms: i64,
        tags: &[Key],
        lease: Leased<'_>,
    ) -> Result<(WriteOutcome, Option<Flushes>), fred::error::Error> {
        debug_assert_eq!(tags.len(), lease.generations.len(), "a generation per tag");
        let mut keys = Vec::with_capacity(3 + 2 * tags.len());
        keys.push(full_key.to_owned());
        keys.push(self.class_generation_key(lease.class));
        keys.push(self.namespace_generation_key());
        keys.extend(tags.iter().map(|tag| self.tag_generation_key(tag)));
        keys.extend(tags.iter().map(|tag| self.tag_key(tag)));
        // As Redis hands them to the script: strings, and "" for a generation not set.
        let expected = |generation: Option<i64>| match generation {
            Some(generation) => Value::from(generation.to_string()),
            None => Value::from(""),
        };
        let mut args = lease_args(bytes, ttl_ms, lease.seen);
        args.push(expected(lease.flushes.class));
        args.push(expected(lease.flushes.namespace));
        args.extend(lease.generations.iter().map(|g| expected(*g)));
        let reply: Vec<Value> = self
            .client()
            .with_options(self.request_options())
            .eval(LEASE_SET_CHECKED, keys, args)
            .await?;
        let mut reply = reply.into_iter();
        let outcome = match reply.next().map(Value::convert::<i64>).transpose()? {
            Some(1) => WriteOutcome::Stored,
            Some(2) => WriteOutcome::Refused,
            _ => return Ok((WriteOutcome::Refused, None)),
        };
        Ok((outcome, Some(split_flushes(each(reply.collect())?).1)))
    }

    /// A write where its keys may live on several servers (a Cluster): the entry, then its
    /// membership in its tags' sets, then with a `lease` a read of the generations, which
    /// tells whether one moved since the load's read ([`WriteOutcome::Moved`]).
    async fn set_then_check(
        &self,
        full_key: &str,
        bytes: Vec<u8>,
        ttl_ms: i64,
        tags: &[Key],
        lease: Option<Leased<'_>>,
    ) -> Result<(WriteOutcome, Option<Flushes>), fred::error::Error> {
        let client = self.client().with_options(self.request_options());
        let written = match &lease {
            None => {
                client
                    .set::<(), _, _>(full_key, bytes, Some(Expiration::PX(ttl_ms)), None, false)
                    .await?;
                true
            }
            Some(lease) => {
                let args = lease_args(bytes, ttl_ms, lease.seen);
                client
                    .eval::<i64, _, _, _>(LEASE_SET, full_key, args)
                    .await?
                    == 1
            }
        };
        if !written {
            return Ok((WriteOutcome::Refused, None));
        }
        if !tags.is_empty() {
            // The entry exists before it joins its sets (they may be on other nodes, so the
            // write is awaited first): a tag invalidation that finds the membership also
            // finds the entry (see `bulk_delete`).
            let pipeline = self.client().pipeline();
            for tag in tags {
                let tag_key = self.tag_key(tag);
                pipeline
                    .sadd::<(), _, _>(tag_key.as_str(), full_key)
                    .await?;
                // A tag set lives as long as its longest-lived member: NX sets a first
                // TTL, GT only ever extends it.
                pipeline
                    .pexpire::<(), _>(tag_key.as_str(), ttl_ms, Some(ExpireOptions::NX))
                    .await?;
                pipeline
                    .pexpire::<(), _>(tag_key.as_str(), ttl_ms, Some(ExpireOptions::GT))
                    .await?;
            }
            pipeline.all::<Value>().await?;
        }
        let Some(lease) = lease else {
            return Ok((WriteOutcome::Stored, None));
        };
        // After the entry and its membership: a tag invalidation or a flush whose scan
        // missed them moved its generation before scanning, so this read sees the move.
        let pipeline = self.client().pipeline();
        self.queue_generations(&pipeline, tags).await?;
        self.queue_flushes(&pipeline, lease.class).await?;
        let (now, flushes) = split_flushes(each(pipeline.all::<Vec<Value>>().await?)?);
        let moved = now != lease.generations || flushes != lease.flushes;
        let outcome = match moved {
            true => WriteOutcome::Moved,
            false => WriteOutcome::Stored,
        };
        Ok((outcome, Some(flushes)))
    }

    /// Reads an entry and, in the same round trip, the generations of its `tags`, in order
    /// (`None`: not invalidated lately), and with `flushes_of` those of that class and of
    /// the namespace.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn get_leased(
        &self,
        full_key: &str,
        tags: &[Key],
        flushes_of: Option<&str>,
    ) -> Result<(Option<Bytes>, Vec<Option<i64>>, Option<Flushes>), Error> {
        if tags.is_empty() && flushes_of.is_none() {
            return Ok((self.get(full_key).await?, Vec::new(), None));
        }
        let pipeline = self.client().pipeline();
        // Boxed, as tagged reads are the fewer: the plain GET's future stays small.
        let read = Box::pin(async {
            pipeline.get::<(), _>(full_key).await?;
            self.queue_generations(&pipeline, tags).await?;
            if let Some(class) = flushes_of {
                self.queue_flushes(&pipeline, class).await?;
            }
            let mut replies = pipeline.all::<Vec<Value>>().await?.into_iter();
            let entry = replies.next().unwrap_or(Value::Null).convert()?;
            let generations = each(replies.collect())?;
            Ok(match flushes_of {
                None => (entry, generations, None),
                Some(_) => {
                    let (generations, flushes) = split_flushes(generations);
                    (entry, generations, Some(flushes))
                }
            })
        });
        self.bounded("PIPELINE", || read).await
    }

    /// The generations of `tags`, in order, read after the entry whose read began at
    /// `read_at`, within what is left of that read's deadline: the two wait no longer than
    /// one command deadline together.
    pub(crate) async fn generations_after(
        &self,
        tags: &[Key],
        read_at: Instant,
    ) -> Result<Vec<Option<i64>>, Error> {
        let left = self.command_deadline().saturating_sub(read_at.elapsed());
        let read = Box::pin(async move {
            let pipeline = self.client().pipeline();
            self.queue_generations(&pipeline, tags).await?;
            each(pipeline.all::<Vec<Value>>().await?)
        });
        self.bounded_within("PIPELINE", left, read).await
    }

    /// Queues a GET of `class`'s generation, then of the namespace's.
    async fn queue_flushes(
        &self,
        pipeline: &Pipeline<Client>,
        class: &str,
    ) -> Result<(), fred::error::Error> {
        pipeline
            .get::<(), _>(self.class_generation_key(class))
            .await?;
        pipeline.get::<(), _>(self.namespace_generation_key()).await
    }

    /// Queues a GET of each tag's generation, in order.
    async fn queue_generations(
        &self,
        pipeline: &Pipeline<Client>,
        tags: &[Key],
    ) -> Result<(), fred::error::Error> {
        for tag in tags {
            pipeline.get::<(), _>(self.tag_generation_key(tag)).await?;
        }
        Ok(())
    }

    /// Moves `tag`'s generation to a value no generation ever held, before its entries are
    /// deleted.
    pub(crate) async fn bump_tag_generation(&self, tag: &Key) -> Result<(), Error> {
        let key = self.tag_generation_key(tag);
        let ttl = Some(Expiration::PX(ttl_ms(LEASE_TTL)));
        let bump = self.bump("SET", || {
            // Two's complement: any 64 bits make a generation, as long as they are new.
            let generation = nonce() as i64;
            let set =
                self.client()
                    .set::<(), _, _>(key.as_str(), generation, ttl.clone(), None, false);
            async move { set.await.map(|()| generation) }
        });
        // Boxed: it is nested in every invalidation's future, and so in every request path
        // that invalidates, where the compiler bounds how deep a type may go.
        Box::pin(bump).await.map(|_| ())
    }

    /// Moves a class's or the namespace's generation (`key`), before a flush deletes
    /// anything; returns the new generation. No expiry: see [`Flushes`].
    pub(crate) async fn bump_flush_generation(&self, key: &str) -> Result<i64, Error> {
        Box::pin(self.bump("INCR", || self.client().incr::<i64, _>(key))).await
    }

    /// Runs a generation's bump. fred gives up on a command after the request deadline
    /// whatever it is told, so a frozen server is waited for by asking again (a repeated
    /// bump is harmless) until the maintenance deadline.
    async fn bump<F: Future<Output = Result<i64, fred::error::Error>>>(
        &self,
        op: &'static str,
        bump: impl Fn() -> F,
    ) -> Result<i64, Error> {
        let give_up = tokio::time::Instant::now() + self.maintenance_deadline();
        loop {
            match self.maintenance(op, bump()).await {
                Ok(generation) => return Ok(generation),
                Err(Error::Redis {
                    kind: RedisErrorKind::Timeout,
                    ..
                }) if tokio::time::Instant::now() < give_up => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Replaces each of `keys` by `tombstone` for [`LEASE_TTL`]: removed for readers, and a
    /// load that read before this cannot write its value back. Counts the keys that held
    /// something other than a tombstone.
    pub(crate) async fn bury(
        &self,
        keys: Vec<String>,
        tombstone: Bytes,
        is_tombstone: fn(&[u8]) -> bool,
    ) -> Result<Removed, Error> {
        if keys.is_empty() {
            return Ok(Removed::default());
        }
        let previous = self
            .maintenance("PIPELINE", bury(self.client(), &keys, tombstone))
            .await?;
        let keys = previous
            .iter()
            .flatten()
            .filter(|old| !is_tombstone(old))
            .count() as u64;
        Ok(Removed { keys })
    }
}

/// SET each key to `tombstone` for [`LEASE_TTL`], returning what each held.
async fn bury(
    client: &fred::clients::Client,
    keys: &[String],
    tombstone: Bytes,
) -> Result<Vec<Option<Bytes>>, fred::error::Error> {
    let pipeline = client.pipeline();
    let ttl = ttl_ms(LEASE_TTL);
    for key in keys {
        pipeline
            .set::<(), _, _>(
                key.as_str(),
                tombstone.clone(),
                Some(Expiration::PX(ttl)),
                None,
                true,
            )
            .await?;
    }
    each(pipeline.all::<Vec<Value>>().await?)
}

/// Converts each reply of a pipeline.
fn each<T: fred::types::FromValue>(replies: Vec<Value>) -> Result<Vec<T>, fred::error::Error> {
    replies.into_iter().map(Value::convert).collect()
}

//! Trimming a tag's set: members whose entry has expired are removed, so that a tag carried
//! by one short-lived entry per request (a path tag over distinct queries) cannot grow
//! without bound. Each write extends the set's TTL and only a tag invalidation empties it.
//!
//! A sample of members is checked, not the whole set: with one trim every few writes of a
//! tag, dead members stay a bounded fraction of the set, and each trim costs a bounded
//! number of commands whatever the set's size.
//!
//! Removing a member races with a write of its entry. A writer sets the entry *then* adds it
//! to the set, so:
//! - an entry written after the second existence check below is added back by its own
//!   writer, after the removal;
//! - one written between the first check and the second is seen by the second check and
//!   added back here;
//! - a tag invalidation scanning the set between the removal and the adding back would miss
//!   such an entry. It moves the tag's generation before it scans, so if the generation
//!   moved between before the removal and after the adding back, the entries added back are
//!   returned to be buried (removed for readers, as an invalidation removes them).

use fred::prelude::{KeysInterface, SetsInterface};
use fred::types::Value;

use super::bulk_delete::strings;
use super::RedisStore;
use crate::error::Error;
use crate::key::Key;

impl RedisStore {
    /// Removes from `tag`'s set up to `sample` members whose entry is gone. Returns the full
    /// keys that must be buried (see the module docs); usually none.
    pub(crate) async fn trim_tag(&self, tag: &Key, sample: usize) -> Result<Vec<String>, Error> {
        let tag_key = self.tag_key(tag);
        let generation_key = self.tag_generation_key(tag);
        let before: Option<i64> = self
            .maintenance("GET", self.client.get(generation_key.as_str()))
            .await?;
        let members: Option<Vec<Value>> = self
            .maintenance(
                "SRANDMEMBER",
                self.client.srandmember(tag_key.as_str(), Some(sample)),
            )
            .await?;
        let members = strings(members);
        let dead = self.absent(members).await?;
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let _: i64 = self
            .maintenance("SREM", self.client.srem(tag_key.as_str(), dead.clone()))
            .await?;
        let gone = self.absent(dead.clone()).await?;
        let revived: Vec<String> = dead.into_iter().filter(|k| !gone.contains(k)).collect();
        if revived.is_empty() {
            return Ok(Vec::new());
        }
        let _: i64 = self
            .maintenance("SADD", self.client.sadd(tag_key.as_str(), revived.clone()))
            .await?;
        let after: Option<i64> = self
            .maintenance("GET", self.client.get(generation_key.as_str()))
            .await?;
        Ok(if after == before { Vec::new() } else { revived })
    }

    /// Those of `keys` that do not exist, one EXISTS each (on a Cluster they live on several
    /// nodes).
    async fn absent(&self, keys: Vec<String>) -> Result<Vec<String>, Error> {
        if keys.is_empty() {
            return Ok(keys);
        }
        let pipeline = self.client.pipeline();
        let queue = async {
            for key in &keys {
                pipeline.exists::<(), _>(key.as_str()).await?;
            }
            pipeline.all::<Vec<Value>>().await
        };
        let replies = self.maintenance("PIPELINE", queue).await?;
        let mut absent = Vec::new();
        for (key, reply) in keys.into_iter().zip(replies) {
            if reply.convert::<i64>().map_err(Error::from)? == 0 {
                absent.push(key);
            }
        }
        Ok(absent)
    }
}

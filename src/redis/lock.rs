//! The Redis lock behind distributed stampede protection: one load of a key across every
//! instance.
//!
//! `SET ns:~lock:class:key token NX PX ttl` takes it; the lock's TTL bounds how long a dead
//! holder blocks anyone. Release is compare-and-delete in Lua, so a holder whose lock already
//! expired never deletes its successor's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::{Expiration, KeysInterface, LuaInterface, SetOptions};
use fred::types::Value;

use super::RedisStore;
use crate::error::Error;
use crate::key::Key;

/// Deletes the lock only if it still holds our token.
const RELEASE: &str =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// A lock taken in Redis; release it with [`LockGuard::release`]. Dropped unreleased (the
/// holder was cancelled), it releases itself in the background.
pub(crate) struct LockGuard {
    client: Option<fred::clients::Client>,
    key: String,
    token: String,
}

/// A token no other holder, in this process or another, will use.
fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!(
        "{:016x}-{}",
        h.finish(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl RedisStore {
    /// `ns:~lock:class:key`.
    pub(crate) fn lock_key(&self, class: &str, key: &Key) -> String {
        format!("{}~lock:{class}:{}", self.prefix(), key.as_str())
    }

    /// Tries once to take the lock; `Ok(None)` if another holder has it.
    pub(crate) async fn try_lock(
        &self,
        lock_key: &str,
        ttl: Duration,
        deadline: Duration,
    ) -> Result<Option<LockGuard>, Error> {
        let token = token();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let set = self.client().set::<Value, _, _>(
            lock_key,
            token.as_str(),
            Some(Expiration::PX(ttl_ms)),
            Some(SetOptions::NX),
            false,
        );
        let taken = match tokio::time::timeout(deadline, set).await {
            Ok(result) => !result.map_err(Error::from)?.is_null(),
            Err(_) => return Err(Error::redis_timeout("lock", deadline)),
        };
        Ok(taken.then(|| LockGuard {
            client: Some(self.client().clone()),
            key: lock_key.to_owned(),
            token,
        }))
    }
}

impl LockGuard {
    /// Releases the lock now, if it is still ours.
    pub(crate) async fn release(mut self, deadline: Duration) {
        if let Some(client) = self.client.take() {
            let release =
                client.eval::<i64, _, _, _>(RELEASE, self.key.as_str(), self.token.as_str());
            if let Ok(Err(error)) = tokio::time::timeout(deadline, release).await {
                tracing::debug!(%error, key = %self.key, "lock not released; it expires by itself");
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let (Some(client), Ok(runtime)) =
            (self.client.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        runtime.spawn(async move {
            let release = client.eval::<i64, _, _, _>(RELEASE, key.as_str(), token.as_str());
            let _ = tokio::time::timeout(Duration::from_secs(1), release).await;
        });
    }
}

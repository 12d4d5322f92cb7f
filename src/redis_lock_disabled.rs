//! Without the `redis` feature there is no lock to share between instances.

#![allow(dead_code)]

use std::time::Duration;

use crate::error::Error;
use crate::key::Key;
use crate::redis_store::RedisStore;

/// Uninhabited: no lock is ever taken without Redis.
pub(crate) enum LockGuard {}

impl RedisStore {
    pub(crate) fn lock_key(&self, _: &str, _: &Key) -> String {
        match *self {}
    }
    pub(crate) async fn try_lock(
        &self,
        _: &str,
        _: Duration,
        _: Duration,
    ) -> Result<Option<LockGuard>, Error> {
        match *self {}
    }
}

impl LockGuard {
    pub(crate) async fn release(self, _: Duration) {
        match self {}
    }
}

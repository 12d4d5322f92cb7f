//! Without the `redis` feature there is no channel between instances.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use crate::cache::Inner;
use crate::error::Error;
use crate::invalidation::Invalidation;
use crate::redis_store::{RedisSettings, RedisStore};
use crate::status::BackplaneStatus;

/// Uninhabited: no value of it exists without Redis.
pub(crate) enum Backplane {}

impl Backplane {
    pub(crate) fn is_connected(&self) -> bool {
        match *self {}
    }
    pub(crate) async fn publish(&self, _: &Inner, _: &Invalidation) -> Result<(), Error> {
        match *self {}
    }
    pub(crate) fn for_store(store: &RedisStore, _: &str, _: Duration, _: Duration) -> Self {
        match *store {}
    }
    pub(crate) fn status(&self) -> BackplaneStatus {
        match *self {}
    }
    pub(crate) async fn log_replay(&self, _: &Inner, _: &[Invalidation]) -> Result<(), Error> {
        match *self {}
    }
}

pub(crate) fn spawn(_: &Arc<Inner>, _: &RedisSettings) {}

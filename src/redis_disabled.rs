//! Stand-in for the Redis store when the `redis` feature is off.
//!
//! The type has no values, so every method body is `match *self {}`: the compiler proves
//! that no Redis code path runs, and the rest of the crate needs no `cfg` of its own.

#![allow(dead_code)] // the store is never built without Redis

use std::time::Duration;

use bytes::Bytes;

use crate::error::Error;
use crate::key::Key;
pub(crate) use crate::redis_settings::RedisSettings;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) keys: u64,
}

pub(crate) enum RedisStore {}

impl RedisStore {
    pub(crate) fn connect(_: &RedisSettings, _: &str) -> Result<Self, Error> {
        Err(Error::RedisDisabled)
    }
    pub(crate) fn entry_key(&self, _: &str, _: &Key) -> String {
        match *self {}
    }
    pub(crate) fn class_pattern(&self, _: &str) -> String {
        match *self {}
    }
    pub(crate) fn namespace_pattern(&self) -> String {
        match *self {}
    }
    pub(crate) async fn get(&self, _: &str) -> Result<Option<Bytes>, Error> {
        match *self {}
    }
    pub(crate) async fn set(
        &self,
        _: &str,
        _: Vec<u8>,
        _: Duration,
        _: &[Key],
    ) -> Result<(), Error> {
        match *self {}
    }
    pub(crate) async fn unlink(&self, _: Vec<String>) -> Result<Removed, Error> {
        match *self {}
    }
    pub(crate) async fn invalidate_tag(&self, _: &Key) -> Result<Removed, Error> {
        match *self {}
    }
    pub(crate) async fn flush_pattern(&self, _: &str) -> Result<Removed, Error> {
        match *self {}
    }
}

pub(crate) type ErrorEvents = tokio::sync::broadcast::Receiver<(String, Option<()>)>;
pub(crate) type ReconnectEvents = tokio::sync::broadcast::Receiver<()>;

impl RedisStore {
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        match *self {}
    }
    pub(crate) async fn write_heartbeat(&self) -> Result<(), Error> {
        match *self {}
    }
    pub(crate) async fn heartbeat_age(&self) -> Result<Option<Duration>, Error> {
        match *self {}
    }
    pub(crate) fn events(&self) -> (ErrorEvents, ReconnectEvents) {
        match *self {}
    }
}

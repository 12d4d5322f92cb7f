//! The stand-in for builds without the `redis` feature.
//!
//! Each type has no values, so each method body is `match *self {}`: the compiler proves
//! that no Redis path runs, and the layers above compile unchanged. Only
//! [`RedisStore::connect`] and [`master_switches`] can be called, and they say there is no
//! Redis.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Flushes, Heartbeats, Leased, RedisSettings, Removed, WriteOutcome};
use crate::error::Error;
use crate::key::Key;

/// Uninhabited: no Redis without the feature.
pub(crate) enum RedisStore {}

impl RedisStore {
    pub(crate) fn connect(_: &RedisSettings, _: &str) -> Result<Self, Error> {
        Err(Error::RedisDisabled)
    }
    pub(crate) fn reporting_commands_to(self, _: metrics::Histogram) -> Self {
        match self {}
    }
    pub(crate) fn entry_key(&self, _: &str, _: &Key) -> String {
        match *self {}
    }
    pub(crate) fn lock_key(&self, _: &str, _: &Key) -> String {
        match *self {}
    }
    pub(crate) fn class_pattern(&self, _: &str) -> String {
        match *self {}
    }
    pub(crate) fn namespace_pattern(&self) -> String {
        match *self {}
    }
    pub(crate) async fn trim_tag(&self, _: &Key, _: usize) -> Result<Vec<String>, Error> {
        match *self {}
    }
    pub(crate) async fn get(&self, _: &str) -> Result<Option<Bytes>, Error> {
        match *self {}
    }
    pub(crate) fn checks_after_write(&self) -> bool {
        match *self {}
    }
    pub(crate) async fn set_if(
        &self,
        _: &str,
        _: Vec<u8>,
        _: Duration,
        _: &[Key],
        _: Option<Leased<'_>>,
    ) -> Result<(WriteOutcome, Option<Flushes>), Error> {
        match *self {}
    }
    #[allow(clippy::type_complexity)]
    pub(crate) async fn get_leased(
        &self,
        _: &str,
        _: &[Key],
        _: Option<&str>,
    ) -> Result<(Option<Bytes>, Vec<Option<i64>>, Option<Flushes>), Error> {
        match *self {}
    }
    pub(crate) async fn generations_after(
        &self,
        _: &[Key],
        _: std::time::Instant,
    ) -> Result<Vec<Option<i64>>, Error> {
        match *self {}
    }
    pub(crate) async fn bury(
        &self,
        _: Vec<String>,
        _: Bytes,
        _: fn(&[u8]) -> bool,
    ) -> Result<Removed, Error> {
        match *self {}
    }

    pub(crate) async fn unlink(&self, _: Vec<String>) -> Result<Removed, Error> {
        match *self {}
    }
    pub(crate) async fn invalidate_tag(&self, _: &Key) -> Result<Removed, Error> {
        match *self {}
    }
    pub(crate) async fn flush_class(&self, _: &str) -> Result<(Removed, i64), Error> {
        match *self {}
    }
    pub(crate) async fn flush_pattern(&self, _: &str) -> Result<Removed, Error> {
        match *self {}
    }
    pub(crate) async fn flush_namespace(&self) -> Result<(Removed, i64), Error> {
        match *self {}
    }
    pub(crate) fn invalidation_log_key(&self) -> String {
        match *self {}
    }
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        match *self {}
    }
    pub(crate) async fn write_heartbeat(&self, _: bool) -> Result<bool, Error> {
        match *self {}
    }
    pub(crate) async fn heartbeats(&self) -> Result<Heartbeats, Error> {
        match *self {}
    }
    pub(crate) fn events(&self) -> ConnectionEvents {
        match *self {}
    }
    pub(crate) async fn force_reconnection(&self, _: Duration) -> Result<(), Error> {
        match *self {}
    }
    pub(crate) async fn publish(&self, _: &str, _: Bytes) -> Result<(), Error> {
        match *self {}
    }
    pub(crate) async fn publish_logged(
        &self,
        _: &str,
        _: &str,
        _: Bytes,
        _: i64,
        _: Duration,
    ) -> Result<(), Error> {
        match *self {}
    }
    pub(crate) async fn read_log(&self, _: &str) -> Result<Vec<Bytes>, Error> {
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

/// Uninhabited: no lock is taken without Redis.
pub(crate) enum LockGuard {}

impl LockGuard {
    pub(crate) async fn release(self, _: Duration) {
        match self {}
    }
}

/// Uninhabited: no connection, no events.
pub(crate) enum ConnectionEvents {}

impl ConnectionEvents {
    pub(crate) async fn next(&mut self) -> Option<ConnectionEvent> {
        match *self {}
    }
}

/// A connection event (never produced without Redis).
#[derive(Debug)]
pub(crate) enum ConnectionEvent {
    Lost(Error),
    Connected,
}

/// Uninhabited: no channel without Redis.
pub(crate) enum Subscriber {}

/// What happens on a subscriber connection (never produced without Redis).
#[derive(Debug)]
pub(crate) enum SubscriberEvent {
    Message(Bytes),
    Lagged(u64),
    Reconnected,
    Failed,
    Closed,
}

impl Subscriber {
    pub(crate) fn connect(_: &RedisSettings) -> Result<Self, Error> {
        Err(Error::RedisDisabled)
    }
    pub(crate) async fn next_event(&mut self) -> SubscriberEvent {
        match *self {}
    }
    pub(crate) fn caught_up(&self) -> bool {
        match *self {}
    }
    pub(crate) async fn subscribe(&self, _: &str, _: Duration) -> bool {
        match *self {}
    }
    pub(crate) async fn force_reconnection(&self, _: Duration) {
        match *self {}
    }
    pub(crate) async fn quit(self) {
        match self {}
    }
}

/// No Sentinel to listen to.
pub(crate) fn master_switches(_: &str) -> Option<mpsc::Receiver<String>> {
    None
}

//! A pub/sub subscriber on its own connection, for the invalidation channel.
//!
//! Subscribed connections cannot run other commands, so the channel gets a client of its own,
//! with the same reconnection policy and deadlines as the store's. fred reports messages,
//! reconnections and errors on three broadcast channels; [`Subscriber::next_event`] merges
//! them into one stream of [`SubscriberEvent`]s, so the channel's owner needs no fred type.

use std::time::Duration;

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy,
};
use fred::types::Message;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::RedisSettings;
use crate::error::Error;

/// What happened on the subscriber's connection.
#[derive(Debug)]
pub(crate) enum SubscriberEvent {
    /// A message's payload (messages that carry no bytes are skipped).
    Message(Bytes),
    /// This many messages were lost to a slow reader.
    Lagged(u64),
    /// The connection was re-established: subscriptions must be renewed.
    Reconnected,
    /// The connection failed.
    Failed,
    /// The client is gone.
    Closed,
}

/// Messages fred keeps for a reader that is behind.
const MESSAGE_BUFFER: usize = 4096;

/// One subscriber connection.
pub(crate) struct Subscriber {
    client: SubscriberClient,
    messages: Receiver<Message>,
    reconnects: Receiver<fred::types::config::Server>,
    errors: Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
}

/// A builder for a connection that receives what Redis pushes (messages, tracking reports):
/// reconnected forever at the store's pace, with the store's connect timeout, and a
/// broadcast channel of `buffer` pushes between fred and the reader.
pub(super) fn channel_builder(settings: &RedisSettings, config: Config, buffer: usize) -> Builder {
    let mut builder = Builder::from_config(config);
    let delay_ms = u32::try_from(settings.reconnect_delay.as_millis()).unwrap_or(u32::MAX);
    // 0 attempts = retry forever, as for the store.
    builder.set_policy(ReconnectPolicy::new_constant(0, delay_ms.max(1)));
    builder.with_connection_config(|conn| {
        conn.connection_timeout = settings.connect_timeout;
        conn.internal_command_timeout = settings.connect_timeout;
    });
    builder.with_performance_config(|perf| {
        perf.broadcast_channel_capacity = buffer;
    });
    builder
}

impl Subscriber {
    /// Builds the client and starts connecting in the background.
    pub(crate) fn connect(settings: &RedisSettings) -> Result<Self, Error> {
        let config = Config::from_url(&settings.url)?;
        // fred hands messages over on a broadcast channel of 32 by default: a burst of peer
        // invalidations (a membership change invalidates a tag on every instance) outruns the
        // reader while it applies them, and what overflows is lost. The owner catches up from
        // the invalidation log when that happens, but that reads the whole log: a few thousand
        // make it rare, at a few pointers each.
        let client = channel_builder(settings, config, MESSAGE_BUFFER).build_subscriber_client()?;
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        let errors = client.error_rx();
        // Runs the connection (and its reconnections) for the client's life.
        let _connection = client.connect();
        Ok(Subscriber {
            client,
            messages,
            reconnects,
            errors,
        })
    }

    /// The next event on the connection.
    pub(crate) async fn next_event(&mut self) -> SubscriberEvent {
        loop {
            tokio::select! {
                message = self.messages.recv() => match message {
                    Ok(message) => match message.value.into_bytes() {
                        Some(bytes) => return SubscriberEvent::Message(bytes),
                        None => continue,
                    },
                    Err(RecvError::Lagged(n)) => return SubscriberEvent::Lagged(n),
                    Err(RecvError::Closed) => return SubscriberEvent::Closed,
                },
                event = self.reconnects.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => return SubscriberEvent::Reconnected,
                    Err(RecvError::Closed) => return SubscriberEvent::Closed,
                },
                event = self.errors.recv() => match event {
                    Ok(_) | Err(RecvError::Lagged(_)) => return SubscriberEvent::Failed,
                    Err(RecvError::Closed) => return SubscriberEvent::Closed,
                },
            }
        }
    }

    /// Whether every message received so far has been read: none waits in the buffer.
    pub(crate) fn caught_up(&self) -> bool {
        self.messages.is_empty()
    }

    /// SUBSCRIBEs to `channel`; false if it failed or took longer than `deadline`.
    pub(crate) async fn subscribe(&self, channel: &str, deadline: Duration) -> bool {
        match tokio::time::timeout(deadline, self.client.subscribe(channel)).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(%error, "subscription failed; retrying");
                false
            }
            Err(_) => false,
        }
    }

    /// Drops the connection and makes a new one (a silent connection is not noticed
    /// otherwise).
    pub(crate) async fn force_reconnection(&self, deadline: Duration) {
        let _ = tokio::time::timeout(deadline, self.client.force_reconnection()).await;
    }

    /// Closes the connection.
    pub(crate) async fn quit(self) {
        let _ = self.client.quit().await;
    }
}

//! Sentinel's `+switch-master` announcements, as a stream of new masters.
//!
//! fred asks Sentinel for the master only when it (re)connects. After a manual failover with
//! the old master still alive, it keeps writing to the old master — which is demoted about
//! ten seconds later, losing those writes (measured with fred 10.1: ~11 s). So the cache
//! listens to `+switch-master` on every Sentinel and moves by itself; this module only
//! turns the announcements into "the master is now host:port", once per switch.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy,
};
use fred::types::config::ServerConfig;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

const CHANNEL: &str = "+switch-master";

/// The new masters Sentinel announces for a `redis-sentinel://` URL, each once (every
/// Sentinel announces the same switch); `None` for any other URL. The listeners stop when
/// the receiver is dropped.
pub(crate) fn master_switches(url: &str) -> Option<mpsc::Receiver<String>> {
    let config = Config::from_url(url).ok()?;
    let ServerConfig::Sentinel {
        hosts,
        service_name,
        ..
    } = &config.server
    else {
        return None;
    };
    let (tx, rx) = mpsc::channel(8);
    let last_switch = Arc::new(Mutex::new(None::<String>));
    for host in hosts {
        let sentinel = Config {
            server: ServerConfig::Centralized {
                server: host.clone(),
            },
            password: config.password.clone(),
            ..Config::default()
        };
        let mut builder = Builder::from_config(sentinel);
        builder.set_policy(ReconnectPolicy::new_constant(0, 500));
        builder.with_connection_config(|c| c.connection_timeout = Duration::from_secs(1));
        let subscriber = match builder.build_subscriber_client() {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, sentinel = %host, "cannot watch this Sentinel");
                continue;
            }
        };
        tokio::spawn(listen(
            subscriber,
            service_name.clone(),
            tx.clone(),
            Arc::clone(&last_switch),
        ));
    }
    Some(rx)
}

async fn listen(
    subscriber: SubscriberClient,
    service: String,
    switches: mpsc::Sender<String>,
    last_switch: Arc<Mutex<Option<String>>>,
) {
    let _connection = subscriber.connect();
    // Re-subscribes after every reconnection.
    let _resubscribe = subscriber.manage_subscriptions();
    let mut messages = subscriber.message_rx();
    while !switches.is_closed() {
        if subscriber.subscribe(CHANNEL).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop {
        let message = match tokio::time::timeout(Duration::from_secs(1), messages.recv()).await {
            Err(_) if switches.is_closed() => break,
            Err(_) => continue,
            Ok(Err(RecvError::Lagged(_))) => continue,
            Ok(Err(RecvError::Closed)) => break,
            Ok(Ok(message)) => message,
        };
        // "<service> <old-ip> <old-port> <new-ip> <new-port>"
        let Some(text) = message.value.as_string() else {
            continue;
        };
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 || parts[0] != service {
            continue;
        }
        let new_master = format!("{}:{}", parts[3], parts[4]);
        {
            let mut last = last_switch.lock().unwrap_or_else(PoisonError::into_inner);
            if last.as_deref() == Some(new_master.as_str()) {
                continue;
            }
            *last = Some(new_master.clone());
        }
        if switches.send(new_master).await.is_err() {
            break;
        }
    }
    let _ = subscriber.quit().await;
}

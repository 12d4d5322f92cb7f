//! Following Sentinel's `+switch-master`, so writes stop going to a demoted master.
//!
//! fred asks Sentinel for the master only when it (re)connects. After a manual failover with
//! the old master still alive, it keeps writing to the old master — which is demoted about
//! ten seconds later, losing those writes (measured: ~11 s; see the shared notes). For a
//! cache the lost writes that matter are invalidations: a lost DEL resurrects stale data on
//! every instance. So this module subscribes to `+switch-master` on every Sentinel, and on a
//! switch forces fred to reconnect (it then asks Sentinel again and lands on the new master)
//! and re-applies the invalidations of the last `failover_replay_window`.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy,
};
use fred::types::config::ServerConfig;

use crate::cache::Inner;

const CHANNEL: &str = "+switch-master";

/// Starts one subscriber per Sentinel for a `redis-sentinel://` URL; nothing otherwise.
pub(crate) fn spawn(inner: &Arc<Inner>, url: Option<&str>) {
    let Some(config) = url.and_then(|u| Config::from_url(u).ok()) else {
        return;
    };
    let ServerConfig::Sentinel {
        hosts,
        service_name,
        ..
    } = &config.server
    else {
        return;
    };
    // Every Sentinel announces the same switch; act on each new master once.
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
        tokio::spawn(watch(
            subscriber,
            service_name.clone(),
            Arc::downgrade(inner),
            Arc::clone(&last_switch),
        ));
    }
}

async fn watch(
    subscriber: SubscriberClient,
    service: String,
    cache: Weak<Inner>,
    last_switch: Arc<Mutex<Option<String>>>,
) {
    let _connection = subscriber.connect();
    // Re-subscribes after every reconnection.
    let _resubscribe = subscriber.manage_subscriptions();
    let mut messages = subscriber.message_rx();
    while cache.strong_count() > 0 {
        if subscriber.subscribe(CHANNEL).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    loop {
        let message = match tokio::time::timeout(Duration::from_secs(1), messages.recv()).await {
            Err(_) if cache.strong_count() == 0 => break,
            Err(_) => continue,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
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
        let Some(inner) = cache.upgrade() else { break };
        on_switch(&inner, &new_master).await;
    }
    let _ = subscriber.quit().await;
}

async fn on_switch(inner: &Inner, new_master: &str) {
    let Some(redis) = inner.redis.as_ref() else {
        return;
    };
    tracing::warn!(
        new_master,
        "Sentinel switched masters; moving to the new master"
    );
    let reconnect = redis.client().force_reconnection();
    if tokio::time::timeout(Duration::from_secs(2), reconnect)
        .await
        .map_or(true, |r| r.is_err())
    {
        inner.health.trip("reconnecting to the new master failed");
    }
    let recent = inner.journal.recent();
    let mut replayed = 0usize;
    for inv in recent {
        match inner.apply_redis(&inv).await {
            Ok(_) => replayed += 1,
            Err(_) => {
                inner.journal.push(inv);
            }
        }
    }
    tracing::info!(
        replayed,
        "recent invalidations re-applied to the new master"
    );
    inner.health.poke();
}

//! Metrics and events, read back the way an operator sees them: the `metrics` facade's
//! Prometheus exporter's text, and `Cache::events()`.
//!
//! One recorder for the whole binary (the facade has one global recorder); each test uses
//! its own namespace, and every series carries it.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use stormcache::{Cache, CacheEvent, Class, EntryOptions, Invalidation, Key};

fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this test binary")
    })
}

/// The value of the series `name` whose labels include `labels`, from Prometheus text.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name).then_some((rest, value))
        })
        .find(|(rest, _)| {
            labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
}

fn key(name: &str) -> Key {
    Key::literal(name).expect("valid key")
}

#[tokio::test]
async fn reads_invalidations_and_gauges_are_reported_without_redis() {
    let prometheus = prometheus();
    let cache = Cache::builder("m_local")
        .class(Class::new("sessions").volatile())
        .build()
        .expect("valid configuration");
    let opts = EntryOptions::new().class("sessions");
    let _: u32 = cache.get_or_load(key("s:1"), &opts, || async { 1 }).await;
    let _: u32 = cache.get_or_load(key("s:1"), &opts, || async { 1 }).await;
    let _: u32 = cache.get_or_load(key("s:1"), &opts, || async { 1 }).await;
    cache.invalidate(&Invalidation::new().key(key("s:1"))).await;
    cache.publish_metrics();

    let text = prometheus.render();
    let ns = ("namespace", "m_local");
    let sessions = ("class", "sessions");
    assert_eq!(
        value(
            &text,
            "stormcache_requests_total",
            &[ns, sessions, ("result", "miss")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "stormcache_requests_total",
            &[ns, sessions, ("result", "l1_hit")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "stormcache_loader_duration_seconds_count",
            &[ns, sessions]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "stormcache_invalidations_total",
            &[ns, ("outcome", "local_only")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "stormcache_breaker_state", &[ns]),
        Some(3.0),
        "local only"
    );
    assert_eq!(value(&text, "stormcache_local_entries", &[ns]), Some(0.0));
    assert!(
        text.contains("# HELP stormcache_requests_total"),
        "described: {text}"
    );
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_seen_in_metrics_and_events() {
    use stormcache::FlushScope;
    use support::caches::{fast_redis_builder, wait_redis_ready};
    use support::{until, RedisServer};

    let prometheus = prometheus();
    let server = RedisServer::start();
    let cache = fast_redis_builder("m_redis", server.url(), Duration::from_millis(100))
        .build()
        .expect("valid configuration");
    let mut events = cache.events();
    wait_redis_ready(&cache, Duration::from_secs(20)).await;
    let reader = fast_redis_builder("m_redis", server.url(), Duration::from_millis(100))
        .build()
        .expect("valid configuration");
    wait_redis_ready(&reader, Duration::from_secs(20)).await;
    let opts = EntryOptions::new();
    let _: u32 = cache.get_or_load(key("k"), &opts, || async { 7 }).await;
    let _: u32 = reader.get_or_load(key("k"), &opts, || async { 8 }).await;

    server.kill();
    until("the breaker to open", Duration::from_secs(5), || {
        !cache.redis_in_use()
    })
    .await;
    server.restart();
    until("recovery", Duration::from_secs(20), || {
        cache.redis_in_use() && cache.status().last_outage.is_some()
    })
    .await;

    let mut opened = None;
    let mut recovered = None;
    while let Ok(event) = events.try_recv() {
        match event {
            CacheEvent::BreakerOpened { reason } => opened = opened.or(Some(reason)),
            CacheEvent::Recovered { outage } => recovered = Some(outage),
            _ => {}
        }
    }
    assert!(opened.is_some(), "the breaker's opening was told");
    let outage = recovered.expect("the recovery was told");
    assert_eq!(outage.scope, FlushScope::Nothing, "a short outage");
    assert_eq!(cache.status().outages.last(), Some(&outage));

    let text = prometheus.render();
    let ns = ("namespace", "m_redis");
    assert!(
        value(
            &text,
            "stormcache_requests_total",
            &[ns, ("class", "default"), ("result", "l2_hit")]
        )
        .is_some_and(|n| n >= 1.0),
        "the reader's hit: {text}"
    );
    for to in ["down", "recovering", "healthy"] {
        assert!(
            value(
                &text,
                "stormcache_breaker_transitions_total",
                &[ns, ("to", to)]
            )
            .is_some_and(|n| n >= 1.0),
            "a transition to {to}: {text}"
        );
    }
    assert!(value(
        &text,
        "stormcache_recoveries_total",
        &[ns, ("scope", "nothing")]
    )
    .is_some_and(|n| n >= 1.0));
    assert!(
        value(
            &text,
            "stormcache_redis_command_duration_seconds_count",
            &[ns]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            "stormcache_invalidation_propagation_seconds_count",
            &[ns]
        )
        .is_some_and(|n| n >= 1.0),
        "the channel's pings came back"
    );
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn an_http_request_the_layer_does_not_serve_counts_as_a_bypass() {
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use axum::Router;
    use stormcache::layer::CacheLayer;
    use tower::ServiceExt;

    let prometheus = prometheus();
    let cache = Cache::builder("m_http")
        .build()
        .expect("valid configuration");
    let app = Router::new().route(
        "/r",
        get(|| async { "body" }).route_layer(CacheLayer::new(cache.clone())),
    );
    for no_store in [false, false, true] {
        let mut req = Request::get("/r");
        if no_store {
            req = req.header("cache-control", "no-store");
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert!(res.status().is_success());
    }
    let text = prometheus.render();
    let ns = ("namespace", "m_http");
    let result = |r| value(&text, "stormcache_requests_total", &[ns, ("result", r)]);
    assert_eq!(
        (result("miss"), result("l1_hit"), result("bypass")),
        (Some(1.0), Some(1.0), Some(1.0)),
        "{text}"
    );
}

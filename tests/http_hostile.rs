//! `CacheLayer` under hostile traffic, through the real stack (an axum app on `127.0.0.1:0`, a
//! hyper client): request `no-cache` coalesced and rate-limited per key, the local store
//! bounded in bytes by default, query parameters left out of the key, and a per-layer cap on
//! entries (also with a real Redis behind it).
#![cfg(feature = "axum")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use stormcache::layer::{CacheLayer, DEFAULT_REQUEST_NO_CACHE_INTERVAL};
use stormcache::{Cache, LocalCapacity};
use support::http::{self, Served};
use tokio::sync::watch;

/// Serves `app` on `127.0.0.1:0`; each request gets 20 s.
async fn serve(app: Router) -> Served {
    http::serve_within(app, Duration::from_secs(20)).await
}

/// A handler whose answers are `call <n>`, fresh for 60 s, that waits while its gate is
/// closed, and counts its calls.
#[derive(Clone)]
struct Gated {
    calls: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    cache_control: &'static str,
}

impl Gated {
    fn new() -> Gated {
        Gated::answering("max-age=60")
    }

    /// A handler whose answers carry this `Cache-Control`.
    fn answering(cache_control: &'static str) -> Gated {
        Gated {
            calls: Arc::new(AtomicUsize::new(0)),
            gate: watch::Sender::new(true),
            cache_control,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn route(&self) -> axum::routing::MethodRouter {
        let this = self.clone();
        get(move || {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let mut open = this.gate.subscribe();
                open.wait_for(|open| *open).await.expect("gate");
                let mut h = HeaderMap::new();
                h.insert(
                    "cache-control",
                    HeaderValue::from_static(this.cache_control),
                );
                (h, format!("call {n}"))
            }
        })
    }
}

/// Polls `cond` every 5 ms, for at most 10 s.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Request `no-cache`: one handler call per key at a time, one per interval.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_no_cache_requests_share_one_handler_call() {
    let origin = Gated::new();
    let entered = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&entered);
    let cache = Cache::builder("hostile-collapse").build().expect("cache");
    // No interval: only the coalescing keeps the handler to one call.
    let layer = CacheLayer::new(cache)
        .request_no_cache(true)
        .request_no_cache_interval(Duration::ZERO);
    let app = Router::new()
        .route("/r", origin.route())
        .layer(layer)
        // Counts the requests that reached the cache layer.
        .layer(
            tower::ServiceBuilder::new().map_request(move |req: Request<axum::body::Body>| {
                counted.fetch_add(1, Ordering::SeqCst);
                req
            }),
        );
    let app = serve(app).await;

    assert_eq!(app.get("/r").await.body, "call 1");
    origin.gate.send_replace(false);
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.no_cache("/r").await })
        })
        .collect();
    // Every request is in the layer (joined the refresh, on this single-threaded runtime),
    // and the handler runs for one of them.
    until(
        "20 no-cache requests in the layer and the handler called",
        || entered.load(Ordering::SeqCst) == 21 && origin.calls() == 2,
    )
    .await;
    origin.gate.send_replace(true);
    let mut statuses = Vec::new();
    for request in requests {
        let got = request.await.expect("request task");
        assert_eq!(got.body, "call 2");
        statuses.push(got.cache_status().to_owned());
    }
    assert_eq!(
        origin.calls(),
        2,
        "one handler call for the 20 no-cache requests"
    );
    let stored = statuses
        .iter()
        .filter(|s| s.starts_with("stormcache; fwd=request; stored"))
        .count();
    let collapsed = statuses
        .iter()
        .filter(|s| s.starts_with("stormcache; fwd=request; collapsed; ttl="))
        .count();
    assert_eq!((stored, collapsed), (1, 19), "{statuses:?}");
    let after = app.get("/r").await;
    assert_eq!((after.x_cache(), after.body.as_str()), ("hit", "call 2"));
}

/// In process rather than over a socket: dropping a client's request does not reliably drop
/// the server's future for it, and this test needs the leader's future dropped.
#[tokio::test]
async fn a_refresh_whose_leader_is_dropped_is_taken_over_by_a_waiting_request() {
    use tower::ServiceExt;

    let origin = Gated::new();
    let entered = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&entered);
    let cache = Cache::builder("hostile-dropped").build().expect("cache");
    let layer = CacheLayer::new(cache)
        .request_no_cache(true)
        .request_no_cache_interval(Duration::from_secs(60));
    let app = Router::new()
        .route("/r", origin.route())
        .layer(layer)
        .layer(
            tower::ServiceBuilder::new().map_request(move |req: Request<axum::body::Body>| {
                counted.fetch_add(1, Ordering::SeqCst);
                req
            }),
        );
    let no_cache = || {
        Request::get("/r")
            .header("cache-control", "no-cache")
            .body(axum::body::Body::empty())
            .expect("request")
    };
    origin.gate.send_replace(false);
    let leader = tokio::spawn(app.clone().oneshot(no_cache()));
    until("the leader's handler called", || origin.calls() == 1).await;
    let waiter = tokio::spawn(app.clone().oneshot(no_cache()));
    until("the second request in the layer", || {
        entered.load(Ordering::SeqCst) == 2
    })
    .await;
    // On this runtime's only thread, a request counted in the layer has been polled up to
    // where it waits: it joined the leader's refresh.
    leader.abort();
    assert!(leader.await.expect_err("aborted").is_cancelled());
    until("the waiter's own handler call", || origin.calls() == 2).await;
    origin.gate.send_replace(true);
    let res = waiter.await.expect("waiter task").expect("infallible");
    assert_eq!(
        res.headers()["cache-status"],
        "stormcache; fwd=request; stored; ttl=60"
    );
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "call 2");
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn requests_that_joined_a_refresh_that_stored_nothing_go_on_as_any_request() {
    let origin = Gated::answering("no-store");
    let entered = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&entered);
    let cache = Cache::builder("hostile-unstored").build().expect("cache");
    let layer = CacheLayer::new(cache)
        .request_no_cache(true)
        .request_no_cache_interval(Duration::from_secs(60));
    let app = Router::new()
        .route("/r", origin.route())
        .layer(layer)
        .layer(
            tower::ServiceBuilder::new().map_request(move |req: Request<axum::body::Body>| {
                counted.fetch_add(1, Ordering::SeqCst);
                req
            }),
        );
    let app = serve(app).await;
    origin.gate.send_replace(false);
    let requests: Vec<_> = (0..5)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.no_cache("/r").await })
        })
        .collect();
    until(
        "5 no-cache requests in the layer and the handler called",
        || entered.load(Ordering::SeqCst) == 5 && origin.calls() == 1,
    )
    .await;
    origin.gate.send_replace(true);
    let mut statuses = Vec::new();
    for request in requests {
        let got = request.await.expect("request task");
        assert_eq!(got.status, StatusCode::OK);
        statuses.push(got.cache_status().to_owned());
    }
    statuses.sort();
    // The refresh's response could not be shared (nothing stored): the others asked the
    // handler as requests without `no-cache` do for a response that is not stored.
    assert_eq!(
        statuses,
        [
            "stormcache; fwd=miss; detail=no-store",
            "stormcache; fwd=miss; detail=no-store",
            "stormcache; fwd=miss; detail=no-store",
            "stormcache; fwd=miss; detail=no-store",
            "stormcache; fwd=request; detail=no-store",
        ]
    );
    assert_eq!(origin.calls(), 5);
}

#[tokio::test]
async fn a_key_is_refreshed_at_most_once_per_interval() {
    assert_eq!(DEFAULT_REQUEST_NO_CACHE_INTERVAL, Duration::from_secs(1));
    let origin = Gated::new();
    let cache = Cache::builder("hostile-interval").build().expect("cache");
    let interval = Duration::from_millis(400);
    let layer = CacheLayer::new(cache)
        .request_no_cache(true)
        .request_no_cache_interval(interval);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer)).await;

    assert_eq!(app.get("/r").await.body, "call 1");
    let refreshed = app.no_cache("/r").await;
    let refreshed_at = Instant::now();
    assert_eq!(
        (refreshed.cache_status(), refreshed.body.as_str()),
        ("stormcache; fwd=request; stored; ttl=60", "call 2")
    );
    // Inside the interval: answered from the entry just refreshed.
    let limited = app.no_cache("/r").await;
    assert_eq!(limited.x_cache(), "hit");
    assert_eq!(limited.body, "call 2");
    let status = limited.cache_status();
    assert!(
        status.starts_with("stormcache; hit; ttl=") && status.ends_with("; detail=rate-limited"),
        "{status}"
    );
    // Another key has an interval of its own.
    assert_eq!(app.no_cache("/r?other").await.body, "call 3");
    // Then the key can be refreshed again, once the interval has passed.
    let mut limited = 0;
    loop {
        let got = app.no_cache("/r").await;
        if got
            .cache_status()
            .starts_with("stormcache; fwd=request; stored")
        {
            assert_eq!(got.body, "call 4");
            break;
        }
        assert!(got.cache_status().ends_with("detail=rate-limited"));
        limited += 1;
        assert!(
            refreshed_at.elapsed() < Duration::from_secs(10),
            "never refreshed again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refreshed_at.elapsed() >= interval,
        "refreshed again after {:?}",
        refreshed_at.elapsed()
    );
    assert!(limited > 0);
    assert_eq!(
        origin.calls(),
        4,
        "one call per refresh, none per limited request"
    );
}

#[tokio::test]
async fn many_no_cache_requests_in_a_burst_cost_one_handler_call() {
    let origin = Gated::new();
    let cache = Cache::builder("hostile-burst").build().expect("cache");
    let layer = CacheLayer::new(cache)
        .request_no_cache(true)
        .request_no_cache_interval(Duration::from_secs(60));
    let app = serve(Router::new().route("/r", origin.route()).layer(layer)).await;
    assert_eq!(app.get("/r").await.body, "call 1");
    for _ in 0..200 {
        let got = app.no_cache("/r").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, "call 2");
    }
    assert_eq!(origin.calls(), 2, "one refresh for 200 no-cache requests");
    // `HEAD` with `no-cache` is limited alike.
    for _ in 0..20 {
        let head = app
            .send(Method::HEAD, "/r", &[("cache-control", "no-cache")])
            .await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(
            head.cache_status().ends_with("detail=rate-limited"),
            "{}",
            head.cache_status()
        );
    }
    assert_eq!(origin.calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// The local store, bounded in bytes.
// ---------------------------------------------------------------------------------------------

/// A route answering 64 KiB bodies, a different one per query.
fn big_bodies() -> axum::routing::MethodRouter {
    get(|RawQuery(query): RawQuery| async move {
        let query = query.unwrap_or_default();
        let mut body = query.into_bytes();
        body.resize(64 * 1024, b'.');
        body
    })
}

#[tokio::test]
async fn the_default_local_store_is_bounded_in_bytes() {
    assert_eq!(
        LocalCapacity::default(),
        LocalCapacity::Bytes(256 * 1024 * 1024)
    );
    let cache = Cache::builder("hostile-default").build().expect("cache");
    let app = serve(
        Router::new()
            .route("/big", big_bodies())
            .layer(CacheLayer::new(cache.clone())),
    )
    .await;
    assert_eq!(app.get("/big?a").await.x_cache(), "miss");
    assert_eq!(app.get("/big?a").await.x_cache(), "hit");
    // Weighed in bytes: the body at least, where a bound in entries would count 1.
    let weight = cache.local_weighted_size();
    assert!(
        (64 * 1024..128 * 1024).contains(&weight),
        "one 64 KiB response weighs {weight}"
    );
}

/// GETs `/big?x=<i>` for `0..n`, 8 at a time; every `check_every` requests, checks that the
/// local store of `cache` holds at most `bound`. Returns the largest size seen.
async fn enumerate(app: &Served, cache: &Cache, n: usize, bound: u64, check_every: usize) -> u64 {
    let mut peak = 0;
    for batch in 0..n / 8 {
        let requests: Vec<_> = (0..8)
            .map(|i| {
                let app = app.clone();
                tokio::spawn(async move { app.get(&format!("/big?x={}", batch * 8 + i)).await })
            })
            .collect();
        for request in requests {
            let got = request.await.expect("request task");
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.bytes.len(), 64 * 1024);
        }
        if (batch + 1) * 8 % check_every == 0 {
            let weight = cache.local_weighted_size();
            assert!(
                weight <= bound,
                "{weight} bytes held for a bound of {bound}"
            );
            peak = peak.max(weight);
        }
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enumerating_queries_on_a_route_of_big_bodies_stays_within_the_bound() {
    const BOUND: u64 = 4 * 1024 * 1024;
    let cache = Cache::builder("hostile-bytes")
        .local_capacity(LocalCapacity::Bytes(BOUND))
        .build()
        .expect("cache");
    let app = serve(
        Router::new()
            .route("/big", big_bodies())
            .layer(CacheLayer::new(cache.clone())),
    )
    .await;
    // 3,000 distinct queries: about 190 MiB of responses for a 4 MiB bound.
    let peak = enumerate(&app, &cache, 3_000, BOUND, 200).await;
    // It still caches: a good part of the bound is in use.
    assert!(peak > BOUND / 2, "only {peak} bytes held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_bound_holds_against_enumeration() {
    const DEFAULT: u64 = 256 * 1024 * 1024;
    let cache = Cache::builder("hostile-bytes-default")
        .build()
        .expect("cache");
    let app = serve(
        Router::new()
            .route("/big", big_bodies())
            .layer(CacheLayer::new(cache.clone())),
    )
    .await;
    // 4,800 distinct queries: about 300 MiB of responses, more than the default bound (a
    // bound of 10,000 entries would have kept them all).
    let peak = enumerate(&app, &cache, 4_800, DEFAULT, 400).await;
    assert!(peak > DEFAULT * 3 / 4, "only {peak} bytes held");
}

// ---------------------------------------------------------------------------------------------
// Query parameters left out of the key.
// ---------------------------------------------------------------------------------------------

/// A route answering its whole query, and counting its calls.
fn echo_query(calls: &Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    let calls = Arc::clone(calls);
    get(move |RawQuery(query): RawQuery| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { query.unwrap_or_default() }
    })
}

#[tokio::test]
async fn ignored_query_params_leave_the_key_but_reach_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder("hostile-deny").build().expect("cache");
    let layer = CacheLayer::new(cache).ignore_query_params(["utm_*", "fbclid"]);
    let app = serve(Router::new().route("/p", echo_query(&calls)).layer(layer)).await;

    let first = app.get("/p?id=1&utm_source=mail").await;
    assert_eq!(
        (first.x_cache(), first.body.as_str()),
        ("miss", "id=1&utm_source=mail")
    );
    let same = app.get("/p?utm_campaign=x&id=1&fbclid=abc").await;
    assert_eq!(
        (same.x_cache(), same.body.as_str()),
        ("hit", "id=1&utm_source=mail")
    );
    // Escaped, the name is the same name.
    assert_eq!(app.get("/p?id=1&utm%5Fmedium=x").await.x_cache(), "hit");
    // A kept parameter still makes its own entry.
    assert_eq!(
        app.get("/p?id=2&utm_source=mail").await.body,
        "id=2&utm_source=mail"
    );
    // Enumerating ignored values makes no entry and no handler call.
    for i in 0..50 {
        assert_eq!(
            app.get(&format!("/p?id=1&utm_term={i}")).await.x_cache(),
            "hit"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Only ignored parameters: the bare path's entry.
    assert_eq!(app.get("/p").await.x_cache(), "miss");
    assert_eq!(app.get("/p?utm_source=a").await.x_cache(), "hit");
}

#[tokio::test]
async fn only_allowed_query_params_make_the_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder("hostile-allow").build().expect("cache");
    let layer = CacheLayer::new(cache).query_params(["id", "f_*"]);
    let app = serve(Router::new().route("/q", echo_query(&calls)).layer(layer)).await;

    let first = app.get("/q?x=1&id=7").await;
    assert_eq!((first.x_cache(), first.body.as_str()), ("miss", "x=1&id=7"));
    assert_eq!(app.get("/q?id=7&x=2&y=3").await.x_cache(), "hit");
    assert_eq!(app.get("/q?id=7").await.x_cache(), "hit");
    assert_eq!(app.get("/q?id=8").await.x_cache(), "miss");
    assert_eq!(app.get("/q?id=7&f_color=red").await.x_cache(), "miss");
    assert_eq!(app.get("/q?f_color=red&id=7&z=0").await.x_cache(), "hit");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------------------------
// max_entries: a per-layer cap.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn max_entries_keeps_the_most_recent_keys_of_the_layer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder("hostile-cap").build().expect("cache");
    let layer = CacheLayer::new(cache.clone()).max_entries(20);
    let app = serve(Router::new().route("/m", echo_query(&calls)).layer(layer)).await;

    for i in 0..100 {
        assert_eq!(app.get(&format!("/m?i={i}")).await.x_cache(), "miss");
        assert!(
            cache.local_entry_count() <= 20,
            "after {i}: {}",
            cache.local_entry_count()
        );
    }
    assert_eq!(cache.local_entry_count(), 20);
    for i in 80..100 {
        assert_eq!(
            app.get(&format!("/m?i={i}")).await.x_cache(),
            "hit",
            "i={i}"
        );
    }
    assert_eq!(app.get("/m?i=0").await.x_cache(), "miss");
    assert!(cache.local_entry_count() <= 20);
}

#[tokio::test]
async fn max_entries_evicts_the_least_recently_used_key() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder("hostile-lru").build().expect("cache");
    let layer = CacheLayer::new(cache.clone()).max_entries(5);
    let app = serve(Router::new().route("/m", echo_query(&calls)).layer(layer)).await;
    for i in 0..5 {
        app.get(&format!("/m?i={i}")).await;
    }
    // Used, so no longer the least recently used.
    assert_eq!(app.get("/m?i=0").await.x_cache(), "hit");
    assert_eq!(app.get("/m?i=5").await.x_cache(), "miss");
    assert_eq!(app.get("/m?i=0").await.x_cache(), "hit");
    assert_eq!(
        app.get("/m?i=1").await.x_cache(),
        "miss",
        "the least recently used"
    );
}

#[tokio::test]
async fn max_entries_is_shared_by_the_routes_of_one_layer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder("hostile-routes").build().expect("cache");
    let layer = CacheLayer::new(cache.clone()).max_entries(10);
    let app = serve(
        Router::new()
            .route("/a", echo_query(&calls))
            .route("/b", echo_query(&calls))
            .layer(layer),
    )
    .await;
    for i in 0..30 {
        app.get(&format!("/a?i={i}")).await;
        app.get(&format!("/b?i={i}")).await;
    }
    assert!(
        cache.local_entry_count() <= 10,
        "{}",
        cache.local_entry_count()
    );
    assert!(cache.local_entry_count() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_entries_holds_under_concurrent_requests() {
    // A small cap and many concurrent loads: while one key's handler runs, more than the cap
    // of other keys are stored, so keys are evicted while their entries are being stored.
    const CAP: u64 = 8;
    let cache = Cache::builder("hostile-race").build().expect("cache");
    let layer = CacheLayer::new(cache.clone()).max_entries(CAP);
    let slow = get(|RawQuery(query): RawQuery| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        query.unwrap_or_default()
    });
    let app = serve(Router::new().route("/m", slow).layer(layer)).await;
    let clients: Vec<_> = (0..32u64)
        .map(|c| {
            let app = app.clone();
            tokio::spawn(async move {
                for j in 0..40u64 {
                    // Overlapping keys: the same key stored and evicted by several clients.
                    let key = (c * 37 + j * 11) % 300;
                    let got = app.get(&format!("/m?k={key}")).await;
                    assert_eq!(got.body, format!("k={key}"));
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("client");
    }
    let count = cache.local_entry_count();
    assert!(count <= CAP, "{count} entries for a cap of {CAP}");
    assert!(count > 0);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_entries_with_redis_records_entries_read_back_from_redis() {
    use support::caches::{fast_redis_builder, wait_redis_ready};
    use support::RedisServer;

    let server = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let build = |ns: &str| {
        fast_redis_builder(ns, server.url(), Duration::from_millis(500))
            .build()
            .expect("cache")
    };
    let cache = build("hostile-redis");
    wait_redis_ready(&cache, Duration::from_secs(10)).await;
    let layer = CacheLayer::new(cache.clone()).max_entries(10);
    let app = serve(Router::new().route("/m", echo_query(&calls)).layer(layer)).await;
    for i in 0..30 {
        assert_eq!(app.get(&format!("/m?i={i}")).await.x_cache(), "miss");
    }
    assert!(cache.local_entry_count() <= 10);
    // Evicted here, still in Redis: read back from it (no handler call), and each one read
    // back is recorded again, so the cap holds.
    for i in 0..30 {
        assert_eq!(
            app.get(&format!("/m?i={i}")).await.x_cache(),
            "hit",
            "i={i}"
        );
        let count = cache.local_entry_count();
        assert!(count <= 10, "{count} entries after reading {i} back");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 30);
}

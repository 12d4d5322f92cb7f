//! Stale content and unsafe-method invalidation in `CacheLayer`, through the real stack (an
//! axum app on `127.0.0.1:0`, a hyper client) and, across instances, real Redis:
//!
//! - `stale-while-revalidate` (RFC 5861 §3), from the response or the layer's default: the
//!   stale response answers at once and one background refresh runs per key — in this
//!   process, and across two instances sharing a redis-server; a failed refresh keeps it;
//!   never for `must-revalidate` / `s-maxage`;
//! - `stale-if-error` (RFC 5861 §4): a 5xx within the window is answered stale, not after;
//! - RFC 9111 §4.4: a successful unsafe request invalidates its URI, its same-host
//!   `Location` and `Content-Location`, every variant, on every instance;
//! - `InvalidateLayer` after a post/redirect/get `303`;
//! - tower-http's `TraceLayer` and `TimeoutLayer` in the same stack.
#![cfg(all(feature = "axum", feature = "redis"))]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use stormcache::layer::{CacheLayer, InvalidateLayer};
use stormcache::Cache;
use support::caches::wait_redis_ready;
use support::http::{serve, Got};
use support::scaled;
use support::RedisServer;
use tokio::sync::Semaphore;

/// A handler: the headers it answers with, its status (changeable), how many times it ran,
/// and a gate that, once closed, holds every call until it opens. The body is `call <n>`.
#[derive(Clone)]
struct Origin {
    headers: Vec<(&'static str, String)>,
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
    gated: Arc<AtomicBool>,
    gate: Arc<Semaphore>,
    slow: Arc<AtomicBool>,
}

impl Origin {
    fn new(headers: &[(&'static str, &str)]) -> Origin {
        Origin {
            headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
            status: Arc::new(AtomicU16::new(200)),
            calls: Arc::new(AtomicUsize::new(0)),
            gated: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(Semaphore::new(0)),
            slow: Arc::new(AtomicBool::new(false)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// From now on, calls wait at the gate (counted on arrival).
    fn close_gate(&self) {
        self.gated.store(true, Ordering::SeqCst);
    }

    fn open_gate(&self) {
        self.gated.store(false, Ordering::SeqCst);
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// From now on, calls take 30 s (a timeout layer gives up first).
    fn set_slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::SeqCst);
    }

    fn route(&self) -> axum::routing::MethodRouter {
        let origin = self.clone();
        get(move || {
            let origin = origin.clone();
            async move {
                let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if origin.gated.load(Ordering::SeqCst) {
                    let _permit = origin.gate.acquire().await.expect("gate");
                }
                if origin.slow.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                let mut h = HeaderMap::new();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                for (name, value) in &origin.headers {
                    h.append(*name, HeaderValue::from_str(value).expect("header value"));
                }
                let status =
                    StatusCode::from_u16(origin.status.load(Ordering::SeqCst)).expect("status");
                (status, h, format!("call {n}"))
            }
        })
    }
}

/// Polls `done` every 10 ms until it holds; panics after `limit`.
async fn until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + scaled(limit);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn local_cache(namespace: &str) -> Cache {
    Cache::builder(namespace).build().expect("cache")
}

/// A layer whose own TTL (the heuristic) is long: a shorter life comes from the response.
fn layer(cache: Cache) -> CacheLayer {
    CacheLayer::new(cache).ttl(Duration::from_secs(300))
}

fn is_swr(got: &Got) -> bool {
    got.x_cache() == "stale" && got.cache_status().contains("detail=stale-while-revalidate")
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let origin = Origin::new(&[("cache-control", "max-age=1, stale-while-revalidate=30")]);
    let cache = local_cache("swr-once");
    let app = serve(
        Router::new()
            .route("/r", origin.route())
            .layer(layer(cache)),
    )
    .await;
    let first = app.get("/r").await;
    assert_eq!((first.x_cache(), first.body.as_str()), ("miss", "call 1"));

    // The refresh will hang at the gate: every stale request meanwhile is answered at once.
    origin.close_gate();
    let stale = app
        .get_until("/r", scaled(Duration::from_secs(5)), is_swr)
        .await;
    assert_eq!(stale.body, "call 1");
    assert_eq!(stale.status, StatusCode::OK);
    let status = stale.cache_status();
    assert!(
        status.starts_with("stormcache; hit; ttl=-"),
        "RFC 9211: not forwarded, stale: {status}"
    );
    assert!(stale.header("age").parse::<u64>().expect("an age") >= 1);
    until(
        Duration::from_secs(5),
        "the refresh reaches the handler",
        || origin.calls() == 2,
    )
    .await;
    let concurrent = (0..20).map(|_| {
        let app = app.clone();
        tokio::spawn(async move { app.get("/r").await })
    });
    for got in futures_util::future::join_all(concurrent).await {
        let got = got.expect("task");
        assert!(is_swr(&got), "{} / {}", got.x_cache(), got.cache_status());
        assert_eq!(got.body, "call 1");
    }
    assert_eq!(origin.calls(), 2, "one refresh for all the stale hits");

    origin.open_gate();
    let fresh = app
        .get_until("/r", scaled(Duration::from_secs(5)), |g| g.body == "call 2")
        .await;
    assert_eq!(fresh.x_cache(), "hit", "the refresh replaced the entry");
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn a_failed_background_refresh_keeps_the_stale_response() {
    let origin = Origin::new(&[("cache-control", "max-age=1, stale-while-revalidate=30")]);
    let cache = local_cache("swr-fail");
    let app = serve(
        Router::new()
            .route("/r", origin.route())
            .layer(layer(cache)),
    )
    .await;
    assert_eq!(app.get("/r").await.body, "call 1");
    origin.set_status(503);
    app.get_until("/r", scaled(Duration::from_secs(5)), is_swr)
        .await;
    until(Duration::from_secs(5), "the refresh ran", || {
        origin.calls() >= 2
    })
    .await;
    // Its 503 stored nothing: the stale response still answers, and the next stale
    // request tries again.
    let again = app
        .get_until("/r", scaled(Duration::from_secs(5)), |_| {
            origin.calls() >= 3
        })
        .await;
    assert!(is_swr(&again));
    assert_eq!(again.body, "call 1");
    origin.set_status(200);
    app.get_until("/r", scaled(Duration::from_secs(5)), |g| {
        g.x_cache() == "hit" && g.body != "call 1"
    })
    .await;
}

#[tokio::test]
async fn the_layer_default_window_applies_unless_the_response_must_be_revalidated() {
    let plain = Origin::new(&[("cache-control", "max-age=1")]);
    let strict = Origin::new(&[("cache-control", "max-age=1, must-revalidate")]);
    let shared = Origin::new(&[("cache-control", "s-maxage=1, stale-while-revalidate=30")]);
    let cache = local_cache("swr-default");
    let app = Router::new()
        .route("/plain", plain.route())
        .route("/strict", strict.route())
        .route("/shared", shared.route())
        .layer(layer(cache).stale_while_revalidate(Duration::from_secs(30)));
    let app = serve(app).await;
    for path in ["/plain", "/strict", "/shared"] {
        assert_eq!(app.get(path).await.x_cache(), "miss", "{path}");
    }
    let stale = app
        .get_until("/plain", scaled(Duration::from_secs(5)), is_swr)
        .await;
    assert_eq!(stale.body, "call 1");
    // Never served stale: once expired, the handler answers before the client does.
    for (path, origin) in [("/strict", &strict), ("/shared", &shared)] {
        let got = app
            .get_until(path, scaled(Duration::from_secs(5)), |g| g.body == "call 2")
            .await;
        assert_eq!(got.x_cache(), "miss", "{path}: {}", got.cache_status());
        assert_eq!(origin.calls(), 2, "{path}");
    }
}

#[tokio::test]
async fn stale_if_error_answers_a_failure_within_its_window_only() {
    let declared = Origin::new(&[("cache-control", "max-age=1, stale-if-error=60")]);
    let undeclared = Origin::new(&[("cache-control", "max-age=1")]);
    let cache = local_cache("sie");
    let app = Router::new()
        .route("/declared", declared.route())
        .route("/undeclared", undeclared.route())
        .layer(layer(cache));
    let app = serve(app).await;
    assert_eq!(app.get("/declared").await.x_cache(), "miss");
    assert_eq!(app.get("/undeclared").await.x_cache(), "miss");
    declared.set_status(500);
    undeclared.set_status(500);
    let stale = app
        .get_until("/declared", scaled(Duration::from_secs(5)), |g| {
            g.x_cache() == "stale"
        })
        .await;
    assert_eq!(
        (stale.status, stale.body.as_str()),
        (StatusCode::OK, "call 1")
    );
    assert!(
        stale.cache_status().contains("fwd=stale; fwd-status=500"),
        "{}",
        stale.cache_status()
    );
    // No stale-if-error, no grace on the layer: the failure is passed on.
    let failed = app
        .get_until("/undeclared", scaled(Duration::from_secs(5)), |g| {
            g.x_cache() != "hit"
        })
        .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.x_cache(), "miss");
}

#[tokio::test]
async fn stale_if_error_ends_with_its_window() {
    let origin = Origin::new(&[("cache-control", "max-age=1, stale-if-error=1")]);
    let cache = local_cache("sie-window");
    let app = serve(
        Router::new()
            .route("/r", origin.route())
            .layer(layer(cache)),
    )
    .await;
    assert_eq!(app.get("/r").await.x_cache(), "miss");
    origin.set_status(503);
    app.get_until("/r", scaled(Duration::from_secs(5)), |g| {
        g.x_cache() == "stale"
    })
    .await;
    let after = app
        .get_until("/r", scaled(Duration::from_secs(5)), |g| {
            g.x_cache() != "stale"
        })
        .await;
    assert_eq!(after.status, StatusCode::SERVICE_UNAVAILABLE);
}

fn redis_builder(server: &RedisServer, namespace: &str) -> stormcache::CacheBuilder {
    Cache::builder(namespace)
        .redis_url(server.url())
        .command_timeout(scaled(Duration::from_secs(1)))
}

/// Two instances of one service sharing a redis-server.
async fn two_instances(server: &RedisServer, namespace: &str) -> [Cache; 2] {
    let a = redis_builder(server, namespace).build().expect("cache");
    let b = redis_builder(server, namespace).build().expect("cache");
    wait_redis_ready(&a, scaled(Duration::from_secs(20))).await;
    wait_redis_ready(&b, scaled(Duration::from_secs(20))).await;
    [a, b]
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_once_across_instances() {
    let server = RedisServer::start();
    let [a, b] = two_instances(&server, "swr-instances").await;
    // A third instance that holds no copy of its own: it finds the stale one in Redis.
    let c = redis_builder(&server, "swr-instances")
        .build()
        .expect("cache");
    wait_redis_ready(&c, scaled(Duration::from_secs(20))).await;
    let origin = Origin::new(&[("cache-control", "max-age=1, stale-while-revalidate=30")]);
    let app = |cache| {
        Router::new()
            .route("/r", origin.route())
            .layer(layer(cache))
    };
    let (on_a, on_b, on_c) = (
        serve(app(a)).await,
        serve(app(b)).await,
        serve(app(c)).await,
    );
    assert_eq!(on_a.get("/r").await.x_cache(), "miss");
    let from_redis = on_b.get("/r").await;
    assert_eq!(
        (from_redis.x_cache(), from_redis.body.as_str()),
        ("hit", "call 1")
    );

    origin.close_gate();
    // A's stale hit starts the refresh, which holds the key's lock while it waits...
    on_a.get_until("/r", scaled(Duration::from_secs(5)), is_swr)
        .await;
    until(
        Duration::from_secs(5),
        "A's refresh reaches the handler",
        || origin.calls() == 2,
    )
    .await;
    // ...so B answers its stale copy (kept past its freshness for the window it declares),
    // C the one it reads from Redis, without waiting for A's refresh, and both leave the
    // refresh to A.
    let mut answers = Vec::new();
    for _ in 0..10 {
        for app in [&on_a, &on_b, &on_c] {
            let app = app.clone();
            answers.push(tokio::spawn(async move { app.get("/r").await }));
        }
    }
    for got in futures_util::future::join_all(answers).await {
        let got = got.expect("task");
        assert!(is_swr(&got), "{} / {}", got.x_cache(), got.cache_status());
        assert_eq!(got.body, "call 1");
    }
    origin.open_gate();
    // A's refresh is announced: B drops its copy and reads the new one from Redis.
    let fresh = on_b
        .get_until("/r", scaled(Duration::from_secs(5)), |g| g.body == "call 2")
        .await;
    assert_eq!(fresh.x_cache(), "hit");
    assert_eq!(on_a.get("/r").await.body, "call 2");
    assert_eq!(on_c.get("/r").await.body, "call 2");
    assert_eq!(origin.calls(), 2, "one refresh across the instances");
}

/// `GET /items…` cached; `POST /items` answers `status` with `headers`.
fn items_app(
    cache: Cache,
    listing: &Origin,
    item: &Origin,
    status: Arc<AtomicU16>,
    headers: Vec<(&'static str, &'static str)>,
    invalidate_on_unsafe: bool,
) -> Router {
    let create = post(move || {
        let status = status.clone();
        let headers = headers.clone();
        async move {
            let mut h = HeaderMap::new();
            for (n, v) in headers {
                h.insert(n, HeaderValue::from_static(v));
            }
            let status = StatusCode::from_u16(status.load(Ordering::SeqCst)).expect("status");
            (status, h, "created")
        }
    });
    Router::new()
        .route("/items", listing.route().merge(create))
        .route("/items/42", item.route())
        .route("/other", item.route())
        .layer(layer(cache).invalidate_on_unsafe(invalidate_on_unsafe))
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_its_uris_on_every_instance() {
    let server = RedisServer::start();
    let [a, b] = two_instances(&server, "unsafe-instances").await;
    let (listing, item) = (Origin::new(&[]), Origin::new(&[]));
    let status = Arc::new(AtomicU16::new(201));
    let headers = vec![
        ("location", "/items/42"),
        ("content-location", "http://elsewhere.example/other"),
    ];
    let app = |cache| {
        items_app(
            cache,
            &listing,
            &item,
            status.clone(),
            headers.clone(),
            true,
        )
    };
    let (on_a, on_b) = (serve(app(a)).await, serve(app(b)).await);
    // Variants of the listing (queries) and the item, warmed on B.
    for path in ["/items?page=1", "/items?page=2", "/items/42", "/other"] {
        on_b.get(path).await;
        assert_eq!(on_b.get(path).await.x_cache(), "hit", "{path}");
    }
    on_a.get("/items?page=3").await;
    assert_eq!(on_a.get("/items?page=3").await.x_cache(), "hit");

    // A failed request invalidates nothing (locally, invalidation ends before the answer).
    status.store(409, Ordering::SeqCst);
    let rejected = on_a.send(Method::POST, "/items", &[]).await;
    assert_eq!(rejected.status, StatusCode::CONFLICT);
    assert_eq!(
        on_a.get("/items?page=3").await.x_cache(),
        "hit",
        "after a 409"
    );
    status.store(201, Ordering::SeqCst);
    let created = on_a.send(Method::POST, "/items", &[]).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.x_cache(), "bypass");
    assert_eq!(
        on_a.get("/items?page=3").await.x_cache(),
        "miss",
        "at once on A"
    );
    // Every variant of /items and the Location go, on B too; another host's URI stays.
    for path in ["/items?page=1", "/items?page=2", "/items/42"] {
        on_b.get_until(path, scaled(Duration::from_secs(5)), |g| {
            g.x_cache() == "miss"
        })
        .await;
    }
    assert_eq!(on_b.get("/other").await.x_cache(), "hit", "another host");
}

#[tokio::test]
async fn unsafe_invalidation_can_be_turned_off_and_ignores_other_hosts() {
    let (listing, item) = (Origin::new(&[]), Origin::new(&[]));
    let status = Arc::new(AtomicU16::new(200));
    let off = items_app(
        local_cache("unsafe-off"),
        &listing,
        &item,
        status.clone(),
        vec![("location", "/items/42")],
        false,
    );
    let app = serve(off).await;
    for path in ["/items", "/items/42"] {
        app.get(path).await;
    }
    assert_eq!(
        app.send(Method::POST, "/items", &[]).await.status,
        StatusCode::OK
    );
    for path in ["/items", "/items/42"] {
        assert_eq!(app.get(path).await.x_cache(), "hit", "{path}");
    }
    // On, a Location on another host is left alone, a 303's own is not.
    let status = Arc::new(AtomicU16::new(303));
    let on = items_app(
        local_cache("unsafe-hosts"),
        &listing,
        &item,
        status,
        vec![("location", "https://evil.example/items/42")],
        true,
    );
    let app = serve(on).await;
    for path in ["/items", "/items/42"] {
        app.get(path).await;
    }
    assert_eq!(
        app.send(Method::POST, "/items", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(app.get("/items").await.x_cache(), "miss");
    assert_eq!(app.get("/items/42").await.x_cache(), "hit");
}

#[tokio::test]
async fn invalidate_layer_counts_a_303_as_success_and_a_302_not() {
    let listing = Origin::new(&[]);
    let status = Arc::new(AtomicU16::new(303));
    let cache = local_cache("invalidate-303");
    let create = {
        let status = status.clone();
        post(move || {
            let status = status.clone();
            async move {
                let status = StatusCode::from_u16(status.load(Ordering::SeqCst)).expect("status");
                (status, [(header::LOCATION, "/items")], "")
            }
        })
        .route_layer(InvalidateLayer::new(cache.clone()))
    };
    // The CacheLayer's own invalidation is off: only the InvalidateLayer acts.
    let app = Router::new()
        .route("/items", listing.route().merge(create))
        .layer(layer(cache).invalidate_on_unsafe(false));
    let app = serve(app).await;
    app.get("/items").await;
    assert_eq!(app.get("/items").await.x_cache(), "hit");
    status.store(302, Ordering::SeqCst);
    assert_eq!(
        app.send(Method::POST, "/items", &[]).await.status,
        StatusCode::FOUND
    );
    assert_eq!(
        app.get("/items").await.x_cache(),
        "hit",
        "302: not a success"
    );
    status.store(303, Ordering::SeqCst);
    assert_eq!(
        app.send(Method::POST, "/items", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        app.get("/items").await.x_cache(),
        "miss",
        "303: invalidated"
    );
}

#[tokio::test]
async fn tower_http_trace_and_timeout_in_the_same_stack() {
    use tower::ServiceBuilder;
    use tower_http::timeout::TimeoutLayer;
    use tower_http::trace::TraceLayer;

    let declared = Origin::new(&[("cache-control", "max-age=1, stale-if-error=60")]);
    let graced = Origin::new(&[("cache-control", "max-age=1")]);
    let cache = local_cache("tower-http");
    // The recommended order: tracing outermost (it sees hits too), the cache, then the
    // timeout, whose answer the cache sees as the handler's failure.
    let stack = |layer: CacheLayer| {
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(layer)
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_millis(200),
            ))
    };
    let app = Router::new()
        .route("/declared", declared.route())
        .route_layer(stack(layer(cache.clone())))
        .merge(
            Router::new()
                .route("/graced", graced.route())
                .route_layer(stack(layer(cache).stale_for(Duration::from_secs(60)))),
        );
    let app = serve(app).await;
    for (path, origin) in [("/declared", &declared), ("/graced", &graced)] {
        assert_eq!(app.get(path).await.x_cache(), "miss", "{path}");
        let hit = app.get(path).await;
        assert_eq!(
            (hit.x_cache(), hit.body.as_str()),
            ("hit", "call 1"),
            "{path}"
        );
        assert_eq!(origin.calls(), 1, "{path}: a hit through TraceLayer");
        origin.set_slow(true);
        let stale = app
            .get_until(path, scaled(Duration::from_secs(5)), |g| {
                g.x_cache() != "hit"
            })
            .await;
        assert_eq!(
            (stale.status, stale.x_cache(), stale.body.as_str()),
            (StatusCode::OK, "stale", "call 1"),
            "{path}: {}",
            stale.cache_status()
        );
        assert!(
            stale.cache_status().contains("fwd-status=408"),
            "{path}: {}",
            stale.cache_status()
        );
    }
}

#[tokio::test]
async fn stale_if_error_answers_an_error_of_the_inner_service() {
    use axum::error_handling::HandleErrorLayer;
    use tower::{service_fn, BoxError, ServiceBuilder};

    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let handler = {
        let (calls, failing) = (calls.clone(), failing.clone());
        service_fn(move |_req: Request<axum::body::Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let failing = failing.load(Ordering::SeqCst);
            async move {
                if failing {
                    return Err(BoxError::from("upstream connection refused"));
                }
                let res = axum::http::Response::builder()
                    .header("cache-control", "max-age=1, stale-if-error=60")
                    .body(axum::body::Body::from(format!("call {n}")))
                    .expect("response");
                Ok(res)
            }
        })
    };
    let svc = ServiceBuilder::new()
        // Outside the cache: what it cannot answer becomes a 502 the server can send.
        .layer(HandleErrorLayer::new(|_: BoxError| async {
            StatusCode::BAD_GATEWAY
        }))
        .layer(layer(local_cache("sie-error")))
        .service(handler);
    let app = serve(Router::new().route_service("/r", svc)).await;
    assert_eq!(app.get("/r").await.x_cache(), "miss");
    failing.store(true, Ordering::SeqCst);
    let stale = app
        .get_until("/r", scaled(Duration::from_secs(5)), |g| {
            g.x_cache() != "hit"
        })
        .await;
    assert_eq!(
        (stale.status, stale.x_cache(), stale.body.as_str()),
        (StatusCode::OK, "stale", "call 1"),
        "{}",
        stale.cache_status()
    );
    assert!(
        stale.cache_status().contains("fwd=stale; detail=error"),
        "{}",
        stale.cache_status()
    );
    assert!(calls.load(Ordering::SeqCst) >= 2, "the handler was asked");
}

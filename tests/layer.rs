//! `CacheLayer` and `InvalidateLayer` driven with `ServiceExt::oneshot`: every header rule,
//! composition with `Router::layer`, `route_layer` and `ServiceBuilder`, and generic bodies.
#![cfg(feature = "axum")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use stormcache::layer::{CacheLayer, InvalidateLayer, RequestInfo};
use stormcache::{Cache, Invalidation, Key, KeyTemplate};
use tower::{service_fn, ServiceBuilder, ServiceExt};

fn cache() -> Cache {
    Cache::builder("layer-tests").build().expect("valid cache")
}

/// Counts handler calls and answers `call <n>` so a test can tell a fresh answer from a
/// stored one.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A router whose `/r` handler answers with `headers` and the call number.
fn app_with(
    layer: CacheLayer,
    counter: &Counter,
    headers: &'static [(&'static str, &'static str)],
) -> Router {
    let c = counter.clone();
    Router::new()
        .route(
            "/r",
            get(move || {
                let c = c.clone();
                async move {
                    let n = c.next();
                    let mut h = HeaderMap::new();
                    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    for (name, value) in headers {
                        h.append(*name, HeaderValue::from_static(value));
                    }
                    (h, format!("call {n}"))
                }
            })
            .post(|| async { "posted" }),
        )
        .layer(layer)
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
    }
}

async fn send(app: &Router, req: Request<Body>) -> Got {
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Got {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).expect("utf-8"),
    }
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn get_with(uri: &str, headers: &[(&'static str, &'static str)]) -> Request<Body> {
    let mut b = Request::get(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Body::empty()).expect("request")
}

#[tokio::test]
async fn miss_then_hit_with_age_and_headers_replayed() {
    let counter = Counter::default();
    let app = app_with(
        CacheLayer::new(cache()),
        &counter,
        &[("etag", "\"v1\""), ("connection", "close")],
    );

    let first = send(&app, get_req("/r")).await;
    assert_eq!(
        (first.status, first.x_cache(), first.body.as_str()),
        (StatusCode::OK, "miss", "call 1")
    );
    assert!(
        first.headers.get("age").is_none(),
        "a fresh answer has no age"
    );

    let second = send(&app, get_req("/r")).await;
    assert_eq!((second.x_cache(), second.body.as_str()), ("hit", "call 1"));
    assert_eq!(second.headers["age"], "0");
    assert_eq!(second.headers[header::CONTENT_TYPE], "text/plain");
    assert_eq!(second.headers[header::ETAG], "\"v1\"");
    assert!(
        second.headers.get(header::CONNECTION).is_none(),
        "hop-by-hop headers are not replayed"
    );
    assert_eq!(counter.calls(), 1);
}

#[tokio::test]
async fn head_is_answered_from_get_entry_and_never_stores() {
    let counter = Counter::default();
    let app = app_with(CacheLayer::new(cache()), &counter, &[]);

    let head = Request::head("/r").body(Body::empty()).expect("request");
    let miss = send(&app, head).await;
    assert_eq!((miss.x_cache(), miss.body.as_str()), ("miss", ""));
    // The HEAD miss stored nothing: GET still misses.
    assert_eq!(send(&app, get_req("/r")).await.x_cache(), "miss");
    let head = Request::head("/r").body(Body::empty()).expect("request");
    let hit = send(&app, head).await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("hit", ""));
    assert_eq!(
        hit.headers[header::CONTENT_LENGTH],
        "6",
        "length of the GET body"
    );
    assert_eq!(counter.calls(), 2);
}

#[tokio::test]
async fn other_methods_bypass() {
    let counter = Counter::default();
    let app = app_with(CacheLayer::new(cache()), &counter, &[]);
    let post = Request::post("/r").body(Body::empty()).expect("request");
    let got = send(&app, post).await;
    assert_eq!((got.x_cache(), got.body.as_str()), ("bypass", "posted"));
}

#[tokio::test]
async fn credentials_bypass_shared_entries_by_default() {
    for credential in [
        ("authorization", "Bearer alice-token"),
        ("cookie", "session=alice"),
    ] {
        let counter = Counter::default();
        let app = app_with(CacheLayer::new(cache()), &counter, &[]);
        // An anonymous request fills the shared entry...
        assert_eq!(send(&app, get_req("/r")).await.body, "call 1");
        // ...which a credentialed request neither reads...
        let got = send(&app, get_with("/r", &[credential])).await;
        assert_eq!(
            (got.x_cache(), got.body.as_str()),
            ("bypass", "call 2"),
            "{credential:?}"
        );
        // ...nor writes.
        let got = send(&app, get_with("/r", &[credential])).await;
        assert_eq!(got.body, "call 3");
        assert_eq!(send(&app, get_req("/r")).await.body, "call 1");
    }
}

#[tokio::test]
async fn a_principal_gets_its_own_entry() {
    let counter = Counter::default();
    let layer = CacheLayer::new(cache()).principal(|req: &RequestInfo<'_>| {
        req.headers()
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::to_owned)
    });
    let app = app_with(layer, &counter, &[]);
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];
    assert_eq!(send(&app, get_with("/r", &alice)).await.body, "call 1");
    assert_eq!(send(&app, get_with("/r", &bob)).await.body, "call 2");
    let again = send(&app, get_with("/r", &alice)).await;
    assert_eq!((again.x_cache(), again.body.as_str()), ("hit", "call 1"));
    assert_eq!(send(&app, get_with("/r", &bob)).await.body, "call 2");
    // Anonymous: the principal function says None, no credentials: the shared entry.
    assert_eq!(send(&app, get_req("/r")).await.body, "call 3");
    // Credentials the principal function does not understand: bypass.
    let odd = send(&app, get_with("/r", &[("authorization", "Basic eA==")])).await;
    assert_eq!((odd.x_cache(), odd.body.as_str()), ("bypass", "call 4"));
}

#[tokio::test]
async fn shared_with_credentials_opts_out() {
    let counter = Counter::default();
    let app = app_with(
        CacheLayer::new(cache()).shared_with_credentials(true),
        &counter,
        &[],
    );
    assert_eq!(send(&app, get_req("/r")).await.body, "call 1");
    let got = send(&app, get_with("/r", &[("cookie", "a=b")])).await;
    assert_eq!((got.x_cache(), got.body.as_str()), ("hit", "call 1"));
}

#[tokio::test]
async fn request_no_cache_is_ignored_by_default() {
    let counter = Counter::default();
    let app = app_with(CacheLayer::new(cache()), &counter, &[]);
    assert_eq!(send(&app, get_req("/r")).await.body, "call 1");
    for headers in [[("cache-control", "no-cache")], [("pragma", "no-cache")]] {
        let got = send(&app, get_with("/r", &headers)).await;
        assert_eq!((got.x_cache(), got.body.as_str()), ("hit", "call 1"));
    }
}

#[tokio::test]
async fn request_no_store_bypasses_and_no_cache_refreshes() {
    let counter = Counter::default();
    // No interval between refreshes: each `no-cache` request below refreshes the entry.
    let app = app_with(
        CacheLayer::new(cache())
            .request_no_cache(true)
            .request_no_cache_interval(Duration::ZERO),
        &counter,
        &[],
    );
    assert_eq!(send(&app, get_req("/r")).await.body, "call 1");

    let no_store = send(&app, get_with("/r", &[("cache-control", "no-store")])).await;
    assert_eq!(
        (no_store.x_cache(), no_store.body.as_str()),
        ("bypass", "call 2")
    );
    assert_eq!(
        send(&app, get_req("/r")).await.body,
        "call 1",
        "no-store did not write"
    );

    let no_cache = send(&app, get_with("/r", &[("cache-control", "no-cache")])).await;
    assert_eq!(
        (no_cache.x_cache(), no_cache.body.as_str()),
        ("miss", "call 3")
    );
    let after = send(&app, get_req("/r")).await;
    assert_eq!(
        (after.x_cache(), after.body.as_str()),
        ("hit", "call 3"),
        "no-cache refreshed the entry"
    );

    let pragma = send(&app, get_with("/r", &[("pragma", "no-cache")])).await;
    assert_eq!(pragma.body, "call 4");
}

#[tokio::test]
async fn responses_that_forbid_storing_are_not_stored() {
    let cases: [&'static [(&'static str, &'static str)]; 6] = [
        &[("cache-control", "no-store")],
        &[("cache-control", "private")],
        &[("cache-control", "no-cache")],
        &[("cache-control", "public, max-age=0")],
        &[("set-cookie", "session=1")],
        &[("vary", "*")],
    ];
    for headers in cases {
        let counter = Counter::default();
        let app = app_with(CacheLayer::new(cache()), &counter, headers);
        let first = send(&app, get_req("/r")).await;
        let second = send(&app, get_req("/r")).await;
        assert_eq!(
            (first.x_cache(), second.x_cache()),
            ("miss", "miss"),
            "{headers:?}"
        );
        assert_eq!(second.body, "call 2", "{headers:?}");
        if headers[0].0 == "set-cookie" {
            assert_eq!(
                second.headers[header::SET_COOKIE],
                "session=1",
                "passed through untouched"
            );
        }
    }
}

#[tokio::test]
async fn statuses_are_configurable() {
    let counter = Counter::default();
    let c = counter.clone();
    let handler = move || {
        let c = c.clone();
        async move { (StatusCode::NOT_FOUND, format!("gone {}", c.next())) }
    };
    // By default the heuristically cacheable statuses are stored, 404 among them.
    let default = Router::new()
        .route("/x", get(handler.clone()))
        .layer(CacheLayer::new(cache()));
    send(&default, get_req("/x")).await;
    let again = send(&default, get_req("/x")).await;
    assert_eq!(
        (again.status, again.x_cache(), again.body.as_str()),
        (StatusCode::NOT_FOUND, "hit", "gone 1")
    );

    let ok_only = Router::new()
        .route("/x", get(handler))
        .layer(CacheLayer::new(cache()).statuses([StatusCode::OK]));
    send(&ok_only, get_req("/x")).await;
    let again = send(&ok_only, get_req("/x")).await;
    assert_eq!(
        (again.status, again.x_cache(), again.body.as_str()),
        (StatusCode::NOT_FOUND, "miss", "gone 3")
    );
}

/// A streaming body of `chunks` chunks of `size` bytes, with no length announced.
fn chunked(chunks: usize, size: usize) -> Body {
    let frames = (0..chunks).map(move |i| {
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(vec![
            b'a' + (i % 26)
                as u8;
            size
        ])))
    });
    Body::new(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn bodies_over_the_limit_stream_through_uncached() {
    let counter = Counter::default();
    let c = counter.clone();
    let app = Router::new()
        .route(
            "/big",
            get(move || {
                c.next();
                async { Response::new(chunked(10, 1000)) }
            }),
        )
        .route("/announced", get(|| async { vec![b'z'; 5000] }))
        .layer(CacheLayer::new(cache()).max_body_size(4096));
    for _ in 0..2 {
        let got = send(&app, get_req("/big")).await;
        assert_eq!((got.status, got.x_cache()), (StatusCode::OK, "miss"));
        assert_eq!(
            got.body.len(),
            10_000,
            "every byte arrives, read part first"
        );
        let expected: String = (0..10)
            .map(|i| ((b'a' + i as u8) as char).to_string().repeat(1000))
            .collect();
        assert_eq!(got.body, expected);
    }
    assert_eq!(counter.calls(), 2);
    for _ in 0..2 {
        let got = send(&app, get_req("/announced")).await;
        assert_eq!((got.x_cache(), got.body.len()), ("miss", 5000));
    }
    // Under the limit, a chunked body is stored whole.
    let small = Router::new()
        .route("/s", get(|| async { Response::new(chunked(3, 100)) }))
        .layer(CacheLayer::new(cache()).max_body_size(4096));
    send(&small, get_req("/s")).await;
    let hit = send(&small, get_req("/s")).await;
    assert_eq!((hit.x_cache(), hit.body.len()), ("hit", 300));
}

#[tokio::test]
async fn declared_vary_headers_split_entries() {
    let counter = Counter::default();
    let layer = CacheLayer::new(cache()).vary(header::ACCEPT_LANGUAGE);
    let app = app_with(layer, &counter, &[("vary", "Accept-Language")]);
    let fr = [("accept-language", "fr")];
    let en = [("accept-language", "en")];
    assert_eq!(send(&app, get_with("/r", &fr)).await.body, "call 1");
    assert_eq!(send(&app, get_with("/r", &en)).await.body, "call 2");
    assert_eq!(send(&app, get_with("/r", &fr)).await.body, "call 1");
    assert_eq!(
        send(&app, get_req("/r")).await.body,
        "call 3",
        "absent is its own variant"
    );

    // The response varies on a header the layer does not key on: stored as a variant.
    let counter = Counter::default();
    let app = app_with(
        CacheLayer::new(cache()),
        &counter,
        &[("vary", "accept-language")],
    );
    send(&app, get_with("/r", &fr)).await;
    assert_eq!(send(&app, get_with("/r", &en)).await.body, "call 2");
    let fr_again = send(&app, get_with("/r", &fr)).await;
    assert_eq!(
        (fr_again.x_cache(), fr_again.body.as_str()),
        ("hit", "call 1")
    );
}

#[tokio::test]
async fn query_is_normalized_into_the_key() {
    let counter = Counter::default();
    let app = app_with(CacheLayer::new(cache()), &counter, &[]);
    assert_eq!(send(&app, get_req("/r?b=2&a=1")).await.body, "call 1");
    let same = send(&app, get_req("/r?a=1&&b=2")).await;
    assert_eq!((same.x_cache(), same.body.as_str()), ("hit", "call 1"));
    assert_eq!(send(&app, get_req("/r?a=2&b=2")).await.body, "call 2");
    assert_eq!(send(&app, get_req("/r")).await.body, "call 3");
    // Hostile query text stays inside its slot.
    assert_eq!(send(&app, get_req("/r?*")).await.body, "call 4");
    assert_eq!(send(&app, get_req("/r?%2A")).await.body, "call 5");
}

#[tokio::test]
async fn key_fn_with_matched_path_and_params_under_route_layer() {
    let counter = Counter::default();
    let c = counter.clone();
    let layer = CacheLayer::new(cache()).key_fn(|req: &RequestInfo<'_>| {
        // Ignores the query; `nocache` as the id passes through.
        let id = req.param("id")?;
        (id != "nocache").then(|| {
            Key::builder("item:")
                .value(req.matched_path().unwrap_or("?"))
                .literal(":")
                .value(id)
                .build()
        })
    });
    let app = Router::new().route(
        "/items/{id}",
        get(move |Path(id): Path<String>| {
            let n = c.next();
            async move { format!("{id} {n}") }
        })
        .route_layer(layer),
    );
    assert_eq!(send(&app, get_req("/items/7?utm=a")).await.body, "7 1");
    let hit = send(&app, get_req("/items/7?utm=b")).await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("hit", "7 1"));
    assert_eq!(send(&app, get_req("/items/8")).await.body, "8 2");
    let passed = send(&app, get_req("/items/nocache")).await;
    assert_eq!(
        (passed.x_cache(), passed.body.as_str()),
        ("bypass", "nocache 3")
    );
}

#[tokio::test]
async fn nested_routers_do_not_share_keys() {
    let inner = |name: &'static str| Router::new().route("/x", get(move || async move { name }));
    let app = Router::new()
        .nest("/a", inner("a"))
        .nest("/b", inner("b"))
        .layer(CacheLayer::new(cache()));
    assert_eq!(send(&app, get_req("/a/x")).await.body, "a");
    assert_eq!(send(&app, get_req("/b/x")).await.body, "b");
    // Also when the layer sits inside the nested router, where the path is stripped.
    let shared = cache();
    let inner = |name: &'static str| {
        Router::new()
            .route("/x", get(move || async move { name }))
            .layer(CacheLayer::new(shared.clone()))
    };
    let app = Router::new().nest("/a", inner("a")).nest("/b", inner("b"));
    assert_eq!(send(&app, get_req("/a/x")).await.body, "a");
    let b = send(&app, get_req("/b/x")).await;
    assert_eq!((b.x_cache(), b.body.as_str()), ("miss", "b"));
}

#[tokio::test]
async fn concurrent_misses_run_the_handler_once() {
    let counter = Counter::default();
    let c = counter.clone();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = Arc::clone(&gate);
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let (c, g) = (c.clone(), Arc::clone(&g));
                async move {
                    let n = c.next();
                    // Held until every request is in flight.
                    let _permit = g.acquire().await.expect("open");
                    format!("call {n}")
                }
            }),
        )
        .layer(CacheLayer::new(cache()));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send(&app, get_req("/slow")).await })
        })
        .collect();
    // The first request reached the handler; the others are parked on its flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while counter.calls() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handler never called"
        );
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(100);
    let mut labels = Vec::new();
    for t in tasks {
        let got = t.await.expect("task");
        assert_eq!(got.body, "call 1");
        labels.push(got.x_cache().to_owned());
    }
    assert_eq!(
        counter.calls(),
        1,
        "one handler call for eight concurrent misses"
    );
    assert_eq!(
        labels.iter().filter(|l| *l == "miss").count(),
        1,
        "{labels:?}"
    );
}

#[tokio::test]
async fn stale_answers_only_when_the_handler_fails() {
    let status = Arc::new(std::sync::Mutex::new(StatusCode::OK));
    let s = Arc::clone(&status);
    let app = Router::new()
        .route(
            "/f",
            get(move || {
                let code = *s.lock().expect("lock");
                async move { (code, format!("status {}", code.as_u16())) }
            }),
        )
        .layer(
            CacheLayer::new(cache())
                .ttl(Duration::from_millis(100))
                .stale_for(Duration::from_secs(60)),
        );
    assert_eq!(send(&app, get_req("/f")).await.body, "status 200");
    *status.lock().expect("lock") = StatusCode::SERVICE_UNAVAILABLE;
    // Wait for the entry to go stale: the handler's 503 then gives way to it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let got = loop {
        let got = send(&app, get_req("/f")).await;
        if got.x_cache() != "hit" {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "entry never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (got.status, got.x_cache(), got.body.as_str()),
        (StatusCode::OK, "stale", "status 200")
    );
    assert!(got.headers.contains_key("age"));
    // A non-failure the layer does not store (404) is passed on, not hidden by stale.
    *status.lock().expect("lock") = StatusCode::NOT_FOUND;
    let got = send(&app, get_req("/f")).await;
    assert_eq!((got.status, got.x_cache()), (StatusCode::NOT_FOUND, "miss"));
}

#[tokio::test]
async fn composes_with_service_builder_and_generic_bodies() {
    // Not axum's body: http_body_util::Full on both sides, and an error type of our own.
    #[derive(Debug, PartialEq)]
    struct Boom;
    let counter = Counter::default();
    let c = counter.clone();
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache()))
        .service(service_fn(move |req: Request<Full<Bytes>>| {
            let n = c.next();
            async move {
                if req.uri().path() == "/boom" {
                    return Err(Boom);
                }
                Ok(Response::new(Full::new(Bytes::from(format!("call {n}")))))
            }
        }));
    let req = |p: &str| {
        Request::get(p)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let first = svc.clone().oneshot(req("/ok")).await.expect("ok");
    assert_eq!(first.headers()["x-cache"], "miss");
    let second = svc.clone().oneshot(req("/ok")).await.expect("ok");
    assert_eq!(second.headers()["x-cache"], "hit");
    let body = second.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"call 1");
    // The inner service's own errors pass through untouched.
    assert_eq!(svc.oneshot(req("/boom")).await.err(), Some(Boom));
}

#[tokio::test]
async fn route_layer_gives_routes_their_own_options() {
    let cache = cache();
    let short = CacheLayer::new(cache.clone()).ttl(Duration::from_millis(1));
    let long = CacheLayer::new(cache.clone()).ttl(Duration::from_secs(60));
    let counter = Counter::default();
    let (c1, c2) = (counter.clone(), counter.clone());
    let app = Router::new()
        .route(
            "/short",
            get(move || async move { format!("{}", c1.next()) }).route_layer(short),
        )
        .route(
            "/long",
            get(move || async move { format!("{}", c2.next()) }).route_layer(long),
        );
    send(&app, get_req("/long")).await;
    send(&app, get_req("/short")).await;
    tokio::time::sleep(Duration::from_millis(20)).await; // let the 1 ms TTL pass
    assert_eq!(send(&app, get_req("/long")).await.x_cache(), "hit");
    assert_eq!(send(&app, get_req("/short")).await.x_cache(), "miss");
}

// ---- InvalidateLayer ----

#[derive(Clone)]
struct Db {
    members: Arc<std::sync::Mutex<Vec<String>>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

async fn list(State(db): State<Db>, Path(u): Path<String>) -> String {
    let groups = db.members.lock().expect("lock").clone();
    format!("{u}:{}", groups.join(","))
}

async fn remove(State(db): State<Db>, Path((g, _u)): Path<(String, String)>) -> impl IntoResponse {
    if db.fail.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    db.members.lock().expect("lock").retain(|m| *m != g);
    StatusCode::NO_CONTENT
}

fn membership_app(cache: &Cache, invalidate: InvalidateLayer) -> (Router, Db) {
    let db = Db {
        members: Arc::new(std::sync::Mutex::new(vec!["staff".into(), "ops".into()])),
        fail: Arc::default(),
    };
    let template = KeyTemplate::parse("user:{u}").expect("template");
    let app = Router::new()
        .route(
            "/users/{u}/groups",
            get(list).route_layer(CacheLayer::new(cache.clone()).tag_template(template)),
        )
        .route(
            "/groups/{g}/members/{u}",
            axum::routing::delete(remove).route_layer(invalidate),
        )
        .with_state(db.clone());
    (app, db)
}

#[tokio::test]
async fn invalidate_layer_removes_tagged_responses_after_success_only() {
    let cache = cache();
    let layer =
        InvalidateLayer::new(cache.clone()).tag(KeyTemplate::parse("user:{u}").expect("template"));
    let (app, db) = membership_app(&cache, layer);
    assert_eq!(
        send(&app, get_req("/users/alice/groups")).await.body,
        "alice:staff,ops"
    );
    assert_eq!(
        send(&app, get_req("/users/alice/groups")).await.x_cache(),
        "hit"
    );

    // A failed mutation invalidates nothing.
    db.fail.store(true, Ordering::SeqCst);
    let del = || {
        Request::delete("/groups/ops/members/alice")
            .body(Body::empty())
            .expect("request")
    };
    assert_eq!(
        send(&app, del()).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        send(&app, get_req("/users/alice/groups")).await.x_cache(),
        "hit"
    );

    db.fail.store(false, Ordering::SeqCst);
    assert_eq!(send(&app, del()).await.status, StatusCode::NO_CONTENT);
    let after = send(&app, get_req("/users/alice/groups")).await;
    assert_eq!(
        (after.x_cache(), after.body.as_str()),
        ("miss", "alice:staff")
    );
}

#[tokio::test]
async fn invalidate_layer_with_an_extractor_and_a_rule() {
    let cache = cache();
    let key_of = |u: &str| Key::builder("user:groups:").value(u).build();
    let opts = stormcache::EntryOptions::new();
    cache.set(key_of("alice"), 1u32, &opts).await;
    cache
        .set(Key::literal("resources:all").expect("key"), 2u32, &opts)
        .await;
    let layer = InvalidateLayer::new(cache.clone())
        .extract(move |Path((_g, u)): Path<(String, String)>| Invalidation::new().key(key_of(&u)))
        .rule(|req: &RequestInfo<'_>| {
            assert_eq!(req.matched_path(), Some("/groups/{g}/members/{u}"));
            Invalidation::new().key(Key::literal("resources:all").expect("key"))
        });
    let (app, _db) = membership_app(&cache, layer);
    let del = Request::delete("/groups/ops/members/alice")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&app, del).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        cache
            .get::<u32>(&Key::literal("user:groups:alice").expect("key"), &opts)
            .await,
        None
    );
    assert_eq!(
        cache
            .get::<u32>(&Key::literal("resources:all").expect("key"), &opts)
            .await,
        None
    );
}

#[tokio::test]
async fn a_mutation_refreshes_the_same_path() {
    let cache = cache();
    let value = Arc::new(std::sync::Mutex::new(String::from("v1")));
    let (r, w) = (Arc::clone(&value), Arc::clone(&value));
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move || {
                let v = r.lock().expect("lock").clone();
                async move { v }
            })
            .put(move |body: String| {
                *w.lock().expect("lock") = body;
                async { StatusCode::OK }
            }),
        )
        .layer(InvalidateLayer::new(cache.clone()))
        .layer(CacheLayer::new(cache));
    assert_eq!(send(&app, get_req("/items/1")).await.body, "v1");
    assert_eq!(send(&app, get_req("/items/1")).await.x_cache(), "hit");
    let put = Request::put("/items/1")
        .body(Body::from("v2"))
        .expect("request");
    let put = send(&app, put).await;
    assert_eq!((put.status, put.x_cache()), (StatusCode::OK, "bypass"));
    let got = send(&app, get_req("/items/1")).await;
    assert_eq!((got.x_cache(), got.body.as_str()), ("miss", "v2"));
}

#[tokio::test]
async fn invalidate_layer_passes_other_methods_and_errors_through() {
    #[derive(Debug, PartialEq)]
    struct Boom;
    let svc = ServiceBuilder::new()
        .layer(InvalidateLayer::new(cache()).methods([Method::POST]))
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            if req.method() == Method::POST {
                Err(Boom)
            } else {
                Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        }));
    let req = |m: Method| {
        Request::builder()
            .method(m)
            .uri("/")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    assert!(svc.clone().oneshot(req(Method::DELETE)).await.is_ok());
    assert_eq!(svc.oneshot(req(Method::POST)).await.err(), Some(Boom));
}

#[tokio::test]
async fn an_inner_route_layer_owns_its_route() {
    let cache = cache();
    let counter = Counter::default();
    let c = counter.clone();
    let tag = KeyTemplate::parse("user:{u}").expect("template");
    let app = Router::new()
        .route(
            "/users/{u}",
            get(move || {
                let n = c.next();
                async move { format!("call {n}") }
            })
            .route_layer(CacheLayer::new(cache.clone()).tag_template(tag.clone())),
        )
        .layer(CacheLayer::new(cache.clone()));
    assert_eq!(send(&app, get_req("/users/alice")).await.x_cache(), "miss");
    let hit = send(&app, get_req("/users/alice")).await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("hit", "call 1"));
    // Invalidating the inner layer's tag is enough: the outer layer kept no copy.
    cache
        .invalidate_tag(&Key::literal("user:alice").expect("key"))
        .await;
    let after = send(&app, get_req("/users/alice")).await;
    assert_eq!((after.x_cache(), after.body.as_str()), ("miss", "call 2"));
}

/// A read that started before a write must not hand its (old) answer to a read that starts
/// after the write's invalidation, nor store it for later reads.
#[tokio::test]
async fn a_load_started_before_an_invalidation_does_not_outlive_it() {
    let cache = cache();
    let value = Arc::new(std::sync::Mutex::new(String::from("old")));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let (r, w, g, e) = (
        Arc::clone(&value),
        Arc::clone(&value),
        Arc::clone(&gate),
        Arc::clone(&entered),
    );
    let app = Router::new()
        .route(
            "/v",
            get(move || {
                let (r, g, e) = (Arc::clone(&r), Arc::clone(&g), Arc::clone(&e));
                async move {
                    let read = r.lock().expect("lock").clone();
                    if read == "old" {
                        // The slow reader: holds its old answer until the write is done.
                        e.notify_one();
                        let _permit = g.acquire().await.expect("open");
                    }
                    read
                }
            })
            .put(move || {
                *w.lock().expect("lock") = "new".to_owned();
                async { StatusCode::OK }
            }),
        )
        .layer(InvalidateLayer::new(cache.clone()))
        .layer(CacheLayer::new(cache));

    let slow = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, get_req("/v")).await })
    };
    entered.notified().await;
    let put = Request::put("/v").body(Body::empty()).expect("request");
    assert_eq!(send(&app, put).await.status, StatusCode::OK);
    // Read-your-writes: not the in-flight old load.
    let after = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, get_req("/v")).await })
    };
    let after = tokio::time::timeout(Duration::from_secs(5), after)
        .await
        .expect("the read after the write did not wait for the old load")
        .expect("task");
    assert_eq!(after.body, "new");
    gate.add_permits(1);
    assert_eq!(slow.await.expect("task").body, "old");
    // The old load finished after the invalidation: it must not have been stored.
    let later = send(&app, get_req("/v")).await;
    assert_eq!((later.x_cache(), later.body.as_str()), ("hit", "new"));
}

#[test]
#[should_panic(expected = "the cache declares no class `permisions`")]
fn a_layer_refuses_a_class_the_cache_does_not_declare() {
    let _ = CacheLayer::new(cache()).class("permisions");
}

/// A form post answered with a redirect to its result (post/redirect/get).
#[tokio::test]
async fn invalidate_layer_acts_on_a_303_and_on_the_statuses_it_is_told() {
    let cache = cache();
    let key = Key::literal("resources:all").expect("key");
    let opts = stormcache::EntryOptions::new();
    let app = |layer: InvalidateLayer, status: StatusCode| {
        Router::new().route(
            "/resources",
            axum::routing::post(move || async move { status }).route_layer(layer),
        )
    };
    let post = || {
        Request::post("/resources")
            .body(Body::empty())
            .expect("request")
    };
    let layer =
        || InvalidateLayer::new(cache.clone()).invalidation(&Invalidation::new().key(key.clone()));
    for (status, invalidates) in [
        (StatusCode::SEE_OTHER, true),
        (StatusCode::CREATED, true),
        (StatusCode::FOUND, false),
        (StatusCode::UNPROCESSABLE_ENTITY, false),
    ] {
        cache.set(key.clone(), 1u32, &opts).await;
        assert_eq!(send(&app(layer(), status), post()).await.status, status);
        assert_eq!(
            cache.get::<u32>(&key, &opts).await.is_none(),
            invalidates,
            "after a {status}"
        );
    }
    cache.set(key.clone(), 1u32, &opts).await;
    let found_too = layer().when_status(|s| s.is_success() || s == StatusCode::FOUND);
    send(&app(found_too, StatusCode::FOUND), post()).await;
    assert_eq!(cache.get::<u32>(&key, &opts).await, None, "told: 302 too");
}

/// One app serving several hosts (tenants by host) keeps their pages apart.
#[tokio::test]
async fn the_host_is_part_of_the_key_unless_turned_off() {
    let counter = Counter::default();
    let app = app_with(CacheLayer::new(cache()), &counter, &[]);
    let a = send(&app, get_with("/r", &[("host", "a.example")])).await;
    let b = send(&app, get_with("/r", &[("host", "b.example")])).await;
    assert_eq!((a.body.as_str(), b.body.as_str()), ("call 1", "call 2"));
    let a_again = send(&app, get_with("/r", &[("host", "A.EXAMPLE:8080")])).await;
    assert_eq!(
        (a_again.x_cache(), a_again.body.as_str()),
        ("hit", "call 1"),
        "host names are case-insensitive, and the port is not the host"
    );

    let shared = Counter::default();
    let app = app_with(CacheLayer::new(cache()).key_host(false), &shared, &[]);
    send(&app, get_with("/r", &[("host", "a.example")])).await;
    let b = send(&app, get_with("/r", &[("host", "b.example")])).await;
    assert_eq!((b.x_cache(), b.body.as_str()), ("hit", "call 1"));
}

#[tokio::test]
async fn an_application_credential_header_bypasses_shared_entries() {
    let counter = Counter::default();
    let layer = CacheLayer::new(cache())
        .credential_headers([axum::http::HeaderName::from_static("x-api-key")]);
    let app = app_with(layer, &counter, &[]);
    send(&app, get_req("/r")).await;
    let keyed = send(&app, get_with("/r", &[("x-api-key", "k1")])).await;
    assert_eq!((keyed.x_cache(), keyed.body.as_str()), ("bypass", "call 2"));
    let anonymous = send(&app, get_req("/r")).await;
    assert_eq!(
        (anonymous.x_cache(), anonymous.body.as_str()),
        ("hit", "call 1")
    );
}

#[tokio::test]
async fn durations_meaning_forever_configure_a_layer_that_still_answers() {
    let forever = Duration::MAX;
    let counter = Counter::default();
    let layer = CacheLayer::new(cache())
        .ttl(forever)
        .min_ttl(forever)
        .max_ttl(forever)
        .stale_for(forever)
        .soft_timeout(forever)
        .hard_timeout(forever)
        .stale_while_revalidate(forever)
        .heuristic_max(forever)
        .request_no_cache(true)
        .request_no_cache_interval(forever);
    // The response's own lifetimes are the largest RFC 9111 allows, and more.
    let app = app_with(
        layer,
        &counter,
        &[(
            "cache-control",
            "max-age=99999999999999999999, stale-while-revalidate=99999999999999999999",
        )],
    );
    assert_eq!(send(&app, get_req("/r")).await.body, "call 1");
    let hit = send(&app, get_req("/r")).await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("hit", "call 1"));
    // Fresh for about a century: the `ttl` it reports is that, not an overflow.
    let status = hit.headers["cache-status"].to_str().expect("text");
    let ttl: u64 = status
        .rsplit("ttl=")
        .next()
        .and_then(|t| t.parse().ok())
        .expect("a ttl in Cache-Status");
    assert!(ttl > 50 * 365 * 86_400, "{status}");
    // A `no-cache` request refreshes the entry once; inside the (century-long) interval
    // after that, one is answered from the refreshed entry.
    let no_cache = [("cache-control", "no-cache")];
    assert_eq!(send(&app, get_with("/r", &no_cache)).await.body, "call 2");
    assert_eq!(send(&app, get_with("/r", &no_cache)).await.body, "call 2");
}

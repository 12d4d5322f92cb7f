//! `CacheLayer` as an HTTP cache, through the real stack: an axum app served on
//! `127.0.0.1:0`, a hyper client. Freshness from the response (`s-maxage`, `max-age`,
//! `Expires`, `Age`), `must-revalidate`, `Range` and `Connection`; conditional requests;
//! `Cache-Status`.
#![cfg(feature = "axum")]

mod support;

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::routing::get;
use axum::Router;
use stormcache::layer::CacheLayer;
use stormcache::Cache;
use support::http::{self, Served};

/// A route's handler: the headers it answers with, its status (changeable), and how many
/// times it ran. The body is `call <n>`.
#[derive(Clone)]
struct Origin {
    headers: Vec<(&'static str, String)>,
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn new(headers: &[(&'static str, &str)]) -> Origin {
        Origin {
            headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
            status: Arc::new(AtomicU16::new(200)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn route(&self) -> axum::routing::MethodRouter {
        let origin = self.clone();
        get(move |req_headers: HeaderMap| {
            let origin = origin.clone();
            async move {
                let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let mut h = HeaderMap::new();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                for (name, value) in &origin.headers {
                    h.append(*name, HeaderValue::from_str(value).expect("header value"));
                }
                let body = format!("call {n}");
                if let Some(range) = req_headers.get(header::RANGE) {
                    // A handler that serves ranges: "bytes=0-1" gets the first two bytes.
                    assert_eq!(range, "bytes=0-1");
                    h.insert(
                        header::CONTENT_RANGE,
                        HeaderValue::from_static("bytes 0-1/6"),
                    );
                    return (StatusCode::PARTIAL_CONTENT, h, body[..2].to_owned());
                }
                let status =
                    StatusCode::from_u16(origin.status.load(Ordering::SeqCst)).expect("status");
                (status, h, body)
            }
        })
    }
}

/// Serves `app` on `127.0.0.1:0`; each request gets 10 s.
async fn serve(app: Router) -> Served {
    http::serve_within(app, Duration::from_secs(10)).await
}

/// A layer whose own TTL (the heuristic) is long: a shorter life comes from the response.
fn layer() -> CacheLayer {
    let cache = Cache::builder("http-semantics").build().expect("cache");
    CacheLayer::new(cache).ttl(Duration::from_secs(300))
}

#[tokio::test]
async fn max_age_1_stops_being_served_fresh_after_a_second() {
    let origin = Origin::new(&[("cache-control", "max-age=1")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    let stored_at = Instant::now();
    assert_eq!(app.get("/r").await.x_cache(), "miss");
    let hit = app.get("/r").await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("hit", "call 1"));
    // Served from the cache until its second is up, then from the handler again.
    let after = app
        .get_until("/r", Duration::from_secs(5), |g| g.x_cache() != "hit")
        .await;
    assert!(stored_at.elapsed() >= Duration::from_millis(900));
    assert_eq!((after.x_cache(), after.body.as_str()), ("miss", "call 2"));
}

#[tokio::test]
async fn s_maxage_beats_max_age() {
    let origin = Origin::new(&[("cache-control", "max-age=300, s-maxage=1")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    app.get("/r").await;
    assert_eq!(app.get("/r").await.x_cache(), "hit");
    // A shared cache reads s-maxage=1, not max-age=300.
    app.get_until("/r", Duration::from_secs(5), |g| g.x_cache() == "miss")
        .await;
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn expires_0_and_past_expires_are_not_stored() {
    let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(60));
    for expires in ["0", past.as_str()] {
        let origin = Origin::new(&[("expires", expires)]);
        let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
        app.get("/r").await;
        let again = app.get("/r").await;
        assert_eq!(
            (again.x_cache(), again.body.as_str()),
            ("miss", "call 2"),
            "expires: {expires}"
        );
    }
    // A future Expires is a lifetime like max-age.
    let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(600));
    let origin = Origin::new(&[("expires", &future)]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    app.get("/r").await;
    assert_eq!(app.get("/r").await.x_cache(), "hit");
}

#[tokio::test]
async fn age_counts_the_upstream_age_plus_the_time_stored() {
    let origin = Origin::new(&[("cache-control", "max-age=100"), ("age", "30")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    let miss = app.get("/r").await;
    assert_eq!((miss.x_cache(), miss.age()), ("miss", 30));
    let hit = app.get("/r").await;
    assert_eq!(hit.x_cache(), "hit");
    assert!((30..=31).contains(&hit.age()), "age {}", hit.age());
    // Time in the cache adds to it.
    let later = app
        .get_until("/r", Duration::from_secs(5), |g| g.age() >= 31)
        .await;
    assert_eq!((later.x_cache(), later.body.as_str()), ("hit", "call 1"));
}

#[tokio::test]
async fn the_upstream_age_shortens_freshness() {
    // Fresh for 100 s, 99 of them already spent upstream: a second left here.
    let origin = Origin::new(&[("cache-control", "max-age=100"), ("age", "99")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    app.get("/r").await;
    app.get_until("/r", Duration::from_secs(5), |g| g.x_cache() == "miss")
        .await;
    // Already older than its lifetime: not stored at all.
    let origin = Origin::new(&[("cache-control", "max-age=100"), ("age", "100")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    app.get("/r").await;
    assert_eq!(app.get("/r").await.x_cache(), "miss");
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale_even_on_a_5xx() {
    for (cc, stale_allowed) in [
        ("max-age=1", true),
        ("max-age=1, must-revalidate", false),
        ("max-age=1, proxy-revalidate", false),
        ("s-maxage=1", false),
    ] {
        let origin = Origin::new(&[("cache-control", cc)]);
        let app = serve(
            Router::new()
                .route("/r", origin.route())
                .layer(layer().stale_for(Duration::from_secs(60))),
        )
        .await;
        app.get("/r").await;
        origin.set_status(503);
        let got = app
            .get_until("/r", Duration::from_secs(5), |g| g.x_cache() != "hit")
            .await;
        if stale_allowed {
            assert_eq!(
                (got.status, got.x_cache(), got.body.as_str()),
                (StatusCode::OK, "stale", "call 1"),
                "{cc}"
            );
        } else {
            assert_eq!(
                (got.status, got.x_cache()),
                (StatusCode::SERVICE_UNAVAILABLE, "miss"),
                "{cc}"
            );
        }
    }
}

#[tokio::test]
async fn range_requests_pass_through() {
    let origin = Origin::new(&[("cache-control", "max-age=60")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    // Nothing stored: the handler answers the range, and its 206 is not stored.
    let range = app.get_with("/r", &[("range", "bytes=0-1")]).await;
    assert_eq!(
        (range.status, range.x_cache(), range.body.as_str()),
        (StatusCode::PARTIAL_CONTENT, "bypass", "ca")
    );
    assert_eq!(origin.calls(), 1);
    let full = app.get("/r").await;
    assert_eq!((full.x_cache(), full.body.as_str()), ("miss", "call 2"));
    // With an `If-Range` the handler decides too.
    let range = app
        .get_with("/r", &[("range", "bytes=0-1"), ("if-range", "\"x\"")])
        .await;
    assert_eq!(
        (range.status, range.x_cache()),
        (StatusCode::PARTIAL_CONTENT, "bypass")
    );
    assert_eq!(origin.calls(), 3);
    // The 206 did not replace the whole response.
    assert_eq!(app.get("/r").await.body, "call 2");
}

#[tokio::test]
async fn fields_listed_in_connection_are_not_stored() {
    let origin = Origin::new(&[("connection", "x-hop"), ("x-hop", "1"), ("x-kept", "1")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    app.get("/r").await;
    let hit = app.get("/r").await;
    assert_eq!(hit.x_cache(), "hit");
    assert!(hit.headers.get("x-hop").is_none());
    assert_eq!(hit.header("x-kept"), "1");
}

#[tokio::test]
async fn heuristically_cacheable_statuses_are_stored() {
    for (status, stored) in [
        (404, true),
        (410, true),
        (301, true),
        (500, false),
        (201, false),
    ] {
        let origin = Origin::new(&[]);
        origin.set_status(status);
        let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
        app.get("/r").await;
        let again = app.get("/r").await;
        assert_eq!(again.status.as_u16(), status);
        assert_eq!(
            again.x_cache(),
            if stored { "hit" } else { "miss" },
            "{status}"
        );
    }
}

#[tokio::test]
async fn freshness_clamps() {
    // A floor lifts a one-second lifetime; a ceiling cuts a long one.
    let origin = Origin::new(&[("cache-control", "max-age=1")]);
    let app = serve(
        Router::new()
            .route("/r", origin.route())
            .layer(layer().min_ttl(Duration::from_secs(60))),
    )
    .await;
    app.get("/r").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(app.get("/r").await.x_cache(), "hit");

    let origin = Origin::new(&[("cache-control", "max-age=3600")]);
    let app = serve(
        Router::new()
            .route("/r", origin.route())
            .layer(layer().max_ttl(Duration::from_secs(1))),
    )
    .await;
    app.get("/r").await;
    app.get_until("/r", Duration::from_secs(5), |g| g.x_cache() == "miss")
        .await;
}

#[tokio::test]
async fn if_none_match_is_answered_304_from_a_fresh_entry() {
    for etag in ["\"v1\"", "W/\"v1\""] {
        let origin = Origin::new(&[
            ("etag", etag),
            ("cache-control", "public, max-age=60"),
            ("vary", "accept-language"),
            ("content-location", "/r.txt"),
            ("x-other", "1"),
        ]);
        let layer = layer().vary(header::ACCEPT_LANGUAGE);
        let app = serve(Router::new().route("/r", origin.route()).layer(layer)).await;
        app.get("/r").await;
        // Strong and weak forms match either way (the weak comparison), in a list too.
        for inm in ["\"v1\"", "W/\"v1\"", "\"v0\", W/\"v1\"", "*"] {
            let got = app.get_with("/r", &[("if-none-match", inm)]).await;
            assert_eq!(
                (got.status, got.x_cache(), got.body.as_str()),
                (StatusCode::NOT_MODIFIED, "hit", ""),
                "{etag} / {inm}"
            );
            assert_eq!(got.header("etag"), etag);
            assert_eq!(got.header("cache-control"), "public, max-age=60");
            assert_eq!(got.header("vary"), "accept-language");
            assert_eq!(got.header("content-location"), "/r.txt");
            assert!(got.headers.get("x-other").is_none(), "{:?}", got.headers);
            assert!(got.headers.get("content-type").is_none());
            assert!(got.headers.contains_key("date"));
            assert!(got.cache_status().starts_with("stormcache; hit"));
        }
        // Another tag: the full response.
        let got = app.get_with("/r", &[("if-none-match", "\"v2\"")]).await;
        assert_eq!(
            (got.status, got.x_cache(), got.body.as_str()),
            (StatusCode::OK, "hit", "call 1")
        );
        assert_eq!(origin.calls(), 1);
    }
}

#[tokio::test]
async fn a_conditional_miss_fills_the_entry_and_is_answered_304() {
    let origin = Origin::new(&[("etag", "\"v1\"")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    let got = app.get_with("/r", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(
        (got.status, got.x_cache()),
        (StatusCode::NOT_MODIFIED, "miss")
    );
    let full = app.get("/r").await;
    assert_eq!((full.x_cache(), full.body.as_str()), ("hit", "call 1"));
}

#[tokio::test]
async fn if_modified_since_against_last_modified() {
    let modified = SystemTime::now() - Duration::from_secs(3600);
    let last_modified = httpdate::fmt_http_date(modified);
    let origin = Origin::new(&[("last-modified", &last_modified)]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    app.get("/r").await;
    let same = app
        .get_with("/r", &[("if-modified-since", &last_modified)])
        .await;
    assert_eq!(
        (same.status, same.body.as_str()),
        (StatusCode::NOT_MODIFIED, "")
    );
    assert_eq!(same.header("last-modified"), last_modified, "no ETag: kept");
    let before = httpdate::fmt_http_date(modified - Duration::from_secs(60));
    let older = app.get_with("/r", &[("if-modified-since", &before)]).await;
    assert_eq!(
        (older.status, older.body.as_str()),
        (StatusCode::OK, "call 1")
    );
    // If-None-Match present: If-Modified-Since is not looked at.
    let both = app
        .get_with(
            "/r",
            &[
                ("if-none-match", "\"x\""),
                ("if-modified-since", &last_modified),
            ],
        )
        .await;
    assert_eq!(both.status, StatusCode::OK);
    let garbage = app
        .get_with("/r", &[("if-modified-since", "yesterday")])
        .await;
    assert_eq!(garbage.status, StatusCode::OK);
}

#[tokio::test]
async fn cache_status_on_every_response() {
    let origin = Origin::new(&[("cache-control", "max-age=60")]);
    let uncacheable = Origin::new(&[("cache-control", "no-store")]);
    let app = serve(
        Router::new()
            .route("/r", origin.route().post(|| async { "posted" }))
            .route("/n", uncacheable.route())
            .layer(layer().request_no_cache(true)),
    )
    .await;
    let miss = app.get("/r").await;
    assert_eq!(miss.cache_status(), "stormcache; fwd=miss; stored; ttl=60");
    let hit = app.get("/r").await;
    let ttl: i64 = hit
        .cache_status()
        .strip_prefix("stormcache; hit; ttl=")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{}", hit.cache_status()));
    assert!((59..=60).contains(&ttl), "{ttl}");
    let refresh = app.get_with("/r", &[("cache-control", "no-cache")]).await;
    assert_eq!(
        refresh.cache_status(),
        "stormcache; fwd=request; stored; ttl=60"
    );
    assert_eq!(refresh.body, "call 2");
    let no_store = app.get_with("/r", &[("cache-control", "no-store")]).await;
    assert_eq!(
        no_store.cache_status(),
        "stormcache; fwd=bypass; detail=no-store"
    );
    // A range the layer does not answer from the stored response (`If-Range`).
    let range = app
        .get_with("/r", &[("range", "bytes=0-1"), ("if-range", "\"x\"")])
        .await;
    assert_eq!(range.cache_status(), "stormcache; fwd=bypass; detail=range");
    let credentials = app.get_with("/r", &[("authorization", "Bearer x")]).await;
    assert_eq!(
        credentials.cache_status(),
        "stormcache; fwd=bypass; detail=credentials"
    );
    let post = app.send(Method::POST, "/r", &[]).await;
    assert_eq!(post.cache_status(), "stormcache; fwd=method");
    let unstored = app.get("/n").await;
    assert_eq!(
        unstored.cache_status(),
        "stormcache; fwd=miss; detail=no-store"
    );
}

#[tokio::test]
async fn cache_status_of_a_stale_answer_and_x_cache_turned_off() {
    let origin = Origin::new(&[("cache-control", "max-age=1")]);
    let app = serve(
        Router::new()
            .route("/r", origin.route())
            .layer(layer().stale_for(Duration::from_secs(60)).x_cache(false)),
    )
    .await;
    let miss = app.get("/r").await;
    assert!(miss.headers.get("x-cache").is_none());
    origin.set_status(502);
    let stale = app
        .get_until("/r", Duration::from_secs(5), |g| {
            !g.cache_status().starts_with("stormcache; hit")
        })
        .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert!(
        stale
            .cache_status()
            .starts_with("stormcache; fwd=stale; fwd-status=502; ttl=-"),
        "{}",
        stale.cache_status()
    );
    assert!(stale.headers.get("x-cache").is_none());
}

#[tokio::test]
async fn an_upstream_cache_status_is_kept_and_ours_follows() {
    let origin = Origin::new(&[("cache-status", "upstream; fwd=uri-miss; stored")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    let miss = app.get("/r").await;
    let members: Vec<&str> = miss
        .headers
        .get_all("cache-status")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        members,
        [
            "upstream; fwd=uri-miss; stored",
            "stormcache; fwd=miss; stored; ttl=300"
        ]
    );
}

#[tokio::test]
async fn an_inner_layer_owns_its_route_without_x_cache() {
    // The outer layer tells the inner one's answer by more than its x-cache header: with
    // x-cache off on both, it still keeps no copy of its own and leaves Cache-Status alone.
    let cache = Cache::builder("http-semantics").build().expect("cache");
    let origin = Origin::new(&[]);
    let app = serve(
        Router::new()
            .route(
                "/r",
                origin.route().route_layer(
                    CacheLayer::new(cache.clone())
                        .x_cache(false)
                        .tag(stormcache::Key::literal("inner").expect("key")),
                ),
            )
            .layer(CacheLayer::new(cache.clone()).x_cache(false)),
    )
    .await;
    let miss = app.get("/r").await;
    assert_eq!(miss.cache_status(), "stormcache; fwd=miss; stored");
    assert_eq!(miss.headers.get_all("cache-status").iter().count(), 1);
    assert_eq!(app.get("/r").await.cache_status(), "stormcache; hit");
    cache
        .invalidate_tag(&stormcache::Key::literal("inner").expect("key"))
        .await;
    let after = app.get("/r").await;
    assert_eq!(
        (after.cache_status(), after.body.as_str()),
        ("stormcache; fwd=miss; stored", "call 2")
    );
}

#[tokio::test]
async fn concurrent_misses_say_collapsed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let app = serve(
        Router::new()
            .route(
                "/slow",
                get(move || {
                    let c = Arc::clone(&c);
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        // Long enough for the other requests to arrive while it runs.
                        tokio::time::sleep(Duration::from_millis(1_000)).await;
                        "slow"
                    }
                }),
            )
            .layer(layer()),
    )
    .await;
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.get("/slow").await.cache_status().to_owned() })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    statuses.sort();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{statuses:?}");
    assert_eq!(
        statuses,
        [
            "stormcache; fwd=miss; collapsed; ttl=300",
            "stormcache; fwd=miss; collapsed; ttl=300",
            "stormcache; fwd=miss; collapsed; ttl=300",
            "stormcache; fwd=miss; stored; ttl=300",
        ]
    );
}

#[tokio::test]
async fn head_with_a_matching_etag_is_304_too() {
    let origin = Origin::new(&[("etag", "\"v1\"")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    app.get("/r").await;
    let got = app
        .send(Method::HEAD, "/r", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(
        (got.status, got.x_cache()),
        (StatusCode::NOT_MODIFIED, "hit")
    );
    let got = app.send(Method::HEAD, "/r", &[]).await;
    assert_eq!(
        (got.status, got.header("content-length")),
        (StatusCode::OK, "6")
    );
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_with_its_etag() {
    // The handler answers 304 to its current ETag, with a header of its own that is new.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (c, s) = (Arc::clone(&calls), Arc::clone(&seen));
    let handler = get(move |headers: HeaderMap| {
        let (c, s) = (Arc::clone(&c), Arc::clone(&s));
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            let inm = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            s.lock().expect("lock").push(inm.clone());
            let mut h = HeaderMap::new();
            h.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
            h.insert("x-call", HeaderValue::from(n));
            if inm == "\"v1\"" {
                return (StatusCode::NOT_MODIFIED, h, String::new());
            }
            (StatusCode::OK, h, format!("call {n}"))
        }
    });
    let app = serve(
        Router::new()
            .route("/r", handler)
            .layer(layer().stale_for(Duration::from_secs(60))),
    )
    .await;
    assert_eq!(app.get("/r").await.x_cache(), "miss");
    let revalidated = app
        .get_until("/r", Duration::from_secs(5), |g| g.x_cache() != "hit")
        .await;
    assert_eq!(
        (
            revalidated.status,
            revalidated.x_cache(),
            revalidated.body.as_str()
        ),
        (StatusCode::OK, "revalidated", "call 1"),
        "the stored body, not the 304"
    );
    assert_eq!(
        revalidated.cache_status(),
        "stormcache; fwd=stale; fwd-status=304; stored; ttl=1"
    );
    assert_eq!(
        revalidated.header("x-call"),
        "2",
        "fields updated from the 304"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        *seen.lock().expect("lock"),
        ["".to_owned(), "\"v1\"".to_owned()],
        "the handler was asked with the stored ETag"
    );
    // Fresh again: a hit with the updated fields.
    let hit = app.get("/r").await;
    assert_eq!(
        (hit.x_cache(), hit.body.as_str(), hit.header("x-call")),
        ("hit", "call 1", "2")
    );
    // A client's own precondition is answered from the entry while it is fresh, and goes
    // to the handler as it is once the entry is stale; the handler's 304 is passed on, not
    // stored.
    let inm = [("if-none-match", "\"v1\"")];
    let passed = app
        .get_with_until("/r", &inm, Duration::from_secs(5), |g| g.x_cache() != "hit")
        .await;
    assert_eq!(
        (passed.status, passed.x_cache(), passed.cache_status()),
        (
            StatusCode::NOT_MODIFIED,
            "miss",
            "stormcache; fwd=miss; detail=status"
        )
    );
    assert_eq!(
        seen.lock().expect("lock").last().map(String::as_str),
        Some("\"v1\"")
    );
    assert_eq!(app.get("/r").await.x_cache(), "revalidated");
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_with_its_last_modified() {
    let modified = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let lm = modified.clone();
    let handler = get(move |headers: HeaderMap| {
        let c = Arc::clone(&c);
        let lm = lm.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            let mut h = HeaderMap::new();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
            h.insert(
                header::LAST_MODIFIED,
                HeaderValue::from_str(&lm).expect("date"),
            );
            let unchanged = headers
                .get(header::IF_MODIFIED_SINCE)
                .is_some_and(|v| v.to_str().ok() == Some(lm.as_str()));
            if unchanged {
                return (StatusCode::NOT_MODIFIED, h, String::new());
            }
            (StatusCode::OK, h, format!("call {n}"))
        }
    });
    let app = serve(
        Router::new()
            .route("/r", handler)
            .layer(layer().stale_for(Duration::from_secs(60))),
    )
    .await;
    app.get("/r").await;
    let revalidated = app
        .get_until("/r", Duration::from_secs(5), |g| g.x_cache() != "hit")
        .await;
    assert_eq!(
        (revalidated.x_cache(), revalidated.body.as_str()),
        ("revalidated", "call 1")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Without stale_for nothing expired is kept, so nothing is revalidated.
    let origin = Origin::new(&[("cache-control", "max-age=1"), ("etag", "\"v1\"")]);
    let app = serve(Router::new().route("/r", origin.route()).layer(layer())).await;
    app.get("/r").await;
    let reloaded = app
        .get_until("/r", Duration::from_secs(5), |g| g.x_cache() != "hit")
        .await;
    assert_eq!(
        (reloaded.x_cache(), reloaded.body.as_str()),
        ("miss", "call 2")
    );
}

/// A handler that waits until the test opens its gate, counting its calls.
fn gated_route(
    gate: tokio::sync::watch::Receiver<bool>,
    calls: Arc<AtomicUsize>,
) -> axum::routing::MethodRouter {
    get(move || {
        let (mut gate, calls) = (gate.clone(), Arc::clone(&calls));
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = gate.wait_for(|open| *open).await;
            format!("call {n}")
        }
    })
}

#[tokio::test]
async fn hard_timeout_answers_504_and_nobody_waits_longer() {
    let (_open, gate) = tokio::sync::watch::channel(false);
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder("http-hard").build().expect("cache");
    let app = Router::new()
        .route("/slow", gated_route(gate, Arc::clone(&calls)))
        .layer(CacheLayer::new(cache).hard_timeout(Duration::from_millis(300)));
    let served = serve(app).await;
    let started = Instant::now();
    let got = served.get("/slow").await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        got.cache_status().contains("detail=timeout"),
        "{}",
        got.cache_status()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn soft_timeout_answers_the_collapsed_request_with_the_stale_response() {
    let (open, gate) = tokio::sync::watch::channel(true);
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::builder("http-soft").build().expect("cache");
    let app = Router::new()
        .route("/page", gated_route(gate, Arc::clone(&calls)))
        .layer(
            CacheLayer::new(cache)
                .ttl(Duration::from_millis(100))
                .stale_for(Duration::from_secs(600))
                .soft_timeout(Duration::from_millis(150)),
        );
    let served = Arc::new(serve(app).await);
    assert_eq!(served.get("/page").await.body, "call 1");
    // From now on the handler hangs until the gate opens. The first request after the
    // entry expires leads the reload, and waits for it.
    open.send_replace(false);
    let leader = {
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            served
                .get_until("/page", Duration::from_secs(10), |g| g.x_cache() != "hit")
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another request for the key joins that load, and gets the stale response at the
    // soft timeout.
    let started = Instant::now();
    let waiter = served.get("/page").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        (waiter.status, waiter.body.as_str()),
        (StatusCode::OK, "call 1")
    );
    assert!(
        waiter.cache_status().contains("fwd=stale"),
        "{}",
        waiter.cache_status()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the waiter ran the handler"
    );
    open.send_replace(true);
    let led = leader.await.expect("leader");
    assert_eq!((led.status, led.body.as_str()), (StatusCode::OK, "call 2"));
}

/// tower-http's `TimeoutLayer` inside the cache answers `408` when the handler is too slow:
/// like a 5xx, that is a failure the stale response stands in for; a `404` is an answer.
#[tokio::test]
async fn a_408_from_a_timeout_layer_is_answered_stale_and_a_404_is_passed_on() {
    for (status, stale) in [(408, true), (404, false)] {
        let origin = Origin::new(&[("cache-control", "max-age=1, no-transform")]);
        let app = serve(
            Router::new()
                .route("/r", origin.route())
                .layer(layer().stale_for(Duration::from_secs(60))),
        )
        .await;
        app.get("/r").await;
        origin.set_status(status);
        let got = app
            .get_until("/r", Duration::from_secs(5), |g| g.x_cache() != "hit")
            .await;
        if stale {
            assert_eq!(
                (got.status, got.x_cache(), got.body.as_str()),
                (StatusCode::OK, "stale", "call 1")
            );
        } else {
            assert_eq!(got.status.as_u16(), status);
        }
    }
}

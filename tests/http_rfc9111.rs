//! `CacheLayer` as an RFC 9111 shared cache, through the real stack (an axum app served on
//! `127.0.0.1:0`, a hyper client), on the points the public HTTP cache test suite
//! (cache-tests.fyi) checks: any final status stored when the response gives its own
//! lifetime, the `Last-Modified` heuristic, `must-revalidate` responses kept for
//! revalidation only, `Age` lists, and the three HTTP date forms in `Expires`.
#![cfg(feature = "axum")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, MethodRouter};
use axum::Router;
use stormcache::layer::CacheLayer;
use stormcache::Cache;
use support::http::{self, Got, Served};

/// What the handler answers to its `n`th call (from 1): status, header fields, and how long
/// it takes. The body is `call <n>`.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

fn reply(status: u16, headers: &[(&'static str, &str)]) -> Reply {
    Reply {
        status,
        headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
        delay: Duration::ZERO,
    }
}

/// A route whose handler answers `script(n, request headers)`, and its call count.
fn origin<F>(script: F) -> (MethodRouter, Arc<AtomicUsize>)
where
    F: Fn(usize, &HeaderMap) -> Reply + Clone + Send + Sync + 'static,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let route = get(move |req: HeaderMap| {
        let (script, counter) = (script.clone(), Arc::clone(&counter));
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let reply = script(n, &req);
            tokio::time::sleep(reply.delay).await;
            let mut h = HeaderMap::new();
            for (name, value) in &reply.headers {
                h.append(*name, HeaderValue::from_str(value).expect("header value"));
            }
            let status = StatusCode::from_u16(reply.status).expect("status");
            let body = if status == StatusCode::NOT_MODIFIED {
                String::new()
            } else {
                format!("call {n}")
            };
            (status, h, body)
        }
    });
    (route, calls)
}

/// Serves `app` on `127.0.0.1:0`; each request gets 10 s.
async fn serve(app: Router) -> Served {
    http::serve_within(app, Duration::from_secs(10)).await
}

fn cache(namespace: &str) -> Cache {
    Cache::builder(namespace).build().expect("cache")
}

/// `at` seconds from now (negative: ago), as an IMF-fixdate.
fn http_date(at: i64) -> String {
    let now = SystemTime::now();
    let t = if at >= 0 {
        now + Duration::from_secs(at.unsigned_abs())
    } else {
        now - Duration::from_secs(at.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

/// The `ttl` member of a `Cache-Status` entry, in seconds.
fn cache_status_ttl(got: &Got) -> i64 {
    let status = got.header("cache-status");
    status
        .split(';')
        .find_map(|p| p.trim().strip_prefix("ttl="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {status:?}"))
}

#[tokio::test]
async fn explicit_freshness_makes_any_final_status_storable() {
    // Statuses the layer would not store on its heuristic (`HEURISTIC_STATUSES`), stored
    // because the response gives its own lifetime or says `public`.
    for (status, cc) in [
        (503, "max-age=60"),
        (302, "max-age=60"),
        (400, "s-maxage=60"),
        (599, "public, max-age=60"),
    ] {
        let (route, calls) = origin(move |_, _| reply(status, &[("cache-control", cc)]));
        let layer = CacheLayer::new(cache("rfc-status")).ttl(Duration::from_secs(300));
        let app = serve(Router::new().route("/r", route).layer(layer)).await;
        assert_eq!(app.get("/r").await.x_cache(), "miss", "{status}");
        let hit = app.get("/r").await;
        assert_eq!(hit.status.as_u16(), status);
        assert_eq!((hit.x_cache(), hit.body.as_str()), ("hit", "call 1"));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{status}");
    }
    // No lifetime of its own: only the layer's statuses; and never 206 or 304's kin.
    for (status, cc) in [(503, ""), (201, "no-transform"), (206, "max-age=60")] {
        let (route, calls) = origin(move |_, _| reply(status, &[("cache-control", cc)]));
        let layer = CacheLayer::new(cache("rfc-status-not")).ttl(Duration::from_secs(300));
        let app = serve(Router::new().route("/r", route).layer(layer)).await;
        app.get("/r").await;
        let again = app.get("/r").await;
        assert_eq!(again.x_cache(), "miss", "{status}");
        assert!(again.header("cache-status").contains("detail=status"));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{status}");
    }
    // `Expires` is a lifetime too.
    let expires = http_date(60);
    let (route, calls) = origin(move |_, _| reply(500, &[("expires", &expires)]));
    let layer = CacheLayer::new(cache("rfc-status-expires"));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    app.get("/r").await;
    assert_eq!(app.get("/r").await.x_cache(), "hit");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_stale_stored_5xx_does_not_stand_in_for_a_failing_handler() {
    // The origin's 503 was fresh for a second; once stale, the handler's own 503 of now is
    // the answer, not the stored one, although the layer serves stale on failures.
    let (route, calls) = origin(|n, _| match n {
        1 => reply(503, &[("cache-control", "max-age=1")]),
        _ => reply(503, &[]),
    });
    let layer = CacheLayer::new(cache("rfc-stale-5xx")).stale_for(Duration::from_secs(60));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    app.get("/r").await;
    assert_eq!(app.get("/r").await.x_cache(), "hit");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let now = app.get("/r").await;
    assert_eq!((now.status.as_u16(), now.body.as_str()), (503, "call 2"));
    assert_eq!(now.x_cache(), "miss");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn last_modified_gives_a_tenth_of_its_age_capped_by_the_layer() {
    // Modified 1000 s before its Date: fresh for 100 s, under the layer's 300 s.
    let modified = http_date(-1000);
    let (route, _) = origin(move |_, _| reply(200, &[("last-modified", &modified)]));
    let layer = CacheLayer::new(cache("rfc-heuristic")).ttl(Duration::from_secs(300));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    let stored = app.get("/r").await;
    assert!(
        (98..=101).contains(&cache_status_ttl(&stored)),
        "{}",
        stored.header("cache-status")
    );
    assert_eq!(app.get("/r").await.x_cache(), "hit");

    // Modified a day ago: a tenth is 8640 s, capped at the layer's TTL of 30 s.
    let modified = http_date(-86_400);
    let (route, _) = origin(move |_, _| reply(200, &[("last-modified", &modified)]));
    let layer = CacheLayer::new(cache("rfc-heuristic-cap")).ttl(Duration::from_secs(30));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    let stored = app.get("/r").await;
    assert!((29..=31).contains(&cache_status_ttl(&stored)));
}

#[tokio::test]
async fn with_a_zero_ttl_only_last_modified_responses_are_reused() {
    // The published shared caches' default: a response that says nothing is not reused
    // while the handler answers; one with an old `Last-Modified` is.
    let modified = http_date(-86_400);
    let (with_lm, with_calls) = origin(move |_, _| reply(200, &[("last-modified", &modified)]));
    let (without, without_calls) = origin(|_, _| reply(200, &[]));
    let layer = CacheLayer::new(cache("rfc-heuristic-zero"))
        .ttl(Duration::ZERO)
        .heuristic_max(Duration::from_secs(3600))
        .stale_for(Duration::from_secs(60));
    let app = serve(
        Router::new()
            .route("/lm", with_lm)
            .route("/none", without)
            .layer(layer),
    )
    .await;
    app.get("/lm").await;
    let hit = app.get("/lm").await;
    assert_eq!((hit.x_cache(), hit.body.as_str()), ("hit", "call 1"));
    assert_eq!(with_calls.load(Ordering::SeqCst), 1);
    app.get("/none").await;
    let again = app.get("/none").await;
    assert_eq!(again.body, "call 2");
    assert_eq!(without_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_must_revalidate_response_is_revalidated_once_stale() {
    let (route, calls) = origin(|n, req| {
        let revalidating = req
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v == "\"v1\"");
        let headers = [
            ("cache-control", "max-age=1, must-revalidate"),
            ("etag", "\"v1\""),
        ];
        match n {
            2 if revalidating => reply(304, &headers),
            2 => panic!("the stale entry was not revalidated"),
            _ => reply(200, &headers),
        }
    });
    let layer = CacheLayer::new(cache("rfc-must-revalidate")).stale_for(Duration::from_secs(60));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    app.get("/r").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let revalidated = app.get("/r").await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(
        (revalidated.x_cache(), revalidated.body.as_str()),
        ("revalidated", "call 1")
    );
    assert_eq!(app.get("/r").await.x_cache(), "hit");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_kept_must_revalidate_response_is_never_served_stale() {
    // Kept past its freshness (it has a validator) but neither on a failure nor at the
    // hard timeout does it stand in: the failure, or 504.
    let (route, _) = origin(|n, _| {
        let headers = [
            ("cache-control", "max-age=1, must-revalidate"),
            ("etag", "\"v1\""),
        ];
        match n {
            1 => reply(200, &headers),
            2 => reply(500, &[]),
            _ => Reply {
                delay: Duration::from_secs(2),
                ..reply(200, &headers)
            },
        }
    });
    let layer = CacheLayer::new(cache("rfc-must-revalidate-stale"))
        .stale_for(Duration::from_secs(60))
        .hard_timeout(Duration::from_millis(300));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    app.get("/r").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let failed = app.get("/r").await;
    assert_eq!(
        (failed.status.as_u16(), failed.body.as_str()),
        (500, "call 2")
    );
    let started = Instant::now();
    let timed_out = app.get("/r").await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn age_lists_count_their_first_member_and_invalid_ages_are_ignored() {
    for (age, reused) in [
        ("7200, 0", false),
        ("0, 7200", true),
        ("abc", true),
        ("-7200", true),
        ("7200.0", true),
        ("2147483649", false),
    ] {
        let (route, calls) =
            origin(move |_, _| reply(200, &[("cache-control", "max-age=3600"), ("age", age)]));
        let app = serve(
            Router::new()
                .route("/r", route)
                .layer(CacheLayer::new(cache("rfc-age"))),
        )
        .await;
        app.get("/r").await;
        app.get("/r").await;
        let expected = if reused { 1 } else { 2 };
        assert_eq!(calls.load(Ordering::SeqCst), expected, "Age: {age}");
    }
}

#[tokio::test]
async fn expires_is_read_in_the_three_date_forms_in_any_case() {
    for (expires, reused) in [
        ("Thu Aug  8 02:01:18 2050", true),
        ("Thursday, 18-Aug-50 02:01:18 GMT", true),
        ("THU, 18 Aug 2050 02:01:18 GMT", true),
        ("Thu, 18 AUG 2050 02:01:18 GMT", true),
        ("Thu, 18 Aug 2050 02:01:18 gMT", true),
        // Not an HTTP date: already expired.
        ("Thu, 18 Aug 2050 02:01:18 UTC", false),
        ("Thu, 18 Aug 50 02:01:18 GMT", false),
        ("Thu, 18 Aug 2050 2:01:18 GMT", false),
    ] {
        let (route, calls) = origin(move |_, _| reply(200, &[("expires", expires)]));
        let layer = CacheLayer::new(cache("rfc-expires")).ttl(Duration::from_secs(300));
        let app = serve(Router::new().route("/r", route).layer(layer)).await;
        app.get("/r").await;
        app.get("/r").await;
        let expected = if reused { 1 } else { 2 };
        assert_eq!(calls.load(Ordering::SeqCst), expected, "Expires: {expires}");
    }
}

#[tokio::test]
async fn a_single_byte_range_is_cut_out_of_a_stored_response() {
    let (route, calls) = origin(|_, req| {
        // The handler itself ignores ranges; the layer must not pass them on when it can
        // answer them.
        assert!(req.get(header::RANGE).is_none() || req.get(header::IF_RANGE).is_some());
        reply(200, &[("cache-control", "max-age=60"), ("x-kept", "1")])
    });
    let layer = CacheLayer::new(cache("rfc-range"));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    assert_eq!(app.get("/r").await.body, "call 1");
    for (range, body, content_range) in [
        ("bytes=0-3", "call", "bytes 0-3/6"),
        ("bytes=5-", "1", "bytes 5-5/6"),
        ("bytes=-2", " 1", "bytes 4-5/6"),
        ("bytes=2-100", "ll 1", "bytes 2-5/6"),
    ] {
        let got = app.get_with("/r", &[("range", range)]).await;
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(got.body, body, "{range}");
        assert_eq!(got.header("content-range"), content_range);
        assert_eq!(got.header("x-kept"), "1", "the stored fields are kept");
        assert_eq!(got.x_cache(), "hit");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Several ranges, or one past the end: the handler's answer (here the whole body).
    for range in ["bytes=0-1,3-4", "bytes=10-"] {
        let got = app
            .get_with("/r", &[("range", range), ("if-range", "\"any\"")])
            .await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.x_cache(), "bypass");
    }
}

#[tokio::test]
async fn a_soft_timeout_waits_for_the_revalidation_of_a_must_revalidate_response() {
    // Two requests for a stale `must-revalidate` response whose handler takes 600 ms: the
    // one that joined the other's load does not take the stale response at the soft
    // timeout (it may not be served stale), nor a 504: it waits for the revalidation.
    let (route, calls) = origin(|n, _| {
        let headers = [
            ("cache-control", "max-age=1, must-revalidate"),
            ("etag", "\"v1\""),
        ];
        match n {
            1 => reply(200, &headers),
            _ => Reply {
                delay: Duration::from_millis(600),
                ..reply(304, &headers)
            },
        }
    });
    let layer = CacheLayer::new(cache("rfc-must-revalidate-soft"))
        .stale_for(Duration::from_secs(60))
        .soft_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_secs(5));
    let app = Arc::new(serve(Router::new().route("/r", route).layer(layer)).await);
    app.get("/r").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let first = tokio::spawn({
        let app = Arc::clone(&app);
        async move { app.get("/r").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = app.get("/r").await;
    let first = first.await.expect("first request");
    for got in [&first, &second] {
        assert_eq!((got.status, got.body.as_str()), (StatusCode::OK, "call 1"));
    }
    assert_eq!(first.x_cache(), "revalidated");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failure_with_a_lifetime_does_not_replace_a_stale_response_that_covers_it() {
    // A middleware that puts `max-age` on every answer, 5xx included: while the layer's
    // grace covers the stale 200, the 503 is answered for by it and not stored; once the
    // origin recovers, its 200 is stored again.
    let (route, calls) = origin(|n, _| match n {
        1 | 4 => reply(200, &[("cache-control", "max-age=1")]),
        _ => reply(503, &[("cache-control", "max-age=60")]),
    });
    let layer = CacheLayer::new(cache("rfc-covered-5xx")).stale_for(Duration::from_secs(60));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    app.get("/r").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for _ in 0..2 {
        let stale = app.get("/r").await;
        assert_eq!(
            (stale.status, stale.body.as_str()),
            (StatusCode::OK, "call 1")
        );
        assert_eq!(stale.x_cache(), "stale");
    }
    let recovered = app.get("/r").await;
    assert_eq!(
        (recovered.x_cache(), recovered.body.as_str()),
        ("miss", "call 4")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_response_modified_just_now_is_stored_stale() {
    // `Last-Modified` equal to its `Date`: a tenth of no time is no freshness, so the next
    // request goes to the handler again (the layer's TTL does not apply: the response
    // said when it changed).
    let (route, calls) = origin(|_, _| {
        let now = http_date(0);
        reply(200, &[("last-modified", &now), ("date", &now)])
    });
    let layer = CacheLayer::new(cache("rfc-heuristic-now")).ttl(Duration::from_secs(300));
    let app = serve(Router::new().route("/r", route).layer(layer)).await;
    app.get("/r").await;
    let again = app.get("/r").await;
    assert_eq!(again.body, "call 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

//! The caching reverse proxy example (`examples/reverse_proxy.rs`) in front of a real
//! upstream: both served on `127.0.0.1:0`, a hyper client talking to the proxy. The
//! upstream's own headers decide what is stored; conditional requests are answered by the
//! proxy; a stored response answers for an upstream that is down; `no-store` is honoured.
#![cfg(feature = "axum")]

#[allow(dead_code)]
#[path = "../examples/reverse_proxy.rs"]
mod example;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormcache::Cache;

/// Serves `app` on `127.0.0.1:0`; its base URL, and the task to abort to take it down.
async fn serve(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (format!("http://{addr}"), task)
}

/// The upstream: `/items` (fresh 60 s, with an ETag), `/short` (fresh 1 s), `/private`
/// (`no-store`); each counts its calls and says which call answered.
fn upstream(calls: Arc<AtomicUsize>) -> Router {
    let route = |cache_control: &'static str, calls: Arc<AtomicUsize>| {
        get(move |headers: HeaderMap| {
            let calls = Arc::clone(&calls);
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let via = headers
                    .get(header::VIA)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                (
                    [
                        (
                            header::CACHE_CONTROL,
                            HeaderValue::from_static(cache_control),
                        ),
                        (header::ETAG, HeaderValue::from_static("\"v1\"")),
                    ],
                    format!("call {n} via {via}"),
                )
            }
        })
    };
    Router::new()
        .route("/items", route("max-age=60", Arc::clone(&calls)))
        .route("/short", route("max-age=1", Arc::clone(&calls)))
        .route("/private", route("no-store", calls))
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Got {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn get_from(base: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().uri(format!("{base}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(req.body(Empty::new()).expect("request")),
    )
    .await
    .expect("an answer within 20 s")
    .expect("an answer");
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test]
async fn the_proxy_caches_by_the_upstreams_headers_and_answers_for_it_when_it_is_down() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (upstream_url, upstream_task) = serve(upstream(Arc::clone(&calls))).await;
    let cache = Cache::builder("proxy-test").build().expect("cache");
    let target = example::Upstream::parse(&upstream_url).expect("upstream URL");
    let (proxy, _proxy_task) = serve(example::proxy(target, cache)).await;

    // Stored by the upstream's max-age; the second request never reaches it.
    let first = get_from(&proxy, "/items", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "call 1 via 1.1 stormcache");
    let second = get_from(&proxy, "/items", &[]).await;
    assert_eq!(second.body, "call 1 via 1.1 stormcache");
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A conditional request is answered by the proxy.
    let revalidated = get_from(&proxy, "/items", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // `no-store` is never stored.
    get_from(&proxy, "/private", &[]).await;
    get_from(&proxy, "/private", &[]).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A short-lived response, then the upstream goes down: once the entry has expired, the
    // proxy answers with it (stale) instead of the 502 it gets.
    let short = get_from(&proxy, "/short", &[]).await;
    assert_eq!(short.status, StatusCode::OK);
    upstream_task.abort();
    let _ = upstream_task.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let stale = loop {
        let got = get_from(&proxy, "/short", &[]).await;
        if !got.cache_status().contains("hit") {
            break got;
        }
        assert!(Instant::now() < deadline, "the 1 s entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stale.status, StatusCode::OK, "{}", stale.cache_status());
    assert_eq!(stale.body, short.body);
    assert!(
        stale.cache_status().contains("fwd=stale"),
        "{}",
        stale.cache_status()
    );
    // A path never stored gets the upstream's failure.
    let never = get_from(&proxy, "/items-2", &[]).await;
    assert_eq!(never.status, StatusCode::BAD_GATEWAY);
}

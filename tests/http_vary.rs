//! `CacheLayer` and responses that vary, through the real stack (an axum app on
//! `127.0.0.1:0`, a hyper client): variants keyed by the request's normalized values,
//! collapsed requests that never get another request's variant, a `Vary` that changes,
//! invalidation of every variant, variants read by another instance through Redis,
//! tower-http's `CompressionLayer` inside the cache, `no-cache` responses revalidated
//! before each use, and generated `ETag`s.
#![cfg(all(feature = "axum", feature = "redis"))]

mod support;

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request as AxumRequest;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::routing::get;
use axum::Router;
use stormcache::layer::{CacheLayer, InvalidateLayer};
use stormcache::Cache;
use support::caches::{fast_redis_builder, wait_redis_ready};
use support::http::{serve, Got, Served};
use support::{scaled, until, RedisServer};
use tokio::task::JoinHandle;
use tower_http::compression::CompressionLayer;

/// A handler whose answer depends on the request's `Accept-Language` (and, when asked,
/// `X-Region`): the body is `<language> <region> call <n>`, `Vary` is what the test sets.
#[derive(Clone)]
struct Localized {
    vary: Arc<Mutex<String>>,
    calls: Arc<AtomicUsize>,
    /// Permits for the calls after the first one to start; the first waits for one too when
    /// `gate` is set, so a test can keep it running while other requests arrive.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Localized {
    fn new(vary: &str) -> Localized {
        Localized {
            vary: Arc::new(Mutex::new(vary.to_owned())),
            calls: Arc::new(AtomicUsize::new(0)),
            gate: None,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set_vary(&self, vary: &str) {
        *self.vary.lock().expect("lock") = vary.to_owned();
    }

    fn route(&self) -> axum::routing::MethodRouter {
        let this = self.clone();
        get(move |headers: HeaderMap| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if let (Some(gate), 1) = (&this.gate, n) {
                    gate.acquire().await.expect("gate").forget();
                }
                let value = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_ascii_lowercase()
                };
                let mut h = HeaderMap::new();
                let vary = this.vary.lock().expect("lock").clone();
                if !vary.is_empty() {
                    h.insert(header::VARY, HeaderValue::from_str(&vary).expect("vary"));
                }
                let body = format!(
                    "{} {} call {n}",
                    value("accept-language"),
                    value("x-region")
                );
                (h, body)
            }
        })
    }
}

fn local_cache(namespace: &str) -> Cache {
    Cache::builder(namespace).build().expect("cache")
}

#[tokio::test]
async fn responses_that_vary_are_stored_per_normalized_value() {
    let origin = Localized::new("Accept-Language");
    let app = Router::new()
        .route("/greeting", origin.route())
        .layer(CacheLayer::new(local_cache("vary-basic")));
    let app = serve(app).await;

    let fr = app
        .get_with("/greeting", &[("accept-language", "fr")])
        .await;
    assert_eq!((fr.text(), fr.x_cache()), ("fr - call 1", "miss"));
    assert!(
        fr.cache_status().contains("stored"),
        "{}",
        fr.cache_status()
    );
    let en = app
        .get_with("/greeting", &[("accept-language", "en")])
        .await;
    assert_eq!((en.text(), en.x_cache()), ("en - call 2", "miss"));
    assert!(en
        .cache_status()
        .starts_with("stormcache; fwd=vary-miss; stored"));

    // Each gets its own variant back, under any spelling of the same value.
    for (value, body) in [
        ("fr", "fr - call 1"),
        ("FR", "fr - call 1"),
        ("en", "en - call 2"),
    ] {
        let got = app
            .get_with("/greeting", &[("accept-language", value)])
            .await;
        assert_eq!((got.text(), got.x_cache()), (body, "hit"), "{value}");
    }
    let combined = [("accept-language", "de"), ("accept-language", "en;q=0.5")];
    let de = app.get_with("/greeting", &combined).await;
    assert_eq!((de.text(), de.x_cache()), ("de - call 3", "miss"));
    let de = app
        .get_with("/greeting", &[("accept-language", "de ,EN;q=0.5")])
        .await;
    assert_eq!((de.text(), de.x_cache()), ("de - call 3", "hit"));
    // No Accept-Language is a value of its own.
    let none = app.get_with("/greeting", &[]).await;
    assert_eq!((none.text(), none.x_cache()), ("- - call 4", "miss"));
    assert_eq!(app.get_with("/greeting", &[]).await.x_cache(), "hit");
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let origin = Localized::new("*");
    let app = Router::new()
        .route("/greeting", origin.route())
        .layer(CacheLayer::new(local_cache("vary-star")));
    let app = serve(app).await;
    for n in 1..=2 {
        let got = app
            .get_with("/greeting", &[("accept-language", "fr")])
            .await;
        assert_eq!(got.x_cache(), "miss");
        assert_eq!(got.cache_status(), "stormcache; fwd=miss; detail=vary");
        assert_eq!(got.text(), format!("fr - call {n}"));
    }
}

/// Counts the requests that reached the app, before the cache layer.
async fn count_arrivals(
    arrived: Arc<AtomicUsize>,
    req: AxumRequest,
    next: Next,
) -> axum::response::Response {
    arrived.fetch_add(1, Ordering::SeqCst);
    next.run(req).await
}

/// A gated [`Localized`] origin (varying on `Accept-Language`) behind `layer`, served with the
/// requests that reach the app counted, and three requests to it, each with `extra` headers:
/// one for `fr`, once it is in the handler (held at the gate), one for `en` and one for `fr`,
/// once both have reached the app.
struct Held {
    origin: Localized,
    gate: Arc<tokio::sync::Semaphore>,
    app: Arc<Served>,
    leader: JoinHandle<Got>,
    en: JoinHandle<Got>,
    fr: JoinHandle<Got>,
}

async fn hold_fr_then_send_en_and_fr(
    layer: CacheLayer,
    extra: &'static [(&'static str, &'static str)],
) -> Held {
    let mut origin = Localized::new("Accept-Language");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    origin.gate = Some(Arc::clone(&gate));
    let arrived = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&arrived);
    let app = Router::new()
        .route("/greeting", origin.route())
        .layer(layer)
        .layer(middleware::from_fn(move |req, next| {
            count_arrivals(Arc::clone(&counter), req, next)
        }));
    let app = Arc::new(serve(app).await);
    let send = |lang: &'static str| {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut headers = vec![("accept-language", lang)];
            headers.extend_from_slice(extra);
            app.get_with("/greeting", &headers).await
        })
    };
    let leader = send("fr");
    until(
        "the first request in the handler",
        scaled(Duration::from_secs(5)),
        || origin.calls() == 1,
    )
    .await;
    let (en, fr) = (send("en"), send("fr"));
    until(
        "three requests in the app",
        scaled(Duration::from_secs(5)),
        || arrived.load(Ordering::SeqCst) == 3,
    )
    .await;
    Held {
        origin,
        gate,
        app,
        leader,
        en,
        fr,
    }
}

// A current-thread runtime: once a request is counted, its task has run to its first wait,
// which for a request of a key being loaded is the wait for that load.
#[tokio::test(flavor = "current_thread")]
async fn a_collapsed_request_never_gets_another_variant() {
    let Held {
        origin,
        gate,
        app,
        leader,
        en,
        fr,
    } = hold_fr_then_send_en_and_fr(CacheLayer::new(local_cache("vary-collapse")), &[]).await;
    // Both wait for the leader's load of the key: none has called the handler.
    assert_eq!(origin.calls(), 1);
    gate.add_permits(1);

    let leader = leader.await.expect("leader");
    assert_eq!((leader.text(), leader.x_cache()), ("fr - call 1", "miss"));
    let fr = fr.await.expect("fr");
    assert_eq!(fr.text(), "fr - call 1");
    assert!(fr
        .cache_status()
        .starts_with("stormcache; fwd=miss; collapsed"));
    let en = en.await.expect("en");
    assert_eq!(
        en.text(),
        "en - call 2",
        "en must never get the response loaded for fr"
    );
    assert_eq!(en.x_cache(), "miss");
    assert_eq!(origin.calls(), 2);
    let again = app
        .get_with("/greeting", &[("accept-language", "en")])
        .await;
    assert_eq!((again.text(), again.x_cache()), ("en - call 2", "hit"));
}

#[tokio::test]
async fn a_variant_whose_vary_changes_does_not_stay_stuck() {
    let origin = Localized::new("accept-language");
    let cache = local_cache("vary-changes");
    let app = Router::new()
        .route("/greeting", origin.route())
        .layer(CacheLayer::new(cache).ttl(Duration::from_secs(60)));
    let app = serve(app).await;
    let (fr, en) = ([("accept-language", "fr")], [("accept-language", "en")]);
    let (fr_eu, fr_us) = (
        [("accept-language", "fr"), ("x-region", "eu")],
        [("accept-language", "fr"), ("x-region", "us")],
    );

    assert_eq!(app.get_with("/greeting", &fr).await.text(), "fr - call 1");
    // Now it varies on more fields: the variant of `en` is not stored under the old shape,
    // and the key's entry goes, so that the next request stores the new shape.
    origin.set_vary("accept-language, x-region");
    let changed = app.get_with("/greeting", &en).await;
    assert_eq!(changed.text(), "en - call 2");
    assert_eq!(
        changed.cache_status(),
        "stormcache; fwd=vary-miss; detail=vary-changed"
    );
    let got = app.get_with("/greeting", &fr_eu).await;
    assert_eq!((got.text(), got.x_cache()), ("fr eu call 3", "miss"));
    let got = app.get_with("/greeting", &fr_us).await;
    assert_eq!((got.text(), got.x_cache()), ("fr us call 4", "miss"));
    for (headers, body) in [(&fr_eu, "fr eu call 3"), (&fr_us, "fr us call 4")] {
        let got = app.get_with("/greeting", headers).await;
        assert_eq!((got.text(), got.x_cache()), (body, "hit"));
    }

    // And on fewer: no variant is stuck on the old shape either.
    origin.set_vary("");
    let got = app
        .get_with("/greeting", &[("accept-language", "de")])
        .await;
    assert_eq!(
        got.cache_status(),
        "stormcache; fwd=vary-miss; detail=vary-changed"
    );
    let got = app.get_with("/greeting", &en).await;
    assert_eq!((got.text(), got.x_cache()), ("en - call 6", "miss"));
    let got = app.get_with("/greeting", &fr_us).await;
    assert_eq!((got.text(), got.x_cache()), ("en - call 6", "hit"));
    assert_eq!(origin.calls(), 6);
}

#[tokio::test]
async fn invalidating_the_path_removes_every_variant() {
    let origin = Localized::new("accept-language");
    let cache = local_cache("vary-invalidate");
    let app = Router::new()
        .route("/greeting", origin.route().post(|| async { "ok" }))
        .layer(InvalidateLayer::new(cache.clone()))
        .layer(CacheLayer::new(cache));
    let app = serve(app).await;
    let langs = ["fr", "en", "de"];
    for lang in langs {
        app.get_with("/greeting", &[("accept-language", lang)])
            .await;
        let hit = app
            .get_with("/greeting", &[("accept-language", lang)])
            .await;
        assert_eq!(hit.x_cache(), "hit", "{lang}");
    }
    let post = app.send(Method::POST, "/greeting", &[]).await;
    assert_eq!(post.status, StatusCode::OK);
    for (i, lang) in langs.into_iter().enumerate() {
        let got = app
            .get_with("/greeting", &[("accept-language", lang)])
            .await;
        assert_eq!(got.x_cache(), "miss", "{lang}");
        assert_eq!(got.text(), format!("{lang} - call {}", 4 + i));
    }
}

/// Two caches for `namespace` on `redis`, each ready.
async fn two_instances(redis: &RedisServer, namespace: &str) -> Vec<Cache> {
    let limit = scaled(Duration::from_secs(5));
    let mut caches = Vec::new();
    for _ in 0..2 {
        let cache = fast_redis_builder(namespace, redis.url(), Duration::from_millis(500))
            .build()
            .expect("cache");
        wait_redis_ready(&cache, limit).await;
        caches.push(cache);
    }
    caches
}

#[tokio::test]
async fn another_instance_reads_the_variants_through_redis() {
    let redis = RedisServer::start();
    let caches = two_instances(&redis, "vary-redis").await;
    let origin = Localized::new("Accept-Language");
    let app = |cache: &Cache| {
        Router::new()
            .route("/greeting", origin.route())
            .layer(CacheLayer::new(cache.clone()))
    };
    let a = serve(app(&caches[0])).await;
    let b = serve(app(&caches[1])).await;

    assert_eq!(
        a.get_with("/greeting", &[("accept-language", "fr")])
            .await
            .text(),
        "fr - call 1"
    );
    assert_eq!(
        a.get_with("/greeting", &[("accept-language", "en")])
            .await
            .text(),
        "en - call 2"
    );
    // The other instance has neither in its local store: Redis answers, each with its own.
    for (lang, body) in [
        ("en", "en - call 2"),
        ("fr", "fr - call 1"),
        ("EN", "en - call 2"),
    ] {
        let got = b.get_with("/greeting", &[("accept-language", lang)]).await;
        assert_eq!((got.text(), got.x_cache()), (body, "hit"), "{lang}");
    }
    let de = b.get_with("/greeting", &[("accept-language", "de")]).await;
    assert_eq!((de.text(), de.x_cache()), ("de - call 3", "miss"));
    let de = a.get_with("/greeting", &[("accept-language", "de")]).await;
    assert_eq!((de.text(), de.x_cache()), ("de - call 3", "hit"));
    assert_eq!(origin.calls(), 3);
    assert!(
        caches[1].counters().l2_hits >= 2,
        "{:?}",
        caches[1].counters()
    );
}

fn gunzip(body: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut out)
        .expect("a gzip body");
    out
}

#[tokio::test]
async fn compressed_variants_from_compression_inside_the_cache() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let text = "stormcache keeps answering while Redis misbehaves. ".repeat(20);
    let body = text.clone();
    let app = Router::new()
        .route(
            "/articles",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                async move { body }
            }),
        )
        .layer(CompressionLayer::new())
        .layer(CacheLayer::new(local_cache("vary-compression")));
    let app = serve(app).await;

    for (n, spelling) in ["gzip", "gzip;q=1.0, identity;q=0.5"]
        .into_iter()
        .enumerate()
    {
        let got = app
            .get_with("/articles", &[("accept-encoding", spelling)])
            .await;
        assert_eq!(got.header("content-encoding"), "gzip", "{spelling}");
        assert_eq!(gunzip(&got.bytes), text);
        assert_eq!(
            got.x_cache(),
            if n == 0 { "miss" } else { "hit" },
            "{spelling}"
        );
    }
    for n in 0..2 {
        let got = app.get_with("/articles", &[]).await;
        assert_eq!(got.header("content-encoding"), "");
        assert_eq!(got.text(), text);
        assert_eq!(got.x_cache(), if n == 0 { "miss" } else { "hit" });
    }
    // Two browsers' spellings of the same preferences: one variant, brotli.
    let chrome = app
        .get_with(
            "/articles",
            &[("accept-encoding", "gzip, deflate, br, zstd")],
        )
        .await;
    assert_eq!(
        (chrome.header("content-encoding"), chrome.x_cache()),
        ("br", "miss")
    );
    let other = app
        .get_with(
            "/articles",
            &[("accept-encoding", "br, zstd, GZIP,deflate")],
        )
        .await;
    assert_eq!(
        (other.header("content-encoding"), other.x_cache()),
        ("br", "hit")
    );
    assert_eq!(other.bytes, chrome.bytes);
    // A client that takes gzip only never gets the brotli variant.
    let gzip = app
        .get_with("/articles", &[("accept-encoding", "deflate, gzip")])
        .await;
    assert_eq!(gzip.header("content-encoding"), "gzip");
    assert_eq!(gunzip(&gzip.bytes), text);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// A handler answering `Cache-Control: no-cache` with the `ETag` of its current version,
/// and `304` to a matching `If-None-Match`. Counts its full answers and its 304s.
#[derive(Clone)]
struct Versioned {
    version: Arc<AtomicUsize>,
    full: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
    with_etag: bool,
    cache_control: &'static str,
}

impl Versioned {
    fn new(with_etag: bool) -> Versioned {
        Versioned {
            version: Arc::new(AtomicUsize::new(1)),
            full: Arc::new(AtomicUsize::new(0)),
            not_modified: Arc::new(AtomicUsize::new(0)),
            with_etag,
            cache_control: "no-cache",
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.full.load(Ordering::SeqCst),
            self.not_modified.load(Ordering::SeqCst),
        )
    }

    fn route(&self) -> axum::routing::MethodRouter {
        let this = self.clone();
        get(move |headers: HeaderMap| {
            let this = this.clone();
            async move {
                let version = this.version.load(Ordering::SeqCst);
                let etag = format!("\"v{version}\"");
                let mut h = HeaderMap::new();
                h.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static(this.cache_control),
                );
                if this.with_etag {
                    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag"));
                    if headers
                        .get(header::IF_NONE_MATCH)
                        .is_some_and(|v| v == etag.as_str())
                    {
                        this.not_modified.fetch_add(1, Ordering::SeqCst);
                        h.insert("x-checked", HeaderValue::from(version));
                        return (StatusCode::NOT_MODIFIED, h, String::new());
                    }
                }
                let n = this.full.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::OK, h, format!("version {version} (answer {n})"))
            }
        })
    }
}

#[tokio::test]
async fn no_cache_responses_are_revalidated_before_each_use() {
    let origin = Versioned::new(true);
    let app = Router::new()
        .route("/doc", origin.route())
        .layer(CacheLayer::new(local_cache("vary-no-cache")).ttl(Duration::from_secs(60)));
    let app = serve(app).await;

    let first = app.get_with("/doc", &[]).await;
    assert_eq!(
        (first.text(), first.x_cache()),
        ("version 1 (answer 1)", "miss")
    );
    assert!(first
        .cache_status()
        .starts_with("stormcache; fwd=miss; stored"));
    for n in 1..=2 {
        let got = app.get_with("/doc", &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.text(), "version 1 (answer 1)");
        assert_eq!(got.x_cache(), "revalidated");
        assert!(
            got.cache_status()
                .starts_with("stormcache; fwd=stale; fwd-status=304; ttl="),
            "{}",
            got.cache_status()
        );
        // The 304's fields freshen the stored response.
        assert_eq!(got.header("x-checked"), "1");
        assert_eq!(origin.counts(), (1, n));
    }

    // A new version: the handler's 200 replaces the entry.
    origin.version.store(2, Ordering::SeqCst);
    let got = app.get_with("/doc", &[]).await;
    assert_eq!(
        (got.text(), got.x_cache()),
        ("version 2 (answer 2)", "miss")
    );
    let got = app.get_with("/doc", &[]).await;
    assert_eq!(
        (got.text(), got.x_cache()),
        ("version 2 (answer 2)", "revalidated")
    );
    assert_eq!(origin.counts(), (2, 3));

    // A client's own preconditions reach the handler as they are; its 304 is passed on.
    let got = app.get_with("/doc", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!(got.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.counts(), (2, 4));
    let got = app.get_with("/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(
        (got.status, got.text()),
        (StatusCode::OK, "version 2 (answer 3)")
    );
}

#[tokio::test]
async fn no_cache_responses_without_validators_are_not_stored() {
    let origin = Versioned::new(false);
    let app = Router::new()
        .route("/doc", origin.route())
        .layer(CacheLayer::new(local_cache("vary-no-cache-plain")));
    let app = serve(app).await;
    for n in 1..=2 {
        let got = app.get_with("/doc", &[]).await;
        assert_eq!(got.text(), format!("version 1 (answer {n})"));
        assert_eq!(got.cache_status(), "stormcache; fwd=miss; detail=no-cache");
    }
}

#[tokio::test]
async fn generated_etags_let_clients_revalidate_and_agree_across_instances() {
    let text = "figures for the quarter";
    let app = |cache: Cache| {
        Router::new()
            .route("/report", get(move || async move { text }))
            .route(
                "/tagged",
                get(|| async { ([(header::ETAG, "\"own\"")], "tagged") }),
            )
            .layer(CacheLayer::new(cache).etag(true))
    };
    let a = serve(app(local_cache("vary-etag-a"))).await;
    let b = serve(app(local_cache("vary-etag-b"))).await;

    let first = a.get_with("/report", &[]).await;
    let etag = first.header("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 18,
        "{etag}"
    );
    assert_eq!(
        b.get_with("/report", &[]).await.header("etag"),
        etag,
        "instances agree"
    );
    let again = a
        .get_with("/report", &[("if-none-match", etag.as_str())])
        .await;
    assert_eq!(
        (again.status, again.x_cache()),
        (StatusCode::NOT_MODIFIED, "hit")
    );
    assert_eq!(again.header("etag"), etag);
    let other = a
        .get_with("/report", &[("if-none-match", "\"something-else\"")])
        .await;
    assert_eq!((other.status, other.text()), (StatusCode::OK, text));
    // A response's own ETag is kept.
    assert_eq!(a.get_with("/tagged", &[]).await.header("etag"), "\"own\"");

    // Without `etag(true)`, none is made.
    let plain = Router::new()
        .route("/report", get(move || async move { text }))
        .layer(CacheLayer::new(local_cache("vary-etag-off")));
    let plain = serve(plain).await;
    assert_eq!(plain.get_with("/report", &[]).await.header("etag"), "");
}

/// GETs `/greeting` with `headers` until the answer is stale, every 50 ms for at most 5 s
/// (scaled); every answer meanwhile must be `body`.
async fn until_served_stale(app: &Served, headers: &[(&str, &str)], body: &str) {
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(5));
    loop {
        let got = app.get_with("/greeting", headers).await;
        assert_eq!(got.text(), body);
        if got.x_cache() == "stale" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never served stale");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stale_variant_never_stands_in_for_another_request() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (fail, count) = (Arc::clone(&failing), Arc::clone(&calls));
    let handler = get(move |headers: HeaderMap| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let failing = fail.load(Ordering::SeqCst);
        async move {
            let lang = headers
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let status = if failing {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let h = [
                (header::VARY, "accept-language"),
                (header::CACHE_CONTROL, "max-age=1"),
            ];
            (status, h, format!("{lang} call {n}"))
        }
    });
    let app = Router::new()
        .route("/greeting", handler)
        .layer(CacheLayer::new(local_cache("vary-stale")).stale_for(Duration::from_secs(60)));
    let app = serve(app).await;
    let (fr, en) = ([("accept-language", "fr")], [("accept-language", "en")]);
    assert_eq!(app.get_with("/greeting", &fr).await.text(), "fr call 1");

    // Once it has expired, with the handler failing, `fr` gets its stale variant...
    failing.store(true, Ordering::SeqCst);
    until_served_stale(&app, &fr, "fr call 1").await;
    // ...and `en` the handler's failure, never `fr`'s response.
    let got = app.get_with("/greeting", &en).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(got.text().starts_with("en call"), "{}", got.text());
    // Its 503 gives itself a lifetime (`max-age=1`), so it is stored as `en`'s own variant
    // (RFC 9111 §3); what matters is that `fr`'s stale response did not answer.
    assert!(
        !got.cache_status().contains("fwd=stale"),
        "{}",
        got.cache_status()
    );
}

#[tokio::test]
async fn another_instance_revalidates_a_no_cache_response_it_reads_from_redis() {
    let redis = RedisServer::start();
    let origin = Versioned::new(true);
    let mut apps = Vec::new();
    for cache in two_instances(&redis, "vary-no-cache-redis").await {
        let app = Router::new()
            .route("/doc", origin.route())
            .layer(CacheLayer::new(cache).ttl(Duration::from_secs(60)));
        apps.push(serve(app).await);
    }
    let first = apps[0].get_with("/doc", &[]).await;
    assert_eq!(
        (first.text(), first.x_cache()),
        ("version 1 (answer 1)", "miss")
    );
    // The other instance reads it from Redis, still marked `no-cache`: the handler confirms
    // it before it answers.
    let got = apps[1].get_with("/doc", &[]).await;
    assert_eq!(
        (got.text(), got.x_cache()),
        ("version 1 (answer 1)", "revalidated")
    );
    assert_eq!(origin.counts(), (1, 1));
    origin.version.store(2, Ordering::SeqCst);
    let got = apps[1].get_with("/doc", &[]).await;
    assert_eq!(
        (got.text(), got.x_cache()),
        ("version 2 (answer 2)", "miss")
    );
}

#[tokio::test]
async fn no_cache_with_max_age_zero_is_stored_too() {
    let mut origin = Versioned::new(true);
    origin.cache_control = "max-age=0, no-cache";
    let app = Router::new()
        .route("/doc", origin.route())
        .layer(CacheLayer::new(local_cache("vary-no-cache-zero")).ttl(Duration::from_secs(60)));
    let app = serve(app).await;
    assert_eq!(app.get_with("/doc", &[]).await.x_cache(), "miss");
    let got = app.get_with("/doc", &[]).await;
    assert_eq!(
        (got.text(), got.x_cache()),
        ("version 1 (answer 1)", "revalidated")
    );
    assert_eq!(origin.counts(), (1, 1));
}

#[tokio::test]
async fn a_no_cache_refresh_stores_the_requests_own_variant() {
    let origin = Localized::new("Accept-Language");
    let layer = CacheLayer::new(local_cache("vary-refresh"))
        .request_no_cache(true)
        .request_no_cache_interval(Duration::ZERO);
    let app = Router::new()
        .route("/greeting", origin.route())
        .layer(layer);
    let app = serve(app).await;
    let (fr, en) = ([("accept-language", "fr")], [("accept-language", "en")]);
    assert_eq!(app.get_with("/greeting", &fr).await.text(), "fr - call 1");
    assert_eq!(app.get_with("/greeting", &en).await.text(), "en - call 2");

    let refresh = [("accept-language", "en"), ("cache-control", "no-cache")];
    let refreshed = app.get_with("/greeting", &refresh).await;
    assert_eq!(refreshed.text(), "en - call 3");
    assert!(
        refreshed
            .cache_status()
            .starts_with("stormcache; fwd=request; stored"),
        "{}",
        refreshed.cache_status()
    );
    let again = app.get_with("/greeting", &en).await;
    assert_eq!((again.text(), again.x_cache()), ("en - call 3", "hit"));
    // `fr` never gets the response the refresh stored for `en`.
    let other = app.get_with("/greeting", &fr).await;
    assert!(other.text().starts_with("fr - "), "{}", other.text());
}

// A current-thread runtime, as in `a_collapsed_request_never_gets_another_variant`.
#[tokio::test(flavor = "current_thread")]
async fn a_joined_no_cache_refresh_never_gives_another_variant() {
    let layer = CacheLayer::new(local_cache("vary-refresh-join")).request_no_cache(true);
    let Held {
        origin,
        gate,
        leader,
        en,
        fr,
        ..
    } = hold_fr_then_send_en_and_fr(layer, &[("cache-control", "no-cache")]).await;
    assert_eq!(origin.calls(), 1, "both joined the leader's refresh");
    gate.add_permits(1);

    let leader = leader.await.expect("leader");
    assert_eq!(leader.text(), "fr - call 1");
    let fr = fr.await.expect("fr");
    assert_eq!(fr.text(), "fr - call 1");
    assert!(
        fr.cache_status()
            .starts_with("stormcache; fwd=request; collapsed"),
        "{}",
        fr.cache_status()
    );
    let en = en.await.expect("en");
    assert_eq!(
        en.text(),
        "en - call 2",
        "en must never get the response refreshed for fr"
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn stale_while_revalidate_answers_only_the_requests_own_variant() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let handler = get(move |headers: HeaderMap| {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let lang = headers
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let h = [
                (header::VARY, "accept-language"),
                (
                    header::CACHE_CONTROL,
                    "max-age=1, stale-while-revalidate=60",
                ),
            ];
            (h, format!("{lang} call {n}"))
        }
    });
    let app = Router::new()
        .route("/greeting", handler)
        .layer(CacheLayer::new(local_cache("vary-swr")));
    let app = serve(app).await;
    let (fr, en, de) = (
        [("accept-language", "fr")],
        [("accept-language", "en")],
        [("accept-language", "de")],
    );
    assert_eq!(app.get_with("/greeting", &fr).await.text(), "fr call 1");
    assert_eq!(app.get_with("/greeting", &en).await.text(), "en call 2");

    // Once expired, `fr` gets its own variant at once while it is refreshed...
    until_served_stale(&app, &fr, "fr call 1").await;
    // ...and a request with other values never gets a stale variant that is not its own.
    let got = app.get_with("/greeting", &de).await;
    assert!(got.text().starts_with("de call"), "{}", got.text());
    assert_ne!(got.x_cache(), "stale");
    // Every answer to `en` is its own variant, stale or refreshed.
    for _ in 0..3 {
        let got = app.get_with("/greeting", &en).await;
        assert!(got.text().starts_with("en call"), "{}", got.text());
    }
}

//! The admin router, driven with `ServiceExt::oneshot`: authentication, body limits, error
//! messages, and what each endpoint removes.
#![cfg(feature = "axum")]

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use stormcache::{Cache, EntryOptions, Key};
use support::caches::with_permissions_and_resources;
use tower::ServiceExt;

const TOKEN: &str = "correct horse battery staple";

fn cache() -> Cache {
    with_permissions_and_resources(Cache::builder("admin-tests"))
        .build()
        .expect("valid cache")
}

fn app(cache: &Cache, token: Option<&str>) -> Router {
    Router::new().nest(
        "/admin",
        stormcache::admin::router(cache.clone(), token.map(str::to_owned)),
    )
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("infallible");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, value)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[tokio::test]
async fn every_request_needs_the_token() {
    let cache = cache();
    let app = app(&cache, Some(TOKEN));
    let endpoints = [
        ("GET", "/admin/status", None),
        ("POST", "/admin/invalidate", Some(r#"{"keys":["a"]}"#)),
        ("POST", "/admin/flush", Some(r#"{"scope":"all"}"#)),
        ("GET", "/admin/nope", None),
    ];
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
    ];
    for (method, path, body) in endpoints {
        for auth in &wrong {
            let (status, value) = call(&app, method, path, auth.as_deref(), body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}"
            );
            assert!(value["error"].is_string(), "{value}");
        }
    }
    let (status, _) = call(&app, "GET", "/admin/status", Some(&bearer()), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &app,
        "GET",
        "/admin/status",
        Some(&format!("bearer {TOKEN}")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");
    let (status, value) = call(&app, "GET", "/admin/nope", Some(&bearer()), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
}

#[tokio::test]
async fn no_token_configured_refuses_everything() {
    let cache = cache();
    for token in [None, Some("")] {
        let app = app(&cache, token);
        for auth in [None, Some("Bearer "), Some("Bearer anything")] {
            let (status, value) = call(&app, "GET", "/admin/status", auth, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(
                value["error"].as_str().unwrap_or("").contains("no token"),
                "{value}"
            );
        }
    }
}

#[tokio::test]
async fn status_is_the_cache_status() {
    let cache = cache();
    let app = app(&cache, Some(TOKEN));
    let (status, value) = call(&app, "GET", "/admin/status", Some(&bearer()), None).await;
    assert_eq!(status, StatusCode::OK);
    let expected = serde_json::to_value(cache.status()).expect("status serializes");
    assert_eq!(value["namespace"], "admin-tests");
    assert_eq!(value["state"], expected["state"]);
    assert!(value["counters"].is_object(), "{value}");
}

#[tokio::test]
async fn bad_bodies_get_400_or_413_with_a_message() {
    let cache = cache();
    let app = app(&cache, Some(TOKEN));
    let auth = bearer();
    let cases = [
        ("/admin/invalidate", "{not json", "invalid JSON"),
        ("/admin/invalidate", r#"{"keys": "a"}"#, "invalid JSON"),
        ("/admin/invalidate", r#"{"keyz": ["a"]}"#, "unknown field"),
        ("/admin/invalidate", "{}", "nothing to invalidate"),
        (
            "/admin/invalidate",
            r#"{"keys": ["user:*"]}"#,
            "invalid key `user:*`",
        ),
        (
            "/admin/invalidate",
            r#"{"tags": ["a b"]}"#,
            "invalid tag `a b`",
        ),
        (
            "/admin/invalidate",
            r#"{"keys": ["a"], "class": "nope"}"#,
            "unknown class `nope`",
        ),
        ("/admin/flush", r#"{}"#, "missing field `scope`"),
        (
            "/admin/flush",
            r#"{"scope": "nope*"}"#,
            "unknown scope `nope*`",
        ),
        ("/admin/flush", "", "invalid JSON"),
    ];
    for (path, body, message) in cases {
        let (status, value) = call(&app, "POST", path, Some(&auth), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {value}");
        let error = value["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(message),
            "{path} {body}: {error:?} lacks {message:?}"
        );
    }
    let huge = format!(
        r#"{{"keys": ["{}"]}}"#,
        "k".repeat(stormcache::admin::MAX_BODY_BYTES)
    );
    let (status, value) = call(&app, "POST", "/admin/invalidate", Some(&auth), Some(&huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    // A wrong method on a known path is still a clean error.
    let (status, _) = call(&app, "GET", "/admin/flush", Some(&auth), None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn invalidate_removes_keys_tags_and_classes() {
    let cache = cache();
    let app = app(&cache, Some(TOKEN));
    let plain = EntryOptions::new();
    let perms = EntryOptions::new().class("permissions");
    let tagged = EntryOptions::new().tag(Key::literal("user:alice").expect("key"));
    let hostile = Key::builder("user:groups:").value("eve*").build();
    cache
        .set(Key::literal("user:groups:alice").expect("key"), 1u8, &plain)
        .await;
    cache.set(hostile.clone(), 2u8, &plain).await;
    cache
        .set(Key::literal("user:groups:bob").expect("key"), 3u8, &plain)
        .await;
    cache
        .set(Key::literal("resources:alice").expect("key"), 4u8, &tagged)
        .await;
    cache
        .set(Key::literal("session:1").expect("key"), 5u8, &perms)
        .await;

    let body = json!({
        "keys": ["user:groups:alice", "user:groups:eve%2A"],
        "tags": ["user:alice"],
        "class": "permissions",
    });
    let (status, value) = call(
        &app,
        "POST",
        "/admin/invalidate",
        Some(&bearer()),
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["redis"], "not_configured");

    let gone = |k: &str| Key::literal(k).expect("key");
    assert_eq!(
        cache.get::<u8>(&gone("user:groups:alice"), &plain).await,
        None
    );
    assert_eq!(
        cache.get::<u8>(&hostile, &plain).await,
        None,
        "escaped key reached"
    );
    assert_eq!(
        cache.get::<u8>(&gone("resources:alice"), &tagged).await,
        None,
        "tag reached"
    );
    assert_eq!(
        cache.get::<u8>(&gone("session:1"), &perms).await,
        None,
        "class reached"
    );
    assert_eq!(
        cache.get::<u8>(&gone("user:groups:bob"), &plain).await,
        Some(3),
        "nothing else"
    );
}

#[tokio::test]
async fn flush_scopes() {
    let cache = cache();
    let app = app(&cache, Some(TOKEN));
    let perms = EntryOptions::new().class("permissions");
    let res = EntryOptions::new().class("resources");
    let k = |s: &str| Key::literal(s).expect("key");
    let fill = || async {
        cache.set(k("p"), 1u8, &perms).await;
        cache.set(k("r"), 2u8, &res).await;
    };
    // POST /admin/flush {"scope": scope}, authenticated.
    let flush = |scope: &'static str| {
        let app = &app;
        async move {
            let body = json!({ "scope": scope }).to_string();
            call(app, "POST", "/admin/flush", Some(&bearer()), Some(&body)).await
        }
    };

    fill().await;
    let (status, value) = flush("volatile").await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(cache.get::<u8>(&k("p"), &perms).await, None);
    assert_eq!(cache.get::<u8>(&k("r"), &res).await, Some(2));

    fill().await;
    let (status, _) = flush("resources").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache.get::<u8>(&k("p"), &perms).await, Some(1));
    assert_eq!(cache.get::<u8>(&k("r"), &res).await, None);

    fill().await;
    let (status, _) = flush("all").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cache.get::<u8>(&k("p"), &perms).await, None);
    assert_eq!(cache.get::<u8>(&k("r"), &res).await, None);
}

#[tokio::test]
async fn the_probes_answer_without_credentials_and_say_nothing_else() {
    let local = cache();
    for token in [None, Some(TOKEN)] {
        let app = app(&local, token);
        let (status, value) = call(&app, "GET", "/admin/healthz", None, None).await;
        assert_eq!(
            (status, value),
            (StatusCode::OK, Value::String("ok".into()))
        );
        let (status, value) = call(&app, "GET", "/admin/readyz", None, None).await;
        assert_eq!(
            (status, value),
            (StatusCode::OK, Value::String("ready".into())),
            "a local-only cache is ready by configuration"
        );
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn with_redis_configured_and_not_answering_it_is_alive_but_not_ready() {
    let unreachable = with_permissions_and_resources(Cache::builder("admin-tests"))
        .redis_url("redis://127.0.0.1:1".to_owned())
        .build()
        .expect("valid cache");
    let app = app(&unreachable, Some(TOKEN));
    let (status, _) = call(&app, "GET", "/admin/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, value) = call(&app, "GET", "/admin/readyz", None, None).await;
    assert_eq!(
        (status, value),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Value::String("not ready".into())
        )
    );
}

#[tokio::test]
async fn nothing_the_admin_router_answers_is_cacheable() {
    let cache = cache();
    let app = app(&cache, Some(TOKEN));
    for (path, auth) in [
        ("/admin/status", Some(bearer())),
        ("/admin/status", None),
        ("/admin/healthz", None),
        ("/admin/readyz", None),
    ] {
        let mut req = Request::get(path);
        if let Some(auth) = &auth {
            req = req.header("authorization", auth);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(
            res.headers().get("cache-control").map(|v| v.as_bytes()),
            Some(&b"no-store"[..]),
            "{path} (auth: {})",
            auth.is_some()
        );
    }
}

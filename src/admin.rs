//! The authenticated admin router: status, manual invalidation and flushes.
//!
//! When the automatic invalidation falls short (a rule that was missed, data changed
//! outside the application, an incident), an operator needs to remove entries by hand.
//! [`router`] gives an axum [`Router`] to nest wherever the application keeps its operator
//! endpoints:
//!
//! | request | does |
//! | --- | --- |
//! | `GET /status` | the cache's [`Status`](crate::Status) as JSON |
//! | `POST /invalidate` `{"keys": [..], "tags": [..], "class": ".."}` | removes keys, tagged entries and/or a class |
//! | `POST /flush` `{"scope": "volatile" \| "all" \| "<class>"}` | flushes the volatile classes, everything, or one class |
//! | `GET /healthz` | `200 ok`: liveness, no credentials needed |
//! | `GET /readyz` | `200 ready` when [`Cache::is_ready`], else `503 not ready`; no credentials needed |
//!
//! Every other request needs `Authorization: Bearer <token>`; the token is compared in constant
//! time. Without it, with a wrong one, and for every request when no token is configured,
//! the answer is `401`. Bodies are JSON of at most [`MAX_BODY_BYTES`] (`413` past it);
//! malformed JSON, unknown fields, an unknown class or a malformed key get `400` with a
//! message. Invalidations and flushes answer `200` with what was done, or `202` when Redis
//! is down and its half was journaled for replay on recovery.
//!
//! Nothing here reaches outside the cache's namespace: keys and tags are checked to be keys
//! the cache could have written (no glob characters, no whitespace), and every Redis key is
//! prefixed with the namespace by the store; "all" is the namespace's everything.
//!
//! Keys are given as the application wrote them, escapes included: `user:groups:alice`, or
//! `user:groups:eve%2A` for a key built with `Key::builder("user:groups:").value("eve*")`.
//!
//! ```
//! use axum::body::Body;
//! use axum::http::{Request, StatusCode};
//! use axum::Router;
//! use stormcache::Cache;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder("docs").build()?;
//! let app: Router = Router::new().nest(
//!     "/admin",
//!     stormcache::admin::router(cache, std::env::var("ADMIN_TOKEN").ok().or(Some("s3cret".into()))),
//! );
//!
//! let flush = Request::post("/admin/flush")
//!     .header("authorization", "Bearer s3cret")
//!     .body(Body::from(r#"{"scope": "volatile"}"#))?;
//! assert_eq!(app.clone().oneshot(flush).await?.status(), StatusCode::OK);
//!
//! let anonymous = Request::get("/admin/status").body(Body::empty())?;
//! assert_eq!(app.oneshot(anonymous).await?.status(), StatusCode::UNAUTHORIZED);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Cache, Invalidation, InvalidationReport, Key, KeyBuilder, RedisOutcome};

/// The largest request body the admin router reads: 64 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest key or tag accepted.
const MAX_KEY_LEN: usize = 1024;

struct Admin {
    cache: Cache,
    token: Option<Box<[u8]>>,
}

/// The admin router over `cache`, guarded by a bearer `token`.
///
/// `None` (or an empty token) configures no token: the router then answers every request
/// with `401`, so mounting it unconfigured exposes nothing. Nest it under a prefix of your
/// choice; it works with any router state.
///
/// ```
/// use axum::Router;
/// use stormcache::Cache;
///
/// # fn main() -> Result<(), stormcache::Error> {
/// #[derive(Clone)]
/// struct AppState;
///
/// let cache = Cache::builder("docs").build()?;
/// let app: Router<AppState> =
///     Router::new().nest("/admin", stormcache::admin::router(cache, std::env::var("ADMIN_TOKEN").ok()));
/// let app: Router = app.with_state(AppState);
/// # let _ = app; Ok(()) }
/// ```
pub fn router<S>(cache: Cache, token: Option<String>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let token = token
        .filter(|t| !t.is_empty())
        .map(|t| t.into_bytes().into_boxed_slice());
    if token.is_none() {
        tracing::warn!(
            namespace = cache.namespace(),
            "admin router has no token: every request gets 401"
        );
    }
    let admin = Arc::new(Admin { cache, token });
    // The probes answer without credentials, and say nothing but yes or no.
    let probes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    Router::new()
        .route("/status", get(status))
        .route("/invalidate", post(invalidate))
        .route("/flush", post(flush))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&admin),
            authenticate,
        ))
        .merge(probes)
        .layer(middleware::map_response(no_store))
        .with_state(admin)
}

/// Nothing the admin router answers is for a cache to keep.
async fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Redis in use and the invalidation channel confirmed, or no Redis configured
/// (see [`Cache::is_ready`]); `503` otherwise.
async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    if admin.cache.is_ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Why an admin request is refused; answered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    /// Malformed JSON, an unknown field, a bad key, an unknown class…
    #[error("{0}")]
    BadRequest(String),
    /// The body is over [`MAX_BODY_BYTES`].
    #[error("request body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        };
        error(status, self.to_string())
    }
}

/// An error answer: `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct ErrorBody {
        error: String,
    }
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn authenticate(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let Some(expected) = admin.token.as_deref() else {
        return unauthorized("the admin API is disabled: no token is configured");
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(bearer_token);
    match presented {
        Some(token) if constant_time_eq(token, expected) => next.run(req).await,
        Some(_) => {
            tracing::warn!(path = %req.uri().path(), "admin request with a wrong token");
            unauthorized("invalid token")
        }
        None => unauthorized("missing bearer token"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut res = error(StatusCode::UNAUTHORIZED, message);
    res.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares a presented secret with the expected one in time that depends only on the
/// expected length: no early exit on the first differing byte, nor on a length mismatch.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!*e);
        diff |= std::hint::black_box(p ^ e);
    }
    diff == 0
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such admin endpoint: use /status, /invalidate or /flush",
    )
}

async fn status(State(admin): State<Arc<Admin>>) -> Response {
    Json(admin.cache.status()).into_response()
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`].
async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, AdminError> {
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(AdminError::TooLarge)
        }
        Err(e) => {
            return Err(AdminError::BadRequest(format!(
                "could not read the body: {e}"
            )))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| AdminError::BadRequest(format!("invalid JSON: {e}")))
}

/// `POST /invalidate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateRequest {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    class: Option<String>,
}

/// `POST /flush`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlushRequest {
    scope: String,
}

/// What an invalidation or a flush did.
#[derive(Debug, Default, Serialize)]
struct Done {
    /// `applied`, `not_configured`, `journaled` or `pending`.
    redis: &'static str,
    redis_keys_removed: u64,
    journal_overflowed: bool,
}

impl Done {
    fn add(&mut self, report: &InvalidationReport) {
        self.redis_keys_removed += report.redis_keys_removed;
        let (redis, overflowed) = match report.redis {
            RedisOutcome::NotConfigured => ("not_configured", false),
            RedisOutcome::Applied => ("applied", false),
            RedisOutcome::Journaled { overflowed } => ("journaled", overflowed),
            RedisOutcome::Pending => ("pending", false),
        };
        // The worst outcome of the parts wins.
        if self.redis.is_empty()
            || self.redis == "applied"
            || redis == "journaled"
            || (redis == "pending" && self.redis != "journaled")
        {
            self.redis = redis;
        }
        self.journal_overflowed |= overflowed;
    }

    fn into_response(self) -> Response {
        let status = if self.redis == "journaled" || self.redis == "pending" {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        (status, Json(self)).into_response()
    }
}

/// Parses a key or tag as the application wrote it, escapes included.
///
/// The text is split at `:`, each segment is unescaped, and the key is rebuilt with
/// [`KeyBuilder::value`]: only text that comes back identical is accepted. So a key holds no
/// glob character, whitespace or control character, and names exactly one key.
fn parse_key(what: &str, text: &str) -> Result<Key, AdminError> {
    let bad = |why: &str| {
        AdminError::BadRequest(format!("invalid {what} `{}`: {why}", text.escape_debug()))
    };
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if text.len() > MAX_KEY_LEN {
        return Err(bad("too long"));
    }
    let mut builder = KeyBuilder::new();
    for (i, segment) in text.split(':').enumerate() {
        if i > 0 {
            builder = builder.literal(":");
        }
        let raw = unescape(segment).ok_or_else(|| bad("`%` must start an escape such as %2A"))?;
        builder = builder.value(raw);
    }
    let key = builder.build();
    if key.as_str() != text {
        return Err(bad(
            "not a key the cache writes: glob characters (* ? [ ] ^), braces, backslashes, whitespace and control characters must be %-escaped, and only those",
        ));
    }
    Ok(key)
}

/// Decodes `%XX` escapes; `None` on a malformed escape or bytes that are not UTF-8.
fn unescape(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn invalidate(State(admin): State<Arc<Admin>>, body: Body) -> Result<Response, AdminError> {
    let req: InvalidateRequest = read_json(body).await?;
    if req.keys.is_empty() && req.tags.is_empty() && req.class.is_none() {
        return Err(AdminError::BadRequest(
            "nothing to invalidate: give keys, tags and/or class".to_owned(),
        ));
    }
    let mut inv = Invalidation::new();
    for text in &req.keys {
        inv = inv.key(parse_key("key", text)?);
    }
    for text in &req.tags {
        inv = inv.tag(parse_key("tag", text)?);
    }
    let mut done = Done::default();
    // The class first and alone: an unknown one is refused before anything is removed.
    if let Some(class) = &req.class {
        let report = admin
            .cache
            .invalidate(&Invalidation::new().class(class.as_str()))
            .await;
        if !report.unknown_classes.is_empty() {
            return Err(AdminError::BadRequest(format!(
                "unknown class `{}`",
                class.escape_debug()
            )));
        }
        done.add(&report);
    }
    if !inv.is_empty() {
        done.add(&admin.cache.invalidate(&inv).await);
    }
    tracing::info!(
        namespace = admin.cache.namespace(),
        keys = req.keys.len(),
        tags = req.tags.len(),
        class = req.class.as_deref(),
        redis = done.redis,
        "admin invalidation"
    );
    Ok(done.into_response())
}

async fn flush(State(admin): State<Arc<Admin>>, body: Body) -> Result<Response, AdminError> {
    let req: FlushRequest = read_json(body).await?;
    let inv = match req.scope.as_str() {
        "volatile" => Invalidation::new().volatile_classes(),
        "all" => Invalidation::new().everything(),
        class => Invalidation::new().class(class),
    };
    let report = admin.cache.invalidate(&inv).await;
    if !report.unknown_classes.is_empty() {
        return Err(AdminError::BadRequest(format!(
            "unknown scope `{}`: use \"volatile\", \"all\" or a declared class",
            req.scope.escape_debug()
        )));
    }
    let mut done = Done::default();
    done.add(&report);
    tracing::info!(namespace = admin.cache.namespace(), scope = %req.scope, redis = done.redis, "admin flush");
    Ok(done.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret-and-more", b"secret"));
        assert!(!constant_time_eq(b"sec", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        // A prefix padded with what the comparison substitutes must not pass.
        let mut padded = b"secre".to_vec();
        padded.push(!b't');
        assert!(!constant_time_eq(&padded[..5], b"secret"));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
    }

    #[test]
    fn keys_are_taken_as_written_and_never_as_patterns() {
        for ok in [
            "user:groups:alice",
            "resources:all",
            "user:groups:eve%2A",
            "a:b%3Ac",
            "é:x",
            "http:GET:/users/alice",
        ] {
            assert_eq!(
                parse_key("key", ok)
                    .map(|k| k.as_str().to_owned())
                    .ok()
                    .as_deref(),
                Some(ok)
            );
        }
        for bad in [
            "", "user:*", "a?", "a b", "a\n", "[ab]", "x%2", "x%zz", "%41", "{t}", "a\\b", "x%ff",
        ] {
            assert!(parse_key("key", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_key("key", "user:groups:eve%2A").ok(),
            Some(Key::builder("user:groups:").value("eve*").build())
        );
    }
}

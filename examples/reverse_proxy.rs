//! A caching reverse proxy: stormcache's [`CacheLayer`] in front of an upstream HTTP
//! service, the shape in which a shared cache usually sits in front of a slow internal API.
//!
//! ```text
//! UPSTREAM=http://127.0.0.1:8080 cargo run --example reverse_proxy
//! UPSTREAM=http://127.0.0.1:8080 REDIS_URL=redis://127.0.0.1:6379 cargo run --example reverse_proxy
//! curl -i localhost:3100/some/path
//! ```
//!
//! Every request is forwarded to `UPSTREAM` (scheme and authority; the request's path and
//! query are kept). The layer decides what is stored and for how long from the upstream's
//! own headers (`Cache-Control`, `Expires`, `Age`), answers conditional requests with `304`
//! from what it stored, serves a stored response while the upstream fails (`stale_for`),
//! and answers `504` when the upstream takes longer than the hard timeout. Several proxies
//! with one `REDIS_URL` share their entries.
//!
//! Environment: `UPSTREAM` (default `http://127.0.0.1:8080`), `PROXY_ADDR` (default
//! `127.0.0.1:3100`), `REDIS_URL` (none: local store only), `HEURISTIC_TTL` (seconds a
//! response that gives no freshness of its own and no `Last-Modified` is fresh for, default
//! 0: such a response is stored already stale, so it is never answered from the cache while
//! the upstream answers, as the shared caches most deployed do), `HEURISTIC_MAX` (the most
//! a response with only a `Last-Modified` is fresh for — a tenth of the time since it was
//! modified — default a day), `RUST_LOG` (default `info`).
//!
//! `scripts/cache-tests.sh` runs the public HTTP cache test suite (cache-tests.fyi) against
//! this proxy; `docs/cache-tests.md` has the results.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::uri::{Authority, Scheme};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormcache::layer::CacheLayer;
use stormcache::Cache;

/// Where requests go: the upstream's scheme and authority.
#[derive(Clone, Debug)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
}

impl Upstream {
    /// Parses `http://host:port` (a path, if any, is ignored).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("UPSTREAM {url:?}: {e}"))?;
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) if *scheme == Scheme::HTTP => Ok(Upstream {
                scheme: scheme.clone(),
                authority: authority.clone(),
            }),
            _ => Err(format!("UPSTREAM {url:?}: expected http://host:port")),
        }
    }
}

/// The proxy: every request forwarded to `upstream`, through a cache layer on `cache`.
pub fn proxy(upstream: Upstream, cache: Cache) -> Router {
    proxy_with(upstream, cache, Duration::from_secs(60), DAY)
}

const DAY: Duration = Duration::from_secs(86_400);

/// [`proxy`], a response that says nothing of its freshness being fresh for
/// `heuristic_ttl`, and one with only a `Last-Modified` for a tenth of its age, at most
/// `heuristic_max`.
pub fn proxy_with(
    upstream: Upstream,
    cache: Cache,
    heuristic_ttl: Duration,
    heuristic_max: Duration,
) -> Router {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    Router::new()
        .fallback(move |req: Request| forward(client.clone(), upstream.clone(), req))
        .layer(
            CacheLayer::new(cache)
                // For responses that say nothing of their freshness.
                .ttl(heuristic_ttl)
                // For those with a `Last-Modified` only: a tenth of their age, capped.
                .heuristic_max(heuristic_max)
                // An upstream that fails is answered for by what was stored, for an hour.
                .stale_for(Duration::from_secs(3600))
                // Nobody waits more than 10 s for the upstream.
                .hard_timeout(Duration::from_secs(10)),
        )
}

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fields the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove(header::TRANSFER_ENCODING);
}

async fn forward(
    client: Client<HttpConnector, Body>,
    upstream: Upstream,
    req: Request,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let mut uri = parts.uri.clone().into_parts();
    uri.scheme = Some(upstream.scheme.clone());
    uri.authority = Some(upstream.authority.clone());
    parts.uri = match Uri::from_parts(uri) {
        Ok(uri) => uri,
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    strip_hop_by_hop(&mut parts.headers);
    // The upstream sees its own name, as a client of it would send.
    if let Ok(host) = HeaderValue::from_str(upstream.authority.as_str()) {
        parts.headers.insert(header::HOST, host);
    }
    parts
        .headers
        .append(header::VIA, HeaderValue::from_static("1.1 stormcache"));
    match client.request(Request::from_parts(parts, body)).await {
        Ok(res) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => {
            tracing::warn!(%error, "upstream unreachable");
            StatusCode::BAD_GATEWAY.into_response()
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let upstream = Upstream::parse(
        &std::env::var("UPSTREAM").unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
    )?;
    let cache = Cache::builder("reverse-proxy")
        .redis_url(std::env::var("REDIS_URL").ok())
        .build()?;
    let addr: SocketAddr = std::env::var("PROXY_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3100".into())
        .parse()?;
    let heuristic_ttl = secs_var("HEURISTIC_TTL", Duration::ZERO)?;
    let heuristic_max = secs_var("HEURISTIC_MAX", DAY)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, ?upstream, ?heuristic_ttl, ?heuristic_max, "caching reverse proxy listening");
    let app = proxy_with(upstream, cache, heuristic_ttl, heuristic_max);
    axum::serve(listener, app).await?;
    Ok(())
}

/// A number of seconds from the environment, `default` when unset.
fn secs_var(name: &str, default: Duration) -> Result<Duration, String> {
    match std::env::var(name) {
        Ok(secs) => secs
            .parse()
            .map(Duration::from_secs)
            .map_err(|e| format!("{name} {secs:?}: {e}")),
        Err(_) => Ok(default),
    }
}

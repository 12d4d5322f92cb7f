//! A real HTTP/1 client for tests that talk to an app over a socket (the example app in this
//! process or in another one, or a `Router` served here with [`serve`]), and the answer it
//! collects: status, headers and the body. Each request has a deadline, so a hung app fails
//! the test instead of hanging it.

use std::fmt;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::scaled;

/// One answer: status, headers and the body, as text (lossy UTF-8) and as it came.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub bytes: Bytes,
}

impl Got {
    /// The header `name`, or `""` when there is none (or it is not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `x-cache` header, or `""` when there is none.
    pub fn x_cache(&self) -> &str {
        self.header("x-cache")
    }

    /// The `cache-status` header, or `""` when there is none.
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    /// The `age` header, which must be there.
    pub fn age(&self) -> u64 {
        self.header("age").parse().expect("an age")
    }

    /// The body, which must be UTF-8.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("a text body")
    }
}

/// An HTTP client to `http://<addr>`.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    base: String,
}

impl HttpClient {
    pub fn new(addr: impl fmt::Display) -> HttpClient {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    /// `http://<addr>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` (with `Authorization: Bearer <token>` if given) and reads the whole
    /// answer. `Err` says what went wrong (no answer within `limit`, or the transport error),
    /// prefixed with `method path`, for the caller to panic with its own context.
    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        limit: Duration,
    ) -> Result<Got, String> {
        let bearer = token.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|value| ("authorization", value.as_str()))
            .collect();
        self.try_send_with(method, path, &headers, limit).await
    }

    /// Sends `method path` with `headers` and reads the whole answer; `Err` as
    /// [`HttpClient::try_send`].
    pub async fn try_send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        limit: Duration,
    ) -> Result<Got, String> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Empty::new()).expect("request");
        let res = tokio::time::timeout(limit, self.client.request(req))
            .await
            .map_err(|_| format!("{method} {path}: no answer within {limit:?}"))?
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Ok(Got {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        })
    }
}

/// An app served on `127.0.0.1` (see [`serve`]) and a client to it that panics when a request
/// gets no answer within its limit.
#[derive(Clone)]
pub struct Served {
    client: HttpClient,
    limit: Duration,
}

/// Serves `app` on `127.0.0.1:0`; each request gets 10 s (scaled).
pub async fn serve(app: Router) -> Served {
    serve_within(app, scaled(Duration::from_secs(10))).await
}

/// Serves `app` on `127.0.0.1:0`; each request gets `limit`.
pub async fn serve_within(app: Router, limit: Duration) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Served {
        client: HttpClient::new(addr),
        limit,
    }
}

impl Served {
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Got {
        self.client
            .try_send_with(method, path, headers, self.limit)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn get(&self, path: &str) -> Got {
        self.send(Method::GET, path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        self.send(Method::GET, path, headers).await
    }

    /// GETs `path` with `Cache-Control: no-cache`.
    pub async fn no_cache(&self, path: &str) -> Got {
        self.get_with(path, &[("cache-control", "no-cache")]).await
    }

    /// GETs `path` until `done` holds, every 20 ms, for at most `limit`.
    pub async fn get_until(&self, path: &str, limit: Duration, done: impl Fn(&Got) -> bool) -> Got {
        self.get_with_until(path, &[], limit, done).await
    }

    /// GETs `path` with `headers` until `done` holds, every 20 ms, for at most `limit`.
    pub async fn get_with_until(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        limit: Duration,
        done: impl Fn(&Got) -> bool,
    ) -> Got {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.get_with(path, headers).await;
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: still {} {} / {:?} / {:?} after {limit:?}",
                got.status,
                got.x_cache(),
                got.cache_status(),
                got.body,
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

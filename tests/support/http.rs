//! A real HTTP/1 client for tests that talk to an app over a socket (the example app in this
//! process or in another one), and the answer it collects: status, headers and the body as
//! text. Each request has a deadline, so a hung app fails the test instead of hanging it.

use std::fmt;
use std::time::Duration;

use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// One answer: status, headers and the body (lossy UTF-8).
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Got {
    /// The `x-cache` header, or `""` when there is none.
    pub fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
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
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Empty::new()).expect("request");
        let res = tokio::time::timeout(limit, self.client.request(req))
            .await
            .map_err(|_| format!("{method} {path}: no answer within {limit:?}"))?
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Ok(Got {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

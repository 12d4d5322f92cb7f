//! RFC 9111 §4.4: a successful (`2xx`, `3xx`) answer to an unsafe request invalidates what
//! is stored for its target URI, and for its `Location` and `Content-Location` when they are
//! on the same host. Every stored variant of a path carries its path tag, whatever its
//! query, `Vary` values or principal, so invalidating the tag reaches them all, on every
//! instance.

use http::header::{CONTENT_LOCATION, HOST, LOCATION};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::rules::{stamp_response, Stamp};
use crate::layer::body::ResponseBody;
use crate::layer::cache_status::Outcome;
use crate::layer::request_info::original_uri;
use crate::layer::request_key::path_tag;
use crate::{Cache, Invalidation, RedisOutcome};

/// Whether a method is unsafe (RFC 9110 §9.2.1): anything but `GET`, `HEAD`, `OPTIONS` and
/// `TRACE`.
pub(super) fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Passes an unsafe request to the inner service, then, when it succeeded, invalidates the
/// paths it touched before returning the response.
pub(super) async fn call_and_invalidate<S, ReqBody, ResBody>(
    cache: Cache,
    mut inner: S,
    req: Request<ReqBody>,
    stamp: Stamp,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
{
    let (parts, body) = req.into_parts();
    let uri = original_uri(&parts);
    let path = uri.path().to_owned();
    let authority = authority_of(&parts.headers, uri);
    let res = inner.call(Request::from_parts(parts, body)).await?;
    let status = res.status();
    if status.is_success() || status.is_redirection() {
        let mut inv = Invalidation::new().tag(path_tag(&path));
        for name in [LOCATION, CONTENT_LOCATION] {
            for value in res.headers().get_all(name) {
                if let Some(other) = same_host_path(value, &path, authority.as_deref()) {
                    inv = inv.tag(path_tag(&other));
                }
            }
        }
        let report = cache.invalidate_promptly(&inv).await;
        if let RedisOutcome::Journaled { overflowed } = report.redis {
            tracing::warn!(%path, overflowed, "unsafe request: invalidated locally; Redis is down, the rest is journaled");
        } else {
            tracing::debug!(%path, %status, "unsafe request succeeded; its URIs are invalidated");
        }
    }
    Ok(stamp_response(
        res.map(ResponseBody::inner),
        stamp,
        Outcome::Method,
    ))
}

/// The request's authority, lowercased: its `Host`, else its URI's.
fn authority_of(headers: &HeaderMap, uri: &http::Uri) -> Option<String> {
    let authority = match headers.get(HOST) {
        Some(value) => value.to_str().ok()?,
        None => uri.authority()?.as_str(),
    };
    Some(authority.trim().to_ascii_lowercase())
}

/// The path a `Location` or `Content-Location` names, if it is on the request's host: a
/// relative reference (resolved against the request's path), or an absolute URI with the
/// same authority. `None` for another host, or a value that is not a URI reference.
pub(super) fn same_host_path(
    value: &HeaderValue,
    request_path: &str,
    authority: Option<&str>,
) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    let text = text.split('#').next().unwrap_or_default();
    let scheme_end = text.find("://").filter(|&at| {
        text[..at]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
            && at > 0
    });
    let reference = if let Some(at) = scheme_end {
        Some(&text[at + 1..])
    } else {
        text.starts_with("//").then_some(text)
    };
    if let Some(network) = reference {
        // `//authority/path…`: on the same host only.
        let rest = &network[2..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        if !authority.is_some_and(|a| a.eq_ignore_ascii_case(&rest[..end])) {
            return None;
        }
        let path = rest[end..].split('?').next().unwrap_or_default();
        return Some(if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        });
    }
    let path = text.split('?').next().unwrap_or_default();
    if path.is_empty() {
        // A query or fragment only: the request's own path.
        return Some(request_path.to_owned());
    }
    if path.starts_with('/') {
        return Some(remove_dot_segments(path));
    }
    // A relative path: against the request path's directory.
    let dir = request_path.rsplit_once('/').map_or("", |(dir, _)| dir);
    Some(remove_dot_segments(&format!("{dir}/{path}")))
}

/// RFC 3986 §5.2.4, for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(value: &'static str) -> Option<String> {
        same_host_path(
            &HeaderValue::from_static(value),
            "/items/7",
            Some("shop.example:8080"),
        )
    }

    #[test]
    fn locations_on_the_same_host() {
        assert_eq!(resolve("/items/8?x=1").as_deref(), Some("/items/8"));
        assert_eq!(resolve("8").as_deref(), Some("/items/8"));
        assert_eq!(resolve("../lists/1#top").as_deref(), Some("/lists/1"));
        assert_eq!(resolve("./").as_deref(), Some("/items/"));
        assert_eq!(resolve("?page=2").as_deref(), Some("/items/7"));
        assert_eq!(
            resolve("http://SHOP.example:8080/items/9").as_deref(),
            Some("/items/9")
        );
        assert_eq!(resolve("//shop.example:8080").as_deref(), Some("/"));
    }

    #[test]
    fn other_hosts_are_left_alone() {
        assert_eq!(resolve("https://evil.example/items/7"), None);
        assert_eq!(resolve("http://shop.example/items/7"), None, "another port");
        assert_eq!(resolve("//evil.example/x"), None);
    }

    #[test]
    fn unsafe_methods() {
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(is_unsafe(&m));
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!is_unsafe(&m));
        }
    }
}

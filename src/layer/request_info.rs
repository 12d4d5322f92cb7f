//! [`RequestInfo`]: the read-only view of a request that key, tag, principal and
//! invalidation functions are given.

use std::fmt::Display;

use axum::extract::{MatchedPath, OriginalUri, RawPathParams};
use http::request::Parts;
use http::{Extensions, HeaderMap, Method, Uri};

use crate::{Error, Key, KeyTemplate};

/// What a key, tag or invalidation function may read of a request: method, original URI,
/// headers, extensions, the matched route, path parameters and the principal.
///
/// Path parameters and [`matched_path`](RequestInfo::matched_path) exist only once axum
/// has routed the request, so add the layer with `route_layer` (or on a `MethodRouter`)
/// when a function needs them; under `Router::layer` they are absent.
///
/// ```
/// use axum::{routing::get, Router};
/// use stormcache::layer::{CacheLayer, RequestInfo};
/// use stormcache::{Cache, Key};
///
/// # fn main() -> Result<(), stormcache::Error> {
/// let cache = Cache::builder("docs").build()?;
/// // One entry per user id, whatever the query string says.
/// let layer = CacheLayer::new(cache).key_fn(|req: &RequestInfo<'_>| {
///     Some(Key::builder("user:").value(req.param("id")?).build())
/// });
/// let app: Router = Router::new().route("/users/{id}", get(|| async { "hi" }).route_layer(layer));
/// # let _ = app; Ok(()) }
/// ```
#[derive(Debug)]
pub struct RequestInfo<'a> {
    parts: &'a Parts,
    params: Option<&'a RawPathParams>,
    principal: Option<&'a str>,
}

impl<'a> RequestInfo<'a> {
    /// A view of `parts` with no path parameters and no principal (handy in tests of a key
    /// function; the layers build their own).
    pub fn new(parts: &'a Parts) -> Self {
        RequestInfo {
            parts,
            params: None,
            principal: None,
        }
    }

    pub(crate) fn with(
        parts: &'a Parts,
        params: Option<&'a RawPathParams>,
        principal: Option<&'a str>,
    ) -> Self {
        RequestInfo {
            parts,
            params,
            principal,
        }
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// The URI as the client sent it: under a nested router, the full one, not the part
    /// left after the prefix was stripped.
    pub fn uri(&self) -> &Uri {
        original_uri(self.parts)
    }

    /// The path of [`uri`](RequestInfo::uri).
    pub fn path(&self) -> &str {
        self.uri().path()
    }

    /// The raw query string of [`uri`](RequestInfo::uri), if any.
    pub fn query(&self) -> Option<&str> {
        self.uri().query()
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// The request extensions (where authentication middleware usually leaves the user).
    pub fn extensions(&self) -> &Extensions {
        &self.parts.extensions
    }

    /// The route that matched, e.g. `/users/{id}` (only under `route_layer`).
    pub fn matched_path(&self) -> Option<&str> {
        self.parts
            .extensions
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
    }

    /// A path parameter, percent-decoded (only under `route_layer`).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params?
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// Every path parameter, in route order.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.into_iter().flat_map(RawPathParams::iter)
    }

    /// The principal the layer's principal function found, if any (`None` while that
    /// function itself runs).
    pub fn principal(&self) -> Option<&str> {
        self.principal
    }

    /// Renders `template` with the path parameters (and `{principal}`, when there is one).
    ///
    /// Fails when a placeholder has no value; the error names it.
    pub fn render(&self, template: &KeyTemplate) -> Result<Key, Error> {
        let mut values: Vec<(&str, &str)> = self.params().collect();
        if let Some(p) = self.principal {
            values.push(("principal", p));
        }
        template.render_with(|name| {
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v as &dyn Display)
        })
    }
}

/// The URI before any `nest` stripped a prefix from it.
pub(crate) fn original_uri(parts: &Parts) -> &Uri {
    parts
        .extensions
        .get::<OriginalUri>()
        .map_or(&parts.uri, |o| &o.0)
}

/// The path parameters axum left in the extensions, if routing has happened.
pub(crate) fn path_params(parts: &mut Parts) -> Option<RawPathParams> {
    use axum::extract::FromRequestParts;
    use futures_util::FutureExt;
    // The extractor only reads the extensions: its future is ready on the first poll.
    RawPathParams::from_request_parts(parts, &())
        .now_or_never()
        .and_then(Result::ok)
}

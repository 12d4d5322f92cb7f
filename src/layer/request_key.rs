//! How a request becomes a cache key.
//!
//! A key is `http:` + a *base* + the *variations*:
//!
//! - the base is, by default, `GET:` + the path + `|q:` + the normalized query (HEAD reads
//!   GET's entry); a [key function](super::CacheLayer::key_fn) can replace it, as `k:` + its
//!   key escaped once more (so that it cannot hold a marker's `:`);
//! - `|a:` + the request's host name (`Host`, or the URI's authority; no port), unless
//!   [`key_host(false)`](super::CacheLayer::key_host): one app serving several hosts must
//!   not answer one host's request with another's page;
//! - `|n:` when another `CacheLayer` is loading the same request further out;
//! - then, for every header declared with [`CacheLayer::vary`](super::CacheLayer::vary),
//!   `|h:` + its name + `=` + its value (nothing after the name when the header is absent);
//! - then, when a principal was found, `|p:` + the principal;
//! - and, for a variant of a response that varies on fields not declared (see
//!   `layer::vary`), `|v:` + the request's normalized values of them.
//!
//! Every part that comes from the request goes through [`KeyBuilder::value`], which escapes
//! `:` (among others). The markers all contain a literal `:`, so no path, query, header or
//! principal can forge another request's key: `/p?x|p:bob` cannot read bob's `/p?x`.
//!
//! The query is normalized by dropping empty pieces (`a=1&&b=2`) and sorting the pairs by
//! name; the sort is stable, so repeated parameters (`tag=b&tag=a`) keep their order, which
//! may matter to the handler.

use http::header::HOST;
use http::{HeaderMap, HeaderName};

use super::query_filter::QueryFilter;
use crate::{Key, KeyBuilder};

/// The prefix of every key and tag the HTTP layers write.
pub(crate) const PREFIX: &str = "http:";

/// Starts the default base of a request: `http:GET:<path>[|q:<normalized query>]`, the
/// query holding only the parameters `filter` keeps (no `|q:` when it keeps none).
pub(crate) fn default_base(path: &str, query: Option<&str>, filter: &QueryFilter) -> KeyBuilder {
    let b = KeyBuilder::new().literal(PREFIX).literal("GET:").text(path);
    match query.filter(|q| !q.is_empty()) {
        Some(query) => push_normalized_query(b, query, filter),
        None => b,
    }
}

/// Starts a key from a key function's base.
pub(crate) fn custom_base(base: &Key) -> KeyBuilder {
    // Escaped once more, so that the base cannot hold a `:` that would forge a marker.
    KeyBuilder::new().literal(PREFIX).literal("k:").value(base)
}

/// Appends the declared `Vary` headers and the principal. `None` when a declared header
/// holds bytes that are not UTF-8 (such a request is not cached rather than keyed lossily).
pub(crate) fn finish(
    mut b: KeyBuilder,
    headers: &HeaderMap,
    vary: &[HeaderName],
    principal: Option<&str>,
) -> Option<Key> {
    for name in vary {
        b = b.literal("|h:").text(name.as_str());
        let mut first = true;
        for value in headers.get_all(name) {
            let text = std::str::from_utf8(value.as_bytes()).ok()?;
            b = b.literal(if first { "=" } else { "," }).text(text);
            first = false;
        }
    }
    if let Some(p) = principal {
        b = b.literal("|p:").text(p);
    }
    Some(b.build())
}

/// The tag every cached response carries: `http:path:<path>`. The invalidation layer
/// removes it after a successful mutation of the same path.
pub(crate) fn path_tag(path: &str) -> Key {
    KeyBuilder::new()
        .literal(PREFIX)
        .literal("path:")
        .text(path)
        .build()
}

/// Appends `|a:` + the request's host name, lowercased, without its port: replicas reached
/// on different ports (directly, or behind proxies that keep the port) still share entries,
/// while different host names do not. `None` if the `Host` header is not text (such a
/// request is not cached rather than keyed lossily). Allocates nothing for a lowercase host.
pub(crate) fn with_host(b: KeyBuilder, headers: &HeaderMap, uri: &http::Uri) -> Option<KeyBuilder> {
    let authority = match headers.get(HOST) {
        Some(value) => value.to_str().ok()?,
        None => uri.authority().map_or("", |a| a.as_str()),
    };
    let host = host_name(authority);
    Some(if host.bytes().any(|c| c.is_ascii_uppercase()) {
        b.literal("|a:").text(&host.to_ascii_lowercase())
    } else {
        b.literal("|a:").text(host)
    })
}

/// `host[:port]` or `[v6]:port` without the port.
fn host_name(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|c| c.is_ascii_digit())
                && (host.starts_with('[') == host.ends_with(']')) =>
        {
            host
        }
        _ => authority,
    }
}

/// Appends `|q:` and the query's pairs that `filter` keeps, sorted by name; nothing when it
/// keeps none.
fn push_normalized_query(mut b: KeyBuilder, query: &str, filter: &QueryFilter) -> KeyBuilder {
    fn name<'q>(pair: &&'q str) -> &'q str {
        pair.split_once('=').map_or(*pair, |(n, _)| n)
    }
    let pairs = query.split('&').filter(|p| !p.is_empty());
    // Most queries are short and already sorted: then nothing is collected.
    let sorted = {
        let mut prev: Option<&str> = None;
        query.split('&').filter(|p| !p.is_empty()).all(|p| {
            let n = name(&p);
            let ok = prev.map_or(true, |prev| prev <= n);
            prev = Some(n);
            ok
        })
    };
    let mut first = true;
    let mut push = |b: KeyBuilder, pair: &str| {
        let b = b.literal(if first { "|q:" } else { "&" });
        first = false;
        b.text(pair)
    };
    if sorted && !query.contains('%') {
        for pair in pairs.filter(|p| filter.keeps_all() || filter.keeps(name(p))) {
            b = push(b, pair);
        }
        return b;
    }
    // Percent-escapes are normalized before sorting (and filtering), so `a=%41` and `a=A`
    // are one entry, and `utm%5Fsource` is `utm_source`.
    let mut all: Vec<std::borrow::Cow<'_, str>> = pairs
        .map(normalize_escapes)
        .filter(|p| filter.keeps_all() || filter.keeps(name(&&**p)))
        .collect();
    all.sort_by(|x, y| name(&&**x).cmp(name(&&**y)));
    for pair in &all {
        b = push(b, pair);
    }
    b
}

/// RFC 3986 §6.2.2: an escaped unreserved character (`%41`) is the character itself, and
/// the hex digits of the other escapes are upper case. Nothing else changes: `%26` stays an
/// escaped `&`, and `+` stays `+`.
fn normalize_escapes(pair: &str) -> std::borrow::Cow<'_, str> {
    if !pair.contains('%') {
        return pair.into();
    }
    let bytes = pair.as_bytes();
    let mut out = String::with_capacity(pair.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = char::from((h * 16 + l) as u8);
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') {
                    out.push(c);
                } else {
                    out.push('%');
                    out.push(char::from(bytes[i + 1]).to_ascii_uppercase());
                    out.push(char::from(bytes[i + 2]).to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        // Not an escape: copied as it is (the pair is valid UTF-8, so whole characters are).
        let len = pair[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&pair[i..i + len]);
        i += len;
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::query_filter::NamePattern;
    use http::HeaderValue;

    fn key(path: &str, query: Option<&str>) -> String {
        finish(
            default_base(path, query, &QueryFilter::default()),
            &HeaderMap::new(),
            &[],
            None,
        )
        .expect("utf-8")
        .as_str()
        .to_owned()
    }

    #[test]
    fn the_host_name_leaves_the_port_out() {
        assert_eq!(host_name("a.example:8080"), "a.example");
        assert_eq!(host_name("a.example"), "a.example");
        assert_eq!(host_name("[::1]:3000"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_name(""), "");
    }

    #[test]
    fn escaped_unreserved_characters_are_one_entry_with_their_plain_form() {
        assert_eq!(key("/p", Some("a=%41")), key("/p", Some("a=A")));
        assert_eq!(key("/p", Some("b=%7e&a=1")), key("/p", Some("a=1&b=~")));
        assert_eq!(key("/p", Some("a=%2f")), key("/p", Some("a=%2F")));
        assert_ne!(key("/p", Some("a=%26")), key("/p", Some("a=&")));
        assert_ne!(key("/p", Some("a=%2F")), key("/p", Some("a=/")));
        // Broken escapes are kept as they are, never a panic.
        for q in ["a=%", "a=%4", "a=%zz", "%", "a=é%41"] {
            let _ = key("/p", Some(q));
        }
        assert_eq!(key("/p", Some("a=é%41")), key("/p", Some("a=éA")));
    }

    #[test]
    fn query_is_normalized() {
        assert_eq!(key("/r", Some("b=2&a=1")), key("/r", Some("a=1&b=2")));
        assert_eq!(key("/r", Some("a=1&&b=2&")), key("/r", Some("a=1&b=2")));
        assert_ne!(key("/r", Some("t=a&t=b")), key("/r", Some("t=b&t=a")));
        assert_eq!(
            key("/r", Some("z=1&t=a&t=b")),
            key("/r", Some("t=a&t=b&z=1"))
        );
        assert_eq!(key("/r", Some("")), key("/r", None));
        assert_ne!(key("/r", Some("a")), key("/r", None));
        assert_eq!(key("/r", Some("b=2&a=1")), "http:GET:/r|q:a=1&b=2");
    }

    #[test]
    fn filtered_parameters_leave_the_key() {
        let mut f = QueryFilter::default();
        f.deny([NamePattern::parse("utm_*")]);
        let k = |q: &str| {
            finish(
                default_base("/p", Some(q), &f),
                &HeaderMap::new(),
                &[],
                None,
            )
            .expect("utf-8")
            .as_str()
            .to_owned()
        };
        assert_eq!(k("utm_source=x&b=2&a=1"), key("/p", Some("a=1&b=2")));
        assert_eq!(k("utm%5Fsource=x&a=1"), key("/p", Some("a=1")));
        // Nothing kept: the key of the bare path.
        assert_eq!(k("utm_source=x"), key("/p", None));
        let mut only = QueryFilter::default();
        only.allow([NamePattern::parse("id")]);
        let k = |q: &str| {
            finish(
                default_base("/p", Some(q), &only),
                &HeaderMap::new(),
                &[],
                None,
            )
        };
        assert_eq!(k("z=1&id=7&a=2"), k("id=7"));
        assert_ne!(k("id=7"), k("id=8"));
    }

    #[test]
    fn request_parts_cannot_forge_markers() {
        let anon = finish(
            default_base("/p", Some("x|p:bob"), &QueryFilter::default()),
            &HeaderMap::new(),
            &[],
            None,
        );
        let bob = finish(
            default_base("/p", Some("x"), &QueryFilter::default()),
            &HeaderMap::new(),
            &[],
            Some("bob"),
        );
        assert_ne!(anon, bob);
        let path = finish(
            default_base("/p|q:x", None, &QueryFilter::default()),
            &HeaderMap::new(),
            &[],
            None,
        );
        assert_ne!(
            path.as_ref().map(Key::as_str),
            Some(key("/p", Some("x")).as_str())
        );
    }

    #[test]
    fn vary_headers_are_part_of_the_key() {
        let lang = HeaderName::from_static("accept-language");
        let mut fr = HeaderMap::new();
        fr.insert(&lang, HeaderValue::from_static("fr"));
        let mut empty = HeaderMap::new();
        empty.insert(&lang, HeaderValue::from_static(""));
        let k = |h: &HeaderMap| {
            finish(
                default_base("/", None, &QueryFilter::default()),
                h,
                std::slice::from_ref(&lang),
                None,
            )
        };
        let (fr, empty, absent) = (k(&fr), k(&empty), k(&HeaderMap::new()));
        assert_ne!(fr, empty);
        assert_ne!(empty, absent);
        assert_eq!(
            fr.map(|k| k.as_str().to_owned()).as_deref(),
            Some("http:GET:/|h:accept-language=fr")
        );
        let mut binary = HeaderMap::new();
        binary.insert(&lang, HeaderValue::from_bytes(b"\xff").expect("obs-text"));
        assert!(k(&binary).is_none());
    }
}

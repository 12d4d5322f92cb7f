//! Responses that vary (RFC 9111 §4.1): which request fields a response's `Vary` names
//! beyond those already in the key, and the normalized values of those fields in a request
//! (its *selector*), which pick the stored variant.
//!
//! The entry under a request's key holds the first response stored for it, and, when that
//! response varies, the fields it varies on and the selector of the request it was loaded
//! for. A request whose selector is the same is answered with it; one whose selector
//! differs reads its own variant under the key + `|v:` + its selector (the way Varnish
//! keeps variants). The selector names each field, so variants of different field sets
//! never share a key.
//!
//! Values are normalized so that equivalent requests share a variant: the field lines of a
//! field are combined, whitespace around commas (outside quoted strings) is dropped, and
//! fields whose values are case-insensitive (`Accept`, `Accept-Charset`,
//! `Accept-Language`) are lowercased. `Accept-Encoding` is reduced to what decides which
//! coding a server picks: the codings it accepts, ranked by q-value, ties in the order
//! tower-http's compression prefers (`zstd`, `br`, `gzip`, `deflate`, `identity`), up to
//! `identity` (the fallback, which outranks what follows it), plus an explicit refusal of
//! `identity` or `*`. So `gzip, deflate, br, zstd` and
//! `br;q=1, zstd, deflate, gzip` are one variant, while a client that only accepts `gzip`
//! never shares one with a client that also accepts `br`.

use http::header::{ACCEPT, ACCEPT_CHARSET, ACCEPT_ENCODING, ACCEPT_LANGUAGE, VARY};
use http::{HeaderMap, HeaderName};

use crate::{Key, KeyBuilder};

/// The fields a response varies on that the key does not already hold, lowercased, sorted
/// and without duplicates (empty when it does not vary, or only on declared fields).
/// `Err` when it may not be stored at all: `Vary: *`, or a `Vary` that is not a list of
/// field names.
pub(crate) fn uncovered_fields(
    headers: &HeaderMap,
    declared: &[HeaderName],
) -> Result<Vec<HeaderName>, &'static str> {
    let mut fields: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(VARY) {
        let value = value.to_str().map_err(|_| "vary")?;
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Err("vary");
            }
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| "vary")?;
            if !declared.contains(&name) && !fields.contains(&name) {
                fields.push(name);
            }
        }
    }
    fields.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(fields)
}

/// The selector of a request for `fields` (sorted, as [`uncovered_fields`] gives them):
/// each field's name and normalized value, an absent field apart from an empty one.
/// `None` when a value is not text (such a request is not cached rather than keyed
/// lossily).
pub(crate) fn selector(headers: &HeaderMap, fields: &[HeaderName]) -> Option<String> {
    let mut out = String::new();
    for (i, name) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(name.as_str());
        let mut lines = headers.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            continue;
        }
        out.push('=');
        let mut combined = String::new();
        for (j, line) in lines.enumerate() {
            if j > 0 {
                combined.push(',');
            }
            combined.push_str(line.to_str().ok()?);
        }
        if *name == ACCEPT_ENCODING {
            push_ranked_codings(&mut out, &combined);
        } else {
            let fold = *name == ACCEPT_LANGUAGE || *name == ACCEPT || *name == ACCEPT_CHARSET;
            push_list(&mut out, &combined, fold);
        }
    }
    Some(out)
}

/// The key of the variant `selector` picks among the variants of `base`.
pub(crate) fn variant_key(base: &Key, selector: &str) -> Key {
    let suffix = KeyBuilder::new().literal("|v:").value(selector).build();
    let mut text = compact_str::CompactString::from(base.as_str());
    text.push_str(suffix.as_str());
    Key::from_escaped(text)
}

/// Appends a comma-separated list with the whitespace around its commas dropped (commas
/// inside quoted strings are data), lowercased when `fold`.
fn push_list(out: &mut String, value: &str, fold: bool) {
    let mut first = true;
    for item in split_list(value) {
        if item.is_empty() {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        if fold {
            out.extend(item.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            out.push_str(item);
        }
    }
}

/// The trimmed members of a comma-separated list, commas inside quoted strings kept.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(s[..i].trim());
                }
                _ => {}
            }
        }
        rest = None;
        Some(s.trim())
    })
}

/// How tower-http's compression ranks codings of equal q-value (higher first); unknown
/// codings after them, by name.
fn coding_rank(coding: &str) -> u8 {
    match coding {
        "zstd" => 5,
        "br" => 4,
        "gzip" => 3,
        "deflate" => 2,
        "identity" => 1,
        _ => 0,
    }
}

/// Appends the ranked codings of an `Accept-Encoding` value (see the module's doc).
fn push_ranked_codings(out: &mut String, value: &str) {
    // (q in thousandths, coding lowercased)
    let mut accepted: Vec<(u16, String)> = Vec::new();
    let mut refused: Vec<&'static str> = Vec::new();
    for item in split_list(value).filter(|i| !i.is_empty()) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let coding = if coding == "x-gzip" {
            "gzip".to_owned()
        } else {
            coding
        };
        let mut q = Some(1000);
        for param in parts {
            let param = param.trim();
            if param.len() >= 2 && param[..2].eq_ignore_ascii_case("q=") {
                q = qvalue(&param[2..]);
            }
        }
        match q {
            // A q-value that does not parse: the coding is ignored, as tower-http does.
            None => {}
            Some(0) => match coding.as_str() {
                "identity" => refused.push("identity"),
                "*" => refused.push("*"),
                _ => {}
            },
            Some(q) if !accepted.iter().any(|(_, c)| *c == coding) => accepted.push((q, coding)),
            // Named twice: the first counts.
            Some(_) => {}
        }
    }
    accepted.sort_by(|(qa, a), (qb, b)| {
        qb.cmp(qa)
            .then(coding_rank(b).cmp(&coding_rank(a)))
            .then(a.cmp(b))
    });
    // `identity` is what a server falls back to: the codings ranked below it are never
    // picked, and it need not be named.
    if let Some(at) = accepted.iter().position(|(_, c)| c == "identity") {
        accepted.truncate(at);
    }
    let mut first = true;
    for (_, coding) in &accepted {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(coding);
    }
    refused.sort_unstable();
    refused.dedup();
    for coding in refused {
        out.push_str(if first { "" } else { "," });
        first = false;
        out.push_str(coding);
        out.push_str(";q=0");
    }
}

/// A q-value (`0`, `0.5`, `1.000`…) in thousandths; `None` when it is not one.
fn qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = match int {
        "0" => 0u16,
        "1" => 1000,
        _ => return None,
    };
    for (digit, scale) in frac.bytes().zip([100u16, 10, 1]) {
        thousandths += u16::from(digit - b'0') * scale;
    }
    (thousandths <= 1000).then_some(thousandths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn encoding(value: &'static str) -> String {
        selector(&map(&[("accept-encoding", value)]), &[ACCEPT_ENCODING]).expect("text")
    }

    #[test]
    fn fields_beyond_the_declared_ones() {
        let lang = HeaderName::from_static("accept-language");
        let h = map(&[
            ("vary", "Origin, accept-language"),
            ("vary", "ORIGIN,X-Tenant"),
        ]);
        let fields = uncovered_fields(&h, std::slice::from_ref(&lang)).expect("storable");
        assert_eq!(fields, ["origin", "x-tenant"]);
        assert_eq!(uncovered_fields(&map(&[]), &[]), Ok(vec![]));
        assert!(uncovered_fields(&map(&[("vary", "origin, *")]), &[]).is_err());
        assert!(uncovered_fields(&map(&[("vary", "a b")]), &[]).is_err());
    }

    #[test]
    fn values_are_normalized() {
        let lang = [ACCEPT_LANGUAGE];
        let s = |pairs: &[(&'static str, &'static str)]| selector(&map(pairs), &lang);
        assert_eq!(
            s(&[("accept-language", "fr-FR , EN;q=0.5")]),
            s(&[
                ("accept-language", "fr-fr"),
                ("accept-language", "en;q=0.5")
            ])
        );
        assert_ne!(
            s(&[("accept-language", "fr")]),
            s(&[("accept-language", "en")])
        );
        assert_ne!(s(&[("accept-language", "")]), s(&[]));
        // Case is kept where it may matter, and commas inside quotes are data.
        let tenant = [HeaderName::from_static("x-tenant")];
        let t = |v: &'static str| selector(&map(&[("x-tenant", v)]), &tenant);
        assert_ne!(t("Acme"), t("acme"));
        assert_ne!(t("\"a , b\""), t("\"a,b\""));
        assert_eq!(t("a , b"), t("a,b"));
    }

    #[test]
    fn codings_are_ranked_as_compression_picks_them() {
        assert_eq!(
            encoding("gzip, deflate, br, zstd"),
            "accept-encoding=zstd,br,gzip,deflate"
        );
        assert_eq!(
            encoding("br;q=1.0, ZSTD, deflate, x-gzip"),
            encoding("gzip, deflate, br, zstd")
        );
        assert_eq!(encoding("gzip;q=0.5, br;q=0.8"), "accept-encoding=br,gzip");
        assert_eq!(encoding("gzip;q=0.9, br;q=0.8"), "accept-encoding=gzip,br");
        // A client that only takes gzip never shares a variant with one that takes br.
        assert_ne!(encoding("gzip"), encoding("gzip, br"));
        assert_eq!(encoding("gzip, br;q=0"), encoding("gzip"));
        assert_eq!(encoding("gzip;q=2, br"), "accept-encoding=br");
        assert_eq!(
            encoding("identity;q=0, gzip"),
            "accept-encoding=gzip,identity;q=0"
        );
        // Identity is the fallback: naming it below a coding changes nothing, and the
        // codings it outranks are never picked.
        assert_eq!(encoding("gzip, identity;q=0.5"), encoding("gzip"));
        assert_eq!(encoding("identity, gzip;q=0.5"), "accept-encoding=");
        assert_eq!(encoding("*;q=0"), "accept-encoding=*;q=0");
        assert_eq!(encoding(""), "accept-encoding=");
        assert_eq!(
            selector(&HeaderMap::new(), &[ACCEPT_ENCODING]).as_deref(),
            Some("accept-encoding")
        );
    }

    #[test]
    fn variant_keys_escape_the_selector() {
        let base = Key::literal("http:GET:/p").expect("literal");
        let fr = variant_key(&base, "accept-language=fr");
        assert!(fr.as_str().starts_with("http:GET:/p|v:"));
        assert_ne!(fr, variant_key(&base, "accept-language=en"));
        assert_ne!(variant_key(&base, "a=b\nc"), variant_key(&base, "a=b,c"));
    }
}

//! Key templates, parsed at compile time with the same rules as `stormcache::KeyTemplate`.
//!
//! A template such as `"user:groups:{user_id}"` becomes a list of literal parts and
//! placeholders. The literal parts are checked here, once, so the expansion can append them
//! with `KeyBuilder::literal_unchecked` and no run-time parsing or checking is left.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::LitStr;

/// One part of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Text written by the developer, already checked.
    Literal(String),
    /// `{name}` or `{a.b.c}`: the segments of a dotted path.
    Named(Vec<String>),
    /// `{}`: the next positional argument (`key!` only).
    Next,
    /// `{0}`: a positional argument by index (`key!` only).
    Index(usize),
}

/// A parsed template and the literal it came from (for error spans).
#[derive(Clone, Debug)]
pub(crate) struct Template {
    pub(crate) lit: LitStr,
    pub(crate) parts: Vec<Part>,
}

/// Whether positional placeholders (`{}`, `{0}`) are allowed: only in `key!`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `#[cached]`, `#[invalidate]`, `#[invalidates]`: placeholders name arguments or fields.
    Named,
    /// `key!`: positional placeholders too, as in `format!`.
    Format,
}

/// Whether `c` may stand in a literal part (same rule as the core's `KeyTemplate`).
fn literal_char_ok(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '%' | '*' | '?' | '[' | ']' | '^' | '{' | '}' | '\\')
}

fn check_literal(text: &str, lit: &LitStr) -> syn::Result<()> {
    match text.chars().find(|c| !literal_char_ok(*c)) {
        None => Ok(()),
        Some(c) => Err(syn::Error::new(
            lit.span(),
            format!(
                "key template `{}`: the literal part contains {c:?}; literal parts may hold \
                 printable ASCII except % * ? [ ] ^ {{ }} \\ and whitespace (values are escaped, \
                 literals are not)",
                lit.value()
            ),
        )),
    }
}

fn is_segment(seg: &str) -> bool {
    let mut chars = seg.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphanumeric())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

impl Template {
    /// Parses `lit`; errors carry the literal's span.
    pub(crate) fn parse(lit: LitStr, flavor: Flavor) -> syn::Result<Self> {
        let source = lit.value();
        let bad =
            |msg: String| syn::Error::new(lit.span(), format!("key template `{source}`: {msg}"));
        let mut parts = Vec::new();
        let mut rest = source.as_str();
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    check_literal(rest, &lit)?;
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(bad("unmatched `}`".to_owned()));
                }
                Some(i) => {
                    if i > 0 {
                        check_literal(&rest[..i], &lit)?;
                        parts.push(Part::Literal(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find(['}', '{'])
                        .filter(|&e| after.as_bytes()[e] == b'}')
                        .ok_or_else(|| bad("unclosed `{`".to_owned()))?;
                    let name = &after[..end];
                    parts.push(parse_placeholder(name, flavor).map_err(bad)?);
                    rest = &after[end + 1..];
                }
            }
        }
        if parts.is_empty() {
            return Err(bad("a key template cannot be empty".to_owned()));
        }
        Ok(Template { lit, parts })
    }

    /// The named placeholders, as dotted paths.
    pub(crate) fn named(&self) -> impl Iterator<Item = &[String]> {
        self.parts.iter().filter_map(|p| match p {
            Part::Named(path) => Some(path.as_slice()),
            _ => None,
        })
    }

    /// `KeyBuilder` calls that build the key; `value` turns a placeholder into a reference
    /// to the value whose `Display` is escaped into the key.
    ///
    /// Values go through `stormcache::__private::value(builder, &v)`, whose parameter is a
    /// reference, so that borrowing an argument is not a needless borrow in the user's code.
    pub(crate) fn build_key(
        &self,
        mut value: impl FnMut(&Part) -> syn::Result<TokenStream>,
    ) -> syn::Result<TokenStream> {
        let span = self.lit.span();
        let mut builder = quote_spanned!(span=> ::stormcache::KeyBuilder::new());
        for part in &self.parts {
            builder = match part {
                Part::Literal(text) => {
                    let text = LitStr::new(text, span);
                    quote_spanned!(span=> #builder.literal_unchecked(#text))
                }
                other => {
                    let expr = value(other)?;
                    quote_spanned!(span=> ::stormcache::__private::value(#builder, #expr))
                }
            };
        }
        Ok(quote_spanned!(span=> #builder.build()))
    }
}

fn parse_placeholder(name: &str, flavor: Flavor) -> Result<Part, String> {
    if name.is_empty() {
        return match flavor {
            Flavor::Format => Ok(Part::Next),
            Flavor::Named => Err(
                "empty placeholder `{}`: name an argument, like `{user_id}` or `{user.id}`"
                    .to_owned(),
            ),
        };
    }
    if !name.split('.').all(is_segment) {
        return Err(format!(
            "placeholder `{{{name}}}` must be a name or a dotted path like `user.id`"
        ));
    }
    if flavor == Flavor::Format && name.bytes().all(|b| b.is_ascii_digit()) {
        return name
            .parse()
            .map(Part::Index)
            .map_err(|_| format!("placeholder `{{{name}}}`: index too large"));
    }
    Ok(Part::Named(name.split('.').map(str::to_owned).collect()))
}

/// `base.seg1.seg2…` as an expression, with field names or tuple indices, spanned at `span`.
pub(crate) fn field_path(base: TokenStream, segments: &[String], span: Span) -> TokenStream {
    let mut out = base;
    for seg in segments {
        if let Ok(index) = seg.parse::<u32>() {
            let index = syn::Index { index, span };
            out = quote!(#out.#index);
        } else {
            let ident = ident_for(seg, span);
            out = quote!(#out.#ident);
        }
    }
    out
}

/// An identifier for a placeholder segment (raw if it is a keyword other than `self`).
pub(crate) fn ident_for(seg: &str, span: Span) -> proc_macro2::Ident {
    if seg == "self" {
        return proc_macro2::Ident::new("self", span);
    }
    match syn::parse_str::<proc_macro2::Ident>(seg) {
        Ok(_) => proc_macro2::Ident::new(seg, span),
        Err(_) => proc_macro2::Ident::new_raw(seg, span),
    }
}

impl ToTokens for Template {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.lit.to_tokens(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str, flavor: Flavor) -> syn::Result<Vec<Part>> {
        Template::parse(LitStr::new(s, Span::call_site()), flavor).map(|t| t.parts)
    }

    #[test]
    fn parses_like_the_core() {
        assert_eq!(
            parse("user:{user.id}:x", Flavor::Named).unwrap(),
            vec![
                Part::Literal("user:".into()),
                Part::Named(vec!["user".into(), "id".into()]),
                Part::Literal(":x".into()),
            ]
        );
        for bad in [
            "", "a{", "a}", "a{}", "a*{b}", "a b", "{a b}", "x{y}[z]", "{a{b}}", "é{a}",
        ] {
            assert!(
                parse(bad, Flavor::Named).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn format_flavor_takes_positions() {
        assert_eq!(
            parse("a:{}:{1}:{n}", Flavor::Format).unwrap(),
            vec![
                Part::Literal("a:".into()),
                Part::Next,
                Part::Literal(":".into()),
                Part::Index(1),
                Part::Literal(":".into()),
                Part::Named(vec!["n".into()]),
            ]
        );
    }
}

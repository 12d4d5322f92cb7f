//! Parsing of the macros' arguments. Every error carries the span of the offending token.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{bracketed, Expr, Ident, LitBool, LitStr, Token};

use crate::template::{Flavor, Template};

/// A duration written as `"15m"`, kept with its literal for spans.
#[derive(Clone, Debug)]
pub(crate) struct DurationArg {
    pub(crate) secs: u64,
    pub(crate) nanos: u32,
    pub(crate) span: Span,
}

/// Parses `"500ms"`, `"90s"`, `"15m"`, `"12h"`, `"2d"` and sums like `"1h30m"`.
pub(crate) fn parse_duration(lit: &LitStr, what: &str) -> syn::Result<DurationArg> {
    let text = lit.value();
    let bad = |why: &str| {
        syn::Error::new(
            lit.span(),
            format!(
                "bad duration `{text}` for `{what}`: {why}; write it like \"90s\", \"15m\", \
                 \"12h\" or \"1h30m\" (units: ms, s, m, h, d)"
            ),
        )
    };
    let mut total_nanos: u128 = 0;
    let mut rest = text.as_str();
    if rest.is_empty() {
        return Err(bad("it is empty"));
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let number: u128 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_nanos: u128 = match &rest[..unit_len] {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            "" => return Err(bad("a number needs a unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        total_nanos = number
            .checked_mul(unit_nanos)
            .and_then(|n| total_nanos.checked_add(n))
            .ok_or_else(|| bad("too long"))?;
    }
    if total_nanos == 0 {
        return Err(bad("it must be positive"));
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| bad("too long"))?;
    Ok(DurationArg {
        secs,
        nanos: (total_nanos % 1_000_000_000) as u32,
        span: lit.span(),
    })
}

/// Checks a class name like the core does: `[A-Za-z0-9_.-]{1,64}`.
fn check_class(lit: &LitStr) -> syn::Result<()> {
    let name = lit.value();
    if !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            format!("invalid class name `{name}`: use 1 to 64 of A-Z a-z 0-9 _ . -"),
        ))
    }
}

/// `["a", "b"]` or a single `"a"`.
fn parse_strings(input: ParseStream) -> syn::Result<Vec<LitStr>> {
    if input.peek(syn::token::Bracket) {
        let content;
        bracketed!(content in input);
        let list = Punctuated::<LitStr, Token![,]>::parse_terminated(&content)?;
        Ok(list.into_iter().collect())
    } else {
        Ok(vec![input.parse()?])
    }
}

fn parse_templates(input: ParseStream) -> syn::Result<Vec<Template>> {
    parse_strings(input)?
        .into_iter()
        .map(|lit| Template::parse(lit, Flavor::Named))
        .collect()
}

fn parse_classes(input: ParseStream) -> syn::Result<Vec<LitStr>> {
    let classes = parse_strings(input)?;
    for class in &classes {
        check_class(class)?;
    }
    Ok(classes)
}

/// `flag` or `flag = true|false`.
fn parse_flag(input: ParseStream) -> syn::Result<bool> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Ok(input.parse::<LitBool>()?.value)
    } else {
        Ok(true)
    }
}

fn duplicate(name: &Ident) -> syn::Error {
    syn::Error::new(name.span(), format!("`{name}` is given twice"))
}

fn set_once<T>(slot: &mut Option<T>, name: &Ident, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

/// `cache = <expr>`: the expression, and the span of `cache` for "expected due to this".
pub(crate) struct CacheArg {
    pub(crate) keyword: Span,
    pub(crate) expr: Expr,
}

/// A TTL jitter: a duration (`"30s"`) or a percentage of the TTL (`"10%"`).
#[derive(Clone, Debug)]
pub(crate) enum JitterArg {
    UpTo(DurationArg),
    /// The fraction of the TTL, `0.0..=1.0`.
    Fraction(f64),
}

/// Parses `"10%"`, `"2.5%"` (0 to 100) or a duration.
pub(crate) fn parse_jitter(lit: &LitStr) -> syn::Result<JitterArg> {
    let text = lit.value();
    let Some(percent) = text.strip_suffix('%') else {
        return parse_duration(lit, "ttl_jitter").map(JitterArg::UpTo);
    };
    match percent.trim().parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(JitterArg::Fraction(p / 100.0)),
        _ => Err(syn::Error::new(
            lit.span(),
            format!(
                "bad jitter `{text}` for `ttl_jitter`: write a percentage of the TTL from 0 to \
                 100, like \"10%\", or a duration, like \"30s\""
            ),
        )),
    }
}

/// Parses `"80%"`: a fraction strictly between 0 and 1.
pub(crate) fn parse_percent(lit: &LitStr, what: &str) -> syn::Result<f64> {
    let text = lit.value();
    match text.strip_suffix('%').map(|p| p.trim().parse::<f64>()) {
        Some(Ok(p)) if p > 0.0 && p < 100.0 => Ok(p / 100.0),
        _ => Err(syn::Error::new(
            lit.span(),
            format!(
                "bad `{what}` `{text}`: write the share of the TTL after which a hit refreshes, \
                 between 0 and 100, like \"80%\""
            ),
        )),
    }
}

/// The arguments of `#[cached(...)]`.
#[derive(Default)]
pub(crate) struct CachedArgs {
    pub(crate) key: Option<Template>,
    pub(crate) ttl: Option<DurationArg>,
    pub(crate) class: Option<LitStr>,
    pub(crate) tags: Vec<Template>,
    pub(crate) stale_for: Option<DurationArg>,
    pub(crate) distributed_lock: Option<DurationArg>,
    pub(crate) ttl_jitter: Option<JitterArg>,
    pub(crate) local_ttl: Option<DurationArg>,
    pub(crate) soft_timeout: Option<DurationArg>,
    pub(crate) hard_timeout: Option<DurationArg>,
    /// The fraction of the TTL after which a hit refreshes, and where it was written.
    pub(crate) eager_refresh: Option<(f64, Span)>,
    pub(crate) cache: Option<CacheArg>,
    pub(crate) cache_none: Option<(bool, Span)>,
    pub(crate) companions: Option<bool>,
}

const CACHED_ARGS: &str = "key, ttl, class, tags, stale_for, distributed_lock, ttl_jitter, \
                           local_ttl, soft_timeout, hard_timeout, eager_refresh, cache, cache_none, \
                           companions";

impl Parse for CachedArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = CachedArgs::default();
        let mut tags_seen = false;
        while !input.is_empty() {
            let name = arg_name(input)?;
            match name.to_string().as_str() {
                "key" => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    set_once(&mut args.key, &name, Template::parse(lit, Flavor::Named)?)?;
                }
                "ttl" => {
                    input.parse::<Token![=]>()?;
                    let d = parse_duration(&input.parse()?, "ttl")?;
                    set_once(&mut args.ttl, &name, d)?;
                }
                "stale_for" => {
                    input.parse::<Token![=]>()?;
                    let d = parse_duration(&input.parse()?, "stale_for")?;
                    set_once(&mut args.stale_for, &name, d)?;
                }
                "distributed_lock" => {
                    input.parse::<Token![=]>()?;
                    let d = parse_duration(&input.parse()?, "distributed_lock")?;
                    set_once(&mut args.distributed_lock, &name, d)?;
                }
                "ttl_jitter" => {
                    input.parse::<Token![=]>()?;
                    let j = parse_jitter(&input.parse()?)?;
                    set_once(&mut args.ttl_jitter, &name, j)?;
                }
                "local_ttl" => {
                    input.parse::<Token![=]>()?;
                    let d = parse_duration(&input.parse()?, "local_ttl")?;
                    set_once(&mut args.local_ttl, &name, d)?;
                }
                "soft_timeout" => {
                    input.parse::<Token![=]>()?;
                    let d = parse_duration(&input.parse()?, "soft_timeout")?;
                    set_once(&mut args.soft_timeout, &name, d)?;
                }
                "eager_refresh" => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    let fraction = parse_percent(&lit, "eager_refresh")?;
                    set_once(&mut args.eager_refresh, &name, (fraction, lit.span()))?;
                }
                "hard_timeout" => {
                    input.parse::<Token![=]>()?;
                    let d = parse_duration(&input.parse()?, "hard_timeout")?;
                    set_once(&mut args.hard_timeout, &name, d)?;
                }
                "class" => {
                    input.parse::<Token![=]>()?;
                    let lit: LitStr = input.parse()?;
                    check_class(&lit)?;
                    set_once(&mut args.class, &name, lit)?;
                }
                "tags" | "tag" => {
                    if tags_seen {
                        return Err(duplicate(&name));
                    }
                    tags_seen = true;
                    input.parse::<Token![=]>()?;
                    args.tags = parse_templates(input)?;
                }
                "cache" => {
                    input.parse::<Token![=]>()?;
                    let expr = input.parse()?;
                    set_once(
                        &mut args.cache,
                        &name,
                        CacheArg {
                            keyword: name.span(),
                            expr,
                        },
                    )?;
                }
                "cache_none" => {
                    let flag = parse_flag(input)?;
                    set_once(&mut args.cache_none, &name, (flag, name.span()))?;
                }
                "companions" => {
                    let flag = parse_flag(input)?;
                    set_once(&mut args.companions, &name, flag)?;
                }
                _ => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                        "unknown argument `{name}` of #[cached]; expected one of: {CACHED_ARGS}"
                    ),
                    ))
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(args)
    }
}

/// One item of `#[invalidate(...)]` or `#[invalidates(...)]`.
pub(crate) enum InvalidateItem {
    Keys(Vec<Template>),
    Tags(Vec<Template>),
    Classes(Vec<LitStr>),
    /// A reusable rule: any expression whose type implements `InvalidationRule`.
    Rule(Box<Expr>),
}

/// The arguments of `#[invalidate(...)]`.
#[derive(Default)]
pub(crate) struct InvalidateArgs {
    pub(crate) items: Vec<InvalidateItem>,
    pub(crate) cache: Option<CacheArg>,
    pub(crate) double_delete: bool,
}

const INVALIDATE_ARGS: &str =
    "keys, tags, class, cache, double_delete, or a rule expression such as `UserGroups { user_id }`";

/// Whether the input starts with `name =` (or the bare flag `double_delete`).
fn starts_named(input: ParseStream) -> bool {
    input.peek(Ident) && (input.peek2(Token![=]) && !input.peek2(Token![==]))
        || (input.peek(Ident)
            && (input.peek2(Token![,]) || is_last_token(input))
            && input
                .fork()
                .parse::<Ident>()
                .is_ok_and(|i| i == "double_delete"))
}

fn is_last_token(input: ParseStream) -> bool {
    let fork = input.fork();
    fork.parse::<proc_macro2::TokenTree>().is_ok() && fork.is_empty()
}

impl Parse for InvalidateArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut args = InvalidateArgs::default();
        let mut dd_seen = false;
        if input.is_empty() {
            return Err(syn::Error::new(
                input.span(),
                format!("#[invalidate] needs something to invalidate: {INVALIDATE_ARGS}"),
            ));
        }
        while !input.is_empty() {
            if starts_named(input) {
                let name: Ident = input.parse()?;
                match name.to_string().as_str() {
                    "keys" | "key" => {
                        input.parse::<Token![=]>()?;
                        args.items.push(InvalidateItem::Keys(parse_templates(input)?));
                    }
                    "tags" | "tag" => {
                        input.parse::<Token![=]>()?;
                        args.items.push(InvalidateItem::Tags(parse_templates(input)?));
                    }
                    "class" | "classes" => {
                        input.parse::<Token![=]>()?;
                        args.items.push(InvalidateItem::Classes(parse_classes(input)?));
                    }
                    "cache" => {
                        input.parse::<Token![=]>()?;
                        let expr = input.parse()?;
                    set_once(&mut args.cache, &name, CacheArg { keyword: name.span(), expr })?;
                    }
                    "double_delete" => {
                        if dd_seen {
                            return Err(duplicate(&name));
                        }
                        dd_seen = true;
                        args.double_delete = parse_flag(input)?;
                    }
                    _ => {
                        return Err(syn::Error::new(
                            name.span(),
                            format!(
                                "unknown argument `{name}` of #[invalidate]; expected {INVALIDATE_ARGS}"
                            ),
                        ))
                    }
                }
            } else {
                let expr: Expr = input.parse()?;
                if let Expr::Lit(lit) = &expr {
                    return Err(syn::Error::new(
                        lit.span(),
                        "a bare literal is not a rule; write `keys = [\"...\"]`, `tags = [\"...\"]` \
                         or `class = \"...\"`",
                    ));
                }
                args.items.push(InvalidateItem::Rule(Box::new(expr)));
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        if args.items.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                format!("#[invalidate] needs something to invalidate: {INVALIDATE_ARGS}"),
            ));
        }
        Ok(args)
    }
}

/// The arguments of `#[invalidates(...)]` on a `#[derive(InvalidationRule)]` type.
pub(crate) struct RuleArgs {
    pub(crate) items: Vec<InvalidateItem>,
}

impl Parse for RuleArgs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut items = Vec::new();
        while !input.is_empty() {
            let name: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            match name.to_string().as_str() {
                "keys" | "key" => items.push(InvalidateItem::Keys(parse_templates(input)?)),
                "tags" | "tag" => items.push(InvalidateItem::Tags(parse_templates(input)?)),
                "class" | "classes" => items.push(InvalidateItem::Classes(parse_classes(input)?)),
                _ => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                        "unknown argument `{name}` of #[invalidates]; expected keys, tags or class"
                    ),
                    ))
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(RuleArgs { items })
    }
}

/// The input of `key!("template", args...)`.
pub(crate) struct KeyInput {
    pub(crate) template: Template,
    pub(crate) positional: Vec<Expr>,
    pub(crate) named: Vec<(Ident, Expr)>,
}

impl Parse for KeyInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let lit: LitStr = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "key! expects a string literal template first, like key!(\"user:{id}\")",
            )
        })?;
        let template = Template::parse(lit, Flavor::Format)?;
        let mut positional = Vec::new();
        let mut named: Vec<(Ident, Expr)> = Vec::new();
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            if input.peek(Ident) && input.peek2(Token![=]) && !input.peek2(Token![==]) {
                let name: Ident = input.parse()?;
                input.parse::<Token![=]>()?;
                let expr: Expr = input.parse()?;
                if named.iter().any(|(n, _)| *n == name) {
                    return Err(duplicate(&name));
                }
                named.push((name, expr));
            } else {
                let expr: Expr = input.parse()?;
                if !named.is_empty() {
                    return Err(syn::Error::new(
                        expr.span(),
                        "positional arguments cannot follow named arguments",
                    ));
                }
                positional.push(expr);
            }
        }
        Ok(KeyInput {
            template,
            positional,
            named,
        })
    }
}

/// An argument name of `#[cached]`, with a clear message when something else stands there.
fn arg_name(input: ParseStream) -> syn::Result<Ident> {
    if input.peek(Ident) {
        return input.parse();
    }
    Err(input.error(format!("expected an argument name: one of {CACHED_ARGS}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dur(s: &str) -> syn::Result<(u64, u32)> {
        parse_duration(&LitStr::new(s, Span::call_site()), "ttl").map(|d| (d.secs, d.nanos))
    }

    #[test]
    fn durations() {
        assert_eq!(dur("15m").unwrap(), (900, 0));
        assert_eq!(dur("1h30m").unwrap(), (5400, 0));
        assert_eq!(dur("2d").unwrap(), (172_800, 0));
        assert_eq!(dur("1500ms").unwrap(), (1, 500_000_000));
        for bad in [
            "",
            "15",
            "m",
            "15x",
            "0s",
            "1 h",
            "-1s",
            "1.5h",
            "99999999999999999999999d",
        ] {
            assert!(dur(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn cached_args() {
        let args: CachedArgs = syn::parse_str(
            r#"key = "user:{id}", ttl = "15m", class = "permissions", tags = ["user:{id}"], stale_for = "1h", cache = self.cache, cache_none"#,
        )
        .unwrap();
        assert!(args.key.is_some() && args.cache.is_some());
        assert_eq!(args.tags.len(), 1);
        assert!(args.cache_none.is_some_and(|(f, _)| f));
        assert!(syn::parse_str::<CachedArgs>(r#"ttl = "1m", ttl = "2m""#).is_err());
        assert!(syn::parse_str::<CachedArgs>(r#"tll = "1m""#).is_err());
        assert!(syn::parse_str::<CachedArgs>(r#"class = "a b""#).is_err());
        let shaped: CachedArgs =
            syn::parse_str(r#"ttl_jitter = "12.5%", local_ttl = "30s""#).unwrap();
        assert!(matches!(shaped.ttl_jitter, Some(JitterArg::Fraction(f)) if f == 0.125));
        assert!(shaped.local_ttl.is_some_and(|d| d.secs == 30));
        let by_duration: CachedArgs = syn::parse_str(r#"ttl_jitter = "1m""#).unwrap();
        assert!(matches!(by_duration.ttl_jitter, Some(JitterArg::UpTo(d)) if d.secs == 60));
        for bad in [r#""101%""#, r#""-1%""#, r#""x%""#, r#""10""#] {
            let args = format!("ttl_jitter = {bad}");
            assert!(
                syn::parse_str::<CachedArgs>(&args).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn invalidate_args() {
        let args: InvalidateArgs = syn::parse_str(
            r#"UserGroups { user_id }, keys = ["a:{x}"], class = "sessions", double_delete"#,
        )
        .unwrap();
        assert_eq!(args.items.len(), 3);
        assert!(args.double_delete);
        assert!(syn::parse_str::<InvalidateArgs>("").is_err());
        assert!(syn::parse_str::<InvalidateArgs>(r#"keyz = ["a"]"#).is_err());
        assert!(syn::parse_str::<InvalidateArgs>(r#""a""#).is_err());
    }
}

//! Code generation for `#[cached]`, `#[invalidate]`, `#[derive(InvalidationRule)]` and `key!`.
//!
//! The expansions call only public `stormcache` items plus the hidden `stormcache::__private`
//! helpers. Keys are assembled from the compile-time-parsed template with
//! `KeyBuilder::literal_unchecked` and `KeyBuilder::value`, so no template is parsed at run
//! time, and the entry options live in a per-function `static`, so a cache hit costs what the
//! same call written by hand costs.
//!
//! This module holds what more than one macro uses: the reading of a function's signature
//! (`FnArgs`, `Returns`), placeholders that name arguments or fields of `self`, the binding
//! of the `cache = …` argument and the typed body. Each macro's own code lives in a
//! submodule: `cached` (with the companions), `invalidate`, `rule` and `key`.

use std::collections::BTreeSet;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Expr, FnArg, Ident, LitStr, Pat, PatType, Receiver, ReturnType, Signature, Type};

use crate::parse::CacheArg;
use crate::template::{field_path, Part};

mod cached;
mod invalidate;
mod key;
mod rule;

pub(crate) use cached::cached;
pub(crate) use invalidate::invalidate;
pub(crate) use key::key;
pub(crate) use rule::derive_rule;

/// What a function returns, as far as caching goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Returns {
    /// Any other type: every value is cached.
    Value,
    /// `Result<T, E>` (or an alias named `Result`): only `Ok` is cached.
    Result,
    /// `Option<T>`: `None` is not cached unless `cache_none`.
    Option,
}

fn return_type(sig: &Signature) -> Type {
    match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    }
}

fn classify(ty: &Type) -> Returns {
    match ty {
        Type::Paren(p) => classify(&p.elem),
        Type::Group(g) => classify(&g.elem),
        Type::Path(p) if p.qself.is_none() => match p.path.segments.last() {
            Some(seg) if seg.ident == "Result" => Returns::Result,
            Some(seg) if seg.ident == "Option" => Returns::Option,
            _ => Returns::Value,
        },
        _ => Returns::Value,
    }
}

/// The arguments of the function being expanded.
struct FnArgs<'a> {
    name: &'a Ident,
    receiver: Option<&'a Receiver>,
    /// Arguments bound by a plain identifier pattern.
    named: Vec<(Ident, &'a PatType)>,
    /// Arguments bound by another pattern (`(a, b): (u8, u8)`).
    unnamed: Vec<&'a PatType>,
}

impl<'a> FnArgs<'a> {
    fn of(sig: &'a Signature) -> Self {
        let mut args = FnArgs {
            name: &sig.ident,
            receiver: None,
            named: Vec::new(),
            unnamed: Vec::new(),
        };
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(r) => args.receiver = Some(r),
                FnArg::Typed(pt) => match &*pt.pat {
                    Pat::Ident(pi) if pi.subpat.is_none() => {
                        args.named.push((pi.ident.clone(), pt))
                    }
                    _ => args.unnamed.push(pt),
                },
            }
        }
        args
    }

    fn find(&self, name: &str) -> Option<&(Ident, &'a PatType)> {
        self.named.iter().find(|(ident, _)| ident.unraw() == name)
    }

    fn names(&self) -> String {
        let mut names: Vec<String> = self
            .named
            .iter()
            .map(|(i, _)| i.unraw().to_string())
            .collect();
        if self.receiver.is_some() {
            names.insert(0, "self".to_owned());
        }
        if names.is_empty() {
            "it has none".to_owned()
        } else {
            format!("it has: {}", names.join(", "))
        }
    }

    /// Whether borrowing something that `tokens` mentions for the whole call could clash
    /// with the body's use of the arguments (a by-value or `&mut` receiver or argument).
    fn borrow_may_clash(&self, tokens: TokenStream) -> bool {
        let mut mentioned = BTreeSet::new();
        collect_idents(tokens, &mut mentioned);
        let self_clash = self.receiver.is_some_and(|r| !is_shared_ref(&r.ty));
        (self_clash && mentioned.contains("self"))
            || self.named.iter().any(|(ident, pt)| {
                !is_shared_ref(&pt.ty) && mentioned.contains(&ident.unraw().to_string())
            })
    }
}

fn is_shared_ref(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) => r.mutability.is_none(),
        Type::Paren(p) => is_shared_ref(&p.elem),
        Type::Group(g) => is_shared_ref(&g.elem),
        _ => false,
    }
}

fn collect_idents(tokens: TokenStream, out: &mut BTreeSet<String>) {
    for tt in tokens {
        match tt {
            TokenTree::Ident(i) => {
                out.insert(i.unraw().to_string());
            }
            TokenTree::Group(g) => collect_idents(g.stream(), out),
            _ => {}
        }
    }
}

/// The expression a placeholder of a function's template stands for: an argument, a field
/// of one (`{user.id}`) or of `self` (`{self.tenant}`), borrowed.
fn fn_placeholder(
    part: &Part,
    args: &FnArgs,
    lit: &LitStr,
    role: &str,
) -> syn::Result<TokenStream> {
    let span = lit.span();
    let path = named_path(part, span)?;
    let first = &path[0];
    let base = if first == "self" {
        if args.receiver.is_none() {
            return Err(syn::Error::new(
                span,
                format!(
                    "placeholder `{{{}}}` in {role}: `{}` has no `self` argument",
                    path.join("."),
                    args.name
                ),
            ));
        }
        quote_spanned!(span=> self)
    } else if let Some((ident, _)) = args.find(first) {
        let mut ident = ident.clone();
        ident.set_span(span);
        quote!(#ident)
    } else {
        return Err(syn::Error::new(
            span,
            format!(
                "unknown placeholder `{{{}}}` in {role}: `{}` has no argument named `{first}` ({})",
                path.join("."),
                args.name,
                args.names()
            ),
        ));
    };
    let expr = field_path(base, &path[1..], span);
    Ok(quote_spanned!(span=> &#expr))
}

/// The function's body as an `async move` block whose value is bound with the declared
/// return type, so that inference inside the body sees that type.
fn typed_body(ret: &impl ToTokens, block: &impl ToTokens) -> TokenStream {
    quote! {
        async move {
            let __sc_out: #ret = #block;
            __sc_out
        }
    }
}

/// The dotted path of a `{name}` placeholder: the only kind outside `key!`.
fn named_path(part: &Part, span: Span) -> syn::Result<&[String]> {
    match part {
        Part::Named(path) => Ok(path),
        _ => Err(syn::Error::new(
            span,
            "positional placeholders are for `key!` only",
        )),
    }
}

fn check_async(sig: &Signature, attr: &str) -> syn::Result<()> {
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            format!(
                "#[{attr}] goes on an `async fn`; `{}` is not async (write `async fn {}`)",
                sig.ident, sig.ident
            ),
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new(
            c.span,
            format!("#[{attr}] cannot go on a `const fn`"),
        ));
    }
    Ok(())
}

/// `&expr`, with the `&` carrying the expression's first span, so that a type error covers
/// the whole expression the user wrote.
fn borrow_expr(expr: &Expr) -> TokenStream {
    let amp = quote_spanned!(expr.span()=> &);
    match expr {
        Expr::Binary(_) | Expr::Cast(_) | Expr::Range(_) | Expr::Assign(_) | Expr::Closure(_) => {
            quote!(#amp (#expr))
        }
        _ => quote!(#amp #expr),
    }
}

/// `let __sc_cache: &Cache = …;` — the chosen cache, or the process-wide one.
fn cache_binding(cache: Option<&CacheArg>, args: &FnArgs) -> TokenStream {
    let name = args.name.to_string();
    match cache {
        None => quote! {
            let __sc_cache: &'static ::stormcache::Cache = ::stormcache::__private::global_cache(#name);
        },
        Some(CacheArg { keyword, expr }) => {
            let borrowed = borrow_expr(expr);
            // The expected type points at `cache`, the found one at the expression.
            let ty = quote_spanned!(*keyword=> &::stormcache::Cache);
            if args.borrow_may_clash(quote!(#expr)) {
                // A clone (one reference count) keeps the body free to use what `expr` borrows.
                quote! {
                    let __sc_cache_ref: #ty = #borrowed;
                    let __sc_cache_owned: ::stormcache::Cache = ::core::clone::Clone::clone(__sc_cache_ref);
                    let __sc_cache: &::stormcache::Cache = &__sc_cache_owned;
                }
            } else {
                quote! {
                    let __sc_cache: #ty = #borrowed;
                }
            }
        }
    }
}

/// `let name: Cache = …;` — an owned handle (one reference count) on the chosen cache, taken
/// before the body runs so that the body may use whatever the expression borrows.
fn owned_cache_binding(cache: Option<&CacheArg>, fn_name: &str, name: &Ident) -> TokenStream {
    match cache {
        None => quote! {
            let #name: ::stormcache::Cache =
                ::core::clone::Clone::clone(::stormcache::__private::global_cache(#fn_name));
        },
        Some(CacheArg { keyword, expr }) => {
            let borrowed = borrow_expr(expr);
            let ty = quote_spanned!(*keyword=> &::stormcache::Cache);
            quote! {
                let #name: ::stormcache::Cache = {
                    let __sc_cache_ref: #ty = #borrowed;
                    ::core::clone::Clone::clone(__sc_cache_ref)
                };
            }
        }
    }
}

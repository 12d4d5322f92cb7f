//! Code generation for `#[cached]`, `#[invalidate]`, `#[derive(InvalidationRule)]` and `key!`.
//!
//! The expansions call only public `stormcache` items plus the hidden `stormcache::__private`
//! helpers. Keys are assembled from the compile-time-parsed template with
//! `KeyBuilder::literal_unchecked` and `KeyBuilder::value`, so no template is parsed at run
//! time, and the entry options live in a per-function `static`, so a cache hit costs what the
//! same call written by hand costs.

use std::collections::BTreeSet;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Expr, FnArg, Generics, Ident, ItemFn, LitStr, Pat, PatType,
    Receiver, ReturnType, Signature, Type, WherePredicate,
};

use crate::parse::{
    CacheArg, CachedArgs, DurationArg, InvalidateArgs, InvalidateItem, KeyInput, RuleArgs,
};
use crate::template::{field_path, ident_for, Part};

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

fn duration_tokens(d: &DurationArg) -> TokenStream {
    let (secs, nanos) = (d.secs, d.nanos);
    quote_spanned!(d.span=> ::core::time::Duration::new(#secs, #nanos))
}

/// The pieces `#[cached]` and its companions share.
struct CachedPlan<'a> {
    args: &'a FnArgs<'a>,
    returns: Returns,
    ret: Type,
    key: TokenStream,
    /// First segments of the placeholders (the arguments the key names; `self` included).
    key_args: BTreeSet<String>,
    options: TokenStream,
    cache: Option<&'a CacheArg>,
}

impl CachedPlan<'_> {
    fn prelude(&self) -> TokenStream {
        let cache = cache_binding(self.cache, self.args);
        let key = &self.key;
        let options = &self.options;
        quote! {
            #cache
            let __sc_key: ::stormcache::Key = #key;
            #options
        }
    }
}

fn cached_options(args: &CachedArgs, fn_args: &FnArgs) -> syn::Result<TokenStream> {
    let mut calls = TokenStream::new();
    if let Some(ttl) = &args.ttl {
        let d = duration_tokens(ttl);
        calls.extend(quote!(.ttl(#d)));
    }
    if let Some(class) = &args.class {
        calls.extend(quote!(.class(#class)));
    }
    if let Some(stale) = &args.stale_for {
        let d = duration_tokens(stale);
        calls.extend(quote!(.stale_for(#d)));
    }
    if let Some(lock) = &args.distributed_lock {
        let d = duration_tokens(lock);
        calls.extend(quote!(.distributed_lock(#d)));
    }
    let base = quote! {
        static __SC_OPTIONS: ::std::sync::LazyLock<::stormcache::EntryOptions> =
            ::std::sync::LazyLock::new(|| ::stormcache::EntryOptions::new() #calls);
    };
    if args.tags.is_empty() {
        return Ok(quote! {
            #base
            let __sc_options: &::stormcache::EntryOptions = &__SC_OPTIONS;
        });
    }
    let mut tags = Vec::new();
    for tag in &args.tags {
        tags.push(tag.build_key(|p| fn_placeholder(p, fn_args, &tag.lit, "a tag"))?);
    }
    Ok(quote! {
        #base
        let __sc_options_owned: ::stormcache::EntryOptions =
            ::stormcache::__private::with_tags(&__SC_OPTIONS, [#(#tags),*]);
        let __sc_options: &::stormcache::EntryOptions = &__sc_options_owned;
    })
}

/// The key of a `#[cached]` function: its template, or by default the function's path and
/// every argument.
fn cached_key(args: &CachedArgs, fn_args: &FnArgs) -> syn::Result<(TokenStream, BTreeSet<String>)> {
    let mut key_args = BTreeSet::new();
    if let Some(template) = &args.key {
        for path in template.named() {
            key_args.insert(path[0].clone());
        }
        let key = template.build_key(|p| fn_placeholder(p, fn_args, &template.lit, "the key"))?;
        return Ok((key, key_args));
    }
    if let Some(pt) = fn_args.unnamed.first() {
        return Err(syn::Error::new(
            pt.pat.span(),
            "this argument has no name to put in the default key; give the key, like \
             #[cached(key = \"thing:{id}\")]",
        ));
    }
    let name = fn_args.name.unraw().to_string();
    let mut builder = quote! {
        ::stormcache::KeyBuilder::new()
            .literal_unchecked(::core::concat!(::core::module_path!(), "::", #name))
    };
    if fn_args.receiver.is_some() {
        // Two types of one module may have methods of the same name.
        builder = quote! {
            ::stormcache::__private::value(
                #builder.literal_unchecked(":"),
                ::core::any::type_name::<Self>(),
            )
        };
    }
    for (ident, _) in &fn_args.named {
        key_args.insert(ident.unraw().to_string());
        builder = quote_spanned! {ident.span()=>
            ::stormcache::__private::value(#builder.literal_unchecked(":"), &#ident)
        };
    }
    Ok((quote!(#builder.build()), key_args))
}

/// `#[cached(...)]`.
pub(crate) fn cached(args: CachedArgs, item: ItemFn) -> syn::Result<TokenStream> {
    check_async(&item.sig, "cached")?;
    let fn_args = FnArgs::of(&item.sig);
    let ret = return_type(&item.sig);
    let returns = classify(&ret);
    if let (Some(stale), false) = (&args.stale_for, returns == Returns::Result) {
        return Err(syn::Error::new(
            stale.span,
            format!(
                "`stale_for` serves an expired value when the function fails, but `{}` returns \
                 `{}`, which cannot fail; it applies to functions returning `Result`",
                fn_args.name,
                quote!(#ret)
            ),
        ));
    }
    if let Some((true, span)) = args.cache_none {
        if returns != Returns::Option {
            return Err(syn::Error::new(
                span,
                format!(
                    "`cache_none` is for functions returning `Option`; `{}` does not",
                    fn_args.name
                ),
            ));
        }
    }
    let cache_none = args.cache_none.is_some_and(|(flag, _)| flag);
    let (key, key_args) = cached_key(&args, &fn_args)?;
    let options = cached_options(&args, &fn_args)?;
    let plan = CachedPlan {
        args: &fn_args,
        returns,
        ret,
        key,
        key_args,
        options,
        cache: args.cache.as_ref(),
    };

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = &item;
    let ret = &plan.ret;
    let prelude = plan.prelude();
    let body = typed_body(ret, block);
    let loader = quote!(|| #body);
    let call = match (returns, cache_none) {
        (Returns::Value, _) | (Returns::Option, true) => quote_spanned! {ret.span()=>
            __sc_cache.get_or_load(__sc_key, __sc_options, #loader).await
        },
        (Returns::Result, _) => quote_spanned! {ret.span()=>
            __sc_cache.try_get_or_load(__sc_key, __sc_options, #loader).await
        },
        (Returns::Option, false) => quote_spanned! {ret.span()=>
            ::stormcache::__private::cached_option(__sc_cache, __sc_key, __sc_options, #loader).await
        },
    };
    let main = quote! {
        #(#attrs)*
        #vis #sig {
            #prelude
            #call
        }
    };
    if args.companions == Some(false) {
        return Ok(main);
    }
    let companions = companions(&plan, &item, cache_none)?;
    Ok(quote! {
        #main
        #companions
    })
}

/// `name_no_cache`, `name_refresh`, `name_key` and `name_invalidate`.
fn companions(plan: &CachedPlan, item: &ItemFn, cache_none: bool) -> syn::Result<TokenStream> {
    let ItemFn {
        vis, sig, block, ..
    } = item;
    let name = &sig.ident;
    let cfgs: Vec<&Attribute> = item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect();
    let ret = &plan.ret;
    let renamed = |suffix: &str| {
        let mut s = sig.clone();
        s.ident = format_ident!("{}_{}", name.unraw(), suffix, span = name.span());
        s
    };

    let no_cache_sig = renamed("no_cache");
    let no_cache_doc = format!(
        "Runs `{name}` without the cache: nothing is read from it or written to it.\n\n\
         Generated by `#[stormcache::cached]` on `{name}`."
    );

    let refresh_sig = renamed("refresh");
    let stored = match (plan.returns, cache_none) {
        (Returns::Value, _) | (Returns::Option, true) => "the result",
        (Returns::Result, _) => "an `Ok` result",
        (Returns::Option, false) => "a `Some` result",
    };
    let refresh_doc = format!(
        "Runs `{name}` without reading the cache, writes {stored} to the cache (replacing what \
         was there) and returns it.\n\nGenerated by `#[stormcache::cached]` on `{name}`."
    );
    let prelude = plan.prelude();
    let store = match (plan.returns, cache_none) {
        (Returns::Value, _) | (Returns::Option, true) => quote!(refresh_value),
        (Returns::Result, _) => quote!(refresh_result),
        (Returns::Option, false) => quote!(refresh_option),
    };
    let store = quote_spanned! {ret.span()=>
        ::stormcache::__private::#store(__sc_cache, __sc_key, __sc_options, __sc_value).await
    };
    let body = typed_body(ret, block);

    // `name_key` and `name_invalidate` take only what the key (and the cache expression) use.
    let mut wanted = plan.key_args.clone();
    if let Some(cache) = plan.cache {
        let expr = &cache.expr;
        collect_idents(quote!(#expr), &mut wanted);
    }
    let kept: Vec<&PatType> = plan
        .args
        .named
        .iter()
        .filter(|(ident, _)| wanted.contains(&ident.unraw().to_string()))
        .map(|(_, pt)| *pt)
        .collect();
    let params: Vec<TokenStream> = kept
        .iter()
        .map(|pt| {
            let ident = match &*pt.pat {
                Pat::Ident(pi) => &pi.ident,
                _ => unreachable_pattern(),
            };
            let ty = &pt.ty;
            quote!(#ident: #ty)
        })
        .collect();
    let receiver = plan.args.receiver.map(|_| quote!(&self,));
    let generics = keep_generics(&sig.generics, kept.iter().map(|pt| &*pt.ty));
    let (_, _, where_clause) = generics.split_for_impl();
    let params_generics = &generics.params;
    let key_name = format_ident!("{}_key", name.unraw(), span = name.span());
    let invalidate_name = format_ident!("{}_invalidate", name.unraw(), span = name.span());
    let key_doc = format!(
        "The cache key of `{name}` for these arguments.\n\n\
         Generated by `#[stormcache::cached]` on `{name}`."
    );
    let invalidate_doc = format!(
        "Removes the cached result of `{name}` for these arguments, from the local store and \
         from Redis, in every class.\n\nGenerated by `#[stormcache::cached]` on `{name}`."
    );
    let key = &plan.key;
    let cache = cache_binding(plan.cache, plan.args);

    Ok(quote! {
        #(#cfgs)*
        #[doc = #no_cache_doc]
        #[allow(dead_code, clippy::too_many_arguments)]
        #vis #no_cache_sig #block

        #(#cfgs)*
        #[doc = #refresh_doc]
        #[allow(dead_code, clippy::too_many_arguments)]
        #vis #refresh_sig {
            #prelude
            let __sc_value: #ret = #body.await;
            #store
        }

        #(#cfgs)*
        #[doc = #key_doc]
        #[allow(dead_code, clippy::too_many_arguments)]
        #[must_use]
        #vis fn #key_name <#params_generics> (#receiver #(#params),*) -> ::stormcache::Key #where_clause {
            #key
        }

        #(#cfgs)*
        #[doc = #invalidate_doc]
        #[allow(dead_code, clippy::too_many_arguments)]
        #vis async fn #invalidate_name <#params_generics> (#receiver #(#params),*)
            -> ::stormcache::InvalidationReport #where_clause
        {
            #cache
            __sc_cache.remove(&#key).await
        }
    })
}

#[allow(clippy::panic)]
fn unreachable_pattern() -> ! {
    // `named` only holds identifier patterns.
    unreachable!("named arguments have identifier patterns")
}

/// The generics of `generics` that the kept argument types need: every lifetime, the type
/// and const parameters they mention, and the predicates that mention nothing else.
fn keep_generics<'t>(generics: &Generics, kept: impl Iterator<Item = &'t Type>) -> Generics {
    let mut mentioned = BTreeSet::new();
    for ty in kept {
        collect_idents(quote!(#ty), &mut mentioned);
    }
    let all: BTreeSet<String> = generics
        .type_params()
        .map(|p| p.ident.to_string())
        .chain(generics.const_params().map(|p| p.ident.to_string()))
        .collect();
    let dropped: BTreeSet<&String> = all.iter().filter(|n| !mentioned.contains(*n)).collect();
    let mentions_dropped = |tokens: TokenStream| {
        let mut idents = BTreeSet::new();
        collect_idents(tokens, &mut idents);
        idents.iter().any(|i| dropped.contains(i))
    };
    let mut out = generics.clone();
    out.params = generics
        .params
        .iter()
        .filter(|p| match p {
            syn::GenericParam::Lifetime(_) => true,
            syn::GenericParam::Type(t) => !dropped.contains(&t.ident.to_string()),
            syn::GenericParam::Const(c) => !dropped.contains(&c.ident.to_string()),
        })
        .cloned()
        .collect();
    if let Some(wc) = &mut out.where_clause {
        wc.predicates = wc
            .predicates
            .iter()
            .filter(|p: &&WherePredicate| !mentions_dropped(quote!(#p)))
            .cloned()
            .collect();
    }
    out
}

/// Whether an attribute is `#[invalidate]` (as `invalidate` or `stormcache::invalidate`).
fn is_invalidate_attr(attr: &Attribute) -> bool {
    let segs: Vec<String> = attr
        .path()
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    matches!(
        segs.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["invalidate"] | ["stormcache", "invalidate"]
    )
}

/// `#[invalidate(...)]`, together with the `#[invalidate]` attributes stacked under it.
pub(crate) fn invalidate(first: InvalidateArgs, mut item: ItemFn) -> syn::Result<TokenStream> {
    check_async(&item.sig, "invalidate")?;
    // Gather the whole stack, so one call to `Cache::invalidate` does them all.
    let mut stack = vec![first];
    let mut kept_attrs = Vec::new();
    for attr in std::mem::take(&mut item.attrs) {
        if is_invalidate_attr(&attr) {
            stack.push(attr.parse_args::<InvalidateArgs>()?);
        } else {
            kept_attrs.push(attr);
        }
    }
    item.attrs = kept_attrs;

    let fn_args = FnArgs::of(&item.sig);
    let ret = return_type(&item.sig);
    let returns = classify(&ret);

    // Group by cache expression: one `Invalidation` (and one Redis round) per cache.
    struct Group<'a> {
        cache: Option<&'a CacheArg>,
        repr: String,
        body: TokenStream,
        double: bool,
    }
    let mut groups: Vec<Group> = Vec::new();
    for (n, args) in stack.iter().enumerate() {
        let repr = args
            .cache
            .as_ref()
            .map(|c| {
                let expr = &c.expr;
                quote!(#expr).to_string()
            })
            .unwrap_or_default();
        let gi = match groups.iter().position(|g| g.repr == repr) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    cache: args.cache.as_ref(),
                    repr,
                    body: TokenStream::new(),
                    double: false,
                });
                groups.len() - 1
            }
        };
        let (after, before) = (
            format_ident!("__sc_after_{}", gi),
            format_ident!("__sc_before_{}", gi),
        );
        let group = &mut groups[gi];
        group.double |= args.double_delete;
        for (m, item) in args.items.iter().enumerate() {
            let value = format_ident!("__sc_item_{}_{}", n, m);
            let (make, add) = match item {
                InvalidateItem::Keys(templates) | InvalidateItem::Tags(templates) => {
                    let (add, role) = match item {
                        InvalidateItem::Keys(_) => (quote!(add_keys), "a key"),
                        _ => (quote!(add_tags), "a tag"),
                    };
                    let mut keys = Vec::new();
                    for t in templates {
                        keys.push(t.build_key(|p| fn_placeholder(p, &fn_args, &t.lit, role))?);
                    }
                    (
                        quote!(let #value = [#(#keys),*];),
                        quote!(::stormcache::__private::#add),
                    )
                }
                InvalidateItem::Classes(classes) => (
                    quote!(let #value: &[&'static str] = &[#(#classes),*];),
                    quote!(::stormcache::__private::add_classes),
                ),
                InvalidateItem::Rule(expr) => {
                    // Through `&dyn`, so that a type that is no rule is reported on the
                    // expression the user wrote.
                    let borrowed = borrow_expr(expr);
                    (
                        quote!(let #value: &dyn ::stormcache::InvalidationRule = #borrowed;),
                        quote!(::stormcache::__private::add_rule),
                    )
                }
            };
            group.body.extend(make);
            if args.double_delete {
                group
                    .body
                    .extend(quote!(#add(&mut #before, ::core::clone::Clone::clone(&#value));));
            }
            group.body.extend(quote!(#add(&mut #after, #value);));
        }
    }

    let name = fn_args.name.to_string();
    let mut prelude = TokenStream::new();
    let mut run_before = TokenStream::new();
    let mut run_after = TokenStream::new();
    for (gi, group) in groups.iter().enumerate() {
        let cache = format_ident!("__sc_cache_{}", gi);
        let (after, before) = (
            format_ident!("__sc_after_{}", gi),
            format_ident!("__sc_before_{}", gi),
        );
        let binding = owned_cache_binding(group.cache, &name, &cache);
        let body = &group.body;
        // In a block, so that nothing the rules borrow lives across an `.await` (the
        // function's future stays `Send` whatever the rule types are).
        let built = if group.double {
            quote! {
                let (#after, #before) = {
                    let mut #after = ::stormcache::Invalidation::new();
                    let mut #before = ::stormcache::Invalidation::new();
                    #body
                    (#after, #before)
                };
            }
        } else {
            quote! {
                let #after = {
                    let mut #after = ::stormcache::Invalidation::new();
                    #body
                    #after
                };
            }
        };
        prelude.extend(quote! {
            #binding
            #built
        });
        if group.double {
            run_before.extend(quote! {
                ::stormcache::__private::invalidate_quietly(&#cache, #before, #name).await;
            });
        }
        run_after.extend(quote! {
            ::stormcache::__private::invalidate_quietly(&#cache, #after, #name).await;
        });
    }
    let run_after = match returns {
        Returns::Result => quote! {
            if ::core::result::Result::is_ok(&__sc_result) {
                #run_after
            }
        },
        _ => run_after,
    };

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = &item;
    let body = typed_body(&ret, block);
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #prelude
            #run_before
            let __sc_result: #ret = #body.await;
            #run_after
            __sc_result
        }
    })
}

/// The expression of a placeholder in a rule type's template: a field of `self`.
fn field_placeholder(
    part: &Part,
    input: &DeriveInput,
    fields: &syn::Fields,
    lit: &LitStr,
) -> syn::Result<TokenStream> {
    let span = lit.span();
    let path = named_path(part, span)?;
    let first = &path[0];
    let known: Vec<String> = match fields {
        syn::Fields::Named(named) => named
            .named
            .iter()
            .filter_map(|f| f.ident.as_ref().map(|i| i.unraw().to_string()))
            .collect(),
        syn::Fields::Unnamed(unnamed) => {
            (0..unnamed.unnamed.len()).map(|i| i.to_string()).collect()
        }
        syn::Fields::Unit => Vec::new(),
    };
    if !known.contains(first) {
        let has = if known.is_empty() {
            "it has none".to_owned()
        } else {
            format!("it has: {}", known.join(", "))
        };
        return Err(syn::Error::new(
            span,
            format!(
                "unknown placeholder `{{{}}}`: `{}` has no field named `{first}` ({has})",
                path.join("."),
                input.ident
            ),
        ));
    }
    let expr = field_path(quote_spanned!(span=> self), path, span);
    Ok(quote_spanned!(span=> &#expr))
}

/// `#[derive(InvalidationRule)]` with `#[invalidates(...)]`.
pub(crate) fn derive_rule(input: DeriveInput) -> syn::Result<TokenStream> {
    let fields = match &input.data {
        Data::Struct(s) => &s.fields,
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span,
                "#[derive(InvalidationRule)] goes on a struct; for an enum, implement \
                 `stormcache::InvalidationRule` by hand",
            ))
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span,
                "#[derive(InvalidationRule)] goes on a struct",
            ))
        }
    };
    let mut items = Vec::new();
    for attr in &input.attrs {
        if attr.path().is_ident("invalidates") {
            items.extend(attr.parse_args::<RuleArgs>()?.items);
        }
    }
    if items.is_empty() {
        return Err(syn::Error::new(
            input.ident.span(),
            format!(
                "`{}` derives InvalidationRule but names nothing to invalidate; add \
                 #[invalidates(keys = [\"...\"], tags = [\"...\"], class = \"...\")]",
                input.ident
            ),
        ));
    }
    let mut body = TokenStream::new();
    for item in &items {
        match item {
            InvalidateItem::Keys(ts) | InvalidateItem::Tags(ts) => {
                let add = match item {
                    InvalidateItem::Keys(_) => quote!(add_keys),
                    _ => quote!(add_tags),
                };
                for t in ts {
                    let key = t.build_key(|p| field_placeholder(p, &input, fields, &t.lit))?;
                    body.extend(quote!(::stormcache::__private::#add(__sc_inv, [#key]);));
                }
            }
            InvalidateItem::Classes(cs) => {
                body.extend(quote!(::stormcache::__private::add_classes(__sc_inv, &[#(#cs),*]);));
            }
            InvalidateItem::Rule(expr) => {
                return Err(syn::Error::new(expr.span(), "expected keys, tags or class"));
            }
        }
    }
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::stormcache::InvalidationRule for #name #ty_generics #where_clause {
            fn add_to(&self, __sc_inv: &mut ::stormcache::Invalidation) {
                #body
            }
        }
    })
}

/// `key!("template", args...)`.
pub(crate) fn key(input: KeyInput) -> syn::Result<TokenStream> {
    let KeyInput {
        template,
        positional,
        named,
    } = input;
    let span = template.lit.span();
    let mut used_positional = vec![false; positional.len()];
    let mut used_named = vec![false; named.len()];
    let mut next = 0usize;
    let pos_ident = |i: usize| format_ident!("__sc_arg{}", i, span = Span::mixed_site());
    let named_ident = |i: usize| format_ident!("__sc_named{}", i, span = Span::mixed_site());
    let key = template.build_key(|part| match part {
        Part::Next | Part::Index(_) => {
            let i = match part {
                Part::Index(i) => *i,
                _ => {
                    next += 1;
                    next - 1
                }
            };
            if i >= positional.len() {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "the template uses positional argument {i}, but {} given",
                        match positional.len() {
                            0 => "none is".to_owned(),
                            1 => "only 1 is".to_owned(),
                            n => format!("only {n} are"),
                        }
                    ),
                ));
            }
            used_positional[i] = true;
            let ident = pos_ident(i);
            Ok(quote!(#ident))
        }
        Part::Named(path) => {
            if let Some(i) = named.iter().position(|(n, _)| n.unraw() == path[0]) {
                used_named[i] = true;
                let ident = named_ident(i);
                if path.len() == 1 {
                    return Ok(quote!(#ident));
                }
                let expr = field_path(quote!(#ident), &path[1..], span);
                return Ok(quote!(&#expr));
            }
            let base = ident_for(&path[0], span);
            let expr = field_path(quote!(#base), &path[1..], span);
            Ok(quote_spanned!(span=> &#expr))
        }
        Part::Literal(_) => Ok(TokenStream::new()),
    })?;
    if let Some(i) = used_positional.iter().position(|u| !u) {
        return Err(syn::Error::new(
            positional[i].span(),
            "argument never used in the key template",
        ));
    }
    if let Some(i) = used_named.iter().position(|u| !u) {
        return Err(syn::Error::new(
            named[i].0.span(),
            "named argument never used in the key template",
        ));
    }
    if positional.is_empty() && named.is_empty() {
        return Ok(quote!({ #key }));
    }
    let exprs = positional.iter().chain(named.iter().map(|(_, e)| e));
    let idents = (0..positional.len())
        .map(pos_ident)
        .chain((0..named.len()).map(named_ident));
    Ok(quote! {
        match (#(&(#exprs),)*) {
            (#(#idents,)*) => #key,
        }
    })
}

//! `#[cached]`: the read-through function and its companions (`name_no_cache`,
//! `name_refresh`, `name_key`, `name_invalidate`).

use std::collections::BTreeSet;

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, Generics, Ident, ItemFn, Pat, PatType, Type, WherePredicate};

use super::{
    cache_binding, check_async, classify, collect_idents, fn_placeholder, return_type, typed_body,
    FnArgs, Returns,
};
use crate::parse::{CacheArg, CachedArgs, DurationArg, JitterArg};

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
    /// First segments of the tags' placeholders.
    tag_args: BTreeSet<String>,
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
    // For traces: how the key is made, never its values.
    if let Some(key) = &args.key {
        let template = &key.lit;
        calls.extend(quote!(.key_template(#template)));
    }
    if let Some(stale) = &args.stale_for {
        let d = duration_tokens(stale);
        calls.extend(quote!(.stale_for(#d)));
    }
    if let Some(lock) = &args.distributed_lock {
        let d = duration_tokens(lock);
        calls.extend(quote!(.distributed_lock(#d)));
    }
    match &args.ttl_jitter {
        Some(JitterArg::UpTo(jitter)) => {
            let d = duration_tokens(jitter);
            calls.extend(quote!(.ttl_jitter(#d)));
        }
        Some(JitterArg::Fraction(fraction)) => {
            let f = proc_macro2::Literal::f64_suffixed(*fraction);
            calls.extend(quote!(.ttl_jitter(#f)));
        }
        None => {}
    }
    if let Some(local_ttl) = &args.local_ttl {
        let d = duration_tokens(local_ttl);
        calls.extend(quote!(.local_ttl(#d)));
    }
    if let Some(soft) = &args.soft_timeout {
        let d = duration_tokens(soft);
        calls.extend(quote!(.soft_timeout(#d)));
    }
    if let Some(hard) = &args.hard_timeout {
        let d = duration_tokens(hard);
        calls.extend(quote!(.hard_timeout(#d)));
    }
    if let Some((fraction, span)) = args.eager_refresh {
        let f = proc_macro2::Literal::f64_suffixed(fraction);
        calls.extend(quote_spanned!(span=> .eager_refresh(#f)));
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
    // An argument that is the cache itself (`cache = cache`) says where to cache, not what.
    let cache_arg = args.cache.as_ref().and_then(|c| match &c.expr {
        syn::Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(|i| i.unraw()),
        _ => None,
    });
    for (ident, _) in &fn_args.named {
        if cache_arg.as_ref() == Some(&ident.unraw()) {
            continue;
        }
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
        tag_args: args
            .tags
            .iter()
            .flat_map(|tag| tag.named().map(|path| path[0].clone()))
            .collect(),
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
    // A loader that owns the arguments can outlive the call: then a soft timeout answers
    // every caller, and the load finishes in the background.
    let owned_span = match (args.eager_refresh, &args.soft_timeout) {
        (Some((_, span)), _) => Some(span),
        (None, Some(soft)) if borrowed_argument(&fn_args).is_none() => Some(soft.span),
        (None, _) => None,
    };
    let call = match owned_span {
        Some(span) => refreshing_call(&args, &fn_args, returns, cache_none, ret, &body, span)?,
        None => read_call(&args, returns, cache_none, ret, &loader),
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

/// The read-through call of a function whose loader may borrow its arguments.
fn read_call(
    args: &CachedArgs,
    returns: Returns,
    cache_none: bool,
    ret: &Type,
    loader: &TokenStream,
) -> TokenStream {
    match (returns, cache_none) {
        (Returns::Value, _) | (Returns::Option, true) => quote_spanned! {ret.span()=>
            __sc_cache.get_or_load(__sc_key, __sc_options, #loader).await
        },
        // Only a hard timeout can fail the call with a timeout: then the error type must
        // say so, and a missing `From<LoadTimeout>` is reported at the argument.
        (Returns::Result, _) => match &args.hard_timeout {
            Some(hard) => quote_spanned! {hard.span=>
                __sc_cache.try_get_or_load(__sc_key, __sc_options, #loader).await
            },
            None => quote_spanned! {ret.span()=>
                ::stormcache::__private::cached_result(__sc_cache, __sc_key, __sc_options, #loader).await
            },
        },
        (Returns::Option, false) => quote_spanned! {ret.span()=>
            ::stormcache::__private::cached_option(__sc_cache, __sc_key, __sc_options, #loader).await
        },
    }
}

/// The read-through call with eager refresh: the refresh runs after the call has returned,
/// so the loader owns the function's arguments, which must then be owned (`'static`).
fn refreshing_call(
    args: &CachedArgs,
    fn_args: &FnArgs,
    returns: Returns,
    cache_none: bool,
    ret: &Type,
    body: &TokenStream,
    span: proc_macro2::Span,
) -> syn::Result<TokenStream> {
    if let Some(error) = borrowed_argument(fn_args) {
        return Err(error);
    }
    let loader = quote_spanned!(span=> move || #body);
    Ok(match (returns, cache_none) {
        (Returns::Value, _) | (Returns::Option, true) => quote_spanned! {ret.span()=>
            ::stormcache::__private::refreshing_value(__sc_cache, __sc_key, __sc_options, #loader).await
        },
        (Returns::Result, _) => match &args.hard_timeout {
            Some(hard) => quote_spanned! {hard.span=>
                __sc_cache.fetch_refreshing(__sc_key, __sc_options, #loader).await.map(|f| f.value)
            },
            None => quote_spanned! {ret.span()=>
                ::stormcache::__private::refreshing_result(__sc_cache, __sc_key, __sc_options, #loader).await
            },
        },
        (Returns::Option, false) => quote_spanned! {ret.span()=>
            ::stormcache::__private::refreshing_option(__sc_cache, __sc_key, __sc_options, #loader).await
        },
    })
}

/// Why the function's loader cannot own its arguments, if it cannot: `self`, or an
/// argument of a type that borrows.
fn borrowed_argument(fn_args: &FnArgs) -> Option<syn::Error> {
    let borrowed = |why: String, at: &dyn quote::ToTokens| {
        syn::Error::new_spanned(
            at,
            format!(
                "`eager_refresh` reloads the value after the call has returned, so the \
                 function's arguments must be owned ('static): {why}"
            ),
        )
    };
    if let Some(receiver) = fn_args.receiver {
        return Some(borrowed(
            "`self` is borrowed; make it a free function taking what it needs by value".into(),
            receiver,
        ));
    }
    let typed = fn_args.named.iter().map(|(_, pt)| *pt);
    for pt in typed.chain(fn_args.unnamed.iter().copied()) {
        if has_borrow(&pt.ty) {
            let ty = &pt.ty;
            let written = quote!(#ty).to_string().replace("& ", "&");
            return Some(borrowed(
                format!("`{written}` borrows; take an owned type"),
                ty,
            ));
        }
    }
    None
}

/// Whether a type borrows: a reference or a lifetime anywhere in it.
fn has_borrow(ty: &Type) -> bool {
    fn borrows(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|t| match t {
            proc_macro2::TokenTree::Punct(p) => matches!(p.as_char(), '&' | '\''),
            proc_macro2::TokenTree::Group(g) => borrows(g.stream()),
            _ => false,
        })
    }
    borrows(quote!(#ty))
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
    // The user's body need not use an argument that only the key, a tag or the cache
    // expression uses; in a companion that runs the body alone (or builds the key alone),
    // such an argument would otherwise be reported as unused, at the user's own signature.
    let no_cache_uses = mark_used(
        plan.args
            .named
            .iter()
            .map(|(ident, _)| ident)
            .filter(|ident| {
                let name = ident.unraw().to_string();
                wanted.contains(&name) || plan.tag_args.contains(&name)
            }),
    );
    let key_uses = mark_used(kept.iter().filter_map(|pt| match &*pt.pat {
        Pat::Ident(pi) if !plan.key_args.contains(&pi.ident.unraw().to_string()) => Some(&pi.ident),
        _ => None,
    }));

    Ok(quote! {
        #(#cfgs)*
        #[doc = #no_cache_doc]
        #[allow(dead_code, clippy::too_many_arguments)]
        #vis #no_cache_sig {
            #no_cache_uses
            #block
        }

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
            #key_uses
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

/// `let _ = (&a, &b);`: a use of each argument that moves nothing and borrows nothing past
/// the statement.
fn mark_used<'i>(idents: impl Iterator<Item = &'i Ident>) -> TokenStream {
    let idents: Vec<&Ident> = idents.collect();
    if idents.is_empty() {
        return TokenStream::new();
    }
    quote!(let _ = (#(&#idents,)*);)
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

//! `#[invalidate]`: invalidation after a mutating function, with every `#[invalidate]`
//! stacked on it gathered into one invalidation per cache.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Attribute, ItemFn};

use super::{
    borrow_expr, check_async, classify, fn_placeholder, owned_cache_binding, return_type,
    typed_body, FnArgs, Returns,
};
use crate::parse::{CacheArg, InvalidateArgs, InvalidateItem};

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
                ::stormcache::__private::invalidate_first(&#cache, #before, #name).await;
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

//! `#[derive(InvalidationRule)]`: an `InvalidationRule` impl from `#[invalidates(...)]`,
//! whose placeholders name fields of the struct.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, LitStr};

use super::named_path;
use crate::parse::{InvalidateItem, RuleArgs};
use crate::template::{field_path, Part};

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

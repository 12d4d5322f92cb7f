//! `key!`: a `Key` from a template checked at compile time, with `format!`-like arguments.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::parse::KeyInput;
use crate::template::{field_path, ident_for, Part};

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

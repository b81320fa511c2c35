//! `#[on_both_backends]`: the one way a test, unit or end-to-end, runs on both database backends.
//! Re-exported as `ordermesh_testkit::on_both_backends`; see there.
//!
//! An attribute rather than a `macro_rules!` around the function, so rustfmt and the editor treat
//! the test as the ordinary function it is.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{Attribute, ItemFn, parse_macro_input};

/// Turns `[async] fn t(backend: Backend) -> R` carrying a test attribute (`#[tokio::test]` with
/// any arguments, or `#[test]`) into that function plus a module `t` holding two tests,
/// `t::on_sqlite` and `t::on_postgres`, each calling `t` with its backend under the test
/// attribute. The function is left as written; only the test attribute moves to the two
/// generated tests.
#[proc_macro_attribute]
pub fn on_both_backends(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let args = proc_macro2::TokenStream::from(args);
        return syn::Error::new_spanned(args, "on_both_backends takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut function = parse_macro_input!(item as ItemFn);
    match expand(&mut function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand(function: &mut ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let signature = &function.sig;
    if signature.inputs.len() != 1 {
        return Err(syn::Error::new_spanned(
            &signature.inputs,
            "on_both_backends: the test takes one argument, the `ordermesh_testkit::Backend` to run on",
        ));
    }
    let Some(position) = function.attrs.iter().position(is_test_attribute) else {
        return Err(syn::Error::new_spanned(
            signature.fn_token,
            "on_both_backends: put it above the test's own attribute (`#[tokio::test]`), which \
             it moves onto the two tests it generates",
        ));
    };
    let test_attribute: Attribute = function.attrs.remove(position);
    let name = &signature.ident;
    let output = &signature.output;
    let asyncness = &signature.asyncness;
    let tests = [("on_sqlite", "Sqlite"), ("on_postgres", "Postgres")].map(|(test, backend)| {
        let test = format_ident!("{test}");
        let backend = format_ident!("{backend}");
        let call = quote! { super::#name(::ordermesh_testkit::Backend::#backend) };
        let call = match asyncness {
            Some(_) => quote! { #call.await },
            None => call,
        };
        quote! {
            #test_attribute
            #asyncness fn #test() #output {
                #call
            }
        }
    });
    Ok(quote! {
        #function

        /// The test above, once on each database backend.
        mod #name {
            // The return type is written in the parent's terms (`Result` from its imports, say).
            #[allow(unused_imports)]
            use super::*;
            #(#tests)*
        }
    })
}

/// `#[test]`, `#[tokio::test]` or `#[tokio::test(...)]`: the attribute that makes it a test.
fn is_test_attribute(attribute: &Attribute) -> bool {
    let path = attribute.path();
    path.is_ident("test") || path.segments.last().is_some_and(|s| s.ident == "test")
}

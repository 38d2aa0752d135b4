//! The attribute macros of `runnel-sdk`. Use them through `runnel_sdk`
//! (`#[runnel_sdk::filter]`, `#[runnel_sdk::map]`, `#[runnel_sdk::scorer]`,
//! `#[runnel_sdk::processor]`);
//! this crate's documentation is there.
//!
//! Each macro keeps the author's item as written and adds a hidden module that
//! generates the component's bindings (through the SDK's re-export of
//! wit-bindgen, so authors never depend on it) and exports them. A signature
//! that cannot work is rejected here, with a sentence that says what to write.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{ToTokens, quote};
use syn::{
    FnArg, GenericArgument, Item, ItemFn, ItemImpl, LitStr, PathArguments, ReturnType, Type,
    parse_macro_input, spanned::Spanned,
};

/// The contract. The one copy lives in the repository's `wit/`.
const WIT: &str = include_str!("../../../wit/runnel.wit");

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Filter,
    Map,
    Scorer,
    Processor,
}

impl Kind {
    fn attr(self) -> &'static str {
        match self {
            Kind::Filter => "#[runnel_sdk::filter]",
            Kind::Map => "#[runnel_sdk::map]",
            Kind::Scorer => "#[runnel_sdk::scorer]",
            Kind::Processor => "#[runnel_sdk::processor]",
        }
    }

    fn trait_name(self) -> &'static str {
        match self {
            Kind::Filter => "Filter",
            Kind::Map => "Map",
            Kind::Scorer => "Scorer",
            Kind::Processor => "Processor",
        }
    }

    fn fn_shape(self) -> &'static str {
        match self {
            Kind::Filter => "fn name(record: &Record) -> Result<bool>",
            Kind::Map => "fn name(record: &Record) -> Result<Vec<Output>>",
            Kind::Processor => {
                "fn name(record: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>>"
            }
            Kind::Scorer => "",
        }
    }

    fn usage(self) -> String {
        match self {
            Kind::Scorer => format!(
                "{} goes on `impl runnel_sdk::Scorer for YourModel {{ .. }}`: a scorer is built from its \
                 config and model bytes by `fn new(config: &Config, model: &[u8]) -> Result<Self>`, \
                 then scores each record",
                self.attr()
            ),
            _ => format!(
                "{} goes on `{}`, or on `impl runnel_sdk::{} for YourType {{ .. }}` when it needs state built from its config",
                self.attr(),
                self.fn_shape(),
                self.trait_name()
            ),
        }
    }
}

/// Exports a filter: `fn(&Record) -> Result<bool>`, or `impl Filter for T`.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Filter, attr, item)
}

/// Exports a map: `fn(&Record) -> Result<Vec<Output>>`, or `impl Map for T`.
#[proc_macro_attribute]
pub fn map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Map, attr, item)
}

/// Exports a processor: `fn(&Record, &mut ProcessorContext) -> Result<Vec<Output>>`,
/// or `impl Processor for T`.
#[proc_macro_attribute]
pub fn processor(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Processor, attr, item)
}

/// Exports a scorer: `impl Scorer for T`.
#[proc_macro_attribute]
pub fn scorer(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(Kind::Scorer, attr, item)
}

fn expand(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = parse_macro_input!(item as Item);
    if !attr.is_empty() {
        let attr = TokenStream2::from(attr);
        let e = syn::Error::new_spanned(attr, format!("{} takes no arguments", kind.attr()))
            .to_compile_error();
        return quote! { #item #e }.into();
    }
    let glue = match &item {
        Item::Fn(f) if kind != Kind::Scorer => check_fn(kind, f).map(|()| fn_glue(kind, f)),
        Item::Impl(i) => check_impl(kind, i).map(|()| impl_glue(kind, i)),
        other => Err(syn::Error::new(item_span(other), kind.usage())),
    };
    match glue {
        Ok(glue) => quote! { #item #glue }.into(),
        Err(e) => {
            let e = e.to_compile_error();
            quote! { #item #e }.into()
        }
    }
}

fn item_span(item: &Item) -> Span {
    match item {
        Item::Fn(f) => f.sig.span(),
        Item::Struct(s) => s.ident.span(),
        Item::Enum(e) => e.ident.span(),
        other => other.span(),
    }
}

fn check_fn(kind: Kind, f: &ItemFn) -> syn::Result<()> {
    let sig = &f.sig;
    let shape = kind.fn_shape();
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            a,
            format!("a runnel function cannot be async: write `{shape}`"),
        ));
    }
    if !sig.generics.params.is_empty()
        && sig
            .generics
            .params
            .iter()
            .any(|p| !matches!(p, syn::GenericParam::Lifetime(_)))
    {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            format!("a runnel function cannot be generic: write `{shape}`"),
        ));
    }
    let inputs: Vec<&FnArg> = sig.inputs.iter().collect();
    let arg_ok = match (kind, inputs.as_slice()) {
        (Kind::Processor, [FnArg::Typed(r), FnArg::Typed(c)]) => {
            is_record_ref(&r.ty) && is_context_mut(&c.ty)
        }
        (Kind::Processor, _) => false,
        (_, [FnArg::Typed(t)]) => is_record_ref(&t.ty),
        _ => false,
    };
    if !arg_ok {
        let span_of: TokenStream2 = if sig.inputs.is_empty() {
            sig.ident.to_token_stream()
        } else {
            sig.inputs.to_token_stream()
        };
        let takes = match kind {
            Kind::Processor => {
                "two arguments, the record as `&Record` and its state as `&mut ProcessorContext`"
            }
            _ => "exactly one argument, the record, as `&Record`",
        };
        return Err(syn::Error::new_spanned(
            span_of,
            format!(
                "a runnel {} takes {takes}: write `{shape}`",
                kind.trait_name().to_lowercase()
            ),
        ));
    }
    let ok_type = match &sig.output {
        ReturnType::Type(_, ty) => result_ok_type(ty),
        ReturnType::Default => None,
    };
    let ret_ok = match (kind, ok_type) {
        (Kind::Filter, Some(t)) => is_named(t, "bool"),
        (Kind::Map | Kind::Processor, Some(t)) => is_vec_of_output(t),
        _ => false,
    };
    if !ret_ok {
        let found = match &sig.output {
            ReturnType::Default => "nothing".to_owned(),
            ReturnType::Type(_, ty) => format!("`{}`", ty.to_token_stream())
                .replace(" < ", "<")
                .replace(" >", ">"),
        };
        let span_of: TokenStream2 = match &sig.output {
            ReturnType::Default => sig.ident.to_token_stream(),
            out => out.to_token_stream(),
        };
        let why = match kind {
            Kind::Filter => {
                "a runnel filter returns `Result<bool>`: Ok(true) keeps the record, Ok(false) drops it, \
                 and Err sends it to the dead-letter topic"
            }
            Kind::Processor => {
                "a runnel processor returns `Result<Vec<Output>>`: the records this one turns into \
                 (none, one or several), or Err to send it to the dead-letter topic and forget its \
                 state writes"
            }
            _ => {
                "a runnel map returns `Result<Vec<Output>>`: the records this one turns into (none, one \
                 or several), or Err to send it to the dead-letter topic"
            }
        };
        return Err(syn::Error::new_spanned(
            span_of,
            format!("{why}; this one returns {found}"),
        ));
    }
    Ok(())
}

fn check_impl(kind: Kind, i: &ItemImpl) -> syn::Result<()> {
    let Some((_, path, _)) = &i.trait_ else {
        return Err(syn::Error::new_spanned(&i.self_ty, kind.usage()));
    };
    let name = path
        .segments
        .last()
        .map(|s| s.ident.to_string())
        .unwrap_or_default();
    if name != kind.trait_name() {
        let hint = match name.as_str() {
            "Filter" => " (use #[runnel_sdk::filter] for a `Filter`)",
            "Map" => " (use #[runnel_sdk::map] for a `Map`)",
            "Scorer" => " (use #[runnel_sdk::scorer] for a `Scorer`)",
            "Processor" => " (use #[runnel_sdk::processor] for a `Processor`)",
            _ => "",
        };
        return Err(syn::Error::new_spanned(
            path,
            format!("{}{hint}", kind.usage()),
        ));
    }
    if !i.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &i.generics,
            format!(
                "{} needs one concrete type, not a generic impl",
                kind.attr()
            ),
        ));
    }
    Ok(())
}

/// `&Record`, `&Record<'_>`, `&runnel_sdk::Record<'a>`, not `&mut`.
fn is_record_ref(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) if r.mutability.is_none() => is_named(&r.elem, "Record"),
        _ => false,
    }
}

/// `&mut ProcessorContext`, `&mut ProcessorContext<'_>`, `&mut runnel_sdk::ProcessorContext<'a>`.
fn is_context_mut(ty: &Type) -> bool {
    match ty {
        Type::Reference(r) if r.mutability.is_some() => is_named(&r.elem, "ProcessorContext"),
        _ => false,
    }
}

fn is_named(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(p) => {
            p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == name)
        }
        _ => false,
    }
}

/// `T` in `Result<T>` or `Result<T, E>`.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    first_type_arg(ty, "Result")
}

fn first_type_arg<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    })
}

fn is_vec_of_output(ty: &Type) -> bool {
    first_type_arg(ty, "Vec").is_some_and(|t| is_named(t, "Output"))
}

/// The hidden module that binds the world and exports the author's function.
fn module(kind: Kind, state: TokenStream2, init: TokenStream2, call: TokenStream2) -> TokenStream2 {
    let wit = LitStr::new(WIT, Span::call_site());
    let world = match kind {
        Kind::Filter => "filter",
        Kind::Map => "%map",
        Kind::Scorer => "scorer",
        Kind::Processor => "processor",
    };
    let host = if kind == Kind::Processor {
        state_host()
    } else {
        quote! {}
    };
    quote! {
        #[doc(hidden)]
        #[allow(dead_code, unused_imports, unsafe_code, clippy::all)]
        mod __runnel_exports {
            ::runnel_sdk::__private::wit_bindgen::generate!({
                inline: #wit,
                world: #world,
                runtime_path: "::runnel_sdk::__private::wit_bindgen::rt",
            });


            #state
            #host

            struct Component;

            impl Guest for Component {
                #init
                #call
            }

            export!(Component);
        }
    }
}

fn fn_glue(kind: Kind, f: &ItemFn) -> TokenStream2 {
    let name = &f.sig.ident;
    let init = quote! {
        fn init(_config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>)
            -> ::core::result::Result<(), ::std::string::String> {
            ::core::result::Result::Ok(())
        }
    };
    let call = match kind {
        Kind::Filter => filter_call(quote! { super::#name(r).map_err(::runnel_sdk::Error::from) }),
        Kind::Processor => {
            process_call(quote! { super::#name(r, ctx).map_err(::runnel_sdk::Error::from) })
        }
        _ => map_call(quote! { super::#name(r).map_err(::runnel_sdk::Error::from) }),
    };
    module(kind, quote! {}, init, call)
}

fn filter_call(per_record: TokenStream2) -> TokenStream2 {
    quote! {
        fn filter(batch: runnel::stream::types::Batch) -> runnel::stream::types::Verdicts {
            let out = ::runnel_sdk::__private::filter_batch(
                &batch.data, &batch.index,
                |r| #per_record,
                |index, message| runnel::stream::types::Failure {
                    index,
                    error: runnel::stream::types::RecordError { message },
                },
            );
            runnel::stream::types::Verdicts { keep: out.keep, failures: out.failures }
        }
    }
}

/// `process`: a map whose records each get a `ProcessorContext` on the host's state.
fn process_call(per_record: TokenStream2) -> TokenStream2 {
    outputs_call(
        quote! { process },
        quote! { process_batch },
        quote! { &StateHost, |r, ctx| #per_record },
    )
}

/// The SDK's view of the imported `state` interface.
fn state_host() -> TokenStream2 {
    quote! {
        struct StateHost;

        fn state_error(e: runnel::stream::state::StateError) -> ::std::string::String {
            use runnel::stream::state::StateError as E;
            match e {
                E::UnknownStore(m) | E::BadArgument(m) | E::Limit(m) | E::Store(m) => m,
            }
        }

        impl ::runnel_sdk::__private::StateHost for StateHost {
            fn open(&self, name: &str) -> ::core::result::Result<u32, ::std::string::String> {
                ::runnel_sdk::__private::cached_open(name, || {
                    runnel::stream::state::open(name).map_err(state_error)
                })
            }
            fn get(&self, store: u32, record: u32, key: &[u8])
                -> ::core::result::Result<::core::option::Option<::std::vec::Vec<u8>>, ::std::string::String> {
                runnel::stream::state::get(store, record, key).map_err(state_error)
            }
            fn get_many(&self, store: u32, record: u32, keys: ::std::vec::Vec<u8>, lengths: ::std::vec::Vec<u32>)
                -> ::core::result::Result<(::std::vec::Vec<u8>, ::std::vec::Vec<u32>), ::std::string::String> {
                let keys = runnel::stream::state::Packed { data: keys, lengths };
                let got = runnel::stream::state::get_many(store, record, &keys).map_err(state_error)?;
                ::core::result::Result::Ok((got.data, got.lengths))
            }
            fn put(&self, store: u32, record: u32, key: &[u8], value: &[u8])
                -> ::core::result::Result<(), ::std::string::String> {
                runnel::stream::state::put(store, record, key, value).map_err(state_error)
            }
            fn delete(&self, store: u32, record: u32, key: &[u8])
                -> ::core::result::Result<(), ::std::string::String> {
                runnel::stream::state::delete(store, record, key).map_err(state_error)
            }
            fn scan(&self, store: u32, record: u32, start: &[u8], end: ::core::option::Option<&[u8]>, limit: u32)
                -> ::core::result::Result<::runnel_sdk::__private::RawPage, ::std::string::String> {
                let page = runnel::stream::state::scan(store, record, start, end, limit).map_err(state_error)?;
                ::runnel_sdk::__private::raw_page(
                    (page.keys.data, page.keys.lengths),
                    (page.values.data, page.values.lengths),
                    page.next,
                )
            }
            fn discard(&self, record: u32) {
                runnel::stream::state::discard(record)
            }
        }
    }
}

fn map_call(per_record: TokenStream2) -> TokenStream2 {
    outputs_call(
        quote! { map },
        quote! { map_batch },
        quote! { |r| #per_record },
    )
}

/// An export that runs `runner` over the batch and returns `outputs`;
/// `each` is the runner's arguments after the batch (the per-record closure).
fn outputs_call(export: TokenStream2, runner: TokenStream2, each: TokenStream2) -> TokenStream2 {
    quote! {
        fn #export(batch: runnel::stream::types::Batch) -> runnel::stream::types::Outputs {
            let out = ::runnel_sdk::__private::#runner(
                batch.data, &batch.index,
                #each,
                |index, message| runnel::stream::types::Failure {
                    index,
                    error: runnel::stream::types::RecordError { message },
                },
            );
            runnel::stream::types::Outputs {
                counts: out.counts,
                records: runnel::stream::types::Batch { data: out.data, index: out.index },
                failures: out.failures,
            }
        }
    }
}

fn impl_glue(kind: Kind, i: &ItemImpl) -> TokenStream2 {
    let self_ty = &i.self_ty;
    let trait_path = match kind {
        Kind::Filter => quote! { ::runnel_sdk::Filter },
        Kind::Map => quote! { ::runnel_sdk::Map },
        Kind::Scorer => quote! { ::runnel_sdk::Scorer },
        Kind::Processor => quote! { ::runnel_sdk::Processor },
    };
    let state = quote! {
        type Impl = super::__RunnelImpl;
        ::std::thread_local! {
            static STATE: ::std::cell::RefCell<::core::option::Option<Impl>> =
                const { ::std::cell::RefCell::new(::core::option::Option::None) };
        }
    };
    let init = match kind {
        Kind::Scorer => quote! {
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                model: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<(), ::std::string::String> {
                let config = ::runnel_sdk::__private::config(config);
                ::runnel_sdk::__private::init_state(&STATE, <Impl as #trait_path>::new(&config, &model))
            }
        },
        _ => quote! {
            fn init(config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>)
                -> ::core::result::Result<(), ::std::string::String> {
                let config = ::runnel_sdk::__private::config(config);
                ::runnel_sdk::__private::init_state(&STATE, <Impl as #trait_path>::new(&config))
            }
        },
    };
    let call = match kind {
        Kind::Filter => wrap_state(filter_call(quote! { <Impl as #trait_path>::filter(s, r) })),
        Kind::Map => {
            let body = map_call(quote! { <Impl as #trait_path>::map(s, r) });
            wrap_state(body)
        }
        Kind::Processor => wrap_state(process_call(
            quote! { <Impl as #trait_path>::process(s, r, ctx) },
        )),
        Kind::Scorer => {
            let body = outputs_call(
                quote! { score },
                quote! { score_batch },
                quote! { |r| <Impl as #trait_path>::score(s, r) },
            );
            wrap_state(body)
        }
    };
    let module = module(kind, state, init, call);
    quote! {
        #[doc(hidden)]
        type __RunnelImpl = #self_ty;
        #module
    }
}

/// Rewrites `fn x(batch) -> T { body }` so that the body runs with `s`, the
/// instance's state, in scope.
fn wrap_state(f: TokenStream2) -> TokenStream2 {
    let mut f: syn::ImplItemFn = match syn::parse2(f) {
        Ok(f) => f,
        Err(e) => return e.to_compile_error(),
    };
    let body = &f.block;
    f.block = syn::parse_quote! {{
        ::runnel_sdk::__private::with_state(&STATE, |s| #body)
    }};
    f.into_token_stream()
}

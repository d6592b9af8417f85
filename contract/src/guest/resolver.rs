//! The `resolver` world: bindings and the adapter from [`Resolver`].

// wit-bindgen's generated glue passes a flattened record as many arguments.
#![allow(clippy::too_many_arguments)]

use crate::Resolver;
use std::marker::PhantomData;

wit_bindgen::generate!({
    path: "../wit",
    world: "resolver",
    pub_export_macro: true,
    export_macro_name: "__export_resolver_world",
    default_bindings_module: "low_contract::guest::resolver",
    runtime_path: "low_contract::guest::wit_bindgen::rt",
});

super::boundary!();

/// Implements the world's exports for a [`Resolver`]; see [`crate::export_resolver!`].
pub struct Export<R>(PhantomData<R>);

impl<R: Resolver> Guest for Export<R> {
    fn meta() -> wit::Meta {
        report_panics();
        meta_to_wit(&R::meta())
    }

    fn resolve(command: wit::Message, seen: Vec<wit::Message>) -> wit::Resolution {
        report_panics();
        let command = from_shell(message_from_wit(command));
        let seen: Vec<plain::Message> = seen.into_iter().map(|m| from_shell(message_from_wit(m))).collect();
        resolution_to_wit(&R::resolve(&command, &seen, &WitEnv))
    }
}

//! The `resolver` world: bindings and the adapter from [`Resolver`].

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
        R::meta().into()
    }

    fn resolve(command: wit::Message, seen: Vec<wit::Message>) -> wit::Resolution {
        report_panics();
        let seen: Vec<plain::Message> = seen.into_iter().map(Into::into).collect();
        match R::resolve(&command.into(), &seen, &WitEnv) {
            plain::Resolution::Pending => wit::Resolution::Pending,
            plain::Resolution::RespondDocument { collection, key } => {
                wit::Resolution::RespondDocument(wit::DocRef { collection, key })
            }
            plain::Resolution::Respond(value) => wit::Resolution::Respond(text(&value)),
            plain::Resolution::Fail(reason) => wit::Resolution::Fail(reason),
        }
    }
}

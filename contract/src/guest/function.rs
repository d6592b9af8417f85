//! The `function` world: bindings and the adapter from [`Function`].

// wit-bindgen's generated glue passes a flattened record as many arguments.
#![allow(clippy::too_many_arguments)]

use crate::Function;
use std::marker::PhantomData;

wit_bindgen::generate!({
    path: "../wit",
    world: "function",
    pub_export_macro: true,
    export_macro_name: "__export_function_world",
    default_bindings_module: "low_contract::guest::function",
    runtime_path: "low_contract::guest::wit_bindgen::rt",
});

super::boundary!();

use self::low::functions::store as wit_store;

/// Implements the world's exports for a [`Function`]; see [`crate::export_function!`].
pub struct Export<F>(PhantomData<F>);

/// The shell's `store` import. A document that is not JSON is the store's
/// error to the function, like any other failed read.
struct WitStore;

impl crate::StoreRead for WitStore {
    fn get(&self, collection: &str, key: &str) -> Result<Option<plain::Document>, String> {
        wit_store::get(collection, key)?.map(document_from_wit).transpose()
    }

    fn find(
        &self,
        collection: &str,
        field: &str,
        value: &serde_json::Value,
    ) -> Result<Vec<plain::Document>, String> {
        wit_store::find(collection, field, &value.to_string())?.into_iter().map(document_from_wit).collect()
    }
}

impl<F: Function> Guest for Export<F> {
    fn meta() -> wit::Meta {
        report_panics();
        meta_to_wit(&F::meta())
    }

    fn lookup(input: wit::Message) -> Vec<wit::Lookup> {
        report_panics();
        let input = from_shell(message_from_wit(input));
        F::lookup(&input, &WitStore, &WitEnv).iter().map(lookup_to_wit).collect()
    }

    fn operate(input: wit::Message, data: Vec<wit::Found>) -> wit::Outcome {
        report_panics();
        let (input, data) = (from_shell(message_from_wit(input)), from_shell(data_from_wit(data)));
        outcome_to_wit(&F::operate(&input, &data, &WitEnv))
    }

    fn write(output: wit::Message) -> wit::WritePlan {
        report_panics();
        let output = from_shell(message_from_wit(output));
        plan_to_wit(&F::write(&output, &WitEnv))
    }

    fn operate_and_write(input: wit::Message, data: Vec<wit::Found>) -> wit::Decision {
        report_panics();
        let (input, data) = (from_shell(message_from_wit(input)), from_shell(data_from_wit(data)));
        let mut outcome = F::operate(&input, &data, &WitEnv);
        let mut plans = vec![];
        if let crate::Outcome::Emit(messages) = &mut outcome {
            plans = messages.iter_mut().map(|m| written::<F>(m, &input)).collect();
        }
        decision_to_wit(&outcome, &plans)
    }
}

/// `write`'s plan for `message`, given as the shell will record it; the
/// message is left as `operate` returned it, with an id if it had none.
fn written<F: Function>(message: &mut crate::Message, input: &crate::Message) -> crate::WritePlan {
    // Stamped in place and put back after, rather than a copy of the payload.
    let returned = (message.correlation_id.take(), message.causation_id.take(), message.principal.take());
    message.stamp(input, || crate::Env::new_id(&WitEnv));
    let plan = F::write(message, &WitEnv);
    (message.correlation_id, message.causation_id, message.principal) = returned;
    plan
}

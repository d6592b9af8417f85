//! The `function` world: bindings and the adapter from [`Function`].

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

/// The shell's `store` import.
struct WitStore;

impl crate::StoreRead for WitStore {
    fn get(&self, collection: &str, key: &str) -> Result<Option<plain::Document>, String> {
        wit_store::get(collection, key).map(|d| d.map(Into::into))
    }

    fn find(
        &self,
        collection: &str,
        field: &str,
        value: &serde_json::Value,
    ) -> Result<Vec<plain::Document>, String> {
        wit_store::find(collection, field, &text(value)).map(|ds| ds.into_iter().map(Into::into).collect())
    }
}

impl<F: Function> Guest for Export<F> {
    fn meta() -> wit::Meta {
        report_panics();
        F::meta().into()
    }

    fn lookup(input: wit::Message) -> Vec<wit::Lookup> {
        report_panics();
        F::lookup(&input.into(), &WitStore, &WitEnv)
            .into_iter()
            .map(|l| wit::Lookup {
                name: l.name,
                query: match l.query {
                    plain::Query::Key { collection, key } => {
                        wit::Query::ByKey(wit::KeyQuery { collection, key })
                    }
                    plain::Query::Field { collection, field, value } => {
                        wit::Query::ByField(wit::FieldQuery { collection, field, value: text(&value) })
                    }
                },
            })
            .collect()
    }

    fn operate(input: wit::Message, data: Vec<wit::Found>) -> wit::Outcome {
        report_panics();
        let data = plain::Data(
            data.into_iter()
                .map(|f| plain::Found {
                    name: f.name,
                    documents: f.documents.into_iter().map(Into::into).collect(),
                })
                .collect(),
        );
        match F::operate(&input.into(), &data, &WitEnv) {
            plain::Outcome::Emit(messages) => {
                wit::Outcome::Emit(messages.into_iter().map(Into::into).collect())
            }
            plain::Outcome::Reject(reason) => wit::Outcome::Reject(reason),
            plain::Outcome::Ignore => wit::Outcome::Ignore,
        }
    }

    fn write(output: wit::Message) -> wit::WritePlan {
        report_panics();
        let plan = F::write(&output.into(), &WitEnv);
        wit::WritePlan {
            ops: plan
                .ops
                .into_iter()
                .map(|op| match op {
                    plain::WriteOp::Insert { collection, key, body } => {
                        wit::WriteOp::Insert(wit::DocWrite { collection, key, body: text(&body) })
                    }
                    plain::WriteOp::Put { collection, key, body } => {
                        wit::WriteOp::Put(wit::DocWrite { collection, key, body: text(&body) })
                    }
                    plain::WriteOp::UpdateIfVersion { collection, key, body, expected_version } => {
                        wit::WriteOp::UpdateIfVersion(wit::VersionedWrite {
                            collection,
                            key,
                            body: text(&body),
                            expected_version,
                        })
                    }
                    plain::WriteOp::Delete { collection, key } => {
                        wit::WriteOp::Delete(wit::DocRef { collection, key })
                    }
                    plain::WriteOp::DeleteIfVersion { collection, key, expected_version } => {
                        wit::WriteOp::DeleteIfVersion(wit::VersionedRef { collection, key, expected_version })
                    }
                })
                .collect(),
            notify: plan.notify.into_iter().map(Into::into).collect(),
        }
    }
}

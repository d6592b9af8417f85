//! Between the generated WIT types and the contract's plain types. Anything a
//! guest returns is checked here: JSON must parse, messages must have a kind.

use super::bindings::wit;
use low_contract::{
    CommandSpec, Data, Document, FieldKind, FieldSpec, FunctionKind, Lookup, Message, Meta, ModelSpec,
    Outcome, Query, Resolution, Value, WriteOp, WritePlan,
};

fn json(what: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON ({e})"))
}

pub fn message_to_wit(m: &Message) -> wit::Message {
    wit::Message {
        id: m.id.clone(),
        kind: m.kind.clone(),
        payload: m.payload.to_string(),
        correlation_id: m.correlation_id.clone(),
        causation_id: m.causation_id.clone(),
    }
}

pub fn message_from_wit(m: wit::Message) -> Result<Message, String> {
    if m.kind.trim().is_empty() {
        return Err(format!("message `{}` has no kind", m.id));
    }
    Ok(Message {
        payload: json(&format!("the payload of `{}`", m.kind), &m.payload)?,
        id: m.id,
        kind: m.kind,
        correlation_id: m.correlation_id,
        causation_id: m.causation_id,
    })
}

pub fn document_to_wit(d: Document) -> wit::Document {
    wit::Document { collection: d.collection, key: d.key, version: d.version, body: d.body.to_string() }
}

pub fn data_to_wit(data: &Data) -> Vec<wit::Found> {
    data.0
        .iter()
        .map(|f| wit::Found {
            name: f.name.clone(),
            documents: f.documents.iter().cloned().map(document_to_wit).collect(),
        })
        .collect()
}

fn field_from_wit(f: wit::FieldSpec) -> FieldSpec {
    FieldSpec {
        name: f.name,
        kind: match f.kind {
            wit::FieldKind::Id => FieldKind::Id,
            wit::FieldKind::Text => FieldKind::Text,
            wit::FieldKind::Integer => FieldKind::Integer,
            wit::FieldKind::Number => FieldKind::Number,
            wit::FieldKind::Boolean => FieldKind::Boolean,
        },
        required: f.required,
        description: f.description,
    }
}

pub fn meta_from_wit(m: wit::Meta) -> Meta {
    Meta {
        name: m.name,
        kind: match m.kind {
            wit::FunctionKind::Handler => FunctionKind::Handler,
            wit::FunctionKind::Projector => FunctionKind::Projector,
            wit::FunctionKind::Resolver => FunctionKind::Resolver,
        },
        inputs: m.inputs,
        output: m.output,
        commands: m
            .commands
            .into_iter()
            .map(|c| CommandSpec {
                name: c.name,
                fields: c.fields.into_iter().map(field_from_wit).collect(),
                returns: c.returns,
                description: c.description,
            })
            .collect(),
        models: m
            .models
            .into_iter()
            .map(|s| ModelSpec {
                name: s.name,
                collection: s.collection,
                key: s.key,
                fields: s.fields.into_iter().map(field_from_wit).collect(),
                public: s.public,
                description: s.description,
            })
            .collect(),
    }
}

pub fn lookup_from_wit(l: wit::Lookup) -> Result<Lookup, String> {
    let query = match l.query {
        wit::Query::ByKey(q) => Query::Key { collection: q.collection, key: q.key },
        wit::Query::ByField(q) => Query::Field {
            value: json(&format!("the value of lookup `{}`", l.name), &q.value)?,
            collection: q.collection,
            field: q.field,
        },
    };
    Ok(Lookup { name: l.name, query })
}

pub fn outcome_from_wit(o: wit::Outcome) -> Result<Outcome, String> {
    Ok(match o {
        wit::Outcome::Emit(messages) => {
            Outcome::Emit(messages.into_iter().map(message_from_wit).collect::<Result<_, _>>()?)
        }
        wit::Outcome::Reject(reason) => Outcome::Reject(reason),
        wit::Outcome::Ignore => Outcome::Ignore,
    })
}

pub fn plan_from_wit(p: wit::WritePlan) -> Result<WritePlan, String> {
    let body =
        |collection: &str, key: &str, text: &str| json(&format!("the document `{collection}/{key}`"), text);
    let ops = p
        .ops
        .into_iter()
        .map(|op| {
            Ok(match op {
                wit::WriteOp::Insert(w) => WriteOp::Insert {
                    body: body(&w.collection, &w.key, &w.body)?,
                    collection: w.collection,
                    key: w.key,
                },
                wit::WriteOp::Put(w) => WriteOp::Put {
                    body: body(&w.collection, &w.key, &w.body)?,
                    collection: w.collection,
                    key: w.key,
                },
                wit::WriteOp::UpdateIfVersion(w) => WriteOp::UpdateIfVersion {
                    body: body(&w.collection, &w.key, &w.body)?,
                    collection: w.collection,
                    key: w.key,
                    expected_version: w.expected_version,
                },
                wit::WriteOp::Delete(r) => WriteOp::Delete { collection: r.collection, key: r.key },
                wit::WriteOp::DeleteIfVersion(r) => WriteOp::DeleteIfVersion {
                    collection: r.collection,
                    key: r.key,
                    expected_version: r.expected_version,
                },
            })
        })
        .collect::<Result<_, String>>()?;
    let notify = p.notify.into_iter().map(message_from_wit).collect::<Result<_, _>>()?;
    Ok(WritePlan { ops, notify })
}

pub fn resolution_from_wit(r: wit::Resolution) -> Result<Resolution, String> {
    Ok(match r {
        wit::Resolution::Pending => Resolution::Pending,
        wit::Resolution::RespondDocument(d) => {
            Resolution::RespondDocument { collection: d.collection, key: d.key }
        }
        wit::Resolution::Respond(value) => Resolution::Respond(json("the response", &value)?),
        wit::Resolution::Fail(reason) => Resolution::Fail(reason),
    })
}

#[cfg(test)]
mod tests {
    //! Whatever a guest returns, decoding it never panics: valid values come
    //! through unchanged, invalid JSON is an error naming the part.
    use super::*;
    use proptest::prelude::*;

    /// JSON text, or text that is probably not JSON.
    fn json_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{}".to_owned()),
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            "[a-z]{0,8}".prop_map(|s| serde_json::json!({ "k": s }).to_string()),
            ".{0,16}",
        ]
    }

    fn message() -> impl Strategy<Value = wit::Message> {
        (".{0,8}", ".{0,8}", json_text(), proptest::option::of(".{0,8}")).prop_map(
            |(id, kind, payload, correlation_id)| wit::Message {
                id,
                kind,
                payload,
                correlation_id,
                causation_id: None,
            },
        )
    }

    fn doc_write() -> impl Strategy<Value = wit::DocWrite> {
        (".{0,8}", ".{0,8}", json_text()).prop_map(|(collection, key, body)| wit::DocWrite {
            collection,
            key,
            body,
        })
    }

    fn write_op() -> impl Strategy<Value = wit::WriteOp> {
        prop_oneof![
            doc_write().prop_map(wit::WriteOp::Insert),
            doc_write().prop_map(wit::WriteOp::Put),
            (doc_write(), any::<u64>()).prop_map(|(w, expected_version)| {
                wit::WriteOp::UpdateIfVersion(wit::VersionedWrite {
                    collection: w.collection,
                    key: w.key,
                    body: w.body,
                    expected_version,
                })
            }),
            (".{0,8}", ".{0,8}")
                .prop_map(|(collection, key)| wit::WriteOp::Delete(wit::DocRef { collection, key })),
            (".{0,8}", ".{0,8}", any::<u64>()).prop_map(|(collection, key, expected_version)| {
                wit::WriteOp::DeleteIfVersion(wit::VersionedRef { collection, key, expected_version })
            }),
        ]
    }

    fn is_json(text: &str) -> bool {
        serde_json::from_str::<Value>(text).is_ok()
    }

    proptest! {
        #[test]
        fn outcomes_decode_or_say_why(messages in proptest::collection::vec(message(), 0..4), reason in ".{0,16}") {
            let valid = messages.iter().all(|m| is_json(&m.payload) && !m.kind.trim().is_empty());
            match outcome_from_wit(wit::Outcome::Emit(messages.clone())) {
                Ok(Outcome::Emit(decoded)) => {
                    prop_assert!(valid);
                    for (d, m) in decoded.iter().zip(&messages) {
                        prop_assert_eq!(&d.kind, &m.kind);
                        prop_assert_eq!(&d.payload, &serde_json::from_str::<Value>(&m.payload).expect("json"));
                    }
                }
                Ok(other) => prop_assert!(false, "emit decoded as {:?}", other),
                Err(e) => {
                    prop_assert!(!valid);
                    prop_assert!(e.contains("not valid JSON") || e.contains("has no kind"), "{}", e);
                }
            }
            prop_assert_eq!(outcome_from_wit(wit::Outcome::Reject(reason.clone())), Ok(Outcome::Reject(reason)));
        }

        #[test]
        fn write_plans_decode_or_say_why(ops in proptest::collection::vec(write_op(), 0..5), notify in proptest::collection::vec(message(), 0..3)) {
            let bodies_valid = ops.iter().all(|op| match op {
                wit::WriteOp::Insert(w) | wit::WriteOp::Put(w) => is_json(&w.body),
                wit::WriteOp::UpdateIfVersion(w) => is_json(&w.body),
                wit::WriteOp::Delete(_) | wit::WriteOp::DeleteIfVersion(_) => true,
            });
            let notify_valid = notify.iter().all(|m| is_json(&m.payload) && !m.kind.trim().is_empty());
            match plan_from_wit(wit::WritePlan { ops: ops.clone(), notify }) {
                Ok(plan) => {
                    prop_assert!(bodies_valid && notify_valid);
                    prop_assert_eq!(plan.ops.len(), ops.len());
                }
                Err(e) => prop_assert!(!(bodies_valid && notify_valid), "refused a valid plan: {}", e),
            }
        }

        #[test]
        fn lookups_and_resolutions_decode_or_say_why(value in json_text(), collection in ".{0,8}") {
            let lookup = wit::Lookup {
                name: "l".into(),
                query: wit::Query::ByField(wit::FieldQuery { collection, field: "f".into(), value: value.clone() }),
            };
            prop_assert_eq!(lookup_from_wit(lookup).is_ok(), is_json(&value));
            prop_assert_eq!(resolution_from_wit(wit::Resolution::Respond(value.clone())).is_ok(), is_json(&value));
        }
    }
}

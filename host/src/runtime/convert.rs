//! Between the generated WIT types and the contract's plain types: the one
//! mapping in `low-contract` ([`low_contract::wit_conversions!`]), which the
//! guest SDK expands too. Anything a guest returns is checked on the way:
//! JSON must parse, messages must have a kind, or the error names the part.

low_contract::wit_conversions!(pub(super) super::bindings::wit);

#[cfg(test)]
mod tests {
    //! Whatever a guest returns, decoding it never panics: valid values come
    //! through unchanged, invalid JSON is an error naming the part.
    use super::super::bindings::wit;
    use super::*;
    use low_contract::{Outcome, Value};
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
                principal: None,
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

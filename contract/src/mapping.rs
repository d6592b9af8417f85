//! The one mapping between the types generated from `wit/functions.wit` and
//! this crate's plain types, for bindings authors: the guest SDK
//! ([`export_function!`](crate::export_function) and
//! [`export_resolver!`](crate::export_resolver)) and the shell's runtime both
//! expand [`wit_conversions!`](crate::wit_conversions) over their own bindings.

use serde_json::Value;

/// Parses JSON text from the other side of the boundary; `what` names the
/// part for the error (only formatted when the text is not JSON).
#[doc(hidden)]
pub fn parse_json(text: &str, what: impl FnOnce() -> String) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{} is not valid JSON ({e})", what()))
}

/// JSON text of `value` for the other side of the boundary.
/// `serde_json::to_string` writes bytes directly; `Value`'s `Display` goes
/// through `fmt::Write` and costs about twice as much per message.
#[doc(hidden)]
pub fn json_text(value: &Value) -> String {
    // Serialising a `Value` cannot fail: its map keys are strings.
    serde_json::to_string(value).unwrap_or_default()
}

/// Expands, in the calling module, the conversions between the types of a
/// generated WIT `types` module and this crate's plain types — for writers of
/// bindings, not of functions.
///
/// `wit-bindgen` (guests) and `wasmtime::component::bindgen!` (the shell)
/// generate structurally identical types from `low:functions/types` (same
/// names, fields and cases), so one macro serves both:
///
/// ```ignore
/// // in the shell: host/src/runtime/convert.rs
/// low_contract::wit_conversions!(pub(crate) super::bindings::wit);
/// ```
///
/// It defines, with the given visibility:
///
/// - into WIT, borrowing (JSON is serialised either way): `meta_to_wit`,
///   `message_to_wit` (and `principal_to_wit`), `document_to_wit`, `found_to_wit`, `data_to_wit`,
///   `lookup_to_wit`, `outcome_to_wit`, `write_op_to_wit`, `plan_to_wit`,
///   `resolution_to_wit` (and the parts of `Meta`);
/// - out of WIT, taking ownership and checking what arrives — JSON must parse,
///   a message must have a kind — with an error naming the part
///   (``the payload of `CustomerInvited` is not valid JSON (…)``,
///   ``message `m-1` has no kind``): `message_from_wit`, `document_from_wit`,
///   `found_from_wit`, `data_from_wit`, `lookup_from_wit`, `outcome_from_wit`,
///   `write_op_from_wit`, `plan_from_wit`, `resolution_from_wit` return
///   `Result<_, String>`; `meta_from_wit` cannot fail.
///
/// Every record is destructured and rebuilt without `..`, so a field added to
/// the WIT (or to the plain type but not the other) is a compile error here,
/// the one place that maps it. Functions a caller does not use are allowed to
/// be dead: each side uses a different half.
#[macro_export]
macro_rules! wit_conversions {
    ($vis:vis $types:path) => {
        use $types as __low_wit;

        // ---- into WIT --------------------------------------------------------

        #[allow(dead_code)]
        $vis fn field_spec_to_wit(field: &$crate::FieldSpec) -> __low_wit::FieldSpec {
            let $crate::FieldSpec { name, kind, required, description } = field;
            __low_wit::FieldSpec {
                name: name.clone(),
                kind: match kind {
                    $crate::FieldKind::Id => __low_wit::FieldKind::Id,
                    $crate::FieldKind::Text => __low_wit::FieldKind::Text,
                    $crate::FieldKind::Integer => __low_wit::FieldKind::Integer,
                    $crate::FieldKind::Number => __low_wit::FieldKind::Number,
                    $crate::FieldKind::Boolean => __low_wit::FieldKind::Boolean,
                },
                required: *required,
                description: description.clone(),
            }
        }

        #[allow(dead_code)]
        $vis fn command_spec_to_wit(command: &$crate::CommandSpec) -> __low_wit::CommandSpec {
            let $crate::CommandSpec { name, fields, returns, description } = command;
            __low_wit::CommandSpec {
                name: name.clone(),
                fields: fields.iter().map(field_spec_to_wit).collect(),
                returns: returns.clone(),
                description: description.clone(),
            }
        }

        #[allow(dead_code)]
        $vis fn model_spec_to_wit(model: &$crate::ModelSpec) -> __low_wit::ModelSpec {
            let $crate::ModelSpec { name, collection, key, fields, public, authenticated, description } = model;
            __low_wit::ModelSpec {
                name: name.clone(),
                collection: collection.clone(),
                key: key.clone(),
                fields: fields.iter().map(field_spec_to_wit).collect(),
                public: *public,
                authenticated: *authenticated,
                description: description.clone(),
            }
        }

        #[allow(dead_code)]
        $vis fn meta_to_wit(meta: &$crate::Meta) -> __low_wit::Meta {
            let $crate::Meta { name, kind, inputs, output, commands, models } = meta;
            __low_wit::Meta {
                name: name.clone(),
                kind: match kind {
                    $crate::FunctionKind::Handler => __low_wit::FunctionKind::Handler,
                    $crate::FunctionKind::Projector => __low_wit::FunctionKind::Projector,
                    $crate::FunctionKind::Resolver => __low_wit::FunctionKind::Resolver,
                },
                inputs: inputs.clone(),
                output: output.clone(),
                commands: commands.iter().map(command_spec_to_wit).collect(),
                models: models.iter().map(model_spec_to_wit).collect(),
            }
        }

        #[allow(dead_code)]
        $vis fn message_to_wit(message: &$crate::Message) -> __low_wit::Message {
            let $crate::Message { id, kind, payload, correlation_id, causation_id, principal } = message;
            __low_wit::Message {
                id: id.clone(),
                kind: kind.clone(),
                payload: $crate::__mapping::json_text(payload),
                correlation_id: correlation_id.clone(),
                causation_id: causation_id.clone(),
                principal: principal.as_ref().map(principal_to_wit),
            }
        }

        #[allow(dead_code)]
        $vis fn principal_to_wit(principal: &$crate::Principal) -> __low_wit::Principal {
            let $crate::Principal { subject, claims } = principal;
            __low_wit::Principal { subject: subject.clone(), claims: claims.to_string() }
        }

        #[allow(dead_code)]
        $vis fn document_to_wit(document: &$crate::Document) -> __low_wit::Document {
            let $crate::Document { collection, key, version, body } = document;
            __low_wit::Document {
                collection: collection.clone(),
                key: key.clone(),
                version: *version,
                body: $crate::__mapping::json_text(body),
            }
        }

        #[allow(dead_code)]
        $vis fn found_to_wit(found: &$crate::Found) -> __low_wit::Found {
            let $crate::Found { name, documents } = found;
            __low_wit::Found {
                name: name.clone(),
                documents: documents.iter().map(document_to_wit).collect(),
            }
        }

        #[allow(dead_code)]
        $vis fn data_to_wit(data: &$crate::Data) -> ::std::vec::Vec<__low_wit::Found> {
            let $crate::Data(found) = data;
            found.iter().map(found_to_wit).collect()
        }

        #[allow(dead_code)]
        $vis fn lookup_to_wit(lookup: &$crate::Lookup) -> __low_wit::Lookup {
            let $crate::Lookup { name, query } = lookup;
            __low_wit::Lookup {
                name: name.clone(),
                query: match query {
                    $crate::Query::Key { collection, key } => __low_wit::Query::ByKey(__low_wit::KeyQuery {
                        collection: collection.clone(),
                        key: key.clone(),
                    }),
                    $crate::Query::Field { collection, field, value } => {
                        __low_wit::Query::ByField(__low_wit::FieldQuery {
                            collection: collection.clone(),
                            field: field.clone(),
                            value: $crate::__mapping::json_text(value),
                        })
                    }
                },
            }
        }

        #[allow(dead_code)]
        $vis fn outcome_to_wit(outcome: &$crate::Outcome) -> __low_wit::Outcome {
            match outcome {
                $crate::Outcome::Emit(messages) => {
                    __low_wit::Outcome::Emit(messages.iter().map(message_to_wit).collect())
                }
                $crate::Outcome::Reject(reason) => __low_wit::Outcome::Reject(reason.clone()),
                $crate::Outcome::Ignore => __low_wit::Outcome::Ignore,
            }
        }

        #[allow(dead_code)]
        $vis fn write_op_to_wit(op: &$crate::WriteOp) -> __low_wit::WriteOp {
            match op {
                $crate::WriteOp::Insert { collection, key, body } => {
                    __low_wit::WriteOp::Insert(__low_wit::DocWrite {
                        collection: collection.clone(),
                        key: key.clone(),
                        body: $crate::__mapping::json_text(body),
                    })
                }
                $crate::WriteOp::Put { collection, key, body } => {
                    __low_wit::WriteOp::Put(__low_wit::DocWrite {
                        collection: collection.clone(),
                        key: key.clone(),
                        body: $crate::__mapping::json_text(body),
                    })
                }
                $crate::WriteOp::UpdateIfVersion { collection, key, body, expected_version } => {
                    __low_wit::WriteOp::UpdateIfVersion(__low_wit::VersionedWrite {
                        collection: collection.clone(),
                        key: key.clone(),
                        body: $crate::__mapping::json_text(body),
                        expected_version: *expected_version,
                    })
                }
                $crate::WriteOp::Delete { collection, key } => {
                    __low_wit::WriteOp::Delete(__low_wit::DocRef {
                        collection: collection.clone(),
                        key: key.clone(),
                    })
                }
                $crate::WriteOp::DeleteIfVersion { collection, key, expected_version } => {
                    __low_wit::WriteOp::DeleteIfVersion(__low_wit::VersionedRef {
                        collection: collection.clone(),
                        key: key.clone(),
                        expected_version: *expected_version,
                    })
                }
            }
        }

        #[allow(dead_code)]
        $vis fn plan_to_wit(plan: &$crate::WritePlan) -> __low_wit::WritePlan {
            let $crate::WritePlan { ops, notify } = plan;
            __low_wit::WritePlan {
                ops: ops.iter().map(write_op_to_wit).collect(),
                notify: notify.iter().map(message_to_wit).collect(),
            }
        }

        /// `outcome` with `plans`, one for each message it emits, in order.
        #[allow(dead_code)]
        $vis fn decision_to_wit(outcome: &$crate::Outcome, plans: &[$crate::WritePlan]) -> __low_wit::Decision {
            match outcome {
                $crate::Outcome::Emit(messages) => __low_wit::Decision::Emit(
                    messages
                        .iter()
                        .zip(plans)
                        .map(|(message, plan)| __low_wit::Emitted {
                            message: message_to_wit(message),
                            plan: plan_to_wit(plan),
                        })
                        .collect(),
                ),
                $crate::Outcome::Reject(reason) => __low_wit::Decision::Reject(reason.clone()),
                $crate::Outcome::Ignore => __low_wit::Decision::Ignore,
            }
        }

        #[allow(dead_code)]
        $vis fn resolution_to_wit(resolution: &$crate::Resolution) -> __low_wit::Resolution {
            match resolution {
                $crate::Resolution::Pending => __low_wit::Resolution::Pending,
                $crate::Resolution::RespondDocument { collection, key } => {
                    __low_wit::Resolution::RespondDocument(__low_wit::DocRef {
                        collection: collection.clone(),
                        key: key.clone(),
                    })
                }
                $crate::Resolution::Respond(value) => __low_wit::Resolution::Respond($crate::__mapping::json_text(value)),
                $crate::Resolution::Fail(reason) => __low_wit::Resolution::Fail(reason.clone()),
            }
        }

        // ---- out of WIT, checked -------------------------------------------

        #[allow(dead_code)]
        $vis fn field_spec_from_wit(field: __low_wit::FieldSpec) -> $crate::FieldSpec {
            let __low_wit::FieldSpec { name, kind, required, description } = field;
            $crate::FieldSpec {
                name,
                kind: match kind {
                    __low_wit::FieldKind::Id => $crate::FieldKind::Id,
                    __low_wit::FieldKind::Text => $crate::FieldKind::Text,
                    __low_wit::FieldKind::Integer => $crate::FieldKind::Integer,
                    __low_wit::FieldKind::Number => $crate::FieldKind::Number,
                    __low_wit::FieldKind::Boolean => $crate::FieldKind::Boolean,
                },
                required,
                description,
            }
        }

        #[allow(dead_code)]
        $vis fn command_spec_from_wit(command: __low_wit::CommandSpec) -> $crate::CommandSpec {
            let __low_wit::CommandSpec { name, fields, returns, description } = command;
            $crate::CommandSpec {
                name,
                fields: fields.into_iter().map(field_spec_from_wit).collect(),
                returns,
                description,
            }
        }

        #[allow(dead_code)]
        $vis fn model_spec_from_wit(model: __low_wit::ModelSpec) -> $crate::ModelSpec {
            let __low_wit::ModelSpec { name, collection, key, fields, public, authenticated, description } =
                model;
            $crate::ModelSpec {
                name,
                collection,
                key,
                fields: fields.into_iter().map(field_spec_from_wit).collect(),
                public,
                authenticated,
                description,
            }
        }

        #[allow(dead_code)]
        $vis fn meta_from_wit(meta: __low_wit::Meta) -> $crate::Meta {
            let __low_wit::Meta { name, kind, inputs, output, commands, models } = meta;
            $crate::Meta {
                name,
                kind: match kind {
                    __low_wit::FunctionKind::Handler => $crate::FunctionKind::Handler,
                    __low_wit::FunctionKind::Projector => $crate::FunctionKind::Projector,
                    __low_wit::FunctionKind::Resolver => $crate::FunctionKind::Resolver,
                },
                inputs,
                output,
                commands: commands.into_iter().map(command_spec_from_wit).collect(),
                models: models.into_iter().map(model_spec_from_wit).collect(),
            }
        }

        #[allow(dead_code)]
        $vis fn message_from_wit(
            message: __low_wit::Message,
        ) -> ::std::result::Result<$crate::Message, ::std::string::String> {
            let __low_wit::Message { id, kind, payload, correlation_id, causation_id, principal } = message;
            if kind.trim().is_empty() {
                return Err(format!("message `{id}` has no kind"));
            }
            Ok($crate::Message {
                payload: $crate::__mapping::parse_json(&payload, || format!("the payload of `{kind}`"))?,
                principal: principal.map(|p| principal_from_wit(p, &kind)).transpose()?,
                id,
                kind,
                correlation_id,
                causation_id,
            })
        }

        #[allow(dead_code)]
        $vis fn principal_from_wit(
            principal: __low_wit::Principal,
            kind: &str,
        ) -> ::std::result::Result<$crate::Principal, ::std::string::String> {
            let __low_wit::Principal { subject, claims } = principal;
            Ok($crate::Principal {
                claims: $crate::__mapping::parse_json(&claims, || format!("the principal's claims of `{kind}`"))?,
                subject,
            })
        }

        #[allow(dead_code)]
        $vis fn document_from_wit(
            document: __low_wit::Document,
        ) -> ::std::result::Result<$crate::Document, ::std::string::String> {
            let __low_wit::Document { collection, key, version, body } = document;
            Ok($crate::Document {
                body: $crate::__mapping::parse_json(&body, || format!("the document `{collection}/{key}`"))?,
                collection,
                key,
                version,
            })
        }

        #[allow(dead_code)]
        $vis fn found_from_wit(
            found: __low_wit::Found,
        ) -> ::std::result::Result<$crate::Found, ::std::string::String> {
            let __low_wit::Found { name, documents } = found;
            Ok($crate::Found {
                name,
                documents: documents
                    .into_iter()
                    .map(document_from_wit)
                    .collect::<::std::result::Result<_, _>>()?,
            })
        }

        #[allow(dead_code)]
        $vis fn data_from_wit(
            data: ::std::vec::Vec<__low_wit::Found>,
        ) -> ::std::result::Result<$crate::Data, ::std::string::String> {
            Ok($crate::Data(data.into_iter().map(found_from_wit).collect::<::std::result::Result<_, _>>()?))
        }

        #[allow(dead_code)]
        $vis fn lookup_from_wit(
            lookup: __low_wit::Lookup,
        ) -> ::std::result::Result<$crate::Lookup, ::std::string::String> {
            let __low_wit::Lookup { name, query } = lookup;
            let query = match query {
                __low_wit::Query::ByKey(__low_wit::KeyQuery { collection, key }) => {
                    $crate::Query::Key { collection, key }
                }
                __low_wit::Query::ByField(__low_wit::FieldQuery { collection, field, value }) => {
                    $crate::Query::Field {
                        value: $crate::__mapping::parse_json(&value, || {
                            format!("the value of lookup `{name}`")
                        })?,
                        collection,
                        field,
                    }
                }
            };
            Ok($crate::Lookup { name, query })
        }

        #[allow(dead_code)]
        $vis fn outcome_from_wit(
            outcome: __low_wit::Outcome,
        ) -> ::std::result::Result<$crate::Outcome, ::std::string::String> {
            Ok(match outcome {
                __low_wit::Outcome::Emit(messages) => $crate::Outcome::Emit(
                    messages.into_iter().map(message_from_wit).collect::<::std::result::Result<_, _>>()?,
                ),
                __low_wit::Outcome::Reject(reason) => $crate::Outcome::Reject(reason),
                __low_wit::Outcome::Ignore => $crate::Outcome::Ignore,
            })
        }

        #[allow(dead_code)]
        $vis fn write_op_from_wit(
            op: __low_wit::WriteOp,
        ) -> ::std::result::Result<$crate::WriteOp, ::std::string::String> {
            let body = |collection: &str, key: &str, text: &str| {
                $crate::__mapping::parse_json(text, || format!("the document `{collection}/{key}`"))
            };
            Ok(match op {
                __low_wit::WriteOp::Insert(__low_wit::DocWrite { collection, key, body: text }) => {
                    $crate::WriteOp::Insert { body: body(&collection, &key, &text)?, collection, key }
                }
                __low_wit::WriteOp::Put(__low_wit::DocWrite { collection, key, body: text }) => {
                    $crate::WriteOp::Put { body: body(&collection, &key, &text)?, collection, key }
                }
                __low_wit::WriteOp::UpdateIfVersion(__low_wit::VersionedWrite {
                    collection,
                    key,
                    body: text,
                    expected_version,
                }) => $crate::WriteOp::UpdateIfVersion {
                    body: body(&collection, &key, &text)?,
                    collection,
                    key,
                    expected_version,
                },
                __low_wit::WriteOp::Delete(__low_wit::DocRef { collection, key }) => {
                    $crate::WriteOp::Delete { collection, key }
                }
                __low_wit::WriteOp::DeleteIfVersion(__low_wit::VersionedRef {
                    collection,
                    key,
                    expected_version,
                }) => $crate::WriteOp::DeleteIfVersion { collection, key, expected_version },
            })
        }

        #[allow(dead_code)]
        $vis fn plan_from_wit(
            plan: __low_wit::WritePlan,
        ) -> ::std::result::Result<$crate::WritePlan, ::std::string::String> {
            let __low_wit::WritePlan { ops, notify } = plan;
            Ok($crate::WritePlan {
                ops: ops.into_iter().map(write_op_from_wit).collect::<::std::result::Result<_, _>>()?,
                notify: notify.into_iter().map(message_from_wit).collect::<::std::result::Result<_, _>>()?,
            })
        }

        /// The outcome, and one write plan for each message it emits.
        #[allow(dead_code)]
        $vis fn decision_from_wit(
            decision: __low_wit::Decision,
        ) -> ::std::result::Result<($crate::Outcome, ::std::vec::Vec<$crate::WritePlan>), ::std::string::String> {
            Ok(match decision {
                __low_wit::Decision::Emit(emitted) => {
                    let mut messages = ::std::vec::Vec::with_capacity(emitted.len());
                    let mut plans = ::std::vec::Vec::with_capacity(emitted.len());
                    for __low_wit::Emitted { message, plan } in emitted {
                        messages.push(message_from_wit(message)?);
                        plans.push(plan_from_wit(plan)?);
                    }
                    ($crate::Outcome::Emit(messages), plans)
                }
                __low_wit::Decision::Reject(reason) => ($crate::Outcome::Reject(reason), ::std::vec::Vec::new()),
                __low_wit::Decision::Ignore => ($crate::Outcome::Ignore, ::std::vec::Vec::new()),
            })
        }

        #[allow(dead_code)]
        $vis fn resolution_from_wit(
            resolution: __low_wit::Resolution,
        ) -> ::std::result::Result<$crate::Resolution, ::std::string::String> {
            Ok(match resolution {
                __low_wit::Resolution::Pending => $crate::Resolution::Pending,
                __low_wit::Resolution::RespondDocument(__low_wit::DocRef { collection, key }) => {
                    $crate::Resolution::RespondDocument { collection, key }
                }
                __low_wit::Resolution::Respond(value) => {
                    let value = $crate::__mapping::parse_json(&value, || "the response".into())?;
                    $crate::Resolution::Respond(value)
                }
                __low_wit::Resolution::Fail(reason) => $crate::Resolution::Fail(reason),
            })
        }
    };
}

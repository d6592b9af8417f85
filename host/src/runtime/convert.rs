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

//! The one mapping (`wit_conversions!`) over the types wit-bindgen generates
//! for the `function` world, natively: every value survives the round trip
//! through WIT, and what cannot be a plain value is refused, naming the part.

// wit-bindgen's generated glue passes a flattened record as many arguments.
#[allow(clippy::too_many_arguments)]
mod bindings {
    wit_bindgen::generate!({ path: "../wit", world: "function" });
}

mod convert {
    low_contract::wit_conversions!(pub super::bindings::low::functions::types);
}

use bindings::low::functions::types as wit;
use convert::*;
use low_contract::*;

fn meta() -> Meta {
    Meta::handler("greeter", [COMMANDS_TOPIC], "greetings")
        .command(CommandSpec {
            name: "Greet".into(),
            fields: vec![
                FieldSpec::new("id", FieldKind::Id, true).describe("who"),
                FieldSpec::new("name", FieldKind::Text, false),
                FieldSpec::new("age", FieldKind::Integer, false),
                FieldSpec::new("score", FieldKind::Number, false),
                FieldSpec::new("vip", FieldKind::Boolean, false),
            ],
            returns: "Greeting".into(),
            description: Some("Greet".into()),
        })
        .model(ModelSpec {
            name: "Greeting".into(),
            collection: "greetings".into(),
            key: "id".into(),
            fields: vec![FieldSpec::new("id", FieldKind::Id, true)],
            public: true,
            authenticated: true,
            description: None,
        })
}

fn message() -> Message {
    Message {
        causation_id: Some("c-0".into()),
        ..Message::new("m-1", "Greeted", json!({ "name": "Ada", "n": [1, 2.5, null] }))
            .correlated("c-1")
            .by(Principal::with_roles("ada", ["inviter"]))
    }
}

fn document() -> Document {
    Document { collection: "greetings".into(), key: "g-1".into(), version: 3, body: json!({ "a": true }) }
}

#[test]
fn every_value_survives_the_round_trip() {
    for kind in [FunctionKind::Handler, FunctionKind::Projector, FunctionKind::Resolver] {
        let meta = Meta { kind, ..meta() };
        assert_eq!(meta_from_wit(meta_to_wit(&meta)), meta);
    }
    assert_eq!(message_from_wit(message_to_wit(&message())), Ok(message()));
    assert_eq!(document_from_wit(document_to_wit(&document())), Ok(document()));
    let data = Data::default().with("a", vec![document(), document()]).with("none", vec![]);
    assert_eq!(data_from_wit(data_to_wit(&data)), Ok(data));
    for lookup in [Lookup::by_key("k", "c", "1"), Lookup::by_field("f", "c", "x", json!({ "y": [1] }))] {
        assert_eq!(lookup_from_wit(lookup_to_wit(&lookup)), Ok(lookup));
    }
    for outcome in [Outcome::Emit(vec![message(), message()]), Outcome::Reject("no".into()), Outcome::Ignore]
    {
        assert_eq!(outcome_from_wit(outcome_to_wit(&outcome)), Ok(outcome));
    }
    let (collection, key, body) = ("c".to_owned(), "k".to_owned(), json!({ "b": 1 }));
    let plan = WritePlan {
        ops: vec![
            WriteOp::Insert { collection: collection.clone(), key: key.clone(), body: body.clone() },
            WriteOp::Put { collection: collection.clone(), key: key.clone(), body: body.clone() },
            WriteOp::UpdateIfVersion {
                collection: collection.clone(),
                key: key.clone(),
                body,
                expected_version: 2,
            },
            WriteOp::Delete { collection: collection.clone(), key: key.clone() },
            WriteOp::DeleteIfVersion { collection, key, expected_version: 7 },
        ],
        notify: vec![message()],
    };
    assert_eq!(plan_from_wit(plan_to_wit(&plan)), Ok(plan));
    for resolution in [
        Resolution::Pending,
        Resolution::RespondDocument { collection: "c".into(), key: "k".into() },
        Resolution::Respond(json!([1, "two"])),
        Resolution::Fail("no".into()),
    ] {
        assert_eq!(resolution_from_wit(resolution_to_wit(&resolution)), Ok(resolution));
    }
}

#[test]
fn what_is_not_a_plain_value_is_refused_naming_the_part() {
    let bad = |payload: &str| wit::Message { payload: payload.into(), ..message_to_wit(&message()) };
    let err = message_from_wit(bad("{nope")).unwrap_err();
    assert!(err.starts_with("the payload of `Greeted` is not valid JSON ("), "{err}");
    let no_kind = wit::Message { kind: " ".into(), ..message_to_wit(&message()) };
    assert_eq!(message_from_wit(no_kind), Err("message `m-1` has no kind".into()));
    let principal = Some(wit::Principal { subject: "ada".into(), claims: "{".into() });
    let bad_claims = wit::Message { principal, ..message_to_wit(&message()) };
    let err = message_from_wit(bad_claims).unwrap_err();
    assert!(err.starts_with("the principal's claims of `Greeted` is not valid JSON ("), "{err}");

    let document = wit::Document { body: "".into(), ..document_to_wit(&document()) };
    let err = data_from_wit(vec![wit::Found { name: "a".into(), documents: vec![document] }]).unwrap_err();
    assert!(err.starts_with("the document `greetings/g-1` is not valid JSON ("), "{err}");

    let lookup = wit::Lookup {
        name: "f".into(),
        query: wit::Query::ByField(wit::FieldQuery {
            collection: "c".into(),
            field: "x".into(),
            value: "x y".into(),
        }),
    };
    assert!(lookup_from_wit(lookup).unwrap_err().starts_with("the value of lookup `f` is not valid JSON"));

    let outcome = wit::Outcome::Emit(vec![message_to_wit(&message()), bad("")]);
    assert!(outcome_from_wit(outcome).unwrap_err().starts_with("the payload of `Greeted`"));

    let op = |body: &str| {
        wit::WriteOp::UpdateIfVersion(wit::VersionedWrite {
            collection: "c".into(),
            key: "k".into(),
            body: body.into(),
            expected_version: 1,
        })
    };
    let plan = wit::WritePlan { ops: vec![op("{}"), op("[")], notify: vec![] };
    assert!(plan_from_wit(plan).unwrap_err().starts_with("the document `c/k` is not valid JSON"));
    let plan = wit::WritePlan { ops: vec![op("{}")], notify: vec![bad("'")] };
    assert!(plan_from_wit(plan).unwrap_err().starts_with("the payload of `Greeted`"));

    let err = resolution_from_wit(wit::Resolution::Respond("undefined".into())).unwrap_err();
    assert!(err.starts_with("the response is not valid JSON"), "{err}");
}

//! `customer-projector`: keeps the `customers` read model up to date from the
//! `customer` events (`CustomerInvited`, `CustomerInviteFailed`,
//! `CustomerRenamed`), and tells the requester when a customer's document is
//! ready (`ProjectionComplete`).

use low_contract::*;

/// The read model served as `customer(id)` / `customers(first, after)`.
pub const CUSTOMERS: &str = "customers";

pub struct CustomerProjector;

impl Function for CustomerProjector {
    fn meta() -> Meta {
        Meta::projector("customer-projector", ["customer"]).model(ModelSpec {
            name: "Customer".into(),
            collection: CUSTOMERS.into(),
            key: "id".into(),
            fields: vec![
                FieldSpec::new("id", FieldKind::Id, true),
                FieldSpec::new("email", FieldKind::Text, true),
                FieldSpec::new("invited", FieldKind::Boolean, true)
                    .describe("Whether an invitation was sent"),
            ],
            public: true,
            description: Some("A customer invited by email".into()),
        })
    }

    fn lookup(input: &Message, _store: &dyn StoreRead, _env: &dyn Env) -> Vec<Lookup> {
        match input.text("customer-id") {
            Some(id) => vec![Lookup::by_key("customer", CUSTOMERS, id)],
            None => vec![],
        }
    }

    fn operate(input: &Message, data: &Data, env: &dyn Env) -> Outcome {
        let current = data.first("customer");
        match (input.kind.as_str(), input.text("customer-id")) {
            ("CustomerInvited", Some(id)) => {
                Outcome::emit(env.message(
                    "Customer",
                    json!({ "id": id, "email": input.payload["email"], "invited": true }),
                ))
            }
            // Nothing changes, but the requester waits for the document: emit
            // it as it stands so that `write` confirms it.
            ("CustomerInviteFailed", Some(_)) => match current {
                Some(customer) => Outcome::emit(env.message("Customer", customer.body.clone())),
                None => Outcome::Ignore,
            },
            // The customer as it was, with the new email.
            ("CustomerRenamed", Some(id)) => {
                let mut customer =
                    current.map(|c| c.body.clone()).unwrap_or_else(|| json!({ "id": id, "invited": true }));
                customer["email"] = input.payload["email"].clone();
                Outcome::emit(env.message("Customer", customer))
            }
            _ => Outcome::Ignore,
        }
    }

    fn write(output: &Message, _env: &dyn Env) -> WritePlan {
        match (output.kind.as_str(), output.text("id")) {
            ("Customer", Some(id)) => WritePlan {
                ops: vec![WriteOp::Put {
                    collection: CUSTOMERS.into(),
                    key: id.into(),
                    body: output.payload.clone(),
                }],
                notify: vec![Message::new(
                    format!("{}-projected", output.id),
                    PROJECTION_COMPLETE,
                    json!({ "collection": CUSTOMERS, "key": id }),
                )],
            },
            _ => WritePlan::default(),
        }
    }
}

export_function!(CustomerProjector);

#[cfg(test)]
mod tests {
    use super::*;
    use low_contract::testing::Given;

    fn customer(id: &str, email: &str) -> Document {
        Document::new(CUSTOMERS, id, json!({ "id": id, "email": email, "invited": true }))
    }

    fn invited(id: &str, email: &str) -> Message {
        Message::new("e-1", "CustomerInvited", json!({ "customer-id": id, "email": email }))
    }

    #[test]
    fn an_invitation_projects_an_invited_customer_stores_it_and_notifies_the_requester() {
        let state = json!({ "id": "cust-1", "email": "a@b.c", "invited": true });
        Given::<CustomerProjector>::nothing()
            .when(invited("cust-1", "a@b.c"))
            .then_looks_up([Lookup::by_key("customer", CUSTOMERS, "cust-1")])
            .then_emits([Message::new("id-1", "Customer", state.clone())])
            .then_writes([WriteOp::Put { collection: CUSTOMERS.into(), key: "cust-1".into(), body: state }])
            .then_notifies([Message::new(
                "id-1-projected",
                PROJECTION_COMPLETE,
                json!({ "collection": "customers", "key": "cust-1" }),
            )]);
    }

    #[test]
    fn a_failed_invitation_confirms_the_existing_customer() {
        let failed =
            Message::new("e-2", "CustomerInviteFailed", json!({ "customer-id": "cust-1", "email": "a@b.c" }));
        Given::<CustomerProjector>::documents([customer("cust-1", "a@b.c")])
            .when(failed.clone())
            .then_emits([Message::new("id-1", "Customer", customer("cust-1", "a@b.c").body)])
            .then_writes_matching(json!([{ "op": "put", "key": "cust-1" }]))
            .then_notifies_matching(json!([{ "kind": PROJECTION_COMPLETE }]));
        Given::<CustomerProjector>::nothing().when(failed).then_ignores().then_writes([]).then_notifies([]);
    }

    #[test]
    fn a_rename_changes_only_the_email() {
        let renamed = Message::new(
            "e-3",
            "CustomerRenamed",
            json!({ "customer-id": "cust-1", "email": "new@b.c", "previous-email": "a@b.c" }),
        );
        Given::<CustomerProjector>::documents([customer("cust-1", "a@b.c")]).when(renamed).then_emits([
            Message::new("id-1", "Customer", json!({ "id": "cust-1", "email": "new@b.c", "invited": true })),
        ]);
    }

    #[test]
    fn other_events_are_ignored() {
        Given::<CustomerProjector>::documents([customer("cust-1", "a@b.c")])
            .when(Message::new("e-1", "CustomerArchived", json!({ "customer-id": "cust-1" })))
            .then_ignores()
            .then_writes([]);
    }
}

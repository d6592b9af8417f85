//! `customer-projector`: keeps the `customers` read model up to date from the
//! `customer` events (`CustomerInvited`, `CustomerInviteFailed`,
//! `CustomerRenamed`, from `customer-events`), and tells the requester when a
//! customer's document is ready (`ProjectionComplete`).

use customer_events::{CUSTOMER_TOPIC, CustomerInviteFailed, CustomerInvited, CustomerRenamed};
use low_contract::*;
use serde::{Deserialize, Serialize};

/// The read model served as `customer(id)` / `customers(first, after)`.
pub const CUSTOMERS: &str = "customers";

/// A customer as the read model holds it (and the projector emits it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    pub email: String,
    pub invited: bool,
}

impl Payload for Customer {
    const KIND: &'static str = "Customer";
}

pub struct CustomerProjector;

impl Function for CustomerProjector {
    fn meta() -> Meta {
        Meta::projector("customer-projector", [CUSTOMER_TOPIC]).model(
            ModelSpec::new(Customer::KIND, CUSTOMERS, "id")
                .field(FieldSpec::id("id").required())
                .field(FieldSpec::text("email").required())
                .field(FieldSpec::boolean("invited").required().describe("Whether an invitation was sent"))
                .public()
                // Emails are personal: with `[http.auth]` on, only callers with a token read them.
                .authenticated()
                .describe("A customer invited by email"),
        )
    }

    fn lookup(input: &Message, _store: &dyn StoreRead, _env: &dyn Env) -> Vec<Lookup> {
        match input.text("customer-id") {
            Some(id) => vec![Lookup::by_key("customer", CUSTOMERS, id)],
            None => vec![],
        }
    }

    fn operate(input: &Message, data: &Data, env: &dyn Env) -> Outcome {
        let current = data.first("customer");
        match input.kind.as_str() {
            CustomerInvited::KIND => match input.decode::<CustomerInvited>() {
                Ok(e) => {
                    Outcome::emit(env.event(&Customer { id: e.customer_id, email: e.email, invited: true }))
                }
                Err(_) => Outcome::Ignore,
            },
            // Nothing changes, but the requester waits for the document: emit
            // it as it stands so that `write` confirms it.
            CustomerInviteFailed::KIND => match current {
                Some(customer) => Outcome::emit(env.message(Customer::KIND, customer.body.clone())),
                None => Outcome::Ignore,
            },
            // The customer as it was (whatever else it holds), with the new email.
            CustomerRenamed::KIND => match input.decode::<CustomerRenamed>() {
                Ok(e) => {
                    let mut customer = current
                        .map(|c| c.body.clone())
                        .unwrap_or_else(|| json!({ "id": e.customer_id, "invited": true }));
                    customer["email"] = json!(e.email);
                    Outcome::emit(env.message(Customer::KIND, customer))
                }
                Err(_) => Outcome::Ignore,
            },
            _ => Outcome::Ignore,
        }
    }

    fn write(output: &Message, _env: &dyn Env) -> WritePlan {
        match (output.is::<Customer>(), output.text("id")) {
            (true, Some(id)) => WritePlan {
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

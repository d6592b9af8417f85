//! `invite-customer`: the handler that decides whether an email can be invited.
//!
//! Commands in (`InviteCustomer { email }`), events out on `customer`:
//! `CustomerInvited { customer-id, email }` for a new email,
//! `CustomerInviteFailed { customer-id, email, reason }` for one already invited.
//! It keeps a private collection `invites` (email → customer id) whose
//! insert fails when the email is taken, so two concurrent invites of one
//! email cannot both succeed.
//!
//! Built with the `v2` feature it is version 2 of the same function: emails
//! are trimmed and lower-cased (`Dean@P14N.com` is `dean@p14n.com`), and an
//! address without `@` is rejected — the version the README swaps in live.

use low_contract::*;

/// Private state: one document per invited email, keyed by the email.
pub const INVITES: &str = "invites";
/// Topic of the events this handler emits.
pub const CUSTOMER_TOPIC: &str = "customer";

pub struct InviteCustomer;

impl Function for InviteCustomer {
    fn meta() -> Meta {
        Meta::handler("invite-customer", [COMMANDS_TOPIC], CUSTOMER_TOPIC)
            .command(CommandSpec {
                name: "InviteCustomer".into(),
                fields: vec![
                    FieldSpec::new("email", FieldKind::Text, true)
                        .describe("Address to send the invitation to"),
                ],
                returns: "Customer".into(),
                description: Some(
                    "Invite a customer by email; inviting an email twice returns the first customer".into(),
                ),
            })
            .model(ModelSpec {
                name: "Invite".into(),
                collection: INVITES.into(),
                key: "email".into(),
                fields: vec![
                    FieldSpec::new("email", FieldKind::Text, true),
                    FieldSpec::new("customer-id", FieldKind::Id, true),
                ],
                public: false,
                description: None,
            })
    }

    fn lookup(input: &Message, _store: &dyn StoreRead, _env: &dyn Env) -> Vec<Lookup> {
        match email(input) {
            Some(email) => vec![Lookup::by_key("invite", INVITES, &email)],
            None => vec![],
        }
    }

    fn operate(input: &Message, data: &Data, env: &dyn Env) -> Outcome {
        if input.kind != "InviteCustomer" {
            return Outcome::Ignore;
        }
        let Some(email) = email(input) else {
            return Outcome::Reject("Email is required".into());
        };
        if cfg!(feature = "v2") && !email.contains('@') {
            return Outcome::Reject(format!(
                "Email must be an address such as name@example.com, not `{email}`"
            ));
        }
        match data.first("invite") {
            Some(invite) => {
                env.log(Level::Info, &format!("{email} was already invited"));
                Outcome::emit(env.message(
                    "CustomerInviteFailed",
                    json!({
                        "customer-id": invite.body["customer-id"],
                        "email": email,
                        "reason": "already invited",
                    }),
                ))
            }
            None => {
                let customer_id = env.new_id();
                Outcome::emit(
                    env.message("CustomerInvited", json!({ "customer-id": customer_id, "email": email })),
                )
            }
        }
    }

    fn write(output: &Message, _env: &dyn Env) -> WritePlan {
        match (output.kind.as_str(), output.text("email")) {
            ("CustomerInvited", Some(email)) => WritePlan {
                ops: vec![WriteOp::Insert {
                    collection: INVITES.into(),
                    key: email.into(),
                    body: json!({ "email": email, "customer-id": output.payload["customer-id"] }),
                }],
                notify: vec![],
            },
            _ => WritePlan::default(),
        }
    }
}

/// The command's email, if it has a non-blank one (normalised in v2).
fn email(input: &Message) -> Option<String> {
    let email = input.text("email").filter(|e| !e.trim().is_empty())?;
    Some(if cfg!(feature = "v2") { email.trim().to_lowercase() } else { email.to_owned() })
}

export_function!(InviteCustomer);

#[cfg(test)]
mod tests {
    use super::*;
    use low_contract::testing::{TestEnv, TestStore};

    fn invite(email: Value) -> Message {
        Message::new("c-1", "InviteCustomer", json!({ "email": email }))
    }

    fn invited(customer_id: &str, email: &str) -> Document {
        Document {
            collection: INVITES.into(),
            key: email.into(),
            version: 1,
            body: json!({ "email": email, "customer-id": customer_id }),
        }
    }

    #[test]
    fn looks_up_the_invite_by_email() {
        let plan =
            InviteCustomer::lookup(&invite(json!("a@b.c")), &TestStore::default(), &TestEnv::default());
        assert_eq!(plan, vec![Lookup::by_key("invite", INVITES, "a@b.c")]);
    }

    #[test]
    fn a_new_email_is_invited_with_a_fresh_customer_id() {
        let env = TestEnv::default();
        let outcome = InviteCustomer::operate(&invite(json!("a@b.c")), &Data::default(), &env);
        // id-1 is the customer's id, id-2 the event's.
        assert_eq!(
            outcome,
            Outcome::emit(Message::new(
                "id-2",
                "CustomerInvited",
                json!({ "customer-id": "id-1", "email": "a@b.c" })
            ))
        );
    }

    #[test]
    fn an_invited_email_fails_with_the_existing_customer() {
        let data = Data::default().with("invite", vec![invited("cust-7", "a@b.c")]);
        let env = TestEnv::default();
        let outcome = InviteCustomer::operate(&invite(json!("a@b.c")), &data, &env);
        assert_eq!(
            outcome,
            Outcome::emit(Message::new(
                "id-1",
                "CustomerInviteFailed",
                json!({ "customer-id": "cust-7", "email": "a@b.c", "reason": "already invited" })
            ))
        );
        assert_eq!(env.logs(), vec![(Level::Info, "a@b.c was already invited".to_owned())]);
    }

    #[test]
    fn an_empty_or_missing_email_is_rejected() {
        for email in [json!(""), json!("   "), Value::Null] {
            let outcome = InviteCustomer::operate(&invite(email), &Data::default(), &TestEnv::default());
            assert_eq!(outcome, Outcome::Reject("Email is required".into()));
        }
        let no_field = Message::new("c-1", "InviteCustomer", json!({}));
        assert_eq!(
            InviteCustomer::operate(&no_field, &Data::default(), &TestEnv::default()),
            Outcome::Reject("Email is required".into())
        );
    }

    #[test]
    fn other_commands_are_ignored() {
        let other = Message::new("c-1", "RemoveCustomer", json!({ "email": "a@b.c" }));
        assert_eq!(InviteCustomer::operate(&other, &Data::default(), &TestEnv::default()), Outcome::Ignore);
    }

    #[test]
    fn an_invitation_claims_the_email() {
        let event =
            Message::new("e-1", "CustomerInvited", json!({ "customer-id": "cust-1", "email": "a@b.c" }));
        let plan = InviteCustomer::write(&event, &TestEnv::default());
        assert_eq!(
            plan.ops,
            vec![WriteOp::Insert {
                collection: INVITES.into(),
                key: "a@b.c".into(),
                body: json!({ "email": "a@b.c", "customer-id": "cust-1" }),
            }]
        );
        assert!(plan.notify.is_empty());
    }

    #[cfg(feature = "v2")]
    #[test]
    fn v2_normalises_the_email() {
        let plan = InviteCustomer::lookup(
            &invite(json!(" Dean@P14N.com ")),
            &TestStore::default(),
            &TestEnv::default(),
        );
        assert_eq!(plan, vec![Lookup::by_key("invite", INVITES, "dean@p14n.com")]);
        let outcome =
            InviteCustomer::operate(&invite(json!("Dean@P14N.com")), &Data::default(), &TestEnv::default());
        let Outcome::Emit(events) = outcome else { panic!("emits: {outcome:?}") };
        assert_eq!(events[0].payload["email"], "dean@p14n.com");
    }

    #[cfg(feature = "v2")]
    #[test]
    fn v2_rejects_an_address_without_at() {
        let outcome = InviteCustomer::operate(&invite(json!("dean")), &Data::default(), &TestEnv::default());
        assert_eq!(
            outcome,
            Outcome::Reject("Email must be an address such as name@example.com, not `dean`".into())
        );
    }

    #[cfg(not(feature = "v2"))]
    #[test]
    fn v1_keeps_the_email_as_given() {
        let outcome =
            InviteCustomer::operate(&invite(json!("Dean@P14N.com")), &Data::default(), &TestEnv::default());
        let Outcome::Emit(events) = outcome else { panic!("emits: {outcome:?}") };
        assert_eq!(events[0].payload["email"], "Dean@P14N.com");
    }

    #[test]
    fn a_failed_invitation_stores_nothing() {
        let event =
            Message::new("e-1", "CustomerInviteFailed", json!({ "customer-id": "cust-1", "email": "a@b.c" }));
        assert_eq!(InviteCustomer::write(&event, &TestEnv::default()), WritePlan::default());
    }
}

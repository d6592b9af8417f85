//! `invite-customer`: the handler that decides whether an email can be
//! invited, and whether a customer can change to a new email.
//!
//! Commands in, events out on `customer` (the messages: `customer-events`):
//! - `InviteCustomer { email }` → `CustomerInvited { customer-id, email }` for
//!   a new email, `CustomerInviteFailed { customer-id, email, reason }` for
//!   one already invited;
//! - `RenameCustomer { id, email }` → `CustomerRenamed { customer-id, email,
//!   previous-email }`, or a rejection when the customer is unknown or the
//!   email taken.
//!
//! Who may invite: when the shell checks identities, the command carries
//! the caller's verified [`Principal`], and only one with the role
//! [`INVITER`] may invite; anyone else is rejected with the reason. A
//! command without a principal comes from a shell with `auth = "none"`,
//! whose callers are local and trusted: it may invite.
//!
//! It keeps a private collection `invites` (email → customer id) whose
//! insert fails when the email is taken, so two concurrent invites (or
//! renames) to one email cannot both succeed.
//!
//! Built with the `v2` feature it is version 2 of the same function: emails
//! are trimmed and lower-cased (`Dean@P14N.com` is `dean@p14n.com`), and an
//! address without `@` is rejected — the version the README swaps in live.

pub use customer_events::*;
use low_contract::*;

/// Private state: one document per invited email, keyed by the email.
pub const INVITES: &str = "invites";
/// The role a caller needs to invite customers.
pub const INVITER: &str = "inviter";

pub struct InviteCustomer;

impl Function for InviteCustomer {
    fn meta() -> Meta {
        Meta::handler("invite-customer", [COMMANDS_TOPIC], CUSTOMER_TOPIC)
            .command(
                CommandSpec::of::<customer_events::InviteCustomer>("Customer")
                    .field(FieldSpec::text("email").required().describe("Address to send the invitation to"))
                    .describe(
                        "Invite a customer by email; inviting an email twice returns the first customer",
                    ),
            )
            .command(
                CommandSpec::of::<RenameCustomer>("Customer")
                    .field(FieldSpec::id("id").required().describe("The customer"))
                    .field(FieldSpec::text("email").required().describe("The customer's new email"))
                    .describe("Change a customer's email to one no other customer has"),
            )
            .model(
                ModelSpec::new("Invite", INVITES, "email")
                    .field(FieldSpec::text("email").required())
                    .field(FieldSpec::id("customer-id").required()),
            )
    }

    fn lookup(input: &Message, _store: &dyn StoreRead, _env: &dyn Env) -> Vec<Lookup> {
        plan(input).unwrap_or_default()
    }

    fn operate(input: &Message, data: &Data, env: &dyn Env) -> Outcome {
        let outcome = match input.kind.as_str() {
            customer_events::InviteCustomer::KIND => match may_invite(input.principal.as_ref()) {
                Err(reason) => Ok(Outcome::Reject(reason)),
                Ok(()) => input.decode().map(|c| invite(c, data, env)),
            },
            RenameCustomer::KIND => input.decode().map(|c| rename(c, data, env)),
            _ => Ok(Outcome::Ignore),
        };
        outcome.unwrap_or_else(Outcome::Reject)
    }

    fn write(output: &Message, _env: &dyn Env) -> WritePlan {
        let ops = if let Ok(invited) = output.decode::<CustomerInvited>() {
            vec![claim(&invited.email, &invited.customer_id)]
        } else if let Ok(renamed) = output.decode::<CustomerRenamed>() {
            // Claim the new email (an insert: it conflicts if someone took it
            // meanwhile) and release the old one only as it was read (a
            // concurrent rename that released it first makes this conflict,
            // and the retry reads the customer's new invite).
            vec![
                claim(&renamed.email, &renamed.customer_id),
                release(&renamed.previous_email, renamed.previous_version),
            ]
        } else {
            vec![]
        };
        WritePlan { ops, notify: vec![] }
    }
}

/// The lookup plan of a command that has what it needs (else none: `operate` says what is missing).
fn plan(input: &Message) -> Option<Vec<Lookup>> {
    match input.kind.as_str() {
        customer_events::InviteCustomer::KIND => {
            let email = email(input.decode::<customer_events::InviteCustomer>().ok()?.email)?;
            Some(vec![Lookup::by_key("invite", INVITES, &email)])
        }
        RenameCustomer::KIND => {
            let RenameCustomer { id, email: new } = input.decode().ok()?;
            let (id, new) = (id.filter(|id| !id.trim().is_empty())?, email(new)?);
            Some(vec![
                // The customer's current invite, found by its customer id…
                Lookup::by_field("current", INVITES, "customer-id", json!(id)),
                // …and whoever holds the new email, if anyone.
                Lookup::by_key("taken", INVITES, &new),
            ])
        }
        _ => None,
    }
}

/// Frees `email`: only at the version the rename read, when it says which.
fn release(email: &str, version: Option<u64>) -> WriteOp {
    let (collection, key) = (INVITES.to_owned(), email.to_owned());
    match version {
        Some(expected_version) => WriteOp::DeleteIfVersion { collection, key, expected_version },
        // An event recorded before renames carried the version (a replay).
        None => WriteOp::Delete { collection, key },
    }
}

/// The invite document that reserves `email` for a customer.
fn claim(email: &str, customer_id: &str) -> WriteOp {
    WriteOp::Insert {
        collection: INVITES.into(),
        key: email.into(),
        body: json!({ "email": email, "customer-id": customer_id }),
    }
}

/// Whether the caller may invite: one with the [`INVITER`] role, or any
/// caller of a shell that checks no identities (no principal).
fn may_invite(principal: Option<&Principal>) -> Result<(), String> {
    match principal {
        Some(p) if !p.has_role(INVITER) => Err(format!(
            "Only an inviter may invite customers: {} does not have the `{INVITER}` role",
            p.subject
        )),
        _ => Ok(()),
    }
}

fn invite(command: customer_events::InviteCustomer, data: &Data, env: &dyn Env) -> Outcome {
    let Some(email) = email(command.email) else {
        return Outcome::Reject("Email is required".into());
    };
    if let Some(refusal) = not_an_address(&email) {
        return refusal;
    }
    match data.first("invite") {
        Some(invite) => {
            env.log(Level::Info, &format!("{email} was already invited"));
            let customer_id = invite.body["customer-id"].as_str().unwrap_or_default().to_owned();
            let reason = "already invited".to_owned();
            Outcome::emit(env.event(&CustomerInviteFailed { customer_id, email, reason }))
        }
        None => Outcome::emit(env.event(&CustomerInvited { customer_id: env.new_id(), email })),
    }
}

fn rename(command: RenameCustomer, data: &Data, env: &dyn Env) -> Outcome {
    let Some(id) = command.id.filter(|id| !id.trim().is_empty()) else {
        return Outcome::Reject("Id is required".into());
    };
    let Some(email) = email(command.email) else { return Outcome::Reject("Email is required".into()) };
    if let Some(refusal) = not_an_address(&email) {
        return refusal;
    }
    let Some(current) = data.first("current") else {
        return Outcome::Reject(format!("No customer has the id {id}"));
    };
    if let Some(holder) = data.first("taken") {
        return Outcome::Reject(if holder.body["customer-id"] == json!(id) {
            format!("{email} is already this customer's email")
        } else {
            format!("{email} is already taken")
        });
    }
    env.log(Level::Debug, &format!("customer {id}: {} → {email}", current.key));
    Outcome::emit(env.event(&CustomerRenamed {
        customer_id: id,
        email,
        previous_email: current.key.clone(),
        previous_version: Some(current.version),
    }))
}

/// A command's email, if it is not blank (normalised in v2).
fn email(email: Option<String>) -> Option<String> {
    let email = email.filter(|e| !e.trim().is_empty())?;
    Some(if cfg!(feature = "v2") { email.trim().to_lowercase() } else { email })
}

/// Version 2 refuses an email that is not an address.
fn not_an_address(email: &str) -> Option<Outcome> {
    (cfg!(feature = "v2") && !email.contains('@'))
        .then(|| Outcome::Reject(format!("Email must be an address such as name@example.com, not `{email}`")))
}

export_function!(InviteCustomer);

#[cfg(test)]
mod tests {
    use super::*;
    use low_contract::testing::Given;

    fn invite(email: Value) -> Message {
        Message::new("c-1", "InviteCustomer", json!({ "email": email }))
    }

    fn rename_to(id: &str, email: &str) -> Message {
        Message::new("c-2", "RenameCustomer", json!({ "id": id, "email": email }))
    }

    /// The invite that reserves `email` for a customer.
    fn invited(customer_id: &str, email: &str) -> Document {
        Document::new(INVITES, email, json!({ "email": email, "customer-id": customer_id }))
    }

    fn claim(customer_id: &str, email: &str) -> WriteOp {
        WriteOp::Insert {
            collection: INVITES.into(),
            key: email.into(),
            body: json!({ "email": email, "customer-id": customer_id }),
        }
    }

    // ---- InviteCustomer ----------------------------------------------------

    #[test]
    fn a_new_email_is_invited_with_a_fresh_customer_id_and_claimed() {
        Given::<InviteCustomer>::nothing()
            .when(invite(json!("a@b.c")))
            .then_looks_up([Lookup::by_key("invite", INVITES, "a@b.c")])
            // id-1 is the customer's id, id-2 the event's.
            .then_emits([Message::new(
                "id-2",
                "CustomerInvited",
                json!({ "customer-id": "id-1", "email": "a@b.c" }),
            )])
            .then_writes([claim("id-1", "a@b.c")])
            .then_notifies([]);
    }

    #[test]
    fn an_invited_email_fails_with_the_existing_customer_and_stores_nothing() {
        Given::<InviteCustomer>::documents([invited("cust-7", "a@b.c")])
            .when(invite(json!("a@b.c")))
            .then_emits([Message::new(
                "id-1",
                "CustomerInviteFailed",
                json!({ "customer-id": "cust-7", "email": "a@b.c", "reason": "already invited" }),
            )])
            .then_writes([])
            .then_logs([(Level::Info, "a@b.c was already invited")]);
    }

    #[test]
    fn an_inviter_may_invite() {
        Given::<InviteCustomer>::nothing()
            .when(invite(json!("a@b.c")).by(Principal::with_roles("ada", ["support", INVITER])))
            .then_emits_matching(json!([{ "kind": "CustomerInvited", "payload": { "email": "a@b.c" } }]))
            .then_writes([claim("id-1", "a@b.c")]);
        let role_claim = Principal::new("ada", json!({ "sub": "ada", "role": "inviter" }));
        Given::<InviteCustomer>::nothing()
            .when(invite(json!("a@b.c")).by(role_claim))
            .then_emits_matching(json!([{ "kind": "CustomerInvited" }]));
    }

    #[test]
    fn a_caller_without_the_inviter_role_is_rejected_and_nothing_is_stored() {
        for principal in
            [Principal::with_roles("bob", ["support"]), Principal::new("bob", json!({ "sub": "bob" }))]
        {
            Given::<InviteCustomer>::nothing()
                .when(invite(json!("a@b.c")).by(principal))
                .then_rejects("Only an inviter may invite customers: bob does not have the `inviter` role")
                .then_writes([]);
        }
    }

    #[test]
    fn without_a_principal_the_local_caller_may_invite() {
        // A shell with `auth = "none"` sets no principal: its callers are trusted.
        Given::<InviteCustomer>::nothing()
            .when(invite(json!("a@b.c")))
            .then_emits_matching(json!([{ "kind": "CustomerInvited" }]));
    }

    #[test]
    fn an_empty_or_missing_email_is_rejected() {
        for email in [json!(""), json!("   "), Value::Null] {
            Given::<InviteCustomer>::nothing()
                .when(invite(email))
                .then_looks_up([])
                .then_rejects("Email is required");
        }
        Given::<InviteCustomer>::nothing()
            .when(Message::new("c-1", "InviteCustomer", json!({})))
            .then_rejects("Email is required");
    }

    #[test]
    fn other_commands_are_ignored() {
        Given::<InviteCustomer>::documents([invited("cust-1", "a@b.c")])
            .when(Message::new("c-1", "RemoveCustomer", json!({ "email": "a@b.c" })))
            .then_looks_up([])
            .then_ignores()
            .then_writes([]);
    }

    #[cfg(feature = "v2")]
    #[test]
    fn v2_normalises_the_email() {
        Given::<InviteCustomer>::nothing()
            .when(invite(json!(" Dean@P14N.com ")))
            .then_looks_up([Lookup::by_key("invite", INVITES, "dean@p14n.com")])
            .then_emits_matching(json!([{ "payload": { "email": "dean@p14n.com" } }]));
        Given::<InviteCustomer>::nothing()
            .when(invite(json!("Dean@P14N.com")))
            .then_emits_matching(json!([{ "payload": { "email": "dean@p14n.com" } }]))
            .then_writes([claim("id-1", "dean@p14n.com")]);
    }

    #[cfg(feature = "v2")]
    #[test]
    fn v2_rejects_an_address_without_at() {
        Given::<InviteCustomer>::nothing()
            .when(invite(json!("dean")))
            .then_rejects("Email must be an address such as name@example.com, not `dean`");
    }

    #[cfg(not(feature = "v2"))]
    #[test]
    fn v1_keeps_the_email_as_given() {
        Given::<InviteCustomer>::nothing()
            .when(invite(json!("Dean@P14N.com")))
            .then_emits_matching(json!([{ "payload": { "email": "Dean@P14N.com" } }]));
    }

    // ---- RenameCustomer ----------------------------------------------------

    #[test]
    fn a_rename_looks_up_the_customer_and_the_new_email() {
        Given::<InviteCustomer>::nothing().when(rename_to("cust-1", "new@b.c")).then_looks_up([
            Lookup::by_field("current", INVITES, "customer-id", json!("cust-1")),
            Lookup::by_key("taken", INVITES, "new@b.c"),
        ]);
    }

    #[test]
    fn a_customer_is_renamed_to_a_free_email_claiming_it_and_releasing_the_old_one() {
        // The old invite as read (version 3) is what the write releases.
        let current = Document { version: 3, ..invited("cust-1", "old@b.c") };
        Given::<InviteCustomer>::documents([current, invited("cust-2", "other@b.c")])
            .when(rename_to("cust-1", "new@b.c"))
            .then_emits([Message::new(
                "id-1",
                "CustomerRenamed",
                json!({
                    "customer-id": "cust-1",
                    "email": "new@b.c",
                    "previous-email": "old@b.c",
                    "previous-version": 3,
                }),
            )])
            .then_writes([
                claim("cust-1", "new@b.c"),
                WriteOp::DeleteIfVersion {
                    collection: INVITES.into(),
                    key: "old@b.c".into(),
                    expected_version: 3,
                },
            ])
            .then_logs([(Level::Debug, "customer cust-1: old@b.c → new@b.c")]);
    }

    #[test]
    fn a_rename_is_rejected_for_an_unknown_customer_a_taken_or_same_email_or_missing_fields() {
        Given::<InviteCustomer>::nothing()
            .when(rename_to("cust-9", "new@b.c"))
            .then_rejects("No customer has the id cust-9");
        let store = || [invited("cust-1", "old@b.c"), invited("cust-2", "new@b.c")];
        Given::<InviteCustomer>::documents(store())
            .when(rename_to("cust-1", "new@b.c"))
            .then_rejects("new@b.c is already taken")
            .then_writes([]);
        Given::<InviteCustomer>::documents(store())
            .when(rename_to("cust-1", "old@b.c"))
            .then_rejects("old@b.c is already this customer's email");
        Given::<InviteCustomer>::documents(store())
            .when(rename_to("cust-1", " "))
            .then_rejects("Email is required");
        Given::<InviteCustomer>::documents(store())
            .when(rename_to("", "a@b.c"))
            .then_rejects("Id is required");
    }
}

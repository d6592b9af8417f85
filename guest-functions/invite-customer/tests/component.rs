//! The built component (not the native code), in the stub host: the same
//! behaviour as the unit tests, through the WebAssembly boundary.
//! `make guest` builds it; without it these tests fail, saying so.

use host::stub::Stub;
use low_contract::{Message, json};
use std::path::Path;

fn stub() -> Stub {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../modules/invite-customer.wasm");
    // A test that ran nothing must not pass.
    assert!(path.exists(), "{} is missing: run `make guest` (or `make test`, which does)", path.display());
    Stub::load(path).expect("the component loads")
}

#[test]
fn invites_then_renames_a_customer() {
    let stub = stub();
    stub.when(Message::new("c-1", "InviteCustomer", json!({ "email": "ada@example.com" })))
        .unwrap()
        .then_emits(json!([{ "kind": "CustomerInvited", "payload": { "customer-id": "<id:ada>" } }]))
        .then_writes(
            json!([{ "op": "insert", "key": "ada@example.com", "body": { "customer-id": "<id:ada>" } }]),
        );

    let id = stub.document("invites", "ada@example.com").unwrap().unwrap().body["customer-id"].clone();
    stub.when(Message::new("c-2", "RenameCustomer", json!({ "id": id, "email": "ada@lovelace.org" })))
        .unwrap()
        .then_emits(
            json!([{ "kind": "CustomerRenamed", "payload": { "previous-email": "ada@example.com" } }]),
        )
        .then_writes(json!([
            { "op": "insert", "key": "ada@lovelace.org" },
            { "op": "delete-if-version", "key": "ada@example.com", "expected-version": 1 },
        ]));
    assert!(stub.document("invites", "ada@example.com").unwrap().is_none());
}

#[test]
fn rejects_an_empty_email_and_a_taken_one() {
    let stub = stub();
    let stub = stub
        .given_document(
            "invites",
            "ada@example.com",
            json!({ "email": "ada@example.com", "customer-id": "c-1" }),
        )
        .given_document(
            "invites",
            "bob@example.com",
            json!({ "email": "bob@example.com", "customer-id": "c-2" }),
        );
    stub.when(Message::new("c-1", "InviteCustomer", json!({ "email": "" })))
        .unwrap()
        .then_rejects("Email is required")
        .then_notifies(json!([{ "kind": "Rejected", "payload": { "reason": "Email is required" } }]));
    stub.when(Message::new("c-2", "RenameCustomer", json!({ "id": "c-1", "email": "bob@example.com" })))
        .unwrap()
        .then_rejects("bob@example.com is already taken");
}

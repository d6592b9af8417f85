//! The runtime on the real components: loading, `meta`, and each phase of
//! the LOW cycle on a fresh instance.

mod support;

use host::runtime::{Limits, LoadError, Runtime};
use low_contract::{
    Data, Document, FunctionKind, Lookup, Message, Outcome, PROJECTION_COMPLETE, REJECTED, Resolution,
    WriteOp, json,
};
use std::sync::Arc;
use support::module;

async fn load(name: &str) -> Arc<host::runtime::Function> {
    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let bytes = std::fs::read(module(name)).expect("component file");
    runtime.load(&bytes).await.expect("component loads")
}

#[tokio::test]
async fn components_declare_themselves() {
    let handler = load("invite-customer").await;
    assert_eq!(handler.meta.name, "invite-customer");
    assert_eq!(handler.meta.kind, FunctionKind::Handler);
    assert_eq!(handler.meta.inputs, vec!["commands"]);
    assert_eq!(handler.meta.output.as_deref(), Some("customer"));
    assert_eq!(handler.meta.commands[0].name, "InviteCustomer");
    assert_eq!(handler.version.0.len(), 64, "sha256 in hex");

    let projector = load("customer-projector").await;
    assert_eq!(projector.meta.kind, FunctionKind::Projector);
    assert!(projector.meta.models.iter().any(|m| m.collection == "customers" && m.public));

    let resolver = load("invite-resolver").await;
    assert_eq!(resolver.meta.kind, FunctionKind::Resolver);
    assert_eq!(resolver.meta.inputs, vec!["InviteCustomer", "RenameCustomer"]);
}

#[tokio::test]
async fn a_handler_runs_one_phase_at_a_time() {
    let handler = load("invite-customer").await;
    let mut call = handler.start(None).await.expect("instance");
    let command = Message::new("c-1", "InviteCustomer", json!({ "email": "a@b.c" }));

    let plan = call.lookup(&command).await.expect("lookup");
    assert_eq!(plan, vec![Lookup::by_key("invite", "invites", "a@b.c")]);

    let outcome = call.operate(&command, &Data::default()).await.expect("operate");
    let Outcome::Emit(events) = outcome else { panic!("emits: {outcome:?}") };
    assert_eq!(events[0].kind, "CustomerInvited");
    let customer_id = events[0].payload["customer-id"].as_str().expect("customer id").to_owned();

    let write = call.write(&events[0]).await.expect("write");
    assert_eq!(
        write.ops,
        vec![WriteOp::Insert {
            collection: "invites".into(),
            key: "a@b.c".into(),
            body: json!({ "email": "a@b.c", "customer-id": customer_id }),
        }]
    );
}

#[tokio::test]
async fn a_handler_rejects_an_empty_email_and_recognises_an_invited_one() {
    let handler = load("invite-customer").await;
    let mut call = handler.start(None).await.expect("instance");
    let empty = Message::new("c-1", "InviteCustomer", json!({ "email": "" }));
    assert_eq!(
        call.operate(&empty, &Data::default()).await.expect("operate"),
        Outcome::Reject("Email is required".into())
    );

    let invited = Document {
        collection: "invites".into(),
        key: "a@b.c".into(),
        version: 1,
        body: json!({ "email": "a@b.c", "customer-id": "cust-1" }),
    };
    let command = Message::new("c-2", "InviteCustomer", json!({ "email": "a@b.c" }));
    let outcome =
        call.operate(&command, &Data::default().with("invite", vec![invited])).await.expect("operate");
    let Outcome::Emit(events) = outcome else { panic!("emits: {outcome:?}") };
    assert_eq!(events[0].kind, "CustomerInviteFailed");
    assert_eq!(events[0].payload["customer-id"], "cust-1");
}

#[tokio::test]
async fn a_projector_writes_the_read_model_and_notifies() {
    let projector = load("customer-projector").await;
    let mut call = projector.start(None).await.expect("instance");
    let event = Message::new("e-1", "CustomerInvited", json!({ "customer-id": "cust-1", "email": "a@b.c" }));

    let Outcome::Emit(states) = call.operate(&event, &Data::default()).await.expect("operate") else {
        panic!("emits")
    };
    let plan = call.write(&states[0]).await.expect("write");
    assert_eq!(
        plan.ops,
        vec![WriteOp::Put {
            collection: "customers".into(),
            key: "cust-1".into(),
            body: json!({ "id": "cust-1", "email": "a@b.c", "invited": true }),
        }]
    );
    assert_eq!(plan.notify[0].kind, PROJECTION_COMPLETE);
}

#[tokio::test]
async fn a_resolver_answers_from_notifications() {
    let resolver = load("invite-resolver").await;
    let mut call = resolver.start(None).await.expect("instance");
    let command = Message::new("c-1", "InviteCustomer", json!({ "email": "a@b.c" }));

    assert_eq!(call.resolve(&command, &[]).await.expect("resolve"), Resolution::Pending);
    let done =
        Message::new("n-1", PROJECTION_COMPLETE, json!({ "collection": "customers", "key": "cust-1" }));
    assert_eq!(
        call.resolve(&command, &[done]).await.expect("resolve"),
        Resolution::RespondDocument { collection: "customers".into(), key: "cust-1".into() }
    );
    let rejected = Message::new("n-2", REJECTED, json!({ "reason": "Email is required" }));
    assert_eq!(
        call.resolve(&command, &[rejected]).await.expect("resolve"),
        Resolution::Fail("Email is required".into())
    );
    // A resolver has no LOW phases.
    assert!(call.lookup(&command).await.is_err());
}

#[tokio::test]
async fn bytes_that_are_not_a_component_are_refused() {
    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let refused = runtime.load(b"not wasm at all").await.expect_err("refused");
    assert!(matches!(refused, LoadError::NotAComponent(_)), "{refused}");
}

/// A call refused because the component lacks its export (a handler asked
/// to `resolve`) leaves the instance as clean as it was: the next execution
/// goes on with it, as the guest's count of its `operate` calls shows.
#[tokio::test]
async fn a_call_refused_for_its_kind_keeps_the_instance() {
    let handler = load("fixtures/misbehave").await;
    let count = Message::new("c-1", "Misbehave", json!({ "action": "count" }));
    let served = |outcome: Outcome| match outcome {
        Outcome::Emit(events) => events[0].payload["detail"].as_str().map(str::to_owned),
        other => panic!("emits: {other:?}"),
    };
    let mut call = handler.start(None).await.expect("instance");
    let first = served(call.operate(&count, &Data::default()).await.expect("operate"));
    drop(call);

    let mut call = handler.start(None).await.expect("instance");
    let refused = call.resolve(&count, &[]).await.expect_err("a handler has no `resolve`");
    assert!(refused.to_string().contains("resolve"), "{refused}");
    drop(call);

    let mut call = handler.start(None).await.expect("instance");
    let next = served(call.operate(&count, &Data::default()).await.expect("operate"));
    let first: u32 = first.and_then(|n| n.parse().ok()).expect("a count");
    assert_eq!(next, Some((first + 1).to_string()), "the same instance served on");
}

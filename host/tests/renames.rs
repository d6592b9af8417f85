//! Concurrent renames of one customer: the release of the old email is a
//! `delete-if-version`, so whichever renames commit, the customer ends with
//! exactly one invite — on both stores. (With an unconditional delete,
//! renames that read the same invite all committed and left several.)

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::backend::memory::MemoryStore;
use host::backend::postgres::PgStore;
use host::backend::{Store, StoreError};
use host::executor::{StepError, run_cycle};
use host::registry::Functions;
use host::runtime::{Function, Limits, Runtime};
use low_contract::{Message, Outcome, json};
use std::sync::Arc;

const RENAMES: usize = 20;

async fn functions() -> (Functions, Arc<Function>) {
    let runtime = Runtime::new(Limits::default()).expect("runtime");
    let mut loaded = vec![];
    for name in ["invite-customer", "customer-projector"] {
        let bytes = std::fs::read(support::module(name)).expect("component file");
        loaded.push(runtime.load(&bytes).await.expect("component loads"));
    }
    let handler = Arc::clone(&loaded[0]);
    (Functions::new(loaded).expect("functions"), handler)
}

/// Runs the handler's cycle for `command` and commits it, retrying on a
/// conflict with a fresh lookup as the executor does. The outcome committed.
async fn handle(
    functions: &Functions,
    handler: &Arc<Function>,
    store: &Arc<dyn Store>,
    command: Message,
) -> Outcome {
    for attempt in 0..200 {
        let decided = run_cycle(functions, handler, store, &command).await.expect("the cycle runs");
        match store.commit(decided.cycle.commit).await {
            Ok(()) => return decided.decision.outcome,
            Err(StoreError::Conflict(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(attempt % 7)).await;
            }
            Err(e) => panic!("commit failed: {}", StepError::from(e)),
        }
    }
    panic!("kept conflicting");
}

async fn renames_leave_one_invite(store: Arc<dyn Store>) {
    let (functions, handler) = functions().await;
    let invited = handle(
        &functions,
        &handler,
        &store,
        Message::new("c-0", "InviteCustomer", json!({ "email": "first@x.y" })),
    )
    .await;
    let Outcome::Emit(events) = invited else { panic!("invited: {invited:?}") };
    let id = events[0].payload["customer-id"].as_str().expect("customer id").to_owned();

    let functions = Arc::new(functions);
    let emails: Vec<String> = (0..RENAMES).map(|i| format!("rename-{i}@x.y")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, email) in emails.iter().enumerate() {
        let (functions, handler, store) = (Arc::clone(&functions), Arc::clone(&handler), Arc::clone(&store));
        let command = Message::new(format!("r-{i}"), "RenameCustomer", json!({ "id": id, "email": email }));
        tasks.spawn(async move { handle(&functions, &handler, &store, command).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("rename task");
    }

    let held = store.find("invites", "customer-id", &json!(id), 100).await.expect("find");
    assert_eq!(
        held.len(),
        1,
        "the customer holds one invite, not {:?}",
        held.iter().map(|d| &d.key).collect::<Vec<_>>()
    );
    let current = held[0].key.clone();
    assert!(emails.contains(&current) || current == "first@x.y", "{current}");

    // Inviting each address again: the customer for exactly its email, a new
    // customer for every other one.
    let mut theirs = 0;
    for (i, email) in emails.iter().enumerate() {
        let outcome = handle(
            &functions,
            &handler,
            &store,
            Message::new(format!("i-{i}"), "InviteCustomer", json!({ "email": email })),
        )
        .await;
        let Outcome::Emit(events) = outcome else { panic!("invite {email}: {outcome:?}") };
        let event = &events[0];
        if event.kind == "CustomerInviteFailed" {
            assert_eq!(event.payload["customer-id"], json!(id), "{email}");
            assert_eq!(email, &current, "only the customer's current email is taken");
            theirs += 1;
        } else {
            assert_eq!(event.kind, "CustomerInvited", "{email}");
            assert_ne!(event.payload["customer-id"], json!(id), "{email}");
        }
    }
    assert_eq!(theirs, usize::from(current != "first@x.y"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_renames_of_one_customer_leave_one_invite_in_memory() {
    renames_leave_one_invite(Arc::new(MemoryStore::new(host::backend::memory::MemoryBus::new()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_renames_of_one_customer_leave_one_invite_in_postgres() {
    let url = pg::database().await;
    let db = Arc::new(host::backend::postgres::database::Database::connect(&url).await.expect("database"));
    renames_leave_one_invite(Arc::new(PgStore::new(db))).await;
}

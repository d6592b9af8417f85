//! The host-side caps on what one step may make the shell do (`[limits]`):
//! lookups per plan, documents per `find`, events, write ops and
//! notifications per step, and the step deadline over guest calls and the
//! lookup plan together. Each is exceeded by the misbehaving fixture
//! (`guest-functions/fixtures/misbehave`), over real HTTP, and fails that
//! command only, naming the function; nothing of the step is stored.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::Project;
use host::backend::postgres::PgStore;
use host::backend::postgres::database::Database;
use host::backend::{Commit, Store};
use host::config::BackendKind;
use host::executor::run_cycle;
use host::registry::Functions;
use host::runtime::{Limits, Runtime, StepLimits};
use low_contract::{Message, WriteOp, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Client, basic_project, start};
use support::{fails, misbehave};

/// The misbehaving handler and its resolver, beside the customer projector.
fn fixture_project() -> Project {
    support::capture_logs();
    let mut project = basic_project();
    project.functions = Some(vec![
        "customer-projector".into(),
        "fixtures/misbehave".into(),
        "fixtures/misbehave-resolver".into(),
    ]);
    for name in ["fixtures/misbehave", "fixtures/misbehave-resolver"] {
        support::module(name);
    }
    project.watch = false;
    project
}

/// The same on a fresh Postgres database.
async fn pg_fixture_project() -> Project {
    let mut project = fixture_project();
    project.backend = BackendKind::Postgres;
    project.database_url = Some(pg::database().await);
    // Generous: the test binaries share a busy machine.
    project.response_timeout_ms = 60_000;
    project
}

/// An `ok` command works (and stores one `Thing` with `action: "ok"`).
async fn ok(client: &Client) {
    let body = misbehave(client, "ok", "operate").await;
    assert_eq!(body["data"]["Misbehave"]["action"], "ok", "{body}");
}

async fn things(client: &Client) -> usize {
    let body = client.graphql("{ things(first: 100) { id } }").await;
    body["data"]["things"].as_array().map_or_else(|| panic!("a page of things: {body}"), Vec::len)
}

#[tokio::test]
async fn lookups_events_ops_and_notifications_are_capped_per_step() {
    let (shell, client) = start(fixture_project()).await;
    ok(&client).await;
    let before = things(&client).await;

    // The defaults: 32 lookups, 256 events, 256 ops, 256 notifications; the fixture asks for more.
    fails(&client, "many-lookups", "operate", &["`misbehave`", "100 lookups", "limits.lookups (32)"]).await;
    fails(&client, "many-events", "operate", &["`misbehave`", "300 messages", "limits.events (256)"]).await;
    fails(&client, "many-ops", "operate", &["`misbehave`", "limits.ops (256)"]).await;
    fails(&client, "many-notifications", "operate", &["`misbehave`", "limits.notifications (256)"]).await;

    assert_eq!(things(&client).await, before, "nothing of a refused step is stored");
    ok(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn caps_are_configurable() {
    let mut project = fixture_project();
    project.limits.lookups = 200;
    project.limits.events = 400;
    project.limits.ops = 400;
    project.limits.notifications = 400;
    let (shell, client) = start(project).await;
    for action in ["many-lookups", "many-ops", "many-notifications"] {
        let body = misbehave(&client, action, "operate").await;
        assert_eq!(body["data"]["Misbehave"]["action"], action, "{action} within raised caps: {body}");
    }
    shell.stop().await.expect("clean stop");
}

/// `find` matching more than `limits.find-documents` fails the step, in
/// the lookup plan and in the guest's own reads during `lookup`.
async fn finds_are_capped(project: Project) {
    let (shell, client) = start(project).await;
    for _ in 0..5 {
        ok(&client).await;
    }
    // Exactly the limit: found, all of them.
    let body = misbehave(&client, "find", "operate").await;
    assert_eq!(body["data"]["Misbehave"]["detail"], "5", "{body}");
    let body = misbehave(&client, "read-find", "operate").await;
    assert_eq!(body["data"]["Misbehave"]["action"], "read-find", "{body}");

    ok(&client).await;
    fails(
        &client,
        "find",
        "operate",
        &["`misbehave`", "`ok-things`", "more than 5 documents", "limits.find-documents"],
    )
    .await;
    fails(
        &client,
        "read-find",
        "operate",
        &["`misbehave`", "lookup", "more than 5 documents", "limits.find-documents"],
    )
    .await;
    ok(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn finds_are_capped_in_memory() {
    let mut project = fixture_project();
    project.limits.find_documents = 5;
    finds_are_capped(project).await;
}

#[tokio::test]
async fn finds_are_capped_in_postgres() {
    let mut project = pg_fixture_project().await;
    project.limits.find_documents = 5;
    finds_are_capped(project).await;
}

#[tokio::test]
async fn the_step_deadline_bounds_all_the_guest_calls_of_a_step() {
    let mut project = fixture_project();
    // Each call is well within its own deadline; together they are not.
    project.limits.deadline_ms = 5_000;
    project.limits.step_deadline_ms = 700;
    let (shell, client) = start(project).await;

    // 300 ms in one phase fits.
    let body = misbehave(&client, "slow", "operate").await;
    assert_eq!(body["data"]["Misbehave"]["action"], "slow", "{body}");
    // 300 ms in each of lookup, operate and write does not.
    fails(&client, "slow", "every", &["`misbehave`", "step deadline of 700ms", "limits.step-deadline-ms"])
        .await;
    ok(&client).await;
    shell.stop().await.expect("clean stop");
}

/// Below HTTP, to hold the lookup plan up: a lock on `documents` would
/// also hold up the command's delivery (the lock's transaction id holds
/// the log's visibility horizon back), so the cycle is run directly, as
/// the executor runs it, with the real component and store.
#[tokio::test]
async fn a_lookup_plan_stuck_in_postgres_is_cut_off_by_the_step_deadline() {
    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("the database"));
    let store: Arc<dyn Store> = Arc::new(PgStore::new(db));
    let limits = Limits {
        step: StepLimits { deadline: Duration::from_secs(1), ..StepLimits::default() },
        ..Limits::default()
    };
    let runtime = Runtime::new(limits).expect("a runtime");
    let bytes = std::fs::read(support::module("fixtures/misbehave")).expect("the fixture");
    let function = runtime.load(&bytes).await.expect("the fixture loads");
    let functions = Functions::new([Arc::clone(&function)]).expect("functions");
    let thing =
        WriteOp::Put { collection: "things".into(), key: "t-1".into(), body: json!({ "action": "ok" }) };
    store.commit(Commit { ops: vec![thing], ..Commit::default() }).await.expect("a thing stored");
    let find = Message::new("cmd-1", "Misbehave", json!({ "action": "find" }));

    // Hold every read of `documents` back until this transaction ends.
    let blocker = pg::client(&url).await;
    blocker.batch_execute("BEGIN; LOCK TABLE documents IN ACCESS EXCLUSIVE MODE").await.expect("lock");
    let started = Instant::now();
    let e = run_cycle(&functions, &function, &store, &find).await.expect_err("cut off").to_string();
    assert!(started.elapsed() < Duration::from_secs(10), "it waited {:?}", started.elapsed());
    for part in ["`misbehave`", "step deadline of 1s", "limits.step-deadline-ms", "its lookup plan"] {
        assert!(e.contains(part), "{e:?} should mention {part:?}");
    }
    // The abandoned query was cancelled, not left waiting on the lock.
    let waiting = "SELECT count(*) FROM pg_stat_activity
                   WHERE application_name = 'lowshell' AND wait_event_type = 'Lock'";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = blocker.query_one(waiting, &[]).await.expect("pg_stat_activity");
        if row.get::<_, i64>(0) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the abandoned read is still waiting on the lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    blocker.batch_execute("ROLLBACK").await.expect("unlock");

    let cycle = run_cycle(&functions, &function, &store, &find).await.expect("a cycle").cycle;
    assert_eq!(cycle.data.0.iter().map(|f| f.documents.len()).sum::<usize>(), 1, "{cycle:?}");
}

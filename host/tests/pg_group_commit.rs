//! Group commit on Postgres: the deliveries a consumer has at hand are
//! committed in one transaction, each step's lookups seeing the writes of
//! the steps before it; a group whose commit cannot apply is committed one
//! step at a time. And chained commits: a handler's steps and its
//! projector's steps on their events in one transaction. Needs `make
//! guest`; see `support/pg.rs` for the database.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::{Project, Shell};
use std::time::{Duration, Instant};

fn project(url: &str) -> Project {
    support::project_from(&pg::project_text(url, "127.0.0.1:0", 60_000), "group-s3cret")
}

/// Commands appended to the log by hand, in one transaction, while no
/// shell runs: the handler finds them all at hand when it starts.
async fn backlog(db: &tokio_postgres::Client, emails: &[&str]) {
    let payloads: Vec<String> = emails.iter().map(|email| format!(r#"{{"email": "{email}"}}"#)).collect();
    append_commands(db, "InviteCustomer", &payloads).await;
}

/// Commands of `kind` with `payloads` (JSON), appended by hand in one
/// transaction.
async fn append_commands(db: &tokio_postgres::Client, kind: &str, payloads: &[String]) {
    let values: Vec<String> = payloads
        .iter()
        .enumerate()
        .map(|(n, payload)| format!("('cmd-{n}', 'commands', '{kind}', '{payload}', 'request-{n}')"))
        .collect();
    db.batch_execute(&format!(
        "INSERT INTO events (id, topic, kind, payload, correlation_id) VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("append the commands");
}

/// The handler's events once there are `count`: transaction (xid8, as
/// text), kind, email and customer id, in log order.
async fn decided(db: &tokio_postgres::Client, count: usize) -> Vec<[String; 4]> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = db
            .query(
                "SELECT tx::text, kind, payload->>'email', payload->>'customer-id' FROM events
                 WHERE function = 'invite-customer' ORDER BY position",
                &[],
            )
            .await
            .expect("read the log");
        if rows.len() >= count {
            return rows.iter().map(|r| [r.get(0), r.get(1), r.get(2), r.get(3)]).collect();
        }
        assert!(Instant::now() < deadline, "only {} of {count} decided", rows.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn customers(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT count(*) FROM documents WHERE collection = 'customers'", &[])
        .await
        .expect("count the customers")
        .get(0)
}

#[tokio::test]
async fn a_backlog_is_committed_in_one_transaction_and_later_steps_see_earlier_writes() {
    let url = pg::database().await;
    let db = pg::client(&url).await;
    // Starting once creates the schema; stopped, it leaves the backlog be.
    Shell::start(project(&url)).await.expect("start (run `make guest` first)").stop().await.expect("stop");
    // The third repeats the first's email: only the first step's write,
    // not yet committed, tells it so.
    backlog(&db, &["a@example.com", "b@example.com", "a@example.com", "c@example.com"]).await;

    let shell = Shell::start(project(&url)).await.expect("start again");
    let decided = decided(&db, 4).await;
    let what: Vec<(&str, &str)> =
        decided.iter().map(|[_, kind, email, _]| (kind.as_str(), email.as_str())).collect();
    assert_eq!(
        what,
        [
            ("CustomerInvited", "a@example.com"),
            ("CustomerInvited", "b@example.com"),
            ("CustomerInviteFailed", "a@example.com"),
            ("CustomerInvited", "c@example.com"),
        ]
    );
    assert!(
        decided.iter().all(|[tx, ..]| *tx == decided[0][0]),
        "one transaction for the group: {decided:?}"
    );
    assert_eq!(decided[2][3], decided[0][3], "the repeat names the customer the first step invited");
    // The projector's group: three customers, nothing doubled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while customers(&db).await < 3 {
        assert!(Instant::now() < deadline, "the projector wrote {} customers", customers(&db).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(customers(&db).await, 3);
    shell.stop().await.expect("clean stop");
}

/// A group's lookups are read ahead together (one round trip for the
/// group): what was stored before the group is seen, and what an earlier
/// step of the group wrote still comes first.
#[tokio::test]
async fn a_group_reads_ahead_what_was_stored_before_it_and_sees_its_own_writes_first() {
    let url = pg::database().await;
    let db = pg::client(&url).await;
    let (shell, client) = support::start(project(&url)).await;
    let first = client.invite("old@example.com").await;
    assert!(first["data"]["InviteCustomer"]["id"].is_string(), "{first}");
    shell.stop().await.expect("stop");
    backlog(&db, &["old@example.com", "x@example.com", "old@example.com", "y@example.com", "x@example.com"])
        .await;

    let shell = Shell::start(project(&url)).await.expect("start again");
    let decided = decided(&db, 6).await;
    let what: Vec<(&str, &str)> =
        decided.iter().map(|[_, kind, email, _]| (kind.as_str(), email.as_str())).collect();
    assert_eq!(
        what,
        [
            ("CustomerInvited", "old@example.com"),
            ("CustomerInviteFailed", "old@example.com"),
            ("CustomerInvited", "x@example.com"),
            ("CustomerInviteFailed", "old@example.com"),
            ("CustomerInvited", "y@example.com"),
            ("CustomerInviteFailed", "x@example.com"),
        ]
    );
    assert!(
        decided[1..].iter().all(|[tx, ..]| *tx == decided[1][0]),
        "one transaction for the group: {decided:?}"
    );
    assert_eq!(decided[1][3], decided[0][3], "the repeat names the customer stored before");
    assert_eq!(decided[5][3], decided[2][3], "and the one the group invited");
    shell.stop().await.expect("clean stop");
}

/// A step whose `lookup` reads documents itself plans at its turn, with
/// the writes of the steps before it in its group in view — never from a
/// plan made ahead of them.
#[tokio::test]
async fn a_lookup_that_reads_the_store_plans_after_the_steps_before_it() {
    let url = pg::database().await;
    let db = pg::client(&url).await;
    let mut project = project(&url);
    project.functions = Some(vec!["fixtures/misbehave".into(), "fixtures/misbehave-resolver".into()]);
    support::module("fixtures/misbehave");
    Shell::start(project.clone()).await.expect("start (run `make guest` first)").stop().await.expect("stop");
    let actions = ["ok", "ok", "read-count", "ok"];
    let payloads: Vec<String> =
        actions.iter().map(|action| format!(r#"{{"action": "{action}", "phase": ""}}"#)).collect();
    append_commands(&db, "Misbehave", &payloads).await;

    let shell = Shell::start(project).await.expect("start again");
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = db
            .query(
                "SELECT tx::text, payload->>'action', payload->>'detail' FROM events
                 WHERE function = 'misbehave' ORDER BY position",
                &[],
            )
            .await
            .expect("read the log");
        if rows.len() >= actions.len() {
            break rows;
        }
        assert!(Instant::now() < deadline, "only {} of {} decided", rows.len(), actions.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let decided: Vec<(String, String, String)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert!(decided.iter().all(|(tx, ..)| *tx == decided[0].0), "one transaction for the group: {decided:?}");
    assert_eq!(decided[2].1, "read-count");
    assert_eq!(decided[2].2, "seen-2", "the two `ok` steps before it were in view: {decided:?}");
    shell.stop().await.expect("clean stop");
}

/// A submitted command, its handler's step and its projector's step on the
/// event that emitted commit in one transaction (chained), the customer
/// answered from it; nothing is doubled.
#[tokio::test]
async fn a_command_its_handler_and_its_projector_commit_in_one_transaction() {
    // Its own cluster: other tests' transactions would often be open, and a
    // commit chains only when no older transaction is.
    let cluster = pg::OwnCluster::start();
    let url = cluster.database().await;
    let db = pg::client(&url).await;
    let (shell, client) = support::start(project(&url)).await;
    let emails = ["a@example.com", "b@example.com", "c@example.com", "d@example.com"];
    for (n, email) in emails.into_iter().enumerate() {
        let answer = client.invite(email).await;
        assert_eq!(answer["data"]["InviteCustomer"]["email"], email, "{answer}");
        // Both checkpoints moved in one transaction: `now()` is its start.
        let together: bool = db
            .query_one(
                "SELECT (SELECT updated_at FROM checkpoints WHERE consumer = 'invite-customer')
                      = (SELECT updated_at FROM checkpoints WHERE consumer = 'customer-projector')",
                &[],
            )
            .await
            .expect("read the checkpoints")
            .get(0);
        // The first one's steps start the consumers' checkpoints (a chained
        // commit moves one there is).
        assert_eq!(together, n > 0, "invite {n}: handler and projector in one transaction");
        // And the command was appended in that transaction too (with the
        // event its handler emitted): one transaction for the whole command.
        let appended_with: bool = db
            .query_one(
                "SELECT (SELECT tx FROM events WHERE topic = 'commands' ORDER BY position DESC LIMIT 1)
                      = (SELECT tx FROM events WHERE kind = 'CustomerInvited' ORDER BY position DESC LIMIT 1)",
                &[],
            )
            .await
            .expect("read the log")
            .get(0);
        assert_eq!(appended_with, n > 0, "invite {n}: the command appended with its steps");
    }
    assert_eq!(customers(&db).await, 4);
    let row = db
        .query_one(
            "SELECT (SELECT position FROM checkpoints WHERE consumer = 'customer-projector'),
                    (SELECT max(position) FROM events WHERE kind = 'CustomerInvited')",
            &[],
        )
        .await
        .expect("read the checkpoint");
    assert_eq!(
        row.get::<_, i64>(0),
        row.get::<_, i64>(1),
        "the projector's checkpoint is past the last event"
    );
    shell.stop().await.expect("clean stop");
}

/// A chained step that takes too long is left to its own consumer: the
/// handler's commit does not wait for it (the projector's guest deadline
/// here is far longer than the wait allowed).
#[tokio::test]
async fn a_slow_chained_step_does_not_hold_up_the_handler() {
    let cluster = pg::OwnCluster::start();
    let url = cluster.database().await;
    let db = pg::client(&url).await;
    let mut project = project(&url);
    project.functions = Some(vec![
        "fixtures/misbehave".into(),
        "fixtures/misbehave-resolver".into(),
        "fixtures/misbehave-projector".into(),
    ]);
    support::module("fixtures/misbehave-projector");
    project.limits.deadline_ms = 20_000;
    project.limits.step_deadline_ms = 20_000;
    project.response_timeout_ms = 1_000;
    let (shell, client) = support::start(project).await;
    // Starts the projector's checkpoint, so that the next one may chain.
    let body = client.graphql(r#"mutation { Misbehave(action: "ok", phase: "") { id } }"#).await;
    assert!(body["data"]["Misbehave"]["id"].is_string(), "{body}");

    let sent = Instant::now();
    let looping = client.clone();
    let request = tokio::spawn(async move {
        looping.graphql(r#"mutation { Misbehave(action: "loop", phase: "project-operate") { id } }"#).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let decided: i64 = db
            .query_one("SELECT count(*) FROM events WHERE function = 'misbehave'", &[])
            .await
            .expect("read the log")
            .get(0);
        if decided == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the handler's step waited for the looping projector");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sent.elapsed() < Duration::from_secs(10));
    request.abort();
    shell.stop().await.expect("clean stop");
}

/// A submitted command's handler step that takes too long is left to the
/// handler's own consumer: appending commands does not wait for it, so
/// another function's commands are still appended and answered (the
/// looping handler's guest deadline here is far longer than that).
#[tokio::test]
async fn a_slow_handler_does_not_hold_up_other_commands() {
    let cluster = pg::OwnCluster::start();
    let url = cluster.database().await;
    let mut project = project(&url);
    project.functions = Some(vec![
        "invite-customer".into(),
        "customer-projector".into(),
        "invite-resolver".into(),
        "fixtures/misbehave".into(),
        "fixtures/misbehave-resolver".into(),
    ]);
    project.limits.deadline_ms = 20_000;
    project.limits.step_deadline_ms = 20_000;
    project.response_timeout_ms = 15_000;
    let (shell, client) = support::start(project).await;
    // Starts both handlers' checkpoints, so that the next commands may chain.
    let body = client.graphql(r#"mutation { Misbehave(action: "ok", phase: "") { id } }"#).await;
    assert!(body["data"]["Misbehave"]["id"].is_string(), "{body}");
    assert_eq!(
        client.invite("first@example.com").await["data"]["InviteCustomer"]["email"],
        "first@example.com"
    );

    let looping = client.clone();
    let request = tokio::spawn(async move {
        looping.graphql(r#"mutation { Misbehave(action: "loop", phase: "operate") { id } }"#).await
    });
    for n in 0..5 {
        let email = format!("u{n}@example.com");
        let sent = Instant::now();
        let answer = client.invite(&email).await;
        assert_eq!(answer["data"]["InviteCustomer"]["email"], email.as_str(), "{answer}");
        assert!(sent.elapsed() < Duration::from_secs(10), "invite {n} waited for the looping handler");
    }
    request.abort();
    shell.stop().await.expect("clean stop");
}

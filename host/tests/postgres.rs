//! The Postgres backend against a real Postgres (see `support/pg.rs`: a
//! throwaway cluster unless `DATABASE_URL` is set). Needs `make guest`.

#[path = "support/pg.rs"]
mod pg;

use host::backend::postgres::PgBus;
use host::backend::postgres::PgStore;
use host::backend::postgres::database::Database;
use host::backend::{Bus, Requests, Subscription};
use host::backend::{Chained, Checkpoint, Commit, Store};
use host::{Project, Shell};
use low_contract::{Query, WriteOp, json};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

fn project_text(url: &str, listen: &str) -> String {
    pg::project_text(url, listen, 60_000)
}

fn project(url: &str) -> Project {
    Project::parse(&project_text(url, "127.0.0.1:0"), Path::new(".")).expect("test project")
}

async fn shell(url: &str) -> Shell {
    Shell::start(project(url)).await.expect("start a Postgres shell (run `make guest` first)")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(90)).build().expect("http client")
}

async fn graphql(
    client: &reqwest::Client,
    addr: SocketAddr,
    query: &str,
    idempotency_key: Option<&str>,
) -> Result<Value, String> {
    let mut request = client.post(format!("http://{addr}/graphql")).json(&json!({ "query": query }));
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    match body.get("errors") {
        Some(errors) => Err(errors.to_string()),
        None => Ok(body["data"].clone()),
    }
}

/// Invites `email`; the customer's id.
async fn invite(
    client: &reqwest::Client,
    addr: SocketAddr,
    email: &str,
    command_id: Option<&str>,
) -> Result<String, String> {
    let arg = command_id.map(|c| format!(", commandId: \"{c}\"")).unwrap_or_default();
    let data = graphql(
        client,
        addr,
        &format!(r#"mutation {{ InviteCustomer(email: "{email}"{arg}) {{ id email }} }}"#),
        None,
    )
    .await?;
    data["InviteCustomer"]["id"].as_str().map(str::to_owned).ok_or_else(|| format!("no id in {data}"))
}

async fn customer(client: &reqwest::Client, addr: SocketAddr, id: &str) -> Option<Value> {
    let data = graphql(client, addr, &format!(r#"{{ customer(id: "{id}") {{ id email invited }} }}"#), None)
        .await
        .expect("query a customer");
    Some(data["customer"].clone()).filter(|c| !c.is_null())
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn next(sub: &mut Box<dyn Subscription>, within: Duration) -> Option<host::backend::Delivery> {
    tokio::time::timeout(within, sub.next()).await.ok().flatten()
}

async fn processed(store: &PgStore, consumer: &str, delivery: &host::backend::Delivery) {
    store
        .commit(Commit { checkpoint: Some(Checkpoint::past(consumer, delivery)), ..Commit::default() })
        .await
        .expect("advance the checkpoint");
}

/// The ids of the probe's next `n` deliveries, each processed in turn.
async fn processed_next(sub: &mut Box<dyn Subscription>, store: &PgStore, n: usize) -> Vec<String> {
    processed_by(sub, store, "probe", n).await
}

/// The ids of `consumer`'s next `n` deliveries, each processed in turn.
async fn processed_by(
    sub: &mut Box<dyn Subscription>,
    store: &PgStore,
    consumer: &str,
    n: usize,
) -> Vec<String> {
    let mut seen = vec![];
    for _ in 0..n {
        let d = next(sub, Duration::from_secs(10)).await.expect("a delivery");
        seen.push(d.event.message.id.clone());
        processed(store, consumer, &d).await;
    }
    seen
}

const INSERT: &str = "INSERT INTO events (id, topic, kind, payload) VALUES";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commits_skip_nothing_and_rollbacks_do_not_stall() {
    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect and migrate"));
    let bus = PgBus::start(Arc::clone(&db));
    let store = PgStore::new(Arc::clone(&db));
    let mut sub = bus.subscribe("probe", &["t".into()]).await.expect("subscribe");
    let (a, b) = (pg::client(&url).await, pg::client(&url).await);

    // 1. A takes the earlier position, B commits first.
    a.batch_execute(&format!("BEGIN; {INSERT} ('a', 't', 'A', '{{}}')")).await.expect("A writes");
    b.batch_execute(&format!("{INSERT} ('b', 't', 'B', '{{}}')")).await.expect("B commits");
    assert!(next(&mut sub, Duration::from_millis(1500)).await.is_none(), "B must wait for A, still open");
    a.batch_execute("COMMIT").await.expect("A commits");
    assert_eq!(processed_next(&mut sub, &store, 2).await, ["a", "b"]);

    // 2. B's transaction is older (smaller xid) but takes the later
    // position and commits first; A, with the earlier position, commits
    // after the consumer has passed B. A position-only cursor skips A.
    b.batch_execute("BEGIN; SELECT pg_current_xact_id()").await.expect("B starts");
    a.batch_execute(&format!("BEGIN; {INSERT} ('c', 't', 'C', '{{}}')")).await.expect("A writes");
    b.batch_execute(&format!("{INSERT} ('d', 't', 'D', '{{}}'); COMMIT")).await.expect("B commits");
    let d = next(&mut sub, Duration::from_secs(10)).await.expect("B's event, from the older transaction");
    assert_eq!(d.event.message.id, "d");
    processed(&store, "probe", &d).await;
    a.batch_execute("COMMIT").await.expect("A commits");
    let c = next(&mut sub, Duration::from_secs(10)).await.expect("A's event is not skipped");
    assert_eq!(c.event.message.id, "c");
    assert!(c.position < d.position, "A's event has the earlier position");
    processed(&store, "probe", &c).await;

    // 3. A rolled-back writer leaves no stall.
    a.batch_execute(&format!("BEGIN; {INSERT} ('e', 't', 'E', '{{}}')")).await.expect("A writes");
    b.batch_execute(&format!("{INSERT} ('f', 't', 'F', '{{}}')")).await.expect("B commits");
    a.batch_execute("ROLLBACK").await.expect("A rolls back");
    let f = next(&mut sub, Duration::from_secs(10)).await.expect("B's event after A's rollback");
    assert_eq!(f.event.message.id, "f");
    processed(&store, "probe", &f).await;
    assert!(next(&mut sub, Duration::from_millis(1200)).await.is_none(), "nothing else");

    // 4. A step committed twice (a second processor, or a retried commit
    // whose outcome was lost) applies once.
    b.batch_execute(&format!("{INSERT} ('g', 't', 'G', '{{}}')")).await.expect("append");
    let g = next(&mut sub, Duration::from_secs(10)).await.expect("g");
    let step = Commit {
        ops: vec![WriteOp::Put { collection: "probe".into(), key: "k".into(), body: json!({ "n": 1 }) }],
        checkpoint: Some(Checkpoint::past("probe", &g)),
        ..Commit::default()
    };
    store.commit(step.clone()).await.expect("first commit");
    store.commit(step).await.expect("a duplicate is not an error");
    let doc = store.get("probe", "k").await.expect("get").expect("written");
    assert_eq!(doc.version, 1, "the duplicate step was not applied again");
}

/// An event the shell cannot read (here a kind made NULL behind its back)
/// stops its consumers there: what came before is delivered, nothing after
/// it is, until the row is repaired — then it and the rest, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_event_stops_the_consumer_and_is_never_skipped() {
    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect and migrate"));
    let bus = PgBus::start(Arc::clone(&db));
    let store = PgStore::new(Arc::clone(&db));
    let mut sub = bus.subscribe("probe", &["t".into()]).await.expect("subscribe");
    let raw = pg::client(&url).await;
    raw.batch_execute(&format!(
        "ALTER TABLE events ALTER COLUMN kind DROP NOT NULL;
         {INSERT} ('a', 't', 'A', '{{}}');
         {INSERT} ('b', 't', NULL, '{{}}');
         {INSERT} ('c', 't', 'C', '{{}}');"
    ))
    .await
    .expect("a log with an unreadable event");

    let a = next(&mut sub, Duration::from_secs(10)).await.expect("the event before it");
    assert_eq!(a.event.message.id, "a");
    processed(&store, "probe", &a).await;
    assert!(
        next(&mut sub, Duration::from_millis(1500)).await.is_none(),
        "neither `b` nor `c`: nothing skipped"
    );

    raw.batch_execute("UPDATE events SET kind = 'B' WHERE id = 'b'").await.expect("repair the row");
    assert_eq!(processed_next(&mut sub, &store, 2).await, ["b", "c"], "after the repair");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_is_enforced_by_postgres_not_by_reading_first() {
    let url = pg::database().await;
    let store = Arc::new(PgStore::new(Arc::new(Database::connect(&url).await.expect("connect"))));
    let insert = |n: u32| Commit {
        ops: vec![WriteOp::Insert { collection: "c".into(), key: "k".into(), body: json!({ "n": n }) }],
        ..Commit::default()
    };
    // Ten concurrent inserts of one key: exactly one wins, the others conflict.
    let racers = (0..10).map(|n| {
        let (store, commit) = (Arc::clone(&store), insert(n));
        async move { store.commit(commit).await }
    });
    let results = futures::future::join_all(racers).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, host::backend::StoreError::Conflict(_))),
        "{results:?}"
    );
    let update = |expected_version: u64| Commit {
        ops: vec![WriteOp::UpdateIfVersion {
            collection: "c".into(),
            key: "k".into(),
            body: json!({ "updated": expected_version }),
            expected_version,
        }],
        ..Commit::default()
    };
    store.commit(update(1)).await.expect("update at the current version");
    let stale = store.commit(update(1)).await;
    assert!(matches!(stale, Err(host::backend::StoreError::Conflict(_))), "{stale:?}");
    // All or nothing: a conflicting op undoes the ops before it in the commit.
    let mixed = Commit {
        ops: vec![
            WriteOp::Put { collection: "c".into(), key: "other".into(), body: json!({}) },
            WriteOp::Insert { collection: "c".into(), key: "k".into(), body: json!({}) },
        ],
        ..Commit::default()
    };
    assert!(store.commit(mixed).await.is_err());
    assert!(store.get("c", "other").await.expect("get").is_none(), "nothing of a failed commit is applied");
    assert_eq!(store.get("c", "k").await.expect("get").expect("k").version, 2);
}

/// A commit's writes go as runs (inserts together, puts together, one
/// statement each), its events as one statement, its notifications as one:
/// each keeps its meaning, in order, and a conflict names its document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_many_writes_applies_each_in_order_and_names_a_conflict() {
    let url = pg::database().await;
    let db = pg::client(&url).await;
    let store = PgStore::new(Arc::new(Database::connect(&url).await.expect("connect")));
    let (insert, put) = (
        |key: &str, body: Value| WriteOp::Insert { collection: "c".into(), key: key.into(), body },
        |key: &str, body: Value| WriteOp::Put { collection: "c".into(), key: key.into(), body },
    );
    let event = |topic: &str, id: &str| host::backend::Event {
        topic: topic.into(),
        message: low_contract::Message {
            correlation_id: Some("r1".into()),
            ..low_contract::Message::new(id, "K", json!({ "id": id }))
        },
        function: (topic != "commands").then(|| "h".into()),
        version: None,
        at_ms: 0,
    };
    let note = |id: &str| low_contract::Message {
        correlation_id: Some(format!("r-{id}")),
        ..low_contract::Message::new(id, "Done", json!({}))
    };
    let commit = Commit {
        ops: vec![
            insert("a", json!({ "n": 1 })),
            insert("b", json!({ "n": 2 })),
            put("p", json!({ "v": 1 })),
            put("p", json!({ "v": 2 })),
            WriteOp::UpdateIfVersion {
                collection: "c".into(),
                key: "p".into(),
                body: json!({ "v": 3 }),
                expected_version: 2,
            },
            insert("d", json!({ "n": 4 })),
        ],
        events: vec![event("commands", "c1"), event("t", "e1"), event("t", "e2"), event("u", "e3")],
        notify: vec![note("n1"), note("n2")],
        ..Commit::default()
    };
    store.commit(commit).await.expect("commit");
    for (key, body) in [("a", json!({ "n": 1 })), ("b", json!({ "n": 2 })), ("d", json!({ "n": 4 }))] {
        let document = store.get("c", key).await.expect("get").expect("inserted");
        assert_eq!((document.version, document.body), (1, body), "{key}");
    }
    let p = store.get("c", "p").await.expect("get").expect("put");
    assert_eq!(
        (p.version, p.body),
        (3, json!({ "v": 3 })),
        "two puts, then an update at the second one's version"
    );
    let events = db
        .query("SELECT id, topic, command_id, function FROM events ORDER BY position", &[])
        .await
        .expect("events");
    let events: Vec<(String, String, Option<String>, Option<String>)> =
        events.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let row = |id: &str, topic: &str, command: &str, function: Option<&str>| {
        (id.to_owned(), topic.to_owned(), Some(command.to_owned()), function.map(str::to_owned))
    };
    assert_eq!(
        events,
        [
            row("c1", "commands", "c1", None),
            row("e1", "t", "r1", Some("h")),
            row("e2", "t", "r1", Some("h")),
            row("e3", "u", "r1", Some("h")),
        ],
        "in order; a command names itself, an event the request it serves"
    );
    let notes =
        db.query("SELECT correlation_id FROM notifications ORDER BY id", &[]).await.expect("notifications");
    let notes: Vec<String> = notes.iter().map(|r| r.get(0)).collect();
    assert_eq!(notes, ["r-n1", "r-n2"]);

    // A conflict in a run names its document, and nothing of the commit applies.
    let taken = Commit {
        ops: vec![insert("x", json!({})), insert("b", json!({})), insert("y", json!({}))],
        ..Commit::default()
    };
    match store.commit(taken).await {
        Err(host::backend::StoreError::Conflict(conflict)) => {
            assert!(conflict.contains("`c/b` already exists"), "{conflict}")
        }
        other => panic!("expected a conflict on c/b, got {other:?}"),
    }
    assert!(store.get("c", "x").await.expect("get").is_none(), "nothing of a failed commit is applied");
    // One key twice: the second insert conflicts with the first.
    let twice = Commit { ops: vec![insert("z", json!({})), insert("z", json!({}))], ..Commit::default() };
    assert!(matches!(store.commit(twice).await, Err(host::backend::StoreError::Conflict(_))));
    assert!(store.get("c", "z").await.expect("get").is_none());
}

/// A lookup plan's reads go to Postgres together (one connection, one
/// flight) and each answers as it would alone, in the plan's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_plan_answers_each_read_in_order() {
    let url = pg::database().await;
    let store = PgStore::new(Arc::new(Database::connect(&url).await.expect("connect")));
    let put = |key: &str, plan: &str| WriteOp::Put {
        collection: "customers".into(),
        key: key.into(),
        body: json!({ "id": key, "plan": plan }),
    };
    store
        .commit(Commit {
            ops: vec![put("c1", "gold"), put("c2", "free"), put("c3", "gold")],
            ..Commit::default()
        })
        .await
        .expect("write the customers");
    let key = |key: &str| Query::Key { collection: "customers".into(), key: key.into() };
    let field = |plan: &str| Query::Field {
        collection: "customers".into(),
        field: "plan".into(),
        value: json!(plan),
    };
    let elsewhere = Query::Key { collection: "orders".into(), key: "c1".into() };
    let plan = [key("c2"), field("gold"), key("missing"), field("none"), key("c1"), elsewhere, key("c2")];
    let queries: Vec<&Query> = plan.iter().collect();

    let found = store.lookup(&queries, 10).await.expect("lookup");

    let keys: Vec<Vec<&str>> =
        found.iter().map(|documents| documents.iter().map(|d| d.key.as_str()).collect()).collect();
    assert_eq!(keys, vec![vec!["c2"], vec!["c1", "c3"], vec![], vec![], vec!["c1"], vec![], vec!["c2"]]);
    // Each the same as read alone.
    assert_eq!(found[0], store.get("customers", "c2").await.expect("get").into_iter().collect::<Vec<_>>());
    assert_eq!(found[1], store.find("customers", "plan", &json!("gold"), 10).await.expect("find"));
    // A capped find is capped in the plan too.
    let capped = store.lookup(&[&field("gold")], 1).await.expect("lookup");
    assert_eq!(capped[0].iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), vec!["c1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invites_of_one_email_make_one_customer() {
    let url = pg::database().await;
    let shell = shell(&url).await;
    let client = http();
    let addr = shell.addr;
    let requests = (0..100).map(|_| {
        let client = client.clone();
        async move { invite(&client, addr, "same@example.com", None).await }
    });
    let ids = futures::future::join_all(requests).await;
    let ids: Vec<String> = ids.into_iter().map(|r| r.expect("every invite is answered")).collect();
    assert_eq!(ids.len(), 100);
    assert!(ids.iter().all(|id| *id == ids[0]), "one customer id: {ids:?}");
    let db = pg::client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE kind = 'CustomerInvited'").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE kind = 'InviteCustomer'").await, 100);
    assert_eq!(count(&db, "SELECT count(*) FROM documents WHERE collection = 'customers'").await, 1);
    shell.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_command_id_returns_the_first_result_and_appends_nothing() {
    let url = pg::database().await;
    let shell = shell(&url).await;
    let client = http();
    let first = invite(&client, shell.addr, "once@example.com", Some("order-42")).await.expect("first");
    let again = invite(&client, shell.addr, "once@example.com", Some("order-42")).await.expect("repeat");
    assert_eq!(first, again);
    // Concurrent repeats, and the header form.
    let repeats = (0..5).map(|_| invite(&client, shell.addr, "twice@example.com", Some("order-43")));
    let ids: Vec<String> =
        futures::future::join_all(repeats).await.into_iter().map(|r| r.expect("answered")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    let q = r#"mutation { InviteCustomer(email: "header@example.com") { id } }"#;
    let h1 = graphql(&client, shell.addr, q, Some("key-1")).await.expect("header 1");
    let h2 = graphql(&client, shell.addr, q, Some("key-1")).await.expect("header 2");
    assert_eq!(h1, h2);
    let db = pg::client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE topic = 'commands'").await, 3);
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE kind = 'CustomerInvited'").await, 3);
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE kind = 'CustomerInviteFailed'").await, 0);
    shell.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shells_share_one_database_and_process_each_command_once() {
    let url = pg::database().await;
    let (one, two) = (shell(&url).await, shell(&url).await);
    let client = http();
    let requests = (0..20).map(|i| {
        let (client, addr) = (client.clone(), if i % 2 == 0 { one.addr } else { two.addr });
        async move { (i, invite(&client, addr, &format!("c{i}@example.com"), None).await) }
    });
    let answered = futures::future::join_all(requests).await;
    for (i, id) in &answered {
        let id = id.as_ref().expect("every command is answered by the shell that took it");
        // Queryable through the other shell.
        let other = if i % 2 == 0 { two.addr } else { one.addr };
        let c = customer(&client, other, id).await.expect("the customer is visible in the other shell");
        assert_eq!(c["email"], format!("c{i}@example.com"));
    }
    let db = pg::client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE kind = 'CustomerInvited'").await, 20);
    // Each command caused exactly one event; each event one projection.
    assert_eq!(
        count(&db, "SELECT count(*) FROM (SELECT causation_id FROM events WHERE topic = 'customer' GROUP BY 1 HAVING count(*) > 1) d").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM notifications WHERE message->>'kind' = 'ProjectionComplete'").await,
        20
    );
    one.stop().await.expect("stop one");
    two.stop().await.expect("stop two");
}

/// The `host` binary, killed with SIGKILL when dropped (also on a failed assertion).
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `host run` on `project`, its log in `log`.
fn spawn_host(project: &Path, addr: SocketAddr, log: &Path) -> Process {
    let log = std::fs::File::create(log).expect("create the shell's log");
    // `LOWSHELL_HOST_BIN` overrides the binary: with a target directory
    // shared between checkouts, `target/debug/host` may be another's build.
    let bin = std::env::var_os("LOWSHELL_HOST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_host").into());
    let child = std::process::Command::new(bin)
        .args(["run", "--project"])
        .arg(project)
        .args(["--listen", &addr.to_string()])
        .env("RUST_LOG", "info,wasmtime=warn,cranelift=warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn the host binary");
    Process(child)
}

async fn wait_ready(client: &reqwest::Client, process: &mut Process, addr: SocketAddr, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        if let Ok(Some(status)) = process.0.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the shell at {addr} exited ({status}):\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("the shell at {addr} did not become ready:\n{log}");
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shell_loses_nothing_and_processes_nothing_twice() {
    let url = pg::database().await;
    let dir = std::env::temp_dir().join(format!("lowshell-crash-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("project.toml");
    std::fs::write(&file, project_text(&url, "127.0.0.1:0")).expect("write the project");
    let client = http();
    let addr = free_addr();
    let log = dir.join("first.log");
    let mut process = spawn_host(&file, addr, &log);
    wait_ready(&client, &mut process, addr, &log).await;

    // A stream of commands, 4 at a time; kill the shell while they flow.
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let streams: Vec<_> = (0..4)
        .map(|w| {
            let (client, tx) = (client.clone(), tx.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let email = format!("w{w}-{i}@example.com");
                    match invite(&client, addr, &email, None).await {
                        Ok(id) => {
                            if tx.send((email, id)).is_err() {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut responded = vec![];
    while responded.len() < 40 {
        responded.push(answers.recv().await.expect("answers before the kill"));
    }
    process.0.kill().expect("SIGKILL the shell");
    let _ = process.0.wait();
    for s in streams {
        let _ = s.await;
    }
    while let Ok(answer) = answers.try_recv() {
        responded.push(answer);
    }

    // Restart on the same database.
    let addr = free_addr();
    let log = dir.join("second.log");
    let mut process = spawn_host(&file, addr, &log);
    wait_ready(&client, &mut process, addr, &log).await;
    let db = pg::client(&url).await;
    // Let the restarted shell finish what was in the log.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = count(
            &db,
            "SELECT count(*) FROM events c WHERE c.topic = 'commands' AND NOT EXISTS
               (SELECT 1 FROM notifications n WHERE n.correlation_id = c.id AND n.message->>'kind' = 'ProjectionComplete')",
        )
        .await;
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} commands still unprocessed after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (email, id) in &responded {
        let c = customer(&client, addr, id).await.expect("every answered command has its document");
        assert_eq!(c["email"], *email);
        let n = db
            .query_one(
                "SELECT count(*) FROM events WHERE kind = 'CustomerInvited' AND payload->>'email' = $1",
                &[email],
            )
            .await
            .expect("count events")
            .get::<_, i64>(0);
        assert_eq!(n, 1, "one event for {email}");
    }
    // Nothing processed twice: one event per command, one projection per event.
    assert_eq!(
        count(&db, "SELECT count(*) FROM (SELECT causation_id FROM events WHERE topic = 'customer' GROUP BY 1 HAVING count(*) > 1) d").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM (SELECT message->>'causation-id' FROM notifications GROUP BY 1 HAVING count(*) > 1) d").await,
        0
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM events WHERE topic = 'commands'").await,
        count(&db, "SELECT count(*) FROM events WHERE topic = 'customer'").await,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests waiting in a shell, as a channel of the notifications for them.
struct Waiting(tokio::sync::mpsc::UnboundedSender<low_contract::Message>);

impl Waiting {
    fn new() -> (Arc<Self>, tokio::sync::mpsc::UnboundedReceiver<low_contract::Message>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Arc::new(Self(tx)), rx)
    }
}

impl Requests for Waiting {
    fn notified(
        self: Arc<Self>,
        notification: low_contract::Message,
        _written: &Arc<host::backend::Written>,
    ) {
        let _ = self.0.send(notification);
    }

    fn waiting(&self) -> usize {
        0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_other_shells_whole_however_large() {
    let url = pg::database().await;
    // Two shells: one commits, the other waits for the requests' answers.
    let committing = PgStore::new(Arc::new(Database::connect(&url).await.expect("connect")));
    let waiting = PgBus::start(Arc::new(Database::connect(&url).await.expect("connect")));
    let (requests, mut notifications) = Waiting::new();
    let taker: Weak<dyn Requests> = Arc::downgrade(&requests) as Weak<Waiting>;
    waiting.notifications(taker).await.expect("notifications");
    tokio::time::sleep(Duration::from_millis(300)).await; // listening
    let small = low_contract::Message::new("n-small", "Done", json!({ "ok": true })).correlated("r-1");
    // Beyond what a NOTIFY payload carries: the waiting shell reads it back.
    let large = low_contract::Message::new("n-large", "Done", json!({ "text": "x".repeat(20_000) }))
        .correlated("r-2");
    let commit = Commit { notify: vec![small.clone(), large.clone()], ..Commit::default() };
    committing.commit(commit).await.expect("commit");
    let mut received = vec![];
    while received.len() < 2 {
        let next = tokio::time::timeout(Duration::from_secs(10), notifications.recv()).await;
        received.push(next.expect("a notification in time").expect("the bus is open"));
    }
    received.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(received, [large, small]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_committed_twice_is_applied_once() {
    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect"));
    let bus = PgBus::start(Arc::clone(&db));
    let store = PgStore::with_bus(Arc::clone(&db), bus.clone());
    let (requests, mut notifications) = Waiting::new();
    let taker: Weak<dyn Requests> = Arc::downgrade(&requests) as Weak<Waiting>;
    bus.notifications(taker).await.expect("notifications");
    let command = low_contract::Message::new("c-1", "InviteCustomer", json!({})).correlated("c-1");
    let submitted = host::backend::Event {
        topic: low_contract::COMMANDS_TOPIC.into(),
        message: command,
        function: None,
        version: None,
        at_ms: 0,
    };
    bus.submit(submitted, false).await.expect("submit");
    let mut sub = bus.subscribe("f", &[low_contract::COMMANDS_TOPIC.into()]).await.expect("subscribe");
    let delivery = next(&mut sub, Duration::from_secs(10)).await.expect("the command");
    let step = |n: u32| Commit {
        ops: vec![WriteOp::Put { collection: "c".into(), key: format!("k{n}"), body: json!({}) }],
        checkpoint: Some(Checkpoint::past("f", &delivery)),
        notify: vec![low_contract::Message::new(format!("n{n}"), "Done", json!({})).correlated("c-1")],
        ..Commit::default()
    };
    // Two processors of the same delivery (a lease handed over mid-step):
    // the second finds the checkpoint advanced and changes nothing.
    store.commit(step(1)).await.expect("first");
    store.commit(step(2)).await.expect("the duplicate is dropped, not an error");
    assert!(store.get("c", "k1").await.expect("get").is_some());
    assert!(store.get("c", "k2").await.expect("get").is_none(), "the duplicate step was applied");
    // Only the applied step's answer reaches the requests.
    let mut answered = vec![];
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(500), notifications.recv()).await {
        answered.push(n.id);
    }
    assert_eq!(answered, ["n1"], "the dropped step's notification was handed over");
    // A conflict too is rolled back before its connection is lent again:
    // none of the shell's connections is left inside a transaction.
    let conflicting = Commit {
        ops: vec![WriteOp::Insert { collection: "c".into(), key: "k1".into(), body: json!({}) }],
        ..Commit::default()
    };
    assert!(matches!(store.commit(conflicting).await, Err(host::backend::StoreError::Conflict(_))));
    let watcher = pg::client(&url).await;
    let open = count(
        &watcher,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .await;
    assert_eq!(open, 0, "a connection was left inside a transaction");
}

/// After a crash, an event read before it may be gone — its append was
/// never flushed, nor answered — and its position taken by the next event.
/// A step decided on the lost event, committed after the restart, is
/// dropped (it never passes over the event now there), alone or in a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_on_an_event_a_crash_lost_never_passes_over_the_event_now_at_its_position() {
    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect"));
    let store = PgStore::new(Arc::clone(&db));
    let log = pg::client(&url).await;
    let bus = PgBus::start(Arc::clone(&db));
    log.batch_execute(&format!("{INSERT} ('a', 't', 'A', '{{}}'), ('lost', 't', 'L', '{{}}')"))
        .await
        .expect("append");
    let mut sub = bus.subscribe("f", &["t".into()]).await.expect("subscribe");
    let a = next(&mut sub, Duration::from_secs(10)).await.expect("a");
    let lost = next(&mut sub, Duration::from_secs(10)).await.expect("lost");
    // The crash: `lost` is gone, and its position went to `b`.
    log.batch_execute(&format!(
        "DELETE FROM events WHERE id = 'lost';
         INSERT INTO events (position, id, topic, kind, payload) OVERRIDING SYSTEM VALUE
             VALUES ({}, 'b', 't', 'B', '{{}}')",
        lost.position
    ))
    .await
    .expect("lose an event, reuse its position");
    let step = |key: &str| vec![WriteOp::Put { collection: "c".into(), key: key.into(), body: json!({}) }];

    // Alone: dropped, nothing written, the checkpoint where it was.
    let alone =
        Commit { ops: step("lost"), checkpoint: Some(Checkpoint::past("f", &lost)), ..Commit::default() };
    store.commit(alone).await.expect("dropped, not an error");
    assert!(store.get("c", "lost").await.expect("get").is_none(), "a step on a lost event was applied");
    let stored = "SELECT count(*) FROM checkpoints WHERE consumer = 'f'";
    assert_eq!(count(&log, stored).await, 0, "the checkpoint passed over `b`");

    // In a group with `a`: refused as a whole, to be committed one by one.
    let group = Commit {
        ops: [step("a"), step("lost")].concat(),
        checkpoint: Some(Checkpoint::past("f", &lost)),
        batch_from: Some((a.position, a.event.message.id.clone())),
        ..Commit::default()
    };
    assert!(matches!(store.commit(group).await, Err(host::backend::StoreError::Conflict(_))));
    assert!(store.get("c", "a").await.expect("get").is_none(), "a refused group was applied");

    // `a` alone applies; the consumer then reads `b` at the lost event's position.
    let a_alone = Commit { ops: step("a"), checkpoint: Some(Checkpoint::past("f", &a)), ..Commit::default() };
    store.commit(a_alone).await.expect("a");
    assert!(store.get("c", "a").await.expect("get").is_some());
    drop(sub);
    let mut sub = bus.subscribe("f", &["t".into()]).await.expect("subscribe again");
    let b = next(&mut sub, Duration::from_secs(10)).await.expect("b");
    assert_eq!((b.position, b.event.message.id.as_str()), (lost.position, "b"));
}

/// The shell's sessions end a transaction left idle (a stuck step cannot hold
/// every consumer's horizon forever); options in the URL still win.
#[tokio::test]
async fn a_transaction_left_open_is_ended_by_the_server() {
    let url = pg::database().await;
    let db = Database::connect(&url).await.expect("database");
    let client = db.pool().get().await.expect("a connection");
    let row = client.query_one("SHOW idle_in_transaction_session_timeout", &[]).await.expect("show");
    assert_eq!(row.get::<_, String>(0), "1min");
    let row = client.query_one("SHOW client_min_messages", &[]).await.expect("show");
    assert_eq!(row.get::<_, String>(0), "warning");

    let own = format!(
        "{url}{}options=-c%20idle_in_transaction_session_timeout%3D5s",
        if url.contains('?') { "&" } else { "?" }
    );
    let db = Database::connect(&own).await.expect("database with options");
    let client = db.pool().get().await.expect("a connection");
    let row = client.query_one("SHOW idle_in_transaction_session_timeout", &[]).await.expect("show");
    assert_eq!(row.get::<_, String>(0), "5s");
}

/// The read path has connections of its own: with every one of them busy
/// (a burst of large queries), commits still go through.
#[tokio::test]
async fn reads_cannot_starve_commits() {
    use host::backend::postgres::database::READ_POOL_SIZE;
    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect and migrate"));
    let mut busy = vec![];
    for _ in 0..READ_POOL_SIZE {
        busy.push(db.read_pool().get().await.expect("a read connection"));
    }
    let reads = PgStore::for_reads(Arc::clone(&db));
    let read = tokio::time::timeout(Duration::from_millis(500), reads.get("c", "k")).await;
    assert!(read.is_err(), "every read connection is busy: the read waits");
    let writes = PgStore::new(Arc::clone(&db));
    let put = WriteOp::Put { collection: "c".into(), key: "k".into(), body: low_contract::json!({ "n": 1 }) };
    tokio::time::timeout(
        Duration::from_secs(10),
        writes.commit(Commit { ops: vec![put], ..Commit::default() }),
    )
    .await
    .expect("the commit does not wait for the reads")
    .expect("committed");
    drop(busy);
    let doc = reads.get("c", "k").await.expect("read").expect("the document");
    assert_eq!(doc.version, 1);
}

/// Given a request waiting in a shell, when that shell's projector commits
/// the customer and notifies the request, then the answer is the customer
/// as the commit wrote it — not read back: the request's own store here
/// has nothing (the statement it would send is the answer's only read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_notifying_commit_wrote_is_not_read_back() {
    use host::backend::memory::{MemoryBus, MemoryStore};
    use host::registry::{Functions, Registry};
    use host::responses::{MAX_PENDING, ResponseError, Responses};

    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect"));
    let bus = PgBus::start(Arc::clone(&db));
    let committing = PgStore::with_bus(db, bus.clone());
    let empty: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
    let registry = Arc::new(Registry::new(Functions::new([]).expect("no functions")));
    let responses = Responses::start(registry, empty, Arc::new(bus), Duration::from_secs(10), MAX_PENDING)
        .await
        .expect("responses");
    let ask = |id: &'static str| {
        let responses = Arc::clone(&responses);
        let command = low_contract::Message::new(id, "InviteCustomer", json!({ "email": "a@b.c" }));
        tokio::spawn(async move { responses.request(command, false).await })
    };
    let projected = |id: &str, key: &str| {
        low_contract::Message::new(
            format!("n-{id}"),
            "ProjectionComplete",
            json!({ "collection": "customers", "key": key }),
        )
        .correlated(id)
    };
    let put = |key: &str, body: Value| WriteOp::Put { collection: "customers".into(), key: key.into(), body };

    let customer = json!({ "id": "cust-1", "email": "a@b.c", "invited": true });
    let request = ask("c-1");
    while responses.pending_requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let commit = Commit {
        ops: vec![put("cust-1", customer.clone())],
        notify: vec![projected("c-1", "cust-1")],
        ..Commit::default()
    };
    committing.commit(commit).await.expect("commit");
    assert_eq!(request.await.expect("the request").expect("an answer"), customer);

    // A document the commit did not write is read — from the empty store.
    let request = ask("c-2");
    while responses.pending_requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let commit = Commit {
        ops: vec![put("cust-9", json!({}))],
        notify: vec![projected("c-2", "cust-2")],
        ..Commit::default()
    };
    committing.commit(commit).await.expect("commit");
    let answer = request.await.expect("the request");
    assert_eq!(answer, Err(ResponseError::Failed("document `customers/cust-2` does not exist".into())));
}

/// Commands submitted at once are appended together; one Postgres refuses
/// (a NUL in its payload) fails alone, the others are appended once each,
/// in the log as submitted, and a repeat of one is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_submitted_together_are_appended_each_once_and_a_bad_one_fails_alone() {
    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect"));
    let bus = PgBus::start(Arc::clone(&db));
    let command = |id: String, payload: Value| host::backend::Event {
        topic: low_contract::COMMANDS_TOPIC.into(),
        message: low_contract::Message::new(&id, "InviteCustomer", payload).correlated(&id),
        function: None,
        version: None,
        at_ms: 0,
    };
    let submits = (0..40).map(|n| {
        let payload = if n == 17 { json!({ "email": "nul\u{0}@example.com" }) } else { json!({ "n": n }) };
        bus.submit(command(format!("c-{n}"), payload), false)
    });
    let outcomes = futures::future::join_all(submits).await;
    for (n, outcome) in outcomes.iter().enumerate() {
        match (n, outcome) {
            (17, Err(host::backend::BusError::Invalid(e))) => assert!(e.contains("Unicode"), "{e}"),
            (17, other) => panic!("the bad command: {other:?}"),
            (_, Ok(host::backend::Submitted::Accepted)) => {}
            (n, other) => panic!("command {n}: {other:?}"),
        }
    }
    let raw = pg::client(&url).await;
    let logged: Vec<String> = raw
        .query("SELECT id FROM events WHERE topic = 'commands' ORDER BY position", &[])
        .await
        .expect("read the log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = (0..40).filter(|&n| n != 17).map(|n| format!("c-{n}")).collect();
    assert_eq!(logged, expected, "each once, in the order submitted");
    let repeat = bus.submit(command("c-3".into(), json!({ "n": 3 })), false).await.expect("a repeat");
    assert!(matches!(repeat, host::backend::Submitted::Duplicate { .. }), "{repeat:?}");
    assert_eq!(count(&raw, "SELECT count(*) FROM events WHERE topic = 'commands'").await, 39);
}

/// A commit carries another consumer's steps on the events it appends
/// (chained) only when that consumer misses nothing by it: it had processed
/// every event of its topics before them, and no older transaction, which
/// could still append one ordered before them, is open. Otherwise the
/// commit applies alone and the consumer reads the events as usual.
#[tokio::test]
async fn a_chained_part_applies_only_when_its_consumer_misses_nothing() {
    // Its own cluster: transactions of other tests' databases would hold
    // the oldest running transaction back.
    let cluster = pg::OwnCluster::start();
    let url = cluster.database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect"));
    let bus = PgBus::start(Arc::clone(&db));
    let store = PgStore::with_bus(Arc::clone(&db), bus.clone());
    let event = |id: &str| host::backend::Event {
        topic: "t".into(),
        message: low_contract::Message::new(id, "Happened", json!({})),
        function: Some("h".into()),
        version: None,
        at_ms: 0,
    };
    let put = |key: &str| WriteOp::Put { collection: "c".into(), key: key.into(), body: json!({}) };
    let emitted =
        |id: &str, key: &str| Commit { events: vec![event(id)], ops: vec![put(key)], ..Commit::default() };
    let chained = |key: &str| Chained {
        consumer: "p".into(),
        topics: vec!["t".into()],
        ops: vec![put(key)],
        ..Chained::default()
    };
    let stored = |key: &'static str| {
        let store = &store;
        async move { store.get("c", key).await.expect("get").is_some() }
    };
    // `p` reads `t` and has processed its first event.
    store.commit(emitted("e0", "h0")).await.expect("append e0");
    let mut p = bus.subscribe("p", &["t".into()]).await.expect("subscribe");
    assert_eq!(processed_by(&mut p, &store, "p", 1).await, ["e0"]);

    assert_eq!(
        store.commit_chained(emitted("e1", "h1"), vec![chained("p1")]).await.expect("commit"),
        1,
        "caught up: chained"
    );
    assert!(stored("h1").await && stored("p1").await);
    assert!(next(&mut p, Duration::from_secs(1)).await.is_none(), "p's checkpoint is past e1");

    // An event of `t` that `p` has not processed yet.
    store.commit(emitted("e2", "h2")).await.expect("append e2");
    assert_eq!(
        store.commit_chained(emitted("e3", "h3"), vec![chained("p3")]).await.expect("commit"),
        0,
        "e2 not processed"
    );
    assert!(stored("h3").await && !stored("p3").await, "the commit applies alone");
    assert_eq!(processed_by(&mut p, &store, "p", 2).await, ["e2", "e3"], "p reads both itself");

    // An older transaction still open (it holds a transaction id).
    let open = pg::client(&url).await;
    open.batch_execute("BEGIN; SELECT pg_current_xact_id()").await.expect("open a transaction");
    assert_eq!(
        store.commit_chained(emitted("e4", "h4"), vec![chained("p4")]).await.expect("commit"),
        0,
        "older one open"
    );
    assert!(stored("h4").await && !stored("p4").await);
    open.batch_execute("COMMIT").await.expect("end it");
    assert_eq!(processed_by(&mut p, &store, "p", 1).await, ["e4"]);

    // Caught up again, nothing open: chained, and nothing left for `p`.
    assert_eq!(store.commit_chained(emitted("e5", "h5"), vec![chained("p5")]).await.expect("commit"), 1);
    assert!(stored("p5").await);
    assert!(next(&mut p, Duration::from_secs(1)).await.is_none(), "p's checkpoint is past e5");

    // Two parts, the second on the first one's events (`q` reads `u`, what
    // `p` emits): they apply in order, up to the first that cannot.
    let mut q = bus.subscribe("q", &["u".into()]).await.expect("subscribe");
    let on = |topic: &str, id: &str| host::backend::Event { topic: topic.into(), ..event(id) };
    let emitting = |key: &str, id: &str| Chained { events: vec![on("u", id)], ..chained(key) };
    let on_u = |key: &str| Chained { consumer: "q".into(), topics: vec!["u".into()], ..chained(key) };
    store.commit(Commit { events: vec![on("u", "u0")], ..Commit::default() }).await.expect("append u0");
    assert_eq!(processed_by(&mut q, &store, "q", 1).await, ["u0"]);
    let parts = vec![emitting("p6", "u6"), on_u("q6")];
    assert_eq!(store.commit_chained(emitted("e6", "h6"), parts).await.expect("commit"), 2, "both caught up");
    assert!(stored("p6").await && stored("q6").await);
    assert!(next(&mut p, Duration::from_millis(500)).await.is_none(), "p is past e6");
    assert!(next(&mut q, Duration::from_millis(500)).await.is_none(), "q is past u6");

    // `q` has an event it has not processed: the first part applies alone.
    store.commit(Commit { events: vec![on("u", "u7")], ..Commit::default() }).await.expect("append u7");
    let parts = vec![emitting("p8", "u8"), on_u("q8")];
    assert_eq!(store.commit_chained(emitted("e8", "h8"), parts).await.expect("commit"), 1, "q is behind");
    assert!(stored("p8").await && !stored("q8").await);
    assert!(next(&mut p, Duration::from_millis(500)).await.is_none(), "p is past e8");
    assert_eq!(processed_by(&mut q, &store, "q", 2).await, ["u7", "u8"], "q reads both itself");

    // `p` is behind: neither part applies (the second is on the first's events).
    store.commit(emitted("e9", "h9")).await.expect("append e9");
    let parts = vec![emitting("p10", "u10"), on_u("q10")];
    assert_eq!(store.commit_chained(emitted("e10", "h10"), parts).await.expect("commit"), 0, "p is behind");
    assert!(stored("h10").await && !stored("p10").await && !stored("q10").await);
    assert_eq!(processed_by(&mut p, &store, "p", 2).await, ["e9", "e10"]);

    // Parts go without savepoints unless one was declined in the last
    // second: a second on, `q` behind again, the transaction is rolled back
    // and flown again with them, and the first part still applies.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    store.commit(Commit { events: vec![on("u", "u11")], ..Commit::default() }).await.expect("append u11");
    let parts = vec![emitting("p12", "u12"), on_u("q12")];
    assert_eq!(store.commit_chained(emitted("e12", "h12"), parts).await.expect("commit"), 1, "q is behind");
    assert!(stored("h12").await && stored("p12").await && !stored("q12").await);
    assert!(next(&mut p, Duration::from_millis(500)).await.is_none(), "p is past e12");
    assert_eq!(processed_by(&mut q, &store, "q", 2).await, ["u11", "u12"], "q reads both itself");
    let events: i64 = pg::client(&url)
        .await
        .query_one("SELECT count(*) FROM events WHERE id IN ('e12', 'u12')", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(events, 2, "each appended once");
}

/// Steps that panic while the appender chains them to submitted commands.
struct Panicking;

#[async_trait::async_trait]
impl host::backend::CommandChain for Panicking {
    async fn append(
        &self,
        _commands: &[host::backend::Event],
    ) -> Option<Result<(), host::backend::StoreError>> {
        panic!("a bug in the chained steps")
    }
}

/// A bug in the steps chained to submitted commands does not end the
/// appender: each command is appended alone for its consumer, and the
/// commands after it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_chained_steps_appends_the_commands_alone() {
    let url = pg::database().await;
    let db = Arc::new(Database::connect(&url).await.expect("connect"));
    let bus = PgBus::start(Arc::clone(&db));
    let chain: Arc<dyn host::backend::CommandChain> = Arc::new(Panicking);
    bus.chain_commands(Arc::downgrade(&chain));
    let mut sub = bus.subscribe("f", &[low_contract::COMMANDS_TOPIC.into()]).await.expect("subscribe");
    let command = |id: &str| host::backend::Event {
        topic: low_contract::COMMANDS_TOPIC.into(),
        message: low_contract::Message::new(id, "InviteCustomer", json!({})).correlated(id),
        function: None,
        version: None,
        at_ms: 0,
    };
    for id in ["c-1", "c-2"] {
        let submitted = tokio::time::timeout(Duration::from_secs(10), bus.submit(command(id), false))
            .await
            .expect("answered")
            .expect("appended alone");
        assert_eq!(submitted, host::backend::Submitted::Accepted);
    }
    let mut delivered = vec![];
    while delivered.len() < 2 {
        let delivery = next(&mut sub, Duration::from_secs(10)).await.expect("a command");
        delivered.push(delivery.event.message.id.clone());
    }
    assert_eq!(delivered, ["c-1", "c-2"]);
}

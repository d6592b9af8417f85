//! Postgres stopped (or crashed) under load and started again: the shell stays up,
//! reports not-ready and answers with clear errors meanwhile, reconnects on
//! its own, and afterwards every acknowledged command is in the log and the
//! read model, exactly once. Runs on a cluster of its own (see
//! `support/pg.rs`), since it stops it. Needs `make guest`.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::{Project, Shell};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The shell's response timeout: no answer may take much longer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENTS: usize = 4;
const TOKEN: &str = "outage-s3cret";

fn project(url: &str) -> Project {
    let text = pg::project_text(url, "127.0.0.1:0", RESPONSE_TIMEOUT.as_millis());
    let mut project = Project::parse(&text, Path::new(".")).expect("test project");
    project.watch = false;
    project.admin.token = Some(TOKEN.into());
    project
}

/// What one mutation got.
#[derive(Debug)]
enum Outcome {
    Acknowledged { email: String, id: String },
    Refused { status: u16, message: String, took: Duration },
}

async fn invite(http: &reqwest::Client, base: &str, email: &str) -> Outcome {
    let started = Instant::now();
    let query = format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ id email }} }}"#);
    let response = http.post(format!("{base}/graphql")).json(&json!({ "query": query })).send().await;
    let took = started.elapsed();
    let response = match response {
        Ok(r) => r,
        Err(e) => panic!("{email}: no HTTP answer after {took:?}: {e}"),
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match body["data"]["InviteCustomer"]["id"].as_str() {
        Some(id) if status == 200 && body.get("errors").is_none() => {
            Outcome::Acknowledged { email: email.into(), id: id.into() }
        }
        _ => Outcome::Refused {
            status,
            message: body["errors"][0]["message"].as_str().unwrap_or_default().to_owned(),
            took,
        },
    }
}

async fn readyz(http: &reqwest::Client, base: &str) -> u16 {
    match http.get(format!("{base}/readyz")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("/readyz does not answer: {e}"),
    }
}

async fn wait_readyz(http: &reqwest::Client, base: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = readyz(http, base).await;
        if status == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "/readyz still {status}, not {want}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_and_started_again() {
    outage(Stop::Fast).await;
}

/// Commands are appended without waiting for the WAL flush: a crash may
/// lose one that was never answered, never one that was. (The cluster
/// keeps `synchronous_commit` on, as a production server does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_under_load_and_started_again() {
    outage(Stop::Crash).await;
}

/// What the log, the checkpoints and the parked events say about `email`'s
/// invitation: for a failure message.
async fn diagnose(db: &tokio_postgres::Client, email: &str) -> String {
    let mut lines = vec![];
    let queries = [
        ("events", format!(
            "SELECT topic, kind, tx::text, position, id, causation_id, at::text FROM events
             WHERE payload->>'email' = '{email}' OR id IN (SELECT causation_id FROM events WHERE payload->>'email' = '{email}')
             ORDER BY position")),
        ("checkpoints", "SELECT consumer, tx::text, position, updated_at::text FROM checkpoints ORDER BY consumer".to_owned()),
        ("parked", "SELECT consumer, position, error, attempts FROM parked ORDER BY consumer, position".to_owned()),
        ("horizon", "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, pg_current_snapshot()::text".to_owned()),
    ];
    for (what, sql) in queries {
        match db.simple_query(&sql).await {
            Ok(messages) => {
                for m in messages {
                    if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                        let cells: Vec<&str> = (0..row.len()).map(|i| row.get(i).unwrap_or("NULL")).collect();
                        lines.push(format!("{what}: {}", cells.join(" | ")));
                    }
                }
            }
            Err(e) => lines.push(format!("{what}: {e}")),
        }
    }
    lines.join("\n")
}

/// How Postgres goes away.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// A clean shutdown (`-m fast`): what was committed is kept.
    Fast,
    /// A crash (`-m immediate`): WAL not yet written out is lost.
    Crash,
}

async fn outage(how: Stop) {
    let cluster = pg::OwnCluster::start();
    let url = cluster.database().await;
    let shell = Shell::start(project(&url)).await.expect("start the shell (run `make guest` first)");
    let base = format!("http://{}", shell.addr);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client");
    assert_eq!(readyz(&http, &base).await, 200);

    // Clients send mutations throughout.
    let down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, base, down, stop) = (http.clone(), base.clone(), down.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = vec![];
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let was_down = down.load(Ordering::Relaxed);
                    let outcome = invite(&http, &base, &format!("c{c}-{i}@example.com")).await;
                    let refused = matches!(outcome, Outcome::Refused { .. });
                    outcomes.push((was_down, outcome));
                    if refused {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                outcomes
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;

    // Stop Postgres under load.
    down.store(true, Ordering::Relaxed);
    tokio::task::block_in_place(|| match how {
        Stop::Fast => cluster.stop(),
        Stop::Crash => cluster.crash(),
    });
    let not_ready = wait_readyz(&http, &base, 503, Duration::from_secs(15)).await;
    eprintln!("/readyz 503 {not_ready:?} after the stop");
    // A deploy cannot be recorded, so it is refused, plainly.
    let v2 = std::fs::read(support::module("v2/invite-customer")).expect("v2");
    let response = http
        .put(format!("{base}/admin/functions/invite-customer"))
        .bearer_auth(TOKEN)
        .body(v2)
        .send()
        .await
        .expect("admin request");
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.expect("json");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("cannot record the deployment")), "{body}");
    // Longer than the response timeout: mutations sent while it is down are answered.
    tokio::time::sleep(RESPONSE_TIMEOUT * 2).await;
    assert_eq!(readyz(&http, &base).await, 503, "still down");

    // Start it again: the shell reconnects on its own.
    tokio::task::block_in_place(|| cluster.restart());
    let ready = wait_readyz(&http, &base, 200, Duration::from_secs(30)).await;
    down.store(false, Ordering::Relaxed);
    eprintln!("/readyz 200 {ready:?} after the restart");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acknowledged = vec![];
    let (mut refused_down, mut refused_up) = (vec![], vec![]);
    for client in clients {
        for (was_down, outcome) in client.await.expect("a client") {
            match outcome {
                Outcome::Acknowledged { email, id } => acknowledged.push((email, id)),
                Outcome::Refused { status, message, took } => {
                    // A clear GraphQL error, not a 500 and not a hang.
                    assert_eq!(status, 200, "a refusal is a GraphQL error: {message}");
                    assert!(!message.is_empty(), "a refusal says why");
                    assert!(
                        took < RESPONSE_TIMEOUT + Duration::from_secs(10),
                        "answered after {took:?}: {message}"
                    );
                    if was_down { refused_down.push(message) } else { refused_up.push(message) }
                }
            }
        }
    }
    eprintln!(
        "{} acknowledged; {} refused while down, {} around the restart",
        acknowledged.len(),
        refused_down.len(),
        refused_up.len()
    );
    let mut messages: Vec<&String> = refused_down.iter().chain(&refused_up).collect();
    messages.sort();
    messages.dedup();
    eprintln!("refusals: {messages:#?}");
    assert!(!refused_down.is_empty(), "mutations were refused while Postgres was down");
    assert!(acknowledged.len() > CLIENTS, "mutations were acknowledged before the outage");

    // Every acknowledged command is in the log once and in the read model.
    let db = pg::client(&url).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (email, id) in &acknowledged {
        let events: i64 = db
            .query_one(
                "SELECT count(*) FROM events WHERE kind = 'CustomerInvited' AND payload->>'email' = $1",
                &[email],
            )
            .await
            .expect("count events")
            .get(0);
        if events != 1 {
            let state = diagnose(&db, email).await;
            panic!("{events} CustomerInvited for {email} ({id}), not one\n{state}");
        }
        loop {
            let query = format!(r#"{{ customer(id: "{id}") {{ id email }} }}"#);
            let body: Value = http
                .post(format!("{base}/graphql"))
                .json(&json!({ "query": query }))
                .send()
                .await
                .expect("query")
                .json()
                .await
                .expect("json");
            if body["data"]["customer"]["email"] == *email.as_str() {
                break;
            }
            if Instant::now() >= deadline {
                let state = diagnose(&db, email).await;
                panic!("{email} ({id}) is not in the read model: {body}\n{state}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The consumers resumed from their checkpoints: every command in the
    // log, those in flight when Postgres stopped included, got handled.
    loop {
        let pending: i64 = db
            .query_one(
                "SELECT count(*) FROM events c WHERE c.topic = 'commands' AND NOT EXISTS
                   (SELECT 1 FROM events e WHERE e.topic = 'customer' AND e.causation_id = c.id)",
                &[],
            )
            .await
            .expect("count pending commands")
            .get(0);
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} commands in the log were never handled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing processed twice, and the consumers caught up.
    let twice: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT causation_id FROM events WHERE topic = 'customer'
               GROUP BY 1 HAVING count(*) > 1) d",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(twice, 0, "no command handled twice");

    // New mutations succeed.
    match invite(&http, &base, "after@example.com").await {
        Outcome::Acknowledged { .. } => {}
        refused => panic!("a mutation after the restart: {refused:?}"),
    }
    shell.stop().await.expect("clean stop");
    drop(cluster);
}

/// The `events` subscription across a crash that lost appends it had
/// shown: the restarted server hands their transaction ids and positions
/// out again, and the watchers still see what is appended afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_what_is_appended_after_a_crash_that_lost_what_they_saw() {
    use host::backend::Bus;
    use host::backend::postgres::PgBus;
    use host::backend::postgres::database::Database;
    // The WAL writer waits 10 s: the last appends below are still unwritten at the crash.
    let cluster = pg::OwnCluster::start_with("-c wal_writer_delay=10s");
    let url = cluster.database().await;
    let bus = PgBus::start(Arc::new(Database::connect(&url).await.expect("migrate")));
    let mut watcher = bus.watch_events().expect("watch the log");
    let db = pg::client(&url).await;
    // The tail starts at the end of the log, in a task of its own: appends
    // until one is shown tell that it runs.
    for k in 0.. {
        let probe = format!("probe-{k}");
        db.batch_execute(&format!(
            "INSERT INTO events (id, topic, kind, payload) VALUES ('{probe}', 't', 'K', '{{}}')"
        ))
        .await
        .expect("append a probe");
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1500), watcher.recv()).await {
            break;
        }
        assert!(k < 20, "the watcher shows nothing");
    }
    db.batch_execute("SET synchronous_commit = off").await.expect("asynchronous commits");
    for i in 0..20 {
        db.batch_execute(&format!(
            "INSERT INTO events (id, topic, kind, payload) VALUES ('before-{i}', 't', 'K', '{{}}')"
        ))
        .await
        .expect("append");
    }
    next_id(&mut watcher, "before-19").await;
    tokio::task::block_in_place(|| {
        cluster.crash();
        cluster.restart();
    });
    let db = pg::client(&url).await;
    let kept: i64 = db
        .query_one("SELECT count(*) FROM events WHERE id LIKE 'before-%'", &[])
        .await
        .expect("count")
        .get(0);
    eprintln!("{kept} of 20 appends survived the crash");
    for i in 0..3 {
        db.batch_execute(&format!(
            "INSERT INTO events (id, topic, kind, payload) VALUES ('after-{i}', 't', 'K', '{{}}')"
        ))
        .await
        .expect("append after the restart");
    }
    let shown = next_id(&mut watcher, "after-2").await;
    assert_eq!(shown, ["after-0", "after-1"], "shown after the restart, in order, before after-2");
}

/// Waits (up to 30 s) for the watcher to show the event `id`; the ids it
/// showed before it.
async fn next_id(
    watcher: &mut tokio::sync::broadcast::Receiver<Arc<host::backend::Event>>,
    id: &str,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut shown = vec![];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, watcher.recv()).await {
            Ok(Ok(event)) if event.message.id == id => return shown,
            Ok(Ok(event)) => shown.push(event.message.id.clone()),
            Ok(Err(e)) => panic!("the watcher: {e}"),
            Err(_) => panic!("{id} was not shown within 30 s; shown: {shown:?}"),
        }
    }
}

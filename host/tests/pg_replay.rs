//! `host replay` and the consumers' leases against a real Postgres (see
//! `support/pg.rs`). Needs `make guest`.

#[path = "support/pg.rs"]
mod pg;
mod support;

use futures::StreamExt;
use host::backend::Bus;
use host::backend::postgres::PgBus;
use host::backend::postgres::database::{Database, lease_id, try_lease};
use host::backend::postgres::replay::{Replayed, Start, Stopped, VersionSource};
use host::runtime::Version;
use host::{Project, Shell};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::module;

const TOKEN: &str = "replay-s3cret";

fn project(url: &str) -> Project {
    support::project_from(&pg::project_text(url, "127.0.0.1:0", 60_000), TOKEN)
}

async fn shell(url: &str) -> Shell {
    Shell::start(project(url)).await.expect("start a Postgres shell (run `make guest` first)")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().expect("http client")
}

/// Invites `email` through the shell at `addr`; the customer's id.
async fn invite(client: &reqwest::Client, addr: SocketAddr, email: &str) -> Result<String, String> {
    let query = format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ id email }} }}"#);
    let response = client
        .post(format!("http://{addr}/graphql"))
        .json(&json!({ "query": query }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    body["data"]["InviteCustomer"]["id"].as_str().map(str::to_owned).ok_or_else(|| body.to_string())
}

type Documents = Vec<(String, i64, String)>;

/// The `customers` read model, whole.
async fn customers(db: &tokio_postgres::Client) -> Documents {
    db.query(
        "SELECT key, version, body::text FROM documents WHERE collection = 'customers' ORDER BY key",
        &[],
    )
    .await
    .expect("read the customers")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

async fn checkpoint(db: &tokio_postgres::Client) -> i64 {
    db.query_opt("SELECT position FROM checkpoints WHERE consumer = 'customer-projector'", &[])
        .await
        .expect("read the checkpoint")
        .map_or(0, |r| r.get(0))
}

async fn replay(url: &str, start: Start) -> anyhow::Result<Replayed> {
    let mut done =
        host::backend::postgres::replay::replay(&project(url), Some("customer-projector"), start).await?;
    assert_eq!(done.len(), 1);
    Ok(done.remove(0))
}

/// The next transaction id the cluster will assign (taking one).
async fn next_xid(db: &tokio_postgres::Client) -> i64 {
    db.query_one("SELECT pg_current_xact_id()::text::bigint", &[]).await.expect("xid").get(0)
}

/// Uses up transaction ids until the next one is `target` or beyond: one
/// subtransaction that writes per id.
async fn burn_xids_to(db: &tokio_postgres::Client, target: i64) {
    let n = target - next_xid(db).await;
    if n > 0 {
        db.batch_execute(&format!(
            "CREATE TEMP TABLE burn (x int);
             DO $$ BEGIN
               FOR i IN 1..{n} LOOP
                 BEGIN INSERT INTO burn VALUES (i); EXCEPTION WHEN others THEN NULL; END;
               END LOOP;
             END $$;
             DROP TABLE burn;"
        ))
        .await
        .expect("burn transaction ids");
    }
    assert!(next_xid(db).await >= target);
}

/// Issue: replay sorted the log by `tx::text`, so after the xids gained a
/// digit ("1000" < "744") the checkpoint jumped ahead and the events of the
/// shorter xids were dropped as "already processed", while it reported them
/// all replayed. Two shells write concurrently, below the boundary and above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_equals_the_live_read_model_across_an_xid_digit_boundary() {
    const CUSTOMERS: usize = 300;
    // A cluster of its own: the xids are the cluster's, and this test
    // places them around a power of ten.
    let cluster = pg::OwnCluster::start();
    let url = cluster.database().await;
    Database::connect(&url).await.expect("migrate");
    let db = pg::client(&url).await;
    // Commands are appended and steps committed in groups, so how many xids
    // a workload takes depends on the timing: half of it goes below the
    // boundary (with room to spare: never more than ~3 xids an invitation),
    // the ids are used up to the boundary, and the other half goes above.
    let lead = 1000;
    let mut boundary = 10;
    while boundary <= next_xid(&db).await + lead {
        boundary *= 10;
    }
    burn_xids_to(&db, boundary - lead).await;

    let (one, two) = (shell(&url).await, shell(&url).await);
    let client = http();
    let wave = |range: std::ops::Range<usize>| {
        let client = client.clone();
        futures::stream::iter(range)
            .map(move |i| {
                let (client, addr) = (client.clone(), if i % 2 == 0 { one.addr } else { two.addr });
                async move { invite(&client, addr, &format!("x{i}@example.com")).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
    };
    let mut answered = wave(0..CUSTOMERS / 2).await;
    assert!(next_xid(&db).await < boundary, "the first half stays below xid {boundary}");
    burn_xids_to(&db, boundary).await;
    answered.extend(wave(CUSTOMERS / 2..CUSTOMERS).await);
    for id in &answered {
        id.as_ref().expect("every invitation is answered");
    }
    one.stop().await.expect("stop one");
    two.stop().await.expect("stop two");

    let crossing = db
        .query_one(
            "SELECT count(*) FILTER (WHERE tx::text::bigint < $1), count(*) FILTER (WHERE tx::text::bigint >= $1)
             FROM events WHERE topic = 'customer'",
            &[&boundary],
        )
        .await
        .expect("events around the boundary");
    let (below, above): (i64, i64) = (crossing.get(0), crossing.get(1));
    assert!(below > 0 && above > 0, "the events must straddle xid {boundary}: {below} below, {above} above");
    let live = customers(&db).await;
    assert_eq!(live.len(), CUSTOMERS);

    let done = replay(&url, Start::Scratch).await.expect("replay");
    assert_eq!(done.events, CUSTOMERS as u64);
    assert_eq!(done.cleared, Some(CUSTOMERS as u64));
    assert_eq!(customers(&db).await, live, "the replayed read model is the live one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_the_live_read_model() {
    let url = pg::database().await;
    let shell = shell(&url).await;
    let client = http();
    for i in 0..10 {
        // Repeated emails: `CustomerInviteFailed`, the document projected again.
        invite(&client, shell.addr, &format!("r{}@example.com", i % 7)).await.expect("invite");
    }
    shell.stop().await.expect("stop");
    let db = pg::client(&url).await;
    let live = customers(&db).await;
    assert_eq!(live.len(), 7);
    let done = replay(&url, Start::Scratch).await.expect("replay");
    assert_eq!(done.events, 10);
    assert_eq!(done.from, 0);
    assert_eq!(customers(&db).await, live);
    // Replayed as the live consumer runs: the steps at hand in one commit.
    let commits = "SELECT count(DISTINCT xmin::text) FROM documents WHERE collection = 'customers'";
    assert_eq!(count(&db, commits).await, 1, "the ten events are replayed in one commit");
    // Resumed at the end: nothing left, nothing cleared.
    let again = replay(&url, Start::Checkpoint).await.expect("resume");
    assert_eq!((again.events, again.cleared), (0, None));
    assert_eq!(customers(&db).await, live);
}

/// The projector's component with a custom section appended: another
/// version (another sha256), the same behaviour.
fn projector_variant() -> Vec<u8> {
    let mut bytes = std::fs::read(module("customer-projector")).expect("the projector");
    let name = b"lowshell-replay-test";
    let payload = b"variant";
    let size = 1 + name.len() + payload.len();
    bytes.push(0); // custom section
    bytes.push(u8::try_from(size).expect("a short section")); // LEB128, < 128
    bytes.push(u8::try_from(name.len()).expect("a short name"));
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    bytes
}

/// Issue: replay loaded the module files even when the cluster had
/// deployed another version of the projector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_runs_the_recorded_version() {
    let url = pg::database().await;
    let file = Version::of(&std::fs::read(module("customer-projector")).expect("the projector"));
    let variant_bytes = projector_variant();
    let variant = Version::of(&variant_bytes);
    assert_ne!(file, variant);
    let first = shell(&url).await;
    let client = http();
    invite(&client, first.addr, "v1@example.com").await.expect("invite");
    first.stop().await.expect("stop");

    // Nothing recorded: the module file.
    let done = replay(&url, Start::Scratch).await.expect("replay");
    assert_eq!((done.version.clone(), done.source), (file.clone(), VersionSource::File));

    // Deployed through a shell: the recorded version.
    let second = shell(&url).await;
    let response = client
        .put(format!("http://{}/admin/functions/customer-projector", second.addr))
        .bearer_auth(TOKEN)
        .body(variant_bytes)
        .send()
        .await
        .expect("deploy");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    invite(&client, second.addr, "v2@example.com").await.expect("invite");
    second.stop().await.expect("stop");
    let done = replay(&url, Start::Scratch).await.expect("replay");
    assert_eq!((done.version, done.source), (variant, VersionSource::Recorded));
    assert_eq!(done.events, 2);
}

/// Issue: replay skipped an event the projector failed on, and reported
/// success. Now it stops there, keeps the checkpoint at the event before,
/// and `host replay --resume` goes on from it once the cause is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_stops_at_an_event_it_cannot_apply_and_resumes_from_there() {
    let url = pg::database().await;
    let shell = shell(&url).await;
    let client = http();
    for i in 0..5 {
        invite(&client, shell.addr, &format!("before{i}@example.com")).await.expect("invite");
    }
    // An event the projector cannot apply: it would write a document with
    // an empty key (the live consumer reports it failed and moves on).
    let db = pg::client(&url).await;
    let bad: i64 = db
        .query_one(
            r#"INSERT INTO events (id, topic, kind, payload)
               VALUES ('bad-event', 'customer', 'CustomerInvited', '{"customer-id": "", "email": "bad@example.com"}')
               RETURNING position"#,
            &[],
        )
        .await
        .expect("append a bad event")
        .get(0);
    for i in 0..5 {
        invite(&client, shell.addr, &format!("after{i}@example.com")).await.expect("invite");
    }
    shell.stop().await.expect("stop");
    let live = customers(&db).await;
    assert_eq!(live.len(), 10);
    let before_bad: i64 = count(
        &db,
        &format!("SELECT max(position) FROM events WHERE topic = 'customer' AND position < {bad}"),
    )
    .await;

    for start in [Start::Scratch, Start::Checkpoint] {
        let error = replay(&url, start).await.expect_err("the replay must stop at the bad event");
        let stopped = error.downcast_ref::<Stopped>().expect("a stopped replay");
        assert_eq!(stopped.function, "customer-projector");
        assert_eq!(stopped.position, Some(u64::try_from(bad).expect("position")));
        assert!(stopped.cause.contains("empty key"), "{}", stopped.cause);
        assert_eq!(stopped.checkpoint, u64::try_from(before_bad).expect("position"));
        let message = error.to_string();
        assert!(message.contains(&format!("log position {bad}")), "{message}");
        assert!(message.contains("--resume"), "{message}");
        assert_eq!(checkpoint(&db).await, before_bad, "the checkpoint stays at the last event applied");
        assert_eq!(customers(&db).await.len(), 5);
    }
    assert_eq!(
        replay(&url, Start::Scratch)
            .await
            .expect_err("stops again")
            .downcast_ref::<Stopped>()
            .map(|s| s.applied),
        Some(5)
    );

    // The operator removes the bad event; the replay goes on where it stopped.
    db.execute("DELETE FROM events WHERE id = 'bad-event'", &[]).await.expect("remove the bad event");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("project.toml");
    std::fs::write(&file, pg::project_text(&url, "127.0.0.1:0", 60_000)).expect("write the project");
    let bin = std::env::var_os("LOWSHELL_HOST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_host").into());
    let output = std::process::Command::new(bin)
        .args(["replay", "--resume", "--function", "customer-projector", "--project"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run host replay --resume");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("replayed 5 events"), "{stdout}");
    assert!(stdout.contains(&format!("resumed after log position {before_bad}")), "{stdout}");
    assert_eq!(customers(&db).await, live);
}

/// Issue: replay skipped events on transient errors too. Connections in the
/// middle of a query are cut while it runs: it retries and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rides_out_cut_connections() {
    const EVENTS: i64 = 2000;
    let url = pg::database().await;
    Database::connect(&url).await.expect("migrate");
    let db = pg::client(&url).await;
    db.execute(
        r#"INSERT INTO events (id, topic, kind, payload)
           SELECT 'e' || i, 'customer', 'CustomerInvited',
                  jsonb_build_object('customer-id', 'c' || i, 'email', 'c' || i || '@example.com')
           FROM generate_series(1, $1::bigint) i"#,
        &[&EVENTS],
    )
    .await
    .expect("append events");

    let replaying = tokio::spawn({
        let url = url.clone();
        async move { replay(&url, Start::Scratch).await }
    });
    // Cut the busy connections (not the one holding the lease: losing it
    // stops a replay) a few times while it runs, a while apart.
    let started = Instant::now();
    let (mut cuts, mut last_cut) = (0, Instant::now());
    while !replaying.is_finished() && started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if cuts >= 5 || last_cut.elapsed() < Duration::from_millis(500) || checkpoint(&db).await == 0 {
            continue;
        }
        let cut = count(
            &db,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND backend_type = 'client backend' AND state IN ('active', 'idle in transaction')
               AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')",
        )
        .await;
        if cut > 0 {
            cuts += cut;
            last_cut = Instant::now();
        }
    }
    let done = replaying.await.expect("the replay task").expect("the replay rides out the cuts");
    assert!(cuts > 0, "no connection was cut while the replay ran");
    eprintln!("{cuts} connections cut during the replay, which took {:?}", started.elapsed());
    assert_eq!(done.events, EVENTS as u64);
    let documents = customers(&db).await;
    assert_eq!(documents.len(), EVENTS as usize);
    assert!(documents.iter().all(|(_, version, _)| *version == 1));
}

/// Two names whose `hashtext` collides, found by brute force.
async fn colliding_names(db: &tokio_postgres::Client) -> (String, String) {
    let row = db
        .query_one(
            "SELECT min(name), max(name) FROM (
                 SELECT 'consumer-' || i AS name FROM generate_series(1, 400000) i) n
             GROUP BY hashtext(name) HAVING count(*) > 1 LIMIT 1",
            &[],
        )
        .await
        .expect("two names with one hashtext");
    (row.get(0), row.get(1))
}

/// Issue: the lease was `hashtext(name)`: two consumers whose names hash
/// alike shared one lock, so one of them never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_whose_names_hash_alike_hold_separate_leases() {
    let url = pg::database().await;
    let database = Arc::new(Database::connect(&url).await.expect("migrate"));
    let db = pg::client(&url).await;
    let (a, b) = colliding_names(&db).await;
    let hashes =
        db.query_one("SELECT hashtext($1), hashtext($2)", &[&a, &b]).await.expect("hash").get::<_, i32>(0);
    eprintln!("`{a}` and `{b}` both hash to {hashes}");

    // The mapping: distinct ids, stable, never the migration lock's 0.
    let (id_a, id_b) = (lease_id(&db, &a).await.expect("id"), lease_id(&db, &b).await.expect("id"));
    assert_ne!(id_a, id_b);
    assert!(id_a > 0 && id_b > 0);
    assert_eq!(lease_id(&db, &a).await.expect("id"), id_a);
    let other = pg::client(&url).await;
    assert!(try_lease(&db, id_a).await.expect("lock a"));
    assert!(try_lease(&other, id_b).await.expect("lock b"), "b's lease is not a's");
    assert!(!try_lease(&other, id_a).await.expect("lock a again"), "a's lease is held");
    drop((db, other));

    // Both consumers run, each from its own lease.
    let bus = PgBus::start(database);
    let mut sub_a = bus.subscribe(&a, &["topic-a".to_owned()]).await.expect("subscribe a");
    let mut sub_b = bus.subscribe(&b, &["topic-b".to_owned()]).await.expect("subscribe b");
    let db = pg::client(&url).await;
    db.batch_execute(
        "INSERT INTO events (id, topic, kind, payload) VALUES ('ea', 'topic-a', 'A', '{}'), ('eb', 'topic-b', 'B', '{}')",
    )
    .await
    .expect("append");
    let within = Duration::from_secs(20);
    let got_a = tokio::time::timeout(within, sub_a.next()).await.ok().flatten().expect("a delivers");
    let got_b = tokio::time::timeout(within, sub_b.next()).await.ok().flatten().expect("b delivers");
    assert_eq!((got_a.event.message.id.as_str(), got_b.event.message.id.as_str()), ("ea", "eb"));
}

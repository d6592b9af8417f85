//! `host replay` while the shells serve: a projector's read model rebuilt as
//! a new generation under live traffic, switched to at once, equal to what
//! a replay with the shells stopped builds; `--drop-previous`; the dry run of
//! a candidate, which writes nothing; and the memory backend, which keeps no
//! log. Real Postgres (`support/pg.rs`), real components (`make guest`).

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::backend::postgres::PgStore;
use host::backend::postgres::database::{Database, lease_id};
use host::backend::postgres::rebuild::{self, Rebuilt};
use host::backend::postgres::replay::{self, Start, VersionSource};
use host::backend::{Checkpoint, Commit, Store, StoreError};
use host::config::{BackendKind, ConsumerPolicy, OnFailure};
use host::runtime::Version;
use host::{Project, Shell};
use low_contract::WriteOp;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Client, basic_project, error, module, running_version};

const TOKEN: &str = "rebuild-s3cret";
const PROJECTOR: &str = "customer-projector";

fn project(url: &str) -> Project {
    support::project_from(&pg::project_text(url, "127.0.0.1:0", 60_000), TOKEN)
}

async fn shell(url: &str) -> (Shell, Client) {
    let shell = Shell::start(project(url)).await.expect("start a Postgres shell (run `make guest` first)");
    let client = Client::new(&format!("http://{}", shell.addr));
    (shell, client)
}

/// Invites `email`; the customer's id, or the answer that was not one.
async fn invite(client: &Client, email: &str) -> Result<String, String> {
    let query = format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ id email }} }}"#);
    let (status, body) = client.post(json!({ "query": query })).await;
    match body["data"]["InviteCustomer"]["id"].as_str() {
        Some(id) if status == 200 => Ok(id.to_owned()),
        _ => Err(format!("{status}: {body}")),
    }
}

type Documents = Vec<(String, i64, String)>;

/// The documents of the `customers` generation served now.
async fn served(db: &tokio_postgres::Client) -> Documents {
    db.query(
        "SELECT key, version, body::text FROM documents
         WHERE collection = lowshell_collection('customers') ORDER BY key",
        &[],
    )
    .await
    .expect("read the customers served")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Documents stored under the physical name `collection`.
async fn stored(db: &tokio_postgres::Client, collection: &str) -> i64 {
    db.query_one("SELECT count(*) FROM documents WHERE collection = $1", &[&collection])
        .await
        .expect("count documents")
        .get(0)
}

/// The generation served and the previous one kept, of `collection`.
async fn generation(db: &tokio_postgres::Client, collection: &str) -> Option<(i32, String, Option<String>)> {
    db.query_opt(
        "SELECT generation, physical, previous FROM read_models WHERE collection = $1",
        &[&collection],
    )
    .await
    .expect("read the generation")
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// Waits until the live consumer `consumer` has processed every event on `topic`.
async fn settled(db: &tokio_postgres::Client, consumer: &str, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let behind = db
            .query_one(
                "SELECT count(*) FROM events WHERE topic = $2 AND position >
                     coalesce((SELECT position FROM checkpoints WHERE consumer = $1), 0)",
                &[&consumer, &topic],
            )
            .await
            .expect("lag")
            .get::<_, i64>(0);
        if behind == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "`{consumer}` is still {behind} events behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every customer a shell's API serves, paged.
async fn listed(client: &Client) -> BTreeSet<String> {
    let mut emails = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let after_arg = after.as_ref().map(|a| format!(r#", after: "{a}""#)).unwrap_or_default();
        let body = client.graphql(&format!("{{ customers(first: 100{after_arg}) {{ id email }} }}")).await;
        assert!(error(&body).is_none(), "{body}");
        let page = body["data"]["customers"].as_array().cloned().unwrap_or_default();
        for customer in &page {
            emails.insert(customer["email"].as_str().unwrap_or_default().to_owned());
        }
        match page.last() {
            Some(last) if page.len() == 100 => after = last["id"].as_str().map(str::to_owned),
            _ => return emails,
        }
    }
}

fn emails(documents: &Documents) -> BTreeSet<String> {
    documents
        .iter()
        .map(|(_, _, body)| {
            let body: Value = serde_json::from_str(body).expect("a JSON body");
            body["email"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// `host replay ARGS --project FILE` (the binary), with `project` written to FILE.
fn host_replay(project_text: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("project.toml");
    std::fs::write(&file, project_text).expect("write the project");
    let bin = std::env::var_os("LOWSHELL_HOST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_host").into());
    std::process::Command::new(bin)
        .arg("replay")
        .args(args)
        .arg("--project")
        .arg(&file)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run host replay")
}

fn printed(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Given two shells serving a stream of invitations, when the customers'
/// read model is rebuilt while they serve, then every request is answered
/// throughout, reads switch to the new generation with nothing missed, and
/// it equals what a replay with the shells stopped builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_rebuilt_under_live_traffic_equals_a_stopped_replay() {
    let url = pg::database().await;
    let db = pg::client(&url).await;
    let ((one, client_one), (two, client_two)) = (shell(&url).await, shell(&url).await);
    for i in 0..60 {
        let client = if i % 2 == 0 { &client_one } else { &client_two };
        invite(client, &format!("before{i}@example.com")).await.expect("invite");
    }

    // Invitations keep coming on both shells, a few at once; every fifth
    // repeats an earlier email (`CustomerInviteFailed`: projected again).
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let traffic = tokio::spawn({
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        let clients = [client_one.clone(), client_two.clone()];
        async move {
            let mut invited = BTreeSet::new();
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<String> = (0..16)
                    .map(|k| {
                        let n = round * 16 + k;
                        if n % 5 == 4 {
                            format!("live{}@example.com", n / 2)
                        } else {
                            format!("live{n}@example.com")
                        }
                    })
                    .collect();
                let mut pending = vec![];
                for (k, email) in batch.into_iter().enumerate() {
                    let client = clients[k % 2].clone();
                    pending.push(tokio::spawn(async move {
                        let result = invite(&client, &email).await;
                        (email, result)
                    }));
                }
                let mut results = vec![];
                for task in pending {
                    results.push(task.await.map_err(|e| format!("an invitation task failed: {e}"))?);
                }
                for (email, result) in results {
                    if let Err(e) = result {
                        return Err(format!("{email} was not answered: {e}"));
                    }
                    invited.insert(email);
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                round += 1;
            }
            Ok(invited)
        }
    });
    let wait_for = |n: usize| {
        let answered = Arc::clone(&answered);
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while answered.load(Ordering::SeqCst) < n {
                assert!(
                    Instant::now() < deadline,
                    "the traffic stalled at {}",
                    answered.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(40).await;

    // When: rebuilt while they serve.
    let done = rebuild::rebuild(&project(&url), Some(PROJECTOR), None).await.expect("rebuild while serving");
    let [Rebuilt { generation: 1, events, source: VersionSource::File, deployed: false, .. }] =
        done.as_slice()
    else {
        panic!("one projector rebuilt as generation 1 with its file's version: {done:?}");
    };
    assert!(*events >= 100, "the rebuild applied the history and the traffic so far: {done:?}");
    eprintln!("rebuilt: {done:?}");
    let during = answered.load(Ordering::SeqCst);
    wait_for(during + 20).await;
    // A dry run of the recorded version, traffic going on: the served
    // model is what the log builds.
    let report = rebuild::dry_run(&project(&url), PROJECTOR, None).await.expect("dry run under traffic");
    let [same] = report.collections.as_slice() else { panic!("one collection: {report:?}") };
    assert!(!same.differs() && same.live > 0, "{same:?}");
    wait_for(answered.load(Ordering::SeqCst) + 20).await;
    stop.store(true, Ordering::SeqCst);
    let invited = traffic.await.expect("the traffic task").expect("every request is answered throughout");
    settled(&db, PROJECTOR, "customer").await;

    // Then: reads are served from generation 1, the old one kept.
    assert_eq!(
        generation(&db, "customers").await,
        Some((1, "customers~gen1".into(), Some("customers".into())))
    );
    let rebuilt = served(&db).await;
    let expected: BTreeSet<String> =
        (0..60).map(|i| format!("before{i}@example.com")).chain(invited.iter().cloned()).collect();
    assert_eq!(emails(&rebuilt), expected, "nothing missed, nothing extra");
    assert_eq!(listed(&client_one).await, expected, "shell one serves the new generation");
    assert_eq!(listed(&client_two).await, expected, "shell two serves the new generation");
    let id = rebuilt.first().map(|(key, _, _)| key.clone()).expect("a customer");
    let body = client_two.graphql(&format!(r#"{{ customer(id: "{id}") {{ email }} }}"#)).await;
    assert!(body["data"]["customer"]["email"].is_string(), "{body}");

    // And it equals what a replay with the shells stopped builds (from
    // scratch, in place: generation 0 again), versions included.
    one.stop().await.expect("stop one");
    two.stop().await.expect("stop two");
    let stopped =
        replay::replay(&project(&url), Some(PROJECTOR), Start::Scratch).await.expect("stopped replay");
    let cleared = stopped[0].cleared.unwrap_or_default();
    assert!(cleared > rebuilt.len() as u64, "both generations are cleared: {cleared}");
    assert_eq!(generation(&db, "customers").await, None);
    assert_eq!(served(&db).await, rebuilt, "the rebuilt generation is what a stopped replay builds");
}

/// The projector's component with a custom section appended: another
/// version (another sha256), the same behaviour.
fn projector_variant(dir: &Path) -> (std::path::PathBuf, Version) {
    let mut bytes = std::fs::read(module(PROJECTOR)).expect("the projector");
    let (name, payload) = (b"lowshell-rebuild-test", b"variant");
    bytes.push(0);
    bytes.push(u8::try_from(1 + name.len() + payload.len()).expect("a short section"));
    bytes.push(u8::try_from(name.len()).expect("a short name"));
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let file = dir.join("customer-projector-variant.wasm");
    std::fs::write(&file, &bytes).expect("write the variant");
    (file, Version::of(&bytes))
}

/// Given a rebuilt read model, the previous generation is kept until
/// `--drop-previous`; another rebuild waits for that; a rebuild with a
/// candidate file deploys it at the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_generation_is_kept_until_dropped() {
    let url = pg::database().await;
    let db = pg::client(&url).await;
    let file_text = pg::project_text(&url, "127.0.0.1:0", 60_000);
    let (shell, client) = shell(&url).await;
    for i in 0..5 {
        invite(&client, &format!("d{i}@example.com")).await.expect("invite");
    }
    settled(&db, PROJECTOR, "customer").await;

    let output = host_replay(&file_text, &["--function", PROJECTOR]);
    let (stdout, stderr) = printed(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("reads switched to generation 1"), "{stdout}");
    assert_eq!((stored(&db, "customers").await, stored(&db, "customers~gen1").await), (5, 5));
    // Built as the live consumer builds: the steps at hand in one commit.
    let commits = "SELECT count(DISTINCT xmin::text) FROM documents WHERE collection = 'customers~gen1'";
    assert_eq!(count(&db, commits).await, 1, "the five events are rebuilt in one commit");

    // Every read goes to generation 1: a change to the previous one shows nowhere.
    db.execute(
        r#"UPDATE documents SET body = jsonb_set(body, '{email}', '"stale@example.com"') WHERE collection = 'customers'"#,
        &[],
    )
    .await
    .expect("change the previous generation");
    assert!(!listed(&client).await.contains("stale@example.com"), "the API reads the previous generation");
    let store = PgStore::new(Arc::new(Database::connect(&url).await.expect("connect")));
    let found = store.find("customers", "email", &json!("d3@example.com"), 10).await.expect("find");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].collection, "customers", "documents keep their collection's name");
    let got = store.get("customers", &found[0].key).await.expect("get").expect("the customer");
    assert_eq!(got.body["email"], "d3@example.com");
    assert!(
        store.find("customers", "email", &json!("stale@example.com"), 10).await.expect("find").is_empty()
    );

    let output = host_replay(&file_text, &["--function", PROJECTOR]);
    let (stdout, stderr) = printed(&output);
    assert!(!output.status.success(), "a second rebuild waits for the drop: {stdout}");
    assert!(stderr.contains("--drop-previous --function customer-projector"), "{stderr}");
    assert_eq!(generation(&db, "customers").await.map(|g| g.0), Some(1), "nothing switched");

    let output = host_replay(&file_text, &["--drop-previous", "--function", PROJECTOR]);
    let (stdout, stderr) = printed(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("dropped the previous generation of customers (`customers`, 5 documents)"),
        "{stdout}"
    );
    assert_eq!((stored(&db, "customers").await, stored(&db, "customers~gen1").await), (0, 5));
    assert_eq!(generation(&db, "customers").await, Some((1, "customers~gen1".into(), None)));
    assert_eq!(listed(&client).await.len(), 5, "still served");

    // A candidate version: built with it, deployed at the switch.
    let dir = tempfile::tempdir().expect("temp dir");
    let (file, variant) = projector_variant(dir.path());
    let done = rebuild::rebuild(&project(&url), Some(PROJECTOR), Some(&file)).await.expect("rebuild");
    assert_eq!((done[0].generation, done[0].deployed), (2, true));
    assert_eq!((done[0].source, &done[0].version), (VersionSource::Candidate, &variant));
    let recorded: String = db
        .query_one("SELECT version FROM deployments WHERE name = $1", &[&PROJECTOR])
        .await
        .expect("the deployment")
        .get(0);
    assert_eq!(recorded, variant.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_version(&client, PROJECTOR).await != variant.0 {
        assert!(Instant::now() < deadline, "the shell never ran the deployed candidate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    invite(&client, "d5@example.com").await.expect("invite after the switch");
    settled(&db, PROJECTOR, "customer").await;
    assert_eq!(stored(&db, "customers~gen2").await, 6);
    assert_eq!(
        generation(&db, "customers").await,
        Some((2, "customers~gen2".into(), Some("customers~gen1".into())))
    );
    assert_eq!(listed(&client).await.len(), 6);
    shell.stop().await.expect("stop");
}

/// The misbehaving handler and projector, on Postgres; the projector parks
/// what it fails on.
fn misbehave_project(url: &str) -> Project {
    let mut project = basic_project();
    project.functions = Some(vec![
        "fixtures/misbehave".into(),
        "fixtures/misbehave-resolver".into(),
        "fixtures/misbehave-projector".into(),
    ]);
    project.watch = false;
    project.admin.token = Some(TOKEN.into());
    project.response_timeout_ms = 20_000;
    project.backend = BackendKind::Postgres;
    project.database_url = Some(url.to_owned());
    let park =
        ConsumerPolicy { retries: 0, backoff_ms: 10, on_failure: OnFailure::Park, ..Default::default() };
    project.consumers.insert("misbehave-projector".into(), park);
    project
}

/// Everything a dry run must leave as it was.
async fn everything(db: &tokio_postgres::Client) -> Vec<String> {
    let mut all = vec![];
    for table in ["documents", "checkpoints", "read_models", "deployments", "parked", "function_versions"] {
        let rows = db
            .query(&format!("SELECT t::text FROM (SELECT * FROM {table}) t ORDER BY 1"), &[])
            .await
            .expect(table);
        all.extend(rows.iter().map(|r| format!("{table}: {}", r.get::<_, String>(0))));
    }
    all
}

/// Given a projector that parked an event it trapped on, a dry run of the
/// fixed version reports the view it would add, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_reports_how_a_candidate_differs_and_writes_nothing() {
    let url = pg::database().await;
    let db = pg::client(&url).await;
    let (shell, client) = support::start(misbehave_project(&url)).await;
    for _ in 0..3 {
        let body = client.graphql(r#"mutation { Misbehave(action: "ok", phase: "") { id } }"#).await;
        assert!(body["data"]["Misbehave"]["id"].is_string(), "{body}");
    }
    // The projector traps on this one's write: parked, no view.
    let body =
        client.graphql(r#"mutation { Misbehave(action: "trap", phase: "project-write") { id } }"#).await;
    assert!(body["data"]["Misbehave"]["id"].is_string() || error(&body).is_some(), "{body}");
    settled(&db, "misbehave-projector", "misbehaviour").await;
    assert_eq!(count(&db, "SELECT count(*) FROM parked").await, 1);
    assert_eq!(stored(&db, "thing-views").await, 3);
    let before = everything(&db).await;

    let fixed = module("fixtures/misbehave-projector-fixed");
    let report = rebuild::dry_run(&misbehave_project(&url), "misbehave-projector", Some(&fixed))
        .await
        .expect("dry run");
    assert_eq!((report.events, report.source), (4, VersionSource::Candidate));
    let [diff] = report.collections.as_slice() else { panic!("one collection: {report:?}") };
    assert_eq!((diff.collection.as_str(), diff.live, diff.candidate), ("thing-views", 3, 4));
    assert_eq!((diff.added_count, diff.removed_count, diff.changed_count), (1, 0, 0));
    assert_eq!(diff.added[0].1["action"], "trap", "{diff:?}");

    // The command line says the same.
    let text = toml_of(&misbehave_project(&url));
    let output = host_replay(
        &text,
        &["--function", "misbehave-projector", "--component", &fixed.display().to_string(), "--dry-run"],
    );
    let (stdout, stderr) = printed(&output);
    eprintln!("{stdout}");
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("thing-views: 3 served, 4 rebuilt: 1 added, 0 removed, 0 changed"), "{stdout}");
    assert!(stdout.contains("nothing written"), "{stdout}");

    // The recorded version stops at the event it traps on, like a replay.
    let refused = rebuild::dry_run(&misbehave_project(&url), "misbehave-projector", None)
        .await
        .expect_err("the trapping version cannot rebuild");
    assert!(refused.to_string().contains("stopped at log position"), "{refused:#}");

    assert_eq!(everything(&db).await, before, "a dry run writes nothing");
    shell.stop().await.expect("stop");
}

/// The misbehave project as a file's text.
fn toml_of(project: &Project) -> String {
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules");
    format!(
        r#"name = "rebuild-test"
modules = "{}"
functions = ["fixtures/misbehave", "fixtures/misbehave-resolver", "fixtures/misbehave-projector"]
backend = "postgres"
database-url = "{}"
"#,
        modules.display(),
        project.database_url.as_deref().unwrap_or_default()
    )
}

/// The memory backend keeps no log: replays of every kind say so.
#[test]
fn on_the_memory_backend_replay_says_there_is_no_log() {
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules");
    let text = format!("name = \"memory\"\nmodules = \"{}\"\nbackend = \"memory\"\n", modules.display());
    for args in [
        &["--function", PROJECTOR][..],
        &["--function", PROJECTOR, "--dry-run"],
        &["--drop-previous"],
        &["--in-place"],
    ] {
        let output = host_replay(&text, args);
        let (stdout, stderr) = printed(&output);
        assert!(!output.status.success(), "{args:?}: {stdout}");
        assert!(stderr.contains("the memory backend keeps no event log"), "{args:?}: {stderr}");
    }
}

/// A projector split into partitions has no single checkpoint to switch
/// at, one rebuild of a projector runs at a time, and a candidate must be a
/// version of the projector: the rebuild (and the dry run) say so, and
/// change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_projector_a_second_rebuild_or_a_foreign_candidate_is_refused() {
    let url = pg::database().await;
    let mut partitioned = project(&url);
    let policy = ConsumerPolicy { partitions: 2, ..Default::default() };
    partitioned.consumers.insert(PROJECTOR.into(), policy);
    let refused = rebuild::rebuild(&partitioned, Some(PROJECTOR), None).await.expect_err("refused");
    let message = refused.to_string();
    assert!(message.contains("split into 2 partitions") && message.contains("--in-place"), "{message}");
    let db = pg::client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM read_models").await, 0);

    // So is a second rebuild of the projector while one runs.
    let running = pg::client(&url).await;
    let id = lease_id(&running, PROJECTOR).await.expect("the projector's id");
    running
        .execute("SELECT pg_advisory_lock($1, $2)", &[&rebuild::REBUILD_LOCKS, &id])
        .await
        .expect("a rebuild's lock");
    let refused = rebuild::rebuild(&project(&url), Some(PROJECTOR), None).await.expect_err("refused");
    assert!(refused.to_string().contains("another `host replay` is rebuilding"), "{refused:#}");
    drop(running);

    // So is a candidate of another function.
    let other = module("invite-customer");
    let refused = rebuild::rebuild(&project(&url), Some(PROJECTOR), Some(&other)).await.expect_err("refused");
    assert!(refused.to_string().contains("is `invite-customer`, not `customer-projector`"), "{refused:#}");
    let refused = rebuild::dry_run(&project(&url), PROJECTOR, Some(&other)).await.expect_err("refused");
    assert!(refused.to_string().contains("is `invite-customer`, not `customer-projector`"), "{refused:#}");
    assert_eq!(count(&db, "SELECT count(*) FROM read_models").await, 0);
}

/// `CustomerInvited` for `c1` appended to the log; its position.
async fn an_invitation(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        r#"INSERT INTO events (id, topic, kind, payload)
           VALUES ('e1', 'customer', 'CustomerInvited', '{"customer-id": "c1", "email": "c1@example.com"}')
           RETURNING position"#,
        &[],
    )
    .await
    .expect("append an event")
    .get(0)
}

/// The projector's step for the event at `position`: `c1` written, its checkpoint advanced.
fn projected(position: i64) -> Commit {
    Commit {
        ops: vec![WriteOp::Put {
            collection: "customers".into(),
            key: "c1".into(),
            body: json!({ "id": "c1" }),
        }],
        checkpoint: Some(Checkpoint {
            consumer: PROJECTOR.into(),
            position: u64::try_from(position).expect("a position"),
            event: "e1".into(),
        }),
        ..Commit::default()
    }
}

/// The store's side of a switch: the projector's writes go to the
/// generation served, and a step whose transaction began before the switch
/// (it looked up the previous generation) conflicts, writing nothing, to be
/// retried with a fresh lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_begun_before_a_switch_conflicts_and_writes_follow_the_switch() {
    let url = pg::database().await;
    let store = PgStore::new(Arc::new(Database::connect(&url).await.expect("migrate")));
    let db = pg::client(&url).await;
    let position = an_invitation(&db).await;
    // A switch later than any transaction that begins now: the collection
    // pointed at generation 1, the consumer's checkpoint stamped.
    db.execute(
        "INSERT INTO read_models (collection, function, generation, physical, previous, switched_at)
         VALUES ('customers', $1, 1, 'customers~gen1', 'customers', now() + interval '1 hour')",
        &[&PROJECTOR],
    )
    .await
    .expect("switch");
    db.execute(
        "INSERT INTO checkpoints (consumer, switched_at) VALUES ($1, now() + interval '1 hour')",
        &[&PROJECTOR],
    )
    .await
    .expect("stamp the checkpoint");
    let step = projected(position);
    match store.commit(step.clone()).await {
        Err(StoreError::Conflict(why)) => assert!(why.contains("switched to a new generation"), "{why}"),
        other => panic!("a conflict, not {other:?}"),
    }
    assert_eq!(count(&db, "SELECT count(*) FROM documents").await, 0, "nothing written");
    assert_eq!(
        count(&db, "SELECT count(*) FROM checkpoints WHERE position > 0").await,
        0,
        "the checkpoint did not move"
    );

    db.batch_execute(
        "UPDATE read_models SET switched_at = now() - interval '1 second';
         UPDATE checkpoints SET switched_at = now() - interval '1 second'",
    )
    .await
    .expect("switched");
    store.commit(step).await.expect("a step begun after the switch commits");
    assert_eq!((stored(&db, "customers~gen1").await, stored(&db, "customers").await), (1, 0));
    let got = store.get("customers", "c1").await.expect("get").expect("the document");
    assert_eq!((got.collection.as_str(), got.version), ("customers", 1));
}

/// The race a switch settles: a step whose transaction began before the
/// switch waits at the checkpoint row the switch holds, and once the switch
/// commits, its checkpoint advance finds the switch's stamp — it conflicts,
/// writing nothing, and is retried with a fresh lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_waiting_at_a_switch_conflicts_once_the_switch_commits() {
    let url = pg::database().await;
    let store = Arc::new(PgStore::new(Arc::new(Database::connect(&url).await.expect("migrate"))));
    let db = pg::client(&url).await;
    let position = an_invitation(&db).await;
    db.execute("INSERT INTO checkpoints (consumer) VALUES ($1)", &[&PROJECTOR]).await.expect("a checkpoint");

    // Given a switch under way, holding the projector's checkpoint row,
    let mut switcher = pg::client(&url).await;
    let switch = switcher.transaction().await.expect("begin the switch");
    switch
        .execute("SELECT 1 FROM checkpoints WHERE consumer = $1 FOR UPDATE", &[&PROJECTOR])
        .await
        .expect("hold the checkpoint row");

    // when a step commits meanwhile, it waits at that row,
    let step = projected(position);
    let committing = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.commit(step).await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(
        &db,
        "SELECT count(*) FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO checkpoints%'",
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "the step never waited at the checkpoint row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // and the switch stamps the row and commits,
    switch
        .execute("UPDATE checkpoints SET switched_at = clock_timestamp() WHERE consumer = $1", &[&PROJECTOR])
        .await
        .expect("stamp the switch");
    switch.commit().await.expect("commit the switch");

    // then the step conflicts and writes nothing.
    match tokio::time::timeout(Duration::from_secs(60), committing).await {
        Ok(Ok(Err(StoreError::Conflict(why)))) => {
            assert!(why.contains("switched to a new generation"), "{why}")
        }
        other => panic!("a conflict, not {other:?}"),
    }
    assert_eq!(count(&db, "SELECT count(*) FROM documents").await, 0, "nothing written");
    assert_eq!(
        count(&db, "SELECT count(*) FROM checkpoints WHERE position > 0").await,
        0,
        "the checkpoint did not move"
    );
}

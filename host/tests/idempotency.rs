//! Idempotency keys (`commandId`, `Idempotency-Key`), requests abandoned by
//! their clients, and what clients are told when something fails — over
//! real HTTP against started shells, on the memory and Postgres backends.
//! Needs `make guest`.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::{Project, Shell};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Client, basic_project, error, error_extensions, start};

/// POSTs `query` with an optional `Idempotency-Key` header (sent as is).
async fn post(client: &Client, query: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = client.http.post(format!("{}/graphql", client.base)).json(&json!({ "query": query }));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn invite(email: &str, command_id: Option<&str>) -> String {
    let arg = command_id.map(|c| format!(", commandId: {c:?}")).unwrap_or_default();
    format!(r#"mutation {{ InviteCustomer(email: {email:?}{arg}) {{ id email }} }}"#)
}

fn code(body: &Value) -> &str {
    error_extensions(body)["code"].as_str().unwrap_or_default()
}

async fn emails(client: &Client) -> Vec<String> {
    let body = client.graphql("{ customers(first: 100) { email } }").await;
    let mut emails: Vec<String> = body["data"]["customers"]
        .as_array()
        .unwrap_or_else(|| panic!("customers: {body}"))
        .iter()
        .filter_map(|c| c["email"].as_str().map(str::to_owned))
        .collect();
    emails.sort();
    emails
}

// --- Item 1: idempotency, on both backends ---------------------------------

/// A key names one command: with two mutations in the request, `b` would
/// get `a`'s answer and never run. Refused before anything runs.
async fn one_key_with_two_mutations_is_refused(client: &Client) {
    let two = r#"mutation { a: InviteCustomer(email: "a1@x.y") { id email } b: InviteCustomer(email: "b1@x.y") { id email } }"#;
    let (status, body) = post(client, two, Some("k")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body), "IDEMPOTENCY_KEY_MULTIPLE_MUTATIONS", "{body}");
    assert!(body.get("data").is_none(), "{body}");
    // Hidden in a fragment, too.
    let fragment = r#"mutation { ...Both } fragment Both on Mutation { a: InviteCustomer(email: "a1@x.y") { id } b: InviteCustomer(email: "b1@x.y") { id } }"#;
    let (status, body) = post(client, fragment, Some("k")).await;
    assert_eq!((status, code(&body)), (400, "IDEMPOTENCY_KEY_MULTIPLE_MUTATIONS"), "{body}");
    assert_eq!(emails(client).await, Vec::<String>::new(), "nothing was submitted");
    // Without the header, two mutations are two commands.
    let (status, body) = post(client, two, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["b"]["email"], "b1@x.y", "{body}");
}

/// The same key with another payload is refused, for the argument (a
/// GraphQL error) and for the header (422); the second email is never invited.
async fn a_key_reused_for_another_payload_is_refused(client: &Client) {
    let (_, first) = post(client, &invite("r1@x.y", Some("rx")), None).await;
    assert_eq!(first["data"]["InviteCustomer"]["email"], "r1@x.y", "{first}");
    let (status, other) = post(client, &invite("r2@x.y", Some("rx")), None).await;
    assert_eq!(status, 200, "{other}");
    assert_eq!(code(&other), "IDEMPOTENCY_KEY_REUSED", "{other}");
    assert_eq!(other["data"]["InviteCustomer"], Value::Null, "{other}");
    assert!(error_extensions(&other)["correlationId"].is_string(), "{other}");

    let (status, first) = post(client, &invite("h1@x.y", None), Some("hx")).await;
    assert_eq!((status, first["data"]["InviteCustomer"]["email"].as_str()), (200, Some("h1@x.y")), "{first}");
    let (status, other) = post(client, &invite("h2@x.y", None), Some("hx")).await;
    assert_eq!(status, 422, "{other}");
    assert_eq!(code(&other), "IDEMPOTENCY_KEY_REUSED", "{other}");
    assert!(other.get("data").is_none(), "{other}");
    // The same payload again is still the first command's.
    let (status, again) = post(client, &invite("h1@x.y", None), Some("hx")).await;
    assert_eq!((status, &again["data"]), (200, &first["data"]), "{again}");

    let emails = emails(client).await;
    assert!(emails.contains(&"r1@x.y".to_owned()) && emails.contains(&"h1@x.y".to_owned()), "{emails:?}");
    assert!(!emails.contains(&"r2@x.y".to_owned()) && !emails.contains(&"h2@x.y".to_owned()), "{emails:?}");
}

/// A repeat answers what the first request was answered, not the document
/// as it is now.
async fn a_repeat_gets_the_first_answer(client: &Client) {
    let (_, first) = post(client, &invite("ix@x.y", Some("cx")), None).await;
    let customer = first["data"]["InviteCustomer"].clone();
    assert_eq!(customer["email"], "ix@x.y", "{first}");
    let id = customer["id"].as_str().expect("an id");
    let rename = format!(r#"mutation {{ RenameCustomer(id: "{id}", email: "iy@x.y") {{ id email }} }}"#);
    let (_, renamed) = post(client, &rename, None).await;
    assert_eq!(renamed["data"]["RenameCustomer"]["email"], "iy@x.y", "{renamed}");

    let (status, again) = post(client, &invite("ix@x.y", Some("cx")), None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["data"]["InviteCustomer"], customer, "the first answer: {again}");

    // The header, quoted as the draft's Structured Field string or bare: one key.
    let (_, first) = post(client, &invite("qx@x.y", None), Some(r#""q-1""#)).await;
    let id = first["data"]["InviteCustomer"]["id"].as_str().expect("an id").to_owned();
    let rename = format!(r#"mutation {{ RenameCustomer(id: "{id}", email: "qy@x.y") {{ id }} }}"#);
    post(client, &rename, None).await;
    let (status, again) = post(client, &invite("qx@x.y", None), Some("q-1")).await;
    assert_eq!((status, &again["data"]), (200, &first["data"]), "{again}");
    let (status, body) = post(client, &invite("qx@x.y", None), Some(r#""unterminated"#)).await;
    assert_eq!(status, 400, "a malformed key: {body}");
}

/// Repeats that arrive while the first is still running get its answer.
async fn concurrent_repeats_share_the_first_answer(clients: &[Client]) {
    let requests = (0..12).map(|i| {
        let client = clients[i % clients.len()].clone();
        async move { post(&client, &invite("cc@x.y", Some("c-conc")), None).await }
    });
    let answers = futures::future::join_all(requests).await;
    let first = &answers[0].1["data"]["InviteCustomer"];
    assert_eq!(first["email"], "cc@x.y", "{:?}", answers[0]);
    for (status, body) in &answers {
        assert_eq!((*status, &body["data"]["InviteCustomer"]), (200, first), "{body}");
    }
}

#[tokio::test]
async fn memory_one_key_with_two_mutations_is_refused() {
    let (shell, client) = start(basic_project()).await;
    one_key_with_two_mutations_is_refused(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn memory_a_key_reused_for_another_payload_is_refused() {
    let (shell, client) = start(basic_project()).await;
    a_key_reused_for_another_payload_is_refused(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn memory_a_repeat_gets_the_first_answer_not_the_current_document() {
    let (shell, client) = start(basic_project()).await;
    a_repeat_gets_the_first_answer(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn memory_concurrent_repeats_share_the_first_answer() {
    let (shell, client) = start(basic_project()).await;
    concurrent_repeats_share_the_first_answer(std::slice::from_ref(&client)).await;
    assert_eq!(emails(&client).await, ["cc@x.y"]);
    shell.stop().await.expect("clean stop");
}

fn pg_project(url: &str) -> Project {
    let text = pg::project_text(url, "127.0.0.1:0", 60_000);
    let mut project = Project::parse(&text, Path::new(".")).expect("test project");
    project.watch = false;
    project
}

async fn pg_shell(url: &str) -> (Shell, Client) {
    start(pg_project(url)).await
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keys_are_bound_to_their_payload_and_first_answer() {
    let url = pg::database().await;
    let (shell, client) = pg_shell(&url).await;
    one_key_with_two_mutations_is_refused(&client).await;
    a_key_reused_for_another_payload_is_refused(&client).await;
    a_repeat_gets_the_first_answer(&client).await;
    let db = pg::client(&url).await;
    // Commands: a1 and b1 without a key; r1, h1, ix, qx with one (each once);
    // the two renames.
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE topic = 'commands'").await, 8);
    assert_eq!(
        count(&db, "SELECT count(*) FROM command_results WHERE result ? 'ok'").await,
        4,
        "the first answers of the keyed commands are kept"
    );
    shell.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_repeats_in_flight_on_two_shells_share_the_first_answer() {
    let url = pg::database().await;
    let (one, a) = pg_shell(&url).await;
    let (two, b) = pg_shell(&url).await;
    concurrent_repeats_share_the_first_answer(&[a.clone(), b.clone()]).await;
    let db = pg::client(&url).await;
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE topic = 'commands'").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM events WHERE kind = 'CustomerInvited'").await, 1);
    one.stop().await.expect("stop one");
    two.stop().await.expect("stop two");
}

// --- Item 2: requests abandoned by their clients ----------------------------

/// The invite without its projector: nothing ever answers a request, which
/// waits for the whole response timeout.
fn unanswered_project() -> Project {
    let mut project = basic_project();
    project.functions = Some(vec!["invite-customer".into(), "invite-resolver".into()]);
    project.response_timeout_ms = 120_000;
    project.watch = false;
    project
}

async fn drained(shell: &Shell, within: Duration) -> usize {
    let started = Instant::now();
    while shell.pending_requests() > 0 && started.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shell.pending_requests()
}

async fn waiting(shell: &Shell, n: usize) {
    let started = Instant::now();
    while shell.pending_requests() < n {
        assert!(started.elapsed() < Duration::from_secs(20), "{} waiting, not {n}", shell.pending_requests());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn requests_abandoned_by_their_clients_leave_nothing_behind() {
    let (shell, client) = start(unanswered_project()).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().expect("client");
    let requests = (0..20).map(|i| {
        let (impatient, base) = (impatient.clone(), client.base.clone());
        async move {
            let query = format!(r#"mutation {{ InviteCustomer(email: "gone{i}@x.y") }}"#);
            impatient.post(format!("{base}/graphql")).json(&json!({ "query": query })).send().await
        }
    });
    for result in futures::future::join_all(requests).await {
        assert!(result.is_err_and(|e| e.is_timeout()), "the client gave up first");
    }
    assert_eq!(drained(&shell, Duration::from_secs(10)).await, 0, "abandoned requests are forgotten");
    let metrics = client.http.get(format!("{}/metrics", client.base)).send().await.expect("metrics");
    assert!(metrics.text().await.expect("text").contains("lowshell_pending_requests"));
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn requests_cut_by_the_http_timeout_leave_nothing_behind() {
    let mut project = unanswered_project();
    project.http.request_timeout_ms = 300;
    let (shell, client) = start(project).await;
    for i in 0..5 {
        let (status, body) =
            post(&client, &format!(r#"mutation {{ InviteCustomer(email: "t{i}@x.y") }}"#), None).await;
        assert_eq!(status, 408, "{body}");
    }
    assert_eq!(drained(&shell, Duration::from_secs(10)).await, 0);
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn waiting_requests_are_bounded() {
    let mut project = unanswered_project();
    project.max_pending_requests = 2;
    let (shell, client) = start(project).await;
    let wait = |email: &'static str| {
        let client = client.clone();
        tokio::spawn(async move {
            post(&client, &format!(r#"mutation {{ InviteCustomer(email: "{email}") }}"#), None).await
        })
    };
    let held = [wait("w1@x.y"), wait("w2@x.y")];
    waiting(&shell, 2).await;

    let (status, body) = post(&client, r#"mutation { InviteCustomer(email: "w3@x.y") }"#, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(code(&body), "OVERLOADED", "{body}");
    assert!(error(&body).is_some_and(|m| m.contains("try again")), "{body}");
    // Queries do not wait: still served.
    client.graphql("{ functions { name } }").await;

    // Their clients go away: room again.
    for task in held {
        task.abort();
    }
    assert_eq!(drained(&shell, Duration::from_secs(10)).await, 0);
    let again = wait("w4@x.y");
    waiting(&shell, 1).await;
    again.abort();
    shell.stop().await.expect("clean stop");
}

// --- Item 3: what clients are told when something fails ---------------------

#[tokio::test]
async fn a_failing_guest_is_a_stable_error_and_the_detail_is_logged() {
    support::capture_logs();
    let mut project = basic_project();
    project.functions = Some(vec![
        "customer-projector".into(),
        "fixtures/misbehave".into(),
        "fixtures/misbehave-resolver".into(),
    ]);
    project.watch = false;
    let (shell, client) = start(project).await;
    let trap = client.graphql(r#"mutation { Misbehave(action: "trap", phase: "operate") { id } }"#).await;
    assert_eq!(error(&trap), Some("the command failed"), "{trap}");
    assert_eq!(code(&trap), "COMMAND_FAILED", "{trap}");
    let id = error_extensions(&trap)["correlationId"].as_str().expect("a correlation id");
    let logged = support::logged(id);
    assert!(
        logged.iter().any(|(level, m)| level == "WARN" && m.contains("deliberate trap in operate")),
        "the detail is logged under {id}: {logged:?}"
    );

    let rejected =
        client.graphql(r#"mutation { Misbehave(action: "reject", phase: "operate") { id } }"#).await;
    assert!(error(&rejected).is_some_and(|m| m.contains("deliberately rejected")), "{rejected}");
    assert_eq!(code(&rejected), "REJECTED", "{rejected}");
    assert!(error_extensions(&rejected)["correlationId"].is_string(), "{rejected}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_do_not_reach_clients() {
    support::capture_logs();
    let url = pg::database().await;
    let (shell, client) = pg_shell(&url).await;
    let db = pg::client(&url).await;

    db.batch_execute("ALTER TABLE documents RENAME TO documents_away").await.expect("rename");
    let query = client.graphql("{ customers { id } }").await;
    assert_eq!((error(&query), code(&query)), (Some("internal error"), "INTERNAL"), "{query}");
    assert!(!query.to_string().contains("documents"), "no database text: {query}");
    let id = error_extensions(&query)["correlationId"].as_str().expect("a correlation id");
    assert!(
        support::logged(id).iter().any(|(level, m)| level == "ERROR" && m.contains("documents")),
        "the detail is logged under {id}"
    );
    db.batch_execute("ALTER TABLE documents_away RENAME TO documents").await.expect("rename back");

    db.batch_execute("ALTER TABLE events RENAME TO events_away").await.expect("rename");
    let mutation = client.graphql(&invite("e@x.y", None)).await;
    assert_eq!((error(&mutation), code(&mutation)), (Some("internal error"), "INTERNAL"), "{mutation}");
    assert!(!mutation.to_string().contains("events"), "no database text: {mutation}");
    let id = error_extensions(&mutation)["correlationId"].as_str().expect("a correlation id");
    assert!(
        support::logged(id).iter().any(|(level, m)| level == "ERROR" && m.contains("events")),
        "the detail is logged under {id}"
    );
    db.batch_execute("ALTER TABLE events_away RENAME TO events").await.expect("rename back");
    shell.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable_to_clients() {
    let cluster = pg::OwnCluster::start();
    let url = cluster.database().await;
    let (shell, client) = pg_shell(&url).await;
    tokio::task::block_in_place(|| cluster.stop());
    for query in ["{ customers { id } }".to_owned(), invite("u@x.y", Some("u-1"))] {
        let body = client.graphql(&query).await;
        assert_eq!(code(&body), "UNAVAILABLE", "{query}: {body}");
        let text = body.to_string();
        assert!(!text.contains("onnect") && !text.contains("database"), "no database text: {body}");
        assert!(error_extensions(&body)["correlationId"].is_string(), "{body}");
    }
    drop(shell);
    drop(cluster);
}

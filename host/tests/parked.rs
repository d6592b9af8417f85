//! Nothing lost in silence: an event whose step keeps failing (a trap, a
//! deadline, conflicts exhausted) is retried, then parked — visible in
//! `/metrics`, `/readyz`, the admin API and `host parked` — or its consumer
//! stops there; after a fix is deployed, `retry` applies it. And a swap that
//! changes a consumer's inputs under a stream of events loses and doubles
//! nothing. Memory and Postgres; uses the fixtures in `modules/fixtures/`
//! (`make guest`) and, for Postgres, `support/pg.rs`.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::config::{BackendKind, ConsumerPolicy, OnFailure};
use host::runtime::Version;
use host::{Project, Shell};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};
use support::{Client, basic_project, error, module, running_version};

const TOKEN: &str = "park-s3cret";
const PROJECTOR: &str = "misbehave-projector";

/// The misbehaving handler, its resolver and the misbehaving projector,
/// with `policy` for the projector.
fn project(policy: ConsumerPolicy) -> Project {
    let mut project = basic_project();
    project.functions = Some(vec![
        "fixtures/misbehave".into(),
        "fixtures/misbehave-resolver".into(),
        "fixtures/misbehave-projector".into(),
    ]);
    for name in ["fixtures/misbehave", "fixtures/misbehave-resolver", "fixtures/misbehave-projector"] {
        module(name);
    }
    project.watch = false;
    project.admin.token = Some(TOKEN.into());
    project.limits.deadline_ms = 300;
    project.response_timeout_ms = 20_000;
    project.consumers.insert(PROJECTOR.into(), policy);
    project
}

fn on_postgres(mut project: Project, url: &str) -> Project {
    project.backend = BackendKind::Postgres;
    project.database_url = Some(url.to_owned());
    project
}

fn park(retries: u32) -> ConsumerPolicy {
    ConsumerPolicy { retries, backoff_ms: 10, on_failure: OnFailure::Park, ..ConsumerPolicy::default() }
}

async fn start(project: Project) -> (Shell, Client) {
    let shell = Shell::start(project).await.expect("the shell starts (run `make guest` first)");
    let client = Client::new(&format!("http://{}", shell.addr));
    (shell, client)
}

fn fixed() -> Vec<u8> {
    std::fs::read(module("fixtures/misbehave-projector-fixed")).expect("the fixed projector")
}

fn wide() -> Vec<u8> {
    std::fs::read(module("fixtures/misbehave-projector-wide")).expect("the wide projector")
}

fn plain() -> Vec<u8> {
    std::fs::read(module("fixtures/misbehave-projector")).expect("the projector")
}

/// A `Misbehave` command (the handler behaves for the `project-*` phases);
/// the id of the thing, which is the id of its view.
async fn misbehave(client: &Client, action: &str, phase: &str) -> String {
    let body = client
        .graphql(&format!(r#"mutation {{ Misbehave(action: "{action}", phase: "{phase}") {{ id }} }}"#))
        .await;
    body["data"]["Misbehave"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{action} in {phase}: {body}"))
        .to_owned()
}

/// A `Misbehave` command whose event the projector will fail on. Its
/// request may be answered (by the handler's notification) or failed (by
/// the projector's `Failed` notification, if that comes first: the stable
/// `COMMAND_FAILED`, the detail in the log): either way the event is in
/// the log. The id of its thing comes from the record.
async fn misbehave_projector(client: &Client, action: &str, phase: &str) {
    let body = client
        .graphql(&format!(r#"mutation {{ Misbehave(action: "{action}", phase: "{phase}") {{ id }} }}"#))
        .await;
    let answered = body["data"]["Misbehave"]["id"].is_string();
    assert!(answered || body["errors"][0]["extensions"]["code"] == "COMMAND_FAILED", "{body}");
}

/// The thing id, action and phase of a parked or stopped record's event.
fn payload(record: &Value) -> (String, &Value, &Value) {
    let payload = &record["event"]["message"]["payload"];
    (
        payload["id"].as_str().unwrap_or_else(|| panic!("{record}")).to_owned(),
        &payload["action"],
        &payload["phase"],
    )
}

async fn view(client: &Client, id: &str) -> Value {
    let body = client.graphql(&format!(r#"{{ thingView(id: "{id}") {{ id action phase }} }}"#)).await;
    assert!(error(&body).is_none(), "{body}");
    body["data"]["thingView"].clone()
}

/// Every view's id, page by page.
async fn views(client: &Client) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut after = String::new();
    loop {
        let query = format!(r#"{{ thingViews(first: 100, after: "{after}") {{ id }} }}"#);
        let body = client.graphql(&query).await;
        let page = body["data"]["thingViews"].as_array().cloned().unwrap_or_else(|| panic!("{body}"));
        let Some(last) = page.last().and_then(|v| v["id"].as_str()) else { return ids };
        after = last.to_owned();
        ids.extend(page.iter().filter_map(|v| v["id"].as_str().map(str::to_owned)));
    }
}

async fn admin(client: &Client, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    client.admin(method, path, Some(TOKEN), body).await
}

async fn parked(client: &Client) -> Value {
    let (status, body) = admin(client, reqwest::Method::GET, "/admin/parked", vec![]).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn retry(client: &Client, path: &str) -> (u16, Value) {
    admin(client, reqwest::Method::POST, &format!("/admin/functions/{PROJECTOR}/retry{path}"), vec![]).await
}

async fn deploy(client: &Client, bytes: Vec<u8>, force: bool) {
    let path = format!("/admin/functions/{PROJECTOR}?force={force}");
    let (status, body) = admin(client, reqwest::Method::PUT, &path, bytes).await;
    assert_eq!(status, 200, "{body}");
}

async fn text(client: &Client, path: &str) -> (u16, String) {
    let response = client.http.get(format!("{}{path}", client.base)).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The value of a metric line (name with its labels) in `/metrics`.
async fn metric(client: &Client, line: &str) -> Option<f64> {
    let (_, metrics) = text(client, "/metrics").await;
    metrics.lines().find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
}

/// Polls `check` until it holds, for at most `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `get` until it gives a value, for at most `within`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut get: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = get().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `host ARGS --to URL` with the admin token, off the async runtime.
async fn host(client: &Client, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_host"));
    command.args(args).args(["--to", &client.base]).env("LOWSHELL_ADMIN_TOKEN", TOKEN).env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || command.output().expect("host runs")).await.expect("host")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The metrics are per process: tests that park run one at a time, so that
/// one test's gauge is not another's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const GAUGE: &str = "lowshell_parked_events{function=\"misbehave-projector\"}";

/// A trap in the projector parks the event (the events after it go on); a
/// retry with the same version fails again and says why; after the fixed
/// version is deployed, a retry applies it. `client` and `other` may be
/// two shells on one database.
async fn park_then_fix_and_retry(client: &Client, other: &Client) {
    misbehave_projector(client, "trap", "project-operate").await;
    let after = misbehave(client, "ok", "").await;
    eventually("the event after it is projected", Duration::from_secs(20), || async {
        !view(client, &after).await.is_null()
    })
    .await;

    // Parked, with its event and error, seen from either shell.
    let record = until("the failing event is parked", Duration::from_secs(20), || async {
        Some(parked(other).await["parked"][0].clone()).filter(|r| !r.is_null())
    })
    .await;
    assert_eq!(record["consumer"], PROJECTOR, "{record}");
    assert_eq!(record["event"]["message"]["kind"], "Happened", "{record}");
    let (failing, action, phase) = payload(&record);
    assert_eq!((action.as_str(), phase.as_str()), (Some("trap"), Some("project-operate")), "{record}");
    assert_eq!(record["attempts"], 2, "the first try and one retry: {record}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains("deliberate trap in project-operate"), "{record}");
    let position = record["position"].as_u64().expect("a position");
    assert!(view(client, &failing).await.is_null(), "not applied");

    eventually("the gauge counts it", Duration::from_secs(20), || async {
        metric(client, GAUGE).await == Some(1.0)
    })
    .await;
    let (status, ready) = text(other, "/readyz").await;
    assert_eq!(status, 200, "parked events do not make the shell unready: {ready}");
    assert!(ready.contains("parked events: misbehave-projector 1"), "{ready}");
    let listed = host(other, &["parked"]).await;
    assert!(listed.status.success(), "{listed:?}");
    let listed = stdout(&listed);
    assert!(listed.contains(PROJECTOR) && listed.contains(&position.to_string()), "{listed}");
    assert!(listed.contains("Happened") && listed.contains("deliberate trap"), "{listed}");

    // The same version fails again: still parked, one attempt more.
    let again = host(other, &["retry", PROJECTOR]).await;
    assert!(!again.status.success(), "a failed retry is a failure exit: {again:?}");
    assert!(stdout(&again).contains("failed again"), "{again:?}");
    let record = parked(client).await["parked"][0].clone();
    assert_eq!(record["attempts"], 3, "{record}");
    assert!(record["error"].as_str().unwrap_or_default().contains("deliberate trap"), "{record}");
    let (status, body) = retry(client, "?position=999999").await;
    assert_eq!(status, 404, "nothing parked there: {body}");

    // Fixed, then retried: applied, and no longer parked.
    deploy(other, fixed(), false).await;
    let version = Version::of(&fixed()).0;
    eventually("every shell runs the fix", Duration::from_secs(20), || async {
        running_version(client, PROJECTOR).await == version
    })
    .await;
    let applied = host(other, &["retry", PROJECTOR, &position.to_string()]).await;
    assert!(applied.status.success(), "{applied:?}");
    assert!(stdout(&applied).contains(&format!("position {position} applied")), "{applied:?}");
    assert_eq!(view(client, &failing).await["id"], failing.as_str(), "the read model has it");
    assert_eq!(parked(client).await["parked"], json!([]));
    eventually("the gauge is back to 0", Duration::from_secs(20), || async {
        metric(client, GAUGE).await == Some(0.0)
    })
    .await;
    let (_, ready) = text(client, "/readyz").await;
    assert_eq!(ready.trim(), "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_failing_event_is_parked_and_applied_after_a_fix() {
    let _serial = SERIAL.lock().await;
    let (shell, client) = start(project(park(1))).await;
    park_then_fix_and_retry(&client, &client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_failing_event_is_parked_and_applied_after_a_fix_from_any_shell() {
    let _serial = SERIAL.lock().await;
    let url = pg::database().await;
    let (a, client_a) = start(on_postgres(project(park(1)), &url)).await;
    let (b, client_b) = start(on_postgres(project(park(1)), &url)).await;
    park_then_fix_and_retry(&client_a, &client_b).await;
    b.stop().await.expect("clean stop");
    a.stop().await.expect("clean stop");
}

/// Deadlines, traps in any phase and conflicts exhausted all park.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_failure_parks() {
    let _serial = SERIAL.lock().await;
    let (shell, client) = start(project(park(0))).await;
    let cases = [
        ("trap", "project-lookup", "deliberate trap in project-lookup"),
        ("loop", "project-write", "deadline"),
        ("collide", "project-write", "kept conflicting"),
    ];
    for (n, (action, phase, reason)) in cases.iter().enumerate() {
        misbehave_projector(&client, action, phase).await;
        let records = until(&format!("{action} in {phase} is parked"), Duration::from_secs(20), || async {
            Some(parked(&client).await["parked"].clone())
                .filter(|r| r.as_array().map(Vec::len) == Some(n + 1))
        })
        .await;
        let record = &records[n];
        let (_, parked_action, parked_phase) = payload(record);
        assert_eq!(
            (parked_action.as_str(), parked_phase.as_str()),
            (Some(*action), Some(*phase)),
            "{records}"
        );
        assert!(record["error"].as_str().unwrap_or_default().contains(reason), "{action}: {record}");
        assert_eq!(record["attempts"], 1, "{record}");
    }
    // A command that fails still fails its request, and is not parked.
    let body = client.graphql(r#"mutation { Misbehave(action: "trap", phase: "operate") { id } }"#).await;
    // (Its detail is for the operator; the requester gets a stable message and code.)
    assert_eq!(error(&body), Some("the command failed"), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "COMMAND_FAILED", "{body}");
    assert_eq!(parked(&client).await["parked"].as_array().map(Vec::len), Some(3));

    deploy(&client, fixed(), false).await;
    let (status, body) = retry(&client, "").await;
    assert_eq!(status, 200, "{body}");
    let retried = body["retried"].as_array().cloned().unwrap_or_default();
    assert_eq!(retried.len(), 3, "{body}");
    assert!(retried.iter().all(|r| r["applied"] == true), "{body}");
    assert_eq!(parked(&client).await["parked"], json!([]));
    shell.stop().await.expect("clean stop");
}

/// `on-failure = "stop"`: the consumer stays at the failing event (the
/// next one waits), is shown as stopped, and a retry after the fix wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_consumer_waits_at_the_event_until_a_retry_after_the_fix() {
    let _serial = SERIAL.lock().await;
    // A long backoff: only the retry makes it try again within the test.
    let policy = ConsumerPolicy {
        retries: 0,
        backoff_ms: 25_000,
        on_failure: OnFailure::Stop,
        ..ConsumerPolicy::default()
    };
    let (shell, client) = start(project(policy)).await;
    misbehave_projector(&client, "trap", "project-operate").await;
    let after = misbehave(&client, "ok", "").await;

    let stopped = until("the consumer stops", Duration::from_secs(20), || async {
        Some(parked(&client).await["stopped"][0].clone()).filter(|s| !s.is_null())
    })
    .await;
    assert_eq!(stopped["function"], PROJECTOR, "{stopped}");
    let (failing, action, _) = payload(&stopped);
    assert_eq!(action, "trap", "{stopped}");
    assert!(stopped["error"].as_str().unwrap_or_default().contains("deliberate trap"), "{stopped}");
    assert_eq!(parked(&client).await["parked"], json!([]), "nothing is parked");
    let stopped_gauge = "lowshell_consumer_stopped{function=\"misbehave-projector\"}";
    assert_eq!(metric(&client, stopped_gauge).await, Some(1.0));
    let (status, ready) = text(&client, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("stopped consumers: misbehave-projector at position"), "{ready}");
    let listed = stdout(&host(&client, &["parked"]).await);
    assert!(listed.contains("stopped at position"), "{listed}");
    assert!(view(&client, &after).await.is_null(), "nothing after the failing event is processed");

    // A retry before the fix: tried at once, fails again.
    let (status, body) = retry(&client, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retried"][0]["applied"], false, "{body}");
    assert_eq!(body["retried"][0]["attempts"], 2, "{body}");

    deploy(&client, fixed(), false).await;
    let (status, body) = retry(&client, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retried"][0]["applied"], true, "{body}");
    eventually("both events are projected, in order", Duration::from_secs(20), || async {
        !view(&client, &after).await.is_null()
    })
    .await;
    assert_eq!(view(&client, &failing).await["id"], failing.as_str());
    assert_eq!(parked(&client).await["stopped"], json!([]));
    assert_eq!(metric(&client, stopped_gauge).await, Some(0.0));
    shell.stop().await.expect("clean stop");
}

/// Commands stream in while the projector is swapped, forced, between
/// versions with other inputs; its backlog is deep (each step takes 50 ms).
/// Every event ends up projected exactly once: none missing, none parked
/// (the projector inserts, so an event applied twice would conflict).
async fn swaps_changing_inputs_lose_and_double_nothing(client: &Client) {
    let sent = 60;
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut ids = vec![];
                for _ in 0..sent / 4 {
                    ids.push(misbehave(&client, "slow", "project-operate").await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                ids
            })
        })
        .collect();
    for bytes in [wide(), plain(), wide(), plain()] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        deploy(client, bytes, true).await;
    }
    let mut ids = BTreeSet::new();
    for sender in senders {
        ids.extend(sender.await.expect("sender"));
    }
    assert_eq!(ids.len(), sent);
    eventually("every event is projected", Duration::from_secs(60), || async {
        views(client).await.is_superset(&ids)
    })
    .await;
    let report = parked(client).await;
    assert_eq!(report["parked"], json!([]), "nothing was applied twice: {report}");
    assert_eq!(views(client).await, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_swaps_changing_inputs_lose_and_double_nothing() {
    let _serial = SERIAL.lock().await;
    let (shell, client) = start(project(park(0))).await;
    swaps_changing_inputs_lose_and_double_nothing(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_swaps_changing_inputs_lose_and_double_nothing() {
    let _serial = SERIAL.lock().await;
    let url = pg::database().await;
    let (shell, client) = start(on_postgres(project(park(0)), &url)).await;
    swaps_changing_inputs_lose_and_double_nothing(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn retry_refuses_unknown_functions_and_needs_the_token() {
    let _serial = SERIAL.lock().await;
    let (shell, client) = start(project(park(0))).await;
    let (status, body) = admin(&client, reqwest::Method::POST, "/admin/functions/nobody/retry", vec![]).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) =
        admin(&client, reqwest::Method::POST, "/admin/functions/misbehave-resolver/retry", vec![]).await;
    assert_eq!(status, 404, "a resolver consumes nothing: {body}");
    for path in ["/admin/parked", "/admin/functions/misbehave-projector/retry"] {
        let response = client.http.get(format!("{}{path}", client.base)).send().await.expect("GET");
        assert_ne!(response.status().as_u16(), 200, "{path}");
        let response = client.http.post(format!("{}{path}", client.base)).send().await.expect("POST");
        assert!(matches!(response.status().as_u16(), 401 | 405), "{path}: {}", response.status());
    }
    let (status, body) = retry(&client, "").await;
    assert_eq!((status, &body["retried"]), (200, &json!([])), "nothing to retry: {body}");
    assert_eq!(stdout(&host(&client, &["parked"]).await).trim(), "no parked events");
    shell.stop().await.expect("clean stop");
}

/// One layer of retries per cause: a step whose commit keeps conflicting
/// was retried (`attempts`, each with a fresh lookup) and is parked without
/// the policy's retries on top; other failures get the policy's retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_not_retried_twice() {
    let _serial = SERIAL.lock().await;
    let (shell, client) = start(project(park(2))).await;
    for (n, (action, phase, attempts)) in
        [("collide", "project-write", 1), ("trap", "project-lookup", 3)].iter().enumerate()
    {
        misbehave_projector(&client, action, phase).await;
        let records = until(&format!("{action} is parked"), Duration::from_secs(20), || async {
            Some(parked(&client).await["parked"].clone())
                .filter(|r| r.as_array().map(Vec::len) == Some(n + 1))
        })
        .await;
        assert_eq!(records[n]["attempts"], *attempts, "{action}: {}", records[n]);
    }
    shell.stop().await.expect("clean stop");
}

//! Misbehaving guests (`guest-functions/fixtures/`) fail their own command
//! — and only that command: the next one works, and an invalid plan stores
//! nothing. The client gets `COMMAND_FAILED` and the correlation id; the
//! clear reason is in the log under that id.

mod support;

use host::Project;
use serde_json::Value;
use support::{Client, basic_project, error, error_extensions, fails, misbehave, start};

/// The misbehaving handler and resolver, beside the customer projector (so
/// that another function's collection exists), with tight limits.
fn fixture_project() -> Project {
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
    project.limits.deadline_ms = 200;
    project.limits.memory_mib = 16;
    support::capture_logs();
    project
}

/// …and the shell still serves the next command.
async fn still_serves(client: &Client) {
    let body = misbehave(client, "ok", "operate").await;
    assert_eq!(body["data"]["Misbehave"]["action"], "ok", "{body}");
}

#[tokio::test]
async fn an_endless_loop_in_any_phase_hits_the_deadline() {
    let (shell, client) = start(fixture_project()).await;
    for phase in ["lookup", "operate", "write"] {
        fails(&client, "loop", phase, &["`misbehave`", "deadline", phase]).await;
        still_serves(&client).await;
    }
    fails(&client, "resolve-loop", "operate", &["`misbehave-resolver`", "deadline", "resolve"]).await;
    still_serves(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_memory_bomb_fails_that_command_only() {
    let (shell, client) = start(fixture_project()).await;
    for phase in ["lookup", "operate", "write"] {
        fails(&client, "alloc", phase, &["`misbehave`", phase]).await;
        still_serves(&client).await;
    }
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_trap_reports_the_function_and_its_message() {
    let (shell, client) = start(fixture_project()).await;
    for phase in ["lookup", "operate", "write"] {
        fails(&client, "trap", phase, &["`misbehave`", "trapped", &format!("deliberate trap in {phase}")])
            .await;
        still_serves(&client).await;
    }
    fails(&client, "resolve-trap", "operate", &["`misbehave-resolver`", "deliberate trap in resolve"]).await;
    still_serves(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn invalid_plans_are_refused_and_store_nothing() {
    let (shell, client) = start(fixture_project()).await;
    let cases: &[(&str, &[&str])] = &[
        ("bad-json", &["invalid value", "not valid JSON"]),
        ("no-kind", &["invalid value", "has no kind"]),
        ("unknown-lookup", &["invalid plan", "unknown collection `nowhere`"]),
        ("unknown-collection", &["invalid plan", "unknown collection `nowhere`"]),
        ("foreign-collection", &["invalid plan", "`customers`", "customer-projector"]),
        ("partial", &["invalid plan", "unknown collection `nowhere`"]),
        ("conflict", &["kept conflicting", "already exists"]),
        ("bad-plan-json", &["invalid value", "not valid JSON"]),
    ];
    for (action, expected) in cases {
        fails(&client, action, "operate", expected).await;
    }
    let things = client.graphql("{ things { id action } }").await;
    assert_eq!(things["data"]["things"], serde_json::json!([]), "nothing partial remains: {things}");
    let customers = client.graphql("{ customers { id } }").await;
    assert_eq!(customers["data"]["customers"], serde_json::json!([]), "{customers}");
    still_serves(&client).await;
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_rejection_reaches_the_requester() {
    let (shell, client) = start(fixture_project()).await;
    let body = misbehave(&client, "reject", "operate").await;
    assert!(error(&body).is_some_and(|m| m.contains("deliberately rejected")), "{body}");
    assert_eq!(error_extensions(&body)["code"], "REJECTED", "{body}");
    assert!(error_extensions(&body)["correlationId"].is_string(), "{body}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn guests_see_no_files_network_environment_or_clock() {
    let (shell, client) = start(fixture_project()).await;

    let body = misbehave(&client, "probe", "operate").await;

    let detail = body["data"]["Misbehave"]["detail"].as_str().unwrap_or_else(|| panic!("a probe: {body}"));
    let seen: Value = serde_json::from_str(detail).expect("the probe reports JSON");
    assert!(seen["files"].as_str().is_some_and(|f| f.starts_with("denied")), "{seen}");
    assert!(seen["net"].as_str().is_some_and(|n| n.starts_with("denied")), "{seen}");
    assert_eq!(seen["env-vars"], 0, "{seen}");
    assert_eq!(seen["args"], 0, "{seen}");
    assert_eq!(seen["clock-ms"], 0, "the WASI clock stands still: {seen}");
    shell.stop().await.expect("clean stop");
}

/// Guests that loop give their async worker back at every epoch tick: with
/// four looping resolvers and four looping handlers in flight (on a runtime
/// of two workers, as on a small machine), `/healthz` and an unrelated
/// `InviteCustomer` still answer promptly. Bounds are generous; the
/// benchmark has the precise figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_guests_do_not_stall_the_shell() {
    let mut project = fixture_project();
    project.functions = Some(
        [
            "invite-customer",
            "customer-projector",
            "invite-resolver",
            "fixtures/misbehave",
            "fixtures/misbehave-resolver",
        ]
        .map(String::from)
        .to_vec(),
    );
    project.limits.deadline_ms = 3_000;
    let (shell, client) = start(project).await;
    let mut loops = tokio::task::JoinSet::new();
    for action in ["resolve-loop", "loop"] {
        for _ in 0..4 {
            let client = client.clone();
            loops.spawn(async move { misbehave(&client, action, "operate").await });
        }
    }
    // Let them start spinning.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let health = client.http.get(format!("{}/healthz", client.base)).send().await.expect("healthz");
    assert!(health.status().is_success());
    let healthz = started.elapsed();
    let started = std::time::Instant::now();
    let body = client.invite("busy@example.com").await;
    let invite = started.elapsed();
    assert_eq!(body["data"]["InviteCustomer"]["invited"], true, "{body}");
    eprintln!("with eight looping guests: /healthz {healthz:?}, InviteCustomer {invite:?}");
    assert!(healthz < std::time::Duration::from_millis(1_000), "/healthz took {healthz:?}");
    assert!(invite < std::time::Duration::from_millis(2_000), "InviteCustomer took {invite:?}");

    // The loops still end at their deadline, each with its own error.
    while let Some(body) = loops.join_next().await {
        let body = body.expect("request task");
        assert!(error(&body).is_some(), "a loop fails: {body}");
    }
    shell.stop().await.expect("clean stop");
}

/// What `count` says: the `operate` calls its instance has served.
async fn served(client: &Client) -> String {
    let body = misbehave(client, "count", "operate").await;
    body["data"]["Misbehave"]["detail"].as_str().unwrap_or_else(|| panic!("a count: {body}")).to_owned()
}

/// An instance that served a step cleanly serves the next ones (so a
/// global of the guest's lives on between them, up to
/// `limits.executions-per-instance`); one whose call failed — trapped,
/// interrupted at its deadline, out of memory — is dropped, and the next
/// step gets a fresh one.
#[tokio::test]
async fn an_instance_serves_further_steps_until_one_fails() {
    let (shell, client) = start(fixture_project()).await;
    assert_eq!([served(&client).await, served(&client).await, served(&client).await], ["1", "2", "3"]);
    for (action, phase) in [("trap", "operate"), ("loop", "write"), ("alloc", "lookup")] {
        let body = misbehave(&client, action, phase).await;
        assert!(error(&body).is_some(), "{action} fails: {body}");
        assert_eq!(served(&client).await, "1", "after a failing {action}, a fresh instance");
        assert_eq!(served(&client).await, "2");
    }
    shell.stop().await.expect("clean stop");

    let mut project = fixture_project();
    project.limits.executions_per_instance = 2;
    let (shell, client) = start(project).await;
    let mut counts = vec![];
    for _ in 0..6 {
        counts.push(served(&client).await);
    }
    // (Reading its `meta` when it was loaded was one execution too.)
    assert!(counts.iter().all(|c| c == "1" || c == "2"), "an instance serves two executions: {counts:?}");
    assert!(counts.contains(&"2".to_owned()), "{counts:?}");
    shell.stop().await.expect("clean stop");

    let mut project = fixture_project();
    project.limits.executions_per_instance = 1;
    let (shell, client) = start(project).await;
    assert_eq!([served(&client).await, served(&client).await], ["1", "1"], "a fresh instance every step");
    shell.stop().await.expect("clean stop");
}

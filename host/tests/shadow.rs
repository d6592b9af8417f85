//! Shadow deploys: a candidate runs beside the live version on every input
//! the live one commits, its decisions compared and never applied; then it
//! is promoted (deployed) or dropped. Real HTTP, real components, both
//! backends.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::Project;
use host::runtime::Version;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::{Client, basic_project, module, running_version, start, workspace};

const TOKEN: &str = "s3cret";
const FUNCTION: &str = "invite-customer";

fn memory_project() -> Project {
    let mut project = basic_project();
    project.watch = false;
    project.admin.token = Some(TOKEN.into());
    project
}

fn v1() -> Vec<u8> {
    std::fs::read(module("invite-customer")).expect("v1")
}

fn v2() -> Vec<u8> {
    std::fs::read(module("v2/invite-customer")).expect("v2")
}

async fn admin(client: &Client, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    client.admin(method, path, Some(TOKEN), body).await
}

async fn shadow(client: &Client, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    admin(client, reqwest::Method::PUT, &format!("/admin/functions/{name}?shadow=true"), bytes).await
}

async fn report(client: &Client) -> (u16, Value) {
    admin(client, reqwest::Method::GET, &format!("/admin/functions/{FUNCTION}/shadow"), vec![]).await
}

/// The report once the candidate has settled `n` inputs.
async fn settled(client: &Client, n: u64) -> Value {
    let mut waited = Duration::ZERO;
    loop {
        let (status, report) = report(client).await;
        assert_eq!(status, 200, "{report}");
        let settled: u64 = ["same", "different", "failed", "skipped"]
            .iter()
            .map(|k| report[k].as_u64().unwrap_or_default())
            .sum();
        if settled >= n {
            return report;
        }
        assert!(waited < Duration::from_secs(60), "the candidate settles {n} inputs: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
}

async fn invited_email(client: &Client, email: &str) -> Value {
    let body = client.invite(email).await;
    let invited = body["data"]["InviteCustomer"]["email"].clone();
    assert!(invited.is_string(), "{email}: {body}");
    invited
}

/// The emails of the customers read model, sorted.
async fn customer_emails(client: &Client) -> Vec<String> {
    let body = client.graphql("{ customers { email } }").await;
    let mut emails: Vec<String> = body["data"]["customers"]
        .as_array()
        .unwrap_or_else(|| panic!("customers: {body}"))
        .iter()
        .filter_map(|c| c["email"].as_str().map(str::to_owned))
        .collect();
    emails.sort();
    emails
}

/// Mixed-case emails differ (v2 lower-cases them), lower-case ones do not;
/// only v1's decisions reach the data; the comparison is on `/metrics`.
async fn shadow_v2_compares_and_applies_nothing(client: &Client) {
    let (status, started) = shadow(client, FUNCTION, v2()).await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["candidate-version"], Version::of(&v2()).0);
    assert_eq!(started["live-version"], Version::of(&v1()).0);

    let sent = ["Dean@P14N.com", "bob@example.com", "Ada@Example.COM", "carol@example.com"];
    for email in sent {
        assert_eq!(invited_email(client, email).await, email, "v1 answers, keeping the case");
    }
    let report = settled(client, 4).await;

    assert_eq!((report["same"].as_u64(), report["different"].as_u64()), (Some(2), Some(2)), "{report}");
    assert_eq!((report["failed"].as_u64(), report["skipped"].as_u64()), (Some(0), Some(0)), "{report}");
    let samples = report["samples"].as_array().cloned().unwrap_or_default();
    let inputs: Vec<&str> = samples.iter().filter_map(|s| s["input"]["payload"]["email"].as_str()).collect();
    assert_eq!(inputs, ["Dean@P14N.com", "Ada@Example.COM"], "{report}");
    let sample = &samples[0];
    assert_eq!(sample["verdict"], "different");
    assert_eq!(sample["live"]["outcome"]["emit"][0]["payload"]["email"], "Dean@P14N.com", "{sample}");
    assert_eq!(sample["candidate"]["outcome"]["emit"][0]["payload"]["email"], "dean@p14n.com", "{sample}");
    assert_eq!(sample["candidate"]["plans"][0]["ops"][0]["key"], "dean@p14n.com", "{sample}");

    let mut expected: Vec<String> = sent.iter().map(|e| (*e).to_owned()).collect();
    expected.sort();
    let mut waited = Duration::ZERO;
    while customer_emails(client).await != expected {
        assert!(waited < Duration::from_secs(60), "only v1's customers: {:?}", customer_emails(client).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    assert_eq!(running_version(client, FUNCTION).await, Version::of(&v1()).0, "still v1");
    let metrics = client.http.get(format!("{}/metrics", client.base)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    for outcome in ["same", "different"] {
        let series = format!(r#"lowshell_shadow_total{{function="{FUNCTION}",outcome="{outcome}"}}"#);
        let count = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} in:\n{metrics}"));
        assert!(count >= 2.0, "{series} {count}");
    }
}

#[tokio::test]
async fn a_shadow_compares_and_a_promotion_swaps_the_candidate_in() {
    let (shell, client) = start(memory_project()).await;
    shadow_v2_compares_and_applies_nothing(&client).await;

    let promote = format!("/admin/functions/{FUNCTION}/promote");
    let (status, promoted) = admin(&client, reqwest::Method::POST, &promote, vec![]).await;

    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["version"], Version::of(&v2()).0);
    assert_eq!(running_version(&client, FUNCTION).await, Version::of(&v2()).0);
    assert_eq!(invited_email(&client, "Eve@Example.com").await, "eve@example.com", "v2 serves");
    assert_eq!(report(&client).await.0, 404, "the candidate is gone once promoted");
    let (status, again) = admin(&client, reqwest::Method::POST, &promote, vec![]).await;
    assert_eq!(status, 404, "nothing left to promote: {again}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_aborted_shadow_is_gone_and_the_live_version_stays() {
    let (shell, client) = start(memory_project()).await;
    let (status, started) = shadow(&client, FUNCTION, v2()).await;
    assert_eq!(status, 200, "{started}");
    invited_email(&client, "Zed@Example.com").await;
    settled(&client, 1).await;

    let path = format!("/admin/functions/{FUNCTION}/shadow");
    let (status, last) = admin(&client, reqwest::Method::DELETE, &path, vec![]).await;

    assert_eq!(status, 200, "{last}");
    assert_eq!(last["different"], 1, "the final report: {last}");
    assert_eq!(report(&client).await.0, 404, "the candidate is gone");
    assert_eq!(admin(&client, reqwest::Method::DELETE, &path, vec![]).await.0, 404);
    assert_eq!(invited_email(&client, "Amy@Example.com").await, "Amy@Example.com", "v1 serves");
    assert_eq!(running_version(&client, FUNCTION).await, Version::of(&v1()).0);
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_candidate_gets_the_checks_of_a_deploy() {
    let (shell, client) = start(memory_project()).await;
    let resolver = std::fs::read(module("invite-resolver")).expect("resolver");
    let (status, body) = shadow(&client, FUNCTION, resolver.clone()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("is `invite-resolver`, not")), "{body}");
    let (status, body) = shadow(&client, "invite-resolver", resolver).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("resolver")), "{body}");
    let (status, body) = shadow(&client, "no-such-function", v2()).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = shadow(&client, FUNCTION, b"not a component".to_vec()).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin(
        &client,
        reqwest::Method::PUT,
        &format!("/admin/functions/{FUNCTION}?shadow=true&force=true"),
        v2(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(report(&client).await.0, 404, "no candidate after refusals");
    shell.stop().await.expect("clean stop");
}

// Multi-threaded: the CLI runs as a blocking child process while the shell serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_shadows_reports_and_aborts() {
    let (shell, client) = start(memory_project()).await;
    let host = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
            .args(args)
            .args(["--to", &client.base])
            .env("LOWSHELL_ADMIN_TOKEN", TOKEN)
            .current_dir(workspace())
            .output()
            .expect("host runs");
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };

    let (ok, out) = host(&["deploy", FUNCTION, "modules/v2/invite-customer.wasm", "--shadow"]);
    assert!(ok && out.contains("in shadow"), "{out}");
    invited_email(&client, "Kay@Example.com").await;
    settled(&client, 1).await;
    let (ok, out) = host(&["shadow", FUNCTION]);
    assert!(ok && out.contains("different 1") && out.contains("kay@example.com"), "{out}");
    let (ok, out) = host(&["deploy", FUNCTION, "--abort"]);
    assert!(ok && out.contains("dropped"), "{out}");
    let (ok, out) = host(&["shadow", FUNCTION]);
    assert!(!ok && out.contains("no candidate in shadow"), "{out}");
    let (ok, out) = host(&["deploy", FUNCTION, "modules/v2/invite-customer.wasm", "--shadow"]);
    assert!(ok, "{out}");
    let (ok, out) = host(&["promote", FUNCTION]);
    assert!(ok && out.contains("promoted"), "{out}");
    assert_eq!(running_version(&client, FUNCTION).await, Version::of(&v2()).0);
    shell.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_runs_on_postgres_too() {
    let url = pg::database().await;
    let text = pg::project_text(&url, "127.0.0.1:0", 60_000);
    let mut project = Project::parse(&text, Path::new(".")).expect("test project");
    project.admin.token = Some(TOKEN.into());
    let (shell, client) = start(project).await;
    shadow_v2_compares_and_applies_nothing(&client).await;
    let path = format!("/admin/functions/{FUNCTION}/shadow");
    assert_eq!(admin(&client, reqwest::Method::DELETE, &path, vec![]).await.0, 200);
    shell.stop().await.expect("clean stop");
}

/// Invites sent at once are committed in groups: each step of a group is
/// compared on what it found, with the writes of the steps before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_committed_together_are_each_compared() {
    let (shell, client) = start(memory_project()).await;
    let (status, started) = shadow(&client, FUNCTION, v2()).await;
    assert_eq!(status, 200, "{started}");
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..24 {
        let client = client.clone();
        // Every third one mixed-case; each email twice, the second an "already invited".
        let email = if i % 3 == 0 {
            format!("Mixed{}@Example.com", i / 2)
        } else {
            format!("lower{}@example.com", i / 2)
        };
        sent.spawn(async move { invited_email(&client, &email).await });
    }
    while let Some(done) = sent.join_next().await {
        done.expect("an invite");
    }
    let report = settled(&client, 24).await;
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["skipped"], 0, "{report}");
    let different = report["different"].as_u64().unwrap_or_default();
    let samples = report["samples"].as_array().cloned().unwrap_or_default();
    assert!(different > 0 && samples.len() as u64 == different.min(20), "{report}");
    for sample in &samples {
        let email = sample["input"]["payload"]["email"].as_str().unwrap_or_default();
        assert!(email.starts_with("Mixed"), "only mixed-case emails differ: {sample}");
    }
    shell.stop().await.expect("clean stop");
}

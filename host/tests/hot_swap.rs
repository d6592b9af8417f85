//! Hot swap: a new version of a function replaces the running one — over
//! the admin API, from the command line, or by copying the file — while
//! requests keep being answered.

mod support;

use host::Project;
use host::runtime::Version;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{Client, basic_project, error, module, running_version, start, workspace};

const TOKEN: &str = "s3cret";

fn project() -> Project {
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

async fn admin(
    client: &Client,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    client.admin(method, path, token, body).await
}

async fn deploy(client: &Client, bytes: Vec<u8>) -> (u16, Value) {
    admin(client, reqwest::Method::PUT, "/admin/functions/invite-customer", Some(TOKEN), bytes).await
}

async fn rollback(client: &Client) -> (u16, Value) {
    admin(client, reqwest::Method::POST, "/admin/functions/invite-customer/rollback", Some(TOKEN), vec![])
        .await
}

async fn invited_email(client: &Client, email: &str) -> Value {
    client.invite(email).await["data"]["InviteCustomer"]["email"].clone()
}

#[tokio::test]
async fn admin_endpoints_need_the_token() {
    let (shell, client) = start(project()).await;
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = admin(&client, reqwest::Method::GET, "/admin/functions", token, vec![]).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        let (status, _) = deploy_with(&client, token).await;
        assert_eq!(status, 401, "{token:?}");
    }
    let (status, listed) =
        admin(&client, reqwest::Method::GET, "/admin/functions", Some(TOKEN), vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    shell.stop().await.expect("clean stop");

    // No token configured: every admin request is refused.
    let mut open = project();
    open.admin.token = None;
    let (shell, client) = start(open).await;
    let (status, body) = admin(&client, reqwest::Method::GET, "/admin/functions", Some(TOKEN), vec![]).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().is_some_and(|e| e.contains("no admin token")), "{body}");
    shell.stop().await.expect("clean stop");
}

async fn deploy_with(client: &Client, token: Option<&str>) -> (u16, Value) {
    admin(client, reqwest::Method::PUT, "/admin/functions/invite-customer", token, v2()).await
}

#[tokio::test]
async fn a_new_version_changes_behaviour_and_a_rollback_restores_it() {
    let (shell, client) = start(project()).await;
    assert_eq!(invited_email(&client, "Dean@P14N.com").await, "Dean@P14N.com", "v1 keeps the case");

    let (status, deployed) = deploy(&client, v2()).await;

    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["version"], Version::of(&v2()).0);
    assert_eq!(deployed["previous-version"], Version::of(&v1()).0);
    assert_eq!(running_version(&client, "invite-customer").await, Version::of(&v2()).0);
    assert_eq!(invited_email(&client, "Ada@Example.com").await, "ada@example.com", "v2 normalises");
    let refused = client.invite("dean").await;
    assert!(error(&refused).is_some_and(|m| m.contains("Email must be an address")), "{refused}");

    let (status, rolled) = rollback(&client).await;

    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["version"], Version::of(&v1()).0);
    assert_eq!(invited_email(&client, "Bob@Example.com").await, "Bob@Example.com", "v1 again");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bad_uploads_are_refused_and_the_running_version_keeps_serving() {
    let (shell, client) = start(project()).await;
    let before = running_version(&client, "invite-customer").await;
    let refusals: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random bytes", b"definitely not a component".to_vec(), "not a WebAssembly component"),
        ("a core module", b"\0asm\x01\0\0\0".to_vec(), "not a WebAssembly component"),
        ("an empty component", b"\0asm\x0d\0\x01\0".to_vec(), "does not fit the contract"),
        (
            "another function",
            std::fs::read(module("invite-resolver")).expect("resolver"),
            "is `invite-resolver`, not `invite-customer`",
        ),
        (
            // Shaped like `function-lean` (no `operate`, no `write`), its
            // exports of other types: refused with what does not fit.
            "a function-lean component of other types",
            std::fs::read(module("fixtures/lean-mismatch")).expect("fixture"),
            "does not fit the contract's `function`, `function-lean` or `resolver` world: type-checking export func",
        ),
        (
            "a trap in meta",
            std::fs::read(module("fixtures/meta-trap")).expect("fixture"),
            "the component's `meta` call trapped",
        ),
    ];
    for (what, bytes, reason) in refusals {
        let (status, body) = deploy(&client, bytes).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(reason)), "{what}: {body}");
        // Nobody knows the name of a component whose `meta` did not answer.
        assert!(body["error"].as_str().is_some_and(|e| !e.contains("``")), "{what}: {body}");
        assert_eq!(running_version(&client, "invite-customer").await, before, "{what}");
        let still = invited_email(&client, &format!("{}@example.com", what.replace(' ', "-"))).await;
        assert!(still.is_string(), "{what}: the running version still answers");
    }
    let (status, body) = rollback(&client).await;
    assert_eq!(status, 409, "nothing to roll back to: {body}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn swapping_under_load_fails_no_request() {
    let (shell, client) = start(project()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (answered, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (client, stop, answered, failed) =
                (client.clone(), stop.clone(), answered.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = client.invite(&format!("load-{c}-{i}@example.com")).await;
                    if body["data"]["InviteCustomer"]["id"].is_string() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("failed: {body}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();

    for bytes in [v2(), v1(), v2(), v1(), v2()] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = deploy(&client, bytes).await;
        assert_eq!(status, 200, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }

    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request fails during swaps");
    assert!(answered.load(Ordering::Relaxed) > 0);
    assert_eq!(invited_email(&client, "After@Example.com").await, "after@example.com", "v2 serves last");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn copying_a_file_into_the_modules_folder_deploys_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["invite-customer", "customer-projector", "invite-resolver"] {
        std::fs::copy(module(name), dir.path().join(format!("{name}.wasm"))).expect("copy");
    }
    let mut project = project();
    project.modules = dir.path().to_path_buf();
    project.watch = true;
    let (shell, client) = start(project).await;
    assert_eq!(invited_email(&client, "Case@Example.com").await, "Case@Example.com");

    std::fs::copy(module("v2/invite-customer"), dir.path().join("invite-customer.wasm")).expect("copy v2");

    let wanted = Version::of(&v2()).0;
    let mut waited = Duration::ZERO;
    while running_version(&client, "invite-customer").await != wanted {
        assert!(waited < Duration::from_secs(30), "the watcher deploys the new file");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    assert_eq!(invited_email(&client, "Watched@Example.com").await, "watched@example.com");
    shell.stop().await.expect("clean stop");
}

// Multi-threaded: the CLI runs as a blocking child process while the shell serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_deploys_lists_and_rolls_back() {
    let (shell, client) = start(project()).await;
    let host = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_host"))
            .args(args)
            .args(["--to", &client.base])
            .env("LOWSHELL_ADMIN_TOKEN", TOKEN)
            .current_dir(workspace())
            .output()
            .expect("host runs")
    };

    let deployed = host(&["deploy", "invite-customer", "modules/v2/invite-customer.wasm"]);
    let out = String::from_utf8_lossy(&deployed.stdout);
    assert!(
        deployed.status.success() && out.contains('→'),
        "{out}{}",
        String::from_utf8_lossy(&deployed.stderr)
    );
    let listed = host(&["functions"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&Version::of(&v2()).0[..12]));
    let rolled = host(&["rollback", "invite-customer"]);
    assert!(rolled.status.success(), "{}", String::from_utf8_lossy(&rolled.stderr));
    assert_eq!(running_version(&client, "invite-customer").await, Version::of(&v1()).0);

    let denied = std::process::Command::new(env!("CARGO_BIN_EXE_host"))
        .args([
            "deploy",
            "invite-customer",
            "modules/v2/invite-customer.wasm",
            "--to",
            &client.base,
            "--token",
            "wrong",
        ])
        .current_dir(workspace())
        .output()
        .expect("host runs");
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn deploying_a_new_function_extends_the_schema_without_a_restart() {
    let (shell, client) = start(project()).await;
    let before = client.graphql(r#"mutation { Misbehave(action: "ok") { id } }"#).await;
    assert!(error(&before).is_some_and(|m| m.contains("Misbehave")), "not there yet: {before}");

    let bytes = std::fs::read(module("fixtures/misbehave")).expect("fixture");
    let (status, body) =
        admin(&client, reqwest::Method::PUT, "/admin/functions/misbehave", Some(TOKEN), bytes).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["previous-version"], Value::Null, "a new function");

    // The schema is rebuilt off the request path; wait for it.
    let mut waited = Duration::ZERO;
    loop {
        let after = client.graphql(r#"mutation { Misbehave(action: "ok") { id action } }"#).await;
        if after["data"]["Misbehave"]["action"] == "ok" {
            break;
        }
        assert!(waited < Duration::from_secs(10), "the new mutation is served: {after}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    let things = client.graphql("{ things { action } }").await;
    assert_eq!(things["data"]["things"][0]["action"], "ok", "and its read model is queryable: {things}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_version_whose_schema_cannot_be_built_is_refused_before_the_swap() {
    let (shell, client) = start(project()).await;
    // `misbehave` declaring a public model named `Customer`: the type
    // `customer-projector` declares.
    let bytes = std::fs::read(module("fixtures/schema-clash")).expect("fixture");
    let (status, body) =
        admin(&client, reqwest::Method::PUT, "/admin/functions/misbehave", Some(TOKEN), bytes).await;

    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("GraphQL schema")
            && message.contains("`Customer`")
            && message.contains("customer-projector"),
        "{body}"
    );
    // Both views agree: nothing was swapped in.
    let (_, listed) = admin(&client, reqwest::Method::GET, "/admin/functions", Some(TOKEN), vec![]).await;
    let admin_names: Vec<&str> =
        listed.as_array().into_iter().flatten().filter_map(|f| f["name"].as_str()).collect();
    assert!(!admin_names.contains(&"misbehave"), "{listed}");
    assert_eq!(running_version(&client, "misbehave").await, "", "the schema lists no misbehave either");
    assert_eq!(invited_email(&client, "Still@Example.com").await, "Still@Example.com");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_unknown_function_is_not_found_and_makes_no_metric_series() {
    let (shell, client) = start(project()).await;
    let (status, body) =
        admin(&client, reqwest::Method::POST, "/admin/functions/nosuch/rollback", Some(TOKEN), vec![]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("no function named `nosuch`")), "{body}");

    let (status, body) =
        admin(&client, reqwest::Method::PUT, "/admin/functions/nosuch", Some(TOKEN), b"junk".to_vec()).await;
    assert_eq!(status, 422, "{body}");
    let metrics = client.http.get(format!("{}/metrics", client.base)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    assert!(!metrics.contains("nosuch"), "no series for a name nobody runs:\n{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("lowshell_swaps_total")
            && l.contains(r#"function="(new)""#)
            && l.contains(r#"outcome="failed""#)),
        "counted under `(new)`:\n{metrics}"
    );
    shell.stop().await.expect("clean stop");
}

//! End to end with functions in three languages (`projects/polyglot.toml`):
//! the Rust handler, the JavaScript projector and the Python resolver that
//! `make guest` builds into `modules/polyglot/`, served over real HTTP on a
//! free port, within the project's limits.

mod support;

use futures::future::join_all;
use host::Project;
use host::runtime::Version;
use low_contract::{Data, Message, Outcome};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::{Client, error, running_version, start, workspace};

/// The polyglot project on a free port. Compiled components are cached in
/// the target dir, so only the first test run compiles the 12 MB and 18 MB
/// components (the JavaScript and Python runtimes).
fn polyglot_project() -> Project {
    let mut project =
        Project::load(&workspace().join("projects/polyglot.toml")).expect("projects/polyglot.toml loads");
    project.listen = "127.0.0.1:0".parse().expect("address");
    project.watch = false;
    project.cache_dir = Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("polyglot-component-cache"));
    for name in project.functions.iter().flatten() {
        let path = project.modules.join(format!("{name}.wasm"));
        assert!(path.exists(), "{} is missing: run `make guest`", path.display());
    }
    project
}

fn component(name: &str) -> Vec<u8> {
    let path = workspace().join("modules/polyglot").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make guest`)", path.display()))
}

#[tokio::test]
async fn the_javascript_projector_and_the_python_resolver_serve_invite_customer() {
    let started = Instant::now();
    let (shell, client) = start(polyglot_project()).await;
    let loading = started.elapsed();
    eprintln!("the polyglot project loaded in {loading:?}");
    // Generous: a cold debug-build compile of both components on a busy machine.
    assert!(loading < Duration::from_secs(300), "loading took {loading:?}");

    // The shell runs the JavaScript and Python components, not the Rust ones.
    let body = client.graphql("{ functions { name kind version } }").await;
    for (name, kind) in [("customer-projector", "projector"), ("invite-resolver", "resolver")] {
        let running = body["data"]["functions"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["name"] == name))
            .unwrap_or_else(|| panic!("{name} is loaded: {body}"));
        assert_eq!(running["kind"], kind, "{body}");
        assert_eq!(
            running["version"],
            Version::of(&component(name)).0,
            "{name} from modules/polyglot: {body}"
        );
    }

    // A new email: the Rust handler decides, the JavaScript projector stores
    // the customer, the Python resolver answers with it.
    let invited = client.invite("ada@example.com").await;
    let customer = &invited["data"]["InviteCustomer"];
    assert_eq!(customer["email"], "ada@example.com", "{invited}");
    assert_eq!(customer["invited"], true, "{invited}");
    let id = customer["id"].as_str().expect("an id").to_owned();
    let found = client.graphql(&format!(r#"{{ customer(id: "{id}") {{ id email invited }} }}"#)).await;
    assert_eq!(found["data"]["customer"], *customer, "{found}");

    // Again: the existing customer (CustomerInviteFailed, projected as it stands).
    let again = client.invite("ada@example.com").await;
    assert_eq!(again["data"]["InviteCustomer"], *customer, "{again}");

    // Refused: the Python resolver fails with the handler's reason.
    let refused = client.invite("").await;
    assert_eq!(error(&refused), Some("Email is required"), "{refused}");

    // Renamed: the JavaScript projector keeps the rest of the document.
    let renamed = client
        .graphql(&format!(
            r#"mutation {{ RenameCustomer(id: "{id}", email: "ada@lovelace.org") {{ id email invited }} }}"#
        ))
        .await;
    assert_eq!(
        renamed["data"]["RenameCustomer"],
        json!({ "id": id, "email": "ada@lovelace.org", "invited": true }),
        "{renamed}"
    );

    // Many at once: each step gets its own instance of the JavaScript and
    // Python components, all within the project's memory limit.
    let emails: Vec<String> = (0..16).map(|i| format!("user-{i}@example.com")).collect();
    let answers = join_all(emails.iter().map(|email| {
        let client = client.clone();
        async move { client.invite(email).await }
    }))
    .await;
    for (email, answer) in emails.iter().zip(&answers) {
        assert_eq!(answer["data"]["InviteCustomer"]["email"], email.as_str(), "{answer}");
    }
    let all = client.graphql("{ customers(first: 100) { id } }").await;
    assert_eq!(all["data"]["customers"].as_array().map(Vec::len), Some(17), "{all}");

    // One after another: their instances serve further steps, as Rust ones
    // do, though their runtimes start from a snapshot larger than what a
    // freed slot keeps resident (a fresh one costs about a millisecond).
    let before = instances_created(&client).await;
    for i in 0..10 {
        let answer = client.invite(&format!("again-{i}@example.com")).await;
        assert_eq!(answer["data"]["InviteCustomer"]["invited"], true, "{answer}");
    }
    let after = instances_created(&client).await;
    for (function, (before, after)) in
        ["customer-projector", "invite-resolver"].iter().zip(before.iter().zip(&after))
    {
        assert!(after - before < 5.0, "{function}: {} instances for 10 commands", after - before);
    }
    shell.stop().await.expect("clean stop");
}

/// The Python projector (built against `function-lean`, without `operate`
/// and `write` of their own) swapped in for the JavaScript one while the
/// shell serves: it stores customers and answers requests the same way,
/// and the stub host tests it phase by phase through `operate-and-write`.
#[tokio::test]
async fn the_python_projector_takes_over_from_the_javascript_one() {
    const TOKEN: &str = "polyglot-admin";
    let mut project = polyglot_project();
    project.admin.token = Some(TOKEN.into());
    let (shell, client) = start(project).await;
    let before = client.invite("ada@example.com").await;
    let ada = before["data"]["InviteCustomer"].clone();
    assert_eq!(ada["invited"], true, "{before}");

    let python = component("python/customer-projector");
    let (status, body) = client
        .admin(reqwest::Method::PUT, "/admin/functions/customer-projector", Some(TOKEN), python.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(running_version(&client, "customer-projector").await, Version::of(&python).0);

    // A new customer, stored by the Python projector; the same email again
    // confirms the customer the JavaScript one stored.
    let invited = client.invite("grace@example.com").await;
    let grace = &invited["data"]["InviteCustomer"];
    assert_eq!(grace["email"], "grace@example.com", "{invited}");
    assert_eq!(grace["invited"], true, "{invited}");
    let id = grace["id"].as_str().expect("an id");
    let found = client.graphql(&format!(r#"{{ customer(id: "{id}") {{ id email invited }} }}"#)).await;
    assert_eq!(found["data"]["customer"], *grace, "{found}");
    let again = client.invite("ada@example.com").await;
    assert_eq!(again["data"]["InviteCustomer"], ada, "{again}");
    shell.stop().await.expect("clean stop");
}

/// In the stub host, the Python projector's `operate` alone is answered by
/// its `operate-and-write`; `write` alone is not there to call, and says so.
#[test]
fn the_stub_runs_a_lean_component_phase_by_phase() {
    let stub = host::stub::Stub::from_bytes(&component("python/customer-projector"))
        .expect("the Python projector loads in the stub");
    let event = Message::new("e-1", "CustomerInvited", json!({ "customer-id": "c-1", "email": "x@y.z" }))
        .correlated("r-1");
    let outcome = stub.operate(&event, &Data::default()).expect("operate");
    let Outcome::Emit(emitted) = outcome else { panic!("emits the customer: {outcome:?}") };
    assert_eq!(emitted.len(), 1);
    assert_eq!(emitted[0].payload, json!({ "id": "c-1", "email": "x@y.z", "invited": true }));
    let write = stub.write(&emitted[0]).expect_err("no `write` of its own");
    assert!(write.to_string().contains("function-lean"), "{write}");
}

/// Instances created so far of the JavaScript projector and the Python resolver.
async fn instances_created(client: &Client) -> Vec<f64> {
    let metrics = client.http.get(format!("{}/metrics", client.base)).send().await.expect("metrics");
    let text = metrics.text().await.expect("metrics text");
    ["customer-projector", "invite-resolver"]
        .iter()
        .map(|function| {
            let line = format!("lowshell_instances_created_total{{function=\"{function}\"}}");
            text.lines().find_map(|l| l.strip_prefix(line.as_str())?.trim().parse().ok()).unwrap_or(0.0)
        })
        .collect()
}

//! Hot swap by file: the modules watcher deploys a function's file when its
//! content changes — and only then. Reading a file, or a file that did not
//! change, never reverts a version deployed otherwise; a refused file is
//! refused once.
//!
//! The only test binary whose tests watch files: the swap counters they
//! read are process-wide, and nothing else here refuses `invite-customer`.

mod support;

use host::runtime::Version;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{Client, basic_project, module, running_version, start};

const TOKEN: &str = "s3cret";
/// Long enough for a watcher event to settle (300 ms) several times over.
const PAUSE: Duration = Duration::from_millis(1500);

fn read(name: &str) -> Vec<u8> {
    std::fs::read(module(name)).expect("component")
}

fn version(bytes: &[u8]) -> String {
    Version::of(bytes).0
}

/// The same component with a custom section appended: the same behaviour
/// under another version.
fn renamed(mut bytes: Vec<u8>) -> Vec<u8> {
    let name = b"lowshell-test";
    let mut section = vec![name.len() as u8];
    section.extend(name);
    section.extend(b"v1b");
    bytes.push(0);
    bytes.push(section.len() as u8);
    bytes.extend(section);
    bytes
}

/// A modules folder like the repository's: the three functions, and v2 in
/// a subfolder of the watched one.
fn modules_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["invite-customer", "customer-projector", "invite-resolver"] {
        std::fs::copy(module(name), dir.path().join(format!("{name}.wasm"))).expect("copy");
    }
    std::fs::create_dir(dir.path().join("v2")).expect("v2 folder");
    std::fs::copy(module("v2/invite-customer"), dir.path().join("v2/invite-customer.wasm")).expect("copy v2");
    dir
}

async fn watching(dir: &Path) -> (host::Shell, Client) {
    let mut project = basic_project();
    project.modules = dir.to_path_buf();
    project.watch = true;
    project.admin.token = Some(TOKEN.into());
    start(project).await
}

/// Waits (generously) until `invite-customer` runs `wanted`.
async fn wait_for(client: &Client, wanted: &str, what: &str) {
    let mut waited = Duration::ZERO;
    while running_version(client, "invite-customer").await != wanted {
        assert!(waited < Duration::from_secs(30), "{what}: {wanted} never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
}

/// Opens and reads every file in the folder and its subfolder: access
/// events, no change.
fn read_everything(dir: &Path) {
    for path in [dir.to_path_buf(), dir.join("v2")] {
        for entry in std::fs::read_dir(&path).expect("folder") {
            let path: PathBuf = entry.expect("entry").path();
            if path.is_file() {
                std::fs::read(&path).expect("read");
            }
        }
    }
}

/// Still `wanted` after the folder was read and events had time to settle.
async fn holds(client: &Client, dir: &Path, wanted: &str, what: &str) {
    assert_eq!(running_version(client, "invite-customer").await, wanted, "{what}");
    read_everything(dir);
    tokio::time::sleep(PAUSE).await;
    assert_eq!(running_version(client, "invite-customer").await, wanted, "{what}, after a pause");
}

/// The tests here one at a time: a file written while the other test's
/// watcher reads it can be refused half-written, and the refusals counted
/// (`failed_swaps`) are the process's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// Multi-threaded: the command line runs as a child process while the shell serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_way_of_deploying_holds_until_the_file_itself_changes() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = modules_folder();
    let (shell, client) = watching(dir.path()).await;
    let file = dir.path().join("invite-customer.wasm");
    let (v1, v2, v1b) =
        (read("invite-customer"), read("v2/invite-customer"), renamed(read("invite-customer")));
    holds(&client, dir.path(), &version(&v1), "at start").await;

    // 1. Copy a new version over the file.
    std::fs::copy(dir.path().join("v2/invite-customer.wasm"), &file).expect("copy v2");
    wait_for(&client, &version(&v2), "the copied file").await;
    holds(&client, dir.path(), &version(&v2), "deployed by file").await;

    // 2. The admin endpoint: the file (v2) did not change since, so it stays.
    let response = client
        .http
        .put(format!("{}/admin/functions/invite-customer", client.base))
        .bearer_auth(TOKEN)
        .body(v1.clone())
        .send()
        .await
        .expect("admin request");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    holds(&client, dir.path(), &version(&v1), "deployed by the admin endpoint").await;

    // 3. The command line, from a file inside the watched folder's tree.
    let source = dir.path().join("v2/invite-customer-b.wasm");
    std::fs::write(&source, &v1b).expect("write v1b");
    let (base, path) = (client.base.clone(), source.to_string_lossy().into_owned());
    let deployed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["deploy", "invite-customer", &path, "--to", &base])
            .env("LOWSHELL_ADMIN_TOKEN", TOKEN)
            .output()
            .expect("host runs")
    })
    .await
    .expect("command line");
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    holds(&client, dir.path(), &version(&v1b), "deployed by the command line").await;

    // 4. Writing the file with the content it already has is no change ...
    std::fs::write(&file, &v2).expect("rewrite v2");
    tokio::time::sleep(PAUSE).await;
    assert_eq!(running_version(&client, "invite-customer").await, version(&v1b), "same content");
    // ... and a real change of the file deploys it.
    std::fs::write(&file, &v1).expect("write v1");
    wait_for(&client, &version(&v1), "the changed file").await;
    shell.stop().await.expect("clean stop");
}

/// `lowshell_swaps_total{function="invite-customer",outcome="failed"}`.
async fn failed_swaps(client: &Client) -> u64 {
    let text = client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with("lowshell_swaps_total{")
                && l.contains(r#"function="invite-customer""#)
                && l.contains(r#"outcome="failed""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits (generously) for the count of refusals to reach `wanted`, then
/// checks that it stays there.
async fn refused_once(client: &Client, wanted: u64, what: &str) {
    let mut waited = Duration::ZERO;
    while failed_swaps(client).await < wanted {
        assert!(waited < Duration::from_secs(30), "{what}: never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(failed_swaps(client).await, wanted, "{what}: refused exactly once");
}

#[tokio::test]
async fn a_refused_file_is_refused_once_and_a_good_one_deploys_afterwards() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = modules_folder();
    let (shell, client) = watching(dir.path()).await;
    let file = dir.path().join("invite-customer.wasm");
    let v1 = version(&read("invite-customer"));
    let before = failed_swaps(&client).await;

    std::fs::write(&file, b"junk\n").expect("write junk");
    refused_once(&client, before + 1, "junk").await;
    assert_eq!(running_version(&client, "invite-customer").await, v1, "the old version keeps serving");
    let answer = client.invite("still@example.com").await;
    assert!(answer["data"]["InviteCustomer"]["id"].is_string(), "{answer}");

    std::fs::write(&file, read("invite-resolver")).expect("write another function");
    refused_once(&client, before + 2, "another function's component").await;
    assert_eq!(running_version(&client, "invite-customer").await, v1);

    std::fs::write(&file, read("v2/invite-customer")).expect("write v2");
    wait_for(&client, &version(&read("v2/invite-customer")), "a good file after refused ones").await;
    assert_eq!(failed_swaps(&client).await, before + 2);
    shell.stop().await.expect("clean stop");
}

//! The `host` binary stops gracefully on SIGTERM: it stops accepting, lets
//! the commands in flight finish and answer, then exits successfully.

mod support;

use futures::future::join_all;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{Client, module, workspace};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_commands_in_flight_finish() {
    module("fixtures/misbehave");
    let dir = tempfile::tempdir().expect("temp dir");
    let project = dir.path().join("project.toml");
    let modules = workspace().join("modules");
    std::fs::write(
        &project,
        format!(
            "modules = {:?}\nfunctions = [\"fixtures/misbehave\", \"fixtures/misbehave-resolver\"]\nwatch = false\n",
            modules.display().to_string()
        ),
    )
    .expect("project file");
    let port = free_port();
    let mut shell = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(["run", "--project"])
        .arg(&project)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the shell starts");
    let client = Client::new(&format!("http://127.0.0.1:{port}"));
    let mut waited = Duration::ZERO;
    while client.http.get(format!("{}/healthz", client.base)).send().await.is_err() {
        assert!(waited < Duration::from_secs(60), "the shell comes up");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }

    // Each command takes 300 ms; stop the shell while they run.
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            join_all(
                (0..4).map(|_| client.graphql(r#"mutation { Misbehave(action: "slow") { id action } }"#)),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let killed = Command::new("kill").args(["-TERM", &shell.id().to_string()]).status().expect("kill");
    assert!(killed.success());

    for body in in_flight.await.expect("requests") {
        assert_eq!(body["data"]["Misbehave"]["action"], "slow", "answered despite the shutdown: {body}");
    }
    let status = tokio::task::spawn_blocking(move || shell.wait()).await.expect("join").expect("exit status");
    assert!(status.success(), "exits cleanly: {status}");
    assert!(client.http.get(format!("{}/healthz", client.base)).send().await.is_err(), "no longer serving");
}

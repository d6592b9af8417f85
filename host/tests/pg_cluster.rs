//! Cluster-wide deploys: shells on one Postgres run the same versions. A
//! deploy through one shell's admin endpoint reaches the others, a rollback
//! too, and a shell started later comes up on the deployed version. Needs
//! `make guest`; see `support/pg.rs` for the database.

#[path = "support/pg.rs"]
mod pg;
mod support;

use host::Shell;
use host::runtime::Version;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::{Client, module, running_version};

const TOKEN: &str = "cluster-s3cret";

async fn shell(url: &str) -> (Shell, Client) {
    support::start(support::project_from(&pg::project_text(url, "127.0.0.1:0", 60_000), TOKEN)).await
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

/// Waits until `client`'s shell runs `version` of invite-customer.
async fn switched(client: &Client, version: &Version, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let running = running_version(client, "invite-customer").await;
        if running == version.0 {
            return;
        }
        assert!(Instant::now() < deadline, "{} still runs {running}, not {}", client.base, version.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn invited_email(client: &Client, email: &str) -> Value {
    let body = client.invite(email).await;
    body["data"]["InviteCustomer"]["email"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shells_on_one_postgres_both_switch() {
    let url = pg::database().await;
    let (v1, v2, v2_bytes) = (Version::of(&v1()), Version::of(&v2()), v2());
    let (a, client_a) = shell(&url).await;
    let (b, client_b) = shell(&url).await;
    assert_eq!(running_version(&client_b, "invite-customer").await, v1.0);
    assert_eq!(invited_email(&client_b, "Dean@P14N.com").await, "Dean@P14N.com", "v1 keeps the case");

    // Deploy v2 through A: B switches on its own.
    let started = Instant::now();
    let (status, deployed) =
        admin(&client_a, reqwest::Method::PUT, "/admin/functions/invite-customer", v2_bytes).await;
    assert_eq!(status, 200, "{deployed}");
    assert_eq!(deployed["version"], v2.0);
    // The schema (and its `functions` listing) is rebuilt just after a swap.
    switched(&client_a, &v2, Duration::from_secs(5)).await;
    switched(&client_b, &v2, Duration::from_secs(20)).await;
    eprintln!("B switched {:?} after the deploy through A", started.elapsed());
    assert_eq!(invited_email(&client_b, "Ada@Example.com").await, "ada@example.com", "v2 on B");
    assert_eq!(invited_email(&client_a, "Eve@Example.com").await, "eve@example.com", "v2 on A");

    // A third shell, started after the deploy, comes up on v2.
    let (c, client_c) = shell(&url).await;
    assert_eq!(running_version(&client_c, "invite-customer").await, v2.0, "a late shell loads the record");
    assert_eq!(invited_email(&client_c, "Fay@Example.com").await, "fay@example.com", "v2 on C");

    // Roll back through B: A (and C) follow.
    let (status, rolled) =
        admin(&client_b, reqwest::Method::POST, "/admin/functions/invite-customer/rollback", vec![]).await;
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["version"], v1.0);
    switched(&client_a, &v1, Duration::from_secs(20)).await;
    switched(&client_c, &v1, Duration::from_secs(20)).await;
    assert_eq!(invited_email(&client_a, "Bob@Example.com").await, "Bob@Example.com", "v1 again on A");

    // The record says so too.
    let db = pg::client(&url).await;
    let row = db
        .query_one("SELECT version, previous FROM deployments WHERE name = 'invite-customer'", &[])
        .await
        .expect("the deployment is recorded");
    assert_eq!(row.get::<_, String>(0), v1.0);
    assert_eq!(row.get::<_, Option<String>>(1), Some(v2.0.clone()));

    for shell in [a, b, c] {
        shell.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deploy_is_not_recorded() {
    let url = pg::database().await;
    let (a, client_a) = shell(&url).await;
    let resolver = std::fs::read(module("invite-resolver")).expect("resolver");
    let (status, body) =
        admin(&client_a, reqwest::Method::PUT, "/admin/functions/invite-customer", resolver).await;
    assert_eq!(status, 422, "{body}");
    let db = pg::client(&url).await;
    let recorded: i64 = db.query_one("SELECT count(*) FROM deployments", &[]).await.expect("count").get(0);
    assert_eq!(recorded, 0);
    a.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_missed_while_not_listening_is_applied_on_reconnect() {
    let url = pg::database().await;
    let (a, client_a) = shell(&url).await;
    let v2_bytes = v2();
    let v2 = Version::of(&v2_bytes);
    let db = pg::client(&url).await;
    // A deploy recorded before the shell listens is applied when it starts
    // listening: on a slow machine that may be after the records below.
    listening(&db).await;
    // Recorded without a notification, as if the shell had not been listening.
    db.execute(
        "INSERT INTO function_versions (name, version, bytes) VALUES ('invite-customer', $1, $2)",
        &[&v2.0, &v2_bytes],
    )
    .await
    .expect("keep v2");
    db.execute("INSERT INTO deployments (name, version) VALUES ('invite-customer', $1)", &[&v2.0])
        .await
        .expect("record v2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ne!(running_version(&client_a, "invite-customer").await, v2.0, "nothing announced it");
    // Cut the shell's listening connection (there since `listening`): it
    // reconnects and looks again.
    let cut: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN lowshell_deployments%'",
            &[],
        )
        .await
        .expect("terminate the listener")
        .get(0);
    assert_eq!(cut, 1, "one listening connection per shell");
    switched(&client_a, &v2, Duration::from_secs(20)).await;
    assert_eq!(
        invited_email(&client_a, "Gus@Example.com").await,
        "gus@example.com",
        "v2 after the reconnect"
    );
    a.stop().await.expect("clean stop");
}

/// Waits (generously) until the shell's connection listening for deploys
/// is there, then a moment more for the look at every function it takes
/// once listening.
async fn listening(db: &tokio_postgres::Client) {
    let mut waited = Duration::ZERO;
    loop {
        let listeners: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE 'LISTEN lowshell_deployments%'",
                &[],
            )
            .await
            .expect("read the activity")
            .get(0);
        if listeners == 1 {
            break;
        }
        assert_eq!(listeners, 0, "one listening connection per shell");
        assert!(waited < Duration::from_secs(20), "the shell never listened for deploys");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The `events` subscription on Postgres: served from the log on every
/// shell, so a watcher on one shell sees what another shell appended.
#[tokio::test]
async fn events_are_watched_from_the_log_on_every_shell() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};

    let url = pg::database().await;
    let (a, _) = shell(&url).await;
    let (b, client_b) = shell(&url).await;
    // Something already in the log is not replayed to a new watcher.
    client_b.invite("before@example.com").await;

    let mut request = format!("ws://{}/ws", a.addr).into_client_request().expect("ws request");
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("graphql-transport-ws"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("WebSocket connects");
    ws.send(Ws::text(serde_json::json!({ "type": "connection_init" }).to_string())).await.expect("init");
    let subscription = "subscription { events(type: \"CustomerInvited\") { topic type payload function } }";
    ws.send(Ws::text(
        serde_json::json!({ "id": "1", "type": "subscribe", "payload": { "query": subscription } })
            .to_string(),
    ))
    .await
    .expect("subscribe");
    let mut texts = vec![];
    // The ack, then let the subscription start before the event is appended.
    while texts.is_empty() {
        if let Some(Ok(Ws::Text(text))) = ws.next().await {
            texts.push(text.to_string());
        }
    }
    assert!(texts[0].contains("connection_ack"), "{texts:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let invited = client_b.invite("live@example.com").await;
    let event = loop {
        let message =
            tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("an event in time");
        if let Some(Ok(Ws::Text(text))) = message {
            break serde_json::from_str::<Value>(text.as_str()).expect("JSON");
        }
    };
    assert_eq!(event["type"], "next", "{event}");
    let event = &event["payload"]["data"]["events"];
    assert_eq!(event["topic"], "customer", "{event}");
    assert_eq!(event["payload"]["email"], "live@example.com", "the first event after subscribing: {event}");
    assert_eq!(event["function"], "invite-customer");
    assert_eq!(event["payload"]["customer-id"], invited["data"]["InviteCustomer"]["id"], "{event} {invited}");
    ws.close(None).await.ok();
    a.stop().await.expect("stop a");
    b.stop().await.expect("stop b");
}

//! The hand-written service, started as the benchmarks start it (its own
//! process on a free port, real HTTP), answers like the shell: in memory and
//! on a throwaway Postgres (the host tests' cluster, or `DATABASE_URL`).

#[path = "../../../host/tests/support/pg.rs"]
mod pg;

use serde_json::{Value, json};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The service; killed when dropped.
struct Service {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Service {
    async fn start(store: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(env!("CARGO_BIN_EXE_handwritten-baseline"))
            .args(store)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the service starts");
        let service = Self { child, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        for _ in 0..3000 {
            let health = service.http.get(format!("{}/healthz", service.url)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return service;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the service at {} did not come up", service.url);
    }

    async fn graphql(&self, query: &str) -> Value {
        let response = self
            .http
            .post(format!("{}/", self.url))
            .json(&json!({ "query": query }))
            .send()
            .await
            .expect("POST");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("a JSON body")
    }

    async fn invite(&self, email: &str) -> Value {
        self.graphql(&format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ id email invited }} }}"#))
            .await
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `host/tests/e2e.rs` checks of the shell, against the service.
async fn answers_like_the_shell(service: &Service) {
    // A new email: a new customer with a UUID, served by `customer(id)`.
    let body = service.invite("dean@p14n.com").await;
    let customer = &body["data"]["InviteCustomer"];
    assert_eq!((&customer["email"], &customer["invited"]), (&json!("dean@p14n.com"), &json!(true)), "{body}");
    let id = customer["id"].as_str().expect("an id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id is a UUID: {id}");
    let found = service.graphql(&format!(r#"{{ customer(id: "{id}") {{ id email invited }} }}"#)).await;
    assert_eq!(found["data"]["customer"], *customer, "{found}");

    // The same email again: the same customer. The email is kept as given.
    assert_eq!(service.invite("dean@p14n.com").await, body);
    let other = service.invite("Dean@P14N.com").await;
    assert_ne!(other["data"]["InviteCustomer"]["id"], customer["id"], "{other}");

    // An unknown id is null, not an error.
    let unknown = service.graphql(r#"{ customer(id: "nobody") { id } }"#).await;
    assert_eq!(unknown, json!({ "data": { "customer": null } }));

    // No email: the shell's message; a blank one is also the handler's rejection.
    for (mutation, code) in [
        (r#"mutation { InviteCustomer(email: "   ") { id } }"#, json!("REJECTED")),
        (r#"mutation { InviteCustomer(email: null) { id } }"#, Value::Null),
        (r#"mutation { InviteCustomer { id } }"#, Value::Null),
    ] {
        let body = service.graphql(mutation).await;
        assert_eq!(body["data"]["InviteCustomer"], Value::Null, "{body}");
        assert_eq!(body["errors"][0]["message"], "Email is required", "{mutation}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], code, "{mutation}: {body}");
    }

    // Twenty concurrent invites of one email: one customer.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (http, url) = (service.http.clone(), service.url.clone());
            tokio::spawn(async move {
                let query = r#"mutation { InviteCustomer(email: "same@example.com") { id } }"#;
                let response = http.post(format!("{url}/")).json(&json!({ "query": query })).send().await;
                response.expect("POST").json::<Value>().await.expect("a JSON body")
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        let body = task.await.expect("a request");
        ids.insert(
            body["data"]["InviteCustomer"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("an id: {body}"))
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn memory_mode_answers_like_the_shell() {
    let service = Service::start(&["--memory"]).await;
    answers_like_the_shell(&service).await;
}

#[tokio::test]
async fn postgres_mode_answers_like_the_shell_and_keeps_the_log() {
    let url = pg::database().await;
    let service = Service::start(&["--database-url", &url]).await;
    answers_like_the_shell(&service).await;

    // Every invitation is an event; one claim and one customer per email.
    let db = pg::client(&url).await;
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM handwritten.events WHERE kind = 'CustomerInvited'").await, 3);
    // The second invite of dean@p14n.com, and 19 of the 20 concurrent ones.
    assert_eq!(
        count("SELECT count(*) FROM handwritten.events WHERE kind = 'CustomerInviteFailed'").await,
        20
    );
    assert_eq!(count("SELECT count(*) FROM handwritten.invites").await, 3);
    assert_eq!(count("SELECT count(*) FROM handwritten.customers").await, 3);

    // A restart finds its tables and data.
    drop(service);
    let again = Service::start(&["--database-url", &url]).await;
    let body = again.invite("dean@p14n.com").await;
    assert_eq!(body["data"]["InviteCustomer"]["email"], "dean@p14n.com", "{body}");
    assert_eq!(count("SELECT count(*) FROM handwritten.customers").await, 3);
}

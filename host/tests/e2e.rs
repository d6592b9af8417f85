//! End to end: the default project (memory bus and store, the real guest
//! components) served over real HTTP on a free port.

mod support;

use futures::future::join_all;
use serde_json::{Value, json};
use std::collections::HashSet;
use support::{Client, basic_project, error, start};

#[tokio::test]
async fn a_new_email_is_invited() {
    let (shell, client) = start(basic_project()).await;

    let body = client.invite("dean@p14n.com").await;

    let customer = &body["data"]["InviteCustomer"];
    assert_eq!(customer["email"], "dean@p14n.com", "{body}");
    assert_eq!(customer["invited"], true);
    let id = customer["id"].as_str().expect("an id");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id is a UUID: {id}");
    // …and the read model serves it.
    let found = client.graphql(&format!(r#"{{ customer(id: "{id}") {{ id email invited }} }}"#)).await;
    assert_eq!(found["data"]["customer"], *customer);
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_invited_email_returns_the_existing_customer() {
    let (shell, client) = start(basic_project()).await;
    let first = client.invite("a@b.c").await;

    let second = client.invite("a@b.c").await;

    assert_eq!(second["data"]["InviteCustomer"], first["data"]["InviteCustomer"], "{second}");
    let all = client.graphql("{ customers { id } }").await;
    assert_eq!(all["data"]["customers"].as_array().map(Vec::len), Some(1), "{all}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_empty_or_missing_email_is_required_and_nothing_is_stored() {
    let (shell, client) = start(basic_project()).await;

    for mutation in [
        r#"mutation { InviteCustomer(email: "") { id } }"#,
        r#"mutation { InviteCustomer(email: "   ") { id } }"#,
        r#"mutation { InviteCustomer(email: null) { id } }"#,
        r#"mutation { InviteCustomer { id } }"#,
    ] {
        let body = client.graphql(mutation).await;
        assert_eq!(body["data"]["InviteCustomer"], Value::Null, "{body}");
        assert!(error(&body).is_some_and(|m| m.contains("Email is required")), "{mutation}: {body}");
    }

    let all = client.graphql("{ customers { id } }").await;
    assert_eq!(all["data"]["customers"], json!([]));
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bad_requests_get_graphql_errors_and_the_shell_keeps_serving() {
    let (shell, client) = start(basic_project()).await;

    // Unknown mutation: a GraphQL validation error, HTTP 200.
    let unknown = client.graphql("mutation { RemoveEverything { id } }").await;
    assert!(error(&unknown).is_some_and(|m| m.contains("RemoveEverything")), "{unknown}");
    // Wrong argument type.
    let typed = client.graphql("mutation { InviteCustomer(email: 42) { id } }").await;
    assert!(error(&typed).is_some_and(|m| m.contains("email")), "{typed}");
    // Syntax error in the document.
    let syntax = client.graphql("mutation { InviteCustomer(email: ").await;
    assert!(error(&syntax).is_some(), "{syntax}");
    // Not JSON at all: HTTP 400.
    let response = client
        .http
        .post(format!("{}/", client.base))
        .header("content-type", "application/json")
        .body("{\"query\": ")
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(response.status().as_u16(), 400);

    let body = client.invite("still@serving.io").await;
    assert_eq!(body["data"]["InviteCustomer"]["email"], "still@serving.io", "{body}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn fifty_concurrent_invites_all_succeed() {
    let (shell, client) = start(basic_project()).await;

    let bodies = join_all((0..50).map(|i| {
        let client: Client = client.clone();
        async move { client.invite(&format!("user{i}@example.com")).await }
    }))
    .await;

    let ids: HashSet<&str> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            assert_eq!(body["data"]["InviteCustomer"]["email"], format!("user{i}@example.com"), "{body}");
            body["data"]["InviteCustomer"]["id"].as_str().expect("an id")
        })
        .collect();
    assert_eq!(ids.len(), 50, "every customer has its own id");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn twenty_concurrent_invites_of_one_email_share_one_id() {
    let (shell, client) = start(basic_project()).await;

    let bodies = join_all((0..20).map(|_| {
        let client = client.clone();
        async move { client.invite("same@example.com").await }
    }))
    .await;

    let ids: HashSet<&str> = bodies
        .iter()
        .map(|body| body["data"]["InviteCustomer"]["id"].as_str().unwrap_or_else(|| panic!("an id: {body}")))
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn customers_are_listed_in_pages() {
    let (shell, client) = start(basic_project()).await;
    for i in 0..5 {
        client.invite(&format!("p{i}@example.com")).await;
    }

    let first = client.graphql("{ customers(first: 2) { id email } }").await;
    let page: Vec<Value> = first["data"]["customers"].as_array().cloned().unwrap_or_default();
    assert_eq!(page.len(), 2, "{first}");
    let after = page[1]["id"].as_str().expect("an id");
    let rest = client.graphql(&format!(r#"{{ customers(first: 10, after: "{after}") {{ id }} }}"#)).await;
    assert_eq!(rest["data"]["customers"].as_array().map(Vec::len), Some(3), "{rest}");

    let too_many = client.graphql("{ customers(first: 1000) { id } }").await;
    assert!(error(&too_many).is_some_and(|m| m.contains("first")), "{too_many}");
    let unknown = client.graphql(r#"{ customer(id: "nobody") { id } }"#).await;
    assert_eq!(unknown["data"]["customer"], Value::Null, "{unknown}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_response_that_never_arrives_times_out_naming_the_command() {
    // Without the projector, nothing ever tells the resolver the customer is ready.
    let mut project = basic_project();
    project.functions = Some(vec!["invite-customer".into(), "invite-resolver".into()]);
    project.response_timeout_ms = 300;
    let (shell, client) = start(project).await;

    // Without the projector no model describes a customer: the mutation answers JSON.
    let body = client.graphql(r#"mutation { InviteCustomer(email: "lost@example.com") }"#).await;

    let message = error(&body).unwrap_or_else(|| panic!("an error: {body}"));
    assert!(message.starts_with("no response to command "), "{message}");
    let id = message.trim_start_matches("no response to command ").split(' ').next().unwrap_or("");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "the message names the command id: {message}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn graphiql_is_served_to_browsers_and_health_is_reported() {
    let (shell, client) = start(basic_project()).await;

    let page = client.http.get(format!("{}/", client.base)).send().await.expect("GET /");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.expect("body").contains("graphiql"), "GraphiQL page");
    let health = client.http.get(format!("{}/healthz", client.base)).send().await.expect("GET /healthz");
    assert_eq!(health.status().as_u16(), 200);
    let get_query = client
        .http
        .get(format!("{}/graphql?query=%7B%20functions%20%7B%20name%20%7D%20%7D", client.base))
        .send()
        .await
        .expect("GET query");
    let body: Value = get_query.json().await.expect("JSON");
    assert_eq!(body["data"]["functions"].as_array().map(Vec::len), Some(3), "{body}");
    shell.stop().await.expect("clean stop");
}

/// At rest a command's steps are taken on its own request, in one commit
/// with its append (chained): its handler's, then its projector's on what
/// the handler emitted. Neither consumer is sent what it took, so no step
/// runs twice; a step too slow to wait for is left to its consumer.
#[tokio::test]
async fn at_rest_a_commands_steps_are_taken_on_its_request() {
    let mut project = support::basic_project();
    let fixtures = ["fixtures/misbehave", "fixtures/misbehave-resolver", "fixtures/misbehave-projector"];
    project.functions = Some(fixtures.iter().map(|f| (*f).into()).collect());
    for name in fixtures {
        support::module(name);
    }
    project.watch = false;
    let (shell, client) = support::start(project).await;
    let chained = |consumer: &'static str| {
        let client = client.clone();
        async move {
            let labels = [("consumer", consumer), ("outcome", "applied")];
            support::metric(&client, "lowshell_chained_total", &labels).await
        }
    };
    let steps = |function: &'static str| {
        let client = client.clone();
        async move { support::metric(&client, "lowshell_steps_total", &[("function", function)]).await }
    };
    let ok = || async {
        let body = support::misbehave(&client, "ok", "").await;
        assert_eq!(body["data"]["Misbehave"]["action"], "ok", "{body}");
    };
    // The consumers start on tasks of their own, and one that took a step
    // itself waits again only after answering it: until both wait, a
    // command's steps may be theirs.
    let mut tries = 0;
    loop {
        let before = (chained("misbehave").await, chained("misbehave-projector").await);
        ok().await;
        if (chained("misbehave").await, chained("misbehave-projector").await) == (before.0 + 1, before.1 + 1)
        {
            break;
        }
        tries += 1;
        assert!(tries < 100, "no command's steps were ever taken on its request");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // From then on neither consumer is sent anything: every command's steps
    // are taken on its request, once.
    let chained_before = (chained("misbehave").await, chained("misbehave-projector").await);
    let steps_before = (steps("misbehave").await, steps("misbehave-projector").await);
    for n in 1..=5 {
        ok().await;
        let chained_now = (chained("misbehave").await, chained("misbehave-projector").await);
        assert_eq!(chained_now, (chained_before.0 + n, chained_before.1 + n));
        let steps_now = (steps("misbehave").await, steps("misbehave-projector").await);
        assert_eq!(steps_now, (steps_before.0 + n, steps_before.1 + n));
    }
    // Busy for 300 ms: longer than a request waits for its steps.
    let body = support::misbehave(&client, "slow", "operate").await;
    assert_eq!(body["data"]["Misbehave"]["action"], "slow", "{body}");
    assert_eq!(chained("misbehave").await, chained_before.0 + 5, "the slow step was left to the consumer");
    assert_eq!(steps("misbehave").await, steps_before.0 + 6, "and taken once");
    shell.stop().await.expect("clean stop");
}

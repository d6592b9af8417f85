//! The fast path of command mutations (`graphql::fast`): what it answers,
//! and what it hands to the schema to answer, equals what async-graphql
//! answers for the same request. The schema's answer is had by adding a
//! no-op directive (`@include(if: true)`), which keeps a request off the
//! fast path and changes nothing else.

mod support;

use serde_json::Value;
use support::{Client, basic_project, metric, start};

/// The body of `query`, correlation ids blanked (each command has its own).
async fn answer(client: &Client, query: &str) -> Value {
    answer_with(client, query, serde_json::json!({})).await
}

/// [`answer`], with `variables`.
async fn answer_with(client: &Client, query: &str, variables: Value) -> Value {
    let (status, mut body) = client.post(serde_json::json!({ "query": query, "variables": variables })).await;
    assert_eq!(status, 200, "{body}");
    if let Some(errors) = body.get_mut("errors").and_then(Value::as_array_mut) {
        for error in errors {
            if let Some(extensions) = error["extensions"].as_object_mut() {
                extensions.remove("correlationId");
            }
        }
    }
    body
}

async fn fast(client: &Client, outcome: &str) -> u64 {
    metric(client, "lowshell_graphql_fast_total", &[("outcome", outcome)]).await
}

/// Given a request through the schema, and one of the same shape before
/// (the fast path takes only shapes that passed validation), when the
/// request is sent as it is, then it is answered as the schema answered.
async fn same_answer(client: &Client, through_schema: &str, warm: &str, direct: &str) -> Value {
    let expected = answer(client, through_schema).await;
    answer(client, warm).await;
    let got = answer(client, direct).await;
    assert_eq!(got, expected, "{direct}");
    got
}

// One test: the counts of `/metrics` are the process's, shared by every
// shell a test starts.
#[tokio::test]
async fn the_fast_path_answers_as_the_schema_does_and_takes_only_what_it_can() {
    let (shell, client) = start(basic_project()).await;
    requests_it_does_not_take_are_answered_by_the_schema(&client).await;

    // A customer (invited twice: the second answer is the first customer).
    let body = same_answer(
        &client,
        r#"mutation { InviteCustomer(email: "f1@example.com") @include(if: true) { id email invited } }"#,
        r#"mutation { InviteCustomer(email: "f2@example.com") { id email invited } }"#,
        r#"mutation { InviteCustomer(email: "f1@example.com") { id email invited } }"#,
    )
    .await;
    assert_eq!(body["data"]["InviteCustomer"]["email"], "f1@example.com", "{body}");
    // Aliases and `__typename`, in the order asked.
    let body = same_answer(
        &client,
        r#"mutation { c: InviteCustomer(email: "f3@example.com") @include(if: true) { who: id __typename invited at: email } }"#,
        r#"mutation { c: InviteCustomer(email: "f4@example.com") { who: id __typename invited at: email } }"#,
        r#"mutation { c: InviteCustomer(email: "f3@example.com") { who: id __typename invited at: email } }"#,
    )
    .await;
    assert_eq!(body["data"]["c"]["__typename"], "Customer", "{body}");
    let text = client
        .http
        .post(format!("{}/", client.base))
        .json(&serde_json::json!({ "query": r#"mutation { c: InviteCustomer(email: "f3@example.com") { who: id __typename invited at: email } }"# }))
        .send()
        .await
        .expect("HTTP request")
        .text()
        .await
        .expect("body");
    let at = |key: &str| text.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("{key} in {text}"));
    assert!(
        at("who") < at("__typename") && at("__typename") < at("invited") && at("invited") < at("at"),
        "{text}"
    );
    // An idempotency key: the repeat gets the first answer.
    same_answer(
        &client,
        r#"mutation { InviteCustomer(email: "f5@example.com", commandId: "key-1") @include(if: true) { id email } }"#,
        r#"mutation { InviteCustomer(email: "f6@example.com", commandId: "key-2") { id email } }"#,
        r#"mutation { InviteCustomer(email: "f5@example.com", commandId: "key-1") { id email } }"#,
    )
    .await;
    // A key given as an integer (an `ID` may be one).
    same_answer(
        &client,
        r#"mutation { InviteCustomer(email: "fa@example.com", commandId: 81) @include(if: true) { id email } }"#,
        // A number is part of a shape: the same request validates it.
        r#"mutation { InviteCustomer(email: "fa@example.com", commandId: 81) { id email } }"#,
        r#"mutation { InviteCustomer(email: "fa@example.com", commandId: 81) { id email } }"#,
    )
    .await;
    // Variables, given, defaulted and absent.
    let query = r#"mutation ($e: String, $k: ID = "key-3") { InviteCustomer(email: $e, commandId: $k) { id email } }"#;
    let slow = query.replace(") { id", ") @include(if: true) { id");
    for variables in [
        serde_json::json!({ "e": "f7@example.com" }),
        serde_json::json!({ "e": "f8@example.com", "k": "key-4" }),
        serde_json::json!({ "e": "f9@example.com", "k": null }),
        serde_json::json!({}),
    ] {
        let expected = answer_with(&client, &slow, variables.clone()).await;
        let got = answer_with(&client, query, variables.clone()).await;
        assert_eq!(got, expected, "{variables}");
    }
    let answered = fast(&client, "answered").await;
    assert!(answered >= 7, "the fast path answered {answered} requests");

    // A rejection by the function, and a missing argument: handed over.
    let body = same_answer(
        &client,
        r#"mutation { InviteCustomer(email: "") @include(if: true) { id } }"#,
        r#"mutation { InviteCustomer(email: "") { id } }"#,
        r#"mutation { InviteCustomer(email: "") { id } }"#,
    )
    .await;
    assert_eq!(body["errors"][0]["message"], "Email is required", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "REJECTED", "{body}");
    let body = same_answer(
        &client,
        "mutation { InviteCustomer @include(if: true) { id } }",
        "mutation { InviteCustomer { id } }",
        "mutation { InviteCustomer { id } }",
    )
    .await;
    assert_eq!(body["errors"][0]["message"], "Email is required", "{body}");
    assert!(fast(&client, "handed_over").await >= 2);
    assert_eq!(fast(&client, "answered").await, answered, "errors are never answered by the fast path");
    shell.stop().await.expect("clean stop");
}

async fn requests_it_does_not_take_are_answered_by_the_schema(client: &Client) {
    let before = fast(client, "answered").await + fast(client, "handed_over").await;
    // Each sent twice (the second of a shape known valid): a value to
    // coerce, a directive, a fragment, a named operation.
    let requests = [
        // A value async-graphql coerces (an `ID` given as a number): left to it.
        serde_json::json!({
            "query": "mutation ($e: String, $k: ID) { InviteCustomer(email: $e, commandId: $k) { id email } }",
            "variables": { "e": "v1@example.com", "k": 7 },
        }),
        serde_json::json!({ "query": r#"mutation { InviteCustomer(email: "v2@example.com") @skip(if: false) { id email } }"# }),
        serde_json::json!({ "query": r#"mutation { InviteCustomer(email: "v3@example.com") { ...c } } fragment c on Customer { id email }"# }),
        serde_json::json!({ "query": r#"mutation M { InviteCustomer(email: "v4@example.com") { id email } }"#, "operationName": "M" }),
    ];
    for request in requests {
        for _ in 0..2 {
            let (status, body) = client.post(request.clone()).await;
            assert_eq!(status, 200, "{body}");
            let email = body["data"]["InviteCustomer"]["email"].as_str();
            assert!(email.is_some_and(|e| e.ends_with("@example.com")), "{request}: {body}");
        }
    }
    let after = fast(client, "answered").await + fast(client, "handed_over").await;
    assert_eq!(after, before, "none of them took the fast path");
}

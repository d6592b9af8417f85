//! GraphQL over HTTP at the edges: limits, malformed requests, media types,
//! and the operational endpoints (`/readyz`, `/metrics`, `/ws`).

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Client, basic_project, start};
use tokio_tungstenite::tungstenite::{Message as Ws, client::IntoClientRequest, http::HeaderValue};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// POSTs raw bytes; the status, the content type and the body (JSON when it parses).
async fn raw(
    client: &Client,
    content_type: Option<&str>,
    accept: Option<&str>,
    body: Vec<u8>,
) -> (u16, String, Value) {
    let mut request = client.http.post(format!("{}/graphql", client.base)).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let media = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = response.text().await.expect("body");
    (status, media, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn post_json(client: &Client, accept: Option<&str>, body: Value) -> (u16, String, Value) {
    raw(client, Some("application/json"), accept, body.to_string().into_bytes()).await
}

fn first_error(body: &Value) -> &str {
    body["errors"][0]["message"].as_str().unwrap_or_else(|| panic!("an error message: {body}"))
}

#[tokio::test]
async fn malformed_requests_get_graphql_over_http_answers() {
    let (shell, client) = start(basic_project()).await;

    // Not JSON.
    let (status, media, body) = raw(&client, Some("application/json"), None, b"{\"query\": ".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(media.starts_with("application/json"), "{media}");
    assert!(first_error(&body).contains("not valid JSON"), "{body}");
    // No query, a query of the wrong type, a batch, a non-object body.
    for (request, expect) in [
        (json!({}), "no `query`"),
        (json!({ "query": 42 }), "`query` must be a string"),
        (json!({ "query": "{ functions { name } }", "variables": [1] }), "`variables` must be an object"),
        (json!({ "query": "{ functions { name } }", "variables": "x" }), "`variables` must be an object"),
        (
            json!({ "query": "{ functions { name } }", "operationName": 3 }),
            "`operationName` must be a string",
        ),
        (json!({ "query": "{ functions { name } }", "extensions": [] }), "`extensions` must be an object"),
        (json!([{ "query": "{ functions { name } }" }]), "batched"),
        (json!("query"), "JSON object"),
    ] {
        let (status, _, body) = post_json(&client, None, request.clone()).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(first_error(&body).contains(expect), "{request}: {body}");
        assert!(body.get("data").is_none(), "{body}");
    }
    // No content type, or the wrong one: 415.
    let query = json!({ "query": "{ functions { name } }" }).to_string().into_bytes();
    let (status, _, body) = raw(&client, None, None, query.clone()).await;
    assert_eq!(status, 415, "{body}");
    let (status, _, body) = raw(&client, Some("text/plain"), None, query.clone()).await;
    assert_eq!(status, 415, "{body}");
    // Nothing acceptable offered: 406.
    let (status, _, body) = raw(&client, Some("application/json"), Some("text/csv"), query).await;
    assert_eq!(status, 406, "{body}");

    let body = client.invite("still@serving.io").await;
    assert_eq!(body["data"]["InviteCustomer"]["email"], "still@serving.io", "{body}");
    shell.stop().await.expect("clean stop");
}

/// The answer's fields come in the order the query selected them (the
/// GraphQL specification's ordered response map), not sorted.
#[tokio::test]
async fn fields_are_answered_in_the_order_selected() {
    let (shell, client) = start(basic_project()).await;
    let query = r#"mutation { b: InviteCustomer(email: "order@example.com") { invited id email } a: InviteCustomer(email: "order@example.com") { email id } }"#;
    let body = json!({ "query": query }).to_string().into_bytes();
    let response = client
        .http
        .post(format!("{}/graphql", client.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("body");
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("{needle} in {text}"));
    assert!(at("\"b\"") < at("\"a\""), "{text}");
    assert!(at("\"invited\"") < at("\"id\"") && at("\"id\"") < at("\"email\""), "{text}");
    let a = &text[at("\"a\"")..];
    assert!(a.find("\"email\"") < a.find("\"id\""), "{text}");
    shell.stop().await.expect("clean stop");
}

/// A document whose shape passed validation is not validated again: the
/// next of that shape (another email) runs with its own strings; one that
/// failed validation is refused every time, and one with variables is
/// validated every time.
#[tokio::test]
async fn a_shape_is_validated_once_and_an_invalid_document_every_time() {
    let (shell, client) = start(basic_project()).await;
    let validated = || shell.graphql.served().validated_shapes();
    for _ in 0..2 {
        let (status, _, body) = post_json(&client, None, json!({ "query": "{ functions { nope } }" })).await;
        assert_eq!(status, 200, "{body}");
        assert!(first_error(&body).contains("nope"), "{body}");
        assert!(body.get("data").is_none_or(Value::is_null), "{body}");
    }
    assert_eq!(validated(), 0);
    for email in ["shape1@example.com", "shape2@example.com", "shape3@example.com"] {
        let query = format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ email invited }} }}"#);
        let (status, _, body) = post_json(&client, None, json!({ "query": query })).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["InviteCustomer"], json!({ "email": email, "invited": true }), "{body}");
        assert_eq!(validated(), 1);
    }
    let query = "mutation($e: String!) { InviteCustomer(email: $e) { email } }";
    let (_, _, body) = post_json(&client, None, json!({ "query": query, "variables": { "e": 5 } })).await;
    assert!(body["errors"][0]["message"].is_string(), "a variable of the wrong type is refused: {body}");
    let variables = json!({ "e": "shape4@example.com" });
    let (_, _, body) = post_json(&client, None, json!({ "query": query, "variables": variables })).await;
    assert_eq!(body["data"]["InviteCustomer"]["email"], "shape4@example.com", "{body}");
    assert_eq!(validated(), 1);
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn request_errors_are_200_for_json_and_400_for_graphql_response_json() {
    let (shell, client) = start(basic_project()).await;
    let cases = [
        // Unknown field.
        json!({ "query": "{ functions { name colour } }" }),
        // Wrong argument type.
        json!({ "query": "mutation { InviteCustomer(email: 42) { id } }" }),
        // Syntax error.
        json!({ "query": "mutation { InviteCustomer(email: " }),
        // A variable of the wrong shape.
        json!({ "query": "mutation ($e: String) { InviteCustomer(email: $e) { id } }", "variables": { "e": { "not": "a string" } } }),
        // An unknown operation name.
        json!({ "query": "query A { functions { name } }", "operationName": "B" }),
    ];
    for request in cases {
        let (status, media, body) = post_json(&client, Some("application/json"), request.clone()).await;
        assert_eq!(status, 200, "{request}: {body}");
        assert!(media.starts_with("application/json"), "{media}");
        assert!(!first_error(&body).is_empty());

        let (status, media, body) = post_json(&client, Some(GRAPHQL_RESPONSE), request.clone()).await;
        assert_eq!(status, 400, "{request}: {body}");
        assert!(media.starts_with(GRAPHQL_RESPONSE), "{media}");
        assert!(body.get("data").is_none(), "no data on a request error: {body}");
        assert!(!first_error(&body).is_empty());
    }
    // An execution error still answers 200 with data, in both media types.
    let (status, _, body) = post_json(
        &client,
        Some(GRAPHQL_RESPONSE),
        json!({ "query": "mutation { InviteCustomer(email: \"\") { id } }" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(first_error(&body).contains("Email is required"), "{body}");
    assert_eq!(body["data"]["InviteCustomer"], Value::Null, "{body}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn get_requests_run_queries_but_not_mutations() {
    let (shell, client) = start(basic_project()).await;
    let get = |query: &str| {
        client
            .http
            .get(format!("{}/graphql", client.base))
            .query(&[("query", query)])
            .header("accept", "application/json")
            .send()
    };
    let response = get("{ functions { name } }").await.expect("GET");
    assert_eq!(response.status().as_u16(), 200);
    let response = get(r#"mutation { InviteCustomer(email: "get@example.com") { id } }"#).await.expect("GET");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    // A client asking for JSON without a query is told so, not sent GraphiQL.
    let response = client
        .http
        .get(format!("{}/graphql", client.base))
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status().as_u16(), 400);
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let mut project = basic_project();
    project.http.max_body_bytes = 1024;
    let (shell, client) = start(project).await;

    let padding = "x".repeat(2048);
    let big = json!({ "query": format!("{{ functions {{ name }} }} # {padding}") });
    let (status, _, body) = post_json(&client, None, big).await;
    assert_eq!(status, 413, "{body}");
    assert!(first_error(&body).contains("1024 bytes"), "{body}");
    // Chunked, without a content length: still 413.
    let chunks =
        futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 512]))));
    let response = client
        .http
        .post(format!("{}/graphql", client.base))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("HTTP request");
    assert_eq!(response.status().as_u16(), 413);
    // Under the limit is fine.
    let body = client.graphql("{ functions { name } }").await;
    assert!(body["data"]["functions"].is_array(), "{body}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn depth_and_complexity_are_limited() {
    let mut project = basic_project();
    project.graphql.max_depth = 2;
    project.graphql.max_complexity = 3;
    let (shell, client) = start(project).await;

    let deep = client.graphql("{ __schema { types { name } } }").await;
    assert!(first_error(&deep).contains("nested too deep"), "{deep}");
    let complex = client.graphql("{ customers { id email invited } }").await;
    assert!(first_error(&complex).contains("complex"), "{complex}");
    let fine = client.graphql("{ customers(first: 2) { id } }").await;
    assert_eq!(fine["data"]["customers"], json!([]), "{fine}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn page_sizes_count_toward_complexity() {
    // The default limit: 1000.
    let (shell, client) = start(basic_project()).await;
    let aliases = |n: usize, first: &str| -> String {
        (0..n).map(|i| format!("a{i}: customers(first: {first}) {{ id }} ")).collect()
    };
    let expensive = [
        // 300 pages of up to 100: up to 30 000 documents.
        json!({ "query": format!("{{ {} }}", aliases(300, "100")) }),
        // The same size through a variable, and through a fragment.
        json!({ "query": format!("query ($n: Int) {{ {} }}", aliases(20, "$n")), "variables": { "n": 100 } }),
        json!({ "query": format!("{{ ...Pages }} fragment Pages on Query {{ {} }}", aliases(20, "100")) }),
        // `first` left out: 20 each.
        json!({ "query": format!("{{ {} }}", (0..60).map(|i| format!("a{i}: customers {{ id }} ")).collect::<String>()) }),
    ];
    for request in expensive {
        let (status, _, body) = post_json(&client, Some(GRAPHQL_RESPONSE), request.clone()).await;
        assert_eq!(status, 400, "refused before it runs: {body}");
        let message = first_error(&body);
        assert!(message.contains("too complex") && message.contains("`first`"), "{message}");
        assert!(body.get("data").is_none(), "{body}");
    }
    // A full page of everything, or a few small pages, pass.
    let full = client.graphql("{ customers(first: 100) { id email invited } }").await;
    assert_eq!(full["data"]["customers"], json!([]), "{full}");
    let (status, _, small) = post_json(
        &client,
        None,
        json!({ "query": format!("query ($n: Int) {{ {} }}", aliases(20, "$n")), "variables": { "n": 5 } }),
    )
    .await;
    assert_eq!(status, 200, "{small}");
    assert!(small.get("errors").is_none(), "{small}");
    shell.stop().await.expect("clean stop");
}

/// A POST carrying `origin`, if any; the response.
async fn post_from(client: &Client, origin: Option<&str>, query: &str) -> reqwest::Response {
    let mut request = client.http.post(format!("{}/graphql", client.base)).json(&json!({ "query": query }));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.expect("HTTP request")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn browsers_of_other_origins_are_refused_and_allowed_ones_get_cors() {
    let mut project = basic_project();
    project.http.allowed_origins = vec!["https://app.example.com".into()];
    let (shell, client) = start(project).await;
    let invite = r#"mutation { InviteCustomer(email: "cross@site.example") { id } }"#;

    // A page of another site cannot run a mutation through its visitor's browser.
    let refused = post_from(&client, Some("http://evil.example"), invite).await;
    assert_eq!(refused.status().as_u16(), 403);
    assert!(header(&refused, "access-control-allow-origin").is_empty());
    let body: Value = refused.json().await.expect("a JSON body");
    assert!(first_error(&body).contains("http.allowed-origins"), "{body}");
    // Nor can a page of this machine once the list no longer names it, nor a
    // GET, nor a preflight.
    let refused = post_from(&client, Some("http://localhost:3000"), "{ functions { name } }").await;
    assert_eq!(refused.status().as_u16(), 403);
    let get = client
        .http
        .get(format!("{}/graphql?query=%7B%20functions%20%7B%20name%20%7D%20%7D", client.base))
        .header("origin", "http://evil.example")
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status().as_u16(), 403);
    let preflight = |origin: &'static str| {
        client
            .http
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", client.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, idempotency-key")
            .send()
    };
    assert_eq!(preflight("http://evil.example").await.expect("OPTIONS").status().as_u16(), 403);
    let customers = client.graphql("{ customers { email } }").await;
    assert_eq!(customers["data"]["customers"], json!([]), "nothing ran: {customers}");

    // The configured origin: a preflight says what it may send, then its POST runs.
    let allowed = preflight("https://app.example.com").await.expect("OPTIONS");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(header(&allowed, "access-control-allow-origin"), "https://app.example.com");
    assert!(header(&allowed, "access-control-allow-methods").contains("POST"));
    let headers = header(&allowed, "access-control-allow-headers").to_ascii_lowercase();
    assert!(
        headers.contains("content-type")
            && headers.contains("idempotency-key")
            && headers.contains("authorization"),
        "{headers}"
    );
    let posted = post_from(&client, Some("https://app.example.com"), invite).await;
    assert_eq!(posted.status().as_u16(), 200);
    assert_eq!(header(&posted, "access-control-allow-origin"), "https://app.example.com");
    let body: Value = posted.json().await.expect("a JSON body");
    assert!(body["data"]["InviteCustomer"]["id"].is_string(), "{body}");

    // The shell's own origin (the page GraphiQL is served from), and clients
    // that are not browsers (no `Origin`), always pass.
    let own = format!("http://{}", shell.addr);
    let response = post_from(&client, Some(&own), "{ functions { name } }").await;
    assert_eq!(response.status().as_u16(), 200);
    let response = post_from(&client, None, "{ functions { name } }").await;
    assert_eq!(response.status().as_u16(), 200);
    shell.stop().await.expect("clean stop");
}

/// A `graphql-transport-ws` connection with `origin`, if any.
async fn ws_from(
    addr: std::net::SocketAddr,
    origin: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let mut request = format!("ws://{addr}/ws").into_client_request().expect("ws request");
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("graphql-transport-ws"));
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", HeaderValue::from_str(origin).expect("an origin"));
    }
    tokio_tungstenite::connect_async(request).await.map(|(ws, _)| ws)
}

#[tokio::test]
async fn cross_site_websockets_are_refused() {
    let (shell, client) = start(basic_project()).await;

    // The upgrade is refused before any GraphQL runs.
    match ws_from(shell.addr, Some("http://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        Err(e) => panic!("expected a 403, got {e}"),
        Ok(_) => panic!("a page of http://evil.example opened a WebSocket"),
    }

    // Pages of this machine (the default list) and clients without an
    // `Origin` run operations, mutations included.
    for (n, origin) in
        [Some("http://localhost:5173"), Some("http://[::1]:8080"), None].into_iter().enumerate()
    {
        let mut ws = ws_from(shell.addr, origin).await.unwrap_or_else(|e| panic!("{origin:?} connects: {e}"));
        ws.send(Ws::text(json!({ "type": "connection_init" }).to_string())).await.expect("init");
        let ack = next_json(&mut ws).await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        let mutation = format!(r#"mutation {{ InviteCustomer(email: "ws{n}@example.com") {{ email }} }}"#);
        let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": mutation } });
        ws.send(Ws::text(subscribe.to_string())).await.expect("subscribe");
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), next_json(&mut ws))
            .await
            .expect("an answer");
        assert_eq!(
            next["payload"]["data"]["InviteCustomer"]["email"],
            format!("ws{n}@example.com"),
            "{next}"
        );
        ws.close(None).await.ok();
    }
    let customers = client.graphql("{ customers { email } }").await;
    assert_eq!(customers["data"]["customers"].as_array().map(Vec::len), Some(3), "{customers}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn slow_requests_time_out_with_408() {
    // Without the projector the mutation is never answered; the request
    // timeout is shorter than the response timeout.
    let mut project = basic_project();
    project.functions = Some(vec!["invite-customer".into(), "invite-resolver".into()]);
    project.response_timeout_ms = 10_000;
    project.http.request_timeout_ms = 300;
    let (shell, client) = start(project).await;

    let started = std::time::Instant::now();
    let (status, _, body) = post_json(
        &client,
        None,
        json!({ "query": r#"mutation { InviteCustomer(email: "slow@example.com") }"# }),
    )
    .await;
    assert_eq!(status, 408, "{body}");
    assert!(first_error(&body).contains("longer than"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn readiness_and_metrics_are_served() {
    let (shell, client) = start(basic_project()).await;
    client.invite("metrics@example.com").await;

    let ready = client.http.get(format!("{}/readyz", client.base)).send().await.expect("GET /readyz");
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(ready.text().await.expect("body").trim(), "ready");

    let metrics = client.http.get(format!("{}/metrics", client.base)).send().await.expect("GET /metrics");
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(
        metrics
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/plain"))
    );
    let text = metrics.text().await.expect("body");
    for expected in [
        "lowshell_requests_total{outcome=\"ok\"}",
        "lowshell_command_duration_seconds_bucket{command=\"InviteCustomer\",outcome=\"ok\"",
        "lowshell_guest_call_duration_seconds_count{function=\"invite-customer\",phase=\"operate\"}",
        "lowshell_guest_call_duration_seconds_count{function=\"invite-resolver\",phase=\"resolve\"}",
        "lowshell_instances_created_total{function=\"customer-projector\"}",
        "lowshell_consumer_lag{function=\"invite-customer\"}",
        "lowshell_events_total{topic=\"customer\"}",
    ] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn events_are_watched_live_over_graphql_ws() {
    let (shell, client) = start(basic_project()).await;

    let mut request = format!("ws://{}/ws", shell.addr).into_client_request().expect("ws request");
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("graphql-transport-ws"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("WebSocket connects");
    ws.send(Ws::text(json!({ "type": "connection_init" }).to_string())).await.expect("init");
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let subscription = "subscription { events(type: \"CustomerInvited\") { topic type id correlationId payload function atMs } }";
    ws.send(Ws::text(
        json!({ "id": "1", "type": "subscribe", "payload": { "query": subscription } }).to_string(),
    ))
    .await
    .expect("subscribe");
    // Let the subscription start before the event is appended.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let invited = client.invite("live@example.com").await;

    let next =
        tokio::time::timeout(std::time::Duration::from_secs(5), next_json(&mut ws)).await.expect("an event");
    assert_eq!(next["type"], "next", "{next}");
    let event = &next["payload"]["data"]["events"];
    assert_eq!(event["topic"], "customer", "{event}");
    assert_eq!(event["type"], "CustomerInvited");
    assert_eq!(event["payload"]["email"], "live@example.com");
    assert_eq!(event["function"], "invite-customer");
    assert_eq!(event["payload"]["customer-id"], invited["data"]["InviteCustomer"]["id"], "{event} {invited}");
    assert!(event["correlationId"].is_string(), "{event}");
    ws.close(None).await.ok();
    shell.stop().await.expect("clean stop");
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Ws, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Ws::Text(text))) => return serde_json::from_str(text.as_str()).expect("JSON message"),
            Some(Ok(Ws::Ping(_) | Ws::Pong(_))) => {}
            other => panic!("unexpected WebSocket message: {other:?}"),
        }
    }
}

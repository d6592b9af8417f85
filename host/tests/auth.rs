//! Identity end to end, over real HTTP with the real components: with
//! `[http.auth] mode = "jwt"` a request without a valid token is refused
//! (401) before any command is appended; a verified token's subject reaches
//! `operate` (invite-customer's inviter rule decides on it) and is recorded
//! on every command and event it causes — in memory (the `events`
//! subscription shows it) and in Postgres (the `events.subject` column).

#[path = "support/pg.rs"]
mod pg;
mod support;

use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{Client, basic_project, start};
use tokio_tungstenite::tungstenite::{Message as Ws, client::IntoClientRequest, http::HeaderValue};

const SECRET: &str = "a test secret that is long enough for HS256";
const ISSUER: &str = "https://login.example.com";
const AUDIENCE: &str = "lowshell-test";
const ADMIN: &str = "admin-token";

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Claims of a token for `subject` with `roles`, valid for an hour.
fn claims(subject: &str, roles: &[&str]) -> Value {
    json!({ "sub": subject, "roles": roles, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 3600 })
}

fn hs256(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .expect("a token")
}

/// A token the shell accepts: `ada`, an inviter.
fn ada() -> String {
    hs256(&claims("ada", &["inviter"]), SECRET)
}

/// The `[http.auth]` of the shells under test.
fn jwt_auth() -> String {
    format!(
        "[http.auth]\nmode = \"jwt\"\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\nissuer = \"{ISSUER}\"\n\
         audience = \"{AUDIENCE}\"\nleeway-s = 5\n"
    )
}

/// The default project (memory) with tokens checked.
fn memory_project() -> host::Project {
    let mut project = basic_project();
    let text = format!("{}\n", jwt_auth());
    project.http.auth =
        host::Project::parse(&text, std::path::Path::new(".")).expect("auth parses").http.auth;
    project.admin.token = Some(ADMIN.into());
    project
}

/// The audit trail the admin endpoint shows: (kind, subject), newest first.
async fn audit_trail(client: &Client, query: &str) -> Vec<(String, Value)> {
    let path = format!("/admin/audit{query}");
    let (status, body) = client.admin(reqwest::Method::GET, &path, Some(ADMIN), vec![]).await;
    assert_eq!(status, 200, "{body}");
    let entries = body.as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|e| (e["kind"].as_str().unwrap_or_default().to_owned(), e["subject"].clone()))
        .collect()
}

/// POSTs a GraphQL request with `authorization` as the header, if any.
async fn post(client: &Client, authorization: Option<&str>, query: &str) -> (u16, Option<String>, Value) {
    let mut request = client.http.post(format!("{}/graphql", client.base)).json(&json!({ "query": query }));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let challenge =
        response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, challenge, response.json().await.unwrap_or(Value::Null))
}

fn invite(email: &str) -> String {
    format!(r#"mutation {{ InviteCustomer(email: "{email}") {{ id email invited }} }}"#)
}

/// Every way a request can fail to prove who sends it, with what the shell says.
fn bad_credentials() -> Vec<(&'static str, String, &'static str)> {
    let mut expired = claims("ada", &["inviter"]);
    expired["exp"] = json!(now() - 3600);
    let mut other_audience = claims("ada", &["inviter"]);
    other_audience["aud"] = json!("someone-else");
    let mut other_issuer = claims("ada", &["inviter"]);
    other_issuer["iss"] = json!("https://evil.example.com");
    let mut no_subject = claims("ada", &["inviter"]);
    no_subject.as_object_mut().expect("claims").remove("sub");
    vec![
        (
            "a forged signature",
            format!("Bearer {}", hs256(&claims("ada", &["inviter"]), "not the secret")),
            "signature",
        ),
        ("an expired token", format!("Bearer {}", hs256(&expired, SECRET)), "expired"),
        ("a wrong audience", format!("Bearer {}", hs256(&other_audience, SECRET)), "audience"),
        ("a wrong issuer", format!("Bearer {}", hs256(&other_issuer, SECRET)), "issuer"),
        ("no subject", format!("Bearer {}", hs256(&no_subject, SECRET)), "sub"),
        ("not a token", "Bearer not.a.token".to_owned(), "not valid"),
        ("another scheme", format!("Basic {}", ada()), "Bearer <token>"),
    ]
}

/// Asserts that every bad credential, and none at all, is refused with 401
/// for the invite of `email`.
async fn every_bad_request_is_refused(client: &Client, email: &str) {
    let (status, challenge, body) = post(client, None, &invite(email)).await;
    assert_eq!(status, 401, "no token: {body}");
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{body}");
    assert!(body.get("data").is_none(), "{body}");
    for (what, authorization, says) in bad_credentials() {
        let (status, _, body) = post(client, Some(&authorization), &invite(email)).await;
        assert_eq!(status, 401, "{what}: {body}");
        let message = support::error(&body).unwrap_or_default();
        assert!(message.contains(says), "{what}: `{message}` should say {says}");
    }
}

async fn ws_connect(addr: std::net::SocketAddr) -> WsStream {
    let mut request = format!("ws://{addr}/ws").into_client_request().expect("ws request");
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("graphql-transport-ws"));
    tokio_tungstenite::connect_async(request).await.map(|(ws, _)| ws).expect("the WebSocket opens")
}

/// The next text frame as JSON; `None` when the connection closes.
async fn next_json(ws: &mut WsStream) -> Option<Value> {
    let next = async {
        loop {
            match ws.next().await {
                Some(Ok(Ws::Text(text))) => return serde_json::from_str(text.as_str()).ok(),
                Some(Ok(Ws::Ping(_) | Ws::Pong(_))) => {}
                _ => return None,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), next).await.expect("a WebSocket message in time")
}

/// A `graphql-transport-ws` connection initialised with `payload`, watching
/// every appended command and event.
async fn watch_events(addr: std::net::SocketAddr, payload: Value) -> WsStream {
    let mut ws = ws_connect(addr).await;
    ws.send(Ws::text(json!({ "type": "connection_init", "payload": payload }).to_string()))
        .await
        .expect("init");
    let ack = next_json(&mut ws).await.expect("an answer to connection_init");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let query = "subscription { events { topic type id subject } }";
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query } });
    ws.send(Ws::text(subscribe.to_string())).await.expect("subscribe");
    ws
}

/// The next event the subscription shows.
async fn next_event(ws: &mut WsStream) -> Value {
    let message = next_json(ws).await.expect("an event");
    assert_eq!(message["type"], "next", "{message}");
    message["payload"]["data"]["events"].clone()
}

#[tokio::test]
async fn without_a_valid_token_nothing_is_appended_and_a_verified_subject_lands_on_every_event() {
    let (shell, client) = start(memory_project()).await;
    // Given an operator watching the log with a token…
    let mut log = watch_events(shell.addr, json!({ "Authorization": format!("Bearer {}", ada()) })).await;

    // …when requests without a valid token try to invite, each is refused…
    every_bad_request_is_refused(&client, "refused@example.com").await;

    // …and when ada, an inviter, invites with her token…
    let bearer = format!("Bearer {}", ada());
    let (status, _, body) = post(&client, Some(&bearer), &invite("a@b.c")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["InviteCustomer"]["invited"], true, "{body}");

    // …then the first thing appended is her command — the refused ones
    // appended nothing — and the event it caused records her too.
    let command = next_event(&mut log).await;
    assert_eq!(command["type"], "InviteCustomer", "{command}");
    assert_eq!(command["subject"], "ada", "{command}");
    let event = next_event(&mut log).await;
    assert_eq!(event["type"], "CustomerInvited", "{event}");
    assert_eq!(event["subject"], "ada", "{event}");

    // The audit trail says the same, newest first, by subject too.
    let ada_did =
        vec![("CustomerInvited".to_owned(), json!("ada")), ("InviteCustomer".to_owned(), json!("ada"))];
    assert_eq!(audit_trail(&client, "").await, ada_did);
    assert_eq!(audit_trail(&client, "?subject=ada&limit=10").await, ada_did);
    assert_eq!(audit_trail(&client, "?subject=bob").await, vec![]);
    let (status, _) = client.admin(reqwest::Method::GET, "/admin/audit?limit=0", Some(ADMIN), vec![]).await;
    assert_eq!(status, 400);

    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn only_an_inviter_may_invite_and_the_others_are_told_why() {
    let (shell, client) = start(memory_project()).await;
    let bob = format!("Bearer {}", hs256(&claims("bob", &["support"]), SECRET));

    let (status, _, body) = post(&client, Some(&bob), &invite("c@d.e")).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        support::error(&body),
        Some("Only an inviter may invite customers: bob does not have the `inviter` role"),
        "{body}"
    );
    assert_eq!(support::error_extensions(&body)["code"], "REJECTED", "{body}");
    // Nothing was invited: ada may still invite that email as new.
    let (_, _, body) = post(&client, Some(&format!("Bearer {}", ada())), &invite("c@d.e")).await;
    assert_eq!(body["data"]["InviteCustomer"]["invited"], true, "{body}");

    // An idempotency key is the caller's own: bob repeating ada's key gets
    // his own answer (a rejection), not hers.
    let keyed = r#"mutation { InviteCustomer(email: "k@d.e", commandId: "k-1") { id invited } }"#;
    let (_, _, body) = post(&client, Some(&format!("Bearer {}", ada())), keyed).await;
    assert_eq!(body["data"]["InviteCustomer"]["invited"], true, "{body}");
    let (_, _, body) = post(&client, Some(&bob), keyed).await;
    assert_eq!(support::error_extensions(&body)["code"], "REJECTED", "{body}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_model_that_requires_authentication_is_read_only_with_a_token() {
    let (shell, client) = start(memory_project()).await;
    let bearer = format!("Bearer {}", ada());
    let (_, _, body) = post(&client, Some(&bearer), &invite("read@b.c")).await;
    let id = body["data"]["InviteCustomer"]["id"].as_str().expect("a customer id").to_owned();
    let read = format!(r#"{{ customer(id: "{id}") {{ email }} customers {{ id }} }}"#);

    // Customer is declared `authenticated` by customer-projector's meta.
    let (status, _, body) = post(&client, None, &read).await;
    assert_eq!(status, 200, "{body}");
    let errors = body["errors"].as_array().cloned().unwrap_or_default();
    assert_eq!(errors.len(), 2, "{body}");
    for error in &errors {
        assert_eq!(error["extensions"]["code"], "UNAUTHENTICATED", "{body}");
    }
    assert!(body["data"]["customer"].is_null(), "{body}");
    // Queries of what needs no token still answer anonymously.
    let (status, _, body) = post(&client, None, "{ functions { name } }").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["functions"].is_array(), "{body}");

    let (status, _, body) = post(&client, Some(&bearer), &read).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["customer"]["email"], "read@b.c", "{body}");
    assert!(body.get("errors").is_none(), "{body}");

    // A bad token is refused even for a query.
    let (status, _, _) = post(&client, Some("Bearer nope"), "{ functions { name } }").await;
    assert_eq!(status, 401);
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn websockets_authenticate_in_connection_init() {
    let (shell, _client) = start(memory_project()).await;

    // A bad token closes the connection before anything runs.
    let mut ws = ws_connect(shell.addr).await;
    let init = json!({ "type": "connection_init", "payload": { "Authorization": "Bearer forged" } });
    ws.send(Ws::text(init.to_string())).await.expect("init");
    match next_json(&mut ws).await {
        None => {}
        Some(message) => assert_ne!(message["type"], "connection_ack", "{message}"),
    }

    // Without a token: no subscription to the log, no mutation.
    let mut ws = ws_connect(shell.addr).await;
    ws.send(Ws::text(json!({ "type": "connection_init" }).to_string())).await.expect("init");
    assert_eq!(next_json(&mut ws).await.expect("ack")["type"], "connection_ack");
    for (id, query) in [("1", "subscription { events { type } }".to_owned()), ("2", invite("ws@b.c"))] {
        let subscribe = json!({ "id": id, "type": "subscribe", "payload": { "query": query } });
        ws.send(Ws::text(subscribe.to_string())).await.expect("subscribe");
        let mut answer = next_json(&mut ws).await.expect("an answer");
        while answer["type"] == "complete" {
            answer = next_json(&mut ws).await.expect("an answer");
        }
        assert_eq!(answer["id"], id, "{answer}");
        let errors =
            if answer["type"] == "error" { &answer["payload"] } else { &answer["payload"]["errors"] };
        assert_eq!(errors[0]["extensions"]["code"], "UNAUTHENTICATED", "{answer}");
    }

    // With one, under `headers` as some clients send it: a mutation runs as ada.
    let mut ws = ws_connect(shell.addr).await;
    let payload = json!({ "headers": { "authorization": format!("Bearer {}", ada()) } });
    ws.send(Ws::text(json!({ "type": "connection_init", "payload": payload }).to_string()))
        .await
        .expect("init");
    assert_eq!(next_json(&mut ws).await.expect("ack")["type"], "connection_ack");
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": invite("ws@b.c") } });
    ws.send(Ws::text(subscribe.to_string())).await.expect("subscribe");
    let answer = next_json(&mut ws).await.expect("an answer");
    assert_eq!(answer["payload"]["data"]["InviteCustomer"]["invited"], true, "{answer}");
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn es256_tokens_are_verified_with_the_public_key_file() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let text = format!(
        "[http.auth]\nmode = \"jwt\"\nalgorithm = \"ES256\"\nkey-file = \"{}\"\naudience = \"{AUDIENCE}\"\n",
        keys.join("es256-public.pem").display()
    );
    let mut project = basic_project();
    project.http.auth =
        host::Project::parse(&text, std::path::Path::new(".")).expect("auth parses").http.auth;
    let (shell, client) = start(project).await;
    let private = std::fs::read(keys.join("es256-private.pem")).expect("the test key");
    let key = EncodingKey::from_ec_pem(&private).expect("an EC key");
    let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims("ada", &["inviter"]), &key)
        .expect("a token");

    let (status, _, body) = post(&client, Some(&format!("Bearer {token}")), &invite("es@b.c")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["InviteCustomer"]["invited"], true, "{body}");
    // An HS256 token (the algorithm the project did not choose) is refused.
    let (status, _, body) = post(&client, Some(&format!("Bearer {}", ada())), &invite("hs@b.c")).await;
    assert_eq!(status, 401, "{body}");
    shell.stop().await.expect("clean stop");
}

#[test]
fn a_project_with_unusable_keys_does_not_start() {
    let parse = |auth: &str| host::Project::parse(auth, std::path::Path::new(".")).map(drop);
    for (auth, says) in [
        ("[http.auth]\nmode = \"jwt\"\n", "HS256 needs `secret`"),
        ("[http.auth]\nmode = \"jwt\"\nalgorithm = \"RS256\"\n", "RS256 needs `key-file` or `jwks-file`"),
        (
            "[http.auth]\nmode = \"jwt\"\nalgorithm = \"ES256\"\nkey-file = \"/nonexistent.pem\"\n",
            "cannot read",
        ),
        ("[http.auth]\nmode = \"sometimes\"\n", "unknown variant"),
    ] {
        let error = parse(auth).expect_err(auth).to_string();
        assert!(error.contains(says), "{auth}: `{error}` should say {says}");
    }
    assert!(parse("[http.auth]\nmode = \"none\"\n").is_ok());
}

#[tokio::test]
async fn postgres_records_who_caused_each_command_and_event() {
    let url = pg::database().await;
    let text = format!("{}\n{}", pg::project_text(&url, "127.0.0.1:0", 10_000), jwt_auth());
    let (shell, client) = start(support::project_from(&text, ADMIN)).await;

    every_bad_request_is_refused(&client, "refused@example.com").await;
    let (status, _, body) = post(&client, Some(&format!("Bearer {}", ada())), &invite("pg@b.c")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["InviteCustomer"]["invited"], true, "{body}");
    let bob = format!("Bearer {}", hs256(&claims("bob", &["support"]), SECRET));
    let (_, _, body) = post(&client, Some(&bob), &invite("bob@b.c")).await;
    assert_eq!(support::error_extensions(&body)["code"], "REJECTED", "{body}");

    // The audit trail: who caused what, straight from the log.
    let db = pg::client(&url).await;
    let rows = db
        .query("SELECT kind, subject, claims FROM events ORDER BY position", &[])
        .await
        .expect("the audit query");
    let trail: Vec<(String, Option<String>)> =
        rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))).collect();
    assert_eq!(
        trail,
        vec![
            ("InviteCustomer".to_owned(), Some("ada".to_owned())),
            ("CustomerInvited".to_owned(), Some("ada".to_owned())),
            ("InviteCustomer".to_owned(), Some("bob".to_owned())),
        ],
        "nothing refused was appended; each row names who caused it"
    );
    let claims: Value = rows[1].get(2);
    assert_eq!(claims["roles"], json!(["inviter"]));
    let ada_did = db
        .query_one("SELECT count(*) FROM events WHERE subject = $1", &[&"ada"])
        .await
        .expect("by subject")
        .get::<_, i64>(0);
    assert_eq!(ada_did, 2);
    // And through the admin endpoint, newest first.
    assert_eq!(
        audit_trail(&client, "?subject=ada").await,
        vec![("CustomerInvited".to_owned(), json!("ada")), ("InviteCustomer".to_owned(), json!("ada"))]
    );
    assert_eq!(audit_trail(&client, "?limit=1").await, vec![("InviteCustomer".to_owned(), json!("bob"))]);
    shell.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_existing_database_is_upgraded_and_its_old_events_keep_no_subject() {
    let url = pg::database().await;
    let text = pg::project_text(&url, "127.0.0.1:0", 10_000);
    // A database as the shell left it before the audit columns existed,
    // with an event in it.
    let (shell, client) = start(support::project_from(&text, ADMIN)).await;
    let body = client.invite("old@b.c").await;
    assert_eq!(body["data"]["InviteCustomer"]["invited"], true, "{body}");
    shell.stop().await.expect("clean stop");
    let db = pg::client(&url).await;
    db.batch_execute(
        "DROP INDEX events_subject; ALTER TABLE events DROP COLUMN subject, DROP COLUMN claims;
         DELETE FROM schema_migrations WHERE version = 7;",
    )
    .await
    .expect("back to the schema before");

    let text = format!("{text}\n{}", jwt_auth());
    let (shell, client) = start(support::project_from(&text, ADMIN)).await;
    let (_, _, body) = post(&client, Some(&format!("Bearer {}", ada())), &invite("new@b.c")).await;
    assert_eq!(body["data"]["InviteCustomer"]["invited"], true, "{body}");

    let rows = db.query("SELECT kind, subject FROM events ORDER BY position", &[]).await.expect("audit");
    let subjects: Vec<Option<String>> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(subjects, vec![None, None, Some("ada".into()), Some("ada".into())]);
    shell.stop().await.expect("clean stop");
}

#[test]
fn a_jwks_key_is_picked_by_the_tokens_kid() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let private = std::fs::read(keys.join("es256-private.pem")).expect("the test key");
    let key = EncodingKey::from_ec_pem(&private).expect("an EC key");
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).expect("a JWK");
    jwk.common.key_id = Some("key-2".into());
    let dir = tempfile::tempdir().expect("a temporary folder");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).expect("the JWKS file");
    let text =
        format!("[http.auth]\nmode = \"jwt\"\nalgorithm = \"ES256\"\njwks-file = \"{}\"\n", jwks.display());
    let config = host::Project::parse(&text, std::path::Path::new(".")).expect("auth parses").http.auth;
    let auth = host::http::Auth::new(&config).expect("the JWKS loads");
    let token = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims("ada", &["inviter"]), &key).expect("a token")
    };

    let principal = auth.verify(&token(Some("key-2"))).expect("verified by key-2");
    assert_eq!(principal.subject, "ada");
    assert!(principal.has_role("inviter"));
    // The only key serves a token without a kid; an unknown kid is refused.
    assert!(auth.verify(&token(None)).is_ok());
    let error = auth.verify(&token(Some("key-9"))).expect_err("no key-9");
    assert!(error.contains("key-9"), "{error}");
}

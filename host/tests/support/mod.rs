//! Shared by the host's integration tests: the real components built by
//! `make guest`, the default project, and a GraphQL client over real HTTP.
#![allow(dead_code)] // each test binary uses a different part

use host::{Project, Shell};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// A component built by `make guest`.
pub fn module(name: &str) -> PathBuf {
    let path = workspace().join("modules").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `make guest` (or `make test`, which does)", path.display());
    path
}

/// The default project, on a free port.
pub fn basic_project() -> Project {
    let mut project =
        Project::load(&workspace().join("projects/basic.toml")).expect("projects/basic.toml loads");
    project.listen = "127.0.0.1:0".parse().expect("address");
    for name in project.functions.iter().flatten() {
        module(name);
    }
    project
}

/// The project in `text` (e.g. `pg::project_text`), not watching files, its
/// admin endpoints open to `token`.
pub fn project_from(text: &str, token: &str) -> Project {
    let mut project = Project::parse(text, Path::new(".")).expect("test project");
    project.watch = false;
    project.admin.token = Some(token.into());
    project
}

/// A shell on a free port and a client for it.
pub async fn start(project: Project) -> (Shell, Client) {
    let shell = Shell::start(project).await.expect("the shell starts");
    let client = Client::new(&format!("http://{}", shell.addr));
    (shell, client)
}

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub http: reqwest::Client,
}

impl Client {
    /// An admin endpoint's status and JSON body (`null` when it has none),
    /// with `token` as the bearer when given.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub fn new(base: &str) -> Self {
        Self { base: base.to_owned(), http: reqwest::Client::new() }
    }

    /// POSTs a GraphQL query; returns the HTTP status and the JSON body.
    pub async fn post(&self, body: Value) -> (u16, Value) {
        let response =
            self.http.post(format!("{}/", self.base)).json(&body).send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("response body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A GraphQL query that must be answered with HTTP 200.
    pub async fn graphql(&self, query: &str) -> Value {
        let (status, body) = self.post(json!({ "query": query })).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn invite(&self, email: &str) -> Value {
        self.graphql(&format!(r#"mutation {{ InviteCustomer(email: {email:?}) {{ id email invited }} }}"#))
            .await
    }
}

/// The message of the first GraphQL error, if any.
pub fn error(body: &Value) -> Option<&str> {
    body["errors"][0]["message"].as_str()
}

pub fn json_body(query: &str) -> Value {
    json!({ "query": query })
}

/// The version of `name` the shell says it runs (`functions` query).
pub async fn running_version(client: &Client, name: &str) -> String {
    let body = client.graphql("{ functions { name version } }").await;
    let functions = body["data"]["functions"].as_array().cloned().unwrap_or_default();
    functions
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["version"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The `extensions` of the first GraphQL error (`code`, `correlationId`).
pub fn error_extensions(body: &Value) -> &Value {
    &body["errors"][0]["extensions"]
}

/// What this test process's shells log, one JSON object per event. Call
/// [`capture_logs`] before starting a shell.
static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the process's logs (info and up) to a buffer that [`logged`] reads.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = std::sync::Arc::clone(&buffer);
        let installed = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(std::sync::Arc::clone(&writer)))
            .try_init();
        assert!(installed.is_ok(), "no other log subscriber in this test process");
        buffer
    });
}

/// The level and message of every event logged with this correlation id.
pub fn logged(correlation_id: &str) -> Vec<(String, String)> {
    let Some(buffer) = LOGS.get() else { return vec![] };
    let text = String::from_utf8_lossy(&buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["fields"]["correlation_id"] == correlation_id)
        .map(|event| {
            (
                event["level"].as_str().unwrap_or_default().to_owned(),
                event["fields"]["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// `Misbehave(action, phase)` from the misbehaving fixture (`guest-functions/fixtures/misbehave`).
pub async fn misbehave(client: &Client, action: &str, phase: &str) -> Value {
    client
        .graphql(&format!(
            r#"mutation {{ Misbehave(action: "{action}", phase: "{phase}") {{ id action detail }} }}"#
        ))
        .await
}

/// The command fails with the stable `COMMAND_FAILED` answer, and the reason
/// logged under its correlation id (needs [`capture_logs`]) contains every
/// one of `expected`.
pub async fn fails(client: &Client, action: &str, phase: &str, expected: &[&str]) {
    let body = misbehave(client, action, phase).await;
    let message = error(&body).unwrap_or_else(|| panic!("{action} in {phase} fails: {body}"));
    assert_eq!(message, "the command failed", "{body}");
    assert_eq!(error_extensions(&body)["code"], "COMMAND_FAILED", "{body}");
    let id = error_extensions(&body)["correlationId"].as_str().unwrap_or_else(|| panic!("an id: {body}"));
    let logged = logged(id);
    let reason = logged
        .iter()
        .find(|(level, _)| level == "WARN" || level == "ERROR")
        .map(|(_, message)| message.as_str())
        .unwrap_or_else(|| panic!("{action} in {phase}: no warning logged under {id}: {logged:?}"));
    for part in expected {
        assert!(reason.contains(part), "{action} in {phase}: {reason:?} should mention {part:?}");
    }
}

/// The sum of the `/metrics` series of `name` whose labels include all of
/// `labels` (0 when there is none).
pub async fn metric(client: &Client, name: &str, labels: &[(&str, &str)]) -> u64 {
    let text = client.http.get(format!("{}/metrics", client.base)).send().await.expect("GET /metrics");
    let text = text.text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!(r#"{k}="{v}""#))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

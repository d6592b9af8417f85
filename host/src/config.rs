//! A project: which functions, which backend, where to listen.
//! Read from TOML; relative paths are relative to the project file.

use crate::runtime::{Limits, StepLimits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default project, also compiled in so `host run` works without files.
pub const DEFAULT_PROJECT: &str = include_str!("../../projects/basic.toml");
/// Where the default project is looked for first, relative to the working directory.
pub const DEFAULT_PROJECT_PATH: &str = "projects/basic.toml";

/// Where the event log, documents and deployments live: the bus and the
/// store are one backend (the store appends the events the bus delivers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// In the process: nothing durable, one shell.
    Memory,
    /// The durable event log and documents in Postgres (`database-url` / `DATABASE_URL`).
    Postgres,
}

/// The environment variable naming the Postgres database when the project has no `database-url`.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Project {
    /// Shown in logs.
    #[serde(default = "default_name")]
    pub name: String,
    /// Address of the HTTP server.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Folder of the components (`<name>.wasm`).
    #[serde(default = "default_modules")]
    pub modules: PathBuf,
    /// The functions to load from `modules`; every `*.wasm` there when absent.
    #[serde(default)]
    pub functions: Option<Vec<String>>,
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    /// Postgres connection URL when `backend` is `postgres`; when
    /// absent, the `DATABASE_URL` environment variable.
    #[serde(default)]
    pub database_url: Option<String>,
    /// How long a request waits for its response.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Attempts of a step whose commit conflicts (each with a fresh lookup).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Requests that may wait for their responses at once; further
    /// mutations are refused (`OVERLOADED`) until some are answered.
    #[serde(default = "default_max_pending_requests")]
    pub max_pending_requests: usize,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub graphql: GraphqlConfig,
    /// Deploy a component when its file in `modules` changes.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Run `functions` compiled into the binary instead of components: the
    /// benchmarks' native baseline (needs the `native-baseline` feature).
    #[serde(default)]
    pub native: bool,
    /// Where compiled components are cached, keyed by content hash, so a
    /// restart does not recompile. Default: `$XDG_CACHE_HOME/lowshell` or
    /// `~/.cache/lowshell`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// What each function's consumer does with an event it cannot process
    /// (`[consumers.NAME]`); [`ConsumerPolicy::default`] for the others.
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerPolicy>,
}

/// How a handler or projector deals with an event whose step keeps failing
/// (a trap, a deadline, conflicts exhausted, an invalid plan): retry with
/// backoff, then park the event or stop. Commands are not retried: a failed
/// command fails its request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ConsumerPolicy {
    /// Retries after the first failure, before `on-failure` applies.
    pub retries: u32,
    /// Wait before the first retry, in milliseconds; doubled for each next one.
    pub backoff_ms: u64,
    pub on_failure: OnFailure,
    /// Shares of the function's inputs processed apart, so that several
    /// shells on one database work on one function at once (Postgres; the
    /// memory backend runs one consumer). Order is kept per key.
    pub partitions: u32,
    /// The payload field whose value keeps events in one partition (and in
    /// order), e.g. `customer-id`; the correlation id when absent.
    pub partition_key: Option<String>,
}

impl Default for ConsumerPolicy {
    fn default() -> Self {
        Self { retries: 3, backoff_ms: 100, on_failure: OnFailure::Park, partitions: 1, partition_key: None }
    }
}

impl ConsumerPolicy {
    /// The wait before retry number `retry` (1-based): `backoff-ms`, doubled
    /// each time, at most [`MAX_BACKOFF`].
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u64 << retry.saturating_sub(1).min(20);
        Duration::from_millis(self.backoff_ms.saturating_mul(factor)).min(MAX_BACKOFF)
    }
}

/// The longest wait between two attempts at an event (also how often a
/// stopped consumer tries again).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What to do once an event's retries are exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Record the event as parked (a dead letter, with its error) and go on
    /// with the next one; `retry` applies it later.
    Park,
    /// Stay at the event, retrying slowly, so that nothing after it is
    /// processed out of order; visible as a stopped consumer.
    Stop,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token of the admin endpoints; `LOWSHELL_ADMIN_TOKEN` overrides it.
    /// Without one the admin endpoints refuse every request.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Longest a request may take; then 408.
    pub request_timeout_ms: u64,
    /// Origins whose browser pages may use the GraphQL endpoints (`POST`,
    /// `GET`, the `/ws` WebSocket), besides the shell's own: `scheme://host`,
    /// `scheme://host:port`, `scheme://host:*` (any port), or `*` (any origin).
    /// A request with another `Origin` is refused with 403; requests without
    /// one (curl, servers) are not browsers' and always pass.
    pub allowed_origins: Vec<String>,
    /// Who may call: `[http.auth]`.
    pub auth: AuthConfig,
}

/// Whether the shell checks who calls it (`[http.auth]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// No identities: every caller is local and trusted, and commands carry
    /// no principal. For a laptop, never for a shared deployment.
    #[default]
    None,
    /// Requests carry `Authorization: Bearer <JWT>`; the shell verifies it
    /// and hands its subject and claims to the functions.
    Jwt,
}

/// A JWT's signature algorithm (`[http.auth] algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared `secret`.
    HS256,
    /// RSA (PKCS#1 v1.5) with SHA-256: a public key in `key-file` or `jwks-file`.
    RS256,
    /// ECDSA P-256 with SHA-256: a public key in `key-file` or `jwks-file`.
    ES256,
}

/// `[http.auth]`: how callers prove who they are.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The algorithm tokens must be signed with; others are refused.
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret (better from `LOWSHELL_HTTP__AUTH__SECRET`
    /// than in the file).
    pub secret: Option<String>,
    /// RS256/ES256: a PEM file with the issuer's public key.
    pub key_file: Option<PathBuf>,
    /// RS256/ES256: a JWKS file (`{ "keys": [...] }`); a token's `kid`
    /// picks its key.
    pub jwks_file: Option<PathBuf>,
    /// When set, a token's `iss` must be this.
    pub issuer: Option<String>,
    /// When set, a token's `aud` must be (or contain) this.
    pub audience: Option<String>,
    /// Seconds of clock skew allowed when checking `exp` and `nbf`.
    pub leeway_s: u64,
}

// By hand, so that the secret never reaches a log.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("algorithm", &self.algorithm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("key_file", &self.key_file)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_s: 30,
        }
    }
}

/// The default `http.allowed-origins`: pages served from this machine.
pub const LOOPBACK_ORIGINS: &[&str] = &[
    "http://localhost:*",
    "https://localhost:*",
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://[::1]:*",
    "https://[::1]:*",
];

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            request_timeout_ms: 15_000,
            allowed_origins: LOOPBACK_ORIGINS.iter().map(|&o| o.to_owned()).collect(),
            auth: AuthConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Wall-clock budget of one guest call, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory of one guest instance, in MiB.
    pub memory_mib: usize,
    /// Guest instances alive at once.
    pub instances: u32,
    /// Executions one guest instance serves before a fresh one replaces it (1: always fresh).
    pub executions_per_instance: u32,
    /// Wall-clock budget of one step: its guest calls and its lookup plan, in milliseconds.
    pub step_deadline_ms: u64,
    /// Lookups in one lookup plan.
    pub lookups: usize,
    /// Documents one `find` may return.
    pub find_documents: usize,
    /// Messages one `operate` may emit.
    pub events: usize,
    /// Write ops of one step (all its write plans).
    pub ops: usize,
    /// Notifications of one step (all its write plans).
    pub notifications: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = Limits::default();
        Self {
            deadline_ms: d.deadline.as_millis() as u64,
            memory_mib: d.memory_bytes >> 20,
            instances: d.instances,
            executions_per_instance: d.executions_per_instance,
            step_deadline_ms: d.step.deadline.as_millis() as u64,
            lookups: d.step.lookups,
            find_documents: d.step.find_documents,
            events: d.step.events,
            ops: d.step.ops,
            notifications: d.step.notifications,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GraphqlConfig {
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl Default for GraphqlConfig {
    fn default() -> Self {
        Self { max_depth: 16, max_complexity: 1000 }
    }
}

fn yes() -> bool {
    true
}
fn default_name() -> String {
    "lowshell".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_modules() -> PathBuf {
    "modules".into()
}
fn default_backend() -> BackendKind {
    BackendKind::Memory
}
fn default_response_timeout_ms() -> u64 {
    5000
}
fn default_attempts() -> u32 {
    5
}
fn default_max_pending_requests() -> usize {
    crate::responses::MAX_PENDING
}

/// Environment variables that override project keys start with this.
pub const ENV_PREFIX: &str = "LOWSHELL_";
/// `LOWSHELL_` variables that are not project keys (command-line options,
/// other components' settings): not applied, not warned about.
pub const ENV_RESERVED: &[&str] = &[
    "LOWSHELL_LOG_FORMAT",
    "LOWSHELL_ADMIN_TOKEN",
    "LOWSHELL_URL",
    "LOWSHELL_HOST_BIN",
    "LOWSHELL_PERF_MAP",
];

/// `LOWSHELL_LIMITS__DEADLINE_MS` → `["limits", "deadline-ms"]`.
fn env_key(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    let path: Vec<String> = rest.split("__").map(|part| part.to_lowercase().replace('_', "-")).collect();
    path.iter().all(|p| !p.is_empty()).then_some(path)
}

/// The value as TOML when it parses as one (numbers, booleans, arrays),
/// else as a string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Sets `path` (a key under tables) to `value` in `table`.
fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else { return Err("empty key".into()) };
    let mut at = table;
    for part in parents {
        let entry = at.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry.as_table_mut().ok_or_else(|| format!("`{part}` is not a table in the project"))?;
    }
    at.insert(last.clone(), value);
    Ok(())
}

/// Applies `LOWSHELL_*` overrides from `vars` onto the project's table (which
/// deserialises), one at a time so that an error names its variable. A
/// variable that names no project key is some other component's setting
/// (say `LOWSHELL_ADMIN_TOKEN`): it is logged and left alone.
fn apply_env(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    let mut vars: Vec<(String, String)> = vars.into_iter().collect();
    vars.sort();
    for (var, raw) in vars {
        if ENV_RESERVED.contains(&var.as_str()) {
            continue;
        }
        let Some(path) = env_key(&var) else { continue };
        let mut candidate = table.clone();
        set(&mut candidate, &path, env_value(&raw)).map_err(|e| anyhow::anyhow!("{var}: {e}"))?;
        match Project::deserialize(toml::Value::Table(candidate.clone())) {
            Ok(_) => *table = candidate,
            Err(e) if e.message().contains("unknown field") => {
                tracing::warn!("{var} is not a project key (a typo?); ignored by the project");
            }
            Err(e) => anyhow::bail!("{var}={raw}: {}", e.message().replace('\n', " ").trim()),
        }
    }
    Ok(())
}

/// A TOML error on one line: `line 3, column 7: invalid type …`.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {}", message.trim())
        }
        None => message.trim().to_owned(),
    }
}

impl Project {
    /// Parses `text`, resolving relative paths against `dir`, with the
    /// process's `LOWSHELL_*` environment overrides applied.
    pub fn parse(text: &str, dir: &Path) -> anyhow::Result<Self> {
        Self::parse_with_env(text, dir, std::env::vars())
    }

    /// [`Project::parse`] with the given environment instead of the process's.
    pub fn parse_with_env(
        text: &str,
        dir: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        Self::from_table(Self::file_table(text)?, dir, vars)
    }

    /// The file on its own, checked, so that its errors point at a line.
    fn file_table(text: &str) -> anyhow::Result<toml::Table> {
        let table: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!(one_line(text, &e)))?;
        if table.contains_key("bus") || table.contains_key("store") {
            // Projects written before the two keys became one.
            let value =
                table.get("store").or_else(|| table.get("bus")).and_then(|v| v.as_str()).unwrap_or("memory");
            anyhow::bail!("`bus` and `store` are one key now: replace them with `backend = \"{value}\"`");
        }
        toml::from_str::<Project>(text).map_err(|e| anyhow::anyhow!(one_line(text, &e)))?;
        Ok(table)
    }

    /// The project from a checked file's table with the overrides of `vars`.
    fn from_table(
        mut table: toml::Table,
        dir: &Path,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        apply_env(&mut table, vars)?;
        let mut project = Project::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("{}", e.message().replace('\n', " ").trim().to_owned()))?;
        if project.modules.is_relative() {
            project.modules = dir.join(&project.modules);
        }
        if let Some(cache) = project.cache_dir.as_mut().filter(|c| c.is_relative()) {
            *cache = dir.join(&*cache);
        }
        let auth = &mut project.http.auth;
        for file in [auth.key_file.as_mut(), auth.jwks_file.as_mut()].into_iter().flatten() {
            if file.is_relative() {
                *file = dir.join(&*file);
            }
        }
        if project.limits.instances == 0
            || project.limits.memory_mib == 0
            || project.limits.deadline_ms == 0
            || project.limits.executions_per_instance == 0
        {
            anyhow::bail!(
                "limits.instances, limits.memory-mib, limits.deadline-ms and \
                 limits.executions-per-instance must be greater than 0"
            );
        }
        let l = &project.limits;
        if l.step_deadline_ms == 0
            || [l.lookups, l.find_documents, l.events, l.ops, l.notifications].contains(&0)
        {
            anyhow::bail!(
                "limits.step-deadline-ms, limits.lookups, limits.find-documents, limits.events, limits.ops \
                 and limits.notifications must be greater than 0"
            );
        }
        if let Some(name) = project.consumers.iter().find_map(|(n, c)| (c.partitions == 0).then_some(n)) {
            anyhow::bail!("consumers.{name}.partitions must be at least 1");
        }
        crate::http::AllowedOrigins::new(&project.http.allowed_origins)
            .map_err(|e| anyhow::anyhow!("http.allowed-origins: {e}"))?;
        // The keys are read now, so a bad one stops the shell at start.
        crate::http::Auth::new(&project.http.auth).map_err(|e| anyhow::anyhow!("http.auth: {e}"))?;
        Ok(project)
    }

    /// Reads a project file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read project file {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        // Only what is wrong in the file is blamed on the file: an override's
        // error names its variable.
        let table =
            Self::file_table(&text).map_err(|e| anyhow::anyhow!("project file {}: {e}", path.display()))?;
        Self::from_table(table, dir, std::env::vars())
    }

    /// `projects/basic.toml` when it exists here, else the compiled-in copy
    /// (as if it were there).
    pub fn default_project() -> anyhow::Result<Self> {
        let path = Path::new(DEFAULT_PROJECT_PATH);
        if path.exists() { Self::load(path) } else { Self::parse(DEFAULT_PROJECT, Path::new("projects")) }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            deadline: Duration::from_millis(self.limits.deadline_ms),
            memory_bytes: self.limits.memory_mib << 20,
            instances: self.limits.instances,
            executions_per_instance: self.limits.executions_per_instance,
            step: StepLimits {
                deadline: Duration::from_millis(self.limits.step_deadline_ms),
                lookups: self.limits.lookups,
                find_documents: self.limits.find_documents,
                events: self.limits.events,
                ops: self.limits.ops,
                notifications: self.limits.notifications,
            },
        }
    }

    /// The Postgres URL: the project's `database-url`, else `DATABASE_URL`.
    pub fn database_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        match std::env::var(DATABASE_URL_ENV) {
            Ok(url) if !url.trim().is_empty() => Ok(url),
            _ => anyhow::bail!(
                "this project uses Postgres: set {DATABASE_URL_ENV} (e.g. postgres://user@localhost/lowshell; \
                 `make pg` starts a local one) or `database-url` in the project file"
            ),
        }
    }

    /// The admin token: `LOWSHELL_ADMIN_TOKEN`, else `[admin] token`; empty means none.
    pub fn admin_token(&self) -> Option<String> {
        std::env::var("LOWSHELL_ADMIN_TOKEN")
            .ok()
            .or_else(|| self.admin.token.clone())
            .filter(|t| !t.trim().is_empty())
    }

    /// The compiled-component cache folder, if there is one.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache_dir.clone().or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
            Some(base.join("lowshell"))
        })
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_project_parses() {
        let p = Project::parse(DEFAULT_PROJECT, Path::new("projects")).expect("default project");
        assert_eq!(p.backend, BackendKind::Memory);
        assert_eq!(p.modules, Path::new("projects/../modules"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Project::parse_with_env("bsu = \"memory\"", Path::new("."), []).expect_err("typo refused");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn one_key_chooses_the_backend() {
        let p = Project::parse_with_env("backend = \"postgres\"", Path::new("."), []).expect("parses");
        assert_eq!(p.backend, BackendKind::Postgres);
        let e = Project::parse_with_env("bus = \"postgres\"\nstore = \"postgres\"", Path::new("."), [])
            .expect_err("the old keys are refused");
        assert!(e.to_string().contains("backend = \"postgres\""), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let vars = [
            ("LOWSHELL_LISTEN", "0.0.0.0:9000"),
            ("LOWSHELL_RESPONSE_TIMEOUT_MS", "250"),
            ("LOWSHELL_LIMITS__DEADLINE_MS", "50"),
            ("LOWSHELL_GRAPHQL__MAX_DEPTH", "3"),
            ("LOWSHELL_FUNCTIONS", "[\"a\", \"b\"]"),
            ("LOWSHELL_LOG_FORMAT", "json"),
            ("OTHER", "x"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let p = Project::parse_with_env(DEFAULT_PROJECT, Path::new("projects"), vars).expect("overridden");
        assert_eq!(p.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(p.response_timeout_ms, 250);
        assert_eq!(p.limits.deadline_ms, 50);
        assert_eq!(p.graphql.max_depth, 3);
        assert_eq!(p.functions, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(p.name, "basic");
    }

    #[test]
    fn failure_policies_per_function_with_defaults() {
        let text = "[consumers.customer-projector]\nretries = 1\non-failure = \"stop\"\n";
        let p = Project::parse_with_env(text, Path::new("."), []).expect("policies parse");
        let policy = &p.consumers["customer-projector"];
        assert_eq!(
            *policy,
            ConsumerPolicy {
                retries: 1,
                backoff_ms: 100,
                on_failure: OnFailure::Stop,
                ..ConsumerPolicy::default()
            },
            "unset keys take the defaults"
        );
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(3), Duration::from_millis(400));
        assert_eq!(policy.backoff(99), MAX_BACKOFF);

        let e = Project::parse_with_env("[consumers.x]\nretry = 1\n", Path::new("."), [])
            .expect_err("a typo is refused");
        assert!(e.to_string().contains("unknown field `retry`"), "{e}");
        let e = Project::parse_with_env("[consumers.x]\non-failure = \"drop\"\n", Path::new("."), [])
            .expect_err("only park or stop");
        assert!(e.to_string().contains("unknown variant `drop`"), "{e}");

        let vars = [("LOWSHELL_CONSUMERS__CUSTOMER_PROJECTOR__ON_FAILURE".to_owned(), "stop".to_owned())];
        let p = Project::parse_with_env(DEFAULT_PROJECT, Path::new("."), vars).expect("overridden");
        assert_eq!(p.consumers["customer-projector"].on_failure, OnFailure::Stop);
    }

    #[test]
    fn step_caps_and_allowed_origins_are_read_and_checked() {
        let p = Project::parse_with_env(DEFAULT_PROJECT, Path::new("projects"), []).expect("defaults");
        assert_eq!(p.limits().step, StepLimits::default());
        assert!(p.http.allowed_origins.iter().any(|o| o == "http://localhost:*"));

        let text = "[limits]\nlookups = 4\nfind-documents = 10\nstep-deadline-ms = 250\n\
                    [http]\nallowed-origins = [\"https://app.example.com\", \"http://localhost:*\"]\n";
        let vars = [("LOWSHELL_LIMITS__OPS".to_owned(), "7".to_owned())];
        let p = Project::parse_with_env(text, Path::new("."), vars).expect("caps");
        let step = p.limits().step;
        assert_eq!((step.lookups, step.find_documents, step.ops), (4, 10, 7));
        assert_eq!(step.deadline, Duration::from_millis(250));
        assert_eq!(p.http.allowed_origins.len(), 2);

        let e = Project::parse_with_env("[limits]\nlookups = 0\n", Path::new("."), []).expect_err("zero");
        assert!(e.to_string().contains("limits.lookups"), "{e}");
        let e = Project::parse_with_env(
            "[http]\nallowed-origins = [\"https://app.example.com/\"]\n",
            Path::new("."),
            [],
        )
        .expect_err("a path is not an origin");
        assert!(
            e.to_string().contains("http.allowed-origins: `https://app.example.com/` is not an origin"),
            "{e}"
        );
    }

    #[test]
    fn bad_overrides_and_bad_files_are_one_line_errors() {
        let e = Project::parse_with_env(
            DEFAULT_PROJECT,
            Path::new("."),
            [("LOWSHELL_ATTEMPTS".to_owned(), "many".to_owned())],
        )
        .expect_err("wrong type refused");
        let e = e.to_string();
        assert!(e.starts_with("LOWSHELL_ATTEMPTS=many: invalid type"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // Not a project key (another component's setting): left alone.
        let p = Project::parse_with_env(
            DEFAULT_PROJECT,
            Path::new("."),
            [("LOWSHELL_ADMIN_TOKEN".to_owned(), "secret".to_owned())],
        )
        .expect("other settings are not project keys");
        assert_eq!(p.name, "basic");

        let e = Project::parse_with_env("name = \"x\"\nattempts = \"many\"\n", Path::new("."), [])
            .expect_err("wrong type refused")
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        let e = Project::parse_with_env("name = \n", Path::new("."), []).expect_err("bad TOML").to_string();
        assert!(e.starts_with("line 1, column"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

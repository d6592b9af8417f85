//! Admin endpoints: list, deploy and roll back functions over HTTP; run a
//! candidate in shadow, then promote or drop it; list the parked events and
//! retry them.
//! Every request needs `Authorization: Bearer <token>`; without a configured
//! token the endpoints refuse everything. Tokens are compared in constant time.

use crate::backend::{Bus, BusError};
use crate::backend::{Parked, StoreError};
use crate::deploy::shadow::ShadowReport;
use crate::deploy::{DeployError, Deployer};
use crate::executor::{Executor, Retried, RetryError, Stopped};
use crate::runtime::Function;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use low_contract::FunctionKind;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest component accepted by `PUT /admin/functions/{name}`.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

#[derive(Clone)]
struct Admin {
    deployer: Deployer,
    executor: Arc<Executor>,
    bus: Arc<dyn Bus>,
    /// sha256 of the token: compared in constant time whatever its length.
    token: Option<[u8; 32]>,
}

/// A loaded function, as the admin endpoints and `host functions` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FunctionInfo {
    pub name: String,
    pub kind: FunctionKind,
    pub version: String,
    pub loaded_at: String,
    pub inputs: Vec<String>,
    pub output: Option<String>,
    /// The version a rollback would restore.
    pub previous_version: Option<String>,
}

impl FunctionInfo {
    pub fn of(function: &Function, previous: Option<&Function>) -> Self {
        Self {
            name: function.name().into(),
            kind: function.meta.kind,
            version: function.version.0.clone(),
            loaded_at: humantime::format_rfc3339_millis(function.loaded_at).to_string(),
            inputs: function.meta.inputs.clone(),
            output: function.meta.output.clone(),
            previous_version: previous.map(|p| p.version.0.clone()),
        }
    }
}

/// The outcome of a deploy or rollback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Deployed {
    pub name: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub changed: bool,
}

/// `GET /admin/parked`: the events parked (from the store: every shell's)
/// and the consumers of this shell stopped at a failing event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ParkedReport {
    pub parked: Vec<Parked>,
    pub stopped: Vec<Stopped>,
}

/// The outcome of `POST /admin/functions/{name}/retry`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RetryReport {
    pub function: String,
    /// Each event tried, oldest first.
    pub retried: Vec<Retried>,
}

pub fn router(deployer: Deployer, executor: Arc<Executor>, bus: Arc<dyn Bus>, token: Option<&str>) -> Router {
    let admin = Admin { deployer, executor, bus, token: token.map(|t| Sha256::digest(t.as_bytes()).into()) };
    Router::new()
        .route("/admin/functions", get(list))
        .route("/admin/functions/{name}", put(deploy).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)))
        .route("/admin/functions/{name}/rollback", post(rollback))
        .route("/admin/functions/{name}/shadow", get(shadow_report).delete(shadow_abort))
        .route("/admin/functions/{name}/promote", post(promote))
        .route("/admin/functions/{name}/retry", post(retry))
        .route("/admin/parked", get(parked))
        .route("/admin/consumers", get(consumers))
        .route("/admin/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn authorize(State(admin): State<Admin>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let Some(expected) = admin.token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "admin endpoints are disabled: no admin token is configured (set LOWSHELL_ADMIN_TOKEN)",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| <[u8; 32]>::from(Sha256::digest(t.trim().as_bytes())));
    match given {
        Some(given) if bool::from(given.ct_eq(&expected)) => next.run(request).await,
        _ => {
            let mut response =
                error(StatusCode::UNAUTHORIZED, "a valid `Authorization: Bearer <token>` is required");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
    }
}

async fn list(State(admin): State<Admin>) -> Json<Vec<FunctionInfo>> {
    let registry = admin.deployer.registry();
    let functions = registry.current();
    Json(functions.iter().map(|f| FunctionInfo::of(f, registry.previous(f.name()).as_deref())).collect())
}

#[derive(Deserialize)]
struct DeployQuery {
    #[serde(default)]
    force: bool,
    /// Run it in shadow beside the live version instead of swapping it in.
    #[serde(default)]
    shadow: bool,
}

async fn deploy(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Query(query): Query<DeployQuery>,
    body: Bytes,
) -> Response {
    if query.shadow {
        if query.force {
            return error(
                StatusCode::BAD_REQUEST,
                "a shadow cannot be forced: the candidate runs on the live version's inputs",
            );
        }
        return shadow(&admin, &name, &body).await;
    }
    deployed(admin.deployer.deploy(&name, &body, query.force).await)
}

/// The answer to a deploy (or a promotion).
fn deployed(result: Result<crate::registry::Swapped, DeployError>) -> Response {
    match result {
        Ok(swapped) => Json(Deployed {
            changed: swapped.old.as_ref().is_none_or(|old| old.version != swapped.new.version),
            name: swapped.name,
            version: swapped.new.version.0.clone(),
            previous_version: swapped.old.map(|f| f.version.0.clone()),
        })
        .into_response(),
        Err(e @ DeployError::Record(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// Starts a shadow: the candidate is checked as for a deploy, then runs
/// beside the live version.
async fn shadow(admin: &Admin, name: &str, bytes: &[u8]) -> Response {
    match admin.deployer.candidate(name, bytes).await {
        Ok(candidate) => Json(admin.executor.shadows().start(candidate, bytes)).into_response(),
        Err(e @ DeployError::NoSuchFunction(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => {
            tracing::warn!(function = name, "shadow refused: {e}");
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
    }
}

fn no_shadow(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("`{name}` has no candidate in shadow in this shell"))
}

async fn shadow_report(State(admin): State<Admin>, Path(name): Path<String>) -> Response {
    match admin.executor.shadows().report(&name) {
        Some(report) => Json(report).into_response(),
        None => no_shadow(&name),
    }
}

/// Drops the candidate; its final report.
async fn shadow_abort(State(admin): State<Admin>, Path(name): Path<String>) -> Response {
    match admin.executor.shadows().stop(&name, None) {
        Some(report) => Json::<ShadowReport>(report).into_response(),
        None => no_shadow(&name),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteQuery {
    #[serde(default)]
    force: bool,
}

/// Deploys the candidate (the usual deploy, with its checks), then drops
/// its shadow.
async fn promote(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Query(query): Query<PromoteQuery>,
) -> Response {
    let shadows = admin.executor.shadows();
    let Some((version, bytes)) = shadows.candidate(&name) else { return no_shadow(&name) };
    let result = admin.deployer.deploy(&name, &bytes, query.force).await;
    if result.is_ok() {
        // Unless another candidate replaced it meanwhile.
        shadows.stop(&name, Some(&version));
    }
    deployed(result)
}

async fn rollback(State(admin): State<Admin>, Path(name): Path<String>) -> Response {
    match admin.deployer.rollback(&name).await {
        Ok(swapped) => Json(Deployed {
            changed: true,
            name: swapped.name,
            version: swapped.new.version.0.clone(),
            previous_version: swapped.old.map(|f| f.version.0.clone()),
        })
        .into_response(),
        Err(e @ DeployError::NoSuchFunction(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ DeployError::Registry(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ DeployError::Record(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParkedQuery {
    function: Option<String>,
}

fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Unavailable(_) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn parked(State(admin): State<Admin>, Query(query): Query<ParkedQuery>) -> Response {
    let function = query.function.as_deref();
    match admin.executor.store().parked(function).await {
        Ok(parked) => {
            let stopped =
                admin.executor.stopped().into_iter().filter(|s| function.is_none_or(|f| s.function == f));
            Json(ParkedReport { parked, stopped: stopped.collect() }).into_response()
        }
        Err(e) => store_error(&e),
    }
}

/// Who processes each consumer (a function, or one partition of it) now,
/// across the shells on the database. Empty on the memory backend, where
/// this shell runs every consumer.
async fn consumers(State(admin): State<Admin>) -> Response {
    match admin.bus.holders().await {
        Ok(holders) => Json(holders).into_response(),
        Err(e @ BusError::Unavailable(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Most entries `/admin/audit` returns at once.
const MAX_AUDIT: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    subject: Option<String>,
    limit: Option<usize>,
}

/// One command or event of the audit trail: what, and who caused it.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct AuditEntry {
    position: u64,
    topic: String,
    kind: String,
    id: String,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    /// The verified subject of the command it descends from; none when
    /// the shell checked no identity.
    subject: Option<String>,
    /// Who emitted it; none for commands.
    function: Option<String>,
    at_ms: u64,
}

/// `GET /admin/audit?subject=ada&limit=100`: who caused what, newest first
/// (the memory backend keeps the latest 10 000; Postgres, the whole log).
async fn audit(State(admin): State<Admin>, Query(query): Query<AuditQuery>) -> Response {
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_AUDIT {
        return error(StatusCode::BAD_REQUEST, format!("`limit` must be between 1 and {MAX_AUDIT}"));
    }
    match admin.bus.audit(query.subject.as_deref(), limit).await {
        Ok(trail) => Json(
            trail
                .into_iter()
                .map(|d| (d.position, std::sync::Arc::unwrap_or_clone(d.event)))
                .map(|(position, event)| AuditEntry {
                    position,
                    subject: event.message.principal.map(|p| p.subject),
                    topic: event.topic,
                    kind: event.message.kind,
                    id: event.message.id,
                    correlation_id: event.message.correlation_id,
                    causation_id: event.message.causation_id,
                    function: event.function,
                    at_ms: event.at_ms,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e @ BusError::Unavailable(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryQuery {
    position: Option<u64>,
}

async fn retry(
    State(admin): State<Admin>,
    Path(name): Path<String>,
    Query(query): Query<RetryQuery>,
) -> Response {
    match admin.executor.retry(&name, query.position).await {
        Ok(retried) => Json(RetryReport { function: name, retried }).into_response(),
        Err(e @ (RetryError::UnknownFunction(_) | RetryError::NotParked { .. })) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(RetryError::Store(e)) => store_error(&e),
    }
}

//! Routes, following the GraphQL-over-HTTP specification:
//!
//! - `POST /` and `POST /graphql`: GraphQL (`application/json` bodies).
//! - `GET /` and `GET /graphql`: a query (not a mutation) in the `query`
//!   parameter, or GraphiQL for a browser.
//! - `GET /ws`: subscriptions over WebSocket (`graphql-transport-ws`, the
//!   graphql-ws protocol, and the legacy `graphql-ws`).
//! - `GET /healthz` (process up), `GET /readyz` (ready to serve),
//!   `GET /metrics` (Prometheus).
//!
//! A request's answer depends on its `Accept`: with
//! `application/graphql-response+json`, a request that cannot be executed
//! (bad document, failed validation) is a 400 without `data`; with
//! `application/json` (or no `Accept`) every well-formed request is a 200.
//! Malformed requests (bad JSON, no `query`, wrong parameter types) are 400,
//! too-large bodies 413, wrong media types 415, slow requests 408 — always
//! with a JSON `errors` body, never a 500.
//!
//! Browsers: a GraphQL request (or WebSocket upgrade) carrying an `Origin`
//! that is neither the shell's own nor in `http.allowed-origins` is refused
//! with 403 before it runs, so a page of another site cannot use the shell
//! through its visitors' browsers; allowed cross origins get CORS headers.
//! Requests without an `Origin` (curl, servers) are not a browser's and pass.

use super::Graphql;
use super::schema::IdempotencyKey;
use crate::readiness::Readiness;
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql::parser::types::OperationType;
use async_graphql::{Request as GqlRequest, Response as GqlResponse, Variables};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The WebSocket endpoint for subscriptions.
pub const WS_PATH: &str = "/ws";
/// The GraphiQL version whose assets the page loads.
pub const GRAPHIQL_VERSION: &str = "3.9.0";

const JSON: &str = "application/json";
const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// HTTP limits.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Longest a GraphQL request may take; then 408.
    pub request_timeout: Duration,
    /// Browser origins allowed besides the shell's own.
    pub allowed_origins: AllowedOrigins,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(15),
            allowed_origins: AllowedOrigins::loopback(),
        }
    }
}

/// The browser origins that may use the GraphQL endpoints, besides the
/// shell's own (an `Origin` naming the request's `Host`).
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    any: bool,
    patterns: Vec<OriginPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    host: String,
    port: PortPattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    /// No port given: the scheme's default port.
    Default,
    Exact(u16),
    /// `:*`: any port, the default one included.
    Any,
}

/// `host[:port]` of an origin or a `Host` header: the host lower-cased,
/// the port as written (`*` allowed when `wildcard`).
fn authority(text: &str, wildcard: bool) -> Option<(String, PortPattern)> {
    let (host, port) = match text.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let port = if after.is_empty() { None } else { Some(after.strip_prefix(':')?) };
            if inside.is_empty() || !inside.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
                return None;
            }
            (format!("[{inside}]"), port)
        }
        None => {
            let (host, port) = match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            };
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || "/?#@[]:".contains(c)) {
                return None;
            }
            (host.to_owned(), port)
        }
    };
    let port = match port {
        None => PortPattern::Default,
        Some("*") if wildcard => PortPattern::Any,
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            PortPattern::Exact(port.parse().ok()?)
        }
        Some(_) => return None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// `scheme://host[:port]` (with `:*` when `wildcard`), nothing after it.
fn parse_origin(text: &str, wildcard: bool) -> Option<OriginPattern> {
    let (scheme, rest) = text.trim().split_once("://")?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
        return None;
    }
    let (host, port) = authority(rest, wildcard)?;
    Some(OriginPattern { scheme: scheme.to_ascii_lowercase(), host, port })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// The port a request goes to: the one given, else the scheme's default.
fn effective_port(scheme: &str, port: PortPattern) -> Option<u16> {
    match port {
        PortPattern::Exact(port) => Some(port),
        _ => default_port(scheme),
    }
}

impl AllowedOrigins {
    /// From `http.allowed-origins` entries: `scheme://host`,
    /// `scheme://host:port`, `scheme://host:*` (any port) or `*` (any origin).
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut allowed = Self::default();
        for entry in entries {
            if entry.trim() == "*" {
                allowed.any = true;
                continue;
            }
            let pattern = parse_origin(entry, true).ok_or_else(|| {
                format!(
                    "`{entry}` is not an origin: write `scheme://host`, `scheme://host:port`, \
                     `scheme://host:*` (any port) or `*`, without a path"
                )
            })?;
            allowed.patterns.push(pattern);
        }
        Ok(allowed)
    }

    /// The default: pages served from this machine (localhost, 127.0.0.1,
    /// [::1], any port, http or https).
    pub fn loopback() -> Self {
        let entries: Vec<String> = crate::config::LOOPBACK_ORIGINS.iter().map(|&o| o.to_owned()).collect();
        Self::new(&entries).unwrap_or_default()
    }

    /// Whether a browser request from `origin` may proceed; `host` is the
    /// request's `Host` (a page of the shell's own origin always may).
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let Some(origin) = parse_origin(origin, false) else { return false };
        let port = effective_port(&origin.scheme, origin.port);
        let own = host.and_then(|h| authority(h.trim(), false)).is_some_and(|(host, host_port)| {
            host == origin.host && effective_port(&origin.scheme, host_port) == port
        });
        own || self.patterns.iter().any(|p| {
            p.scheme == origin.scheme
                && p.host == origin.host
                && (p.port == PortPattern::Any || effective_port(&p.scheme, p.port) == port)
        })
    }
}

/// The host a request was sent to: `Host`, or the URI's authority (HTTP/2).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Refuses, with 403, a browser request from an origin that is not allowed,
/// before anything else sees it (WebSocket upgrades and CORS preflights included).
async fn check_origin(State(origins): State<Arc<AllowedOrigins>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("");
        if !origins.allows(text, request_host(headers, request.uri())) {
            tracing::info!(
                origin = text,
                path = request.uri().path(),
                "refused a browser request from an origin not in http.allowed-origins"
            );
            return refuse(
                StatusCode::FORBIDDEN,
                Media::Json,
                format!("pages of origin `{text}` may not use this shell (see `http.allowed-origins`)"),
            );
        }
    }
    next.run(request).await
}

/// CORS for the allowed cross origins: what they may send, for how long a
/// preflight holds. (Disallowed origins never get here.)
fn cors(origins: Arc<AllowedOrigins>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            origin.to_str().is_ok_and(|o| origins.allows(o, request_host(&parts.headers, &parts.uri)))
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::ACCEPT, HeaderName::from_static("idempotency-key")])
        .max_age(Duration::from_secs(600))
}

struct App {
    graphql: Arc<Graphql>,
    readiness: Readiness,
    options: HttpOptions,
}

pub fn router(graphql: Arc<Graphql>, readiness: Readiness, options: HttpOptions) -> Router {
    let origins = Arc::new(options.allowed_origins.clone());
    let app = Arc::new(App { graphql, readiness, options });
    // What browsers can reach: checked for the origin (outermost), then CORS.
    let graphql_routes = Router::new()
        .route("/", get(get_graphql).post(post_graphql))
        .route("/graphql", get(get_graphql).post(post_graphql))
        .route(WS_PATH, get(websocket))
        .layer(cors(Arc::clone(&origins)))
        .layer(middleware::from_fn_with_state(origins, check_origin));
    Router::new()
        .merge(graphql_routes)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

/// Which media type the answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Json,
    GraphqlResponse,
}

impl Media {
    fn content_type(self) -> &'static str {
        match self {
            Media::Json => "application/json; charset=utf-8",
            Media::GraphqlResponse => "application/graphql-response+json; charset=utf-8",
        }
    }
}

/// The first acceptable media type in `Accept`; `application/json` when
/// there is none (legacy clients); `None` when nothing offered is acceptable.
fn negotiate(headers: &HeaderMap) -> Option<Media> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(Media::Json);
    };
    if accept.trim().is_empty() {
        return Some(Media::Json);
    }
    accept.split(',').find_map(|item| {
        let media = item.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match media.as_str() {
            GRAPHQL_RESPONSE => Some(Media::GraphqlResponse),
            JSON | "application/*" | "*/*" => Some(Media::Json),
            _ => None,
        }
    })
}

/// A response whose request was refused before execution.
fn refuse(status: StatusCode, media: Media, message: impl Into<String>) -> Response {
    crate::metrics::request(if status == StatusCode::REQUEST_TIMEOUT { "timeout" } else { "bad_request" });
    let body = json!({ "errors": [{ "message": message.into() }] });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media.content_type()));
    response
}

/// The GraphQL response as HTTP: with `application/graphql-response+json` a
/// request error (one that stopped the request before execution) is a 400
/// without `data`.
fn answer(media: Media, response: GqlResponse) -> Response {
    let request_error =
        !response.errors.is_empty() && !response.http_headers.contains_key(super::schema::EXECUTED);
    crate::metrics::request(if response.errors.is_empty() { "ok" } else { "graphql_error" });
    let status = if request_error && media == Media::GraphqlResponse {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut body = match serde_json::to_value(&response) {
        Ok(body) => body,
        Err(e) => json!({ "errors": [{ "message": format!("cannot serialise the response: {e}") }] }),
    };
    if request_error && let Some(body) = body.as_object_mut() {
        body.remove("data");
    }
    let mut http = (status, body.to_string()).into_response();
    http.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media.content_type()));
    http
}

/// Whether the response refuses a reused idempotency key.
fn reused_key(response: &GqlResponse) -> bool {
    response.errors.iter().any(|e| {
        e.extensions.as_ref().and_then(|x| x.get("code"))
            == Some(&async_graphql::Value::from(super::schema::code::IDEMPOTENCY_KEY_REUSED))
    })
}

/// The request's parameters, checked as the spec asks.
fn request_from(params: &Map<String, Value>) -> Result<GqlRequest, String> {
    let query = match params.get("query") {
        Some(Value::String(query)) => query.clone(),
        None | Some(Value::Null) => return Err("the request has no `query`".into()),
        Some(_) => return Err("`query` must be a string".into()),
    };
    let mut request = GqlRequest::new(query);
    match params.get("operationName") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => request = request.operation_name(name.clone()),
        Some(_) => return Err("`operationName` must be a string".into()),
    }
    match params.get("variables") {
        None | Some(Value::Null) => {}
        Some(variables @ Value::Object(_)) => {
            request = request.variables(Variables::from_json(variables.clone()))
        }
        Some(_) => return Err("`variables` must be an object (a map of variable names to values)".into()),
    }
    match params.get("extensions") {
        None | Some(Value::Null) => {}
        Some(Value::Object(extensions)) => {
            for (name, value) in extensions {
                if let Ok(value) = async_graphql::Value::from_json(value.clone()) {
                    request.extensions.insert(name.clone(), value);
                }
            }
        }
        Some(_) => return Err("`extensions` must be an object".into()),
    }
    Ok(request)
}

/// The type of the operation the request would run, when its document parses.
fn operation_type(request: &GqlRequest) -> Option<OperationType> {
    let document = async_graphql::parser::parse_query(&request.query).ok()?;
    let mut operations = document.operations.iter();
    match &request.operation_name {
        Some(name) => operations.find(|(n, _)| n.is_some_and(|n| n.as_str() == name)),
        None => operations.next(),
    }
    .map(|(_, op)| op.node.ty)
}

/// The `Idempotency-Key` header's key. The draft
/// (draft-ietf-httpapi-idempotency-key-header) makes it a Structured Field
/// string, `"…"`; a bare value is taken as it is. `Err` for a malformed one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let value = value.to_str().map_err(|_| "the Idempotency-Key header must be ASCII".to_owned())?.trim();
    let Some(quoted) = value.strip_prefix('"') else {
        return Ok(Some(value.to_owned()).filter(|k| !k.is_empty()));
    };
    let malformed = || format!("the Idempotency-Key header is not a valid string: {value}");
    let mut key = String::new();
    let mut chars = quoted.chars();
    loop {
        match chars.next() {
            Some('"') if chars.as_str().is_empty() => break,
            Some('\\') => match chars.next() {
                Some(c @ ('"' | '\\')) => key.push(c),
                _ => return Err(malformed()),
            },
            Some(c) if c != '"' && (' '..='~').contains(&c) => key.push(c),
            _ => return Err(malformed()),
        }
    }
    if key.is_empty() {
        return Err("the Idempotency-Key header is empty".into());
    }
    Ok(Some(key))
}

/// How many fields the request's mutation selects at its root (through
/// fragments; `__typename` aside); `None` when the operation to run is not
/// a mutation or does not parse (execution reports that).
fn mutation_fields(request: &GqlRequest) -> Option<usize> {
    use async_graphql::parser::types::{Selection, SelectionSet};
    let document = async_graphql::parser::parse_query(&request.query).ok()?;
    let mut operations = document.operations.iter();
    let operation = match &request.operation_name {
        Some(name) => operations.find(|(n, _)| n.is_some_and(|n| n.as_str() == name)),
        None => operations.next(),
    }?
    .1;
    if operation.node.ty != OperationType::Mutation {
        return None;
    }
    // Fields under each fragment are counted once per spread; a fragment
    // already being expanded is not entered again (a cycle, refused by validation).
    fn count(
        set: &SelectionSet,
        document: &async_graphql::parser::types::ExecutableDocument,
        open: &mut Vec<String>,
    ) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(f) => usize::from(!f.node.name.node.starts_with("__")),
                Selection::InlineFragment(f) => count(&f.node.selection_set.node, document, open),
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    match document.fragments.get(&s.node.fragment_name.node) {
                        Some(fragment) if !open.iter().any(|o| o == name) => {
                            open.push(name.to_owned());
                            let n = count(&fragment.node.selection_set.node, document, open);
                            open.pop();
                            n
                        }
                        _ => 0,
                    }
                }
            })
            .sum()
    }
    Some(count(&operation.node.selection_set.node, &document, &mut vec![]))
}

/// A response to an `Idempotency-Key` request refused for its key: `status`
/// with the GraphQL errors (codes included) and no `data`.
fn refuse_key(status: StatusCode, media: Media, errors: Value) -> Response {
    crate::metrics::request("bad_request");
    let mut response = (status, json!({ "errors": errors }).to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media.content_type()));
    response
}

async fn execute(app: &App, headers: &HeaderMap, media: Media, mut request: GqlRequest) -> Response {
    // `Idempotency-Key` names the command of the request's one mutation
    // (several would all be one command: refused before anything runs).
    let key = match idempotency_key(headers) {
        Ok(key) => key,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, media, message),
    };
    if let Some(key) = &key {
        if mutation_fields(&request).is_some_and(|n| n > 1) {
            let message = "an Idempotency-Key names one command: send one mutation per request with it \
                           (or give each mutation its own `commandId`)";
            let errors = json!([{ "message": message, "extensions": { "code": super::schema::code::IDEMPOTENCY_KEY_MULTIPLE_MUTATIONS } }]);
            return refuse_key(StatusCode::BAD_REQUEST, media, errors);
        }
        request = request.data(IdempotencyKey(key.clone()));
    }
    let schema = app.graphql.schema();
    match tokio::time::timeout(app.options.request_timeout, schema.execute(request)).await {
        // The key reused for another payload: 422, as the draft says.
        Ok(response) if key.is_some() && reused_key(&response) => {
            let errors = serde_json::to_value(&response.errors).unwrap_or(Value::Null);
            refuse_key(StatusCode::UNPROCESSABLE_ENTITY, media, errors)
        }
        Ok(response) => answer(media, response),
        Err(_) => refuse(
            StatusCode::REQUEST_TIMEOUT,
            media,
            format!("the request took longer than {:?}", app.options.request_timeout),
        ),
    }
}

async fn post_graphql(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let Some(media) = negotiate(&headers) else {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            Media::Json,
            format!("the response can be {GRAPHQL_RESPONSE} or {JSON}"),
        );
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut parts = content_type.split(';').map(str::trim);
    let essence = parts.next().unwrap_or("").to_ascii_lowercase();
    if essence != JSON {
        let message = if content_type.is_empty() {
            format!("a POST request needs `Content-Type: {JSON}`")
        } else {
            format!("unsupported media type `{content_type}`: send {JSON}")
        };
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, media, message);
    }
    let charset = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase());
    if charset.as_deref().is_some_and(|c| c != "utf-8" && c != "utf8") {
        return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, media, "only utf-8 request bodies are supported");
    }
    let limit = app.options.max_body_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            media,
            format!("the request body is over {limit} bytes"),
        );
    }
    let read = tokio::time::timeout(app.options.request_timeout, Limited::new(body, limit).collect()).await;
    let bytes: Bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                media,
                format!("the request body is over {limit} bytes"),
            );
        }
        Ok(Err(e)) => {
            return refuse(StatusCode::BAD_REQUEST, media, format!("cannot read the request body: {e}"));
        }
        Err(_) => {
            return refuse(StatusCode::REQUEST_TIMEOUT, media, "the request body took too long to arrive");
        }
    };
    let params = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(params)) => params,
        Ok(Value::Array(_)) => {
            return refuse(StatusCode::BAD_REQUEST, media, "batched requests are not supported");
        }
        Ok(_) => return refuse(StatusCode::BAD_REQUEST, media, "the request body must be a JSON object"),
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                media,
                format!("the request body is not valid JSON: {e}"),
            );
        }
    };
    match request_from(&params) {
        Ok(request) => execute(&app, &headers, media, request).await,
        Err(message) => refuse(StatusCode::BAD_REQUEST, media, message),
    }
}

/// Whether a browser is asking for a page (GraphiQL) rather than data.
fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.contains("text/html") || !(accept.contains(JSON) || accept.contains(GRAPHQL_RESPONSE))
}

fn graphiql(path: &str) -> Response {
    Html(
        GraphiQLSource::build()
            .endpoint(path)
            .subscription_endpoint(WS_PATH)
            .version(GRAPHIQL_VERSION)
            .title("lowshell GraphiQL")
            .finish(),
    )
    .into_response()
}

/// A GraphQL GET request when there is a `query` parameter, else GraphiQL
/// for a browser (or 400 for a client that asked for JSON).
async fn get_graphql(State(app): State<Arc<App>>, method: Method, headers: HeaderMap, uri: Uri) -> Response {
    let Some(media) = negotiate(&headers).or_else(|| wants_html(&headers).then_some(Media::Json)) else {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            Media::Json,
            format!("the response can be {GRAPHQL_RESPONSE} or {JSON}"),
        );
    };
    let raw: HashMap<String, String> = match Query::try_from_uri(&uri) {
        Ok(Query(raw)) => raw,
        Err(e) => {
            return refuse(StatusCode::BAD_REQUEST, media, format!("cannot read the query string: {e}"));
        }
    };
    if !raw.contains_key("query") {
        if method == Method::GET && wants_html(&headers) {
            return graphiql(uri.path());
        }
        return refuse(StatusCode::BAD_REQUEST, media, "the request has no `query` parameter");
    }
    let mut params = Map::new();
    for (name, value) in raw {
        let value = match name.as_str() {
            "variables" | "extensions" => match serde_json::from_str::<Value>(&value) {
                Ok(value) => value,
                Err(e) => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        media,
                        format!("`{name}` is not valid JSON: {e}"),
                    );
                }
            },
            _ => Value::String(value),
        };
        params.insert(name, value);
    }
    let request = match request_from(&params) {
        Ok(request) => request,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, media, message),
    };
    if operation_type(&request).is_some_and(|ty| ty != OperationType::Query) {
        let mut response = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            media,
            "only queries can be sent with GET; send mutations and subscriptions with POST (or over /ws)",
        );
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    execute(&app, &headers, media, request).await
}

/// Subscriptions over WebSocket, with the schema current when the connection opens.
async fn websocket(
    State(app): State<Arc<App>>,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let schema = app.graphql.schema();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| GraphQLWebSocket::new(stream, (*schema).clone(), protocol).serve())
}

/// 200 `ready` (then any notes: parked events, stopped consumers), or 503 with every failing check.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.readiness.run().await {
        Ok(()) => {
            // Worth an operator's eye, but no reason to stop sending traffic.
            let notes = app.readiness.notes().await;
            let body = notes.iter().fold(String::from("ready"), |body, note| body + "; " + note);
            (StatusCode::OK, body + "\n").into_response()
        }
        Err(failed) => {
            tracing::debug!(?failed, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", failed.join("; "))).into_response()
        }
    }
}

async fn metrics() -> Response {
    match crate::metrics::render() {
        Some(text) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics are disabled in this process\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn accept_is_negotiated() {
        assert_eq!(negotiate(&HeaderMap::new()), Some(Media::Json));
        assert_eq!(negotiate(&accept("*/*")), Some(Media::Json));
        assert_eq!(negotiate(&accept(GRAPHQL_RESPONSE)), Some(Media::GraphqlResponse));
        assert_eq!(
            negotiate(&accept("application/graphql-response+json, application/json;q=0.9")),
            Some(Media::GraphqlResponse)
        );
        assert_eq!(negotiate(&accept("application/json; charset=utf-8")), Some(Media::Json));
        assert_eq!(negotiate(&accept("text/html")), None);
    }

    #[test]
    fn parameters_are_checked() {
        let params = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(request_from(&params(json!({ "query": "{ a }" }))).is_ok());
        assert!(
            request_from(&params(json!({ "query": "{ a }", "variables": null, "operationName": null })))
                .is_ok()
        );
        assert!(request_from(&params(json!({}))).is_err());
        assert!(request_from(&params(json!({ "query": 1 }))).is_err());
        assert!(request_from(&params(json!({ "query": "{ a }", "variables": [] }))).is_err());
        assert!(request_from(&params(json!({ "query": "{ a }", "operationName": 2 }))).is_err());
        assert!(request_from(&params(json!({ "query": "{ a }", "extensions": "x" }))).is_err());
    }

    #[test]
    fn origins_are_matched_by_scheme_host_and_port() {
        let allowed = |entries: &[&str]| {
            AllowedOrigins::new(&entries.iter().map(|&e| e.to_owned()).collect::<Vec<_>>()).expect("valid")
        };
        let loopback = AllowedOrigins::loopback();
        for origin in
            ["http://localhost:3000", "http://LOCALHOST", "https://127.0.0.1:8443", "http://[::1]:80"]
        {
            assert!(loopback.allows(origin, None), "{origin}");
        }
        for origin in ["http://evil.example", "http://localhost.evil.example", "null", "", "http://127.0.0.2"]
        {
            assert!(!loopback.allows(origin, None), "{origin}");
        }
        // The shell's own origin: the one its `Host` names (default ports included).
        let none = allowed(&[]);
        assert!(none.allows("http://shell.example:8080", Some("shell.example:8080")));
        assert!(none.allows("https://shell.example", Some("shell.example")));
        assert!(none.allows("http://shell.example", Some("shell.example:80")));
        assert!(!none.allows("http://shell.example:8081", Some("shell.example:8080")));
        assert!(!none.allows("http://evil.example", Some("shell.example")));
        assert!(!none.allows("http://localhost:3000", Some("shell.example")));

        let app = allowed(&["https://app.example.com", "http://dev.example:*"]);
        assert!(app.allows("https://app.example.com", None));
        assert!(app.allows("https://app.example.com:443", None));
        assert!(!app.allows("https://app.example.com:8443", None));
        assert!(!app.allows("http://app.example.com", None));
        assert!(app.allows("http://dev.example:1234", None));
        assert!(allowed(&["*"]).allows("http://anything.example", None));

        for bad in ["app.example.com", "https://app.example.com/", "https://", "https://a:b", "https://[::1"]
        {
            assert!(AllowedOrigins::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn mutations_are_recognised() {
        let op = |q: &str, name: Option<&str>| {
            let mut r = GqlRequest::new(q);
            r.operation_name = name.map(str::to_owned);
            operation_type(&r)
        };
        assert_eq!(op("{ a }", None), Some(OperationType::Query));
        assert_eq!(op("mutation { a }", None), Some(OperationType::Mutation));
        assert_eq!(op("query Q { a } mutation M { b }", Some("M")), Some(OperationType::Mutation));
        assert_eq!(op("{", None), None);
    }
}

//! GraphQL over HTTP, following the GraphQL-over-HTTP specification:
//!
//! - `POST /` and `POST /graphql`: GraphQL (`application/json` bodies).
//! - `GET /` and `GET /graphql`: a query (not a mutation) in the `query`
//!   parameter, or GraphiQL for a browser.
//! - `GET /ws`: subscriptions over WebSocket (`graphql-transport-ws`, the
//!   graphql-ws protocol, and the legacy `graphql-ws`).
//!
//! A request's answer depends on its `Accept`: with
//! `application/graphql-response+json`, a request that cannot be executed
//! (bad document, failed validation) is a 400 without `data`; with
//! `application/json` (or no `Accept`) every well-formed request is a 200.
//! Malformed requests (bad JSON, no `query`, wrong parameter types) are 400,
//! too-large bodies 413, wrong media types 415, slow requests 408 — always
//! with a JSON `errors` body, never a 500.

use super::HttpOptions;
use super::auth::Caller;
use super::origins::{check_origin, cors};
use crate::graphql::schema::IdempotencyKey;
use crate::graphql::schema::code::UNAUTHENTICATED;
use crate::graphql::{Graphql, Parsed, fast};
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::parser::Positioned;
use async_graphql::parser::types::{ExecutableDocument, OperationDefinition, OperationType};
use async_graphql::{Request as GqlRequest, Response as GqlResponse, Variables};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The WebSocket endpoint for subscriptions.
pub const WS_PATH: &str = "/ws";
/// The GraphiQL version the page uses; its files are embedded (see [`super::assets`]).
pub use super::assets::GRAPHIQL_VERSION;

const JSON: &str = "application/json";
const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

struct App {
    graphql: Arc<Graphql>,
    options: HttpOptions,
}

/// The GraphQL routes. What browsers can reach: checked for the origin
/// (outermost), then CORS.
pub fn routes(graphql: Arc<Graphql>, options: HttpOptions) -> Router {
    let origins = Arc::new(options.allowed_origins.clone());
    let app = Arc::new(App { graphql, options });
    Router::new()
        .route("/", get(get_graphql).post(post_graphql))
        .route("/graphql", get(get_graphql).post(post_graphql))
        .route(WS_PATH, get(websocket))
        .with_state(app)
        .route(&format!("{}/{{name}}", super::assets::ASSETS_PATH), get(super::assets::asset))
        .layer(cors(Arc::clone(&origins)))
        .layer(middleware::from_fn_with_state(origins, check_origin))
}

/// Which media type the answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Media {
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

/// A request refused for who sent it (401): no token where one is needed,
/// or one that proves nothing. Nothing ran.
pub(super) fn unauthorized(media: Media, message: impl Into<String>) -> Response {
    crate::metrics::request("unauthorized");
    let message = message.into();
    let body = json!({ "errors": [{ "message": message, "extensions": { "code": UNAUTHENTICATED } }] });
    let mut response = (StatusCode::UNAUTHORIZED, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media.content_type()));
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// A response whose request was refused before execution.
pub(super) fn refuse(status: StatusCode, media: Media, message: impl Into<String>) -> Response {
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
        !response.errors.is_empty() && !response.http_headers.contains_key(crate::graphql::schema::EXECUTED);
    crate::metrics::request(if response.errors.is_empty() { "ok" } else { "graphql_error" });
    let status = if request_error && media == Media::GraphqlResponse {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let unserialisable = |e: serde_json::Error| json!({ "errors": [{ "message": format!("cannot serialise the response: {e}") }] });
    // Written straight to bytes; only a request error's body is edited first.
    let body = if request_error {
        let mut body = serde_json::to_value(&response).unwrap_or_else(unserialisable);
        if let Some(body) = body.as_object_mut() {
            body.remove("data");
        }
        body.to_string().into_bytes()
    } else {
        serde_json::to_vec(&response).unwrap_or_else(|e| unserialisable(e).to_string().into_bytes())
    };
    let mut http = (status, body).into_response();
    http.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media.content_type()));
    http
}

/// Whether the response refuses a reused idempotency key.
fn reused_key(response: &GqlResponse) -> bool {
    response.errors.iter().any(|e| {
        e.extensions.as_ref().and_then(|x| x.get("code"))
            == Some(&async_graphql::Value::from(crate::graphql::schema::code::IDEMPOTENCY_KEY_REUSED))
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

/// The operation `request` runs in `document` (its query, parsed).
fn operation<'d>(
    request: &GqlRequest,
    document: &'d ExecutableDocument,
) -> Option<&'d Positioned<OperationDefinition>> {
    let mut operations = document.operations.iter();
    match &request.operation_name {
        Some(name) => operations.find(|(n, _)| n.is_some_and(|n| n.as_str() == name)),
        None => operations.next(),
    }
    .map(|(_, op)| op)
}

/// The type of the operation the request would run, when its document parses.
fn operation_type(request: &GqlRequest, document: Option<&ExecutableDocument>) -> Option<OperationType> {
    operation(request, document?).map(|op| op.node.ty)
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
fn mutation_fields(request: &GqlRequest, document: Option<&ExecutableDocument>) -> Option<usize> {
    use async_graphql::parser::types::{Selection, SelectionSet};
    let document = document?;
    let operation = operation(request, document)?;
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
    Some(count(&operation.node.selection_set.node, document, &mut vec![]))
}

/// A response to an `Idempotency-Key` request refused for its key: `status`
/// with the GraphQL errors (codes included) and no `data`.
fn refuse_key(status: StatusCode, media: Media, errors: Value) -> Response {
    crate::metrics::request("bad_request");
    let mut response = (status, json!({ "errors": errors }).to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(media.content_type()));
    response
}

/// Runs `request`; `document` is its query parsed, `None` when it does not
/// parse (execution then reports why).
async fn execute(
    app: &App,
    headers: &HeaderMap,
    media: Media,
    mut request: GqlRequest,
    parsed: Option<Parsed>,
) -> Response {
    let (document, shape) = match parsed {
        Some(Parsed { document, shape }) => (Some(document), shape),
        None => (None, None),
    };
    // Who calls, before anything runs: a bad token is refused whatever the
    // request; without one, only queries (of models that do not require
    // authentication) may run.
    let caller = match app.options.auth.caller(headers) {
        Ok(caller) => caller,
        Err(message) => return unauthorized(media, message),
    };
    if caller == Caller::Anonymous
        && operation_type(&request, document.as_ref()).is_some_and(|ty| ty != OperationType::Query)
    {
        return unauthorized(media, "this request needs a token: send `Authorization: Bearer <token>`");
    }
    let (anonymous, principal) = (caller == Caller::Anonymous, caller.principal().cloned());
    request = request.data(caller);
    // `Idempotency-Key` names the command of the request's one mutation
    // (several would all be one command: refused before anything runs).
    let key = match idempotency_key(headers) {
        Ok(key) => key,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, media, message),
    };
    if let Some(key) = &key {
        if mutation_fields(&request, document.as_ref()).is_some_and(|n| n > 1) {
            let message = "an Idempotency-Key names one command: send one mutation per request with it \
                           (or give each mutation its own `commandId`)";
            let errors = json!([{ "message": message, "extensions": { "code": crate::graphql::schema::code::IDEMPOTENCY_KEY_MULTIPLE_MUTATIONS } }]);
            return refuse_key(StatusCode::BAD_REQUEST, media, errors);
        }
        request = request.data(IdempotencyKey(key.clone()));
    }
    let served = app.graphql.served();
    let pick = served.pick(shape, &request);
    // A command's mutation of a known shape: answered by the shell itself
    // when the answer is the common one (`graphql::fast`).
    let plan = document.as_ref().filter(|_| pick.known_valid && !anonymous).and_then(|d| {
        fast::plan(d, request.operation_name.as_deref(), &request.variables, &served.mutations)
    });
    if let Some(plan) = plan {
        let run = plan.run(app.graphql.services(), principal, key.clone());
        match tokio::time::timeout(app.options.request_timeout, run).await {
            Ok(Ok(response)) => return answer(media, response),
            Ok(Err(precomputed)) => request = request.data(precomputed),
            Err(_) => return timed_out(app, media),
        }
    }
    if let Some(document) = document {
        request.set_parsed_query(document);
    }
    let executed = tokio::time::timeout(app.options.request_timeout, pick.schema.execute(request)).await;
    if let Ok(response) = &executed {
        served.answered(pick, response);
    }
    match executed {
        // The key reused for another payload: 422, as the draft says.
        Ok(response) if key.is_some() && reused_key(&response) => {
            let errors = serde_json::to_value(&response.errors).unwrap_or(Value::Null);
            refuse_key(StatusCode::UNPROCESSABLE_ENTITY, media, errors)
        }
        Ok(response) => answer(media, response),
        Err(_) => timed_out(app, media),
    }
}

fn timed_out(app: &App, media: Media) -> Response {
    refuse(
        StatusCode::REQUEST_TIMEOUT,
        media,
        format!("the request took longer than {:?}", app.options.request_timeout),
    )
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
        Ok(request) => {
            let parsed = app.graphql.documents().parse_shaped(&request.query).ok();
            execute(&app, &headers, media, request, parsed).await
        }
        Err(message) => refuse(StatusCode::BAD_REQUEST, media, message),
    }
}

/// Whether a browser is asking for a page (GraphiQL) rather than data.
fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.contains("text/html") || !(accept.contains(JSON) || accept.contains(GRAPHQL_RESPONSE))
}

fn graphiql(path: &str) -> Response {
    super::assets::page(path, WS_PATH)
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
    let parsed = app.graphql.documents().parse_shaped(&request.query).ok();
    if operation_type(&request, parsed.as_ref().map(|p| &p.document))
        .is_some_and(|ty| ty != OperationType::Query)
    {
        let mut response = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            media,
            "only queries can be sent with GET; send mutations and subscriptions with POST (or over /ws)",
        );
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    execute(&app, &headers, media, request, parsed).await
}

/// Subscriptions over WebSocket, with the schema current when the connection
/// opens. The caller is who the `connection_init` payload's `Authorization`
/// proves (browsers cannot set headers on a WebSocket), else who the
/// upgrade request's header proves; a bad token closes the connection.
async fn websocket(
    State(app): State<Arc<App>>,
    protocol: GraphQLProtocol,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upgrade_caller = match app.options.auth.caller(&headers) {
        Ok(caller) => caller,
        Err(message) => return unauthorized(Media::Json, message),
    };
    let schema = app.graphql.schema();
    let auth = Arc::clone(&app.options.auth);
    upgrade.protocols(ALL_WEBSOCKET_PROTOCOLS).on_upgrade(move |stream| {
        GraphQLWebSocket::new(stream, (*schema).clone(), protocol)
            .on_connection_init(move |payload| async move {
                let caller = auth.connection(&payload, &upgrade_caller).map_err(async_graphql::Error::new)?;
                let mut data = async_graphql::Data::default();
                data.insert(caller);
                Ok(data)
            })
            .serve()
    })
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
    fn mutations_are_recognised() {
        let op = |q: &str, name: Option<&str>| {
            let mut r = GqlRequest::new(q);
            r.operation_name = name.map(str::to_owned);
            operation_type(&r, async_graphql::parser::parse_query(q).ok().as_ref())
        };
        assert_eq!(op("{ a }", None), Some(OperationType::Query));
        assert_eq!(op("mutation { a }", None), Some(OperationType::Mutation));
        assert_eq!(op("query Q { a } mutation M { b }", Some("M")), Some(OperationType::Mutation));
        assert_eq!(op("{", None), None);
    }
}

//! The GraphQL schema, built from the loaded functions' metadata:
//! each command a handler declares is a mutation whose arguments are the
//! command's fields; each public model is an object type with a query by key
//! and a paged list query. Rebuilt whenever the set of functions changes.

use crate::backend::Bus;
use crate::backend::{Event, Store, StoreError};
use crate::http::Caller;
use crate::registry::Functions;
use crate::responses::{ResponseError, Responses};
use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, InputValue, Object, ResolverContext, Scalar, Schema, SchemaError,
    Subscription, SubscriptionField, SubscriptionFieldFuture, TypeRef,
};
use async_graphql::parser::Positioned;
use async_graphql::parser::types::{
    ExecutableDocument, OperationType, Selection, SelectionSet, VariableDefinition,
};
use futures::Stream;
use low_contract::{CommandSpec, FieldKind, FieldSpec, FunctionKind, Message, ModelSpec, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::broadcast;
use tracing::Instrument;

/// Largest page `first` may ask for.
pub const MAX_PAGE: usize = 100;
const DEFAULT_PAGE: i64 = 20;
/// The scalar for values no model describes.
const JSON: &str = "JSON";

/// The mutation argument naming a command for idempotency.
pub const COMMAND_ID: &str = "commandId";

/// The request's `Idempotency-Key` header, when it has one.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub String);

/// The stable codes GraphQL errors carry in `extensions.code` (with the
/// request's `extensions.correlationId`): clients branch on these, and the
/// detail behind them is in the shell's log under the correlation id.
pub mod code {
    /// A function refused the command; the message is its reason, for the user.
    pub const REJECTED: &str = "REJECTED";
    /// The command was taken but could not be carried out (a guest failed,
    /// a step kept conflicting).
    pub const COMMAND_FAILED: &str = "COMMAND_FAILED";
    /// No response within the response timeout; the command may still be
    /// carried out: repeat it with the same key to learn its result.
    pub const TIMEOUT: &str = "TIMEOUT";
    /// The bus or store cannot be reached now; try again.
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    /// Something went wrong in the shell.
    pub const INTERNAL: &str = "INTERNAL";
    /// The idempotency key (`commandId` or `Idempotency-Key`) was used
    /// before for a different command (another payload); nothing was submitted.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
    /// An `Idempotency-Key` came with more than one mutation field (it
    /// names one command); nothing was submitted.
    pub const IDEMPOTENCY_KEY_MULTIPLE_MUTATIONS: &str = "IDEMPOTENCY_KEY_MULTIPLE_MUTATIONS";
    /// Too many requests wait for their responses; nothing was submitted.
    pub const OVERLOADED: &str = "OVERLOADED";
    /// The request has no (valid) token and asks for what needs one.
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
}

/// A GraphQL error with a stable `message`, its `code` and the
/// correlation id the log has the details under.
pub fn coded_error(
    message: impl Into<String>,
    code: &'static str,
    correlation_id: &str,
) -> async_graphql::Error {
    use async_graphql::ErrorExtensions;
    let correlation_id = correlation_id.to_owned();
    async_graphql::Error::new(message).extend_with(move |_, e| {
        e.set("code", code);
        e.set("correlationId", correlation_id.as_str());
    })
}

/// What a mutation's client sees of `e`: a rejection's reason verbatim;
/// otherwise a stable message, the detail going to the log.
fn command_error(e: ResponseError, correlation_id: &str) -> async_graphql::Error {
    let detail = e.to_string();
    let (message, code) = match e {
        ResponseError::Rejected(reason) => return coded_error(reason, code::REJECTED, correlation_id),
        ResponseError::Failed(_) => {
            tracing::warn!(correlation_id, "command failed: {detail}");
            ("the command failed".to_owned(), code::COMMAND_FAILED)
        }
        ResponseError::Timeout { .. } => {
            tracing::warn!(correlation_id, "{detail}");
            (detail, code::TIMEOUT)
        }
        ResponseError::Unavailable(_) => {
            tracing::warn!(correlation_id, "{detail}");
            (
                "the service is unavailable; try again (with the same commandId to be safe)".to_owned(),
                code::UNAVAILABLE,
            )
        }
        ResponseError::Internal(_) => {
            tracing::error!(correlation_id, "{detail}");
            ("internal error".to_owned(), code::INTERNAL)
        }
        ResponseError::KeyReused { .. } => {
            tracing::info!(correlation_id, "{detail}");
            (
                "this idempotency key was used before for a different command; use a new key for a new command"
                    .to_owned(),
                code::IDEMPOTENCY_KEY_REUSED,
            )
        }
        ResponseError::Overloaded { .. } => {
            tracing::warn!(correlation_id, "request refused: {detail}");
            (
                "too many requests are waiting for their responses; try again shortly".to_owned(),
                code::OVERLOADED,
            )
        }
    };
    coded_error(message, code, correlation_id)
}

/// What a query's client sees of a store error: a stable message and code
/// with a fresh correlation id, the detail going to the log.
fn store_error(e: StoreError) -> async_graphql::Error {
    let correlation_id = uuid::Uuid::now_v7().to_string();
    match e {
        StoreError::Unavailable(_) => {
            tracing::warn!(%correlation_id, "query failed: {e}");
            coded_error("the service is unavailable; try again", code::UNAVAILABLE, &correlation_id)
        }
        _ => {
            tracing::error!(%correlation_id, "query failed: {e}");
            coded_error("internal error", code::INTERNAL, &correlation_id)
        }
    }
}

/// The command id for an idempotency key: deterministic, and distinct per command kind.
pub fn command_id(kind: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(kind).chain_update([0]).chain_update(key).finalize();
    format!("cmd-{}", &hex::encode(digest)[..32])
}

/// What resolvers need from the shell.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub responses: Arc<Responses>,
    /// The source of the `events` subscription.
    pub bus: Arc<dyn Bus>,
}

/// Limits applied to every query.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub depth: usize,
    pub complexity: usize,
}

/// `customer-id` → `customerId`: GraphQL names cannot hold dashes.
pub fn graphql_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '-' || c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map_or_else(String::new, |c| c.to_lowercase().chain(chars).collect())
}

/// `email` → `Email`, for "Email is required".
fn upper_first(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

fn scalar(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Id => TypeRef::ID,
        FieldKind::Text => TypeRef::STRING,
        FieldKind::Integer => TypeRef::INT,
        FieldKind::Number => TypeRef::FLOAT,
        FieldKind::Boolean => TypeRef::BOOLEAN,
    }
}

pub(super) fn json_to_graphql(value: &Value) -> async_graphql::Value {
    async_graphql::Value::from_json(value.clone()).unwrap_or(async_graphql::Value::Null)
}

/// A document's field value as a model's field of `kind` shows it: none
/// for an absent or null one (the fast path of mutations shows it the same).
pub(super) fn shown_field(kind: FieldKind, value: Option<&Value>) -> Option<async_graphql::Value> {
    value.filter(|v| !v.is_null()).map(|v| match (kind, v) {
        // Ids may be stored as numbers; GraphQL serialises ID as a string.
        (FieldKind::Id, Value::Number(n)) => async_graphql::Value::String(n.to_string()),
        (_, v) => json_to_graphql(v),
    })
}

/// A document's field, as its declared scalar.
fn model_field(spec: &FieldSpec) -> Field {
    let key = spec.name.clone();
    let kind = spec.kind;
    let ty = if spec.required { TypeRef::named_nn(scalar(kind)) } else { TypeRef::named(scalar(kind)) };
    let field = Field::new(graphql_name(&spec.name), ty, move |ctx| {
        let value = ctx.parent_value.downcast_ref::<Value>().and_then(|doc| doc.get(&key));
        FieldFuture::from_value(shown_field(kind, value))
    });
    match &spec.description {
        Some(d) => field.description(d.clone()),
        None => field,
    }
}

fn model_type(model: &ModelSpec) -> Object {
    let object = model.fields.iter().fold(Object::new(&model.name), |o, f| o.field(model_field(f)));
    match &model.description {
        Some(d) => object.description(d.clone()),
        None => object,
    }
}

fn gql_error(e: impl std::fmt::Display) -> async_graphql::Error {
    async_graphql::Error::new(e.to_string())
}

/// Who calls: [`Caller::Trusted`] when the request says nothing (the
/// shell's HTTP and WebSocket entries always say, when identities are checked).
fn caller<'a>(ctx: &'a ResolverContext<'_>) -> &'a Caller {
    ctx.data_opt::<Caller>().unwrap_or(&Caller::Trusted)
}

/// Refuses an anonymous caller what needs a verified one.
fn authenticated(ctx: &ResolverContext<'_>, what: &str) -> Result<(), async_graphql::Error> {
    match caller(ctx) {
        Caller::Anonymous => {
            use async_graphql::ErrorExtensions;
            let message = format!("{what} requires authentication: send `Authorization: Bearer <token>`");
            Err(async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code::UNAUTHENTICATED)))
        }
        Caller::Trusted | Caller::Verified(_) => Ok(()),
    }
}

/// `customer(id: ID!)` and `customers(first: Int = 20, after: String)`.
fn model_queries(model: &ModelSpec, services: &Services) -> Vec<Field> {
    let key_arg = graphql_name(&model.key);
    // Declared by the model's meta: only verified callers read it.
    let needs_auth = model.authenticated.then(|| model.name.clone());
    let one = {
        let (services, collection, key_arg2) = (services.clone(), model.collection.clone(), key_arg.clone());
        let needs_auth = needs_auth.clone();
        Field::new(lower_first(&model.name), TypeRef::named(&model.name), move |ctx| {
            let (services, collection, key_arg) = (services.clone(), collection.clone(), key_arg2.clone());
            let needs_auth = needs_auth.clone();
            FieldFuture::new(async move {
                if let Some(model) = &needs_auth {
                    authenticated(&ctx, model)?;
                }
                let key = ctx.args.try_get(&key_arg)?.string()?.to_owned();
                let doc = services.store.get(&collection, &key).await.map_err(store_error)?;
                Ok(doc.map(|d| FieldValue::owned_any(d.body)))
            })
        })
        .argument(InputValue::new(&key_arg, TypeRef::named_nn(TypeRef::ID)))
        .description(format!("The {} with this {}", model.name, model.key))
    };
    let page = {
        let (services, collection) = (services.clone(), model.collection.clone());
        Field::new(graphql_name(&model.collection), TypeRef::named_nn_list_nn(&model.name), move |ctx| {
            let (services, collection) = (services.clone(), collection.clone());
            let needs_auth = needs_auth.clone();
            FieldFuture::new(async move {
                if let Some(model) = &needs_auth {
                    authenticated(&ctx, model)?;
                }
                let first = ctx.args.get("first").map(|v| v.i64()).transpose()?.unwrap_or(DEFAULT_PAGE);
                let first = usize::try_from(first)
                    .ok()
                    .filter(|n| *n <= MAX_PAGE)
                    .ok_or_else(|| gql_error(format!("`first` must be between 0 and {MAX_PAGE}")))?;
                let after = ctx.args.get("after").filter(|v| !v.is_null()).map(|v| v.string()).transpose()?;
                let docs = services.store.list(&collection, after, first).await.map_err(store_error)?;
                Ok(Some(FieldValue::list(docs.into_iter().map(|d| FieldValue::owned_any(d.body)))))
            })
        })
        .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)).default_value(DEFAULT_PAGE))
        .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING)))
        .description(format!(
            "{} in {} order; pass the last {} as `after` for the next page",
            model.name, model.key, model.key
        ))
    };
    vec![one, page]
}

/// The command's payload from the mutation's arguments, checking required fields.
fn payload(ctx: &ResolverContext<'_>, command: &CommandSpec) -> Result<Value, async_graphql::Error> {
    command_payload(&command.fields, |name| ctx.args.get(name).map(|v| v.as_value().clone()))
        .map_err(gql_error)
}

/// Maps a mutation's arguments (by GraphQL name) to the command's payload
/// (by field name). Absent and null arguments are left out; a required one
/// is an error `"<Field> is required"`.
pub fn command_payload(
    fields: &[FieldSpec],
    argument: impl Fn(&str) -> Option<async_graphql::Value>,
) -> Result<Value, String> {
    let mut payload = serde_json::Map::new();
    for field in fields {
        match argument(&graphql_name(&field.name)).filter(|v| *v != async_graphql::Value::Null) {
            Some(value) => {
                let value = value.into_json().map_err(|e| format!("argument `{}`: {e}", field.name))?;
                payload.insert(field.name.clone(), value);
            }
            None if field.required => return Err(format!("{} is required", upper_first(&field.name))),
            None => {}
        }
    }
    Ok(Value::Object(payload))
}

/// A mutation's idempotency key: its `commandId` argument (an `ID`, which
/// may be given as an integer), else `header` (the `Idempotency-Key`).
pub(super) fn command_key(
    argument: Option<&async_graphql::Value>,
    header: impl FnOnce() -> Option<String>,
) -> Option<String> {
    match argument {
        Some(async_graphql::Value::Number(n)) => Some(n.to_string()),
        Some(async_graphql::Value::String(s)) => Some(s.clone()),
        _ => header(),
    }
}

/// A command mutation's answer computed before async-graphql ran the
/// request (the shell's fast path, [`super::fast`]): the mutation's resolver
/// hands it over instead of running the command again, so that
/// async-graphql formats it (errors, nulls) as it formats any answer.
pub struct Precomputed(pub std::sync::Mutex<Option<Result<Value, async_graphql::Error>>>);

/// Runs the command a mutation of `spec` asks for — `payload` from its
/// arguments, `key` its idempotency key (`commandId`, else the
/// `Idempotency-Key` header) — and waits for its answer: the resolver's body,
/// shared with the fast path.
pub async fn run_command(
    services: &Services,
    spec: &CommandSpec,
    principal: Option<low_contract::Principal>,
    payload: Value,
    key: Option<String>,
) -> Result<Value, async_graphql::Error> {
    // Each subject's keys are its own: the same key from another
    // caller names another command, never the first caller's answer.
    let key = key.map(|key| match &principal {
        Some(p) => format!("{}\u{1f}{key}", p.subject),
        None => key,
    });
    let idempotent = key.is_some();
    let id = match key {
        Some(key) => command_id(&spec.name, &key),
        None => uuid::Uuid::now_v7().to_string(),
    };
    // A DEBUG span (its ids on every line inside it when enabled),
    // and one line when answered: INFO unless all went well. At the
    // default level a command that succeeds costs no formatting and
    // no write — the span and a line per command at INFO were ~8% of
    // a command's CPU; the metrics count and time every command.
    let span = tracing::debug_span!("command", command = %spec.name, command_id = %id, correlation_id = %id);
    let mut command = Message::new(id.clone(), &spec.name, payload).correlated(id.clone());
    command.principal = principal;
    let started = Instant::now();
    let answer = services.responses.request(command, idempotent).instrument(span.clone()).await;
    let outcome = match &answer {
        Ok(_) => "ok",
        Err(ResponseError::Rejected(_)) => "rejected",
        Err(ResponseError::Timeout { .. }) => "timeout",
        Err(ResponseError::KeyReused { .. } | ResponseError::Overloaded { .. }) => "refused",
        Err(ResponseError::Failed(_) | ResponseError::Unavailable(_) | ResponseError::Internal(_)) => {
            "failed"
        }
    };
    let took = started.elapsed();
    crate::metrics::command(&spec.name, outcome, took);
    let took_ms = took.as_secs_f64() * 1000.0;
    span.in_scope(|| match outcome {
        "ok" => tracing::debug!(command = %spec.name, command_id = %id, outcome, took_ms, "answered"),
        _ => tracing::info!(command = %spec.name, command_id = %id, outcome, took_ms, "answered"),
    });
    answer.map_err(|e| span.in_scope(|| command_error(e, &id)))
}

fn mutation(command: &CommandSpec, returns_model: bool, services: &Services) -> Field {
    let ty = if returns_model { TypeRef::named(&command.returns) } else { TypeRef::named(JSON) };
    let (services, spec) = (services.clone(), command.clone());
    let field = Field::new(&command.name, ty, move |ctx| {
        let (services, spec) = (services.clone(), spec.clone());
        FieldFuture::new(async move {
            let precomputed =
                ctx.data_opt::<Precomputed>().and_then(|p| p.0.lock().ok().and_then(|mut p| p.take()));
            let answer = match precomputed {
                Some(answer) => answer,
                None => {
                    // The shell's HTTP entry refuses these before execution; a
                    // command is never appended without the caller it needs.
                    authenticated(&ctx, &spec.name)?;
                    let principal = caller(&ctx).principal().cloned();
                    let payload = payload(&ctx, &spec)?;
                    let key = command_key(ctx.args.get(COMMAND_ID).map(|v| v.as_value()), || {
                        ctx.data_opt::<IdempotencyKey>().map(|k| k.0.clone())
                    });
                    run_command(&services, &spec, principal, payload, key).await
                }
            };
            let value = answer?;
            Ok(Some(match returns_model {
                true => FieldValue::owned_any(value),
                false => FieldValue::value(json_to_graphql(&value)),
            }))
        })
    });
    let field = field.argument(InputValue::new(COMMAND_ID, TypeRef::named(TypeRef::ID)).description(
        "Idempotency key: a repeat with the same key and arguments returns the first result and \
         changes nothing; the same key with other arguments is an error (IDEMPOTENCY_KEY_REUSED). \
         Also read from the `Idempotency-Key` header",
    ));
    let field = command.fields.iter().fold(field, |f, spec| {
        let arg = InputValue::new(graphql_name(&spec.name), TypeRef::named(scalar(spec.kind)));
        f.argument(match &spec.description {
            Some(d) => arg.description(d.clone()),
            None => arg,
        })
    });
    match &command.description {
        Some(d) => field.description(d.clone()),
        None => field,
    }
}

/// `functions`: what is loaded, for operators.
fn functions_query(functions: &Functions) -> (Object, Field) {
    let listing: Vec<Value> = functions
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name(),
                "kind": match f.meta.kind { FunctionKind::Handler => "handler", FunctionKind::Projector => "projector", FunctionKind::Resolver => "resolver" },
                "version": f.version.0,
                "inputs": f.meta.inputs,
                "output": f.meta.output,
            })
        })
        .collect();
    let text = |name: &'static str, nn: bool| {
        Field::new(
            name,
            if nn { TypeRef::named_nn(TypeRef::STRING) } else { TypeRef::named(TypeRef::STRING) },
            move |ctx| {
                FieldFuture::from_value(
                    ctx.parent_value.downcast_ref::<Value>().and_then(|v| v.get(name)).map(json_to_graphql),
                )
            },
        )
    };
    let object = Object::new("Function")
        .description("A loaded function")
        .field(text("name", true))
        .field(text("kind", true))
        .field(text("version", true).description("sha256 of the component"))
        .field(text("output", false))
        .field(Field::new("inputs", TypeRef::named_nn_list_nn(TypeRef::STRING), |ctx| {
            FieldFuture::from_value(
                ctx.parent_value.downcast_ref::<Value>().and_then(|v| v.get("inputs")).map(json_to_graphql),
            )
        }));
    let field = Field::new("functions", TypeRef::named_nn_list_nn("Function"), move |_| {
        let listing = listing.clone();
        FieldFuture::new(
            async move { Ok(Some(FieldValue::list(listing.into_iter().map(FieldValue::owned_any)))) },
        )
    })
    .description("The functions this shell has loaded");
    (object, field)
}

/// An appended event as the `events` subscription shows it.
fn event_json(event: &Event) -> Value {
    serde_json::json!({
        "topic": event.topic,
        "type": event.message.kind,
        "id": event.message.id,
        "correlationId": event.message.correlation_id,
        "causationId": event.message.causation_id,
        "subject": event.message.principal.as_ref().map(|p| &p.subject),
        "payload": event.message.payload,
        "function": event.function,
        "version": event.version,
        "atMs": event.at_ms,
    })
}

const EVENT_TYPE: &str = "LogEvent";

fn event_type() -> Object {
    let field = |name: &'static str, ty: TypeRef| {
        Field::new(name, ty, move |ctx| {
            FieldFuture::from_value(
                ctx.parent_value
                    .downcast_ref::<Value>()
                    .and_then(|v| v.get(name))
                    .filter(|v| !v.is_null())
                    .map(json_to_graphql),
            )
        })
    };
    Object::new(EVENT_TYPE)
        .description("An event (or command) appended to the log")
        .field(field("topic", TypeRef::named_nn(TypeRef::STRING)))
        .field(field("type", TypeRef::named_nn(TypeRef::STRING)).description("The message kind"))
        .field(field("id", TypeRef::named_nn(TypeRef::ID)))
        .field(field("correlationId", TypeRef::named(TypeRef::ID)))
        .field(field("causationId", TypeRef::named(TypeRef::ID)))
        .field(field("subject", TypeRef::named(TypeRef::STRING)).description(
            "Who caused it: the verified token's subject of the command it descends from; \
             none when the shell checks no identities",
        ))
        .field(field("payload", TypeRef::named_nn(JSON)))
        .field(
            field("function", TypeRef::named(TypeRef::STRING))
                .description("Who emitted it; none for commands"),
        )
        .field(field("version", TypeRef::named(TypeRef::STRING)))
        .field(
            field("atMs", TypeRef::named_nn(TypeRef::FLOAT)).description("Milliseconds since the Unix epoch"),
        )
}

/// Appended events matching the filters; a watcher that falls too far behind
/// gets one error and the stream ends.
fn watch<'a>(
    rx: broadcast::Receiver<Arc<Event>>,
    topic: Option<String>,
    kind: Option<String>,
) -> impl Stream<Item = Result<FieldValue<'a>, async_graphql::Error>> + Send + 'a {
    futures::stream::unfold(Some(rx), move |rx| {
        let (topic, kind) = (topic.clone(), kind.clone());
        async move {
            let mut rx = rx?;
            loop {
                match rx.recv().await {
                    Ok(event) => {
                        if topic.as_ref().is_some_and(|t| *t != event.topic)
                            || kind.as_ref().is_some_and(|k| *k != event.message.kind)
                        {
                            continue;
                        }
                        return Some((Ok(FieldValue::owned_any(event_json(&event))), Some(rx)));
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        let message = format!(
                            "this subscription fell behind and missed {skipped} events; subscribe again"
                        );
                        return Some((Err(gql_error(message)), None));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
}

/// `events(topic: String, type: String): LogEvent!`
fn events_subscription(services: &Services) -> Subscription {
    let bus = Arc::clone(&services.bus);
    let field = SubscriptionField::new("events", TypeRef::named_nn(EVENT_TYPE), move |ctx| {
        let bus = Arc::clone(&bus);
        SubscriptionFieldFuture::new(async move {
            authenticated(&ctx, "the events subscription")?;
            let text = |name: &str| -> Result<Option<String>, async_graphql::Error> {
                Ok(ctx
                    .args
                    .get(name)
                    .filter(|v| !v.is_null())
                    .map(|v| v.string())
                    .transpose()?
                    .map(str::to_owned))
            };
            let (topic, kind) = (text("topic")?, text("type")?);
            let rx = bus.watch_events().map_err(gql_error)?;
            Ok(watch(rx, topic, kind))
        })
    })
    .argument(InputValue::new("topic", TypeRef::named(TypeRef::STRING)).description("Only this topic"))
    .argument(InputValue::new("type", TypeRef::named(TypeRef::STRING)).description("Only this message kind"))
    .description("Events and commands as they are appended, for watching the system live");
    Subscription::new("Subscription").field(field)
}

/// A response header (never sent) marking a request that reached execution,
/// so HTTP can tell request errors (parse, validation, variables: 400 with
/// `application/graphql-response+json`) from errors while executing. Set by
/// [`PageCostCheck::execute`]: the schema has one extension, as every
/// extension adds a hop to the resolution of every field.
pub const EXECUTED: &str = "x-lowshell-executed";

/// The query complexity limit, counting what lists can return: a page
/// (`customers(first: n)`) costs `n` times its selected fields (20 when
/// `first` is absent, at most [`MAX_PAGE`]), `functions` once per loaded
/// function, every other field 1 plus its selection. The built-in
/// complexity check counts every field once, so 300 aliased pages of 100
/// would pass it; this one refuses them before they run.
struct PageCost {
    /// The paged list queries (fields of `Query`).
    pages: Arc<HashSet<String>>,
    functions: usize,
    limit: usize,
}

impl PageCost {
    fn new(models: &[&ModelSpec], functions: usize, limit: usize) -> Self {
        let pages = models.iter().map(|m| graphql_name(&m.collection)).collect();
        Self { pages: Arc::new(pages), functions, limit }
    }
}

impl async_graphql::extensions::ExtensionFactory for PageCost {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(PageCostCheck {
            pages: Arc::clone(&self.pages),
            functions: self.functions,
            limit: self.limit,
            operation: std::sync::Mutex::new(None),
        })
    }
}

/// [`PageCost`] for one request (it learns the operation name first); it
/// also marks a response whose request reached execution ([`EXECUTED`]).
struct PageCostCheck {
    pages: Arc<HashSet<String>>,
    functions: usize,
    limit: usize,
    operation: std::sync::Mutex<Option<String>>,
}

/// What a document's cost is computed against.
struct CostInputs<'a> {
    document: &'a ExecutableDocument,
    variables: &'a async_graphql::Variables,
    definitions: &'a [Positioned<VariableDefinition>],
    /// Fragments' costs, by name and whether spread at the root; a fragment
    /// being costed is `None` (a cycle, which validation refuses, costs 0).
    fragments: HashMap<(String, bool), Option<usize>>,
}

impl PageCostCheck {
    /// The cost of the operation the request runs (the costliest one when
    /// that is unclear: validation refuses such a request anyway).
    fn cost(&self, document: &ExecutableDocument, variables: &async_graphql::Variables) -> usize {
        let wanted = self.operation.lock().map(|name| name.clone()).unwrap_or(None);
        document
            .operations
            .iter()
            .filter(|(name, _)| wanted.as_deref().is_none_or(|w| name.is_some_and(|n| n.as_str() == w)))
            .map(|(_, operation)| {
                let operation = &operation.node;
                let mut inputs = CostInputs {
                    document,
                    variables,
                    definitions: &operation.variable_definitions,
                    fragments: HashMap::new(),
                };
                let root = operation.ty == OperationType::Query;
                self.selection_cost(&operation.selection_set.node, root, &mut inputs)
            })
            .max()
            .unwrap_or(0)
    }

    fn selection_cost(&self, set: &SelectionSet, root: bool, inputs: &mut CostInputs<'_>) -> usize {
        set.items.iter().fold(0usize, |total, item| {
            let cost = match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let children = self.selection_cost(&field.selection_set.node, false, inputs);
                    let count = if root { self.list_size(field, inputs) } else { None };
                    match count {
                        Some(n) => n.saturating_mul(children).saturating_add(1),
                        None => children.saturating_add(1),
                    }
                }
                Selection::InlineFragment(fragment) => {
                    self.selection_cost(&fragment.node.selection_set.node, root, inputs)
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.to_string();
                    let key = (name.clone(), root);
                    match inputs.fragments.get(&key) {
                        Some(known) => known.unwrap_or(0),
                        None => {
                            match inputs.document.fragments.get(spread.node.fragment_name.node.as_str()) {
                                Some(definition) => {
                                    inputs.fragments.insert(key.clone(), None);
                                    let cost = self.selection_cost(
                                        &definition.node.selection_set.node,
                                        root,
                                        inputs,
                                    );
                                    inputs.fragments.insert(key, Some(cost));
                                    cost
                                }
                                None => 0,
                            }
                        }
                    }
                }
            };
            total.saturating_add(cost)
        })
    }

    /// How many items a root field's list can hold, if it is a list.
    fn list_size(
        &self,
        field: &async_graphql::parser::types::Field,
        inputs: &CostInputs<'_>,
    ) -> Option<usize> {
        let name = field.name.node.as_str();
        if name == "functions" {
            return Some(self.functions);
        }
        if !self.pages.contains(name) {
            return None;
        }
        let Some(first) = field.get_argument("first") else { return Some(DEFAULT_PAGE as usize) };
        let value = first.node.clone().into_const_with(|variable| {
            let defined = inputs.definitions.iter().find(|d| d.node.name.node == variable);
            Ok::<_, ()>(
                inputs
                    .variables
                    .get(&variable)
                    .cloned()
                    .or_else(|| defined.and_then(|d| d.node.default_value.as_ref()).map(|v| v.node.clone()))
                    .unwrap_or(async_graphql::Value::Null),
            )
        });
        Some(match value {
            Ok(async_graphql::Value::Null) => DEFAULT_PAGE as usize,
            // Out of range is refused when the field runs; count it at its most.
            Ok(async_graphql::Value::Number(n)) => {
                n.as_i64().map_or(MAX_PAGE, |n| usize::try_from(n).unwrap_or(0).min(MAX_PAGE))
            }
            _ => MAX_PAGE,
        })
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for PageCostCheck {
    async fn prepare_request(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        request: async_graphql::Request,
        next: async_graphql::extensions::NextPrepareRequest<'_>,
    ) -> async_graphql::ServerResult<async_graphql::Request> {
        if let Ok(mut operation) = self.operation.lock() {
            operation.clone_from(&request.operation_name);
        }
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        query: &str,
        variables: &async_graphql::Variables,
        next: async_graphql::extensions::NextParseQuery<'_>,
    ) -> async_graphql::ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let cost = self.cost(&document, variables);
        if cost > self.limit {
            return Err(async_graphql::ServerError::new(
                format!(
                    "the query is too complex: {cost}, over the limit of {} (graphql.max-complexity); \
                     a page counts `first` times its fields: ask for smaller pages or fewer of them",
                    self.limit
                ),
                None,
            ));
        }
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: async_graphql::extensions::NextExecute<'_>,
    ) -> async_graphql::Response {
        let mut response = next.run(ctx, operation_name).await;
        response.http_headers.insert(EXECUTED, axum::http::HeaderValue::from_static("1"));
        response
    }
}

/// The schema of `functions`; `validation` [`async_graphql::ValidationMode::Fast`]
/// only for documents known to be valid (see [`super::Served`]).
pub fn build(
    functions: &Functions,
    services: &Services,
    limits: QueryLimits,
    validation: async_graphql::ValidationMode,
) -> Result<Schema, SchemaError> {
    let public: Vec<&ModelSpec> = functions.models().filter(|m| m.public).collect();
    let commands: Vec<&CommandSpec> = functions.commands().map(|(_, c)| c).collect();
    let mut builder =
        Schema::build("Query", (!commands.is_empty()).then_some("Mutation"), Some("Subscription"))
            .register(events_subscription(services))
            .register(event_type());
    let (function_type, functions_field) = functions_query(functions);
    let mut query = Object::new("Query").field(functions_field);
    for model in &public {
        builder = builder.register(model_type(model));
        query = model_queries(model, services).into_iter().fold(query, Object::field);
    }
    if !commands.is_empty() {
        let mutations = commands.iter().fold(Object::new("Mutation"), |m, command| {
            let returns_model = public.iter().any(|model| model.name == command.returns);
            m.field(mutation(command, returns_model, services))
        });
        builder = builder.register(mutations);
    }
    builder
        .register(query)
        .register(function_type)
        .register(Scalar::new(JSON).description("Any JSON value"))
        .limit_depth(limits.depth)
        .limit_complexity(limits.complexity)
        .extension(PageCost::new(&public, functions.iter().count(), limits.complexity))
        .validation_mode(validation)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn scalar_value() -> impl Strategy<Value = async_graphql::Value> {
        prop_oneof![
            Just(async_graphql::Value::Null),
            any::<bool>().prop_map(async_graphql::Value::Boolean),
            any::<i32>().prop_map(async_graphql::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(async_graphql::Value::from),
            ".*".prop_map(async_graphql::Value::String),
        ]
    }

    fn field_spec() -> impl Strategy<Value = FieldSpec> {
        ("[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", any::<bool>()).prop_map(|(name, required)| FieldSpec {
            name,
            kind: FieldKind::Text,
            required,
            description: None,
        })
    }

    proptest! {
        /// Every present argument lands under its field name with its value;
        /// a missing required one is the only error.
        #[test]
        fn arguments_map_to_the_payload(
            fields in proptest::collection::vec(field_spec(), 0..6),
            values in proptest::collection::vec(proptest::option::of(scalar_value()), 6),
        ) {
            let mut seen = std::collections::HashSet::new();
            let fields: Vec<FieldSpec> = fields.into_iter().filter(|f| seen.insert(graphql_name(&f.name))).collect();
            let args: HashMap<String, async_graphql::Value> = fields
                .iter()
                .zip(&values)
                .filter_map(|(f, v)| v.clone().map(|v| (graphql_name(&f.name), v)))
                .collect();
            let result = command_payload(&fields, |name| args.get(name).cloned());
            let missing = fields.iter().find(|f| {
                f.required && args.get(&graphql_name(&f.name)).is_none_or(|v| *v == async_graphql::Value::Null)
            });
            match (missing, result) {
                (Some(f), Err(e)) => prop_assert_eq!(e, format!("{} is required", upper_first(&f.name))),
                (Some(f), Ok(p)) => prop_assert!(false, "{} is required but {} was accepted", f.name, p),
                (None, Err(e)) => prop_assert!(false, "refused: {}", e),
                (None, Ok(Value::Object(payload))) => {
                    for f in &fields {
                        match args.get(&graphql_name(&f.name)).filter(|v| **v != async_graphql::Value::Null) {
                            Some(v) => prop_assert_eq!(payload.get(&f.name), Some(&v.clone().into_json().expect("json"))),
                            None => prop_assert!(!payload.contains_key(&f.name)),
                        }
                    }
                    prop_assert!(payload.len() <= fields.len());
                }
                (None, Ok(other)) => prop_assert!(false, "not an object: {}", other),
            }
        }
    }

    #[test]
    fn names_become_graphql_names() {
        assert_eq!(graphql_name("customer-id"), "customerId");
        assert_eq!(graphql_name("email"), "email");
        assert_eq!(graphql_name("created_at"), "createdAt");
        assert_eq!(upper_first("email"), "Email");
        assert_eq!(lower_first("Customer"), "customer");
    }

    fn event(topic: &str, kind: &str) -> Event {
        Event {
            topic: topic.into(),
            message: Message::new("id", kind, serde_json::json!({})),
            function: None,
            version: None,
            at_ms: 0,
        }
    }

    #[tokio::test]
    async fn watchers_see_matching_events_and_laggards_are_told_and_dropped() {
        use futures::StreamExt;
        let (tx, rx) = broadcast::channel(2);
        let mut stream = Box::pin(watch(rx, Some("customer".into()), Some("CustomerInvited".into())));
        for e in [event("commands", "InviteCustomer"), event("customer", "CustomerInvited")] {
            tx.send(Arc::new(e)).expect("a watcher");
        }
        let first = stream.next().await.expect("an item").expect("an event");
        let seen = first.downcast_ref::<Value>().cloned().unwrap_or_default();
        assert_eq!(
            (seen["topic"].as_str(), seen["type"].as_str()),
            (Some("customer"), Some("CustomerInvited"))
        );

        for _ in 0..5 {
            tx.send(Arc::new(event("customer", "CustomerInvited"))).expect("a watcher");
        }
        let lagged = stream.next().await.expect("an item");
        assert!(lagged.is_err_and(|e| e.message.contains("fell behind")));
        assert!(stream.next().await.is_none(), "a laggard's stream ends");
    }
}

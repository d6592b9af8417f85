//! Plain-Rust mirrors of the records and variants in `wit/functions.wit`.
//!
//! JSON text in the contract is a [`Value`] here: it is parsed once at the
//! boundary, and everything on this side of it can rely on it being JSON.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Topic every command is submitted to. A handler that lists it in its
/// inputs receives the commands it declares in [`Meta::commands`].
pub const COMMANDS_TOPIC: &str = "commands";

/// Notification kind the shell sends when `operate` rejects: `{ "reason": … }`.
pub const REJECTED: &str = "Rejected";
/// Notification kind the shell sends when it could not run a step: `{ "reason": …, "function": … }`.
pub const FAILED: &str = "Failed";
/// Notification kind a projector sends when a document is up to date:
/// `{ "collection": …, "key": … }`.
pub const PROJECTION_COMPLETE: &str = "ProjectionComplete";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FunctionKind {
    Handler,
    Projector,
    Resolver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldKind {
    Id,
    Text,
    Integer,
    Number,
    Boolean,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FieldSpec {
    pub name: String,
    pub kind: FieldKind,
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl FieldSpec {
    pub fn new(name: &str, kind: FieldKind, required: bool) -> Self {
        Self { name: name.into(), kind, required, description: None }
    }

    pub fn describe(mut self, description: &str) -> Self {
        self.description = Some(description.into());
        self
    }

    /// An optional field of kind `id`; see [`required`](Self::required).
    pub fn id(name: &str) -> Self {
        Self::new(name, FieldKind::Id, false)
    }
    /// An optional text field.
    pub fn text(name: &str) -> Self {
        Self::new(name, FieldKind::Text, false)
    }
    /// An optional integer field.
    pub fn integer(name: &str) -> Self {
        Self::new(name, FieldKind::Integer, false)
    }
    /// An optional number field.
    pub fn number(name: &str) -> Self {
        Self::new(name, FieldKind::Number, false)
    }
    /// An optional boolean field.
    pub fn boolean(name: &str) -> Self {
        Self::new(name, FieldKind::Boolean, false)
    }

    /// The field must be present and not null.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommandSpec {
    pub name: String,
    pub fields: Vec<FieldSpec>,
    /// Name of the model the command answers with.
    pub returns: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl CommandSpec {
    /// The command `name`, answered with the model `returns`; no fields yet.
    pub fn new(name: &str, returns: &str) -> Self {
        Self { name: name.into(), fields: vec![], returns: returns.into(), description: None }
    }

    pub fn field(mut self, field: FieldSpec) -> Self {
        self.fields.push(field);
        self
    }

    pub fn describe(mut self, description: &str) -> Self {
        self.description = Some(description.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModelSpec {
    pub name: String,
    pub collection: String,
    pub key: String,
    pub fields: Vec<FieldSpec>,
    pub public: bool,
    /// Served only to authenticated callers when the shell checks
    /// identities (see [`authenticated`](Self::authenticated)).
    #[serde(default)]
    pub authenticated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl ModelSpec {
    /// The private model `name`: documents of `collection` keyed by their
    /// field `key`; no fields yet. See [`public`](Self::public).
    pub fn new(name: &str, collection: &str, key: &str) -> Self {
        Self {
            name: name.into(),
            collection: collection.into(),
            key: key.into(),
            fields: vec![],
            public: false,
            authenticated: false,
            description: None,
        }
    }

    pub fn field(mut self, field: FieldSpec) -> Self {
        self.fields.push(field);
        self
    }

    /// Served as GraphQL queries.
    pub fn public(mut self) -> Self {
        self.public = true;
        self
    }

    /// Its queries answer only requests with a verified token when the
    /// shell checks identities (`[http.auth]`); with `auth = "none"` every
    /// caller is local and trusted, and they answer everyone.
    pub fn authenticated(mut self) -> Self {
        self.authenticated = true;
        self
    }

    pub fn describe(mut self, description: &str) -> Self {
        self.description = Some(description.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Meta {
    pub name: String,
    pub kind: FunctionKind,
    pub inputs: Vec<String>,
    pub output: Option<String>,
    #[serde(default)]
    pub commands: Vec<CommandSpec>,
    #[serde(default)]
    pub models: Vec<ModelSpec>,
}

impl Meta {
    fn new(name: &str, kind: FunctionKind, inputs: Vec<String>, output: Option<String>) -> Self {
        Self { name: name.into(), kind, inputs, output, commands: vec![], models: vec![] }
    }

    /// A handler consuming `inputs` and appending its events to `output`.
    pub fn handler<I: IntoIterator<Item = S>, S: Into<String>>(name: &str, inputs: I, output: &str) -> Self {
        Self::new(
            name,
            FunctionKind::Handler,
            inputs.into_iter().map(Into::into).collect(),
            Some(output.into()),
        )
    }

    /// A projector consuming `inputs`; it appends no events.
    pub fn projector<I: IntoIterator<Item = S>, S: Into<String>>(name: &str, inputs: I) -> Self {
        Self::new(name, FunctionKind::Projector, inputs.into_iter().map(Into::into).collect(), None)
    }

    /// A resolver answering the commands named in `commands`.
    pub fn resolver<I: IntoIterator<Item = S>, S: Into<String>>(name: &str, commands: I) -> Self {
        Self::new(name, FunctionKind::Resolver, commands.into_iter().map(Into::into).collect(), None)
    }

    pub fn command(mut self, command: CommandSpec) -> Self {
        self.commands.push(command);
        self
    }

    pub fn model(mut self, model: ModelSpec) -> Self {
        self.models.push(model);
        self
    }
}

/// Who caused a message: the identity the shell verified from a request's
/// token — its subject (`sub`) and every claim. Only the shell sets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Principal {
    pub subject: String,
    /// The verified token's claims, a JSON object.
    #[serde(default = "no_claims")]
    pub claims: Value,
}

fn no_claims() -> Value {
    Value::Object(Default::default())
}

impl Principal {
    /// A principal with these claims.
    pub fn new(subject: impl Into<String>, claims: Value) -> Self {
        Self { subject: subject.into(), claims }
    }

    /// A principal whose `roles` claim lists `roles` (for tests and scenarios).
    pub fn with_roles<'a>(subject: &str, roles: impl IntoIterator<Item = &'a str>) -> Self {
        let roles: Vec<Value> = roles.into_iter().map(|r| Value::String(r.into())).collect();
        Self::new(subject, serde_json::json!({ "sub": subject, "roles": roles }))
    }

    /// Whether the claims give it `role`: listed in a `roles` array, or
    /// named by a `role` string claim.
    pub fn has_role(&self, role: &str) -> bool {
        let listed = self
            .claims
            .get("roles")
            .and_then(Value::as_array)
            .is_some_and(|roles| roles.iter().any(|r| r.as_str() == Some(role)));
        listed || self.claims.get("role").and_then(Value::as_str) == Some(role)
    }
}

/// A command, an event or a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Message {
    pub id: String,
    pub kind: String,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Who submitted the command this message descends from; none when the
    /// shell checks no identities (`auth = "none"`). Set by the shell only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
}

impl Message {
    pub fn new(id: impl Into<String>, kind: &str, payload: Value) -> Self {
        Self {
            id: id.into(),
            kind: kind.into(),
            payload,
            correlation_id: None,
            causation_id: None,
            principal: None,
        }
    }

    pub fn correlated(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// The message as submitted by `principal`.
    pub fn by(mut self, principal: Principal) -> Self {
        self.principal = Some(principal);
        self
    }

    /// The message as the shell records it when a step on `input` emits
    /// it: an id from `new_id` if it has none, `input`'s request and
    /// principal (whatever was there is replaced, so a function cannot act
    /// as someone else), and `input` as its cause. `write` is given it so.
    pub fn stamped(mut self, input: &Message, new_id: impl FnOnce() -> String) -> Self {
        self.stamp(input, new_id);
        self
    }

    /// [`Message::stamped`], in place.
    pub fn stamp(&mut self, input: &Message, new_id: impl FnOnce() -> String) {
        if self.id.is_empty() {
            self.id = new_id();
        }
        self.correlation_id.clone_from(&input.correlation_id);
        self.causation_id = Some(input.id.clone());
        self.principal.clone_from(&input.principal);
    }

    /// The payload field `name` as text, if it is a string.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.payload.get(name).and_then(Value::as_str)
    }
}

/// A stored document with the version the store gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Document {
    pub collection: String,
    pub key: String,
    pub version: u64,
    pub body: Value,
}

impl Document {
    /// A document as first stored: at version 1.
    pub fn new(collection: &str, key: &str, body: Value) -> Self {
        Self { collection: collection.into(), key: key.into(), version: 1, body }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "by")]
pub enum Query {
    /// The document with this key (zero or one).
    Key { collection: String, key: String },
    /// Every document whose top-level `field` equals `value`.
    Field { collection: String, field: String, value: Value },
}

impl Query {
    pub fn collection(&self) -> &str {
        match self {
            Query::Key { collection, .. } | Query::Field { collection, .. } => collection,
        }
    }
}

/// One entry of a lookup plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lookup {
    pub name: String,
    pub query: Query,
}

impl Lookup {
    pub fn by_key(name: &str, collection: &str, key: &str) -> Self {
        Self { name: name.into(), query: Query::Key { collection: collection.into(), key: key.into() } }
    }

    pub fn by_field(name: &str, collection: &str, field: &str, value: Value) -> Self {
        Self {
            name: name.into(),
            query: Query::Field { collection: collection.into(), field: field.into(), value },
        }
    }
}

/// The documents found for one lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Found {
    pub name: String,
    pub documents: Vec<Document>,
}

/// Everything a lookup plan found, by lookup name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Data(pub Vec<Found>);

impl Data {
    /// Documents found for lookup `name` (none if the plan had no such lookup).
    pub fn all(&self, name: &str) -> &[Document] {
        self.0.iter().find(|f| f.name == name).map_or(&[], |f| &f.documents)
    }

    /// The first document found for lookup `name`.
    pub fn first(&self, name: &str) -> Option<&Document> {
        self.all(name).first()
    }

    /// Adds the documents found for a lookup (for tests and fixtures).
    pub fn with(mut self, name: &str, documents: Vec<Document>) -> Self {
        self.0.push(Found { name: name.into(), documents });
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Emit(Vec<Message>),
    Reject(String),
    Ignore,
}

impl Outcome {
    /// Emit a single message.
    pub fn emit(message: Message) -> Self {
        Outcome::Emit(vec![message])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", rename_all_fields = "kebab-case", tag = "op")]
pub enum WriteOp {
    /// Create; a conflict when the key exists.
    Insert { collection: String, key: String, body: Value },
    /// Create or replace.
    Put { collection: String, key: String, body: Value },
    /// Replace only if the stored version is `expected_version`.
    UpdateIfVersion { collection: String, key: String, body: Value, expected_version: u64 },
    /// Remove if present.
    Delete { collection: String, key: String },
    /// Remove only if the stored version is `expected_version`; a conflict
    /// when the document changed or is gone.
    DeleteIfVersion { collection: String, key: String, expected_version: u64 },
}

impl WriteOp {
    pub fn collection(&self) -> &str {
        match self {
            WriteOp::Insert { collection, .. }
            | WriteOp::Put { collection, .. }
            | WriteOp::UpdateIfVersion { collection, .. }
            | WriteOp::Delete { collection, .. }
            | WriteOp::DeleteIfVersion { collection, .. } => collection,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            WriteOp::Insert { key, .. }
            | WriteOp::Put { key, .. }
            | WriteOp::UpdateIfVersion { key, .. }
            | WriteOp::Delete { key, .. }
            | WriteOp::DeleteIfVersion { key, .. } => key,
        }
    }
}

/// What to store for one emitted message, and whom to tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WritePlan {
    #[serde(default)]
    pub ops: Vec<WriteOp>,
    #[serde(default)]
    pub notify: Vec<Message>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolution {
    Pending,
    RespondDocument { collection: String, key: String },
    Respond(Value),
    Fail(String),
}

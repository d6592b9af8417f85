//! The stub host: run a compiled guest component without a database, a bus
//! or a server, and assert on what it decides.
//!
//! A [`Stub`] loads one component (the real `.wasm`, through the same
//! runtime the shell uses) and gives it:
//!
//! - a deterministic `env` ([`StubEnv`]): ids `id-1`, `id-2`, … (or seeded,
//!   UUID-shaped), a clock that stands still at [`DEFAULT_NOW_MS`] until you
//!   move it, and every `env.log` line kept;
//! - an in-memory `store`, seeded with documents ([`Stub::given_document`])
//!   or by letting the function itself process prior messages
//!   ([`Stub::given`]).
//!
//! Then run a full LOW cycle ([`Stub::when`], the shell's own
//! [`run_cycle`](crate::executor::run_cycle)) or any phase on its own
//! ([`Stub::meta`], [`Stub::lookup`], [`Stub::operate`], [`Stub::write`],
//! [`Stub::resolve`]); everything comes back as plain
//! [`low_contract`] values. The `then_*` methods of [`Run`] assert with
//! partial matching (see [`matching`]) and panic with a diff.
//!
//! ```
//! use host::stub::Stub;
//! use low_contract::{Message, json};
//!
//! # fn main() -> Result<(), host::stub::StubError> {
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../modules/invite-customer.wasm");
//! # if !std::path::Path::new(path).exists() { eprintln!("skipped: run `make guest` first"); return Ok(()); }
//! let stub = Stub::load(path)?
//!     .given_document("invites", "old@example.com", json!({ "email": "old@example.com", "customer-id": "c-7" }));
//!
//! // A new email: a fresh customer id, and the email is claimed.
//! stub.when(Message::new("cmd-1", "InviteCustomer", json!({ "email": "new@example.com" })))?
//!     .then_emits(json!([{ "kind": "CustomerInvited",
//!                          "payload": { "customer-id": "<id:customer>", "email": "new@example.com" } }]))
//!     .then_writes(json!([{ "op": "insert", "collection": "invites", "key": "new@example.com",
//!                           "body": { "customer-id": "<id:customer>" } }]));
//!
//! // An empty email is refused; the requester is told why.
//! stub.when(Message::new("cmd-2", "InviteCustomer", json!({ "email": "" })))?
//!     .then_rejects("Email is required")
//!     .then_notifies(json!([{ "kind": "Rejected", "payload": { "reason": "Email is required" } }]));
//! # Ok(())
//! # }
//! ```
//!
//! The stub is synchronous (it drives its own single-threaded async
//! runtime): call it from plain `#[test]`s, not from async code.

mod env;
pub mod matching;
pub mod scenario;

pub use env::{DEFAULT_NOW_MS, Ids, LogLine, StubEnv};
pub use scenario::{Report, ScenarioError};

use crate::backend::memory::MemoryBus;
use crate::backend::memory::MemoryStore;
use crate::backend::{Commit, Store, StoreError};
use crate::executor::{self, StepError};
use crate::registry::{Functions, RegistryError};
use crate::runtime::{Function, GuestError, HostEnv, Limits, LoadError, Runtime, StepLimits};
use low_contract::{Data, Document, Lookup, Message, Meta, Outcome, Resolution, Value, WriteOp, WritePlan};
use matching::Bindings;
use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What can go wrong driving a guest in the stub.
#[derive(Debug, thiserror::Error)]
pub enum StubError {
    #[error("cannot read the component {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The cycle failed: a guest error, or a plan the shell would refuse.
    #[error(transparent)]
    Step(#[from] StepError),
    /// Committing the cycle's writes failed (a conflict, say).
    #[error("commit failed: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{0}")]
    Setup(String),
}

/// One loaded component with its own env and store.
pub struct Stub {
    rt: tokio::runtime::Runtime,
    env: Arc<StubEnv>,
    function: Arc<Function>,
    /// Components loaded for what they declare (see [`Stub::with_peer`]).
    peers: Vec<Arc<Function>>,
    functions: Functions,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Stub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stub").field("function", &self.function).finish_non_exhaustive()
    }
}

/// The limits the stub runs guests with: generous deadlines (tests share
/// busy machines), the shell's memory limit and step caps (lookups,
/// documents per `find`, events, write ops, notifications), few instances.
pub fn limits() -> Limits {
    let shell = Limits::default();
    Limits {
        deadline: Duration::from_secs(10),
        memory_bytes: shell.memory_bytes,
        instances: 4,
        executions_per_instance: shell.executions_per_instance,
        step: StepLimits { deadline: Duration::from_secs(30), ..shell.step },
    }
}

impl Stub {
    /// Loads the component at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, StubError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|error| StubError::Read { path: path.into(), error })?;
        Self::from_bytes(&bytes)
    }

    /// Loads a component from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StubError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StubError::Setup(format!("cannot start an async runtime: {e}")))?;
        let env = Arc::new(StubEnv::default());
        let host_env: Arc<dyn HostEnv> = env.clone();
        let runtime =
            Runtime::with_env(limits(), host_env).map_err(|e| StubError::Setup(format!("{e:#}")))?;
        let function = rt.block_on(runtime.load(bytes))?;
        let functions = Functions::new([Arc::clone(&function)])?;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
        Ok(Self { rt, env, function, peers: vec![], functions, store })
    }

    /// Loads another component next to the one under test, for what it
    /// declares: a lookup may then read its collections (the shell refuses
    /// lookups of collections no loaded function declares). Only the first
    /// component is ever run.
    pub fn with_peer(mut self, path: impl AsRef<Path>) -> Result<Self, StubError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|error| StubError::Read { path: path.into(), error })?;
        let runtime = Runtime::with_env(limits(), Arc::new(StubEnv::default()))
            .map_err(|e| StubError::Setup(format!("{e:#}")))?;
        let peer = self.rt.block_on(runtime.load(&bytes))?;
        self.peers.push(peer);
        self.functions = Functions::new(self.peers.iter().cloned().chain([Arc::clone(&self.function)]))?;
        Ok(self)
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// What the component declared when it was loaded.
    pub fn meta(&self) -> &Meta {
        &self.function.meta
    }

    /// The loaded function (its version, say).
    pub fn function(&self) -> &Arc<Function> {
        &self.function
    }

    /// The env: its log, its clock, its ids.
    pub fn env(&self) -> &StubEnv {
        &self.env
    }

    /// The store the guest reads and the stub commits to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // ---- given ----------------------------------------------------------

    /// Ids from now on come from `ids` (sequential by default).
    pub fn with_ids(self, ids: Ids) -> Self {
        self.env.set_ids(ids);
        self
    }

    /// The clock reads `now_ms` until moved.
    pub fn at(self, now_ms: u64) -> Self {
        self.env.set_now_ms(now_ms);
        self
    }

    /// Stores a document (at version 1, or one more than a document it replaces).
    pub fn given_document(self, collection: &str, key: &str, body: Value) -> Self {
        self.put_document(collection, key, body);
        self
    }

    /// Stores a document; see [`Stub::given_document`].
    pub fn put_document(&self, collection: &str, key: &str, body: Value) {
        let op = WriteOp::Put { collection: collection.into(), key: key.into(), body };
        // A put into the memory store cannot conflict; say so if it ever does.
        if let Err(e) = self.block_on(self.store.commit(Commit { ops: vec![op], ..Commit::default() })) {
            tracing::error!("seeding {collection}/{key} failed: {e}");
        }
    }

    /// Lets the function process `messages` first (full cycles, committed),
    /// as if they had been delivered earlier: the store then holds what it wrote.
    pub fn given(self, messages: impl IntoIterator<Item = Message>) -> Result<Self, StubError> {
        for message in messages {
            self.when(message)?;
        }
        Ok(self)
    }

    /// The document stored under `collection`/`key`.
    pub fn document(&self, collection: &str, key: &str) -> Result<Option<Document>, StubError> {
        Ok(self.block_on(self.store.get(collection, key))?)
    }

    /// Every document of `collection`, in key order.
    pub fn documents(&self, collection: &str) -> Result<Vec<Document>, StubError> {
        Ok(self.block_on(self.store.list(collection, None, usize::MAX))?)
    }

    // ---- when: the full cycle -------------------------------------------

    /// Runs one full LOW cycle for `input` (lookup, the lookup plan against
    /// the store, operate, write for each emitted message) exactly as the
    /// shell does, then commits its writes to the stub's store.
    ///
    /// An input without a correlation id gets its own id, as the shell gives
    /// a command; notifications are only kept for correlated inputs.
    pub fn when(&self, input: Message) -> Result<Run, StubError> {
        let run = self.cycle(input)?;
        let commit = Commit { ops: run.writes.clone(), notify: run.notify.clone(), ..Commit::default() };
        self.block_on(self.store.commit(commit))?;
        Ok(run)
    }

    /// Like [`Stub::when`], but commits nothing.
    pub fn cycle(&self, mut input: Message) -> Result<Run, StubError> {
        if input.correlation_id.is_none() {
            input.correlation_id = Some(input.id.clone());
        }
        let logged = self.env.logs().len();
        let executor::Decided { cycle, decision } =
            self.block_on(executor::run_cycle(&self.functions, &self.function, &self.store, &input))?;
        let logs = self.env.logs().split_off(logged);
        Ok(Run {
            input,
            lookups: cycle.lookups,
            data: cycle.data,
            outcome: decision.outcome,
            plans: decision.plans,
            events: cycle.commit.events.into_iter().map(|e| e.message).collect(),
            writes: cycle.commit.ops,
            notify: cycle.commit.notify,
            logs,
            bindings: RefCell::default(),
        })
    }

    // ---- each phase on its own ------------------------------------------

    /// Calls `meta` on a fresh instance.
    pub fn call_meta(&self) -> Result<Meta, StubError> {
        self.block_on(async {
            let mut call = self.function.start(None).await?;
            Ok(call.meta().await?)
        })
    }

    /// Calls `lookup` (the guest may read the store while it runs).
    pub fn lookup(&self, input: &Message) -> Result<Vec<Lookup>, StubError> {
        self.block_on(async {
            let mut call = self.function.start(Some(Arc::clone(&self.store))).await?;
            Ok(call.lookup(input).await?)
        })
    }

    /// Runs a lookup plan against the store, as the shell would before
    /// `operate`, within the same caps (lookups per plan, documents per `find`).
    pub fn run_lookups(&self, plan: &[Lookup]) -> Result<Data, StubError> {
        Ok(self.block_on(executor::read_lookups(&self.function, &self.store, plan))?)
    }

    /// Calls `operate` with `data`, which need not come from the store.
    pub fn operate(&self, input: &Message, data: &Data) -> Result<Outcome, StubError> {
        self.block_on(async {
            let mut call = self.function.start(None).await?;
            Ok(call.operate(input, data).await?)
        })
    }

    /// Calls `write` for one emitted message.
    pub fn write(&self, output: &Message) -> Result<WritePlan, StubError> {
        self.block_on(async {
            let mut call = self.function.start(None).await?;
            Ok(call.write(output).await?)
        })
    }

    /// Calls a resolver's `resolve` with the notifications seen so far.
    pub fn resolve(&self, command: &Message, seen: &[Message]) -> Result<Resolution, StubError> {
        self.block_on(async {
            let mut call = self.function.start(None).await?;
            Ok(call.resolve(command, seen).await?)
        })
    }
}

/// Everything one full cycle did, as plain values.
#[derive(Debug, Clone)]
pub struct Run {
    /// The input as the function saw it (with its correlation id).
    pub input: Message,
    /// The lookup plan, and what running it found.
    pub lookups: Vec<Lookup>,
    pub data: Data,
    pub outcome: Outcome,
    /// One write plan per emitted message, as `write` returned it.
    pub plans: Vec<WritePlan>,
    /// The emitted messages as appended (correlation and causation set);
    /// none for a projector, whose output is not appended.
    pub events: Vec<Message>,
    /// Every write op of every plan, in order.
    pub writes: Vec<WriteOp>,
    /// Notifications for the requester: the plans' and, on a rejection, `Rejected`.
    pub notify: Vec<Message>,
    /// What the function logged during the cycle.
    pub logs: Vec<LogLine>,
    /// Placeholders bound by the `then_*` assertions so far.
    bindings: RefCell<Bindings>,
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| Value::String(format!("<unserializable: {e}>")))
}

impl Run {
    /// The emitted messages (for a projector, its new states), whether appended or not.
    pub fn emitted(&self) -> &[Message] {
        match &self.outcome {
            Outcome::Emit(messages) => messages,
            _ => &[],
        }
    }

    /// Checks `actual` against `expected` (partial matching, placeholders
    /// bound across this run's checks); the diff when they differ.
    pub fn check(&self, what: &str, expected: &Value, actual: &Value) -> Result<(), String> {
        matching::check(expected, actual, &mut self.bindings.borrow_mut())
            .map_err(|diff| format!("{what} differ:\n{diff}"))
    }

    #[track_caller]
    fn assert(&self, what: &str, expected: &Value, actual: &Value) -> &Self {
        if let Err(e) = self.check(what, expected, actual) {
            panic!("{e}");
        }
        self
    }

    /// The lookup plan matches `expected` (a JSON array of lookups).
    #[track_caller]
    pub fn then_looks_up(&self, expected: Value) -> &Self {
        self.assert("lookups", &expected, &json(&self.lookups))
    }

    /// The outcome is `Emit` and the emitted messages match `expected` (a JSON array).
    #[track_caller]
    pub fn then_emits(&self, expected: Value) -> &Self {
        self.assert("outcome", &Value::from("emit"), &outcome_kind(&self.outcome));
        self.assert("emitted messages", &expected, &json(&self.emitted()))
    }

    /// The outcome is `Reject` with this reason.
    #[track_caller]
    pub fn then_rejects(&self, reason: &str) -> &Self {
        self.assert("outcome", &json(&Outcome::Reject(reason.into())), &json(&self.outcome))
    }

    /// The outcome is `Ignore`.
    #[track_caller]
    pub fn then_ignores(&self) -> &Self {
        self.assert("outcome", &json(&Outcome::Ignore), &json(&self.outcome))
    }

    /// The write ops of all plans match `expected` (a JSON array).
    #[track_caller]
    pub fn then_writes(&self, expected: Value) -> &Self {
        self.assert("writes", &expected, &json(&self.writes))
    }

    /// The notifications match `expected` (a JSON array).
    #[track_caller]
    pub fn then_notifies(&self, expected: Value) -> &Self {
        self.assert("notifications", &expected, &json(&self.notify))
    }

    /// The log lines match `expected` (a JSON array of `{ level, message }`).
    #[track_caller]
    pub fn then_logs(&self, expected: Value) -> &Self {
        self.assert("logs", &expected, &json(&self.logs))
    }
}

/// `"emit"`, `"reject"` or `"ignore"`.
pub(crate) fn outcome_kind(outcome: &Outcome) -> Value {
    Value::from(match outcome {
        Outcome::Emit(_) => "emit",
        Outcome::Reject(_) => "reject",
        Outcome::Ignore => "ignore",
    })
}

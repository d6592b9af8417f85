//! Native unit tests of a function's logic: given / when / then, and the
//! deterministic stand-ins for the shell's capabilities underneath.
//!
//! [`Given`] runs one LOW cycle the way the shell does — `lookup` (with the
//! given documents readable), the lookup plan against them, `operate`, and
//! `write` for each emitted message — with a [`TestEnv`]: ids `id-1`,
//! `id-2`, … in the order the function draws them, a fixed clock, the log
//! kept. [`Then`] holds what each phase returned and asserts on it: exactly
//! (`then_emits`, `then_rejects`, `then_ignores`, `then_writes`, …) or, opt
//! in, partially (`then_emits_matching(json!([…]))`: the expected JSON is a
//! subset of the actual). A failure panics with expected against actual.
//! Resolvers get [`Given::notifications`] and [`Resolved`].
//!
//! ```
//! use low_contract::testing::Given;
//! use low_contract::*;
//!
//! /// Greets a name once.
//! struct Greeter;
//!
//! impl Function for Greeter {
//!     fn meta() -> Meta {
//!         Meta::handler("greeter", [COMMANDS_TOPIC], "greetings").model(ModelSpec {
//!             name: "Greeted".into(),
//!             collection: "greeted".into(),
//!             key: "name".into(),
//!             fields: vec![FieldSpec::new("name", FieldKind::Text, true)],
//!             public: false,
//!             authenticated: false,
//!             description: None,
//!         })
//!     }
//!     fn lookup(input: &Message, _store: &dyn StoreRead, _env: &dyn Env) -> Vec<Lookup> {
//!         input.text("name").map(|name| Lookup::by_key("greeted", "greeted", name)).into_iter().collect()
//!     }
//!     fn operate(input: &Message, data: &Data, env: &dyn Env) -> Outcome {
//!         match (input.text("name"), data.first("greeted")) {
//!             (None, _) => Outcome::Reject("Name is required".into()),
//!             (Some(name), Some(_)) => Outcome::Reject(format!("{name} was already greeted")),
//!             (Some(name), None) => Outcome::emit(env.message("Greeted", json!({ "name": name }))),
//!         }
//!     }
//!     fn write(output: &Message, _env: &dyn Env) -> WritePlan {
//!         let name = output.text("name").unwrap_or_default();
//!         let body = output.payload.clone();
//!         let claim = WriteOp::Insert { collection: "greeted".into(), key: name.into(), body };
//!         WritePlan { ops: vec![claim], notify: vec![] }
//!     }
//! }
//!
//! let greet = |name: &str| Message::new("c-1", "Greet", json!({ "name": name }));
//!
//! // A new name is greeted, and claimed.
//! Given::<Greeter>::nothing()
//!     .when(greet("Ada"))
//!     .then_looks_up([Lookup::by_key("greeted", "greeted", "Ada")])
//!     .then_emits([Message::new("id-1", "Greeted", json!({ "name": "Ada" }))])
//!     .then_writes([WriteOp::Insert {
//!         collection: "greeted".into(),
//!         key: "Ada".into(),
//!         body: json!({ "name": "Ada" }),
//!     }]);
//!
//! // Partially: only what the test is about.
//! Given::<Greeter>::nothing()
//!     .when(greet("Ada"))
//!     .then_emits_matching(json!([{ "kind": "Greeted" }]))
//!     .then_writes_matching(json!([{ "op": "insert", "key": "Ada" }]));
//!
//! // A name greeted before is refused; nothing is stored.
//! Given::<Greeter>::documents([Document::new("greeted", "Ada", json!({ "name": "Ada" }))])
//!     .when(greet("Ada"))
//!     .then_rejects("Ada was already greeted")
//!     .then_writes([]);
//! ```

mod given;
mod matching;

pub use given::{Given, GivenNotifications, Resolved, Then};

use crate::function::{Env, Level, StoreRead};
use crate::types::{Data, Document, Found, Lookup, Query};
use serde_json::Value;
use std::cell::{Cell, RefCell};

/// Sequential ids (`id-1`, `id-2`, …), a fixed clock, and the log lines kept.
#[derive(Debug)]
pub struct TestEnv {
    next_id: Cell<u64>,
    /// What `now_ms` answers.
    pub now_ms: u64,
    logs: RefCell<Vec<(Level, String)>>,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self { next_id: Cell::new(1), now_ms: 1_700_000_000_000, logs: RefCell::default() }
    }
}

impl TestEnv {
    /// The lines logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs.borrow().clone()
    }
}

impl Env for TestEnv {
    fn new_id(&self) -> String {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        format!("id-{id}")
    }

    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_owned()));
    }
}

/// A store seeded with documents.
#[derive(Debug, Default, Clone)]
pub struct TestStore {
    pub documents: Vec<Document>,
}

impl TestStore {
    /// Adds a document at version 1.
    pub fn with(mut self, collection: &str, key: &str, body: Value) -> Self {
        self.documents.push(Document::new(collection, key, body));
        self
    }

    /// What the shell would hand to `operate` for this lookup plan: for each
    /// lookup, under its name, the document with the key (zero or one) or
    /// every document whose top-level field equals the value.
    pub fn data(&self, plan: &[Lookup]) -> Data {
        let documents = |query: &Query| match query {
            Query::Key { collection, key } => self.document(collection, key).into_iter().collect(),
            Query::Field { collection, field, value } => self.matching(collection, field, value),
        };
        Data(plan.iter().map(|l| Found { name: l.name.clone(), documents: documents(&l.query) }).collect())
    }

    fn document(&self, collection: &str, key: &str) -> Option<Document> {
        self.documents.iter().find(|d| d.collection == collection && d.key == key).cloned()
    }

    fn matching(&self, collection: &str, field: &str, value: &Value) -> Vec<Document> {
        self.documents
            .iter()
            .filter(|d| d.collection == collection && d.body.get(field) == Some(value))
            .cloned()
            .collect()
    }
}

impl StoreRead for TestStore {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, String> {
        Ok(self.document(collection, key))
    }

    fn find(&self, collection: &str, field: &str, value: &Value) -> Result<Vec<Document>, String> {
        Ok(self.matching(collection, field, value))
    }
}

//! The traits a business function implements, and the capabilities it gets.

use crate::types::{Data, Document, Lookup, Message, Meta, Outcome, Resolution, WritePlan};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Severity of an [`Env::log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// What the shell supplies to every function: ids, time and logging. A
/// function takes none of these from anywhere else, so the events it emits
/// carry everything needed to replay them.
pub trait Env {
    fn new_id(&self) -> String;
    fn now_ms(&self) -> u64;
    fn log(&self, level: Level, message: &str);

    /// A new message with a fresh id; the shell fills in correlation and causation.
    fn message(&self, kind: &str, payload: Value) -> Message {
        Message::new(self.new_id(), kind, payload)
    }
}

/// Read-only store access during `lookup`, for lookups that depend on other
/// lookups. Prefer returning a lookup plan: it is cheaper and testable as data.
pub trait StoreRead {
    fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, String>;
    fn find(&self, collection: &str, field: &str, value: &Value) -> Result<Vec<Document>, String>;
}

/// A handler or a projector: the LOW pattern.
pub trait Function {
    /// Name, kind, topics, commands and models.
    fn meta() -> Meta;
    /// Say what data `operate` needs. All reads happen here.
    fn lookup(input: &Message, store: &dyn StoreRead, env: &dyn Env) -> Vec<Lookup>;
    /// Decide, purely: emit events, reject, or ignore.
    fn operate(input: &Message, data: &Data, env: &dyn Env) -> Outcome;
    /// Say what to store for one emitted message.
    fn write(output: &Message, env: &dyn Env) -> WritePlan;
}

/// Ties a request to its response.
pub trait Resolver {
    fn meta() -> Meta;
    /// Given the command and every notification seen for it so far, answer.
    fn resolve(command: &Message, seen: &[Message], env: &dyn Env) -> Resolution;
}

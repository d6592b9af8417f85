//! Typed payloads: a command's or an event's kind as a Rust type, so that
//! the function that emits it and the ones that consume it share one
//! definition, and a misspelt kind or field is a build error rather than a
//! message nobody handles.
//!
//! ```
//! use low_contract::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! #[serde(rename_all = "kebab-case")]
//! struct Greeted { name: String }
//!
//! impl Payload for Greeted {
//!     const KIND: &'static str = "Greeted";
//! }
//!
//! let env = testing::TestEnv::default();
//! let message = (&env as &dyn Env).event(&Greeted { name: "Ada".into() });
//! assert_eq!(message.kind, "Greeted");
//! assert_eq!(message.payload, json!({ "name": "Ada" }));
//! assert_eq!(message.decode::<Greeted>(), Ok(Greeted { name: "Ada".into() }));
//! assert!(Message::new("m", "Greeted", json!({ "nom": "Ada" })).decode::<Greeted>().is_err());
//! ```

use crate::function::Env;
use crate::types::{CommandSpec, Message};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The payload of one kind of message.
pub trait Payload: Serialize + DeserializeOwned {
    /// The message kind, e.g. `CustomerInvited`.
    const KIND: &'static str;
}

impl Message {
    /// A message of `P`'s kind carrying `payload`.
    pub fn of<P: Payload>(id: impl Into<String>, payload: &P) -> Self {
        Message::new(id, P::KIND, to_json(payload))
    }

    /// Whether this message is of `P`'s kind.
    pub fn is<P: Payload>(&self) -> bool {
        self.kind == P::KIND
    }

    /// The payload as `P`; an error saying what does not fit when the
    /// message is of another kind or its payload is not a `P`.
    pub fn decode<P: Payload>(&self) -> Result<P, String> {
        if self.kind != P::KIND {
            return Err(format!("expected a `{}`, got a `{}`", P::KIND, self.kind));
        }
        P::deserialize(&self.payload).map_err(|e| format!("`{}`: {e}", P::KIND))
    }
}

impl dyn Env + '_ {
    /// A new message of `P`'s kind with a fresh id; the shell fills in
    /// correlation and causation.
    pub fn event<P: Payload>(&self, payload: &P) -> Message {
        Message::of(self.new_id(), payload)
    }
}

impl CommandSpec {
    /// The command `P` (its kind is the command's name), answered with the
    /// model `returns`.
    pub fn of<P: Payload>(returns: &str) -> Self {
        CommandSpec::new(P::KIND, returns)
    }
}

/// A payload as JSON. Serde's derives only fail on maps with non-string
/// keys, which JSON cannot hold: a programming error, reported as a trap.
fn to_json<P: Serialize>(payload: &P) -> serde_json::Value {
    match serde_json::to_value(payload) {
        Ok(value) => value,
        Err(e) => panic!("a payload must be JSON (string map keys only): {e}"),
    }
}

//! The LOW contract as plain Rust.
//!
//! `wit/functions.wit` is the contract between a business function and the
//! shell. This crate mirrors its types as ordinary Rust values (payloads and
//! documents as [`serde_json::Value`]) so that:
//!
//! - a function's logic is plain Rust, unit-tested natively with
//!   [`testing::Given`] (given documents, when a message, then the outcome,
//!   writes, notifications) — no WebAssembly involved;
//! - the same logic becomes a component with one line,
//!   [`export_function!`] or [`export_resolver!`], when built for
//!   `wasm32-wasip2`;
//! - the shell speaks the same types once it has lifted them out of a component.
//!
//! ```
//! use low_contract::*;
//! use serde_json::json;
//!
//! struct Greeter;
//!
//! impl Function for Greeter {
//!     fn meta() -> Meta {
//!         Meta::handler("greeter", ["commands"], "greetings")
//!     }
//!     fn lookup(_input: &Message, _store: &dyn StoreRead, _env: &dyn Env) -> Vec<Lookup> {
//!         vec![]
//!     }
//!     fn operate(input: &Message, _data: &Data, env: &dyn Env) -> Outcome {
//!         match input.payload["name"].as_str() {
//!             Some(name) => Outcome::emit(env.message("Greeted", json!({ "name": name }))),
//!             None => Outcome::Reject("Name is required".into()),
//!         }
//!     }
//!     fn write(_output: &Message, _env: &dyn Env) -> WritePlan {
//!         WritePlan::default()
//!     }
//! }
//!
//! testing::Given::<Greeter>::nothing()
//!     .when(Message::new("c-1", "Greet", json!({ "name": "Ada" })))
//!     .then_emits([Message::new("id-1", "Greeted", json!({ "name": "Ada" }))]);
//! testing::Given::<Greeter>::nothing()
//!     .when(Message::new("c-2", "Greet", json!({})))
//!     .then_rejects("Name is required");
//! ```
//!
//! # Changing the contract
//!
//! Each type exists in three places, and only three: the WIT
//! (`wit/functions.wit`), its plain mirror here (`types.rs`), and the one
//! mapping between them, [`wit_conversions!`], which both the guest SDK and
//! the shell's runtime expand over their generated bindings. Adding a field
//! (or a case) means adding it to all three; the mapping destructures and
//! builds every record exhaustively, so forgetting one is a compile error
//! there, not a value silently dropped at the boundary. Then `make guest`
//! rebuilds the components against the new WIT.

// Lets the generated guest bindings name this crate the same way from inside
// and outside it.
extern crate self as low_contract;

mod function;
mod mapping;
mod payload;
mod types;

/// Support for [`wit_conversions!`]; not part of the API.
#[doc(hidden)]
pub mod __mapping {
    pub use crate::mapping::{json_text, parse_json};
}

pub mod guest;
pub mod testing;

pub use function::{Env, Function, Level, Resolver, StoreRead};
pub use payload::Payload;
pub use types::*;

/// Re-exported so guests and hosts agree on one JSON type.
pub use serde_json::{self, Value, json};

//! lowshell: runs event-driven CQRS business functions, written to the LOW
//! pattern (lookup, operate, write), as WebAssembly components.
//!
//! - [`runtime`] — wasmtime: loads components, runs one fresh instance per step.
//! - [`registry`] — the live set of functions, swappable while serving.
//! - [`executor`] — the LOW cycle of one message; names no technology.
//! - [`bus`] / [`store`] — delivery and storage, behind traits.
//! - [`responses`] — ties a request to its answer through a resolver.
//! - [`graphql`] — the schema derived from the functions, over HTTP.
//! - [`metrics`] / [`readiness`] — `/metrics` and `/readyz`.
//! - [`shell`] — wires a [`config::Project`] together.

pub mod bus;
pub mod config;
pub mod executor;
pub mod graphql;
pub mod metrics;
pub mod readiness;
pub mod registry;
pub mod responses;
pub mod runtime;
pub mod shell;
pub mod store;

pub use config::Project;
pub use shell::Shell;

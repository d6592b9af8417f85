//! lowshell: runs event-driven CQRS business functions, written to the LOW
//! pattern (lookup, operate, write), as WebAssembly components.
//!
//! The modules, by concern:
//!
//! - [`runtime`] — wasmtime: loads components, runs one fresh instance per step.
//! - [`registry`] — the live set of functions, swappable while serving.
//! - [`executor`] — the LOW cycle of one message; names no technology.
//! - [`backend`] — the bus and the store behind traits, with their
//!   [`memory`](backend::memory) and [`postgres`](backend::postgres) implementations.
//! - [`deploy`] — hot swap: validate and swap, by API, by file, across shells.
//! - [`responses`] — ties a request to its answer through a resolver.
//! - [`graphql`] — the schema derived from the functions.
//! - [`http`] — the routes: GraphQL, health, metrics (and the admin API).
//! - [`metrics`] — what the shell counts, for `/metrics`.
//! - [`shell`] — wires a [`config::Project`] together.
//! - [`stub`] — runs one guest in isolation, for tests and scenario files.

pub mod backend;
pub mod config;
pub mod deploy;
pub mod executor;
pub mod graphql;
pub mod http;
pub mod maps;
pub mod metrics;
pub mod registry;
pub mod responses;
pub mod runtime;
pub mod scaffold;
pub mod shell;
pub mod stub;

pub use config::Project;
pub use shell::Shell;

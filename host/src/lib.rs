//! lowshell: runs event-driven CQRS business functions, written to the LOW
//! pattern (lookup, operate, write), as WebAssembly components.
//!
//! - [`runtime`] — wasmtime: loads components, runs one fresh instance per step.
//! - [`registry`] — the live set of functions, swappable while serving.
//! - [`executor`] — the LOW cycle of one message; names no technology.
//! - [`bus`] / [`store`] — delivery and storage, behind traits.
//! - [`postgres`] — pool and migrations of the Postgres bus and store.
//! - [`cluster`] — deploys recorded in Postgres, reaching every shell.
//! - [`responses`] — ties a request to its answer through a resolver.
//! - [`graphql`] — the schema derived from the functions, over HTTP.
//! - [`deploy`] / [`watch`] / [`admin`] — hot swap: by API, by file, over HTTP.
//! - [`metrics`] / [`readiness`] — `/metrics` and `/readyz`.
//! - [`shell`] — wires a [`config::Project`] together.
//! - [`stub`] — runs one guest in isolation, for tests and scenario files.

pub mod admin;
pub mod bus;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod executor;
pub mod graphql;
pub mod metrics;
pub mod postgres;
pub mod readiness;
pub mod registry;
pub mod replay;
pub mod responses;
pub mod runtime;
pub mod shell;
pub mod store;
pub mod stub;
pub mod watch;

pub use config::Project;
pub use shell::Shell;

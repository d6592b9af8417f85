//! The Postgres backend: the event log is the bus, documents and
//! checkpoints the store, and deploys are recorded for every shell on the
//! database.
//!
//! - [`database`]: the pool, dedicated connections, leases and migrations;
//! - [`bus`] / [`store`]: the [`Bus`](super::Bus) and
//!   [`Store`](super::Store) over them;
//! - [`deployments`]: deploys reaching every shell;
//! - [`replay`]: `host replay --in-place`, rebuilding read models from the
//!   log with the shells stopped;
//! - [`rebuild`]: `host replay`, rebuilding them while the shells serve (a
//!   new generation, then a switch), and its dry run.

pub mod bus;
pub mod database;
pub mod deployments;
pub mod rebuild;
pub mod replay;
pub mod store;

pub use bus::PgBus;
pub use database::Database;
pub use deployments::PgDeployments;
pub use store::PgStore;

use super::Backend;
use std::sync::Arc;

/// Connects to `url`, migrates the schema, and starts the bus (its
/// listener and lag reporter) and the deployments' listener.
pub async fn open(url: &str) -> anyhow::Result<Backend> {
    let db = Arc::new(Database::connect(url).await?);
    let bus = PgBus::start(Arc::clone(&db));
    Ok(Backend {
        bus: Arc::new(bus.clone()),
        store: Arc::new(PgStore::with_bus(Arc::clone(&db), bus)),
        reads: Arc::new(PgStore::for_reads(Arc::clone(&db))),
        deployments: Arc::new(PgDeployments::start(db)),
    })
}

//! Where the event log, the documents and the deployments live. The bus
//! and the store are two faces of one backend — the store appends the
//! events the bus delivers — so one project key (`backend`) chooses both:
//!
//! - [`memory`]: in the process, nothing durable, one shell;
//! - [`postgres`]: durable, shared by every shell on the database.
//!
//! The rest of the shell sees only the traits: [`Bus`] (delivery),
//! [`Store`] (documents, commits, parked events) and
//! [`Deployments`] (which version of each function runs).

pub mod bus;
pub mod memory;
pub mod overlay;
pub mod postgres;
pub mod store;

pub use bus::{
    Answer, Bus, BusError, CommandChain, Delivery, Holder, NotificationSink, Partition, Requests, Submitted,
    Subscription, fingerprint,
};
pub use store::{Chained, Checkpoint, Commit, Event, Parked, Store, StoreError, Written};

use crate::config::{BackendKind, Project};
use crate::deploy::Deployments;
use std::sync::Arc;

/// One backend, opened: its bus, its store and its deployments.
#[derive(Clone)]
pub struct Backend {
    pub bus: Arc<dyn Bus>,
    /// The write path: steps' lookups and commits.
    pub store: Arc<dyn Store>,
    /// The read path: the API's queries and the responses' documents,
    /// bounded apart (Postgres: its own pool; memory: the same store).
    pub reads: Arc<dyn Store>,
    pub deployments: Arc<dyn Deployments>,
}

impl Backend {
    /// The backend the project names; for Postgres, connected and migrated.
    pub async fn open(project: &Project) -> anyhow::Result<Self> {
        match project.backend {
            BackendKind::Memory => Ok(memory::open()),
            BackendKind::Postgres => postgres::open(&project.database_url()?).await,
        }
    }
}

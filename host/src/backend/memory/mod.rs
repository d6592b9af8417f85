//! The in-process backend: a bus of channels and a store of maps. Nothing
//! is durable; deploys reach this shell only.

mod bus;
mod collection;
mod store;

pub use bus::MemoryBus;
pub use store::MemoryStore;

use super::Backend;
use crate::deploy::LocalDeployments;
use std::sync::Arc;

/// A fresh, empty memory backend.
pub fn open() -> Backend {
    let bus = MemoryBus::new();
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new(bus.clone()));
    Backend { bus: Arc::new(bus), reads: store.clone(), store, deployments: Arc::new(LocalDeployments) }
}

//! Deploying a new version of a function while the shell serves: compile and
//! validate off the request path, then swap atomically. A bad version is
//! refused with the reason and the running one keeps serving.

use crate::registry::{Registry, RegistryError, Swapped};
use crate::runtime::{LoadError, Runtime};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("refused: {0}")]
    Load(#[from] LoadError),
    #[error("refused: the component is `{got}`, not `{expected}`")]
    WrongName { expected: String, got: String },
    #[error("refused: {0}")]
    Registry(#[from] RegistryError),
}

#[derive(Clone)]
pub struct Deployer {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
}

impl Deployer {
    pub fn new(runtime: Arc<Runtime>, registry: Arc<Registry>) -> Self {
        Self { runtime, registry }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Loads `bytes` as the next version of `name` and swaps it in. The
    /// same bytes as the running version change nothing.
    pub async fn deploy(&self, name: &str, bytes: &[u8], force: bool) -> Result<Swapped, DeployError> {
        let refused = |e: DeployError| {
            tracing::warn!(function = name, "deploy refused, the running version keeps serving: {e}");
            crate::metrics::swap(name, false);
            e
        };
        let function = self.runtime.load(bytes).await.map_err(|e| refused(e.into()))?;
        if function.name() != name {
            return Err(refused(DeployError::WrongName {
                expected: name.into(),
                got: function.name().into(),
            }));
        }
        if let Some(running) = self.registry.current().get(name).filter(|f| f.version == function.version) {
            tracing::info!(function = name, version = %running.version, "already running this version");
            return Ok(Swapped {
                name: name.into(),
                old: Some(Arc::clone(running)),
                new: Arc::clone(running),
            });
        }
        let swapped = self.registry.swap(function, force).await.map_err(|e| refused(e.into()))?;
        crate::metrics::swap(name, true);
        log_swap("deployed", &swapped);
        Ok(swapped)
    }

    /// Swaps `name` back to the version it had before its last deploy.
    pub async fn rollback(&self, name: &str) -> Result<Swapped, DeployError> {
        let swapped = self.registry.rollback(name).await?;
        crate::metrics::swap(name, true);
        log_swap("rolled back", &swapped);
        Ok(swapped)
    }
}

fn log_swap(what: &str, swapped: &Swapped) {
    match &swapped.old {
        Some(old) => {
            tracing::info!(function = %swapped.name, "{what}: {} → {}", old.version, swapped.new.version)
        }
        None => tracing::info!(function = %swapped.name, "{what}: new function at {}", swapped.new.version),
    }
}

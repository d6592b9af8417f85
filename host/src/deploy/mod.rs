//! Deploying a new version of a function while the shell serves: compile and
//! validate off the request path, then swap atomically. A bad version is
//! refused with the reason and the running one keeps serving.
//!
//! Where several shells share a database, a deploy is first recorded through
//! [`Deployments`] (the source of truth), then swapped in locally; every
//! other shell hears of it and switches too ([`Deployer::sync`]).

pub mod admin;
pub mod dev;
pub mod shadow;
pub mod watch;

use crate::registry::{Functions, Registry, RegistryError, Swapped};
use crate::runtime::{Function, LoadError, Runtime, Version};
use async_trait::async_trait;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("refused: {0}")]
    Load(#[from] LoadError),
    #[error("refused: the component is `{got}`, not `{expected}`")]
    WrongName { expected: String, got: String },
    #[error("refused: {0}")]
    Registry(#[from] RegistryError),
    #[error("refused: the GraphQL schema cannot be built with this version: {0}")]
    Schema(String),
    #[error("no function named `{0}` runs in this shell")]
    NoSuchFunction(String),
    #[error("not deployed: cannot record the deployment ({0}); the running version keeps serving")]
    Record(#[from] DeploymentsError),
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DeploymentsError(pub String);

/// Where deployed versions are recorded for every shell of a cluster.
/// Names no technology: Postgres has one, a single shell in memory needs none.
#[async_trait]
pub trait Deployments: Send + Sync {
    /// Keeps `bytes` as a known version of `name`, so that any shell can
    /// load it later (a rollback to a version loaded from a file, say).
    async fn keep(&self, name: &str, version: &Version, bytes: &[u8]) -> Result<(), DeploymentsError>;
    /// Records that `name` now runs `version` (whose bytes are kept) in
    /// place of `previous`, and tells every shell.
    async fn record(
        &self,
        name: &str,
        version: &Version,
        bytes: &[u8],
        previous: Option<&Version>,
    ) -> Result<(), DeploymentsError>;
    /// The recorded version of `name` and the one it replaced, if any was recorded.
    async fn current(&self, name: &str) -> Result<Option<(Version, Option<Version>)>, DeploymentsError>;
    /// The bytes of a kept version.
    async fn bytes(&self, name: &str, version: &Version) -> Result<Option<Vec<u8>>, DeploymentsError>;
    /// Names of the functions whose recorded version changed, as they
    /// change (`None` for "anything may have changed", after a reconnect).
    /// Taken once; `None` when nothing is ever announced.
    fn changes(&self) -> Option<mpsc::UnboundedReceiver<Option<String>>>;
}

/// One shell on its own: nothing to record or hear.
pub struct LocalDeployments;

#[async_trait]
impl Deployments for LocalDeployments {
    async fn keep(&self, _: &str, _: &Version, _: &[u8]) -> Result<(), DeploymentsError> {
        Ok(())
    }
    async fn record(
        &self,
        _: &str,
        _: &Version,
        _: &[u8],
        _: Option<&Version>,
    ) -> Result<(), DeploymentsError> {
        Ok(())
    }
    async fn current(&self, _: &str) -> Result<Option<(Version, Option<Version>)>, DeploymentsError> {
        Ok(None)
    }
    async fn bytes(&self, _: &str, _: &Version) -> Result<Option<Vec<u8>>, DeploymentsError> {
        Ok(None)
    }
    fn changes(&self) -> Option<mpsc::UnboundedReceiver<Option<String>>> {
        None
    }
}

/// The schema served for the functions (the shell's
/// [`Graphql`](crate::graphql::Graphql)), as deploys see it.
pub trait SchemaHook: Send + Sync {
    /// Whether a valid schema can be built for `functions`.
    fn check(&self, functions: &Functions) -> Result<(), String>;
    /// Builds and serves the schema of the registry's current set now, so
    /// that a deploy answers only once GraphQL serves what it swapped in.
    fn refresh(&self);
}

#[derive(Clone)]
pub struct Deployer {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    deployments: Arc<dyn Deployments>,
    /// One change at a time in this shell: record-and-swap, or sync.
    serial: Arc<tokio::sync::Mutex<()>>,
    /// Set once the schema exists; shared by every clone.
    schema: Arc<OnceLock<Arc<dyn SchemaHook>>>,
}

impl Deployer {
    pub fn new(runtime: Arc<Runtime>, registry: Arc<Registry>) -> Self {
        Self::with_deployments(runtime, registry, Arc::new(LocalDeployments))
    }

    pub fn with_deployments(
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        deployments: Arc<dyn Deployments>,
    ) -> Self {
        Self { runtime, registry, deployments, serial: Default::default(), schema: Default::default() }
    }

    /// From now on, a deploy or rollback is refused unless `schema` can be
    /// built for the set of functions it would make, and `schema` is
    /// refreshed after each swap. Set once; later calls are ignored.
    pub fn use_schema(&self, schema: Arc<dyn SchemaHook>) {
        if self.schema.set(schema).is_err() {
            tracing::warn!("a schema is already in use by deploys; keeping the first");
        }
    }

    fn refresh_schema(&self) {
        if let Some(schema) = self.schema.get() {
            schema.refresh();
        }
    }

    /// Refuses `function` unless the registry, and the schema built for the
    /// set it would make, take it.
    fn validate(&self, function: &Arc<Function>, force: bool) -> Result<(), DeployError> {
        let candidate = self.registry.check(function, force)?;
        match self.schema.get() {
            Some(schema) => schema.check(&candidate).map_err(DeployError::Schema),
            None => Ok(()),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn deployments(&self) -> &Arc<dyn Deployments> {
        &self.deployments
    }

    /// Loads `bytes` as the next version of `name`, records it, and swaps it
    /// in. The same bytes as the running version change nothing.
    pub async fn deploy(&self, name: &str, bytes: &[u8], force: bool) -> Result<Swapped, DeployError> {
        // A name this shell does not run gets no metric series of its own:
        // anyone with the token could otherwise make series without end.
        let known = self.registry.current().get(name).is_some();
        let refused = |e: DeployError| {
            if known {
                tracing::warn!(function = name, "deploy refused, the running version keeps serving: {e}");
            } else {
                tracing::warn!(function = name, "deploy of a new function refused: {e}");
            }
            crate::metrics::swap_refused(name, known);
            e
        };
        let function = self.runtime.load(bytes).await.map_err(|e| refused(e.into()))?;
        if function.name() != name {
            return Err(refused(DeployError::WrongName {
                expected: name.into(),
                got: function.name().into(),
            }));
        }
        let _serial = self.serial.lock().await;
        let running = self.registry.current().get(name).cloned();
        if let Some(running) = running.as_ref().filter(|f| f.version == function.version) {
            tracing::info!(function = name, version = %running.version, "already running this version");
            return Ok(Swapped {
                name: name.into(),
                old: Some(Arc::clone(running)),
                new: Arc::clone(running),
            });
        }
        // Refuse what the registry or the schema would refuse before recording anything.
        self.validate(&function, force).map_err(refused)?;
        self.deployments
            .record(name, &function.version, bytes, running.as_ref().map(|f| &f.version))
            .await
            .map_err(|e| refused(e.into()))?;
        // Recorded as compatible (or forced): the swap itself is forced.
        let swapped = self.registry.swap(function, true).await.map_err(|e| refused(e.into()))?;
        self.refresh_schema();
        crate::metrics::swap(name, true);
        log_swap("deployed", &swapped);
        Ok(swapped)
    }

    /// Swaps `name` back to the version it had before its last deploy (the
    /// recorded one where deploys are recorded), and records that.
    pub async fn rollback(&self, name: &str) -> Result<Swapped, DeployError> {
        let _serial = self.serial.lock().await;
        let Some(running) = self.registry.current().get(name).cloned() else {
            return Err(DeployError::NoSuchFunction(name.into()));
        };
        let recorded_previous = match self.deployments.current(name).await? {
            Some((_, Some(previous))) => match self.deployments.bytes(name, &previous).await? {
                Some(bytes) => Some((self.runtime.load(&bytes).await?, bytes)),
                None => None,
            },
            _ => None,
        };
        let (target, bytes) = match recorded_previous {
            Some((function, bytes)) => (function, Some(bytes)),
            None => {
                let previous = self.registry.previous(name).ok_or_else(|| {
                    RegistryError(format!("`{name}` has no previous version to roll back to"))
                })?;
                (previous, None)
            }
        };
        // The other functions may have changed since: check before recording.
        // Forced: the previous version was compatible with what it replaced.
        self.validate(&target, true)?;
        // The version kept when it was loaded or deployed: no bytes to send again.
        self.deployments
            .record(name, &target.version, bytes.as_deref().unwrap_or_default(), Some(&running.version))
            .await?;
        // Forced: the previous version was compatible with what it replaced.
        let swapped = self.registry.swap(target, true).await?;
        self.refresh_schema();
        crate::metrics::swap(name, true);
        log_swap("rolled back", &swapped);
        Ok(swapped)
    }

    /// Brings `name` to its recorded version, if this shell runs that
    /// function and another version of it. The origin of the deploy
    /// validated it, so the swap is forced.
    pub async fn sync(&self, name: &str) -> Result<(), DeployError> {
        let _serial = self.serial.lock().await;
        let Some(running) = self.registry.current().get(name).cloned() else { return Ok(()) };
        let Some((version, _)) = self.deployments.current(name).await? else { return Ok(()) };
        if running.version == version {
            return Ok(());
        }
        let bytes = self.deployments.bytes(name, &version).await?.ok_or_else(|| {
            DeploymentsError(format!("the bytes of `{name}` {version} are not in the record"))
        })?;
        let function: Arc<Function> = self.runtime.load(&bytes).await?;
        if function.name() != name {
            return Err(DeployError::WrongName { expected: name.into(), got: function.name().into() });
        }
        let swapped = self.registry.swap(function, true).await?;
        self.refresh_schema();
        log_swap("switched to the recorded version", &swapped);
        Ok(())
    }

    /// [`sync`](Self::sync) for every function this shell runs.
    pub async fn sync_all(&self) -> Result<(), DeployError> {
        let names: Vec<String> = self.registry.current().iter().map(|f| f.name().to_owned()).collect();
        for name in names {
            self.sync(&name).await?;
        }
        Ok(())
    }

    /// Follows the recorded deploys of the other shells until the returned
    /// task is aborted (or nothing is ever announced).
    pub fn follow(&self) -> Option<tokio::task::JoinHandle<()>> {
        let mut changes = self.deployments.changes()?;
        let deployer = self.clone();
        Some(tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let result = match &change {
                    Some(name) => deployer.sync(name).await,
                    None => deployer.sync_all().await,
                };
                if let Err(e) = result {
                    tracing::warn!(
                        function = change.as_deref().unwrap_or("*"),
                        "cannot switch to the recorded version: {e}"
                    );
                }
            }
        }))
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

//! Wires a project together: runtime, functions, backend, executor,
//! responses and GraphQL, served over HTTP.

use crate::backend::{Backend, Bus, Store};
use crate::config::Project;
use crate::deploy::Deployer;
use crate::deploy::admin;
use crate::deploy::watch::{self, ModulesWatcher};
use crate::executor::Executor;
use crate::graphql::{self, Graphql, QueryLimits};
use crate::http::{self, Readiness};
use crate::registry::{Functions, Registry};
use crate::responses::Responses;
use crate::runtime::{Function, Runtime, SystemEnv};
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running shell.
pub struct Shell {
    bus: Arc<dyn Bus>,
    /// Where it listens (the actual port when the project asked for port 0).
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub graphql: Arc<Graphql>,
    pub deployer: Deployer,
    responses: Arc<Responses>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    consumers: JoinHandle<()>,
    /// Follows the deploys of the other shells on the same database.
    following: Option<JoinHandle<()>>,
    _watcher: Option<ModulesWatcher>,
}

/// The component files a project names, or every `*.wasm` in its folder.
pub fn module_files(project: &Project) -> anyhow::Result<Vec<PathBuf>> {
    let dir = &project.modules;
    match &project.functions {
        Some(names) => Ok(names.iter().map(|n| dir.join(format!("{n}.wasm"))).collect()),
        None => {
            let entries = std::fs::read_dir(dir).with_context(|| {
                format!("cannot read the modules folder {} (run `make guest`)", dir.display())
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .collect();
            files.sort();
            Ok(files)
        }
    }
}

/// Reads and loads one component file.
pub async fn load_file(runtime: &Arc<Runtime>, path: &Path) -> anyhow::Result<Arc<Function>> {
    Ok(load_file_bytes(runtime, path).await?.0)
}

/// Reads and loads one component file; the function and its bytes.
async fn load_file_bytes(runtime: &Arc<Runtime>, path: &Path) -> anyhow::Result<(Arc<Function>, Vec<u8>)> {
    let bytes = tokio::fs::read(path).await.with_context(|| {
        format!("cannot read module {} (run `make guest` to build the components)", path.display())
    })?;
    let function =
        runtime.load(&bytes).await.with_context(|| format!("cannot load module {}", path.display()))?;
    tracing::info!(function = function.name(), version = %function.version, kind = ?function.meta.kind, file = %path.display(), "loaded");
    Ok((function, bytes))
}

/// `/readyz`: functions loaded, bus and store reachable; notes: events
/// parked, consumers stopped at a failing event.
fn readiness(
    registry: &Arc<Registry>,
    bus: &Arc<dyn Bus>,
    store: &Arc<dyn Store>,
    executor: &Arc<Executor>,
) -> Readiness {
    let (registry, bus, store) = (Arc::clone(registry), Arc::clone(bus), Arc::clone(store));
    let parked_in = Arc::clone(&store);
    let executor = Arc::clone(executor);
    Readiness::new()
        .note("parked events", move || {
            let store = Arc::clone(&parked_in);
            async move {
                let counts = store.parked_counts().await.ok()?;
                let counts: Vec<String> = counts.iter().map(|(f, n)| format!("{f} {n}")).collect();
                (!counts.is_empty()).then(|| format!("{} (GET /admin/parked)", counts.join(", ")))
            }
        })
        .note("stopped consumers", move || {
            let stopped: Vec<String> = executor
                .stopped()
                .iter()
                .map(|s| {
                    format!(
                        "{} at position {} ({} attempts): {}",
                        s.function, s.position, s.attempts, s.error
                    )
                })
                .collect();
            async move { (!stopped.is_empty()).then(|| stopped.join(", ")) }
        })
        .check("functions", move || {
            let loaded = registry.current().iter().next().is_some();
            async move { if loaded { Ok(()) } else { Err("no functions are loaded".to_owned()) } }
        })
        .check("bus", move || {
            let bus = Arc::clone(&bus);
            async move { bus.ready().await }
        })
        .check("store", move || {
            let store = Arc::clone(&store);
            async move { store.ready().await }
        })
}

/// The project's functions from the ones compiled into this binary (the
/// benchmarks' native baseline).
fn native_functions(runtime: &Arc<Runtime>, project: &Project) -> anyhow::Result<Vec<Arc<Function>>> {
    let names = project.functions.as_deref().unwrap_or_default();
    names
        .iter()
        .map(|name| {
            let guest = crate::runtime::native::catalogue(name).with_context(|| {
                format!("`{name}` is not compiled into this binary (build with `--features native-baseline`)")
            })?;
            Ok(runtime.native(guest)?)
        })
        .collect()
}

impl Shell {
    pub async fn start(project: Project) -> anyhow::Result<Self> {
        crate::metrics::install();
        let runtime = Runtime::with(project.limits(), Arc::new(SystemEnv), project.cache_dir())?;
        if project.functions.as_ref().is_some_and(Vec::is_empty) {
            anyhow::bail!(
                "the project lists no functions (`functions = []`): name the functions to load, \
                 or leave `functions` out to load every component in {}",
                project.modules.display()
            );
        }
        let mut loaded = vec![];
        let mut files = vec![];
        // The version read from each file, for the watcher.
        let mut from_files = HashMap::new();
        if project.native {
            loaded = native_functions(&runtime, &project)?;
        } else {
            for path in module_files(&project)? {
                let (function, bytes) = load_file_bytes(&runtime, &path).await?;
                files.push((function.name().to_owned(), function.version.clone(), bytes));
                from_files.insert(path, function.version.clone());
                loaded.push(function);
            }
        }
        if loaded.is_empty() {
            anyhow::bail!("no functions to load in {} (run `make guest`)", project.modules.display());
        }
        let registry = Arc::new(Registry::new(Functions::new(loaded)?));

        let Backend { bus, store, reads, deployments } = Backend::open(&project).await?;

        // Every version loaded from a file is kept (any shell may roll back
        // to it); then the versions the cluster records replace the files'.
        for (name, version, bytes) in &files {
            deployments.keep(name, version, bytes).await.with_context(|| format!("cannot keep `{name}`"))?;
        }
        drop(files);
        let deployer = Deployer::with_deployments(Arc::clone(&runtime), Arc::clone(&registry), deployments);
        deployer.sync_all().await.context("cannot load the recorded versions of the functions")?;
        let following = deployer.follow();

        for (name, policy) in &project.consumers {
            if registry.current().consumers().all(|f| f.name() != name) {
                tracing::warn!("[consumers.{name}] names no handler or projector of this project; ignored");
            }
            if policy.partitions > 1 && !bus.shares_work() {
                tracing::warn!(
                    "[consumers.{name}] partitions: this backend runs one consumer per function in one shell; \
                     partitions share a function's work between shells on Postgres"
                );
            }
        }
        let executor = Arc::new(
            Executor::new(Arc::clone(&registry), Arc::clone(&store), runtime.env(), project.attempts)
                .with_policies(project.consumers.clone()),
        );
        let consumers = executor.start(Arc::clone(&bus)).await?;
        let responses = Responses::start(
            Arc::clone(&registry),
            Arc::clone(&reads),
            Arc::clone(&bus),
            project.response_timeout(),
            project.max_pending_requests,
        )
        .await?;
        let limits =
            QueryLimits { depth: project.graphql.max_depth, complexity: project.graphql.max_complexity };
        let ready = readiness(&registry, &bus, &store, &executor);
        let services =
            graphql::Services { store: reads, responses: Arc::clone(&responses), bus: Arc::clone(&bus) };
        let graphql = Graphql::start(Arc::clone(&registry), services, limits)?;
        // Deploys are checked against the schema they would make, before the swap.
        deployer.use_schema(Arc::clone(&graphql) as Arc<dyn crate::deploy::SchemaHook>);

        let listener = tokio::net::TcpListener::bind(project.listen).await.with_context(|| {
            format!("cannot listen on {} (is another shell running there? try --listen)", project.listen)
        })?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let http = http::HttpOptions {
            max_body_bytes: project.http.max_body_bytes,
            request_timeout: std::time::Duration::from_millis(project.http.request_timeout_ms),
            allowed_origins: http::AllowedOrigins::new(&project.http.allowed_origins)
                .map_err(|e| anyhow::anyhow!("http.allowed-origins: {e}"))?,
            auth: Arc::new(
                http::Auth::new(&project.http.auth).map_err(|e| anyhow::anyhow!("http.auth: {e}"))?,
            ),
        };
        match &project.http.auth {
            a if a.mode == crate::config::AuthMode::None => tracing::info!(
                "auth: none: every caller is trusted and commands carry no principal (set [http.auth] mode = \"jwt\" for a shared deployment)"
            ),
            a => tracing::info!(
                algorithm = ?a.algorithm,
                issuer = a.issuer.as_deref().unwrap_or("(any)"),
                audience = a.audience.as_deref().unwrap_or("(any)"),
                leeway_s = a.leeway_s,
                "auth: jwt: requests are checked for a bearer token"
            ),
        }
        let watcher = if project.watch {
            Some(watch::watch(&project.modules, project.functions.clone(), from_files, deployer.clone())?)
        } else {
            None
        };
        let token = project.admin_token();
        if token.is_none() {
            tracing::info!("admin endpoints refuse every request: no admin token (set LOWSHELL_ADMIN_TOKEN)");
        }

        let app = http::router(Arc::clone(&graphql), ready, http).merge(admin::router(
            deployer.clone(),
            Arc::clone(&executor),
            Arc::clone(&bus),
            token.as_deref(),
        ));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(project = %project.name, %addr, "serving GraphQL at http://{addr}/");
        Ok(Self {
            bus: Arc::clone(&bus),
            addr,
            registry,
            graphql,
            deployer,
            responses,
            stop: Some(stop),
            server,
            consumers,
            following,
            _watcher: watcher,
        })
    }

    /// Requests waiting for their commands' responses now (also the
    /// `lowshell_pending_requests` gauge).
    pub fn pending_requests(&self) -> usize {
        self.responses.pending_requests()
    }

    /// Stops accepting requests, lets those in flight finish, then stops.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = (&mut self.server).await;
        self.consumers.abort();
        self.bus.close();
        if let Some(following) = &self.following {
            following.abort();
        }
        served??;
        Ok(())
    }

    /// Serves until the server stops on its own (it does not, unless it fails).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.server).await??;
        Ok(())
    }
}

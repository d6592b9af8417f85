//! The WebAssembly runtime: one wasmtime [`Engine`] for the process, a
//! [`Function`] per loaded component (its `InstancePre` built once), and a
//! limited [`Guest`] (a wasmtime `Store` plus instance) per execution, kept
//! for further executions of the same version while it serves them cleanly.
//!
//! Guests get no files, network, environment or clock: WASI is linked with an
//! empty context whose clocks stand still; ids, time and logging come from
//! the contract's `env` import.

mod bindings;
mod cache;
mod call;
mod convert;
mod guest;
pub mod native;
mod state;

use call::Idle;
pub use call::WasmCall;
pub use guest::Guest;
pub use native::{NativeCall, NativeGuest};
pub(crate) use state::too_many_found;

use crate::backend::Store;
use bindings::{
    function::FunctionPre,
    function_before_operate_and_write::FunctionBeforeOperateAndWritePre as OlderFunctionPre,
    function_lean::FunctionLeanPre, resolver::ResolverPre,
};
use guest::Instantiate;
use low_contract::{FunctionKind, Level, Meta};
use sha2::{Digest, Sha256};
use state::CallState;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, InstancePre, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How much a guest may use per call.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock budget of one export call (`lookup`, `operate`, …).
    pub deadline: Duration,
    /// Linear memory of one instance.
    pub memory_bytes: usize,
    /// Instances alive at once; further calls wait for a free slot.
    pub instances: u32,
    /// Executions one instance serves before a fresh one replaces it; 1: a
    /// fresh instance for every execution. An instance that failed, wrote to
    /// stderr or grew its memory past [`KEEP_RESIDENT`] (or past what it was
    /// created with, if more) is never reused.
    pub executions_per_instance: u32,
    /// What one step of a function may ask the shell to do.
    pub step: StepLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            instances: 256,
            executions_per_instance: 1000,
            step: StepLimits::default(),
        }
    }
}

/// Caps on what one step (one LOW cycle) may make the shell do, so that a
/// guest cannot turn one command into unbounded host work. Exceeding one
/// fails the step with an error naming the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLimits {
    /// Wall-clock budget of the whole step: its guest calls and running its
    /// lookup plan (the per-call `deadline` still bounds each call).
    pub deadline: Duration,
    /// Entries in a lookup plan.
    pub lookups: usize,
    /// Documents one `find` may return (a lookup plan's, or the guest's own
    /// store reads during `lookup`).
    pub find_documents: usize,
    /// Messages `operate` may emit.
    pub events: usize,
    /// Write ops of all the step's write plans together.
    pub ops: usize,
    /// Notifications of all the step's write plans together.
    pub notifications: usize,
}

impl Default for StepLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(3),
            lookups: 32,
            find_documents: 1000,
            events: 256,
            ops: 256,
            notifications: 256,
        }
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("the component does not fit the contract's `function`, `function-lean` or `resolver` world: {0}")]
    WrongWorld(String),
    /// `meta` (or instantiating the component to call it) failed.
    #[error("{0}")]
    Meta(String),
    /// The component needs more than the shell's limits allow.
    #[error("{0}")]
    Limits(String),
    #[error("{0}")]
    Invalid(String),
}

/// What a guest call can fail with. Each names the function and the phase.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestError {
    #[error("function `{function}` exceeded its deadline of {deadline:?} in `{phase}`")]
    Deadline { function: String, phase: &'static str, deadline: Duration },
    #[error("function `{function}` trapped in `{phase}`: {message}")]
    Trap { function: String, phase: &'static str, message: String },
    #[error("function `{function}` returned an invalid value from `{phase}`: {message}")]
    Invalid { function: String, phase: &'static str, message: String },
    #[error("function `{function}` has no `{phase}` export (it is a {kind:?})")]
    WrongKind { function: String, phase: &'static str, kind: FunctionKind },
    #[error(
        "function `{function}` has no `{phase}` export of its own: it is built against the \
         `function-lean` world, whose `operate-and-write` does its work"
    )]
    Lean { function: String, phase: &'static str },
}

/// Where guests' ids, time and log lines come from: the `env` import.
pub trait HostEnv: Send + Sync + 'static {
    fn new_id(&self) -> String;
    fn now_ms(&self) -> u64;
    fn log(&self, function: &str, level: Level, message: &str);
}

/// The shell's `env`: random (v4) UUIDs, the system clock, `tracing`.
pub struct SystemEnv;

impl HostEnv for SystemEnv {
    fn new_id(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn log(&self, function: &str, level: Level, message: &str) {
        match level {
            Level::Trace => tracing::trace!(target: "guest", function, "{message}"),
            Level::Debug => tracing::debug!(target: "guest", function, "{message}"),
            Level::Info => tracing::info!(target: "guest", function, "{message}"),
            Level::Warn => tracing::warn!(target: "guest", function, "{message}"),
            Level::Error => tracing::error!(target: "guest", function, "{message}"),
        }
    }
}

/// The shared engine and linkers.
pub struct Runtime {
    engine: Engine,
    function_linker: Linker<CallState>,
    resolver_linker: Linker<CallState>,
    limits: Limits,
    slots: Arc<Semaphore>,
    /// Instances kept between executions, of all functions (at most `idle_most`).
    idle: Arc<AtomicUsize>,
    idle_most: usize,
    env: Arc<dyn HostEnv>,
    /// Compiled components by content hash, so a restart does not recompile.
    cache: Option<Arc<cache::Cache>>,
}

/// Bytes of a linear memory (and of a table) kept mapped when its slot is
/// freed; what a guest dirties beyond this is given back to the kernel. An
/// instance whose memories grew past it (or past their size when it was
/// created: a JavaScript or Python runtime starts larger) is not kept for
/// another execution.
pub const KEEP_RESIDENT: usize = 4 << 20;
/// Instances kept between executions, of all functions together, at most
/// (and never more than `limits.instances`).
const IDLE_MOST: u32 = 64;
/// Slots whose memory is given back with one batch of `madvise` calls.
const DECOMMIT_BATCH: usize = 16;

/// Epochs advance this often; deadlines are counted in ticks.
const TICK: Duration = Duration::from_millis(5);

impl Runtime {
    /// A runtime whose guests get the [`SystemEnv`].
    pub fn new(limits: Limits) -> anyhow::Result<Arc<Self>> {
        Self::with_env(limits, Arc::new(SystemEnv))
    }

    /// A runtime whose guests get `env` (deterministic ids and time in tests, say).
    pub fn with_env(limits: Limits, env: Arc<dyn HostEnv>) -> anyhow::Result<Arc<Self>> {
        Self::with(limits, env, None)
    }

    /// A runtime whose guests get `env`, caching compiled components in `cache`.
    pub fn with(limits: Limits, env: Arc<dyn HostEnv>, cache: Option<PathBuf>) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        // A Rust wasip2 component is a handful of core instances, memories
        // and tables; size the pool for `instances` of them.
        // Kept instances hold their slots (and their store's fiber stack)
        // beside the `instances` running.
        let n = limits.instances.max(1);
        let idle_most = match limits.executions_per_instance {
            0 | 1 => 0,
            _ => n.min(IDLE_MOST),
        };
        let total = n + idle_most;
        pool.total_component_instances(total)
            .total_stacks(total)
            .total_core_instances(total * 8)
            .total_memories(total * 2)
            .total_tables(total * 4)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size(limits.memory_bytes)
            // A slot coming back is reset by rewriting only the pages the
            // call dirtied (found with the PAGEMAP_SCAN ioctl where the
            // kernel has it), not by `madvise`: no system call, no TLB
            // shootdown, and no page faults when the slot is reused.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            // What still needs `madvise`, in batches.
            .decommit_batch_size(DECOMMIT_BATCH);
        let mut config = Config::new();
        config.epoch_interruption(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // `perf` names guests' functions only from a map of the compiled
        // code (/tmp/perf-PID.map), written when asked for (docs/performance.md).
        if std::env::var_os("LOWSHELL_PERF_MAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        spawn_epoch_ticker(&engine);

        let mut function_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut function_linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        bindings::function::Function::add_to_linker::<_, HasSelf<CallState>>(&mut function_linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut resolver_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut resolver_linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        bindings::resolver::Resolver::add_to_linker::<_, HasSelf<CallState>>(&mut resolver_linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;

        let slots = Arc::new(Semaphore::new(n as usize));
        let cache = cache.and_then(|dir| match cache::Cache::open(&dir) {
            Ok(cache) => Some(Arc::new(cache)),
            Err(e) => {
                tracing::warn!("compiled components are not cached: {e}");
                None
            }
        });
        Ok(Arc::new(Self {
            engine,
            function_linker,
            resolver_linker,
            limits,
            slots,
            idle: Arc::default(),
            idle_most: idle_most as usize,
            env,
            cache,
        }))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The guests' `env`: ids, time and logging.
    pub fn env(&self) -> Arc<dyn HostEnv> {
        Arc::clone(&self.env)
    }

    /// Compiles (on a blocking thread), links and checks a component, and
    /// reads its `meta`.
    pub async fn load(self: &Arc<Self>, bytes: &[u8]) -> Result<Arc<Function>, LoadError> {
        let version = Version::of(bytes);
        // Compiling is CPU-bound: keep it off the async workers.
        let (engine, cache, key) = (self.engine.clone(), self.cache.clone(), version.clone());
        let owned = bytes.to_vec();
        let memory_bytes = self.limits.memory_bytes;
        let component = tokio::task::spawn_blocking(move || {
            compile(&engine, &owned, &key, cache.as_deref(), memory_bytes)
        })
        .await
        .map_err(|e| LoadError::NotAComponent(format!("compilation stopped: {e}")))??;
        let exports_resolve =
            component.component_type().exports(&self.engine).any(|(name, _)| name == "resolve");
        let linker = if exports_resolve { &self.resolver_linker } else { &self.function_linker };
        let pre = linker.instantiate_pre(&component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let idle = Idle::new(Arc::clone(&self.idle), self.idle_most);
        let pre: Box<dyn Instantiate> = Box::new(
            WasmPre::new(pre, exports_resolve, idle).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?,
        );
        let mut function = Function {
            meta: Meta::resolver("", Vec::<String>::new()),
            version,
            loaded_at: SystemTime::now(),
            pre,
            runtime: Arc::clone(self),
            metrics: Arc::new(crate::metrics::GuestMetrics::new("")),
        };
        let mut call = function.start(None).await.map_err(meta_failure)?;
        let meta = call.meta().await.map_err(meta_failure)?;
        drop(call);
        check_meta(&meta, exports_resolve)?;
        function.metrics = Arc::new(crate::metrics::GuestMetrics::new(&meta.name));
        function.meta = meta;
        Ok(Arc::new(function))
    }
}

/// Why `meta` could not be read, without the function's name: nobody knows
/// it before `meta` answers.
fn meta_failure(e: GuestError) -> LoadError {
    LoadError::Meta(match e {
        GuestError::Deadline { phase, deadline, .. } => {
            format!("the component's `{phase}` call exceeded its deadline of {deadline:?}")
        }
        GuestError::Trap { phase: "instantiate", message, .. } => {
            format!("the component cannot be instantiated: {message}")
        }
        GuestError::Trap { phase, message, .. } => {
            format!("the component's `{phase}` call trapped: {message}")
        }
        GuestError::Invalid { phase, message, .. } => {
            format!("the component's `{phase}` returned an invalid value: {message}")
        }
        GuestError::WrongKind { phase, .. } | GuestError::Lean { phase, .. } => {
            format!("the component has no `{phase}` export")
        }
    })
}

/// Compiles `bytes`, or reads the artifact cached for `version`.
fn compile(
    engine: &Engine,
    bytes: &[u8],
    version: &Version,
    cache: Option<&cache::Cache>,
    memory_bytes: usize,
) -> Result<Component, LoadError> {
    if let Some(component) = cache.and_then(|cache| cache.load(engine, version)) {
        return Ok(component);
    }
    let component = Component::new(engine, bytes).map_err(|e| compile_failure(&e, memory_bytes))?;
    if let Some(cache) = cache
        && let Err(e) = cache.store(&component, version)
    {
        tracing::warn!(%version, "could not cache the compiled component: {e}");
    }
    Ok(component)
}

/// Tells a component that needs more than the limits allow (the pooling
/// allocator checks its memories and tables when it is compiled) from bytes
/// that are not a component at all.
fn compile_failure(e: &wasmtime::Error, memory_bytes: usize) -> LoadError {
    let detail = format!("{e:#}");
    if detail.contains("pooling allocator") {
        let what = if detail.contains("memory") {
            format!(
                "the component needs more memory than the memory limit of {} (`limits.memory-mib`) allows",
                mebibytes(memory_bytes)
            )
        } else {
            "the component needs more than the shell's instance limits allow".to_owned()
        };
        LoadError::Limits(format!("{what}: {detail}"))
    } else {
        LoadError::NotAComponent(detail)
    }
}

fn mebibytes(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 20) { format!("{} MiB", bytes >> 20) } else { format!("{bytes} bytes") }
}

impl Runtime {
    /// A function compiled into the shell rather than loaded from a
    /// component: the benchmarks' native baseline. It runs through the same
    /// executor; it has no sandbox, deadline or memory limit.
    pub fn native(self: &Arc<Self>, guest: Arc<dyn NativeGuest>) -> Result<Arc<Function>, LoadError> {
        let meta = guest.meta();
        check_meta(&meta, meta.kind == FunctionKind::Resolver)?;
        Ok(Arc::new(Function {
            version: Version(format!("native-{}", meta.name)),
            metrics: Arc::new(crate::metrics::GuestMetrics::new(&meta.name)),
            meta,
            loaded_at: SystemTime::now(),
            pre: Box::new(native::NativePre(guest)),
            runtime: Arc::clone(self),
        }))
    }
}

fn check_meta(meta: &Meta, is_resolver: bool) -> Result<(), LoadError> {
    if meta.name.trim().is_empty() {
        return Err(LoadError::Invalid("`meta` returned an empty name".into()));
    }
    match (is_resolver, meta.kind) {
        (true, FunctionKind::Resolver) | (false, FunctionKind::Handler | FunctionKind::Projector) => Ok(()),
        (true, kind) => Err(LoadError::Invalid(format!("a `resolver` component declares kind {kind:?}"))),
        (false, _) => Err(LoadError::Invalid("a `function` component declares kind Resolver".into())),
    }
}

/// Advances the engine's epoch until the engine is dropped. A thread rather
/// than a task, so deadlines hold even when the async runtime is saturated.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("lowshell-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(TICK);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("could not start the epoch ticker, guest deadlines will not fire: {e}");
    }
}

/// The identity of a component's bytes: their sha256, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

impl Version {
    pub fn of(bytes: &[u8]) -> Self {
        Version(hex::encode(Sha256::digest(bytes)))
    }

    /// The first 12 hex digits, for logs and listings.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short())
    }
}

/// A component ready to instantiate, where its exports are, and its
/// instances kept for further executions.
struct WasmPre {
    pre: InstancePre<CallState>,
    exports: Exports,
    idle: Arc<Idle>,
}

/// The exports of one of the contract's worlds, found (and type-checked)
/// once when the component is loaded, so that each instance takes its
/// functions by index without checking their types again.
#[derive(Clone, Copy)]
pub(super) enum Exports {
    /// At least one of `phases` and `operate_and_write`.
    Function {
        meta: ComponentExportIndex,
        lookup: ComponentExportIndex,
        /// `operate` and `write`; none in a `function-lean` component.
        phases: Option<(ComponentExportIndex, ComponentExportIndex)>,
        /// None in a component built before the contract had it.
        operate_and_write: Option<ComponentExportIndex>,
    },
    Resolver {
        meta: ComponentExportIndex,
        resolve: ComponentExportIndex,
    },
}

impl WasmPre {
    fn new(pre: InstancePre<CallState>, resolver: bool, idle: Arc<Idle>) -> wasmtime::Result<Self> {
        // The generated bindings check every export's type against the
        // world; instances then call them unchecked (see `call.rs`).
        let component = pre.component();
        let has = |name: &str| component.get_export_index(None, name).is_some();
        // Which of the function worlds: (`operate` and `write` exported,
        // `operate-and-write` exported).
        let (phases, fused) = if resolver {
            ResolverPre::new(pre.clone())?;
            (false, false)
        } else {
            match FunctionPre::new(pre.clone()) {
                Ok(_) => (true, true),
                // Built before `operate-and-write`: the rest must be right.
                Err(e) if !has("operate-and-write") => {
                    OlderFunctionPre::new(pre.clone()).map_err(|_| e)?;
                    (true, false)
                }
                // `function-lean`: its own check says what is wrong.
                Err(_) if !has("operate") && !has("write") => {
                    FunctionLeanPre::new(pre.clone())?;
                    (false, true)
                }
                Err(e) => return Err(e),
            }
        };
        let export = |name: &str| {
            component
                .get_export_index(None, name)
                .ok_or_else(|| wasmtime::format_err!("no export `{name}` found"))
        };
        let exports = if resolver {
            Exports::Resolver { meta: export("meta")?, resolve: export("resolve")? }
        } else {
            Exports::Function {
                meta: export("meta")?,
                lookup: export("lookup")?,
                phases: if phases { Some((export("operate")?, export("write")?)) } else { None },
                operate_and_write: if fused { Some(export("operate-and-write")?) } else { None },
            }
        };
        Ok(Self { pre, exports, idle })
    }
}

/// A loaded, validated component: ready to be instantiated cheaply.
pub struct Function {
    pub meta: Meta,
    pub version: Version,
    pub loaded_at: SystemTime,
    /// A component's `InstancePre`, or native code.
    pre: Box<dyn Instantiate>,
    runtime: Arc<Runtime>,
    /// Its guest-call metrics, registered once.
    pub(super) metrics: Arc<crate::metrics::GuestMetrics>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("name", &self.meta.name).field("version", &self.version).finish()
    }
}

impl Function {
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The limits the function runs with (its runtime's).
    pub fn limits(&self) -> &Limits {
        &self.runtime.limits
    }

    /// Where the function's ids and time come from (its guests' `env`):
    /// the shell stamps what the function emits from the same source.
    pub fn env(&self) -> &dyn HostEnv {
        &*self.runtime.env
    }

    /// Whether a step asks `operate` and `write` in one call (the
    /// contract's `operate-and-write`), as components built against it
    /// do; else one call for `operate` and one a message for `write`.
    pub fn operates_and_writes_at_once(&self) -> bool {
        self.pre.operates_and_writes_at_once()
    }

    /// A fresh instance for one execution. `store` is readable by the guest
    /// during `lookup` only. Waits while every instance slot is taken.
    pub async fn start(&self, store: Option<Arc<dyn Store>>) -> Result<Box<dyn Guest>, GuestError> {
        self.pre.start(self, store, true).await?.ok_or_else(|| GuestError::Trap {
            function: self.meta.name.clone(),
            phase: "instantiate",
            message: "no instance slot was given".into(),
        })
    }

    /// [`Function::start`] if an instance slot is free now, else `None`:
    /// for work that may hold other instances meanwhile, which must never
    /// wait for a slot (those waiting could be holding every one).
    pub async fn try_start(
        &self,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Option<Box<dyn Guest>>, GuestError> {
        self.pre.start(self, store, false).await
    }
}

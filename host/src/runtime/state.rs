//! What a guest's imports see during one call: an empty WASI context, the
//! `env` capabilities, and the store while `lookup` runs.

use super::bindings::function::low::functions::{env, store, types};
use super::{HostEnv, convert};
use crate::backend::Store;
use low_contract::Level;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Longest guest log line kept; the rest is cut so a guest cannot flood the logs.
const MAX_LOG_LINE: usize = 4096;
/// What a guest may write to stderr (a panic message, typically) before writes fail.
const STDERR_CAPACITY: usize = 8192;

pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: Limiter,
    pub(super) function: Arc<str>,
    /// Readable by the guest only while `lookup` runs.
    pub(super) store: Option<Arc<dyn Store>>,
    pub(super) in_lookup: bool,
    /// `lookup` asked the store for documents (its plan may depend on them).
    pub(super) read_in_lookup: bool,
    /// Most documents one `find` may return (`limits.find-documents`).
    pub(super) find_documents: usize,
    pub(super) stderr: MemoryOutputPipe,
    env: Arc<dyn HostEnv>,
    /// The last error the guest logged: a panic's message, typically.
    pub(super) last_error: Option<String>,
    /// When the export call running now must have returned.
    pub(super) deadline_at: Instant,
}

impl CallState {
    pub fn new(
        function: Arc<str>,
        memory_bytes: usize,
        store: Option<Arc<dyn Store>>,
        find_documents: usize,
        env: Arc<dyn HostEnv>,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock)
            .build();
        let limits = Limiter {
            limits: StoreLimitsBuilder::new().memory_size(memory_bytes).trap_on_grow_failure(true).build(),
            memory_bytes: 0,
            created_with: 0,
        };
        Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            function,
            store,
            in_lookup: false,
            read_in_lookup: false,
            find_documents,
            stderr,
            env,
            last_error: None,
            deadline_at: Instant::now(),
        }
    }

    /// Notes the memory the instance was created with: a guest whose
    /// runtime starts from a snapshot of many MiB (JavaScript, Python) is
    /// that large before its first call.
    pub(super) fn instantiated(&mut self) {
        self.limits.created_with = self.limits.memory_bytes;
    }

    /// Makes the state ready for the instance's next execution (which sets
    /// the store it reads): whether the instance can serve one (it wrote
    /// nothing to stderr, which is kept for its last words and fills up, and
    /// its memory stayed within `memory_kept` bytes, or within what it was
    /// created with).
    pub(super) fn renew(&mut self, memory_kept: usize) -> bool {
        self.store = None;
        self.in_lookup = false;
        self.read_in_lookup = false;
        self.last_error = None;
        let memory = &self.limits;
        memory.memory_bytes <= memory_kept.max(memory.created_with) && self.stderr.contents().is_empty()
    }

    /// What the guest said before it failed: its last logged error and
    /// whatever it wrote to stderr.
    pub fn last_words(&self) -> String {
        let stderr = String::from_utf8_lossy(&self.stderr.contents()).trim().to_owned();
        match (&self.last_error, stderr.is_empty()) {
            (Some(error), true) => error.clone(),
            (Some(error), false) => format!("{error}; stderr: {stderr}"),
            (None, _) => stderr,
        }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The store's limits, noting how much linear memory the instance holds.
pub struct Limiter {
    limits: StoreLimits,
    /// Bytes of linear memory created and grown (all the instance's memories).
    memory_bytes: usize,
    /// `memory_bytes` once the instance was created.
    created_with: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grows = self.limits.memory_growing(current, desired, maximum)?;
        if grows {
            self.memory_bytes += desired.saturating_sub(current);
        }
        Ok(grows)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// WASI clocks that stay at zero: time reaches guests only through `env.now-ms`.
struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl types::Host for CallState {}

impl env::Host for CallState {
    fn log(&mut self, level: env::Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        let level = match level {
            env::Level::Trace => Level::Trace,
            env::Level::Debug => Level::Debug,
            env::Level::Info => Level::Info,
            env::Level::Warn => Level::Warn,
            env::Level::Error => Level::Error,
        };
        self.env.log(&self.function, level, &message);
        if level == Level::Error {
            self.last_error = Some(message);
        }
    }

    fn new_id(&mut self) -> String {
        self.env.new_id()
    }

    fn now_ms(&mut self) -> u64 {
        self.env.now_ms()
    }
}

impl CallState {
    fn readable_store(&mut self) -> Result<Arc<dyn Store>, String> {
        self.read_in_lookup |= self.in_lookup;
        match (&self.store, self.in_lookup) {
            (Some(store), true) => Ok(Arc::clone(store)),
            (_, false) => Err("the store is readable during `lookup` only".into()),
            (None, true) => Err("no store is available to this call".into()),
        }
    }
}

impl store::Host for CallState {
    async fn get(&mut self, collection: String, key: String) -> Result<Option<types::Document>, String> {
        let store = self.readable_store()?;
        let found = store.get(&collection, &key).await.map_err(|e| e.to_string())?;
        Ok(found.as_ref().map(convert::document_to_wit))
    }

    async fn find(
        &mut self,
        collection: String,
        field: String,
        value: String,
    ) -> Result<Vec<types::Document>, String> {
        let store = self.readable_store()?;
        let value: serde_json::Value =
            serde_json::from_str(&value).map_err(|e| format!("`value` is not JSON: {e}"))?;
        let limit = self.find_documents;
        // One more than allowed tells "exactly the limit" from "too many".
        let found = store
            .find(&collection, &field, &value, limit.saturating_add(1))
            .await
            .map_err(|e| e.to_string())?;
        if found.len() > limit {
            return Err(too_many_found(&collection, &field, &value, limit));
        }
        Ok(found.iter().map(convert::document_to_wit).collect())
    }
}

/// Why a `find` matching more than `limit` documents is refused.
pub(crate) fn too_many_found(
    collection: &str,
    field: &str,
    value: &serde_json::Value,
    limit: usize,
) -> String {
    format!(
        "more than {limit} documents of `{collection}` have `{field}` = {value} \
         (limits.find-documents); narrow the query or look documents up by key"
    )
}

//! One execution of a guest: a wasmtime `Store` and instance, with the
//! deadline re-armed before every export call. An instance that served an
//! execution cleanly is kept for the next one of the same component (up to
//! `limits.executions-per-instance`): creating and dropping an instance is
//! most of a short execution's cost. One that failed, was interrupted, wrote
//! to stderr or grew its memory is dropped.

use super::bindings::wit;
use super::convert;
use super::guest::{Guest, Instantiate};
use super::state::CallState;
use super::{Exports, Function, GuestError, KEEP_RESIDENT, WasmPre};
use crate::backend::Store;
use async_trait::async_trait;
use low_contract::{Data, FunctionKind, Lookup, Message, Meta, Outcome, Resolution, WritePlan};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use wasmtime::component::{Func, TypedFunc};
use wasmtime::{Trap, UpdateDeadline};

/// The exports of a live instance.
#[derive(Clone, Copy)]
enum Instance {
    Function { meta: Func, lookup: Func, phases: Option<(Func, Func)>, operate_and_write: Option<Func> },
    Resolver { meta: Func, resolve: Func },
}

impl Instance {
    fn of(
        store: &mut wasmtime::Store<CallState>,
        instance: &wasmtime::component::Instance,
        exports: Exports,
    ) -> Option<Self> {
        let mut get = |index| instance.get_func(&mut *store, index);
        Some(match exports {
            Exports::Function { meta, lookup, phases, operate_and_write } => Instance::Function {
                meta: get(meta)?,
                lookup: get(lookup)?,
                phases: match phases {
                    Some((operate, write)) => Some((get(operate)?, get(write)?)),
                    None => None,
                },
                operate_and_write: match operate_and_write {
                    Some(index) => Some(get(index)?),
                    None => None,
                },
            },
            Exports::Resolver { meta, resolve } => {
                Instance::Resolver { meta: get(meta)?, resolve: get(resolve)? }
            }
        })
    }

    fn meta(&self) -> Func {
        match self {
            Instance::Function { meta, .. } | Instance::Resolver { meta, .. } => *meta,
        }
    }
}

/// An instance with its store, and the executions it served.
struct Kept {
    store: wasmtime::Store<CallState>,
    instance: Instance,
    executions: u32,
}

/// The instances of one component kept between executions, most recently
/// used last. Dropped with the component's version, so an instance never
/// serves another version.
pub(super) struct Idle {
    kept: Mutex<Vec<Kept>>,
    /// Kept instances of the whole runtime, at most `most`.
    count: Arc<AtomicUsize>,
    most: usize,
}

impl Idle {
    pub(super) fn new(count: Arc<AtomicUsize>, most: usize) -> Arc<Self> {
        Arc::new(Self { kept: Mutex::default(), count, most })
    }

    fn take(&self) -> Option<Kept> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(kept)
    }

    /// Keeps `kept` if the runtime has room for it, else drops it.
    fn put(&self, kept: Kept) {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.most {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).push(kept);
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let kept = self.kept.get_mut().unwrap_or_else(|p| p.into_inner()).len();
        self.count.fetch_sub(kept, Ordering::Relaxed);
    }
}

/// A live instance of a component, for one command or one resolution.
pub struct WasmCall {
    /// Taken back only when the call is dropped.
    kept: ManuallyDrop<Kept>,
    /// No export call failed or was left unfinished: the instance may serve
    /// another execution.
    clean: bool,
    idle: Arc<Idle>,
    executions_per_instance: u32,
    function: String,
    kind: FunctionKind,
    deadline: Duration,
    metrics: Arc<crate::metrics::GuestMetrics>,
    /// The input `lookup` was given, lowered, and where it lay: `operate`
    /// of the same step is given the same one, lowered once (its payload's
    /// JSON text is most of the cost).
    lowered: Option<(usize, wit::Message)>,
    // Released when the call is dropped, freeing the instance slot.
    _slot: OwnedSemaphorePermit,
}

impl WasmCall {
    pub(super) async fn start(
        f: &Function,
        pre: &WasmPre,
        store: Option<Arc<dyn Store>>,
        wait: bool,
    ) -> Result<Option<Self>, GuestError> {
        let name = f.meta.name.clone();
        let runtime = &f.runtime;
        let slots = Arc::clone(&runtime.slots);
        let slot = if wait {
            slots.acquire_owned().await.ok()
        } else {
            match slots.try_acquire_owned() {
                Err(TryAcquireError::NoPermits) => return Ok(None),
                slot => slot.ok(),
            }
        };
        let slot = slot.ok_or_else(|| GuestError::Trap {
            function: name.clone(),
            phase: "instantiate",
            message: "the runtime is shutting down".into(),
        })?;
        let deadline = runtime.limits.deadline;
        let kept = match pre.idle.take() {
            Some(mut kept) => {
                let state = kept.store.data_mut();
                state.store = store;
                // The instance that read `meta` at load did not know the name yet.
                if *state.function != *name {
                    state.function = name.as_str().into();
                }
                kept
            }
            None => Self::instantiate(f, pre, store).await?,
        };
        Ok(Some(Self {
            kept: ManuallyDrop::new(kept),
            clean: true,
            idle: Arc::clone(&pre.idle),
            executions_per_instance: runtime.limits.executions_per_instance,
            function: name,
            kind: f.meta.kind,
            deadline,
            metrics: Arc::clone(&f.metrics),
            lowered: None,
            _slot: slot,
        }))
    }

    /// A fresh instance of `pre`.
    async fn instantiate(
        f: &Function,
        pre: &WasmPre,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Kept, GuestError> {
        let name = f.meta.name.as_str();
        let runtime = &f.runtime;
        let state = CallState::new(
            name.into(),
            runtime.limits.memory_bytes,
            store,
            runtime.limits.step.find_documents,
            Arc::clone(&runtime.env),
        );
        let mut wasm = wasmtime::Store::new(&runtime.engine, state);
        wasm.limiter(|s| &mut s.limits);
        // At every epoch tick the guest gives its async worker back (it is
        // polled again at once), so a slow or looping guest holds a worker
        // for one tick at most and never stalls the shell; past its deadline
        // it is interrupted instead.
        // `yield_now` (not a plain wake-up) lets the worker poll its timers
        // and sockets before it resumes the guest.
        wasm.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline_at {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
        let deadline = runtime.limits.deadline;
        arm(&mut wasm, deadline);
        let timer = f.metrics.timer("instantiate");
        let instance = pre.pre.instantiate_async(&mut wasm).await;
        drop(timer);
        let instance =
            instance.map_err(|e| failure(name, "instantiate", deadline, &e, &wasm.data().last_words()))?;
        let Some(instance) = Instance::of(&mut wasm, &instance, pre.exports) else {
            return Err(GuestError::Trap {
                function: name.into(),
                phase: "instantiate",
                message: "the instance lacks an export its component was checked for".into(),
            });
        };
        f.metrics.instance_created();
        wasm.data_mut().instantiated();
        Ok(Kept { store: wasm, instance, executions: 0 })
    }

    /// Arms the deadline of the export call about to start; the instance is
    /// clean again only once the call has returned. Called once the export
    /// is known to be there: a call refused for its kind leaves it clean.
    fn arm(&mut self) {
        self.clean = false;
        arm(&mut self.kept.store, self.deadline);
    }

    /// The call returned: the instance is as its guest left it.
    fn returned<T>(&mut self, result: wasmtime::Result<T>) -> wasmtime::Result<T> {
        self.clean = result.is_ok();
        result
    }

    fn fail(&self, phase: &'static str, e: &wasmtime::Error) -> GuestError {
        failure(&self.function, phase, self.deadline, e, &self.kept.store.data().last_words())
    }

    fn invalid(&self, phase: &'static str, message: String) -> GuestError {
        GuestError::Invalid { function: self.function.clone(), phase, message }
    }

    fn wrong_kind(&self, phase: &'static str) -> GuestError {
        GuestError::WrongKind { function: self.function.clone(), phase, kind: self.kind }
    }

    fn lean(&self, phase: &'static str) -> GuestError {
        GuestError::Lean { function: self.function.clone(), phase }
    }
}

#[async_trait]
impl Instantiate for WasmPre {
    async fn start(
        &self,
        function: &Function,
        store: Option<Arc<dyn Store>>,
        wait: bool,
    ) -> Result<Option<Box<dyn Guest>>, GuestError> {
        let call = WasmCall::start(function, self, store, wait).await?;
        Ok(call.map(|call| Box::new(call) as Box<dyn Guest>))
    }

    fn operates_and_writes_at_once(&self) -> bool {
        matches!(self.exports, super::Exports::Function { operate_and_write: Some(_), .. })
    }
}

// SAFETY of every `TypedFunc::new_unchecked` below: when the component was
// loaded, `WasmPre::new` type-checked each of its exports against the
// world's signature used here (through the generated bindings), and every
// instance is of that component.
#[async_trait]
impl Guest for WasmCall {
    async fn meta(&mut self) -> Result<Meta, GuestError> {
        self.arm();
        let _timer = self.metrics.timer("meta");
        let meta = unsafe { TypedFunc::<(), (wit::Meta,)>::new_unchecked(self.kept.instance.meta()) };
        let meta = meta.call_async(&mut self.kept.store, ()).await;
        let meta = self.returned(meta);
        meta.map(|(m,)| convert::meta_from_wit(m)).map_err(|e| self.fail("meta", &e))
    }

    async fn lookup(&mut self, input: &Message) -> Result<Vec<Lookup>, GuestError> {
        let Instance::Function { lookup, .. } = self.kept.instance else {
            return Err(self.wrong_kind("lookup"));
        };
        self.arm();
        let _timer = self.metrics.timer("lookup");
        let lookup = unsafe { TypedFunc::<(&wit::Message,), (Vec<wit::Lookup>,)>::new_unchecked(lookup) };
        self.kept.store.data_mut().in_lookup = true;
        let lowered = convert::message_to_wit(input);
        let plan = lookup.call_async(&mut self.kept.store, (&lowered,)).await;
        self.lowered = Some((address(input), lowered));
        self.kept.store.data_mut().in_lookup = false;
        let plan = self.returned(plan);
        let (plan,) = plan.map_err(|e| self.fail("lookup", &e))?;
        plan.into_iter()
            .map(convert::lookup_from_wit)
            .collect::<Result<_, _>>()
            .map_err(|m| self.invalid("lookup", m))
    }

    async fn operate(&mut self, input: &Message, data: &Data) -> Result<Outcome, GuestError> {
        let operate = match self.kept.instance {
            Instance::Function { phases: Some((operate, _)), .. } => operate,
            // `operate-and-write` decides as `operate` would.
            Instance::Function { phases: None, .. } => {
                return match self.operate_and_write(input, data).await? {
                    Some((outcome, _)) => Ok(outcome),
                    None => Err(self.lean("operate")),
                };
            }
            Instance::Resolver { .. } => return Err(self.wrong_kind("operate")),
        };
        self.arm();
        let _timer = self.metrics.timer("operate");
        let operate =
            unsafe { TypedFunc::<(&wit::Message, &[wit::Found]), (wit::Outcome,)>::new_unchecked(operate) };
        let lowered = self.input(input);
        let returned =
            operate.call_async(&mut self.kept.store, (&lowered, &convert::data_to_wit(data))).await;
        let (outcome,) = self.returned(returned).map_err(|e| self.fail("operate", &e))?;
        convert::outcome_from_wit(outcome).map_err(|m| self.invalid("operate", m))
    }

    async fn operate_and_write(
        &mut self,
        input: &Message,
        data: &Data,
    ) -> Result<Option<(Outcome, Vec<WritePlan>)>, GuestError> {
        let Instance::Function { operate_and_write: Some(call), .. } = self.kept.instance else {
            return Ok(None);
        };
        self.arm();
        let _timer = self.metrics.timer("operate-and-write");
        let call =
            unsafe { TypedFunc::<(&wit::Message, &[wit::Found]), (wit::Decision,)>::new_unchecked(call) };
        let lowered = self.input(input);
        let returned = call.call_async(&mut self.kept.store, (&lowered, &convert::data_to_wit(data))).await;
        let (decision,) = self.returned(returned).map_err(|e| self.fail("operate-and-write", &e))?;
        convert::decision_from_wit(decision).map(Some).map_err(|m| self.invalid("operate-and-write", m))
    }

    async fn write(&mut self, output: &Message) -> Result<WritePlan, GuestError> {
        let write = match self.kept.instance {
            Instance::Function { phases: Some((_, write)), .. } => write,
            Instance::Function { phases: None, .. } => return Err(self.lean("write")),
            Instance::Resolver { .. } => return Err(self.wrong_kind("write")),
        };
        self.arm();
        let _timer = self.metrics.timer("write");
        let write = unsafe { TypedFunc::<(&wit::Message,), (wit::WritePlan,)>::new_unchecked(write) };
        let returned = write.call_async(&mut self.kept.store, (&convert::message_to_wit(output),)).await;
        let (plan,) = self.returned(returned).map_err(|e| self.fail("write", &e))?;
        convert::plan_from_wit(plan).map_err(|m| self.invalid("write", m))
    }

    async fn resolve(&mut self, command: &Message, seen: &[Message]) -> Result<Resolution, GuestError> {
        let Instance::Resolver { resolve, .. } = self.kept.instance else {
            return Err(self.wrong_kind("resolve"));
        };
        self.arm();
        let _timer = self.metrics.timer("resolve");
        let resolve = unsafe {
            TypedFunc::<(&wit::Message, &[wit::Message]), (wit::Resolution,)>::new_unchecked(resolve)
        };
        let seen: Vec<_> = seen.iter().map(convert::message_to_wit).collect();
        let returned =
            resolve.call_async(&mut self.kept.store, (&convert::message_to_wit(command), &seen)).await;
        let (resolution,) = self.returned(returned).map_err(|e| self.fail("resolve", &e))?;
        convert::resolution_from_wit(resolution).map_err(|m| self.invalid("resolve", m))
    }

    fn lookup_read_documents(&self) -> bool {
        self.kept.store.data().read_in_lookup
    }
}

/// Where a message lies: with its id, what tells `operate` it is given the
/// input `lookup` was (callers hold it borrowed in between).
fn address(message: &Message) -> usize {
    std::ptr::from_ref(message) as usize
}

impl WasmCall {
    /// `input` lowered: the one `lookup` was given when it is the same.
    fn input(&mut self, input: &Message) -> wit::Message {
        match self.lowered.take() {
            Some((at, lowered))
                if at == address(input) && lowered.id == input.id && lowered.kind == input.kind =>
            {
                lowered
            }
            _ => convert::message_to_wit(input),
        }
    }
}

impl Drop for WasmCall {
    /// Keeps the instance for the next execution when it may serve one.
    fn drop(&mut self) {
        // SAFETY: `kept` is taken once, here, and not touched after.
        let mut kept = unsafe { ManuallyDrop::take(&mut self.kept) };
        kept.executions += 1;
        if self.clean
            && kept.executions < self.executions_per_instance
            && kept.store.data_mut().renew(KEEP_RESIDENT)
        {
            self.idle.put(kept);
        }
    }
}

/// Gives the next export call `deadline`, checked at every epoch tick.
fn arm(store: &mut wasmtime::Store<CallState>, deadline: Duration) {
    store.data_mut().deadline_at = Instant::now() + deadline;
    store.set_epoch_deadline(1);
}

fn failure(
    function: &str,
    phase: &'static str,
    deadline: Duration,
    e: &wasmtime::Error,
    said: &str,
) -> GuestError {
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return GuestError::Deadline { function: function.into(), phase, deadline };
    }
    let cause = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    let message = if said.is_empty() { cause } else { format!("{cause}; the guest said: {said}") };
    GuestError::Trap { function: function.into(), phase, message }
}

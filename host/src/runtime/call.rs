//! One execution of a guest: a fresh wasmtime `Store` and instance, so no
//! state survives from one command to the next, with the deadline re-armed
//! before every export call.

use super::bindings::wit;
use super::convert;
use super::guest::{Guest, Instantiate};
use super::state::CallState;
use super::{Exports, Function, GuestError, WasmPre};
use crate::backend::Store;
use async_trait::async_trait;
use low_contract::{Data, FunctionKind, Lookup, Message, Meta, Outcome, Resolution, WritePlan};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};
use wasmtime::component::{Func, TypedFunc};
use wasmtime::{Trap, UpdateDeadline};

/// The exports of a live instance.
enum Instance {
    Function { meta: Func, lookup: Func, operate: Func, write: Func },
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
            Exports::Function { meta, lookup, operate, write } => Instance::Function {
                meta: get(meta)?,
                lookup: get(lookup)?,
                operate: get(operate)?,
                write: get(write)?,
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

/// A live instance of a component, for one command or one resolution.
pub struct WasmCall {
    store: wasmtime::Store<CallState>,
    instance: Instance,
    function: String,
    kind: FunctionKind,
    deadline: Duration,
    metrics: Arc<crate::metrics::GuestMetrics>,
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
        let state = CallState::new(
            name.as_str().into(),
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
            instance.map_err(|e| failure(&name, "instantiate", deadline, &e, &wasm.data().last_words()))?;
        let Some(instance) = Instance::of(&mut wasm, &instance, pre.exports) else {
            return Err(GuestError::Trap {
                function: name,
                phase: "instantiate",
                message: "the instance lacks an export its component was checked for".into(),
            });
        };
        f.metrics.instance_created();
        Ok(Some(Self {
            store: wasm,
            instance,
            function: name,
            kind: f.meta.kind,
            deadline,
            metrics: Arc::clone(&f.metrics),
            _slot: slot,
        }))
    }

    fn arm(&mut self) {
        arm(&mut self.store, self.deadline);
    }

    fn fail(&self, phase: &'static str, e: &wasmtime::Error) -> GuestError {
        failure(&self.function, phase, self.deadline, e, &self.store.data().last_words())
    }

    fn invalid(&self, phase: &'static str, message: String) -> GuestError {
        GuestError::Invalid { function: self.function.clone(), phase, message }
    }

    fn wrong_kind(&self, phase: &'static str) -> GuestError {
        GuestError::WrongKind { function: self.function.clone(), phase, kind: self.kind }
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
        let meta = unsafe { TypedFunc::<(), (wit::Meta,)>::new_unchecked(self.instance.meta()) };
        let meta = meta.call_async(&mut self.store, ()).await;
        meta.map(|(m,)| convert::meta_from_wit(m)).map_err(|e| self.fail("meta", &e))
    }

    async fn lookup(&mut self, input: &Message) -> Result<Vec<Lookup>, GuestError> {
        self.arm();
        let _timer = self.metrics.timer("lookup");
        let Instance::Function { lookup, .. } = self.instance else { return Err(self.wrong_kind("lookup")) };
        let lookup = unsafe { TypedFunc::<(&wit::Message,), (Vec<wit::Lookup>,)>::new_unchecked(lookup) };
        self.store.data_mut().in_lookup = true;
        let plan = lookup.call_async(&mut self.store, (&convert::message_to_wit(input),)).await;
        self.store.data_mut().in_lookup = false;
        let (plan,) = plan.map_err(|e| self.fail("lookup", &e))?;
        plan.into_iter()
            .map(convert::lookup_from_wit)
            .collect::<Result<_, _>>()
            .map_err(|m| self.invalid("lookup", m))
    }

    async fn operate(&mut self, input: &Message, data: &Data) -> Result<Outcome, GuestError> {
        self.arm();
        let _timer = self.metrics.timer("operate");
        let Instance::Function { operate, .. } = self.instance else {
            return Err(self.wrong_kind("operate"));
        };
        let operate =
            unsafe { TypedFunc::<(&wit::Message, &[wit::Found]), (wit::Outcome,)>::new_unchecked(operate) };
        let (outcome,) = operate
            .call_async(&mut self.store, (&convert::message_to_wit(input), &convert::data_to_wit(data)))
            .await
            .map_err(|e| self.fail("operate", &e))?;
        convert::outcome_from_wit(outcome).map_err(|m| self.invalid("operate", m))
    }

    async fn write(&mut self, output: &Message) -> Result<WritePlan, GuestError> {
        self.arm();
        let _timer = self.metrics.timer("write");
        let Instance::Function { write, .. } = self.instance else { return Err(self.wrong_kind("write")) };
        let write = unsafe { TypedFunc::<(&wit::Message,), (wit::WritePlan,)>::new_unchecked(write) };
        let (plan,) = write
            .call_async(&mut self.store, (&convert::message_to_wit(output),))
            .await
            .map_err(|e| self.fail("write", &e))?;
        convert::plan_from_wit(plan).map_err(|m| self.invalid("write", m))
    }

    async fn resolve(&mut self, command: &Message, seen: &[Message]) -> Result<Resolution, GuestError> {
        self.arm();
        let _timer = self.metrics.timer("resolve");
        let Instance::Resolver { resolve, .. } = self.instance else {
            return Err(self.wrong_kind("resolve"));
        };
        let resolve = unsafe {
            TypedFunc::<(&wit::Message, &[wit::Message]), (wit::Resolution,)>::new_unchecked(resolve)
        };
        let seen: Vec<_> = seen.iter().map(convert::message_to_wit).collect();
        let (resolution,) = resolve
            .call_async(&mut self.store, (&convert::message_to_wit(command), &seen))
            .await
            .map_err(|e| self.fail("resolve", &e))?;
        convert::resolution_from_wit(resolution).map_err(|m| self.invalid("resolve", m))
    }

    fn lookup_read_documents(&self) -> bool {
        self.store.data().read_in_lookup
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

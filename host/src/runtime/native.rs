//! Functions compiled into the shell: the same `low_contract` logic as a
//! guest, called directly instead of through a component. They exist so the
//! benchmarks can compare WebAssembly against native through the very same
//! executor, store and bus; production functions are components.

use super::guest::{Guest, Instantiate};
use super::{Function, GuestError, HostEnv};
use crate::backend::Store;
use async_trait::async_trait;
use low_contract::{
    Data, Document, Env, Function as LowFunction, FunctionKind, Level, Lookup, Message, Meta, Outcome,
    Resolution, Resolver as LowResolver, StoreRead, Value, WritePlan,
};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// A function or resolver the shell calls directly. Each phase answers
/// `None` when the function is not of the kind that has it.
pub trait NativeGuest: Send + Sync + 'static {
    fn meta(&self) -> Meta;
    fn lookup(&self, _input: &Message, _env: &dyn Env) -> Option<Vec<Lookup>> {
        None
    }
    fn operate(&self, _input: &Message, _data: &Data, _env: &dyn Env) -> Option<Outcome> {
        None
    }
    fn write(&self, _output: &Message, _env: &dyn Env) -> Option<WritePlan> {
        None
    }
    fn resolve(&self, _command: &Message, _seen: &[Message], _env: &dyn Env) -> Option<Resolution> {
        None
    }
}

/// A [`low_contract::Function`] as a [`NativeGuest`].
pub struct NativeFunction<F>(PhantomData<fn() -> F>);

impl<F> Default for NativeFunction<F> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// Native functions get no store in `lookup`: lookups that need one belong in the plan.
struct NoStore;

impl StoreRead for NoStore {
    fn get(&self, _: &str, _: &str) -> Result<Option<Document>, String> {
        Err("the store is not readable by native functions".into())
    }
    fn find(&self, _: &str, _: &str, _: &Value) -> Result<Vec<Document>, String> {
        Err("the store is not readable by native functions".into())
    }
}

impl<F: LowFunction + 'static> NativeGuest for NativeFunction<F> {
    fn meta(&self) -> Meta {
        F::meta()
    }
    fn lookup(&self, input: &Message, env: &dyn Env) -> Option<Vec<Lookup>> {
        Some(F::lookup(input, &NoStore, env))
    }
    fn operate(&self, input: &Message, data: &Data, env: &dyn Env) -> Option<Outcome> {
        Some(F::operate(input, data, env))
    }
    fn write(&self, output: &Message, env: &dyn Env) -> Option<WritePlan> {
        Some(F::write(output, env))
    }
}

/// A [`low_contract::Resolver`] as a [`NativeGuest`].
pub struct NativeResolver<R>(PhantomData<fn() -> R>);

impl<R> Default for NativeResolver<R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<R: LowResolver + 'static> NativeGuest for NativeResolver<R> {
    fn meta(&self) -> Meta {
        R::meta()
    }
    fn resolve(&self, command: &Message, seen: &[Message], env: &dyn Env) -> Option<Resolution> {
        Some(R::resolve(command, seen, env))
    }
}

/// The shell's [`HostEnv`] as the contract's [`Env`].
struct EnvOf<'a> {
    env: &'a dyn HostEnv,
    function: &'a str,
}

impl Env for EnvOf<'_> {
    fn new_id(&self) -> String {
        self.env.new_id()
    }
    fn now_ms(&self) -> u64 {
        self.env.now_ms()
    }
    fn log(&self, level: Level, message: &str) {
        self.env.log(self.function, level, message)
    }
}

/// One execution of a native function.
pub struct NativeCall {
    guest: Arc<dyn NativeGuest>,
    function: String,
    kind: FunctionKind,
    env: Arc<dyn HostEnv>,
}

impl NativeCall {
    pub(super) fn new(
        guest: Arc<dyn NativeGuest>,
        function: String,
        kind: FunctionKind,
        env: Arc<dyn HostEnv>,
    ) -> Self {
        Self { guest, function, kind, env }
    }

    /// Runs one phase; a panic becomes a trap, as in a component.
    fn run<T>(
        &self,
        phase: &'static str,
        f: impl FnOnce(&dyn NativeGuest, &dyn Env) -> Option<T>,
    ) -> Result<T, GuestError> {
        let env = EnvOf { env: &*self.env, function: &self.function };
        match catch_unwind(AssertUnwindSafe(|| f(&*self.guest, &env))) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => {
                Err(GuestError::WrongKind { function: self.function.clone(), phase, kind: self.kind })
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panicked".into());
                Err(GuestError::Trap { function: self.function.clone(), phase, message })
            }
        }
    }
}

#[async_trait]
impl Guest for NativeCall {
    async fn meta(&mut self) -> Result<Meta, GuestError> {
        self.run("meta", |g, _| Some(g.meta()))
    }
    async fn lookup(&mut self, input: &Message) -> Result<Vec<Lookup>, GuestError> {
        self.run("lookup", |g, env| g.lookup(input, env))
    }
    async fn operate(&mut self, input: &Message, data: &Data) -> Result<Outcome, GuestError> {
        self.run("operate", |g, env| g.operate(input, data, env))
    }
    async fn write(&mut self, output: &Message) -> Result<WritePlan, GuestError> {
        self.run("write", |g, env| g.write(output, env))
    }
    async fn resolve(&mut self, command: &Message, seen: &[Message]) -> Result<Resolution, GuestError> {
        self.run("resolve", |g, env| g.resolve(command, seen, env))
    }
    /// A native `lookup` is given no store.
    fn lookup_read_documents(&self) -> bool {
        false
    }
}

/// A native function, loaded: each execution calls it directly.
pub(super) struct NativePre(pub(super) Arc<dyn NativeGuest>);

#[async_trait]
impl Instantiate for NativePre {
    async fn start(
        &self,
        function: &Function,
        _store: Option<Arc<dyn Store>>,
        _wait: bool,
    ) -> Result<Option<Box<dyn Guest>>, GuestError> {
        // Native calls take no instance slot.
        Ok(Some(Box::new(NativeCall::new(
            Arc::clone(&self.0),
            function.meta.name.clone(),
            function.meta.kind,
            Arc::clone(&function.runtime.env),
        ))))
    }
}

/// The example product's functions, compiled in: the native baseline of
/// `projects/native.toml` (needs the `native-baseline` feature).
#[cfg(feature = "native-baseline")]
pub fn catalogue(name: &str) -> Option<Arc<dyn NativeGuest>> {
    match name {
        "invite-customer" => Some(Arc::new(NativeFunction::<invite_customer::InviteCustomer>::default())),
        "customer-projector" => {
            Some(Arc::new(NativeFunction::<customer_projector::CustomerProjector>::default()))
        }
        "invite-resolver" => Some(Arc::new(NativeResolver::<invite_resolver::InviteResolver>::default())),
        _ => None,
    }
}

/// Without the `native-baseline` feature no function is compiled in.
#[cfg(not(feature = "native-baseline"))]
pub fn catalogue(_name: &str) -> Option<Arc<dyn NativeGuest>> {
    None
}

//! One execution of a function, whatever runs it: the executor, the
//! responses and the stub host call a [`Guest`], and never ask whether it
//! is a component instance ([`WasmCall`](super::WasmCall)) or native code
//! ([`NativeCall`](super::NativeCall)).

use super::{Function, GuestError};
use crate::backend::Store;
use async_trait::async_trait;
use low_contract::{Data, Lookup, Message, Meta, Outcome, Resolution, WritePlan};
use std::sync::Arc;

/// One execution: the contract's exports, called in LOW order on one
/// fresh instance. A phase the function's kind lacks is a
/// [`GuestError::WrongKind`].
#[async_trait]
pub trait Guest: Send {
    async fn meta(&mut self) -> Result<Meta, GuestError>;
    async fn lookup(&mut self, input: &Message) -> Result<Vec<Lookup>, GuestError>;
    async fn operate(&mut self, input: &Message, data: &Data) -> Result<Outcome, GuestError>;
    async fn write(&mut self, output: &Message) -> Result<WritePlan, GuestError>;
    /// `operate`, then `write` for each message it emits (stamped), in one
    /// call: the outcome and one plan a message. `None` when the guest has
    /// no such call: then ask the two in turn.
    async fn operate_and_write(
        &mut self,
        _input: &Message,
        _data: &Data,
    ) -> Result<Option<(Outcome, Vec<WritePlan>)>, GuestError> {
        Ok(None)
    }
    async fn resolve(&mut self, command: &Message, seen: &[Message]) -> Result<Resolution, GuestError>;
    /// Whether `lookup` read documents from the store: its plan may then
    /// depend on what the store held at that moment.
    fn lookup_read_documents(&self) -> bool;
}

/// What a loaded [`Function`] keeps to start executions cheaply.
#[async_trait]
pub(super) trait Instantiate: Send + Sync {
    /// A fresh execution; with `wait` false, `None` rather than waiting
    /// for a free instance slot.
    async fn start(
        &self,
        function: &Function,
        store: Option<Arc<dyn Store>>,
        wait: bool,
    ) -> Result<Option<Box<dyn Guest>>, GuestError>;

    /// Whether its executions answer `operate` and `write` in one call.
    fn operates_and_writes_at_once(&self) -> bool {
        false
    }
}

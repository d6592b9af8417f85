//! Runs the LOW cycle for one delivered message:
//! lookup → run the lookup plan → operate → write (per emitted message) →
//! commit plans, events, notifications and checkpoint together. A conflict at
//! commit retries the whole cycle with a fresh lookup (and a fresh instance).
//!
//! The executor knows the contract, the [`Store`] and the [`Bus`] traits, and
//! nothing about the technology behind them.

use crate::bus::{Bus, BusError, Delivery, Subscription};
use crate::registry::{Functions, Registry};
use crate::runtime::{Function, GuestError, StepLimits};
use crate::store::{Checkpoint, Commit, Event, Store, StoreError};
use low_contract::{
    COMMANDS_TOPIC, Data, FAILED, Found, Lookup, Message, Outcome, Query, REJECTED, WritePlan, json,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::Instrument;

/// One step of one function, carrying the request's correlation id so a
/// command can be followed through its handler, projectors and resolver.
fn step_span(function: &str, delivery: &Delivery) -> tracing::Span {
    let message = &delivery.event.message;
    tracing::info_span!(
        "step",
        function,
        kind = %message.kind,
        message_id = %message.id,
        correlation_id = message.correlation_id.as_deref().unwrap_or(""),
        position = delivery.position,
    )
}

/// Why a step did not commit.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("function `{function}` produced an invalid plan: {message}")]
    Invalid { function: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("function `{function}` kept conflicting after {attempts} attempts: {last}")]
    Conflicts { function: String, attempts: u32, last: String },
    /// The step (its guest calls and its lookup plan together) ran past `limits.step-deadline-ms`.
    #[error(
        "function `{function}` ran past its step deadline of {deadline:?} (limits.step-deadline-ms) at {during}"
    )]
    Deadline { function: String, deadline: Duration, during: &'static str },
}

/// The running consumers; dropping this stops them all.
#[derive(Default)]
struct Consumers {
    tasks: JoinSet<()>,
    by_name: HashMap<String, (Vec<String>, AbortHandle)>,
}

pub struct Executor {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    /// Attempts per step when commits conflict.
    attempts: u32,
}

/// How long to wait before retrying when the store is unreachable.
const UNAVAILABLE_BACKOFF: Duration = Duration::from_millis(500);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Executor {
    pub fn new(registry: Arc<Registry>, store: Arc<dyn Store>, attempts: u32) -> Self {
        Self { registry, store, attempts: attempts.max(1) }
    }

    /// Subscribes every handler and projector to its inputs, then keeps the
    /// consumers in step with the registry: a function deployed with new
    /// inputs is resubscribed, a new one gets a consumer, a removed one loses
    /// it. One task per function, so each function sees its inputs in log
    /// order. Aborting the returned task stops every consumer.
    pub async fn start(self: &Arc<Self>, bus: Arc<dyn Bus>) -> Result<JoinHandle<()>, BusError> {
        let mut consumers = Consumers::default();
        self.reconcile(&*bus, &mut consumers).await?;
        let this = Arc::clone(self);
        let mut changes = self.registry.watch();
        Ok(tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if let Err(e) = this.reconcile(&*bus, &mut consumers).await {
                    tracing::error!("could not subscribe a deployed function: {e}");
                }
            }
        }))
    }

    async fn reconcile(self: &Arc<Self>, bus: &dyn Bus, consumers: &mut Consumers) -> Result<(), BusError> {
        let functions = self.registry.current();
        consumers.by_name.retain(|name, (_, task)| {
            let keep = functions.consumers().any(|f| f.name() == name);
            if !keep {
                task.abort();
            }
            keep
        });
        for function in functions.consumers() {
            let name = function.name().to_owned();
            if consumers.by_name.get(&name).is_some_and(|(inputs, _)| *inputs == function.meta.inputs) {
                continue;
            }
            let subscription = bus.subscribe(&name, &function.meta.inputs).await?;
            tracing::info!(function = %name, version = %function.version, inputs = ?function.meta.inputs, "consuming");
            let task = consumers.tasks.spawn(Arc::clone(self).consume(name.clone(), subscription));
            if let Some((_, old)) = consumers.by_name.insert(name, (function.meta.inputs.clone(), task)) {
                old.abort();
            }
        }
        Ok(())
    }

    async fn consume(self: Arc<Self>, function: String, mut subscription: Box<dyn Subscription>) {
        while let Some(delivery) = subscription.next().await {
            let span = step_span(&function, &delivery);
            self.handle(&function, &delivery).instrument(span).await;
        }
        tracing::debug!(%function, "consumer stopped");
    }

    /// Processes one delivery to completion: committed, or failed with a
    /// `Failed` notification to the requester. Never gives up on a store that
    /// is merely unavailable.
    pub async fn handle(&self, function: &str, delivery: &Delivery) {
        let checkpoint = Checkpoint { consumer: function.to_owned(), position: delivery.position };
        loop {
            let functions = self.registry.current();
            let result = match functions.get(function) {
                Some(f) if wants(f, delivery) => self.step(&functions, f, delivery, &checkpoint).await,
                // Not ours (another handler's command, or the function is gone): only move on.
                _ => self
                    .store
                    .commit(Commit { checkpoint: Some(checkpoint.clone()), ..Commit::default() })
                    .await
                    .map_err(Into::into),
            };
            match result {
                Ok(()) => return,
                Err(StepError::Store(StoreError::Unavailable(e))) => {
                    tracing::warn!(%function, position = delivery.position, "store unavailable, retrying: {e}");
                    tokio::time::sleep(UNAVAILABLE_BACKOFF).await;
                }
                Err(e) => {
                    let message = &delivery.event.message;
                    tracing::warn!(%function, kind = %message.kind, id = %message.id, "step failed: {e}");
                    let failed = notification(
                        message,
                        FAILED,
                        json!({ "reason": e.to_string(), "function": function }),
                    );
                    let commit = Commit {
                        notify: failed.into_iter().collect(),
                        checkpoint: Some(checkpoint.clone()),
                        ..Commit::default()
                    };
                    match self.store.commit(commit).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(%function, "could not record the failure, retrying: {e}");
                            tokio::time::sleep(UNAVAILABLE_BACKOFF).await;
                        }
                    }
                }
            }
        }
    }

    async fn step(
        &self,
        functions: &Functions,
        function: &Arc<Function>,
        delivery: &Delivery,
        checkpoint: &Checkpoint,
    ) -> Result<(), StepError> {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let cycle = run_cycle(functions, function, &self.store, &delivery.event.message).await?;
            let commit = Commit { checkpoint: Some(checkpoint.clone()), ..cycle.commit };
            match self.store.commit(commit).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(conflict)) => {
                    tracing::debug!(
                        function = function.name(),
                        attempt,
                        "conflict, retrying with a fresh lookup: {conflict}"
                    );
                    last = conflict;
                    // Let the competing step finish before looking again.
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StepError::Conflicts { function: function.name().to_owned(), attempts: self.attempts, last })
    }
}

/// Everything one LOW cycle decided, before it is committed.
#[derive(Debug, Clone)]
pub struct Cycle {
    /// The lookup plan, and what running it found.
    pub lookups: Vec<Lookup>,
    pub data: Data,
    pub outcome: Outcome,
    /// One write plan per emitted message, in order.
    pub plans: Vec<WritePlan>,
    /// What to commit: the plans' ops, the events (stamped), the
    /// notifications (correlated); no checkpoint.
    pub commit: Commit,
}

/// Runs lookup → lookup plan → operate → write on a fresh instance of
/// `function`, checking the plans against what `functions` declare and
/// against the function's [`StepLimits`]. Commits nothing.
///
/// The whole cycle is bounded by the step deadline: it is checked before
/// each guest call and at the end, and the lookup plan (and whatever the
/// cycle waits on) is cut off when it runs out. A guest call in progress is
/// bounded by its own per-call deadline.
pub async fn run_cycle(
    functions: &Functions,
    function: &Arc<Function>,
    store: &Arc<dyn Store>,
    input: &Message,
) -> Result<Cycle, StepError> {
    let mut call = function.start(Some(Arc::clone(store))).await?;
    // The clock starts once the step has its instance: waiting for a free
    // slot is the shell's load, not the step's doing.
    let budget = Budget::start(function);
    let limits = budget.limits;
    let lookups = budget.within("`lookup`", async { Ok(call.lookup(input).await?) }).await?;
    let data = budget.within("its lookup plan", run_lookups(functions, function, store, &lookups)).await?;
    let outcome = budget.within("`operate`", async { Ok(call.operate(input, &data).await?) }).await?;
    let mut commit = Commit::default();
    let mut plans = vec![];
    match &outcome {
        Outcome::Ignore => {}
        Outcome::Reject(reason) => {
            commit.notify.extend(notification(input, REJECTED, json!({ "reason": reason })));
        }
        Outcome::Emit(messages) => {
            if messages.len() > limits.events {
                return Err(invalid(
                    function,
                    format!(
                        "`operate` emits {} messages, more than limits.events ({})",
                        messages.len(),
                        limits.events
                    ),
                ));
            }
            let mut notifications = 0usize;
            for message in messages {
                let message = stamp(message.clone(), input);
                let plan = budget.within("`write`", async { Ok(call.write(&message).await?) }).await?;
                if commit.ops.len().saturating_add(plan.ops.len()) > limits.ops {
                    return Err(invalid(
                        function,
                        format!("its write plans hold more than limits.ops ({}) write ops", limits.ops),
                    ));
                }
                notifications = notifications.saturating_add(plan.notify.len());
                if notifications > limits.notifications {
                    return Err(invalid(
                        function,
                        format!(
                            "its write plans hold more than limits.notifications ({}) notifications",
                            limits.notifications
                        ),
                    ));
                }
                for op in &plan.ops {
                    check_write(functions, function, op.collection(), op.key())?;
                }
                commit.ops.extend(plan.ops.iter().cloned());
                commit.notify.extend(plan.notify.iter().cloned().filter_map(|n| correlate(n, input)));
                plans.push(plan);
                if let Some(topic) = &function.meta.output {
                    commit.events.push(Event {
                        topic: topic.clone(),
                        message,
                        function: Some(function.name().to_owned()),
                        version: Some(function.version.0.clone()),
                        at_ms: now_ms(),
                    });
                }
            }
        }
    }
    budget.within("the end of the step", async { Ok(()) }).await?;
    Ok(Cycle { lookups, data, outcome, plans, commit })
}

/// A step's deadline, and the caps it runs under.
struct Budget<'a> {
    function: &'a Function,
    limits: StepLimits,
    deadline: tokio::time::Instant,
}

impl<'a> Budget<'a> {
    fn start(function: &'a Function) -> Self {
        let limits = function.limits().step;
        Self { function, limits, deadline: tokio::time::Instant::now() + limits.deadline }
    }

    /// Runs `work` if the step has time left, and cuts it off when it runs out.
    async fn within<T>(
        &self,
        during: &'static str,
        work: impl Future<Output = Result<T, StepError>>,
    ) -> Result<T, StepError> {
        let late = || StepError::Deadline {
            function: self.function.name().to_owned(),
            deadline: self.limits.deadline,
            during,
        };
        if tokio::time::Instant::now() >= self.deadline {
            return Err(late());
        }
        tokio::time::timeout_at(self.deadline, work).await.unwrap_or_else(|_| Err(late()))
    }
}

/// Checks a lookup plan against the collections `functions` declare, then runs it.
async fn run_lookups(
    functions: &Functions,
    function: &Function,
    store: &Arc<dyn Store>,
    plan: &[Lookup],
) -> Result<Data, StepError> {
    check_lookup_count(function, plan)?;
    for lookup in plan {
        let collection = lookup.query.collection();
        if functions.model(collection).is_none() {
            return Err(invalid(
                function,
                format!("lookup `{}` reads unknown collection `{collection}`", lookup.name),
            ));
        }
    }
    read_lookups(function, store, plan).await
}

fn check_lookup_count(function: &Function, plan: &[Lookup]) -> Result<(), StepError> {
    let most = function.limits().step.lookups;
    if plan.len() > most {
        return Err(invalid(
            function,
            format!("its lookup plan has {} lookups, more than limits.lookups ({most})", plan.len()),
        ));
    }
    Ok(())
}

/// Runs a lookup plan against `store` within the function's caps (the
/// number of lookups, the documents one `find` may return); the collections
/// are not checked. The stub host runs plans with this too.
pub async fn read_lookups(
    function: &Function,
    store: &Arc<dyn Store>,
    plan: &[Lookup],
) -> Result<Data, StepError> {
    check_lookup_count(function, plan)?;
    let most = function.limits().step.find_documents;
    let mut data = Data::default();
    for lookup in plan {
        let documents = match &lookup.query {
            Query::Key { collection, key } => store.get(collection, key).await?.into_iter().collect(),
            Query::Field { collection, field, value } => {
                // One more than allowed tells "exactly the limit" from "too many".
                let found = store.find(collection, field, value, most.saturating_add(1)).await?;
                if found.len() > most {
                    let why = crate::runtime::too_many_found(collection, field, value, most);
                    return Err(invalid(function, format!("lookup `{}`: {why}", lookup.name)));
                }
                found
            }
        };
        data.0.push(Found { name: lookup.name.clone(), documents });
    }
    Ok(data)
}

fn check_write(
    functions: &Functions,
    function: &Function,
    collection: &str,
    key: &str,
) -> Result<(), StepError> {
    match functions.model(collection) {
        None => Err(invalid(function, format!("writes to unknown collection `{collection}`"))),
        Some((owner, _)) if owner != function.name() => {
            Err(invalid(function, format!("writes to collection `{collection}`, which `{owner}` owns")))
        }
        Some(_) if key.is_empty() => {
            Err(invalid(function, format!("writes a document with an empty key to `{collection}`")))
        }
        Some(_) => Ok(()),
    }
}

fn invalid(function: &Function, message: String) -> StepError {
    StepError::Invalid { function: function.name().to_owned(), message }
}

/// Whether the delivery is for this function: commands only reach the
/// handler that declares them.
fn wants(function: &Function, delivery: &Delivery) -> bool {
    delivery.event.topic != COMMANDS_TOPIC
        || function.meta.commands.iter().any(|c| c.name == delivery.event.message.kind)
}

/// An emitted message carries the request it serves and the message that caused it.
fn stamp(mut message: Message, input: &Message) -> Message {
    if message.id.is_empty() {
        message.id = uuid::Uuid::new_v4().to_string();
    }
    message.correlation_id = input.correlation_id.clone();
    message.causation_id = Some(input.id.clone());
    message
}

/// A notification for whoever waits on the input's request, if anyone does.
fn correlate(mut notification: Message, input: &Message) -> Option<Message> {
    notification.correlation_id = Some(input.correlation_id.clone()?);
    notification.causation_id = Some(input.id.clone());
    if notification.id.is_empty() {
        notification.id = uuid::Uuid::new_v4().to_string();
    }
    Some(notification)
}

fn notification(input: &Message, kind: &str, payload: low_contract::Value) -> Option<Message> {
    correlate(Message::new(uuid::Uuid::new_v4().to_string(), kind, payload), input)
}

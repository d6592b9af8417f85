//! Runs the LOW cycle for one delivered message:
//! lookup → run the lookup plan → operate → write (per emitted message) →
//! commit plans, events, notifications and checkpoint together. A conflict at
//! commit retries the whole cycle with a fresh lookup (and a fresh instance).
//!
//! Deliveries the bus has at hand together are committed together (group
//! commit): each step's lookups see the writes of the steps before it, and
//! when anything in the group fails, its steps are committed one by one.
//!
//! A command whose step fails fails its request (a `Failed` notification).
//! An event whose step fails is retried with backoff, then — per the
//! function's [`ConsumerPolicy`] — *parked* (a dead-letter record committed
//! with the checkpoint advance past it; [`Executor::retry`] applies it later)
//! or the consumer *stops* at it, retrying slowly, so that nothing after it
//! is processed first. Nothing is skipped in silence.
//!
//! The executor knows the contract, the [`Store`] and the [`Bus`] traits, and
//! nothing about the technology behind them.

use crate::backend::overlay::Overlay;
use crate::backend::{Bus, BusError, CommandChain, Delivery, Partition, Subscription};
use crate::backend::{Chained, Checkpoint, Commit, Event, Parked, Store, StoreError};
use crate::config::{ConsumerPolicy, MAX_BACKOFF, OnFailure};
use crate::deploy::shadow::{Decision, Offer, Shadows};
use crate::maps::{Map, Set};
use crate::registry::{Functions, Registry};
use crate::runtime::{Function, Guest, GuestError, HostEnv, StepLimits};
use low_contract::{
    COMMANDS_TOPIC, Data, FAILED, Found, FunctionKind, Lookup, Message, Outcome, Query, REJECTED, WriteOp,
    WritePlan, json,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

/// A batch of submitted commands appended with the steps they cause here:
/// the handler's, chained, and its projector's on those — one transaction
/// for a command at low load (see [`Executor::chain`]).
#[async_trait::async_trait]
impl CommandChain for Executor {
    async fn append(&self, commands: &[Event]) -> Option<Result<(), StoreError>> {
        let functions = self.registry.current();
        let commit = Commit { events: commands.to_vec(), ..Commit::default() };
        let (chain, _claimed) = self.chain(&functions, None, None, &commit).await;
        if chain.is_empty() {
            return None;
        }
        Some(self.commit_chain(commit, chain).await.map(drop))
    }
}

/// One step of one function, carrying the request's correlation id so a
/// command can be followed through its handler, projectors and resolver.
fn step_span(function: &str, delivery: &Delivery) -> tracing::Span {
    let message = &delivery.event.message;
    tracing::debug_span!(
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

/// A consumer stopped at an event whose step keeps failing (policy
/// `on-failure = "stop"`): it retries it slowly and processes nothing after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Stopped {
    pub function: String,
    /// The consumer stopped: the function's, or one partition's.
    pub consumer: String,
    pub position: u64,
    pub event: Event,
    /// Why the last attempt failed.
    pub error: String,
    pub attempts: u32,
    /// When it stopped, and when it last tried (ms since the epoch).
    pub since_ms: u64,
    pub attempted_at_ms: u64,
}

/// What one retry of a parked (or stopped-at) event did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Retried {
    pub position: u64,
    /// Applied with the current version of the function: no longer parked.
    pub applied: bool,
    /// Why it failed again, when it did.
    pub error: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
}

/// Why a retry could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("no handler or projector is named `{0}`")]
    UnknownFunction(String),
    #[error("`{function}` has no parked event at position {position}, and is not stopped there")]
    NotParked { function: String, position: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A consumer was told to stop (a swap that changes its inputs, or the
/// shell shutting down) while it waited.
struct Interrupted;

/// One consumer of a function's inputs: all of them, or one partition.
#[derive(Debug, Clone)]
struct Lane {
    function: String,
    /// Its checkpoint's (and lease's) name: the function's, or the partition's.
    consumer: String,
    partition: Option<Partition>,
}

impl Lane {
    async fn subscribe(
        &self,
        bus: &Arc<dyn Bus>,
        inputs: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        match &self.partition {
            Some(partition) => bus.subscribe_partition(&self.function, inputs, partition.clone()).await,
            None => bus.subscribe(&self.function, inputs).await,
        }
    }
}

/// One running consumer.
struct Consumer {
    inputs: Vec<String>,
    /// Set to stop it once its current step is done.
    stop: watch::Sender<bool>,
    /// Its subscription, once it has stopped: the next consumer of the
    /// function takes over from there.
    handover: oneshot::Receiver<Box<dyn Subscription>>,
}

/// The running consumers; dropping this stops them all.
#[derive(Default)]
struct Consumers {
    tasks: JoinSet<()>,
    by_name: HashMap<String, Consumer>,
}

pub struct Executor {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    /// Ids and time for what the executor itself says (failure notices,
    /// parked records): the guests' source.
    env: Arc<dyn HostEnv>,
    /// Attempts per step when commits conflict.
    attempts: u32,
    /// Failure policies by function; the default for the others.
    policies: BTreeMap<String, ConsumerPolicy>,
    /// The consumers stopped at a failing event, by consumer name.
    stopped: Mutex<BTreeMap<String, Stopped>>,
    /// Wake a stopped consumer for an immediate retry, by consumer name.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// Functions given a `lowshell_parked_events` gauge so far.
    gauges: Mutex<BTreeSet<String>>,
    /// Candidates run beside the live versions on the steps committed here.
    shadows: Arc<Shadows>,
    /// The consumers of this shell waiting for deliveries: those worth
    /// chaining a commit's events to (see [`Executor::chain`]).
    idle: Mutex<Set<String>>,
    /// Consumers not chained to until then (their chained steps failed).
    cooling: Mutex<Map<String, Instant>>,
    /// Consumers whose steps a commit is taking (chained) now: one such
    /// commit at a time per consumer, so that each decides on what the one
    /// before it committed.
    chaining: Mutex<Set<String>>,
}

/// The consumers one commit is taking steps for ([`Executor::chain`]),
/// given back when it has committed or given up.
struct Claimed<'a> {
    chaining: &'a Mutex<Set<String>>,
    consumers: Vec<String>,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        let mut chaining = lock(self.chaining);
        for consumer in &self.consumers {
            chaining.remove(consumer);
        }
    }
}

/// Most deliveries committed together (group commit), when the bus has
/// that many at hand.
const GROUP: usize = 32;
/// Most events a commit carries another consumer's steps on (chained):
/// chaining saves that consumer a read of the log and a commit, but puts its
/// steps on the emitting consumer's path, so a large group (a busy shell)
/// is left to the two consumers working side by side.
const CHAIN_MOST: usize = 8;
/// How long the chained steps of one commit may take before the commit
/// goes without them.
const CHAIN_BUDGET: Duration = Duration::from_millis(100);
/// How long a consumer whose chained steps failed or ran out of time is not
/// chained to: its steps are taken as usual meanwhile.
const CHAIN_COOLDOWN: Duration = Duration::from_secs(1);
/// Most consumers one commit chains, each on the events of the one before
/// (a submitted command's handler, then the projector of its events).
const CHAIN_DEPTH: usize = 3;
/// How long to wait before retrying when the store is unreachable.
const UNAVAILABLE_BACKOFF: Duration = Duration::from_millis(500);
/// How often the parked-events gauges are read from the store (other shells
/// on the same database park and retry too).
const PARKED_REFRESH: Duration = Duration::from_secs(5);
/// The shortest wait between two tries of a stopped consumer.
const STOPPED_MIN_WAIT: Duration = Duration::from_millis(100);
/// How long a retry of a stopped consumer waits for its outcome.
const STOPPED_RETRY_WAIT: Duration = Duration::from_secs(30);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits `duration`, or until `wake` fires; `Err` as soon as the consumer is
/// told to stop.
async fn pause(
    duration: Duration,
    stop: &mut watch::Receiver<bool>,
    wake: Option<&Notify>,
) -> Result<(), Interrupted> {
    let woken = async {
        match wake {
            Some(wake) => wake.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        // `Err`: the executor is gone, which stops the consumer too.
        _ = stop.wait_for(|stop| *stop) => Err(Interrupted),
        () = woken => Ok(()),
        () = tokio::time::sleep(duration) => Ok(()),
    }
}

impl Executor {
    pub fn new(registry: Arc<Registry>, store: Arc<dyn Store>, env: Arc<dyn HostEnv>, attempts: u32) -> Self {
        Self {
            shadows: Arc::new(Shadows::new(Arc::clone(&registry), Arc::clone(&store))),
            registry,
            store,
            env,
            attempts: attempts.max(1),
            policies: BTreeMap::new(),
            stopped: Mutex::default(),
            wakers: Mutex::default(),
            gauges: Mutex::default(),
            idle: Mutex::default(),
            cooling: Mutex::default(),
            chaining: Mutex::default(),
        }
    }

    /// Sets the failure policies of the functions named (`[consumers.NAME]`).
    pub fn with_policies(mut self, policies: BTreeMap<String, ConsumerPolicy>) -> Self {
        self.policies = policies;
        self
    }

    fn policy(&self, function: &str) -> ConsumerPolicy {
        self.policies.get(function).cloned().unwrap_or_default()
    }

    fn waker(&self, function: &str) -> Arc<Notify> {
        Arc::clone(lock(&self.wakers).entry(function.to_owned()).or_default())
    }

    /// The consumers of this shell stopped at a failing event.
    pub fn stopped(&self) -> Vec<Stopped> {
        lock(&self.stopped).values().cloned().collect()
    }

    /// The shadow candidates, for the admin endpoints.
    pub fn shadows(&self) -> &Arc<Shadows> {
        &self.shadows
    }

    /// The store, for the admin endpoints (parked events).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Subscribes every handler and projector to its inputs, then keeps the
    /// consumers in step with the registry: a function deployed with new
    /// inputs is resubscribed, a new one gets a consumer, a removed one loses
    /// it. One task per function, so each function sees its inputs in log
    /// order. Aborting the returned task stops every consumer.
    pub async fn start(self: &Arc<Self>, bus: Arc<dyn Bus>) -> Result<JoinHandle<()>, BusError> {
        let mut consumers = Consumers::default();
        self.reconcile(&bus, &mut consumers).await?;
        let chain: std::sync::Weak<dyn CommandChain> = Arc::downgrade(self) as std::sync::Weak<Self>;
        bus.chain_commands(chain);
        self.refresh_parked().await;
        let this = Arc::clone(self);
        let mut changes = self.registry.watch();
        Ok(tokio::spawn(async move {
            let mut refresh = tokio::time::interval(PARKED_REFRESH);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        if let Err(e) = this.reconcile(&bus, &mut consumers).await {
                            tracing::error!("could not subscribe a deployed function: {e}");
                        }
                    }
                    _ = refresh.tick() => this.refresh_parked().await,
                }
            }
        }))
    }

    /// The consumers of `function`: one, or one per partition when the bus
    /// shares work between shells and the project asks for partitions.
    fn lanes(&self, function: &str, bus: &Arc<dyn Bus>) -> Vec<Lane> {
        let policy = self.policy(function);
        if policy.partitions <= 1 || !bus.shares_work() {
            let consumer = function.to_owned();
            return vec![Lane { function: function.to_owned(), consumer, partition: None }];
        }
        (0..policy.partitions)
            .map(|index| {
                let partition =
                    Partition { index, count: policy.partitions, key: policy.partition_key.clone() };
                Lane {
                    function: function.to_owned(),
                    consumer: partition.consumer(function),
                    partition: Some(partition),
                }
            })
            .collect()
    }

    async fn reconcile(
        self: &Arc<Self>,
        bus: &Arc<dyn Bus>,
        consumers: &mut Consumers,
    ) -> Result<(), BusError> {
        while consumers.tasks.try_join_next().is_some() {}
        let functions = self.registry.current();
        let lanes: Vec<(Lane, &Arc<Function>)> = functions
            .consumers()
            .flat_map(|f| self.lanes(f.name(), bus).into_iter().map(move |l| (l, f)))
            .collect();
        consumers.by_name.retain(|name, consumer| {
            let keep = lanes.iter().any(|(lane, _)| lane.consumer == *name);
            if !keep {
                // It finishes the step it is in, then ends.
                consumer.stop.send_replace(true);
            }
            keep
        });
        for (lane, function) in lanes {
            let inputs = function.meta.inputs.clone();
            let (stop, stopping) = watch::channel(false);
            let (handover, taken) = oneshot::channel();
            let version = &function.version;
            match consumers.by_name.get_mut(&lane.consumer) {
                Some(consumer) if consumer.inputs == inputs => {}
                Some(consumer) => {
                    // Other inputs: the old consumer finishes its step (or
                    // gives its delivery back), then a new subscription
                    // takes over exactly where it stopped.
                    consumer.stop.send_replace(true);
                    let previous = std::mem::replace(&mut consumer.handover, taken);
                    consumer.stop = stop;
                    consumer.inputs = inputs.clone();
                    tracing::info!(consumer = %lane.consumer, %version, ?inputs, "resubscribing");
                    let (this, bus) = (Arc::clone(self), Arc::clone(bus));
                    consumers.tasks.spawn(this.take_over(bus, lane, inputs, previous, stopping, handover));
                }
                None => {
                    let subscription = lane.subscribe(bus, &inputs).await?;
                    tracing::info!(consumer = %lane.consumer, %version, ?inputs, "consuming");
                    let this = Arc::clone(self);
                    let name = lane.consumer.clone();
                    consumers.tasks.spawn(this.consume(lane, subscription, stopping, handover));
                    consumers.by_name.insert(name, Consumer { inputs, stop, handover: taken });
                }
            }
        }
        Ok(())
    }

    /// A consumer with new inputs, once the previous one has stopped.
    async fn take_over(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        lane: Lane,
        inputs: Vec<String>,
        previous: oneshot::Receiver<Box<dyn Subscription>>,
        mut stop: watch::Receiver<bool>,
        handover: oneshot::Sender<Box<dyn Subscription>>,
    ) {
        // Gone (`Err`) only if the previous consumer panicked.
        let previous = previous.await.ok();
        let subscription = loop {
            match lane.subscribe(&bus, &inputs).await {
                Ok(subscription) => break subscription,
                Err(e) => {
                    tracing::error!(consumer = %lane.consumer, "could not subscribe with the new inputs, retrying: {e}");
                    if pause(UNAVAILABLE_BACKOFF, &mut stop, None).await.is_err() {
                        if let Some(previous) = previous {
                            let _ = handover.send(previous);
                        }
                        return;
                    }
                }
            }
        };
        // Only now: the new subscription has taken over what it held.
        drop(previous);
        tracing::info!(consumer = %lane.consumer, ?inputs, "consuming with the new inputs");
        self.consume(lane, subscription, stop, handover).await;
    }

    async fn consume(
        self: Arc<Self>,
        lane: Lane,
        mut subscription: Box<dyn Subscription>,
        mut stop: watch::Receiver<bool>,
        handover: oneshot::Sender<Box<dyn Subscription>>,
    ) {
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            lock(&self.idle).insert(lane.consumer.clone());
            let next = tokio::select! {
                biased;
                changed = stop.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => break,
                },
                next = subscription.next() => next,
            };
            lock(&self.idle).remove(&lane.consumer);
            let Some(delivery) = next else { break };
            // What else is at hand joins it in one commit.
            let mut group = vec![delivery];
            while group.len() < GROUP
                && let Some(more) = subscription.try_next()
            {
                group.push(more);
            }
            if let Err(done) = self.handle_group(&lane, &group, &mut stop).await {
                // Stopped before these were done: the next consumer gets them.
                for delivery in group.into_iter().skip(done).rev() {
                    subscription.put_back(delivery).await;
                }
                break;
            }
        }
        lock(&self.idle).remove(&lane.consumer);
        tracing::debug!(consumer = %lane.consumer, "consumer stopped");
        // Nobody takes it when the function is gone or the shell stops.
        let _ = handover.send(subscription);
    }

    /// Processes deliveries to completion: a group in one commit (each
    /// step's lookups seeing the writes of the steps before it); when that
    /// fails for any reason, each one by one. `Err(done)` when told to stop
    /// meanwhile: the first `done` deliveries are committed, the rest not.
    async fn handle_group(
        &self,
        lane: &Lane,
        group: &[Delivery],
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), usize> {
        if group.len() > 1 {
            match self.commit_group(lane, group).await {
                Ok(()) => {
                    self.resume(&lane.consumer);
                    crate::metrics::steps(&lane.function, group.len() as u64);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(consumer = %lane.consumer, deliveries = group.len(), "committing one by one: {e}")
                }
            }
        }
        for (done, delivery) in group.iter().enumerate() {
            let span = step_span(&lane.function, delivery);
            if self.handle(lane, delivery, stop).instrument(span).await.is_err() {
                return Err(done);
            }
        }
        Ok(())
    }

    /// Runs the steps of `group` and commits them together, with the
    /// checkpoint advanced past the group only if none of it was processed
    /// yet. Nothing is committed when any step fails or the commit is
    /// refused.
    async fn commit_group(&self, lane: &Lane, group: &[Delivery]) -> Result<(), StepError> {
        let (Some(first), Some(last)) = (group.first(), group.last()) else { return Ok(()) };
        let function = lane.function.as_str();
        let functions = self.registry.current();
        let overlay = Arc::new(Overlay::new(Arc::clone(&self.store)));
        let view: Arc<dyn Store> = overlay.clone();
        let mut commit = Commit {
            checkpoint: Some(Checkpoint::past(&lane.consumer, last)),
            batch_from: Some((first.position, first.event.message.id.clone())),
            ..Commit::default()
        };
        let mut prepared = match functions.get(function) {
            Some(f) if self.store.reads_are_remote() => {
                let inputs: Vec<_> = group.iter().map(|d| wants(f, d).then_some(&d.event.message)).collect();
                read_ahead(f, &overlay, &view, &inputs).await
            }
            _ => vec![],
        };
        let mut offers = vec![];
        for (index, delivery) in group.iter().enumerate() {
            // Not ours (another handler's command, or the function is gone): only passed.
            let Some(f) = functions.get(function).filter(|f| wants(f, delivery)) else { continue };
            let span = step_span(function, delivery);
            let input = &delivery.event.message;
            let ready = prepared.get_mut(index).and_then(Option::take);
            let keep = self.shadows.watching(function);
            let cycle = step_cycle(&functions, f, &view, input, ready, keep).instrument(span).await?;
            offers.extend(self.shadows.take(function, &delivery.event.message, &cycle));
            overlay.apply(&cycle.commit.ops);
            commit.ops.extend(cycle.commit.ops);
            commit.events.extend(cycle.commit.events);
            commit.notify.extend(cycle.commit.notify);
        }
        self.commit_chaining(&functions, function, Some(&overlay), commit).await?;
        offers.into_iter().for_each(Offer::send);
        Ok(())
    }

    /// Commits `commit` (the steps of `function`, decided on `overlay`,
    /// which holds their writes; none: on the store), with other consumers'
    /// steps on its events chained when the store can apply them together.
    async fn commit_chaining(
        &self,
        functions: &Functions,
        function: &str,
        overlay: Option<&Arc<Overlay>>,
        commit: Commit,
    ) -> Result<(), StoreError> {
        let (chain, _claimed) = self.chain(functions, Some(function), overlay, &commit).await;
        if chain.is_empty() {
            return self.store.commit(commit).await;
        }
        self.commit_chain(commit, chain).await.map(drop)
    }

    /// Commits `commit` with the parts of `chain` ([`Store::commit_chained`]),
    /// counting the steps of those that applied and offering them to their
    /// consumers' shadows: how many did.
    async fn commit_chain(&self, commit: Commit, chain: Vec<Part>) -> Result<usize, StoreError> {
        let (parts, done): (Vec<Chained>, Vec<_>) =
            chain.into_iter().map(|part| (part.chained, (part.steps, part.offers))).unzip();
        let consumers: Vec<String> = parts.iter().map(|part| part.consumer.clone()).collect();
        let applied = self.store.commit_chained(commit, parts).await?;
        for (consumer, (steps, offers)) in consumers.iter().zip(done).take(applied) {
            crate::metrics::steps(consumer, steps);
            offers.into_iter().for_each(Offer::send);
        }
        Ok(applied)
    }

    /// The steps of other consumers of this shell on the events `commit`
    /// appends, for the store to apply in the same transaction — so a
    /// command's handler and its projector take one commit rather than two
    /// (and one read of the log fewer), and a submitted command (`from`
    /// none) its handler's and projector's. Each part is one consumer's
    /// steps on the events of the part before it (the first: `commit`'s),
    /// with the number of steps. Only for a consumer waiting for deliveries
    /// (busy, it would have others before these) that reads them
    /// unpartitioned, and that reads none of the transaction's other
    /// events (its checkpoint moves past them all); its steps see `overlay`
    /// (the writes of the steps that emitted them, then their own). The
    /// store applies a part only if its consumer had processed everything
    /// before these events; a step that fails here ends the chain, and the
    /// consumer meets it as usual.
    async fn chain(
        &self,
        functions: &Functions,
        from: Option<&str>,
        overlay: Option<&Arc<Overlay>>,
        commit: &Commit,
    ) -> (Vec<Part>, Claimed<'_>) {
        let mut claimed = Claimed { chaining: &self.chaining, consumers: vec![] };
        // A partitioned function's consumers commit side by side: chained
        // to one consumer, they would queue at its checkpoint.
        if !self.store.chains() || from.is_some_and(|from| self.policy(from).partitions > 1) {
            return (vec![], claimed);
        }
        let mut parts: Vec<Part> = vec![];
        let mut chained: Vec<&Arc<Function>> = vec![];
        let mut overlay = overlay.cloned();
        while parts.len() < CHAIN_DEPTH {
            let (layer, before) = match parts.split_last() {
                None => (&commit.events, vec![]),
                Some((last, earlier)) => {
                    let before =
                        commit.events.iter().chain(earlier.iter().flat_map(|p| &p.chained.events)).collect();
                    (&last.chained.events, before)
                }
            };
            if layer.is_empty() || layer.len() > CHAIN_MOST {
                break;
            }
            let target = {
                let idle = lock(&self.idle);
                let cooling = lock(&self.cooling);
                let mut chaining = lock(&self.chaining);
                let now = Instant::now();
                let target = functions.consumers().find(|f| {
                    Some(f.name()) != from
                        && !chained.iter().any(|c| c.name() == f.name())
                        && idle.contains(f.name())
                        && !chaining.contains(f.name())
                        && cooling.get(f.name()).is_none_or(|until| now >= *until)
                        && self.policy(f.name()).partitions <= 1
                        && layer.iter().any(|e| wants_event(f, e))
                        && !before.iter().any(|e| wants_event(f, e))
                        && self.store.may_chain(f.name())
                });
                if let Some(target) = target {
                    chaining.insert(target.name().to_owned());
                    claimed.consumers.push(target.name().to_owned());
                }
                target
            };
            let Some(target) = target else { break };
            let overlay = Arc::clone(overlay.get_or_insert_with(|| {
                let overlay = Arc::new(Overlay::new(Arc::clone(&self.store)));
                overlay.apply(&commit.ops);
                overlay
            }));
            let part = Chained {
                consumer: target.name().to_owned(),
                topics: target.meta.inputs.clone(),
                ..Chained::default()
            };
            // A slow step of the chained consumer must not hold up the commit.
            let steps = chained_steps(functions, &self.store, &self.shadows, target, &overlay, layer, part);
            let part = match tokio::time::timeout(CHAIN_BUDGET, steps).await {
                Ok(Ok(part)) => part,
                failed => {
                    match failed {
                        Ok(Err(e)) => tracing::debug!(
                            consumer = target.name(),
                            "not chained, the consumer takes the steps itself: {e}"
                        ),
                        _ => tracing::debug!(
                            consumer = target.name(),
                            "not chained within {CHAIN_BUDGET:?}, the consumer takes the steps itself"
                        ),
                    }
                    // Nor for a while: each commit would wait for it again.
                    lock(&self.cooling).insert(target.name().to_owned(), Instant::now() + CHAIN_COOLDOWN);
                    break;
                }
            };
            // A chained consumer reading these events would pass them over.
            chained.push(target);
            if chained.iter().any(|c| part.chained.events.iter().any(|e| wants_event(c, e))) {
                break;
            }
            parts.push(part);
        }
        (parts, claimed)
    }

    /// Processes one delivery to completion: committed; or, failing, a
    /// command fails its request, an event is retried and then parked or
    /// stopped at (see [`ConsumerPolicy`]). Never gives up on a store that is
    /// merely unavailable. `Err` only when told to stop meanwhile, with
    /// nothing committed.
    async fn handle(
        &self,
        lane: &Lane,
        delivery: &Delivery,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        let function = lane.function.as_str();
        let checkpoint = Checkpoint::past(&lane.consumer, delivery);
        let advance = || Commit { checkpoint: Some(checkpoint.clone()), ..Commit::default() };
        let message = &delivery.event.message;
        let policy = self.policy(function);
        let mut failures = 0;
        loop {
            let error = match self.attempt(function, delivery, advance()).await {
                Ok(()) => {
                    self.resume(&lane.consumer);
                    crate::metrics::steps(function, 1);
                    return Ok(());
                }
                Err(StepError::Store(StoreError::Unavailable(e))) => {
                    tracing::warn!(%function, position = delivery.position, "store unavailable, retrying: {e}");
                    pause(UNAVAILABLE_BACKOFF, stop, None).await?;
                    continue;
                }
                Err(e) => e,
            };
            let failed = notification(
                &*self.env,
                message,
                FAILED,
                json!({ "reason": error.to_string(), "function": function }),
            );
            if delivery.event.topic == COMMANDS_TOPIC {
                tracing::warn!(%function, kind = %message.kind, id = %message.id, "step failed: {error}");
                let commit = Commit { notify: failed.into_iter().collect(), ..advance() };
                return self.record_failure(function, commit, stop).await;
            }
            failures += 1;
            // One layer of retries per cause: conflicts were retried already,
            // each with a fresh lookup (`attempts`), so the policy's retries
            // are for the other failures.
            let retried_already = matches!(error, StepError::Conflicts { .. });
            if failures <= policy.retries && !retried_already {
                let wait = policy.backoff(failures);
                tracing::warn!(%function, kind = %message.kind, position = delivery.position, attempt = failures, "step failed, retrying in {wait:?}: {error}");
                pause(wait, stop, None).await?;
                continue;
            }
            match policy.on_failure {
                OnFailure::Park => {
                    tracing::error!(
                        %function, kind = %message.kind, id = %message.id, position = delivery.position, attempts = failures,
                        "step failed, event parked (retry it with `host retry {function} {}`): {error}",
                        delivery.position
                    );
                    let at = self.env.now_ms();
                    let record = Parked {
                        consumer: function.to_owned(),
                        position: delivery.position,
                        event: Event::clone(&delivery.event),
                        error: error.to_string(),
                        attempts: failures,
                        parked_at_ms: at,
                        attempted_at_ms: at,
                    };
                    let commit =
                        Commit { notify: failed.into_iter().collect(), park: Some(record), ..advance() };
                    self.record_failure(function, commit, stop).await?;
                    self.refresh_parked().await;
                    return Ok(());
                }
                OnFailure::Stop => {
                    let first = self.stop_at(lane, delivery, &error, failures);
                    if first {
                        tracing::error!(
                            %function, kind = %message.kind, id = %message.id, position = delivery.position,
                            "step failed, consumer stopped at this event until it succeeds (`host retry {function}` tries at once): {error}"
                        );
                        // The requester need not wait for it.
                        let notify = Commit { notify: failed.into_iter().collect(), ..Commit::default() };
                        if let Err(e) = self.store.commit(notify).await {
                            tracing::warn!(%function, "could not tell the requester of the failure: {e}");
                        }
                    } else {
                        tracing::warn!(%function, position = delivery.position, attempts = failures, "stopped consumer failed again: {error}");
                    }
                    // Slowly: the backoff goes on doubling (to its cap), never a busy loop.
                    let wait = policy.backoff(failures).max(STOPPED_MIN_WAIT).min(MAX_BACKOFF);
                    let waker = self.waker(&lane.consumer);
                    if let Err(stopping) = pause(wait, stop, Some(&waker)).await {
                        self.resume(&lane.consumer);
                        return Err(stopping);
                    }
                }
            }
        }
    }

    /// Commits what a failure leaves (the `Failed` notification, a parked
    /// record, the checkpoint advance), retrying while the store fails.
    async fn record_failure(
        &self,
        function: &str,
        commit: Commit,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        loop {
            match self.store.commit(commit.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(%function, "could not record the failure, retrying: {e}");
                    pause(UNAVAILABLE_BACKOFF, stop, None).await?;
                }
            }
        }
    }

    /// Marks the lane's consumer stopped at `delivery`; whether it just stopped.
    fn stop_at(&self, lane: &Lane, delivery: &Delivery, error: &StepError, attempts: u32) -> bool {
        let at = self.env.now_ms();
        let mut stopped = lock(&self.stopped);
        let first = stopped.get(&lane.consumer).is_none_or(|s| s.position != delivery.position);
        let since_ms = if first { at } else { stopped.get(&lane.consumer).map_or(at, |s| s.since_ms) };
        stopped.insert(
            lane.consumer.clone(),
            Stopped {
                function: lane.function.clone(),
                consumer: lane.consumer.clone(),
                position: delivery.position,
                event: Event::clone(&delivery.event),
                error: error.to_string(),
                attempts,
                since_ms,
                attempted_at_ms: at,
            },
        );
        crate::metrics::consumer_stopped(&lane.consumer, true);
        first
    }

    /// The consumer is no longer stopped.
    fn resume(&self, consumer: &str) {
        if lock(&self.stopped).remove(consumer).is_some() {
            tracing::info!(%consumer, "stopped consumer resumed");
            crate::metrics::consumer_stopped(consumer, false);
        }
    }

    /// One try at a delivery (its conflicts retried), committed with `base`
    /// (the checkpoint advance, or the removal of a parked record).
    async fn attempt(&self, function: &str, delivery: &Delivery, base: Commit) -> Result<(), StepError> {
        let functions = self.registry.current();
        match functions.get(function) {
            Some(f) if wants(f, delivery) => self.step(&functions, f, delivery, &base).await,
            // Not ours (another handler's command, or the function is gone): only move on.
            _ => self.store.commit(base).await.map_err(Into::into),
        }
    }

    async fn step(
        &self,
        functions: &Functions,
        function: &Arc<Function>,
        delivery: &Delivery,
        base: &Commit,
    ) -> Result<(), StepError> {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let keep = self.shadows.watching(function.name());
            let cycle = run_step(functions, function, &self.store, &delivery.event.message, keep).await?;
            let offer = self.shadows.take(function.name(), &delivery.event.message, &cycle);
            let commit =
                Commit { checkpoint: base.checkpoint.clone(), unpark: base.unpark.clone(), ..cycle.commit };
            match self.commit_chaining(functions, function.name(), None, commit).await {
                Ok(()) => {
                    offer.into_iter().for_each(Offer::send);
                    return Ok(());
                }
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

    /// Runs the parked events of `function` (all, or the one at `position`)
    /// again with its current version, oldest first: each one applied is
    /// removed, with its effects, in one commit; one that fails again stays
    /// parked with the new error. A consumer stopped at an event (there, if
    /// `position` is given) is woken to try it at once, and its outcome
    /// awaited.
    pub async fn retry(&self, function: &str, position: Option<u64>) -> Result<Vec<Retried>, RetryError> {
        let functions = self.registry.current();
        if functions.get(function).is_none_or(|f| f.meta.kind == FunctionKind::Resolver) {
            return Err(RetryError::UnknownFunction(function.to_owned()));
        }
        let mut retried = vec![];
        let stopped: Vec<Stopped> = lock(&self.stopped)
            .values()
            .filter(|s| s.function == function && position.is_none_or(|p| p == s.position))
            .cloned()
            .collect();
        for stopped in stopped {
            retried.push(self.retry_stopped(stopped).await);
        }
        let parked = self.store.parked(Some(function)).await?;
        let parked: Vec<Parked> =
            parked.into_iter().filter(|p| position.is_none_or(|at| p.position == at)).collect();
        if let (Some(position), true, true) = (position, parked.is_empty(), retried.is_empty()) {
            return Err(RetryError::NotParked { function: function.to_owned(), position });
        }
        for record in parked {
            let delivery = Delivery { position: record.position, event: Arc::new(record.event.clone()) };
            let settled = Checkpoint::past(function, &delivery);
            let base = Commit { unpark: Some(settled), ..Commit::default() };
            let outcome =
                self.attempt(function, &delivery, base).instrument(step_span(function, &delivery)).await;
            retried.push(match outcome {
                Ok(()) => {
                    tracing::info!(%function, position = record.position, "parked event applied");
                    Retried {
                        position: record.position,
                        applied: true,
                        error: None,
                        attempts: record.attempts + 1,
                    }
                }
                Err(StepError::Store(e @ StoreError::Unavailable(_))) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(%function, position = record.position, "parked event failed again: {e}");
                    self.store.parked_failed(function, record.position, &e.to_string()).await?;
                    Retried {
                        position: record.position,
                        applied: false,
                        error: Some(e.to_string()),
                        attempts: record.attempts + 1,
                    }
                }
            });
        }
        self.refresh_parked().await;
        Ok(retried)
    }

    /// Wakes the stopped consumer and waits for the outcome of its next try.
    async fn retry_stopped(&self, stopped: Stopped) -> Retried {
        self.waker(&stopped.consumer).notify_one();
        let deadline = tokio::time::Instant::now() + STOPPED_RETRY_WAIT;
        loop {
            let now = lock(&self.stopped).get(&stopped.consumer).cloned();
            match now {
                Some(s) if s.position == stopped.position && s.attempts == stopped.attempts => {}
                Some(s) if s.position == stopped.position => {
                    return Retried {
                        position: s.position,
                        applied: false,
                        error: Some(s.error),
                        attempts: s.attempts,
                    };
                }
                // Resumed: it went past the event.
                _ => {
                    return Retried {
                        position: stopped.position,
                        applied: true,
                        error: None,
                        attempts: stopped.attempts + 1,
                    };
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Retried {
                    position: stopped.position,
                    applied: false,
                    error: Some(format!("still trying after {STOPPED_RETRY_WAIT:?}; see GET /admin/parked")),
                    attempts: stopped.attempts,
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sets the `lowshell_parked_events` gauge of every consumer from the store.
    pub async fn refresh_parked(&self) {
        let counts = match self.store.parked_counts().await {
            Ok(counts) => counts,
            Err(e) => return tracing::debug!("cannot count the parked events: {e}"),
        };
        let mut gauges = lock(&self.gauges);
        gauges.extend(self.registry.current().consumers().map(|f| f.name().to_owned()));
        gauges.extend(counts.keys().cloned());
        for function in gauges.iter() {
            crate::metrics::parked_events(function, counts.get(function).copied().unwrap_or(0));
        }
    }
}

/// Everything one LOW cycle decided, before it is committed.
#[derive(Debug, Clone)]
pub struct Cycle {
    /// The lookup plan, and what running it found.
    pub lookups: Vec<Lookup>,
    pub data: Data,
    /// The outcome and the write plans as the guest returned them: what
    /// `commit` is made of, kept beside it only when asked (a live step,
    /// for a shadow deployment, which compares them; [`run_cycle`] hands it
    /// apart, in [`Decided`]).
    pub(crate) decision: Option<Decision>,
    /// What to commit: the plans' ops, the events (stamped), the
    /// notifications (correlated); no checkpoint.
    pub commit: Commit,
}

/// One part of a chain ([`Executor::chain`]): what the store applies, with
/// what to do once it has.
struct Part {
    chained: Chained,
    /// Its steps, for the metrics.
    steps: u64,
    /// Its steps for the consumer's shadow, sent once they are committed.
    offers: Vec<Offer>,
}

/// The steps of `target` on the `events` it wants, in order, on
/// `overlay` (the writes of the steps that emitted them, then each one's
/// own): what [`Executor::chain`] hands the store.
async fn chained_steps(
    functions: &Functions,
    store: &Arc<dyn Store>,
    shadows: &Shadows,
    target: &Arc<Function>,
    overlay: &Arc<Overlay>,
    events: &[Event],
    mut chained: Chained,
) -> Result<Part, StepError> {
    let view: Arc<dyn Store> = overlay.clone();
    let inputs: Vec<_> = events.iter().map(|e| wants_event(target, e).then_some(&e.message)).collect();
    let mut prepared = match store.reads_are_remote() {
        true => read_ahead(target, overlay, &view, &inputs).await,
        false => vec![],
    };
    let (mut steps, mut offers) = (0, vec![]);
    for (index, event) in events.iter().enumerate().filter(|(_, e)| wants_event(target, e)) {
        let message = &event.message;
        let span = tracing::debug_span!(
            "step",
            function = target.name(),
            kind = %message.kind,
            message_id = %message.id,
            correlation_id = message.correlation_id.as_deref().unwrap_or(""),
            chained = true,
        );
        let ready = prepared.get_mut(index).and_then(Option::take);
        let keep = shadows.watching(target.name());
        let cycle = step_cycle(functions, target, &view, message, ready, keep).instrument(span).await?;
        offers.extend(shadows.take(target.name(), message, &cycle));
        overlay.apply(&cycle.commit.ops);
        chained.ops.extend(cycle.commit.ops);
        chained.events.extend(cycle.commit.events);
        chained.notify.extend(cycle.commit.notify);
        steps += 1;
    }
    Ok(Part { chained, steps, offers })
}

/// One step's cycle: from its `lookup` run ahead when `ready` (bounded by
/// its own call deadline; the step's clock starts at its turn), else whole.
async fn step_cycle(
    functions: &Functions,
    function: &Arc<Function>,
    store: &Arc<dyn Store>,
    input: &Message,
    ready: Option<Prepared>,
    keep: bool,
) -> Result<Cycle, StepError> {
    match ready {
        Some(ready) => {
            finish_cycle(functions, function, store, input, ready, &Budget::start(function), keep).await
        }
        None => run_step(functions, function, store, input, keep).await,
    }
}

/// Keys one group reads ahead at most.
const READ_AHEAD: usize = 256;
/// Instances one group holds at most while its steps wait for their turn.
const READ_AHEAD_STEPS: usize = GROUP;

/// A step whose `lookup` ran before its turn, on the instance it goes on
/// with: its plan holds when `lookup` read no documents (it is then a
/// function of the input alone), and the data it names is read at its
/// turn, through the writes of the steps before it.
struct Prepared {
    call: Box<dyn Guest>,
    lookups: Vec<Lookup>,
}

/// Fetches, in one round trip, the documents the steps of `group` will look
/// up by key, into `overlay` (which keeps what it reads), rather than one
/// round trip per step: each wanted step (up to [`READ_AHEAD_STEPS`]) gets
/// its instance and runs `lookup` now, and goes on from there at its turn
/// (the returned [`Prepared`], by index in `group`). Preparing stops at the
/// first step whose `lookup` reads documents (its plan could change with
/// the writes of the steps before it) or fails, and when no instance slot
/// is free: a group never waits for a slot while it holds one, and the
/// steps after run as usual, each once every prepared one is done.
/// Anything failing here only ends the reading ahead.
async fn read_ahead(
    function: &Arc<Function>,
    overlay: &Overlay,
    view: &Arc<dyn Store>,
    group: &[Option<&Message>],
) -> Vec<Option<Prepared>> {
    let mut prepared: Vec<Option<Prepared>> = group.iter().map(|_| None).collect();
    if group.iter().flatten().nth(1).is_none() {
        return prepared;
    }
    let mut keys: Vec<Query> = vec![];
    let mut held = 0;
    for (index, input) in group.iter().enumerate() {
        let Some(input) = input else { continue };
        if held == READ_AHEAD_STEPS || keys.len() >= READ_AHEAD {
            break;
        }
        let started = if held == 0 {
            function.start(Some(Arc::clone(view))).await.map(Some)
        } else {
            function.try_start(Some(Arc::clone(view))).await
        };
        let Ok(Some(mut call)) = started else { break };
        let Ok(lookups) = call.lookup(input).await else { break };
        if call.lookup_read_documents() {
            break;
        }
        for lookup in &lookups {
            if matches!(lookup.query, Query::Key { .. }) && !keys.contains(&lookup.query) {
                keys.push(lookup.query.clone());
            }
        }
        prepared[index] = Some(Prepared { call, lookups });
        held += 1;
    }
    if keys.is_empty() {
        return prepared;
    }
    // The overlay keeps what it reads, and answers the steps from it; a
    // failed read leaves each step to read for itself.
    let queries: Vec<&Query> = keys.iter().collect();
    let _ = overlay.lookup(&queries, 1).await;
    prepared
}

/// Runs `function`'s LOW cycle on each of `inputs` in order, each step
/// looking up through the writes of the steps before it (an [`Overlay`] on
/// `store`): the group's write ops, for one commit. For a replay of the log,
/// whose events are in it already and whose answers nobody waits for.
/// Commits nothing.
pub async fn replay_group(
    functions: &Functions,
    function: &Arc<Function>,
    store: &Arc<dyn Store>,
    inputs: &[&Message],
) -> Result<Vec<WriteOp>, StepError> {
    let overlay = Arc::new(Overlay::new(Arc::clone(store)));
    let view: Arc<dyn Store> = overlay.clone();
    let mut ops = vec![];
    for input in inputs {
        let cycle = run_step(functions, function, &view, input, false).await?;
        overlay.apply(&cycle.commit.ops);
        ops.extend(cycle.commit.ops);
    }
    Ok(ops)
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
) -> Result<Decided, StepError> {
    let mut cycle = run_step(functions, function, store, input, true).await?;
    match cycle.decision.take() {
        Some(decision) => Ok(Decided { cycle, decision }),
        // `run_step` keeps it when asked to: a bug here, said, never guessed.
        None => Err(invalid(function, "the cycle kept no decision".to_owned())),
    }
}

/// A LOW cycle ([`run_cycle`]) with what the guest decided.
#[derive(Debug, Clone)]
pub struct Decided {
    pub cycle: Cycle,
    pub decision: Decision,
}

/// [`run_cycle`], keeping the guest's [`Decision`] beside the commit only
/// when `keep`: a live step's commit is made of it, not of a copy.
pub(crate) async fn run_step(
    functions: &Functions,
    function: &Arc<Function>,
    store: &Arc<dyn Store>,
    input: &Message,
    keep: bool,
) -> Result<Cycle, StepError> {
    let mut call = function.start(Some(Arc::clone(store))).await?;
    // The clock starts once the step has its instance: waiting for a free
    // slot is the shell's load, not the step's doing.
    let budget = Budget::start(function);
    let lookups = budget.within("`lookup`", async { Ok(call.lookup(input).await?) }).await?;
    finish_cycle(functions, function, store, input, Prepared { call, lookups }, &budget, keep).await
}

/// The rest of [`run_cycle`] once `lookup` has said what the step needs:
/// the plan read, then `operate` and `write` on the same instance.
async fn finish_cycle(
    functions: &Functions,
    function: &Arc<Function>,
    store: &Arc<dyn Store>,
    input: &Message,
    prepared: Prepared,
    budget: &Budget<'_>,
    keep: bool,
) -> Result<Cycle, StepError> {
    let Prepared { mut call, lookups } = prepared;
    let data = budget.within("its lookup plan", run_lookups(functions, function, store, &lookups)).await?;
    // One call when the guest has it, else `operate` and a `write` a message.
    let decided = budget
        .within("`operate-and-write`", async { Ok(call.operate_and_write(input, &data).await?) })
        .await?;
    let (outcome, written) = match decided {
        Some((outcome, plans)) => (outcome, Some(plans)),
        None => (budget.within("`operate`", async { Ok(call.operate(input, &data).await?) }).await?, None),
    };
    // A shadow compares what the guest returned: a copy, only for it.
    let kept = keep.then(|| outcome.clone());
    let (emitted, rejected) = match outcome {
        Outcome::Emit(messages) => (emitted(function, messages, input)?, None),
        Outcome::Reject(reason) => (vec![], Some(reason)),
        Outcome::Ignore => (vec![], None),
    };
    let mut tally = Tally::default();
    let plans = match written {
        Some(plans) if plans.len() != emitted.len() => {
            return Err(invalid(
                function,
                format!("it returned {} write plans for {} messages", plans.len(), emitted.len()),
            ));
        }
        Some(plans) => {
            plans.iter().try_for_each(|plan| tally.add(functions, function, plan))?;
            plans
        }
        None => {
            let mut plans = Vec::with_capacity(emitted.len());
            for message in &emitted {
                let plan = budget.within("`write`", async { Ok(call.write(message).await?) }).await?;
                tally.add(functions, function, &plan)?;
                plans.push(plan);
            }
            plans
        }
    };
    budget.within("the end of the step", async { Ok(()) }).await?;
    let decision = kept.map(|outcome| Decision { outcome, plans: plans.clone() });
    let commit = assemble(function, input, rejected.as_deref(), emitted, plans);
    Ok(Cycle { lookups, data, decision, commit })
}

/// The messages `operate` emitted, within `limits.events`, each stamped
/// with the request it serves and the input that caused it.
fn emitted(function: &Function, messages: Vec<Message>, input: &Message) -> Result<Vec<Message>, StepError> {
    let most = function.limits().step.events;
    if messages.len() > most {
        return Err(invalid(
            function,
            format!("`operate` emits {} messages, more than limits.events ({most})", messages.len()),
        ));
    }
    Ok(messages.into_iter().map(|m| stamp(function.env(), m, input)).collect())
}

/// The write plans of a step so far, checked against the collections
/// `functions` declare and the step's caps as each one arrives, so that a
/// runaway step stops at the first plan too many.
#[derive(Default)]
struct Tally {
    ops: usize,
    notifications: usize,
}

impl Tally {
    fn add(&mut self, functions: &Functions, function: &Function, plan: &WritePlan) -> Result<(), StepError> {
        let limits = function.limits().step;
        self.ops = self.ops.saturating_add(plan.ops.len());
        if self.ops > limits.ops {
            return Err(invalid(
                function,
                format!("its write plans hold more than limits.ops ({}) write ops", limits.ops),
            ));
        }
        self.notifications = self.notifications.saturating_add(plan.notify.len());
        if self.notifications > limits.notifications {
            return Err(invalid(
                function,
                format!(
                    "its write plans hold more than limits.notifications ({}) notifications",
                    limits.notifications
                ),
            ));
        }
        plan.ops.iter().try_for_each(|op| check_write(functions, function, op.collection(), op.key()))
    }
}

/// What one step commits: a rejection's notice; or each emitted message's
/// write ops and notifications (correlated), and the message itself as an
/// event on the function's output topic.
fn assemble(
    function: &Function,
    input: &Message,
    rejected: Option<&str>,
    emitted: Vec<Message>,
    plans: Vec<WritePlan>,
) -> Commit {
    let env = function.env();
    let mut commit = Commit::default();
    if let Some(reason) = rejected {
        commit.notify.extend(notification(env, input, REJECTED, json!({ "reason": reason })));
    }
    for (message, plan) in emitted.into_iter().zip(plans) {
        commit.ops.extend(plan.ops);
        commit.notify.extend(plan.notify.into_iter().filter_map(|n| correlate(env, n, input)));
        if let Some(topic) = &function.meta.output {
            commit.events.push(Event {
                topic: topic.clone(),
                message,
                function: Some(function.name().to_owned()),
                version: Some(function.version.0.clone()),
                at_ms: env.now_ms(),
            });
        }
    }
    commit
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
    let queries: Vec<&Query> = plan.iter().map(|lookup| &lookup.query).collect();
    // One more than allowed tells "exactly the limit" from "too many".
    let found = store.lookup(&queries, most.saturating_add(1)).await?;
    let mut data = Data::default();
    for (lookup, documents) in plan.iter().zip(found) {
        if let Query::Field { collection, field, value } = &lookup.query
            && documents.len() > most
        {
            let why = crate::runtime::too_many_found(collection, field, value, most);
            return Err(invalid(function, format!("lookup `{}`: {why}", lookup.name)));
        }
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
    handles(function, &delivery.event)
}

/// Whether `function` reads `event` (its topic is an input) and wants it.
fn wants_event(function: &Function, event: &Event) -> bool {
    function.meta.inputs.contains(&event.topic) && handles(function, event)
}

/// Every event of a function's inputs is for it; a command only for the
/// handler of its kind.
fn handles(function: &Function, event: &Event) -> bool {
    event.topic != COMMANDS_TOPIC || function.meta.commands.iter().any(|c| c.name == event.message.kind)
}

/// An emitted message carries the request it serves, the message that
/// caused it and who caused that (the input's principal: whatever the guest
/// put there is replaced, so a function cannot act as someone else).
fn stamp(env: &dyn HostEnv, message: Message, input: &Message) -> Message {
    message.stamped(input, || env.new_id())
}

/// A notification for whoever waits on the input's request, if anyone does.
fn correlate(env: &dyn HostEnv, mut notification: Message, input: &Message) -> Option<Message> {
    notification.correlation_id = Some(input.correlation_id.clone()?);
    notification.causation_id = Some(input.id.clone());
    notification.principal = input.principal.clone();
    if notification.id.is_empty() {
        notification.id = env.new_id();
    }
    Some(notification)
}

fn notification(
    env: &dyn HostEnv,
    input: &Message,
    kind: &str,
    payload: low_contract::Value,
) -> Option<Message> {
    input.correlation_id.as_ref()?;
    correlate(env, Message::new(env.new_id(), kind, payload), input)
}

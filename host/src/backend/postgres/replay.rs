//! `host replay --in-place`: rebuilds projectors' read models from the
//! Postgres event log, the shells stopped, by running each projector's LOW
//! cycle over every historic event, in log order, exactly as the live
//! consumer does (while the shells serve: [`super::rebuild`]).
//!
//! - The functions run at the version the cluster records for them
//!   (`deployments`), as a shell would; the module file only when nothing is
//!   recorded. The report says which.
//! - The consumer's lease is held for the whole replay, so no shell consumes
//!   that function meanwhile; the replay refuses to start while a running
//!   shell holds it.
//! - From scratch, the read model is emptied and the checkpoint moved to the
//!   start; readers see the model grow back. Resumed, both are kept and the
//!   replay goes on after the stored checkpoint.
//! - It reads the log in batches after the stored checkpoint, up to the
//!   oldest transaction running when it started, and commits each event with
//!   the checkpoint advance. It never skips an event: a conflict is retried
//!   with a fresh lookup (`attempts`), an unavailable store a few times with
//!   backoff; any other failure stops it with the function, the log position
//!   and the cause, the checkpoint left at the last event applied, so that
//!   `--resume` can continue.

use crate::backend::postgres::PgBus;
use crate::backend::postgres::PgStore;
use crate::backend::postgres::database::{Database, describe, lease_id, try_lease};
use crate::backend::postgres::deployments::PgDeployments;
use crate::backend::{BusError, Delivery};
use crate::backend::{Checkpoint, Commit, Store, StoreError};
use crate::config::{BackendKind, Project};
use crate::deploy::{Deployer, Deployments};
use crate::executor::{StepError, replay_group, run_step};
use crate::registry::{Functions, Registry};
use crate::runtime::{Function, Runtime, Version};
use crate::shell::{load_file, module_files};
use anyhow::Context;
use low_contract::{FunctionKind, Message};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Empty the read model and replay the whole log.
    Scratch,
    /// Keep the read model and go on after the stored checkpoint (after a
    /// replay that stopped).
    Checkpoint,
}

/// Where the version a projector was replayed with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// The version the cluster records in `deployments`.
    Recorded,
    /// The module file: no version is recorded for the function.
    File,
    /// A candidate file given to the rebuild (`--component`).
    Candidate,
}

/// What one projector's replay did.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub function: String,
    /// The version that ran, and where it came from.
    pub version: Version,
    pub source: VersionSource,
    /// Events applied (each committed with its checkpoint advance).
    pub events: u64,
    /// Documents removed before replaying (`None`: resumed, nothing removed).
    pub cleared: Option<u64>,
    /// The log position the replay went on after (0: the start of the log).
    pub from: u64,
}

/// A replay that stopped before the end of the log. Nothing was skipped:
/// the function's checkpoint is at the last event applied.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "replay of `{function}` stopped{}: {cause}. It applied {applied} events in this run; \
     its checkpoint stays at log position {checkpoint}, the last event applied (0: the start of the log). \
     Fix the cause, then `host replay --resume` continues from there without clearing the read model \
     (`host replay` without it starts over)",
    position.map(|p| format!(" at log position {p}")).unwrap_or_default()
)]
pub struct Stopped {
    pub function: String,
    /// The event it could not apply (`None`: it stopped before one).
    pub position: Option<u64>,
    pub cause: String,
    /// Events applied in this run before it stopped.
    pub applied: u64,
    /// The stored checkpoint's log position.
    pub checkpoint: u64,
    /// The projectors replayed in full before this one.
    pub done: Vec<Replayed>,
}

/// Events read from the log at once.
const BATCH: i64 = 500;
/// Events applied in one commit (the live consumers' group size).
const GROUP: usize = 32;
/// Retries of a step (or a read) while the store is unavailable, the wait
/// doubling from [`BACKOFF`] (about 8 s in all) before the replay stops.
const OUTAGE_RETRIES: u32 = 5;
const BACKOFF: Duration = Duration::from_millis(250);

/// Replays `only` (a projector's name), or every projector of the project,
/// from `start`. A [`Stopped`] error (inside the `anyhow::Error`) says where
/// a replay stopped and what it had done.
pub async fn replay(project: &Project, only: Option<&str>, start: Start) -> anyhow::Result<Vec<Replayed>> {
    durable(project)?;
    let db = Arc::new(Database::connect(&project.database_url()?).await?);
    let (_, registry, deployments) = load(project, &db).await?;
    let functions = registry.current();
    let projectors = projectors(&functions, only)?;
    let bus = PgBus::start(Arc::clone(&db));
    let pg = PgStore::new(Arc::clone(&db));
    let store: Arc<dyn Store> = Arc::new(PgStore::new(Arc::clone(&db)));
    let mut sources = vec![];
    for function in &projectors {
        sources.push(match deployments.current(function.name()).await {
            Ok(Some((version, _))) if version == function.version => VersionSource::Recorded,
            Ok(_) => VersionSource::File,
            Err(e) => anyhow::bail!("cannot read the recorded version of `{}`: {e}", function.name()),
        });
    }
    let mut done = vec![];
    for (function, source) in projectors.into_iter().zip(sources) {
        let mut run = Run {
            db: Arc::clone(&db),
            functions: Arc::clone(&functions),
            function,
            store: Arc::clone(&store),
            attempts: project.attempts.max(1),
            lease: None,
            applied: 0,
            checkpoint: 0,
        };
        match run.all(&bus, &pg, start, source).await {
            Ok(replayed) => done.push(replayed),
            Err((position, cause)) => {
                tracing::error!(
                    function = run.name(),
                    position,
                    applied = run.applied,
                    "replay stopped: {cause}"
                );
                return Err(Stopped {
                    function: run.name().to_owned(),
                    position,
                    cause,
                    applied: run.applied,
                    checkpoint: run.checkpoint,
                    done,
                }
                .into());
            }
        }
    }
    Ok(done)
}

/// Refuses a project on the memory backend: it keeps no log to replay.
pub(crate) fn durable(project: &Project) -> anyhow::Result<()> {
    if project.backend != BackendKind::Postgres {
        anyhow::bail!(
            "the memory backend keeps no event log (events live in the shell's process and are gone when it \
             stops), so there is nothing to rebuild a read model from: replays, rebuilds, dry runs and \
             --drop-previous need `backend = \"postgres\"`"
        );
    }
    Ok(())
}

/// The project's functions at the versions the cluster records (as a
/// shell starting now would run them), the runtime that loaded them, and
/// the record.
pub(crate) async fn load(
    project: &Project,
    db: &Arc<Database>,
) -> anyhow::Result<(Arc<Runtime>, Arc<Registry>, Arc<dyn Deployments>)> {
    let runtime = Runtime::new(project.limits())?;
    let mut loaded = vec![];
    for path in module_files(project)? {
        loaded.push(load_file(&runtime, &path).await?);
    }
    let registry = Arc::new(Registry::new(Functions::new(loaded)?));
    let deployments: Arc<dyn Deployments> = Arc::new(PgDeployments::reader(Arc::clone(db)));
    Deployer::with_deployments(Arc::clone(&runtime), Arc::clone(&registry), Arc::clone(&deployments))
        .sync_all()
        .await
        .context("cannot load the recorded versions of the functions")?;
    Ok((runtime, registry, deployments))
}

/// Why an attempt failed, by what to do about it.
enum Failure {
    /// An integrity condition failed: retry with a fresh lookup.
    Conflict(String),
    /// The store (or the lease's connection) is unreachable: retry later.
    Outage(String),
    /// Retrying will not help: stop.
    Fatal(String),
}

impl From<StepError> for Failure {
    fn from(e: StepError) -> Self {
        match e {
            StepError::Store(StoreError::Conflict(c)) => Failure::Conflict(c),
            StepError::Store(StoreError::Unavailable(u)) => {
                Failure::Outage(format!("store unavailable: {u}"))
            }
            other => Failure::Fatal(other.to_string()),
        }
    }
}

fn database(e: &tokio_postgres::Error) -> Failure {
    if crate::backend::postgres::database::is_unavailable(e) {
        Failure::Outage(format!("the database is unreachable: {}", describe(e)))
    } else {
        Failure::Fatal(describe(e))
    }
}

/// One projector's replay.
struct Run {
    db: Arc<Database>,
    functions: Arc<Functions>,
    function: Arc<Function>,
    store: Arc<dyn Store>,
    attempts: u32,
    /// The dedicated connection holding the consumer's lease, and its id.
    lease: Option<(Client, i32)>,
    /// Events applied so far.
    applied: u64,
    /// The stored checkpoint's position, as last seen.
    checkpoint: u64,
}

/// Where a replay stopped (the event, if at one) and why.
type Stop = (Option<u64>, String);

impl Run {
    fn name(&self) -> &str {
        self.function.name()
    }

    async fn all(
        &mut self,
        bus: &PgBus,
        pg: &PgStore,
        start: Start,
        source: VersionSource,
    ) -> Result<Replayed, Stop> {
        let stop = |cause: String| (None, cause);
        let name = self.name().to_owned();
        match self.hold_lease().await {
            Ok(()) => {}
            Err(Failure::Fatal(e)) => return Err(stop(e)),
            Err(Failure::Outage(e) | Failure::Conflict(e)) => return Err(stop(e)),
        }
        let cleared = match start {
            Start::Scratch => {
                let collections: Vec<String> =
                    self.function.meta.models.iter().map(|m| m.collection.clone()).collect();
                Some(
                    pg.reset(&name, &collections)
                        .await
                        .map_err(|e| stop(format!("cannot clear the read model: {e}")))?,
                )
            }
            Start::Checkpoint => None,
        };
        self.checkpoint = self.stored_checkpoint().await.map_err(|e| stop(reason(e)))?;
        let from = self.checkpoint;
        let inputs = self.function.meta.inputs.clone();
        let horizon = bus.horizon().await.map_err(|e| stop(format!("cannot read the log: {e}")))?;
        let pending = bus
            .pending(&name, &inputs, &horizon)
            .await
            .map_err(|e| stop(format!("cannot read the log: {e}")))?;
        tracing::info!(
            function = %name,
            version = %self.function.version,
            source = ?source,
            after = from,
            events = pending,
            cleared,
            "replaying"
        );
        loop {
            let batch = self.read(bus, &inputs, &horizon).await.map_err(stop)?;
            if batch.is_empty() {
                break;
            }
            for group in batch.chunks(GROUP) {
                if group.len() > 1 {
                    match self.apply_group(group).await {
                        Ok(()) => continue,
                        Err(e) => tracing::debug!(function = %name, "applying one by one: {}", reason(e)),
                    }
                }
                for delivery in group {
                    self.apply(delivery).await.map_err(|cause| (Some(delivery.position), cause))?;
                }
            }
            tracing::info!(function = %name, applied = self.applied, of = pending, "replaying");
        }
        Ok(Replayed {
            function: name,
            version: self.function.version.clone(),
            source,
            events: self.applied,
            cleared,
            from,
        })
    }

    /// The next batch after the stored checkpoint, retrying while the
    /// database is unreachable.
    async fn read(
        &mut self,
        bus: &PgBus,
        inputs: &[String],
        horizon: &crate::backend::postgres::bus::Horizon,
    ) -> Result<Vec<Delivery>, String> {
        let mut outages = 0;
        loop {
            match bus.history(self.function.name(), inputs, horizon, BATCH).await {
                Ok(batch) => return Ok(batch),
                Err(BusError::Unavailable(e)) => {
                    self.outage(&mut outages, format!("cannot read the log: {e}")).await?
                }
                Err(BusError::Invalid(e)) => return Err(format!("cannot read the log: {e}")),
            }
        }
    }

    /// Waits before the next retry of an outage, or gives up.
    async fn outage(&self, outages: &mut u32, cause: String) -> Result<(), String> {
        *outages += 1;
        if *outages > OUTAGE_RETRIES {
            return Err(format!("still failing after {OUTAGE_RETRIES} retries: {cause}"));
        }
        let wait = BACKOFF * 2u32.pow(*outages - 1);
        tracing::warn!(function = self.name(), retry = *outages, ?wait, "{cause}; retrying");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Applies one event: its LOW cycle committed with the checkpoint
    /// advance, then checked. Never skips it: fails instead.
    async fn apply(&mut self, delivery: &Delivery) -> Result<(), String> {
        let (mut conflicts, mut outages) = (0, 0);
        loop {
            let attempt = async {
                self.hold_lease().await?;
                self.step(delivery).await?;
                self.check(delivery.position).await
            };
            match attempt.await {
                Ok(()) => {
                    self.applied += 1;
                    self.checkpoint = delivery.position;
                    return Ok(());
                }
                Err(Failure::Conflict(last)) => {
                    conflicts += 1;
                    if conflicts >= self.attempts {
                        return Err(format!("kept conflicting after {conflicts} attempts: {last}"));
                    }
                    tracing::debug!(
                        function = self.name(),
                        conflicts,
                        "conflict, retrying with a fresh lookup: {last}"
                    );
                    tokio::time::sleep(Duration::from_millis(u64::from(conflicts))).await;
                }
                Err(Failure::Outage(cause)) => self.outage(&mut outages, cause).await?,
                Err(Failure::Fatal(cause)) => return Err(cause),
            }
        }
    }

    /// Applies `group` in one commit, as a live consumer does (each step
    /// looking up through the writes of the steps before it), then checks
    /// it. Nothing is committed when a step or the commit fails; then the
    /// events go one by one, each retried on its own.
    async fn apply_group(&mut self, group: &[Delivery]) -> Result<(), Failure> {
        let (Some(first), Some(last)) = (group.first(), group.last()) else { return Ok(()) };
        self.hold_lease().await?;
        let inputs: Vec<&Message> = group.iter().map(|d| &d.event.message).collect();
        let ops = replay_group(&self.functions, &self.function, &self.store, &inputs).await?;
        let commit = Commit {
            ops,
            checkpoint: Some(Checkpoint::past(self.name(), last)),
            batch_from: Some((first.position, first.event.message.id.clone())),
            ..Commit::default()
        };
        self.store.commit(commit).await.map_err(|e| Failure::from(StepError::from(e)))?;
        self.check(last.position).await?;
        self.applied += group.len() as u64;
        self.checkpoint = last.position;
        Ok(())
    }

    /// One LOW cycle, committed with the checkpoint advance. Nobody waits
    /// for its answers any more: no notifications.
    async fn step(&self, delivery: &Delivery) -> Result<(), Failure> {
        let cycle =
            run_step(&self.functions, &self.function, &self.store, &delivery.event.message, false).await?;
        let checkpoint = Checkpoint::past(self.name(), delivery);
        let commit = Commit { notify: vec![], checkpoint: Some(checkpoint), ..cycle.commit };
        self.store.commit(commit).await.map_err(|e| Failure::from(StepError::from(e)))
    }

    /// Whether the step committed: the store drops a step whose event the
    /// checkpoint has passed already (reporting success), so look. At the
    /// event: applied (by this attempt, or by one whose answer was lost).
    async fn check(&self, position: u64) -> Result<(), Failure> {
        match self.stored_checkpoint().await? {
            at if at == position => Ok(()),
            at => Err(Failure::Fatal(format!(
                "the checkpoint is at log position {at}, not at this event: something else moved it \
                 (is a shell consuming `{}`?)",
                self.name()
            ))),
        }
    }

    async fn stored_checkpoint(&self) -> Result<u64, Failure> {
        let Some((client, _)) = &self.lease else {
            return Err(Failure::Outage("the consumer lease is not held".into()));
        };
        let row = client
            .query_opt("SELECT position FROM checkpoints WHERE consumer = $1", &[&self.name()])
            .await
            .map_err(|e| database(&e))?;
        let position: i64 = match row {
            Some(row) => row.try_get(0).map_err(|e| database(&e))?,
            None => 0,
        };
        Ok(u64::try_from(position).unwrap_or(0))
    }

    /// Takes the consumer's lease, or takes it again if its connection
    /// closed (the database restarted, say) and no one else took it since.
    async fn hold_lease(&mut self) -> Result<(), Failure> {
        let name = self.name().to_owned();
        let id = match self.lease.take() {
            Some((client, id)) if !client.is_closed() => {
                self.lease = Some((client, id));
                return Ok(());
            }
            Some((_, id)) => {
                tracing::warn!(function = %name, "lost the consumer lease (its connection closed); taking it again");
                Some(id)
            }
            None => None,
        };
        let client = self.db.dedicated(|_| {}).await.map_err(|e| database(&e))?;
        let id = match id {
            Some(id) => id,
            None => lease_id(&client, &name).await.map_err(|e| database(&e))?,
        };
        if !try_lease(&client, id).await.map_err(|e| database(&e))? {
            return Err(Failure::Fatal(format!(
                "`{name}` is being consumed by a running shell: stop the shells to replay in place, \
                 or rebuild it while serving (`host replay --function {name}`, without --in-place or --resume)"
            )));
        }
        self.lease = Some((client, id));
        Ok(())
    }
}

fn reason(failure: Failure) -> String {
    match failure {
        Failure::Conflict(e) | Failure::Outage(e) | Failure::Fatal(e) => e,
    }
}

/// The projectors named (`only`), or all of them; naming a function that is
/// not one is an error, since only read models are rebuilt.
pub(super) fn projectors(functions: &Functions, only: Option<&str>) -> anyhow::Result<Vec<Arc<Function>>> {
    let projectors: Vec<_> = functions
        .iter()
        .filter(|f| f.meta.kind == FunctionKind::Projector)
        .filter(|f| only.is_none_or(|name| f.name() == name))
        .cloned()
        .collect();
    if let Some(name) = only
        && projectors.is_empty()
    {
        match functions.get(name) {
            Some(_) => anyhow::bail!("`{name}` is not a projector: only read models can be rebuilt"),
            None => anyhow::bail!("the project has no function `{name}`"),
        }
    }
    Ok(projectors)
}

//! `host replay` while the shells serve: a projector's read model is rebuilt
//! as a new *generation* beside the one served, then reads switch to it at
//! once; and the dry run, which builds a candidate's read model in memory and
//! tells how it differs from the one served.
//!
//! - **Generations**: a collection's documents live in `documents` under its
//!   own name (generation 0) or under `NAME~genN`; the `read_models` row of
//!   the collection says which is served, and every statement on
//!   `documents` resolves the name through it (`lowshell_collection`), in
//!   its own snapshot. The API's reads, other functions' lookup plans and
//!   the projector's live writes all follow the pointer.
//! - **Building**: the projector (its recorded version, or a candidate
//!   file) runs its LOW cycle over its inputs in log order, exactly as the
//!   live consumer does, writing the new generation's names and advancing a
//!   checkpoint of its own (`NAME@genN`). It reads only up to the live
//!   consumer's checkpoint, never past it.
//! - **Switching**: once within a batch of the live consumer, it locks the
//!   live consumer's checkpoint row (the live consumer's next commit, which
//!   advances that row first, waits), applies the events up to that
//!   checkpoint, and in the same transaction points the collections at the
//!   new generation (keeping the old one as `previous`) and, for a candidate
//!   file, records it as the function's deployed version. On commit the live
//!   consumer goes on after its checkpoint, in the new generation: every
//!   event is in it exactly once.
//! - A projector split into partitions (`name#i/N` consumers) has no single
//!   checkpoint to switch at: refused. One kept previous generation at a
//!   time: `--drop-previous` removes it. Two rebuilds of one projector do
//!   not run at once (an advisory lock).

use crate::backend::memory::{MemoryBus, MemoryStore};
use crate::backend::postgres::PgStore;
use crate::backend::postgres::bus::{delivery, event_columns};
use crate::backend::postgres::database::{
    DEPLOYMENTS_CHANNEL, Database, LOCK_NAMESPACE, describe, lease_holders, lease_id,
};
use crate::backend::postgres::replay::{VersionSource, durable, load};
use crate::backend::store::lookup_rest;
use crate::backend::{Checkpoint, Commit, Delivery, Parked, Store, StoreError};
use crate::config::Project;
use crate::deploy::Deployments;
use crate::executor::{StepError, replay_group, run_step};
use crate::registry::{Functions, Registry};
use crate::runtime::{Function, Runtime, Version};
use anyhow::Context;
use async_trait::async_trait;
use low_contract::{Document, FunctionKind, Message, Query, Value, WriteOp};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// First key of the advisory lock a rebuild holds on its projector (the
/// second is the function's id in `leases`).
pub const REBUILD_LOCKS: i32 = LOCK_NAMESPACE + 1;
/// Events read from the log at once.
const BATCH: i64 = 500;
/// Events applied in one commit (the live consumers' group size).
const GROUP: usize = 32;
/// How close to the live consumer a rebuild gets (events left after a
/// round of catching up) before it pauses it to switch; and how many
/// rounds it tries for that before switching anyway, when the live
/// consumer keeps ahead. The pause lasts the events left.
const CLOSE: u64 = 50;
const ROUNDS: u32 = 20;
/// Retries of a step while the store is unavailable, the wait doubling from
/// [`BACKOFF`] (about 8 s in all).
const OUTAGE_RETRIES: u32 = 5;
const BACKOFF: Duration = Duration::from_millis(250);
/// Documents shown per kind of difference in a dry run.
pub const SAMPLES: usize = 3;

/// The physical name of generation `generation` of `collection`.
pub fn physical(collection: &str, generation: i32) -> String {
    if generation == 0 { collection.to_owned() } else { format!("{collection}~gen{generation}") }
}

/// What one projector's rebuild did.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub function: String,
    /// The version that built the generation, and where it came from.
    pub version: Version,
    pub source: VersionSource,
    /// The generation served now.
    pub generation: i32,
    /// Events applied in all, and of them while the live consumer waited.
    pub events: u64,
    pub tail: u64,
    /// The live consumer's log position at the switch (0: the start).
    pub switched_at: u64,
    /// The candidate was recorded as the function's deployed version.
    pub deployed: bool,
}

/// One collection's previous generation, removed.
#[derive(Debug, Clone)]
pub struct Dropped {
    pub function: String,
    pub collection: String,
    /// Its physical name, and the documents removed.
    pub physical: String,
    pub documents: u64,
}

/// How one collection would differ: counts, and a few samples of each.
#[derive(Debug, Clone, Default)]
pub struct CollectionDiff {
    pub collection: String,
    /// Documents served now, and in the candidate's read model.
    pub live: u64,
    pub candidate: u64,
    /// Keys only the candidate has, with its bodies.
    pub added: Vec<(String, Value)>,
    /// Keys only the live model has, with its bodies.
    pub removed: Vec<(String, Value)>,
    /// Keys whose bodies differ: live, then candidate.
    pub changed: Vec<(String, Value, Value)>,
    pub added_count: u64,
    pub removed_count: u64,
    pub changed_count: u64,
}

impl CollectionDiff {
    pub fn differs(&self) -> bool {
        self.added_count + self.removed_count + self.changed_count > 0
    }
}

/// What a dry run found; nothing was written.
#[derive(Debug, Clone)]
pub struct DryRun {
    pub function: String,
    pub version: Version,
    pub source: VersionSource,
    /// Events the candidate ran over, up to the live consumer's checkpoint.
    pub events: u64,
    pub up_to: u64,
    pub collections: Vec<CollectionDiff>,
}

/// A position in the log, in its `(tx, position)` order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct At {
    tx: String,
    position: i64,
}

impl At {
    fn start() -> Self {
        At { tx: "0".into(), position: 0 }
    }

    fn log_position(&self) -> u64 {
        u64::try_from(self.position).unwrap_or(0)
    }
}

/// The events on `$1` after `($2, $3)` up to and including `($4, $5)`, in
/// log order. A consumer's checkpoint is below every running transaction,
/// so the log up to it is final.
const RANGE: &str = concat!(
    "SELECT ",
    event_columns!(),
    "
     FROM events e
     WHERE e.topic = ANY($1) AND (e.tx, e.position) > ($2::text::xid8, $3)
       AND (e.tx, e.position) <= ($4::text::xid8, $5)
     ORDER BY e.tx, e.position
     LIMIT $6"
);

const CHECKPOINT: &str = "SELECT tx::text, position FROM checkpoints WHERE consumer = $1";

/// The project loaded for a rebuild or a dry run.
struct Setup {
    db: Arc<Database>,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    deployments: Arc<dyn Deployments>,
    attempts: u32,
}

impl Setup {
    async fn open(project: &Project) -> anyhow::Result<Self> {
        durable(project)?;
        let db = Arc::new(Database::connect(&project.database_url()?).await?);
        let (runtime, registry, deployments) = load(project, &db).await?;
        Ok(Self { db, runtime, registry, deployments, attempts: project.attempts.max(1) })
    }

    /// The projectors named (`only`), or all of them.
    fn projectors(&self, only: Option<&str>) -> anyhow::Result<Vec<Arc<Function>>> {
        super::replay::projectors(&self.registry.current(), only)
    }

    /// The version to build with (the recorded one, or the candidate file),
    /// the function set it makes, where it came from, and the candidate's
    /// bytes.
    async fn candidate(
        &self,
        live: &Arc<Function>,
        component: Option<&Path>,
    ) -> anyhow::Result<(Arc<Function>, Arc<Functions>, VersionSource, Option<Vec<u8>>)> {
        let name = live.name();
        let Some(path) = component else {
            let source = match self.deployments.current(name).await {
                Ok(Some((version, _))) if version == live.version => VersionSource::Recorded,
                Ok(_) => VersionSource::File,
                Err(e) => anyhow::bail!("cannot read the recorded version of `{name}`: {e}"),
            };
            return Ok((Arc::clone(live), self.registry.current(), source, None));
        };
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("cannot read the candidate {}", path.display()))?;
        let candidate = self
            .runtime
            .load(&bytes)
            .await
            .with_context(|| format!("cannot load the candidate {}", path.display()))?;
        if candidate.name() != name {
            anyhow::bail!("{} is `{}`, not `{name}`", path.display(), candidate.name());
        }
        if candidate.meta.kind != FunctionKind::Projector {
            anyhow::bail!("{} is not a projector: only read models can be rebuilt", path.display());
        }
        let functions = self
            .registry
            .check(&candidate, false)
            .map_err(|e| anyhow::anyhow!("the candidate {} is refused: {e}", path.display()))?;
        Ok((candidate, Arc::new(functions), VersionSource::Candidate, Some(bytes)))
    }

    async fn dedicated(&self) -> anyhow::Result<Client> {
        self.db.dedicated(|_| {}).await.map_err(|e| anyhow::anyhow!("cannot connect: {}", describe(&e)))
    }
}

/// A consumer's checkpoint (the start of the log when it has none).
async fn checkpoint_of(client: &impl tokio_postgres::GenericClient, consumer: &str) -> anyhow::Result<At> {
    let row = client.query_opt(CHECKPOINT, &[&consumer]).await.map_err(db_error)?;
    Ok(match row {
        Some(row) => {
            At { tx: row.try_get(0).map_err(db_error)?, position: row.try_get(1).map_err(db_error)? }
        }
        None => At::start(),
    })
}

fn db_error(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("the database refused or is unreachable: {}", describe(&e))
}

/// Runs one projector over a stretch of the log into a store.
struct Builder {
    db: Arc<Database>,
    functions: Arc<Functions>,
    function: Arc<Function>,
    store: Arc<dyn Store>,
    /// The checkpoint advanced with each step (none in a dry run).
    consumer: Option<String>,
    attempts: u32,
    /// The last event applied.
    at: At,
    applied: u64,
}

impl Builder {
    fn name(&self) -> &str {
        self.function.name()
    }

    /// Applies every event of the projector's inputs after `self.at` up to
    /// `until`; how many.
    async fn drain(&mut self, until: &At) -> anyhow::Result<u64> {
        let mut applied = 0;
        loop {
            let batch = self.read(until).await?;
            for group in batch.chunks(GROUP) {
                if group.len() > 1 {
                    match self.apply_group(group).await {
                        Ok(()) => {
                            if let Some((tx, last)) = group.last() {
                                let position = i64::try_from(last.position).unwrap_or(i64::MAX);
                                self.at = At { tx: tx.clone(), position };
                            }
                            applied += group.len() as u64;
                            self.applied += group.len() as u64;
                            continue;
                        }
                        Err(e) => tracing::debug!(function = self.name(), "applying one by one: {e}"),
                    }
                }
                self.apply_each(group).await?;
                applied += group.len() as u64;
            }
            if (batch.len() as i64) < BATCH {
                return Ok(applied);
            }
            tracing::info!(function = self.name(), applied = self.applied, "rebuilding");
        }
    }

    /// Applies `group` one event per commit, each retried on its own.
    async fn apply_each(&mut self, group: &[(String, Delivery)]) -> anyhow::Result<()> {
        for (tx, delivery) in group {
            self.apply(delivery).await.map_err(|cause| {
                anyhow::anyhow!(
                    "the rebuild of `{}` stopped at log position {}: {cause}. Nothing was switched: \
                         the generation served is unchanged",
                    self.name(),
                    delivery.position
                )
            })?;
            self.at = At { tx: tx.clone(), position: i64::try_from(delivery.position).unwrap_or(i64::MAX) };
            self.applied += 1;
        }
        Ok(())
    }

    /// Applies `group` in one commit, as a live consumer does (each step
    /// looking up through the writes of the steps before it): a rebuild
    /// keeps up with a busy live consumer only so. Nothing is committed
    /// when a step or the commit fails; then the events go one by one.
    async fn apply_group(&self, group: &[(String, Delivery)]) -> Result<(), StepError> {
        let (Some((_, first)), Some((_, last))) = (group.first(), group.last()) else { return Ok(()) };
        let inputs: Vec<&Message> = group.iter().map(|(_, d)| &d.event.message).collect();
        let ops = replay_group(&self.functions, &self.function, &self.store, &inputs).await?;
        let commit = Commit {
            ops,
            checkpoint: self.consumer.as_ref().map(|consumer| Checkpoint::past(consumer, last)),
            batch_from: self.consumer.as_ref().map(|_| (first.position, first.event.message.id.clone())),
            ..Commit::default()
        };
        self.store.commit(commit).await.map_err(StepError::from)
    }

    async fn read(&self, until: &At) -> anyhow::Result<Vec<(String, Delivery)>> {
        let mut outages = 0;
        loop {
            let attempt = async {
                let client = self.db.pool().get().await.map_err(|e| e.to_string())?;
                let rows = client
                    .query(
                        RANGE,
                        &[
                            &self.function.meta.inputs,
                            &self.at.tx,
                            &self.at.position,
                            &until.tx,
                            &until.position,
                            &BATCH,
                        ],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                rows.iter().map(delivery).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
            };
            match attempt.await {
                Ok(batch) => return Ok(batch),
                Err(e) => outage(self.name(), &mut outages, format!("cannot read the log: {e}"))
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?,
            }
        }
    }

    /// One event's LOW cycle, committed (with the checkpoint advance when
    /// there is one); a conflict is retried with a fresh lookup, an outage
    /// with backoff; anything else stops the rebuild.
    async fn apply(&self, delivery: &Delivery) -> Result<(), String> {
        let (mut conflicts, mut outages) = (0, 0);
        loop {
            let attempt = async {
                let cycle =
                    run_step(&self.functions, &self.function, &self.store, &delivery.event.message, false)
                        .await?;
                let checkpoint = self.consumer.as_ref().map(|consumer| Checkpoint::past(consumer, delivery));
                // Nobody waits for a rebuild's answers, and its input is in
                // the log already: only the writes and the checkpoint.
                let commit = Commit { notify: vec![], events: vec![], checkpoint, ..cycle.commit };
                self.store.commit(commit).await.map_err(StepError::from)
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(StepError::Store(StoreError::Conflict(last))) => {
                    conflicts += 1;
                    if conflicts >= self.attempts {
                        return Err(format!("kept conflicting after {conflicts} attempts: {last}"));
                    }
                    tokio::time::sleep(Duration::from_millis(u64::from(conflicts))).await;
                }
                Err(StepError::Store(StoreError::Unavailable(cause))) => {
                    outage(self.name(), &mut outages, format!("store unavailable: {cause}")).await?
                }
                Err(other) => return Err(other.to_string()),
            }
        }
    }
}

/// Follows the live consumer `name`'s checkpoint, without pausing it, until
/// close to it.
async fn catch_up(builder: &mut Builder, client: &Client, name: &str) -> anyhow::Result<()> {
    for _ in 0..ROUNDS {
        let live_at = checkpoint_of(client, name).await?;
        if builder.drain(&live_at).await? <= CLOSE {
            break;
        }
    }
    Ok(())
}

/// Waits before the next retry of an outage, or gives up.
async fn outage(function: &str, outages: &mut u32, cause: String) -> Result<(), String> {
    *outages += 1;
    if *outages > OUTAGE_RETRIES {
        return Err(format!("still failing after {OUTAGE_RETRIES} retries: {cause}"));
    }
    let wait = BACKOFF * 2u32.pow(*outages - 1);
    tracing::warn!(function, retry = *outages, ?wait, "{cause}; retrying");
    tokio::time::sleep(wait).await;
    Ok(())
}

/// Refuses a projector whose work is split into partitions: there is no
/// one checkpoint to switch at.
async fn unpartitioned(project: &Project, client: &Client, name: &str) -> anyhow::Result<()> {
    if let Some(policy) = project.consumers.get(name).filter(|p| p.partitions > 1) {
        anyhow::bail!(
            "`{name}` is split into {} partitions (consumers `{name}#i/{}`): a rebuild while serving switches \
             at one consumer's checkpoint. Set `consumers.{name}.partitions = 1` (and restart the shells), \
             or stop the shells and replay in place (`--in-place`)",
            policy.partitions,
            policy.partitions
        );
    }
    let prefix = format!("{name}#");
    let held = lease_holders(client).await.map_err(db_error)?;
    if let Some((consumer, Some(shell))) =
        held.into_iter().find(|(c, h)| c.starts_with(&prefix) && h.is_some())
    {
        anyhow::bail!(
            "`{consumer}` is a partition of `{name}`, consumed by {shell}: a rebuild while serving switches at \
             one consumer's checkpoint. Run the shells with `consumers.{name}.partitions = 1`, or stop them \
             and replay in place (`--in-place`)"
        );
    }
    Ok(())
}

/// Rebuilds `only` (a projector's name), or every projector, while the
/// shells serve; `component`, a candidate file for `only`, builds with that
/// version and deploys it at the switch.
pub async fn rebuild(
    project: &Project,
    only: Option<&str>,
    component: Option<&Path>,
) -> anyhow::Result<Vec<Rebuilt>> {
    if component.is_some() && only.is_none() {
        anyhow::bail!("--component needs --function: the projector the candidate is a version of");
    }
    let setup = Setup::open(project).await?;
    let projectors = setup.projectors(only)?;
    // Refused before any is rebuilt, rather than half way through.
    let client = setup.dedicated().await?;
    for live in &projectors {
        unpartitioned(project, &client, live.name()).await?;
    }
    drop(client);
    let mut done = vec![];
    for live in projectors {
        let (function, functions, source, bytes) = setup.candidate(&live, component).await?;
        done.push(rebuild_one(project, &setup, &live, function, functions, source, bytes).await?);
    }
    Ok(done)
}

async fn rebuild_one(
    project: &Project,
    setup: &Setup,
    live: &Arc<Function>,
    function: Arc<Function>,
    functions: Arc<Functions>,
    source: VersionSource,
    bytes: Option<Vec<u8>>,
) -> anyhow::Result<Rebuilt> {
    let name = function.name().to_owned();
    // This connection holds the rebuild's lease, then the switch.
    let mut client = setup.dedicated().await?;
    unpartitioned(project, &client, &name).await?;
    // The function's lease id under keys of their own: not a consumer's
    // lease, so `host status` does not list it.
    let id = lease_id(&client, &name).await.map_err(db_error)?;
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&REBUILD_LOCKS, &id])
        .await
        .map_err(db_error)?;
    if !row.try_get::<_, bool>(0).map_err(db_error)? {
        anyhow::bail!("another `host replay` is rebuilding `{name}` now");
    }
    let rows = client
        .query("SELECT collection, generation, previous FROM read_models WHERE function = $1", &[&name])
        .await
        .map_err(db_error)?;
    let mut generation = 0;
    for row in &rows {
        let (collection, current, previous): (String, i32, Option<String>) = (
            row.try_get(0).map_err(db_error)?,
            row.try_get(1).map_err(db_error)?,
            row.try_get(2).map_err(db_error)?,
        );
        if let Some(previous) = previous {
            anyhow::bail!(
                "the previous generation of `{collection}` (`{previous}`) is still kept: remove it first with \
                 `host replay --drop-previous --function {name}`"
            );
        }
        generation = generation.max(current);
    }
    let next = generation + 1;
    let names: BTreeMap<String, String> =
        function.meta.models.iter().map(|m| (m.collection.clone(), physical(&m.collection, next))).collect();
    let physicals: Vec<String> = names.values().cloned().collect();
    let consumer = format!("{name}@gen{next}");
    // What an interrupted rebuild of this generation left.
    let cleared = client
        .execute("DELETE FROM documents WHERE collection = ANY($1)", &[&physicals])
        .await
        .map_err(db_error)?;
    client.execute("DELETE FROM checkpoints WHERE consumer = $1", &[&consumer]).await.map_err(db_error)?;
    tracing::info!(function = %name, version = %function.version, generation = next, cleared, "rebuilding while serving");

    let pg: Arc<dyn Store> = Arc::new(PgStore::new(Arc::clone(&setup.db)));
    let store: Arc<dyn Store> = Arc::new(Redirect { base: Arc::clone(&pg), own: pg, names: names.clone() });
    let mut builder = Builder {
        db: Arc::clone(&setup.db),
        functions,
        function: Arc::clone(&function),
        store,
        consumer: Some(consumer.clone()),
        attempts: setup.attempts,
        at: At::start(),
        applied: 0,
    };
    catch_up(&mut builder, &client, &name).await?;

    // The switch: the live consumer's checkpoint row, locked, holds its next
    // commit (which advances that row first) until this transaction ends.
    let tx = client.transaction().await.map_err(db_error)?;
    tx.batch_execute("SET LOCAL idle_in_transaction_session_timeout = 0").await.map_err(db_error)?;
    tx.execute("INSERT INTO checkpoints (consumer) VALUES ($1) ON CONFLICT (consumer) DO NOTHING", &[&name])
        .await
        .map_err(db_error)?;
    let row = tx
        .query_one("SELECT tx::text, position FROM checkpoints WHERE consumer = $1 FOR UPDATE", &[&name])
        .await
        .map_err(db_error)?;
    let live_at = At { tx: row.try_get(0).map_err(db_error)?, position: row.try_get(1).map_err(db_error)? };
    let tail = builder.drain(&live_at).await?;
    for (collection, physical) in &names {
        tx.execute(
            "INSERT INTO read_models (collection, function, generation, physical, previous, switched_at)
             VALUES ($1, $2, $3, $4, lowshell_collection($1), clock_timestamp())
             ON CONFLICT (collection) DO UPDATE
             SET function = EXCLUDED.function, generation = EXCLUDED.generation, physical = EXCLUDED.physical,
                 previous = read_models.physical, switched_at = clock_timestamp()",
            &[collection, &name, &next, physical],
        )
        .await
        .map_err(db_error)?;
    }
    // The live step waiting for this row finds the stamp in its advance: it
    // began before the switch, so it conflicts and looks up again.
    tx.execute("UPDATE checkpoints SET switched_at = clock_timestamp() WHERE consumer = $1", &[&name])
        .await
        .map_err(db_error)?;
    tx.execute("DELETE FROM checkpoints WHERE consumer = $1", &[&consumer]).await.map_err(db_error)?;
    let deployed = match &bytes {
        Some(bytes) if function.version != live.version => {
            tx.execute(
                "INSERT INTO function_versions (name, version, bytes) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&name, &function.version.0, bytes],
            )
            .await
            .map_err(db_error)?;
            tx.execute(
                "INSERT INTO deployments (name, version, previous) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE
                    SET version = excluded.version, previous = excluded.previous, deployed_at = now()",
                &[&name, &function.version.0, &live.version.0],
            )
            .await
            .map_err(db_error)?;
            tx.execute("SELECT pg_notify($1, $2)", &[&DEPLOYMENTS_CHANNEL, &name]).await.map_err(db_error)?;
            true
        }
        _ => false,
    };
    tx.commit().await.map_err(|e| {
        anyhow::anyhow!(
            "the switch of `{name}` to generation {next} failed (nothing switched): {}",
            describe(&e)
        )
    })?;
    tracing::info!(function = %name, generation = next, events = builder.applied, tail, deployed, "switched");
    Ok(Rebuilt {
        function: name,
        version: function.version.clone(),
        source,
        generation: next,
        events: builder.applied,
        tail,
        switched_at: live_at.log_position(),
        deployed,
    })
}

/// Removes the previous generation kept by a rebuild, of `only` or of
/// every function.
pub async fn drop_previous(project: &Project, only: Option<&str>) -> anyhow::Result<Vec<Dropped>> {
    durable(project)?;
    let db = Database::connect(&project.database_url()?).await?;
    let mut client = db.pool().get().await.map_err(|e| anyhow::anyhow!("cannot connect: {e}"))?;
    let tx = client.transaction().await.map_err(db_error)?;
    let rows = tx
        .query(
            "SELECT function, collection, previous FROM read_models
             WHERE previous IS NOT NULL AND ($1::text IS NULL OR function = $1)
             ORDER BY function, collection FOR UPDATE",
            &[&only],
        )
        .await
        .map_err(db_error)?;
    let mut dropped = vec![];
    for row in &rows {
        let (function, collection, physical): (String, String, String) = (
            row.try_get(0).map_err(db_error)?,
            row.try_get(1).map_err(db_error)?,
            row.try_get(2).map_err(db_error)?,
        );
        let documents = tx
            .execute("DELETE FROM documents WHERE collection = $1", &[&physical])
            .await
            .map_err(db_error)?;
        tx.execute("UPDATE read_models SET previous = NULL WHERE collection = $1", &[&collection])
            .await
            .map_err(db_error)?;
        dropped.push(Dropped { function, collection, physical, documents });
    }
    tx.commit().await.map_err(db_error)?;
    Ok(dropped)
}

/// Builds `name`'s read model with `component` (or its recorded version)
/// in memory, up to the live consumer's checkpoint, and compares it with
/// the generation served. Writes nothing.
pub async fn dry_run(project: &Project, name: &str, component: Option<&Path>) -> anyhow::Result<DryRun> {
    let setup = Setup::open(project).await?;
    let live = setup.projectors(Some(name))?.remove(0);
    let (function, functions, source, _) = setup.candidate(&live, component).await?;
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
    let reads: Arc<dyn Store> = Arc::new(PgStore::for_reads(Arc::clone(&setup.db)));
    let collections: BTreeSet<String> =
        function.meta.models.iter().chain(&live.meta.models).map(|m| m.collection.clone()).collect();
    let own: BTreeMap<String, String> =
        function.meta.models.iter().map(|m| (m.collection.clone(), m.collection.clone())).collect();
    let store: Arc<dyn Store> = Arc::new(Redirect { base: reads, own: Arc::clone(&memory), names: own });
    let mut builder = Builder {
        db: Arc::clone(&setup.db),
        functions,
        function: Arc::clone(&function),
        store,
        consumer: None,
        attempts: setup.attempts,
        at: At::start(),
        applied: 0,
    };
    let mut client = setup.dedicated().await?;
    catch_up(&mut builder, &client, name).await?;
    // The live model and its checkpoint from one snapshot; then the
    // candidate goes exactly as far.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_error)?;
    let live_at = checkpoint_of(&tx, name).await?;
    let mut served = BTreeMap::new();
    for collection in &collections {
        let rows = tx
            .query(
                r#"SELECT key, body FROM documents WHERE collection = lowshell_collection($1) ORDER BY key COLLATE "C""#,
                &[collection],
            )
            .await
            .map_err(db_error)?;
        let documents = rows
            .iter()
            .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, Value>(1)?)))
            .collect::<Result<BTreeMap<_, _>, tokio_postgres::Error>>()
            .map_err(db_error)?;
        served.insert(collection.clone(), documents);
    }
    tx.rollback().await.map_err(db_error)?;
    builder.drain(&live_at).await?;

    let mut diffs = vec![];
    for (collection, live_docs) in served {
        let built = all(&memory, &collection).await?;
        diffs.push(compare(&collection, &live_docs, &built));
    }
    Ok(DryRun {
        function: name.to_owned(),
        version: function.version.clone(),
        source,
        events: builder.applied,
        up_to: live_at.log_position(),
        collections: diffs,
    })
}

/// Every document of `collection` in `store`, by key.
async fn all(store: &Arc<dyn Store>, collection: &str) -> anyhow::Result<BTreeMap<String, Value>> {
    const PAGE: usize = 1000;
    let mut documents = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(collection, after.as_deref(), PAGE).await?;
        let full = page.len() == PAGE;
        for document in page {
            after = Some(document.key.clone());
            documents.insert(document.key, document.body);
        }
        if !full {
            return Ok(documents);
        }
    }
}

/// How `candidate` differs from `live`, by key and body.
pub fn compare(
    collection: &str,
    live: &BTreeMap<String, Value>,
    candidate: &BTreeMap<String, Value>,
) -> CollectionDiff {
    let mut diff = CollectionDiff {
        collection: collection.to_owned(),
        live: live.len() as u64,
        candidate: candidate.len() as u64,
        ..CollectionDiff::default()
    };
    for (key, body) in candidate {
        match live.get(key) {
            None => {
                diff.added_count += 1;
                if diff.added.len() < SAMPLES {
                    diff.added.push((key.clone(), body.clone()));
                }
            }
            Some(was) if was != body => {
                diff.changed_count += 1;
                if diff.changed.len() < SAMPLES {
                    diff.changed.push((key.clone(), was.clone(), body.clone()));
                }
            }
            Some(_) => {}
        }
    }
    for (key, body) in live.iter().filter(|(key, _)| !candidate.contains_key(*key)) {
        diff.removed_count += 1;
        if diff.removed.len() < SAMPLES {
            diff.removed.push((key.clone(), body.clone()));
        }
    }
    diff
}

/// A store whose collections in `names` live in `own` under other names
/// (a new generation, or memory for a dry run); every other collection is
/// read from `base`. Documents are handed back under their own names.
struct Redirect {
    base: Arc<dyn Store>,
    own: Arc<dyn Store>,
    /// Collection → the name it has in `own`.
    names: BTreeMap<String, String>,
}

impl Redirect {
    fn back(collection: &str, mut documents: Vec<Document>) -> Vec<Document> {
        for document in &mut documents {
            collection.clone_into(&mut document.collection);
        }
        documents
    }

    /// `query` of the collection named `collection` in `own`.
    fn own_query(query: &Query, collection: String) -> Query {
        match query {
            Query::Key { key, .. } => Query::Key { collection, key: key.clone() },
            Query::Field { field, value, .. } => {
                Query::Field { collection, field: field.clone(), value: value.clone() }
            }
        }
    }

    fn rename(&self, op: WriteOp) -> WriteOp {
        let to = |c: String| self.names.get(&c).cloned().unwrap_or(c);
        match op {
            WriteOp::Insert { collection, key, body } => {
                WriteOp::Insert { collection: to(collection), key, body }
            }
            WriteOp::Put { collection, key, body } => WriteOp::Put { collection: to(collection), key, body },
            WriteOp::UpdateIfVersion { collection, key, body, expected_version } => {
                WriteOp::UpdateIfVersion { collection: to(collection), key, body, expected_version }
            }
            WriteOp::Delete { collection, key } => WriteOp::Delete { collection: to(collection), key },
            WriteOp::DeleteIfVersion { collection, key, expected_version } => {
                WriteOp::DeleteIfVersion { collection: to(collection), key, expected_version }
            }
        }
    }
}

#[async_trait]
impl Store for Redirect {
    async fn ready(&self) -> Result<(), String> {
        self.base.ready().await
    }

    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        match self.names.get(collection) {
            Some(own) => {
                Ok(Self::back(collection, self.own.get(own, key).await?.into_iter().collect()).pop())
            }
            None => self.base.get(collection, key).await,
        }
    }

    async fn find(
        &self,
        collection: &str,
        field: &str,
        value: &Value,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        match self.names.get(collection) {
            Some(own) => Ok(Self::back(collection, self.own.find(own, field, value, limit).await?)),
            None => self.base.find(collection, field, value, limit).await,
        }
    }

    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        match self.names.get(collection) {
            Some(own) => Ok(Self::back(collection, self.own.list(own, after, limit).await?)),
            None => self.base.list(collection, after, limit).await,
        }
    }

    /// The queries of renamed collections asked of `own` together, the
    /// others of `base` together: a rebuild's lookup plans take two round
    /// trips at most, not one a query.
    async fn lookup(&self, queries: &[&Query], limit: usize) -> Result<Vec<Vec<Document>>, StoreError> {
        let renamed: Vec<(usize, Query)> = queries
            .iter()
            .enumerate()
            .filter_map(|(index, query)| {
                let own = self.names.get(query.collection())?.clone();
                Some((index, Self::own_query(query, own)))
            })
            .collect();
        let mut found: Vec<Option<Vec<Document>>> = vec![None; queries.len()];
        if !renamed.is_empty() {
            let asked: Vec<&Query> = renamed.iter().map(|(_, query)| query).collect();
            let answers = self.own.lookup(&asked, limit).await?;
            for ((index, _), documents) in renamed.iter().zip(answers) {
                found[*index] = Some(Self::back(queries[*index].collection(), documents));
            }
        }
        lookup_rest(self.base.as_ref(), queries, found, limit).await
    }

    fn reads_are_remote(&self) -> bool {
        self.base.reads_are_remote() || self.own.reads_are_remote()
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let ops = commit.ops.into_iter().map(|op| self.rename(op)).collect();
        self.own.commit(Commit { ops, ..commit }).await
    }

    async fn parked(&self, consumer: Option<&str>) -> Result<Vec<Parked>, StoreError> {
        self.base.parked(consumer).await
    }

    async fn parked_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.base.parked_counts().await
    }

    async fn parked_failed(&self, consumer: &str, position: u64, error: &str) -> Result<(), StoreError> {
        self.base.parked_failed(consumer, position, error).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(collection: &str, key: &str, body: Value) -> WriteOp {
        WriteOp::Put { collection: collection.into(), key: key.into(), body }
    }

    #[tokio::test]
    async fn a_lookup_plan_reads_renamed_collections_from_the_new_generation_and_the_rest_from_the_base() {
        use crate::backend::memory::{MemoryBus, MemoryStore};
        let base: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
        let own: Arc<dyn Store> = Arc::new(MemoryStore::new(MemoryBus::new()));
        let seed = |store: &Arc<dyn Store>, ops| {
            let store = Arc::clone(store);
            async move { store.commit(Commit { ops, ..Commit::default() }).await.expect("seeded") }
        };
        seed(
            &base,
            vec![
                put("customers", "a", json!({ "gen": 0 })),
                put("invites", "x", json!({ "customer-id": "a" })),
            ],
        )
        .await;
        seed(
            &own,
            vec![
                put("customers~gen1", "a", json!({ "gen": 1, "tag": "t" })),
                put("customers~gen1", "b", json!({ "gen": 1, "tag": "t" })),
            ],
        )
        .await;
        let redirect = Redirect {
            base,
            own,
            names: BTreeMap::from([("customers".to_owned(), "customers~gen1".to_owned())]),
        };
        let key = |collection: &str, key: &str| Query::Key { collection: collection.into(), key: key.into() };
        let tagged = Query::Field { collection: "customers".into(), field: "tag".into(), value: json!("t") };
        let queries = [key("invites", "x"), key("customers", "a"), tagged, key("invites", "none")];
        let found = redirect.lookup(&queries.iter().collect::<Vec<_>>(), 10).await.expect("read");
        let seen: Vec<Vec<(&str, &str, &Value)>> = found
            .iter()
            .map(|documents| {
                documents.iter().map(|d| (d.collection.as_str(), d.key.as_str(), &d.body)).collect()
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                vec![("invites", "x", &json!({ "customer-id": "a" }))],
                vec![("customers", "a", &json!({ "gen": 1, "tag": "t" }))],
                vec![
                    ("customers", "a", &json!({ "gen": 1, "tag": "t" })),
                    ("customers", "b", &json!({ "gen": 1, "tag": "t" }))
                ],
                vec![],
            ]
        );
    }

    #[test]
    fn generation_zero_is_the_collection_itself() {
        assert_eq!(physical("customers", 0), "customers");
        assert_eq!(physical("customers", 2), "customers~gen2");
    }

    #[test]
    fn compare_counts_every_difference_and_samples_a_few() {
        let live: BTreeMap<String, Value> = (0..5).map(|i| (format!("k{i}"), json!({ "n": i }))).collect();
        let mut candidate = live.clone();
        candidate.remove("k0");
        candidate.insert("k1".into(), json!({ "n": 10 }));
        for i in 5..10 {
            candidate.insert(format!("k{i}"), json!({ "n": i }));
        }
        let diff = compare("things", &live, &candidate);
        assert_eq!((diff.live, diff.candidate), (5, 9));
        assert_eq!((diff.added_count, diff.removed_count, diff.changed_count), (5, 1, 1));
        assert_eq!(diff.added.len(), SAMPLES);
        assert_eq!(diff.removed, vec![("k0".to_owned(), json!({ "n": 0 }))]);
        assert_eq!(diff.changed, vec![("k1".to_owned(), json!({ "n": 1 }), json!({ "n": 10 }))]);
        assert!(diff.differs());
        assert!(!compare("things", &live, &live).differs());
    }
}

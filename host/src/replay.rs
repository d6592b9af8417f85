//! `host replay`: rebuilds projectors' read models from the Postgres event
//! log by running each projector's LOW cycle over every historic event, in
//! log order, exactly as the live consumer does.
//!
//! The consumer's lease is held for the whole replay, so no shell consumes
//! that function meanwhile; the replay refuses to start while a running
//! shell holds it. The read model is emptied first: readers see it grow
//! back while the replay runs.

use crate::bus::PgBus;
use crate::config::{Backend, Project};
use crate::executor::{StepError, run_cycle};
use crate::postgres::{Database, LOCK_NAMESPACE};
use crate::registry::Functions;
use crate::runtime::Runtime;
use crate::shell::{load_file, module_files};
use crate::store::{Checkpoint, Commit, PgStore, Store, StoreError};
use anyhow::Context;
use low_contract::FunctionKind;
use std::sync::Arc;

/// What one projector's replay did.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub function: String,
    pub events: usize,
    /// Documents removed before replaying.
    pub cleared: u64,
}

/// Replays `only` (a projector's name), or every projector of the project.
pub async fn replay(project: &Project, only: Option<&str>) -> anyhow::Result<Vec<Replayed>> {
    if project.store != Backend::Postgres || project.bus != Backend::Postgres {
        anyhow::bail!("replay reads the durable event log: the project must use the postgres bus and store");
    }
    let runtime = Runtime::new(project.limits())?;
    let mut loaded = vec![];
    for path in module_files(project)? {
        loaded.push(load_file(&runtime, &path).await?);
    }
    let functions = Functions::new(loaded)?;
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
            Some(_) => anyhow::bail!("`{name}` is not a projector: only read models can be replayed"),
            None => anyhow::bail!("the project has no function `{name}`"),
        }
    }
    let db = Arc::new(Database::connect(&project.database_url()?).await?);
    let bus = PgBus::start(Arc::clone(&db));
    let pg = PgStore::new(Arc::clone(&db));
    let store: Arc<dyn Store> = Arc::new(PgStore::new(Arc::clone(&db)));
    let mut report = vec![];
    for function in projectors {
        let name = function.name().to_owned();
        let lease = db.dedicated(|_| {}).await.context("cannot connect to the database")?;
        let held: bool = lease
            .query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&LOCK_NAMESPACE, &name])
            .await?
            .try_get(0)?;
        if !held {
            anyhow::bail!("`{name}` is being consumed by a running shell: stop the shells, then replay");
        }
        let collections: Vec<String> = function.meta.models.iter().map(|m| m.collection.clone()).collect();
        let cleared = pg.reset(&name, &collections).await?;
        let history = bus.history(&function.meta.inputs).await?;
        tracing::info!(function = %name, events = history.len(), cleared, "replaying");
        for delivery in &history {
            let checkpoint = Checkpoint { consumer: name.clone(), position: delivery.position };
            let mut attempt = 0;
            loop {
                attempt += 1;
                let cycle = run_cycle(&functions, &function, &store, &delivery.event.message).await;
                let result = match cycle {
                    // Nobody waits for these answers any more: no notifications.
                    Ok(cycle) => store
                        .commit(Commit {
                            notify: vec![],
                            checkpoint: Some(checkpoint.clone()),
                            ..cycle.commit
                        })
                        .await
                        .map_err(StepError::from),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => break,
                    Err(StepError::Store(StoreError::Conflict(_))) if attempt < project.attempts.max(1) => {}
                    Err(e) => {
                        tracing::warn!(function = %name, position = delivery.position, "skipping an event the projector fails on: {e}");
                        store
                            .commit(Commit { checkpoint: Some(checkpoint.clone()), ..Commit::default() })
                            .await?;
                        break;
                    }
                }
            }
        }
        drop(lease);
        report.push(Replayed { function: name, events: history.len(), cleared });
    }
    Ok(report)
}

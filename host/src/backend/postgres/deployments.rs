//! Cluster-wide deploys in Postgres: the [`Deployments`] of shells that
//! share a database.
//!
//! - `function_versions` keeps the bytes of every version a shell loaded or
//!   was given (so any shell can load any of them, a rollback's target too).
//! - `deployments` holds, per function, the version the cluster runs and the
//!   one it replaced; it is written before a shell swaps locally, so the
//!   database is the source of truth.
//! - Each write sends `pg_notify` on [`DEPLOYMENTS_CHANNEL`] with the
//!   function's name; every shell listens (a dedicated connection,
//!   reconnected on its own) and, after a reconnect, looks at every function
//!   again, since it may have missed a notification.

use crate::backend::postgres::database::{DEPLOYMENTS_CHANNEL, Database, describe, describe_pool};
use crate::deploy::{Deployments, DeploymentsError};
use crate::runtime::Version;
use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

const RECONNECT: Duration = Duration::from_secs(1);

pub struct PgDeployments {
    db: Arc<Database>,
    changes: Mutex<Option<mpsc::UnboundedReceiver<Option<String>>>>,
}

fn failed(e: tokio_postgres::Error) -> DeploymentsError {
    DeploymentsError(format!("the database refused or is unreachable: {}", describe(&e)))
}

fn no_connection(e: deadpool_postgres::PoolError) -> DeploymentsError {
    DeploymentsError(describe_pool(&e))
}

impl PgDeployments {
    /// Starts listening for deploys (and keeps reconnecting while the
    /// receiver of [`changes`](Deployments::changes) lives).
    pub fn start(db: Arc<Database>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(listen(Arc::clone(&db), tx));
        Self { db, changes: Mutex::new(Some(rx)) }
    }

    /// Reads the record without listening for changes (for `host replay`).
    pub fn reader(db: Arc<Database>) -> Self {
        Self { db, changes: Mutex::new(None) }
    }
}

async fn listen(db: Arc<Database>, changes: mpsc::UnboundedSender<Option<String>>) {
    while !changes.is_closed() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let connected = db
            .dedicated(move |m| {
                if let AsyncMessage::Notification(n) = m {
                    let _ = tx.send(n.payload().to_owned());
                }
            })
            .await;
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!("cannot listen for deploys, retrying: {}", describe(&e));
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {DEPLOYMENTS_CHANNEL}")).await {
            tracing::warn!("cannot listen for deploys, retrying: {}", describe(&e));
            tokio::time::sleep(RECONNECT).await;
            continue;
        }
        tracing::debug!("listening for deploys");
        // Deploys recorded before LISTEN took effect (while starting, or
        // while disconnected) were not announced: look at every function.
        if changes.send(None).is_err() {
            return;
        }
        loop {
            tokio::select! {
                // The shell stopped: let the connection go.
                _ = changes.closed() => return,
                name = rx.recv() => match name {
                    Some(name) => {
                        if changes.send(Some(name)).is_err() {
                            return;
                        }
                    }
                    None => break,
                },
            }
        }
        drop(client);
        tracing::warn!("the connection listening for deploys closed; reconnecting");
        tokio::time::sleep(RECONNECT).await;
    }
}

#[async_trait]
impl Deployments for PgDeployments {
    async fn keep(&self, name: &str, version: &Version, bytes: &[u8]) -> Result<(), DeploymentsError> {
        let client = self.db.pool().get().await.map_err(no_connection)?;
        client
            .execute(
                "INSERT INTO function_versions (name, version, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&name, &version.0, &bytes],
            )
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn record(
        &self,
        name: &str,
        version: &Version,
        bytes: &[u8],
        previous: Option<&Version>,
    ) -> Result<(), DeploymentsError> {
        let mut client = self.db.pool().get().await.map_err(no_connection)?;
        let tx = client.transaction().await.map_err(failed)?;
        if !bytes.is_empty() {
            tx.execute(
                "INSERT INTO function_versions (name, version, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&name, &version.0, &bytes],
            )
            .await
            .map_err(failed)?;
        }
        tx.execute(
            "INSERT INTO deployments (name, version, previous) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE
                SET version = excluded.version, previous = excluded.previous, deployed_at = now()",
            &[&name, &version.0, &previous.map(|p| p.0.as_str())],
        )
        .await
        .map_err(failed)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&DEPLOYMENTS_CHANNEL, &name]).await.map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        Ok(())
    }

    async fn current(&self, name: &str) -> Result<Option<(Version, Option<Version>)>, DeploymentsError> {
        let client = self.db.pool().get().await.map_err(no_connection)?;
        let row = client
            .query_opt("SELECT version, previous FROM deployments WHERE name = $1", &[&name])
            .await
            .map_err(failed)?;
        let Some(row) = row else { return Ok(None) };
        let version: String = row.try_get(0).map_err(failed)?;
        let previous: Option<String> = row.try_get(1).map_err(failed)?;
        Ok(Some((Version(version), previous.map(Version))))
    }

    async fn bytes(&self, name: &str, version: &Version) -> Result<Option<Vec<u8>>, DeploymentsError> {
        let client = self.db.pool().get().await.map_err(no_connection)?;
        let row = client
            .query_opt(
                "SELECT bytes FROM function_versions WHERE name = $1 AND version = $2",
                &[&name, &version.0],
            )
            .await
            .map_err(failed)?;
        row.map(|r| r.try_get(0).map_err(failed)).transpose()
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<Option<String>>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

//! The Postgres store. A [`Commit`] is one transaction: the checkpoint
//! advance (first, so that a second processor of the same delivery waits on
//! the row and then finds it already advanced), the write ops (integrity by
//! constraints and version conditions, never read-then-write), the events
//! appended to the log, and the notifications (kept, and announced with
//! `pg_notify`, which is transactional).

use super::{Commit, Store, StoreError};
use crate::postgres::{
    Database, EVENTS_CHANNEL, NOTIFICATIONS_CHANNEL, describe, describe_pool, is_unavailable,
};
use async_trait::async_trait;
use low_contract::{Document, Value, WriteOp};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

pub struct PgStore {
    db: Arc<Database>,
}

impl PgStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.db.pool().get().await.map_err(|e| StoreError::Unavailable(describe_pool(&e)))
    }

    /// Deletes every document of `collections` and moves `consumer` back to
    /// the start of the log, in one transaction (for a replay).
    pub async fn reset(&self, consumer: &str, collections: &[String]) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;
        let deleted = tx
            .execute("DELETE FROM documents WHERE collection = ANY($1)", &[&collections])
            .await
            .map_err(store_error)?;
        tx.execute(
            "INSERT INTO checkpoints (consumer) VALUES ($1)
             ON CONFLICT (consumer) DO UPDATE SET tx = '0', position = 0, updated_at = now()",
            &[&consumer],
        )
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(deleted)
    }
}

/// Maps a database error to what the executor can act on.
pub fn store_error(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c)
            if *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreError::Conflict(describe(&e))
        }
        _ if is_unavailable(&e) => StoreError::Unavailable(describe(&e)),
        _ => StoreError::Invalid(describe(&e)),
    }
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn document(row: &Row) -> Result<Document, StoreError> {
    Ok(Document {
        collection: row.try_get(0).map_err(store_error)?,
        key: row.try_get(1).map_err(store_error)?,
        version: version(row.try_get(2).map_err(store_error)?),
        body: row.try_get(3).map_err(store_error)?,
    })
}

fn i64_of(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{what} {n} is out of range")))
}

#[async_trait]
impl Store for PgStore {
    async fn ready(&self) -> Result<(), String> {
        let client = self.client().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| format!("the database does not answer: {e}"))
    }

    async fn get(&self, collection: &str, key: &str) -> Result<Option<Document>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT collection, key, version, body FROM documents WHERE collection = $1 AND key = $2",
                &[&collection, &key],
            )
            .await
            .map_err(store_error)?;
        row.as_ref().map(document).transpose()
    }

    async fn find(&self, collection: &str, field: &str, value: &Value) -> Result<Vec<Document>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT collection, key, version, body FROM documents
                 WHERE collection = $1 AND body -> $2::text = $3::jsonb ORDER BY key",
                &[&collection, &field, value],
            )
            .await
            .map_err(store_error)?;
        rows.iter().map(document).collect()
    }

    async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // `COLLATE "C"`: the same byte order as the memory store's BTreeMap.
        let rows = client
            .query(
                r#"SELECT collection, key, version, body FROM documents
                   WHERE collection = $1 AND ($2::text IS NULL OR key COLLATE "C" > $2::text)
                   ORDER BY key COLLATE "C" LIMIT $3"#,
                &[&collection, &after, &limit],
            )
            .await
            .map_err(store_error)?;
        rows.iter().map(document).collect()
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_error)?;

        if let Some(checkpoint) = &commit.checkpoint {
            let position = i64_of(checkpoint.position, "log position")?;
            tx.execute(
                "INSERT INTO checkpoints (consumer) VALUES ($1) ON CONFLICT (consumer) DO NOTHING",
                &[&checkpoint.consumer],
            )
            .await
            .map_err(store_error)?;
            // Conditional on the stored checkpoint being before this event: a
            // second processor of the same delivery waits for the row lock,
            // then updates nothing.
            let advanced = tx
                .execute(
                    "UPDATE checkpoints c SET tx = e.tx, position = e.position, updated_at = now()
                     FROM events e
                     WHERE c.consumer = $1 AND e.position = $2 AND (c.tx, c.position) < (e.tx, e.position)",
                    &[&checkpoint.consumer, &position],
                )
                .await
                .map_err(store_error)?;
            if advanced == 0 {
                // Someone already committed this step (another shell, or an
                // earlier attempt whose commit outcome was lost): applying it
                // again would process the event twice. Drop this one.
                tracing::info!(
                    consumer = %checkpoint.consumer,
                    position = checkpoint.position,
                    "already processed; discarding the duplicate step"
                );
                return Ok(());
            }
        }

        for op in &commit.ops {
            let (collection, key) = (op.collection(), op.key());
            let conflict = match op {
                WriteOp::Insert { body, .. } => {
                    let n = tx
                        .execute(
                            "INSERT INTO documents (collection, key, version, body) VALUES ($1, $2, 1, $3)
                             ON CONFLICT (collection, key) DO NOTHING",
                            &[&collection, &key, body],
                        )
                        .await
                        .map_err(store_error)?;
                    (n == 0).then(|| format!("`{collection}/{key}` already exists"))
                }
                WriteOp::Put { body, .. } => {
                    tx.execute(
                        "INSERT INTO documents (collection, key, version, body) VALUES ($1, $2, 1, $3)
                         ON CONFLICT (collection, key)
                         DO UPDATE SET version = documents.version + 1, body = EXCLUDED.body",
                        &[&collection, &key, body],
                    )
                    .await
                    .map_err(store_error)?;
                    None
                }
                WriteOp::UpdateIfVersion { body, expected_version, .. } => {
                    let n = if *expected_version == 0 {
                        tx.execute(
                            "INSERT INTO documents (collection, key, version, body) VALUES ($1, $2, 1, $3)
                             ON CONFLICT (collection, key) DO NOTHING",
                            &[&collection, &key, body],
                        )
                        .await
                    } else {
                        let expected = i64_of(*expected_version, "expected version")?;
                        tx.execute(
                            "UPDATE documents SET version = version + 1, body = $3
                             WHERE collection = $1 AND key = $2 AND version = $4",
                            &[&collection, &key, body, &expected],
                        )
                        .await
                    }
                    .map_err(store_error)?;
                    (n == 0).then(|| format!("`{collection}/{key}` is not at version {expected_version}"))
                }
                WriteOp::Delete { .. } => {
                    tx.execute(
                        "DELETE FROM documents WHERE collection = $1 AND key = $2",
                        &[&collection, &key],
                    )
                    .await
                    .map_err(store_error)?;
                    None
                }
            };
            if let Some(conflict) = conflict {
                // Dropping the transaction rolls it back.
                return Err(StoreError::Conflict(conflict));
            }
        }

        let mut topics = BTreeSet::new();
        for event in &commit.events {
            let m = &event.message;
            tx.execute(
                "INSERT INTO events (id, topic, kind, payload, correlation_id, causation_id, command_id, function, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $5, $7, $8)",
                &[&m.id, &event.topic, &m.kind, &m.payload, &m.correlation_id, &m.causation_id, &event.function, &event.version],
            )
            .await
            .map_err(store_error)?;
            topics.insert(event.topic.as_str());
        }
        for topic in topics {
            tx.execute("SELECT pg_notify($1, $2)", &[&EVENTS_CHANNEL, &topic]).await.map_err(store_error)?;
        }
        for notification in &commit.notify {
            let Some(correlation) = &notification.correlation_id else { continue };
            let message = serde_json::to_value(notification)
                .map_err(|e| StoreError::Invalid(format!("notification is not JSON: {e}")))?;
            tx.execute(
                "WITH n AS (INSERT INTO notifications (correlation_id, message) VALUES ($1, $2) RETURNING id)
                 SELECT pg_notify($3, n.id::text) FROM n",
                &[correlation, &message, &NOTIFICATIONS_CHANNEL],
            )
            .await
            .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)
    }
}

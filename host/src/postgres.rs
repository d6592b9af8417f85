//! Postgres plumbing shared by the Postgres [bus](crate::bus::PgBus) and
//! [store](crate::store::PgStore): the connection pool, dedicated
//! connections (LISTEN, consumer leases) and the versioned schema migrations.
//!
//! The schema, in short:
//! - `events` is the durable log *and* the bus: commands and events, each
//!   with a global `position` and the `tx` (`xid8`) of the transaction that
//!   appended it. Consumers read in `(tx, position)` order and only below
//!   `pg_snapshot_xmin(pg_current_snapshot())`, so an event of a transaction
//!   still open is never jumped over when transactions commit out of order.
//! - `documents` holds every function's documents, versioned.
//! - `checkpoints` is where each consumer (one per function) has got to.
//! - `notifications` keeps what a step tells the requester (durably, so a
//!   repeated command can be answered again); `pg_notify` wakes the shells.
//! - `function_versions` and `deployments`: the versions of the functions
//!   the cluster runs ([`crate::cluster`]).
//! - `parked`: events a consumer could not process, set aside with their
//!   error until a retry applies them.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Channel woken when events are appended; the payload is the topic.
pub const EVENTS_CHANNEL: &str = "lowshell_events";
/// Channel carrying the id of each new row of `notifications`.
pub const NOTIFICATIONS_CHANNEL: &str = "lowshell_notifications";
/// Channel carrying the name of a function whose deployed version changed.
pub const DEPLOYMENTS_CHANNEL: &str = "lowshell_deployments";
/// First key of the advisory locks this shell takes (the second is the lock's name hashed).
pub const LOCK_NAMESPACE: i32 = 0x006c_6f77;

/// Connections per shell in the pool (dedicated connections come on top).
const POOL_SIZE: usize = 16;
/// How long to wait for a connection before calling the database unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Versioned migrations, applied in order, each once, each in its own transaction.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "event log, documents, checkpoints, notifications", MIGRATION_1),
    (2, "deployed versions of the functions", MIGRATION_2),
    (5, "parked events", MIGRATION_5),
];

const MIGRATION_1: &str = r#"
CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx              xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id              text NOT NULL,
    topic           text NOT NULL,
    kind            text NOT NULL,
    payload         jsonb NOT NULL,
    correlation_id  text,
    causation_id    text,
    command_id      text,
    function        text,
    version         text,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_order ON events (tx, position);
CREATE INDEX events_topic ON events (topic, tx, position);
-- A command is appended once: a repeated command id is the same command.
CREATE UNIQUE INDEX events_command_id ON events (id) WHERE topic = 'commands';

CREATE TABLE documents (
    collection  text NOT NULL,
    key         text NOT NULL,
    version     bigint NOT NULL,
    body        jsonb NOT NULL,
    PRIMARY KEY (collection, key)
);

CREATE TABLE checkpoints (
    consumer    text PRIMARY KEY,
    tx          xid8 NOT NULL DEFAULT '0',
    position    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    correlation_id  text NOT NULL,
    message         jsonb NOT NULL,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_correlation ON notifications (correlation_id, id);
"#;

/// Cluster-wide deploys (see [`crate::cluster`]).
const MIGRATION_2: &str = r#"
CREATE TABLE function_versions (
    name        text NOT NULL,
    version     text NOT NULL,
    bytes       bytea NOT NULL,
    kept_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

CREATE TABLE deployments (
    name         text PRIMARY KEY,
    version      text NOT NULL,
    previous     text,
    deployed_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (name, version) REFERENCES function_versions (name, version)
);
"#;

/// Events a consumer set aside (a dead letter each), with a copy of the
/// event so that the record stands on its own.
const MIGRATION_5: &str = r#"
CREATE TABLE parked (
    consumer      text NOT NULL,
    position      bigint NOT NULL,
    event         jsonb NOT NULL,
    error         text NOT NULL,
    attempts      integer NOT NULL,
    parked_at     timestamptz NOT NULL DEFAULT now(),
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, position)
);
"#;

/// A database: its connection settings and a pool.
pub struct Database {
    config: tokio_postgres::Config,
    pool: Pool,
}

/// The database URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Database {
    /// Connects (checking that the database answers) and migrates the schema.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| anyhow::anyhow!("invalid database URL {}: {e}", redact(url)))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("lowshell");
        }
        if config.get_options().is_none() {
            // No NOTICEs ("already exists, skipping") in the shell's log.
            config.options("-c client_min_messages=warning");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot create the connection pool: {e}"))?;
        let db = Self { config, pool };
        db.migrate().await.map_err(|e| {
            anyhow::anyhow!("cannot prepare the database {} (is Postgres running?): {e:#}", redact(url))
        })?;
        Ok(db)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A connection of its own, outside the pool (LISTEN, advisory locks).
    /// Its driver runs on a task; `on_message` sees its notifications.
    pub async fn dedicated(
        &self,
        mut on_message: impl FnMut(tokio_postgres::AsyncMessage) + Send + 'static,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            loop {
                match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(message)) => on_message(message),
                    Some(Err(e)) => {
                        tracing::debug!("dedicated connection closed: {}", describe(&e));
                        break;
                    }
                    None => break,
                }
            }
        });
        Ok(client)
    }

    /// Applies the migrations not applied yet. Several shells starting at
    /// once take turns (an advisory lock).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await?;
        client.execute("SELECT pg_advisory_lock($1, 0)", &[&LOCK_NAMESPACE]).await?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (
                        version integer PRIMARY KEY,
                        description text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())",
                )
                .await?;
            for (version, description, sql) in MIGRATIONS {
                let applied = client
                    .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version])
                    .await?
                    .is_some();
                if applied {
                    continue;
                }
                let tx = client.transaction().await?;
                tx.batch_execute(sql).await?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                    &[version, description],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(version, description, "schema migrated");
            }
            anyhow::Ok(())
        }
        .await;
        client.execute("SELECT pg_advisory_unlock($1, 0)", &[&LOCK_NAMESPACE]).await?;
        result
    }
}

/// A database error with its cause (`tokio_postgres` alone says "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// A pool error, said plainly.
pub fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => format!("the database is unreachable ({})", describe(e)),
        PoolError::Timeout(_) => "the database is unreachable (timed out waiting for a connection)".into(),
        other => format!("the database is unreachable ({other})"),
    }
}

/// Whether a database error means "not reachable now" rather than "refused".
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            // connection exceptions, insufficient resources, operator intervention
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57") || c.starts_with("58")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=/tmp dbname=x"), "host=/tmp dbname=x");
    }
}

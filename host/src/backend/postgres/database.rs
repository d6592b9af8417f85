//! Postgres plumbing shared by the Postgres [bus](crate::backend::postgres::PgBus) and
//! [store](crate::backend::postgres::PgStore): the connection pool, dedicated
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
//!   the cluster runs ([`crate::backend::postgres::deployments`]).
//! - `leases` gives each consumer name an id, the key of its lease.
//! - `command_results`: per idempotent command, the fingerprint its id is
//!   bound to and its first answer.
//! - `parked`: events a consumer could not process, set aside with their
//!   error until a retry applies them.
//! - `read_models`: which generation of a collection is served (a rebuild
//!   while serving builds the next one beside it, then switches).
//! - `events.subject` and `events.claims`: who caused each command and
//!   event (the audit trail; none where no identity was checked).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Channel woken when events are appended; the payload is the topic, then
/// the appending shell's tag when that shell wakes its own consumers (see
/// `PgBus::echo_tag`).
pub const EVENTS_CHANNEL: &str = "lowshell_events";
/// Channel carrying the id of each new row of `notifications`.
pub const NOTIFICATIONS_CHANNEL: &str = "lowshell_notifications";
/// Channel carrying the name of a function whose deployed version changed.
pub const DEPLOYMENTS_CHANNEL: &str = "lowshell_deployments";
/// First key of the advisory locks this shell takes (the second is the
/// lease's id in `leases`, see [`lease_id`]; 0 is the migration lock).
pub const LOCK_NAMESPACE: i32 = 0x006c_6f77;

/// Connections per shell in the pool (dedicated connections come on top).
const POOL_SIZE: usize = 16;
/// Connections of the read path (the API's queries and the responses'
/// documents), apart from the write path's so that a burst of reads cannot
/// starve commits.
pub const READ_POOL_SIZE: usize = 8;
/// How long one of the shell's transactions may sit idle before the server ends it.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(60);
/// TCP keepalives: first probe after this much silence, then every interval.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data for this long closes the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a connection before calling the database unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Versioned migrations, applied in order, each once, each in its own transaction.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "event log, documents, checkpoints, notifications", MIGRATION_1),
    (2, "deployed versions of the functions", MIGRATION_2),
    (3, "collision-free keys of the consumers' leases", MIGRATION_3),
    (4, "idempotency: fingerprints and first answers of keyed commands", MIGRATION_4),
    (5, "parked events", MIGRATION_5),
    (6, "generations of the read models", MIGRATION_6),
    (7, "who caused each event: subject and claims", MIGRATION_7),
    (8, "switches of a read model, stamped on its consumer's checkpoint", MIGRATION_8),
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

/// The audit trail: each command and event records the principal that
/// caused it — the verified token's subject (`sub`) and its claims — or
/// none when the shell checks no identities. Existing rows keep none.
const MIGRATION_7: &str = r#"
ALTER TABLE events ADD COLUMN subject text, ADD COLUMN claims jsonb;
CREATE INDEX events_subject ON events (subject, position) WHERE subject IS NOT NULL;
"#;

/// A rebuild's switch stamps the live consumer's checkpoint row (which it
/// holds locked) with its clock: the step that waited for that row reads the
/// stamp in the same statement that advances the checkpoint (see
/// `store::sql::ADVANCE`), rather than in a separate query of `read_models`.
const MIGRATION_8: &str = r#"
ALTER TABLE checkpoints ADD COLUMN switched_at timestamptz;
"#;

/// Cluster-wide deploys (see [`crate::backend::postgres::deployments`]).
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

/// The consumers' leases: each name gets an id of its own (from 1; the
/// migration lock is `(LOCK_NAMESPACE, 0)`), the second key of its advisory
/// lock. A hash of the name could collide with another name's.
const MIGRATION_3: &str = r#"
CREATE TABLE leases (
    name  text PRIMARY KEY,
    id    integer GENERATED ALWAYS AS IDENTITY UNIQUE
);
"#;

/// Idempotent commands (a `commandId` or an `Idempotency-Key`): the
/// fingerprint their id is bound to, written with the command, and their
/// first answer once there is one. Rows may be pruned (by `at`): the log
/// still refuses the id twice and holds the command to compare against; only
/// the kept answer is gone, so a repeat is answered afresh.
const MIGRATION_4: &str = r#"
CREATE TABLE command_results (
    command_id   text PRIMARY KEY,
    fingerprint  text NOT NULL,
    result       jsonb,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX command_results_at ON command_results (at);
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

/// Generations of the read models (`host replay` while serving, see
/// [`crate::backend::postgres::rebuild`]): a collection's documents live
/// under its own name (generation 0) or under the physical name its row
/// here points to; every statement on `documents` resolves the name through
/// this table (as `lowshell_collection` does, for queries by hand) in the
/// statement's own snapshot, so a switch (one transaction updating the
/// rows) is seen at once by every reader and writer of every shell.
/// `switched_at` (the switch's clock just before it commits; since
/// migration 8 stamped on the consumer's checkpoint too, where the step's
/// advance reads it): a consumer step whose transaction began before it
/// decided on the previous generation, and is retried. `previous` is the generation kept after a switch
/// until `host replay --drop-previous`.
const MIGRATION_6: &str = r#"
CREATE TABLE read_models (
    collection     text PRIMARY KEY,
    function       text NOT NULL,
    generation     integer NOT NULL,
    physical       text NOT NULL,
    previous       text,
    switched_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX read_models_function ON read_models (function);
CREATE FUNCTION lowshell_collection(name text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce((SELECT physical FROM read_models WHERE collection = name), name) $$;
"#;

/// A database: its connection settings and a pool.
pub struct Database {
    config: tokio_postgres::Config,
    pool: Pool,
    read_pool: Pool,
    /// How this shell's sessions introduce themselves (`application_name`).
    name: String,
}

/// The second key of the shared advisory lock every running shell holds
/// on its listening connection (see [`live_shells`]); lease ids stay far below it.
pub const PRESENCE: i32 = i32::MAX;

/// `lowshell <host>/<pid>/<n>`: unique per shell (several may run in one
/// process, in tests), shown in `pg_stat_activity` and `host status`.
fn shell_name() -> String {
    static SHELLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let n = SHELLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("lowshell {host}/{}/{n}", std::process::id())
}

/// The `pg_locks` rows of this database: advisory locks are per database,
/// but `pg_locks` shows the whole cluster's, and shells of other projects
/// (other databases on the same server) must not count.
macro_rules! this_database {
    () => {
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    };
}

/// How many shells run on the database now: the sessions holding the
/// shared presence lock. At least one when called from a shell.
pub async fn live_shells(client: &Client) -> Result<usize, tokio_postgres::Error> {
    let row = client
        .query_one(
            concat!(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND database = ",
                this_database!(),
                " AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 2"
            ),
            &[&i64::from(LOCK_NAMESPACE), &i64::from(PRESENCE)],
        )
        .await?;
    Ok(usize::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

/// Every consumer lease (by consumer name) and the session holding it
/// (its `application_name`), if any.
pub async fn lease_holders(client: &Client) -> Result<Vec<(String, Option<String>)>, tokio_postgres::Error> {
    let rows = client
        .query(
            concat!(
                "SELECT l.name, a.application_name FROM leases l
                 LEFT JOIN pg_locks k ON k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
                      AND k.database = ",
                this_database!(),
                " AND k.classid::bigint = $1 AND k.objid::bigint = l.id
                 LEFT JOIN pg_stat_activity a ON a.pid = k.pid
                 ORDER BY l.name"
            ),
            &[&i64::from(LOCK_NAMESPACE)],
        )
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
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
        let name = shell_name();
        if config.get_application_name().is_none() {
            config.application_name(&name);
        }
        // No NOTICEs ("already exists, skipping") in the shell's log; and a
        // transaction of this shell left open (a stuck step) is ended by the
        // server instead of holding every consumer's horizon forever. The
        // URL's own options come after, so they win.
        let options = format!(
            "-c client_min_messages=warning -c idle_in_transaction_session_timeout={}",
            IDLE_IN_TRANSACTION.as_millis()
        );
        let options = match config.get_options() {
            Some(own) => format!("{options} {own}"),
            None => options,
        };
        config.options(&options);
        // A peer that vanished (a network partition, a killed host) is noticed
        // in about a minute, not after the kernel's two hours.
        config.keepalives(true).keepalives_idle(KEEPALIVE_IDLE).keepalives_interval(KEEPALIVE_INTERVAL);
        config.keepalives_retries(KEEPALIVE_RETRIES).tcp_user_timeout(TCP_USER_TIMEOUT);
        let pool = |size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig { recycling_method: RecyclingMethod::Fast },
            );
            Pool::builder(manager)
                .max_size(size)
                .wait_timeout(Some(CONNECT_TIMEOUT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                // The connection returned last is lent first: a few busy
                // backends stay warm rather than every one of them being
                // woken in turn (the rest idle until a burst needs them).
                .queue_mode(deadpool_postgres::QueueMode::Lifo)
                .build()
                .map_err(|e| anyhow::anyhow!("cannot create the connection pool: {e}"))
        };
        let (read_pool, pool) = (pool(READ_POOL_SIZE)?, pool(POOL_SIZE)?);
        let name = config.get_application_name().unwrap_or(&name).to_owned();
        let db = Self { config, pool, read_pool, name };
        db.migrate().await.map_err(|e| {
            anyhow::anyhow!("cannot prepare the database {} (is Postgres running?): {e:#}", redact(url))
        })?;
        Ok(db)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The read path's pool (see [`PgStore::for_reads`](super::PgStore::for_reads)).
    pub fn read_pool(&self) -> &Pool {
        &self.read_pool
    }

    /// A connection of its own, outside the pool (LISTEN, advisory locks).
    /// Its driver runs on a task; `on_message` sees its notifications.
    /// How this shell's sessions introduce themselves to the database.
    pub fn name(&self) -> &str {
        &self.name
    }

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

/// The id of the lease called `name` (a consumer's name), created on first
/// use: the second key of its advisory lock (see [`try_lease`]). Ids are
/// unique and never 0; a name keeps its id.
pub async fn lease_id(client: &Client, name: &str) -> Result<i32, tokio_postgres::Error> {
    const GET: &str = "SELECT id FROM leases WHERE name = $1";
    if let Some(row) = client.query_opt(GET, &[&name]).await? {
        return row.try_get(0);
    }
    // Read again after the insert (a separate statement): a lease created
    // concurrently by another session is visible to its snapshot only.
    client.execute("INSERT INTO leases (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", &[&name]).await?;
    client.query_one(GET, &[&name]).await?.try_get(0)
}

/// Takes the lease `id` (from [`lease_id`]) on `client`'s session if it is
/// free: a session advisory lock, released when the connection closes.
/// `false`: another session holds it.
pub async fn try_lease(client: &Client, id: i32) -> Result<bool, tokio_postgres::Error> {
    client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_NAMESPACE, &id]).await?.try_get(0)
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

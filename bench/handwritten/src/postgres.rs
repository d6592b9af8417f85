//! `--database-url`: Postgres through a pool of 16 connections (as the
//! shell's), prepared statements, and one transaction per invitation: claim
//! the email (`ON CONFLICT DO NOTHING`), append the event, write the customer.

use crate::store::{Customer, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use serde_json::json;
use std::time::Duration;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

/// As many connections as the shell's pool.
const POOL_SIZE: usize = 16;
/// How long a request waits for a connection, or a new connection for the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The service's own tables, in a schema of their own so that they never
/// meet the shell's. The advisory lock keeps two services starting at once
/// from racing on `CREATE … IF NOT EXISTS`.
const MIGRATE: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('handwritten-baseline'));
CREATE SCHEMA IF NOT EXISTS handwritten;
CREATE TABLE IF NOT EXISTS handwritten.invites (
    email text PRIMARY KEY,
    customer_id text NOT NULL
);
CREATE TABLE IF NOT EXISTS handwritten.customers (
    id text PRIMARY KEY,
    email text NOT NULL,
    invited boolean NOT NULL
);
CREATE TABLE IF NOT EXISTS handwritten.events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
COMMIT;
";

/// Claims the email; returns a row only if this transaction claimed it. A
/// concurrent claim of the same email waits for the other transaction, then
/// returns nothing if it committed.
const CLAIM: &str = "INSERT INTO handwritten.invites (email, customer_id) VALUES ($1, $2)
                     ON CONFLICT (email) DO NOTHING RETURNING customer_id";
const APPEND: &str = "INSERT INTO handwritten.events (id, kind, payload) VALUES ($1, $2, $3)";
const INSERT_CUSTOMER: &str = "INSERT INTO handwritten.customers (id, email, invited) VALUES ($1, $2, true)";
/// The customer who holds an email (committed with the claim, so visible
/// to the statement after a conflicting claim).
const HOLDER: &str = "SELECT c.id, c.email, c.invited FROM handwritten.invites i
                      JOIN handwritten.customers c ON c.id = i.customer_id WHERE i.email = $1";
const CUSTOMER: &str = "SELECT id, email, invited FROM handwritten.customers WHERE id = $1";

pub struct Postgres {
    pool: Pool,
}

impl Postgres {
    /// Connects and creates the tables if they are missing.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| anyhow::anyhow!("the database URL is not valid: {e}"))?;
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| anyhow::anyhow!("cannot create the connection pool: {e}"))?;
        let client = pool.get().await.map_err(|e| anyhow::anyhow!("cannot connect to the database: {e}"))?;
        client.batch_execute(MIGRATE).await.map_err(|e| anyhow::anyhow!("cannot create the tables: {e}"))?;
        drop(client);
        Ok(Self { pool })
    }

    pub async fn invite(&self, email: &str) -> Result<Customer, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(db_error)?;
        let claim = tx.prepare_cached(CLAIM).await.map_err(db_error)?;
        let append = tx.prepare_cached(APPEND).await.map_err(db_error)?;
        let (customer_id, event_id) = (new_id(), new_id());
        let customer = match tx.query_opt(&claim, &[&email, &customer_id]).await.map_err(db_error)? {
            Some(_) => {
                let insert = tx.prepare_cached(INSERT_CUSTOMER).await.map_err(db_error)?;
                let event = json!({ "customer-id": customer_id, "email": email });
                let (event_params, customer_params): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) =
                    (&[&event_id, &"CustomerInvited", &event], &[&customer_id, &email]);
                // Both in one round trip: tokio-postgres pipelines concurrent queries.
                tokio::try_join!(tx.execute(&append, event_params), tx.execute(&insert, customer_params))
                    .map_err(db_error)?;
                Customer::new_invited(customer_id, email.to_owned())
            }
            None => {
                let holder = tx.prepare_cached(HOLDER).await.map_err(db_error)?;
                let row = tx.query_opt(&holder, &[&email]).await.map_err(db_error)?.ok_or_else(|| {
                    StoreError::Internal(format!("{email} is claimed by an unknown customer"))
                })?;
                let customer = customer(&row)?;
                let event = json!({ "customer-id": customer.id.as_str(), "email": email, "reason": "already invited" });
                tx.execute(&append, &[&event_id, &"CustomerInviteFailed", &event]).await.map_err(db_error)?;
                customer
            }
        };
        tx.commit().await.map_err(db_error)?;
        Ok(customer)
    }

    pub async fn customer(&self, id: &str) -> Result<Option<Customer>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(CUSTOMER).await.map_err(db_error)?;
        let row = client.query_opt(&statement, &[&id]).await.map_err(db_error)?;
        row.as_ref().map(customer).transpose()
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn customer(row: &tokio_postgres::Row) -> Result<Customer, StoreError> {
    let column = |e: tokio_postgres::Error| StoreError::Internal(format!("reading a customer: {e}"));
    Ok(Customer {
        id: row.try_get::<_, String>(0).map_err(column)?.into(),
        email: row.try_get(1).map_err(column)?,
        invited: row.try_get(2).map_err(column)?,
    })
}

fn pool_error(e: PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A lost connection is worth retrying; an error the server reported is not.
fn db_error(e: tokio_postgres::Error) -> StoreError {
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Internal(e.to_string())
    }
}

//! The benchmarks' hand-written baseline: `InviteCustomer` as one would write
//! it without lowshell — axum, async-graphql and either a `HashMap` behind a
//! mutex (`--memory`) or Postgres (`--database-url`). It serves the same
//! GraphQL surface the shell derives for the example functions (the
//! `InviteCustomer` mutation and the `customer(id)` query) with the same
//! answers, so that `make bench` can load both alike.
//!
//! ```sh
//! handwritten-baseline --memory --listen 127.0.0.1:8090
//! handwritten-baseline --database-url postgres://localhost/bench --listen 127.0.0.1:8090
//! ```

mod memory;
mod postgres;
mod schema;
mod store;

use anyhow::Context as _;
use async_graphql_axum::GraphQL;
use axum::Router;
use axum::routing::get;
use clap::{ArgGroup, Parser};
use std::net::SocketAddr;
use store::Store;
use tracing_subscriber::EnvFilter;

/// Command-line options.
#[derive(Parser)]
#[command(about = "InviteCustomer written by hand: the benchmarks' baseline for the shell")]
#[command(group(ArgGroup::new("store").required(true).args(["memory", "database_url"])))]
struct Args {
    /// Keep customers, invites and events in this process (nothing is durable).
    #[arg(long)]
    memory: bool,
    /// Keep them in Postgres at this URL (tables in the schema `handwritten`, created on start).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Address to serve GraphQL on (`POST /`, `POST /graphql`) and `GET /healthz`.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let args = Args::parse();
    let store = match &args.database_url {
        Some(url) => Store::Postgres(postgres::Postgres::connect(url).await?),
        None => Store::Memory(memory::Memory::default()),
    };
    let schema = schema::build(store);
    // Listening only once the store is ready: `/healthz` answering means ready.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let app = Router::new()
        .route_service("/", GraphQL::new(schema.clone()))
        .route_service("/graphql", GraphQL::new(schema))
        .route("/healthz", get(|| async { "ok" }));
    tracing::info!("serving GraphQL on http://{}/", args.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            // Without a signal handler we would just be killed, which is fine too.
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!("cannot wait for Ctrl-C: {e}");
                std::future::pending::<()>().await;
            }
        })
        .await
        .context("serving HTTP")
}

//! GraphQL over HTTP. The schema is derived from the functions' metadata
//! ([`schema::build`]) and rebuilt, then swapped in, whenever the registry
//! changes; requests in flight keep the schema they started with.

mod http;
pub mod schema;

pub use http::{AllowedOrigins, GRAPHIQL_VERSION, HttpOptions, WS_PATH, router};
pub use schema::{Backend, QueryLimits};

use crate::registry::Registry;
use arc_swap::ArcSwap;
use async_graphql::dynamic::Schema;
use std::sync::Arc;

pub struct Graphql {
    schema: ArcSwap<Schema>,
}

impl Graphql {
    /// Builds the schema for the current functions and keeps it current.
    pub fn start(
        registry: Arc<Registry>,
        backend: Backend,
        limits: QueryLimits,
    ) -> anyhow::Result<Arc<Self>> {
        let schema = schema::build(&registry.current(), &backend, limits).map_err(|e| {
            anyhow::anyhow!("cannot build the GraphQL schema from the functions' metadata: {e}")
        })?;
        let graphql = Arc::new(Self { schema: ArcSwap::from_pointee(schema) });
        let mut changes = registry.watch();
        let weak = Arc::downgrade(&graphql);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(graphql) = weak.upgrade() else { break };
                match schema::build(&registry.current(), &backend, limits) {
                    Ok(schema) => {
                        graphql.schema.store(Arc::new(schema));
                        tracing::info!("GraphQL schema rebuilt");
                    }
                    Err(e) => tracing::error!("keeping the previous GraphQL schema: {e}"),
                }
            }
        });
        Ok(graphql)
    }

    pub fn schema(&self) -> Arc<Schema> {
        self.schema.load_full()
    }

    /// The schema in SDL, for `host schema` and docs.
    pub fn sdl(&self) -> String {
        self.schema.load().sdl()
    }
}

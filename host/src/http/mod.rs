//! The shell's HTTP surface, one module per concern:
//!
//! - [`graphql`]: GraphQL over HTTP and WebSocket (`/`, `/graphql`, `/ws`);
//! - [`origins`]: which browser pages may use it (origin check, CORS);
//! - [`health`]: `/healthz` and `/readyz`;
//! - `/metrics` (Prometheus), here;
//! - the admin API ([`crate::deploy::admin`]) is merged in by the shell.

mod assets;
pub mod auth;
pub mod graphql;
pub mod health;
pub mod origins;

pub use auth::{Auth, Caller};
pub use graphql::{GRAPHIQL_VERSION, WS_PATH};
pub use health::Readiness;
pub use origins::AllowedOrigins;

use crate::graphql::Graphql;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Duration;

/// HTTP limits.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Longest a GraphQL request may take; then 408.
    pub request_timeout: Duration,
    /// Browser origins allowed besides the shell's own.
    pub allowed_origins: AllowedOrigins,
    /// Who may call (`[http.auth]`).
    pub auth: Arc<Auth>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(15),
            allowed_origins: AllowedOrigins::loopback(),
            auth: Arc::new(Auth::none()),
        }
    }
}

/// Every public route: GraphQL, health and metrics.
pub fn router(graphql: Arc<Graphql>, readiness: Readiness, options: HttpOptions) -> Router {
    Router::new()
        .merge(graphql::routes(graphql, options))
        .merge(health::routes(readiness))
        .route("/metrics", get(metrics))
}

/// `GET /metrics`: Prometheus text.
async fn metrics() -> Response {
    match crate::metrics::render() {
        Some(text) => {
            let mut response = text.into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics are disabled in this process\n").into_response(),
    }
}

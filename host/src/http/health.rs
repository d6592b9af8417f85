//! `/healthz` (the process is up) and `/readyz` (ready to serve): named
//! asynchronous checks the shell registers (functions loaded, bus reachable,
//! store reachable, …). A backend plugs in through
//! [`Bus::ready`](crate::backend::Bus::ready) and
//! [`Store::ready`](crate::backend::Store::ready), or the shell adds a check.
//!
//! *Notes* are details worth an operator's eye that do not make the shell
//! unready (events parked, a consumer stopped at a failing event): `/readyz`
//! stays 200 and names them after `ready`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// One check: `Ok` when ready, else the reason.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// One note: `Some(detail)` when there is something to say.
pub type Note = Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, Check)>,
    notes: Vec<(String, Note)>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a named check.
    pub fn check<F, Fut>(mut self, name: &str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((name.to_owned(), Arc::new(move || Box::pin(check()))));
        self
    }

    /// Adds a named note: a detail shown by `/readyz` that does not make
    /// the shell unready.
    pub fn note<F, Fut>(mut self, name: &str, note: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<String>> + Send + 'static,
    {
        self.notes.push((name.to_owned(), Arc::new(move || Box::pin(note()))));
        self
    }

    /// Runs every note (concurrently); those that have something to say, as
    /// `name: detail`. A note that does not answer in time says nothing.
    pub async fn notes(&self) -> Vec<String> {
        let results = futures::future::join_all(self.notes.iter().map(|(name, note)| async move {
            match tokio::time::timeout(CHECK_TIMEOUT, note()).await {
                Ok(Some(detail)) => Some(format!("{name}: {detail}")),
                _ => None,
            }
        }))
        .await;
        results.into_iter().flatten().collect()
    }

    /// Runs every check (concurrently); the failures, as `name: reason`.
    pub async fn run(&self) -> Result<(), Vec<String>> {
        let results = futures::future::join_all(self.checks.iter().map(|(name, check)| async move {
            match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => None,
                Ok(Err(reason)) => Some(format!("{name}: {reason}")),
                Err(_) => Some(format!("{name}: no answer within {CHECK_TIMEOUT:?}")),
            }
        }))
        .await;
        let failed: Vec<String> = results.into_iter().flatten().collect();
        if failed.is_empty() { Ok(()) } else { Err(failed) }
    }
}

/// `GET /healthz` and `GET /readyz`.
pub fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// 200 `ready` (then any notes: parked events, stopped consumers), or 503 with every failing check.
async fn readyz(State(readiness): State<Readiness>) -> Response {
    match readiness.run().await {
        Ok(()) => {
            // Worth an operator's eye, but no reason to stop sending traffic.
            let notes = readiness.notes().await;
            let body = notes.iter().fold(String::from("ready"), |body, note| body + "; " + note);
            (StatusCode::OK, body + "\n").into_response()
        }
        Err(failed) => {
            tracing::debug!(?failed, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", failed.join("; "))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_are_named() {
        let ready = Readiness::new()
            .check("bus", || async { Ok(()) })
            .check("store", || async { Err("connection refused".to_owned()) });
        assert_eq!(ready.run().await, Err(vec!["store: connection refused".to_owned()]));
        assert_eq!(Readiness::new().run().await, Ok(()));
    }

    #[tokio::test]
    async fn notes_are_named_and_do_not_fail_readiness() {
        let ready = Readiness::new()
            .check("store", || async { Ok(()) })
            .note("parked", || async { Some("customer-projector 2".to_owned()) })
            .note("stopped", || async { None });
        assert_eq!(ready.run().await, Ok(()));
        assert_eq!(ready.notes().await, vec!["parked: customer-projector 2".to_owned()]);
    }
}

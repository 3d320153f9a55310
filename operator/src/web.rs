//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive and its runtime loop runs) and `/readyz` (connected to the API server; standby replicas
//! waiting for the Lease are ready too, so rolling updates of the Deployment proceed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// State behind the endpoints.
pub struct WebState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Set once the API server answered.
    pub ready: AtomicBool,
}

async fn metrics(State(s): State<Arc<WebState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<Arc<WebState>>) -> (StatusCode, &'static str) {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: API server not reached yet",
        )
    }
}

/// The router.
pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<WebState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

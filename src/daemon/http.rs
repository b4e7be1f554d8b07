//! The health and metrics endpoints: `/metrics` (Prometheus text), `/healthz` (the process
//! lives), `/readyz` (see [`super::state::readiness`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;

use super::shared::Shared;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

async fn metrics_handler(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(Utc::now()),
    )
        .into_response()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let body = serde_json::json!({
        "status": "alive",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": shared.started_at.to_rfc3339(),
        "uptime_seconds": (Utc::now() - shared.started_at).num_seconds(),
    });
    axum::Json(body).into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let readiness = shared.readiness().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness.body)).into_response()
}

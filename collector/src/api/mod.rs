//! The collector's HTTP endpoint: metrics, its own liveness/readiness, and what attached.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{export::Metrics, probes::AttachReport};

/// OpenMetrics 1.0 text, what prometheus-client renders.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub probes: Arc<Vec<AttachReport>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        // The router only exists once every ladder has been walked: being able to answer
        // means the collector is ready.
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/v1/probes", get(probes))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        s.metrics.render(),
    )
        .into_response()
}

async fn probes(State(s): State<ApiState>) -> Json<Vec<AttachReport>> {
    Json(s.probes.as_ref().clone())
}

async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "not found", "path": uri.path() })),
    )
        .into_response()
}

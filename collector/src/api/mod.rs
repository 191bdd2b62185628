//! The collector's HTTP endpoint: metrics, its own liveness/readiness, and what attached.

use std::sync::{Arc, Mutex};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{
    export::Metrics,
    probes::{AttachReport, go_http::attach::Instrumented},
};

/// OpenMetrics 1.0 text, what prometheus-client renders.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub probes: Arc<Vec<AttachReport>>,
    /// Go executables with net/http uprobes, published by Go discovery.
    pub go_http: Arc<Mutex<Vec<Instrumented>>>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        // The router only exists once every ladder has been walked: being able to answer
        // means the collector is ready.
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/v1/probes", get(probes))
        .route("/v1/go-http", get(go_http))
        .fallback(not_found)
        .with_state(state)
}

/// Prometheus text 0.0.4, for clients that do not ask for OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Content negotiation: OpenMetrics when the client accepts it (Prometheus does), else the
/// classic text format (curl, older scrapers).
async fn metrics(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(accepts_openmetrics);
    if wants_openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            s.metrics.render(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
            s.metrics.render_text(),
        )
            .into_response()
    }
}

/// True when an Accept header lists application/openmetrics-text with a non-zero quality.
fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let q_zero = parts.any(|p| {
            matches!(
                p.replace(' ', "").as_str(),
                "q=0" | "q=0.0" | "q=0.00" | "q=0.000"
            )
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
    })
}

async fn probes(State(s): State<ApiState>) -> Json<Vec<AttachReport>> {
    Json(s.probes.as_ref().clone())
}

async fn go_http(State(s): State<ApiState>) -> Json<Vec<Instrumented>> {
    Json(s.go_http.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "not found", "path": uri.path() })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::accepts_openmetrics;

    #[test]
    fn accept_header_negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(accepts_openmetrics(prometheus));
        assert!(!accepts_openmetrics("*/*"));
        assert!(!accepts_openmetrics("text/plain;version=0.0.4"));
        assert!(!accepts_openmetrics("application/openmetrics-text; q=0"));
    }
}

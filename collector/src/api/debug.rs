//! Debugging a node while the collector runs: `/v1/debug/kernel-log`, the kernel-side
//! diagnostics level (`events::kernel_log`).
//!
//! `GET` answers `{"level": "off"}`; `PUT ?level=debug` sets it and answers
//! `{"level": "debug", "previous": "off"}`. Like every `/v1/*` path it needs the bearer token
//! when one is configured. Kept out of the documented read-only API (`ROUTES`,
//! docs/openapi.json): it changes the node's state and is for operators, not dashboards.

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::events::kernel_log::{KernelLogLevel, KernelLogSwitch};

pub const KERNEL_LOG_PATH: &str = "/v1/debug/kernel-log";

pub fn router(switch: KernelLogSwitch) -> Router {
    Router::new()
        .route(KERNEL_LOG_PATH, get(current).put(set))
        .with_state(switch)
}

async fn current(State(switch): State<KernelLogSwitch>) -> Response {
    match switch.get() {
        Ok(level) => Json(json!({ "level": level.as_str() })).into_response(),
        Err(e) => map_error(&e),
    }
}

#[derive(Deserialize)]
struct SetLevel {
    level: Option<String>,
}

async fn set(State(switch): State<KernelLogSwitch>, Query(q): Query<SetLevel>) -> Response {
    let Some(raw) = q.level else {
        return bad_request("missing ?level=off|error|warn|info|debug|trace".to_owned());
    };
    let level: KernelLogLevel = match raw.parse() {
        Ok(l) => l,
        Err(e) => return bad_request(format!("{e}")),
    };
    match switch.set(level) {
        Ok(previous) => {
            info!(%level, %previous, "kernel log level changed through the API");
            Json(json!({ "level": level.as_str(), "previous": previous.as_str() })).into_response()
        }
        Err(e) => map_error(&e),
    }
}

fn bad_request(error: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

fn map_error(e: &crate::events::kernel_log::KernelLogError) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

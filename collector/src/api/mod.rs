//! The collector's HTTP endpoint: metrics, its own liveness/readiness, what attached, and the
//! health verdicts per workload and pod (documented in docs/openapi.json, checked by
//! collector/tests/openapi.rs). How it is served (token, TLS, limits): `server`.

pub mod debug;
pub mod kube_auth;
pub mod server;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{
    export::Metrics,
    kubernetes::Kubernetes,
    probes::{AttachReport, go_http::listing::GoServer},
    verdict::{SharedVerdicts, WorkloadHealth, rules::State as Verdict},
};

/// OpenMetrics 1.0 text, what prometheus-client renders.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub probes: Arc<Vec<AttachReport>>,
    /// Go executables found running, instrumented or not, published by Go discovery.
    pub go_http: Arc<Mutex<Vec<GoServer>>>,
    /// Verdicts as of the last evaluation, published by the aggregator.
    pub verdicts: SharedVerdicts,
    /// States for which readiness endpoints answer 503.
    pub readiness_fail_on: Arc<Vec<Verdict>>,
    /// Pod names from the Kubernetes API; None without `--node-name`.
    pub kubernetes: Option<Arc<Kubernetes>>,
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
        .route("/v1/workloads", get(workloads))
        .route("/v1/workload", get(workload))
        .route("/v1/workload/ready", get(workload_ready))
        .route("/v1/pods/{uid}/health", get(pod_health))
        .route("/v1/pods/{uid}/ready", get(pod_ready))
        .route("/v1/pods/{namespace}/{name}/health", get(named_pod_health))
        .route("/v1/pods/{namespace}/{name}/ready", get(named_pod_ready))
        .route("/v1/services/{namespace}/{name}", get(service_health))
        .route("/v1/kubernetes", get(kubernetes_status))
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

async fn go_http(State(s): State<ApiState>) -> Json<Vec<GoServer>> {
    Json(s.go_http.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Every route the router serves (method GET), for the OpenAPI check.
pub const ROUTES: [&str; 14] = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/v1/probes",
    "/v1/go-http",
    "/v1/workloads",
    "/v1/workload",
    "/v1/workload/ready",
    "/v1/pods/{uid}/health",
    "/v1/pods/{uid}/ready",
    "/v1/pods/{namespace}/{name}/health",
    "/v1/pods/{namespace}/{name}/ready",
    "/v1/services/{namespace}/{name}",
    "/v1/kubernetes",
];

/// Workload kinds as they appear in labels and the API.
const KINDS: [&str; 8] = [
    "pod",
    "container",
    "systemd",
    "cgroup",
    "process",
    "process_comm",
    "unattributed",
    "overflow",
];

/// A 4xx answer with a JSON body `{"error": "..."}`.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, message)
}

/// Query parameters, with unknown ones refused.
fn params(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad_request(format!(
            "unknown query parameter {k:?} (expected: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn snapshot(s: &ApiState) -> Vec<WorkloadHealth> {
    s.verdicts
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .workloads
        .clone()
}

/// `GET /v1/workloads[?state=S][&kind=K]`
async fn workloads(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = params(&q, &["state", "kind"]) {
        return r.into_response();
    }
    let state = match q.get("state").map(|v| v.parse::<Verdict>()) {
        Some(Err(e)) => return bad_request(format!("state: {e}")).into_response(),
        Some(Ok(st)) => Some(st),
        None => None,
    };
    if let Some(k) = q.get("kind")
        && !KINDS.contains(&k.as_str())
    {
        return bad_request(format!("kind: {k:?} is not one of {}", KINDS.join(", ")))
            .into_response();
    }
    let list: Vec<WorkloadHealth> = snapshot(&s)
        .into_iter()
        .filter(|w| state.is_none_or(|st| w.state == st))
        .filter(|w| q.get("kind").is_none_or(|k| w.kind == k))
        .collect();
    Json(json!({ "workloads": list })).into_response()
}

/// The workload named by `?kind=..&name=..` (names may contain '/', hence a query).
fn find_workload(s: &ApiState, q: &HashMap<String, String>) -> Result<WorkloadHealth, ApiError> {
    params(q, &["kind", "name"])?;
    let (Some(kind), Some(name)) = (q.get("kind"), q.get("name")) else {
        return Err(bad_request("kind and name are required"));
    };
    if !KINDS.contains(&kind.as_str()) {
        return Err(bad_request(format!(
            "kind: {kind:?} is not one of {}",
            KINDS.join(", ")
        )));
    }
    if name.is_empty() || name.len() > 4096 {
        return Err(bad_request("name: must be 1 to 4096 bytes"));
    }
    snapshot(s)
        .into_iter()
        .find(|w| w.kind == kind && w.name == *name)
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no workload {kind}/{name} in the last evaluation"),
            )
        })
}

async fn workload(State(s): State<ApiState>, Query(q): Query<HashMap<String, String>>) -> Response {
    match find_workload(&s, &q) {
        Ok(w) => Json(w).into_response(),
        Err(r) => r.into_response(),
    }
}

fn readiness(s: &ApiState, state: Verdict) -> Response {
    let ready = !s.readiness_fail_on.contains(&state);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({ "ready": ready, "state": state, "fail_on": s.readiness_fail_on.as_ref() })),
    )
        .into_response()
}

async fn workload_ready(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match find_workload(&s, &q) {
        Ok(w) => readiness(&s, w.state),
        Err(r) => r.into_response(),
    }
}

/// A pod UID as kubelet writes it (36-char UUID) or as cgroup drivers spell it ('_' for '-').
fn valid_uid(uid: &str) -> bool {
    (1..=64).contains(&uid.len())
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A pod's state: the worst of its workloads (containers); unknown when none is known.
fn pod_state(workloads: &[WorkloadHealth]) -> Verdict {
    for st in [Verdict::Unhealthy, Verdict::Degraded, Verdict::Healthy] {
        if workloads.iter().any(|w| w.state == st) {
            return st;
        }
    }
    Verdict::Unknown
}

fn pod_workloads(s: &ApiState, uid: &str) -> Result<Vec<WorkloadHealth>, ApiError> {
    if !valid_uid(uid) {
        return Err(bad_request(format!("{uid:?} is not a pod UID")));
    }
    let norm = uid.replace('_', "-");
    Ok(snapshot(s)
        .into_iter()
        .filter(|w| !w.pod_uid.is_empty() && w.pod_uid.replace('_', "-") == norm)
        .collect())
}

/// `GET /v1/pods/{uid}/health`: a pod never seen (no traffic) is unknown, not an error.
async fn pod_health(State(s): State<ApiState>, Path(uid): Path<String>) -> Response {
    match pod_workloads(&s, &uid) {
        Ok(list) => Json(json!({ "pod_uid": uid, "state": pod_state(&list), "workloads": list }))
            .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn pod_ready(State(s): State<ApiState>, Path(uid): Path<String>) -> Response {
    match pod_workloads(&s, &uid) {
        Ok(list) => readiness(&s, pod_state(&list)),
        Err(r) => r.into_response(),
    }
}

/// Names as the API server accepts them (DNS labels and subdomains): anything else cannot
/// name a pod or Service, and is not echoed into logs or lookups.
fn valid_name(v: &str, max: usize) -> bool {
    (1..=max).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The UID of pod `namespace/name` on this node, from the Kubernetes API's view. 404 when the
/// API server never told us about it (or this collector has no Kubernetes API).
fn named_pod_uid(s: &ApiState, namespace: &str, name: &str) -> Result<String, ApiError> {
    let valid = valid_name;
    if !valid(namespace, 63) || !valid(name, 253) {
        return Err(bad_request(format!(
            "{namespace:?}/{name:?} is not a pod's namespace/name"
        )));
    }
    let Some(k) = &s.kubernetes else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "pods are known by name only with --node-name (Kubernetes API)",
        ));
    };
    k.uid_by_name(namespace, name).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("no pod {namespace}/{name} on node {}", k.node()),
        )
    })
}

/// `GET /v1/pods/{namespace}/{name}/health`: as the UID form, for a pod named by the API.
async fn named_pod_health(
    State(s): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let uid = match named_pod_uid(&s, &namespace, &name) {
        Ok(uid) => uid,
        Err(r) => return r.into_response(),
    };
    match pod_workloads(&s, &uid) {
        Ok(list) => Json(json!({
            "namespace": namespace,
            "name": name,
            "pod_uid": uid,
            "state": pod_state(&list),
            "workloads": list,
        }))
        .into_response(),
        Err(r) => r.into_response(),
    }
}

async fn named_pod_ready(
    State(s): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match named_pod_uid(&s, &namespace, &name).and_then(|uid| pod_workloads(&s, &uid)) {
        Ok(list) => readiness(&s, pod_state(&list)),
        Err(r) => r.into_response(),
    }
}

/// `GET /v1/services/{namespace}/{name}`: the pods on this node behind that Service (from its
/// EndpointSlices), each with its verdict, and the Service's state on this node (the worst of
/// them; unknown when it has none here). 404 when no EndpointSlice of the Service is known.
async fn service_health(
    State(s): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    // Service names are DNS labels (63).
    if !valid_name(&namespace, 63) || !valid_name(&name, 63) {
        return bad_request(format!(
            "{namespace:?}/{name:?} is not a Service's namespace/name"
        ))
        .into_response();
    }
    let Some(k) = &s.kubernetes else {
        return error(
            StatusCode::NOT_FOUND,
            "Services are known only with --node-name (Kubernetes API)",
        )
        .into_response();
    };
    let Some(pods) = k.service_pods(&namespace, &name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no Service {namespace}/{name} with endpoints known to the collector on node {} \
                 (no EndpointSlice of it with an endpoint)",
                k.node()
            ),
        )
        .into_response();
    };
    let all = snapshot(&s);
    let norm = |u: &str| u.replace('_', "-");
    let mut states = Vec::new();
    let pods: Vec<serde_json::Value> = pods
        .into_iter()
        .map(|(uid, pod_namespace, pod_name)| {
            let list: Vec<WorkloadHealth> = all
                .iter()
                .filter(|w| !w.pod_uid.is_empty() && norm(&w.pod_uid) == uid)
                .cloned()
                .collect();
            let state = pod_state(&list);
            states.push(state);
            json!({
                "namespace": pod_namespace,
                "name": pod_name,
                "pod_uid": uid,
                "state": state,
                "workloads": list,
            })
        })
        .collect();
    // The worst pod's state, as a pod's is the worst of its containers'.
    let state = [Verdict::Unhealthy, Verdict::Degraded, Verdict::Healthy]
        .into_iter()
        .find(|st| states.contains(st))
        .unwrap_or(Verdict::Unknown);
    Json(json!({
        "namespace": namespace,
        "name": name,
        "node": k.node(),
        "state": state,
        "pods": pods,
    }))
    .into_response()
}

/// `GET /v1/kubernetes`: whether the pod watch is established, and how much it knows.
async fn kubernetes_status(State(s): State<ApiState>) -> Json<crate::kubernetes::Status> {
    Json(
        s.kubernetes
            .as_ref()
            .map_or_else(crate::kubernetes::Status::disabled, |k| k.status()),
    )
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

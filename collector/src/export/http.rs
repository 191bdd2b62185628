//! HTTP server metric families. The duration histogram follows the OpenTelemetry semantic
//! convention `http.server.request.duration` (seconds, the convention's bucket boundaries).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::prometheus::WorkloadLabels;

/// `http.server.request.duration` boundaries from the OpenTelemetry semantic conventions.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    pub method: String,
    pub route: String,
    /// Empty when no status was sent (panic, aborted, unobserved protocol).
    pub status_code: String,
    /// "", "panic", "aborted" or "unobserved_protocol".
    pub error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    /// 1xx … 5xx, panic, aborted, unobserved_protocol.
    pub outcome: &'static str,
}

pub struct HttpMetrics {
    pub duration: Family<RequestLabels, Histogram>,
    pub probe_requests: Family<RequestLabels, Counter>,
    pub requests: Family<OutcomeLabels, Counter>,
    pub unrecorded: Family<WorkloadLabels, Counter>,
    pub routes_capped: Family<WorkloadLabels, Counter>,
}

impl HttpMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            probe_requests: Family::default(),
            requests: Family::default(),
            unrecorded: Family::default(),
            routes_capped: Family::default(),
        };
        r.register_with_unit(
            "http_server_request_duration",
            "Duration of Go net/http server requests (probe paths excluded), by method, route, status code and error type",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "http_server_probe_requests",
            "Requests to the configured probe paths (e.g. /healthz), kept apart from real traffic",
            m.probe_requests.clone(),
        );
        r.register(
            "collector_http_requests",
            "Go net/http requests counted in the kernel (exact, never sampled), by outcome",
            m.requests.clone(),
        );
        r.register(
            "collector_http_requests_unrecorded",
            "Requests counted but without a per-request record (sampled out or ring buffer full)",
            m.unrecorded.clone(),
        );
        r.register(
            "collector_http_routes_capped",
            "Requests charged to route=\"__overflow__\" because the workload reached its route limit",
            m.routes_capped.clone(),
        );
        m
    }
}

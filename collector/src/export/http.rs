//! HTTP server metric families. The duration histogram follows the OpenTelemetry semantic
//! convention `http.server.request.duration` (seconds, the convention's bucket boundaries).

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, OnceLock},
};

use opentelemetry::KeyValue;
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

/// The request methods the OpenTelemetry HTTP semantic conventions call "known"; anything else
/// is reported as `_OTHER`.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The method label of a request: the method itself when it is one of [`KNOWN_METHODS`]
/// (compared exactly: method names are case-sensitive), else `_OTHER`. The method comes from the
/// client, so taking it raw would let any client mint a series per distinct string.
pub fn normalize_method(raw: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == raw)
        .copied()
        .unwrap_or("_OTHER")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    /// Always from [`normalize_method`]: a bounded set, enforced by the type.
    pub method: &'static str,
    /// The path template (OTel `http.route`): never carries the method
    /// (`aggregate::http::pattern_route`).
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

/// Values of the `outcome` label of `collector_http_requests_total`.
pub const OUTCOMES: [&str; 8] = [
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "panic",
    "aborted",
    "unobserved_protocol",
];

pub struct HttpMetrics {
    /// Request label sets created per workload: Family cannot be scanned for a workload's
    /// series, and a forgotten workload must leave none behind. Bounded like the series (routes
    /// per workload are capped, methods and statuses are bounded sets).
    created: Mutex<HashMap<WorkloadLabels, HashSet<RequestLabels>>>,
    /// `http.server.request.duration` for the OTLP push, when enabled.
    pub otel_duration: OnceLock<opentelemetry::metrics::Histogram<f64>>,
    pub duration: Family<RequestLabels, Histogram>,
    pub probe_requests: Family<RequestLabels, Counter>,
    pub requests: Family<OutcomeLabels, Counter>,
    pub unrecorded: Family<WorkloadLabels, Counter>,
    pub lost: Family<WorkloadLabels, Counter>,
    pub routes_capped: Family<WorkloadLabels, Counter>,
}

impl HttpMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            created: Mutex::new(HashMap::new()),
            otel_duration: OnceLock::new(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            probe_requests: Family::default(),
            requests: Family::default(),
            unrecorded: Family::default(),
            lost: Family::default(),
            routes_capped: Family::default(),
        };
        r.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP server requests (probe paths excluded), by method, route (the path template without the method: with the Go uprobes the router's template (gin, echo, chi, gorilla/mux) or the Go mux pattern's path, else the normalised path, as the socket parser gives for any HTTP/1.x server, fasthttp and fiber included), status code and error type",
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
            "HTTP server requests counted in the kernel (exact, never sampled), by outcome",
            m.requests.clone(),
        );
        r.register(
            "collector_http_requests_unrecorded",
            "Requests counted but without a per-request record (sampled out or ring buffer full)",
            m.unrecorded.clone(),
        );
        r.register(
            "collector_http_requests_lost",
            "Requests or responses the socket-level parser could not follow on this workload's connections (a gap in the byte stream); its verdict is unknown while they are in the window",
            m.lost.clone(),
        );
        r.register(
            "collector_http_routes_capped",
            "Requests charged to route=\"__overflow__\" because the workload reached its route limit",
            m.routes_capped.clone(),
        );
        m
    }
}

/// One request series, resolved once: the Prometheus series it adds to and its OTLP
/// attributes. The aggregator keeps these per distinct record (`aggregate::RecordMemo`) so a
/// record costs an observation, not a label-set lookup: hashing and comparing the label set's
/// strings was two thirds of the collector's CPU per record (perf, 15k records/s).
#[derive(Clone)]
pub struct RequestSeries {
    metric: SeriesMetric,
    /// The OTLP attributes, built once; None when the OTLP push is off.
    otel: Option<Vec<KeyValue>>,
}

#[derive(Clone)]
enum SeriesMetric {
    Duration(Histogram),
    Probe(Counter),
}

impl HttpMetrics {
    /// One request: the duration histogram (and its OTLP twin), or the probe counter.
    pub fn record(&self, labels: &RequestLabels, seconds: f64, probe: bool) {
        self.observe(&self.series(labels, probe), seconds);
    }

    /// The series of `labels`, created (and remembered under its workload, so `forget` can
    /// remove it) when new. A handle outlives nothing: `forget` removes the series from the
    /// family, so holders must drop their handles before a workload can be forgotten (the
    /// aggregator drops its memo at every harvest, where forgetting happens).
    pub fn series(&self, labels: &RequestLabels, probe: bool) -> RequestSeries {
        let otel = self.otel_duration.get().map(|_| otel_attributes(labels));
        let existing = if probe {
            self.probe_requests
                .get(labels)
                .map(|c| SeriesMetric::Probe(c.clone()))
        } else {
            self.duration
                .get(labels)
                .map(|h| SeriesMetric::Duration(h.clone()))
        };
        if let Some(metric) = existing {
            return RequestSeries { metric, otel };
        }
        {
            let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
            match created.get_mut(&labels.workload) {
                Some(set) => {
                    set.insert(labels.clone());
                }
                None => {
                    created.insert(labels.workload.clone(), HashSet::from([labels.clone()]));
                }
            }
        }
        let metric = if probe {
            SeriesMetric::Probe(self.probe_requests.get_or_create(labels).clone())
        } else {
            SeriesMetric::Duration(self.duration.get_or_create(labels).clone())
        };
        RequestSeries { metric, otel }
    }

    /// One request of `series`.
    pub fn observe(&self, series: &RequestSeries, seconds: f64) {
        match &series.metric {
            SeriesMetric::Probe(c) => {
                c.inc();
            }
            SeriesMetric::Duration(h) => {
                h.observe(seconds);
                if let (Some(h), Some(attrs)) = (self.otel_duration.get(), &series.otel) {
                    h.record(seconds, attrs);
                }
            }
        }
    }
}

impl HttpMetrics {
    /// Removes every HTTP series of a forgotten workload.
    pub fn forget(&self, w: &WorkloadLabels) {
        let created = self
            .created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(w)
            .unwrap_or_default();
        for labels in &created {
            self.duration.remove(labels);
            self.probe_requests.remove(labels);
        }
        for outcome in OUTCOMES {
            self.requests.remove(&OutcomeLabels {
                workload: w.clone(),
                outcome,
            });
        }
        self.unrecorded.remove(w);
        self.routes_capped.remove(w);
        self.lost.remove(w);
    }
}

/// OpenTelemetry semantic-convention attributes of a request.
pub fn otel_attributes(l: &RequestLabels) -> Vec<KeyValue> {
    let w = &l.workload;
    let mut attrs = vec![
        KeyValue::new("http.request.method", l.method),
        KeyValue::new("http.route", l.route.clone()),
    ];
    if let Ok(code) = l.status_code.parse::<i64>() {
        attrs.push(KeyValue::new("http.response.status_code", code));
    }
    if !l.error_type.is_empty() {
        attrs.push(KeyValue::new("error.type", l.error_type));
    }
    // The workload's identity: lifted onto its own OTLP resource by the exporter.
    attrs.extend(super::otlp::resource_attributes(w));
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: the `method` label taken raw from the request, so a client sending arbitrary
    /// methods mints unbounded series.
    #[test]
    fn methods_are_normalised_to_the_known_set() {
        let cases = [
            ("GET", "GET"),
            ("HEAD", "HEAD"),
            ("POST", "POST"),
            ("PUT", "PUT"),
            ("DELETE", "DELETE"),
            ("CONNECT", "CONNECT"),
            ("OPTIONS", "OPTIONS"),
            ("TRACE", "TRACE"),
            ("PATCH", "PATCH"),
            // Method names are case-sensitive (RFC 9110 §9.1), as the convention says.
            ("get", "_OTHER"),
            ("PROPFIND", "_OTHER"),
            ("", "_OTHER"),
            ("GET ", "_OTHER"),
            ("G\u{0}ET", "_OTHER"),
            ("ÄÖÜ", "_OTHER"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_method(raw), want, "method {raw:?}");
        }
        let long = "X".repeat(1 << 16);
        assert_eq!(normalize_method(&long), "_OTHER");
    }
}

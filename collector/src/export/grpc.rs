//! gRPC server metric families (grpc-go uprobes, `probes::go_grpc`). Names follow the
//! OpenTelemetry RPC semantic conventions: `rpc.server.duration` (here in seconds, the unit
//! Prometheus wants) with `rpc.system="grpc"`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`. Counts come from the kernel's exact counters; durations from the
//! (possibly sampled) per-RPC records.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, OnceLock},
};

use opentelemetry::KeyValue;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::{
    http::DURATION_BUCKETS,
    prometheus::{ReasonLabels, WorkloadLabels},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    /// Always "grpc".
    pub rpc_system: &'static str,
    /// `pkg.Service` of the full method; `_OTHER` past the method cap or when unparsable.
    pub rpc_service: String,
    /// `Method`; `_OTHER` as above.
    pub rpc_method: String,
    /// The status code the server wrote, as a number (OTel `rpc.grpc.status_code`).
    pub rpc_grpc_status_code: u16,
}

pub struct GrpcMetrics {
    /// Series created per workload, so a forgotten workload leaves none behind.
    created: Mutex<HashMap<WorkloadLabels, HashSet<RpcLabels>>>,
    /// `rpc.server.duration` (ms) for the OTLP push, when enabled.
    pub otel_duration: OnceLock<opentelemetry::metrics::Histogram<f64>>,
    pub duration: Family<RpcLabels, Histogram>,
    pub requests: Family<RpcLabels, Counter>,
    pub probe_requests: Family<RpcLabels, Counter>,
    pub unrecorded: Family<WorkloadLabels, Counter>,
    pub no_start: Family<WorkloadLabels, Counter>,
    pub methods_capped: Family<WorkloadLabels, Counter>,
    pub binaries_instrumented: Gauge,
    pub binaries_skipped: Family<ReasonLabels, Counter>,
}

/// One call series resolved once (`GrpcMetrics::series`).
#[derive(Clone)]
pub struct RpcSeries {
    duration: Histogram,
    otel: Option<Vec<KeyValue>>,
}

impl GrpcMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            created: Mutex::new(HashMap::new()),
            otel_duration: OnceLock::new(),
            duration: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            requests: Family::default(),
            probe_requests: Family::default(),
            unrecorded: Family::default(),
            no_start: Family::default(),
            methods_capped: Family::default(),
            binaries_instrumented: Gauge::default(),
            binaries_skipped: Family::default(),
        };
        r.register_with_unit(
            "rpc_server_duration",
            "Duration of gRPC server calls (health checks excluded), by service, method and status code (OTel rpc.server.duration, in seconds); from per-RPC records, which may be sampled",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "rpc_server_requests",
            "gRPC server calls counted in the kernel (exact, never sampled), by service, method and status code; health checks excluded. Served by grpc-go's own transport or through net/http (ServeHTTP), once either way (such calls are also HTTP/2 requests to the net/http probes)",
            m.requests.clone(),
        );
        r.register(
            "rpc_server_probe_requests",
            "gRPC health checks (grpc.health.v1.Health), kept apart from real traffic",
            m.probe_requests.clone(),
        );
        r.register(
            "collector_grpc_rpcs_unrecorded",
            "gRPC calls counted but without a per-RPC record (sampled out, ring buffer full, or begun before the probes)",
            m.unrecorded.clone(),
        );
        r.register(
            "collector_grpc_rpcs_no_start",
            "gRPC calls counted without a duration: begun before the probes were attached, or their start evicted",
            m.no_start.clone(),
        );
        r.register(
            "collector_grpc_methods_capped",
            "gRPC calls charged to rpc_method=\"_OTHER\" because the workload reached its method limit",
            m.methods_capped.clone(),
        );
        r.register(
            "collector_go_grpc_binaries_instrumented",
            "Go executables (files) with grpc-go uprobes attached",
            m.binaries_instrumented.clone(),
        );
        r.register(
            "collector_go_grpc_binaries_skipped",
            "grpc-go servers not instrumented, by reason",
            m.binaries_skipped.clone(),
        );
        m
    }

    fn remember(&self, labels: &RpcLabels) {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created
            .entry(labels.workload.clone())
            .or_default()
            .insert(labels.clone());
    }

    /// Exact calls of one (workload, method, code), from a harvest.
    pub fn count(&self, labels: &RpcLabels, n: u64, probe: bool) {
        let family = if probe {
            &self.probe_requests
        } else {
            &self.requests
        };
        if family.get(labels).is_none() {
            self.remember(labels);
        }
        family.get_or_create(labels).inc_by(n);
    }

    /// One call's duration (never for health checks).
    pub fn observe(&self, labels: &RpcLabels, seconds: f64) {
        self.observe_series(&self.series(labels), seconds);
    }

    /// The duration series of `labels`, created (and remembered for `forget`) when new, with
    /// its OTLP attributes built once: what the aggregator's per-call memo keeps (see
    /// `export::http::RequestSeries`). Holders drop it before a workload can be forgotten.
    pub fn series(&self, labels: &RpcLabels) -> RpcSeries {
        let existing = self.duration.get(labels).map(|h| h.clone());
        let duration = match existing {
            Some(h) => h,
            None => {
                self.remember(labels);
                self.duration.get_or_create(labels).clone()
            }
        };
        RpcSeries {
            duration,
            otel: self.otel_duration.get().map(|_| otel_attributes(labels)),
        }
    }

    /// One call of `series`.
    pub fn observe_series(&self, series: &RpcSeries, seconds: f64) {
        series.duration.observe(seconds);
        if let (Some(h), Some(attrs)) = (self.otel_duration.get(), &series.otel) {
            h.record(seconds * 1e3, attrs);
        }
    }

    /// Removes every gRPC series of a forgotten workload.
    pub fn forget(&self, w: &WorkloadLabels) {
        let created = self
            .created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(w)
            .unwrap_or_default();
        for labels in &created {
            self.duration.remove(labels);
            self.requests.remove(labels);
            self.probe_requests.remove(labels);
        }
        self.unrecorded.remove(w);
        self.no_start.remove(w);
        self.methods_capped.remove(w);
    }
}

/// The semantic convention's attributes of a call, and the workload's (lifted onto its own
/// OTLP resource by the exporter).
pub fn otel_attributes(l: &RpcLabels) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("rpc.system", l.rpc_system),
        KeyValue::new("rpc.service", l.rpc_service.clone()),
        KeyValue::new("rpc.method", l.rpc_method.clone()),
        KeyValue::new("rpc.grpc.status_code", i64::from(l.rpc_grpc_status_code)),
    ];
    attrs.extend(super::otlp::resource_attributes(&l.workload));
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Workload, WorkloadKind};

    /// Catches: OTLP attributes named otherwise than the RPC semantic conventions, or the status
    /// code sent as a string (the convention's type is an integer).
    #[test]
    fn otlp_attributes_follow_the_rpc_conventions() {
        let w = WorkloadLabels::from(&Workload {
            kind: WorkloadKind::Cgroup,
            name: "/svc".into(),
            pod_uid: None,
            container_id: None,
            kubernetes: None,
        });
        let attrs = otel_attributes(&RpcLabels {
            workload: w,
            rpc_system: "grpc",
            rpc_service: "pkg.Svc".into(),
            rpc_method: "Do".into(),
            rpc_grpc_status_code: 14,
        });
        let get = |k: &str| {
            attrs
                .iter()
                .find(|a| a.key.as_str() == k)
                .map(|a| a.value.clone())
        };
        assert_eq!(get("rpc.system"), Some("grpc".into()));
        assert_eq!(get("rpc.service"), Some("pkg.Svc".into()));
        assert_eq!(get("rpc.method"), Some("Do".into()));
        assert_eq!(
            get("rpc.grpc.status_code"),
            Some(opentelemetry::Value::I64(14))
        );
    }
}

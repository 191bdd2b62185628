//! The Prometheus surface: one registry, typed label sets, self-telemetry next to the signals.
//!
//! Label sets are bounded: workloads are capped (`max_workloads`, overflow goes to
//! `workload_kind="overflow"`), and every other label takes values from a fixed set.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use super::{http::HttpMetrics, tcp::TcpMetrics, verdict::VerdictMetrics};
use crate::identity::{PodNames, Workload};

/// Labels naming a workload on every per-workload series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub workload_kind: &'static str,
    pub workload: String,
    pub pod_uid: String,
    pub container_id: String,
    #[prometheus(flatten)]
    pub kubernetes: KubernetesLabels,
}

/// `namespace`, `pod`, `container`, `service` of a pod the Kubernetes API named (Prometheus'
/// own names for them). Absent, not empty, on other series: a host without Kubernetes exports
/// exactly the labels it always did. Labels without a value (a container the pod's status does
/// not list yet, a pod no Service selects) are left out, as Prometheus reads a missing label.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct KubernetesLabels(pub Option<PodNames>);

impl EncodeLabelSet for KubernetesLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(n) = &self.0 else {
            return Ok(());
        };
        for (key, value) in [
            ("namespace", &n.namespace),
            ("pod", &n.pod),
            ("container", &n.container),
            ("service", &n.service),
        ] {
            if !value.is_empty() {
                EncodeLabel::encode(&(key, value.as_str()), encoder.encode_label())?;
            }
        }
        // Only allow-listed labels are in `labels` (`--pod-label`), so these are bounded.
        for (key, value) in &n.labels {
            EncodeLabel::encode(
                &(
                    crate::kubernetes::prometheus_label_name(key),
                    value.as_str(),
                ),
                encoder.encode_label(),
            )?;
        }
        Ok(())
    }
}

impl From<&Workload> for WorkloadLabels {
    fn from(w: &Workload) -> Self {
        Self {
            workload_kind: w.kind.as_str(),
            workload: w.name.clone(),
            pod_uid: w.pod_uid.clone().unwrap_or_default(),
            container_id: w.container_id.clone().unwrap_or_default(),
            kubernetes: KubernetesLabels(w.kubernetes.clone()),
        }
    }
}

/// The node a Kubernetes self-metric is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: &'static str,
    /// The rung that attached, or "unavailable".
    pub rung: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelDropLabels {
    pub reason: &'static str,
    pub cpu: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: &'static str,
    pub signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Self-telemetry: what the collector itself did, lost and rejected.
pub struct SelfMetrics {
    pub signal_rung: Family<SignalLabels, Gauge>,
    pub kernel_drops: Family<KernelDropLabels, Counter>,
    pub program_misses: Family<ProgramLabels, Counter>,
    pub events_received: Family<KindLabels, Counter>,
    pub events_rejected: Family<ReasonLabels, Counter>,
    pub events_dropped: Family<ReasonLabels, Counter>,
    pub workloads: Gauge,
    pub workloads_capped: Counter,
    pub harvests: Counter,
    pub otlp_exports: Family<ResultLabels, Counter>,
    pub go_binaries_instrumented: Gauge,
    pub go_binaries_skipped: Family<ReasonLabels, Counter>,
    pub http_inflight_swept: Counter,
    /// Route templates learned for plaintext requests (`--go-http-uprobes auto`).
    pub http_routes_learned: Counter,
    /// Route-learning windows opened on Go servers (`--go-http-uprobes auto`).
    pub go_route_learning_windows: Counter,
    pub http_sample_every: Gauge,
    /// Records lost in userspace (rejected at decoding, or dropped with the channel full):
    /// read by the aggregator to mark verdict windows unknown.
    pub records_lost: AtomicU64,
    /// The API server's connections (open, rejected, shed).
    pub api: crate::api::server::Telemetry,
    /// The Kubernetes watches (samples only with `--node-name`).
    pub kubernetes: crate::kubernetes::KubeMetrics,
}

pub struct Metrics {
    registry: Registry,
    pub tcp: TcpMetrics,
    pub http: HttpMetrics,
    pub grpc: super::grpc::GrpcMetrics,
    pub collector: SelfMetrics,
    pub verdict: VerdictMetrics,
    max_workloads: usize,
    known: Mutex<std::collections::HashSet<WorkloadLabels>>,
    scrapes: AtomicU64,
}

impl Metrics {
    pub fn new(max_workloads: usize) -> Self {
        let mut registry = Registry::default();
        let tcp = TcpMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        let grpc = super::grpc::GrpcMetrics::register(&mut registry);
        let verdict = VerdictMetrics::register(&mut registry);
        let collector = SelfMetrics {
            signal_rung: Family::default(),
            kernel_drops: Family::default(),
            program_misses: Family::default(),
            events_received: Family::default(),
            events_rejected: Family::default(),
            events_dropped: Family::default(),
            workloads: Gauge::default(),
            workloads_capped: Counter::default(),
            harvests: Counter::default(),
            otlp_exports: Family::default(),
            go_binaries_instrumented: Gauge::default(),
            go_binaries_skipped: Family::default(),
            http_inflight_swept: Counter::default(),
            http_routes_learned: Counter::default(),
            go_route_learning_windows: Counter::default(),
            http_sample_every: Gauge::default(),
            records_lost: AtomicU64::new(0),
            api: Default::default(),
            kubernetes: Default::default(),
        };
        let c = &collector;
        registry.register(
            "collector_signal_rung",
            "Which hook rung each signal attached on (1), or rung=\"unavailable\"",
            c.signal_rung.clone(),
        );
        registry.register(
            "collector_kernel_drops",
            "Events the kernel side could not record, per reason and CPU",
            c.kernel_drops.clone(),
        );
        registry.register(
            "collector_kernel_program_misses",
            "Runs of a program the kernel skipped because another BPF program was running on \
             the same CPU (its recursion guard; counted by Linux 6.7 and later): each is one \
             event of the signal not seen, on no workload",
            c.program_misses.clone(),
        );
        registry.register(
            "collector_events_received",
            "Ring-buffer records decoded, per kind",
            c.events_received.clone(),
        );
        registry.register(
            "collector_events_rejected",
            "Ring-buffer records rejected at decoding, per reason",
            c.events_rejected.clone(),
        );
        registry.register(
            "collector_events_dropped",
            "Decoded records dropped in userspace, per reason",
            c.events_dropped.clone(),
        );
        registry.register(
            "collector_workloads",
            "Workloads with live series",
            c.workloads.clone(),
        );
        registry.register(
            "collector_workloads_capped",
            "Observations charged to workload_kind=\"overflow\" because max_workloads was reached",
            c.workloads_capped.clone(),
        );
        registry.register(
            "collector_harvests",
            "Kernel map harvests completed",
            c.harvests.clone(),
        );
        registry.register(
            "collector_otlp_exports",
            "OTLP export attempts, by result (success, failure)",
            c.otlp_exports.clone(),
        );
        registry.register(
            "collector_go_binaries_instrumented",
            "Go executables (files) with net/http uprobes attached",
            c.go_binaries_instrumented.clone(),
        );
        registry.register(
            "collector_go_binaries_skipped",
            "Go executables not instrumented with net/http uprobes, by reason (the reason codes of /v1/go-http)",
            c.go_binaries_skipped.clone(),
        );
        registry.register(
            "collector_http_inflight_swept",
            "In-flight requests dropped because their process exited or they never ended",
            c.http_inflight_swept.clone(),
        );
        registry.register(
            "collector_http_routes_learned",
            "Route templates of Go routers and ServeMux learned for requests the socket parser counts (distinct per workload)",
            c.http_routes_learned.clone(),
        );
        registry.register(
            "collector_go_route_learning_windows",
            "Windows in which Go servers served by the socket parser were instrumented briefly to learn their route templates",
            c.go_route_learning_windows.clone(),
        );
        registry.register(
            "collector_http_sample_every",
            "Go HTTP request records emitted 1 in N (N adapts to --http-event-budget; counts stay exact)",
            c.http_sample_every.clone(),
        );
        registry.register(
            "collector_api_connections",
            "Connections to the API server open now",
            c.api.open.clone(),
        );
        registry.register(
            "collector_api_connections_rejected",
            "API connections closed at once: a connection limit (total or per client address) was reached with none to shed",
            c.api.rejected.clone(),
        );
        registry.register(
            "collector_api_connections_shed",
            "API connections waiting for a complete request the longest, closed to admit a new one at a connection limit",
            c.api.shed.clone(),
        );
        registry.register(
            "collector_api_auth_reviews",
            "Kubernetes reviews of /v1/* bearer tokens (--api-auth-kubernetes), by review (token: TokenReview, access: SubjectAccessReview) and result (authenticated, unauthenticated; allowed, denied; error: no answer, the request got 503)",
            c.api.auth.reviews.clone(),
        );
        registry.register(
            "collector_api_auth_cache_hits",
            "/v1/* requests whose token (review=token) or access (review=access) decision came from the cache instead of a Kubernetes review",
            c.api.auth.cache_hits.clone(),
        );
        registry.register(
            "collector_kubernetes_connected",
            "1 while the pod and EndpointSlice watches of this node are established, 0 while the Kubernetes API is unreachable (pods then keep the names last seen; new pods are exported by UID)",
            c.kubernetes.connected.clone(),
        );
        registry.register(
            "collector_kubernetes_pods",
            "Pods bound to this node known from the Kubernetes API",
            c.kubernetes.pods.clone(),
        );
        registry.register(
            "collector_kubernetes_watch_errors",
            "Kubernetes watches lost or refused, per resource (each is retried after a backoff)",
            c.kubernetes.watch_errors.clone(),
        );
        registry.register(
            "collector_readiness_gated_pods",
            "Pods of this node declaring the traffic-healthy readiness gate",
            c.kubernetes.readiness_gated.clone(),
        );
        registry.register(
            "collector_readiness_false_pods",
            "Gated pods of this node whose condition the collector decided False",
            c.kubernetes.readiness_false.clone(),
        );
        registry.register(
            "collector_readiness_held_pods",
            "Gated pods held True by a cap (a Service floor, or a node's share of flips) where enforce would flip them: a node or collector fault to look at",
            c.kubernetes.readiness_held.clone(),
        );
        registry.register(
            "collector_readiness_patches",
            "pods/status patches of the readiness condition, by result",
            c.kubernetes.readiness_patches.clone(),
        );
        registry.register(
            "collector_build",
            "Collector build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            tcp,
            http,
            grpc,
            collector,
            verdict,
            max_workloads,
            known: Mutex::new(Default::default()),
            scrapes: AtomicU64::new(0),
        }
    }

    /// The label set for a workload, or the overflow bucket once `max_workloads` is reached.
    pub fn labels_for(&self, w: &Workload) -> WorkloadLabels {
        self.labels_or_capped(w).0
    }

    /// `labels_for`, and whether the workload was charged to overflow because of the cap (the
    /// observation is counted in `collector_workloads_capped_total`). For callers that keep
    /// the labels for later observations: each of those is another capped observation
    /// (`capped_observation`).
    pub fn labels_or_capped(&self, w: &Workload) -> (WorkloadLabels, bool) {
        let labels = WorkloadLabels::from(w);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(&labels) {
            return (labels, false);
        }
        if known.len() >= self.max_workloads {
            self.collector.workloads_capped.inc();
            return (WorkloadLabels::from(&Workload::overflow()), true);
        }
        known.insert(labels.clone());
        self.collector.workloads.set(known.len() as i64);
        (labels, false)
    }

    /// One more observation of a workload `labels_or_capped` charged to overflow.
    pub fn capped_observation(&self) {
        self.collector.workloads_capped.inc();
    }

    /// Forgets a workload the verdict engine expired (no data for `expire_windows` windows):
    /// its label set leaves the known set, so a new workload can take its place under
    /// `max_workloads`, and its series are removed, so memory follows the live workloads rather
    /// than every workload ever seen. Workloads that were never admitted (overflow,
    /// unattributed charged past the cap) are left alone.
    pub fn forget(&self, labels: &WorkloadLabels) {
        {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if !known.remove(labels) {
                return;
            }
            self.collector.workloads.set(known.len() as i64);
        }
        self.tcp.forget(labels);
        self.http.forget(labels);
        self.grpc.forget(labels);
        self.verdict.forget(labels);
    }

    /// Workloads with their own label set now.
    pub fn known_workloads(&self) -> usize {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Prometheus text format 0.0.4, for scrapers that do not ask for OpenMetrics.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }

    /// OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Rewrites prometheus-client's OpenMetrics output as Prometheus text format 0.0.4: no `# UNIT`
/// or `# EOF`, counters' HELP/TYPE under the `_total` sample name, info metrics as gauges named
/// `_info`. Sample lines are the same in both formats.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gaugehistogram" | "stateset" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Workload, WorkloadKind};
    use collector_common::tcp::TcpStats;

    #[test]
    fn text_format_renames_counters_and_drops_openmetrics_only_lines() {
        let m = Metrics::new(10);
        let w = Workload {
            kind: WorkloadKind::ProcessComm,
            name: "nginx".into(),
            pod_uid: None,
            container_id: None,
            kubernetes: None,
        };
        m.tcp.add(
            &m.labels_for(&w),
            &TcpStats {
                bytes_sent: 5,
                ..Default::default()
            },
        );
        let text = m.render_text();
        assert!(
            text.contains("# TYPE collector_tcp_sent_bytes_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP collector_tcp_sent_bytes_total Bytes accepted"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE collector_build_info gauge\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(text.contains("collector_tcp_sent_bytes_total{workload_kind=\"process_comm\",workload=\"nginx\",pod_uid=\"\",container_id=\"\"} 5"));
        let om = m.render();
        assert!(
            om.ends_with("# EOF\n") && om.contains("# UNIT collector_tcp_sent_bytes bytes"),
            "{om}"
        );
    }

    /// Catches: Kubernetes labels rendered empty on every series (a standalone host's output
    /// changes), or missing / mis-named on pods the API named; an unknown container or a pod no
    /// Service selects exported as `container=""` / `service=""` instead of no label.
    #[test]
    fn kubernetes_labels_only_where_the_api_named_the_pod() {
        let m = Metrics::new(10);
        let plain = Workload {
            kind: WorkloadKind::Pod,
            name: "u1".into(),
            pod_uid: Some("u1".into()),
            container_id: Some("c1".into()),
            kubernetes: None,
        };
        let named = Workload {
            kind: WorkloadKind::Pod,
            name: "deployment/web".into(),
            pod_uid: Some("u2".into()),
            container_id: Some("c2".into()),
            kubernetes: Some(PodNames {
                namespace: "shop".into(),
                pod: "web-1".into(),
                container: String::new(),
                workload: "deployment/web".into(),
                service: "web".into(),
                labels: [("app.kubernetes.io/name".to_string(), "web".to_string())].into(),
            }),
        };
        let stats = TcpStats {
            bytes_sent: 5,
            ..Default::default()
        };
        m.tcp.add(&m.labels_for(&plain), &stats);
        m.tcp.add(&m.labels_for(&named), &stats);
        let text = m.render_text();
        assert!(text.contains("collector_tcp_sent_bytes_total{workload_kind=\"pod\",workload=\"u1\",pod_uid=\"u1\",container_id=\"c1\"} 5\n"), "{text}");
        assert!(text.contains("collector_tcp_sent_bytes_total{workload_kind=\"pod\",workload=\"deployment/web\",pod_uid=\"u2\",container_id=\"c2\",namespace=\"shop\",pod=\"web-1\",service=\"web\",label_app_kubernetes_io_name=\"web\"} 5\n"), "{text}");
    }

    #[test]
    fn workloads_past_the_cap_go_to_overflow() {
        let m = Metrics::new(2);
        let w = |n: &str| Workload {
            kind: WorkloadKind::Process,
            name: n.into(),
            pod_uid: None,
            container_id: None,
            kubernetes: None,
        };
        assert_eq!(m.labels_for(&w("a")).workload, "a");
        assert_eq!(m.labels_for(&w("b")).workload, "b");
        assert_eq!(m.labels_for(&w("c")).workload_kind, "overflow");
        assert_eq!(
            m.labels_for(&w("a")).workload,
            "a",
            "known workloads keep their series"
        );
        assert!(m.render().contains("collector_workloads_capped_total 1"));
    }

    /// Catches: the known set never shrinking, so after `max_workloads` distinct workloads
    /// (restarts count) every new one lands in overflow; and series of forgotten workloads kept
    /// forever.
    #[test]
    fn forgotten_workloads_free_their_place_and_leave_no_series() {
        use crate::export::http::RequestLabels;
        let m = Metrics::new(1);
        let w = |n: &str| Workload {
            kind: WorkloadKind::Pod,
            name: n.into(),
            pod_uid: Some(n.into()),
            container_id: None,
            kubernetes: None,
        };
        let a = m.labels_for(&w("a"));
        m.tcp.add(
            &a,
            &TcpStats {
                bytes_sent: 5,
                connects_refused: 1,
                active_opens: 1,
                ..Default::default()
            },
        );
        let req = RequestLabels {
            workload: a.clone(),
            method: "GET",
            route: "/x".into(),
            status_code: "200".into(),
            error_type: "",
        };
        m.http.record(&req, 0.1, false);
        m.http.record(&req, 0.1, true);
        m.verdict
            .state
            .get_or_create(&crate::export::verdict::StateLabels {
                workload: a.clone(),
                state: "healthy",
            })
            .set(1);
        assert_eq!(m.labels_for(&w("b")).workload_kind, "overflow");
        assert!(m.render().contains("pod_uid=\"a\""));

        m.forget(&a);
        assert_eq!(m.known_workloads(), 0);
        let text = m.render();
        assert!(!text.contains("pod_uid=\"a\""), "{text}");
        assert!(text.contains("collector_workloads 0"), "{text}");
        assert_eq!(
            m.labels_for(&w("b")).workload,
            "b",
            "the freed place is taken"
        );
        assert!(m.tcp.snapshot().iter().all(|(l, _)| l.workload != "a"));
        // Forgetting what was never admitted changes nothing.
        m.forget(&WorkloadLabels::from(&Workload::overflow()));
        assert_eq!(m.known_workloads(), 1);
    }
}

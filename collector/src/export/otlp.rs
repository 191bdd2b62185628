//! OTLP metrics push (gRPC or HTTP/protobuf): the OpenTelemetry SDK aggregates, our exporter
//! shapes the request and sends it.
//!
//! The exporter reads the same exact cumulative totals the Prometheus endpoint serves
//! (`TcpMetrics::snapshot`) through observable counters, so both outputs agree. Temporality is
//! cumulative: an export that fails loses nothing, the next successful one carries the totals
//! (so one attempt per interval, with `--otlp-timeout`, and no retry queue that could grow).
//! Exports run as tokio tasks of the SDK's periodic reader, never on the aggregator; failures
//! are counted (`collector_otlp_exports_total{result="failure"}`) and logged at most once a
//! minute.
//!
//! Resources (documented in docs/metrics.md): **one `ResourceMetrics` per workload** in each
//! export request, as the OpenTelemetry data model means it (a resource is the entity that
//! produced the telemetry: the pod's container, the process, not the node). One SDK meter
//! provider has exactly one resource, and a provider per workload would mean one request per
//! workload per interval; so instruments record the workload's identity as point attributes
//! (`resource_attributes`), and `split_by_workload` lifts those keys (`k8s.*`, `container.*`,
//! `process.*`, `service.*`, `workload.*`) from every point onto a resource of its own, next to
//! the node's (`host.name`, `k8s.node.name`), before the request is encoded. Which is why the
//! OTLP client here is ours (tonic's generated client, or reqwest): opentelemetry-otlp's
//! exporters only send the SDK's single resource.
//!
//! Durations: `http.server.request.duration` is recorded per request record (the same records
//! as the Prometheus histogram and the verdicts' log-linear histogram), so either aggregation is
//! computed from the measured values themselves, not mapped from another histogram's buckets:
//! explicit buckets (the semantic convention's boundaries; the default, as in the OpenTelemetry
//! specification, since every receiver accepts them), or `--otlp-histogram exponential`: base-2
//! exponential buckets at the finest scale (≤ 20) that fits the observed range in 160 buckets.
//! At scale s a bucket spans a factor 2^(2^-s): scale 5 (32 buckets per doubling, ranges up to
//! 2^5 = 32×, e.g. 1–32 ms) is 2.2 % wide, scale 4 (up to 1,024×, e.g. 100 µs–100 ms) 4.4 %,
//! scale 3 (up to 2^20) 9 %; a quantile read at the bucket's geometric middle is within half of
//! that (1.1 %, 2.2 %, 4.4 %). The verdicts' histogram (16 linear sub-buckets per doubling,
//! ≤ 3.2 %) is a different, fixed layout: its slots do not align with base-2 exponential
//! buckets, which is why it is not the source of the exported one.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry::{InstrumentationScope, KeyValue, metrics::MeterProvider as _};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_client::MetricsServiceClient,
    },
    common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value},
    metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics as ProtoResourceMetrics, ScopeMetrics, Sum,
        Summary, SummaryDataPoint, metric::Data,
    },
    resource::v1::Resource as ProtoResource,
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    metrics::{
        Aggregation, Instrument, SdkMeterProvider, Stream, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter, periodic_reader_with_async_runtime::PeriodicReader,
    },
    runtime,
};
use prost::Message as _;
use tracing::{info, warn};

use super::{
    Metrics,
    prometheus::{ResultLabels, WorkloadLabels},
};
use crate::config::{OtlpConfig, OtlpHistogram, OtlpProtocol};
use collector_common::tcp::TcpStats;

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("reading {what} {path}: {source}")]
    ReadPem {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("header {name:?}: {message}")]
    Header { name: String, message: String },
    #[error("OTLP endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
}

/// A running OTLP push. Shut it down to flush a final export.
pub struct OtlpExporter {
    provider: SdkMeterProvider,
}

/// The instrumentation scope of every instrument: the collector, with its version.
fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("collector")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

impl OtlpExporter {
    /// Must be called inside the tokio runtime (the gRPC channel and the reader live there).
    /// `node`: this node's Kubernetes name (`--node-name`), put on every resource.
    pub fn start(
        cfg: &OtlpConfig,
        metrics: Arc<Metrics>,
        node: Option<String>,
    ) -> Result<Self, OtlpError> {
        // One process-wide rustls provider for both transports; an error only means it is set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let transport = match cfg.protocol {
            OtlpProtocol::Grpc => grpc_transport(cfg)?,
            OtlpProtocol::HttpProtobuf => http_transport(cfg)?,
        };
        let exporter = WorkloadExporter {
            transport,
            node: node_attributes(node.as_deref()),
            metrics: metrics.clone(),
            log: Mutex::new(LogLimiter::default()),
        };
        let reader = PeriodicReader::builder(exporter, runtime::Tokio)
            .with_interval(cfg.interval)
            .build();
        let histogram = cfg.histogram;
        let provider = SdkMeterProvider::builder()
            .with_resource(Resource::builder_empty().build())
            .with_reader(reader)
            .with_view(move |i: &Instrument| duration_view(i, histogram))
            .build();
        register_instruments(&provider, metrics);
        info!(endpoint = %cfg.endpoint, protocol = ?cfg.protocol, interval = ?cfg.interval, histogram = ?cfg.histogram, "OTLP metrics push enabled");
        Ok(Self { provider })
    }

    /// Exports each workload's health verdict as the gauge `collector.verdict` (1, with the
    /// state as the `health.state` attribute), read from the verdict engine's latest snapshot.
    pub fn export_verdicts(&self, verdicts: crate::verdict::SharedVerdicts) {
        let _ = self
            .provider
            .meter_with_scope(scope())
            .u64_observable_gauge(VERDICT.0)
            .with_unit(VERDICT.1)
            .with_description(VERDICT.2)
            .with_callback(move |observer| {
                let snapshot = verdicts.read().unwrap_or_else(|e| e.into_inner()).clone();
                for w in &snapshot.workloads {
                    let mut attrs = resource_attributes(&WorkloadLabels {
                        workload_kind: w.kind,
                        workload: w.name.clone(),
                        pod_uid: w.pod_uid.clone(),
                        container_id: w.container_id.clone(),
                        kubernetes: super::prometheus::KubernetesLabels(w.kubernetes.clone()),
                    });
                    attrs.push(KeyValue::new("health.state", w.state.as_str()));
                    attrs.push(KeyValue::new("health.probe_mismatch", w.probe_mismatch));
                    observer.observe(1, &attrs);
                }
            })
            .build();
    }

    /// Exports one last time and stops. Blocks: call from a blocking context.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            warn!(error = %e, "OTLP final export");
        }
    }
}

/// The aggregation of `http.server.request.duration` (`--otlp-histogram`); other instruments
/// keep the SDK's default.
fn duration_view(i: &Instrument, histogram: OtlpHistogram) -> Option<Stream> {
    if i.name() != HTTP_DURATION.0 || histogram != OtlpHistogram::Exponential {
        return None;
    }
    Stream::builder()
        .with_aggregation(Aggregation::Base2ExponentialHistogram {
            // The specification's defaults: the SDK lowers the scale until the observed range
            // fits in 160 buckets.
            max_size: 160,
            max_scale: 20,
            record_min_max: true,
        })
        .build()
        .ok()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// What every resource carries: the node the workload runs on.
fn node_attributes(node: Option<&str>) -> Vec<ProtoKeyValue> {
    let mut attrs = vec![proto_kv("host.name", hostname())];
    if let Some(n) = node {
        attrs.push(proto_kv("k8s.node.name", n.to_string()));
    }
    attrs
}

fn proto_kv(key: &str, value: String) -> ProtoKeyValue {
    ProtoKeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn read_pem(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, OtlpError> {
    std::fs::read(path).map_err(|source| OtlpError::ReadPem {
        what,
        path: path.into(),
        source,
    })
}

fn grpc_transport(cfg: &OtlpConfig) -> Result<Transport, OtlpError> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (k, v) in &cfg.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).map_err(|e| {
            OtlpError::Header {
                name: k.clone(),
                message: e.to_string(),
            }
        })?;
        let value = v.parse().map_err(|_| OtlpError::Header {
            name: k.clone(),
            message: "invalid value".into(),
        })?;
        metadata.insert(key, value);
    }
    let endpoint_error = |message: String| OtlpError::Endpoint {
        endpoint: cfg.endpoint.clone(),
        message,
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(cfg.endpoint.clone())
        .map_err(|e| endpoint_error(e.to_string()))?
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout);
    if cfg.endpoint.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &cfg.ca_file {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read_pem(
                "CA file", ca,
            )?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read_pem("client certificate", cert)?,
                read_pem("client key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| OtlpError::Tls(e.to_string()))?;
    }
    // Lazy: an unreachable receiver at start is an export failure, not a start-up error.
    Ok(Transport::Grpc {
        client: MetricsServiceClient::new(endpoint.connect_lazy()),
        metadata,
    })
}

fn http_transport(cfg: &OtlpConfig) -> Result<Transport, OtlpError> {
    let mut client = reqwest::Client::builder().timeout(cfg.timeout);
    if let Some(ca) = &cfg.ca_file {
        let cert = reqwest::Certificate::from_pem(&read_pem("CA file", ca)?)
            .map_err(|e| OtlpError::Tls(e.to_string()))?;
        client = client.tls_certs_only([cert]);
    }
    if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
        let mut pem = read_pem("client certificate", cert)?;
        pem.extend(read_pem("client key", key)?);
        client = client.identity(
            reqwest::Identity::from_pem(&pem).map_err(|e| OtlpError::Tls(e.to_string()))?,
        );
    }
    let client = client.build().map_err(|e| OtlpError::Tls(e.to_string()))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &cfg.headers {
        let header_error = |message: String| OtlpError::Header {
            name: k.clone(),
            message,
        };
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| header_error(e.to_string()))?;
        let value =
            reqwest::header::HeaderValue::from_str(v).map_err(|e| header_error(e.to_string()))?;
        headers.insert(name, value);
    }
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(Transport::Http {
        client,
        endpoint: cfg.endpoint.clone(),
        headers,
    })
}

/// How a request reaches the receiver.
enum Transport {
    Grpc {
        client: MetricsServiceClient<tonic::transport::Channel>,
        metadata: tonic::metadata::MetadataMap,
    },
    Http {
        client: reqwest::Client,
        endpoint: String,
        headers: reqwest::header::HeaderMap,
    },
}

impl Transport {
    /// Sends one request; the receiver's partial-success message, if any.
    async fn send(&self, request: ExportMetricsServiceRequest) -> Result<Option<String>, String> {
        let response = match self {
            Transport::Grpc { client, metadata } => {
                let mut r = tonic::Request::new(request);
                *r.metadata_mut() = metadata.clone();
                client
                    .clone()
                    .export(r)
                    .await
                    .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?
                    .into_inner()
            }
            Transport::Http {
                client,
                endpoint,
                headers,
            } => {
                let r = client
                    .post(endpoint)
                    .headers(headers.clone())
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| format!("HTTP: {e}"))?;
                let status = r.status();
                let body = r.bytes().await.map_err(|e| format!("HTTP body: {e}"))?;
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
                    return Err(format!("HTTP {status}: {text}"));
                }
                // An empty or undecodable 2xx body is a success without details.
                ExportMetricsServiceResponse::decode(body.as_ref()).unwrap_or_default()
            }
        };
        Ok(response.partial_success.and_then(|p| {
            (p.rejected_data_points > 0 || !p.error_message.is_empty()).then(|| {
                format!(
                    "{} data points rejected: {}",
                    p.rejected_data_points, p.error_message
                )
            })
        }))
    }
}

/// One warning per minute at most, with how many failures it stands for.
#[derive(Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

const LOG_EVERY: Duration = Duration::from_secs(60);

struct WorkloadExporter {
    transport: Transport,
    /// The node's attributes, on every resource.
    node: Vec<ProtoKeyValue>,
    metrics: Arc<Metrics>,
    log: Mutex<LogLimiter>,
}

impl WorkloadExporter {
    fn warn_limited(&self, message: &str, error: &str) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if log.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            warn!(
                error,
                failures_since_last_report = log.suppressed + 1,
                "{message}"
            );
            log.last = Some(now);
            log.suppressed = 0;
        } else {
            log.suppressed += 1;
        }
    }
}

impl PushMetricExporter for WorkloadExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let request = split_by_workload(ExportMetricsServiceRequest::from(metrics), &self.node);
        let result = self.transport.send(request).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .collector
            .otlp_exports
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
        match result {
            Ok(None) => Ok(()),
            // Accepted, with data points refused (e.g. a receiver without exponential
            // histograms): the receiver's words are what tells the operator which switch to flip.
            Ok(Some(partial)) => {
                self.warn_limited("OTLP receiver accepted the export only in part", &partial);
                Ok(())
            }
            Err(e) => {
                self.warn_limited("OTLP export failed; retrying next interval", &e);
                Err(OTelSdkError::InternalFailure(e))
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// Point attributes that say which workload produced the measurement, not what was measured:
/// they belong on the resource.
fn is_resource_key(key: &str) -> bool {
    ["k8s.", "container.", "process.", "service.", "workload."]
        .iter()
        .any(|p| key.starts_with(p))
}

/// Points whose attributes carry a resource's identity.
trait Point {
    fn attributes(&mut self) -> &mut Vec<ProtoKeyValue>;
}

macro_rules! point {
    ($($t:ty),*) => {$(
        impl Point for $t {
            fn attributes(&mut self) -> &mut Vec<ProtoKeyValue> {
                &mut self.attributes
            }
        }
    )*};
}
point!(
    NumberDataPoint,
    HistogramDataPoint,
    ExponentialHistogramDataPoint,
    SummaryDataPoint
);

/// A resource's identity as a sortable key (values rendered; only strings, ints and bools
/// occur).
type ResourceKey = Vec<(String, String)>;

/// Moves each point's resource attributes off the point: (key, resource attributes, point).
fn lift<P: Point>(points: Vec<P>) -> impl Iterator<Item = (ResourceKey, Vec<ProtoKeyValue>, P)> {
    points.into_iter().map(|mut p| {
        let (mut resource, rest): (Vec<_>, Vec<_>) = std::mem::take(p.attributes())
            .into_iter()
            .partition(|kv| is_resource_key(&kv.key));
        *p.attributes() = rest;
        resource.sort_by(|a, b| a.key.cmp(&b.key));
        let key = resource
            .iter()
            .map(|kv| (kv.key.clone(), format!("{:?}", kv.value)))
            .collect();
        (key, resource, p)
    })
}

/// One `ResourceMetrics` per workload: every point's resource attributes (`is_resource_key`)
/// become, with the node's, the resource it is filed under; scopes and metric metadata are kept,
/// a metric appears under each resource that has points of it. Resources are ordered by their
/// attributes, so requests are deterministic.
pub fn split_by_workload(
    request: ExportMetricsServiceRequest,
    node: &[ProtoKeyValue],
) -> ExportMetricsServiceRequest {
    /// Per resource: its attributes, and per input scope the metrics it has points of.
    type Groups = BTreeMap<ResourceKey, (Vec<ProtoKeyValue>, BTreeMap<usize, Vec<Metric>>)>;
    let mut groups: Groups = BTreeMap::new();
    let mut scopes = Vec::new();
    for rm in request.resource_metrics {
        for sm in rm.scope_metrics {
            let si = scopes.len();
            scopes.push((sm.scope, sm.schema_url));
            for m in sm.metrics {
                let Some(data) = m.data else {
                    continue;
                };
                let header = |data: Data| Metric {
                    name: m.name.clone(),
                    description: m.description.clone(),
                    unit: m.unit.clone(),
                    metadata: m.metadata.clone(),
                    data: Some(data),
                };
                // Per resource, this metric's data of the same kind with that resource's points.
                let mut per: BTreeMap<ResourceKey, (Vec<ProtoKeyValue>, Data)> = BTreeMap::new();
                match data {
                    Data::Sum(d) => {
                        for (k, res, p) in lift(d.data_points) {
                            let e = per.entry(k).or_insert_with(|| {
                                (
                                    res,
                                    Data::Sum(Sum {
                                        data_points: vec![],
                                        aggregation_temporality: d.aggregation_temporality,
                                        is_monotonic: d.is_monotonic,
                                    }),
                                )
                            });
                            if let Data::Sum(s) = &mut e.1 {
                                s.data_points.push(p);
                            }
                        }
                    }
                    Data::Gauge(d) => {
                        for (k, res, p) in lift(d.data_points) {
                            let e = per.entry(k).or_insert_with(|| {
                                (
                                    res,
                                    Data::Gauge(Gauge {
                                        data_points: vec![],
                                    }),
                                )
                            });
                            if let Data::Gauge(g) = &mut e.1 {
                                g.data_points.push(p);
                            }
                        }
                    }
                    Data::Histogram(d) => {
                        for (k, res, p) in lift(d.data_points) {
                            let e = per.entry(k).or_insert_with(|| {
                                (
                                    res,
                                    Data::Histogram(Histogram {
                                        data_points: vec![],
                                        aggregation_temporality: d.aggregation_temporality,
                                    }),
                                )
                            });
                            if let Data::Histogram(h) = &mut e.1 {
                                h.data_points.push(p);
                            }
                        }
                    }
                    Data::ExponentialHistogram(d) => {
                        for (k, res, p) in lift(d.data_points) {
                            let e = per.entry(k).or_insert_with(|| {
                                (
                                    res,
                                    Data::ExponentialHistogram(ExponentialHistogram {
                                        data_points: vec![],
                                        aggregation_temporality: d.aggregation_temporality,
                                    }),
                                )
                            });
                            if let Data::ExponentialHistogram(h) = &mut e.1 {
                                h.data_points.push(p);
                            }
                        }
                    }
                    Data::Summary(d) => {
                        for (k, res, p) in lift(d.data_points) {
                            let e = per.entry(k).or_insert_with(|| {
                                (
                                    res,
                                    Data::Summary(Summary {
                                        data_points: vec![],
                                    }),
                                )
                            });
                            if let Data::Summary(s) = &mut e.1 {
                                s.data_points.push(p);
                            }
                        }
                    }
                }
                for (k, (res, data)) in per {
                    groups
                        .entry(k)
                        .or_insert_with(|| (res, BTreeMap::new()))
                        .1
                        .entry(si)
                        .or_default()
                        .push(header(data));
                }
            }
        }
    }
    let resource_metrics = groups
        .into_values()
        .map(|(res, by_scope)| {
            let mut attributes = node.to_vec();
            if !res.iter().any(|kv| kv.key == "service.name") {
                attributes.push(proto_kv("service.name", "collector".into()));
            }
            attributes.extend(res);
            ProtoResourceMetrics {
                resource: Some(ProtoResource {
                    attributes,
                    dropped_attributes_count: 0,
                    entity_refs: vec![],
                }),
                scope_metrics: by_scope
                    .into_iter()
                    .map(|(si, metrics)| ScopeMetrics {
                        scope: scopes[si].0.clone(),
                        metrics,
                        schema_url: scopes[si].1.clone(),
                    })
                    .collect(),
                schema_url: String::new(),
            }
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

/// The Kubernetes owner kinds with a semantic-convention attribute of their own.
const OWNER_KEYS: [(&str, &str); 6] = [
    ("deployment", "k8s.deployment.name"),
    ("statefulset", "k8s.statefulset.name"),
    ("daemonset", "k8s.daemonset.name"),
    ("replicaset", "k8s.replicaset.name"),
    ("job", "k8s.job.name"),
    ("cronjob", "k8s.cronjob.name"),
];

/// The resource attributes of a workload (OpenTelemetry semantic conventions where one
/// exists), recorded on points and lifted onto the workload's resource by `split_by_workload`:
///
/// * always `workload.kind`, `workload.name` (the collector's own identity of the workload);
/// * pods: `k8s.pod.uid`, `container.id`; once the Kubernetes API named the pod also
///   `k8s.namespace.name`, `k8s.pod.name`, `k8s.container.name`, its owner as
///   `k8s.deployment.name` / `k8s.statefulset.name` / `k8s.daemonset.name` /
///   `k8s.replicaset.name` / `k8s.job.name` / `k8s.cronjob.name`, allow-listed labels as
///   `k8s.pod.label.<name>`, and `service.namespace` = the namespace;
/// * containers outside Kubernetes: `container.id`;
/// * process workloads (`process_comm`): `process.executable.name`. No `process.pid`: such a
///   workload is every process of that name outside any pod, container or unit, so no one pid
///   identifies it;
/// * `service.name`: the Kubernetes Service selecting the pod (the first by name when several
///   do; all are in `k8s.service.names`), else the owner's name, else the pod's, else the
///   workload's name (unit, process, container id).
pub fn resource_attributes(w: &WorkloadLabels) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("workload.kind", w.workload_kind),
        KeyValue::new("workload.name", w.workload.clone()),
    ];
    if !w.pod_uid.is_empty() {
        attrs.push(KeyValue::new("k8s.pod.uid", w.pod_uid.clone()));
    }
    if !w.container_id.is_empty() {
        attrs.push(KeyValue::new("container.id", w.container_id.clone()));
    }
    let mut service = None;
    if let Some(n) = &w.kubernetes.0 {
        let mut put = |key: &'static str, value: &str| {
            if !value.is_empty() {
                attrs.push(KeyValue::new(key, value.to_string()));
            }
        };
        put("k8s.namespace.name", &n.namespace);
        put("service.namespace", &n.namespace);
        put("k8s.pod.name", &n.pod);
        service = (!n.pod.is_empty()).then(|| n.pod.clone());
        put("k8s.container.name", &n.container);
        if let Some((kind, name)) = n.workload.split_once('/')
            && let Some((_, key)) = OWNER_KEYS.iter().find(|(k, _)| *k == kind)
        {
            put(key, name);
            service = Some(name.to_string());
        }
        if !n.service.is_empty() {
            put("k8s.service.names", &n.service);
            service = n.service.split(',').next().map(str::to_string);
        }
        for (k, v) in &n.labels {
            attrs.push(KeyValue::new(format!("k8s.pod.label.{k}"), v.clone()));
        }
    }
    if w.workload_kind == crate::identity::WorkloadKind::Process.as_str() {
        attrs.push(KeyValue::new("process.executable.name", w.workload.clone()));
    }
    attrs.push(KeyValue::new(
        "service.name",
        service.unwrap_or_else(|| w.workload.clone()),
    ));
    attrs
}

/// Instruments beyond the TCP counters: (name, unit, description, attributes besides the
/// workload's). Registration and docs/metrics.md both read these.
pub const HTTP_DURATION: (&str, &str, &str, &str) = (
    "http.server.request.duration",
    "s",
    "Duration of HTTP server requests (histogram: the semantic convention's explicit buckets, or base-2 exponential with --otlp-histogram exponential; probe paths excluded)",
    "`http.request.method`, `http.route`, `http.response.status_code`, `error.type`",
);
/// gRPC server calls (`--go-grpc-uprobes all`), as the semantic convention names it: in
/// milliseconds (Prometheus' `rpc_server_duration_seconds` is the same records in seconds).
pub const RPC_DURATION: (&str, &str, &str, &str) = (
    "rpc.server.duration",
    "ms",
    "Duration of gRPC server calls (histogram; health checks excluded)",
    "`rpc.system` (grpc), `rpc.service`, `rpc.method`, `rpc.grpc.status_code`",
);
pub const VERDICT: (&str, &str, &str, &str) = (
    "collector.verdict",
    "1",
    "Health verdict per workload (gauge, always 1)",
    "`health.state` (healthy, degraded, unhealthy or unknown), `health.probe_mismatch`",
);

/// One OTLP counter: name, unit, description, and which field(s) it reads, each with extra attributes.
type Reading = fn(&TcpStats) -> Vec<(u64, Option<KeyValue>)>;

/// Every TCP counter the Prometheus endpoint has, under OpenTelemetry naming.
pub const TCP_INSTRUMENTS: &[(&str, &str, &str, Reading)] = &[
    (
        "collector.tcp.sent",
        "By",
        "Bytes accepted by successful TCP sendmsg calls",
        |s| vec![(s.bytes_sent, None)],
    ),
    (
        "collector.tcp.send.calls",
        "{call}",
        "Successful TCP sendmsg calls",
        |s| vec![(s.send_calls, None)],
    ),
    (
        "collector.tcp.send.errors",
        "{call}",
        "TCP sendmsg calls that failed, by error.type",
        |s| {
            vec![
                (s.send_err_pipe, Some(KeyValue::new("error.type", "epipe"))),
                (
                    s.send_err_reset,
                    Some(KeyValue::new("error.type", "econnreset")),
                ),
                (s.send_err_other, Some(KeyValue::new("error.type", "other"))),
            ]
        },
    ),
    (
        "collector.tcp.send.would_block",
        "{call}",
        "TCP sendmsg calls that returned EAGAIN",
        |s| vec![(s.send_would_block, None)],
    ),
    (
        "collector.tcp.retransmitted_segments",
        "{segment}",
        "TCP segments retransmitted",
        |s| vec![(s.retransmit_segs, None)],
    ),
    (
        "collector.tcp.resets.sent",
        "{segment}",
        "TCP RST segments sent",
        |s| vec![(s.resets_sent, None)],
    ),
    (
        "collector.tcp.resets.received",
        "{segment}",
        "TCP RST segments received",
        |s| vec![(s.resets_received, None)],
    ),
    (
        "collector.tcp.connects.failed",
        "{connection}",
        "Outgoing TCP connects that failed, by error.type",
        |s| {
            vec![
                (
                    s.connects_refused,
                    Some(KeyValue::new("error.type", "econnrefused")),
                ),
                (
                    s.connects_timed_out,
                    Some(KeyValue::new("error.type", "etimedout")),
                ),
                (
                    s.connects_failed_other,
                    Some(KeyValue::new("error.type", "other")),
                ),
            ]
        },
    ),
    (
        "collector.tcp.connections.opened",
        "{connection}",
        "TCP connections established, by direction",
        |s| {
            vec![
                (s.active_opens, Some(KeyValue::new("direction", "active"))),
                (s.passive_opens, Some(KeyValue::new("direction", "passive"))),
            ]
        },
    ),
    (
        "collector.tcp.connections.closed",
        "{connection}",
        "Established TCP connections that closed",
        |s| vec![(s.closes, None)],
    ),
];

fn register_instruments(provider: &SdkMeterProvider, metrics: Arc<Metrics>) {
    let meter = provider.meter_with_scope(scope());
    // Semantic convention http.server.request.duration, with the convention's boundaries.
    let duration = meter
        .f64_histogram(HTTP_DURATION.0)
        .with_unit(HTTP_DURATION.1)
        .with_description(HTTP_DURATION.2)
        .with_boundaries(super::http::DURATION_BUCKETS.to_vec())
        .build();
    let _ = metrics.http.otel_duration.set(duration);
    // Semantic convention rpc.server.duration (ms), the HTTP boundaries scaled to ms.
    let rpc = meter
        .f64_histogram(RPC_DURATION.0)
        .with_unit(RPC_DURATION.1)
        .with_description(RPC_DURATION.2)
        .with_boundaries(
            super::http::DURATION_BUCKETS
                .iter()
                .map(|b| b * 1000.0)
                .collect(),
        )
        .build();
    let _ = metrics.grpc.otel_duration.set(rpc);
    for (name, unit, description, read) in TCP_INSTRUMENTS {
        let m = metrics.clone();
        let read = *read;
        // The instrument lives as long as the provider; the handle is not needed.
        let _ = meter
            .u64_observable_counter(*name)
            .with_unit(*unit)
            .with_description(*description)
            .with_callback(move |observer| {
                for (workload, stats) in m.tcp.snapshot() {
                    let base = resource_attributes(&workload);
                    for (value, extra) in read(&stats) {
                        // Like the Prometheus side: a zero counter creates no series.
                        if value == 0 {
                            continue;
                        }
                        let mut attrs = base.clone();
                        attrs.extend(extra);
                        observer.observe(value, &attrs);
                    }
                }
            })
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PodNames;

    fn kv(key: &str, value: &str) -> ProtoKeyValue {
        proto_kv(key, value.to_string())
    }

    fn point(attrs: &[(&str, &str)], v: i64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
            value: Some(
                opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v),
            ),
            ..Default::default()
        }
    }

    fn keys(attrs: &[ProtoKeyValue]) -> Vec<(String, String)> {
        attrs
            .iter()
            .map(|a| {
                let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (a.key.clone(), v)
            })
            .collect()
    }

    /// A resource's attributes, and per metric its points' attributes.
    type Summary = (
        Vec<(String, String)>,
        Vec<(String, Vec<Vec<(String, String)>>)>,
    );

    /// Catches: every workload in one resource (the SDK's shape: the node as the resource), a
    /// workload split over several resources (one per metric), resource keys left on points
    /// (double identity), measurement attributes (`error.type`) lifted onto the resource.
    #[test]
    fn one_resource_per_workload_with_measurement_attributes_left_on_points() {
        let a = [
            ("workload.kind", "pod"),
            ("k8s.pod.uid", "u1"),
            ("service.name", "web"),
        ];
        let b = [
            ("workload.kind", "pod"),
            ("k8s.pod.uid", "u2"),
            ("service.name", "db"),
        ];
        let with = |w: &[(&'static str, &'static str)], extra: (&'static str, &'static str)| {
            let mut v = w.to_vec();
            v.push(extra);
            v
        };
        let sum = |name: &str, points: Vec<NumberDataPoint>| Metric {
            name: name.into(),
            unit: "1".into(),
            data: Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ProtoResourceMetrics {
                resource: Some(ProtoResource::default()),
                scope_metrics: vec![ScopeMetrics {
                    scope: None,
                    metrics: vec![
                        sum(
                            "errors",
                            vec![
                                point(&with(&a, ("error.type", "epipe")), 1),
                                point(&with(&b, ("error.type", "epipe")), 2),
                                point(&with(&a, ("error.type", "other")), 3),
                            ],
                        ),
                        sum("sent", vec![point(&b, 5), point(&a, 7)]),
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let out = split_by_workload(request, &[kv("host.name", "h")]);
        let summary: Vec<Summary> = out
            .resource_metrics
            .iter()
            .map(|rm| {
                let res = keys(&rm.resource.as_ref().expect("resource").attributes);
                let metrics = rm.scope_metrics[0]
                    .metrics
                    .iter()
                    .map(|m| {
                        let Some(Data::Sum(s)) = &m.data else {
                            return (m.name.clone(), vec![]);
                        };
                        let points = s.data_points.iter().map(|p| keys(&p.attributes));
                        (m.name.clone(), points.collect())
                    })
                    .collect();
                (res, metrics)
            })
            .collect();
        let s = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            summary,
            vec![
                (
                    s(&[
                        ("host.name", "h"),
                        ("k8s.pod.uid", "u1"),
                        ("service.name", "web"),
                        ("workload.kind", "pod")
                    ]),
                    vec![
                        (
                            "errors".into(),
                            vec![s(&[("error.type", "epipe")]), s(&[("error.type", "other")])]
                        ),
                        ("sent".into(), vec![s(&[])]),
                    ]
                ),
                (
                    s(&[
                        ("host.name", "h"),
                        ("k8s.pod.uid", "u2"),
                        ("service.name", "db"),
                        ("workload.kind", "pod")
                    ]),
                    vec![
                        ("errors".into(), vec![s(&[("error.type", "epipe")])]),
                        ("sent".into(), vec![s(&[])]),
                    ]
                ),
            ]
        );
    }

    /// Catches: an owner kind mapped to the wrong semantic-convention key, labels outside the
    /// pod's allow-listed set, a `service.name` that is not the Service, process workloads
    /// without their executable.
    #[test]
    fn resource_attributes_follow_the_semantic_conventions() {
        let render = |w: &WorkloadLabels| -> Vec<(String, String)> {
            resource_attributes(w)
                .into_iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect()
        };
        let pod = WorkloadLabels {
            workload_kind: "pod",
            workload: "statefulset/db".into(),
            pod_uid: "u1".into(),
            container_id: "c1".into(),
            kubernetes: super::super::prometheus::KubernetesLabels(Some(PodNames {
                namespace: "shop".into(),
                pod: "db-0".into(),
                container: "pg".into(),
                workload: "statefulset/db".into(),
                service: "db,db-headless".into(),
                labels: [("app".to_string(), "db".to_string())].into(),
            })),
        };
        let s = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            render(&pod),
            s(&[
                ("workload.kind", "pod"),
                ("workload.name", "statefulset/db"),
                ("k8s.pod.uid", "u1"),
                ("container.id", "c1"),
                ("k8s.namespace.name", "shop"),
                ("service.namespace", "shop"),
                ("k8s.pod.name", "db-0"),
                ("k8s.container.name", "pg"),
                ("k8s.statefulset.name", "db"),
                ("k8s.service.names", "db,db-headless"),
                ("k8s.pod.label.app", "db"),
                ("service.name", "db"),
            ])
        );
        let kind = crate::identity::WorkloadKind::Process.as_str();
        let process = WorkloadLabels {
            workload_kind: kind,
            workload: "nginx".into(),
            pod_uid: String::new(),
            container_id: String::new(),
            kubernetes: Default::default(),
        };
        assert_eq!(
            render(&process),
            s(&[
                ("workload.kind", kind),
                ("workload.name", "nginx"),
                ("process.executable.name", "nginx"),
                ("service.name", "nginx"),
            ])
        );
    }
}

//! OTLP metrics push (gRPC or HTTP/protobuf) with the OpenTelemetry SDK.
//!
//! The exporter reads the same exact cumulative totals the Prometheus endpoint serves
//! (`TcpMetrics::snapshot`) through observable counters, so both outputs agree. Temporality is
//! cumulative: an export that fails loses nothing, the next successful one carries the totals.
//! Exports run as tokio tasks of the SDK's periodic reader, never on the aggregator; the OTLP
//! client retries with backoff inside each attempt's timeout; failures are counted
//! (`collector_otlp_exports_total{result="failure"}`) and logged at most once a minute.
//!
//! Names (documented in docs/metrics.md): `collector.tcp.*`, with the workload as point
//! attributes (`workload.kind`, `workload.name`, `k8s.pod.uid`, `container.id`) and the node as
//! the resource (`service.name`, `service.version`, `host.name`). One SDK meter provider has one
//! resource, and a provider per workload would mean one request per workload per interval.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry::{KeyValue, metrics::MeterProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        SdkMeterProvider, Temporality, data::ResourceMetrics, exporter::PushMetricExporter,
        periodic_reader_with_async_runtime::PeriodicReader,
    },
    runtime,
};
use tracing::{info, warn};

use super::{
    Metrics,
    prometheus::{ResultLabels, WorkloadLabels},
};
use crate::config::{OtlpConfig, OtlpProtocol};
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
    #[error("building the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// A running OTLP push. Shut it down to flush a final export.
pub struct OtlpExporter {
    provider: SdkMeterProvider,
}

impl OtlpExporter {
    /// Must be called inside the tokio runtime (the gRPC channel and the reader live there).
    pub fn start(cfg: &OtlpConfig, metrics: Arc<Metrics>) -> Result<Self, OtlpError> {
        // One process-wide rustls provider for both transports; an error only means it is set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = match cfg.protocol {
            OtlpProtocol::Grpc => grpc_exporter(cfg)?,
            OtlpProtocol::HttpProtobuf => http_exporter(cfg)?,
        };
        let exporter = CountingExporter {
            inner: exporter,
            metrics: metrics.clone(),
            log: Mutex::new(LogLimiter::default()),
        };
        let reader = PeriodicReader::builder(exporter, runtime::Tokio)
            .with_interval(cfg.interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource())
            .with_reader(reader)
            .build();
        register_instruments(&provider, metrics);
        info!(endpoint = %cfg.endpoint, protocol = ?cfg.protocol, interval = ?cfg.interval, "OTLP metrics push enabled");
        Ok(Self { provider })
    }

    /// Exports each workload's health verdict as the gauge `collector.verdict` (1, with the
    /// state as the `health.state` attribute), read from the verdict engine's latest snapshot.
    pub fn export_verdicts(&self, verdicts: crate::verdict::SharedVerdicts) {
        let _ = self
            .provider
            .meter("collector")
            .u64_observable_gauge(VERDICT.0)
            .with_unit(VERDICT.1)
            .with_description(VERDICT.2)
            .with_callback(move |observer| {
                let snapshot = verdicts.read().unwrap_or_else(|e| e.into_inner()).clone();
                for w in &snapshot.workloads {
                    let mut attrs = vec![
                        KeyValue::new("workload.kind", w.kind),
                        KeyValue::new("workload.name", w.name.clone()),
                        KeyValue::new("health.state", w.state.as_str()),
                        KeyValue::new("health.probe_mismatch", w.probe_mismatch),
                    ];
                    if !w.pod_uid.is_empty() {
                        attrs.push(KeyValue::new("k8s.pod.uid", w.pod_uid.clone()));
                    }
                    if !w.container_id.is_empty() {
                        attrs.push(KeyValue::new("container.id", w.container_id.clone()));
                    }
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "collector"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("host.name", hostname()),
        ])
        .build()
}

fn read_pem(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, OtlpError> {
    std::fs::read(path).map_err(|source| OtlpError::ReadPem {
        what,
        path: path.into(),
        source,
    })
}

fn grpc_exporter(cfg: &OtlpConfig) -> Result<opentelemetry_otlp::MetricExporter, OtlpError> {
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
    let mut builder = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(cfg.timeout)
        .with_metadata(metadata)
        .with_temporality(Temporality::Cumulative);
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
        builder = builder.with_tls_config(tls);
    }
    Ok(builder.build()?)
}

fn http_exporter(cfg: &OtlpConfig) -> Result<opentelemetry_otlp::MetricExporter, OtlpError> {
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
    let headers: HashMap<String, String> = cfg.headers.iter().cloned().collect();
    Ok(opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(cfg.timeout)
        .with_headers(headers)
        .with_temporality(Temporality::Cumulative)
        .build()?)
}

/// One warning per minute at most, with how many failures it stands for.
#[derive(Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

const LOG_EVERY: Duration = Duration::from_secs(60);

struct CountingExporter<E> {
    inner: E,
    metrics: Arc<Metrics>,
    log: Mutex<LogLimiter>,
}

impl<E: PushMetricExporter> PushMetricExporter for CountingExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .collector
            .otlp_exports
            .get_or_create(&ResultLabels { result: outcome })
            .inc();
        if let Err(e) = &result {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if log.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                warn!(error = %e, failures_since_last_report = log.suppressed + 1, "OTLP export failed; retrying next interval");
                log.last = Some(now);
                log.suppressed = 0;
            } else {
                log.suppressed += 1;
            }
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

fn workload_attrs(w: &WorkloadLabels) -> Vec<KeyValue> {
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
    attrs
}

/// Instruments beyond the TCP counters: (name, unit, description, attributes besides the
/// workload's). Registration and docs/metrics.md both read these.
pub const HTTP_DURATION: (&str, &str, &str, &str) = (
    "http.server.request.duration",
    "s",
    "Duration of HTTP server requests (histogram, semantic-convention buckets; probe paths excluded)",
    "`http.request.method`, `http.route`, `http.response.status_code`, `error.type`",
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
    let meter = provider.meter("collector");
    // Semantic convention http.server.request.duration, with the convention's boundaries.
    let duration = meter
        .f64_histogram(HTTP_DURATION.0)
        .with_unit(HTTP_DURATION.1)
        .with_description(HTTP_DURATION.2)
        .with_boundaries(super::http::DURATION_BUCKETS.to_vec())
        .build();
    let _ = metrics.http.otel_duration.set(duration);
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
                    let base = workload_attrs(&workload);
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

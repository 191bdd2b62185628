//! Configuration: command line over an optional TOML file over defaults, validated into
//! `Config`. Nothing here reads the process environment or exits; errors are typed.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use serde::Deserialize;

use crate::{
    probes::{Rung, Signal, ladder::LadderPlan},
    verdict::{
        VerdictConfig,
        rules::{State, Thresholds},
    },
};

/// Loopback unless configured: the API shows process ids, executable and cgroup paths. A
/// host-network DaemonSet sets its pod IP (`--listen $(POD_IP):9464`) and a token or TLS.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_HARVEST_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_WORKLOADS: usize = 2_000;
pub const DEFAULT_RING_BUFFER_BYTES: u32 = collector_common::maps::EVENTS_BYTES;

/// eBPF health signal collector: watches real traffic from the kernel and exports per-workload
/// TCP signals.
///
/// Every option can also be set in the TOML file given with --config (same names, with
/// underscores); the command line wins over the file.
#[derive(Debug, Default, Parser)]
#[command(name = "collector", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the HTTP endpoint serving /metrics, /healthz, /readyz, /v1/probes and the
    /// verdict API (/v1/workloads, /v1/workload, /v1/pods/UID/health|ready; docs/openapi.json).
    /// Beyond loopback, set --api-token-file and/or TLS (a warning is logged otherwise).
    /// [default: 127.0.0.1:9464]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// How often kernel counters are harvested into metrics, e.g. "1s", "500ms" (100ms–60s).
    /// [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub harvest_interval: Option<String>,

    /// Hook ladder of one signal, in the order to try, e.g. "tcp_send=tp_btf,tracepoint".
    /// A single rung forces that rung. Repeatable. Signals: tcp_send, tcp_retransmit,
    /// tcp_retransmit_synack, tcp_state, tcp_reset_sent, tcp_reset_received, tcp_destroy. Rungs: kprobe, fentry,
    /// tp_btf, raw_tp, tracepoint. [default: kprobe,fentry,tp_btf,raw_tp,tracepoint for
    /// tcp_send, tcp_retransmit and tcp_retransmit_synack; tp_btf,raw_tp,tracepoint for the others]
    #[arg(long = "ladder", value_name = "SIGNAL=RUNG[,RUNG...]")]
    pub ladder: Vec<String>,

    /// A signal that must attach or the collector refuses to start ("all" for every signal).
    /// Repeatable. [default: none: unavailable signals are logged and exported as
    /// collector_signal_rung{rung="unavailable"}]
    #[arg(long = "require", value_name = "SIGNAL|all")]
    pub require: Vec<String>,

    /// cgroup2 mount used to map cgroup ids to paths. [default: found in /proc/self/mountinfo]
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,

    /// A cgroup under which the kubelet creates pods, relative to the cgroup2 mount, e.g.
    /// "/kubepods.slice" ("*" stands for one path component). A pod cgroup anywhere else (a
    /// user's delegation, another container) names no pod. Repeatable; replaces the defaults.
    /// [default: /kubepods.slice, /kubepods, /kubelet.slice/kubelet-kubepods.slice,
    /// /kubelet/kubepods, /system.slice/containerd.service, and roots detected at start-up]
    #[arg(long = "kubelet-cgroup-root", value_name = "PATH")]
    pub kubelet_cgroup_roots: Vec<String>,

    /// File holding a bearer token required on /v1/* (not /metrics, /healthz, /readyz), e.g. a
    /// mounted Secret. [default: none, no authentication]
    #[arg(long, value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Also accept on /v1/* the bearer tokens the Kubernetes API server authenticates
    /// (TokenReview), for paths RBAC lets their user `get` (SubjectAccessReview of the
    /// non-resource URL, e.g. nonResourceURLs ["/v1/*"]). Needs the Kubernetes API
    /// (--node-name) and the right to create tokenreviews and subjectaccessreviews
    /// (deploy/api-auth-rbac.yaml). [default: off]
    #[arg(long)]
    pub api_auth_kubernetes: bool,

    /// PEM certificate chain to serve the API over TLS (with --api-tls-key).
    #[arg(long, value_name = "FILE")]
    pub api_tls_cert: Option<PathBuf>,

    /// PEM private key for --api-tls-cert.
    #[arg(long, value_name = "FILE")]
    pub api_tls_key: Option<PathBuf>,

    /// API connections served at once; past it the longest-idle connection is closed (or the
    /// new one when all are busy). [default: 256]
    #[arg(long, value_name = "N")]
    pub api_max_connections: Option<usize>,

    /// Ring buffer size in bytes (a power of two, at least 4096). [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,

    /// Maximum workloads with their own series; further ones are exported as
    /// workload_kind="overflow". [default: 2000]
    #[arg(long, value_name = "N")]
    pub max_workloads: Option<usize>,

    /// Request path counted as probe traffic (kept out of the request-duration histogram and
    /// counted in http_server_probe_requests_total). Repeatable; replaces the defaults.
    /// [default: /healthz, /livez, /readyz, /health]
    #[arg(long = "probe-path", value_name = "PATH")]
    pub probe_paths: Vec<String>,

    /// Distinct HTTP routes per workload before further ones are charged to
    /// route="__overflow__". [default: 100]
    #[arg(long, value_name = "N")]
    pub max_routes: Option<usize>,

    /// Emit a per-request record for 1 in N Go HTTP requests (request counters stay exact).
    /// [default: 1, every request]
    #[arg(long, value_name = "N")]
    pub http_sample_every: Option<u32>,

    /// Per-request records per second userspace processes before sampling starts (1 in N, N
    /// doubling until under budget; request counts stay exact). 0 disables automatic sampling.
    /// [default: 20000]
    #[arg(long, value_name = "RECORDS_PER_SECOND")]
    pub http_event_budget: Option<u64>,

    /// Do not parse HTTP/1.x from server sockets' packets (the default source of request
    /// metrics: every language, no trap, exact counts).
    #[arg(long)]
    pub no_http_socket: bool,

    /// Go net/http uprobes: "auto" attaches them only to Go servers whose sockets speak TLS or
    /// h2c (what the socket parser cannot read) and counts only those requests there
    /// (plaintext HTTP/1.x stays the parser's, trap-free); "all" instruments every Go server
    /// (route templates of Go routers too; about 3 traps per request, ~45 µs here) and needs
    /// --no-http-socket; "off" leaves Go servers to the socket parser. [default: auto]
    #[arg(long, value_name = "MODE")]
    pub go_http_uprobes: Option<String>,

    /// Same as --go-http-uprobes off (kept for existing command lines).
    #[arg(long, hide = true)]
    pub no_go_http: bool,

    /// With --go-http-uprobes all: do not probe Go routers (gin, echo, chi, gorilla/mux) for
    /// route templates. The probe is one more trap per request (~15 µs here) in servers that
    /// link a router; without it their requests keep normalised paths.
    #[arg(long)]
    pub no_go_router_templates: bool,

    /// grpc-go server uprobes: "off", or "all" to instrument every Go gRPC server
    /// (google.golang.org/grpc) with uprobes: exact RPC counts by method and status code,
    /// durations. Two traps per RPC (~15 µs each here), so opt-in. Independent of the HTTP
    /// sources (the socket parser reads HTTP/1.x only). [default: off]
    #[arg(long, value_name = "MODE")]
    pub go_grpc_uprobes: Option<String>,

    /// gRPC status codes that are the server's failures in verdicts (names or numbers,
    /// comma-separated). Others — NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED… — answer the
    /// client's request and are not. [default: UNKNOWN,DEADLINE_EXCEEDED,INTERNAL,UNAVAILABLE,DATA_LOSS]
    #[arg(long, value_name = "CODES", value_delimiter = ',')]
    pub grpc_error_codes: Vec<String>,

    /// OTLP metrics endpoint, e.g. "http://otel-collector:4317" (gRPC) or
    /// "http://otel-collector:4318" (HTTP; "/v1/metrics" is appended to a bare host). Setting it
    /// (or OTEL_EXPORTER_OTLP_METRICS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT) enables the push.
    /// https:// endpoints use TLS. [default: off]
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: "grpc" or "http/protobuf" (OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL).
    /// [default: http/protobuf, the OpenTelemetry default]
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Extra OTLP request header "key=value", repeatable (OTEL_EXPORTER_OTLP_[METRICS_]HEADERS,
    /// comma-separated).
    #[arg(long = "otlp-header", value_name = "KEY=VALUE")]
    pub otlp_headers: Vec<String>,

    /// OTLP export interval (OTEL_METRIC_EXPORT_INTERVAL, in ms). [default: 15s]
    #[arg(long, value_name = "DURATION")]
    pub otlp_interval: Option<String>,

    /// OTLP export timeout per attempt (OTEL_EXPORTER_OTLP_[METRICS_]TIMEOUT, in ms). [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub otlp_timeout: Option<String>,

    /// PEM file of CA certificates to verify the OTLP endpoint
    /// (OTEL_EXPORTER_OTLP_[METRICS_]CERTIFICATE). [default: the system's roots]
    #[arg(long, value_name = "FILE")]
    pub otlp_ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (OTEL_EXPORTER_OTLP_[METRICS_]CLIENT_CERTIFICATE).
    #[arg(long, value_name = "FILE")]
    pub otlp_client_cert: Option<PathBuf>,

    /// PEM client key for mutual TLS (OTEL_EXPORTER_OTLP_[METRICS_]CLIENT_KEY).
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key: Option<PathBuf>,

    /// How OTLP exports the request-duration histogram: "explicit" (the semantic convention's
    /// bucket boundaries, accepted by every receiver) or "exponential" (base-2 exponential
    /// buckets, ≤ 2.2 % relative width at the usual ranges; needs a receiver that accepts them,
    /// e.g. the OpenTelemetry Collector, Prometheus with native histograms).
    /// (OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION: explicit_bucket_histogram or
    /// base2_exponential_bucket_histogram) [default: explicit]
    #[arg(long, value_name = "KIND")]
    pub otlp_histogram: Option<String>,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "collector=debug". [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,

    /// Log line format: "text" (for a person) or "json" (one object per line, for a log
    /// pipeline). [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Kernel-side diagnostics (drops and their reasons, failed map inserts, missed returns,
    /// unexpected socket states) logged as target collector::kernel::*: "off", "error", "warn",
    /// "info", "debug" or "trace". Changeable while running: PUT
    /// /v1/debug/kernel-log?level=LEVEL. Free when off. [default: off]
    #[arg(long, value_name = "LEVEL")]
    pub kernel_log: Option<String>,

    /// Length of one verdict window bucket; a verdict is evaluated each time one closes
    /// (100ms–10m). [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub verdict_bucket: Option<String>,

    /// Buckets per (long) verdict window (1–360); the fast windows are a tenth, a fifth and a
    /// third of it, the recent window a sixth. [default: 30, i.e. 30 s with 1 s buckets]
    #[arg(long, value_name = "N")]
    pub verdict_buckets: Option<usize>,

    /// Verdict state for which /v1/.../ready answers 503, repeatable (healthy, degraded,
    /// unhealthy, unknown). [default: unhealthy]
    #[arg(long = "readiness-fail-on", value_name = "STATE")]
    pub readiness_fail_on: Vec<String>,

    /// This node's name: enables pod names, owners and Services from the Kubernetes API (a
    /// watch of the pods bound to this node). [env: NODE_NAME; default: none, no Kubernetes]
    #[arg(long, value_name = "NODE")]
    pub node_name: Option<String>,

    /// kubeconfig for the Kubernetes API. [default: the in-cluster service account]
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// A pod label to export (repeatable, or comma-separated; at most 16): `label_<name>` on
    /// Prometheus series (characters outside [a-zA-Z0-9_] as `_`), `k8s.pod.label.<name>` on
    /// OTLP resources. [default: none]
    #[arg(long = "pod-label", value_name = "LABEL", value_delimiter = ',')]
    pub pod_labels: Vec<String>,

    /// Readiness gates of opted-in pods: off (all True), advisory (True, with what enforce
    /// would do in the reason), enforce (False for an unhealthy verdict, within the caps).
    /// [default: advisory]
    #[arg(long, value_name = "MODE")]
    pub readiness_gates: Option<String>,
}

/// How log lines are written. The JSON field names (`timestamp`, `level`, `target`, `fields`
/// with `message`, `span`, `spans`) are tracing-subscriber's and stable across its 0.3 releases.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What to do; the default is `run`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Run the collector (the default).
    Run,
    /// Print the verdicts of a running collector as a table.
    Status {
        /// Base URL of the collector's API.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9464")]
        api: String,
    },
    /// Set the readiness-gate condition True on pods whose node's collector Lease expired
    /// (one replica per cluster, leader-elected; no eBPF).
    Watchdog {
        /// kubeconfig. [default: the in-cluster service account]
        #[arg(long, value_name = "FILE")]
        kubeconfig: Option<PathBuf>,
        /// Namespace of the node Leases and of the leader Lease.
        #[arg(long, default_value = crate::kubernetes::gate::DEFAULT_LEASE_NAMESPACE)]
        namespace: String,
        /// This replica's name in the leader Lease. [env: POD_NAME; default: the host name]
        #[arg(long)]
        identity: Option<String>,
        /// How often the leader checks the Leases and pods.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        interval: String,
        /// The leader Lease's duration, also assumed for a node that never had a Lease.
        #[arg(long, value_name = "DURATION", default_value = "40s")]
        lease_duration: String,
    },
}

/// The file form; every field optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub harvest_interval: Option<String>,
    pub ladder: Option<BTreeMap<String, Vec<String>>>,
    pub require: Option<Vec<String>>,
    pub cgroup_root: Option<PathBuf>,
    pub kubelet_cgroup_roots: Option<Vec<String>>,
    pub api: Option<FileApi>,
    pub ring_buffer_bytes: Option<u32>,
    pub max_workloads: Option<usize>,
    pub log: Option<String>,
    pub log_format: Option<LogFormat>,
    /// Kernel-side diagnostics level at start (`--kernel-log`).
    pub kernel_log: Option<String>,
    pub otlp: Option<FileOtlp>,
    pub probe_paths: Option<Vec<String>>,
    pub max_routes: Option<usize>,
    pub http_sample_every: Option<u32>,
    pub http_event_budget: Option<u64>,
    /// Go net/http uprobes: "off", "auto" or "all".
    pub go_http_uprobes: Option<String>,
    /// With the Go net/http uprobes: route templates of Go routers (default true).
    pub go_router_templates: Option<bool>,
    /// grpc-go server uprobes: "off" or "all".
    pub go_grpc_uprobes: Option<String>,
    /// gRPC status codes that count as server failures in verdicts.
    pub grpc_error_codes: Option<Vec<String>>,
    /// The socket-level HTTP/1.x parser.
    pub http_socket: Option<bool>,
    pub verdict: Option<FileVerdict>,
    pub kubernetes: Option<FileKubernetes>,
    pub readiness: Option<FileReadiness>,
}

/// `[readiness]`: readiness gates (docs/kubernetes.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReadiness {
    pub mode: Option<String>,
    pub false_on: Option<Vec<String>>,
    pub service_floor: Option<f64>,
    pub node_share: Option<f64>,
    pub flip_window: Option<String>,
    pub interval: Option<String>,
    pub lease_namespace: Option<String>,
    pub lease_renew: Option<String>,
    pub lease_duration: Option<String>,
}

/// `[kubernetes]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKubernetes {
    pub node_name: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub pod_labels: Option<Vec<String>>,
}

/// `[verdict]` section of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVerdict {
    pub bucket: Option<String>,
    pub buckets: Option<usize>,
    pub expire_windows: Option<u32>,
    pub enter_after: Option<u32>,
    pub leave_after: Option<u32>,
    pub min_requests: Option<u64>,
    pub min_send_calls: Option<u64>,
    pub error_ratio: Option<Thresholds>,
    pub p95_ms: Option<Thresholds>,
    pub p99_ms: Option<Thresholds>,
    pub retransmit_ratio: Option<Thresholds>,
    pub resets_per_second: Option<Thresholds>,
    pub failed_connects_per_second: Option<Thresholds>,
    pub readiness_fail_on: Option<Vec<String>>,
}

/// `[api]` section of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApi {
    pub token_file: Option<PathBuf>,
    /// `--api-auth-kubernetes`.
    pub kubernetes_auth: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_connections: Option<usize>,
}

/// `[otlp]` section of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOtlp {
    pub histogram: Option<String>,
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// Validated OTLP push settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub histogram: OtlpHistogram,
}

/// The aggregation of OTLP duration histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OtlpHistogram {
    /// Explicit bucket boundaries (the semantic convention's): the OpenTelemetry
    /// specification's default, which every receiver accepts.
    #[default]
    Explicit,
    /// Base-2 exponential buckets (scale chosen by the SDK for the observed range, at most 160
    /// buckets): far finer quantiles, for receivers that accept exponential histograms.
    Exponential,
}

pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where environment variables come from: the process in `main`, a map in tests. Config never
/// reads the process environment itself.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub harvest_interval: Duration,
    pub ladder: LadderPlan,
    pub cgroup_root: Option<PathBuf>,
    /// Where pods are recognised; empty: the defaults plus what is detected at start-up.
    pub kubelet_cgroup_roots: Vec<String>,
    /// How the API is served (token, TLS, limits).
    pub api: crate::api::server::ServerConfig,
    pub ring_buffer_bytes: u32,
    pub max_workloads: usize,
    pub log: String,
    pub log_format: LogFormat,
    /// Kernel-side diagnostics at start; changed at run time through the API.
    pub kernel_log: crate::events::kernel_log::KernelLogLevel,
    /// None: no OTLP push.
    pub otlp: Option<OtlpConfig>,
    pub http: HttpConfig,
    pub verdict: VerdictConfig,
    /// None: no Kubernetes API (pods are known by UID only).
    pub kubernetes: Option<crate::kubernetes::KubernetesConfig>,
    /// Readiness gates (used with `kubernetes`).
    pub readiness: crate::kubernetes::gate::ReadinessConfig,
}

/// Which Go net/http servers get uprobes (`--go-http-uprobes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GoUprobes {
    /// None: Go servers are measured by the socket parser alone (plaintext HTTP/1.x).
    Off,
    /// Only the Go servers whose sockets speak what the socket parser cannot read (TLS, h2c),
    /// and there only those requests: plaintext HTTP/1.x stays trap-free, and HTTPS and HTTP/2
    /// are still counted. Next to the socket parser.
    #[default]
    Auto,
    /// Every Go server, every request (route templates of Go routers, HTTPS), instead of the
    /// socket parser: about three traps per request.
    All,
}

/// HTTP request metrics: where they come from, and how records are bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Parse HTTP/1.x from server sockets' packets (`probes::http_wire`).
    pub socket: bool,
    /// Which Go net/http servers get uprobes (`probes::go_http`).
    pub uprobes: GoUprobes,
    /// With `uprobes`: probe Go routers for route templates (`probes::go_http::routers`).
    pub router_templates: bool,
    /// Instrument every grpc-go server with uprobes (`probes::go_grpc`).
    pub grpc_uprobes: bool,
    /// gRPC status codes that are server failures in verdicts (the 5xx of gRPC).
    pub grpc_error_codes: Vec<u16>,
    pub probe_paths: Vec<String>,
    pub max_routes: usize,
    /// The minimum 1-in-N for records (1 = every request).
    pub sample_every: u32,
    /// Records per second before sampling adapts upwards; 0 = never.
    pub event_budget: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            socket: true,
            uprobes: GoUprobes::Auto,
            router_templates: true,
            grpc_uprobes: false,
            grpc_error_codes: DEFAULT_GRPC_ERROR_CODES.to_vec(),
            probe_paths: DEFAULT_PROBE_PATHS.iter().map(|p| p.to_string()).collect(),
            max_routes: DEFAULT_MAX_ROUTES,
            sample_every: 1,
            event_budget: DEFAULT_HTTP_EVENT_BUDGET,
        }
    }
}

/// gRPC codes that are the server's failures by default: UNKNOWN, DEADLINE_EXCEEDED, INTERNAL,
/// UNAVAILABLE, DATA_LOSS (RESOURCE_EXHAUSTED is often a client's quota: add it if it is not).
pub const DEFAULT_GRPC_ERROR_CODES: [u16; 5] = [2, 4, 13, 14, 15];

pub const DEFAULT_PROBE_PATHS: [&str; 4] = ["/healthz", "/livez", "/readyz", "/health"];
pub const DEFAULT_MAX_ROUTES: usize = 100;
pub const DEFAULT_HTTP_EVENT_BUDGET: u64 = 20_000;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9464))),
            harvest_interval: DEFAULT_HARVEST_INTERVAL,
            ladder: LadderPlan::default(),
            cgroup_root: None,
            kubelet_cgroup_roots: Vec::new(),
            api: crate::api::server::ServerConfig::default(),
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            max_workloads: DEFAULT_MAX_WORKLOADS,
            log: "info".into(),
            log_format: LogFormat::Text,
            kernel_log: Default::default(),
            otlp: None,
            http: HttpConfig::default(),
            verdict: VerdictConfig::default(),
            kubernetes: None,
            readiness: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
}

fn invalid(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        message: message.into(),
    }
}

/// Parses "500ms", "1s", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s or m)"))?;
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

fn parse_ladder_arg(arg: &str) -> Result<(String, Vec<String>), ConfigError> {
    let (signal, rungs) = arg
        .split_once('=')
        .ok_or_else(|| invalid("--ladder", format!("{arg:?} is not SIGNAL=RUNG[,RUNG...]")))?;
    Ok((
        signal.trim().to_string(),
        rungs.split(',').map(|r| r.trim().to_string()).collect(),
    ))
}

impl Config {
    /// Reads the file named by `--config` (if any) and merges.
    pub fn load(cli: &Cli, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file, env)
    }

    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Command line over file over environment over defaults, validated.
    pub fn merge(cli: &Cli, file: FileConfig, env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let d = Config::default();
        let listen = match cli.listen.clone().or(file.listen) {
            Some(s) => s
                .parse()
                .map_err(|e| invalid("listen", format!("{s:?}: {e}")))?,
            None => d.listen,
        };
        let harvest_interval = match cli.harvest_interval.clone().or(file.harvest_interval) {
            Some(s) => parse_duration(&s).map_err(|e| invalid("harvest_interval", e))?,
            None => d.harvest_interval,
        };
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&harvest_interval) {
            return Err(invalid("harvest_interval", "must be between 100ms and 60s"));
        }

        let mut ladder = d.ladder;
        let mut entries: Vec<(String, Vec<String>)> =
            file.ladder.unwrap_or_default().into_iter().collect();
        for arg in &cli.ladder {
            entries.push(parse_ladder_arg(arg)?);
        }
        for (signal, rungs) in entries {
            let signal: Signal = signal.parse().map_err(|e| invalid("ladder", e))?;
            let mut order = Vec::new();
            for r in rungs {
                let rung: Rung = r.parse().map_err(|e| invalid("ladder", e))?;
                if !signal.default_ladder().contains(&rung) {
                    return Err(invalid("ladder", format!("{signal} has no {rung} rung")));
                }
                if order.contains(&rung) {
                    return Err(invalid("ladder", format!("{signal}: {rung} listed twice")));
                }
                order.push(rung);
            }
            if order.is_empty() {
                return Err(invalid("ladder", format!("{signal}: no rungs")));
            }
            ladder.order.insert(signal, order);
        }
        let require: Vec<String> = if cli.require.is_empty() {
            file.require.unwrap_or_default()
        } else {
            cli.require.clone()
        };
        for r in require {
            if r == "all" {
                ladder.required = Signal::ALL.to_vec();
            } else {
                let s: Signal = r.parse().map_err(|e| invalid("require", e))?;
                if !ladder.required.contains(&s) {
                    ladder.required.push(s);
                }
            }
        }

        let ring_buffer_bytes = cli
            .ring_buffer_bytes
            .or(file.ring_buffer_bytes)
            .unwrap_or(d.ring_buffer_bytes);
        if ring_buffer_bytes < 4096 || !ring_buffer_bytes.is_power_of_two() {
            return Err(invalid(
                "ring_buffer_bytes",
                format!("{ring_buffer_bytes} is not a power of two ≥ 4096"),
            ));
        }
        let max_workloads = cli
            .max_workloads
            .or(file.max_workloads)
            .unwrap_or(d.max_workloads);
        if max_workloads == 0 {
            return Err(invalid("max_workloads", "must be at least 1"));
        }
        let cgroup_root = cli.cgroup_root.clone().or(file.cgroup_root);
        if let Some(root) = &cgroup_root
            && !root.is_dir()
        {
            return Err(invalid(
                "cgroup_root",
                format!("{} is not a directory", root.display()),
            ));
        }
        let kubelet_cgroup_roots = if cli.kubelet_cgroup_roots.is_empty() {
            file.kubelet_cgroup_roots.unwrap_or_default()
        } else {
            cli.kubelet_cgroup_roots.clone()
        };
        if let Err(e) = crate::identity::cgroup::KubeletRoots::new(&kubelet_cgroup_roots) {
            return Err(invalid("kubelet_cgroup_root", e.to_string()));
        }
        let api = api_config(cli, file.api.unwrap_or_default())?;
        let log = cli.log.clone().or(file.log).unwrap_or(d.log);
        if let Err(e) = log_filter(&log) {
            return Err(invalid("log", format!("{log:?}: {e}")));
        }
        let log_format = cli.log_format.or(file.log_format).unwrap_or_default();
        let kernel_log = match cli.kernel_log.as_deref().or(file.kernel_log.as_deref()) {
            Some(s) => s
                .parse()
                .map_err(|e: crate::events::kernel_log::UnknownLevel| {
                    invalid("kernel_log", e.to_string())
                })?,
            None => d.kernel_log,
        };
        let otlp = otlp_config(cli, file.otlp.unwrap_or_default(), env)?;
        let mut http = HttpConfig {
            socket: !cli.no_http_socket && file.http_socket.unwrap_or(true),
            router_templates: !cli.no_go_router_templates
                && file.go_router_templates.unwrap_or(true),
            uprobes: match cli
                .go_http_uprobes
                .as_deref()
                .or(file.go_http_uprobes.as_deref())
            {
                _ if cli.no_go_http => GoUprobes::Off,
                Some("off") => GoUprobes::Off,
                None | Some("auto") => GoUprobes::Auto,
                Some("all") => GoUprobes::All,
                Some(other) => {
                    return Err(invalid(
                        "go_http_uprobes",
                        format!("{other:?} (expected off, auto or all)"),
                    ));
                }
            },
            grpc_uprobes: match cli
                .go_grpc_uprobes
                .as_deref()
                .or(file.go_grpc_uprobes.as_deref())
            {
                None | Some("off") => false,
                Some("all") => true,
                Some(other) => {
                    return Err(invalid(
                        "go_grpc_uprobes",
                        format!("{other:?} (expected off or all)"),
                    ));
                }
            },
            ..HttpConfig::default()
        };
        if http.socket && http.uprobes == GoUprobes::All {
            return Err(invalid(
                "go_http_uprobes",
                "\"all\" needs --no-http-socket (http_socket = false): both would count the same requests",
            ));
        }
        // Without the parser, "auto" would count nothing of plaintext HTTP/1.x: a Go server
        // then has nothing to complement.
        if !http.socket && http.uprobes == GoUprobes::Auto {
            if cli.go_http_uprobes.is_some() || file.go_http_uprobes.is_some() {
                return Err(invalid(
                    "go_http_uprobes",
                    "\"auto\" complements the socket parser, which --no-http-socket turns off: use \"all\"",
                ));
            }
            http.uprobes = GoUprobes::Off;
        }
        let grpc_codes = if cli.grpc_error_codes.is_empty() {
            file.grpc_error_codes
        } else {
            Some(cli.grpc_error_codes.clone())
        };
        if let Some(codes) = grpc_codes {
            http.grpc_error_codes = codes
                .iter()
                .map(|c| {
                    crate::probes::go_grpc::parse_code(c).ok_or_else(|| {
                        invalid(
                            "grpc_error_codes",
                            format!(
                                "{c:?} is not a gRPC status code (a name like UNAVAILABLE, or 0-16)"
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        let probe_paths = if cli.probe_paths.is_empty() {
            file.probe_paths
        } else {
            Some(cli.probe_paths.clone())
        };
        if let Some(paths) = probe_paths {
            if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
                return Err(invalid(
                    "probe_path",
                    format!("{bad:?} does not start with /"),
                ));
            }
            http.probe_paths = paths;
        }
        http.max_routes = cli
            .max_routes
            .or(file.max_routes)
            .unwrap_or(DEFAULT_MAX_ROUTES);
        if http.max_routes == 0 {
            return Err(invalid("max_routes", "must be at least 1"));
        }
        http.sample_every = cli
            .http_sample_every
            .or(file.http_sample_every)
            .unwrap_or(1);
        if !(1..=1000).contains(&http.sample_every) {
            return Err(invalid("http_sample_every", "must be between 1 and 1000"));
        }
        http.event_budget = cli
            .http_event_budget
            .or(file.http_event_budget)
            .unwrap_or(DEFAULT_HTTP_EVENT_BUDGET);
        let verdict = verdict_config(cli, file.verdict.unwrap_or_default())?;
        let kubernetes = kubernetes_config(cli, file.kubernetes.unwrap_or_default(), env)?;
        if api.kubernetes_auth && kubernetes.is_none() {
            return Err(invalid(
                "api_auth_kubernetes",
                "needs the Kubernetes API: --node-name (NODE_NAME)",
            ));
        }
        let readiness = readiness_config(cli, file.readiness.unwrap_or_default())?;
        Ok(Config {
            listen,
            harvest_interval,
            ladder,
            cgroup_root,
            kubelet_cgroup_roots,
            api,
            ring_buffer_bytes,
            max_workloads,
            log,
            log_format,
            kernel_log,
            otlp,
            http,
            verdict,
            kubernetes,
            readiness,
        })
    }
}

/// Kubernetes is on when a node name is given (flag, file, or `NODE_NAME` from the downward
/// API); the name goes into a field selector, so it must be a node name and nothing more.
fn kubernetes_config(
    cli: &Cli,
    file: FileKubernetes,
    env: &dyn EnvSource,
) -> Result<Option<crate::kubernetes::KubernetesConfig>, ConfigError> {
    let kubeconfig = cli.kubeconfig.clone().or(file.kubeconfig);
    let Some(node_name) = cli
        .node_name
        .clone()
        .or(file.node_name)
        .or_else(|| env.var("NODE_NAME").filter(|v| !v.is_empty()))
    else {
        if kubeconfig.is_some() {
            return Err(invalid(
                "kubeconfig",
                "needs --node-name (NODE_NAME): the collector watches the pods of one node",
            ));
        }
        return Ok(None);
    };
    let valid = (1..=253).contains(&node_name.len())
        && node_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !node_name.starts_with(['-', '.'])
        && !node_name.ends_with(['-', '.']);
    if !valid {
        return Err(invalid(
            "node_name",
            format!("{node_name:?} is not a Kubernetes node name (lower-case DNS subdomain)"),
        ));
    }
    if let Some(p) = &kubeconfig
        && !p.is_file()
    {
        return Err(invalid(
            "kubeconfig",
            format!("{} is not a file", p.display()),
        ));
    }
    let pod_labels = if cli.pod_labels.is_empty() {
        file.pod_labels.unwrap_or_default()
    } else {
        cli.pod_labels.clone()
    };
    validate_pod_labels(&pod_labels)?;
    Ok(Some(crate::kubernetes::KubernetesConfig {
        node_name,
        kubeconfig,
        pod_labels,
    }))
}

/// Label keys as Kubernetes accepts them (`[prefix/]name`, name ≤ 63 of `[A-Za-z0-9._-]`
/// starting and ending alphanumeric, prefix a DNS subdomain), at most `MAX_POD_LABELS`, and no
/// two exported under the same Prometheus name (`app.kubernetes.io/name` and
/// `app_kubernetes_io/name` would be one label twice in a series).
fn validate_pod_labels(labels: &[String]) -> Result<(), ConfigError> {
    use crate::kubernetes::{MAX_POD_LABELS, prometheus_label_name};
    if labels.len() > MAX_POD_LABELS {
        return Err(invalid(
            "pod_labels",
            format!("{} labels (at most {MAX_POD_LABELS})", labels.len()),
        ));
    }
    let segment = |v: &str, max: usize, extra: &[u8]| {
        (1..=max).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
            && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    let mut seen = BTreeMap::new();
    for l in labels {
        let (prefix, name) = match l.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, l.as_str()),
        };
        let ok = segment(name, 63, b"._-")
            && prefix.is_none_or(|p| {
                segment(p, 253, b".-") && !p.bytes().any(|b| b.is_ascii_uppercase())
            });
        if !ok {
            return Err(invalid(
                "pod_labels",
                format!("{l:?} is not a Kubernetes label key ([prefix/]name)"),
            ));
        }
        if let Some(other) = seen.insert(prometheus_label_name(l), l) {
            return Err(invalid(
                "pod_labels",
                format!(
                    "{other:?} and {l:?} are both exported as {}",
                    prometheus_label_name(l)
                ),
            ));
        }
    }
    Ok(())
}

/// `[readiness]` and `--readiness-gates`.
fn readiness_config(
    cli: &Cli,
    file: FileReadiness,
) -> Result<crate::kubernetes::gate::ReadinessConfig, ConfigError> {
    use crate::verdict::rules::State;
    let mut r = crate::kubernetes::gate::ReadinessConfig::default();
    if let Some(m) = cli.readiness_gates.as_deref().or(file.mode.as_deref()) {
        r.mode = m.parse().map_err(|e| invalid("readiness.mode", e))?;
    }
    if let Some(states) = file.false_on {
        r.false_on = states
            .iter()
            .map(|s| s.parse::<State>())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("readiness.false_on", e))?;
        // The gate fails open: no evidence, or good evidence, never takes a pod out.
        if r.false_on.contains(&State::Unknown) || r.false_on.contains(&State::Healthy) {
            return Err(invalid(
                "readiness.false_on",
                "only degraded and unhealthy may set a pod's condition False",
            ));
        }
    }
    for (name, given, slot) in [
        (
            "readiness.service_floor",
            file.service_floor,
            &mut r.service_floor,
        ),
        ("readiness.node_share", file.node_share, &mut r.node_share),
    ] {
        if let Some(v) = given {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(name, format!("{v} is not between 0 and 1")));
            }
            *slot = v;
        }
    }
    for (name, given, slot) in [
        (
            "readiness.flip_window",
            file.flip_window,
            &mut r.flip_window,
        ),
        ("readiness.interval", file.interval, &mut r.interval),
        (
            "readiness.lease_renew",
            file.lease_renew,
            &mut r.lease_renew,
        ),
        (
            "readiness.lease_duration",
            file.lease_duration,
            &mut r.lease_duration,
        ),
    ] {
        if let Some(s) = given {
            *slot = parse_duration(&s).map_err(|e| invalid(name, e))?;
        }
    }
    if r.interval < Duration::from_millis(100) || r.lease_renew < Duration::from_millis(100) {
        return Err(invalid(
            "readiness.interval",
            "interval and lease_renew must be at least 100ms",
        ));
    }
    // leaseDurationSeconds is whole seconds, and a lease that expires between two renewals
    // would make the watchdog fight a live collector.
    if r.lease_duration < Duration::from_secs(1) || r.lease_duration <= r.lease_renew {
        return Err(invalid(
            "readiness.lease_duration",
            "must be at least 1s and longer than lease_renew",
        ));
    }
    if let Some(ns) = file.lease_namespace {
        r.lease_namespace = ns;
    }
    Ok(r)
}

fn api_config(cli: &Cli, file: FileApi) -> Result<crate::api::server::ServerConfig, ConfigError> {
    let mut api = crate::api::server::ServerConfig::default();
    let file_option = |opt: &'static str, p: Option<PathBuf>| match p {
        Some(p) if !p.is_file() => Err(invalid(opt, format!("{} is not a file", p.display()))),
        p => Ok(p),
    };
    api.token_file = file_option(
        "api_token_file",
        cli.api_token_file.clone().or(file.token_file),
    )?;
    api.kubernetes_auth = cli.api_auth_kubernetes || file.kubernetes_auth.unwrap_or(false);
    let cert = file_option("api_tls_cert", cli.api_tls_cert.clone().or(file.tls_cert))?;
    let key = file_option("api_tls_key", cli.api_tls_key.clone().or(file.tls_key))?;
    api.tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "api_tls_cert",
                "--api-tls-cert and --api-tls-key go together",
            ));
        }
    };
    api.max_connections = cli
        .api_max_connections
        .or(file.max_connections)
        .unwrap_or(api.max_connections);
    if !(1..=65_536).contains(&api.max_connections) {
        return Err(invalid(
            "api_max_connections",
            "must be between 1 and 65536",
        ));
    }
    Ok(api)
}

fn verdict_config(cli: &Cli, file: FileVerdict) -> Result<VerdictConfig, ConfigError> {
    let mut v = VerdictConfig::default();
    if let Some(s) = cli.verdict_bucket.clone().or(file.bucket) {
        v.geometry.bucket = parse_duration(&s).map_err(|e| invalid("verdict.bucket", e))?;
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(600)).contains(&v.geometry.bucket) {
        return Err(invalid("verdict.bucket", "must be between 100ms and 10m"));
    }
    v.geometry.count = cli
        .verdict_buckets
        .or(file.buckets)
        .unwrap_or(v.geometry.count);
    if !(1..=360).contains(&v.geometry.count) {
        return Err(invalid("verdict.buckets", "must be between 1 and 360"));
    }
    v.expire_windows = file.expire_windows.unwrap_or(v.expire_windows);
    v.hysteresis.enter = file.enter_after.unwrap_or(v.hysteresis.enter);
    v.hysteresis.leave = file.leave_after.unwrap_or(v.hysteresis.leave);
    for (name, n) in [
        ("verdict.expire_windows", v.expire_windows),
        ("verdict.enter_after", v.hysteresis.enter),
        ("verdict.leave_after", v.hysteresis.leave),
    ] {
        if n == 0 {
            return Err(invalid(name, "must be at least 1"));
        }
    }
    let r = &mut v.rules;
    r.min_requests = file.min_requests.unwrap_or(r.min_requests);
    r.min_send_calls = file.min_send_calls.unwrap_or(r.min_send_calls);
    for (name, given, slot) in [
        ("verdict.error_ratio", file.error_ratio, &mut r.error_ratio),
        ("verdict.p95_ms", file.p95_ms, &mut r.p95_ms),
        ("verdict.p99_ms", file.p99_ms, &mut r.p99_ms),
        (
            "verdict.retransmit_ratio",
            file.retransmit_ratio,
            &mut r.retransmit_ratio,
        ),
        (
            "verdict.resets_per_second",
            file.resets_per_second,
            &mut r.resets_per_second,
        ),
        (
            "verdict.failed_connects_per_second",
            file.failed_connects_per_second,
            &mut r.failed_connects_per_second,
        ),
    ] {
        if let Some(t) = given {
            if !(t.degraded.is_finite() && t.degraded > 0.0 && t.unhealthy >= t.degraded) {
                return Err(invalid(
                    name,
                    "needs 0 < degraded ≤ unhealthy (finite numbers)",
                ));
            }
            *slot = t;
        }
    }
    let fail_on = if cli.readiness_fail_on.is_empty() {
        file.readiness_fail_on
    } else {
        Some(cli.readiness_fail_on.clone())
    };
    if let Some(states) = fail_on {
        v.readiness_fail_on = states
            .iter()
            .map(|s| s.parse::<State>())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("readiness_fail_on", e))?;
    }
    Ok(v)
}

/// The metrics-specific variable, else the generic one (OpenTelemetry's rule).
fn otel_env(env: &dyn EnvSource, suffix: &str) -> Option<String> {
    env.var(&format!("OTEL_EXPORTER_OTLP_METRICS_{suffix}"))
        .or_else(|| env.var(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
}

fn env_millis(option: &'static str, v: &str) -> Result<Duration, ConfigError> {
    v.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| invalid(option, format!("{v:?} is not a number of milliseconds")))
}

/// "k=v" pairs; OTLP header values in the environment are percent-encoded.
fn parse_header(option: &'static str, pair: &str) -> Result<(String, String), ConfigError> {
    let (k, v) = pair
        .split_once('=')
        .ok_or_else(|| invalid(option, format!("{pair:?} is not KEY=VALUE")))?;
    let k = k.trim();
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(option, format!("{k:?} is not a valid header name")));
    }
    Ok((k.to_ascii_lowercase(), percent_decode(v.trim())))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn otlp_config(
    cli: &Cli,
    file: FileOtlp,
    env: &dyn EnvSource,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let signal_endpoint = env.var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    let generic_endpoint = env.var("OTEL_EXPORTER_OTLP_ENDPOINT");
    let protocol = match cli
        .otlp_protocol
        .clone()
        .or(file.protocol)
        .or_else(|| otel_env(env, "PROTOCOL"))
        .as_deref()
    {
        None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some("grpc") => OtlpProtocol::Grpc,
        Some(other) => {
            return Err(invalid(
                "otlp_protocol",
                format!("{other:?} (expected grpc or http/protobuf)"),
            ));
        }
    };
    // A generic endpoint is a base URL: HTTP appends the signal path; an explicit one is used as given.
    let endpoint = match (
        cli.otlp_endpoint
            .clone()
            .or(file.endpoint)
            .or(signal_endpoint),
        generic_endpoint,
    ) {
        (Some(e), _) => e,
        (None, Some(base)) if protocol == OtlpProtocol::HttpProtobuf => {
            format!("{}/v1/metrics", base.trim_end_matches('/'))
        }
        (None, Some(base)) => base,
        (None, None) => return Ok(None),
    };
    let (scheme, rest) = endpoint.split_once("://").ok_or_else(|| {
        invalid(
            "otlp_endpoint",
            format!("{endpoint:?} is not an http:// or https:// URL"),
        )
    })?;
    if scheme != "http" && scheme != "https" || rest.is_empty() {
        return Err(invalid(
            "otlp_endpoint",
            format!("{endpoint:?} is not an http:// or https:// URL"),
        ));
    }
    // A bare host for HTTP: the OTLP/HTTP metrics path.
    let endpoint =
        if protocol == OtlpProtocol::HttpProtobuf && !rest.trim_end_matches('/').contains('/') {
            format!("{}/v1/metrics", endpoint.trim_end_matches('/'))
        } else {
            endpoint
        };
    let mut headers = Vec::new();
    if let Some(h) = otel_env(env, "HEADERS") {
        for pair in h.split(',').filter(|p| !p.trim().is_empty()) {
            headers.push(parse_header("OTEL_EXPORTER_OTLP_HEADERS", pair)?);
        }
    }
    for (k, v) in file.headers.unwrap_or_default() {
        headers.push(parse_header("otlp.headers", &format!("{k}={v}"))?);
    }
    for pair in &cli.otlp_headers {
        headers.push(parse_header("--otlp-header", pair)?);
    }
    // Later sources win for the same header.
    let mut dedup: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in headers {
        dedup.insert(k, v);
    }
    let interval = match cli.otlp_interval.clone().or(file.interval) {
        Some(s) => parse_duration(&s).map_err(|e| invalid("otlp_interval", e))?,
        None => match env.var("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(v) => env_millis("OTEL_METRIC_EXPORT_INTERVAL", &v)?,
            None => DEFAULT_OTLP_INTERVAL,
        },
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&interval) {
        return Err(invalid("otlp_interval", "must be between 1s and 1h"));
    }
    let timeout = match cli.otlp_timeout.clone().or(file.timeout) {
        Some(s) => parse_duration(&s).map_err(|e| invalid("otlp_timeout", e))?,
        None => match otel_env(env, "TIMEOUT") {
            Some(v) => env_millis("OTEL_EXPORTER_OTLP_TIMEOUT", &v)?,
            None => DEFAULT_OTLP_TIMEOUT,
        },
    };
    if timeout.is_zero() || timeout > Duration::from_secs(300) {
        return Err(invalid("otlp_timeout", "must be between 1ms and 300s"));
    }
    let file_opt = |cli: &Option<PathBuf>,
                    file: Option<PathBuf>,
                    suffix: &str,
                    option: &'static str|
     -> Result<Option<PathBuf>, ConfigError> {
        let p = cli
            .clone()
            .or(file)
            .or_else(|| otel_env(env, suffix).map(PathBuf::from));
        match p {
            Some(p) if !p.is_file() => Err(invalid(
                option,
                format!("{} is not a readable file", p.display()),
            )),
            p => Ok(p),
        }
    };
    let ca_file = file_opt(
        &cli.otlp_ca_file,
        file.ca_file,
        "CERTIFICATE",
        "otlp_ca_file",
    )?;
    let client_cert = file_opt(
        &cli.otlp_client_cert,
        file.client_cert,
        "CLIENT_CERTIFICATE",
        "otlp_client_cert",
    )?;
    let client_key = file_opt(
        &cli.otlp_client_key,
        file.client_key,
        "CLIENT_KEY",
        "otlp_client_key",
    )?;
    if client_cert.is_some() != client_key.is_some() {
        return Err(invalid(
            "otlp_client_cert",
            "a client certificate and a client key go together",
        ));
    }
    // The specification's variable (no _METRICS_-less form exists for it).
    let histogram = match cli
        .otlp_histogram
        .clone()
        .or(file.histogram)
        .or_else(|| env.var("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"))
    {
        None => OtlpHistogram::default(),
        Some(v) => match v.as_str() {
            "explicit" | "explicit_bucket_histogram" => OtlpHistogram::Explicit,
            "exponential" | "base2_exponential_bucket_histogram" => OtlpHistogram::Exponential,
            other => {
                return Err(invalid(
                    "otlp_histogram",
                    format!("{other:?} (expected explicit or exponential)"),
                ));
            }
        },
    };
    Ok(Some(OtlpConfig {
        endpoint,
        protocol,
        headers: dedup.into_iter().collect(),
        interval,
        timeout,
        ca_file,
        client_cert,
        client_key,
        histogram,
    }))
}

/// The log filter of `--log`. Span field values (`span{field=value}`) are matched as plain
/// text, not compiled as regular expressions: tracing's field matcher builds a DFA, and a value
/// like `E.{80}E` took minutes of CPU to compile (found by the `config` fuzz target) — a hang at
/// start from one option.
pub fn log_filter(directives: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    tracing_subscriber::EnvFilter::builder()
        .with_regex(false)
        .parse(directives)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("collector").chain(args.iter().copied()))
            .expect("cli parses")
    }

    fn no_env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Catches: Kubernetes authentication switched on with no Kubernetes API to ask (every
    /// /v1/* request would be refused at run time instead of a start-up error), or the file key
    /// ignored.
    #[test]
    fn api_auth_kubernetes_needs_the_kubernetes_api() {
        let merge = |args: &[&str], f: &str, e: &[(&str, &str)]| {
            Config::merge(&cli(args), file(f), &env(e)).map(|c| c.api.kubernetes_auth)
        };
        let err = merge(&["--api-auth-kubernetes"], "", &[]).expect_err("no Kubernetes");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    option: "api_auth_kubernetes",
                    ..
                }
            ),
            "{err}"
        );
        assert!(merge(&["--api-auth-kubernetes"], "", &[("NODE_NAME", "n1")]).expect("ok"));
        assert!(merge(&[], "[api]\nkubernetes_auth = true", &[("NODE_NAME", "n1")]).expect("ok"));
        assert!(!merge(&[], "", &[("NODE_NAME", "n1")]).expect("ok"));
    }

    /// Catches: Kubernetes switched on without a node (or off despite NODE_NAME), and a node
    /// name that would widen the pod watch's field selector (`a,metadata.namespace!=x`).
    #[test]
    fn kubernetes_from_node_name_flag_file_or_downward_api() {
        let k = |args: &[&str], f: FileConfig, e: &BTreeMap<String, String>| {
            Config::merge(&cli(args), f, e).map(|c| c.kubernetes)
        };
        assert_eq!(k(&[], FileConfig::default(), &no_env()).expect("ok"), None);
        let from_env = k(&[], FileConfig::default(), &env(&[("NODE_NAME", "node-1")]))
            .expect("ok")
            .expect("on");
        assert_eq!(
            (from_env.node_name.as_str(), from_env.kubeconfig),
            ("node-1", None)
        );
        let flag = k(
            &["--node-name", "n2.example"],
            file("[kubernetes]\nnode_name = \"n3\""),
            &env(&[("NODE_NAME", "node-1")]),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(flag.node_name, "n2.example", "flag over file over env");
        for bad in [
            "a,metadata.namespace!=x",
            "Node",
            "-a",
            "",
            &"a".repeat(254),
        ] {
            let arg = format!("--node-name={bad}");
            let e = k(&[&arg], FileConfig::default(), &no_env()).expect_err(bad);
            assert!(e.to_string().starts_with("node_name: "), "{e}");
        }
        let e = k(
            &["--kubeconfig", "/etc/hostname"],
            FileConfig::default(),
            &no_env(),
        )
        .expect_err("kubeconfig alone");
        assert!(e.to_string().starts_with("kubeconfig: "), "{e}");
        let e = k(
            &["--node-name", "n", "--kubeconfig", "/nonexistent/kc"],
            FileConfig::default(),
            &no_env(),
        )
        .expect_err("missing file");
        assert!(e.to_string().contains("is not a file"), "{e}");
    }

    /// Catches: a label key that is not one (a selector smuggled in, an empty name) accepted,
    /// two keys colliding on one Prometheus label name, an unbounded list, the flag not
    /// overriding the file.
    #[test]
    fn pod_label_allow_list_is_validated() {
        let k = |args: &[&str], f: FileConfig| {
            Config::merge(&cli(args), f, &env(&[("NODE_NAME", "n1")]))
                .map(|c| c.kubernetes.expect("on").pod_labels)
        };
        assert_eq!(
            k(
                &[
                    "--pod-label",
                    "app,app.kubernetes.io/name",
                    "--pod-label",
                    "team"
                ],
                FileConfig::default()
            )
            .expect("ok"),
            vec!["app", "app.kubernetes.io/name", "team"]
        );
        assert_eq!(
            k(&[], file("[kubernetes]\npod_labels = [\"tier\"]")).expect("ok"),
            vec!["tier"]
        );
        assert_eq!(
            k(
                &["--pod-label", "app"],
                file("[kubernetes]\npod_labels = [\"tier\"]")
            )
            .expect("ok"),
            vec!["app"],
            "flag over file"
        );
        for bad in [
            "",
            "-app",
            "app=x",
            "a/b/",
            "Example.com/app",
            "a b",
            &"a".repeat(64),
        ] {
            let arg = format!("--pod-label={bad}");
            let e = k(&[&arg], FileConfig::default()).expect_err(bad);
            assert!(e.to_string().starts_with("pod_labels: "), "{bad}: {e}");
        }
        let e = k(&["--pod-label", "a.b,a_b"], FileConfig::default()).expect_err("collision");
        assert_eq!(
            e.to_string(),
            "pod_labels: \"a.b\" and \"a_b\" are both exported as label_a_b"
        );
        let many: Vec<String> = (0..17).map(|i| format!("l{i}")).collect();
        let arg = format!("--pod-label={}", many.join(","));
        assert!(k(&[&arg], FileConfig::default()).is_err());
    }

    /// Catches: `unknown` (no evidence) or `healthy` accepted as a reason to set a pod False;
    /// a fraction outside 0–1; a Lease that could expire between two renewals (the watchdog
    /// would fight a live collector); the flag not winning over the file.
    #[test]
    fn readiness_section_and_its_limits() {
        use crate::{kubernetes::gate::Mode, verdict::rules::State};
        let r = |args: &[&str], text: &str| {
            Config::merge(&cli(args), file(text), &no_env()).map(|c| c.readiness)
        };
        let d = r(&[], "").expect("defaults");
        assert_eq!(
            (d.mode, d.false_on, d.service_floor, d.node_share),
            (Mode::Advisory, vec![State::Unhealthy], 0.5, 0.5)
        );
        let c = r(
            &["--readiness-gates", "enforce"],
            "[readiness]\nmode = \"off\"\nfalse_on = [\"degraded\", \"unhealthy\"]\n\
             service_floor = 0.25\nflip_window = \"1m\"\nlease_renew = \"1s\"\n\
             lease_duration = \"3s\"\nlease_namespace = \"obs\"",
        )
        .expect("ok");
        assert_eq!(c.mode, Mode::Enforce, "flag over file");
        assert_eq!(c.false_on, vec![State::Degraded, State::Unhealthy]);
        assert_eq!(
            (c.service_floor, c.flip_window, c.lease_duration),
            (0.25, Duration::from_secs(60), Duration::from_secs(3))
        );
        assert_eq!(c.lease_namespace, "obs");
        for (text, option) in [
            ("false_on = [\"unknown\"]", "readiness.false_on: "),
            ("false_on = [\"healthy\"]", "readiness.false_on: "),
            ("false_on = [\"sick\"]", "readiness.false_on: "),
            ("service_floor = 1.5", "readiness.service_floor: "),
            ("node_share = -0.1", "readiness.node_share: "),
            ("lease_duration = \"10s\"", "readiness.lease_duration: "),
            ("mode = \"on\"", "readiness.mode: "),
            ("flip_window = \"5\"", "readiness.flip_window: "),
        ] {
            let e = r(&[], &format!("[readiness]\n{text}")).expect_err(text);
            assert!(e.to_string().starts_with(option), "{text}: {e}");
        }
    }

    #[test]
    fn otlp_off_by_default_and_from_environment() {
        assert_eq!(
            Config::merge(&cli(&[]), FileConfig::default(), &no_env())
                .expect("valid")
                .otlp,
            None
        );
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret,tenant=a"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "2500"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
        ]);
        let o = Config::merge(&cli(&[]), FileConfig::default(), &e)
            .expect("valid")
            .otlp
            .expect("enabled");
        assert_eq!(o.endpoint, "http://collector:4318/v1/metrics");
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            o.headers,
            vec![
                ("api-key".into(), "s=cret".into()),
                ("tenant".into(), "a".into())
            ]
        );
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.interval, Duration::from_secs(5));
        // gRPC uses the endpoint as given; the command line wins over the environment.
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        let o = Config::merge(
            &cli(&["--otlp-header", "tenant=b", "--otlp-interval", "2s"]),
            FileConfig::default(),
            &e,
        )
        .expect("valid")
        .otlp
        .expect("enabled");
        assert_eq!(
            (o.endpoint.as_str(), o.protocol),
            ("http://a:4317", OtlpProtocol::Grpc)
        );
        assert_eq!(o.headers, vec![("tenant".into(), "b".into())]);
        assert_eq!(o.interval, Duration::from_secs(2));
        let f = file(
            "[otlp]\nendpoint = \"https://x:4318\"\nheaders = { authorization = \"Bearer t\" }",
        );
        let o = Config::merge(&cli(&[]), f, &no_env())
            .expect("valid")
            .otlp
            .expect("enabled");
        assert_eq!(o.endpoint, "https://x:4318/v1/metrics");
        assert_eq!(o.headers, vec![("authorization".into(), "Bearer t".into())]);
    }

    /// Catches: exponential histograms by default (receivers without them drop the metric),
    /// the specification's variable ignored, the flag not winning, a typo accepted.
    #[test]
    fn otlp_histogram_switch() {
        let h = |args: &[&str], e: &[(&str, &str)]| {
            let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318")];
            all.extend_from_slice(e);
            Config::merge(&cli(args), FileConfig::default(), &env(&all))
                .map(|c| c.otlp.expect("enabled").histogram)
        };
        assert_eq!(h(&[], &[]).expect("ok"), OtlpHistogram::Explicit);
        let spec = [(
            "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
            "base2_exponential_bucket_histogram",
        )];
        assert_eq!(h(&[], &spec).expect("ok"), OtlpHistogram::Exponential);
        assert_eq!(
            h(&["--otlp-histogram", "explicit"], &spec).expect("ok"),
            OtlpHistogram::Explicit
        );
        let e = h(&["--otlp-histogram", "exp"], &[]).expect_err("typo");
        assert_eq!(
            e.to_string(),
            "otlp_histogram: \"exp\" (expected explicit or exponential)"
        );
    }

    #[test]
    fn bad_otlp_settings_are_clear_errors() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            (
                &["--otlp-endpoint", "collector:4317"],
                &[],
                "http:// or https://",
            ),
            (
                &["--otlp-endpoint", "http://a", "--otlp-protocol", "thrift"],
                &[],
                "expected grpc",
            ),
            (
                &["--otlp-endpoint", "http://a", "--otlp-header", "novalue"],
                &[],
                "KEY=VALUE",
            ),
            (
                &["--otlp-endpoint", "http://a", "--otlp-interval", "10ms"],
                &[],
                "between 1s",
            ),
            (
                &[
                    "--otlp-endpoint",
                    "http://a",
                    "--otlp-ca-file",
                    "/nonexistent.pem",
                ],
                &[],
                "not a readable file",
            ),
            (
                &[],
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
                    ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
                ],
                "milliseconds",
            ),
        ];
        for (args, e, needle) in cases {
            let err =
                Config::merge(&cli(args), FileConfig::default(), &env(e)).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("toml parses")
    }

    #[test]
    fn defaults() {
        let c = Config::merge(&cli(&[]), FileConfig::default(), &no_env()).expect("valid");
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.port(), 9464);
        assert_eq!(c.ladder.order[&Signal::TcpSend][0], Rung::Kprobe);
        assert_eq!(c.ladder.order[&Signal::TcpState][0], Rung::TpBtf);
        assert!(c.ladder.required.is_empty());
    }

    /// Catches: `auto` not the default, a mode string read wrong, plaintext counted twice
    /// (`all` beside the parser) or silently nothing (`auto` without it) accepted.
    #[test]
    fn go_uprobes_modes() {
        let merge = |args: &[&str], f: &str| {
            Config::merge(&cli(args), file(f), &no_env()).map(|c| (c.http.socket, c.http.uprobes))
        };
        let ok = |args: &[&str], f: &str| merge(args, f).ok();
        assert_eq!(ok(&[], ""), Some((true, GoUprobes::Auto)));
        assert_eq!(
            ok(&["--go-http-uprobes", "off"], ""),
            Some((true, GoUprobes::Off))
        );
        assert_eq!(
            ok(&[], "go_http_uprobes = \"off\""),
            Some((true, GoUprobes::Off))
        );
        assert_eq!(
            ok(&["--no-http-socket", "--go-http-uprobes", "all"], ""),
            Some((false, GoUprobes::All))
        );
        // No parser to complement: the default turns itself off, an explicit auto is refused.
        assert_eq!(ok(&["--no-http-socket"], ""), Some((false, GoUprobes::Off)));
        for (args, f) in [
            (&["--no-http-socket", "--go-http-uprobes", "auto"][..], ""),
            (&["--go-http-uprobes", "all"][..], ""),
            (&["--go-http-uprobes", "some"][..], ""),
            (&[][..], "http_socket = false\ngo_http_uprobes = \"auto\""),
        ] {
            let err = merge(args, f).expect_err("invalid");
            assert!(
                err.to_string().contains("go_http_uprobes"),
                "{args:?} {f}: {err}"
            );
        }
    }

    #[test]
    fn cli_wins_over_file() {
        let f = file(
            "listen = \"127.0.0.1:1\"\nharvest_interval = \"2s\"\nladder = { tcp_send = [\"tracepoint\"] }\nrequire = [\"tcp_send\"]",
        );
        let c = Config::merge(
            &cli(&[
                "--listen",
                "127.0.0.1:2",
                "--ladder",
                "tcp_send=raw_tp,tp_btf",
            ]),
            f,
            &no_env(),
        )
        .expect("valid");
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.harvest_interval, Duration::from_secs(2));
        assert_eq!(
            c.ladder.order[&Signal::TcpSend],
            vec![Rung::RawTp, Rung::TpBtf]
        );
        assert_eq!(c.ladder.required, vec![Signal::TcpSend]);
        let c = Config::merge(
            &cli(&["--require", "all"]),
            FileConfig::default(),
            &no_env(),
        )
        .expect("valid");
        assert_eq!(c.ladder.required.len(), Signal::ALL.len());
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen", "nope"], "listen"),
            (&["--harvest-interval", "10"], "no unit"),
            (&["--harvest-interval", "5ms"], "between"),
            (&["--harvest-interval", "3h"], "unknown unit"),
            (&["--ladder", "tcp_send"], "SIGNAL=RUNG"),
            (&["--ladder", "tcp_sned=kprobe"], "unknown signal"),
            (&["--ladder", "tcp_send=kprobes"], "unknown rung"),
            (&["--ladder", "tcp_state=kprobe"], "has no kprobe rung"),
            (&["--ladder", "tcp_send=kprobe,kprobe"], "twice"),
            (&["--require", "everything"], "unknown signal"),
            (&["--ring-buffer-bytes", "5000"], "power of two"),
            (&["--max-workloads", "0"], "at least 1"),
            (&["--cgroup-root", "/nonexistent/cg"], "not a directory"),
            (&["--log", "collector=loud"], "log"),
        ];
        for (args, needle) in cases {
            let err =
                Config::merge(&cli(args), FileConfig::default(), &no_env()).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
        assert!(
            toml::from_str::<FileConfig>("listn = \"x\"").is_err(),
            "unknown keys rejected"
        );
    }

    #[test]
    fn missing_config_file_names_the_path() {
        let err = Config::load(
            &cli(&["--config", "/nonexistent/collector.toml"]),
            &no_env(),
        )
        .expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/collector.toml"),
            "{err}"
        );
    }

    #[test]
    fn verdict_section_and_options() {
        let f = file(
            "[verdict]\nbucket = \"5s\"\nbuckets = 12\nenter_after = 3\nmin_requests = 50\n\
             error_ratio = { degraded = 0.01, unhealthy = 0.1 }\nreadiness_fail_on = [\"unhealthy\", \"unknown\"]",
        );
        let c = Config::merge(&cli(&["--verdict-buckets", "4"]), f, &no_env()).expect("valid");
        let v = &c.verdict;
        assert_eq!(v.geometry.bucket, Duration::from_secs(5));
        assert_eq!(v.geometry.count, 4, "command line wins");
        assert_eq!(v.hysteresis.enter, 3);
        assert_eq!(v.hysteresis.leave, 3);
        assert_eq!(v.rules.min_requests, 50);
        assert_eq!(v.rules.error_ratio.degraded, 0.01);
        assert_eq!(v.readiness_fail_on, vec![State::Unhealthy, State::Unknown]);
        let c = Config::merge(
            &cli(&["--verdict-bucket", "1s", "--readiness-fail-on", "degraded"]),
            FileConfig::default(),
            &no_env(),
        )
        .expect("valid");
        assert_eq!(c.verdict.geometry.bucket, Duration::from_secs(1));
        assert_eq!(c.verdict.readiness_fail_on, vec![State::Degraded]);
        // (cli, file, message)
        let bad: [(&[&str], &str, &str); 6] = [
            (&["--verdict-bucket", "10ms"], "", "verdict.bucket"),
            (&["--verdict-buckets", "0"], "", "verdict.buckets"),
            (&["--readiness-fail-on", "sick"], "", "readiness_fail_on"),
            (&[], "[verdict]\nleave_after = 0", "verdict.leave_after"),
            (
                &[],
                "[verdict]\np95_ms = { degraded = 900, unhealthy = 100 }",
                "verdict.p95_ms",
            ),
            (
                &[],
                "[verdict]\nerror_ratio = { degraded = -1, unhealthy = 1 }",
                "verdict.error_ratio",
            ),
        ];
        for (args, text, needle) in bad {
            let err = Config::merge(&cli(args), file(text), &no_env()).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{args:?} {text}: {err}");
        }
        assert!(toml::from_str::<FileConfig>("[verdict]\nbukket = \"1s\"").is_err());
    }

    #[test]
    fn status_is_a_subcommand_and_run_the_default() {
        assert_eq!(cli(&[]).command, None);
        assert_eq!(cli(&["run"]).command, Some(Command::Run));
        assert_eq!(
            cli(&["status"]).command,
            Some(Command::Status {
                api: "http://127.0.0.1:9464".into()
            })
        );
        assert_eq!(
            cli(&["status", "--api", "http://10.0.0.1:1"]).command,
            Some(Command::Status {
                api: "http://10.0.0.1:1".into()
            })
        );
    }

    /// Found by the `config` fuzz target: a span field value compiled as a regular expression
    /// took minutes of CPU (the test hung before the fix); it is a literal now.
    #[test]
    fn a_log_filter_with_a_pathological_field_value_is_parsed_at_once() {
        let log = "d&111]111111Z1[XPORTER_OTL\u{7f}\u{7f}\u{7f}\u{4}unhebel{ deg\\\\\\ = \u{7f}\u{4}EEEEEEE..............................................................................EEEEEEEEEEEEEDEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEl\u{7f}+}\u{7f}\u{7f}\u{7f}\u{4}l\u{7f}\u{7f}}\u{7f}ro\u{4}}q";
        let _ = log_filter(log);
        let dots = format!("collector[probe{{signal=E{}E}}]=debug", ".".repeat(80));
        assert!(log_filter(&dots).is_ok(), "{dots}");
    }
}

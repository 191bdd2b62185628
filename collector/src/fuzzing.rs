//! Entry points of the cargo-fuzz targets (fuzz/): each drives one boundary where bytes from
//! outside become values, the way the daemon does, without a kernel or a socket. Not an API:
//! the targets and the regression tests of what they found are its only users.
//!
//! Every entry returns normally on any input; a panic is the bug a fuzzer looks for. The seeds
//! the targets start from are built here too ([`seeds`]) from the real record layouts, routes
//! and options, so they follow the code; `fuzz_seeds_are_current` fails when the checked-in
//! files (fuzz/seeds/<target>) drift from them.

use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{Router, body::Body};
use clap::{CommandFactory as _, FromArgMatches as _};
use collector_common::{
    event::{EVENT_VERSION, EventHeader, EventKind},
    http::{HttpCounts, HttpEvent, flags},
    maps::KernelDrop,
    process::{ExecEvent, ProcessEvent},
    tcp::{OwnerKey, TcpStats},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

use crate::{
    aggregate::{Aggregator, StatsSource, http::RouteTable},
    api::{
        self, ApiState,
        server::{self, ApiToken},
    },
    config::{Cli, Config, FileConfig},
    events::decode::decode,
    export::{
        Metrics,
        prometheus::{KindLabels, ReasonLabels, WorkloadLabels},
    },
    identity::IdentityResolver,
    verdict::{Engine, HttpDelta, VerdictConfig, rules::State, window::Geometry},
};

// ---------------------------------------------------------------------------------------------
// Ring-buffer records

/// Splits a fuzz input into ring-buffer records: each is a little-endian `u16` length and that
/// many bytes (fewer when the input ends first), so one input is a sequence of records as a
/// drain of the ring hands them over.
pub fn split_records(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((len, rest)) = bytes.split_first_chunk::<2>() {
        let n = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        out.push(&rest[..n]);
        bytes = &rest[n..];
    }
    out
}

/// Kernel maps that are empty: the harness feeds records only.
struct NoMaps;

impl StatsSource for NoMaps {
    fn read_tcp(&mut self) -> Vec<(OwnerKey, TcpStats)> {
        Vec::new()
    }
    fn remove_tcp(&mut self, _: &OwnerKey) {}
    fn read_http(&mut self) -> Vec<(OwnerKey, HttpCounts)> {
        Vec::new()
    }
    fn remove_http(&mut self, _: &OwnerKey) {}
    fn read_drops(&mut self) -> Vec<(KernelDrop, Vec<u64>)> {
        Vec::new()
    }
}

/// What became of a sequence of records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecordsOutcome {
    pub decoded: usize,
    pub rejected: usize,
}

/// Every record decoded at the daemon's boundary (`events::decode`), counted as the ring
/// reader counts them, and what decodes handed to a fresh aggregator (identity, route table,
/// verdict engine, HTTP metrics) one millisecond apart; then a harvest and both exposition
/// formats rendered, since record fields (method, route, process names) end up in labels.
pub fn ring_records(bytes: &[u8]) -> RecordsOutcome {
    let metrics = Arc::new(Metrics::new(64));
    let identity = IdentityResolver::new(None, "/nonexistent-proc".into());
    let mut agg = Aggregator::new(
        NoMaps,
        metrics.clone(),
        identity,
        RouteTable::new(&["/healthz".to_owned()], 16),
    );
    let t0 = Instant::now();
    let mut out = RecordsOutcome::default();
    for (i, record) in split_records(bytes).into_iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        match decode(record) {
            Ok(event) => {
                out.decoded += 1;
                metrics
                    .collector
                    .events_received
                    .get_or_create(&KindLabels { kind: event.kind() })
                    .inc();
                agg.on_event(event, now);
            }
            Err(e) => {
                out.rejected += 1;
                // The message is logged: building it must not fail either.
                let _ = e.to_string();
                metrics
                    .collector
                    .events_rejected
                    .get_or_create(&ReasonLabels { reason: e.reason() })
                    .inc();
            }
        }
    }
    agg.harvest(t0 + Duration::from_secs(2));
    // The text format is the OpenMetrics rendering converted (`openmetrics_to_text`): both
    // encoders see the labels. (Rendering twice would halve the executions for no new code.)
    let _ = metrics.render_text();
    out
}

fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
    // SAFETY: T is Pod (plain old data, no padding the layout asserts leave uninitialised).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn header(kind: EventKind) -> EventHeader {
    EventHeader {
        kind: kind as u16,
        version: EVENT_VERSION,
        _pad: 0,
        ts_ns: 1,
    }
}

fn http_record(f: u16, method: &[u8], method_code: u8, status: u16, route: &[u8]) -> Vec<u8> {
    let mut e = HttpEvent {
        header: header(EventKind::Http),
        tgid: 4242,
        status,
        flags: f,
        cgroup_id: 7,
        duration_ns: 1_500_000,
        method_len: method.len() as u8,
        method_code,
        route_len: route.len() as u16,
        ..Default::default()
    };
    e.method[..method.len()].copy_from_slice(method);
    e.route[..route.len()].copy_from_slice(route);
    bytes_of(&e)
}

fn framed(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.len() as u16).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn ring_record_seeds() -> Vec<(String, Vec<u8>)> {
    let mut comm = [0u8; 16];
    comm[..6].copy_from_slice(b"server");
    let process = bytes_of(&ProcessEvent {
        header: header(EventKind::Process),
        tgid: 4242,
        _pad: 0,
        cgroup_id: 7,
        comm,
    });
    let exec = bytes_of(&ExecEvent {
        header: header(EventKind::Exec),
        tgid: 4243,
        _pad: 0,
    });
    let uprobe = http_record(0, b"GET", 0, 200, b"/items/42");
    let pattern = http_record(flags::PATTERN, b"POST", 0, 503, b"POST /items/{id}");
    let panic = http_record(flags::PANICKED, b"GET", 0, 0, b"/boom");
    let aborted = http_record(flags::ABORTED | flags::TRUNCATED, b"GET", 0, 0, b"/slow");
    let h2 = http_record(flags::HTTP2, b"GET", 0, 0, b"/h2");
    let wire = http_record(flags::WIRE, b"", 1, 404, b"/a/b?c=d HTTP/1.1\r\nHost: x");
    let wire_line = http_record(
        flags::WIRE | flags::WIRE_LINE,
        b"",
        3,
        200,
        b"POST http://h/p?q HTTP/1.1",
    );
    let mut bad_version = process.clone();
    bad_version[2] = 0xee;
    vec![
        ("process".into(), framed(std::slice::from_ref(&process))),
        ("exec".into(), framed(std::slice::from_ref(&exec))),
        ("http-uprobe".into(), framed(std::slice::from_ref(&uprobe))),
        ("http-pattern".into(), framed(&[pattern])),
        ("http-wire".into(), framed(&[wire])),
        ("http-wire-line".into(), framed(&[wire_line])),
        (
            "sequence".into(),
            framed(&[process, exec, uprobe, panic, aborted, h2]),
        ),
        ("bad-version".into(), framed(&[bad_version])),
        ("short".into(), framed(&[vec![2, 0, 1]])),
    ]
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// The three sources of the configuration in one input, separated by NUL: command-line
/// arguments (one per line), the configuration file (TOML), environment variables (`NAME=value`
/// per line). Missing parts are empty.
pub fn config_parts(text: &str) -> (Vec<&str>, &str, BTreeMap<String, String>) {
    let mut parts = text.splitn(3, '\0');
    let args = parts
        .next()
        .filter(|a| !a.is_empty())
        .map(|a| a.split('\n').collect())
        .unwrap_or_default();
    let file = parts.next().unwrap_or_default();
    let env = parts
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (args, file, env)
}

/// The configuration built from a fuzz input as `main` builds it: arguments parsed by clap,
/// the file by serde/toml, then merged and validated with the environment. Every error is
/// rendered (as `main` prints it). `Err` is the rendered error; a panic is a bug.
pub fn config(bytes: &[u8]) -> Result<Config, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let (args, file, env) = config_parts(text);
    // `Cli::try_parse_from`, with the command built once: building it runs clap's debug
    // assertions on every option, most of an execution otherwise.
    static COMMAND: LazyLock<clap::Command> = LazyLock::new(|| {
        let mut c = Cli::command();
        c.build();
        c
    });
    let cli = COMMAND
        .clone()
        .try_get_matches_from(std::iter::once("collector").chain(args))
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m))
        .map_err(|e| e.render().to_string())?;
    let file: FileConfig = toml::from_str(file).map_err(|e| e.to_string())?;
    Config::merge(&cli, file, &env).map_err(|e| format!("{e:#}"))
}

/// Every table of the configuration file (README's examples; no token or certificate files:
/// they must exist).
const FULL_FILE: &str = "\0listen = \"127.0.0.1:9464\"
harvest_interval = \"1s\"
kubelet_cgroup_roots = [\"/kubepods.slice\"]
require = [\"tcp_send\", \"tcp_retransmit\"]
max_workloads = 1000
probe_paths = [\"/healthz\", \"/readyz\"]
[api]
max_connections = 256
[ladder]
tcp_send = [\"tp_btf\", \"tracepoint\"]
[verdict]
readiness_fail_on = [\"unhealthy\"]
bucket = \"1s\"
buckets = 30
enter_after = 1
leave_after = 3
expire_windows = 10
min_requests = 20
min_send_calls = 200
error_ratio = { degraded = 0.05, unhealthy = 0.15 }
p95_ms = { degraded = 500, unhealthy = 2000 }
p99_ms = { degraded = 1000, unhealthy = 5000 }
retransmit_ratio = { degraded = 0.02, unhealthy = 0.10 }
resets_per_second = { degraded = 5, unhealthy = 50 }
failed_connects_per_second = { degraded = 1, unhealthy = 10 }
";

fn config_seeds() -> Vec<(String, Vec<u8>)> {
    let seeds: [(&str, &str); 10] = [
        ("empty", ""),
        ("listen", "--listen\n127.0.0.1:9464\0\0"),
        (
            "flags",
            "--harvest-interval\n2s\n--max-workloads\n500\n--ring-buffer-bytes\n1048576\n--log\ndebug",
        ),
        (
            "file",
            "\0listen = \"0.0.0.0:9464\"\nharvest_interval = \"5s\"\n",
        ),
        (
            "otlp-env",
            "\0\0OTEL_EXPORTER_OTLP_ENDPOINT=http://otel:4318\nOTEL_EXPORTER_OTLP_HEADERS=a=b,c=%20d\nOTEL_METRIC_EXPORT_INTERVAL=5000\nNODE_NAME=node-1",
        ),
        (
            "ladder",
            "--ladder\ntcp_send=tp_btf,tracepoint\n--require\ntcp_send",
        ),
        ("file-full", FULL_FILE),
        ("bad-duration", "--harvest-interval\n5 parsecs"),
        ("help", "--help"),
        ("subcommand", "status"),
    ];
    seeds
        .iter()
        .map(|(n, s)| ((*n).to_owned(), s.as_bytes().to_vec()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// API requests

/// The token the API harness requires on `/v1/*`.
pub const API_TOKEN: &str = "fuzz-token";

/// The API as `Server` serves it (the router behind the bearer-token layer, hyper's HTTP/1 with
/// the same limits), over an in-memory stream instead of a socket: request line, headers,
/// paths, query strings and bodies are parsed by the same code. State: two pods with verdicts
/// (one healthy, one unhealthy), no Kubernetes API.
pub struct ApiHarness {
    rt: tokio::runtime::Runtime,
    router: Router,
    http: hyper::server::conn::http1::Builder,
}

impl Default for ApiHarness {
    fn default() -> Self {
        Self::new()
    }
}

fn pod(name: &str) -> WorkloadLabels {
    WorkloadLabels {
        workload_kind: "pod",
        workload: name.into(),
        pod_uid: format!("{name}-0000-0000-0000-000000000000"),
        container_id: String::new(),
        kubernetes: Default::default(),
    }
}

fn engine_with_verdicts() -> Engine {
    let config = VerdictConfig {
        geometry: Geometry {
            bucket: Duration::from_secs(1),
            count: 5,
        },
        ..VerdictConfig::default()
    };
    let mut e = Engine::new(config, 1, None);
    let t0 = Instant::now();
    e.tick(t0, SystemTime::now());
    for s in 0..4 {
        let now = t0 + Duration::from_secs(s) + Duration::from_millis(10);
        for (name, r5xx, status) in [("aaaaaaaa", 0, 200), ("bbbbbbbb", 30, 503)] {
            e.on_http_counts(
                &pod(name),
                HttpDelta {
                    total: 30,
                    r5xx,
                    failed: 0,
                    lost: 0,
                },
                now,
            );
            for _ in 0..30 {
                e.on_request(
                    &pod(name),
                    false,
                    Some(status),
                    Duration::from_millis(3),
                    now,
                );
            }
        }
        e.tick(now + Duration::from_secs(1), SystemTime::now());
    }
    e
}

impl ApiHarness {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        let metrics = Arc::new(Metrics::new(64));
        let state = ApiState {
            metrics,
            probes: Arc::new(Vec::new()),
            go_http: Arc::new(Mutex::new(Vec::new())),
            verdicts: engine_with_verdicts().shared(),
            readiness_fail_on: Arc::new(vec![State::Unhealthy]),
            kubernetes: None,
        };
        let router = server::with_auth(api::router(state), ApiToken::new(API_TOKEN));
        // As `Server::run` configures it, but for half-closes: the harness closes its sending
        // side after the input and must still get the answers (a real client keeps it open).
        let mut http = hyper::server::conn::http1::Builder::new();
        http.half_close(true)
            .timer(TokioTimer::new())
            .header_read_timeout(server::DEFAULT_HEADER_TIMEOUT)
            .max_buf_size(server::MAX_HEADER_BYTES)
            .max_header_size(server::MAX_HEADER_BYTES);
        Self { rt, router, http }
    }

    /// Sends `request` (any bytes: one request, several pipelined, or garbage) on a fresh
    /// connection, closes the client's sending side, and returns everything the server wrote
    /// until it closed the connection.
    pub fn exchange(&self, request: &[u8]) -> Vec<u8> {
        let router = self.router.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            router.clone().oneshot(req.map(Body::new))
        });
        self.rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let conn = self.http.serve_connection(TokioIo::new(server), svc);
            let (mut rx, mut tx) = tokio::io::split(client);
            // Written and read at once: a server answering pipelined requests while the client
            // still writes would otherwise fill the pipe both ways.
            let write = async {
                // The server may close before reading everything (a malformed request).
                let _ = tx.write_all(request).await;
                let _ = tx.shutdown().await;
            };
            let read = async {
                let mut out = Vec::new();
                let _ = rx.read_to_end(&mut out).await;
                out
            };
            let serve = async {
                // Errors (malformed requests, a client gone mid-body) end the connection.
                let _ = conn.await;
            };
            let (_, _, out) = tokio::join!(serve, write, read);
            out
        })
    }
}

/// The status codes of the responses in `bytes` (status lines at the start of the stream and
/// after each response; bodies are JSON or metrics text, never a status line).
pub fn response_statuses(bytes: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut rest = bytes;
    while let Some(i) = find(rest, b"HTTP/1.1 ") {
        let code = rest
            .get(i + 9..i + 12)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok());
        if let Some(c) = code {
            statuses.push(c);
        }
        rest = &rest[i + 9..];
    }
    statuses
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn api_seeds() -> Vec<(String, Vec<u8>)> {
    let auth = format!("Authorization: Bearer {API_TOKEN}\r\n");
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: collector\r\n{extra}\r\n").into_bytes()
    };
    let mut out: Vec<(String, Vec<u8>)> = vec![
        (
            "metrics-openmetrics".into(),
            get(
                "/metrics",
                "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n",
            ),
        ),
        ("metrics-text".into(), get("/metrics", "")),
        ("healthz".into(), get("/healthz", "")),
        ("unauthorized".into(), get("/v1/workloads", "")),
        (
            "wrong-token".into(),
            get("/v1/probes", "Authorization: bearer nope\r\n"),
        ),
        (
            "workloads-filtered".into(),
            get("/v1/workloads?state=unhealthy&kind=pod", &auth),
        ),
        (
            "workload-by-name".into(),
            get("/v1/workload?kind=pod&name=aaaaaaaa%2Fx", &auth),
        ),
        (
            "workload-ready".into(),
            get("/v1/workload/ready?kind=pod&name=bbbbbbbb", &auth),
        ),
        (
            "pod-health".into(),
            get("/v1/pods/aaaaaaaa-0000-0000-0000-000000000000/health", &auth),
        ),
        (
            "pod-ready-underscores".into(),
            get("/v1/pods/bbbbbbbb_0000_0000_0000_000000000000/ready", &auth),
        ),
        (
            "named-pod".into(),
            get("/v1/pods/shop/web-1/health", &auth),
        ),
        ("kubernetes".into(), get("/v1/kubernetes", &auth)),
        ("go-http".into(), get("/v1/go-http", &auth)),
        ("unknown-param".into(), get("/v1/workloads?x=1&x=2", &auth)),
        ("not-found".into(), get("/nope/%ff%00?a", &auth)),
        (
            "post-body".into(),
            format!(
                "POST /v1/workloads HTTP/1.1\r\nHost: c\r\n{auth}Content-Length: 5\r\n\r\nhello"
            )
            .into_bytes(),
        ),
        (
            "chunked".into(),
            b"PUT /metrics HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "absolute-form".into(),
            get("http://collector:9464/v1/workloads?kind=pod", &auth),
        ),
        (
            "http10-keepalive".into(),
            b"GET /readyz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        ),
        ("garbage".into(), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc".to_vec()),
    ];
    let mut pipelined = get("/healthz", "");
    pipelined.extend(get("/v1/workloads?state=healthy", &auth));
    pipelined.extend(get("/metrics", ""));
    out.push(("pipelined".into(), pipelined));
    out
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// The seeds of a target whose inputs this module defines (`ring_record`, `config`, `api`).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "ring_record" => ring_record_seeds(),
        "config" => config_seeds(),
        "api" => api_seeds(),
        _ => Vec::new(),
    }
}

/// The targets [`seeds`] knows.
pub const SEEDED_TARGETS: [&str; 3] = ["ring_record", "config", "api"];

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: a seed set built from an old record layout, route or option (the fuzzer would
    /// start from inputs that no longer reach past the first check). `UPDATE_FUZZ_SEEDS=1`
    /// rewrites them.
    #[test]
    fn fuzz_seeds_are_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let update = std::env::var_os("UPDATE_FUZZ_SEEDS").is_some();
        for target in SEEDED_TARGETS {
            let dir = root.join(target);
            let want: BTreeMap<String, Vec<u8>> = seeds(target).into_iter().collect();
            if update {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("seed directory");
                for (name, bytes) in &want {
                    std::fs::write(dir.join(name), bytes).expect("seed written");
                }
            }
            let have: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| {
                    let e = e.expect("entry");
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, std::fs::read(e.path()).expect("seed read"))
                })
                .collect();
            assert!(
                have == want,
                "fuzz/seeds/{target} differs from collector::fuzzing::seeds: run \
                 UPDATE_FUZZ_SEEDS=1 cargo test -p collector --lib fuzzing"
            );
        }
    }

    /// Catches: go_binary seeds whose DWARF (plain, SHF_COMPRESSED zlib, GNU .zdebug) stops
    /// before the struct layouts are read, so the fuzzer never mutates the DWARF reader's
    /// later stages. (ELF, build info and .gopclntab: tests/go_binary.rs,
    /// fuzz_seeds_reach_probe_points.)
    #[test]
    fn go_binary_seeds_reach_the_dwarf_layouts() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/go_binary");
        for name in [
            "synthetic-go-dwarf",
            "synthetic-go-dwarf-zlib",
            "synthetic-go-zdebug",
        ] {
            let got = crate::probes::go_http::offsets::from_dwarf(&root.join(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                got,
                Some(crate::probes::go_http::offsets::GoOffsets {
                    request_method: 0,
                    request_url: 16,
                    request_pattern: Some(208),
                    request_proto_major: 40,
                    request_tls: 200,
                    url_path: 56,
                    http2: None,
                }),
                "{name}"
            );
        }
    }

    /// Catches: seeds that stop at the first check (every record rejected, every request a
    /// 400/401, every configuration an error): the fuzzer would not reach the code behind it.
    #[test]
    fn seeds_reach_past_the_first_checks() {
        let rr = |name: &str| {
            let (_, bytes) = ring_record_seeds()
                .into_iter()
                .find(|(n, _)| n == name)
                .expect("seed");
            ring_records(&bytes)
        };
        assert_eq!(
            rr("sequence"),
            RecordsOutcome {
                decoded: 6,
                rejected: 0
            }
        );
        assert_eq!(
            rr("http-wire-line"),
            RecordsOutcome {
                decoded: 1,
                rejected: 0
            }
        );
        assert_eq!(
            rr("bad-version"),
            RecordsOutcome {
                decoded: 0,
                rejected: 1
            }
        );

        let seed = |name: &str| -> Vec<u8> {
            config_seeds()
                .into_iter()
                .find(|(n, _)| n == name)
                .expect("seed")
                .1
        };
        let c = config(&seed("listen")).expect("valid");
        assert_eq!(c.listen, "127.0.0.1:9464".parse().expect("addr"));
        let c = config(&seed("file")).expect("valid");
        assert_eq!(c.harvest_interval, Duration::from_secs(5));
        assert!(config(&seed("otlp-env")).expect("valid").otlp.is_some());
        assert!(config(&seed("bad-duration")).is_err());
        let c = config(&seed("file-full")).expect("README's file examples are valid");
        assert_eq!(c.api.max_connections, 256);

        let api = ApiHarness::new();
        let status = |name: &str| {
            let (_, bytes) = api_seeds()
                .into_iter()
                .find(|(n, _)| n == name)
                .expect("seed");
            response_statuses(&api.exchange(&bytes))
        };
        assert_eq!(status("metrics-openmetrics"), [200]);
        assert_eq!(status("unauthorized"), [401]);
        assert_eq!(status("workloads-filtered"), [200]);
        assert_eq!(status("workload-ready"), [503], "bbbbbbbb is unhealthy");
        assert_eq!(status("pod-health"), [200]);
        assert_eq!(status("unknown-param"), [400]);
        assert_eq!(status("named-pod"), [404], "no Kubernetes API");
        assert_eq!(status("pipelined"), [200, 200, 200]);
        assert_eq!(status("garbage"), [400]);
    }
}

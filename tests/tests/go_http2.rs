//! HTTP/2 through Go's net/http, observed by the uprobes: the TLS server of the Go test server
//! (ALPN h2, what `ListenAndServeTLS` negotiates by default) and its h2c listener (Go ≥ 1.24's
//! `Server.Protocols`), driven by a real HTTP/2 client (tests/go/h2client: one multiplexed
//! connection, several streams in flight). Statuses come from net/http's HTTP/2 writer state
//! at the end of `ServeHTTP` (collector-ebpf/src/http.rs, `http2_status`).
//!
//! Bugs these catch: HTTP/2 responses counted `unobserved_protocol` instead of by status (what
//! the collector did before); a status read at a wrong offset (the offsets table or DWARF
//! wrong for a Go minor: a wrong count per status, or `unobserved_protocol` where the read
//! value is not a status); the writer's type check failing (the itab hash of a minor wrong:
//! everything `unobserved_protocol`); a panicking HTTP/2 handler not counted, or counted
//! twice; an HTTP/2 duration longer than the client's own.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use collector::{
    app,
    config::{Config, GoUprobes},
};
use integration_tests::*;

const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);
const SLOW_MS: u64 = 300;

/// What each server gets over HTTP/2: (method, path, status (None = the handler panics), count).
const MIX: [(&str, &str, Option<u16>, u64); 11] = [
    ("GET", "/ok", Some(200), 5),
    ("GET", "/err", Some(503), 3),
    ("GET", "/missing", Some(404), 2),
    ("HEAD", "/ok", Some(200), 2),
    ("POST", "/ok", Some(200), 2),
    ("GET", "/panic", None, 2),
    // Writes nothing: net/http's HTTP/2 server sends 200 once the handler returns.
    ("GET", "/empty", Some(200), 1),
    ("GET", "/items/42", Some(200), 2),
    ("GET", "/healthz", Some(200), 3),
    ("GET", "/slow?ms=300", Some(200), 1),
    // The status is written by a goroutine the handler starts.
    ("GET", "/status-async?code=504", Some(504), 2),
];

fn go_minor(version: &str) -> u32 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("version like 1.24.3")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// tests/go/h2client, built with the newest Go of tests/go/versions (the client needs ≥ 1.24
/// for h2c); rebuilt by `go build` only when its sources changed (the build cache).
fn h2client() -> PathBuf {
    let versions = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/go/versions"))
        .expect("versions");
    let newest = versions
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a Go version");
    let target = target_dir();
    let out = target.join("go-fixtures/h2client");
    let build = Command::new(target.join("go").join(newest).join("bin/go"))
        .args(["build", "-trimpath", "-buildvcs=false", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/go/h2client"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOENV", "off")
        .env(
            "GOCACHE",
            std::env::var_os("COLLECTOR_GOCACHE")
                .unwrap_or_else(|| "/var/cache/collector-go/build".into()),
        )
        .env("GOPATH", target.join("go-path"))
        .output()
        .expect("go build (toolchains from `WITH_GO=1 scripts/bootstrap.sh`)");
    assert!(
        build.status.success(),
        "building tests/go/h2client: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    out
}

/// What the client saw of one request.
struct Seen {
    method: String,
    path: String,
    /// None: the stream was reset (a panicking handler).
    status: Option<u16>,
    took: Duration,
}

/// Runs the whole mix over one HTTP/2 connection, `conc` streams at a time; `proto`: "tls"
/// (HTTP/2 over TLS), "h2c", or "http1" (HTTPS over HTTP/1.1 keep-alive connections).
fn run_client(client: &Path, addr: SocketAddr, proto: &str) -> Vec<Seen> {
    let requests: Vec<String> = MIX
        .iter()
        .map(|(method, path, _, n)| format!("{method}:{path}:{n}"))
        .collect();
    run_requests(client, addr, proto, &requests)
}

fn run_requests(client: &Path, addr: SocketAddr, proto: &str, requests: &[String]) -> Vec<Seen> {
    let mut cmd = Command::new(client);
    cmd.arg("-base").arg(addr.to_string()).arg("-conc").arg("4");
    match proto {
        "h2c" => {
            cmd.arg("-h2c");
        }
        "http1" => {
            cmd.arg("-http1");
        }
        _ => {}
    }
    cmd.args(requests);
    let out = cmd.output().expect("h2client");
    assert!(
        out.status.success(),
        "h2client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("h2client JSON");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| Seen {
            method: r["method"].as_str().expect("method").to_owned(),
            path: r["path"].as_str().expect("path").to_owned(),
            status: match r["status"].as_u64().expect("status") {
                0 => None,
                s => Some(u16::try_from(s).expect("status")),
            },
            took: Duration::from_micros(r["micros"].as_u64().expect("micros")),
        })
        .collect()
}

/// One HTTP/1.1 request on its own connection: its status.
fn http1(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// The route the collector reports: the path template (Request.Pattern on Go ≥ 1.23, the
/// normalised path before: the same value).
fn expected_route(path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    if path.starts_with("/items/") {
        "/items/{id}".into()
    } else {
        path.into()
    }
}

/// These tests are about the uprobe path: the socket parser is off (it reads HTTP/1.x only).
async fn start_collector() -> app::Running {
    app::start(uprobe_config()).await.expect("collector starts")
}

fn go_http_listing(addr: SocketAddr) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).expect("collector");
    write!(s, "GET /v1/go-http HTTP/1.0\r\n\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).unwrap_or_default()
}

/// `pid`'s entry in a `/v1/go-http` listing, if any.
fn entry_of(listing: &serde_json::Value, pid: u32) -> Option<serde_json::Value> {
    go_listing_entry(listing.as_array()?, pid).cloned()
}

/// Waits until `/v1/go-http` lists `pid` as instrumented; returns its entry.
fn wait_instrumented(
    addr: SocketAddr,
    pid: u32,
    within: Duration,
    what: &str,
) -> serde_json::Value {
    wait_until_ok_blocking(within, Duration::from_millis(20), what, || {
        let v = go_http_listing(addr);
        entry_of(&v, pid)
            .filter(|e| e["http2"].is_string())
            .ok_or_else(|| format!("pid {pid} not instrumented in {v}"))
    })
}

/// Records of workload `w` that reached the aggregator (probe paths included).
fn records_of(text: &str, w: &[(&str, &str)]) -> u64 {
    [
        "http_server_request_duration_seconds_count",
        "http_server_probe_requests_total",
    ]
    .iter()
    .map(|m| metric_sum(text, m, w).unwrap_or(0.0) as u64)
    .sum()
}

/// Checks the exact counts, records and durations of one server against what the client saw
/// (`seen`), plus `http1_ok` HTTP/1.1 requests to /ok answered 200.
fn check_counts(running: &app::Running, name: &str, workload: &str, seen: &[Seen], http1_ok: u64) {
    let mut expected: BTreeMap<(String, String, String, &str), u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut slow_client = Duration::ZERO;
    let mut slow_n = 0u32;
    for s in seen {
        let want = MIX
            .iter()
            .find(|m| m.0 == s.method && m.1 == s.path)
            .expect("a request of the mix")
            .2;
        assert_eq!(s.status, want, "{name}: {} {}", s.method, s.path);
        if s.path.starts_with("/slow") {
            slow_client += s.took;
            slow_n += 1;
        }
        let (code, err, outcome) = match s.status {
            Some(c) => (
                c.to_string(),
                "",
                ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(c / 100) - 1],
            ),
            None => (String::new(), "panic", "panic"),
        };
        *expected
            .entry((s.method.clone(), expected_route(&s.path), code, err))
            .or_default() += 1;
        *outcomes.entry(outcome).or_default() += 1;
    }
    if http1_ok > 0 {
        *expected
            .entry(("GET".into(), "/ok".into(), "200".into(), ""))
            .or_default() += http1_ok;
        *outcomes.entry("2xx").or_default() += http1_ok;
    }
    let want_total: u64 = outcomes.values().sum();
    let w = [("workload_kind", "cgroup"), ("workload", workload)];
    let text = wait_until_ok_blocking(DEADLINE, POLL, &format!("{name}: all counted"), || {
        let text = scrape(running.addr);
        let total = metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
        let records = records_of(&text, &w);
        if total == want_total && records == want_total {
            Ok(text)
        } else {
            Err(format!(
                "exact count {total}/{want_total}, records {records}/{want_total}"
            ))
        }
    });
    let outcome = |o: &str| {
        metric_sum(
            &text,
            "collector_http_requests_total",
            &[w[0], w[1], ("outcome", o)],
        )
        .unwrap_or(0.0) as u64
    };
    for o in [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "panic",
        "aborted",
        "unobserved_protocol",
    ] {
        assert_eq!(
            outcome(o),
            outcomes.get(o).copied().unwrap_or(0),
            "{name}: outcome {o}\n{text}"
        );
    }
    for ((method, route, code, err), count) in &expected {
        let labels = [
            w[0],
            w[1],
            ("method", method.as_str()),
            ("route", route.as_str()),
            ("status_code", code.as_str()),
            ("error_type", err),
        ];
        let metric = if route == "/healthz" {
            "http_server_probe_requests_total"
        } else {
            "http_server_request_duration_seconds_count"
        };
        assert_eq!(
            metric_sum(&text, metric, &labels).unwrap_or(0.0) as u64,
            *count,
            "{name}: {metric} {method} {route} {code} {err}\n{text}"
        );
    }
    assert_eq!(
        metric_sum(&text, "collector_http_requests_lost_total", &w),
        None,
        "{name}: nothing lost"
    );
    // The delayed handler: at least its delay, never longer than the client saw.
    let slow = [w[0], w[1], ("route", "/slow")];
    let sum = metric_sum(&text, "http_server_request_duration_seconds_sum", &slow)
        .expect("slow request observed");
    assert!(
        sum >= f64::from(slow_n) * SLOW_MS as f64 / 1000.0 && sum <= slow_client.as_secs_f64(),
        "{name}: server-side {sum}s, handler sleeps {SLOW_MS} ms, client saw {slow_client:?}"
    );
    eprintln!(
        "{name}: {want_total} requests exact; slow request server {sum:.4}s client {:.4}s",
        slow_client.as_secs_f64()
    );
}

/// The oldest and newest Go of tests/go/versions, each default, stripped and PIE: HTTP/2 over
/// TLS (ALPN h2) on every build, and h2c (with HTTP/1.1 on the same listener) where net/http
/// serves it (Go ≥ 1.24; Go 1.24's own build too, the first with `Server.Protocols` and the
/// last minor layout before the HTTP/2 server moved to net/http/internal/http2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_statuses_durations_and_panics_are_counted_exactly() {
    require_root();
    let fixtures = go_fixtures();
    let minors: Vec<u32> = fixtures.iter().map(|(v, ..)| go_minor(v)).collect();
    let (oldest, newest) = (
        *minors.iter().min().expect("fixtures"),
        *minors.iter().max().expect("fixtures"),
    );
    let client = h2client();
    let dir = std::env::temp_dir().join(format!("go-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = tls_cert(&dir);
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let running = start_collector().await;
    let prefix = unique_prefix("h2");
    let mut servers = 0;
    for (i, (version, variant, path)) in fixtures.iter().enumerate() {
        let minor = go_minor(version);
        let tls = minor == oldest || minor == newest;
        let h2c = minor >= 24 && (tls || (minor == 24 && variant == "default"));
        for (mode, on) in [("tls", tls), ("h2c", h2c)] {
            if !on {
                continue;
            }
            let name = format!("go{version}-{variant}-{mode}");
            let cgroup = HostCgroup::create(&prefix, &format!("{i}-{mode}")).expect("cgroup");
            let args: Vec<&str> = if mode == "tls" {
                vec!["-listen", "127.0.0.1:0", "-tls-cert", cert, "-tls-key", key]
            } else {
                vec!["-listen", "127.0.0.1:0", "-h2c"]
            };
            let server = cgroup.spawn_announced(path, &args, "listening on ");
            let entry = wait_instrumented(
                running.addr,
                server.child.id(),
                Duration::from_secs(5),
                &format!("{name} instrumented"),
            );
            assert_eq!(entry["http2"], "status observed", "{name}: {entry}");
            let seen = run_client(&client, server.addr, mode);
            // h2c shares its listener with HTTP/1.1: both counted, neither taken for the other.
            let http1_ok = if mode == "h2c" {
                for _ in 0..2 {
                    assert_eq!(http1(server.addr, "/ok"), Some(200), "{name}: HTTP/1.1");
                }
                2
            } else {
                0
            };
            check_counts(&running, &name, &cgroup.workload(), &seen, http1_ok);
            servers += 1;
        }
    }
    // (oldest + newest) × 3 builds over TLS, newest × 3 + Go 1.24 default over h2c.
    assert_eq!(servers, 10, "servers checked");
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// h2c requests to the newest Go, unstripped and stripped, by curl (one request per
/// connection: curl 7.88 does not reuse an h2c connection it opened with prior knowledge): the
/// part the kernel matrix (`cargo xtask vm-test`) runs on Debian's 6.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_h2c_statuses_and_panics_on_this_kernel() {
    require_root();
    let fixtures = go_fixtures();
    let newest = fixtures
        .iter()
        .map(|(v, ..)| v.clone())
        .max_by_key(|v| go_minor(v))
        .expect("fixtures");
    let running = start_collector().await;
    let prefix = unique_prefix("h2k");
    for variant in ["default", "stripped"] {
        let (_, _, path) = fixtures
            .iter()
            .find(|(v, var, _)| *v == newest && var == variant)
            .expect("fixture");
        let cgroup = HostCgroup::create(&prefix, variant).expect("cgroup");
        let workload = cgroup.workload();
        let server =
            cgroup.spawn_announced(path, &["-listen", "127.0.0.1:0", "-h2c"], "listening on ");
        // Generous: software emulation makes everything slower.
        let entry = wait_instrumented(
            running.addr,
            server.child.id(),
            Duration::from_secs(30),
            &format!("{variant} instrumented"),
        );
        assert_eq!(entry["http2"], "status observed", "{variant}: {entry}");
        for (p, want, n) in [
            ("/ok", "200 2", 3),
            ("/err", "503 2", 2),
            ("/missing", "404 2", 1),
            ("/panic", "000 0", 2),
        ] {
            for _ in 0..n {
                let out = Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code} %{http_version}",
                        "--http2-prior-knowledge",
                    ])
                    .arg(format!("http://{}{p}", server.addr))
                    .output()
                    .expect("curl");
                assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{variant} {p}");
            }
        }
        let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
        let text = wait_until_ok_blocking(
            Duration::from_secs(30),
            POLL,
            &format!("{variant}: counted"),
            || {
                let text = scrape(running.addr);
                let total =
                    metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
                let records = records_of(&text, &w);
                if total == 8 && records == 8 {
                    Ok(text)
                } else {
                    Err(format!("{total}/8, records {records}/8"))
                }
            },
        );
        let outcome = |o: &str| {
            metric_sum(
                &text,
                "collector_http_requests_total",
                &[w[0], w[1], ("outcome", o)],
            )
            .unwrap_or(0.0) as u64
        };
        assert_eq!(
            ["2xx", "4xx", "5xx", "panic", "unobserved_protocol"].map(outcome),
            [3, 1, 2, 2, 0],
            "{variant}\n{text}"
        );
        let count = |route: &str, code: &str| {
            metric_sum(
                &text,
                "http_server_request_duration_seconds_count",
                &[w[0], w[1], ("route", route), ("status_code", code)],
            )
            .unwrap_or(0.0) as u64
        };
        assert_eq!(
            (
                count("/ok", "200"),
                count("/err", "503"),
                count("/missing", "404")
            ),
            (3, 2, 1),
            "{variant}"
        );
        eprintln!("go {newest} {variant}: 8 h2c requests counted exactly on this kernel");
        drop(server);
    }
    running.shutdown().await;
}

/// The socket parser alone (`--go-http-uprobes off`), next to an h2c listener that also serves
/// HTTP/1.1: the HTTP/1.1 requests are counted exactly, the HTTP/2 connections (preface
/// `PRI * HTTP/2.0`) are neither counted, nor charged as lost, nor left as aborted requests.
/// Catches a parser that takes the preface for a request line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_parser_leaves_h2c_connections_alone() {
    require_root();
    let fixtures = go_fixtures();
    let (_, _, path) = fixtures
        .iter()
        .filter(|(_, variant, _)| variant == "default")
        .max_by_key(|(v, ..)| go_minor(v))
        .expect("fixtures");
    let client = h2client();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.http.uprobes = GoUprobes::Off;
    let running = app::start(config).await.expect("collector starts");
    let prefix = unique_prefix("h2w");
    let cgroup = HostCgroup::create(&prefix, "h2c").expect("cgroup");
    let workload = cgroup.workload();
    let server = cgroup.spawn_announced(path, &["-listen", "127.0.0.1:0", "-h2c"], "listening on ");
    // The parser follows connections from their first request line: nothing to wait for.
    let seen = run_client(&client, server.addr, "h2c");
    assert_eq!(seen.len() as u64, MIX.iter().map(|m| m.3).sum::<u64>());
    for _ in 0..2 {
        assert_eq!(http1(server.addr, "/ok"), Some(200), "HTTP/1.1");
    }
    // More HTTP/2 after the HTTP/1.1: a connection the parser wrongly followed would only now
    // show its requests as aborted or lost, when it closes.
    run_client(&client, server.addr, "h2c");
    drop(server);
    // A marker after everything closed: a request to a new server of the same workload. The
    // kernel charges a connection's leftovers when it closes, before the marker is answered,
    // and a harvest reads every counter at once: once the marker is counted, so is the rest.
    let marker = cgroup.spawn_announced(path, &["-listen", "127.0.0.1:0"], "listening on ");
    assert_eq!(http1(marker.addr, "/ok"), Some(200), "marker");
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let text = wait_until_ok_blocking(DEADLINE, POLL, "HTTP/1.1 and the marker counted", || {
        let text = scrape(running.addr);
        match metric_sum(&text, "collector_http_requests_total", &w) {
            Some(t) if t >= 3.0 => Ok(text),
            t => Err(format!("{t:?} of 3")),
        }
    });
    let outcome = |o: &str| {
        metric_sum(
            &text,
            "collector_http_requests_total",
            &[w[0], w[1], ("outcome", o)],
        )
        .unwrap_or(0.0) as u64
    };
    assert_eq!(
        [
            "2xx",
            "4xx",
            "5xx",
            "panic",
            "aborted",
            "unobserved_protocol"
        ]
        .map(outcome),
        [3, 0, 0, 0, 0, 0],
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "collector_http_requests_lost_total", &w),
        None,
        "nothing charged as lost\n{text}"
    );
    running.shutdown().await;
}

/// `pid`'s entry in `/v1/go-http` once it is there (instrumented or not).
fn wait_listed(addr: SocketAddr, pid: u32, what: &str) -> serde_json::Value {
    wait_until_ok_blocking(DEADLINE, Duration::from_millis(20), what, || {
        let v = go_http_listing(addr);
        entry_of(&v, pid).ok_or_else(|| format!("pid {pid} not listed in {v}"))
    })
}

/// The defaults: the socket parser, and `--go-http-uprobes auto`. A Go server that only speaks
/// plaintext HTTP/1.x gets no uprobe (listed `not_needed`); once a socket of a server speaks
/// TLS or h2c, the kernel tells userspace and that executable gets uprobes counting only what
/// the parser cannot read. A second server of the same file (a workload of its own) is then
/// counted exactly from its first request: HTTP/2 over TLS and HTTPS over HTTP/1.1 by the
/// uprobes, plaintext HTTP/1.1 on the h2c listener by the parser, none twice.
///
/// Catches: uprobes attached to plaintext servers (the cost auto exists to avoid); TLS or h2c
/// servers never instrumented (no notice, the port not matched to the process); plaintext
/// requests counted by both sources (the `ProtoMajor`/`TLS` check in the kernel wrong, e.g.
/// `Request.TLS` at a wrong offset: every HTTPS request then left out, or every plaintext one
/// counted twice); HTTP/1.1-over-TLS requests missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uprobes_count_tls_and_h2c_once_beside_the_socket_parser() {
    require_root();
    let fixtures = go_fixtures();
    let minors: Vec<u32> = fixtures.iter().map(|(v, ..)| go_minor(v)).collect();
    let (oldest, newest) = (
        *minors.iter().min().expect("fixtures"),
        *minors.iter().max().expect("fixtures"),
    );
    let dir = std::env::temp_dir().join(format!("go-h2a-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // A private copy of each fixture: uprobes attach per file, and this collector's parser sees
    // every socket on the host, so another test's TLS server of the same fixture file would
    // get the file instrumented before this test's first connection.
    let fixture = |minor: u32, variant: &str| {
        let (version, path) = fixtures
            .iter()
            .find(|(v, var, _)| go_minor(v) == minor && var == variant)
            .map(|(v, _, p)| (v.clone(), p.clone()))
            .expect("fixture");
        let copy = dir.join(format!("server-{version}-{variant}"));
        std::fs::copy(&path, &copy).expect("copy the fixture");
        (version, copy)
    };
    let client = h2client();
    let (cert, key) = tls_cert(&dir);
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    assert!(
        config.http.socket && config.http.uprobes == GoUprobes::Auto,
        "the defaults"
    );
    let running = app::start(config).await.expect("collector starts");
    let prefix = unique_prefix("h2a");

    // Plaintext HTTP/1.1 only: the parser's, no uprobes.
    let (_, plain_path) = fixture(oldest, "stripped");
    let plain_cg = HostCgroup::create(&prefix, "plain").expect("cgroup");
    let plain = plain_cg.spawn_announced(&plain_path, &["-listen", "127.0.0.1:0"], "listening on ");
    for _ in 0..3 {
        assert_eq!(http1(plain.addr, "/ok"), Some(200), "plaintext");
    }
    let entry = wait_listed(running.addr, plain.child.id(), "plaintext server listed");
    assert_eq!(
        (&entry["instrumented"], &entry["reason"]),
        (&serde_json::json!(false), &serde_json::json!("not_needed")),
        "{entry}"
    );

    let mut checked = 0;
    for (minor, variant, mode) in [
        (newest, "default", "tls"),
        (newest, "stripped", "h2c"),
        (oldest, "pie", "tls"),
    ] {
        let (version, path) = fixture(minor, variant);
        let name = format!("go{version}-{variant}-{mode}-auto");
        let args: Vec<&str> = if mode == "tls" {
            vec!["-listen", "127.0.0.1:0", "-tls-cert", cert, "-tls-key", key]
        } else {
            vec!["-listen", "127.0.0.1:0", "-h2c"]
        };
        // The file's first server: plaintext-clean until its first TLS or h2c connection.
        let warm_cg = HostCgroup::create(&prefix, &format!("{checked}-warm")).expect("cgroup");
        let warm = warm_cg.spawn_announced(&path, &args, "listening on ");
        let entry = wait_listed(running.addr, warm.child.id(), &format!("{name}: listed"));
        assert_eq!(entry["reason"], "not_needed", "{name}: {entry}");
        let first = run_requests(&client, warm.addr, mode, &["GET:/ok:1".to_owned()]);
        assert_eq!(first[0].status, Some(200), "{name}: first request");
        let entry = wait_instrumented(
            running.addr,
            warm.child.id(),
            Duration::from_secs(10),
            &format!("{name}: instrumented after its first {mode} connection"),
        );
        let unseen = if mode == "tls" { "tls" } else { "h2c" };
        assert_eq!(
            (&entry["requests"], &entry["unseen"]),
            (
                &serde_json::json!("tls_and_http2"),
                &serde_json::json!([unseen])
            ),
            "{name}: {entry}"
        );
        // A second server of the same file, a workload of its own: instrumented at once.
        let cgroup = HostCgroup::create(&prefix, &format!("{checked}-{mode}")).expect("cgroup");
        let server = cgroup.spawn_announced(&path, &args, "listening on ");
        wait_instrumented(
            running.addr,
            server.child.id(),
            Duration::from_secs(5),
            &format!("{name}: second server instrumented"),
        );
        let mut seen = run_client(&client, server.addr, mode);
        let http1_ok = if mode == "tls" {
            // Without /panic: Go's HTTP/1.1 client retries a GET whose reused connection
            // closed before the response, so the server would see it twice.
            let requests: Vec<String> = MIX
                .iter()
                .filter(|m| m.2.is_some())
                .map(|(method, path, _, n)| format!("{method}:{path}:{n}"))
                .collect();
            seen.extend(run_requests(&client, server.addr, "http1", &requests));
            0
        } else {
            for _ in 0..2 {
                assert_eq!(http1(server.addr, "/ok"), Some(200), "{name}: HTTP/1.1");
            }
            2
        };
        check_counts(&running, &name, &cgroup.workload(), &seen, http1_ok);
        checked += 1;
    }
    assert_eq!(checked, 3);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

//! Go net/http servers observed through uprobes, for every Go minor 1.17–1.27, each built
//! default, stripped and PIE (tests/go/build-fixtures.sh): exact per-(method, route, status)
//! counts, panics, durations against the client's own clock, probe paths apart, HTTPS, and a
//! server started after the collector.

use collector_common::http::GoHttpOffsets;
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use collector::{app, config::Config};
use integration_tests::*;

const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);
const SLOW_MS: u64 = 300;

struct Fixture {
    version: String,
    variant: String,
    path: PathBuf,
}

fn fixtures() -> Vec<Fixture> {
    go_fixtures()
        .into_iter()
        .map(|(version, variant, path)| Fixture {
            version,
            variant,
            path,
        })
        .collect()
}

fn go_minor(version: &str) -> u32 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("version like 1.24.3")
}

/// Kills the server at the end of the test.
type Server = AnnouncedServer;

fn start_server(cgroup: &HostCgroup, bin: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    cgroup.spawn_announced(bin, &args, "listening on ")
}

/// One HTTP/1.1 request on its own connection; returns the status (None when the server closed
/// the connection without answering, as after a panic) and the client-side duration.
fn request(addr: SocketAddr, method: &str, path: &str) -> (Option<u16>, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let body = if method == "POST" { "x=1" } else { "" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&resp);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (status, elapsed)
}

/// Reads one response from a keep-alive connection: (status, body). Bodies are framed by
/// Content-Length (every route of the test server used here sets it); a HEAD response has none.
fn read_response(r: &mut BufReader<TcpStream>, method: &str) -> (u16, Vec<u8>) {
    let mut status_line = String::new();
    r.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            len = value.trim().parse().expect("Content-Length");
        }
    }
    let mut body = vec![0; if method == "HEAD" { 0 } else { len }];
    r.read_exact(&mut body).expect("body");
    (status, body)
}

/// Requests one after the other on one keep-alive connection; returns their statuses.
fn keep_alive(addr: SocketAddr, requests: &[(&str, &str)]) -> Vec<u16> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    requests
        .iter()
        .map(|(method, path)| {
            let body = if *method == "POST" { "x=1" } else { "" };
            write!(
                w,
                "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .expect("write");
            read_response(&mut r, method).0
        })
        .collect()
}

/// Requests of workload `w` that reached the aggregator as records (probe paths included).
/// Records reach it on the reader's timer (they do not wake the reader), counts at the
/// harvest: a test waiting for exact counts waits for the records too.
fn records_of(text: &str, w: &[(&str, &str)]) -> u64 {
    [
        "http_server_request_duration_seconds_count",
        "http_server_probe_requests_total",
    ]
    .iter()
    .map(|m| metric_sum(text, m, w).unwrap_or(0.0) as u64)
    .sum()
}

/// Sends one request on a new connection and leaves it waiting (for `/hold`).
fn send_only(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    s
}

/// `collector_http_requests_total` of the workload for each outcome of `want`.
fn outcomes<'a>(text: &str, workload: &str, want: &[(&'a str, u64)]) -> Vec<(&'a str, u64)> {
    want.iter()
        .map(|(o, _)| {
            let n = metric_sum(
                text,
                "collector_http_requests_total",
                &[
                    ("workload_kind", "cgroup"),
                    ("workload", workload),
                    ("outcome", o),
                ],
            )
            .unwrap_or(0.0) as u64;
            (*o, n)
        })
        .collect()
}

/// `collector_kernel_drops_total` for `reason`, all CPUs.
fn drops(text: &str, reason: &str) -> u64 {
    metric_sum(text, "collector_kernel_drops_total", &[("reason", reason)]).unwrap_or(0.0) as u64
}

/// Kernel drops that make every workload's verdict unknown
/// (`collector::aggregate::loses_signal`), by reason.
fn node_wide_loss(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("collector_kernel_drops_total{") else {
            continue;
        };
        let reason = rest
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("reason label");
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        match collector::aggregate::http::drop_reason_loses_signal(reason) {
            Some(true) if v > 0.0 => *out.entry(reason.to_string()).or_default() += v as u64,
            Some(_) => {}
            None => panic!("unknown drop reason {reason}"),
        }
    }
    out
}

/// The mix each server gets: (method, path, expected status (None = panic), count).
const MIX: [(&str, &str, Option<u16>, u64); 11] = [
    ("GET", "/ok", Some(200), 5),
    ("GET", "/err", Some(503), 3),
    ("GET", "/missing", Some(404), 2),
    ("HEAD", "/ok", Some(200), 2),
    ("POST", "/ok", Some(200), 2),
    ("GET", "/panic", None, 2),
    ("GET", "/empty", Some(200), 1),
    ("GET", "/items/42", Some(200), 2),
    ("GET", "/healthz", Some(200), 3),
    ("GET", "/slow?ms=300", Some(200), 1),
    // The status is written by a goroutine the handler starts.
    ("GET", "/status-async?code=504", Some(504), 2),
];

/// One keep-alive connection of each server: (method, path, status).
const KEEP_ALIVE: [(&str, &str, u16); 7] = [
    ("GET", "/ok", 200),
    ("GET", "/err", 503),
    ("POST", "/ok", 200),
    ("GET", "/items/7", 200),
    ("GET", "/empty", 200),
    ("GET", "/status-async?code=202", 202),
    ("HEAD", "/ok", 200),
];
/// Connections with a request each in flight at once (then two more on the same connection).
const CONCURRENT: u64 = 8;

/// The route the collector must report for a path: the path template, the same whether Go
/// matched a mux pattern (Go ≥ 1.23 has Request.Pattern, `GET /items/{id}`: its method is
/// not part of the route) or the collector normalised the path (older Go).
fn expected_route(_minor: u32, _method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    if path.starts_with("/items/") {
        "/items/{id}".into()
    } else {
        path.into()
    }
}

/// These tests are about the uprobe path: the socket parser (which would count the same
/// requests) is off, the uprobes on (`--no-http-socket --go-http-uprobes all`).
async fn start_collector() -> app::Running {
    app::start(uprobe_config()).await.expect("collector starts")
}

/// Waits until Go discovery lists `pid` as instrumented (`/v1/go-http` lists skipped servers
/// too, with `instrumented: false`).
fn wait_instrumented(addr: SocketAddr, pid: u32, within: Duration, what: impl AsRef<str>) {
    wait_until_ok_blocking(within, Duration::from_millis(20), what.as_ref(), || {
        let (found, body) = instrumented(addr, pid);
        if found {
            Ok(())
        } else {
            Err(format!("pid {pid} not in {body}"))
        }
    });
}

fn instrumented(addr: SocketAddr, pid: u32) -> (bool, String) {
    let mut s = TcpStream::connect(addr).expect("collector");
    write!(s, "GET /v1/go-http HTTP/1.0\r\n\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let found = v.as_array().into_iter().flatten().any(|e| {
        e["instrumented"] == true
            && e["pids"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p.as_u64() == Some(u64::from(pid)))
    });
    (found, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_go_version_and_build_counts_requests_exactly() {
    require_root();
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 33, "11 Go minors × 3 variants");
    let running = start_collector().await;
    let prefix = unique_prefix("gh");
    for (i, f) in fixtures.iter().enumerate() {
        let name = format!("go{}-{}-{i}", f.version, f.variant);
        let cgroup = HostCgroup::create(&prefix, &name).expect("cgroup");
        let workload = cgroup.workload();
        // Started after the collector: found through the exec hook.
        let spawned = Instant::now();
        let server = start_server(&cgroup, &f.path, &[]);
        let pid = server.child.id();
        wait_instrumented(
            running.addr,
            pid,
            Duration::from_secs(5),
            format!("{name} instrumented"),
        );
        let attach = spawned.elapsed();
        // Requests from one second after exec on must all be counted.
        if let Some(rest) = Duration::from_secs(1).checked_sub(spawned.elapsed()) {
            std::thread::sleep(rest);
        }
        let minor = go_minor(&f.version);
        let mut slow_client = Duration::ZERO;
        let mut expected: BTreeMap<(String, String, String, &str), u64> = BTreeMap::new();
        let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
        let mut expect = |method: &str, path: &str, status: Option<u16>, count: u64| {
            let route = expected_route(minor, method, path);
            let (code, err) = match status {
                Some(s) => (s.to_string(), ""),
                None => (String::new(), "panic"),
            };
            *expected
                .entry((method.to_string(), route, code, err))
                .or_default() += count;
            let outcome = match status.map(|s| s / 100) {
                Some(2) => "2xx",
                Some(4) => "4xx",
                Some(5) => "5xx",
                Some(_) => panic!("status {status:?}"),
                None => "panic",
            };
            *outcomes.entry(outcome).or_default() += count;
        };
        for (method, path, status, count) in MIX {
            for _ in 0..count {
                let (got, took) = request(server.addr, method, path);
                assert_eq!(got, status, "{name}: {method} {path}");
                if path.starts_with("/slow") {
                    slow_client = took;
                }
            }
            expect(method, path, status, count);
        }
        // Keep-alive: every request of one connection counted, each with its own status.
        let ka: Vec<_> = KEEP_ALIVE.iter().map(|(m, p, _)| (*m, *p)).collect();
        let got = keep_alive(server.addr, &ka);
        let want: Vec<u16> = KEEP_ALIVE.iter().map(|k| k.2).collect();
        assert_eq!(got, want, "{name}: keep-alive statuses");
        for (method, path, status) in KEEP_ALIVE {
            expect(method, path, Some(status), 1);
        }
        // Concurrent: CONCURRENT requests in flight at once (the server releases them only
        // when all are waiting), then two more on each of their connections.
        let key = format!("conc-{i}");
        let clients: Vec<_> = (0..CONCURRENT)
            .map(|_| {
                let (addr, hold) = (server.addr, format!("/hold?key={key}"));
                std::thread::spawn(move || {
                    keep_alive(
                        addr,
                        &[("GET", hold.as_str()), ("GET", "/ok"), ("GET", "/ok")],
                    )
                })
            })
            .collect();
        let release = format!("/release?key={key}&after={CONCURRENT}");
        assert_eq!(
            request(server.addr, "GET", &release).0,
            Some(200),
            "{name}: concurrent holds released"
        );
        for c in clients {
            assert_eq!(c.join().expect("client"), [200, 200, 200], "{name}");
        }
        expect("GET", "/hold", Some(200), CONCURRENT);
        expect("GET", "/ok", Some(200), 2 * CONCURRENT);
        expect("GET", "/release", Some(200), 1);
        let want_total: u64 = outcomes.values().sum();
        let want_records: u64 = expected.values().sum();
        let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
        let text = wait_until_ok_blocking(
            DEADLINE,
            POLL,
            &format!("{name}: all requests counted"),
            || {
                let text = scrape(running.addr);
                let total =
                    metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
                let records = records_of(&text, &w);
                if total == want_total && records == want_records {
                    Ok(text)
                } else {
                    Err(format!(
                        "exact count {total}/{want_total}, records {records}/{want_records}"
                    ))
                }
            },
        );
        for ((method, route, code, err), count) in &expected {
            let labels = [
                w[0],
                w[1],
                ("method", method.as_str()),
                ("route", route.as_str()),
                ("status_code", code.as_str()),
                ("error_type", err),
            ];
            let probe = route.ends_with("/healthz");
            let metric = if probe {
                "http_server_probe_requests_total"
            } else {
                "http_server_request_duration_seconds_count"
            };
            let got = metric_sum(&text, metric, &labels).unwrap_or(0.0) as u64;
            assert_eq!(
                got, *count,
                "{name}: {metric} {method} {route} {code} {err}\n{text}"
            );
        }
        // Probe paths stay out of the histogram.
        assert_eq!(
            metric_sum(
                &text,
                "http_server_request_duration_seconds_count",
                &[w[0], w[1], ("route", "/healthz")]
            ),
            None,
            "{name}"
        );
        // Exact kernel counters by outcome.
        let outcome = |o: &str| {
            metric_sum(
                &text,
                "collector_http_requests_total",
                &[w[0], w[1], ("outcome", o)],
            )
            .unwrap_or(0.0) as u64
        };
        for (o, n) in &outcomes {
            assert_eq!(outcome(o), *n, "{name}: outcome {o}");
        }
        assert_eq!(
            ["1xx", "3xx", "aborted", "unobserved_protocol"].map(outcome),
            [0; 4],
            "{name}"
        );
        assert_eq!(
            metric_sum(&text, "collector_http_requests_lost_total", &w),
            None,
            "{name}: nothing lost"
        );
        assert_eq!(node_wide_loss(&text), BTreeMap::new(), "{name}");
        // The delayed handler: at least its delay, never longer than the client saw.
        let slow_route = expected_route(minor, "GET", "/slow");
        let slow = [w[0], w[1], ("route", slow_route.as_str())];
        let sum = metric_sum(&text, "http_server_request_duration_seconds_sum", &slow)
            .expect("slow request observed");
        assert!(
            sum >= SLOW_MS as f64 / 1000.0,
            "{name}: server-side {sum}s < the handler's {SLOW_MS} ms sleep"
        );
        assert!(
            sum <= slow_client.as_secs_f64(),
            "{name}: server-side {sum}s > client-side {slow_client:?}"
        );
        eprintln!(
            "{name}: instrumented {attach:?} after exec; slow request server {sum:.4}s client {:.4}s",
            slow_client.as_secs_f64()
        );
        drop(server);
    }
    running.shutdown().await;
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TLS terminates below ServeHTTP: HTTPS/1.1 is counted like plain HTTP, and HTTP/2 (ALPN h2)
/// by its status too, read from net/http's HTTP/2 writer (tests/tests/go_http2.rs has the
/// HTTP/2 matrix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_counts_http1_and_http2_alike() {
    require_root();
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.27") && f.variant == "stripped")
        .expect("1.27 stripped");
    let dir = std::env::temp_dir().join(format!("go-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = tls_cert(&dir);
    let running = start_collector().await;
    let prefix = unique_prefix("gt");
    let cgroup = HostCgroup::create(&prefix, "tls").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(
        &cgroup,
        &f.path,
        &[
            "-tls-cert",
            cert.to_str().expect("utf-8"),
            "-tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let pid = server.child.id();
    wait_instrumented(
        running.addr,
        pid,
        Duration::from_secs(5),
        "TLS server instrumented",
    );
    let base = format!("https://{}", server.addr);
    for _ in 0..4 {
        assert_eq!(curl(&["--http1.1", &format!("{base}/ok")]), "200 1.1");
    }
    for _ in 0..3 {
        assert_eq!(curl(&["--http1.1", &format!("{base}/err")]), "503 1.1");
    }
    for _ in 0..2 {
        assert_eq!(curl(&["--http2", &format!("{base}/ok")]), "200 2");
    }
    // An HTTP/2 handler that panics: net/http resets the stream, no status reaches curl.
    for _ in 0..3 {
        assert_eq!(curl(&["--http2", &format!("{base}/panic")]), "000 0");
    }
    // And one over TLS with HTTP/1.1: the connection is closed without a response.
    assert_eq!(curl(&["--http1.1", &format!("{base}/panic")]), "000 0");
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let text = wait_until_ok_blocking(DEADLINE, POLL, "TLS requests counted", || {
        let text = scrape(running.addr);
        let total = metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
        let records = records_of(&text, &w);
        if total == 13 && records == 13 {
            Ok(text)
        } else {
            Err(format!("{total}/13, records {records}/13"))
        }
    });
    let count = |route: &str, code: &str, err: &str| {
        metric_sum(
            &text,
            "http_server_request_duration_seconds_count",
            &[
                w[0],
                w[1],
                ("route", route),
                ("status_code", code),
                ("error_type", err),
            ],
        )
        .unwrap_or(0.0) as u64
    };
    assert_eq!(count("/ok", "200", ""), 6, "{text}");
    assert_eq!(count("/err", "503", ""), 3, "{text}");
    let outcome = |o: &str| {
        metric_sum(
            &text,
            "collector_http_requests_total",
            &[w[0], w[1], ("outcome", o)],
        )
        .unwrap_or(0.0) as u64
    };
    assert_eq!(
        (
            outcome("2xx"),
            outcome("5xx"),
            outcome("unobserved_protocol"),
            outcome("panic"),
            outcome("aborted"),
        ),
        (6, 3, 0, 4, 0),
        "{text}"
    );
    assert_eq!(count("/panic", "", "panic"), 4, "{text}");
    drop(server);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server under constant load while collectors attach and detach 50 times: it never
/// crashes and never loses a response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_and_detach_under_load_never_hurts_the_server() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    require_root();
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.24") && f.variant == "pie")
        .expect("1.24 pie");
    let prefix = unique_prefix("gl");
    let cgroup = HostCgroup::create(&prefix, "load").expect("cgroup");
    let mut server = start_server(&cgroup, &f.path, &[]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
            std::thread::spawn(move || {
                let paths = ["/ok", "/items/7", "/err", "/empty"];
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let path = paths[(n + i) % paths.len()];
                    let want = if path == "/err" { 503 } else { 200 };
                    match request(addr, "GET", path).0 {
                        Some(s) if s == want => ok.fetch_add(1, Ordering::Relaxed),
                        _ => bad.fetch_add(1, Ordering::Relaxed),
                    };
                    n += 1;
                }
            })
        })
        .collect();
    let pid = server.child.id();
    for cycle in 0..50 {
        let running = start_collector().await;
        wait_instrumented(
            running.addr,
            pid,
            Duration::from_secs(10),
            format!("cycle {cycle}: instrumented"),
        );
        running.shutdown().await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    eprintln!("50 attach/detach cycles under load: {ok} good responses, {bad} bad");
    assert_eq!(
        server.child.try_wait().expect("wait"),
        None,
        "the server must still run"
    );
    assert_eq!(bad, 0, "every response must be right");
    assert!(ok > 500, "the load really ran ({ok} requests)");
}

/// Records sampled 1 in 5: the kernel's request counters stay exact, and every request is
/// either a record or counted as unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_keeps_request_counts_exact() {
    require_root();
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.25") && f.variant == "default")
        .expect("1.25");
    let mut config = uprobe_config();
    config.http.sample_every = 5;
    let running = app::start(config).await.expect("collector starts");
    let prefix = unique_prefix("gs");
    let cgroup = HostCgroup::create(&prefix, "sampled").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.path, &[]);
    let pid = server.child.id();
    wait_instrumented(running.addr, pid, Duration::from_secs(5), "instrumented");
    const N: u64 = 200;
    for _ in 0..N {
        assert_eq!(request(server.addr, "GET", "/ok").0, Some(200));
    }
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let text = wait_until_ok_blocking(DEADLINE, POLL, "exact counts", || {
        let text = scrape(running.addr);
        let exact = metric_sum(
            &text,
            "collector_http_requests_total",
            &[w[0], w[1], ("outcome", "2xx")],
        )
        .unwrap_or(0.0) as u64;
        let recorded = metric_sum(&text, "http_server_request_duration_seconds_count", &w)
            .unwrap_or(0.0) as u64;
        let unrecorded =
            metric_sum(&text, "collector_http_requests_unrecorded_total", &w).unwrap_or(0.0) as u64;
        if exact == N && recorded + unrecorded == N {
            Ok(text)
        } else {
            Err(format!(
                "exact={exact} recorded={recorded} unrecorded={unrecorded}"
            ))
        }
    });
    let recorded =
        metric_sum(&text, "http_server_request_duration_seconds_count", &w).unwrap_or(0.0) as u64;
    // 1 in 5 on average: far from all and far from none (binomial, p=0.2, n=200: 40 ± 5.7).
    assert!(
        (10..=80).contains(&recorded),
        "{recorded} of {N} recorded at 1 in 5"
    );
    drop(server);
    running.shutdown().await;
}

/// The uprobes on the running kernel, for one unstripped and one stripped binary of the newest
/// Go: the part of this file the kernel matrix (`cargo xtask vm-test`) runs on Debian's 6.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stripped_and_unstripped_on_this_kernel() {
    require_root();
    let fixtures = fixtures();
    let newest = fixtures
        .iter()
        .map(|f| f.version.clone())
        .max_by_key(|v| go_minor(v))
        .expect("fixtures");
    let running = start_collector().await;
    let prefix = unique_prefix("gk");
    for variant in ["default", "stripped"] {
        let f = fixtures
            .iter()
            .find(|f| f.version == newest && f.variant == variant)
            .expect("fixture");
        let cgroup = HostCgroup::create(&prefix, variant).expect("cgroup");
        let workload = cgroup.workload();
        let server = start_server(&cgroup, &f.path, &[]);
        let pid = server.child.id();
        // Generous: software emulation makes everything slower.
        wait_instrumented(
            running.addr,
            pid,
            Duration::from_secs(30),
            format!("{variant} instrumented"),
        );
        for (path, want, n) in [
            ("/ok", Some(200), 3),
            ("/err", Some(503), 2),
            ("/panic", None, 1),
        ] {
            for _ in 0..n {
                assert_eq!(
                    request(server.addr, "GET", path).0,
                    want,
                    "{variant} {path}"
                );
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
                if total == 6 && records == 6 {
                    Ok(text)
                } else {
                    Err(format!("{total}/6, records {records}/6"))
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
            (outcome("2xx"), outcome("5xx"), outcome("panic")),
            (3, 2, 1),
            "{variant}"
        );
        let count = |code: &str| {
            metric_sum(
                &text,
                "http_server_request_duration_seconds_count",
                &[w[0], w[1], ("route", "/ok"), ("status_code", code)],
            )
            .unwrap_or(0.0) as u64
        };
        assert_eq!(count("200"), 3, "{variant}");
        eprintln!("go {newest} {variant}: 6 requests counted exactly on this kernel");
        drop(server);
    }
    running.shutdown().await;
}

/// Records arriving faster than the event budget: the collector raises 1-in-N on its own,
/// request counts stay exact, and every request is a record or counted unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_adapts_to_the_event_budget() {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    require_root();
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.26") && f.variant == "stripped")
        .expect("1.26");
    let mut config = uprobe_config();
    config.http.event_budget = 100;
    let running = app::start(config).await.expect("collector starts");
    let prefix = unique_prefix("ga");
    let cgroup = HostCgroup::create(&prefix, "budget").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.path, &[]);
    let pid = server.child.id();
    wait_instrumented(running.addr, pid, Duration::from_secs(5), "instrumented");
    let sent = Arc::new(AtomicU64::new(0));
    let mut max_every = 0.0f64;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (sent, addr) = (sent.clone(), server.addr);
            std::thread::spawn(move || {
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(4) {
                    assert_eq!(request(addr, "GET", "/ok").0, Some(200));
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while clients.iter().any(|c| !c.is_finished()) {
        let every = scrape(running.addr)
            .lines()
            .find_map(|l| {
                l.strip_prefix("collector_http_sample_every ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        max_every = max_every.max(every);
        std::thread::sleep(Duration::from_millis(200));
    }
    for c in clients {
        c.join().expect("client");
    }
    let n = sent.load(Ordering::Relaxed);
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    wait_until_ok_blocking(
        DEADLINE,
        POLL,
        "exact counts under adaptive sampling",
        || {
            let text = scrape(running.addr);
            let exact = metric_sum(
                &text,
                "collector_http_requests_total",
                &[w[0], w[1], ("outcome", "2xx")],
            )
            .unwrap_or(0.0) as u64;
            let recorded = metric_sum(&text, "http_server_request_duration_seconds_count", &w)
                .unwrap_or(0.0) as u64;
            let unrecorded = metric_sum(&text, "collector_http_requests_unrecorded_total", &w)
                .unwrap_or(0.0) as u64;
            if exact == n && recorded + unrecorded == n {
                Ok(())
            } else {
                Err(format!(
                    "sent={n} exact={exact} recorded={recorded} unrecorded={unrecorded}"
                ))
            }
        },
    );
    eprintln!("{n} requests at a budget of 100 records/s: sampling reached 1 in {max_every}");
    assert!(
        n > 400,
        "the load exceeded the budget ({n} requests in 4 s)"
    );
    assert!(
        max_every >= 2.0,
        "sampling never adapted (1 in {max_every})"
    );
    drop(server);
    running.shutdown().await;
}

/// Waits until `workload`'s kernel counters say `want` for each outcome; returns the scrape.
fn wait_outcomes(addr: SocketAddr, workload: &str, want: &[(&str, u64)], what: &str) -> String {
    wait_until_ok_blocking(DEADLINE, POLL, what, || {
        let text = scrape(addr);
        let got = outcomes(&text, workload, want);
        if got == want {
            Ok(text)
        } else {
            Err(format!("{got:?}, want {want:?}"))
        }
    })
}

/// A request already in flight when the probes attach ends without a start the kernel saw:
/// not counted (its start is unknown), and not a loss either — no verdict becomes unknown,
/// nothing is charged to the workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_attach_are_not_loss() {
    require_root();
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.22") && f.variant == "pie")
        .expect("1.22 pie");
    let prefix = unique_prefix("gi");
    let cgroup = HostCgroup::create(&prefix, "attach").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.path, &[]);
    let addr = server.addr;
    // In flight before the collector exists.
    let held = std::thread::spawn(move || keep_alive(addr, &[("GET", "/hold?key=attach")]));
    let running = start_collector().await;
    wait_instrumented(
        running.addr,
        server.child.id(),
        Duration::from_secs(5),
        "instrumented",
    );
    assert_eq!(
        request(addr, "GET", "/release?key=attach&after=1").0,
        Some(200)
    );
    assert_eq!(held.join().expect("held"), [200]);
    for _ in 0..3 {
        assert_eq!(request(addr, "GET", "/ok").0, Some(200));
    }
    // The release and the three: exactly; the held request not at all.
    let text = wait_outcomes(
        running.addr,
        &workload,
        &[("2xx", 4)],
        "requests after attach counted",
    );
    assert!(
        drops(&text, "http_no_start") >= 1,
        "the held request ended without a start\n{text}"
    );
    assert_eq!(node_wide_loss(&text), BTreeMap::new(), "{text}");
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    assert_eq!(
        metric_sum(&text, "collector_http_requests_lost_total", &w),
        None,
        "{text}"
    );
    drop(server);
    running.shutdown().await;
}

/// A client holding many slow requests on one server fills that server's share of
/// `HTTP_INFLIGHT` only: the excess is counted and charged to that server, and a second
/// server (same binary, another process) keeps exact counts meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_budget_is_per_server_and_excess_is_charged_to_it() {
    require_root();
    const BUDGET: u64 = 1024; // collector_common::maps::HTTP_INFLIGHT_PER_SERVER
    const HOLDS: u64 = BUDGET + 76;
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.25") && f.variant == "default")
        .expect("1.25");
    let running = start_collector().await;
    let prefix = unique_prefix("gb");
    let (ca, cb) = (
        HostCgroup::create(&prefix, "hog").expect("cgroup"),
        HostCgroup::create(&prefix, "other").expect("cgroup"),
    );
    let (wa, wb) = (ca.workload(), cb.workload());
    let (a, b) = (
        start_server(&ca, &f.path, &[]),
        start_server(&cb, &f.path, &[]),
    );
    for s in [&a, &b] {
        wait_instrumented(
            running.addr,
            s.child.id(),
            Duration::from_secs(5),
            "instrumented",
        );
    }
    let held: Vec<TcpStream> = (0..HOLDS)
        .map(|_| send_only(a.addr, "/hold?key=budget"))
        .collect();
    // Released only once all HOLDS are waiting, so HOLDS + 1 requests were in flight at once
    // on server a: BUDGET tracked, the rest over budget.
    let release = std::thread::spawn({
        let addr = a.addr;
        move || request(addr, "GET", &format!("/release?key=budget&after={HOLDS}")).0
    });
    for _ in 0..5 {
        assert_eq!(request(b.addr, "GET", "/ok").0, Some(200));
    }
    assert_eq!(release.join().expect("release"), Some(200));
    for mut s in held {
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("held response");
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let over = HOLDS + 1 - BUDGET;
    let text = wait_outcomes(running.addr, &wa, &[("2xx", BUDGET)], "server a counted");
    wait_outcomes(running.addr, &wb, &[("2xx", 5)], "server b counted exactly");
    let lost = |w: &str| {
        metric_sum(
            &text,
            "collector_http_requests_lost_total",
            &[("workload_kind", "cgroup"), ("workload", w)],
        )
        .unwrap_or(0.0) as u64
    };
    assert_eq!((lost(&wa), lost(&wb)), (over, 0), "{text}");
    assert_eq!(drops(&text, "http_inflight_budget"), over, "{text}");
    assert_eq!(node_wide_loss(&text), BTreeMap::new(), "{text}");
    // The budget is given back as requests end.
    for _ in 0..3 {
        assert_eq!(request(a.addr, "GET", "/ok").0, Some(200));
    }
    wait_outcomes(running.addr, &wa, &[("2xx", BUDGET + 3)], "server a again");
    drop((a, b));
    running.shutdown().await;
}

/// Ids of the loaded maps named `name`.
fn map_ids(name: &str) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"].as_str() == Some(name))
        .filter_map(|m| m["id"].as_u64())
        .collect()
}

/// A slot of an `HTTP_OFFSETS` map and its value's bytes (a `GoHttpOffsets`).
type OffsetSlot = (u32, Vec<u8>);

/// Bytes of `GoHttpOffsets::valid` (0: an empty slot) in a slot's value: from the layout,
/// which grows with the fields the uprobes read (a fixed 20..24 broke when HTTP/2's came).
const VALID: std::ops::Range<usize> =
    std::mem::offset_of!(GoHttpOffsets, valid)..std::mem::offset_of!(GoHttpOffsets, valid) + 4;

/// The non-empty slots of an `HTTP_OFFSETS` map (`valid` non-zero).
fn filled_offset_slots(id: u64) -> Vec<OffsetSlot> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let hex = |x: &serde_json::Value| -> Vec<u8> {
        x.as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect()
    };
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let key = hex(&e["key"]);
            let value = hex(&e["value"]);
            let slot = u32::from_le_bytes(key.get(..4)?.try_into().ok()?);
            (value.len() == size_of::<GoHttpOffsets>() && value[VALID] != [0; 4])
                .then_some((slot, value))
        })
        .collect()
}

/// A request that ends after its binary's offsets slot was emptied (the binary detached and
/// the slot released, or given to another binary, while the request ran) is still counted by
/// outcome, without its record, and the drop is counted — never silently gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_ending_on_an_emptied_offsets_slot_is_counted() {
    require_root();
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.23") && f.variant == "stripped")
        .expect("1.23 stripped");
    let before = map_ids("HTTP_OFFSETS");
    let running = start_collector().await;
    let prefix = unique_prefix("go");
    let cgroup = HostCgroup::create(&prefix, "slot").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.path, &[]);
    wait_instrumented(
        running.addr,
        server.child.id(),
        Duration::from_secs(5),
        "instrumented",
    );
    let addr = server.addr;
    let held = std::thread::spawn(move || keep_alive(addr, &[("GET", "/hold?key=slot")]));
    // Our collector's map: created after `before`, with the one slot it filled for the server.
    let ours: Vec<(u64, Vec<OffsetSlot>)> = map_ids("HTTP_OFFSETS")
        .into_iter()
        .filter(|id| !before.contains(id))
        .map(|id| (id, filled_offset_slots(id)))
        .filter(|(_, slots)| !slots.is_empty())
        .collect();
    assert_eq!(ours.len(), 1, "one new HTTP_OFFSETS map in use: {ours:?}");
    let (id, slots) = &ours[0];
    assert_eq!(slots.len(), 1, "{slots:?}");
    let (slot, mut value) = slots[0].clone();
    value[VALID].copy_from_slice(&[0; 4]);
    let arg = |b: &[u8]| b.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let status = Command::new("bpftool")
        .args(["map", "update", "id", &id.to_string(), "key"])
        .args(arg(&slot.to_le_bytes()))
        .arg("value")
        .args(arg(&value))
        .status()
        .expect("bpftool");
    assert!(status.success(), "emptying slot {slot}");
    // The held request (started with the slot filled) and the release (started on the
    // emptied slot) both end on the empty slot.
    assert_eq!(
        request(addr, "GET", "/release?key=slot&after=1").0,
        Some(200)
    );
    assert_eq!(held.join().expect("held"), [200]);
    let text = wait_outcomes(running.addr, &workload, &[("2xx", 2)], "both counted");
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    assert_eq!(
        metric_sum(&text, "collector_http_requests_unrecorded_total", &w),
        Some(2.0),
        "{text}"
    );
    assert_eq!(drops(&text, "http_no_offsets"), 2, "{text}");
    drop(server);
    running.shutdown().await;
}

/// A handler that ends its goroutine with runtime.Goexit never returns from ServeHTTP, and no
/// RET of the connection's goroutine runs either. When Go hands that goroutine to a new
/// connection, the request left in flight is reported as aborted, not silently replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_goroutine_exited_is_reported_when_the_goroutine_is_reused() {
    require_root();
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.26") && f.variant == "default")
        .expect("1.26");
    let running = start_collector().await;
    let prefix = unique_prefix("ge");
    let cgroup = HostCgroup::create(&prefix, "goexit").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.path, &[]);
    wait_instrumented(
        running.addr,
        server.child.id(),
        Duration::from_secs(5),
        "instrumented",
    );
    assert_eq!(request(server.addr, "GET", "/goexit").0, None);
    // New connections until one gets the exited goroutine (Go reuses them from a free list).
    let mut sent = 0u64;
    let text = wait_until_ok_blocking(DEADLINE, Duration::ZERO, "goroutine reused", || {
        assert_eq!(request(server.addr, "GET", "/ok").0, Some(200));
        sent += 1;
        let text = scrape(running.addr);
        let outcome = |o: &str| {
            metric_sum(
                &text,
                "collector_http_requests_total",
                &[
                    ("workload_kind", "cgroup"),
                    ("workload", workload.as_str()),
                    ("outcome", o),
                ],
            )
            .unwrap_or(0.0) as u64
        };
        let (ok, aborted) = (outcome("2xx"), outcome("aborted"));
        if aborted == 1 && ok == sent {
            Ok(text)
        } else {
            Err(format!("aborted {aborted}, 2xx {ok} of {sent}"))
        }
    });
    assert_eq!(node_wide_loss(&text), BTreeMap::new(), "{text}");
    eprintln!("the exited goroutine was reused within {sent} connections");
    drop(server);
    running.shutdown().await;
}

/// The same cases on the default source, the socket parser (no uprobes): a status written by
/// another goroutine is the one on the wire, and a request in flight when the collector starts
/// is neither counted nor a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_source_async_status_and_requests_in_flight_at_start() {
    require_root();
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.27") && f.variant == "default")
        .expect("1.27");
    let prefix = unique_prefix("gw");
    let cgroup = HostCgroup::create(&prefix, "wire").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.path, &[]);
    let addr = server.addr;
    let held = std::thread::spawn(move || keep_alive(addr, &[("GET", "/hold?key=wire")]));
    // Auto: a plaintext server gets no uprobe, the parser alone counts it.
    assert_eq!(
        Config::default().http.uprobes,
        collector::config::GoUprobes::Auto
    );
    let running = start_socket_collector(Config::default()).await;
    assert_eq!(
        request(addr, "GET", "/release?key=wire&after=1").0,
        Some(200)
    );
    assert_eq!(held.join().expect("held"), [200]);
    for _ in 0..2 {
        assert_eq!(request(addr, "GET", "/status-async?code=504").0, Some(504));
    }
    let ka: Vec<_> = KEEP_ALIVE.iter().map(|(m, p, _)| (*m, *p)).collect();
    assert_eq!(
        keep_alive(addr, &ka),
        KEEP_ALIVE.iter().map(|k| k.2).collect::<Vec<_>>()
    );
    // The release, then KEEP_ALIVE's 2xx (6) and 5xx (1); the held request not at all.
    let want = [("2xx", 1 + 6), ("5xx", 2 + 1)];
    wait_outcomes(running.addr, &workload, &want, "socket parser counts");
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    // The records reach the aggregator on the ring reader's timer, after the counters.
    let text = wait_until_ok_blocking(DEADLINE, POLL, "the 504s' records", || {
        let text = scrape(running.addr);
        match metric_sum(
            &text,
            "http_server_request_duration_seconds_count",
            &[w[0], w[1], ("status_code", "504")],
        ) {
            Some(2.0) => Ok(text),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(
        outcomes(&text, &workload, &want),
        want,
        "nothing counted since"
    );
    assert_eq!(
        metric_sum(&text, "collector_http_requests_lost_total", &w),
        None,
        "{text}"
    );
    assert_eq!(node_wide_loss(&text), BTreeMap::new(), "{text}");
    drop(server);
    running.shutdown().await;
}

/// A client process holding `n` connections to `addr`, each with one request for `path`
/// sent; they stay open until the process's stdin closes. Several processes, because one
/// process may hold only so many descriptors.
fn flood_client(addr: SocketAddr, path: &str, n: usize) -> Child {
    const SCRIPT: &str = r#"
import socket, sys
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conns = []
for _ in range(n):
    s = socket.create_connection((host, port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path).encode())
    conns.append(s)
print("ready", flush=True)
sys.stdin.read()
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(path)
        .arg(n.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("flood client");
    assert_eq!(line.trim(), "ready", "flood client");
    child
}

/// The socket parser's connection state was an LRU of 32,768 with no per-server budget: a
/// client that opened more connections than that to one workload, each with a request line,
/// evicted every other server's connections, and a request in flight on an evicted
/// connection was then neither counted nor charged as lost (its response arrived at a
/// connection the parser no longer knew, whose first bytes are no request line). The state
/// now lives in socket storage, which has no capacity to fight over: the victim's requests
/// are all counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_source_flood_of_one_workload_does_not_blind_another() {
    require_root();
    const PER_SERVER: usize = 15_000;
    const HOG_SERVERS: usize = 3;
    let fixtures = fixtures();
    let f = fixtures
        .iter()
        .find(|f| f.version.starts_with("1.27") && f.variant == "default")
        .expect("1.27");
    let prefix = unique_prefix("gf");
    let (hog, victim) = (
        HostCgroup::create(&prefix, "hog").expect("cgroup"),
        HostCgroup::create(&prefix, "victim").expect("cgroup"),
    );
    let victim_w = victim.workload();
    let running = start_socket_collector(Config::default()).await;
    let hogs: Vec<Server> = (0..HOG_SERVERS)
        .map(|_| start_server(&hog, &f.path, &[]))
        .collect();
    let b = start_server(&victim, &f.path, &[]);
    // The victim's request, in flight (its connection tracked) before the flood.
    let mut held = send_only(b.addr, "/hold?key=victim");
    assert_eq!(request(b.addr, "GET", "/ok").0, Some(200));
    // More connections with a request line each than WIRE_CONNS holds (several servers:
    // the ephemeral ports to one address would run out).
    let mut flood: Vec<Child> = hogs
        .iter()
        .map(|h| flood_client(h.addr, "/hold?key=flood", PER_SERVER))
        .collect();
    assert_eq!(
        request(b.addr, "GET", "/release?key=victim&after=1").0,
        Some(200)
    );
    let mut resp = String::new();
    held.read_to_string(&mut resp).expect("held response");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // The /ok, the release and the held request: each counted, or the held one charged.
    let text = wait_until_ok_blocking(DEADLINE, POLL, "victim counted", || {
        let text = scrape(running.addr);
        let w = [("workload_kind", "cgroup"), ("workload", victim_w.as_str())];
        let ok = metric_sum(
            &text,
            "collector_http_requests_total",
            &[w[0], w[1], ("outcome", "2xx")],
        )
        .unwrap_or(0.0) as u64;
        let lost =
            metric_sum(&text, "collector_http_requests_lost_total", &w).unwrap_or(0.0) as u64;
        // Nothing of the victim's is evicted any more: all three counted, none lost.
        if (ok, lost) == (3, 0) {
            Ok(text)
        } else {
            Err(format!("2xx {ok}, lost {lost}: want 3 and 0"))
        }
    });
    for c in &mut flood {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    drop(text);
    drop((hogs, b));
    running.shutdown().await;
}

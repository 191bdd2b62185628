//! Go net/http servers observed through uprobes, for every Go minor 1.21–1.27, each built
//! default, stripped and PIE (tests/go/build-fixtures.sh): exact per-(method, route, status)
//! counts, panics, durations against the client's own clock, probe paths apart, HTTPS, and a
//! server started after the collector.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::mpsc,
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
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(cgroup: &HostCgroup, bin: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut child = cgroup.spawn(bin, &args).expect("spawn Go server");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Some(Ok(l))) => l,
        other => panic!("{}: no listening line: {other:?}", bin.display()),
    };
    let addr = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .parse()
        .expect("addr");
    Server { child, addr }
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

/// The mix each server gets: (method, path, expected status (None = panic), count).
const MIX: [(&str, &str, Option<u16>, u64); 10] = [
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
];

/// The route the collector must report for a path on a given Go minor: the mux pattern on
/// Go ≥ 1.23 (Request.Pattern), else the normalised path.
fn expected_route(minor: u32, method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    if minor >= 23 {
        match path {
            "/items/42" => "GET /items/{id}".into(),
            // No pattern matched (404): the path.
            "/missing" => "/missing".into(),
            p => {
                let _ = method;
                p.into()
            }
        }
    } else if path == "/items/42" {
        "/items/{id}".into()
    } else {
        path.into()
    }
}

/// These tests are about the uprobe path: the socket parser (which would count the same
/// requests) is off, the uprobes on (`--no-http-socket --go-http-uprobes all`).
async fn start_collector() -> app::Running {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.http.socket = false;
    config.http.uprobes = true;
    app::start(config).await.expect("collector starts")
}

/// Waits until Go discovery lists `pid` as instrumented.
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
        e["pids"]
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
    assert_eq!(fixtures.len(), 21, "7 Go minors × 3 variants");
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
        for (method, path, status, count) in MIX {
            for _ in 0..count {
                let (got, took) = request(server.addr, method, path);
                assert_eq!(got, status, "{name}: {method} {path}");
                if path.starts_with("/slow") {
                    slow_client = took;
                }
            }
            let route = expected_route(minor, method, path);
            let (code, err) = match status {
                Some(s) => (s.to_string(), ""),
                None => (String::new(), "panic"),
            };
            *expected
                .entry((method.to_string(), route, code, err))
                .or_default() += count;
        }
        let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
        let text = wait_until_ok_blocking(
            DEADLINE,
            POLL,
            &format!("{name}: all requests counted"),
            || {
                let text = scrape(running.addr);
                let total =
                    metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
                let want: u64 = MIX.iter().map(|m| m.3).sum();
                if total == want {
                    Ok(text)
                } else {
                    Err(format!("exact count {total}/{want}"))
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
        assert_eq!(outcome("5xx"), 3, "{name}");
        assert_eq!(outcome("4xx"), 2, "{name}");
        assert_eq!(outcome("panic"), 2, "{name}");
        assert_eq!(outcome("2xx"), 5 + 2 + 2 + 1 + 2 + 3 + 1, "{name}");
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

fn tls_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (installed by scripts/bootstrap.sh)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
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

/// TLS terminates below ServeHTTP: HTTPS/1.1 is counted like plain HTTP. HTTP/2 goes through
/// ServeHTTP too, but its status is not observed on that path: counted as
/// "unobserved_protocol", never as a made-up status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_counts_and_http2_is_unobserved_not_miscounted() {
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
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let text = wait_until_ok_blocking(DEADLINE, POLL, "TLS requests counted", || {
        let text = scrape(running.addr);
        let total = metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
        if total == 9 {
            Ok(text)
        } else {
            Err(format!("{total}/9"))
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
    assert_eq!(count("/ok", "200", ""), 4, "{text}");
    assert_eq!(count("/err", "503", ""), 3, "{text}");
    assert_eq!(count("/ok", "", "unobserved_protocol"), 2, "{text}");
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
            outcome("unobserved_protocol")
        ),
        (4, 3, 2)
    );
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
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.http.socket = false;
    config.http.uprobes = true;
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
                if total == 6 {
                    Ok(text)
                } else {
                    Err(format!("{total}/6"))
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
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.http.socket = false;
    config.http.uprobes = true;
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

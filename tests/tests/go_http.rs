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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/go/build-fixtures.sh");
    let out = Command::new(script)
        .output()
        .expect("run build-fixtures.sh");
    assert!(
        out.status.success(),
        "building Go fixtures: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<Fixture> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Fixture {
                version: it.next()?.into(),
                variant: it.next()?.into(),
                path: it.next()?.into(),
            })
        })
        .collect();
    assert_eq!(list.len(), 21, "7 Go minors × 3 variants");
    list
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

fn get_metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("collector");
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for l in text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
    {
        if labels
            .iter()
            .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            let v: f64 = l
                .rsplit_once(' ')
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0.0);
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

async fn start_collector() -> app::Running {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    app::start(config).await.expect("collector starts")
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
    let running = start_collector().await;
    let prefix = unique_prefix("gh");
    for (i, f) in fixtures.iter().enumerate() {
        let name = format!("go{}-{}-{i}", f.version, f.variant);
        let cgroup = HostCgroup::create(&prefix, &name).expect("cgroup");
        let workload = format!(
            "/{}",
            cgroup
                .cgroup_dir()
                .strip_prefix(cgroup2_mount())
                .expect("under mount")
                .display()
        );
        // Started after the collector: found through the exec hook.
        let spawned = Instant::now();
        let server = start_server(&cgroup, &f.path, &[]);
        let pid = server.child.id();
        let attach = wait_until_ok_blocking(
            Duration::from_secs(5),
            Duration::from_millis(20),
            &format!("{name} instrumented"),
            || {
                let (ok, body) = instrumented(running.addr, pid);
                if ok {
                    Ok(spawned.elapsed())
                } else {
                    Err(format!("pid {pid} not in {body}"))
                }
            },
        );
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
                let text = get_metrics(running.addr);
                let total =
                    sample(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
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
            let got = sample(&text, metric, &labels).unwrap_or(0.0) as u64;
            assert_eq!(
                got, *count,
                "{name}: {metric} {method} {route} {code} {err}\n{text}"
            );
        }
        // Probe paths stay out of the histogram.
        assert_eq!(
            sample(
                &text,
                "http_server_request_duration_seconds_count",
                &[w[0], w[1], ("route", "/healthz")]
            ),
            None,
            "{name}"
        );
        // Exact kernel counters by outcome.
        let outcome = |o: &str| {
            sample(
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
        let sum = sample(&text, "http_server_request_duration_seconds_sum", &slow)
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

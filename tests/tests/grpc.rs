//! grpc-go servers observed through uprobes (`--go-grpc-uprobes all`): servers built from the
//! real google.golang.org/grpc module at four versions spanning three years (tests/go/grpc/
//! versions; the oldest built with Go 1.17, the oldest Go supported), each default, stripped
//! (no DWARF: the offsets table) and PIE. A Go client (same grpc-go) drives a fixed mix over
//! one connection with four goroutines: unary OK and failing with several codes, a deadline
//! exceeded, server and client streaming (OK and failing), an unknown method, health checks. The collector's counts per (service, method, code) must equal
//! the client's own, health checks apart, every call with a duration.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use collector::{app, config::Config};
use integration_tests::*;

const ROUNDS: u32 = 10;
/// The client's deadline for its "deadline" call (tests/go/grpc/client).
const DEADLINE_MS: f64 = 30.0;

struct Fixture {
    grpc: String,
    variant: String,
    server: PathBuf,
    client: PathBuf,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// Where the kernel-matrix guest (no Go, no network) finds the fixtures built on the host:
/// a file of build.sh's lines (`xtask vm-test`).
const FIXTURES_ENV: &str = "COLLECTOR_GRPC_FIXTURES";

/// Builds (or finds built) every server and client: tests/go/grpc/build.sh.
fn fixtures() -> Vec<Fixture> {
    let listing = match std::env::var_os(FIXTURES_ENV) {
        Some(file) => {
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{FIXTURES_ENV}: {e}"))
        }
        None => {
            let out = Command::new(repo().join("tests/go/grpc/build.sh"))
                .output()
                .expect("run tests/go/grpc/build.sh");
            assert!(
                out.status.success(),
                "tests/go/grpc/build.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "build.sh line {l:?}");
            Fixture {
                grpc: f[0].into(),
                variant: f[1].into(),
                server: f[2].into(),
                client: f[3].into(),
            }
        })
        .collect()
}

type Server = AnnouncedServer;

fn start_server(cgroup: &HostCgroup, bin: &Path) -> Server {
    cgroup.spawn_announced(bin, &["-listen", "127.0.0.1:0"], "listening ")
}

/// What the client saw: (full method, code) → calls.
fn drive(client: &Path, addr: SocketAddr) -> BTreeMap<(String, u16), u64> {
    let child = Command::new(client)
        .args([
            "-addr",
            &addr.to_string(),
            "-rounds",
            &ROUNDS.to_string(),
            "-concurrency",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn gRPC client");
    let out = output_with_timeout(child, Duration::from_secs(120)).expect("client finishes");
    assert!(out.status.success(), "client failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "client line {l:?}");
            (
                (f[0].to_string(), f[1].parse().expect("code")),
                f[2].parse().expect("count"),
            )
        })
        .collect()
}

async fn start_collector() -> app::Running {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    // The socket parser stays on: it reads HTTP/1.x only, so gRPC (HTTP/2) is counted once.
    config.http.grpc_uprobes = true;
    app::start(config).await.expect("collector starts")
}

fn instrumented(running: &app::Running, pid: u32) -> Option<(String, String)> {
    running
        .grpc_instrumented
        .lock()
        .expect("discovery state")
        .iter()
        .find(|i| i.pids.contains(&pid))
        .map(|i| (i.grpc_version.clone(), i.offsets.clone()))
}

/// Exact counts the collector must show for one server, from the client's counts.
fn expected_series(
    seen: &BTreeMap<(String, u16), u64>,
) -> Vec<(&'static str, String, String, u16, u64)> {
    seen.iter()
        .map(|((method, code), n)| {
            let (service, name) = method[1..].split_once('/').expect("full method");
            let metric = if service == "grpc.health.v1.Health" {
                "rpc_server_probe_requests_total"
            } else {
                "rpc_server_requests_total"
            };
            (metric, service.to_string(), name.to_string(), *code, *n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_version_and_build_counts_calls_exactly() {
    require_root();
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 12, "4 grpc-go versions × 3 builds");
    let running = start_collector().await;
    let prefix = unique_prefix("grpc");
    for (i, f) in fixtures.iter().enumerate() {
        counts_calls_exactly(&running, &prefix, i, f);
    }
    running.shutdown().await;
}

/// On the kernel under test (`xtask vm-test` runs it on Debian's 6.1; here, the newest grpc-go
/// default and stripped): the programs load and attach, and counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_counts_calls_exactly_on_this_kernel() {
    require_root();
    let all = fixtures();
    let newest = all.last().map(|f| f.grpc.clone()).expect("fixtures");
    let running = start_collector().await;
    let prefix = unique_prefix("grpcg");
    for (i, f) in all
        .iter()
        .filter(|f| f.grpc == newest && (f.variant == "default" || f.variant == "stripped"))
        .enumerate()
    {
        counts_calls_exactly(&running, &prefix, i, f);
    }
    running.shutdown().await;
}

/// One server: instrumented from the right offsets, then every call of the client's mix
/// counted exactly by (method, code), health checks apart, each real call with a duration.
fn counts_calls_exactly(running: &app::Running, prefix: &str, i: usize, f: &Fixture) {
    let name = format!("grpc{}-{}-{i}", f.grpc, f.variant);
    let cgroup = HostCgroup::create(prefix, &name).expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.server);
    let pid = server.child.id();
    let t = Instant::now();
    let (version, offsets) = wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(50),
        &format!("{name} instrumented"),
        || instrumented(running, pid).ok_or("not yet"),
    );
    assert_eq!(version, f.grpc, "grpc-go version read from the build info");
    // Stripped binaries have no DWARF: the table must have served them.
    let want_source = if f.variant == "stripped" {
        format!("table {}", f.grpc)
    } else {
        "dwarf".to_string()
    };
    assert_eq!(offsets, want_source, "{name}: where the offsets came from");
    let seen = drive(&f.client, server.addr);
    let expected = expected_series(&seen);
    let real: u64 = expected
        .iter()
        .filter(|e| e.0 == "rpc_server_requests_total")
        .map(|e| e.4)
        .sum();
    assert_eq!(
        real,
        u64::from(ROUNDS) * 11,
        "the client's mix: 11 calls a round besides the health check"
    );
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let text = wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(100),
        &format!("{name}: counts match the client"),
        || {
            let text = scrape(running.addr);
            let mut wrong = Vec::new();
            for (metric, service, method, code, n) in &expected {
                let code = code.to_string();
                let mut labels = w.to_vec();
                labels.extend([
                    ("rpc_system", "grpc"),
                    ("rpc_service", service.as_str()),
                    ("rpc_method", method.as_str()),
                    ("rpc_grpc_status_code", code.as_str()),
                ]);
                let got = metric_sum(&text, metric, &labels).unwrap_or(0.0) as u64;
                if got != *n {
                    wrong.push(format!(
                        "{metric} {service}/{method} {code}: {got}, client {n}"
                    ));
                }
            }
            // Nothing beyond what the client did (a status counted twice, a foreign key).
            let total = metric_sum(&text, "rpc_server_requests_total", &w).unwrap_or(0.0) as u64;
            if total != real {
                wrong.push(format!(
                    "rpc_server_requests_total for the workload: {total}, client {real}"
                ));
            }
            // The durations come from the calls' records, which reach the aggregator on the
            // ring reader's timer, after the kernel counters the totals come from: waited for
            // too (asserted at once, a slow guest showed 98 of 110).
            let durations =
                metric_sum(&text, "rpc_server_duration_seconds_count", &w).unwrap_or(0.0) as u64;
            if durations != real {
                wrong.push(format!(
                    "rpc_server_duration_seconds_count: {durations}, client {real}"
                ));
            }
            if wrong.is_empty() {
                Ok(text)
            } else {
                let rpc: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("rpc_server_") && l.contains(workload.as_str()))
                    .filter(|l| !l.contains("_bucket"))
                    .collect();
                Err(format!("{}\n{}", wrong.join("; "), rpc.join("\n")))
            }
        },
    );
    // Every real call has its duration (its start was seen: no `no_start`), health checks
    // none.
    let durations =
        metric_sum(&text, "rpc_server_duration_seconds_count", &w).unwrap_or(0.0) as u64;
    assert_eq!(durations, real, "{name}: one duration per real call");
    assert_eq!(
        metric_sum(&text, "collector_grpc_rpcs_no_start_total", &w),
        None,
        "{name}: every call's start was seen"
    );
    // The deadline call lasted at least its deadline (measured from handleStream's entry,
    // not from the status write).
    let mut dl = w.to_vec();
    dl.extend([("rpc_method", "Say"), ("rpc_grpc_status_code", "4")]);
    let sum =
        metric_sum(&text, "rpc_server_duration_seconds_sum", &dl).expect("deadline durations");
    assert!(
        sum >= f64::from(ROUNDS) * DEADLINE_MS / 1000.0,
        "{name}: {ROUNDS} deadline calls of ≥ {DEADLINE_MS} ms sum to {sum} s"
    );
    println!(
        "{name}: instrumented {:?} after start, {} calls counted exactly ({offsets})",
        t.elapsed(),
        real
    );
    drop(server);
}

/// `GET /v1/workload?kind=cgroup&name=..`, the verdict of one workload.
fn cgroup_verdict(api: &str, name: &str) -> serde_json::Value {
    let (_, body) =
        collector::status::get(api, &format!("/v1/workload?kind=cgroup&name={name}")).expect("API");
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// Catches: gRPC failures (UNAVAILABLE) not reaching the verdicts (the workload would stay
/// unknown or healthy); health checks taken as real traffic or not as probes (no
/// `probe_mismatch`: the gRPC form of a lying /healthz would go unflagged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_passing_while_calls_fail_are_flagged() {
    require_root();
    let f = fixtures()
        .into_iter()
        .rfind(|f| f.variant == "default")
        .expect("a default build");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.verdict.geometry = collector::verdict::window::Geometry {
        bucket: Duration::from_secs(1),
        count: 5,
    };
    config.http.grpc_uprobes = true;
    let running = app::start(config).await.expect("collector starts");
    let api = format!("http://{}", running.addr);
    let prefix = unique_prefix("grpch");
    let cgroup = HostCgroup::create(&prefix, "liar").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.server);
    let pid = server.child.id();
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "instrumented",
        || instrumented(&running, pid).ok_or("not yet"),
    );
    // About 150 calls a second for ~20 s: 3 UNAVAILABLE and a passing health check per round.
    let client = Command::new(&f.client)
        .args([
            "-addr",
            &server.addr.to_string(),
            "-mix",
            "failing",
            "-rounds",
            "800",
            "-concurrency",
            "2",
            "-pause",
            "50ms",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("client");
    let mut client = scopeguard_kill(client);
    let v = wait_until_ok_blocking(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "unhealthy with probe_mismatch",
        || {
            let v = cgroup_verdict(&api, &workload);
            if v["state"] == "unhealthy" && v["probe_mismatch"] == true {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    );
    let reasons: Vec<String> = v["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["code"].as_str().map(str::to_owned))
        .collect();
    assert!(reasons.contains(&"error_ratio".to_string()), "{v}");
    assert!(reasons.contains(&"probe_mismatch".to_string()), "{v}");
    let _ = client.0.kill();
    let _ = client.0.wait();
    drop(server);
    running.shutdown().await;
}

/// Kills the child when dropped (a failed assertion must not leave the client running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scopeguard_kill(c: Child) -> Killed {
    Killed(c)
}

/// Catches: a call whose start was not seen (in flight when the probes were attached) going
/// uncounted — counts must not depend on the in-flight map; sampled-out records taking their
/// calls' counts with them, or `unrecorded` not accounting for the records missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_counted_without_their_start_or_record() {
    require_root();
    let f = fixtures()
        .into_iter()
        .rfind(|f| f.variant == "default")
        .expect("a default build");
    let prefix = unique_prefix("grpcs");
    let cgroup = HostCgroup::create(&prefix, "sampled").expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server(&cgroup, &f.server);
    // A client stream begun before the collector exists, held open until its stdin closes:
    // its handleStream entry passes before the probes exist.
    let mut held = Command::new(&f.client)
        .args([
            "-addr",
            &server.addr.to_string(),
            "-mix",
            "held",
            "-rounds",
            "1",
            "-concurrency",
            "1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("client");
    std::thread::sleep(Duration::from_millis(500));
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.http.grpc_uprobes = true;
    // Records for about 1 call in 8; counts stay exact.
    config.http.sample_every = 8;
    let running = app::start(config).await.expect("collector starts");
    let pid = server.child.id();
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "instrumented",
        || instrumented(&running, pid).ok_or("not yet"),
    );
    // The probes are attached: the held call ends now.
    drop(held.stdin.take());
    let out = output_with_timeout(held, Duration::from_secs(30)).expect("held call ends");
    let held_seen = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        held_seen.trim(),
        "/grpctest.Echo/Collect 0 1",
        "the held call"
    );
    let mut seen = drive(&f.client, server.addr);
    *seen
        .entry(("/grpctest.Echo/Collect".to_string(), 0))
        .or_default() += 1;
    let expected = expected_series(&seen);
    let real: u64 = expected
        .iter()
        .filter(|e| e.0 == "rpc_server_requests_total")
        .map(|e| e.4)
        .sum();
    let health: u64 = expected
        .iter()
        .filter(|e| e.0 == "rpc_server_probe_requests_total")
        .map(|e| e.4)
        .sum();
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let text = wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "counts match the client",
        || {
            let text = scrape(running.addr);
            let mut wrong = Vec::new();
            for (metric, service, method, code, n) in &expected {
                let code = code.to_string();
                let mut labels = w.to_vec();
                labels.extend([
                    ("rpc_service", service.as_str()),
                    ("rpc_method", method.as_str()),
                    ("rpc_grpc_status_code", code.as_str()),
                ]);
                let got = metric_sum(&text, metric, &labels).unwrap_or(0.0) as u64;
                if got != *n {
                    wrong.push(format!(
                        "{metric} {service}/{method} {code}: {got}, client {n}"
                    ));
                }
            }
            if wrong.is_empty() {
                Ok(text)
            } else {
                Err(wrong.join("; "))
            }
        },
    );
    assert_eq!(
        metric_sum(&text, "collector_grpc_rpcs_no_start_total", &w),
        Some(1.0),
        "the call in flight at attach: counted, without a duration"
    );
    let durations =
        metric_sum(&text, "rpc_server_duration_seconds_count", &w).unwrap_or(0.0) as u64;
    let unrecorded =
        metric_sum(&text, "collector_grpc_rpcs_unrecorded_total", &w).unwrap_or(0.0) as u64;
    assert!(
        durations < real,
        "1 in 8 recorded: {durations} durations for {real} calls"
    );
    // Every real call has a duration or is unrecorded; health checks' records have no
    // duration series, so some of them may be among the unrecorded.
    assert!(
        (real..=real + health).contains(&(durations + unrecorded)),
        "{durations} durations + {unrecorded} unrecorded for {real} calls and {health} health checks"
    );
    drop(server);
    running.shutdown().await;
}

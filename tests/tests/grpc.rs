//! grpc-go servers observed through uprobes (`--go-grpc-uprobes all`): servers built from the
//! real google.golang.org/grpc module at four versions spanning three years (tests/go/grpc/
//! versions; the oldest built with Go 1.17, the oldest Go supported), each default, stripped
//! (no DWARF: the offsets table) and PIE. A Go client (same grpc-go) drives a fixed mix over
//! one connection with four goroutines: unary OK and failing with several codes, a deadline
//! exceeded, server and client streaming (OK and failing), an unknown method, health checks.
//! The collector's counts per (service, method, code) must equal the client's own, health
//! checks apart, every call with a duration. The same holds for the server mounted in a
//! net/http server (`(*grpc.Server).ServeHTTP`: TLS with ALPN h2, and h2c where the build's Go
//! has it), whose calls end in another transport's status write.

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

/// How the test server serves gRPC (tests/go/grpc/server `-serve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serve {
    /// grpc-go's own HTTP/2 transport (`Serve`).
    Grpc,
    /// net/http over TLS (ALPN h2), `ServeHTTP`.
    Tls,
    /// net/http's cleartext HTTP/2 (prior knowledge), `ServeHTTP`.
    H2c,
}

impl Serve {
    fn arg(self) -> &'static str {
        match self {
            Serve::Grpc => "grpc",
            Serve::Tls => "tls",
            Serve::H2c => "h2c",
        }
    }

    fn client_args(self) -> &'static [&'static str] {
        match self {
            Serve::Tls => &["-tls"],
            Serve::Grpc | Serve::H2c => &[],
        }
    }
}

/// The `-serve` modes a server build supports (h2c needs Go ≥ 1.24's `Server.Protocols`).
fn serve_modes(server: &Path) -> Vec<Serve> {
    let out = Command::new(server)
        .arg("-serve-modes")
        .output()
        .expect("server -serve-modes");
    assert!(out.status.success(), "{}: -serve-modes", server.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|m| match m {
            "grpc" => Serve::Grpc,
            "tls" => Serve::Tls,
            "h2c" => Serve::H2c,
            other => panic!("unknown serve mode {other:?}"),
        })
        .collect()
}

fn start_server(cgroup: &HostCgroup, bin: &Path) -> Server {
    start_server_with(cgroup, bin, Serve::Grpc)
}

fn start_server_with(cgroup: &HostCgroup, bin: &Path, serve: Serve) -> Server {
    cgroup.spawn_announced(
        bin,
        &["-listen", "127.0.0.1:0", "-serve", serve.arg()],
        "listening ",
    )
}

/// [`start_server`] with `env` set for the server.
fn start_server_env(cgroup: &HostCgroup, bin: &Path, env: &[(&str, &str)]) -> Server {
    cgroup.spawn_announced_with(
        bin,
        &["-listen", "127.0.0.1:0", "-serve", Serve::Grpc.arg()],
        "listening ",
        |c| {
            c.envs(env.iter().copied());
        },
    )
}

/// What the client saw: (full method, code) → calls.
fn drive(client: &Path, addr: SocketAddr) -> BTreeMap<(String, u16), u64> {
    drive_with(client, addr, Serve::Grpc).0
}

/// Per (full method, code).
type PerCall<T> = BTreeMap<(String, u16), T>;

/// What the client saw: (full method, code) → calls, and → their summed wall time.
fn drive_with(client: &Path, addr: SocketAddr, serve: Serve) -> (PerCall<u64>, PerCall<Duration>) {
    drive_rounds(client, addr, serve, ROUNDS, 4)
}

/// [`drive_with`], `rounds` of the mix over `concurrency` goroutines.
fn drive_rounds(
    client: &Path,
    addr: SocketAddr,
    serve: Serve,
    rounds: u32,
    concurrency: u32,
) -> (PerCall<u64>, PerCall<Duration>) {
    let child = Command::new(client)
        .args([
            "-addr",
            &addr.to_string(),
            "-rounds",
            &rounds.to_string(),
            "-concurrency",
            &concurrency.to_string(),
        ])
        .args(serve.client_args())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn gRPC client");
    let out = output_with_timeout(child, Duration::from_secs(120)).expect("client finishes");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "client line {l:?}");
            (
                (f[0].to_string(), f[1].parse().expect("code")),
                f[2].parse().expect("count"),
            )
        })
        .collect();
    let spent = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("spent_ns "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "client line {l:?}");
            (
                (f[0].to_string(), f[1].parse().expect("code")),
                Duration::from_nanos(f[2].parse().expect("ns")),
            )
        })
        .collect();
    (counts, spent)
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
    instrumented_info(running, pid).map(|i| (i.grpc_version, i.offsets))
}

fn instrumented_info(
    running: &app::Running,
    pid: u32,
) -> Option<collector::probes::go_grpc::attach::Instrumented> {
    running
        .grpc_instrumented
        .lock()
        .expect("discovery state")
        .iter()
        .find(|i| i.pids.contains(&pid))
        .cloned()
}

/// The calls of `expected` that are real traffic (not health checks).
fn real_calls(expected: &[(&'static str, String, String, u16, u64)]) -> u64 {
    expected
        .iter()
        .filter(|e| e.0 == "rpc_server_requests_total")
        .map(|e| e.4)
        .sum()
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
        counts_calls_exactly(&running, &prefix, i, f, Serve::Grpc);
    }
    running.shutdown().await;
}

/// Catches: calls of a grpc.Server mounted in net/http (`ServeHTTP`: the
/// `serverHandlerTransport`, whose status write is another function) going uncounted — every
/// count 0 without that probe —, counted twice, without their method or code (a stream layout
/// the handler transport does not share), or without durations; on every grpc-go version,
/// with DWARF and without (the table), over TLS and h2c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_served_through_net_http_are_counted_exactly() {
    require_root();
    let fixtures: Vec<Fixture> = fixtures()
        .into_iter()
        .filter(|f| f.variant == "default" || f.variant == "stripped")
        .collect();
    let running = start_collector().await;
    let prefix = unique_prefix("grpcn");
    let mut runs = 0;
    for f in &fixtures {
        for serve in serve_modes(&f.server) {
            if serve == Serve::Grpc {
                continue;
            }
            counts_calls_exactly(&running, &prefix, runs, f, serve);
            runs += 1;
        }
    }
    // TLS everywhere; h2c where the build's Go has it.
    assert!(
        runs > fixtures.len(),
        "{runs} runs for {} builds",
        fixtures.len()
    );
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
        counts_calls_exactly(&running, &prefix, i, f, Serve::Grpc);
    }
    running.shutdown().await;
}

/// One server: instrumented from the right offsets, then every call of the client's mix
/// counted exactly by (method, code), health checks apart, each real call with a duration.
fn counts_calls_exactly(running: &app::Running, prefix: &str, i: usize, f: &Fixture, serve: Serve) {
    let name = format!("grpc{}-{}-{}-{i}", f.grpc, f.variant, serve.arg());
    let cgroup = HostCgroup::create(prefix, &name).expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server_with(&cgroup, &f.server, serve);
    let pid = server.child.id();
    let t = Instant::now();
    let info = wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(50),
        &format!("{name} instrumented"),
        || {
            instrumented_info(running, pid).ok_or_else(|| {
                // Why not, if discovery said so.
                let text = scrape(running.addr);
                let skipped: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("collector_go_grpc_binaries"))
                    .collect();
                format!("not yet; {}", skipped.join("; "))
            })
        },
    );
    let (version, offsets) = (info.grpc_version, info.offsets);
    assert_eq!(version, f.grpc, "grpc-go version read from the build info");
    // The test server links both transports (Serve and ServeHTTP), as grpc-go servers do.
    assert_eq!(
        info.transports,
        ["grpc", "net/http"],
        "{name}: both status writes probed"
    );
    // Stripped binaries have no DWARF: the table must have served them.
    let want_source = if f.variant == "stripped" {
        format!("table {}", f.grpc)
    } else {
        "dwarf".to_string()
    };
    assert_eq!(offsets, want_source, "{name}: where the offsets came from");
    let (seen, spent) = drive_with(&f.client, server.addr, serve);
    let expected = expected_series(&seen);
    let real = real_calls(&expected);
    assert_eq!(
        real,
        u64::from(ROUNDS) * 11,
        "the client's mix: 11 calls a round besides the health check"
    );
    let text = wait_exact_rpc_counts(running, &name, &workload, &expected, real);
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
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
    // Each call's duration (handleStream's entry to the status write) lies within the
    // client's own call, so per (method, code) the sums do too; the deadline calls excepted:
    // the client gives up at its deadline, the server writes its status 5 ms later.
    for ((method, code), n) in &seen {
        let (service, m) = method[1..].split_once('/').expect("full method");
        if service == "grpc.health.v1.Health" || (m == "Say" && *code == 4) {
            continue;
        }
        let code_s = code.to_string();
        let mut labels = w.to_vec();
        labels.extend([
            ("rpc_service", service),
            ("rpc_method", m),
            ("rpc_grpc_status_code", code_s.as_str()),
        ]);
        let server_sum =
            metric_sum(&text, "rpc_server_duration_seconds_sum", &labels).expect("duration sum");
        let client_sum = spent[&(method.clone(), *code)].as_secs_f64();
        assert!(
            server_sum > 0.0 && server_sum <= client_sum,
            "{name}: {n} calls {method} {code}: {server_sum} s by the server, {client_sum} s by the client"
        );
    }
    println!(
        "{name}: instrumented {:?} after start, {} calls counted exactly ({offsets})",
        t.elapsed(),
        real
    );
    drop(server);
}

/// Waits until the workload's RPC series equal the client's counts (`expected`), nothing
/// beyond them, and every real call has a duration; the scrape then.
fn wait_exact_rpc_counts(
    running: &app::Running,
    name: &str,
    workload: &str,
    expected: &[(&'static str, String, String, u16, u64)],
    real: u64,
) -> String {
    let w = [("workload_kind", "cgroup"), ("workload", workload)];
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(100),
        &format!("{name}: counts match the client"),
        || {
            let text = scrape(running.addr);
            let mut wrong = Vec::new();
            for (metric, service, method, code, n) in expected {
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
                    .filter(|l| l.starts_with("rpc_server_") && l.contains(workload))
                    .filter(|l| !l.contains("_bucket"))
                    .collect();
                Err(format!("{}\n{}", wrong.join("; "), rpc.join("\n")))
            }
        },
    )
}

/// Whether Go discovery (`/v1/go-http`) lists `pid` as instrumented by the net/http probes.
fn http_instrumented(api: &str, pid: u32) -> Result<(), String> {
    let (_, body) = collector::status::get(api, "/v1/go-http").map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let found = v.as_array().into_iter().flatten().any(|e| {
        e["instrumented"] == true
            && e["pids"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p.as_u64() == Some(u64::from(pid)))
    });
    if found { Ok(()) } else { Err(body) }
}

/// Catches: an entry probe on a function's first instruction. Go's morestack path re-runs a
/// function from there whenever the runtime stops a goroutine at a call (preemption, a GC's
/// stack scan, not only stack growth), and the status write's probe then fired twice for one
/// call: counted twice, the second time without its start. The servers here collect garbage
/// all the time (`GOGC=1`) and are preempted at function prologues only
/// (`GODEBUG=asyncpreemptoff=1`). Seen failing with the probes on the first instruction: 3,609
/// and 3,604 RPCs counted for the client's 3,600 (grpc-go 1.85 and 1.57); and one in 3,600 on
/// a server without those settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stopped_at_a_probed_prologue_are_counted_once() {
    require_root();
    let running = start_collector().await;
    let prefix = unique_prefix("grpcp");
    let all = fixtures();
    let defaults: Vec<&Fixture> = all.iter().filter(|f| f.variant == "default").collect();
    let (oldest, newest) = (defaults[0], defaults[defaults.len() - 1]);
    for f in [oldest, newest] {
        let name = format!("preempted-{}", f.grpc);
        let cgroup = HostCgroup::create(&prefix, &name).expect("cgroup");
        let workload = cgroup.workload();
        let server = start_server_env(
            &cgroup,
            &f.server,
            &[("GOGC", "1"), ("GODEBUG", "asyncpreemptoff=1")],
        );
        let pid = server.child.id();
        wait_until_ok_blocking(
            Duration::from_secs(10),
            Duration::from_millis(50),
            &format!("{name} instrumented"),
            || instrumented(&running, pid).ok_or("not yet"),
        );
        let (seen, _) = drive_rounds(&f.client, server.addr, Serve::Grpc, 300, 8);
        let expected = expected_series(&seen);
        let real = real_calls(&expected);
        assert_eq!(real, 300 * 11, "{name}: the client's mix");
        let text = wait_exact_rpc_counts(&running, &name, &workload, &expected, real);
        let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
        assert_eq!(
            metric_sum(&text, "collector_grpc_rpcs_no_start_total", &w),
            None,
            "{name}: a status write without its start (a second run of the probe)"
        );
        println!("{name}: {real} calls and their health checks counted once");
        drop(server);
    }
    running.shutdown().await;
}

/// Catches: with the net/http probes on as well, a call served through ServeHTTP counted by
/// both families (net/http's probes would count it as an HTTP/2 POST answered 200 whatever the
/// call's code: a verdict would see each call twice, a failing service's error ratio halved),
/// or by neither; and the mark leaking onto the server's own REST requests on the same port.
/// The RPC series stay exactly the client's, net/http counts exactly the REST requests and no
/// call. Seen failing without the `ServeHTTP` mark: 145 HTTP requests, the 120 calls beside the
/// 25 REST requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_net_http_probes_each_family_counts_a_call_once() {
    require_root();
    let f = fixtures()
        .into_iter()
        .rfind(|f| f.variant == "default")
        .expect("a default build");
    let mut config = uprobe_config();
    config.http.grpc_uprobes = true;
    let running = app::start(config).await.expect("collector starts");
    let api = format!("http://{}", running.addr);
    let prefix = unique_prefix("grpcb");
    let name = "both";
    let cgroup = HostCgroup::create(&prefix, name).expect("cgroup");
    let workload = cgroup.workload();
    let server = start_server_with(&cgroup, &f.server, Serve::Tls);
    let pid = server.child.id();
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "gRPC probes attached",
        || instrumented(&running, pid).ok_or("not yet"),
    );
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "net/http probes attached",
        || http_instrumented(&api, pid),
    );
    let (seen, _) = drive_with(&f.client, server.addr, Serve::Tls);
    let expected = expected_series(&seen);
    let real = real_calls(&expected);
    let all: u64 = seen.values().sum();
    wait_exact_rpc_counts(&running, name, &workload, &expected, real);
    // The server's REST route on the same TLS port: net/http's requests.
    const REST: u64 = 25;
    for _ in 0..REST {
        let out = std::process::Command::new("curl")
            .args(["-sk", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://{}/rest", server.addr))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "GET /rest");
    }
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "net/http counts the REST requests and no call",
        || {
            let text = scrape(running.addr);
            let total =
                metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
            let mut rest = w.to_vec();
            rest.extend([
                ("method", "GET"),
                ("route", "/rest"),
                ("status_code", "200"),
            ]);
            let records = metric_sum(&text, "http_server_request_duration_seconds_count", &w)
                .unwrap_or(0.0) as u64;
            let rest_records =
                metric_sum(&text, "http_server_request_duration_seconds_count", &rest)
                    .unwrap_or(0.0) as u64;
            if (total, records, rest_records) == (REST, REST, REST) {
                Ok(())
            } else {
                Err(format!(
                    "exact {total}, records {records} ({rest_records} GET /rest 200): want {REST} of each (calls: {all})"
                ))
            }
        },
    );
    // Nothing more arrives later (a call counted late by net/http).
    std::thread::sleep(Duration::from_millis(600));
    let text = scrape(running.addr);
    assert_eq!(
        metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64,
        REST
    );
    wait_exact_rpc_counts(&running, name, &workload, &expected, real);
    drop(server);
    running.shutdown().await;
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
    let real = real_calls(&expected);
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
            // The records (durations) reach the aggregator on the ring reader's timer, after
            // the counters: every real call has its record or is counted unrecorded.
            let durations =
                metric_sum(&text, "rpc_server_duration_seconds_count", &w).unwrap_or(0.0) as u64;
            let unrecorded =
                metric_sum(&text, "collector_grpc_rpcs_unrecorded_total", &w).unwrap_or(0.0) as u64;
            if durations + unrecorded < real {
                wrong.push(format!(
                    "{durations} durations + {unrecorded} unrecorded for {real} calls"
                ));
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

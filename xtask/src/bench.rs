//! `./x bench`: what the collector costs the workloads it watches, in one run.
//!
//! Method (BENCHMARKS.md has the why and the figures):
//!
//! * Rounds are interleaved: round 1 runs every configuration once (`off`, `default`, …), then
//!   round 2, … so that slow drifts of the machine (other jobs, thermal, page cache) spread over
//!   all configurations instead of biasing the ones measured last.
//! * The Go HTTP server (tests/go/server) is pinned to CPU 0 and every load generator to CPU 1
//!   (`taskset`); the collector is not pinned unless `--collector-cpu` says so. A fresh server
//!   is started for each configuration and round, after the collector is ready, so that every
//!   collector sees it exec and instruments it the same way.
//! * Per configuration and round: saturated throughput (closed loop, keep-alive connections),
//!   latency at a fixed rate (open loop, half of the `off` saturation of round 1 unless
//!   `--open-rate`; latencies from the intended send time, see tests/go/loadgen), a TCP bulk
//!   transfer and TCP connection churn (`pod-traffic`). While the saturated load runs, the local
//!   API (`/v1/workloads`) is timed. While the open-loop load runs, `kernel.bpf_stats_enabled`
//!   is on (only then: the accounting itself costs two clock reads per program run) and the
//!   collector's own programs are read with `bpftool`: kernel time per run and per request, and
//!   traps (uprobe/kprobe runs) per request. Collector CPU comes from /proc/<pid>/stat.
//! * After the rounds, per collector configuration: an open-loop ramp to find the events/s it
//!   takes before losing any and what happens beyond; then 1,000 and 5,000 real workloads (one
//!   cgroup2 directory each, one short TCP exchange from a process inside it) to read RSS, map
//!   occupancy and the `/metrics` render time.
//! * Peers (OBI, Beyla) are built from the Go module proxy when possible; when not, the reason
//!   is reported.
//!
//! Output: target/bench/<timestamp>.json and a table on stdout (`--markdown` for BENCHMARKS.md);
//! `--report FILE` prints the table of an earlier run.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};

/// A collector configuration: a name and the extra command-line arguments it runs with, so that
/// designs can be compared side by side in one run. `None`: no collector at all.
struct Config {
    name: &'static str,
    args: Option<&'static [&'static str]>,
    /// The same configuration for collectors built before `NEW_FLAGS_MARKER` existed.
    legacy_args: Option<&'static [&'static str]>,
    /// Run when `--configs` is not given; the others are asked for by name.
    by_default: bool,
}

/// `[$args..., --ladder <signal>=<rung> for every TCP signal]`.
macro_rules! concat_args {
    ([$($a:literal),*], $rung:literal) => {
        [
            $($a,)*
            "--ladder", concat!("tcp_send=", $rung),
            "--ladder", concat!("tcp_retransmit=", $rung),
            "--ladder", concat!("tcp_retransmit_synack=", $rung),
            "--ladder", concat!("tcp_state=", $rung),
            "--ladder", concat!("tcp_reset_sent=", $rung),
            "--ladder", concat!("tcp_reset_received=", $rung),
            "--ladder", concat!("tcp_destroy=", $rung),
        ]
    };
}

/// Every configuration the bench knows, in the order each round runs them. To compare a new
/// design, add a line here.
const CONFIGS: &[Config] = &[
    Config {
        name: "off",
        args: None,
        legacy_args: None,
        by_default: true,
    },
    Config {
        name: "default",
        args: Some(&[]),
        legacy_args: Some(&[]),
        by_default: true,
    },
    // Today's design: Go net/http through uprobes only.
    Config {
        name: "uprobes",
        args: Some(&["--no-http-socket", "--go-http-uprobes", "all"]),
        legacy_args: Some(&[]),
        by_default: true,
    },
    // TCP signals only, no HTTP instrumentation at all.
    Config {
        name: "tcp-only",
        args: Some(&["--no-http-socket", "--go-http-uprobes", "off"]),
        legacy_args: Some(&["--no-go-http"]),
        by_default: true,
    },
    // Per-rung cost of the TCP signals (`--configs tcp-raw_tp,tcp-tracepoint`): every signal
    // forced onto one rung, HTTP off; compare with tcp-only (tp_btf on this kernel). kprobe and
    // fentry do not attach on the build machines.
    Config {
        name: "tcp-raw_tp",
        args: Some(&concat_args!(
            ["--no-http-socket", "--go-http-uprobes", "off"],
            "raw_tp"
        )),
        legacy_args: Some(&concat_args!(["--no-go-http"], "raw_tp")),
        by_default: false,
    },
    Config {
        name: "tcp-tracepoint",
        args: Some(&concat_args!(
            ["--no-http-socket", "--go-http-uprobes", "off"],
            "tracepoint"
        )),
        legacy_args: Some(&concat_args!(["--no-go-http"], "tracepoint")),
        by_default: false,
    },
];

/// A flag whose presence in `collector --help` says the binary understands `Config::args`;
/// without it `Config::legacy_args` are used.
const NEW_FLAGS_MARKER: &str = "--no-http-socket";

/// Peers built from the Go module proxy into the cache (never into the clone).
const PEERS: &[(&str, &str)] = &[
    ("obi", "go.opentelemetry.io/obi/cmd/obi@latest"),
    ("beyla", "github.com/grafana/beyla/v2/cmd/beyla@latest"),
];
/// Time box of one peer build.
const PEER_BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Cache of Go builds (module cache, build cache, peer binaries): outside the clone so that a
/// clean clone stays clean and the cache survives `cargo clean`.
const CACHE: &str = "/var/cache/collector-bench";

/// The HTTP request the load generators send: a route with a path parameter.
const HTTP_PATH: &str = "/items/42";
/// Keep-alive connections of the HTTP load (the issue's measurements used 32).
const HTTP_CONNS: usize = 32;
/// A fixed open-loop rate every configuration sustains (issue #9 measured p99 at 4,000 req/s),
/// beside half load, where a costly design may already be overloaded.
const LOW_RATE: f64 = 4_000.0;
/// How often the API is timed while the saturated load runs.
const API_PERIOD: Duration = Duration::from_millis(20);
/// Gap after a phase before reading the collector's counters: they are harvested every second.
const SETTLE: Duration = Duration::from_millis(1500);
/// How long a Go server may take to show up in `/v1/go-http` (measured: 40–100 ms after exec).
const INSTRUMENT_WAIT: Duration = Duration::from_secs(5);
/// Program types whose runs are traps (breakpoint exceptions): uprobes, and kprobes.
const TRAP_PROG_TYPES: &[&str] = &["kprobe"];
/// Map types whose occupancy is counted (arrays are always full).
const HASH_MAP_TYPES: &[&str] = &["hash", "percpu_hash", "lru_hash", "lru_percpu_hash"];
/// Parallel client processes when creating workloads.
const WORKLOAD_PARALLELISM: usize = 16;

pub struct Options {
    pub rounds: usize,
    pub quick: bool,
    /// Configuration names; empty: all of `CONFIGS`.
    pub configs: Vec<String>,
    /// Use this collector binary instead of building target/release/collector.
    pub collector: Option<PathBuf>,
    pub collector_cpu: Option<u32>,
    pub open_rate: Option<f64>,
    /// Workload counts for the scale phase; empty: the default for the mode.
    pub workloads: Vec<usize>,
    pub peers: bool,
    /// Niceness of the bench and everything it starts (0: unchanged).
    pub nice: i32,
    pub markdown: bool,
    /// Print the table of this earlier result instead of running.
    pub report: Vec<PathBuf>,
}

/// Durations and sizes of the phases.
struct Plan {
    saturate: Duration,
    open: Duration,
    warmup: Duration,
    bulk_bytes_per_conn: u64,
    bulk_conns: u64,
    churn_conns: u64,
    ramp_step: Duration,
    ramp_rates: &'static [f64],
    workloads: Vec<usize>,
}

impl Plan {
    fn new(opts: &Options) -> Plan {
        let workloads = |d: &[usize]| {
            if opts.workloads.is_empty() {
                d.to_vec()
            } else {
                opts.workloads.clone()
            }
        };
        if opts.quick {
            Plan {
                saturate: Duration::from_secs(3),
                open: Duration::from_secs(3),
                warmup: Duration::from_millis(500),
                bulk_bytes_per_conn: 256 << 20,
                bulk_conns: 2,
                churn_conns: 5_000,
                ramp_step: Duration::from_secs(2),
                ramp_rates: &[5_000.0, 20_000.0, 50_000.0],
                workloads: workloads(&[200]),
            }
        } else {
            Plan {
                saturate: Duration::from_secs(10),
                open: Duration::from_secs(10),
                warmup: Duration::from_secs(1),
                bulk_bytes_per_conn: 512 << 20,
                bulk_conns: 4,
                // Below the 28k ephemeral ports: each connection leaves a TIME_WAIT behind.
                churn_conns: 15_000,
                ramp_step: Duration::from_secs(4),
                ramp_rates: &[
                    2_500.0, 5_000.0, 10_000.0, 20_000.0, 35_000.0, 50_000.0, 70_000.0,
                ],
                workloads: workloads(&[1_000, 5_000]),
            }
        }
    }
}

/// Everything the run needs on disk.
struct Tools {
    collector: PathBuf,
    collector_source: String,
    server: PathBuf,
    loadgen: PathBuf,
    pod_traffic: PathBuf,
    go: PathBuf,
    out_dir: PathBuf,
    /// Collector logs of this run.
    log_dir: PathBuf,
    /// Whether the collector knows `NEW_FLAGS_MARKER`.
    new_flags: bool,
    /// The gRPC test server and client (tests/go/grpc), newest grpc-go of its versions.
    grpc: GrpcTools,
}

struct GrpcTools {
    version: String,
    server: PathBuf,
    client: PathBuf,
}

pub fn bench(root: &Path, opts: &Options) -> anyhow::Result<()> {
    if !opts.report.is_empty() {
        let mut docs = Vec::new();
        for report in &opts.report {
            let text = fs::read_to_string(report)
                .with_context(|| format!("reading {}", report.display()))?;
            let mut v: Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", report.display()))?;
            // Recomputed from the rounds, so that an earlier run reads with today's figures.
            v["summary"] = summarize(&v);
            v["budgets"] = budgets(&v);
            docs.push(v);
        }
        if let [one] = docs.as_slice() {
            print!("{}", render(one, opts.markdown));
        } else {
            print!("{}", render_runs(&docs, opts.markdown));
        }
        return Ok(());
    }
    ensure!(
        super::is_root(),
        "the bench loads eBPF, pins CPUs and creates cgroups: run as root"
    );
    ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    let configs = select_configs(&opts.configs)?;
    let plan = Plan::new(opts);
    let rounds = if opts.quick { 1 } else { opts.rounds };
    let started = Instant::now();
    let stamp = cmd_stdout(Command::new("date").args(["-u", "+%Y%m%dT%H%M%SZ"]))?;
    let tools = prepare(root, opts, &stamp)?;
    if opts.nice != 0 {
        // Children inherit it: server, load generators and collector alike, so that other jobs
        // on a shared machine disturb the measurement less without favouring any configuration.
        let pid = std::process::id().to_string();
        let status = Command::new("renice")
            .args(["-n", &opts.nice.to_string(), "-p", &pid])
            .stdout(Stdio::null())
            .status()?;
        ensure!(
            status.success(),
            "renice -n {} failed ({status})",
            opts.nice
        );
    }
    let mut doc = json!({
        "schema": 1,
        "started_at": stamp,
        "machine": machine()?,
        "collector": {
            "path": tools.collector.display().to_string(),
            "source": tools.collector_source,
            "version": cmd_stdout(Command::new(&tools.collector).arg("--version")).unwrap_or_default(),
            "knows_new_flags": tools.new_flags,
            "cpu": opts.collector_cpu.map_or_else(|| "unpinned".to_string(), |c| format!("CPU {c}")),
        },
        "pinning": {"server": "CPU 0", "load_generators": "CPU 1"},
        "options": {
            "rounds": rounds,
            "quick": opts.quick,
            "http_path": HTTP_PATH,
            "http_conns": HTTP_CONNS,
            "saturate_s": plan.saturate.as_secs_f64(),
            "open_s": plan.open.as_secs_f64(),
            "warmup_s": plan.warmup.as_secs_f64(),
            "bulk_bytes": plan.bulk_bytes_per_conn * plan.bulk_conns,
            "churn_conns": plan.churn_conns,
            "bpf_stats": "enabled during the half-load phase only",
            "nice": opts.nice,
            "low_rate": LOW_RATE,
        },
        "configs": configs.iter().map(|c| json!({"name": c.name, "args": config_args(c, tools.new_flags)})).collect::<Vec<_>>(),
    });
    let load_start = loadavg();

    let peers = if opts.peers {
        build_peers(&tools.go)
    } else {
        Vec::new()
    };
    doc["peers"] = Value::Array(peers);

    let mut open_rate = opts.open_rate;
    let mut rows = Vec::new();
    for round in 1..=rounds {
        // The baseline first (round 1 measures the half-load rate), then the collector
        // configurations rotated by one each round, so that none always follows the same one.
        let (base, others) = configs.split_at(1);
        let shift = (round - 1) % others.len().max(1);
        let order = base
            .iter()
            .chain(others[shift..].iter())
            .chain(others[..shift].iter());
        for config in order {
            eprintln!("bench: round {round}/{rounds}, {}", config.name);
            let row = run_round(&tools, &plan, opts, config, round, open_rate)
                .with_context(|| format!("round {round}, configuration {}", config.name))?;
            // The baseline of round 1 fixed the rate for everything after it.
            open_rate = open_rate.or_else(|| row["open_rate"].as_f64());
            rows.push(row);
        }
    }
    doc["open_rate"] = json!(open_rate);
    doc["rounds"] = Value::Array(rows);
    doc["grpc"] = grpc_stage(&tools, &plan, opts, rounds).context("gRPC")?;

    let mut ramps = serde_json::Map::new();
    let mut scale = serde_json::Map::new();
    for config in configs.iter().filter(|c| c.args.is_some()) {
        eprintln!("bench: event ramp, {}", config.name);
        ramps.insert(
            config.name.into(),
            ramp(&tools, &plan, opts, config)
                .with_context(|| format!("event ramp, {}", config.name))?,
        );
        eprintln!("bench: workloads, {}", config.name);
        scale.insert(
            config.name.into(),
            workloads(&tools, &plan, opts, config)
                .with_context(|| format!("workloads, {}", config.name))?,
        );
    }
    doc["ramps"] = Value::Object(ramps);
    doc["workloads"] = Value::Object(scale);
    doc["summary"] = summarize(&doc);
    doc["budgets"] = budgets(&doc);
    doc["loadavg"] = json!({"start": load_start, "end": loadavg()});
    doc["wall_s"] = json!(started.elapsed().as_secs_f64());

    let out = tools.out_dir.join(format!("{stamp}.json"));
    fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    print!("{}", render(&doc, opts.markdown));
    eprintln!(
        "bench: {} ({:.0} s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The gRPC configuration: the default collector with the grpc-go uprobes (opt-in).
const GRPC_CONFIG: Config = Config {
    name: "grpc",
    args: Some(&["--go-grpc-uprobes", "all"]),
    legacy_args: None,
    by_default: false,
};

/// Unary calls per measurement (8 client goroutines on one connection, closed loop).
const GRPC_CONCURRENCY: usize = 8;

/// gRPC cost per call: the grpc-go test server on CPU 0, its client on CPU 1 (unary OK calls,
/// closed loop), without the collector and with the gRPC uprobes, rounds interleaved. Per
/// call: throughput, kernel program time and traps (bpf_stats), collector CPU; and the calls
/// the collector counted against the client's.
fn grpc_stage(tools: &Tools, plan: &Plan, opts: &Options, rounds: usize) -> anyhow::Result<Value> {
    let calls = if plan.saturate < Duration::from_secs(5) {
        10_000
    } else {
        60_000
    };
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for config in [None, Some(&GRPC_CONFIG)] {
            let name = config.map_or("off", |c| c.name);
            eprintln!("bench: gRPC, round {round}/{rounds}, {name}");
            let log = tools.log_dir.join(format!("collector-grpc-{round}.log"));
            let collector = config
                .map(|c| Collector::start(tools, opts, c, &log))
                .transpose()?;
            let (server, addr) = spawn_listening(
                pinned(0, &tools.grpc.server)
                    .arg("-listen")
                    .arg("127.0.0.1:0"),
            )?;
            let mut row = json!({"round": round, "config": name, "calls": calls});
            if collector.is_some() {
                row["instrumented_after_s"] = json!(wait_grpc_instrumented(&log, server.0.id()));
            }
            // Warm-up (connection, caches), then a harvest so the counts start after it.
            grpc_client(tools, addr, calls / 10)?;
            if collector.is_some() {
                thread::sleep(SETTLE);
            }
            let ids = collector.as_ref().map(|c| owned_bpf_ids(c.pid).0);
            let stats = BpfStats::enable()?;
            let before = ids.as_ref().map(prog_stats).transpose()?;
            let cpu0 = collector.as_ref().map(|c| cpu_seconds(c.pid)).transpose()?;
            let ctr0 = collector.as_ref().map(grpc_counted).transpose()?;
            let elapsed = grpc_client(tools, addr, calls)?;
            let after = ids.as_ref().map(prog_stats).transpose()?;
            drop(stats);
            row["calls_per_s"] = json!(calls as f64 / elapsed.as_secs_f64());
            if let (Some(c), Some(cpu0), Some(before), Some(after), Some(ctr0)) =
                (&collector, cpu0, before, after, ctr0)
            {
                let cpu = cpu_seconds(c.pid)? - cpu0;
                row["bpf"] = prog_delta(&before, &after, calls as f64);
                row["collector_us_per_call"] = json!(cpu * 1e6 / calls as f64);
                // Counts are harvested every second: wait for the last harvest.
                thread::sleep(SETTLE);
                row["counted"] = json!(grpc_counted(c)? - ctr0);
            }
            drop(server);
            if let Some(c) = collector {
                row["stop"] = c.stop()?;
            }
            rows.push(row);
        }
    }
    let figure = |cfg: &str, get: &dyn Fn(&Value) -> Option<f64>| {
        spread(
            rows.iter()
                .filter(|r| r["config"] == cfg)
                .filter_map(get)
                .collect(),
        )
        .map(|(med, lo, hi)| json!({"median": med, "min": lo, "max": hi}))
    };
    let off = figure("off", &|r| r["calls_per_s"].as_f64());
    let on = figure("grpc", &|r| r["calls_per_s"].as_f64());
    let ratio = match (&off, &on) {
        (Some(a), Some(b)) => b["median"]
            .as_f64()
            .zip(a["median"].as_f64())
            .map(|(b, a)| b / a),
        _ => None,
    };
    Ok(json!({
        "grpc_go": tools.grpc.version,
        "concurrency": GRPC_CONCURRENCY,
        "mix": "unary-ok",
        "rounds": rows,
        "summary": {
            "calls_per_s_off": off,
            "calls_per_s_grpc": on,
            "throughput_ratio": ratio,
            "kernel_us_per_call": figure("grpc", &|r| r["bpf"]["us_per_request"].as_f64()),
            "traps_per_call": figure("grpc", &|r| r["bpf"]["traps_per_request"].as_f64()),
            "collector_us_per_call": figure("grpc", &|r| r["collector_us_per_call"].as_f64()),
        },
    }))
}

/// Runs the gRPC client for `calls` unary calls; its own elapsed time.
fn grpc_client(tools: &Tools, addr: SocketAddr, calls: usize) -> anyhow::Result<Duration> {
    let out = pinned(1, &tools.grpc.client)
        .arg("-addr")
        .arg(addr.to_string())
        .arg("-rounds")
        .arg(calls.to_string())
        .arg("-concurrency")
        .arg(GRPC_CONCURRENCY.to_string())
        .arg("-mix")
        .arg("unary-ok")
        .stdout(Stdio::null())
        .output()
        .context("running the gRPC client")?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "gRPC client failed ({}): {}",
        out.status,
        err.trim()
    );
    err.lines()
        .find_map(|l| l.strip_prefix("elapsed_ns "))
        .and_then(|n| n.trim().parse().ok())
        .map(Duration::from_nanos)
        .with_context(|| format!("gRPC client printed no elapsed_ns: {}", err.trim()))
}

/// Calls the collector counted (`rpc_server_requests_total`, all codes and methods).
fn grpc_counted(c: &Collector) -> anyhow::Result<f64> {
    Ok(metric_sum(&c.metrics()?, "rpc_server_requests_total").unwrap_or(0.0))
}

/// Seconds until the collector's log says it instrumented `pid` (None: not within 5 s).
fn wait_grpc_instrumented(log: &Path, pid: u32) -> Option<f64> {
    let t = Instant::now();
    let needle = format!("pid={pid} ");
    while t.elapsed() < INSTRUMENT_WAIT {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.contains("grpc-go server instrumented") && l.contains(&needle))
        {
            return Some(t.elapsed().as_secs_f64());
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

fn select_configs(names: &[String]) -> anyhow::Result<Vec<&'static Config>> {
    if names.is_empty() {
        return Ok(CONFIGS.iter().filter(|c| c.by_default).collect());
    }
    let mut out = Vec::new();
    for n in names {
        let c = CONFIGS.iter().find(|c| c.name == n).with_context(|| {
            let known: Vec<&str> = CONFIGS.iter().map(|c| c.name).collect();
            format!("unknown configuration {n:?} (known: {})", known.join(", "))
        })?;
        if !out.iter().any(|o: &&Config| o.name == c.name) {
            out.push(c);
        }
    }
    // Ratios need the baseline, and the baseline runs first in every round: the open-loop rate
    // is half of its first saturation.
    out.retain(|c| c.args.is_some());
    out.insert(0, &CONFIGS[0]);
    Ok(out)
}

fn config_args(c: &Config, new_flags: bool) -> Option<Vec<String>> {
    let a = if new_flags { c.args } else { c.legacy_args };
    a.map(|a| a.iter().map(|s| (*s).to_string()).collect())
}

/// Builds (or finds) every binary the run needs.
fn prepare(root: &Path, opts: &Options, stamp: &str) -> anyhow::Result<Tools> {
    let target = super::cargo_target_dir(root);
    let (collector, collector_source) = match &opts.collector {
        Some(p) => {
            ensure!(p.is_file(), "--collector {}: no such file", p.display());
            (
                fs::canonicalize(p)?,
                format!("binary given with --collector ({})", p.display()),
            )
        }
        None => {
            super::cargo(&["build", "--release", "-p", "collector"])?;
            let head = cmd_stdout(
                Command::new("git")
                    .args(["rev-parse", "HEAD"])
                    .current_dir(root),
            )
            .unwrap_or_default();
            let dirty = cmd_stdout(
                Command::new("git")
                    .args([
                        "status",
                        "--porcelain",
                        "--",
                        "collector",
                        "collector-ebpf",
                        "collector-common",
                    ])
                    .current_dir(root),
            )
            .map(|s| !s.is_empty())
            .unwrap_or(true);
            let source = if dirty {
                format!("working tree at {head} with uncommitted changes in collector*")
            } else {
                format!("commit {head}")
            };
            (target.join("release/collector"), source)
        }
    };
    super::cargo(&[
        "build",
        "--release",
        "-p",
        "integration-tests",
        "--bin",
        "pod-traffic",
    ])?;
    let pod_traffic = target.join("release/pod-traffic");

    let go = newest_go(root, &target)?;
    let bin = target.join("bench/bin");
    fs::create_dir_all(&bin)?;
    let server = bin.join("server");
    let loadgen = bin.join("loadgen");
    go_build(&go, &root.join("tests/go/server"), &server)?;
    go_build(&go, &root.join("tests/go/loadgen"), &loadgen)?;

    let grpc = grpc_fixtures(root)?;
    let help = cmd_stdout(Command::new(&collector).arg("--help"))?;
    let out_dir = target.join("bench");
    let log_dir = out_dir.join(format!("logs-{stamp}"));
    fs::create_dir_all(&log_dir)?;
    Ok(Tools {
        collector,
        collector_source,
        server,
        loadgen,
        pod_traffic,
        go,
        out_dir,
        log_dir,
        new_flags: help.contains(NEW_FLAGS_MARKER),
        grpc,
    })
}

/// Builds (or finds built) the gRPC fixtures with tests/go/grpc/build.sh and picks the newest
/// grpc-go version's default server and its client.
fn grpc_fixtures(root: &Path) -> anyhow::Result<GrpcTools> {
    let script = root.join("tests/go/grpc/build.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    // "<grpc version> <variant> <server> <client>" per server; versions in ascending order.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [v, "default", server, client] => Some(GrpcTools {
                version: v.to_string(),
                server: server.into(),
                client: client.into(),
            }),
            _ => None,
        })
        .next_back()
        .with_context(|| format!("{} listed no default server", script.display()))
}

/// The newest toolchain of tests/go/versions installed by `WITH_GO=1 scripts/bootstrap.sh`.
fn newest_go(root: &Path, target: &Path) -> anyhow::Result<PathBuf> {
    let text = fs::read_to_string(root.join("tests/go/versions"))?;
    let newest = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .max_by_key(|v| {
            v.split('.')
                .map(|p| p.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
        .context("tests/go/versions lists no Go release")?;
    let go = target.join("go").join(newest).join("bin/go");
    ensure!(
        go.is_file(),
        "Go {newest} is not installed at {}: run `WITH_GO=1 scripts/bootstrap.sh`",
        go.display()
    );
    Ok(go)
}

fn go_env(cmd: &mut Command) -> &mut Command {
    cmd.env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", format!("{CACHE}/go-cache"))
        .env("GOPATH", format!("{CACHE}/go-path"))
}

fn go_build(go: &Path, dir: &Path, out: &Path) -> anyhow::Result<()> {
    let status = go_env(
        Command::new(go)
            .args(["build", "-trimpath", "-buildvcs=false", "-o"])
            .arg(out)
            .arg("."),
    )
    // The bench's own programs have no dependencies: nothing to download.
    .env("GOPROXY", "off")
    .current_dir(dir)
    .status()
    .with_context(|| format!("running {}", go.display()))?;
    ensure!(
        status.success(),
        "go build in {} failed ({status})",
        dir.display()
    );
    Ok(())
}

/// Tries to build each peer; reports `built` with the binary, or `not built` with the reason
/// (the last lines of the toolchain's error).
fn build_peers(go: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, module) in PEERS {
        eprintln!("bench: building peer {name} ({module})");
        let bin = PathBuf::from(CACHE).join("peers/bin");
        let result = fs::create_dir_all(&bin)
            .context("creating the peer cache")
            .and_then(|()| {
                let mut cmd = Command::new(go);
                go_env(&mut cmd)
                    .args(["install", module])
                    .env("GOBIN", &bin)
                    .env("CGO_ENABLED", "1");
                run_with_timeout(&mut cmd, PEER_BUILD_TIMEOUT)
            });
        let v = match result {
            Ok((true, _)) => json!({"name": name, "module": module, "status": "built",
                "reason": "built; running peers side by side is not implemented yet", "binary": bin.join(name).display().to_string()}),
            Ok((false, err)) => {
                json!({"name": name, "module": module, "status": "not built", "reason": without_hosts(&last_lines(&err, 2))})
            }
            Err(e) => {
                json!({"name": name, "module": module, "status": "not built", "reason": format!("{e:#}")})
            }
        };
        eprintln!(
            "bench: peer {name}: {}: {}",
            v["status"].as_str().unwrap_or(""),
            v["reason"].as_str().unwrap_or("")
        );
        out.push(v);
    }
    out
}

/// The toolchain's message with URLs cut to their path (`https://host/a/b` → `…/a/b`): the
/// reason is meant to be pasted into BENCHMARKS.md, which names no registry host.
fn without_hosts(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("https://") {
        out += &rest[..i];
        let after = &rest[i + "https://".len()..];
        let host_end = after.find(['/', ' ']).unwrap_or(after.len());
        out += "…";
        rest = &after[host_end..];
    }
    out + rest
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Runs a command to completion or until `timeout`; returns success and stderr.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<(bool, String)> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {} s", timeout.as_secs());
        }
        thread::sleep(Duration::from_millis(200));
    };
    let err = reader.join().unwrap_or_default();
    Ok((status.success(), err))
}

fn cmd_stdout(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed ({})", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine() -> anyhow::Result<Value> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
        })
        .unwrap_or(0);
    Ok(json!({
        "nproc": thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": cmd_stdout(Command::new("uname").arg("-r"))?,
        "cpu_model": model,
        "mem_total_mib": mem / 1024,
    }))
}

fn loadavg() -> Vec<f64> {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process killed (SIGKILL) when dropped: servers and sinks hold no state worth a clean
/// shutdown.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns a program that prints `listening ...<addr>` first (the Go server: `listening on
/// ADDR`, pod-traffic: `listening ADDR`) and returns it with the address.
fn spawn_listening(cmd: &mut Command) -> anyhow::Result<(Guard, SocketAddr)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .context("no `listening` line within 10 s")?;
    let addr = line
        .split_whitespace()
        .last()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{cmd:?} printed {line:?}, not `listening <addr>`"))?;
    Ok((guard, addr))
}

fn pinned(cpu: u32, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpu.to_string()).arg(program);
    c
}

/// The collector under test, stopped with SIGTERM (its shutdown path detaches everything).
struct Collector {
    child: Option<Child>,
    pid: u32,
    api: SocketAddr,
}

/// The collector refused its arguments: the configuration table and the binary disagree.
const UNEXPECTED_ARGUMENT: &str = "unexpected argument";

impl Collector {
    fn start(
        tools: &Tools,
        opts: &Options,
        config: &Config,
        log: &Path,
    ) -> anyhow::Result<Collector> {
        let args =
            config_args(config, tools.new_flags).context("configuration without a collector")?;
        let port = free_port()?;
        let api: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = match opts.collector_cpu {
            Some(cpu) => pinned(cpu, &tools.collector),
            None => Command::new(&tools.collector),
        };
        let logf = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.arg("--listen")
            .arg(api.to_string())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", tools.collector.display()))?;
        // With taskset the collector is taskset's exec'd image: same pid.
        let pid = child.id();
        let mut c = Collector {
            child: Some(child),
            pid,
            api,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                c.child = None;
                let text = fs::read_to_string(log).unwrap_or_default();
                if text.contains(UNEXPECTED_ARGUMENT) {
                    bail!(
                        "the collector does not accept the arguments of configuration {:?} ({args:?}): {}; \
                         update CONFIGS in xtask/src/bench.rs or choose others with --configs",
                        config.name,
                        last_lines(&text, 3)
                    );
                }
                bail!(
                    "the collector exited before it was ready ({status}): {}",
                    last_lines(&text, 5)
                );
            }
            if matches!(
                http_get(api, "/readyz", Duration::from_secs(2)),
                Ok((200, _))
            ) {
                return Ok(c);
            }
            ensure!(
                Instant::now() < deadline,
                "the collector was not ready within 90 s (log: {})",
                log.display()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.api, "/metrics", Duration::from_secs(10))?;
        ensure!(status == 200, "/metrics answered {status}");
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn stop(mut self) -> anyhow::Result<Value> {
        let t = Instant::now();
        let status = self.terminate()?;
        Ok(json!({"exit": status, "stop_s": t.elapsed().as_secs_f64()}))
    }

    fn terminate(&mut self) -> anyhow::Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("gone".into());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s.to_string());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the collector did not stop within 30 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One HTTP/1.1 GET on a fresh connection (`Connection: close`); the body as bytes.
fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: `write!` on the bare stream sends each formatted piece as its own segment,
    // which the API measurement would then time as well (measured: +25 µs at p50).
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, dechunk(&buf[head_end + 4..])));
    }
    Ok((status, buf[head_end + 4..].to_vec()))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = b.get(eol + 4 + size..).unwrap_or_default();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// Sum of every sample of a metric family (Prometheus text format), `None` when absent.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Counters read around a phase: the loss-related ones and the request counts.
const COUNTERS: &[&str] = &[
    "collector_events_received_total",
    "collector_kernel_drops_total",
    "collector_events_dropped_total",
    "collector_events_rejected_total",
    "collector_http_requests_total",
    "collector_http_requests_unrecorded_total",
];

fn counters(c: &Collector) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let text = c.metrics()?;
    Ok(COUNTERS
        .iter()
        .map(|n| (*n, metric_sum(&text, n).unwrap_or(0.0)))
        .collect())
}

fn counters_delta(a: &BTreeMap<&'static str, f64>, b: &BTreeMap<&'static str, f64>) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in b {
        m.insert(
            k.trim_start_matches("collector_").to_string(),
            json!(v - a.get(k).unwrap_or(&0.0)),
        );
    }
    Value::Object(m)
}

/// Collector CPU time (user + system) in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may contain spaces, ends with ')'.
    let rest = stat.rsplit_once(')').context("bad /proc/pid/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let ticks: f64 = f.get(11).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    cmd_stdout(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100.0)
}

fn memory_kib(pid: u32) -> Value {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
    };
    json!({"vm_rss_kib": get("VmRSS:"), "vm_hwm_kib": get("VmHWM:")})
}

/// Ids of the BPF programs and maps the process holds (program fds, link fds, map fds): ours,
/// whatever else other processes load meanwhile.
fn owned_bpf_ids(pid: u32) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut progs = BTreeSet::new();
    let mut maps = BTreeSet::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (progs, maps);
    };
    for e in dir.flatten() {
        let Ok(text) = fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("prog_id:") {
                progs.extend(v.trim().parse::<u64>().ok());
            } else if let Some(v) = line.strip_prefix("map_id:") {
                maps.extend(v.trim().parse::<u64>().ok());
            }
        }
    }
    (progs, maps)
}

#[derive(Clone)]
struct ProgStat {
    name: String,
    kind: String,
    run_time_ns: u64,
    run_cnt: u64,
}

fn prog_stats(ids: &BTreeSet<u64>) -> anyhow::Result<BTreeMap<u64, ProgStat>> {
    let text = cmd_stdout(Command::new("bpftool").args(["prog", "show", "-j"]))?;
    let all: Value = serde_json::from_str(&text).context("parsing `bpftool prog show -j`")?;
    let mut out = BTreeMap::new();
    for p in all.as_array().into_iter().flatten() {
        let Some(id) = p["id"].as_u64() else { continue };
        if !ids.contains(&id) {
            continue;
        }
        out.insert(
            id,
            ProgStat {
                name: p["name"].as_str().unwrap_or("?").to_string(),
                kind: p["type"].as_str().unwrap_or("?").to_string(),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// Per-program deltas and totals, and traps, per request.
fn prog_delta(
    before: &BTreeMap<u64, ProgStat>,
    after: &BTreeMap<u64, ProgStat>,
    requests: f64,
) -> Value {
    let mut progs = Vec::new();
    let (mut ns, mut runs, mut traps) = (0u64, 0u64, 0u64);
    for (id, a) in after {
        let (t0, c0) = before
            .get(id)
            .map_or((0, 0), |b| (b.run_time_ns, b.run_cnt));
        let (dt, dc) = (
            a.run_time_ns.saturating_sub(t0),
            a.run_cnt.saturating_sub(c0),
        );
        ns += dt;
        runs += dc;
        if TRAP_PROG_TYPES.contains(&a.kind.as_str()) {
            traps += dc;
        }
        if dc > 0 {
            progs.push(
                json!({"id": id, "name": a.name, "type": a.kind, "run_cnt": dc, "run_time_ns": dt,
                "ns_per_run": dt as f64 / dc as f64}),
            );
        }
    }
    let per_req = |x: f64| {
        if requests > 0.0 {
            Some(x / requests)
        } else {
            None
        }
    };
    json!({
        "programs": progs,
        "run_cnt": runs,
        "run_time_ns": ns,
        "ns_per_run": if runs > 0 { Some(ns as f64 / runs as f64) } else { None },
        "us_per_request": per_req(ns as f64 / 1e3),
        "runs_per_request": per_req(runs as f64),
        "traps_per_request": per_req(traps as f64),
    })
}

/// Turns `kernel.bpf_stats_enabled` on and restores the previous value when dropped.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> anyhow::Result<BpfStats> {
        let old = fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, &self.0);
    }
}

/// Times `/v1/workloads` every `API_PERIOD` until stopped; latencies in microseconds.
struct ApiProbe {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(Vec<f64>, u64)>,
}

impl ApiProbe {
    fn start(api: SocketAddr) -> ApiProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                match http_get(api, "/v1/workloads", Duration::from_secs(5)) {
                    Ok((200, _)) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                    _ => errors += 1,
                }
                thread::sleep(API_PERIOD);
            }
            (lat, errors)
        });
        ApiProbe { stop, handle }
    }

    fn finish(self) -> Value {
        self.stop.store(true, Ordering::Relaxed);
        let (mut lat, errors) = self.handle.join().unwrap_or_default();
        json!({"samples": lat.len(), "errors": errors, "p50_us": percentile(&mut lat, 0.50), "p99_us": percentile(&mut lat, 0.99)})
    }
}

fn percentile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

fn run_loadgen(
    tools: &Tools,
    addr: SocketAddr,
    plan: &Plan,
    duration: Duration,
    rate: Option<f64>,
) -> anyhow::Result<Value> {
    let mut cmd = pinned(1, &tools.loadgen);
    cmd.arg("-addr")
        .arg(addr.to_string())
        .arg("-path")
        .arg(HTTP_PATH)
        .arg("-conns")
        .arg(HTTP_CONNS.to_string())
        .arg("-duration")
        .arg(format!("{}ms", duration.as_millis()))
        .arg("-warmup")
        .arg(format!("{}ms", plan.warmup.as_millis()));
    if let Some(r) = rate {
        cmd.arg("-rate").arg(format!("{r}"));
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .context("running loadgen")?;
    ensure!(
        out.status.success(),
        "loadgen failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("parsing loadgen output")
}

/// Starts a fresh Go server on CPU 0, waits until `collector` (if any) instrumented it, and runs
/// `f` with its address.
fn with_server<T>(
    tools: &Tools,
    collector: Option<&Collector>,
    f: impl FnOnce(SocketAddr) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (_server, addr) =
        spawn_listening(pinned(0, &tools.server).arg("-listen").arg("127.0.0.1:0"))?;
    if let Some(c) = collector {
        // Whatever the design, wait until the collector lists the server (uprobes attached) or
        // the wait runs out (designs or configurations that do not instrument it).
        wait_instrumented(c, &tools.server);
    }
    f(addr)
}

/// Seconds until `/v1/go-http` lists the binary as instrumented, `None` if it never did within
/// the wait (a skipped one is listed too, `instrumented: false`).
fn wait_instrumented(c: &Collector, binary: &Path) -> Option<f64> {
    let t = Instant::now();
    let name = binary.display().to_string();
    while t.elapsed() < INSTRUMENT_WAIT {
        if let Ok((200, body)) = http_get(c.api, "/v1/go-http", Duration::from_secs(2))
            && serde_json::from_slice::<Value>(&body)
                .ok()
                .as_ref()
                .and_then(Value::as_array)
                .is_some_and(|list| {
                    list.iter()
                        .any(|s| s["instrumented"] == true && s["path"] == name.as_str())
                })
        {
            return Some(t.elapsed().as_secs_f64());
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One configuration in one round.
fn run_round(
    tools: &Tools,
    plan: &Plan,
    opts: &Options,
    config: &Config,
    round: usize,
    rate: Option<f64>,
) -> anyhow::Result<Value> {
    let log = tools
        .log_dir
        .join(format!("collector-{}-{round}.log", config.name));
    let collector = match config.args {
        Some(_) => Some(Collector::start(tools, opts, config, &log)?),
        None => None,
    };
    let mut row = json!({"round": round, "config": config.name});

    // Saturated HTTP throughput, with the API timed meanwhile.
    let (_server, addr) =
        spawn_listening(pinned(0, &tools.server).arg("-listen").arg("127.0.0.1:0"))?;
    if let Some(c) = &collector {
        row["instrumented_after_s"] = json!(wait_instrumented(c, &tools.server));
    }
    let cpu0 = collector.as_ref().map(|c| cpu_seconds(c.pid)).transpose()?;
    let ctr0 = collector.as_ref().map(counters).transpose()?;
    let api = collector.as_ref().map(|c| ApiProbe::start(c.api));
    let sat = run_loadgen(tools, addr, plan, plan.saturate, None)?;
    if let Some(api) = api {
        row["api_under_load"] = api.finish();
    }
    if let (Some(c), Some(cpu0)) = (&collector, cpu0) {
        let requests = sat["requests"].as_f64().unwrap_or(0.0);
        // Warm-up requests are not in `requests` but cost CPU: scale by the measured share.
        let share = plan.saturate.as_secs_f64() / (plan.saturate + plan.warmup).as_secs_f64();
        let cpu = (cpu_seconds(c.pid)? - cpu0) * share;
        row["collector_cpu_saturated"] =
            json!({"cpu_s": cpu, "ms_per_1k_requests": per_k(cpu * 1e3, requests)});
    }
    row["http_saturated"] = sat;

    // Half load: half of the first saturation measured without the collector, unless given.
    let rate = match rate {
        Some(r) => Some(r),
        None if config.args.is_none() => {
            let sat = row["http_saturated"]["rps"].as_f64().unwrap_or(0.0);
            ensure!(
                sat > 0.0,
                "the Go server answered nothing without the collector"
            );
            Some((sat / 2.0).round())
        }
        None => None,
    };
    row["open_rate"] = json!(rate);

    // Open loop at the fixed rate, with bpf_stats on.
    if let Some(rate) = rate {
        let ids = collector.as_ref().map(|c| owned_bpf_ids(c.pid).0);
        let stats = BpfStats::enable()?;
        let before = ids.as_ref().map(prog_stats).transpose()?;
        let cpu0 = collector.as_ref().map(|c| cpu_seconds(c.pid)).transpose()?;
        let open = run_loadgen(tools, addr, plan, plan.open, Some(rate))?;
        let after = ids.as_ref().map(prog_stats).transpose()?;
        drop(stats);
        if let (Some(c), Some(cpu0), Some(before), Some(after)) = (&collector, cpu0, before, after)
        {
            let cpu_now = cpu_seconds(c.pid)?;
            // Every request of the phase, warm-up included, cost kernel time.
            let sent = open["requests"].as_f64().unwrap_or(0.0) + rate * plan.warmup.as_secs_f64();
            row["bpf"] = prog_delta(&before, &after, sent);
            row["collector_cpu_open"] = json!({"cpu_s": cpu_now - cpu0, "ms_per_1k_requests": per_k((cpu_now - cpu0) * 1e3, sent)});
        }
        row["http_open"] = open;
    }
    // The issue's fixed low rate: latency when every design keeps up.
    // The API is timed there too: with both CPUs saturated (above), its latency is mostly the
    // wait for a CPU; here the CPUs have idle time.
    let api = collector.as_ref().map(|c| ApiProbe::start(c.api));
    row["http_low"] = run_loadgen(tools, addr, plan, plan.open, Some(LOW_RATE))?;
    if let Some(api) = api {
        row["api_low_load"] = api.finish();
    }
    drop(_server);
    if let (Some(c), Some(ctr0)) = (&collector, ctr0) {
        thread::sleep(SETTLE);
        row["counters_http"] = counters_delta(&ctr0, &counters(c)?);
    }

    // TCP only: bulk transfer, then connection churn.
    for (key, bytes, conns, parallel) in [
        ("tcp_bulk", plan.bulk_bytes_per_conn, plan.bulk_conns, 1),
        ("tcp_churn", 1, plan.churn_conns, 8),
    ] {
        let cpu0 = collector.as_ref().map(|c| cpu_seconds(c.pid)).transpose()?;
        row[key] = tcp_run(tools, bytes, conns, parallel)?;
        if let (Some(c), Some(cpu0)) = (&collector, cpu0) {
            row[key]["collector_cpu_s"] = json!(cpu_seconds(c.pid)? - cpu0);
        }
    }

    if let Some(c) = collector {
        row["memory"] = memory_kib(c.pid);
        row["stop"] = c.stop()?;
    }
    Ok(row)
}

fn per_k(x: f64, requests: f64) -> Option<f64> {
    (requests > 0.0).then(|| x / requests * 1e3)
}

/// `pod-traffic serve` on CPU 0, `pod-traffic fetch` on CPU 1: bytes and connections per second.
fn tcp_run(tools: &Tools, bytes_per_conn: u64, conns: u64, parallel: u64) -> anyhow::Result<Value> {
    let (_srv, addr) = spawn_listening(pinned(0, &tools.pod_traffic).args([
        "serve",
        "127.0.0.1:0",
        &bytes_per_conn.to_string(),
    ]))?;
    let t = Instant::now();
    let out = pinned(1, &tools.pod_traffic)
        .args([
            "fetch",
            &addr.to_string(),
            &conns.to_string(),
            &parallel.to_string(),
        ])
        .output()
        .context("running pod-traffic fetch")?;
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "pod-traffic fetch failed ({}): {}{}",
        out.status,
        text.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let kv = |k: &str| {
        text.split_whitespace()
            .find_map(|w| {
                w.strip_prefix(k)
                    .and_then(|v| v.strip_prefix('='))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    let (bytes, ok) = (kv("bytes"), kv("conns"));
    Ok(
        json!({"seconds": secs, "bytes": bytes, "conns": ok, "bytes_per_s": bytes / secs, "conns_per_s": ok / secs}),
    )
}

/// Open-loop steps of increasing rate against one collector: events/s received, everything lost
/// and the sampling in effect, until the server saturates or loss has been seen on two steps.
fn ramp(tools: &Tools, plan: &Plan, opts: &Options, config: &Config) -> anyhow::Result<Value> {
    let log = tools
        .log_dir
        .join(format!("collector-{}-ramp.log", config.name));
    let c = Collector::start(tools, opts, config, &log)?;
    let mut steps = Vec::new();
    with_server(tools, Some(&c), |addr| {
        let mut lossy = 0;
        for &rate in plan.ramp_rates {
            let before = counters(&c)?;
            let t = Instant::now();
            let res = run_loadgen(tools, addr, plan, plan.ramp_step, Some(rate))?;
            let secs = t.elapsed().as_secs_f64();
            thread::sleep(SETTLE);
            let after = counters(&c)?;
            let text = c.metrics()?;
            let d = |k: &str| after.get(k).unwrap_or(&0.0) - before.get(k).unwrap_or(&0.0);
            let lost = d("collector_kernel_drops_total")
                + d("collector_events_dropped_total")
                + d("collector_events_rejected_total");
            let achieved = res["rps"].as_f64().unwrap_or(0.0);
            steps.push(json!({
                "target_rate": rate,
                "achieved_rps": achieved,
                "events_per_s": d("collector_events_received_total") / secs,
                "lost": lost,
                "counters": counters_delta(&before, &after),
                "http_sample_every": metric_sum(&text, "collector_http_sample_every"),
                "p99_us": res["latency_us"]["p99"],
            }));
            if lost > 0.0 {
                lossy += 1;
            }
            // Beyond saturation the rate is the server's, not ours; two lossy steps tell the
            // behaviour beyond the limit.
            if achieved < 0.9 * rate || lossy >= 2 {
                break;
            }
        }
        Ok(())
    })?;
    let max_clean = steps
        .iter()
        .filter(|s| s["lost"].as_f64() == Some(0.0))
        .filter_map(|s| s["events_per_s"].as_f64())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let first_loss = steps
        .iter()
        .find(|s| s["lost"].as_f64().unwrap_or(0.0) > 0.0)
        .cloned();
    c.stop()?;
    Ok(
        json!({"steps": steps, "max_events_per_s_without_loss": max_clean, "first_lossy_step": first_loss}),
    )
}

/// The cgroup2 mount point from /proc/self/mountinfo.
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // "... <mount point> <opts> ... - cgroup2 <source> <opts>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mp.replace("\\040", " ")));
        }
    }
    bail!("no cgroup2 mount in /proc/self/mountinfo")
}

/// Cgroup directories created for the workload phase, removed when dropped.
struct Cgroups {
    parent: PathBuf,
    children: Vec<PathBuf>,
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self
            .children
            .iter()
            .chain(std::iter::once(&self.parent))
            .rev()
        {
            // A cgroup stays busy for a moment after its last process was reaped.
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// RSS, map occupancy and `/metrics` render time after N real workloads, for each N of the plan
/// (cumulative: the second count adds to the first, on the same collector).
fn workloads(tools: &Tools, plan: &Plan, opts: &Options, config: &Config) -> anyhow::Result<Value> {
    let mount = cgroup2_mount()?;
    let mut groups = Cgroups {
        parent: mount.join(format!("collector-bench-{}", std::process::id())),
        children: Vec::new(),
    };
    fs::create_dir_all(&groups.parent)
        .with_context(|| format!("creating {}", groups.parent.display()))?;
    let log = tools
        .log_dir
        .join(format!("collector-{}-workloads.log", config.name));
    let c = Collector::start(tools, opts, config, &log)?;
    let (_sink, addr) =
        spawn_listening(Command::new(&tools.pod_traffic).args(["sink", "127.0.0.1:0"]))?;
    let mut out = Vec::new();
    let mut targets = plan.workloads.clone();
    targets.sort_unstable();
    for n in targets {
        let t = Instant::now();
        let mut running: Vec<Child> = Vec::new();
        let mut failed = 0u64;
        while groups.children.len() < n {
            let dir = groups.parent.join(format!("w{}", groups.children.len()));
            fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            groups.children.push(dir.clone());
            // The shell moves itself into the cgroup, then becomes the client: the connection
            // is made from inside the workload.
            let child = Command::new("sh")
                .args([
                    "-c",
                    "echo 0 > \"$1/cgroup.procs\" && exec \"$2\" send \"$3\" 64",
                    "sh",
                ])
                .arg(&dir)
                .arg(&tools.pod_traffic)
                .arg(addr.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            running.push(child);
            if running.len() >= WORKLOAD_PARALLELISM {
                failed += u64::from(!running.remove(0).wait()?.success());
            }
        }
        for mut ch in running {
            failed += u64::from(!ch.wait()?.success());
        }
        let created_s = t.elapsed().as_secs_f64();
        // Wait for the harvests to see them: until the workload count stops growing.
        let mut last = -1.0;
        for _ in 0..20 {
            thread::sleep(Duration::from_secs(1));
            let w = metric_sum(&c.metrics()?, "collector_workloads").unwrap_or(0.0);
            if w == last {
                break;
            }
            last = w;
        }
        let mut render = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let (status, body) = http_get(c.api, "/metrics", Duration::from_secs(30))?;
            ensure!(status == 200, "/metrics answered {status}");
            render.push(t.elapsed().as_secs_f64() * 1e3);
            bytes = body.len();
        }
        let text = c.metrics()?;
        out.push(json!({
            "workloads": n,
            "client_failures": failed,
            "create_s": created_s,
            "collector_workloads": metric_sum(&text, "collector_workloads"),
            "collector_workloads_capped_total": metric_sum(&text, "collector_workloads_capped_total"),
            "memory": memory_kib(c.pid),
            "metrics_render_ms_median": percentile(&mut render, 0.5),
            "metrics_bytes": bytes,
            "maps": map_occupancy(c.pid)?,
        }));
    }
    c.stop()?;
    Ok(Value::Array(out))
}

/// Entries of every hash map the collector holds (`bpftool map dump`), with its capacity.
fn map_occupancy(pid: u32) -> anyhow::Result<Value> {
    let (_, ids) = owned_bpf_ids(pid);
    let text = cmd_stdout(Command::new("bpftool").args(["map", "show", "-j"]))?;
    let all: Value = serde_json::from_str(&text).context("parsing `bpftool map show -j`")?;
    let mut out = Vec::new();
    for m in all.as_array().into_iter().flatten() {
        let Some(id) = m["id"].as_u64() else { continue };
        let kind = m["type"].as_str().unwrap_or("?");
        if !ids.contains(&id) || !HASH_MAP_TYPES.contains(&kind) {
            continue;
        }
        let dump =
            cmd_stdout(Command::new("bpftool").args(["map", "dump", "id", &id.to_string(), "-j"]))?;
        let entries = serde_json::from_str::<Value>(&dump)
            .ok()
            .and_then(|d| d.as_array().map(Vec::len));
        out.push(json!({"name": m["name"], "type": kind, "max_entries": m["max_entries"], "entries": entries}));
    }
    Ok(Value::Array(out))
}

// ---------------------------------------------------------------------------------------------
// Summary, budgets, rendering

/// One summarized figure: how to read it from a round, and whether a ratio to `off` means
/// anything.
struct Figure {
    key: &'static str,
    label: &'static str,
    ratio: bool,
    get: fn(&Value) -> Option<f64>,
}

const FIGURES: &[Figure] = &[
    Figure {
        key: "http_sat_rps",
        label: "Go HTTP saturated (req/s)",
        ratio: true,
        get: |r| r["http_saturated"]["rps"].as_f64(),
    },
    Figure {
        key: "http_open_p50_us",
        label: "p50 at half load (µs)",
        ratio: true,
        get: |r| r["http_open"]["latency_us"]["p50"].as_f64(),
    },
    Figure {
        key: "http_open_p99_us",
        label: "p99 at half load (µs)",
        ratio: true,
        get: |r| r["http_open"]["latency_us"]["p99"].as_f64(),
    },
    Figure {
        key: "http_open_achieved",
        label: "half load: achieved / target rate",
        ratio: false,
        get: |r| Some(r["http_open"]["rps"].as_f64()? / r["http_open"]["target_rate"].as_f64()?),
    },
    Figure {
        key: "http_low_p50_us",
        label: "p50 at 4,000 req/s (µs)",
        ratio: true,
        get: |r| r["http_low"]["latency_us"]["p50"].as_f64(),
    },
    Figure {
        key: "http_low_p99_us",
        label: "p99 at 4,000 req/s (µs)",
        ratio: true,
        get: |r| r["http_low"]["latency_us"]["p99"].as_f64(),
    },
    Figure {
        key: "tcp_bulk_mib_s",
        label: "TCP bulk (MiB/s)",
        ratio: true,
        get: |r| r["tcp_bulk"]["bytes_per_s"].as_f64().map(|b| b / 1048576.0),
    },
    Figure {
        key: "tcp_churn_conn_s",
        label: "TCP churn (conn/s)",
        ratio: true,
        get: |r| r["tcp_churn"]["conns_per_s"].as_f64(),
    },
    Figure {
        key: "bpf_us_per_req",
        label: "kernel programs µs/request",
        ratio: false,
        get: |r| r["bpf"]["us_per_request"].as_f64(),
    },
    Figure {
        key: "bpf_ns_per_run",
        label: "kernel ns/program run",
        ratio: false,
        get: |r| r["bpf"]["ns_per_run"].as_f64(),
    },
    Figure {
        key: "traps_per_req",
        label: "traps/request",
        ratio: false,
        get: |r| r["bpf"]["traps_per_request"].as_f64(),
    },
    Figure {
        key: "collector_cpu_open_ms_per_1k",
        label: "collector CPU ms/1k req (half load)",
        ratio: false,
        get: |r| r["collector_cpu_open"]["ms_per_1k_requests"].as_f64(),
    },
    Figure {
        key: "collector_cpu_sat_ms_per_1k",
        label: "collector CPU ms/1k req (saturated)",
        ratio: false,
        get: |r| r["collector_cpu_saturated"]["ms_per_1k_requests"].as_f64(),
    },
    Figure {
        key: "total_us_per_req",
        label: "kernel + collector µs/request",
        ratio: false,
        get: |r| {
            Some(
                r["bpf"]["us_per_request"].as_f64()?
                    + r["collector_cpu_open"]["ms_per_1k_requests"].as_f64()?,
            )
        },
    },
    Figure {
        key: "api_p50_us",
        label: "API /v1/workloads p50, HTTP saturated (µs)",
        ratio: false,
        get: |r| r["api_under_load"]["p50_us"].as_f64(),
    },
    Figure {
        key: "api_p99_us",
        label: "API /v1/workloads p99, HTTP saturated (µs)",
        ratio: false,
        get: |r| r["api_under_load"]["p99_us"].as_f64(),
    },
    Figure {
        key: "api_low_p99_us",
        label: "API /v1/workloads p99 at 4,000 req/s (µs)",
        ratio: false,
        get: |r| r["api_low_load"]["p99_us"].as_f64(),
    },
    Figure {
        key: "rss_mib",
        label: "collector RSS after the round (MiB)",
        ratio: false,
        get: |r| r["memory"]["vm_rss_kib"].as_f64().map(|k| k / 1024.0),
    },
];

fn spread(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

/// Per configuration and figure: median, min, max over the rounds, and the ratio of medians to
/// `off`.
fn summarize(doc: &Value) -> Value {
    let rounds = doc["rounds"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = doc["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let mut out = serde_json::Map::new();
    for name in &names {
        let mut m = serde_json::Map::new();
        for f in FIGURES {
            let vals: Vec<f64> = rounds
                .iter()
                .filter(|r| r["config"] == name.as_str())
                .filter_map(|r| (f.get)(r))
                .collect();
            if let Some((med, lo, hi)) = spread(vals) {
                m.insert(f.key.into(), json!({"median": med, "min": lo, "max": hi}));
            }
        }
        out.insert(name.clone(), Value::Object(m));
    }
    for name in &names {
        for f in FIGURES.iter().filter(|f| f.ratio) {
            let base = out.get("off").and_then(|o| o[f.key]["median"].as_f64());
            if let (Some(base), Some(entry)) =
                (base, out.get_mut(name).and_then(|o| o.get_mut(f.key)))
            {
                let med = entry["median"].as_f64().unwrap_or(0.0);
                if base > 0.0 {
                    entry["ratio"] = json!(med / base);
                }
            }
        }
    }
    Value::Object(out)
}

/// The budgets of issue #9, judged for every configuration that runs a collector.
fn budgets(doc: &Value) -> Value {
    let s = &doc["summary"];
    let mut out = Vec::new();
    let names: Vec<String> = doc["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| !c["args"].is_null())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    for name in names {
        let c = &s[&name];
        let mut push = |budget: &str, value: Option<f64>, shown: String, met: Option<bool>| {
            out.push(json!({"config": name, "budget": budget, "value": value, "shown": shown,
                "verdict": match met { Some(true) => "met", Some(false) => "missed", None => "not measured" }}));
        };
        let r = |k: &str| c[k]["ratio"].as_f64();
        let m = |k: &str| c[k]["median"].as_f64();
        let sat = r("http_sat_rps");
        push(
            "Go HTTP saturated ≥ 0.90 × off",
            sat,
            fmt_ratio(sat),
            sat.map(|v| v >= 0.90),
        );
        push(
            "Go HTTP saturated ≥ 0.98 × off (then)",
            sat,
            fmt_ratio(sat),
            sat.map(|v| v >= 0.98),
        );
        let p99 = r("http_open_p99_us");
        push(
            "p99 at half load ≤ 1.10 × off",
            p99,
            fmt_ratio(p99),
            p99.map(|v| v <= 1.10),
        );
        let tcp = match (r("tcp_bulk_mib_s"), r("tcp_churn_conn_s")) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        push(
            "TCP-only ≥ 0.95 × off (worse of bulk, churn)",
            tcp,
            fmt_ratio(tcp),
            tcp.map(|v| v >= 0.95),
        );
        let cpu = m("total_us_per_req");
        push(
            "≤ 2 µs kernel + collector CPU per request",
            cpu,
            fmt_opt(cpu, " µs"),
            cpu.map(|v| v <= 2.0),
        );
        let ramp = &doc["ramps"][&name];
        let clean = ramp["max_events_per_s_without_loss"].as_f64();
        let lossy_below_50k = ramp["first_lossy_step"]["events_per_s"]
            .as_f64()
            .is_some_and(|e| e <= 50_000.0);
        let verdict = if lossy_below_50k {
            Some(false)
        } else if clean.is_some_and(|c| c >= 50_000.0) {
            Some(true)
        } else {
            None
        };
        let shown = match (clean, verdict) {
            (Some(c), None) => format!("no loss up to {c:.0} events/s; 50k not reached"),
            (c, _) => format!("max without loss: {}", fmt_opt(c, " events/s")),
        };
        push("0 lost events at 50k events/s", clean, shown, verdict);
        let rss = doc["workloads"][&name]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["workloads"] == 1000)
            .and_then(|w| w["memory"]["vm_rss_kib"].as_f64())
            .map(|k| k / 1024.0);
        push(
            "RSS ≤ 64 MiB at 1,000 workloads",
            rss,
            fmt_opt(rss, " MiB"),
            rss.map(|v| v <= 64.0),
        );
        let api = m("api_p99_us").map(|u| u / 1e3);
        push(
            "API p99 < 1 ms while loaded (HTTP saturated)",
            api,
            fmt_opt(api, " ms"),
            api.map(|v| v < 1.0),
        );
        let api = m("api_low_p99_us").map(|u| u / 1e3);
        push(
            "API p99 < 1 ms while loaded (4,000 req/s)",
            api,
            fmt_opt(api, " ms"),
            api.map(|v| v < 1.0),
        );
    }
    Value::Array(out)
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2} ×"))
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{}{unit}", fmt_num(v)))
}

/// Three significant figures, no exponent.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A plain-text or Markdown table.
fn table(head: &[String], rows: &[Vec<String>], markdown: bool) -> String {
    let mut s = String::new();
    if markdown {
        s += &format!("| {} |\n", head.join(" | "));
        s += &format!("|{}\n", head.iter().map(|_| "---|").collect::<String>());
        for r in rows {
            s += &format!("| {} |\n", r.join(" | "));
        }
        return s;
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([head[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    s += &line(head);
    for r in rows {
        s += &line(r);
    }
    s
}

fn render(doc: &Value, markdown: bool) -> String {
    let mut s = String::new();
    let h = |s: &mut String, title: &str| {
        if markdown {
            *s += &format!("\n#### {title}\n\n");
        } else {
            *s += &format!("\n== {title}\n");
        }
    };
    let m = &doc["machine"];
    h(&mut s, "Run");
    s += &format!(
        "{} · {} CPUs ({}) · Linux {} · collector: {} · collector CPU: {} · load average at start {} / end {} · {} round(s) · half load = {} req/s\n",
        doc["started_at"].as_str().unwrap_or("?"),
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        doc["collector"]["source"].as_str().unwrap_or("?"),
        doc["collector"]["cpu"].as_str().unwrap_or("?"),
        fmt_load(&doc["loadavg"]["start"]),
        fmt_load(&doc["loadavg"]["end"]),
        doc["options"]["rounds"],
        doc["open_rate"]
            .as_f64()
            .map_or_else(|| "-".into(), |r| format!("{r:.0}")),
    );

    let names: Vec<String> = doc["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    h(
        &mut s,
        "Per configuration: median (min–max over rounds), ratio to off",
    );
    let mut head = vec!["figure".to_string()];
    head.extend(names.iter().cloned());
    let mut rows = Vec::new();
    for f in FIGURES {
        let mut row = vec![f.label.to_string()];
        let mut any = false;
        for n in &names {
            let e = &doc["summary"][n][f.key];
            let cell = match (e["median"].as_f64(), e["min"].as_f64(), e["max"].as_f64()) {
                (Some(med), Some(lo), Some(hi)) => {
                    any = true;
                    let mut c = format!("{} ({}–{})", fmt_num(med), fmt_num(lo), fmt_num(hi));
                    if let Some(r) = e["ratio"].as_f64().filter(|_| n != "off") {
                        c += &format!(" ×{r:.2}");
                    }
                    c
                }
                _ => "-".into(),
            };
            row.push(cell);
        }
        if any {
            rows.push(row);
        }
    }
    s += &table(&head, &rows, markdown);

    h(&mut s, "Budgets (issue #9)");
    let rows: Vec<Vec<String>> = doc["budgets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            vec![
                b["config"].as_str().unwrap_or("").into(),
                b["budget"].as_str().unwrap_or("").into(),
                b["shown"].as_str().unwrap_or("").into(),
                b["verdict"].as_str().unwrap_or("").into(),
            ]
        })
        .collect();
    s += &table(
        &[
            "config".into(),
            "budget".into(),
            "measured".into(),
            "verdict".into(),
        ],
        &rows,
        markdown,
    );

    h(&mut s, "Events before loss (open-loop ramp)");
    let mut rows = Vec::new();
    for (name, r) in doc["ramps"].as_object().into_iter().flatten() {
        for st in r["steps"].as_array().into_iter().flatten() {
            rows.push(vec![
                name.clone(),
                fmt_opt(st["target_rate"].as_f64(), ""),
                fmt_opt(st["achieved_rps"].as_f64(), ""),
                fmt_opt(st["events_per_s"].as_f64(), ""),
                fmt_opt(st["lost"].as_f64(), ""),
                fmt_opt(st["http_sample_every"].as_f64(), ""),
                fmt_opt(st["p99_us"].as_f64(), ""),
            ]);
        }
    }
    s += &table(
        &[
            "config",
            "target req/s",
            "achieved req/s",
            "events/s",
            "lost",
            "sample 1 in",
            "p99 µs",
        ]
        .map(String::from),
        &rows,
        markdown,
    );

    h(&mut s, "Workloads: RSS, /metrics, maps");
    let mut rows = Vec::new();
    for (name, ws) in doc["workloads"].as_object().into_iter().flatten() {
        for w in ws.as_array().into_iter().flatten() {
            let maps: Vec<String> = w["maps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["entries"].as_u64().unwrap_or(0) > 0)
                .map(|m| {
                    format!(
                        "{} {}/{}",
                        m["name"].as_str().unwrap_or("?"),
                        m["entries"],
                        m["max_entries"]
                    )
                })
                .collect();
            rows.push(vec![
                name.clone(),
                w["workloads"].to_string(),
                fmt_opt(w["collector_workloads"].as_f64(), ""),
                fmt_opt(w["memory"]["vm_rss_kib"].as_f64().map(|k| k / 1024.0), ""),
                fmt_opt(w["memory"]["vm_hwm_kib"].as_f64().map(|k| k / 1024.0), ""),
                fmt_opt(w["metrics_render_ms_median"].as_f64(), ""),
                fmt_opt(w["metrics_bytes"].as_f64().map(|b| b / 1024.0), ""),
                maps.join(", "),
            ]);
        }
    }
    s += &table(
        &[
            "config",
            "workloads",
            "exported",
            "RSS MiB",
            "HWM MiB",
            "/metrics ms",
            "/metrics KiB",
            "hash maps (entries/max)",
        ]
        .map(String::from),
        &rows,
        markdown,
    );

    h(
        &mut s,
        "Kernel programs at half load (ns per run, runs per request; median round)",
    );
    let mut rows = Vec::new();
    for n in &names {
        // The round whose total kernel time per request is the median one.
        let mut rs: Vec<&Value> = doc["rounds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["config"] == n.as_str() && r["bpf"].is_object())
            .collect();
        rs.sort_by(|a, b| {
            a["bpf"]["us_per_request"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b["bpf"]["us_per_request"].as_f64().unwrap_or(0.0))
        });
        let Some(r) = rs.get(rs.len() / 2) else {
            continue;
        };
        let sent = r["bpf"]["runs_per_request"]
            .as_f64()
            .zip(r["bpf"]["run_cnt"].as_f64())
            .map(|(per, cnt)| cnt / per);
        for p in r["bpf"]["programs"].as_array().into_iter().flatten() {
            rows.push(vec![
                n.clone(),
                p["name"].as_str().unwrap_or("?").into(),
                p["type"].as_str().unwrap_or("?").into(),
                fmt_opt(p["ns_per_run"].as_f64(), ""),
                fmt_opt(sent.and_then(|s| p["run_cnt"].as_f64().map(|c| c / s)), ""),
            ]);
        }
    }
    s += &table(
        &["config", "program", "type", "ns/run", "runs/request"].map(String::from),
        &rows,
        markdown,
    );

    h(&mut s, "gRPC (grpc-go uprobes, unary calls)");
    let g = &doc["grpc"];
    if g.is_null() {
        s += "gRPC: not measured in this run\n";
    } else {
        let sm = &g["summary"];
        let med = |v: &Value| {
            v["median"].as_f64().map_or_else(
                || "-".to_string(),
                |m| {
                    format!(
                        "{} ({}–{})",
                        fmt_num(m),
                        fmt_num(v["min"].as_f64().unwrap_or(m)),
                        fmt_num(v["max"].as_f64().unwrap_or(m))
                    )
                },
            )
        };
        let counted: Vec<String> = g["rounds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["config"] == "grpc")
            .map(|r| format!("{}/{}", r["counted"], r["calls"]))
            .collect();
        s += &table(
            &["figure", "median (min–max)"].map(String::from),
            &[
                vec![
                    "calls/s without the collector".into(),
                    med(&sm["calls_per_s_off"]),
                ],
                vec![
                    "calls/s with --go-grpc-uprobes all".into(),
                    med(&sm["calls_per_s_grpc"]),
                ],
                vec![
                    "throughput ratio".into(),
                    fmt_ratio(sm["throughput_ratio"].as_f64()),
                ],
                vec![
                    "kernel µs per call (bpf_stats)".into(),
                    med(&sm["kernel_us_per_call"]),
                ],
                vec!["traps per call".into(), med(&sm["traps_per_call"])],
                vec![
                    "collector CPU µs per call".into(),
                    med(&sm["collector_us_per_call"]),
                ],
                vec!["calls counted / made, per round".into(), counted.join(", ")],
            ],
            markdown,
        );
        s += &format!(
            "grpc-go {}, {} client goroutines on one connection, closed loop\n",
            g["grpc_go"].as_str().unwrap_or("?"),
            g["concurrency"]
        );
    }

    h(&mut s, "Peers");
    let peers = doc["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        s += "peers: not attempted (--no-peers)\n";
    }
    for p in peers {
        s += &format!(
            "peer {} ({}): {}: {}\n",
            p["name"].as_str().unwrap_or("?"),
            p["module"].as_str().unwrap_or("?"),
            p["status"].as_str().unwrap_or("?"),
            p["reason"].as_str().unwrap_or("")
        );
    }
    s
}

/// Several runs side by side: each run's median per figure and configuration, then the
/// budgets with each run's verdict.
fn render_runs(docs: &[Value], markdown: bool) -> String {
    let mut s = String::new();
    let stamps: Vec<String> = docs
        .iter()
        .map(|d| d["started_at"].as_str().unwrap_or("?").to_string())
        .collect();
    let names: Vec<String> = docs[0]["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    s += if markdown {
        "\n#### Runs\n\n"
    } else {
        "\n== Runs\n"
    };
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            vec![
                d["started_at"].as_str().unwrap_or("?").into(),
                d["options"]["rounds"].to_string(),
                d["options"]["nice"].to_string(),
                fmt_load(&d["loadavg"]["start"]),
                fmt_load(&d["loadavg"]["end"]),
                d["open_rate"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |r| format!("{r:.0}")),
                d["collector"]["source"].as_str().unwrap_or("?").into(),
            ]
        })
        .collect();
    s += &table(
        &[
            "run",
            "rounds",
            "nice",
            "load avg start",
            "load avg end",
            "half load req/s",
            "collector",
        ]
        .map(String::from),
        &rows,
        markdown,
    );
    s += if markdown {
        "\n#### Median of each run (ratio to off of that run)\n\n"
    } else {
        "\n== Median of each run (ratio to off of that run)\n"
    };
    let mut head = vec!["figure".to_string(), "config".to_string()];
    head.extend(stamps.iter().cloned());
    let mut rows = Vec::new();
    for f in FIGURES {
        for n in &names {
            let cells: Vec<String> = docs
                .iter()
                .map(|d| {
                    let e = &d["summary"][n][f.key];
                    match e["median"].as_f64() {
                        Some(m) => match e["ratio"].as_f64().filter(|_| n != "off") {
                            Some(r) => format!("{} ×{r:.2}", fmt_num(m)),
                            None => fmt_num(m),
                        },
                        None => "-".into(),
                    }
                })
                .collect();
            if cells.iter().any(|c| c != "-") {
                let mut row = vec![f.label.to_string(), n.clone()];
                row.extend(cells);
                rows.push(row);
            }
        }
    }
    s += &table(&head, &rows, markdown);
    s += if markdown {
        "\n#### Budgets per run\n\n"
    } else {
        "\n== Budgets per run\n"
    };
    let mut head = vec!["config".to_string(), "budget".to_string()];
    head.extend(stamps.iter().cloned());
    let mut rows = Vec::new();
    for (i, b) in docs[0]["budgets"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mut row = vec![
            b["config"].as_str().unwrap_or("").to_string(),
            b["budget"].as_str().unwrap_or("").to_string(),
        ];
        for d in docs {
            let x = &d["budgets"][i];
            row.push(format!(
                "{}: {}",
                x["verdict"].as_str().unwrap_or("-"),
                x["shown"].as_str().unwrap_or("-")
            ));
        }
        rows.push(row);
    }
    s += &table(&head, &rows, markdown);
    s
}

fn fmt_load(v: &Value) -> String {
    v.as_array().map_or_else(
        || "?".into(),
        |a| {
            a.iter()
                .map(|x| x.as_f64().map_or("?".into(), |f| format!("{f:.2}")))
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_every_sample_of_one_family_only() {
        let text = "# HELP x\ncollector_events_received_total{kind=\"exec\"} 12\ncollector_events_received_total{kind=\"process\"} 4\ncollector_events_received_totalx 99\ncollector_workloads 3\n";
        assert_eq!(
            metric_sum(text, "collector_events_received_total"),
            Some(16.0)
        );
        assert_eq!(metric_sum(text, "collector_workloads"), Some(3.0));
        assert_eq!(metric_sum(text, "collector_kernel_drops_total"), None);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(50.0));
        assert_eq!(percentile(&mut v, 0.99), Some(99.0));
        assert_eq!(percentile(&mut v, 1.0), Some(100.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    #[test]
    fn spread_is_median_min_max() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(vec![4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(vec![]), None);
    }

    #[test]
    fn reasons_name_no_host() {
        assert_eq!(
            without_hosts("reading https://example.org/a/b/@v/list: 403 Forbidden"),
            "reading …/a/b/@v/list: 403 Forbidden"
        );
        assert_eq!(without_hosts("no url"), "no url");
    }

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }

    #[test]
    fn configs_have_unique_names_and_one_baseline() {
        let names: BTreeSet<&str> = CONFIGS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CONFIGS.len());
        assert_eq!(CONFIGS.iter().filter(|c| c.args.is_none()).count(), 1);
        assert!(
            CONFIGS
                .iter()
                .all(|c| c.args.is_none() == c.legacy_args.is_none())
        );
    }

    #[test]
    fn selecting_configs_keeps_the_baseline() {
        let c = select_configs(&["tcp-only".into()]).expect("known");
        assert_eq!(
            c.iter().map(|c| c.name).collect::<Vec<_>>(),
            ["off", "tcp-only"]
        );
        assert!(select_configs(&["nope".into()]).is_err());
    }

    #[test]
    fn summary_ratios_and_budgets_from_rounds() {
        let round = |config: &str, rps: f64, p99: f64| {
            json!({"config": config, "http_saturated": {"rps": rps}, "http_open": {"latency_us": {"p50": 100.0, "p99": p99}},
                "tcp_bulk": {"bytes_per_s": 1048576.0}, "tcp_churn": {"conns_per_s": 1000.0},
                "bpf": {"us_per_request": 0.5}, "collector_cpu_open": {"ms_per_1k_requests": 1.0}})
        };
        let mut doc = json!({
            "configs": [{"name": "off", "args": null}, {"name": "on", "args": []}],
            "rounds": [round("off", 100.0, 500.0), round("on", 50.0, 600.0), round("off", 120.0, 500.0), round("on", 60.0, 600.0),
                       round("off", 110.0, 500.0), round("on", 55.0, 600.0)],
            "ramps": {"on": {"max_events_per_s_without_loss": 10000.0, "first_lossy_step": null}},
            "workloads": {"on": [{"workloads": 1000, "memory": {"vm_rss_kib": 32768.0}}]},
        });
        doc["summary"] = summarize(&doc);
        assert_eq!(doc["summary"]["on"]["http_sat_rps"]["median"], 55.0);
        assert_eq!(doc["summary"]["on"]["http_sat_rps"]["ratio"], 0.5);
        assert_eq!(doc["summary"]["on"]["total_us_per_req"]["median"], 1.5);
        let b = budgets(&doc);
        let verdict = |name: &str| {
            b.as_array()
                .into_iter()
                .flatten()
                .find(|x| x["budget"].as_str().is_some_and(|s| s.starts_with(name)))
                .map(|x| x["verdict"].clone())
        };
        assert_eq!(verdict("Go HTTP saturated ≥ 0.90"), Some(json!("missed")));
        assert_eq!(verdict("TCP-only"), Some(json!("met")));
        assert_eq!(verdict("≤ 2 µs"), Some(json!("met")));
        assert_eq!(verdict("0 lost"), Some(json!("not measured")));
        assert_eq!(verdict("RSS"), Some(json!("met")));
        // Rendering works from the document alone (as `--report` does).
        let text = render(&doc, true);
        assert!(text.contains("| Go HTTP saturated (req/s) |"), "{text}");
    }
}

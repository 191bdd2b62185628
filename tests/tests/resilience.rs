//! The agent under churn, overload and restarts.
//!
//! - Keys of exited owners are deleted from the kernel maps while events are still charged to
//!   them: the counts stay exact (`counts_stay_exact_while_keys_expire`).
//! - Shutdown drains: requests served just before it are counted, records included
//!   (`shutdown_counts_what_is_in_flight`).
//! - Overload at 3× the HTTP event budget: sampling engages, counts stay exact, verdicts are
//!   never unhealthy, RSS stays bounded, the API answers (`overload_samples_and_stays_exact`).
//! - A full ring buffer: failed reservations counted, counts exact, the verdict unknown,
//!   never unhealthy (`full_ring_is_counted_and_unknown_never_unhealthy`).
//! - kill -9 under load leaves nothing attached, a restart attaches again, SIGTERM exits 0
//!   and detaches (`kill_9_then_restart_then_sigterm`, which prints the restart's phases).
//! - Go servers under keep-alive load through `SOAK_CYCLES` attach/detach cycles of the Go
//!   uprobes, their files deleted or replaced, short-lived servers killed mid-request: every
//!   answer correct, no target hurt, nothing left (`go_uprobes_never_hurt_their_targets`).
//! - Program arrays an observer made the kernel keep after a kill -9 are found at the next
//!   start and hold nothing (`stuck_program_arrays_are_found_and_hold_nothing`).
//!
//! The tests from `overload_samples_and_stays_exact` on run the collector binary
//! (`target/<profile>/collector`, built by `./x test`), so that it can be killed and its memory
//! measured apart from the test.

use std::{
    collections::BTreeSet,
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use collector::{app, config::Config, status};
use integration_tests::*;
use serde_json::Value;

/// The collector's harvest interval in these tests: the shortest the configuration allows,
/// so keys expire (and are deleted) as often as they can.
const HARVEST: Duration = Duration::from_millis(100);

fn config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: HARVEST,
        kubelet_cgroup_roots: vec![HARNESS_KUBELET_ROOT.into()],
        ..Config::default()
    };
    // TCP only: the HTTP socket parser is not what these tests are about, and it verifies slowly.
    c.http.socket = false;
    c
}

fn sample(metrics: &str, metric: &str, workload: &str) -> u64 {
    metric_sum(metrics, metric, &[("workload", workload)]).unwrap_or(0.0) as u64
}

/// Events keep arriving on keys whose owner has exited, so the collector deletes those keys
/// (idle, owner gone) and the kernel recreates them over and over, thousands of times, while
/// closes and resets are charged to them. Every close and every RST must be counted exactly
/// once: an event landing between the harvest's read of a key and its deletion was lost
/// before the harvest took each deleted key's final value atomically (BPF
/// `MAP_LOOKUP_AND_DELETE_ELEM`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_stay_exact_while_keys_expire() {
    require_root();
    let prefix = unique_prefix("kc");
    let churn = HostCgroup::create(&prefix, "churn").expect("churn cgroup");
    let server = HostCgroup::create(&prefix, "sink").expect("sink cgroup");
    let mut sink = server
        .spawn_with(&pod_traffic_bin(), &["sink", "127.0.0.1:0"], |c| {
            // Every connection ends with a reset: the sink's complaints are expected.
            c.stderr(Stdio::null());
        })
        .expect("sink");
    let addr = read_listening(&mut sink, Duration::from_secs(10)).expect("sink listening");

    let running = app::start(config()).await.expect("collector starts");
    // 300 owners × 12 sockets; a key is idle and deleted 2–3 harvests after its last event,
    // and its next close comes 250–450 ms later: around the deleting harvest.
    let (children, conns) = (300u64, 12u64);
    let bin = Path::new(env!("CARGO_BIN_EXE_key_churn"));
    let started = Instant::now();
    let out = churn
        .run(
            bin,
            &[
                &addr.to_string(),
                &children.to_string(),
                &conns.to_string(),
                "250",
                "450",
            ],
            Duration::from_secs(120),
        )
        .expect("key-churn");
    assert!(
        out.status.success(),
        "key-churn: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = parse_kv(&String::from_utf8_lossy(&out.stdout));
    let expected = children * conns;
    assert_eq!(summary.get("closed"), Some(&expected), "{summary:?}");
    eprintln!("{expected} closes in {:?}", started.elapsed());

    let workload = churn.workload();
    let addr = running.addr;
    let counted = wait_until_ok(
        Duration::from_secs(5),
        HARVEST,
        "every close and reset counted",
        || {
            let workload = workload.clone();
            async move {
                let m = tokio::task::spawn_blocking(move || scrape(addr))
                    .await
                    .expect("scrape");
                let got = (
                    sample(&m, "collector_tcp_connections_closed_total", &workload),
                    sample(&m, "collector_tcp_resets_sent_total", &workload),
                );
                if got == (expected, expected) {
                    Ok(got)
                } else {
                    Err(got)
                }
            }
        },
    )
    .await;
    eprintln!("closes, resets counted: {counted:?} of {expected}");
    running.shutdown().await;
    let _ = sink.kill();
    let _ = sink.wait();
}

// ---------------------------------------------------------------------------------------------
// Helpers: the Go test server, counted load, the collector binary, what is attached
// ---------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The Go server in its own cgroup on a loopback port, answering.
fn serve(cgroup: &HostCgroup) -> (Child, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = cgroup
        .spawn(&newest_go_server(), &["-listen", &addr.to_string()])
        .expect("Go server");
    // Go exits on SIGPIPE when its stdout is closed: drain it.
    if let Some(mut out) = child.stdout.take() {
        thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    }
    wait_until_ok_blocking(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "Go server up",
        || TcpStream::connect(addr).map(drop),
    );
    (child, addr)
}

/// Client threads, one request per connection, counting the 200s they got.
struct CountedLoad {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl CountedLoad {
    fn start(addr: SocketAddr, threads: usize, pause: Duration) -> Self {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match http_get_status(addr, "/ok") {
                            Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        if !pause.is_zero() {
                            thread::sleep(pause);
                        }
                    }
                })
            })
            .collect();
        Self {
            ok,
            failed,
            stop,
            threads,
        }
    }

    /// Stops the clients; (answered 200, failed).
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The collector binary next to the test's helper binaries (`./x test` builds it).
fn collector_bin() -> PathBuf {
    let bin = pod_traffic_bin().with_file_name("collector");
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p collector` (same profile as the tests)",
        bin.display()
    );
    bin
}

/// The collector binary, running, with its log in a file; killed when dropped.
struct Daemon {
    child: Child,
    api: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts it and waits until /readyz answers; returns it with how long that took.
    fn start(extra: &[&str]) -> (Daemon, Duration) {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "collector-resilience-{}-{port}.log",
            std::process::id()
        ));
        let file = fs::File::create(&log).expect("log file");
        let started = Instant::now();
        let child = Command::new(collector_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--kubelet-cgroup-root", HARNESS_KUBELET_ROOT])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("collector binary");
        let d = Daemon {
            child,
            api: format!("http://127.0.0.1:{port}"),
            log,
        };
        wait_until_ok_blocking(
            Duration::from_secs(120),
            Duration::from_millis(20),
            "the collector answers /readyz",
            || match status::get(&d.api, "/readyz") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}; log: {}", d.log_tail())),
            },
        );
        let took = started.elapsed();
        (d, took)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> String {
        status::get(&self.api, "/metrics").expect("metrics").1
    }

    /// The start-up phases the collector logged with "collector running" (`startup=…`).
    fn startup_phases(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .find(|l| l.contains("collector running"))
            .and_then(|l| l.split_once("startup="))
            .map(|(_, p)| {
                p.split(" addr=")
                    .next()
                    .unwrap_or(p)
                    .trim_matches('"')
                    .to_string()
            })
            .unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Resident set size (VmRSS) in KiB.
    fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Sends `signal` and waits for the exit status.
    fn signal_and_wait(mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child, which has not been reaped (we hold it).
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        let status = wait_until_blocking(
            Duration::from_secs(30),
            Duration::from_millis(10),
            "the collector exits",
            || self.child.try_wait().ok().flatten(),
        );
        let _ = fs::remove_file(&self.log);
        std::mem::forget(self);
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("collector log {}:\n{}", self.log.display(), self.log_tail());
        let _ = fs::remove_file(&self.log);
    }
}

/// BPF objects (`prog`, `link`, `map`) that process `pid` holds open: (kind, id, name), from
/// the `link_id`/`prog_id`/`map_id` lines of its fdinfo (bpftool lists pids only when built
/// with BPF iterators, and this one is not).
fn bpf_objects_of(pid: u32) -> BTreeSet<(String, u64, String)> {
    let mut out = BTreeSet::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in fs::read_dir(&dir).expect("fdinfo").flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (kind, id) = if let Some(id) = field("link_id:") {
            ("link", id)
        } else if let Some(id) = field("prog_id:") {
            ("prog", id)
        } else if let Some(id) = field("map_id:") {
            ("map", id)
        } else {
            continue;
        };
        out.insert((kind.to_string(), id, String::new()));
    }
    out
}

/// Ids of every live BPF object of `kind`, walked with `BPF_{PROG,MAP,LINK}_GET_NEXT_ID`,
/// which opens nothing. Opening a map by id (what `bpftool map show` does for every map) while
/// its last user reference drops can leak a program array in the kernel (measured on 6.18:
/// 3 leaks in 3 kill -9s with `bpftool map show id` running against the socket parser's
/// arrays, none in 3 without), so the observer must not take references itself.
fn bpf_ids(kind: &str) -> BTreeSet<u64> {
    #[repr(C)]
    struct NextId {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let cmd: libc::c_long = match kind {
        "prog" => 11, // BPF_PROG_GET_NEXT_ID
        "map" => 12,  // BPF_MAP_GET_NEXT_ID
        "link" => 31, // BPF_LINK_GET_NEXT_ID
        other => panic!("no id walk for {other}"),
    };
    let mut ids = BTreeSet::new();
    let mut attr = NextId {
        start_id: 0,
        next_id: 0,
        open_flags: 0,
    };
    loop {
        // SAFETY: a zero-padded bpf_attr prefix for the GET_NEXT_ID commands, of its size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                std::ptr::from_mut(&mut attr),
                size_of::<NextId>(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{kind} id walk: {e}");
            return ids;
        }
        ids.insert(u64::from(attr.next_id));
        attr.start_id = attr.next_id;
    }
}

/// Program ids attached at the root of the cgroup2 hierarchy (any attach type).
fn cgroup_root_progs() -> BTreeSet<u64> {
    let o = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup2_mount())
        .output()
        .expect("bpftool cgroup show");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

/// Lines of the tracefs uprobe_events file (uprobes created through tracefs), if any.
fn uprobe_events() -> BTreeSet<String> {
    [
        "/sys/kernel/tracing/uprobe_events",
        "/sys/kernel/debug/tracing/uprobe_events",
    ]
    .iter()
    .find_map(|p| fs::read_to_string(p).ok())
    .unwrap_or_default()
    .lines()
    .map(str::to_string)
    .collect()
}

/// What is left of `ours` (loaded, attached at the cgroup2 root) and new uprobe events, once
/// the kernel has had up to 10 s to release them; empty when nothing is left. Ids are polled
/// without opening anything (see [`bpf_ids`]); bpftool looks only once they are gone, or
/// to describe what is left.
fn left_after(
    ours: &BTreeSet<(String, u64, String)>,
    uprobes_before: &BTreeSet<String>,
) -> Vec<String> {
    let live = || -> Vec<(String, u64)> {
        let mut left = Vec::new();
        for kind in ["prog", "link", "map"] {
            let ids = bpf_ids(kind);
            left.extend(
                ours.iter()
                    .filter(|(k, id, _)| k == kind && ids.contains(id))
                    .map(|(k, id, _)| (k.clone(), *id)),
            );
        }
        left
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut still = live();
    while !still.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        still = live();
    }
    let mut left: Vec<String> = still.iter().map(|(k, id)| bpftool_line(k, *id)).collect();
    let at_root = cgroup_root_progs();
    left.extend(
        ours.iter()
            .filter(|(k, id, _)| k == "prog" && at_root.contains(id))
            .map(|(_, id, _)| format!("attached at the cgroup2 root: prog {id}")),
    );
    left.extend(
        uprobe_events()
            .difference(uprobes_before)
            .map(|l| format!("uprobe_events: {l}")),
    );
    left
}

/// `bpftool <kind> show id <id>`, first line, for messages.
fn bpftool_line(kind: &str, id: u64) -> String {
    let o = Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&o.stdout);
    format!("{kind} {}", text.lines().next().unwrap_or("").trim())
}

/// Sum of `collector_http_requests_total` (exact kernel counts, every outcome) of `workload`.
fn requests_counted(metrics: &str, workload: &str) -> u64 {
    sample(metrics, "collector_http_requests_total", workload)
}

/// The metrics once the workload's `ok` requests are all counted and each has its record or is
/// charged as unrecorded. Waited for both: records reach the aggregator on the ring reader's
/// timer, apart from the counters' harvest, so one scrape can hold a request counted whose
/// record is still on its way.
fn counted_and_recorded(d: &Daemon, workload: &str, ok: u64) -> String {
    wait_until_ok_blocking(
        Duration::from_secs(5),
        Duration::from_millis(100),
        "every request counted, recorded or charged",
        || {
            let m = d.metrics();
            let counted = requests_counted(&m, workload);
            let records = sample(&m, "http_server_request_duration_seconds_count", workload);
            let unrecorded = sample(&m, "collector_http_requests_unrecorded_total", workload);
            if counted == ok && records + unrecorded == ok {
                Ok(m)
            } else {
                Err(format!(
                    "counted {counted}/{ok}, records {records} + unrecorded {unrecorded}"
                ))
            }
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Shutdown, overload, kill -9 and restart
// ---------------------------------------------------------------------------------------------

/// Requests answered just before shutdown are counted, exact counts and records alike: the
/// harvest interval is a minute, so only the harvest shutdown runs can have seen them, and
/// the records are still in the ring buffer (the reader drains it on its own every 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_counts_what_is_in_flight() {
    require_root();
    let prefix = unique_prefix("sd");
    let cg = HostCgroup::create(&prefix, "server").expect("cgroup");
    let (mut server, addr) = serve(&cg);
    let mut c = config();
    c.http.socket = true;
    c.harvest_interval = Duration::from_secs(60);
    let running = app::start(c).await.expect("collector starts");
    let metrics = running.metrics.clone();
    // The interval's first tick harvests at once; let it pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = 200u64;
    let ok = tokio::task::spawn_blocking(move || {
        (0..n)
            .filter(|_| http_get_status(addr, "/ok") == Some(200))
            .count() as u64
    })
    .await
    .expect("requests");
    assert_eq!(ok, n, "every request answered");
    running.shutdown().await;
    let text = metrics.render();
    let w = cg.workload();
    assert_eq!(requests_counted(&text, &w), n, "exact counts:\n{text}");
    assert_eq!(
        sample(&text, "http_server_request_duration_seconds_count", &w),
        n,
        "one record per request (sampling is off under the budget):\n{text}"
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// Requests arrive at 3× `--http-event-budget`: the collector records a sample of them (the
/// rest counted as unrecorded), counts every request exactly, never calls the workload unhealthy (it is
/// not: every answer is a 200), keeps its RSS bounded and answers its API. Prints the
/// figures for BENCHMARKS.md.
#[test]
fn overload_samples_and_stays_exact() {
    require_root();
    let prefix = unique_prefix("ov");
    let cg = HostCgroup::create(&prefix, "server").expect("cgroup");
    let (mut server, addr) = serve(&cg);
    let budget = 100u64;
    let (d, ready_after) = Daemon::start(&[
        "--http-event-budget",
        &budget.to_string(),
        "--harvest-interval",
        "200ms",
        "--verdict-bucket",
        "1s",
        "--verdict-buckets",
        "5",
    ]);
    eprintln!("collector ready after {ready_after:?}");
    let rss_idle = d.rss_kib();
    let w = cg.workload();
    // Measure the client's rate first, then aim at 3× the budget.
    let load = CountedLoad::start(addr, 4, Duration::from_millis(8));
    let started = Instant::now();
    let mut rss_max = rss_idle;
    let mut worst_api = Duration::ZERO;
    let mut sample_every_max = 1u64;
    let mut states = BTreeSet::new();
    while started.elapsed() < Duration::from_secs(15) {
        let t = Instant::now();
        let m = d.metrics();
        worst_api = worst_api.max(t.elapsed());
        sample_every_max = sample_every_max
            .max(metric_sum(&m, "collector_http_sample_every", &[]).unwrap_or(1.0) as u64);
        rss_max = rss_max.max(d.rss_kib());
        let (code, body) =
            status::get(&d.api, &format!("/v1/workload?kind=cgroup&name={w}")).unwrap_or_default();
        if code == 200
            && let Ok(v) = serde_json::from_str::<Value>(&body)
        {
            states.insert(v["state"].as_str().unwrap_or("").to_string());
        }
        thread::sleep(Duration::from_millis(250));
    }
    let (ok, failed) = load.stop();
    let rate = ok as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "overload: {ok} requests ({rate:.0}/s, {:.1}× the budget of {budget}/s), {failed} failed",
        rate / budget as f64
    );
    assert!(
        rate >= 3.0 * budget as f64,
        "the load must reach 3× the budget: {rate:.0}/s"
    );
    let m = counted_and_recorded(&d, &w, ok);
    let counted = requests_counted(&m, &w);
    let records = sample(&m, "http_server_request_duration_seconds_count", &w);
    let lost = sample(&m, "collector_http_requests_lost_total", &w);
    let drops: u64 = m
        .lines()
        .filter(|l| l.starts_with("collector_kernel_drops_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64;
    eprintln!(
        "overload: counted {counted}, records {records} (collector_http_sample_every at most \
         {sample_every_max}), lost {lost}, kernel drops {drops}; RSS idle {rss_idle} KiB, max {rss_max} KiB; \
         slowest /metrics {worst_api:?}; verdicts seen {states:?}"
    );
    // Sampling engaged: the socket parser keeps records within the budget in the kernel and
    // counts the rest as unrecorded; every request is in the exact counts either way.
    let unrecorded = sample(&m, "collector_http_requests_unrecorded_total", &w);
    assert!(
        records < counted && records + unrecorded == counted,
        "records {records} + unrecorded {unrecorded} = counted {counted}, a sample"
    );
    assert!(
        !states.contains("unhealthy"),
        "never unhealthy for a workload that only answered 200: {states:?}"
    );
    if lost > 0 {
        assert!(
            !states.contains("healthy"),
            "lost requests make the workload unknown, not healthy: {states:?}"
        );
    }
    // Bounded: the collector's footprint does not grow with the number of requests served
    // (thousands here); 64 MiB over idle would mean per-request state.
    assert!(
        rss_max < rss_idle + 64 * 1024,
        "RSS grew from {rss_idle} to {rss_max} KiB under load"
    );
    drop(d);
    let _ = server.kill();
    let _ = server.wait();
}

/// kill -9 under load: the kernel drops everything the collector held (programs, links, maps,
/// the socket parser's cgroup attachments, uprobes), a restart attaches again and counts,
/// SIGTERM exits 0 and leaves nothing either. Prints how long the restart took.
#[test]
fn kill_9_then_restart_then_sigterm() {
    require_root();
    let prefix = unique_prefix("k9");
    let cg = HostCgroup::create(&prefix, "server").expect("cgroup");
    let (mut server, addr) = serve(&cg);
    let uprobes_before = uprobe_events();
    let (d, first_start) = Daemon::start(&["--harvest-interval", "200ms"]);
    let ours = bpf_objects_of(d.pid());
    assert!(
        ours.iter().any(|(k, _, _)| k == "prog") && ours.iter().any(|(k, _, _)| k == "map"),
        "the collector holds its programs and maps: {ours:?}"
    );
    let at_root = cgroup_root_progs();
    let parser_at_root = ours
        .iter()
        .filter(|(k, id, _)| k == "prog" && at_root.contains(id))
        .count();
    eprintln!(
        "first start {first_start:?}: {} objects, {parser_at_root} programs at the cgroup2 root",
        ours.len()
    );
    let load = CountedLoad::start(addr, 2, Duration::from_millis(5));
    let w = cg.workload();
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "traffic counted before the kill",
        || match requests_counted(&d.metrics(), &w) {
            0 => Err(0),
            n => Ok(n),
        },
    );
    let status = d.signal_and_wait(libc::SIGKILL);
    eprintln!("killed: {status}");
    let after_kill = left_after(&ours, &uprobes_before);

    // Restart under the same load.
    let (d, restart) = Daemon::start(&["--harvest-interval", "200ms"]);
    let counting = Instant::now();
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "traffic counted after the restart",
        || match requests_counted(&d.metrics(), &w) {
            0 => Err(0),
            n => Ok(n),
        },
    );
    eprintln!(
        "restart under load: ready after {restart:?} (collector's phases: {}), first requests \
         counted {:?} later",
        d.startup_phases(),
        counting.elapsed()
    );
    let ours = bpf_objects_of(d.pid());
    let status = d.signal_and_wait(libc::SIGTERM);
    let after_term = left_after(&ours, &uprobes_before);
    let (ok, _) = load.stop();
    eprintln!("{ok} requests served during the test");
    let _ = server.kill();
    let _ = server.wait();
    assert!(status.success(), "SIGTERM: clean exit, got {status}");
    assert!(
        after_kill.is_empty() && after_term.is_empty(),
        "left behind after kill -9: {after_kill:#?}\nafter SIGTERM: {after_term:#?}"
    );
}

/// Records beyond what the ring buffer holds (4 KiB, every request sampled): the kernel counts
/// each failed reservation, every request stays in the exact counts, the records that did not
/// fit are charged to the workload as unrecorded — a sample, as under sampling — and the
/// verdict, judged on the exact counts, stays healthy: a record the ring had no room for is
/// not a loss of signal (it made every workload of the node unknown before).
#[test]
fn full_ring_costs_records_not_verdicts() {
    require_root();
    let prefix = unique_prefix("rf");
    let cg = HostCgroup::create(&prefix, "server").expect("cgroup");
    let (mut server, addr) = serve(&cg);
    let (d, _) = Daemon::start(&[
        "--ring-buffer-bytes",
        "4096",
        "--harvest-interval",
        "200ms",
        "--verdict-bucket",
        "1s",
        "--verdict-buckets",
        "5",
    ]);
    let w = cg.workload();
    let load = CountedLoad::start(addr, 4, Duration::ZERO);
    let started = Instant::now();
    let mut states = BTreeSet::new();
    let mut reasons = BTreeSet::new();
    while started.elapsed() < Duration::from_secs(10) {
        let (code, body) =
            status::get(&d.api, &format!("/v1/workload?kind=cgroup&name={w}")).unwrap_or_default();
        if code == 200
            && let Ok(v) = serde_json::from_str::<Value>(&body)
        {
            states.insert(v["state"].as_str().unwrap_or("").to_string());
            for r in v["reasons"].as_array().into_iter().flatten() {
                reasons.insert(r["code"].as_str().unwrap_or("").to_string());
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    let (ok, failed) = load.stop();
    let m = counted_and_recorded(&d, &w, ok);
    let counted = requests_counted(&m, &w);
    let records = sample(&m, "http_server_request_duration_seconds_count", &w);
    let unrecorded = sample(&m, "collector_http_requests_unrecorded_total", &w);
    let ring_drops = metric_sum(
        &m,
        "collector_kernel_drops_total",
        &[("reason", "http_record_reserve_failed")],
    )
    .unwrap_or(0.0) as u64;
    eprintln!(
        "full ring: {ok} requests ({failed} failed), counted {counted}, records {records}, \
         unrecorded {unrecorded}, ring reservations failed {ring_drops}; verdicts {states:?}, \
         reasons {reasons:?}"
    );
    assert!(ring_drops > 0, "the 4 KiB ring overflowed:\n{m}");
    assert_eq!(
        records + unrecorded,
        counted,
        "every request recorded or charged"
    );
    assert!(
        !states.contains("unhealthy"),
        "never unhealthy for a workload that only answered 200: {states:?}"
    );
    assert!(
        !reasons.contains("events_lost"),
        "records the ring had no room for are no loss of signal: {states:?} {reasons:?}"
    );
    assert!(states.contains("healthy"), "{states:?}");
    drop(d);
    let _ = server.kill();
    let _ = server.wait();
}

// ---------------------------------------------------------------------------------------------
// Target safety: Go servers under load while their uprobes come and go
// ---------------------------------------------------------------------------------------------

/// Attach/detach cycles of [`go_uprobes_never_hurt_their_targets`]: `SOAK_CYCLES` (the CI run
/// takes the default; the recorded run in BENCHMARKS.md used 1,000).
fn soak_cycles() -> usize {
    std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// A Go server run from a file of its own (so the test can delete or replace it), its stderr
/// kept: a Go runtime killed by a stray breakpoint says "SIGTRAP: trace trap" there.
struct GoProc {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl GoProc {
    fn spawn(file: &Path) -> GoProc {
        // A file just written can be "busy" for a moment: another thread's fork may hold
        // the copy's write descriptor until its exec closes it.
        let mut tries = 0;
        let mut child = loop {
            match Command::new(file)
                .args(["-listen", "127.0.0.1:0"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
            {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("{}: {e}", file.display()),
            }
        };
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let kept = stderr.clone();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err.expect("stderr piped"), &mut text);
            *kept.lock().unwrap_or_else(|e| e.into_inner()) = text;
        });
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead as _;
            let mut lines = std::io::BufReader::new(out.expect("stdout piped")).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            // Go exits on SIGPIPE when its stdout is closed: drain it.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{} printed no address", file.display()));
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        GoProc {
            child,
            addr,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What its stderr says about dying of a signal or a corrupted instruction, if anything.
    fn signal_death(&self) -> Option<String> {
        let text = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        [
            "SIGTRAP",
            "SIGILL",
            "SIGSEGV",
            "SIGBUS",
            "unexpected signal",
            "fatal error",
        ]
        .iter()
        .any(|m| text.contains(m))
        .then_some(text)
    }
}

impl Drop for GoProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes of `pid`'s executable mappings of its own file that differ from the file: the
/// breakpoints (INT3) uprobes wrote into its text, and nothing else unless text is corrupted.
fn text_differences(pid: u32) -> usize {
    use std::os::unix::fs::FileExt as _;
    let exe = fs::File::open(format!("/proc/{pid}/exe")).expect("exe");
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let exe_path = fs::read_link(format!("/proc/{pid}/exe")).expect("exe link");
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut differ = 0;
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || Path::new(f[5..].join(" ").as_str()) != exe_path {
            continue;
        }
        let (start, end) = f[0].split_once('-').expect("range");
        let start = u64::from_str_radix(start, 16).expect("start");
        let end = u64::from_str_radix(end, 16).expect("end");
        let offset = u64::from_str_radix(f[2], 16).expect("offset");
        let len = usize::try_from(end - start).expect("len");
        let (mut in_mem, mut in_file) = (vec![0u8; len], vec![0u8; len]);
        mem.read_exact_at(&mut in_mem, start).expect("read text");
        // The mapping may run past the end of the file (zero-filled).
        let n = exe.read_at(&mut in_file, offset).expect("read file");
        differ += in_mem[..n]
            .iter()
            .zip(&in_file[..n])
            .filter(|(a, b)| a != b)
            .count();
    }
    differ
}

/// Tallies of the soak's clients.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// No response, or a broken connection, from a server that was not being stopped.
    failed: AtomicU64,
    /// A response that is not the one asked for.
    corrupted: AtomicU64,
    /// Requests cut by their server's exit (churn servers only): expected.
    cut: AtomicU64,
    first_errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn note(&self, what: &AtomicU64, why: String) {
        what.fetch_add(1, Ordering::Relaxed);
        let mut e = self.first_errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() < 10 {
            e.push(why);
        }
    }
}

/// One request on a keep-alive connection whose answer is known: `GET /items/<n>` answers
/// "item <n>\n", `POST /echo` with an n-byte body answers "<n>\n".
fn checked_request(
    conn: &mut std::io::BufReader<TcpStream>,
    n: u64,
) -> Result<Result<(), String>, std::io::Error> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let (request, want) = if n.is_multiple_of(4) {
        let len = (n % 3000) as usize;
        let body = vec![b'x'; len];
        let mut r = format!("POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: {len}\r\n\r\n")
            .into_bytes();
        r.extend_from_slice(&body);
        (r, format!("{len}\n"))
    } else {
        (
            format!("GET /items/{n} HTTP/1.1\r\nHost: soak\r\n\r\n").into_bytes(),
            format!("item {n}\n"),
        )
    };
    conn.get_mut().write_all(&request)?;
    let mut status = String::new();
    if conn.read_line(&mut status)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut len = None;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            len = value.trim().parse::<usize>().ok();
        }
    }
    let Some(len) = len.filter(|l| *l <= 1 << 16) else {
        return Ok(Err(format!(
            "{}: no usable Content-Length",
            status.trim_end()
        )));
    };
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    if !status.starts_with("HTTP/1.1 200 ") || body != want.as_bytes() {
        return Ok(Err(format!(
            "asked for {want:?}, got {:?} {:?}",
            status.trim_end(),
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(Ok(()))
}

/// Keep-alive clients of a server that must answer every request correctly.
fn keep_alive_load(
    addr: SocketAddr,
    clients: usize,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (tally, stop) = (tally.clone(), stop.clone());
            thread::spawn(move || {
                let mut n = c as u64 * 1_000_000_000;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
                        tally.note(&tally.failed, format!("{addr}: connect"));
                        thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let mut conn = std::io::BufReader::new(s);
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        match checked_request(&mut conn, n) {
                            Ok(Ok(())) => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(why)) => tally.note(&tally.corrupted, format!("{addr}: {why}")),
                            Err(e) => {
                                tally.note(&tally.failed, format!("{addr}: request {n}: {e}"));
                                break;
                            }
                        }
                        thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        })
        .collect()
}

/// How a churn server ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Kill,
    Term,
}

/// Short-lived Go servers, one after the other, each from a file of its own that is deleted
/// or replaced while it runs, each ended by a signal while requests are in flight (`/slow`).
/// Returns how many ran; every exit must be the signal sent (the Go runtime dies of SIGTERM
/// by default) and every answer it gave correct.
fn churn(
    dir: &Path,
    builds: &[PathBuf],
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    deaths: Arc<std::sync::Mutex<Vec<String>>>,
) -> thread::JoinHandle<u64> {
    let (dir, builds) = (dir.to_path_buf(), builds.to_vec());
    thread::spawn(move || {
        let mut ran = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let build = &builds[ran as usize % builds.len()];
            let file = dir.join(format!("churn-{}", ran % 4));
            let staged = dir.join(format!("churn-{}.new", ran % 4));
            // Replaces the previous process's file while that file may still be attached.
            if let Err(e) = fs::copy(build, &staged).and_then(|_| fs::rename(&staged, &file)) {
                // Not the collector's doing (a full disk ended the first 1,000-cycle run
                // here): counted, and the soak's own checks still run.
                tally.note(
                    &tally.failed,
                    format!("churn: placing {}: {e}", file.display()),
                );
                thread::sleep(Duration::from_secs(1));
                continue;
            }
            let mut p = GoProc::spawn(&file);
            if ran.is_multiple_of(2) {
                // Runs on from an unlinked file.
                let _ = fs::remove_file(&file);
            }
            let conn = TcpStream::connect(p.addr).expect("connect churn server");
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut conn = std::io::BufReader::new(conn);
            for n in 0..20 {
                match checked_request(&mut conn, ran * 1000 + n) {
                    Ok(Ok(())) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(why)) => tally.note(&tally.corrupted, format!("churn: {why}")),
                    Err(e) => tally.note(&tally.failed, format!("churn before its end: {e}")),
                }
            }
            // Requests in flight when the process goes: connected and sent here, before the
            // signal, so each is in this process's queue. Sent from their own threads they
            // could connect after the kill, to the next churn server on the reused port, and
            // read its answer as this one's (3 of 32,715 in a 1,000-cycle run at load 12).
            let addr = p.addr;
            use std::io::{Read as _, Write as _};
            let slow: Vec<_> = (0..3)
                .map(|_| {
                    let sent = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(5)))?;
                            s.write_all(
                                b"GET /slow?ms=2000 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
                            )?;
                            Ok(s)
                        });
                    thread::spawn(move || {
                        let mut s = sent.ok()?;
                        let mut resp = Vec::new();
                        let _ = s.read_to_end(&mut resp);
                        String::from_utf8_lossy(&resp)
                            .split_whitespace()
                            .nth(1)?
                            .parse::<u16>()
                            .ok()
                    })
                })
                .collect();
            thread::sleep(Duration::from_millis(150));
            let ending = if ran.is_multiple_of(3) {
                Ending::Term
            } else {
                Ending::Kill
            };
            let signal = match ending {
                Ending::Kill => libc::SIGKILL,
                Ending::Term => libc::SIGTERM,
            };
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(p.pid() as libc::pid_t, signal) };
            let status = p.child.wait().expect("wait churn server");
            {
                use std::os::unix::process::ExitStatusExt as _;
                if status.signal() != Some(signal) {
                    deaths
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("churn server {ending:?}: exit {status}"));
                }
            }
            for s in slow {
                match s.join().ok().flatten() {
                    None => {
                        tally.cut.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(code) => tally.note(
                        &tally.corrupted,
                        format!("churn: /slow answered {code} by a process killed before"),
                    ),
                }
            }
            // Give the reader threads a moment to collect stderr.
            thread::sleep(Duration::from_millis(20));
            if let Some(text) = p.signal_death() {
                deaths
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(format!("churn server: {text}"));
            }
            ran += 1;
        }
        ran
    })
}

/// The state letter of process `pid` (`Z` once it has exited and waits to be reaped).
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The pids `/v1/go-http` lists as instrumented.
fn instrumented_pids(api: &str) -> BTreeSet<u64> {
    let Ok((200, body)) = status::get(api, "/v1/go-http") else {
        return BTreeSet::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        // Skipped servers are listed too, `instrumented: false`.
        .filter(|f| f["instrumented"] == true)
        .flat_map(|f| f["pids"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_u64())
        .collect()
}

/// Go servers under keep-alive load while their uprobes are attached and detached
/// `SOAK_CYCLES` times (a collector started with `--go-http-uprobes all`, then stopped: SIGTERM
/// and kill -9 in turn), beside short-lived servers whose files are deleted or replaced while
/// they run and which are killed with requests in flight.
///
/// What each assertion catches:
/// - every answer correct, none missing (targets): a breakpoint left in or written at a wrong
///   offset (not an instruction boundary) corrupts the target, which then answers wrongly, stops
///   answering or dies; so does an attachment through a replaced file's path (another build's
///   offsets in it: the targets include a process of such a replaced path).
/// - targets alive, no server dead of a signal we did not send: the same bugs, when they kill.
/// - the collector exits 0 on SIGTERM every time and never panics: crashes in discovery,
///   attach or detach (a panic in the discovery thread would show in the log).
/// - text of the targets equal to their files after the last cycle, but not while attached:
///   breakpoints left behind (a link kept alive) are seen, and the comparison can see them.
/// - none of the collectors' programs, links or maps, nor uprobe events, left: a detach path
///   that leaks.
#[test]
fn go_uprobes_never_hurt_their_targets() {
    require_root();
    let cycles = soak_cycles();
    let dir = std::env::temp_dir().join(format!("collector-soak-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("soak dir");
    // Two different Go builds that have /items/{id} (Go ≥ 1.22): replacing a file by the
    // other gives a path whose binary differs from what its running process was started from.
    let builds: Vec<PathBuf> = {
        let mut b: Vec<_> = go_fixtures()
            .into_iter()
            .filter(|(v, variant, _)| variant == "default" && !v.starts_with("1.21."))
            .map(|(_, _, p)| p)
            .collect();
        b.sort();
        b.dedup();
        let newest = b.pop().expect("a Go ≥ 1.22 fixture");
        let older = b.pop().expect("two Go ≥ 1.22 fixtures");
        vec![newest, older]
    };
    // Targets: one from a file deleted under it; one from a file then replaced by the other
    // build, and one started from that replacement.
    let place = |name: &str, build: &Path| {
        let f = dir.join(name);
        fs::copy(build, &f).expect("copy");
        f
    };
    let deleted = place("target-deleted", &builds[0]);
    let replaced = place("target-replaced", &builds[0]);
    let targets = {
        let a = GoProc::spawn(&deleted);
        fs::remove_file(&deleted).expect("delete");
        let b = GoProc::spawn(&replaced);
        let staged = place("target-replaced.new", &builds[1]);
        fs::rename(&staged, &replaced).expect("replace");
        let c = GoProc::spawn(&replaced);
        vec![a, b, c]
    };
    let target_pids: BTreeSet<u64> = targets.iter().map(|t| u64::from(t.pid())).collect();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for t in &targets {
        clients.extend(keep_alive_load(t.addr, 2, tally.clone(), stop.clone()));
    }
    let deaths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let churn_tally = Arc::new(Tally::default());
    let churner = churn(
        &dir,
        &builds,
        churn_tally.clone(),
        stop.clone(),
        deaths.clone(),
    );

    let uprobes_before = uprobe_events();
    let mut ours = BTreeSet::new();
    let mut crashes = Vec::new();
    let mut breakpoints_seen = 0;
    let (mut attach_times, mut discovery_attaches) = (Vec::new(), 0usize);
    let started = Instant::now();
    for cycle in 0..cycles {
        let (d, _) = Daemon::start(&[
            "--go-http-uprobes",
            "all",
            "--no-http-socket",
            "--log",
            "collector=info",
        ]);
        let t = Instant::now();
        wait_until_ok_blocking(
            Duration::from_secs(60),
            Duration::from_millis(10),
            "every target instrumented",
            || {
                // A target killed by what was attached to it is never listed: say so at once.
                for t in &targets {
                    if process_state(t.pid()) == Some('Z') {
                        thread::sleep(Duration::from_millis(100));
                        panic!(
                            "cycle {cycle}: target {} died; its stderr: {}",
                            t.pid(),
                            t.stderr.lock().unwrap_or_else(|e| e.into_inner())
                        );
                    }
                }
                let pids = instrumented_pids(&d.api);
                if target_pids.is_subset(&pids) {
                    Ok(())
                } else {
                    Err(format!("{pids:?}; log: {}", d.log_tail()))
                }
            },
        );
        attach_times.push(t.elapsed());
        if cycle == 0 {
            breakpoints_seen = targets.iter().map(|t| text_differences(t.pid())).sum();
        }
        ours.extend(bpf_objects_of(d.pid()));
        let log = fs::read_to_string(&d.log).unwrap_or_default();
        discovery_attaches += log.matches("Go net/http server instrumented").count();
        if log.contains("panicked") {
            crashes.push(format!("cycle {cycle}: panic: {}", d.log_tail()));
        }
        let status = if cycle.is_multiple_of(2) {
            let s = d.signal_and_wait(libc::SIGTERM);
            (!s.success()).then(|| format!("cycle {cycle}: SIGTERM exit {s}"))
        } else {
            use std::os::unix::process::ExitStatusExt as _;
            let s = d.signal_and_wait(libc::SIGKILL);
            (s.signal() != Some(libc::SIGKILL)).then(|| format!("cycle {cycle}: exit {s}"))
        };
        crashes.extend(status);
        if (cycle + 1).is_multiple_of(50) {
            eprintln!(
                "{} cycles in {:?}: {} answers, {} failed, {} corrupted; collector crashes {}",
                cycle + 1,
                started.elapsed(),
                tally.ok.load(Ordering::Relaxed),
                tally.failed.load(Ordering::Relaxed),
                tally.corrupted.load(Ordering::Relaxed),
                crashes.len()
            );
        }
    }
    let soak_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let churned = churner.join().expect("churn thread");
    let left = left_after(&ours, &uprobes_before);
    let text_after: Vec<usize> = targets.iter().map(|t| text_differences(t.pid())).collect();
    let mut targets = targets;
    let alive: Vec<bool> = targets
        .iter_mut()
        .map(|t| matches!(t.child.try_wait(), Ok(None)))
        .collect();
    let target_deaths: Vec<String> = targets.iter().filter_map(GoProc::signal_death).collect();
    attach_times.sort();
    let load = |t: &Tally| {
        (
            t.ok.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed),
            t.corrupted.load(Ordering::Relaxed),
            t.cut.load(Ordering::Relaxed),
        )
    };
    let (ok, failed, corrupted, _) = load(&tally);
    let (churn_ok, churn_failed, churn_corrupted, churn_cut) = load(&churn_tally);
    eprintln!(
        "soak: {cycles} attach/detach cycles of {} targets in {soak_time:?} (attached after \
         min {:?}, median {:?}, max {:?}); {discovery_attaches} discovery attaches; targets: \
         {ok} answers, {failed} failed, {corrupted} corrupted; {churned} churn servers: \
         {churn_ok} answers, {churn_failed} failed, {churn_corrupted} corrupted, {churn_cut} \
         cut by their exit; breakpoints seen while attached: {breakpoints_seen} bytes, after: \
         {text_after:?}",
        targets.len(),
        attach_times.first().copied().unwrap_or_default(),
        attach_times
            .get(attach_times.len() / 2)
            .copied()
            .unwrap_or_default(),
        attach_times.last().copied().unwrap_or_default(),
    );
    let errors = |t: &Tally| {
        t.first_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    };
    let _ = fs::remove_dir_all(&dir);
    assert!(crashes.is_empty(), "collector crashes: {crashes:#?}");
    assert_eq!(
        (failed, corrupted),
        (0, 0),
        "targets: every answer correct and none missing: {:#?}",
        errors(&tally)
    );
    assert!(ok > 0, "the targets answered");
    assert_eq!(
        (churn_failed, churn_corrupted),
        (0, 0),
        "churn servers: {:#?}",
        errors(&churn_tally)
    );
    assert!(churned > 0, "churn servers ran");
    assert_eq!(alive, vec![true; alive.len()], "targets alive");
    let deaths = deaths.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        target_deaths.is_empty() && deaths.is_empty(),
        "died of a signal we did not send: {target_deaths:#?} {deaths:#?}"
    );
    assert!(
        breakpoints_seen > 0,
        "the text comparison sees breakpoints while attached"
    );
    assert_eq!(
        text_after,
        vec![0; text_after.len()],
        "targets' text equal to their files after the last detach"
    );
    assert!(left.is_empty(), "left behind: {left:#?}");
}

// ---------------------------------------------------------------------------------------------
// The observer's program-array leak
// ---------------------------------------------------------------------------------------------

/// Names of the socket parser's program arrays.
const WIRE_ARRAYS: [&str; 2] = [
    collector_common::maps::WIRE_PROGS_RX,
    collector_common::maps::WIRE_PROGS_TX,
];

/// An observer opening the socket parser's program arrays by id (as `bpftool map show` does)
/// while their collector is killed makes the kernel keep them, for good (see
/// `http_wire::stale_program_arrays`): the next collector finds them (never a live collector's),
/// and they are empty, so no program stays loaded with them.
///
/// Catches: a start-up scan that misses a stuck array (or counts a live collector's), and a
/// leak that keeps the parser's programs loaded (an array not emptied).
#[test]
fn stuck_program_arrays_are_found_and_hold_nothing() {
    use collector::probes::http_wire::stale_program_arrays;
    require_root();
    let before: BTreeSet<u32> = stale_program_arrays().into_iter().collect();
    let mut stuck = BTreeSet::new();
    for attempt in 1..=3 {
        let (d, _) = Daemon::start(&[]);
        let arrays: Vec<u32> = bpf_objects_of(d.pid())
            .into_iter()
            .filter(|(k, ..)| k == "map")
            .filter_map(|(_, id, _)| u32::try_from(id).ok())
            .filter(|id| {
                // Held by the live collector: opening them cannot race its last reference.
                aya::maps::MapInfo::from_id(*id)
                    .is_ok_and(|i| WIRE_ARRAYS.contains(&i.name_as_str().unwrap_or("")))
            })
            .collect();
        assert_eq!(
            arrays.len(),
            2,
            "the parser's two program arrays: {arrays:?}"
        );
        let found = stale_program_arrays();
        assert!(
            !arrays.iter().any(|id| found.contains(id)),
            "a live collector's arrays are not stuck: {arrays:?} in {found:?}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let observer = {
            let (stop, arrays) = (stop.clone(), arrays.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for id in &arrays {
                        let _ = aya::maps::MapInfo::from_id(*id);
                    }
                }
            })
        };
        thread::sleep(Duration::from_millis(200));
        let _ = d.signal_and_wait(libc::SIGKILL);
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let _ = observer.join();
        // Up to 10 s for the kernel to free what it frees.
        let deadline = Instant::now() + Duration::from_secs(10);
        let left = loop {
            let live = bpf_ids("map");
            let left: BTreeSet<u32> = arrays
                .iter()
                .copied()
                .filter(|id| live.contains(&u64::from(*id)))
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            thread::sleep(Duration::from_millis(100));
        };
        eprintln!(
            "attempt {attempt}: {} of 2 arrays stuck: {left:?}",
            left.len()
        );
        stuck.extend(left);
        if !stuck.is_empty() {
            break;
        }
    }
    assert!(
        !stuck.is_empty(),
        "the observer race did not leave an array in 3 kill -9s (fixed in this kernel? then \
         this test should assert that nothing is left)"
    );
    let found: BTreeSet<u32> = stale_program_arrays().into_iter().collect();
    eprintln!(
        "stuck before the test: {before:?}; found after: {found:?} (other collectors on the \
         host may leak meanwhile)"
    );
    assert!(
        stuck.is_subset(&found),
        "every stuck array found: {stuck:?} in {found:?}"
    );
    for id in &stuck {
        // Nobody holds it: reading it cannot race a last reference.
        let o = Command::new("bpftool")
            .args(["-j", "map", "dump", "id", &id.to_string()])
            .output()
            .expect("bpftool map dump");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        assert_eq!(
            v.as_array().map(Vec::len),
            Some(0),
            "array {id} is empty: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

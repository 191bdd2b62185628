//! Verdicts under the default settings (1 s × 30 buckets, no options), end to end: real Go
//! servers in pods, real traffic from a seeded noisy client, the collector's verdicts polled
//! through the API.
//!
//! - `stationary_noisy_traffic_never_leaves_healthy` (the soak): two pods under a stationary
//!   but noisy mix — a few % of 503s whose per-second rate wanders ±50 %, heavy-tailed
//!   durations (Pareto), Poisson arrivals with bursts of 3× the rate — must not leave healthy
//!   once healthy. `VERDICT_SOAK_SECONDS` sets the length (default 150 s, the CI run; the
//!   full 30 minutes is recorded in BENCHMARKS.md with its command).
//! - `fault_sequence_with_defaults`: 30 % errors at ≥ 20 req/s → unhealthy; errors end →
//!   healthy; 10 % egress packet loss → degraded or worse; loss ends → healthy. The times are
//!   printed (and recorded in BENCHMARKS.md); the test asserts the states, each within a
//!   generous deadline, not the timing targets.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use collector::{app, config::Config, status, verdict::VerdictConfig};
use integration_tests::*;
use serde_json::Value;

const PORT: u16 = 8080;
/// The soak's length without `VERDICT_SOAK_SECONDS`: what CI runs.
const DEFAULT_SOAK: Duration = Duration::from_secs(150);
/// Far beyond any timing target: the point at which a state that never comes is a failure.
const DEADLINE: Duration = Duration::from_secs(90);

/// SplitMix64: a seeded mix, the same requests in the same order on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the client saw: every request's status and duration.
#[derive(Default)]
struct Seen {
    requests: u64,
    /// 5xx answers.
    errors: u64,
    /// No answer at all (connect or read failed).
    failed: u64,
    micros: Vec<u32>,
}

impl Seen {
    fn quantile_ms(&self, q: f64) -> f64 {
        let mut v = self.micros.clone();
        v.sort_unstable();
        v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |us| f64::from(*us) / 1e3)
    }
}

/// Open-loop noisy traffic to one server: Poisson arrivals at `rps` (3× during bursts of 5 s,
/// about one a minute), each request `/err` with the second's error probability (the set
/// ratio × a uniform 0.5–1.5 drawn each second) or `/slow` with a Pareto duration (α 2.5
/// from 5 ms: median 7 ms, p99 31 ms, one in a million over 1 s), served by a pool of
/// workers so a slow answer does not hold the next arrival back.
struct Noisy {
    stop: Arc<AtomicBool>,
    /// Error ratio in millionths.
    error_ppm: Arc<AtomicU32>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<thread::JoinHandle<()>>,
}

const WORKERS: usize = 24;

impl Noisy {
    fn start(addr: SocketAddr, rps: f64, error: f64, seed: u64) -> Noisy {
        let stop = Arc::new(AtomicBool::new(false));
        let error_ppm = Arc::new(AtomicU32::new((error * 1e6) as u32));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, rx) = mpsc::channel::<String>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads: Vec<thread::JoinHandle<()>> = (0..WORKERS)
            .map(|_| {
                let (rx, seen) = (rx.clone(), seen.clone());
                thread::spawn(move || {
                    loop {
                        let path = match rx.lock().map(|r| r.recv()) {
                            Ok(Ok(p)) => p,
                            _ => return,
                        };
                        let t = Instant::now();
                        let status = http_get_status(addr, &path);
                        let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                        s.requests += 1;
                        match status {
                            Some(code) if code >= 500 => s.errors += 1,
                            Some(_) => {}
                            None => s.failed += 1,
                        }
                        s.micros.push(us);
                    }
                })
            })
            .collect();
        let (stop2, ppm) = (stop.clone(), error_ppm.clone());
        threads.push(thread::spawn(move || {
            let mut rng = Rng(seed);
            let start = Instant::now();
            let mut next = Duration::ZERO;
            let (mut second, mut second_error, mut burst_until) = (u64::MAX, 0.0, 0u64);
            while !stop2.load(Ordering::Relaxed) {
                let s = next.as_secs();
                if s != second {
                    second = s;
                    let base = f64::from(ppm.load(Ordering::Relaxed)) / 1e6;
                    second_error = (base * (0.5 + rng.uniform())).min(1.0);
                    if rng.uniform() < 1.0 / 60.0 {
                        burst_until = s + 5;
                    }
                }
                let rate = if s < burst_until { 3.0 * rps } else { rps };
                next += Duration::from_secs_f64(-(1.0 - rng.uniform()).ln() / rate);
                let path = if rng.uniform() < second_error {
                    "/err".to_string()
                } else {
                    let ms = 5.0 * (1.0 - rng.uniform()).powf(-1.0 / 2.5);
                    format!("/slow?ms={}", ms.min(3000.0) as u64)
                };
                if let Some(wait) = next.checked_sub(start.elapsed()) {
                    thread::sleep(wait);
                }
                if tx.send(path).is_err() {
                    return;
                }
            }
        }));
        Noisy {
            stop,
            error_ppm,
            seen,
            threads,
        }
    }

    fn set_error(&self, ratio: f64) {
        self.error_ppm
            .store((ratio * 1e6) as u32, Ordering::Relaxed);
    }

    /// Stops the traffic and returns what the client saw.
    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        // The dispatcher ends first and drops the sender; the workers drain and end.
        for t in self.threads.drain(..).rev() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn pod_health(api: &str, uid: &str) -> Value {
    let (code, body) = status::get(api, &format!("/v1/pods/{uid}/health")).expect("API");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The collector's counted losses (non-zero loss counters), for the record.
fn losses(api: &str) -> String {
    let (_, metrics) = status::get(api, "/metrics").unwrap_or_default();
    metrics
        .lines()
        .filter(|l| {
            (l.starts_with("collector_kernel_drops")
                && l.split("reason=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .and_then(collector::aggregate::http::drop_reason_loses_signal)
                    == Some(true))
                || l.starts_with("collector_events_rejected")
                || l.starts_with("collector_events_dropped")
                || l.starts_with("collector_http_requests_lost")
        })
        .filter(|l| !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn state_of(h: &Value) -> String {
    h["state"].as_str().unwrap_or("").to_string()
}

/// Polls until pod `uid` is in one of `states`; returns how long it took.
fn wait_for(api: &str, uid: &str, states: &[&str]) -> Duration {
    let start = Instant::now();
    loop {
        let h = pod_health(api, uid);
        if states.contains(&state_of(&h).as_str()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "pod {uid} not {states:?} within {DEADLINE:?}: {h}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The servers are the workload under test: when the test runs under `nice` (as the full
/// soak does on a shared machine), they are put back at nice 0, every thread (nice is per
/// thread on Linux; threads made later inherit it), so the soak measures the verdicts, not a
/// starved server — a first full run with the servers at nice 19 saw 14 of 69 requests take
/// over 500 ms during a concurrent build, and the collector rightly called that degraded.
fn unnice(pods: &[Pod]) {
    for pid in pods.iter().flat_map(|p| cgroup_procs(p.cgroup_dir())) {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
        for t in tasks.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                // SAFETY: plain syscall on a thread id of our own child.
                let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 0) };
                assert_eq!(
                    rc,
                    0,
                    "setpriority {tid}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// A collector with every verdict setting at its default.
fn start_collector(rt: &tokio::runtime::Runtime) -> app::Running {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        kubelet_cgroup_roots: vec![integration_tests::HARNESS_KUBELET_ROOT.into()],
        verdict: VerdictConfig::default(),
        ..Config::default()
    };
    assert_eq!(config.verdict, VerdictConfig::default());
    rt.block_on(app::start(config)).expect("collector starts")
}

fn soak_length() -> Duration {
    std::env::var("VERDICT_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_SOAK, Duration::from_secs)
}

/// Catches: any false transition of a healthy workload under stationary noise — a rule that
/// fires on a point estimate near its threshold, a fast window without its margin, latency
/// rules misreading a heavy tail, rates over the wrong time during bursts.
#[test]
fn stationary_noisy_traffic_never_leaves_healthy() {
    require_root();
    let length = soak_length();
    let server = newest_go_server();
    let prefix = unique_prefix("sk");
    // (requests/s, error ratio, seed): a low-volume and a busier pod.
    let mixes = [(20.0, 0.03, 0x5eed_0001u64), (60.0, 0.03, 0x5eed_0002)];
    let uids: Vec<String> = (0..2).map(|i| fake_pod_uid(0x5a00 + i)).collect();
    let pods: Vec<Pod> = (0..2u8)
        .map(|i| {
            Pod::create(
                &prefix,
                70 + i,
                &uids[usize::from(i)],
                &fake_container_id(0x5a00 + u32::from(i)),
            )
            .expect("pod")
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let running = start_collector(&rt);
    let api = format!("http://{}", running.addr);
    let (children, addrs) = spawn_pod_servers(&pods, &server, PORT);
    unnice(&pods);
    // Instrumented before traffic starts (discovery attaches per executable).
    thread::sleep(Duration::from_secs(2));
    let loads: Vec<Noisy> = mixes
        .iter()
        .zip(&addrs)
        .map(|(&(rps, error, seed), addr)| Noisy::start(*addr, rps, error, seed))
        .collect();
    for uid in &uids {
        let t = wait_for(&api, uid, &["healthy"]);
        eprintln!("pod {uid} healthy after {t:?}");
    }
    // Every poll of every pod after it became healthy; any other state is a transition.
    let start = Instant::now();
    let polls = AtomicU64::new(0);
    // Polls in another state: (seconds into the soak, pod, state, reason codes).
    let mut transitions: Vec<(f64, String, String, Vec<String>)> = Vec::new();
    let mut last_report = Instant::now();
    while start.elapsed() < length {
        for uid in &uids {
            let h = pod_health(&api, uid);
            polls.fetch_add(1, Ordering::Relaxed);
            let st = state_of(&h);
            if st != "healthy" {
                eprintln!(
                    "{:.1} s: pod {uid} {st}: {h}",
                    start.elapsed().as_secs_f64()
                );
                let codes = h["workloads"][0]["reasons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["code"].as_str().map(str::to_string))
                    .collect();
                transitions.push((start.elapsed().as_secs_f64(), uid.clone(), st, codes));
            }
        }
        if last_report.elapsed() >= Duration::from_secs(300) {
            last_report = Instant::now();
            eprintln!(
                "{:.0} s, {} polls, {} non-healthy",
                start.elapsed().as_secs_f64(),
                polls.load(Ordering::Relaxed),
                transitions.len()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
    let soaked = start.elapsed();
    let losses = losses(&api);
    let collector_view: Vec<Value> = uids
        .iter()
        .map(|u| pod_health(&api, u)["workloads"][0]["signals"].clone())
        .collect();
    let seen: Vec<Seen> = loads.into_iter().map(Noisy::finish).collect();
    for (((uid, s), mix), view) in uids.iter().zip(&seen).zip(&mixes).zip(&collector_view) {
        eprintln!(
            "SOAK pod {uid} ({} req/s nominal, {} % errors nominal): {:.0} s, {} requests \
             ({:.1} req/s), {} 5xx ({:.2} %), {} failed, client p50 {:.1} ms, p95 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms; collector's last window: {view}",
            mix.0,
            mix.1 * 100.0,
            soaked.as_secs_f64(),
            s.requests,
            s.requests as f64 / soaked.as_secs_f64(),
            s.errors,
            s.errors as f64 * 100.0 / s.requests.max(1) as f64,
            s.failed,
            s.quantile_ms(0.5),
            s.quantile_ms(0.95),
            s.quantile_ms(0.99),
            s.quantile_ms(1.0),
        );
    }
    // Unknown because the collector itself lost events (e.g. starved of CPU: its event
    // channel full) says nothing about the workload and is no false verdict; it is counted
    // and reported apart, and must be backed by counted losses.
    let (lost, false_transitions): (Vec<_>, Vec<_>) = transitions
        .into_iter()
        .partition(|(_, _, st, codes)| st == "unknown" && *codes == ["events_lost"]);
    eprintln!(
        "SOAK {:.0} s, {} polls: {} in another state than healthy, {} unknown for events the \
         collector lost; collector losses: {losses}",
        soaked.as_secs_f64(),
        polls.load(Ordering::Relaxed),
        false_transitions.len(),
        lost.len(),
    );
    rt.block_on(running.shutdown());
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    // The mix really was noisy: errors were sent, and the client saw no connection failures
    // (which would mean the test measured something else).
    for s in &seen {
        assert!(s.errors > 0, "no 5xx sent");
        assert_eq!(s.failed, 0, "requests without an answer");
    }
    assert_eq!(false_transitions, vec![], "false transitions");
    if !lost.is_empty() {
        assert!(
            !losses.is_empty(),
            "unknown for events_lost without counted losses"
        );
    }
}

/// Catches: defaults too slow for the targets to be reachable at all (a fault never
/// judged within the deadline), recovery that never comes (hysteresis or a window that does
/// not forget), a packet-loss fault the retransmit rule does not see at default volumes, and
/// a healthy pod (A) that moves while its neighbour fails.
#[test]
fn fault_sequence_with_defaults() {
    require_root();
    let server = newest_go_server();
    let prefix = unique_prefix("fs");
    let uids: Vec<String> = (0..2).map(|i| fake_pod_uid(0x5b00 + i)).collect();
    let pods: Vec<Pod> = (0..2u8)
        .map(|i| {
            Pod::create(
                &prefix,
                74 + i,
                &uids[usize::from(i)],
                &fake_container_id(0x5b00 + u32::from(i)),
            )
            .expect("pod")
        })
        .collect();
    let (a, b) = (&uids[0], &uids[1]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let running = start_collector(&rt);
    let api = format!("http://{}", running.addr);
    let (children, addrs) = spawn_pod_servers(&pods, &server, PORT);
    unnice(&pods);
    thread::sleep(Duration::from_secs(2));
    let load_a = Noisy::start(addrs[0], 25.0, 0.01, 0xfa17_0001);
    let load_b = Noisy::start(addrs[1], 25.0, 0.01, 0xfa17_0002);
    wait_for(&api, a, &["healthy"]);
    wait_for(&api, b, &["healthy"]);
    // Let the long window fill with healthy traffic, as before a real fault.
    thread::sleep(Duration::from_secs(30));

    let mut times = Vec::new();
    load_b.set_error(0.30);
    times.push(("30 % errors → unhealthy", wait_for(&api, b, &["unhealthy"])));
    assert!(
        pod_health(&api, b)["workloads"][0]["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["code"] == "error_ratio" && r["watching"] == false),
        "unhealthy for errors: {}",
        pod_health(&api, b)
    );
    load_b.set_error(0.01);
    times.push(("errors end → healthy", wait_for(&api, b, &["healthy"])));
    thread::sleep(Duration::from_secs(30));

    pods[1].drop_egress_percent(10).expect("loss");
    times.push((
        "10 % loss → degraded or worse",
        wait_for(&api, b, &["degraded", "unhealthy"]),
    ));
    let h = pod_health(&api, b);
    let codes: Vec<&str> = h["workloads"][0]["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["watching"] == false)
        .filter_map(|r| r["code"].as_str())
        .collect();
    assert_eq!(codes, vec!["retransmit_ratio"], "{h}");
    pods[1].clear_faults().expect("clear");
    times.push(("loss ends → healthy", wait_for(&api, b, &["healthy"])));
    assert_eq!(state_of(&pod_health(&api, a)), "healthy");
    for (what, t) in &times {
        eprintln!("FAULTS {what}: {:.1} s", t.as_secs_f64());
    }
    drop(load_b.finish());
    drop(load_a.finish());
    rt.block_on(running.shutdown());
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

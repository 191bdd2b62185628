//! Health verdicts end to end: four pods each run the Go test server; the collector runs
//! in-process with 1 s × 5 buckets; clients in the root namespace drive traffic. Asserted
//! through the local API: pod B turns unhealthy within two windows of each fault (5xx, then
//! 30 % egress loss) and healthy again after recovery; pod A never leaves healthy; pod C, whose
//! /healthz answers 200 while its real route answers 503, is flagged; pod D (a request a
//! second, below the volume any rule needs) is known and unknown for `no_traffic`, a pod the
//! collector never saw is unknown with no workloads; readiness answers 503 only for the
//! unhealthy pods; a pod that is degraded or unhealthy always has a deciding reason (while
//! recovering under hysteresis: `recovering`).
//!
//! `idle_instrumented_servers_are_known_and_processes_named_by_their_executable` (Go uprobes
//! on, socket parser off): a pod and a process whose Go servers discovery instrumented but
//! that have no traffic at all are known and unknown for `no_traffic`, then healthy with
//! traffic; the process, outside any named cgroup and run from a file whose name is longer
//! than `comm`'s 15 bytes, is `process/<its full name>` in the API, labels and `collector
//! status`.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use collector::{
    app,
    config::Config,
    status,
    verdict::{VerdictConfig, window::Geometry},
};
use integration_tests::*;
use serde_json::Value;

const PORT: u16 = 8080;
const BUCKET: Duration = Duration::from_secs(1);
const BUCKETS: usize = 5;
/// "Within two windows" of a fault.
const TWO_WINDOWS: Duration = Duration::from_secs(2 * BUCKETS as u64);

fn pod_health(api: &str, uid: &str) -> Value {
    let (code, body) = status::get(api, &format!("/v1/pods/{uid}/health")).expect("API");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn pod_state(api: &str, uid: &str) -> String {
    pod_health(api, uid)["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The collector's loss counters, for failure messages.
fn losses(api: &str) -> String {
    let (_, metrics) = status::get(api, "/metrics").unwrap_or_default();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("collector_kernel_drops")
                || l.starts_with("collector_events_rejected")
                || l.starts_with("collector_events_dropped")
                || l.starts_with("collector_http_requests_lost")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ready(api: &str, uid: &str) -> u16 {
    status::get(api, &format!("/v1/pods/{uid}/ready"))
        .expect("API")
        .0
}

/// Polls until pod `uid` is in `state`, checking on every poll that pod A is healthy once it
/// became so. Returns how long it took.
fn wait_state(
    api: &str,
    uid: &str,
    state: &str,
    within: Duration,
    a: &str,
    a_healthy: bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if a_healthy {
            let s = pod_state(api, a);
            assert_eq!(
                s,
                "healthy",
                "pod A left healthy: {}\n{}",
                pod_health(api, a),
                losses(api)
            );
        }
        let h = pod_health(api, uid);
        let now = h["state"].as_str().unwrap_or("").to_string();
        // A state other than healthy or unknown always says what holds it there (a deciding
        // reason, or "recovering, N more evaluations" under hysteresis).
        if now == "degraded" || now == "unhealthy" {
            let held = h["workloads"].as_array().into_iter().flatten().any(|w| {
                w["state"] == now.as_str()
                    && w["reasons"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|r| r["watching"] == false)
            });
            assert!(held, "pod {uid} {now} without a deciding reason: {h}");
        }
        if now == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "pod {uid} not {state} within {within:?}: {}\n{}",
            pod_health(api, uid),
            losses(api)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn verdicts_follow_real_traffic() {
    require_root();
    let server = newest_go_server();
    let prefix = unique_prefix("vd");
    let uids: Vec<String> = (0..4).map(|i| fake_pod_uid(0x7d00 + i)).collect();
    let pods: Vec<Pod> = (0..4u8)
        .map(|i| {
            Pod::create(
                &prefix,
                60 + i,
                &uids[usize::from(i)],
                &fake_container_id(0x7d00 + u32::from(i)),
            )
            .expect("pod")
        })
        .collect();
    let (a, b, c, d) = (&uids[0], &uids[1], &uids[2], &uids[3]);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut verdict = VerdictConfig {
        geometry: Geometry {
            bucket: BUCKET,
            count: BUCKETS,
        },
        ..VerdictConfig::default()
    };
    // Connections under 30 % loss are slow: fewer sends per short window than the default.
    verdict.rules.min_send_calls = 100;
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        kubelet_cgroup_roots: vec![integration_tests::HARNESS_KUBELET_ROOT.into()],
        verdict,
        ..Config::default()
    };
    let running = rt.block_on(app::start(config)).expect("collector starts");
    let api = format!("http://{}", running.addr);

    let (children, addrs) = spawn_pod_servers(&pods, &server, PORT);
    // Instrumented before traffic starts (discovery attaches per executable).
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();

    let _load_a = Load::start(addrs[0], "/ok", 4, Duration::from_millis(20));
    let load_b = Load::start(addrs[1], "/ok", 32, Duration::from_millis(20));
    // C: real traffic fails, its probe path answers 200.
    let _load_c = Load::start(addrs[2], "/err", 2, Duration::from_millis(20));
    let _probe_c = Load::start(addrs[2], "/healthz", 1, Duration::from_millis(100));
    // D: about 5 requests per window, under `min_requests` (20).
    let _trickle_d = Load::start(addrs[3], "/ok", 1, Duration::from_millis(1000));

    let t = wait_state(&api, a, "healthy", TWO_WINDOWS, a, false);
    eprintln!("A healthy after {t:?}");
    wait_state(&api, b, "healthy", TWO_WINDOWS, a, true);

    // Fault 1: B answers 5xx.
    load_b.set("/err");
    let t = wait_state(&api, b, "unhealthy", TWO_WINDOWS, a, true);
    eprintln!("B unhealthy (5xx) after {t:?}");
    let hb = pod_health(&api, b);
    assert!(
        reason_codes(&hb).contains(&"error_ratio".to_string()),
        "{hb}"
    );

    // C is unhealthy and flagged: /healthz says 200 while real traffic fails.
    wait_state(&api, c, "unhealthy", TWO_WINDOWS, a, true);
    let hc = pod_health(&api, c);
    assert_eq!(hc["workloads"][0]["probe_mismatch"], true, "{hc}");
    // D is known (its requests are counted) but has too little traffic to judge.
    let hd = pod_health(&api, d);
    assert_eq!(hd["state"], "unknown", "{hd}");
    assert_eq!(
        hd["workloads"].as_array().map(Vec::len),
        Some(1),
        "D is known: {hd}"
    );
    assert_eq!(reason_codes(&hd), vec!["no_traffic".to_string()], "{hd}");
    // A pod the collector never saw: unknown, and absent (no workloads).
    let never = fake_pod_uid(0x7dff);
    let hn = pod_health(&api, &never);
    assert_eq!(hn["state"], "unknown", "{hn}");
    assert_eq!(hn["workloads"], serde_json::json!([]), "{hn}");
    // Readiness: 503 only for the unhealthy pods.
    assert_eq!(ready(&api, a), 200);
    assert_eq!(ready(&api, b), 503);
    assert_eq!(ready(&api, c), 503);
    assert_eq!(ready(&api, d), 200);
    let (_, metrics) = status::get(&api, "/metrics").expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("collector_verdict_probe_mismatch_total{")
                && l.contains(c.as_str())),
        "probe mismatch counted"
    );
    let table = status::table(&status::fetch(&api).expect("status"));
    eprintln!("{table}");

    // Recovery from 5xx.
    load_b.set("/ok");
    let t = wait_state(&api, b, "healthy", 3 * TWO_WINDOWS, a, true);
    eprintln!("B healthy again after {t:?}");

    // Fault 2: 30 % loss on B's egress, traffic /ok.
    pods[1].drop_egress_percent(30).expect("loss");
    let t = wait_state(&api, b, "unhealthy", TWO_WINDOWS, a, true);
    eprintln!("B unhealthy (loss) after {t:?}");
    let hb = pod_health(&api, b);
    // The reason codes, not a substring of the whole document (every verdict carries a
    // `retransmit_ratio` signal, so that string is always there).
    assert!(
        reason_codes(&hb).contains(&"retransmit_ratio".to_string()),
        "unhealthy for retransmits: {hb}"
    );
    assert_eq!(ready(&api, b), 503);

    // Recovery from loss.
    pods[1].clear_faults().expect("clear");
    let t = wait_state(&api, b, "healthy", 3 * TWO_WINDOWS, a, true);
    eprintln!("B healthy again after {t:?}");
    assert_eq!(ready(&api, b), 200);
    assert_eq!(pod_state(&api, a), "healthy");
    eprintln!("whole scenario: {:?}", started.elapsed());
    eprintln!("{}", losses(&api));

    drop((load_b, _load_a, _load_c, _probe_c, _trickle_d));
    rt.block_on(running.shutdown());
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls until pod `uid` has a workload (within 15 s: discovery rescans every 2 s, then a
/// harvest and an evaluation).
fn wait_known(api: &str, uid: &str) -> Value {
    let start = Instant::now();
    loop {
        let h = pod_health(api, uid);
        if h["workloads"].as_array().is_some_and(|w| !w.is_empty()) {
            return h;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "pod {uid} never known: {h}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /v1/workload?kind=..&name=..`: (status, body).
fn workload(api: &str, kind: &str, name: &str) -> (u16, Value) {
    let (code, body) =
        status::get(api, &format!("/v1/workload?kind={kind}&name={name}")).expect("API");
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Catches: an instrumented Go server without traffic answering as if unknown to the
/// collector (no workloads for its pod, 404 on `/v1/workload` for its process) — not
/// registered, or registered under a key the kernel does not charge its requests to (its
/// traffic would be a second workload, and the idle one would stay unknown); a process
/// workload named by `comm`, cut to 15 bytes (`collector-test-`), where its executable's name
/// can be read.
#[test]
fn idle_instrumented_servers_are_known_and_processes_named_by_their_executable() {
    require_root();
    const NAME: &str = "collector-test-long-executable-name";
    assert!(NAME.len() > 15);
    let server = newest_go_server();
    let dir = std::env::temp_dir().join(unique_prefix("exe"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let exe = dir.join(NAME);
    std::fs::copy(&server, &exe).expect("copy the Go server");
    let prefix = unique_prefix("vi");
    let uid = fake_pod_uid(0x7e00);
    let pod = Pod::create(&prefix, 65, &uid, &fake_container_id(0x7e00)).expect("pod");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        kubelet_cgroup_roots: vec![integration_tests::HARNESS_KUBELET_ROOT.into()],
        verdict: VerdictConfig {
            geometry: Geometry {
                bucket: BUCKET,
                count: BUCKETS,
            },
            ..VerdictConfig::default()
        },
        ..Config::default()
    };
    // Instrumented means the Go uprobes (`/v1/go-http`); the socket parser, which would count
    // the same requests, is off.
    config.http.socket = false;
    config.http.uprobes = collector::config::GoUprobes::All;
    let running = rt.block_on(app::start(config)).expect("collector starts");
    let api = format!("http://{}", running.addr);

    let (pod_children, pod_addrs) = spawn_pod_servers(std::slice::from_ref(&pod), &server, PORT);
    let mut child = Command::new(&exe)
        .args(["-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Go server");
    // In the root cgroup, which names no workload: the process does.
    std::fs::write(cgroup2_mount().join("cgroup.procs"), child.id().to_string())
        .expect("move to the root cgroup");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    std::thread::spawn(move || lines.for_each(drop));
    let addr: SocketAddr = first
        .strip_prefix("listening on ")
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));

    // Idle: known, unknown for no_traffic.
    let hp = wait_known(&api, &uid);
    assert_eq!(hp["state"], "unknown", "{hp}");
    assert_eq!(hp["workloads"].as_array().map(Vec::len), Some(1), "{hp}");
    assert_eq!(reason_codes(&hp), vec!["no_traffic".to_string()], "{hp}");
    let start = Instant::now();
    let idle = loop {
        let (code, w) = workload(&api, "process", NAME);
        if code == 200 {
            break w;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{code} {w}; go-http: {:?}",
            status::get(&api, "/v1/go-http")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(idle["state"], "unknown", "{idle}");
    let codes = |w: &Value| -> Vec<String> {
        w["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["code"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(codes(&idle), vec!["no_traffic".to_string()], "{idle}");

    // Traffic: the same workloads, judged healthy.
    let load_pod = Load::start(pod_addrs[0], "/ok", 2, Duration::from_millis(20));
    let load = Load::start(addr, "/ok", 2, Duration::from_millis(20));
    let start = Instant::now();
    let healthy = loop {
        let (code, w) = workload(&api, "process", NAME);
        if code == 200 && w["state"] == "healthy" {
            break w;
        }
        assert!(start.elapsed() < TWO_WINDOWS, "{code} {w}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(codes(&healthy), Vec::<String>::new(), "{healthy}");
    assert!(
        healthy["signals"]["requests"].as_u64() >= Some(20),
        "{healthy}"
    );
    let start = Instant::now();
    loop {
        let hp = pod_health(&api, &uid);
        if hp["state"] == "healthy" {
            assert_eq!(hp["workloads"].as_array().map(Vec::len), Some(1), "{hp}");
            assert_eq!(reason_codes(&hp), Vec::<String>::new(), "{hp}");
            break;
        }
        assert!(start.elapsed() < TWO_WINDOWS, "{hp}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((load, load_pod));
    // Not also under its comm.
    let (code, w) = workload(&api, "process_comm", &NAME[..15]);
    assert_eq!(code, 404, "{w}");
    let (_, metrics) = status::get(&api, "/metrics").expect("metrics");
    let label = format!(r#"workload_kind="process",workload="{NAME}""#);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("collector_http_requests_total{") && l.contains(&label)),
        "no collector_http_requests_total with {label}"
    );
    let table = status::table(&status::fetch(&api).expect("status"));
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().next() == Some(NAME)),
        "{table}"
    );

    rt.block_on(running.shutdown());
    let _ = child.kill();
    let _ = child.wait();
    for mut c in pod_children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reason codes of a pod's (first) workload.
fn reason_codes(health: &Value) -> Vec<String> {
    health["workloads"][0]["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["code"].as_str().map(str::to_string))
        .collect()
}

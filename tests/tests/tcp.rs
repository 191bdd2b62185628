//! TCP signals end to end on the running kernel: real eBPF, real namespaces and cgroups, real
//! packet loss. Compared against what the test sent and against the kernel's own counters.

use std::{collections::HashMap, net::SocketAddr, process::Output, time::Duration};

use collector::{
    app,
    config::Config,
    probes::{Rung, Signal},
};
use integration_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
const METRICS_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Starts an in-process collector on an ephemeral port. `rung`: force that rung for every
/// signal that has it. Every signal is required, so a start that succeeds attached them all.
async fn start_collector(rung: Option<Rung>) -> anyhow::Result<app::Running> {
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.ladder.required = Signal::ALL.to_vec();
    if let Some(rung) = rung {
        for signal in Signal::ALL {
            if signal.default_ladder().contains(&rung) {
                config.ladder.order.insert(signal, vec![rung]);
            }
        }
    }
    app::start(config).await
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to collector");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read response");
    buf.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Sum of the samples of `metric` whose labels include all of `labels`.
fn sample(text: &str, metric: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum()
}

fn pod_labels(pod: &Pod) -> [(&'static str, &str); 2] {
    [("workload_kind", "pod"), ("pod_uid", pod.uid())]
}

fn cgroup_labels(path: &str) -> [(&'static str, &str); 2] {
    [("workload_kind", "cgroup"), ("workload", path)]
}

fn kv(out: &Output) -> HashMap<String, u64> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().map(parse_kv).unwrap_or_default()
}

fn retrans(pod: &Pod) -> u64 {
    pod.nstat(&["TcpRetransSegs"]).expect("nstat")["TcpRetransSegs"]
}

/// The cgroup path of a host cgroup relative to the cgroup2 root (how the collector names it).
fn rel_path(dir: &std::path::Path) -> String {
    let root = cgroup2_mount();
    format!(
        "/{}",
        dir.strip_prefix(&root)
            .expect("under the cgroup2 mount")
            .display()
    )
}

struct World {
    a: Pod,
    b: Pod,
    client: HostCgroup,
    client_path: String,
    _servers: Vec<std::process::Child>,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
}

const BYTES_PER_CONN: u64 = 1_000_000;

fn world(tag: &str) -> World {
    require_root();
    let prefix = unique_prefix(tag);
    let a = Pod::create(&prefix, 11, &fake_pod_uid(11), &fake_container_id(11)).expect("pod A");
    let b = Pod::create(&prefix, 12, &fake_pod_uid(12), &fake_container_id(12)).expect("pod B");
    let client = HostCgroup::create(&prefix, "client").expect("client cgroup");
    let client_path = rel_path(client.cgroup_dir());
    let bin = pod_traffic_bin();
    let per_conn = BYTES_PER_CONN.to_string();
    let mut sa = a
        .spawn(&bin, &["serve", "0.0.0.0:8080", &per_conn])
        .expect("serve A");
    let mut sb = b
        .spawn(&bin, &["serve", "0.0.0.0:8080", &per_conn])
        .expect("serve B");
    read_listening(&mut sa, Duration::from_secs(10)).expect("A listening");
    read_listening(&mut sb, Duration::from_secs(10)).expect("B listening");
    let a_addr = SocketAddr::new(a.addr().into(), 8080);
    let b_addr = SocketAddr::new(b.addr().into(), 8080);
    World {
        a,
        b,
        client,
        client_path,
        _servers: vec![sa, sb],
        a_addr,
        b_addr,
    }
}

fn fetch(w: &World, addr: SocketAddr, conns: u64) -> u64 {
    let out = w
        .client
        .run(
            &pod_traffic_bin(),
            &["fetch", &addr.to_string(), &conns.to_string(), "4"],
            FETCH_TIMEOUT,
        )
        .expect("fetch runs");
    assert!(
        out.status.success(),
        "fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = kv(&out);
    assert_eq!(r.get("failed"), Some(&0), "{r:?}");
    r["bytes"]
}

/// Per-pod retransmits against the kernel's own count for that namespace, bytes against what the
/// servers wrote, connection counts against what the client did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmits_and_bytes_are_attributed_to_the_right_pod() {
    let w = world("rt");
    let running = start_collector(None)
        .await
        .expect("collector starts with every signal attached");
    w.b.drop_egress_percent(5).expect("loss on B");
    let conns = 20;
    assert_eq!(fetch(&w, w.a_addr, conns), conns * BYTES_PER_CONN);
    assert_eq!(fetch(&w, w.b_addr, conns), conns * BYTES_PER_CONN);
    w.b.clear_faults().expect("clear loss");

    // Pending retransmissions (a lost FIN) may still be in flight: wait until our count meets
    // the kernel's, then compare both once more.
    let text = wait_until_ok(
        METRICS_DEADLINE,
        POLL,
        "B's retransmits to match nstat",
        || async {
            let text = http_get(running.addr, "/metrics").await;
            let ours = sample(
                &text,
                "collector_tcp_retransmitted_segments_total",
                &pod_labels(&w.b),
            );
            let kernel = retrans(&w.b);
            let sent = sample(&text, "collector_tcp_sent_bytes_total", &pod_labels(&w.a));
            if kernel > 0
                && ours.abs_diff(kernel) * 100 <= kernel * 5
                && sent == conns * BYTES_PER_CONN
            {
                Ok(text)
            } else {
                Err(format!("ours={ours} nstat={kernel} A bytes={sent}"))
            }
        },
    )
    .await;
    let (ours_b, kernel_b) = (
        sample(
            &text,
            "collector_tcp_retransmitted_segments_total",
            &pod_labels(&w.b),
        ),
        retrans(&w.b),
    );
    let (ours_a, kernel_a) = (
        sample(
            &text,
            "collector_tcp_retransmitted_segments_total",
            &pod_labels(&w.a),
        ),
        retrans(&w.a),
    );
    eprintln!("retransmits: B ours={ours_b} nstat={kernel_b}; A ours={ours_a} nstat={kernel_a}");
    // 5 % loss on 20 MB is hundreds of segments: a real signal, not noise.
    assert!(
        kernel_b >= 50,
        "loss produced too few retransmits ({kernel_b}) to judge"
    );
    assert!(
        ours_b.abs_diff(kernel_b) * 100 <= kernel_b * 5,
        "B: ours={ours_b} nstat={kernel_b}"
    );
    // The healthy pod: no loss, so (almost surely) none, and never someone else's.
    assert_eq!(ours_a, kernel_a, "A must get exactly its own retransmits");
    assert!(kernel_a <= 2, "A had {kernel_a} retransmits without loss");

    // Bytes: each server writes exactly conns × BYTES_PER_CONN with write_all, nothing else
    // sends from those pods, and retransmissions do not pass through sendmsg: exact.
    for pod in [&w.a, &w.b] {
        let sent = sample(&text, "collector_tcp_sent_bytes_total", &pod_labels(pod));
        assert_eq!(sent, conns * BYTES_PER_CONN, "bytes sent by {}", pod.uid());
        let container = [("container_id", pod.container_id())];
        assert_eq!(
            sample(&text, "collector_tcp_sent_bytes_total", &container),
            sent,
            "container id label"
        );
    }
    let passive_a = sample(
        &text,
        "collector_tcp_connections_opened_total",
        &[
            pod_labels(&w.a)[0],
            pod_labels(&w.a)[1],
            ("direction", "passive"),
        ],
    );
    assert_eq!(
        passive_a, conns,
        "accepted sockets inherit the pod's cgroup"
    );
    let active = sample(
        &text,
        "collector_tcp_connections_opened_total",
        &[
            cgroup_labels(&w.client_path)[0],
            cgroup_labels(&w.client_path)[1],
            ("direction", "active"),
        ],
    );
    assert_eq!(active, 2 * conns, "client's connects");
    // The client only reads: it must not be charged the servers' bytes.
    assert_eq!(
        sample(
            &text,
            "collector_tcp_sent_bytes_total",
            &cgroup_labels(&w.client_path)
        ),
        0
    );
    assert!(
        sample(
            &text,
            "collector_events_received_total",
            &[("kind", "process")]
        ) > 0,
        "ring buffer carries process records"
    );
    assert_eq!(
        sample(&text, "collector_kernel_drops_total", &[]),
        0,
        "nothing lost at this rate:\n{text}"
    );
    running.shutdown().await;
}

/// The fixed part of the traffic each rung must count identically.
const SEND_BYTES: u64 = 123_457;
const REFUSED: u64 = 3;

async fn drive_and_check(running: &app::Running, w: &World, rung: &str) {
    let bin = pod_traffic_bin();
    // Client → sink in pod A: the client's bytes, exactly.
    let mut sink = w.a.spawn(&bin, &["sink", "0.0.0.0:9000"]).expect("sink");
    read_listening(&mut sink, Duration::from_secs(10)).expect("sink listening");
    let out = w
        .client
        .run(
            &bin,
            &[
                "send",
                &format!("{}:9000", w.a.addr()),
                &SEND_BYTES.to_string(),
            ],
            FETCH_TIMEOUT,
        )
        .expect("send");
    assert!(out.status.success(), "send failed");
    let _ = sink.kill();
    // Connects to a closed port: refused, each with a reset received.
    let out = w
        .client
        .run(
            &bin,
            &[
                "connect-refused",
                &format!("{}:9", w.a.addr()),
                &REFUSED.to_string(),
            ],
            FETCH_TIMEOUT,
        )
        .expect("connect-refused");
    assert_eq!(
        kv(&out).get("refused"),
        Some(&REFUSED),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Loss on B for retransmits, compared with the kernel's count over the same interval.
    let before = retrans(&w.b);
    w.b.drop_egress_percent(5).expect("loss");
    assert_eq!(fetch(w, w.b_addr, 10), 10 * BYTES_PER_CONN);
    w.b.clear_faults().expect("clear");

    let c = cgroup_labels(&w.client_path);
    let text = wait_until_ok(
        METRICS_DEADLINE,
        POLL,
        &format!("{rung}: counts"),
        || async {
            let text = http_get(running.addr, "/metrics").await;
            let kernel = retrans(&w.b) - before;
            let got = (
                sample(&text, "collector_tcp_sent_bytes_total", &c),
                sample(
                    &text,
                    "collector_tcp_connects_failed_total",
                    &[c[0], c[1], ("error", "econnrefused")],
                ),
                sample(&text, "collector_tcp_resets_received_total", &c),
                sample(
                    &text,
                    "collector_tcp_retransmitted_segments_total",
                    &pod_labels(&w.b),
                ),
            );
            let ok = got.0 == SEND_BYTES
                && got.1 == REFUSED
                && got.2 == REFUSED
                && kernel > 0
                && got.3.abs_diff(kernel) * 100 <= kernel * 5;
            if ok {
                Ok(text)
            } else {
                Err(format!(
                    "(bytes, refused, resets, retrans)={got:?} nstat delta={kernel}"
                ))
            }
        },
    )
    .await;
    eprintln!(
        "{rung}: client bytes={} refused={} resets={} B retrans={} (nstat {})",
        sample(&text, "collector_tcp_sent_bytes_total", &c),
        REFUSED,
        REFUSED,
        sample(
            &text,
            "collector_tcp_retransmitted_segments_total",
            &pod_labels(&w.b)
        ),
        retrans(&w.b) - before
    );
}

fn kprobes_present() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

/// Each rung forced on its own gives the same counts for the same traffic. Rungs this kernel
/// lacks must be refused (required signal, no rung) — and the default ladder must fall through
/// them to a working one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rung_counts_the_same_and_missing_rungs_fall_through() {
    let w = world("rg");
    let mut tested = Vec::new();
    for rung in Rung::ALL {
        match start_collector(Some(rung)).await {
            Ok(running) => {
                let probes = http_get(running.addr, "/v1/probes").await;
                assert!(
                    probes.contains(&format!("\"attached\":\"{}\"", rung.as_str())),
                    "{probes}"
                );
                drive_and_check(&running, &w, rung.as_str()).await;
                running.shutdown().await;
                tested.push(rung);
            }
            Err(e) => {
                let msg = format!("{e:#}");
                eprintln!("{rung}: unavailable on this kernel: {msg}");
                assert!(msg.contains("could not attach on any rung"), "{msg}");
                match rung {
                    Rung::Kprobe => assert!(
                        !kprobes_present(),
                        "kprobes exist but the rung failed: {msg}"
                    ),
                    // Present on every kernel this collector supports (≥ 5.8 with BTF).
                    Rung::TpBtf | Rung::RawTp | Rung::Tracepoint => {
                        panic!("{rung} must work here: {msg}")
                    }
                    // Refused with EPERM on some kernels (the build machines): allowed to fail.
                    Rung::Fentry => {}
                }
            }
        }
    }
    assert!(tested.len() >= 3, "rungs tested: {tested:?}");

    // Default ladder: starts at kprobe; wherever kprobes are missing it must fall through.
    let running = start_collector(None)
        .await
        .expect("default ladder attaches everything");
    let probes = http_get(running.addr, "/v1/probes").await;
    if !kprobes_present() {
        assert!(
            probes.contains("\"rung\":\"kprobe\",\"error\":\""),
            "kprobe attempt recorded with its error: {probes}"
        );
        assert!(!probes.contains("\"attached\":\"kprobe\""), "{probes}");
    }
    let metrics = http_get(running.addr, "/metrics").await;
    assert_eq!(
        sample(&metrics, "collector_signal_rung", &[]),
        Signal::ALL.len() as u64,
        "one rung per signal exported:\n{metrics}"
    );
    running.shutdown().await;
}

fn bpftool(what: &str) -> String {
    let out = std::process::Command::new("bpftool")
        .args([what, "show"])
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// After shutdown nothing of ours is left: programs, links, maps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_nothing_loaded() {
    require_root();
    let ours_progs = [
        "send_tp_btf",
        "retrans_tp_btf",
        "state_tp_btf",
        "destroy_tp_btf",
    ];
    let ours_maps = ["TCP_STATS", "SOCK_OWNERS", "SEEN_TGIDS", "PROBE_STASH"];
    let running = start_collector(None).await.expect("starts");
    let progs = bpftool("prog");
    for p in ours_progs {
        assert!(progs.contains(p), "{p} loaded while running:\n{progs}");
    }
    let maps = bpftool("map");
    assert!(
        ours_maps.iter().all(|m| maps.contains(m)),
        "maps while running:\n{maps}"
    );
    running.shutdown().await;
    // Links and programs are released through RCU: gone shortly after the last fd closes.
    wait_until_ok_blocking(
        Duration::from_secs(15),
        POLL,
        "our programs, links and maps to be gone",
        || {
            let (progs, maps, links) = (bpftool("prog"), bpftool("map"), bpftool("link"));
            let left: Vec<_> = ours_progs
                .iter()
                .filter(|p| progs.contains(**p) || links.contains(**p))
                .chain(ours_maps.iter().filter(|m| maps.contains(**m)))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    );
}

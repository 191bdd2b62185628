//! The agent under churn, overload and restarts.
//!
//! - Keys of exited owners are deleted from the kernel maps while events are still charged to
//!   them: the counts stay exact (`counts_stay_exact_while_keys_expire`).

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use collector::{app, config::Config};
use integration_tests::*;

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

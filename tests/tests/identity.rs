//! Pod identity cannot be spoofed (root only): a cgroup named like a pod outside the kubelet's
//! cgroup root is not that pod, while a pod under the root still is.
//! Run: `cargo test --release -p integration-tests --test identity -- --test-threads=1`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use collector::{app, config::Config, status};
use integration_tests::{
    HostCgroup, Pod, cgroup2_mount, fake_container_id, fake_pod_uid, output_with_timeout,
    pod_traffic_bin, read_listening, require_root, unique_prefix, wait_until_ok_blocking,
};

/// A cgroup chain created by the test (not by the harness: it needs arbitrary depth), removed
/// leaf first.
struct Chain {
    dirs: Vec<PathBuf>,
}

impl Chain {
    fn create(base: &Path, components: &[String]) -> Chain {
        let mut dirs = Vec::new();
        let mut dir = base.to_path_buf();
        for c in components {
            dir.push(c);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                dirs.push(dir.clone());
            }
        }
        Chain { dirs }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().expect("created at least the leaf")
    }

    /// Runs `pod-traffic send <to> <bytes>` inside the leaf cgroup (joined before exec, so its
    /// socket belongs to the cgroup) in the root network namespace.
    fn send(&self, to: &str, bytes: u64) {
        let procs = self.leaf().join("cgroup.procs");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}' || exit 125; exec \"$0\" \"$@\"",
                procs.display()
            ))
            .arg(pod_traffic_bin())
            .args(["send", to, &bytes.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pod-traffic");
        let out = output_with_timeout(child, Duration::from_secs(60)).expect("pod-traffic");
        assert!(
            out.status.success(),
            "send from {}: {out:?}",
            self.leaf().display()
        );
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            for _ in 0..100 {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// The value of the one series of `metric` whose labels include every `labels` pair.
fn value(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(metric)?.strip_prefix('{')?;
        let (set, v) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(k, want)| set.contains(&format!("{k}=\"{want}\"")))
            .then(|| v.trim().parse().ok())?
    })
}

/// Catches: a `kubepods…pod<uid>.slice` component accepted at any depth, so a tenant who may
/// create cgroups (a container with a writable cgroupfs, a user's systemd delegation) charges
/// its traffic to any pod's UID.
#[test]
fn a_pod_slice_outside_the_kubelet_root_is_not_charged_to_that_pod() {
    require_root();
    let prefix = unique_prefix("spoof");
    let real = Pod::create(&prefix, 43, &fake_pod_uid(43), &fake_container_id(43)).expect("pod");
    let victim = fake_pod_uid(44);
    let victim_ = victim.replace('-', "_");
    let mount = cgroup2_mount();
    // Both spoofs live under the run prefix, beside the kubelet root the collector is given.
    let tenant = Chain::create(
        &mount,
        &[
            prefix.clone(),
            "tenant".into(),
            "kubepods.slice".into(),
            "kubepods-besteffort.slice".into(),
            format!("kubepods-besteffort-pod{victim_}.slice"),
            format!("cri-containerd-{}.scope", fake_container_id(44)),
        ],
    );
    let delegated = Chain::create(
        &mount,
        &[
            prefix.clone(),
            "user.slice".into(),
            "user-1000.slice".into(),
            "user@1000.service".into(),
            "app.slice".into(),
            format!("kubepods-pod{victim_}.slice"),
        ],
    );
    let sink_cgroup = HostCgroup::create(&prefix, "sink").expect("sink cgroup");
    let sink_addr = format!("{}:9100", real.host_addr());
    let mut sink = sink_cgroup
        .spawn(&pod_traffic_bin(), &["sink", &sink_addr])
        .expect("sink");
    read_listening(&mut sink, Duration::from_secs(10)).expect("sink listening");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        kubelet_cgroup_roots: vec![format!("/{prefix}/kubepods.slice")],
        ..Config::default()
    };
    let running = rt.block_on(app::start(config)).expect("collector starts");
    let api = format!("http://{}", running.addr);

    let out = real
        .run(
            &pod_traffic_bin(),
            &["send", &sink_addr, "100000"],
            Duration::from_secs(60),
        )
        .expect("send from the pod");
    assert!(out.status.success(), "{out:?}");
    tenant.send(&sink_addr, 200_000);
    delegated.send(&sink_addr, 300_000);

    let rel = |c: &Chain| {
        format!(
            "/{}",
            c.leaf()
                .strip_prefix(&mount)
                .expect("under the mount")
                .display()
        )
    };
    let sent = "collector_tcp_sent_bytes_total";
    let metrics = wait_until_ok_blocking(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "all three senders exported",
        || {
            let (_, m) = status::get(&api, "/metrics").map_err(|e| e.to_string())?;
            let got = (
                value(
                    &m,
                    sent,
                    &[("workload_kind", "pod"), ("pod_uid", real.uid())],
                ),
                value(&m, sent, &[("workload", &rel(&tenant))]),
                value(&m, sent, &[("workload", &rel(&delegated))]),
            );
            // Charged to the victim (the bug): stop waiting, the assertions below say so.
            let charged = got.1 >= Some(200_000) && got.2 >= Some(300_000);
            if got.0 >= Some(100_000) && (charged || m.contains(&victim)) {
                Ok(m)
            } else {
                Err(format!("{got:?}"))
            }
        },
    );
    // The real pod: exactly its bytes, under its UID.
    assert_eq!(
        value(
            &metrics,
            sent,
            &[("workload_kind", "pod"), ("pod_uid", real.uid())]
        ),
        Some(100_000)
    );
    // The spoofs: counted exactly, as the cgroups they are.
    assert_eq!(
        value(
            &metrics,
            sent,
            &[("workload_kind", "cgroup"), ("workload", &rel(&tenant))]
        ),
        Some(200_000)
    );
    assert_eq!(
        value(
            &metrics,
            sent,
            &[("workload_kind", "cgroup"), ("workload", &rel(&delegated))]
        ),
        Some(300_000)
    );
    // The victim's UID appears nowhere.
    assert!(
        !metrics.contains(&victim),
        "victim pod UID {victim} in /metrics:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains(&victim))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (_, workloads) = status::get(&api, "/v1/workloads").expect("workloads");
    assert!(!workloads.contains(&victim), "{workloads}");
    println!(
        "real pod {} charged 100000 bytes; spoofs charged as cgroups {} and {}",
        real.uid(),
        rel(&tenant),
        rel(&delegated)
    );
    rt.block_on(running.shutdown());
    drop(sink);
}

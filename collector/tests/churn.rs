//! A simulated day of workload churn through the real aggregator, identity resolver, verdict
//! engine and metrics, with a fake kernel map and a fake cgroup tree: what is kept per workload
//! must stay flat however many workloads come and go.
//!
//! Catches two capacity leaks: the set of known workload label sets never shrank (after
//! `max_workloads` distinct workloads every new pod landed in `overflow`, without a verdict), and
//! `(cgroup, tgid 0)` keys were never deleted from `TCP_STATS`, so the map filled over days.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use collector::{
    aggregate::{Aggregator, StatsSource, http::RouteTable},
    export::Metrics,
    identity::IdentityResolver,
    verdict::{Engine, VerdictConfig, window::Geometry},
};
use collector_common::{
    http::HttpCounts,
    maps::KernelDrop,
    tcp::{OwnerKey, TcpStats},
};

/// The kernel's `TCP_STATS`: keys stay until userspace deletes them, as in the kernel.
#[derive(Default)]
struct FakeMap {
    tcp: Vec<(OwnerKey, TcpStats)>,
}

/// Shared between the aggregator (which reads and deletes) and the test (the "kernel").
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<FakeMap>>);

impl Shared {
    fn map(&self) -> std::sync::MutexGuard<'_, FakeMap> {
        self.0.lock().expect("fake map")
    }
}

impl StatsSource for Shared {
    fn read_tcp(&mut self) -> Vec<(OwnerKey, TcpStats)> {
        self.map().tcp.clone()
    }
    fn remove_tcp(&mut self, key: &OwnerKey) {
        self.map().tcp.retain(|(k, _)| k != key);
    }
    fn read_http(&mut self) -> Vec<(OwnerKey, HttpCounts)> {
        Vec::new()
    }
    fn remove_http(&mut self, _: &OwnerKey) {}
    fn read_drops(&mut self) -> Vec<(KernelDrop, Vec<u64>)> {
        Vec::new()
    }
}

impl FakeMap {
    /// What the kernel does on a send: create the key or add to it.
    fn send(&mut self, key: OwnerKey, bytes: u64) {
        match self.tcp.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                v.bytes_sent += bytes;
                v.send_calls += 1;
            }
            None => self.tcp.push((
                key,
                TcpStats {
                    bytes_sent: bytes,
                    send_calls: 1,
                    ..Default::default()
                },
            )),
        }
    }
}

/// A cgroup tree on tmpfs: its inode numbers are not reused soon after a removal, as cgroup ids
/// never are (on ext4 a new directory often gets the inode just freed).
struct TempTree(PathBuf);

impl TempTree {
    fn new() -> Self {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let p = base.join(format!("collector-churn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("kubepods.slice")).expect("mkdir");
        Self(p)
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gauge(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

struct Live {
    dir: PathBuf,
    key: OwnerKey,
    until: u64,
}

#[test]
fn a_day_of_churn_keeps_known_workloads_and_map_occupancy_flat() {
    const HARVEST: Duration = Duration::from_secs(10);
    const DAY: u64 = 86_400;
    const WORKLOADS: u64 = 10_000;
    const LIFETIME: u64 = 60;
    const MAX_WORKLOADS: usize = 100;

    let tree = TempTree::new();
    let map = Shared::default();
    let metrics = Arc::new(Metrics::new(MAX_WORKLOADS));
    let identity = IdentityResolver::new(Some(tree.0.clone()), PathBuf::from("/nonexistent-proc"));
    // 10 s × 6 windows (fewer evaluations over a simulated day than the default 1 s × 30), and
    // a workload idle for 5 windows (5 min, as with the defaults) is forgotten.
    let config = VerdictConfig {
        geometry: Geometry {
            bucket: Duration::from_secs(10),
            count: 6,
        },
        expire_windows: 5,
        ..VerdictConfig::default()
    };
    let engine = Engine::new(config, 1, Some(metrics.verdict.clone()));
    let mut agg = Aggregator::new(
        map.clone(),
        metrics.clone(),
        identity,
        RouteTable::new(&[], 10),
    )
    .with_verdicts(engine);

    let t0 = Instant::now();
    let mut started = 0u64;
    let mut live: Vec<Live> = Vec::new();
    let (mut max_map, mut max_known, mut max_live) = (0usize, 0i64, 0usize);
    let mut first_capped_at: Option<u64> = None;
    let mut now_s = 0u64;
    // A day, then the expiry delay for the last pods.
    while now_s < DAY + 600 {
        // A new pod every 8.64 s of simulated time on average. Pods due by now start: a cgroup under the kubelet root, traffic from the cgroup
        // (tgid 0: e.g. sockets whose owner the kernel did not know).
        while started * DAY / WORKLOADS <= now_s && started < WORKLOADS {
            let uid = format!("00000000-0000-4000-8000-{started:012x}");
            let dir = tree
                .0
                .join("kubepods.slice")
                .join(format!("kubepods-pod{}.slice", uid.replace('-', "_")));
            std::fs::create_dir(&dir).expect("mkdir pod");
            let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).expect("stat"));
            live.push(Live {
                dir,
                key: OwnerKey {
                    cgroup_id: ino,
                    tgid: 0,
                    _pad: 0,
                },
                until: now_s + LIFETIME,
            });
            started += 1;
        }
        for l in &live {
            map.map().send(l.key, 100);
        }
        // Pods past their lifetime end: the kubelet removes their cgroup; the kernel keeps
        // their keys until userspace deletes them.
        live.retain(|l| {
            if l.until <= now_s {
                std::fs::remove_dir(&l.dir).expect("rmdir pod");
                false
            } else {
                true
            }
        });
        agg.harvest(t0 + Duration::from_secs(now_s));
        // Once a simulated minute: rendering is the slow part.
        if now_s.is_multiple_of(60) {
            let text = metrics.render();
            max_known = max_known.max(gauge(&text, "collector_workloads"));
            if gauge(&text, "collector_workloads_capped_total") > 0 && first_capped_at.is_none() {
                first_capped_at = Some(now_s);
            }
        }
        max_map = max_map.max(map.map().tcp.len());
        max_live = max_live.max(live.len());
        now_s += HARVEST.as_secs();
    }
    println!(
        "churn: {started} pods over a simulated day; at most {max_live} alive at once, \
         {max_known} known label sets, {max_map} TCP_STATS keys"
    );
    assert_eq!(started, WORKLOADS);
    assert_eq!(
        first_capped_at, None,
        "a new pod landed in overflow although old ones had gone (known never shrinks)"
    );
    // Alive + those within the expiry delay (5 min after their last traffic).
    assert!(
        max_known <= 60,
        "known workloads grew to {max_known} (alive at most {max_live})"
    );
    // Alive + keys of gone cgroups waiting for their last delta.
    assert!(
        max_map <= max_live + 10,
        "TCP_STATS grew to {max_map} keys (alive at most {max_live})"
    );
    let text = metrics.render();
    let pods = text
        .lines()
        .filter(|l| l.starts_with("collector_tcp_sent_bytes_total{") && l.contains("kind=\"pod\""))
        .count();
    assert!(pods <= 60, "{pods} pod series left at the end of the day");
}

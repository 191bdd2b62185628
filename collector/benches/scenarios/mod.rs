//! Fixed, seeded workloads for the userspace hot path, shared by the criterion benchmarks
//! (`micro.rs`) and the callgrind driver (`hotpath.rs`) so both measure the same work.
//!
//! Every fixture separates building (records, workloads, kernel-map snapshots: not measured)
//! from the step that is measured. Sizes are what a busy node sees: thousands of HTTP records
//! per second from ~100 workloads, harvests of ~1,000 owner keys, verdicts and `/metrics` for
//! 100–1,000 workloads. Only public items of the collector crate are used, the way the daemon
//! wires them (`app.rs`).

use std::{
    hint::black_box,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use collector::{
    aggregate::{Aggregator, StatsSource, http::RouteTable},
    config::{DEFAULT_MAX_ROUTES, DEFAULT_MAX_WORKLOADS, DEFAULT_PROBE_PATHS},
    events::{Event, decode::decode},
    export::{
        Metrics,
        http::{OutcomeLabels, RequestLabels},
        prometheus::WorkloadLabels,
        verdict::{ReasonGaugeLabels, StateLabels},
    },
    identity::{IdentityResolver, Workload, WorkloadKind},
    verdict::{
        Engine, VerdictConfig,
        rules::{ReasonCode, State},
    },
};
use collector_common::{
    event::{EVENT_VERSION, EventHeader, EventKind},
    http::{HttpCounts, HttpEvent, flags},
    maps::KernelDrop,
    process::{ExecEvent, ProcessEvent},
    tcp::{OwnerKey, TcpStats},
};

/// SplitMix64: a fixed seed gives the same records on every run and machine, which the
/// callgrind gate needs (instruction counts must only move when the code does).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for picking fixtures (n is small).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent` %.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Go 1.22+ mux patterns (what `Request.Pattern` carries) of a typical API service.
const PATTERNS: [&str; 8] = [
    "GET /api/v1/items/{id}",
    "GET /api/v1/items",
    "POST /api/v1/items",
    "PUT /api/v1/items/{id}",
    "GET /api/v1/users/{id}/orders",
    "DELETE /api/v1/items/{id}",
    "GET /static/",
    "GET /",
];

// ---------------------------------------------------------------------------------------------
// Decoding

/// Raw ring-buffer records, back to back at 8-byte aligned offsets as the ring buffer hands
/// them out.
pub struct Records {
    buf: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

fn push_record<T: aya::Pod>(r: &mut Records, v: &T) {
    // SAFETY: T is Pod (`#[repr(C)]` with explicit padding fields, all initialised), so its
    // bytes are plain data; the slice lives only for this copy.
    let bytes =
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) };
    let start = r.buf.len();
    r.buf.extend_from_slice(bytes);
    r.spans.push((start, r.buf.len()));
    r.buf.resize(r.buf.len().next_multiple_of(8), 0);
}

fn header(kind: EventKind, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u16,
        version: EVENT_VERSION,
        _pad: 0,
        ts_ns,
    }
}

fn comm_of(name: &str) -> [u8; 16] {
    let mut comm = [0u8; 16];
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name.as_bytes()[..n]);
    comm
}

/// One HTTP record as the kernel writes it: a pattern (Go ≥ 1.23) or, for older Go, the raw
/// path with an identifier in it; statuses mostly 2xx, 0 when the handler wrote none.
fn http_record(rng: &mut Rng, tgid: u32, cgroup_id: u64, ts_ns: u64) -> HttpEvent {
    let mut ev = HttpEvent {
        header: header(EventKind::Http, ts_ns),
        tgid,
        cgroup_id,
        duration_ns: 50_000 + rng.below(40_000_000),
        ..HttpEvent::default()
    };
    let (method, route, pattern) = if rng.percent(5) {
        // Kubelet probes: raw path, never a pattern in this service.
        ("GET", "/healthz".to_string(), false)
    } else if rng.percent(80) {
        let p = PATTERNS[rng.below(PATTERNS.len() as u64) as usize];
        let method = p.split_once(' ').map_or("GET", |(m, _)| m);
        (method, p.to_string(), true)
    } else {
        (
            "GET",
            format!("/api/v1/items/{}", rng.below(1_000_000)),
            false,
        )
    };
    ev.status = match rng.below(100) {
        0..=79 => 200,
        80..=89 => 0,
        90..=94 => 404,
        95..=97 => 201,
        _ => 500,
    };
    if pattern {
        ev.flags |= flags::PATTERN;
    }
    if rng.below(1_000) == 0 {
        ev.flags |= flags::PANICKED;
    }
    ev.method[..method.len()].copy_from_slice(method.as_bytes());
    ev.method_len = method.len() as u8;
    ev.route[..route.len()].copy_from_slice(route.as_bytes());
    ev.route_len = route.len() as u16;
    ev
}

impl Records {
    /// `n` records: 97 % HTTP requests, 2 % process announcements, 1 % exec notices (what the
    /// ring buffer carries on a node serving HTTP).
    pub fn new(n: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut r = Records {
            buf: Vec::with_capacity(n * 192),
            spans: Vec::with_capacity(n),
        };
        for i in 0..n {
            let ts = 1_000_000 * i as u64;
            let tgid = 1_000 + rng.below(100) as u32;
            let cgroup_id = 10_000 + u64::from(tgid);
            match rng.below(100) {
                0 => push_record(
                    &mut r,
                    &ExecEvent {
                        header: header(EventKind::Exec, ts),
                        tgid,
                        _pad: 0,
                    },
                ),
                1..=2 => push_record(
                    &mut r,
                    &ProcessEvent {
                        header: header(EventKind::Process, ts),
                        tgid,
                        _pad: 0,
                        cgroup_id,
                        comm: comm_of("api-server"),
                    },
                ),
                _ => push_record(&mut r, &http_record(&mut rng, tgid, cgroup_id, ts)),
            }
        }
        r
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Decodes every record; returns how many decoded (all of them: they are valid).
    pub fn decode_all(&self) -> usize {
        let mut ok = 0;
        for &(a, b) in &self.spans {
            if let Ok(ev) = decode(&self.buf[a..b]) {
                black_box(ev);
                ok += 1;
            }
        }
        ok
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads: a cgroup2-like tree of kubepods directories, so identities are resolved exactly as
// on a Kubernetes node (cgroup id = directory inode → path → pod UID + container id).

struct CgroupTree {
    root: PathBuf,
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp harms nothing.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn hex(rng: &mut Rng, digits: usize) -> String {
    let mut s = String::with_capacity(digits + 16);
    while s.len() < digits {
        s.push_str(&format!("{:016x}", rng.next_u64()));
    }
    s.truncate(digits);
    s
}

/// A pod UID, as the kubelet writes it (dashes) and as systemd escapes it (underscores).
fn pod_uid(rng: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-a{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 3),
        hex(rng, 3),
        hex(rng, 12)
    )
}

/// Makes `n` pod cgroups (one container each) under a fresh directory; returns the tree and
/// each pod's cgroup id.
fn pod_cgroups(n: usize, tag: &str, rng: &mut Rng) -> (CgroupTree, Vec<u64>) {
    let root = std::env::temp_dir().join(format!(
        "collector-bench-{tag}-{}-{}",
        std::process::id(),
        rng.next_u64()
    ));
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let uid = pod_uid(rng).replace('-', "_");
        let leaf = root.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{}.scope",
            hex(rng, 64)
        ));
        std::fs::create_dir_all(&leaf).expect("creating a benchmark cgroup directory");
        ids.push(std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(&leaf).expect("stat of a benchmark cgroup directory"),
        ));
    }
    (CgroupTree { root }, ids)
}

/// A synthetic pod workload (one container), as identity resolution names it.
fn pod_workload(rng: &mut Rng) -> Workload {
    let uid = pod_uid(rng);
    Workload {
        kind: WorkloadKind::Pod,
        name: uid.clone(),
        pod_uid: Some(uid),
        container_id: Some(hex(rng, 64)),
        kubernetes: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregation

/// What the fake kernel maps return at the next harvest; filled outside the measurement.
#[derive(Default)]
struct Pending {
    tcp: Vec<(OwnerKey, TcpStats)>,
    http: Vec<(OwnerKey, HttpCounts)>,
    drops: Vec<(KernelDrop, Vec<u64>)>,
}

/// Kernel maps stand-in: hands out prepared snapshots, so the harvest measured is the
/// aggregator's work, not map reads (syscalls, which callgrind does not see anyway).
pub struct FakeMaps(Arc<Mutex<Pending>>);

impl FakeMaps {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StatsSource for FakeMaps {
    fn read_tcp(&mut self) -> Vec<(OwnerKey, TcpStats)> {
        std::mem::take(&mut self.pending().tcp)
    }
    fn remove_tcp(&mut self, _: &OwnerKey) {}
    fn read_http(&mut self) -> Vec<(OwnerKey, HttpCounts)> {
        std::mem::take(&mut self.pending().http)
    }
    fn remove_http(&mut self, _: &OwnerKey) {}
    fn read_drops(&mut self) -> Vec<(KernelDrop, Vec<u64>)> {
        std::mem::take(&mut self.pending().drops)
    }
}

/// The aggregator as `app.rs` builds it (verdict engine with metrics, default probe paths and
/// route cap), over `workloads` pods with one serving process each.
pub struct Aggregation {
    agg: Aggregator<FakeMaps>,
    pending: Arc<Mutex<Pending>>,
    keys: Vec<OwnerKey>,
    tcp: Vec<TcpStats>,
    http: Vec<HttpCounts>,
    rng: Rng,
    now: Instant,
    _metrics: Arc<Metrics>,
    _tree: CgroupTree,
}

impl Aggregation {
    pub fn new(workloads: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let (tree, ids) = pod_cgroups(workloads, "agg", &mut rng);
        let metrics = Arc::new(Metrics::new(DEFAULT_MAX_WORKLOADS));
        let identity =
            IdentityResolver::new(Some(tree.root.clone()), PathBuf::from("/nonexistent-proc"));
        let probe_paths: Vec<String> = DEFAULT_PROBE_PATHS.iter().map(|p| p.to_string()).collect();
        let engine = Engine::new(VerdictConfig::default(), 1, Some(metrics.verdict.clone()));
        let pending = Arc::new(Mutex::new(Pending::default()));
        let agg = Aggregator::new(
            FakeMaps(pending.clone()),
            metrics.clone(),
            identity,
            RouteTable::new(&probe_paths, DEFAULT_MAX_ROUTES),
        )
        .with_verdicts(engine);
        let keys: Vec<OwnerKey> = ids
            .iter()
            .enumerate()
            .map(|(i, &cgroup_id)| OwnerKey {
                cgroup_id,
                tgid: 10_000 + i as u32,
                _pad: 0,
            })
            .collect();
        let mut a = Self {
            agg,
            pending,
            tcp: vec![TcpStats::default(); keys.len()],
            http: vec![HttpCounts::default(); keys.len()],
            keys,
            rng,
            // One instant for the whole run: every harvest and record falls in the verdict
            // engine's first bucket, so no evaluation runs inside these measurements.
            now: Instant::now(),
            _metrics: metrics,
            _tree: tree,
        };
        // Steady state: identities resolved, label sets and series created, routes known.
        let warm = a.requests(20 * a.keys.len());
        a.feed(warm);
        a.prepare_harvest();
        a.harvest();
        a
    }

    /// `n` decoded HTTP records spread over the workloads (built, not measured).
    pub fn requests(&mut self, n: usize) -> Vec<Event> {
        let mut records = Records {
            buf: Vec::with_capacity(n * 192),
            spans: Vec::with_capacity(n),
        };
        for i in 0..n {
            let k = self.keys[self.rng.below(self.keys.len() as u64) as usize];
            let rec = http_record(&mut self.rng, k.tgid, k.cgroup_id, i as u64);
            push_record(&mut records, &rec);
        }
        records
            .spans
            .iter()
            .map(|&(a, b)| decode(&records.buf[a..b]).expect("valid benchmark record"))
            .collect()
    }

    /// Per-record work: every record through `Aggregator::on_event` (measured).
    pub fn feed(&mut self, events: Vec<Event>) {
        // Batches as the reader sends them (`events::batch::BATCH_BYTES` of records), each
        // ended as `Aggregator::run` ends it: the verdict inputs handed over.
        let per_batch = collector::events::batch::BATCH_BYTES / (4 + size_of::<HttpEvent>());
        for (i, ev) in events.into_iter().enumerate() {
            self.agg.on_event(ev, self.now);
            if (i + 1) % per_batch == 0 {
                self.agg.end_batch(self.now);
            }
        }
        self.agg.end_batch(self.now);
    }

    /// Next cumulative kernel counters: every key sent something; half of them serve HTTP
    /// (built, not measured).
    pub fn prepare_harvest(&mut self) {
        let rng = &mut self.rng;
        for (i, t) in self.tcp.iter_mut().enumerate() {
            t.accumulate(&TcpStats {
                bytes_sent: 1_000 + rng.below(1_000_000),
                send_calls: 10 + rng.below(1_000),
                retransmit_segs: rng.below(3),
                resets_received: u64::from(rng.percent(2)),
                active_opens: rng.below(5),
                passive_opens: rng.below(20),
                closes: rng.below(20),
                send_would_block: u64::from(rng.percent(5)),
                connects_refused: u64::from(i % 50 == 0),
                ..TcpStats::default()
            });
        }
        for (i, h) in self.http.iter_mut().enumerate() {
            if i % 2 == 1 {
                continue;
            }
            let ok = 10 + rng.below(500);
            let not_found = rng.below(10);
            let failed = rng.below(3);
            h.accumulate(&HttpCounts {
                requests: ok + not_found + failed,
                by_class: [0, ok, 0, not_found, failed],
                ..HttpCounts::default()
            });
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.tcp = self
            .keys
            .iter()
            .copied()
            .zip(self.tcp.iter().copied())
            .collect();
        p.http = self
            .keys
            .iter()
            .copied()
            .zip(self.http.iter().copied())
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, kv)| kv)
            .collect();
        p.drops = KernelDrop::ALL.iter().map(|d| (*d, vec![0, 0])).collect();
    }

    /// Per-harvest work: deltas, per-workload counters, verdict inputs (measured).
    pub fn harvest(&mut self) {
        self.agg.harvest(self.now);
    }
}

// ---------------------------------------------------------------------------------------------
// Verdicts

/// The verdict engine with default windows (10 s × 6) over `workloads` workloads: 70 %
/// healthy HTTP services, 10 % failing with 5xx, 10 % slow, 10 % TCP-only (unknown).
pub struct Verdicts {
    engine: Engine,
    workloads: Vec<WorkloadLabels>,
    rng: Rng,
    t0: Instant,
    epoch: u64,
    _metrics: Metrics,
}

/// The engine's own bucket: one measured `evaluate` is one evaluation (with 10 s here and 1 s
/// buckets in the engine, each call caught up ten).
const BUCKET: Duration = collector::verdict::DEFAULT_BUCKET;
/// Fixed wall clock, so verdict timestamps (formatted per workload) are the same every run.
const WALL: Duration = Duration::from_secs(1_795_325_061);

impl Verdicts {
    pub fn new(workloads: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let metrics = Metrics::new(DEFAULT_MAX_WORKLOADS);
        let engine = Engine::new(VerdictConfig::default(), 1, Some(metrics.verdict.clone()));
        let workloads = (0..workloads)
            .map(|_| WorkloadLabels::from(&pod_workload(&mut rng)))
            .collect();
        let mut v = Self {
            engine,
            workloads,
            rng,
            t0: Instant::now(),
            epoch: 0,
            _metrics: metrics,
        };
        v.engine.tick(v.t0, SystemTime::UNIX_EPOCH + WALL);
        // A full window of history: states settled through hysteresis, series created.
        for _ in 0..VerdictConfig::default().geometry.count {
            v.fill_bucket();
            v.evaluate();
        }
        v
    }

    /// One bucket of inputs for every workload (not measured).
    pub fn fill_bucket(&mut self) {
        let now = self.t0 + BUCKET * self.epoch as u32 + BUCKET / 2;
        for (i, w) in self.workloads.iter().enumerate() {
            let profile = i % 10;
            if profile != 9 {
                let total = 500 + self.rng.below(200);
                let r5xx = if profile == 7 {
                    total / 5
                } else {
                    self.rng.below(2)
                };
                self.engine.on_http_counts(
                    w,
                    collector::verdict::HttpDelta {
                        total,
                        r5xx,
                        failed: 0,
                        lost: 0,
                    },
                    now,
                );
                // Records: a sample of real requests and the kubelet's probe.
                for _ in 0..20 {
                    let ms = if profile == 8 {
                        1_500 + self.rng.below(2_000)
                    } else {
                        1 + self.rng.below(60)
                    };
                    let d = Duration::from_millis(ms);
                    self.engine.on_request(w, false, Some(200), d, now);
                }
                let d = Duration::from_micros(300);
                self.engine.on_request(w, true, Some(200), d, now);
            }
            let tcp = TcpStats {
                send_calls: 1_000 + self.rng.below(4_000),
                retransmit_segs: self.rng.below(10),
                resets_received: self.rng.below(2),
                ..TcpStats::default()
            };
            self.engine.on_tcp(w, &tcp, now);
        }
    }

    /// Closes the open bucket: one evaluation of every workload (measured).
    pub fn evaluate(&mut self) {
        self.epoch += 1;
        let now = self.t0 + BUCKET * self.epoch as u32;
        self.engine.tick(
            now,
            SystemTime::UNIX_EPOCH + WALL + BUCKET * self.epoch as u32,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// The Prometheus registry after a while of traffic on `workloads` pods: TCP counters for all,
/// Go HTTP series (5 routes, 7 method/route/status label sets) for half of them, verdict
/// gauges for all.
pub struct Exposition {
    metrics: Metrics,
}

impl Exposition {
    pub fn new(workloads: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let metrics = Metrics::new(DEFAULT_MAX_WORKLOADS.max(workloads));
        for i in 0..workloads {
            let w = metrics.labels_for(&pod_workload(&mut rng));
            metrics.tcp.add(
                &w,
                &TcpStats {
                    bytes_sent: rng.below(1 << 40),
                    send_calls: rng.below(1 << 30),
                    retransmit_segs: rng.below(10_000),
                    resets_sent: rng.below(100),
                    resets_received: rng.below(100),
                    active_opens: rng.below(100_000),
                    passive_opens: rng.below(100_000),
                    closes: rng.below(100_000),
                    send_err_pipe: rng.below(3),
                    connects_refused: rng.below(3),
                    ..TcpStats::default()
                },
            );
            if i % 2 == 0 {
                let series = [
                    ("GET", "GET /api/v1/items/{id}", "200"),
                    ("GET", "GET /api/v1/items/{id}", "404"),
                    ("GET", "GET /api/v1/items", "200"),
                    ("POST", "POST /api/v1/items", "201"),
                    ("POST", "POST /api/v1/items", "500"),
                    ("PUT", "PUT /api/v1/items/{id}", "200"),
                    ("GET", "GET /", "200"),
                ];
                for (method, route, status) in series {
                    let labels = RequestLabels {
                        workload: w.clone(),
                        method,
                        route: route.into(),
                        status_code: status.into(),
                        error_type: "",
                    };
                    for _ in 0..10 {
                        let secs = (1 + rng.below(300)) as f64 / 1e3;
                        metrics.http.record(&labels, secs, false);
                    }
                }
                let probe = RequestLabels {
                    workload: w.clone(),
                    method: "GET",
                    route: "/healthz".into(),
                    status_code: "200".into(),
                    error_type: "",
                };
                metrics.http.record(&probe, 0.0003, true);
                for (outcome, v) in [("2xx", 70_000), ("4xx", 900), ("5xx", 40)] {
                    metrics
                        .http
                        .requests
                        .get_or_create(&OutcomeLabels {
                            workload: w.clone(),
                            outcome,
                        })
                        .inc_by(v + rng.below(1_000));
                }
            }
            let state = if i % 2 == 0 {
                State::Healthy
            } else {
                State::Unknown
            };
            for st in State::ALL {
                metrics
                    .verdict
                    .state
                    .get_or_create(&StateLabels {
                        workload: w.clone(),
                        state: st.as_str(),
                    })
                    .set(i64::from(st == state));
            }
            if state == State::Unknown {
                metrics
                    .verdict
                    .reason
                    .get_or_create(&ReasonGaugeLabels {
                        workload: w.clone(),
                        reason: ReasonCode::NotInstrumented.as_str(),
                    })
                    .set(1);
            }
        }
        Self { metrics }
    }

    /// Prometheus text 0.0.4 (what most scrapers ask for); returns its length (measured).
    pub fn render_text(&self) -> usize {
        black_box(self.metrics.render_text()).len()
    }

    /// OpenMetrics text; returns its length (measured).
    pub fn render_openmetrics(&self) -> usize {
        black_box(self.metrics.render()).len()
    }
}

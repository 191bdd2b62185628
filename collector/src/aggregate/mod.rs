//! The single owner of aggregate state: kernel map harvests, process announcements, identity.
//!
//! One task owns everything here (`Aggregator::run`); nothing else mutates it. Time is passed in
//! (`now`) so the logic is testable on a paused clock.

pub mod grpc;
pub mod harvest;
pub mod http;
pub mod sampling;
pub mod tcp;
pub mod templates;

use std::time::{Duration, Instant, SystemTime};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use collector_common::{
    http::HttpCounts,
    maps::KernelDrop,
    tcp::{OwnerKey, TcpStats},
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::events::Notice;
use crate::probes::{Signal, go_http::listing::GoServer, misses};
use crate::{
    events::{Event, HttpRequest},
    export::{
        Metrics,
        http::{OutcomeLabels, RequestLabels},
        prometheus::{KernelDropLabels, ProgramLabels, WorkloadLabels},
    },
    identity::IdentityResolver,
    verdict::{Engine, HttpDelta, SharedVerdicts, VerdictConfig},
};
use harvest::Harvester;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Where harvested counters come from: the kernel maps in production, a fake in tests.
pub trait StatsSource: Send {
    fn read_tcp(&mut self) -> Vec<(OwnerKey, TcpStats)>;
    fn remove_tcp(&mut self, key: &OwnerKey);
    fn read_http(&mut self) -> Vec<(OwnerKey, HttpCounts)>;
    fn remove_http(&mut self, key: &OwnerKey);
    /// Deletes `key` and returns its value at that moment, in one step, so nothing the kernel
    /// adds between a harvest's read and the deletion is lost (`harvest::take_per_cpu`).
    /// `None`: not there. The default removes and returns nothing: for sources whose values
    /// cannot change between `read_tcp` and the removal (fakes).
    fn take_tcp(&mut self, key: &OwnerKey) -> Option<TcpStats> {
        self.remove_tcp(key);
        None
    }
    /// [`take_tcp`](Self::take_tcp) for `HTTP_COUNTS`.
    fn take_http(&mut self, key: &OwnerKey) -> Option<HttpCounts> {
        self.remove_http(key);
        None
    }
    /// Per-CPU totals of each `KernelDrop` reason.
    fn read_drops(&mut self) -> Vec<(KernelDrop, Vec<u64>)>;
    /// Each attached tracing program's runs the kernel skipped (`probes::misses`), cumulative.
    fn read_program_misses(&mut self) -> Vec<(&'static str, Signal, u64)> {
        Vec::new()
    }
}

/// The kernel maps.
pub struct KernelMaps {
    pub tcp: PerCpuHashMap<MapData, OwnerKey, TcpStats>,
    pub http: PerCpuHashMap<MapData, OwnerKey, HttpCounts>,
    pub drops: PerCpuArray<MapData, u64>,
    pub programs: Vec<misses::Watched>,
}

/// Takes a key with its final value; where the kernel lacks the atomic command (before 5.14),
/// reads it and deletes it (the old race, logged once).
fn take_or_remove<V: aya::Pod + Default>(
    map: &mut PerCpuHashMap<MapData, OwnerKey, V>,
    key: &OwnerKey,
    add: impl Fn(&mut V, &V) + Copy,
) -> Option<V> {
    match harvest::take_per_cpu(map, key, add) {
        Ok(v) => v,
        Err(e) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                warn!(error = %e, "no atomic lookup-and-delete on this kernel: events that \
                    arrive while an idle key is deleted can be lost");
            });
            let last = map.get(key, 0).ok().map(|per_cpu| {
                let mut total = V::default();
                for v in per_cpu.iter() {
                    add(&mut total, v);
                }
                total
            });
            if let Err(e) = map.remove(key) {
                debug!(error = %e, "removing an idle key");
            }
            last
        }
    }
}

/// Sums the per-CPU values of every key of a per-CPU hash.
fn read_per_cpu<V: aya::Pod + Default>(
    map: &PerCpuHashMap<MapData, OwnerKey, V>,
    add: impl Fn(&mut V, &V),
) -> Vec<(OwnerKey, V)> {
    let mut out = Vec::new();
    for item in map.iter() {
        match item {
            Ok((key, per_cpu)) => {
                let mut total = V::default();
                for v in per_cpu.iter() {
                    add(&mut total, v);
                }
                out.push((key, total));
            }
            // A key deleted while iterating: it is picked up (or gone) next time.
            Err(e) => debug!(error = %e, "per-CPU map iteration"),
        }
    }
    out
}

impl StatsSource for KernelMaps {
    fn read_program_misses(&mut self) -> Vec<(&'static str, Signal, u64)> {
        self.programs
            .iter()
            .filter_map(|w| Some((w.prog, w.signal, w.recursion_misses()?)))
            .collect()
    }

    fn read_tcp(&mut self) -> Vec<(OwnerKey, TcpStats)> {
        read_per_cpu(&self.tcp, TcpStats::accumulate)
    }

    fn read_http(&mut self) -> Vec<(OwnerKey, HttpCounts)> {
        read_per_cpu(&self.http, HttpCounts::accumulate)
    }

    fn remove_http(&mut self, key: &OwnerKey) {
        if let Err(e) = self.http.remove(key) {
            debug!(error = %e, "removing idle HTTP_COUNTS key");
        }
    }

    fn remove_tcp(&mut self, key: &OwnerKey) {
        if let Err(e) = self.tcp.remove(key) {
            debug!(error = %e, "removing idle TCP_STATS key");
        }
    }

    fn take_tcp(&mut self, key: &OwnerKey) -> Option<TcpStats> {
        take_or_remove(&mut self.tcp, key, TcpStats::accumulate)
    }

    fn take_http(&mut self, key: &OwnerKey) -> Option<HttpCounts> {
        take_or_remove(&mut self.http, key, HttpCounts::accumulate)
    }

    fn read_drops(&mut self) -> Vec<(KernelDrop, Vec<u64>)> {
        KernelDrop::ALL
            .iter()
            .filter_map(|d| {
                self.drops
                    .get(&(*d as u32), 0)
                    .ok()
                    .map(|v| (*d, v.iter().copied().collect()))
            })
            .collect()
    }
}

/// Whether a kernel drop lost (part of) a signal, which makes verdicts unknown. Drops that only
/// degrade attribution are not: the event is still counted, charged to the task's cgroup,
/// `unattributed` or the overflow key (`cgroup_read_failed`, `owner_insert_failed`,
/// `stats_map_full`); they are exported all the same.
pub fn loses_signal(reason: KernelDrop) -> bool {
    match reason {
        KernelDrop::StatsLost | KernelDrop::StashMiss => true,
        // Counts never ride the ring: besides HTTP records (`RecordReserve`) it carries process
        // announcements (names, re-sent within 30 s) and exec notices (the 2 s rescan finds
        // what they missed). A full ring made every workload of the node unknown before.
        KernelDrop::RingReserve => false,
        // Charged to the owner of the connection (`HttpCounts::lost`): only that workload's
        // verdict is unknown.
        KernelDrop::WireDesync
        | KernelDrop::WireWindows
        | KernelDrop::WireBusy
        | KernelDrop::WireConnStore => false,
        // Go uprobes: untracked requests are charged to their server (`HttpCounts::lost`); a
        // request that began before the probes is no loss; one whose offsets slot changed is
        // still counted by outcome.
        KernelDrop::HttpInflightFull
        | KernelDrop::HttpInflightBudget
        | KernelDrop::HttpNoStart
        | KernelDrop::HttpNoOffsets => false,
        KernelDrop::StatsMapFull | KernelDrop::OwnerInsert | KernelDrop::CgroupRead => false,
        // A call whose return never ran: its bytes or retransmits are lost.
        KernelDrop::ReturnMissed => true,
        // Counted all the same, as unattributed.
        KernelDrop::NotFullSocket => false,
        // Counted by outcome all the same; the record's absence is the owner's `unrecorded`.
        KernelDrop::RecordReserve => false,
    }
}

pub struct Aggregator<S> {
    source: S,
    metrics: Arc<Metrics>,
    identity: IdentityResolver,
    tcp: Harvester<TcpStats>,
    http: Harvester<HttpCounts>,
    routes: http::RouteTable,
    /// Last per-CPU drop totals, to export deltas.
    drops_seen: Vec<(KernelDrop, Vec<u64>)>,
    /// Last skipped-run totals per program, to export deltas.
    misses_seen: HashMap<&'static str, u64>,
    /// Health verdicts: fed with what this task sees, evaluated when a bucket closes.
    verdict: Engine,
    sampler: Option<sampling::Sampler>,
    /// `Metrics::collector.records_lost` at the last harvest.
    records_lost_seen: u64,
    /// Go servers discovery found (what `/v1/go-http` lists): the instrumented ones are
    /// registered with the verdict engine at every harvest, so an idle one answers `unknown`
    /// (`no_traffic`).
    go_http: Option<Arc<Mutex<Vec<GoServer>>>>,
    /// Owner keys of the instrumented pids (read once per pid from /proc).
    go_owners: HashMap<u32, OwnerKey>,
    /// gRPC calls (grpc-go uprobes), when enabled.
    grpc: Option<grpc::GrpcAggregate>,
    /// What records resolve to, kept until the next harvest (see `RecordMemo`).
    memo: RecordMemo,
    /// `--go-http-uprobes auto`: Go discovery, told which processes serve requests the socket
    /// parser counts (`Notice::Served`), so their route templates can be learned; with when
    /// each process was last told.
    served: Option<(
        std::sync::mpsc::SyncSender<Notice>,
        HashMap<OwnerKey, Instant>,
    )>,
}

/// How often Go discovery is told again that a process serves requests (`Aggregator::served`):
/// its learning windows are minutes apart.
const SERVED_EVERY: Duration = Duration::from_secs(30);
/// Processes remembered as told (`Aggregator::served`) before the stale ones are dropped.
const SERVED_TOLD_MAX: usize = 4_096;

/// Per-record resolution, done once per harvest interval instead of once per record.
///
/// Why: resolving a record's workload (`identity::workload_of`, `Metrics::labels_for`), its
/// verdict entry and its Prometheus series means hashing and comparing label sets of eight
/// strings several times per record; perf at 15,000 records/s put two thirds of the
/// collector's CPU there. The memo keys on integers and the already normalised route, and
/// verdict inputs are handed over once per batch and series. It is dropped at every harvest:
/// identity changes (names from the API, a renamed process) show within a harvest interval as
/// the TCP counters' do, and no handle outlives a forgotten workload's series (forgetting
/// happens in the harvest).
#[derive(Default)]
struct RecordMemo {
    workloads: FastMap<OwnerKey, WorkloadMemo>,
    series: FastMap<SeriesKey, SeriesMemo>,
}

/// The memo's keys are integers and routes already bounded per workload (`RouteTable`), so a
/// fast seeded hash is enough: SipHash of the keys was 12 % of the per-record instructions.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct WorkloadMemo {
    labels: WorkloadLabels,
    /// Charged to overflow by `--max-workloads`: every record is a capped observation.
    capped: bool,
    /// This batch's per-request verdict inputs (`Aggregator::end_batch`).
    pending: Vec<crate::verdict::RequestInput>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    owner: OwnerKey,
    method: &'static str,
    route: String,
    outcome: crate::events::Outcome,
    probe: bool,
    capped: bool,
}

struct SeriesMemo {
    series: crate::export::http::RequestSeries,
    /// `collector_http_routes_capped` of the workload, when the route was capped.
    capped: Option<prometheus_client::metrics::counter::Counter>,
}

impl<S: StatsSource> Aggregator<S> {
    pub fn new(
        source: S,
        metrics: Arc<Metrics>,
        identity: IdentityResolver,
        routes: http::RouteTable,
    ) -> Self {
        Self {
            source,
            metrics,
            identity,
            tcp: Harvester::default(),
            http: Harvester::default(),
            routes,
            drops_seen: Vec::new(),
            misses_seen: HashMap::new(),
            verdict: Engine::new(VerdictConfig::default(), 1, None),
            sampler: None,
            records_lost_seen: 0,
            go_http: None,
            go_owners: HashMap::new(),
            grpc: None,
            memo: RecordMemo::default(),
            served: None,
        }
    }

    /// Tells Go discovery which processes serve requests (see `served`).
    pub fn with_served_notices(mut self, tx: std::sync::mpsc::SyncSender<Notice>) -> Self {
        self.served = Some((tx, HashMap::new()));
        self
    }

    /// A route template learned for a workload's plaintext requests (`Event::RouteLearned`).
    fn on_route_learned(&mut self, l: &crate::events::LearnedRoute, now: Instant) {
        let owner = OwnerKey {
            cgroup_id: l.cgroup_id,
            tgid: l.tgid,
            _pad: 0,
        };
        let (labels, _) = self
            .metrics
            .labels_or_capped(&self.identity.workload_of(&owner, now));
        if self.routes.learn(&labels.workload, &l.template, l.mux) {
            self.metrics.collector.http_routes_learned.inc();
        }
    }

    /// The first record of `owner` since the last harvest: Go discovery is told (at most every
    /// `SERVED_EVERY`) that it serves requests, off the per-record path.
    fn tell_served(&mut self, owner: OwnerKey, now: Instant) {
        let Some((tx, told)) = self.served.as_mut() else {
            return;
        };
        if told
            .get(&owner)
            .is_some_and(|t| now.saturating_duration_since(*t) < SERVED_EVERY)
        {
            return;
        }
        if told.len() >= SERVED_TOLD_MAX {
            told.retain(|_, t| now.saturating_duration_since(*t) < SERVED_EVERY);
        }
        told.insert(owner, now);
        // A full channel: told again after `SERVED_EVERY`.
        let _ = tx.try_send(Notice::Served(owner));
    }

    /// Counts gRPC calls (see `grpc`).
    pub fn with_grpc(mut self, grpc: grpc::GrpcAggregate) -> Self {
        self.grpc = Some(grpc);
        self
    }

    /// Registers the Go servers discovery instrumented as known workloads (see `go_http`).
    pub fn with_go_http(mut self, instrumented: Arc<Mutex<Vec<GoServer>>>) -> Self {
        self.go_http = Some(instrumented);
        self
    }

    /// Adapts the per-request record sampling to an event budget (see `sampling`).
    pub fn with_sampler(mut self, sampler: sampling::Sampler) -> Self {
        self.metrics
            .collector
            .http_sample_every
            .set(i64::from(sampler.current));
        self.sampler = Some(sampler);
        self
    }

    /// Replaces the verdict engine (configured windows, rules, sampling, metrics).
    pub fn with_verdicts(mut self, engine: Engine) -> Self {
        self.verdict = engine;
        self
    }

    /// The verdicts as of the last evaluation, for the API.
    pub fn verdicts(&self) -> SharedVerdicts {
        self.verdict.shared()
    }

    pub fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Process {
                tgid,
                cgroup_id,
                comm,
            } => {
                self.identity.observe_process(tgid, comm, now);
                // Known from now on, with or without traffic of its own: its verdict is
                // `unknown` with a reason until there is enough to judge.
                let key = OwnerKey {
                    cgroup_id,
                    tgid,
                    _pad: 0,
                };
                let labels = self
                    .metrics
                    .labels_for(&self.identity.workload_of(&key, now));
                self.verdict.register(&labels, false, now);
            }
            Event::Http(r) => self.on_request(r, now),
            Event::Grpc(c) => {
                if let Some(g) = self.grpc.as_mut() {
                    g.on_record(c, &mut self.identity, &self.metrics, now);
                }
            }
            Event::RouteLearned(l) => self.on_route_learned(&l, now),
            // Exec and unseen-server notices go to Go discovery, not here.
            Event::Exec { .. } | Event::Unseen(_) => {}
        }
    }

    /// One record: counted into its series at once; its verdict input waits for
    /// `end_batch` (records of one batch share their `now`).
    fn on_request(&mut self, r: HttpRequest, now: Instant) {
        if let Some(s) = self.sampler.as_mut() {
            s.on_record();
        }
        let owner = OwnerKey {
            cgroup_id: r.cgroup_id,
            tgid: r.tgid,
            _pad: 0,
        };
        if self.served.is_some() && !self.memo.workloads.contains_key(&owner) {
            self.tell_served(owner, now);
        }
        let workload = match self.memo.workloads.get_mut(&owner) {
            Some(w) => {
                if w.capped {
                    self.metrics.capped_observation();
                }
                w
            }
            None => {
                let (labels, capped) = self
                    .metrics
                    .labels_or_capped(&self.identity.workload_of(&owner, now));
                self.memo.workloads.entry(owner).or_insert(WorkloadMemo {
                    labels,
                    capped,
                    pending: Vec::new(),
                })
            }
        };
        let c = self.routes.classify(&workload.labels.workload, &r);
        let key = SeriesKey {
            owner,
            method: crate::export::http::normalize_method(&r.method),
            route: c.route,
            outcome: r.outcome,
            probe: c.probe,
            capped: c.capped,
        };
        let probe = key.probe;
        let m = match self.memo.series.get_mut(&key) {
            Some(m) => m,
            None => {
                let h = &self.metrics.http;
                let (status_code, error_type) = http::outcome_labels(r.outcome);
                let labels = RequestLabels {
                    workload: workload.labels.clone(),
                    method: key.method,
                    route: key.route.clone(),
                    status_code,
                    error_type,
                };
                let memo = SeriesMemo {
                    series: h.series(&labels, key.probe),
                    capped: key
                        .capped
                        .then(|| h.routes_capped.get_or_create(&labels.workload).clone()),
                };
                self.memo.series.entry(key).or_insert(memo)
            }
        };
        if let Some(c) = &m.capped {
            c.inc();
        }
        self.metrics
            .http
            .observe(&m.series, r.duration_ns as f64 / 1e9);
        workload.pending.push(crate::verdict::RequestInput {
            probe,
            status: match r.outcome {
                crate::events::Outcome::Completed { status } => Some(status),
                _ => None,
            },
            duration: Duration::from_nanos(r.duration_ns),
        });
    }

    /// Hands the batch's per-request verdict inputs to the engine: one lookup per workload.
    pub fn end_batch(&mut self, now: Instant) {
        if let Some(g) = self.grpc.as_mut() {
            g.end_batch(&mut self.verdict, now);
        }
        for w in self.memo.workloads.values_mut() {
            if w.pending.is_empty() {
                continue;
            }
            self.verdict.on_requests(&w.labels, &w.pending, now);
            w.pending.clear();
        }
    }

    /// Reads the kernel maps and exports what changed since the last harvest.
    pub fn harvest(&mut self, now: Instant) {
        self.end_batch(now);
        self.memo = RecordMemo::default();
        if let Some(next) = self.sampler.as_mut().and_then(|s| s.tick(now)) {
            self.metrics
                .collector
                .http_sample_every
                .set(i64::from(next));
            self.verdict.set_sample_every(next);
        }
        let current = self.source.read_tcp();
        let identity = &self.identity;
        // (cgroup, tgid 0) keys have no process to outlive: they go with their cgroup.
        let mut result = self.tcp.harvest_keys(&current, |k| match k.tgid {
            0 => identity.cgroup_gone(k.cgroup_id),
            tgid => !identity.process_alive(tgid),
        });
        // Deleted first, with what they counted since the read (see `harvest`).
        for key in &result.delete {
            let last = self.source.take_tcp(key);
            if let Some(d) = self.tcp.retire(key, last) {
                result.deltas.push((*key, d));
            }
        }
        for (key, delta) in &result.deltas {
            let workload = self.identity.workload_of(key, now);
            let labels = self.metrics.labels_for(&workload);
            self.metrics.tcp.add(&labels, delta);
            self.verdict.on_tcp(&labels, delta, now);
        }
        for key in &result.delete {
            if self.identity.cgroup_gone(key.cgroup_id) {
                self.identity.forget_cgroup(key.cgroup_id);
            }
        }
        self.harvest_http(now);
        if let Some(g) = self.grpc.as_mut() {
            g.harvest(&mut self.identity, &self.metrics, &mut self.verdict, now);
        }
        let mut lost = self.harvest_drops();
        self.harvest_program_misses();
        let records_lost = self
            .metrics
            .collector
            .records_lost
            .load(std::sync::atomic::Ordering::Relaxed);
        lost += records_lost.saturating_sub(self.records_lost_seen);
        self.records_lost_seen = records_lost;
        self.verdict.on_lost(lost, now);
        self.register_go_servers(now);
        self.verdict.tick(now, SystemTime::now());
        // Workloads the engine forgot give back their label set, series and routes, so the
        // known set follows the live workloads (container restarts are new workloads).
        for w in self.verdict.take_forgotten() {
            self.routes.forget(&w.workload);
            if let Some(g) = self.grpc.as_mut() {
                g.forget(&w);
            }
            self.metrics.forget(&w);
        }
        self.identity.expire(now);
        self.metrics.collector.harvests.inc();
    }

    /// Registers every instrumented Go server's workload with the verdict engine, keyed as
    /// the kernel keys its requests (`identity::IdentityResolver::owner_of_pid`).
    fn register_go_servers(&mut self, now: Instant) {
        let Some(state) = &self.go_http else {
            return;
        };
        let pids: Vec<u32> = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            // A skipped server's requests are not seen: registering it would claim they are.
            .filter(|s| s.is_instrumented())
            .flat_map(|s| s.pids().iter().copied())
            .collect();
        self.go_owners.retain(|pid, _| pids.contains(pid));
        for pid in pids {
            let key = match self.go_owners.get(&pid) {
                Some(k) => *k,
                None => {
                    let k = self.identity.owner_of_pid(pid);
                    self.go_owners.insert(pid, k);
                    k
                }
            };
            let labels = self
                .metrics
                .labels_for(&self.identity.workload_of(&key, now));
            self.verdict.register(&labels, true, now);
        }
    }

    fn harvest_http(&mut self, now: Instant) {
        let current = self.source.read_http();
        let identity = &self.identity;
        let mut result = self
            .http
            .harvest(&current, |tgid| identity.process_alive(tgid));
        for key in &result.delete {
            let last = self.source.take_http(key);
            if let Some(d) = self.http.retire(key, last) {
                result.deltas.push((*key, d));
            }
        }
        if let Some(s) = self.sampler.as_mut() {
            s.on_requests(result.deltas.iter().map(|(_, d)| d.requests).sum());
        }
        for (key, d) in &result.deltas {
            let workload = self
                .metrics
                .labels_for(&self.identity.workload_of(key, now));
            let h = &self.metrics.http;
            let outcomes = [
                ("1xx", d.by_class[0]),
                ("2xx", d.by_class[1]),
                ("3xx", d.by_class[2]),
                ("4xx", d.by_class[3]),
                ("5xx", d.by_class[4]),
                ("panic", d.panics),
                ("aborted", d.aborted),
                ("unobserved_protocol", d.unobserved),
            ];
            for (outcome, v) in outcomes {
                if v > 0 {
                    h.requests
                        .get_or_create(&OutcomeLabels {
                            workload: workload.clone(),
                            outcome,
                        })
                        .inc_by(v);
                }
            }
            self.verdict.on_http_counts(
                &workload,
                HttpDelta {
                    total: d.requests,
                    r5xx: d.by_class[4],
                    failed: d.panics + d.aborted,
                    lost: d.lost,
                },
                now,
            );
            if d.lost > 0 {
                h.lost.get_or_create(&workload).inc_by(d.lost);
            }
            if d.unrecorded > 0 {
                h.unrecorded.get_or_create(&workload).inc_by(d.unrecorded);
            }
        }
    }

    /// Exports kernel drop deltas; returns how many lost a signal (see `loses_signal`).
    fn harvest_drops(&mut self) -> u64 {
        let mut total = 0;
        let now = self.source.read_drops();
        for (reason, per_cpu) in &now {
            let prev = self
                .drops_seen
                .iter()
                .find(|(r, _)| r == reason)
                .map(|(_, v)| v.as_slice());
            for (cpu, v) in per_cpu.iter().enumerate() {
                let before = prev.and_then(|p| p.get(cpu)).copied().unwrap_or(0);
                let d = v.saturating_sub(before);
                if loses_signal(*reason) {
                    total += d;
                }
                if d > 0 {
                    if *reason == KernelDrop::RingReserve {
                        warn!(cpu, lost = d, "ring buffer full: events lost");
                    }
                    self.metrics
                        .collector
                        .kernel_drops
                        .get_or_create(&KernelDropLabels {
                            reason: reason.reason(),
                            cpu: cpu as u32,
                        })
                        .inc_by(d);
                }
            }
        }
        self.drops_seen = now;
        total
    }

    /// Exports the kernel's skipped runs of our programs. Not a verdict loss: a skipped run
    /// cannot be charged to any workload, and making every verdict of the node unknown for one
    /// missed retransmit is the global blindness `loses_signal` exists to avoid; the counter
    /// says how far the TCP totals of that signal may be short.
    fn harvest_program_misses(&mut self) {
        for (prog, signal, total) in self.source.read_program_misses() {
            let seen = self.misses_seen.entry(prog).or_insert(0);
            let d = total.saturating_sub(*seen);
            *seen = total;
            if d > 0 {
                debug!(prog, %signal, missed = d, "the kernel skipped runs of a program");
                self.metrics
                    .collector
                    .program_misses
                    .get_or_create(&ProgramLabels {
                        program: prog,
                        signal: signal.as_str(),
                    })
                    .inc_by(d);
            }
        }
    }

    /// Owner task loop: events as they come, a harvest every `interval`. Ends when the reader
    /// closes the channel (it stops first on shutdown), with a final harvest so nothing counted
    /// before SIGTERM is lost.
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<crate::events::batch::RecordBatch>,
        interval: Duration,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let metrics = self.metrics.clone();
        loop {
            tokio::select! {
                batch = batches.recv() => match batch {
                    // Records are decoded here, next to their use (`events::batch`).
                    Some(batch) => {
                        let now = Instant::now();
                        crate::events::batch::decode_batch(&batch, &metrics, |ev| {
                            self.on_event(ev, now)
                        });
                        self.end_batch(now);
                    }
                    None => break,
                },
                _ = tick.tick() => self.harvest(Instant::now()),
            }
        }
        self.harvest(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[derive(Default)]
    struct Fake {
        tcp: Vec<(OwnerKey, TcpStats)>,
        drops: Vec<(KernelDrop, Vec<u64>)>,
        misses: Vec<(&'static str, Signal, u64)>,
        removed: Vec<OwnerKey>,
    }
    impl StatsSource for &mut Fake {
        fn read_tcp(&mut self) -> Vec<(OwnerKey, TcpStats)> {
            self.tcp.clone()
        }
        fn remove_tcp(&mut self, key: &OwnerKey) {
            self.tcp.retain(|(k, _)| k != key);
            self.removed.push(*key);
        }
        fn read_http(&mut self) -> Vec<(OwnerKey, HttpCounts)> {
            Vec::new()
        }
        fn remove_http(&mut self, _: &OwnerKey) {}
        fn read_drops(&mut self) -> Vec<(KernelDrop, Vec<u64>)> {
            self.drops.clone()
        }
        fn read_program_misses(&mut self) -> Vec<(&'static str, Signal, u64)> {
            self.misses.clone()
        }
    }

    /// The kernel's cumulative skipped runs become exact counter deltas per program (a bug
    /// adding the total at every harvest gives 3 + 5 = 8 below); a program that skipped
    /// nothing has no series.
    #[test]
    fn skipped_runs_are_exported_per_program_as_deltas() {
        let mut fake = Fake {
            misses: vec![
                ("retrans_tp", Signal::TcpRetransmit, 3),
                ("state_tp", Signal::TcpState, 0),
            ],
            ..Default::default()
        };
        let metrics = Arc::new(Metrics::new(100));
        let identity = IdentityResolver::new(None, PathBuf::from("/nonexistent-proc"));
        let mut agg = Aggregator::new(
            &mut fake,
            metrics.clone(),
            identity,
            http::RouteTable::new(&[], 10),
        );
        let line = |n: u64| {
            format!(
                "collector_kernel_program_misses_total{{program=\"retrans_tp\",signal=\"tcp_retransmit\"}} {n}\n"
            )
        };
        let now = Instant::now();
        agg.harvest(now);
        assert!(metrics.render().contains(&line(3)), "{}", metrics.render());
        agg.source.misses[0].2 = 5;
        agg.harvest(now + Duration::from_secs(1));
        let text = metrics.render();
        assert!(text.contains(&line(5)), "{text}");
        assert!(!text.contains("program=\"state_tp\""), "{text}");
    }

    #[test]
    fn only_drops_that_lose_a_signal_make_verdicts_unknown() {
        let lossy: Vec<&str> = KernelDrop::ALL
            .iter()
            .filter(|d| loses_signal(**d))
            .map(|d| d.reason())
            .collect();
        assert!(lossy.contains(&"stats_lost"));
        assert!(!lossy.contains(&"ring_reserve_failed"));
        assert!(!lossy.contains(&"http_record_reserve_failed"));
        assert!(!lossy.contains(&"cgroup_read_failed"));
        assert!(!lossy.contains(&"stats_map_full"));
    }

    /// A 1 ms `GET /a` answered 200 by process `tgid` in cgroup 1.
    fn get_a(tgid: u32) -> Event {
        Event::Http(HttpRequest {
            tgid,
            cgroup_id: 1,
            duration_ns: 1_000_000,
            method: "GET".into(),
            route: "/a".into(),
            route_is_pattern: false,
            outcome: crate::events::Outcome::Completed { status: 200 },
        })
    }

    /// Catches the record memo kept past a harvest: a workload's records would stay on the
    /// labels resolved at its first record forever (a renamed process, a pod the API names
    /// later).
    #[test]
    fn records_follow_identity_changes_from_the_next_harvest() {
        let mut fake = Fake::default();
        let metrics = Arc::new(Metrics::new(100));
        let identity = IdentityResolver::new(None, PathBuf::from("/nonexistent-proc"));
        let mut agg = Aggregator::new(
            &mut fake,
            metrics.clone(),
            identity,
            http::RouteTable::new(&[], 10),
        );
        let now = Instant::now();
        let announce = |comm: &str| Event::Process {
            tgid: 99,
            cgroup_id: 1,
            comm: comm.into(),
        };
        let request = || get_a(99);
        agg.on_event(announce("first"), now);
        for _ in 0..3 {
            agg.on_event(request(), now);
        }
        agg.end_batch(now);
        agg.on_event(announce("second"), now);
        // Until the next harvest, the name resolved for the first record.
        agg.on_event(request(), now);
        agg.harvest(now);
        for _ in 0..2 {
            agg.on_event(request(), now);
        }
        agg.end_batch(now);
        let text = metrics.render_text();
        let count = |name: &str| {
            let series = format!(
                "http_server_request_duration_seconds_count{{workload_kind=\"process_comm\",workload=\"{name}\",pod_uid=\"\",container_id=\"\",method=\"GET\",route=\"/a\",status_code=\"200\",error_type=\"\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(
            (count("first"), count("second")),
            (Some(4), Some(2)),
            "{text}"
        );
    }

    /// Catches the record memo counting a workload charged to overflow once per harvest
    /// instead of once per record (`collector_workloads_capped_total` counts observations).
    #[test]
    fn every_record_of_a_capped_workload_counts_as_capped() {
        let mut fake = Fake::default();
        let metrics = Arc::new(Metrics::new(1));
        let identity = IdentityResolver::new(None, PathBuf::from("/nonexistent-proc"));
        let mut agg = Aggregator::new(
            &mut fake,
            metrics.clone(),
            identity,
            http::RouteTable::new(&[], 10),
        );
        let now = Instant::now();
        for (tgid, comm) in [(98, "admitted"), (99, "capped")] {
            agg.on_event(
                Event::Process {
                    tgid,
                    cgroup_id: 1,
                    comm: comm.into(),
                },
                now,
            );
        }
        let before = metrics.collector.workloads_capped.get();
        for _ in 0..3 {
            agg.on_event(get_a(99), now);
        }
        agg.end_batch(now);
        assert_eq!(metrics.collector.workloads_capped.get() - before, 3);
    }

    #[test]
    fn harvest_exports_process_workloads_and_per_cpu_drops() {
        let mut fake = Fake::default();
        let metrics = Arc::new(Metrics::new(100));
        let identity = IdentityResolver::new(None, PathBuf::from("/nonexistent-proc"));
        let key = OwnerKey {
            cgroup_id: 1,
            tgid: 99,
            _pad: 0,
        };
        fake.tcp = vec![(
            key,
            TcpStats {
                bytes_sent: 1234,
                retransmit_segs: 3,
                ..Default::default()
            },
        )];
        fake.drops = vec![(KernelDrop::RingReserve, vec![0, 2])];
        let mut agg = Aggregator::new(
            &mut fake,
            metrics.clone(),
            identity,
            http::RouteTable::new(&[], 10),
        );
        let now = Instant::now();
        agg.on_event(
            Event::Process {
                tgid: 99,
                cgroup_id: 1,
                comm: "server".into(),
            },
            now,
        );
        agg.harvest(now);
        let text = metrics.render();
        assert!(
            text.contains(r#"collector_tcp_sent_bytes_total{workload_kind="process_comm",workload="server",pod_uid="",container_id=""} 1234"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"collector_kernel_drops_total{reason="ring_reserve_failed",cpu="1"} 2"#
            ),
            "{text}"
        );
        // Dead process, idle: deleted after the idle threshold, totals unchanged.
        for i in 0..3 {
            agg.harvest(now + Duration::from_secs(i + 1));
        }
        drop(agg);
        assert_eq!(fake.removed, vec![key]);
        let text = metrics.render();
        assert!(text.contains("collector_tcp_retransmitted_segments_total{workload_kind=\"process_comm\",workload=\"server\",pod_uid=\"\",container_id=\"\"} 3"), "{text}");
    }
}

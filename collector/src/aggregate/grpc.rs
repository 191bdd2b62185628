//! gRPC calls: exact counts harvested from the kernel (`GRPC_COUNTS`), durations from the
//! per-call records, and the adaptive sampling of those records (`GRPC_SAMPLING`).
//!
//! Owned by the aggregator task like everything else aggregated; identity comes from its
//! resolver. Health checks (`grpc.health.v1.Health`) are counted apart and get no duration
//! series: they are probe traffic, not evidence about the service.
//!
//! Verdicts: a call ending with one of the configured server-error codes (`--grpc-error-codes`)
//! is the workload's failure as a 5xx is (`HttpDelta::r5xx`); other codes answer the client's
//! request. Health-check records are the workload's probes: OK ones that pass while real calls
//! fail flag `probe_mismatch`, as a lying `/healthz` does. (A health check answering
//! NOT_SERVING carries status OK and the state in its body, which is not read: it counts as a
//! passing probe.)

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use aya::maps::{MapData, PerCpuHashMap};
use collector_common::{
    grpc::{GrpcCountKey, GrpcCounts, flags},
    tcp::OwnerKey,
};
use tracing::debug;

use super::sampling::Sampler;
use crate::verdict::{Engine, HttpDelta, RequestInput};
use crate::{
    events::GrpcCall,
    export::{
        Metrics,
        grpc::{RpcLabels, RpcSeries},
        prometheus::WorkloadLabels,
    },
    identity::IdentityResolver,
    probes::go_grpc::{HEALTH_SERVICE, split_method},
};

/// Label value for methods past the cap, cut or unparsable (OTel's value for unknown methods).
pub const OTHER: &str = "_OTHER";

/// The counters' source: the kernel map, or a fake in tests.
pub trait GrpcSource: Send {
    /// Every key with its per-CPU values summed.
    fn read(&mut self) -> Vec<(GrpcCountKey, GrpcCounts)>;
    fn remove(&mut self, key: &GrpcCountKey);
}

impl GrpcSource for PerCpuHashMap<MapData, GrpcCountKey, GrpcCounts> {
    fn read(&mut self) -> Vec<(GrpcCountKey, GrpcCounts)> {
        let mut out = Vec::new();
        for item in self.iter() {
            match item {
                Ok((k, per_cpu)) => {
                    let mut total = GrpcCounts::default();
                    for v in per_cpu.iter() {
                        GrpcCounts::accumulate(&mut total, v);
                    }
                    out.push((k, total));
                }
                Err(e) => debug!(error = %e, "GRPC_COUNTS iteration"),
            }
        }
        out
    }

    fn remove(&mut self, key: &GrpcCountKey) {
        if let Err(e) = PerCpuHashMap::remove(self, key) {
            debug!(error = %e, "removing a GRPC_COUNTS key");
        }
    }
}

pub struct GrpcAggregate {
    source: Box<dyn GrpcSource>,
    /// Cumulative totals at the last harvest.
    seen: HashMap<GrpcCountKey, GrpcCounts>,
    /// (service, method) pairs with series, per workload (capped at `max_methods`).
    methods: HashMap<WorkloadLabels, HashSet<(String, String)>>,
    max_methods: usize,
    sampler: Option<Sampler>,
    /// Codes that are server failures in verdicts.
    error_codes: Vec<u16>,
    /// What calls resolve to, until the next harvest (as `aggregate::RecordMemo` for HTTP).
    memo: HashMap<CallKey, CallMemo, foldhash::fast::RandomState>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CallKey {
    owner: OwnerKey,
    method: String,
    truncated: bool,
    code: u16,
}

struct CallMemo {
    workload: WorkloadLabels,
    probe: bool,
    /// Charged to overflow by `--max-workloads` (each call a capped observation).
    workload_capped: bool,
    /// The call's status in verdicts (`verdict_status`).
    status: u16,
    /// None for health checks (probe traffic has no duration series).
    series: Option<RpcSeries>,
    /// `rpc_server_methods_capped` of the workload, when the method was capped.
    capped: Option<prometheus_client::metrics::counter::Counter>,
    /// This batch's call durations, for the verdict engine.
    pending: Vec<std::time::Duration>,
}

impl GrpcAggregate {
    pub fn new(
        source: Box<dyn GrpcSource>,
        max_methods: usize,
        sampler: Option<Sampler>,
        error_codes: Vec<u16>,
    ) -> Self {
        Self {
            source,
            seen: HashMap::new(),
            methods: HashMap::new(),
            max_methods,
            sampler,
            error_codes,
            memo: HashMap::default(),
        }
    }

    /// The HTTP status a call stands for in verdicts: 200 OK, 500 a server failure, 400 any
    /// other code (the client's request answered).
    fn verdict_status(&self, code: u16) -> u16 {
        match code {
            0 => 200,
            c if self.error_codes.contains(&c) => 500,
            _ => 400,
        }
    }

    /// The labels of a call: the method split into service and method, capped per workload.
    fn labels(
        &mut self,
        workload: WorkloadLabels,
        method: &str,
        truncated: bool,
        code: u16,
        metrics: &Metrics,
    ) -> (RpcLabels, bool, bool) {
        let (service, name) = match split_method(method) {
            Some((s, m)) if !truncated => (s.to_owned(), m.to_owned()),
            _ => (OTHER.to_owned(), OTHER.to_owned()),
        };
        let probe = service == HEALTH_SERVICE;
        let known = self.methods.entry(workload.clone()).or_default();
        let pair = (service, name);
        let mut capped = false;
        let (service, name) = if known.contains(&pair) || pair.0 == OTHER {
            pair
        } else if known.len() < self.max_methods {
            known.insert(pair.clone());
            pair
        } else {
            metrics.grpc.methods_capped.get_or_create(&workload).inc();
            capped = true;
            (OTHER.to_owned(), OTHER.to_owned())
        };
        (
            RpcLabels {
                workload,
                rpc_system: "grpc",
                rpc_service: service,
                rpc_method: name,
                rpc_grpc_status_code: code,
            },
            probe,
            capped,
        )
    }

    /// Adds what the kernel counted since the last harvest; forgets keys of exited processes
    /// (after their last count: an exited process adds nothing more).
    pub fn harvest(
        &mut self,
        identity: &mut IdentityResolver,
        metrics: &Metrics,
        verdict: &mut Engine,
        now: Instant,
    ) {
        // Handles go before anything can be forgotten (see `memo`).
        self.end_batch(verdict, now);
        self.memo.clear();
        if let Some(next) = self.sampler.as_mut().and_then(|s| s.tick(now)) {
            debug!(every = next, "gRPC record sampling changed");
        }
        let current = self.source.read();
        let mut calls = 0;
        let mut per_workload: HashMap<WorkloadLabels, HttpDelta> = HashMap::new();
        for (key, total) in &current {
            let before = self.seen.get(key).copied().unwrap_or_default();
            // A key deleted and created again starts from zero.
            let delta = if total.rpcs >= before.rpcs {
                GrpcCounts {
                    rpcs: total.rpcs - before.rpcs,
                    unrecorded: total.unrecorded.saturating_sub(before.unrecorded),
                    no_start: total.no_start.saturating_sub(before.no_start),
                }
            } else {
                *total
            };
            self.seen.insert(*key, *total);
            if delta.rpcs == 0 {
                continue;
            }
            calls += delta.rpcs;
            let owner = OwnerKey {
                cgroup_id: key.cgroup_id,
                tgid: key.tgid,
                _pad: 0,
            };
            let workload = metrics.labels_for(&identity.workload_of(&owner, now));
            let method = String::from_utf8_lossy(key.method_bytes()).into_owned();
            let overflow = key.flags & flags::OVERFLOW != 0;
            let (labels, probe, _) = self.labels(
                workload.clone(),
                if overflow { "" } else { &method },
                key.flags & flags::TRUNCATED != 0,
                key.code,
                metrics,
            );
            metrics.grpc.count(&labels, delta.rpcs, probe);
            let d = per_workload.entry(workload.clone()).or_default();
            // As for HTTP: every call, probes included; failures by the configured codes.
            d.total += delta.rpcs;
            if self.verdict_status(key.code) == 500 {
                d.r5xx += delta.rpcs;
            }
            if delta.unrecorded > 0 {
                metrics
                    .grpc
                    .unrecorded
                    .get_or_create(&workload)
                    .inc_by(delta.unrecorded);
            }
            if delta.no_start > 0 {
                metrics
                    .grpc
                    .no_start
                    .get_or_create(&workload)
                    .inc_by(delta.no_start);
            }
        }
        if let Some(s) = self.sampler.as_mut() {
            s.on_requests(calls);
        }
        for (w, d) in per_workload {
            verdict.on_http_counts(&w, d, now);
        }
        let gone: Vec<GrpcCountKey> = current
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.flags & flags::OVERFLOW == 0 && !identity.process_alive(k.tgid))
            .collect();
        for k in gone {
            self.source.remove(&k);
            self.seen.remove(&k);
        }
    }

    /// One call's record: its duration (health checks have none: probe traffic).
    pub fn on_record(
        &mut self,
        call: GrpcCall,
        identity: &mut IdentityResolver,
        metrics: &Metrics,
        now: Instant,
    ) {
        if let Some(s) = self.sampler.as_mut() {
            s.on_record();
        }
        let key = CallKey {
            owner: OwnerKey {
                cgroup_id: call.cgroup_id,
                tgid: call.tgid,
                _pad: 0,
            },
            method: call.method,
            truncated: call.truncated,
            code: call.code,
        };
        let duration = std::time::Duration::from_nanos(call.duration_ns);
        if let Some(m) = self.memo.get_mut(&key) {
            if let Some(c) = &m.capped {
                c.inc();
            }
            if m.workload_capped {
                metrics.capped_observation();
            }
            if let Some(series) = &m.series {
                metrics.grpc.observe_series(series, duration.as_secs_f64());
            }
            m.pending.push(duration);
            return;
        }
        // The key's first call: `labels` charges a capped method itself.
        let (workload, workload_capped) =
            metrics.labels_or_capped(&identity.workload_of(&key.owner, now));
        let (labels, probe, capped) =
            self.labels(workload, &key.method, key.truncated, key.code, metrics);
        let memo = CallMemo {
            series: (!probe).then(|| metrics.grpc.series(&labels)),
            capped: capped.then(|| {
                metrics
                    .grpc
                    .methods_capped
                    .get_or_create(&labels.workload)
                    .clone()
            }),
            status: self.verdict_status(key.code),
            probe,
            workload_capped,
            workload: labels.workload,
            pending: vec![duration],
        };
        if let Some(series) = &memo.series {
            metrics.grpc.observe_series(series, duration.as_secs_f64());
        }
        self.memo.insert(key, memo);
    }

    /// Hands the batch's per-call verdict inputs to the engine (`Aggregator::end_batch`).
    pub fn end_batch(&mut self, verdict: &mut Engine, now: Instant) {
        for m in self.memo.values_mut() {
            if m.pending.is_empty() {
                continue;
            }
            let inputs: Vec<RequestInput> = m
                .pending
                .drain(..)
                .map(|duration| RequestInput {
                    probe: m.probe,
                    status: Some(m.status),
                    duration,
                })
                .collect();
            verdict.on_requests(&m.workload, &inputs, now);
        }
    }

    /// A forgotten workload's method set.
    pub fn forget(&mut self, w: &WorkloadLabels) {
        self.methods.remove(w);
    }
}

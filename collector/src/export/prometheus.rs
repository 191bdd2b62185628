//! The Prometheus surface: one registry, typed label sets, self-telemetry next to the signals.
//!
//! Label sets are bounded: workloads are capped (`max_workloads`, overflow goes to
//! `workload_kind="overflow"`), and every other label takes values from a fixed set.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use super::tcp::TcpMetrics;
use crate::identity::Workload;

/// Labels naming a workload on every per-workload series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub workload_kind: &'static str,
    pub workload: String,
    pub pod_uid: String,
    pub container_id: String,
}

impl From<&Workload> for WorkloadLabels {
    fn from(w: &Workload) -> Self {
        Self {
            workload_kind: w.kind.as_str(),
            workload: w.name.clone(),
            pod_uid: w.pod_uid.clone().unwrap_or_default(),
            container_id: w.container_id.clone().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: &'static str,
    /// The rung that attached, or "unavailable".
    pub rung: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelDropLabels {
    pub reason: &'static str,
    pub cpu: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Self-telemetry: what the collector itself did, lost and rejected.
pub struct SelfMetrics {
    pub signal_rung: Family<SignalLabels, Gauge>,
    pub kernel_drops: Family<KernelDropLabels, Counter>,
    pub events_received: Family<KindLabels, Counter>,
    pub events_rejected: Family<ReasonLabels, Counter>,
    pub events_dropped: Family<ReasonLabels, Counter>,
    pub workloads: Gauge,
    pub workloads_capped: Counter,
    pub harvests: Counter,
}

pub struct Metrics {
    registry: Registry,
    pub tcp: TcpMetrics,
    pub collector: SelfMetrics,
    max_workloads: usize,
    known: Mutex<std::collections::HashSet<WorkloadLabels>>,
    scrapes: AtomicU64,
}

impl Metrics {
    pub fn new(max_workloads: usize) -> Self {
        let mut registry = Registry::default();
        let tcp = TcpMetrics::register(&mut registry);
        let collector = SelfMetrics {
            signal_rung: Family::default(),
            kernel_drops: Family::default(),
            events_received: Family::default(),
            events_rejected: Family::default(),
            events_dropped: Family::default(),
            workloads: Gauge::default(),
            workloads_capped: Counter::default(),
            harvests: Counter::default(),
        };
        let c = &collector;
        registry.register(
            "collector_signal_rung",
            "Which hook rung each signal attached on (1), or rung=\"unavailable\"",
            c.signal_rung.clone(),
        );
        registry.register(
            "collector_kernel_drops",
            "Events the kernel side could not record, per reason and CPU",
            c.kernel_drops.clone(),
        );
        registry.register(
            "collector_events_received",
            "Ring-buffer records decoded, per kind",
            c.events_received.clone(),
        );
        registry.register(
            "collector_events_rejected",
            "Ring-buffer records rejected at decoding, per reason",
            c.events_rejected.clone(),
        );
        registry.register(
            "collector_events_dropped",
            "Decoded records dropped in userspace, per reason",
            c.events_dropped.clone(),
        );
        registry.register(
            "collector_workloads",
            "Workloads with live series",
            c.workloads.clone(),
        );
        registry.register(
            "collector_workloads_capped",
            "Observations charged to workload_kind=\"overflow\" because max_workloads was reached",
            c.workloads_capped.clone(),
        );
        registry.register(
            "collector_harvests",
            "Kernel map harvests completed",
            c.harvests.clone(),
        );
        registry.register(
            "collector_build",
            "Collector build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Self {
            registry,
            tcp,
            collector,
            max_workloads,
            known: Mutex::new(Default::default()),
            scrapes: AtomicU64::new(0),
        }
    }

    /// The label set for a workload, or the overflow bucket once `max_workloads` is reached.
    pub fn labels_for(&self, w: &Workload) -> WorkloadLabels {
        let labels = WorkloadLabels::from(w);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(&labels) {
            return labels;
        }
        if known.len() >= self.max_workloads {
            self.collector.workloads_capped.inc();
            return WorkloadLabels::from(&Workload::overflow());
        }
        known.insert(labels.clone());
        self.collector.workloads.set(known.len() as i64);
        labels
    }

    /// OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

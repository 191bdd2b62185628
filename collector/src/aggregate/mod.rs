//! The single owner of aggregate state: kernel map harvests, process announcements, identity.
//!
//! One task owns everything here (`Aggregator::run`); nothing else mutates it. Time is passed in
//! (`now`) so the logic is testable on a paused clock.

pub mod tcp;

use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use collector_common::{
    maps::KernelDrop,
    tcp::{OwnerKey, TcpStats},
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    events::Event,
    export::{Metrics, prometheus::KernelDropLabels},
    identity::IdentityResolver,
};
use std::sync::Arc;

/// Where harvested counters come from: the kernel maps in production, a fake in tests.
pub trait StatsSource: Send {
    fn read_tcp(&mut self) -> Vec<(OwnerKey, TcpStats)>;
    fn remove_tcp(&mut self, key: &OwnerKey);
    /// Per-CPU totals of each `KernelDrop` reason.
    fn read_drops(&mut self) -> Vec<(KernelDrop, Vec<u64>)>;
}

/// The kernel maps.
pub struct KernelMaps {
    pub tcp: PerCpuHashMap<MapData, OwnerKey, TcpStats>,
    pub drops: PerCpuArray<MapData, u64>,
}

impl StatsSource for KernelMaps {
    fn read_tcp(&mut self) -> Vec<(OwnerKey, TcpStats)> {
        let mut out = Vec::new();
        for item in self.tcp.iter() {
            match item {
                Ok((key, per_cpu)) => {
                    let mut total = TcpStats::default();
                    for v in per_cpu.iter() {
                        total.accumulate(v);
                    }
                    out.push((key, total));
                }
                // A key deleted while iterating: it is picked up (or gone) next time.
                Err(e) => debug!(error = %e, "TCP_STATS iteration"),
            }
        }
        out
    }

    fn remove_tcp(&mut self, key: &OwnerKey) {
        if let Err(e) = self.tcp.remove(key) {
            debug!(error = %e, "removing idle TCP_STATS key");
        }
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

pub struct Aggregator<S> {
    source: S,
    metrics: Arc<Metrics>,
    identity: IdentityResolver,
    tcp: tcp::TcpHarvester,
    /// Last per-CPU drop totals, to export deltas.
    drops_seen: Vec<(KernelDrop, Vec<u64>)>,
}

impl<S: StatsSource> Aggregator<S> {
    pub fn new(source: S, metrics: Arc<Metrics>, identity: IdentityResolver) -> Self {
        Self {
            source,
            metrics,
            identity,
            tcp: tcp::TcpHarvester::default(),
            drops_seen: Vec::new(),
        }
    }

    pub fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Process { tgid, comm, .. } => self.identity.observe_process(tgid, comm, now),
        }
    }

    /// Reads the kernel maps and exports what changed since the last harvest.
    pub fn harvest(&mut self, now: Instant) {
        let current = self.source.read_tcp();
        let identity = &self.identity;
        let result = self
            .tcp
            .harvest(&current, |tgid| identity.process_alive(tgid));
        for (key, delta) in &result.deltas {
            let workload = self.identity.workload_of(key, now);
            let labels = self.metrics.labels_for(&workload);
            self.metrics.tcp.add(&labels, delta);
        }
        for key in &result.delete {
            self.source.remove_tcp(key);
        }
        self.harvest_drops();
        self.identity.expire(now);
        self.metrics.collector.harvests.inc();
    }

    fn harvest_drops(&mut self) {
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
    }

    /// Owner task loop: events as they come, a harvest every `interval`. Ends when the reader
    /// closes the channel (it stops first on shutdown), with a final harvest so nothing counted
    /// before SIGTERM is lost.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev, Instant::now()),
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
        fn read_drops(&mut self) -> Vec<(KernelDrop, Vec<u64>)> {
            self.drops.clone()
        }
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
        let mut agg = Aggregator::new(&mut fake, metrics.clone(), identity);
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
            text.contains(r#"collector_tcp_sent_bytes_total{workload_kind="process",workload="server",pod_uid="",container_id=""} 1234"#),
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
        assert!(text.contains("collector_tcp_retransmitted_segments_total{workload_kind=\"process\",workload=\"server\",pod_uid=\"\",container_id=\"\"} 3"), "{text}");
    }
}

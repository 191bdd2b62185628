//! Reads the ring buffer with `AsyncFd`. The fd is edge-triggered: drain until empty before
//! waiting again, or records sit unread until the next wake-up.
//!
//! Per-request records are submitted without a wake-up (`BPF_RB_NO_WAKEUP`: a wake-up per
//! request cost more than the request, ~12 µs measured) unless the ring is half full, so the
//! reader also drains on a short timer. Rare records (exec, new process) still wake it.
//!
//! A drain copies its records into a batch (`batch::BatchBuilder`) and sends the batch whole;
//! the aggregator decodes them (`batch::decode_batch`). Exec notices are the exception: they
//! go to Go discovery from here, decoded at once.

use std::sync::{Arc, atomic::Ordering};

use aya::maps::{MapData, RingBuf};
use collector_common::event::EventKind;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
    time::{Duration, MissedTickBehavior, interval},
};
use tracing::{debug, warn};

use super::{
    Event, Notice,
    batch::{BatchBuilder, RecordBatch},
    decode::{decode, kind_of},
};
use crate::export::{
    Metrics,
    prometheus::{KindLabels, ReasonLabels},
};

/// How often records submitted without a wake-up are collected. At the default budget of
/// 20,000 records/s that is 2,000 records (370 KB) per tick, well inside the 1 MiB ring, and
/// the kernel forces a wake-up at half full anyway.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// `exec_tx`: where exec and unseen-server notices go (Go discovery); None when Go
/// instrumentation is off.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<RecordBatch>,
    exec_tx: Option<std::sync::mpsc::SyncSender<Notice>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd for its whole life and we move it into the AsyncFd,
    // so the fd stays open and the same until the AsyncFd is dropped.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    let mut tick = interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut out = Drain {
        batch: BatchBuilder::default(),
        tx,
        exec_tx,
        metrics,
    };
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                out.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = tick.tick() => out.drain(fd.get_mut()),
            _ = shutdown.changed() => break,
        }
    }
    // Whatever the kernel wrote before the programs were detached.
    out.drain(fd.get_mut());
    Ok(())
}

struct Drain {
    batch: BatchBuilder,
    tx: mpsc::Sender<RecordBatch>,
    exec_tx: Option<std::sync::mpsc::SyncSender<Notice>>,
    metrics: Arc<Metrics>,
}

impl Drain {
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            if matches!(kind_of(&item), Some(EventKind::Exec | EventKind::Unseen)) {
                self.notice(&item);
            } else {
                self.batch.push(&item);
                if self.batch.is_full() {
                    self.send();
                }
            }
        }
        self.send();
        if self.tx.is_closed() {
            warn!("aggregator gone; events are no longer consumed");
        }
    }

    fn send(&mut self) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        let n = batch.len() as u64;
        if self.tx.try_send(batch).is_err() {
            // The aggregator is behind: drop, count, and keep draining the kernel's buffer (a
            // full ring buffer would lose events in the kernel instead).
            let m = &self.metrics.collector;
            m.events_dropped
                .get_or_create(&ReasonLabels {
                    reason: "channel_full",
                })
                .inc_by(n);
            m.records_lost.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn notice(&self, record: &[u8]) {
        let m = &self.metrics.collector;
        match decode(record) {
            Ok(event) => {
                m.events_received
                    .get_or_create(&KindLabels { kind: event.kind() })
                    .inc();
                let notice = match event {
                    Event::Exec { tgid } => Notice::Exec(tgid),
                    Event::Unseen(server) => Notice::Unseen(server),
                    _ => return,
                };
                // Discovery is behind: the periodic /proc scan will find the process; an
                // unseen server is told again by its next connection after 10 s.
                if let Some(exec_tx) = &self.exec_tx
                    && exec_tx.try_send(notice).is_err()
                {
                    m.events_dropped
                        .get_or_create(&ReasonLabels {
                            reason: "exec_channel_full",
                        })
                        .inc();
                }
            }
            Err(e) => {
                m.events_rejected
                    .get_or_create(&ReasonLabels { reason: e.reason() })
                    .inc();
                m.records_lost.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "ring-buffer record rejected");
            }
        }
    }
}

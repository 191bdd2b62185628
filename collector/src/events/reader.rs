//! Reads the ring buffer with `AsyncFd`. The fd is edge-triggered: drain until empty before
//! waiting again, or records sit unread until the next wake-up.
//!
//! Per-request records are submitted without a wake-up (`BPF_RB_NO_WAKEUP`: a wake-up per
//! request cost more than the request, ~12 µs measured) unless the ring is half full, so the
//! reader also drains on a short timer. Rare records (exec, new process) still wake it.

use std::sync::{Arc, atomic::Ordering};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
    time::{Duration, MissedTickBehavior, interval},
};
use tracing::{debug, warn};

use super::{Event, decode::decode};
use crate::export::{
    Metrics,
    prometheus::{KindLabels, ReasonLabels},
};

/// How often records submitted without a wake-up are collected. At the default budget of
/// 20,000 records/s that is 2,000 records (370 KB) per tick, well inside the 1 MiB ring, and
/// the kernel forces a wake-up at half full anyway.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// `exec_tx`: where exec notices go (Go discovery); None when Go instrumentation is off.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Event>,
    exec_tx: Option<std::sync::mpsc::SyncSender<u32>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd for its whole life and we move it into the AsyncFd,
    // so the fd stays open and the same until the AsyncFd is dropped.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    let mut tick = interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &tx, exec_tx.as_ref(), &metrics);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(fd.get_mut(), &tx, exec_tx.as_ref(), &metrics),
            _ = shutdown.changed() => break,
        }
    }
    // Whatever the kernel wrote before the programs were detached.
    drain(fd.get_mut(), &tx, exec_tx.as_ref(), &metrics);
    Ok(())
}

fn drain(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<Event>,
    exec_tx: Option<&std::sync::mpsc::SyncSender<u32>>,
    metrics: &Metrics,
) {
    let m = &metrics.collector;
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(event) => {
                m.events_received
                    .get_or_create(&KindLabels { kind: event.kind() })
                    .inc();
                if let Event::Exec { tgid } = event {
                    // Discovery is behind: the periodic /proc scan will find the process.
                    if let Some(exec_tx) = exec_tx
                        && exec_tx.try_send(tgid).is_err()
                    {
                        m.events_dropped
                            .get_or_create(&ReasonLabels {
                                reason: "exec_channel_full",
                            })
                            .inc();
                    }
                    continue;
                }
                if tx.try_send(event).is_err() {
                    // The aggregator is behind: drop, count, and keep draining the kernel's
                    // buffer (a full ring buffer would lose events in the kernel instead).
                    m.events_dropped
                        .get_or_create(&ReasonLabels {
                            reason: "channel_full",
                        })
                        .inc();
                    m.records_lost.fetch_add(1, Ordering::Relaxed);
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
    if tx.is_closed() {
        warn!("aggregator gone; events are no longer consumed");
    }
}

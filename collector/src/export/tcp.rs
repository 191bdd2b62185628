//! TCP metric families. Names follow Prometheus conventions: unit suffix, `_total` on counters.

use std::{collections::HashMap, sync::Mutex};

use collector_common::tcp::TcpStats;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::{Registry, Unit},
};

use super::prometheus::WorkloadLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    pub direction: &'static str,
}

/// Label values of the `error` and `direction` labels, in one place so `forget` finds every series.
const SEND_ERRORS: [&str; 3] = ["epipe", "econnreset", "other"];
const CONNECT_ERRORS: [&str; 3] = ["econnrefused", "etimedout", "other"];
const DIRECTIONS: [&str; 2] = ["active", "passive"];

pub struct TcpMetrics {
    /// Cumulative totals per workload, the source of the OTLP export.
    totals: Mutex<HashMap<WorkloadLabels, TcpStats>>,
    pub sent_bytes: Family<WorkloadLabels, Counter>,
    pub send_calls: Family<WorkloadLabels, Counter>,
    pub send_errors: Family<ErrorLabels, Counter>,
    pub send_would_block: Family<WorkloadLabels, Counter>,
    pub retransmitted_segments: Family<WorkloadLabels, Counter>,
    pub resets_sent: Family<WorkloadLabels, Counter>,
    pub resets_received: Family<WorkloadLabels, Counter>,
    pub connects_failed: Family<ErrorLabels, Counter>,
    pub connections_opened: Family<DirectionLabels, Counter>,
    pub connections_closed: Family<WorkloadLabels, Counter>,
}

impl TcpMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            totals: Mutex::new(HashMap::new()),
            sent_bytes: Family::default(),
            send_calls: Family::default(),
            send_errors: Family::default(),
            send_would_block: Family::default(),
            retransmitted_segments: Family::default(),
            resets_sent: Family::default(),
            resets_received: Family::default(),
            connects_failed: Family::default(),
            connections_opened: Family::default(),
            connections_closed: Family::default(),
        };
        r.register_with_unit(
            "collector_tcp_sent",
            "Bytes accepted by successful TCP sendmsg calls",
            Unit::Bytes,
            m.sent_bytes.clone(),
        );
        r.register(
            "collector_tcp_send_calls",
            "Successful TCP sendmsg calls",
            m.send_calls.clone(),
        );
        r.register(
            "collector_tcp_send_errors",
            "TCP sendmsg calls that failed, by error (epipe, econnreset, other)",
            m.send_errors.clone(),
        );
        r.register(
            "collector_tcp_send_would_block",
            "TCP sendmsg calls that returned EAGAIN (flow control, not a failure)",
            m.send_would_block.clone(),
        );
        r.register(
            "collector_tcp_retransmitted_segments",
            "TCP segments retransmitted (the unit of the kernel's TcpRetransSegs)",
            m.retransmitted_segments.clone(),
        );
        r.register(
            "collector_tcp_resets_sent",
            "TCP RST segments sent",
            m.resets_sent.clone(),
        );
        r.register(
            "collector_tcp_resets_received",
            "TCP RST segments received",
            m.resets_received.clone(),
        );
        r.register(
            "collector_tcp_connects_failed",
            "Outgoing connects that failed (SYN_SENT to CLOSE), by error (econnrefused, etimedout, other)",
            m.connects_failed.clone(),
        );
        r.register(
            "collector_tcp_connections_opened",
            "TCP connections established, by direction (active = connect, passive = accept)",
            m.connections_opened.clone(),
        );
        r.register(
            "collector_tcp_connections_closed",
            "Established TCP connections that closed",
            m.connections_closed.clone(),
        );
        m
    }

    /// Cumulative totals per workload, for exporters that read rather than get pushed to.
    pub fn snapshot(&self) -> Vec<(WorkloadLabels, TcpStats)> {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Adds a harvested delta to a workload's counters. Zero fields create no series.
    /// Removes every series of a forgotten workload (and its OTLP total), so what is kept per
    /// workload does not outlive it. A workload that comes back starts from zero: a counter
    /// reset, which Prometheus and OTLP consumers handle.
    pub fn forget(&self, w: &WorkloadLabels) {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(w);
        for f in [
            &self.sent_bytes,
            &self.send_calls,
            &self.send_would_block,
            &self.retransmitted_segments,
            &self.resets_sent,
            &self.resets_received,
            &self.connections_closed,
        ] {
            f.remove(w);
        }
        for (f, errors) in [
            (&self.send_errors, SEND_ERRORS.as_slice()),
            (&self.connects_failed, CONNECT_ERRORS.as_slice()),
        ] {
            for error in errors {
                f.remove(&ErrorLabels {
                    workload: w.clone(),
                    error,
                });
            }
        }
        for direction in DIRECTIONS {
            self.connections_opened.remove(&DirectionLabels {
                workload: w.clone(),
                direction,
            });
        }
    }

    pub fn add(&self, w: &WorkloadLabels, d: &TcpStats) {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(w.clone())
            .or_default()
            .accumulate(d);
        let TcpStats {
            bytes_sent,
            send_calls,
            send_err_pipe,
            send_err_reset,
            send_err_other,
            send_would_block,
            retransmit_segs,
            resets_sent,
            resets_received,
            connects_refused,
            connects_timed_out,
            connects_failed_other,
            active_opens,
            passive_opens,
            closes,
        } = *d;
        let plain = |f: &Family<WorkloadLabels, Counter>, v: u64| {
            if v > 0 {
                f.get_or_create(w).inc_by(v);
            }
        };
        plain(&self.sent_bytes, bytes_sent);
        plain(&self.send_calls, send_calls);
        plain(&self.send_would_block, send_would_block);
        plain(&self.retransmitted_segments, retransmit_segs);
        plain(&self.resets_sent, resets_sent);
        plain(&self.resets_received, resets_received);
        plain(&self.connections_closed, closes);
        let errors = |f: &Family<ErrorLabels, Counter>, error: &'static str, v: u64| {
            if v > 0 {
                f.get_or_create(&ErrorLabels {
                    workload: w.clone(),
                    error,
                })
                .inc_by(v);
            }
        };
        errors(&self.send_errors, SEND_ERRORS[0], send_err_pipe);
        errors(&self.send_errors, SEND_ERRORS[1], send_err_reset);
        errors(&self.send_errors, SEND_ERRORS[2], send_err_other);
        errors(&self.connects_failed, CONNECT_ERRORS[0], connects_refused);
        errors(&self.connects_failed, CONNECT_ERRORS[1], connects_timed_out);
        errors(
            &self.connects_failed,
            CONNECT_ERRORS[2],
            connects_failed_other,
        );
        for (direction, v) in [
            (DIRECTIONS[0], active_opens),
            (DIRECTIONS[1], passive_opens),
        ] {
            if v > 0 {
                self.connections_opened
                    .get_or_create(&DirectionLabels {
                        workload: w.clone(),
                        direction,
                    })
                    .inc_by(v);
            }
        }
    }
}

//! Verdict metric families: the state per workload, its reasons (bounded set) and transitions.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::prometheus::WorkloadLabels;
use crate::verdict::rules::{ReasonCode, State};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    /// healthy, degraded, unhealthy, unknown.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonGaugeLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    /// A `verdict::rules::ReasonCode`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MismatchLabels {
    #[prometheus(flatten)]
    pub workload: WorkloadLabels,
}

/// Families are shared handles: clones update the same series.
#[derive(Clone, Default)]
pub struct VerdictMetrics {
    pub state: Family<StateLabels, Gauge>,
    pub reason: Family<ReasonGaugeLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub probe_mismatch: Family<MismatchLabels, Counter>,
}

impl VerdictMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register(
            "collector_verdict",
            "Health verdict per workload: 1 for the current state, 0 for the others",
            m.state.clone(),
        );
        r.register(
            "collector_verdict_reason",
            "Reasons behind the last evaluation per workload (1 = present), from a fixed set",
            m.reason.clone(),
        );
        r.register(
            "collector_verdict_transitions",
            "Verdict state changes per workload, by from and to state",
            m.transitions.clone(),
        );
        r.register(
            "collector_verdict_probe_mismatch",
            "Times probe paths (/healthz…) started to disagree with real traffic",
            m.probe_mismatch.clone(),
        );
        m
    }
}

impl VerdictMetrics {
    /// Removes every verdict series of a forgotten workload (states, reasons, transitions,
    /// mismatch counter): all label values come from fixed sets.
    pub fn forget(&self, w: &WorkloadLabels) {
        for st in State::ALL {
            self.state.remove(&StateLabels {
                workload: w.clone(),
                state: st.as_str(),
            });
            for to in State::ALL {
                self.transitions.remove(&TransitionLabels {
                    workload: w.clone(),
                    from: st.as_str(),
                    to: to.as_str(),
                });
            }
        }
        for code in ReasonCode::ALL {
            self.reason.remove(&ReasonGaugeLabels {
                workload: w.clone(),
                reason: code.as_str(),
            });
        }
        self.probe_mismatch.remove(&MismatchLabels {
            workload: w.clone(),
        });
    }
}

//! The readiness-gate writer: each `interval`, reads the verdicts and the index, asks the gate
//! (`gate::Gate`, sans IO) what every opted-in pod should carry, and patches `pods/status` where
//! status or reason differ from what the pod carries.
//!
//! The patch is a strategic merge patch: `status.conditions` merges by `type`, so the kubelet's
//! own conditions (Ready, ContainersReady, …) are left alone; a JSON merge patch would replace
//! the whole list. `lastTransitionTime` is sent only when the status changes.
//!
//! The condition just written is recorded in the index at once, so the next round does not
//! write it again before the watch brings the pod back; a change by anyone else (the watchdog,
//! a person) comes back through the watch and is reconciled. While the API server is
//! unreachable the patches fail and are retried each round; collection goes on regardless.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Instant, SystemTime},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch as tokio_watch;
use tracing::{info, warn};

use super::{
    Kubernetes,
    gate::{self, CONDITION_TYPE, Decision, Gate, PodVerdict, ReadinessConfig},
    index::ObservedCondition,
};
use crate::verdict::{SharedVerdicts, rfc3339, rules::State};

/// Pod verdicts by pod UID (the worst of its containers), as the API's `/v1/pods/{uid}/health`
/// computes them. A static pod's cgroup UID is mapped to its mirror pod.
fn pod_verdicts(k: &Kubernetes, verdicts: &SharedVerdicts) -> HashMap<String, PodVerdict> {
    let snapshot = verdicts.read().unwrap_or_else(|e| e.into_inner());
    let ix = k.read();
    let mut worst: HashMap<String, (State, Vec<String>)> = HashMap::new();
    let rank = |s: State| match s {
        State::Unknown => 0,
        State::Healthy => 1,
        State::Degraded => 2,
        State::Unhealthy => 3,
    };
    for w in &snapshot.workloads {
        if w.pod_uid.is_empty() {
            continue;
        }
        let cgroup_uid = w.pod_uid.replace('_', "-");
        let uid = ix.get(&cgroup_uid).map_or(cgroup_uid, |p| p.uid.clone());
        let reasons: Vec<String> = w
            .reasons
            .iter()
            .filter(|r| r.state == w.state)
            .map(|r| r.message.clone())
            .collect();
        let entry = worst.entry(uid).or_insert((State::Unknown, Vec::new()));
        if rank(w.state) > rank(entry.0) {
            *entry = (w.state, reasons);
        } else if w.state == entry.0 {
            entry.1.extend(reasons);
        }
    }
    worst
        .into_iter()
        .map(|(uid, (state, reasons))| {
            let message = if reasons.is_empty() {
                "no rule fired".to_owned()
            } else {
                reasons.join("; ")
            };
            (uid, PodVerdict { state, message })
        })
        .collect()
}

pub(super) async fn run(
    k: Arc<Kubernetes>,
    config: ReadinessConfig,
    verdicts: SharedVerdicts,
    mut shutdown: tokio_watch::Receiver<bool>,
) {
    info!(
        mode = config.mode.as_str(),
        condition = CONDITION_TYPE,
        "readiness gates: writing the condition of opted-in pods"
    );
    let mut gate = Gate::new();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut held_before: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        let pods = k.read().gated_pods();
        let by_uid = pod_verdicts(&k, &verdicts);
        let (decisions, held) = {
            let ix = k.read();
            gate.decide(
                &config,
                &pods,
                &by_uid,
                &|s| ix.service_endpoints(s),
                Instant::now(),
            )
        };
        let held_now: BTreeSet<String> = held.iter().map(|h| h.pod.clone()).collect();
        for h in held.iter().filter(|h| !held_before.contains(&h.pod)) {
            warn!(
                pod = h.pod,
                cap = h.cap.reason(),
                detail = h.detail,
                "readiness gate: pod held True by a cap (a Service floor, or many pods of this \
                 node failing at once: look at the node and the collector)"
            );
        }
        held_before = held_now;
        let observed: HashMap<&str, Option<&ObservedCondition>> = pods
            .iter()
            .map(|p| (p.uid.as_str(), p.observed.as_ref()))
            .collect();
        let mut falses = 0;
        let mut error = None;
        for d in &decisions {
            falses += usize::from(!d.status);
            let seen = observed.get(d.uid.as_str()).copied().flatten();
            if !d.differs(seen) {
                continue;
            }
            match patch(&k, d, seen).await {
                Ok(()) => {
                    k.count_patch("written");
                    info!(
                        pod = format!("{}/{}", d.namespace, d.name),
                        status = gate::status_str(d.status),
                        reason = d.reason,
                        message = d.message,
                        "readiness condition written"
                    );
                    k.write().set_condition(
                        &d.uid,
                        ObservedCondition {
                            status: gate::status_str(d.status).into(),
                            reason: d.reason.clone(),
                        },
                    );
                }
                // Deleted meanwhile: the watch will drop it.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    k.count_patch("failed");
                    error = Some(format!("{}/{}: {e}", d.namespace, d.name));
                }
            }
        }
        if let Some(e) = &error
            && !failing
        {
            warn!(
                error = e,
                "readiness condition not written (retried each round; conditions stay as they are)"
            );
        }
        failing = error.is_some();
        k.set_readiness(gate::Summary {
            mode: config.mode,
            gated: pods.len(),
            r#false: falses,
            held,
            last_error: error,
        });
    }
}

async fn patch(
    k: &Kubernetes,
    d: &Decision,
    seen: Option<&ObservedCondition>,
) -> Result<(), kube::Error> {
    let status = gate::status_str(d.status);
    let mut condition = json!({
        "type": CONDITION_TYPE,
        "status": status,
        "reason": d.reason,
        "message": d.message,
    });
    if seen.is_none_or(|s| s.status != status) {
        condition["lastTransitionTime"] = json!(rfc3339(SystemTime::now()));
    }
    let api: Api<Pod> = Api::namespaced(k.client.clone(), &d.namespace);
    api.patch_status(
        &d.name,
        &PatchParams::default(),
        &Patch::Strategic(json!({ "status": { "conditions": [condition] } })),
    )
    .await
    .map(drop)
}

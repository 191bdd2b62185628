//! `collector watchdog`: one replica (leader-elected on a Lease) that sets the readiness-gate
//! condition `True` on gated pods whose node's collector Lease has expired — a collector that
//! died, was evicted, or never ran on that node — so no pod stays unready because of us.
//!
//! Each round the leader lists the node Leases and the pods (paged); a gated pod whose
//! condition is missing or not `True`, on a node whose Lease is expired, gets `True` with reason
//! `CollectorLeaseExpired`. A live collector takes its pods back when it returns (its reasons
//! differ, so it writes). A newly elected leader first watches the Leases for a full duration
//! before judging any, so it never mistakes "just started looking" for "expired".
//!
//! Cost: one paged list of every pod per round (default every 10 s) — a controller's usual
//! price, paid by one replica per cluster, not per node.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch as tokio_watch;
use tracing::{debug, info, warn};

use super::{
    gate::CONDITION_TYPE,
    lease::{Elector, LeaseTracker, NODE_LEASE_PREFIX, node_lease_name},
};
use crate::verdict::rfc3339;

pub const REASON: &str = "CollectorLeaseExpired";
pub const LEADER_LEASE: &str = "collector-watchdog";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogConfig {
    pub kubeconfig: Option<PathBuf>,
    /// Where the node Leases and the leader Lease live.
    pub namespace: String,
    /// This replica's name in the leader Lease (the pod's name).
    pub identity: String,
    /// How often the leader checks; also the leader Lease's renewal period.
    pub interval: Duration,
    /// The leader Lease's duration; and the one assumed for a node that never had a Lease.
    pub lease_duration: Duration,
}

/// Runs until `shutdown` turns true.
pub async fn run(
    config: WatchdogConfig,
    mut shutdown: tokio_watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster().context("in-cluster configuration")?,
    };
    let client = kube::Client::try_from(kc).context("Kubernetes client")?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let pods: Api<Pod> = Api::all(client.clone());
    let mut elector = Elector::new(
        leases.clone(),
        LEADER_LEASE,
        &config.identity,
        config.lease_duration,
    );
    let mut tracker: Option<LeaseTracker> = None;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        identity = config.identity,
        namespace = config.namespace,
        "watchdog: electing a leader"
    );
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        let leading = match elector.try_lead().await {
            Ok(l) => l,
            Err(e) => {
                if !failing {
                    warn!(error = %e, "watchdog: leader lease unreachable (retried)");
                }
                failing = true;
                // Without the leader lease renewed, another replica may lead: stop judging.
                false
            }
        };
        if !leading {
            if tracker.take().is_some() {
                warn!(holder = elector.holder(), "watchdog: no longer leading");
            }
            continue;
        }
        let t = tracker.get_or_insert_with(|| {
            info!(identity = config.identity, "watchdog: leading");
            LeaseTracker::new(Instant::now())
        });
        match round(&leases, &pods, t, config.lease_duration).await {
            Ok(n) if n > 0 => info!(pods = n, "watchdog: conditions set True"),
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    warn!(error = %e, "watchdog: round failed (retried)");
                }
                failing = true;
                continue;
            }
        }
        failing = false;
    }
    Ok(())
}

/// One round as leader: returns how many pods were set True.
async fn round(
    leases: &Api<Lease>,
    pods: &Api<Pod>,
    tracker: &mut LeaseTracker,
    fallback: Duration,
) -> Result<usize, kube::Error> {
    let now = Instant::now();
    let list = leases.list(&ListParams::default()).await?;
    for l in &list.items {
        if l.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with(NODE_LEASE_PREFIX))
        {
            tracker.observe(l, now);
        }
    }
    let listed: std::collections::BTreeSet<String> = list
        .items
        .iter()
        .filter_map(|l| l.metadata.name.clone())
        .collect();
    tracker.forget_others(&|n| listed.contains(n));
    let mut set = 0;
    let mut params = ListParams::default().limit(500);
    loop {
        let page = pods.list(&params).await?;
        for p in &page.items {
            if needs_rescue(p)
                && let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                && tracker.expired(&node_lease_name(node), fallback, now)
            {
                match set_true(pods, p, node).await {
                    Ok(()) => set += 1,
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => break,
        }
    }
    Ok(set)
}

/// A pod that declares the gate and does not carry `True`.
fn needs_rescue(p: &Pod) -> bool {
    let gated = p
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .is_some_and(|g| g.iter().any(|g| g.condition_type == CONDITION_TYPE));
    let is_true = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == CONDITION_TYPE))
        .is_some_and(|c| c.status == "True");
    gated && !is_true
}

async fn set_true(pods: &Api<Pod>, p: &Pod, node: &str) -> Result<(), kube::Error> {
    let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref())
    else {
        return Ok(());
    };
    let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), ns);
    let patch = json!({ "status": { "conditions": [{
        "type": CONDITION_TYPE,
        "status": "True",
        "reason": REASON,
        "message": format!(
            "no collector renewed lease {} on node {node}: the gate fails open",
            node_lease_name(node)
        ),
        "lastTransitionTime": rfc3339(std::time::SystemTime::now()),
    }]}});
    debug!(pod = format!("{ns}/{name}"), node, "watchdog: setting True");
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map(drop)
}

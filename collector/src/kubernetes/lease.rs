//! Leases (coordination.k8s.io/v1): the per-node Lease each collector renews, so the watchdog
//! can tell a node whose collector is gone; and the watchdog's own leader election.
//!
//! Expiry is judged the way client-go's leader election judges it: by how long the *observer*
//! has seen the record unchanged, on its own monotonic clock, never by comparing `renewTime`
//! with its wall clock — two machines' clocks may disagree by more than a lease lasts.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::sync::watch as tokio_watch;
use tracing::{debug, info, warn};

use super::Kubernetes;

/// The Lease a node's collector renews: `collector-node-<node>` (the admission policy in
/// deploy/ lets a collector write only its own).
pub const NODE_LEASE_PREFIX: &str = "collector-node-";

pub fn node_lease_name(node: &str) -> String {
    format!("{NODE_LEASE_PREFIX}{node}")
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Renews this node's Lease every `renew` (creating it when missing) until shutdown.
pub(super) async fn renew_node_lease(
    k: Arc<Kubernetes>,
    namespace: String,
    renew: Duration,
    duration: Duration,
    mut shutdown: tokio_watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(k.client.clone(), &namespace);
    let name = node_lease_name(&k.node);
    let mut tick = tokio::time::interval(renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
        }
        let result = renew_once(&api, &name, &k.node, duration).await;
        match &result {
            Ok(()) if failing => info!(lease = name, "node lease renewed again"),
            Ok(()) => {}
            Err(e) if !failing => warn!(
                lease = name,
                namespace,
                error = %e,
                "node lease not renewed (retried; the watchdog sets gated pods True once it \
                 expires)"
            ),
            Err(e) => debug!(error = %e, "node lease still not renewed"),
        }
        failing = result.is_err();
        k.set_lease(result.err().map(|e| e.to_string()));
    }
}

async fn renew_once(
    api: &Api<Lease>,
    name: &str,
    holder: &str,
    duration: Duration,
) -> Result<(), kube::Error> {
    let patch = json!({ "spec": {
        "holderIdentity": holder,
        "leaseDurationSeconds": seconds(duration),
        "renewTime": now(),
    }});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.into()),
                    lease_duration_seconds: Some(seconds(duration)),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(drop)
        }
        Err(e) => Err(e),
    }
}

/// What an observer saw of one Lease: its record and since when it has not changed.
#[derive(Debug)]
struct Seen {
    record: (Option<String>, Option<Timestamp>),
    since: Instant,
    duration: Duration,
}

/// Leases as observed over time (sans IO): a Lease is expired when its record (holder,
/// renewTime) has not changed for its `leaseDurationSeconds` on the observer's clock. A Lease
/// never seen counts as unchanged since the observer started.
#[derive(Debug)]
pub struct LeaseTracker {
    started: Instant,
    seen: HashMap<String, Seen>,
}

impl LeaseTracker {
    pub fn new(now: Instant) -> Self {
        Self {
            started: now,
            seen: HashMap::new(),
        }
    }

    /// Records a Lease as listed now.
    pub fn observe(&mut self, lease: &Lease, now: Instant) {
        let Some(name) = lease.metadata.name.clone() else {
            return;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity, spec.renew_time.map(|t| t.0));
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(0).max(1)).unwrap_or(1),
        );
        match self.seen.get_mut(&name) {
            Some(s) if s.record == record => s.duration = duration,
            _ => {
                self.seen.insert(
                    name,
                    Seen {
                        record,
                        since: now,
                        duration,
                    },
                );
            }
        }
    }

    /// Whether Lease `name` is expired now; `fallback` is the duration assumed for a Lease
    /// never seen (a node without a collector).
    pub fn expired(&self, name: &str, fallback: Duration, now: Instant) -> bool {
        match self.seen.get(name) {
            Some(s) => now.saturating_duration_since(s.since) >= s.duration,
            None => now.saturating_duration_since(self.started) >= fallback,
        }
    }

    /// The current holder of Lease `name`, as last observed.
    pub fn holder(&self, name: &str) -> Option<&str> {
        self.seen.get(name).and_then(|s| s.record.0.as_deref())
    }

    pub fn forget_others(&mut self, keep: &dyn Fn(&str) -> bool) {
        self.seen.retain(|n, _| keep(n));
    }
}

/// Leader election on one Lease (client-go's algorithm, without its options): create it if
/// missing; renew it while we hold it; take it over once its record stayed unchanged for its
/// duration. Every write carries the resourceVersion read, so two candidates cannot both win.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    tracker: LeaseTracker,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            tracker: LeaseTracker::new(Instant::now()),
        }
    }

    /// One round: true when this candidate leads after it.
    pub async fn try_lead(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(Some(now()), 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let now_i = Instant::now();
        self.tracker.observe(&lease, now_i);
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && !self.tracker.expired(&self.name, self.duration, now_i) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquire = if ours { spec.acquire_time } else { Some(now()) };
        lease.spec = Some(self.spec(acquire, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it between our read and write.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds(self.duration)),
            acquire_time: acquire,
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    pub fn holder(&self) -> Option<&str> {
        self.tracker.holder(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(name: &str, holder: &str, renew_s: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_second(renew_s).expect("time"))),
                ..Default::default()
            }),
        }
    }

    /// Catches: expiry judged by comparing renewTime with the local wall clock (a renewTime
    /// far in the past from a skewed node would expire a live lease at once), a renewal not
    /// resetting the clock, a node without any lease never expiring (its gated pods would
    /// stay unready forever).
    #[test]
    fn expiry_by_observed_change_on_the_local_clock() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut tr = LeaseTracker::new(t);
        // renewTime from 1970: only the observer's clock counts.
        tr.observe(&lease("collector-node-a", "a", 100, 3), t);
        assert!(!tr.expired("collector-node-a", s(40), t + s(2)));
        tr.observe(&lease("collector-node-a", "a", 101, 3), t + s(2));
        assert!(!tr.expired("collector-node-a", s(40), t + s(4)));
        tr.observe(&lease("collector-node-a", "a", 101, 3), t + s(4));
        assert!(tr.expired("collector-node-a", s(40), t + s(5)));
        // Never seen: expired once the fallback passed since the observer started.
        assert!(!tr.expired("collector-node-b", s(40), t + s(39)));
        assert!(tr.expired("collector-node-b", s(40), t + s(40)));
        assert_eq!(tr.holder("collector-node-a"), Some("a"));
    }
}

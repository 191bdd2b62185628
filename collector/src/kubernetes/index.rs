//! What the collector knows about the pods on its node, sans IO: the watch tasks feed it
//! (`kubernetes::watch`), the identity resolver and the API read it.
//!
//! Only the few fields the collector uses are kept, never whole objects, and every map is
//! bounded, so memory follows the node's pods (a kubelet runs at most a few hundred) and not the
//! cluster's size.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::Pod,
    discovery::v1::{Endpoint, EndpointSlice},
};

use super::gate::{CONDITION_TYPE, GatedPod, ServiceEndpoints};
use crate::identity::PodNames;

/// More pods than any kubelet runs (`maxPods` is 110 by default, a few hundred at most): past
/// it new pods are counted and left unnamed rather than growing without bound.
pub const MAX_PODS: usize = 5_000;
/// EndpointSlices with an endpoint on this node (kept with their pods), and count-only
/// summaries of the other slices of any Service (for the readiness gate's Service floor).
pub const MAX_SLICES: usize = 20_000;
/// Owners (ReplicaSet → Deployment, Job → CronJob) resolved and cached.
pub const MAX_OWNERS: usize = 20_000;
/// A deleted pod keeps its names this long, for counters harvested after it went (its last
/// deltas are exported after the kubelet removed it).
pub const DELETED_GRACE: Duration = Duration::from_secs(120);

/// The annotation a mirror pod (static pod) carries: the kubelet's config hash, which is the UID
/// in the static pod's cgroup path, not the mirror pod's own UID.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A controller reference one level up: `kind` as in the API (`ReplicaSet`), `name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerRef {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

/// One pod on this node, reduced to what the collector uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Container id (64 hex digits, runtime prefix stripped) → container name.
    pub containers: HashMap<String, String>,
    /// The pod's controller (`ownerReferences` with `controller: true`).
    pub controller: Option<OwnerRef>,
    /// `kubernetes.io/config.mirror` of a mirror pod: the UID its cgroup carries.
    pub mirror_of: Option<String>,
    /// The pod declares our readiness gate (`spec.readinessGates`, `gate::CONDITION_TYPE`).
    pub gated: bool,
    /// Our condition as the pod's status last carried it (or as we last wrote it).
    pub condition: Option<ObservedCondition>,
    /// The pod's labels named by the allow-list (`--pod-label`); no others are kept.
    pub labels: BTreeMap<String, String>,
    /// When the watch said it was deleted (kept `DELETED_GRACE` for late counters).
    deleted_at: Option<Instant>,
}

/// The readiness-gate condition as a pod's status carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedCondition {
    /// `"True"`, `"False"` (or `"Unknown"`, never written by us).
    pub status: String,
    pub reason: String,
}

impl PodMeta {
    /// Reduces a Pod, keeping the labels `allow` names; None when it has no UID or name
    /// (never sent by a real API server).
    pub fn from_pod(pod: &Pod, allow: &[String]) -> Option<Self> {
        let m = &pod.metadata;
        let uid = m.uid.clone()?;
        let name = m.name.clone()?;
        let namespace = m.namespace.clone().unwrap_or_else(|| "default".into());
        let mut containers = HashMap::new();
        if let Some(status) = &pod.status {
            for s in status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten())
                .chain(status.ephemeral_container_statuses.iter().flatten())
            {
                if let Some(id) = s.container_id.as_deref().and_then(strip_runtime) {
                    containers.insert(id.to_owned(), s.name.clone());
                }
            }
        }
        let controller = m
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| OwnerRef {
                namespace: namespace.clone(),
                kind: o.kind.clone(),
                name: o.name.clone(),
            });
        let mirror_of = m
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .cloned();
        let gated = pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.as_ref())
            .is_some_and(|g| g.iter().any(|g| g.condition_type == CONDITION_TYPE));
        let condition = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == CONDITION_TYPE))
            .map(|c| ObservedCondition {
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
            });
        let labels = m
            .labels
            .iter()
            .flatten()
            .filter(|(k, _)| allow.iter().any(|a| a == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Some(Self {
            uid,
            namespace,
            name,
            containers,
            controller,
            mirror_of,
            gated,
            condition,
            labels,
            deleted_at: None,
        })
    }
}

/// `containerd://<64hex>` (or `cri-o://`, `docker://`) → `<64hex>`.
fn strip_runtime(id: &str) -> Option<&str> {
    let (_, hex) = id.split_once("://")?;
    (!hex.is_empty()).then_some(hex)
}

/// The workload a pod belongs to, as exported: `deployment/web`, `statefulset/db`,
/// `daemonset/agent`, `cronjob/backup`, `job/once`, `replicaset/bare`, `pod/name` for pods
/// without a controller. Custom controllers keep their kind, lower-cased.
pub fn workload_name(pod: &PodMeta, resolved: Option<&OwnerRef>) -> String {
    let owner = resolved.or(pod.controller.as_ref());
    match owner {
        Some(o) => format!("{}/{}", o.kind.to_ascii_lowercase(), o.name),
        None => format!("pod/{}", pod.name),
    }
}

/// Kinds whose own controller is looked up (one GET per owner, cached): a ReplicaSet's
/// Deployment and a Job's CronJob are what users call the workload.
pub fn needs_lookup(owner: &OwnerRef) -> bool {
    matches!(owner.kind.as_str(), "ReplicaSet" | "Job")
}

/// The answer of an owner lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerLookup {
    /// The owner's own controller (`Deployment/web`), or the owner itself when it has none.
    Resolved(OwnerRef),
    /// Not answered (API unreachable, forbidden): the pod is named by its direct owner and the
    /// lookup is tried again later.
    Failed,
}

#[derive(Debug, Default)]
struct Slice {
    /// `namespace/name` of the Service.
    service: String,
    /// UIDs of this node's pods behind it (empty for a slice only other nodes' pods are in).
    pods: BTreeSet<String>,
    /// Every endpoint of the slice, any node.
    total: usize,
    /// Endpoints whose `conditions.ready` is not false (unset means ready).
    ready: usize,
    /// This node's pods among the ready endpoints.
    ready_local: BTreeSet<String>,
}

/// Counts of what the index refused (bounded maps full).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Refused {
    pub pods: u64,
    pub slices: u64,
}

#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<String, PodMeta>,
    /// Cgroup UID of a static pod → mirror pod UID.
    mirrors: HashMap<String, String>,
    /// `namespace/name` → UID, live pods only.
    by_name: HashMap<(String, String), String>,
    owners: HashMap<OwnerRef, OwnerRef>,
    slices: HashMap<(String, String), Slice>,
    /// Pods received during a re-list (`Init` … `InitDone`).
    relisting: Option<HashMap<String, PodMeta>>,
    slices_relisting: Option<HashMap<(String, String), Slice>>,
    pub refused: Refused,
}

impl PodIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Live pods (deleted ones in their grace period excluded).
    pub fn pods(&self) -> usize {
        self.pods
            .values()
            .filter(|p| p.deleted_at.is_none())
            .count()
    }

    /// Services with an endpoint on this node.
    pub fn services(&self) -> usize {
        self.slices
            .values()
            .filter(|s| !s.pods.is_empty())
            .map(|s| s.service.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    pub fn upsert(&mut self, pod: PodMeta) {
        if let Some(buffer) = &mut self.relisting {
            buffer.insert(pod.uid.clone(), pod);
            return;
        }
        self.insert(pod);
    }

    fn insert(&mut self, pod: PodMeta) {
        if !self.pods.contains_key(&pod.uid) && self.pods.len() >= MAX_PODS {
            self.refused.pods += 1;
            return;
        }
        if let Some(hash) = &pod.mirror_of {
            self.mirrors.insert(hash.clone(), pod.uid.clone());
        }
        self.by_name
            .insert((pod.namespace.clone(), pod.name.clone()), pod.uid.clone());
        self.pods.insert(pod.uid.clone(), pod);
    }

    /// The watch said the pod is gone: keep its names for `DELETED_GRACE`.
    pub fn delete(&mut self, uid: &str, now: Instant) {
        if let Some(buffer) = &mut self.relisting {
            buffer.remove(uid);
        }
        if let Some(p) = self.pods.get_mut(uid) {
            p.deleted_at.get_or_insert(now);
            let key = (p.namespace.clone(), p.name.clone());
            // A pod recreated under the same name (a StatefulSet's) already owns the name.
            if self.by_name.get(&key).is_some_and(|u| u == uid) {
                self.by_name.remove(&key);
            }
        }
    }

    /// A re-list starts (first list, or after 410 Gone): collect until `relist_done`.
    pub fn relist_start(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    /// The re-list is complete: pods not listed were deleted while we were not watching.
    pub fn relist_done(&mut self, now: Instant) {
        let Some(listed) = self.relisting.take() else {
            return;
        };
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !listed.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.delete(&uid, now);
        }
        for (_, pod) in listed {
            self.insert(pod);
        }
    }

    /// Drops deleted pods past their grace period and owners no pod refers to.
    pub fn sweep(&mut self, now: Instant) {
        self.pods.retain(|_, p| {
            p.deleted_at
                .is_none_or(|t| now.saturating_duration_since(t) < DELETED_GRACE)
        });
        let pods = &self.pods;
        self.mirrors.retain(|_, uid| pods.contains_key(uid));
        let used: BTreeSet<&OwnerRef> = pods
            .values()
            .filter_map(|p| p.controller.as_ref())
            .collect();
        self.owners.retain(|k, _| used.contains(k));
    }

    /// The pod a cgroup's UID names: the pod itself, or the mirror pod of a static pod.
    pub fn get(&self, cgroup_uid: &str) -> Option<&PodMeta> {
        self.pods.get(cgroup_uid).or_else(|| {
            self.mirrors
                .get(cgroup_uid)
                .and_then(|uid| self.pods.get(uid))
        })
    }

    /// UID of the live pod `namespace/name`.
    pub fn uid_by_name(&self, namespace: &str, name: &str) -> Option<&str> {
        self.by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(String::as_str)
    }

    /// Owners not yet resolved (or whose lookup failed), to look up.
    pub fn unresolved_owners(&self) -> Vec<OwnerRef> {
        let mut out: BTreeSet<OwnerRef> = BTreeSet::new();
        for p in self.pods.values() {
            if let Some(o) = &p.controller
                && needs_lookup(o)
                && !self.owners.contains_key(o)
            {
                out.insert(o.clone());
            }
        }
        out.into_iter().collect()
    }

    pub fn set_owner(&mut self, owner: OwnerRef, lookup: OwnerLookup) {
        if let OwnerLookup::Resolved(up) = lookup {
            if self.owners.len() >= MAX_OWNERS {
                self.owners.clear();
            }
            self.owners.insert(owner, up);
        }
    }

    pub fn knows_owner(&self, owner: &OwnerRef) -> bool {
        self.owners.contains_key(owner)
    }

    /// Services (`namespace/name`) with this pod among their endpoints.
    pub fn services_of(&self, uid: &str) -> BTreeSet<&str> {
        self.slices
            .values()
            .filter(|s| s.pods.contains(uid))
            .map(|s| s.service.as_str())
            .collect()
    }

    /// The names a workload in pod `cgroup_uid` (container `container_id`) is exported with.
    pub fn names(&self, cgroup_uid: &str, container_id: Option<&str>) -> Option<PodNames> {
        let pod = self.get(cgroup_uid)?;
        let resolved = pod.controller.as_ref().and_then(|o| self.owners.get(o));
        let services: Vec<&str> = self
            .services_of(&pod.uid)
            .into_iter()
            .map(|s| s.split_once('/').map_or(s, |(_, n)| n))
            .collect();
        Some(PodNames {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container: container_id
                .and_then(|id| pod.containers.get(id))
                .cloned()
                .unwrap_or_default(),
            workload: workload_name(pod, resolved),
            // Several Services may select one pod; sorted, comma-joined, one label value.
            service: services.join(","),
            labels: pod.labels.clone(),
        })
    }

    /// Live pods on this node that declare our readiness gate, sorted by namespace/name (the
    /// order caps are applied in, so a decision does not depend on hash order).
    pub fn gated_pods(&self) -> Vec<GatedPod> {
        let mut out: Vec<GatedPod> = self
            .pods
            .values()
            .filter(|p| p.gated && p.deleted_at.is_none())
            .map(|p| GatedPod {
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                observed: p.condition.clone(),
                services: self
                    .services_of(&p.uid)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// This node's pods behind Service `namespace/name` (from its EndpointSlices), as
    /// (uid, namespace, name), sorted by name; None when no slice of the Service is known (no
    /// such Service, or none of its slices has an endpoint). Pods the pod watch has not named
    /// yet are listed by UID with empty names.
    pub fn service_pods(&self, service: &str) -> Option<Vec<(String, String, String)>> {
        let mut uids = BTreeSet::new();
        let mut known = false;
        for s in self.slices.values().filter(|s| s.service == service) {
            known = true;
            uids.extend(s.pods.iter().cloned());
        }
        if !known {
            return None;
        }
        let mut out: Vec<(String, String, String)> = uids
            .into_iter()
            .map(|uid| match self.pods.get(&uid) {
                Some(p) => (uid, p.namespace.clone(), p.name.clone()),
                None => (uid, String::new(), String::new()),
            })
            .collect();
        out.sort_by(|a, b| (&a.1, &a.2, &a.0).cmp(&(&b.1, &b.2, &b.0)));
        Some(out)
    }

    /// Every endpoint of Service `namespace/name`, over all its slices and nodes.
    pub fn service_endpoints(&self, service: &str) -> ServiceEndpoints {
        let mut e = ServiceEndpoints::default();
        for s in self.slices.values().filter(|s| s.service == service) {
            e.total += s.total;
            e.ready += s.ready;
            e.ready_local.extend(s.ready_local.iter().cloned());
        }
        e
    }

    /// Records the condition just written, so the next round does not write it again before
    /// the watch brings the pod back.
    pub fn set_condition(&mut self, uid: &str, condition: ObservedCondition) {
        if let Some(p) = self.pods.get_mut(uid) {
            p.condition = Some(condition);
        }
    }

    /// An EndpointSlice added or changed: remember which of this node's pods it lists.
    pub fn slice_upsert(&mut self, slice: &EndpointSlice, node: &str) {
        let Some(key) = slice_key(slice) else {
            return;
        };
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|s| format!("{}/{s}", key.0));
        let local = |e: &&Endpoint| on_node(e, node);
        let pod_uid = |e: &Endpoint| {
            e.target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.uid.clone())
        };
        let ready = |e: &Endpoint| e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
        let pods: BTreeSet<String> = slice
            .endpoints
            .iter()
            .filter(local)
            .filter_map(pod_uid)
            .collect();
        let ready_local: BTreeSet<String> = slice
            .endpoints
            .iter()
            .filter(local)
            .filter(|e| ready(e))
            .filter_map(pod_uid)
            .collect();
        let total = slice.endpoints.len();
        let ready = slice.endpoints.iter().filter(|e| ready(e)).count();
        let target = match &mut self.slices_relisting {
            Some(buffer) => buffer,
            None => &mut self.slices,
        };
        match service {
            // Slices of other nodes are kept as counts (the Service floor needs every endpoint
            // of a Service); only this node's pods are kept by UID.
            Some(service) if total > 0 => {
                if !target.contains_key(&key) && target.len() >= MAX_SLICES {
                    self.refused.slices += 1;
                    return;
                }
                target.insert(
                    key,
                    Slice {
                        service,
                        pods,
                        total,
                        ready,
                        ready_local,
                    },
                );
            }
            _ => {
                target.remove(&key);
            }
        }
    }

    pub fn slice_delete(&mut self, slice: &EndpointSlice) {
        if let Some(key) = slice_key(slice) {
            if let Some(buffer) = &mut self.slices_relisting {
                buffer.remove(&key);
            }
            self.slices.remove(&key);
        }
    }

    pub fn slices_relist_start(&mut self) {
        self.slices_relisting = Some(HashMap::new());
    }

    pub fn slices_relist_done(&mut self) {
        if let Some(listed) = self.slices_relisting.take() {
            self.slices = listed;
        }
    }
}

fn slice_key(slice: &EndpointSlice) -> Option<(String, String)> {
    Some((
        slice.metadata.namespace.clone()?,
        slice.metadata.name.clone()?,
    ))
}

fn on_node(e: &Endpoint, node: &str) -> bool {
    e.node_name.as_deref() == Some(node)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{
        api::{
            core::v1::{ContainerStatus, ObjectReference, PodStatus},
            discovery::v1::Endpoint,
        },
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };

    use super::*;

    fn pod(uid: &str, name: &str, owner: Option<(&str, &str)>) -> PodMeta {
        let p = Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([
                    ("app".to_string(), name.to_string()),
                    ("team".to_string(), "checkout".to_string()),
                ])),
                owner_references: owner.map(|(kind, name)| {
                    vec![OwnerReference {
                        kind: kind.into(),
                        name: name.into(),
                        controller: Some(true),
                        api_version: "apps/v1".into(),
                        uid: "owner-uid".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "web".into(),
                    container_id: Some(format!("containerd://{}", "a".repeat(64))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        PodMeta::from_pod(&p, &["app".to_string()]).expect("pod")
    }

    fn slice(name: &str, service: &str, endpoints: &[(&str, &str)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_string(),
                    service.to_string(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: endpoints
                .iter()
                .map(|(uid, node)| Endpoint {
                    addresses: vec!["10.0.0.1".into()],
                    node_name: Some(node.to_string()),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        uid: Some(uid.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Catches: the container id kept with its runtime prefix (never matches the cgroup's), the
    /// owner chain not followed, names of Services on other nodes attached to our pods.
    #[test]
    fn names_follow_owner_chain_containers_and_local_endpoints() {
        let mut ix = PodIndex::new();
        ix.upsert(pod("u1", "web-7d4-x", Some(("ReplicaSet", "web-7d4"))));
        let rs = OwnerRef {
            namespace: "shop".into(),
            kind: "ReplicaSet".into(),
            name: "web-7d4".into(),
        };
        assert_eq!(ix.unresolved_owners(), vec![rs.clone()]);
        let n = ix.names("u1", Some(&"a".repeat(64))).expect("names");
        assert_eq!(
            (n.namespace.as_str(), n.pod.as_str(), n.container.as_str()),
            ("shop", "web-7d4-x", "web")
        );
        assert_eq!(n.workload, "replicaset/web-7d4", "before the lookup");
        ix.set_owner(
            rs.clone(),
            OwnerLookup::Resolved(OwnerRef {
                kind: "Deployment".into(),
                name: "web".into(),
                ..rs.clone()
            }),
        );
        assert!(ix.unresolved_owners().is_empty());
        ix.slice_upsert(
            &slice("web-abc", "web", &[("u1", "n1"), ("u9", "n2")]),
            "n1",
        );
        ix.slice_upsert(&slice("db-abc", "db", &[("u9", "n1")]), "n1");
        ix.slice_upsert(&slice("other", "other", &[("u1", "n2")]), "n1");
        let n = ix.names("u1", Some("unknown-container")).expect("names");
        assert_eq!(n.workload, "deployment/web");
        assert_eq!(n.service, "web");
        assert_eq!(n.container, "", "unknown container id: no name");
        assert_eq!(ix.services(), 2);
        // A second Service selecting the pod: both, sorted.
        ix.slice_upsert(&slice("api-abc", "api", &[("u1", "n1")]), "n1");
        assert_eq!(ix.names("u1", None).expect("names").service, "api,web");
        ix.slice_delete(&slice("api-abc", "api", &[]));
        assert_eq!(ix.names("u1", None).expect("names").service, "web");
        // The endpoint moved away: the slice no longer concerns this node.
        ix.slice_upsert(&slice("web-abc", "web", &[("u9", "n2")]), "n1");
        assert_eq!(ix.names("u1", None).expect("names").service, "");
    }

    /// Catches: a re-list (after 410 Gone or a reconnect) that keeps pods deleted meanwhile
    /// forever, or forgets names before the last counters were exported.
    #[test]
    fn relist_deletes_what_was_not_listed_after_a_grace() {
        let t0 = Instant::now();
        let mut ix = PodIndex::new();
        ix.upsert(pod("u1", "a", None));
        ix.upsert(pod("u2", "b", Some(("StatefulSet", "db"))));
        ix.relist_start();
        ix.upsert(pod("u2", "b", Some(("StatefulSet", "db"))));
        assert_eq!(ix.pods(), 2, "nothing changes before the list is complete");
        ix.relist_done(t0);
        assert_eq!(ix.pods(), 1);
        assert_eq!(ix.uid_by_name("shop", "a"), None);
        assert_eq!(ix.uid_by_name("shop", "b"), Some("u2"));
        assert_eq!(ix.names("u2", None).expect("b").workload, "statefulset/db");
        assert_eq!(
            ix.names("u1", None).expect("deleted, in grace").workload,
            "pod/a"
        );
        ix.sweep(t0 + DELETED_GRACE);
        assert!(ix.names("u1", None).is_none());
    }

    /// Catches: a static pod (its cgroup carries the config hash) left unnamed.
    #[test]
    fn static_pods_are_found_through_their_mirror() {
        let mut ix = PodIndex::new();
        let mut p = pod("mirror-uid", "etcd-node1", Some(("Node", "node1")));
        p.mirror_of = Some("confighash".into());
        ix.upsert(p);
        let n = ix.names("confighash", None).expect("by config hash");
        assert_eq!(
            (n.pod.as_str(), n.workload.as_str()),
            ("etcd-node1", "node/node1")
        );
    }

    /// Catches: the Service floor counting only this node's slices (a Service whose other
    /// endpoints are all elsewhere would look like it had one endpoint), endpoints marked not
    /// ready counted as ready, an unset `ready` (which means ready) counted as not ready.
    #[test]
    fn service_endpoints_count_every_slice_and_node() {
        use k8s_openapi::api::discovery::v1::EndpointConditions;
        let mut ix = PodIndex::new();
        ix.slice_upsert(&slice("web-1", "web", &[("u1", "n1"), ("u2", "n2")]), "n1");
        let mut s2 = slice("web-2", "web", &[("u3", "n2"), ("u4", "n3"), ("u5", "n1")]);
        s2.endpoints[0].conditions = Some(EndpointConditions {
            ready: Some(false),
            ..Default::default()
        });
        s2.endpoints[2].conditions = Some(EndpointConditions {
            ready: Some(false),
            ..Default::default()
        });
        ix.slice_upsert(&s2, "n1");
        ix.slice_upsert(&slice("web-3", "web", &[("u6", "n2")]), "n1");
        ix.slice_upsert(&slice("db-1", "db", &[("u7", "n2")]), "n1");
        let e = ix.service_endpoints("shop/web");
        assert_eq!((e.total, e.ready), (6, 4));
        assert_eq!(e.ready_local, ["u1".to_string()].into());
        assert_eq!(ix.services(), 1, "db has no endpoint here");
        ix.slice_delete(&slice("web-3", "web", &[]));
        assert_eq!(ix.service_endpoints("shop/web").total, 5);
    }

    /// Catches: pods of other nodes listed under a Service, pods of a second Service mixed in,
    /// a Service whose endpoints are all elsewhere answered as unknown (it exists: an empty
    /// list), a pod not yet named dropped instead of listed by UID; labels outside the
    /// allow-list kept (every pod label a series).
    #[test]
    fn service_pods_are_this_nodes_endpoints_and_labels_are_allow_listed() {
        let mut ix = PodIndex::new();
        ix.upsert(pod("u2", "web-b", None));
        ix.upsert(pod("u1", "web-a", None));
        ix.slice_upsert(&slice("web-1", "web", &[("u2", "n1"), ("u9", "n2")]), "n1");
        ix.slice_upsert(&slice("web-2", "web", &[("u1", "n1"), ("u7", "n1")]), "n1");
        ix.slice_upsert(&slice("db-1", "db", &[("u1", "n1")]), "n1");
        ix.slice_upsert(&slice("far-1", "far", &[("u8", "n2")]), "n1");
        let row = |u: &str, n: &str| (u.to_string(), n.to_string(), n.to_string());
        let named = |u: &str, n: &str| (u.to_string(), "shop".to_string(), n.to_string());
        assert_eq!(
            ix.service_pods("shop/web"),
            Some(vec![
                row("u7", ""),
                named("u1", "web-a"),
                named("u2", "web-b")
            ])
        );
        assert_eq!(ix.service_pods("shop/far"), Some(vec![]));
        assert_eq!(ix.service_pods("shop/nope"), None);
        assert_eq!(ix.service_pods("other/web"), None);
        let n = ix.names("u1", None).expect("names");
        assert_eq!(
            n.labels,
            BTreeMap::from([("app".to_string(), "web-a".to_string())])
        );
    }

    /// Catches: unbounded growth when a node reports more pods than any kubelet runs.
    #[test]
    fn pods_past_the_bound_are_counted_not_kept() {
        let mut ix = PodIndex::new();
        for i in 0..MAX_PODS + 3 {
            ix.upsert(pod(&format!("u{i}"), &format!("p{i}"), None));
        }
        assert_eq!(ix.pods(), MAX_PODS);
        assert_eq!(ix.refused.pods, 3);
    }
}

//! Kubernetes pod metadata: names for the pods the cgroup paths identify by UID.
//!
//! Enabled by `--node-name` (env `NODE_NAME`, from the downward API in a DaemonSet). One
//! `kube::Client` (in-cluster service account, or `--kubeconfig`) watches:
//!
//! * the pods bound to this node (`fieldSelector=spec.nodeName=<node>`: the API server sends only
//!   those, so a node's collector costs the API server one small watch);
//! * EndpointSlices cluster-wide, keeping only endpoints on this node (the Services of our pods;
//!   slices carry `nodeName` and the pod's UID, so no selector matching is needed);
//! * and, once per owner, a metadata-only GET of a pod's ReplicaSet or Job, whose own controller
//!   is the workload users name (Deployment, CronJob). Chosen over the `pod-template-hash`
//!   heuristic (strip the hash from the ReplicaSet's name): the ownerReference is the truth,
//!   also for ReplicaSets of other controllers (Argo Rollouts) and for Jobs, whose names carry no
//!   hash; it costs `get` on replicasets and jobs and one request per ReplicaSet, not per pod.
//!
//! kube's `watcher` lists, then watches from the list's resourceVersion, re-lists on 410 Gone,
//! uses bookmarks, and backs off exponentially (client-go's 0.8 s … 30 s with jitter) while the
//! API server is unreachable. Meanwhile the collector keeps collecting: pods already known keep
//! their names (the index is not cleared on a disconnect), new pods are exported by UID, and the
//! state is visible at `/v1/kubernetes` and in `collector_kubernetes_connected`.
//!
//! The client is kept (`Kubernetes::client`) so the readiness-gate writer can patch
//! `pods/status` with the same credentials.

pub mod gate;
pub mod index;
pub mod lease;
mod readiness;
mod watch;
pub mod watchdog;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Instant, SystemTime},
};

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use serde::Serialize;
use tokio::{sync::watch as tokio_watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{export::prometheus::NodeLabels, identity::PodNames, verdict::rfc3339};
use index::PodIndex;

/// `[kubernetes]` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The node whose pods are watched (`spec.nodeName`).
    pub node_name: String,
    /// A kubeconfig file; None: the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Pod labels exported (`label_<name>` on Prometheus series, `k8s.pod.label.<name>` on
    /// OTLP resources): an allow-list, as every label would be a series dimension.
    pub pod_labels: Vec<String>,
}

/// At most this many pod labels are allowed (`--pod-label`): each one multiplies nothing by
/// itself (a pod has one value), but every one lengthens every series of the node.
pub const MAX_POD_LABELS: usize = 16;

/// The Prometheus label a pod label is exported as: `label_` and its name with every character
/// outside `[a-zA-Z0-9_]` replaced by `_` (kube-state-metrics' convention, so queries that
/// join on `label_app_kubernetes_io_name` read the same).
pub fn prometheus_label_name(pod_label: &str) -> String {
    let mut out = String::from("label_");
    out.extend(pod_label.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration (no --kubeconfig given): {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// What the collector watches; a bounded label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Pods,
    EndpointSlices,
}

impl Resource {
    pub const fn as_str(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::EndpointSlices => "endpointslices",
        }
    }
}

/// The self-metrics of the Kubernetes side (registered in `export::prometheus`).
#[derive(Clone, Default)]
pub struct KubeMetrics {
    pub connected: Family<NodeLabels, Gauge>,
    pub pods: Family<NodeLabels, Gauge>,
    pub watch_errors: Family<ResourceLabels, Counter>,
    /// Readiness gates (`gate::Summary` of the last round): pods declaring the gate, those
    /// decided False, those held True by a cap (by cap), and patches by result.
    pub readiness_gated: Family<NodeLabels, Gauge>,
    pub readiness_false: Family<NodeLabels, Gauge>,
    pub readiness_held: Family<CapLabels, Gauge>,
    pub readiness_patches: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CapLabels {
    pub cap: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

/// `GET /v1/kubernetes`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Every watch is established (listed, watching).
    pub connected: bool,
    /// Pods on this node known by name.
    pub pods: usize,
    /// Services with an endpoint on this node.
    pub services: usize,
    /// RFC 3339 UTC of the last change of `connected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The last watch error, while disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Times a watch was lost since start.
    pub disconnects: u64,
    /// Objects not kept because a bound was reached.
    pub refused: index::Refused,
    /// Readiness gates: the last round (None until the first, or when not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<gate::Summary>,
    /// This node's Lease (renewed for the watchdog).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
}

/// This node's Lease as last renewed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeaseStatus {
    pub name: String,
    /// RFC 3339 UTC of the last successful renewal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed: Option<String>,
    /// The last renewal's error, while failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Status {
    /// A collector without `--node-name`.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            node: None,
            connected: false,
            pods: 0,
            services: 0,
            since: None,
            last_error: None,
            disconnects: 0,
            refused: Default::default(),
            readiness: None,
            lease: None,
        }
    }
}

#[derive(Debug)]
struct Connection {
    /// Per watch: established (true) or failing (false); none until its first answer.
    pods: Option<bool>,
    slices: Option<bool>,
    since: SystemTime,
    last_error: Option<String>,
    disconnects: u64,
}

/// What one watch answer changed.
#[derive(Debug, PartialEq, Eq)]
struct Change {
    /// The overall state flipped to this.
    connected: Option<bool>,
    /// This watch just started failing (first failure, or first after a success).
    started_failing: bool,
}

impl Connection {
    fn connected(&self) -> bool {
        self.pods == Some(true) && self.slices == Some(true)
    }

    fn update(&mut self, r: Resource, ok: bool, error: Option<String>, now: SystemTime) -> Change {
        let before = self.connected();
        let was = match r {
            Resource::Pods => self.pods.replace(ok),
            Resource::EndpointSlices => self.slices.replace(ok),
        };
        if was == Some(true) && !ok {
            self.disconnects += 1;
        }
        if let Some(e) = error {
            self.last_error = Some(e);
        }
        let after = self.connected();
        if before != after {
            self.since = now;
        }
        Change {
            connected: (before != after).then_some(after),
            started_failing: !ok && was != Some(false),
        }
    }
}

/// The shared handle: the index the identity resolver and the API read, the connection state.
pub struct Kubernetes {
    node: String,
    pod_labels: Vec<String>,
    client: kube::Client,
    index: RwLock<PodIndex>,
    connection: Mutex<Connection>,
    metrics: KubeMetrics,
    readiness: Mutex<Option<gate::Summary>>,
    lease: Mutex<Option<LeaseStatus>>,
}

impl Kubernetes {
    /// Builds the client (a bad kubeconfig or a missing service account is a start-up error;
    /// an unreachable API server is not: the watches retry).
    pub async fn connect(
        config: &KubernetesConfig,
        metrics: KubeMetrics,
    ) -> Result<Arc<Self>, KubeError> {
        // kube's rustls uses the process-wide provider: the one the rest of the collector uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kc = match &config.kubeconfig {
            Some(path) => {
                let err = |source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                };
                let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(err)?
            }
            None => kube::Config::incluster().map_err(KubeError::InCluster)?,
        };
        let client = kube::Client::try_from(kc).map_err(KubeError::Client)?;
        let node = config.node_name.clone();
        metrics
            .connected
            .get_or_create(&NodeLabels { node: node.clone() })
            .set(0);
        info!(node, "Kubernetes pod metadata: watching this node's pods");
        Ok(Arc::new(Self {
            node,
            pod_labels: config.pod_labels.clone(),
            client,
            index: RwLock::new(PodIndex::new()),
            connection: Mutex::new(Connection {
                pods: None,
                slices: None,
                since: SystemTime::now(),
                last_error: None,
                disconnects: 0,
            }),
            metrics,
            readiness: Mutex::new(None),
            lease: Mutex::new(None),
        }))
    }

    /// Starts the watch tasks; they end when `shutdown` turns true.
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: tokio_watch::Receiver<bool>,
    ) -> Vec<(&'static str, JoinHandle<()>)> {
        vec![
            (
                "kubernetes-pods",
                tokio::spawn(watch::pods(self.clone(), shutdown.clone())),
            ),
            (
                "kubernetes-endpointslices",
                tokio::spawn(watch::endpoint_slices(self.clone(), shutdown)),
            ),
        ]
    }

    /// Starts the readiness-gate writer (`readiness`) and this node's Lease renewal.
    pub fn spawn_readiness(
        self: &Arc<Self>,
        config: gate::ReadinessConfig,
        verdicts: crate::verdict::SharedVerdicts,
        shutdown: tokio_watch::Receiver<bool>,
    ) -> Vec<(&'static str, JoinHandle<()>)> {
        let lease = tokio::spawn(lease::renew_node_lease(
            self.clone(),
            config.lease_namespace.clone(),
            config.lease_renew,
            config.lease_duration,
            shutdown.clone(),
        ));
        vec![
            ("kubernetes-lease", lease),
            (
                "kubernetes-readiness",
                tokio::spawn(readiness::run(self.clone(), config, verdicts, shutdown)),
            ),
        ]
    }

    fn set_readiness(&self, summary: gate::Summary) {
        let node = NodeLabels {
            node: self.node.clone(),
        };
        let m = &self.metrics;
        m.readiness_gated
            .get_or_create(&node)
            .set(summary.gated as i64);
        m.readiness_false
            .get_or_create(&node)
            .set(summary.r#false as i64);
        for cap in [gate::Cap::ServiceFloor, gate::Cap::NodeShare] {
            let n = summary.held.iter().filter(|h| h.cap == cap).count();
            m.readiness_held
                .get_or_create(&CapLabels { cap: cap.label() })
                .set(n as i64);
        }
        *self.readiness.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary);
    }

    /// A `pods/status` patch of the readiness condition: `written` or `failed`.
    fn count_patch(&self, result: &'static str) {
        self.metrics
            .readiness_patches
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn set_lease(&self, error: Option<String>) {
        let mut l = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        let renewed = match &error {
            None => Some(rfc3339(SystemTime::now())),
            Some(_) => l.as_ref().and_then(|l| l.renewed.clone()),
        };
        *l = Some(LeaseStatus {
            name: lease::node_lease_name(&self.node),
            renewed,
            last_error: error,
        });
    }

    /// The client, with the collector's credentials (for writers such as readiness gates).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Records a pod as the pod watch does for one whose controller needs no lookup (its
    /// direct owner names it). For tests and tools that seed the index without an API server.
    pub fn upsert_pod(&self, pod: &k8s_openapi::api::core::v1::Pod) -> bool {
        let Some(meta) = index::PodMeta::from_pod(pod, &self.pod_labels) else {
            return false;
        };
        self.write().upsert(meta);
        self.publish_pod_count();
        true
    }

    /// Records an EndpointSlice as the slice watch does (for tests and tools, as `upsert_pod`).
    pub fn upsert_slice(&self, slice: &k8s_openapi::api::discovery::v1::EndpointSlice) {
        self.write().slice_upsert(slice, &self.node);
    }

    /// This node's pods behind Service `namespace/name`, as (uid, namespace, name); None when
    /// no EndpointSlice of that Service is known (`PodIndex::service_pods`).
    pub fn service_pods(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Vec<(String, String, String)>> {
        self.read().service_pods(&format!("{namespace}/{name}"))
    }

    /// Names of a workload in pod `cgroup_uid`, container `container_id`; None while unknown.
    pub fn names(&self, cgroup_uid: &str, container_id: Option<&str>) -> Option<PodNames> {
        self.read().names(cgroup_uid, container_id)
    }

    /// UID of the pod `namespace/name` on this node.
    pub fn uid_by_name(&self, namespace: &str, name: &str) -> Option<String> {
        self.read().uid_by_name(namespace, name).map(str::to_owned)
    }

    pub fn status(&self) -> Status {
        let c = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let ix = self.read();
        Status {
            enabled: true,
            node: Some(self.node.clone()),
            connected: c.connected(),
            pods: ix.pods(),
            services: ix.services(),
            since: Some(rfc3339(c.since)),
            last_error: if c.connected() {
                None
            } else {
                c.last_error.clone()
            },
            disconnects: c.disconnects,
            refused: ix.refused,
            readiness: self
                .readiness
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            lease: self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, PodIndex> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A watch answered (an event or a completed list).
    fn watch_ok(&self, r: Resource) {
        self.set_watch(r, true, None);
    }

    /// A watch failed; kube's watcher retries after its backoff.
    fn watch_failed(&self, r: Resource, error: String) {
        self.metrics
            .watch_errors
            .get_or_create(&ResourceLabels {
                resource: r.as_str(),
            })
            .inc();
        self.set_watch(r, false, Some(error));
    }

    fn set_watch(&self, r: Resource, ok: bool, error: Option<String>) {
        let mut c = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        let change = c.update(r, ok, error, SystemTime::now());
        if let Some(connected) = change.connected {
            let labels = NodeLabels {
                node: self.node.clone(),
            };
            self.metrics
                .connected
                .get_or_create(&labels)
                .set(i64::from(connected));
            if connected {
                info!(node = self.node, "Kubernetes API: watching");
            }
        }
        // Once per failing spell of each watch (not per retry), also when it never worked
        // (API server unreachable at start, RBAC refusing one resource).
        if change.started_failing {
            warn!(
                node = self.node,
                resource = r.as_str(),
                error = c.last_error.as_deref().unwrap_or(""),
                "Kubernetes watch failing: pods stay named as last seen, new pods are exported \
                 by UID until it resumes"
            );
        }
    }

    fn publish_pod_count(&self) {
        let n = self.read().pods();
        self.metrics
            .pods
            .get_or_create(&NodeLabels {
                node: self.node.clone(),
            })
            .set(n as i64);
    }

    fn sweep(&self, now: Instant) {
        self.write().sweep(now);
        self.publish_pod_count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches: "connected" while one of the two watches fails (Services silently stale);
    /// every retry counted as a disconnect; an API server unreachable from the start never
    /// reported (no transition from connected ever happens).
    #[test]
    fn connected_needs_both_watches_and_failures_are_reported_once_per_spell() {
        let t = SystemTime::UNIX_EPOCH;
        let mut c = Connection {
            pods: None,
            slices: None,
            since: t,
            last_error: None,
            disconnects: 0,
        };
        let failing = |connected| Change {
            connected,
            started_failing: true,
        };
        let quiet = |connected| Change {
            connected,
            started_failing: false,
        };
        // Unreachable from the start: reported once, retries are quiet.
        assert_eq!(
            c.update(Resource::Pods, false, Some("refused".into()), t),
            failing(None)
        );
        assert_eq!(
            c.update(Resource::Pods, false, Some("refused".into()), t),
            quiet(None)
        );
        assert_eq!(c.disconnects, 0, "never connected: nothing was lost");
        assert_eq!(c.update(Resource::Pods, true, None, t), quiet(None));
        assert!(
            !c.connected(),
            "the EndpointSlice watch has not answered yet"
        );
        let t1 = t + std::time::Duration::from_secs(1);
        assert_eq!(
            c.update(Resource::EndpointSlices, true, None, t1),
            quiet(Some(true))
        );
        assert_eq!(c.since, t1);
        // An outage: both watches fail, one disconnect each, the state flips once.
        let t2 = t + std::time::Duration::from_secs(2);
        assert_eq!(
            c.update(Resource::Pods, false, Some("reset".into()), t2),
            failing(Some(false))
        );
        assert_eq!(
            c.update(Resource::EndpointSlices, false, None, t2),
            failing(None)
        );
        assert_eq!(
            c.update(Resource::Pods, false, Some("refused".into()), t2),
            quiet(None)
        );
        assert_eq!(
            (c.disconnects, c.last_error.as_deref()),
            (2, Some("refused"))
        );
        assert_eq!(c.update(Resource::Pods, true, None, t2), quiet(None));
        assert_eq!(
            c.update(Resource::EndpointSlices, true, None, t2),
            quiet(Some(true))
        );
    }
}

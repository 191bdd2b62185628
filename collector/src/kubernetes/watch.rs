//! The watch tasks: pods on this node and EndpointSlices, fed into the `PodIndex`.
//!
//! Each task runs kube's `watcher` until its first error, then starts a fresh one after a
//! backoff (kube's `DefaultBackoff`: client-go's 0.8 s doubling to 30 s, jittered, so a
//! thousand nodes do not reconnect in step). A fresh watcher lists first: the list answering is
//! the proof that the API server is back (a resumed watch on an idle node would say nothing for
//! minutes), and the list also catches what changed while we were away. Within one watcher,
//! kube follows bookmarks and re-lists on 410 Gone itself.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod, discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    runtime::{
        utils::Backoff,
        watcher::{self, DefaultBackoff, Event},
    },
};
use tokio::sync::watch as tokio_watch;
use tracing::{debug, warn};

use super::{
    Kubernetes, Resource,
    index::{OwnerLookup, OwnerRef, PodMeta, needs_lookup},
};

/// Deleted pods leave the index and failed owner lookups are retried this often.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(10);
/// One owner lookup; the pod is published with its direct owner if it takes longer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn pods(k: Arc<Kubernetes>, mut shutdown: tokio_watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(k.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", k.node));
    let mut backoff = DefaultBackoff::default();
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    'outer: loop {
        let mut stream = watcher::watcher(api.clone(), config.clone()).boxed();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break 'outer,
                _ = tick.tick() => {
                    k.sweep(Instant::now());
                    resolve_pending(&k).await;
                }
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        k.watch_ok(Resource::Pods);
                        if matches!(ev, Event::InitDone) {
                            backoff.reset();
                        }
                        on_pod_event(&k, ev).await;
                    }
                    Some(Err(e)) => {
                        k.watch_failed(Resource::Pods, e.to_string());
                        break;
                    }
                    None => break,
                },
            }
        }
        let wait = backoff.next().unwrap_or(Duration::from_secs(30));
        debug!(?wait, "pod watch: retrying");
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn on_pod_event(k: &Kubernetes, ev: Event<Pod>) {
    match ev {
        Event::Init => k.write().relist_start(),
        Event::InitApply(p) | Event::Apply(p) => {
            let Some(meta) = PodMeta::from_pod(&p, &k.pod_labels) else {
                debug!("pod without uid or name ignored");
                return;
            };
            // The owner first, so the pod's first label set already names its Deployment: a
            // later change would start a second series for the same container.
            let owner = meta.controller.clone().filter(needs_lookup);
            let known = owner.as_ref().is_none_or(|o| k.read().knows_owner(o));
            if let Some(owner) = owner
                && !known
            {
                let found = lookup_owner(k, &owner).await;
                k.write().set_owner(owner, found);
            }
            k.write().upsert(meta);
        }
        Event::Delete(p) => {
            if let Some(uid) = p.metadata.uid.as_deref() {
                k.write().delete(uid, Instant::now());
            }
        }
        Event::InitDone => k.write().relist_done(Instant::now()),
    }
    k.publish_pod_count();
}

/// Owners whose lookup failed earlier (API unreachable then).
async fn resolve_pending(k: &Kubernetes) {
    let pending = k.read().unresolved_owners();
    for owner in pending {
        let found = lookup_owner(k, &owner).await;
        if found == OwnerLookup::Failed {
            // Still unreachable: the next maintenance tick tries again.
            return;
        }
        k.write().set_owner(owner, found);
    }
}

/// The controller of a ReplicaSet or Job (metadata only), or the object itself when it has
/// none. A 404 (gone) or 403 (RBAC without `get` on it) settles the lookup on the object
/// itself, so a pod is never looked up again and again.
async fn lookup_owner(k: &Kubernetes, owner: &OwnerRef) -> OwnerLookup {
    let meta = match owner.kind.as_str() {
        "ReplicaSet" => {
            let api: Api<ReplicaSet> = Api::namespaced(k.client.clone(), &owner.namespace);
            tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(&owner.name))
                .await
                .map(|r| r.map(|o| o.map(|o| o.metadata)))
        }
        "Job" => {
            let api: Api<Job> = Api::namespaced(k.client.clone(), &owner.namespace);
            tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(&owner.name))
                .await
                .map(|r| r.map(|o| o.map(|o| o.metadata)))
        }
        _ => return OwnerLookup::Resolved(owner.clone()),
    };
    match meta {
        Ok(Ok(Some(m))) => OwnerLookup::Resolved(
            m.owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map_or_else(
                    || owner.clone(),
                    |o| OwnerRef {
                        namespace: owner.namespace.clone(),
                        kind: o.kind.clone(),
                        name: o.name.clone(),
                    },
                ),
        ),
        Ok(Ok(None)) => OwnerLookup::Resolved(owner.clone()),
        Ok(Err(kube::Error::Api(s))) if s.code == 403 => {
            warn!(
                kind = owner.kind,
                namespace = owner.namespace,
                error = %s,
                "owner lookup forbidden (RBAC: get on replicasets and jobs): pods are named by \
                 their direct owner"
            );
            OwnerLookup::Resolved(owner.clone())
        }
        Ok(Err(e)) => {
            debug!(error = %e, kind = owner.kind, name = owner.name, "owner lookup failed");
            OwnerLookup::Failed
        }
        Err(_) => OwnerLookup::Failed,
    }
}

pub(super) async fn endpoint_slices(k: Arc<Kubernetes>, mut shutdown: tokio_watch::Receiver<bool>) {
    let api: Api<EndpointSlice> = Api::all(k.client.clone());
    let mut backoff = DefaultBackoff::default();
    'outer: loop {
        let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break 'outer,
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        k.watch_ok(Resource::EndpointSlices);
                        let mut ix = k.write();
                        match ev {
                            Event::Init => ix.slices_relist_start(),
                            Event::InitApply(s) | Event::Apply(s) => ix.slice_upsert(&s, &k.node),
                            Event::Delete(s) => ix.slice_delete(&s),
                            Event::InitDone => {
                                ix.slices_relist_done();
                                backoff.reset();
                            }
                        }
                    }
                    Some(Err(e)) => {
                        k.watch_failed(Resource::EndpointSlices, e.to_string());
                        break;
                    }
                    None => break,
                },
            }
        }
        let wait = backoff.next().unwrap_or(Duration::from_secs(30));
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

//! Pods named by a real Kubernetes API server (root only): etcd + kube-apiserver built from
//! their Go modules (tests/src/k8s.rs), the collector's RBAC from deploy/rbac.yaml, the collector
//! authenticating with its ServiceAccount's token. Pods bound to this test's node are created
//! through the API; their UIDs then name test cgroups shaped as the kubelet makes them, so the
//! whole chain runs: kernel → socket cgroup → pod UID → pod watch → labels and API by name.
//!
//! Asserted, with exact values: a Deployment → ReplicaSet → pod chain exported as
//! `workload="deployment/web"` (from the ReplicaSet's ownerReference, not its name) with
//! namespace, pod, container (from the status' container id) and the Service from an
//! EndpointSlice; a StatefulSet pod; `/v1/pods/{namespace}/{name}/health|ready`; the API server
//! stopped mid-run → counting goes on under the names already known, a pod unknown to the API
//! is counted by UID, `/v1/kubernetes` and `collector_kubernetes_connected` say disconnected;
//! restarted → the watch resumes and a new pod is named; RBAC refuses what deploy/ does not grant.
//! Allow-listed pod labels (`--pod-label app,tier`) as `label_app`/`label_tier` (and no other
//! label); `/v1/services/{namespace}/{name}`; `collector status` by namespace/pod; OTLP (the
//! receiver of tests/otlp/receiver.py) with one resource per pod carrying exactly its `k8s.*`
//! attributes.
//! Run: `cargo test --release -p integration-tests --test kubernetes -- --test-threads=1`.

use std::{path::Path, time::Duration};

use collector::{
    app,
    config::{Config, OtlpConfig, OtlpProtocol},
    kubernetes::KubernetesConfig,
    status,
    verdict::{VerdictConfig, window::Geometry},
};
use integration_tests::{
    HostCgroup, Pod, fake_container_id, fake_pod_uid, free_port,
    k8s::ControlPlane,
    otlp::{OtlpReceiver, attr_pairs},
    pod_traffic_bin, read_listening, require_root, unique_prefix, wait_until_ok_blocking,
};
use serde_json::{Value, json};

const NS: &str = "shop";
const SENT: &str = "collector_tcp_sent_bytes_total";

fn pod_object(
    name: &str,
    node: &str,
    labels: Value,
    owner: Option<(&str, &str, &str, &str)>,
) -> Value {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": NS, "labels": labels },
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "app", "image": "registry.invalid/app:1" }]
        }
    });
    if let Some((api_version, kind, owner_name, uid)) = owner {
        p["metadata"]["ownerReferences"] = json!([{
            "apiVersion": api_version, "kind": kind, "name": owner_name, "uid": uid,
            "controller": true
        }]);
    }
    p
}

/// What the kubelet would write: the container's status with its runtime id.
fn set_container_running(cp: &ControlPlane, pod: &str, container_id: &str) {
    let patch = json!({ "status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "app",
            "image": "registry.invalid/app:1",
            "imageID": "registry.invalid/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "containerID": format!("containerd://{container_id}"),
            "ready": true,
            "started": true,
            "restartCount": 0,
            "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } }
        }]
    }});
    cp.kubectl(&[
        "patch",
        "pod",
        pod,
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])
    .expect("pod status");
}

/// The one `collector_tcp_sent_bytes_total` line of pod `uid`.
fn sent_line(metrics: &str, uid: &str) -> Option<String> {
    let needle = format!("pod_uid=\"{uid}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{SENT}{{")) && l.contains(&needle))
        .map(str::to_owned)
}

fn metrics(api: &str) -> String {
    status::get(api, "/metrics").expect("metrics").1
}

/// Waits until pod `uid`'s sent-bytes line is exactly `want`.
fn wait_line(api: &str, uid: &str, want: &str) {
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the pod's series",
        || {
            let m = metrics(api);
            let line = sent_line(&m, uid);
            if line.as_deref() == Some(want) {
                Ok(())
            } else {
                let all: Vec<&str> = m.lines().filter(|l| l.starts_with(SENT)).collect();
                Err(format!(
                    "got {line:?}, want {want:?}; every {SENT}: {all:#?}"
                ))
            }
        },
    );
}

fn kube_status(api: &str) -> Value {
    let (code, body) = status::get(api, "/v1/kubernetes").expect("API");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn send(pod: &Pod, to: &str, bytes: u64) {
    let out = pod
        .run(
            &pod_traffic_bin(),
            &["send", to, &bytes.to_string()],
            Duration::from_secs(60),
        )
        .expect("pod-traffic send");
    assert!(out.status.success(), "{out:?}");
}

/// A resource's attributes as sorted (key, value) pairs.
type Attributes = Vec<(String, String)>;

/// The resources of the newest request that has one for pod `uid` named by the API
/// (`k8s.pod.name` present): (that pod's resource attributes, every resource's attributes).
fn otlp_pod_resource(r: &OtlpReceiver, uid: &str) -> Option<(Attributes, Vec<Attributes>)> {
    r.requests().iter().rev().find_map(|q| {
        let all: Vec<Vec<(String, String)>> = q["request"]["resourceMetrics"]
            .as_array()?
            .iter()
            .map(|rm| attr_pairs(&rm["resource"]["attributes"]))
            .collect();
        let mine = all
            .iter()
            .find(|a| {
                a.contains(&("k8s.pod.uid".into(), uid.into()))
                    && a.iter().any(|(k, _)| k == "k8s.pod.name")
            })?
            .clone();
        Some((mine, all))
    })
}

/// `kubectl auth can-i` as the collector.
fn can_i(cp: &ControlPlane, kc: &Path, args: &[&str]) -> String {
    let mut a = vec!["auth", "can-i"];
    a.extend_from_slice(args);
    let out = cp.kubectl_as(kc, &a, None).expect("kubectl auth can-i");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn pods_are_named_by_a_real_api_server() {
    require_root();
    let prefix = unique_prefix("kube");
    let node = format!("node-{prefix}");
    let mut cp = ControlPlane::start(&prefix).expect("control plane");

    // The collector's identity and role, exactly as deploy/ ships them.
    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml"))
        .expect("deploy/rbac.yaml");
    cp.apply(&rbac).expect("apply deploy/rbac.yaml");
    let kc = cp
        .service_account_kubeconfig("collector", "collector")
        .expect("ServiceAccount token");
    // Catches: a role wider than the collector needs (a wildcard, secrets, writes, nodes/proxy).
    for (args, want) in [
        (&["list", "pods", "-A"][..], "yes"),
        (&["watch", "endpointslices.discovery.k8s.io", "-A"], "yes"),
        (&["get", "replicasets.apps", "-n", NS], "yes"),
        (&["list", "secrets", "-A"], "no"),
        (&["get", "secrets", "-n", "collector"], "no"),
        (&["patch", "pods", "-n", NS], "no"),
        (&["create", "pods/exec", "-n", NS], "no"),
        (&["get", "nodes/proxy"], "no"),
        (&["list", "replicasets.apps", "-A"], "no"),
    ] {
        assert_eq!(can_i(&cp, &kc, args), want, "can-i {args:?}");
    }
    // And a real request: refused by RBAC (403), not by a transport problem.
    let out = cp
        .kubectl_as(&kc, &["get", "secrets", "-n", "collector"], None)
        .expect("kubectl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("(Forbidden)"),
        "{out:?}"
    );

    // The workloads: Deployment web → ReplicaSet web-5c8d9 → pod; StatefulSet db → pod db-0;
    // Service web with an EndpointSlice listing the web pod on this node.
    cp.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    // What the controller-manager would create (none runs here): pods need their namespace's
    // default ServiceAccount to be admitted.
    cp.create(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": NS}}),
    );
    let template = json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    });
    let deploy_uid = cp.create(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}}),
    );
    // Named unlike its Deployment: the owner must come from the ownerReference.
    let rs_uid = cp.create(&json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "storefront-5c8d9", "namespace": NS,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                    "uid": deploy_uid, "controller": true}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}}),
    );
    let sts_uid = cp.create(&json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": NS},
            "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}}}),
    );
    let web_name = "storefront-5c8d9-x7k2p";
    let web_uid = cp.create(&pod_object(
        web_name,
        &node,
        // `team` is not allow-listed: never exported.
        json!({"app": "web", "tier": "frontend", "team": "checkout"}),
        Some(("apps/v1", "ReplicaSet", "storefront-5c8d9", &rs_uid)),
    ));
    let db_uid = cp.create(&pod_object(
        "db-0",
        &node,
        json!({"app": "db"}),
        Some(("apps/v1", "StatefulSet", "db", &sts_uid)),
    ));
    // A pod of another node: never watched by this collector.
    cp.create(&pod_object(
        "elsewhere",
        "other-node",
        json!({"app": "web"}),
        None,
    ));
    cp.create(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 9100}]}}),
    );
    cp.create(
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": NS,
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": 9100, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["198.18.91.2"], "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": NS, "name": web_name, "uid": web_uid}}]}),
    );
    let (web_cid, db_cid) = (fake_container_id(0x9101), fake_container_id(0x9201));
    set_container_running(&cp, web_name, &web_cid);
    set_container_running(&cp, "db-0", &db_cid);

    // The pods' cgroups and network namespaces, as the kubelet and containerd make them.
    let web = Pod::create(&prefix, 91, &web_uid, &web_cid).expect("web pod");
    let db = Pod::create(&prefix, 92, &db_uid, &db_cid).expect("db pod");
    let sink_cgroup = HostCgroup::create(&prefix, "sink").expect("sink cgroup");
    let sink_addr = format!("{}:9100", web.host_addr());
    let mut sink = sink_cgroup
        .spawn(&pod_traffic_bin(), &["sink", "0.0.0.0:9100"])
        .expect("sink");
    read_listening(&mut sink, Duration::from_secs(10)).expect("sink listening");
    let db_sink = format!("{}:9100", db.host_addr());

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let otlp = OtlpReceiver::start(free_port(), free_port());
    let config = Config {
        otlp: Some(OtlpConfig {
            endpoint: format!("http://127.0.0.1:{}/v1/metrics", otlp.http),
            protocol: OtlpProtocol::HttpProtobuf,
            headers: vec![],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            ca_file: None,
            client_cert: None,
            client_key: None,
            histogram: Default::default(),
        }),
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        kubelet_cgroup_roots: vec![integration_tests::HARNESS_KUBELET_ROOT.into()],
        kubernetes: Some(KubernetesConfig {
            node_name: node.clone(),
            kubeconfig: Some(kc.clone()),
            pod_labels: vec!["app".into(), "tier".into()],
        }),
        // Verdicts each second (the API by name lists them soon), over a window long enough that
        // no pod idle between two phases expires (5 windows idle: its series would be removed
        // and restart from zero).
        verdict: VerdictConfig {
            geometry: Geometry {
                bucket: Duration::from_secs(1),
                count: 60,
            },
            ..VerdictConfig::default()
        },
        ..Config::default()
    };
    let running = rt.block_on(app::start(config)).expect("collector starts");
    let api = format!("http://{}", running.addr);
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the pod watch",
        || {
            let s = kube_status(&api);
            (s["connected"] == true && s["pods"] == 2)
                .then_some(())
                .ok_or(s)
        },
    );

    send(&web, &sink_addr, 100_000);
    send(&db, &db_sink, 50_000);
    let web_line = |bytes: u64| {
        format!(
            "{SENT}{{workload_kind=\"pod\",workload=\"deployment/web\",pod_uid=\"{web_uid}\",\
             container_id=\"{web_cid}\",namespace=\"{NS}\",pod=\"{web_name}\",container=\"app\",\
             service=\"web\",label_app=\"web\",label_tier=\"frontend\"}} {bytes}"
        )
    };
    wait_line(&api, &web_uid, &web_line(100_000));
    // No Service selects db-0: no service label.
    wait_line(
        &api,
        &db_uid,
        &format!(
            "{SENT}{{workload_kind=\"pod\",workload=\"statefulset/db\",pod_uid=\"{db_uid}\",\
             container_id=\"{db_cid}\",namespace=\"{NS}\",pod=\"db-0\",container=\"app\",\
             label_app=\"db\"}} 50000"
        ),
    );
    let m = metrics(&api);
    assert!(
        m.contains(&format!(
            "collector_kubernetes_connected{{node=\"{node}\"}} 1"
        )),
        "{m}"
    );
    assert!(m.contains(&format!("collector_kubernetes_pods{{node=\"{node}\"}} 2")));

    // The API by name.
    let (code, body) = status::get(&api, &format!("/v1/pods/{NS}/{web_name}/health")).expect("API");
    assert_eq!(code, 200, "{body}");
    let h: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (&h["namespace"], &h["name"], &h["pod_uid"]),
        (&json!(NS), &json!(web_name), &json!(web_uid)),
        "{h}"
    );
    let workloads = wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(200),
        "a verdict for the web pod",
        || {
            let (_, b) =
                status::get(&api, &format!("/v1/pods/{NS}/{web_name}/health")).expect("API");
            let v: Value = serde_json::from_str(&b).expect("JSON");
            let w = v["workloads"].as_array().cloned().unwrap_or_default();
            (!w.is_empty()).then_some(w).ok_or(v)
        },
    );
    assert!(
        workloads
            .iter()
            .all(|w| w["pod_uid"] == json!(web_uid) && w["name"] == json!("deployment/web")),
        "{workloads:?}"
    );
    let ready = status::get(&api, &format!("/v1/pods/{NS}/{web_name}/ready")).expect("API");
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(
        status::get(&api, &format!("/v1/pods/{NS}/elsewhere/health"))
            .expect("API")
            .0,
        404,
        "a pod of another node is not known here"
    );
    assert_eq!(
        status::get(&api, "/v1/pods/Shop/x%2Fy/health")
            .expect("API")
            .0,
        400
    );

    // A Service by name: its pod on this node (not the other node's), with its verdict.
    let (code, body) = status::get(&api, &format!("/v1/services/{NS}/web")).expect("API");
    assert_eq!(code, 200, "{body}");
    let svc: Value = serde_json::from_str(&body).expect("JSON");
    let pods = svc["pods"].as_array().expect("pods");
    assert_eq!(
        pods.iter()
            .map(|p| (&p["namespace"], &p["name"], &p["pod_uid"]))
            .collect::<Vec<_>>(),
        vec![(&json!(NS), &json!(web_name), &json!(web_uid))],
        "{svc}"
    );
    assert_eq!(svc["node"], json!(node));
    assert_eq!(pods[0]["state"], svc["state"], "{svc}");
    assert_eq!(
        pods[0]["workloads"][0]["kubernetes"]["pod"],
        json!(web_name)
    );
    // db has no EndpointSlice: unknown here, said so.
    let (code, body) = status::get(&api, &format!("/v1/services/{NS}/db")).expect("API");
    assert_eq!(code, 404, "{body}");
    let err: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        err["error"],
        json!(format!(
            "no Service {NS}/db with endpoints known to the collector on node {node} (no \
             EndpointSlice of it with an endpoint)"
        ))
    );
    // `collector status` names pods by namespace/name and workload, not by UID.
    let table = status::table(&status::fetch(&api).expect("status"));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{NS}/{web_name} (deployment/web) "))),
        "{table}"
    );
    assert!(!table.contains(&web_uid), "{table}");

    // OTLP: each pod its own resource, with exactly its Kubernetes identity.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    let (web_res, all) = wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the web pod's resource at the OTLP receiver",
        || otlp_pod_resource(&otlp, &web_uid).ok_or(()),
    );
    assert_eq!(
        web_res,
        vec![
            pair("container.id", &web_cid),
            pair("host.name", host.trim()),
            pair("k8s.container.name", "app"),
            pair("k8s.deployment.name", "web"),
            pair("k8s.namespace.name", NS),
            pair("k8s.node.name", &node),
            pair("k8s.pod.label.app", "web"),
            pair("k8s.pod.label.tier", "frontend"),
            pair("k8s.pod.name", web_name),
            pair("k8s.pod.uid", &web_uid),
            pair("k8s.service.names", "web"),
            pair("service.name", "web"),
            pair("service.namespace", NS),
            pair("workload.kind", "pod"),
            pair("workload.name", "deployment/web"),
        ]
    );
    let (db_res, _) = wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the db pod's resource at the OTLP receiver",
        || otlp_pod_resource(&otlp, &db_uid).ok_or(()),
    );
    assert_eq!(
        db_res,
        vec![
            pair("container.id", &db_cid),
            pair("host.name", host.trim()),
            pair("k8s.container.name", "app"),
            pair("k8s.namespace.name", NS),
            pair("k8s.node.name", &node),
            pair("k8s.pod.label.app", "db"),
            pair("k8s.pod.name", "db-0"),
            pair("k8s.pod.uid", &db_uid),
            pair("k8s.statefulset.name", "db"),
            pair("service.name", "db"),
            pair("service.namespace", NS),
            pair("workload.kind", "pod"),
            pair("workload.name", "statefulset/db"),
        ]
    );
    // One resource per workload in a request: the web pod's once, no two alike.
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), all.len(), "{all:#?}");
    assert_eq!(
        all.iter()
            .filter(|a| a.contains(&pair("k8s.pod.uid", &web_uid)))
            .count(),
        1
    );

    // Outage: the API server goes away.
    cp.stop_apiserver();
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(200),
        "the collector to notice the outage",
        || {
            let s = kube_status(&api);
            (s["connected"] == false && s["last_error"].is_string())
                .then_some(())
                .ok_or(s)
        },
    );
    assert!(metrics(&api).contains(&format!(
        "collector_kubernetes_connected{{node=\"{node}\"}} 0"
    )));
    // Collection goes on, under the names already known.
    send(&web, &sink_addr, 100_000);
    wait_line(&api, &web_uid, &web_line(200_000));
    // A pod the API server could not tell us about: counted by UID alone.
    let (late_uid, late_cid) = (fake_pod_uid(0x9301), fake_container_id(0x9301));
    let late = Pod::create(&prefix, 93, &late_uid, &late_cid).expect("late pod");
    send(&late, &format!("{}:9100", late.host_addr()), 30_000);
    wait_line(
        &api,
        &late_uid,
        &format!(
            "{SENT}{{workload_kind=\"pod\",workload=\"{late_uid}\",pod_uid=\"{late_uid}\",\
             container_id=\"{late_cid}\"}} 30000"
        ),
    );

    // The API server comes back: the watch resumes and new pods are named again.
    cp.start_apiserver().expect("restart kube-apiserver");
    wait_until_ok_blocking(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "the watch to resume",
        || {
            let s = kube_status(&api);
            (s["connected"] == true).then_some(()).ok_or(s)
        },
    );
    let new_uid = cp.create(&pod_object("solo", &node, json!({"app": "solo"}), None));
    let new_cid = fake_container_id(0x9401);
    set_container_running(&cp, "solo", &new_cid);
    let solo = Pod::create(&prefix, 94, &new_uid, &new_cid).expect("solo pod");
    wait_until_ok_blocking(
        Duration::from_secs(20),
        Duration::from_millis(200),
        "the new pod in the index",
        || {
            let s = kube_status(&api);
            (s["pods"] == 3).then_some(()).ok_or(s)
        },
    );
    send(&solo, &format!("{}:9100", solo.host_addr()), 10_000);
    wait_line(
        &api,
        &new_uid,
        &format!(
            "{SENT}{{workload_kind=\"pod\",workload=\"pod/solo\",pod_uid=\"{new_uid}\",\
             container_id=\"{new_cid}\",namespace=\"{NS}\",pod=\"solo\",container=\"app\",\
             label_app=\"solo\"}} 10000"
        ),
    );
    let s = kube_status(&api);
    assert!(s["disconnects"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["node"], json!(node));
    eprintln!("kubernetes status after the outage: {s}");

    rt.block_on(running.shutdown());
    drop((sink, web, db, late, solo, sink_cgroup, otlp));
}

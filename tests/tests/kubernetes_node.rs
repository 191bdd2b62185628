//! A single-node cluster (root only): etcd, kube-apiserver and kube-controller-manager (its
//! EndpointSlice controller), and a real node — kubelet v1.37.2 from the same module, containerd
//! 1.6 and runc from Debian (tests/src/k8s.rs `Node`) — on this host's cgroup layout (v1
//! controllers + an empty cgroup2 `unified`: the kubelet runs with `failCgroupV1: false`).
//!
//! `readiness_gate_takes_a_pod_out_of_its_service`: two pods of Service `web` run the Go test
//! server in containers (image from an OCI archive, no registry), both declaring the readiness
//! gate. The collector runs as a host process against the API server, in `enforce` mode, with a
//! token bound to its (stand-in) pod on the node, deploy/rbac.yaml and deploy/admission.yaml as
//! shipped. Clients in the node's network namespace drive real traffic. When web-a answers
//! 5xx, the collector writes `False`, the kubelet turns the pod unready
//! (`ReadinessGatesNotReady`) and the EndpointSlice controller takes it out of `web`'s ready
//! endpoints — while web-b stays; when it recovers, all of that reverses.
//!
//! Run: `cargo test --release -p integration-tests --test kubernetes_node -- --test-threads=1`.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use collector::{
    app,
    config::Config,
    kubernetes::{
        KubernetesConfig,
        gate::{CONDITION_TYPE, Mode, ReadinessConfig},
    },
    status,
    verdict::{VerdictConfig, window::Geometry},
};
use integration_tests::{
    Load,
    k8s::{ControlPlane, Node},
    newest_go_server, require_root, unique_prefix, wait_until_ok_blocking,
};
use serde_json::{Value, json};

const NS: &str = "shop";
const PORT: u16 = 8080;
const SERVER_IMAGE: &str = "collector.test/server:1";

fn manifest(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// An OCI archive of an image from scratch holding `binary` as `/server` (buildah, as
/// `./x image` builds the collector's): what the node imports instead of pulling.
fn server_image(dir: &Path, binary: &Path) -> PathBuf {
    let archive = dir.join("server.oci.tar");
    let buildah = |args: &[&str]| -> String {
        let out = Command::new("buildah")
            .args(args)
            .output()
            .expect("buildah");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let c = buildah(&["from", "scratch"]);
    buildah(&["copy", &c, &binary.display().to_string(), "/server"]);
    buildah(&["config", "--entrypoint", r#"["/server"]"#, &c]);
    buildah(&[
        "commit",
        "-q",
        &c,
        &format!("oci-archive:{}:{SERVER_IMAGE}", archive.display()),
    ]);
    buildah(&["rm", &c]);
    archive
}

fn pod(cp: &ControlPlane, name: &str, node: &str) -> String {
    cp.create(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "readinessGates": [{"conditionType": CONDITION_TYPE}],
            "containers": [{
                "name": "app", "image": SERVER_IMAGE, "imagePullPolicy": "Never",
                "args": ["-listen", format!("0.0.0.0:{PORT}")],
                "ports": [{"containerPort": PORT}]
            }]
        }
    }))
}

fn get_pod(cp: &ControlPlane, name: &str) -> Value {
    let out = cp
        .kubectl(&["get", "pod", name, "-n", NS, "-o", "json"])
        .expect("get pod");
    serde_json::from_str(&out).expect("JSON")
}

/// Pod condition `type`: (status, reason).
fn pod_condition(pod: &Value, kind: &str) -> Option<(String, String)> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
            (s("status"), s("reason"))
        })
}

/// Service `web`'s endpoints as its EndpointSlices list them: pod name → ready.
fn web_endpoints(cp: &ControlPlane) -> BTreeMap<String, bool> {
    let out = cp
        .kubectl(&[
            "get",
            "endpointslices",
            "-n",
            NS,
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ])
        .expect("get endpointslices");
    let list: Value = serde_json::from_str(&out).expect("JSON");
    let mut eps = BTreeMap::new();
    for slice in list["items"].as_array().into_iter().flatten() {
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            let name = ep["targetRef"]["name"].as_str().unwrap_or("").to_owned();
            eps.insert(name, ep["conditions"]["ready"] == true);
        }
    }
    eps
}

/// Waits until the gate condition, the kubelet's Ready condition and the Service's endpoints
/// say what `want` says for each pod (gate (status, reason), ready).
fn wait_pods(cp: &ControlPlane, want: &[(&str, (&str, &str), bool)], what: &str) {
    let want_eps: BTreeMap<String, bool> =
        want.iter().map(|(n, _, r)| (n.to_string(), *r)).collect();
    wait_until_ok_blocking(
        Duration::from_secs(60),
        Duration::from_millis(250),
        what,
        || {
            let mut seen = Vec::new();
            for (name, (status, reason), ready) in want {
                let p = get_pod(cp, name);
                let gate = pod_condition(&p, CONDITION_TYPE);
                let kubelet = pod_condition(&p, "Ready");
                // The kubelet's own words: its Ready condition follows the gate.
                let want_kubelet = if *ready {
                    ("True".to_owned(), String::new())
                } else {
                    ("False".to_owned(), "ReadinessGatesNotReady".to_owned())
                };
                seen.push((name.to_string(), gate.clone(), kubelet.clone()));
                if gate != Some((status.to_string(), reason.to_string()))
                    || kubelet != Some(want_kubelet)
                {
                    return Err(format!("{seen:?}"));
                }
            }
            let eps = web_endpoints(cp);
            if eps != want_eps {
                return Err(format!("endpoints {eps:?}, pods {seen:?}"));
            }
            Ok(())
        },
    );
}

fn pod_health(api: &str, uid: &str) -> Value {
    let (_, body) = status::get(api, &format!("/v1/pods/{uid}/health")).expect("API");
    serde_json::from_str(&body).expect("JSON")
}

fn wait_state(api: &str, uid: &str, state: &str) {
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(250),
        &format!("pod {uid} {state}"),
        || {
            let h = pod_health(api, uid);
            (h["state"] == state).then_some(()).ok_or(h)
        },
    );
}

/// Catches: the collector not recognising the kubelet's real pod cgroups (cgroupfs driver:
/// `/<root>/kubepods/besteffort/pod<uid>/<container id>`), so its verdict never reaches the
/// pod; a condition the kubelet does not honour (wrong type, a merge patch that drops the
/// kubelet's own conditions, a status the kubelet overwrites); a `False` that never leaves the
/// Service's ready endpoints, or a recovery that never puts the pod back; the Service floor not
/// keeping web-b.
#[test]
fn readiness_gate_takes_a_pod_out_of_its_service() {
    require_root();
    let server = newest_go_server();
    let prefix = unique_prefix("kn");
    let cp = ControlPlane::start(&prefix).expect("control plane");
    for m in ["rbac.yaml", "admission.yaml"] {
        cp.apply(&manifest(m))
            .unwrap_or_else(|e| panic!("apply {m}: {e}"));
    }
    cp.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    cp.create(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": NS}}));
    let node = Node::start(&cp, &prefix, &["endpointslice"]).expect("node");
    node.import_image(&server_image(node.dir(), &server))
        .expect("import the server image");

    // The collector's own pod on the node (a stand-in container: the collector itself runs on
    // the host here), whose bound token names the node for the admission policy.
    let collector_pod = format!("collector-{}", node.name);
    cp.create(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": collector_pod, "namespace": "collector"},
            "spec": {"nodeName": node.name, "serviceAccountName": "collector",
                "automountServiceAccountToken": false,
                "containers": [{"name": "collector", "image": node.pause_image(),
                    "imagePullPolicy": "Never"}]}}));
    let kc = cp
        .pod_token_kubeconfig("collector", "collector", &collector_pod)
        .expect("bound token");

    cp.create(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": PORT, "targetPort": PORT}]}}));
    let names = ["web-a", "web-b"];
    let uids: Vec<String> = names.iter().map(|n| pod(&cp, n, &node.name)).collect();
    let addrs: Vec<SocketAddr> = names
        .iter()
        .map(|n| {
            wait_until_ok_blocking(
                Duration::from_secs(60),
                Duration::from_millis(250),
                &format!("{n} running"),
                || {
                    let p = get_pod(&cp, n);
                    let running =
                        p["status"]["containerStatuses"][0]["state"]["running"].is_object();
                    match p["status"]["podIP"].as_str() {
                        Some(ip) if running => {
                            Ok(SocketAddr::new(ip.parse().expect("pod IP"), PORT))
                        }
                        _ => Err(p["status"].clone()),
                    }
                },
            )
        })
        .collect();
    // Before the collector: the gate holds both pods out of the Service.
    for n in names {
        let p = get_pod(&cp, n);
        assert_eq!(
            pod_condition(&p, "Ready").map(|c| c.1),
            Some("ReadinessGatesNotReady".to_owned()),
            "{n}: {}",
            p["status"]
        );
    }

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let running = rt
        .block_on(app::start(Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            harvest_interval: Duration::from_millis(200),
            kubelet_cgroup_roots: vec![format!("{}/kubepods", node.cgroup_root())],
            kubernetes: Some(KubernetesConfig {
                node_name: node.name.clone(),
                kubeconfig: Some(kc),
                pod_labels: vec![],
            }),
            verdict: VerdictConfig {
                geometry: Geometry {
                    bucket: Duration::from_secs(1),
                    count: 5,
                },
                ..VerdictConfig::default()
            },
            readiness: ReadinessConfig {
                mode: Mode::Enforce,
                // Two endpoints, at least one ready: web-a may flip, web-b then may not.
                service_floor: 0.5,
                node_share: 1.0,
                interval: Duration::from_millis(250),
                ..ReadinessConfig::default()
            },
            ..Config::default()
        }))
        .expect("collector starts");
    let api = format!("http://{}", running.addr);
    let loads: Vec<Load> = addrs
        .iter()
        .map(|&a| {
            node.in_netns(move || Load::start(a, "/ok", 4, Duration::from_millis(20)))
                .expect("load in the node's netns")
        })
        .collect();

    for uid in &uids {
        wait_state(&api, uid, "healthy");
    }
    wait_pods(
        &cp,
        &[
            ("web-a", ("True", "Healthy"), true),
            ("web-b", ("True", "Healthy"), true),
        ],
        "both pods ready behind web",
    );

    loads[0].set("/err");
    wait_state(&api, &uids[0], "unhealthy");
    wait_pods(
        &cp,
        &[
            ("web-a", ("False", "Unhealthy"), false),
            ("web-b", ("True", "Healthy"), true),
        ],
        "web-a out of web's ready endpoints",
    );

    loads[0].set("/ok");
    wait_state(&api, &uids[0], "healthy");
    wait_pods(
        &cp,
        &[
            ("web-a", ("True", "Healthy"), true),
            ("web-b", ("True", "Healthy"), true),
        ],
        "web-a back in web's ready endpoints",
    );

    drop(loads);
    rt.block_on(running.shutdown());
    drop(node);
}

//! Readiness gates against a real API server (root only): etcd + kube-apiserver
//! (tests/src/k8s.rs), deploy/rbac.yaml, deploy/admission.yaml and deploy/watchdog.yaml applied
//! as shipped, the collector authenticating with a token bound to its own (DaemonSet-like) pod,
//! so the admission policy sees its node. Two gated pods of Service `web` run the Go test
//! server in their netns + cgroup (UIDs from the API server), clients drive real traffic, and
//! every condition is read back from the API server.
//!
//! `admission_keeps_a_collector_on_its_own_node`: the admission policy denies a collector's
//! patch of a pod on another node, of a kubelet condition, of another node's Lease, and any
//! write with a token not bound to a pod; allows its own pod's gate condition.
//!
//! `gates_follow_verdicts_within_caps`: True on first sight; one pod's 5xx → False, back to True
//! on recovery; both pods failing under a 50 % Service floor → exactly one False, the other held
//! True (`ServiceFloor`, reported in /v1/kubernetes); the API server stopped while a pod turns
//! unhealthy → verdicts go on, and the condition converges to False once it is back; restarting
//! the collector in mode `off` → True; the collector binary SIGKILLed → the watchdog (a second
//! process, its own ServiceAccount) sets True after the Lease expired, and not before.
//!
//! `node_share_holds_a_node_wide_failure`: three of four gated pods of one node (no Service:
//! the Service floor is out of play) turn unhealthy together under a 50 % node share → exactly
//! two False, the third held True with reason `NodeShare`, the healthy one untouched, and
//! `collector_readiness_held_pods{cap="node_share"}` says 1.
//! Run: `cargo test --release -p integration-tests --test kubernetes_readiness -- --test-threads=1`.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
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
    HARNESS_KUBELET_ROOT, Load, Pod, fake_container_id, k8s::ControlPlane, metric_sum,
    newest_go_server, pod_traffic_bin, require_root, spawn_pod_servers, unique_prefix,
    wait_until_ok_blocking,
};
use serde_json::{Value, json};

const NS: &str = "shop";
const PORT: u16 = 8080;

fn manifest(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("deploy/{name}: {e}"))
}

/// The control plane with deploy/ applied, namespace `shop`, and the collector's own pod on
/// `node` (what its DaemonSet would run), whose bound token the collector uses.
fn setup(prefix: &str, node: &str) -> (ControlPlane, std::path::PathBuf) {
    let cp = ControlPlane::start(prefix).expect("control plane");
    for m in ["rbac.yaml", "admission.yaml", "watchdog.yaml"] {
        cp.apply(&manifest(m))
            .unwrap_or_else(|e| panic!("apply {m}: {e}"));
    }
    cp.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}));
    cp.create(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": NS}}));
    let kc = collector_kubeconfig(&cp, node);
    (cp, kc)
}

/// A collector pod on `node` and a kubeconfig with its bound token.
fn collector_kubeconfig(cp: &ControlPlane, node: &str) -> std::path::PathBuf {
    let pod = format!("collector-{node}");
    cp.create(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": "collector"},
            "spec": {"nodeName": node, "serviceAccountName": "collector",
                "automountServiceAccountToken": false,
                "containers": [{"name": "collector", "image": "registry.invalid/collector:1"}]}}));
    cp.pod_token_kubeconfig("collector", "collector", &pod)
        .expect("bound token")
}

fn gated_pod(cp: &ControlPlane, name: &str, node: &str, gated: bool) -> String {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}]
        }
    });
    if gated {
        p["spec"]["readinessGates"] = json!([{ "conditionType": CONDITION_TYPE }]);
    }
    cp.create(&p)
}

/// Our condition on pod `name`: (status, reason, message), None while absent.
fn condition(cp: &ControlPlane, name: &str) -> Option<(String, String, String)> {
    let out = cp
        .kubectl(&["get", "pod", name, "-n", NS, "-o", "json"])
        .expect("get pod");
    let pod: Value = serde_json::from_str(&out).expect("JSON");
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == CONDITION_TYPE)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
            (s("status"), s("reason"), s("message"))
        })
}

fn wait_condition(cp: &ControlPlane, name: &str, status: &str, reason: &str, within: Duration) {
    wait_until_ok_blocking(
        within,
        Duration::from_millis(250),
        &format!("{name}: {status}/{reason}"),
        || match condition(cp, name) {
            Some((s, r, m)) if s == status && r == reason => Ok(m),
            other => Err(other),
        },
    );
}

fn pod_health(api: &str, uid: &str) -> Value {
    let (_, body) = status::get(api, &format!("/v1/pods/{uid}/health")).expect("API");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits for the collector's verdict on pod `uid` (the gate's input).
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

fn kube_status(api: &str) -> Value {
    let (code, body) = status::get(api, "/v1/kubernetes").expect("API");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// A strategic merge patch of pod `name`'s status with the token of kubeconfig `kc`, as the
/// collector sends it (a bare PATCH: `kubectl patch` would GET first, which the collector's
/// role does not grant). Returns the HTTP status and body.
fn patch_status(cp: &ControlPlane, kc: &Path, name: &str, condition: &Value) -> (u16, String) {
    patch_status_query(cp, kc, name, condition, "")
}

fn patch_status_query(
    cp: &ControlPlane,
    kc: &Path,
    name: &str,
    condition: &Value,
    query: &str,
) -> (u16, String) {
    let text = fs::read_to_string(kc).expect("kubeconfig");
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the kubeconfig");
    let patch = json!({"status": {"conditions": [condition]}}).to_string();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(cp.ca())
        .args(["-X", "PATCH"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/strategic-merge-patch+json"])
        .args(["--data-binary", &patch])
        .arg(format!(
            "{}/api/v1/namespaces/{NS}/pods/{name}/status{query}",
            cp.url
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn gate_condition(status: &str) -> Value {
    json!({"type": CONDITION_TYPE, "status": status, "reason": "Test", "message": "by hand"})
}

#[test]
fn admission_keeps_a_collector_on_its_own_node() {
    require_root();
    let prefix = unique_prefix("kvap");
    let (here, there) = (format!("node-{prefix}"), format!("other-{prefix}"));
    let (cp, kc) = setup(&prefix, &here);
    gated_pod(&cp, "mine", &here, true);
    gated_pod(&cp, "theirs", &there, true);
    // The API server loads a new policy asynchronously (within about a second): wait until a
    // dry run (admission runs, nothing is stored) is refused.
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the admission policy in force",
        || {
            let (code, body) =
                patch_status_query(&cp, &kc, "theirs", &gate_condition("False"), "?dryRun=All");
            (code == 403).then_some(()).ok_or((code, body))
        },
    );

    // Positive control: its own node's pod, its own condition.
    let (code, body) = patch_status(&cp, &kc, "mine", &gate_condition("False"));
    assert_eq!(code, 200, "own pod refused: {body}");
    assert_eq!(
        condition(&cp, "mine").map(|c| (c.0, c.1)),
        Some(("False".into(), "Test".into()))
    );
    // Another node's pod: RBAC allows pods/status patch, the policy does not.
    let (code, body) = patch_status(&cp, &kc, "theirs", &gate_condition("False"));
    assert_eq!(code, 403, "cross-node patch not refused: {body}");
    assert!(
        body.contains(&format!(
            "a collector may only write the status of pods on its own node ({here})"
        )),
        "{body}"
    );
    assert_eq!(condition(&cp, "theirs"), None, "written despite the denial");
    // The kubelet's conditions are not the collector's, even on its node.
    let (code, body) = patch_status(
        &cp,
        &kc,
        "mine",
        &json!({"type": "Ready", "status": "True", "reason": "Test"}),
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("a collector may only write its readiness-gate condition"),
        "{body}"
    );
    // A token not bound to a pod names no node: refused outright.
    let unbound = cp
        .service_account_kubeconfig("collector", "collector")
        .expect("token");
    let (code, body) = patch_status(&cp, &unbound, "mine", &gate_condition("True"));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("names no node"), "{body}");
    // Leases: its own node's only.
    let lease = |name: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "collector"},
            "spec": {"holderIdentity": "x", "leaseDurationSeconds": 10}})
        .to_string()
    };
    let out = cp
        .kubectl_as(
            &kc,
            &["create", "-f", "-"],
            Some(&lease(&format!("collector-node-{there}"))),
        )
        .expect("kubectl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("may only write its own node lease"),
        "{out:?}"
    );
    let out = cp
        .kubectl_as(
            &kc,
            &["create", "-f", "-"],
            Some(&lease(&format!("collector-node-{here}"))),
        )
        .expect("kubectl");
    assert!(out.status.success(), "{out:?}");
}

/// The collector binary, for the SIGKILL: log in the control plane's directory.
struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn start(program: &Path, args: &[&str], log: std::path::PathBuf) -> Process {
        let file = fs::File::create(&log).expect("log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        Process { child, log }
    }

    fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collector_config(node: &str, kc: &Path, mode: Mode) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        kubelet_cgroup_roots: vec![HARNESS_KUBELET_ROOT.into()],
        kubernetes: Some(KubernetesConfig {
            node_name: node.into(),
            kubeconfig: Some(kc.into()),
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
            mode,
            service_floor: 0.5,
            // The Service floor alone decides between the two pods here (the node-share cap
            // is unit-tested in collector::kubernetes::gate).
            node_share: 1.0,
            interval: Duration::from_millis(250),
            lease_renew: Duration::from_secs(1),
            lease_duration: Duration::from_secs(3),
            ..ReadinessConfig::default()
        },
        ..Config::default()
    }
}

/// Catches: the node-share cap not applied by the running writer (each pod judged alone, so a
/// node-wide fault takes every pod out), the share taken of all pods rather than the gated
/// ones, a held pod written False on a later round of the same window, the hold not reported
/// on /metrics under its cap.
#[test]
fn node_share_holds_a_node_wide_failure() {
    require_root();
    let server = newest_go_server();
    let prefix = unique_prefix("kshr");
    let node = format!("node-{prefix}");
    let (cp, kc) = setup(&prefix, &node);
    let names = ["web-a", "web-b", "web-c", "web-d"];
    let uids: Vec<String> = names
        .iter()
        .map(|n| gated_pod(&cp, n, &node, true))
        .collect();
    // Not gated: never counted in the share.
    gated_pod(&cp, "plain", &node, false);
    let pods: Vec<Pod> = uids
        .iter()
        .enumerate()
        .map(|(i, uid)| {
            Pod::create(
                &prefix,
                80 + i as u8,
                uid,
                &fake_container_id(0x7b00 + i as u32),
            )
            .expect("pod")
        })
        .collect();
    let (servers, addrs) = spawn_pod_servers(&pods, &server, PORT);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut config = collector_config(&node, &kc, Mode::Enforce);
    // 4 gated pods × 0.5: at most 2 False or flipped within the window.
    config.readiness.node_share = 0.5;
    let running = rt.block_on(app::start(config)).expect("collector starts");
    let api = format!("http://{}", running.addr);
    let loads: Vec<Load> = addrs
        .iter()
        .map(|a| Load::start(*a, "/ok", 4, Duration::from_millis(20)))
        .collect();
    for (name, uid) in names.iter().zip(&uids) {
        wait_state(&api, uid, "healthy");
        wait_condition(&cp, name, "True", "Healthy", Duration::from_secs(30));
    }

    // A, B and C fail together; D stays healthy.
    for l in &loads[..3] {
        l.set("/err");
    }
    for uid in &uids[..3] {
        wait_state(&api, uid, "unhealthy");
    }
    let read = || -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| condition(&cp, n).map(|c| (c.0, c.1)).unwrap_or_default())
            .collect()
    };
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    let pair = |s: &str, r: &str| (s.to_string(), r.to_string());
    let want = vec![
        pair("False", "Unhealthy"),
        pair("False", "Unhealthy"),
        pair("True", "Healthy"),
        pair("True", "NodeShare"),
    ];
    let first = wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(250),
        "two False, one held by the node share",
        || {
            let now = read();
            (sorted(now.clone()) == want)
                .then_some(now.clone())
                .ok_or(now)
        },
    );
    assert_eq!(first[3], pair("True", "Healthy"), "D untouched: {first:?}");
    // Several rounds later (one each 250 ms), still so: the window holds the flips.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read(), first, "the node share held");
    let s = kube_status(&api);
    let held = &s["readiness"]["held"];
    assert_eq!(held.as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(held[0]["cap"], "node_share", "{s}");
    let held_pod = names[first.iter().position(|c| c.1 == "NodeShare").expect("held")];
    assert_eq!(held[0]["pod"], format!("{NS}/{held_pod}"), "{s}");
    assert_eq!(
        (&s["readiness"]["false"], &s["readiness"]["gated"]),
        (&json!(2), &json!(4)),
        "{s}"
    );
    let (_, _, message) = condition(&cp, held_pod).expect("held condition");
    assert!(
        message.starts_with("held True (2 of this node's 4 gated pods False or flipped within"),
        "{message}"
    );
    let (_, text) = status::get(&api, "/metrics").expect("metrics");
    let m = |name: &str, labels: &[(&str, &str)]| metric_sum(&text, name, labels);
    assert_eq!(
        m("collector_readiness_held_pods", &[("cap", "node_share")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m("collector_readiness_held_pods", &[("cap", "service_floor")]),
        Some(0.0)
    );
    assert_eq!(m("collector_readiness_false_pods", &[]), Some(2.0));
    assert_eq!(m("collector_readiness_gated_pods", &[]), Some(4.0));

    rt.block_on(running.shutdown());
    drop(loads);
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(pods);
}

#[test]
fn gates_follow_verdicts_within_caps() {
    require_root();
    let server = newest_go_server();
    let prefix = unique_prefix("krdy");
    let node = format!("node-{prefix}");
    let (mut cp, kc) = setup(&prefix, &node);

    let uids: Vec<String> = ["web-a", "web-b"]
        .iter()
        .map(|n| gated_pod(&cp, n, &node, true))
        .collect();
    // Not gated: never written.
    gated_pod(&cp, "plain", &node, false);
    let pods: Vec<Pod> = uids
        .iter()
        .enumerate()
        .map(|(i, uid)| {
            Pod::create(
                &prefix,
                70 + i as u8,
                uid,
                &fake_container_id(0x7a00 + i as u32),
            )
            .expect("pod")
        })
        .collect();
    cp.create(
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": PORT}]}}),
    );
    let endpoints: Vec<Value> = ["web-a", "web-b"]
        .iter()
        .zip(&uids)
        .zip(&pods)
        .map(|((name, uid), p)| {
            json!({"addresses": [p.addr().to_string()], "nodeName": node,
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": NS, "name": name, "uid": uid}})
        })
        .collect();
    cp.create(
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": NS,
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"port": PORT, "protocol": "TCP"}],
            "endpoints": endpoints}),
    );

    let (servers, addrs) = spawn_pod_servers(&pods, &server, PORT);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let running = rt
        .block_on(app::start(collector_config(&node, &kc, Mode::Enforce)))
        .expect("collector starts");
    let api = format!("http://{}", running.addr);

    // True on first sight, before any verdict: warm-up holds nothing back.
    for name in ["web-a", "web-b"] {
        wait_condition(&cp, name, "True", "Unknown", Duration::from_secs(30));
    }
    assert_eq!(condition(&cp, "plain"), None, "a pod without the gate");

    let load_a = Load::start(addrs[0], "/ok", 8, Duration::from_millis(20));
    let load_b = Load::start(addrs[1], "/ok", 8, Duration::from_millis(20));
    wait_state(&api, &uids[0], "healthy");
    wait_state(&api, &uids[1], "healthy");
    wait_condition(&cp, "web-a", "True", "Healthy", Duration::from_secs(30));
    wait_condition(&cp, "web-b", "True", "Healthy", Duration::from_secs(30));

    // A answers 5xx: False, with the verdict's words; back to True on recovery.
    load_a.set("/err");
    wait_state(&api, &uids[0], "unhealthy");
    wait_condition(&cp, "web-a", "False", "Unhealthy", Duration::from_secs(30));
    let (_, _, message) = condition(&cp, "web-a").expect("condition");
    assert!(message.starts_with("unhealthy: "), "{message}");
    assert_eq!(
        condition(&cp, "web-b").map(|c| c.1),
        Some("Healthy".into()),
        "B untouched"
    );
    load_a.set("/ok");
    wait_condition(&cp, "web-a", "True", "Healthy", Duration::from_secs(30));

    // Both fail: the 50 % floor of Service web lets exactly one go.
    load_a.set("/err");
    load_b.set("/err");
    wait_state(&api, &uids[0], "unhealthy");
    wait_state(&api, &uids[1], "unhealthy");
    let both = wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(250),
        "one False, one held",
        || {
            let c = [condition(&cp, "web-a"), condition(&cp, "web-b")];
            let reasons: Vec<(String, String)> = c
                .iter()
                .map(|c| c.clone().map(|c| (c.0, c.1)).unwrap_or_default())
                .collect();
            let mut sorted = reasons.clone();
            sorted.sort();
            (sorted
                == vec![
                    ("False".into(), "Unhealthy".into()),
                    ("True".into(), "ServiceFloor".into()),
                ])
            .then_some(reasons.clone())
            .ok_or(reasons)
        },
    );
    // And it stays so over several rounds (a second flip would come within one).
    std::thread::sleep(Duration::from_secs(2));
    let now: Vec<(String, String)> = ["web-a", "web-b"]
        .iter()
        .map(|n| condition(&cp, n).map(|c| (c.0, c.1)).unwrap_or_default())
        .collect();
    assert_eq!(now, both, "the floor held");
    let s = kube_status(&api);
    let held = &s["readiness"]["held"];
    assert_eq!(held.as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(held[0]["cap"], "service_floor", "{s}");
    assert_eq!(s["readiness"]["false"], 1, "{s}");
    assert_eq!(s["readiness"]["gated"], 2, "{s}");
    eprintln!("held: {held}");
    // The same on /metrics, for alerting: one held by the Service floor, none by the node cap.
    let (_, text) = status::get(&api, "/metrics").expect("metrics");
    let m = |name: &str, labels: &[(&str, &str)]| metric_sum(&text, name, labels);
    assert_eq!(
        m("collector_readiness_held_pods", &[("cap", "service_floor")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m("collector_readiness_held_pods", &[("cap", "node_share")]),
        Some(0.0)
    );
    assert_eq!(m("collector_readiness_false_pods", &[]), Some(1.0));
    assert_eq!(m("collector_readiness_gated_pods", &[]), Some(2.0));
    // First sight of both, A's flip and recovery, A's flip now: at least five writes, and
    // none failed before the API outage below.
    let written = m(
        "collector_readiness_patches_total",
        &[("result", "written")],
    );
    assert!(written.is_some_and(|w| w >= 5.0), "{written:?}");
    assert_eq!(
        m("collector_readiness_patches_total", &[("result", "failed")]),
        None
    );

    // Both recover.
    load_a.set("/ok");
    load_b.set("/ok");
    wait_state(&api, &uids[0], "healthy");
    wait_state(&api, &uids[1], "healthy");
    wait_condition(&cp, "web-a", "True", "Healthy", Duration::from_secs(30));
    wait_condition(&cp, "web-b", "True", "Healthy", Duration::from_secs(30));

    // The API server goes away while A turns unhealthy: collection and verdicts go on; the
    // condition converges once it is back.
    cp.stop_apiserver();
    load_a.set("/err");
    wait_state(&api, &uids[0], "unhealthy");
    // The patch to False is tried, fails, and is reported.
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the outage seen by the watch and the writer",
        || {
            let s = kube_status(&api);
            (s["connected"] == false && s["readiness"]["last_error"].is_string())
                .then_some(())
                .ok_or(s)
        },
    );
    cp.start_apiserver().expect("restart kube-apiserver");
    wait_condition(&cp, "web-a", "False", "Unhealthy", Duration::from_secs(60));
    assert_eq!(
        condition(&cp, "web-b").map(|c| (c.0, c.1)),
        Some(("True".into(), "Healthy".into()))
    );

    // Mode off: every condition we own back to True.
    rt.block_on(running.shutdown());
    let running = rt
        .block_on(app::start(collector_config(&node, &kc, Mode::Off)))
        .expect("collector starts (off)");
    wait_condition(&cp, "web-a", "True", "GateOff", Duration::from_secs(30));
    wait_condition(&cp, "web-b", "True", "GateOff", Duration::from_secs(30));
    rt.block_on(running.shutdown());

    // The collector binary in enforce mode sets A False again; the watchdog leaves it alone
    // while the node's Lease is renewed, and sets True once the collector is SIGKILLed.
    let bin = pod_traffic_bin().with_file_name("collector");
    assert!(bin.is_file(), "{} not built", bin.display());
    let conf = cp.dir().join("collector.toml");
    fs::write(
        &conf,
        "[readiness]\nmode = \"enforce\"\nnode_share = 1.0\ninterval = \"250ms\"\n\
         lease_renew = \"1s\"\nlease_duration = \"3s\"\n",
    )
    .expect("config");
    let kc_s = kc.display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut collector = Process::start(
        &bin,
        &[
            "--config",
            &conf.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kubelet-cgroup-root",
            HARNESS_KUBELET_ROOT,
            "--node-name",
            &node,
            "--kubeconfig",
            &kc_s,
            "--verdict-bucket",
            "1s",
            "--verdict-buckets",
            "5",
            "--harvest-interval",
            "200ms",
        ],
        cp.dir().join("collector.log"),
    );
    wait_until_ok_blocking(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "web-a False by the collector binary",
        || match condition(&cp, "web-a") {
            Some((s, r, _)) if s == "False" && r == "Unhealthy" => Ok(()),
            other => Err(format!("{other:?}\n{}", collector.tail())),
        },
    );
    // Nothing but a collector or the watchdog writes these pods here (no kubelet): the
    // resourceVersion shows any write, also one the collector undid within a round.
    let version = |name: &str| {
        cp.kubectl(&[
            "get",
            "pod",
            name,
            "-n",
            NS,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .expect("get pod")
    };
    let before = version("web-a");
    let watchdog_kc = cp
        .service_account_kubeconfig("collector", "collector-watchdog")
        .expect("watchdog token");
    let watchdog = Process::start(
        &bin,
        &[
            "watchdog",
            "--kubeconfig",
            &watchdog_kc.display().to_string(),
            "--interval",
            "500ms",
            "--lease-duration",
            "3s",
            "--identity",
            "watchdog-0",
        ],
        cp.dir().join("watchdog.log"),
    );
    // Leading, and past a lease duration of watching: a live collector's pod stays False.
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the watchdog leads",
        || {
            let t = watchdog.tail();
            t.contains("watchdog: leading").then_some(()).ok_or(t)
        },
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        (
            version("web-a"),
            condition(&cp, "web-a").map(|c| (c.0, c.1))
        ),
        (before, Some(("False".into(), "Unhealthy".into()))),
        "the watchdog wrote the pod of a live collector:\n{}",
        watchdog.tail()
    );
    let killed = Instant::now();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(collector.child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = collector.child.wait();
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the watchdog sets True",
        || match condition(&cp, "web-a") {
            Some((s, r, _)) if s == "True" && r == "CollectorLeaseExpired" => Ok(()),
            other => Err(format!("{other:?}\n{}", watchdog.tail())),
        },
    );
    eprintln!(
        "watchdog restored True {:?} after the SIGKILL (lease 3 s)",
        killed.elapsed()
    );
    // B was True already: the watchdog writes only what is not True.
    let b = condition(&cp, "web-b").expect("B's condition");
    assert!(
        b.0 == "True" && b.1 != "CollectorLeaseExpired",
        "B rewritten by the watchdog: {b:?}"
    );

    drop((load_a, load_b, watchdog));
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(pods);
}

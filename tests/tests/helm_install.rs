//! The Helm chart (deploy/helm/collector) installed for real.
//!
//! `helm_install_collects_a_pods_requests_in_both_modes_and_uninstalls_clean` (root): the
//! single-node cluster of tests/src/k8s.rs (etcd, kube-apiserver, kube-controller-manager with
//! the DaemonSet, garbage collector and root CA publisher controllers, kube-scheduler, a kubelet
//! with containerd and runc). The image `./x image` built is imported into the node's containerd;
//! `helm install` as the README says (namespace labelled for the privileged Pod Security level),
//! with only what this host needs: `image.pullPolicy=Never`, the hybrid host's cgroup2 path and
//! the kubelet's cgroup root. The DaemonSet controller makes the pod, the scheduler binds it, the
//! kubelet runs it and marks it Ready through its readiness probe (`/readyz`). The collector
//! reaches the API server as any pod does, in-cluster (`KUBERNETES_SERVICE_HOST`, its projected
//! token and CA), through the `kubernetes` Service's cluster IP (the node routes that one
//! address as kube-proxy would). A Go server pod on the node answers requests from the node;
//! the collector's /metrics, read on its pod IP, count exactly those requests, labelled with the
//! pod's namespace and name from the API. Then `helm upgrade --set mode=least-privilege`: the
//! DaemonSet rolls, the new pod becomes Ready and counts new requests exactly. Then
//! `helm uninstall`: the pod goes, and none of the eBPF programs and links its collector held
//! stays on the host.
//!
//! `monitor_objects_are_accepted_by_the_operators_crds`: the chart's ServiceMonitor, PodMonitor
//! and PrometheusRule against prometheus-operator's own CRDs (generated from its API module by
//! scripts/monitoring-crds.sh) in the real kube-apiserver, strictly (unknown fields refused);
//! and the chart's values.schema.json accepts exactly the scrape intervals the operator's CRDs
//! accept.
//!
//! Run: `cargo test --release -p integration-tests --test helm_install -- --test-threads=1`.

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use integration_tests::{
    cgroup2_mount, http_get_status,
    k8s::{self, ControlPlane, Node},
    metric_sum, newest_go_server, require_root, scrape, unique_prefix, wait_until_ok_blocking,
};
use serde_json::{Value, json};

/// The release and its namespace, as the README installs it.
const RELEASE: &str = "collector";
const NS: &str = "collector";
/// The application's namespace.
const APP_NS: &str = "shop";
const SERVER_IMAGE: &str = "collector.test/server:1";
const SERVER_PORT: u16 = 8080;
/// The chart's default API and /metrics port.
const COLLECTOR_PORT: u16 = 9464;
/// From `helm install` to a Ready pod: the kubelet's startup probe allows 120 s for loading the
/// eBPF programs, plus scheduling and container start.
const READY_WITHIN: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

fn chart() -> String {
    repo()
        .join("deploy/helm/collector")
        .to_str()
        .expect("utf-8")
        .to_owned()
}

/// helm against the control plane as its admin.
struct Helm {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Helm {
    fn new(cp: &ControlPlane) -> Helm {
        Helm {
            bin: k8s::helm_bin().expect("scripts/helm.sh"),
            kubeconfig: cp.admin_kubeconfig(),
        }
    }

    fn output(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("run helm")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "helm {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The image `./x image` wrote (the reference in its index), as (archive, repository, tag).
fn collector_image() -> (PathBuf, String, String) {
    let archive = std::env::var_os("COLLECTOR_IMAGE_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo().join(format!(
                "target/image/collector-{}.oci.tar",
                env!("CARGO_PKG_VERSION")
            ))
        });
    assert!(
        archive.exists(),
        "{} is missing: build it with `./x image` (`./x test` does)",
        archive.display()
    );
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("index.json")
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar: {:?}", out);
    let index: Value = serde_json::from_slice(&out.stdout).expect("index.json");
    let reference = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_else(|| panic!("no reference in {index}"));
    let (repository, tag) = reference.rsplit_once(':').expect("repository:tag");
    (archive, repository.to_owned(), tag.to_owned())
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    serde_json::from_str(&cp.kubectl(&all).expect("kubectl get")).expect("JSON")
}

/// The collector pods of the release (the DaemonSet's selector).
fn collector_pods(cp: &ControlPlane) -> Vec<Value> {
    let list = get_json(
        cp,
        &[
            "pods",
            "-n",
            NS,
            "-l",
            &format!("app.kubernetes.io/name=collector,app.kubernetes.io/instance={RELEASE}"),
        ],
    );
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The kubelet's log of a pod's container (its `podLogsDir` on the node).
fn container_log(node: &Node, pod: &Value, container: &str) -> String {
    let dir = node.dir().join("pod-logs").join(format!(
        "{}_{}_{}",
        pod["metadata"]["namespace"].as_str().unwrap_or(""),
        pod["metadata"]["name"].as_str().unwrap_or(""),
        pod["metadata"]["uid"].as_str().unwrap_or("")
    ));
    let mut text = String::new();
    for e in fs::read_dir(dir.join(container))
        .into_iter()
        .flatten()
        .flatten()
    {
        let body = fs::read_to_string(e.path()).unwrap_or_default();
        let lines: Vec<&str> = body.lines().collect();
        text.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
    }
    text
}

/// The collector pod the kubelet reports Ready, other than `not` (a pod being replaced): its
/// uid and address. Ready means the kubelet's readiness probe on `/readyz` passed.
fn wait_collector_ready(cp: &ControlPlane, node: &Node, not: Option<&str>) -> (String, SocketAddr) {
    let mut last = Value::Null;
    let ready = |pods: &[Value]| -> Option<(String, SocketAddr, Value)> {
        let [pod] = pods else { return None };
        let ready = pod["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ip = pod["status"]["podIP"].as_str()?.parse().ok()?;
        (ready && pod["metadata"]["deletionTimestamp"].is_null()).then(|| {
            (
                pod["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
                SocketAddr::new(ip, COLLECTOR_PORT),
                pod.clone(),
            )
        })
    };
    let deadline = Instant::now() + READY_WITHIN;
    let found = loop {
        let pods: Vec<Value> = collector_pods(cp)
            .into_iter()
            .filter(|p| p["metadata"]["uid"].as_str() != not)
            .collect();
        if let Some(found) = ready(&pods) {
            break Some(found);
        }
        last = Value::Array(pods);
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let Some((uid, addr, pod)) = found else {
        let logs: Vec<String> = last
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| container_log(node, p, "collector"))
            .collect();
        panic!(
            "no Ready collector pod: {last:#}\ncollector logs:\n{}\nDaemonSet: {}",
            logs.join("\n---\n"),
            cp.kubectl(&["get", "daemonset", "-n", NS, "-o", "yaml"])
                .unwrap_or_default()
        );
    };
    // Scheduled by the scheduler through the DaemonSet controller's node affinity (no nodeName
    // in the template), ready with no restart.
    assert_eq!(pod["spec"]["nodeName"], node.name.as_str(), "{pod:#}");
    assert_eq!(
        pod["metadata"]["ownerReferences"][0]["kind"], "DaemonSet",
        "{pod:#}"
    );
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(
        (&status["ready"], &status["restartCount"]),
        (&json!(true), &json!(0)),
        "{pod:#}"
    );
    (uid, addr)
}

/// GET `path` of the collector at `addr` from the node's network namespace (pod IPs are
/// reachable only there).
fn collector_get(node: &Node, addr: SocketAddr, path: &'static str) -> (u16, String) {
    node.in_netns(move || collector::status::get(&format!("http://{addr}"), path))
        .expect("netns")
        .unwrap_or((0, String::new()))
}

/// The server pod on the node, with the Go test server; its uid and address.
fn server_pod(cp: &ControlPlane, node: &Node) -> (String, SocketAddr) {
    let uid = cp.create(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": APP_NS, "labels": {"app": "web"}},
        "spec": {
            "nodeName": node.name,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app", "image": SERVER_IMAGE, "imagePullPolicy": "Never",
                "args": ["-listen", format!("0.0.0.0:{SERVER_PORT}")],
                "ports": [{"containerPort": SERVER_PORT}]
            }]
        }
    }));
    let addr = wait_until_ok_blocking(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "the server pod running",
        || {
            let p = get_json(cp, &["pod", "web", "-n", APP_NS]);
            let running = p["status"]["containerStatuses"][0]["state"]["running"].is_object();
            match p["status"]["podIP"].as_str() {
                Some(ip) if running => Ok(SocketAddr::new(ip.parse().expect("IP"), SERVER_PORT)),
                _ => Err(p["status"].clone()),
            }
        },
    );
    (uid, addr)
}

/// `n` requests to `/ok` from the node, each answered 200.
fn requests(node: &Node, addr: SocketAddr, n: usize) {
    let codes = node
        .in_netns(move || {
            (0..n)
                .map(|_| http_get_status(addr, "/ok"))
                .collect::<Vec<_>>()
        })
        .expect("netns");
    assert_eq!(codes, vec![Some(200); n], "the server's answers");
}

/// The collector's `/metrics`, read from the node.
fn metrics(node: &Node, collector: SocketAddr) -> String {
    node.in_netns(move || scrape(collector)).expect("scrape")
}

/// The collector's count of the server pod's `/ok` requests (0 when it has no such series).
fn counted(text: &str, server_uid: &str) -> f64 {
    metric_sum(
        text,
        "http_server_request_duration_seconds_count",
        &[
            ("pod_uid", server_uid),
            ("namespace", APP_NS),
            ("pod", "web"),
            ("container", "app"),
            ("route", "/ok"),
            ("status_code", "200"),
        ],
    )
    .unwrap_or(0.0)
}

/// The collector's own counters of records it could not count (each reason, each CPU).
const LOSSES: &[&str] = &[
    "collector_kernel_drops",
    "collector_kernel_program_misses",
    "collector_events_rejected",
    "collector_events_dropped",
    "collector_http_requests_lost",
];

fn losses(text: &str) -> f64 {
    text.lines()
        .filter(|l| LOSSES.iter().any(|m| l.starts_with(m)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Rounds of requests before giving up on a round the collector lost nothing in.
const ROUNDS: usize = 5;

/// Waits until the collector is connected to the API with exactly its own and the server's pod
/// (the pod's name and namespace come from there), sends `n` requests and checks that exactly
/// `n` more are counted for the server pod. The collector sees every workload of the host: a
/// heavy load elsewhere on a shared machine can fill its ring buffer, which it counts as
/// losses. A round with losses is repeated (never more than `n` counted, even then); the exact
/// count is asserted on a round without any.
fn collects_exactly(
    node: &Node,
    collector: SocketAddr,
    server: SocketAddr,
    server_uid: &str,
    n: usize,
) {
    wait_until_ok_blocking(
        Duration::from_secs(60),
        Duration::from_millis(250),
        "the collector's pod watch",
        || {
            let (code, body) = collector_get(node, collector, "/v1/kubernetes");
            let s: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            (code == 200 && s["connected"] == true && s["pods"] == 2)
                .then_some(())
                .ok_or((code, body))
        },
    );
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let text = metrics(node, collector);
        let (before, lost_before) = (counted(&text, server_uid), losses(&text));
        requests(node, server, n);
        let want = before + n as f64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while counted(&metrics(node, collector), server_uid) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        // A few harvests more: a request counted twice would show now.
        std::thread::sleep(Duration::from_secs(1));
        let text = metrics(node, collector);
        let (got, lost) = (
            counted(&text, server_uid) - before,
            losses(&text) - lost_before,
        );
        let series = || {
            text.lines()
                .filter(|l| {
                    l.starts_with("http_server_request_duration_seconds_count")
                        && l.contains(server_uid)
                        || LOSSES.iter().any(|m| l.starts_with(m))
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            got <= n as f64,
            "{got} requests counted for pod {server_uid}, {n} sent:\n{}",
            series()
        );
        if lost == 0.0 {
            assert_eq!(
                got,
                n as f64,
                "requests to pod {server_uid}, the collector losing nothing meanwhile:\n{}",
                series()
            );
            return;
        }
        rounds.push(format!("{got} of {n} counted, {lost} records lost"));
    }
    panic!(
        "the collector lost records in each of {ROUNDS} rounds (another load on this host?): \
         {rounds:?}"
    );
}

/// The chart's Service (`internalTrafficPolicy: Local`, "the collector on my node") has exactly
/// the collector pod at `addr` on this node as its ready endpoint, on port `http`. (No
/// kube-proxy runs here to route its cluster IP: what it routes to is checked.)
fn service_endpoint_is(cp: &ControlPlane, node: &Node, addr: SocketAddr) {
    let service = get_json(cp, &["service", RELEASE, "-n", NS]);
    assert_eq!(
        service["spec"]["internalTrafficPolicy"], "Local",
        "{service}"
    );
    let want = json!([{
        "addresses": [addr.ip().to_string()],
        "nodeName": node.name,
        "ready": true,
        "ports": [{"name": "http", "port": COLLECTOR_PORT}],
    }]);
    wait_until_ok_blocking(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the collector Service's endpoint",
        || {
            let list = get_json(
                cp,
                &[
                    "endpointslices",
                    "-n",
                    NS,
                    "-l",
                    &format!("kubernetes.io/service-name={RELEASE}"),
                ],
            );
            let seen: Vec<Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|slice| {
                    let ports: Vec<Value> = slice["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| json!({"name": p["name"], "port": p["port"]}))
                        .collect();
                    slice["endpoints"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |e| {
                            json!({
                                "addresses": e["addresses"],
                                "nodeName": e["nodeName"],
                                "ready": e["conditions"]["ready"],
                                "ports": ports,
                            })
                        })
                })
                .collect();
            (Value::Array(seen.clone()) == want)
                .then_some(())
                .ok_or(seen)
        },
    );
}

/// The process of a pod's container named `comm`, found through its cgroup (the kubelet's
/// cgroupfs layout names the pod `pod<uid>`).
fn pod_process(pod_uid: &str, comm: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let name = fs::read_to_string(e.path().join("comm")).ok()?;
        let cgroup = fs::read_to_string(e.path().join("cgroup")).ok()?;
        (name.trim() == comm && cgroup.contains(&format!("pod{pod_uid}"))).then_some(pid)
    })
}

/// The ids of the eBPF programs and links whose file descriptors process `pid` holds (the
/// `prog_id:` and `link_id:` lines of its fdinfo: this bpftool lists no owner pids).
fn bpf_ids_of(pid: u32) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut progs, mut links) = (BTreeSet::new(), BTreeSet::new());
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        for line in fs::read_to_string(e.path()).unwrap_or_default().lines() {
            let id = |key: &str| line.strip_prefix(key)?.trim().parse::<u64>().ok();
            progs.extend(id("prog_id:"));
            links.extend(id("link_id:"));
        }
    }
    (progs, links)
}

fn bpf_objects(what: &str) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args([what, "show", "-j"])
        .output()
        .expect("bpftool (scripts/bootstrap.sh installs it)");
    assert!(out.status.success(), "bpftool {what} show: {out:?}");
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("bpftool JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn bpf_ids(what: &str) -> BTreeSet<u64> {
    bpf_objects(what)
        .iter()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

/// Catches: a chart whose pod never becomes Ready on a real node (an image reference, a mount, a
/// capability, a security setting or a probe a kubelet refuses or that fails there; a DaemonSet
/// a scheduler cannot place), a collector that cannot reach the API from a pod (its in-cluster
/// configuration, the RBAC or the admission policy of the chart), that does not attribute a
/// pod's requests on a real kubelet's cgroups or counts them wrong (either mode), a rolling
/// update that does not replace the pod, and a drain that leaves programs attached after
/// `helm uninstall`.
#[test]
fn helm_install_collects_a_pods_requests_in_both_modes_and_uninstalls_clean() {
    require_root();
    let (archive, repository, tag) = collector_image();
    let server = newest_go_server();
    let prefix = unique_prefix("hi");
    let cp = ControlPlane::start(&prefix).expect("control plane");
    let mut node = Node::start(
        &cp,
        &prefix,
        &[
            "daemonset",
            "garbagecollector",
            "root-ca-cert-publisher",
            "endpointslice",
        ],
    )
    .expect("node");
    node.start_scheduler(&cp).expect("scheduler");
    node.import_image(&archive)
        .expect("import the collector image");
    node.import_image(
        &k8s::single_binary_image(node.dir(), &server, "server", SERVER_IMAGE)
            .expect("server image"),
    )
    .expect("import the server image");

    cp.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP_NS}}));
    cp.create(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": APP_NS}}));
    let (server_uid, server_addr) = server_pod(&cp, &node);

    // The README's steps, with this test node's values.
    cp.kubectl(&["create", "namespace", NS]).expect("namespace");
    cp.kubectl(&[
        "label",
        "namespace",
        NS,
        "pod-security.kubernetes.io/enforce=privileged",
    ])
    .expect("label");
    let helm = Helm::new(&cp);
    let chart = chart();
    let cgroup2 = cgroup2_mount();
    let roots = json!([format!("{}/kubepods", node.cgroup_root())]).to_string();
    let settings = [
        format!("image.repository={repository}"),
        format!("image.tag={tag}"),
        "image.pullPolicy=Never".into(),
        format!("hostCgroup2Path={}", cgroup2.display()),
        "config.harvest_interval=200ms".into(),
    ];
    let mut install = vec!["install", RELEASE, &chart, "-n", NS];
    for s in &settings {
        install.extend(["--set", s]);
    }
    let roots_json = format!("config.kubelet_cgroup_roots={roots}");
    install.extend(["--set-json", &roots_json]);
    helm.ok(&install);

    let (privileged_uid, privileged_addr) = wait_collector_ready(&cp, &node, None);
    let pod = get_json(
        &cp,
        &["pod", "-n", NS, "-l", "app.kubernetes.io/name=collector"],
    );
    assert_eq!(
        pod["items"][0]["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
    collects_exactly(&node, privileged_addr, server_addr, &server_uid, 50);
    service_endpoint_is(&cp, &node, privileged_addr);

    // The other mode: the DaemonSet rolls its pod.
    helm.ok(&[
        "upgrade",
        RELEASE,
        &chart,
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "mode=least-privilege",
    ]);
    let (least_uid, least_addr) = wait_collector_ready(&cp, &node, Some(&privileged_uid));
    let pod = get_json(
        &cp,
        &["pod", "-n", NS, "-l", "app.kubernetes.io/name=collector"],
    );
    let security = &pod["items"][0]["spec"]["containers"][0]["securityContext"];
    assert_eq!(
        (&security["privileged"], &security["capabilities"]["drop"]),
        (&json!(false), &json!(["ALL"])),
        "{security}"
    );
    collects_exactly(&node, least_addr, server_addr, &server_uid, 30);

    // What the collector holds, then helm uninstall: all of it must go with the pod.
    let pid = pod_process(&least_uid, "collector").expect("the collector's process");
    let (progs, links) = bpf_ids_of(pid);
    // Held, and loaded as bpftool sees them: what the check after uninstall looks for.
    assert!(
        !progs.is_empty() && progs.is_subset(&bpf_ids("prog")),
        "eBPF programs held by the collector {pid}: {progs:?}"
    );
    assert!(
        !links.is_empty() && links.is_subset(&bpf_ids("link")),
        "eBPF links held by the collector {pid}: {links:?}"
    );
    helm.ok(&["uninstall", RELEASE, "-n", NS]);
    wait_until_ok_blocking(
        Duration::from_secs(90),
        Duration::from_millis(500),
        "the collector pod and process gone",
        || {
            let pods = collector_pods(&cp);
            let alive = Path::new(&format!("/proc/{pid}")).exists();
            (pods.is_empty() && !alive)
                .then_some(())
                .ok_or((pods.len(), alive))
        },
    );
    let left_progs: BTreeSet<u64> = progs.intersection(&bpf_ids("prog")).copied().collect();
    let left_links: BTreeSet<u64> = links.intersection(&bpf_ids("link")).copied().collect();
    assert!(
        left_progs.is_empty() && left_links.is_empty(),
        "after helm uninstall, programs {left_progs:?} and links {left_links:?} of the collector \
         are still loaded"
    );
    let objects = cp
        .kubectl(&[
            "get",
            "daemonset,configmap,service,serviceaccount,role,rolebinding",
            "-n",
            NS,
            "-o",
            "name",
        ])
        .expect("get");
    let left: Vec<&str> = objects
        .lines()
        .filter(|l| l.contains("collector"))
        .collect();
    assert!(
        left.is_empty(),
        "left in {NS} after helm uninstall: {left:?}"
    );
    drop(node);
}

/// `kubectl apply --dry-run=server --validate=strict`: the API server's verdict, unknown
/// fields refused.
fn dry_run(cp: &ControlPlane, manifest: &str) -> Output {
    cp.kubectl_as(
        &cp.admin_kubeconfig(),
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "name",
            "-f",
            "-",
        ],
        Some(manifest),
    )
    .expect("kubectl")
}

/// `helm template` of the chart in namespace `collector`.
fn template(helm: &Helm, args: &[&str]) -> Output {
    let chart = chart();
    let mut all = vec!["template", RELEASE, &chart, "-n", NS];
    all.extend(args);
    helm.output(&all)
}

/// Catches: a ServiceMonitor, PodMonitor or PrometheusRule field the operator does not know
/// (prometheus-operator would silently drop it, e.g. Prometheus's `source_labels` spelling, or
/// a PodMonitor given a ServiceMonitor's `endpoints`) or of the wrong form (an interval without
/// a unit, a relabeling's label name); and values.schema.json accepting a scrape interval the
/// operator refuses (`1.5s`: the install fails at the API server after the schema passed it) or
/// refusing one it accepts (`1m30s`), or an interval rendered as a number (`0`).
#[test]
fn monitor_objects_are_accepted_by_the_operators_crds() {
    let crds = k8s::monitoring_crds().expect("scripts/monitoring-crds.sh");
    let cp = ControlPlane::start(&unique_prefix("mon")).expect("control plane");
    for kind in ["servicemonitors", "podmonitors", "prometheusrules"] {
        let file = crds.join(format!("monitoring.coreos.com_{kind}.yaml"));
        cp.kubectl(&["create", "-f", file.to_str().expect("utf-8")])
            .expect("create CRD");
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{kind}.monitoring.coreos.com"),
        ])
        .expect("CRD established");
    }
    cp.kubectl(&["create", "namespace", NS]).expect("namespace");
    let helm = Helm::new(&cp);

    // The ci/ values files that turn the monitors on, as rendered.
    let mut checked = BTreeSet::new();
    for values in ["podmonitor-values.yaml", "full-values.yaml"] {
        let path = repo().join("deploy/helm/collector/ci").join(values);
        let out = template(&helm, &["-f", path.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{values}: {out:?}");
        let manifest = String::from_utf8(out.stdout).expect("utf-8");
        let out = dry_run(&cp, &manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("Warning"),
            "{values}: the API server said:\n{stderr}"
        );
        checked.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains("monitoring.coreos.com"))
                .map(String::from),
        );
    }
    assert_eq!(
        checked,
        BTreeSet::from(
            [
                "podmonitor.monitoring.coreos.com/collector",
                "prometheusrule.monitoring.coreos.com/collector",
                "servicemonitor.monitoring.coreos.com/collector",
            ]
            .map(String::from)
        )
    );

    // The CRDs check fields for real (a stand-in that preserves unknown fields would not).
    let out = template(
        &helm,
        &[
            "--set",
            "podMonitor.enabled=true",
            "--show-only",
            "templates/podmonitor.yaml",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let podmonitor = String::from_utf8(out.stdout).expect("utf-8");
    let wrong = podmonitor.replace("podMetricsEndpoints:", "endpoints:");
    assert_ne!(wrong, podmonitor);
    let out = dry_run(&cp, &wrong);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains(r#"unknown field "spec.endpoints""#),
        "a PodMonitor with a ServiceMonitor's endpoints: {out:?}"
    );

    // The chart's schema and the operator's CRD agree on every interval: the cases the two
    // could disagree on (a fraction, a compound duration, days, a bare number, zero).
    let verdict = |ok: bool| if ok { "accepts" } else { "refuses" };
    let mut disagree = Vec::new();
    for kind in ["serviceMonitor", "podMonitor"] {
        let template_file = format!("templates/{}.yaml", kind.to_lowercase());
        for interval in [
            "30s", "1m", "500ms", "1h", "1m30s", "1d", "0", "1.5s", "2.5m", "30", "1 m",
        ] {
            let args = [
                "--set".to_string(),
                format!("{kind}.enabled=true"),
                "--set-string".to_string(),
                format!("{kind}.interval={interval}"),
                "--show-only".to_string(),
                template_file.clone(),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let schema_ok = template(&helm, &args).status.success();
            let mut unchecked = args.clone();
            unchecked.push("--skip-schema-validation");
            let out = template(&helm, &unchecked);
            assert!(out.status.success(), "{kind} {interval:?}: {out:?}");
            let crd = dry_run(&cp, &String::from_utf8(out.stdout).expect("utf-8"));
            if schema_ok != crd.status.success() {
                disagree.push(format!(
                    "{kind}.interval={interval:?}: values.schema.json {} it, the operator's CRD \
                     {}: {}",
                    verdict(schema_ok),
                    verdict(crd.status.success()),
                    String::from_utf8_lossy(&crd.stderr).trim()
                ));
            }
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}

//! The Helm chart (deploy/helm/collector), proven by running the real tools: helm (built from
//! its Go module by scripts/helm.sh) lints and renders it over every values file of its ci/
//! folder; values.schema.json refuses wrong values, naming them; every rendered object is
//! accepted by the real kube-apiserver of tests/src/k8s.rs (server-side dry run, PodSecurity
//! admission on); the chart's RBAC and admission policy are the very rules of deploy/*.yaml;
//! and the collector's command line and collector.toml the chart renders are accepted by the
//! collector's own configuration parser.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use clap::Parser as _;
use integration_tests::{cgroup2_mount, k8s::ControlPlane, unique_prefix};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/collector")
}

/// helm from its Go module (a no-op when the cache is warm).
fn helm_bin() -> PathBuf {
    let out = Command::new(repo().join("scripts/helm.sh"))
        .output()
        .expect("run scripts/helm.sh");
    assert!(
        out.status.success(),
        "scripts/helm.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn helm(args: &[&str]) -> Output {
    Command::new(helm_bin())
        .args(args)
        .output()
        .expect("run helm")
}

fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("ci/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// `helm template` as release `collector` in namespace `collector` (the names deploy/*.yaml use).
fn render(values: &Path) -> String {
    let chart = chart();
    let out = helm(&[
        "template",
        "collector",
        chart.to_str().expect("utf-8"),
        "--namespace",
        "collector",
        "-f",
        values.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "helm template -f {}: {}",
        values.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn chart_lints_strictly_with_every_values_file() {
    let chart = chart();
    for values in values_files() {
        let out = helm(&[
            "lint",
            "--strict",
            chart.to_str().expect("utf-8"),
            "-f",
            values.to_str().expect("utf-8"),
        ]);
        assert!(
            out.status.success(),
            "helm lint -f {}: {}{}",
            values.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Each wrong value fails `helm template` (and so `helm install`) with the path of the value.
#[test]
fn schema_rejects_wrong_values_naming_them() {
    let chart = chart();
    for (set, expected) in [
        (
            "mode=root",
            "at '/mode': value must be one of 'privileged', 'least-privilege'",
        ),
        (
            "logFormat=xml",
            "at '/logFormat': value must be one of 'json', 'text'",
        ),
        ("port=0", "at '/port': minimum: got 0, want 1"),
        ("port=70000", "at '/port': maximum"),
        (
            "config.max_workloads=ten",
            "at '/config/max_workloads': got string, want integer",
        ),
        (
            "config.verdict.buckets=1000",
            "at '/config/verdict/buckets': maximum",
        ),
        (
            "config.go_http_uprobes=some",
            "at '/config/go_http_uprobes'",
        ),
        (
            "config.go_grpc_uprobes=some",
            "at '/config/go_grpc_uprobes'",
        ),
        // A bare YAML off is a boolean, not the mode.
        (
            "config.go_grpc_uprobes=false",
            "at '/config/go_grpc_uprobes'",
        ),
        (
            "config.harvest_interval=soon",
            "at '/config/harvest_interval'",
        ),
        (
            "config.unknown_key=1",
            "additional properties 'unknown_key' not allowed",
        ),
        ("otlp.endpoint=otel:4317", "at '/otlp/endpoint'"),
        ("otlp.protocol=udp", "at '/otlp/protocol'"),
        ("otlp.histogram=native", "at '/otlp/histogram'"),
        ("exportPodLabels={app=x}", "at '/exportPodLabels/0'"),
        (
            "resources.limits.memory=lots",
            "at '/resources/limits/memory'",
        ),
        ("hostCgroup2Path=sys/fs/cgroup", "at '/hostCgroup2Path'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        (
            "updateStrategy.maxUnavailable=0",
            "at '/updateStrategy/maxUnavailable'",
        ),
        ("typo=1", "additional properties 'typo' not allowed"),
    ] {
        let out = helm(&[
            "template",
            "t",
            chart.to_str().expect("utf-8"),
            "--set",
            set,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(expected),
            "--set {set}: expected {expected:?} in:\n{stderr}"
        );
    }
    // Not expressible in the schema: a template refuses it with a reason.
    let out = helm(&[
        "template",
        "t",
        chart.to_str().expect("utf-8"),
        "--set",
        "serviceMonitor.enabled=true,podMonitor.enabled=true",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("choose one"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Objects of a `kubectl apply --dry-run=server -o json` answer (a List or one object).
fn items(json: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(json).expect("kubectl json");
    match v["kind"].as_str() {
        Some("List") => v["items"].as_array().expect("items").clone(),
        _ => vec![v],
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The prometheus-operator kinds the chart can render, as CRDs the API server then knows. These
/// are stand-ins (any spec accepted): the server checks that the kinds, names and metadata are
/// valid, not the operator's own schema.
const MONITORING_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: podmonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: PodMonitor, listKind: PodMonitorList, plural: podmonitors, singular: podmonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

fn dry_run(cp: &ControlPlane, manifest: &str) -> (Vec<Value>, String) {
    let out = cp.kubectl_as_admin_stdin(
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        manifest,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "server dry run refused:\n{stderr}");
    (items(&String::from_utf8_lossy(&out.stdout)), stderr)
}

trait AdminStdin {
    fn kubectl_as_admin_stdin(&self, args: &[&str], stdin: &str) -> Output;
}

impl AdminStdin for ControlPlane {
    fn kubectl_as_admin_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let admin = self.admin_kubeconfig();
        self.kubectl_as(&admin, args, Some(stdin)).expect("kubectl")
    }
}

/// The DaemonSet's collector container.
fn collector_container(objects: &[Value]) -> &Value {
    &find(objects, "DaemonSet", "collector")["spec"]["template"]["spec"]["containers"][0]
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// What every values file must give, checked on the objects as the API server stored them.
fn check_daemonset(file: &str, objects: &[Value], values: &str) {
    let ds = find(objects, "DaemonSet", "collector");
    let pod = &ds["spec"]["template"]["spec"];
    let c = collector_container(objects);
    assert_eq!(pod["hostPID"], true, "{file}");
    assert_eq!(pod["priorityClassName"], "system-node-critical", "{file}");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}]),
        "{file}"
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["type"], "RollingUpdate",
        "{file}"
    );
    assert!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_number()
            || ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"].is_string()
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{file}");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{file}");
    assert_eq!(
        c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .map(|s| s > 0),
        Some(true),
        "{file}"
    );
    let node_name = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert!(c["resources"]["requests"]["memory"].is_string(), "{file}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{file}");
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(host_paths, ["cgroup", "btf", "tracefs"], "{file}");
    for m in c["volumeMounts"].as_array().expect("mounts") {
        assert_eq!(m["readOnly"], true, "{file}: {m}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}");
    if values.contains("mode: least-privilege") {
        assert_eq!(sc["privileged"], false, "{file}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{file}");
        // Exactly what collector/src/capabilities.rs requires of that configuration.
        let expected: &[&str] = if values.contains("go_http_uprobes: all") {
            &["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"]
        } else if !values.contains("go_http_uprobes: \"off\"")
            || values.contains("go_grpc_uprobes: all")
        {
            &[
                "BPF",
                "PERFMON",
                "NET_ADMIN",
                "SYS_PTRACE",
                "DAC_READ_SEARCH",
            ]
        } else {
            &["BPF", "PERFMON", "NET_ADMIN"]
        };
        assert_eq!(strings(&sc["capabilities"]["add"]), expected, "{file}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
    } else {
        assert_eq!(sc["privileged"], true, "{file}");
        assert!(sc.get("capabilities").is_none(), "{file}");
    }
}

/// The chart's args and collector.toml, as the DaemonSet would run them, through the collector's
/// own parser (`Cli` then `Config::load`). Paths that exist only in the pod are mapped to real
/// files here: the config file, the cgroup2 mount, the token and CA files.
fn check_collector_accepts_its_configuration(file: &str, objects: &[Value], ca: &Path) {
    let dir = std::env::temp_dir().join(format!("{}-chartcfg", unique_prefix("dply")));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let toml = find(objects, "ConfigMap", "collector")["data"]["collector.toml"]
        .as_str()
        .expect("collector.toml")
        .to_string();
    let config_path = dir.join("collector.toml");
    std::fs::write(&config_path, &toml).expect("write toml");
    let token = dir.join("token");
    std::fs::write(&token, "secret-token\n").expect("write token");
    let c = collector_container(objects);
    let mut args = vec!["collector".to_string()];
    for a in strings(&c["args"]) {
        let a = a
            .replace(
                "/etc/collector/config/collector.toml",
                config_path.to_str().expect("utf-8"),
            )
            .replace("=/host/cgroup", &format!("={}", cgroup2_mount().display()))
            .replace("/etc/collector/otlp-ca/ca.crt", ca.to_str().expect("utf-8"));
        let a = if a.starts_with("--api-token-file=") {
            format!("--api-token-file={}", token.display())
        } else {
            a
        };
        args.push(a);
    }
    let cli = collector::config::Cli::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{file}: the collector refuses the chart's args {args:?}: {e}"));
    let env: BTreeMap<String, String> = [("NODE_NAME".to_string(), "node-a".to_string())].into();
    let config = collector::config::Config::load(&cli, &env).unwrap_or_else(|e| {
        panic!("{file}: the collector refuses the chart's configuration: {e}\n{toml}")
    });
    assert!(
        config.kubernetes.is_some(),
        "{file}: NODE_NAME from the downward API turns Kubernetes on"
    );
    // The values reach the collector as meant: the label allow-list and the histogram switch.
    if file.ends_with("full-values.yaml") {
        assert_eq!(
            config.kubernetes.as_ref().map(|k| k.pod_labels.clone()),
            Some(vec![
                "app.kubernetes.io/name".to_string(),
                "team".to_string()
            ])
        );
        assert_eq!(
            config.otlp.as_ref().map(|o| o.histogram),
            Some(collector::config::OtlpHistogram::Exponential)
        );
        assert!(config.api.kubernetes_auth, "apiAuthKubernetes: true");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn rules_of<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    &find(objects, kind, name)["rules"]
}

#[test]
fn rendered_objects_are_accepted_by_the_api_server_and_match_deploy() {
    let cp = ControlPlane::start(&unique_prefix("dply")).expect("control plane");
    // deploy/*.yaml as they are applied by hand: their RBAC and admission policy are the truth
    // the chart must repeat. rbac.yaml creates the namespace.
    let mut plain = String::new();
    for f in [
        "rbac.yaml",
        "api-auth-rbac.yaml",
        "watchdog.yaml",
        "admission.yaml",
    ] {
        plain.push_str(&std::fs::read_to_string(repo().join("deploy").join(f)).expect(f));
        plain.push_str("\n---\n");
    }
    cp.apply(&std::fs::read_to_string(repo().join("deploy/rbac.yaml")).expect("rbac"))
        .expect("apply rbac.yaml");
    let (deploy_objects, _) = dry_run(&cp, &plain);
    cp.apply(MONITORING_CRDS).expect("monitoring CRDs");
    // The chart needs the privileged Pod Security level (host PID, host paths, capabilities).
    cp.kubectl(&[
        "label",
        "namespace",
        "collector",
        "pod-security.kubernetes.io/enforce=privileged",
        "--overwrite",
    ])
    .expect("label namespace");
    let ca = cp.ca();
    let mut kinds = std::collections::BTreeSet::new();
    for values_path in values_files() {
        let file = values_path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let values = std::fs::read_to_string(&values_path).expect("values");
        let rendered = render(&values_path);
        let (objects, warnings) = dry_run(&cp, &rendered);
        assert!(
            !warnings.contains("PodSecurity"),
            "{file}: PodSecurity warnings in a privileged namespace:\n{warnings}"
        );
        kinds.extend(
            objects
                .iter()
                .filter_map(|o| o["kind"].as_str().map(String::from)),
        );
        check_daemonset(&file, &objects, &values);
        check_collector_accepts_its_configuration(&file, &objects, &ca);
        if values.contains("create: false") {
            assert!(objects.iter().all(|o| o["kind"] != "ClusterRole"), "{file}");
            continue;
        }
        assert_eq!(
            rules_of(&objects, "ClusterRole", "collector"),
            rules_of(&deploy_objects, "ClusterRole", "collector"),
            "{file}: the chart's ClusterRole differs from deploy/rbac.yaml"
        );
        // --api-auth-kubernetes: the reviews the collector makes and the readers' role.
        let api_auth = values.contains("apiAuthKubernetes: true");
        for name in ["collector-api-auth", "collector-api-reader"] {
            let rendered = objects
                .iter()
                .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == name);
            assert_eq!(rendered.is_some(), api_auth, "{file}: ClusterRole {name}");
            if let Some(r) = rendered {
                assert_eq!(
                    r["rules"],
                    *rules_of(&deploy_objects, "ClusterRole", name),
                    "{file}: the chart's {name} differs from deploy/api-auth-rbac.yaml"
                );
            }
        }
        assert_eq!(
            rules_of(&objects, "Role", "collector-lease"),
            rules_of(&deploy_objects, "Role", "collector-lease"),
            "{file}: the chart's lease Role differs from deploy/rbac.yaml"
        );
        assert_eq!(
            find(&objects, "ValidatingAdmissionPolicy", "collector-own-node")["spec"],
            find(
                &deploy_objects,
                "ValidatingAdmissionPolicy",
                "collector-own-node"
            )["spec"],
            "{file}: the chart's admission policy differs from deploy/admission.yaml"
        );
        if values.contains("watchdog:") {
            for kind in ["ClusterRole", "Role"] {
                assert_eq!(
                    rules_of(&objects, kind, "collector-watchdog"),
                    rules_of(&deploy_objects, kind, "collector-watchdog"),
                    "{file}: the chart's watchdog {kind} differs from deploy/watchdog.yaml"
                );
            }
            let watchdog = &find(&objects, "Deployment", "collector-watchdog")["spec"]["template"]
                ["spec"]["containers"][0];
            assert_eq!(strings(&watchdog["args"])[0], "watchdog");
        }
        if let Some(service) = objects.iter().find(|o| o["kind"] == "Service") {
            assert_eq!(service["spec"]["internalTrafficPolicy"], "Local", "{file}");
        }
    }
    for kind in [
        "ServiceAccount",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "DaemonSet",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    ] {
        assert!(
            kinds.contains(kind),
            "no values file renders a {kind}: {kinds:?}"
        );
    }

    // Pod Security admission is on: the same DaemonSet in a namespace enforcing "baseline" is
    // flagged (enforcement itself happens when the DaemonSet controller creates the pods).
    cp.kubectl(&["create", "namespace", "baseline-ns"])
        .expect("namespace");
    cp.kubectl(&[
        "label",
        "namespace",
        "baseline-ns",
        "pod-security.kubernetes.io/enforce=baseline",
    ])
    .expect("label");
    let chart = chart();
    let out = helm(&[
        "template",
        "collector",
        chart.to_str().expect("utf-8"),
        "--namespace",
        "baseline-ns",
        "--set",
        "rbac.create=false,serviceAccount.create=false,serviceAccount.name=default",
    ]);
    assert!(out.status.success());
    let (_, warnings) = dry_run(&cp, &String::from_utf8_lossy(&out.stdout));
    assert!(
        warnings.contains("would violate PodSecurity \"baseline:latest\""),
        "{warnings}"
    );
}

/// The cluster-level rules (files/rules.yaml, embedded in the chart's PrometheusRule) are valid
/// for Prometheus and pass their unit tests: every recording rule and alert, with input series
/// shaped like the collector's metrics (files/rules_test.yaml).
#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    let files = chart().join("files");
    for args in [
        &["check", "rules", "rules.yaml"][..],
        &["test", "rules", "rules_test.yaml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&files)
            .output()
            .expect("run promtool (Debian's prometheus package, scripts/bootstrap.sh)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every rule of the file has a unit test: each recording rule is evaluated and each alert
    // checked by name in rules_test.yaml.
    let rules = std::fs::read_to_string(files.join("rules.yaml")).expect("rules");
    let tests = std::fs::read_to_string(files.join("rules_test.yaml")).expect("tests");
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- record: ") {
            assert!(
                tests.contains(&format!("expr: {name}")),
                "no test of {name}"
            );
        }
        if let Some(name) = line.strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "no test of {name}"
            );
        }
    }
}

/// Every rendered object is valid for the oldest and the newest Kubernetes the chart claims
/// (Chart.yaml kubeVersion >=1.30), strictly: an unknown or misspelt field fails (the API server
/// of the test above is one release only). The prometheus-operator kinds have no schema there.
#[test]
fn rendered_objects_validate_strictly_for_the_oldest_and_newest_kubernetes() {
    let tool = Path::new("/opt/collector-test/py-venv/bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "{} is missing: scripts/bootstrap.sh installs it",
        tool.display()
    );
    let dir = std::env::temp_dir().join(format!("{}-kv", unique_prefix("dply")));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut files = Vec::new();
    for values in values_files() {
        let path = dir.join(values.file_name().expect("name"));
        std::fs::write(&path, render(&values)).expect("write");
        files.push(path);
    }
    for version in ["1.30.0", "1.37.0"] {
        let out = Command::new(tool)
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "Kubernetes {version}:\n{text}");
        assert!(!text.contains("ERROR"), "Kubernetes {version}:\n{text}");
        for line in text.lines().filter(|l| l.starts_with("WARN")) {
            assert!(
                line.contains("monitoring.coreos.com/v1"),
                "Kubernetes {version}: {line}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kubectl kustomize` of a directory (kustomize also normalises the YAML, so a chart rendering
/// and a kustomization compare as text).
fn kustomize(dir: &Path) -> String {
    let kubectl = integration_tests::k8s::control_plane_bin()
        .expect("control plane binaries")
        .join("kubectl");
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The plain manifests (deploy/kustomize: base and the least-privilege overlay) are the chart's
/// objects: each equals the chart rendered with the same mode, so neither can drift.
#[test]
fn kustomize_base_and_overlay_equal_the_chart() {
    let kz = repo().join("deploy/kustomize");
    let dir = std::env::temp_dir().join(format!("{}-kz", unique_prefix("dply")));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(kz.join("base/namespace.yaml"), dir.join("namespace.yaml")).expect("copy");
    std::fs::write(
        dir.join("kustomization.yaml"),
        "resources:\n  - namespace.yaml\n  - collector.yaml\n",
    )
    .expect("write");
    let chart = chart();
    for (mode, kustomization) in [
        ("privileged", kz.join("base")),
        ("least-privilege", kz.join("overlays/least-privilege")),
    ] {
        let out = helm(&[
            "template",
            "collector",
            chart.to_str().expect("utf-8"),
            "--namespace",
            "collector",
            "--set",
            &format!("mode={mode}"),
        ]);
        assert!(out.status.success());
        std::fs::write(dir.join("collector.yaml"), &out.stdout).expect("write");
        assert!(
            kustomize(&kustomization) == kustomize(&dir),
            "{} differs from the chart in mode {mode}; regenerate the base with: helm template \
             collector deploy/helm/collector --namespace collector > \
             deploy/kustomize/base/collector.yaml (and align the overlay's patch)",
            kustomization.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

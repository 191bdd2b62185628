//! deploy/otel-collector/config.yaml run by a real OpenTelemetry Collector: the distribution of
//! deploy/otel-collector/builder-config.yaml, built from the Go module proxy by the collector's
//! own builder (scripts/otelcol.sh, cached in /var/cache/collector-otelcol).
//!
//! `example_config_validates`: `otelcol validate` accepts the example as shipped, and refuses a
//! copy with a misspelt key, naming it (so the validation is real).
//! `collector_to_prometheus_through_k8sattributes` (root): our collector, without Kubernetes
//! access of its own, pushes OTLP to that pipeline; k8sattributes (against a real
//! kube-apiserver, tests/src/k8s.rs) finds the pod by the `k8s.pod.uid` of its resource and
//! names it; Prometheus (its remote-write receiver) ends up with the pod's exact bytes under
//! the pod's namespace, name and label.
//! Run: `cargo test -p integration-tests --test otel_collector -- --test-threads=1`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use collector::{
    app,
    config::{Config, OtlpConfig, OtlpProtocol},
};
use integration_tests::{
    HARNESS_KUBELET_ROOT, HostCgroup, Killed, Pod, fake_container_id, free_port, k8s::ControlPlane,
    pod_traffic_bin, read_listening, require_root, unique_prefix, wait_until_ok_blocking,
};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example() -> PathBuf {
    repo().join("deploy/otel-collector/config.yaml")
}

/// The otelcol binary (built on first use; a no-op when the cache is warm).
fn otelcol() -> PathBuf {
    let out = Command::new(repo().join("scripts/otelcol.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/otelcol.sh");
    assert!(out.status.success(), "scripts/otelcol.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn validate(bin: &Path, config: &Path) -> Output {
    Command::new(bin)
        .arg("validate")
        .arg(format!("--config=file:{}", config.display()))
        .output()
        .expect("otelcol validate")
}

#[test]
fn example_config_validates() {
    let bin = otelcol();
    let out = validate(&bin, &example());
    assert!(
        out.status.success(),
        "the example is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A misspelt key in k8sattributes: refused, by name.
    let text = std::fs::read_to_string(example()).expect("example");
    assert!(text.contains("    extract:\n"));
    let bad = std::env::temp_dir().join(format!("otelcol-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, text.replace("    extract:\n", "    extrakt:\n")).expect("write");
    let out = validate(&bin, &bad);
    let _ = std::fs::remove_file(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a misspelt key accepted");
    assert!(stderr.contains("extrakt"), "{stderr}");
}

fn get(url: &str) -> Option<Value> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn collector_to_prometheus_through_k8sattributes() {
    require_root();
    let bin = otelcol();
    let prefix = unique_prefix("otc");
    let cp = ControlPlane::start(&prefix).expect("control plane");
    cp.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
    cp.create(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": "shop"}}));
    let uid = cp.create(&json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop",
            "labels": {"app.kubernetes.io/name": "web"}},
        "spec": {"nodeName": format!("node-{prefix}"), "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}}));
    let cid = fake_container_id(0x7c01);
    let pod = Pod::create(&prefix, 85, &uid, &cid).expect("pod");
    let sink_cgroup = HostCgroup::create(&prefix, "sink").expect("sink cgroup");
    let sink_addr = format!("{}:9100", pod.host_addr());
    let mut sink = Killed(
        sink_cgroup
            .spawn(&pod_traffic_bin(), &["sink", &sink_addr])
            .expect("sink"),
    );
    read_listening(&mut sink.0, Duration::from_secs(10)).expect("sink listening");

    // Prometheus, receiving remote writes only.
    let dir = cp.dir().join("otelcol");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("prometheus.yml"), "global: {}\n").expect("prometheus.yml");
    let prom_port = free_port();
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (installed by scripts/bootstrap.sh)"),
    );
    // The example pipeline as shipped; only its endpoints and Kubernetes access from the env.
    let http_port = free_port();
    let log = dir.join("otelcol.log");
    let _otelcol = Killed(
        Command::new(&bin)
            .arg(format!("--config=file:{}", example().display()))
            .env("OTLP_GRPC_ENDPOINT", format!("127.0.0.1:{}", free_port()))
            .env("OTLP_HTTP_ENDPOINT", format!("127.0.0.1:{http_port}"))
            .env("K8S_AUTH_TYPE", "kubeConfig")
            .env("KUBECONFIG", cp.admin_kubeconfig())
            .env(
                "PROMETHEUS_REMOTE_WRITE_URL",
                format!("http://127.0.0.1:{prom_port}/api/v1/write"),
            )
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.join("otelcol.err")).expect("log"))
            .spawn()
            .expect("otelcol"),
    );

    // Our collector: no --node-name (the processor names the pod), OTLP over HTTP each second.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let running = rt
        .block_on(app::start(Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            harvest_interval: Duration::from_millis(200),
            kubelet_cgroup_roots: vec![HARNESS_KUBELET_ROOT.into()],
            otlp: Some(OtlpConfig {
                endpoint: format!("http://127.0.0.1:{http_port}/v1/metrics"),
                protocol: OtlpProtocol::HttpProtobuf,
                headers: vec![],
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(5),
                ca_file: None,
                client_cert: None,
                client_key: None,
                histogram: Default::default(),
            }),
            ..Config::default()
        }))
        .expect("collector starts");
    let bytes = 271_828u64;
    let out = pod
        .run(
            &pod_traffic_bin(),
            &["send", &sink_addr, &bytes.to_string()],
            Duration::from_secs(60),
        )
        .expect("send");
    assert!(out.status.success(), "{out:?}");

    let query = format!(
        "http://127.0.0.1:{prom_port}/api/v1/query?query=collector_tcp_sent_bytes_total%7Bk8s_pod_uid%3D%22{uid}%22%7D"
    );
    let series = wait_until_ok_blocking(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "the pod's bytes in Prometheus, named by k8sattributes",
        || {
            let v = get(&query).ok_or_else(|| {
                std::fs::read_to_string(dir.join("otelcol.err")).unwrap_or_default()
            })?;
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            match result.as_slice() {
                [s] if s["metric"]["k8s_pod_name"] == "web-0"
                    && s["value"][1] == bytes.to_string().as_str() =>
                {
                    Ok(s.clone())
                }
                _ => Err(format!("{v}")),
            }
        },
    );
    let m = &series["metric"];
    assert_eq!(
        (
            &m["k8s_namespace_name"],
            &m["k8s_pod_name"],
            &m["app"],
            &m["container_id"],
            &m["workload_kind"]
        ),
        (
            &json!("shop"),
            &json!("web-0"),
            &json!("web"),
            &json!(cid),
            &json!("pod")
        ),
        "{series}"
    );
    rt.block_on(running.shutdown());
    drop((pod, sink, sink_cgroup));
}

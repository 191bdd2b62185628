//! docs/metrics.md is the reference of every exported metric. This test renders the real
//! registry with a sample in every family, derives the reference from it, and fails when the
//! document differs, so the document cannot drift from the code.
//! Regenerate with: UPDATE_METRICS_DOC=1 cargo test -p collector --test metrics_doc

use std::collections::BTreeMap;

use collector::{
    export::{
        Metrics,
        grpc::RpcLabels,
        http::{OutcomeLabels, RequestLabels},
        otlp::{HTTP_DURATION, RPC_DURATION, TCP_INSTRUMENTS, VERDICT},
        prometheus::{
            KernelDropLabels, KindLabels, NodeLabels, ProgramLabels, ReasonLabels, ResultLabels,
            SignalLabels,
        },
        verdict::{MismatchLabels, ReasonGaugeLabels, StateLabels, TransitionLabels},
    },
    identity::{PodNames, Workload, WorkloadKind},
    kubernetes::{CapLabels, ResourceLabels, ResultLabels as KubeResultLabels},
};
use collector_common::tcp::TcpStats;

/// Every metric family with one sample of each label combination.
fn populated() -> Metrics {
    let m = Metrics::new(1);
    let pod = Workload {
        kind: WorkloadKind::Pod,
        name: "uid".into(),
        pod_uid: Some("uid".into()),
        container_id: Some("c".into()),
        kubernetes: Some(PodNames {
            namespace: "ns".into(),
            pod: "pod".into(),
            container: "c".into(),
            workload: "deployment/d".into(),
            service: "s".into(),
            // One allow-listed pod label (`--pod-label app`).
            labels: [("app".to_string(), "a".to_string())].into(),
        }),
    };
    let all_ones = TcpStats {
        bytes_sent: 1,
        send_calls: 1,
        send_err_pipe: 1,
        send_err_reset: 1,
        send_err_other: 1,
        send_would_block: 1,
        retransmit_segs: 1,
        resets_sent: 1,
        resets_received: 1,
        connects_refused: 1,
        connects_timed_out: 1,
        connects_failed_other: 1,
        active_opens: 1,
        passive_opens: 1,
        closes: 1,
    };
    let labels = m.labels_for(&pod);
    m.tcp.add(&labels, &all_ones);
    let request = RequestLabels {
        workload: labels.clone(),
        method: "GET",
        route: "/ok".into(),
        status_code: "200".into(),
        error_type: "",
    };
    m.http.duration.get_or_create(&request).observe(0.1);
    m.http.probe_requests.get_or_create(&request).inc();
    m.http
        .requests
        .get_or_create(&OutcomeLabels {
            workload: labels.clone(),
            outcome: "2xx",
        })
        .inc();
    m.http.unrecorded.get_or_create(&labels).inc();
    m.http.routes_capped.get_or_create(&labels).inc();
    let rpc = RpcLabels {
        workload: labels.clone(),
        rpc_system: "grpc",
        rpc_service: "pkg.Service".into(),
        rpc_method: "Method".into(),
        rpc_grpc_status_code: 0,
    };
    m.grpc.count(&rpc, 1, false);
    m.grpc.count(&rpc, 1, true);
    m.grpc.observe(&rpc, 0.1);
    m.grpc.unrecorded.get_or_create(&labels).inc();
    m.grpc.no_start.get_or_create(&labels).inc();
    m.grpc.methods_capped.get_or_create(&labels).inc();
    m.grpc.binaries_instrumented.set(1);
    m.grpc
        .binaries_skipped
        .get_or_create(&ReasonLabels {
            reason: "no_offsets",
        })
        .inc();
    let c = &m.collector;
    c.signal_rung
        .get_or_create(&SignalLabels {
            signal: "tcp_send",
            rung: "tp_btf",
        })
        .set(1);
    c.kernel_drops
        .get_or_create(&KernelDropLabels {
            reason: "ring_reserve_failed",
            cpu: 0,
        })
        .inc();
    c.program_misses
        .get_or_create(&ProgramLabels {
            program: "retrans_tp",
            signal: "tcp_retransmit",
        })
        .inc();
    c.events_received
        .get_or_create(&KindLabels { kind: "process" })
        .inc();
    c.events_rejected
        .get_or_create(&ReasonLabels { reason: "short" })
        .inc();
    c.events_dropped
        .get_or_create(&ReasonLabels {
            reason: "channel_full",
        })
        .inc();
    c.go_binaries_skipped
        .get_or_create(&ReasonLabels {
            reason: "no_offsets",
        })
        .inc();
    c.otlp_exports
        .get_or_create(&ResultLabels { result: "success" })
        .inc();
    c.api
        .auth
        .reviews
        .get_or_create(&collector::api::kube_auth::ReviewLabels {
            review: "token",
            result: "authenticated",
        })
        .inc();
    c.api
        .auth
        .cache_hits
        .get_or_create(&collector::api::kube_auth::KindLabels { review: "token" })
        .inc();
    let node = NodeLabels { node: "n".into() };
    c.kubernetes.connected.get_or_create(&node).set(1);
    c.kubernetes.pods.get_or_create(&node).set(1);
    c.kubernetes
        .watch_errors
        .get_or_create(&ResourceLabels { resource: "pods" })
        .inc();
    c.kubernetes.readiness_gated.get_or_create(&node).set(1);
    c.kubernetes.readiness_false.get_or_create(&node).set(1);
    c.kubernetes
        .readiness_held
        .get_or_create(&CapLabels {
            cap: "service_floor",
        })
        .set(1);
    c.kubernetes
        .readiness_patches
        .get_or_create(&KubeResultLabels { result: "written" })
        .inc();
    let v = &m.verdict;
    v.state
        .get_or_create(&StateLabels {
            workload: labels.clone(),
            state: "unhealthy",
        })
        .set(1);
    v.reason
        .get_or_create(&ReasonGaugeLabels {
            workload: labels.clone(),
            reason: "error_ratio",
        })
        .set(1);
    v.transitions
        .get_or_create(&TransitionLabels {
            workload: labels.clone(),
            from: "healthy",
            to: "unhealthy",
        })
        .inc();
    v.probe_mismatch
        .get_or_create(&MismatchLabels { workload: labels })
        .inc();
    m
}

struct Family {
    kind: String,
    unit: String,
    help: String,
    labels: Vec<String>,
}

fn families(openmetrics: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    let mut current = String::new();
    let family = |out: &mut BTreeMap<String, Family>, name: &str| {
        out.entry(name.to_string()).or_insert_with(|| Family {
            kind: String::new(),
            unit: String::new(),
            help: String::new(),
            labels: vec![],
        });
    };
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            current = name.to_string();
            family(&mut out, name);
            out.get_mut(name).expect("just inserted").help = help.to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has kind");
            family(&mut out, name);
            out.get_mut(name).expect("just inserted").kind = kind.to_string();
        } else if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').expect("UNIT has unit");
            family(&mut out, name);
            out.get_mut(name).expect("just inserted").unit = unit.to_string();
        } else if !line.starts_with('#') && !line.is_empty() {
            let labels: Vec<String> = line
                .split_once('{')
                .map(|(_, rest)| {
                    rest.split("\",")
                        .filter_map(|kv| {
                            kv.split_once('=')
                                .map(|(k, _)| k.trim_start_matches(',').to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let f = out.get_mut(&current).expect("sample after its HELP");
            for l in labels {
                if !f.labels.contains(&l) {
                    f.labels.push(l);
                }
            }
        }
    }
    out
}

fn sample_name(name: &str, f: &Family) -> String {
    match f.kind.as_str() {
        "counter" => format!("{name}_total"),
        "info" => format!("{name}_info"),
        _ => name.to_string(),
    }
}

fn render_doc() -> String {
    let m = populated();
    let fams = families(&m.render());
    let mut doc = String::from(
        "# Metrics reference\n\n\
         Generated from the code by `collector/tests/metrics_doc.rs` (which fails when this file is\n\
         stale; regenerate with `UPDATE_METRICS_DOC=1 cargo test -p collector --test metrics_doc`).\n\n\
         ## Prometheus (`/metrics`)\n\n\
         OpenMetrics 1.0 when the scraper asks for it (`Accept: application/openmetrics-text`, as\n\
         Prometheus does), Prometheus text 0.0.4 otherwise. Counters are cumulative since the\n\
         collector started.\n\n\
         Cardinality: per-workload series carry `workload_kind`, `workload`, `pod_uid`, `container_id`;\n\
         pods the Kubernetes API named (`--node-name`) also carry `namespace`, `pod`, `container` and\n\
         `service` (each left out when unknown, and on every other series), and their `workload` is\n\
         the owner (`deployment/web`, `statefulset/db`, `daemonset/x`, `cronjob/x`, `job/x`, `pod/name`).\n\
         At most `--max-workloads` (default 2000) workloads get their own series; observations of\n\
         further workloads are charged to `workload_kind=\"overflow\"` and counted in\n\
         `collector_workloads_capped_total`. `error`, `direction`, `reason`, `signal`, `rung`,\n\
         `kind` and `result` take values from fixed sets; `cpu` is bounded by the CPU count.\n\n\
         | sample name | type | unit | labels | meaning |\n|---|---|---|---|---|\n",
    );
    for (name, f) in &fams {
        assert!(!f.help.is_empty(), "{name} has no HELP");
        // Counts are dimensionless in Prometheus naming; say what is counted.
        let unit = if f.unit.is_empty() {
            match f.kind.as_str() {
                "counter" => "1 (count)".to_string(),
                "gauge" | "info" => "1".to_string(),
                k => k.to_string(),
            }
        } else {
            f.unit.clone()
        };
        doc.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            sample_name(name, f),
            f.kind,
            unit,
            if f.labels.is_empty() {
                "-".to_string()
            } else {
                f.labels
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            f.help
        ));
    }
    doc.push_str(
        "\n## OpenTelemetry (OTLP push)\n\n\
         Cumulative monotonic sums with the same values as the Prometheus counters. One resource\n\
         per workload in each export request (scope `collector` with the collector's version).\n\
         Every resource carries the node's `host.name` (and `k8s.node.name` with `--node-name`),\n\
         `workload.kind`, `workload.name` and `service.name`; pods `k8s.pod.uid` and `container.id`,\n\
         and once the Kubernetes API named them `k8s.namespace.name`, `service.namespace`,\n\
         `k8s.pod.name`, `k8s.container.name`, their owner as `k8s.deployment.name`,\n\
         `k8s.statefulset.name`, `k8s.daemonset.name`, `k8s.replicaset.name`, `k8s.job.name` or\n\
         `k8s.cronjob.name`, the Services selecting them as `k8s.service.names` (comma-joined) and\n\
         the `--pod-label` allow-list as `k8s.pod.label.<name>`; process workloads\n\
         `process.executable.name`. `service.name` is the pod's (first) Service, else its owner's\n\
         name, else the pod's, else the workload's name. `http.server.request.duration` has\n\
         explicit buckets (the semantic convention's boundaries) unless `--otlp-histogram\n\
         exponential`: base-2 exponential buckets (at most 160, the finest scale that fits).\n\n\
         | name | unit | extra attributes | meaning |\n|---|---|---|---|\n",
    );
    for (name, unit, description, read) in TCP_INSTRUMENTS {
        let extra: Vec<String> = read(&TcpStats::default())
            .into_iter()
            .filter_map(|(_, kv)| kv.map(|kv| format!("`{}`={}", kv.key, kv.value)))
            .collect();
        doc.push_str(&format!(
            "| `{name}` | `{unit}` | {} | {description} |\n",
            if extra.is_empty() {
                "-".to_string()
            } else {
                extra.join(", ")
            }
        ));
    }
    for (name, unit, description, attrs) in [HTTP_DURATION, RPC_DURATION, VERDICT] {
        doc.push_str(&format!(
            "| `{name}` | `{unit}` | {attrs} | {description} |\n"
        ));
    }
    doc
}

#[test]
fn metrics_reference_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let want = render_doc();
    if std::env::var_os("UPDATE_METRICS_DOC").is_some() {
        std::fs::write(path, &want).expect("write docs/metrics.md");
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/metrics.md is stale; run UPDATE_METRICS_DOC=1 cargo test -p collector --test metrics_doc\n--- expected ---\n{want}"
    );
}

#[test]
fn every_family_has_help_and_counters_end_in_total() {
    let m = populated();
    let fams = families(&m.render());
    assert!(fams.len() >= 20, "{} families", fams.len());
    let text = m.render_text();
    for (name, f) in &fams {
        assert!(!f.help.is_empty(), "{name}");
        if f.kind == "counter" {
            assert!(
                text.contains(&format!("# TYPE {name}_total counter")),
                "{name}"
            );
        }
        if name.ends_with("_bytes") {
            assert_eq!(f.unit, "bytes", "{name}");
        }
    }
}

//! docs/openapi.json against the real router: every documented response is produced by its
//! `x-test-request` with the documented status and JSON shape (undocumented fields fail too),
//! and every route the router serves is documented.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use collector::kubernetes::{Kubernetes, KubernetesConfig};
use collector::probes::go_http::listing::{GoServer, SkipReason, Skipped};
use collector::{
    api::{self, ApiState},
    export::{Metrics, prometheus::WorkloadLabels},
    status,
    verdict::{Engine, VerdictConfig, rules::State, window::Geometry},
};
use k8s_openapi::{
    api::{
        core::v1::{ObjectReference, Pod},
        discovery::v1::{Endpoint, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::Value;

fn doc() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let text = std::fs::read_to_string(path).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unsupported $ref {r}"));
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// The subset of OpenAPI 3.0 schemas the document uses: type, nullable, enum, required,
/// properties (no others allowed), items, $ref.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(doc, schema);
    if v.is_null() {
        return if s.get("nullable") == Some(&Value::Bool(true)) {
            Ok(())
        } else {
            Err(format!("{at}: null but not nullable"))
        };
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} not in {e:?}"));
    }
    let ty = s.get("type").and_then(Value::as_str).unwrap_or("");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        other => return Err(format!("{at}: schema without a known type ({other:?})")),
    };
    if !ok {
        return Err(format!("{at}: {v} is not {ty}"));
    }
    if let (Some(obj), Some(props)) = (
        v.as_object(),
        s.get("properties").and_then(Value::as_object),
    ) {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap_or("");
            if !obj.contains_key(r) {
                return Err(format!("{at}: missing required {r}"));
            }
        }
        for (k, val) in obj {
            let p = props
                .get(k)
                .ok_or_else(|| format!("{at}: undocumented field {k}"))?;
            check(doc, p, val, &format!("{at}.{k}"))?;
        }
    }
    if let (Some(arr), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, item) in arr.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn pod(name: &str) -> WorkloadLabels {
    WorkloadLabels {
        workload_kind: "pod",
        workload: name.into(),
        pod_uid: name.into(),
        container_id: String::new(),
        kubernetes: Default::default(),
    }
}

/// pod-a healthy, pod-b unhealthy (all 5xx while its probes answer 200).
fn verdicts() -> Engine {
    let config = VerdictConfig {
        geometry: Geometry {
            bucket: Duration::from_secs(1),
            count: 5,
        },
        ..VerdictConfig::default()
    };
    let mut e = Engine::new(config, 1, None);
    let t0 = Instant::now();
    e.tick(t0, SystemTime::now());
    for s in 0..4 {
        let now = t0 + Duration::from_secs(s) + Duration::from_millis(10);
        e.on_http_counts(
            &pod("pod-a"),
            collector::verdict::HttpDelta {
                total: 30,
                r5xx: 0,
                failed: 0,
                lost: 0,
            },
            now,
        );
        e.on_http_counts(
            &pod("pod-b"),
            collector::verdict::HttpDelta {
                total: 32,
                r5xx: 30,
                failed: 0,
                lost: 0,
            },
            now,
        );
        for _ in 0..30 {
            e.on_request(
                &pod("pod-a"),
                false,
                Some(200),
                Duration::from_millis(4),
                now,
            );
            e.on_request(
                &pod("pod-b"),
                false,
                Some(503),
                Duration::from_millis(2),
                now,
            );
        }
        e.on_request(
            &pod("pod-b"),
            true,
            Some(200),
            Duration::from_millis(1),
            now,
        );
        e.on_request(
            &pod("pod-b"),
            true,
            Some(200),
            Duration::from_millis(1),
            now,
        );
        e.tick(now + Duration::from_secs(1), SystemTime::now());
    }
    e
}

/// A Kubernetes handle that knows pods `shop/<name>` with the given UIDs. Its API server is
/// never contacted (the watches are not started), so the routes by name are served offline.
async fn kubernetes_with_pods(pods: &[(&str, &str)]) -> Arc<Kubernetes> {
    let kc = std::env::temp_dir().join(format!("openapi-{}.kubeconfig", std::process::id()));
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:9\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
         users:\n- name: u\n  user:\n    token: t\n",
    )
    .expect("kubeconfig");
    let k = Kubernetes::connect(
        &KubernetesConfig {
            node_name: "node-1".into(),
            kubeconfig: Some(kc.clone()),
            pod_labels: vec![],
        },
        Default::default(),
    )
    .await
    .expect("client");
    let _ = std::fs::remove_file(&kc);
    for (name, uid) in pods {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some((*name).into()),
                namespace: Some("shop".into()),
                uid: Some((*uid).into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(k.upsert_pod(&pod));
    }
    // Service shop/web: pod b on this node, one endpoint elsewhere.
    let endpoint = |uid: &str, node: &str| Endpoint {
        addresses: vec!["10.0.0.1".into()],
        node_name: Some(node.into()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    k.upsert_slice(&EndpointSlice {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("shop".into()),
            labels: Some([("kubernetes.io/service-name".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![endpoint("pod-b", "node-1"), endpoint("pod-z", "node-2")],
        ..Default::default()
    });
    k
}

#[test]
fn every_documented_response_is_served_and_every_route_documented() {
    let doc = doc();
    let engine = verdicts();
    let mut state = ApiState {
        metrics: Arc::new(Metrics::new(100)),
        probes: Arc::new(Vec::new()),
        // A skipped Go server: the instrumented shape is produced by the root tests.
        go_http: Arc::new(Mutex::new(vec![GoServer::Skipped(Skipped {
            path: "/usr/bin/prometheus".into(),
            go_version: Some("go1.19.8".into()),
            pids: vec![42],
            instrumented: false,
            reason: SkipReason::NoOffsets,
            detail: "no DWARF, and the offsets table has no row for Go 1.19".into(),
            route_learning_windows: None,
        })])),
        verdicts: engine.shared(),
        readiness_fail_on: Arc::new(vec![State::Unhealthy]),
        kubernetes: None,
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    state.kubernetes = Some(rt.block_on(kubernetes_with_pods(&[("a", "pod-a"), ("b", "pod-b")])));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    // The same router behind a token, for the documented 401s.
    let guarded = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    guarded.set_nonblocking(true).expect("nonblocking");
    let guarded_addr = guarded.local_addr().expect("addr");
    let guarded_router =
        api::server::with_auth(api::router(state.clone()), api::server::ApiToken::new("t"));
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let _ = axum::serve(listener, api::router(state)).await;
    });
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(guarded).expect("listener");
        let _ = axum::serve(listener, guarded_router).await;
    });
    let base = format!("http://{addr}");
    let guarded = format!("http://{guarded_addr}");

    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let served: BTreeSet<&str> = api::ROUTES.into_iter().collect();
    assert_eq!(documented, served, "documented paths vs routes served");

    let mut checked = 0;
    for (path, item) in paths {
        let ops = item.as_object().expect("path item");
        assert_eq!(
            ops.keys().collect::<Vec<_>>(),
            vec!["get"],
            "{path}: only GET is served"
        );
        let responses = item["get"]["responses"].as_object().expect("responses");
        assert_eq!(
            responses.contains_key("401"),
            api::server::protected(path),
            "{path}: a 401 is documented exactly where a token is required"
        );
        for (code, resp) in responses {
            let request = resp["x-test-request"]
                .as_str()
                .unwrap_or_else(|| panic!("{path} {code}: no x-test-request"));
            let server = if code == "401" { &guarded } else { &base };
            let (status, body) = status::get(server, request).expect("request");
            assert_eq!(status.to_string(), *code, "{request}: {body}");
            let content = resp["content"].as_object().expect("content");
            if let Some(json) = content.get("application/json") {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{request}: not JSON ({e}): {body}"));
                if let Err(e) = check(&doc, &json["schema"], &v, request) {
                    panic!("{e}\n{body}");
                }
            } else {
                assert!(content.contains_key("text/plain"), "{path} {code}");
                assert!(!body.is_empty(), "{request}");
            }
            checked += 1;
        }
    }
    assert!(checked >= documented.len(), "{checked} responses checked");

    // Anything else: a JSON 404.
    let (status, body) = status::get(&base, "/v1/nothing").expect("request");
    assert_eq!(status, 404);
    assert!(serde_json::from_str::<Value>(&body).is_ok_and(|v| v["error"].is_string()));

    // The shapes carry what the verdict says.
    let (_, body) = status::get(&base, "/v1/workload?kind=pod&name=pod-b").expect("request");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["state"], "unhealthy", "{body}");
    assert_eq!(v["probe_mismatch"], true, "{body}");
    let (_, body) = status::get(
        &base,
        "/v1/pods/0b9c1e54-3f5a-4c55-9a55-1f0c3a6e1d2b/health",
    )
    .expect("request");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["state"], "unknown", "a pod never seen is unknown: {body}");
    // The Service's view: its pod on this node with that pod's verdict, not the other node's.
    let (_, body) = status::get(&base, "/v1/services/shop/web").expect("request");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (
            &v["state"],
            &v["pods"][0]["name"],
            &v["pods"][0]["state"],
            v["pods"].as_array().map(Vec::len)
        ),
        (
            &Value::from("unhealthy"),
            &Value::from("b"),
            &Value::from("unhealthy"),
            Some(1)
        ),
        "{body}"
    );
    let table = status::table(&status::fetch(&base).expect("fetch"));
    assert!(
        table.contains("pod-b") && table.contains("unhealthy (probe mismatch)"),
        "{table}"
    );
    assert!(
        table.contains("pod-a") && table.contains("healthy"),
        "{table}"
    );
}

//! `--api-auth-kubernetes` against a real kube-apiserver (root only; tests/src/k8s.rs): the
//! collector's RBAC from deploy/rbac.yaml and deploy/api-auth-rbac.yaml as shipped, the
//! collector authenticating with its ServiceAccount's token, two client ServiceAccounts with
//! tokens from the TokenRequest API: `reader`, bound to deploy/api-auth-rbac.yaml's
//! `collector-api-reader` (nonResourceURLs /v1/*, get), and `stranger`, bound to nothing.
//! A static `--api-token-file` is configured too (either is accepted).
//!
//! Asserted with exact statuses, bodies and counters: who gets 401, 403 and 200, that `/metrics`
//! stays open, that a repeated request is answered from the cache (the review counters do not
//! move, the cache-hit counters move by one), and that with the API server stopped a token
//! already reviewed is still served from the cache while a new one gets 503, never a 200.
//! Run: `cargo test --release -p integration-tests --test kubernetes_api_auth -- --test-threads=1`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use collector::{api::server::ServerConfig, app, config::Config, kubernetes::KubernetesConfig};
use integration_tests::{k8s::ControlPlane, metric_sum, require_root, scrape, unique_prefix};
use serde_json::{Value, json};

const STATIC_TOKEN: &str = "static-token-of-the-test";

/// One request on its own connection: (status, body).
fn get(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("collector");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: collector\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let (head, body) = buf.split_once("\r\n\r\n").expect("a response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (code, body.to_owned())
}

fn json_body(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// (token reviews by result, access reviews by result, cache hits by review), from /metrics.
#[derive(Debug, PartialEq)]
struct Counts {
    authenticated: f64,
    unauthenticated: f64,
    token_errors: f64,
    allowed: f64,
    denied: f64,
    access_errors: f64,
    token_hits: f64,
    access_hits: f64,
}

fn counts(addr: SocketAddr) -> Counts {
    let m = scrape(addr);
    let review = |review: &str, result: &str| {
        metric_sum(
            &m,
            "collector_api_auth_reviews_total",
            &[("review", review), ("result", result)],
        )
        .unwrap_or(0.0)
    };
    let hits = |review: &str| {
        metric_sum(
            &m,
            "collector_api_auth_cache_hits_total",
            &[("review", review)],
        )
        .unwrap_or(0.0)
    };
    Counts {
        authenticated: review("token", "authenticated"),
        unauthenticated: review("token", "unauthenticated"),
        token_errors: review("token", "error"),
        allowed: review("access", "allowed"),
        denied: review("access", "denied"),
        access_errors: review("access", "error"),
        token_hits: hits("token"),
        access_hits: hits("access"),
    }
}

fn token(cp: &ControlPlane, namespace: &str, sa: &str) -> String {
    let t = cp
        .kubectl(&["create", "token", sa, "-n", namespace, "--duration", "1h"])
        .expect("kubectl create token");
    t.trim().to_owned()
}

/// Catches, in order of the assertions:
/// - no token → 401: `/v1/*` (pids, exe and cgroup paths) served to anyone when the Kubernetes
///   mode is on;
/// - a garbage token → 401 (not 403, not 503): a TokenReview's `authenticated: false` read as
///   a user, or its answer ignored;
/// - the static token → 200 with no review: `--api-token-file` lost when both are configured;
/// - `reader`'s token → 200 and the very body the static token gets: RBAC's allow not honoured,
///   or the wrong path / verb reviewed (the role grants only `get` on /v1/*);
/// - `stranger`'s token → 403 naming the user: authentication taken for authorization (no
///   SubjectAccessReview), or a denial answered 401;
/// - `reader`'s PUT /v1/debug/kernel-log → 403: a write authorized as a read;
/// - `/metrics` → 200 without a token: scrapers locked out;
/// - the same requests again → the review counters unchanged, each cache counter +1 per
///   request: no cache (a flood of requests as a flood of reviews), or refusals not cached
///   (the repeats follow within milliseconds; a refusal is cached for 10 s, an allow for 60 s);
/// - API server stopped: `reader`'s cached token → 200, a fresh token → 503 with an error
///   counted: a review failure read as an allow (or as a 401, telling a valid client its token
///   is bad).
#[test]
fn kubernetes_tokens_are_reviewed_and_rbac_decides() {
    require_root();
    let prefix = unique_prefix("apiauth");
    let node = format!("node-{prefix}");
    let mut cp = ControlPlane::start(&prefix).expect("control plane");
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/");
    for f in ["rbac.yaml", "api-auth-rbac.yaml"] {
        let text = std::fs::read_to_string(format!("{deploy}{f}")).expect(f);
        cp.apply(&text).unwrap_or_else(|e| panic!("apply {f}: {e}"));
    }
    let kc = cp
        .service_account_kubeconfig("collector", "collector")
        .expect("ServiceAccount token");
    cp.kubectl(&["create", "namespace", "monitoring"])
        .expect("namespace");
    for sa in ["reader", "stranger"] {
        cp.kubectl(&["create", "serviceaccount", sa, "-n", "monitoring"])
            .expect("ServiceAccount");
    }
    cp.kubectl(&[
        "create",
        "clusterrolebinding",
        "reader-collector-api",
        "--clusterrole=collector-api-reader",
        "--serviceaccount=monitoring:reader",
    ])
    .expect("binding");
    let reader = token(&cp, "monitoring", "reader");
    let stranger = token(&cp, "monitoring", "stranger");
    let fresh_reader = token(&cp, "monitoring", "reader");
    assert_ne!(reader, fresh_reader);

    let token_file = cp.dir().join("api-token");
    std::fs::write(&token_file, format!("{STATIC_TOKEN}\n")).expect("token file");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(500),
        kubernetes: Some(KubernetesConfig {
            node_name: node,
            kubeconfig: Some(kc),
            pod_labels: vec![],
        }),
        api: ServerConfig {
            token_file: Some(token_file),
            kubernetes_auth: true,
            ..ServerConfig::default()
        },
        ..Config::default()
    };
    let running = rt.block_on(app::start(config)).expect("collector starts");
    let addr = running.addr;
    let path = "/v1/probes";
    let unauthorized = json!({ "error": "a valid bearer token is required" });

    let (code, body) = get(addr, "GET", path, None);
    assert_eq!((code, json_body(&body)), (401, unauthorized.clone()));
    let (code, body) = get(addr, "GET", path, Some("not-a-token"));
    assert_eq!((code, json_body(&body)), (401, unauthorized.clone()));

    let (code, by_static) = get(addr, "GET", path, Some(STATIC_TOKEN));
    assert_eq!(code, 200, "{by_static}");
    let by_static = json_body(&by_static);
    assert!(by_static.is_array(), "{by_static}");
    let before = counts(addr);
    let (code, body) = get(addr, "GET", path, Some(&reader));
    assert_eq!((code, json_body(&body)), (200, by_static.clone()));
    let (code, body) = get(addr, "GET", path, Some(&stranger));
    assert_eq!(
        (code, json_body(&body)),
        (
            403,
            json!({ "error": "system:serviceaccount:monitoring:stranger may not get /v1/probes" })
        )
    );
    let (code, body) = get(addr, "PUT", "/v1/debug/kernel-log", Some(&reader));
    assert_eq!(
        (code, json_body(&body)),
        (
            403,
            json!({ "error": "system:serviceaccount:monitoring:reader may not update /v1/debug/kernel-log" })
        )
    );
    let (code, body) = get(addr, "GET", "/metrics", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("collector_api_auth_reviews_total"), "{body}");

    // Exactly one review per distinct token, one access review per (token, verb, path); the
    // static token reviewed by nobody.
    let reviewed = counts(addr);
    let want = Counts {
        authenticated: 2.0,
        unauthenticated: 1.0,
        token_errors: 0.0,
        allowed: 1.0,
        denied: 2.0,
        access_errors: 0.0,
        // reader's PUT found reader's token in the cache.
        token_hits: 1.0,
        access_hits: 0.0,
    };
    assert_eq!(reviewed, want);
    assert_eq!(
        before,
        Counts {
            authenticated: 0.0,
            unauthenticated: 1.0,
            token_errors: 0.0,
            allowed: 0.0,
            denied: 0.0,
            access_errors: 0.0,
            token_hits: 0.0,
            access_hits: 0.0,
        },
        "the static token was reviewed"
    );

    // The same again: answered from the cache, allows and refusals alike.
    let (code, body) = get(addr, "GET", path, Some(&reader));
    assert_eq!((code, json_body(&body)), (200, by_static.clone()));
    let (code, _) = get(addr, "GET", path, Some(&stranger));
    assert_eq!(code, 403);
    let (code, _) = get(addr, "GET", path, Some("not-a-token"));
    assert_eq!(code, 401);
    assert_eq!(
        counts(addr),
        Counts {
            token_hits: want.token_hits + 3.0,
            access_hits: want.access_hits + 2.0,
            ..want
        }
    );

    // No API server: what is cached still answers; what is not is 503, never 200.
    cp.stop_apiserver();
    let (code, body) = get(addr, "GET", path, Some(&reader));
    assert_eq!((code, json_body(&body)), (200, by_static));
    let (code, body) = get(addr, "GET", path, Some(&fresh_reader));
    assert_eq!(
        (code, json_body(&body)),
        (
            503,
            json!({ "error": "the Kubernetes API server could not review the token; try again" })
        )
    );
    let after = counts(addr);
    assert_eq!(
        (after.token_errors, after.authenticated, after.access_errors),
        (1.0, 2.0, 0.0)
    );

    rt.block_on(running.shutdown());
}

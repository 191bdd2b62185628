//! Every PromQL expression of the Grafana dashboard (deploy/helm/collector/files/dashboard.json)
//! run by the real Prometheus (Debian's) against a real collector's metrics returns data: a Go
//! server answering 200 and 503 under load, the collector watching it, Prometheus scraping the
//! collector every second with the chart's rules file loaded (which it must accept).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    HostCgroup, Killed, Load, free_port, newest_go_server, require_root, start_socket_collector,
    unique_prefix,
};
use serde_json::Value;

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result of an instant query; empty when Prometheus is not up yet or the query failed.
fn query(prom: SocketAddr, expr: &str) -> (Vec<Value>, String) {
    let Ok(mut s) = TcpStream::connect(prom) else {
        return (Vec::new(), "prometheus not up".into());
    };
    let _ = write!(
        s,
        "GET /api/v1/query?query={} HTTP/1.0\r\n\r\n",
        percent_encode(expr)
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    (
        v["data"]["result"].as_array().cloned().unwrap_or_default(),
        body.to_string(),
    )
}

/// The dashboard's expressions with its variables set as "All" (and a 1 m rate window).
fn dashboard_exprs() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/helm/collector/files/dashboard.json"
    );
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard"))
        .expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in d["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$service", ".*")
                .replace("$namespace", ".*")
                .replace("$__rate_interval", "1m");
            out.push((panel["title"].as_str().expect("title").to_string(), expr));
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_returns_data_from_a_real_collector() {
    require_root();
    let exprs = dashboard_exprs();
    let running = start_socket_collector(collector::config::Config::default()).await;
    let prefix = unique_prefix("dash");
    let web = HostCgroup::create(&prefix, "web").expect("cgroup");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let _server = Killed(
        web.spawn(&newest_go_server(), &["-listen", &addr.to_string()])
            .expect("go server"),
    );
    let up = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < up,
            "the Go server does not listen on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ok = Load::start(addr, "/ok", 2, Duration::from_millis(20));
    let _err = Load::start(addr, "/err", 1, Duration::from_millis(50));

    let dir = std::env::temp_dir().join(format!("{prefix}-prom"));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/helm/collector/files/rules.yaml"
    );
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  - job_name: collector\n    static_configs:\n      - targets: ['{}']\n",
            running.addr
        ),
    )
    .expect("config");
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/bootstrap.sh installs it)"),
    );

    // Each expression must return data within the deadline (rates need two scrapes).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending = exprs;
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|(_, expr)| query(prom, expr).0.is_empty());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report: Vec<String> = pending
        .iter()
        .map(|(title, expr)| format!("{title}: {expr}\n  -> {}", query(prom, expr).1))
        .collect();
    assert!(
        report.is_empty(),
        "dashboard queries without data:\n{}",
        report.join("\n")
    );
    // Prometheus loaded the chart's rules (a rules file it refused would leave no groups).
    let (groups, body) = query(prom, "count(ALERTS) or vector(0)");
    assert!(!groups.is_empty(), "{body}");
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

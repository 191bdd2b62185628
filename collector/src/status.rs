//! `collector status`: asks a running collector for its verdicts and prints a table.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET {api}/v1/workloads`, parsed.
pub fn fetch(api: &str) -> anyhow::Result<Value> {
    let (status, body) = get(api, "/v1/workloads")?;
    if status != 200 {
        bail!("{api}/v1/workloads answered {status}: {body}");
    }
    serde_json::from_str(&body).context("parsing the API's JSON")
}

/// `GET {api}{path}` over plain HTTP/1.1 (the API is local and unencrypted): status and body.
pub fn get(api: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let rest = api
        .strip_prefix("http://")
        .with_context(|| format!("{api:?}: only http:// URLs are supported"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("{api:?}: expected http://HOST:PORT");
    }
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("bad chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).context("short chunk")?);
        s = rest.get(n + 2..).context("short chunk")?;
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get("signals")?.get(key)?.as_f64()
}

/// The STATE column: the verdict, said of what it rests on. A workload without HTTP requests
/// in the window is judged on TCP alone ("healthy (tcp)") or on nothing ("idle"), never shown
/// as a bare "healthy" at 0 req/s.
fn state_cell(w: &Value) -> String {
    let state = w.get("state").and_then(Value::as_str).unwrap_or("");
    let count = |k: &str| num(w, k).unwrap_or(0.0);
    let mut cell = if count("requests") + count("probe_requests") > 0.0 {
        state.to_string()
    } else if count("send_calls") > 0.0 && state != "unknown" {
        format!("{state} (tcp)")
    } else if state == "unknown" || state == "healthy" {
        "idle".to_string()
    } else {
        state.to_string()
    };
    if w.get("probe_mismatch").and_then(Value::as_bool) == Some(true) {
        cell.push_str(" (probe mismatch)");
    }
    cell
}

/// The REASONS column: deciding reasons, then those of rules only watching, marked so.
fn reasons_cell(w: &Value) -> String {
    let list = w
        .get("reasons")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (watching, deciding): (Vec<&Value>, Vec<&Value>) = list
        .iter()
        .partition(|r| r.get("watching").and_then(Value::as_bool) == Some(true));
    let message = |r: &Value| {
        r.get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    deciding
        .into_iter()
        .map(message)
        .chain(
            watching
                .into_iter()
                .map(|r| format!("watching: {}", message(r))),
        )
        .collect::<Vec<_>>()
        .join("; ")
}

/// The WORKLOAD column: `namespace/pod` and its workload (`shop/web-7d4-x (deployment/web)`)
/// for a pod the Kubernetes API named, else the name the collector has (a pod UID, a unit, a
/// process).
fn workload_cell(w: &Value) -> String {
    let name = w.get("name").and_then(Value::as_str).unwrap_or("");
    let k = |key: &str| {
        w.get("kubernetes")
            .and_then(|k| k.get(key))
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    match (k("namespace"), k("pod")) {
        (Some(ns), Some(pod)) => match k("workload") {
            Some(workload) => format!("{ns}/{pod} ({workload})"),
            None => format!("{ns}/{pod}"),
        },
        _ => name.to_string(),
    }
}

/// The table: workload, kind, state, reasons, req/s, error %, p95, retransmit %.
pub fn table(doc: &Value) -> String {
    let header = [
        "WORKLOAD",
        "KIND",
        "STATE",
        "REQ/S",
        "ERROR %",
        "P95",
        "RETRANS %",
        "REASONS",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(String::from)];
    let empty = Vec::new();
    let list = doc
        .get("workloads")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for w in list {
        let s = |k: &str| w.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let pct = |k: &str| num(w, k).map_or("-".into(), |v| format!("{:.1}", v * 100.0));
        let http = num(w, "requests").unwrap_or(0.0) > 0.0;
        rows.push([
            workload_cell(w),
            s("kind"),
            state_cell(w),
            num(w, "requests_per_second")
                .filter(|_| http)
                .map_or("-".into(), |v| format!("{v:.1}")),
            pct("error_ratio"),
            num(w, "p95_ms").map_or("-".into(), |v| format!("{v:.0} ms")),
            pct("retransmit_ratio"),
            reasons_cell(w),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                line.push_str(c);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if list.is_empty() {
        out.push_str("(no workloads evaluated yet)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_reads_at_a_glance() {
        let doc = serde_json::json!({ "workloads": [
            { "name": "b", "kind": "pod", "state": "unhealthy", "probe_mismatch": true,
              "reasons": [
                { "code": "retransmit_ratio", "watching": true, "message": "retransmit ratio 3.0 % (99.999 % CI 1.2–7.1 %) over 30 s, 600 sends: not conclusively ≥ 2.0 %" },
                { "code": "error_ratio", "watching": false, "message": "error ratio 100 % (99 % CI 88–100 %) over 3 s, 60 requests: ≥ 15 %" }],
              "signals": { "requests": 375, "requests_per_second": 12.5, "error_ratio": 1.0, "p95_ms": 4.2, "retransmit_ratio": 0.03, "send_calls": 600 } },
            { "name": "a", "kind": "pod", "state": "healthy", "reasons": [],
              "signals": { "requests": 90, "requests_per_second": 3.0, "error_ratio": 0.0, "p95_ms": null, "retransmit_ratio": 0.01, "send_calls": 90 } },
            { "name": "db", "kind": "systemd", "state": "healthy", "reasons": [],
              "signals": { "requests": 0, "requests_per_second": 0.0, "error_ratio": null, "p95_ms": null, "retransmit_ratio": 0.001, "send_calls": 3000 } },
            { "name": "cron", "kind": "systemd", "state": "unknown",
              "reasons": [{ "code": "no_traffic", "watching": false, "message": "no traffic over 30 s" }],
              "signals": { "requests": 0, "requests_per_second": 0.0, "error_ratio": null, "p95_ms": null, "retransmit_ratio": null, "send_calls": 0 } },
            { "name": "web", "kind": "pod", "state": "degraded",
              "reasons": [{ "code": "recovering", "watching": false, "message": "recovering to healthy, 2 more evaluations" }],
              "signals": { "requests": 600, "requests_per_second": 20.0, "error_ratio": 0.0, "p95_ms": 12.0, "retransmit_ratio": null, "send_calls": 100 } },
        ]});
        let t = table(&doc);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            vec![
                "WORKLOAD  KIND     STATE                       REQ/S  ERROR %  P95    RETRANS %  REASONS",
                "b         pod      unhealthy (probe mismatch)  12.5   100.0    4 ms   3.0        error ratio 100 % (99 % CI 88–100 %) over 3 s, 60 requests: ≥ 15 %; \
                 watching: retransmit ratio 3.0 % (99.999 % CI 1.2–7.1 %) over 30 s, 600 sends: not conclusively ≥ 2.0 %",
                "a         pod      healthy                     3.0    0.0      -      1.0",
                "db        systemd  healthy (tcp)               -      -        -      0.1",
                "cron      systemd  idle                        -      -        -      -          no traffic over 30 s",
                "web       pod      degraded                    20.0   0.0      12 ms  -          recovering to healthy, 2 more evaluations",
            ]
        );
        assert!(table(&serde_json::json!({"workloads": []})).contains("no workloads"));
    }

    /// Catches: pods shown by UID (or by their Deployment alone, which two pods on the node
    /// share) although the Kubernetes API named them.
    #[test]
    fn named_pods_show_namespace_pod_and_workload() {
        let doc = serde_json::json!({ "workloads": [
            { "name": "deployment/web", "kind": "pod", "state": "healthy", "reasons": [],
              "pod_uid": "0a1b", "kubernetes": { "namespace": "shop", "pod": "web-7d4-x", "container": "web", "workload": "deployment/web", "service": "web" },
              "signals": { "requests": 0, "send_calls": 0 } },
            { "name": "0c2d", "kind": "pod", "state": "healthy", "reasons": [], "pod_uid": "0c2d",
              "signals": { "requests": 0, "send_calls": 0 } },
        ]});
        let t = table(&doc);
        let first: Vec<&str> = t
            .lines()
            .map(|l| l.split("  ").next().unwrap_or(""))
            .collect();
        assert_eq!(
            first,
            vec!["WORKLOAD", "shop/web-7d4-x (deployment/web)", "0c2d"]
        );
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").ok().as_deref(),
            Some("abcde")
        );
        assert!(dechunk("zz\r\n").is_err());
        assert!(fetch("https://x").is_err());
        assert!(fetch("http://a/b").is_err());
    }
}

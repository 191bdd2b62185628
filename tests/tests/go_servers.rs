//! `/v1/go-http` lists every Go executable a running process uses, instrumented or not, with a
//! reason code when not; and Debian 12's own Prometheus (Go 1.19.8, no DWARF: a real field
//! binary) is instrumented from the offsets table and counted exactly.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use collector::app;
use integration_tests::*;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);
/// Debian's package (scripts/bootstrap.sh installs it).
const PROMETHEUS: &str = "/usr/bin/prometheus";

async fn start_collector() -> app::Running {
    app::start(uprobe_config()).await.expect("collector starts")
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// `get`, or the error of connecting (a server still starting).
fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The `/v1/go-http` entry listing `pid`, once there is one.
fn entry_of(collector: SocketAddr, pid: u32) -> Value {
    wait_until_ok_blocking(DEADLINE, POLL, &format!("pid {pid} listed"), || {
        let (_, body) = get(collector, "/v1/go-http");
        let list: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        list.as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["pids"]
                    .as_array()
                    .is_some_and(|p| p.contains(&Value::from(pid)))
            })
            .cloned()
            .ok_or_else(|| format!("not in {body}"))
    })
}

/// The fields that describe the decision (pids and the instrumented entry's extra fields
/// aside).
fn decision(e: &Value) -> BTreeMap<&'static str, Value> {
    ["path", "go_version", "instrumented", "reason"]
        .into_iter()
        .map(|k| (k, e.get(k).cloned().unwrap_or(Value::Null)))
        .collect()
}

fn expect(
    path: &Path,
    go: &str,
    instrumented: bool,
    reason: Option<&str>,
) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("path", Value::from(path.display().to_string())),
        ("go_version", Value::from(go)),
        ("instrumented", Value::from(instrumented)),
        ("reason", reason.map_or(Value::Null, Value::from)),
    ])
}

fn newest(variant: &str) -> (String, PathBuf) {
    go_fixtures()
        .into_iter()
        .filter(|(_, v, _)| v == variant)
        .max_by_key(|(version, ..)| {
            version
                .split('.')
                .map(|n| n.parse::<u32>().expect("version"))
                .collect::<Vec<_>>()
        })
        .map(|(version, _, path)| (version, path))
        .expect("a fixture")
}

/// The stripped server with its `.gopclntab` section header renamed: the program runs as
/// before (the runtime finds its tables through moduledata, not section names), but the
/// analyser has neither `.gopclntab` nor a `.symtab` naming `runtime.pclntab`.
fn without_pclntab(stripped: &Path, dir: &Path) -> PathBuf {
    let out = dir.join("server-no-pclntab");
    let st = Command::new("objcopy")
        .arg("--rename-section")
        .arg(".gopclntab=.gopclntaX")
        .arg(stripped)
        .arg(&out)
        .status()
        .expect("objcopy");
    assert!(st.success(), "objcopy");
    out
}

/// tests/go/loadgen (stdlib, no net/http at all) built with the newest Go.
fn loadgen(go_version: &str, dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let out = dir.join("loadgen");
    let st = Command::new(target.join("go").join(go_version).join("bin/go"))
        .args(["build", "-trimpath", "-buildvcs=false", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(repo.join("tests/go/loadgen"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .env(
            "GOCACHE",
            std::env::var_os("COLLECTOR_GOCACHE")
                .unwrap_or_else(|| "/var/cache/collector-go/build".into()),
        )
        .env("GOPATH", target.join("go-path"))
        .env("GOENV", "off")
        .status()
        .expect("go build loadgen");
    assert!(st.success(), "go build loadgen");
    out
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_go_servers_are_listed_with_their_reason() {
    require_root();
    let dir = std::env::temp_dir().join(unique_prefix("gsrv"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (version, default) = newest("default");
    let (_, stripped) = newest("stripped");
    let no_pclntab = without_pclntab(&stripped, &dir);
    let loadgen = loadgen(&version, &dir);
    let go = format!("go{version}");

    let running = start_collector().await;
    let prefix = unique_prefix("gsrv");
    let cgroup = HostCgroup::create(&prefix, "servers").expect("cgroup");
    let instrumented =
        cgroup.spawn_announced(&default, &["-listen", "127.0.0.1:0"], "listening on ");
    let refused = cgroup.spawn_announced(&no_pclntab, &["-listen", "127.0.0.1:0"], "listening on ");
    // A client of a listener that never answers: it runs until killed.
    let sink = TcpListener::bind("127.0.0.1:0").expect("sink");
    let client = Killed(
        cgroup
            .spawn(
                &loadgen,
                &[
                    "-addr",
                    &sink.local_addr().expect("addr").to_string(),
                    "-conns",
                    "1",
                    "-duration",
                    "10m",
                ],
            )
            .expect("loadgen"),
    );

    // The refused server really serves: it is a Go server the collector cannot instrument.
    assert_eq!(get(refused.addr, "/ok").0, 200, "the renamed binary runs");
    let e = entry_of(running.addr, refused.child.id());
    assert_eq!(
        decision(&e),
        expect(&no_pclntab, &go, false, Some("no_pclntab")),
        "{e}"
    );
    assert!(
        e["detail"]
            .as_str()
            .is_some_and(|d| d.contains(".gopclntab")),
        "{e}"
    );
    let e = entry_of(running.addr, client.0.id());
    assert_eq!(
        decision(&e),
        expect(&loadgen, &go, false, Some("no_net_http_server")),
        "{e}"
    );
    let e = entry_of(running.addr, instrumented.child.id());
    assert_eq!(decision(&e), expect(&default, &go, true, None), "{e}");
    assert!(e.get("detail").is_none(), "{e}");

    // The decision counted once, by the same code. (Not no_net_http_server: every Go program
    // anyone runs on this shared host meanwhile — go build's compiler and linker — is one.)
    let text = scrape(running.addr);
    assert_eq!(
        metric_sum(
            &text,
            "collector_go_binaries_skipped_total",
            &[("reason", "no_pclntab")]
        ),
        Some(1.0),
        "{text}"
    );
    drop(client);
    drop(refused);
    drop(instrumented);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian 12's Prometheus: Go 1.19.8, no DWARF (`-ldflags=-w`): its struct offsets come from
/// the table row generated with Debian's own Go 1.19.8. Exact counts by outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debians_prometheus_is_instrumented_and_counted_exactly() {
    require_root();
    let bin = Path::new(PROMETHEUS);
    assert!(
        bin.is_file(),
        "{PROMETHEUS} missing: scripts/bootstrap.sh installs Debian's prometheus"
    );
    let dir = std::env::temp_dir().join(unique_prefix("gprom"));
    std::fs::create_dir_all(dir.join("data")).expect("dir");
    std::fs::write(dir.join("prometheus.yml"), "global: {}\n").expect("config");

    let running = start_collector().await;
    let prefix = unique_prefix("gprom");
    let cgroup = HostCgroup::create(&prefix, "prometheus").expect("cgroup");
    let workload = cgroup.workload();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let args = [
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={addr}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Killed(
        cgroup
            .spawn_with(bin, &args, |c| {
                c.stdout(Stdio::null()).stderr(Stdio::null());
            })
            .expect("prometheus"),
    );
    let pid = server.0.id();
    let e = wait_until_ok_blocking(DEADLINE, POLL, "prometheus instrumented", || {
        let e = entry_of(running.addr, pid);
        if e["instrumented"] == true {
            Ok(e)
        } else {
            Err(format!("{e}"))
        }
    });
    assert_eq!(decision(&e), expect(bin, "go1.19.8", true, None), "{e}");
    // Ready (its own probe answers 200 once the TSDB is open); the requests before that are
    // not part of the exact counts below, which are read as differences.
    wait_until_ok_blocking(DEADLINE, POLL, "prometheus ready", || {
        match try_get(addr, "/-/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let labels = |o: &'static str| {
        [
            ("workload_kind", "cgroup"),
            ("workload", workload.as_str()),
            ("outcome", o),
        ]
    };
    let count = |text: &str, o: &'static str| {
        metric_sum(text, "collector_http_requests_total", &labels(o)).unwrap_or(0.0) as u64
    };
    // Settled: nothing more arrives for the readiness polls.
    let before = wait_until_ok_blocking(DEADLINE, POLL, "counts settle", || {
        let a = scrape(running.addr);
        std::thread::sleep(Duration::from_millis(600));
        let b = scrape(running.addr);
        let pick = |t: &str| (count(t, "2xx"), count(t, "4xx"), count(t, "5xx"));
        if pick(&a) == pick(&b) && pick(&a).0 > 0 {
            Ok(pick(&b))
        } else {
            Err(format!("{:?} then {:?}", pick(&a), pick(&b)))
        }
    });
    const OK: u64 = 7;
    const BAD: u64 = 3;
    for _ in 0..OK {
        assert_eq!(get(addr, "/api/v1/status/buildinfo").0, 200);
    }
    for _ in 0..BAD {
        // No query: 400 Bad Request.
        assert_eq!(get(addr, "/api/v1/query").0, 400);
    }
    let want = (before.0 + OK, before.1 + BAD, before.2);
    wait_until_ok_blocking(DEADLINE, POLL, "prometheus requests counted", || {
        let t = scrape(running.addr);
        let got = (count(&t, "2xx"), count(&t, "4xx"), count(&t, "5xx"));
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?} want {want:?}"))
        }
    });
    drop(server);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

//! HTTP/1.x parsed from server sockets (`cgroup_skb`, no uprobe): exact counts against the
//! client's own, for the framing cases that break naive parsers — keep-alive, pipelining,
//! chunked bodies, `100 Continue`, HEAD, request bodies, connections that predate the
//! collector — on a Go server and on Python's http.server (not Go: no uprobe could see it).

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Mutex,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use collector::config::Config;
use collector_common::{
    http::wire::{WINDOW, WireScratch},
    maps::WIRE_SLOTS,
};
use integration_tests::*;

const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

fn start_go_server(cgroup: &HostCgroup) -> (Killed, SocketAddr) {
    start_go_server_on(cgroup, "127.0.0.1:0")
}

fn start_go_server_on(cgroup: &HostCgroup, listen: &str) -> (Killed, SocketAddr) {
    let (_, _, bin) = go_fixtures()
        .into_iter()
        .rfind(|(_, variant, _)| variant == "default")
        .expect("a Go fixture");
    let mut child = cgroup
        .spawn(&bin, &["-listen", listen])
        .expect("spawn Go server");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("listening line");
    // Drain the rest so the server never blocks (or dies) on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening on")
        .parse()
        .expect("addr");
    (Killed(child), addr)
}

/// Waits until the workload's exact counts by outcome are `want` (and stay so for a few
/// harvests: a double count would show up after the first match).
fn expect_counts(
    collector: SocketAddr,
    w: &[(&str, &str)],
    want: &[(&str, u64)],
    what: &str,
) -> String {
    let read = |text: &str| -> Vec<(String, u64)> {
        ["1xx", "2xx", "3xx", "4xx", "5xx", "aborted"]
            .iter()
            .map(|o| {
                let mut l = w.to_vec();
                l.push(("outcome", o));
                let v = metric_sum(text, "collector_http_requests_total", &l).unwrap_or(0.0);
                (o.to_string(), v as u64)
            })
            .filter(|(_, v)| *v > 0)
            .collect()
    };
    let want: Vec<(String, u64)> = want.iter().map(|(o, v)| (o.to_string(), *v)).collect();
    wait_until_ok_blocking(DEADLINE, POLL, what, || {
        let text = scrape(collector);
        let got = read(&text);
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?} != {want:?}"))
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let text = scrape(collector);
    assert_eq!(read(&text), want, "{what}: counts changed after settling");
    text
}

/// The labels of a plain cgroup's workload.
fn cg(workload: &str) -> [(&str, &str); 2] {
    [("workload_kind", "cgroup"), ("workload", workload)]
}

fn records(text: &str, w: &[(&str, &str)], method: &str, route: &str, status: &str) -> u64 {
    let mut labels = w.to_vec();
    labels.extend([
        ("method", method),
        ("route", route),
        ("status_code", status),
    ]);
    metric_sum(text, "http_server_request_duration_seconds_count", &labels).unwrap_or(0.0) as u64
}

/// Also run on Debian's 6.1 by `./x vm-test` (the `guest_` prefix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_go_server_framing_cases_count_exactly() {
    require_root();
    let prefix = unique_prefix("hw");
    let cgroup = HostCgroup::create(&prefix, "go").expect("cgroup");
    let workload = cgroup.workload();
    let w = cg(&workload);
    let (_server, addr) = start_go_server(&cgroup);

    // A keep-alive connection that predates the collector: its first requests are never
    // seen; the ones after the start are, from the first request line on.
    let mut early = Http1Client::connect(addr);
    for _ in 0..3 {
        assert_eq!(early.get("/ok").status, 200);
    }

    let running = start_socket_collector(Config::default()).await;
    let c = running.addr;

    // 1. The predating connection, now seen: 10 requests.
    for _ in 0..10 {
        assert_eq!(early.get("/ok").status, 200);
    }
    let text = expect_counts(c, &w, &[("2xx", 10)], "predating keep-alive");
    assert_eq!(records(&text, &w, "GET", "/ok", "200"), 10);

    // 2. Keep-alive: 50 × 200, 10 × 503, 5 HEAD (headers say a length, no body follows).
    let mut ka = Http1Client::connect(addr);
    for _ in 0..50 {
        assert_eq!(ka.get("/ok?x=1").status, 200);
    }
    for _ in 0..10 {
        assert_eq!(ka.get("/err").status, 503);
    }
    for _ in 0..5 {
        ka.send("HEAD /ok HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(ka.read(true).status, 200);
    }
    // The HEAD responses must not have swallowed the next response.
    assert_eq!(ka.get("/items/7").status, 200);
    let text = expect_counts(c, &w, &[("2xx", 66), ("5xx", 10)], "keep-alive");
    assert_eq!(records(&text, &w, "GET", "/ok", "200"), 60);
    assert_eq!(records(&text, &w, "HEAD", "/ok", "200"), 5);
    assert_eq!(records(&text, &w, "GET", "/err", "503"), 10);
    assert_eq!(records(&text, &w, "GET", "/items/{id}", "200"), 1);

    // 3. Pipelining: eight requests in one write, answered in order.
    let mut p = Http1Client::connect(addr);
    let mut batch = String::new();
    for path in ["/ok", "/err", "/ok", "/ok", "/err", "/ok", "/ok", "/ok"] {
        batch.push_str(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    p.send(&batch);
    let statuses: Vec<u16> = (0..8).map(|_| p.read(false).status).collect();
    assert_eq!(statuses, [200, 503, 200, 200, 503, 200, 200, 200]);
    let text = expect_counts(c, &w, &[("2xx", 72), ("5xx", 12)], "pipelined");
    // The first of the batch keeps its target in the connection, the seven queued behind it
    // in `WIRE_TARGETS`: both kinds give their record.
    assert_eq!(records(&text, &w, "GET", "/err", "503"), 12);
    assert_eq!(records(&text, &w, "GET", "/ok", "200"), 66);

    // 4. Chunked responses (20 chunks of 1000 bytes, one of them empty), then a plain one on
    // the same connection: the chunk framing must end exactly where the next response starts.
    for n in [20, 0, 3] {
        let r = ka.get(&format!("/chunked?n={n}"));
        assert_eq!((r.status, r.body.len()), (200, n * 1000));
        assert_eq!(ka.get("/ok").status, 200);
    }
    let text = expect_counts(c, &w, &[("2xx", 78), ("5xx", 12)], "chunked");
    assert_eq!(records(&text, &w, "GET", "/chunked", "200"), 3);

    // 5. Request bodies: by length, chunked, and with `Expect: 100-continue` (the interim
    // 100 response answers nothing; the final one does).
    ka.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(ka.read(false).body, b"11\n");
    ka.send(
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    assert_eq!(ka.read(false).body, b"11\n");
    ka.send(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(ka.read(false).status, 100);
    ka.send(&"x".repeat(2000));
    assert_eq!(ka.read(false).body, b"2000\n");
    let text = expect_counts(c, &w, &[("2xx", 81), ("5xx", 12)], "request bodies");
    assert_eq!(records(&text, &w, "POST", "/echo", "200"), 3);

    // 6. A status line split across segments is the server's business here; a request head
    // split across segments is the client's: sent in three writes with pauses.
    ka.send("GET /ok HT");
    std::thread::sleep(Duration::from_millis(50));
    ka.send("TP/1.1\r\nHost:");
    std::thread::sleep(Duration::from_millis(50));
    ka.send(" t\r\n\r\n");
    assert_eq!(ka.read(false).status, 200);
    let text = expect_counts(c, &w, &[("2xx", 82), ("5xx", 12)], "split request head");
    assert_eq!(records(&text, &w, "GET", "/ok", "200"), 70);

    // Nothing was lost on the way.
    let lost = metric_sum(
        &text,
        "collector_http_requests_lost_total",
        &[("workload", workload.as_str())],
    );
    assert_eq!(lost, None, "no loss charged");
    drop((early, ka, p));
    running.shutdown().await;
}

/// The same server over IPv6 loopback. The parser finds the TCP header after the IPv6 header
/// (40 bytes, read in place like IPv4's): an IPv6 segment read with IPv4's layout finds no
/// request line, and nothing would be counted. Keep-alive, a chunked response and fresh
/// connections, against the client's own counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_server_over_ipv6_counts_exactly() {
    require_root();
    let prefix = unique_prefix("h6");
    let cgroup = HostCgroup::create(&prefix, "v6").expect("cgroup");
    let workload = cgroup.workload();
    let w = cg(&workload);
    let running = start_socket_collector(Config::default()).await;
    let (_server, addr) = start_go_server_on(&cgroup, "[::1]:0");
    assert!(addr.is_ipv6(), "{addr}");

    let (mut ok, mut unavailable) = (0, 0);
    let mut cl = Http1Client::connect(addr);
    for i in 0..40 {
        let path = if i % 4 == 0 { "/err" } else { "/ok" };
        match cl.get(path).status {
            200 => ok += 1,
            503 => unavailable += 1,
            s => panic!("{path}: status {s}"),
        }
    }
    let r = cl.get("/chunked?n=20");
    assert!(
        r.chunked && r.body.len() == 20_000,
        "{} bytes",
        r.body.len()
    );
    for _ in 0..5 {
        assert_eq!(Http1Client::connect(addr).get("/ok").status, 200);
    }
    let text = expect_counts(
        running.addr,
        &w,
        &[("2xx", ok + 1 + 5), ("5xx", unavailable)],
        "Go server over IPv6",
    );
    assert_eq!(records(&text, &w, "GET", "/ok", "200"), ok + 5);
    assert_eq!(records(&text, &w, "GET", "/err", "503"), unavailable);
    assert_eq!(records(&text, &w, "GET", "/chunked", "200"), 1);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_http_server_counts_exactly() {
    require_root();
    let prefix = unique_prefix("hp");
    let cgroup = HostCgroup::create(&prefix, "py").expect("cgroup");
    let workload = cgroup.workload();
    let w = cg(&workload);
    let dir = std::env::temp_dir().join(format!("{prefix}-www"));
    std::fs::create_dir_all(&dir).expect("www");
    std::fs::write(dir.join("file.txt"), "x".repeat(5000)).expect("file");

    let running = start_socket_collector(Config::default()).await;
    let mut child = cgroup
        .spawn(
            Path::new("/usr/bin/python3"),
            &[
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
                dir.to_str().expect("utf-8"),
                "0",
            ],
        )
        .expect("python");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("serving line");
    std::thread::spawn(move || for _ in out.lines() {});
    let _server = Killed(child);
    // "Serving HTTP on 127.0.0.1 port 34567 (http://127.0.0.1:34567/) ..."
    let port: u16 = line
        .split("port ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("python said {line:?}"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    // http.server speaks HTTP/1.0: one request per connection, the server closes.
    let (mut ok, mut missing) = (0, 0);
    for i in 0..30 {
        let mut cl = Http1Client::connect(addr);
        let path = if i % 3 == 0 { "/missing" } else { "/file.txt" };
        let r = cl.get(path);
        match r.status {
            200 => {
                assert_eq!(r.body.len(), 5000);
                ok += 1;
            }
            404 => missing += 1,
            s => panic!("status {s}"),
        }
    }
    let text = expect_counts(
        running.addr,
        &w,
        &[("2xx", ok), ("4xx", missing)],
        "python http.server",
    );
    assert_eq!(records(&text, &w, "GET", "/file.txt", "200"), ok);
    let _ = std::fs::remove_dir_all(&dir);
    running.shutdown().await;
}

/// A free port on loopback for a server that cannot be told to pick one and say which.
fn wait_listening(addr: SocketAddr, what: &str) {
    wait_until_ok_blocking(DEADLINE, Duration::from_millis(50), what, || {
        TcpStream::connect(addr).map(drop)
    });
}

/// Debian's nginx: not Go, not Python — keep-alive, bodies by sendfile, gzip-compressed
/// responses in chunked coding, HEAD, `return` statuses, HTTP/1.0 clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_counts_exactly() {
    require_root();
    let nginx = Path::new("/usr/sbin/nginx");
    assert!(
        nginx.exists(),
        "Debian's nginx is missing: scripts/bootstrap.sh installs it"
    );
    let prefix = unique_prefix("hn");
    let cgroup = HostCgroup::create(&prefix, "nginx").expect("cgroup");
    let workload = cgroup.workload();
    let w = cg(&workload);
    let dir = std::env::temp_dir().join(format!("{prefix}-nginx"));
    std::fs::create_dir_all(dir.join("www")).expect("www");
    std::fs::write(dir.join("www/file.txt"), "nginx ".repeat(20_000)).expect("file");
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 sendfile on;\n  gzip on;\n  gzip_types text/plain;\n  gzip_min_length 1;\n\
         \x20 server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
         \x20   location = /ok {{ return 200 \"ok\\n\"; }}\n    location = /err {{ return 503; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("conf");

    let running = start_socket_collector(Config::default()).await;
    let conf_path = dir.join("nginx.conf");
    let child = cgroup
        .spawn(
            nginx,
            &[
                "-p",
                &d.to_string(),
                "-c",
                conf_path.to_str().expect("utf-8"),
            ],
        )
        .expect("nginx");
    let _server = Killed(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(addr, "nginx listening");

    let mut ka = Http1Client::connect(addr);
    for _ in 0..20 {
        let r = ka.get("/file.txt");
        assert_eq!((r.status, r.body.len(), r.chunked), (200, 120_000, false));
    }
    for (path, status) in [("/err", 503), ("/missing", 404), ("/ok", 200)] {
        for _ in 0..5 {
            assert_eq!(ka.get(path).status, status);
        }
    }
    for _ in 0..3 {
        ka.send("HEAD /file.txt HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(ka.read(true).status, 200);
        ka.send("GET /file.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
        let r = ka.read(false);
        assert_eq!((r.status, r.chunked), (200, true), "gzip comes chunked");
    }
    // HTTP/1.0: nginx closes after each response.
    for _ in 0..5 {
        let mut once = Http1Client::connect(addr);
        once.send("GET /ok HTTP/1.0\r\n\r\n");
        assert_eq!(once.read(false).status, 200);
    }
    let text = expect_counts(
        running.addr,
        &w,
        &[("2xx", 36), ("4xx", 5), ("5xx", 5)],
        "nginx",
    );
    assert_eq!(records(&text, &w, "GET", "/file.txt", "200"), 23);
    assert_eq!(records(&text, &w, "HEAD", "/file.txt", "200"), 3);
    assert_eq!(records(&text, &w, "GET", "/ok", "200"), 10);
    let lost = metric_sum(&text, "collector_http_requests_lost_total", &w);
    assert_eq!(lost, None, "no loss charged");
    drop(ka);
    let _ = std::fs::remove_dir_all(&dir);
    running.shutdown().await;
}

/// A server written for the cases no library server produces on demand: `split` writes its
/// status line and head in seven segments; any other mode answers lines that are not HTTP
/// (inline commands of a Redis-like line protocol) with a line of its own, and HTTP/1.1
/// requests with a plain 200.
const LINE_SERVER: &str = r#"
import socket, sys, time
mode = sys.argv[1]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line:
            break
        if line.rstrip().endswith(b"HTTP/1.1"):
            while f.readline() not in (b"\r\n", b"\n", b""):
                pass
            if mode == "split":
                for piece in [b"HTT", b"P/1.1 2", b"01 Crea", b"ted\r\nContent-Len", b"gth: 2\r\n", b"\r", b"\nok"]:
                    c.sendall(piece)
                    time.sleep(0.03)
            else:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            c.sendall(b"$3\r\nbar\r\n")
    c.close()
"#;

fn start_line_server(cgroup: &HostCgroup, mode: &str) -> (Killed, SocketAddr) {
    let mut child = cgroup
        .spawn(
            Path::new("/usr/bin/python3"),
            &["-u", "-c", LINE_SERVER, mode],
        )
        .expect("python");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("port line");
    let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    (
        Killed(child),
        format!("127.0.0.1:{port}").parse().expect("addr"),
    )
}

/// A status line and head that arrive in seven segments, one of them three bytes long, count
/// once each with their status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_line_split_across_segments_counts_once() {
    require_root();
    let prefix = unique_prefix("hs");
    let cgroup = HostCgroup::create(&prefix, "split").expect("cgroup");
    let workload = cgroup.workload();
    let w = cg(&workload);
    let running = start_socket_collector(Config::default()).await;
    let (_server, addr) = start_line_server(&cgroup, "split");
    let mut ka = Http1Client::connect(addr);
    for _ in 0..6 {
        let r = ka.get("/made");
        assert_eq!((r.status, r.body.as_slice()), (201, b"ok".as_slice()));
    }
    let text = expect_counts(running.addr, &w, &[("2xx", 6)], "split status line");
    assert_eq!(records(&text, &w, "GET", "/made", "201"), 6);
    let lost = metric_sum(&text, "collector_http_requests_lost_total", &w);
    assert_eq!(lost, None, "no loss charged");
    running.shutdown().await;
}

/// A line protocol whose commands look like request lines (`GET key`) is not HTTP: nothing is
/// counted and no loss is charged; HTTP requests to the same server on other connections
/// (the positive control) are counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_protocol_that_is_not_http_is_ignored() {
    require_root();
    let prefix = unique_prefix("hl");
    let cgroup = HostCgroup::create(&prefix, "lines").expect("cgroup");
    let workload = cgroup.workload();
    let w = cg(&workload);
    let running = start_socket_collector(Config::default()).await;
    let (_server, addr) = start_line_server(&cgroup, "lines");
    let mut http = 0;
    for round in 0..4 {
        let mut kv = Http1Client::connect(addr);
        for cmd in [
            "GET foo",
            "SET foo bar",
            "GET foo",
            "DELETE foo",
            "get foo",
            "PING",
        ] {
            kv.send(&format!("{cmd}\r\n"));
            assert_eq!(kv.line(), "$3", "{cmd}");
            assert_eq!(kv.line(), "bar");
        }
        // The server answers one connection at a time.
        drop(kv);
        let mut h = Http1Client::connect(addr);
        for _ in 0..=round {
            assert_eq!(h.get("/kv").status, 200);
            http += 1;
        }
    }
    let text = expect_counts(running.addr, &w, &[("2xx", http)], "line protocol");
    assert_eq!(records(&text, &w, "GET", "/kv", "200"), http);
    let lost = metric_sum(&text, "collector_http_requests_lost_total", &w);
    assert_eq!(lost, None, "a protocol that is not HTTP is not a loss");
    running.shutdown().await;
}

/// Under 20 % loss on the server's egress (real retransmits, and duplicate request segments
/// from the client when the server's ACKs are lost), every request and response counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitted_segments_count_once() {
    require_root();
    let prefix = unique_prefix("ht");
    let uid = fake_pod_uid(0x7e01);
    let pod = Pod::create(&prefix, 90, &uid, &fake_container_id(0x7e01)).expect("pod");
    let w = [("workload_kind", "pod"), ("pod_uid", uid.as_str())];
    let running = start_socket_collector(Config {
        kubelet_cgroup_roots: vec![HARNESS_KUBELET_ROOT.into()],
        ..Config::default()
    })
    .await;
    let (_, _, bin) = go_fixtures()
        .into_iter()
        .rfind(|(_, variant, _)| variant == "default")
        .expect("a Go fixture");
    let mut child = pod
        .spawn(&bin, &["-listen", "0.0.0.0:8080"])
        .expect("Go server");
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    }
    let _server = Killed(child);
    let addr = SocketAddr::from((pod.addr(), 8080));
    wait_listening(addr, "Go server in the pod");

    let retrans = |p: &Pod| p.nstat(&["TcpRetransSegs"]).expect("nstat")["TcpRetransSegs"];
    let before = retrans(&pod);
    pod.drop_egress_percent(20).expect("loss");
    let body = "y".repeat(20_000);
    let mut sent = 0;
    for _ in 0..4 {
        let mut ka = Http1Client::connect(addr);
        for _ in 0..10 {
            assert_eq!(ka.get("/ok").status, 200);
            let r = ka.get("/chunked?n=20");
            assert_eq!((r.status, r.body.len()), (200, 20_000));
            ka.send(&format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
            assert_eq!(ka.read(false).body, b"20000\n");
            sent += 3;
        }
    }
    pod.clear_faults().expect("clear");
    let retransmitted = retrans(&pod) - before;
    assert!(retransmitted > 0, "the loss caused no retransmit");
    let text = expect_counts(running.addr, &w, &[("2xx", sent)], "under loss");
    assert_eq!(records(&text, &w, "POST", "/echo", "200"), 40);
    let lost = metric_sum(&text, "collector_http_requests_lost_total", &w);
    assert_eq!(
        lost, None,
        "no loss charged ({retransmitted} segments retransmitted)"
    );
    eprintln!("{sent} requests, {retransmitted} segments retransmitted by the server");
    running.shutdown().await;
}

/// Sets the scratch-slot bits held on every CPU, both directions, as if parses that hold
/// them had been interrupted there.
fn hold_slots(ebpf: &Mutex<Ebpf>, bits: u64) {
    let mut ebpf = ebpf.lock().expect("ebpf");
    let mut busy: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map_mut("WIRE_BUSY").expect("WIRE_BUSY")).expect("array");
    let cpus = nr_cpus().expect("cpus").get() as usize;
    for dir in 0..2 {
        busy.set(
            dir,
            PerCpuValues::try_from(vec![bits; cpus]).expect("values"),
            0,
        )
        .expect("set");
    }
}

/// The slot bits of each direction on every CPU.
fn held_slots(ebpf: &Mutex<Ebpf>) -> Vec<Vec<u64>> {
    let mut ebpf = ebpf.lock().expect("ebpf");
    let busy: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map_mut("WIRE_BUSY").expect("WIRE_BUSY")).expect("array");
    (0..2)
        .map(|dir| busy.get(&dir, 0).expect("get").iter().copied().collect())
        .collect()
}

/// Slot 0 of both directions on every CPU: written with a pattern, or read back.
fn slot0_scratch(ebpf: &Mutex<Ebpf>, write: Option<WireScratch>) -> Vec<WireScratch> {
    let mut ebpf = ebpf.lock().expect("ebpf");
    let mut scratch: PerCpuArray<_, WireScratch> =
        PerCpuArray::try_from(ebpf.map_mut("WIRE_SCRATCH").expect("WIRE_SCRATCH")).expect("array");
    let cpus = nr_cpus().expect("cpus").get() as usize;
    let mut out = Vec::new();
    for index in [0, WIRE_SLOTS] {
        if let Some(w) = write {
            scratch
                .set(
                    index,
                    PerCpuValues::try_from(vec![w; cpus]).expect("values"),
                    0,
                )
                .expect("set");
        }
        out.extend(scratch.get(&index, 0).expect("get").iter().copied());
    }
    out
}

/// A parse on one CPU can be interrupted by another (a softirq sending another socket's
/// retransmit: under 30 % loss CI once saw a request charged as lost, and with a single
/// scratch the nested parse overwrote the window the outer one was scanning). Here slot 0 of
/// every CPU is held, as by an interrupted parse, and filled with a pattern: every parse must
/// take another slot, count exactly, leave the pattern alone and release what it took. With
/// every slot held, each request is charged as lost (`http_wire_busy`), none is misparsed,
/// and the connection recovers once a slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_parses_keep_their_own_scratch() {
    require_root();
    let cgroup = HostCgroup::create(&unique_prefix("hn"), "go").expect("cgroup");
    let workload = cgroup.workload();
    let w = cg(&workload);
    let (_server, addr) = start_go_server(&cgroup);
    let running = start_socket_collector(Config::default()).await;
    let c = running.addr;
    let ebpf = running.ebpf();

    let pattern = WireScratch {
        cookie: 0xa5a5_a5a5_a5a5_a5a5,
        seq: 0xa5a5_a5a5,
        calls: 7,
        pos: 9,
        win_start: 11,
        win_len: 13,
        stop: 3,
        scan: 15,
        seg_off: 17,
        seg_len: 19,
        seg_flags: 21,
        acc: 0xa5a5,
        buf: [0xa5; WINDOW],
    };
    hold_slots(&ebpf, 1);
    slot0_scratch(&ebpf, Some(pattern));

    // Short responses, a chunked body over many windows (tail calls and the action program),
    // request bodies.
    let mut ka = Http1Client::connect(addr);
    let body = "z".repeat(20_000);
    for _ in 0..5 {
        assert_eq!(ka.get("/ok").status, 200);
        let r = ka.get("/chunked?n=20");
        assert_eq!((r.status, r.body.len()), (200, 20_000));
        ka.send(&format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        assert_eq!(ka.read(false).body, b"20000\n");
    }
    let text = expect_counts(c, &w, &[("2xx", 15)], "slot 0 held");
    assert_eq!(records(&text, &w, "POST", "/echo", "200"), 5);
    let lost = |text: &str| metric_sum(text, "collector_http_requests_lost_total", &w);
    assert_eq!(lost(&text), None, "no loss charged");
    let cpus = nr_cpus().expect("cpus").get() as usize;
    assert_eq!(
        held_slots(&ebpf),
        vec![vec![1; cpus]; 2],
        "every parse released its slot, and only its own"
    );
    assert!(
        slot0_scratch(&ebpf, None).iter().all(|s| *s == pattern),
        "a parse wrote into a slot it did not hold"
    );

    // Every slot held: five requests go unparsed, each charged once.
    hold_slots(&ebpf, (1 << WIRE_SLOTS) - 1);
    for _ in 0..5 {
        assert_eq!(ka.get("/ok").status, 200);
    }
    let text = expect_counts(c, &w, &[("2xx", 15)], "all slots held");
    assert_eq!(lost(&text), Some(5.0), "each unparsed request charged once");
    let busy = metric_sum(
        &text,
        "collector_kernel_drops_total",
        &[("reason", "http_wire_busy")],
    )
    .unwrap_or(0.0);
    assert!(busy >= 5.0, "{busy} segments counted as http_wire_busy");

    // Slots free again: the connection resynchronises at its next request.
    hold_slots(&ebpf, 0);
    for _ in 0..10 {
        assert_eq!(ka.get("/ok").status, 200);
    }
    let text = expect_counts(c, &w, &[("2xx", 25)], "slots free again");
    assert_eq!(lost(&text), Some(5.0));
    assert_eq!(held_slots(&ebpf), vec![vec![0; cpus]; 2]);
    drop(ka);
    running.shutdown().await;
}

//! Route templates of Go routers (gin, echo v4 and v5, chi v1 and v5, gorilla/mux) through
//! the net/http uprobes: servers built from the real modules (tests/go/routers: the newest
//! releases with the newest Go, older ones — and each router's older major — with Go 1.21, and
//! the newest releases that allow it with Go 1.17, the oldest Go supported), default, stripped
//! and PIE; exact counts per (method, route template, status) against what the client sent,
//! over fresh, keep-alive and concurrent connections.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use collector::app;
use integration_tests::*;

const DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);
/// Clients at once, each with its own keep-alive connection: routers pool their per-request
/// contexts, so contexts pass from one request to the next while others are in flight.
const CONCURRENT: usize = 8;

/// Where `./x vm-test` lists the fixtures it built on the host for the guest.
const FIXTURES_ENV: &str = "COLLECTOR_ROUTER_FIXTURES";

/// (set, variant, server) from tests/go/routers/build.sh (or the guest's listing).
fn fixtures() -> Vec<(String, String, PathBuf)> {
    fixture_listing(Some(FIXTURES_ENV), "go/routers/build.sh")
}

/// A router of the test server (`-router`), and the templates it registered for the server's
/// routes, in its own syntax.
struct Case {
    router: &'static str,
    /// Only in the set built with the newest modules (echo v5 needs Go ≥ 1.25).
    new_only: bool,
    /// `/users/{id}`, `/users/{id}/orders`, `/api/v1/items/{name}`, `/boom/{n}`, `/quiet/{id}`.
    templates: [&'static str; 5],
}

const COLON: [&str; 5] = [
    "/users/:id",
    "/users/:id/orders",
    "/api/v1/items/:name",
    "/boom/:n",
    "/quiet/:id",
];
const BRACES: [&str; 5] = [
    "/users/{id}",
    "/users/{id}/orders",
    "/api/v1/items/{name}",
    "/boom/{n}",
    "/quiet/{id}",
];

const CASES: [Case; 6] = [
    Case {
        router: "gin",
        new_only: false,
        templates: COLON,
    },
    Case {
        router: "echo4",
        new_only: false,
        templates: COLON,
    },
    Case {
        router: "echo5",
        new_only: true,
        templates: COLON,
    },
    Case {
        router: "chi",
        new_only: false,
        templates: BRACES,
    },
    Case {
        router: "chi1",
        new_only: false,
        templates: BRACES,
    },
    Case {
        router: "gorilla",
        new_only: false,
        templates: BRACES,
    },
];

/// A request of the mix: method, path, the index of its template (None: no route matches,
/// the path is normalised), status.
type Req = (&'static str, &'static str, Option<usize>, u16);

const MIX: [Req; 12] = [
    ("GET", "/users/1", Some(0), 200),
    ("GET", "/users/abc", Some(0), 200),
    ("GET", "/users/12345678", Some(0), 200),
    ("POST", "/users/7/orders", Some(1), 201),
    ("POST", "/users/x/orders", Some(1), 201),
    ("GET", "/api/v1/items/x", Some(2), 200),
    ("GET", "/api/v1/items/y", Some(2), 200),
    ("GET", "/boom/1", Some(3), 500),
    ("GET", "/boom/zz", Some(3), 500),
    ("GET", "/quiet/5", Some(4), 200),
    ("GET", "/quiet/q", Some(4), 200),
    ("GET", "/nowhere/123", None, 404),
];

fn read_response(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {line:?}"));
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        if h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("body");
    status
}

/// Requests one after the other on one keep-alive connection; returns their statuses.
fn keep_alive(addr: SocketAddr, requests: &[Req]) -> Vec<u16> {
    keep_alive_on(addr, requests, false)
}

/// `keep_alive`, with `nodelay`: `write!` sends a request in several writes, and without it
/// Nagle holds each one's tail for the server's delayed ACK (40 ms a request).
fn keep_alive_on(addr: SocketAddr, requests: &[Req], nodelay: bool) -> Vec<u16> {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.set_nodelay(nodelay).expect("nodelay");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    requests
        .iter()
        .map(|(method, path, ..)| {
            write!(
                w,
                "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
            )
            .expect("write");
            read_response(&mut r)
        })
        .collect()
}

async fn start_collector() -> app::Running {
    app::start(uprobe_config()).await.expect("collector starts")
}

/// The collector's `/v1/go-http` listing.
fn go_listing(addr: SocketAddr) -> Vec<serde_json::Value> {
    let mut s = TcpStream::connect(addr).expect("collector");
    write!(s, "GET /v1/go-http HTTP/1.0\r\n\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    match serde_json::from_str(body) {
        Ok(serde_json::Value::Array(entries)) => entries,
        _ => Vec::new(),
    }
}

fn instrumented(addr: SocketAddr, pid: u32) -> bool {
    go_listing_entry(&go_listing(addr), pid).is_some_and(|e| e["reason"].is_null())
}

/// Serves the mix with `case.router` from the server at `path` and checks every request's
/// (method, route, status) exactly; with `concurrent`, also from `CONCURRENT` keep-alive
/// clients at once. Returns the requests sent.
fn check_case(
    collector: SocketAddr,
    cgroup: &HostCgroup,
    path: &Path,
    case: &Case,
    name: &str,
    concurrent: bool,
    instrumented_within: Duration,
) -> u64 {
    let workload = cgroup.workload();
    let server = cgroup.spawn_announced(
        path,
        &["-listen", "127.0.0.1:0", "-router", case.router],
        "listening on ",
    );
    let pid = server.child.id();
    wait_until_ok_blocking(
        instrumented_within,
        Duration::from_millis(20),
        &format!("{name} instrumented"),
        || {
            if instrumented(collector, pid) {
                Ok(())
            } else {
                Err(format!("pid {pid} not listed"))
            }
        },
    );
    let mut expected: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut expect = |reqs: &[Req], got: &[u16]| {
        for ((method, path, tpl, status), got) in reqs.iter().zip(got) {
            assert_eq!(got, status, "{name}: {method} {path}");
            let route = match tpl {
                Some(t) => case.templates[*t].to_string(),
                None => "/nowhere/{id}".to_string(),
            };
            *expected
                .entry((method.to_string(), route, status.to_string()))
                .or_default() += 1;
        }
    };
    // Each request on a fresh connection.
    for r in &MIX {
        let got = keep_alive(server.addr, std::slice::from_ref(r));
        expect(std::slice::from_ref(r), &got);
    }
    // Keep-alive: the connection's goroutine serves them all.
    expect(&MIX, &keep_alive(server.addr, &MIX));
    if concurrent {
        // Concurrent keep-alive clients, each the mix rotated.
        let clients: Vec<_> = (0..CONCURRENT)
            .map(|k| {
                let addr = server.addr;
                let mut reqs = MIX.to_vec();
                reqs.rotate_left(k % MIX.len());
                std::thread::spawn(move || {
                    let got = keep_alive(addr, &reqs);
                    (reqs, got)
                })
            })
            .collect();
        for c in clients {
            let (reqs, got) = c.join().expect("client");
            expect(&reqs, &got);
        }
    }
    let want: u64 = expected.values().sum();
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let text = wait_until_ok_blocking(DEADLINE, POLL, &format!("{name}: counted"), || {
        let text = scrape(collector);
        let total = metric_sum(&text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
        let records = metric_sum(&text, "http_server_request_duration_seconds_count", &w)
            .unwrap_or(0.0) as u64;
        if total == want && records == want {
            Ok(text)
        } else {
            // With what every workload was counted and what was dropped: where the requests
            // went when they are not here.
            let context: Vec<&str> = text
                .lines()
                .filter(|l| {
                    [
                        "collector_http_requests_total",
                        "collector_kernel_drops",
                        "collector_events",
                    ]
                    .iter()
                    .any(|m| l.starts_with(m))
                })
                .collect();
            Err(format!(
                "exact {total}/{want}, records {records}/{want}\n{}",
                context.join("\n")
            ))
        }
    });
    let mut got: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for (method, route, code) in expected.keys() {
        let labels = [
            w[0],
            w[1],
            ("method", method.as_str()),
            ("route", route.as_str()),
            ("status_code", code.as_str()),
        ];
        let n = metric_sum(&text, "http_server_request_duration_seconds_count", &labels)
            .unwrap_or(0.0) as u64;
        got.insert((method.clone(), route.clone(), code.clone()), n);
    }
    assert_eq!(
        got,
        expected,
        "{name}: per (method, route, status)\n{}",
        text.lines()
            .filter(
                |l| l.starts_with("http_server_request_duration_seconds_count")
                    && l.contains(workload.as_str())
            )
            .collect::<Vec<_>>()
            .join("\n")
    );
    want
}

/// Bug caught, for each router: its requests labelled with the normalised path
/// (`/users/{id}` for `/users/1` but `/users/abc` for `/users/abc`, no `:id`), i.e. no
/// template read (probe not attached, wrong function, wrong register or offset for that
/// version or build); a template taken from another request (a pooled context read after it
/// was reused: the concurrent part); a mounted router's pattern joined wrongly
/// (`/api/v1/*/items/{name}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_templates_are_the_routes_of_every_router_version_and_build() {
    require_root();
    // RUST_LOG=info shows what discovery probed and why a router was left out.
    test_logs("error");
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 9, "3 module sets × 3 variants");
    let running = start_collector().await;
    let prefix = unique_prefix("rt");
    let mut checked = 0;
    for (i, (set, variant, path)) in fixtures.iter().enumerate() {
        for (j, case) in CASES.iter().enumerate() {
            if case.new_only && set != "new" {
                continue;
            }
            let name = format!("{set}-{variant}-{}", case.router);
            let cgroup = HostCgroup::create(&prefix, &format!("{i}-{j}")).expect("cgroup");
            let n = check_case(
                running.addr,
                &cgroup,
                path,
                case,
                &name,
                true,
                Duration::from_secs(10),
            );
            eprintln!("{name}: {n} requests, every template exact");
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 6 + 2 * 3 * 5, "router × build cases");
    running.shutdown().await;
}

/// A server restarted as soon as its binary's uprobes were let go: the new process's routes
/// are templates from its first request. Bug caught: the old links, still being detached by
/// the reaper thread when the binary is attached again, fire beside the new ones with cookies
/// naming router slots that were given since to the binary's other routers (every router of
/// the test server is linked in): their probe wrote a template of the wrong router's layout
/// over the right one, and the new process's first requests (for a second or so) kept their
/// normalised paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_at_once_has_templates_from_its_first_request() {
    require_root();
    let fixtures = fixtures();
    let (_, _, path) = fixtures
        .iter()
        .find(|(set, variant, _)| set == "new" && variant == "stripped")
        .expect("the newest modules' stripped build");
    let case = CASES.iter().find(|c| c.router == "chi").expect("chi case");
    let running = start_collector().await;
    let prefix = unique_prefix("rr");
    let listed = |addr| {
        go_listing(addr)
            .iter()
            .any(|e| e["path"].as_str() == path.to_str())
    };
    for round in 0..3 {
        let cgroup = HostCgroup::create(&prefix, &round.to_string()).expect("cgroup");
        // The previous round's server is gone: its binary is let go at the next rescan.
        wait_until_ok_blocking(DEADLINE, Duration::from_millis(5), "binary let go", || {
            if listed(running.addr) {
                Err("still listed".to_owned())
            } else {
                Ok(())
            }
        });
        check_case(
            running.addr,
            &cgroup,
            path,
            case,
            &format!("restart {round}"),
            false,
            Duration::from_secs(10),
        );
    }
    running.shutdown().await;
}

/// `--no-go-router-templates` (Helm's `config.go_router_templates: false`): routers are not
/// probed, so every route is the request's normalised path, and the net/http counts stay
/// exact. Bug caught: the switch not reaching Go discovery (the flag parsed, the templates
/// still read), or switching the net/http probes off with the routers'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_templates_off_gives_normalised_paths() {
    require_root();
    let fixtures = fixtures();
    let (_, _, path) = fixtures
        .iter()
        .find(|(set, variant, _)| set == "new" && variant == "default")
        .expect("the newest modules' default build");
    let cli = <collector::config::Cli as clap::Parser>::parse_from([
        "collector",
        "--listen",
        "127.0.0.1:0",
        "--harvest-interval",
        "200ms",
        "--no-http-socket",
        "--go-http-uprobes",
        "all",
        "--no-go-router-templates",
    ]);
    let env: BTreeMap<String, String> = BTreeMap::new();
    let config = collector::config::Config::load(&cli, &env).expect("config");
    assert!(!config.http.router_templates, "the flag reaches the config");
    let running = app::start(config).await.expect("collector starts");
    let prefix = unique_prefix("rn");
    let cgroup = HostCgroup::create(&prefix, "off").expect("cgroup");
    let workload = cgroup.workload();
    let server = cgroup.spawn_announced(
        path,
        &["-listen", "127.0.0.1:0", "-router", "chi"],
        "listening on ",
    );
    let pid = server.child.id();
    wait_until_ok_blocking(
        Duration::from_secs(10),
        Duration::from_millis(20),
        "instrumented",
        || {
            if instrumented(running.addr, pid) {
                Ok(())
            } else {
                Err(format!("pid {pid} not listed"))
            }
        },
    );
    let mut expected: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for r in &MIX {
        let got = keep_alive(server.addr, std::slice::from_ref(r));
        assert_eq!(got, [r.3], "{} {}", r.0, r.1);
        *expected
            .entry((
                r.0.to_owned(),
                collector::aggregate::http::normalize_path(r.1),
                r.3.to_string(),
            ))
            .or_default() += 1;
    }
    let want = MIX.len() as u64;
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let text = wait_until_ok_blocking(DEADLINE, POLL, "counted", || {
        let text = scrape(running.addr);
        let records = metric_sum(&text, "http_server_request_duration_seconds_count", &w)
            .unwrap_or(0.0) as u64;
        if records == want {
            Ok(text)
        } else {
            Err(format!("records {records}/{want}"))
        }
    });
    for ((method, route, code), n) in &expected {
        let labels = [
            w[0],
            w[1],
            ("method", method.as_str()),
            ("route", route.as_str()),
            ("status_code", code.as_str()),
        ];
        assert_eq!(
            metric_sum(&text, "http_server_request_duration_seconds_count", &labels),
            Some(*n as f64),
            "{method} {route} {code}\n{text}"
        );
    }
    drop(server);
    running.shutdown().await;
}

/// The router probe program on the kernel under test (`./x vm-test` runs it on Debian's 6.1:
/// verifier, uprobe.multi or per-point links, attach cookies): every router of the binaries
/// the guest was given, fresh and keep-alive connections. Bug caught: the program refused by
/// an older verifier (every route then a normalised path), or its register or join reads
/// wrong there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_router_templates_on_this_kernel() {
    require_root();
    // Warnings (a program the kernel refused, with the verifier's log) in the test's output.
    test_logs("collector=warn");
    let fixtures = fixtures();
    let running = start_collector().await;
    let prefix = unique_prefix("rk");
    let mut checked = 0;
    for (i, (set, variant, path)) in fixtures.iter().enumerate() {
        // The guest is given these two (`./x vm-test`); on the host the same two of the full
        // list (the other test covers every build).
        if !matches!(
            (set.as_str(), variant.as_str()),
            ("new", "default") | ("old", "stripped")
        ) {
            continue;
        }
        for (j, case) in CASES.iter().enumerate() {
            if case.new_only && set != "new" {
                continue;
            }
            let name = format!("{set}-{variant}-{}", case.router);
            let cgroup = HostCgroup::create(&prefix, &format!("{i}-{j}")).expect("cgroup");
            // Generous: software emulation makes everything slower.
            check_case(
                running.addr,
                &cgroup,
                path,
                case,
                &name,
                false,
                Duration::from_secs(60),
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no router fixture");
    running.shutdown().await;
}

/// The collector's default (`--go-http-uprobes auto`, the socket parser on): a router's
/// plaintext requests are counted by the parser, trap-free, and named by the route templates
/// learned in a short uprobe window (`GoHttpProbes::on_served`), after which the uprobes are
/// detached again. For gin, chi (a mounted router: joined pieces), echo v4 and gorilla/mux,
/// each from its own copy of a fixture (learning windows are per file):
/// - while learning, the parser's counts stay exactly the client's: a request followed for its
///   template is never counted by the uprobes as well;
/// - the window closes on its budget and the server is listed `not_needed` again (the traps
///   stop);
/// - afterwards, exact counts per (method, route template, status), the unmatched path
///   normalised.
///
/// Bugs caught: no window opened (the Served notice lost, the file not found), the learning
/// request counted twice (the totals over), templates not matched to the parser's paths
/// (normalised routes), a window never closed (the server stays instrumented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_learns_router_templates_for_the_parsers_requests() {
    require_root();
    // RUST_LOG=info shows the windows opening and closing.
    test_logs("error");
    let fixtures = fixtures();
    let config = collector::config::Config::default();
    assert!(
        config.http.socket && config.http.uprobes == collector::config::GoUprobes::Auto,
        "the defaults"
    );
    let running = start_socket_collector(config).await;
    let api = running.addr;
    let prefix = unique_prefix("rl");
    let dir = std::env::temp_dir().join(format!("go-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let picks = [
        ("gin", "new", "default"),
        ("chi", "new", "stripped"),
        ("echo4", "new", "pie"),
        ("gorilla", "new", "default"),
    ];
    for (i, (router, set, variant)) in picks.into_iter().enumerate() {
        let case = CASES.iter().find(|c| c.router == router).expect("case");
        let (_, _, path) = fixtures
            .iter()
            .find(|(s, v, _)| s == set && v == variant)
            .expect("fixture");
        // A private copy: uprobes, and so learning windows, are per file.
        let copy = dir.join(format!("server-{router}-{variant}"));
        std::fs::copy(path, &copy).expect("copy the fixture");
        let cgroup = HostCgroup::create(&prefix, &i.to_string()).expect("cgroup");
        let workload = cgroup.workload();
        let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
        let server = cgroup.spawn_announced(
            &copy,
            &["-listen", "127.0.0.1:0", "-router", router],
            "listening on ",
        );
        let pid = server.child.id();
        // The listing's reason, with the learning windows a `not_needed` entry had.
        let reason = |addr| {
            go_listing_entry(&go_listing(addr), pid).map(|e| match e["reason"].as_str() {
                Some(r) => format!("{r} {}", e["route_learning_windows"].as_u64().unwrap_or(0)),
                None => "instrumented".to_string(),
            })
        };
        wait_until_ok_blocking(
            DEADLINE,
            POLL,
            &format!("{router}: listed"),
            || match reason(api).as_deref() {
                Some("not_needed 0") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        // Learning: the mix until a window opened and closed again on its budget.
        let mut sent = 0u64;
        let start = std::time::Instant::now();
        loop {
            for _ in 0..10 {
                for (got, r) in keep_alive_on(server.addr, &MIX, true).iter().zip(&MIX) {
                    assert_eq!(*got, r.3, "{router}: {} {}", r.0, r.1);
                }
                sent += MIX.len() as u64;
            }
            // Listed so once closed: the window's uprobes are detached.
            let listed = reason(api);
            if listed.as_deref() == Some("not_needed 1") {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{router}: no learning window opened and closed (listed {listed:?})",
            );
        }
        // The exact counters and the records (the histograms): records reach the aggregator
        // through the ring buffer, drained apart from the counters' harvest, so a scrape can
        // show a request counted whose record is still on its way.
        let counted = |text: &str, want: u64| {
            let n = metric_sum(text, "collector_http_requests_total", &w).unwrap_or(0.0) as u64;
            let records = metric_sum(text, "http_server_request_duration_seconds_count", &w)
                .unwrap_or(0.0) as u64;
            if n == want && records == want {
                Ok(())
            } else {
                Err(format!("exact {n}/{want}, records {records}/{want}"))
            }
        };
        wait_until_ok_blocking(
            DEADLINE,
            POLL,
            &format!("{router}: learning counted"),
            || counted(&scrape(api), sent),
        );
        // Counted under the templates learned, with no uprobe attached.
        let series = |text: &str| -> BTreeMap<(String, String, String), u64> {
            text.lines()
                .filter(|l| {
                    l.starts_with("http_server_request_duration_seconds_count{")
                        && l.contains(&format!("workload=\"{workload}\""))
                })
                .filter_map(|l| {
                    let label = |k: &str| {
                        let at = l.find(&format!("{k}=\""))? + k.len() + 2;
                        Some(l[at..].split('"').next()?.to_string())
                    };
                    let n: f64 = l.rsplit(' ').next()?.parse().ok()?;
                    Some((
                        (label("method")?, label("route")?, label("status_code")?),
                        n as u64,
                    ))
                })
                .collect()
        };
        let before = series(&scrape(api));
        let mut expected: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for r in MIX.iter().chain(&MIX) {
            let route = match r.2 {
                Some(t) => case.templates[t].to_string(),
                None => "/nowhere/{id}".to_string(),
            };
            *expected
                .entry((r.0.to_string(), route, r.3.to_string()))
                .or_default() += 1;
        }
        for r in &MIX {
            assert_eq!(keep_alive(server.addr, std::slice::from_ref(r)), [r.3]);
        }
        assert_eq!(
            keep_alive(server.addr, &MIX),
            MIX.iter().map(|r| r.3).collect::<Vec<_>>()
        );
        let want = sent + 2 * MIX.len() as u64;
        let text = wait_until_ok_blocking(DEADLINE, POLL, &format!("{router}: counted"), || {
            let text = scrape(api);
            counted(&text, want).map(|()| text)
        });
        let after = series(&text);
        let delta: BTreeMap<_, _> = after
            .iter()
            .filter_map(|(k, n)| {
                let d = n - before.get(k).copied().unwrap_or(0);
                (d > 0).then(|| (k.clone(), d))
            })
            .collect();
        assert_eq!(delta, expected, "{router}: per (method, route, status)");
        assert_eq!(
            reason(api).as_deref(),
            Some("not_needed 1"),
            "{router}: detached"
        );
        eprintln!("{router}: {want} requests, learned in a window, every template exact");
    }
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

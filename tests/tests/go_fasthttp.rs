//! fasthttp, and fiber on top of it (v2 and v3), through the default request source, the
//! socket parser (`cgroup_skb`, no uprobe): these servers do not use net/http, so no Go uprobe
//! can see them, and the parser is all that counts them. Servers built from the real modules
//! (tests/go/fasthttp: the newest releases with the newest Go, fiber v2.52.0 and its fasthttp
//! with Go 1.21, fasthttp v1.44.0 and fiber v2.37.1 with Go 1.17, the oldest Go supported),
//! default, stripped and PIE; exact counts per (method, normalised path, status) and per
//! outcome against what the client sent, over fresh, keep-alive, pipelined and concurrent
//! connections, and the slow route's durations inside the client's own.
//!
//! What fasthttp does that net/http does not, and that the mix exercises: a `Server:` header
//! before the others, responses of pipelined requests written together in one segment, a
//! streamed body (`SetBodyStreamWriter`) in chunked coding from a second goroutine, `100
//! Continue` written by the server itself before the handler runs, 204 without
//! `Content-Length`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use collector::{aggregate::http::normalize_path, config::Config};
use collector_common::http::wire::PIPELINE;
use integration_tests::*;

const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// Clients at once, each with its own keep-alive connection: fasthttp serves each connection
/// from a pooled worker goroutine and reuses its request contexts.
const CONCURRENT: usize = 8;
/// What `/slow/{ms}` sleeps, in milliseconds.
const SLOW_MS: u64 = 30;

/// (set, variant, server) from tests/go/fasthttp/build.sh.
fn fixtures() -> Vec<(String, String, PathBuf)> {
    fixture_listing(None, "go/fasthttp/build.sh")
}

/// Server implementations (`-impl`), and whether only the newest module set has it (fiber v3
/// needs Go ≥ 1.25).
const IMPLS: [(&str, bool); 3] = [("fasthttp", false), ("fiber2", false), ("fiber3", true)];

/// A request's body as sent.
#[derive(Clone, Copy)]
enum Body {
    None,
    Length(&'static str),
    Chunked(&'static str),
}

/// What the response body must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    /// Any body by length (or none).
    Any,
    /// This many bytes in chunked coding.
    Chunked(usize),
    /// This many bytes by `Content-Length`.
    Length(usize),
}

#[derive(Clone, Copy)]
struct Req {
    method: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    got: Got,
}

const fn get(path: &'static str, status: u16, got: Got) -> Req {
    Req {
        method: "GET",
        path,
        body: Body::None,
        status,
        got,
    }
}

/// The mix every connection mode sends (a slow request among them, for the durations).
const MIX: [Req; 13] = [
    get("/users/1", 200, Got::Any),
    get("/users/abc", 200, Got::Any),
    get("/users/12345678", 200, Got::Any),
    Req {
        method: "HEAD",
        path: "/users/2",
        body: Body::None,
        status: 200,
        got: Got::Length(0),
    },
    Req {
        method: "POST",
        path: "/users/7/orders",
        body: Body::Length("hello world"),
        status: 201,
        got: Got::Any,
    },
    Req {
        method: "POST",
        path: "/users/x/orders",
        body: Body::Chunked("hello chunked world"),
        status: 201,
        got: Got::Any,
    },
    get("/boom/1", 500, Got::Any),
    get("/boom/zz", 500, Got::Any),
    get("/empty/5", 204, Got::Length(0)),
    get("/stream/20", 200, Got::Chunked(20_000)),
    get("/big/64", 200, Got::Length(64 * 1024)),
    get("/nowhere/123", 404, Got::Any),
    get("/slow/30", 200, Got::Any),
];

fn is_slow(r: &Req) -> bool {
    r.path.starts_with("/slow/")
}

/// `req` as the client writes it (`close`: with `Connection: close`).
fn raw(req: &Req, close: bool) -> String {
    let conn = if close { "Connection: close\r\n" } else { "" };
    let (framing, body) = match req.body {
        Body::None => (String::new(), String::new()),
        Body::Length(b) => (format!("Content-Length: {}\r\n", b.len()), b.to_owned()),
        Body::Chunked(b) => (
            "Transfer-Encoding: chunked\r\n".to_owned(),
            format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()),
        ),
    };
    format!(
        "{} {} HTTP/1.1\r\nHost: t\r\n{conn}{framing}\r\n{body}",
        req.method, req.path
    )
}

/// Reads the response to `req` on `c`: its status and framing as the server sends them.
fn read_for(c: &mut Http1Client, req: &Req, what: &str) {
    let r = c.read(req.method == "HEAD");
    let ok = match req.got {
        Got::Any => !r.chunked,
        Got::Chunked(n) => r.chunked && r.body.len() == n,
        Got::Length(n) => !r.chunked && r.body.len() == n,
    };
    assert!(
        r.status == req.status && ok,
        "{what}: {} {}: {r:?}, not {} {:?}",
        req.method,
        req.path,
        req.status,
        req.got
    );
}

/// What the client sent and saw: requests per outcome; per (method, normalised path, status)
/// those the parser records (all but pipelined requests queued behind `PIPELINE` others, which
/// are counted and charged as unrecorded); and for the slow route the number recorded and the
/// sum of the client's own durations (each encloses the server's: from before the request was
/// written to after its response was read).
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    per_key: BTreeMap<(String, String, String), u64>,
    unrecorded: u64,
    slow: u64,
    slow_client_s: f64,
}

impl Tally {
    fn count(&mut self, req: &Req) {
        *self
            .outcomes
            .entry(format!("{}xx", req.status / 100))
            .or_default() += 1;
    }

    fn add(&mut self, req: &Req, client: Duration) {
        self.count(req);
        *self
            .per_key
            .entry((
                req.method.to_owned(),
                normalize_path(req.path),
                req.status.to_string(),
            ))
            .or_default() += 1;
        if is_slow(req) {
            self.slow += 1;
            self.slow_client_s += client.as_secs_f64();
        }
    }

    fn add_unrecorded(&mut self, req: &Req) {
        self.count(req);
        self.unrecorded += 1;
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in other.per_key {
            *self.per_key.entry(k).or_default() += v;
        }
        self.unrecorded += other.unrecorded;
        self.slow += other.slow;
        self.slow_client_s += other.slow_client_s;
    }

    fn by_outcome(&self) -> Vec<(String, u64)> {
        self.outcomes.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// The mix, one request after the other on one keep-alive connection.
fn keep_alive(addr: SocketAddr, reqs: &[Req], what: &str) -> Tally {
    let mut c = Http1Client::connect(addr);
    let mut sent = Tally::default();
    for req in reqs {
        let t = Instant::now();
        c.send(&raw(req, false));
        read_for(&mut c, req, what);
        sent.add(req, t.elapsed());
    }
    sent
}

/// Drives every connection mode against the server of `path` with `-impl imp` and checks the
/// collector's counts; returns the requests sent.
///
/// Bugs caught, by assertion:
/// - per outcome (`collector_http_requests_total`, with nothing `aborted`) and in total: a
///   response the parser lost its place in — fasthttp's pipelined responses written together
///   in one segment, the streamed chunked body, a 204 with no `Content-Length`, a HEAD
///   response's `Content-Length` taken for a body that never comes (each swallows the
///   responses after it on the connection), the server's own `100 Continue` counted as an
///   answer, or a double count that shows only after a further harvest (checked again after
///   settling);
/// - per (method, normalised path, status) (`http_server_request_duration_seconds_count`):
///   a status, method or target read from the wrong message (a pipelined request answered by
///   another's response), or a request whose record was lost while its count was kept;
/// - `/slow/{id}`: a duration not measured from the request's arrival to its response's end
///   (an observation under the server's own sleep, in the histogram's buckets below it, or a
///   sum outside [requests × sleep, the client's own durations]);
/// - `collector_http_requests_lost_total` absent: a parse the parser gave up on and resynced;
/// - the pipelined batch of 13 (`PIPELINE` + 5, a HEAD 4th): requests queued behind
///   `PIPELINE` others, which have no slot, read an earlier request's slot. Seen failing so
///   before the slot kept its request's index: the 12th (a 404) took the 4th's HEAD flag, its
///   body was read as the next response's head and the stream lost (one 2xx never counted),
///   and the 9th's 204 was recorded as `GET /users/{id}` (the 1st's); now those 5 are counted,
///   charged exactly as `collector_http_requests_unrecorded_total`, and recorded as nothing.
fn check_case(
    collector: SocketAddr,
    cgroup: &HostCgroup,
    path: &Path,
    imp: &str,
    name: &str,
) -> u64 {
    let workload = cgroup.workload();
    let server = cgroup.spawn_announced(
        path,
        &["-listen", "127.0.0.1:0", "-impl", imp],
        "listening on ",
    );
    let addr = server.addr;
    let mut sent = Tally::default();

    // 1. Each request on its own connection, which the server closes (`Connection: close`).
    for req in &MIX {
        let t = Instant::now();
        let mut c = Http1Client::connect(addr);
        c.send(&raw(req, true));
        read_for(&mut c, req, name);
        sent.add(req, t.elapsed());
    }

    // 2. Keep-alive: the mix one after the other, then `Expect: 100-continue` (fasthttp
    // answers 100 itself, before the handler reads the body).
    sent.merge(keep_alive(addr, &MIX, name));
    {
        let mut c = Http1Client::connect(addr);
        let req = Req {
            method: "POST",
            path: "/users/9/orders",
            body: Body::None,
            status: 201,
            got: Got::Any,
        };
        let t = Instant::now();
        c.send("POST /users/9/orders HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(c.read(false).status, 100, "{name}: 100 Continue");
        c.send(&"x".repeat(2000));
        read_for(&mut c, &req, name);
        sent.add(&req, t.elapsed());
        // And the connection goes on.
        let t = Instant::now();
        c.send(&raw(&MIX[0], false));
        read_for(&mut c, &MIX[0], name);
        sent.add(&MIX[0], t.elapsed());
    }

    // 3. Pipelined: the whole mix in one write, 13 requests; fasthttp buffers the responses
    // and writes them together when it has no request left to read. The parser keeps
    // `PIPELINE` (8) requests waiting for their responses: the 5 behind them are counted when
    // answered, but have no record (their method and arrival time were not kept).
    {
        let mut c = Http1Client::connect(addr);
        let batch: String = MIX.iter().map(|r| raw(r, false)).collect();
        let t = Instant::now();
        c.send(&batch);
        for req in &MIX {
            read_for(&mut c, req, name);
        }
        let all = t.elapsed();
        for (i, req) in MIX.iter().enumerate() {
            if i < PIPELINE as usize {
                sent.add(req, all);
            } else {
                sent.add_unrecorded(req);
            }
        }
    }

    // 4. Concurrent keep-alive clients, each the mix rotated.
    let clients: Vec<_> = (0..CONCURRENT)
        .map(|k| {
            let mut reqs = MIX.to_vec();
            reqs.rotate_left(k % MIX.len());
            let what = name.to_owned();
            std::thread::spawn(move || keep_alive(addr, &reqs, &what))
        })
        .collect();
    for c in clients {
        sent.merge(c.join().expect("client"));
    }

    let want: u64 = sent.per_key.values().sum();
    let w = [("workload_kind", "cgroup"), ("workload", workload.as_str())];
    let outcomes = |text: &str| -> Vec<(String, u64)> {
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
    let records = |text: &str| {
        metric_sum(text, "http_server_request_duration_seconds_count", &w).unwrap_or(0.0) as u64
    };
    let per_key = |text: &str| -> BTreeMap<(String, String, String), u64> {
        sent.per_key
            .keys()
            .map(|(method, route, code)| {
                let labels = [
                    w[0],
                    w[1],
                    ("method", method.as_str()),
                    ("route", route.as_str()),
                    ("status_code", code.as_str()),
                ];
                let n = metric_sum(text, "http_server_request_duration_seconds_count", &labels)
                    .unwrap_or(0.0) as u64;
                ((method.clone(), route.clone(), code.clone()), n)
            })
            .collect()
    };
    // The workload's record counts, for failure messages.
    let count_lines = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("http_server_request_duration_seconds_count")
                    && l.contains(workload.as_str())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Which keys differ, for the failure message.
    let differences = |got: &BTreeMap<(String, String, String), u64>| -> Vec<String> {
        got.iter()
            .filter(|(k, n)| sent.per_key[*k] != **n)
            .map(|((m, r, c), n)| {
                format!(
                    "{m} {r} {c}: {n}, sent {}",
                    sent.per_key[&(m.clone(), r.clone(), c.clone())]
                )
            })
            .collect()
    };
    wait_until_ok_blocking(DEADLINE, POLL, &format!("{name}: counted"), || {
        let text = scrape(collector);
        let (total, recs) = (outcomes(&text), records(&text));
        if total == sent.by_outcome() && recs == want {
            Ok(())
        } else {
            Err(format!(
                "outcomes {total:?} != {:?}, records {recs}/{want}, differing: {:?}\n{}",
                sent.by_outcome(),
                differences(&per_key(&text)),
                count_lines(&text)
            ))
        }
    });
    // A double count would show after a further harvest.
    std::thread::sleep(Duration::from_secs(1));
    let text = scrape(collector);
    assert_eq!(outcomes(&text), sent.by_outcome(), "{name}: after settling");
    let got = per_key(&text);
    assert_eq!(
        got,
        sent.per_key,
        "{name}: per (method, route, status), differing: {:?}",
        differences(&got)
    );
    assert_eq!(records(&text), want, "{name}: no record beyond the mix");

    // The slow route's durations: each at least the server's sleep, all together at most the
    // client's own.
    let slow = [
        w[0],
        w[1],
        ("method", "GET"),
        ("route", "/slow/{id}"),
        ("status_code", "200"),
    ];
    let sum = metric_sum(&text, "http_server_request_duration_seconds_sum", &slow)
        .expect("slow route's sum");
    let floor = sent.slow as f64 * SLOW_MS as f64 / 1000.0;
    assert!(
        sum >= floor && sum <= sent.slow_client_s,
        "{name}: slow route's durations sum to {sum} s, not within [{floor}, {}] s",
        sent.slow_client_s
    );
    let mut under = slow.to_vec();
    under.push(("le", "0.025"));
    assert_eq!(
        metric_sum(&text, "http_server_request_duration_seconds_bucket", &under),
        Some(0.0),
        "{name}: a slow request observed under its {SLOW_MS} ms sleep"
    );

    let lost = metric_sum(
        &text,
        "collector_http_requests_lost_total",
        &[("workload", workload.as_str())],
    );
    assert_eq!(lost, None, "{name}: loss charged");
    let unrecorded = metric_sum(
        &text,
        "collector_http_requests_unrecorded_total",
        &[("workload", workload.as_str())],
    );
    assert_eq!(
        unrecorded,
        Some(sent.unrecorded as f64),
        "{name}: requests queued behind {PIPELINE} others charged as unrecorded"
    );
    want + sent.unrecorded
}

/// Every module set × build × implementation (3 fasthttp, 3 fiber v2, 1 fiber v3 version;
/// default, stripped, PIE): the socket parser counts them exactly. See `check_case` for the
/// bug each assertion catches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fasthttp_and_fiber_are_counted_exactly_by_the_socket_parser() {
    require_root();
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 9, "3 module sets × 3 variants");
    let running = start_socket_collector(Config::default()).await;
    let prefix = unique_prefix("fh");
    let mut checked = 0;
    for (i, (set, variant, path)) in fixtures.iter().enumerate() {
        for (j, &(imp, new_only)) in IMPLS.iter().enumerate() {
            if new_only && set != "new" {
                continue;
            }
            let name = format!("{set}-{variant}-{imp}");
            let name_ = name.clone();
            let cgroup = HostCgroup::create(&prefix, &format!("{i}-{j}")).expect("cgroup");
            let (c, p) = (running.addr, path.clone());
            // Blocking client I/O off the runtime the collector runs on.
            let n = tokio::task::spawn_blocking(move || check_case(c, &cgroup, &p, imp, &name_))
                .await
                .expect("case");
            eprintln!("{name}: {n} requests, every count exact");
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 3 + 2 * 3 * 2, "implementation × build cases");
    running.shutdown().await;
}

//! The API as served (`api::server`): bearer token on /v1/*, TLS, and the limits that keep
//! /metrics answering under slowloris clients and a flood of API calls. Loopback only.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use collector::{
    api::{
        self, ApiState,
        server::{Server, ServerConfig},
    },
    export::Metrics,
    verdict::{Engine, VerdictConfig, rules::State},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

const TOKEN: &str = "s3cr3t-token-for-tests";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "collector-api-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Running {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _stop: oneshot::Sender<()>,
}

async fn start(config: ServerConfig) -> Running {
    let metrics = Arc::new(Metrics::new(100));
    let engine = Engine::new(VerdictConfig::default(), 1, None);
    let state = ApiState {
        metrics: metrics.clone(),
        probes: Arc::new(Vec::new()),
        go_http: Arc::new(Mutex::new(Vec::new())),
        verdicts: engine.shared(),
        readiness_fail_on: Arc::new(vec![State::Unhealthy]),
        kubernetes: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server =
        Server::prepare(api::router(state), &config, addr, &metrics).expect("server prepared");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        server
            .run(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
    });
    Running {
        addr,
        metrics,
        _stop: stop,
    }
}

/// A connection from `from` (any 127.0.0.0/8 address is local): clients on other addresses
/// stand for other hosts.
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((from, 0)))?;
    sock.connect(addr).await
}

/// One request on a fresh connection; (status, headers + body).
async fn request(addr: SocketAddr, raw: &str) -> (u16, String) {
    request_from([127, 0, 0, 1], addr, raw).await
}

async fn request_from(from: [u8; 4], addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = connect_from(from, addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    get_from([127, 0, 0, 1], addr, path, auth).await
}

async fn get_from(
    from: [u8; 4],
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
) -> (u16, String) {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    request_from(
        from,
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await
}

/// Catches: /v1/* (pids, executable and cgroup paths) served to anyone; a wrong token accepted;
/// /metrics or the liveness endpoints closed to scrapers and kubelet probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_v1_and_leaves_metrics_open() {
    let dir = TempDir::new("token");
    let file = dir.0.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write token");
    let r = start(ServerConfig {
        token_file: Some(file),
        ..ServerConfig::default()
    })
    .await;
    for path in [
        "/v1/workloads",
        "/v1/probes",
        "/v1/go-http",
        "/v1/pods/x/health",
        "/nope",
    ] {
        let (status, text) = get(r.addr, path, None).await;
        assert_eq!(status, 401, "{path} without a token: {text}");
        assert!(text.contains("www-authenticate: Bearer"), "{text}");
        for wrong in [
            "Bearer wrong",
            "Bearer s3cr3t-token-for-test",
            "Bearer s3cr3t-token-for-testsX",
            "Basic czNjcjN0",
            "Bearer",
            TOKEN,
        ] {
            assert_eq!(
                get(r.addr, path, Some(wrong)).await.0,
                401,
                "{path} {wrong:?}"
            );
        }
    }
    let bearer = format!("Bearer {TOKEN}");
    for (path, want) in [("/v1/workloads", 200), ("/v1/probes", 200), ("/nope", 404)] {
        assert_eq!(get(r.addr, path, Some(&bearer)).await.0, want, "{path}");
        assert_eq!(
            get(r.addr, path, Some(&format!("bearer {TOKEN}"))).await.0,
            want,
            "{path}: the scheme is case-insensitive"
        );
    }
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(r.addr, path, None).await.0, 200, "{path} stays open");
    }

    // No token configured: everything open, as before.
    let open = start(ServerConfig::default()).await;
    assert_eq!(get(open.addr, "/v1/workloads", None).await.0, 200);
}

#[test]
fn bad_token_files_are_refused_at_start() {
    let dir = TempDir::new("badtoken");
    let metrics = Metrics::new(1);
    for (name, content) in [
        ("empty", "\n"),
        ("spaces", "a b"),
        ("long", &"x".repeat(5000)),
    ] {
        let f = dir.0.join(name);
        std::fs::write(&f, content).expect("write");
        let c = ServerConfig {
            token_file: Some(f),
            ..ServerConfig::default()
        };
        let router = axum::Router::new();
        assert!(
            Server::prepare(router, &c, "127.0.0.1:1".parse().expect("addr"), &metrics).is_err(),
            "{name} accepted"
        );
    }
}

/// Catches: request headers bounded only by hyper's default buffer (~400 KiB per connection,
/// chosen by the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused() {
    let r = start(ServerConfig::default()).await;
    let big = "a".repeat(64 * 1024);
    let (status, _) = request(
        r.addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431, "64 KiB of headers");
}

/// Catches: idle connections kept forever (each holds a slot of the connection cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_header_timeout() {
    let r = start(ServerConfig {
        header_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    })
    .await;
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    let t0 = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed by the server within 10 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    println!("idle connection closed after {:?}", t0.elapsed());
    assert!(t0.elapsed() >= Duration::from_millis(400));

    // Between keep-alive requests too.
    let mut s = TcpStream::connect(r.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let t0 = Instant::now();
    let r2 = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(r2.is_ok(), "keep-alive connection never closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    println!("idle keep-alive connection closed after {:?}", t0.elapsed());
}

/// Catches: no TLS on the API, or a TLS setup that cannot complete a handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_and_request_with_a_test_certificate() {
    let dir = TempDir::new("tls");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (the test generates its certificate with it)");
    assert!(out.status.success(), "openssl: {out:?}");
    let r = start(ServerConfig {
        tls: Some((cert.clone(), key)),
        ..ServerConfig::default()
    })
    .await;

    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).expect("pem") {
        roots.add(c.expect("cert")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(r.addr).await.expect("connect");
    let t0 = Instant::now();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    println!("TLS handshake in {:?}", t0.elapsed());
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Plain HTTP on the TLS port gets no answer.
    let (status, _) = get(r.addr, "/healthz", None).await;
    assert_eq!(status, 0);
}

/// Latency of /metrics on fresh connections from 127.0.0.2 (the scraper's host); panics if one
/// takes longer than a generous bound. Returns sorted latencies.
async fn metrics_latencies(addr: SocketAddr, samples: usize) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        let (status, text) = tokio::time::timeout(
            Duration::from_secs(10),
            get_from([127, 0, 0, 2], addr, "/metrics", None),
        )
        .await
        .expect("/metrics answered within 10 s");
        assert_eq!(status, 200, "{text:.300}");
        lat.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lat.sort();
    lat
}

fn summary(lat: &[Duration]) -> String {
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    format!(
        "n={} p50={:?} p95={:?} max={:?}",
        lat.len(),
        p(0.5),
        p(0.95),
        lat[lat.len() - 1]
    )
}

/// Catches: slowloris clients (many connections trickling headers byte by byte) and a flood of
/// API calls holding every connection or starving the runtime, so /metrics stops answering.
/// The attacker (127.0.0.1, a tenant's pod) and the flood (127.0.0.3) are other hosts than the
/// scraper (127.0.0.2), as on a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_an_api_flood_leave_metrics_responsive() {
    const SLOW: usize = 400;
    let r = start(ServerConfig {
        max_connections: 128,
        header_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    })
    .await;
    let baseline = metrics_latencies(r.addr, 20).await;
    println!("baseline /metrics: {}", summary(&baseline));

    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Slowloris: SLOW connections (3× the cap), each sending one header byte every 200 ms and
    // reconnecting when cut off.
    for i in 0..SLOW {
        let (stop, closed, addr) = (stop.clone(), closed.clone(), r.addr);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((i % 50) as u64 * 10)).await;
            let line = b"GET /v1/workloads HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = connect_from([127, 0, 0, 1], addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                for b in line.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if s.write_all(&[*b]).await.is_err() {
                        closed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    // Flood: 8 clients calling /v1/workloads back to back.
    let flood = Arc::new(AtomicU64::new(0));
    for _ in 0..8 {
        let (stop, flood, addr) = (stop.clone(), flood.clone(), r.addr);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get_from([127, 0, 0, 3], addr, "/v1/workloads", None)
                    .await
                    .0
                    == 200
                {
                    flood.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let under = metrics_latencies(r.addr, 60).await;
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let text = r.metrics.render();
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
    };
    println!(
        "under attack /metrics: {} ({} slowloris connections, cap 128; {} API calls in {:?}; \
         slow connections cut {}; shed {}, rejected {})",
        summary(&under),
        SLOW,
        flood.load(Ordering::Relaxed),
        elapsed,
        closed.load(Ordering::Relaxed),
        counter("collector_api_connections_shed_total"),
        counter("collector_api_connections_rejected_total"),
    );
    assert!(
        counter("collector_api_connections_shed_total") > 0,
        "the cap was never reached: the test did not attack"
    );
    assert!(flood.load(Ordering::Relaxed) > 0, "the flood got no answer");
    // Without a header timeout (axum::serve as before) not one slow connection is ever cut.
    assert!(
        closed.load(Ordering::Relaxed) > 0,
        "slowloris connections were never cut off"
    );
}

//! Kernel-side diagnostics (aya-log) switched on and off through the API while the collector
//! runs, and the kernel's lines arriving in the collector's own log with their target.
//!
//! The diagnosable events: a reset sent from a TIME_WAIT socket (`tcp:tcp_send_reset` hands the
//! program an `inet_timewait_sock` on ≥ 6.10). `sock::owner_of` cannot attribute it, counts
//! `not_full_socket` and, when asked, says so. A test can make one on loopback at will: the
//! client closes after a half-close (its socket becomes a timewait socket in FIN_WAIT2) and the
//! server writes to it, which the timewait socket answers with a reset. And a request the
//! socket-level HTTP parser could not parse because every scratch slot of its CPU was held (the
//! test holds them, as nested parses would): it counts `http_wire_busy`, charges the request as
//! lost and, when asked, says so.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use collector::{app, config::Config, events::kernel_log};
use collector_common::maps::WIRE_SLOTS;
use integration_tests::{
    kernel, metric_sum, require_root, scrape, start_socket_collector, wait_until, wait_until_ok,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
/// Resets made per round.
const RESETS: u64 = 5;
/// What `sock::owner_of` says about a timewait socket (`TCP_TIME_WAIT` = 6), as the collector
/// logs it (tracing's text format, without time and colour).
const LINE: &str = " INFO collector::kernel::sock: not_full_socket: socket in state 6 has no \
                    readable owner, charged to unattributed";

/// The collector's log, captured: the fmt layer the binary installs, writing here.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// The log captured in this process, through the filter the binary builds from a quiet
    /// operator setting (kernel lines must pass it). Installed once: the tests of this file share
    /// one process, and a subscriber can be set only once.
    fn get() -> Captured {
        static LOG: OnceLock<Captured> = OnceLock::new();
        LOG.get_or_init(|| {
            let log = Captured::default();
            let writer = log.clone();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(kernel_log::log_filter(
                    "warn",
                )))
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .without_time()
                .init();
            log
        })
        .clone()
    }

    /// Where the log ends now: lines after it are this test's.
    fn mark(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn count(&self, line: &str) -> usize {
        self.count_since(0, line)
    }

    fn count_since(&self, mark: usize, line: &str) -> usize {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes[mark..])
            .lines()
            .filter(|l| *l == line)
            .count()
    }

    fn kernel_lines_since(&self, mark: usize) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes[mark..])
            .lines()
            .filter(|l| l.contains(kernel_log::TARGET_PREFIX))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `n` resets sent by timewait sockets, on loopback, as `tcp_faults half-close` makes them: the
/// client half-closes and reads the server's byte (which acknowledges its FIN: FIN_WAIT2), then
/// closes, which turns it into a timewait socket at once; the server's next write is answered
/// with a reset from it. (Closing without reading that byte first left the reset unattributed
/// with no socket at all, here, for most connections.)
fn resets_from_time_wait(n: u64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    for _ in 0..n {
        let mut client = TcpStream::connect(addr).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.shutdown(Shutdown::Write).expect("half-close");
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).expect("read"), 0, "EOF after the FIN");
        server.write_all(b"y").expect("write");
        client.read_exact(&mut buf).expect("the server's byte");
        drop(client);
        server.write_all(b"x").expect("write");
        // The reset arrives: the next read fails (or reports EOF if it raced the reset).
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = server.read(&mut buf);
    }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn not_full_socket_drops(addr: SocketAddr) -> u64 {
    metric_sum(
        &scrape(addr),
        "collector_kernel_drops_total",
        &[("reason", "not_full_socket")],
    )
    .unwrap_or(0.0) as u64
}

/// Makes a round of resets and waits until the kernel counted them (the program ran).
async fn resets_counted(addr: SocketAddr) {
    let before = not_full_socket_drops(addr);
    tokio::task::spawn_blocking(|| resets_from_time_wait(RESETS))
        .await
        .expect("resets");
    wait_until(
        DEADLINE,
        POLL,
        "the resets counted as not_full_socket",
        || async { (not_full_socket_drops(addr) >= before + RESETS).then_some(()) },
    )
    .await;
}

/// Off at start: the kernel writes nothing. On through the API: the exact line arrives, with
/// its target. Off again: the same event no longer produces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_log_is_switched_on_and_off_through_the_api() {
    require_root();
    if !kernel::passive_resets_traced() {
        eprintln!(
            "{}: resets from TIME_WAIT are not traced by this kernel (< 6.10); nothing to provoke",
            kernel::release()
        );
        return;
    }
    let log = Captured::get();
    let start = log.mark();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..Config::default()
    };
    config.http.socket = false;
    assert_eq!(
        config.kernel_log,
        kernel_log::KernelLogLevel::Off,
        "off by default"
    );
    let running = app::start(config).await.expect("collector starts");
    let addr = running.addr;

    assert_eq!(
        request(addr, "GET", "/v1/debug/kernel-log").await,
        (200, r#"{"level":"off"}"#.to_owned())
    );
    resets_counted(addr).await;
    assert_eq!(
        log.kernel_lines_since(start),
        Vec::<String>::new(),
        "no kernel line while off"
    );

    assert_eq!(
        request(addr, "PUT", "/v1/debug/kernel-log?level=info").await,
        (200, r#"{"level":"info","previous":"off"}"#.to_owned())
    );
    resets_counted(addr).await;
    wait_until(
        DEADLINE,
        POLL,
        "the kernel's line in the collector's log",
        || async { (log.count(LINE) >= 1).then_some(()) },
    )
    .await;

    assert_eq!(
        request(addr, "PUT", "/v1/debug/kernel-log?level=off").await,
        (200, r#"{"level":"off","previous":"info"}"#.to_owned())
    );
    // Lines written before the switch have been read by the time a further round is counted.
    resets_counted(addr).await;
    let seen = log.count(LINE);
    resets_counted(addr).await;
    assert_eq!(log.count(LINE), seen, "no new line once off");

    assert_eq!(
        request(addr, "PUT", "/v1/debug/kernel-log?level=loud")
            .await
            .0,
        400,
        "an unknown level is refused"
    );
    assert_eq!(
        request(addr, "GET", "/v1/debug/kernel-log").await,
        (200, r#"{"level":"off"}"#.to_owned()),
        "a refused level changes nothing"
    );
    running.shutdown().await;
}

/// A request sent whole in one segment (no delay, loopback); its length is in the line.
const BUSY_REQUEST: &str = "GET /ok?kernel-log=busy HTTP/1.1\r\nHost: t\r\n\r\n";

fn busy_drops(addr: SocketAddr) -> u64 {
    metric_sum(
        &scrape(addr),
        "collector_kernel_drops_total",
        &[("reason", "http_wire_busy")],
    )
    .unwrap_or(0.0) as u64
}

/// Sets the scratch-slot bits held on every CPU, both directions, as parses interrupted there
/// would (`http_wire::enter` claims a free one; with none free the segment goes unparsed).
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

/// `BUSY_REQUEST` on a new connection to a listener of this test, read by it; waits until the
/// kernel counted the unparsed segment. The counter is the host's: other sockets may add to it
/// while the slots are held, never take away.
async fn busy_counted(collector: SocketAddr) {
    let before = busy_drops(collector);
    tokio::task::spawn_blocking(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        client.set_nodelay(true).expect("nodelay");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(BUSY_REQUEST.as_bytes()).expect("send");
        let mut got = vec![0; BUSY_REQUEST.len()];
        server.read_exact(&mut got).expect("the request");
    })
    .await
    .expect("request");
    wait_until(
        DEADLINE,
        POLL,
        "the unparsed request counted as http_wire_busy",
        || async { (busy_drops(collector) > before).then_some(()) },
    )
    .await;
}

/// The socket parser's own line: off, a request it could not parse writes nothing; at `info`,
/// the exact line, with how many slots, which direction, the segment's length and the one
/// request charged as lost (a new connection's request: no state to resynchronise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_parser_says_when_it_had_no_slot() {
    require_root();
    let log = Captured::get();
    let start = log.mark();
    let line = format!(
        " INFO collector::kernel::http_wire: http_wire_busy: all {WIRE_SLOTS} request scratch \
         slots of this CPU in use, a segment of {} bytes went unparsed, 1 requests charged as \
         lost",
        BUSY_REQUEST.len()
    );
    let running = start_socket_collector(Config::default()).await;
    let addr = running.addr;
    let ebpf = running.ebpf();
    hold_slots(&ebpf, (1 << WIRE_SLOTS) - 1);

    busy_counted(addr).await;
    assert_eq!(
        log.kernel_lines_since(start),
        Vec::<String>::new(),
        "no kernel line while off"
    );

    assert_eq!(
        request(addr, "PUT", "/v1/debug/kernel-log?level=info").await,
        (200, r#"{"level":"info","previous":"off"}"#.to_owned())
    );
    let on = log.mark();
    busy_counted(addr).await;
    wait_until_ok(
        DEADLINE,
        POLL,
        "the parser's line in the collector's log",
        || async {
            if log.count_since(on, &line) >= 1 {
                Ok(())
            } else {
                Err(log.kernel_lines_since(on))
            }
        },
    )
    .await;
    hold_slots(&ebpf, 0);
    // Since the start: the ring is read in order, so a line the first (unlogged) request had
    // written would have arrived before this one. (The test's API requests went unparsed too,
    // with other lengths.)
    assert_eq!(
        log.count_since(start, &line),
        1,
        "two requests unparsed, one line: the one logged"
    );
    running.shutdown().await;
}

//! Kernel-side diagnostics (aya-log) switched on and off through the API while the collector
//! runs, and the kernel's lines arriving in the collector's own log with their target.
//!
//! The diagnosable event: a reset sent from a TIME_WAIT socket (`tcp:tcp_send_reset` hands the
//! program an `inet_timewait_sock` on ≥ 6.10). `sock::owner_of` cannot attribute it, counts
//! `not_full_socket` and, when asked, says so. A test can make one on loopback at will: the
//! client closes after a half-close (its socket becomes a timewait socket in FIN_WAIT2) and the
//! server writes to it, which the timewait socket answers with a reset.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use collector::{app, config::Config, events::kernel_log};
use integration_tests::{kernel, metric_sum, require_root, scrape, wait_until};
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
    fn count(&self, line: &str) -> usize {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| *l == line)
            .count()
    }

    fn kernel_lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes)
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
    let log = Captured::default();
    let writer = log.clone();
    // The filter the binary builds from a quiet operator setting: kernel lines must pass it.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(kernel_log::log_filter(
            "warn",
        )))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .init();
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
        log.kernel_lines(),
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

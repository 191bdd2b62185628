//! `pod-traffic`: a tiny, dependency-free TCP traffic tool for the integration tests.
//!
//! It is started inside test pods (network namespace + cgroup) and in the root namespace, and
//! produces exactly known amounts of traffic so that tests can compare what the collector
//! observed against what really happened. Only `std` is used so that it builds anywhere.
//!
//! ```text
//! pod-traffic serve <bind addr:port> <bytes_per_conn>
//! pod-traffic fetch <addr:port> <connections> <parallelism>
//! pod-traffic connect-refused <addr:port> <count>
//! pod-traffic send <addr:port> <bytes>
//! pod-traffic sink <bind addr:port>
//! ```
//!
//! Exit codes: 0 success, 1 the operation failed (partly), 2 bad usage.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const USAGE: &str = "usage:
  pod-traffic serve <bind addr:port> <bytes_per_conn>
      accept connections; send exactly <bytes_per_conn> bytes on each, then half-close and
      read to EOF; prints `listening <addr>` once bound; runs until killed
  pod-traffic fetch <addr:port> <connections> <parallelism>
      open <connections> connections (at most <parallelism> at a time), read each to EOF;
      prints `bytes=<total> conns=<ok> failed=<n>`; exit 0 if all succeeded
  pod-traffic connect-refused <addr:port> <count>
      attempt <count> connects that should be refused; prints `refused=<n> other=<m>`;
      exit 0 if all were refused
  pod-traffic send <addr:port> <bytes>
      connect, write <bytes> bytes, half-close, read to EOF; prints `sent=<n>`
  pod-traffic sink <bind addr:port>
      accept connections and read each to EOF; prints `listening <addr>`; runs until killed";

/// Size of one write.
const CHUNK: usize = 64 * 1024;
/// Read timeout of clients.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect timeout of clients.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            eprintln!("pod-traffic: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Io(context, err)) => {
            eprintln!("pod-traffic: {context}: {err}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Io(String, io::Error),
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::Usage(msg.into())
}

fn run(args: &[&str]) -> Result<ExitCode, Failure> {
    let Some((&command, rest)) = args.split_first() else {
        return Err(usage("missing subcommand"));
    };
    match command {
        "serve" => {
            let [bind, bytes] = exact::<2>(command, rest)?;
            let bind = parse_addr(bind)?;
            let bytes = parse_u64("bytes_per_conn", bytes)?;
            serve(bind, bytes)
        }
        "fetch" => {
            let [addr, connections, parallelism] = exact::<3>(command, rest)?;
            let addr = parse_addr(addr)?;
            let connections = parse_u64("connections", connections)?;
            let parallelism = parse_u64("parallelism", parallelism)?;
            if parallelism == 0 {
                return Err(usage("parallelism must be at least 1"));
            }
            Ok(fetch(addr, connections, parallelism))
        }
        "connect-refused" => {
            let [addr, count] = exact::<2>(command, rest)?;
            let addr = parse_addr(addr)?;
            let count = parse_u64("count", count)?;
            Ok(connect_refused(addr, count))
        }
        "send" => {
            let [addr, bytes] = exact::<2>(command, rest)?;
            let addr = parse_addr(addr)?;
            let bytes = parse_u64("bytes", bytes)?;
            send(addr, bytes)
        }
        "sink" => {
            let [bind] = exact::<1>(command, rest)?;
            let bind = parse_addr(bind)?;
            sink(bind)
        }
        "-h" | "--help" | "help" => {
            say(USAGE);
            Ok(ExitCode::SUCCESS)
        }
        other => Err(usage(format!("unknown subcommand `{other}`"))),
    }
}

fn exact<'a, const N: usize>(command: &str, rest: &[&'a str]) -> Result<[&'a str; N], Failure> {
    <[&str; N]>::try_from(rest).map_err(|_| {
        usage(format!(
            "`{command}` takes {N} argument(s), got {}",
            rest.len()
        ))
    })
}

fn parse_u64(what: &str, s: &str) -> Result<u64, Failure> {
    s.parse::<u64>()
        .map_err(|e| usage(format!("{what}: `{s}` is not a non-negative integer: {e}")))
}

fn parse_addr(s: &str) -> Result<SocketAddr, Failure> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // Host names such as `localhost:80`.
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| usage(format!("`{s}` resolves to no address"))),
        Err(e) => Err(usage(format!("`{s}` is not an addr:port: {e}"))),
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Failure {
    let context = context.into();
    move |e| Failure::Io(context, e)
}

/// Prints one line to stdout; a closed stdout is reported, never a panic.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        eprintln!("pod-traffic: stdout: {e}");
    }
}

/// Prints `listening <addr>` and flushes, so that a test waiting for the line sees it.
fn announce(listener: &TcpListener) -> Result<(), Failure> {
    let local = listener.local_addr().map_err(io_err("local_addr"))?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening {local}").map_err(io_err("stdout"))?;
    out.flush().map_err(io_err("stdout"))
}

fn serve(bind: SocketAddr, bytes_per_conn: u64) -> Result<ExitCode, Failure> {
    let listener = TcpListener::bind(bind).map_err(io_err(format!("bind {bind}")))?;
    announce(&listener)?;
    accept_forever(&listener, move |stream| serve_one(stream, bytes_per_conn))
}

fn sink(bind: SocketAddr) -> Result<ExitCode, Failure> {
    let listener = TcpListener::bind(bind).map_err(io_err(format!("bind {bind}")))?;
    announce(&listener)?;
    accept_forever(&listener, |mut stream| {
        drain(&mut stream)?;
        Ok(())
    })
}

fn accept_forever(
    listener: &TcpListener,
    handler: impl Fn(TcpStream) -> io::Result<()> + Send + Sync + Copy + 'static,
) -> Result<ExitCode, Failure> {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let spawned =
                    thread::Builder::new()
                        .name(format!("conn-{peer}"))
                        .spawn(move || {
                            if let Err(e) = handler(stream) {
                                eprintln!("pod-traffic: connection from {peer}: {e}");
                            }
                        });
                if let Err(e) = spawned {
                    eprintln!("pod-traffic: cannot spawn a connection thread: {e}");
                }
            }
            // Transient accept errors (ECONNABORTED, EMFILE...) must not kill the server.
            Err(e) => {
                eprintln!("pod-traffic: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve_one(mut stream: TcpStream, bytes: u64) -> io::Result<()> {
    write_bytes(&mut stream, bytes)?;
    stream.shutdown(Shutdown::Write)?;
    drain(&mut stream)?;
    Ok(())
}

/// Writes exactly `bytes` bytes in chunks of at most [`CHUNK`].
fn write_bytes(stream: &mut TcpStream, bytes: u64) -> io::Result<()> {
    let buf = [0x5a_u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads to EOF, returns the number of bytes read.
fn drain(stream: &mut TcpStream) -> io::Result<u64> {
    let mut buf = vec![0_u8; CHUNK];
    let mut total = 0_u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    Ok(stream)
}

fn fetch(addr: SocketAddr, connections: u64, parallelism: u64) -> ExitCode {
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers = parallelism.min(connections);
    let mut handles = Vec::new();
    for w in 0..workers {
        let (next, bytes, ok, failed) = (next.clone(), bytes.clone(), ok.clone(), failed.clone());
        let spawned = thread::Builder::new()
            .name(format!("fetch-{w}"))
            .spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < connections {
                    let result = connect(addr).and_then(|mut s| drain(&mut s));
                    match result {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("pod-traffic: fetch {addr}: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => eprintln!("pod-traffic: cannot spawn a fetch thread: {e}"),
        }
    }
    for h in handles {
        if h.join().is_err() {
            eprintln!("pod-traffic: a fetch thread panicked");
        }
    }
    let (bytes, ok) = (bytes.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
    // Connections never attempted (no worker thread could be spawned) count as failed.
    let failed = connections - ok;
    say(&format!("bytes={bytes} conns={ok} failed={failed}"));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn connect_refused(addr: SocketAddr, count: u64) -> ExitCode {
    let (mut refused, mut other) = (0_u64, 0_u64);
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
            Err(e) => {
                eprintln!("pod-traffic: connect {addr}: {e}");
                other += 1;
            }
            Ok(_) => {
                eprintln!("pod-traffic: connect {addr}: unexpectedly accepted");
                other += 1;
            }
        }
    }
    say(&format!("refused={refused} other={other}"));
    if other == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn send(addr: SocketAddr, bytes: u64) -> Result<ExitCode, Failure> {
    let mut stream = connect(addr).map_err(io_err(format!("connect {addr}")))?;
    write_bytes(&mut stream, bytes).map_err(io_err(format!("send to {addr}")))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(io_err(format!("shutdown {addr}")))?;
    drain(&mut stream).map_err(io_err(format!("read from {addr}")))?;
    say(&format!("sent={bytes}"));
    Ok(ExitCode::SUCCESS)
}

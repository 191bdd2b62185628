//! `tcp-faults`: TCP failure cases with exactly known outcomes, for the integration tests
//! (tests/tests/tcp.rs). Started inside test pods (network namespace + cgroup).
//!
//! ```text
//! tcp-faults half-close-serve <bind addr:port> <connections>
//! tcp-faults half-close <addr:port> <connections>
//! tcp-faults connect-timeout <addr:port> <count>
//! ```
//!
//! `half-close` / `half-close-serve` make the client's socket send a reset from TIME_WAIT (a
//! socket that is not a full socket any more): the client half-closes, reads the server's one
//! byte — which acknowledges its FIN, so the socket is in FIN_WAIT2 — and closes; the kernel
//! turns a closed FIN_WAIT2 socket into a timewait socket at once (`tcp_close`, `tcp_fin_time`
//! ≤ `TCP_TIMEWAIT_LEN`). When the server then writes, the timewait socket answers with a reset
//! (`tcp_timewait_state_process`: new data after a half-duplex close → `TCP_TW_RST`); the
//! server sees it (`SO_ERROR`) and its next write fails with EPIPE (the socket was in
//! CLOSE_WAIT). Per connection, exactly: client 1 reset sent (from TIME_WAIT), 1 close;
//! server 2 successful sends, 1 reset received, 1 EPIPE, 1 close.
//!
//! Exit codes: 0 success, 1 the operation failed (partly), 2 bad usage.

use std::{
    io::{self, BufRead as _, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::ExitCode,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

const USAGE: &str = "usage:
  tcp-faults half-close-serve <bind addr:port> <connections>
      prints `listening <addr>`; accepts <connections> connections, reads each to EOF and
      writes one byte; after a line on stdin, writes once more on each, waits for the peer's
      reset and writes again; prints `rst=<n> epipe=<n>`
  tcp-faults half-close <addr:port> <connections>
      per connection: connect, half-close, read one byte, close (the socket goes to TIME_WAIT);
      prints `closed=<n>`
  tcp-faults connect-timeout <addr:port> <count>
      <count> blocking connects at once with TCP_SYNCNT=1 (give up after ~3 s); prints
      `timed_out=<n> other=<m>`";

/// How long the server waits for a reset before calling the case failed.
const RESET_DEADLINE: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [cmd, addr, n] => n
            .parse::<usize>()
            .ok()
            .map(|n| (cmd.as_str(), addr.as_str(), n)),
        _ => None,
    };
    let Some((cmd, addr, n)) = parsed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd {
        "half-close-serve" => half_close_serve(addr, n),
        "half-close" => half_close(addr, n),
        "connect-timeout" => connect_timeout(addr, n),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tcp-faults {cmd}: {e}");
            ExitCode::from(1)
        }
    }
}

fn half_close_serve(bind: &str, n: usize) -> io::Result<bool> {
    let listener = TcpListener::bind(bind)?;
    println!("listening {}", listener.local_addr()?);
    io::stdout().flush()?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut s, _) = listener.accept()?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        if !rest.is_empty() {
            return Err(io::Error::other("the client sent data"));
        }
        // Acknowledges the client's FIN: its socket is in FIN_WAIT2 once it reads this.
        s.write_all(b"E")?;
        conns.push(s);
    }
    // The test says when every client socket is in TIME_WAIT.
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    let (mut rst, mut epipe) = (0, 0);
    for mut s in conns {
        s.write_all(b"X")?;
        let deadline = Instant::now() + RESET_DEADLINE;
        // SO_ERROR: the reset sets sk_err (EPIPE in CLOSE_WAIT); reading it clears it.
        loop {
            if s.take_error()?.is_some() {
                rst += 1;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(2));
        }
        match s.write(b"Y") {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => epipe += 1,
            other => eprintln!("write after the reset: {other:?}"),
        }
    }
    println!("rst={rst} epipe={epipe}");
    Ok(rst == n && epipe == n)
}

fn half_close(addr: &str, n: usize) -> io::Result<bool> {
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let mut closed = 0;
    for _ in 0..n {
        let mut s = TcpStream::connect(addr)?;
        s.shutdown(Shutdown::Write)?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte)?;
        // Nothing unread (that would send a reset from the full socket instead): closing a
        // FIN_WAIT2 socket leaves a timewait socket behind.
        drop(s);
        closed += 1;
    }
    println!("closed={closed}");
    Ok(closed == n)
}

fn connect_timeout(addr: &str, n: usize) -> io::Result<bool> {
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::other("IPv4 only"));
    };
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                blocking_connect_syncnt1(v4)
            })
        })
        .collect();
    let (mut timed_out, mut other) = (0, 0);
    for t in threads {
        match t.join() {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ETIMEDOUT) => timed_out += 1,
            Ok(r) => {
                eprintln!("connect: {r:?}");
                other += 1;
            }
            Err(_) => other += 1,
        }
    }
    println!("timed_out={timed_out} other={other}");
    Ok(timed_out == n)
}

/// A blocking connect that the kernel itself gives up on (SYN_SENT → CLOSE with ETIMEDOUT)
/// after one SYN retransmission; std's `connect_timeout` would close a SYN_SENT socket itself.
fn blocking_connect_syncnt1(addr: std::net::SocketAddrV4) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a descriptor owned by `fd`.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::connect(
            fd.as_raw_fd(),
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

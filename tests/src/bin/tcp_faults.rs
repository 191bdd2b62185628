//! `tcp-faults`: TCP failure cases with exactly known outcomes, for the integration tests
//! (tests/tests/tcp.rs). Started inside test pods (network namespace + cgroup).
//!
//! ```text
//! tcp-faults half-close-serve <bind addr:port> <connections>
//! tcp-faults half-close <addr:port> <connections>
//! tcp-faults connect-timeout <addr:port> <count>
//! tcp-faults blocked-senders <threads>
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
      `timed_out=<n> other=<m>`
  tcp-faults blocked-senders <threads>
      <threads> threads each block in one send (a loopback peer that does not read yet), all
      at once; then the peers read, and once every first send returned, each thread sends
      once more, one at a time; prints `blocked=<n> sends=<n>` (send calls made)";

/// How long the server waits for a reset before calling the case failed.
const RESET_DEADLINE: Duration = Duration::from_secs(20);
/// How long `blocked-senders` waits for every thread to block.
const BLOCK_DEADLINE: Duration = Duration::from_secs(120);
/// What each blocked thread tries to send in its one call (far more than the small buffers
/// hold, so the call waits for the peer).
const BLOCKED_SEND: usize = 1 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [cmd, addr, n] => n
            .parse::<usize>()
            .ok()
            .map(|n| (cmd.as_str(), addr.as_str(), n)),
        [cmd, n] if cmd == "blocked-senders" => {
            n.parse::<usize>().ok().map(|n| (cmd.as_str(), "", n))
        }
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
        "blocked-senders" => blocked_senders(n),
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

/// Every thread blocks inside one `tcp_sendmsg` at the same time (its peer does not read, the
/// buffers are small), which is what exhausts a kretprobe's instances (`maxactive`); then the
/// peers read, the calls return, and each thread sends once more — the entry that finds the
/// entry of a call whose return was missed.
fn blocked_senders(n: usize) -> io::Result<bool> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    set_buf(listener.as_raw_fd(), libc::SO_RCVBUF)?;
    let addr = listener.local_addr()?;
    let go = Arc::new(Barrier::new(n + 1));
    // The second sends wait until every first send returned, and go one at a time: a call
    // then never finds the kretprobe's instances taken, so only first calls lose returns.
    let first_done = Arc::new(Barrier::new(n));
    let one_at_a_time = Arc::new(std::sync::Mutex::new(()));
    let senders: Vec<_> = (0..n)
        .map(|_| {
            let (go, first_done, one_at_a_time) =
                (go.clone(), first_done.clone(), one_at_a_time.clone());
            thread::spawn(move || -> io::Result<usize> {
                let mut s = TcpStream::connect(addr)?;
                set_buf(s.as_raw_fd(), libc::SO_SNDBUF)?;
                go.wait();
                s.write_all(&vec![0u8; BLOCKED_SEND])?;
                first_done.wait();
                let _turn = one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
                s.write_all(b"!")?;
                Ok(2)
            })
        })
        .collect();
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        peers.push(listener.accept()?.0);
    }
    go.wait();
    // Blocked: every sender thread sleeps in the socket's wait for memory.
    let deadline = Instant::now() + BLOCK_DEADLINE;
    let blocked = loop {
        let waiting = std::fs::read_dir("/proc/self/task")?
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("wchan"))
                    .is_ok_and(|w| w == "sk_stream_wait_memory" || w == "wait_woken")
            })
            .count();
        if waiting >= n || Instant::now() > deadline {
            break waiting;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let readers: Vec<_> = peers
        .into_iter()
        .map(|mut p| {
            thread::spawn(move || {
                let mut sink = Vec::new();
                p.read_to_end(&mut sink).map(|_| sink.len())
            })
        })
        .collect();
    let mut sends = 0;
    for s in senders {
        match s.join() {
            Ok(Ok(calls)) => sends += calls,
            other => eprintln!("sender: {other:?}"),
        }
    }
    for r in readers {
        let _ = r.join();
    }
    println!("blocked={blocked} sends={sends}");
    Ok(blocked >= n && sends == 2 * n)
}

fn set_buf(fd: std::os::fd::RawFd, opt: libc::c_int) -> io::Result<()> {
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt on a live descriptor with a c_int value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

//! `key-churn`: charges a steady stream of TCP events to owners that have exited, so that the
//! collector's per-owner kernel keys expire and are deleted while they are still counting.
//!
//! ```text
//! key-churn <addr:port> <children> <conns_per_child> <gap_min_ms> <gap_max_ms>
//! ```
//!
//! For each child the parent opens `conns_per_child` sockets and forks; the child connects
//! them to `addr` and writes one byte on each (so the kernel records the child as each
//! socket's owner), then exits and is reaped. The parent keeps the sockets (inherited across
//! fork) and closes them one by one with `SO_LINGER {on, 0}`: each close is an
//! ESTABLISHED → CLOSE transition plus one RST sent, both charged to the exited child. A
//! child's closes are `gap_min_ms..=gap_max_ms` apart (uniformly random), longer than the
//! collector needs to find the key idle and delete it, so every key is deleted and recreated
//! many times while closes keep arriving. Prints `closed=<n> children=<k>`; exit 0 when every
//! connect, write and close succeeded, 1 otherwise, 2 on bad usage.
//!
//! Single-threaded on purpose: it forks.

use std::{
    net::SocketAddrV4,
    os::fd::RawFd,
    process::ExitCode,
    time::{Duration, Instant},
};

const USAGE: &str =
    "usage: key-churn <ipv4 addr:port> <children> <conns_per_child> <gap_min_ms> <gap_max_ms>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = (|| {
        let [addr, children, conns, gap_min, gap_max] = args.as_slice() else {
            return None;
        };
        Some((
            addr.parse::<SocketAddrV4>().ok()?,
            children.parse::<usize>().ok()?,
            conns.parse::<usize>().ok()?,
            gap_min.parse::<u64>().ok()?,
            gap_max.parse::<u64>().ok()?,
        ))
    })();
    let Some((addr, children, conns, gap_min, gap_max)) = parsed else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if gap_min > gap_max || children == 0 || conns == 0 {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match run(addr, children, conns, gap_min, gap_max) {
        Ok(closed) => {
            println!("closed={closed} children={children}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("key-churn: {e}");
            ExitCode::from(1)
        }
    }
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn run(
    addr: SocketAddrV4,
    children: usize,
    conns: usize,
    gap_min: u64,
    gap_max: u64,
) -> Result<u64, String> {
    let want = (children * conns + 256) as libc::rlim_t;
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    // SAFETY: plain setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(os_err("setrlimit(RLIMIT_NOFILE)"));
    }
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut owned: Vec<Vec<RawFd>> = Vec::with_capacity(children);
    for _ in 0..children {
        let mut fds = Vec::with_capacity(conns);
        for _ in 0..conns {
            // SAFETY: socket(2) with constant arguments.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd < 0 {
                return Err(os_err("socket"));
            }
            fds.push(fd);
        }
        // SAFETY: this process is single-threaded; the child only makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os_err("fork"));
        }
        if pid == 0 {
            let mut code = 0;
            for &fd in &fds {
                // SAFETY: valid fd, a sockaddr_in of the right length, a one-byte buffer.
                let ok = unsafe {
                    libc::connect(
                        fd,
                        std::ptr::from_ref(&sa).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    ) == 0
                        && libc::write(fd, b"x".as_ptr().cast(), 1) == 1
                };
                if !ok {
                    code = 1;
                }
            }
            // SAFETY: leaves the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(os_err("waitpid"));
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            return Err(format!(
                "child {pid} failed to connect or write ({status:#x})"
            ));
        }
        owned.push(fds);
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // Close times: each child's sockets one after another, `gap_min..=gap_max` apart, children
    // starting at random offsets so the closes of all children interleave.
    let mut rng = XorShift::seeded();
    let mut plan: Vec<(Duration, RawFd)> = Vec::with_capacity(children * conns);
    for fds in &owned {
        let mut t = rng.below(gap_max + 1);
        for &fd in fds {
            plan.push((Duration::from_millis(t), fd));
            t += gap_min + rng.below(gap_max - gap_min + 1);
        }
    }
    plan.sort_unstable();
    let start = Instant::now();
    let mut closed = 0;
    for (at, fd) in plan {
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        // SAFETY: valid fd and a linger struct of the right length; the fd is ours to close.
        let ok = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::from_ref(&linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            ) == 0
                && libc::close(fd) == 0
        };
        if !ok {
            return Err(os_err("closing with SO_LINGER 0"));
        }
        closed += 1;
    }
    Ok(closed)
}

/// xorshift64*: enough randomness for spreading close times, no dependency.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self((t ^ u64::from(std::process::id())) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

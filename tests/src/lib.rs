//! Root-only integration-test harness.
//!
//! Integration tests really load the eBPF programs, so they need real kernel objects to observe:
//!
//! * [`Pod`]: a network namespace joined to the root namespace by a veth pair, plus a cgroup2
//!   directory shaped like the one the kubelet + containerd create for a burstable pod's
//!   container. Programs started with [`Pod::spawn`] run in both, like a container's processes.
//! * [`HostCgroup`]: a plain cgroup2 directory for client processes in the root namespace.
//!
//! Everything is removed again when the value is dropped, also when the test panics; cleanup
//! never panics, it logs what it could not undo to stderr.
//!
//! Addresses: pod `index` `i` uses 198.18.`i`.0/24 (RFC 2544 benchmarking range); the pod side
//! is 198.18.`i`.2 and the root-namespace side 198.18.`i`.1.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use integration_tests::*;
//! use std::time::Duration;
//! require_root();
//! let prefix = unique_prefix("ct");
//! let pod = Pod::create(&prefix, 1, &fake_pod_uid(1), &fake_container_id(1))?;
//! let mut server = pod.spawn(&pod_traffic_bin(), &["serve", "0.0.0.0:8080", "1000"])?;
//! let addr = read_listening(&mut server, Duration::from_secs(10))?;
//! # let _ = addr;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fmt::Debug;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};
use std::{fs, thread};

use anyhow::{Context, Result, bail, ensure};

pub mod k8s;
pub mod kernel;
pub mod otlp;

/// How long cleanup waits for killed processes to disappear before giving up on them.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(5);
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

// ---------------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------------

/// Panics unless the test runs as root. These tests build namespaces and cgroups and load eBPF;
/// skipping silently would report success for tests that never ran.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "integration tests must run as root (euid is {euid}): they create network namespaces \
         and cgroups and load eBPF programs; run them with `sudo -E cargo test -p \
         integration-tests` or `cargo xtask test`"
    );
}

/// A short run prefix, unique among live runs on this host, usable in netns, veth, cgroup and
/// nftables names: up to 4 letters of `tag`, the pid modulo 10000, `x`, a per-process counter
/// (e.g. `ct4711x0`). Prefixes whose netns or cgroup objects already exist are skipped.
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut tag: String = tag
        .chars()
        .filter(char::is_ascii_alphabetic)
        .take(4)
        .collect::<String>()
        .to_ascii_lowercase();
    if tag.is_empty() {
        tag.push('t');
    }
    let pid = std::process::id() % 10_000;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{tag}{pid}x{n}");
        if !prefix_in_use(&prefix) {
            return prefix;
        }
    }
}

fn prefix_in_use(prefix: &str) -> bool {
    if try_cgroup2_mount().is_ok_and(|m| m.join(prefix).exists()) {
        return true;
    }
    let netns_prefix = format!("{prefix}-");
    fs::read_dir("/run/netns").is_ok_and(|dir| {
        dir.flatten().any(|e| {
            e.file_name()
                .as_bytes()
                .starts_with(netns_prefix.as_bytes())
        })
    })
}

fn validate_prefix(prefix: &str) -> Result<()> {
    ensure!(
        prefix.starts_with(|c: char| c.is_ascii_alphabetic())
            && prefix.chars().all(|c| c.is_ascii_alphanumeric()),
        "run prefix `{prefix}` must be a letter followed by letters/digits (use unique_prefix)"
    );
    Ok(())
}

/// A syntactically valid, recognisable Kubernetes pod UID for test pod `n`.
pub fn fake_pod_uid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// A syntactically valid (64 hex digits) container ID for test container `n`.
pub fn fake_container_id(n: u32) -> String {
    format!("{:0>64}", format!("c0{n:x}"))
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &OsStr) -> String {
    let s = String::from_utf8_lossy(s.as_bytes());
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs a command to completion; fails with its stderr unless it exits 0. Returns stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        output.status.success(),
        "{cmd:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip` with arguments.
fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Parses `key=value key=value` (the summaries `pod-traffic` prints) into a map; tokens that are
/// not `key=<u64>` are ignored.
pub fn parse_kv(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|tok| {
            let (k, v) = tok.split_once('=')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `f` every `poll` until it returns `Some`, and returns that value. Panics after
/// `deadline` naming `what`. `f` is always tried once more at the deadline.
pub async fn wait_until<T, F, Fut>(deadline: Duration, poll: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_ok(deadline, poll, what, || {
        let fut = f();
        async move { fut.await.ok_or("None") }
    })
    .await
}

/// Like [`wait_until`], but `f` returns `Err(observed)` while the condition does not hold yet;
/// the panic message shows the last observed value.
pub async fn wait_until_ok<T, O, F, Fut>(
    deadline: Duration,
    poll: Duration,
    what: &str,
    mut f: F,
) -> T
where
    O: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, O>>,
{
    let start = Instant::now();
    let mut attempts = 0_u32;
    loop {
        attempts += 1;
        match f().await {
            Ok(v) => return v,
            Err(observed) => {
                let elapsed = start.elapsed();
                if elapsed >= deadline {
                    panic!(
                        "timed out after {elapsed:?} ({attempts} attempts) waiting for {what}; \
                         last observed: {observed:?}"
                    );
                }
                tokio::time::sleep(poll.min(deadline - elapsed)).await;
            }
        }
    }
}

/// Blocking variant of [`wait_until`] (uses `thread::sleep`; do not call on an async runtime).
pub fn wait_until_blocking<T>(
    deadline: Duration,
    poll: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    wait_until_ok_blocking(deadline, poll, what, || f().ok_or("None"))
}

/// Blocking variant of [`wait_until_ok`].
pub fn wait_until_ok_blocking<T, O: Debug>(
    deadline: Duration,
    poll: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<T, O>,
) -> T {
    let start = Instant::now();
    let mut attempts = 0_u32;
    loop {
        attempts += 1;
        match f() {
            Ok(v) => return v,
            Err(observed) => {
                let elapsed = start.elapsed();
                if elapsed >= deadline {
                    panic!(
                        "timed out after {elapsed:?} ({attempts} attempts) waiting for {what}; \
                         last observed: {observed:?}"
                    );
                }
                thread::sleep(poll.min(deadline - elapsed));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// Waits for the `listening <addr>` line of a `pod-traffic serve|sink` child and returns the
/// address. Takes the child's stdout (it must have been piped, as [`Pod::spawn`] does) and keeps
/// draining it in a background thread so the child never blocks on a full pipe.
pub fn read_listening(child: &mut Child, timeout: Duration) -> Result<SocketAddr> {
    let stdout = child
        .stdout
        .take()
        .context("child stdout is not piped (or was already taken)")?;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("listening-reader".into())
        .spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            // The receiver may be gone after a timeout; nothing to do then.
            let _ = tx.send(first);
            for _ in lines {}
        })
        .context("cannot spawn the stdout reader thread")?;
    let line = match rx.recv_timeout(timeout) {
        Ok(Some(Ok(line))) => line,
        Ok(Some(Err(e))) => bail!("reading the child's stdout: {e}"),
        Ok(None) => bail!(
            "child exited without printing `listening` (status: {:?})",
            child.try_wait().ok().flatten()
        ),
        Err(_) => bail!("child printed no `listening` line within {timeout:?}"),
    };
    let addr = line
        .strip_prefix("listening ")
        .with_context(|| format!("unexpected first line from the child: {line:?}"))?;
    addr.trim()
        .parse()
        .with_context(|| format!("bad address in {line:?}"))
}

/// Waits for `child` to exit and collects its output, killing it after `timeout`.
/// stdout/stderr are collected only if they were piped.
pub fn output_with_timeout(mut child: Child, timeout: Duration) -> Result<Output> {
    fn collect(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                // A read error just truncates what we report.
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let start = Instant::now();
    let status: ExitStatus = loop {
        if let Some(status) = child.try_wait().context("waiting for the child")? {
            break status;
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "child {} did not finish within {timeout:?}; killed it",
                child.id()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Children spawned by a [`Pod`] or [`HostCgroup`], held as pidfds: a pidfd keeps naming the
/// same process even after the pid was reaped and reused, so cleanup never kills a stranger.
#[derive(Debug, Default)]
struct Children(Mutex<Vec<(u32, Option<OwnedFd>)>>);

impl Children {
    fn track(&self, child: &Child) {
        let pid = child.id();
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let fd = if fd >= 0 {
            // SAFETY: the syscall returned a fresh fd that nobody else owns.
            Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        } else {
            eprintln!(
                "harness: pidfd_open({pid}) failed: {}; cleanup will find it by cgroup/netns",
                io::Error::last_os_error()
            );
            None
        };
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((pid, fd));
    }

    /// Sends SIGKILL to every tracked child that still runs.
    fn kill_all(&self) {
        let children = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, fd) in children.iter() {
            if let Some(fd) = fd {
                // SAFETY: valid pidfd, no siginfo, no flags.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    );
                }
            }
        }
    }

    /// Pids of tracked children that have not exited yet.
    fn running(&self) -> Vec<u32> {
        let children = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        children
            .iter()
            .filter(|(_, fd)| {
                fd.as_ref().is_some_and(|fd| {
                    let mut pfd = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, zero timeout. A pidfd polls readable on exit.
                    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
                    n == 0
                })
            })
            .map(|(pid, _)| *pid)
            .collect()
    }
}

/// Kills tracked children and whatever `members()` reports (processes in our cgroup/netns) until
/// nothing is left or the cleanup deadline passes. Returns the members still alive.
fn terminate(
    what: &str,
    children: &Children,
    members: impl Fn() -> BTreeSet<u32>,
) -> BTreeSet<u32> {
    let me = std::process::id();
    let start = Instant::now();
    children.kill_all();
    loop {
        let left: BTreeSet<u32> = members()
            .into_iter()
            .filter(|&p| p != me && p > 1)
            .collect();
        for &pid in &left {
            // SAFETY: plain kill(2); the pid was just read from our own cgroup/netns.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let running = children.running();
        if left.is_empty() && running.is_empty() {
            return left;
        }
        if start.elapsed() > CLEANUP_DEADLINE {
            eprintln!(
                "harness: {what}: processes still alive after {CLEANUP_DEADLINE:?}: members \
                 {left:?}, children {running:?}"
            );
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// cgroup2
// ---------------------------------------------------------------------------------------------

/// The cgroup2 mount point (e.g. `/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on
/// unified ones), found in `/proc/self/mountinfo`; if there is none, cgroup2 is mounted at
/// `/sys/fs/cgroup/unified`. Panics if that fails.
pub fn cgroup2_mount() -> PathBuf {
    try_cgroup2_mount().unwrap_or_else(|e| panic!("no cgroup2 hierarchy: {e:#}"))
}

/// Fallible [`cgroup2_mount`].
pub fn try_cgroup2_mount() -> Result<PathBuf> {
    static MOUNT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(m) = MOUNT.get() {
        return Ok(m.clone());
    }
    let mount = match find_cgroup2_mount()? {
        Some(m) => m,
        None => mount_cgroup2(Path::new("/sys/fs/cgroup/unified"))?,
    };
    Ok(MOUNT.get_or_init(|| mount).clone())
}

fn find_cgroup2_mount() -> Result<Option<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut fallback = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|&f| f == "-") else {
            continue;
        };
        if fields.get(sep + 1) != Some(&"cgroup2") || fields.len() < 5 {
            continue;
        }
        let mount_point = PathBuf::from(unescape_mountinfo(fields[4]));
        // Prefer a mount of the hierarchy's root over a bind mount of a subtree.
        if fields[3] == "/" {
            return Ok(Some(mount_point));
        }
        fallback.get_or_insert(mount_point);
    }
    Ok(fallback)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_cgroup2(at: &Path) -> Result<PathBuf> {
    fs::create_dir_all(at).with_context(|| format!("mkdir {}", at.display()))?;
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "mount -t cgroup2 none {}: {}",
            at.display(),
            io::Error::last_os_error()
        );
    }
    eprintln!("harness: mounted cgroup2 at {}", at.display());
    Ok(at.to_owned())
}

/// The cgroup ID of a cgroup2 directory: its inode number (what `bpf_get_current_cgroup_id`
/// returns).
pub fn cgroup_id_of(dir: &Path) -> Result<u64> {
    Ok(fs::metadata(dir)
        .with_context(|| format!("stat {}", dir.display()))?
        .ino())
}

/// Pids listed in `<dir>/cgroup.procs` (empty if the directory is gone).
pub fn cgroup_procs(dir: &Path) -> BTreeSet<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A chain of cgroup2 directories created for one test object. `dirs[0]` is the leaf, owned
/// exclusively; the ancestors up to `<mount>/<prefix>` may be shared with other objects of the
/// same run and are removed only once empty.
#[derive(Debug)]
struct CgroupChain {
    mount: PathBuf,
    /// Leaf first.
    dirs: Vec<PathBuf>,
    /// How many of `dirs` (from the leaf) belong to this object alone.
    exclusive: usize,
}

impl CgroupChain {
    /// Creates `<mount>/<prefix>/<components...>`; the leaf must not exist yet.
    fn create(prefix: &str, components: &[String], exclusive: usize) -> Result<CgroupChain> {
        let mount = try_cgroup2_mount()?;
        let mut dir = mount.join(prefix);
        let mut dirs = vec![dir.clone()];
        for c in components {
            dir = dir.join(c);
            dirs.push(dir.clone());
        }
        dirs.reverse();
        let leaf = &dirs[0];
        if let Some(parent) = leaf.parent() {
            fs::create_dir_all(parent).with_context(|| format!("mkdir -p {}", parent.display()))?;
        }
        let mut chain = CgroupChain {
            mount,
            dirs,
            exclusive,
        };
        if let Err(e) = fs::create_dir(&chain.dirs[0]) {
            let leaf = chain.dirs.remove(0);
            // Do not remove a leaf somebody else created; only tidy up empty ancestors.
            chain.exclusive = 0;
            chain.remove();
            return Err(e).with_context(|| format!("mkdir {}", leaf.display()));
        }
        Ok(chain)
    }

    fn leaf(&self) -> &Path {
        &self.dirs[0]
    }

    /// Moves leftover processes to the root cgroup, then removes the directories leaf first.
    fn remove(&self) {
        if let Some(leaf) = self.dirs.first().filter(|_| self.exclusive > 0) {
            let left = cgroup_procs(leaf);
            if !left.is_empty() {
                eprintln!(
                    "harness: moving leftover pids {left:?} from {} to the cgroup2 root",
                    leaf.display()
                );
                for pid in left {
                    if let Err(e) = fs::write(self.mount.join("cgroup.procs"), pid.to_string()) {
                        eprintln!("harness: cannot move pid {pid} to the cgroup2 root: {e}");
                    }
                }
            }
        }
        for (i, dir) in self.dirs.iter().enumerate() {
            let owned = i < self.exclusive;
            let start = Instant::now();
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // Still populated right after a kill: retry briefly for our own dirs.
                    Err(e)
                        if owned
                            && e.raw_os_error() == Some(libc::EBUSY)
                            && start.elapsed() < Duration::from_secs(2) =>
                    {
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        // Shared ancestors are busy while other objects of the run live.
                        let busy =
                            matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY));
                        if owned || !busy {
                            eprintln!("harness: cannot remove cgroup {}: {e}", dir.display());
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// `sh -c` script that joins `cgroup_dir` and then execs `"$0" "$@"`, optionally through
/// `ip netns exec <netns>` (which remounts /sys, so the cgroup must be joined before).
fn join_script(cgroup_dir: &Path, netns: Option<&str>) -> String {
    let procs = shell_quote(cgroup_dir.join("cgroup.procs").as_os_str());
    let exec = match netns {
        Some(ns) => format!(
            "exec ip netns exec {} \"$0\" \"$@\"",
            shell_quote(OsStr::new(ns))
        ),
        None => "exec \"$0\" \"$@\"".to_owned(),
    };
    format!("echo $$ > {procs} || exit 125; {exec}")
}

fn spawn_joined(
    children: &Children,
    cgroup_dir: &Path,
    netns: Option<&str>,
    program: &Path,
    args: &[&str],
    configure: impl FnOnce(&mut Command),
) -> Result<Child> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(join_script(cgroup_dir, netns))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    configure(&mut cmd);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot spawn {} {args:?}", program.display()))?;
    children.track(&child);
    Ok(child)
}

// ---------------------------------------------------------------------------------------------
// Pod
// ---------------------------------------------------------------------------------------------

/// Where [`Pod`] puts its pods (`<run prefix>/kubepods.slice`), as a kubelet cgroup root for
/// `Config::kubelet_cgroup_roots`: the collector recognises pods only under kubelet roots.
pub const HARNESS_KUBELET_ROOT: &str = "/*/kubepods.slice";

/// A fake Kubernetes pod with one container: network namespace `<prefix>-p<index>` with `eth0`
/// = 198.18.`index`.2/24, veth peer `<prefix>h<index>` = 198.18.`index`.1/24 in the root
/// namespace, and the cgroup2 directory
/// `<mount>/<prefix>/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`.
///
/// Dropping it kills its processes and removes the namespace, the veth and the cgroups.
#[derive(Debug)]
pub struct Pod {
    index: u8,
    netns: String,
    host_veth: String,
    uid: String,
    container_id: String,
    netns_created: bool,
    veth_created: bool,
    cgroup: Option<CgroupChain>,
    cgroup_id: u64,
    nft_table: String,
    children: Children,
}

impl Pod {
    /// Creates the pod. `name_prefix` is a run prefix from [`unique_prefix`]; `index` selects
    /// the 198.18.`index`.0/24 subnet and must not be in use by another live pod on the host.
    /// `pod_uid` is a Kubernetes UID (hex digits and dashes), `container_id` 64 hex digits.
    pub fn create(name_prefix: &str, index: u8, pod_uid: &str, container_id: &str) -> Result<Pod> {
        validate_prefix(name_prefix)?;
        ensure!(
            !pod_uid.is_empty() && pod_uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "pod uid `{pod_uid}` must consist of hex digits and dashes"
        );
        ensure!(
            container_id.len() == 64 && container_id.chars().all(|c| c.is_ascii_hexdigit()),
            "container id `{container_id}` must be 64 hex digits"
        );
        let host_veth = format!("{name_prefix}h{index}");
        ensure!(
            host_veth.len() <= MAX_IFNAME,
            "veth name `{host_veth}` is longer than {MAX_IFNAME} characters; use a shorter tag"
        );
        let subnet = format!("198.18.{index}.0/24");
        let in_use = run(&mut ip(&["-4", "-o", "addr", "show", "to", &subnet]))?;
        ensure!(
            in_use.trim().is_empty(),
            "{subnet} is already in use in the root namespace (another pod with index {index}?): \
             {}",
            in_use.trim()
        );

        let mut pod = Pod {
            index,
            netns: format!("{name_prefix}-p{index}"),
            host_veth,
            uid: pod_uid.to_owned(),
            container_id: container_id.to_owned(),
            netns_created: false,
            veth_created: false,
            cgroup: None,
            cgroup_id: 0,
            nft_table: format!("{name_prefix}_loss"),
            children: Children::default(),
        };
        // From here on, an early return drops `pod`, which undoes what was done so far.
        let ns = pod.netns.clone();
        run(&mut ip(&["netns", "add", &ns]))?;
        pod.netns_created = true;
        run(&mut ip(&[
            "link",
            "add",
            &pod.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]))?;
        pod.veth_created = true;
        let host_cidr = format!("{}/24", pod.host_addr());
        let pod_cidr = format!("{}/24", pod.addr());
        run(&mut ip(&["addr", "add", &host_cidr, "dev", &pod.host_veth]))?;
        run(&mut ip(&["link", "set", &pod.host_veth, "up"]))?;
        run(&mut ip(&[
            "-n", &ns, "addr", "add", &pod_cidr, "dev", "eth0",
        ]))?;
        run(&mut ip(&["-n", &ns, "link", "set", "eth0", "up"]))?;
        run(&mut ip(&["-n", &ns, "link", "set", "lo", "up"]))?;

        let uid_ = pod_uid.replace('-', "_");
        let chain = CgroupChain::create(
            name_prefix,
            &[
                "kubepods.slice".to_owned(),
                "kubepods-burstable.slice".to_owned(),
                format!("kubepods-burstable-pod{uid_}.slice"),
                format!("cri-containerd-{container_id}.scope"),
            ],
            2,
        )?;
        pod.cgroup_id = cgroup_id_of(chain.leaf())?;
        pod.cgroup = Some(chain);
        Ok(pod)
    }

    /// Name of the network namespace (`ip netns exec <name>`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The subnet index given to [`Pod::create`].
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The pod's address (198.18.`index`.2), reachable from the root namespace.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, 2)
    }

    /// The root-namespace end of the veth (198.18.`index`.1).
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.index, 1)
    }

    /// Name of the root-namespace veth interface.
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    /// The container's cgroup2 directory (`.../cri-containerd-<id>.scope`).
    pub fn cgroup_dir(&self) -> &Path {
        self.cgroup
            .as_ref()
            .map_or(Path::new(""), CgroupChain::leaf)
    }

    /// The container cgroup's ID (inode of [`Pod::cgroup_dir`]).
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    /// The pod UID as given (with dashes).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The container ID (64 hex digits).
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Runs `program args...` inside the pod: it joins the container cgroup, then the network
    /// namespace, and then execs the program (so the returned child's pid is the program's).
    /// stdin is null, stdout piped (see [`read_listening`]), stderr inherited.
    /// The child is killed when the pod is dropped.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> Result<Child> {
        self.spawn_with(program, args, |_| {})
    }

    /// [`Pod::spawn`], with a hook to change the command (e.g. stdio) before it is spawned.
    pub fn spawn_with(
        &self,
        program: &Path,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Result<Child> {
        spawn_joined(
            &self.children,
            self.cgroup_dir(),
            Some(&self.netns),
            program,
            args,
            configure,
        )
    }

    /// Runs `program args...` inside the pod to completion (killed after `timeout`), with stdout
    /// and stderr captured.
    pub fn run(&self, program: &Path, args: &[&str], timeout: Duration) -> Result<Output> {
        let child = self.spawn_with(program, args, |c| {
            c.stderr(Stdio::piped());
        })?;
        output_with_timeout(child, timeout)
    }

    /// Absolute values of the pod namespace's SNMP/netstat counters (`nstat -az`), e.g.
    /// `TcpRetransSegs`, `TcpOutSegs`. Fails if a requested counter does not exist.
    pub fn nstat(&self, counters: &[&str]) -> Result<HashMap<String, u64>> {
        // -a: absolute values, -s: do not touch the history file, -z: include zeros.
        let out = run(ip(&["netns", "exec", &self.netns, "nstat", "-asz"]).args(counters))?;
        let mut values = HashMap::new();
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let mut fields = line.split_whitespace();
            if let (Some(name), Some(value)) = (fields.next(), fields.next())
                && let Ok(value) = value.parse()
            {
                values.insert(name.to_owned(), value);
            }
        }
        for c in counters {
            ensure!(values.contains_key(*c), "nstat has no counter {c}: {out}");
        }
        Ok(values)
    }

    /// Loses `percent`% of the pod's outgoing TCP packets for real, so that its TCP stack
    /// retransmits (`TcpRetransSegs` grows). Replaces an earlier setting; undo with
    /// [`Pod::clear_faults`].
    ///
    /// This is nftables table `netdev <prefix>_loss` in the pod namespace, chain `egress` on
    /// `eth0`: `meta l4proto tcp numgen random mod 100 < <percent> fwd to "lo"`. A plain `drop`
    /// (in the `output` hook or here) does not lose anything: the drop is reported back to TCP
    /// as a failed transmit (`-EPERM`/`NET_XMIT_DROP`), TCP keeps the segment unsent and sends
    /// it again as a first transmission, so no retransmit ever happens. `fwd` steals the packet
    /// (success for TCP) and hands it to `lo`, whose IP layer discards it (`PACKET_OTHERHOST`:
    /// the destination MAC is the host veth's), so it reaches no socket.
    pub fn drop_egress_percent(&self, percent: u32) -> Result<()> {
        ensure!(percent <= 100, "drop percentage {percent} is above 100");
        let t = &self.nft_table;
        self.nft(&format!(
            "add table netdev {t}\n\
             delete table netdev {t}\n\
             table netdev {t} {{\n\
             \tchain egress {{\n\
             \t\ttype filter hook egress device \"eth0\" priority 0; policy accept;\n\
             \t\tmeta l4proto tcp numgen random mod 100 < {percent} fwd to \"lo\"\n\
             \t}}\n\
             }}\n"
        ))
    }

    /// Removes what [`Pod::drop_egress_percent`] installed (no error if nothing was).
    pub fn clear_faults(&self) -> Result<()> {
        let t = &self.nft_table;
        self.nft(&format!("add table netdev {t}\ndelete table netdev {t}\n"))
    }

    /// Applies an nftables script (one transaction) inside the pod's namespace.
    fn nft(&self, script: &str) -> Result<()> {
        let mut child = ip(&["netns", "exec", &self.netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .context("writing the nft script")?;
        }
        let out = child.wait_with_output().context("waiting for nft")?;
        ensure!(
            out.status.success(),
            "nft in {} failed ({}): {}\nscript:\n{script}",
            self.netns,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Pids of processes in the pod's network namespace or cgroup.
    fn members(&self) -> BTreeSet<u32> {
        let mut pids = self
            .cgroup
            .as_ref()
            .map(|c| cgroup_procs(c.leaf()))
            .unwrap_or_default();
        if self.netns_created
            && let Ok(out) = ip(&["netns", "pids", &self.netns])
                .stderr(Stdio::null())
                .output()
        {
            pids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok()),
            );
        }
        pids
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        terminate(&self.netns, &self.children, || self.members());
        if self.veth_created {
            // Deleting the netns would take the veth along, but asynchronously; delete it now so
            // the subnet is free for the next pod at once.
            if let Err(e) = run(&mut ip(&["link", "del", &self.host_veth]))
                && !format!("{e:#}").contains("Cannot find device")
            {
                eprintln!("harness: {e:#}");
            }
        }
        if self.netns_created
            && let Err(e) = run(&mut ip(&["netns", "del", &self.netns]))
            && Path::new("/run/netns").join(&self.netns).exists()
        {
            eprintln!("harness: {e:#}");
        }
        if let Some(chain) = &self.cgroup {
            chain.remove();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HostCgroup
// ---------------------------------------------------------------------------------------------

/// A plain cgroup2 directory `<mount>/<prefix>/<name>` for client processes that run in the
/// root network namespace. Dropping it kills its processes and removes the directory.
#[derive(Debug)]
pub struct HostCgroup {
    chain: CgroupChain,
    cgroup_id: u64,
    children: Children,
}

impl HostCgroup {
    /// Creates `<mount>/<prefix>/<name>`; it must not exist yet.
    pub fn create(prefix: &str, name: &str) -> Result<HostCgroup> {
        validate_prefix(prefix)?;
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !name.starts_with('.')
                && !name.starts_with("cgroup."),
            "bad cgroup name `{name}`"
        );
        let chain = CgroupChain::create(prefix, &[name.to_owned()], 1)?;
        let cgroup_id = match cgroup_id_of(chain.leaf()) {
            Ok(id) => id,
            Err(e) => {
                chain.remove();
                return Err(e);
            }
        };
        Ok(HostCgroup {
            chain,
            cgroup_id,
            children: Children::default(),
        })
    }

    /// The cgroup directory.
    /// The workload name the collector gives a plain cgroup: its path under the cgroup2 mount.
    pub fn workload(&self) -> String {
        format!(
            "/{}",
            self.cgroup_dir()
                .strip_prefix(cgroup2_mount())
                .expect("under mount")
                .display()
        )
    }

    pub fn cgroup_dir(&self) -> &Path {
        self.chain.leaf()
    }

    /// The cgroup ID (inode of the directory).
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    /// Runs `program args...` in this cgroup (joined before exec). stdin null, stdout piped,
    /// stderr inherited. Killed when the cgroup is dropped.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> Result<Child> {
        self.spawn_with(program, args, |_| {})
    }

    /// [`HostCgroup::spawn`], with a hook to change the command before it is spawned.
    pub fn spawn_with(
        &self,
        program: &Path,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Result<Child> {
        spawn_joined(
            &self.children,
            self.cgroup_dir(),
            None,
            program,
            args,
            configure,
        )
    }

    /// Runs `program args...` in this cgroup to completion (killed after `timeout`), with stdout
    /// and stderr captured.
    pub fn run(&self, program: &Path, args: &[&str], timeout: Duration) -> Result<Output> {
        let child = self.spawn_with(program, args, |c| {
            c.stderr(Stdio::piped());
        })?;
        output_with_timeout(child, timeout)
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        let dir = self.chain.leaf().to_owned();
        terminate(&dir.display().to_string(), &self.children, || {
            cgroup_procs(&dir)
        });
        self.chain.remove();
    }
}

// ---------------------------------------------------------------------------------------------
// pod-traffic
// ---------------------------------------------------------------------------------------------

/// Path of the `pod-traffic` binary of this package. Integration tests of this package get it
/// built by cargo; it lives next to the test's `deps/` directory (`target/<profile>/`).
/// `POD_TRAFFIC_BIN` overrides the lookup.
pub fn pod_traffic_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("POD_TRAFFIC_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the running test executable: {e}"));
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        candidates.push(dir.join("pod-traffic"));
        if dir.file_name() == Some(OsStr::new("deps"))
            && let Some(profile_dir) = dir.parent()
        {
            candidates.push(profile_dir.join("pod-traffic"));
        }
    }
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "pod-traffic binary not found (looked at {candidates:?}, test executable {}); \
                 build it with `cargo build -p integration-tests --bin pod-traffic` or set \
                 POD_TRAFFIC_BIN",
                exe.display()
            )
        })
}

/// Environment variable naming a prebuilt fixture list (see [`go_fixtures`]).
pub const GO_FIXTURES_ENV: &str = "COLLECTOR_GO_FIXTURES";

/// The Go test servers (tests/go/server) built by tests/go/build-fixtures.sh with every Go
/// toolchain in tests/go/versions: (version, variant, path). Builds what is missing (cached).
/// Where no Go toolchain exists (the kernel-matrix guest), `GO_FIXTURES_ENV` names a file with
/// the same "version variant path" lines, for binaries built on the host.
pub fn go_fixtures() -> Vec<(String, String, PathBuf)> {
    fixture_listing(Some(GO_FIXTURES_ENV), "go/build-fixtures.sh")
}

/// The "<a> <b> <path>" lines a fixture build script under tests/ (`script`, relative to the
/// tests crate) prints, run here (it builds what is missing, cached), or read from the file
/// `env` names when set (the guest, given binaries built on the host).
pub fn fixture_listing(env: Option<&str>, script: &str) -> Vec<(String, String, PathBuf)> {
    let listing = match env.and_then(std::env::var_os) {
        Some(file) => {
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", env.unwrap_or_default()))
        }
        None => {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
            let out = Command::new(&path)
                .output()
                .unwrap_or_else(|e| panic!("run tests/{script}: {e}"));
            assert!(
                out.status.success(),
                "tests/{script} (needs `WITH_GO=1 scripts/bootstrap.sh`): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    listing
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.to_owned(),
                it.next()?.to_owned(),
                PathBuf::from(it.next()?),
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// An HTTP/1.1 client that frames responses itself (the socket parser's tests)
// ---------------------------------------------------------------------------------------------

/// One client connection that sends raw requests and reads responses the way HTTP/1.1 frames
/// them (length, chunked, none for HEAD, 1xx, 204 and 304), so a test controls keep-alive,
/// pipelining and the bytes on the wire.
pub struct Http1Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Http1Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The body came in chunked coding.
    pub chunked: bool,
}

impl Http1Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Self {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
        }
    }

    pub fn send(&mut self, raw: &str) {
        self.w.write_all(raw.as_bytes()).expect("write");
    }

    pub fn get(&mut self, path: &str) -> Http1Response {
        self.send(&format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
        self.read(false)
    }

    /// One line, without its CRLF.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read line");
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    /// Reads one response (interim 1xx responses are returned too, like any other);
    /// `head_request`: the response to a HEAD, which has no body whatever its headers say.
    pub fn read(&mut self, head_request: bool) -> Http1Response {
        let status_line = self.line();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let (mut length, mut chunked) = (None, false);
        loop {
            let h = self.line();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').expect("header");
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.trim().ends_with("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return Http1Response {
                status,
                body,
                chunked,
            };
        }
        if chunked {
            loop {
                let size = usize::from_str_radix(self.line().split(';').next().unwrap_or(""), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.line().is_empty() {}
                    break;
                }
                let mut chunk = vec![0; size + 2];
                self.r.read_exact(&mut chunk).expect("chunk");
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.r.read_exact(&mut body).expect("body");
        }
        Http1Response {
            status,
            body,
            chunked,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP load (verdict tests, the demo)
// ---------------------------------------------------------------------------------------------

/// The collector's `/metrics` body (Prometheus text).
pub fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("collector");
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Sum of the samples of `metric` whose labels include all of `labels`; None when none does.
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for l in text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
    {
        if labels
            .iter()
            .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        {
            let v: f64 = l
                .rsplit_once(' ')
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0.0);
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// One request on its own connection; the status, or None on failure.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Client threads requesting the current path (shared, changeable) until stopped.
pub struct Load {
    path: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &str, threads: usize, pause: Duration) -> Load {
        let path = Arc::new(Mutex::new(path.to_string()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (path, stop) = (path.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let p = path.lock().map(|p| p.clone()).unwrap_or_default();
                        http_get_status(addr, &p);
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            path,
            stop,
            threads,
        }
    }

    pub fn set(&self, path: &str) {
        if let Ok(mut p) = self.path.lock() {
            *p = path.to_string();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts `server` in each pod, listening on every address at `port`, with stdout drained (Go
/// exits on SIGPIPE when its stdout is closed), and waits until each accepts connections.
/// Returns the children (killed with their pods) and the addresses to reach them.
pub fn spawn_pod_servers(pods: &[Pod], server: &Path, port: u16) -> (Vec<Child>, Vec<SocketAddr>) {
    let listen = format!("0.0.0.0:{port}");
    let mut children = Vec::new();
    for p in pods {
        let mut child = p.spawn(server, &["-listen", &listen]).expect("Go server");
        if let Some(mut out) = child.stdout.take() {
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        }
        children.push(child);
    }
    let addrs: Vec<SocketAddr> = pods
        .iter()
        .map(|p| SocketAddr::from((p.addr(), port)))
        .collect();
    for addr in &addrs {
        wait_until_ok_blocking(
            Duration::from_secs(20),
            Duration::from_millis(100),
            "server up",
            || TcpStream::connect(addr).map(drop),
        );
    }
    (children, addrs)
}

/// `pid`'s entry in a `/v1/go-http` listing (its entries), if any.
pub fn go_listing_entry(entries: &[serde_json::Value], pid: u32) -> Option<&serde_json::Value> {
    entries.iter().find(|e| {
        e["pids"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p.as_u64() == Some(u64::from(pid)))
    })
}

/// The collector's logs in the test's output, filtered by `RUST_LOG` (else `default`).
pub fn test_logs(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_test_writer()
        .try_init();
}

/// A collector's configuration for tests of the Go uprobes: on a loopback port, harvesting
/// every 200 ms, the socket parser (which would count the same requests) off and the uprobes
/// on for every Go server (`--no-http-socket --go-http-uprobes all`).
pub fn uprobe_config() -> collector::config::Config {
    let mut config = collector::config::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..collector::config::Config::default()
    };
    config.http.socket = false;
    config.http.uprobes = collector::config::GoUprobes::All;
    config
}

/// Starts a collector with the HTTP socket parser on (the default) on a loopback port,
/// harvesting every 200 ms, and fails the test with the verifier's own words when this kernel
/// refused the parser: a test of the parser must never pass because nothing was parsed.
pub async fn start_socket_collector(config: collector::config::Config) -> collector::app::Running {
    let config = collector::config::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        harvest_interval: Duration::from_millis(200),
        ..config
    };
    assert!(config.http.socket, "the socket parser is switched off");
    let running = collector::app::start(config)
        .await
        .expect("collector starts");
    if let Some(Err(why)) = &running.http_socket {
        panic!(
            "this kernel refused the socket parser:\n{}",
            verifier_refusal(why)
        );
    }
    running
}

/// What the verifier said when it refused a program (its whole log is megabytes): its last
/// words, and which source lines the refused path went through most often since the verifier
/// last switched paths (where a path explodes, e.g. a loop whose bound it lost).
pub fn verifier_refusal(why: &str) -> String {
    let lines: Vec<&str> = why.lines().collect();
    let last_switch = lines
        .iter()
        .rposition(|l| l.starts_with("from "))
        .unwrap_or(0);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for l in &lines[last_switch..] {
        if let Some(src) = l.strip_prefix("; ") {
            *seen.entry(src).or_default() += 1;
        }
    }
    let mut seen: Vec<_> = seen.into_iter().collect();
    seen.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let hot: Vec<String> = seen
        .iter()
        .take(40)
        .map(|(src, n)| format!("{n:>6} {src}"))
        .collect();
    format!(
        "{} log lines after the last path switch ({} in all); hottest source lines:\n{}\n...\n{}",
        lines.len() - last_switch,
        lines.len(),
        hot.join("\n"),
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

/// The Go test server (tests/go/server) built with the newest Go of tests/go/versions, default
/// variant: one build instead of the whole matrix `go_fixtures` makes.
pub fn newest_go_server() -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/go/build-fixtures.sh");
    let versions =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/go/versions")).expect("versions");
    let newest = versions
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("a Go version")
        .to_string();
    let out = Command::new(script)
        .arg(&newest)
        .output()
        .expect("run build-fixtures.sh");
    assert!(
        out.status.success(),
        "building the Go server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            let (_, variant, path) = (it.next()?, it.next()?, it.next()?);
            (variant == "default").then(|| PathBuf::from(path))
        })
        .expect("default variant")
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server that says where it listens on the first line of its stdout; killed (and reaped)
/// when dropped.
pub struct AnnouncedServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for AnnouncedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HostCgroup {
    /// Runs `bin args` in this cgroup and reads its address from its first stdout line,
    /// `<prefix><addr>` (within 20 s); the rest of its output is drained so it never blocks
    /// on a full pipe.
    pub fn spawn_announced(&self, bin: &Path, args: &[&str], prefix: &str) -> AnnouncedServer {
        self.spawn_announced_with(bin, args, prefix, |_| {})
    }

    /// [`HostCgroup::spawn_announced`], with a hook to change the command (e.g. its
    /// environment) before it is spawned.
    pub fn spawn_announced_with(
        &self,
        bin: &Path,
        args: &[&str],
        prefix: &str,
        configure: impl FnOnce(&mut Command),
    ) -> AnnouncedServer {
        let mut child = self.spawn_with(bin, args, configure).expect("spawn server");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(l))) => l,
            other => panic!("{}: no listening line: {other:?}", bin.display()),
        };
        let addr = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{}: {line:?} is not {prefix:?}<addr>", bin.display()))
            .parse()
            .expect("addr");
        AnnouncedServer { child, addr }
    }
}

/// A TCP port on loopback that was free a moment ago, for a server that takes its port as a
/// flag (etcd, kube-apiserver, Prometheus).
///
/// Not `bind(:0)`: that hands out a port of the ephemeral range, which any outgoing connection
/// on the host may take as its source port before the server binds it (CI once failed with
/// kube-apiserver's "bind: address already in use" on such a port). Ports below the ephemeral
/// range are never picked by the kernel for a connection, so only another explicit listener
/// can race for them; within this process a counter never hands one out twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    let high = ephemeral_low().clamp(LOW + 1_000, 32_768);
    let span = high - LOW;
    // Processes (test binaries run one after another, and helpers' runs beside them) start at
    // different offsets, so they rarely probe the same ports.
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + seed.wrapping_add(n) % span;
        let port = u16::try_from(port).expect("port below 32768");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// The lowest port the kernel picks for outgoing connections (`ip_local_port_range`).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A self-signed certificate and key for `localhost` in `dir` (openssl, installed by
/// scripts/bootstrap.sh), for the Go test server's `-tls-cert`/`-tls-key`.
pub fn tls_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (installed by scripts/bootstrap.sh)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

//! Finding Go net/http servers and attaching the uprobes, once per executable file.
//!
//! Discovery: an exec notice from the kernel (`sched_process_exec`) checks the new process at
//! once, so a server started after the collector has its first request counted; a periodic
//! /proc scan is the safety net and finds processes that predate us. Uprobes live on inodes:
//! one attachment per (st_dev, st_ino), with `AllProcesses` scope so every process of that file
//! is covered. The attachment is removed when the last process using the file is gone.
//!
//! `/proc/<pid>/exe` is opened once (works across mount namespaces) and everything comes from
//! that descriptor: the (st_dev, st_ino) key, the analysis, and the uprobe target
//! (`/proc/self/fd/<n>`, see `GoBinary::uprobe_target`), checked against the key right before
//! attaching. Attaching by the `/proc/<pid>/exe` path instead would put breakpoints at
//! Go-derived offsets into whatever the process exec'd meanwhile (or a new process that reused
//! the pid), in every process running that file (`tests/tests/go_attach_race.rs`).
//!
//! Each attachment gets a slot in `HTTP_OFFSETS` holding that binary's struct offsets; the slot
//! and its generation are every uprobe's attach cookie (`collector_common::cookie`: links are
//! detached on the reaper thread, and a stale link must not read through a refilled slot). Only addresses `GoBinary::probe_points` verified are used.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
    sys::{UProbeMultiFeature, is_uprobe_multi_supported},
};
use collector_common::{
    cookie,
    http::{GoHttpOffsets, Inflight, InflightKey},
    maps::{HTTP_INFLIGHT_SERVERS, HTTP_OFFSETS_SLOTS},
    router::{ROUTER_SPECS, ROUTER_SPECS_SLOTS, RouterSpec},
    tcp::OwnerKey,
};
use tracing::{debug, info, warn};

use super::{
    GoBinary, analyze_file,
    listing::{GoServer, SkipReason, Skipped},
    offsets::{OffsetsError, offsets_for},
    routers,
};
use crate::{
    config::GoUprobes,
    events::{UnseenKind, UnseenServer},
    export::{Metrics, prometheus::ReasonLabels},
};

pub const SERVE_HTTP: &str = "net/http.serverHandler.ServeHTTP";
pub const WRITE_HEADER: &str = "net/http.(*response).WriteHeader";
pub const CONN_SERVE: &str = "net/http.(*conn).serve";
pub const GO_PANIC: &str = "runtime.gopanic";
/// The HTTP/2 handler goroutine's function: in net/http's bundled copy up to Go 1.26, in
/// net/http/internal/http2 since Go 1.27.
pub const HTTP2_RUN_HANDLER: [&str; 2] = [
    "net/http.(*http2serverConn).runHandler",
    "net/http/internal/http2.(*serverConn).runHandler",
];

/// (per-point program, uprobe.multi program, function (the first the binary has), entry or
/// every RET, required)
const PROBES: [(&str, &str, &[&str], Point, bool); 6] = [
    // Returns and status first, the start last: a start without its end would linger.
    (
        "http_serve_return",
        "http_serve_return_m",
        &[SERVE_HTTP],
        Point::Returns,
        true,
    ),
    (
        "http_conn_serve_return",
        "http_conn_serve_return_m",
        &[CONN_SERVE],
        Point::Returns,
        true,
    ),
    // Without it an HTTP/2 handler that panics is never counted; a binary without HTTP/2
    // (linked out) has no such function.
    (
        "http2_handler_return",
        "http2_handler_return_m",
        &HTTP2_RUN_HANDLER,
        Point::Returns,
        false,
    ),
    (
        "http_write_header",
        "http_write_header_m",
        &[WRITE_HEADER],
        Point::Entry,
        true,
    ),
    // Without it a panic is still reported, as "aborted".
    ("go_panic", "go_panic_m", &[GO_PANIC], Point::Entry, false),
    (
        "http_serve_start",
        "http_serve_start_m",
        &[SERVE_HTTP],
        Point::Entry,
        true,
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    Entry,
    Returns,
}

/// Why a process's file was not instrumented.
enum Skip {
    /// Remembered (as `Tracked::Skipped`) for this file; `reason` None: not a Go program (never
    /// listed).
    Skipped {
        reason: Option<SkipReason>,
        detail: String,
        go_version: Option<String>,
    },
    /// Not remembered: the process's file changed under the analysis; the next exec notice or
    /// scan looks at it again.
    Retry(String),
}

/// Forget files we decided not to instrument when no process used them for this long.
const SKIP_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("uprobe program {prog} missing from the object")]
    MissingProgram { prog: &'static str },
    #[error("loading {prog}: {source}")]
    Load {
        prog: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {map} missing from the object")]
    MissingMap { map: &'static str },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

#[derive(Debug)]
enum Tracked {
    Instrumented {
        slot: u32,
        links: Vec<(&'static str, UProbeLinkId)>,
        pids: HashSet<u32>,
        go_version: String,
        /// `Instrumented::http2`.
        http2: String,
        path: PathBuf,
        /// The uprobes count only what the socket parser cannot read (`GoUprobes::Auto`).
        unseen_only: bool,
    },
    /// Listed by `/v1/go-http` while a process runs it, unless `reason` is None (not Go).
    Skipped {
        reason: Option<SkipReason>,
        detail: String,
        go_version: Option<String>,
        path: PathBuf,
        pids: HashSet<u32>,
        last_seen: Instant,
    },
}

fn skipped(reason: SkipReason, detail: impl Into<String>, go_version: Option<&str>) -> Skip {
    Skip::Skipped {
        reason: Some(reason),
        detail: detail.into(),
        go_version: go_version.map(str::to_owned),
    }
}

/// An error and its sources, for a person: "a: b: c".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// What the API reports about one instrumented executable.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Instrumented {
    pub path: String,
    pub go_version: String,
    pub pids: Vec<u32>,
    /// Whether HTTP/2 responses get their status, and if not why (they are then counted
    /// `unobserved_protocol`).
    pub http2: String,
    /// Which requests the uprobes count: `all`, or `tls_and_http2` (`--go-http-uprobes auto`:
    /// plaintext HTTP/1.x is the socket parser's).
    pub requests: &'static str,
    /// What this server's sockets were seen speaking that the socket parser cannot read (the
    /// reason it was instrumented under `auto`).
    pub unseen: Vec<UnseenKind>,
    /// A route-learning window is open (`--go-http-uprobes auto`): the uprobes also follow
    /// plaintext requests, for their route templates only.
    pub learning_routes: bool,
}

pub struct GoHttpProbes {
    ebpf: Arc<Mutex<Ebpf>>,
    /// Program names in use: the `uprobe.multi` variants where the kernel has them (≥ 6.6).
    progs: [&'static str; 6],
    /// Detaching a per-point uprobe costs an RCU grace period per point (seconds for a
    /// binary): links are dropped on this thread so discovery never waits for it.
    reaper: Reaper,
    offsets: Array<MapData, GoHttpOffsets>,
    inflight: BpfHashMap<MapData, InflightKey, Inflight>,
    /// tgid → its entries in `inflight` (the per-server budget), kept by the kernel.
    servers: BpfHashMap<MapData, u32, i64>,
    /// Route templates of Go routers (`routers`): `None` when the program did not load (the
    /// requests keep their paths).
    routers: Option<RouterProbes>,
    /// `GoHttpOffsets::valid` of the next slot filled: never 0, never reused soon, so a request
    /// that outlives its slot's binary is recognised in the kernel.
    generation: u32,
    files: HashMap<(u64, u64), Tracked>,
    free_slots: Vec<u32>,
    metrics: Arc<Metrics>,
    proc_root: PathBuf,
    self_pid: u32,
    /// Clock ticks per second of /proc's process start times.
    clock_ticks: u64,
    /// `All` or `Auto` (`Off` never builds this).
    mode: GoUprobes,
    /// Under `Auto`: files whose servers' sockets spoke TLS or h2c (`on_unseen`), with what and
    /// when last told. Kept after their last process exits (a restarted server is the same
    /// file, instrumented at once) until `SKIP_TTL` passes without a notice.
    unseen: HashMap<(u64, u64), (BTreeSet<UnseenKind>, Instant)>,
    /// Notices no known server matched yet (its process not discovered yet), retried at each
    /// scan for `PENDING_TTL`.
    pending: Vec<(UnseenServer, Instant)>,
    cgroup2: Option<PathBuf>,
    /// Under `Auto`: route learning of files whose requests the socket parser counts
    /// (`on_served`).
    learning: HashMap<(u64, u64), Learning>,
    /// `not_needed` files with route templates to learn (a router the probes read, or
    /// ServeMux's patterns): the only ones `on_served` opens windows for.
    learnable: HashSet<(u64, u64)>,
}

/// Route learning of one file (`GoHttpProbes::on_served`): its plaintext requests are counted
/// by the socket parser, which cannot see the route template the server's router matched;
/// the uprobes are attached for a short window, follow up to `LEARN_BUDGET` requests for their
/// template only (`GoHttpOffsets::learn`), and are detached again. Windows grow apart
/// (`LEARN_GAP_FIRST` doubling to `LEARN_GAP_MAX`) so routes seldom taken are learned too
/// while the traps stay a vanishing share of the requests.
#[derive(Debug)]
struct Learning {
    /// The open window's end; None while closed.
    open_until: Option<Instant>,
    /// When the next window may open.
    next: Instant,
    /// The gap after the window open now or next.
    gap: Duration,
    windows: u32,
}

/// Requests a window follows (each takes the ~3 traps of the net/http probes and the router's,
/// ~60 µs here): the window costs ~120 ms of a server's CPU, at any rate.
pub const LEARN_BUDGET: i64 = 2_000;
/// The longest a window stays open (a server with little traffic).
const LEARN_WINDOW: Duration = Duration::from_secs(30);
const LEARN_GAP_FIRST: Duration = Duration::from_secs(60);
const LEARN_GAP_MAX: Duration = Duration::from_secs(30 * 60);
/// How often open windows are looked at (their budget may run out in milliseconds).
pub const LEARN_TICK: Duration = Duration::from_millis(200);

/// How long attaching a file waits for its previous links' detach (`Reaper::wait_for`).
const DETACH_WAIT: Duration = Duration::from_secs(5);

/// Drops links on a thread of its own (see `GoHttpProbes::reaper`), and tells which files
/// still have links being detached.
struct Reaper {
    tx: Option<std::sync::mpsc::Sender<(FileId, Vec<UProbeLink>)>>,
    handle: Option<std::thread::JoinHandle<()>>,
    pending: Arc<Detaching>,
}

/// An executable file: (st_dev, st_ino).
type FileId = (u64, u64);

/// Files → link batches of theirs not yet dropped, and a wake-up when one is.
type Detaching = (Mutex<HashMap<FileId, usize>>, std::sync::Condvar);

impl Reaper {
    fn spawn() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<((u64, u64), Vec<UProbeLink>)>();
        let pending: Arc<Detaching> = Arc::default();
        let shared = pending.clone();
        let handle = std::thread::spawn(move || {
            for (id, links) in rx {
                drop(links);
                let (lock, done) = &*shared;
                let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = p.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        p.remove(&id);
                    }
                }
                done.notify_all();
            }
        });
        Self {
            tx: Some(tx),
            handle: Some(handle),
            pending,
        }
    }

    /// Detaches `links` of file `id` (on the thread; here after shutdown).
    fn reap(&self, id: FileId, links: Vec<UProbeLink>) {
        if links.is_empty() {
            return;
        }
        let Some(tx) = &self.tx else {
            drop(links);
            return;
        };
        let (lock, _) = &*self.pending;
        *lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default() += 1;
        if let Err(e) = tx.send((id, links)) {
            drop(e.0);
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            p.remove(&id);
        }
    }

    /// Waits until no link of `id` is being detached, at most `max`; false when some still is.
    fn wait_for(&self, id: FileId, max: Duration) -> bool {
        let (lock, done) = &*self.pending;
        let p = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (p, _) = done
            .wait_timeout_while(p, max, |p| p.contains_key(&id))
            .unwrap_or_else(|e| e.into_inner());
        !p.contains_key(&id)
    }

    /// Drops what is queued and stops the thread.
    fn shutdown(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// How long a notice waits for its server to be discovered (`GoHttpProbes::pending`).
const PENDING_TTL: Duration = Duration::from_secs(30);
/// Notices waiting at once; the kernel tells again every 10 s per (cgroup, port, kind).
const PENDING_MAX: usize = 256;

/// The socket inodes `pid` listens on at TCP `port` (its network namespace's /proc/net/tcp{,6},
/// state 0A), kept only if the process holds them (a descriptor `socket:[inode]`): ports are
/// per namespace and several processes may share one.
fn listens_on(proc_root: &Path, pid: u32, port: u16) -> bool {
    let dir = proc_root.join(pid.to_string());
    let mut inodes = HashSet::new();
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(dir.join(table)) else {
            continue;
        };
        inodes.extend(listening_inodes(&text, port));
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

/// Inodes of the listening sockets on `port` in a /proc/net/tcp{,6} table.
fn listening_inodes(table: &str, port: u16) -> impl Iterator<Item = u64> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f.get(1)?.rsplit_once(':')?.1;
        (u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == "0A")
            .then(|| f.get(9)?.parse().ok())
            .flatten()
    })
}

/// Whether an in-flight entry that started at `entry_start_ns` (boot clock) can never end:
/// its process is gone (`process_start_ns` None), or the pid now belongs to a process started
/// after the entry. A request of a live process stays, however long it runs (streams, long
/// polls): its end is counted when it comes, and the per-server budget bounds what one
/// process can hold.
pub fn inflight_is_stale(entry_start_ns: u64, process_start_ns: Option<u64>) -> bool {
    match process_start_ns {
        None => true,
        Some(started) => entry_start_ns < started,
    }
}

/// When process `pid` started, in ns of the boot clock (field 22 of /proc/<pid>/stat, in
/// clock ticks; rounded down, so never later than the truth).
fn process_start_ns(proc_root: &Path, pid: u32, clock_ticks: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(ticks.saturating_mul(1_000_000_000) / clock_ticks.max(1))
}

impl GoHttpProbes {
    /// Loads the uprobe programs (once; each attachment reuses them).
    pub fn new(
        ebpf: Arc<Mutex<Ebpf>>,
        offsets: Array<MapData, GoHttpOffsets>,
        inflight: BpfHashMap<MapData, InflightKey, Inflight>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AttachError> {
        let multi = matches!(
            is_uprobe_multi_supported(UProbeMultiFeature::LinkCreation),
            Ok(true)
        );
        let progs = PROBES.map(|(single, m, ..)| if multi { m } else { single });
        {
            let mut e = ebpf.lock().unwrap_or_else(|p| p.into_inner());
            for prog in progs {
                let p: &mut UProbe = e
                    .program_mut(prog)
                    .ok_or(AttachError::MissingProgram { prog })?
                    .try_into()
                    .map_err(|source| AttachError::Load { prog, source })?;
                p.load()
                    .map_err(|source| AttachError::Load { prog, source })?;
            }
        }
        let servers = {
            let mut e = ebpf.lock().unwrap_or_else(|p| p.into_inner());
            let map = e
                .take_map(HTTP_INFLIGHT_SERVERS)
                .ok_or(AttachError::MissingMap {
                    map: HTTP_INFLIGHT_SERVERS,
                })?;
            BpfHashMap::try_from(map).map_err(|source| AttachError::Map {
                map: HTTP_INFLIGHT_SERVERS,
                source,
            })?
        };
        let routers = match RouterProbes::new(&ebpf, multi) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(error = %e, "router template uprobe not loaded: Go routers' requests keep their paths");
                None
            }
        };
        info!(multi, "Go net/http uprobes loaded");
        Ok(Self {
            ebpf,
            progs,
            reaper: Reaper::spawn(),
            offsets,
            inflight,
            servers,
            routers,
            generation: 1,
            files: HashMap::new(),
            free_slots: (0..HTTP_OFFSETS_SLOTS).rev().collect(),
            metrics,
            proc_root: PathBuf::from("/proc"),
            self_pid: std::process::id(),
            // SAFETY: sysconf has no preconditions.
            clock_ticks: u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
                .ok()
                .filter(|t| *t > 0)
                .unwrap_or(100),
            mode: GoUprobes::All,
            unseen: HashMap::new(),
            pending: Vec::new(),
            cgroup2: crate::identity::cgroup::find_cgroup2_mount(),
            learning: HashMap::new(),
            learnable: HashSet::new(),
        })
    }

    /// A process serves requests the socket parser counts (the aggregator's notice): when it
    /// runs a Go net/http server left to the parser, a route-learning window opens (`Learning`)
    /// unless one is open or the next is not due. The parser knows a connection's process
    /// only once it has sent on it (a connection's first response is sent before): with no
    /// process, the Go servers of the owner's cgroup.
    pub fn on_served(&mut self, owner: OwnerKey, now: Instant) {
        if self.mode != GoUprobes::Auto {
            return;
        }
        let pid = if owner.tgid != 0 {
            owner.tgid
        } else {
            let candidates: Vec<u32> = self
                .files
                .values()
                .filter_map(|t| match t {
                    Tracked::Skipped {
                        reason: Some(SkipReason::NotNeeded),
                        pids,
                        ..
                    }
                    | Tracked::Instrumented {
                        pids,
                        unseen_only: true,
                        ..
                    } => Some(pids),
                    _ => None,
                })
                .flatten()
                .copied()
                .collect();
            match candidates
                .into_iter()
                .find(|p| self.cgroup_id(*p) == Some(owner.cgroup_id))
            {
                Some(p) => p,
                None => return,
            }
        };
        let Some((id, slot)) = self.files.iter().find_map(|(id, t)| match t {
            Tracked::Skipped {
                reason: Some(SkipReason::NotNeeded),
                pids,
                ..
            } if pids.contains(&pid) && self.learnable.contains(id) => Some((*id, None)),
            // Instrumented for its TLS or h2c requests: its plaintext ones are the parser's.
            Tracked::Instrumented {
                pids,
                unseen_only: true,
                slot,
                ..
            } if pids.contains(&pid) && self.learnable.contains(id) => Some((*id, Some(*slot))),
            _ => None,
        }) else {
            debug!(
                pid,
                "serves requests, not a Go server left to the socket parser"
            );
            return;
        };
        let l = self.learning.entry(id).or_insert(Learning {
            open_until: None,
            next: now,
            gap: LEARN_GAP_FIRST,
            windows: 0,
        });
        if l.open_until.is_some() || now < l.next {
            return;
        }
        l.open_until = Some(now + LEARN_WINDOW);
        let opened = match slot {
            Some(slot) => self.set_learn(slot, LEARN_BUDGET),
            None => {
                self.files.remove(&id);
                self.observe(pid, now);
                matches!(self.files.get(&id), Some(Tracked::Instrumented { .. }))
            }
        };
        let l = self.learning.get_mut(&id).expect("inserted above");
        if opened {
            l.windows += 1;
            self.metrics.collector.go_route_learning_windows.inc();
            info!(
                pid,
                window = l.windows,
                "learning the route templates of a Go server the socket parser counts"
            );
        } else {
            // Not attachable (listed with its reason): tried again after the gap.
            l.open_until = None;
            l.next = now + l.gap;
        }
    }

    /// Sets the learning budget of an attached file's slot (`GoHttpOffsets::learn`).
    fn set_learn(&mut self, slot: u32, budget: i64) -> bool {
        match self.offsets.get(&slot, 0) {
            Ok(mut v) if v.valid != 0 => {
                v.learn = budget;
                self.offsets.set(slot, &v, 0).is_ok()
            }
            _ => false,
        }
    }

    /// The remaining budget of an attached file's open window.
    fn learn_left(&self, id: (u64, u64)) -> i64 {
        match self.files.get(&id) {
            Some(Tracked::Instrumented { slot, .. }) => {
                self.offsets.get(slot, 0).map_or(0, |v| v.learn)
            }
            _ => 0,
        }
    }

    /// Whether a learning window is open (discovery then looks every `LEARN_TICK`).
    pub fn learning(&self) -> bool {
        self.learning.values().any(|l| l.open_until.is_some())
    }

    /// Closes the windows whose budget ran out or whose time is up: a file attached only for
    /// its window is detached (listed `not_needed` again); one instrumented for its TLS or h2c
    /// requests keeps its uprobes, its budget set to 0.
    pub fn tick_learning(&mut self, now: Instant) {
        let due: Vec<(u64, u64)> = self
            .learning
            .iter()
            .filter(|(id, l)| {
                l.open_until
                    .is_some_and(|end| now >= end || self.learn_left(**id) <= 0)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(l) = self.learning.get_mut(&id) {
                l.open_until = None;
                l.next = now + l.gap;
                l.gap = (l.gap * 2).min(LEARN_GAP_MAX);
            }
            match self.files.get(&id) {
                Some(Tracked::Instrumented { slot, .. }) if self.unseen.contains_key(&id) => {
                    let slot = *slot;
                    self.set_learn(slot, 0);
                }
                Some(Tracked::Instrumented { .. }) => {
                    if let Some(pids) = self.detach(id) {
                        debug!("route-learning window closed: Go net/http uprobes detached");
                        if let Some(pid) = pids.into_iter().next() {
                            self.observe(pid, now);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Detaches an instrumented file and forgets it; its pids.
    fn detach(&mut self, id: (u64, u64)) -> Option<HashSet<u32>> {
        let Some(Tracked::Instrumented {
            slot,
            mut links,
            pids,
            ..
        }) = self.files.remove(&id)
        else {
            return None;
        };
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let taken = take_links(&mut ebpf, &mut links);
        drop(ebpf);
        self.reaper.reap(id, taken);
        self.release(slot);
        if let Some(r) = self.routers.as_mut() {
            r.release(id);
        }
        Some(pids)
    }

    /// `GoUprobes::Auto`: a server is instrumented only once its sockets speak what the socket
    /// parser cannot read (`on_unseen`), and its uprobes leave plaintext HTTP/1.x to the parser.
    pub fn auto(&mut self) {
        self.mode = GoUprobes::Auto;
    }

    /// A server socket spoke TLS or h2c (the kernel's notice, `Event::Unseen`): the Go
    /// net/http servers listening on its port get uprobes for those requests.
    pub fn on_unseen(&mut self, server: UnseenServer, now: Instant) {
        if self.mode != GoUprobes::Auto {
            return;
        }
        if !self.match_unseen(server, now) {
            debug!(
                port = server.port,
                cgroup = server.cgroup_id,
                kind = server.kind.code(),
                "no known Go server listens there yet"
            );
            if self.pending.len() < PENDING_MAX {
                self.pending.push((server, now));
            }
        }
    }

    /// Whether a Go net/http server we know listens on the notice's port; instruments those
    /// not yet instrumented.
    fn match_unseen(&mut self, server: UnseenServer, now: Instant) -> bool {
        let candidates: Vec<((u64, u64), u32)> = self
            .files
            .iter()
            .filter_map(|(id, t)| match t {
                Tracked::Instrumented { pids, .. } => Some((*id, pids)),
                Tracked::Skipped {
                    reason: Some(SkipReason::NotNeeded),
                    pids,
                    ..
                } => Some((*id, pids)),
                Tracked::Skipped { .. } => None,
            })
            .flat_map(|(id, pids)| pids.iter().map(move |p| (id, *p)))
            .filter(|(_, pid)| listens_on(&self.proc_root, *pid, server.port))
            .collect();
        if candidates.is_empty() {
            return false;
        }
        // Ports are per network namespace: of several listeners, those in the socket's cgroup
        // (all of them when none is, e.g. when our cgroup view differs from the kernel's).
        let in_cgroup: Vec<_> = candidates
            .iter()
            .copied()
            .filter(|(_, pid)| self.cgroup_id(*pid) == Some(server.cgroup_id))
            .collect();
        let chosen = if in_cgroup.is_empty() {
            candidates
        } else {
            in_cgroup
        };
        for (id, pid) in chosen {
            let (kinds, seen) = self.unseen.entry(id).or_insert((BTreeSet::new(), now));
            kinds.insert(server.kind);
            *seen = now;
            if matches!(self.files.get(&id), Some(Tracked::Skipped { .. })) {
                info!(
                    pid,
                    port = server.port,
                    kind = server.kind.code(),
                    "a Go server's socket speaks what the socket parser cannot read: attaching uprobes for those requests"
                );
                self.files.remove(&id);
                self.observe(pid, now);
            }
        }
        true
    }

    /// The cgroup v2 id (the directory's inode) of `pid`, as the kernel's `bpf_skb_cgroup_id`
    /// gives it for its sockets.
    fn cgroup_id(&self, pid: u32) -> Option<u64> {
        let mount = self.cgroup2.as_ref()?;
        let path = crate::identity::cgroup::proc_cgroup_v2_path(&self.proc_root, pid).ok()??;
        std::fs::metadata(mount.join(path.trim_start_matches('/')))
            .ok()
            .map(|m| m.ino())
    }

    /// Notices that waited for their server's discovery (`rescan`); the unseen marks of files
    /// gone for `SKIP_TTL`.
    fn retry_unseen(&mut self, now: Instant) {
        let pending = std::mem::take(&mut self.pending);
        for (server, since) in pending {
            if now.saturating_duration_since(since) < PENDING_TTL && !self.match_unseen(server, now)
            {
                self.pending.push((server, since));
            }
        }
        let files = &self.files;
        self.unseen.retain(|id, (_, seen)| {
            files.contains_key(id) || now.saturating_duration_since(*seen) <= SKIP_TTL
        });
    }

    /// Route templates off (`--no-go-router-templates`): Go routers are not probed.
    pub fn without_router_templates(&mut self) {
        self.routers = None;
    }

    pub fn instrumented(&self) -> Vec<Instrumented> {
        let mut out: Vec<_> = self
            .files
            .iter()
            .filter_map(|(id, t)| match t {
                Tracked::Instrumented {
                    pids,
                    go_version,
                    http2,
                    path,
                    unseen_only,
                    ..
                } => {
                    let mut pids: Vec<u32> = pids.iter().copied().collect();
                    pids.sort_unstable();
                    Some(Instrumented {
                        path: path.display().to_string(),
                        go_version: go_version.clone(),
                        pids,
                        http2: http2.clone(),
                        requests: if *unseen_only { "tls_and_http2" } else { "all" },
                        unseen: self
                            .unseen
                            .get(id)
                            .map(|(k, _)| k.iter().copied().collect())
                            .unwrap_or_default(),
                        learning_routes: self
                            .learning
                            .get(id)
                            .is_some_and(|l| l.open_until.is_some()),
                    })
                }
                Tracked::Skipped { .. } => None,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    fn file_id(&self, pid: u32) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(self.proc_root.join(pid.to_string()).join("exe")).ok()?;
        Some((m.dev(), m.ino()))
    }

    /// Looks at one process (exec notice or scan).
    pub fn observe(&mut self, pid: u32, now: Instant) {
        if pid == self.self_pid {
            return;
        }
        let exe = self.proc_root.join(pid.to_string()).join("exe");
        let file = match File::open(&exe) {
            Ok(f) => f,
            // Its identity can still be stat'ed (the process is ours to see, its binary not
            // ours to read): listed as unreadable rather than silently absent.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                self.observe_unreadable(pid, &exe, &e, now);
                return;
            }
            // Kernel threads and processes that exited already have no exe.
            Err(_) => return,
        };
        let Ok(meta) = file.metadata() else { return };
        // The key is the identity of the descriptor analysed and attached through, not of a
        // separate stat: the process may exec between the two.
        let id = (meta.dev(), meta.ino());
        match self.files.get_mut(&id) {
            Some(Tracked::Instrumented { pids, .. }) => {
                pids.insert(pid);
                return;
            }
            Some(Tracked::Skipped {
                last_seen, pids, ..
            }) => {
                *last_seen = now;
                pids.insert(pid);
                return;
            }
            None => {}
        }
        let tracked = match self.instrument(&exe, file, id, pid) {
            Ok(t) => t,
            Err(Skip::Retry(reason)) => {
                debug!(
                    pid,
                    reason, "Go binary changed during analysis: looked at again later"
                );
                return;
            }
            Err(Skip::Skipped {
                reason,
                detail,
                go_version,
            }) => Tracked::Skipped {
                reason,
                detail,
                go_version,
                path: std::fs::read_link(&exe).unwrap_or_else(|_| exe.clone()),
                pids: HashSet::from([pid]),
                last_seen: now,
            },
        };
        self.files.insert(id, tracked);
        self.update_gauges();
    }

    fn skip(&self, reason: SkipReason) {
        self.metrics
            .collector
            .go_binaries_skipped
            .get_or_create(&ReasonLabels {
                reason: reason.code(),
            })
            .inc();
    }

    /// A process whose executable we may not open (`observe`).
    fn observe_unreadable(&mut self, pid: u32, exe: &Path, error: &std::io::Error, now: Instant) {
        let Some(id) = self.file_id(pid) else { return };
        match self.files.get_mut(&id) {
            Some(Tracked::Instrumented { pids, .. }) => {
                pids.insert(pid);
                return;
            }
            Some(Tracked::Skipped {
                last_seen, pids, ..
            }) => {
                *last_seen = now;
                pids.insert(pid);
                return;
            }
            None => {}
        }
        self.skip(SkipReason::Unreadable);
        warn!(pid, %error, "executable not readable: a Go server there is not instrumented");
        self.files.insert(
            id,
            Tracked::Skipped {
                reason: Some(SkipReason::Unreadable),
                detail: format!("opening the executable: {error}"),
                go_version: None,
                path: std::fs::read_link(exe).unwrap_or_else(|_| exe.to_path_buf()),
                pids: HashSet::from([pid]),
                last_seen: now,
            },
        );
    }

    /// Analyses `file` (opened from `exe`, identity `id`) and attaches to it.
    fn instrument(
        &mut self,
        exe: &Path,
        file: File,
        id: (u64, u64),
        pid: u32,
    ) -> Result<Tracked, Skip> {
        let bin = match analyze_file(exe, file) {
            Ok(b) => b,
            Err(e) if e.is_not_go() => {
                return Err(Skip::Skipped {
                    reason: None,
                    detail: "not a Go binary".into(),
                    go_version: None,
                });
            }
            Err(e) => {
                let reason = SkipReason::of_analysis(&e);
                self.skip(reason);
                warn!(pid, error = %e, reason = reason.code(), "Go binary not instrumented");
                return Err(skipped(reason, error_chain(e.kind()), e.go_version()));
            }
        };
        let go = Some(bin.go_version.as_str());
        if bin.function(SERVE_HTTP).is_none() {
            self.skip(SkipReason::NoNetHttpServer);
            debug!(pid, "Go binary without a net/http server");
            return Err(skipped(
                SkipReason::NoNetHttpServer,
                format!("no net/http server ({} is not linked in)", SERVE_HTTP),
                go,
            ));
        }
        // Under `auto`, plaintext HTTP/1.x is the socket parser's, trap-free: no uprobes until a
        // socket of this server speaks TLS or h2c. Listed, not counted as a skip (nothing is
        // missed). Decided before the DWARF read and the address checks: on a node every Go
        // daemon (kubelet, containerd, the apiserver) is looked at, and most never need them.
        let unseen_only = self.mode == GoUprobes::Auto;
        let learning = self
            .learning
            .get(&id)
            .is_some_and(|l| l.open_until.is_some());
        // Route templates come from a router the probes read, or ServeMux's `Request.Pattern`
        // (Go ≥ 1.23): without either a learning window would learn nothing.
        let learnable = unseen_only
            && ((self.routers.is_some() && super::routers::present(&bin).next().is_some())
                || super::binary::go_minor(&bin.go_version).is_some_and(|m| m >= 23));
        if learnable {
            self.learnable.insert(id);
        }
        if unseen_only && !self.unseen.contains_key(&id) && !learning {
            return Err(skipped(
                SkipReason::NotNeeded,
                if learnable {
                    "plaintext HTTP/1.x so far, counted by the socket parser: uprobes attach once a socket of this server speaks TLS or h2c, and for short windows that learn its route templates"
                } else {
                    "plaintext HTTP/1.x so far, counted by the socket parser: uprobes attach once a socket of this server speaks TLS or h2c"
                },
                go,
            ));
        }
        let (offsets, source) = match offsets_for(&bin) {
            Ok(o) => o,
            // The DWARF reader re-opens the path and found another file there.
            Err(e) if matches!(e.kind(), OffsetsError::Replaced) => {
                return Err(Skip::Retry(e.to_string()));
            }
            // The DWARF reader opens `/proc/<pid>/exe` again: a process that exited meanwhile
            // (a short run of the same file) leaves nothing to open. Not the file's fault: looked
            // at again when a process runs it, not skipped for good (as go_grpc does).
            Err(e)
                if matches!(e.kind(), OffsetsError::Open { .. })
                    && std::fs::metadata(exe).is_err() =>
            {
                return Err(Skip::Retry(e.to_string()));
            }
            Err(e) => {
                self.skip(SkipReason::NoOffsets);
                warn!(pid, go = %bin.go_version, error = %e, "Go net/http server not instrumented: struct offsets unknown");
                return Err(skipped(SkipReason::NoOffsets, error_chain(e.kind()), go));
            }
        };
        let points = match probe_points(&bin) {
            Ok(p) => p,
            Err(e) => {
                self.skip(SkipReason::UnverifiedAddresses);
                warn!(pid, go = %bin.go_version, error = %e, "Go net/http server not instrumented");
                return Err(skipped(SkipReason::UnverifiedAddresses, e, go));
            }
        };
        // The file the offsets were computed from, by a path the kernel resolves to it alone;
        // and that file must be the one this attachment is keyed (and later detached) by.
        let target = match bin.uprobe_target() {
            Ok(t) if (bin.dev, bin.ino) == id => t,
            Ok(_) => {
                self.skip(SkipReason::IdentityMismatch);
                warn!(pid, "analysed file is not the one keyed: not attaching");
                return Err(Skip::Retry("analysed file is not the one keyed".into()));
            }
            Err(e) => {
                self.skip(SkipReason::IdentityMismatch);
                warn!(pid, error = %e, "Go binary not instrumented");
                return Err(Skip::Retry(e.to_string()));
            }
        };
        let Some(slot) = self.free_slots.pop() else {
            self.skip(SkipReason::SlotsExhausted);
            warn!(
                pid,
                "Go net/http server not instrumented: all offset slots in use"
            );
            return Err(skipped(
                SkipReason::SlotsExhausted,
                format!("all {HTTP_OFFSETS_SLOTS} offset slots in use"),
                go,
            ));
        };
        let value = GoHttpOffsets {
            request_method: offsets.request_method,
            request_url: offsets.request_url,
            request_pattern: offsets.request_pattern.unwrap_or(0),
            request_proto_major: offsets.request_proto_major,
            url_path: offsets.url_path,
            h2_writer_hash: offsets.http2.map_or(0, |h| h.writer_hash),
            h2_writer_rws: offsets.http2.map_or(0, |h| h.writer_rws),
            h2_rws_status: offsets.http2.map_or(0, |h| h.rws_status),
            valid: self.generation,
            request_tls: offsets.request_tls,
            // Opened once every probe is attached (below): requests followed while the
            // router's probe is not yet there would spend the budget without a template.
            learn: 0,
        };
        let http2 = http2_coverage(&bin, offsets.http2);
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        if let Err(e) = self.offsets.set(slot, &value, 0) {
            self.free_slots.push(slot);
            self.skip(SkipReason::AttachFailed);
            warn!(pid, error = %e, "writing Go net/http offsets");
            return Err(skipped(
                SkipReason::AttachFailed,
                format!("writing offsets: {e}"),
                go,
            ));
        }
        // A file attached again while its old links are still being detached: on Linux 6.18
        // the new uprobes then never fired for some files (0 of 120 requests counted, twice in
        // two runs of the router matrix with clients fast enough to restart a server of the
        // same file within ~30 ms of its detach). Waiting for the old links first costs a
        // restarted server the requests of that wait, not all of them.
        if !self.reaper.wait_for(id, DETACH_WAIT) {
            self.release(slot);
            return Err(Skip::Retry(
                "its previous uprobes are still being detached".into(),
            ));
        }
        let mut links = Vec::new();
        let t = Instant::now();
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let progs = self.progs;
        for ((prog, (.., required)), offs) in progs.iter().zip(PROBES.iter()).zip(&points) {
            if offs.is_empty() {
                continue;
            }
            let attach_points = offs.iter().map(|o| UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(*o),
                cookie: Some(cookie::encode(
                    if unseen_only {
                        slot | cookie::UNSEEN_ONLY
                    } else {
                        slot
                    },
                    value.valid,
                )),
            });
            let result = match ebpf.program_mut(prog).map(<&mut UProbe>::try_from) {
                Some(Ok(p)) => p
                    .attach(attach_points, &target, UProbeScope::AllProcesses)
                    .map_err(|e| e.to_string()),
                _ => Err(format!("{prog} missing")),
            };
            match result {
                Ok(link) => links.push((*prog, link)),
                Err(e) if !*required => debug!(prog, error = %e, "optional uprobe not attached"),
                Err(e) => {
                    let taken = take_links(&mut ebpf, &mut links);
                    drop(ebpf);
                    self.reaper.reap(id, taken);
                    self.release(slot);
                    self.skip(SkipReason::AttachFailed);
                    warn!(pid, prog, error = %e, "attaching Go net/http uprobes");
                    return Err(skipped(
                        SkipReason::AttachFailed,
                        format!("attaching {prog}: {e}"),
                        Some(bin.go_version.as_str()),
                    ));
                }
            }
        }
        if let Some(r) = self.routers.as_mut() {
            r.attach(&mut ebpf, &bin, &target, pid, &mut links);
        }
        drop(ebpf);
        if learning {
            self.set_learn(slot, LEARN_BUDGET);
        }
        let points: usize = points.iter().map(Vec::len).sum();
        info!(pid, exe = %bin.path.display(), go = %bin.go_version, offsets = ?source, points, attach = ?t.elapsed(), http2 = %http2, "Go net/http server instrumented");
        Ok(Tracked::Instrumented {
            slot,
            links,
            pids: HashSet::from([pid]),
            go_version: bin.go_version.clone(),
            http2,
            unseen_only,
            // Where the attached file lives (" (deleted)" when unlinked), not what the pid runs now.
            path: std::fs::read_link(&target).unwrap_or_else(|_| exe.to_path_buf()),
        })
    }

    fn release(&mut self, slot: u32) {
        let _ = self.offsets.set(slot, &GoHttpOffsets::default(), 0);
        self.free_slots.push(slot);
    }

    /// Periodic pass: new processes, exited ones, detaching files nobody runs, stale state.
    pub fn rescan(&mut self, now: Instant) {
        let mut live: HashMap<(u64, u64), HashSet<u32>> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir(&self.proc_root) {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(id) = self.file_id(pid) {
                    live.entry(id).or_default().insert(pid);
                    if !self.files.contains_key(&id) {
                        self.observe(pid, now);
                    }
                }
            }
        }
        let mut gone = Vec::new();
        for (id, t) in self.files.iter_mut() {
            match t {
                Tracked::Instrumented { pids, .. } => {
                    *pids = live.get(id).cloned().unwrap_or_default();
                    if pids.is_empty() {
                        gone.push(*id);
                    }
                }
                Tracked::Skipped {
                    last_seen, pids, ..
                } => {
                    *pids = live.get(id).cloned().unwrap_or_default();
                    if !pids.is_empty() {
                        *last_seen = now;
                    } else if now.saturating_duration_since(*last_seen) > SKIP_TTL {
                        gone.push(*id);
                    }
                }
            }
        }
        for id in gone {
            let path = match self.files.get(&id) {
                Some(Tracked::Instrumented { path, .. }) => path.clone(),
                _ => {
                    self.files.remove(&id);
                    continue;
                }
            };
            self.detach(id);
            info!(exe = %path.display(), "last process gone: Go net/http uprobes detached");
        }
        let files = &self.files;
        self.learning.retain(|id, _| files.contains_key(id));
        self.learnable.retain(|id| files.contains_key(id));
        self.tick_learning(now);
        self.sweep_inflight(&live);
        self.retry_unseen(now);
        self.update_gauges();
    }

    /// In-flight requests that can never end (`inflight_is_stale`): removed, given back to
    /// their server's budget, counted.
    fn sweep_inflight(&mut self, live: &HashMap<(u64, u64), HashSet<u32>>) {
        let alive: HashSet<u32> = live.values().flatten().copied().collect();
        let mut started: HashMap<u32, Option<u64>> = HashMap::new();
        let stale: Vec<InflightKey> = self
            .inflight
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                let process = *started.entry(k.tgid).or_insert_with(|| {
                    alive
                        .contains(&k.tgid)
                        .then(|| process_start_ns(&self.proc_root, k.tgid, self.clock_ticks))
                        .flatten()
                });
                inflight_is_stale(v.start_ns, process)
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            if self.inflight.remove(k).is_err() {
                // Ended meanwhile: the kernel gave its place back.
                continue;
            }
            if started.get(&k.tgid).copied().flatten().is_some() {
                // The pid's new process keeps its budget, less this entry of the old one.
                // Not atomic with the kernel's updates: only pid reuse gets here.
                if let Ok(n) = self.servers.get(&k.tgid, 0) {
                    let _ = self.servers.insert(&k.tgid, &(n - 1), 0);
                }
            }
        }
        // Budgets of processes that are gone.
        let gone: Vec<u32> = self
            .servers
            .keys()
            .filter_map(Result::ok)
            .filter(|t| !alive.contains(t))
            .collect();
        for t in gone {
            let _ = self.servers.remove(&t);
        }
        if !stale.is_empty() {
            self.metrics
                .collector
                .http_inflight_swept
                .inc_by(stale.len() as u64);
        }
    }

    fn update_gauges(&self) {
        let n = self
            .files
            .values()
            .filter(|t| matches!(t, Tracked::Instrumented { .. }))
            .count();
        self.metrics
            .collector
            .go_binaries_instrumented
            .set(n as i64);
    }

    /// Detaches everything and waits until it is done (shutdown).
    pub fn detach_all(&mut self) {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = Vec::new();
        for t in self.files.values_mut() {
            if let Tracked::Instrumented { links, .. } = t {
                all.extend(take_links(&mut ebpf, links));
            }
        }
        drop(ebpf);
        drop(all);
        self.files.clear();
        self.reaper.shutdown();
    }

    /// For tests: why a file was not instrumented.
    pub fn skipped_reason(&self, pid: u32) -> Option<String> {
        let id = self.file_id(pid)?;
        match self.files.get(&id)? {
            Tracked::Skipped { detail, .. } => Some(detail.clone()),
            Tracked::Instrumented { .. } => None,
        }
    }

    /// What `/v1/go-http` lists: every Go executable a live process runs, instrumented or
    /// not (see `listing`), by path.
    pub fn servers(&self) -> Vec<GoServer> {
        let mut out: Vec<GoServer> = self
            .instrumented()
            .into_iter()
            .map(|server| GoServer::Instrumented {
                instrumented: true,
                server,
            })
            .collect();
        for (id, t) in &self.files {
            if let Tracked::Skipped {
                reason: Some(reason),
                detail,
                go_version,
                path,
                pids,
                ..
            } = t
                && !pids.is_empty()
            {
                let mut pids: Vec<u32> = pids.iter().copied().collect();
                pids.sort_unstable();
                out.push(GoServer::Skipped(Skipped {
                    path: path.display().to_string(),
                    go_version: go_version.clone(),
                    pids,
                    instrumented: false,
                    reason: *reason,
                    detail: detail.clone(),
                    route_learning_windows: self
                        .learning
                        .get(id)
                        .filter(|_| *reason == SkipReason::NotNeeded)
                        .map(|l| l.windows),
                }));
            }
        }
        out.sort_by(|a, b| a.path().cmp(b.path()).then_with(|| a.pids().cmp(b.pids())));
        out
    }
}

/// Takes ownership of links (the start probe first); dropping them detaches.
fn take_links(ebpf: &mut Ebpf, links: &mut Vec<(&'static str, UProbeLinkId)>) -> Vec<UProbeLink> {
    let mut out = Vec::new();
    for (prog, link) in links.drain(..).rev() {
        match ebpf.program_mut(prog).map(<&mut UProbe>::try_from) {
            Some(Ok(p)) => match p.take_link(link) {
                Ok(l) => out.push(l),
                Err(e) => warn!(prog, error = %e, "detaching uprobe"),
            },
            _ => warn!(prog, "uprobe program missing while detaching"),
        }
    }
    out
}

/// The x/net HTTP/2 server's handler goroutine: linked in when a program uses
/// golang.org/x/net/http2 (`ConfigureServer`, the h2c package) to serve.
const XNET_HTTP2_RUN_HANDLER: &str = "golang.org/x/net/http2.(*serverConn).runHandler";

/// What becomes of a binary's HTTP/2 responses, for the log and `/v1/go-http`.
fn http2_coverage(bin: &GoBinary, offsets: Option<super::offsets::Http2Offsets>) -> String {
    let own = if offsets.is_some_and(|h| h.writer_hash != 0) {
        "status observed".to_owned()
    } else if HTTP2_RUN_HANDLER.iter().all(|f| bin.function(f).is_none()) {
        "net/http's HTTP/2 server is not linked in".to_owned()
    } else {
        format!(
            "unobserved_protocol: the layout of net/http's HTTP/2 writer in {} is unknown (no DWARF with it, or no row of this Go minor in the offsets table)",
            bin.go_version
        )
    };
    if bin.function(XNET_HTTP2_RUN_HANDLER).is_some() {
        format!(
            "{own}; golang.org/x/net/http2's server is linked in too: its HTTP/2 requests are unobserved_protocol where they pass net/http's ServeHTTP (ConfigureServer) and not seen at all where they do not (the h2c package)"
        )
    } else {
        own
    }
}

/// File offsets for each entry of `PROBES` (empty when an optional one is unavailable).
fn probe_points(bin: &GoBinary) -> Result<Vec<Vec<u64>>, String> {
    PROBES
        .iter()
        .map(|(_, _, functions, point, required)| {
            // The first name the binary has; an error names the last one tried.
            let function = functions
                .iter()
                .find(|f| bin.function(f).is_some())
                .or(functions.last())
                .copied()
                .unwrap_or_default();
            match bin.probe_points(function) {
                Ok(p) => Ok(match point {
                    Point::Entry => vec![p.entry_probe_file_offset],
                    Point::Returns => p.ret_file_offsets.clone(),
                }),
                Err(_) if !*required => Ok(Vec::new()),
                Err(e) => Err(format!("{function}: {e}")),
            }
        })
        .collect()
}

/// The router template probe (`routers`) and its slots in `ROUTER_SPECS`.
struct RouterProbes {
    prog: &'static str,
    specs: Array<MapData, RouterSpec>,
    free: Vec<u32>,
    /// Slots in use, by the (st_dev, st_ino) of the file whose routers they describe.
    by_file: HashMap<(u64, u64), Vec<u32>>,
    /// `RouterSpec::valid` of the next slot filled (as `GoHttpProbes::generation`).
    generation: u32,
}

impl RouterProbes {
    fn new(ebpf: &Arc<Mutex<Ebpf>>, multi: bool) -> Result<Self, AttachError> {
        let prog = if multi {
            "router_probe_m"
        } else {
            "router_probe"
        };
        let mut e = ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let p: &mut UProbe = e
            .program_mut(prog)
            .ok_or(AttachError::MissingProgram { prog })?
            .try_into()
            .map_err(|source| AttachError::Load { prog, source })?;
        p.load()
            .map_err(|source| AttachError::Load { prog, source })?;
        let map = e
            .take_map(ROUTER_SPECS)
            .ok_or(AttachError::MissingMap { map: ROUTER_SPECS })?;
        let specs = Array::try_from(map).map_err(|source| AttachError::Map {
            map: ROUTER_SPECS,
            source,
        })?;
        Ok(Self {
            prog,
            specs,
            free: (0..ROUTER_SPECS_SLOTS).rev().collect(),
            by_file: HashMap::new(),
            generation: 1,
        })
    }

    /// Probes every router `bin` links whose template can be found; the links join the
    /// binary's (`links`) and are detached with them. A router that cannot be probed is
    /// logged and left out: its requests keep their paths.
    fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        bin: &GoBinary,
        target: &Path,
        pid: u32,
        links: &mut Vec<(&'static str, UProbeLinkId)>,
    ) {
        for router in routers::present(bin) {
            let not_probed = |e: &dyn std::fmt::Display| {
                warn!(pid, router = router.name, error = %e, "Go router not probed: its requests keep their paths");
            };
            let (mut spec, source) = match routers::spec_for(bin, router) {
                Ok(s) => s,
                Err(e) => {
                    not_probed(&e);
                    continue;
                }
            };
            let offsets = match bin.probe_points(router.function) {
                Ok(p) => match router.point {
                    routers::Point::Entry => vec![p.entry_probe_file_offset],
                    routers::Point::Returns => p.ret_file_offsets,
                },
                Err(e) => {
                    not_probed(&e);
                    continue;
                }
            };
            let Some(slot) = self.free.pop() else {
                not_probed(&"every ROUTER_SPECS slot is in use");
                continue;
            };
            spec.valid = self.generation;
            self.generation = self.generation.checked_add(1).unwrap_or(1);
            if let Err(e) = self.specs.set(slot, &spec, 0) {
                self.free.push(slot);
                not_probed(&e);
                continue;
            }
            let points = offsets.iter().map(|o| UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(*o),
                cookie: Some(cookie::encode(slot, spec.valid)),
            });
            let result = match ebpf.program_mut(self.prog).map(<&mut UProbe>::try_from) {
                Some(Ok(p)) => p
                    .attach(points, target, UProbeScope::AllProcesses)
                    .map_err(|e| e.to_string()),
                _ => Err(format!("{} missing", self.prog)),
            };
            match result {
                Ok(link) => {
                    links.push((self.prog, link));
                    self.by_file
                        .entry((bin.dev, bin.ino))
                        .or_default()
                        .push(slot);
                    info!(pid, router = router.name, source = ?source, points = offsets.len(), "Go router probed for route templates");
                }
                Err(e) => {
                    let _ = self.specs.set(slot, &RouterSpec::default(), 0);
                    self.free.push(slot);
                    not_probed(&e);
                }
            }
        }
    }

    /// Empties the slots of a file whose links were dropped.
    fn release(&mut self, file: (u64, u64)) {
        for slot in self.by_file.remove(&file).unwrap_or_default() {
            let _ = self.specs.set(slot, &RouterSpec::default(), 0);
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000_000;

    /// Catches: a connection (state 01, 06) on the port taken for its listener, the remote
    /// port compared instead of the local one, a port read as decimal, the wrong inode column.
    #[test]
    fn listeners_are_found_by_local_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1589 1 000000007d537b2a 100 0 0 10 0
   1: 0100007F:20FB 0100007F:AA3F 01 00000000:00000000 00:00000000 00000000     0        0 1590 1 00000000067054f9
   2: 0100007F:AA3F 0100007F:20FB 06 00000000:00000000 03:000005E1 00000000     0        0 0 3 00000000067054f9
   3: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, 0x20FB).collect::<Vec<_>>(), [1589]);
        assert_eq!(listening_inodes(table, 8080).collect::<Vec<_>>(), [4242]);
        assert_eq!(listening_inodes(table, 0xAA3F).count(), 0);
        assert_eq!(listening_inodes("garbage\n1: x y", 80).count(), 0);
    }

    /// Catches: a process taken as the listener because its namespace has one on the port (a
    /// sibling process holds it), and a missing process taken as listening.
    #[test]
    fn a_listener_counts_only_for_the_process_holding_it() {
        let me = std::process::id();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let proc_root = Path::new("/proc");
        assert!(listens_on(proc_root, me, port));
        // PID 1 shares no descriptor with us; an unused port has no listener.
        assert!(!listens_on(proc_root, 1, port) || me == 1);
        drop(listener);
        assert!(!listens_on(proc_root, me, port));
        assert!(!listens_on(proc_root, u32::MAX, port));
    }

    #[test]
    fn live_requests_are_never_swept_however_long_they_run() {
        // A stream that has run for a day in a process started before it.
        assert!(!inflight_is_stale(10 * MIN, Some(MIN)));
        assert!(!inflight_is_stale(MIN, Some(MIN)));
        // The process is gone, or its pid belongs to a process started after the request.
        assert!(inflight_is_stale(10 * MIN, None));
        assert!(inflight_is_stale(10 * MIN, Some(11 * MIN)));
    }

    #[test]
    fn process_start_reads_field_22_after_the_command_name() {
        let dir = std::env::temp_dir().join(format!("go-http-stat-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("42")).expect("dir");
        // A command name with spaces and a ')' of its own; starttime 12345 ticks.
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10";
        std::fs::write(dir.join("42/stat"), stat).expect("stat");
        assert_eq!(
            process_start_ns(&dir, 42, 100),
            Some(123_450_000_000),
            "12345 ticks at 100 Hz"
        );
        assert_eq!(process_start_ns(&dir, 43, 100), None, "no such process");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Finding grpc-go servers and attaching the gRPC uprobes, once per executable file: the start
//! (`handleStream`) and the status write of every transport the binary links (grpc-go's own,
//! net/http's through `ServeHTTP`; a call passes through one of them, so two traps per call).
//!
//! The same rules as `go_http::attach` (whose analysis this reuses): `/proc/<pid>/exe` is
//! opened once and the key (st_dev, st_ino), the analysis and the attach target all come from
//! that descriptor; only addresses `GoBinary::probe_points` verified are used; each attachment
//! gets a slot in `GRPC_OFFSETS` (with its generation, the probes' attach cookie); files nobody runs are detached.
//! Discovery runs on this module's own thread: exec notices from the kernel (forwarded from
//! the ring reader) check a new process at once; a /proc scan every second is the safety net
//! and finds processes that predate the collector.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
    sys::{UProbeMultiFeature, is_uprobe_multi_supported},
};
use collector_common::{
    cookie,
    grpc::{GRPC_OFFSETS_SLOTS, GrpcOffsets},
};
use tracing::{debug, info, warn};

use super::{HANDLE_STREAM, TRANSPORTS, Transport, offsets};
use crate::{
    export::{Metrics, prometheus::ReasonLabels},
    probes::go_http::{GoBinary, analyze_file},
};

/// (per-point program, uprobe.multi program): the status write (attached once per transport)
/// first, the start last, so a start is never seen without its end; between them the mark of
/// calls served through net/http (`ServeHTTP` entry, where the binary has it), which makes
/// net/http's probes leave those calls to this family.
const PROGS: [(&str, &str); 3] = [
    ("grpc_write_status", "grpc_write_status_m"),
    ("grpc_stream_start", "grpc_stream_start_m"),
    ("grpc_serve_http", "grpc_serve_http_m"),
];
const WRITE_STATUS_PROG: usize = 0;
const START_PROG: usize = 1;
const SERVE_HTTP_PROG: usize = 2;

/// grpc-go mounted in a net/http server (`http.Handler`).
const SERVE_HTTP: &str = "google.golang.org/grpc.(*Server).ServeHTTP";

pub const SCAN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("uprobe program {0} missing from the object")]
    MissingProgram(&'static str),
    #[error("loading {prog}: {source}")]
    Load {
        prog: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// What the API reports about one instrumented executable.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Instrumented {
    pub path: String,
    pub go_version: String,
    pub grpc_version: String,
    pub offsets: String,
    /// The transports whose status write is probed (`Transport::name`), in attach order.
    pub transports: Vec<&'static str>,
    pub pids: Vec<u32>,
}

enum Tracked {
    Instrumented {
        slot: u32,
        links: Vec<(&'static str, UProbeLinkId)>,
        pids: HashSet<u32>,
        // Boxed: most files tracked are skipped ones.
        info: Box<Instrumented>,
    },
    Skipped,
}

pub struct GoGrpcProbes {
    ebpf: Arc<Mutex<Ebpf>>,
    progs: [&'static str; 3],
    offsets: Array<MapData, GrpcOffsets>,
    generation: u32,
    files: HashMap<(u64, u64), Tracked>,
    free_slots: Vec<u32>,
    metrics: Arc<Metrics>,
    self_pid: u32,
}

impl GoGrpcProbes {
    /// Loads the programs (once; every attachment reuses them).
    pub fn new(
        ebpf: Arc<Mutex<Ebpf>>,
        offsets: Array<MapData, GrpcOffsets>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AttachError> {
        let multi = matches!(
            is_uprobe_multi_supported(UProbeMultiFeature::LinkCreation),
            Ok(true)
        );
        let progs = PROGS.map(|(single, m)| if multi { m } else { single });
        {
            let mut e = ebpf.lock().unwrap_or_else(|p| p.into_inner());
            for prog in progs {
                let p: &mut UProbe = e
                    .program_mut(prog)
                    .ok_or(AttachError::MissingProgram(prog))?
                    .try_into()
                    .map_err(|source| AttachError::Load { prog, source })?;
                p.load()
                    .map_err(|source| AttachError::Load { prog, source })?;
            }
        }
        info!(multi, "grpc-go uprobes loaded");
        Ok(Self {
            ebpf,
            progs,
            offsets,
            generation: 1,
            files: HashMap::new(),
            free_slots: (0..GRPC_OFFSETS_SLOTS).rev().collect(),
            metrics,
            self_pid: std::process::id(),
        })
    }

    pub fn instrumented(&self) -> Vec<Instrumented> {
        let mut out: Vec<Instrumented> = self
            .files
            .values()
            .filter_map(|t| match t {
                Tracked::Instrumented { pids, info, .. } => {
                    let mut i = Instrumented::clone(info);
                    i.pids = pids.iter().copied().collect();
                    i.pids.sort_unstable();
                    Some(i)
                }
                Tracked::Skipped => None,
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    fn skip(&self, reason: &'static str) {
        self.metrics
            .grpc
            .binaries_skipped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// New processes, exited ones, files nobody runs any more.
    pub fn rescan(&mut self) {
        let mut live: HashMap<(u64, u64), HashSet<u32>> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid == self.self_pid {
                    continue;
                }
                let exe = PathBuf::from(format!("/proc/{pid}/exe"));
                let Ok(m) = std::fs::metadata(&exe) else {
                    continue;
                };
                let id = (m.dev(), m.ino());
                live.entry(id).or_default().insert(pid);
                if !self.files.contains_key(&id) {
                    self.observe(pid, &exe);
                }
            }
        }
        let mut gone = Vec::new();
        for (id, t) in self.files.iter_mut() {
            match live.get(id) {
                Some(pids) => {
                    if let Tracked::Instrumented { pids: p, .. } = t {
                        *p = pids.clone();
                    }
                }
                None => gone.push(*id),
            }
        }
        for id in gone {
            if let Some(Tracked::Instrumented {
                slot, links, info, ..
            }) = self.files.remove(&id)
            {
                self.detach(slot, links);
                info!(exe = %info.path, "last process gone: grpc-go uprobes detached");
            }
        }
        self.metrics.grpc.binaries_instrumented.set(
            self.files
                .values()
                .filter(|t| matches!(t, Tracked::Instrumented { .. }))
                .count() as i64,
        );
    }

    fn detach(&mut self, slot: u32, mut links: Vec<(&'static str, UProbeLinkId)>) {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken = Vec::new();
        // The start first, then the status write: no start without its end.
        for (prog, link) in links.drain(..).rev() {
            if let Some(Ok(p)) = ebpf.program_mut(prog).map(<&mut UProbe>::try_from) {
                match p.take_link(link) {
                    Ok(l) => taken.push(l),
                    Err(e) => warn!(prog, error = %e, "detaching uprobe"),
                }
            }
        }
        drop(ebpf);
        // Per-point detach waits one RCU grace period per point: not on this thread.
        std::thread::spawn(move || drop(taken));
        let _ = self.offsets.set(slot, &GrpcOffsets::default(), 0);
        self.free_slots.push(slot);
    }

    /// An exec notice: the process's file, unless it is known already.
    pub fn observe_pid(&mut self, pid: u32) {
        if pid == self.self_pid {
            return;
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Ok(m) = std::fs::metadata(&exe) else {
            return;
        };
        match self.files.get_mut(&(m.dev(), m.ino())) {
            Some(Tracked::Instrumented { pids, .. }) => {
                pids.insert(pid);
            }
            Some(Tracked::Skipped) => {}
            None => self.observe(pid, &exe),
        }
    }

    fn observe(&mut self, pid: u32, exe: &Path) {
        let Ok(file) = File::open(exe) else { return };
        let Ok(meta) = file.metadata() else { return };
        let id = (meta.dev(), meta.ino());
        let tracked = match self.instrument(exe, file, id, pid) {
            Ok(t) => t,
            Err(None) => return,
            Err(Some(reason)) => {
                debug!(pid, reason, "not instrumented for gRPC");
                Tracked::Skipped
            }
        };
        self.files.insert(id, tracked);
    }

    /// `Err(None)`: look again later (the file changed under the analysis).
    fn instrument(
        &mut self,
        exe: &Path,
        file: File,
        id: (u64, u64),
        pid: u32,
    ) -> Result<Tracked, Option<String>> {
        let bin = match analyze_file(exe, file) {
            Ok(b) => b,
            Err(e) if e.is_not_go() => return Err(Some("not a Go binary".into())),
            Err(e) => return Err(Some(e.to_string())),
        };
        if bin.function(HANDLE_STREAM).is_none() {
            return Err(Some("no grpc-go server".into()));
        }
        let (writes, new_layout) = match status_writes(|f| bin.function(f).is_some()) {
            Ok(w) => w,
            Err(e) => {
                self.skip("no_status_write");
                warn!(pid, error = e, "grpc-go server not instrumented");
                return Err(Some(e.into()));
            }
        };
        let (mut offs, source) = match offsets::offsets_for(&bin, new_layout) {
            Ok(o) => o,
            Err(offsets::GrpcOffsetsError::Dwarf(e))
                if matches!(e.kind(), crate::probes::go_http::OffsetsError::Replaced) =>
            {
                return Err(None);
            }
            // The DWARF reader opens `/proc/<pid>/exe` again: a process that exited meanwhile
            // (a short run of the same file, `server -version`, just before the real server)
            // leaves nothing to open. Not the file's fault: looked at again when a process
            // runs it, instead of skipping the file for good (seen in tests/tests/grpc.rs).
            Err(offsets::GrpcOffsetsError::Dwarf(e))
                if matches!(e.kind(), crate::probes::go_http::OffsetsError::Open { .. })
                    && std::fs::metadata(exe).is_err() =>
            {
                return Err(None);
            }
            Err(e) => {
                self.skip("no_offsets");
                warn!(pid, go = %bin.go_version, error = %e, "grpc-go server not instrumented: struct offsets unknown");
                return Err(Some(e.to_string()));
            }
        };
        let points = match points(&bin, &self.progs, &writes) {
            Ok(p) => p,
            Err(e) => {
                self.skip("unverified_addresses");
                warn!(pid, error = %e, "grpc-go server not instrumented");
                return Err(Some(e));
            }
        };
        let target = match bin.uprobe_target() {
            Ok(t) if (bin.dev, bin.ino) == id => t,
            _ => return Err(None),
        };
        let Some(slot) = self.free_slots.pop() else {
            self.skip("slots_exhausted");
            return Err(Some("all offset slots in use".into()));
        };
        offs.valid = self.generation;
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        if let Err(e) = self.offsets.set(slot, &offs, 0) {
            self.free_slots.push(slot);
            return Err(Some(format!("writing offsets: {e}")));
        }
        let mut links = Vec::new();
        let t = Instant::now();
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        for (prog, offset) in points {
            let result = match ebpf.program_mut(prog).map(<&mut UProbe>::try_from) {
                Some(Ok(p)) => p
                    .attach(
                        [UProbeAttachPoint {
                            location: UProbeAttachLocation::AbsoluteOffset(offset),
                            cookie: Some(cookie::encode(slot, offs.valid)),
                        }],
                        &target,
                        UProbeScope::AllProcesses,
                    )
                    .map_err(|e| e.to_string()),
                _ => Err(format!("{prog} missing")),
            };
            match result {
                Ok(link) => links.push((prog, link)),
                Err(e) => {
                    drop(ebpf);
                    self.detach(slot, links);
                    self.skip("attach_failed");
                    warn!(pid, prog, error = %e, "attaching grpc-go uprobes");
                    return Err(Some(format!("attaching {prog}: {e}")));
                }
            }
        }
        drop(ebpf);
        let grpc_version = offsets::grpc_version(&bin).unwrap_or("").to_owned();
        let source = match source {
            offsets::Source::Dwarf => "dwarf".to_owned(),
            offsets::Source::Table { grpc } => format!("table {grpc}"),
        };
        let transports: Vec<&'static str> = writes.iter().map(|(t, _)| t.name).collect();
        info!(pid, exe = %bin.path.display(), go = %bin.go_version, grpc = %grpc_version, offsets = %source, ?transports, attach = ?t.elapsed(), "grpc-go server instrumented");
        Ok(Tracked::Instrumented {
            slot,
            links,
            pids: HashSet::from([pid]),
            info: Box::new(Instrumented {
                path: std::fs::read_link(&target)
                    .unwrap_or_else(|_| exe.to_path_buf())
                    .display()
                    .to_string(),
                go_version: bin.go_version.clone(),
                grpc_version,
                offsets: source,
                transports,
                pids: Vec::new(),
            }),
        })
    }

    /// Detaches everything (shutdown).
    pub fn detach_all(&mut self) {
        let all: Vec<_> = self.files.drain().collect();
        for (_, t) in all {
            if let Tracked::Instrumented { slot, links, .. } = t {
                self.detach(slot, links);
            }
        }
    }
}

/// (transport, its status write's function name), in `TRANSPORTS` order.
type StatusWrites = Vec<(Transport, &'static str)>;

/// The status write of each transport the binary links (`has`: whether it has a function), and
/// whether they take the new stream (`*ServerStream`, grpc-go ≥ 1.69). A server may link one
/// transport or both (every grpc-go server built in the tests links both).
fn status_writes(has: impl Fn(&str) -> bool) -> Result<(StatusWrites, bool), &'static str> {
    let writes: StatusWrites = TRANSPORTS
        .iter()
        .filter_map(|t| t.write_status.iter().find(|f| has(f)).map(|f| (*t, *f)))
        .collect();
    let Some((first, f)) = writes.first() else {
        return Err("no known status write");
    };
    let new_layout = *f == first.write_status[0];
    // One grpc-go version: the transports' signatures and stream types change together, and
    // the offsets are looked up once for both.
    if writes
        .iter()
        .any(|(t, f)| (*f == t.write_status[0]) != new_layout)
    {
        return Err("status writes of two stream layouts");
    }
    Ok((writes, new_layout))
}

/// (program, file offset) in attach order: each transport's status write, `ServeHTTP`'s entry
/// (where linked), then `handleStream`'s entry.
fn points(
    bin: &GoBinary,
    progs: &[&'static str; 3],
    writes: &[(Transport, &'static str)],
) -> Result<Vec<(&'static str, u64)>, String> {
    let mut out = Vec::with_capacity(writes.len() + 2);
    for (_, f) in writes {
        let p = bin.probe_points(f).map_err(|e| format!("{f}: {e}"))?;
        out.push((progs[WRITE_STATUS_PROG], p.entry_probe_file_offset));
    }
    // Linked when something references it (a server mounted in net/http); its entry verified
    // like every point, or the binary is refused rather than probed at a guessed address.
    if bin.function(SERVE_HTTP).is_some() {
        let p = bin
            .probe_points(SERVE_HTTP)
            .map_err(|e| format!("{SERVE_HTTP}: {e}"))?;
        out.push((progs[SERVE_HTTP_PROG], p.entry_probe_file_offset));
    }
    let start = bin
        .probe_points(HANDLE_STREAM)
        .map_err(|e| format!("{HANDLE_STREAM}: {e}"))?;
    out.push((progs[START_PROG], start.entry_probe_file_offset));
    Ok(out)
}

/// Discovery on its own thread: ELF analysis and attachment block. Exec notices (`execs`)
/// are looked at as they come, /proc is scanned every `SCAN_EVERY`; what is instrumented is
/// published into `state`. Ends when `stop` is set, detaching everything.
pub fn spawn(
    mut probes: GoGrpcProbes,
    state: Arc<Mutex<Vec<Instrumented>>>,
    mut execs: Option<std::sync::mpsc::Receiver<u32>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::mpsc::RecvTimeoutError;
    std::thread::spawn(move || {
        let publish =
            |p: &GoGrpcProbes| *state.lock().unwrap_or_else(|e| e.into_inner()) = p.instrumented();
        let mut last_scan: Option<Instant> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if last_scan.is_none_or(|t| t.elapsed() >= SCAN_EVERY) {
                probes.rescan();
                last_scan = Some(Instant::now());
                publish(&probes);
            }
            let wait = SCAN_EVERY.saturating_sub(last_scan.map_or(SCAN_EVERY, |t| t.elapsed()));
            match execs.as_ref().map(|rx| rx.recv_timeout(wait)) {
                Some(Ok(pid)) => {
                    probes.observe_pid(pid);
                    publish(&probes);
                }
                Some(Err(RecvTimeoutError::Timeout)) => {}
                // The reader stopped (shutting down) or there are no notices: scans only.
                Some(Err(RecvTimeoutError::Disconnected)) | None => {
                    execs = None;
                    std::thread::sleep(wait);
                }
            }
        }
        probes.detach_all();
        state.lock().unwrap_or_else(|e| e.into_inner()).clear();
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::go_grpc::{HANDLER, NATIVE};

    fn names(w: &[(Transport, &'static str)]) -> Vec<&'static str> {
        w.iter().map(|(_, f)| *f).collect()
    }

    #[test]
    fn each_linked_transport_gets_its_status_write() {
        let both_new = [NATIVE.write_status[0], HANDLER.write_status[0]];
        let (w, new) = status_writes(|f| both_new.contains(&f)).expect("both");
        assert!(new);
        assert_eq!(names(&w), both_new);
        // grpc-go ≤ 1.68: the exported names, the old stream.
        let both_old = [NATIVE.write_status[1], HANDLER.write_status[1]];
        let (w, new) = status_writes(|f| both_old.contains(&f)).expect("both, old");
        assert!(!new);
        assert_eq!(names(&w), both_old);
        // One transport linked: that one alone.
        let (w, _) = status_writes(|f| f == HANDLER.write_status[0]).expect("handler only");
        assert_eq!(names(&w), [HANDLER.write_status[0]]);
        let (w, _) = status_writes(|f| f == NATIVE.write_status[1]).expect("native only");
        assert_eq!(names(&w), [NATIVE.write_status[1]]);
    }

    #[test]
    fn no_status_write_or_mixed_layouts_are_refused() {
        assert_eq!(
            status_writes(|_| false).err(),
            Some("no known status write")
        );
        let mixed = [NATIVE.write_status[0], HANDLER.write_status[1]];
        assert_eq!(
            status_writes(|f| mixed.contains(&f)).err(),
            Some("status writes of two stream layouts")
        );
    }
}

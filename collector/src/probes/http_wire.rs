//! Attaching the socket-level HTTP/1.x parser (kernel side: `collector-ebpf/src/http_wire.rs`).
//!
//! Two `cgroup_skb` programs (ingress, egress) attached once to the root of the cgroup2
//! hierarchy, where they see every TCP packet of every socket on the host whichever cgroup it
//! lives in. Attached through BPF links, which run beside whatever other tools attach there
//! (systemd's IP accounting, a CNI's policies) and disappear with the collector's process,
//! even after a SIGKILL. The programs only observe:
//! they always return "allow".
//!
//! Each program tail-calls itself for segments that need more than one invocation, and the
//! egress program hands complete responses to a third program (only reached by tail call);
//! the program array `WIRE_PROGS` is filled here with their fds before anything attaches.

use std::{fs::File, path::Path, time::Instant};

use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, ProgramFd},
};
use collector_common::maps::{
    WIRE_PROG_ACTION, WIRE_PROG_EGRESS, WIRE_PROG_INGRESS, WIRE_PROGS_RX, WIRE_PROGS_TX,
};
use thiserror::Error;
use tracing::{debug, warn};

use super::ladder::Programs;

#[derive(Debug, Error)]
pub enum WireError {
    #[error("cannot open the cgroup2 root {path}")]
    Root {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("{prog}")]
    Program {
        prog: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program array")]
    ProgArray(#[source] aya::maps::MapError),
}

/// (program, where it attaches — None: only reached by tail call, its program array and slot).
type Entry = (&'static str, Option<CgroupSkbAttachType>, &'static str, u32);
const PROGRAMS: [Entry; 3] = [
    (
        "http_wire_ingress",
        Some(CgroupSkbAttachType::Ingress),
        WIRE_PROGS_RX,
        WIRE_PROG_INGRESS,
    ),
    (
        "http_wire_egress",
        Some(CgroupSkbAttachType::Egress),
        WIRE_PROGS_TX,
        WIRE_PROG_EGRESS,
    ),
    (
        "http_wire_egress_action",
        None,
        WIRE_PROGS_TX,
        WIRE_PROG_ACTION,
    ),
];

/// The parser's programs, taken out of the object's (`take`) so they are verified beside the
/// TCP ladders (`ProbeSet::attach`).
pub struct Taken<'a>(Vec<(usize, &'static str, &'a mut CgroupSkb)>);

/// The parser's programs, verified: a descriptor of each, in `PROGRAMS` order.
pub struct Loaded(Vec<ProgramFd>);

/// Takes the parser's three programs out of `programs`.
pub fn take<'a>(programs: &mut Programs<'a>) -> Result<Taken<'a>, WireError> {
    let mut progs = Vec::new();
    for (i, (name, ..)) in PROGRAMS.iter().enumerate() {
        let prog: &mut CgroupSkb = programs
            .remove(name)
            .ok_or(WireError::MissingProgram(name))?
            .try_into()
            .map_err(|source| WireError::Program { prog: name, source })?;
        progs.push((i, *name, prog));
    }
    Ok(Taken(progs))
}

/// Loads the three programs, each on its own thread: their verification is most of the
/// collector's start-up (over a second on a 2-core machine before the verifier-shaped code)
/// and the kernel verifies independent loads in parallel.
pub fn load(taken: Taken<'_>) -> Result<Loaded, WireError> {
    let mut loaded: Vec<(usize, Result<ProgramFd, WireError>)> = std::thread::scope(|s| {
        let threads: Vec<_> = taken
            .0
            .into_iter()
            .map(|(i, name, prog)| {
                s.spawn(move || {
                    let (started, cpu) = (Instant::now(), thread_cpu());
                    let fd = prog
                        .load()
                        .and_then(|()| prog.fd()?.try_clone().map_err(ProgramError::from))
                        .map_err(|source| WireError::Program { prog: name, source });
                    debug!(
                        prog = name,
                        elapsed = ?started.elapsed(),
                        cpu = ?thread_cpu().saturating_sub(cpu),
                        "socket parser program verified"
                    );
                    (i, fd)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    loaded.sort_by_key(|(i, _)| *i);
    loaded
        .into_iter()
        .map(|(_, fd)| fd)
        .collect::<Result<_, _>>()
        .map(Loaded)
}

/// Attaches both loaded programs at `cgroup_root`. On error nothing of ours stays attached
/// (the links of a half-done attach go with the programs when `Ebpf` is dropped, and a failed
/// start drops it).
pub fn attach(ebpf: &mut Ebpf, cgroup_root: &Path, loaded: Loaded) -> Result<(), WireError> {
    let root = File::open(cgroup_root).map_err(|source| WireError::Root {
        path: cgroup_root.display().to_string(),
        source,
    })?;
    // Off the start path: the scan reads every process's fdinfo and waits 500 ms.
    std::thread::spawn(report_stale_program_arrays);
    // The program arrays before the attachment: a tail call into an empty slot would leave
    // a segment half parsed.
    for ((_, _, array, index), fd) in PROGRAMS.iter().zip(&loaded.0) {
        let map = ebpf
            .map_mut(array)
            .ok_or(WireError::MissingProgram(array))?;
        let mut progs = ProgramArray::try_from(map).map_err(WireError::ProgArray)?;
        progs.set(*index, fd, 0).map_err(WireError::ProgArray)?;
    }
    for (name, attach_type, _, _) in PROGRAMS {
        let Some(attach_type) = attach_type else {
            continue;
        };
        let prog: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or(WireError::MissingProgram(name))?
            .try_into()
            .map_err(|source| WireError::Program { prog: name, source })?;
        // Through a BPF link (aya uses one on ≥ 5.7): a cgroup link takes no flags and always
        // runs beside the other programs attached there; passing BPF_F_ALLOW_MULTI fails.
        prog.attach(&root, attach_type, CgroupAttachMode::Single)
            .map_err(|source| WireError::Program { prog: name, source })?;
    }
    Ok(())
}

/// Logs the arrays [`stale_program_arrays`] finds, with their count and ids.
fn report_stale_program_arrays() {
    let stale = stale_program_arrays();
    if !stale.is_empty() {
        warn!(
            count = stale.len(),
            ids = ?stale,
            "program arrays of an earlier collector are stuck in the kernel (empty; freed only \
             by a reboot): an observer opened them while their owner died"
        );
    }
}

/// Ids of the socket parser's program arrays (`WIRE_PROGS_*`) that no process holds: kept in
/// the kernel after their collector died. Observed: an observer opening the arrays by id
/// (`bpftool map show` does, for every map) while their collector is killed leaves them, for
/// good (3 of 3 kill -9s; none without the observer). Inferred cause: Linux takes a reference
/// for its deferred clear of a program array each time the array's last user reference goes,
/// and a second clear queued while the first is pending is dropped without giving its
/// reference back. Nothing user space can do drops it, so the collector reports them; they
/// are empty (the clear that ran emptied them), so no program stays loaded with them.
///
/// Maps held by a process are left alone: only a map nobody has held for `STUCK_AFTER` is
/// opened (to read its name). That open could itself be the observer of the race above only
/// if a dead collector's deferred clear were still pending `STUCK_AFTER` after its death.
///
/// An array seen unheld twice, `STUCK_AFTER` apart: a dying collector's arrays are unheld too
/// for the moment the kernel takes to clear and free them.
pub fn stale_program_arrays() -> Vec<u32> {
    let unheld = || -> std::collections::BTreeSet<u32> {
        let held = held_map_ids();
        map_ids()
            .into_iter()
            .filter(|id| !held.contains(id))
            .collect()
    };
    let first = unheld();
    std::thread::sleep(STUCK_AFTER);
    let second = unheld();
    first
        .intersection(&second)
        .copied()
        .filter(|id| {
            aya::maps::MapInfo::from_id(*id).is_ok_and(|info| {
                matches!(info.map_type(), Ok(aya::maps::MapType::ProgramArray))
                    && matches!(info.name_as_str(), Some(WIRE_PROGS_RX | WIRE_PROGS_TX))
            })
        })
        .collect()
}

/// Far longer than the kernel's deferred clear and free of a dead collector's arrays takes.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Every BPF map id, walked with `BPF_MAP_GET_NEXT_ID` (which opens nothing).
fn map_ids() -> Vec<u32> {
    #[repr(C)]
    struct NextId {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
    let mut ids = Vec::new();
    let mut attr = NextId {
        start_id: 0,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: a zero-padded bpf_attr prefix for BPF_MAP_GET_NEXT_ID, of its size.
    while unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_NEXT_ID,
            std::ptr::from_mut(&mut attr),
            size_of::<NextId>(),
        )
    } == 0
    {
        ids.push(attr.next_id);
        attr.start_id = attr.next_id;
    }
    ids
}

/// Ids of the maps some process holds a descriptor of (the `map_id:` lines of /proc's fdinfo).
fn held_map_ids() -> std::collections::HashSet<u32> {
    let mut held = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return held;
    };
    for p in procs.flatten() {
        if !p
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            held.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("map_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    held
}

/// CPU time this thread has used (the verifier runs in the loading thread's context, so its
/// cost shows here whatever else the machine is doing).
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid pointer to a timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Empties the program arrays before the programs are unloaded. A program array and the
/// programs in it reference each other; the kernel breaks that cycle when the last user
/// reference to the array goes, but test runs showed arrays left behind (empty, no program)
/// after some shutdowns, so the collector breaks it itself first.
pub fn detach(ebpf: &mut Ebpf) {
    for (_, _, array, index) in PROGRAMS {
        if let Some(map) = ebpf.map_mut(array)
            && let Ok(mut progs) = ProgramArray::try_from(map)
        {
            let _ = progs.clear_index(&index);
        }
    }
}

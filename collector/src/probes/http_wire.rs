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

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError},
};
use collector_common::maps::{
    WIRE_PROG_ACTION, WIRE_PROG_EGRESS, WIRE_PROG_INGRESS, WIRE_PROGS_RX, WIRE_PROGS_TX,
};
use thiserror::Error;

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

/// Loads and attaches both programs at `cgroup_root`. On error nothing of ours stays attached
/// (the links of a half-done attach go with the programs when `Ebpf` is dropped, and a failed
/// start drops it).
pub fn attach(ebpf: &mut Ebpf, cgroup_root: &Path) -> Result<(), WireError> {
    let root = File::open(cgroup_root).map_err(|source| WireError::Root {
        path: cgroup_root.display().to_string(),
        source,
    })?;
    let mut fds = Vec::new();
    for (name, _, _, _) in PROGRAMS {
        let prog: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or(WireError::MissingProgram(name))?
            .try_into()
            .map_err(|source| WireError::Program { prog: name, source })?;
        prog.load()
            .map_err(|source| WireError::Program { prog: name, source })?;
        fds.push(
            prog.fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
                .map_err(|source| WireError::Program { prog: name, source })?,
        );
    }
    // The program arrays before the attachment: a tail call into an empty slot would leave
    // a segment half parsed.
    for ((_, _, array, index), fd) in PROGRAMS.iter().zip(&fds) {
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

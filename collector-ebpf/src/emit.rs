//! Ring-buffer emission: reserve → fill → submit, and count reserve failures.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task},
};
use collector_common::{
    event::{EventHeader, EventKind},
    maps::{EVENTS_BYTES, KernelDrop},
    process::ProcessEvent,
};

use crate::{
    globals::{TASK_COMM_OFF, TASK_LEADER_OFF},
    klog::klog,
    maps::{EVENTS, SEEN_TGIDS, count_drop},
    sock::read,
};

/// Submit flags of a per-request record (HTTP, gRPC): wake the reader only when the ring is
/// half full. The reader drains on a short timer anyway (`events::reader`), and a wake-up per
/// record cost more than the request it describes: ~11–12 µs of program time per record here
/// (the socket parser's record, the gRPC status write's 12.8–14.1 µs against 1.6–1.8 µs with
/// records sampled 1 in 64). Rare records (a new process, an exec) keep waking it at once.
#[inline(always)]
pub fn record_wake_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > u64::from(EVENTS_BYTES / 2) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// `current->group_leader->comm`: the process name, where the current thread may have its own.
#[inline(always)]
fn leader_comm() -> Option<[u8; 16]> {
    let (leader_off, comm_off) = (TASK_LEADER_OFF.load(), TASK_COMM_OFF.load());
    if leader_off == 0 || comm_off == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let leader = read::<u64>(task, leader_off)?;
    read::<[u8; 16]>(leader, comm_off)
}

/// Re-announce a process at most this often, so userspace that restarted or evicted its cache
/// learns about it again without a per-send event.
pub const REANNOUNCE_NS: u64 = 30_000_000_000;

/// Emits a `ProcessEvent` the first time (in `REANNOUNCE_NS`) a tgid is seen, `now` being
/// `bpf_ktime_get_ns()`. Process context only.
#[inline(always)]
pub fn announce_process(tgid: u32, now: u64) {
    // SAFETY: plain u64 value; a racing update only makes us announce twice.
    if let Some(last) = unsafe { SEEN_TGIDS.get(&tgid) } {
        if now.wrapping_sub(*last) < REANNOUNCE_NS {
            return;
        }
    }
    if let Err(e) = SEEN_TGIDS.insert(&tgid, &now, 0) {
        // Only costs a repeated announcement.
        klog!(
            Debug,
            "SEEN_TGIDS insert for process {} failed with {}",
            tgid,
            e
        );
    }
    let Some(mut entry) = EVENTS.reserve::<ProcessEvent>(0) else {
        count_drop(KernelDrop::RingReserve);
        klog!(
            Warn,
            "ring_reserve_failed: EVENTS full, process {} announced later",
            tgid
        );
        // Forget it so the next send tries again.
        let _ = SEEN_TGIDS.remove(&tgid);
        return;
    };
    let comm = leader_comm().unwrap_or_else(|| bpf_get_current_comm().unwrap_or([0u8; 16]));
    entry.write(ProcessEvent {
        header: EventHeader::new(EventKind::Process, now),
        tgid,
        _pad: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm,
    });
    entry.submit(0);
}

//! Ring-buffer emission: reserve → fill → submit, and count reserve failures.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns};
use collector_common::{
    event::{EVENT_VERSION, EventHeader, EventKind},
    maps::KernelDrop,
    process::ProcessEvent,
};

use crate::maps::{EVENTS, SEEN_TGIDS, count_drop};

/// Re-announce a process at most this often, so userspace that restarted or evicted its cache
/// learns about it again without a per-send event.
const REANNOUNCE_NS: u64 = 30_000_000_000;

/// Emits a `ProcessEvent` the first time (in `REANNOUNCE_NS`) a tgid is seen. Process context only.
#[inline(always)]
pub fn announce_process(tgid: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain u64 value; a racing update only makes us announce twice.
    if let Some(last) = unsafe { SEEN_TGIDS.get(&tgid) } {
        if now.wrapping_sub(*last) < REANNOUNCE_NS {
            return;
        }
    }
    let _ = SEEN_TGIDS.insert(&tgid, &now, 0);
    let Some(mut entry) = EVENTS.reserve::<ProcessEvent>(0) else {
        count_drop(KernelDrop::RingReserve);
        // Forget it so the next send tries again.
        let _ = SEEN_TGIDS.remove(&tgid);
        return;
    };
    let comm = bpf_get_current_comm().unwrap_or([0u8; 16]);
    entry.write(ProcessEvent {
        header: EventHeader {
            kind: EventKind::Process as u16,
            version: EVENT_VERSION,
            _pad: 0,
            ts_ns: now,
        },
        tgid,
        _pad: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm,
    });
    entry.submit(0);
}

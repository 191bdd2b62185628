//! Maps shared by all programs. Names and sizes come from `collector_common::maps`; the
//! static names here must match them (the loader looks maps up by these names).

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};
use collector_common::{
    http::{
        GoHttpOffsets, HttpCounts, Inflight, InflightKey,
        unseen::UnseenKey,
        wire::{Target, TargetKey, WireConn, WireScratch},
    },
    maps::{
        EVENTS_BYTES, FRAMES_ENTRIES, HTTP_COUNTS_ENTRIES, HTTP_INFLIGHT_ENTRIES,
        HTTP_OFFSETS_SLOTS, KernelDrop, SEEN_TGIDS_ENTRIES, SOCK_OWNERS_ENTRIES, TCP_STATS_ENTRIES,
        WIRE_SLOTS, WIRE_TARGETS_ENTRIES, WIRE_UNSEEN_ENTRIES,
    },
    tcp::{Frames, OwnerKey, SockOwner, TcpStats},
};

#[map]
pub static HTTP_OFFSETS: Array<GoHttpOffsets> = Array::with_max_entries(HTTP_OFFSETS_SLOTS, 0);

#[map]
pub static HTTP_INFLIGHT: HashMap<InflightKey, Inflight> =
    HashMap::with_max_entries(HTTP_INFLIGHT_ENTRIES, 0);

#[map]
pub static HTTP_COUNTS: PerCpuHashMap<OwnerKey, HttpCounts> =
    PerCpuHashMap::with_max_entries(HTTP_COUNTS_ENTRIES, 0);

#[map]
pub static HTTP_SAMPLING: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static TCP_STATS: PerCpuHashMap<OwnerKey, TcpStats> =
    PerCpuHashMap::with_max_entries(TCP_STATS_ENTRIES, 0);

#[map]
pub static SOCK_OWNERS: LruHashMap<u64, SockOwner> =
    LruHashMap::with_max_entries(SOCK_OWNERS_ENTRIES, 0);

#[map]
pub static SEEN_TGIDS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(SEEN_TGIDS_ENTRIES, 0);

/// Entry → return hand-over per hook group, keyed by the task (see `collector_common::maps`).
#[map]
pub static SEND_FRAMES: LruHashMap<u64, Frames> = LruHashMap::with_max_entries(FRAMES_ENTRIES, 0);

#[map]
pub static RETRANS_FRAMES: LruHashMap<u64, Frames> =
    LruHashMap::with_max_entries(FRAMES_ENTRIES, 0);

#[map]
pub static SYNACK_FRAMES: LruHashMap<u64, Frames> = LruHashMap::with_max_entries(FRAMES_ENTRIES, 0);

/// Server sockets the parser cannot read, last told to userspace (`maps::WIRE_UNSEEN`).
#[map]
pub static WIRE_UNSEEN: LruHashMap<UnseenKey, u64> =
    LruHashMap::with_max_entries(WIRE_UNSEEN_ENTRIES, 0);

/// The socket parser's state, stored with each followed socket (`maps::WIRE_CONNS`).
#[btf_map]
pub static WIRE_CONNS: SkStorage<WireConn> = SkStorage::new();

#[map]
pub static WIRE_TARGETS: LruHashMap<TargetKey, Target> =
    LruHashMap::with_max_entries(WIRE_TARGETS_ENTRIES, 0);

/// `WIRE_SLOTS` ingress slots, then as many egress slots (see `maps::WIRE_SCRATCH`).
#[map]
pub static WIRE_SCRATCH: PerCpuArray<WireScratch> =
    PerCpuArray::with_max_entries(2 * WIRE_SLOTS, 0);

/// Per direction, a bit per scratch slot in use on this CPU (claimed and released with
/// atomic instructions: the parse that owns a slot may be interrupted by one that claims
/// the next).
#[map]
pub static WIRE_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Where a new connection's state is built before insertion (too large for the stack).
#[map]
pub static WIRE_NEW_CONN: PerCpuArray<WireConn> = PerCpuArray::with_max_entries(WIRE_SLOTS, 0);

/// Where a sampled request's target is built before insertion.
#[map]
pub static WIRE_NEW_TARGET: PerCpuArray<Target> = PerCpuArray::with_max_entries(WIRE_SLOTS, 0);

#[map]
pub static WIRE_PROGS_RX: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
pub static WIRE_PROGS_TX: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KernelDrop::COUNT, 0);

/// Counts something the kernel side could not record. Per-CPU, so no atomics needed.
#[inline(always)]
pub fn count_drop(what: KernelDrop) {
    count_drops(what, 1);
}

/// `count_drop`, `n` times at once.
#[inline(always)]
pub fn count_drops(what: KernelDrop, n: u64) {
    if let Some(p) = DROPS.get_ptr_mut(what as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *p += n };
    }
}

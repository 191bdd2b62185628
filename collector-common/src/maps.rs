//! Map names and sizes shared by both sides.

/// Per-CPU hash `OwnerKey` → `TcpStats`.
pub const TCP_STATS: &str = "TCP_STATS";
/// Sized for a busy node: owners are (cgroup, process) pairs, not sockets. When it is full the
/// kernel charges `OwnerKey::OVERFLOW` and counts `KernelDrop::StatsMapFull`.
pub const TCP_STATS_ENTRIES: u32 = 16_384;
/// LRU hash `struct sock *` → `SockOwner`; LRU so a missed teardown can never fill it.
pub const SOCK_OWNERS: &str = "SOCK_OWNERS";
pub const SOCK_OWNERS_ENTRIES: u32 = 65_536;
/// LRU hash tgid → last emission time of a `ProcessEvent`.
pub const SEEN_TGIDS: &str = "SEEN_TGIDS";
pub const SEEN_TGIDS_ENTRIES: u32 = 16_384;
/// Stash between a kprobe and its kretprobe, keyed by pid_tgid.
pub const PROBE_STASH: &str = "PROBE_STASH";
pub const PROBE_STASH_ENTRIES: u32 = 16_384;
/// Array of `http::GoHttpOffsets`, one slot per instrumented Go executable.
pub const HTTP_OFFSETS: &str = "HTTP_OFFSETS";
pub const HTTP_OFFSETS_SLOTS: u32 = 1024;
/// Hash `http::InflightKey` → `http::Inflight`. Bounded; stale entries (a process killed
/// mid-request) are swept by userspace and counted.
pub const HTTP_INFLIGHT: &str = "HTTP_INFLIGHT";
pub const HTTP_INFLIGHT_ENTRIES: u32 = 65_536;
/// Per-CPU hash `tcp::OwnerKey` → `http::HttpCounts`.
pub const HTTP_COUNTS: &str = "HTTP_COUNTS";
pub const HTTP_COUNTS_ENTRIES: u32 = 8_192;
/// Array of one u32: emit a request record for 1 in N requests (1 = every one). Userspace
/// raises it when the record rate exceeds its budget; counters stay exact either way.
pub const HTTP_SAMPLING: &str = "HTTP_SAMPLING";
/// Ring buffer of `event` records.
pub const EVENTS: &str = "EVENTS";
/// Default ring size in bytes (power of two, multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Per-CPU array of `u64` counters indexed by `KernelDrop`.
pub const DROPS: &str = "DROPS";

/// What the kernel side could not record, counted per CPU.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelDrop {
    /// `bpf_ringbuf_reserve` failed: userspace is not draining fast enough.
    RingReserve = 0,
    /// `TCP_STATS` was full; the event went to `OwnerKey::OVERFLOW`.
    StatsMapFull = 1,
    /// Even the overflow bucket could not be updated (userspace did not create it).
    StatsLost = 2,
    /// `SOCK_OWNERS` insert failed.
    OwnerInsert = 3,
    /// A kretprobe found no stashed entry (maxactive exhausted or nested call).
    StashMiss = 4,
    /// Reading the socket's cgroup failed (offsets wrong or memory unreadable).
    CgroupRead = 5,
    /// `HTTP_INFLIGHT` was full: a request could not be tracked.
    HttpInflightFull = 6,
    /// A return or WriteHeader without a tracked start (attached mid-request).
    HttpNoStart = 7,
}

impl KernelDrop {
    pub const COUNT: u32 = 8;
    pub const ALL: [KernelDrop; Self::COUNT as usize] = [
        KernelDrop::RingReserve,
        KernelDrop::StatsMapFull,
        KernelDrop::StatsLost,
        KernelDrop::OwnerInsert,
        KernelDrop::StashMiss,
        KernelDrop::CgroupRead,
        KernelDrop::HttpInflightFull,
        KernelDrop::HttpNoStart,
    ];

    /// Stable label value for metrics.
    pub const fn reason(self) -> &'static str {
        match self {
            KernelDrop::RingReserve => "ring_reserve_failed",
            KernelDrop::StatsMapFull => "stats_map_full",
            KernelDrop::StatsLost => "stats_lost",
            KernelDrop::OwnerInsert => "owner_insert_failed",
            KernelDrop::StashMiss => "kretprobe_stash_miss",
            KernelDrop::CgroupRead => "cgroup_read_failed",
            KernelDrop::HttpInflightFull => "http_inflight_full",
            KernelDrop::HttpNoStart => "http_no_start",
        }
    }
}

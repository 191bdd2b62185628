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
/// Entry → return hand-over of the TCP kprobes and fentry programs, one LRU hash per hook
/// group (`tcp_sendmsg`; the retransmit functions; `tcp_rtx_synack`), keyed by the
/// `task_struct` address, value `tcp::Frames` (a small stack per task). Per hook group, so a
/// retransmit nested in `tcp_sendmsg` cannot take the send's entry; per task, not per
/// pid_tgid, so softirqs on idle CPUs (all pid 0) do not share one; LRU, so entries whose
/// return never ran (counted when found, `KernelDrop::ReturnMissed`) cannot fill it.
pub const SEND_FRAMES: &str = "SEND_FRAMES";
pub const RETRANS_FRAMES: &str = "RETRANS_FRAMES";
pub const SYNACK_FRAMES: &str = "SYNACK_FRAMES";
/// Tasks inside a hooked call at once (a blocked sender holds its entry while it waits).
pub const FRAMES_ENTRIES: u32 = 16_384;
/// Array of `http::GoHttpOffsets`, one slot per instrumented Go executable.
pub const HTTP_OFFSETS: &str = "HTTP_OFFSETS";
pub const HTTP_OFFSETS_SLOTS: u32 = 1024;
/// Hash `http::InflightKey` → `http::Inflight`. Bounded; stale entries (a process killed
/// mid-request) are swept by userspace and counted.
pub const HTTP_INFLIGHT: &str = "HTTP_INFLIGHT";
pub const HTTP_INFLIGHT_ENTRIES: u32 = 65_536;
/// LRU hash tgid → `i64`: requests each Go server process has in `HTTP_INFLIGHT`. A process
/// may hold at most `HTTP_INFLIGHT_PER_SERVER`; beyond that its new requests are not tracked,
/// counted (`KernelDrop::HttpInflightBudget`) and charged to it (`HttpCounts::lost`), so a
/// client holding many slow requests open blinds that server only, never the others.
pub const HTTP_INFLIGHT_SERVERS: &str = "HTTP_INFLIGHT_SERVERS";
pub const HTTP_INFLIGHT_SERVERS_ENTRIES: u32 = 16_384;
/// 64 servers at their budget fill `HTTP_INFLIGHT`. A server with more requests in flight at
/// once (long polls, WebSockets held inside the handler) has the excess counted as lost.
pub const HTTP_INFLIGHT_PER_SERVER: i64 = 1024;
/// LRU hash `http::ResponseKey` → status (u32): statuses written by a goroutine other than
/// the request's own, waiting for the request's end. LRU: a write nobody picks up (a request
/// that began before the probes) is evicted, never fills it.
pub const HTTP_STATUS_ASIDE: &str = "HTTP_STATUS_ASIDE";
pub const HTTP_STATUS_ASIDE_ENTRIES: u32 = 4_096;
/// Per-CPU hash `tcp::OwnerKey` → `http::HttpCounts`.
pub const HTTP_COUNTS: &str = "HTTP_COUNTS";
pub const HTTP_COUNTS_ENTRIES: u32 = 8_192;
/// Array of one u32: emit a request record for 1 in N requests (1 = every one). Userspace
/// raises it when the record rate exceeds its budget; counters stay exact either way.
pub const HTTP_SAMPLING: &str = "HTTP_SAMPLING";
/// Socket storage (`BPF_MAP_TYPE_SK_STORAGE`) of `http::wire::WireConn`: the socket-level
/// HTTP/1.x parser's state, kept with each socket it follows and freed with the socket.
///
/// Why not an LRU keyed by socket cookie (the first design): a tenant that opened more
/// connections with a request line than the LRU held (32,768) evicted every other server's
/// connections, and a request in flight on an evicted one was then neither counted nor charged
/// (`socket_source_flood_of_one_workload_does_not_blind_another`). Socket storage has no
/// capacity to fight over: each followed socket carries its own 368 bytes, next to the several
/// kilobytes its owner already pays for the socket itself.
pub const WIRE_CONNS: &str = "WIRE_CONNS";
/// LRU hash `http::unseen::UnseenKey` → when it was last told (ns): server sockets the parser
/// cannot read, told to userspace at most once per `unseen::REPEAT_NS` each.
pub const WIRE_UNSEEN: &str = "WIRE_UNSEEN";
pub const WIRE_UNSEEN_ENTRIES: u32 = 4_096;
/// LRU hash `http::wire::TargetKey` → `http::wire::Target`: targets of sampled requests waiting
/// for their responses.
pub const WIRE_TARGETS: &str = "WIRE_TARGETS";
pub const WIRE_TARGETS_ENTRIES: u32 = 8_192;
/// Per-CPU array of `http::wire::WireScratch`: `WIRE_SLOTS` slots for ingress, then as many
/// for egress. The parser also has per-CPU build areas for new entries (`WIRE_NEW_CONN`,
/// `WIRE_NEW_TARGET`, one per ingress slot).
///
/// Why slots: one scratch per CPU is not one per parse. An egress parse runs in process
/// context and can be interrupted (a softirq sending a retransmit or ACK-clocked data of
/// another socket, or preemption) by another parse on the same CPU; with one scratch, the
/// nested parse overwrote the window the outer one was scanning (a flaky `lost` request under
/// 30 % loss). Each parse claims a free slot (`WIRE_BUSY`) and passes it to its tail calls in
/// the packet's control buffer, which is its own.
pub const WIRE_SCRATCH: &str = "WIRE_SCRATCH";
/// Scratch slots per direction and CPU (a power of two): the outer parse, a softirq and a
/// preempting task, with one to spare.
pub const WIRE_SLOTS: u32 = 4;
/// Program arrays of the parser: it tail-calls itself when a segment needs more steps than
/// one invocation takes, and the egress scan hands a complete response head or body to a
/// separate action program — two programs the verifier checks apart instead of one whose
/// paths multiply. One array per direction: the kernel only lets a program tail-call
/// programs of its own attach type (the egress program failed to load with EINVAL while it
/// shared one array with the ingress program).
pub const WIRE_PROGS_RX: &str = "WIRE_PROGS_RX";
pub const WIRE_PROGS_TX: &str = "WIRE_PROGS_TX";
/// Slots: in `WIRE_PROGS_RX`, the ingress program; in `WIRE_PROGS_TX`, the egress program and
/// the action program.
pub const WIRE_PROG_INGRESS: u32 = 0;
pub const WIRE_PROG_EGRESS: u32 = 0;
pub const WIRE_PROG_ACTION: u32 = 1;
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
    /// A return probe found no entry of its call (the entry program did not run, or its
    /// entry was discarded as `ReturnMissed`): the call is not counted.
    StashMiss = 4,
    /// Reading the socket's cgroup failed (offsets wrong or memory unreadable).
    CgroupRead = 5,
    /// `HTTP_INFLIGHT` was full: a request could not be tracked; charged to its server as
    /// `HttpCounts::lost`.
    HttpInflightFull = 6,
    /// A request ended without a tracked start: it began before the probes were attached (or
    /// its untracked start was already counted as full/over budget). Not a loss.
    HttpNoStart = 7,
    /// The socket-level HTTP parser lost its place in a connection's byte stream (a gap it
    /// cannot skip, a line it cannot read); also charged per owner as `HttpCounts::lost`.
    WireDesync = 8,
    /// A segment needed more windows than the parser may tail-call.
    WireWindows = 9,
    /// A Go server process had `HTTP_INFLIGHT_PER_SERVER` requests in flight: a new one was
    /// not tracked; charged to that server as `HttpCounts::lost`.
    HttpInflightBudget = 10,
    /// A request ended after its binary's offsets slot was emptied or refilled: counted by
    /// outcome, without its record (`HttpCounts::unrecorded`).
    HttpNoOffsets = 11,
    /// An entry probe found entries of earlier calls whose return probe never ran (kretprobe
    /// instances exhausted: `maxactive`; a program skipped): each is counted and discarded.
    ReturnMissed = 12,
    /// A TCP event came with a socket that is not a full socket (TIME_WAIT, a request socket):
    /// full-socket fields were not read, the event was charged as unattributed.
    NotFullSocket = 13,
    /// An HTTP record could not be reserved in the ring: the request is counted by outcome all
    /// the same (`HTTP_COUNTS` is exact), only its record is missing (`HttpCounts::unrecorded`
    /// of its owner, like a request left out by sampling). Not a loss of signal.
    RecordReserve = 14,
    /// Every per-CPU scratch slot of the socket parser was in use (parsers nested deeper than
    /// `WIRE_SLOTS` on one CPU: softirqs and preemption interrupting a parse): the segment was
    /// not parsed and its connection resynchronises; charged per owner as `HttpCounts::lost`.
    WireBusy = 15,
    /// Socket storage for a new connection's parser state could not be allocated: the
    /// connection is not followed; its request is charged to its owner as lost.
    WireConnStore = 16,
}

impl KernelDrop {
    pub const COUNT: u32 = 17;
    pub const ALL: [KernelDrop; Self::COUNT as usize] = [
        KernelDrop::RingReserve,
        KernelDrop::StatsMapFull,
        KernelDrop::StatsLost,
        KernelDrop::OwnerInsert,
        KernelDrop::StashMiss,
        KernelDrop::CgroupRead,
        KernelDrop::HttpInflightFull,
        KernelDrop::HttpNoStart,
        KernelDrop::WireDesync,
        KernelDrop::WireWindows,
        KernelDrop::HttpInflightBudget,
        KernelDrop::HttpNoOffsets,
        KernelDrop::ReturnMissed,
        KernelDrop::NotFullSocket,
        KernelDrop::RecordReserve,
        KernelDrop::WireBusy,
        KernelDrop::WireConnStore,
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
            KernelDrop::WireDesync => "http_wire_desync",
            KernelDrop::WireWindows => "http_wire_windows",
            KernelDrop::HttpInflightBudget => "http_inflight_budget",
            KernelDrop::HttpNoOffsets => "http_no_offsets",
            KernelDrop::ReturnMissed => "kretprobe_return_missed",
            KernelDrop::NotFullSocket => "not_full_socket",
            KernelDrop::RecordReserve => "http_record_reserve_failed",
            KernelDrop::WireBusy => "http_wire_busy",
            KernelDrop::WireConnStore => "http_wire_conn_store_failed",
        }
    }
}

//! TCP health signals: per-owner counters aggregated in the kernel.
//!
//! Counters are summed per CPU in `maps::TCP_STATS` keyed by `OwnerKey`, so the hot paths
//! (every `sendmsg`, every retransmitted segment) never touch the ring buffer.

use crate::{assert_layout, impl_pod};

/// Who a socket belongs to. `cgroup_id` comes from the socket itself
/// (`sk->sk_cgrp_data.cgroup->kn->id`), which is right in any context, softirq included;
/// `tgid` is the process last seen using the socket in process context (0 = not seen yet,
/// e.g. a socket that predates the collector).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub _pad: u32,
}
assert_layout!(OwnerKey, 16);

impl OwnerKey {
    /// Bucket for events that could not get their own key because `TCP_STATS` was full.
    /// Userspace creates it at start-up, so the kernel only ever updates it.
    pub const OVERFLOW: Self = Self {
        cgroup_id: u64::MAX,
        tgid: u32::MAX,
        _pad: 0,
    };
    /// Events with no socket to attribute to (a reset sent for a packet that matched no socket).
    pub const NO_SOCKET: Self = Self {
        cgroup_id: 0,
        tgid: 0,
        _pad: 0,
    };
}

/// Per-owner TCP counters. All monotonic, all `u64`; one per-CPU copy each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Bytes accepted by successful `sendmsg` calls.
    pub bytes_sent: u64,
    /// Successful `sendmsg` calls.
    pub send_calls: u64,
    /// `sendmsg` failed with EPIPE (peer closed, we kept writing).
    pub send_err_pipe: u64,
    /// `sendmsg` failed with ECONNRESET.
    pub send_err_reset: u64,
    /// `sendmsg` failed with another error (EAGAIN excluded: flow control, not a failure).
    pub send_err_other: u64,
    /// `sendmsg` returned EAGAIN on a non-blocking socket.
    pub send_would_block: u64,
    /// Segments retransmitted (`tcp_skb_pcount`, the unit of the kernel's TcpRetransSegs).
    pub retransmit_segs: u64,
    /// RST segments sent on this owner's sockets.
    pub resets_sent: u64,
    /// RST segments received on this owner's sockets.
    pub resets_received: u64,
    /// Active opens that failed: SYN_SENT → CLOSE with ECONNREFUSED.
    pub connects_refused: u64,
    /// ... with ETIMEDOUT.
    pub connects_timed_out: u64,
    /// ... with any other error.
    pub connects_failed_other: u64,
    /// SYN_SENT → ESTABLISHED.
    pub active_opens: u64,
    /// SYN_RECV → ESTABLISHED.
    pub passive_opens: u64,
    /// Established connections that reached CLOSE.
    pub closes: u64,
}
assert_layout!(TcpStats, 15 * 8);
impl_pod!(OwnerKey, TcpStats);

impl TcpStats {
    /// Adds another CPU's copy (userspace sums per-CPU values).
    pub fn accumulate(&mut self, o: &Self) {
        let Self {
            bytes_sent,
            send_calls,
            send_err_pipe,
            send_err_reset,
            send_err_other,
            send_would_block,
            retransmit_segs,
            resets_sent,
            resets_received,
            connects_refused,
            connects_timed_out,
            connects_failed_other,
            active_opens,
            passive_opens,
            closes,
        } = o;
        self.bytes_sent = self.bytes_sent.wrapping_add(*bytes_sent);
        self.send_calls = self.send_calls.wrapping_add(*send_calls);
        self.send_err_pipe = self.send_err_pipe.wrapping_add(*send_err_pipe);
        self.send_err_reset = self.send_err_reset.wrapping_add(*send_err_reset);
        self.send_err_other = self.send_err_other.wrapping_add(*send_err_other);
        self.send_would_block = self.send_would_block.wrapping_add(*send_would_block);
        self.retransmit_segs = self.retransmit_segs.wrapping_add(*retransmit_segs);
        self.resets_sent = self.resets_sent.wrapping_add(*resets_sent);
        self.resets_received = self.resets_received.wrapping_add(*resets_received);
        self.connects_refused = self.connects_refused.wrapping_add(*connects_refused);
        self.connects_timed_out = self.connects_timed_out.wrapping_add(*connects_timed_out);
        self.connects_failed_other = self
            .connects_failed_other
            .wrapping_add(*connects_failed_other);
        self.active_opens = self.active_opens.wrapping_add(*active_opens);
        self.passive_opens = self.passive_opens.wrapping_add(*passive_opens);
        self.closes = self.closes.wrapping_add(*closes);
    }
}

/// The process that last used a socket in process context (value of `maps::SOCK_OWNERS`,
/// keyed by the `struct sock` address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    pub tgid: u32,
    /// Sends by this owner since `announced_ns` was last compared with the clock: the clock is
    /// read every `ANNOUNCE_CHECK_SENDS`-th send only (a helper call less on the others).
    pub sends_unchecked: u32,
    /// The task's cgroup id at that moment: used when the socket's own cgroup reads as the
    /// root (hosts where the workload is not in the unified hierarchy).
    pub cgroup_id: u64,
    /// The cgroup this owner's sends are charged to (`OwnerKey::cgroup_id`), worked out once:
    /// a socket's cgroup never changes, and reading it is three kernel reads per send.
    pub charged_cgroup: u64,
    /// When this socket last made sure its process was announced (`emit::announce_process`).
    pub announced_ns: u64,
}
assert_layout!(SockOwner, 32);

/// How often a socket's sends compare the clock with `SockOwner::announced_ns`: a process is
/// re-announced at most this many sends after its `emit::REANNOUNCE_NS` is up.
pub const ANNOUNCE_CHECK_SENDS: u32 = 16;
impl_pod!(SockOwner);

/// What an entry probe hands to its return probe: the socket and one value read at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub sk: u64,
    /// Per hook: the `tcp_sock.total_retrans` seen at entry (retransmits), else 0.
    pub arg: u64,
}
assert_layout!(Frame, 16);

/// Deepest nesting of one hook group on one task: process context plus one softirq that
/// interrupted it (retransmits run with bottom halves enabled in process context, e.g. from
/// the socket backlog, so a softirq on the same task can retransmit on another socket before
/// the first call returns). Softirqs do not nest, and hard interrupts never run TCP output.
pub const MAX_NESTING: usize = 2;

/// A task's open calls of one hook group (value of the `*_FRAMES` maps, keyed by the
/// `task_struct` address): a stack, `depth` entries used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frames {
    pub depth: u32,
    pub _pad: u32,
    pub frames: [Frame; MAX_NESTING],
}
assert_layout!(Frames, 8 + 16 * MAX_NESTING);
impl_pod!(Frame, Frames);

/// TCP states as the kernel numbers them (include/net/tcp_states.h); stable UAPI values.
pub mod state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    /// An `inet_timewait_sock`, not a full socket.
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
    /// A `request_sock` (a connection being accepted), not a full socket.
    pub const NEW_SYN_RECV: i32 = 12;

    /// What the kernel's `sk_fullsock()` says: only full sockets (`struct sock`) have the
    /// fields past `sock_common` (`sk_cgrp_data`, `sk_err`, ...).
    pub const fn is_full(state: i32) -> bool {
        state != TIME_WAIT && state != NEW_SYN_RECV
    }
}

/// errno values the TCP hooks classify (asm-generic/errno*.h; identical on x86-64 and arm64).
pub mod errno {
    pub const EAGAIN: i32 = 11;
    pub const EPIPE: i32 = 32;
    pub const ECONNRESET: i32 = 104;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
}

pub const IPPROTO_TCP: u16 = 6;

//! TCP health signals. Every signal has one handler (`on_send`, `on_retransmit`, …) and one thin
//! program per ladder rung that only extracts the hook's arguments and calls it, so all rungs
//! count the same thing the same way.
//!
//! Why these hooks:
//! - Bytes sent / send errors: `tcp_sendmsg` (kprobe+kretprobe or fexit) is what production
//!   kernels always have and covers every TCP send path through the socket layer;
//!   `sock:sock_send_length` (≥ 6.3, all socket types, filtered on protocol) is the
//!   tracepoint equivalent. Process context: the place to record the socket's owner.
//! - Retransmits: the `tcp:tcp_retransmit_skb` tracepoint sits inside `__tcp_retransmit_skb`,
//!   which the compiler splits on common kernels (Debian's 6.1 has
//!   `__tcp_retransmit_skb.part.0`: a probe on the symbol sees almost no calls). The kprobe and
//!   fentry rungs therefore hook its two callers, whole functions: `tcp_retransmit_skb`
//!   (timeouts, fast retransmit) and `tcp_send_loss_probe` (tail-loss probes), and count
//!   `tcp_sock.total_retrans` after the call minus before — what `__tcp_retransmit_skb` adds
//!   to it and to TcpRetransSegs together, in segments. The socket is locked for the call, so
//!   nothing else retransmits on it meanwhile. The tracepoint rungs count `tcp_skb_pcount`
//!   of each successful retransmission.
//!
//! Entry → return hand-over (kprobe → kretprobe, fentry → fexit): a stack of `Frame`s per task
//! and hook group (`enter`/`leave`), never a slot shared by hooks or keyed by pid_tgid alone
//! (softirqs on idle CPUs all run as pid 0; a retransmit can run nested inside `tcp_sendmsg`
//! and inside another retransmit on the same task). Where the return value is all that is
//! needed after entry (fexit of `tcp_sendmsg`, `tcp_rtx_synack`), fexit reads both at once.
//! - Resets, state, teardown: tracepoints only (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`,
//!   `sock:inet_sock_set_state`, `tcp:tcp_destroy_sock`); their tp_btf/raw_tp forms avoid
//!   tracefs and the record-layout drift of the classic form.
//! Retransmits and resets run in softirq: attribution goes through the socket (`sock::owner_of`),
//! never the current task.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_task,
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, raw_tracepoint, tracepoint},
    maps::LruHashMap,
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RawTracePointContext,
        RetProbeContext, TracePointContext,
    },
};
use collector_common::{
    maps::KernelDrop,
    tcp::{Frame, Frames, IPPROTO_TCP, MAX_NESTING, OwnerKey, TcpStats, errno, state},
};

use crate::{
    globals::{
        CB_GSO_SEGS_OFF, RETRANS_HAS_ERR, SK_ERR_OFF, SK_PROTO_OFF, SKB_CB_OFF,
        TCP_TOTAL_RETRANS_OFF, TP_DESTROY_SK, TP_RESET_RECV_SK, TP_RESET_SENT_SK, TP_RETRANS_ERR,
        TP_RETRANS_SK, TP_RETRANS_SKB, TP_SEND_PROTO, TP_SEND_RET, TP_SEND_SK, TP_STATE_NEW,
        TP_STATE_OLD, TP_STATE_PROTO, TP_STATE_SK, TP_SYNACK_SK,
    },
    klog::klog,
    maps::{RETRANS_FRAMES, SEND_FRAMES, SYNACK_FRAMES, TCP_STATS, count_drop, count_drops},
    sock::{forget, owner_of, read, record_owner},
};

/// Applies `f` to this CPU's counters of `key`, creating them on first use. When the map is
/// full the event is charged to the overflow bucket: totals stay exact, attribution degrades,
/// and the degradation is counted.
#[inline(always)]
fn update(key: &OwnerKey, f: impl FnOnce(&mut TcpStats)) {
    let mut ptr = TCP_STATS.get_ptr_mut(key);
    if ptr.is_none() {
        let zero = TcpStats::default();
        // EEXIST (a racing insert) is fine: look it up again below.
        if let Err(e) = TCP_STATS.insert(key, &zero, BPF_NOEXIST as u64) {
            ptr = TCP_STATS.get_ptr_mut(key);
            if ptr.is_none() {
                count_drop(KernelDrop::StatsMapFull);
                klog!(
                    Warn,
                    "stats_map_full: TCP_STATS insert for cgroup {} process {} failed with {}, charged to overflow",
                    key.cgroup_id,
                    key.tgid,
                    e
                );
                ptr = TCP_STATS.get_ptr_mut(&OwnerKey::OVERFLOW);
            }
        } else {
            ptr = TCP_STATS.get_ptr_mut(key);
        }
    }
    match ptr {
        // SAFETY: per-CPU value of a live element; only this CPU writes it.
        Some(p) => f(unsafe { &mut *p }),
        None => {
            count_drop(KernelDrop::StatsLost);
            klog!(
                Error,
                "stats_lost: no TCP_STATS element for cgroup {} process {}, not even the overflow bucket",
                key.cgroup_id,
                key.tgid
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bytes sent and send errors.

#[inline(always)]
fn on_send(sk: u64, ret: i32) {
    if sk == 0 {
        return;
    }
    let key = record_owner(sk);
    update(&key, |s| {
        if ret >= 0 {
            s.bytes_sent += ret as u64;
            s.send_calls += 1;
        } else {
            match -ret {
                errno::EAGAIN => s.send_would_block += 1,
                errno::EPIPE => s.send_err_pipe += 1,
                errno::ECONNRESET => s.send_err_reset += 1,
                _ => s.send_err_other += 1,
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Entry → return hand-over.

/// Pushes a frame on the current task's stack in `map` (one map per hook group). `limit`: the
/// deepest this group can really nest on one task (1 for `tcp_sendmsg`, which never runs inside
/// itself). A stack already at `limit` holds frames whose return never ran (kretprobe instances
/// exhausted, a skipped program): they are counted and discarded.
#[inline(always)]
fn enter(map: &LruHashMap<u64, Frames>, limit: u32, frame: Frame) {
    // SAFETY: returns the address of the current task; only used as a key.
    let task = unsafe { bpf_get_current_task() };
    let mut ptr = map.get_ptr_mut(&task);
    if ptr.is_none() {
        // Fails only for a racing insert of the same task, which cannot happen: a task runs on
        // one CPU at a time and nested programs of the same kind are skipped by the kernel.
        let inserted = map.insert(&task, &Frames::default(), BPF_NOEXIST as u64);
        ptr = map.get_ptr_mut(&task);
        if ptr.is_none()
            && let Err(e) = inserted
        {
            klog!(
                Warn,
                "frames insert failed with {}: this call's return will count a stash miss",
                e
            );
        }
    }
    // No element: the return finds none and counts the call (`leave`), once.
    let Some(p) = ptr else {
        return;
    };
    // SAFETY: live element of this task; only this task's programs touch it.
    let frames = unsafe { &mut *p };
    let mut depth = frames.depth;
    if depth >= limit || depth as usize >= MAX_NESTING {
        count_drops(KernelDrop::ReturnMissed, depth as u64);
        klog!(
            Info,
            "kretprobe_return_missed: {} frames whose return never ran discarded (limit {})",
            depth,
            limit
        );
        depth = 0;
    }
    if let Some(slot) = frames.frames.get_mut(depth as usize) {
        *slot = frame;
        frames.depth = depth + 1;
    }
}

/// Pops the current task's newest frame from `map`; none (the entry program did not run, or
/// its frame was discarded) is counted. The task's element is deleted when its stack empties,
/// so the map holds only calls in progress.
#[inline(always)]
fn leave(map: &LruHashMap<u64, Frames>) -> Option<Frame> {
    // SAFETY: as in `enter`.
    let task = unsafe { bpf_get_current_task() };
    let Some(p) = map.get_ptr_mut(&task) else {
        count_drop(KernelDrop::StashMiss);
        klog!(
            Debug,
            "kretprobe_stash_miss: a return with no frames for its task"
        );
        return None;
    };
    // SAFETY: as in `enter`.
    let frames = unsafe { &mut *p };
    let depth = frames.depth;
    let top = depth.wrapping_sub(1) as usize;
    let Some(frame) = frames.frames.get(top).copied() else {
        count_drop(KernelDrop::StashMiss);
        klog!(
            Debug,
            "kretprobe_stash_miss: a return found its task's stack at depth {}",
            depth
        );
        return None;
    };
    frames.depth = top as u32;
    if top == 0 {
        let _ = map.remove(&task);
    }
    Some(frame)
}

#[kprobe]
pub fn send_kprobe(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    enter(&SEND_FRAMES, 1, Frame { sk, arg: 0 });
    0
}

#[kretprobe]
pub fn send_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some(frame) = leave(&SEND_FRAMES) else {
        return 0;
    };
    let ret: i64 = ctx.ret();
    on_send(frame.sk, ret as i32);
    0
}

/// fexit sees arguments and the return value (`tcp_sendmsg(sk, msg, size)` → arg 3).
#[fexit]
pub fn send_fexit(ctx: FExitContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(3);
    on_send(sk, ret as i32);
    0
}

/// The `sock_send_length` tracepoint fires for every socket type: keep TCP only. Its
/// prototype is `(sk, ret, flags)`; the record's `family`/`protocol` are derived from `sk`, so
/// tp_btf and raw_tp read the protocol from the socket.
#[inline(always)]
fn on_send_length(sk: u64, protocol: u16, ret: i32) {
    if protocol == IPPROTO_TCP {
        on_send(sk, ret);
    }
}

#[inline(always)]
fn sk_protocol(sk: u64) -> u16 {
    match SK_PROTO_OFF.load() {
        0 => 0,
        off => read::<u16>(sk, off).unwrap_or(0),
    }
}

/// `sk_protocol` read directly: in a BTF tracepoint `sk` is a typed kernel pointer, so the
/// verifier checks the load against `struct sock` (the offset is a load-time constant) and the
/// kernel handles a fault; a `bpf_probe_read_kernel` call costs more than the rest of the read
/// on a machine whose every `ret` goes through a return thunk.
#[inline(always)]
fn sk_protocol_btf(sk: u64) -> u16 {
    match SK_PROTO_OFF.load() {
        0 => 0,
        // SAFETY: checked by the verifier as a read of `struct sock` (see above).
        off => unsafe { core::ptr::read_volatile((sk + u64::from(off)) as *const u16) },
    }
}

#[btf_tracepoint]
pub fn send_tp_btf(ctx: BtfTracePointContext) -> u32 {
    let (sk, ret): (u64, i64) = (ctx.arg(0), ctx.arg(1));
    on_send_length(sk, sk_protocol_btf(sk), ret as i32);
    0
}

#[raw_tracepoint]
pub fn send_raw_tp(ctx: RawTracePointContext) -> u32 {
    let (sk, ret): (u64, i64) = (ctx.arg(0), ctx.arg(1));
    on_send_length(sk, sk_protocol(sk), ret as i32);
    0
}

#[tracepoint]
pub fn send_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets come from this kernel's tracefs format for the record.
    let (sk, proto, ret) = unsafe {
        (
            ctx.read_at::<u64>(TP_SEND_SK.load() as usize).unwrap_or(0),
            ctx.read_at::<u16>(TP_SEND_PROTO.load() as usize)
                .unwrap_or(0),
            ctx.read_at::<i32>(TP_SEND_RET.load() as usize).unwrap_or(0),
        )
    };
    on_send_length(sk, proto, ret);
    0
}

// ---------------------------------------------------------------------------------------------
// Retransmits.

/// Segments in a retransmitted skb: `TCP_SKB_CB(skb)->tcp_gso_segs`, at least 1.
#[inline(always)]
fn skb_pcount(skb: u64) -> u64 {
    let (cb, segs) = (SKB_CB_OFF.load(), CB_GSO_SEGS_OFF.load());
    if cb == 0 {
        return 1;
    }
    match read::<u16>(skb, cb + segs) {
        Some(n) if n > 0 => n as u64,
        _ => 1,
    }
}

#[inline(always)]
fn on_retransmit(sk: u64, skb: u64, err: i64) {
    if sk == 0 || err != 0 {
        return;
    }
    let segs = skb_pcount(skb);
    let key = owner_of(sk);
    update(&key, |s| s.retransmit_segs += segs);
}

/// `tcp_sock.total_retrans`: segments `__tcp_retransmit_skb` sent again on this socket (it adds
/// them here and to TcpRetransSegs at the same point).
#[inline(always)]
fn total_retrans(sk: u64) -> u64 {
    match TCP_TOTAL_RETRANS_OFF.load() {
        0 => 0,
        off => read::<u32>(sk, off).unwrap_or(0) as u64,
    }
}

/// Entry of `tcp_retransmit_skb` / `tcp_send_loss_probe`: remember the socket's count.
#[inline(always)]
fn retrans_enter(sk: u64) {
    enter(
        &RETRANS_FRAMES,
        MAX_NESTING as u32,
        Frame {
            sk,
            arg: total_retrans(sk),
        },
    );
}

/// Return of the same call: what it added. `sk` is known again at fexit; a frame of another
/// socket there means the stack lost its place (counted, not charged).
#[inline(always)]
fn retrans_leave(sk: Option<u64>) {
    let Some(frame) = leave(&RETRANS_FRAMES) else {
        return;
    };
    if sk.is_some_and(|sk| sk != frame.sk) {
        count_drop(KernelDrop::StashMiss);
        klog!(
            Warn,
            "kretprobe_stash_miss: a retransmit returned on another socket than the newest frame's"
        );
        return;
    }
    if frame.sk == 0 {
        return;
    }
    let segs = (total_retrans(frame.sk) as u32).wrapping_sub(frame.arg as u32) as u64;
    if segs > 0 {
        let key = owner_of(frame.sk);
        update(&key, |s| s.retransmit_segs += segs);
    }
}

#[kprobe]
pub fn retrans_kprobe(ctx: ProbeContext) -> u32 {
    retrans_enter(ctx.arg(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn retrans_kretprobe(_ctx: RetProbeContext) -> u32 {
    retrans_leave(None);
    0
}

#[kprobe]
pub fn tlp_kprobe(ctx: ProbeContext) -> u32 {
    retrans_enter(ctx.arg(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn tlp_kretprobe(_ctx: RetProbeContext) -> u32 {
    retrans_leave(None);
    0
}

#[fentry]
pub fn retrans_fentry(ctx: FEntryContext) -> u32 {
    retrans_enter(ctx.arg(0));
    0
}

#[fexit]
pub fn retrans_fexit(ctx: FExitContext) -> u32 {
    retrans_leave(Some(ctx.arg(0)));
    0
}

#[fentry]
pub fn tlp_fentry(ctx: FEntryContext) -> u32 {
    retrans_enter(ctx.arg(0));
    0
}

#[fexit]
pub fn tlp_fexit(ctx: FExitContext) -> u32 {
    retrans_leave(Some(ctx.arg(0)));
    0
}

#[btf_tracepoint]
pub fn retrans_tp_btf(ctx: BtfTracePointContext) -> u32 {
    let (sk, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    // The verifier rejects a read past the tracepoint's arguments: only read `err` where the
    // kernel's prototype has it (the constant prunes the branch elsewhere).
    let err: i64 = if RETRANS_HAS_ERR.load() != 0 {
        ctx.arg::<i64>(2) as i32 as i64
    } else {
        0
    };
    on_retransmit(sk, skb, err);
    0
}

#[raw_tracepoint]
pub fn retrans_raw_tp(ctx: RawTracePointContext) -> u32 {
    let (sk, skb): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    let err: i64 = if RETRANS_HAS_ERR.load() != 0 {
        ctx.arg::<i64>(2) as i32 as i64
    } else {
        0
    };
    on_retransmit(sk, skb, err);
    0
}

#[tracepoint]
pub fn retrans_tp(ctx: TracePointContext) -> u32 {
    let err_off = TP_RETRANS_ERR.load();
    // SAFETY: offsets come from this kernel's tracefs format for the record.
    let (sk, skb, err) = unsafe {
        (
            ctx.read_at::<u64>(TP_RETRANS_SK.load() as usize)
                .unwrap_or(0),
            ctx.read_at::<u64>(TP_RETRANS_SKB.load() as usize)
                .unwrap_or(0),
            if err_off != 0 {
                ctx.read_at::<i32>(err_off as usize).unwrap_or(0)
            } else {
                0
            },
        )
    };
    on_retransmit(sk, skb, err as i64);
    0
}

/// A retransmitted SYN-ACK. Request sockets are not full sockets and never reach
/// `__tcp_retransmit_skb`; the kernel counts them in TcpRetransSegs all the same, so do we,
/// charged to the listener (its cgroup is the server's).
#[inline(always)]
fn on_synack_retransmit(listener: u64, err: i64) {
    if listener == 0 || err != 0 {
        return;
    }
    let key = owner_of(listener);
    update(&key, |s| s.retransmit_segs += 1);
}

#[kprobe]
pub fn synack_kprobe(ctx: ProbeContext) -> u32 {
    let sk: u64 = ctx.arg(0).unwrap_or(0);
    enter(&SYNACK_FRAMES, MAX_NESTING as u32, Frame { sk, arg: 0 });
    0
}

#[kretprobe]
pub fn synack_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some(frame) = leave(&SYNACK_FRAMES) else {
        return 0;
    };
    let ret: i64 = ctx.ret();
    on_synack_retransmit(frame.sk, ret as i32 as i64);
    0
}

/// `tcp_rtx_synack(sk, req)` → return value is arg 2.
#[fexit]
pub fn synack_fexit(ctx: FExitContext) -> u32 {
    let (sk, ret): (u64, i64) = (ctx.arg(0), ctx.arg(2));
    on_synack_retransmit(sk, ret as i32 as i64);
    0
}

/// The tracepoint only fires after a successful send.
#[btf_tracepoint]
pub fn synack_tp_btf(ctx: BtfTracePointContext) -> u32 {
    on_synack_retransmit(ctx.arg(0), 0);
    0
}

#[raw_tracepoint]
pub fn synack_raw_tp(ctx: RawTracePointContext) -> u32 {
    on_synack_retransmit(ctx.arg(0), 0);
    0
}

#[tracepoint]
pub fn synack_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from this kernel's tracefs format.
    let sk = unsafe { ctx.read_at::<u64>(TP_SYNACK_SK.load() as usize) }.unwrap_or(0);
    on_synack_retransmit(sk, 0);
    0
}

// ---------------------------------------------------------------------------------------------
// Connection state: opens, closes, failed connects.

#[inline(always)]
fn on_state(sk: u64, old: i32, new: i32) {
    if sk == 0 {
        return;
    }
    if new == state::SYN_SENT {
        // connect() runs in process context: the moment to learn who owns the socket.
        record_owner(sk);
        return;
    }
    let key = owner_of(sk);
    if new == state::ESTABLISHED {
        match old {
            state::SYN_SENT => update(&key, |s| s.active_opens += 1),
            state::SYN_RECV => update(&key, |s| s.passive_opens += 1),
            _ => {}
        }
    } else if new == state::CLOSE {
        match old {
            state::SYN_SENT => {
                let err = match SK_ERR_OFF.load() {
                    0 => 0,
                    off => read::<i32>(sk, off).unwrap_or(0),
                };
                update(&key, |s| match err {
                    errno::ECONNREFUSED => s.connects_refused += 1,
                    errno::ETIMEDOUT => s.connects_timed_out += 1,
                    _ => s.connects_failed_other += 1,
                });
            }
            // Never established (or a listener closing): not a connection close.
            state::SYN_RECV | state::LISTEN | state::NEW_SYN_RECV | state::CLOSE => {}
            _ => update(&key, |s| s.closes += 1),
        }
    }
}

/// tp_btf/raw_tp get `(sk, oldstate, newstate)` and must check the protocol themselves.
#[inline(always)]
fn on_state_sk(sk: u64, old: i32, new: i32) {
    if sk_protocol(sk) == IPPROTO_TCP {
        on_state(sk, old, new);
    }
}

#[btf_tracepoint]
pub fn state_tp_btf(ctx: BtfTracePointContext) -> u32 {
    let (sk, old, new): (u64, i64, i64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    on_state_sk(sk, old as i32, new as i32);
    0
}

#[raw_tracepoint]
pub fn state_raw_tp(ctx: RawTracePointContext) -> u32 {
    let (sk, old, new): (u64, i64, i64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    on_state_sk(sk, old as i32, new as i32);
    0
}

#[tracepoint]
pub fn state_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets come from this kernel's tracefs format for the record.
    let (sk, old, new, proto) = unsafe {
        (
            ctx.read_at::<u64>(TP_STATE_SK.load() as usize).unwrap_or(0),
            ctx.read_at::<i32>(TP_STATE_OLD.load() as usize)
                .unwrap_or(0),
            ctx.read_at::<i32>(TP_STATE_NEW.load() as usize)
                .unwrap_or(0),
            ctx.read_at::<u16>(TP_STATE_PROTO.load() as usize)
                .unwrap_or(0),
        )
    };
    if proto == IPPROTO_TCP {
        on_state(sk, old, new);
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Resets.

/// A reset sent for a segment that matched no socket (`sk == NULL`) has no owner: it is charged
/// to `OwnerKey::NO_SOCKET` rather than dropped.
#[inline(always)]
fn on_reset_sent(sk: u64) {
    let key = if sk == 0 {
        OwnerKey::NO_SOCKET
    } else {
        owner_of(sk)
    };
    update(&key, |s| s.resets_sent += 1);
}

#[inline(always)]
fn on_reset_received(sk: u64) {
    if sk != 0 {
        let key = owner_of(sk);
        update(&key, |s| s.resets_received += 1);
    }
}

#[btf_tracepoint]
pub fn rst_sent_tp_btf(ctx: BtfTracePointContext) -> u32 {
    on_reset_sent(ctx.arg(0));
    0
}

#[raw_tracepoint]
pub fn rst_sent_raw_tp(ctx: RawTracePointContext) -> u32 {
    on_reset_sent(ctx.arg(0));
    0
}

#[tracepoint]
pub fn rst_sent_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from this kernel's tracefs format.
    let sk = unsafe { ctx.read_at::<u64>(TP_RESET_SENT_SK.load() as usize) }.unwrap_or(0);
    on_reset_sent(sk);
    0
}

#[btf_tracepoint]
pub fn rst_recv_tp_btf(ctx: BtfTracePointContext) -> u32 {
    on_reset_received(ctx.arg(0));
    0
}

#[raw_tracepoint]
pub fn rst_recv_raw_tp(ctx: RawTracePointContext) -> u32 {
    on_reset_received(ctx.arg(0));
    0
}

#[tracepoint]
pub fn rst_recv_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from this kernel's tracefs format.
    let sk = unsafe { ctx.read_at::<u64>(TP_RESET_RECV_SK.load() as usize) }.unwrap_or(0);
    on_reset_received(sk);
    0
}

// ---------------------------------------------------------------------------------------------
// Socket teardown: forget the owner so a reused `struct sock` address starts clean.

#[btf_tracepoint]
pub fn destroy_tp_btf(ctx: BtfTracePointContext) -> u32 {
    forget(ctx.arg(0));
    0
}

#[raw_tracepoint]
pub fn destroy_raw_tp(ctx: RawTracePointContext) -> u32 {
    forget(ctx.arg(0));
    0
}

#[tracepoint]
pub fn destroy_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from this kernel's tracefs format.
    let sk = unsafe { ctx.read_at::<u64>(TP_DESTROY_SK.load() as usize) }.unwrap_or(0);
    forget(sk);
    0
}

//! grpc-go servers, from uprobes on the server's own code: two traps per RPC.
//!
//! Go register ABI (args in RAX, RBX, RCX, RDI…; R14 = goroutine):
//! - `google.golang.org/grpc.(*Server).handleStream(t ServerTransport, stream)` entry: the RPC
//!   starts. RAX = server, RBX/RCX = `t` (an interface: itab, data), RDI = the stream. The start
//!   time is kept by (tgid, stream) in `GRPC_INFLIGHT`.
//! - The transport's status write, entry: `(*http2Server).WriteStatus(s *Stream, st
//!   *status.Status)` up to grpc-go 1.68, `(*http2Server).writeStatus(s *ServerStream, st)`
//!   since (the exported `(*ServerStream).WriteStatus` is inlined into its callers). RBX = the
//!   stream, RCX = the status. grpc-go calls it exactly once per RPC whatever ends it (handler
//!   result, unknown method, bad compression, deadline): the full method (read from the stream)
//!   and the code are both known here, so the RPC is counted here, exactly, whether or not its
//!   start was seen. The entry fires even when the stream is already done (the client reset
//!   it): what the server decided is counted.
//!
//! Keyed by the stream rather than the goroutine: both probes see the same stream pointer,
//! whichever goroutine runs them.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_prandom_u32, bpf_ktime_get_boot_ns, bpf_ktime_get_ns, generated,
    },
    macros::{map, uprobe},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
};
use collector_common::{
    cookie,
    event::{EventHeader, EventKind},
    grpc::{
        GRPC_COUNTS_ENTRIES, GRPC_INFLIGHT_ENTRIES, GRPC_METHOD_MAX, GRPC_OFFSETS_SLOTS,
        GrpcCountKey, GrpcCounts, GrpcEvent, GrpcOffsets, NO_DEREF, StreamKey, flags,
    },
    http::{INFLIGHT_RPC, InflightKey},
    maps::KernelDrop,
};

use crate::{
    http::read_user,
    maps::{EVENTS, HTTP_INFLIGHT, count_drop},
};

#[map]
pub static GRPC_OFFSETS: Array<GrpcOffsets> = Array::with_max_entries(GRPC_OFFSETS_SLOTS, 0);

#[map]
pub static GRPC_INFLIGHT: LruHashMap<StreamKey, u64> =
    LruHashMap::with_max_entries(GRPC_INFLIGHT_ENTRIES, 0);

#[map]
pub static GRPC_COUNTS: PerCpuHashMap<GrpcCountKey, GrpcCounts> =
    PerCpuHashMap::with_max_entries(GRPC_COUNTS_ENTRIES, 0);

#[map]
pub static GRPC_SAMPLING: Array<u32> = Array::with_max_entries(1, 0);

/// Where the count key is built (128 bytes, kept off the 512-byte stack).
#[map]
static GRPC_KEY_SCRATCH: PerCpuArray<GrpcCountKey> = PerCpuArray::with_max_entries(1, 0);

static ZERO_COUNTS: GrpcCounts = GrpcCounts {
    rpcs: 0,
    unrecorded: 0,
    no_start: 0,
};

/// This link's offsets (`valid` 0: the slot was emptied); `None` for a stale link
/// (`collector_common::cookie::is_stale`), which does nothing.
#[inline(always)]
fn link(ctx: &ProbeContext) -> Option<&'static GrpcOffsets> {
    // SAFETY: kernel ≥ 5.15 passes the attach cookie; userspace sets it (`cookie::encode`).
    let (slot, generation) = cookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    let off = GRPC_OFFSETS.get(slot)?;
    (!cookie::is_stale(generation, off.valid)).then_some(off)
}

#[inline(always)]
fn grpc_stream_start_impl(ctx: ProbeContext) -> u32 {
    if link(&ctx).is_none() {
        return 0;
    }
    // SAFETY: a uprobe's context is the user pt_regs.
    let stream = unsafe { (*ctx.regs).rdi };
    if stream == 0 {
        return 0;
    }
    let k = StreamKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        stream,
    };
    // SAFETY: plain helper.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // BPF_ANY: morestack may run the entry twice for one call (where the probe had to sit on
    // the first instruction, see `http`); a reused stream address belongs to a new RPC (the
    // old one's status was written, which removed it).
    let _ = GRPC_INFLIGHT.insert(&k, &now, BPF_ANY as u64);
    0
}

/// Applies `f` to this CPU's counters of `key`, creating them on first use; the overflow key
/// when the map is full.
#[inline(always)]
fn count(key: &GrpcCountKey, f: impl FnOnce(&mut GrpcCounts)) {
    let mut p = GRPC_COUNTS.get_ptr_mut(key);
    if p.is_none() {
        let _ = GRPC_COUNTS.insert(key, &ZERO_COUNTS, 0);
        p = GRPC_COUNTS.get_ptr_mut(key);
        if p.is_none() {
            count_drop(KernelDrop::StatsMapFull);
            p = GRPC_COUNTS.get_ptr_mut(&GrpcCountKey::OVERFLOW);
        }
    }
    match p {
        // SAFETY: this CPU's copy of a live element.
        Some(p) => f(unsafe { &mut *p }),
        None => count_drop(KernelDrop::StatsLost),
    }
}

#[inline(always)]
fn grpc_write_status_impl(ctx: ProbeContext) -> u32 {
    let Some(off) = link(&ctx) else {
        return 0;
    };
    // SAFETY: a uprobe's context is the user pt_regs.
    let (stream, st) = unsafe { ((*ctx.regs).rbx, (*ctx.regs).rcx) };
    if off.valid == 0 {
        // Detached meanwhile: nothing can be read safely.
        count_drop(KernelDrop::HttpNoOffsets);
        return 0;
    }
    // A nil *Status (or nil proto inside) is OK, as status.Code reads it.
    let mut code: u32 = 0;
    if let Some(proto) = read_user::<u64>(st.wrapping_add(off.status_proto as u64))
        && let Some(c) = read_user::<i32>(proto.wrapping_add(off.proto_code as u64))
    {
        code = c as u32;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(key) = GRPC_KEY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot; every byte is written before use.
    let key = unsafe { &mut *key };
    // SAFETY: plain helper; a uprobe runs in the serving task.
    key.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    key.tgid = tgid;
    key.code = if code > 0xfffe { 0xffff } else { code as u16 };
    key.flags = 0;
    // Word by word: the verifier sees constant stores, no memset call.
    let words = key.method.as_mut_ptr().cast::<u64>();
    for i in 0..GRPC_METHOD_MAX / 8 {
        // SAFETY: within the 112-byte array (8-byte aligned: it follows a u64 and two u32/u16s).
        unsafe { words.add(i).write_unaligned(0) };
    }
    let mut s = stream;
    if off.stream_ptr != NO_DEREF {
        s = read_user::<u64>(stream.wrapping_add(off.stream_ptr as u64)).unwrap_or(0);
    }
    let (mut m_ptr, mut m_len) = (0u64, 0u64);
    if s != 0 {
        m_ptr = read_user::<u64>(s.wrapping_add(off.stream_method as u64)).unwrap_or(0);
        m_len = read_user::<u64>(s.wrapping_add(off.stream_method as u64 + 8)).unwrap_or(0);
    }
    if m_len > GRPC_METHOD_MAX as u64 {
        key.flags |= flags::TRUNCATED;
    }
    if m_ptr != 0 && m_len > 0 {
        let mut n = m_len as u32;
        if n > GRPC_METHOD_MAX as u32 {
            n = GRPC_METHOD_MAX as u32;
        }
        // SAFETY: the destination has GRPC_METHOD_MAX bytes; the helper checks the user read.
        unsafe {
            generated::bpf_probe_read_user(key.method.as_mut_ptr().cast(), n, m_ptr as *const _)
        };
    }
    let sk = StreamKey {
        tgid,
        _pad: 0,
        stream,
    };
    // SAFETY: copied out before removal.
    let start = unsafe { GRPC_INFLIGHT.get(&sk) }.copied();
    let Some(start) = start else {
        count(key, |c| {
            c.rpcs += 1;
            c.no_start += 1;
            c.unrecorded += 1;
        });
        return 0;
    };
    let _ = GRPC_INFLIGHT.remove(&sk);
    count(key, |c| c.rpcs += 1);
    let every = GRPC_SAMPLING.get(0).copied().unwrap_or(1);
    // SAFETY: plain helper.
    if every > 1 && unsafe { bpf_get_prandom_u32() } % every != 0 {
        count(key, |c| c.unrecorded += 1);
        return 0;
    }
    let Some(mut rec) = EVENTS.reserve::<GrpcEvent>(0) else {
        count_drop(KernelDrop::RecordReserve);
        count(key, |c| c.unrecorded += 1);
        return 0;
    };
    let ev = rec.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned record; every field is written.
    unsafe {
        (*ev).header = EventHeader::new(EventKind::Grpc, bpf_ktime_get_ns());
        (*ev).tgid = tgid;
        (*ev).code = key.code;
        (*ev).flags = key.flags;
        (*ev).cgroup_id = key.cgroup_id;
        (*ev).duration_ns = bpf_ktime_get_boot_ns().saturating_sub(start);
        (*ev).method = key.method;
    }
    rec.submit(crate::emit::record_wake_flags());
    0
}

/// `(*grpc.Server).ServeHTTP` entry, in the goroutine net/http serves the request on: its
/// net/http request (if the net/http probes follow it) is marked as this family's
/// (`INFLIGHT_RPC`), and left to it. The call itself runs on another goroutine
/// (`serveStreams` starts one per stream), so the mark is made here, not at `handleStream`.
#[inline(always)]
fn grpc_serve_http_impl(ctx: ProbeContext) -> u32 {
    if link(&ctx).is_none() {
        return 0;
    }
    let k = InflightKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        // SAFETY: a uprobe's context is the user pt_regs; R14 is the goroutine (Go ABI).
        goroutine: unsafe { (*ctx.regs).r14 },
    };
    if let Some(p) = HTTP_INFLIGHT.get_ptr_mut(&k) {
        // SAFETY: a live element, touched only by this goroutine's probes.
        unsafe { (*p).flags |= INFLIGHT_RPC };
    }
    0
}

uprobes! {
    grpc_stream_start, grpc_stream_start_m => grpc_stream_start_impl;
    grpc_write_status, grpc_write_status_m => grpc_write_status_impl;
    grpc_serve_http, grpc_serve_http_m => grpc_serve_http_impl;
}

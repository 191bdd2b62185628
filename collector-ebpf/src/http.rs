//! Go `net/http` server requests, from uprobes on the server's own code.
//!
//! Why these probe points (Go register ABI: args in RAX, RBX, RCX, RDI…; R14 = goroutine `g`):
//! - `net/http.serverHandler.ServeHTTP` entry: every HTTP/1 and HTTP/2 request passes through it
//!   (TLS terminates below it, so HTTPS needs nothing more); RDI = `*Request`.
//! - Every RET of `serverHandler.ServeHTTP`: the request finished. No uretprobes: the kernel
//!   would rewrite return addresses on goroutine stacks that Go moves.
//! - `net/http.(*response).WriteHeader` entry: the status (RBX); HTTP/1 only.
//! - `runtime.gopanic` entry: the request's goroutine is panicking.
//! - Every RET of `net/http.(*conn).serve`: the connection goroutine is done. A request still in
//!   flight then never returned — the handler panicked (net/http recovered in `serve`) or the
//!   handler aborted: reported instead of silently lost.
//! In-flight state is keyed by (tgid, g). `runtime.morestack` re-runs a function from its entry,
//! so an entry probe may fire twice for one call: it overwrites, never counts.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_probe_read_user, generated,
    },
    macros::{btf_tracepoint, raw_tracepoint, tracepoint, uprobe},
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext, TracePointContext},
};
use collector_common::{
    event::{EVENT_VERSION, EventHeader, EventKind},
    http::{HttpCounts, HttpEvent, Inflight, InflightKey, METHOD_MAX, ROUTE_MAX, flags},
    maps::KernelDrop,
    process::ExecEvent,
    tcp::OwnerKey,
};

use crate::maps::{EVENTS, HTTP_COUNTS, HTTP_INFLIGHT, HTTP_OFFSETS, HTTP_SAMPLING, count_drop};

#[inline(always)]
fn regs(ctx: &ProbeContext) -> (u64, u64, u64, u64) {
    // SAFETY: a uprobe's context is the user pt_regs; direct reads are allowed.
    unsafe {
        let r = &*ctx.regs;
        (r.r14, r.rax, r.rbx, r.rdi)
    }
}

#[inline(always)]
fn key(goroutine: u64) -> InflightKey {
    InflightKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        goroutine,
    }
}

#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: fault-safe copy from the current process.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Copies at most `max` bytes of a Go string (ptr, len) into `dst`; returns the copied length.
#[inline(always)]
fn read_go_string(ptr: u64, len: u64, dst: *mut u8, max: usize) -> usize {
    if ptr == 0 || len == 0 {
        return 0;
    }
    let mut n = len as usize;
    if n > max {
        n = max;
    }
    // SAFETY: dst has room for `max` bytes; the helper bounds-checks the user read.
    let rc = unsafe { generated::bpf_probe_read_user(dst.cast(), n as u32, ptr as *const _) };
    if rc == 0 { n } else { 0 }
}

#[inline(always)]
fn http_serve_start_impl(ctx: ProbeContext) -> u32 {
    // SAFETY: kernel ≥ 5.15 passes the attach cookie; userspace sets it to the binary's slot.
    let slot = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    let (g, _, _, request) = regs(&ctx);
    let entry = Inflight {
        start_ns: unsafe { bpf_ktime_get_ns() },
        request,
        status: 0,
        flags: 0,
        slot,
        _pad: 0,
    };
    if HTTP_INFLIGHT.insert(&key(g), &entry, 0).is_err() {
        count_drop(KernelDrop::HttpInflightFull);
    }
    0
}

#[inline(always)]
fn http_write_header_impl(ctx: ProbeContext) -> u32 {
    let (g, _, code, _) = regs(&ctx);
    let code = code as u32;
    // 1xx informational headers (except 101) precede the real status.
    if (100..200).contains(&code) && code != 101 {
        return 0;
    }
    match HTTP_INFLIGHT.get_ptr_mut(&key(g)) {
        // SAFETY: value of a live element, only touched by this goroutine's probes.
        Some(p) => unsafe {
            if (*p).status == 0 {
                (*p).status = code;
            }
        },
        None => count_drop(KernelDrop::HttpNoStart),
    }
    0
}

#[inline(always)]
fn http_serve_return_impl(ctx: ProbeContext) -> u32 {
    let (g, _, _, _) = regs(&ctx);
    let k = key(g);
    // SAFETY: copied out before removal.
    let Some(entry) = (unsafe { HTTP_INFLIGHT.get(&k) }).copied() else {
        count_drop(KernelDrop::HttpNoStart);
        return 0;
    };
    let _ = HTTP_INFLIGHT.remove(&k);
    finish(&k, &entry, 0);
    0
}

#[inline(always)]
fn http_conn_serve_return_impl(ctx: ProbeContext) -> u32 {
    let (g, _, _, _) = regs(&ctx);
    let k = key(g);
    // SAFETY: copied out before removal.
    if let Some(entry) = (unsafe { HTTP_INFLIGHT.get(&k) }).copied() {
        let _ = HTTP_INFLIGHT.remove(&k);
        let f = if entry.flags as u16 & flags::PANICKED != 0 {
            flags::PANICKED
        } else {
            flags::ABORTED
        };
        finish(&k, &entry, f);
    }
    0
}

#[inline(always)]
fn go_panic_impl(ctx: ProbeContext) -> u32 {
    let (g, _, _, _) = regs(&ctx);
    if let Some(p) = HTTP_INFLIGHT.get_ptr_mut(&key(g)) {
        // SAFETY: as in http_write_header.
        unsafe { (*p).flags |= flags::PANICKED as u32 };
    }
    0
}

static ZERO_COUNTS: HttpCounts = HttpCounts {
    requests: 0,
    unrecorded: 0,
    panics: 0,
    aborted: 0,
    unobserved: 0,
    by_class: [0; 5],
    lost: 0,
};

/// Applies `f` to this CPU's request counters of `owner`, creating them on first use; the
/// overflow bucket when the map is full (counted). Shared by the uprobe and wire paths.
#[inline(always)]
pub(crate) fn count(owner: &OwnerKey, f: impl FnOnce(&mut HttpCounts)) {
    let mut p = HTTP_COUNTS.get_ptr_mut(owner);
    if p.is_none() {
        // From read-only data: a zeroed value built on the stack is a memset call.
        let _ = HTTP_COUNTS.insert(owner, &ZERO_COUNTS, 0);
        p = HTTP_COUNTS.get_ptr_mut(owner);
        if p.is_none() {
            count_drop(KernelDrop::StatsMapFull);
            p = HTTP_COUNTS.get_ptr_mut(&OwnerKey::OVERFLOW);
        }
    }
    match p {
        // SAFETY: this CPU's copy of a live element.
        Some(p) => f(unsafe { &mut *p }),
        None => count_drop(KernelDrop::StatsLost),
    }
}

#[inline(always)]
fn finish(k: &InflightKey, entry: &Inflight, mut f: u16) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(off) = HTTP_OFFSETS.get(entry.slot) else {
        return;
    };
    if off.valid == 0 {
        return;
    }
    let req = entry.request;
    if read_user::<i64>(req + off.request_proto_major as u64) == Some(2) {
        f |= flags::HTTP2;
    }
    let status = entry.status;
    let owner = OwnerKey {
        // SAFETY: plain helper; a uprobe runs in the serving task (process context).
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: k.tgid,
        _pad: 0,
    };
    count(&owner, |c| {
        c.requests += 1;
        if f & flags::PANICKED != 0 {
            c.panics += 1;
        } else if f & flags::ABORTED != 0 {
            c.aborted += 1;
        } else if f & flags::HTTP2 != 0 {
            c.unobserved += 1;
        } else {
            let s = if status == 0 { 200 } else { status };
            let class = (s / 100) as usize;
            if (1..=5).contains(&class) {
                c.by_class[class - 1] += 1;
            }
        }
    });
    let every = HTTP_SAMPLING.get(0).copied().unwrap_or(1);
    if every > 1 && unsafe { bpf_get_prandom_u32() } % every != 0 {
        count(&owner, |c| c.unrecorded += 1);
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<HttpEvent>(0) else {
        count_drop(KernelDrop::RingReserve);
        count(&owner, |c| c.unrecorded += 1);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned record; every field is written below.
    unsafe {
        (*ev).header = EventHeader {
            kind: EventKind::Http as u16,
            version: EVENT_VERSION,
            _pad: 0,
            ts_ns: now,
        };
        (*ev).tgid = k.tgid;
        (*ev).status = if f & flags::HTTP2 != 0 {
            0
        } else {
            status as u16
        };
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        (*ev).duration_ns = now.saturating_sub(entry.start_ns);
        (*ev).method_code = 0;
        (*ev)._pad2 = 0;
        let m_ptr = read_user::<u64>(req + off.request_method as u64).unwrap_or(0);
        let m_len = read_user::<u64>(req + off.request_method as u64 + 8).unwrap_or(0);
        (*ev).method = [0; METHOD_MAX];
        (*ev).method_len =
            read_go_string(m_ptr, m_len, (*ev).method.as_mut_ptr(), METHOD_MAX) as u8;
        let mut r_ptr = 0;
        let mut r_len = 0;
        if off.request_pattern != 0 {
            r_ptr = read_user::<u64>(req + off.request_pattern as u64).unwrap_or(0);
            r_len = read_user::<u64>(req + off.request_pattern as u64 + 8).unwrap_or(0);
            if r_len > 0 {
                f |= flags::PATTERN;
            }
        }
        if r_len == 0 {
            let url = read_user::<u64>(req + off.request_url as u64).unwrap_or(0);
            if url != 0 {
                r_ptr = read_user::<u64>(url + off.url_path as u64).unwrap_or(0);
                r_len = read_user::<u64>(url + off.url_path as u64 + 8).unwrap_or(0);
            }
        }
        if r_len > ROUTE_MAX as u64 {
            f |= flags::TRUNCATED;
        }
        (*ev).route_len = read_go_string(r_ptr, r_len, (*ev).route.as_mut_ptr(), ROUTE_MAX) as u16;
        (*ev).flags = f;
    }
    slot.submit(0);
}

/// Each probe twice: a per-point uprobe (any kernel) and a `uprobe.multi` variant (≥ 6.6) whose
/// single link for all points detaches in one step instead of one RCU grace period per point.
macro_rules! uprobes {
    ($($name:ident, $multi:ident => $imp:ident;)+) => {
        $(
            #[uprobe]
            pub fn $name(ctx: ProbeContext) -> u32 {
                $imp(ctx)
            }

            #[uprobe(multi)]
            pub fn $multi(ctx: ProbeContext) -> u32 {
                $imp(ctx)
            }
        )+
    };
}

uprobes! {
    http_serve_start, http_serve_start_m => http_serve_start_impl;
    http_write_header, http_write_header_m => http_write_header_impl;
    http_serve_return, http_serve_return_m => http_serve_return_impl;
    http_conn_serve_return, http_conn_serve_return_m => http_conn_serve_return_impl;
    go_panic, go_panic_m => go_panic_impl;
}

// ---------------------------------------------------------------------------------------------
// Process exec: new Go servers are instrumented before their first request.

#[inline(always)]
fn on_exec() {
    let Some(mut slot) = EVENTS.reserve::<ExecEvent>(0) else {
        count_drop(KernelDrop::RingReserve);
        return;
    };
    slot.write(ExecEvent {
        header: EventHeader {
            kind: EventKind::Exec as u16,
            version: EVENT_VERSION,
            _pad: 0,
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
    });
    slot.submit(0);
}

#[btf_tracepoint]
pub fn exec_tp_btf(_ctx: BtfTracePointContext) -> u32 {
    on_exec();
    0
}

#[raw_tracepoint]
pub fn exec_raw_tp(_ctx: RawTracePointContext) -> u32 {
    on_exec();
    0
}

#[tracepoint]
pub fn exec_tp(_ctx: TracePointContext) -> u32 {
    on_exec();
    0
}

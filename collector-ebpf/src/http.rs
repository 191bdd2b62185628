//! Go `net/http` server requests, from uprobes on the server's own code.
//!
//! Why these probe points (Go register ABI: args in RAX, RBX, RCX, RDI…; R14 = goroutine `g`):
//! - `net/http.serverHandler.ServeHTTP` entry: every HTTP/1 and HTTP/2 request passes through it
//!   (TLS terminates below it, so HTTPS needs nothing more); RDI = `*Request`.
//! - Every RET of `serverHandler.ServeHTTP`: the request finished. No uretprobes: the kernel
//!   would rewrite return addresses on goroutine stacks that Go moves.
//! - `net/http.(*response).WriteHeader` entry: the status (RBX); HTTP/1 only. An HTTP/2
//!   status is read from memory at the RET of `ServeHTTP` instead, no trap of its own: the
//!   bundled server keeps it in its writer state (`http2responseWriterState.status`), reached
//!   through the `ResponseWriter` (RBX:RCX at entry) once its itab says it is that writer.
//! - `runtime.gopanic` entry: the request's goroutine is panicking.
//! - Every RET of `net/http.(*conn).serve`: the connection goroutine is done. A request still in
//!   flight then never returned — the handler panicked (net/http recovered in `serve`) or the
//!   handler aborted: reported instead of silently lost.
//! - Every RET of the HTTP/2 handler goroutine's function (`(*http2serverConn).runHandler`,
//!   `net/http/internal/http2.(*serverConn).runHandler` since Go 1.27): its deferred recover
//!   makes it return after a handler panic, with the request still in flight — the same
//!   reporting for HTTP/2, whose handlers do not run on the connection's goroutine.
//! In-flight state is keyed by (tgid, g). `runtime.morestack` re-runs a function from its first
//! instruction; entry probes sit past the stack check for that reason (userspace `ret_scan`),
//! but one whose check was not recognised sits on the first instruction and may fire twice for
//! one call: it overwrites, never counts.
//!
//! A status may be written by a goroutine the handler started: `WriteHeader` then runs on a
//! goroutine with no request of its own. The request is found through its response (RCX at
//! `ServeHTTP` entry, the receiver RAX at `WriteHeader`): the status waits in
//! `HTTP_STATUS_ASIDE` until the request ends.
//!
//! Each server process may keep `HTTP_INFLIGHT_PER_SERVER` requests in `HTTP_INFLIGHT`
//! (`HTTP_INFLIGHT_SERVERS` counts them, exactly: +1 per new entry, −1 per entry removed), so a
//! client holding slow requests open on one server cannot take the map from the others.
//! Requests that cannot be tracked are charged to their server (`HttpCounts::lost`).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_prandom_u32, bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_probe_read_user,
        generated,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint, uprobe},
    maps::LruHashMap,
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext, TracePointContext},
};
use collector_common::{
    cookie,
    event::{EventHeader, EventKind},
    http::{
        GoHttpOffsets, HttpCounts, HttpEvent, INFLIGHT_LEARN, INFLIGHT_RPC, ITAB_HASH, Inflight,
        InflightKey, METHOD_MAX, ROUTE_MAX, ResponseKey, flags,
    },
    maps::{
        HTTP_INFLIGHT_PER_SERVER, HTTP_INFLIGHT_SERVERS_ENTRIES, HTTP_STATUS_ASIDE_ENTRIES,
        KernelDrop,
    },
    process::ExecEvent,
    tcp::OwnerKey,
};

use crate::{
    klog::klog,
    maps::{EVENTS, HTTP_COUNTS, HTTP_INFLIGHT, HTTP_OFFSETS, HTTP_SAMPLING, count_drop},
};

/// tgid → its entries in `HTTP_INFLIGHT` (`maps::HTTP_INFLIGHT_SERVERS`).
#[map]
static HTTP_INFLIGHT_SERVERS: LruHashMap<u32, i64> =
    LruHashMap::with_max_entries(HTTP_INFLIGHT_SERVERS_ENTRIES, 0);

/// Statuses written from another goroutine (`maps::HTTP_STATUS_ASIDE`).
#[map]
static HTTP_STATUS_ASIDE: LruHashMap<ResponseKey, u32> =
    LruHashMap::with_max_entries(HTTP_STATUS_ASIDE_ENTRIES, 0);

/// -EEXIST from a map update with `BPF_NOEXIST`.
const EEXIST: i32 = -17;

/// Go's registers at a probe point.
struct Regs {
    /// R14: the goroutine.
    g: u64,
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdi: u64,
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> Regs {
    // SAFETY: a uprobe's context is the user pt_regs; direct reads are allowed.
    unsafe {
        let r = &*ctx.regs;
        Regs {
            g: r.r14,
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdi: r.rdi,
        }
    }
}

#[inline(always)]
fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

#[inline(always)]
fn current_owner() -> OwnerKey {
    OwnerKey {
        // SAFETY: plain helper; a uprobe runs in the serving task (process context).
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: tgid(),
        _pad: 0,
    }
}

/// A counter in map memory shared by every CPU. `core::sync::atomic` has no 64-bit RMW
/// operations on the BPF target, so the kernel's atomic instructions are written out.
#[derive(Clone, Copy)]
struct SharedCount(*mut i64);

impl SharedCount {
    /// Adds `v`; returns the value before.
    #[inline(always)]
    fn fetch_add(self, v: i64) -> i64 {
        let mut v = v;
        // SAFETY: `self.0` points at a live, 8-byte aligned map value (BPF_ATOMIC | BPF_FETCH,
        // kernel ≥ 5.12; the uprobes need ≥ 5.15 for attach cookies anyway).
        unsafe {
            core::arch::asm!(
                "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
                v = inout(reg) v,
                p = in(reg) self.0,
                options(nostack),
            )
        };
        v
    }

    #[inline(always)]
    fn add(self, v: i64) {
        // SAFETY: as in `fetch_add` (BPF_ATOMIC add without fetch, any kernel).
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({p} + 0) += {v}",
                v = in(reg) v,
                p = in(reg) self.0,
                options(nostack),
            )
        };
    }
}

/// This process's count of entries in `HTTP_INFLIGHT`, created at 0 on first use.
#[inline(always)]
fn server_entries(tgid: u32) -> Option<SharedCount> {
    let mut p = HTTP_INFLIGHT_SERVERS.get_ptr_mut(&tgid);
    if p.is_none() {
        // Another CPU may create it first: then this insert fails and the lookup finds it.
        let inserted = HTTP_INFLIGHT_SERVERS.insert(&tgid, &0, BPF_NOEXIST as u64);
        p = HTTP_INFLIGHT_SERVERS.get_ptr_mut(&tgid);
        if p.is_none()
            && let Err(e) = inserted
        {
            klog!(
                Warn,
                "HTTP_INFLIGHT_SERVERS insert for process {} failed with {}: its budget is not kept",
                tgid,
                e
            );
        }
    }
    p.map(SharedCount)
}

/// Removes a finished request's entry; gives its place back to the server's budget.
#[inline(always)]
fn untrack(k: &InflightKey) {
    if HTTP_INFLIGHT.remove(k).is_ok()
        && let Some(n) = server_entries(k.tgid)
    {
        n.add(-1);
    }
}

#[inline(always)]
fn key(goroutine: u64) -> InflightKey {
    InflightKey {
        tgid: tgid(),
        _pad: 0,
        goroutine,
    }
}

/// A fault-safe read from the current process; `None` for a null address. Shared by the Go
/// uprobes (`grpc` too).
#[inline(always)]
pub(crate) fn read_user<T>(addr: u64) -> Option<T> {
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

/// This link's cookie (offsets slot, generation, `UNSEEN_ONLY`: `collector_common::cookie`)
/// and the generation its slot holds now (0: emptied). The cookie is read once: each helper
/// call costs ~25 ns here.
#[inline(always)]
fn link(ctx: &ProbeContext) -> (u32, u32, u32, bool) {
    // SAFETY: kernel ≥ 5.15 passes the attach cookie; userspace sets it (`cookie::encode`).
    let raw = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let (slot, generation) = cookie::decode(raw);
    (
        slot,
        generation,
        slot_generation(slot),
        cookie::unseen_only(raw),
    )
}

#[inline(always)]
fn slot_generation(slot: u32) -> u32 {
    HTTP_OFFSETS.get(slot).map_or(0, |o| o.valid)
}

/// Whether this link ends `entry`: the link that started it, or, that one being no longer live
/// (its slot emptied or refilled: detached, or on its way out), a live link of the same point.
/// Until the reaper has detached a binary's old links, they fire beside the new ones.
#[inline(always)]
fn ends(ctx: &ProbeContext, entry: &Inflight) -> bool {
    // SAFETY: as in `link`.
    let (slot, generation) = cookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    if slot == entry.slot && generation == entry.generation {
        return true;
    }
    slot_generation(slot) == generation && slot_generation(entry.slot) != entry.generation
}

/// Under `cookie::UNSEEN_ONLY` (`--go-http-uprobes auto`), what the probes do with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// The socket parser cannot read it (TLS, HTTP/2): the probes count it.
    No,
    /// Plaintext HTTP/1.x (`ProtoMajor` 1, `TLS` nil): the parser counts it; left to it.
    Yes,
    /// Plaintext HTTP/1.x in a route-learning window (`GoHttpOffsets::learn`): left to the
    /// parser for counting, followed for its route template only.
    Learn,
}

/// Whether the socket parser reads this request itself, so these probes leave it instead of
/// counting it twice. A link whose slot was emptied cannot read the request and leaves every
/// one (its binary is on its way out).
#[inline(always)]
fn parser_reads(slot: u32, request: u64, emptied: bool) -> Leave {
    if emptied {
        return Leave::Yes;
    }
    let Some(o) = HTTP_OFFSETS.get_ptr_mut(slot) else {
        return Leave::Yes;
    };
    // SAFETY: a live element of the array (never freed); `learn` is only touched atomically.
    let o = unsafe { &mut *o };
    let major: Option<u64> = read_user(request.wrapping_add(u64::from(o.request_proto_major)));
    let tls: Option<u64> = read_user(request.wrapping_add(u64::from(o.request_tls)));
    if major != Some(1) || tls != Some(0) {
        return Leave::No;
    }
    // Read first: outside a window (nearly always) no atomic write to a shared line.
    // SAFETY: an aligned field of the live element.
    if unsafe { core::ptr::read_volatile(&raw const o.learn) } <= 0 {
        return Leave::Yes;
    }
    if SharedCount(&raw mut o.learn).fetch_add(-1) > 0 {
        Leave::Learn
    } else {
        Leave::Yes
    }
}

#[inline(always)]
fn http_serve_start_impl(ctx: ProbeContext) -> u32 {
    let (slot, generation, valid, unseen_only) = link(&ctx);
    // A stale link, its slot filled again since: the live link of this point tracks the request.
    if cookie::is_stale(generation, valid) {
        return 0;
    }
    // Its slot emptied (the binary let go, its links not yet detached): the request is tracked
    // only if no live link of this point tracks it, and ends counted without its offsets.
    let emptied = valid == 0;
    let r = regs(&ctx);
    let learn = if unseen_only {
        match parser_reads(slot, r.rdi, emptied) {
            Leave::Yes => return 0,
            Leave::Learn => true,
            Leave::No => false,
        }
    } else {
        false
    };
    let k = key(r.g);
    // A status set aside for an earlier request whose response sat at the same address.
    let _ = HTTP_STATUS_ASIDE.remove(&ResponseKey {
        tgid: k.tgid,
        _pad: 0,
        response: r.rcx,
    });
    let entry = Inflight {
        // SAFETY: plain helper.
        start_ns: unsafe { bpf_ktime_get_boot_ns() },
        request: r.rdi,
        response: r.rcx,
        status: 0,
        flags: if learn { INFLIGHT_LEARN } else { 0 },
        slot,
        generation,
        writer_itab: r.rbx,
    };
    // morestack ran the entry again for a request already tracked (a probe on the first
    // instruction, see the module docs): kept as it is, before the budget is charged — at a
    // full budget the re-run was counted lost although its request was tracked.
    // SAFETY: copied out.
    if let Some(old) = unsafe { HTTP_INFLIGHT.get(&k) }
        && old.request == entry.request
        && old.slot == entry.slot
        && old.generation == entry.generation
    {
        return 0;
    }
    if learn {
        // Bounded by the window's own budget, not the server's; never counted, so nothing
        // is lost when it cannot be followed.
        let _ = HTTP_INFLIGHT.insert(&k, &entry, BPF_NOEXIST as u64);
        return 0;
    }
    let budget = server_entries(k.tgid);
    if let Some(n) = budget
        && let held = n.fetch_add(1)
        && held >= HTTP_INFLIGHT_PER_SERVER
    {
        n.add(-1);
        count_drop(KernelDrop::HttpInflightBudget);
        klog!(
            Info,
            "http_inflight_budget: process {} holds {} requests in flight, this one is not tracked",
            k.tgid,
            held
        );
        count(&current_owner(), |c| c.lost += 1);
        return 0;
    }
    // The insert's error, if it failed.
    let full = match HTTP_INFLIGHT.insert(&k, &entry, BPF_NOEXIST as u64) {
        Ok(()) => None,
        Err(e) if e == EEXIST && emptied => {
            // Tracked already, by the live link of this point: never replaced from here.
            if let Some(n) = budget {
                n.add(-1);
            }
            None
        }
        Err(e) if e == EEXIST => {
            // Not a new entry (it was counted in the budget when inserted): morestack re-ran
            // the entry probe for this request, or the goroutine's previous request never
            // ended (a handler that called runtime.Goexit) and Go reused the goroutine — that
            // one is reported now, as its connection goroutine would have.
            if let Some(n) = budget {
                n.add(-1);
            }
            // SAFETY: copied out before it is replaced.
            if let Some(old) = unsafe { HTTP_INFLIGHT.get(&k) }.copied()
                && old.request != entry.request
            {
                finish(&k, &old, ended_early(&old));
            }
            HTTP_INFLIGHT.insert(&k, &entry, BPF_ANY as u64).err()
        }
        Err(e) => {
            if let Some(n) = budget {
                n.add(-1);
            }
            Some(e)
        }
    };
    if let Some(e) = full {
        count_drop(KernelDrop::HttpInflightFull);
        klog!(
            Warn,
            "http_inflight_full: HTTP_INFLIGHT insert for process {} failed with {}",
            k.tgid,
            e
        );
        count(&current_owner(), |c| c.lost += 1);
    }
    0
}

#[inline(always)]
fn http_write_header_impl(ctx: ProbeContext) -> u32 {
    let r = regs(&ctx);
    let code = r.rbx as u32;
    // 1xx informational headers (except 101) precede the real status.
    if (100..200).contains(&code) && code != 101 {
        return 0;
    }
    let k = key(r.g);
    if let Some(p) = HTTP_INFLIGHT.get_ptr_mut(&k) {
        // SAFETY: value of a live element, only touched by this goroutine's probes.
        unsafe {
            if (*p).response == r.rax {
                if (*p).status == 0 {
                    (*p).status = code;
                }
                return 0;
            }
        }
    }
    // Written by a goroutine other than the request's: kept for the request's end (the first
    // status wins, as net/http keeps it). A write for a request we do not follow (begun before
    // the probes, or after its handler returned) is evicted in time: no loss either way.
    let _ = HTTP_STATUS_ASIDE.insert(
        &ResponseKey {
            tgid: k.tgid,
            _pad: 0,
            response: r.rax,
        },
        &code,
        BPF_NOEXIST as u64,
    );
    0
}

#[inline(always)]
fn http_serve_return_impl(ctx: ProbeContext) -> u32 {
    let k = key(regs(&ctx).g);
    // SAFETY: copied out before removal.
    let Some(entry) = (unsafe { HTTP_INFLIGHT.get(&k) }).copied() else {
        // SAFETY: as in `link`.
        if cookie::unseen_only(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }) {
            // A request left to the socket parser (`parser_reads`): nothing missed.
            return 0;
        }
        // Begun before the probes were attached, or not tracked (already counted as lost).
        count_drop(KernelDrop::HttpNoStart);
        klog!(
            Debug,
            "http_no_start: ServeHTTP of process {} returned with no tracked start",
            k.tgid
        );
        return 0;
    };
    if !ends(&ctx, &entry) {
        return 0;
    }
    if entry.flags & INFLIGHT_LEARN != 0 {
        // Never charged to the server's budget (`http_serve_start_impl`).
        let _ = HTTP_INFLIGHT.remove(&k);
        learned(&k, &entry);
        return 0;
    }
    untrack(&k);
    finish(&k, &entry, 0);
    0
}

/// A goroutine that served requests is done (`(*conn).serve` or an HTTP/2 `runHandler`
/// returns): a request it still has in flight never returned from ServeHTTP.
#[inline(always)]
fn http_goroutine_done_impl(ctx: ProbeContext) -> u32 {
    let k = key(regs(&ctx).g);
    // SAFETY: copied out before removal.
    if let Some(entry) = (unsafe { HTTP_INFLIGHT.get(&k) }).copied()
        && ends(&ctx, &entry)
    {
        if entry.flags & INFLIGHT_LEARN != 0 {
            // A learning request that never returned: no template to trust, nothing to count.
            let _ = HTTP_INFLIGHT.remove(&k);
            return 0;
        }
        untrack(&k);
        finish(&k, &entry, ended_early(&entry));
    }
    0
}

/// The outcome of a request that never returned from ServeHTTP.
#[inline(always)]
fn ended_early(entry: &Inflight) -> u16 {
    if entry.flags as u16 & flags::PANICKED != 0 {
        flags::PANICKED
    } else {
        flags::ABORTED
    }
}

#[inline(always)]
fn go_panic_impl(ctx: ProbeContext) -> u32 {
    if let Some(p) = HTTP_INFLIGHT.get_ptr_mut(&key(regs(&ctx).g)) {
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
        let inserted = HTTP_COUNTS.insert(owner, &ZERO_COUNTS, 0);
        p = HTTP_COUNTS.get_ptr_mut(owner);
        if p.is_none() {
            count_drop(KernelDrop::StatsMapFull);
            if let Err(e) = inserted {
                klog!(
                    Warn,
                    "stats_map_full: HTTP_COUNTS insert for cgroup {} process {} failed with {}, charged to overflow",
                    owner.cgroup_id,
                    owner.tgid,
                    e
                );
            }
            p = HTTP_COUNTS.get_ptr_mut(&OwnerKey::OVERFLOW);
        }
    }
    match p {
        // SAFETY: this CPU's copy of a live element.
        Some(p) => f(unsafe { &mut *p }),
        None => {
            count_drop(KernelDrop::StatsLost);
            klog!(
                Error,
                "stats_lost: no HTTP_COUNTS element for cgroup {} process {}, not even the overflow bucket",
                owner.cgroup_id,
                owner.tgid
            );
        }
    }
}

/// Counts the request by outcome (status 0 counts as 200); `unknown_proto`: HTTP/2 could not
/// be ruled out (its status is not in `Inflight`), so a request without a status is
/// `unobserved`, not a made-up 200.
#[inline(always)]
fn count_outcome(c: &mut HttpCounts, f: u16, status: u32, unknown_proto: bool) {
    c.requests += 1;
    if f & flags::PANICKED != 0 {
        c.panics += 1;
    } else if f & flags::ABORTED != 0 {
        c.aborted += 1;
    } else if f & flags::UNOBSERVED != 0 || (unknown_proto && status == 0) {
        c.unobserved += 1;
    } else {
        let s = if status == 0 { 200 } else { status };
        let class = (s / 100) as usize;
        if (1..=5).contains(&class) {
            c.by_class[class - 1] += 1;
        }
    }
}

/// The status of an HTTP/2 request whose handler returned, from net/http's HTTP/2 writer state
/// (0: nothing written yet — net/http then sends 200 as the handler's end flushes, as on
/// HTTP/1). `None` when the writer is not net/http's own (another HTTP/2 server, such as
/// golang.org/x/net/http2's, wrote through a type of its own), its layout is unknown, or what
/// is read is not a status `WriteHeader` accepts (100–999).
#[inline(always)]
fn http2_status(entry: &Inflight, off: &GoHttpOffsets) -> Option<u32> {
    if off.h2_writer_hash == 0
        || read_user::<u32>(entry.writer_itab + ITAB_HASH)? != off.h2_writer_hash
    {
        return None;
    }
    let rws = read_user::<u64>(entry.response + off.h2_writer_rws as u64)?;
    match read_user::<i64>(rws + off.h2_rws_status as u64)? {
        0 => Some(0),
        s @ 100..=999 => Some(s as u32),
        _ => None,
    }
}

/// The binary's offsets, if the slot still holds those the request started with.
#[inline(always)]
fn offsets_of(entry: &Inflight) -> Option<&'static GoHttpOffsets> {
    let off = HTTP_OFFSETS.get(entry.slot)?;
    (off.valid != 0 && off.valid == entry.generation).then_some(off)
}

/// The route template of a learning request (`INFLIGHT_LEARN`), as a `flags::LEARNED`
/// record: its router's, else ServeMux's pattern. Nothing when it has none, or a cut one (no
/// use for matching paths), or the ring is full: a window learns from many requests, and a
/// lost one is no lost signal (not a `KernelDrop`, which would make verdicts unknown).
#[inline(always)]
fn learned(k: &InflightKey, entry: &Inflight) {
    let Some(off) = offsets_of(entry) else {
        return;
    };
    let Some(mut slot) = EVENTS.reserve::<HttpEvent>(0) else {
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned record; every field is written
    // below before it is submitted.
    let found = unsafe {
        (*ev).header = EventHeader::new(EventKind::Http, bpf_ktime_get_ns());
        (*ev).tgid = k.tgid;
        (*ev).status = 0;
        (*ev).cgroup_id = current_owner().cgroup_id;
        (*ev).duration_ns = 0;
        (*ev).method = [0; METHOD_MAX];
        (*ev).method_len = 0;
        (*ev).method_code = 0;
        (*ev)._pad2 = 0;
        (*ev).flags = flags::LEARNED | flags::PATTERN;
        match crate::router::take(k, entry, (*ev).route.as_mut_ptr()) {
            Some((n, cut)) => {
                (*ev).route_len = n;
                !cut
            }
            None if off.request_pattern != 0 => {
                (*ev).flags |= flags::MUX;
                let at = entry.request + off.request_pattern as u64;
                let p = read_user::<u64>(at).unwrap_or(0);
                let n = read_user::<u64>(at + 8).unwrap_or(0);
                (*ev).route_len = read_go_string(p, n, (*ev).route.as_mut_ptr(), ROUTE_MAX) as u16;
                n > 0 && n <= ROUTE_MAX as u64
            }
            None => false,
        }
    };
    if found {
        slot.submit(crate::emit::record_wake_flags());
    } else {
        slot.discard(0);
    }
}

#[inline(always)]
fn finish(k: &InflightKey, entry: &Inflight, mut f: u16) {
    if entry.flags & (INFLIGHT_LEARN | INFLIGHT_RPC) != 0 {
        // A learning request (never counted), or a gRPC call the RPC family counts.
        return;
    }
    // SAFETY: plain helper. The start's clock, for the duration.
    let end_ns = unsafe { bpf_ktime_get_boot_ns() };
    let mut status = entry.status;
    if status == 0 && entry.response != 0 {
        let rk = ResponseKey {
            tgid: k.tgid,
            _pad: 0,
            response: entry.response,
        };
        // SAFETY: copied out before removal.
        if let Some(s) = unsafe { HTTP_STATUS_ASIDE.get(&rk) }.copied() {
            status = s;
            let _ = HTTP_STATUS_ASIDE.remove(&rk);
        }
    }
    let owner = current_owner();
    let Some(off) = offsets_of(entry) else {
        // The slot was emptied (binary detached) or given to another binary while the request
        // ran: its memory cannot be read at these offsets, but its outcome is known.
        count_drop(KernelDrop::HttpNoOffsets);
        klog!(
            Warn,
            "http_no_offsets: offsets slot {} of process {} no longer holds generation {}",
            entry.slot,
            k.tgid,
            entry.generation
        );
        count(&owner, |c| {
            count_outcome(c, f, status, true);
            c.unrecorded += 1;
        });
        return;
    };
    let req = entry.request;
    if read_user::<i64>(req + off.request_proto_major as u64) == Some(2) {
        f |= flags::HTTP2;
        if f & (flags::PANICKED | flags::ABORTED) == 0 {
            match http2_status(entry, off) {
                Some(s) => status = s,
                None => f |= flags::UNOBSERVED,
            }
        }
    }
    count(&owner, |c| count_outcome(c, f, status, false));
    let every = HTTP_SAMPLING.get(0).copied().unwrap_or(1);
    if every > 1 && unsafe { bpf_get_prandom_u32() } % every != 0 {
        count(&owner, |c| c.unrecorded += 1);
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<HttpEvent>(0) else {
        count_drop(KernelDrop::RecordReserve);
        klog!(
            Warn,
            "record_reserve_failed: EVENTS full, a request of process {} is counted, not recorded",
            k.tgid
        );
        count(&owner, |c| c.unrecorded += 1);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned record; every field is written below.
    unsafe {
        (*ev).header = EventHeader::new(EventKind::Http, bpf_ktime_get_ns());
        (*ev).tgid = k.tgid;
        (*ev).status = if f & flags::UNOBSERVED != 0 {
            0
        } else {
            status as u16
        };
        (*ev).cgroup_id = owner.cgroup_id;
        (*ev).duration_ns = end_ns.saturating_sub(entry.start_ns);
        (*ev).method_code = 0;
        (*ev)._pad2 = 0;
        let m_ptr = read_user::<u64>(req + off.request_method as u64).unwrap_or(0);
        let m_len = read_user::<u64>(req + off.request_method as u64 + 8).unwrap_or(0);
        (*ev).method = [0; METHOD_MAX];
        (*ev).method_len =
            read_go_string(m_ptr, m_len, (*ev).method.as_mut_ptr(), METHOD_MAX) as u8;
        // A router's template (gin, echo, chi, gorilla/mux) when its probe saw one for this
        // request; else ServeMux's pattern; else the path.
        if let Some((n, cut)) = crate::router::take(k, entry, (*ev).route.as_mut_ptr()) {
            (*ev).route_len = n;
            (*ev).flags = f | flags::PATTERN | if cut { flags::TRUNCATED } else { 0 };
            slot.submit(crate::emit::record_wake_flags());
            return;
        }
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
    slot.submit(crate::emit::record_wake_flags());
}

uprobes! {
    http_serve_start, http_serve_start_m => http_serve_start_impl;
    http_write_header, http_write_header_m => http_write_header_impl;
    http_serve_return, http_serve_return_m => http_serve_return_impl;
    http_conn_serve_return, http_conn_serve_return_m => http_goroutine_done_impl;
    http2_handler_return, http2_handler_return_m => http_goroutine_done_impl;
    go_panic, go_panic_m => go_panic_impl;
}

// ---------------------------------------------------------------------------------------------
// Process exec: new Go servers are instrumented before their first request.

#[inline(always)]
fn on_exec() {
    let Some(mut slot) = EVENTS.reserve::<ExecEvent>(0) else {
        count_drop(KernelDrop::RingReserve);
        klog!(
            Warn,
            "ring_reserve_failed: EVENTS full, an exec is left to the /proc rescan"
        );
        return;
    };
    slot.write(ExecEvent {
        header: EventHeader::new(EventKind::Exec, unsafe { bpf_ktime_get_ns() }),
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

//! Route templates of Go routers: one uprobe per request on the router's own code, joined to
//! the net/http request by its goroutine (`HTTP_INFLIGHT`'s key).
//!
//! Why these points (each the one place per request where the router has the template, or
//! the per-request context it is about to fill, as an argument or result; see
//! `collector::probes::go_http::routers` for the functions and `RouterSpec` for the recipes):
//! no router hands its template to net/http (chi ≥ 5.3 sets `Request.Pattern`, but on the copy
//! of the request it passes down, not on the one `ServeHTTP` holds), so the net/http probes
//! cannot read it, and the socket parser never sees the router at all.
//!
//! The probe writes nothing into `HTTP_INFLIGHT` (owned by the net/http probes): what it found
//! waits in `ROUTER_TEMPLATES` under the same key and is taken by the request's end (`take`).

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{bpf_get_attach_cookie, generated},
    macros::{map, uprobe},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::ProbeContext,
};
use collector_common::{
    cookie,
    http::{Inflight, InflightKey, ROUTE_MAX},
    router::{
        JOIN_PIECES, JoinScratch, NO_DEREF, ROUTER_SPECS_SLOTS, ROUTER_TEMPLATES_ENTRIES,
        RouteTemplate, RouterSpec, kind,
    },
};

use crate::{http::read_user, maps::HTTP_INFLIGHT};

#[map]
static ROUTER_SPECS: Array<RouterSpec> = Array::with_max_entries(ROUTER_SPECS_SLOTS, 0);

#[map]
static ROUTER_TEMPLATES: LruHashMap<InflightKey, RouteTemplate> =
    LruHashMap::with_max_entries(ROUTER_TEMPLATES_ENTRIES, 0);

#[map]
static ROUTER_JOIN: PerCpuArray<JoinScratch> = PerCpuArray::with_max_entries(1, 0);

/// Go ABI integer register `i` (`router::GO_REGS` order); 0 for an index out of range.
#[inline(always)]
fn go_reg(ctx: &ProbeContext, i: u32) -> u64 {
    let r = ctx.regs;
    // Each register read at its own constant offset first: a context read at an offset
    // computed from `i` (what the compiler makes of a match on the fields) is refused by the
    // verifier ("dereference of modified ctx ptr").
    // SAFETY: a uprobe's context is the user pt_regs; direct reads at constant offsets.
    let v = unsafe {
        [
            core::ptr::read_volatile(&raw const (*r).rax),
            core::ptr::read_volatile(&raw const (*r).rbx),
            core::ptr::read_volatile(&raw const (*r).rcx),
            core::ptr::read_volatile(&raw const (*r).rdi),
            core::ptr::read_volatile(&raw const (*r).rsi),
            core::ptr::read_volatile(&raw const (*r).r8),
            core::ptr::read_volatile(&raw const (*r).r9),
            core::ptr::read_volatile(&raw const (*r).r10),
            core::ptr::read_volatile(&raw const (*r).r11),
        ]
    };
    // Compared one by one rather than indexed: a stack read at a variable offset is refused
    // by older verifiers.
    let mut out = 0;
    let mut j = 0;
    while j < v.len() {
        if i as usize == j {
            out = v[j];
        }
        j += 1;
    }
    out
}

#[inline(always)]
fn router_probe_impl(ctx: ProbeContext) -> u32 {
    // SAFETY: kernel ≥ 5.15 passes the attach cookie; userspace sets it (`cookie::encode`).
    let (slot, generation) = cookie::decode(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) });
    let Some(spec) = ROUTER_SPECS.get(slot) else {
        return 0;
    };
    // A stale link: its slot now holds another router's spec (of this binary, often: the
    // slots of a binary let go and attached again are handed out anew).
    if spec.kind == 0 || cookie::is_stale(generation, spec.valid) {
        return 0;
    }
    // SAFETY: a uprobe's context is the user pt_regs.
    let g = unsafe { (*ctx.regs).r14 };
    let k = InflightKey {
        tgid: (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        goroutine: g,
    };
    // Only for a request the net/http probes follow on this goroutine.
    // SAFETY: copied out.
    let Some(start_ns) = (unsafe { HTTP_INFLIGHT.get(&k) }).map(|e| e.start_ns) else {
        return 0;
    };
    let base = go_reg(&ctx, spec.reg_base);
    let (ptr, len) = match spec.kind {
        kind::REGS => {
            if spec.reg_guard != u32::MAX && go_reg(&ctx, spec.reg_guard) == 0 {
                return 0;
            }
            // The first template of the request wins (gin looks in other methods' trees
            // only to answer 405, with no template of its own).
            // SAFETY: copied out.
            if let Some(t) = unsafe { ROUTER_TEMPLATES.get(&k) }
                && t.start_ns == start_ns
            {
                return 0;
            }
            (base, go_reg(&ctx, spec.reg_len))
        }
        kind::DEREF => {
            let mut p = base;
            if spec.deref != NO_DEREF {
                p = read_user::<u64>(p + spec.deref as u64).unwrap_or(0);
            }
            if p == 0 {
                return 0;
            }
            let Some(s) = read_user::<[u64; 2]>(p + spec.string as u64) else {
                return 0;
            };
            (s[0], s[1])
        }
        kind::DEFERRED | kind::DEFERRED_JOIN => {
            if base == 0 {
                return 0;
            }
            let Some(id) = read_user::<u64>(base + spec.identity as u64) else {
                return 0;
            };
            (base, id)
        }
        _ => return 0,
    };
    if ptr == 0 {
        return 0;
    }
    let _ = ROUTER_TEMPLATES.insert(
        &k,
        &RouteTemplate {
            start_ns,
            ptr,
            len,
            spec: slot,
            generation: spec.valid,
        },
        BPF_ANY as u64,
    );
    0
}

uprobes! {
    router_probe, router_probe_m => router_probe_impl;
}

/// A value the compiler cannot reason about (a register moved onto itself), so the bounds
/// applied after it stay in the code, on the register the helper call uses.
#[inline(always)]
fn opaque(mut v: usize) -> usize {
    // SAFETY: a register move onto itself.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) v, options(pure, nomem, nostack)) };
    v
}

/// Copies `n` (≤ `ROUTE_MAX`) bytes of user memory at `src` into `dst`; false on a fault.
#[inline(always)]
fn copy_user(dst: *mut u8, n: usize, src: u64) -> bool {
    // Masked, then clamped, on the register passed: with the callers' clamp alone, Debian's
    // 6.1 verifier refused the size ("R2 min value is negative").
    let mut size = opaque(n) & 0xff;
    if size > ROUTE_MAX {
        size = ROUTE_MAX;
    }
    // SAFETY: the caller gives `dst` room for `ROUTE_MAX` bytes; the helper checks the source.
    size == 0
        || unsafe { generated::bpf_probe_read_user(dst.cast(), size as u32, src as *const _) } == 0
}

/// The template the router recorded for request `entry` of goroutine `k`, copied into
/// `route` (`ROUTE_MAX` bytes): its length, and whether it was cut. `None`: no router probe
/// fired for this request, or what it saw no longer belongs to it.
#[inline(always)]
pub(crate) fn take(k: &InflightKey, entry: &Inflight, route: *mut u8) -> Option<(u16, bool)> {
    // SAFETY: copied out before removal.
    let t = unsafe { ROUTER_TEMPLATES.get(k) }.copied()?;
    let _ = ROUTER_TEMPLATES.remove(k);
    if t.start_ns != entry.start_ns {
        return None;
    }
    let spec = ROUTER_SPECS.get(t.spec)?;
    if spec.valid != t.generation || spec.kind == 0 {
        return None;
    }
    match spec.kind {
        kind::REGS | kind::DEREF => copy_string(t.ptr, t.len, route),
        kind::DEFERRED => {
            let s = read_user::<[u64; 2]>(t.ptr + spec.string as u64)?;
            // Read after the template: a request that took the context over wrote its
            // identity before the template, so a template of that request is caught here.
            if read_user::<u64>(t.ptr + spec.identity as u64)? != t.len {
                return None;
            }
            copy_string(s[0], s[1], route)
        }
        kind::DEFERRED_JOIN => {
            let out = join(t.ptr + spec.string as u64, route);
            if read_user::<u64>(t.ptr + spec.identity as u64)? != t.len {
                return None;
            }
            out
        }
        _ => None,
    }
}

#[inline(always)]
fn copy_string(ptr: u64, len: u64, route: *mut u8) -> Option<(u16, bool)> {
    if ptr == 0 || len == 0 {
        return None;
    }
    let n = if len > ROUTE_MAX as u64 {
        ROUTE_MAX
    } else {
        len as usize
    };
    copy_user(route, n, ptr).then_some((n as u16, len > ROUTE_MAX as u64))
}

/// chi's `RoutePattern`: the `[]string` at `slice` joined, a mounted router's trailing `/*`
/// dropped where the next piece follows (chi's `/*/` → `/`), a trailing `/` (or `//`)
/// trimmed unless the pattern is `/`.
#[inline(always)]
fn join(slice: u64, route: *mut u8) -> Option<(u16, bool)> {
    let hdr = read_user::<[u64; 2]>(slice)?;
    let (items, count) = (hdr[0], hdr[1]);
    if items == 0 || count == 0 {
        return None;
    }
    let scratch = ROUTER_JOIN.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch; a uprobe program is not preempted by another on this CPU.
    let buf = unsafe { (*scratch).buf.as_mut_ptr() };
    let mut pos: usize = 0;
    let mut cut = false;
    for i in 0..JOIN_PIECES as u64 {
        if i >= count {
            break;
        }
        let piece = read_user::<[u64; 2]>(items + 16 * i)?;
        if pos >= 2 {
            // SAFETY: pos ≤ ROUTE_MAX, inside the 2 × ROUTE_MAX scratch.
            let tail = unsafe {
                [
                    *buf.add(opaque(pos - 2) & 0xff),
                    *buf.add(opaque(pos - 1) & 0xff),
                ]
            };
            if tail == *b"/*" {
                pos -= 2;
            }
        }
        let mut n = piece[1] as usize;
        if n > ROUTE_MAX {
            n = ROUTE_MAX;
        }
        let at = pos & (ROUTE_MAX - 1);
        // SAFETY: at < ROUTE_MAX and n ≤ ROUTE_MAX: inside the scratch.
        if !copy_user(unsafe { buf.add(at) }, n, piece[0]) {
            return None;
        }
        pos = at + n;
        if pos > ROUTE_MAX {
            pos = ROUTE_MAX;
            cut = true;
        }
    }
    if count > JOIN_PIECES as u64 {
        cut = true;
    }
    for _ in 0..2 {
        // SAFETY: as above. The mask behind `opaque`: LLVM drops a plain `& 0xff` it can prove
        // redundant after `pos > 1`, and 6.1's verifier, which lost that bound through a
        // spilled copy, refused the index as possibly negative.
        if pos > 1 && unsafe { *buf.add(opaque(pos - 1) & 0xff) } == b'/' {
            pos -= 1;
        }
    }
    if pos == 0 {
        return None;
    }
    // SAFETY: both hold ROUTE_MAX bytes; only `pos` of them are used.
    unsafe { core::ptr::copy_nonoverlapping(buf, route, ROUTE_MAX) };
    Some((pos as u16, cut))
}

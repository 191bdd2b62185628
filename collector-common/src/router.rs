//! Route templates from Go routers (gin, echo, chi, gorilla/mux), read by one extra uprobe per
//! request in the net/http uprobe mode and joined to the request by its goroutine.
//!
//! A router is described to the kernel by a [`RouterSpec`] (in `maps::ROUTER_SPECS`, slot =
//! the probe's attach cookie): where the template is at the probe point, as registers of Go's
//! ABI and struct offsets. The probe keeps what it found in `maps::ROUTER_TEMPLATES` under the
//! request's `InflightKey`; the request's end puts the template in its record.

use crate::{assert_layout, impl_pod};

/// Integer registers of Go's register ABI on amd64, in argument order: `RouterSpec` register
/// fields index this list.
pub const GO_REGS: [&str; 9] = ["rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11"];

/// `RouterSpec::kind`: how the template is found.
pub mod kind {
    /// The template string is in two registers at the probe (a function's result at its
    /// RETs: gin's `(*node).getValue` returns the route's `fullPath`); `reg_guard` must be
    /// non-zero (the matched handlers) for it to count. The first template of a request
    /// wins: gin looks in other methods' trees only to answer 405.
    pub const REGS: u32 = 1;
    /// `reg_base` points at a value the router keeps for its whole life (gorilla's
    /// `*Route`): the string is at `*(base + deref) + string`, read at the probe.
    pub const DEREF: u32 = 2;
    /// `reg_base` is a pooled per-request context the router fills after the probe (echo's
    /// context, whose `path` `Find` sets): the string at `base + string` is read when the
    /// request ends, and kept only if the word at `base + identity` is still the one read at
    /// the probe (the request it belongs to; a context already reused by another request
    /// changes it).
    pub const DEFERRED: u32 = 3;
    /// As `DEFERRED`, with a `[]string` at `base + string` whose pieces are joined as chi's
    /// `RoutePattern` joins them (a mounted router's `/*` dropped, a trailing `/` trimmed).
    pub const DEFERRED_JOIN: u32 = 4;
}

/// No dereference (`RouterSpec::deref`).
pub const NO_DEREF: u32 = u32::MAX;

/// Pieces of a chi route pattern joined (`kind::DEFERRED_JOIN`): mounts nested this deep.
pub const JOIN_PIECES: u32 = 4;

/// Where one router's probe finds the template (`maps::ROUTER_SPECS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterSpec {
    /// `kind`; 0: empty slot.
    pub kind: u32,
    /// Register (index in `GO_REGS`) holding the base pointer, or the string's pointer (`REGS`).
    pub reg_base: u32,
    /// `REGS`: the register holding the string's length.
    pub reg_len: u32,
    /// `REGS`: a register that must be non-zero; `u32::MAX`: none.
    pub reg_guard: u32,
    /// `DEREF`: offset of the pointer to follow from the base.
    pub deref: u32,
    /// Offset of the string (or `[]string`) from the base (after `deref`).
    pub string: u32,
    /// `DEFERRED*`: offset of the identity word in the context.
    pub identity: u32,
    /// New for each filling of the slot, never 0 (as `GoHttpOffsets::valid`): a template
    /// read under an older filling is not read with this one's offsets.
    pub valid: u32,
}
assert_layout!(RouterSpec, 32);

/// What a router probe found for the request in flight on a goroutine (`maps::ROUTER_TEMPLATES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteTemplate {
    /// `Inflight::start_ns` of the request: a template left by an earlier request of the
    /// goroutine is never taken for a later one.
    pub start_ns: u64,
    /// The template string (`REGS`, `DEREF`) or the router's context (`DEFERRED*`).
    pub ptr: u64,
    /// The string's length, or the context's identity word read at the probe.
    pub len: u64,
    /// `ROUTER_SPECS` slot, and its `valid` when read.
    pub spec: u32,
    pub generation: u32,
}
assert_layout!(RouteTemplate, 32);

/// Per-CPU room where chi's pieces are joined: a piece of up to `ROUTE_MAX` bytes may start
/// anywhere below `ROUTE_MAX`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinScratch {
    pub buf: [u8; 2 * crate::http::ROUTE_MAX],
}
assert_layout!(JoinScratch, 256);

impl_pod!(RouterSpec, RouteTemplate, JoinScratch);

/// Array of [`RouterSpec`], one slot per (instrumented executable, router in it).
pub const ROUTER_SPECS: &str = "ROUTER_SPECS";
pub const ROUTER_SPECS_SLOTS: u32 = 1024;
/// LRU hash `http::InflightKey` → [`RouteTemplate`]. LRU: a template whose request ends
/// without taking it (sampled out, untracked) is evicted, never fills it.
pub const ROUTER_TEMPLATES: &str = "ROUTER_TEMPLATES";
pub const ROUTER_TEMPLATES_ENTRIES: u32 = 16_384;

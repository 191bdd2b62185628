//! HTTP/1.x requests and responses read from the server socket's own packets, with no trap.
//!
//! Why here: a uprobe hit costs about 15 µs on the machines we measure on (an int3 plus a
//! single-step), three per request made a trivial Go server 4.7× slower. `cgroup_skb`
//! programs run inline in the kernel's own packet path (0.2 µs per packet measured), see
//! every pod's traffic whatever its language, and need nothing from the application.
//! Attached once, at the root of the cgroup2 hierarchy, they see every TCP socket on the host.
//!
//! What they parse: each connection is two byte streams, requests (ingress on a server socket)
//! and responses (egress). Each stream is framed exactly as HTTP/1.1 frames it (RFC 9112):
//! heads up to the empty line, bodies by `Content-Length` or chunked coding (chunk-size lines
//! and trailers parsed), no body for HEAD requests and 1xx/204/304 responses, interim 1xx
//! responses (`100 Continue`) that do not answer the request, 101 and CONNECT ending the HTTP
//! part. Requests wait in a small per-connection queue (pipelining) until their response head
//! is counted and their response body ends.
//!
//! Bytes are parsed once, in sequence order: `next_seq` is the first byte not yet parsed, so a
//! retransmitted segment (ingress duplicates, egress retransmits) is skipped, and a segment
//! ahead of it (a hole: loss or reordering) is skipped over only where the bytes in the hole do
//! not need reading (inside a body of known length); anywhere else the stream is lost and
//! resynchronised at the next segment that starts a message, and the loss is charged to the
//! connection's owner (`HttpCounts::lost`). Connections that predate the collector are picked
//! up at their next request the same way.
//!
//! Cost control: each invocation reads at most `STEPS` lines (scanning windows of `WINDOW`
//! bytes), then tail-calls itself for the rest of the segment; bodies are skipped by
//! arithmetic, never read. Records (method, target, status, duration) are emitted for a sample
//! of requests without waking the reader; counts are exact in `HTTP_COUNTS`.

use core::{ffi::c_void, ptr::NonNull};

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{
            bpf_get_socket_cookie, bpf_loop, bpf_sk_fullsock, bpf_sk_storage_delete,
            bpf_sk_storage_get, bpf_skb_cgroup_id, bpf_skb_load_bytes,
        },
    },
    macros::cgroup_skb,
    maps::ProgramArray,
    programs::SkBuffContext,
};
use collector_common::{
    event::{EventHeader, EventKind},
    http::{
        HttpEvent, METHOD_MAX, ROUTE_MAX, flags,
        unseen::{self, UnseenEvent, UnseenKey},
        wire::{
            LINE_MAX, METHOD_CONNECT, METHOD_HEAD, PIPELINE, TARGET_LINE, Target, TargetKey,
            WINDOW, WireConn, WireHalf, WireScratch, WireSlot, conn, msg, slot, state,
        },
    },
    maps::{KernelDrop, WIRE_PROG_ACTION, WIRE_PROG_EGRESS, WIRE_PROG_INGRESS, WIRE_SLOTS},
    tcp::OwnerKey,
};

use crate::{
    http::count,
    klog::{self, Level, klog},
    maps::{
        EVENTS, HTTP_SAMPLING, SOCK_OWNERS, WIRE_BUSY, WIRE_CONNS, WIRE_NEW_CONN, WIRE_NEW_TARGET,
        WIRE_PROGS_RX, WIRE_PROGS_TX, WIRE_SCRATCH, WIRE_TARGETS, WIRE_UNSEEN, count_drop,
    },
};

/// Steps per invocation before tail-calling: a step reads one line that matters (the start
/// line, `Content-Length`, `Transfer-Encoding`, the empty line; other header lines are
/// skipped inside the scan) or skips body bytes. Steps are `bpf_loop` iterations, so the
/// verifier checks one step's code, not `STEPS` copies of it: written out as a loop in the
/// program, 2 steps were already past its 1M-instruction limit, and every line that matters
/// cost an invocation (a tail call, the segment's headers read again).
const STEPS: u32 = 8;
/// Iterations of the line scan per step: each reads a word or stops at a line's end, so
/// `WINDOW / 8` words plus as many header lines as end in them (a step that runs out resumes
/// where it stopped).
const SCAN_ITERATIONS: u32 = WINDOW as u32 / 8 * 2;
/// Invocations for one segment: 1 + tail calls (the kernel allows 33).
const MAX_CALLS: u32 = 32;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Requests (packets arriving at a server socket).
    Rx,
    /// Responses (packets a server socket sends).
    Tx,
}

impl Dir {
    const fn prog(self) -> u32 {
        match self {
            Dir::Rx => WIRE_PROG_INGRESS,
            Dir::Tx => WIRE_PROG_EGRESS,
        }
    }

    /// The stream's messages, as the kernel's log lines name them.
    const fn messages(self) -> &'static str {
        match self {
            Dir::Rx => "request",
            Dir::Tx => "response",
        }
    }

    fn progs(self) -> &'static ProgramArray {
        match self {
            Dir::Rx => &WIRE_PROGS_RX,
            Dir::Tx => &WIRE_PROGS_TX,
        }
    }
}

/// Where the TCP payload of this packet is.
struct Segment {
    cookie: u64,
    seq: u32,
    /// Offset of the payload from the network header.
    off: u32,
    len: u32,
    flags: u8,
    /// This parse's scratch slot (`enter`).
    slot: u32,
}

#[inline(always)]
fn skb_ptr(ctx: &SkBuffContext) -> *mut __sk_buff {
    ctx.as_ptr().cast()
}

#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, off: u32) -> Option<[u8; N]> {
    // Uninitialised: the helper fills all N bytes or fails (a zeroed array would be a memset
    // call, a BPF-to-BPF call in every program).
    let mut buf = core::mem::MaybeUninit::<[u8; N]>::uninit();
    // SAFETY: the helper bounds-checks against the packet and writes exactly N bytes on success.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr() as *const _,
            off,
            buf.as_mut_ptr().cast(),
            N as u32,
        )
    };
    // SAFETY: initialised by the successful helper call.
    (rc == 0).then(|| unsafe { buf.assume_init() })
}

/// IPv4 or IPv6 (no extension headers) carrying TCP; `skb->data` is the network header.
#[inline(always)]
fn segment(ctx: &SkBuffContext) -> Option<Segment> {
    let skb = skb_ptr(ctx);
    // SAFETY: reads of the program's own context.
    let (proto, len) = unsafe { ((*skb).protocol, (*skb).len) };
    if let Some(direct) = segment_in_place(skb, proto, len) {
        return direct;
    }
    let l4 = if proto == u32::from(ETH_P_IP.to_be()) {
        let ip = load::<20>(ctx, 0)?;
        if ip[9] != IPPROTO_TCP {
            return None;
        }
        // Fragments never carry HTTP we could frame: skip them (offset or more-fragments).
        if (u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff) != 0 {
            return None;
        }
        u32::from(ip[0] & 0x0f) * 4
    } else if proto == u32::from(ETH_P_IPV6.to_be()) {
        let ip = load::<8>(ctx, 0)?;
        if ip[6] != IPPROTO_TCP {
            return None;
        }
        40
    } else {
        return None;
    };
    let tcp = load::<14>(ctx, l4)?;
    let off = l4 + u32::from(tcp[12] >> 4) * 4;
    if off > len {
        return None;
    }
    Some(Segment {
        // Read by `parse` once the segment is known to be worth parsing (`cookie`).
        cookie: 0,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        off,
        len: len - off,
        flags: tcp[13],
        slot: 0,
    })
}

/// `segment` from the headers read in place, where they are in the packet's linear part
/// (always, in practice: the stack pulls them there before these hooks): two
/// `bpf_skb_load_bytes` calls less in every run. None: not linear, read them the slow way.
#[inline(always)]
fn segment_in_place(skb: *mut __sk_buff, proto: u32, len: u32) -> Option<Option<Segment>> {
    // SAFETY: reads of the program's own context.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let l4 = if proto == u32::from(ETH_P_IP.to_be()) {
        if data + 20 > end {
            return None;
        }
        let ip = data as *const u8;
        // SAFETY: inside [data, data + 20), checked against `data_end` above.
        let (vihl, frag, p) = unsafe {
            (
                *ip,
                core::ptr::read_unaligned(ip.add(6).cast::<u16>()),
                *ip.add(9),
            )
        };
        // Fragments never carry HTTP we could frame (see `segment`).
        if p != IPPROTO_TCP || u16::from_be(frag) & 0x3fff != 0 {
            return Some(None);
        }
        usize::from(vihl & 0x0f) * 4
    } else if proto == u32::from(ETH_P_IPV6.to_be()) {
        if data + 40 > end {
            return None;
        }
        // SAFETY: inside [data, data + 40), checked above.
        if unsafe { *(data as *const u8).add(6) } != IPPROTO_TCP {
            return Some(None);
        }
        40
    } else {
        return Some(None);
    };
    let tcp = data + l4;
    if tcp + 14 > end {
        return None;
    }
    let tcp = tcp as *const u8;
    // SAFETY: inside [tcp, tcp + 14), checked above.
    let (seq, doff, flags) = unsafe {
        (
            u32::from_be(core::ptr::read_unaligned(tcp.add(4).cast::<u32>())),
            *tcp.add(12),
            *tcp.add(13),
        )
    };
    let off = l4 as u32 + u32::from(doff >> 4) * 4;
    if off > len {
        return Some(None);
    }
    Some(Some(Segment {
        cookie: 0,
        seq,
        off,
        len: len - off,
        flags,
        slot: 0,
    }))
}

#[inline(always)]
fn cookie(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the helper accepts the skb context in cgroup_skb programs.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The socket's owner: its cgroup, and the process last seen sending on it (recorded by the
/// TCP send hook in `SOCK_OWNERS`), 0 until then.
#[inline(always)]
fn owner(ctx: &SkBuffContext) -> OwnerKey {
    let skb = skb_ptr(ctx);
    // SAFETY: `sk` is the socket the packet belongs to; its address is the key the TCP hooks
    // use. Only compared and used as a number here, never dereferenced.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk } as u64;
    // SAFETY: the helper accepts the skb context in cgroup_skb programs.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    let mut key = OwnerKey {
        cgroup_id,
        tgid: 0,
        _pad: 0,
    };
    if sk != 0 {
        // SAFETY: value copied out at once.
        if let Some(o) = unsafe { SOCK_OWNERS.get(&sk) } {
            key.tgid = o.tgid;
            if key.cgroup_id <= 1 && o.cgroup_id > key.cgroup_id {
                key.cgroup_id = o.cgroup_id;
            }
        }
    }
    key
}

/// Whether the first `n` bytes of a segment can start a request line: an upper-case method
/// token of 3–7 letters and a space, or (a segment shorter than that, as a client writing
/// "GET " on its own sends) only upper-case letters so far. Whether it really is HTTP/1.x is
/// decided at the end of the line (`on_line`: it must end with the version).
#[inline(always)]
fn looks_like_request(p: &[u8; 8], n: usize) -> bool {
    // HTTP/2's connection preface ("PRI * HTTP/2.0") looks like one: h2c is not parsed here.
    if *p == *b"PRI * HT" {
        return false;
    }
    let mut i = 0;
    while i < 8 {
        if i >= n {
            return i > 0;
        }
        let b = p[i];
        if b == b' ' {
            return i >= 3;
        }
        if !b.is_ascii_uppercase() {
            return false;
        }
        i += 1;
    }
    false
}

/// Up to the first 8 bytes of the payload, and how many there are.
#[inline(always)]
fn first_bytes(ctx: &SkBuffContext, seg: &Segment) -> Option<([u8; 8], usize)> {
    if seg.len == 0 {
        return None;
    }
    let n = if seg.len < 8 { seg.len as usize } else { 8 };
    let mut buf = [0u8; 8];
    // In [1, 8] in a form the verifier can follow.
    let k = (opaque(n - 1) & 7) + 1;
    // SAFETY: `buf` has 8 bytes; the helper bounds-checks the packet.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr() as *const _,
            seg.off,
            buf.as_mut_ptr().cast(),
            k as u32,
        )
    };
    (rc == 0).then_some((buf, k))
}

/// What a segment arriving at a socket the parser does not follow starts with, when it is a
/// server's traffic the parser cannot read (`unseen`): a TLS record carrying a ClientHello
/// (content type 22, version 3.x, handshake type 1: only a server receives one), or h2c's
/// connection preface. 0 otherwise.
#[inline(always)]
fn unseen_kind(p: &[u8; 8], n: usize) -> u8 {
    if n >= 6 && p[0] == 0x16 && p[1] == 0x03 && p[2] <= 0x04 && p[5] == 0x01 {
        return unseen::TLS;
    }
    if n == 8 && *p == *b"PRI * HT" {
        return unseen::H2C;
    }
    0
}

/// Tells userspace (once per `unseen::REPEAT_NS` for each cgroup, local port and kind) that a
/// server socket speaks what the parser cannot read, so the Go servers among them get uprobes
/// for those requests only. The local port is the server's: userspace finds the process that
/// listens on it. Runs once per such connection (its first segment), never per request.
#[inline(always)]
fn http_wire_unseen(ctx: &SkBuffContext, kind: u8) {
    let Some(sk) = full_sock(ctx) else {
        return;
    };
    // SAFETY: a full socket the verifier knows as such; `src_port` is in host order.
    let port = unsafe { (*sk).src_port } as u16;
    let key = UnseenKey {
        // SAFETY: the helper accepts the skb context in cgroup_skb programs.
        cgroup_id: unsafe { bpf_skb_cgroup_id(skb_ptr(ctx)) },
        port,
        kind,
        _pad: [0; 5],
    };
    // SAFETY: plain helper.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: value copied out; a racing update only tells userspace twice.
    if let Some(last) = unsafe { WIRE_UNSEEN.get(&key) }
        && now.wrapping_sub(*last) < unseen::REPEAT_NS
    {
        return;
    }
    let _ = WIRE_UNSEEN.insert(&key, &now, 0);
    let Some(mut entry) = EVENTS.reserve::<UnseenEvent>(0) else {
        count_drop(KernelDrop::RingReserve);
        // Told again with the next such connection.
        let _ = WIRE_UNSEEN.remove(&key);
        return;
    };
    entry.write(UnseenEvent {
        header: EventHeader::new(EventKind::Unseen, now),
        key,
    });
    // Rare: wake the reader at once, so the uprobes are attached before many requests pass.
    entry.submit(0);
}

/// Whether the first `n` bytes of a segment can start a status line: "HTTP/1.", or (a server
/// writing its status line in pieces) a shorter start of it. The whole line is checked when
/// it ends (`on_line`), where anything else is a desync, counted.
#[inline(always)]
fn looks_like_response(p: &[u8; 8], n: usize) -> bool {
    let want = b"HTTP/1.";
    let mut i = 0;
    while i < 7 {
        if i >= n {
            return i > 0;
        }
        if p[i] != want[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The status of a status line's first 12 bytes ("HTTP/1.x DDD"); None unless it is one.
#[inline(always)]
fn status_of(p: &[u8; 12]) -> Option<u16> {
    if p[..7] != *b"HTTP/1." || p[8] != b' ' {
        return None;
    }
    let (a, b, d) = (p[9], p[10], p[11]);
    if !a.is_ascii_digit() || !b.is_ascii_digit() || !d.is_ascii_digit() {
        return None;
    }
    Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(d - b'0'))
}

/// The status of a status line that starts at `off`, read straight from the packet.
#[inline(always)]
fn status_at(ctx: &SkBuffContext, off: u32) -> Option<u16> {
    status_of(&load::<12>(ctx, off)?)
}

/// Method code (index in `METHODS`) of a start line whose method token is `n` bytes long:
/// compared as little-endian words, without a loop (the verifier explores this once per step).
#[inline(always)]
fn method_code(line: &[u8; LINE_MAX], n: usize) -> u8 {
    let w = word_at(line, 0);
    let word = |m: &[u8; 8]| u64::from_le_bytes(*m);
    let masked = |k: usize| {
        if k >= 8 {
            w
        } else {
            w & ((1u64 << (k * 8)) - 1)
        }
    };
    match n {
        3 if masked(4) == word(b"GET \0\0\0\0") => 1,
        3 if masked(4) == word(b"PUT \0\0\0\0") => 4,
        4 if masked(5) == word(b"HEAD \0\0\0") => METHOD_HEAD,
        4 if masked(5) == word(b"POST \0\0\0") => 3,
        5 if masked(6) == word(b"TRACE \0\0") => 8,
        5 if masked(6) == word(b"PATCH \0\0") => 9,
        6 if masked(7) == word(b"DELETE \0") => 5,
        7 if w == word(b"CONNECT ") => METHOD_CONNECT,
        7 if w == word(b"OPTIONS ") => 7,
        _ => 0,
    }
}

/// `v`, with everything the compiler knows about it forgotten. LLVM drops a mask it can prove
/// redundant and then bounds-checks another copy of the register, which the verifier cannot
/// connect to the access; masking an opaque value keeps check and access on one register.
#[inline(always)]
fn opaque(mut v: usize) -> usize {
    // SAFETY: a register move onto itself (an empty template leaves a duplicate line-info
    // entry the kernel rejects).
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) v, options(pure, nomem, nostack)) };
    v
}

/// The eight bytes at `p` as one 8-byte load, whatever `p`'s alignment.
///
/// LLVM's BPF target assumes no misaligned access: `read_unaligned`, or a `u64` built from a
/// byte array, compiles to eight byte loads and fourteen shifts and ORs (22 instructions,
/// twice in every iteration of the line scan). The kernel's verifier refuses a misaligned
/// access only where it is strict (the stack, or an architecture without efficient misaligned
/// access); x86-64 and arm64 map values are not, so one load does it. Only for map memory.
///
/// # Safety
/// `p..p + 8` must lie in one map value.
#[inline(always)]
unsafe fn word_load(p: *const u8) -> u64 {
    let v: u64;
    // SAFETY: the caller's; a single `ldxdw`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({p} + 0)",
            v = out(reg) v,
            p = in(reg) p,
            options(readonly, nostack),
        )
    };
    v
}

/// `v` stored at `p` as one 8-byte store (see `word_load`; one `stxdw` instead of eight byte
/// stores and their shifts).
///
/// # Safety
/// `p..p + 8` must lie in one map value.
#[inline(always)]
unsafe fn word_store(p: *mut u8, v: u64) {
    // SAFETY: the caller's; a single `stxdw`.
    unsafe {
        core::arch::asm!(
            "*(u64 *)({p} + 0) = {v}",
            v = in(reg) v,
            p = in(reg) p,
            options(nostack),
        )
    };
}

/// Byte `i` of a kept line, masked so that the verifier can prove the access in bounds.
#[inline(always)]
fn at(line: &[u8; LINE_MAX], i: usize) -> u8 {
    line[opaque(i) & (LINE_MAX - 1)]
}

#[inline(always)]
fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b | 0x20 } else { b }
}

/// The kept line's bytes `i..i + 8` as a little-endian word (`i` ≤ `LINE_MAX` − 8; a
/// constant at every call). `line` is always a connection's `WireHalf::line`, map memory.
#[inline(always)]
fn word_at(line: &[u8; LINE_MAX], i: usize) -> u64 {
    let i = if i > LINE_MAX - 8 { LINE_MAX - 8 } else { i };
    // SAFETY: `i + 8 <= LINE_MAX`, inside `line` (map memory, see above).
    unsafe { word_load(line.as_ptr().add(i)) }
}

/// Whether the kept line starts with `name` (lower case, with its colon; 9–24 bytes),
/// case-insensitively: whole words OR-ed with 0x20 (letters fold to lower case; '-' and ':'
/// already have the bit), so no loop for the verifier to explore.
#[inline(always)]
fn header_is(line: &[u8; LINE_MAX], len: usize, name: &[u8]) -> bool {
    if len < name.len() || name.len() > 24 || name.len() < 9 {
        return false;
    }
    let mut want = [0u8; 24];
    want[..name.len()].copy_from_slice(name);
    let fold = 0x2020_2020_2020_2020u64;
    let mut k = 0;
    while k < 3 {
        let from = k * 8;
        let n = name.len().saturating_sub(from).min(8);
        let mask = if n >= 8 {
            u64::MAX
        } else {
            (1u64 << (n * 8)) - 1
        };
        let w = word_at(line, from) | fold;
        let m = u64::from_le_bytes([
            want[from],
            want[from + 1],
            want[from + 2],
            want[from + 3],
            want[from + 4],
            want[from + 5],
            want[from + 6],
            want[from + 7],
        ]) | fold;
        if (w ^ m) & mask != 0 {
            return false;
        }
        k += 1;
    }
    true
}

/// Writes map memory so that the compiler never forwards the value to a later read: what the
/// verifier then reads back is an unknown value, which is the point (see `steps`).
#[inline(always)]
fn store<T: Copy>(field: &mut T, v: T) {
    // SAFETY: a plain, aligned write through a valid reference.
    unsafe { core::ptr::write_volatile(field, v) }
}

#[inline(always)]
fn fetch<T: Copy>(field: &T) -> T {
    // SAFETY: a plain, aligned read through a valid reference.
    unsafe { core::ptr::read_volatile(field) }
}

/// Decimal value after `from` (optional whitespace first); None if malformed or too long.
/// The running value lives in `acc` (map memory) so that the verifier does not follow one
/// path per partial value.
#[inline(always)]
fn decimal(line: &[u8; LINE_MAX], from: usize, len: usize, acc: &mut u64) -> Option<u64> {
    let mut i = from;
    while i < len && i < LINE_MAX && matches!(at(line, i), b' ' | b'\t') {
        i += 1;
    }
    store(acc, 0);
    let start = i;
    while i < len && i < LINE_MAX {
        let b = at(line, i);
        if b.is_ascii_digit() {
            if i - start == 15 {
                return None;
            }
            store(acc, fetch(acc) * 10 + u64::from(b - b'0'));
        } else if b == b' ' || b == b'\t' {
            break;
        } else {
            return None;
        }
        i += 1;
    }
    (i > start).then(|| fetch(acc))
}

/// Chunk size (hex, extensions after ';' ignored); None if malformed or over 2^32.
#[inline(always)]
fn chunk_size(line: &[u8; LINE_MAX], len: usize, acc: &mut u64) -> Option<u32> {
    store(acc, 0);
    let mut i = 0;
    while i < len && i < LINE_MAX {
        let b = at(line, i);
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b';' | b' ' | b'\t' => break,
            _ => return None,
        };
        if i == 8 {
            return None;
        }
        store(acc, (fetch(acc) << 4) | u64::from(d));
        i += 1;
    }
    let v = fetch(acc);
    (i > 0 && v < u64::from(u32::MAX) - 2).then_some(v as u32)
}

/// Trailing whitespace a `Transfer-Encoding` value may carry before we give up on it.
const TRAILING_WS: usize = 4;

/// Whether a `Transfer-Encoding` value (after the colon) ends with `chunked`; None when it ends
/// in more whitespace than we strip (a framing we cannot tell: the stream resyncs).
///
/// Every loop has a constant bound: with `while end > 0 && …` on the line length, Debian's
/// 6.1 verifier lost the bound of `end` and walked the loop 8,192 times ("The sequence of
/// 8193 jumps is too complex"), refusing the egress program.
#[inline(always)]
fn ends_chunked(line: &[u8; LINE_MAX], len: usize) -> Option<bool> {
    let mut end = if len < LINE_MAX { len } else { LINE_MAX };
    let mut k = 0;
    while k < TRAILING_WS {
        if end > 0 && matches!(at(line, end - 1), b' ' | b'\t') {
            end -= 1;
        }
        k += 1;
    }
    if end > 0 && matches!(at(line, end - 1), b' ' | b'\t') {
        return None;
    }
    // "transfer-encoding:" is 18 bytes; the value needs at least "chunked".
    if end < 18 + 7 {
        return Some(false);
    }
    let word = b"chunked";
    let mut i = 0;
    while i < 7 {
        if lower(at(line, end - 7 + i)) != word[i] {
            return Some(false);
        }
        i += 1;
    }
    Some(true)
}

/// Charges loss to the connection's owner and resynchronises both directions: the queue can
/// no longer be paired with the responses, so its requests are dropped (counted as lost).
/// Returns how many were charged (for the kernel's log line).
#[inline(always)]
fn desync(c: &mut WireConn, why: KernelDrop) -> u64 {
    count_drop(why);
    let pending = c.head.wrapping_sub(c.answered);
    let lost = 1 + u64::from(if pending <= PIPELINE {
        pending
    } else {
        PIPELINE
    });
    wire_count(&c.owner, Charge::Lost, lost);
    c.rx.state = state::UNSYNCED;
    c.tx.state = state::UNSYNCED;
    // The egress side owns `tail`/`answered`; ingress may write them here only because a desync
    // discards the queue on both sides: the worst a race does is pair one response wrongly.
    c.answered = c.head;
    c.tail = c.head;
    lost
}

#[inline(always)]
fn sampled() -> bool {
    let every = HTTP_SAMPLING.get(0).copied().unwrap_or(1);
    // SAFETY: plain helper.
    every <= 1 || unsafe { bpf_get_prandom_u32() } % every == 0
}

/// At the end of a request's start line: decides whether the request is sampled and, if so,
/// keeps its raw target until the response ends. Straight-line copies of fixed size, no
/// scanning (userspace finds where the target ends).
#[inline(always)]
fn remember_target(ctx: &SkBuffContext, c: &mut WireConn, seg: &Segment, n: usize, len: usize) {
    if !sampled() {
        return;
    }
    // Alone in the queue: every earlier response has been read to its end (`tail` is written
    // by egress after it read the inline target), so the connection's own slot is free.
    let inline = c.head == fetch(&c.tail);
    let t = if inline {
        &raw mut c.target
    } else {
        // Built in per-CPU memory: it does not fit the stack beside the rest.
        match WIRE_NEW_TARGET.get_ptr_mut(seg.slot) {
            Some(t) => t,
            None => return,
        }
    };
    // SAFETY: the connection's own storage, or this CPU's slot, only used within this call.
    let t = unsafe { &mut *t };
    let line_start = c.rx.head_seq.wrapping_sub(seg.seq);
    let mut ok = false;
    if line_start < seg.len {
        // Straight from the packet: ROUTE_MAX bytes after "METHOD " (fewer at its end).
        let at = seg.off + line_start + n as u32 + 1;
        let avail = (seg.off + seg.len).saturating_sub(at) as usize;
        if avail > 0 {
            let want = if avail < ROUTE_MAX { avail } else { ROUTE_MAX };
            // In [1, ROUTE_MAX] in a form the verifier can follow (see `opaque`).
            let want = (opaque(want - 1) & (ROUTE_MAX - 1)) + 1;
            // SAFETY: `bytes` has ROUTE_MAX bytes; the helper bounds-checks the packet.
            ok = unsafe {
                bpf_skb_load_bytes(
                    ctx.as_ptr() as *const _,
                    at,
                    t.bytes.as_mut_ptr().cast(),
                    want as u32,
                )
            } == 0;
            t.len = want as u16;
            t.flags = 0;
        }
    } else {
        // The line began in an earlier segment: only its kept start is known.
        let (dst, _) = t.bytes.split_at_mut(LINE_MAX);
        dst.copy_from_slice(&c.rx.line);
        t.len = if len < LINE_MAX { len } else { LINE_MAX } as u16;
        t.flags = TARGET_LINE;
        ok = true;
    }
    if !ok {
        return;
    }
    if inline {
        c.rx.msg |= msg::SAMPLED | msg::INLINE_TARGET;
        return;
    }
    let key = TargetKey {
        cookie: seg.cookie,
        index: c.head,
        _pad: 0,
    };
    if WIRE_TARGETS.insert(&key, t, 0).is_ok() {
        c.rx.msg |= msg::SAMPLED;
    }
}

/// The request whose head was just read joins the queue.
#[inline(always)]
fn push_request(c: &mut WireConn) {
    if c.head.wrapping_sub(c.tail) >= PIPELINE {
        // More pipelined requests than we track: counted when answered, but no record.
        c.head = c.head.wrapping_add(1);
        return;
    }
    let mut f = 0;
    if c.rx.method == METHOD_HEAD {
        f |= slot::HEAD_METHOD;
    }
    if c.rx.msg & msg::SAMPLED != 0 {
        f |= slot::SAMPLED;
        if c.rx.msg & msg::INLINE_TARGET != 0 {
            f |= slot::INLINE_TARGET;
        }
    }
    let i = (c.head % PIPELINE) as usize;
    if let Some(s) = c.slots.get_mut(i) {
        // Field by field: a whole `WireSlot` written zeroes its padding with a memset call
        // (a subprogram the verifier walks again in every state); the padding is never read.
        s.start_ns = c.rx.start_ns;
        s.method = c.rx.method;
        s.flags = f;
        s.index = c.head;
    }
    c.head = c.head.wrapping_add(1);
}

/// The response head of the oldest unanswered request was read: count it.
#[inline(always)]
fn answer(c: &mut WireConn, status: u16) {
    // Inline, not `wire_count`: this runs for every response, and a call costs several ns
    // here (return thunks); the action program holds this one copy of `count`.
    let class = (status / 100) as usize;
    count(&c.owner, |h| {
        h.requests += 1;
        if (1..=5).contains(&class) {
            h.by_class[class - 1] += 1;
        }
    });
    if c.answered != c.head {
        c.answered = c.answered.wrapping_add(1);
    }
}

/// The body of the oldest answered response ended: emit its record if sampled.
#[inline(always)]
fn finish_response(c: &mut WireConn, cookie: u64, status: u16) {
    if c.tail == c.answered {
        wire_count(&c.owner, Charge::Unrecorded, 1);
        return;
    }
    let index = c.tail;
    let Some(s) = c.slots.get((index % PIPELINE) as usize).copied() else {
        return;
    };
    if s.index != index {
        // Queued behind `PIPELINE` others: no slot of its own (the one read is an earlier
        // request's), so no record; its target, if one was kept, goes.
        store(&mut c.tail, index.wrapping_add(1));
        wire_count(&c.owner, Charge::Unrecorded, 1);
        let key = TargetKey {
            cookie,
            index,
            _pad: 0,
        };
        let _ = WIRE_TARGETS.remove(&key);
        return;
    }
    if s.flags & slot::SAMPLED == 0 {
        store(&mut c.tail, index.wrapping_add(1));
        wire_count(&c.owner, Charge::Unrecorded, 1);
        return;
    }
    if s.flags & slot::INLINE_TARGET != 0 {
        let target = &raw const c.target;
        emit_record(c, target, s, status);
        // Only after the target was read: ingress writes a new one while `head == tail`.
        store(&mut c.tail, index.wrapping_add(1));
        return;
    }
    store(&mut c.tail, index.wrapping_add(1));
    let key = TargetKey {
        cookie,
        index,
        _pad: 0,
    };
    let Some(target) = WIRE_TARGETS.get_ptr(&key) else {
        wire_count(&c.owner, Charge::Unrecorded, 1);
        return;
    };
    emit_record(c, target, s, status);
    let _ = WIRE_TARGETS.remove(&key);
}

/// The record of one sampled request (counted as unrecorded when the ring is full).
#[inline(always)]
fn emit_record(c: &WireConn, target: *const Target, s: WireSlot, status: u16) {
    let Some(mut entry) = EVENTS.reserve::<HttpEvent>(0) else {
        count_drop(KernelDrop::RecordReserve);
        wire_count(&c.owner, Charge::Unrecorded, 1);
        if klog::enabled(Level::Warn) {
            http_wire_log_reserve_failed(c.owner.cgroup_id, u64::from(c.owner.tgid));
        }
        return;
    };
    // SAFETY: plain helper.
    let now = unsafe { bpf_ktime_get_ns() };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved, exclusively owned record and every field is written; the
    // target is live (the connection's storage, or an element read before its removal).
    unsafe {
        let mut f = flags::WIRE;
        if (*target).flags & TARGET_LINE != 0 {
            f |= flags::WIRE_LINE;
        }
        (*ev).header = EventHeader::new(EventKind::Http, now);
        (*ev).tgid = c.owner.tgid;
        (*ev).status = status;
        (*ev).flags = f;
        (*ev).cgroup_id = c.owner.cgroup_id;
        (*ev).duration_ns = now.saturating_sub(s.start_ns);
        (*ev).method = [0; METHOD_MAX];
        (*ev).method_len = 0;
        (*ev).method_code = s.method;
        (*ev).route_len = (*target).len & (ROUTE_MAX as u16 * 2 - 1);
        (*ev)._pad2 = 0;
        // Word by word: a plain array copy becomes a memmove call.
        let src = (*target).bytes.as_ptr().cast::<u64>();
        let dst = (*ev).route.as_mut_ptr().cast::<u64>();
        let mut k = 0;
        while k < ROUTE_MAX / 8 {
            dst.add(k).write_unaligned(src.add(k).read_unaligned());
            k += 1;
        }
    }
    entry.submit(crate::emit::record_wake_flags());
}

/// What a complete line means for the stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    /// More lines follow.
    More,
    /// A request's start line: the method token's length and the line's (CR excluded).
    RequestLine(usize, usize),
    /// The empty line ending a head.
    HeadDone,
    /// The empty line ending a chunked message's trailers.
    MessageDone,
    /// Not HTTP/1.x as we can frame it.
    Bad,
    /// The connection does not speak HTTP/1.x at all: stop following it, nothing lost.
    NotHttp,
}

#[inline(always)]
fn half(c: &mut WireConn, dir: Dir) -> &mut WireHalf {
    match dir {
        Dir::Rx => &mut c.rx,
        Dir::Tx => &mut c.tx,
    }
}

/// A `Line` in an integer, as `http_wire_scan` returns it (0 is "no line ended"): the kind
/// in the low byte, a request line's method length and line length in the next two (both
/// under 256: the method token is shorter than 8 bytes, `line_len` saturates at 255).
#[inline(always)]
fn line_code(line: Line) -> i64 {
    match line {
        Line::More => 1,
        Line::RequestLine(n, len) => 2 | ((n as i64 & 0xff) << 8) | ((len as i64 & 0xff) << 16),
        Line::HeadDone => 3,
        Line::MessageDone => 4,
        Line::Bad => 5,
        Line::NotHttp => 6,
    }
}

#[inline(always)]
fn line_of(r: i64) -> Line {
    match r & 0xff {
        2 => Line::RequestLine(((r >> 8) & 0xff) as usize, ((r >> 16) & 0xff) as usize),
        3 => Line::HeadDone,
        4 => Line::MessageDone,
        5 => Line::Bad,
        6 => Line::NotHttp,
        _ => Line::More,
    }
}

/// One line of a head, a chunk-size line or a trailer was read completely (`line_len` bytes,
/// of which the first `LINE_MAX` are kept). Only classifies.
#[inline(always)]
fn on_line(h: &mut WireHalf, dir: Dir, acc: &mut u64) -> Line {
    let mut len = h.line_len as usize;
    let long = h.msg & msg::LONG_LINE != 0;
    if !long && len > 0 && len <= LINE_MAX && at(&h.line, len - 1) == b'\r' {
        len -= 1;
    }
    h.line_len = 0;
    h.msg &= !msg::LONG_LINE;
    if h.state == state::CHUNK_SIZE {
        if long {
            return Line::Bad;
        }
        return match chunk_size(&h.line, len, acc) {
            Some(0) => {
                h.state = state::TRAILER;
                Line::More
            }
            Some(n) => {
                h.state = state::CHUNK_DATA;
                h.remaining = n + 2;
                Line::More
            }
            None => Line::Bad,
        };
    }
    if h.state == state::TRAILER {
        return if len == 0 && !long {
            Line::MessageDone
        } else {
            Line::More
        };
    }
    if h.first_line != 0 {
        h.first_line = 0;
        return match dir {
            Dir::Rx => {
                let mut n = 0usize;
                while n < 8 && at(&h.line, n) != b' ' {
                    n += 1;
                }
                if n == 0 || n >= 8 || (!long && n >= len) {
                    return Line::NotHttp;
                }
                // It is HTTP/1.x only if the line ends with the version ("SET k v" from a
                // Redis client, "EHLO x" to an SMTP server start the same way). A line longer
                // than we keep is given the benefit of the doubt.
                if !long {
                    if len < n + 10 {
                        return Line::NotHttp;
                    }
                    let v = len - 8;
                    let ok = at(&h.line, v) == b'H'
                        && at(&h.line, v + 1) == b'T'
                        && at(&h.line, v + 2) == b'T'
                        && at(&h.line, v + 3) == b'P'
                        && at(&h.line, v + 4) == b'/'
                        && at(&h.line, v + 5) == b'1'
                        && at(&h.line, v + 6) == b'.'
                        && at(&h.line, v - 1) == b' ';
                    if !ok {
                        return Line::NotHttp;
                    }
                }
                h.method = method_code(&h.line, n);
                Line::RequestLine(n, len)
            }
            Dir::Tx => {
                let Some(head) = h.line.first_chunk::<12>() else {
                    return Line::Bad;
                };
                match status_of(head) {
                    Some(status) if len >= 12 => {
                        h.status = status;
                        Line::More
                    }
                    _ => Line::Bad,
                }
            }
        };
    }
    if len == 0 && !long {
        return Line::HeadDone;
    }
    match lower(at(&h.line, 0)) {
        b'c' if header_is(&h.line, len, b"content-length:") => {
            if long {
                return Line::Bad;
            }
            let Some(v) = decimal(&h.line, 15, len, acc) else {
                return Line::Bad;
            };
            let v = if v > u64::from(u32::MAX) {
                u32::MAX
            } else {
                v as u32
            };
            // Conflicting lengths are a framing error (RFC 9112 §6.3).
            if h.msg & msg::LENGTH != 0 && h.remaining != v {
                return Line::Bad;
            }
            h.remaining = v;
            h.msg |= msg::LENGTH;
        }
        b't' if header_is(&h.line, len, b"transfer-encoding:") => {
            if long {
                return Line::Bad;
            }
            match ends_chunked(&h.line, len) {
                Some(true) => h.msg |= msg::CHUNKED,
                Some(false) => h.msg &= !msg::CHUNKED,
                None => return Line::Bad,
            }
        }
        _ => {}
    }
    Line::More
}

/// The empty line ending a request head: the request joins the queue and its body (if any)
/// follows. False when it cannot be framed.
#[inline(always)]
fn request_done(c: &mut WireConn) -> bool {
    let chunked = c.rx.msg & msg::CHUNKED != 0;
    let len = if c.rx.msg & msg::LENGTH != 0 {
        c.rx.remaining
    } else {
        0
    };
    if len == u32::MAX {
        return false;
    }
    push_request(c);
    if chunked {
        c.rx.state = state::CHUNK_SIZE;
    } else if len > 0 {
        c.rx.state = state::BODY_LEN;
        c.rx.remaining = len;
    } else {
        c.rx.state = state::START;
    }
    true
}

/// The empty line ending a response head: counted, and finished at once when it has no body.
/// Returns the body bytes to skip before the response ends (`u32::MAX`: cannot be framed).
#[inline(always)]
fn response_done(c: &mut WireConn, cookie: u64) -> u32 {
    let status = c.tx.status;
    if (100..200).contains(&status) && status != 101 {
        // Interim response (100 Continue, 103 Early Hints): the final one follows.
        c.tx.state = state::START;
        return 0;
    }
    let waiting = c.answered != c.head;
    // A request queued behind `PIPELINE` others has no slot (the one there is an earlier
    // request's, maybe a HEAD's): its method is unknown, and its response framed by its headers.
    let (slot_flags, method) = c
        .slots
        .get((c.answered % PIPELINE) as usize)
        .filter(|s| s.index == c.answered)
        .map_or((0, 0), |s| (s.flags, s.method));
    answer(c, status);
    if status == 101 || (waiting && method == METHOD_CONNECT && (200..300).contains(&status)) {
        // Another protocol from here on.
        finish_response(c, cookie, status);
        c.flags |= conn::UPGRADED;
        c.tx.state = state::OFF;
        c.rx.state = state::OFF;
        return 0;
    }
    let no_body = waiting && slot_flags & slot::HEAD_METHOD != 0 || status == 204 || status == 304;
    if no_body || (c.tx.msg & (msg::CHUNKED | msg::LENGTH) == msg::LENGTH && c.tx.remaining == 0) {
        finish_response(c, cookie, status);
        c.tx.state = state::START;
        return 0;
    }
    if c.tx.msg & msg::CHUNKED != 0 {
        c.tx.state = state::CHUNK_SIZE;
        return 0;
    }
    if c.tx.msg & msg::LENGTH != 0 {
        if c.tx.remaining == u32::MAX {
            return u32::MAX;
        }
        c.tx.state = state::BODY_LEN;
        return c.tx.remaining;
    }
    // Delimited by the connection's end (HTTP/1.0 style): the record is emitted now; nothing
    // after it on this connection is another response.
    finish_response(c, cookie, status);
    c.tx.state = state::BODY_CLOSE;
    0
}

/// A new message starts at sequence number `seq`.
#[inline(always)]
fn start_message(h: &mut WireHalf, dir: Dir, seq: u32) {
    h.state = state::HEAD;
    h.first_line = 1;
    h.line_len = 0;
    h.msg = 0;
    h.status = 0;
    h.method = 0;
    h.remaining = 0;
    h.head_seq = seq;
    if dir == Dir::Rx {
        // SAFETY: plain helper.
        h.start_ns = unsafe { bpf_ktime_get_ns() };
    }
}

/// What ended a run of light steps and needs the heavier handling of `finish`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Out of bytes or steps.
    Steps = 0,
    /// A response head is complete.
    ResponseHead,
    /// A response body (length-delimited or chunked) is complete.
    ResponseEnd,
    /// The stream cannot be followed.
    Bad,
}

/// Up to `STEPS` steps over the segment from the cursor, each a `bpf_loop` iteration (see
/// `STEPS`). Stops at anything that counts or emits (`Stop`).
#[inline(always)]
fn steps(
    ctx: &SkBuffContext,
    c: &mut WireConn,
    dir: Dir,
    seg: &Segment,
    cur: &mut WireScratch,
) -> Stop {
    let mut args = StepArgs {
        skb: skb_ptr(ctx),
        c,
        cur,
        cookie: seg.cookie,
        seq: seg.seq,
        off: seg.off,
        len: seg.len,
        flags: u32::from(seg.flags),
        slot: seg.slot,
    };
    store(&mut cur.stop, Stop::Steps as u32);
    let callback = match dir {
        Dir::Rx => step_callback::<false> as *const (),
        Dir::Tx => step_callback::<true> as *const (),
    };
    // SAFETY: the callback has the helper's signature and only reads `args` (on this stack
    // for the whole call) and what it points to.
    unsafe { bpf_loop(STEPS, callback as *mut c_void, (&raw mut args).cast(), 0) };
    match fetch(&cur.stop) {
        1 => Stop::ResponseHead,
        2 => Stop::ResponseEnd,
        3 => Stop::Bad,
        _ => Stop::Steps,
    }
}

/// What one step needs, handed to `bpf_loop`'s callback through the caller's stack.
#[repr(C)]
struct StepArgs {
    skb: *mut __sk_buff,
    c: *mut WireConn,
    cur: *mut WireScratch,
    cookie: u64,
    seq: u32,
    off: u32,
    len: u32,
    flags: u32,
    slot: u32,
}

/// One `bpf_loop` iteration: one step; 1 ends the loop, its `Stop` left in the scratch. The
/// callback writes nothing on the caller's stack: the verifier checks it again for every
/// distinct caller state it can return with, and a stop code there made four of them.
unsafe extern "C" fn step_callback<const TX: bool>(_index: u64, args: *mut c_void) -> i64 {
    // SAFETY: `args` is the `StepArgs` `steps` passed, whose pointers are live for the call.
    let a = unsafe { &*args.cast::<StepArgs>() };
    let Some(skb) = NonNull::new(a.skb) else {
        return 1;
    };
    let ctx = SkBuffContext::new(skb);
    let seg = Segment {
        cookie: a.cookie,
        seq: a.seq,
        off: a.off,
        len: a.len,
        flags: a.flags as u8,
        slot: a.slot,
    };
    let dir = if TX { Dir::Tx } else { Dir::Rx };
    // SAFETY: map values of this parse (its connection, its scratch slot).
    let (c, cur) = unsafe { (&mut *a.c, &mut *a.cur) };
    match step(&ctx, c, dir, &seg, cur) {
        None => 0,
        Some(stop) => {
            store(&mut cur.stop, stop as u32);
            1
        }
    }
}

/// One step over the segment from the cursor: reads one line (scanning a window of `WINDOW`
/// bytes) or skips body bytes. None: go on.
///
/// The cursor (`pos` and the loaded window) lives in the per-CPU scratch and is read and
/// written with volatile accesses at every step: a value in a register is tracked exactly by
/// the verifier, so each line end found at a different offset would start a new path through
/// the rest of the program (over the 1M-instruction limit at 12 steps); read back from memory
/// it is one unknown value, and the paths merge.
#[inline(always)]
fn step(
    ctx: &SkBuffContext,
    c: &mut WireConn,
    dir: Dir,
    seg: &Segment,
    cur: &mut WireScratch,
) -> Option<Stop> {
    {
        let mut pos = fetch(&cur.pos);
        if pos >= seg.len {
            return Some(Stop::Steps);
        }
        let st = half(c, dir).state;
        if st == state::START {
            start_message(half(c, dir), dir, seg.seq.wrapping_add(pos));
            // A status line whole in this segment is read at its fixed offsets, and the scan
            // then skips its end like any other header line: one invocation per response
            // less (a line that matters costs one). A shorter one takes the slow path.
            if dir == Dir::Tx
                && seg.len - pos >= 13
                && let Some(status) = status_at(ctx, seg.off + pos)
            {
                let h = half(c, dir);
                h.status = status;
                h.first_line = 0;
            }
        } else if st == state::BODY_LEN || st == state::CHUNK_DATA {
            let h = half(c, dir);
            let avail = seg.len - pos;
            let take = if h.remaining < avail {
                h.remaining
            } else {
                avail
            };
            h.remaining -= take;
            store(&mut cur.pos, pos + take);
            if h.remaining != 0 {
                return None;
            }
            if st != state::CHUNK_DATA {
                if dir == Dir::Tx {
                    return Some(Stop::ResponseEnd);
                }
                h.state = state::START;
                return None;
            }
            // The end of a chunk's data: its next size line is read in the same step, so a
            // chunked body costs one invocation per chunk, not two (a segment full of small
            // chunks would otherwise run out of tail calls).
            h.state = state::CHUNK_SIZE;
            pos = fetch(&cur.pos);
            if pos >= seg.len {
                return Some(Stop::Steps);
            }
        } else if st != state::HEAD && st != state::CHUNK_SIZE && st != state::TRAILER {
            // BODY_CLOSE, OFF, UNSYNCED: nothing more to read here.
            store(&mut cur.pos, seg.len);
            return Some(Stop::Steps);
        }
        let (mut win_start, win_len) = (fetch(&cur.win_start), fetch(&cur.win_len));
        if pos < win_start || pos >= win_start + win_len {
            let avail = seg.len - pos;
            let n = if avail < WINDOW as u32 {
                avail
            } else {
                WINDOW as u32
            };
            // In [1, WINDOW] in a form the verifier can follow (`pos < seg.len`: n ≥ 1).
            let n = ((opaque(n as usize - 1) & (WINDOW - 1)) + 1) as u32;
            // SAFETY: `n` ≤ WINDOW, the buffer's size; the helper bounds-checks the packet.
            let rc = unsafe {
                bpf_skb_load_bytes(
                    ctx.as_ptr() as *const _,
                    seg.off + pos,
                    cur.buf.as_mut_ptr().cast(),
                    n,
                )
            };
            if rc != 0 {
                return Some(Stop::Bad);
            }
            win_start = pos;
            store(&mut cur.win_start, pos);
            store(&mut cur.win_len, n);
        }
        store(&mut cur.scan, (pos - win_start) & (WINDOW as u32 - 1));
        let line = scan_line(cur, half(c, dir), dir)?;
        match line {
            Line::More => {}
            Line::RequestLine(n, len) => remember_target(ctx, c, seg, n, len),
            Line::HeadDone => match dir {
                Dir::Rx => {
                    if !request_done(c) {
                        return Some(Stop::Bad);
                    }
                }
                Dir::Tx => return Some(Stop::ResponseHead),
            },
            Line::MessageDone => match dir {
                Dir::Rx => c.rx.state = state::START,
                Dir::Tx => return Some(Stop::ResponseEnd),
            },
            Line::Bad => return Some(Stop::Bad),
            Line::NotHttp => {
                c.rx.state = state::OFF;
                c.tx.state = state::OFF;
                store(&mut cur.pos, seg.len);
                return Some(Stop::Steps);
            }
        }
    }
    None
}

/// Scans the loaded window from `cur.scan` for the end of the current line, keeping the
/// line's first `LINE_MAX` bytes in `h.line` and skipping header lines that cannot matter for
/// framing. When a line ended (`cur.pos` is then past its '\n'), what it means (`on_line`);
/// None when the window ended first (`cur.pos` is then its end).
#[inline(always)]
fn scan_line(cur: &mut WireScratch, h: &mut WireHalf, dir: Dir) -> Option<Line> {
    match http_wire_scan(cur, h, dir as u64) {
        0 => None,
        r => Some(line_of(r)),
    }
}

/// `scan_line`, as a global function: the verifier checks it once, on its own, with its
/// arguments unknown, instead of once for every state a step can call it in (the walk of its
/// 64 iterations for each of them was 80 % of each scan program's verification, ≈ 0.9 s of
/// CPU per program at a start). It reads and writes only what its arguments point to. The
/// line is classified in the same call (`on_line`, after the loop, where the loop's states
/// merge): a call costs several ns here (return thunks), so one per step. Returns 0 when no
/// line ended, else the line's `line_code`.
///
/// A word (8 bytes) at a time; the scan index and `line_len` are read and written through
/// volatile accesses: kept in registers they would be exact values the verifier follows
/// separately for every line length at every offset.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn http_wire_scan(cur: *mut WireScratch, h: *mut WireHalf, dir: u64) -> i64 {
    // SAFETY: the caller's scratch and connection half (map values, never null from
    // `scan_line`; the verifier makes a global function check anyway).
    let (Some(cur), Some(h)) = (unsafe { cur.as_mut() }, unsafe { h.as_mut() }) else {
        return 0;
    };
    let (win_start, win_len) = (fetch(&cur.win_start), fetch(&cur.win_len));
    let mut newline = false;
    // The loop counts `k`, a constant in each iteration the verifier walks: with the
    // index itself as the loop variable, kernels before 6.11 (which do not link a register
    // with its copy plus a constant) never saw the loop end and gave up after 8,192 jumps.
    let mut k = 0;
    while k < SCAN_ITERATIONS {
        k += 1;
        let i = fetch(&cur.scan);
        if i >= win_len {
            break;
        }
        // The word holding byte `i` (the mask is kept opaque: the compiler would drop it).
        let j = opaque(i as usize) & (WINDOW - 8);
        let lo = u64::from(i & 7);
        // SAFETY: `j + 8 <= WINDOW`, inside the buffer (the per-CPU scratch, map memory).
        let w = unsafe { word_load(cur.buf.as_ptr().add(j)) };
        // The bytes from `i` on at the bottom; the top filled with bytes that are no '\n'.
        let v = (w >> (8 * lo)) | ((!0u64 << (63 - 8 * lo)) << 1);
        let avail = win_len - i;
        let n = if avail < 8 - lo as u32 {
            avail
        } else {
            8 - lo as u32
        };
        // The first '\n' of `v` (8: none): the lowest byte whose XOR with '\n' is zero.
        // Borrows only carry upwards, so the lowest flagged byte is exact.
        let x = v ^ 0x0a0a_0a0a_0a0a_0a0a;
        let t = x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080;
        let nl = if t == 0 {
            8
        } else {
            (((t & t.wrapping_neg()) >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as u32
        };
        let take = if nl < n { nl } else { n };
        let l = fetch(&h.line_len) as u32;
        if l < LINE_MAX as u32 {
            // All eight bytes at once; what lies past the line's end is overwritten by
            // its next bytes or never read (`WireHalf::line_slack` takes what overflows).
            let at = opaque(l as usize) & (LINE_MAX - 1);
            // SAFETY: `at + 8 <= LINE_MAX + 8`: inside `line` and `line_slack`, which
            // follows it in the same `repr(C)` struct, the connection's storage (map memory).
            unsafe {
                word_store(
                    core::ptr::from_mut(h)
                        .cast::<u8>()
                        .add(core::mem::offset_of!(WireHalf, line) + at),
                    v,
                );
            }
        }
        let l = l + take;
        store(&mut h.line_len, if l < 255 { l } else { 255 } as u8);
        if l > LINE_MAX as u32 {
            h.msg |= msg::LONG_LINE;
        }
        store(&mut cur.scan, i + take);
        if nl >= n {
            continue;
        }
        let l = l as usize;
        {
            // Header lines that cannot matter for framing are dropped here without leaving
            // the loop, so a head costs two or three line steps, not one per header: only
            // "content-l…" (byte 8 'l') and "transfer-e…" (byte 9 'e') can be
            // Content-Length or Transfer-Encoding (Content-Type, Connection, Date… not).
            let first = lower(at(&h.line, 0));
            let empty = l == 0 || (l == 1 && at(&h.line, 0) == b'\r');
            let framing = (first == b'c' && lower(at(&h.line, 8)) == b'l')
                || (first == b't' && lower(at(&h.line, 9)) == b'e');
            if h.state == state::HEAD && h.first_line == 0 && !empty && !framing {
                store(&mut h.line_len, 0);
                h.msg &= !msg::LONG_LINE;
                store(&mut cur.scan, i + take + 1);
                continue;
            }
            store(&mut cur.pos, win_start + i + take + 1);
            newline = true;
            break;
        }
    }
    if !newline {
        // The window ended (or the iterations did, on a window of very short lines) before
        // the line did.
        store(&mut cur.pos, win_start + fetch(&cur.scan));
        return 0;
    }
    let dir = if dir == Dir::Tx as u64 {
        Dir::Tx
    } else {
        Dir::Rx
    };
    line_code(on_line(h, dir, &mut cur.acc))
}

/// What `wire_count` adds to an owner's `HttpCounts`.
#[derive(Clone, Copy)]
enum Charge {
    /// `n` requests lost.
    Lost,
    /// `n` requests aborted (counted as requests too).
    Aborted,
    /// `n` requests without a record.
    Unrecorded,
}

/// Adds to the owner's counts through the global function `http_wire_count`.
#[inline(always)]
fn wire_count(owner: &OwnerKey, what: Charge, n: u64) {
    http_wire_count(owner.cgroup_id, u64::from(owner.tgid), what as u64, n);
}

/// `http::count` as a global function, checked once by the verifier (see `http_wire_scan`):
/// inlined, its map insert and its two kernel log lines were verified again at each of the
/// parser's call sites for every state reaching them.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn http_wire_count(cgroup_id: u64, tgid: u64, what: u64, n: u64) -> i64 {
    let owner = OwnerKey {
        cgroup_id,
        tgid: tgid as u32,
        _pad: 0,
    };
    count(&owner, |h| {
        if what == Charge::Lost as u64 {
            h.lost += n;
        } else if what == Charge::Aborted as u64 {
            h.requests += n;
            h.aborted += n;
        } else {
            h.unrecorded += n;
        }
    });
    0
}

// The parser's kernel log lines, each in a global function called only when its level is on:
// aya-log's formatting, inlined at the line, was verified again for every state reaching it
// (the egress action program went from 6–10 ms to 0.27 s of verifier CPU with its lines);
// here it is verified once. Arguments are 64-bit integers (at most five; narrower ones are
// cast back inside, so nothing depends on how the caller extends them).

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn http_wire_log_reserve_failed(cgroup_id: u64, tgid: u64) -> i64 {
    let tgid = tgid as u32;
    klog!(
        Warn,
        "http_record_reserve_failed: EVENTS full, a request of cgroup {} process {} is counted, not recorded",
        cgroup_id,
        tgid
    );
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn http_wire_log_huge_body(
    status: u64,
    lost: u64,
    cgroup_id: u64,
    tgid: u64,
) -> i64 {
    let (status, tgid) = (status as u16, tgid as u32);
    klog!(
        Info,
        "http_wire_desync: a {} response declares a Content-Length of 4 GiB or more, more than the parser frames; {} requests charged as lost to cgroup {} process {}, resyncing at the next message",
        status,
        lost,
        cgroup_id,
        tgid
    );
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn http_wire_log_conn_store_failed(cgroup_id: u64, tgid: u64) -> i64 {
    let tgid = tgid as u32;
    klog!(
        Warn,
        "http_wire_conn_store_failed: no socket storage for a new connection of cgroup {} process {}: not followed, its request charged as lost",
        cgroup_id,
        tgid
    );
    0
}

/// `what`: the gap in bytes (low 32 bits), the state (next 8) and the direction (bit 40).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn http_wire_log_gap(what: u64, lost: u64, cgroup_id: u64, tgid: u64) -> i64 {
    let tgid = tgid as u32;
    let gap = what as u32;
    let st = (what >> 32) as u8;
    let messages = if (what >> 40) & 1 == Dir::Tx as u64 {
        Dir::Tx.messages()
    } else {
        Dir::Rx.messages()
    };
    klog!(
        Info,
        "http_wire_desync: {} bytes missing before a {} segment, not inside a body of known length (state {}); {} requests charged as lost to cgroup {} process {}, resyncing at the next message",
        gap,
        messages,
        st,
        lost,
        cgroup_id,
        tgid
    );
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn http_wire_log_busy(dir: u64, len: u64, lost: u64) -> i64 {
    let len = len as u32;
    let messages = if dir == Dir::Tx as u64 {
        Dir::Tx.messages()
    } else {
        Dir::Rx.messages()
    };
    klog!(
        Info,
        "http_wire_busy: all {} {} scratch slots of this CPU in use, a segment of {} bytes went unparsed, {} requests charged as lost",
        WIRE_SLOTS,
        messages,
        len,
        lost
    );
    0
}

/// Entry point of both scan programs (and of their tail calls: the state says where to
/// resume).
#[inline(always)]
fn wire(ctx: &SkBuffContext, dir: Dir, seg: Segment, known: Option<&'static mut WireConn>) {
    let fin = seg.flags & (TCP_FIN | TCP_RST) != 0;
    // Ingress writes only `rx`/`head`, egress only `tx`/`tail`/`answered` (see `WireConn`).
    let c = match known {
        Some(c) => c,
        None => match new_conn(ctx, dir, &seg) {
            Some(c) => c,
            None => return,
        },
    };
    if c.owner.tgid == 0 {
        c.owner = owner(ctx);
    }
    if seg.len > 0
        && let Some(pos) = resume(ctx, c, dir, &seg)
    {
        let Some(cur) = WIRE_SCRATCH.get_ptr_mut(scratch_index(dir, seg.slot)) else {
            return;
        };
        // SAFETY: this parse's scratch on this CPU (`enter`), valid for the whole call.
        let cur = unsafe { &mut *cur };
        store(&mut cur.pos, pos);
        store(&mut cur.win_start, 0);
        store(&mut cur.win_len, 0);
        let stop = steps(ctx, c, dir, &seg, cur);
        let pos = fetch(&cur.pos);
        half(c, dir).next_seq = seg.seq.wrapping_add(pos);
        match stop {
            Stop::Steps => {}
            Stop::Bad => {
                // No kernel log line on this side of the step loop (here or in `hand_over`):
                // every state the verifier brings out of the loop passes these drops, and on
                // Debian's 6.1 their log code took the program over the 1M-instruction limit
                // (two VM runs: with all five lines, then with this one alone). The drops are
                // counted all the same (`http_wire_desync`, `http_wire_windows`).
                desync(c, KernelDrop::WireDesync);
                return;
            }
            Stop::ResponseHead | Stop::ResponseEnd => {
                hand_over(ctx, c, &seg, cur, stop, dir, WIRE_PROG_ACTION);
                return;
            }
        }
        if pos < seg.len {
            hand_over(ctx, c, &seg, cur, Stop::Steps, dir, dir.prog());
            return;
        }
    }
    if fin {
        closed(ctx, c, dir, &seg);
    }
}

/// Tail-calls `prog` for the rest of this segment, telling it why through the scratch.
#[inline(always)]
fn hand_over(
    ctx: &SkBuffContext,
    c: &mut WireConn,
    seg: &Segment,
    cur: &mut WireScratch,
    stop: Stop,
    dir: Dir,
    prog: u32,
) {
    // No kernel log line here (see `wire`, `Stop::Bad`).
    if !more_calls(seg, cur) {
        desync(c, KernelDrop::WireWindows);
        return;
    }
    store(&mut cur.stop, stop as u32);
    store(&mut cur.seg_off, seg.off);
    store(&mut cur.seg_len, seg.len);
    store(&mut cur.seg_flags, u32::from(seg.flags));
    // SAFETY: tail call with the same context; the callee resumes from `next_seq` and the
    // scratch. On failure (never expected: the array is filled before attaching) execution
    // continues here.
    // The index is made opaque: with a constant one the verifier turns the call into a
    // patched direct jump, which this program's many inlined call sites could not all get
    // (the load failed with ENOSPC/EINVAL after verifying).
    unsafe { dir.progs().tail_call(ctx, opaque(prog as usize) as u32) };
    desync(c, KernelDrop::WireWindows);
}

/// The egress action program: what the scan stopped at needs counting or a record.
#[inline(always)]
fn act(ctx: &SkBuffContext, slot: u32) {
    let Some(c) = conn_of(ctx) else {
        return;
    };
    let Some(cur) = WIRE_SCRATCH.get_ptr_mut(scratch_index(Dir::Tx, slot)) else {
        return;
    };
    // SAFETY: this parse's egress scratch (`enter`): the segment as `hand_over` left it, so
    // the headers are not read again.
    let cur = unsafe { &mut *cur };
    let seg = Segment {
        cookie: cur.cookie,
        seq: cur.seq,
        off: fetch(&cur.seg_off),
        len: fetch(&cur.seg_len),
        flags: fetch(&cur.seg_flags) as u8,
        slot,
    };
    let mut pos = seg.len.min(c.tx.next_seq.wrapping_sub(seg.seq));
    let status = c.tx.status;
    if fetch(&cur.stop) == Stop::ResponseHead as u32 {
        let body = response_done(c, seg.cookie);
        if body == u32::MAX {
            let lost = desync(c, KernelDrop::WireDesync);
            if klog::enabled(Level::Info) {
                http_wire_log_huge_body(
                    u64::from(status),
                    lost,
                    c.owner.cgroup_id,
                    u64::from(c.owner.tgid),
                );
            }
            return;
        }
        // The common case: the whole (small) body is in this segment.
        if body > 0 && body <= seg.len - pos {
            pos += body;
            c.tx.remaining = 0;
            finish_response(c, seg.cookie, status);
            c.tx.state = state::START;
        }
    } else {
        finish_response(c, seg.cookie, status);
        c.tx.state = state::START;
    }
    c.tx.next_seq = seg.seq.wrapping_add(pos);
    if pos < seg.len {
        hand_over(ctx, c, &seg, cur, Stop::Steps, Dir::Tx, WIRE_PROG_EGRESS);
        return;
    }
    if seg.flags & (TCP_FIN | TCP_RST) != 0 {
        closed(ctx, c, Dir::Tx, &seg);
    }
}

/// State for a connection seen for the first time: only when a request starts exactly at
/// this segment's first byte (a server socket; the others are never tracked).
#[inline(always)]
fn new_conn(ctx: &SkBuffContext, dir: Dir, seg: &Segment) -> Option<&'static mut WireConn> {
    if dir == Dir::Tx {
        return None;
    }
    let (first, n) = first_bytes(ctx, seg)?;
    if !looks_like_request(&first, n) {
        return None;
    }
    // Built in per-CPU memory: it does not fit the stack.
    let fresh = WIRE_NEW_CONN.get_ptr_mut(seg.slot)?;
    // SAFETY: this CPU's slot, only used within this call.
    let fresh = unsafe { &mut *fresh };
    fresh.rx = WireHalf::NEW;
    fresh.tx = WireHalf::NEW;
    fresh.head = 0;
    fresh.tail = 0;
    fresh.answered = 0;
    fresh.owner = owner(ctx);
    fresh.cookie = seg.cookie;
    fresh.flags = conn::SERVER;
    fresh.rx.next_seq = seg.seq;
    fresh.rx.state = state::START;
    let sk = full_sock(ctx)?;
    // SAFETY: `sk` is a full socket the verifier knows as such; `fresh` is the initial value,
    // copied into the new storage.
    let p = unsafe {
        bpf_sk_storage_get(
            (&raw const WIRE_CONNS).cast_mut().cast(),
            sk.cast(),
            (fresh as *mut WireConn).cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    };
    if p.is_null() {
        // Out of memory for socket storage: this connection's request goes uncounted.
        count_drop(KernelDrop::WireConnStore);
        wire_count(&fresh.owner, Charge::Lost, 1);
        if klog::enabled(Level::Warn) {
            http_wire_log_conn_store_failed(fresh.owner.cgroup_id, u64::from(fresh.owner.tgid));
        }
        return None;
    }
    // SAFETY: the socket's storage, live as long as the socket (which this packet holds).
    Some(unsafe { &mut *p.cast::<WireConn>() })
}

/// The packet's socket when it is a full socket (not a request or TIME_WAIT socket).
#[inline(always)]
fn full_sock(ctx: &SkBuffContext) -> Option<*mut bpf_sock> {
    // SAFETY: a read of the program's own context; the kernel gives the packet's socket.
    let sk = unsafe { (*skb_ptr(ctx)).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: plain helper on the context's socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    (!full.is_null()).then_some(full)
}

/// The parser's state of this packet's connection, if it follows it.
#[inline(always)]
fn conn_of(ctx: &SkBuffContext) -> Option<&'static mut WireConn> {
    // The packet's socket as it is, without `bpf_sk_fullsock`: the storage helper takes any
    // socket and answers NULL for one that is not full, so the check is made once, not twice
    // (a helper call less in every run: ~25 ns, four to five runs per request).
    // SAFETY: a read of the program's own context.
    let sk = unsafe { (*skb_ptr(ctx)).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: as in `new_conn`, without creating.
    let p = unsafe {
        bpf_sk_storage_get(
            (&raw const WIRE_CONNS).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: the socket's storage, updated in place.
    (!p.is_null()).then(|| unsafe { &mut *p.cast::<WireConn>() })
}

/// Where parsing resumes in this segment, or None when the segment brings nothing new.
#[inline(always)]
fn resume(ctx: &SkBuffContext, c: &mut WireConn, dir: Dir, seg: &Segment) -> Option<u32> {
    let (st, next) = match dir {
        Dir::Rx => (c.rx.state, c.rx.next_seq),
        Dir::Tx => (c.tx.state, c.tx.next_seq),
    };
    if st == state::OFF {
        return None;
    }
    if st == state::UNSYNCED {
        // A message must begin exactly at this segment's first byte.
        let (first, n) = first_bytes(ctx, seg)?;
        let ok = match dir {
            Dir::Rx => looks_like_request(&first, n),
            // Only a response to a request we queued can be paired.
            Dir::Tx => looks_like_response(&first, n) && c.answered != c.head,
        };
        if !ok {
            return None;
        }
        let h = half(c, dir);
        h.state = state::START;
        h.next_seq = seg.seq;
        return Some(0);
    }
    let ahead = seg.seq.wrapping_sub(next) as i32;
    if ahead <= 0 {
        // Old bytes (a retransmission) or exactly the next ones.
        let skip = ahead.unsigned_abs();
        return (skip < seg.len).then_some(skip);
    }
    // A hole before this segment: skippable only inside a body of known length.
    let gap = ahead as u32;
    let h = half(c, dir);
    if (h.state == state::BODY_LEN || h.state == state::CHUNK_DATA) && gap < h.remaining {
        h.remaining -= gap;
        return Some(0);
    }
    if h.state == state::BODY_CLOSE {
        return None;
    }
    let st = h.state;
    let lost = desync(c, KernelDrop::WireDesync);
    if klog::enabled(Level::Info) {
        http_wire_log_gap(
            u64::from(gap) | u64::from(st) << 32 | (dir as u64) << 40,
            lost,
            c.owner.cgroup_id,
            u64::from(c.owner.tgid),
        );
    }
    None
}

/// Counts this segment's invocations in the per-CPU scratch; false once `MAX_CALLS` is used.
#[inline(always)]
fn more_calls(seg: &Segment, s: &mut WireScratch) -> bool {
    if s.cookie == seg.cookie && s.seq == seg.seq && s.calls != 0 {
        s.calls += 1;
        if s.calls >= MAX_CALLS {
            s.calls = 0;
            return false;
        }
    } else {
        s.cookie = seg.cookie;
        s.seq = seg.seq;
        s.calls = 1;
    }
    true
}

/// FIN or RST: requests the server will never answer are aborted; the state is dropped once
/// the server side has closed.
#[inline(always)]
fn closed(ctx: &SkBuffContext, c: &mut WireConn, dir: Dir, seg: &Segment) {
    let reset = seg.flags & TCP_RST != 0;
    // A client FIN only half-closes: the server may still answer what it got.
    if dir == Dir::Rx && !reset {
        return;
    }
    let pending = c.head.wrapping_sub(c.answered);
    if pending > 0 && pending <= PIPELINE * 4 {
        wire_count(&c.owner, Charge::Aborted, u64::from(pending));
    }
    if let Some(sk) = full_sock(ctx) {
        // SAFETY: plain helper on a full socket.
        unsafe { bpf_sk_storage_delete((&raw const WIRE_CONNS).cast_mut().cast(), sk.cast()) };
    }
}

/// `cb[0]` of a packet whose parse holds a scratch slot: the mark in the high bits, the slot
/// in the low ones. The kernel zeroes the control buffer before the attached program runs
/// and restores it after the last tail call, so the value is this packet's own for exactly
/// one parse, whatever else runs on the CPU meanwhile.
const SLOT_MARK: u32 = 0x5107_0000;
const SLOT_MASK: u32 = WIRE_SLOTS - 1;
const _: () = assert!(WIRE_SLOTS.is_power_of_two() && WIRE_SLOTS <= 64);

#[inline(always)]
fn scratch_index(dir: Dir, slot: u32) -> u32 {
    (dir as u32) * WIRE_SLOTS + (slot & SLOT_MASK)
}

/// This parse's scratch slot: the one its first program claimed (a tail call), or a free one
/// claimed now (marked in `cb[0]`). None when every slot of this CPU is in use.
#[inline(always)]
fn enter(ctx: &SkBuffContext, dir: Dir) -> Option<u32> {
    let skb = skb_ptr(ctx);
    // SAFETY: the program's own context; `cb` is readable and writable in cgroup_skb programs.
    let v = unsafe { core::ptr::read_volatile(&(*skb).cb[0]) };
    if v & !SLOT_MASK == SLOT_MARK {
        return Some(v & SLOT_MASK);
    }
    let busy = WIRE_BUSY.get_ptr_mut(dir as u32)?;
    let mut slot = 0;
    while slot < WIRE_SLOTS {
        let bit = 1u64 << slot;
        if busy_claim(busy, bit) & bit == 0 {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&mut (*skb).cb[0], SLOT_MARK | slot) };
            return Some(slot);
        }
        slot += 1;
    }
    None
}

/// Sets `bit`; returns the bits before (BPF_ATOMIC | BPF_FETCH, kernel ≥ 5.12).
#[inline(always)]
fn busy_claim(busy: *mut u64, bit: u64) -> u64 {
    let mut v = bit;
    // SAFETY: `busy` points at this CPU's 8-byte aligned map value.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_or((u64 *)({p} + 0), {v})",
            v = inout(reg) v,
            p = in(reg) busy,
            options(nostack),
        )
    };
    v
}

/// Frees this parse's slot: called where a parse ends (a successful tail call never returns,
/// so the last program of the chain is the one that releases).
#[inline(always)]
fn leave(dir: Dir, slot: u32) {
    let Some(busy) = WIRE_BUSY.get_ptr_mut(dir as u32) else {
        return;
    };
    let keep = !(1u64 << (slot & SLOT_MASK));
    // SAFETY: as in `busy_claim`.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) &= {v}",
            v = in(reg) keep,
            p = in(reg) busy,
            options(nostack),
        )
    };
}

/// No slot was free: this segment goes unparsed, and what it carried is charged as lost to
/// the connection's owner — a followed direction loses its place (the usual desync), and a
/// request that would have started or resynchronised a connection counts one lost request.
/// Returns how many requests were charged (for the kernel's log line).
#[inline(always)]
fn busy(ctx: &SkBuffContext, seg: &Segment, dir: Dir) -> u64 {
    // A lone FIN or RST carries nothing: the connection's state stays until the LRU evicts it.
    if seg.len == 0 {
        count_drop(KernelDrop::WireBusy);
        return 0;
    }
    let starts_request =
        || dir == Dir::Rx && first_bytes(ctx, seg).is_some_and(|(b, n)| looks_like_request(&b, n));
    let Some(c) = conn_of(ctx) else {
        count_drop(KernelDrop::WireBusy);
        if starts_request() {
            wire_count(&owner(ctx), Charge::Lost, 1);
            return 1;
        }
        return 0;
    };
    let st = half(c, dir).state;
    if st != state::UNSYNCED && st != state::OFF {
        return desync(c, KernelDrop::WireBusy);
    }
    count_drop(KernelDrop::WireBusy);
    if st == state::UNSYNCED && starts_request() {
        wire_count(&c.owner, Charge::Lost, 1);
        return 1;
    }
    0
}

/// One program's part of a parse (the first, or a tail call: `enter` tells them apart).
#[inline(always)]
fn parse(ctx: &SkBuffContext, dir: Dir) {
    let Some(mut seg) = segment(ctx) else {
        return;
    };
    // Pure ACKs, the most frequent packets, leave before any slot is claimed.
    if seg.len == 0 && seg.flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    let known = conn_of(ctx);
    // Sockets the parser does not follow leave here too, before the slot: the
    // client's side of every local connection (half the runs on a node whose clients are
    // local), and everything that is not HTTP/1.x. Only a request can start following one.
    if known.is_none() {
        if dir == Dir::Tx {
            return;
        }
        let Some((b, n)) = first_bytes(ctx, &seg) else {
            return;
        };
        if !looks_like_request(&b, n) {
            // Bytes read for the request check anyway: a server socket speaking TLS or h2c
            // costs one compare more here, and a notice per (cgroup, port) every 10 s.
            let kind = unseen_kind(&b, n);
            if kind != 0 {
                http_wire_unseen(ctx, kind);
            }
            return;
        }
    }
    seg.cookie = match &known {
        Some(c) => c.cookie,
        None => cookie(ctx),
    };
    match enter(ctx, dir) {
        Some(slot) => {
            seg.slot = slot;
            wire(ctx, dir, seg, known);
            leave(dir, slot);
        }
        None => {
            let lost = busy(ctx, &seg, dir);
            if klog::enabled(Level::Info) {
                http_wire_log_busy(dir as u64, u64::from(seg.len), lost);
            }
        }
    }
}

#[cgroup_skb(ingress)]
pub fn http_wire_ingress(ctx: SkBuffContext) -> i32 {
    parse(&ctx, Dir::Rx);
    // Always let the packet through: we only observe.
    1
}

#[cgroup_skb(egress)]
pub fn http_wire_egress(ctx: SkBuffContext) -> i32 {
    parse(&ctx, Dir::Tx);
    1
}

/// Only reached by tail call from `http_wire_egress` (never attached itself), so its slot is
/// always in `cb[0]`.
#[cgroup_skb(egress)]
pub fn http_wire_egress_action(ctx: SkBuffContext) -> i32 {
    if let Some(slot) = enter(&ctx, Dir::Tx) {
        act(&ctx, slot);
        leave(Dir::Tx, slot);
    }
    1
}

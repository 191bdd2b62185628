//! gRPC servers (grpc-go), from uprobes on the server's own code: counts, offsets, records.
//!
//! Two probe points per RPC (`collector-ebpf/src/grpc.rs`): the entry of
//! `(*grpc.Server).handleStream` (the RPC starts; its stream's start time is kept in
//! `GRPC_INFLIGHT`) and the entry of the transport's status write (`(*http2Server).WriteStatus`
//! up to grpc-go 1.68, `writeStatus` since), where the full method and the final status code
//! are both known: the RPC is counted there, exactly, in `GRPC_COUNTS`, and its record emitted.

use crate::{assert_layout, event::EventHeader, impl_pod};

/// Bytes of the full method (`/pkg.Service/Method`) kept; longer names are cut (flagged).
pub const GRPC_METHOD_MAX: usize = 112;

/// Map names (the loader looks maps up by these; the kernel statics carry the same names).
pub const GRPC_OFFSETS: &str = "GRPC_OFFSETS";
/// One slot per instrumented executable file, as for `HTTP_OFFSETS`.
pub const GRPC_OFFSETS_SLOTS: u32 = 1024;
/// LRU hash `StreamKey` → start (boot clock ns) of RPCs in flight. LRU: a stream whose status
/// is never written (its process killed) is evicted in time; an evicted live one loses only
/// its duration — it is still counted when its status is written (`GrpcCounts::no_start`).
pub const GRPC_INFLIGHT: &str = "GRPC_INFLIGHT";
pub const GRPC_INFLIGHT_ENTRIES: u32 = 65_536;
/// Per-CPU hash `GrpcCountKey` → `GrpcCounts`: exact counts by process, method and code.
pub const GRPC_COUNTS: &str = "GRPC_COUNTS";
pub const GRPC_COUNTS_ENTRIES: u32 = 16_384;
/// Array of one u32: records are emitted for 1 in N RPCs (N from the adaptive sampler).
pub const GRPC_SAMPLING: &str = "GRPC_SAMPLING";

/// Per-binary struct offsets, written by userspace before attaching (slot = attach cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcOffsets {
    /// `transport.Stream.method` (a Go string) from the stream pointer the server passes
    /// (`*Stream`, or `*ServerStream` which embeds `Stream` by value).
    pub stream_method: u32,
    /// `status.Status.s` (`*spb.Status`).
    pub status_proto: u32,
    /// `spb.Status.Code` (int32).
    pub proto_code: u32,
    /// 0: slot empty. Else a generation, never reused soon.
    pub valid: u32,
    /// Where `ServerStream` keeps its embedded `*Stream` (grpc-go 1.69 to 1.7x), `stream_method`
    /// then being relative to that `Stream`; [`NO_DEREF`] when the stream the server passes holds
    /// the method itself (`*Stream` up to 1.68, `Stream` embedded by value later).
    pub stream_ptr: u32,
    pub _pad: u32,
}
assert_layout!(GrpcOffsets, 24);

/// `GrpcOffsets::stream_ptr` when there is no pointer to follow.
pub const NO_DEREF: u32 = u32::MAX;

/// An RPC in flight: its process and its stream's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub tgid: u32,
    pub _pad: u32,
    pub stream: u64,
}
assert_layout!(StreamKey, 16);

pub mod flags {
    /// The method name was longer than `GRPC_METHOD_MAX` and is cut.
    pub const TRUNCATED: u16 = 1;
    /// `GRPC_COUNTS` was full: counted under the overflow key (no process, no method).
    pub const OVERFLOW: u16 = 2;
}

/// Key of `GRPC_COUNTS`. The method is zero-padded (a method name holds no NUL).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrpcCountKey {
    pub cgroup_id: u64,
    pub tgid: u32,
    /// The gRPC status code the server wrote (0 OK … 16 UNAUTHENTICATED; others as written).
    pub code: u16,
    pub flags: u16,
    pub method: [u8; GRPC_METHOD_MAX],
}
assert_layout!(GrpcCountKey, 128);

impl GrpcCountKey {
    /// Where RPCs are counted when `GRPC_COUNTS` is full (created by userspace at start).
    pub const OVERFLOW: Self = Self {
        cgroup_id: 0,
        tgid: 0,
        code: 0,
        flags: flags::OVERFLOW,
        method: [0; GRPC_METHOD_MAX],
    };

    /// The method's bytes, without the padding.
    pub fn method_bytes(&self) -> &[u8] {
        let n = self
            .method
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(GRPC_METHOD_MAX);
        &self.method[..n]
    }
}

/// Per-CPU counters of one (process, method, code).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrpcCounts {
    /// RPCs whose final status was written.
    pub rpcs: u64,
    /// Of those, without a record (sampled out, or the ring was full).
    pub unrecorded: u64,
    /// Of those, without a tracked start (begun before the probes, or evicted from
    /// `GRPC_INFLIGHT`): counted, no duration.
    pub no_start: u64,
}
assert_layout!(GrpcCounts, 24);

impl GrpcCounts {
    pub fn accumulate(total: &mut Self, v: &Self) {
        total.rpcs += v.rpcs;
        total.unrecorded += v.unrecorded;
        total.no_start += v.no_start;
    }
}

/// One RPC (`EventKind::Grpc`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GrpcEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub code: u16,
    pub flags: u16,
    pub cgroup_id: u64,
    pub duration_ns: u64,
    pub method: [u8; GRPC_METHOD_MAX],
}
assert_layout!(GrpcEvent, 16 + 8 + 8 + 8 + GRPC_METHOD_MAX);

impl_pod!(GrpcOffsets, StreamKey, GrpcCountKey, GrpcCounts, GrpcEvent);

//! Ring-buffer records: a tagged header first, then the record of that kind.
//!
//! The ring buffer carries only records that need per-event detail (a process seen for the
//! first time, later one record per HTTP request). High-rate counters never go through it:
//! they are aggregated in per-CPU maps (see `tcp`).

use crate::{assert_layout, impl_pod};

/// First field of every ring-buffer record. Userspace dispatches on `kind` and rejects
/// unknown kinds and short records (counted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the `EventKind` values, as a raw number: the kernel may be newer than the daemon.
    pub kind: u16,
    /// ABI version of the record; bumped when a layout changes.
    pub version: u16,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` at emission (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}
assert_layout!(EventHeader, 16);
impl_pod!(EventHeader);

impl EventHeader {
    /// The header of a record of `kind` at this ABI version, emitted at `ts_ns`.
    pub const fn new(kind: EventKind, ts_ns: u64) -> Self {
        Self {
            kind: kind as u16,
            version: EVENT_VERSION,
            _pad: 0,
            ts_ns,
        }
    }
}

/// Kinds of ring-buffer records.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `process::ProcessEvent`
    Process = 1,
    /// `http::HttpEvent`
    Http = 2,
    /// `process::ExecEvent`
    Exec = 3,
    /// `grpc::GrpcEvent`
    Grpc = 4,
    /// `http::unseen::UnseenEvent`
    Unseen = 5,
}

impl EventKind {
    /// Decodes a raw kind; `None` for kinds this build does not know.
    pub const fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(Self::Process),
            2 => Some(Self::Http),
            3 => Some(Self::Exec),
            4 => Some(Self::Grpc),
            5 => Some(Self::Unseen),
            _ => None,
        }
    }
}

pub const EVENT_VERSION: u16 = 1;

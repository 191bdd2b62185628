//! Go `net/http` server requests seen by uprobes: in-flight state, the per-request record and
//! exact per-owner counters.

use crate::{assert_layout, event::EventHeader, impl_pod};

/// Struct field offsets of one Go binary (DWARF or the per-version table), stored in
/// `maps::HTTP_OFFSETS` at the slot passed to every uprobe of that binary as its cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoHttpOffsets {
    pub request_method: u32,
    pub request_url: u32,
    /// 0: the Go version has no `Request.Pattern` (< 1.23).
    pub request_pattern: u32,
    pub request_proto_major: u32,
    pub url_path: u32,
    /// 1 once the slot is filled; a uprobe firing on an empty slot does nothing.
    pub valid: u32,
}
assert_layout!(GoHttpOffsets, 24);

/// In-flight request key: the goroutine (`g` in R14) of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InflightKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goroutine: u64,
}
assert_layout!(InflightKey, 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inflight {
    pub start_ns: u64,
    /// `*http.Request`, read again at return (the mux sets `Pattern` during the call).
    pub request: u64,
    /// First status passed to `(*response).WriteHeader`; 0 = none yet.
    pub status: u32,
    /// `flags::PANICKED` once `runtime.gopanic` ran on this goroutine during the request.
    pub flags: u32,
    /// `HTTP_OFFSETS` slot of the binary.
    pub slot: u32,
    pub _pad: u32,
}
assert_layout!(Inflight, 32);

pub mod flags {
    /// The handler panicked (the request ended without a return from ServeHTTP).
    pub const PANICKED: u16 = 1;
    /// The request never returned from ServeHTTP (its connection goroutine ended first).
    pub const ABORTED: u16 = 2;
    /// `route` holds `Request.Pattern` rather than the URL path.
    pub const PATTERN: u16 = 4;
    /// HTTP/2 (ProtoMajor 2): status is not observed on that path, see `unobserved`.
    pub const HTTP2: u16 = 8;
    /// The path was longer than `ROUTE_MAX` and is cut.
    pub const TRUNCATED: u16 = 16;
}

pub const METHOD_MAX: usize = 8;
pub const ROUTE_MAX: usize = 128;

/// One finished request (ring buffer).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpEvent {
    pub header: EventHeader,
    pub tgid: u32,
    /// HTTP status; 0 when none was written (net/http then sends 200) or unobserved.
    pub status: u16,
    pub flags: u16,
    /// cgroup of the serving task (process context: the current task is right).
    pub cgroup_id: u64,
    pub duration_ns: u64,
    pub method: [u8; METHOD_MAX],
    pub method_len: u8,
    pub _pad1: u8,
    pub route_len: u16,
    pub _pad2: u32,
    pub route: [u8; ROUTE_MAX],
}
assert_layout!(HttpEvent, 184);

impl Default for HttpEvent {
    fn default() -> Self {
        Self {
            header: EventHeader::default(),
            tgid: 0,
            status: 0,
            flags: 0,
            cgroup_id: 0,
            duration_ns: 0,
            method: [0; METHOD_MAX],
            method_len: 0,
            _pad1: 0,
            route_len: 0,
            _pad2: 0,
            route: [0; ROUTE_MAX],
        }
    }
}

/// Exact per-owner request counters, kept whether or not the request's record was sampled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpCounts {
    pub requests: u64,
    /// Requests whose record was not emitted (sampling) or could not be (ring buffer full).
    pub unrecorded: u64,
    pub panics: u64,
    pub aborted: u64,
    /// HTTP/2 requests (status not observed on that path).
    pub unobserved: u64,
    /// By status class: index 0 = 1xx … 4 = 5xx (status 0 counts as 200).
    pub by_class: [u64; 5],
}
assert_layout!(HttpCounts, 80);

impl HttpCounts {
    pub fn accumulate(&mut self, o: &Self) {
        let Self {
            requests,
            unrecorded,
            panics,
            aborted,
            unobserved,
            by_class,
        } = o;
        self.requests = self.requests.wrapping_add(*requests);
        self.unrecorded = self.unrecorded.wrapping_add(*unrecorded);
        self.panics = self.panics.wrapping_add(*panics);
        self.aborted = self.aborted.wrapping_add(*aborted);
        self.unobserved = self.unobserved.wrapping_add(*unobserved);
        for (a, b) in self.by_class.iter_mut().zip(by_class) {
            *a = a.wrapping_add(*b);
        }
    }
}

impl_pod!(GoHttpOffsets, InflightKey, Inflight, HttpEvent, HttpCounts);

const _: () = assert!(core::mem::offset_of!(HttpEvent, header) == 0);

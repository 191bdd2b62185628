//! Ring-buffer records: read (reader), copied per drain into batches (batch) for the
//! aggregator, which decodes them at the one checked boundary (decode); exec notices are
//! decoded by the reader and go to Go discovery. Both over bounded channels.

pub mod batch;
pub mod decode;
pub mod kernel_log;
pub mod reader;

/// A decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A process the kernel saw using a socket (first time, or again after 30 s).
    Process {
        tgid: u32,
        cgroup_id: u64,
        comm: String,
    },
    /// A process called execve (candidate for Go instrumentation).
    Exec { tgid: u32 },
    /// One Go net/http request.
    Http(HttpRequest),
    /// One grpc-go server call.
    Grpc(GrpcCall),
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The handler returned; `status` is what was written (200 when nothing was).
    Completed { status: u16 },
    /// The handler panicked.
    Panic,
    /// The request never returned (its connection goroutine ended first).
    Aborted,
    /// HTTP/2: served, but the status is not observed on that path.
    UnobservedProtocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub tgid: u32,
    pub cgroup_id: u64,
    pub duration_ns: u64,
    pub method: String,
    /// `Request.Pattern` when set (`route_is_pattern`), else the URL path (possibly cut).
    pub route: String,
    pub route_is_pattern: bool,
    pub outcome: Outcome,
}

/// One gRPC call as the server ended it (`collector_common::grpc::GrpcEvent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    pub tgid: u32,
    pub cgroup_id: u64,
    pub duration_ns: u64,
    /// The full method, `/pkg.Service/Method` (possibly cut: `truncated`).
    pub method: String,
    pub truncated: bool,
    pub code: u16,
}

impl Event {
    pub const fn kind(&self) -> &'static str {
        match self {
            Event::Process { .. } => "process",
            Event::Exec { .. } => "exec",
            Event::Http(_) => "http",
            Event::Grpc(_) => "grpc",
        }
    }
}

//! Ring-buffer records: read (reader), copied per drain into batches (batch) for the
//! aggregator, which decodes them at the one checked boundary (decode); exec and unseen-server
//! notices are decoded by the reader and go to Go discovery. Both over bounded channels.

pub mod batch;
pub mod decode;
pub mod kernel_log;
pub mod reader;

/// What Go discovery is told: by the reader, a process that exec'd or a server socket the
/// socket parser cannot read; by the aggregator, a process whose requests the socket parser
/// counts (`Served`: its route templates may be learned, `GoHttpProbes::on_served`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    Exec(u32),
    Unseen(UnseenServer),
    Served(collector_common::tcp::OwnerKey),
}

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
    /// A server socket speaks what the socket parser cannot read (Go discovery attaches
    /// uprobes to the Go server behind it, `--go-http-uprobes auto`).
    Unseen(UnseenServer),
    /// A route template a Go server's router (or ServeMux) matched for a plaintext request the
    /// socket parser counted (`collector_common::http::flags::LEARNED`): not a request.
    RouteLearned(LearnedRoute),
}

/// `Event::RouteLearned`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnedRoute {
    pub tgid: u32,
    pub cgroup_id: u64,
    /// As the router or ServeMux holds it (`/items/:id`, `GET /items/{id}`).
    pub template: String,
    /// ServeMux's pattern (`Request.Pattern`) rather than a router's template: a trailing `/`
    /// then matches a subtree.
    pub mux: bool,
}

/// `collector_common::http::unseen::UnseenEvent`, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnseenServer {
    /// The socket's cgroup.
    pub cgroup_id: u64,
    /// The server's local port.
    pub port: u16,
    pub kind: UnseenKind,
}

/// What the server socket received first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnseenKind {
    /// A TLS ClientHello (HTTPS, HTTP/2 over TLS).
    Tls,
    /// HTTP/2's preface in clear text.
    H2c,
}

impl UnseenKind {
    pub const fn code(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::H2c => "h2c",
        }
    }
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
            Event::Unseen(_) => "unseen",
            Event::RouteLearned(_) => "route_learned",
        }
    }
}

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
    /// HTTP/2 responses of net/http's own server (`http2responseWriter`, in
    /// `net/http/internal/http2` since Go 1.27): the hash of the `ResponseWriter`'s dynamic
    /// type as Go stores it in the itab (`itab.hash`, at `ITAB_HASH`), so the writer is read
    /// only when it is that type; 0 when the binary's layout is unknown (HTTP/2 responses are
    /// then `unobserved`).
    pub h2_writer_hash: u32,
    /// Offset of `rws` (`*responseWriterState`) in the writer the interface's data word points at.
    pub h2_writer_rws: u32,
    /// Offset of `status` (an `int`) in the writer state.
    pub h2_rws_status: u32,
    /// 0: empty slot. Otherwise the slot's generation, new each time userspace fills it, so
    /// a request that started under one binary's offsets and ends after the slot was
    /// released (or given to another binary) is recognised (`Inflight::generation`) and
    /// counted without reading memory at offsets that are not its binary's.
    pub valid: u32,
    /// `Request.TLS` (a pointer, nil for plaintext): with `ProtoMajor`, what tells a request
    /// the socket parser cannot read (`cookie::UNSEEN_ONLY`) from one it counts already.
    pub request_tls: u32,
    /// Route learning (`--go-http-uprobes auto`): how many more plaintext HTTP/1.x requests,
    /// left to the socket parser for counting, the probes follow anyway to learn the route
    /// template their router or ServeMux matched (`flags::LEARNED` records, never counted).
    /// Userspace opens a window by setting it and closes it at 0 or after a while; the
    /// kernel takes one per request (atomically: requests run on every CPU).
    pub learn: i64,
}
assert_layout!(GoHttpOffsets, 48);

/// `Inflight::flags`: a gRPC call grpc-go serves through net/http (`(*grpc.Server).ServeHTTP`,
/// marked by the gRPC probes): the RPC family counts it, with its own status code, so net/http's
/// probes leave it (an HTTP/2 POST answered 200 whatever the call's code; counted in both, a
/// verdict would see each call twice and half its error ratio).
pub const INFLIGHT_RPC: u32 = 1 << 17;

/// `Inflight::flags`: a request followed only to learn its route (`GoHttpOffsets::learn`):
/// never counted (the socket parser counts it), ended with a `flags::LEARNED` record or
/// nothing. Above the record flags' 16 bits.
pub const INFLIGHT_LEARN: u32 = 1 << 16;

/// Offset of `hash` (u32) in a Go itab (`runtime.itab`, `internal/abi.ITab` since Go 1.22):
/// after the interface and type pointers in every Go release the uprobes support.
pub const ITAB_HASH: u64 = 16;

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
    /// `bpf_ktime_get_boot_ns` at the start (boot clock, so userspace can tell an entry from
    /// a process that reused its pid: /proc's start times count from boot too).
    pub start_ns: u64,
    /// `*http.Request`, read again at return (the mux sets `Pattern` during the call).
    pub request: u64,
    /// The `ResponseWriter`'s data word (`*http.response` on HTTP/1): a status written by
    /// another goroutine is found through it (`maps::HTTP_STATUS_ASIDE`).
    pub response: u64,
    /// First status passed to `(*response).WriteHeader`; 0 = none yet.
    pub status: u32,
    /// `flags::PANICKED` once `runtime.gopanic` ran on this goroutine during the request.
    pub flags: u32,
    /// `HTTP_OFFSETS` slot of the binary.
    pub slot: u32,
    /// The generation of the link that started it (its cookie's, `crate::cookie`): the
    /// request's offsets are read only while the slot still holds it (`GoHttpOffsets::valid`).
    pub generation: u32,
    /// The `ResponseWriter`'s itab (RBX at `ServeHTTP` entry): which writer type `response`
    /// is, checked before an HTTP/2 status is read through it.
    pub writer_itab: u64,
}
assert_layout!(Inflight, 48);

/// A status written to a request's response from a goroutine other than the one serving it:
/// keyed by the response, picked up when the request ends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseKey {
    pub tgid: u32,
    pub _pad: u32,
    /// `*http.response` (RAX of `(*response).WriteHeader`).
    pub response: u64,
}
assert_layout!(ResponseKey, 16);

pub mod flags {
    /// The handler panicked (the request ended without a return from ServeHTTP).
    pub const PANICKED: u16 = 1;
    /// The request never returned from ServeHTTP (its connection goroutine ended first).
    pub const ABORTED: u16 = 2;
    /// `route` holds `Request.Pattern` rather than the URL path.
    pub const PATTERN: u16 = 4;
    /// HTTP/2 (ProtoMajor 2). Its status is read from net/http's HTTP/2 writer; see `UNOBSERVED`.
    pub const HTTP2: u16 = 8;
    /// The path was longer than `ROUTE_MAX` and is cut.
    pub const TRUNCATED: u16 = 16;
    /// Seen on the wire (`wire` parser): `route` holds raw bytes of the request target (it ends
    /// at the first space or CR; query included), the method is `method_code`.
    pub const WIRE: u16 = 32;
    /// With `WIRE`: `route` holds the start of the start line, method included (the line
    /// began in an earlier segment, only its first bytes were kept).
    pub const WIRE_LINE: u16 = 64;
    /// The status was not observed (`HttpCounts::unobserved`): an HTTP/2 response written by a
    /// writer whose layout is not known — another HTTP/2 server than net/http's own (such as
    /// golang.org/x/net/http2's), or a binary without the writer's offsets.
    pub const UNOBSERVED: u16 = 128;
    /// Not a request to count (the socket parser counted it): the route template (`PATTERN`)
    /// a router or ServeMux matched for one of the workload's plaintext requests, from a
    /// route-learning window (`GoHttpOffsets::learn`). `route` holds the template only.
    pub const LEARNED: u16 = 256;
    /// With `LEARNED`: the template is ServeMux's pattern (`Request.Pattern`), not a router's.
    pub const MUX: u16 = 512;
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
    /// Wire records (`flags::WIRE`): the method's code (index in `wire::METHODS`, 0 = any
    /// other token); `method` is then empty.
    pub method_code: u8,
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
            method_code: 0,
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
    /// Requests whose status could not be observed (`flags::UNOBSERVED`).
    pub unobserved: u64,
    /// By status class: index 0 = 1xx … 4 = 5xx (status 0 counts as 200).
    pub by_class: [u64; 5],
    /// Requests or responses this owner may have had that the socket-level parser could not
    /// follow (a gap in the byte stream it could not skip): loss charged to this owner only.
    pub lost: u64,
}
assert_layout!(HttpCounts, 88);

impl HttpCounts {
    pub fn accumulate(&mut self, o: &Self) {
        let Self {
            requests,
            unrecorded,
            panics,
            aborted,
            unobserved,
            by_class,
            lost,
        } = o;
        self.requests = self.requests.wrapping_add(*requests);
        self.unrecorded = self.unrecorded.wrapping_add(*unrecorded);
        self.panics = self.panics.wrapping_add(*panics);
        self.aborted = self.aborted.wrapping_add(*aborted);
        self.unobserved = self.unobserved.wrapping_add(*unobserved);
        self.lost = self.lost.wrapping_add(*lost);
        for (a, b) in self.by_class.iter_mut().zip(by_class) {
            *a = a.wrapping_add(*b);
        }
    }
}

/// The socket-level HTTP/1.x parser (`collector-ebpf/src/http_wire.rs`): per-connection state
/// kept in `maps::WIRE_CONNS`, the storage of its socket.
/// Server sockets whose traffic the socket parser cannot read: what their first bytes were.
/// The kernel tells userspace once per (cgroup, local port, kind) every `REPEAT_NS`, so the
/// Go servers among them get uprobes (`--go-http-uprobes auto`) that count only such requests.
pub mod unseen {
    use crate::{assert_layout, event::EventHeader, impl_pod};

    /// A TLS ClientHello: HTTPS (or any TLS) served by this socket.
    pub const TLS: u8 = 1;
    /// HTTP/2's connection preface in clear text (h2c with prior knowledge).
    pub const H2C: u8 = 2;

    /// Notices for one (cgroup, port, kind) come at most this often: userspace acts on the
    /// first, the next ones only catch a server restarted as another binary.
    pub const REPEAT_NS: u64 = 10_000_000_000;

    /// `maps::WIRE_UNSEEN` key.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct UnseenKey {
        /// The socket's cgroup (`bpf_skb_cgroup_id`).
        pub cgroup_id: u64,
        /// The socket's local port (the server's), host order.
        pub port: u16,
        pub kind: u8,
        pub _pad: [u8; 5],
    }
    assert_layout!(UnseenKey, 16);

    /// Ring record `EventKind::Unseen`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct UnseenEvent {
        pub header: EventHeader,
        pub key: UnseenKey,
    }
    assert_layout!(UnseenEvent, 32);
    impl_pod!(UnseenEvent);
}

pub mod wire {
    use crate::{assert_layout, tcp::OwnerKey};

    /// Requests a connection may have waiting for their responses (HTTP/1.1 pipelining). A
    /// power of two: slots are indexed by `count % PIPELINE`.
    pub const PIPELINE: u32 = 8;
    /// Bytes of the current line kept across segments: enough for the method and the start
    /// of the target, a status line, `Content-Length: <16 digits>` and
    /// `Transfer-Encoding: gzip, deflate, chunked`. A power of two: the kernel side masks
    /// every index with `LINE_MAX - 1`, which is what the verifier can follow.
    pub const LINE_MAX: usize = 64;
    /// Bytes of a segment scanned per window (one tail call each).
    pub const WINDOW: usize = 256;

    /// Parser states of one direction.
    pub mod state {
        /// Between messages: the next byte starts a request (rx) or a response (tx).
        pub const START: u8 = 0;
        /// Not known where a message starts (connection predates us, or bytes were lost):
        /// waiting for a segment that begins with a request line or a status line.
        pub const UNSYNCED: u8 = 1;
        /// Reading the head (start line and header lines).
        pub const HEAD: u8 = 2;
        /// Body of known length: `remaining` bytes left.
        pub const BODY_LEN: u8 = 3;
        /// A chunk-size line of a chunked body.
        pub const CHUNK_SIZE: u8 = 4;
        /// Chunk data plus its CRLF: `remaining` bytes left.
        pub const CHUNK_DATA: u8 = 5;
        /// Trailer lines after the last chunk, up to an empty line.
        pub const TRAILER: u8 = 6;
        /// A response body delimited by the connection's end.
        pub const BODY_CLOSE: u8 = 7;
        /// Not (or no longer) HTTP/1.x on this connection: TLS, an upgrade, garbage.
        pub const OFF: u8 = 8;
    }

    /// `WireHalf::msg` flags of the message being read.
    pub mod msg {
        /// `Transfer-Encoding: …chunked`.
        pub const CHUNKED: u8 = 1;
        /// A `Content-Length` header was read.
        pub const LENGTH: u8 = 2;
        /// The current line is longer than `LINE_MAX` (only its start is kept).
        pub const LONG_LINE: u8 = 4;
        /// rx: the request is sampled; its target waits in `WIRE_TARGETS` (or, with
        /// `INLINE_TARGET`, in `WireConn::target`).
        pub const SAMPLED: u8 = 8;
        /// rx: with `SAMPLED`, the target is in `WireConn::target` instead.
        pub const INLINE_TARGET: u8 = 16;
    }

    /// `WireSlot::flags`.
    pub mod slot {
        /// A HEAD request: its response has no body whatever its headers say.
        pub const HEAD_METHOD: u8 = 1;
        /// A record is emitted for this request; its target waits in `WIRE_TARGETS` (or, with
        /// `INLINE_TARGET`, in `WireConn::target`).
        pub const SAMPLED: u8 = 2;
        /// With `SAMPLED`: the target is in `WireConn::target`.
        pub const INLINE_TARGET: u8 = 4;
    }

    /// `WireConn::flags`.
    pub mod conn {
        /// Switched protocols (101, or a 2xx to CONNECT): not parsed any more.
        pub const UPGRADED: u32 = 2;
        /// Requests arrived on this connection: the socket is a server's.
        pub const SERVER: u32 = 4;
    }

    /// One direction's parser.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct WireHalf {
        /// Sequence number of the first byte not yet parsed.
        pub next_seq: u32,
        /// Body or chunk bytes left in `BODY_LEN` / `CHUNK_DATA`; while a head is read, its
        /// `Content-Length` (saturating at `u32::MAX`: larger bodies are not framed).
        pub remaining: u32,
        /// Sequence number of the current head's first byte.
        pub head_seq: u32,
        pub state: u8,
        /// Length of the current line so far, saturating at 255.
        pub line_len: u8,
        /// 1 while reading a head's start line.
        pub first_line: u8,
        /// `msg` flags of the current message.
        pub msg: u8,
        /// tx: status of the response being read.
        pub status: u16,
        /// rx: method code of the request being read (index in `METHODS`).
        pub method: u8,
        pub _pad: u8,
        pub _pad2: u32,
        /// rx: when the current request's first byte arrived.
        pub start_ns: u64,
        /// Start of the current line.
        pub line: [u8; LINE_MAX],
        /// Where the parser's word-wide stores past `line`'s end land (never read).
        pub line_slack: [u8; 8],
    }
    assert_layout!(WireHalf, 104);

    impl WireHalf {
        pub const NEW: Self = Self {
            next_seq: 0,
            remaining: 0,
            head_seq: 0,
            state: state::UNSYNCED,
            line_len: 0,
            first_line: 0,
            msg: 0,
            status: 0,
            method: 0,
            _pad: 0,
            _pad2: 0,
            start_ns: 0,
            line: [0; LINE_MAX],
            line_slack: [0; 8],
        };
    }

    /// A request waiting for (the end of) its response.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct WireSlot {
        /// When the request's first byte arrived.
        pub start_ns: u64,
        pub method: u8,
        /// `slot` flags.
        pub flags: u8,
        pub _pad: [u8; 2],
        /// The request's index (`WireConn::head` when it was queued). A request queued behind
        /// `PIPELINE` others gets no slot: its index's slot still holds an earlier request's,
        /// which this tells apart.
        pub index: u32,
    }
    assert_layout!(WireSlot, 16);

    /// A connection's state: written by the ingress program (`rx`, `head`) and the egress
    /// program (`tx`, `tail`) — each field by one side only, so no lock is needed.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct WireConn {
        /// Requests (ingress on a server socket).
        pub rx: WireHalf,
        /// Responses (egress on a server socket).
        pub tx: WireHalf,
        /// Requests whose head was read (written by ingress).
        pub head: u32,
        /// Requests whose response ended (written by egress). `head - tail` are pending.
        pub tail: u32,
        /// Who is charged: the socket's cgroup, and the owning process once known.
        pub owner: OwnerKey,
        /// The socket's cookie (`bpf_get_socket_cookie`), read once when the connection is
        /// first followed: it keys `WIRE_TARGETS` and tells tail-called segments apart, and
        /// the helper call cost ~30 ns in each of the server's two runs per request.
        pub cookie: u64,
        /// `conn` flags.
        pub flags: u32,
        /// Requests counted as answered (response head seen): `answered - tail` responses are
        /// in their body. Written by egress.
        pub answered: u32,
        pub slots: [WireSlot; PIPELINE as usize],
        /// The target of a sampled request that arrived alone in the queue (`head == tail`:
        /// the unpipelined common case), kept here rather than in `WIRE_TARGETS`: an LRU
        /// insert, lookup and delete less per request. Written by ingress only while the
        /// queue is empty; egress advances `tail` only after reading it.
        pub target: Target,
    }
    assert_layout!(WireConn, 512);

    /// Key of a sampled request's target while it waits for its response.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct TargetKey {
        pub cookie: u64,
        /// The request's number on its connection (`WireConn::head` when it was read).
        pub index: u32,
        pub _pad: u32,
    }
    assert_layout!(TargetKey, 16);

    /// A sampled request's raw target, waiting for its response.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Target {
        /// Bytes of `bytes` that are valid.
        pub len: u16,
        /// `TARGET_LINE`: `bytes` is the start of the start line (method included), because
        /// the line began in an earlier segment; else the bytes after "METHOD ".
        pub flags: u16,
        pub _pad: u32,
        /// Raw bytes as sent; the target ends at the first space or CR (found in userspace).
        pub bytes: [u8; crate::http::ROUTE_MAX],
    }
    assert_layout!(Target, 136);

    /// `Target::flags`
    pub const TARGET_LINE: u16 = 1;

    /// Per-CPU scratch of the parser (`WIRE_SCRATCH`: 0 ingress, 1 egress, 2 targets): the
    /// window being scanned, and how many invocations the current segment has used.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct WireScratch {
        /// Socket and segment `calls` belongs to.
        pub cookie: u64,
        pub seq: u32,
        pub calls: u32,
        /// The parser's cursor between steps, kept in memory on purpose: the verifier does
        /// not track map memory, so every step starts from the same abstract state and its
        /// paths are pruned instead of multiplied (see `http_wire::parse`).
        pub pos: u32,
        /// Payload offsets [win_start, win_start + win_len) are loaded in `buf`.
        pub win_start: u32,
        pub win_len: u32,
        /// What the scan stopped at: the steps' result (written by the `bpf_loop` callback),
        /// and on egress what the action program (`WIRE_PROG_ACTION`) acts on.
        pub stop: u32,
        /// The line scan's index in `buf` (kept in memory for the same reason as `pos`).
        pub scan: u32,
        /// The segment being parsed (`cookie`, `seq` above), handed to the action program so
        /// it does not read the packet's headers again: where its payload starts, its length
        /// and TCP flags.
        pub seg_off: u32,
        pub seg_len: u32,
        pub seg_flags: u32,
        /// Running value of a number being parsed (kept in memory for the same reason).
        pub acc: u64,
        pub buf: [u8; WINDOW],
    }
    assert_layout!(WireScratch, 312);

    /// Method codes: index in `METHODS`; 0 is any other token.
    pub const METHODS: [&[u8]; 10] = [
        b"_OTHER", b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
        b"PATCH",
    ];
    pub const METHOD_HEAD: u8 = 2;
    pub const METHOD_CONNECT: u8 = 6;
}

impl_pod!(
    GoHttpOffsets,
    InflightKey,
    Inflight,
    ResponseKey,
    HttpEvent,
    HttpCounts,
    wire::WireConn,
    wire::TargetKey,
    wire::Target,
    wire::WireScratch
);

const _: () = assert!(core::mem::offset_of!(HttpEvent, header) == 0);

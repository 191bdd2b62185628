//! grpc-go servers, instrumented with uprobes (opt-in: `--go-grpc-uprobes all`).
//!
//! The binary analysis (ELF, build info, `.symtab`/`.gopclntab`, entry checks, RET decoding)
//! is `probes::go_http`'s, reused as is; this module picks the gRPC functions, finds the struct
//! offsets (`offsets`) and attaches, once per executable file (`attach`). Kernel side:
//! `collector-ebpf/src/grpc.rs`; two traps per RPC, whichever transport serves it.

pub mod attach;
pub mod offsets;

/// Per-stream handler: its entry starts an RPC. Both transports hand every stream to it
/// (`serveStreams`, which `Serve` and `ServeHTTP` share).
pub const HANDLE_STREAM: &str = "google.golang.org/grpc.(*Server).handleStream";

/// grpc-go's own HTTP/2 transport (`(*grpc.Server).Serve`).
pub const NATIVE: Transport = Transport {
    name: "grpc",
    write_status: [
        "google.golang.org/grpc/internal/transport.(*http2Server).writeStatus",
        "google.golang.org/grpc/internal/transport.(*http2Server).WriteStatus",
    ],
};

/// The transport of a grpc.Server mounted in a net/http server (`(*grpc.Server).ServeHTTP`,
/// one `serverHandlerTransport` per HTTP/2 request). Its status write takes the same
/// arguments, and its streams are the same types, as the native one's.
pub const HANDLER: Transport = Transport {
    name: "net/http",
    write_status: [
        "google.golang.org/grpc/internal/transport.(*serverHandlerTransport).writeStatus",
        "google.golang.org/grpc/internal/transport.(*serverHandlerTransport).WriteStatus",
    ],
};

/// A server transport of grpc-go and its status write, where an RPC ends.
#[derive(Clone, Copy, Debug)]
pub struct Transport {
    /// How the discovery state (`attach::Instrumented`) and the log name it.
    pub name: &'static str,
    /// The status write, newest name first: since grpc-go 1.69 the stream is a
    /// `*ServerStream` and the exported `(*ServerStream).WriteStatus` an inlined wrapper of
    /// the transport's unexported `writeStatus`; up to 1.68 the transport's `WriteStatus`
    /// takes the `*Stream`. Index 0 is the new layout.
    pub write_status: [&'static str; 2],
}

/// Every transport the probes know, in attach order.
pub const TRANSPORTS: [Transport; 2] = [NATIVE, HANDLER];

/// The gRPC health checking service: what Kubernetes gRPC probes call. A probe path, kept
/// apart from real traffic.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`); `None` for anything else.
pub fn split_method(full: &str) -> Option<(&str, &str)> {
    let rest = full.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service, method))
}

/// Names of gRPC status codes (`rpc.grpc.status_code` is the number; the name helps readers).
pub fn code_name(code: u16) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "_OTHER",
    }
}

/// A status code from its name (`UNAVAILABLE`, any case) or number (0–16).
pub fn parse_code(s: &str) -> Option<u16> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u16>() {
        return (n <= 16).then_some(n);
    }
    (0..=16).find(|c| code_name(*c).eq_ignore_ascii_case(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_split_into_service_and_method() {
        assert_eq!(
            split_method("/grpctest.Echo/Say"),
            Some(("grpctest.Echo", "Say"))
        );
        assert_eq!(
            split_method("/grpc.health.v1.Health/Check"),
            Some(("grpc.health.v1.Health", "Check"))
        );
        for bad in ["", "/", "//", "/a/", "//b", "a/b", "/a/b/c"] {
            assert_eq!(split_method(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn codes_by_name_or_number() {
        assert_eq!(parse_code("UNAVAILABLE"), Some(14));
        assert_eq!(parse_code("deadline_exceeded"), Some(4));
        assert_eq!(parse_code(" 13 "), Some(13));
        assert_eq!(parse_code("0"), Some(0));
        for bad in ["17", "-1", "", "_OTHER", "UNAVAILABLE2"] {
            assert_eq!(parse_code(bad), None, "{bad:?}");
        }
    }
}

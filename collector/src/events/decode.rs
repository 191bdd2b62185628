//! The one place raw ring-buffer bytes become typed values. Short, unknown or malformed records
//! become a `DecodeError` (counted by the caller), never a panic.

use collector_common::{
    event::{EVENT_VERSION, EventHeader, EventKind},
    http::{HttpEvent, METHOD_MAX, ROUTE_MAX, flags, wire},
    process::{ExecEvent, ProcessEvent},
};

use super::{Event, GrpcCall, HttpRequest, LearnedRoute, Outcome, UnseenKind, UnseenServer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte layout")]
    Short { len: usize, need: usize },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u16 },
    #[error("record version {version} not understood (expected {EVENT_VERSION})")]
    Version { version: u16 },
    #[error("field {field} out of range: {value}")]
    Range { field: &'static str, value: u64 },
}

impl DecodeError {
    /// Bounded label value for metrics.
    pub const fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "short",
            DecodeError::UnknownKind { .. } => "unknown_kind",
            DecodeError::Version { .. } => "version",
            DecodeError::Range { .. } => "range",
        }
    }
}

/// Copies a `T` out of the front of `bytes` after checking the length.
fn read<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: length checked above; T is Pod (any bit pattern valid); read_unaligned because
    // ring-buffer data is only 8-byte aligned and `bytes` may be a sub-slice in tests.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The record's kind, from its header alone (the reader routes exec notices by it); None for
/// a record too short for a header or of an unknown kind, which `decode` then rejects.
pub fn kind_of(bytes: &[u8]) -> Option<EventKind> {
    let header: EventHeader = read(bytes).ok()?;
    EventKind::from_raw(header.kind)
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader = read(bytes)?;
    let kind =
        EventKind::from_raw(header.kind).ok_or(DecodeError::UnknownKind { kind: header.kind })?;
    if header.version != EVENT_VERSION {
        return Err(DecodeError::Version {
            version: header.version,
        });
    }
    match kind {
        EventKind::Exec => {
            let ev: ExecEvent = read(bytes)?;
            Ok(Event::Exec { tgid: ev.tgid })
        }
        EventKind::Unseen => {
            let ev: collector_common::http::unseen::UnseenEvent = read(bytes)?;
            let kind = match ev.key.kind {
                collector_common::http::unseen::TLS => UnseenKind::Tls,
                collector_common::http::unseen::H2C => UnseenKind::H2c,
                other => {
                    return Err(DecodeError::Range {
                        field: "unseen_kind",
                        value: u64::from(other),
                    });
                }
            };
            Ok(Event::Unseen(UnseenServer {
                cgroup_id: ev.key.cgroup_id,
                port: ev.key.port,
                kind,
            }))
        }
        EventKind::Grpc => {
            let ev: collector_common::grpc::GrpcEvent = read(bytes)?;
            let n = ev
                .method
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(ev.method.len());
            Ok(Event::Grpc(GrpcCall {
                tgid: ev.tgid,
                cgroup_id: ev.cgroup_id,
                duration_ns: ev.duration_ns,
                method: String::from_utf8_lossy(&ev.method[..n]).into_owned(),
                truncated: ev.flags & collector_common::grpc::flags::TRUNCATED != 0,
                code: ev.code,
            }))
        }
        EventKind::Http => {
            let ev: HttpEvent = read(bytes)?;
            let (ml, rl) = (ev.method_len as usize, ev.route_len as usize);
            if ml > METHOD_MAX {
                return Err(DecodeError::Range {
                    field: "method_len",
                    value: ml as u64,
                });
            }
            if rl > ROUTE_MAX {
                return Err(DecodeError::Range {
                    field: "route_len",
                    value: rl as u64,
                });
            }
            let outcome = if ev.flags & flags::PANICKED != 0 {
                Outcome::Panic
            } else if ev.flags & flags::ABORTED != 0 {
                Outcome::Aborted
            } else if ev.flags & flags::UNOBSERVED != 0 {
                Outcome::UnobservedProtocol
            } else {
                // net/http sends 200 when the handler wrote nothing.
                Outcome::Completed {
                    status: if ev.status == 0 { 200 } else { ev.status },
                }
            };
            let raw = String::from_utf8_lossy(&ev.route[..rl]);
            if ev.flags & flags::LEARNED != 0 {
                return Ok(Event::RouteLearned(LearnedRoute {
                    tgid: ev.tgid,
                    cgroup_id: ev.cgroup_id,
                    template: raw.into_owned(),
                    mux: ev.flags & flags::MUX != 0,
                }));
            }
            let (method, route) = if ev.flags & flags::WIRE != 0 {
                // Raw bytes from the wire: the target ends at the first space or line end;
                // `WIRE_LINE` records hold the start line itself, method first.
                let line = raw.split(['\r', '\n']).next().unwrap_or_default();
                let target = if ev.flags & flags::WIRE_LINE != 0 {
                    line.split(' ').nth(1).unwrap_or_default()
                } else {
                    line.split(' ').next().unwrap_or_default()
                };
                let method = wire::METHODS
                    .get(usize::from(ev.method_code))
                    .map_or("_OTHER", |m| std::str::from_utf8(m).unwrap_or("_OTHER"));
                (method.to_string(), target_path(target).to_string())
            } else {
                (
                    String::from_utf8_lossy(&ev.method[..ml]).into_owned(),
                    raw.into_owned(),
                )
            };
            Ok(Event::Http(HttpRequest {
                tgid: ev.tgid,
                cgroup_id: ev.cgroup_id,
                duration_ns: ev.duration_ns,
                method,
                route,
                route_is_pattern: ev.flags & flags::PATTERN != 0,
                outcome,
            }))
        }
        EventKind::Process => {
            let ev: ProcessEvent = read(bytes)?;
            let len = ev
                .comm
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(ev.comm.len());
            Ok(Event::Process {
                tgid: ev.tgid,
                cgroup_id: ev.cgroup_id,
                comm: String::from_utf8_lossy(&ev.comm[..len]).into_owned(),
            })
        }
    }
}

/// The path of a request target as sent on the wire (RFC 9112 §3.2): origin form
/// `/p?q` → `/p`; absolute form `http://host/p?q` → `/p`; `*` and authority form (CONNECT)
/// stay as they are.
pub fn target_path(target: &str) -> &str {
    let t = target.split(['?', '#']).next().unwrap_or_default();
    if t.starts_with('/') {
        return t;
    }
    match t.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: T is Pod, reading its bytes is fine.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn process_event() -> ProcessEvent {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"nginx");
        ProcessEvent {
            header: EventHeader {
                kind: EventKind::Process as u16,
                version: EVENT_VERSION,
                _pad: 0,
                ts_ns: 5,
            },
            tgid: 77,
            _pad: 0,
            cgroup_id: 1234,
            comm,
        }
    }

    #[test]
    fn wire_targets_become_paths() {
        for (target, want) in [
            ("/items/42?x=1", "/items/42"),
            ("/", "/"),
            ("http://example.com/a/b?c", "/a/b"),
            ("http://example.com", "/"),
            ("*", "*"),
            ("example.com:443", "example.com:443"),
            ("/p#frag", "/p"),
        ] {
            assert_eq!(target_path(target), want, "{target}");
        }
        let mut ev = http_event(200, flags::WIRE, "/ok?verbose=1 HTTP/1.1\r\nHost: x");
        ev.status = 503;
        ev.method_code = 3;
        let Event::Http(r) = decode(&bytes_of(&ev)).expect("valid") else {
            panic!("not http")
        };
        assert_eq!(
            (r.method.as_str(), r.route.as_str(), r.outcome),
            ("POST", "/ok", Outcome::Completed { status: 503 })
        );
        // A start line that began in an earlier segment: only its kept start, method first.
        let mut ev = http_event(200, flags::WIRE | flags::WIRE_LINE, "GET /a/b?c HTTP/1.1");
        ev.method_code = 1;
        let Event::Http(r) = decode(&bytes_of(&ev)).expect("valid") else {
            panic!("not http")
        };
        assert_eq!((r.method.as_str(), r.route.as_str()), ("GET", "/a/b"));
        // An unknown method code is _OTHER, never an index out of bounds.
        let mut ev = http_event(200, flags::WIRE, "/");
        ev.method_code = 200;
        let Event::Http(r) = decode(&bytes_of(&ev)).expect("valid") else {
            panic!("not http")
        };
        assert_eq!(r.method, "_OTHER");
    }

    /// Catches: a learned route taken for a request (counted, a 200 made up), or ServeMux's
    /// flag lost (its subtrees then matched as exact paths).
    #[test]
    fn learned_routes_are_no_requests() {
        let ev = http_event(
            0,
            flags::LEARNED | flags::PATTERN | flags::MUX,
            "GET /items/{id}",
        );
        assert_eq!(
            decode(&bytes_of(&ev)).expect("valid"),
            Event::RouteLearned(LearnedRoute {
                tgid: ev.tgid,
                cgroup_id: ev.cgroup_id,
                template: "GET /items/{id}".into(),
                mux: true,
            })
        );
        let ev = http_event(0, flags::LEARNED | flags::PATTERN, "/items/:id");
        let Event::RouteLearned(l) = decode(&bytes_of(&ev)).expect("valid") else {
            panic!("not a learned route")
        };
        assert_eq!((l.template.as_str(), l.mux), ("/items/:id", false));
    }

    /// Catches: a kind byte taken as it comes (a TLS notice read as h2c, an unknown kind
    /// attaching uprobes), a port or cgroup read from the wrong place.
    #[test]
    fn unseen_notices_decode_with_checked_kinds() {
        use collector_common::http::unseen::{self, UnseenEvent, UnseenKey};
        let ev = |kind| UnseenEvent {
            header: EventHeader {
                kind: EventKind::Unseen as u16,
                version: EVENT_VERSION,
                _pad: 0,
                ts_ns: 1,
            },
            key: UnseenKey {
                cgroup_id: 4242,
                port: 8443,
                kind,
                _pad: [0; 5],
            },
        };
        for (raw, kind) in [
            (unseen::TLS, UnseenKind::Tls),
            (unseen::H2C, UnseenKind::H2c),
        ] {
            assert_eq!(
                decode(&bytes_of(&ev(raw))),
                Ok(Event::Unseen(UnseenServer {
                    cgroup_id: 4242,
                    port: 8443,
                    kind
                }))
            );
        }
        assert_eq!(
            decode(&bytes_of(&ev(9))).map_err(|e| e.reason()),
            Err("range")
        );
        assert_eq!(
            decode(&bytes_of(&ev(unseen::TLS))[..24]).map_err(|e| e.reason()),
            Err("short")
        );
    }

    #[test]
    fn decodes_process_event() {
        let ev = decode(&bytes_of(&process_event())).expect("valid record");
        assert_eq!(
            ev,
            Event::Process {
                tgid: 77,
                cgroup_id: 1234,
                comm: "nginx".into()
            }
        );
    }

    #[test]
    fn full_comm_without_nul_and_invalid_utf8() {
        let mut e = process_event();
        e.comm = [0xff; 16];
        let Ok(Event::Process { comm, .. }) = decode(&bytes_of(&e)) else {
            panic!("a process record")
        };
        assert_eq!(comm.chars().count(), 16, "lossy, not rejected");
    }

    #[test]
    fn grpc_records_decode_with_their_method() {
        use collector_common::grpc::{GRPC_METHOD_MAX, GrpcEvent, flags as gflags};
        let mut ev = GrpcEvent {
            header: EventHeader {
                kind: EventKind::Grpc as u16,
                version: EVENT_VERSION,
                _pad: 0,
                ts_ns: 1,
            },
            tgid: 7,
            code: 14,
            flags: 0,
            cgroup_id: 9,
            duration_ns: 1_500,
            method: [0; GRPC_METHOD_MAX],
        };
        let m = b"/pkg.Svc/Do";
        ev.method[..m.len()].copy_from_slice(m);
        let Event::Grpc(c) = decode(&bytes_of(&ev)).expect("valid") else {
            panic!("not gRPC");
        };
        assert_eq!(
            c,
            GrpcCall {
                tgid: 7,
                cgroup_id: 9,
                duration_ns: 1_500,
                method: "/pkg.Svc/Do".into(),
                truncated: false,
                code: 14,
            }
        );
        // A name filling the whole field (cut by the kernel) has no NUL: all of it, flagged.
        ev.method = [b'a'; GRPC_METHOD_MAX];
        ev.flags = gflags::TRUNCATED;
        let Event::Grpc(c) = decode(&bytes_of(&ev)).expect("valid") else {
            panic!("not gRPC");
        };
        assert_eq!(c.method.len(), GRPC_METHOD_MAX);
        assert!(c.truncated);
        // Short records are rejected, not read past.
        let bytes = bytes_of(&ev);
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }

    fn http_event(status: u16, f: u16, route: &str) -> HttpEvent {
        let mut e = HttpEvent {
            header: EventHeader {
                kind: EventKind::Http as u16,
                version: EVENT_VERSION,
                _pad: 0,
                ts_ns: 1,
            },
            tgid: 9,
            status,
            flags: f,
            cgroup_id: 3,
            duration_ns: 1500,
            method_len: 3,
            route_len: route.len() as u16,
            ..Default::default()
        };
        e.method[..3].copy_from_slice(b"GET");
        e.route[..route.len()].copy_from_slice(route.as_bytes());
        e
    }

    #[test]
    fn decodes_http_outcomes() {
        let Event::Http(r) = decode(&bytes_of(&http_event(0, 0, "/ok"))).expect("valid") else {
            panic!()
        };
        assert_eq!(
            (r.method.as_str(), r.route.as_str(), r.outcome),
            ("GET", "/ok", Outcome::Completed { status: 200 })
        );
        assert_eq!(r.duration_ns, 1500);
        let Event::Http(r) = decode(&bytes_of(&http_event(
            503,
            flags::PATTERN,
            "GET /items/{id}",
        )))
        .expect("valid") else {
            panic!()
        };
        assert!(r.route_is_pattern);
        assert_eq!(r.outcome, Outcome::Completed { status: 503 });
        for (f, want) in [
            (flags::PANICKED | flags::ABORTED, Outcome::Panic),
            (flags::ABORTED, Outcome::Aborted),
            (
                flags::HTTP2 | flags::UNOBSERVED,
                Outcome::UnobservedProtocol,
            ),
            (flags::UNOBSERVED, Outcome::UnobservedProtocol),
            // HTTP/2 with its status read from net/http's writer.
            (flags::HTTP2, Outcome::Completed { status: 200 }),
        ] {
            let Event::Http(r) = decode(&bytes_of(&http_event(0, f, "/"))).expect("valid") else {
                panic!()
            };
            assert_eq!(r.outcome, want);
        }
        let mut bad = http_event(200, 0, "/x");
        bad.route_len = 500;
        assert_eq!(
            decode(&bytes_of(&bad)).expect_err("range").reason(),
            "range"
        );
        let mut bad = http_event(200, 0, "/x");
        bad.method_len = 9;
        assert!(decode(&bytes_of(&bad)).is_err());
        let good = bytes_of(&http_event(200, 0, "/x"));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(DecodeError::Short { .. })
        ));
    }

    #[test]
    fn malformed_records_are_errors() {
        let good = bytes_of(&process_event());
        for len in 0..good.len() {
            let err = decode(&good[..len]).expect_err("truncated");
            assert!(
                matches!(err, DecodeError::Short { .. }),
                "len {len}: {err:?}"
            );
        }
        let mut unknown = good.clone();
        unknown[0] = 0xee;
        assert_eq!(
            decode(&unknown),
            Err(DecodeError::UnknownKind { kind: 0xee })
        );
        let mut version = good.clone();
        version[2] = 9;
        assert_eq!(decode(&version), Err(DecodeError::Version { version: 9 }));
        assert_eq!(decode(&[]).expect_err("empty").reason(), "short");
    }
}

//! Where the gRPC uprobes find the method (in the server's stream) and the status code (in a
//! `*status.Status`): from the binary's DWARF when present, else from the committed table row of
//! its grpc-go minor (`offsets_table.json`, written by `cargo xtask grpc-offsets` from what the
//! test server finds by reflection on real values, tests/go/grpc/server). The grpc-go version
//! comes from the build info's `dep` lines. Both server transports (grpc-go's, net/http's
//! through `ServeHTTP`) build the same stream types, so one set of offsets serves both status
//! writes; the generator checks it on live streams of each.

use std::sync::OnceLock;

use collector_common::grpc::{GrpcOffsets, NO_DEREF};
use serde::Deserialize;

use crate::probes::go_http::{
    GoBinary,
    offsets::{OffsetsError, StructInfo, dwarf_structs},
};

pub const GRPC_MODULE: &str = "google.golang.org/grpc";
const STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
const SERVER_STREAM: &str = "google.golang.org/grpc/internal/transport.ServerStream";
const STATUS: &str = "google.golang.org/grpc/internal/status.Status";
const PROTO_STATUS: &str = "google.golang.org/genproto/googleapis/rpc/status.Status";

const TABLE_JSON: &str = include_str!("offsets_table.json");

#[derive(Debug, thiserror::Error)]
pub enum GrpcOffsetsError {
    #[error("DWARF: {0}")]
    Dwarf(#[from] OffsetsError),
    #[error("DWARF layout: {0}")]
    Layout(String),
    #[error("no {GRPC_MODULE} in the build info's dependencies")]
    NoVersion,
    #[error(
        "no offsets for grpc-go {0} (the table covers {1}); build with DWARF or regenerate the table"
    )]
    NotInTable(String, String),
    #[error("offsets table: {0}")]
    Table(String),
}

/// Where the offsets came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Dwarf,
    Table { grpc: String },
}

/// The offsets for `bin`; `new_layout`: the binary writes statuses through
/// `(*http2Server).writeStatus`, whose stream is a `*ServerStream`.
pub fn offsets_for(
    bin: &GoBinary,
    new_layout: bool,
) -> Result<(GrpcOffsets, Source), GrpcOffsetsError> {
    if let Some(o) = from_dwarf(bin, new_layout)? {
        return Ok((o, Source::Dwarf));
    }
    let version = grpc_version(bin).ok_or(GrpcOffsetsError::NoVersion)?;
    let o = from_table(version)?;
    Ok((
        o,
        Source::Table {
            grpc: version.to_owned(),
        },
    ))
}

/// The grpc-go version the binary was built with.
pub fn grpc_version(bin: &GoBinary) -> Option<&str> {
    bin.deps
        .iter()
        .find(|(p, _)| p == GRPC_MODULE)
        .map(|(_, v)| v.as_str())
}

fn member(s: &StructInfo, name: &str, ty: &str, size: u64) -> Result<u32, GrpcOffsetsError> {
    let m = s
        .members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| GrpcOffsetsError::Layout(format!("{} has no member {name}", s.name)))?;
    if m.type_name != ty {
        return Err(GrpcOffsetsError::Layout(format!(
            "{}.{name} is {}, expected {ty}",
            s.name, m.type_name
        )));
    }
    if m.offset.checked_add(size).is_none_or(|end| end > s.size) {
        return Err(GrpcOffsetsError::Layout(format!(
            "{}.{name} at {} does not fit in {} bytes",
            s.name, m.offset, s.size
        )));
    }
    u32::try_from(m.offset)
        .map_err(|_| GrpcOffsetsError::Layout(format!("{}.{name} offset too large", s.name)))
}

fn from_dwarf(bin: &GoBinary, new_layout: bool) -> Result<Option<GrpcOffsets>, GrpcOffsetsError> {
    let mut specs: Vec<(&'static str, &[&str])> = vec![
        (STREAM, &["method"]),
        (STATUS, &["s"]),
        (PROTO_STATUS, &["Code"]),
    ];
    if new_layout {
        specs.push((SERVER_STREAM, &["Stream"]));
    }
    let Some(found) = dwarf_structs(&bin.path, (bin.dev, bin.ino), &specs)? else {
        return Ok(None);
    };
    let [stream, status, proto, rest @ ..] = found.as_slice() else {
        return Err(GrpcOffsetsError::Layout("struct lookup".into()));
    };
    let method = member(stream, "method", "string", 16)?;
    let mut stream_method = method;
    let mut stream_ptr = NO_DEREF;
    if let Some(server_stream) = rest.first() {
        // `Stream` embedded by value, or `*Stream` (a pointer to follow).
        match member(server_stream, "Stream", STREAM, stream.size) {
            Ok(base) => stream_method = base + method,
            Err(_) => stream_ptr = member(server_stream, "Stream", &format!("*{STREAM}"), 8)?,
        }
    }
    Ok(Some(GrpcOffsets {
        stream_method,
        status_proto: member(status, "s", &format!("*{PROTO_STATUS}"), 8)?,
        proto_code: member(proto, "Code", "int32", 4)?,
        valid: 0,
        stream_ptr,
        _pad: 0,
    }))
}

/// One row of `offsets_table.json`: what tests/go/grpc/server -print-offsets printed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRow {
    pub grpc_minor: String,
    pub grpc: String,
    pub go: String,
    pub genproto_rpc: String,
    pub stream_type: String,
    pub stream_ptr: Option<u32>,
    pub stream_method: u32,
    pub status_proto: u32,
    pub proto_code: u32,
}

pub fn table() -> Result<&'static [TableRow], GrpcOffsetsError> {
    static TABLE: OnceLock<Result<Vec<TableRow>, String>> = OnceLock::new();
    TABLE
        .get_or_init(|| serde_json::from_str(TABLE_JSON).map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| GrpcOffsetsError::Table(e.clone()))
}

/// `v1.68.1` → `v1.68`.
pub fn minor(version: &str) -> Option<&str> {
    let rest = version.strip_prefix('v')?;
    let mut parts = rest.splitn(3, '.');
    let major = parts.next()?;
    let minor = parts.next()?;
    if major.is_empty()
        || minor.is_empty()
        || !(major.chars().chain(minor.chars())).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    Some(&version[..1 + major.len() + 1 + minor.len()])
}

pub fn from_table(version: &str) -> Result<GrpcOffsets, GrpcOffsetsError> {
    let rows = table()?;
    let covered = || {
        rows.iter()
            .map(|r| r.grpc_minor.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let m =
        minor(version).ok_or_else(|| GrpcOffsetsError::NotInTable(version.into(), covered()))?;
    let row = rows
        .iter()
        .find(|r| r.grpc_minor == m)
        .ok_or_else(|| GrpcOffsetsError::NotInTable(version.into(), covered()))?;
    Ok(GrpcOffsets {
        stream_method: row.stream_method,
        status_proto: row.status_proto,
        proto_code: row.proto_code,
        valid: 0,
        stream_ptr: row.stream_ptr.unwrap_or(NO_DEREF),
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minors() {
        assert_eq!(minor("v1.68.1"), Some("v1.68"));
        assert_eq!(minor("v1.85.0-dev"), Some("v1.85"));
        assert_eq!(minor("1.68.1"), None);
        assert_eq!(minor("v1"), None);
        assert_eq!(minor("vx.y.z"), None);
    }

    #[test]
    fn table_parses_and_covers_every_tested_version() {
        let versions = include_str!("../../../../tests/go/grpc/versions");
        for line in versions
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let v = line.split_whitespace().next().expect("version");
            assert!(from_table(v).is_ok(), "{v} not in the table");
        }
        assert!(matches!(
            from_table("v1.10.0"),
            Err(GrpcOffsetsError::NotInTable(..))
        ));
    }
}

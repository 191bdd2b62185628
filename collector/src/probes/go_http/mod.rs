//! Go binary analysis for the Go `net/http` uprobes: which Go, where a function is, where it
//! returns.
//!
//! A uprobe at a wrong address corrupts the customer's process, so nothing here guesses:
//! [`analyze`] opens an executable (typically `/proc/<pid>/exe`) and reads the ELF headers, the
//! Go build info and both symbol tables (`.symtab` when present, the runtime's `.gopclntab`
//! always); [`GoBinary::probe_points`] then returns file offsets only for a function whose range
//! lies in an executable segment, whose every instruction decodes, and whose entry is confirmed
//! either by the two symbol tables agreeing or by Go's morestack loop jumping back to it.
//!
//! Modules: [`elf`] (bounds-checked ELF64 reader), [`buildinfo`] (Go version), [`pclntab`]
//! (function bounds without `.symtab`), [`ret_scan`] (RETs by x86-64 decoding), [`binary`]
//! (the checks that tie them together).

pub mod attach;
pub mod binary;
pub mod buildinfo;
pub mod elf;
pub mod listing;
pub mod offsets;
pub mod pclntab;
pub mod ret_scan;
pub mod routers;

use std::{io, path::PathBuf};

pub use binary::{
    AddrRange, CrossCheck, EntryCheck, Function, GoBinary, ProbePoints, analyze, analyze_file,
};
pub use offsets::{GoOffsets, OffsetsError, OffsetsSource, offsets_for};
use thiserror::Error;

/// Why a binary or a function cannot be probed. Messages name what was wrong; the source, when
/// there is one, is chained rather than repeated.
#[derive(Debug, Error)]
pub enum GoBinaryError {
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<GoBinaryError>,
    },
    #[error("not a Go binary: {reason}")]
    NotGo { reason: &'static str },
    #[error("unsupported ELF file: {reason}")]
    UnsupportedElf { reason: String },
    #[error("{arch} Go binaries are recognised but not supported yet")]
    UnsupportedArch { arch: &'static str },
    #[error("unsupported Go binary: {reason}")]
    UnsupportedGo { reason: &'static str },
    #[error("cannot read {what}")]
    Read {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} is cut off: {len} bytes at file offset {offset:#x}, file has {file_len}")]
    Truncated {
        what: &'static str,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    #[error(
        "{what}: reading {len} more bytes would exceed the per-binary read budget ({spent} of {budget} bytes used)"
    )]
    OverBudget {
        what: &'static str,
        len: u64,
        spent: u64,
        budget: u64,
    },
    #[error(
        "the file is no longer the one analysed: (dev, inode) {expected:?} expected, {found:?} found"
    )]
    Replaced {
        expected: (u64, u64),
        found: (u64, u64),
    },
    #[error("malformed binary: {reason}")]
    Malformed { reason: &'static str },
    #[error(
        "Go build info but no .gopclntab (and no .symtab naming runtime.pclntab): function addresses cannot be verified"
    )]
    NoPclntab { go_version: String },
    #[error("{what} at {vaddr:#x} is not in a file-backed PT_LOAD segment")]
    Unmapped { what: &'static str, vaddr: u64 },
    #[error("function {function} not found")]
    FunctionNotFound { function: String },
    #[error("function {function} has several addresses in .symtab")]
    AmbiguousSymbol { function: String },
    #[error("function {function}: .symtab says entry {symtab:#x}, .gopclntab says {pclntab:#x}")]
    SymbolConflict {
        function: String,
        symtab: u64,
        pclntab: u64,
    },
    #[error(
        "function {function} [{start:#x}, {end:#x}) is not inside one executable PT_LOAD segment"
    )]
    NotExecutable {
        function: String,
        start: u64,
        end: u64,
    },
    #[error("function {function} is {len} bytes, more than we decode")]
    TooLarge { function: String, len: u64 },
    #[error("function {function} does not decode as x86-64")]
    Decode {
        function: String,
        #[source]
        source: ret_scan::ScanError,
    },
    #[error(
        "function {function}: entry {entry:#x} is unverified (no .symtab to agree with, no morestack jump back to it)"
    )]
    EntryUnverified { function: String, entry: u64 },
    #[error("function {function} has no RET; it leaves through {tail_calls} tail call(s)")]
    NoReturn { function: String, tail_calls: usize },
    #[error("function {function}: RET at {vaddr:#x} lies outside the function")]
    RetOutside { function: String, vaddr: u64 },
}

impl GoBinaryError {
    /// The error without the file it happened in.
    pub fn kind(&self) -> &GoBinaryError {
        match self {
            Self::InFile { source, .. } => source.kind(),
            other => other,
        }
    }

    /// The Go version, when the analysis read it before it failed.
    pub fn go_version(&self) -> Option<&str> {
        match self.kind() {
            Self::NoPclntab { go_version } => Some(go_version),
            _ => None,
        }
    }

    /// Whether the file is simply not a Go program (not ELF, or ELF without Go's tables): the
    /// expected answer for most processes, worth a debug line rather than a warning.
    pub fn is_not_go(&self) -> bool {
        matches!(self.kind(), Self::NotGo { .. })
    }
}

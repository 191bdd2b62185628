//! The Go build information blob (`runtime/debug.BuildInfo` in the binary).
//!
//! The linker writes, at the start of `.go.buildinfo` (or of the first writable, non-executable
//! PT_LOAD segment when section headers are gone), a 32-byte header: the 14-byte magic
//! `"\xff Go buildinf:"`, the pointer size, a flags byte, then two layouts:
//!
//! - Go 1.18+ (flag bit 0x2, "inline strings"): two varint-length-prefixed strings follow the
//!   header: the Go version (`go1.24.3`) and the module info text, whose `path`/`mod` lines name
//!   the main package and module.
//! - Go 1.17 and older (flag bit 0x2 clear; bit 0x1 would be big endian): at offsets 16 and 24,
//!   pointers to two Go string headers (data pointer, length) — `runtime.buildVersion` and
//!   `runtime.modinfo` — whose bytes lie elsewhere in the image. In a PIE each pointer may be 0
//!   in the file with its value in an `R_X86_64_RELATIVE` relocation (externally linked PIEs);
//!   internally linked ones hold it in place too. Go's own `debug/buildinfo` reads both layouts.
use std::cell::OnceCell;

use super::{
    GoBinaryError,
    elf::{Elf, PF_W, PF_X, PT_LOAD, le_u64},
};

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const FLAG_INLINE_STRINGS: u8 = 0x2;
/// How far into the data segment the blob may start (it is the segment's first item in
/// practice; Go's own reader searches 64 KiB too).
const SEARCH_LIMIT: u64 = 64 << 10;
/// The version and module strings are short; this bounds what we read.
const BLOB_LIMIT: u64 = 64 << 10;
/// Flags byte (header offset 15) of the pointer layout: big endian.
const FLAG_BIG_ENDIAN: u8 = 0x1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// e.g. `go1.24.3`.
    pub go_version: String,
    /// The main package's import path (`path` line), when present.
    pub main_path: Option<String>,
    /// The main module's path (`mod` line), when present.
    pub module_path: Option<String>,
    /// Dependency modules and their versions (`dep` lines, `=>` replacements applied): which
    /// grpc-go a binary was built with, for its struct offsets.
    pub deps: Vec<(String, String)>,
}

/// What reading the build info found.
#[derive(Debug)]
pub(crate) enum Found {
    Absent,
    Info(BuildInfo),
}

/// What the header announces, before any pointer is followed.
#[derive(Debug)]
pub(crate) enum Blob {
    Absent,
    /// Go 1.18+: the strings were inline.
    Info(BuildInfo),
    /// Go 1.17 and older: the pointers at header offsets 16 and 24 (as stored in the file)
    /// and the blob's offset in the window.
    Pointers {
        at: usize,
        version: u64,
        modinfo: u64,
    },
}

pub(crate) fn read(elf: &Elf) -> Result<Found, GoBinaryError> {
    let (window_vaddr, window) = if let Some(s) = elf.section(".go.buildinfo") {
        let len = s.size.min(BLOB_LIMIT);
        (s.addr, elf.read(s.offset, len, ".go.buildinfo")?)
    } else {
        let Some(seg) = elf
            .segments
            .iter()
            .find(|p| p.p_type == PT_LOAD && p.flags & (PF_W | PF_X) == PF_W)
        else {
            return Ok(Found::Absent);
        };
        let len = seg.filesz.min(SEARCH_LIMIT + BLOB_LIMIT);
        (seg.vaddr, elf.read(seg.offset, len, "data segment")?)
    };
    match parse(&window) {
        Blob::Absent => Ok(Found::Absent),
        Blob::Info(info) => Ok(Found::Info(info)),
        Blob::Pointers {
            at,
            version,
            modinfo,
        } => {
            let blob = window_vaddr.saturating_add(at as u64);
            let relocs = Relocs::new(elf);
            let version = read_go_string(elf, &relocs, blob.saturating_add(16), version)?;
            let modinfo = read_go_string(elf, &relocs, blob.saturating_add(24), modinfo)?;
            Ok(info_from(&version, &modinfo).map_or(Found::Absent, Found::Info))
        }
    }
}

/// `R_X86_64_RELATIVE` relocations, read from the file only when a pointer slot holds 0.
struct Relocs<'a> {
    elf: &'a Elf,
    table: OnceCell<Vec<(u64, u64)>>,
}

impl<'a> Relocs<'a> {
    fn new(elf: &'a Elf) -> Self {
        Self {
            elf,
            table: OnceCell::new(),
        }
    }

    /// The pointer stored at `slot`: `stored` when non-zero, else its relocation's addend.
    fn pointer(&self, slot: u64, stored: u64) -> Result<Option<u64>, GoBinaryError> {
        if stored != 0 {
            return Ok(Some(stored));
        }
        let table = match self.table.get() {
            Some(table) => table,
            None => {
                let read = self.elf.relative_relocations()?;
                self.table.get_or_init(|| read)
            }
        };
        Ok(table
            .binary_search_by_key(&slot, |&(at, _)| at)
            .ok()
            .map(|i| table[i].1))
    }
}

/// The bytes of the Go string whose header (data pointer, length) is at `header`, the pointer
/// to which is stored at `slot` (`stored` as read from the file). A null pointer or an empty or
/// oversized string reads as empty: the caller decides whether that is enough.
fn read_go_string(
    elf: &Elf,
    relocs: &Relocs<'_>,
    slot: u64,
    stored: u64,
) -> Result<Vec<u8>, GoBinaryError> {
    let Some(header) = relocs.pointer(slot, stored)? else {
        return Ok(Vec::new());
    };
    let head = elf.read_vaddr(header, 16, "build info string header")?;
    let len = le_u64(&head, 8);
    if len == 0 || len > BLOB_LIMIT {
        return Ok(Vec::new());
    }
    let Some(data) = relocs.pointer(header, le_u64(&head, 0))? else {
        return Ok(Vec::new());
    };
    elf.read_vaddr(data, len, "build info string")
}

/// Finds the blob in `window` (16-byte aligned, within [`SEARCH_LIMIT`]) and parses its header.
pub(crate) fn parse(window: &[u8]) -> Blob {
    let start = (0..window.len())
        .step_by(16)
        .take_while(|&i| i as u64 <= SEARCH_LIMIT)
        .find(|&i| window.get(i..i + MAGIC.len()) == Some(MAGIC.as_slice()));
    let Some(start) = start else {
        return Blob::Absent;
    };
    let Some(header) = window.get(start..start + 32) else {
        return Blob::Absent;
    };
    if header[15] & FLAG_INLINE_STRINGS == 0 {
        // Only the layout of amd64 binaries: 8-byte little-endian pointers.
        if header[14] != 8 || header[15] & FLAG_BIG_ENDIAN != 0 {
            return Blob::Absent;
        }
        return Blob::Pointers {
            at: start,
            version: le_u64(header, 16),
            modinfo: le_u64(header, 24),
        };
    }
    let mut rest = &window[start + 32..];
    let Some(version) = take_bytes(&mut rest) else {
        return Blob::Absent;
    };
    let modinfo = take_bytes(&mut rest).unwrap_or_default();
    info_from(version, modinfo).map_or(Blob::Absent, Blob::Info)
}

/// The build info from the version string and the module info, in either layout: `None` when
/// the version is not a Go one.
fn info_from(version: &[u8], modinfo: &[u8]) -> Option<BuildInfo> {
    let version = std::str::from_utf8(version).ok()?;
    if !version.starts_with("go") {
        return None;
    }
    // The module info is wrapped in 16-byte binary sentinels.
    let modinfo = Some(modinfo)
        .filter(|b| b.len() > 32)
        .map(|b| String::from_utf8_lossy(&b[16..b.len() - 16]).into_owned())
        .unwrap_or_default();
    let (main_path, module_path) = module_lines(&modinfo);
    Some(BuildInfo {
        go_version: version.to_owned(),
        main_path,
        module_path,
        deps: dep_lines(&modinfo),
    })
}

/// A uvarint length followed by that many bytes.
fn take_bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let mut len: u64 = 0;
    let mut used = 0;
    for (i, &b) in rest.iter().enumerate().take(10) {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            used = i + 1;
            break;
        }
    }
    if used == 0 {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    let bytes = rest.get(used..used.checked_add(len)?)?;
    *rest = &rest[used + len..];
    Some(bytes)
}

/// The `dep` lines of the module info, each replaced by the `=>` line after it if any.
fn dep_lines(modinfo: &str) -> Vec<(String, String)> {
    let mut deps: Vec<(String, String)> = Vec::new();
    for line in modinfo.lines() {
        let mut fields = line.split('\t');
        match (fields.next(), fields.next(), fields.next()) {
            (Some("dep"), Some(path), Some(version)) => {
                deps.push((path.to_owned(), version.to_owned()));
            }
            (Some("=>"), Some(path), Some(version)) => {
                if let Some(last) = deps.last_mut() {
                    *last = (path.to_owned(), version.to_owned());
                }
            }
            _ => {}
        }
    }
    deps
}

/// The `path` and `mod` lines of the module info.
fn module_lines(modinfo: &str) -> (Option<String>, Option<String>) {
    let mut path = None;
    let mut module = None;
    for line in modinfo.lines() {
        let mut fields = line.split('\t');
        match (fields.next(), fields.next()) {
            (Some("path"), Some(value)) if path.is_none() => {
                path = Some(value.to_owned());
            }
            (Some("mod"), Some(value)) => module = Some(value.to_owned()),
            _ => {}
        }
    }
    (path, module)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(version: &str, modinfo: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.push(8);
        b.push(FLAG_INLINE_STRINGS);
        b.resize(32, 0);
        for s in [version, modinfo] {
            b.push(u8::try_from(s.len()).unwrap());
            b.extend_from_slice(s.as_bytes());
        }
        b
    }

    #[test]
    fn parses_inline_strings() {
        let modinfo = "0123456789abcdefpath\texample.com/cmd/x\nmod\texample.com\t(devel)\t\n0123456789abcdef";
        let mut window = vec![0u8; 48];
        window.extend(blob("go1.24.3", modinfo));
        let Blob::Info(info) = parse(&window) else {
            panic!("not found");
        };
        assert_eq!(info.go_version, "go1.24.3");
        assert_eq!(info.main_path.as_deref(), Some("example.com/cmd/x"));
        assert_eq!(info.module_path.as_deref(), Some("example.com"));
    }

    #[test]
    fn dependencies_with_replacements() {
        // As `go version -m` prints them: a `=>` line replaces the `dep` line above it.
        let modinfo = "path\tx\nmod\tx\t(devel)\t\n\
            dep\tgoogle.golang.org/grpc\tv1.68.1\th1:abc=\n\
            dep\tgolang.org/x/net\tv0.1.0\th1:def=\n\
            =>\texample.com/fork/net\tv0.1.1\th1:ghi=\n\
            dep\tbroken\n";
        assert_eq!(
            dep_lines(modinfo),
            vec![
                ("google.golang.org/grpc".to_string(), "v1.68.1".to_string()),
                ("example.com/fork/net".to_string(), "v0.1.1".to_string()),
            ]
        );
        assert!(
            dep_lines("=>\ta\tv1\n").is_empty(),
            "a replacement of nothing"
        );
    }

    #[test]
    fn pointer_format_and_garbage() {
        // Go 1.17: the two pointers at 16 and 24, as stored.
        let mut old = blob("", "");
        old.truncate(32);
        old[15] = 0;
        old[16..24].copy_from_slice(&0x84_3fb0u64.to_le_bytes());
        old[24..32].copy_from_slice(&0x84_4000u64.to_le_bytes());
        let mut window = vec![0u8; 16];
        window.extend_from_slice(&old);
        assert!(matches!(
            parse(&window),
            Blob::Pointers {
                at: 16,
                version: 0x84_3fb0,
                modinfo: 0x84_4000
            }
        ));
        // Big-endian or 4-byte pointers are not amd64's.
        let mut big = old.clone();
        big[15] = FLAG_BIG_ENDIAN;
        assert!(matches!(parse(&big), Blob::Absent));
        let mut narrow = old;
        narrow[14] = 4;
        assert!(matches!(parse(&narrow), Blob::Absent));
        assert!(matches!(parse(b"nothing here"), Blob::Absent));
        let mut truncated = blob("go1.24.3", "");
        truncated.truncate(36);
        assert!(matches!(parse(&truncated), Blob::Absent));
        // A huge varint length must not read past the window.
        let mut huge = blob("", "");
        huge.truncate(32);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, b'g']);
        assert!(matches!(parse(&huge), Blob::Absent));
    }
}

//! The Go build information blob (`runtime/debug.BuildInfo` in the binary).
//!
//! Since Go 1.18 the linker writes, at the start of `.go.buildinfo` (or of the first writable,
//! non-executable PT_LOAD segment when section headers are gone), a 32-byte header: the
//! 14-byte magic `"\xff Go buildinf:"`, the pointer size, a flags byte, padding. With flag
//! bit 0x2 ("inline strings") two varint-length-prefixed strings follow: the Go version
//! (`go1.24.3`) and the module info text, whose `path`/`mod` lines name the main package and
//! module. Older layouts (pointers to strings, before Go 1.18) are reported as unsupported.

use super::{
    GoBinaryError,
    elf::{Elf, PF_W, PF_X, PT_LOAD},
};

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const FLAG_INLINE_STRINGS: u8 = 0x2;
/// How far into the data segment the blob may start (it is the segment's first item in
/// practice; Go's own reader searches 64 KiB too).
const SEARCH_LIMIT: u64 = 64 << 10;
/// The version and module strings are short; this bounds what we read.
const BLOB_LIMIT: u64 = 64 << 10;

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
    /// The magic is there but the layout is older than Go 1.18.
    PointerFormat,
}

pub(crate) fn read(elf: &Elf) -> Result<Found, GoBinaryError> {
    let window = if let Some(s) = elf.section(".go.buildinfo") {
        let len = s.size.min(BLOB_LIMIT);
        elf.read(s.offset, len, ".go.buildinfo")?
    } else {
        let Some(seg) = elf
            .segments
            .iter()
            .find(|p| p.p_type == PT_LOAD && p.flags & (PF_W | PF_X) == PF_W)
        else {
            return Ok(Found::Absent);
        };
        let len = seg.filesz.min(SEARCH_LIMIT + BLOB_LIMIT);
        elf.read(seg.offset, len, "data segment")?
    };
    Ok(parse(&window))
}

/// Finds the blob in `window` (16-byte aligned, within [`SEARCH_LIMIT`]) and parses it.
pub(crate) fn parse(window: &[u8]) -> Found {
    let start = (0..window.len())
        .step_by(16)
        .take_while(|&i| i as u64 <= SEARCH_LIMIT)
        .find(|&i| window.get(i..i + MAGIC.len()) == Some(MAGIC.as_slice()));
    let Some(start) = start else {
        return Found::Absent;
    };
    let Some(header) = window.get(start..start + 32) else {
        return Found::Absent;
    };
    if header[15] & FLAG_INLINE_STRINGS == 0 {
        return Found::PointerFormat;
    }
    let mut rest = &window[start + 32..];
    let Some(version) = take_bytes(&mut rest).and_then(|b| std::str::from_utf8(b).ok()) else {
        return Found::Absent;
    };
    if !version.starts_with("go") {
        return Found::Absent;
    }
    // The module info is wrapped in 16-byte binary sentinels.
    let modinfo = take_bytes(&mut rest)
        .filter(|b| b.len() > 32)
        .map(|b| String::from_utf8_lossy(&b[16..b.len() - 16]).into_owned())
        .unwrap_or_default();
    let (main_path, module_path) = module_lines(&modinfo);
    Found::Info(BuildInfo {
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
        let Found::Info(info) = parse(&window) else {
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
        let mut old = blob("go1.17", "");
        old[15] = 0;
        assert!(matches!(parse(&old), Found::PointerFormat));
        assert!(matches!(parse(b"nothing here"), Found::Absent));
        let mut truncated = blob("go1.24.3", "");
        truncated.truncate(36);
        assert!(matches!(parse(&truncated), Found::Absent));
        // A huge varint length must not read past the window.
        let mut huge = blob("", "");
        huge.truncate(32);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, b'g']);
        assert!(matches!(parse(&huge), Found::Absent));
    }
}

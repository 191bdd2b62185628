//! Go struct offsets (probes::go_http::offsets) against real Go binaries: the 33 fixtures of
//! tests/go/build-fixtures.sh (tests/go/versions × {default, stripped, pie}), and the committed
//! table against `cargo xtask go-offsets --check`.
//!
//! Needs the toolchains from `WITH_GO=1 scripts/bootstrap.sh`; without them these tests fail
//! (they never pass vacuously).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic is the failure report"
)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use collector::probes::go_http::{
    GoOffsets, OffsetsError, OffsetsSource, analyze,
    offsets::{from_dwarf, from_table, parse_minor},
    offsets_for,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from)
}

fn versions() -> Vec<String> {
    std::fs::read_to_string(repo().join("tests/go/versions"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn assert_toolchains() {
    let missing: Vec<String> = versions()
        .into_iter()
        .filter(|v| !target_dir().join("go").join(v).join("bin/go").exists())
        .collect();
    assert!(
        missing.is_empty(),
        "Go toolchains {missing:?} are not installed under {}: run `WITH_GO=1 scripts/bootstrap.sh`",
        target_dir().join("go").display()
    );
}

struct Fixture {
    version: String,
    variant: String,
    path: PathBuf,
}

/// Builds (or finds cached) the 33 fixtures, once per test process.
fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        assert_toolchains();
        let out = Command::new(repo().join("tests/go/build-fixtures.sh"))
            .output()
            .expect("run tests/go/build-fixtures.sh");
        assert!(
            out.status.success(),
            "tests/go/build-fixtures.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<Fixture> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let mut f = l.splitn(3, ' ');
                Fixture {
                    version: f.next().unwrap().to_owned(),
                    variant: f.next().unwrap().to_owned(),
                    path: PathBuf::from(f.next().unwrap()),
                }
            })
            .collect();
        assert_eq!(list.len(), 33, "11 Go minors × 3 variants");
        list
    })
}

/// The error and its sources, one per line.
fn chain(e: &OffsetsError) -> String {
    let mut out = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = cur {
        out.push_str(&format!("\n  {s}"));
        cur = s.source();
    }
    out
}

fn sane(o: &GoOffsets, what: &str) {
    assert!(o.request_method < o.request_url, "{what}: {o:?}");
    assert!(o.request_url < o.request_proto_major, "{what}: {o:?}");
    if let Some(p) = o.request_pattern {
        assert!(p > o.request_proto_major, "{what}: {o:?}");
    }
    assert!(o.request_tls > o.request_proto_major, "{what}: {o:?}");
    // Scheme, Opaque (strings), User (pointer) and Host (string) come first.
    assert!(o.url_path >= 56, "{what}: {o:?}");
    for v in [
        o.request_method,
        o.request_url,
        o.request_proto_major,
        o.request_tls,
        o.url_path,
    ]
    .into_iter()
    .chain(o.request_pattern)
    {
        assert_eq!(v % 8, 0, "{what}: unaligned offset in {o:?}");
    }
}

#[test]
fn every_fixture_has_offsets() {
    let mut checked = 0;
    for f in fixtures() {
        let what = format!("go{} {}", f.version, f.variant);
        let bin = analyze(&f.path).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (offsets, source) =
            offsets_for(&bin).unwrap_or_else(|e| panic!("{what}: {}", chain(&e)));
        sane(&offsets, &what);
        let minor = parse_minor(&bin.go_version).unwrap();
        assert_eq!(
            offsets.request_pattern.is_some(),
            minor >= (1, 23),
            "{what}: Request.Pattern exists since Go 1.23: {offsets:?}"
        );
        // net/http's own HTTP/2 writer: its offsets (DWARF or table) and the type hash the
        // kernel checks (table). Without them HTTP/2 responses go unobserved.
        assert!(
            offsets.http2.is_some_and(|h| h.writer_hash != 0),
            "{what}: HTTP/2 writer layout unknown: {offsets:?}"
        );
        let (row, generated_with) = from_table(&bin.go_version).unwrap();
        assert_eq!(
            parse_minor(generated_with),
            Some(minor),
            "{what}: row of another minor"
        );
        match f.variant.as_str() {
            "stripped" => {
                assert!(
                    from_dwarf(&f.path).unwrap().is_none(),
                    "{what}: -w removes DWARF"
                );
                assert_eq!(
                    source,
                    OffsetsSource::Table {
                        version: generated_with.to_owned()
                    },
                    "{what}"
                );
                assert_eq!(offsets, row, "{what}");
            }
            _ => {
                assert_eq!(source, OffsetsSource::Dwarf, "{what}");
                // The DWARF of the binary and the table generated by unsafe.Offsetof agree.
                assert_eq!(offsets, row, "{what}: DWARF vs table row {generated_with}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 33);
}

#[test]
fn table_lookup_by_minor() {
    let (a, va) = from_table("go1.24.0").unwrap();
    let (b, vb) = from_table("go1.24.11 X:nodwarf5").unwrap();
    assert_eq!((a, va), (b, vb));
    assert!(from_table("go1.24").is_ok());
    assert!(from_table("go1.21.0").unwrap().0.request_pattern.is_none());
    for v in ["go1.99.1", "go1.16.15", "go2.0.0"] {
        let e = from_table(v).unwrap_err();
        assert!(matches!(e, OffsetsError::UnknownVersion { .. }), "{v}: {e}");
        assert!(chain(&e).contains("cargo xtask go-offsets"), "{e}");
    }
    for v in [
        "go1.24rc1",
        "go1.25beta1",
        "devel go1.25-abcdef",
        "",
        "go1",
        "go1.x.1",
        "1.24.1",
    ] {
        assert!(
            matches!(from_table(v), Err(OffsetsError::UnparsableVersion { .. })),
            "{v:?} must be refused"
        );
    }
}

/// A file in a fresh temporary directory.
fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("go-offsets-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bin");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

#[test]
fn non_go_and_malformed_files_are_errors() {
    // Not ELF at all, and empty.
    for (name, bytes) in [("text", b"#!/bin/sh\necho hi\n".as_slice()), ("empty", b"")] {
        let e = from_dwarf(&temp_file(name, bytes)).unwrap_err();
        assert!(chain(&e).contains("not an ELF64"), "{}", chain(&e));
    }
    assert!(matches!(
        from_dwarf(Path::new("/nonexistent/binary")),
        Err(OffsetsError::Open { .. })
    ));
    // A non-Go ELF with DWARF (if the system has one with .debug_info: e.g. this test binary).
    let me = std::env::current_exe().unwrap();
    match from_dwarf(&me) {
        Err(e) => assert!(
            chain(&e).contains("no struct net/http.Request"),
            "{}",
            chain(&e)
        ),
        Ok(None) => {} // built without debug info
        Ok(Some(o)) => panic!("a Rust binary has net/http offsets {o:?}"),
    }

    // Corrupt the compressed .debug_info of a real Go binary, and truncate one.
    // Go 1.17 and 1.18 write legacy .zdebug_* sections instead (every_fixture_has_offsets
    // reads them).
    let f = fixtures()
        .iter()
        .find(|f| {
            f.variant == "default"
                && !f.version.starts_with("1.17.")
                && !f.version.starts_with("1.18.")
        })
        .unwrap();
    let good = std::fs::read(&f.path).unwrap();
    let (info_off, info_len) = section(&f.path, ".debug_info");
    // Past the 24-byte compression header, into the zlib stream.
    let mut corrupt = good.clone();
    for b in &mut corrupt[info_off + 24 + 64..info_off + info_len] {
        *b ^= 0x5a;
    }
    let e = from_dwarf(&temp_file("corrupt", &corrupt)).unwrap_err();
    assert!(chain(&e).contains("debug_info"), "{}", chain(&e));
    // An inflated size far beyond the section's real contents.
    let mut lying = good.clone();
    lying[info_off + 8..info_off + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = from_dwarf(&temp_file("lying", &lying)).unwrap_err();
    assert!(chain(&e).contains("debug_info"), "{}", chain(&e));
    // Compression type zstd (2) is refused by name.
    let mut zstd = good.clone();
    zstd[info_off..info_off + 4].copy_from_slice(&2u32.to_le_bytes());
    let e = from_dwarf(&temp_file("zstd", &zstd)).unwrap_err();
    assert!(chain(&e).contains("zstd"), "{}", chain(&e));
    // Cut off in the middle of the DWARF.
    let e = from_dwarf(&temp_file("cut", &good[..info_off + info_len / 2])).unwrap_err();
    assert!(!chain(&e).is_empty());
    // Garbage that still inflates: a valid zlib stream of random bytes as .debug_abbrev/info is
    // covered by gimli's own parsing; scribbling over the section header table must not panic.
    let mut headers = good.clone();
    let shoff = usize::try_from(u64::from_le_bytes(good[40..48].try_into().unwrap())).unwrap();
    for b in &mut headers[shoff + 64..shoff + 64 * 4] {
        *b = 0xff;
    }
    let _ = from_dwarf(&temp_file("headers", &headers));
}

/// The same DWARF, plain (`objcopy --decompress-debug-sections`) and as legacy `.zdebug_*`
/// sections (`--compress-debug-sections=zlib-gnu`), gives the same offsets; zstd is refused.
#[test]
fn dwarf_plain_and_zdebug() {
    let f = fixtures()
        .iter()
        .find(|f| f.variant == "default" && f.version.starts_with("1.24."))
        .unwrap();
    let expected = from_dwarf(&f.path).unwrap().unwrap();
    let dir = std::env::temp_dir().join(format!("go-offsets-{}-objcopy", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let convert = |flag: &str, name: &str| {
        let out = dir.join(name);
        let status = Command::new("objcopy")
            .arg(flag)
            .arg(&f.path)
            .arg(&out)
            .status()
            .expect("objcopy (binutils) is needed");
        assert!(status.success(), "objcopy {flag}");
        out
    };
    let plain = convert("--decompress-debug-sections", "plain");
    assert!(section(&plain, ".debug_info").1 > 0);
    assert_eq!(from_dwarf(&plain).unwrap(), Some(expected));
    let zdebug = convert("--compress-debug-sections=zlib-gnu", "zdebug");
    assert!(section(&zdebug, ".zdebug_info").1 > 0);
    assert_eq!(from_dwarf(&zdebug).unwrap(), Some(expected));
    let zstd = convert("--compress-debug-sections=zstd", "zstd");
    let e = from_dwarf(&zstd).unwrap_err();
    assert!(chain(&e).contains("zstd"), "{}", chain(&e));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A path replaced after analysis (a redeploy) is not read for the old inode's offsets.
#[test]
fn replaced_binary_is_refused() {
    let f = fixtures().iter().find(|f| f.variant == "default").unwrap();
    let path = temp_file("replaced", &std::fs::read(&f.path).unwrap());
    let bin = analyze(&path).unwrap();
    assert!(offsets_for(&bin).is_ok());
    let next = path.with_extension("new");
    std::fs::copy(&f.path, &next).unwrap();
    std::fs::rename(&next, &path).unwrap();
    let e = offsets_for(&bin).unwrap_err();
    assert!(matches!(e.kind(), OffsetsError::Replaced), "{}", chain(&e));
}

/// File offset and size of a section, from `readelf -SW` (independent of the code under test).
fn section(path: &Path, name: &str) -> (usize, usize) {
    let out = Command::new("readelf")
        .arg("-SW")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" {name} ")))
        .unwrap_or_else(|| panic!("{name} not in readelf -S of {}", path.display()));
    let cols: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
    // Name Type Address Off Size ...
    (
        usize::from_str_radix(cols[3], 16).unwrap(),
        usize::from_str_radix(cols[4], 16).unwrap(),
    )
}

#[test]
fn committed_table_matches_generation() {
    assert_toolchains();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "go-offsets", "--check"])
        .current_dir(repo())
        .output()
        .expect("run cargo xtask go-offsets --check");
    assert!(
        out.status.success(),
        "`cargo xtask go-offsets --check` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

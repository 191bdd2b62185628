//! Go binary analysis against real Go binaries: tests/go/server built with every Go toolchain
//! in tests/go/versions × {default, stripped, pie} by tests/go/build-fixtures.sh (cached under
//! target/go-fixtures). Cross-checked against `go tool nm`, the section headers and objdump.
//!
//! Needs the toolchains from `WITH_GO=1 scripts/bootstrap.sh`; without them these tests fail
//! (they never pass vacuously).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic is the failure report"
)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use collector::probes::go_http::{
    EntryCheck, GoBinaryError, analyze,
    elf::{MAX_READ, READ_BUDGET},
    pclntab::TextStart,
};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

const SERVE_HTTP: &str = "net/http.serverHandler.ServeHTTP";
const WRITE_HEADER: &str = "net/http.(*response).WriteHeader";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from)
}

#[derive(Debug, Clone)]
struct Fixture {
    version: String,
    variant: String,
    path: PathBuf,
}

/// Builds (or finds cached) the 33 fixtures, once per test process.
fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let versions = std::fs::read_to_string(repo().join("tests/go/versions")).unwrap();
        let missing: Vec<&str> = versions
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter(|v| !target_dir().join("go").join(v).join("bin/go").exists())
            .collect();
        assert!(
            missing.is_empty(),
            "Go toolchains {missing:?} are not installed under {}: run `WITH_GO=1 scripts/bootstrap.sh`",
            target_dir().join("go").display()
        );
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

fn go_tool(version: &str) -> PathBuf {
    target_dir().join("go").join(version).join("bin/go")
}

/// `go tool nm -size` address of `name`.
fn nm_address(f: &Fixture, name: &str) -> u64 {
    let out = Command::new(go_tool(&f.version))
        .args(["tool", "nm", "-size"])
        .arg(&f.path)
        .env("GOTOOLCHAIN", "local")
        // A user's go env file may set flags older toolchains refuse (-buildvcs before 1.18).
        .env("GOENV", "off")
        .output()
        .unwrap();
    assert!(out.status.success(), "go tool nm failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(3) == Some(name) && l.split_whitespace().count() == 4)
        .unwrap_or_else(|| panic!("{name} not in go tool nm output of {}", f.path.display()));
    u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap()
}

/// File offset of `vaddr` computed from the `.text` section header (readelf), independently of
/// the program headers the analysis uses.
fn text_section_offset(f: &Fixture, vaddr: u64) -> u64 {
    let out = Command::new("readelf")
        .arg("-SW")
        .arg(&f.path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(" .text "))
        .expect(".text in readelf -S");
    let cols: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
    // Name Type Address Off Size ...
    let addr = u64::from_str_radix(cols[2], 16).unwrap();
    let off = u64::from_str_radix(cols[3], 16).unwrap();
    assert!(vaddr >= addr);
    vaddr - addr + off
}

/// RET addresses objdump finds in `[start, end)`.
fn objdump_rets(path: &Path, start: u64, end: u64) -> BTreeSet<u64> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--start-address={start:#x}"))
        .arg(format!("--stop-address={end:#x}"))
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "objdump failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (addr, insn) = l.split_once(":\t")?;
            let insn = insn.split_whitespace().next()?;
            (insn == "ret" || insn == "retq")
                .then(|| u64::from_str_radix(addr.trim(), 16).ok())
                .flatten()
        })
        .collect()
}

#[test]
fn every_toolchain_and_variant() {
    let mut failures = Vec::new();
    for f in fixtures() {
        let label = format!("go{} {}", f.version, f.variant);
        if let Err(e) = check_fixture(f) {
            failures.push(format!("{label}: {e}"));
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

fn check_fixture(f: &Fixture) -> Result<(), String> {
    let bin = analyze(&f.path).map_err(|e| format!("{e:?}"))?;
    let file_len = std::fs::metadata(&f.path).unwrap().len();
    eprintln!(
        "go{} {}: text start {:?}, {:?}, read {} of {} bytes",
        f.version,
        f.variant,
        bin.text_start,
        bin.cross_check,
        bin.bytes_read(),
        file_len
    );
    // The budget is sized for binaries far larger than this one.
    check(bin.bytes_read() < READ_BUDGET / 8, || {
        format!("analysis read {} bytes", bin.bytes_read())
    })?;
    let stripped = f.variant == "stripped";
    let pie = f.variant == "pie";
    check(bin.go_version == format!("go{}", f.version), || {
        format!("version {}", bin.go_version)
    })?;
    check(
        bin.module_path.as_deref() == Some("example.invalid/collector/testserver"),
        || format!("module path {:?}", bin.module_path),
    )?;
    check(bin.pie == pie, || format!("pie = {}", bin.pie))?;
    check(bin.stripped == stripped, || {
        format!("stripped = {}", bin.stripped)
    })?;
    // The pclntab path must stand on its own: text start from the table or the runtime's
    // moduledata, never borrowed from .symtab's runtime.text; Go 1.17's table has absolute
    // entries and no text start.
    check(
        if f.version.starts_with("1.17.") {
            bin.text_start == TextStart::Absolute
        } else {
            matches!(
                bin.text_start,
                TextStart::Header(_) | TextStart::Relocation(_) | TextStart::Moduledata(_)
            )
        },
        || format!("text start {:?}", bin.text_start),
    )?;
    if !stripped {
        check(
            bin.cross_check.compared > 1000 && bin.cross_check.agreed == bin.cross_check.compared,
            || format!("symtab vs pclntab: {:?}", bin.cross_check),
        )?;
    }

    // The same toolchain's default build has the same text layout as the stripped one.
    let default_build = fixtures()
        .iter()
        .find(|d| d.version == f.version && d.variant == "default")
        .unwrap();
    let code = std::fs::read(&f.path).unwrap();
    for name in [SERVE_HTTP, WRITE_HEADER] {
        let p = bin
            .probe_points(name)
            .map_err(|e| format!("{name}: {e:?}"))?;
        let func = bin.function(name).unwrap();
        check(!p.ret_file_offsets.is_empty(), || format!("{name}: no RET"))?;
        check(
            p.ret_offsets.len() == p.ret_file_offsets.len()
                && p.ret_offsets
                    .iter()
                    .zip(&p.ret_file_offsets)
                    .all(|(r, fo)| p.entry_file_offset + r == *fo),
            || format!("{name}: RET offsets inconsistent"),
        )?;
        check(p.tail_calls.is_empty(), || {
            format!("{name}: tail calls {:?}", p.tail_calls)
        })?;

        // The entry: confirmed by the right check, equal in both tables, and where go tool nm
        // (unstripped) or the same toolchain's unstripped build (stripped) says.
        let expected_check = if stripped {
            EntryCheck::MorestackJump
        } else {
            EntryCheck::Both
        };
        check(p.entry_check == expected_check, || {
            format!("{name}: entry check {:?}", p.entry_check)
        })?;
        let nm = nm_address(if stripped { default_build } else { f }, name);
        check(p.entry_vaddr == nm, || {
            format!("{name}: entry {:#x}, go tool nm {nm:#x}", p.entry_vaddr)
        })?;
        if !stripped {
            let (s, pc) = (func.symtab.unwrap(), func.pclntab.unwrap());
            check(s.start == pc.start, || {
                format!("{name}: symtab {:#x} != pclntab {:#x}", s.start, pc.start)
            })?;
            let by_section = text_section_offset(f, p.entry_vaddr);
            check(p.entry_file_offset == by_section, || {
                format!(
                    "{name}: file offset {:#x}, by .text section {by_section:#x}",
                    p.entry_file_offset
                )
            })?;
            let rets: BTreeSet<u64> = p.ret_offsets.iter().map(|r| p.entry_vaddr + r).collect();
            let end = s.end;
            let objdump = objdump_rets(&f.path, p.entry_vaddr, end);
            check(rets == objdump, || {
                format!("{name}: RETs {rets:x?}, objdump {objdump:x?}")
            })?;
        }
        // Decoding the file at the entry offset gives Go's stack-check prologue.
        let at = usize::try_from(p.entry_file_offset).unwrap();
        let bytes = code
            .get(at..at + 32)
            .ok_or("entry offset past end of file")?;
        let insn = Decoder::with_ip(64, bytes, p.entry_vaddr, DecoderOptions::NONE).decode();
        check(
            !insn.is_invalid() && matches!(insn.mnemonic(), Mnemonic::Cmp | Mnemonic::Lea),
            || format!("{name}: first instruction {:?}", insn.mnemonic()),
        )?;
        // The entry probe goes right past the check's JBE, whose morestack block jumps back to
        // the first instruction: a probe on that one fires twice when the call is preempted.
        let mut decoder = Decoder::with_ip(64, bytes, p.entry_vaddr, DecoderOptions::NONE);
        let mut last = Mnemonic::INVALID;
        while decoder.can_decode()
            && (p.entry_file_offset + decoder.position() as u64) < p.entry_probe_file_offset
        {
            last = decoder.decode().mnemonic();
        }
        check(
            last == Mnemonic::Jbe
                && p.entry_file_offset + decoder.position() as u64 == p.entry_probe_file_offset,
            || {
                format!(
                    "{name}: entry probe at +{:#x}, after {last:?}",
                    p.entry_probe_file_offset - p.entry_file_offset
                )
            },
        )?;
        for r in &p.ret_file_offsets {
            let b = code.get(usize::try_from(*r).unwrap()).copied();
            check(b == Some(0xc3), || {
                format!("{name}: RET byte at {r:#x} is {b:x?}")
            })?;
        }
    }
    Ok(())
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(msg()) }
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn non_go_files_are_not_go() {
    let true_bin = Path::new("/bin/true");
    let e = analyze(true_bin).unwrap_err();
    assert!(e.is_not_go(), "/bin/true: {e:?}");
    for (name, bytes) in [
        ("empty", &b""[..]),
        ("script", &b"#!/bin/sh\necho hi\n"[..]),
        ("elf-magic-only", &b"\x7fELF"[..]),
    ] {
        let e = analyze(&scratch(name, bytes)).unwrap_err();
        assert!(
            e.is_not_go() || matches!(e.kind(), GoBinaryError::Truncated { .. }),
            "{name}: {e:?}"
        );
    }
    assert!(matches!(
        analyze(Path::new("/nonexistent/binary")),
        Err(GoBinaryError::Open { .. })
    ));
    assert!(analyze(Path::new("/")).unwrap_err().is_not_go());
}

#[test]
fn wrong_class_and_machine_are_refused() {
    let mut elf32 = std::fs::read("/bin/true").unwrap();
    elf32[4] = 1;
    let e = analyze(&scratch("elf32", &elf32)).unwrap_err();
    assert!(
        matches!(e.kind(), GoBinaryError::UnsupportedElf { .. }),
        "{e:?}"
    );
    let mut big = std::fs::read("/bin/true").unwrap();
    big[5] = 2;
    let e = analyze(&scratch("elfbe", &big)).unwrap_err();
    assert!(
        matches!(e.kind(), GoBinaryError::UnsupportedElf { .. }),
        "{e:?}"
    );
    // A Go binary relabelled as arm64 is recognised and refused.
    let mut arm = std::fs::read(&fixtures()[0].path).unwrap();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    let e = analyze(&scratch("arm64", &arm)).unwrap_err();
    assert!(
        matches!(e.kind(), GoBinaryError::UnsupportedArch { arch: "arm64" }),
        "{e:?}"
    );
}

#[test]
fn truncated_and_corrupted_binaries_never_panic() {
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for f in fixtures().iter().filter(|f| f.version.starts_with("1.24")) {
        let full = std::fs::read(&f.path).unwrap();
        let len = full.len();
        for cut in [
            1,
            5,
            63,
            64,
            200,
            4096,
            len / 3,
            len / 2,
            len - 4096,
            len - 1,
        ] {
            let p = scratch(&format!("cut-{}-{cut}", f.variant), &full[..cut]);
            // Whether a cut binary still analyses depends on where its tables are; the
            // functions, if found, must still verify or fail cleanly.
            if let Ok(bin) = analyze(&p) {
                let _ = bin.probe_points(SERVE_HTTP);
            }
            std::fs::remove_file(p).unwrap();
        }
        for round in 0..40 {
            let mut bad = full.clone();
            // Corrupt the headers and a few random places (pclntab, buildinfo, symtab).
            for _ in 0..8 {
                let at = if round % 2 == 0 {
                    next() as usize % 4096
                } else {
                    next() as usize % len
                };
                bad[at] = next() as u8;
            }
            let p = scratch(&format!("corrupt-{}", f.variant), &bad);
            if let Ok(bin) = analyze(&p) {
                let _ = bin.probe_points(SERVE_HTTP);
                let _ = bin.probe_points(WRITE_HEADER);
            }
        }
    }
    for size in [0usize, 1, 16, 64, 1000, 100_000] {
        let mut junk: Vec<u8> = (0..size).map(|_| next() as u8).collect();
        if size >= 64 {
            junk[..6].copy_from_slice(b"\x7fELF\x02\x01");
        }
        let p = scratch(&format!("junk-{size}"), &junk);
        assert!(analyze(&p).is_err());
    }
}

#[test]
fn unknown_function_is_an_error() {
    let bin = analyze(&fixtures()[0].path).unwrap();
    assert!(matches!(
        bin.probe_points("main.doesNotExist"),
        Err(GoBinaryError::FunctionNotFound { .. })
    ));
}

/// Builders for small synthetic ELF files: enough structure for the analysis to reach the
/// part under test, nothing a real linker would add.
mod synth {
    /// One section: name, type, file offset, size, link, entry size.
    pub struct Sect {
        pub name: &'static str,
        pub sh_type: u32,
        pub offset: u64,
        pub size: u64,
        pub link: u32,
        pub entsize: u64,
    }

    pub const SHT_PROGBITS: u32 = 1;
    pub const SHT_SYMTAB: u32 = 2;
    pub const SHT_STRTAB: u32 = 3;

    /// The Go build info blob of a go1.24.3 binary (inline strings).
    pub fn buildinfo() -> Vec<u8> {
        let mut b = b"\xff Go buildinf:".to_vec();
        b.push(8);
        b.push(2);
        b.resize(32, 0);
        let version = b"go1.24.3";
        b.push(version.len() as u8);
        b.extend_from_slice(version);
        b.push(0);
        b
    }

    /// An x86-64 ELF64 `ET_EXEC` whose first 64 KiB hold `blobs` (file offset, bytes), one
    /// read-execute PT_LOAD over them at vaddr 0x400000 + offset, and `sections` (a null
    /// section and `.shstrtab` are added). The file is then extended to `len` bytes, sparsely.
    pub fn elf(blobs: &[(u64, Vec<u8>)], sections: &[Sect], len: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0x1_0000];
        b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        // PT_LOAD R+X over the first 64 KiB.
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        b[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
        b[ph + 16..ph + 24].copy_from_slice(&0x40_0000u64.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&0x40_0000u64.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&0x1_0000u64.to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&0x1_0000u64.to_le_bytes());
        for (at, bytes) in blobs {
            let at = *at as usize;
            b[at..at + bytes.len()].copy_from_slice(bytes);
        }
        // .shstrtab at 0xe000, section headers at 0xf000.
        let mut names = vec![0u8];
        let mut name_offs = Vec::new();
        for s in sections.iter().map(|s| s.name).chain([".shstrtab"]) {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(s.as_bytes());
            names.push(0);
        }
        b[0xe000..0xe000 + names.len()].copy_from_slice(&names);
        let shoff = 0xf000usize;
        let count = sections.len() + 2;
        b[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[58..60].copy_from_slice(&64u16.to_le_bytes());
        b[60..62].copy_from_slice(&(count as u16).to_le_bytes());
        b[62..64].copy_from_slice(&((count - 1) as u16).to_le_bytes());
        let shstrtab = Sect {
            name: ".shstrtab",
            sh_type: SHT_STRTAB,
            offset: 0xe000,
            size: names.len() as u64,
            link: 0,
            entsize: 0,
        };
        for (i, s) in sections.iter().chain([&shstrtab]).enumerate() {
            let h = shoff + 64 * (i + 1);
            b[h..h + 4].copy_from_slice(&name_offs[i].to_le_bytes());
            b[h + 4..h + 8].copy_from_slice(&s.sh_type.to_le_bytes());
            if s.offset < 0x1_0000 {
                b[h + 16..h + 24].copy_from_slice(&(0x40_0000 + s.offset).to_le_bytes());
            }
            b[h + 24..h + 32].copy_from_slice(&s.offset.to_le_bytes());
            b[h + 32..h + 40].copy_from_slice(&s.size.to_le_bytes());
            b[h + 40..h + 44].copy_from_slice(&s.link.to_le_bytes());
            b[h + 56..h + 64].copy_from_slice(&s.entsize.to_le_bytes());
        }
        assert!(len >= b.len() as u64);
        b
    }
}

/// Peak resident set size of this process in KiB, after resetting it (clear_refs 5), so a
/// measurement sees only what happens after this call.
fn reset_peak_rss_kib() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    peak_rss_kib()
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A sparse file whose `.symtab` claims `huge` bytes (the file really is that long, so a check
/// against the file size alone lets it through).
fn sparse_with_huge_symtab(name: &str, go: bool, huge: u64) -> PathBuf {
    use synth::*;
    let mut blobs = vec![(0xd000, b"\0main.x\0".to_vec())];
    let mut sections = Vec::new();
    if go {
        blobs.push((0x1000, buildinfo()));
        let mut pcln = 0xffff_fff1u32.to_le_bytes().to_vec();
        pcln.extend_from_slice(&[0, 0, 1, 8]);
        pcln.resize(0x100, 0);
        blobs.push((0x2000, pcln));
        sections.push(Sect {
            name: ".go.buildinfo",
            sh_type: SHT_PROGBITS,
            offset: 0x1000,
            size: 0x100,
            link: 0,
            entsize: 0,
        });
        sections.push(Sect {
            name: ".gopclntab",
            sh_type: SHT_PROGBITS,
            offset: 0x2000,
            size: 0x100,
            link: 0,
            entsize: 0,
        });
    }
    let strtab = sections.len() as u32 + 2;
    sections.push(Sect {
        name: ".symtab",
        sh_type: SHT_SYMTAB,
        offset: 0x1_0000,
        size: huge,
        link: strtab,
        entsize: 24,
    });
    sections.push(Sect {
        name: ".strtab",
        sh_type: SHT_STRTAB,
        offset: 0xd000,
        size: 8,
        link: 0,
        entsize: 0,
    });
    let len = 0x1_0000 + huge;
    let bytes = synth::elf(&blobs, &sections, len);
    let p = scratch(name, &bytes);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len)
        .unwrap();
    p
}

/// Catches: `.symtab`/`.strtab` read in full before any Go check, bounded only by the file size
/// (the agent allocated and filled gigabytes for a sparse file with a huge section).
#[test]
fn huge_sections_in_sparse_files_are_refused_without_reading_them() {
    for huge in [2u64 << 30, 64 << 30] {
        for go in [false, true] {
            let p = sparse_with_huge_symtab(&format!("sparse-{go}-{huge}"), go, huge);
            let before = reset_peak_rss_kib();
            let t = std::time::Instant::now();
            let result = analyze(&p);
            let took = t.elapsed();
            let grew_mib = peak_rss_kib().saturating_sub(before) / 1024;
            std::fs::remove_file(&p).unwrap();
            eprintln!("huge {huge} go {go}: {took:?}, peak RSS +{grew_mib} MiB: {result:?}");
            let e = result.unwrap_err();
            if go {
                assert!(
                    matches!(e.kind(), GoBinaryError::OverBudget { .. }),
                    "Go-looking file with a {huge}-byte .symtab: {e:?}"
                );
            } else {
                assert!(e.is_not_go(), "no Go magic, so not Go: {e:?}");
            }
            assert!(grew_mib < 64, "peak RSS grew by {grew_mib} MiB");
            assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
        }
    }
}

/// A Go-looking synthetic binary (build info, `.gopclntab` = `pcln` at file offset 0x2000,
/// claiming `pcln_size` bytes).
fn go_with_pclntab(name: &str, pcln: Vec<u8>, pcln_size: u64) -> PathBuf {
    use synth::*;
    let sections = [
        Sect {
            name: ".go.buildinfo",
            sh_type: SHT_PROGBITS,
            offset: 0x1000,
            size: 0x100,
            link: 0,
            entsize: 0,
        },
        Sect {
            name: ".gopclntab",
            sh_type: SHT_PROGBITS,
            offset: 0x2000,
            size: pcln_size,
            link: 0,
            entsize: 0,
        },
    ];
    let bytes = synth::elf(
        &[(0x1000, synth::buildinfo()), (0x2000, pcln)],
        &sections,
        0x1_0000,
    );
    scratch(name, &bytes)
}

/// A Go 1.20+ pclntab header: magic, quantum 1, pointer size 8, `nfunc`, text start 0x401000,
/// name table at `names`, function table at `functab`.
fn pcln_header(nfunc: u64, names: u64, functab: u64) -> Vec<u8> {
    let mut h = 0xffff_fff1u32.to_le_bytes().to_vec();
    h.extend_from_slice(&[0, 0, 1, 8]);
    h.extend_from_slice(&nfunc.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&0x40_1000u64.to_le_bytes());
    h.extend_from_slice(&names.to_le_bytes());
    h.resize(64, 0);
    h.extend_from_slice(&functab.to_le_bytes());
    h
}

/// A Go 1.16/1.17 pclntab header: magic 0xfffffffa, quantum 1, pointer size 8, `nfunc`, name
/// table at `names` (offset 24), function table at `functab` (offset 56).
fn pcln_header_116(nfunc: u64, names: u64, functab: u64) -> Vec<u8> {
    let mut h = 0xffff_fffau32.to_le_bytes().to_vec();
    h.extend_from_slice(&[0, 0, 1, 8]);
    h.extend_from_slice(&nfunc.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&names.to_le_bytes());
    h.resize(56, 0);
    h.extend_from_slice(&functab.to_le_bytes());
    h
}

/// Catches: a cut-off or lying `.gopclntab` (header, function count, table offsets, records)
/// read out of bounds, panicking, or allocating what the header claims.
#[test]
fn truncated_and_garbage_pclntab_are_clear_errors() {
    let malformed = |e: &GoBinaryError| matches!(e.kind(), GoBinaryError::Malformed { .. });
    type Expect<'a> = &'a dyn Fn(&GoBinaryError) -> bool;
    let cases: Vec<(&str, Vec<u8>, u64, Expect<'_>)> = vec![
        // Only the magic and the quantum/pointer-size bytes.
        (
            "header-cut",
            pcln_header(1, 72, 80)[..8].to_vec(),
            8,
            &malformed,
        ),
        // A function count whose table would not fit in memory.
        ("nfunc-huge", pcln_header(u64::MAX, 72, 80), 72, &malformed),
        // Tables past the end of the section.
        (
            "functab-outside",
            pcln_header(1, 72, 1 << 40),
            72,
            &malformed,
        ),
        // Not a pclntab at all.
        ("bad-magic", vec![0xaa; 72], 72, &malformed),
        // The Go 1.16/1.17 layout, cut off, lying about its count and its table.
        (
            "116-header-cut",
            pcln_header_116(1, 64, 64)[..40].to_vec(),
            40,
            &malformed,
        ),
        (
            "116-nfunc-huge",
            pcln_header_116(u64::MAX, 64, 64),
            64,
            &malformed,
        ),
        (
            "116-functab-outside",
            pcln_header_116(1, 64, 1 << 40),
            64,
            &malformed,
        ),
        // Go 1.2–1.15's table.
        (
            "go1.2-magic",
            {
                let mut h = pcln_header(1, 72, 80);
                h[..4].copy_from_slice(&0xffff_fffbu32.to_le_bytes());
                h
            },
            72,
            &|e| matches!(e.kind(), GoBinaryError::UnsupportedGo { .. }),
        ),
        // A pclntab that claims more than the file holds.
        ("past-eof", pcln_header(1, 72, 80), 1 << 30, &|e| {
            matches!(e.kind(), GoBinaryError::Truncated { .. })
        }),
        // A pclntab larger than one read may take (the file is grown sparsely below).
        ("over-budget", pcln_header(1, 72, 80), MAX_READ + 1, &|e| {
            matches!(e.kind(), GoBinaryError::OverBudget { .. })
        }),
    ];
    for (name, pcln, size, expect) in cases {
        let p = go_with_pclntab(&format!("pcln-{name}"), pcln, size);
        if name == "over-budget" {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(0x2000 + size)
                .unwrap();
        }
        let e = analyze(&p).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert!(expect(&e), "{name}: {e:?}");
    }
    // A valid header over a function table of garbage: an error, whatever the garbage. Odd
    // rounds use the Go 1.16/1.17 layout (absolute 8-byte entries).
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..200 {
        let mut pcln = if round % 2 == 0 {
            pcln_header(16, 72, 200)
        } else {
            pcln_header_116(16, 72, 200)
        };
        pcln.extend((0..400).map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        }));
        let len = pcln.len() as u64;
        let p = go_with_pclntab("pcln-garbage", pcln, len);
        assert!(analyze(&p).is_err(), "round {round}: garbage accepted");
    }
}

/// The fuzz target's synthetic seeds (fuzz/seeds/make_go_seeds.py) must reach the last stage of
/// the analysis, or the fuzzer starts from inputs that stop at the first check. Catches a seed
/// generator (or an analysis change) that leaves the seeds rejected early.
#[test]
fn fuzz_seeds_reach_probe_points() {
    let seeds = repo().join("fuzz/seeds/go_binary");
    for (name, stripped) in [("synthetic-go", false), ("synthetic-go-stripped", true)] {
        let bin = analyze(&seeds.join(name)).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(bin.go_version, "go1.24.3");
        assert_eq!(bin.stripped, stripped, "{name}");
        for function in [SERVE_HTTP, WRITE_HEADER] {
            let p = bin
                .probe_points(function)
                .unwrap_or_else(|e| panic!("{name} {function}: {e:?}"));
            let expected = if stripped {
                EntryCheck::MorestackJump
            } else {
                EntryCheck::Both
            };
            assert_eq!(p.entry_check, expected, "{name} {function}");
            assert_eq!(p.ret_offsets, [6], "{name} {function}");
        }
    }
}

/// `go tool nm` text symbols of `f` named exactly once, by name.
fn nm_text_symbols(f: &Fixture) -> std::collections::BTreeMap<String, u64> {
    let out = Command::new(go_tool(&f.version))
        .args(["tool", "nm"])
        .arg(&f.path)
        .env("GOTOOLCHAIN", "local")
        .env("GOENV", "off")
        .output()
        .unwrap();
    assert!(out.status.success(), "go tool nm failed");
    let mut seen: std::collections::BTreeMap<String, Option<u64>> = Default::default();
    for l in String::from_utf8(out.stdout).unwrap().lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if let [addr, "T", name] = cols[..] {
            let addr = u64::from_str_radix(addr, 16).unwrap();
            seen.entry(name.to_owned())
                .and_modify(|a| *a = None)
                .or_insert(Some(addr));
        }
    }
    seen.into_iter()
        .filter_map(|(n, a)| Some((n, a?)))
        .collect()
}

fn fixture(version: &str, variant: &str) -> &'static Fixture {
    fixtures()
        .iter()
        .find(|f| f.version == version && f.variant == variant)
        .unwrap_or_else(|| panic!("no fixture go{version} {variant}"))
}

/// Go 1.17's build info (pointers to Go strings, not inline) and `.gopclntab` (magic
/// 0xfffffffa, absolute 8-byte entries) on the real toolchain's builds: the stripped build's
/// table must name every function at the address `go tool nm` gives for the same toolchain's
/// unstripped build (same text layout), thousands of them. Before Go 1.17 support both formats
/// were refused as `unsupported_go`.
#[test]
fn go117_build_info_and_pclntab() {
    let default_build = fixture("1.17.13", "default");
    let nm = nm_text_symbols(default_build);
    for variant in ["default", "stripped", "pie"] {
        let f = fixture("1.17.13", variant);
        let bin = analyze(&f.path).unwrap_or_else(|e| panic!("{variant}: {e:?}"));
        assert_eq!(bin.go_version, "go1.17.13", "{variant}");
        assert_eq!(
            bin.module_path.as_deref(),
            Some("example.invalid/collector/testserver"),
            "{variant}"
        );
        assert!(
            bin.deps.is_empty(),
            "{variant}: stdlib only, {:?}",
            bin.deps
        );
        assert_eq!(bin.text_start, TextStart::Absolute, "{variant}");
        if variant == "stripped" {
            let (mut compared, mut wrong) = (0, Vec::new());
            // Names pclntab gives twice (an ABI0 wrapper beside its function) are never probed.
            for (name, func) in bin.functions().filter(|(_, f)| !f.ambiguous) {
                let (Some(&addr), Some(p)) = (nm.get(name), func.pclntab) else {
                    continue;
                };
                compared += 1;
                if p.start != addr {
                    wrong.push(format!("{name}: pclntab {:#x}, nm {addr:#x}", p.start));
                }
            }
            assert!(
                wrong.is_empty(),
                "{} wrong: {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(5)]
            );
            assert!(compared > 4000, "only {compared} functions compared");
        }
    }
}

/// An externally linked Go 1.17 PIE leaves its pointers 0 in the file, their values only in
/// `R_X86_64_RELATIVE` relocations (the internal linker writes both). The 1.17 PIE fixture
/// with every relocated slot zeroed must analyse exactly as the original: build info through
/// the relocated string pointers, pclntab entries through theirs.
#[test]
fn go117_pie_pointers_from_relocations() {
    let f = fixture("1.17.13", "pie");
    let original = analyze(&f.path).unwrap();
    let out = Command::new("readelf")
        .args(["-rW"])
        .arg(&f.path)
        .output()
        .unwrap();
    let mut bytes = std::fs::read(&f.path).unwrap();
    let mut zeroed = 0;
    for l in String::from_utf8(out.stdout).unwrap().lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        if cols.get(2) != Some(&"R_X86_64_RELATIVE") {
            continue;
        }
        let vaddr = u64::from_str_radix(cols[0], 16).unwrap();
        let off = original.vaddr_to_file_offset(vaddr).unwrap() as usize;
        bytes[off..off + 8].fill(0);
        zeroed += 1;
    }
    assert!(zeroed > 10_000, "{zeroed} relocations");
    let p = scratch("go117-pie-relocations-only", &bytes);
    let bin = analyze(&p).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(bin.go_version, original.go_version);
    assert_eq!(bin.module_path, original.module_path);
    assert_eq!(bin.cross_check, original.cross_check);
    for name in [SERVE_HTTP, WRITE_HEADER] {
        assert_eq!(bin.function(name), original.function(name), "{name}");
        assert_eq!(
            bin.probe_points(name).unwrap(),
            original.probe_points(name).unwrap(),
            "{name}"
        );
    }
    std::fs::remove_file(&p).unwrap();
}

/// Go before 1.17 passes arguments on the stack, so the uprobes' register reads would be wrong:
/// refused as `unsupported_go` with that reason, whether the build info says so (the real 1.17
/// fixture relabelled go1.16.15: the same build info and pclntab formats) or, with a version that
/// names no release, because the 1.16/1.17 pclntab cannot tell which it is.
#[test]
fn go_before_117_is_refused_with_its_reason() {
    let f = fixture("1.17.13", "stripped");
    let original = std::fs::read(&f.path).unwrap();
    let relabel = |to: &[u8; 9]| {
        let mut bytes = original.clone();
        let mut n = 0;
        let mut i = 0;
        while let Some(at) = bytes[i..].windows(9).position(|w| w == b"go1.17.13") {
            bytes[i + at..i + at + 9].copy_from_slice(to);
            i += at + 9;
            n += 1;
        }
        assert!(n > 0, "no go1.17.13 in the binary");
        bytes
    };
    for (to, reason) in [
        (
            b"go1.16.15",
            "Go older than 1.17 passes arguments on the stack; the uprobes read the register ABI",
        ),
        (
            b"go1.9.7xx",
            "Go older than 1.17 passes arguments on the stack; the uprobes read the register ABI",
        ),
        (
            b"gotip.xyz",
            "a Go 1.16/1.17 pclntab without a Go 1.17 version in the build info",
        ),
    ] {
        let label = String::from_utf8_lossy(to).into_owned();
        let p = scratch(
            &format!("relabelled-{}", label.replace(' ', "-")),
            &relabel(to),
        );
        let e = analyze(&p).unwrap_err();
        match e.kind() {
            GoBinaryError::UnsupportedGo { reason: r } => assert_eq!(*r, reason, "{label}"),
            other => panic!("{label}: {other:?}"),
        }
        std::fs::remove_file(&p).unwrap();
    }
}

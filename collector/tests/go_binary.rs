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

use collector::probes::go_http::{EntryCheck, GoBinaryError, analyze, pclntab::TextStart};
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

/// Builds (or finds cached) the 21 fixtures, once per test process.
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
        assert_eq!(list.len(), 21, "7 Go minors × 3 variants");
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
    eprintln!(
        "go{} {}: text start {:?}, {:?}",
        f.version, f.variant, bin.text_start, bin.cross_check
    );
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
    // moduledata, never borrowed from .symtab's runtime.text.
    check(
        matches!(
            bin.text_start,
            TextStart::Header(_) | TextStart::Relocation(_) | TextStart::Moduledata(_)
        ),
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
            .get(at..at + 16)
            .ok_or("entry offset past end of file")?;
        let insn = Decoder::with_ip(64, bytes, p.entry_vaddr, DecoderOptions::NONE).decode();
        check(
            !insn.is_invalid() && matches!(insn.mnemonic(), Mnemonic::Cmp | Mnemonic::Lea),
            || format!("{name}: first instruction {:?}", insn.mnemonic()),
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

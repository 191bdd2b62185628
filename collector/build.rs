//! Builds the kernel object (collector-ebpf) with the pinned eBPF nightly and embeds it.
//!
//! The nightly is pinned because its LLVM major must equal bpf-linker's (LLVM 22 here): newer
//! nightlies emit LLVM 23 bitcode that bpf-linker 0.13 (llvm-22) cannot read.
//! `scripts/bootstrap.sh` installs both; it names the same nightly.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

const EBPF_NIGHTLY: &str = "nightly-2026-06-25";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Lint/doc-only builds: an empty object keeps include_bytes! compiling; loading it
        // fails with a clear error at run time (see probes::load_object).
        fs::write(out_dir.join("collector"), b"").context("writing stub object")?;
        return Ok(());
    }
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = PathBuf::from(manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("collector has no parent dir"))?
        .join("collector-ebpf");
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    // aya_build watches the eBPF package only: a layout change in collector-common (shared by
    // both sides) must rebuild the object too, or a stale object with the old layout is
    // embedded ("invalid value size" at load).
    let common = PathBuf::from(root_dir).with_file_name("collector-common");
    println!("cargo::rerun-if-changed={}", common.join("src").display());
    println!(
        "cargo::rerun-if-changed={}",
        common.join("Cargo.toml").display()
    );
    aya_build::build_ebpf(
        [Package {
            name: "collector-ebpf",
            root_dir,
            no_default_features: false,
            features: &[],
        }],
        Toolchain::Custom(EBPF_NIGHTLY),
    )
    .context("building collector-ebpf; run scripts/bootstrap.sh if a toolchain is missing")
}

//! `cargo xtask image`: the collector's container image as an OCI archive, built with no
//! Docker engine. buildah (Debian) assembles it from `scratch`: one layer holding the static
//! (musl) collector, whose eBPF object is embedded in the binary as in every other build.
//!
//! Why scratch: the collector needs no shell or libc of a base image, and every file in an image
//! is something a scanner reports and a platform team patches. It has no system CA bundle
//! either: an OTLP endpoint behind TLS is trusted through `--otlp-ca-file` (a mounted Secret or
//! ConfigMap), as the chart's `otlp.caSecret` does.
//!
//! Why the image's user is root (uid 0): Kubernetes grants added capabilities only to a root
//! process (a non-root container gets them in its bounding set but not its effective set; there
//! are no ambient capabilities in a pod spec), and file capabilities on the binary would make
//! the kernel refuse to start it at all when one is missing, with no word of which one. The
//! least-privilege mode is therefore uid 0 with every capability dropped but the few it needs
//! (deploy/helm/collector, README "What each privilege is for").

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

pub struct Options {
    /// Where the archive is written; default `target/image/collector-<version>.oci.tar`.
    pub output: Option<PathBuf>,
}

/// What was built.
pub struct Built {
    pub archive: PathBuf,
    pub reference: String,
    pub binary_bytes: u64,
    pub archive_bytes: u64,
}

pub fn image(root: &Path, options: &Options) -> anyhow::Result<Built> {
    let version = workspace_version(root)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "collector",
            "--target",
            MUSL_TARGET,
        ])
        .current_dir(root)
        .status()
        .context("running cargo")?;
    ensure!(
        status.success(),
        "building the collector for {MUSL_TARGET} failed ({status}); the target is installed by scripts/bootstrap.sh"
    );
    let built = root
        .join("target")
        .join(MUSL_TARGET)
        .join("release/collector");
    let out_dir = root.join("target/image");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // Symbols are no use in a container (no debugger there) and are most of the file.
    let stripped = out_dir.join("collector");
    run(Command::new("strip").arg("-o").arg(&stripped).arg(&built))?;
    ensure_static(&stripped)?;
    let binary_bytes = std::fs::metadata(&stripped)?.len();

    let revision = git(root, &["rev-parse", "HEAD"]).unwrap_or_default();
    // The commit's time, not now: the same commit gives the same image (layer timestamps too).
    let commit_epoch = git(root, &["log", "-1", "--format=%ct"]).unwrap_or_else(|_| "0".into());
    let created = git(root, &["log", "-1", "--format=%cI"]).unwrap_or_default();
    let source = git(root, &["remote", "get-url", "origin"]).unwrap_or_default();
    let reference = format!("localhost/collector:{version}");
    let archive = options
        .output
        .clone()
        .unwrap_or_else(|| out_dir.join(format!("collector-{version}.oci.tar")));

    let container = output(Command::new("buildah").args(["from", "scratch"]))?;
    let result = (|| -> anyhow::Result<()> {
        run(Command::new("buildah")
            .args(["copy", "--chmod", "0755", &container])
            .arg(&stripped)
            .arg("/collector"))?;
        let mut config = Command::new("buildah");
        config.args([
            "config",
            "--entrypoint",
            r#"["/collector"]"#,
            "--cmd",
            "",
            "--user",
            "0:0",
            "--port",
            "9464/tcp",
            "--os",
            "linux",
            "--arch",
            "amd64",
        ]);
        let labels = [
            ("org.opencontainers.image.title", "collector".to_string()),
            (
                "org.opencontainers.image.description",
                "eBPF health signal collector: attributes kernel signals to workloads and exports them"
                    .to_string(),
            ),
            ("org.opencontainers.image.version", version.clone()),
            ("org.opencontainers.image.revision", revision),
            ("org.opencontainers.image.created", created),
            ("org.opencontainers.image.licenses", "Apache-2.0".to_string()),
            ("org.opencontainers.image.source", source),
            ("org.opencontainers.image.ref.name", version.clone()),
        ];
        for (key, value) in labels.iter().filter(|(_, v)| !v.is_empty()) {
            config.args(["--label", &format!("{key}={value}")]);
        }
        config.arg(&container);
        run(&mut config)?;
        if archive.exists() {
            std::fs::remove_file(&archive)?;
        }
        run(Command::new("buildah").args([
            "commit",
            "--format",
            "oci",
            "--timestamp",
            &commit_epoch,
            "--quiet",
            &container,
            &format!("oci-archive:{}:{reference}", archive.display()),
        ]))
    })();
    let _ = Command::new("buildah").args(["rm", &container]).output();
    result?;
    let archive_bytes = std::fs::metadata(&archive)?.len();
    Ok(Built {
        archive,
        reference,
        binary_bytes,
        archive_bytes,
    })
}

fn workspace_version(root: &Path) -> anyhow::Result<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "version").then(|| v.trim().trim_matches('"').to_string())
        })
        .context("no version in [workspace.package]")
}

/// A scratch image has no dynamic loader: a binary that asks for one (an ELF PT_INTERP program
/// header) would fail there with a bare "no such file or directory".
fn ensure_static(binary: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(binary)?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    ensure!(
        bytes.get(..5) == Some(b"\x7fELF\x02"),
        "{} is not a 64-bit ELF file",
        binary.display()
    );
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{}: truncated ELF header", binary.display());
    };
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff)? + i * usize::from(phentsize);
        const PT_INTERP: u32 = 3;
        if u32_at(at) == Some(PT_INTERP) {
            bail!(
                "{} is dynamically linked (it names an interpreter): not for a scratch image",
                binary.display()
            );
        }
    }
    Ok(())
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    output(Command::new("git").args(args).current_dir(root))
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    output(command).map(drop)
}

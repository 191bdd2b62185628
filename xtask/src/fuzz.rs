//! `cargo xtask fuzz`: runs the cargo-fuzz targets of fuzz/ (a workspace of its own) one after
//! the other and reports executions and crashes per target.
//!
//! Needs `cargo-fuzz` and the pinned nightly (`scripts/bootstrap.sh` installs both). Targets are
//! built without a sanitizer: the code under test is safe Rust, the bugs looked for are panics,
//! aborts, unbounded allocations (`-rss_limit_mb`) and hangs (`-timeout`), and ASan would halve
//! the executions. Each run starts from the checked-in seeds (fuzz/seeds/<target>) plus the
//! working corpus (fuzz/corpus/<target>, not checked in, grown by every run). A crash leaves
//! its input in fuzz/artifacts/<target>/ and fails the command; turn it into a regression test
//! next to the code it crashed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The nightly cargo-fuzz builds with (the one the eBPF crate already needs).
const NIGHTLY: &str = "+nightly-2026-06-25";
/// Every target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 2] = ["go_binary", "cgroup_path"];
/// `--short`: per target, for CI.
pub const SHORT: Duration = Duration::from_secs(30);

pub struct Options {
    /// Seconds per target.
    pub duration: Duration,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// Also seed go_binary with the smallest real Go fixture (target/go-fixtures), if built.
    /// Off for short runs: a 5 MB input costs milliseconds per execution.
    pub with_fixtures: bool,
}

/// What one run did, from libFuzzer's final statistics.
struct Outcome {
    target: String,
    execs: u64,
    wall: Duration,
    crashed: bool,
}

pub fn fuzz(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let fuzz_dir = root.join("fuzz");
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &opts.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "unknown fuzz target {t:?} (targets: {})",
                    TARGETS.join(", ")
                );
            }
        }
        opts.targets.iter().map(String::as_str).collect()
    };
    let mut outcomes = Vec::new();
    for target in targets {
        let t = Instant::now();
        cargo_fuzz(root, &["build", "--sanitizer", "none", target], false)
            .with_context(|| format!("building fuzz target {target}"))?;
        eprintln!("fuzz: {target} built in {:.0?}", t.elapsed());

        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).context("creating the corpus directory")?;
        if target == "go_binary" && opts.with_fixtures {
            seed_with_fixture(root, &corpus)?;
        }
        let seeds = fuzz_dir.join("seeds").join(target);
        let secs = opts.duration.as_secs().max(1).to_string();
        let max_time = format!("-max_total_time={secs}");
        let corpus_arg = corpus.display().to_string();
        let seeds_arg = seeds.display().to_string();
        let args = [
            "run",
            "--sanitizer",
            "none",
            target,
            &corpus_arg,
            &seeds_arg,
            "--",
            &max_time,
            // One input may take this long before it counts as a hang.
            "-timeout=10",
            // The analysis budgets its reads (256 MiB per binary); more is a bug.
            "-rss_limit_mb=1024",
            "-print_final_stats=1",
        ];
        let t = Instant::now();
        let stderr = cargo_fuzz(root, &args, true);
        let wall = t.elapsed();
        let (crashed, log) = match stderr {
            Ok(log) => (false, log),
            Err(e) => (true, format!("{e:#}")),
        };
        let execs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if crashed {
            eprintln!("{log}");
        } else {
            // libFuzzer's closing line (coverage, corpus) and final statistics.
            for line in log
                .lines()
                .filter(|l| l.contains("DONE") || l.starts_with("stat::"))
            {
                eprintln!("fuzz: {target}: {line}");
            }
        }
        outcomes.push(Outcome {
            target: target.to_owned(),
            execs,
            wall,
            crashed,
        });
    }
    eprintln!("fuzz summary:");
    for o in &outcomes {
        eprintln!(
            "  {:<12} {:>10} execs in {:>4.0?}  {}",
            o.target,
            o.execs,
            o.wall,
            if o.crashed {
                "CRASHED (input in fuzz/artifacts/)"
            } else {
                "0 crashes"
            }
        );
    }
    if outcomes.iter().any(|o| o.crashed) {
        bail!("a fuzz target crashed");
    }
    Ok(())
}

/// Runs `cargo +nightly fuzz <args>` in the repository root. With `capture`, stderr (where
/// libFuzzer reports) is returned, and included in the error when the run fails.
fn cargo_fuzz(root: &Path, args: &[&str], capture: bool) -> anyhow::Result<String> {
    eprintln!("+ cargo {NIGHTLY} fuzz {}", args.join(" "));
    // The rustup proxy picks the nightly; variables the outer cargo set for the stable
    // toolchain would override it.
    let mut cmd = Command::new("cargo");
    cmd.arg(NIGHTLY)
        .arg("fuzz")
        .args(args)
        .current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        // The collector library is what is fuzzed; its eBPF object is not needed.
        .env("AYA_BUILD_SKIP", "1");
    if capture {
        cmd.stderr(Stdio::piped());
    }
    let out = cmd
        .output()
        .context("running cargo fuzz (install it with scripts/bootstrap.sh)")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!(
            "cargo fuzz {} failed ({}):\n{stderr}",
            args.join(" "),
            out.status
        );
    }
    Ok(stderr)
}

/// Copies the smallest built Go fixture into the corpus (once).
fn seed_with_fixture(root: &Path, corpus: &Path) -> anyhow::Result<()> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let Ok(dirs) = std::fs::read_dir(target.join("go-fixtures")) else {
        eprintln!("fuzz: no Go fixtures built (tests/go/build-fixtures.sh); synthetic seeds only");
        return Ok(());
    };
    let smallest = dirs
        .flatten()
        .map(|d| d.path().join("server"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.len(), p)))
        .min();
    if let Some((_, path)) = smallest {
        std::fs::copy(&path, corpus.join("fixture-smallest"))
            .with_context(|| format!("copying {}", path.display()))?;
    }
    Ok(())
}

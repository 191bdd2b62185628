//! `cargo xtask fuzz`: runs the cargo-fuzz targets of fuzz/ (a workspace of its own) one after
//! the other and reports executions, coverage and crashes per target. `./x test` runs each
//! briefly ([`SHORT`]); long runs are `--seconds` or `--runs` (BENCHMARKS.md, Fuzzing).
//!
//! Needs `cargo-fuzz` and the pinned nightly (`scripts/bootstrap.sh` installs both). Targets are
//! built without a sanitizer: the code under test is safe Rust, the bugs looked for are panics,
//! aborts, unbounded allocations (`-rss_limit_mb`) and hangs (`-timeout`), and ASan would halve
//! the executions. They are built once for all targets into target/fuzz (kept between runs, so
//! a warm CI run only links nothing and starts). Each run starts from the checked-in seeds
//! (fuzz/seeds/<target>) plus the working corpus (fuzz/corpus/<target>, not checked in, grown by
//! every run); libFuzzer's output goes to target/fuzz/logs/<target>.log. A crash leaves its
//! input in fuzz/artifacts/<target>/ and fails the command; turn it into a regression test
//! next to the code it crashed.

use std::{
    fs::File,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The nightly cargo-fuzz builds with (the one the eBPF crate already needs).
const NIGHTLY: &str = "+nightly-2026-06-25";
/// Every target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 5] = ["go_binary", "cgroup_path", "ring_record", "config", "api"];
/// `--short`: per target, for CI (5 targets: about 2 minutes with a warm build).
pub const SHORT: Duration = Duration::from_secs(20);

pub struct Options {
    /// Seconds per target.
    pub duration: Duration,
    /// Stop each target after this many executions instead (the time limit still applies
    /// when also set by the caller; see `fuzz`).
    pub runs: Option<u64>,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// Also seed go_binary with the smallest real Go fixture (target/go-fixtures), if built.
    /// Off for short runs: a 5 MB input costs milliseconds per execution.
    pub with_fixtures: bool,
    /// Unoptimised build (`cargo fuzz --dev`): for CI's short runs. The optimised build of the
    /// collector library with coverage instrumentation and one codegen unit takes minutes
    /// after every change to it, longer than the runs themselves; unoptimised, each input runs
    /// slower but the build is quick.
    pub dev: bool,
    /// Start from the seeds alone, in a corpus emptied first (target/fuzz/scratch-corpus):
    /// libFuzzer replays the whole corpus before its time limit applies, and the working
    /// corpus grown by long runs (thousands of inputs) took 131 s to replay unoptimised.
    pub scratch_corpus: bool,
}

/// What one run did, from libFuzzer's final statistics and closing line.
struct Outcome {
    target: String,
    execs: u64,
    wall: Duration,
    /// From the closing `DONE` line: coverage (edges), features, corpus entries and size.
    cov: String,
    ft: String,
    corpus: String,
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
    let target_dir = super::cargo_target_dir(root).join("fuzz");
    let target_dir_arg = target_dir.display().to_string();
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs).context("creating target/fuzz/logs")?;

    // One build for every target: one cargo invocation, the library compiled once.
    let t = Instant::now();
    let mut build = vec![
        "build",
        "--sanitizer",
        "none",
        "--target-dir",
        &target_dir_arg,
    ];
    if opts.dev {
        build.push("--dev");
    }
    if targets.len() == 1 {
        build.push(targets[0]);
    }
    cargo_fuzz(root, &build, None).context("building the fuzz targets")?;
    eprintln!("fuzz: built in {:.0?}", t.elapsed());

    let mut outcomes = Vec::new();
    for target in targets {
        let corpus = if opts.scratch_corpus {
            let c = target_dir.join("scratch-corpus").join(target);
            let _ = std::fs::remove_dir_all(&c);
            c
        } else {
            fuzz_dir.join("corpus").join(target)
        };
        std::fs::create_dir_all(&corpus).context("creating the corpus directory")?;
        if target == "go_binary" && opts.with_fixtures {
            seed_with_fixture(root, &corpus)?;
        }
        let seeds = fuzz_dir.join("seeds").join(target);
        let secs = opts.duration.as_secs().max(1).to_string();
        let max_time = format!("-max_total_time={secs}");
        let runs = opts.runs.map(|r| format!("-runs={r}"));
        let corpus_arg = corpus.display().to_string();
        let seeds_arg = seeds.display().to_string();
        let mut args = vec![
            "run",
            "--sanitizer",
            "none",
            "--target-dir",
            &target_dir_arg,
        ];
        if opts.dev {
            args.push("--dev");
        }
        args.extend([
            target,
            &corpus_arg,
            &seeds_arg,
            "--",
            // One input may take this long before it counts as a hang.
            "-timeout=10",
            // The analysis budgets its reads (256 MiB per binary); more is a bug.
            "-rss_limit_mb=1024",
            "-print_final_stats=1",
        ]);
        match &runs {
            Some(r) => args.push(r),
            None => args.push(&max_time),
        }
        let log_path = logs.join(format!("{target}.log"));
        let t = Instant::now();
        let result = cargo_fuzz(root, &args, Some(&log_path));
        let wall = t.elapsed();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let crashed = result.is_err();
        let execs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let done = log.lines().rfind(|l| is_done(l)).unwrap_or("");
        let field = |name: &str| {
            let mut words = done.split_whitespace();
            words
                .find(|w| *w == name)
                .and_then(|_| words.next())
                .unwrap_or("?")
                .to_owned()
        };
        if crashed {
            // The end of libFuzzer's report: the panic, the input's path.
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            if let Err(e) = &result {
                eprintln!("{e:#}");
            }
        } else {
            for line in log
                .lines()
                .filter(|l| is_done(l) || l.starts_with("stat::"))
            {
                eprintln!("fuzz: {target}: {line}");
            }
        }
        outcomes.push(Outcome {
            target: target.to_owned(),
            execs,
            wall,
            cov: field("cov:"),
            ft: field("ft:"),
            corpus: field("corp:"),
            crashed,
        });
    }
    eprintln!("fuzz summary (logs: {}):", logs.display());
    for o in &outcomes {
        let secs = o.wall.as_secs_f64().max(0.001);
        eprintln!(
            "  {:<12} {:>11} execs in {:>6.0?} ({:>7.0} exec/s)  cov {:>5}  ft {:>6}  corpus {:>12}  {}",
            o.target,
            o.execs,
            o.wall,
            o.execs as f64 / secs,
            o.cov,
            o.ft,
            o.corpus,
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

/// libFuzzer's closing status line (`#<execs>\tDONE   cov: ...`).
fn is_done(line: &str) -> bool {
    line.split_whitespace().nth(1) == Some("DONE")
}

/// Runs `cargo +nightly fuzz <args>` in the repository root. With `log`, stderr (where
/// libFuzzer reports) goes to that file.
fn cargo_fuzz(root: &Path, args: &[&str], log: Option<&Path>) -> anyhow::Result<()> {
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
    if let Some(path) = log {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        cmd.stderr(Stdio::from(file));
    }
    let status = cmd
        .status()
        .context("running cargo fuzz (install it with scripts/bootstrap.sh)")?;
    if !status.success() {
        bail!("cargo fuzz {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Copies the smallest built Go fixture into the corpus (once).
fn seed_with_fixture(root: &Path, corpus: &Path) -> anyhow::Result<()> {
    let Ok(dirs) = std::fs::read_dir(super::cargo_target_dir(root).join("go-fixtures")) else {
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

//! `cargo xtask callgrind`: instruction counts of the userspace hot path, compared with the
//! committed baseline. The CI's only performance gate (part of `./x test`).
//!
//! Wall-clock times on a shared 2-core machine move by tens of percent from run to run;
//! instructions executed (callgrind's Ir) do not: the scenarios are seeded and deterministic,
//! so a count only moves when the code, the toolchain or a dependency does. Each scenario of
//! `collector/benches/hotpath.rs` runs in its own process under `valgrind --tool=callgrind`,
//! counting only inside `hotpath_measured` (`--toggle-collect`): fixture building and process
//! start-up are left out.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Committed baseline, relative to the workspace root.
pub const BASELINE: &str = "collector/benches/callgrind-baseline.json";
/// A scenario fails the gate when it executes more than this fraction over its baseline.
const TOLERANCE: f64 = 0.10;
/// The driver's function that callgrind counts (`#[unsafe(no_mangle)]` there).
const MEASURED_FN: &str = "hotpath_measured";
const DRIVER: &str = "hotpath";

pub struct Options {
    /// Rewrite the baseline with this run's counts instead of checking against it.
    pub update: bool,
    /// Runs per scenario; the median is compared and the spread printed.
    pub repeat: usize,
}

pub fn callgrind(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let valgrind = tool_version("valgrind", &["--version"])
        .context("valgrind not found: install Debian's valgrind (scripts/bootstrap.sh does)")?;
    let rustc = tool_version("rustc", &["--version"]).unwrap_or_default();
    let exe = build_driver(root)?;
    let names = scenarios(&exe)?;
    let out_dir = root.join("target/callgrind");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let started = Instant::now();
    let mut runs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for name in &names {
        for i in 0..opts.repeat.max(1) {
            let ir = measure(&exe, name, &out_dir.join(format!("{name}.{i}.out")))?;
            runs.entry(name.clone()).or_default().push(ir);
        }
    }
    eprintln!(
        "callgrind: {} scenario(s) x {} run(s) in {:.0} s ({valgrind})",
        names.len(),
        opts.repeat.max(1),
        started.elapsed().as_secs_f64()
    );
    let counts: BTreeMap<String, u64> = runs
        .iter()
        .map(|(name, v)| (name.clone(), median(v)))
        .collect();

    let path = root.join(BASELINE);
    let baseline = read_baseline(&path)?;
    let report = compare(baseline.as_ref().map(|b| &b.scenarios), &counts);
    print_table(&report, &runs, opts.repeat > 1);
    if let Some(b) = &baseline
        && (b.valgrind != valgrind || b.rustc != rustc)
    {
        eprintln!(
            "note: baseline recorded with {} / {}, this run {rustc} / {valgrind}",
            b.rustc, b.valgrind
        );
    }

    if opts.update {
        write_baseline(&path, &counts, &rustc, &valgrind)?;
        eprintln!("callgrind: wrote {}", path.display());
        return Ok(());
    }
    if baseline.is_none() {
        bail!(
            "no baseline at {}: run `cargo xtask callgrind --update` and commit it",
            path.display()
        );
    }
    let failed: Vec<&Row> = report.iter().filter(|r| r.verdict.fails()).collect();
    if report.iter().any(|r| matches!(r.verdict, Verdict::Faster)) {
        eprintln!(
            "note: a scenario got more than {:.0} % cheaper; `cargo xtask callgrind --update` \
             lets the gate keep the gain",
            TOLERANCE * 100.0
        );
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|r| r.name.as_str()).collect();
        bail!(
            "callgrind gate failed for {} (more than {:.0} % over {BASELINE}, or no baseline \
             entry). If the extra work is intended, run `cargo xtask callgrind --update` and \
             commit the baseline with the change that caused it.",
            names.join(", "),
            TOLERANCE * 100.0
        );
    }
    Ok(())
}

fn tool_version(tool: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds the driver with the bench profile (optimised, like the daemon) and returns its path,
/// read from cargo's JSON messages.
fn build_driver(root: &Path) -> anyhow::Result<PathBuf> {
    let args = [
        "bench",
        "-p",
        "collector",
        "--bench",
        DRIVER,
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    eprintln!("+ cargo {}", args.join(" "));
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!("building the {DRIVER} driver failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == DRIVER)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo reported no executable for the {DRIVER} bench"))
}

fn scenarios(exe: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(exe)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", exe.display()))?;
    if !out.status.success() {
        bail!("{} --list failed ({})", exe.display(), out.status);
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        bail!("{} lists no scenarios", exe.display());
    }
    Ok(names)
}

/// Runs one scenario under callgrind and returns the instructions counted inside
/// `hotpath_measured`.
fn measure(exe: &Path, scenario: &str, out_file: &Path) -> anyhow::Result<u64> {
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("-q")
        .arg(format!("--toggle-collect={MEASURED_FN}"))
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(exe)
        .arg(scenario)
        .status()
        .context("running valgrind")?;
    if !status.success() {
        bail!("scenario {scenario} failed under callgrind ({status})");
    }
    let text = std::fs::read_to_string(out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    let ir =
        parse_total(&text).with_context(|| format!("no totals line in {}", out_file.display()))?;
    if ir == 0 {
        // The toggle matched nothing: the driver's measured function was renamed or inlined.
        bail!("scenario {scenario}: callgrind counted 0 instructions in {MEASURED_FN}");
    }
    Ok(ir)
}

/// Total of the first event (Ir, the only one collected without cache simulation) from a
/// callgrind output file: the `totals:` line, else `summary:`.
fn parse_total(text: &str) -> Option<u64> {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    field("totals:").or_else(|| field("summary:"))
}

fn median(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
}

struct Baseline {
    scenarios: BTreeMap<String, u64>,
    rustc: String,
    valgrind: String,
}

fn read_baseline(path: &Path) -> anyhow::Result<Option<Baseline>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let scenarios = v["scenarios"]
        .as_object()
        .with_context(|| format!("{}: no \"scenarios\" object", path.display()))?
        .iter()
        .map(|(k, n)| {
            n.as_u64()
                .map(|n| (k.clone(), n))
                .with_context(|| format!("{}: {k} is not a count", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let text_of = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(Some(Baseline {
        scenarios,
        rustc: text_of("rustc"),
        valgrind: text_of("valgrind"),
    }))
}

fn write_baseline(
    path: &Path,
    counts: &BTreeMap<String, u64>,
    rustc: &str,
    valgrind: &str,
) -> anyhow::Result<()> {
    let doc = json!({
        "about": "Instructions (callgrind Ir) executed by the measured step of each scenario of \
                  collector/benches/hotpath.rs. `cargo xtask callgrind` fails when one grows more \
                  than 10 % over this; `cargo xtask callgrind --update` rewrites it.",
        "rustc": rustc,
        "valgrind": valgrind,
        "scenarios": counts,
    });
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Verdict {
    Ok,
    /// More than `TOLERANCE` over the baseline.
    Slower,
    /// More than `TOLERANCE` under it (passes; the baseline could be tightened).
    Faster,
    /// Run, but not in the baseline.
    New,
    /// In the baseline, but the driver no longer has it.
    Gone,
}

impl Verdict {
    fn fails(self) -> bool {
        matches!(self, Verdict::Slower | Verdict::New | Verdict::Gone)
    }
}

struct Row {
    name: String,
    old: Option<u64>,
    new: Option<u64>,
    verdict: Verdict,
}

fn compare(baseline: Option<&BTreeMap<String, u64>>, counts: &BTreeMap<String, u64>) -> Vec<Row> {
    let empty = BTreeMap::new();
    let baseline = baseline.unwrap_or(&empty);
    let mut rows: Vec<Row> = counts
        .iter()
        .map(|(name, &new)| {
            let old = baseline.get(name).copied();
            let verdict = match old {
                None => Verdict::New,
                Some(old) if new as f64 > old as f64 * (1.0 + TOLERANCE) => Verdict::Slower,
                Some(old) if (new as f64) < old as f64 * (1.0 - TOLERANCE) => Verdict::Faster,
                Some(_) => Verdict::Ok,
            };
            Row {
                name: name.clone(),
                old,
                new: Some(new),
                verdict,
            }
        })
        .collect();
    rows.extend(
        baseline
            .iter()
            .filter(|(name, _)| !counts.contains_key(*name))
            .map(|(name, &old)| Row {
                name: name.clone(),
                old: Some(old),
                new: None,
                verdict: Verdict::Gone,
            }),
    );
    rows
}

/// 1234567 → "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_table(rows: &[Row], runs: &BTreeMap<String, Vec<u64>>, spread: bool) {
    let cell = |n: Option<u64>| n.map_or_else(|| "-".to_string(), grouped);
    print!(
        "{:<26} {:>15} {:>15} {:>9}",
        "scenario", "baseline Ir", "new Ir", "change"
    );
    println!(
        "{}",
        if spread {
            "    spread  result"
        } else {
            "  result"
        }
    );
    for r in rows {
        let change = match (r.old, r.new) {
            (Some(o), Some(n)) if o > 0 => format!("{:+.2} %", (n as f64 / o as f64 - 1.0) * 100.0),
            _ => "-".to_string(),
        };
        let result = match r.verdict {
            Verdict::Ok => "ok",
            Verdict::Slower => "FAIL (> +10 %)",
            Verdict::Faster => "ok (faster)",
            Verdict::New => "FAIL (not in baseline)",
            Verdict::Gone => "FAIL (no longer run)",
        };
        print!(
            "{:<26} {:>15} {:>15} {:>9}",
            r.name,
            cell(r.old),
            cell(r.new),
            change
        );
        if spread {
            // (max - min) / min over the repeated runs: how deterministic the count is.
            let s = runs.get(&r.name).map_or_else(
                || "-".to_string(),
                |v| {
                    let (lo, hi) = (
                        v.iter().min().copied().unwrap_or(0),
                        v.iter().max().copied().unwrap_or(0),
                    );
                    format!("{:.3} %", (hi - lo) as f64 / lo.max(1) as f64 * 100.0)
                },
            );
            print!(" {s:>9}");
        }
        println!("  {result}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_line_wins_over_summary() {
        let text = "version: 1\ncmd: x\nevents: Ir\nsummary: 999\nfn=main\n0 5\ntotals: 1234\n";
        assert_eq!(parse_total(text), Some(1234));
        assert_eq!(parse_total("summary: 77\n"), Some(77));
        assert_eq!(parse_total("events: Ir\n"), None);
    }

    #[test]
    fn more_than_ten_percent_over_fails_and_unknown_scenarios_fail() {
        let base: BTreeMap<String, u64> = [("a", 1_000), ("b", 1_000), ("c", 1_000), ("gone", 5)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let now: BTreeMap<String, u64> = [("a", 1_100), ("b", 1_101), ("c", 800), ("new", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let rows = compare(Some(&base), &now);
        let v = |n: &str| rows.iter().find(|r| r.name == n).map(|r| r.verdict);
        assert_eq!(v("a"), Some(Verdict::Ok), "exactly +10 % passes");
        assert_eq!(v("b"), Some(Verdict::Slower));
        assert_eq!(v("c"), Some(Verdict::Faster));
        assert_eq!(v("new"), Some(Verdict::New));
        assert_eq!(v("gone"), Some(Verdict::Gone));
        assert!(!Verdict::Faster.fails() && Verdict::Slower.fails());
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(438_064_827), "438,064,827");
    }
}

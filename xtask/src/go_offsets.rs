//! `cargo xtask go-offsets [--check] [--also GO...]`: regenerates the per-Go-version table of
//! `net/http` struct field offsets the Go uprobes fall back on when a binary has no DWARF
//! (collector/src/probes/go_http/offsets_table.json).
//!
//! For every release in tests/go/versions (toolchains from `WITH_GO=1 scripts/bootstrap.sh`,
//! under `$CARGO_TARGET_DIR/go/<version>`), builds tests/go/offsets, runs it, and keeps one row
//! per Go minor. `--check` compares instead of writing and fails when the committed table is
//! stale. `--also` runs the program with further `go` binaries (e.g. other patch releases) and
//! fails unless each one gives exactly the row of its minor: that is how the assumption "offsets
//! are stable within a minor" is checked.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

/// Where the table lives, relative to the repository root.
pub const TABLE: &str = "collector/src/probes/go_http/offsets_table.json";

/// The numeric fields the Go program prints and the table stores, in table order.
const FIELDS: [&str; 11] = [
    "request_method",
    "request_url",
    "request_proto_major",
    "request_pattern",
    "request_size",
    "url_path",
    "url_size",
    // net/http's HTTP/2 writer, found on a live request (tests/go/offsets/h2.go).
    "h2_writer_hash",
    "h2_writer_rws",
    "h2_rws_status",
    // `Request.TLS`: with ProtoMajor, tells the requests the socket parser cannot read.
    "request_tls",
];

pub struct Options {
    pub check: bool,
    pub also: Vec<PathBuf>,
}

/// One table row: what one toolchain printed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// `(1, 24)`.
    minor: (u32, u32),
    /// `go1.24.11`.
    go_version: String,
    /// The values of [`FIELDS`], `None` for a field the version lacks (`request_pattern`).
    values: Vec<Option<u64>>,
}

pub fn go_offsets(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let versions = read_versions(&root.join("tests/go/versions"))?;
    ensure!(
        !versions.is_empty(),
        "tests/go/versions lists no Go release"
    );
    let missing: Vec<&str> = versions
        .iter()
        .filter(|v| !go_binary(&target, v).is_file())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        bail!(
            "Go toolchains {missing:?} are not installed under {}: run `WITH_GO=1 scripts/bootstrap.sh`",
            target.join("go").display()
        );
    }

    // Build and run in parallel: each build is a few seconds of one core.
    let rows: Vec<anyhow::Result<Row>> = std::thread::scope(|s| {
        let handles: Vec<_> = versions
            .iter()
            .map(|v| {
                let go = go_binary(&target, v);
                let target = &target;
                s.spawn(move || run_program(root, target, &go, v, Some(v)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
            })
            .collect()
    });
    let mut by_minor: BTreeMap<(u32, u32), Row> = BTreeMap::new();
    for row in rows {
        let row = row?;
        if let Some(old) = by_minor.get(&row.minor) {
            ensure!(
                old.values == row.values,
                "{} and {} (same minor) disagree: {:?} vs {:?}",
                old.go_version,
                row.go_version,
                old.values,
                row.values
            );
        }
        // tests/go/versions is in ascending order: the newest patch wins the row.
        by_minor.insert(row.minor, row);
    }

    for go in &opts.also {
        let label = go.display().to_string();
        // The build runs in tests/go/offsets: a relative path would resolve from there.
        let go = std::fs::canonicalize(go).with_context(|| format!("--also {label}"))?;
        let row = run_program(root, &target, &go, &label, None)?;
        let Some(expected) = by_minor.get(&row.minor) else {
            bail!(
                "{} ({label}) is of minor {}.{}, which tests/go/versions does not cover",
                row.go_version,
                row.minor.0,
                row.minor.1
            );
        };
        ensure!(
            expected.values == row.values,
            "{} gives {:?} but the table row (from {}) is {:?}: offsets are not stable within Go {}.{}",
            row.go_version,
            row.values,
            expected.go_version,
            expected.values,
            row.minor.0,
            row.minor.1
        );
        eprintln!(
            "go-offsets: {} agrees with the row from {}",
            row.go_version, expected.go_version
        );
    }

    let text = render(by_minor.values());
    let path = root.join(TABLE);
    if opts.check {
        let committed = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if committed != text {
            let diff: Vec<String> = committed
                .lines()
                .zip(text.lines())
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("  committed: {a}\n  generated: {b}"))
                .collect();
            bail!(
                "{TABLE} is stale (run `cargo xtask go-offsets`):\n{}",
                if diff.is_empty() {
                    "  (different number of lines)".to_owned()
                } else {
                    diff.join("\n")
                }
            );
        }
        eprintln!("go-offsets: {TABLE} is up to date");
    } else {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("go-offsets: wrote {TABLE} ({} Go minors)", by_minor.len());
    }
    Ok(())
}

fn go_binary(target: &Path, version: &str) -> PathBuf {
    target.join("go").join(version).join("bin/go")
}

fn read_versions(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// `go1.24.11` (or `go1.24`) → `(1, 24)`. Pre-releases and devel builds are refused: the table
/// holds releases only.
fn parse_minor(go_version: &str) -> Option<(u32, u32)> {
    let rest = go_version.strip_prefix("go")?;
    let mut parts = rest.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    match parts.next() {
        None => {}
        Some(patch) => {
            patch.parse::<u32>().ok()?;
        }
    }
    parts.next().is_none().then_some((major, minor))
}

/// Builds tests/go/offsets with `go` and runs it. `expect` is the version the toolchain must
/// report (from tests/go/versions), if known.
fn run_program(
    root: &Path,
    target: &Path,
    go: &Path,
    label: &str,
    expect: Option<&str>,
) -> anyhow::Result<Row> {
    let src = root.join("tests/go/offsets");
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let out_dir = target.join("go-offsets").join(safe);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let exe = out_dir.join("offsets");
    let version = Command::new(go)
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .env("GOENV", "off")
        .output()
        .with_context(|| format!("running {}", go.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let mut build = Command::new(go);
    build.args(["build", "-trimpath"]);
    // VCS stamping (Go 1.18+) is off; Go 1.17 has neither the stamping nor the flag.
    if parse_minor(&version).is_none_or(|m| m >= (1, 18)) {
        build.arg("-buildvcs=false");
    }
    let build = build
        .arg("-o")
        .arg(&exe)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=mod")
        .env("GOENV", "off")
        .env("GOCACHE", target.join("go-cache"))
        .env("GOPATH", target.join("go-path"))
        .output()
        .with_context(|| format!("running {}", go.display()))?;
    ensure!(
        build.status.success(),
        "building tests/go/offsets with {label} failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    ensure!(
        run.status.success(),
        "tests/go/offsets built with {label} failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: Value = serde_json::from_slice(&run.stdout)
        .with_context(|| format!("output of tests/go/offsets built with {label}"))?;
    parse_row(&json, expect)
        .with_context(|| format!("output of tests/go/offsets built with {label}"))
}

fn parse_row(json: &Value, expect: Option<&str>) -> anyhow::Result<Row> {
    let go_version = json["go_version"]
        .as_str()
        .context("no go_version")?
        .to_owned();
    if let Some(v) = expect {
        ensure!(
            go_version == format!("go{v}"),
            "toolchain reports {go_version}, expected go{v}"
        );
    }
    let minor = parse_minor(&go_version)
        .with_context(|| format!("{go_version} is not a Go release version"))?;
    let arch = json["goarch"].as_str().context("no goarch")?;
    ensure!(
        arch == "amd64",
        "the table is for amd64 and this toolchain builds for {arch}"
    );
    let mut values = Vec::new();
    for field in FIELDS {
        let v = &json[field];
        values.push(match v {
            Value::Null if field == "request_pattern" || field.starts_with("h2_") => None,
            _ => Some(v.as_u64().with_context(|| format!("{field} is {v}"))?),
        });
    }
    let pattern_expected = minor >= (1, 23);
    ensure!(
        values[3].is_some() == pattern_expected,
        "{go_version}: request_pattern is {:?}, expected it {}",
        values[3],
        if pattern_expected {
            "present"
        } else {
            "absent"
        }
    );
    Ok(Row {
        minor,
        go_version,
        values,
    })
}

/// The table as committed: one row per line, so a new Go release is a one-line diff.
fn render<'a>(rows: impl Iterator<Item = &'a Row>) -> String {
    let mut out = String::from("{\n");
    out.push_str(
        "  \"comment\": \"Generated by `cargo xtask go-offsets` from tests/go/offsets (unsafe.Offsetof/Sizeof, amd64), one Go release per minor from tests/go/versions. Do not edit by hand.\",\n",
    );
    out.push_str("  \"goarch\": \"amd64\",\n");
    out.push_str("  \"minors\": [\n");
    let lines: Vec<String> = rows
        .map(|r| {
            let mut line = format!(
                "    {{\"minor\": \"{}.{}\", \"generated_with\": \"{}\"",
                r.minor.0, r.minor.1, r.go_version
            );
            for (field, value) in FIELDS.iter().zip(&r.values) {
                match value {
                    Some(v) => line.push_str(&format!(", \"{field}\": {v}")),
                    None => line.push_str(&format!(", \"{field}\": null")),
                }
            }
            line.push('}');
            line
        })
        .collect();
    out.push_str(&lines.join(",\n"));
    out.push_str("\n  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minors() {
        assert_eq!(parse_minor("go1.24.11"), Some((1, 24)));
        assert_eq!(parse_minor("go1.20"), Some((1, 20)));
        assert_eq!(parse_minor("go1.24rc1"), None);
        assert_eq!(parse_minor("go1.24.1.2"), None);
        assert_eq!(parse_minor("devel go1.25-abc"), None);
    }

    #[test]
    fn rows_render_as_json() -> anyhow::Result<()> {
        let json: Value = serde_json::from_str(
            r#"{"go_version":"go1.23.9","goarch":"amd64","request_size":304,"request_method":0,"request_url":16,"request_proto_major":40,"request_pattern":232,"url_size":144,"url_path":56,"request_tls":208}"#,
        )?;
        let row = parse_row(&json, Some("1.23.9"))?;
        let text = render([&row].into_iter());
        let back: Value = serde_json::from_str(&text)?;
        assert_eq!(back["minors"][0]["minor"], "1.23");
        assert_eq!(back["minors"][0]["request_pattern"], 232);
        // Pattern appeared in Go 1.23: a 1.22 row with one is refused.
        let mut old = json.clone();
        old["go_version"] = "go1.22.10".into();
        assert!(parse_row(&old, None).is_err());
        Ok(())
    }
}

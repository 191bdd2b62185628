//! `cargo xtask router-offsets [--check]`: regenerates the per-router-minor table the route
//! template probes fall back on when a binary has no DWARF
//! (collector/src/probes/go_http/routers_table.json).
//!
//! Builds the router test server for every module set in tests/go/routers/versions
//! (tests/go/routers/build.sh: the real modules from the Go module proxy, cached outside the
//! clone) and runs each set's default build with `-print-offsets`: the server reports, by
//! reflection on each router's own types, where its per-request context keeps the template
//! and what identifies the request. One row per (module, minor); `--check` compares instead
//! of writing.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

pub const TABLE: &str = "collector/src/probes/go_http/routers_table.json";

/// The fields of a row, in table order.
const FIELDS: [&str; 7] = [
    "module", "minor", "version", "go", "deref", "string", "identity",
];

pub fn router_offsets(root: &Path, check: bool) -> anyhow::Result<()> {
    let out = Command::new(root.join("tests/go/routers/build.sh"))
        .output()
        .context("running tests/go/routers/build.sh")?;
    ensure!(
        out.status.success(),
        "tests/go/routers/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A minor built in several sets: the last set's row (the sets list newest first).
    let mut rows: BTreeMap<(String, String), String> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_set, "default", server] = f.as_slice() else {
            continue;
        };
        let printed = Command::new(server)
            .arg("-print-offsets")
            .output()
            .with_context(|| format!("running {server} -print-offsets"))?;
        ensure!(
            printed.status.success(),
            "{server} -print-offsets failed:\n{}",
            String::from_utf8_lossy(&printed.stderr)
        );
        let v: Value = serde_json::from_slice(&printed.stdout)
            .with_context(|| format!("{server} printed no JSON"))?;
        for mut r in v.as_array().context("a JSON array")?.iter().cloned() {
            let module = r["module"].as_str().context("module")?.to_owned();
            let version = r["version"].as_str().context("version")?.to_owned();
            ensure!(!version.is_empty(), "{server}: no version of {module}");
            let minor = version
                .rsplit_once('.')
                .map(|(m, _)| m.to_owned())
                .context("version")?;
            r["minor"] = Value::String(minor.clone());
            let row: Vec<String> = FIELDS
                .iter()
                .map(|k| format!("\"{k}\": {}", r.get(*k).cloned().unwrap_or(Value::Null)))
                .collect();
            rows.insert((module, minor), format!("  {{{}}}", row.join(", ")));
        }
    }
    ensure!(!rows.is_empty(), "no router set built");
    let table = format!(
        "[\n{}\n]\n",
        rows.into_values().collect::<Vec<_>>().join(",\n")
    );
    let path = root.join(TABLE);
    if check {
        let committed = std::fs::read_to_string(&path).context("reading the table")?;
        if committed != table {
            bail!("{TABLE} is stale; run `cargo xtask router-offsets`:\n{table}");
        }
        println!("{TABLE} is up to date");
        return Ok(());
    }
    std::fs::write(&path, table).with_context(|| format!("writing {TABLE}"))?;
    println!("wrote {TABLE}");
    Ok(())
}

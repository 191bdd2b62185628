//! `cargo xtask grpc-offsets [--check]`: regenerates the per-grpc-go-minor table of struct
//! offsets the gRPC uprobes fall back on when a binary has no DWARF
//! (collector/src/probes/go_grpc/offsets_table.json).
//!
//! Builds the test server against every grpc-go version in tests/go/grpc/versions
//! (tests/go/grpc/build.sh: the real module from the Go module proxy, cached outside the clone)
//! and runs it with `-print-offsets`: the server calls itself once and reports, by reflection on
//! the live values inside a handler, where the stream keeps its method and a status its code.
//! It does so through both server transports (grpc-go's own, and net/http's via `ServeHTTP`)
//! and fails when they differ: the uprobes read both with one row. One row per grpc-go minor.
//! `--check` compares instead of writing.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

pub const TABLE: &str = "collector/src/probes/go_grpc/offsets_table.json";

/// The fields of a row, in table order.
const FIELDS: [&str; 9] = [
    "grpc_minor",
    "grpc",
    "go",
    "genproto_rpc",
    "stream_type",
    "stream_ptr",
    "stream_method",
    "status_proto",
    "proto_code",
];

pub fn grpc_offsets(root: &Path, check: bool) -> anyhow::Result<()> {
    let out = Command::new(root.join("tests/go/grpc/build.sh"))
        .output()
        .context("running tests/go/grpc/build.sh")?;
    ensure!(
        out.status.success(),
        "tests/go/grpc/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // One row per version, from its default build.
        let [version, "default", server, _client] = f.as_slice() else {
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
        let mut v: Value = serde_json::from_slice(&printed.stdout)
            .with_context(|| format!("{server} printed no JSON"))?;
        if let Some(e) = v.get("error") {
            bail!("{server}: {e}");
        }
        ensure!(
            v["grpc"].as_str() == Some(version),
            "{server} reports grpc {} for {version}",
            v["grpc"]
        );
        let minor = version
            .rsplit_once('.')
            .map(|(m, _)| m.to_owned())
            .context("version")?;
        v["grpc_minor"] = Value::String(minor);
        let row: Vec<String> = FIELDS
            .iter()
            .map(|k| format!("\"{k}\": {}", v.get(*k).cloned().unwrap_or(Value::Null)))
            .collect();
        rows.push(format!("  {{{}}}", row.join(", ")));
    }
    ensure!(!rows.is_empty(), "no grpc-go version built");
    let table = format!("[\n{}\n]\n", rows.join(",\n"));
    let path = root.join(TABLE);
    if check {
        let committed = std::fs::read_to_string(&path).context("reading the table")?;
        if committed != table {
            bail!("{TABLE} is stale; run `cargo xtask grpc-offsets`:\n{table}");
        }
        println!("{TABLE} is up to date");
        return Ok(());
    }
    std::fs::write(&path, table).with_context(|| format!("writing {TABLE}"))?;
    println!("wrote {TABLE}");
    Ok(())
}

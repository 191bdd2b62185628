//! The OTLP receiver the export tests send to (tests/otlp/receiver.py: the official protobuf
//! definitions, in Python, gRPC and HTTP), and reading what it received.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::Killed;

const PY_VENV: &str = "/opt/collector-test/py-venv/bin/python";

/// A running receiver; every request it got is one JSON line in `out`. Killed, and its file
/// removed, on drop.
pub struct OtlpReceiver {
    _child: Killed,
    out: PathBuf,
    pub grpc: u16,
    pub http: u16,
}

impl OtlpReceiver {
    pub fn start(grpc: u16, http: u16) -> OtlpReceiver {
        assert!(
            Path::new(PY_VENV).exists(),
            "{PY_VENV} missing: run scripts/bootstrap.sh"
        );
        let out = std::env::temp_dir().join(format!("otlp-{}-{grpc}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&out);
        let mut child = Command::new(PY_VENV)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/otlp/receiver.py"))
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--http-port", &http.to_string()])
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("receiver starts");
        let mut line = String::new();
        // A receiver that fails to start exits: its stdout ends, and the assertion says so.
        let _ = BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line);
        assert!(line.starts_with("listening"), "receiver: {line:?}");
        OtlpReceiver {
            _child: Killed(child),
            out,
            grpc,
            http,
        }
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.out);
    }
}

/// OTLP attributes as sorted (key, value) pairs: string values as they are, others as JSON.
pub fn attr_pairs(attrs: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = attrs
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let value = a["value"]["stringValue"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| a["value"].to_string());
            (a["key"].as_str().unwrap_or("").to_string(), value)
        })
        .collect();
    v.sort();
    v
}

//! The binary's command line: bad input is a clear message and exit code 64, never a panic.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

fn collector(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(args)
        .output()
        .expect("run collector")
}

#[test]
fn bad_options_exit_64_with_a_message() {
    for (args, needle) in [
        (&["--listen", "not-an-address"][..], "listen"),
        (&["--ladder", "tcp_send=warp"][..], "unknown rung"),
        (
            &["--config", "/nonexistent/c.toml"][..],
            "/nonexistent/c.toml",
        ),
        (&["--ring-buffer-bytes", "12345"][..], "power of two"),
    ] {
        let out = collector(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn malformed_config_file_is_rejected() {
    let path = std::env::temp_dir().join(format!("collector-cli-{}.toml", std::process::id()));
    std::fs::write(&path, "listen = [1, 2]\nunknown_key = true\n").expect("write");
    let out = collector(&["--config", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(path.to_str().expect("utf-8")), "{stderr}");
    std::fs::remove_file(&path).expect("cleanup");
}

#[test]
fn help_documents_every_option_and_default() {
    let out = collector(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--config",
        "--listen",
        "127.0.0.1:9464",
        "--kubelet-cgroup-root",
        "--api-token-file",
        "--api-tls-cert",
        "--api-tls-key",
        "--api-max-connections",
        "--harvest-interval",
        "--ladder",
        "--require",
        "--cgroup-root",
        "--ring-buffer-bytes",
        "--max-workloads",
        "--log",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

/// Log lines carry no colour codes when stderr is not a terminal (a log file, `kubectl logs`).
#[test]
fn logs_have_no_colour_codes_when_not_a_terminal() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run collector");
    let mut line = String::new();
    let read = BufReader::new(child.stderr.take().expect("stderr")).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    read.expect("a log line");
    assert!(line.contains("starting"), "{line:?}");
    assert!(
        !line.contains('\x1b'),
        "escape sequences in a piped log: {line:?}"
    );
}

/// Runs the collector with `--log-format json` and these options, SIGTERMs it once it runs (as
/// Kubernetes stops a pod), and returns every stderr line of its life with how it ended.
fn json_log_lines(args: &[&str]) -> (std::process::ExitStatus, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_collector"))
        .args(["--log-format", "json"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run collector");
    let mut lines = Vec::new();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            break;
        }
        if line.contains("collector running") {
            let pid = i32::try_from(child.id()).expect("pid");
            // SAFETY: kill(2) on our own child, not yet waited for, so the pid is still ours.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        }
        lines.push(line);
    }
    (child.wait().expect("wait"), lines)
}

/// Every line is one JSON object with tracing-subscriber's field names; returns them parsed.
fn parse_json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            for key in ["timestamp", "level", "target", "fields"] {
                assert!(value.get(key).is_some(), "no {key:?} in {line:?}");
            }
            assert!(
                value["fields"]["message"].is_string(),
                "no fields.message in {line:?}"
            );
            value
        })
        .collect()
}

/// `--log-format json`: every line from the first to the last (after SIGTERM and the drain) is
/// one JSON object, so a log pipeline can parse the whole stream. Needs root (eBPF); without
/// it the run ends in the start-up error, which the next test covers.
#[test]
fn json_logs_are_one_object_per_line_from_start_to_exit() {
    let (status, lines) = json_log_lines(&["--listen", "127.0.0.1:0"]);
    let objects = parse_json_lines(&lines);
    let first = &objects[0];
    assert_eq!(
        (
            &first["level"],
            &first["target"],
            &first["fields"]["message"]
        ),
        (&"INFO".into(), &"collector".into(), &"starting".into())
    );
    assert_eq!(first["fields"]["version"], env!("CARGO_PKG_VERSION"));
    if status.success() {
        let messages: Vec<&str> = objects
            .iter()
            .filter_map(|o| o["fields"]["message"].as_str())
            .collect();
        assert!(messages.contains(&"SIGTERM: draining"), "{messages:?}");
        assert_eq!(
            messages.last(),
            Some(&"detached; nothing of ours is left loaded")
        );
    }
}

/// The error that stops the collector is a JSON line too (its last), not bare text: here the
/// listen address is taken.
#[test]
fn json_logs_end_with_the_fatal_error_as_json() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (status, lines) = json_log_lines(&["--listen", &addr]);
    assert_eq!(status.code(), Some(1), "{lines:?}");
    let objects = parse_json_lines(&lines);
    let last = objects.last().expect("a line");
    assert_eq!(
        (&last["level"], &last["fields"]["message"]),
        (&"ERROR".into(), &"exiting".into())
    );
    let error = last["fields"]["error"].as_str().expect("error field");
    assert!(error.contains(&addr), "{error}");
}

/// An unknown format is a usage error naming the option, not a silent fall back to text.
#[test]
fn unknown_log_format_is_rejected() {
    let out = collector(&["--log-format", "xml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--log-format"), "{stderr}");
}

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

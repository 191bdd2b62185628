//! Build and test orchestration. `./x` runs the bootstrap and then this.

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "collector build and test orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (release) and run the collector with the given options.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole suite: rustfmt, clippy, unit tests, then root integration tests.
    Test {
        /// Skip the root integration tests (they load eBPF and need root).
        #[arg(long)]
        unit_only: bool,
    },
    /// Only the root integration tests, optionally filtered (`-- <filter>`).
    IntegrationTest {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn integration(extra: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the integration tests load eBPF programs and create network namespaces: run as root"
        );
    }
    let mut args = vec![
        "test",
        "--release",
        "-p",
        "integration-tests",
        "--",
        "--test-threads=1",
    ];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Run { args } => {
            let mut a = vec!["run", "--release", "-p", "collector", "--"];
            a.extend(args.iter().map(String::as_str));
            cargo(&a)
        }
        Cmd::Test { unit_only } => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "collector-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&[
                "test",
                "--workspace",
                "--exclude",
                "collector-ebpf",
                "--exclude",
                "integration-tests",
            ])?;
            if !unit_only {
                integration(&[])?;
            }
            Ok(())
        }
        Cmd::IntegrationTest { args } => integration(&args),
    }
}

//! Build and test orchestration. `./x` runs the bootstrap and then this.

mod bench;
mod callgrind;
mod fuzz;
mod go_offsets;
mod grpc_offsets;
mod image;
mod router_offsets;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
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
    /// The whole suite: rustfmt, clippy, unit tests, the callgrind instruction-count gate, every
    /// fuzz target for 20 s, root integration tests on this kernel, then the same tests on
    /// Debian's 6.1 kernel under qemu (`vm-test`).
    Test {
        /// Skip the root integration tests (they load eBPF and need root) and the VM run.
        #[arg(long)]
        unit_only: bool,
        /// Skip the VM run (the second kernel) only.
        #[arg(long)]
        no_vm: bool,
    },
    /// Two sample pods, one turning faulty, and the collector's verdicts changing live (root).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Only the root integration tests, optionally filtered (`-- <filter>`).
    IntegrationTest {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The root integration tests on a second kernel: Debian's 6.1 (kprobes, fentry, no
    /// `sock_send_length`) booted under qemu/TCG with an initramfs built here. Cached under
    /// target/vm/. Extra arguments go to every test binary (`-- <filter>`).
    VmTest {
        /// Boot this package instead of the newest `linux-image-6.1.0-*-amd64` apt knows.
        #[arg(long)]
        kernel_package: Option<String>,
        /// Seconds the whole guest run may take before qemu is killed.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Rewrites tests/verifier-insns/<release>.txt, the verifier's instruction counts per
    /// program that the TCP test compares against (root). The only way to change them: a test
    /// run compares and fails on a difference.
    VerifierInsns {
        /// Record Debian's 6.1 under qemu instead of this kernel.
        #[arg(long)]
        vm: bool,
    },
    /// What the collector costs the workloads it watches (root): Go HTTP throughput and
    /// latency, TCP bulk and churn, kernel and collector CPU per request, events before loss,
    /// RSS and /metrics at 1,000 and 5,000 workloads; rounds interleaved with the collector off
    /// and in each configuration. JSON in target/bench/, a table on stdout. See BENCHMARKS.md.
    Bench {
        /// One round, short phases, few workloads: for development, not for figures.
        #[arg(long)]
        quick: bool,
        /// Rounds; each runs every configuration once, in order.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Configurations to compare (comma-separated; `off` is always added).
        #[arg(long, value_delimiter = ',')]
        configs: Vec<String>,
        /// Measure this collector binary instead of building the workspace's.
        #[arg(long, value_name = "PATH")]
        collector: Option<PathBuf>,
        /// Pin the collector to this CPU (default: unpinned).
        #[arg(long, value_name = "CPU")]
        collector_cpu: Option<u32>,
        /// Open-loop rate in requests/s (default: half of the first saturation without the
        /// collector).
        #[arg(long, value_name = "REQ_PER_S")]
        open_rate: Option<f64>,
        /// Workload counts of the scale phase (comma-separated; default 1000,5000).
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<usize>,
        /// Do not try to build the peers (OBI, Beyla).
        #[arg(long)]
        no_peers: bool,
        /// Run the bench and everything it starts at this niceness (e.g. -10 on a machine
        /// shared with other jobs).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        nice: i32,
        /// Print the tables as Markdown (for BENCHMARKS.md).
        #[arg(long)]
        markdown: bool,
        /// Print the tables of earlier runs' JSON instead of running; with several, also the
        /// spread across runs.
        #[arg(long, value_name = "JSON", num_args = 1..)]
        report: Vec<PathBuf>,
    },
    /// Instruction counts (valgrind/callgrind) of the userspace hot path scenarios
    /// (collector/benches/hotpath.rs) against collector/benches/callgrind-baseline.json;
    /// fails when one grows more than 10 %. Part of `test`: the CI's only performance gate.
    Callgrind {
        /// Rewrite the baseline with this run's counts instead of checking.
        #[arg(long)]
        update: bool,
        /// Runs per scenario: the median is compared and the spread printed.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Run the cargo-fuzz targets (fuzz/) one after the other; fails on a crash. Needs
    /// cargo-fuzz and the pinned nightly (scripts/bootstrap.sh).
    Fuzz {
        /// 20 s per target from the seeds alone (CI).
        #[arg(long, conflicts_with = "seconds")]
        short: bool,
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// Executions per target instead of a time (e.g. 10000000 for BENCHMARKS.md).
        #[arg(long, conflicts_with_all = ["short", "seconds"])]
        runs: Option<u64>,
        /// Also seed go_binary with the smallest real Go fixture (slow: megabytes per input).
        #[arg(long)]
        fixtures: bool,
        /// Unoptimised build: quick to build after a change, slower per input (CI's choice).
        #[arg(long)]
        dev: bool,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// The container image as an OCI archive (no Docker engine: buildah from `scratch`), with
    /// the static musl collector: target/image/collector-<version>.oci.tar. Load it with
    /// `podman load -i` and push it to a registry with `podman push`.
    Image {
        /// Write the archive here instead.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Regenerate the Go `net/http` struct offsets table (go_http/offsets_table.json) by
    /// building tests/go/offsets with every Go release in tests/go/versions.
    /// Regenerate the grpc-go struct offsets table (go_grpc/offsets_table.json) from the gRPC
    /// test server built against every grpc-go version in tests/go/grpc/versions.
    GrpcOffsets {
        /// Fail if the committed table differs from what would be generated; write nothing.
        #[arg(long)]
        check: bool,
    },
    /// Regenerate the Go routers' offsets table (go_http/routers_table.json) from the router
    /// test server built against every module set in tests/go/routers/versions.
    RouterOffsets {
        /// Fail if the committed table differs from what would be generated; write nothing.
        #[arg(long)]
        check: bool,
    },
    GoOffsets {
        /// Fail if the committed table differs from what would be generated; write nothing.
        #[arg(long)]
        check: bool,
        /// Also run with this `go` binary (e.g. another patch release) and fail unless it
        /// gives its minor's row exactly. Repeatable.
        #[arg(long, value_name = "GO")]
        also: Vec<PathBuf>,
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

/// Where cargo (and every xtask that keeps build outputs) writes: `$CARGO_TARGET_DIR`, else
/// target/ in the checkout.
fn cargo_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// What a cold `./x test` leaves in the target directory (dev, release, musl, fuzz and
/// callgrind trees, Go toolchains and fixtures, the VM image): 11 GiB measured from a clean
/// clone at `fc11e6a` (before the lean dev profile the dev tree alone was 21 GiB), with a
/// margin for growth.
const COLD_TEST_FOOTPRINT_GIB: u64 = 14;

/// Fails at once, with what to do, when the target directory's filesystem cannot hold what
/// the test run is about to build: a full disk otherwise shows up half an hour in, as a
/// linker or archiver error in whichever step happens to run out (CI's did, in the fuzz
/// build).
fn check_disk(target: &Path) -> anyhow::Result<()> {
    const GIB: u64 = 1 << 30;
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let kib = |args: &[&str]| -> anyhow::Result<u64> {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .with_context(|| format!("running {}", args[0]))?;
        // `df -Pk`: a header line, then "fs blocks used available …"; `du -sk`: "size\tpath".
        let text = String::from_utf8_lossy(&out.stdout);
        let field = match args[0] {
            "df" => text
                .lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(3)),
            _ => text.split_whitespace().next(),
        };
        field
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("{} printed {text:?}", args.join(" ")))
    };
    let dir = target.to_string_lossy();
    let free = kib(&["df", "-Pk", &dir])? * 1024;
    let built = kib(&["du", "-sxk", &dir])? * 1024;
    let need = (COLD_TEST_FOOTPRINT_GIB * GIB).saturating_sub(built);
    if free < need {
        bail!(
            "{} has {:.1} GiB free; a cold `./x test` writes about {COLD_TEST_FOOTPRINT_GIB} GiB \
             there and {:.1} GiB of it is built already: free {:.1} GiB more (or point \
             CARGO_TARGET_DIR at a larger disk)",
            target.display(),
            free as f64 / GIB as f64,
            built as f64 / GIB as f64,
            (need - free) as f64 / GIB as f64,
        );
    }
    Ok(())
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
    // tests/tests/resilience.rs runs (and kill -9s) the collector binary of the same profile.
    cargo(&[
        "build",
        "--release",
        "-p",
        "collector",
        "--bin",
        "collector",
    ])?;
    // tests/tests/image.rs runs the container image: built here, since a test cannot run cargo
    // (the build directory is locked while tests run). A no-op build when nothing changed.
    image::image(&root(), &image::Options { output: None })?;
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

/// Whole-guest deadline of the VM run (a passing run takes about 3 min on 2 cores under TCG).
const DEFAULT_VM_TIMEOUT: Duration = Duration::from_secs(900);

fn vm_test(
    kernel_package: Option<String>,
    timeout: Duration,
    test_args: Vec<String>,
) -> anyhow::Result<()> {
    vm::vm_test(
        &root(),
        &vm::Options {
            kernel_package,
            timeout,
            boot_timeout: Duration::from_secs(180),
            test_args,
            record_verifier_insns: false,
        },
    )
}

/// The test that compares the verifier counts, told to write them instead
/// (`COLLECTOR_RECORD_VERIFIER_INSNS`, read by tests/tests/tcp.rs).
const VERIFIER_INSNS_TEST: &str = "every_rung_counts_the_same_and_missing_rungs_fall_through";

fn verifier_insns(vm: bool) -> anyhow::Result<()> {
    if vm {
        return vm::vm_test(
            &root(),
            &vm::Options {
                kernel_package: None,
                timeout: DEFAULT_VM_TIMEOUT,
                boot_timeout: Duration::from_secs(180),
                test_args: vec![VERIFIER_INSNS_TEST.into()],
                record_verifier_insns: true,
            },
        );
    }
    if !is_root() {
        bail!("recording verifier counts loads eBPF programs: run as root");
    }
    let args = [
        "test",
        "--release",
        "-p",
        "integration-tests",
        "--test",
        "tcp",
        "--",
        "--test-threads=1",
        "--exact",
        VERIFIER_INSNS_TEST,
    ];
    eprintln!(
        "+ COLLECTOR_RECORD_VERIFIER_INSNS=1 cargo {}",
        args.join(" ")
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .env("COLLECTOR_RECORD_VERIFIER_INSNS", "1")
        .current_dir(root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("recording the verifier counts failed ({status})");
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Run { args } => {
            let mut a = vec!["run", "--release", "-p", "collector", "--"];
            a.extend(args.iter().map(String::as_str));
            cargo(&a)
        }
        Cmd::Test { unit_only, no_vm } => {
            check_disk(&cargo_target_dir(&root()))?;
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
            // Performance gate: instruction counts, not wall time (see callgrind.rs).
            callgrind::callgrind(
                &root(),
                &callgrind::Options {
                    update: false,
                    repeat: 1,
                },
            )?;
            // Every fuzz target briefly (fuzz.rs): a crash fails the suite.
            fuzz::fuzz(
                &root(),
                &fuzz::Options {
                    duration: fuzz::SHORT,
                    runs: None,
                    targets: Vec::new(),
                    with_fixtures: false,
                    dev: true,
                    scratch_corpus: true,
                },
            )?;
            if !unit_only {
                integration(&[])?;
                if !no_vm {
                    vm_test(None, DEFAULT_VM_TIMEOUT, Vec::new())?;
                }
            }
            Ok(())
        }
        Cmd::IntegrationTest { args } => integration(&args),
        Cmd::Demo { args } => {
            if !is_root() {
                bail!("the demo loads eBPF and creates network namespaces: run as root");
            }
            let mut a = vec![
                "run",
                "--release",
                "-p",
                "integration-tests",
                "--bin",
                "demo",
                "--",
            ];
            a.extend(args.iter().map(String::as_str));
            cargo(&a)
        }
        Cmd::VmTest {
            kernel_package,
            timeout,
            args,
        } => vm_test(kernel_package, Duration::from_secs(timeout), args),
        Cmd::VerifierInsns { vm } => verifier_insns(vm),
        Cmd::Bench {
            quick,
            rounds,
            configs,
            collector,
            collector_cpu,
            open_rate,
            workloads,
            no_peers,
            nice,
            markdown,
            report,
        } => bench::bench(
            &root(),
            &bench::Options {
                rounds,
                quick,
                configs,
                collector,
                collector_cpu,
                open_rate,
                workloads,
                peers: !no_peers,
                nice,
                markdown,
                report,
            },
        ),
        Cmd::Callgrind { update, repeat } => {
            callgrind::callgrind(&root(), &callgrind::Options { update, repeat })
        }
        Cmd::Fuzz {
            short,
            seconds,
            runs,
            fixtures,
            dev,
            targets,
        } => fuzz::fuzz(
            &root(),
            &fuzz::Options {
                duration: if short {
                    fuzz::SHORT
                } else {
                    Duration::from_secs(seconds)
                },
                runs,
                targets,
                with_fixtures: fixtures,
                dev,
                scratch_corpus: short,
            },
        ),
        Cmd::Image { output } => {
            let built = image::image(&root(), &image::Options { output })?;
            println!(
                "{} ({}): {} bytes, collector {} bytes",
                built.archive.display(),
                built.reference,
                built.archive_bytes,
                built.binary_bytes
            );
            Ok(())
        }
        Cmd::GrpcOffsets { check } => grpc_offsets::grpc_offsets(&root(), check),
        Cmd::RouterOffsets { check } => router_offsets::router_offsets(&root(), check),
        Cmd::GoOffsets { check, also } => {
            go_offsets::go_offsets(&root(), &go_offsets::Options { check, also })
        }
    }
}

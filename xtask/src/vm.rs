//! `vm-test`: the root integration tests on a second kernel, Debian's 6.1, under qemu.
//!
//! The build/test machines run 6.18 without kprobes and with fentry refused, so the design's
//! primary hooks can only be proven elsewhere. This boots Debian bookworm's
//! `linux-image-6.1.0-*-amd64` with software emulation (`-accel tcg`: the machines' KVM cannot
//! run a stock kernel) and an initramfs built here:
//!
//! * static busybox (Debian `busybox-static`) as the userland, `/init` generated below;
//! * the integration-test binaries and `pod-traffic`, at the same absolute paths as on the host
//!   (so `CARGO_BIN_EXE_*`, `pod_traffic_bin()` and `CARGO_MANIFEST_DIR` hold inside the guest);
//! * `ip`, `nft`, `nstat` and `bpftool` from the host with the libraries `ldd` names;
//! * the kernel modules the tests need (veth; nf_tables, nft_numgen and nft_fwd_netdev for the
//!   harness' real packet loss) with their dependencies, in the order `modprobe --show-depends`
//!   gives against a `depmod -b` of the extracted package.
//!
//! The guest prints `@@VM` markers on the serial console; the host reads them, mirrors the
//! console (prefixed `vm|`), copies files the tests asked to export back into the repository
//! (`tests/verifier-insns/<release>.txt`, only when recording them: `./x verifier-insns
//! --vm`; otherwise the guest compares with the committed file), and fails with the missing marker and the last console
//! lines when the guest does not get there. Everything downloaded or extracted is cached under
//! `target/vm/`.

use std::{
    collections::{BTreeSet, VecDeque},
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// Debian package name pattern: `linux-image-6.1.0-<abi>-amd64` (the signed image, which ships
/// the modules too).
const KERNEL_PREFIX: &str = "linux-image-6.1.0-";
const KERNEL_SUFFIX: &str = "-amd64";
/// Modules the tests need; their dependencies are added.
const MODULES: &[&str] = &["veth", "nf_tables", "nft_numgen", "nft_fwd_netdev"];
/// Integration-test targets (`tests/tests/<name>.rs`) that face the kernel and run in the guest.
/// The others (e.g. `export`: exporters against Prometheus and an OTLP receiver) do not depend
/// on the kernel and only run on the host.
const GUEST_TESTS: &[&str] = &[
    "harness",
    "tcp",
    "go_http",
    "go_http2",
    "http_wire",
    "grpc",
    "go_routers",
];
/// Test-name filter per guest target: the Go uprobe checks that face the kernel (the 21-build
/// matrix and the load tests run on the host only) and the socket parser's framing cases.
const GUEST_FILTERS: &[(&str, &str)] = &[
    ("go_http", "guest_"),
    ("go_http2", "guest_"),
    ("http_wire", "guest_"),
    ("grpc", "guest_"),
    ("go_routers", "guest_"),
];
/// Go fixtures the guest uses (one unstripped, one stripped build of the newest Go), and where
/// their list is written inside the guest.
const GUEST_GO_VARIANTS: &[&str] = &["default", "stripped"];
const GUEST_GO_LIST: &str = "/go-fixtures.txt";
/// The gRPC test servers and clients (tests/go/grpc/build.sh), built on the host, listed for
/// the guest (`COLLECTOR_GRPC_FIXTURES`, read by tests/tests/grpc.rs).
const GUEST_GRPC_LIST: &str = "/grpc-fixtures.txt";
/// The router test servers (tests/go/routers/build.sh) for the guest: the newest modules'
/// unstripped build and the oldest's stripped one (`COLLECTOR_ROUTER_FIXTURES`, read by
/// tests/tests/go_routers.rs).
const GUEST_ROUTERS_LIST: &str = "/router-fixtures.txt";
const GUEST_ROUTERS: &[(&str, &str)] = &[("new", "default"), ("old", "stripped")];
/// Host tools the harness runs inside the guest (looked up in PATH).
/// (curl: the HTTP/2 guest test's h2c client.)
const TOOLS: &[&str] = &["ip", "nft", "nstat", "bpftool", "curl"];
/// Rungs every signal's hooks must attach on in the guest (Debian 6.1 has kprobes, fentry,
/// BTF and tracefs); handed to the tests, which otherwise only insist on what the host has.
const GUEST_REQUIRED_RUNGS: &str = "kprobe,fentry,tp_btf,raw_tp,tracepoint";
/// Marker prefix on the serial console.
const MARK: &str = "@@VM ";
/// Prefix of a line of an exported file.
const FILE_LINE: &str = "@@VMF ";
/// Console lines shown when the guest fails.
const TAIL_LINES: usize = 60;

pub struct Options {
    /// Exact package to boot (`linux-image-6.1.0-<abi>-amd64`); newest known to apt otherwise.
    pub kernel_package: Option<String>,
    /// Deadline for the whole guest run.
    pub timeout: Duration,
    /// Deadline for reaching `/init`.
    pub boot_timeout: Duration,
    /// Arguments for every test binary (a name filter, `--exact`, ...).
    pub test_args: Vec<String>,
    /// Rewrite `tests/verifier-insns/<release>.txt` from the guest instead of comparing.
    pub record_verifier_insns: bool,
}

pub fn vm_test(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "depmod",
        "modprobe",
        "xz",
        "cpio",
        "apt-get",
        "dpkg-deb",
    ] {
        which(tool).with_context(|| {
            format!(
                "{tool} is missing: run scripts/bootstrap.sh (or ./x vm-test), which installs it"
            )
        })?;
    }
    let vm_dir = root.join("target/vm");
    fs::create_dir_all(&vm_dir)?;

    let kernel = prepare_kernel(&vm_dir, opts.kernel_package.as_deref())?;
    eprintln!(
        "vm-test: kernel {} ({})",
        kernel.release,
        kernel.vmlinux.display()
    );
    let bins = build_tests(root)?;
    let initrd = build_initramfs(
        root,
        &vm_dir,
        &kernel,
        &bins,
        &opts.test_args,
        opts.record_verifier_insns,
    )?;
    eprintln!(
        "vm-test: prepared in {:.1}s; booting under TCG",
        started.elapsed().as_secs_f64()
    );
    let run_start = Instant::now();
    let outcome = boot(&kernel, &initrd, opts)?;
    let guest_secs = run_start.elapsed().as_secs_f64();

    // Only a recording run exports (see `init_script`).
    for (guest_path, lines) in &outcome.files {
        let host = export_target(root, guest_path)?;
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(&host, text).with_context(|| format!("writing {}", host.display()))?;
        eprintln!("vm-test: updated {}", host.display());
    }
    let boot_secs = outcome.init_after.map(|d| d.as_secs_f64());
    let summary = format!(
        "guest {guest_secs:.0}s (kernel to /init {}), total {:.0}s",
        boot_secs.map_or("-".into(), |s| format!("{s:.1}s")),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<_> = outcome
        .tests
        .iter()
        .filter(|(_, rc, _)| *rc != 0)
        .map(|(name, rc, _)| format!("{name} (rc={rc})"))
        .collect();
    for (name, rc, took) in &outcome.tests {
        eprintln!("vm-test:   {name}: rc={rc} in {:.0}s", took.as_secs_f64());
    }
    match outcome.finished {
        Some(0) if failed.is_empty() => {
            eprintln!("vm-test: passed on {} — {summary}", kernel.release);
            Ok(())
        }
        Some(rc) => bail!(
            "tests failed inside the {} guest (rc={rc}; failing: {}) — {summary}",
            kernel.release,
            if failed.is_empty() {
                "see the log above".to_owned()
            } else {
                failed.join(", ")
            }
        ),
        None => unreachable!("boot() returns an error when the finish marker is missing"),
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel: download, extract, decompress, depmod
// ---------------------------------------------------------------------------------------------

struct Kernel {
    release: String,
    vmlinux: PathBuf,
    /// Modules in load order (dependencies first), as host paths.
    modules: Vec<PathBuf>,
}

fn prepare_kernel(vm_dir: &Path, package: Option<&str>) -> anyhow::Result<Kernel> {
    let package = match package {
        Some(p) => p.to_owned(),
        None => newest_kernel_package()?,
    };
    ensure!(
        package.starts_with(KERNEL_PREFIX)
            && package.ends_with(KERNEL_SUFFIX)
            && package
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)),
        "kernel package `{package}` is not a {KERNEL_PREFIX}<abi>{KERNEL_SUFFIX} name"
    );
    let dir = vm_dir.join(&package);
    let done = dir.join(".complete");
    let extracted = dir.join("root");
    if !done.exists() {
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir)?;
        let debs = vm_dir.join("debs");
        fs::create_dir_all(&debs)?;
        let deb = match find_deb(&debs, &package)? {
            Some(deb) => deb,
            None => {
                eprintln!("vm-test: apt-get download {package}");
                run(Command::new("apt-get")
                    .args(["-q", "-o", "APT::Sandbox::User=root", "download", &package])
                    .current_dir(&debs))
                .with_context(|| {
                    format!("downloading {package} (stale package lists? try `apt-get update`)")
                })?;
                find_deb(&debs, &package)?
                    .with_context(|| format!("apt-get download left no {package}_*.deb"))?
            }
        };
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
        let release = release_of(&extracted)?;
        decompress_bzimage(
            &extracted.join(format!("boot/vmlinuz-{release}")),
            &dir.join("vmlinux"),
        )?;
        run(Command::new("depmod")
            .arg("-b")
            .arg(&extracted)
            .arg(&release))?;
        fs::write(&done, &release)?;
    }
    let release = fs::read_to_string(&done)?.trim().to_owned();
    let modules = module_order(&extracted, &release)?;
    Ok(Kernel {
        release,
        vmlinux: dir.join("vmlinux"),
        modules,
    })
}

/// The highest ABI of `linux-image-6.1.0-<abi>-amd64` apt knows (bookworm-security carries the
/// newest).
fn newest_kernel_package() -> anyhow::Result<String> {
    let out = run(Command::new("apt-cache").args([
        "search",
        "--names-only",
        r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    ]))?;
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name
                .strip_prefix(KERNEL_PREFIX)?
                .strip_suffix(KERNEL_SUFFIX)?;
            Some((abi.parse::<u32>().ok()?, name.to_owned()))
        })
        .max()
        .map(|(_, name)| name)
        .context(
            "apt knows no linux-image-6.1.0-*-amd64: add bookworm-security to the apt sources and \
             run `apt-get update`",
        )
}

fn find_deb(dir: &Path, package: &str) -> anyhow::Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    Ok(fs::read_dir(dir)?.flatten().map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
    }))
}

fn release_of(extracted: &Path) -> anyhow::Result<String> {
    let boot = extracted.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .next()
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

/// The bzImage carries the kernel as one xz stream; booting the uncompressed kernel saves
/// seconds of emulated decompression on every boot.
fn decompress_bzimage(bzimage: &Path, out: &Path) -> anyhow::Result<()> {
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let at = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .with_context(|| format!("no xz stream in {}", bzimage.display()))?;
    let tmp = out.with_extension("tmp");
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&tmp)?)
        .spawn()
        .context("running xz")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    // xz stops reading at the end of the stream; the trailing bytes may hit a closed pipe.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&image[at..]);
    });
    let status = child.wait()?;
    let _ = writer.join();
    ensure!(
        status.success(),
        "xz failed on {} ({status})",
        bzimage.display()
    );
    let head = fs::read(&tmp)?;
    ensure!(
        head.starts_with(b"\x7fELF"),
        "decompressed kernel is not an ELF file"
    );
    fs::rename(&tmp, out)?;
    Ok(())
}

/// Modules to load, dependencies first, each once (from the host's kmod against the extracted
/// tree's modules.dep).
fn module_order(extracted: &Path, release: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for m in MODULES {
        let out = run(Command::new("modprobe").arg("-d").arg(extracted).args([
            "-S",
            release,
            "--show-depends",
            m,
        ]))?;
        for line in out.lines() {
            // `builtin <name>` needs nothing.
            if let Some(path) = line.trim().strip_prefix("insmod ") {
                let path = PathBuf::from(path.trim());
                if seen.insert(path.clone()) {
                    order.push(path);
                }
            }
        }
    }
    ensure!(!order.is_empty(), "modprobe found none of {MODULES:?}");
    Ok(order)
}

// ---------------------------------------------------------------------------------------------
// Test binaries
// ---------------------------------------------------------------------------------------------

struct TestBins {
    /// (test target name, executable)
    tests: Vec<(String, PathBuf)>,
    pod_traffic: PathBuf,
    /// `tcp_faults`: TCP failure cases of tests/tests/tcp.rs, found next to `pod-traffic`.
    tcp_faults: PathBuf,
}

/// Builds the integration tests like the host run does and returns their executables.
fn build_tests(root: &Path) -> anyhow::Result<TestBins> {
    eprintln!("+ cargo test --release -p integration-tests --no-run");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--release",
            "-p",
            "integration-tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    ensure!(
        out.status.success(),
        "building the integration tests failed ({})",
        out.status
    );
    let mut tests = Vec::new();
    let mut pod_traffic = None;
    let mut tcp_faults = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains(r#""reason":"compiler-artifact""#)
            || !line.contains("#integration-tests@")
        {
            continue;
        }
        let (Some(exe), Some(name)) = (json_str(line, "executable"), json_str(line, "name")) else {
            continue;
        };
        let test_profile = line.contains(r#""test":true},"features""#);
        if line.contains(r#""kind":["test"]"#) {
            if GUEST_TESTS.contains(&name.as_str()) {
                tests.push((name, PathBuf::from(exe)));
            } else {
                eprintln!("vm-test: {name} does not face the kernel: host only");
            }
        } else if line.contains(r#""kind":["bin"]"#) && name == "pod-traffic" && !test_profile {
            pod_traffic = Some(PathBuf::from(exe));
        } else if line.contains(r#""kind":["bin"]"#) && name == "tcp_faults" && !test_profile {
            tcp_faults = Some(PathBuf::from(exe));
        }
    }
    tests.sort();
    let found: Vec<&str> = tests.iter().map(|(n, _)| n.as_str()).collect();
    ensure!(
        GUEST_TESTS.iter().all(|t| found.contains(t)),
        "cargo reported test targets {found:?}, expected all of {GUEST_TESTS:?}"
    );
    Ok(TestBins {
        tests,
        pod_traffic: pod_traffic.context("cargo reported no pod-traffic executable")?,
        tcp_faults: tcp_faults.context("cargo reported no tcp_faults executable")?,
    })
}

/// The first string value of `"key":"..."` in a JSON line (enough for cargo's messages; no
/// escapes other than `\\` and `\"` are expected in names and paths).
fn json_str(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// initramfs
// ---------------------------------------------------------------------------------------------

fn build_initramfs(
    root: &Path,
    vm_dir: &Path,
    kernel: &Kernel,
    bins: &TestBins,
    test_args: &[String],
    record_verifier_insns: bool,
) -> anyhow::Result<PathBuf> {
    let stage = vm_dir.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    for d in [
        "bin", "dev", "proc", "sys", "run", "tmp", "root", "etc", "modules",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    let mut libs_of = Vec::new();
    let busybox = which("busybox")?;
    ensure!(
        libraries(&busybox)?.is_empty(),
        "{} is dynamically linked: install busybox-static",
        busybox.display()
    );
    copy_file(&busybox, &stage.join("bin/busybox"))?;
    // The harness runs `sh -c '... exec ip netns exec ...'`. Debian's static busybox prefers
    // its own applets inside its shell (its `ip` knows no `netns`), so `/bin/sh` is the host's
    // shell (dash) and busybox only runs /init and the small tools.
    let sh = which("sh")?;
    copy_file(&sh, &stage.join("bin/sh"))?;
    libs_of.push(sh);

    let mut dynamic: Vec<PathBuf> = TOOLS
        .iter()
        .map(|t| which(t).with_context(|| format!("{t} is missing: run scripts/bootstrap.sh")))
        .collect::<anyhow::Result<_>>()?;
    dynamic.extend(bins.tests.iter().map(|(_, p)| p.clone()));
    dynamic.push(bins.pod_traffic.clone());
    dynamic.push(bins.tcp_faults.clone());
    // Go test servers, built on the host (static: CGO_ENABLED=0), listed for the guest.
    let mut go_list = String::new();
    for (version, variant, path) in go_fixtures(root)? {
        copy_file(&path, &in_stage(&stage, &path))?;
        go_list.push_str(&format!("{version} {variant} {}\n", path.display()));
    }
    fs::write(stage.join(GUEST_GO_LIST.trim_start_matches('/')), go_list)?;
    let mut grpc_list = String::new();
    for line in grpc_fixtures(root)? {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, _, server, client] = f.as_slice() else {
            bail!("tests/go/grpc/build.sh printed {line:?}");
        };
        for bin in [server, client] {
            let bin = Path::new(bin);
            let staged = in_stage(&stage, bin);
            if !staged.exists() {
                copy_file(bin, &staged)?;
            }
        }
        grpc_list.push_str(&line);
        grpc_list.push('\n');
    }
    fs::write(
        stage.join(GUEST_GRPC_LIST.trim_start_matches('/')),
        grpc_list,
    )?;
    let mut routers_list = String::new();
    for (set, variant, path) in router_fixtures(root)? {
        copy_file(&path, &in_stage(&stage, &path))?;
        routers_list.push_str(&format!("{set} {variant} {}\n", path.display()));
    }
    fs::write(
        stage.join(GUEST_ROUTERS_LIST.trim_start_matches('/')),
        routers_list,
    )?;
    let mut libs = BTreeSet::new();
    for bin in &dynamic {
        copy_file(bin, &in_stage(&stage, bin))?;
        libs.extend(libraries(bin)?);
    }
    for bin in &libs_of {
        libs.extend(libraries(bin)?);
    }
    for lib in &libs {
        copy_file(lib, &in_stage(&stage, lib))?;
    }

    let mut order = String::new();
    for (i, m) in kernel.modules.iter().enumerate() {
        let name = format!(
            "{i:02}-{}",
            m.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("module.ko")
        );
        copy_file(m, &stage.join("modules").join(&name))?;
        order.push_str(&name);
        order.push('\n');
    }
    fs::write(stage.join("modules/order"), order)?;

    // Files the tests compare with (the committed ones, at their host path), or write for
    // review and export back through the console when recording.
    let export_dir = root.join("tests/verifier-insns");
    fs::create_dir_all(in_stage(&stage, &export_dir))?;
    if !record_verifier_insns {
        for entry in fs::read_dir(&export_dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "txt") {
                copy_file(&path, &in_stage(&stage, &path))?;
            }
        }
    }

    let init = init_script(bins, test_args, &export_dir, record_verifier_insns);
    let init_path = stage.join("init");
    fs::write(&init_path, init)?;
    fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;

    let cpio = vm_dir.join("initramfs.cpio");
    let tmp = vm_dir.join("initramfs.cpio.tmp");
    // Uncompressed: decompressing ~100 MB under TCG would cost more than reading it.
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet > '{}'",
        stage.display(),
        tmp.display()
    )))
    .context("building the initramfs")?;
    fs::rename(&tmp, &cpio)?;
    eprintln!(
        "vm-test: initramfs {} ({} MiB, {} modules, {} test binaries)",
        cpio.display(),
        fs::metadata(&cpio)?.len() >> 20,
        kernel.modules.len(),
        bins.tests.len()
    );
    Ok(cpio)
}

/// `/init`: mount the pseudo filesystems, load the modules, run every test binary, export the
/// review files, report, power off. Markers go to the serial console.
fn init_script(
    bins: &TestBins,
    test_args: &[String],
    export_dir: &Path,
    record_verifier_insns: bool,
) -> String {
    let args: String = test_args
        .iter()
        .map(|a| format!(" {}", sh_quote(a)))
        .collect();
    let mut tests = String::new();
    for (name, exe) in &bins.tests {
        let filter = GUEST_FILTERS
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, f)| format!(" {}", sh_quote(f)))
            .unwrap_or_default();
        tests.push_str(&format!(
            "run_test {} {}{filter}{args}\n",
            sh_quote(name),
            sh_quote(&exe.display().to_string())
        ));
    }
    let wanted = MODULES.join(" ");
    let export = sh_quote(&export_dir.display().to_string());
    // Recording: the TCP test writes the counts and they are exported; otherwise it compares.
    let (record, exports) = if record_verifier_insns {
        (
            " COLLECTOR_RECORD_VERIFIER_INSNS=1",
            format!(
                r#"for f in {export}/*; do
  [ -f "$f" ] || continue
  echo "{MARK}file-begin $f"
  while IFS= read -r l || [ -n "$l" ]; do echo "{FILE_LINE}$l"; done < "$f"
  echo "{MARK}file-end"
done
"#
            ),
        )
    } else {
        ("", String::new())
    };
    format!(
        r#"#!/bin/busybox sh
# Generated by `cargo xtask vm-test` (xtask/src/vm.rs).
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin 2>/dev/null
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
echo "{MARK}init-started kernel=$(uname -r)"
finish() {{
  echo "{MARK}tests-finished rc=$1"
  sync
  poweroff -f
  reboot -f
}}
fail() {{ echo "{MARK}setup-failed $*"; finish 99; }}
mount -t proc proc /proc || fail "mount proc"
mount -t sysfs sysfs /sys || fail "mount sysfs"
mount -t tracefs tracefs /sys/kernel/tracing || fail "mount tracefs"
mount -t debugfs debugfs /sys/kernel/debug || fail "mount debugfs"
mount -t bpf bpf /sys/fs/bpf || fail "mount bpffs"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "mount cgroup2"
mount -t tmpfs tmpfs /run || fail "mount /run"
# /tmp stays on the initramfs: the test binaries may live under it (a checkout in /tmp).
ip link set lo up || fail "lo up"
for m in $(cat /modules/order); do
  insmod /modules/$m 2>/dev/null || echo "{MARK}insmod-failed $m (optional unless listed below)"
done
for m in {wanted}; do
  [ -d /sys/module/$m ] || fail "module $m did not load"
done
echo "{MARK}setup-done nproc=$(nproc) mem=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo)kB"
export RUST_BACKTRACE=1 COLLECTOR_TEST_REQUIRE_RUNGS={GUEST_REQUIRED_RUNGS} COLLECTOR_GO_FIXTURES={GUEST_GO_LIST} COLLECTOR_GRPC_FIXTURES={GUEST_GRPC_LIST} COLLECTOR_ROUTER_FIXTURES={GUEST_ROUTERS_LIST}{record}
rc=0
run_test() {{
  name=$1; shift
  echo "{MARK}test-begin $name"
  "$@" --test-threads=1 --nocapture
  r=$?
  echo "{MARK}test-end $name rc=$r"
  [ $r -eq 0 ] || rc=$r
}}
{tests}{exports}finish $rc
"#
    )
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `path` inside the staging directory (same absolute path in the guest).
fn in_stage(stage: &Path, path: &Path) -> PathBuf {
    stage.join(path.strip_prefix("/").unwrap_or(path))
}

/// Copies the file `from` points to (following symlinks), keeping its mode.
fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Shared libraries of a dynamic executable, as `ldd` resolves them on the host (including the
/// loader); empty for static ones.
fn libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("ldd {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable"
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        ensure!(
            !line.contains("not found"),
            "{}: library missing on the host: {}",
            bin.display(),
            line.trim()
        );
        // `libx.so => /path (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`; vdso has no path.
        let path = line
            .split_once("=>")
            .map_or(line, |(_, p)| p)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The host path of a file the guest exported; only `tests/verifier-insns/*.txt` qualifies.
fn export_target(root: &Path, guest_path: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(guest_path);
    let dir = root.join("tests/verifier-insns");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    ensure!(
        path.parent() == Some(dir.as_path())
            && name.ends_with(".txt")
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c)),
        "the guest exported an unexpected file {guest_path}"
    );
    Ok(dir.join(name))
}

// ---------------------------------------------------------------------------------------------
// Boot and watch
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Outcome {
    init_after: Option<Duration>,
    /// (test target, rc, duration)
    tests: Vec<(String, i32, Duration)>,
    finished: Option<i32>,
    files: Vec<(String, Vec<String>)>,
}

fn boot(kernel: &Kernel, initrd: &Path, opts: &Options) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    // 1.5 GiB: the initramfs (≈ 330 MiB with the Go fixtures) is unpacked into memory while
    // the archive itself is still held there; at 1 GiB unpacking failed ("write error").
    cmd.args(["-accel", "tcg", "-M", "q35", "-smp", "2", "-m", "1536"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf);
                let _ = tx.send(line.trim_end_matches(['\r', '\n']).to_owned());
                buf.clear();
            }
        });
    }
    drop(tx);

    let start = Instant::now();
    let mut out = Outcome::default();
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut current: Option<(String, Instant)> = None;
    let mut file: Option<(String, Vec<String>)> = None;
    let mut setup_failed = None;
    let mut timed_out = None;
    loop {
        let deadline = if out.init_after.is_none() {
            opts.boot_timeout
        } else {
            opts.timeout
        };
        let left = deadline.saturating_sub(start.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = Some(deadline);
                break;
            }
        };
        if let Some(content) = line.strip_prefix(FILE_LINE) {
            if let Some((_, lines)) = &mut file {
                lines.push(content.to_owned());
            }
            continue;
        }
        eprintln!("vm| {line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        // Markers may follow kernel output on the same console line.
        let Some(mark) = line.find(MARK).map(|i| &line[i + MARK.len()..]) else {
            continue;
        };
        let (word, rest) = mark.split_once(' ').unwrap_or((mark, ""));
        match word {
            "init-started" => out.init_after = Some(start.elapsed()),
            "setup-failed" => setup_failed = Some(rest.to_owned()),
            "test-begin" => current = Some((rest.to_owned(), Instant::now())),
            "test-end" => {
                let rc = rc_of(rest).unwrap_or(-1);
                let (name, since) = current
                    .take()
                    .unwrap_or_else(|| (rest.to_owned(), Instant::now()));
                out.tests.push((name, rc, since.elapsed()));
            }
            "file-begin" => file = Some((rest.to_owned(), Vec::new())),
            "file-end" => out.files.extend(file.take()),
            "tests-finished" => out.finished = Some(rc_of(rest).unwrap_or(-1)),
            _ => {}
        }
    }
    if timed_out.is_some() {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for qemu")?;
    let tail: Vec<_> = tail.into_iter().collect();
    let last = tail.join("\n  ");
    let why = match timed_out {
        Some(d) => format!("killed qemu after {d:?}"),
        None => format!(
            "qemu exited ({status}) after {:.0}s",
            start.elapsed().as_secs_f64()
        ),
    };
    if out.init_after.is_none() {
        bail!(
            "the guest never reached /init (missing marker `{MARK}init-started`; {why}). \
             Last console lines:\n  {last}"
        );
    }
    if let Some(reason) = setup_failed {
        bail!("guest setup failed: {reason} ({why}). Last console lines:\n  {last}");
    }
    if out.finished.is_none() {
        let running = current.map_or_else(
            || "no test binary had started".to_owned(),
            |(name, since)| {
                format!(
                    "`{name}` was running for {:.0}s",
                    since.elapsed().as_secs_f64()
                )
            },
        );
        bail!(
            "the guest started /init but never reported `{MARK}tests-finished rc=N` ({why}; \
             {running}). Last console lines:\n  {last}"
        );
    }
    Ok(out)
}

fn rc_of(s: &str) -> Option<i32> {
    s.rsplit_once("rc=")?.1.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn which(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .with_context(|| format!("{tool} not found in PATH"))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// tests/go/routers/build.sh's servers of `GUEST_ROUTERS`, built (or found cached) on the host.
fn router_fixtures(root: &Path) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
    let out = Command::new(root.join("tests/go/routers/build.sh"))
        .output()
        .context("running tests/go/routers/build.sh")?;
    ensure!(
        out.status.success(),
        "building the router fixtures: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Vec<(String, String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [set, variant, path] = f.as_slice() else {
                return None;
            };
            GUEST_ROUTERS
                .contains(&(*set, *variant))
                .then(|| (set.to_string(), variant.to_string(), PathBuf::from(path)))
        })
        .collect();
    ensure!(
        found.len() == GUEST_ROUTERS.len(),
        "tests/go/routers/build.sh did not print every one of {GUEST_ROUTERS:?}"
    );
    Ok(found)
}

/// tests/go/grpc/build.sh's lines for the guest: the newest grpc-go's default and stripped
/// servers (static, CGO_ENABLED=0) with their client.
fn grpc_fixtures(root: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(root.join("tests/go/grpc/build.sh"))
        .output()
        .context("running tests/go/grpc/build.sh")?;
    ensure!(
        out.status.success(),
        "building the gRPC fixtures: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let newest = lines
        .last()
        .and_then(|l| l.split_whitespace().next())
        .context("tests/go/grpc/build.sh printed nothing")?
        .to_owned();
    Ok(lines
        .into_iter()
        .filter(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some(newest.as_str()) && matches!(f.next(), Some("default" | "stripped"))
        })
        .collect())
}

/// The newest Go's fixtures of `GUEST_GO_VARIANTS`, built (or found cached) on the host.
fn go_fixtures(root: &Path) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
    let out = Command::new(root.join("tests/go/build-fixtures.sh"))
        .output()
        .context("running tests/go/build-fixtures.sh")?;
    ensure!(
        out.status.success(),
        "building Go fixtures (run `WITH_GO=1 scripts/bootstrap.sh`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<(String, String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.to_owned(),
                it.next()?.to_owned(),
                PathBuf::from(it.next()?),
            ))
        })
        .collect();
    let minor = |v: &str| {
        v.split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let newest = all
        .iter()
        .map(|(v, ..)| v.clone())
        .max_by_key(|v| minor(v))
        .context("no Go fixtures")?;
    Ok(all
        .into_iter()
        .filter(|(v, variant, _)| *v == newest && GUEST_GO_VARIANTS.contains(&variant.as_str()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_and_return_codes() {
        let line = r#"{"target":{"kind":["test"],"name":"tcp"},"executable":"/t/a\"b"}"#;
        assert_eq!(json_str(line, "name").as_deref(), Some("tcp"));
        assert_eq!(json_str(line, "executable").as_deref(), Some("/t/a\"b"));
        assert_eq!(json_str(line, "missing"), None);
        assert_eq!(rc_of("tcp rc=101"), Some(101));
        assert_eq!(rc_of("rc=0"), Some(0));
        assert_eq!(rc_of("nothing"), None);
    }

    #[test]
    fn only_verifier_files_are_exported() {
        let root = Path::new("/r");
        assert!(export_target(root, "/r/tests/verifier-insns/6.1.0-56-amd64.txt").is_ok());
        assert!(export_target(root, "/r/tests/verifier-insns/../../x.txt").is_err());
        assert!(export_target(root, "/etc/passwd").is_err());
    }
}

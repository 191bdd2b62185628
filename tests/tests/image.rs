//! The container image (`./x image`, target/image/collector-<version>.oci.tar) run by a real
//! container runtime: podman with runc (crun refuses this machine's hybrid cgroups). The Go test
//! server runs in a container of its own (its own network namespace, podman's cgroup
//! `/libpod_parent/libpod-<id>`); the collector runs in another, with the settings of the chart's
//! two modes (deploy/helm/collector):
//!
//! - privileged: `--privileged`, host PID namespace, read-only host mounts;
//! - least-privilege: every capability dropped but exactly those the configuration needs
//!   (collector/src/capabilities.rs), read-only root filesystem and host mounts.
//!
//! Each must count the server's requests exactly and charge them to that container (its full
//! container ID). Then each needed capability is removed in turn: the collector must refuse to
//! start, naming exactly that capability.
//!
//! The collector container shares the host network namespace only so that this test reaches its
//! API on loopback; in a pod it listens on the pod IP. Nothing else of the test depends on it:
//! the socket parser is attached to the cgroup hierarchy, not to a network namespace.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use integration_tests::{
    cgroup2_mount, free_port, http_get_status, metric_sum, newest_go_server, require_root, scrape,
    unique_prefix, wait_until_blocking,
};

/// The capabilities of each configuration, in the order the collector names them.
/// The defaults: the socket parser, and Go uprobes for the servers it cannot read (`auto`).
const DEFAULT_CAPS: &[&str] = &[
    "BPF",
    "PERFMON",
    "NET_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];
const SOCKET_PARSER_CAPS: &[&str] = &["BPF", "PERFMON", "NET_ADMIN"];
const SOCKET_PARSER_ARGS: &[&str] = &["--go-http-uprobes", "off"];
const GO_UPROBE_CAPS: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];
const GO_UPROBE_ARGS: &[&str] = &["--no-http-socket", "--go-http-uprobes", "all"];

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running podman (scripts/bootstrap.sh installs it): {e}"))
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A container removed (with its processes) when dropped.
struct Container {
    name: String,
}

impl Container {
    fn run(name: String, podman_args: &[&str], image: &str, args: &[&str]) -> Container {
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend(podman_args);
        all.push(image);
        all.extend(args);
        podman_ok(&all);
        Container { name }
    }

    fn inspect(&self, format: &str) -> String {
        podman_ok(&["inspect", "-f", format, &self.name])
    }

    fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "2", &self.name]);
    }
}

/// The archive `./x image` wrote, loaded into podman's storage; its reference.
fn load_image() -> String {
    let archive = std::env::var_os("COLLECTOR_IMAGE_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
                "../target/image/collector-{}.oci.tar",
                env!("CARGO_PKG_VERSION")
            ))
        });
    assert!(
        archive.exists(),
        "{} is missing: build it with `./x image` (`./x integration-test` does)",
        archive.display()
    );
    let loaded = podman_ok(&["load", "-q", "-i", archive.to_str().expect("utf-8")]);
    loaded
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: "))
        .unwrap_or_else(|| panic!("podman load said {loaded:?}"))
        .trim()
        .to_string()
}

/// Host paths every collector container gets, all read-only, as the chart mounts them.
fn host_mounts() -> Vec<String> {
    let cgroup = cgroup2_mount();
    vec![
        format!("{}:/host/cgroup:ro", cgroup.display()),
        "/sys/kernel/btf:/sys/kernel/btf:ro".into(),
        "/sys/kernel/tracing:/sys/kernel/tracing:ro".into(),
    ]
}

/// podman options of the collector container: `security` (the mode) plus what both modes share.
fn collector_podman_args(security: &[String]) -> Vec<String> {
    let mut args: Vec<String> = security.to_vec();
    args.extend(["--pid", "host", "--network", "host", "--read-only"].map(String::from));
    for m in host_mounts() {
        args.extend(["-v".to_string(), m]);
    }
    args
}

fn least_privilege(caps: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--cap-drop".to_string(),
        "ALL".into(),
        // The runtime's default seccomp profile refuses bpf(2) (measured: map creation EPERM
        // with every capability it needs); the chart sets Unconfined too.
        "--security-opt".into(),
        "seccomp=unconfined".into(),
    ];
    if !caps.is_empty() {
        args.extend(["--cap-add".to_string(), caps.join(",")]);
    }
    args
}

/// The Go test server in its own container (own network namespace, loopback only), running as
/// uid 1000 from a binary only uid 1000 may read, so that the Go uprobes case needs
/// CAP_DAC_READ_SEARCH for real.
struct GoServer {
    container: Container,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl GoServer {
    fn start(prefix: &str, image: &str) -> GoServer {
        let dir = TempDir(std::env::temp_dir().join(format!("{prefix}-go")));
        std::fs::create_dir_all(&dir.0).expect("mkdir");
        let binary = dir.0.join("server");
        std::fs::copy(newest_go_server(), &binary).expect("copy server");
        let path = binary.to_str().expect("utf-8");
        assert!(
            Command::new("chown")
                .args(["1000:1000", path])
                .status()
                .expect("chown")
                .success()
        );
        assert!(
            Command::new("chmod")
                .args(["0700", path])
                .status()
                .expect("chmod")
                .success()
        );
        let container = Container::run(
            format!("{prefix}-go"),
            &[
                "--network",
                "none",
                "--user",
                "1000:1000",
                "--entrypoint",
                "/server",
                "-v",
                &format!("{path}:/server:ro"),
            ],
            image,
            &["-listen", "127.0.0.1:8080"],
        );
        wait_until_blocking(
            Duration::from_secs(20),
            Duration::from_millis(100),
            "the Go server listening",
            || container.logs().contains("listening on").then_some(()),
        );
        GoServer {
            container,
            _dir: dir,
        }
    }

    fn id(&self) -> String {
        self.container.inspect("{{.Id}}")
    }

    /// `n` requests to /ok from inside the server's network namespace (its loopback); every one
    /// must answer 200.
    fn requests(&self, n: usize) {
        let pid = self.container.inspect("{{.State.Pid}}");
        let url = "http://127.0.0.1:8080/ok";
        let mut args = vec!["-t", &pid, "-n", "curl", "-s", "-w", "%{http_code} "];
        args.extend(std::iter::repeat_n(url, n));
        let out = Command::new("nsenter")
            .args(&args)
            .output()
            .expect("nsenter curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.matches("200 ").count(), n, "curl said: {text}");
    }
}

/// Starts the collector container, waits for /readyz, sends `n` requests to the Go server and
/// checks the collector counted exactly `n`, charged to the Go server's container.
fn collects_exactly(prefix: &str, image: &str, go: &GoServer, security: &[String], args: &[&str]) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut collector_args = vec![
        "--listen",
        &listen,
        "--cgroup-root",
        "/host/cgroup",
        "--harvest-interval",
        "200ms",
    ];
    collector_args.extend(args);
    let podman_args = collector_podman_args(security);
    let podman_args: Vec<&str> = podman_args.iter().map(String::as_str).collect();
    let collector = Container::run(
        format!("{prefix}-collector"),
        &podman_args,
        image,
        &collector_args,
    );
    let addr = listen.parse().expect("addr");
    wait_until_blocking(
        Duration::from_secs(90),
        Duration::from_millis(200),
        "the collector ready",
        || {
            let state = collector.inspect("{{.State.Status}}");
            assert_ne!(state, "exited", "collector exited:\n{}", collector.logs());
            (http_get_status(addr, "/readyz") == Some(200)).then_some(())
        },
    );
    if args == GO_UPROBE_ARGS {
        // Readiness does not wait for Go discovery (it attaches in the background): requests
        // sent before the server is instrumented are, rightly, not counted by uprobes.
        let pid: u32 = go.container.inspect("{{.State.Pid}}").parse().expect("pid");
        wait_until_blocking(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "the Go server instrumented (/v1/go-http)",
            || {
                let list: serde_json::Value =
                    serde_json::from_str(&get(addr, "/v1/go-http")).ok()?;
                list.as_array()?
                    .iter()
                    .any(|i| {
                        // Skipped servers are listed too, `instrumented: false`.
                        i["instrumented"] == true
                            && i["pids"]
                                .as_array()
                                .is_some_and(|p| p.contains(&pid.into()))
                    })
                    .then_some(())
            },
        );
    }
    let id = go.id();
    let labels = [
        ("workload_kind", "container"),
        ("container_id", id.as_str()),
        ("route", "/ok"),
        ("status_code", "200"),
    ];
    let count = |text: &str| {
        metric_sum(text, "http_server_request_duration_seconds_count", &labels).unwrap_or(0.0)
    };
    let before = count(&scrape(addr));
    const N: usize = 40;
    go.requests(N);
    // Every request charged to the container, none lost and none counted twice: wait for the
    // count to reach N (or 20 s), then check it is exactly N.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&scrape(addr)) - before < N as f64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(600));
    let text = scrape(addr);
    assert_eq!(
        count(&text) - before,
        N as f64,
        "{security:?} {args:?}: requests charged to container {id}; its series:\n{}\ncollector log:\n{}",
        text.lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
            .collect::<Vec<_>>()
            .join("\n"),
        collector.logs()
    );
}

/// The body of GET `path` on the collector's API.
fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Runs the collector without `missing` of `caps` and returns its exit code and output.
fn refused_without(
    image: &str,
    caps: &[&str],
    missing: &str,
    args: &[&str],
) -> (Option<i32>, String) {
    let kept: Vec<&str> = caps.iter().copied().filter(|c| *c != missing).collect();
    let podman_args = collector_podman_args(&least_privilege(&kept));
    // A collector that does not refuse would run on: podman stops it after 30 s.
    let mut all: Vec<&str> = vec!["run", "--rm", "--timeout", "30"];
    all.extend(podman_args.iter().map(String::as_str));
    all.push(image);
    all.extend(["--listen", "127.0.0.1:0", "--cgroup-root", "/host/cgroup"]);
    all.extend(args);
    let out = podman(&all);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One Go server container, one collector container in `security`, `args`: counted exactly.
fn collects_case(security: &[String], args: &[&str]) {
    require_root();
    let image = load_image();
    let prefix = unique_prefix("img");
    let go = GoServer::start(&prefix, &image);
    collects_exactly(&prefix, &image, &go, security, args);
}

#[test]
fn privileged_socket_parser_charges_a_containers_requests_to_it() {
    collects_case(&["--privileged".to_string()], &[]);
}

#[test]
fn least_privileged_defaults_charge_a_containers_requests_to_it() {
    collects_case(&least_privilege(DEFAULT_CAPS), &[]);
}

#[test]
fn least_privileged_socket_parser_charges_a_containers_requests_to_it() {
    collects_case(&least_privilege(SOCKET_PARSER_CAPS), SOCKET_PARSER_ARGS);
}

#[test]
fn privileged_go_uprobes_charge_a_containers_requests_to_it() {
    collects_case(&["--privileged".to_string()], GO_UPROBE_ARGS);
}

#[test]
fn least_privileged_go_uprobes_charge_a_containers_requests_to_it() {
    collects_case(&least_privilege(GO_UPROBE_CAPS), GO_UPROBE_ARGS);
}

#[test]
fn image_without_a_needed_capability_refuses_to_start_naming_it() {
    require_root();
    let image = load_image();
    for (caps, args) in [
        (DEFAULT_CAPS, &[][..]),
        (SOCKET_PARSER_CAPS, SOCKET_PARSER_ARGS),
        (GO_UPROBE_CAPS, GO_UPROBE_ARGS),
    ] {
        for missing in caps {
            let (code, output) = refused_without(&image, caps, missing, args);
            assert_eq!(code, Some(1), "without CAP_{missing} {args:?}:\n{output}");
            let named: Vec<&str> = output
                .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .filter(|w| w.starts_with("CAP_"))
                .collect();
            assert_eq!(
                named,
                [format!("CAP_{missing}")],
                "without CAP_{missing} {args:?}, the error should name it alone:\n{output}"
            );
            assert!(
                output.contains("missing capabilities: "),
                "without CAP_{missing}:\n{output}"
            );
        }
    }
}

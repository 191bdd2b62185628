//! A real Kubernetes control plane for tests: etcd and kube-apiserver, built from their Go
//! modules by `scripts/k8s-control-plane.sh` (cached; a no-op when warm), started on loopback
//! with a self-made CA, serving and client certificates (openssl) and a service-account signing
//! key, `--authorization-mode=Node,RBAC`. No scheduler, controller-manager or kubelet: pods are
//! created with `spec.nodeName` set, and their status is written by the test.
//!
//! Everything is driven through the real `kubectl` of the same release: as the admin
//! (`system:masters` client certificate) to set up, and through a ServiceAccount token
//! (TokenRequest API, `kubectl create token`) for what the collector does, so RBAC is exercised.
//!
//! Dropping the value stops both processes and removes the temporary directory.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

/// The `kubernetes` Service's cluster IP: the first of `--service-cluster-ip-range`.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// How long kube-apiserver may take to answer /readyz (it bootstraps RBAC roles and priority
/// classes into a fresh etcd first; ~10 s on two cores).
const APISERVER_READY: Duration = Duration::from_secs(120);

pub struct ControlPlane {
    dir: PathBuf,
    bin: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    apiserver_args: Vec<String>,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    admin: PathBuf,
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The control-plane binaries: builds them on first use (long), then the cached ones.
pub fn control_plane_bin() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/k8s-control-plane.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    ensure!(
        bin.join("kube-apiserver").is_file(),
        "no kube-apiserver in {}",
        bin.display()
    );
    Ok(bin)
}

/// Writes a CA-signed certificate and key (`<name>.crt`, `<name>.key`) into `dir`.
fn signed_cert(dir: &Path, name: &str, subject: &str, san: Option<&str>) -> Result<()> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let crt = dir.join(format!("{name}.crt"));
    let mut req = Command::new("openssl");
    req.args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
    ])
    .args(["-nodes", "-subj", subject, "-keyout"])
    .arg(&key)
    .arg("-out")
    .arg(&csr);
    if let Some(san) = san {
        req.args(["-addext", &format!("subjectAltName={san}")]);
    }
    run(&mut req)?;
    let mut sign = Command::new("openssl");
    sign.args([
        "x509",
        "-req",
        "-days",
        "2",
        "-copy_extensions",
        "copy",
        "-in",
    ])
    .arg(&csr)
    .arg("-CA")
    .arg(dir.join("ca.crt"))
    .arg("-CAkey")
    .arg(dir.join("ca.key"))
    .arg("-CAcreateserial")
    .arg("-out")
    .arg(&crt);
    run(&mut sign)?;
    Ok(())
}

/// A kubeconfig for `url` trusting `ca`, with either a client certificate or a bearer token.
pub fn kubeconfig(url: &str, ca: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    \
         certificate-authority: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    \
         user: u\ncurrent-context: test\nusers:\n- name: u\n  user:\n{user}",
        ca.display()
    )
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver in a fresh directory named after `prefix`; returns once
    /// the API server is ready.
    pub fn start(prefix: &str) -> Result<ControlPlane> {
        let bin = control_plane_bin()?;
        let dir = std::env::temp_dir().join(format!("{prefix}-k8s"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut cp = ControlPlane {
            dir: dir.clone(),
            bin,
            etcd: None,
            apiserver: None,
            apiserver_args: Vec::new(),
            url: String::new(),
            admin: dir.join("admin.kubeconfig"),
        };
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=collector-test-ca", "-keyout"])
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.crt")))?;
        signed_cert(
            &dir,
            "apiserver",
            "/CN=kube-apiserver",
            // The `kubernetes` Service's cluster IP too: a pod's in-cluster client dials it
            // (see `Node::start`, which routes it to this server on the node).
            Some(&format!(
                "IP:127.0.0.1,IP:{KUBERNETES_SERVICE_IP},DNS:localhost,DNS:kubernetes.default.svc"
            )),
        )?;
        signed_cert(&dir, "admin", "/O=system:masters/CN=test-admin", None)?;
        run(Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(dir.join("sa.key")))?;

        let (client, peer, secure) = (crate::free_port(), crate::free_port(), crate::free_port());
        let etcd_log = fs::File::create(dir.join("etcd.log"))?;
        let etcd = Command::new(cp.bin.join("etcd"))
            .args(["--name", "test", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{peer}"))
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(etcd_log.try_clone()?)
            .stderr(etcd_log)
            .spawn()
            .context("starting etcd")?;
        cp.etcd = Some(etcd);

        let d = |f: &str| dir.join(f).display().to_string();
        cp.apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The `kubernetes` Service's endpoints may not be loopback; nothing here uses them.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", d("apiserver-certs")),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            format!("--service-account-key-file={}", d("sa.key")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--enable-admission-plugins=NodeRestriction,PodSecurity,ValidatingAdmissionPolicy"
                .into(),
            // As every real cluster (kubeadm's default): the collector's DaemonSet in its
            // privileged mode is refused otherwise (tests/tests/deploy.rs).
            "--allow-privileged=true".into(),
        ];
        cp.url = format!("https://127.0.0.1:{secure}");
        fs::write(
            &cp.admin,
            kubeconfig(
                &cp.url,
                &dir.join("ca.crt"),
                &format!(
                    "    client-certificate: {}\n    client-key: {}\n",
                    d("admin.crt"),
                    d("admin.key")
                ),
            ),
        )?;
        cp.start_apiserver()?;
        Ok(cp)
    }

    /// Starts (or restarts) kube-apiserver with the same flags and port; waits for /readyz.
    pub fn start_apiserver(&mut self) -> Result<()> {
        ensure!(self.apiserver.is_none(), "kube-apiserver already runs");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))?;
        let child = Command::new(self.bin.join("kube-apiserver"))
            .args(&self.apiserver_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kube-apiserver")?;
        self.apiserver = Some(child);
        let start = Instant::now();
        loop {
            let out = self.kubectl_output(&["get", "--raw", "/readyz"])?;
            if out.status.success() {
                return Ok(());
            }
            if let Some(c) = self.apiserver.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "kube-apiserver exited ({status}):\n{}",
                    self.log_tail("apiserver.log")
                );
            }
            if start.elapsed() > APISERVER_READY {
                bail!(
                    "kube-apiserver not ready after {APISERVER_READY:?}: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail("apiserver.log")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stops kube-apiserver (SIGKILL: an outage, not a drain); etcd keeps the state.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut c) = self.apiserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The CA the API server's certificate chains to.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The admin's kubeconfig (for `kubectl_as` when stderr matters, e.g. warnings).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.admin.clone()
    }

    /// `kubectl` as the admin, whatever its exit status.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_as(&self.admin, args, None)
    }

    /// `kubectl --kubeconfig <kc> args`, with `stdin` fed if given.
    pub fn kubectl_as(&self, kc: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(kc)
            .args(["--request-timeout", "10s"])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// `kubectl` as the admin; fails on a non-zero exit. Returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// `kubectl apply -f -` (or any command reading `-f -`) with `manifest` on stdin, as admin.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.kubectl_as(&self.admin, args, stdin)?;
        ensure!(
            out.status.success(),
            "kubectl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates an object from JSON as the admin; returns its UID.
    pub fn create(&self, object: &serde_json::Value) -> String {
        let uid = self
            .kubectl_stdin(
                &["create", "-f", "-", "-o", "jsonpath={.metadata.uid}"],
                Some(&object.to_string()),
            )
            .expect("kubectl create");
        assert!(!uid.is_empty(), "no uid for {object}");
        uid
    }

    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.kubectl_stdin(&["apply", "-f", "-"], Some(manifest))
    }

    /// A kubeconfig authenticating as ServiceAccount `namespace/name` with a token from the
    /// TokenRequest API (no client certificate): what a collector pod's projected token is.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token =
            self.kubectl(&["create", "token", name, "-n", namespace, "--duration", "1h"])?;
        let token = token.trim();
        ensure!(!token.is_empty(), "empty token for {namespace}/{name}");
        let path = self.dir.join(format!("{namespace}-{name}.kubeconfig"));
        fs::write(
            &path,
            kubeconfig(&self.url, &self.ca(), &format!("    token: {token}\n")),
        )?;
        Ok(path)
    }
}

impl ControlPlane {
    /// A kubeconfig with a token bound to pod `namespace/pod` (running as ServiceAccount
    /// `namespace/name`): what the pod's projected token is. Its claims name the pod's node
    /// (`authentication.kubernetes.io/node-name`), which admission policies can compare.
    pub fn pod_token_kubeconfig(&self, namespace: &str, name: &str, pod: &str) -> Result<PathBuf> {
        let token = self.kubectl(&[
            "create",
            "token",
            name,
            "-n",
            namespace,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            pod,
            "--duration",
            "1h",
        ])?;
        let token = token.trim();
        ensure!(
            !token.is_empty(),
            "empty token for {namespace}/{name} in {pod}"
        );
        let path = self
            .dir
            .join(format!("{namespace}-{name}-{pod}.kubeconfig"));
        fs::write(
            &path,
            kubeconfig(&self.url, &self.ca(), &format!("    token: {token}\n")),
        )?;
        Ok(path)
    }

    /// The control plane's directory (logs, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `kubectl` binary of the same release.
    pub fn kubectl_bin(&self) -> PathBuf {
        self.bin.join("kubectl")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "harness: kube-apiserver log tail:\n{}",
                self.log_tail("apiserver.log")
            );
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("harness: removing {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A real node: kubelet + containerd + runc (single-node cluster tests)
// ---------------------------------------------------------------------------------------------

/// The node's address in its network namespace (the kubelet refuses a loopback node IP).
pub const NODE_IP: &str = "198.19.0.1";
/// Pod addresses: the CNI bridge's host-local range, inside the node's network namespace only.
pub const POD_SUBNET: &str = "198.19.10.0/24";

/// How long the kubelet may take to register its node and report it Ready.
const NODE_READY: Duration = Duration::from_secs(90);

/// Runs in the node's network namespace, in a new private mount namespace (`unshare -m`), and
/// stays there (`sleep`) as the namespaces' holder; containerd and the kubelet join both.
/// `$1` is the node's directory.
///
/// - /sys is remounted so it describes this network namespace (the CNI plugins and cadvisor
///   read /sys/class/net), with the host's cgroup hierarchies bound back on /sys/fs/cgroup:
///   nothing of the host's cgroup mounts is changed, the kubelet and runc see them as they are.
/// - containerd 1.6 keeps shim sockets under /run/containerd, the CRI plugin pins pod network
///   namespaces under /run/netns and libcni caches results in /var/lib/cni: private tmpfs
///   mounts, so the test leaves nothing there and sees nothing of others'.
const NODE_HOLDER: &str = r#"set -eu
dir=$1
mkdir -p "$dir/cgroup-bind" /run/containerd /var/lib/cni
mount --rbind /sys/fs/cgroup "$dir/cgroup-bind"
mount -t sysfs sysfs /sys
mount --rbind "$dir/cgroup-bind" /sys/fs/cgroup
umount -l "$dir/cgroup-bind"
mount -t tmpfs tmpfs /run/containerd
mount -t tmpfs tmpfs /run/netns
mount -t tmpfs tmpfs /var/lib/cni
# A node's tracefs, as the host has it (the new sysfs has an empty mount point): pods that
# mount /sys/kernel/tracing (the collector's classic tracepoint rung) see the real one.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
echo ready
exec sleep infinity
"#;

/// The node binaries (`scripts/kubelet.sh`, cached; builds on first use): the bin directory
/// (kubelet, kube-controller-manager, … next to the control plane's) and the directory of the
/// unpacked Debian packages (containerd, CNI plugins).
pub fn node_bin() -> Result<(PathBuf, PathBuf)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kubelet.sh");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(bin), Some(deb)) = (lines.next(), lines.next()) else {
        bail!("{} printed {text:?}", script.display());
    };
    Ok((PathBuf::from(bin), PathBuf::from(deb)))
}

/// Runs `f` on a thread inside network namespace `netns` (a name under /run/netns); threads
/// `f` spawns start there too.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns =
        fs::File::open(format!("/run/netns/{netns}")).with_context(|| format!("netns {netns}"))?;
    std::thread::spawn(move || -> Result<T> {
        setns_net(&ns)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in netns {netns} panicked"))?
}

fn setns_net(ns: &fs::File) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid namespace fd; setns affects only the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Forwards `port` of every address inside `netns` to `127.0.0.1:port` of this (the root)
/// namespace: how the kubelet in the node's namespace reaches the API server (on its loopback),
/// and pods (through the node's address, see `Node::start`), without a veth or route in the
/// root namespace. The listener is made in `netns`, the connections to the API server from
/// the root namespace (a socket keeps the namespace it was made in). Ends when `stop` is set.
fn forward_into_netns(
    netns: &str,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    use std::net::{Shutdown, TcpStream};
    use std::sync::atomic::Ordering;
    let ns = fs::File::open(format!("/run/netns/{netns}"))?;
    let home = fs::File::open("/proc/thread-self/ns/net")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let listener = (|| -> Result<TcpListener> {
            setns_net(&ns)?;
            let l = TcpListener::bind(("0.0.0.0", port))?;
            setns_net(&home)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })();
        let listener = match listener {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            let Ok((client, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = client.set_nonblocking(false);
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone(), server.try_clone()),
                (server.try_clone(), client.try_clone()),
            ]
            .into_iter()
            .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
            {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        }
    });
    rx.recv()?
}

/// A node of the control plane: containerd (Debian's, with the host's runc) and a kubelet of
/// the control plane's release, in a network namespace of their own (`<prefix>-node`: pods get
/// addresses from [`POD_SUBNET`] on a CNI bridge there, reachable only from that namespace, see
/// [`Node::in_netns`]) and a private mount namespace, with pod cgroups under `/<prefix>` of
/// each host cgroup hierarchy (`cgroupfs` driver). Plus kube-controller-manager with the
/// controllers asked for (EndpointSlices need `endpointslice`), and kube-scheduler if asked for
/// ([`Node::start_scheduler`]). Pods reach the API server in-cluster: the `kubernetes` Service's
/// cluster IP is routed to it by the node (in place of kube-proxy, for that one Service).
///
/// On cgroup v1 and hybrid hosts the kubelet runs with `failCgroupV1: false` (1.35+ refuse v1
/// by default); containerd restricts `oom_score_adj` to its own (lowering it is not permitted
/// here, runc fails "failed to update /proc/self/oom_score_adj: Permission denied"). Images
/// come from OCI archives ([`Node::import_image`]), never from a registry: pods must use
/// `imagePullPolicy: Never`.
///
/// Dropping the value kills the kubelet, every process of the pods' cgroups, containerd, its
/// shims and the namespace holder, removes the cgroups, the netns and the directory. Drop it
/// before the [`ControlPlane`].
pub struct Node {
    /// The node's name (and the kubelet's `--hostname-override`).
    pub name: String,
    dir: PathBuf,
    netns: String,
    cgroup_root: String,
    ctr: PathBuf,
    sock: PathBuf,
    holder: Option<Child>,
    containerd: Option<Child>,
    kubelet: Option<Child>,
    controller_manager: Option<Child>,
    scheduler: Option<Child>,
    pause_image: String,
    forward_stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The host's cgroup hierarchies: every cgroup and cgroup2 mount under /sys/fs/cgroup (the
/// v1 controllers and the hybrid `unified` one, or the v2 root alone).
fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
            (matches!(fstype, "cgroup" | "cgroup2") && path.starts_with("/sys/fs/cgroup"))
                .then(|| PathBuf::from(path))
        })
        .collect())
}

impl Node {
    /// Starts containerd, the kubelet (node `node-<prefix>`) and kube-controller-manager with
    /// `controllers`; returns once the node is Ready.
    pub fn start(cp: &ControlPlane, prefix: &str, controllers: &[&str]) -> Result<Node> {
        let (bin, deb) = node_bin()?;
        let dir = std::env::temp_dir().join(format!("{prefix}-node"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let containerd_dir = deb.join("current-containerd/usr/bin");
        let cni_dir = deb.join("current-containernetworking-plugins/usr/lib/cni");
        let mut node = Node {
            name: format!("node-{prefix}"),
            dir: dir.clone(),
            netns: format!("{prefix}-node"),
            cgroup_root: format!("/{prefix}"),
            ctr: containerd_dir.join("ctr"),
            sock: dir.join("containerd.sock"),
            holder: None,
            containerd: None,
            kubelet: None,
            controller_manager: None,
            scheduler: None,
            pause_image: String::new(),
            forward_stop: Default::default(),
        };

        // The network namespace, with the node's address on one end of a veth pair whose both
        // ends stay inside (a dummy device needs a module this kernel lacks).
        run(Command::new("ip").args(["netns", "add", &node.netns]))?;
        let inside = |args: &[&str]| -> Result<()> {
            run(Command::new("ip")
                .args(["netns", "exec", &node.netns, "ip"])
                .args(args))
            .map(drop)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&[
            "link", "add", "node0", "type", "veth", "peer", "name", "node1",
        ])?;
        inside(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "node0"])?;
        inside(&["link", "set", "node0", "up"])?;
        inside(&["link", "set", "node1", "up"])?;
        let port: u16 = cp
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("API server port")?;
        forward_into_netns(&node.netns, port, node.forward_stop.clone())?;
        // What kube-proxy does for the one Service a pod's in-cluster client needs: the
        // `kubernetes` Service's cluster IP and port, to the API server through the forwarder
        // above (on the node's address). No other cluster IP is routed here.
        // nft (bootstrapped; iptables may be absent): a nat table of the node's namespace.
        run(Command::new("ip")
            .args(["netns", "exec", &node.netns, "nft"])
            .arg(format!(
                "add table ip node; \
                 add chain ip node prerouting {{ type nat hook prerouting priority dstnat; }}; \
                 add rule ip node prerouting ip daddr {KUBERNETES_SERVICE_IP} tcp dport 443 \
                 dnat to {NODE_IP}:{port}"
            )))?;

        // The kubelet's cgroup root must exist in every hierarchy; a new v1 cpuset group
        // starts with no CPUs and memory nodes, so it inherits the root's.
        for h in cgroup_hierarchies()? {
            let d = h.join(prefix);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = fs::read_to_string(h.join(f)) {
                    fs::write(d.join(f), v.trim())?;
                }
            }
        }

        // The kubelet's credentials: a client certificate of group system:nodes, as the Node
        // authorizer and NodeRestriction expect.
        signed_cert(
            &cp.dir,
            &node.name,
            &format!("/O=system:nodes/CN=system:node:{}", node.name),
            None,
        )?;
        let kubeconfig_path = dir.join("kubelet.kubeconfig");
        fs::write(
            &kubeconfig_path,
            kubeconfig(
                &cp.url,
                &cp.ca(),
                &format!(
                    "    client-certificate: {}\n    client-key: {}\n",
                    cp.dir.join(format!("{}.crt", node.name)).display(),
                    cp.dir.join(format!("{}.key", node.name)).display()
                ),
            ),
        )?;

        let d = |f: &str| dir.join(f).display().to_string();
        let k8s_version = bin
            .parent()
            .and_then(|p| p.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .context("release directory")?;
        let pause = format!("collector.test/pause:{k8s_version}");
        node.pause_image = pause.clone();
        fs::write(
            dir.join("containerd.toml"),
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{pause}"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni}"
      conf_dir = "{cni_conf}"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "runc"
          SystemdCgroup = false
          Root = "{runc_root}"
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
"#,
                root = d("containerd/root"),
                state = d("containerd/state"),
                sock = node.sock.display(),
                cni = cni_dir.display(),
                cni_conf = d("cni"),
                runc_root = d("runc"),
                opt = d("containerd/opt"),
            ),
        )?;
        fs::create_dir_all(dir.join("cni"))?;
        fs::write(
            dir.join("cni/10-pods.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0", "name": format!("{prefix}-pods"),
                "plugins": [
                    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                     "hairpinMode": true,
                     // A default route through the bridge, as every CNI gives pods: what
                     // leaves the pod subnet (the `kubernetes` Service) goes to the node.
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                              "routes": [{"dst": "0.0.0.0/0"}],
                              "dataDir": d("cni-ipam")}},
                    {"type": "loopback"}
                ]
            })
            .to_string(),
        )?;
        fs::write(
            dir.join("kubelet.yaml"),
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This host mounts cgroup v1 controllers (hybrid); 1.35+ refuse v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failSwapOn: false
address: 127.0.0.1
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
# A shared build machine's disk is often fuller than the defaults' 10-15 %: no evictions and
# no image garbage collection (the test's images are imported, not pullable).
evictionHard: {{memory.available: "1Mi", nodefs.available: "100Mi", imagefs.available: "100Mi"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
podLogsDir: {logs}
resolvConf: ""
containerRuntimeEndpoint: unix://{sock}
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
"#,
                cgroup_root = node.cgroup_root,
                logs = d("pod-logs"),
                sock = node.sock.display(),
            ),
        )?;

        // The namespace holder; containerd and the kubelet join its namespaces.
        let mut holder = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", NODE_HOLDER, "sh"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.join("holder.log"))?)
            .spawn()
            .context("starting the node's namespace holder")?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().context("holder stdout")?),
            &mut line,
        )?;
        let holder_pid = holder.id();
        node.holder = Some(holder);
        ensure!(
            line.trim() == "ready",
            "node namespace holder failed: {}",
            node.log_tail("holder.log")
        );
        let join = |program: &Path, log: &str| -> Result<Command> {
            let log = fs::File::create(dir.join(log))?;
            let mut c = Command::new("nsenter");
            c.args(["-t", &holder_pid.to_string(), "-m", "-n", "--"])
                .arg(program)
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        containerd_dir.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            Ok(c)
        };

        node.containerd = Some(
            join(&containerd_dir.join("containerd"), "containerd.log")?
                .arg("--config")
                .arg(dir.join("containerd.toml"))
                .spawn()
                .context("starting containerd")?,
        );
        let start = Instant::now();
        while !node.sock.exists() {
            if let Some(c) = node.containerd.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "containerd exited ({status}):\n{}",
                    node.log_tail("containerd.log")
                );
            }
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "containerd: no socket after 30 s:\n{}",
                node.log_tail("containerd.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node.import_image(&bin.join("../images/pause.oci.tar"))?;

        node.kubelet = Some(
            join(&bin.join("kubelet"), "kubelet.log")?
                .arg("--config")
                .arg(dir.join("kubelet.yaml"))
                .arg("--kubeconfig")
                .arg(&kubeconfig_path)
                .args(["--hostname-override", &node.name, "--node-ip", NODE_IP])
                .arg("--root-dir")
                .arg(dir.join("kubelet"))
                .arg("--cert-dir")
                .arg(dir.join("kubelet-pki"))
                .spawn()
                .context("starting the kubelet")?,
        );

        let kcm_port = crate::free_port();
        let kcm_log = fs::File::create(dir.join("controller-manager.log"))?;
        node.controller_manager = Some(
            Command::new(bin.join("kube-controller-manager"))
                .arg("--kubeconfig")
                .arg(&cp.admin)
                .arg(format!("--controllers={}", controllers.join(",")))
                .args(["--leader-elect=false", "--bind-address=127.0.0.1"])
                .arg(format!("--secure-port={kcm_port}"))
                // What the root-ca-cert-publisher writes into every namespace's
                // kube-root-ca.crt (a pod's projected service account volume needs it).
                .arg(format!("--root-ca-file={}", cp.ca().display()))
                .arg(format!("--cert-dir={}", d("controller-manager-certs")))
                .stdin(Stdio::null())
                .stdout(kcm_log.try_clone()?)
                .stderr(kcm_log)
                .spawn()
                .context("starting kube-controller-manager")?,
        );

        let start = Instant::now();
        loop {
            let ready = cp
                .kubectl_output(&[
                    "get",
                    "node",
                    &node.name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "True")
                .unwrap_or(false);
            if ready {
                return Ok(node);
            }
            if let Some(c) = node.kubelet.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "kubelet exited ({status}):\n{}",
                    node.log_tail("kubelet.log")
                );
            }
            ensure!(
                start.elapsed() < NODE_READY,
                "node {} not Ready after {NODE_READY:?}:\n{}",
                node.name,
                node.log_tail("kubelet.log")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Starts kube-scheduler (of the same release, as the admin): pods without `nodeName`,
    /// such as a DaemonSet's (its controller gives them node affinity only), are bound by it.
    pub fn start_scheduler(&mut self, cp: &ControlPlane) -> Result<()> {
        ensure!(self.scheduler.is_none(), "kube-scheduler already runs");
        let (bin, _) = node_bin()?;
        let port = crate::free_port();
        let log = fs::File::create(self.dir.join("scheduler.log"))?;
        self.scheduler = Some(
            Command::new(bin.join("kube-scheduler"))
                .arg("--kubeconfig")
                .arg(&cp.admin)
                .args(["--leader-elect=false", "--bind-address=127.0.0.1"])
                .arg(format!("--secure-port={port}"))
                .arg(format!(
                    "--cert-dir={}",
                    self.dir.join("scheduler-certs").display()
                ))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting kube-scheduler")?,
        );
        Ok(())
    }

    /// Loads an OCI archive into the CRI's image store (containerd namespace `k8s.io`).
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        run(Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.sock)
            .args(["--namespace", "k8s.io", "images", "import"])
            .arg(archive))
        .map(drop)
    }

    /// The pod sandbox image every node has (`imagePullPolicy: Never` pods may use it as a
    /// stand-in container that does nothing).
    pub fn pause_image(&self) -> &str {
        &self.pause_image
    }

    /// The node's network namespace (pod addresses are reachable from there).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Runs `f` in the node's network namespace (see [`in_netns`]).
    pub fn in_netns<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        in_netns(&self.netns, f)
    }

    /// The kubelet's cgroup root (`/<prefix>`); pods are under `<root>/kubepods`.
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    /// The node's directory (logs, configuration).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of one of the node's logs (`kubelet.log`, `containerd.log`, …).
    pub fn log_tail(&self, log: &str) -> String {
        let text = fs::read_to_string(self.dir.join(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Every process of the pods' cgroups (any hierarchy) and every process in the holder's
    /// mount namespace or naming this node's directory (containerd's shims), SIGKILLed.
    fn kill_all(&self) -> usize {
        let mut pids = BTreeSet::new();
        for h in cgroup_hierarchies().unwrap_or_default() {
            collect_procs(&h.join(self.cgroup_root.trim_start_matches('/')), &mut pids);
        }
        let holder_mnt = self
            .holder
            .as_ref()
            .and_then(|h| fs::read_link(format!("/proc/{}/ns/mnt", h.id())).ok());
        let dir = self.dir.to_string_lossy().into_owned();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            let mnt = fs::read_link(e.path().join("ns/mnt")).ok();
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            if (holder_mnt.is_some() && mnt == holder_mnt)
                || String::from_utf8_lossy(&cmdline).contains(&dir)
            {
                pids.insert(pid);
            }
        }
        for &pid in &pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        pids.len()
    }
}

fn collect_procs(dir: &Path, pids: &mut BTreeSet<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_procs(&e.path(), pids);
        }
    }
}

/// Removes `dir` and the cgroups below it, leaves first.
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path())?;
        }
    }
    fs::remove_dir(dir)
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in [
                "kubelet.log",
                "containerd.log",
                "controller-manager.log",
                "scheduler.log",
            ] {
                eprintln!("harness: node {log} tail:\n{}", self.log_tail(log));
            }
        }
        for c in [
            &mut self.scheduler,
            &mut self.controller_manager,
            &mut self.kubelet,
        ]
        .into_iter()
        .filter_map(Option::take)
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        // Killed processes leave their cgroups a moment later; containerd's shims may restart
        // nothing once containerd is gone, so a few rounds settle it.
        for _ in 0..50 {
            if self.kill_all() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for c in [&mut self.containerd, &mut self.holder]
            .into_iter()
            .filter_map(Option::take)
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in cgroup_hierarchies().unwrap_or_default() {
            let d = h.join(self.cgroup_root.trim_start_matches('/'));
            let mut result = Ok(());
            for _ in 0..20 {
                result = remove_cgroup_tree(&d);
                if result.is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Err(e) = result
                && d.exists()
            {
                eprintln!("harness: removing cgroup {}: {e}", d.display());
            }
        }
        self.forward_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.netns])) {
            eprintln!("harness: {e}");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("harness: removing {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tools the chart tests share: helm, the prometheus-operator CRDs, images from one binary
// ---------------------------------------------------------------------------------------------

/// Runs a script of scripts/ that prints one path (builds on first use, cached after).
fn script_path(name: &str) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// helm, built from its Go module by scripts/helm.sh.
pub fn helm_bin() -> Result<PathBuf> {
    script_path("helm.sh")
}

/// The directory of prometheus-operator's CRDs (`monitoring.coreos.com_<plural>.yaml`),
/// generated from the operator's API module by scripts/monitoring-crds.sh.
pub fn monitoring_crds() -> Result<PathBuf> {
    script_path("monitoring-crds.sh")
}

/// An OCI archive `<dir>/<name>.oci.tar` of an image from scratch holding `binary` as
/// `/<name>`, its entrypoint, named `reference` (buildah, as `./x image` builds the
/// collector's): what a node imports instead of pulling.
pub fn single_binary_image(
    dir: &Path,
    binary: &Path,
    name: &str,
    reference: &str,
) -> Result<PathBuf> {
    let archive = dir.join(format!("{name}.oci.tar"));
    let buildah = |args: &[&str]| -> Result<String> {
        let out = run(Command::new("buildah").args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let c = buildah(&["from", "scratch"])?;
    let built = (|| -> Result<()> {
        buildah(&[
            "copy",
            &c,
            &binary.display().to_string(),
            &format!("/{name}"),
        ])?;
        buildah(&["config", "--entrypoint", &format!(r#"["/{name}"]"#), &c])?;
        buildah(&[
            "commit",
            "-q",
            &c,
            &format!("oci-archive:{}:{reference}", archive.display()),
        ])?;
        Ok(())
    })();
    buildah(&["rm", &c])?;
    built.map(|()| archive)
}

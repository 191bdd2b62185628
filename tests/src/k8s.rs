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
    fs,
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

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

/// A free loopback port (bound, then released: the tiny race is acceptable for a test).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
            Some("IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"),
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

        let (client, peer, secure) = (free_port()?, free_port()?, free_port()?);
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

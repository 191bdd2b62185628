//! Who a kernel event belongs to: owner key (socket cgroup id, tgid) → workload.
//!
//! Standalone (no Kubernetes API): the cgroup path names the workload — a pod (UID and container
//! id parsed from paths under the kubelet's cgroup roots only), a container, a systemd unit or a
//! plain cgroup. Where the cgroup names nothing (root, user sessions), the process is the
//! workload, named by its executable's file name (`/proc/<pid>/exe`, else argv[0]), kind
//! `process`; when neither can be read (the process is gone), by its `comm` — truncated to 15
//! bytes and set by the process itself (`prctl(PR_SET_NAME)`) — kind `process_comm`, which says
//! so. Either name is chosen by whoever started the process: a label, never an identity.

pub mod cgroup;

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use collector_common::tcp::OwnerKey;
use std::sync::Arc;

use crate::kubernetes::Kubernetes;

use cgroup::{CgroupIdentity, CgroupResolver, KubeletRoots};

/// The kubelet roots to recognise pods under: the configured ones (which replace the defaults),
/// else the defaults plus those detected on this host (see `cgroup::detect_kubelet_roots`).
pub fn kubelet_roots(
    configured: &[String],
    cgroup2_mount: Option<&std::path::Path>,
) -> Result<KubeletRoots, cgroup::CgroupError> {
    let roots = if configured.is_empty() {
        let mut roots = KubeletRoots::default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let detected = cgroup::detect_kubelet_roots(cgroup2_mount, &mountinfo);
        for r in &detected {
            roots.add(r);
        }
        tracing::info!(?detected, roots = ?roots.to_strings(), "kubelet cgroup roots (pods are recognised only under these)");
        roots
    } else {
        let roots = KubeletRoots::new(configured)?;
        tracing::info!(roots = ?roots.to_strings(), "kubelet cgroup roots (configured)");
        roots
    };
    Ok(roots)
}

/// What kind of thing a workload is; a bounded label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    Pod,
    Container,
    Systemd,
    Cgroup,
    /// Named by the file name of the process's executable (else its argv[0]): chosen by whoever
    /// installed or started it, never an identity to trust.
    Process,
    /// Named by the process's `comm` (15 bytes), which any process can set to anything: the
    /// fallback when the executable could not be read.
    ProcessComm,
    /// No socket cgroup and no owner process known (e.g. sockets that predate the collector
    /// and never sent since, or resets for packets that matched no socket).
    Unattributed,
    /// The kernel's per-owner map or the workload cap overflowed.
    Overflow,
}

impl WorkloadKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "pod",
            WorkloadKind::Container => "container",
            WorkloadKind::Systemd => "systemd",
            WorkloadKind::Cgroup => "cgroup",
            WorkloadKind::Process => "process",
            WorkloadKind::ProcessComm => "process_comm",
            WorkloadKind::Unattributed => "unattributed",
            WorkloadKind::Overflow => "overflow",
        }
    }
}

/// A workload as exported: kind + stable name, plus pod/container ids where known.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// Pod UID (or, once the Kubernetes API named the pod, its workload such as
    /// `deployment/web`), container id (12 chars), unit name, cgroup path or process name.
    pub name: String,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// Names from the Kubernetes API (`kubernetes::PodIndex`), for pods it knows.
    pub kubernetes: Option<PodNames>,
}

/// A pod's names as the Kubernetes API gives them; empty strings where unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PodNames {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `deployment/web`, `statefulset/db`, `daemonset/agent`, `cronjob/backup`, `pod/name`.
    pub workload: String,
    /// The Services with this pod among their endpoints, comma-joined in order.
    pub service: String,
    /// The pod's labels named by `--pod-label` (the allow-list), and only those.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Workload {
    fn simple(kind: WorkloadKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            pod_uid: None,
            container_id: None,
            kubernetes: None,
        }
    }

    pub fn unattributed() -> Self {
        Self::simple(WorkloadKind::Unattributed, "unattributed")
    }

    pub fn overflow() -> Self {
        Self::simple(WorkloadKind::Overflow, "overflow")
    }

    fn from_cgroup(identity: &CgroupIdentity) -> Option<Self> {
        Some(match identity {
            CgroupIdentity::Pod {
                uid, container_id, ..
            } => Self {
                kind: WorkloadKind::Pod,
                name: uid.clone(),
                pod_uid: Some(uid.clone()),
                container_id: container_id.clone(),
                kubernetes: None,
            },
            CgroupIdentity::Container { id, .. } => Self {
                kind: WorkloadKind::Container,
                name: id.chars().take(12).collect(),
                pod_uid: None,
                container_id: Some(id.clone()),
                kubernetes: None,
            },
            CgroupIdentity::SystemdUnit { unit } => {
                Self::simple(WorkloadKind::Systemd, unit.clone())
            }
            CgroupIdentity::Path { path } => Self::simple(WorkloadKind::Cgroup, path.clone()),
            CgroupIdentity::Unnamed => return None,
        })
    }
}

#[derive(Clone, Debug)]
struct ProcessInfo {
    /// `Process` (executable name) or `ProcessComm` (fallback).
    kind: WorkloadKind,
    name: String,
    last_seen: Instant,
}

/// Longest process name kept, in characters: file names go up to 255 bytes, and the name is
/// a label value on every series of the workload.
pub const MAX_PROCESS_NAME: usize = 64;

/// A name from the process (its executable's file name, argv[0] or comm) made fit for labels
/// and terminals: control characters (escape sequences, newlines) become `?`, invalid UTF-8
/// its replacement character, at most `MAX_PROCESS_NAME` characters. None when empty.
pub fn sanitize_process_name(raw: &[u8]) -> Option<String> {
    let name: String = String::from_utf8_lossy(raw)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_PROCESS_NAME)
        .collect();
    (!name.trim().is_empty()).then_some(name)
}

/// The file name of a path's last component (`/usr/bin/nginx` → `nginx`).
fn basename(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    trimmed.rsplit(|b| *b == b'/').next().unwrap_or(trimmed)
}

/// A process's executable name: the file name of `/proc/<pid>/exe` (" (deleted)" dropped: the
/// binary was replaced on disk, the name is still the one it ran as), else the file name of
/// argv[0] (`/proc/<pid>/cmdline`, for processes whose exe link cannot be read). Bounded reads:
/// a link is at most PATH_MAX, argv[0] is cut at 4 KiB.
fn executable_name(proc_root: &std::path::Path, tgid: u32) -> Option<String> {
    use std::{io::Read, os::unix::ffi::OsStrExt};
    let dir = proc_root.join(tgid.to_string());
    if let Ok(target) = std::fs::read_link(dir.join("exe")) {
        let bytes = target.as_os_str().as_bytes();
        let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
        if let Some(name) = sanitize_process_name(basename(bytes)) {
            return Some(name);
        }
    }
    let mut argv0 = Vec::new();
    std::fs::File::open(dir.join("cmdline"))
        .ok()?
        .take(4096)
        .read_to_end(&mut argv0)
        .ok()?;
    let argv0 = argv0.split(|b| *b == 0).next().unwrap_or_default();
    sanitize_process_name(basename(argv0))
}

/// The root cgroup's id; ids 0 (unknown) and 1 name no workload.
const ROOT_CGROUP_ID: u64 = 1;
/// Bound on cached cgroup identities; cleared (and rebuilt on demand) past it.
const MAX_CACHED_CGROUPS: usize = 65_536;
/// Extra cgroup walks allowed per second for ids the last walk did not know.
const FORCED_WALKS_PER_SECOND: u32 = 20;
/// Processes not seen for this long are forgotten once they have exited.
const PROCESS_TTL: Duration = Duration::from_secs(600);

pub struct IdentityResolver {
    cgroups: Option<CgroupResolver>,
    /// (start of the current second, forced walks in it).
    forced: (Instant, u32),
    /// Cgroup ids are never reused (64-bit kernfs ids), so a resolved identity stays true.
    by_cgroup: HashMap<u64, Option<CgroupIdentity>>,
    /// Path of each cached cgroup, to tell whether it still exists (`cgroup_gone`).
    paths: HashMap<u64, String>,
    processes: HashMap<u32, ProcessInfo>,
    proc_root: PathBuf,
    kubelet_roots: KubeletRoots,
    /// Pod names from the API server; None on hosts without Kubernetes.
    kubernetes: Option<Arc<Kubernetes>>,
}

impl IdentityResolver {
    pub fn new(cgroup_root: Option<PathBuf>, proc_root: PathBuf) -> Self {
        Self {
            cgroups: cgroup_root.map(|r| CgroupResolver::new(r, Duration::from_secs(1))),
            forced: (Instant::now(), 0),
            by_cgroup: HashMap::new(),
            paths: HashMap::new(),
            processes: HashMap::new(),
            proc_root,
            kubelet_roots: KubeletRoots::default(),
            kubernetes: None,
        }
    }

    /// Names pods through the Kubernetes API's view of this node.
    pub fn with_kubernetes(mut self, kubernetes: Arc<Kubernetes>) -> Self {
        self.kubernetes = Some(kubernetes);
        self
    }

    /// Where pods are recognised (default: `cgroup::DEFAULT_KUBELET_ROOTS`).
    pub fn with_kubelet_roots(mut self, roots: KubeletRoots) -> Self {
        self.kubelet_roots = roots;
        self.by_cgroup.clear();
        self
    }

    /// Whether cgroup `id` is known to be gone: its path no longer holds that cgroup, or the
    /// last walk of the tree did not find it. Unknown (no cgroup2 root) counts as present.
    /// Cgroup ids are never reused, so a gone cgroup never comes back.
    pub fn cgroup_gone(&self, id: u64) -> bool {
        let Some(resolver) = self.cgroups.as_ref() else {
            return false;
        };
        if id <= ROOT_CGROUP_ID {
            return false;
        }
        match self.paths.get(&id) {
            Some(path) => {
                let abs = resolver.root().join(path.trim_start_matches('/'));
                !std::fs::symlink_metadata(abs)
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == id)
            }
            None => !resolver.knows(id),
        }
    }

    /// Drops what is cached about a cgroup that is gone.
    pub fn forget_cgroup(&mut self, id: u64) {
        self.by_cgroup.remove(&id);
        self.paths.remove(&id);
    }

    /// Cached cgroup identities (bounded; for tests and self-checks).
    pub fn cached_cgroups(&self) -> usize {
        self.by_cgroup.len()
    }

    /// A process announced by the kernel (it may be gone from /proc by the time we look):
    /// named by its executable while it is there to read, else by the `comm` announced.
    /// Announcements repeat (at most every 30 s per process), so an exec is seen then.
    pub fn observe_process(&mut self, tgid: u32, comm: String, now: Instant) {
        let info = match executable_name(&self.proc_root, tgid) {
            Some(name) => ProcessInfo {
                kind: WorkloadKind::Process,
                name,
                last_seen: now,
            },
            None => match self.processes.get(&tgid) {
                // Gone before we looked, but named by its executable earlier.
                Some(p) if p.kind == WorkloadKind::Process => ProcessInfo {
                    last_seen: now,
                    ..p.clone()
                },
                _ => ProcessInfo {
                    kind: WorkloadKind::ProcessComm,
                    name: sanitize_process_name(comm.as_bytes())
                        .unwrap_or_else(|| "unknown".into()),
                    last_seen: now,
                },
            },
        };
        self.processes.insert(tgid, info);
    }

    /// The owner key the kernel charges a process's own requests to (the Go uprobes: the
    /// task's cgroup2 id and its tgid), from `/proc/<tgid>/cgroup`. Without a cgroup2 root,
    /// or when the process is gone, the cgroup id is 0: the process names the workload, as
    /// it would for the kernel's key.
    pub fn owner_of_pid(&self, tgid: u32) -> OwnerKey {
        let cgroup_id = self
            .cgroups
            .as_ref()
            .and_then(|r| {
                let text =
                    std::fs::read_to_string(self.proc_root.join(tgid.to_string()).join("cgroup"))
                        .ok()?;
                let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
                let dir = r.root().join(path.trim_start_matches('/'));
                Some(std::os::unix::fs::MetadataExt::ino(
                    &std::fs::metadata(dir).ok()?,
                ))
            })
            .unwrap_or(0);
        OwnerKey {
            cgroup_id,
            tgid,
            _pad: 0,
        }
    }

    pub fn process_alive(&self, tgid: u32) -> bool {
        self.proc_root.join(tgid.to_string()).exists()
    }

    /// The process's name and how it was found: its executable's, else its `comm`.
    fn process_name(&mut self, tgid: u32, now: Instant) -> Option<(WorkloadKind, String)> {
        if let Some(p) = self.processes.get(&tgid) {
            return Some((p.kind, p.name.clone()));
        }
        let (kind, name) = match executable_name(&self.proc_root, tgid) {
            Some(name) => (WorkloadKind::Process, name),
            None => {
                let comm =
                    std::fs::read(self.proc_root.join(tgid.to_string()).join("comm")).ok()?;
                let comm = comm.strip_suffix(b"\n").unwrap_or(&comm);
                (WorkloadKind::ProcessComm, sanitize_process_name(comm)?)
            }
        };
        self.processes.insert(
            tgid,
            ProcessInfo {
                kind,
                name: name.clone(),
                last_seen: now,
            },
        );
        Some((kind, name))
    }

    fn cgroup_identity(&mut self, id: u64, now: Instant) -> Option<CgroupIdentity> {
        if let Some(known) = self.by_cgroup.get(&id) {
            return known.clone();
        }
        let resolver = self.cgroups.as_mut()?;
        let path = match resolver.resolve(id, now) {
            Some(p) => p,
            None => {
                // A cgroup created since the last walk (a pod that just started) would otherwise
                // be named by its process until the next walk. Walk now, within a budget: a
                // stream of ids that never resolve must not turn into a walk per event.
                if now.saturating_duration_since(self.forced.0) >= Duration::from_secs(1) {
                    self.forced = (now, 0);
                }
                if self.forced.1 >= FORCED_WALKS_PER_SECOND {
                    return None;
                }
                self.forced.1 += 1;
                if let Err(e) = resolver.refresh() {
                    tracing::debug!(error = %e, "cgroup walk");
                }
                resolver.resolve(id, now)?
            }
        };
        let identity = cgroup::parse_cgroup_path_with(&path, &self.kubelet_roots);
        if self.by_cgroup.len() >= MAX_CACHED_CGROUPS {
            self.by_cgroup.clear();
            self.paths.clear();
        }
        self.by_cgroup.insert(id, Some(identity.clone()));
        self.paths.insert(id, path);
        Some(identity)
    }

    pub fn workload_of(&mut self, key: &OwnerKey, now: Instant) -> Workload {
        if *key == OwnerKey::OVERFLOW {
            return Workload::overflow();
        }
        if key.cgroup_id > ROOT_CGROUP_ID {
            match self.cgroup_identity(key.cgroup_id, now) {
                Some(identity) => {
                    if let Some(w) = Workload::from_cgroup(&identity) {
                        return self.named(w);
                    }
                }
                // A cgroup that vanished before we could map it: keep it apart rather than
                // merging it into its process's name.
                None if key.tgid == 0 => {
                    return Workload::simple(
                        WorkloadKind::Cgroup,
                        format!("cgroup-id:{}", key.cgroup_id),
                    );
                }
                None => {}
            }
        }
        if key.tgid == 0 {
            return Workload::unattributed();
        }
        let (kind, name) = self
            .process_name(key.tgid, now)
            .unwrap_or((WorkloadKind::ProcessComm, "unknown".into()));
        Workload::simple(kind, name)
    }

    /// A pod workload with its names, when the API server told us about the pod. Looked up
    /// at every call (not cached with the cgroup): names arrive after the cgroup may have.
    fn named(&self, mut w: Workload) -> Workload {
        if let (Some(k), Some(uid)) = (&self.kubernetes, &w.pod_uid)
            && let Some(names) = k.names(uid, w.container_id.as_deref())
        {
            w.name.clone_from(&names.workload);
            w.kubernetes = Some(names);
        }
        w
    }

    /// Forgets exited processes not seen for `PROCESS_TTL`.
    pub fn expire(&mut self, now: Instant) {
        let root = self.proc_root.clone();
        self.processes.retain(|tgid, p| {
            now.saturating_duration_since(p.last_seen) < PROCESS_TTL
                || root.join(tgid.to_string()).exists()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cgroup_id: u64, tgid: u32) -> OwnerKey {
        OwnerKey {
            cgroup_id,
            tgid,
            _pad: 0,
        }
    }

    #[test]
    fn special_keys_and_process_fallback() {
        let dir = std::env::temp_dir().join(format!("ident-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("4242")).expect("mkdir");
        std::fs::write(dir.join("4242/comm"), "nginx\n").expect("write");
        let mut r = IdentityResolver::new(None, dir.clone());
        let now = Instant::now();
        assert_eq!(
            r.workload_of(&OwnerKey::OVERFLOW, now).kind,
            WorkloadKind::Overflow
        );
        assert_eq!(
            r.workload_of(&key(0, 0), now).kind,
            WorkloadKind::Unattributed
        );
        assert_eq!(
            r.workload_of(&key(1, 0), now).kind,
            WorkloadKind::Unattributed
        );
        // Only its comm can be read: named by it, and said so.
        let w = r.workload_of(&key(1, 4242), now);
        assert_eq!(
            (w.kind, w.name.as_str()),
            (WorkloadKind::ProcessComm, "nginx")
        );
        // Announced by the kernel, already gone from /proc.
        r.observe_process(7, "curl".into(), now);
        assert_eq!(r.workload_of(&key(1, 7), now).name, "curl");
        // Unmappable cgroup (no cgroup root configured) with no process.
        let w = r.workload_of(&key(99, 0), now);
        assert_eq!(
            (w.kind, w.name.as_str()),
            (WorkloadKind::Cgroup, "cgroup-id:99")
        );
        r.expire(now + PROCESS_TTL * 2);
        assert!(!r.processes.contains_key(&7), "exited process expired");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn pod_cgroup_resolves_through_the_tree() {
        let root = std::env::temp_dir().join(format!("ident-cg-{}", std::process::id()));
        let leaf = root.join(
            "run1/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7d5a4e_1c3f_4d2e_9a8b_7c6d5e4f3a2b.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
        );
        std::fs::create_dir_all(&leaf).expect("mkdir");
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&leaf).expect("stat"));
        // The same pod slice inside a user's delegation.
        let spoof = root.join(
            "user.slice/user-1000.slice/user@1000.service/app.slice/kubepods-pod0b7d5a4e_1c3f_4d2e_9a8b_7c6d5e4f3a2b.slice",
        );
        std::fs::create_dir_all(&spoof).expect("mkdir");
        let ino_of = |p: &std::path::Path| {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"))
        };
        let spoof_ino = ino_of(&spoof);
        let roots = KubeletRoots::new(&["/run1/kubepods.slice"]).expect("roots");
        let mut r = IdentityResolver::new(Some(root.clone()), PathBuf::from("/proc"))
            .with_kubelet_roots(roots);
        let now = Instant::now();
        let w = r.workload_of(&key(ino, 0), now);
        assert_eq!(w.kind, WorkloadKind::Pod);
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("0b7d5a4e-1c3f-4d2e-9a8b-7c6d5e4f3a2b")
        );
        assert_eq!(w.container_id.as_deref().map(str::len), Some(64));
        let w = r.workload_of(&key(spoof_ino, 0), now);
        assert_eq!(w.kind, WorkloadKind::Cgroup, "{w:?}");
        assert_eq!(w.pod_uid, None);

        // Default roots: /run1/kubepods.slice is not one of them.
        let mut r = IdentityResolver::new(Some(root.clone()), PathBuf::from("/proc"));
        assert_eq!(r.workload_of(&key(ino, 0), now).kind, WorkloadKind::Cgroup);

        // Gone once removed; cached state dropped on request.
        assert!(!r.cgroup_gone(ino));
        assert!(!r.cgroup_gone(1), "the root cgroup never goes");
        std::fs::remove_dir(&spoof).expect("rmdir");
        assert!(
            !r.cgroup_gone(spoof_ino),
            "never resolved: gone only once a walk missed it"
        );
        // A miss walks the tree again.
        let _ = r.workload_of(&key(u64::MAX - 1, 0), now);
        assert!(r.cgroup_gone(spoof_ino));
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert!(r.cgroup_gone(ino));
        r.forget_cgroup(ino);
        assert_eq!(r.cached_cgroups(), 0);
        // No cgroup2 root: nothing can be known gone.
        assert!(!IdentityResolver::new(None, PathBuf::from("/proc")).cgroup_gone(ino));
    }

    /// Catches: workloads named by the process's own `comm` exported with a kind that reads
    /// like the executable's name; the kind must say which name it is.
    #[test]
    fn comm_named_workloads_say_so() {
        for (kind, label) in [
            (WorkloadKind::Process, "process"),
            (WorkloadKind::ProcessComm, "process_comm"),
        ] {
            assert_eq!(kind.as_str(), label);
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::json!(label)
            );
        }
    }

    /// Catches: process workloads named by `comm` (cut at 15 bytes: `payments-reconc`) while
    /// the executable is there to read; a name taken raw from the process (escape sequences in
    /// `collector status`, newlines in labels, unbounded length); " (deleted)" kept.
    #[test]
    fn processes_are_named_by_their_executable_sanitised_and_bounded() {
        let dir = std::env::temp_dir().join(format!("ident-exe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let long = "a".repeat(200);
        // (tgid, exe link target, cmdline, comm)
        type Proc<'a> = (u32, Option<String>, Option<&'a [u8]>, &'a str);
        let procs: [Proc<'_>; 5] = [
            (
                100,
                Some("/opt/app/payments-reconciler-worker".into()),
                Some(b"whatever\0"),
                "payments-reconc",
            ),
            (
                101,
                None,
                Some(b"/usr/bin/evil\x1b[31mname\0--flag\0"),
                "evil",
            ),
            (102, Some(format!("/x/{long}")), None, "aaaaaaaaaaaaaaa"),
            (
                103,
                Some("/srv/replaced-binary (deleted)".into()),
                None,
                "replaced",
            ),
            (104, None, Some(b"\0"), "new\nline"),
        ];
        for (tgid, exe, cmdline, comm) in &procs {
            let p = dir.join(tgid.to_string());
            std::fs::create_dir_all(&p).expect("mkdir");
            if let Some(t) = exe {
                std::os::unix::fs::symlink(t, p.join("exe")).expect("symlink");
            }
            if let Some(c) = cmdline {
                std::fs::write(p.join("cmdline"), c).expect("write");
            }
            std::fs::write(p.join("comm"), format!("{comm}\n")).expect("write");
        }
        let mut r = IdentityResolver::new(None, dir.clone());
        let now = Instant::now();
        let name = |r: &mut IdentityResolver, tgid| {
            let w = r.workload_of(&key(1, tgid), now);
            (w.kind, w.name)
        };
        assert_eq!(
            name(&mut r, 100),
            (WorkloadKind::Process, "payments-reconciler-worker".into())
        );
        assert_eq!(
            name(&mut r, 101),
            (WorkloadKind::Process, "evil?[31mname".into())
        );
        assert_eq!(name(&mut r, 102), (WorkloadKind::Process, "a".repeat(64)));
        assert_eq!(
            name(&mut r, 103),
            (WorkloadKind::Process, "replaced-binary".into())
        );
        // Neither exe nor argv[0]: the comm, sanitised, and labelled as such.
        assert_eq!(
            name(&mut r, 104),
            (WorkloadKind::ProcessComm, "new?line".into())
        );
        // Announced by the kernel: the executable while /proc has it, else the comm.
        let mut r = IdentityResolver::new(None, dir.clone());
        r.observe_process(100, "payments-reconc".into(), now);
        assert_eq!(
            name(&mut r, 100),
            (WorkloadKind::Process, "payments-reconciler-worker".into())
        );
        r.observe_process(999, "short-lived".into(), now);
        assert_eq!(
            name(&mut r, 999),
            (WorkloadKind::ProcessComm, "short-lived".into())
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
        // Announced again once it exited: still the executable's name it had.
        r.observe_process(100, "payments-reconc".into(), now);
        assert_eq!(
            name(&mut r, 100),
            (WorkloadKind::Process, "payments-reconciler-worker".into())
        );
        assert_eq!(sanitize_process_name(b""), None);
        assert_eq!(sanitize_process_name(b"  "), None);
        assert_eq!(
            sanitize_process_name(b"\xffx").as_deref(),
            Some("\u{fffd}x")
        );
    }

    #[test]
    fn a_cgroup_created_after_the_last_walk_is_named_at_once() {
        let root = std::env::temp_dir().join(format!("ident-new-{}", std::process::id()));
        std::fs::create_dir_all(root.join("old")).expect("mkdir");
        let ino = |p: &std::path::Path| {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"))
        };
        let mut r = IdentityResolver::new(Some(root.clone()), PathBuf::from("/nonexistent-proc"));
        let now = Instant::now();
        assert_eq!(
            r.workload_of(&key(ino(&root.join("old")), 0), now).name,
            "/old"
        );
        // Created right after that walk, seen within the resolver's rate limit.
        std::fs::create_dir_all(root.join("new")).expect("mkdir");
        let w = r.workload_of(&key(ino(&root.join("new")), 7), now);
        assert_eq!((w.kind, w.name.as_str()), (WorkloadKind::Cgroup, "/new"));
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}

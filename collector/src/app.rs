//! Wires the pipeline: offsets → load → ladders → reader → aggregator → HTTP; and tears it
//! down in order (stop the readers, final harvest, detach everything by dropping `Ebpf`).

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
};
use collector_common::{
    grpc::{GRPC_COUNTS, GRPC_OFFSETS, GRPC_SAMPLING, GrpcCountKey, GrpcCounts, GrpcOffsets},
    http::HttpCounts,
    maps::{DROPS, EVENTS, HTTP_COUNTS, HTTP_INFLIGHT, HTTP_OFFSETS, HTTP_SAMPLING, TCP_STATS},
    tcp::{OwnerKey, TcpStats},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    aggregate::{Aggregator, KernelMaps, grpc::GrpcAggregate, http::RouteTable, sampling::Sampler},
    api,
    config::{Config, GoUprobes},
    events::{
        self, Notice,
        kernel_log::{self, KernelLogLevel, KernelLogSwitch},
    },
    export::{Metrics, otlp::OtlpExporter, prometheus::SignalLabels},
    identity::{IdentityResolver, cgroup},
    kubernetes::Kubernetes,
    probes::{
        AttachReport, ProbeSet, btf,
        go_grpc::{self, attach::GoGrpcProbes},
        go_http::{
            attach::{GoHttpProbes, LEARN_TICK},
            listing::GoServer,
        },
        http_wire,
        ladder::Programs,
        offsets::Prepared,
        tracefs,
    },
    verdict::Engine,
};

/// The kernel object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

/// Record batches (`events::batch`, up to 64 KiB, ~330 records, each) waiting for the
/// aggregator: about 10,000 records, as many as the 8,192 single events it held before.
const EVENT_CHANNEL: usize = 32;
/// Exec notices waiting for Go discovery; past this the periodic scan catches up.
const EXEC_CHANNEL: usize = 4_096;
/// How often Go discovery rescans /proc (new processes missed, exited ones, detaching).
const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// How long shutdown waits for tasks before giving up on them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

pub struct Running {
    pub addr: SocketAddr,
    pub probes: Arc<Vec<AttachReport>>,
    pub metrics: Arc<Metrics>,
    /// The socket parser: `None` when switched off, `Some(Err(why))` when this kernel refused
    /// it (the verifier's verdict included), so a test or an operator can say why.
    pub http_socket: Option<Result<(), String>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    otlp: Option<OtlpExporter>,
    discovery: Option<std::thread::JoinHandle<()>>,
    /// grpc-go servers instrumented, as of discovery's last scan.
    pub grpc_instrumented: Arc<Mutex<Vec<go_grpc::attach::Instrumented>>>,
    /// grpc-go discovery: its stop flag and thread.
    grpc_discovery: Option<(
        Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
    ebpf: Arc<Mutex<Ebpf>>,
}

/// Starts everything; returns once the probes are attached and the endpoint is listening.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let mut phases = Phases::new();
    raise_memlock();
    // Three independent reads of the running kernel, each tens of ms (more on a busy node):
    // side by side. aya's BTF is its own parse; ours only yields the load-time globals.
    let aya_btf = std::thread::spawn(|| aya::Btf::from_sys_fs().ok());
    let clones = std::thread::spawn(crate::probes::kallsyms::running_kernel_clones);
    let tracefs_root = match tracefs::ensure_tracefs() {
        Ok(root) => Some(root),
        Err(e) => {
            warn!(error = %e, "tracefs unavailable: classic tracepoint rungs disabled");
            None
        }
    };
    let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
    let our_btf = match btf::Btf::from_file(vmlinux) {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(error = %e, "kernel BTF unreadable: offsets unknown, BTF rungs disabled");
            None
        }
    };
    phases.done("btf");
    let clones = clones
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let prepared = Prepared::compute_with(our_btf.as_ref(), tracefs_root.as_deref(), &clones);
    drop(our_btf);
    phases.done("offsets");
    let aya_btf = aya_btf
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    phases.done("aya_btf");

    if OBJECT.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP and carries no eBPF object");
    }
    let mut loader = EbpfLoader::new();
    // The verifier's whole log on a load failure (large): for debugging a node whose kernel
    // refuses a program.
    if std::env::var_os("COLLECTOR_VERIFIER_LOG").is_some() {
        loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
    }
    if let Some(btf) = &aya_btf {
        loader.btf(btf);
    }
    loader.map_max_entries(EVENTS, config.ring_buffer_bytes);
    for (name, value) in &prepared.globals {
        loader.override_global(name, value, true);
    }
    let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
    create_overflow_bucket(&mut ebpf)?;
    let kernel_log = KernelLogSwitch::new(&mut ebpf, config.kernel_log)
        .context("kernel-side diagnostics switch")?;
    // Read whatever the level: an idle reader costs nothing, and a switch-on through the API
    // then loses no line (see `events::kernel_log`).
    let kernel_log_reader = match kernel_log::reader(&mut ebpf) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(error = %e, "kernel-side diagnostics cannot be read");
            None
        }
    };
    if config.kernel_log != KernelLogLevel::Off {
        info!(level = %config.kernel_log, "kernel-side diagnostics on");
    }
    phases.done("object");

    let cgroup_root = config
        .cgroup_root
        .clone()
        .or_else(cgroup::find_cgroup2_mount);
    // The TCP ladders and the socket parser's programs are verified at the same time, each
    // on its own threads (`ProbeSet::attach`): one after the other they were 350 ms of a
    // 490 ms start on idle cores.
    let mut programs: Programs<'_> = ebpf.programs_mut().collect();
    let wire = match (&cgroup_root, config.http.socket) {
        (_, false) => None,
        (None, true) => Some(Err("no cgroup2 mount".to_owned())),
        (Some(_), true) => Some(http_wire::take(&mut programs).map_err(wire_error)),
    };
    let (probes, wire) = std::thread::scope(|s| {
        let wire = wire.map(|w| {
            s.spawn(move || w.and_then(|taken| http_wire::load(taken).map_err(wire_error)))
        });
        let probes = ProbeSet::attach(&mut programs, aya_btf.as_ref(), &prepared, &config.ladder);
        let wire = wire.map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        (probes, wire)
    });
    drop(programs);
    let probes = probes?;
    phases.done("load");
    let metrics = Arc::new(Metrics::new(config.max_workloads));
    let http_socket = match (wire, &cgroup_root) {
        (None, _) => None,
        (Some(Ok(loaded)), Some(root)) => match http_wire::attach(&mut ebpf, root, loaded) {
            Ok(()) => {
                info!(root = %root.display(), "HTTP/1.x parsed from server sockets (cgroup_skb)");
                Some(Ok(()))
            }
            Err(e) => Some(Err(wire_error(e))),
        },
        (Some(Ok(_)), None) => Some(Err("no cgroup2 mount".to_owned())),
        (Some(Err(e)), _) => Some(Err(e)),
    };
    if let Some(Err(error)) = &http_socket {
        warn!(error, "HTTP/1.x socket parser unavailable");
    }
    phases.done("http_socket");
    if let Some(result) = &http_socket {
        let rung = if result.is_ok() {
            "cgroup_skb"
        } else {
            "unavailable"
        };
        metrics
            .collector
            .signal_rung
            .get_or_create(&SignalLabels {
                signal: "http_socket",
                rung,
            })
            .set(1);
    }
    for r in &probes.reports {
        let rung = r.attached.map_or("unavailable", |r| r.as_str());
        metrics
            .collector
            .signal_rung
            .get_or_create(&SignalLabels {
                signal: r.signal.as_str(),
                rung,
            })
            .set(1);
    }
    let probes = Arc::new(probes.reports);
    let otlp = match &config.otlp {
        Some(cfg) => {
            let node = config.kubernetes.as_ref().map(|k| k.node_name.clone());
            Some(
                OtlpExporter::start(cfg, metrics.clone(), node)
                    .context("starting the OTLP exporter")?,
            )
        }
        None => None,
    };

    let ring = RingBuf::try_from(take(&mut ebpf, EVENTS)?)?;
    let maps = KernelMaps {
        tcp: PerCpuHashMap::try_from(take(&mut ebpf, TCP_STATS)?)?,
        http: PerCpuHashMap::try_from(take(&mut ebpf, HTTP_COUNTS)?)?,
        drops: PerCpuArray::try_from(take(&mut ebpf, DROPS)?)?,
        programs: crate::probes::misses::watch(&ebpf, &probes),
    };
    let mut sampling: Array<_, u32> = Array::try_from(take(&mut ebpf, HTTP_SAMPLING)?)?;
    sampling
        .set(0, &config.http.sample_every, 0)
        .context("setting HTTP sampling")?;
    // grpc-go: exact counts, record sampling and per-binary offsets (`probes::go_grpc`).
    let grpc_maps = if config.http.grpc_uprobes {
        let mut counts: PerCpuHashMap<_, GrpcCountKey, GrpcCounts> =
            PerCpuHashMap::try_from(take(&mut ebpf, GRPC_COUNTS)?)?;
        // The kernel can only update an existing overflow key when the map is full.
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| e)
            .context("counting possible CPUs")?
            .get() as usize;
        counts
            .insert(
                &GrpcCountKey::OVERFLOW,
                PerCpuValues::try_from(vec![GrpcCounts::default(); cpus])?,
                0,
            )
            .context("creating the gRPC overflow bucket")?;
        let mut sampling: Array<_, u32> = Array::try_from(take(&mut ebpf, GRPC_SAMPLING)?)?;
        sampling
            .set(0, &config.http.sample_every, 0)
            .context("setting gRPC sampling")?;
        let offsets: Array<_, GrpcOffsets> = Array::try_from(take(&mut ebpf, GRPC_OFFSETS)?)?;
        Some((counts, sampling, offsets))
    } else {
        None
    };
    let go_offsets = Array::try_from(take(&mut ebpf, HTTP_OFFSETS)?)?;
    let go_inflight = aya::maps::HashMap::try_from(take(&mut ebpf, HTTP_INFLIGHT)?)?;
    let ebpf = Arc::new(Mutex::new(ebpf));
    let go_http = if config.http.uprobes != GoUprobes::Off {
        match GoHttpProbes::new(ebpf.clone(), go_offsets, go_inflight, metrics.clone()) {
            Ok(mut p) => {
                if !config.http.router_templates {
                    p.without_router_templates();
                }
                if config.http.uprobes == GoUprobes::Auto {
                    p.auto();
                }
                Some(p)
            }
            Err(e) => {
                warn!(error = %e, "Go net/http instrumentation unavailable");
                None
            }
        }
    } else {
        None
    };
    let grpc_state = Arc::new(Mutex::new(Vec::new()));
    // Exec notices for gRPC discovery (forwarded from the reader's, see `fan_out_exec`).
    let (grpc_exec_tx, grpc_exec_rx) = std::sync::mpsc::sync_channel(EXEC_CHANNEL);
    let mut grpc_exec_rx = Some(grpc_exec_rx);
    let (grpc_aggregate, grpc_discovery) = match grpc_maps {
        Some((counts, sampling, offsets)) => {
            match GoGrpcProbes::new(ebpf.clone(), offsets, metrics.clone()) {
                Ok(p) => {
                    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let thread = go_grpc::attach::spawn(
                        p,
                        grpc_state.clone(),
                        grpc_exec_rx.take(),
                        stop.clone(),
                    );
                    let sampler = Sampler::new(
                        Box::new(sampling),
                        config.http.event_budget,
                        config.http.sample_every,
                        std::time::Instant::now(),
                    );
                    (
                        Some(GrpcAggregate::new(
                            Box::new(counts),
                            config.http.max_routes,
                            Some(sampler),
                            config.http.grpc_error_codes.clone(),
                        )),
                        Some((stop, thread)),
                    )
                }
                Err(e) => {
                    warn!(error = %e, "grpc-go instrumentation unavailable");
                    (None, None)
                }
            }
        }
        None => (None, None),
    };
    phases.done("go_uprobes");
    match &cgroup_root {
        Some(root) => info!(root = %root.display(), "cgroup2 hierarchy"),
        None => warn!("no cgroup2 mount: workloads are named by process only"),
    }
    let kubelet_roots =
        crate::identity::kubelet_roots(&config.kubelet_cgroup_roots, cgroup_root.as_deref())
            .context("kubelet cgroup roots")?;
    let mut identity =
        IdentityResolver::new(cgroup_root, "/proc".into()).with_kubelet_roots(kubelet_roots);
    // Pod names from the API server: a bad kubeconfig fails the start, an unreachable API
    // server does not (the watches retry; pods are exported by UID meanwhile).
    let kubernetes = match &config.kubernetes {
        Some(k) => {
            let k = Kubernetes::connect(k, metrics.collector.kubernetes.clone())
                .await
                .context("Kubernetes")?;
            identity = identity.with_kubernetes(k.clone());
            Some(k)
        }
        None => None,
    };

    // A std listener: the API is served on a thread of its own (`Server::spawn_thread`).
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(EVENT_CHANNEL);
    let (exec_tx, exec_rx) = std::sync::mpsc::sync_channel(EXEC_CHANNEL);
    let grpc_exec_tx = grpc_discovery.as_ref().map(|_| grpc_exec_tx);
    let wants_execs = grpc_exec_tx.is_some();
    let exec_rx = fan_out_exec(exec_rx, grpc_exec_tx);
    let go_state = Arc::new(Mutex::new(Vec::new()));
    let discovery = go_http.map(|probes| spawn_discovery(probes, exec_rx, go_state.clone()));
    let mut tasks = Vec::new();
    if let Some(k) = &kubernetes {
        tasks.extend(k.spawn(shutdown_rx.clone()));
    }
    if let Some(reader) = kernel_log_reader {
        tasks.push((
            "kernel-log",
            tokio::spawn(kernel_log::run(reader, shutdown_rx.clone())),
        ));
    }
    let reader_metrics = metrics.clone();
    let reader_shutdown = shutdown_rx.clone();
    // Under `auto`, the aggregator tells Go discovery which processes the socket parser counts
    // requests of: their route templates are learned in short windows.
    let served_tx =
        (discovery.is_some() && config.http.uprobes == GoUprobes::Auto).then(|| exec_tx.clone());
    let exec_tx = (discovery.is_some() || wants_execs).then_some(exec_tx);
    tasks.push((
        "reader",
        tokio::spawn(async move {
            if let Err(e) =
                events::reader::run(ring, tx, exec_tx, reader_metrics, reader_shutdown).await
            {
                warn!(error = %e, "ring-buffer reader stopped");
            }
        }),
    ));
    let routes = RouteTable::new(&config.http.probe_paths, config.http.max_routes);
    let engine = Engine::new(
        config.verdict.clone(),
        config.http.sample_every,
        Some(metrics.verdict.clone()),
    );
    let sampler = Sampler::new(
        Box::new(sampling),
        config.http.event_budget,
        config.http.sample_every,
        std::time::Instant::now(),
    );
    let aggregator = Aggregator::new(maps, metrics.clone(), identity, routes)
        .with_verdicts(engine)
        .with_sampler(sampler)
        .with_go_http(go_state.clone());
    let aggregator = match served_tx {
        Some(tx) => aggregator.with_served_notices(tx),
        None => aggregator,
    };
    let aggregator = match grpc_aggregate {
        Some(g) => aggregator.with_grpc(g),
        None => aggregator,
    };
    let verdicts = aggregator.verdicts();
    // Readiness gates of opted-in pods, and this node's Lease for the watchdog.
    if let Some(k) = &kubernetes {
        tasks.extend(k.spawn_readiness(
            config.readiness.clone(),
            verdicts.clone(),
            shutdown_rx.clone(),
        ));
    }
    if let Some(otlp) = &otlp {
        otlp.export_verdicts(verdicts.clone());
    }
    tasks.push((
        "aggregator",
        tokio::spawn(aggregator.run(rx, config.harvest_interval)),
    ));
    // `--api-auth-kubernetes` reviews tokens with the collector's own credentials.
    let kube_client = kubernetes.as_ref().map(|k| k.client());
    let router = api::router(api::ApiState {
        metrics: metrics.clone(),
        probes: probes.clone(),
        go_http: go_state,
        verdicts,
        readiness_fail_on: Arc::new(config.verdict.readiness_fail_on.clone()),
        kubernetes,
    })
    .merge(api::debug::router(kernel_log));
    let server = api::server::Server::prepare_with_kubernetes(
        router,
        &config.api,
        addr,
        &metrics,
        kube_client,
    )
    .context("preparing the API server")?;
    let mut http_shutdown = shutdown_rx;
    let stop = async move {
        let _ = http_shutdown.changed().await;
    };
    let served = server
        .spawn_thread(listener, stop)
        .context("starting the API thread")?;
    tasks.push((
        "http",
        tokio::spawn(async move {
            match served.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "HTTP server stopped"),
                Err(_) => warn!("the API thread ended without a result"),
            }
        }),
    ));
    phases.done("rest");
    info!(%addr, startup = %phases, "collector running");
    Ok(Running {
        addr,
        probes,
        metrics,
        http_socket,
        shutdown,
        tasks,
        otlp,
        discovery,
        grpc_instrumented: grpc_state,
        grpc_discovery,
        ebpf,
    })
}

/// The reader's exec notices, for both discoveries: with gRPC discovery running, a thread
/// forwards each notice to it and to the returned receiver (the net/http discovery's). A full
/// or closed channel drops the notice: each discovery's /proc scan finds what it missed. The
/// forwarder ends with the reader, closing both channels (discoveries then stop).
fn fan_out_exec(
    exec_rx: std::sync::mpsc::Receiver<Notice>,
    grpc: Option<std::sync::mpsc::SyncSender<u32>>,
) -> std::sync::mpsc::Receiver<Notice> {
    let Some(grpc) = grpc else {
        return exec_rx;
    };
    let (http_tx, http_rx) = std::sync::mpsc::sync_channel(EXEC_CHANNEL);
    std::thread::spawn(move || {
        for notice in exec_rx {
            // gRPC discovery needs exec notices only (it probes grpc-go's own transport).
            if let Notice::Exec(pid) = notice {
                let _ = grpc.try_send(pid);
            }
            let _ = http_tx.try_send(notice);
        }
    });
    http_rx
}

/// Go discovery runs on its own thread: ELF analysis and uprobe attachment block.
fn spawn_discovery(
    mut probes: GoHttpProbes,
    exec_rx: std::sync::mpsc::Receiver<Notice>,
    state: Arc<Mutex<Vec<GoServer>>>,
) -> std::thread::JoinHandle<()> {
    use std::sync::mpsc::RecvTimeoutError;
    std::thread::spawn(move || {
        let publish =
            |p: &GoHttpProbes| *state.lock().unwrap_or_else(|e| e.into_inner()) = p.servers();
        probes.rescan(std::time::Instant::now());
        publish(&probes);
        let mut last_scan = std::time::Instant::now();
        loop {
            // An open route-learning window may spend its budget in milliseconds.
            let wait = if probes.learning() {
                LEARN_TICK
            } else {
                RESCAN_EVERY
            };
            match exec_rx.recv_timeout(wait) {
                Ok(Notice::Exec(pid)) => probes.observe(pid, std::time::Instant::now()),
                Ok(Notice::Unseen(server)) => {
                    probes.on_unseen(server, std::time::Instant::now());
                }
                Ok(Notice::Served(owner)) => probes.on_served(owner, std::time::Instant::now()),
                Err(RecvTimeoutError::Timeout) => {}
                // The reader stopped: shutting down.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_scan.elapsed() >= RESCAN_EVERY {
                probes.rescan(std::time::Instant::now());
                last_scan = std::time::Instant::now();
            } else if probes.learning() {
                probes.tick_learning(std::time::Instant::now());
            }
            publish(&probes);
        }
        probes.detach_all();
        publish(&probes);
    })
}

impl Running {
    /// The loaded eBPF object, for tests and tools that inspect kernel-side state (the maps
    /// the aggregator does not own). Hold the lock briefly: Go discovery attaches through it.
    pub fn ebpf(&self) -> Arc<Mutex<Ebpf>> {
        self.ebpf.clone()
    }

    /// Stops readers and the aggregator (which harvests one last time), then detaches and
    /// unloads every program and map by dropping the `Ebpf`.
    pub async fn shutdown(self) {
        let Running {
            shutdown,
            tasks,
            otlp,
            discovery,
            grpc_discovery,
            ebpf,
            ..
        } = self;
        let _ = shutdown.send(true);
        for (name, task) in tasks {
            if tokio::time::timeout(DRAIN_GRACE, task).await.is_err() {
                warn!(task = name, "did not stop within the grace period");
            }
        }
        // After the final harvest: push what it added.
        if let Some(otlp) = otlp {
            let flush = tokio::task::spawn_blocking(move || otlp.shutdown());
            if tokio::time::timeout(DRAIN_GRACE, flush).await.is_err() {
                warn!("final OTLP export did not finish within the grace period");
            }
        }
        // The reader is gone, so discovery sees its channel closed, detaches and ends.
        if let Some(d) = discovery {
            let joined = tokio::task::spawn_blocking(move || d.join());
            if tokio::time::timeout(DRAIN_GRACE, joined).await.is_err() {
                warn!("Go discovery did not stop within the grace period");
            }
        }
        if let Some((stop, thread)) = grpc_discovery {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(DRAIN_GRACE, joined).await.is_err() {
                warn!("grpc-go discovery did not stop within the grace period");
            }
        }
        http_wire::detach(&mut ebpf.lock().unwrap_or_else(|e| e.into_inner()));
        drop(ebpf);
        info!("detached; nothing of ours is left loaded");
    }
}

/// A socket parser error as reported (`collector_signal_rung`, the log): with its causes.
fn wire_error(e: http_wire::WireError) -> String {
    format!("{:#}", anyhow::Error::from(e))
}

/// How long each start-up phase took, for the "collector running" line (what a slow
/// restart spent its time on).
struct Phases {
    started: std::time::Instant,
    last: std::time::Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Self {
        let now = std::time::Instant::now();
        Self {
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn done(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ms",
            self.last.duration_since(self.started).as_millis()
        )?;
        for (phase, took) in &self.done {
            write!(f, " {phase}={}", took.as_millis())?;
        }
        Ok(())
    }
}

/// The kernel charges `OwnerKey::OVERFLOW` when `TCP_STATS` is full; it can only update an
/// existing entry then, so create it now.
fn create_overflow_bucket(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting possible CPUs")?
        .get() as usize;
    let map = ebpf.map_mut(TCP_STATS).context("TCP_STATS map missing")?;
    let mut stats: PerCpuHashMap<_, OwnerKey, TcpStats> = PerCpuHashMap::try_from(map)?;
    let zeros = PerCpuValues::try_from(vec![TcpStats::default(); cpus])?;
    stats
        .insert(&OwnerKey::OVERFLOW, zeros, 0)
        .context("creating the TCP overflow bucket")?;
    let map = ebpf
        .map_mut(HTTP_COUNTS)
        .context("HTTP_COUNTS map missing")?;
    let mut http: PerCpuHashMap<_, OwnerKey, HttpCounts> = PerCpuHashMap::try_from(map)?;
    let zeros = PerCpuValues::try_from(vec![HttpCounts::default(); cpus])?;
    http.insert(&OwnerKey::OVERFLOW, zeros, 0)
        .context("creating the HTTP overflow bucket")?;
    Ok(())
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("{name} map missing from the object"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memcg. Best effort.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid pointer to an initialised struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK (fine on ≥ 5.11)");
    }
}

//! Wires the pipeline: offsets → load → ladders → reader → aggregator → HTTP; and tears it
//! down in order (stop the readers, final harvest, detach everything by dropping `Ebpf`).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
};
use collector_common::{
    maps::{DROPS, EVENTS, TCP_STATS},
    tcp::{OwnerKey, TcpStats},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    aggregate::{Aggregator, KernelMaps},
    api,
    config::Config,
    events,
    export::{Metrics, otlp::OtlpExporter, prometheus::SignalLabels},
    identity::{IdentityResolver, cgroup},
    probes::{AttachReport, ProbeSet, btf, offsets::Prepared, tracefs},
};

/// The kernel object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collector"));

const EVENT_CHANNEL: usize = 8_192;
/// How long shutdown waits for tasks before giving up on them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

pub struct Running {
    pub addr: SocketAddr,
    pub probes: Arc<Vec<AttachReport>>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    otlp: Option<OtlpExporter>,
    ebpf: Ebpf,
}

/// Starts everything; returns once the probes are attached and the endpoint is listening.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    raise_memlock();
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
    let prepared = Prepared::compute(our_btf.as_ref(), tracefs_root.as_deref());
    drop(our_btf);
    let aya_btf = aya::Btf::from_sys_fs().ok();

    if OBJECT.is_empty() {
        bail!("this binary was built with AYA_BUILD_SKIP and carries no eBPF object");
    }
    let mut loader = EbpfLoader::new();
    if let Some(btf) = &aya_btf {
        loader.btf(btf);
    }
    loader.map_max_entries(EVENTS, config.ring_buffer_bytes);
    for (name, value) in &prepared.globals {
        loader.override_global(name, value, true);
    }
    let mut ebpf = loader.load(OBJECT).context("loading the eBPF object")?;
    create_overflow_bucket(&mut ebpf)?;

    let probes = ProbeSet::attach(&mut ebpf, aya_btf.as_ref(), &prepared, &config.ladder)?;
    let metrics = Arc::new(Metrics::new(config.max_workloads));
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
            Some(OtlpExporter::start(cfg, metrics.clone()).context("starting the OTLP exporter")?)
        }
        None => None,
    };

    let ring = RingBuf::try_from(ebpf.take_map(EVENTS).context("EVENTS map missing")?)?;
    let maps = KernelMaps {
        tcp: PerCpuHashMap::try_from(ebpf.take_map(TCP_STATS).context("TCP_STATS map missing")?)?,
        drops: PerCpuArray::try_from(ebpf.take_map(DROPS).context("DROPS map missing")?)?,
    };
    let cgroup_root = config
        .cgroup_root
        .clone()
        .or_else(cgroup::find_cgroup2_mount);
    match &cgroup_root {
        Some(root) => info!(root = %root.display(), "cgroup2 hierarchy"),
        None => warn!("no cgroup2 mount: workloads are named by process only"),
    }
    let identity = IdentityResolver::new(cgroup_root, "/proc".into());

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(EVENT_CHANNEL);
    let mut tasks = Vec::new();
    let reader_metrics = metrics.clone();
    let reader_shutdown = shutdown_rx.clone();
    tasks.push((
        "reader",
        tokio::spawn(async move {
            if let Err(e) = events::reader::run(ring, tx, reader_metrics, reader_shutdown).await {
                warn!(error = %e, "ring-buffer reader stopped");
            }
        }),
    ));
    let aggregator = Aggregator::new(maps, metrics.clone(), identity);
    tasks.push((
        "aggregator",
        tokio::spawn(aggregator.run(rx, config.harvest_interval)),
    ));
    let router = api::router(api::ApiState {
        metrics: metrics.clone(),
        probes: probes.clone(),
    });
    let mut http_shutdown = shutdown_rx;
    tasks.push((
        "http",
        tokio::spawn(async move {
            let stop = async move {
                let _ = http_shutdown.changed().await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                warn!(error = %e, "HTTP server stopped");
            }
        }),
    ));
    info!(%addr, "collector running");
    Ok(Running {
        addr,
        probes,
        metrics,
        shutdown,
        tasks,
        otlp,
        ebpf,
    })
}

impl Running {
    /// Stops readers and the aggregator (which harvests one last time), then detaches and
    /// unloads every program and map by dropping the `Ebpf`.
    pub async fn shutdown(self) {
        let Running {
            shutdown,
            tasks,
            otlp,
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
        drop(ebpf);
        info!("detached; nothing of ours is left loaded");
    }
}

/// The kernel charges `OwnerKey::OVERFLOW` when `TCP_STATS` is full; it can only update an
/// existing entry then, so create it now.
fn create_overflow_bucket(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let map = ebpf.map_mut(TCP_STATS).context("TCP_STATS map missing")?;
    let mut stats: PerCpuHashMap<_, OwnerKey, TcpStats> = PerCpuHashMap::try_from(map)?;
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting possible CPUs")?;
    let zeros = PerCpuValues::try_from(vec![TcpStats::default(); cpus.get() as usize])?;
    stats
        .insert(&OwnerKey::OVERFLOW, zeros, 0)
        .context("creating the overflow bucket")?;
    Ok(())
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

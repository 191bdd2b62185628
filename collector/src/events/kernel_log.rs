//! Kernel-side diagnostics (aya-log) in the collector's own log, and the switch that turns them
//! on and off while the collector runs.
//!
//! The kernel side (`collector-ebpf/src/klog.rs`) writes a line only when the one-element
//! array `KERNEL_LOG` holds a level at least the line's; 0 (the default) is off, and then no
//! log code runs in the kernel. Userspace sets the level at start (`--kernel-log`) and on
//! `PUT /v1/debug/kernel-log?level=…` ([`KernelLogSwitch`]).
//!
//! The reader ([`run`]) is started whatever the level: the `AYA_LOGS` ring buffer exists in
//! the object anyway (aya-log declares it; 128 KiB), and an `AsyncFd` on an empty ring costs
//! nothing until a line arrives. Starting it lazily on the first switch-on would save one task
//! and one fd, and lose the lines written between the switch and the reader's start. The
//! logger must also outlive every program load: aya takes the map out of the object, and the
//! programs loaded later (the ladder's rungs, Go uprobes) refer to its fd.
//!
//! Lines become tracing events with target `collector::kernel::<module>` (the kernel module
//! that wrote them: `collector::kernel::tcp`), so the usual filter syntax selects them.

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, sync::watch};
use tracing::warn;

/// Map name shared with the kernel side (`klog::KERNEL_LOG`).
pub const KERNEL_LOG_MAP: &str = "KERNEL_LOG";

/// Tracing target prefix of kernel lines.
pub const TARGET_PREFIX: &str = "collector::kernel";

/// The most verbose kernel lines wanted. The numbers are aya-log's levels; 0 is off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelLogLevel {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl KernelLogLevel {
    pub const ALL: [KernelLogLevel; 6] = [
        KernelLogLevel::Off,
        KernelLogLevel::Error,
        KernelLogLevel::Warn,
        KernelLogLevel::Info,
        KernelLogLevel::Debug,
        KernelLogLevel::Trace,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            KernelLogLevel::Off => "off",
            KernelLogLevel::Error => "error",
            KernelLogLevel::Warn => "warn",
            KernelLogLevel::Info => "info",
            KernelLogLevel::Debug => "debug",
            KernelLogLevel::Trace => "trace",
        }
    }

    /// The value the kernel compares with (aya-log's `Level` as a number).
    pub const fn raw(self) -> u32 {
        self as u32
    }

    fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.raw() == raw)
    }
}

impl fmt::Display for KernelLogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kernel log level {0:?} (expected off, error, warn, info, debug or trace)")]
pub struct UnknownLevel(pub String);

impl FromStr for KernelLogLevel {
    type Err = UnknownLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLevel(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelLogError {
    #[error("{KERNEL_LOG_MAP} map missing from the object")]
    MapMissing,
    #[error("{KERNEL_LOG_MAP} map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("aya-log reader: {0}")]
    Logger(#[from] aya_log::Error),
    #[error("registering the aya-log ring buffer with the runtime: {0}")]
    Register(#[source] std::io::Error),
}

/// The kernel's log level, readable and settable while programs run. Cloned into the API.
#[derive(Clone)]
pub struct KernelLogSwitch {
    map: Arc<Mutex<Array<MapData, u32>>>,
}

impl KernelLogSwitch {
    /// Takes `KERNEL_LOG` out of the object and sets it to `level`.
    pub fn new(ebpf: &mut Ebpf, level: KernelLogLevel) -> Result<Self, KernelLogError> {
        let map = ebpf
            .take_map(KERNEL_LOG_MAP)
            .ok_or(KernelLogError::MapMissing)?;
        let switch = Self {
            map: Arc::new(Mutex::new(Array::try_from(map)?)),
        };
        switch.set(level)?;
        Ok(switch)
    }

    /// Sets the level; returns the one it replaces. Takes effect at the next log call of every
    /// program (one map write, seen by all CPUs).
    pub fn set(&self, level: KernelLogLevel) -> Result<KernelLogLevel, KernelLogError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let before = map.get(&0, 0)?;
        map.set(0, &level.raw(), 0)?;
        Ok(KernelLogLevel::from_raw(before).unwrap_or(KernelLogLevel::Trace))
    }

    /// The level the kernel sees now.
    pub fn get(&self) -> Result<KernelLogLevel, KernelLogError> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let raw = map.get(&0, 0)?;
        // Only this switch writes it; anything above trace logs everything.
        Ok(KernelLogLevel::from_raw(raw).unwrap_or(KernelLogLevel::Trace))
    }
}

/// Hands aya-log records to tracing, under `collector::kernel::<module>`.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // The kernel already filtered by its level; the subscriber's filter decides the rest.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // The kernel crate is named `collector` too: `collector::tcp` → `collector::kernel::tcp`.
        let module = record.target();
        let module = module.strip_prefix("collector::").unwrap_or(module);
        let target = format!("{TARGET_PREFIX}::{module}");
        let record = log::Record::builder()
            .args(*record.args())
            .level(record.level())
            .target(&target)
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        // Always Ok (tracing-log kept the io::Result for compatibility).
        let _ = tracing_log::format_trace(&record);
    }

    fn flush(&self) {}
}

/// The aya-log reader, over the `AYA_LOGS` ring buffer.
pub struct KernelLogReader(EbpfLogger<ToTracing>);

impl std::os::fd::AsRawFd for KernelLogReader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Takes `AYA_LOGS` out of the object. Keep the result (or the task [`run`] makes of it) alive
/// for as long as programs may be loaded.
pub fn reader(ebpf: &mut Ebpf) -> Result<AsyncFd<KernelLogReader>, KernelLogError> {
    let logger = EbpfLogger::init_with_logger(ebpf, ToTracing)?;
    // SAFETY: the logger owns its ring buffer's fd; flushing neither closes nor replaces it,
    // and the AsyncFd owns the logger until it is dropped.
    unsafe {
        AsyncFd::register_with_interest(KernelLogReader(logger), tokio::io::Interest::READABLE)
    }
    .map_err(|e| {
        let (logger, error) = e.into_parts();
        // Programs loaded later refer to the ring's fd: it must stay open even unread.
        std::mem::forget(logger);
        KernelLogError::Register(error)
    })
}

/// Forwards kernel lines until shutdown. The ring's fd is edge-triggered: each wake-up drains it.
pub async fn run(mut fd: AsyncFd<KernelLogReader>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            guard = fd.readable_mut() => match guard {
                Ok(mut guard) => {
                    guard.get_inner_mut().0.flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!(error = %e, "kernel log reader stopped");
                    return;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    // Lines written before the programs were detached.
    fd.get_mut().0.flush();
}

/// The log filter the collector installs: the operator's, plus kernel lines at every level
/// unless the operator's filter names them. The kernel filters by `--kernel-log` already, and
/// a switch-on through the API must not need a restart to widen the filter.
pub fn log_filter(filter: &str) -> String {
    if filter.contains(TARGET_PREFIX) {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        format!("{TARGET_PREFIX}=trace")
    } else {
        format!("{filter},{TARGET_PREFIX}=trace")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_print_as_aya_numbers() {
        for (i, l) in KernelLogLevel::ALL.into_iter().enumerate() {
            assert_eq!(l.raw(), i as u32);
            assert_eq!(l.as_str().parse::<KernelLogLevel>(), Ok(l));
            assert_eq!(KernelLogLevel::from_raw(i as u32), Some(l));
        }
        assert_eq!("DEBUG".parse::<KernelLogLevel>(), Ok(KernelLogLevel::Debug));
        assert_eq!(
            "verbose".parse::<KernelLogLevel>(),
            Err(UnknownLevel("verbose".into()))
        );
        assert_eq!(KernelLogLevel::default(), KernelLogLevel::Off);
    }

    #[test]
    fn kernel_lines_pass_the_operators_filter_unless_it_names_them() {
        assert_eq!(log_filter("info"), "info,collector::kernel=trace");
        assert_eq!(log_filter(""), "collector::kernel=trace");
        assert_eq!(
            log_filter("info,collector::kernel=off"),
            "info,collector::kernel=off"
        );
    }
}

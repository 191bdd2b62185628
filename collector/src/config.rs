//! Configuration: command line over an optional TOML file over defaults, validated into
//! `Config`. Nothing here reads the process environment or exits; errors are typed.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Parser;
use serde::Deserialize;

use crate::probes::{Rung, Signal, ladder::LadderPlan};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9464";
pub const DEFAULT_HARVEST_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_WORKLOADS: usize = 2_000;
pub const DEFAULT_RING_BUFFER_BYTES: u32 = collector_common::maps::EVENTS_BYTES;

/// eBPF health signal collector: watches real traffic from the kernel and exports per-workload
/// TCP signals.
///
/// Every option can also be set in the TOML file given with --config (same names, with
/// underscores); the command line wins over the file.
#[derive(Debug, Default, Parser)]
#[command(name = "collector", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the HTTP endpoint serving /metrics, /healthz, /readyz and /v1/probes.
    /// [default: 0.0.0.0:9464]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// How often kernel counters are harvested into metrics, e.g. "1s", "500ms" (100ms–60s).
    /// [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub harvest_interval: Option<String>,

    /// Hook ladder of one signal, in the order to try, e.g. "tcp_send=tp_btf,tracepoint".
    /// A single rung forces that rung. Repeatable. Signals: tcp_send, tcp_retransmit,
    /// tcp_retransmit_synack, tcp_state, tcp_reset_sent, tcp_reset_received, tcp_destroy. Rungs: kprobe, fentry,
    /// tp_btf, raw_tp, tracepoint. [default: kprobe,fentry,tp_btf,raw_tp,tracepoint for
    /// tcp_send, tcp_retransmit and tcp_retransmit_synack; tp_btf,raw_tp,tracepoint for the others]
    #[arg(long = "ladder", value_name = "SIGNAL=RUNG[,RUNG...]")]
    pub ladder: Vec<String>,

    /// A signal that must attach or the collector refuses to start ("all" for every signal).
    /// Repeatable. [default: none: unavailable signals are logged and exported as
    /// collector_signal_rung{rung="unavailable"}]
    #[arg(long = "require", value_name = "SIGNAL|all")]
    pub require: Vec<String>,

    /// cgroup2 mount used to map cgroup ids to paths. [default: found in /proc/self/mountinfo]
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,

    /// Ring buffer size in bytes (a power of two, at least 4096). [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub ring_buffer_bytes: Option<u32>,

    /// Maximum workloads with their own series; further ones are exported as
    /// workload_kind="overflow". [default: 2000]
    #[arg(long, value_name = "N")]
    pub max_workloads: Option<usize>,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "collector=debug". [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

/// The file form; every field optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub harvest_interval: Option<String>,
    pub ladder: Option<BTreeMap<String, Vec<String>>>,
    pub require: Option<Vec<String>>,
    pub cgroup_root: Option<PathBuf>,
    pub ring_buffer_bytes: Option<u32>,
    pub max_workloads: Option<usize>,
    pub log: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub harvest_interval: Duration,
    pub ladder: LadderPlan,
    pub cgroup_root: Option<PathBuf>,
    pub ring_buffer_bytes: u32,
    pub max_workloads: usize,
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 9464))),
            harvest_interval: DEFAULT_HARVEST_INTERVAL,
            ladder: LadderPlan::default(),
            cgroup_root: None,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            max_workloads: DEFAULT_MAX_WORKLOADS,
            log: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
}

fn invalid(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        message: message.into(),
    }
}

/// Parses "500ms", "1s", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s:?} has no unit (use ms, s or m)"))?;
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

fn parse_ladder_arg(arg: &str) -> Result<(String, Vec<String>), ConfigError> {
    let (signal, rungs) = arg
        .split_once('=')
        .ok_or_else(|| invalid("--ladder", format!("{arg:?} is not SIGNAL=RUNG[,RUNG...]")))?;
    Ok((
        signal.trim().to_string(),
        rungs.split(',').map(|r| r.trim().to_string()).collect(),
    ))
}

impl Config {
    /// Reads the file named by `--config` (if any) and merges.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => Self::read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Command line over file over defaults, validated.
    pub fn merge(cli: &Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let d = Config::default();
        let listen = match cli.listen.clone().or(file.listen) {
            Some(s) => s
                .parse()
                .map_err(|e| invalid("listen", format!("{s:?}: {e}")))?,
            None => d.listen,
        };
        let harvest_interval = match cli.harvest_interval.clone().or(file.harvest_interval) {
            Some(s) => parse_duration(&s).map_err(|e| invalid("harvest_interval", e))?,
            None => d.harvest_interval,
        };
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&harvest_interval) {
            return Err(invalid("harvest_interval", "must be between 100ms and 60s"));
        }

        let mut ladder = d.ladder;
        let mut entries: Vec<(String, Vec<String>)> =
            file.ladder.unwrap_or_default().into_iter().collect();
        for arg in &cli.ladder {
            entries.push(parse_ladder_arg(arg)?);
        }
        for (signal, rungs) in entries {
            let signal: Signal = signal.parse().map_err(|e| invalid("ladder", e))?;
            let mut order = Vec::new();
            for r in rungs {
                let rung: Rung = r.parse().map_err(|e| invalid("ladder", e))?;
                if !signal.default_ladder().contains(&rung) {
                    return Err(invalid("ladder", format!("{signal} has no {rung} rung")));
                }
                if order.contains(&rung) {
                    return Err(invalid("ladder", format!("{signal}: {rung} listed twice")));
                }
                order.push(rung);
            }
            if order.is_empty() {
                return Err(invalid("ladder", format!("{signal}: no rungs")));
            }
            ladder.order.insert(signal, order);
        }
        let require: Vec<String> = if cli.require.is_empty() {
            file.require.unwrap_or_default()
        } else {
            cli.require.clone()
        };
        for r in require {
            if r == "all" {
                ladder.required = Signal::ALL.to_vec();
            } else {
                let s: Signal = r.parse().map_err(|e| invalid("require", e))?;
                if !ladder.required.contains(&s) {
                    ladder.required.push(s);
                }
            }
        }

        let ring_buffer_bytes = cli
            .ring_buffer_bytes
            .or(file.ring_buffer_bytes)
            .unwrap_or(d.ring_buffer_bytes);
        if ring_buffer_bytes < 4096 || !ring_buffer_bytes.is_power_of_two() {
            return Err(invalid(
                "ring_buffer_bytes",
                format!("{ring_buffer_bytes} is not a power of two ≥ 4096"),
            ));
        }
        let max_workloads = cli
            .max_workloads
            .or(file.max_workloads)
            .unwrap_or(d.max_workloads);
        if max_workloads == 0 {
            return Err(invalid("max_workloads", "must be at least 1"));
        }
        let cgroup_root = cli.cgroup_root.clone().or(file.cgroup_root);
        if let Some(root) = &cgroup_root
            && !root.is_dir()
        {
            return Err(invalid(
                "cgroup_root",
                format!("{} is not a directory", root.display()),
            ));
        }
        let log = cli.log.clone().or(file.log).unwrap_or(d.log);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(invalid("log", format!("{log:?}: {e}")));
        }
        Ok(Config {
            listen,
            harvest_interval,
            ladder,
            cgroup_root,
            ring_buffer_bytes,
            max_workloads,
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("collector").chain(args.iter().copied()))
            .expect("cli parses")
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("toml parses")
    }

    #[test]
    fn defaults() {
        let c = Config::merge(&cli(&[]), FileConfig::default()).expect("valid");
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.port(), 9464);
        assert_eq!(c.ladder.order[&Signal::TcpSend][0], Rung::Kprobe);
        assert_eq!(c.ladder.order[&Signal::TcpState][0], Rung::TpBtf);
        assert!(c.ladder.required.is_empty());
    }

    #[test]
    fn cli_wins_over_file() {
        let f = file(
            "listen = \"127.0.0.1:1\"\nharvest_interval = \"2s\"\nladder = { tcp_send = [\"tracepoint\"] }\nrequire = [\"tcp_send\"]",
        );
        let c = Config::merge(
            &cli(&[
                "--listen",
                "127.0.0.1:2",
                "--ladder",
                "tcp_send=raw_tp,tp_btf",
            ]),
            f,
        )
        .expect("valid");
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.harvest_interval, Duration::from_secs(2));
        assert_eq!(
            c.ladder.order[&Signal::TcpSend],
            vec![Rung::RawTp, Rung::TpBtf]
        );
        assert_eq!(c.ladder.required, vec![Signal::TcpSend]);
        let c = Config::merge(&cli(&["--require", "all"]), FileConfig::default()).expect("valid");
        assert_eq!(c.ladder.required.len(), Signal::ALL.len());
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen", "nope"], "listen"),
            (&["--harvest-interval", "10"], "no unit"),
            (&["--harvest-interval", "5ms"], "between"),
            (&["--harvest-interval", "3h"], "unknown unit"),
            (&["--ladder", "tcp_send"], "SIGNAL=RUNG"),
            (&["--ladder", "tcp_sned=kprobe"], "unknown signal"),
            (&["--ladder", "tcp_send=kprobes"], "unknown rung"),
            (&["--ladder", "tcp_state=kprobe"], "has no kprobe rung"),
            (&["--ladder", "tcp_send=kprobe,kprobe"], "twice"),
            (&["--require", "everything"], "unknown signal"),
            (&["--ring-buffer-bytes", "5000"], "power of two"),
            (&["--max-workloads", "0"], "at least 1"),
            (&["--cgroup-root", "/nonexistent/cg"], "not a directory"),
            (&["--log", "collector=loud"], "log"),
        ];
        for (args, needle) in cases {
            let err = Config::merge(&cli(args), FileConfig::default()).expect_err("invalid");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
        assert!(
            toml::from_str::<FileConfig>("listn = \"x\"").is_err(),
            "unknown keys rejected"
        );
    }

    #[test]
    fn missing_config_file_names_the_path() {
        let err =
            Config::load(&cli(&["--config", "/nonexistent/collector.toml"])).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/collector.toml"),
            "{err}"
        );
    }
}

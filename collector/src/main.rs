//! collector: start, run until SIGTERM/SIGINT, drain, exit.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser;
use collector::{app, config, status};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

/// sysexits EX_USAGE: bad command line or configuration.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = config::Cli::parse();
    if let Some(config::Command::Status { api }) = &cli.command {
        return match status::fetch(api) {
            Ok(doc) => {
                print!("{}", status::table(&doc));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("collector status: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(config::Command::Watchdog {
        kubeconfig,
        namespace,
        identity,
        interval,
        lease_duration,
    }) = &cli.command
    {
        return watchdog(kubeconfig, namespace, identity, interval, lease_duration);
    }
    let config = match config::Config::load(&cli, &config::ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("collector: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            // Validated by the configuration, so this parses.
            collector::config::log_filter(&collector::events::kernel_log::log_filter(&config.log))
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    let format = config.log_format;
    match format {
        // Colour only for a person at a terminal: a log file or `kubectl logs` would be full
        // of escape sequences.
        config::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line for log pipelines (Loki, Elasticsearch, Cloud Logging); the
        // current span is kept so a line still says which probe or watch it came from.
        config::LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    info!(version = env!("CARGO_PKG_VERSION"), "starting");

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            fatal(format, &format!("starting the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fatal(format, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The last words before exiting: a JSON log stream stays JSON to its last line (a pipeline
/// would otherwise drop or mangle the one line that says why the collector stopped).
fn fatal(format: config::LogFormat, message: &str) {
    match format {
        config::LogFormat::Text => eprintln!("collector: {message}"),
        config::LogFormat::Json => error!(error = message, "exiting"),
    }
}

/// `collector watchdog`: no eBPF, only the Kubernetes API (collector::kubernetes::watchdog).
fn watchdog(
    kubeconfig: &Option<std::path::PathBuf>,
    namespace: &str,
    identity: &Option<String>,
    interval: &str,
    lease_duration: &str,
) -> ExitCode {
    let parse = |name: &str, v: &str| {
        config::parse_duration(v).map_err(|e| eprintln!("collector watchdog: --{name}: {e}"))
    };
    let (Ok(interval), Ok(lease_duration)) = (
        parse("interval", interval),
        parse("lease-duration", lease_duration),
    ) else {
        return ExitCode::from(EX_USAGE);
    };
    if lease_duration < std::time::Duration::from_secs(1) || lease_duration <= interval {
        eprintln!("collector watchdog: --lease-duration must be at least 1s and above --interval");
        return ExitCode::from(EX_USAGE);
    }
    let identity = identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| format!("watchdog-{}", std::process::id()));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = collector::kubernetes::watchdog::WatchdogConfig {
        kubeconfig: kubeconfig.clone(),
        namespace: namespace.to_owned(),
        identity,
        interval,
        lease_duration,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("collector watchdog: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = stop.send(true);
        });
        collector::kubernetes::watchdog::run(config, stopped).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("collector watchdog: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: config::Config) -> anyhow::Result<()> {
    // Kubernetes stops pods with SIGTERM; a terminal sends SIGINT.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // A least-privilege container missing a capability fails here, naming it, instead of with
    // an EPERM deep in the loader or a source that silently counts nothing.
    collector::capabilities::check(&config)?;
    let running = app::start(config).await?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
    running.shutdown().await;
    Ok(())
}

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
    let config = match config::Config::load(&cli, &config::ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("collector: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
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

async fn run(config: config::Config) -> anyhow::Result<()> {
    // Kubernetes stops pods with SIGTERM; a terminal sends SIGINT.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let running = app::start(config).await?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
    running.shutdown().await;
    Ok(())
}

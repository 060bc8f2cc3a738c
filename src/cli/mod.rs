//! The `walcast` command line: `run` streams PostgreSQL changes to NATS, `tail`
//! prints the envelopes of a subject pattern, `check` reports what walcast needs.
//! Errors are reported here, once, with their causes.

pub mod check;
mod tail;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::config::{Cli, Command, LogFormat, RunConfig};
use crate::ops::metrics::Metrics;

/// The binary's entry point.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = crate::config::load_config_file(&args) {
        eprintln!("walcast: error: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walcast: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Run(cfg) => run(cfg).await,
            Command::Tail(cfg) => tail::tail(cfg).await,
            Command::Check(cfg) => check_command(&cfg).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walcast: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WALCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `walcast run`: until SIGINT/SIGTERM.
async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let (trigger, shutdown) = crate::ops::shutdown::channel();
    crate::ops::shutdown::on_signals(trigger);
    let metrics: Arc<Metrics> = Metrics::new();
    crate::pipeline::run(cfg, metrics, shutdown).await?;
    Ok(())
}

/// `walcast check`: the report, and a failure when any check failed.
async fn check_command(cfg: &RunConfig) -> anyhow::Result<()> {
    let checks = check::run(cfg).await;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks
        .iter()
        .filter(|c| c.outcome == check::Outcome::Fail)
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

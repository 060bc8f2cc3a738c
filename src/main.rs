//! The `walcast` binary: `walcast run` streams PostgreSQL changes to NATS;
//! `walcast tail` prints the envelopes of a subject pattern.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;

use walcast::codec;
use walcast::config::{Cli, Command, LogFormat, TailConfig};
use walcast::lsn::Lsn;
use walcast::metrics::Metrics;

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

async fn tail(cfg: TailConfig) -> anyhow::Result<()> {
    let client = async_nats::connect(&cfg.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", cfg.nats_url))?;
    let mut sub = client
        .subscribe(cfg.pattern.clone())
        .await
        .with_context(|| format!("cannot subscribe to {}", cfg.pattern))?;
    client.flush().await.context("NATS flush")?;
    eprintln!("tailing {} on {}", cfg.pattern, cfg.nats_url);
    let mut seen = 0u64;
    while let Some(msg) = sub.next().await {
        match codec::decode(&msg.payload) {
            Ok(env) => {
                if cfg.json {
                    println!("{}", env.to_json());
                } else {
                    println!(
                        "{} {} key={} seq={} schema={} lsn={} at={} value={}",
                        msg.subject,
                        env.op.as_str(),
                        env.key,
                        env.sequence,
                        env.schema_version,
                        Lsn(env.lsn),
                        env.commit_ts.to_rfc3339(),
                        codec::to_json(&env.value)
                    );
                }
            }
            Err(e) => eprintln!("{}: not an envelope: {e}", msg.subject),
        }
        seen += 1;
        if cfg.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = walcast::config::load_config_file(&args) {
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
            Command::Run(cfg) => {
                let (trigger, shutdown) = walcast::shutdown::channel();
                walcast::shutdown::on_signals(trigger);
                walcast::pipeline::run(cfg, Metrics::new(), shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Tail(cfg) => tail(cfg).await,
            Command::Check(cfg) => {
                let checks = walcast::check::run(&cfg).await;
                for c in &checks {
                    println!("{c}");
                }
                let failed = checks
                    .iter()
                    .filter(|c| c.outcome == walcast::check::Outcome::Fail)
                    .count();
                if failed > 0 {
                    anyhow::bail!("{failed} check(s) failed");
                }
                Ok(())
            }
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

//! The `walcast` command line: `run` streams PostgreSQL changes to NATS, `tail`
//! prints the envelopes of a subject pattern, `check` reports what walcast needs,
//! `verify` compares the tables with the stream key by key.
//! Errors are reported here, once, with their causes.

pub mod check;
mod snapshot;
mod tail;
mod teardown;
mod verify;

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Command, LogFormat, RunConfig};
use crate::ops::metrics::Metrics;

/// The binary's entry point.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match crate::config::parse_command_line(&args) {
        Ok(cli) => cli,
        Err(e) => {
            report_error(&anyhow::Error::from(e), log_format_of(&args));
            // `verify` exits 1 only when something differs.
            let verify = args.iter().any(|a| a == "verify");
            return ExitCode::from(if verify { 2 } else { 1 });
        }
    };
    let format = cli.log_format;
    // Only `run` logs the NATS client's connection events: the other commands' output
    // is their report.
    init_tracing(format, matches!(cli.command, Command::Run(_)));
    warn_unknown_variables();
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
    // `verify` tells "it differs" (1) from "it could not tell" (2).
    let error_code = match cli.command {
        Command::Verify(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async {
        let done = match cli.command {
            Command::Run(cfg) => run(cfg).await,
            Command::Tail(cfg) => tail::tail(cfg).await,
            Command::Check(cfg) => check_command(&cfg).await,
            Command::Teardown(cfg) => teardown::teardown(&cfg).await,
            Command::Snapshot(cfg) => snapshot::snapshot(cfg).await,
            Command::Verify(cfg) => return verify::verify(cfg).await,
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            report_error(&e, format);
            error_code
        }
    }
}

/// The log format asked for, before the command line is parsed (for errors of the
/// configuration file).
fn log_format_of(args: &[std::ffi::OsString]) -> LogFormat {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let flag = args
        .iter()
        .position(|a| a == "--log-format")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--log-format=").map(str::to_string))
        })
        .or_else(|| std::env::var("WALCAST_LOG_FORMAT").ok());
    match flag.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// The error and its causes, each cause once (a cause a message already quotes is
/// not repeated), as one line: text, or a JSON object in JSON mode.
fn report_error(e: &anyhow::Error, format: LogFormat) {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    match format {
        LogFormat::Text => eprintln!("walcast: error: {message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": crate::wire::Timestamp::now().to_rfc3339(),
                "level": "ERROR",
                "fields": { "message": message },
                "target": "walcast",
            })
        ),
    }
}

/// A `WALCAST_*` variable no option reads (a misspelling would be ignored silently).
fn warn_unknown_variables() {
    let names = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok());
    for (name, meant) in crate::config::names::unknown_variables(names) {
        match meant {
            Some(meant) => tracing::warn!(
                "environment variable {name} is not one walcast reads (did you mean {meant}?): ignored"
            ),
            None => tracing::warn!(
                "environment variable {name} is not one walcast reads: ignored"
            ),
        }
    }
}

/// Logs on stderr: `WALCAST_LOG` filters (default `info`); colour only on a terminal;
/// the NATS client never below `debug` (its `trace` lines carry the CONNECT options,
/// credentials included), and only from `warn` unless `nats_events` (or asked for);
/// PostgreSQL notices only from `warn`, unless asked for.
fn init_tracing(format: LogFormat, nats_events: bool) {
    use std::io::IsTerminal;
    let spec = std::env::var("WALCAST_LOG").unwrap_or_else(|_| "info".into());
    let mut filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !spec.contains("tokio_postgres") {
        filter = filter.add_directive("tokio_postgres=warn".parse().expect("valid directive"));
    }
    if spec.contains("trace") {
        filter = filter.add_directive("async_nats=debug".parse().expect("valid directive"));
    } else if !nats_events && !spec.contains("async_nats") {
        filter = filter.add_directive("async_nats=warn".parse().expect("valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
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
    crate::pipeline::run(cfg.resolve()?, metrics, shutdown).await?;
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

//! Wires the stages together: source → decode → envelope → sink, with the checkpoint
//! feeding the flush position back to PostgreSQL.
//!
//! [`run`] only builds the stages, starts them, waits and shuts them down:
//! - `reader`: the task that reads, decodes and builds envelopes, in small parts;
//! - `supervise`: reconnects after transient failures, the shutdown budget;
//! - `background`: the HTTP endpoints, the slot monitor, the heartbeat, requests;
//! - [`snapshot`]: the snapshot's plan and progress; [`requests`]: refetch and
//!   re-snapshot over NATS;
//! - the sink runs in a task of its own behind a bounded channel.

mod background;
mod error;
mod reader;
pub(crate) use reader::{catalog_columns, resolve_from_catalog};
pub mod requests;
pub mod snapshot;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::tables::{any_column_sequence, settings_problems, tracked_tables};
use crate::config::{RunSettings, TableSettingsMap};
use crate::envelope::EnvelopeBuilder;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::{Shutdown, TaskSet};
use crate::sink::delivery::NatsSettings;
use crate::sink::{self, Confirmed, NatsState, SinkBatch, SinkError};
use crate::source::catalog::{Catalog, Preflight};
pub use error::PipelineError;
use reader::ChangeReader;
pub use reader::ReaderSettings;

/// Batches queued between the reader and the sink.
const CHANNEL_BATCHES: usize = 8;

/// Run `walcast run` until shutdown. Errors before streaming starts (bad config,
/// unreachable database, missing publication, ...) are returned at once; once
/// streaming, transient PostgreSQL failures are retried.
pub async fn run(
    settings: RunSettings,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) -> Result<(), PipelineError> {
    let RunSettings {
        source,
        nats,
        delivery,
        envelope,
        mut reader,
        flush,
        metrics_addr,
    } = settings;
    let catalog = Catalog::connect_waiting(&source.params, source.connect_timeout).await?;
    let snapshots = reader.snapshot.mode != snapshot::SnapshotMode::Never;
    let preflight = preflight(&catalog, &source.publication, &envelope.tables, snapshots).await?;
    let mut tasks = TaskSet::new();
    background::start(metrics_addr, &source, &metrics, &mut tasks).await?;
    let (client, nats_state) = connect_nats(&nats, &metrics, &mut tasks).await?;
    let max_payload = client.server_info().max_payload;
    let column_mode = any_column_sequence(&envelope.tables);
    let mut requests =
        background::start_requests(&client, &envelope.subject_prefix, column_mode, &mut tasks);
    let tracked = tracked_tables(&preflight.tables, &envelope.tables);
    let delivered =
        sink::delivery::build(&delivery, &nats, &tracked, (client, nats_state), &metrics).await?;
    let (delay, why) = sink::sync::resolve(flush.delay, flush.monitor_url.as_deref()).await;
    tracing::info!(flush_delay = ?delay, from = %why, "WAL positions are reported that long after NATS acknowledged them");
    reader.flush_delay = delay;
    let (tx, rx) = mpsc::channel::<SinkBatch>(CHANNEL_BATCHES);
    let (confirmed_tx, mut confirmed_rx) = watch::channel(Confirmed::default());
    let sink_task = tokio::spawn(delivered.sink.run(rx, confirmed_tx));
    let mut builder = EnvelopeBuilder::new(envelope, delivered.mode);
    builder.set_size_limit(max_payload);
    // The reader bounds its own drain by the budget; this bounds a reader stuck
    // waiting on a server.
    let budget = reader.shutdown_timeout + Duration::from_secs(1);
    let stages = (catalog, delivered.store);
    let mut reader = ChangeReader::new(
        (source, reader),
        metrics.clone(),
        stages,
        builder,
        preflight.tables,
    );
    let channels = (&tx, &mut confirmed_rx);
    let result =
        supervise::until_stopped(&mut reader, &mut shutdown, channels, &mut requests, budget).await;
    metrics.set_ready(false, "shutting down");
    drop(tx);
    stop_sink(sink_task).await;
    tasks.join(Duration::from_secs(2)).await;
    result
}

/// The NATS connection, its state watched by a gauge.
async fn connect_nats(
    nats: &NatsSettings,
    metrics: &Arc<Metrics>,
    tasks: &mut TaskSet,
) -> Result<(async_nats::Client, Arc<NatsState>), SinkError> {
    let state = Arc::new(NatsState::default());
    let client = sink::connect(&nats.url, &nats.auth, nats.connect_timeout, state.clone()).await?;
    let gauge = background::nats_gauge(state.clone(), metrics.clone(), tasks.shutdown());
    tasks.spawn(gauge);
    Ok((client, state))
}

/// The reader waited for the sink within the shutdown budget: what the sink still
/// holds is unconfirmed and safe in the slot.
async fn stop_sink(sink_task: tokio::task::JoinHandle<Result<(), SinkError>>) {
    let sink_abort = sink_task.abort_handle();
    match tokio::time::timeout(Duration::from_secs(1), sink_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "sink stopped with an error"),
        Ok(Err(e)) => tracing::error!(error = %e, "sink task failed"),
        Err(_) => sink_abort.abort(),
    }
}

/// The tables the role may not read, and the grant that fixes it.
fn unreadable_problem(preflight: &Preflight) -> String {
    let tables = preflight.unreadable.join(", ");
    format!(
        "the snapshot reads every published table, and role {user} may not SELECT from {tables} (partitions are published one by one and need their own grant) -- fix: GRANT SELECT ON {tables} TO {user} (or --snapshot never)",
        user = preflight.user
    )
}

/// Check the publication and its tables before anything else starts.
async fn preflight(
    catalog: &Catalog,
    publication: &str,
    tables: &TableSettingsMap,
    snapshots: bool,
) -> Result<Preflight, PipelineError> {
    let preflight = catalog.preflight(publication).await?;
    tracing::info!(
        server_version = %preflight.server_version,
        publication = %publication,
        tables = ?preflight.tables,
        "publication checked"
    );
    if snapshots && !preflight.unreadable.is_empty() {
        return Err(PipelineError::Config(unreadable_problem(&preflight)));
    }
    let problems = settings_problems(tables, &preflight.columns);
    if !problems.is_empty() {
        return Err(PipelineError::Config(problems.join("; ")));
    }
    for table in &preflight.toast_without_full_identity {
        tracing::info!(table = %table, "{}", crate::source::catalog::TOAST_NOTE);
    }
    Ok(preflight)
}

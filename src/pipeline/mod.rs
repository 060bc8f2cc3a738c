//! Wires the stages together: source → decode → envelope → sink, with the checkpoint
//! feeding the flush position back to PostgreSQL, and supervises reconnects.
//!
//! [`run`] only builds the stages, starts them, waits and shuts them down:
//! - [`reader`]: the task that reads, decodes and builds envelopes;
//! - [`policy`]: the delivery and sequence-mode rules (shared with `walcast check`);
//! - the sink runs in a task of its own behind a bounded channel.

pub mod policy;
mod reader;
pub mod requests;
mod snapshot;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::client::redact_url;
use crate::config::{Delivery, Oversize, PublishMode, RunConfig};
use crate::decode::pgoutput::DecodeError;
use crate::envelope::sequence::SequenceMode;
use crate::envelope::{EnvelopeBuilder, EnvelopeError};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::{Shutdown, TaskSet};
use crate::sink::{
    self, Confirmed, CoreSink, FastBatchSink, JetStreamSink, NatsState, Sink, SinkBatch, SinkError,
};
use crate::source::catalog::{Catalog, Preflight};
use crate::source::{ConnectParams, SourceError};
use crate::state::{self, StateError, StateStore, StreamSettings};
use crate::wire::Lsn;
use reader::ChangeReader;

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("pgoutput message at {lsn}: {source}")]
    Decode {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the sink stopped unexpectedly")]
    SinkGone,
    #[error("{transactions} transaction(s) not confirmed by NATS within the shutdown budget; they are safe in the slot (flushed up to {flushed}) and will be published at the next start")]
    Unconfirmed { transactions: usize, flushed: Lsn },
    #[error("loading state from the stream: {0}")]
    Store(#[from] StateError),
    #[error("{0}")]
    Config(String),
}

impl PipelineError {
    fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Store(StateError::Foreign { .. }) => false,
            PipelineError::Store(_) => true,
            _ => false,
        }
    }
}

/// Batches queued between the reader and the sink.
const CHANNEL_BATCHES: usize = 8;
/// How long the sink may take to confirm what it holds at shutdown or before a
/// reconnect.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Run `walcast run` until shutdown. Errors before streaming starts (bad config,
/// unreachable database, missing publication, ...) are returned at once; once
/// streaming, transient PostgreSQL failures are retried.
pub async fn run(
    cfg: RunConfig,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) -> Result<(), PipelineError> {
    let params = cfg.connect_params()?;
    let catalog = Catalog::connect_waiting(&params, cfg.connect_timeout).await?;
    let preflight = preflight(&catalog, &cfg).await?;
    let mut tasks = TaskSet::new();
    start_background(&cfg, &params, &metrics, &mut tasks).await?;
    let nats_state = Arc::new(NatsState::default());
    let client = sink::connect(
        &cfg.nats.url,
        &cfg.nats.auth(),
        cfg.connect_timeout,
        nats_state.clone(),
    )
    .await?;
    tasks.spawn(poll_nats_gauge(
        nats_state.clone(),
        metrics.clone(),
        tasks.shutdown(),
    ));
    let max_payload = client.server_info().max_payload;
    let mut requests = start_requests(&cfg, &client, &mut tasks);
    let (sink, store, mode) =
        build_delivery(&cfg, &preflight, client, nats_state, &metrics).await?;
    let (tx, rx) = mpsc::channel::<SinkBatch>(CHANNEL_BATCHES);
    let (confirmed_tx, mut confirmed_rx) = watch::channel(Confirmed::default());
    let sink_task = tokio::spawn(sink.run(rx, confirmed_tx));
    let mut builder = EnvelopeBuilder::new(
        &cfg.subject_prefix,
        mode,
        cfg.table_settings(),
        cfg.key_cache,
        cfg.toast_cache_bytes,
    );
    builder.set_size_limit(max_payload, cfg.oversize == Oversize::Marker);
    // The reader bounds its own drain by the budget; this bounds a reader stuck
    // waiting on a server.
    let budget = cfg.shutdown_timeout + Duration::from_secs(1);
    let mut reader = ChangeReader::new(
        cfg,
        metrics.clone(),
        catalog,
        store,
        builder,
        preflight.tables.clone(),
    );
    let budget_watch = shutdown.clone();
    let outcome = {
        let supervised = supervise(
            &mut reader,
            &params,
            &mut shutdown,
            (&tx, &mut confirmed_rx),
            &mut requests,
        );
        tokio::pin!(supervised);
        tokio::select! {
            result = &mut supervised => Some(result),
            _ = budget_spent(budget_watch, budget) => None,
        }
    };
    let result = match outcome {
        Some(Ok(())) => reader.shutdown_outcome(),
        Some(Err(e)) => Err(e),
        None => {
            tracing::warn!("the shutdown budget ran out while waiting on PostgreSQL or NATS");
            reader.shutdown_outcome()
        }
    };
    metrics.set_ready(false, "shutting down");
    drop(tx);
    // The reader waited for the sink within the shutdown budget: what the sink
    // still holds is unconfirmed and safe in the slot.
    let sink_abort = sink_task.abort_handle();
    match tokio::time::timeout(Duration::from_secs(1), sink_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "sink stopped with an error"),
        Ok(Err(e)) => tracing::error!(error = %e, "sink task failed"),
        Err(_) => sink_abort.abort(),
    }
    tasks.join(Duration::from_secs(2)).await;
    result
}

/// Requests to this instance: re-snapshots, and refetches when a table is in column
/// mode (tracked tables are refetched from the stream).
fn start_requests(
    cfg: &RunConfig,
    client: &async_nats::Client,
    tasks: &mut TaskSet,
) -> requests::Requests {
    let column_mode = cfg
        .table_settings()
        .values()
        .any(|s| s.sequence_column.is_some());
    let (task, requests) = requests::responder(
        client.clone(),
        &cfg.subject_prefix,
        column_mode,
        tasks.shutdown(),
    );
    tasks.spawn(task);
    requests
}

/// Resolves `budget` after shutdown was requested.
async fn budget_spent(mut shutdown: Shutdown, budget: Duration) {
    shutdown.wait().await;
    tokio::time::sleep(budget).await;
}

/// Check the publication and its tables before anything else starts.
async fn preflight(catalog: &Catalog, cfg: &RunConfig) -> Result<Preflight, PipelineError> {
    let preflight = catalog.preflight(&cfg.publication).await?;
    tracing::info!(
        server_version = %preflight.server_version,
        publication = %cfg.publication,
        tables = ?preflight.tables,
        "publication checked"
    );
    let problems = policy::settings_problems(&cfg.table_settings(), &preflight.columns);
    if !problems.is_empty() {
        return Err(PipelineError::Config(problems.join("; ")));
    }
    for table in &preflight.toast_without_full_identity {
        tracing::warn!(
            table = %table,
            "table has TOASTable columns and no REPLICA IDENTITY FULL: an unchanged large value not seen before is fetched from the table (ALTER TABLE {table} REPLICA IDENTITY FULL avoids it)"
        );
    }
    Ok(preflight)
}

/// The HTTP endpoints and the slot monitor, joined at shutdown.
async fn start_background(
    cfg: &RunConfig,
    params: &ConnectParams,
    metrics: &Arc<Metrics>,
    tasks: &mut TaskSet,
) -> Result<(), PipelineError> {
    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
        .await
        .map_err(|source| PipelineError::Metrics {
            addr: cfg.metrics_addr,
            source,
        })?;
    tasks.spawn(crate::ops::http::serve(
        listener,
        metrics.clone(),
        tasks.shutdown(),
    ));
    if !cfg.heartbeat_interval.is_zero() {
        tasks.spawn(crate::source::monitor::heartbeat(
            params.clone(),
            cfg.heartbeat_interval,
            cfg.connect_timeout,
            tasks.shutdown(),
        ));
    }
    tasks.spawn(crate::source::monitor::monitor_slot(
        params.clone(),
        cfg.slot.clone(),
        cfg.connect_timeout,
        metrics.clone(),
        tasks.shutdown(),
    ));
    Ok(())
}

/// Every 250 ms until shutdown: whether NATS is connected (metric and readiness).
async fn poll_nats_gauge(state: Arc<NatsState>, metrics: Arc<Metrics>, mut shutdown: Shutdown) {
    loop {
        metrics.set_nats_connected(state.connected.load(Ordering::SeqCst));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// The sink, the state store (JetStream only) and the default sequence mode.
async fn build_delivery(
    cfg: &RunConfig,
    preflight: &Preflight,
    client: async_nats::Client,
    nats_state: Arc<NatsState>,
    metrics: &Arc<Metrics>,
) -> Result<(Sink, Option<StateStore>, SequenceMode), PipelineError> {
    let has_jetstream = client.server_info().jetstream;
    let delivery = policy::choose_delivery(cfg.delivery, has_jetstream).map_err(|e| {
        PipelineError::Config(format!("NATS at {}: {e}", redact_url(&cfg.nats.url)))
    })?;
    let settings = cfg.table_settings();
    let tracked = policy::tracked_tables(&preflight.tables, &settings);
    let mode =
        policy::default_sequence_mode(delivery, has_jetstream, cfg.volatile_sequences, &tracked)
            .map_err(|e| {
                PipelineError::Config(format!("{e} (NATS at {})", redact_url(&cfg.nats.url)))
            })?;
    tracing::info!(delivery = ?delivery, sequences = ?mode, "delivery chosen");
    let sink_settings = sink::SinkSettings {
        max_unconfirmed: cfg.max_inflight,
        confirm_timeout: cfg.confirm_timeout,
    };
    if delivery != Delivery::Jetstream {
        let sink = CoreSink::new(client, nats_state, &sink_settings, metrics.clone()).await?;
        return Ok((Sink::Core(sink), None, mode));
    }
    let context = async_nats::jetstream::ContextBuilder::new()
        .ack_timeout(cfg.confirm_timeout)
        // The sink bounds what is in flight itself (--max-inflight, checked before
        // each batch); the client's own limit must never be the one that blocks, or
        // a publish would wait for acks nobody polls.
        .max_ack_inflight(cfg.max_inflight.saturating_add(1 << 20))
        .backpressure_on_inflight(true)
        .build(client);
    let settings = StreamSettings::from_config(cfg);
    let stream = state::ensure_stream(&context, &settings).await?;
    let meta = state::ensure_meta_stream(&context, &settings).await?;
    // After the stream exists: it captures the probe and answers at once.
    sink::probe_publish(&context.client(), &cfg.subject_prefix, &nats_state).await?;
    let batched = cfg.publish_mode == PublishMode::Batched && state::takes_batches(&stream);
    tracing::info!(
        publish = if batched {
            "fast-ingest batches"
        } else {
            "one PubAck per message"
        },
        "JetStream publishing"
    );
    let store = StateStore::new(context.clone(), stream, meta, &settings);
    if batched {
        let sink = FastBatchSink::new(
            context.client(),
            store.clone(),
            &sink_settings,
            metrics.clone(),
        );
        return Ok((Sink::FastBatch(sink), Some(store), mode));
    }
    let sink = JetStreamSink::new(context, store.clone(), &sink_settings, metrics.clone());
    Ok((Sink::JetStream(sink), Some(store), mode))
}

/// Stream, and reconnect after transient failures, until shutdown or a fatal error.
async fn supervise(
    reader: &mut ChangeReader,
    params: &ConnectParams,
    shutdown: &mut Shutdown,
    (tx, confirmed_rx): (&mpsc::Sender<SinkBatch>, &mut watch::Receiver<Confirmed>),
    requests: &mut requests::Requests,
) -> Result<(), PipelineError> {
    let mut attempt = 0u32;
    let mut streamed_once = false;
    let mut waiting_announced = false;
    loop {
        if shutdown.is_requested() {
            return Ok(());
        }
        let outcome = async {
            let stream = reader.open(params).await?;
            streamed_once = true;
            attempt = 0;
            requests.streaming();
            reader
                .stream(stream, shutdown, tx, confirmed_rx, requests)
                .await
        }
        .await;
        reader.metrics().source.streaming.set(0);
        let e = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let retry = e.is_transient()
            || (streamed_once && matches!(e, PipelineError::Source(SourceError::Server(_))));
        // A first connection that fails outright is a configuration problem, reported
        // at once; an active slot (hot standby) or a failure after streaming started
        // is waited out.
        let slot_busy =
            matches!(&e, PipelineError::Source(SourceError::Server(pg)) if pg.code == "55006");
        if !retry || (!streamed_once && !slot_busy) {
            return Err(e);
        }
        attempt += 1;
        let delay = Duration::from_millis(200 * u64::from(attempt.min(25)));
        reader.metrics().set_ready(false, &format!("{e}"));
        if slot_busy && !waiting_announced {
            waiting_announced = true;
            tracing::info!(error = %e, "replication slot is in use by another process; waiting to take over");
        } else if slot_busy {
            tracing::debug!(error = %e, "replication slot still in use");
        } else {
            reader.metrics().source.reconnects.inc();
            tracing::warn!(error = %e, retry_in = ?delay, "replication connection lost; reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait() => return Ok(()),
        }
        // Before streaming again, let the sink confirm what it holds: the stream then
        // reflects everything this process handed off.
        reader
            .wait_confirmed(confirmed_rx, shutdown, DRAIN_WAIT)
            .await;
        reader.reconnect_catalog(params).await;
    }
}

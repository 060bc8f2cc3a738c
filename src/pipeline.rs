//! Wires the stages together: source → decode → envelope → codec → sink, with the
//! checkpoint feeding the flush position back to PostgreSQL.
//!
//! One task reads the replication stream, decodes and builds envelopes (all in the
//! read buffer, in large batches); the sink runs in its own task behind a bounded
//! channel. When the channel is full the reader stops reading WAL but keeps sending
//! status updates on its own timer, so a slow NATS never makes PostgreSQL drop the
//! connection (`wal_sender_timeout`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::checkpoint::Checkpoint;
use crate::codec::Op;
use crate::config::{Delivery, RunConfig};
use crate::decode::pgoutput::{self, DecodeError, OldTuple, PgOutput, RelationColumn, TupleValue};
use crate::decode::types::TypeRegistry;
use crate::envelope::schema::Column;
use crate::envelope::sequence::SequenceMode;
use crate::envelope::{EnvelopeBuilder, EnvelopeError, Need, Outgoing};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::sink::jetstream::{self as js, JetStreamSink, StateStore, StreamSettings};
use crate::sink::{self, Confirmed, NatsSink, NatsState, Publish, SinkBatch, SinkError};
use crate::source::catalog::Catalog;
use crate::source::{
    ConnectParams, ReplicationConnection, ReplicationEvent, ReplicationStream, SourceError,
};

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
    #[error("replication slot \"{slot}\" exists but {problem}")]
    Slot { slot: String, problem: String },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the sink stopped unexpectedly")]
    SinkGone,
    #[error("loading state from the stream: {0}")]
    Store(SinkError),
    #[error("{0}")]
    Config(String),
}

impl PipelineError {
    fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(e) => e.is_transient(),
            PipelineError::Store(_) => true,
            _ => false,
        }
    }
}

/// Envelopes per batch handed to the sink.
const BATCH_ITEMS: usize = 1024;
/// Batches queued between the reader and the sink.
const CHANNEL_BATCHES: usize = 16;

/// Per-table change counters, resolved once (no label lookups on the hot path).
struct TableCounters {
    insert: IntCounter,
    update: IntCounter,
    delete: IntCounter,
}

/// The reader side: decode, envelope, checkpoint.
struct Reader {
    cfg: RunConfig,
    metrics: Arc<Metrics>,
    catalog: Catalog,
    /// The JetStream state store (key states, schema histories), when delivering
    /// through JetStream.
    store: Option<StateStore>,
    types: TypeRegistry,
    builder: EnvelopeBuilder,
    cp: Checkpoint,
    /// Envelopes of the open transaction not yet handed to the sink.
    chunk: Vec<Outgoing>,
    /// A batch the channel had no room for.
    ready: Option<SinkBatch>,
    /// Commit LSN of the last transaction handed to the sink: after a reconnect,
    /// transactions up to it are replays of what the sink already has.
    last_handed_commit: Lsn,
    skipping: bool,
    /// No replication stream was opened yet by this process.
    first_open: bool,
    /// When the last standby status update was sent.
    last_status: std::time::Instant,
    commit_ts: crate::decode::value::Timestamp,
    /// Transactions handed to the sink and not yet confirmed: (end LSN, commit time).
    unconfirmed: std::collections::VecDeque<(Lsn, crate::decode::value::Timestamp)>,
    counters: HashMap<u32, TableCounters>,
}

/// Run `walcast run` until shutdown. Errors before streaming starts (bad config,
/// unreachable database, missing publication, ...) are returned at once; once
/// streaming, transient PostgreSQL failures are retried.
pub async fn run(
    cfg: RunConfig,
    metrics: Arc<Metrics>,
    mut shutdown: Shutdown,
) -> Result<(), PipelineError> {
    let params = ConnectParams::from_url(&cfg.postgres_url)?;
    let catalog = Catalog::connect(&cfg.postgres_url, cfg.connect_timeout).await?;
    let preflight = catalog.preflight(&cfg.publication).await?;
    tracing::info!(
        server_version = %preflight.server_version,
        publication = %cfg.publication,
        tables = ?preflight.tables,
        "publication checked"
    );
    for table in &preflight.toast_without_full_identity {
        tracing::warn!(
            table = %table,
            "table has TOASTable columns and no REPLICA IDENTITY FULL: an unchanged large value not seen before is fetched from the table (ALTER TABLE {table} REPLICA IDENTITY FULL avoids it)"
        );
    }

    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
        .await
        .map_err(|source| PipelineError::Metrics {
            addr: cfg.metrics_addr,
            source,
        })?;
    tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    tokio::spawn(monitor_slot(
        cfg.postgres_url.clone(),
        cfg.slot.clone(),
        cfg.connect_timeout,
        metrics.clone(),
    ));

    let nats_state = Arc::new(NatsState::default());
    let client = sink::connect(&cfg.nats_url, cfg.connect_timeout, nats_state.clone()).await?;
    {
        let (m, s) = (metrics.clone(), nats_state.clone());
        tokio::spawn(async move {
            loop {
                m.nats_connected
                    .set(i64::from(s.connected.load(Ordering::SeqCst)));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    let has_jetstream = client.server_info().jetstream;
    let delivery = match (cfg.delivery, has_jetstream) {
        (Delivery::Auto, true) | (Delivery::Jetstream, true) => Delivery::Jetstream,
        (Delivery::Auto, false) | (Delivery::Core, _) => Delivery::Core,
        (Delivery::Jetstream, false) => {
            return Err(PipelineError::Config(format!(
                "--delivery jetstream, but the NATS server at {} has no JetStream (start nats-server with -js)",
                cfg.nats_url
            )))
        }
    };
    let table_settings = cfg.table_settings();
    let default_mode = match delivery {
        Delivery::Jetstream => SequenceMode::Tracked,
        _ if cfg.volatile_sequences => SequenceMode::Volatile,
        _ => {
            let tracked: Vec<&String> = preflight
                .tables
                .iter()
                .filter(|t| {
                    table_settings
                        .get(*t)
                        .is_none_or(|s| s.sequence_column.is_none())
                })
                .collect();
            if !tracked.is_empty() {
                return Err(PipelineError::Config(format!(
                    "NATS at {} {} JetStream, so walcast cannot keep the sequences of {} durable: enable JetStream (nats-server -js), put the tables in column mode (--column-sequence schema.table=column, see sql/sequence_column.sql), or accept sequences that restart on every start (--volatile-sequences)",
                    cfg.nats_url,
                    if has_jetstream { "is used without" } else { "has no" },
                    tracked.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            SequenceMode::Volatile
        }
    };
    let (sink, store) = match delivery {
        Delivery::Jetstream => {
            let context = async_nats::jetstream::ContextBuilder::new()
                .ack_timeout(cfg.confirm_timeout)
                // The sink bounds what is in flight itself (--max-inflight, checked
                // before each batch); the client's own limit must never be the one
                // that blocks, or a publish would wait for acks nobody polls.
                .max_ack_inflight(cfg.max_inflight.saturating_add(1 << 20))
                .backpressure_on_inflight(true)
                .build(client);
            let settings = StreamSettings {
                name: cfg.stream.clone(),
                prefix: cfg.subject_prefix.clone(),
                history: cfg.stream_history,
                duplicate_window: cfg.duplicate_window,
            };
            let stream = js::ensure_stream(&context, &settings).await?;
            let meta = js::ensure_meta_stream(&context, &settings).await?;
            let store = StateStore::new(context.clone(), stream, meta, &settings);
            let sink =
                JetStreamSink::new(context, store.clone(), cfg.max_inflight, metrics.clone());
            (AnySink::JetStream(sink), Some(store))
        }
        _ => {
            let sink = NatsSink::new(
                client,
                nats_state,
                cfg.confirm_timeout,
                cfg.max_inflight,
                metrics.clone(),
            )
            .await?;
            (AnySink::Core(sink), None)
        }
    };
    tracing::info!(delivery = ?delivery, sequences = ?default_mode, "delivery chosen");
    let (tx, rx) = mpsc::channel::<SinkBatch>(CHANNEL_BATCHES);
    let (confirmed_tx, mut confirmed_rx) = watch::channel(Confirmed::default());
    let sink_task = tokio::spawn(sink.run(rx, confirmed_tx));

    let mut reader = Reader {
        builder: EnvelopeBuilder::new(
            &cfg.subject_prefix,
            default_mode,
            table_settings,
            cfg.key_cache,
            cfg.toast_cache_bytes,
        ),
        store,
        cfg,
        metrics: metrics.clone(),
        catalog,
        types: TypeRegistry::new(),
        cp: Checkpoint::default(),
        chunk: Vec::new(),
        ready: None,
        last_handed_commit: Lsn(0),
        skipping: false,
        first_open: true,
        last_status: std::time::Instant::now(),
        commit_ts: crate::decode::value::Timestamp {
            seconds: 0,
            nanos: 0,
        },
        unconfirmed: Default::default(),
        counters: HashMap::new(),
    };

    let mut attempt = 0u32;
    let mut streamed_once = false;
    let result = loop {
        if shutdown.is_requested() {
            break Ok(());
        }
        let outcome = async {
            let stream = reader.open(&params).await?;
            streamed_once = true;
            attempt = 0;
            reader
                .stream(stream, &mut shutdown, &tx, &mut confirmed_rx)
                .await
        }
        .await;
        metrics.streaming.set(0);
        match outcome {
            Ok(()) => break Ok(()),
            Err(e)
                if e.is_transient()
                    || (streamed_once
                        && matches!(e, PipelineError::Source(SourceError::Server(_)))) =>
            {
                // A first connection that fails outright is a configuration problem,
                // reported at once; an active slot (hot standby) or a failure after
                // streaming started is waited out.
                let slot_busy = matches!(&e, PipelineError::Source(SourceError::Server(pg)) if pg.code == "55006");
                if !streamed_once && !slot_busy {
                    break Err(e);
                }
                attempt += 1;
                let delay = Duration::from_millis(200 * u64::from(attempt.min(25)));
                metrics.set_ready(false, &format!("{e}"));
                if slot_busy {
                    tracing::info!(error = %e, "replication slot is in use by another process; waiting to take over");
                } else {
                    metrics.reconnects.inc();
                    tracing::warn!(error = %e, retry_in = ?delay, "replication connection lost; reconnecting");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => break Ok(()),
                }
                // Before streaming again, let the sink confirm what it holds: the
                // stream then reflects everything this process handed off.
                let drained = tokio::time::Instant::now() + Duration::from_secs(60);
                while reader.cp.confirmed() < reader.cp.handed_off() {
                    tokio::select! {
                        changed = confirmed_rx.changed() => {
                            if changed.is_err() { break; }
                            let c = *confirmed_rx.borrow_and_update();
                            reader.on_confirmed(c);
                        }
                        _ = tokio::time::sleep_until(drained) => break,
                        _ = shutdown.wait() => break,
                    }
                }
                if reader.catalog.is_closed() {
                    match Catalog::connect(&reader.cfg.postgres_url, reader.cfg.connect_timeout)
                        .await
                    {
                        Ok(c) => reader.catalog = c,
                        Err(e) => tracing::warn!(error = %e, "catalog connection not back yet"),
                    }
                }
            }
            Err(e) => break Err(e),
        }
    };
    metrics.set_ready(false, "shutting down");
    drop(tx);
    match tokio::time::timeout(Duration::from_secs(30), sink_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "sink stopped with an error"),
        Ok(Err(e)) => tracing::error!(error = %e, "sink task failed"),
        Err(_) => tracing::warn!("sink did not drain within 30 s"),
    }
    result
}

impl Reader {
    /// Connect, make sure the slot exists, and start streaming from it.
    async fn open(&mut self, params: &ConnectParams) -> Result<ReplicationStream, PipelineError> {
        let mut conn = ReplicationConnection::connect(params).await?;
        let system = conn.identify_system().await?;
        let slot = &self.cfg.slot;
        match self.catalog.slot(slot).await? {
            None => {
                let at = conn.create_slot(slot).await?;
                tracing::info!(slot = %slot, consistent_point = %at, "created replication slot");
            }
            Some(info) => {
                if info.plugin.as_deref() != Some("pgoutput") {
                    return Err(PipelineError::Slot {
                        slot: slot.clone(),
                        problem: format!(
                            "uses plugin {:?}, walcast needs pgoutput (drop it or choose another --slot)",
                            info.plugin.unwrap_or_default()
                        ),
                    });
                }
                if info.database != system.dbname {
                    return Err(PipelineError::Slot {
                        slot: slot.clone(),
                        problem: format!(
                            "belongs to database {:?}, not {:?}",
                            info.database.unwrap_or_default(),
                            system.dbname.unwrap_or_default()
                        ),
                    });
                }
            }
        }
        let start = self
            .catalog
            .slot(slot)
            .await?
            .and_then(|s| s.confirmed_flush_lsn)
            .and_then(|l| l.parse().ok())
            .unwrap_or(Lsn(0));
        let stream = conn
            .start_replication(slot, Lsn(0), &self.cfg.publication)
            .await?;
        // We hold the slot now: nobody else publishes. If somebody did since this
        // process last wrote (a standby that took over meanwhile), what we hold in
        // memory may be stale: start again from the stream.
        if let Some(store) = &self.store {
            if self.first_open
                || store
                    .written_by_others()
                    .await
                    .map_err(PipelineError::Store)?
            {
                let filter = store.subject_filter().await.map_err(PipelineError::Store)?;
                self.builder.reset_key_state(Some(filter));
                self.chunk.clear();
                self.ready = None;
                self.last_handed_commit = Lsn(0);
            }
        }
        self.first_open = false;
        // Keep what this process already knows (it only grows).
        let mut cp = Checkpoint::starting_at(start.max(self.cp.confirmed()));
        cp.on_received(self.cp.received());
        cp.on_confirmed(self.cp.confirmed());
        cp.on_handed_off(self.cp.handed_off().max(start));
        self.cp = cp;
        // An open transaction's envelopes built so far stay: the stream starts again
        // at or before its Begin, recognises them as already built, and goes on.
        self.skipping = false;
        tracing::info!(slot = %slot, from = %start, "streaming");
        self.metrics.streaming.set(1);
        self.metrics.set_ready(true, "");
        Ok(stream)
    }

    /// Stream until shutdown (then drain, report and end cleanly) or an error.
    async fn stream(
        &mut self,
        mut stream: ReplicationStream,
        shutdown: &mut Shutdown,
        tx: &mpsc::Sender<SinkBatch>,
        confirmed_rx: &mut watch::Receiver<Confirmed>,
    ) -> Result<(), PipelineError> {
        let mut status = tokio::time::interval(self.cfg.status_interval);
        status.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            // Hand a waiting batch to the sink if there is room.
            if let Some(batch) = self.ready.take() {
                match tx.try_send(batch) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => self.ready = Some(b),
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return Err(PipelineError::SinkGone)
                    }
                }
            }
            if stopping && self.ready.is_none() && !self.builder.in_transaction() {
                break;
            }
            let reading = self.ready.is_none();
            tokio::select! {
                biased;
                _ = shutdown.wait(), if !stopping => {
                    stopping = true;
                    tracing::info!("stopping at the next transaction boundary");
                }
                _ = status.tick() => {
                    self.send_status(&mut stream, false).await?;
                }
                changed = confirmed_rx.changed() => {
                    if changed.is_err() {
                        return Err(PipelineError::SinkGone);
                    }
                    let c = *confirmed_rx.borrow_and_update();
                    self.on_confirmed(c);
                    // Tell the server soon: it can release WAL, and lag shows truly.
                    if self.last_status.elapsed() >= Duration::from_millis(10) {
                        self.send_status(&mut stream, false).await?;
                    }
                }
                permit = tx.reserve(), if !reading => {
                    let permit = permit.map_err(|_| PipelineError::SinkGone)?;
                    if let Some(b) = self.ready.take() {
                        permit.send(b);
                    }
                }
                event = stream.next_event(), if reading => {
                    let event = event?;
                    if self.handle(event, &mut stream).await? {
                        return Ok(());
                    }
                    // Work through what is already buffered before polling again.
                    let mut budget = 4096;
                    while self.ready.is_none()
                        && budget > 0
                        && (!stopping || self.builder.in_transaction())
                    {
                        budget -= 1;
                        match stream.buffered_event()? {
                            Some(event) => {
                                if self.handle(event, &mut stream).await? {
                                    return Ok(());
                                }
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        // Drained to a transaction boundary: wait for the sink to confirm what it has,
        // still answering the server, then report the final position.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.cp.confirmed() < self.cp.handed_off() {
            tokio::select! {
                changed = confirmed_rx.changed() => {
                    if changed.is_err() { break; }
                    let c = *confirmed_rx.borrow_and_update();
                    self.on_confirmed(c);
                }
                _ = status.tick() => self.send_status(&mut stream, false).await?,
                // Data read now is not handed off: it is streamed again next start.
                event = stream.next_event() => {
                    if let ReplicationEvent::Keepalive { reply_requested: true, .. } = event? {
                        self.send_status(&mut stream, false).await?;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("the sink did not confirm everything within 30 s; unconfirmed changes will be streamed again");
                    break;
                }
            }
        }
        self.send_status(&mut stream, false).await?;
        tracing::info!(flushed = %self.cp.flush_position(), "final status sent");
        if let Err(e) = stream.finish().await {
            tracing::debug!(error = %e, "ending the replication stream");
        }
        Ok(())
    }

    /// The sink confirmed more.
    fn on_confirmed(&mut self, c: Confirmed) {
        self.cp.on_confirmed(c.end);
        self.builder.acknowledged(c.position);
    }

    async fn send_status(
        &mut self,
        stream: &mut ReplicationStream,
        reply: bool,
    ) -> Result<(), PipelineError> {
        let flush = self.cp.flush_position();
        self.metrics.confirmed_lsn.set(flush.0 as i64);
        self.metrics.received_lsn.set(self.cp.received().0 as i64);
        self.metrics
            .lag_bytes
            .set(self.cp.received().0.saturating_sub(flush.0) as i64);
        while let Some(&(end, _)) = self.unconfirmed.front() {
            if end > self.cp.confirmed() {
                break;
            }
            self.unconfirmed.pop_front();
        }
        let lag = match self.unconfirmed.front() {
            Some((_, ts)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                (now - (ts.seconds as f64 + f64::from(ts.nanos) / 1e9)).max(0.0)
            }
            None => 0.0,
        };
        self.metrics.lag_seconds.set(lag);
        stream.send_status(self.cp.received(), flush, reply).await?;
        self.last_status = std::time::Instant::now();
        Ok(())
    }

    /// Handle one event; `true` when the server ended the stream.
    async fn handle(
        &mut self,
        event: ReplicationEvent,
        stream: &mut ReplicationStream,
    ) -> Result<bool, PipelineError> {
        match event {
            ReplicationEvent::XLogData {
                wal_start,
                wal_end,
                data,
            } => {
                self.metrics.bytes_received.inc_by(data.len() as u64);
                self.cp.on_received(wal_end);
                self.on_message(wal_start, data).await?;
            }
            ReplicationEvent::Keepalive {
                wal_end,
                reply_requested,
            } => {
                self.metrics.keepalives.inc();
                self.cp.on_keepalive(wal_end);
                if reply_requested {
                    self.send_status(stream, false).await?;
                }
            }
            ReplicationEvent::End => return Ok(true),
        }
        Ok(false)
    }

    async fn on_message(&mut self, at: Lsn, data: Bytes) -> Result<(), PipelineError> {
        let msg =
            pgoutput::parse(&data).map_err(|source| PipelineError::Decode { lsn: at, source })?;
        match msg {
            PgOutput::Begin {
                final_lsn,
                commit_ts,
                ..
            } => {
                self.skipping = final_lsn <= self.last_handed_commit;
                self.builder.begin(final_lsn, commit_ts);
                self.cp.on_begin();
                self.commit_ts = crate::decode::value::Timestamp::from_pg_micros(commit_ts);
            }
            PgOutput::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.builder.commit();
                if self.skipping {
                    self.skipping = false;
                    self.cp.on_skipped_commit();
                    return Ok(());
                }
                self.flush_chunk(Some(end_lsn));
                self.last_handed_commit = commit_lsn;
                self.cp.on_handed_off(end_lsn);
                self.metrics.transactions.inc();
                self.metrics
                    .last_commit_timestamp
                    .set(self.commit_ts.seconds);
                self.unconfirmed.push_back((end_lsn, self.commit_ts));
            }
            PgOutput::Relation {
                relation_id,
                namespace,
                name,
                replica_identity,
                columns,
            } => {
                self.on_relation(relation_id, namespace, name, replica_identity, &columns)
                    .await?;
            }
            PgOutput::Insert { relation_id, new } if !self.skipping => {
                self.change(relation_id, Op::Insert, None, Some(&new))
                    .await?;
            }
            PgOutput::Update {
                relation_id,
                old,
                new,
            } if !self.skipping => {
                self.change(relation_id, Op::Update, old.as_ref(), Some(&new))
                    .await?;
            }
            PgOutput::Delete { relation_id, old } if !self.skipping => {
                self.change(relation_id, Op::Delete, Some(&old), None)
                    .await?;
            }
            PgOutput::Truncate { relation_ids, .. } if !self.skipping => {
                while let Some(need) = self.builder.truncate(&relation_ids, &mut self.chunk)? {
                    self.provide(need).await?;
                }
            }
            PgOutput::Message {
                prefix, content, ..
            } => {
                tracing::debug!(prefix, bytes = content.len(), "logical decoding message");
            }
            PgOutput::Origin { name, .. } => tracing::debug!(origin = name, "origin"),
            _ => {}
        }
        if self.chunk.len() >= BATCH_ITEMS {
            self.flush_chunk(None);
        }
        Ok(())
    }

    /// Move the envelopes built so far into a batch for the sink.
    fn flush_chunk(&mut self, commit_end: Option<Lsn>) {
        let items = std::mem::take(&mut self.chunk)
            .into_iter()
            .map(|o| Publish {
                subject: Subject::from(o.subject),
                payload: o.payload,
                msg_id: o.msg_id,
                position: o.position,
            })
            .collect();
        debug_assert!(self.ready.is_none());
        let commit_ts = commit_end.map(|_| self.commit_ts);
        self.ready = Some(SinkBatch {
            items,
            commit_end,
            commit_ts,
        });
    }

    async fn change(
        &mut self,
        relation_id: u32,
        op: Op,
        old: Option<&OldTuple<'_>>,
        new: Option<&[TupleValue<'_>]>,
    ) -> Result<(), PipelineError> {
        let before = self.chunk.len();
        let skipped_before = self.builder.replays_skipped();
        while let Some(need) = self
            .builder
            .change(relation_id, op, old, new, &mut self.chunk)?
        {
            self.provide(need).await?;
        }
        self.metrics
            .replays_skipped
            .inc_by(self.builder.replays_skipped() - skipped_before);
        if let Some(c) = self.counters.get(&relation_id) {
            let n = (self.chunk.len() - before) as u64;
            match op {
                Op::Insert => c.insert.inc_by(n),
                Op::Update => c.update.inc_by(n),
                _ => c.delete.inc_by(n),
            }
        }
        Ok(())
    }

    /// Load what the envelope stage asked for.
    async fn provide(&mut self, need: Need) -> Result<(), PipelineError> {
        match need {
            Need::Toast(needed) => {
                tracing::warn!(table = %format!("{}.{}", needed.schema, needed.table), columns = ?needed.columns,
                    "unchanged TOAST value not known: fetching it from the table");
                self.metrics.toast_fetches.inc();
                let texts = self
                    .catalog
                    .fetch_row_columns(
                        &needed.schema,
                        &needed.table,
                        &needed.key_columns,
                        &needed.columns,
                    )
                    .await?;
                self.builder.provide_toast(&needed, &texts)?;
            }
            Need::KeyState { key, subject } => {
                let store = self
                    .store
                    .as_ref()
                    .expect("tracked sequences without a store are volatile");
                self.metrics.key_state_loads.inc();
                let loaded = store
                    .load_key(&subject)
                    .await
                    .map_err(PipelineError::Store)?;
                self.builder
                    .provide_key_state(key, loaded.map(|(state, _)| state));
            }
        }
        Ok(())
    }

    async fn on_relation(
        &mut self,
        relation_id: u32,
        namespace: &str,
        name: &str,
        replica_identity: u8,
        columns: &[RelationColumn<'_>],
    ) -> Result<(), PipelineError> {
        let oids: Vec<u32> = columns.iter().map(|c| c.type_oid).collect();
        for _ in 0..8 {
            let missing = self.types.missing(oids.iter().copied());
            if missing.is_empty() {
                break;
            }
            let rows = self.catalog.types(&missing).await?;
            if rows.is_empty() {
                break;
            }
            self.types.add_rows(rows);
        }
        let cols: Vec<Column> = columns
            .iter()
            .map(|c| Column {
                name: c.name.to_string(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                kind: self.types.resolve(c.type_oid),
            })
            .collect();
        // The key: primary key (else replica identity index) in key order, from the
        // catalog; the Relation message's identity flags when the catalog disagrees.
        let names = self.catalog.key_columns(relation_id).await?;
        let from_catalog: Option<Vec<usize>> = names
            .iter()
            .map(|n| cols.iter().position(|c| &c.name == n))
            .collect();
        let key = match from_catalog {
            Some(k) if !k.is_empty() => k,
            _ => columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_identity() && replica_identity != b'f')
                .map(|(i, _)| i)
                .collect(),
        };
        let qualified = format!("{namespace}.{name}");
        if let Some(store) = &self.store {
            if !self.builder.has_schema_history(&qualified) {
                let history = store
                    .load_schema(namespace, name)
                    .await
                    .map_err(PipelineError::Store)?;
                tracing::debug!(table = %qualified, versions = history.entries.len(), "schema history loaded");
                self.builder.provide_schema_history(&qualified, history);
            }
        }
        let update =
            self.builder
                .on_relation(relation_id, namespace, name, replica_identity, cols, key)?;
        if let (Some(store), Some(history)) = (&self.store, &update.history_to_store) {
            store
                .store_schema(namespace, name, history)
                .await
                .map_err(PipelineError::Store)?;
        }
        if let Some(prev) = update.previous {
            if prev != update.current {
                self.metrics
                    .schema_changes
                    .with_label_values(&[&update.table])
                    .inc();
                tracing::info!(table = %update.table, from = %prev, to = %update.current, "schema version changed");
            }
        }
        let c = &self.metrics.changes;
        self.counters.insert(
            relation_id,
            TableCounters {
                insert: c.with_label_values(&[&update.table, "insert"]),
                update: c.with_label_values(&[&update.table, "update"]),
                delete: c.with_label_values(&[&update.table, "delete"]),
            },
        );
        Ok(())
    }
}

/// The delivery chosen at start-up.
#[allow(clippy::large_enum_variant)] // one value, built once
enum AnySink {
    Core(NatsSink),
    JetStream(JetStreamSink),
}

impl AnySink {
    async fn run(
        self,
        rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<Confirmed>,
    ) -> Result<(), SinkError> {
        match self {
            AnySink::Core(s) => s.run(rx, confirmed).await,
            AnySink::JetStream(s) => s.run(rx, confirmed).await,
        }
    }
}

/// Every 10 s: the slot's state from `pg_replication_slots`, as metrics.
async fn monitor_slot(url: String, slot: String, timeout: Duration, metrics: Arc<Metrics>) {
    let mut catalog: Option<Catalog> = None;
    loop {
        if catalog.as_ref().is_none_or(|c| c.is_closed()) {
            catalog = Catalog::connect(&url, timeout).await.ok();
        }
        if let Some(c) = &catalog {
            match c.slot_health(&slot).await {
                Ok(Some(h)) => {
                    metrics.slot_active.set(i64::from(h.active));
                    for status in ["reserved", "extended", "unreserved", "lost"] {
                        metrics
                            .slot_wal_status
                            .with_label_values(&[status])
                            .set(i64::from(h.wal_status.as_deref() == Some(status)));
                    }
                    metrics
                        .slot_safe_wal_size
                        .set(h.safe_wal_size.unwrap_or(-1));
                    metrics.slot_retained_wal.set(h.retained_bytes.unwrap_or(0));
                }
                Ok(None) => metrics.slot_active.set(0),
                Err(e) => tracing::debug!(error = %e, "reading the slot's state"),
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

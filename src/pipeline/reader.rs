//! The reader: one task that reads the replication stream, decodes each pgoutput
//! message, builds envelopes (all in the read buffer, in large batches) and hands
//! them to the sink behind a bounded channel. When the channel is full it stops
//! reading WAL but keeps sending status updates on its own timer, so a slow NATS never
//! makes PostgreSQL drop the connection (`wal_sender_timeout`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::requests::Requests;
use super::PipelineError;
use crate::checkpoint::Checkpoint;
use crate::config::RunConfig;
use crate::decode::types::TypeRegistry;
use crate::envelope::EnvelopeBuilder;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::sink::{Confirmed, SinkBatch};
use crate::source::catalog::Catalog;
use crate::source::{
    slot, ConnectParams, ReplicationConnection, ReplicationEvent, ReplicationStream,
};
use crate::state::StateStore;
use crate::wire::{Lsn, Timestamp};

mod apply;
mod requests_io;
mod snapshot_io;

/// How soon after a confirmation the server hears of it (status updates no more often).
const STATUS_SOON: Duration = Duration::from_millis(10);

/// Envelopes per batch handed to the sink.
const BATCH_ITEMS: usize = 1024;

/// Per-table change counters, resolved once (no label lookups on the hot path).
struct TableCounters {
    insert: IntCounter,
    update: IntCounter,
    delete: IntCounter,
}

impl TableCounters {
    fn new(metrics: &Metrics, table: &str) -> Self {
        let c = &metrics.envelope.changes;
        TableCounters {
            insert: c.with_label_values(&[table, "insert"]),
            update: c.with_label_values(&[table, "update"]),
            delete: c.with_label_values(&[table, "delete"]),
        }
    }
}

/// The periodic progress line: quiet while idle.
pub(super) struct Progress {
    interval: Duration,
    since: Instant,
    /// Changes turned into envelopes since the last line.
    pub(super) changes: u64,
}

impl Progress {
    fn new(interval: Duration) -> Self {
        Progress {
            interval,
            since: Instant::now(),
            changes: 0,
        }
    }

    /// A line when the interval passed and changes flowed in it.
    fn log_if_due(&mut self, cp: &Checkpoint, last_commit: Timestamp) {
        let elapsed = self.since.elapsed();
        if elapsed < self.interval {
            return;
        }
        if self.changes > 0 {
            tracing::info!(
                changes = self.changes,
                changes_per_s = (self.changes as f64 / elapsed.as_secs_f64()).round(),
                lag_bytes = cp.received().0.saturating_sub(cp.confirmed().0),
                last_commit = %last_commit.to_rfc3339(),
                "progress"
            );
        }
        self.since = Instant::now();
        self.changes = 0;
    }
}

/// The reader side: decode, envelope, checkpoint.
pub(super) struct ChangeReader {
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
    chunk: Vec<crate::envelope::Outgoing>,
    /// A batch the channel had no room for.
    ready: Option<SinkBatch>,
    /// Commit LSN of the last transaction handed to the sink: after a reconnect,
    /// transactions up to it are replays of what the sink already has.
    last_handed_commit: Lsn,
    skipping: bool,
    /// No replication stream was opened yet by this process.
    first_open: bool,
    /// When the last standby status update was sent.
    last_status: Instant,
    /// A confirmation arrived since it was sent: send one soon.
    status_due: bool,
    commit_ts: Timestamp,
    /// Transactions handed to the sink and not yet confirmed: (end LSN, commit time).
    unconfirmed: VecDeque<(Lsn, Timestamp)>,
    counters: HashMap<u32, TableCounters, foldhash::fast::RandomState>,
    progress: Progress,
    /// The published tables (what a snapshot reads).
    tables: Vec<String>,
    /// The snapshot under way, if any.
    snapshot: Option<super::snapshot::Snapshot>,
    snapshot_planned: bool,
    /// `--snapshot only` and the snapshot is complete: stop.
    snapshot_only_done: bool,
    /// Every envelope at or before this position is confirmed.
    confirmed_position: crate::wire::Position,
    /// When the last heartbeat seen was written (Unix seconds).
    last_heartbeat: Option<f64>,
    /// This process streamed from the slot already.
    streamed_before: bool,
    /// The end of the last transaction completed in `chunk` and not yet handed to
    /// the sink (small transactions go to the sink together), and the commit times
    /// of those transactions.
    pending_commit: Option<Lsn>,
    pending_commit_times: Vec<Timestamp>,
    /// When the oldest completed transaction not yet handed to the sink completed.
    pending_since: Option<std::time::Instant>,
    /// When transactions were last handed to the sink.
    last_handover: std::time::Instant,
    /// Tables refetch requests read, as the catalog described them.
    refetch_tables: HashMap<String, crate::source::chunks::TableInfo>,
}

impl ChangeReader {
    pub(super) fn new(
        cfg: RunConfig,
        metrics: Arc<Metrics>,
        catalog: Catalog,
        store: Option<StateStore>,
        builder: EnvelopeBuilder,
        tables: Vec<String>,
    ) -> Self {
        ChangeReader {
            tables,
            snapshot: None,
            snapshot_planned: false,
            snapshot_only_done: false,
            confirmed_position: Default::default(),
            last_heartbeat: None,
            streamed_before: false,
            refetch_tables: HashMap::new(),
            pending_commit: None,
            pending_commit_times: Vec::new(),
            pending_since: None,
            last_handover: std::time::Instant::now(),
            progress: Progress::new(cfg.progress_interval),
            builder,
            store,
            cfg,
            metrics,
            catalog,
            types: TypeRegistry::new(),
            cp: Checkpoint::default(),
            chunk: Vec::new(),
            ready: None,
            last_handed_commit: Lsn(0),
            skipping: false,
            first_open: true,
            last_status: Instant::now(),
            status_due: false,
            commit_ts: Timestamp {
                seconds: 0,
                nanos: 0,
            },
            unconfirmed: VecDeque::new(),
            counters: HashMap::default(),
        }
    }

    /// Connect, make sure the slot exists, and start streaming from it.
    pub(super) async fn open(
        &mut self,
        params: &ConnectParams,
    ) -> Result<ReplicationStream, PipelineError> {
        let mut conn = ReplicationConnection::connect(params).await?;
        let known = match &self.store {
            Some(store) => store.slot_known(&self.cfg.slot).await?,
            None => false,
        };
        let may_create = self.cfg.recreate_slot || !(known || self.streamed_before);
        let (start, created) =
            slot::ensure_slot(&mut conn, &self.catalog, &self.cfg.slot, may_create).await?;
        if let (true, Some(store)) = (created || !known, &self.store) {
            store
                .record_slot(&self.cfg.slot, &start.to_string())
                .await?;
        }
        self.streamed_before = true;
        let stream = conn
            .start_replication(&self.cfg.slot, Lsn(0), &self.cfg.publication)
            .await?;
        // We hold the slot now: nobody else publishes. If somebody did since this
        // process last wrote (a standby that took over meanwhile), what we hold in
        // memory may be stale: start again from the stream.
        if let Some(store) = &self.store {
            if self.first_open || store.written_by_others().await? {
                let filter = store.subject_filter().await?;
                self.builder.reset_key_state(Some(filter));
                self.chunk.clear();
                self.ready = None;
                self.last_handed_commit = Lsn(0);
            }
        }
        self.first_open = false;
        self.resume_checkpoint(start);
        // An open transaction's envelopes built so far stay: the stream starts again
        // at or before its Begin, recognises them as already built, and goes on.
        self.skipping = false;
        tracing::info!(slot = %self.cfg.slot, from = %start, "streaming");
        // A chunk read before a reconnect is read again.
        if let Some(s) = self.snapshot.as_mut() {
            s.pending = None;
        }
        self.plan_snapshot(created).await?;
        self.metrics.source.streaming.set(1);
        self.metrics.set_ready(true, "");
        Ok(stream)
    }

    /// Start from the slot's position, keeping what this process already knows (it
    /// only grows).
    fn resume_checkpoint(&mut self, start: Lsn) {
        let mut cp = Checkpoint::starting_at(start.max(self.cp.confirmed()));
        cp.on_received(self.cp.received());
        cp.on_confirmed(self.cp.confirmed());
        cp.on_handed_off(self.cp.handed_off().max(start));
        self.cp = cp;
    }

    /// Stream until shutdown (then drain, report and end cleanly) or an error.
    pub(super) async fn stream(
        &mut self,
        mut stream: ReplicationStream,
        shutdown: &mut Shutdown,
        tx: &mpsc::Sender<SinkBatch>,
        confirmed_rx: &mut watch::Receiver<Confirmed>,
        requests: &mut Requests,
    ) -> Result<(), PipelineError> {
        let mut status = tokio::time::interval(self.cfg.status_interval);
        status.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stopping = false;
        // Once stopping: the shutdown budget, shared by reaching a transaction
        // boundary and by waiting for confirmations.
        let mut stop_at = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
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
            self.flush_completed();
            if stopping && self.ready.is_none() && self.pending_commit.is_some() {
                self.flush_chunk(); // nothing lingers past a shutdown
            }
            if stopping && self.ready.is_none() && !self.builder.in_transaction() {
                break;
            }
            let reading = self.ready.is_none();
            let linger_until = self.linger_deadline();
            tokio::select! {
                biased;
                _ = shutdown.wait(), if !stopping => {
                    stopping = true;
                    stop_at = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
                    tracing::info!("stopping at the next transaction boundary");
                }
                _ = tokio::time::sleep_until(stop_at), if stopping => {
                    tracing::warn!("the shutdown budget ran out before the sink took everything");
                    break;
                }
                _ = status.tick() => {
                    self.send_status(&mut stream, false).await?;
                    self.progress.log_if_due(&self.cp, self.commit_ts);
                    self.update_heartbeat_age();
                    self.store_snapshot_progress().await?;
                    if self.snapshot_only_done && !stopping {
                        stopping = true;
                        stop_at = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
                        tracing::info!("--snapshot only: the snapshot is complete; stopping");
                    }
                }
                _ = std::future::ready(()), if reading && !stopping && self.wants_chunk() => {
                    self.start_chunk(&mut stream).await?;
                }
                changed = confirmed_rx.changed() => {
                    if changed.is_err() {
                        return Err(PipelineError::SinkGone);
                    }
                    let c = *confirmed_rx.borrow_and_update();
                    self.on_confirmed(c);
                    // Tell the server soon (at most every STATUS_SOON): it can release
                    // WAL, and lag shows truly.
                    if self.last_status.elapsed() >= STATUS_SOON {
                        self.send_status(&mut stream, false).await?;
                    } else {
                        self.status_due = true;
                    }
                }
                _ = tokio::time::sleep_until(linger_until.unwrap_or_else(tokio::time::Instant::now)), if linger_until.is_some() => {}
                _ = tokio::time::sleep_until((self.last_status + STATUS_SOON).into()), if self.status_due => {
                    self.send_status(&mut stream, false).await?;
                }
                Some(request) = requests.next(), if !stopping && !self.builder.in_transaction() => {
                    self.answer(request).await?;
                }
                permit = tx.reserve(), if !reading => {
                    let permit = permit.map_err(|_| PipelineError::SinkGone)?;
                    if let Some(b) = self.ready.take() {
                        permit.send(b);
                    }
                }
                event = stream.next_event(), if reading => {
                    self.handle(event?, &mut stream).await?;
                    self.handle_buffered(&mut stream, stopping).await?;
                }
            }
        }
        self.finish(stream, confirmed_rx, stop_at).await
    }

    /// Work through what is already buffered before polling the socket again (while
    /// the sink has room, and only to the end of the transaction once stopping).
    async fn handle_buffered(
        &mut self,
        stream: &mut ReplicationStream,
        stopping: bool,
    ) -> Result<(), PipelineError> {
        let mut budget = 4096;
        while self.ready.is_none() && budget > 0 && (!stopping || self.builder.in_transaction()) {
            budget -= 1;
            match stream.buffered_event()? {
                Some(event) => self.handle(event, stream).await?,
                None => break,
            }
        }
        self.flush_completed();
        Ok(())
    }

    /// Hand the transactions completed in the chunk to the sink (when it has room).
    fn flush_completed(&mut self) {
        if self.ready.is_none() && self.pending_commit.is_some() && self.linger_over() {
            self.flush_chunk();
        }
    }

    /// Completed transactions may go: they waited `--publish-linger`, or they are
    /// many, or the last hand-over is more than four lingers ago (only a dense stream
    /// of transactions is gathered; a sparse one never waits).
    fn linger_over(&self) -> bool {
        let linger = self.cfg.publish_linger;
        self.last_handover.elapsed() >= linger * 4
            || self.chunk.len() >= BATCH_ITEMS / 4
            || self
                .pending_since
                .is_none_or(|since| since.elapsed() >= linger)
    }

    /// When the lingering transactions go (`None`: nothing lingers).
    fn linger_deadline(&self) -> Option<tokio::time::Instant> {
        let since = self.pending_since.filter(|_| self.ready.is_none())?;
        Some((since + self.cfg.publish_linger).into())
    }

    /// Drained to a transaction boundary: wait for the sink to confirm what it has,
    /// still answering the server, then report the final position and end the stream.
    async fn finish(
        &mut self,
        mut stream: ReplicationStream,
        confirmed_rx: &mut watch::Receiver<Confirmed>,
        deadline: tokio::time::Instant,
    ) -> Result<(), PipelineError> {
        let mut status = tokio::time::interval(self.cfg.status_interval);
        while self.cp.confirmed() < self.cp.handed_off() {
            tokio::select! {
                changed = confirmed_rx.changed() => {
                    if !self.take_confirmed(changed, confirmed_rx) { break; }
                }
                _ = status.tick() => self.send_status(&mut stream, false).await?,
                // Data read now is not handed off: it is streamed again next start.
                event = stream.next_event() => {
                    if let ReplicationEvent::Keepalive { reply_requested: true, .. } = event? {
                        self.send_status(&mut stream, false).await?;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.send_status(&mut stream, false).await?;
        tracing::info!(flushed = %self.cp.flush_position(), "final status sent");
        // What the snapshot got confirmed (and its completion) is not lost either.
        if let Err(e) = self.store_snapshot_progress().await {
            tracing::warn!(error = %e, "storing the snapshot's progress");
        }
        if let Err(e) = stream.finish().await {
            tracing::debug!(error = %e, "ending the replication stream");
        }
        self.shutdown_outcome()
    }

    /// At the end: an error when changes were left unconfirmed (they stay in the slot).
    pub(super) fn shutdown_outcome(&mut self) -> Result<(), PipelineError> {
        let pending = self.ready.is_some() || self.builder.in_transaction();
        if self.cp.confirmed() < self.cp.handed_off() || pending {
            return Err(PipelineError::Unconfirmed {
                transactions: self.unconfirmed.len().max(1),
                flushed: self.cp.flush_position(),
            });
        }
        Ok(())
    }

    /// Apply what the sink confirmed; `false` when the sink is gone.
    fn take_confirmed(
        &mut self,
        changed: Result<(), watch::error::RecvError>,
        confirmed_rx: &mut watch::Receiver<Confirmed>,
    ) -> bool {
        if changed.is_err() {
            return false;
        }
        let c = *confirmed_rx.borrow_and_update();
        self.on_confirmed(c);
        true
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Wait (at most `within`) until the sink confirmed everything handed to it.
    pub(super) async fn wait_confirmed(
        &mut self,
        confirmed_rx: &mut watch::Receiver<Confirmed>,
        shutdown: &mut Shutdown,
        within: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        while self.cp.confirmed() < self.cp.handed_off() {
            tokio::select! {
                changed = confirmed_rx.changed() => {
                    if !self.take_confirmed(changed, confirmed_rx) { break; }
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.wait() => break,
            }
        }
    }

    /// A new catalog connection when the old one was closed (the server restarted).
    pub(super) async fn reconnect_catalog(&mut self, params: &ConnectParams) {
        if !self.catalog.is_closed() {
            return;
        }
        match Catalog::connect(params, self.cfg.connect_timeout).await {
            Ok(c) => self.catalog = c,
            Err(e) => tracing::warn!(error = %e, "catalog connection not back yet"),
        }
    }

    /// The sink confirmed more.
    fn on_confirmed(&mut self, c: Confirmed) {
        self.confirmed_position = self.confirmed_position.max(c.position);
        self.cp.on_confirmed(c.end);
        self.builder.acknowledged(c.position);
    }

    async fn send_status(
        &mut self,
        stream: &mut ReplicationStream,
        reply: bool,
    ) -> Result<(), PipelineError> {
        let flush = self.cp.flush_position();
        self.metrics.source.confirmed_lsn.set(flush.0 as i64);
        self.metrics
            .source
            .received_lsn
            .set(self.cp.received().0 as i64);
        self.metrics
            .source
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
        self.metrics.source.lag_seconds.set(lag);
        stream.send_status(self.cp.received(), flush, reply).await?;
        self.last_status = Instant::now();
        self.status_due = false;
        Ok(())
    }
}

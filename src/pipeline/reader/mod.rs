//! The reader: one task that reads the replication stream, decodes each pgoutput
//! message, builds envelopes (all in the read buffer, in large batches) and hands
//! them to the sink behind a bounded channel. When the channel is full it stops
//! reading WAL but keeps sending status updates on its own timer, so a slow NATS never
//! makes PostgreSQL drop the connection (`wal_sender_timeout`).
//!
//! [`ChangeReader::stream`] is a `select!` that dispatches to small owned parts:
//! - [`open`]: the slot and the replication stream opened (again);
//! - [`changes`]: the change loop (pgoutput messages into the envelope stage);
//! - [`streamed`]: large transactions streamed while in progress, held (in memory,
//!   then spill files) until their commit replays them through the change loop;
//! - [`envelopes`]: the envelope builder and its loaders (key states, TOAST, catalog);
//! - [`prefetch`]: the key states the read buffer will ask for, loaded in batches;
//! - [`handover`]: batches for the sink, with the linger;
//! - [`status`]: the checkpoint, the unconfirmed transactions, status updates, lag;
//! - [`snapshot_driver`] (with [`snapshot_read`]): existing rows between watermarks;
//! - [`repair`]: keys published with an unavailable TOAST value, read again;
//! - [`answerer`]: refetch and re-snapshot requests; [`publication`]: its tables now;
//! - [`progress`]: the progress line and the heartbeat's age.

mod answerer;
mod changes;
mod envelopes;
pub(crate) use envelopes::{catalog_columns, resolve_from_catalog};
mod handover;
mod open;
mod prefetch;
mod progress;
mod publication;
mod recent;
mod repair;
mod snapshot_driver;
mod snapshot_read;
mod status;
mod streamed;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::requests::Requests;
use super::snapshot::SnapshotSettings;
use super::PipelineError;
use crate::envelope::EnvelopeBuilder;
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;
use crate::sink::{Confirmed, SinkBatch};
use crate::source::catalog::Catalog;
use crate::source::SourceSettings;
use crate::source::{ReplicationEvent, ReplicationStream};
use crate::state::StateStore;

use answerer::RequestAnswerer;
use changes::{Replaying, Transactions};
use envelopes::Envelopes;
use handover::Handover;
use progress::{HeartbeatAge, Progress};
use publication::PublicationWatch;
use repair::Repairs;
use snapshot_driver::SnapshotDriver;
use status::StatusReporter;
use streamed::StreamBuffers;

/// How the reader hands over, reports and stops (`config/` builds it from the flags).
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// How long a completed transaction may wait for the next ones (`--publish-linger`).
    pub publish_linger: Duration,
    /// Bytes of streamed, uncommitted changes held in memory (`--stream-memory`).
    pub stream_memory: usize,
    /// Where the rest goes (`--stream-spill-dir`).
    pub stream_spill_dir: std::path::PathBuf,
    /// The budget of a shutdown (`--shutdown-timeout`).
    pub shutdown_timeout: Duration,
    /// Seconds between progress lines (`--progress-interval`).
    pub progress_interval: Duration,
    pub snapshot: SnapshotSettings,
    /// How long a confirmed WAL position waits before it is reported to PostgreSQL
    /// (`--flush-delay`: the NATS servers' sync interval).
    pub flush_delay: Duration,
}

/// Once a stop is asked for: the shutdown budget, shared by reaching a transaction
/// boundary and by waiting for confirmations.
#[derive(Default)]
struct Stop {
    at: Option<Instant>,
}

impl Stop {
    fn requested(&self) -> bool {
        self.at.is_some()
    }

    fn begin(&mut self, budget: Duration, why: &str) {
        if self.at.is_none() {
            self.at = Some(Instant::now() + budget);
            tracing::info!("{why}");
        }
    }

    fn deadline(&self) -> Instant {
        self.at
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }
}

/// The reader side: decode, envelope, checkpoint.
pub(super) struct ChangeReader {
    source: SourceSettings,
    settings: ReaderSettings,
    metrics: Arc<Metrics>,
    envelopes: Envelopes,
    handover: Handover,
    status: StatusReporter,
    txn: Transactions,
    /// Streamed transactions in progress, and the committed one being worked through.
    streams: StreamBuffers,
    replay: Option<Replaying>,
    snapshot: SnapshotDriver,
    repairs: Repairs,
    answerer: RequestAnswerer,
    progress: Progress,
    heartbeat: HeartbeatAge,
    /// The published tables (what a snapshot reads, what a refetch may ask for), as
    /// last read.
    tables: Vec<String>,
    publication: PublicationWatch,
    /// No replication stream was opened yet by this process.
    first_open: bool,
    /// This process streamed from the slot already.
    streamed_before: bool,
    /// Messages of the read buffer that the last look ahead covered and that are not
    /// worked through yet.
    ahead_left: usize,
}

impl ChangeReader {
    pub(super) fn new(
        (source, settings): (SourceSettings, ReaderSettings),
        metrics: Arc<Metrics>,
        (catalog, store): (Catalog, Option<StateStore>),
        builder: EnvelopeBuilder,
        tables: Vec<String>,
    ) -> Self {
        ChangeReader {
            handover: Handover::new(settings.publish_linger),
            status: StatusReporter::new(metrics.clone(), settings.flush_delay),
            txn: Transactions::default(),
            streams: StreamBuffers::new(settings.stream_memory, settings.stream_spill_dir.clone()),
            replay: None,
            snapshot: SnapshotDriver::new(
                settings.snapshot.clone(),
                source.slot.clone(),
                metrics.clone(),
            ),
            repairs: Repairs::default(),
            answerer: RequestAnswerer::default(),
            progress: Progress::new(settings.progress_interval),
            heartbeat: HeartbeatAge::new(metrics.clone()),
            envelopes: Envelopes::new(builder, catalog, store, metrics.clone()),
            tables,
            publication: PublicationWatch::default(),
            first_open: true,
            streamed_before: false,
            ahead_left: 0,
            source,
            settings,
            metrics,
        }
    }

    /// Stream until shutdown (then drain, report and end cleanly) or an error.
    pub(super) async fn stream(
        &mut self,
        mut stream: ReplicationStream,
        shutdown: &mut Shutdown,
        (tx, confirmed_rx): (&mpsc::Sender<SinkBatch>, &mut watch::Receiver<Confirmed>),
        requests: &mut Requests,
    ) -> Result<(), PipelineError> {
        let mut status = tokio::time::interval(self.source.status_interval);
        status.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stop = Stop::default();
        loop {
            self.offer_ready(tx)?;
            if self.drained(stop.requested()) {
                break;
            }
            let reading = !self.handover.is_blocked();
            let linger_until = self.handover.linger_deadline();
            let status_due = self.status.due_at();
            let idle = !stop.requested() && !self.in_transaction();
            tokio::select! {
                biased;
                _ = shutdown.wait(), if !stop.requested() => {
                    stop.begin(self.settings.shutdown_timeout, "stopping at the next transaction boundary");
                }
                _ = tokio::time::sleep_until(stop.deadline()), if stop.requested() => {
                    tracing::warn!("the shutdown budget ran out before the sink took everything");
                    break;
                }
                _ = status.tick() => self.on_status_tick(&mut stream, &mut stop).await?,
                _ = std::future::ready(()), if reading && idle && self.wants_chunk() => {
                    self.start_chunk(&mut stream).await?;
                }
                changed = confirmed_rx.changed() => {
                    self.take_confirmed(changed, confirmed_rx)?;
                    if self.status.confirmation_needs_update() {
                        self.status.send(&mut stream, false).await?;
                    }
                }
                _ = sleep_until(linger_until), if linger_until.is_some() => {}
                _ = sleep_until(status_due), if status_due.is_some() => {
                    self.status.send(&mut stream, false).await?;
                }
                Some(request) = requests.next(), if idle => self.answer(request, &mut stream).await?,
                permit = tx.reserve(), if !reading => {
                    let permit = permit.map_err(|_| PipelineError::SinkGone)?;
                    if let Some(b) = self.handover.take_ready() {
                        permit.send(b);
                    }
                }
                _ = std::future::ready(()), if reading && self.replay.is_some() => {
                    self.replay_some().await?;
                }
                event = stream.next_event(), if reading && self.replay.is_none() => {
                    let event = event?;
                    self.load_ahead(Some(&event), &stream).await?;
                    self.handle(event, &mut stream).await?;
                    self.handle_buffered(&mut stream, stop.requested()).await?;
                }
            }
        }
        self.finish(stream, confirmed_rx, stop.deadline()).await
    }

    /// Hand a waiting batch to the sink if it has room; batch completed transactions.
    fn offer_ready(&mut self, tx: &mpsc::Sender<SinkBatch>) -> Result<(), PipelineError> {
        if let Some(batch) = self.handover.take_ready() {
            match tx.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(b)) => self.handover.put_back(b),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(PipelineError::SinkGone),
            }
        }
        self.handover.batch_completed(self.status.cp.confirmed());
        Ok(())
    }

    /// Once stopping: nothing lingers, and the loop ends at a transaction boundary with
    /// everything handed to the sink.
    fn drained(&mut self, stopping: bool) -> bool {
        if !stopping {
            return false;
        }
        if !self.handover.is_blocked() && self.handover.has_completed() {
            self.handover.batch_completed_now();
        }
        !self.handover.is_blocked() && !self.in_transaction()
    }

    fn in_transaction(&self) -> bool {
        self.envelopes.builder.in_transaction()
    }

    /// The periodic work: a status update, the progress line, the heartbeat's age, the
    /// snapshot's confirmed progress; `--snapshot only` stops once it is complete.
    async fn on_status_tick(
        &mut self,
        stream: &mut ReplicationStream,
        stop: &mut Stop,
    ) -> Result<(), PipelineError> {
        // Waiting to catch up before a snapshot chunk: ask where the server is.
        let behind = self.status.cp.received() < self.snapshot.start_after;
        self.status.send(stream, behind).await?;
        // A waiting chunk goes out once the stream passed its watermark, also when
        // no transaction follows (a quiet database).
        self.emit_chunk_if_passed(self.status.cp.received()).await?;
        self.progress
            .log_if_due(&self.status.cp, self.txn.commit_ts);
        self.heartbeat.update();
        if !self.in_transaction() {
            self.refresh_tables_if_due().await?;
        }
        self.store_snapshot_progress().await?;
        if self.snapshot.only_done() {
            stop.begin(
                self.settings.shutdown_timeout,
                "--snapshot only: the snapshot is complete; stopping",
            );
        }
        Ok(())
    }

    /// Work through what is already buffered before polling the socket again (while
    /// the sink has room, and only to the end of the transaction once stopping).
    async fn handle_buffered(
        &mut self,
        stream: &mut ReplicationStream,
        stopping: bool,
    ) -> Result<(), PipelineError> {
        let mut budget = 4096;
        while !self.handover.is_blocked()
            && self.replay.is_none()
            && budget > 0
            && (!stopping || self.in_transaction())
        {
            budget -= 1;
            self.load_ahead_when_due(stream).await?;
            match stream.buffered_event()? {
                Some(event) => self.handle(event, stream).await?,
                None => break,
            }
        }
        self.emit_chunk_if_passed(self.status.cp.received()).await?;
        self.handover.batch_completed(self.status.cp.confirmed());
        Ok(())
    }

    /// Drained to a transaction boundary: wait for the sink to confirm what it has,
    /// still answering the server, then report the final position and end the stream.
    async fn finish(
        &mut self,
        mut stream: ReplicationStream,
        confirmed_rx: &mut watch::Receiver<Confirmed>,
        deadline: Instant,
    ) -> Result<(), PipelineError> {
        let mut status = tokio::time::interval(self.source.status_interval);
        while !self.status.all_confirmed() {
            tokio::select! {
                changed = confirmed_rx.changed() => {
                    if self.take_confirmed(changed, confirmed_rx).is_err() { break; }
                }
                _ = status.tick() => self.status.send(&mut stream, false).await?,
                // Data read now is not handed off: it is streamed again next start.
                event = stream.next_event() => {
                    if let ReplicationEvent::Keepalive { reply_requested: true, .. } = event? {
                        self.status.send(&mut stream, false).await?;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.status.send(&mut stream, false).await?;
        tracing::info!(flushed = %self.status.cp.flush_position(), "final status sent");
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
        let pending = self.handover.is_blocked() || self.in_transaction();
        if !self.status.all_confirmed() || pending {
            return Err(PipelineError::Unconfirmed {
                transactions: self.status.unconfirmed_transactions().max(1),
                flushed: self.status.cp.flush_position(),
            });
        }
        Ok(())
    }

    /// Apply what the sink confirmed; `SinkGone` when the sink is gone.
    fn take_confirmed(
        &mut self,
        changed: Result<(), watch::error::RecvError>,
        confirmed_rx: &mut watch::Receiver<Confirmed>,
    ) -> Result<(), PipelineError> {
        changed.map_err(|_| PipelineError::SinkGone)?;
        let c = *confirmed_rx.borrow_and_update();
        self.status.on_confirmed(c);
        self.envelopes.builder.acknowledged(c.position);
        Ok(())
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
        let deadline = Instant::now() + within;
        while !self.status.all_confirmed() {
            tokio::select! {
                changed = confirmed_rx.changed() => {
                    if self.take_confirmed(changed, confirmed_rx).is_err() { break; }
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.wait() => break,
            }
        }
    }

    /// A new catalog connection when the old one was closed (the server restarted).
    pub(super) async fn reconnect_catalog(&mut self) {
        self.envelopes
            .reconnect_catalog(&self.source.params, self.source.connect_timeout)
            .await;
    }
}

/// Sleep until `at` (a branch guarded by `at.is_some()`).
async fn sleep_until(at: Option<Instant>) {
    tokio::time::sleep_until(at.unwrap_or_else(Instant::now)).await;
}

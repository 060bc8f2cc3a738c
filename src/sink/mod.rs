//! The sink stage: publishing envelopes to NATS and confirming them.
//!
//! Two deliveries: [`jetstream`] (the default when the server has JetStream:
//! PubAck-gated, de-duplicated, the stream holding each key's state) and core NATS
//! ([`NatsSink`] here). For core NATS, publishes are pipelined: every batch waiting in the channel is written out, then
//! one confirmation round-trip (a message to walcast's own inbox, which the server
//! delivers only after everything this connection published before it) confirms them
//! all. Batches not confirmed (a timeout, or a reconnect in between, which may have
//! lost buffered writes) are published again: at-least-once, and a replay carries the
//! same bytes, so consumers drop it as stale.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use crate::envelope::sequence::Position;
use crate::lsn::Lsn;
use crate::metrics::Metrics;

pub mod jetstream;

/// Why the sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("NATS subscribe failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("the NATS client was closed")]
    Closed,
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("stream {stream} exists with a configuration walcast cannot use: {problems} (fix or delete the stream, or choose another --stream)")]
    StreamConflict { stream: String, problems: String },
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Publish {
    pub subject: Subject,
    pub payload: Bytes,
    /// `Nats-Msg-Id` (JetStream de-duplication).
    pub msg_id: String,
    /// `Walcast-Position`.
    pub position: Position,
}

/// Envelopes in commit order; `commit_end` is set on the last batch of a transaction.
#[derive(Debug, Default)]
pub struct SinkBatch {
    pub items: Vec<Publish>,
    pub commit_end: Option<Lsn>,
    /// Commit time of the transaction, on its last batch.
    pub commit_ts: Option<crate::decode::value::Timestamp>,
}

/// Observe commit → confirmation latency for the transactions of confirmed batches.
pub(crate) fn observe_commit_latency(metrics: &Metrics, batches: &[SinkBatch]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    for ts in batches.iter().filter_map(|b| b.commit_ts) {
        let at = ts.seconds as f64 + f64::from(ts.nanos) / 1e9;
        metrics
            .commit_to_publish_seconds
            .observe((now - at).max(0.0));
    }
}

/// What the sink has confirmed: every transaction ending at or before `end`, and every
/// envelope at or before `position` (progress inside a large transaction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confirmed {
    pub end: Lsn,
    pub position: Position,
}

/// Report confirmed batches.
pub(crate) fn report_confirmed(confirmed: &watch::Sender<Confirmed>, batches: &[SinkBatch]) {
    let end = batches.iter().rev().find_map(|b| b.commit_end);
    let position = batches
        .iter()
        .rev()
        .find_map(|b| b.items.last().map(|i| i.position));
    confirmed.send_modify(|c| {
        if let Some(e) = end {
            c.end = c.end.max(e);
        }
        if let Some(p) = position {
            c.position = c.position.max(p);
        }
    });
}

/// Connection state shared with the health endpoints.
#[derive(Debug, Default)]
pub struct NatsState {
    pub connected: AtomicBool,
    /// Bumped on every disconnect: a confirmation round-trip is only valid if the
    /// generation did not change since the batch was published.
    pub generation: AtomicU64,
}

/// Connect to NATS; afterwards the client reconnects by itself forever.
pub async fn connect(
    url: &str,
    timeout: Duration,
    state: Arc<NatsState>,
) -> Result<Client, SinkError> {
    let cb_state = state.clone();
    let client = async_nats::ConnectOptions::new()
        .name("walcast")
        .connection_timeout(timeout)
        .max_reconnects(None)
        .client_capacity(65_536)
        .event_callback(move |event| {
            let state = cb_state.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        state.connected.store(true, Ordering::SeqCst);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        state.generation.fetch_add(1, Ordering::SeqCst);
                        state.connected.store(false, Ordering::SeqCst);
                        tracing::warn!("NATS disconnected; reconnecting");
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        })
        .connect(url)
        .await
        .map_err(|source| SinkError::Connect {
            url: url.to_string(),
            source,
        })?;
    state.connected.store(true, Ordering::SeqCst);
    Ok(client)
}

/// Publishes batches and reports confirmed transaction ends.
pub struct NatsSink {
    client: Client,
    state: Arc<NatsState>,
    sync_subject: Subject,
    sync_sub: async_nats::Subscriber,
    round: u64,
    confirm_timeout: Duration,
    max_unconfirmed: usize,
    metrics: Arc<Metrics>,
}

impl NatsSink {
    pub async fn new(
        client: Client,
        state: Arc<NatsState>,
        confirm_timeout: Duration,
        max_unconfirmed: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SinkError> {
        let sync_subject = Subject::from(format!("{}.walcast-sync", client.new_inbox()));
        let sync_sub = client.subscribe(sync_subject.clone()).await?;
        Ok(NatsSink {
            client,
            state,
            sync_subject,
            sync_sub,
            round: 0,
            confirm_timeout,
            max_unconfirmed,
            metrics,
        })
    }

    /// One confirmation round-trip.
    async fn round_trip(&mut self) -> Result<(), &'static str> {
        self.round += 1;
        let token = Bytes::from(self.round.to_be_bytes().to_vec());
        self.client
            .publish(self.sync_subject.clone(), token.clone())
            .await
            .map_err(|_| "publish failed")?;
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.sync_sub.next()).await {
                Ok(Some(msg)) if msg.payload == token => return Ok(()),
                Ok(Some(_)) => continue, // an older round's answer
                Ok(None) => return Err("confirmation subscription closed"),
                Err(_) => return Err("no confirmation in time"),
            }
        }
    }

    /// Run until the channel closes and everything received was confirmed.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<Confirmed>,
    ) -> Result<(), SinkError> {
        let mut pending: Vec<SinkBatch> = Vec::new();
        let mut pending_items = 0usize;
        let mut closed = false;
        let mut backoff = Duration::from_millis(100);
        loop {
            if pending.is_empty() {
                if closed {
                    return Ok(());
                }
                match rx.recv().await {
                    Some(b) => {
                        pending_items += b.items.len();
                        pending.push(b);
                    }
                    None => return Ok(()),
                }
            }
            while pending_items < self.max_unconfirmed {
                match rx.try_recv() {
                    Ok(b) => {
                        pending_items += b.items.len();
                        pending.push(b);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            self.metrics.inflight_envelopes.set(pending_items as i64);
            let generation = self.state.generation.load(Ordering::SeqCst);
            let started = Instant::now();
            let mut write_failed = false;
            for batch in &pending {
                for item in &batch.items {
                    if self
                        .client
                        .publish(item.subject.clone(), item.payload.clone())
                        .await
                        .is_err()
                    {
                        write_failed = true;
                        break;
                    }
                }
                if write_failed {
                    break;
                }
            }
            let outcome = if write_failed {
                Err("publish failed")
            } else if pending_items == 0 {
                Ok(()) // only empty transactions: nothing to confirm
            } else {
                self.round_trip().await
            };
            let same_connection = self.state.generation.load(Ordering::SeqCst) == generation;
            match outcome {
                Ok(()) if same_connection => {
                    let elapsed = started.elapsed().as_secs_f64();
                    self.metrics.publish_seconds.observe(elapsed);
                    self.metrics.published.inc_by(pending_items as u64);
                    observe_commit_latency(&self.metrics, &pending);
                    report_confirmed(&confirmed, &pending);
                    pending.clear();
                    pending_items = 0;
                    backoff = Duration::from_millis(100);
                }
                outcome => {
                    let reason = match outcome {
                        Err(r) => r,
                        Ok(()) => "the connection changed before confirmation",
                    };
                    self.metrics.publish_retries.inc();
                    tracing::warn!(
                        reason,
                        envelopes = pending_items,
                        "NATS did not confirm; publishing again"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

//! The sink stage: publishing envelopes to NATS and confirming them.
//!
//! One [`Sink`] with three publishers: [`fast_batch`] (the default when the server has
//! JetStream 2.14+: fast-ingest batches, de-duplicated, chained, the stream holding
//! each key's state), [`jetstream`] (the same guarantees with one PubAck per message,
//! for older servers or streams without `allow_batched`) and [`core`] (core NATS,
//! confirmed by round-trips). All three take [`SinkBatch`]es from the reader, report
//! what is confirmed through a watch channel, and share the [`SinkSettings`], the retry
//! back-off and the metrics here; the two JetStream publishers share the chain of
//! expected stream sequences (`window`). [`nats`] holds the connection,
//! [`permissions`] the start-up check of walcast's publish permissions.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::ops::metrics::Metrics;
use crate::state::StateError;
use crate::wire::{Lsn, Position, Timestamp};

pub mod core;
pub mod delivery;
pub mod fast_batch;
pub mod jetstream;
pub mod nats;
pub mod permissions;
pub mod sync;
mod window;

pub use self::core::CoreSink;
pub use self::fast_batch::FastBatchSink;
pub use self::jetstream::JetStreamSink;
pub use self::nats::{connect, NatsState};
pub use self::permissions::check_publish_permission;

/// How the sink publishes: built once from the flags (`config/`), handed to the sink alone.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Envelopes published and not yet confirmed, at most (`--max-inflight`); back-pressure beyond.
    pub max_unconfirmed: usize,
    /// How long NATS may take to confirm a publish (`--confirm-timeout`).
    pub confirm_timeout: Duration,
}

/// Why the sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("{0}")]
    Url(String),
    /// The delivery asked for is impossible with this server and these tables.
    #[error("{0}")]
    Delivery(String),
    #[error("NATS does not let walcast publish on {subject} ({detail}): give its user publish permission for the subject prefix and the JetStream API (see docs/security.md)")]
    Permission { subject: String, detail: String },
    #[error("NATS subscribe failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("the NATS client was closed")]
    Closed,
    #[error(transparent)]
    State(#[from] StateError),
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
    /// `Nats-TTL`: the stream removes the message after this long (`--delete-ttl`).
    pub ttl: Option<std::time::Duration>,
}

impl Publish {
    /// The headers of a JetStream publish expecting the stream's last sequence to be
    /// `expected`: `Nats-Msg-Id`, `Walcast-Position`, `Nats-Expected-Last-Sequence`,
    /// and `Nats-TTL` when the message expires
    /// (named by constants and given owned values: nothing parsed or copied twice).
    pub(crate) fn jetstream_headers(&self, expected: u64) -> async_nats::HeaderMap {
        use async_nats::header::{HeaderName, NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID};
        const POSITION: HeaderName = HeaderName::from_static(crate::wire::POSITION_HEADER);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, self.msg_id.clone());
        headers.insert(POSITION, self.position.to_header());
        let expected = itoa::Buffer::new().format(expected).to_string();
        headers.insert(NATS_EXPECTED_LAST_SEQUENCE, expected);
        if let Some(ttl) = self.ttl {
            let ttl = format!("{}s", ttl.as_secs().max(1));
            headers.insert(async_nats::header::NATS_MESSAGE_TTL, ttl);
        }
        headers
    }
}

/// Envelopes in commit order; `commit_end` is set on the last batch of a transaction.
#[derive(Debug, Default)]
pub struct SinkBatch {
    pub items: Vec<Publish>,
    pub commit_end: Option<Lsn>,
    /// Commit times of the transactions that end in this batch.
    pub commit_times: Vec<Timestamp>,
}

/// Observe commit → confirmation latency for the transactions of confirmed batches.
fn observe_commit_latency(metrics: &Metrics, batches: &[SinkBatch]) {
    let now = Timestamp::now().as_secs_f64();
    for ts in batches.iter().flat_map(|b| &b.commit_times) {
        metrics
            .sink
            .commit_to_publish_seconds
            .observe((now - ts.as_secs_f64()).max(0.0));
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
fn report_confirmed(confirmed: &watch::Sender<Confirmed>, batches: &[SinkBatch]) {
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

/// Batches were confirmed: count them, observe their commit → confirmation latency
/// and report them to the reader.
pub(crate) fn confirm(
    metrics: &Metrics,
    confirmed: &watch::Sender<Confirmed>,
    batches: &[SinkBatch],
) {
    let items: usize = batches.iter().map(|b| b.items.len()).sum();
    metrics.sink.published.inc_by(items as u64);
    observe_commit_latency(metrics, batches);
    report_confirmed(confirmed, batches);
}

/// The back-off both publishers wait between attempts: 100 ms doubling up to 5 s,
/// back to 100 ms after a success; every retry counted and logged.
pub(crate) struct Retry {
    backoff: Duration,
    metrics: Arc<Metrics>,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(5);

    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Retry {
            backoff: Self::FIRST,
            metrics,
        }
    }

    pub(crate) fn succeeded(&mut self) {
        self.backoff = Self::FIRST;
    }

    /// Count and log a failed attempt, then wait before the next one.
    pub(crate) async fn failed(&mut self, what: &'static str, reason: &str, envelopes: usize) {
        self.metrics.sink.publish_retries.inc();
        tracing::warn!(reason, envelopes, "{what}");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(Self::LONGEST);
    }
}

/// The delivery chosen at start-up.
#[allow(clippy::large_enum_variant)] // one value, built once
pub enum Sink {
    Core(CoreSink),
    JetStream(JetStreamSink),
    FastBatch(FastBatchSink),
}

impl Sink {
    /// Publish what arrives on `rx` until it closes and everything was confirmed.
    pub async fn run(
        self,
        rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<Confirmed>,
    ) -> Result<(), SinkError> {
        match self {
            Sink::Core(s) => s.run(rx, confirmed).await,
            Sink::JetStream(s) => s.run(rx, confirmed).await,
            Sink::FastBatch(s) => s.run(rx, confirmed).await,
        }
    }
}

//! JetStream delivery: the stream that is at once the de-duplication window, the
//! per-key state and the snapshot a consumer refetches; publishing gated on PubAcks.
//!
//! Every envelope is published with `Nats-Msg-Id = <key>:<sequence>` (a replay inside
//! the duplicate window is dropped by the server), `Walcast-Position` (the WAL position
//! of the change: how a restart recognises what was already published), and
//! `Nats-Expected-Last-Sequence`: walcast is the stream's only writer, so every
//! message can name its predecessor's stream sequence. Publishes are fully pipelined,
//! and the broker itself stores them in exactly walcast's order or refuses the rest:
//! no hole and no out-of-order write for a key, even when a connection breaks between
//! two messages. A refused tail is published again after re-reading the stream's last
//! sequence; a message stored before (its PubAck lost) is recognised by its
//! `Walcast-Position`.

use std::sync::Arc;
use std::time::Instant;

use std::collections::VecDeque;

use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, watch};

use super::window::ExpectedSequence;
use super::{confirm, Confirmed, Publish, Retry, SinkBatch, SinkError, SinkSettings};
use crate::ops::metrics::Metrics;
use crate::state::StateStore;

/// Publishes batches through JetStream and reports confirmed transaction ends.
pub struct JetStreamSink {
    js: Context,
    store: StateStore,
    /// Only `max_unconfirmed` is read here: the confirmation timeout is the context's
    /// `ack_timeout`, set from the same flag.
    settings: SinkSettings,
    metrics: Arc<Metrics>,
}

/// What became of one message in an attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Acked,
}

impl JetStreamSink {
    pub fn new(
        js: Context,
        store: StateStore,
        settings: &SinkSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        JetStreamSink {
            js,
            store,
            settings: settings.clone(),
            metrics,
        }
    }

    /// Publish one message expecting the stream's last sequence to be `expected`.
    async fn send(
        &self,
        item: &Publish,
        expected: u64,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, String> {
        let headers = item.jetstream_headers(expected);
        let msg = PublishMessage::build()
            .payload(item.payload.clone())
            .headers(headers);
        self.js
            .send_publish(item.subject.clone(), msg)
            .await
            .map_err(|e| format!("publish: {e}"))
    }

    /// Run until the channel closes and everything received was acknowledged.
    ///
    /// Continuous pipeline: new batches are published while earlier ones wait for
    /// their PubAcks; a batch is confirmed once all its messages (and all before it)
    /// are acknowledged. On a refusal or a timeout nothing new is published until the
    /// acknowledgements in flight are in; then the unacknowledged rest goes again.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<Confirmed>,
    ) -> Result<(), SinkError> {
        let mut w = Window::default();
        let mut retry = Retry::new(self.metrics.clone());
        loop {
            let done = w.take_confirmed(&self.metrics);
            if !done.is_empty() {
                confirm(&self.metrics, &confirmed, &done);
                retry.succeeded();
            }
            self.metrics
                .sink
                .inflight_envelopes
                .set(w.inflight_items as i64);
            if let Some(reason) = w.failure.take() {
                if !w.acks.is_empty() {
                    w.failure = Some(reason); // wait for the acknowledgements in flight
                } else {
                    retry
                        .failed(
                            "JetStream did not acknowledge everything; publishing the rest again",
                            &reason,
                            w.inflight_items,
                        )
                        .await;
                    self.republish(&mut w).await;
                    continue;
                }
            }
            if w.closed && w.batches.is_empty() {
                return Ok(());
            }
            let accepting = !w.closed
                && w.failure.is_none()
                && w.inflight_items < self.settings.max_unconfirmed;
            tokio::select! {
                maybe = rx.recv(), if accepting => match maybe {
                    Some(batch) => self.publish_batch(&mut w, batch).await,
                    None => w.closed = true,
                },
                Some((id, i, result)) = w.acks.next(), if !w.acks.is_empty() => {
                    self.on_ack(&mut w, id, i, result).await;
                }
            }
        }
    }

    /// Publish a new batch, chained after the last message published.
    async fn publish_batch(&self, w: &mut Window, batch: SinkBatch) {
        let id = w.first_id + w.batches.len() as u64;
        let read_last = || self.store.last_sequence();
        let mut next = match w.expected.resolve(read_last).await {
            Ok(e) => e,
            Err(e) => {
                w.failure = Some(e.to_string());
                w.inflight_items += batch.items.len();
                w.batches.push_back(InFlight::new(batch));
                return;
            }
        };
        for (i, item) in batch.items.iter().enumerate() {
            match self.send(item, next).await {
                Ok(ack) => {
                    next += 1;
                    w.acks.push_back(ack_future(id, i, ack));
                }
                Err(e) => {
                    w.failure = Some(e);
                    break;
                }
            }
        }
        match w.failure {
            None => w.expected.chain_after(next),
            Some(_) => w.expected.forget(),
        }
        w.inflight_items += batch.items.len();
        w.batches.push_back(InFlight::new(batch));
    }

    /// Publish the not yet acknowledged messages of the window again, chained from
    /// the stream's current last sequence.
    async fn republish(&self, w: &mut Window) {
        w.expected.forget();
        let read_last = || self.store.last_sequence();
        let mut expected = match w.expected.resolve(read_last).await {
            Ok(e) => e,
            Err(e) => {
                w.failure = Some(e.to_string());
                return;
            }
        };
        for (k, entry) in w.batches.iter().enumerate() {
            for (i, item) in entry.batch.items.iter().enumerate() {
                if entry.states[i] == State::Acked {
                    continue;
                }
                match self.send(item, expected).await {
                    Ok(ack) => w.acks.push_back(ack_future(w.first_id + k as u64, i, ack)),
                    Err(e) => {
                        w.expected.forget();
                        w.failure = Some(e);
                        return;
                    }
                }
                expected += 1;
            }
        }
        w.expected.chain_after(expected);
    }

    /// The PubAck (or refusal) of message `i` of batch `id`.
    async fn on_ack(&self, w: &mut Window, id: u64, i: usize, result: AckResult) {
        let Some(k) = id
            .checked_sub(w.first_id)
            .filter(|k| (*k as usize) < w.batches.len())
        else {
            return;
        };
        let k = k as usize;
        match result {
            Ok(ack) => {
                self.store.wrote(ack.sequence);
                w.mark_acked(k, i);
                if ack.duplicate {
                    // Stored by an earlier attempt: the chain after it is off.
                    w.expected.forget();
                    w.failure.get_or_insert_with(|| "duplicate".into());
                }
            }
            Err(e) => {
                w.expected.forget();
                if e.kind() == PublishErrorKind::WrongLastSequence {
                    // Stored already (its PubAck was lost)? Messages are stored
                    // strictly in order, so the subject holding this change or a
                    // later one means it is.
                    let item = &w.batches[k].batch.items[i];
                    if let Ok(Some((state, _))) = self.store.load_key(item.subject.as_str()).await {
                        if state.position >= item.position {
                            w.mark_acked(k, i);
                        }
                    }
                }
                w.failure.get_or_insert(format!("{e}"));
            }
        }
    }
}

/// The batches published and not yet confirmed, with their PubAcks in flight.
#[derive(Default)]
struct Window {
    batches: VecDeque<InFlight>,
    /// Id of the batch at the front.
    first_id: u64,
    acks: FuturesOrdered<AckFuture>,
    inflight_items: usize,
    /// The stream sequence the next message is chained after.
    expected: ExpectedSequence,
    /// Why the last attempt failed: the rest is published again.
    failure: Option<String>,
    closed: bool,
}

impl Window {
    /// The batches at the front whose messages are all acknowledged.
    fn take_confirmed(&mut self, metrics: &Metrics) -> Vec<SinkBatch> {
        let mut done = Vec::new();
        while self
            .batches
            .front()
            .is_some_and(|f| f.acked == f.batch.items.len())
        {
            let f = self.batches.pop_front().expect("front exists");
            self.first_id += 1;
            metrics
                .sink
                .publish_seconds
                .observe(f.started.elapsed().as_secs_f64());
            done.push(f.batch);
        }
        done
    }

    fn mark_acked(&mut self, k: usize, i: usize) {
        let entry = &mut self.batches[k];
        if entry.states[i] != State::Acked {
            entry.states[i] = State::Acked;
            entry.acked += 1;
            self.inflight_items -= 1;
        }
    }
}

/// A batch whose messages are published and not all acknowledged yet.
struct InFlight {
    batch: SinkBatch,
    states: Vec<State>,
    acked: usize,
    started: Instant,
}

impl InFlight {
    fn new(batch: SinkBatch) -> Self {
        InFlight {
            states: vec![State::Waiting; batch.items.len()],
            acked: 0,
            started: Instant::now(),
            batch,
        }
    }
}

type AckResult = Result<
    async_nats::jetstream::publish::PublishAck,
    async_nats::jetstream::context::PublishError,
>;
type AckFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, usize, AckResult)> + Send>>;

/// The PubAck of message `i` of batch `id` (owns everything it needs).
fn ack_future(
    id: u64,
    i: usize,
    ack: async_nats::jetstream::context::PublishAckFuture,
) -> AckFuture {
    Box::pin(async move { (id, i, std::future::IntoFuture::into_future(ack).await) })
}

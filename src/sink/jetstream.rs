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
use async_nats::HeaderMap;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, watch};

use super::{confirm, Confirmed, Publish, Retry, SinkBatch, SinkError};
use crate::ops::metrics::Metrics;
use crate::state::StateStore;
use crate::wire::POSITION_HEADER;

/// Publishes batches through JetStream and reports confirmed transaction ends.
pub struct JetStreamSink {
    js: Context,
    store: StateStore,
    max_unconfirmed: usize,
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
        max_unconfirmed: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        JetStreamSink {
            js,
            store,
            max_unconfirmed,
            metrics,
        }
    }

    /// Publish one message expecting the stream's last sequence to be `expected`.
    async fn send(
        &self,
        item: &Publish,
        expected: u64,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, String> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", item.msg_id.as_str());
        headers.insert(POSITION_HEADER, item.position.to_header().as_str());
        headers.insert("Nats-Expected-Last-Sequence", expected.to_string().as_str());
        let msg = PublishMessage::build()
            .payload(item.payload.clone())
            .headers(headers);
        self.js
            .send_publish(item.subject.clone(), msg)
            .await
            .map_err(|e| format!("publish: {e}"))
    }

    /// Publish the not yet acknowledged messages of `window` again, chained from the
    /// stream's current last sequence.
    async fn republish(
        &self,
        window: &VecDeque<InFlight>,
        first_id: u64,
        acks: &mut FuturesOrdered<AckFuture>,
    ) -> Result<u64, String> {
        let mut expected = self
            .store
            .last_sequence()
            .await
            .map_err(|e| e.to_string())?;
        for (k, entry) in window.iter().enumerate() {
            for (i, item) in entry.batch.items.iter().enumerate() {
                if entry.states[i] == State::Acked {
                    continue;
                }
                let ack = self.send(item, expected).await?;
                expected += 1;
                acks.push_back(ack_future(first_id + k as u64, i, ack));
            }
        }
        Ok(expected)
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
        let mut window: VecDeque<InFlight> = VecDeque::new();
        let mut first_id: u64 = 0;
        let mut acks: FuturesOrdered<AckFuture> = FuturesOrdered::new();
        let mut inflight_items = 0usize;
        let mut expected: Option<u64> = None;
        let mut failure: Option<String> = None;
        let mut closed = false;
        let mut retry = Retry::new(self.metrics.clone());
        loop {
            // Confirm what is complete at the front of the window.
            let mut done = Vec::new();
            while window
                .front()
                .is_some_and(|f| f.acked == f.batch.items.len())
            {
                let f = window.pop_front().expect("front exists");
                first_id += 1;
                self.metrics
                    .publish_seconds
                    .observe(f.started.elapsed().as_secs_f64());
                done.push(f.batch);
            }
            if !done.is_empty() {
                confirm(&self.metrics, &confirmed, &done);
                retry.succeeded();
            }
            self.metrics.inflight_envelopes.set(inflight_items as i64);
            if let Some(reason) = failure.take() {
                if !acks.is_empty() {
                    failure = Some(reason); // wait for the acknowledgements in flight
                } else {
                    retry
                        .failed(
                            "JetStream did not acknowledge everything; publishing the rest again",
                            &reason,
                            inflight_items,
                        )
                        .await;
                    match self.republish(&window, first_id, &mut acks).await {
                        Ok(next) => expected = Some(next),
                        Err(e) => {
                            expected = None;
                            failure = Some(e);
                        }
                    }
                    continue;
                }
            }
            if closed && window.is_empty() {
                return Ok(());
            }
            tokio::select! {
                maybe = rx.recv(), if !closed && failure.is_none() && inflight_items < self.max_unconfirmed => {
                    let Some(batch) = maybe else {
                        closed = true;
                        continue;
                    };
                    let id = first_id + window.len() as u64;
                    let mut next = match expected {
                        Some(e) => e,
                        None => match self.store.last_sequence().await {
                            Ok(e) => e,
                            Err(e) => {
                                failure = Some(e.to_string());
                                window.push_back(InFlight::new(batch));
                                continue;
                            }
                        },
                    };
                    let mut sent = 0;
                    for (i, item) in batch.items.iter().enumerate() {
                        match self.send(item, next).await {
                            Ok(ack) => {
                                next += 1;
                                sent += 1;
                                acks.push_back(ack_future(id, i, ack));
                            }
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    let _ = sent;
                    expected = failure.is_none().then_some(next);
                    inflight_items += batch.items.len();
                    window.push_back(InFlight::new(batch));
                }
                Some((id, i, result)) = acks.next(), if !acks.is_empty() => {
                    let Some(entry) = id.checked_sub(first_id).and_then(|k| window.get_mut(k as usize)) else {
                        continue;
                    };
                    let mark = |entry: &mut InFlight, inflight_items: &mut usize| {
                        if entry.states[i] != State::Acked {
                            entry.states[i] = State::Acked;
                            entry.acked += 1;
                            *inflight_items -= 1;
                        }
                    };
                    match result {
                        Ok(ack) => {
                            self.store.wrote(ack.sequence);
                            mark(entry, &mut inflight_items);
                            if ack.duplicate {
                                // Stored by an earlier attempt: the chain after it is off.
                                expected = None;
                                failure.get_or_insert_with(|| "duplicate".into());
                            }
                        }
                        Err(e) => {
                            expected = None;
                            let item = &entry.batch.items[i];
                            if e.kind() == PublishErrorKind::WrongLastSequence {
                                // Stored already (its PubAck was lost)? Messages are
                                // stored strictly in order, so the subject holding
                                // this change or a later one means it is.
                                if let Ok(Some((state, _))) = self.store.load_key(item.subject.as_str()).await {
                                    if state.position >= item.position {
                                        mark(entry, &mut inflight_items);
                                    }
                                }
                            }
                            failure.get_or_insert(format!("{e}"));
                        }
                    }
                }
            }
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

//! JetStream delivery: the stream that is at once the de-duplication window, the
//! per-key state and the snapshot a consumer refetches; publishing gated on PubAcks.
//!
//! Every envelope is published with `Nats-Msg-Id = <key>:<sequence>` (a replay inside
//! the duplicate window is dropped by the server), `Walcast-Position` (the WAL position
//! of the change: how a restart recognises what was already published), and
//! `Nats-Expected-Last-Sequence`: walcast is the stream's only writer, so every
//! message can name its predecessor's stream sequence. Publishes are pipelined (at
//! most `--max-inflight` await their PubAck), and the broker itself stores them in
//! exactly walcast's order or refuses the rest: no hole and no out-of-order write for
//! a key, even when a connection breaks between two messages. After a refusal or a
//! timeout, the stream says how much of the rest it holds already (PubAcks lost with
//! a connection: [`super::window::stored_prefix`]); only what it lacks goes again,
//! chained from the stream's last sequence, its first message alone until it is
//! stored. The messages' states are in `pending`.

mod pending;

use std::sync::Arc;

use async_nats::jetstream::context::{Context, PublishAckFuture};
use async_nats::jetstream::message::PublishMessage;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, watch};

use self::pending::{Outcome, Pending, Slot};
use super::nats::connected;
use super::window::{is_stored, stored_prefix};
use super::{confirm, Confirmed, Publish, Retry, SinkBatch, SinkError, SinkSettings};
use crate::ops::metrics::Metrics;
use crate::state::{StateError, StateStore};

/// Publishes batches through JetStream and reports confirmed transaction ends.
pub struct JetStreamSink {
    js: Context,
    /// The context's client, whose connection state is looked at.
    client: async_nats::Client,
    store: StateStore,
    /// Only `max_unconfirmed` is read here: the confirmation timeout is the context's
    /// `ack_timeout`, set from the same flag.
    settings: SinkSettings,
    metrics: Arc<Metrics>,
}

/// The PubAcks awaited, in publishing order.
type Acks = FuturesOrdered<AckFuture>;

impl JetStreamSink {
    pub fn new(
        js: Context,
        store: StateStore,
        settings: &SinkSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        JetStreamSink {
            client: js.client(),
            js,
            store,
            settings: settings.clone(),
            metrics,
        }
    }

    /// Publish one message expecting the stream's last sequence to be `expected`.
    async fn send(&self, item: &Publish, expected: u64) -> Result<PublishAckFuture, String> {
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
    /// acknowledgements in flight are in; then what the stream lacks goes again.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<Confirmed>,
    ) -> Result<(), SinkError> {
        let (mut p, mut acks) = (Pending::default(), Acks::new());
        let mut retry = Retry::new(self.metrics.clone());
        let room = self.settings.max_unconfirmed.max(1);
        // Looks again at the connection while nothing else happens.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            let done = p.take_confirmed(&self.metrics);
            if !done.is_empty() {
                confirm(&self.metrics, &confirmed, &done);
                retry.succeeded();
            }
            self.metrics.sink.inflight_envelopes.set(p.unacked as i64);
            if p.failure.is_some() && acks.is_empty() {
                let reason = p.failure.take().unwrap_or_default();
                let what = "JetStream did not acknowledge everything; publishing the rest again";
                retry.failed(what, &reason, p.unacked).await;
                self.republish(&mut p).await?;
                continue;
            }
            if p.closed && p.is_empty() {
                return Ok(());
            }
            // Nothing goes while the connection is down (see `fast_batch`).
            if connected(&self.client) && self.pump(&mut p, &mut acks, room).await {
                continue;
            }
            let accepting = !p.closed && p.failure.is_none() && p.unacked < room;
            tokio::select! {
                _ = tick.tick() => {}
                maybe = rx.recv(), if accepting => match maybe {
                    Some(batch) => p.push(batch),
                    None => p.closed = true,
                },
                Some((slot, result)) = acks.next(), if !acks.is_empty() => {
                    if let Some(seq) = p.on_ack(slot, Outcome::of(result)) {
                        self.store.wrote(seq);
                    }
                }
            }
        }
    }

    /// Publish what may go now, each message chained after the one before; whether
    /// anything went.
    async fn pump(&self, p: &mut Pending, acks: &mut Acks, room: usize) -> bool {
        let mut sent = false;
        while let Some(slot) = p.next_to_send(room) {
            let read_last = || self.store.last_sequence();
            let expected = match p.expected.resolve(read_last).await {
                Ok(e) => e,
                Err(e) => {
                    p.failure = Some(e.to_string());
                    break;
                }
            };
            match self.send(p.item(slot), expected).await {
                Ok(ack) => {
                    acks.push_back(ack_future(slot, ack));
                    p.sent(slot);
                    p.expected.chain_after(expected + 1);
                    sent = true;
                }
                Err(e) => {
                    p.expected.forget();
                    p.failure = Some(e);
                    break;
                }
            }
        }
        sent
    }

    /// After a failure: read the stream's last sequence, count the messages not
    /// acknowledged that the stream holds already, and publish the rest again chained
    /// from there (the first alone: [`Pending::next_to_send`]).
    async fn republish(&self, p: &mut Pending) -> Result<(), SinkError> {
        p.expected.forget();
        let last = match self.store.last_sequence().await {
            Ok(last) => last,
            Err(e @ StateError::RolledBack { .. }) => return Err(e.into()),
            Err(e) => {
                p.failure = Some(e.to_string());
                return Ok(());
            }
        };
        let stored = {
            let unacked: Vec<&Publish> = p.unacked_slots().map(|s| p.item(s)).collect();
            stored_prefix(unacked.len(), |i| is_stored(&self.store, unacked[i])).await
        };
        if stored > 0 {
            tracing::info!(stored, "the stream holds messages whose PubAck was lost");
        }
        p.restart(stored, last);
        Ok(())
    }
}

type AckResult = Result<
    async_nats::jetstream::publish::PublishAck,
    async_nats::jetstream::context::PublishError,
>;
type AckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = (Slot, AckResult)> + Send>>;

/// The PubAck of the message in `slot` (owns everything it needs).
fn ack_future(slot: Slot, ack: PublishAckFuture) -> AckFuture {
    Box::pin(async move { (slot, std::future::IntoFuture::into_future(ack).await) })
}

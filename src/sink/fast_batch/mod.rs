//! JetStream delivery with fast-ingest batches (nats-server 2.14+, streams with
//! `allow_batched`): the same messages, headers and guarantees as the per-message
//! publisher ([`super::jetstream`]), without paying one PubAck per message.
//!
//! Messages go out as plain publishes whose reply subject carries the batch's control
//! data (`<inbox>.<batch id>.<flow>.fail.<batch seq>.<op>.$FI`). The server stores
//! them as they arrive and acknowledges every `flow` messages (`{"type":"ack","seq":N}`:
//! everything up to batch sequence N is stored). Each burst — everything received and
//! waiting, up to `--max-inflight` unacknowledged — is one batch whose last message
//! commits it and gets a PubAck: no batch is left open for a next message that may not
//! come. Every message still carries `Nats-Expected-Last-Sequence` naming its
//! predecessor's stream sequence (walcast is the stream's only writer) and
//! `Nats-Msg-Id`: in `fail` mode the first refused message ends the batch and the
//! server reports how many were stored (`count`).
//!
//! After a refusal or a timeout, the stream says how much of the rest it holds
//! already ([`super::window::stored_prefix`]); only what it lacks is published again,
//! chained from the stream's last sequence, its first message alone until it is
//! stored. Plain subscribers see every attempt, stored or not: an outage repeats at
//! most one window to them. The state and the replies' effects are in `flight`, the
//! replies' format in `reply`.

mod flight;
mod reply;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use self::flight::{Flight, OpenBatch, Window};
use super::nats::connected;
use super::window::{is_stored, stored_prefix};
use super::{confirm, Confirmed, Publish, Retry, SinkBatch, SinkError, SinkSettings};
use crate::ops::metrics::Metrics;
use crate::state::{StateError, StateStore};

/// Publishes batches as fast-ingest JetStream batches; reports confirmed transactions.
pub struct FastBatchSink {
    client: async_nats::Client,
    store: StateStore,
    settings: SinkSettings,
    metrics: Arc<Metrics>,
}

impl FastBatchSink {
    pub fn new(
        client: async_nats::Client,
        store: StateStore,
        settings: &SinkSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        FastBatchSink {
            client,
            store,
            settings: settings.clone(),
            metrics,
        }
    }

    /// Run until the channel closes and everything received was acknowledged.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<SinkBatch>,
        confirmed: watch::Sender<Confirmed>,
    ) -> Result<(), SinkError> {
        let inbox = self.client.new_inbox();
        let mut replies = self.client.subscribe(format!("{inbox}.>")).await?;
        let (mut w, mut f) = (Window::default(), Flight::default());
        let mut retry = Retry::new(self.metrics.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let room = self.settings.max_unconfirmed.max(1);
        loop {
            let done = w.take_confirmed(f.acked, &self.metrics);
            if !done.is_empty() {
                confirm(&self.metrics, &confirmed, &done);
                retry.succeeded();
            }
            let inflight = (w.received - f.acked) as usize;
            self.metrics.sink.inflight_envelopes.set(inflight as i64);
            if f.failed() {
                let reason = f.failure.take().unwrap_or_default();
                let what = "JetStream did not store everything; publishing the rest again";
                retry.failed(what, &reason, inflight).await;
                self.republish(&w, &mut f).await?;
                continue;
            }
            if w.closed && w.is_empty() {
                return Ok(());
            }
            // Nothing goes while the connection is down: it would wait in the client's
            // buffer and, chained after messages lost with the connection, be refused
            // after the reconnect, yet reach every plain subscriber.
            let burst = f
                .next_burst(w.received, room)
                .filter(|_| connected(&self.client));
            if let Some(burst) = burst {
                self.send_burst(&w, &mut f, &inbox, burst).await;
                continue;
            }
            let accepting = !w.closed && f.failure.is_none() && inflight < room;
            tokio::select! {
                maybe = rx.recv(), if accepting => match maybe {
                    Some(batch) => w.receive(batch, &mut rx, f.acked, room),
                    None => w.closed = true,
                },
                Some(msg) = replies.next() => {
                    if let Some(seq) = f.on_reply(msg.subject.as_str(), &msg.payload) {
                        self.store.wrote(seq);
                    }
                }
                _ = tick.tick() => f.check_timeout(self.settings.confirm_timeout),
            }
        }
    }

    /// Send ordinals `first..=last` as one new batch, the last one committing it.
    async fn send_burst(&self, w: &Window, f: &mut Flight, inbox: &str, (first, last): (u64, u64)) {
        let read_last = || self.store.last_sequence();
        let mut expected = match f.expected.resolve(read_last).await {
            Ok(e) => e,
            Err(e) => {
                f.failure = Some(e.to_string());
                return;
            }
        };
        let id = batch_id(&self.client);
        f.batch = Some(OpenBatch::new(inbox, id, first - 1, expected));
        let burst = w.items_from(first).take_while(|(o, _)| *o <= last);
        for (ordinal, item) in burst {
            let batch = f.batch.as_ref().expect("opened");
            let commit = ordinal == last;
            let reply = batch.reply_subject(batch.sent + 1, commit);
            if let Err(e) = self.publish(item, reply, expected).await {
                f.expected.forget();
                f.publish_failed(format!("publish: {e}"));
                return;
            }
            f.sent_one(ordinal, commit);
            expected += 1;
        }
        f.expected.chain_after(expected);
    }

    async fn publish(
        &self,
        item: &Publish,
        reply: String,
        expected: u64,
    ) -> Result<(), async_nats::PublishError> {
        let headers = item.jetstream_headers(expected);
        self.client
            .publish_with_reply_and_headers(
                item.subject.clone(),
                reply,
                headers,
                item.payload.clone(),
            )
            .await
    }

    /// After a failure: read the stream's last sequence, count the messages not
    /// acknowledged that the stream holds already, and publish the rest again chained
    /// from there (the first alone: [`Flight::next_burst`]).
    async fn republish(&self, w: &Window, f: &mut Flight) -> Result<(), SinkError> {
        f.expected.forget();
        f.batch = None;
        f.sent = f.acked;
        let last = match self.store.last_sequence().await {
            Ok(last) => last,
            Err(e @ StateError::RolledBack { .. }) => return Err(e.into()),
            Err(e) => {
                f.failure = Some(e.to_string());
                return Ok(());
            }
        };
        let unacked: Vec<&Publish> = w.items_from(f.acked + 1).map(|(_, p)| p).collect();
        let stored = stored_prefix(unacked.len(), |i| is_stored(&self.store, unacked[i])).await;
        if stored > 0 {
            tracing::info!(
                stored,
                "the stream holds messages whose acknowledgement was lost"
            );
        }
        f.restart(stored as u64, last);
        Ok(())
    }
}

/// A batch id unique per stream (the NUID of a fresh inbox).
fn batch_id(client: &async_nats::Client) -> String {
    let inbox = client.new_inbox();
    inbox.rsplit('.').next().unwrap_or(&inbox).to_string()
}

//! JetStream delivery with fast-ingest batches (nats-server 2.14+, streams with
//! `allow_batched`): the same messages, headers and guarantees as the per-message
//! publisher ([`super::jetstream`]), without paying one PubAck per message.
//!
//! Messages go out as plain publishes whose reply subject carries the batch's control
//! data (`<inbox>.<batch id>.<flow>.fail.<batch seq>.<op>.$FI`). The server stores
//! them as they arrive and acknowledges every `flow` messages (`{"type":"ack","seq":N}`:
//! everything up to batch sequence N is stored); the last message of a burst commits
//! the batch and gets a PubAck. Every message still carries `Nats-Expected-Last-Sequence`
//! naming its predecessor's stream sequence (walcast is the stream's only writer) and
//! `Nats-Msg-Id`: in `fail` mode the first refused message ends the batch, the server
//! reports how many were stored (`count`), and the rest is published again in a new
//! batch chained from the stream's last sequence — no hole, no reorder, no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::window::ExpectedSequence;
use super::{confirm, Confirmed, Publish, Retry, SinkBatch, SinkError, SinkSettings};
use crate::ops::metrics::Metrics;
use crate::state::StateStore;

/// Messages between two flow acknowledgements the sink asks for (the server acks at
/// least every 500).
const FLOW: usize = 500;

/// Publishes batches as fast-ingest JetStream batches; reports confirmed transactions.
pub struct FastBatchSink {
    client: async_nats::Client,
    store: StateStore,
    settings: SinkSettings,
    metrics: Arc<Metrics>,
}

/// The fast batch being written.
struct OpenBatch {
    id: String,
    /// `<inbox>.<id>.<flow>.fail.`: what every reply subject of the batch starts with.
    reply_prefix: String,
    /// Ordinal of the message before this batch's sequence 1.
    base: u64,
    /// Batch sequences sent.
    sent: u64,
    /// Stream sequence the batch's first message expects as the stream's last.
    chain_start: u64,
    /// The batch ended: committed, refused or given up.
    ended: bool,
}

/// Received from the reader and not yet confirmed, in order; messages are numbered by
/// ordinal (1, 2, ... since the sink started).
#[derive(Default)]
struct Window {
    batches: VecDeque<(SinkBatch, Instant)>,
    /// Ordinal of the first message of the front batch.
    front: u64,
    /// Last ordinal received from the reader.
    received: u64,
    closed: bool,
}

/// Where publishing stands.
#[derive(Default)]
struct Flight {
    /// Last ordinal handed to the server.
    sent: u64,
    /// Last ordinal acknowledged (everything up to it is stored).
    acked: u64,
    batch: Option<OpenBatch>,
    /// The stream sequence the next message is chained after.
    expected: ExpectedSequence,
    failure: Option<String>,
    /// When the server last answered (or the first unanswered message was sent).
    last_reply: Option<Instant>,
}

/// A reply on the batch inbox: flow ack, gap, error, or the final PubAck.
#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(rename = "type")]
    kind: Option<String>,
    seq: Option<u64>,
    /// A gap's first missing batch sequence.
    last_seq: Option<u64>,
    count: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl Reply {
    /// The batch messages stored, as a flow ack or the batch's PubAck names them
    /// (`count`; a batch committed by its first message gets a plain PubAck: its
    /// stream sequence tells, the chain fixing every message's sequence).
    fn stored(&self, chain_start: u64) -> Option<u64> {
        match (self.kind.as_deref(), &self.error) {
            (Some("ack"), _) => self.seq,
            (None, None) => self
                .count
                .or_else(|| self.seq.map(|s| s.saturating_sub(chain_start))),
            _ => None,
        }
    }

    /// A refusal of kind `kind` (a `gap`, or another): the batch messages before the
    /// refused one, and why. Every message before it is in the stream: stored now, or
    /// skipped as a duplicate of one stored before (which the PubAck's count does not
    /// include).
    fn refusal(&self, kind: &str) -> (Option<u64>, String) {
        let before = match kind {
            "gap" => self.last_seq.map(|e| e.saturating_sub(1)),
            _ => self.seq.map(|n| n.saturating_sub(1)),
        };
        let detail = self.error.as_ref().map_or_else(String::new, |e| {
            format!(": {} ({})", e.description, e.err_code)
        });
        let seq = self.seq.unwrap_or(0);
        (before, format!("{kind} at batch sequence {seq}{detail}"))
    }
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
        let mut w = Window {
            front: 1,
            ..Default::default()
        };
        let mut f = Flight::default();
        let mut retry = Retry::new(self.metrics.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let done = w.take_confirmed(f.acked, &self.metrics);
            if !done.is_empty() {
                confirm(&self.metrics, &confirmed, &done);
                retry.succeeded();
            }
            let inflight = (w.received - f.acked) as usize;
            self.metrics.sink.inflight_envelopes.set(inflight as i64);
            if f.failure.is_some() && f.batch.as_ref().is_none_or(|b| b.ended) {
                let reason = f.failure.take().unwrap_or_default();
                let what = "JetStream did not store everything; publishing the rest again";
                retry.failed(what, &reason, inflight).await;
                self.republish(&w, &mut f, &inbox).await;
                continue;
            }
            if w.closed && w.batches.is_empty() {
                return Ok(());
            }
            let max_unconfirmed = self.settings.max_unconfirmed;
            let accepting = !w.closed && f.failure.is_none() && inflight < max_unconfirmed;
            tokio::select! {
                maybe = rx.recv(), if accepting => match maybe {
                    Some(batch) => {
                        let first = w.received + 1;
                        w.received += batch.items.len() as u64;
                        w.batches.push_back((batch, Instant::now()));
                        let full = (w.received - f.acked) as usize >= max_unconfirmed;
                        let keep_open = !rx.is_empty() && !full;
                        self.send(&w, &mut f, &inbox, first, keep_open).await;
                    }
                    None => w.closed = true,
                },
                Some(msg) = replies.next() => self.on_reply(&w, &mut f, &msg).await,
                _ = tick.tick() => self.check_timeout(&mut f),
            }
        }
    }

    /// Send the messages from ordinal `first` to the last received, in the open batch
    /// (or a new one); `keep_open`: more follows at once, else the last one commits.
    async fn send(&self, w: &Window, f: &mut Flight, inbox: &str, first: u64, keep_open: bool) {
        let read_last = || self.store.last_sequence();
        let mut expected = match f.expected.resolve(read_last).await {
            Ok(e) => e,
            Err(e) => {
                f.failure = Some(e.to_string());
                return;
            }
        };
        for (ordinal, item) in w.items_from(first) {
            if f.batch.as_ref().is_none_or(|b| b.ended) {
                let id = batch_id(&self.client);
                f.batch = Some(OpenBatch {
                    reply_prefix: format!("{inbox}.{id}.{FLOW}.fail."),
                    id,
                    base: ordinal - 1,
                    sent: 0,
                    chain_start: expected,
                    ended: false,
                });
            }
            let batch = f.batch.as_mut().expect("opened");
            let seq = batch.sent + 1;
            let commit = ordinal == w.received && !keep_open;
            let op = match (commit, seq) {
                (true, _) => 2,
                (false, 1) => 0,
                (false, _) => 1,
            };
            let reply = batch.reply_subject(seq, op);
            let headers = item.jetstream_headers(expected);
            let sent = self
                .client
                .publish_with_reply_and_headers(
                    item.subject.clone(),
                    reply,
                    headers,
                    item.payload.clone(),
                )
                .await;
            if let Err(e) = sent {
                f.failure = Some(format!("publish: {e}"));
                batch.ended = true;
                return;
            }
            batch.sent = seq;
            // The PubAck of the commit ends the batch; nothing more goes in it.
            batch.ended = commit;
            if f.sent == f.acked {
                f.last_reply = Some(Instant::now());
            }
            f.sent = ordinal;
            expected += 1;
        }
        f.expected.chain_after(expected);
    }

    /// Publish every message not acknowledged again, in a new batch chained from the
    /// stream's last sequence.
    async fn republish(&self, w: &Window, f: &mut Flight, inbox: &str) {
        f.expected.forget();
        f.batch = None;
        f.sent = f.acked;
        if w.received > f.acked {
            self.send(w, f, inbox, f.acked + 1, false).await;
        }
    }

    /// A reply of the server on the batch inbox.
    async fn on_reply(&self, w: &Window, f: &mut Flight, msg: &async_nats::Message) {
        // <inbox>.<id>.<flow>.<gap>.<seq>.<op>.$FI
        let id = msg.subject.as_str().rsplit('.').nth(5).unwrap_or_default();
        let Some(batch) = f.batch.as_mut().filter(|b| b.id == id) else {
            return; // a batch given up on
        };
        f.last_reply = Some(Instant::now());
        let reply: Reply = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                f.failure = Some(format!("unreadable JetStream reply: {e}"));
                batch.ended = true;
                return;
            }
        };
        let stored = reply.stored(batch.chain_start);
        if let Some(n) = stored.filter(|n| *n > 0).map(|n| n.min(batch.sent)) {
            f.acked = f.acked.max(batch.base + n);
            self.store.wrote(batch.chain_start + n);
        }
        match (reply.kind.as_deref(), &reply.error) {
            (Some("ack"), _) => return,
            (None, None) => {
                // The PubAck that ends the batch (its commit, or after a refusal).
                batch.ended = true;
                if reply.duplicate || stored.unwrap_or(0) < batch.sent {
                    f.failure
                        .get_or_insert_with(|| "a message was refused or a duplicate".into());
                }
            }
            (Some(kind), _) => {
                // Fail mode: the server ends the batch and sends its PubAck next.
                let (before, reason) = reply.refusal(kind);
                if let Some(n) = before.map(|n| n.min(batch.sent)) {
                    f.acked = f.acked.max(batch.base + n);
                }
                f.failure.get_or_insert(reason);
                return;
            }
            (None, Some(e)) => {
                // Refused outright (the batch is gone): nothing more is stored.
                batch.ended = true;
                f.failure
                    .get_or_insert(format!("{} ({})", e.description, e.err_code));
            }
        }
        if f.failure.is_some() {
            self.recognise_stored(w, f).await;
        }
    }

    /// The first message not acknowledged may be stored already (an earlier attempt
    /// whose acknowledgement was lost, beyond the duplicate window): the subject
    /// holding this change or a later one means it is.
    async fn recognise_stored(&self, w: &Window, f: &mut Flight) {
        let Some((_, item)) = w.items_from(f.acked + 1).next() else {
            return;
        };
        if let Ok(Some((state, _))) = self.store.load_key(item.subject.as_str()).await {
            if state.position >= item.position {
                f.acked += 1;
            }
        }
    }

    /// Messages sent and not answered for the confirmation timeout: give the batch up.
    fn check_timeout(&self, f: &mut Flight) {
        let waiting = f.sent > f.acked;
        if let (true, Some(since)) = (waiting, f.last_reply) {
            let timeout = self.settings.confirm_timeout;
            if since.elapsed() >= timeout {
                f.batch = None;
                f.failure
                    .get_or_insert_with(|| format!("no acknowledgement within {timeout:?}"));
            }
        }
    }
}

impl OpenBatch {
    /// The reply subject of batch message `seq` with operation `op` (0 start, 1 append,
    /// 2 commit): `<prefix><seq>.<op>.$FI`.
    fn reply_subject(&self, seq: u64, op: u8) -> String {
        let mut digits = itoa::Buffer::new();
        let seq = digits.format(seq);
        let mut reply = String::with_capacity(self.reply_prefix.len() + seq.len() + 6);
        reply.push_str(&self.reply_prefix);
        reply.push_str(seq);
        reply.push('.');
        reply.push(char::from(b'0' + op));
        reply.push_str(".$FI");
        reply
    }
}

/// A batch id unique per stream (the NUID of a fresh inbox).
fn batch_id(client: &async_nats::Client) -> String {
    let inbox = client.new_inbox();
    inbox.rsplit('.').next().unwrap_or(&inbox).to_string()
}

impl Window {
    /// The messages from ordinal `first` on.
    fn items_from(&self, first: u64) -> impl Iterator<Item = (u64, &Publish)> {
        let mut start = self.front;
        self.batches.iter().flat_map(move |(b, _)| {
            let (from, n) = (start, b.items.len() as u64);
            start += n;
            let skip = first.saturating_sub(from).min(n) as usize;
            b.items[skip..]
                .iter()
                .enumerate()
                .map(move |(i, p)| (from + (skip + i) as u64, p))
        })
    }

    /// The batches at the front whose messages are all acknowledged (up to `acked`).
    fn take_confirmed(&mut self, acked: u64, metrics: &Metrics) -> Vec<SinkBatch> {
        let mut done = Vec::new();
        while let Some((b, _)) = self.batches.front() {
            let end = self.front + b.items.len() as u64;
            if end - 1 > acked {
                break;
            }
            let (b, started) = self.batches.pop_front().expect("front exists");
            metrics
                .sink
                .publish_seconds
                .observe(started.elapsed().as_secs_f64());
            self.front = end;
            done.push(b);
        }
        done
    }
}

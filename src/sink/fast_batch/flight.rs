//! What the fast-batch publisher holds, without I/O: the envelopes received and not
//! yet confirmed, numbered by ordinal ([`Window`]), and where publishing them stands
//! ([`Flight`]): what was sent and acknowledged, the open batch, why the last attempt
//! failed, the message sent alone after a failure. The server's replies, the
//! confirmation timeout and the decision what to send next are applied here, so they
//! are tested on constructed replies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::reply::Reply;
use crate::ops::metrics::Metrics;
use crate::sink::window::ExpectedSequence;
use crate::sink::{Publish, SinkBatch};

/// Messages between two flow acknowledgements the sink asks for (the server acks at
/// least every 500).
pub(super) const FLOW: usize = 500;

/// The fast batch being written.
#[derive(Debug)]
pub(super) struct OpenBatch {
    pub(super) id: String,
    /// `<inbox>.<id>.<flow>.fail.`: what every reply subject of the batch starts with.
    reply_prefix: String,
    /// Ordinal of the message before this batch's sequence 1.
    pub(super) base: u64,
    /// Batch sequences sent.
    pub(super) sent: u64,
    /// Stream sequence the batch's first message expects as the stream's last.
    pub(super) chain_start: u64,
    /// The batch ended: committed, refused or given up.
    pub(super) ended: bool,
}

impl OpenBatch {
    pub(super) fn new(inbox: &str, id: String, base: u64, chain_start: u64) -> Self {
        OpenBatch {
            reply_prefix: format!("{inbox}.{id}.{FLOW}.fail."),
            id,
            base,
            sent: 0,
            chain_start,
            ended: false,
        }
    }

    /// The reply subject of batch message `seq`, the last of its burst or not (the
    /// last commits the batch): `<prefix><seq>.<op>.$FI`, op 0 start, 1 append, 2 commit.
    pub(super) fn reply_subject(&self, seq: u64, commit: bool) -> String {
        let op = match (commit, seq) {
            (true, _) => '2',
            (false, 1) => '0',
            (false, _) => '1',
        };
        let mut digits = itoa::Buffer::new();
        let seq = digits.format(seq);
        let mut reply = String::with_capacity(self.reply_prefix.len() + seq.len() + 6);
        reply.push_str(&self.reply_prefix);
        reply.push_str(seq);
        reply.push('.');
        reply.push(op);
        reply.push_str(".$FI");
        reply
    }
}

/// Received from the reader and not yet confirmed, in order; messages are numbered by
/// ordinal (1, 2, ... since the sink started).
pub(super) struct Window {
    batches: VecDeque<(SinkBatch, Instant)>,
    /// Ordinal of the first message of the front batch.
    front: u64,
    /// Last ordinal received from the reader.
    pub(super) received: u64,
    pub(super) closed: bool,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            batches: VecDeque::new(),
            front: 1,
            received: 0,
            closed: false,
        }
    }
}

impl Window {
    /// `batch` and every batch already waiting behind it, while fewer than `room`
    /// envelopes are unacknowledged (`acked`): one burst sends them all and commits
    /// with the last envelope, whatever the last batches hold.
    pub(super) fn receive(
        &mut self,
        batch: SinkBatch,
        rx: &mut mpsc::Receiver<SinkBatch>,
        acked: u64,
        room: usize,
    ) {
        self.push(batch);
        while ((self.received - acked) as usize) < room {
            match rx.try_recv() {
                Ok(b) => self.push(b),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
    }

    pub(super) fn push(&mut self, batch: SinkBatch) {
        self.received += batch.items.len() as u64;
        self.batches.push_back((batch, Instant::now()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The messages from ordinal `first` on.
    pub(super) fn items_from(&self, first: u64) -> impl Iterator<Item = (u64, &Publish)> {
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
    pub(super) fn take_confirmed(&mut self, acked: u64, metrics: &Metrics) -> Vec<SinkBatch> {
        let mut done = Vec::new();
        while let Some((b, _)) = self.batches.front() {
            let end = self.front + b.items.len() as u64;
            if end - 1 > acked {
                break;
            }
            let (b, started) = self.batches.pop_front().expect("front exists");
            let seconds = started.elapsed().as_secs_f64();
            metrics.sink.publish_seconds.observe(seconds);
            self.front = end;
            done.push(b);
        }
        done
    }
}

/// Where publishing stands.
#[derive(Debug, Default)]
pub(super) struct Flight {
    /// Last ordinal handed to the server.
    pub(super) sent: u64,
    /// Last ordinal acknowledged (everything up to it is stored).
    pub(super) acked: u64,
    pub(super) batch: Option<OpenBatch>,
    /// The stream sequence the next message is chained after.
    pub(super) expected: ExpectedSequence,
    pub(super) failure: Option<String>,
    /// When the server last answered (or the first unanswered message was sent).
    last_reply: Option<Instant>,
    /// After a failure the first message goes alone, and the rest once it is stored:
    /// a refused attempt reaches plain subscribers with one message, not a window.
    probe: Option<u64>,
}

impl Flight {
    /// The ordinals the next burst sends: from the first not sent up to `room`
    /// beyond the acknowledged (only the probe while it is unanswered); none while a
    /// failure waits to be handled.
    pub(super) fn next_burst(&self, received: u64, room: usize) -> Option<(u64, u64)> {
        if self.failure.is_some() {
            return None;
        }
        let limit = match self.probe {
            Some(p) if self.acked < p => p,
            _ => self.acked + room as u64,
        };
        let last = received.min(limit);
        (last > self.sent).then_some((self.sent + 1, last))
    }

    /// Ordinal `ordinal` went out as the open batch's next message; `commit`: the
    /// last of its burst, which ends the batch.
    pub(super) fn sent_one(&mut self, ordinal: u64, commit: bool) {
        if let Some(batch) = self.batch.as_mut() {
            batch.sent += 1;
            batch.ended = commit;
        }
        if self.sent == self.acked {
            self.last_reply = Some(Instant::now());
        }
        self.sent = ordinal;
    }

    /// Publishing failed: nothing more goes in the open batch.
    pub(super) fn publish_failed(&mut self, why: String) {
        if let Some(batch) = self.batch.as_mut() {
            batch.ended = true;
        }
        self.failure.get_or_insert(why);
    }

    /// A reply of the server on the batch inbox (`subject`, `payload`); the stream
    /// sequence it shows walcast wrote, if any.
    pub(super) fn on_reply(&mut self, subject: &str, payload: &[u8]) -> Option<u64> {
        // <inbox>.<id>.<flow>.<gap>.<seq>.<op>.$FI
        let id = subject.rsplit('.').nth(5).unwrap_or_default();
        let batch = self.batch.as_mut().filter(|b| b.id == id)?; // a batch given up on
        self.last_reply = Some(Instant::now());
        let reply = match Reply::parse(payload) {
            Ok(r) => r,
            Err(e) => {
                batch.ended = true;
                self.failure = Some(format!("unreadable JetStream reply: {e}"));
                return None;
            }
        };
        let stored = reply.stored(batch.chain_start);
        let mut wrote = None;
        if let Some(n) = stored.filter(|n| *n > 0).map(|n| n.min(batch.sent)) {
            self.acked = self.acked.max(batch.base + n);
            wrote = (!reply.duplicate).then_some(batch.chain_start + n);
        }
        match (reply.kind.as_deref(), &reply.error) {
            (Some("ack"), _) => {}
            (None, None) => {
                // The PubAck that ends the batch (its commit, or after a refusal).
                batch.ended = true;
                if reply.duplicate || stored.unwrap_or(0) < batch.sent {
                    let why = || "a message was refused or a duplicate".to_string();
                    self.failure.get_or_insert_with(why);
                }
            }
            (Some(kind), _) => {
                // Fail mode: the server ends the batch and sends its PubAck next.
                let (before, reason) = reply.refusal(kind);
                if let Some(n) = before.map(|n| n.min(batch.sent)) {
                    self.acked = self.acked.max(batch.base + n);
                }
                self.failure.get_or_insert(reason);
            }
            (None, Some(e)) => {
                // Refused outright (the batch is gone): nothing more is stored.
                batch.ended = true;
                let why = format!("{} ({})", e.description, e.err_code);
                self.failure.get_or_insert(why);
            }
        }
        wrote
    }

    /// Messages sent and not answered for `timeout`: give the batch up.
    pub(super) fn check_timeout(&mut self, timeout: Duration) {
        let waiting = self.sent > self.acked;
        if waiting && self.last_reply.is_some_and(|t| t.elapsed() >= timeout) {
            self.batch = None;
            let why = || format!("no acknowledgement within {timeout:?}");
            self.failure.get_or_insert_with(why);
        }
    }

    /// Whether a failure waits to be handled and the batch it happened in is over
    /// (its PubAck in, or given up).
    pub(super) fn failed(&self) -> bool {
        self.failure.is_some() && self.batch.as_ref().is_none_or(|b| b.ended)
    }

    /// Start again after a failure: the stream holds `stored` more messages after
    /// the acknowledged ones, and its last sequence is `last`. The rest goes again,
    /// chained after `last`, its first message alone.
    pub(super) fn restart(&mut self, stored: u64, last: u64) {
        self.acked += stored;
        self.sent = self.acked;
        self.batch = None;
        self.failure = None;
        self.expected.chain_after(last);
        self.probe = Some(self.acked + 1);
    }
}

#[cfg(test)]
#[path = "flight_tests.rs"]
mod tests;

//! What the per-message publisher holds, without I/O: the batches received and not
//! yet confirmed, each message's state (not sent, waiting for its PubAck,
//! acknowledged), the next one to publish, the chain, why the last attempt failed and
//! the message sent alone after a failure. PubAcks are applied here, so they are
//! tested on constructed ones.

use std::collections::VecDeque;
use std::fmt::Display;
use std::time::Instant;

use async_nats::jetstream::publish::PublishAck;

use crate::ops::metrics::Metrics;
use crate::sink::window::ExpectedSequence;
use crate::sink::{Publish, SinkBatch};

/// A message of the window: (batch id, index in the batch).
pub(super) type Slot = (u64, usize);

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Unsent,
    Waiting,
    Acked,
}

/// What the server answered to one publish.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// In the stream: stored now at `sequence`, or before (a duplicate).
    Stored { sequence: u64, duplicate: bool },
    /// Not stored (refused, or no answer in time), and why.
    Refused(String),
}

impl Outcome {
    pub(super) fn of<E: Display>(result: Result<PublishAck, E>) -> Outcome {
        match result {
            Ok(ack) => Outcome::Stored {
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            },
            Err(e) => Outcome::Refused(e.to_string()),
        }
    }
}

/// A batch received and not yet confirmed.
struct InFlight {
    batch: SinkBatch,
    states: Vec<State>,
    acked: usize,
    started: Instant,
}

/// The batches received and not yet confirmed.
#[derive(Default)]
pub(super) struct Pending {
    batches: VecDeque<InFlight>,
    /// Id of the batch at the front.
    first_id: u64,
    /// Where the next message to publish is looked for.
    next: Slot,
    /// Messages received and not acknowledged.
    pub(super) unacked: usize,
    /// Messages published and waiting for their PubAck.
    waiting: usize,
    /// The stream sequence the next message is chained after.
    pub(super) expected: ExpectedSequence,
    /// Why the last attempt failed: the rest is published again.
    pub(super) failure: Option<String>,
    /// After a failure the first message goes alone, the rest once it is stored.
    probe: Option<Slot>,
    pub(super) closed: bool,
}

impl Pending {
    pub(super) fn push(&mut self, batch: SinkBatch) {
        self.unacked += batch.items.len();
        self.batches.push_back(InFlight {
            states: vec![State::Unsent; batch.items.len()],
            acked: 0,
            started: Instant::now(),
            batch,
        });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn get(&self, id: u64) -> Option<&InFlight> {
        let k = id.checked_sub(self.first_id)?;
        self.batches.get(k as usize)
    }

    pub(super) fn item(&self, (id, i): Slot) -> &Publish {
        &self.get(id).expect("a message of the window").batch.items[i]
    }

    pub(super) fn state(&self, (id, i): Slot) -> Option<State> {
        self.get(id)?.states.get(i).copied()
    }

    /// Set a message's state, keeping the counts.
    fn set(&mut self, (id, i): Slot, new: State) {
        let Some(k) = id.checked_sub(self.first_id) else {
            return;
        };
        let Some(b) = self.batches.get_mut(k as usize) else {
            return;
        };
        let old = std::mem::replace(&mut b.states[i], new);
        match (old == State::Acked, new == State::Acked) {
            (false, true) => (b.acked, self.unacked) = (b.acked + 1, self.unacked - 1),
            (true, false) => (b.acked, self.unacked) = (b.acked - 1, self.unacked + 1),
            _ => {}
        }
        self.waiting =
            self.waiting + usize::from(new == State::Waiting) - usize::from(old == State::Waiting);
    }

    /// The next message to publish: none while a failure waits, while `room`
    /// messages wait for their PubAck, or while the probe sent after a failure does.
    pub(super) fn next_to_send(&self, room: usize) -> Option<Slot> {
        if self.failure.is_some() || self.waiting >= room {
            return None;
        }
        match self.probe.and_then(|p| Some((p, self.state(p)?))) {
            Some((p, State::Unsent)) => return Some(p),
            Some((_, State::Waiting)) => return None,
            _ => {}
        }
        let (mut id, mut i) = self.next.max((self.first_id, 0));
        loop {
            let b = self.get(id)?;
            match b.states.get(i) {
                None => (id, i) = (id + 1, 0),
                Some(State::Unsent) => return Some((id, i)),
                Some(_) => i += 1,
            }
        }
    }

    /// `slot` was published; its PubAck is awaited.
    pub(super) fn sent(&mut self, slot: Slot) {
        self.set(slot, State::Waiting);
        self.next = (slot.0, slot.1 + 1);
    }

    /// The server's answer to `slot`; the stream sequence walcast wrote, if any.
    pub(super) fn on_ack(&mut self, slot: Slot, outcome: Outcome) -> Option<u64> {
        self.state(slot)?; // its batch is confirmed already
        match outcome {
            Outcome::Stored {
                sequence,
                duplicate: false,
            } => {
                self.set(slot, State::Acked);
                Some(sequence)
            }
            Outcome::Stored { .. } => {
                // Stored by an earlier attempt: the chain after it is off.
                self.set(slot, State::Acked);
                self.expected.forget();
                self.failure.get_or_insert_with(|| "duplicate".into());
                None
            }
            Outcome::Refused(why) => {
                if self.state(slot) == Some(State::Waiting) {
                    self.set(slot, State::Unsent);
                }
                self.expected.forget();
                self.failure.get_or_insert(why);
                None
            }
        }
    }

    /// The messages not acknowledged, in order.
    pub(super) fn unacked_slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.batches.iter().enumerate().flat_map(move |(k, b)| {
            let id = self.first_id + k as u64;
            b.states
                .iter()
                .enumerate()
                .filter(|(_, s)| **s != State::Acked)
                .map(move |(i, _)| (id, i))
        })
    }

    /// Start again after a failure (no PubAck awaited any more): the stream holds the
    /// first `stored` messages not acknowledged, and its last sequence is `last`. The
    /// rest goes again, chained after `last`, its first message alone.
    pub(super) fn restart(&mut self, stored: usize, last: u64) {
        let unacked: Vec<Slot> = self.unacked_slots().collect();
        for (n, slot) in unacked.iter().enumerate() {
            let state = if n < stored {
                State::Acked
            } else {
                State::Unsent
            };
            self.set(*slot, state);
        }
        let end = (self.first_id + self.batches.len() as u64, 0);
        self.next = unacked.get(stored).copied().unwrap_or(end);
        self.probe = Some(self.next);
        self.failure = None;
        self.expected.chain_after(last);
    }

    /// The batches at the front whose messages are all acknowledged.
    pub(super) fn take_confirmed(&mut self, metrics: &Metrics) -> Vec<SinkBatch> {
        let mut done = Vec::new();
        while self
            .batches
            .front()
            .is_some_and(|f| f.acked == f.batch.items.len())
        {
            let f = self.batches.pop_front().expect("front exists");
            self.first_id += 1;
            let seconds = f.started.elapsed().as_secs_f64();
            metrics.sink.publish_seconds.observe(seconds);
            done.push(f.batch);
        }
        done
    }
}

#[cfg(test)]
#[path = "pending_tests.rs"]
mod tests;

//! The hand-over to the sink: envelopes built by the reader are gathered into
//! [`SinkBatch`]es; completed small transactions may linger a moment (`--publish-linger`)
//! so that one publish burst and one confirmation serve several of them, but only
//! while an earlier batch is still unconfirmed: with nothing in flight a completed
//! transaction goes at once (the linger never adds latency to a stream the sink keeps
//! up with). No I/O: the reader sends what [`Handover::take_ready`] gives it.

use std::time::{Duration, Instant};

use async_nats::Subject;

use crate::envelope::Outgoing;
use crate::sink::{Publish, SinkBatch};
use crate::wire::{Lsn, Timestamp};

/// Envelopes per batch handed to the sink.
pub(super) const BATCH_ITEMS: usize = 1024;

/// Envelopes on their way from the envelope stage to the sink.
pub(super) struct Handover {
    linger: Duration,
    /// Envelopes built and not yet in a batch (the open transaction's among them).
    pub(super) built: Vec<Outgoing>,
    /// A batch the sink had no room for yet.
    ready: Option<SinkBatch>,
    /// The end of the last transaction completed in `built`, and the commit times of
    /// the transactions completed there.
    completed_end: Option<Lsn>,
    completed_times: Vec<Timestamp>,
    /// When the oldest completed transaction still in `built` completed.
    completed_since: Option<Instant>,
    /// When transactions were last put in a batch.
    last_batch: Instant,
    /// The end of the last transaction put in a batch: while the sink has not
    /// confirmed it, a batch is in flight.
    batched_end: Lsn,
}

impl Handover {
    pub(super) fn new(linger: Duration) -> Self {
        Handover {
            linger,
            built: Vec::new(),
            ready: None,
            completed_end: None,
            completed_times: Vec::new(),
            completed_since: None,
            last_batch: Instant::now(),
            batched_end: Lsn(0),
        }
    }

    /// Whether a batch waits for room in the sink (the reader reads no WAL meanwhile).
    pub(super) fn is_blocked(&self) -> bool {
        self.ready.is_some()
    }

    /// Whether completed transactions wait in `built`.
    pub(super) fn has_completed(&self) -> bool {
        self.completed_end.is_some()
    }

    /// Forget everything not handed to the sink (the stream is read again).
    pub(super) fn discard(&mut self) {
        self.built.clear();
        self.ready = None;
    }

    /// A transaction ended with its envelopes in `built`.
    pub(super) fn transaction_completed(&mut self, end: Lsn, commit_ts: Timestamp) {
        self.completed_end = Some(end);
        self.completed_since.get_or_insert_with(Instant::now);
        self.completed_times.push(commit_ts);
        self.batch_if_full();
    }

    /// A full batch goes at once.
    pub(super) fn batch_if_full(&mut self) {
        if self.built.len() >= BATCH_ITEMS {
            self.batch();
        }
    }

    /// Completed transactions go when the sink took the previous batch and either it
    /// confirmed everything batched (`confirmed`: the end it confirmed) or their
    /// linger is over.
    pub(super) fn batch_completed(&mut self, confirmed: Lsn) {
        let in_flight = confirmed < self.batched_end;
        if self.ready.is_none()
            && self.completed_end.is_some()
            && (!in_flight || self.linger_over())
        {
            self.batch();
        }
    }

    /// Nothing lingers past a shutdown.
    pub(super) fn batch_completed_now(&mut self) {
        if self.ready.is_none() && self.completed_end.is_some() {
            self.batch();
        }
    }

    /// Completed transactions may go: they waited the linger, or they are many, or the
    /// last batch is more than four lingers ago (only a dense stream of transactions
    /// is gathered; a sparse one never waits).
    fn linger_over(&self) -> bool {
        self.last_batch.elapsed() >= self.linger * 4
            || self.built.len() >= BATCH_ITEMS / 4
            || self
                .completed_since
                .is_none_or(|since| since.elapsed() >= self.linger)
    }

    /// When the lingering transactions go (`None`: nothing lingers).
    pub(super) fn linger_deadline(&self) -> Option<tokio::time::Instant> {
        let since = self.completed_since.filter(|_| self.ready.is_none())?;
        Some((since + self.linger).into())
    }

    /// Move the envelopes built so far into a batch for the sink; it ends with the last
    /// transaction completed in it, if any.
    pub(super) fn batch(&mut self) {
        debug_assert!(self.ready.is_none());
        self.completed_since = None;
        self.last_batch = Instant::now();
        self.batched_end = self.batched_end.max(self.completed_end.unwrap_or(Lsn(0)));
        let items = std::mem::take(&mut self.built)
            .into_iter()
            .map(|o| Publish {
                subject: Subject::from(o.subject),
                payload: o.payload,
                msg_id: o.msg_id,
                position: o.position,
                ttl: o.ttl,
            })
            .collect();
        self.ready = Some(SinkBatch {
            items,
            commit_end: self.completed_end.take(),
            commit_times: std::mem::take(&mut self.completed_times),
        });
    }

    /// The batch waiting for the sink, if any.
    pub(super) fn take_ready(&mut self) -> Option<SinkBatch> {
        self.ready.take()
    }

    /// The sink had no room: the batch waits.
    pub(super) fn put_back(&mut self, batch: SinkBatch) {
        self.ready = Some(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Position;
    use bytes::Bytes;

    fn outgoing(n: u64) -> Outgoing {
        Outgoing {
            subject: format!("w.public.t.{n}"),
            payload: Bytes::from_static(b"x"),
            msg_id: format!("public.t:{n}:1"),
            position: Position::default(),
            ttl: None,
        }
    }

    fn ts() -> Timestamp {
        Timestamp {
            seconds: 1,
            nanos: 0,
        }
    }

    #[test]
    fn completed_transactions_linger_then_go_together() {
        let mut h = Handover::new(Duration::from_secs(3600));
        // A batch was just made and is not confirmed: a dense stream lingers.
        h.built.push(outgoing(0));
        h.transaction_completed(Lsn(5), ts());
        h.batch_completed(Lsn(0));
        assert_eq!(
            h.take_ready().unwrap().items.len(),
            1,
            "nothing in flight: at once"
        );
        h.built.push(outgoing(1));
        h.transaction_completed(Lsn(10), ts());
        h.built.push(outgoing(2));
        h.transaction_completed(Lsn(20), ts());
        h.batch_completed(Lsn(0));
        assert!(!h.is_blocked(), "within the linger nothing goes");
        assert!(h.linger_deadline().is_some());
        h.batch_completed_now();
        let batch = h.take_ready().expect("a batch");
        assert_eq!(batch.items.len(), 2);
        assert_eq!(batch.commit_end, Some(Lsn(20)));
        assert_eq!(batch.commit_times.len(), 2);
        assert!(h.linger_deadline().is_none() && !h.has_completed());
    }

    #[test]
    fn lingering_transactions_go_once_the_batch_in_flight_is_confirmed() {
        let mut h = Handover::new(Duration::from_secs(3600));
        h.built.push(outgoing(1));
        h.transaction_completed(Lsn(10), ts());
        h.batch_completed(Lsn(0));
        h.take_ready().expect("the first goes at once");
        h.built.push(outgoing(2));
        h.transaction_completed(Lsn(20), ts());
        h.batch_completed(Lsn(0));
        assert!(
            !h.is_blocked(),
            "the first batch is in flight: the second lingers"
        );
        h.batch_completed(Lsn(10));
        assert_eq!(h.take_ready().unwrap().commit_end, Some(Lsn(20)));
    }

    #[test]
    fn without_linger_a_completed_transaction_goes_at_once() {
        let mut h = Handover::new(Duration::ZERO);
        h.built.push(outgoing(1));
        h.transaction_completed(Lsn(10), ts());
        h.batch_completed(Lsn(0));
        assert_eq!(h.take_ready().unwrap().commit_end, Some(Lsn(10)));
    }

    #[test]
    fn a_full_batch_goes_even_mid_transaction_and_blocks_until_taken() {
        let mut h = Handover::new(Duration::from_secs(3600));
        h.built.extend((0..BATCH_ITEMS as u64).map(outgoing));
        h.batch_if_full();
        assert!(h.is_blocked());
        let batch = h.take_ready().unwrap();
        assert_eq!(batch.items.len(), BATCH_ITEMS);
        assert_eq!(batch.commit_end, None, "no transaction completed in it");
        h.put_back(batch);
        assert!(h.is_blocked() && h.linger_deadline().is_none());
        h.discard();
        assert!(!h.is_blocked() && h.built.is_empty());
    }
}

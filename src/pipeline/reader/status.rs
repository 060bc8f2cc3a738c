//! The status reporter: the checkpoint (what may be reported to PostgreSQL as flushed),
//! the transactions handed to the sink and not yet confirmed, the standby status
//! updates and the lag metrics they carry.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::Checkpoint;
use crate::ops::metrics::Metrics;
use crate::sink::Confirmed;
use crate::source::{ReplicationStream, SourceError};
use crate::wire::{Lsn, Position, Timestamp};

/// How soon after a confirmation the server hears of it (status updates no more often).
const STATUS_SOON: Duration = Duration::from_millis(10);

pub(super) struct StatusReporter {
    metrics: Arc<Metrics>,
    pub(super) cp: Checkpoint,
    /// Transactions handed to the sink and not yet confirmed: (end LSN, commit time).
    unconfirmed: VecDeque<(Lsn, Timestamp)>,
    /// Every envelope at or before this position is confirmed.
    confirmed_position: Position,
    /// When the last standby status update was sent.
    last_sent: Instant,
    /// A confirmation arrived since it was sent: send one soon.
    due: bool,
}

impl StatusReporter {
    /// `flush_delay`: how long a confirmed position waits before it is reported
    /// (`--flush-delay`).
    pub(super) fn new(metrics: Arc<Metrics>, flush_delay: Duration) -> Self {
        StatusReporter {
            metrics,
            cp: Checkpoint::default().with_delay(flush_delay),
            unconfirmed: VecDeque::new(),
            confirmed_position: Position::default(),
            last_sent: Instant::now(),
            due: false,
        }
    }

    /// Start from the slot's position, keeping what this process already knows (it
    /// only grows).
    pub(super) fn resume(&mut self, start: Lsn) {
        self.cp = self.cp.resumed(start);
    }

    /// A transaction's last envelope went to the hand-over.
    pub(super) fn transaction_handed(&mut self, end: Lsn, commit_ts: Timestamp) {
        self.cp.on_handed_off(end);
        self.unconfirmed.push_back((end, commit_ts));
    }

    /// The sink confirmed more.
    pub(super) fn on_confirmed(&mut self, c: Confirmed) {
        self.confirmed_position = self.confirmed_position.max(c.position);
        self.cp.on_confirmed(c.end);
    }

    /// Every envelope at or before this position is confirmed.
    pub(super) fn confirmed_position(&self) -> Position {
        self.confirmed_position
    }

    /// Everything handed to the sink is confirmed.
    pub(super) fn all_confirmed(&self) -> bool {
        self.cp.confirmed() >= self.cp.handed_off()
    }

    /// Transactions handed to the sink and not confirmed (at least one when asked
    /// after an unclean end).
    pub(super) fn unconfirmed_transactions(&self) -> usize {
        self.unconfirmed.len()
    }

    /// After a confirmation: tell the server soon (at most every `STATUS_SOON`), so it
    /// can release WAL and the lag shows truly. `true`: send one now.
    pub(super) fn confirmation_needs_update(&mut self) -> bool {
        if self.last_sent.elapsed() >= STATUS_SOON {
            return true;
        }
        self.due = true;
        false
    }

    /// When the update owed after a confirmation is to be sent (`None`: none owed).
    pub(super) fn due_at(&self) -> Option<tokio::time::Instant> {
        self.due.then(|| (self.last_sent + STATUS_SOON).into())
    }

    /// Send a standby status update (asking for a reply when `reply`), with the lag
    /// metrics of the moment.
    pub(super) async fn send(
        &mut self,
        stream: &mut ReplicationStream,
        reply: bool,
    ) -> Result<(), SourceError> {
        let flush = self.cp.flush_position();
        let received = self.cp.received();
        let lag_seconds = self.lag_seconds();
        let source = &self.metrics.source;
        source.confirmed_lsn.set(flush.0 as i64);
        source.received_lsn.set(received.0 as i64);
        source
            .lag_bytes
            .set(received.0.saturating_sub(flush.0) as i64);
        source.lag_seconds.set(lag_seconds);
        stream.send_status(received, flush, reply).await?;
        self.last_sent = Instant::now();
        self.due = false;
        Ok(())
    }

    /// The age of the oldest transaction not confirmed yet (0 when none waits).
    fn lag_seconds(&mut self) -> f64 {
        let confirmed = self.cp.confirmed();
        while self
            .unconfirmed
            .front()
            .is_some_and(|&(end, _)| end <= confirmed)
        {
            self.unconfirmed.pop_front();
        }
        self.unconfirmed
            .front()
            .map_or(0.0, |(_, committed)| committed.age_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter() -> StatusReporter {
        StatusReporter::new(Metrics::new(), Duration::ZERO)
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unconfirmed_transaction() {
        let mut r = reporter();
        r.resume(Lsn(100));
        let old = Timestamp {
            seconds: Timestamp::now().seconds - 30,
            nanos: 0,
        };
        r.transaction_handed(Lsn(200), old);
        r.transaction_handed(Lsn(300), Timestamp::now());
        assert!(!r.all_confirmed());
        let lag = r.lag_seconds();
        assert!((29.0..60.0).contains(&lag), "{lag}");
        r.on_confirmed(Confirmed {
            end: Lsn(200),
            position: Position::default(),
        });
        assert!(r.lag_seconds() < 5.0);
        assert_eq!(r.unconfirmed_transactions(), 1);
        r.on_confirmed(Confirmed {
            end: Lsn(300),
            position: Position::default(),
        });
        assert_eq!(r.lag_seconds(), 0.0);
        assert!(r.all_confirmed());
        assert_eq!(r.cp.flush_position(), Lsn(300));
    }

    #[test]
    fn resume_never_goes_back() {
        let mut r = reporter();
        r.resume(Lsn(100));
        r.transaction_handed(Lsn(200), Timestamp::now());
        r.on_confirmed(Confirmed {
            end: Lsn(200),
            position: Position::default(),
        });
        r.resume(Lsn(150));
        assert_eq!(r.cp.confirmed(), Lsn(200));
        assert_eq!(r.cp.handed_off(), Lsn(200));
    }

    #[test]
    fn a_confirmation_right_after_an_update_is_reported_soon_not_at_once() {
        let mut r = reporter();
        r.last_sent = Instant::now();
        assert!(!r.confirmation_needs_update());
        assert!(r.due_at().is_some());
        r.last_sent = Instant::now() - STATUS_SOON;
        assert!(r.confirmation_needs_update());
    }
}

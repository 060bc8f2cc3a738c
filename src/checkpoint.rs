//! The checkpoint: which WAL position may be reported to PostgreSQL as flushed.
//!
//! The flush position moves past a transaction only once the sink has confirmed every
//! envelope of it. While nothing is outstanding (no open transaction, everything handed
//! to the sink confirmed), the server's keepalive position is safe too: it lets the
//! slot release WAL that held no change for walcast. The reported position never
//! moves backwards.
//!
//! With a flush horizon (`--flush-delay`), a position becomes reportable only that long
//! after it was confirmed: a NATS server that acknowledged envelopes it had not synced
//! to disk yet may lose them in a host crash, and PostgreSQL then still holds their
//! WAL, so walcast publishes them again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::Lsn;

/// Confirmations this close together share one entry of the horizon (bounds it to
/// `delay / HORIZON_STEP` entries).
const HORIZON_STEP: Duration = Duration::from_millis(100);

#[derive(Debug, Default, Clone)]
pub struct Checkpoint {
    /// Highest WAL position received from the server.
    received: Lsn,
    /// End LSN of the last transaction handed to the sink.
    handed_off: Lsn,
    /// End LSN of the last transaction the sink confirmed.
    confirmed: Lsn,
    in_transaction: bool,
    /// Streamed transactions are in progress: a keepalive's position may lie past
    /// their start (only confirmed commits move the flush position then, which is
    /// safe: the server keeps their WAL and streams them again from their start).
    streams_open: bool,
    /// Highest position reported as flushed.
    reported: Lsn,
    /// How long a confirmed position waits before it is reported (`--flush-delay`).
    delay: Duration,
    /// Positions safe once their time is `delay` old: (when safe, position), oldest first.
    horizon: VecDeque<(Instant, Lsn)>,
}

impl Checkpoint {
    /// Start from the slot's confirmed position.
    pub fn starting_at(lsn: Lsn) -> Self {
        Checkpoint {
            received: lsn,
            handed_off: lsn,
            confirmed: lsn,
            in_transaction: false,
            streams_open: false,
            reported: lsn,
            delay: Duration::ZERO,
            horizon: VecDeque::new(),
        }
    }

    /// Report a confirmed position only `delay` after its confirmation.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Start again from the slot's position `start` (after a reconnect), keeping what
    /// this checkpoint knows: confirmations and the positions still waiting out the delay.
    pub fn resumed(&self, start: Lsn) -> Self {
        let mut cp = Checkpoint::starting_at(start.max(self.confirmed)).with_delay(self.delay);
        cp.on_received(self.received);
        cp.confirmed = cp.confirmed.max(self.confirmed);
        cp.on_handed_off(self.handed_off.max(start));
        cp.horizon = self.horizon.clone();
        if !self.delay.is_zero() {
            // Nothing confirmed is reported before its time, a reconnect or not.
            cp.reported = start.max(self.reported);
        }
        cp
    }

    /// `lsn` is safe to report (now, or once the delay has passed).
    fn safe(&mut self, lsn: Lsn) {
        if self.delay.is_zero() {
            self.reported = self.reported.max(lsn);
            return;
        }
        let now = Instant::now();
        match self.horizon.back_mut() {
            Some((at, last)) if now.duration_since(*at) < HORIZON_STEP => *last = (*last).max(lsn),
            _ => self.horizon.push_back((now, lsn)),
        }
    }

    pub fn on_received(&mut self, wal_end: Lsn) {
        self.received = self.received.max(wal_end);
    }

    pub fn on_begin(&mut self) {
        self.in_transaction = true;
    }

    /// A transaction's last envelope went to the sink.
    pub fn on_handed_off(&mut self, end_lsn: Lsn) {
        self.in_transaction = false;
        self.handed_off = self.handed_off.max(end_lsn);
    }

    /// A skipped (already handed off) transaction ended.
    pub fn on_skipped_commit(&mut self) {
        self.in_transaction = false;
    }

    /// The sink confirmed everything up to this transaction end.
    pub fn on_confirmed(&mut self, end_lsn: Lsn) {
        self.confirmed = self.confirmed.max(end_lsn);
        self.safe(self.confirmed);
    }

    pub fn set_streams_open(&mut self, open: bool) {
        self.streams_open = open;
    }

    /// Nothing is waiting on the sink and no transaction is open (streamed or not).
    pub fn is_idle(&self) -> bool {
        !self.in_transaction && !self.streams_open && self.confirmed >= self.handed_off
    }

    /// A keepalive: when idle, its position is safe to report.
    pub fn on_keepalive(&mut self, wal_end: Lsn) {
        self.on_received(wal_end);
        if self.is_idle() {
            self.safe(wal_end);
        }
    }

    pub fn received(&self) -> Lsn {
        self.received
    }

    pub fn handed_off(&self) -> Lsn {
        self.handed_off
    }

    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// The position to send as flushed now.
    pub fn flush_position(&mut self) -> Lsn {
        if self.delay.is_zero() {
            self.reported = self.reported.max(self.confirmed);
        }
        while let Some(&(at, lsn)) = self.horizon.front() {
            if at.elapsed() < self.delay {
                break;
            }
            self.reported = self.reported.max(lsn);
            self.horizon.pop_front();
        }
        self.reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_waits_for_confirmation_and_never_goes_back() {
        let mut cp = Checkpoint::starting_at(Lsn(100));
        cp.on_begin();
        cp.on_received(Lsn(150));
        cp.on_keepalive(Lsn(160));
        assert_eq!(cp.flush_position(), Lsn(100), "open transaction");
        cp.on_handed_off(Lsn(150));
        cp.on_keepalive(Lsn(170));
        assert_eq!(cp.flush_position(), Lsn(100), "not yet confirmed");
        cp.on_confirmed(Lsn(150));
        assert_eq!(cp.flush_position(), Lsn(150));
        cp.on_keepalive(Lsn(200));
        assert_eq!(cp.flush_position(), Lsn(200), "idle: keepalive position");
        cp.on_begin();
        cp.on_handed_off(Lsn(250));
        cp.on_confirmed(Lsn(150));
        assert_eq!(cp.flush_position(), Lsn(200), "monotonic");
    }

    #[test]
    fn a_flush_delay_holds_confirmations_and_keepalives_back_that_long() {
        let delay = Duration::from_millis(300);
        let mut cp = Checkpoint::starting_at(Lsn(100)).with_delay(delay);
        cp.on_begin();
        cp.on_handed_off(Lsn(150));
        cp.on_confirmed(Lsn(150));
        cp.on_keepalive(Lsn(160));
        assert_eq!(
            cp.flush_position(),
            Lsn(100),
            "confirmed, not yet old enough"
        );
        // A reconnect keeps what waits out the delay.
        let mut cp = cp.resumed(Lsn(100));
        std::thread::sleep(delay + Duration::from_millis(50));
        assert_eq!(cp.flush_position(), Lsn(160));
        cp.on_keepalive(Lsn(170));
        assert_eq!(cp.flush_position(), Lsn(160));
    }

    #[test]
    fn an_open_streamed_transaction_holds_keepalives_back_not_commits() {
        let mut cp = Checkpoint::starting_at(Lsn(100));
        cp.set_streams_open(true);
        cp.on_keepalive(Lsn(300));
        assert_eq!(
            cp.flush_position(),
            Lsn(100),
            "keepalive past a stream's start"
        );
        cp.on_begin();
        cp.on_handed_off(Lsn(200));
        cp.on_confirmed(Lsn(200));
        assert_eq!(cp.flush_position(), Lsn(200), "a confirmed commit");
        cp.set_streams_open(false);
        cp.on_keepalive(Lsn(300));
        assert_eq!(cp.flush_position(), Lsn(300));
    }
}

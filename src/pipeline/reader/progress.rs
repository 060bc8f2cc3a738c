//! What the reader tells operators while it streams: the periodic progress line
//! (quiet while idle) and the age of the last heartbeat seen in the stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::Checkpoint;
use crate::ops::metrics::Metrics;
use crate::wire::Timestamp;

/// The periodic progress line.
pub(super) struct Progress {
    interval: Duration,
    since: Instant,
    /// Changes turned into envelopes since the last line.
    changes: u64,
}

impl Progress {
    pub(super) fn new(interval: Duration) -> Self {
        Progress {
            interval,
            since: Instant::now(),
            changes: 0,
        }
    }

    pub(super) fn count(&mut self, changes: u64) {
        self.changes += changes;
    }

    /// A line when the interval passed and changes flowed in it.
    pub(super) fn log_if_due(&mut self, cp: &Checkpoint, last_commit: Timestamp) {
        let elapsed = self.since.elapsed();
        if elapsed < self.interval {
            return;
        }
        if self.changes > 0 {
            tracing::info!(
                changes = self.changes,
                changes_per_s = (self.changes as f64 / elapsed.as_secs_f64()).round(),
                lag_bytes = cp.received().0.saturating_sub(cp.confirmed().0),
                last_commit = %last_commit.to_rfc3339(),
                "progress"
            );
        }
        self.since = Instant::now();
        self.changes = 0;
    }
}

/// The heartbeat walcast writes (`source::monitor`), recognised when it comes back
/// through the stream: `walcast_heartbeat_age_seconds`.
pub(super) struct HeartbeatAge {
    metrics: Arc<Metrics>,
    /// When the last heartbeat seen was written.
    last_written: Option<Timestamp>,
}

impl HeartbeatAge {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        HeartbeatAge {
            metrics,
            last_written: None,
        }
    }

    /// A heartbeat message came back: its content is when it was written (Unix
    /// microseconds).
    pub(super) fn seen(&mut self, content: &[u8]) {
        let written = std::str::from_utf8(content)
            .ok()
            .and_then(|t| t.parse::<i64>().ok());
        if let Some(micros) = written {
            self.last_written = Some(Timestamp::from_unix_micros(micros));
            self.update();
        }
    }

    /// Set the metric to how old the last heartbeat seen is.
    pub(super) fn update(&self) {
        if let Some(written) = self.last_written {
            self.metrics.source.heartbeat_age.set(written.age_secs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_sets_its_age_and_garbage_is_ignored() {
        let metrics = Metrics::new();
        let mut h = HeartbeatAge::new(metrics.clone());
        h.seen(b"not a time");
        assert_eq!(metrics.source.heartbeat_age.get(), 0.0);
        let ten_s_ago = Timestamp::now().unix_micros() - 10_000_000;
        h.seen(ten_s_ago.to_string().as_bytes());
        let age = metrics.source.heartbeat_age.get();
        assert!((9.0..60.0).contains(&age), "{age}");
    }
}

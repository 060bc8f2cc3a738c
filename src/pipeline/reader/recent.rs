//! The transactions the reader saw commit that a read of a table may not see yet
//! (PostgreSQL streams a commit a moment before it is visible): a snapshot chunk, a
//! repair chunk or a key re-snapshot is read in a snapshot that sees them all, and an
//! unchanged-TOAST value is read again until the read sees its change.

use std::time::Duration;

use super::envelopes::Envelopes;
use crate::envelope::ToastNeeded;
use crate::pipeline::PipelineError;
use crate::source::visibility::VisibleWait;

/// How many of the latest commits are kept. A commit older than that many others is
/// visible long since (its backend had only to leave the process array).
const KEPT: usize = 65_536;

/// How long an unchanged-TOAST read waits for its change to become visible before
/// the value is published as unavailable (the repair reads it later).
const TOAST_VISIBLE_WAIT: Duration = Duration::from_secs(2);

/// The latest commits no read has seen yet (32-bit transaction ids).
#[derive(Default)]
pub(super) struct RecentCommits {
    xids: Vec<u32>,
}

impl RecentCommits {
    /// A transaction committed in the stream.
    pub(super) fn committed(&mut self, xid: u32) {
        if self.xids.len() >= 2 * KEPT {
            self.xids.drain(..KEPT);
        }
        self.xids.push(xid);
    }

    /// The commits a read must see.
    pub(super) fn must_see(&self) -> &[u32] {
        &self.xids
    }

    /// A read saw them all: every later read sees them too.
    pub(super) fn all_seen(&mut self) {
        self.xids.clear();
    }
}

impl Envelopes {
    /// The current values of the unchanged-TOAST columns of `needed`'s row, read once
    /// its change is visible (for at most [`TOAST_VISIBLE_WAIT`]); whether the row is
    /// still that change's version.
    pub(super) async fn fetch_toast_now(
        &mut self,
        needed: &ToastNeeded,
    ) -> Result<(Vec<Option<String>>, bool), PipelineError> {
        let (check, expected) = needed.source.version.check();
        let mut wait = VisibleWait::new(TOAST_VISIBLE_WAIT);
        loop {
            self.metrics.envelope.toast_fetch_queries.inc();
            let (texts, found, seen) = self
                .catalog
                .fetch_row_columns(
                    &needed.schema,
                    &needed.table,
                    &needed.key_columns,
                    &needed.columns,
                    &check,
                )
                .await?;
            let same = found.as_deref() == Some(expected.as_str());
            let unseen = seen.is_some_and(|s| !s.sees(needed.source.xid));
            if same || !unseen || !wait.pause().await {
                return Ok((texts, same));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_commits_are_kept_until_a_read_sees_them() {
        let mut recent = RecentCommits::default();
        for xid in 0..(2 * KEPT as u32 + 10) {
            recent.committed(xid);
        }
        let kept = recent.must_see();
        assert!(kept.len() <= 2 * KEPT && kept.len() >= KEPT);
        assert_eq!(kept.last(), Some(&(2 * KEPT as u32 + 9)));
        recent.all_seen();
        assert!(recent.must_see().is_empty());
    }
}

//! Which transactions a read of a table saw. PostgreSQL streams a commit once its WAL
//! is flushed, a moment before the committing backend makes it visible (longer while a
//! synchronous standby has not answered), so a read walcast makes just after a change
//! it already published can still find the row as it was before that change. Each
//! read therefore carries its snapshot (`pg_current_snapshot()`), and a read that must
//! see some transactions is made again until it does.

use std::time::Duration;

use tokio::time::Instant;

use super::catalog::Catalog;
use super::SourceError;

/// The snapshot of the statement that evaluates it, as text (`xmin:xmax:xip,...`).
pub const SNAPSHOT_TEXT: &str = "pg_current_snapshot()::text";

/// The longest a read waits for transactions walcast streamed to become visible.
pub const VISIBLE_WAIT: Duration = Duration::from_secs(10);

/// Rows of a simple query, each column in its text form.
pub type TextRows = Vec<Vec<Option<String>>>;

/// A read's snapshot, in 32-bit transaction ids (as pgoutput sends them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenSnapshot {
    xmin: u32,
    xmax: u32,
    in_progress: Vec<u32>,
}

/// `a` comes before `b` (modulo 2³², as PostgreSQL compares transaction ids).
fn precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl SeenSnapshot {
    /// From `pg_current_snapshot()::text` (64-bit ids with their epoch).
    pub fn parse(text: &str) -> Option<SeenSnapshot> {
        let low = |t: &str| t.parse::<u64>().ok().map(|x| x as u32);
        let mut parts = text.splitn(3, ':');
        let xmin = low(parts.next()?)?;
        let xmax = low(parts.next()?)?;
        let in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list.split(',').map(low).collect::<Option<_>>()?,
        };
        Some(SeenSnapshot {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether the committed transaction `xid` is visible in this snapshot.
    pub fn sees(&self, xid: u32) -> bool {
        precedes(xid, self.xmin) || (precedes(xid, self.xmax) && !self.in_progress.contains(&xid))
    }

    /// The first of `xids` this snapshot does not see.
    pub fn first_unseen(&self, xids: &[u32]) -> Option<u32> {
        xids.iter().copied().find(|&x| !self.sees(x))
    }
}

/// Waiting for a streamed commit to become visible: pauses of 1, 2, 4 … 100 ms, for
/// at most a bound.
pub struct VisibleWait {
    started: Instant,
    pause: Duration,
    bound: Duration,
}

impl VisibleWait {
    pub fn new(bound: Duration) -> VisibleWait {
        VisibleWait {
            started: Instant::now(),
            pause: Duration::from_millis(1),
            bound,
        }
    }

    /// Pause before the next read; `false` (at once) when the bound has passed.
    pub async fn pause(&mut self) -> bool {
        if self.started.elapsed() >= self.bound {
            return false;
        }
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(100));
        true
    }
}

impl Catalog {
    /// The rows of `sql` read in one snapshot that sees every transaction of
    /// `must_see` (committed ones walcast streamed already): read again after a short
    /// pause while it does not, for at most [`VISIBLE_WAIT`].
    pub async fn text_rows_seeing(
        &self,
        sql: &str,
        must_see: &[u32],
    ) -> Result<(TextRows, SeenSnapshot), SourceError> {
        let mut wait = VisibleWait::new(VISIBLE_WAIT);
        loop {
            let (rows, seen) = self.text_rows_in_snapshot(sql).await?;
            let Some(xid) = seen.first_unseen(must_see) else {
                return Ok((rows, seen));
            };
            tracing::debug!(xid, "a streamed commit is not visible yet: reading again");
            if !wait.pause().await {
                return Err(SourceError::NotVisible {
                    xid,
                    waited: VISIBLE_WAIT,
                });
            }
        }
    }

    /// The rows of `sql` and the snapshot they were read in (one repeatable-read
    /// transaction, sent as one query so that nothing else runs inside it).
    async fn text_rows_in_snapshot(
        &self,
        sql: &str,
    ) -> Result<(TextRows, SeenSnapshot), SourceError> {
        let script = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT {SNAPSHOT_TEXT}; {sql}; COMMIT"
        );
        let mut rows = match self.client.simple_query(&script).await {
            Ok(messages) => super::chunks::rows_of(messages),
            Err(e) => {
                // The failed statement left the transaction open, aborted.
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e.into());
            }
        }
        .into_iter();
        let snapshot = rows.next().and_then(|r| r.into_iter().next().flatten());
        let seen = snapshot
            .as_deref()
            .and_then(SeenSnapshot::parse)
            .ok_or_else(|| {
                SourceError::Protocol(format!("pg_current_snapshot gave {snapshot:?}"))
            })?;
        Ok((rows.collect(), seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_what_ended_before_it_and_nothing_in_progress() {
        let s = SeenSnapshot::parse("100:110:103,105").unwrap();
        assert!(s.sees(99) && s.sees(104) && s.sees(109));
        assert!(!s.sees(103) && !s.sees(105) && !s.sees(110) && !s.sees(200));
        assert_eq!(s.first_unseen(&[99, 105, 103]), Some(105));
        assert_eq!(s.first_unseen(&[99, 104]), None);
        assert_eq!(
            SeenSnapshot::parse("7:7:").unwrap().first_unseen(&[6]),
            None
        );
    }

    #[test]
    fn ids_compare_in_32_bits_across_the_epoch() {
        // Epoch 1: 4294967296 + 5; a transaction of epoch 0 near its end came before.
        let s = SeenSnapshot::parse("4294967301:4294967310:").unwrap();
        assert!(s.sees(u32::MAX - 3));
        assert!(s.sees(6));
        assert!(!s.sees(14) && !s.sees(20));
        assert!(SeenSnapshot::parse("1:x:").is_none());
    }
}

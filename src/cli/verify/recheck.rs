//! The second look at keys that differed at the first: read again between two WAL
//! positions (low and high watermarks), compared once walcast's slot has confirmed
//! the high one — every change committed before it is then in the stream.
//!
//! A key is settled when the row and the stream agree, or when the key's last
//! envelope (and the table's last truncate) is older than the re-read's low
//! watermark: the stream then holds no change of the key that the re-read could have
//! missed or seen ahead of it, so a difference is real. A key with a newer envelope is
//! read again, [`ROUNDS`] times at most; after that it is "changing".

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use super::compare::{on_bus, position_of, verdict, Verdict};
use super::report::TableReport;
use super::{KeyRef, Table, Verifier};
use crate::wire::Lsn;

/// Looks at a key before it is called changing.
const ROUNDS: usize = 3;
/// How long walcast may take to confirm a watermark (a longer lag is an error: verify
/// cannot tell a change in flight from a difference).
const CONFIRM_WITHIN: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

impl Verifier {
    /// The verdicts on `keys`, each settled as above (or changing); counted in
    /// `report` as looked at again.
    pub(super) async fn recheck(
        &mut self,
        table: &Table,
        keys: Vec<KeyRef>,
        report: &mut TableReport,
    ) -> anyhow::Result<Vec<(KeyRef, Verdict)>> {
        report.rechecked += keys.len() as u64;
        let mut settled = Vec::with_capacity(keys.len());
        let mut pending = keys;
        for _ in 0..ROUNDS {
            if pending.is_empty() {
                break;
            }
            let low = self.catalog.current_wal_lsn().await?;
            let rows = self.row_values(table, &pending).await?;
            let high = self.catalog.current_wal_lsn().await?;
            self.wait_confirmed(high).await?;
            let subjects: Vec<String> = pending.iter().map(|k| k.subject.clone()).collect();
            let bus = self.store.last_envelopes(&subjects).await?.by_subject;
            let truncated = self.truncated(table).await?;
            let truncated_since = truncated.is_some_and(|t| t.commit_lsn >= low);
            let mut again = Vec::new();
            for key in pending {
                let stored = bus.get(&key.subject);
                let v = verdict(rows.get(&key.key), on_bus(stored, truncated));
                let newer =
                    truncated_since || stored.is_some_and(|s| position_of(s).commit_lsn >= low);
                if v.settled() || !newer {
                    settled.push((key, v));
                } else {
                    again.push(key);
                }
            }
            pending = again;
        }
        settled.extend(pending.into_iter().map(|k| (k, Verdict::Changing)));
        Ok(settled)
    }

    /// The published values of the rows of `keys` that exist, by key.
    async fn row_values(
        &self,
        table: &Table,
        keys: &[KeyRef],
    ) -> anyhow::Result<HashMap<String, rmpv::Value>> {
        let values: Vec<Vec<String>> = keys.iter().map(|k| k.values.clone()).collect();
        let texts = self.catalog.read_rows(&table.info, &values, &[]).await?;
        let mut out = HashMap::with_capacity(texts.len());
        for row in &texts {
            let (key, value) = self.key_and_value(&table.info, row)?;
            out.insert(key.key, value);
        }
        Ok(out)
    }

    /// Wait until walcast's slot confirmed `lsn`. At once when the slot is missing or
    /// inactive: nothing streams, the stream is compared as it is (and the report says
    /// so).
    async fn wait_confirmed(&mut self, lsn: Lsn) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONFIRM_WITHIN;
        loop {
            let Some(confirmed) = self.slot_confirmed().await? else {
                return Ok(());
            };
            if confirmed >= lsn {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "walcast's slot {} confirmed {confirmed}, not yet {lsn}, within {CONFIRM_WITHIN:?}: walcast is behind, and a change in flight cannot be told from a difference; verify again once it caught up",
                    self.slot
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What walcast's slot confirmed, while it streams (`None`: the slot is missing or
    /// inactive; said once, and remembered for the report).
    pub(super) async fn slot_confirmed(&mut self) -> anyhow::Result<Option<Lsn>> {
        let slot = self.catalog.slot(&self.slot).await?;
        let confirmed = slot
            .filter(|s| s.active)
            .and_then(|s| s.confirmed_flush_lsn)
            .and_then(|text| text.parse::<Lsn>().ok());
        if confirmed.is_none() && self.streaming {
            tracing::warn!(slot = %self.slot, "walcast's slot is not streaming: the stream is compared as it is (changes still in the slot show as differences)");
        }
        self.streaming = confirmed.is_some();
        Ok(confirmed)
    }
}

//! The reader's side of requests: a refetch reads the key's row from the table and
//! builds its envelope with the shape and schema version the stream published; a
//! re-snapshot queues tables for the snapshot stage.

use super::ChangeReader;
use crate::pipeline::requests::{RefetchAnswer, Request, SnapshotReply};
use crate::pipeline::snapshot::{Progress, Snapshot, TableProgress};
use crate::pipeline::PipelineError;
use crate::source::chunks::TableInfo;
use crate::wire::key::parse_key;
use crate::wire::Timestamp;

impl ChangeReader {
    /// Answer one request (between transactions: the builder is not mid-change).
    pub(in crate::pipeline) async fn answer(
        &mut self,
        request: Request,
    ) -> Result<(), PipelineError> {
        match request {
            Request::Refetch { key, reply } => {
                let answer = match self.refetch_answer(&key).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "refetch request failed");
                        self.refetch_tables.clear();
                        RefetchAnswer::Refused(e.to_string())
                    }
                };
                let _ = reply.send(answer);
            }
            Request::Snapshot { tables, reply } => {
                let answer = self.queue_resnapshot(tables).await?;
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    /// Queue a re-snapshot of `tables` while streaming: stored as unfinished progress
    /// first (a crash resumes it), then read like the initial snapshot, comparing each
    /// row with the key's last envelope and sweeping keys that lost their row.
    async fn queue_resnapshot(
        &mut self,
        tables: Vec<String>,
    ) -> Result<SnapshotReply, PipelineError> {
        let mut reply = SnapshotReply::default();
        let (known, unknown): (Vec<String>, Vec<String>) =
            tables.into_iter().partition(|t| self.tables.contains(t));
        reply.unknown = unknown;
        if let Some(snapshot) = self.snapshot.as_mut() {
            reply.queued = snapshot.add_tables(&known);
        } else if !known.is_empty() {
            let mut progress: Progress = match &self.store {
                Some(store) => store.load_snapshot(&self.cfg.slot).await?,
                None => Progress::default(),
            };
            progress.complete = false;
            for t in &known {
                progress.tables.insert(t.clone(), TableProgress::default());
            }
            if let Some(store) = &self.store {
                store.store_snapshot(&self.cfg.slot, &progress).await?;
            }
            let chunk_rows = self.cfg.snapshot_chunk_rows as usize;
            self.snapshot = Some(Snapshot::new(&known, progress, chunk_rows));
            reply.queued = known.clone();
        }
        reply.already = known
            .into_iter()
            .filter(|t| !reply.queued.contains(t))
            .collect();
        if let Some(snapshot) = &self.snapshot {
            tracing::info!(queued = ?reply.queued, already = ?reply.already, unknown = ?reply.unknown, "re-snapshot requested");
            self.metrics
                .envelope
                .snapshot_tables_remaining
                .set(snapshot.tables_remaining() as i64);
            self.metrics.set_note(snapshot.note());
        }
        Ok(reply)
    }

    async fn refetch_answer(&mut self, key: &str) -> Result<RefetchAnswer, PipelineError> {
        let refuse = |why: String| Ok(RefetchAnswer::Refused(why));
        let Ok(parsed) = parse_key(key) else {
            return refuse(format!("{key:?} is not a walcast key"));
        };
        let qualified = format!("{}.{}", parsed.schema, parsed.table);
        if !self.tables.contains(&qualified) {
            return refuse(format!("{qualified} is not a published table"));
        }
        let info = self.refetch_table(&qualified).await?;
        if parsed.values.len() != info.key.len() {
            return refuse(format!(
                "{key:?} has {} key value(s); {qualified}'s key has {}",
                parsed.values.len(),
                info.key.len()
            ));
        }
        let Some(texts) = self.catalog.read_row(&info, &parsed.values).await? else {
            return Ok(RefetchAnswer::NotFound);
        };
        let row = super::snapshot_io::tuple(&texts);
        let envelope = self.builder.refetch_envelope(
            info.relation_id,
            &row,
            self.cp.received(),
            Timestamp::now(),
        )?;
        Ok(match envelope {
            Some(bytes) => RefetchAnswer::Envelope(bytes),
            None => RefetchAnswer::Refused(format!(
                "{qualified} is in tracked mode: its key's last envelope is the last message of the subject in walcast's stream"
            )),
        })
    }

    /// The table as the catalog describes it, known to the envelope stage.
    async fn refetch_table(&mut self, qualified: &str) -> Result<TableInfo, PipelineError> {
        if let Some(info) = self.refetch_tables.get(qualified) {
            return Ok(info.clone());
        }
        let info = self.catalog.table_info(qualified).await?;
        if !self.builder.knows_relation(info.relation_id) {
            self.register_relation(&info).await?;
        }
        self.refetch_tables
            .insert(qualified.to_string(), info.clone());
        Ok(info)
    }
}

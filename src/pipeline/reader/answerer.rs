//! The request answerer: a refetch reads the key's row from the table and builds its
//! envelope with the shape and schema version the stream published; a re-snapshot
//! queues tables for the snapshot driver. Requests are answered between transactions.

use std::collections::HashMap;

use super::ChangeReader;
use crate::pipeline::requests::{RefetchAnswer, Request, SnapshotReply};
use crate::pipeline::PipelineError;
use crate::source::chunks::TableInfo;
use crate::wire::key::parse_key;
use crate::wire::Timestamp;

/// What the answerer keeps between requests.
#[derive(Default)]
pub(super) struct RequestAnswerer {
    /// Tables refetch requests read, as the catalog described them.
    refetch_tables: HashMap<String, TableInfo>,
}

impl ChangeReader {
    /// Answer one request (between transactions: the builder is not mid-change).
    pub(super) async fn answer(&mut self, request: Request) -> Result<(), PipelineError> {
        match request {
            Request::Refetch { key, reply } => {
                let answer = match self.refetch_answer(&key).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "refetch request failed");
                        self.answerer.refetch_tables.clear();
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

    /// Queue a re-snapshot of the published ones among `tables`.
    async fn queue_resnapshot(
        &mut self,
        tables: Vec<String>,
    ) -> Result<SnapshotReply, PipelineError> {
        self.refresh_tables().await?;
        let mut reply = SnapshotReply::default();
        let (known, unknown): (Vec<String>, Vec<String>) =
            tables.into_iter().partition(|t| self.tables.contains(t));
        reply.unknown = unknown;
        let store = self.envelopes.store.as_ref();
        reply.queued = self.snapshot.queue(&known, store).await?;
        reply.already = known
            .into_iter()
            .filter(|t| !reply.queued.contains(t))
            .collect();
        if self.snapshot.snapshot.is_some() {
            tracing::info!(queued = ?reply.queued, already = ?reply.already, unknown = ?reply.unknown, "re-snapshot requested");
            self.snapshot.show();
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
        let Some(texts) = self
            .envelopes
            .catalog
            .read_row(&info, &parsed.values)
            .await?
        else {
            return Ok(RefetchAnswer::NotFound);
        };
        let row = super::snapshot_read::tuple(&texts);
        let envelope = self.envelopes.builder.refetch_envelope(
            info.relation_id,
            &row,
            self.status.cp.received(),
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
        if let Some(info) = self.answerer.refetch_tables.get(qualified) {
            return Ok(info.clone());
        }
        let info = self.envelopes.known_table(qualified).await?;
        self.answerer
            .refetch_tables
            .insert(qualified.to_string(), info.clone());
        Ok(info)
    }
}

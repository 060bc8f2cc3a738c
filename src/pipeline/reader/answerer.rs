//! The request answerer: a refetch reads the key's row from the table and builds its
//! envelope with the shape and schema version the stream published; a re-snapshot
//! queues tables for the snapshot driver, or (keys of one table) reads those rows and
//! hands them to the driver as one chunk. Requests are answered between transactions.

use std::collections::{HashMap, HashSet};

use super::ChangeReader;
use crate::pipeline::requests::{RefetchAnswer, Request, SnapshotReply};
use crate::pipeline::snapshot::{Chunk, Progress, Snapshot};
use crate::pipeline::PipelineError;
use crate::source::chunks::TableInfo;
use crate::source::ReplicationStream;
use crate::wire::key::{make_key, parse_key};
use crate::wire::Timestamp;

/// The answer to a key request while another chunk is under way.
const BUSY: &str = "busy: another chunk waits for the stream; retry";

/// What the answerer keeps between requests.
#[derive(Default)]
pub(super) struct RequestAnswerer {
    /// Tables refetch requests read, as the catalog described them.
    refetch_tables: HashMap<String, TableInfo>,
}

impl ChangeReader {
    /// Answer one request (between transactions: the builder is not mid-change).
    pub(super) async fn answer(
        &mut self,
        request: Request,
        stream: &mut ReplicationStream,
    ) -> Result<(), PipelineError> {
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
            Request::SnapshotKeys { keys, reply } => {
                let answer = match self.queue_key_resnapshot(&keys, stream).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::warn!(error = %e, "key re-snapshot request failed");
                        SnapshotReply::refused(&e.to_string())
                    }
                };
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    /// Re-snapshot these keys of one published table: their rows are read now and
    /// handed to the snapshot driver as one chunk (published once the stream passed
    /// its high watermark; rows equal to the key's last envelope are not, keys without
    /// a row get a `delete`). Not stored: a restart before it is published drops it.
    /// While a table snapshot runs, the whole table is queued instead; while another
    /// chunk waits (keys, or marked keys read again), the answer is "busy; retry".
    async fn queue_key_resnapshot(
        &mut self,
        keys: &[String],
        stream: &mut ReplicationStream,
    ) -> Result<SnapshotReply, PipelineError> {
        let Some((table, values)) = keys_of_one_table(keys) else {
            return Ok(SnapshotReply::refused(
                "expected walcast keys, all of one table",
            ));
        };
        self.refresh_tables().await?;
        if !self.tables.contains(&table) {
            let unknown = vec![table];
            return Ok(SnapshotReply {
                unknown,
                ..Default::default()
            });
        }
        match &self.snapshot.snapshot {
            Some(s) if s.tables_remaining() > 0 => return self.queue_resnapshot(vec![table]).await,
            Some(_) => return Ok(SnapshotReply::refused(BUSY)),
            None => {}
        }
        // One chunk waits for the stream at a time, and none is read before the
        // stream caught up with the WAL's end at open.
        if self.repairs.chunk_waiting() || self.status.cp.received() < self.snapshot.start_after {
            return Ok(SnapshotReply::refused(BUSY));
        }
        // Described as a table snapshot describes it: the catalog's shape now.
        let info = self.envelopes.catalog.table_info(&table).await?;
        self.envelopes.register_relation(&info).await?;
        if values.iter().any(|v| v.len() != info.key.len()) {
            let why = format!("{table}'s key has {} column(s)", info.key.len());
            return Ok(SnapshotReply::refused(&why));
        }
        let chunk = self.read_keys(&info, &values).await?;
        self.pend_key_chunk(chunk).await?;
        // The chunk goes out once the server says the stream passed its watermark.
        self.status.send(stream, true).await?;
        tracing::info!(table = %table, keys = values.len(), "key re-snapshot requested");
        let queued = vec![table];
        Ok(SnapshotReply {
            queued,
            keys: Some(values.len()),
            ..Default::default()
        })
    }

    /// A key chunk becomes the pending chunk of a snapshot of no table, which carries
    /// the stored progress (stored again once the chunk is confirmed) and compares
    /// each row with its key's last envelope.
    async fn pend_key_chunk(&mut self, chunk: Chunk) -> Result<(), PipelineError> {
        let stored: Progress = match &self.envelopes.store {
            Some(store) => store.load_snapshot(&self.source.slot).await?,
            None => Progress::default(),
        };
        let progress = progress_for_keys(stored, &self.tables);
        let mut snapshot = Snapshot::new(&[], progress, self.settings.snapshot.chunk_rows);
        snapshot.verify.insert(chunk.table.clone());
        snapshot.pending = Some(chunk);
        self.snapshot.snapshot = Some(snapshot);
        Ok(())
    }

    /// The rows of these keys as a snapshot chunk; keys without a row are its vanished
    /// keys.
    async fn read_keys(
        &mut self,
        info: &TableInfo,
        values: &[Vec<String>],
    ) -> Result<Chunk, PipelineError> {
        let env = &mut self.envelopes;
        let texts = env
            .catalog
            .read_rows(info, values, env.recent.must_see())
            .await?;
        env.recent.all_seen();
        let catalog = &env.catalog;
        let high = catalog.current_wal_lsn().await?;
        let mut rows = Vec::with_capacity(texts.len());
        for row in texts {
            let tuple = super::snapshot_read::tuple(&row);
            let key = self
                .envelopes
                .builder
                .key_of_row(info.relation_id, &tuple)?
                .0;
            rows.push((key, row));
        }
        let found: HashSet<&String> = rows.iter().map(|(k, _)| k).collect();
        let vanished = values
            .iter()
            .map(|v| {
                (
                    make_key(&info.schema, &info.name, v.iter().map(String::as_str)),
                    v.clone(),
                )
            })
            .filter(|(k, _)| !found.contains(k))
            .collect();
        Ok(Chunk {
            table: info.qualified(),
            relation_id: info.relation_id,
            high,
            rows,
            removed: Default::default(),
            vanished,
            last_key: None,
            last: true,
        })
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

/// The table (`schema.table`) and key column texts of keys that all belong to one
/// table; `None` when a key does not parse, the tables differ, or there is none.
fn keys_of_one_table(keys: &[String]) -> Option<(String, Vec<Vec<String>>)> {
    let mut table = None;
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        let parsed = parse_key(key).ok()?;
        let qualified = format!("{}.{}", parsed.schema, parsed.table);
        if table.get_or_insert_with(|| qualified.clone()) != &qualified {
            return None;
        }
        values.push(parsed.values);
    }
    Some((table?, values))
}

/// The progress a key chunk's snapshot carries (and stores once published): the
/// stored one, or, when none is stored, every table marked done (an empty record
/// would make the next start take the other tables for new ones).
fn progress_for_keys(stored: Progress, tables: &[String]) -> Progress {
    if !stored.tables.is_empty() {
        return stored;
    }
    let mut progress = Progress::started(tables);
    for p in progress.tables.values_mut() {
        p.done = true;
    }
    progress.complete = true;
    progress
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_requests_name_one_table() {
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (table, values) = keys_of_one_table(&keys(&["public.a:1", "public.a:2%2C3"])).unwrap();
        assert_eq!(table, "public.a");
        assert_eq!(values, vec![vec!["1".to_string()], vec!["2,3".to_string()]]);
        assert!(keys_of_one_table(&keys(&["public.a:1", "public.b:1"])).is_none());
        assert!(keys_of_one_table(&keys(&["nonsense"])).is_none());
        assert!(keys_of_one_table(&[]).is_none());
    }

    #[test]
    fn a_key_chunk_keeps_the_stored_progress_or_marks_every_table_done() {
        let tables = vec!["public.a".to_string(), "public.b".to_string()];
        let seeded = progress_for_keys(Progress::default(), &tables);
        assert!(seeded.complete);
        assert!(seeded.tables.values().all(|p| p.done));
        assert_eq!(seeded.tables.len(), 2);
        let mut stored = Progress::started(&tables[..1]);
        stored.complete = true;
        assert_eq!(progress_for_keys(stored.clone(), &tables), stored);
    }
}

//! The reader's side of the snapshot stage: planning it when a stream opens, reading
//! a chunk between watermarks, dropping rows the stream changed, publishing the rest
//! once the stream passed the high watermark, and storing confirmed progress.

use crate::config::SnapshotMode;
use crate::decode::pgoutput::{RelationColumn, TupleValue};
use crate::pipeline::snapshot::{Chunk, Progress, Snapshot};
use crate::pipeline::PipelineError;
use crate::source::chunks::TableInfo;
use crate::source::ReplicationStream;
use crate::wire::{Lsn, Timestamp};

use super::ChangeReader;

impl ChangeReader {
    /// When the stream opens: whether existing rows are to be published now.
    pub(in crate::pipeline) async fn plan_snapshot(
        &mut self,
        slot_created: bool,
    ) -> Result<(), PipelineError> {
        if self.snapshot.is_some()
            || self.snapshot_planned
            || self.cfg.snapshot == SnapshotMode::Never
        {
            return Ok(());
        }
        self.snapshot_planned = true;
        let stored: Progress = match &self.store {
            Some(store) => store.load_snapshot(&self.cfg.slot).await?,
            None => Progress::default(),
        };
        let unfinished = !stored.tables.is_empty() && !stored.complete;
        if !slot_created && !unfinished {
            if self.cfg.snapshot == SnapshotMode::Only {
                tracing::info!("--snapshot only: the slot's snapshot is complete; nothing to do");
                self.snapshot_only_done = true;
            }
            return Ok(());
        }
        let progress = if unfinished {
            stored
        } else {
            // Recorded before the first chunk: a crash from here on resumes.
            let mut started = Progress::default();
            for t in &self.tables {
                started.tables.insert(t.clone(), Default::default());
            }
            if let Some(store) = &self.store {
                store.store_snapshot(&self.cfg.slot, &started).await?;
            }
            Progress::default()
        };
        let snapshot = Snapshot::new(
            &self.tables,
            progress,
            self.cfg.snapshot_chunk_rows as usize,
        );
        tracing::info!(
            tables = snapshot.tables_remaining(),
            resumed = unfinished,
            "snapshot of existing rows starts, while streaming"
        );
        self.metrics
            .envelope
            .snapshot_tables_remaining
            .set(snapshot.tables_remaining() as i64);
        self.metrics.set_note(snapshot.note());
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// Whether a chunk is to be read now.
    pub(in crate::pipeline) fn wants_chunk(&self) -> bool {
        self.snapshot.as_ref().is_some_and(Snapshot::wants_chunk) && !self.builder.in_transaction()
    }

    /// Read the next chunk of the table being read (starting the next table when none
    /// is), then ask the server where it is, so the chunk goes out once the stream
    /// passed the chunk's high watermark.
    pub(in crate::pipeline) async fn start_chunk(
        &mut self,
        stream: &mut ReplicationStream,
    ) -> Result<(), PipelineError> {
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        if let Some(name) = snapshot.next_table() {
            let info = self.catalog.table_info(&name).await?;
            self.register_relation(&info).await?;
            self.snapshot.as_mut().expect("planned").start_table(info);
        }
        let snapshot = self.snapshot.as_ref().expect("planned");
        let Some((info, after)) = snapshot.current() else {
            return Ok(());
        };
        let (info, after) = (info.clone(), after.map(<[String]>::to_vec));
        let limit = snapshot.chunk_rows;
        let texts = self
            .catalog
            .read_chunk(&info, after.as_deref(), limit)
            .await?;
        let high = self.catalog.current_wal_lsn().await?;
        let mut rows = Vec::with_capacity(texts.len());
        for row in texts {
            let key = self.builder.key_of_row(info.relation_id, &tuple(&row))?.0;
            rows.push((key, row));
        }
        let last_key = rows
            .last()
            .map(|(_, row)| {
                info.key
                    .iter()
                    .map(|&i| row[i].clone().unwrap_or_default())
                    .collect()
            })
            .or(after);
        self.snapshot.as_mut().expect("planned").pending = Some(Chunk {
            table: info.qualified(),
            relation_id: info.relation_id,
            high,
            last: rows.len() < limit,
            rows,
            removed: Default::default(),
            last_key,
        });
        self.send_status(stream, true).await
    }

    /// A live change of `key` while a chunk waits: the stream has the newer value.
    pub(in crate::pipeline) fn chunk_conflict(&mut self, key: &str) {
        if let Some(chunk) = self.snapshot.as_mut().and_then(|s| s.pending.as_mut()) {
            chunk.removed.insert(key.to_string());
        }
    }

    /// A TRUNCATE of the waiting chunk's table: read the chunk again.
    pub(in crate::pipeline) fn chunk_truncated(&mut self, relation_ids: &[u32]) {
        if let Some(s) = self.snapshot.as_mut() {
            if s.pending
                .as_ref()
                .is_some_and(|c| relation_ids.contains(&c.relation_id))
            {
                s.pending = None;
            }
        }
    }

    /// The stream reached `at` at a transaction boundary: publish the waiting chunk
    /// when `at` is past its high watermark.
    pub(in crate::pipeline) async fn emit_chunk_if_passed(
        &mut self,
        at: Lsn,
    ) -> Result<(), PipelineError> {
        let passed = self
            .snapshot
            .as_ref()
            .and_then(|s| s.pending.as_ref())
            .is_some_and(|c| at >= c.high);
        if passed && !self.builder.in_transaction() && self.ready.is_none() {
            self.emit_chunk().await?;
        }
        Ok(())
    }

    async fn emit_chunk(&mut self) -> Result<(), PipelineError> {
        let snapshot = self.snapshot.as_mut().expect("a chunk is pending");
        let chunk = snapshot.pending.take().expect("a chunk is pending");
        let position = snapshot.chunk_position(chunk.high);
        let verify = snapshot.verify.contains(&chunk.table);
        self.builder.begin_snapshot(position, Timestamp::now());
        let before = self.chunk.len();
        let mut published = 0u64;
        for (key, texts) in &chunk.rows {
            if chunk.removed.contains(key) {
                continue;
            }
            let row = tuple(texts);
            if verify && self.published_already(chunk.relation_id, &row).await? {
                continue;
            }
            while let Some(need) =
                self.builder
                    .snapshot_row(chunk.relation_id, &row, &mut self.chunk)?
            {
                self.provide(need).await?;
            }
            published += 1;
        }
        let next = self
            .builder
            .next_position()
            .expect("in the snapshot transaction");
        self.builder.commit();
        let last = self.chunk[before..].last().map(|o| o.position);
        if self.chunk.len() > before {
            self.flush_chunk(None);
        }
        self.metrics
            .envelope
            .snapshot_rows
            .with_label_values(&[&chunk.table])
            .inc_by(published);
        let snapshot = self.snapshot.as_mut().expect("planned");
        if let Some(line) = snapshot.chunk_done(chunk, next, last, published) {
            tracing::info!("{line}");
        }
        self.metrics.set_note(snapshot.note());
        self.metrics
            .envelope
            .snapshot_tables_remaining
            .set(snapshot.tables_remaining() as i64);
        Ok(())
    }

    /// After a resume: the row's key was published with this very value.
    async fn published_already(
        &mut self,
        relation_id: u32,
        row: &[TupleValue<'_>],
    ) -> Result<bool, PipelineError> {
        let (_, subject) = self.builder.key_of_row(relation_id, row)?;
        let Some(store) = &self.store else {
            return Ok(false);
        };
        if !self.builder.may_have_published(&subject) {
            return Ok(false);
        }
        let Some(last) = store.last_envelope(&subject).await? else {
            return Ok(false);
        };
        let state = store.key_state_of(&subject, &last)?;
        self.builder.offer_key_state(&last.envelope.key, state);
        Ok(last.envelope.value == self.builder.row_value(relation_id, row)?)
    }

    /// Store the progress NATS confirmed; finish the snapshot when all is done.
    pub(in crate::pipeline) async fn store_snapshot_progress(
        &mut self,
    ) -> Result<(), PipelineError> {
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        if let Some(progress) = snapshot.confirmed_progress(self.confirmed_position) {
            if let Some(store) = &self.store {
                store.store_snapshot(&self.cfg.slot, &progress).await?;
            }
        }
        let snapshot = self.snapshot.as_ref().expect("checked");
        if !(snapshot.is_finished() && snapshot.all_stored()) {
            return Ok(());
        }
        let mut done = snapshot.progress.clone();
        done.complete = true;
        if let Some(store) = &self.store {
            store.store_snapshot(&self.cfg.slot, &done).await?;
        }
        let secs = snapshot.started.elapsed().as_secs_f64();
        tracing::info!(
            rows = snapshot.rows_total,
            seconds = format!("{secs:.1}"),
            rows_per_s = (snapshot.rows_total as f64 / secs.max(0.001)).round(),
            "snapshot complete"
        );
        self.metrics.envelope.snapshot_seconds.set(secs);
        self.metrics.envelope.snapshot_tables_remaining.set(0);
        self.metrics.set_note(String::new());
        self.snapshot = None;
        self.snapshot_only_done = self.cfg.snapshot == SnapshotMode::Only;
        Ok(())
    }

    /// Make the envelope stage know a table the stream has not described yet.
    pub(super) async fn register_relation(
        &mut self,
        info: &TableInfo,
    ) -> Result<(), PipelineError> {
        let columns: Vec<RelationColumn<'_>> = info
            .columns
            .iter()
            .map(|(name, oid, typmod, _)| RelationColumn {
                flags: 0,
                name,
                type_oid: *oid,
                type_modifier: *typmod,
            })
            .collect();
        self.on_relation(
            info.relation_id,
            &info.schema,
            &info.name,
            info.replica_identity,
            &columns,
        )
        .await
    }
}

/// Column texts as the replication stream would carry them.
pub(super) fn tuple(texts: &[Option<String>]) -> Vec<TupleValue<'_>> {
    texts
        .iter()
        .map(|t| match t {
            Some(s) => TupleValue::Text(s.as_bytes()),
            None => TupleValue::Null,
        })
        .collect()
}

//! The reader's side of the snapshot stage: planning it when a stream opens, reading
//! a chunk between watermarks, dropping rows the stream changed, publishing the rest
//! once the stream passed the high watermark, and storing confirmed progress.

use crate::config::SnapshotMode;
use crate::decode::pgoutput::{RelationColumn, TupleValue};
use crate::pipeline::snapshot::{Chunk, Progress, Snapshot};
use crate::pipeline::PipelineError;
use crate::source::chunks::TableInfo;
use crate::source::ReplicationStream;
use std::collections::HashSet;

use crate::wire::key::{make_key, parse_key, parse_key_token, TRUNCATE_TOKEN};
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
        // Tables added to the publication since the slot's snapshot.
        let added: Vec<String> = self
            .tables
            .iter()
            .filter(|t| !stored.tables.is_empty() && !stored.tables.contains_key(*t))
            .cloned()
            .collect();
        if !slot_created && !unfinished && added.is_empty() {
            if self.cfg.snapshot == SnapshotMode::Only {
                tracing::info!("--snapshot only: the slot's snapshot is complete; nothing to do");
                self.snapshot_only_done = true;
            }
            return Ok(());
        }
        let progress = if slot_created && stored.tables.is_empty() {
            // Recorded before the first chunk: a crash from here on resumes.
            let mut started = Progress::default();
            for t in &self.tables {
                started.tables.insert(t.clone(), Default::default());
            }
            if let Some(store) = &self.store {
                store.store_snapshot(&self.cfg.slot, &started).await?;
            }
            Progress::default()
        } else {
            // Resumed, tables added, or the slot created again (--recreate-slot): what
            // the stream holds is compared with the tables read (verify and sweep).
            let mut progress = stored;
            let again: &[String] = if slot_created { &self.tables } else { &added };
            for t in again {
                progress.tables.insert(t.clone(), Default::default());
            }
            progress.complete = false;
            if let Some(store) = &self.store {
                store.store_snapshot(&self.cfg.slot, &progress).await?;
            }
            progress
        };
        let snapshot = Snapshot::new(
            &self.tables,
            progress,
            self.cfg.snapshot_chunk_rows as usize,
        );
        tracing::info!(
            tables = snapshot.tables_remaining(),
            resumed = unfinished,
            added_to_publication = ?added,
            slot_created,
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
        let snapshot = self.snapshot.as_mut().expect("planned");
        let Some((info, after)) = snapshot.current() else {
            return Ok(());
        };
        let (info, after) = (info.clone(), after.map(<[String]>::to_vec));
        let limit = snapshot.chunk_rows;
        let chunk = if snapshot.sweep().is_some() {
            self.read_sweep_chunk(&info, after, limit).await?
        } else {
            self.read_rows_chunk(&info, after, limit).await?
        };
        self.snapshot.as_mut().expect("planned").pending = Some(chunk);
        self.send_status(stream, true).await
    }

    /// The next rows of the table, in key order.
    async fn read_rows_chunk(
        &mut self,
        info: &TableInfo,
        after: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Chunk, PipelineError> {
        let texts = self
            .catalog
            .read_chunk(info, after.as_deref(), limit)
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
        let mut last = rows.len() < limit;
        let snapshot = self.snapshot.as_mut().expect("planned");
        // A re-snapshot (or a resumed one) in tracked mode: keys the stream holds
        // and the table lost get a delete.
        if last
            && snapshot.verify.contains(&info.qualified())
            && self.store.is_some()
            && self.builder.is_tracked(info.relation_id)
        {
            snapshot.start_sweep();
            last = false;
        }
        Ok(Chunk {
            table: info.qualified(),
            relation_id: info.relation_id,
            high,
            last,
            rows,
            removed: Default::default(),
            vanished: Vec::new(),
            last_key,
        })
    }

    /// The next keys the stream holds for the table, and which of them have no row.
    async fn read_sweep_chunk(
        &mut self,
        info: &TableInfo,
        last_key: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Chunk, PipelineError> {
        let store = self.store.clone().expect("a sweep runs with JetStream");
        let sweep = self
            .snapshot
            .as_mut()
            .and_then(|s| s.sweep())
            .expect("sweeping");
        if sweep.is_none() {
            *sweep = Some(store.table_subjects(&info.schema, &info.name).await?);
        }
        let pages = sweep.as_mut().expect("listing started");
        let subjects = crate::state::next_subjects(pages, limit).await?;
        let last = subjects.len() < limit;
        let mut keys = Vec::with_capacity(subjects.len());
        for subject in &subjects {
            if let Some(values) = self.key_values_of(&store, subject).await? {
                keys.push(values);
            }
        }
        let existing: HashSet<Vec<String>> = self
            .catalog
            .existing_keys(info, &keys)
            .await?
            .into_iter()
            .collect();
        let high = self.catalog.current_wal_lsn().await?;
        let vanished = keys
            .into_iter()
            .filter(|values| !existing.contains(values))
            .map(|values| {
                let key = make_key(&info.schema, &info.name, values.iter().map(String::as_str));
                (key, values)
            })
            .collect();
        Ok(Chunk {
            table: info.qualified(),
            relation_id: info.relation_id,
            high,
            last,
            rows: Vec::new(),
            removed: Default::default(),
            vanished,
            last_key,
        })
    }

    /// The key column texts of a key subject (from the subject, or for a hashed key
    /// token from its last envelope); `None` for the table's truncate subject.
    async fn key_values_of(
        &self,
        store: &crate::state::StateStore,
        subject: &str,
    ) -> Result<Option<Vec<String>>, PipelineError> {
        let token = subject.rsplit('.').next().unwrap_or_default();
        if token == TRUNCATE_TOKEN {
            return Ok(None);
        }
        if let Ok(values) = parse_key_token(token) {
            return Ok(Some(values));
        }
        let Some(last) = store.last_envelope(subject).await? else {
            return Ok(None);
        };
        Ok(parse_key(&last.envelope.key).ok().map(|k| k.values))
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
        let mut deleted = 0u64;
        for (key, values) in &chunk.vanished {
            if chunk.removed.contains(key) {
                continue;
            }
            let before = self.chunk.len();
            while let Some(need) =
                self.builder
                    .snapshot_delete(chunk.relation_id, values, &mut self.chunk)?
            {
                self.provide(need).await?;
            }
            deleted += (self.chunk.len() - before) as u64;
        }
        let next = self
            .builder
            .next_position()
            .expect("in the snapshot transaction");
        self.builder.commit();
        let last = self.chunk[before..].last().map(|o| o.position);
        if self.chunk.len() > before {
            self.flush_chunk();
        }
        self.metrics
            .envelope
            .snapshot_rows
            .with_label_values(&[&chunk.table])
            .inc_by(published);
        if deleted > 0 {
            self.metrics
                .envelope
                .snapshot_deletes
                .with_label_values(&[&chunk.table])
                .inc_by(deleted);
            tracing::info!(table = %chunk.table, keys = deleted, "keys without a row any more: deletes published");
        }
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

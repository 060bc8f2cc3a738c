//! What the reader does with each event: pgoutput messages decoded and applied to the
//! envelope stage, with what it needs loaded from the catalog or the state store, and
//! envelopes gathered into batches for the sink.

use async_nats::Subject;
use bytes::Bytes;

use super::{ChangeReader, TableCounters, BATCH_ITEMS};
use crate::decode::pgoutput::{self, OldTuple, PgOutput, RelationColumn, TupleValue};
use crate::decode::relation;
use crate::envelope::{EnvelopeError, Need, ToastNeeded};
use crate::pipeline::PipelineError;
use crate::sink::{Publish, SinkBatch};
use crate::source::{ReplicationEvent, ReplicationStream, SourceError};
use crate::wire::{Lsn, Op, Timestamp};

impl ChangeReader {
    /// Handle one event.
    pub(super) async fn handle(
        &mut self,
        event: ReplicationEvent,
        stream: &mut ReplicationStream,
    ) -> Result<(), PipelineError> {
        match event {
            ReplicationEvent::XLogData {
                wal_start,
                wal_end,
                data,
            } => {
                self.metrics.source.bytes_received.inc_by(data.len() as u64);
                self.cp.on_received(wal_end);
                self.on_message(wal_start, data).await?;
            }
            ReplicationEvent::Keepalive {
                wal_end,
                reply_requested,
            } => {
                self.metrics.source.keepalives.inc();
                self.cp.on_keepalive(wal_end);
                self.emit_chunk_if_passed(wal_end).await?;
                if reply_requested {
                    self.send_status(stream, false).await?;
                }
            }
            // Not asked for: the server went away (a clean shutdown); reconnect.
            ReplicationEvent::End => return Err(SourceError::StreamEnded.into()),
        }
        Ok(())
    }

    async fn on_message(&mut self, at: Lsn, data: Bytes) -> Result<(), PipelineError> {
        let msg =
            pgoutput::parse(&data).map_err(|source| PipelineError::Decode { lsn: at, source })?;
        match msg {
            PgOutput::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                // A waiting snapshot chunk goes out before any transaction that
                // commits past its high watermark.
                self.emit_chunk_if_passed(final_lsn).await?;
                self.skipping = final_lsn <= self.last_handed_commit;
                self.builder.begin(final_lsn, commit_ts, xid);
                self.cp.on_begin();
                self.commit_ts = Timestamp::from_pg_micros(commit_ts);
            }
            PgOutput::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                self.builder.commit();
                if self.skipping {
                    self.skipping = false;
                    self.cp.on_skipped_commit();
                    return Ok(());
                }
                // Small transactions travel together: the batch goes to the sink when
                // it is full or when what the server sent so far is worked through.
                self.pending_commit = Some(end_lsn);
                self.pending_since
                    .get_or_insert_with(std::time::Instant::now);
                self.pending_commit_times.push(self.commit_ts);
                if self.chunk.len() >= BATCH_ITEMS {
                    self.flush_chunk();
                }
                self.last_handed_commit = commit_lsn;
                self.cp.on_handed_off(end_lsn);
                self.metrics.envelope.transactions.inc();
                self.metrics
                    .envelope
                    .last_commit_timestamp
                    .set(self.commit_ts.seconds);
                self.unconfirmed.push_back((end_lsn, self.commit_ts));
            }
            PgOutput::Relation {
                relation_id,
                namespace,
                name,
                replica_identity,
                columns,
            } => {
                self.on_relation(relation_id, namespace, name, replica_identity, &columns)
                    .await?;
            }
            PgOutput::Insert { relation_id, new } if !self.skipping => {
                self.change(relation_id, Op::Insert, None, Some(&new))
                    .await?;
            }
            PgOutput::Update {
                relation_id,
                old,
                new,
            } if !self.skipping => {
                self.change(relation_id, Op::Update, old.as_ref(), Some(&new))
                    .await?;
            }
            PgOutput::Delete { relation_id, old } if !self.skipping => {
                self.change(relation_id, Op::Delete, Some(&old), None)
                    .await?;
            }
            PgOutput::Truncate { relation_ids, .. } if !self.skipping => {
                self.chunk_truncated(&relation_ids);
                while let Some(need) = self.builder.truncate(&relation_ids, &mut self.chunk)? {
                    self.provide(need).await?;
                }
            }
            PgOutput::Message {
                prefix, content, ..
            } => {
                if prefix == crate::source::monitor::HEARTBEAT_PREFIX {
                    self.heartbeat_seen(content);
                } else {
                    tracing::debug!(prefix, bytes = content.len(), "logical decoding message");
                }
            }
            PgOutput::Origin { name, .. } => tracing::debug!(origin = name, "origin"),
            _ => {}
        }
        if self.chunk.len() >= BATCH_ITEMS {
            self.flush_chunk();
        }
        Ok(())
    }

    /// Move the envelopes built so far into a batch for the sink.
    /// The batch ends with the last transaction completed in it, if any.
    pub(super) fn flush_chunk(&mut self) {
        let commit_end = self.pending_commit.take();
        self.pending_since = None;
        self.last_handover = std::time::Instant::now();
        let commit_times = std::mem::take(&mut self.pending_commit_times);
        let items = std::mem::take(&mut self.chunk)
            .into_iter()
            .map(|o| Publish {
                subject: Subject::from(o.subject),
                payload: o.payload,
                msg_id: o.msg_id,
                position: o.position,
            })
            .collect();
        debug_assert!(self.ready.is_none());
        self.ready = Some(SinkBatch {
            items,
            commit_end,
            commit_times,
        });
    }

    async fn change(
        &mut self,
        relation_id: u32,
        op: Op,
        old: Option<&OldTuple<'_>>,
        new: Option<&[TupleValue<'_>]>,
    ) -> Result<(), PipelineError> {
        let before = self.chunk.len();
        let skipped_before = self.builder.replays_skipped();
        let markers_before = self.builder.oversize_markers();
        loop {
            match self
                .builder
                .change(relation_id, op, old, new, &mut self.chunk)
            {
                Ok(Some(need)) => self.provide(need).await?,
                Ok(None) => break,
                Err(EnvelopeError::NoKey { table }) => {
                    self.refuse_keyless(table);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.metrics
            .envelope
            .replays_skipped
            .inc_by(self.builder.replays_skipped() - skipped_before);
        let markers = self.builder.oversize_markers() - markers_before;
        if markers > 0 {
            self.metrics.envelope.oversize_markers.inc_by(markers);
            tracing::warn!(
                relation_id,
                "an envelope above NATS's max_payload was published as a too-large marker"
            );
        }
        let n = (self.chunk.len() - before) as u64;
        if self.snapshot.as_ref().is_some_and(|s| s.pending.is_some()) {
            for i in before..self.chunk.len() {
                let msg_id = &self.chunk[i].msg_id;
                let key = msg_id
                    .rsplit_once(':')
                    .map_or(msg_id.as_str(), |(k, _)| k)
                    .to_string();
                self.chunk_conflict(&key);
            }
        }
        self.progress.changes += n;
        if let Some(c) = self.counters.get(&relation_id) {
            match op {
                Op::Insert => c.insert.inc_by(n),
                Op::Update => c.update.inc_by(n),
                _ => c.delete.inc_by(n),
            }
        }
        Ok(())
    }

    /// A heartbeat came back through the stream: when it was written.
    fn heartbeat_seen(&mut self, content: &[u8]) {
        let written = std::str::from_utf8(content)
            .ok()
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(micros) = written {
            self.last_heartbeat = Some(micros as f64 / 1e6);
            self.update_heartbeat_age();
        }
    }

    /// `walcast_heartbeat_age_seconds`: how old the last heartbeat seen is.
    pub(super) fn update_heartbeat_age(&self) {
        if let Some(written) = self.last_heartbeat {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            self.metrics
                .source
                .heartbeat_age
                .set((now - written).max(0.0));
        }
    }

    /// A change of a table without a usable key: not published (the other tables go
    /// on), counted, logged once per table, shown by `/readyz`.
    fn refuse_keyless(&mut self, table: String) {
        let counter = self
            .metrics
            .envelope
            .keyless_skipped
            .with_label_values(&[&table]);
        if counter.get() == 0 {
            let e = EnvelopeError::NoKey {
                table: table.clone(),
            };
            tracing::error!(table = %table, "{e}");
            self.metrics
                .add_degraded(format!("{table} has no key: its changes are not published"));
        }
        counter.inc();
    }

    /// Unchanged-TOAST values: from the key's last envelope in the stream (tracked
    /// mode: exact), else from the table while its row is still this change's
    /// version; otherwise published as unavailable, counted and logged.
    async fn provide_toast(&mut self, needed: ToastNeeded) -> Result<(), PipelineError> {
        let table = format!("{}.{}", needed.schema, needed.table);
        let mut unavailable = None;
        if let (Some(subject), Some(store)) = (&needed.source.stream_subject, &self.store) {
            self.metrics.envelope.toast_stream_loads.inc();
            if let Some(last) = store.last_envelope(subject).await? {
                let state = store.key_state_of(subject, &last)?;
                self.builder.offer_key_state(&last.envelope.key, state);
                let row = Some(&last.envelope.value);
                unavailable = Some(self.builder.provide_toast_from_envelope(&needed, row)?);
            }
        }
        let unavailable = match unavailable {
            Some(n) => n,
            None => {
                self.metrics.envelope.toast_fetches.inc();
                let (check, expected) = needed.source.version.check();
                let (texts, found) = self
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
                self.builder.provide_toast(&needed, &texts, same)?
            }
        };
        if unavailable > 0 {
            self.metrics
                .envelope
                .toast_unavailable
                .with_label_values(&[&table])
                .inc_by(unavailable as u64);
            tracing::warn!(table = %table, key = %needed.key, columns = ?needed.columns,
                "unchanged TOAST value no longer available (the row changed or went since this change): published as unavailable; REPLICA IDENTITY FULL avoids it");
        }
        Ok(())
    }

    /// Load what the envelope stage asked for.
    pub(super) async fn provide(&mut self, need: Need) -> Result<(), PipelineError> {
        match need {
            Need::Toast(needed) => self.provide_toast(needed).await?,
            Need::KeyState { key, subject } => {
                let store = self
                    .store
                    .as_ref()
                    .expect("tracked sequences without a store are volatile");
                self.metrics.envelope.key_state_loads.inc();
                let loaded = store.load_key(&subject).await?;
                self.builder
                    .provide_key_state(key, loaded.map(|(state, _)| state));
            }
        }
        Ok(())
    }

    pub(super) async fn on_relation(
        &mut self,
        relation_id: u32,
        namespace: &str,
        name: &str,
        replica_identity: u8,
        columns: &[RelationColumn<'_>],
    ) -> Result<(), PipelineError> {
        let resolved = relation::resolve(
            &self.catalog,
            &mut self.types,
            relation_id,
            replica_identity,
            columns,
        )
        .await?;
        let qualified = format!("{namespace}.{name}");
        if let Some(store) = &self.store {
            if !self.builder.has_schema_history(&qualified) {
                let history = store.load_schema(namespace, name).await?;
                tracing::debug!(table = %qualified, versions = history.entries.len(), "schema history loaded");
                self.builder.provide_schema_history(&qualified, history);
            }
        }
        let update = self.builder.on_relation(
            relation_id,
            namespace,
            name,
            replica_identity,
            resolved.columns,
            resolved.key,
        )?;
        if let (Some(store), Some(history)) = (&self.store, &update.history_to_store) {
            store.store_schema(namespace, name, history).await?;
        }
        if let Some(prev) = update.previous.filter(|p| *p != update.current) {
            self.metrics
                .envelope
                .schema_changes
                .with_label_values(&[&update.table])
                .inc();
            tracing::info!(table = %update.table, from = %prev, to = %update.current, "schema version changed");
        }
        if !update.missing_setting_columns.is_empty() {
            self.metrics
                .envelope
                .missing_setting_columns
                .with_label_values(&[&update.table])
                .inc_by(update.missing_setting_columns.len() as u64);
            tracing::warn!(
                table = %update.table,
                columns = ?update.missing_setting_columns,
                "the table no longer has columns its settings name (dropped?); the settings of the other columns still apply"
            );
        }
        self.counters.insert(
            relation_id,
            TableCounters::new(&self.metrics, &update.table),
        );
        Ok(())
    }
}

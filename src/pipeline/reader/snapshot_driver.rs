//! The snapshot driver: plans the snapshot when a stream opens, queues re-snapshots,
//! publishes a chunk (read by [`super::snapshot_read`]) once the stream passed its high
//! watermark, and stores the progress NATS confirmed.

use std::sync::Arc;

use super::envelopes::Envelopes;
use super::handover::Handover;
use super::ChangeReader;
use crate::envelope::Outgoing;
use crate::ops::metrics::Metrics;
use crate::pipeline::snapshot::{
    Chunk, Progress, Snapshot, SnapshotMode, SnapshotSettings, StreamedKeys,
};
use crate::pipeline::PipelineError;
use crate::source::ReplicationStream;
use crate::state::StateStore;
use crate::wire::{Lsn, Position, Timestamp};

/// How new the slot is to walcast when a stream opens.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotStart {
    /// walcast created it now.
    pub(super) created: bool,
    /// It exists but walcast holds no record of it (an operator made it, or another
    /// tool streamed it): its rows were never snapshotted into this stream.
    pub(super) unrecorded: bool,
}

pub(super) struct SnapshotDriver {
    settings: SnapshotSettings,
    /// The slot whose snapshot progress the meta stream keeps.
    slot: String,
    metrics: Arc<Metrics>,
    /// The snapshot under way, if any.
    pub(super) snapshot: Option<Snapshot>,
    planned: bool,
    /// `--snapshot only` and the snapshot is complete: stop.
    only_done: bool,
    /// Chunks are read once the stream got here (the WAL's end when the stream
    /// opened): the tables' shapes replayed before are known by then, so a table
    /// described from the catalog numbers its version after them.
    pub(super) start_after: Lsn,
    /// Where the next chunk's first envelope sits, when its high watermark is the
    /// previous chunk's (snapshot and repair chunks are numbered on together).
    next: Position,
}

/// The position of a chunk's first envelope: just before its high watermark, numbered
/// on from the previous chunk at the same watermark (`next`).
fn position_at(next: Position, high: Lsn) -> Position {
    let commit_lsn = Lsn(high.0.saturating_sub(1));
    let ordinal = if next.commit_lsn == commit_lsn {
        next.ordinal
    } else {
        0
    };
    Position {
        commit_lsn,
        ordinal,
    }
}

/// Store a snapshot's progress in the meta stream (JetStream only).
async fn store_progress(
    store: Option<&StateStore>,
    slot: &str,
    progress: &Progress,
) -> Result<(), PipelineError> {
    if let Some(store) = store {
        store.store_snapshot(slot, progress).await?;
    }
    Ok(())
}

impl SnapshotDriver {
    pub(super) fn new(settings: SnapshotSettings, slot: String, metrics: Arc<Metrics>) -> Self {
        SnapshotDriver {
            settings,
            slot,
            metrics,
            snapshot: None,
            planned: false,
            only_done: false,
            next: Position::default(),
            start_after: Lsn(0),
        }
    }

    /// `--snapshot only` and the snapshot is complete.
    pub(super) fn only_done(&self) -> bool {
        self.only_done
    }

    async fn load_progress(&self, store: Option<&StateStore>) -> Result<Progress, PipelineError> {
        Ok(match store {
            Some(store) => store.load_snapshot(&self.slot).await?,
            None => Progress::default(),
        })
    }

    /// When the stream opens: whether existing rows are to be published now (a new
    /// slot, a slot walcast holds no record of, an unfinished snapshot, tables added to
    /// the publication since).
    pub(super) async fn plan(
        &mut self,
        slot: SlotStart,
        tables: &[String],
        store: Option<&StateStore>,
    ) -> Result<(), PipelineError> {
        if self.snapshot.is_some() || self.planned || self.settings.mode == SnapshotMode::Never {
            return Ok(());
        }
        self.planned = true;
        let stored = self.load_progress(store).await?;
        let unfinished = !stored.tables.is_empty() && !stored.complete;
        let added: Vec<String> = tables
            .iter()
            .filter(|t| !stored.tables.is_empty() && !stored.tables.contains_key(*t))
            .cloned()
            .collect();
        let first_time = slot.created || slot.unrecorded;
        if !first_time && !unfinished && added.is_empty() {
            if self.settings.mode == SnapshotMode::Only {
                tracing::info!("--snapshot only: the slot's snapshot is complete; nothing to do");
                self.only_done = true;
            }
            return Ok(());
        }
        let progress = if slot.created && stored.tables.is_empty() {
            // Recorded before the first chunk: a crash from here on resumes.
            store_progress(store, &self.slot, &Progress::started(tables)).await?;
            Progress::default()
        } else {
            // Resumed, tables added, a slot made by someone else, or the slot created
            // again (--recreate-slot): what the stream holds is compared with the
            // tables read (verify and sweep).
            let mut progress = stored;
            progress.restart(if first_time { tables } else { &added });
            store_progress(store, &self.slot, &progress).await?;
            progress
        };
        let snapshot = Snapshot::new(tables, progress, self.settings.chunk_rows);
        tracing::info!(
            tables = snapshot.tables_remaining(),
            resumed = unfinished,
            added_to_publication = ?added,
            slot_created = slot.created,
            slot_unrecorded = slot.unrecorded,
            "snapshot of existing rows starts, while streaming"
        );
        self.snapshot = Some(snapshot);
        self.show();
        Ok(())
    }

    /// Queue a re-snapshot of `tables` (all published) while streaming: stored as
    /// unfinished progress first (a crash resumes it), then read like the initial
    /// snapshot, comparing each row with the key's last envelope and sweeping keys
    /// that lost their row. Returns the tables queued.
    pub(super) async fn queue(
        &mut self,
        tables: &[String],
        store: Option<&StateStore>,
    ) -> Result<Vec<String>, PipelineError> {
        if let Some(snapshot) = self.snapshot.as_mut() {
            return Ok(snapshot.add_tables(tables));
        }
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let mut progress = self.load_progress(store).await?;
        progress.restart(tables);
        store_progress(store, &self.slot, &progress).await?;
        self.snapshot = Some(Snapshot::new(tables, progress, self.settings.chunk_rows));
        Ok(tables.to_vec())
    }

    /// The snapshot's state in the metrics and `/readyz`.
    pub(super) fn show(&self) {
        if let Some(snapshot) = &self.snapshot {
            self.metrics
                .envelope
                .snapshot_tables_remaining
                .set(snapshot.tables_remaining() as i64);
            self.metrics.set_note(snapshot.note());
        }
    }

    /// Whether a snapshot chunk is to be read now (the reader is between transactions).
    pub(super) fn wants_chunk(&self) -> bool {
        self.snapshot.as_ref().is_some_and(Snapshot::wants_chunk)
    }

    /// Whether a snapshot chunk waits for the stream to pass its high watermark.
    pub(super) fn chunk_waiting(&self) -> bool {
        self.snapshot.as_ref().is_some_and(|s| s.pending.is_some())
    }

    /// A stream opened again: a chunk read before is read again.
    pub(super) fn forget_pending(&mut self) {
        if let Some(s) = self.snapshot.as_mut() {
            s.pending = None;
        }
    }

    /// Live changes during a snapshot: the stream has the newest value of their keys
    /// (a waiting chunk drops them; a later chunk skips them).
    pub(super) fn live_changes(&mut self, built: &[Outgoing]) {
        let Some(snapshot) = self.snapshot.as_mut() else {
            return;
        };
        for o in built {
            let key = o.msg_id.rsplit_once(':').map_or(&*o.msg_id, |(k, _)| k);
            snapshot.streamed.record(key);
            if let Some(chunk) = snapshot.pending.as_mut() {
                chunk.removed.insert(key.to_string());
            }
        }
    }

    /// A TRUNCATE of the waiting chunk's table: read the chunk again.
    pub(super) fn truncated(&mut self, relation_ids: &[u32]) {
        if let Some(s) = self.snapshot.as_mut() {
            if s.pending
                .as_ref()
                .is_some_and(|c| relation_ids.contains(&c.relation_id))
            {
                s.pending = None;
            }
        }
    }

    /// Whether the stream at `at` is past the waiting chunk's high watermark.
    fn chunk_passed(&self, at: Lsn) -> bool {
        self.snapshot
            .as_ref()
            .and_then(|s| s.pending.as_ref())
            .is_some_and(|c| at >= c.high)
    }

    /// Publish the waiting chunk: its rows (as one snapshot transaction, placed just
    /// before its high watermark), then deletes of keys that lost their row.
    async fn emit(
        &mut self,
        env: &mut Envelopes,
        handover: &mut Handover,
    ) -> Result<(), PipelineError> {
        let snapshot = self.snapshot.as_mut().expect("a chunk is pending");
        let chunk = snapshot.pending.take().expect("a chunk is pending");
        let position = position_at(self.next, chunk.high);
        let verify = snapshot.verify.contains(&chunk.table);
        env.builder.begin_snapshot(position, Timestamp::now());
        let before = handover.built.len();
        let streamed = &snapshot.streamed;
        let published = publish_rows(env, handover, (&chunk, streamed), verify).await?;
        let deleted = publish_deletes(env, handover, &chunk).await?;
        let next = env
            .builder
            .next_position()
            .expect("in the snapshot transaction");
        env.builder.commit();
        let last = handover.built[before..].last().map(|o| o.position);
        if handover.built.len() > before {
            handover.batch();
        }
        self.count_chunk(&chunk.table, published, deleted);
        self.next = next;
        let snapshot = self.snapshot.as_mut().expect("planned");
        if let Some(line) = snapshot.chunk_done(chunk, last, published) {
            tracing::info!("{line}");
        }
        self.show();
        Ok(())
    }

    fn count_chunk(&self, table: &str, published: u64, deleted: u64) {
        let metrics = &self.metrics.envelope;
        metrics
            .snapshot_rows
            .with_label_values(&[table])
            .inc_by(published);
        if deleted > 0 {
            metrics
                .snapshot_deletes
                .with_label_values(&[table])
                .inc_by(deleted);
            tracing::info!(table = %table, keys = deleted, "keys without a row any more: deletes published");
        }
    }

    /// Store the progress NATS confirmed (up to `confirmed`); finish the snapshot when
    /// all is done.
    async fn store_confirmed(
        &mut self,
        store: Option<&StateStore>,
        confirmed: Position,
    ) -> Result<(), PipelineError> {
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        if let Some(progress) = snapshot.confirmed_progress(confirmed) {
            store_progress(store, &self.slot, &progress).await?;
        }
        if !(snapshot.is_finished() && snapshot.all_stored()) {
            return Ok(());
        }
        let mut done = snapshot.progress.clone();
        done.complete = true;
        store_progress(store, &self.slot, &done).await?;
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
        self.only_done = self.settings.mode == SnapshotMode::Only;
        Ok(())
    }
}

/// The chunk's rows the stream did not change since the snapshot began (and, when verifying, whose
/// key's last envelope differs), as snapshot envelopes; how many.
async fn publish_rows(
    env: &mut Envelopes,
    handover: &mut Handover,
    (chunk, streamed): (&Chunk, &StreamedKeys),
    verify: bool,
) -> Result<u64, PipelineError> {
    let mut published = 0u64;
    for (key, texts) in &chunk.rows {
        if chunk.removed.contains(key) || streamed.contains(key) {
            continue;
        }
        let row = super::snapshot_read::tuple(texts);
        if verify && super::snapshot_read::published_already(env, chunk.relation_id, &row).await? {
            continue;
        }
        env.build(&mut handover.built, |b, out| {
            b.snapshot_row(chunk.relation_id, &row, out)
        })
        .await?;
        published += 1;
    }
    Ok(published)
}

/// Deletes of the keys that lost their row (a sweep), unless the stream changed them.
async fn publish_deletes(
    env: &mut Envelopes,
    handover: &mut Handover,
    chunk: &Chunk,
) -> Result<u64, PipelineError> {
    let before = handover.built.len();
    for (key, values) in &chunk.vanished {
        if chunk.removed.contains(key) {
            continue;
        }
        env.build(&mut handover.built, |b, out| {
            b.snapshot_delete(chunk.relation_id, values, out)
        })
        .await?;
    }
    Ok((handover.built.len() - before) as u64)
}

impl ChangeReader {
    /// Read the next chunk, then ask the server where it is (a status update asking
    /// for a reply), so the chunk goes out once the stream passed its high watermark.
    pub(super) async fn start_chunk(
        &mut self,
        stream: &mut ReplicationStream,
    ) -> Result<(), PipelineError> {
        let read = if self.snapshot.wants_chunk() {
            self.snapshot.read_chunk(&mut self.envelopes).await?
        } else {
            let limit = self.settings.snapshot.chunk_rows;
            self.repairs.read_chunk(&mut self.envelopes, limit).await?;
            true
        };
        if read {
            self.status.send(stream, true).await?;
        }
        Ok(())
    }

    /// Whether a chunk (of a snapshot, or of keys to repair) is to be read now: one
    /// chunk waits for the stream at a time.
    pub(super) fn wants_chunk(&self) -> bool {
        if self.status.cp.received() < self.snapshot.start_after {
            return false;
        }
        let snapshot_waits = self.snapshot.chunk_waiting();
        let repair_waits = self.repairs.chunk_waiting();
        (self.snapshot.wants_chunk() && !repair_waits)
            || (self.repairs.wants_chunk() && !snapshot_waits)
    }

    /// The stream reached `at` at a transaction boundary: publish the waiting chunk
    /// when `at` is past its high watermark.
    pub(super) async fn emit_chunk_if_passed(&mut self, at: Lsn) -> Result<(), PipelineError> {
        if self.in_transaction() || self.handover.is_blocked() {
            return Ok(());
        }
        if self.snapshot.chunk_passed(at) {
            self.snapshot
                .emit(&mut self.envelopes, &mut self.handover)
                .await?;
        } else if let Some(high) = self.repairs.chunk_passed(at) {
            let position = position_at(self.snapshot.next, high);
            let next = self
                .repairs
                .emit(&mut self.envelopes, &mut self.handover, position)
                .await?;
            self.snapshot.next = next;
        }
        Ok(())
    }

    /// Store the snapshot progress NATS confirmed.
    pub(super) async fn store_snapshot_progress(&mut self) -> Result<(), PipelineError> {
        let confirmed = self.status.confirmed_position();
        self.snapshot
            .store_confirmed(self.envelopes.store.as_ref(), confirmed)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_sits_before_its_watermark_numbered_on_at_the_same_one() {
        let first = position_at(Position::default(), Lsn(800));
        assert_eq!((first.commit_lsn, first.ordinal), (Lsn(799), 0));
        let next = Position {
            commit_lsn: Lsn(799),
            ordinal: 2,
        };
        assert_eq!(position_at(next, Lsn(800)).ordinal, 2);
        assert_eq!(position_at(next, Lsn(900)).ordinal, 0);
    }
}

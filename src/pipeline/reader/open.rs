//! Opening (and after a failure, reopening) the replication stream: the slot made
//! when it may be, what this process holds in memory forgotten when another process
//! wrote meanwhile, the checkpoint resumed, and the snapshot planned.

use super::snapshot_driver::SlotStart;
use super::ChangeReader;
use crate::pipeline::PipelineError;
use crate::source::{slot, ReplicationConnection, ReplicationStream};
use crate::wire::Lsn;

impl ChangeReader {
    /// Connect, make sure the slot exists, and start streaming from it.
    pub(in crate::pipeline) async fn open(&mut self) -> Result<ReplicationStream, PipelineError> {
        let mut conn = ReplicationConnection::connect(&self.source.params).await?;
        let (start, slot) = self.ensure_slot(&mut conn).await?;
        self.streamed_before = true;
        let stream = conn
            .start_replication(
                &self.source.slot,
                Lsn(0),
                &self.source.publication,
                self.source.streaming,
            )
            .await?;
        self.forget_if_others_wrote().await?;
        self.envelopes.forget_ahead();
        self.ahead_left = 0;
        self.first_open = false;
        self.status.resume(start);
        // An open transaction's envelopes built so far stay: the stream starts again
        // at or before its Begin, recognises them as already built, and goes on.
        self.txn.skipping = false;
        // Streamed transactions still open are streamed again from their start.
        self.streams.clear();
        self.replay = None;
        tracing::info!(slot = %self.source.slot, from = %start, "streaming");
        self.snapshot.forget_pending();
        self.repairs.forget_pending();
        let store = self.envelopes.store.as_ref();
        self.snapshot.plan(slot, &self.tables, store).await?;
        // A slot made now has nothing to replay before its snapshot; otherwise the
        // snapshot waits for the changes (and table shapes) already in the WAL.
        if !slot.created {
            self.snapshot.start_after = self.envelopes.catalog.current_wal_lsn().await?;
        }
        self.metrics.source.streaming.set(1);
        self.metrics.set_ready(true, "");
        Ok(stream)
    }

    /// The slot, created when missing (only when this slot was never streamed from,
    /// or `--recreate-slot`); where streaming starts, and how new the slot is to walcast.
    async fn ensure_slot(
        &mut self,
        conn: &mut ReplicationConnection,
    ) -> Result<(Lsn, SlotStart), PipelineError> {
        let slot = &self.source.slot;
        let known = match &self.envelopes.store {
            Some(store) => store.slot_known(slot).await?,
            None => false,
        };
        let may_create = self.source.recreate_slot || !(known || self.streamed_before);
        let (start, created) = slot::ensure_slot(
            conn,
            &self.envelopes.catalog,
            slot,
            (may_create, self.source.failover_slot),
        )
        .await?;
        if let (true, Some(store)) = (created || !known, &self.envelopes.store) {
            store.record_slot(slot, &start.to_string()).await?;
        }
        let unrecorded = !created && !known && self.envelopes.store.is_some();
        Ok((
            start,
            SlotStart {
                created,
                unrecorded,
            },
        ))
    }

    /// We hold the slot now: nobody else publishes. If somebody did since this process
    /// last wrote (a standby that took over meanwhile), what we hold in memory may be
    /// stale: start again from the stream.
    async fn forget_if_others_wrote(&mut self) -> Result<(), PipelineError> {
        let Some(store) = &self.envelopes.store else {
            return Ok(());
        };
        if self.first_open || store.written_by_others().await? {
            let filter = store.subject_filter().await?;
            self.envelopes.builder.reset_key_state(Some(filter));
            self.handover.discard();
            self.txn.last_handed_commit = Lsn(0);
        }
        Ok(())
    }
}

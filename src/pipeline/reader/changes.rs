//! The change loop: each replication event and pgoutput message applied to the
//! envelope stage, transaction by transaction, with replays after a reconnect skipped
//! and completed transactions handed over. Streamed transactions (protocol 2+) are held
//! in [`super::streamed`] until they commit, then replayed here a part at a time.

use bytes::Bytes;

use super::streamed::Replay;
use super::ChangeReader;
use crate::decode::pgoutput::streaming::split_stream_xid;
use crate::decode::pgoutput::{self, OldTuple, PgOutput, RelationColumn, TupleValue};
use crate::envelope::EnvelopeError;
use crate::pipeline::PipelineError;
use crate::source::{ReplicationEvent, ReplicationStream, SourceError};
use crate::wire::{Lsn, Op, Timestamp};

/// Where the reader is in the transaction stream.
pub(super) struct Transactions {
    /// The open transaction was handed to the sink before a reconnect: skip it.
    pub(super) skipping: bool,
    /// Commit LSN of the last transaction handed to the sink: after a reconnect,
    /// transactions up to it are replays of what the sink already has.
    pub(super) last_handed_commit: Lsn,
    /// Commit time of the open (or last) transaction.
    pub(super) commit_ts: Timestamp,
    /// Transaction id of the open (or last) transaction.
    xid: u32,
}

impl Default for Transactions {
    fn default() -> Self {
        Transactions {
            skipping: false,
            last_handed_commit: Lsn(0),
            commit_ts: Timestamp {
                seconds: 0,
                nanos: 0,
            },
            xid: 0,
        }
    }
}

/// A committed streamed transaction being worked through.
pub(super) struct Replaying {
    replay: Replay,
    commit_lsn: Lsn,
    end_lsn: Lsn,
}

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
                self.status.cp.on_received(wal_end);
                self.on_message(wal_start, data).await?;
            }
            ReplicationEvent::Keepalive {
                wal_end,
                reply_requested,
            } => {
                self.metrics.source.keepalives.inc();
                self.status.cp.on_keepalive(wal_end);
                self.emit_chunk_if_passed(wal_end).await?;
                if reply_requested {
                    self.status.send(stream, false).await?;
                }
            }
            // Not asked for: the server went away (a clean shutdown); reconnect.
            ReplicationEvent::End => return Err(SourceError::StreamEnded.into()),
        }
        Ok(())
    }

    async fn on_message(&mut self, at: Lsn, data: Bytes) -> Result<(), PipelineError> {
        let decode = |source| PipelineError::Decode { lsn: at, source };
        if self.streams.block.is_some() {
            if let Some((subxid, change)) = split_stream_xid(&data).map_err(decode)? {
                return self.streams.push(subxid, change);
            }
        }
        match pgoutput::parse(&data).map_err(decode)? {
            PgOutput::StreamStart { xid, first_segment } => self.streams.start(xid, first_segment),
            PgOutput::StreamStop => self.streams.block = None,
            PgOutput::StreamAbort { xid, subxid, .. } => self.streams.abort(xid, subxid),
            PgOutput::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_ts,
            } => {
                let replay = self.streams.take(xid)?;
                self.on_begin(commit_lsn, commit_ts, xid).await?;
                self.replay = Some(Replaying {
                    replay,
                    commit_lsn,
                    end_lsn,
                });
            }
            msg => self.dispatch(msg).await?,
        }
        self.status.cp.set_streams_open(self.streams.any_open());
        let spilled = std::mem::take(&mut self.streams.spilled_bytes);
        self.metrics.source.stream_spilled_bytes.inc_by(spilled);
        Ok(())
    }

    /// Work through part of a committed streamed transaction (while the sink has room);
    /// its end completes the transaction like a Commit.
    pub(super) async fn replay_some(&mut self) -> Result<(), PipelineError> {
        let mut budget = 4096;
        while budget > 0 && !self.handover.is_blocked() {
            budget -= 1;
            let Some(r) = self.replay.as_mut() else {
                return Ok(());
            };
            let at = r.commit_lsn;
            match r.replay.next_change()? {
                Some(change) => {
                    let msg = pgoutput::parse(&change)
                        .map_err(|source| PipelineError::Decode { lsn: at, source })?;
                    self.dispatch(msg).await?;
                }
                None => {
                    let Replaying {
                        commit_lsn,
                        end_lsn,
                        ..
                    } = self.replay.take().expect("replaying");
                    self.on_commit(commit_lsn, end_lsn);
                    self.handover.batch_if_full();
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// A message of a transaction (or outside one) applied to the envelope stage.
    async fn dispatch(&mut self, msg: PgOutput<'_>) -> Result<(), PipelineError> {
        let skipping = self.txn.skipping;
        match msg {
            PgOutput::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => self.on_begin(final_lsn, commit_ts, xid).await?,
            PgOutput::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => self.on_commit(commit_lsn, end_lsn),
            PgOutput::Relation {
                relation_id,
                namespace,
                name,
                replica_identity,
                columns,
            } => {
                self.on_relation(relation_id, namespace, name, replica_identity, &columns)
                    .await?
            }
            PgOutput::Insert { relation_id, new } if !skipping => {
                self.change(relation_id, Op::Insert, None, Some(&new))
                    .await?
            }
            PgOutput::Update {
                relation_id,
                old,
                new,
            } if !skipping => {
                self.change(relation_id, Op::Update, old.as_ref(), Some(&new))
                    .await?
            }
            PgOutput::Delete { relation_id, old } if !skipping => {
                self.change(relation_id, Op::Delete, Some(&old), None)
                    .await?
            }
            PgOutput::Truncate { relation_ids, .. } if !skipping => {
                self.truncate(&relation_ids).await?
            }
            PgOutput::Message {
                prefix, content, ..
            } => self.on_logical_message(prefix, content),
            PgOutput::Origin { name, .. } => tracing::debug!(origin = name, "origin"),
            _ => {}
        }
        self.handover.batch_if_full();
        Ok(())
    }

    /// A Relation message: the table's shape for the envelope stage; a table that
    /// streams and walcast did not know makes it read the publication.
    async fn on_relation(
        &mut self,
        relation_id: u32,
        namespace: &str,
        name: &str,
        replica_identity: u8,
        columns: &[RelationColumn<'_>],
    ) -> Result<(), PipelineError> {
        self.envelopes
            .on_relation(relation_id, namespace, name, replica_identity, columns)
            .await?;
        if !self
            .tables
            .iter()
            .any(|t| t.split_once('.') == Some((namespace, name)))
        {
            self.publication.due = true;
        }
        Ok(())
    }

    async fn on_begin(
        &mut self,
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    ) -> Result<(), PipelineError> {
        // A waiting snapshot chunk goes out before any transaction that commits past
        // its high watermark.
        self.emit_chunk_if_passed(final_lsn).await?;
        self.txn.skipping = final_lsn <= self.txn.last_handed_commit;
        self.envelopes.builder.begin(final_lsn, commit_ts, xid);
        self.status.cp.on_begin();
        self.txn.commit_ts = Timestamp::from_pg_micros(commit_ts);
        self.txn.xid = xid;
        Ok(())
    }

    fn on_commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn) {
        self.envelopes.builder.commit();
        self.envelopes.recent.committed(self.txn.xid);
        if self.txn.skipping {
            self.txn.skipping = false;
            self.status.cp.on_skipped_commit();
            return;
        }
        // Small transactions travel together: the batch goes to the sink when it is
        // full or when what the server sent so far is worked through.
        let commit_ts = self.txn.commit_ts;
        self.handover.transaction_completed(end_lsn, commit_ts);
        self.txn.last_handed_commit = commit_lsn;
        self.status.transaction_handed(end_lsn, commit_ts);
        let metrics = &self.metrics.envelope;
        metrics.transactions.inc();
        metrics.last_commit_timestamp.set(commit_ts.seconds);
    }

    fn on_logical_message(&mut self, prefix: &str, content: &[u8]) {
        if prefix == crate::source::monitor::HEARTBEAT_PREFIX {
            self.heartbeat.seen(content);
        } else {
            tracing::debug!(prefix, bytes = content.len(), "logical decoding message");
        }
    }

    async fn change(
        &mut self,
        relation_id: u32,
        op: Op,
        old: Option<&OldTuple<'_>>,
        new: Option<&[TupleValue<'_>]>,
    ) -> Result<(), PipelineError> {
        let before = self.handover.built.len();
        let skipped_before = self.envelopes.builder.replays_skipped();
        let built = self
            .envelopes
            .build(&mut self.handover.built, |b, out| {
                b.change(relation_id, op, old, new, out)
            })
            .await;
        if let Err(PipelineError::Envelope(EnvelopeError::NoKey { table })) = built {
            self.envelopes.refuse_keyless(table);
            return Ok(());
        }
        built?;
        let skipped = self.envelopes.builder.replays_skipped() - skipped_before;
        self.metrics.envelope.replays_skipped.inc_by(skipped);
        let new_envelopes = &self.handover.built[before..];
        self.snapshot.live_changes(new_envelopes);
        self.envelopes.published(new_envelopes);
        let maybe_marked = self.envelopes.take_unavailable();
        self.repairs.built(relation_id, new_envelopes, maybe_marked);
        let n = new_envelopes.len() as u64;
        self.progress.count(n);
        self.envelopes.count(relation_id, op, n);
        Ok(())
    }

    async fn truncate(&mut self, relation_ids: &[u32]) -> Result<(), PipelineError> {
        self.snapshot.truncated(relation_ids);
        self.repairs.truncated(relation_ids);
        let before = self.handover.built.len();
        self.envelopes
            .build(&mut self.handover.built, |b, out| {
                b.truncate(relation_ids, out)
            })
            .await?;
        let built = &self.handover.built[before..];
        self.envelopes.count_truncates(relation_ids, built);
        Ok(())
    }
}

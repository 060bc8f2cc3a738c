//! The last step of every change: its position in the WAL order, its sequence, its
//! envelope encoded exactly once (its rows sealed as the table says), checked against the size limit, and queued for the
//! sink as an [`Outgoing`].

use bytes::{Bytes, BytesMut};

use super::sequence::{KeyState, Lookup, Position};
use super::size::{fit_size, fits, message_id};
use super::{EnvelopeBuilder, EnvelopeError, SealPlan};
use crate::wire::codec::{EnvelopeRef, Op, RowRef};
use crate::wire::Value;

/// One encoded envelope ready for the sink.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub payload: Bytes,
    /// `<key>:<sequence>` (column mode: `<key>:<sequence>@<commit lsn>`): the
    /// JetStream de-duplication id (`Nats-Msg-Id`).
    pub msg_id: String,
    /// Where the change sits in the WAL (`Walcast-Position`).
    pub position: Position,
    /// How long the stream keeps it (`Nats-TTL`; `None`: until the key's next one).
    pub ttl: Option<std::time::Duration>,
}

/// The row values of one envelope: after the change (`None`: a delete or truncate)
/// and before it (`REPLICA IDENTITY FULL` tables' updates and deletes only).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rows<'v, 'a> {
    pub(super) value: Option<&'v [Value<'a>]>,
    pub(super) before: Option<&'v [Value<'a>]>,
}

/// The size of the blocks envelopes are encoded into.
const ENCODE_BLOCK: usize = 64 * 1024;

/// Where envelopes are encoded.
#[derive(Debug)]
pub(super) struct EncodeBuffer {
    /// Each envelope is split off as an exact-size view, so envelopes in flight
    /// share a few blocks instead of one allocation each.
    encoded: BytesMut,
    /// Where each envelope is serialised first: MessagePack writes many small pieces,
    /// which a `Vec` takes more cheaply than a `BytesMut`; then one copy into `encoded`.
    scratch: Vec<u8>,
}

impl EncodeBuffer {
    pub(super) fn new() -> Self {
        EncodeBuffer {
            encoded: BytesMut::new(),
            scratch: Vec::with_capacity(1024),
        }
    }

    /// `envelope` encoded, as an exact-size view of the current block.
    fn encode<C: AsRef<str>>(
        &mut self,
        seal: Option<&SealPlan>,
        envelope: &EnvelopeRef<'_, RowRef<'_, C>>,
    ) -> Result<Bytes, EnvelopeError> {
        if self.encoded.capacity() < ENCODE_BLOCK / 8 {
            self.encoded.reserve(ENCODE_BLOCK);
        }
        self.scratch.clear();
        super::seal::encode_to(&mut self.scratch, seal, envelope)?;
        self.encoded.extend_from_slice(&self.scratch);
        Ok(self.encoded.split().freeze())
    }
}

/// An envelope encoded as it is published: without its `before` when only that makes
/// it too large for NATS (a courtesy is left out rather than fail the change), then
/// as `--oversize` says (`limit`: `max_payload` and whether to mark; `true`: marked).
fn encode_fitted<C: AsRef<str>>(
    (buffer, seal): (&mut EncodeBuffer, Option<&SealPlan>),
    (max_payload, marker): (usize, bool),
    mut envelope: EnvelopeRef<'_, RowRef<'_, C>>,
    msg_id: &str,
) -> Result<(Bytes, bool), EnvelopeError> {
    let mut payload = buffer.encode(seal, &envelope)?;
    if envelope.before.is_some() && !fits(max_payload, &payload, msg_id) {
        envelope.before = None;
        payload = buffer.encode(seal, &envelope)?;
    }
    fit_size(max_payload, marker, payload, &envelope, msg_id)
}

impl EnvelopeBuilder {
    /// Publish one change of `key` (unless its table's settings filter its op out or
    /// it is a replay): `column_seq` is its sequence in column mode, else the key's
    /// next one is assigned. `row` holds the row after the change and, for a
    /// `REPLICA IDENTITY FULL` table's update or delete, the row before it. The
    /// envelope goes to `out`.
    pub(super) fn emit(
        &mut self,
        relation_id: u32,
        op: Op,
        (key, subject): (String, String),
        row: Rows<'_, '_>,
        column_seq: Option<u64>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), EnvelopeError> {
        let mut tx = self.tx.ok_or(EnvelopeError::NoTransaction)?;
        // Op filters apply to live changes; a snapshot row is always published.
        if op != Op::Snapshot && !self.relations[&relation_id].publishes(op) {
            return Ok(());
        }
        let position = Position {
            commit_lsn: tx.commit_lsn,
            ordinal: tx.ordinal,
        };
        tx.ordinal += 1;
        self.tx = Some(tx);
        let sequence = column_seq.or_else(|| self.assign_sequence(&key, &subject, op, position));
        let Some(sequence) = sequence else {
            return Ok(()); // a replay: already published before a restart
        };
        let rel = &self.relations[&relation_id];
        let row_ref = |values| RowRef {
            columns: &rel.shape.columns,
            values,
            published: Some(&rel.published),
        };
        // A snapshot row (xid 0: no transaction) carries neither xid nor index.
        let in_tx = tx.xid != 0;
        let envelope = EnvelopeRef {
            key: &key,
            op,
            value: row.value.map(row_ref),
            schema_version: &rel.version_text,
            sequence,
            lsn: tx.commit_lsn.0,
            commit_ts: tx.commit_ts,
            xid: in_tx.then_some(tx.xid),
            tx_index: in_tx.then_some(position.ordinal),
            before: row.before.map(row_ref),
            compression: None,
            key_id: None,
            sealed_columns: None,
        };
        // Column mode repeats a key's sequences after a delete: the id names the commit
        // too, so only a replay (same commit) is a duplicate.
        let msg_id = message_id(&key, sequence, column_seq.map(|_| tx.commit_lsn));
        let limit = (self.max_payload, self.oversize_marker);
        let encoder = (&mut self.encode_buffer, rel.seal.as_ref());
        let (payload, marked) = encode_fitted(encoder, limit, envelope, &msg_id)?;
        self.oversize_markers += u64::from(marked);
        let ttl = rel.delete_ttl.filter(|_| op == Op::Delete);
        out.push(Outgoing {
            subject,
            payload,
            msg_id,
            position,
            ttl,
        });
        Ok(())
    }

    /// Walcast's sequence for the change of `key` at `position` (tracked or volatile
    /// mode): the key's last one + 1, recorded as its state. `None`: the change was
    /// already published before a restart (a replay, counted), it gets none.
    fn assign_sequence(
        &mut self,
        key: &str,
        subject: &str,
        op: Op,
        position: Position,
    ) -> Option<u64> {
        let state = match self.keys.lookup(key) {
            Lookup::Known(s) => s,
            Lookup::Missing => unreachable!("key state loaded before emitting"),
        };
        if let Some(s) = state {
            if position <= s.position {
                // Already published before a restart: not a new change.
                self.replays_skipped += 1;
                return None;
            }
        }
        if let Some(filter) = self.subject_filter.as_mut() {
            filter.insert(subject);
        }
        let sequence = state.map_or(1, |s| s.sequence + 1);
        let deleted = op == Op::Delete;
        self.keys.assigned(
            key,
            KeyState {
                sequence,
                position,
                deleted,
            },
        );
        Some(sequence)
    }
}

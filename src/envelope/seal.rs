//! A table's rows sealed as `--compress`, `--encrypt` and `--encrypt-column` say
//! ([`SealPlan`]): the one place the publisher compresses and encrypts, for changes
//! and refetch answers alike (`wire::seal` does the bytes).

use serde::Serialize;

use super::EnvelopeError;
use crate::wire::codec::{self, EnvelopeRef, RowRef};
use crate::wire::seal::{self, ColumnSealedRow, Field, RowOf, SealKey};

/// How one table's rows travel.
#[derive(Debug, Clone)]
pub struct SealPlan {
    /// Compress rows whose encoding is at least this many bytes.
    pub compress_min: Option<usize>,
    /// Encrypt whole rows under this key (the key ring's newest).
    pub key: Option<SealKey>,
    /// Encrypt only these columns, each on its own (when the row is not sealed whole).
    pub columns: Option<SealedColumns>,
}

/// The columns of a table sealed one by one (`--encrypt-column`).
#[derive(Debug, Clone)]
pub struct SealedColumns {
    pub key: SealKey,
    /// Per column of the table, in order: sealed or not.
    pub mask: Vec<bool>,
    /// The sealed columns' names (the envelope's `sealed_columns`).
    pub names: Vec<String>,
}

/// Encode `envelope` at the end of `out`, its rows sealed per `plan` (none: as is).
pub(super) fn encode_to<C: AsRef<str>>(
    out: &mut Vec<u8>,
    plan: Option<&SealPlan>,
    envelope: &EnvelopeRef<'_, RowRef<'_, C>>,
) -> Result<(), EnvelopeError> {
    let Some(plan) = plan else {
        return Ok(codec::encode_to(out, envelope)?);
    };
    let Some(columns) = plan.columns.as_ref().filter(|_| plan.key.is_none()) else {
        return encode_rows(out, plan, envelope);
    };
    let of = |field| RowOf {
        key: envelope.key,
        op: envelope.op.as_str(),
        sequence: envelope.sequence,
        field,
    };
    let sealed = |row, field| ColumnSealedRow {
        row,
        sealed: &columns.mask,
        key: &columns.key,
        of: of(field),
    };
    let by_column = EnvelopeRef {
        value: envelope.value.as_ref().map(|r| sealed(r, Field::Value)),
        before: envelope.before.as_ref().map(|r| sealed(r, Field::Before)),
        key_id: Some(columns.key.id()),
        sealed_columns: Some(&columns.names),
        ..copy_fields(envelope)
    };
    encode_rows(out, plan, &by_column)
}

/// `envelope`'s clear fields, without rows.
pub(super) fn copy_fields<'a, V: Serialize, W: Serialize>(
    envelope: &EnvelopeRef<'a, V>,
) -> EnvelopeRef<'a, W> {
    EnvelopeRef {
        key: envelope.key,
        op: envelope.op,
        value: None,
        schema_version: envelope.schema_version,
        sequence: envelope.sequence,
        lsn: envelope.lsn,
        commit_ts: envelope.commit_ts,
        xid: envelope.xid,
        tx_index: envelope.tx_index,
        before: None,
        compression: envelope.compression,
        key_id: envelope.key_id,
        sealed_columns: envelope.sealed_columns,
    }
}

/// The rows compressed (when large enough) and encrypted whole (when the plan says),
/// or the envelope as it is.
fn encode_rows<V: Serialize>(
    out: &mut Vec<u8>,
    plan: &SealPlan,
    envelope: &EnvelopeRef<'_, V>,
) -> Result<(), EnvelopeError> {
    let packed = |row: &Option<V>| -> Result<Option<Vec<u8>>, EnvelopeError> {
        row.as_ref()
            .map(|r| rmp_serde::to_vec(r).map_err(EnvelopeError::from))
            .transpose()
    };
    let (value, before) = (packed(&envelope.value)?, packed(&envelope.before)?);
    let largest = value.iter().chain(&before).map(Vec::len).max().unwrap_or(0);
    let compress = plan.compress_min.is_some_and(|min| largest >= min);
    if !compress && plan.key.is_none() {
        return Ok(codec::encode_to(out, envelope)?);
    }
    let op = envelope.op.as_str();
    let sealed = |plain: &Option<Vec<u8>>, field| {
        let row = RowOf {
            key: envelope.key,
            op,
            sequence: envelope.sequence,
            field,
        };
        plain
            .as_ref()
            .map(|p| seal::seal_row(p, compress, plan.key.as_ref(), row))
    };
    let (value, before) = (sealed(&value, Field::Value), sealed(&before, Field::Before));
    let sealed_envelope = EnvelopeRef {
        value: value.as_deref().map(serde_bytes::Bytes::new),
        before: before.as_deref().map(serde_bytes::Bytes::new),
        compression: compress.then_some(seal::ZSTD),
        key_id: plan.key.as_ref().map(SealKey::id).or(envelope.key_id),
        ..copy_fields(envelope)
    };
    Ok(codec::encode_to(out, &sealed_envelope)?)
}

//! A table's rows sealed as `--compress` and `--encrypt` say ([`SealPlan`]): the one
//! place the publisher compresses and encrypts, for changes and refetch answers
//! alike (`wire::seal` does the bytes).

use serde::Serialize;

use super::EnvelopeError;
use crate::wire::codec::{self, EnvelopeRef};
use crate::wire::seal::{self, Field, RowOf, SealKey};

/// How one table's rows travel.
#[derive(Debug, Clone)]
pub struct SealPlan {
    /// Compress rows whose encoding is at least this many bytes.
    pub compress_min: Option<usize>,
    /// Encrypt under this key (the key ring's newest).
    pub key: Option<SealKey>,
}

/// Encode `envelope` at the end of `out`, its rows sealed per `plan` (none: as is).
pub(super) fn encode_to<V: Serialize>(
    out: &mut Vec<u8>,
    plan: Option<&SealPlan>,
    envelope: &EnvelopeRef<'_, V>,
) -> Result<(), EnvelopeError> {
    let Some(plan) = plan else {
        return Ok(codec::encode_to(out, envelope)?);
    };
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
        key: envelope.key,
        op: envelope.op,
        value: value.as_deref().map(serde_bytes::Bytes::new),
        schema_version: envelope.schema_version,
        sequence: envelope.sequence,
        lsn: envelope.lsn,
        commit_ts: envelope.commit_ts,
        xid: envelope.xid,
        tx_index: envelope.tx_index,
        before: before.as_deref().map(serde_bytes::Bytes::new),
        compression: compress.then_some(seal::ZSTD),
        key_id: plan.key.as_ref().map(SealKey::id),
    };
    Ok(codec::encode_to(out, &sealed_envelope)?)
}

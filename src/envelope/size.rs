//! An envelope against the NATS server's `max_payload`: published as is, refused, or
//! replaced by a too-large marker (`--oversize marker`); and its message id.

use bytes::Bytes;

use super::{EnvelopeError, TOO_LARGE_KEY};
use crate::wire::codec::{self, EnvelopeRef};
use crate::wire::Lsn;

/// Bytes counted for an envelope's headers beside its message id.
const HEADER_ALLOWANCE: usize = 160;

/// The value of a too-large envelope: `{"$walcast_too_large": <encoded size>}`.
struct MarkerRow<'a>(&'a [(&'static str, u64)]);

impl serde::Serialize for MarkerRow<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Whether an encoded envelope and its headers (id, position, expected sequence)
/// fit the NATS server's `max_payload`.
pub(super) fn fits(max_payload: usize, payload: &[u8], msg_id: &str) -> bool {
    payload.len() + msg_id.len() + HEADER_ALLOWANCE <= max_payload
}

/// The envelope as published: itself, or (too large for NATS) an error or a
/// marker, as `--oversize` says. `true`: replaced by a marker.
pub(super) fn fit_size<V: serde::Serialize>(
    max_payload: usize,
    oversize_marker: bool,
    payload: Bytes,
    envelope: &EnvelopeRef<'_, V>,
    msg_id: &str,
) -> Result<(Bytes, bool), EnvelopeError> {
    if fits(max_payload, &payload, msg_id) {
        return Ok((payload, false));
    }
    let size = payload.len() + msg_id.len() + HEADER_ALLOWANCE;
    if !oversize_marker {
        return Err(EnvelopeError::TooLarge {
            key: envelope.key.to_string(),
            bytes: size,
            max: max_payload,
        });
    }
    let marker = [(TOO_LARGE_KEY, payload.len() as u64)];
    let marked = codec::encode(&EnvelopeRef {
        value: Some(MarkerRow(&marker)),
        compression: None,
        key_id: None,
        sealed_columns: None,
        ..super::seal::copy_fields(envelope)
    })?;
    Ok((Bytes::from(marked), true))
}

/// The `Nats-Msg-Id` of a key's envelope: `<key>:<sequence>`, and `@<commit lsn>`
/// (decimal) when given (column mode).
pub(super) fn message_id(key: &str, sequence: u64, commit: Option<Lsn>) -> String {
    let mut digits = itoa::Buffer::new();
    let sequence = digits.format(sequence);
    let mut id = String::with_capacity(key.len() + 1 + sequence.len() + 21);
    id.push_str(key);
    id.push(':');
    id.push_str(sequence);
    if let Some(lsn) = commit {
        id.push('@');
        id.push_str(itoa::Buffer::new().format(lsn.0));
    }
    id
}

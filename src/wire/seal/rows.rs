//! An envelope's rows sealed and opened: whole (compressed, encrypted, or both) or
//! column by column (`sealed_columns`), with the associated data of each.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::{
    associated_data, compress, decompress, open, seal, Field, Keyring, SealError, SealKey, ZSTD,
};
use crate::wire::codec::RowRef;

/// How an envelope's rows travel: its `compression` and `key_id` fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sealing<'a> {
    pub compression: Option<&'a str>,
    pub key_id: Option<&'a str>,
    /// `sealed_columns`: only these columns of the row are sealed (each on its own),
    /// not the whole row.
    pub columns: Option<&'a [String]>,
}

/// The envelope a sealed row belongs to (its clear fields, bound as associated data).
#[derive(Debug, Clone, Copy)]
pub struct RowOf<'a> {
    pub key: &'a str,
    pub op: &'a str,
    pub sequence: u64,
    pub field: Field,
}

impl RowOf<'_> {
    /// The associated data of this whole row.
    pub fn ad(&self, key_id: &str) -> Vec<u8> {
        associated_data(
            key_id,
            self.key,
            self.op,
            self.field.as_str(),
            self.sequence,
        )
    }

    /// The associated data of one sealed column of this row.
    pub fn column_ad(&self, key_id: &str, column: &str) -> Vec<u8> {
        let field = format!("{}.{column}", self.field.as_str());
        associated_data(key_id, self.key, self.op, &field, self.sequence)
    }
}

/// A row's MessagePack encoding sealed as the publisher sends it: compressed when
/// `compress`, then encrypted under `key` when given.
pub fn seal_row(plain: &[u8], compress_it: bool, key: Option<&SealKey>, row: RowOf<'_>) -> Vec<u8> {
    let packed = if compress_it {
        compress(plain)
    } else {
        plain.to_vec()
    };
    match key {
        Some(key) => seal(key, &row.ad(&key.id), &packed),
        None => packed,
    }
}

/// A row value as the consumer reads it: `value` itself when the envelope is not
/// sealed (or the row is nil), else the `bin` opened with `keys` and inflated, then
/// read as MessagePack.
pub fn open_row(
    value: rmpv::Value,
    sealing: Sealing<'_>,
    row: RowOf<'_>,
    keys: Option<&Keyring>,
) -> Result<rmpv::Value, SealError> {
    if sealing == Sealing::default() || value.is_nil() {
        return Ok(value);
    }
    let whole = sealing.compression.is_some() || sealing.columns.is_none();
    let value = if whole {
        unpack_row(value, sealing, row, keys)?
    } else {
        value
    };
    match (sealing.key_id, sealing.columns) {
        (Some(key_id), Some(columns)) => open_columns(value, key_id, columns, row, keys),
        _ => Ok(value),
    }
}

/// The key of `key_id` in `keys`, or why there is none.
fn key_for<'k>(
    keys: Option<&'k Keyring>,
    key_id: &str,
    row: &RowOf<'_>,
) -> Result<&'k SealKey, SealError> {
    let keys = keys.ok_or_else(|| SealError::NoKeys {
        key: row.key.to_string(),
        key_id: key_id.to_string(),
    })?;
    keys.get(key_id).ok_or_else(|| SealError::UnknownKey {
        key: row.key.to_string(),
        key_id: key_id.to_string(),
        have: keys.ids().join(", "),
    })
}

/// A row map whose `columns` are sealed one by one: each opened in place.
fn open_columns(
    value: rmpv::Value,
    key_id: &str,
    columns: &[String],
    row: RowOf<'_>,
    keys: Option<&Keyring>,
) -> Result<rmpv::Value, SealError> {
    let (key, field) = (row.key.to_string(), row.field.as_str());
    let rmpv::Value::Map(mut entries) = value else {
        return Err(SealError::NotBinary { key, field });
    };
    let sealer = key_for(keys, key_id, &row)?;
    for (name, v) in entries.iter_mut() {
        let Some(column) = name.as_str().filter(|n| columns.iter().any(|c| c == n)) else {
            continue;
        };
        let rmpv::Value::Binary(sealed) = v else {
            return Err(SealError::NotBinary { key, field });
        };
        let plain = open(sealer, &row.column_ad(key_id, column), sealed).ok_or_else(|| {
            SealError::Authentication {
                key: key.clone(),
                key_id: key_id.to_string(),
                field,
            }
        })?;
        *v =
            rmpv::decode::read_value(&mut plain.as_slice()).map_err(|e| SealError::Decompress {
                key: key.clone(),
                field,
                why: format!("not MessagePack inside: {e}"),
            })?;
    }
    Ok(rmpv::Value::Map(entries))
}

/// A whole row as bin: opened (when encrypted whole) and inflated, then read.
fn unpack_row(
    value: rmpv::Value,
    sealing: Sealing<'_>,
    row: RowOf<'_>,
    keys: Option<&Keyring>,
) -> Result<rmpv::Value, SealError> {
    let (key, field) = (row.key.to_string(), row.field.as_str());
    let rmpv::Value::Binary(bytes) = value else {
        return Err(SealError::NotBinary { key, field });
    };
    let opened = match sealing.key_id.filter(|_| sealing.columns.is_none()) {
        None => bytes,
        Some(key_id) => {
            let sealer = key_for(keys, key_id, &row)?;
            open(sealer, &row.ad(key_id), &bytes).ok_or_else(|| SealError::Authentication {
                key: key.clone(),
                key_id: key_id.to_string(),
                field,
            })?
        }
    };
    let plain = match sealing.compression {
        None => opened,
        Some(ZSTD) => decompress(&opened).map_err(|why| SealError::Decompress {
            key: key.clone(),
            field,
            why,
        })?,
        Some(other) => {
            return Err(SealError::UnknownCompression {
                key,
                field,
                compression: other.to_string(),
            })
        }
    };
    rmpv::decode::read_value(&mut plain.as_slice()).map_err(|e| SealError::Decompress {
        key,
        field,
        why: format!("not MessagePack inside: {e}"),
    })
}

/// A row whose chosen columns are each sealed under `key` (`value.<column>` or
/// `before.<column>` as their associated data): the publisher's per-column
/// encryption. Serialises as the row map with those columns' values as bin.
pub struct ColumnSealedRow<'a, C: AsRef<str>> {
    pub row: &'a RowRef<'a, C>,
    /// Which columns (in the row's order) are sealed.
    pub sealed: &'a [bool],
    pub key: &'a SealKey,
    pub of: RowOf<'a>,
}

impl<C: AsRef<str>> Serialize for ColumnSealedRow<'_, C> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let row = self.row;
        let shown = |i: usize| {
            row.published
                .is_none_or(|p| p.get(i).copied().unwrap_or(true))
        };
        let n = (0..row.values.len()).filter(|&i| shown(i)).count();
        let mut m = s.serialize_map(Some(n))?;
        for (i, (c, v)) in row.columns.iter().zip(row.values).enumerate() {
            if !shown(i) {
                continue;
            }
            if self.sealed.get(i).copied().unwrap_or(false) {
                let plain = rmp_serde::to_vec(v).map_err(serde::ser::Error::custom)?;
                let ad = self.of.column_ad(self.key.id(), c.as_ref());
                m.serialize_entry(
                    c.as_ref(),
                    serde_bytes::Bytes::new(&seal(self.key, &ad, &plain)),
                )?;
            } else {
                m.serialize_entry(c.as_ref(), v)?;
            }
        }
        m.end()
    }
}

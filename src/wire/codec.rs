//! The wire format: envelopes as MessagePack maps with named fields (`rmp-serde`).
//!
//! ONE encoder ([`encode_into`]) writes every envelope, from borrowed data
//! ([`EnvelopeRef`]): the publisher with typed row values ([`RowRef`]), a client
//! re-publishing a decoded [`Envelope`] with its generic value; both give the same
//! bytes. Consumers decode into an owned [`Envelope`] whose row value is a generic
//! MessagePack value. The format is documented in `docs/envelope.md` with test vectors.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::seal::{open_row, Field, RowOf, Sealing};
use super::{Lsn, Timestamp, Value};

/// The kind of change an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Insert,
    Update,
    Delete,
    /// A row from an initial load or re-snapshot.
    Snapshot,
    /// Table-level: every row of the table was removed.
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Snapshot => "snapshot",
            Op::Truncate => "truncate",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "insert" => Op::Insert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            "snapshot" => Op::Snapshot,
            "truncate" => Op::Truncate,
            _ => return None,
        })
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A row as a map from column name to value, borrowing both.
#[derive(Debug)]
pub struct RowRef<'a, C: AsRef<str>> {
    /// The columns (anything that names them), in the values' order.
    pub columns: &'a [C],
    pub values: &'a [Value<'a>],
    /// Which columns to write (all when `None`).
    pub published: Option<&'a [bool]>,
}

impl<C: AsRef<str>> Serialize for RowRef<'_, C> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let shown = |i: usize| {
            self.published
                .is_none_or(|p| p.get(i).copied().unwrap_or(true))
        };
        let n = (0..self.values.len()).filter(|&i| shown(i)).count();
        let mut m = s.serialize_map(Some(n))?;
        for (i, (c, v)) in self.columns.iter().zip(self.values).enumerate() {
            if shown(i) {
                m.serialize_entry(c.as_ref(), v)?;
            }
        }
        m.end()
    }
}

/// An envelope being encoded, borrowing everything it carries. `V` is the row value:
/// a [`RowRef`] of typed values, or a generic `rmpv::Value`. The optional fields are
/// left out of the map when `None` (not written as nil).
#[derive(Debug, Serialize)]
pub struct EnvelopeRef<'a, V: Serialize> {
    pub key: &'a str,
    pub op: Op,
    pub value: Option<V>,
    pub schema_version: &'a str,
    pub sequence: u64,
    pub lsn: u64,
    pub commit_ts: Timestamp,
    /// The transaction's id (pgoutput's Begin); `None` outside a transaction (snapshot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xid: Option<u32>,
    /// The envelope's index among those walcast publishes of its transaction (from 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_index: Option<u32>,
    /// The row before the change (update and delete of a `REPLICA IDENTITY FULL` table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<V>,
    /// `value` and `before` are zstd frames (`"zstd"`): `--compress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression: Option<&'a str>,
    /// `value` and `before` are AES-256-GCM sealed under this key id: `--encrypt`
    /// (or, with `sealed_columns`, only those columns, each on its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    /// The columns sealed one by one (`--encrypt-column`); absent: the whole row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed_columns: Option<&'a [String]>,
}

/// Why an envelope could not be encoded (a value MessagePack cannot carry).
pub type EncodeError = rmp_serde::encode::Error;

/// Encode an envelope at the end of `out`: a MessagePack map with string keys, in the
/// field order above. The one encoder of the wire format.
pub fn encode_into<V: Serialize>(
    out: &mut Vec<u8>,
    envelope: &EnvelopeRef<'_, V>,
) -> Result<(), EncodeError> {
    envelope.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
}

/// Encode an envelope to any writer (walcast's publisher: its shared output block).
pub fn encode_to<W: std::io::Write, V: Serialize>(
    out: W,
    envelope: &EnvelopeRef<'_, V>,
) -> Result<(), EncodeError> {
    envelope.serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
}

/// Encode an envelope into a new buffer.
pub fn encode<V: Serialize>(envelope: &EnvelopeRef<'_, V>) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(128);
    encode_into(&mut buf, envelope)?;
    Ok(buf)
}

/// Why bytes could not be read as an envelope.
#[derive(Debug, thiserror::Error)]
pub enum DecodeEnvelopeError {
    #[error("not MessagePack: {0}")]
    NotMsgpack(#[from] rmpv::decode::Error),
    #[error("envelope is not a map")]
    NotAMap,
    #[error("envelope field {0:?} is missing or has the wrong type")]
    Field(&'static str),
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// A compressed or encrypted row that could not be opened (no key, wrong key…).
    #[error(transparent)]
    Sealed(#[from] super::seal::SealError),
}

/// A decoded envelope, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub key: String,
    pub op: Op,
    /// The full row (a map), or `Nil` for deletes and truncates.
    pub value: rmpv::Value,
    pub schema_version: String,
    pub sequence: u64,
    pub lsn: u64,
    pub commit_ts: Timestamp,
    /// The transaction's id; absent on snapshot envelopes.
    pub xid: Option<u32>,
    /// The envelope's index in its transaction; absent on snapshot envelopes.
    pub tx_index: Option<u32>,
    /// The row before the change: updates and deletes of `REPLICA IDENTITY FULL`
    /// tables only (`None` elsewhere, and where it would not fit the size limit).
    pub before: Option<rmpv::Value>,
    /// How the rows travelled (already opened here): compression (`"zstd"`)…
    pub compression: Option<String>,
    /// … and the id of the key they were encrypted under.
    pub key_id: Option<String>,
}

impl Envelope {
    /// The column `name` of the row value, if present.
    pub fn column(&self, name: &str) -> Option<&rmpv::Value> {
        self.value
            .as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v)
    }

    /// Encode this envelope again (byte-identical to what the publisher wrote, for an
    /// envelope that travelled unsealed), with the same encoder. The rows are written
    /// in the clear: a sealed envelope re-encodes as its plain form.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&EnvelopeRef {
            key: &self.key,
            op: self.op,
            value: Some(&self.value),
            schema_version: &self.schema_version,
            sequence: self.sequence,
            lsn: self.lsn,
            commit_ts: self.commit_ts,
            xid: self.xid,
            tx_index: self.tx_index,
            before: self.before.as_ref(),
            compression: None,
            key_id: None,
            sealed_columns: None,
        })
        .expect("a decoded envelope encodes again")
    }
}

/// Read the MessagePack timestamp extension from a generic value.
pub fn timestamp_of(v: &rmpv::Value) -> Option<Timestamp> {
    match v {
        rmpv::Value::Ext(-1, data) => Timestamp::from_ext_bytes(data),
        _ => None,
    }
}

/// Decode an envelope: compressed rows are inflated; an encrypted one is an error
/// ([`DecodeEnvelopeError::Sealed`]) — use [`decode_with`] and the key ring.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeEnvelopeError> {
    decode_with(bytes, None)
}

/// Decode an envelope, opening its rows with `keys` when they are encrypted.
pub fn decode_with(
    mut bytes: &[u8],
    keys: Option<&super::seal::Keyring>,
) -> Result<Envelope, DecodeEnvelopeError> {
    let v = rmpv::decode::read_value(&mut bytes)?;
    let rmpv::Value::Map(fields) = v else {
        return Err(DecodeEnvelopeError::NotAMap);
    };
    let mut key = None;
    let mut op = None;
    let mut value = rmpv::Value::Nil;
    let mut schema_version = None;
    let mut sequence = None;
    let mut lsn = None;
    let mut commit_ts = None;
    let (mut xid, mut tx_index, mut before) = (None, None, None);
    let (mut compression, mut key_id, mut columns) = (None, None, None);
    for (k, v) in fields {
        match k.as_str() {
            Some("key") => key = v.as_str().map(str::to_string),
            Some("op") => {
                let s = v.as_str().ok_or(DecodeEnvelopeError::Field("op"))?;
                op = Some(Op::parse(s).ok_or_else(|| DecodeEnvelopeError::UnknownOp(s.into()))?);
            }
            Some("value") => value = v,
            Some("schema_version") => schema_version = v.as_str().map(str::to_string),
            Some("sequence") => sequence = v.as_u64(),
            Some("lsn") => lsn = v.as_u64(),
            Some("commit_ts") => commit_ts = timestamp_of(&v),
            Some("xid") => xid = Some(small_uint(&v, "xid")?),
            Some("tx_index") => tx_index = Some(small_uint(&v, "tx_index")?),
            Some("before") => before = Some(v),
            Some("compression") => compression = Some(text(v, "compression")?),
            Some("key_id") => key_id = Some(text(v, "key_id")?),
            Some("sealed_columns") => columns = Some(texts(v, "sealed_columns")?),
            _ => {}
        }
    }
    let key = key.ok_or(DecodeEnvelopeError::Field("key"))?;
    let op = op.ok_or(DecodeEnvelopeError::Field("op"))?;
    let sequence = sequence.ok_or(DecodeEnvelopeError::Field("sequence"))?;
    let sealing = Sealing {
        compression: compression.as_deref(),
        key_id: key_id.as_deref(),
        columns: columns.as_deref(),
    };
    let row = |field| RowOf {
        key: &key,
        op: op.as_str(),
        sequence,
        field,
    };
    let value = open_row(value, sealing, row(Field::Value), keys)?;
    let before = match before {
        Some(b) => Some(open_row(b, sealing, row(Field::Before), keys)?),
        None => None,
    };
    Ok(Envelope {
        key,
        op,
        value,
        schema_version: schema_version.ok_or(DecodeEnvelopeError::Field("schema_version"))?,
        sequence,
        lsn: lsn.ok_or(DecodeEnvelopeError::Field("lsn"))?,
        commit_ts: commit_ts.ok_or(DecodeEnvelopeError::Field("commit_ts"))?,
        xid,
        tx_index,
        before,
        compression,
        key_id,
    })
}

/// An optional field that must be an array of str when present.
fn texts(v: rmpv::Value, name: &'static str) -> Result<Vec<String>, DecodeEnvelopeError> {
    match v {
        rmpv::Value::Array(items) => items.into_iter().map(|i| text(i, name)).collect(),
        _ => Err(DecodeEnvelopeError::Field(name)),
    }
}

/// An optional field that must be a str when present.
fn text(v: rmpv::Value, name: &'static str) -> Result<String, DecodeEnvelopeError> {
    match v {
        rmpv::Value::String(s) => s.into_str().ok_or(DecodeEnvelopeError::Field(name)),
        _ => Err(DecodeEnvelopeError::Field(name)),
    }
}

/// An optional field that must be a uint of 32 bits when present.
fn small_uint(v: &rmpv::Value, name: &'static str) -> Result<u32, DecodeEnvelopeError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(DecodeEnvelopeError::Field(name))
}

/// A generic MessagePack value as JSON for people: binary as `\x`-hex strings,
/// timestamps as RFC 3339 strings, non-finite floats as strings.
pub fn to_json(v: &rmpv::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        rmpv::Value::Nil => J::Null,
        rmpv::Value::Boolean(b) => J::Bool(*b),
        rmpv::Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(n), _) => J::from(n),
            (_, Some(n)) => J::from(n),
            _ => J::Null,
        },
        rmpv::Value::F32(f) => float_json(f64::from(*f)),
        rmpv::Value::F64(f) => float_json(*f),
        rmpv::Value::String(s) => J::String(
            s.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(s.as_bytes()).into_owned()),
        ),
        rmpv::Value::Binary(b) => J::String(format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
        rmpv::Value::Array(a) => J::Array(a.iter().map(to_json).collect()),
        rmpv::Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = k
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| k.to_string());
                    (key, to_json(v))
                })
                .collect(),
        ),
        rmpv::Value::Ext(-1, data) => match Timestamp::from_ext_bytes(data) {
            Some(t) => J::String(t.to_rfc3339()),
            None => J::Null,
        },
        rmpv::Value::Ext(tag, data) => serde_json::json!({"ext": tag, "data": data}),
    }
}

fn float_json(f: f64) -> serde_json::Value {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(f.to_string()))
}

impl Envelope {
    /// The envelope as one JSON object (for `walcast tail --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut j = serde_json::json!({
            "key": self.key,
            "op": self.op.as_str(),
            "value": to_json(&self.value),
            "schema_version": self.schema_version,
            "sequence": self.sequence,
            "lsn": Lsn(self.lsn).to_string(),
            "commit_ts": self.commit_ts.to_rfc3339(),
        });
        let fields = j.as_object_mut().expect("an object");
        if let Some(xid) = self.xid {
            fields.insert("xid".into(), xid.into());
        }
        if let Some(i) = self.tx_index {
            fields.insert("tx_index".into(), i.into());
        }
        if let Some(before) = &self.before {
            fields.insert("before".into(), to_json(before));
        }
        j
    }
}

#[cfg(test)]
mod tests;

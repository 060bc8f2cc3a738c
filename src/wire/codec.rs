//! The wire format: envelopes as MessagePack maps with named fields (`rmp-serde`).
//!
//! ONE encoder ([`encode_into`]) writes every envelope, from borrowed data
//! ([`EnvelopeRef`]): the publisher with typed row values ([`RowRef`]), a client
//! re-publishing a decoded [`Envelope`] with its generic value; both give the same
//! bytes. Consumers decode into an owned [`Envelope`] whose row value is a generic
//! MessagePack value. The format is documented in `docs/envelope.md` with test vectors.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

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
/// a [`RowRef`] of typed values, or a generic `rmpv::Value`.
#[derive(Debug, Serialize)]
pub struct EnvelopeRef<'a, V: Serialize> {
    pub key: &'a str,
    pub op: Op,
    pub value: Option<V>,
    pub schema_version: &'a str,
    pub sequence: u64,
    pub lsn: u64,
    pub commit_ts: Timestamp,
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

    /// Encode this envelope again (byte-identical to what the publisher wrote), with
    /// the same encoder.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&EnvelopeRef {
            key: &self.key,
            op: self.op,
            value: Some(&self.value),
            schema_version: &self.schema_version,
            sequence: self.sequence,
            lsn: self.lsn,
            commit_ts: self.commit_ts,
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

/// Decode an envelope.
pub fn decode(mut bytes: &[u8]) -> Result<Envelope, DecodeEnvelopeError> {
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
            _ => {}
        }
    }
    Ok(Envelope {
        key: key.ok_or(DecodeEnvelopeError::Field("key"))?,
        op: op.ok_or(DecodeEnvelopeError::Field("op"))?,
        value,
        schema_version: schema_version.ok_or(DecodeEnvelopeError::Field("schema_version"))?,
        sequence: sequence.ok_or(DecodeEnvelopeError::Field("sequence"))?,
        lsn: lsn.ok_or(DecodeEnvelopeError::Field("lsn"))?,
        commit_ts: commit_ts.ok_or(DecodeEnvelopeError::Field("commit_ts"))?,
    })
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
        serde_json::json!({
            "key": self.key,
            "op": self.op.as_str(),
            "value": to_json(&self.value),
            "schema_version": self.schema_version,
            "sequence": self.sequence,
            "lsn": Lsn(self.lsn).to_string(),
            "commit_ts": self.commit_ts.to_rfc3339(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn col(name: &str) -> &str {
        name
    }

    /// The test vectors printed in docs/envelope.md: if this test changes, the
    /// documented wire format changed.
    #[test]
    fn test_vectors_match_the_documentation() {
        let columns = [col("id"), col("name"), col("score"), col("tags")];
        let values = [
            Value::Int(42),
            Value::Str("Ada".into()),
            Value::Float64(f64::NAN),
            Value::Array(vec![Value::Str("a".into()), Value::Null]),
        ];
        let insert = EnvelopeRef {
            key: "public.users:42",
            op: Op::Insert,
            value: Some(RowRef {
                columns: &columns,
                values: &values,
                published: None,
            }),
            schema_version: "1.0",
            sequence: 1,
            lsn: 0x16B374D848,
            commit_ts: Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000,
            },
        };
        let bytes = encode(&insert).unwrap();
        assert_eq!(
            hex(&bytes),
            "87a36b6579af7075626c69632e75736572733a3432a26f70a6696e73657274a576616c756584a2696\
             42aa46e616d65a3416461a573636f7265cb7ff8000000000000a47461677392a161c0ae736368656\
             d615f76657273696f6ea3312e30a873657175656e636501a36c736ecf00000016b374d848a9636f6\
             d6d69745f7473d7ff1d6f28006553f100"
        );
        let back = decode(&bytes).unwrap();
        assert_eq!(back.key, "public.users:42");
        assert_eq!(back.op, Op::Insert);
        assert_eq!(back.sequence, 1);
        assert_eq!(back.column("id").and_then(|v| v.as_i64()), Some(42));
        assert!(back
            .column("score")
            .and_then(|v| v.as_f64())
            .unwrap()
            .is_nan());
        assert_eq!(back.to_bytes(), bytes);

        let delete = EnvelopeRef::<RowRef<'_, &str>> {
            key: "public.users:42",
            op: Op::Delete,
            value: None,
            schema_version: "2.1",
            sequence: 7,
            lsn: 1,
            commit_ts: Timestamp::INFINITY,
        };
        let bytes = encode(&delete).unwrap();
        assert_eq!(
            hex(&bytes),
            "87a36b6579af7075626c69632e75736572733a3432a26f70a664656c657465a576616c7565c0ae7\
             36368656d615f76657273696f6ea3322e31a873657175656e636507a36c736e01a9636f6d6d69745f\
             7473c70cff000000007fffffffffffffff"
        );
        assert_eq!(decode(&bytes).unwrap().commit_ts, Timestamp::INFINITY);
    }

    #[test]
    fn documentation_carries_the_same_vectors() {
        let doc = include_str!("../../docs/envelope.md");
        let source = include_str!("codec.rs");
        // Every hex vector asserted above appears verbatim in the documentation.
        let vectors: Vec<String> = source
            .split("assert_eq!(\n            hex(&bytes),\n            \"")
            .skip(1)
            .map(|rest| {
                rest.split("\"\n        );")
                    .next()
                    .unwrap()
                    .replace(['\\', '\n', ' '], "")
            })
            .collect();
        assert_eq!(vectors.len(), 2);
        for v in vectors {
            assert!(doc.contains(&v), "docs/envelope.md lacks the vector {v}");
        }
    }

    #[test]
    fn rejects_what_is_not_an_envelope() {
        assert!(matches!(
            decode(b"\xd9"),
            Err(DecodeEnvelopeError::NotMsgpack(_))
        ));
        assert!(matches!(decode(b"\x01"), Err(DecodeEnvelopeError::NotAMap)));
        assert!(matches!(
            decode(b"\x81\xa3key\xa1k"),
            Err(DecodeEnvelopeError::Field("op"))
        ));
    }
}

//! Typed column values as they travel: what each PostgreSQL value becomes in the
//! envelope and how it is written in MessagePack (see `docs/envelope.md`). The
//! decode stage produces them from PostgreSQL's text forms.

use std::borrow::Cow;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use super::{Json, Timestamp};

/// One typed column value. Text borrows from the received WAL buffer when it needs
/// no unescaping.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float32(f32),
    Float64(f64),
    Str(Cow<'a, str>),
    Bin(Vec<u8>),
    Timestamp(Timestamp),
    /// A PostgreSQL interval: kept as its three exact fields.
    Interval {
        months: i32,
        days: i32,
        microseconds: i64,
    },
    /// `json` / `jsonb`: native MessagePack with exact numbers ([`super::json`]).
    Json(Json),
    Array(Vec<Value<'a>>),
    /// An array whose lower bounds are not all 1 (`'[0:1]={1,2}'`): the map
    /// `{"lower_bounds": [0], "elements": [1, 2]}` (see `docs/envelope.md`).
    BoundedArray {
        lower_bounds: Vec<i64>,
        elements: Vec<Value<'a>>,
    },
    /// A value read back from a published envelope, written again unchanged.
    Raw(rmpv::Value),
    /// An unchanged TOAST value that could not be recovered exactly: written as the
    /// map `{"$walcast_unavailable": "unchanged-toast"}` (see `docs/envelope.md`).
    Unavailable,
}

/// The key of the map an unavailable value is published as.
pub const UNAVAILABLE_KEY: &str = "$walcast_unavailable";

impl Value<'_> {
    /// A copy that no longer borrows the WAL buffer.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Null => Value::Null,
            Value::Bool(b) => Value::Bool(b),
            Value::Int(i) => Value::Int(i),
            Value::Float32(f) => Value::Float32(f),
            Value::Float64(f) => Value::Float64(f),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::Bin(b) => Value::Bin(b),
            Value::Timestamp(t) => Value::Timestamp(t),
            Value::Interval {
                months,
                days,
                microseconds,
            } => Value::Interval {
                months,
                days,
                microseconds,
            },
            Value::Json(j) => Value::Json(j),
            Value::Array(a) => Value::Array(a.into_iter().map(Value::into_owned).collect()),
            Value::BoundedArray {
                lower_bounds,
                elements,
            } => Value::BoundedArray {
                lower_bounds,
                elements: elements.into_iter().map(Value::into_owned).collect(),
            },
            Value::Raw(v) => Value::Raw(v),
            Value::Unavailable => Value::Unavailable,
        }
    }
}

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float32(f) => s.serialize_f32(*f),
            Value::Float64(f) => s.serialize_f64(*f),
            Value::Str(t) => s.serialize_str(t),
            Value::Bin(b) => s.serialize_bytes(b),
            Value::Timestamp(t) => t.serialize(s),
            Value::Interval {
                months,
                days,
                microseconds,
            } => {
                let mut m = s.serialize_map(Some(3))?;
                m.serialize_entry("months", months)?;
                m.serialize_entry("days", days)?;
                m.serialize_entry("microseconds", microseconds)?;
                m.end()
            }
            Value::Json(j) => j.serialize(s),
            Value::BoundedArray {
                lower_bounds,
                elements,
            } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("lower_bounds", lower_bounds)?;
                m.serialize_entry("elements", elements)?;
                m.end()
            }
            Value::Raw(v) => v.serialize(s),
            Value::Unavailable => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(UNAVAILABLE_KEY, "unchanged-toast")?;
                m.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

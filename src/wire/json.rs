//! `json` / `jsonb` values with exact numbers.
//!
//! PostgreSQL keeps a JSON number's digits exactly; a float 64 does not. A JSON value
//! travels as native MessagePack (maps, arrays, strings, booleans, nil) and each
//! number as:
//! - an integer, when it is exactly an i64 or u64;
//! - a float 64, when the shortest text of the nearest float 64 is the same decimal
//!   (`0.1`, `2.5`, `1e30`, `1000000000000000000000000000000`);
//! - otherwise its exact decimal text as a string (`3.141592653589793238462643383279`,
//!   `100000000000000000000000000001`, `1e400`): no digit is lost, and any
//!   MessagePack decoder reads it with default settings.
//!
//! Objects keep their member order; a repeated member keeps its first position and
//! its last value (as `jsonb` does).
//!
//! `number` decides how a number travels; `parse` reads JSON text into a [`Json`].

mod number;
mod parse;

pub use number::{number_form, NumberForm};

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

/// A JSON value whose numbers keep their text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text as PostgreSQL printed it.
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

/// The text was not JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {at}: {what}")]
pub struct JsonError {
    pub at: usize,
    pub what: &'static str,
}

impl Json {
    /// Parse one JSON text (RFC 8259), surrounding white space allowed.
    pub fn parse(text: &str) -> Result<Json, JsonError> {
        parse::parse(text)
    }
    /// An estimate of the memory the value holds.
    pub fn size(&self) -> usize {
        match self {
            Json::Number(s) | Json::String(s) => s.len() + 24,
            Json::Array(a) => a.iter().map(Json::size).sum::<usize>() + 24,
            Json::Object(o) => {
                o.iter()
                    .map(|(k, v)| k.len() + v.size() + 32)
                    .sum::<usize>()
                    + 48
            }
            _ => 16,
        }
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Number(text) => match number_form(text) {
                NumberForm::Int(i) => s.serialize_i64(i),
                NumberForm::UInt(u) => s.serialize_u64(u),
                NumberForm::Float(f) => s.serialize_f64(f),
                NumberForm::Text(t) => s.serialize_str(t),
            },
            Json::String(t) => s.serialize_str(t),
            Json::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Object(members) => {
                let mut m = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

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
        let mut p = Parser {
            b: text.as_bytes(),
            pos: 0,
            depth: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.pos != p.b.len() {
            return Err(p.err("trailing characters"));
        }
        Ok(v)
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

/// How a JSON number travels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumberForm<'a> {
    Int(i64),
    UInt(u64),
    Float(f64),
    /// The exact decimal text.
    Text(&'a str),
}

/// The form a JSON number's text travels in (see the module documentation).
pub fn number_form(text: &str) -> NumberForm<'_> {
    if let Ok(i) = text.parse::<i64>() {
        return NumberForm::Int(i);
    }
    if let Ok(u) = text.parse::<u64>() {
        return NumberForm::UInt(u);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && same_decimal(text, &format!("{f:e}")) => NumberForm::Float(f),
        _ => NumberForm::Text(text),
    }
}

/// Whether two decimal texts denote the same number.
fn same_decimal(a: &str, b: &str) -> bool {
    normalize(a) == normalize(b)
}

/// (negative, significant digits without leading or trailing zeros, exponent of the
/// first digit); zero is `(false, "", 0)`.
fn normalize(text: &str) -> Option<(bool, String, i64)> {
    let (neg, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = int.chars().chain(frac.chars()).collect();
    if !all.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let lead = all.bytes().take_while(|&c| c == b'0').count();
    let digits = all[lead..].trim_end_matches('0');
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    let point = int.len() as i64 - lead as i64 + exp;
    Some((neg, digits.to_string(), point))
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

/// Nesting deeper than this is refused (PostgreSQL's own limit is lower in practice).
const MAX_DEPTH: usize = 1000;

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { at: self.pos, what }
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &'static str, v: Json) -> Result<Json, JsonError> {
        if self.b[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err("unknown literal"))
        }
    }

    fn value(&mut self) -> Result<Json, JsonError> {
        self.ws();
        match self.b.get(self.pos) {
            None => Err(self.err("unexpected end")),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::String),
            Some(b'[') => self.nested(Self::array),
            Some(b'{') => self.nested(Self::object),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Result<Json, JsonError>) -> Result<Json, JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while matches!(p.b.get(p.pos), Some(b'0'..=b'9')) {
                p.pos += 1;
            }
            p.pos > from
        };
        if self.b[self.pos] == b'-' {
            self.pos += 1;
        }
        if self.b.get(self.pos) == Some(&b'0') {
            self.pos += 1;
        } else if !digits(self) {
            return Err(self.err("digit expected"));
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !digits(self) {
                return Err(self.err("digit expected after '.'"));
            }
        }
        if matches!(self.b.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.b.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !digits(self) {
                return Err(self.err("digit expected in the exponent"));
            }
        }
        let text = std::str::from_utf8(&self.b[start..self.pos]).expect("ASCII");
        Ok(Json::Number(text.to_string()))
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .b
            .get(self.pos..self.pos + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| self.err("bad \\u escape"))?;
        self.pos += 4;
        Ok(h)
    }

    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let c = *self
            .b
            .get(self.pos)
            .ok_or_else(|| self.err("unexpected end"))?;
        self.pos += 1;
        match c {
            b'"' => out.push('"'),
            b'\\' => out.push('\\'),
            b'/' => out.push('/'),
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
            b'u' => {
                let mut code = self.hex4()?;
                if (0xD800..0xDC00).contains(&code) && self.b[self.pos..].starts_with(b"\\u") {
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.err("bad surrogate pair"));
                    }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                }
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            _ => return Err(self.err("bad escape")),
        }
        Ok(())
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1; // the opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while !matches!(self.b.get(self.pos), None | Some(b'"' | b'\\')) {
                self.pos += 1;
            }
            let run =
                std::str::from_utf8(&self.b[start..self.pos]).map_err(|_| self.err("not UTF-8"))?;
            out.push_str(run);
            match self.b.get(self.pos) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(_) => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
            }
        }
    }

    /// After `ws()`: consume `close` (then `true`) or a `,` (then `false`).
    fn next_or_close(&mut self, close: u8) -> Result<bool, JsonError> {
        self.ws();
        match self.b.get(self.pos) {
            Some(&c) if c == close => {
                self.pos += 1;
                Ok(true)
            }
            Some(b',') => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(self.err("',' or closing bracket expected")),
        }
    }

    fn array(&mut self) -> Result<Json, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.ws();
        if self.b.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            if self.next_or_close(b']')? {
                return Ok(Json::Array(items));
            }
        }
    }

    fn object(&mut self) -> Result<Json, JsonError> {
        self.pos += 1;
        let mut members: Vec<(String, Json)> = Vec::new();
        self.ws();
        if self.b.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.ws();
            if self.b.get(self.pos) != Some(&b'"') {
                return Err(self.err("member name expected"));
            }
            let name = self.string()?;
            self.ws();
            if self.b.get(self.pos) != Some(&b':') {
                return Err(self.err("':' expected"));
            }
            self.pos += 1;
            let v = self.value()?;
            match members.iter_mut().find(|(k, _)| *k == name) {
                Some(slot) => slot.1 = v,
                None => members.push((name, v)),
            }
            if self.next_or_close(b'}')? {
                return Ok(Json::Object(members));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of `docs/envelope.md` ("Exact JSON numbers").
    #[test]
    fn numbers_travel_exactly() {
        use NumberForm::*;
        for (text, form) in [
            ("42", Int(42)),
            ("-9223372036854775808", Int(i64::MIN)),
            ("18446744073709551615", UInt(u64::MAX)),
            ("0.1", Float(0.1)),
            ("2.5", Float(2.5)),
            ("-0.0", Float(-0.0)),
            ("1e30", Float(1e30)),
            ("1000000000000000000000000000000", Float(1e30)),
            ("1E+300", Float(1e300)),
            (
                "3.141592653589793238462643383279",
                Text("3.141592653589793238462643383279"),
            ),
            (
                "100000000000000000000000000001",
                Text("100000000000000000000000000001"),
            ),
            ("18446744073709551616", Text("18446744073709551616")),
            ("1e400", Text("1e400")),
            ("0.30000000000000004", Float(0.30000000000000004)),
            ("0.3000000000000000444", Text("0.3000000000000000444")),
        ] {
            assert_eq!(number_form(text), form, "{text}");
        }
    }

    /// The table in docs/envelope.md says the same as `number_form`.
    #[test]
    fn documentation_lists_the_same_forms() {
        let doc = include_str!("../../docs/envelope.md");
        let section = doc
            .split("### Exact JSON numbers")
            .nth(1)
            .and_then(|s| s.split("###").next())
            .expect("the section");
        let mut checked = 0;
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let form = cells[2];
            for number in cells[1].split('`').skip(1).step_by(2) {
                let got = match number_form(number) {
                    NumberForm::Int(_) | NumberForm::UInt(_) => "int",
                    NumberForm::Float(_) => "float 64",
                    NumberForm::Text(t) if t == number => "str (the text as written)",
                    NumberForm::Text(_) => "str, altered",
                };
                assert_eq!(got, form, "{number}");
                checked += 1;
            }
        }
        assert!(checked >= 15, "only {checked} numbers in the documentation");
    }

    #[test]
    fn parses_what_postgres_prints_and_refuses_the_rest() {
        let v = Json::parse(
            r#" {"a": [1, 2.5e3, null, true], "b": "x\"\u00e9\ud83d\ude00", "a": {}} "#,
        )
        .unwrap();
        assert_eq!(
            v,
            Json::Object(vec![
                ("a".into(), Json::Object(vec![])),
                ("b".into(), Json::String("x\"é😀".into())),
            ])
        );
        assert_eq!(Json::parse("[]").unwrap(), Json::Array(vec![]));
        for bad in [
            "",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            "\"abc",
            "[1] x",
            "nul",
            "{1:2}",
        ] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(Json::parse(&deep).is_err());
    }
}

//! Value parsers: PostgreSQL's text output turned into the typed values the envelope
//! carries ([`crate::wire::Value`]).
//!
//! The replication session is started with `DateStyle=ISO`, `IntervalStyle=iso_8601`,
//! `TimeZone=UTC`, `extra_float_digits=3` and `bytea_output=hex`, so the text forms
//! parsed here are fixed whatever the server's defaults are.

use std::borrow::Cow;

use super::types::TypeKind;
use crate::wire::timestamp::days_from_civil;
use crate::wire::{Json, Timestamp, Value};

/// A column value could not be read in its type's text form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot decode {text:?} as {kind}: {reason}")]
pub struct ValueError {
    pub kind: &'static str,
    pub text: String,
    pub reason: &'static str,
}

fn bad(kind: &'static str, text: &[u8], reason: &'static str) -> ValueError {
    ValueError {
        kind,
        text: String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned(),
        reason,
    }
}

fn utf8<'a>(kind: &'static str, text: &'a [u8]) -> Result<&'a str, ValueError> {
    std::str::from_utf8(text).map_err(|_| bad(kind, text, "not UTF-8"))
}

/// Turn one column's text form into its typed value.
pub fn parse_text<'a>(kind: &TypeKind, text: &'a [u8]) -> Result<Value<'a>, ValueError> {
    Ok(match kind {
        TypeKind::Bool => match text {
            b"t" => Value::Bool(true),
            b"f" => Value::Bool(false),
            _ => return Err(bad("bool", text, "expected t or f")),
        },
        TypeKind::Int => Value::Int(
            utf8("integer", text)?
                .parse()
                .map_err(|_| bad("integer", text, "not an integer"))?,
        ),
        TypeKind::Float4 => Value::Float32(parse_float("float4", text)? as f32),
        TypeKind::Float8 => Value::Float64(parse_float("float8", text)?),
        TypeKind::Numeric => {
            let s = utf8("numeric", text)?;
            let ok = matches!(s, "NaN" | "Infinity" | "-Infinity")
                || (!s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'e'));
            if !ok {
                return Err(bad("numeric", text, "not a decimal number"));
            }
            Value::Str(Cow::Borrowed(s))
        }
        TypeKind::Text | TypeKind::Date | TypeKind::Time | TypeKind::TimeTz => {
            Value::Str(Cow::Borrowed(utf8("text", text)?))
        }
        TypeKind::Uuid => {
            let s = utf8("uuid", text)?;
            if s.len() != 36 || !s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                return Err(bad("uuid", text, "not a canonical UUID"));
            }
            Value::Str(Cow::Borrowed(s))
        }
        TypeKind::Bytea => Value::Bin(parse_bytea_hex(text)?),
        TypeKind::Json => Value::Json(
            Json::parse(utf8("json", text)?).map_err(|_| bad("json", text, "not valid JSON"))?,
        ),
        TypeKind::Timestamp => Value::Timestamp(parse_timestamp("timestamp", text)?),
        TypeKind::TimestampTz => Value::Timestamp(parse_timestamp("timestamptz", text)?),
        TypeKind::Interval => parse_interval(text)?,
        TypeKind::Array { element, delimiter } => parse_array(element, *delimiter, text)?,
    })
}

fn parse_float(kind: &'static str, text: &[u8]) -> Result<f64, ValueError> {
    Ok(match text {
        b"NaN" => f64::NAN,
        b"Infinity" => f64::INFINITY,
        b"-Infinity" => f64::NEG_INFINITY,
        _ => utf8(kind, text)?
            .parse()
            .map_err(|_| bad(kind, text, "not a float"))?,
    })
}

fn parse_bytea_hex(text: &[u8]) -> Result<Vec<u8>, ValueError> {
    let hex = text
        .strip_prefix(b"\\x")
        .ok_or_else(|| bad("bytea", text, "expected hex format (\\x...)"))?;
    if hex.len() % 2 != 0 {
        return Err(bad("bytea", text, "odd number of hex digits"));
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    hex.chunks_exact(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| bad("bytea", text, "not a hex digit"))
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]`, or `infinity` / `-infinity`.
fn parse_timestamp(kind: &'static str, text: &[u8]) -> Result<Timestamp, ValueError> {
    let s = utf8(kind, text)?;
    match s {
        "infinity" => return Ok(Timestamp::INFINITY),
        "-infinity" => return Ok(Timestamp::NEG_INFINITY),
        _ => {}
    }
    let err = |reason| bad(kind, text, reason);
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let (date, time) = s.split_once(' ').ok_or_else(|| err("no time part"))?;
    let (y, mo, d) = timestamp_date(date, bc).ok_or_else(|| err("bad date"))?;
    let (clock, offset_secs) = split_utc_offset(time).map_err(err)?;
    let (h, mi, whole, nanos) = clock_time(clock).map_err(err)?;
    let seconds = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + whole - offset_secs;
    Ok(Timestamp { seconds, nanos })
}

/// `YYYY-MM-DD` as (year, month, day); a BC year `y` is the proleptic year `1 - y`.
fn timestamp_date(date: &str, bc: bool) -> Option<(i64, i64, i64)> {
    let mut dp = date.splitn(3, '-');
    let y = dp.next().and_then(digits)?;
    let mo = dp.next().and_then(digits)?;
    let d = dp.next().and_then(digits)?;
    Some((if bc { 1 - y } else { y }, mo, d))
}

/// Split a trailing UTC offset (`+HH[:MM[:SS]]` or `-...`) off the time: the clock
/// text and the offset in seconds (0 when there is none).
fn split_utc_offset(time: &str) -> Result<(&str, i64), &'static str> {
    let Some(i) = time.find(['+', '-']) else {
        return Ok((time, 0));
    };
    let (clock, off) = time.split_at(i);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let mut parts = off[1..].split(':');
    let h = parts.next().and_then(digits).ok_or("bad offset")?;
    let m = parts.next().map(digits).unwrap_or(Some(0));
    let sec = parts.next().map(digits).unwrap_or(Some(0));
    let (Some(m), Some(sec)) = (m, sec) else {
        return Err("bad offset");
    };
    Ok((clock, sign * (h * 3600 + m * 60 + sec)))
}

/// `HH:MM:SS[.fffffffff]` as (hours, minutes, whole seconds, nanoseconds).
fn clock_time(clock: &str) -> Result<(i64, i64, i64, u32), &'static str> {
    let mut cp = clock.splitn(3, ':');
    let (h, mi, sec) = (
        cp.next().and_then(digits),
        cp.next().and_then(digits),
        cp.next(),
    );
    let (Some(h), Some(mi), Some(sec)) = (h, mi, sec) else {
        return Err("bad time");
    };
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole = digits(whole).ok_or("bad seconds")?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("bad fraction");
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        frac.parse::<u32>().unwrap() * 10u32.pow(9 - frac.len() as u32)
    };
    Ok((h, mi, whole, nanos))
}

/// ISO 8601 durations as `IntervalStyle=iso_8601` prints them: `P1Y2M3DT4H5M6.5S`,
/// with a sign on any field (`P-1Y2M`, `PT-0.5S`) and `PT0S` for zero.
fn parse_interval(text: &[u8]) -> Result<Value<'static>, ValueError> {
    let s = utf8("interval", text)?;
    let err = |reason| bad("interval", text, reason);
    let body = s
        .strip_prefix('P')
        .ok_or_else(|| err("expected ISO 8601 (P...)"))?;
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut in_time = false;
    let mut rest = body;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('T') {
            in_time = true;
            rest = r;
            continue;
        }
        let end = rest
            .find(|c: char| c.is_ascii_alphabetic())
            .ok_or_else(|| err("number without unit"))?;
        let (num, unit) = (&rest[..end], rest.as_bytes()[end]);
        rest = &rest[end + 1..];
        let (neg, mag) = match num.strip_prefix('-') {
            Some(m) => (true, m),
            None => (false, num),
        };
        let sign = if neg { -1 } else { 1 };
        if unit == b'S' && in_time {
            let (w, f) = mag.split_once('.').unwrap_or((mag, ""));
            let w = digits(w).ok_or_else(|| err("bad seconds"))?;
            if f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("bad fraction"));
            }
            let f = if f.is_empty() {
                0
            } else {
                f.parse::<i64>().unwrap() * 10i64.pow(6 - f.len() as u32)
            };
            micros += sign * (w * 1_000_000 + f);
            continue;
        }
        let n = sign * digits(mag).ok_or_else(|| err("bad number"))?;
        match (in_time, unit) {
            (false, b'Y') => months += n * 12,
            (false, b'M') => months += n,
            (false, b'W') => days += n * 7,
            (false, b'D') => days += n,
            (true, b'H') => micros += n * 3_600_000_000,
            (true, b'M') => micros += n * 60_000_000,
            _ => return Err(err("unknown unit")),
        }
    }
    Ok(Value::Interval {
        months: i32::try_from(months).map_err(|_| err("months out of range"))?,
        days: i32::try_from(days).map_err(|_| err("days out of range"))?,
        microseconds: micros,
    })
}

/// PostgreSQL's array text form: `{1,NULL,"a \"b\""}`, nested braces for more
/// dimensions, an optional `[lo:hi]=` bounds prefix (dropped: elements keep their
/// order, the lower bound is not carried).
fn parse_array<'a>(
    element: &TypeKind,
    delimiter: u8,
    text: &'a [u8],
) -> Result<Value<'a>, ValueError> {
    let mut pos = 0;
    let mut lower_bounds = Vec::new();
    if text.first() == Some(&b'[') {
        pos = text
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("array", text, "bounds without '='"))?
            + 1;
        lower_bounds = parse_lower_bounds(&text[..pos - 1])
            .ok_or_else(|| bad("array", text, "bad dimension bounds"))?;
    }
    let mut parser = ArrayParser {
        text,
        pos,
        element,
        delimiter,
    };
    let v = parser.parse_level(0)?;
    if parser.pos != text.len() {
        return Err(bad("array", text, "trailing characters"));
    }
    if lower_bounds.is_empty() {
        return Ok(v);
    }
    match v {
        Value::Array(elements) => Ok(Value::BoundedArray {
            lower_bounds,
            elements,
        }),
        _ => Err(bad("array", text, "bounds on a non-array")),
    }
}

/// `[0:1][2:3]` (PostgreSQL prints bounds only when one is not 1): the lower bounds.
fn parse_lower_bounds(text: &[u8]) -> Option<Vec<i64>> {
    let text = std::str::from_utf8(text).ok()?;
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .split("][")
        .map(|dim| {
            let (lower, upper) = dim.split_once(':')?;
            upper.parse::<i64>().ok()?;
            lower.parse().ok()
        })
        .collect()
}

struct ArrayParser<'a, 'k> {
    text: &'a [u8],
    pos: usize,
    element: &'k TypeKind,
    delimiter: u8,
}

impl<'a> ArrayParser<'a, '_> {
    fn err(&self, reason: &'static str) -> ValueError {
        bad("array", self.text, reason)
    }

    fn skip_ws(&mut self) {
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn parse_level(&mut self, depth: usize) -> Result<Value<'a>, ValueError> {
        if depth > 6 {
            return Err(self.err("more than 6 dimensions"));
        }
        self.skip_ws();
        if self.text.get(self.pos) != Some(&b'{') {
            return Err(self.err("expected '{'"));
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.text.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            match self.text.get(self.pos) {
                Some(b'{') => items.push(self.parse_level(depth + 1)?),
                Some(b'"') => {
                    let s = self.quoted()?;
                    items.push(self.element_value(s)?);
                }
                Some(_) => {
                    let start = self.pos;
                    while self.pos < self.text.len()
                        && self.text[self.pos] != self.delimiter
                        && self.text[self.pos] != b'}'
                    {
                        self.pos += 1;
                    }
                    let raw = self.text[start..self.pos].trim_ascii_end();
                    if raw.eq_ignore_ascii_case(b"NULL") {
                        items.push(Value::Null);
                    } else {
                        items.push(self.element_value(Cow::Borrowed(raw))?);
                    }
                }
                None => return Err(self.err("unterminated array")),
            }
            self.skip_ws();
            match self.text.get(self.pos) {
                Some(&c) if c == self.delimiter => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.err("expected delimiter or '}'")),
            }
        }
    }

    fn quoted(&mut self) -> Result<Cow<'a, [u8]>, ValueError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        let mut owned: Option<Vec<u8>> = None;
        while let Some(&c) = self.text.get(self.pos) {
            match c {
                b'"' => {
                    let out = match owned {
                        Some(v) => Cow::Owned(v),
                        None => Cow::Borrowed(&self.text[start..self.pos]),
                    };
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    let buf = owned.get_or_insert_with(|| self.text[start..self.pos].to_vec());
                    let next = *self
                        .text
                        .get(self.pos + 1)
                        .ok_or_else(|| self.err("dangling escape"))?;
                    buf.push(next);
                    self.pos += 2;
                }
                _ => {
                    if let Some(buf) = owned.as_mut() {
                        buf.push(c);
                    }
                    self.pos += 1;
                }
            }
        }
        Err(self.err("unterminated quoted element"))
    }

    fn element_value(&self, raw: Cow<'a, [u8]>) -> Result<Value<'a>, ValueError> {
        match raw {
            Cow::Borrowed(b) => parse_text(self.element, b),
            Cow::Owned(v) => parse_text(self.element, &v).map(Value::into_owned),
        }
    }
}

#[cfg(test)]
mod tests;

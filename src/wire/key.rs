//! Canonical row keys and the NATS subject tokens derived from them.
//!
//! **Key** (the envelope's `key` field): `<schema>.<table>:<v1>[,<v2>...]`, where the
//! values are the primary-key columns' text forms in key order. Inside each part, `%`,
//! `.`, `:` and `,` are percent-escaped (`%25`, `%2E`, `%3A`, `%2C`), so the key splits
//! back into schema, table and values unambiguously. Example: `public.users:42`,
//! `shop.order_items:17,3`.
//!
//! **Subject token**: every byte outside `[A-Za-z0-9_-]` becomes `~` followed by two
//! upper-case hex digits; an empty part is `~_`; the key's values are joined with `,`.
//! The result never contains `.`, `*`, `>`, whitespace or control bytes and is never
//! empty, so it is always one valid NATS token. A key token longer than
//! [`MAX_TOKEN_LEN`] bytes is replaced by `~H` and the SHA-256 of the full token in hex
//! (the envelope still carries the full key). Tokens that start with `~` followed by a
//! letter other than `H` (such as `~truncate`) can never be produced by a key.

use sha2::{Digest, Sha256};

/// Longest key token published as is; longer ones are hashed.
pub const MAX_TOKEN_LEN: usize = 200;

/// The subject token of table-level truncate events.
pub const TRUNCATE_TOKEN: &str = "~truncate";

/// A key, subject or token could not be parsed back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key {0:?} is not of the form <schema>.<table>:<values>")]
    BadKey(String),
    #[error("bad escape in {0:?}")]
    BadEscape(String),
    #[error("token {0:?} is a hashed long key: the subject alone cannot be reversed")]
    Hashed(String),
}

fn push_key_part(out: &mut String, part: &str) {
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            ':' => out.push_str("%3A"),
            ',' => out.push_str("%2C"),
            c => out.push(c),
        }
    }
}

fn unescape_key_part(part: &str) -> Result<String, KeyError> {
    let mut out = Vec::with_capacity(part.len());
    let b = part.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = part
                .get(i + 1..i + 3)
                .ok_or_else(|| KeyError::BadEscape(part.into()))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| KeyError::BadEscape(part.into()))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| KeyError::BadEscape(part.into()))
}

/// `<schema>.<table>:` with both names escaped: the prefix every key of a table shares.
pub fn table_key_prefix(schema: &str, table: &str) -> String {
    let mut out = String::with_capacity(schema.len() + table.len() + 2);
    push_key_part(&mut out, schema);
    out.push('.');
    push_key_part(&mut out, table);
    out.push(':');
    out
}

/// Append one primary-key value to a key under construction (after the prefix).
pub fn push_key_value(key: &mut String, first: bool, value: &str) {
    if !first {
        key.push(',');
    }
    push_key_part(key, value);
}

/// Build the canonical key of a row.
pub fn make_key<'v>(
    schema: &str,
    table: &str,
    values: impl IntoIterator<Item = &'v str>,
) -> String {
    let mut key = table_key_prefix(schema, table);
    for (i, v) in values.into_iter().enumerate() {
        push_key_value(&mut key, i == 0, v);
    }
    key
}

/// A key split back into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    pub schema: String,
    pub table: String,
    pub values: Vec<String>,
}

/// Split a canonical key into schema, table and primary-key values.
pub fn parse_key(key: &str) -> Result<ParsedKey, KeyError> {
    let bad = || KeyError::BadKey(key.into());
    let (table_part, values) = key.split_once(':').ok_or_else(bad)?;
    let (schema, table) = table_part.split_once('.').ok_or_else(bad)?;
    Ok(ParsedKey {
        schema: unescape_key_part(schema)?,
        table: unescape_key_part(table)?,
        values: values
            .split(',')
            .map(unescape_key_part)
            .collect::<Result<_, _>>()?,
    })
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_token_part(out: &mut String, part: &str) {
    if part.is_empty() {
        out.push_str("~_");
        return;
    }
    for &b in part.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push('~');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// The subject token of a schema or table name.
pub fn name_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    push_token_part(&mut out, name);
    out
}

/// The subject token of a row's primary-key values.
pub fn key_token<'v>(values: impl IntoIterator<Item = &'v str>) -> String {
    let mut out = String::new();
    push_key_token(&mut out, values);
    out
}

/// Append the subject token of a row's primary-key values to `out` (a subject under
/// construction): one buffer for the whole subject.
pub fn push_key_token<'v>(out: &mut String, values: impl IntoIterator<Item = &'v str>) {
    let start = out.len();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_token_part(out, v);
    }
    if out.len() - start > MAX_TOKEN_LEN {
        let digest = Sha256::digest(&out.as_bytes()[start..]);
        out.truncate(start);
        out.push_str("~H");
        for b in digest {
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

fn unescape_token_part(part: &str) -> Result<String, KeyError> {
    if part == "~_" {
        return Ok(String::new());
    }
    let bad = || KeyError::BadEscape(part.into());
    let b = part.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'~' => {
                let hex = part.get(i + 1..i + 3).ok_or_else(bad)?;
                if !hex
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
                {
                    return Err(bad());
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' => {
                out.push(c);
                i += 1;
            }
            _ => return Err(bad()),
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// A schema or table name back from its token.
pub fn parse_name_token(token: &str) -> Result<String, KeyError> {
    unescape_token_part(token)
}

/// Primary-key values back from a key token.
pub fn parse_key_token(token: &str) -> Result<Vec<String>, KeyError> {
    if token.starts_with("~H") && token.len() == 66 {
        return Err(KeyError::Hashed(token.into()));
    }
    token.split(',').map(unescape_token_part).collect()
}

/// The subject of a key: `<prefix>.<schema token>.<table token>.<key token>`.
pub fn subject_for_key(prefix: &str, key: &str) -> Result<String, KeyError> {
    let k = parse_key(key)?;
    Ok(format!(
        "{prefix}.{}.{}.{}",
        name_token(&k.schema),
        name_token(&k.table),
        key_token(k.values.iter().map(String::as_str))
    ))
}

/// The subject walcast answers refetch requests on (column mode: the row's current
/// envelope, read from the table): `<prefix>_refetch`, beside the envelope subjects
/// so that the stream over `<prefix>.>` never captures a request.
pub fn refetch_subject(prefix: &str) -> String {
    format!("{prefix}_refetch")
}

/// The header of a refetch reply that carries no envelope: [`REFETCH_NOT_FOUND`] or
/// why walcast cannot answer.
pub const REFETCH_ERROR_HEADER: &str = "Walcast-Error";
/// The [`REFETCH_ERROR_HEADER`] of a key without a row (deleted or never inserted).
pub const REFETCH_NOT_FOUND: &str = "not-found";

/// The wildcard subject of every key of one table.
pub fn subject_for_table(prefix: &str, schema: &str, table: &str) -> String {
    format!("{prefix}.{}.{}.*", name_token(schema), name_token(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_nats_token(t: &str) -> bool {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'*' && b != b'>')
    }

    #[test]
    fn keys_round_trip_with_awkward_characters() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("public", "users", &["42"]),
            ("my.schema", "ta:ble", &["a.b", "c,d", "e%f", ""]),
            ("public", "t", &["*", ">", " spaced out ", "tab\tnew\nline"]),
            ("s", "t", &["ünïcödé ✓"]),
        ];
        for (schema, table, values) in cases {
            let key = make_key(schema, table, values.iter().copied());
            let parsed = parse_key(&key).unwrap();
            assert_eq!(parsed.schema, *schema);
            assert_eq!(parsed.table, *table);
            assert_eq!(parsed.values, *values);

            let token = key_token(values.iter().copied());
            assert!(valid_nats_token(&token), "{token}");
            assert_eq!(parse_key_token(&token).unwrap(), *values);
            for name in [schema, table] {
                let t = name_token(name);
                assert!(valid_nats_token(&t), "{t}");
                assert_eq!(parse_name_token(&t).unwrap(), *name);
            }
            let subject = subject_for_key("walcast", &key).unwrap();
            assert_eq!(subject.split('.').count(), 4, "{subject}");
        }
        assert_eq!(make_key("public", "users", ["42"]), "public.users:42");
        assert_eq!(key_token(["a b", "c.d"]), "a~20b,c~2Ed");
        assert_eq!(key_token([""]), "~_");
    }

    #[test]
    fn long_keys_hash_to_a_fixed_token() {
        let long = "x".repeat(1000);
        let token = key_token([long.as_str()]);
        assert_eq!(token.len(), 66);
        assert!(valid_nats_token(&token));
        assert_eq!(token, key_token([long.as_str()]));
        assert_ne!(token, key_token([&long[1..]]));
        assert!(matches!(parse_key_token(&token), Err(KeyError::Hashed(_))));
        assert_eq!(
            key_token(["x".repeat(MAX_TOKEN_LEN).as_str()]).len(),
            MAX_TOKEN_LEN
        );
    }

    #[test]
    fn truncate_token_cannot_collide_with_a_key() {
        assert!(parse_key_token(TRUNCATE_TOKEN).is_err());
        assert!(parse_key("no-colon").is_err());
        assert!(parse_key_token("a~zz").is_err());
        assert!(parse_key_token("a.b").is_err());
    }
}

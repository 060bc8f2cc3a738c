//! Hostile input: the entry points the fuzzers drive (`fuzz/`, `make fuzz`, with the
//! nightly toolchain) and the stable property tests run for seconds in `make test`.
//! Each takes arbitrary bytes and must return without panicking; where the input is
//! accepted, the output is checked (a re-encoded envelope decodes to the same value, a
//! key's subject is one valid literal token per part and reverses to the key).

use crate::decode::pgoutput;
use crate::decode::types::TypeKind;
use crate::decode::value::parse_text;
use crate::wire::key::{key_token, name_token, parse_key_token, parse_name_token, MAX_TOKEN_LEN};
use crate::wire::{codec, Json};

/// A pgoutput message from the replication stream.
pub fn pgoutput_message(data: &[u8]) {
    let _ = pgoutput::parse(data);
}

/// The kinds a column value is parsed as; the first input byte picks one.
fn kind_of(selector: u8) -> TypeKind {
    let scalar = [
        TypeKind::Bool,
        TypeKind::Int,
        TypeKind::Float4,
        TypeKind::Float8,
        TypeKind::Numeric,
        TypeKind::Text,
        TypeKind::Bytea,
        TypeKind::Uuid,
        TypeKind::Json,
        TypeKind::Timestamp,
        TypeKind::TimestampTz,
        TypeKind::Date,
        TypeKind::Time,
        TypeKind::TimeTz,
        TypeKind::Interval,
    ];
    let base = scalar[usize::from(selector) % scalar.len()].clone();
    if selector >= 128 {
        TypeKind::Array {
            element: Box::new(base),
            delimiter: if selector & 1 == 0 { b',' } else { b';' },
        }
    } else {
        base
    }
}

/// A column value in PostgreSQL's text form (first byte: the type); an accepted
/// value must encode.
pub fn column_value(data: &[u8]) {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    if let Ok(v) = parse_text(&kind_of(selector), text) {
        let mut out = Vec::new();
        let mut ser = rmp_serde::Serializer::new(&mut out);
        serde::Serialize::serialize(&v, &mut ser).expect("a parsed value encodes");
    }
}

/// An envelope as a consumer receives it; an accepted one re-encodes to bytes that
/// decode to the same envelope.
pub fn envelope_bytes(data: &[u8]) {
    if let Ok(env) = codec::decode(data) {
        let again = codec::decode(&env.to_bytes()).expect("a re-encoded envelope decodes");
        assert_eq!(again.key, env.key);
        assert_eq!(again.sequence, env.sequence);
        assert_eq!(again.commit_ts, env.commit_ts);
    }
}

/// A `json`/`jsonb` text; an accepted value encodes.
pub fn json_text(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(j) = Json::parse(text) {
            let mut out = Vec::new();
            let mut ser = rmp_serde::Serializer::new(&mut out);
            serde::Serialize::serialize(&j, &mut ser).expect("parsed JSON encodes");
        }
    }
}

/// Key values (split at byte 0xFF) and a table name as a row would give them: the
/// subject tokens are single literal NATS tokens that reverse to the values.
pub fn key_subject(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{FFFD}');
    let table = parts.next().unwrap_or_default();
    let values: Vec<&str> = parts.collect();
    let values = if values.is_empty() { vec![""] } else { values };
    let token = key_token(values.iter().copied());
    let name = name_token(table);
    for t in [&token, &name] {
        assert!(!t.is_empty(), "empty token");
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'~' | b',')),
            "{t:?} has a byte outside the token alphabet"
        );
    }
    assert_eq!(parse_name_token(&name).as_deref(), Ok(table));
    // A token too long to publish is replaced by its hash (`~H…`, which escaping
    // never produces); any other reverses to the values.
    if token.starts_with("~H") {
        assert!(token.len() < MAX_TOKEN_LEN, "{token}");
        assert!(parse_key_token(&token).is_err(), "{token}");
    } else {
        assert!(token.len() <= MAX_TOKEN_LEN, "{token}");
        let back = parse_key_token(&token).expect("a token reverses");
        assert_eq!(back, values, "{token}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic random source.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Random bytes, biased towards the bytes the formats care about.
        fn bytes(&mut self, alphabet: &[u8]) -> Vec<u8> {
            let len = (self.next() % 64) as usize;
            (0..len)
                .map(|_| {
                    let r = self.next();
                    if r.is_multiple_of(4) {
                        (r >> 8) as u8
                    } else {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    }
                })
                .collect()
        }
    }

    /// Each target over 100,000 generated inputs and mutations of valid ones (the
    /// long runs are `make fuzz`).
    #[test]
    fn hostile_input_never_panics() {
        let mut rng = Rng(0x0DDB_1A5E_5BAD_5EED);
        let text_alphabet = b"{}[]\\\",:;.-+eE0123456789 tfnulNaIyx:T\x00\xff\xc3(";
        let wire_alphabet =
            b"\x80\x81\x87\x90\x91\xa1\xa3\xc0\xc4\xc7\xcb\xcf\xd7\xd9\xdc\xde\xff\x00BCIUDRT";
        let valid_envelope = crate::wire::Envelope {
            key: "public.t:1".into(),
            op: crate::wire::Op::Update,
            value: rmpv::Value::Map(vec![("id".into(), 1.into())]),
            schema_version: "1.0".into(),
            sequence: 7,
            lsn: 42,
            commit_ts: crate::wire::Timestamp::INFINITY,
            xid: Some(750),
            tx_index: Some(0),
            before: None,
            compression: None,
            key_id: None,
        }
        .to_bytes();
        for i in 0..100_000u32 {
            let mut data = rng.bytes(wire_alphabet);
            pgoutput_message(&data);
            if i % 2 == 0 {
                data = valid_envelope.clone();
                let at = (rng.next() as usize) % data.len();
                data[at] = rng.next() as u8;
                data.truncate((rng.next() as usize) % (data.len() + 1));
            }
            envelope_bytes(&data);
            let text = rng.bytes(text_alphabet);
            column_value(&text);
            json_text(&text[1.min(text.len())..]);
            key_subject(&rng.bytes(b".*> \t\n~%,:_-aZ9\xff\xfe\xc3\x80"));
        }
    }
}

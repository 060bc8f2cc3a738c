//! The wire format's test vectors (printed in docs/envelope.md) and decoding errors.

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
        xid: None,
        tx_index: None,
        before: None,
        compression: None,
        key_id: None,
        sealed_columns: None,
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
        xid: None,
        tx_index: None,
        before: None,
        compression: None,
        key_id: None,
        sealed_columns: None,
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

/// The optional fields: an update of a `REPLICA IDENTITY FULL` table, with the row
/// before it, its transaction's id and its index in the transaction.
#[test]
fn optional_fields_vector() {
    let columns = [col("id"), col("name")];
    let (new, old) = (
        [Value::Int(42), Value::Str("Ada".into())],
        [Value::Int(42), Value::Str("Ad".into())],
    );
    let row = |values| RowRef {
        columns: &columns,
        values,
        published: None,
    };
    let update = EnvelopeRef {
        key: "public.users:42",
        op: Op::Update,
        value: Some(row(&new)),
        schema_version: "1.0",
        sequence: 2,
        lsn: 0x16B374D848,
        commit_ts: Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_000,
        },
        xid: Some(750),
        tx_index: Some(3),
        before: Some(row(&old)),
        compression: None,
        key_id: None,
        sealed_columns: None,
    };
    let bytes = encode(&update).unwrap();
    assert_eq!(
        hex(&bytes),
        "8aa36b6579af7075626c69632e75736572733a3432a26f70a6757064617465a576616c756582a269\
         642aa46e616d65a3416461ae736368656d615f76657273696f6ea3312e30a873657175656e636502\
         a36c736ecf00000016b374d848a9636f6d6d69745f7473d7ff1d6f28006553f100a3786964cd02ee\
         a874785f696e64657803a66265666f726582a269642aa46e616d65a24164"
    );
    let back = decode(&bytes).unwrap();
    assert_eq!((back.xid, back.tx_index), (Some(750), Some(3)));
    let before = back.before.as_ref().and_then(|b| b.as_map()).unwrap();
    assert_eq!(before[1].1.as_str(), Some("Ad"));
    assert_eq!(back.to_bytes(), bytes);
    // Absent fields stay absent: a reader of the seven fields sees no difference.
    let plain = decode(&hex_bytes(INSERT_VECTOR)).unwrap();
    assert_eq!(
        (plain.xid, plain.tx_index, plain.before),
        (None, None, None)
    );
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

const INSERT_VECTOR: &str = "87a36b6579af7075626c69632e75736572733a3432a26f70a6696e73657274a576616c756584a269642aa46e616d65a3416461a573636f7265cb7ff8000000000000a47461677392a161c0ae736368656d615f76657273696f6ea3312e30a873657175656e636501a36c736ecf00000016b374d848a9636f6d6d69745f7473d7ff1d6f28006553f100";

#[test]
fn documentation_carries_the_same_vectors() {
    let doc = include_str!("../../../docs/envelope.md");
    let source = include_str!("tests.rs");
    // Every hex vector asserted above appears verbatim in the documentation.
    let vectors: Vec<String> = source
        .split("assert_eq!(\n        hex(&bytes),\n        \"")
        .skip(1)
        .map(|rest| {
            rest.split("\"\n    );")
                .next()
                .unwrap()
                .replace(['\\', '\n', ' '], "")
        })
        .collect();
    assert_eq!(vectors.len(), 3);
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
    // An optional field of the wrong type is an error, not silently dropped.
    let mut bad = hex_bytes(INSERT_VECTOR);
    bad[0] = 0x88;
    bad.extend_from_slice(b"\xa3xid\xa1x");
    assert!(matches!(
        decode(&bad),
        Err(DecodeEnvelopeError::Field("xid"))
    ));
}

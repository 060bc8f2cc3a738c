use super::*;
use crate::wire::codec::{self, EnvelopeRef, Op};
use crate::wire::Timestamp;

/// The documented test key ring (docs/vectors/sealed.json): `k1` = bytes 0..31,
/// `k2` = bytes 32..63.
pub(crate) const TEST_RING: &str = "k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\nk2:202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

fn ring() -> Keyring {
    Keyring::parse(TEST_RING).unwrap()
}

#[test]
fn the_ring_reads_oldest_first_and_never_shows_material() {
    let ring = ring();
    assert_eq!(ring.ids(), vec!["k1", "k2"]);
    assert_eq!(ring.newest().unwrap().id(), "k2");
    let shown = format!("{ring:?}");
    assert!(
        shown.contains("k1") && !shown.contains("0001020304"),
        "{shown}"
    );
    let secret = "abcdef0123456789abcdef0123456789abcdef0123456789abcdef012345678";
    for bad in [
        format!("k1:{secret}"),                           // 63 digits
        format!("k1 {secret}0"),                          // no colon
        format!("k1:{secret}0\nk1:{secret}0"),            // twice
        format!("k/1:{secret}0"),                         // bad id
        format!("k1:{}", secret.replace('a', "z")) + "0", // not hex
    ] {
        let e = Keyring::parse(&bad).unwrap_err().to_string();
        assert!(!e.contains("abcdef0123"), "the error shows the key: {e}");
        assert!(e.contains("line"), "{e}");
    }
    assert!(Keyring::parse("# only a comment\n\n").is_err());
}

#[test]
fn sealed_rows_open_only_with_their_key_and_associated_data() {
    let ring = ring();
    let k2 = ring.get("k2").unwrap();
    let row = RowOf {
        key: "public.users:42",
        op: "insert",
        sequence: 1,
        field: Field::Value,
    };
    let plain = rmp_serde::to_vec(&("a", 1)).unwrap();
    let sealed = seal_row(&plain, true, Some(k2), row);
    let sealing = Sealing {
        compression: Some(ZSTD),
        key_id: Some("k2"),
        columns: None,
    };
    let open = |s: Sealing<'_>, r: RowOf<'_>, keys: Option<&Keyring>| {
        open_row(rmpv::Value::Binary(sealed.clone()), s, r, keys)
    };
    assert!(open(sealing, row, Some(&ring)).is_ok());
    // Moved to another sequence, op, key, field or key id: it does not authenticate.
    for moved in [
        RowOf { sequence: 2, ..row },
        RowOf {
            op: "update",
            ..row
        },
        RowOf {
            key: "public.users:43",
            ..row
        },
        RowOf {
            field: Field::Before,
            ..row
        },
    ] {
        let e = open(sealing, moved, Some(&ring)).unwrap_err();
        assert!(matches!(e, SealError::Authentication { .. }), "{e}");
    }
    let as_k1 = Sealing {
        key_id: Some("k1"),
        ..sealing
    };
    assert!(matches!(
        open(as_k1, row, Some(&ring)),
        Err(SealError::Authentication { .. })
    ));
    let e = open(sealing, row, None).unwrap_err().to_string();
    assert!(
        e.contains("\"k2\"") && e.contains("no encryption keys"),
        "{e}"
    );
    let only_k1 = Keyring::new(vec![ring.get("k1").unwrap().clone()]);
    let e = open(sealing, row, Some(&only_k1)).unwrap_err().to_string();
    assert!(
        e.contains("not in this consumer's key ring (it has: k1)"),
        "{e}"
    );
    // Two seals of the same row differ (a fresh nonce each).
    assert_ne!(
        seal_row(&plain, false, Some(k2), row),
        seal_row(&plain, false, Some(k2), row)
    );
}

#[test]
fn inflating_is_bounded() {
    let frame = compress(&vec![0u8; MAX_INFLATED + 1]);
    assert!(frame.len() < 64 * 1024);
    assert!(decompress(&frame).unwrap_err().contains("more than"));
    assert_eq!(decompress(&compress(b"abc")).unwrap(), b"abc");
}

/// The envelopes of docs/vectors/sealed.json, built with fixed nonces (run with
/// `--ignored --nocapture` to print them; the file's vectors are checked by
/// tests/wire_vectors.rs and the TypeScript kit).
#[test]
#[ignore]
fn print_sealed_vectors() {
    let ring = ring();
    let body = "walcast ".repeat(40);
    let docs = |body: &str| rmp_serde::to_vec(&serde_json::json!({"id": 1, "body": body})).unwrap();
    let users =
        rmp_serde::to_vec(&serde_json::json!({"id": 42, "name": "Ada", "ssn": "078-05-1120"}))
            .unwrap();
    let envelope = |key: &'static str,
                    op: Op,
                    sequence: u64,
                    rows: (Vec<u8>, Option<Vec<u8>>),
                    sealing: Sealing<'static>| {
        codec::encode(&EnvelopeRef {
            key,
            op,
            value: Some(serde_bytes::Bytes::new(&rows.0)),
            schema_version: "1.0",
            sequence,
            lsn: 0x16_b374_d848,
            commit_ts: Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000,
            },
            xid: Some(750),
            tx_index: Some(0),
            before: rows.1.as_deref().map(serde_bytes::Bytes::new),
            compression: sealing.compression,
            key_id: sealing.key_id,
            sealed_columns: sealing.columns,
        })
        .unwrap()
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let row = |key, op, sequence, field| RowOf {
        key,
        op,
        sequence,
        field,
    };
    let a = envelope(
        "public.docs:1",
        Op::Insert,
        1,
        (compress(&docs(&body)), None),
        Sealing {
            compression: Some(ZSTD),
            key_id: None,
            columns: None,
        },
    );
    let k2 = ring.get("k2").unwrap();
    let ad = row("public.users:42", "insert", 1, Field::Value).ad("k2");
    let b_value = seal_with_nonce(k2, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], &ad, &users);
    let b = envelope(
        "public.users:42",
        Op::Insert,
        1,
        (b_value.clone(), None),
        Sealing {
            compression: None,
            key_id: Some("k2"),
            columns: None,
        },
    );
    let k1 = ring.get("k1").unwrap();
    let v2 = format!("{body}v2");
    let c_value = seal_with_nonce(
        k1,
        &[0x10; 12],
        &row("public.docs:1", "update", 2, Field::Value).ad("k1"),
        &compress(&docs(&v2)),
    );
    let c_before = seal_with_nonce(
        k1,
        &[0x20; 12],
        &row("public.docs:1", "update", 2, Field::Before).ad("k1"),
        &compress(&docs(&body)),
    );
    let c = envelope(
        "public.docs:1",
        Op::Update,
        2,
        (c_value, Some(c_before)),
        Sealing {
            compression: Some(ZSTD),
            key_id: Some("k1"),
            columns: None,
        },
    );
    let d = envelope(
        "public.users:42",
        Op::Insert,
        2,
        (b_value, None),
        Sealing {
            compression: None,
            key_id: Some("k2"),
            columns: None,
        },
    );
    let ssn = rmp_serde::to_vec("078-05-1120").unwrap();
    let column_ad = row("public.users:42", "insert", 1, Field::Value).column_ad("k2", "ssn");
    let sealed_ssn = seal_with_nonce(k2, &[0x30; 12], &column_ad, &ssn);
    let names = vec!["ssn".to_string()];
    let e = codec::encode(&EnvelopeRef {
        key: "public.users:42",
        op: Op::Insert,
        value: Some(rmpv::Value::Map(vec![
            ("id".into(), 42.into()),
            ("name".into(), "Ada".into()),
            ("ssn".into(), rmpv::Value::Binary(sealed_ssn)),
        ])),
        schema_version: "1.0",
        sequence: 1,
        lsn: 0x16_b374_d848,
        commit_ts: Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_000,
        },
        xid: Some(750),
        tx_index: Some(0),
        before: None,
        compression: None,
        key_id: Some("k2"),
        sealed_columns: Some(&names),
    })
    .unwrap();
    for v in [a, b, c, d, e] {
        println!("{}", hex(&v));
    }
}

//! Per-envelope cost of `--compress` and `--encrypt` (no servers): the bench's wide
//! row (`benches/pipeline/setup.rs`, `wide_row`: a 4 KB repetitive text, jsonb, uuid,
//! bytea…) and its narrow row, encoded plain, compressed, encrypted, both, and opened
//! again, timed with `Instant` over many envelopes. Run in release:
//! `cargo run --release --example seal_cost`.

use std::time::Instant;

use walcast::wire::codec::{decode_with, encode, EnvelopeRef, Op};
use walcast::wire::seal::{seal_row, Field, Keyring, RowOf};
use walcast::wire::Timestamp;

const N: u32 = 20_000;

fn wide(k: u32) -> rmpv::Value {
    let md5ish = format!(
        "{:032x}",
        u128::from(k).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    );
    rmpv::Value::Map(vec![
        ("id".into(), k.into()),
        ("amount".into(), format!("{}.5000", k + k / 2).into()),
        (
            "doc".into(),
            rmpv::Value::Map(vec![
                ("k".into(), k.into()),
                ("tags".into(), rmpv::Value::Array(vec![1.into(), 2.into()])),
            ]),
        ),
        ("ref".into(), "9c1185a5-c5e9-fc54-6128-08977ee8f548".into()),
        (
            "tags".into(),
            rmpv::Value::Array(vec!["a".into(), k.to_string().into()]),
        ),
        (
            "blob".into(),
            rmpv::Value::Binary(md5ish.as_bytes()[..16].to_vec()),
        ),
        (
            "at".into(),
            rmpv::Value::Ext(-1, vec![0x65, 0x53, 0xf1, 0x00]),
        ),
        ("body".into(), md5ish.repeat(128).into()),
    ])
}

fn narrow(k: u32) -> rmpv::Value {
    rmpv::Value::Map(vec![("id".into(), k.into()), ("v".into(), (k * 7).into())])
}

/// (mean ns per envelope to build, bytes of one) for `rows` sealed as asked.
fn time(rows: &[rmpv::Value], compress: bool, keys: Option<&Keyring>) -> (f64, usize, f64) {
    let key = keys.and_then(Keyring::newest);
    let started = Instant::now();
    let mut bytes = 0;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let plain = rmp_serde::to_vec(row).unwrap();
        let envelope = |value: Option<&[u8]>| {
            encode(&EnvelopeRef {
                key: "public.bench_wide:1",
                op: Op::Update,
                value: Some(serde_bytes::Bytes::new(value.unwrap_or(&plain))),
                schema_version: "1.0",
                sequence: i as u64 + 1,
                lsn: 1,
                commit_ts: Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                },
                xid: Some(1),
                tx_index: Some(0),
                before: None,
                compression: compress.then_some("zstd"),
                key_id: key.map(|k| k.id()),
                sealed_columns: None,
            })
            .unwrap()
        };
        let e = if compress || key.is_some() {
            let of = RowOf {
                key: "public.bench_wide:1",
                op: "update",
                sequence: i as u64 + 1,
                field: Field::Value,
            };
            envelope(Some(&seal_row(&plain, compress, key, of)))
        } else {
            encode(&EnvelopeRef {
                key: "public.bench_wide:1",
                op: Op::Update,
                value: Some(row),
                schema_version: "1.0",
                sequence: i as u64 + 1,
                lsn: 1,
                commit_ts: Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                },
                xid: Some(1),
                tx_index: Some(0),
                before: None,
                compression: None,
                key_id: None,
                sealed_columns: None,
            })
            .unwrap()
        };
        bytes = e.len();
        out.push(e);
    }
    let build = started.elapsed().as_nanos() as f64 / rows.len() as f64;
    let started = Instant::now();
    for e in &out {
        std::hint::black_box(decode_with(e, keys).unwrap());
    }
    let open = started.elapsed().as_nanos() as f64 / rows.len() as f64;
    (build, bytes, open)
}

fn main() {
    let keys =
        Keyring::parse("k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .unwrap();
    for (name, rows) in [
        ("wide", (0..N).map(wide).collect::<Vec<_>>()),
        ("narrow", (0..N).map(narrow).collect()),
    ] {
        println!("{name} row, {N} envelopes: ns/envelope to encode, bytes, ns/envelope to decode");
        for (how, compress, k) in [
            ("plain", false, None),
            ("zstd", true, None),
            ("aes-gcm", false, Some(&keys)),
            ("zstd+aes-gcm", true, Some(&keys)),
        ] {
            let (build, bytes, open) = time(&rows, compress, k);
            println!("  {how:<13} encode {build:>8.0} ns  {bytes:>6} B  decode {open:>8.0} ns");
        }
    }
}

//! Compressed and encrypted rows end to end (`--compress`, `--encrypt`): walcast run
//! against real PostgreSQL and nats-server, read back by the Rust client with and
//! without the key ring; the JetStream store holds no plaintext of an encrypted
//! table; key rotation across a restart (docs/encryption.md).

mod common;
mod sealed_support;

use std::time::Duration;

use common::*;
use sealed_support::*;
use walcast::client::last_envelope_with;
use walcast::testing::PgOptions;
use walcast::wire::codec::to_json;
use walcast::wire::seal::Keyring;
use walcast::wire::Op;

/// A compressed table's large rows travel compressed and its small ones plain; an
/// encrypted table's rows open with the key, and without it (or with the wrong key
/// material) are a clear error, never garbage; the stream's files hold no plaintext
/// of the encrypted table (they do of a clear one, the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_and_encrypted_rows_round_trip_and_the_store_holds_no_plaintext() {
    let (s, db) = with_sql(servers_with(PgOptions::default()), TABLES).await;
    let dir = tempfile::tempdir().unwrap();
    let ring_file = dir.path().join("keys");
    std::fs::write(&ring_file, format!("# test ring\n{K1}\n")).unwrap();
    let ring = Keyring::parse(K1).unwrap();
    let url = s.nats.url();
    let (with_key, without, wrong) = (
        subscribe(&url).await,
        subscribe(&url).await,
        subscribe(&url).await,
    );
    let args = RunArgs::new(&s, "walcast", "walcast").args(&[
        "--snapshot",
        "never",
        "--compress",
        "public.docs=200",
        "--compress",
        "public.secrets=200",
        "--encrypt",
        "public.secrets",
        "--encryption-keys-file",
        ring_file.to_str().unwrap(),
    ]);
    let w = Walcast::start(args).await;
    let long = "walcast compresses this ".repeat(30);
    exec(
        &db,
        &format!("INSERT INTO docs VALUES (1, '{long}'), (2, 'short')"),
    )
    .await;
    exec(&db, &format!("INSERT INTO secrets VALUES (1, '{SECRET_MARKER} one', NULL), (2, '{SECRET_MARKER} {long}', NULL)")).await;
    exec(
        &db,
        &format!("UPDATE secrets SET note = '{SECRET_MARKER} two' WHERE id = 1"),
    )
    .await;
    exec(&db, "DELETE FROM secrets WHERE id = 2").await;
    exec(
        &db,
        &format!("INSERT INTO plain VALUES (1, '{PLAIN_MARKER}')"),
    )
    .await;

    let got = receive(with_key, Some(ring.clone()), 7).await;
    let envs = ok(&got);
    let big = find(&envs, "public.docs:1", Op::Insert);
    assert_eq!(
        (big.compression.as_deref(), big.key_id.as_deref()),
        (Some("zstd"), None)
    );
    assert_eq!(
        to_json(&big.value),
        serde_json::json!({"id": 1, "body": long})
    );
    let small = find(&envs, "public.docs:2", Op::Insert);
    assert_eq!(
        (small.compression.as_deref(), small.key_id.as_deref()),
        (None, None)
    );
    let one = find(&envs, "public.secrets:1", Op::Update);
    assert_eq!((one.key_id.as_deref(), one.sequence), (Some("k1"), 2));
    assert_eq!(to_json(&one.value)["note"], format!("{SECRET_MARKER} two"));
    let two = find(&envs, "public.secrets:2", Op::Insert);
    assert_eq!(
        (two.compression.as_deref(), two.key_id.as_deref()),
        (Some("zstd"), Some("k1"))
    );
    assert_eq!(
        find(&envs, "public.secrets:2", Op::Delete).value,
        rmpv::Value::Nil
    );
    for r in &got {
        let clear = r.subject.contains(".plain.");
        assert_eq!(contains(&r.payload, "MARKER-7f3a"), clear, "{}", r.subject);
        // A generic MessagePack decoder reads every envelope; the sealed row is bin.
        let generic = rmpv::decode::read_value(&mut r.payload.as_ref()).unwrap();
        assert!(generic.as_map().is_some(), "{}", r.subject);
    }

    // Without the key ring, and with the wrong material under the same id: errors
    // that say so, for exactly the encrypted table's rows (its delete has no row).
    for (sub, keys, why) in [
        (without, None, "has no encryption keys"),
        (
            wrong,
            Some(Keyring::parse(K1_WRONG).unwrap()),
            "does not authenticate under key id \"k1\"",
        ),
    ] {
        let got = receive(sub, keys, 7).await;
        for r in &got {
            match &r.envelope {
                Err(e) => {
                    assert!(r.subject.contains(".secrets."), "{}: {e}", r.subject);
                    assert!(e.to_string().contains(why), "{}: {e}", r.subject);
                }
                // The clear tables, and the encrypted table's delete (no row to seal).
                Ok(env) => assert!(env.key_id.is_none() || env.op == Op::Delete, "{env:#?}"),
            }
        }
        assert_eq!(
            got.iter().filter(|r| r.envelope.is_err()).count(),
            3,
            "{why}"
        );
    }

    // The stream: the last envelope opens with the ring, and is an error without it.
    let js = async_nats::jetstream::new(walcast::client::connect(&url).await.unwrap());
    let last = last_envelope_with(&js, "WALCAST", "walcast", "public.secrets:1", Some(&ring))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.envelope, *one);
    let e = last_envelope_with(&js, "WALCAST", "walcast", "public.secrets:1", None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("\"k1\""), "{e}");

    // The store's files: the clear table's marker is there (the files are written),
    // the encrypted table's never.
    let store = s.nats.store_dir();
    poll_until(
        "the stream's files to hold the clear row",
        Duration::from_secs(30),
        || async {
            let files = files_under(&store);
            (contains(&files, PLAIN_MARKER) && contains(&files, "walcast.public.secrets.1"))
                .then_some(())
                .ok_or("not yet")
        },
    )
    .await;
    assert!(
        !contains(&files_under(&store), SECRET_MARKER),
        "the store holds plaintext of public.secrets"
    );
    drop(w);
}

/// Key rotation mid-stream: walcast restarted with a second key added seals new
/// envelopes under it, while the old ones (in the stream, and the one walcast reads
/// back itself to fill an unchanged TOAST column) still open; a consumer that only
/// has the old key gets a clear error naming the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_mid_stream() {
    let (s, db) = with_sql(servers_with(PgOptions::default()), TABLES).await;
    let dir = tempfile::tempdir().unwrap();
    let ring_file = dir.path().join("keys");
    std::fs::write(&ring_file, format!("{K1}\n")).unwrap();
    let url = s.nats.url();
    let (both, old_only) = (subscribe(&url).await, subscribe(&url).await);
    let args = || {
        RunArgs::new(&s, "walcast", "walcast").args(&[
            "--snapshot",
            "never",
            "--encrypt",
            "public.secrets",
            "--encryption-keys-file",
            ring_file.to_str().unwrap(),
        ])
    };
    let mut w = Walcast::start(args()).await;
    // A value PostgreSQL keeps out of line (TOAST): an update of another column does
    // not send it, and walcast takes it from the key's last envelope in the stream.
    let blob = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i)";
    exec(
        &db,
        &format!("INSERT INTO secrets VALUES (1, 'one', {blob}), (2, 'two', NULL)"),
    )
    .await;
    wait_caught_up(&db, &w, Duration::from_secs(30)).await;
    w.sigterm();
    w.wait_exit(Duration::from_secs(30)).await;

    std::fs::write(&ring_file, format!("{K1}\n{K2}\n")).unwrap();
    let w = Walcast::start(args()).await;
    exec(&db, "UPDATE secrets SET note = 'one again' WHERE id = 1").await;
    exec(&db, "INSERT INTO secrets VALUES (3, 'three', NULL)").await;

    let ring = Keyring::parse(&format!("{K1}\n{K2}")).unwrap();
    let got = receive(both, Some(ring.clone()), 4).await;
    let envs = ok(&got);
    let first = find(&envs, "public.secrets:1", Op::Insert);
    assert_eq!(first.key_id.as_deref(), Some("k1"));
    let update = find(&envs, "public.secrets:1", Op::Update);
    assert_eq!((update.key_id.as_deref(), update.sequence), (Some("k2"), 2));
    assert_eq!(
        find(&envs, "public.secrets:3", Op::Insert)
            .key_id
            .as_deref(),
        Some("k2")
    );
    // The unchanged TOAST value came from the k1 envelope walcast read back.
    let value = to_json(&update.value);
    assert_eq!(value["note"], "one again");
    assert_eq!(value["blob"], to_json(&first.value)["blob"]);
    assert_eq!(value["blob"].as_str().map(str::len), Some(12_800));

    // An envelope sealed under k1 before the rotation still opens from the stream.
    let js = async_nats::jetstream::new(walcast::client::connect(&url).await.unwrap());
    let two = last_envelope_with(&js, "WALCAST", "walcast", "public.secrets:2", Some(&ring))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (two.envelope.key_id.as_deref(), two.envelope.sequence),
        (Some("k1"), 1)
    );

    // A consumer that only has k1: the old envelopes open, the new ones are an error
    // naming k2.
    let got = receive(old_only, Some(Keyring::parse(K1).unwrap()), 4).await;
    for r in &got {
        match &r.envelope {
            Ok(env) => assert_eq!(env.key_id.as_deref(), Some("k1")),
            Err(e) => assert!(
                e.to_string().contains(
                    "key id \"k2\", which is not in this consumer's key ring (it has: k1)"
                ),
                "{e}"
            ),
        }
    }
    assert_eq!(got.iter().filter(|r| r.envelope.is_err()).count(), 2);
    drop(w);
}

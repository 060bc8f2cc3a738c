//! Compressed and encrypted rows end to end (`--compress`, `--encrypt`): walcast run
//! against real PostgreSQL and nats-server, read back by the Rust client with and
//! without the key ring; the JetStream store holds no plaintext of an encrypted
//! table; key rotation across a restart (docs/encryption.md).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use walcast::client::{envelopes_with, last_envelope_with, Received};
use walcast::testing::PgOptions;
use walcast::wire::codec::to_json;
use walcast::wire::seal::Keyring;
use walcast::wire::{Envelope, Op};

const K1: &str = "k1:1111111111111111111111111111111111111111111111111111111111111111";
const K1_WRONG: &str = "k1:2222222222222222222222222222222222222222222222222222222222222222";
const K2: &str = "k2:3333333333333333333333333333333333333333333333333333333333333333";
const SECRET_MARKER: &str = "MARKER-7f3a-SECRET";
const PLAIN_MARKER: &str = "MARKER-7f3a-PLAIN";

const TABLES: &str = "
    CREATE TABLE docs (id int PRIMARY KEY, body text);
    CREATE TABLE secrets (id int PRIMARY KEY, note text, blob text);
    CREATE TABLE plain (id int PRIMARY KEY, note text);
    CREATE PUBLICATION walcast FOR TABLE docs, secrets, plain;";

/// Everything received on `walcast.>` within `window` once `n` arrived, decoded with
/// `keys`.
async fn receive(sub: async_nats::Subscriber, keys: Option<Keyring>, n: usize) -> Vec<Received> {
    let mut stream = envelopes_with(sub, keys.map(Arc::new));
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(r)) => got.push(r),
            _ => panic!("only {} of {n} messages arrived", got.len()),
        }
    }
    got
}

fn ok(got: &[Received]) -> Vec<&Envelope> {
    got.iter()
        .map(|r| {
            r.envelope
                .as_ref()
                .unwrap_or_else(|e| panic!("{}: {e}", r.subject))
        })
        .collect()
}

fn find<'a>(got: &[&'a Envelope], key: &str, op: Op) -> &'a Envelope {
    got.iter()
        .find(|e| e.key == key && e.op == op)
        .unwrap_or_else(|| panic!("no {op:?} of {key} in {got:#?}"))
}

/// The bytes of every file under `dir`, concatenated.
fn files_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.extend(bytes);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn subscribe(url: &str) -> async_nats::Subscriber {
    let client = walcast::client::connect(url).await.unwrap();
    let sub = client.subscribe("walcast.>").await.unwrap();
    client.flush().await.unwrap();
    sub
}

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

/// `--stream-compression s2` is JetStream's own setting: a stream walcast made
/// without it gets it on the next start with the flag, and envelopes still flow
/// unchanged (the wire is not compressed by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_compression_s2_is_set_on_the_stream() {
    use async_nats::jetstream::stream::Compression;
    let (s, db) = with_sql(servers_with(PgOptions::default()), TABLES).await;
    let js = async_nats::jetstream::new(walcast::client::connect(&s.nats.url()).await.unwrap());
    let compression = || async {
        let mut stream = js.get_stream("WALCAST").await.unwrap();
        stream.info().await.unwrap().config.compression.clone()
    };
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    assert_ne!(compression().await, Some(Compression::S2));
    w.sigterm();
    w.wait_exit(Duration::from_secs(30)).await;
    let args = RunArgs::new(&s, "walcast", "walcast").args(&["--stream-compression", "s2"]);
    let _w = Walcast::start(args).await;
    assert_eq!(compression().await, Some(Compression::S2));
    let sub = subscribe(&s.nats.url()).await;
    exec(
        &db,
        &format!("INSERT INTO plain VALUES (7, '{PLAIN_MARKER}')"),
    )
    .await;
    let got = receive(sub, None, 1).await;
    let env = &ok(&got)[0];
    assert_eq!(
        (env.key.as_str(), env.compression.as_deref()),
        ("public.plain:7", None)
    );
}

/// `--encrypt-column`: only the chosen column is sealed (listed in `sealed_columns`),
/// the rest of the row is clear to anyone; with the key the whole row opens, without
/// it the envelope is a clear error; the store holds no plaintext of the column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_column_opens_with_the_key_and_the_rest_stays_clear() {
    let sql = "CREATE TABLE people (id int PRIMARY KEY, name text, ssn text);
               CREATE PUBLICATION walcast FOR TABLE people;";
    let (s, db) = with_sql(servers_with(PgOptions::default()), sql).await;
    let sub = subscribe(&s.nats.url()).await;
    let keyless = subscribe(&s.nats.url()).await;
    let args = RunArgs::new(&s, "walcast", "walcast").args(&[
        "--snapshot",
        "never",
        "--encrypt-column",
        "public.people=ssn",
        "--encryption-keys",
        K1,
    ]);
    let _w = Walcast::start(args).await;
    exec(
        &db,
        &format!("INSERT INTO people VALUES (1, 'Ada Clear', '{SECRET_MARKER}')"),
    )
    .await;
    exec(&db, "UPDATE people SET name = 'Ada Again' WHERE id = 1").await;
    let got = receive(sub, Some(Keyring::parse(K1).unwrap()), 2).await;
    let envs = ok(&got);
    for (env, r) in envs.iter().zip(&got) {
        assert_eq!(
            (env.key_id.as_deref(), env.compression.as_deref()),
            (Some("k1"), None)
        );
        assert_eq!(to_json(&env.value)["ssn"], SECRET_MARKER);
        assert!(!contains(&r.payload, SECRET_MARKER), "{}", r.subject);
        assert!(contains(&r.payload, "Ada "), "the other columns are clear");
        let generic = rmpv::decode::read_value(&mut r.payload.as_ref()).unwrap();
        let map = generic.as_map().unwrap();
        let field = |name: &str| {
            map.iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            field("sealed_columns"),
            Some(rmpv::Value::Array(vec!["ssn".into()]))
        );
        let value = field("value").unwrap();
        let ssn = value
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_str() == Some("ssn"))
            .unwrap();
        assert!(ssn.1.is_bin(), "{value:?}");
    }
    assert_eq!(find(&envs, "public.people:1", Op::Update).sequence, 2);
    for r in receive(keyless, None, 2).await {
        let e = r.envelope.unwrap_err().to_string();
        assert!(
            e.contains("\"k1\"") && e.contains("no encryption keys"),
            "{e}"
        );
    }
    let store = s.nats.store_dir();
    poll_until(
        "the stream's files to hold the rows",
        Duration::from_secs(30),
        || async {
            contains(&files_under(&store), "Ada Again")
                .then_some(())
                .ok_or("not yet")
        },
    )
    .await;
    assert!(!contains(&files_under(&store), SECRET_MARKER));

    // walcast tail --stored with the key ring shows the opened row, without it says
    // which key it lacks; neither prints the key.
    for (with_keys, expect) in [(true, SECRET_MARKER), (false, "\"k1\"")] {
        let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"));
        tail.args([
            "tail",
            "walcast.>",
            "--stored",
            "--json",
            "--nats-url",
            &s.nats.url(),
        ]);
        if with_keys {
            tail.env("WALCAST_ENCRYPTION_KEYS", K1);
        }
        let out = tail.output().await.unwrap();
        let all = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(all.contains(expect), "tail (keys: {with_keys}):\n{all}");
        assert!(!all.contains(&K1[3..20]), "tail printed the key:\n{all}");
    }
}

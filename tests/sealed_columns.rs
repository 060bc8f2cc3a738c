//! Encrypted columns (`--encrypt-column`) and JetStream's own stream compression
//! (`--stream-compression s2`) end to end against real servers; `walcast tail` with
//! and without the key ring.

mod common;
mod sealed_support;

use std::time::Duration;

use common::*;
use sealed_support::*;
use walcast::testing::PgOptions;
use walcast::wire::codec::to_json;
use walcast::wire::seal::Keyring;
use walcast::wire::Op;

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

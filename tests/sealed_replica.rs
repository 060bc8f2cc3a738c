//! A reconciling [`Replica`] of an encrypted table (issue 26): given the key ring
//! (`ReplicaOptions::with_keys`) and a refetch from walcast's stream, it holds the
//! opened rows — the first from the refetch, the next from the live envelopes the
//! transport opens (`NatsTransport::with_keys`). Without the ring its refetch cannot
//! open the row and it stays `stale` with no value, never garbage.

mod common;
mod sealed_support;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use sealed_support::*;
use walcast::client::{NatsTransport, RefetchFrom, Replica, ReplicaOptions, Status};
use walcast::testing::PgOptions;
use walcast::wire::seal::Keyring;

const WAIT: Duration = Duration::from_secs(60);
const KEY: &str = "public.secrets:1";

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Secret {
    id: i32,
    note: Option<String>,
    blob: Option<String>,
}

fn secret(note: &str) -> Option<Secret> {
    Some(Secret {
        id: 1,
        note: Some(note.to_string()),
        blob: None,
    })
}

async fn until(r: &Replica<Secret>, what: &str, check: impl Fn(&Replica<Secret>) -> bool) {
    poll_until(what, WAIT, || async {
        if check(r) {
            Ok(())
        } else {
            Err(format!("{:?} {:?} {:?}", r.get(), r.meta(), r.stats()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_an_encrypted_table_holds_the_opened_rows() {
    let (s, db) = with_sql(servers_with(PgOptions::default()), TABLES).await;
    let dir = tempfile::tempdir().unwrap();
    let ring_file = dir.path().join("keys");
    std::fs::write(&ring_file, format!("{K1}\n")).unwrap();
    let ring = Arc::new(Keyring::parse(K1).unwrap());
    let args = RunArgs::new(&s, "walcast", "walcast").args(&[
        "--encrypt",
        "public.secrets",
        "--encryption-keys-file",
        ring_file.to_str().unwrap(),
    ]);
    let w = Walcast::start(args).await;
    let one = format!("{SECRET_MARKER} one");
    exec(
        &db,
        &format!("INSERT INTO secrets VALUES (1, '{one}', NULL)"),
    )
    .await;
    wait_caught_up(&db, &w, WAIT).await;

    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let from = RefetchFrom::Stream {
        js: async_nats::jetstream::new(client.clone()),
        stream: "WALCAST".into(),
        prefix: "walcast".into(),
    };
    let transport = NatsTransport::new(client.clone(), "walcast", 64).with_keys(ring.clone());
    let options = ReplicaOptions::new(KEY)
        .refetch_from(from.clone())
        .with_keys(ring.clone());
    let replica: Replica<Secret> = Replica::start(&transport, options).await.unwrap();
    until(&replica, "the refetched row, opened", |r| {
        r.status() == Status::Ok && r.get() == secret(&one)
    })
    .await;

    // Without the ring: the stream's envelope does not open; no value, stale.
    let blind: Replica<Secret> =
        Replica::start(&transport, ReplicaOptions::new(KEY).refetch_from(from))
            .await
            .unwrap();
    until(&blind, "the refetch to fail", |r| {
        r.stats().refetches == 1 && r.status() == Status::Stale
    })
    .await;
    assert_eq!(blind.get(), None);

    // The next change arrives live, opened by the transport.
    let two = format!("{SECRET_MARKER} two");
    exec(
        &db,
        &format!("UPDATE secrets SET note = '{two}' WHERE id = 1"),
    )
    .await;
    until(&replica, "the live update, opened", |r| {
        r.get() == secret(&two) && r.meta().sequence == Some(2)
    })
    .await;
    assert_eq!(replica.stats().refetches, 1, "{:?}", replica.stats());
    assert_eq!(replica.status(), Status::Ok);
}

//! The envelope's optional fields against a real PostgreSQL: `before` (the old row of
//! a `REPLICA IDENTITY FULL` table, absent for other tables), `xid` and `tx_index`
//! (one transaction's id on all its envelopes, its index in it), and none of them on
//! snapshot envelopes.

mod common;

use std::time::Duration;

use common::*;
use walcast::testing::PgOptions;
use walcast::wire::{Envelope, Op};

const TABLES: &str = "
    CREATE TABLE full_t (id int PRIMARY KEY, name text, secret text);
    ALTER TABLE full_t REPLICA IDENTITY FULL;
    CREATE TABLE plain_t (id int PRIMARY KEY, name text);
    INSERT INTO full_t VALUES (0, 'old', 's0');
    CREATE PUBLICATION walcast FOR TABLE full_t, plain_t;";

/// The row map of a value as (column, JSON) pairs, for comparing.
fn row(v: &rmpv::Value) -> serde_json::Value {
    walcast::wire::codec::to_json(v)
}

fn of<'a>(got: &'a [(String, Envelope, Vec<u8>)], key: &str, op: Op) -> Vec<&'a Envelope> {
    got.iter()
        .map(|(_, e, _)| e)
        .filter(|e| e.key == key && e.op == op)
        .collect()
}

/// `before` carries the old row on a FULL table's updates and deletes (with the same
/// column selection as `value`, and on the delete half of a key change), and is
/// absent on the other table, on inserts and on snapshot rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_is_the_old_row_of_a_full_table_and_absent_otherwise() {
    let (s, db) = with_sql(servers_with(PgOptions::default()), TABLES).await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.>").await;
    let args =
        RunArgs::new(&s, "walcast", "walcast").args(&["--exclude-column", "public.full_t=secret"]);
    let _w = Walcast::start(args).await;
    exec(&db, "INSERT INTO full_t VALUES (1, 'a', 's1')").await;
    exec(&db, "UPDATE full_t SET name = 'b' WHERE id = 1").await;
    exec(&db, "UPDATE full_t SET id = 2 WHERE id = 1").await;
    exec(&db, "DELETE FROM full_t WHERE id = 2").await;
    exec(&db, "INSERT INTO plain_t VALUES (1, 'a')").await;
    exec(&db, "UPDATE plain_t SET name = 'b' WHERE id = 1").await;
    exec(&db, "DELETE FROM plain_t WHERE id = 1").await;
    // snapshot, insert, update, delete + insert (key change), delete; three on plain_t
    let got = collector.until(9, Duration::from_secs(30)).await;

    let snapshot = of(got, "public.full_t:0", Op::Snapshot);
    assert_eq!(snapshot.len(), 1, "{got:#?}");
    assert_eq!(snapshot[0].before, None);
    assert_eq!(of(got, "public.full_t:1", Op::Insert)[0].before, None);
    let update = of(got, "public.full_t:1", Op::Update)[0];
    let old = serde_json::json!({"id": 1, "name": "a"});
    assert_eq!(update.before.as_ref().map(row), Some(old), "{update:#?}");
    assert_eq!(
        row(&update.value),
        serde_json::json!({"id": 1, "name": "b"})
    );
    // The key change: its delete carries the old row, its insert none.
    let moved = of(got, "public.full_t:1", Op::Delete)[0];
    let old = serde_json::json!({"id": 1, "name": "b"});
    assert_eq!(moved.before.as_ref().map(row), Some(old));
    assert_eq!(of(got, "public.full_t:2", Op::Insert)[0].before, None);
    let deleted = of(got, "public.full_t:2", Op::Delete)[0];
    let old = serde_json::json!({"id": 2, "name": "b"});
    assert_eq!(deleted.before.as_ref().map(row), Some(old));
    assert_eq!(deleted.value, rmpv::Value::Nil);

    for (subject, e, bytes) in got.iter().filter(|(s, _, _)| s.contains(".plain_t.")) {
        assert_eq!(e.before, None, "{subject}: {e:#?}");
        let map = rmpv::decode::read_value(&mut bytes.as_slice()).unwrap();
        let has = |name: &str| {
            map.as_map()
                .unwrap()
                .iter()
                .any(|(k, _)| k.as_str() == Some(name))
        };
        assert!(!has("before"), "{subject}: absent, not nil");
    }
}

/// Every envelope of a transaction carries its xid (PostgreSQL's) and its index in
/// it; another transaction has another xid; snapshot envelopes carry neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xid_is_one_per_transaction_and_tx_index_counts_within_it() {
    let (s, db) = with_sql(servers_with(PgOptions::default()), TABLES).await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.>").await;
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "BEGIN").await;
    exec(&db, "INSERT INTO plain_t VALUES (1, 'a'), (2, 'b')").await;
    exec(&db, "UPDATE full_t SET name = 'new' WHERE id = 0").await;
    let xid_of = "SELECT (pg_current_xact_id()::text::bigint % 4294967296)::bigint";
    let first: i64 = db.query_one(xid_of, &[]).await.unwrap().get(0);
    exec(&db, "COMMIT").await;
    exec(&db, "INSERT INTO plain_t VALUES (3, 'c')").await;
    let got = collector.until(5, Duration::from_secs(30)).await;

    // The snapshot row may come before or between the transactions.
    let (snapshot, changes): (Vec<&Envelope>, Vec<&Envelope>) = got
        .iter()
        .map(|(_, e, _)| e)
        .partition(|e| e.op == Op::Snapshot);
    assert_eq!(snapshot.len(), 1, "{got:#?}");
    assert_eq!((snapshot[0].xid, snapshot[0].tx_index), (None, None));
    let tx = &changes[..3];
    assert!(tx.iter().all(|e| e.xid == Some(first as u32)), "{tx:#?}");
    assert!(tx.iter().all(|e| e.lsn == tx[0].lsn));
    let indexes: Vec<Option<u32>> = tx.iter().map(|e| e.tx_index).collect();
    assert_eq!(indexes, [Some(0), Some(1), Some(2)]);
    let next = changes[3];
    assert!(next.xid.is_some() && next.xid != tx[0].xid, "{next:#?}");
    assert_eq!(next.tx_index, Some(0));
    // `tail --json` shows them.
    let json = next.to_json();
    assert_eq!(json["xid"], serde_json::json!(next.xid.unwrap()));
    assert_eq!(json["tx_index"], serde_json::json!(0));
}

/// `before` is left out where the envelope with it would exceed NATS's `max_payload`
/// (1 MB): a 640 kB row's update is published whole, without it, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_is_left_out_rather_than_make_an_envelope_too_large() {
    let (s, db) = with_sql(servers_with(PgOptions::default()), TABLES).await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.full_t.*").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    collector.until(1, Duration::from_secs(30)).await; // the snapshot row
    exec(
        &db,
        "INSERT INTO full_t SELECT 1, 'a', string_agg(md5(g::text), '') FROM generate_series(1, 20000) g;
         UPDATE full_t SET name = 'b' WHERE id = 1;",
    )
    .await;
    let got = collector.until(3, Duration::from_secs(30)).await;
    let update = &got[2].1;
    assert_eq!(update.op, Op::Update);
    assert_eq!(update.before, None, "640 kB twice does not fit 1 MB");
    let secret = update.column("secret").and_then(|v| v.as_str()).unwrap();
    assert_eq!(secret.len(), 640_000);
    w.http_get("/healthz").await.expect("still running");
}

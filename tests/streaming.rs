//! Large transactions streamed while in progress (`--stream-large-transactions`,
//! pgoutput protocol 2+) against a real PostgreSQL with `logical_decoding_work_mem =
//! 64kB`: published once, at commit, in commit order, with dense per-key sequences;
//! nothing of an aborted transaction or a rolled-back savepoint; PostgreSQL spilled
//! nothing to its disk; a kill -9 of walcast mid stream loses and leaks nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use walcast::testing::PgOptions;
use walcast::wire::codec::{Envelope, Op};

const WAIT: Duration = Duration::from_secs(90);

/// Servers with table `t (id, payload)` published, PostgreSQL streaming (or spilling)
/// any transaction beyond 64 kB of changes.
async fn setup() -> (Servers, tokio_postgres::Client) {
    let opts = PgOptions {
        extra_conf: vec![
            "logical_decoding_work_mem = '64kB'".into(),
            "max_prepared_transactions = 10".into(),
        ],
        ..PgOptions::default()
    };
    with_sql(
        servers_with(opts),
        "CREATE TABLE t (id int PRIMARY KEY, payload text);
         CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await
}

fn streaming(s: &Servers, extra: &[&str]) -> Walcast {
    let mut args = vec!["--stream-large-transactions"];
    args.extend_from_slice(extra);
    Walcast::spawn(RunArgs::new(s, "walcast", "walcast").args(&args))
}

/// A second connection, for a transaction left open.
async fn open_txn(s: &Servers) -> tokio_postgres::Client {
    s.pg.client().await
}

fn insert(from: i64, to: i64) -> String {
    format!("INSERT INTO t SELECT g, repeat('x', 40) FROM generate_series({from}, {to}) g;")
}

/// (spill_bytes, stream_txns) of the slot.
async fn slot_stats(db: &tokio_postgres::Client) -> (i64, i64) {
    db.query_opt(
        "SELECT spill_bytes, stream_txns FROM pg_stat_replication_slots WHERE slot_name = 'walcast'",
        &[],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
    .unwrap_or((0, 0))
}

/// Wait until PostgreSQL has streamed at least `n` transactions to walcast.
async fn wait_streamed(db: &tokio_postgres::Client, n: i64) {
    poll_until(format!("{n} streamed transaction(s)"), WAIT, || async {
        let (_, txns) = slot_stats(db).await;
        if txns >= n {
            Ok(())
        } else {
            Err(format!("stream_txns {txns}"))
        }
    })
    .await;
}

fn ids(got: &[(String, Envelope, Vec<u8>)]) -> Vec<i64> {
    got.iter()
        .map(|(_, e, _)| e.key.rsplit(':').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_is_published_at_commit_and_postgres_spills_nothing() {
    let (s, db) = setup().await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    // A zero budget: every held change goes through the spill file.
    let mut w = streaming(&s, &["--stream-memory", "0"]);
    w.wait_ready().await;
    let big = open_txn(&s).await;
    exec(&big, &format!("BEGIN; {}", insert(1, 20_000))).await;
    wait_streamed(&db, 1).await;
    collector.assert_quiet(Duration::from_secs(2)).await;
    exec(&big, "COMMIT").await;
    let got = collector.until(20_000, WAIT).await;
    assert_eq!(ids(got), (1..=20_000).collect::<Vec<_>>(), "commit order");
    assert!(got
        .iter()
        .all(|(_, e, _)| e.op == Op::Insert && e.sequence == 1));
    let (spill, _) = slot_stats(&db).await;
    assert_eq!(spill, 0, "PostgreSQL spilled to its disk");
    let spilled = w
        .wait_metric("walcast_stream_spilled_bytes_total", 1.0, WAIT)
        .await;
    assert!(spilled > 20_000.0 * 40.0, "walcast spilled {spilled} bytes");
    collector.assert_quiet(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_and_rolled_back_savepoints_publish_nothing() {
    let (s, db) = setup().await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let mut w = streaming(&s, &[]);
    w.wait_ready().await;
    let big = open_txn(&s).await;
    exec(&big, &format!("BEGIN; {}", insert(1, 5_000))).await;
    exec(&big, &format!("SAVEPOINT s1; {}", insert(5_001, 10_000))).await;
    wait_streamed(&db, 1).await;
    exec(&big, "ROLLBACK TO s1").await;
    exec(&big, &insert(10_001, 12_000)).await;
    exec(
        &big,
        &format!("SAVEPOINT s2; {} RELEASE s2;", insert(20_001, 25_000)),
    )
    .await;
    exec(&big, "COMMIT").await;
    let aborted = open_txn(&s).await;
    exec(&aborted, &format!("BEGIN; {}", insert(30_001, 40_000))).await;
    wait_streamed(&db, 2).await;
    exec(&aborted, "ROLLBACK").await;
    exec(&db, "INSERT INTO t VALUES (99999, 'marker')").await;
    let got = collector.until(5_000 + 2_000 + 5_000 + 1, WAIT).await;
    let want: Vec<i64> = (1..=5_000)
        .chain(10_001..=12_000)
        .chain(20_001..=25_000)
        .chain([99_999])
        .collect();
    assert_eq!(ids(got), want);
    collector.assert_quiet(Duration::from_secs(2)).await;
    assert_eq!(slot_stats(&db).await.0, 0, "PostgreSQL spilled to its disk");
    w.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_large_and_small_transactions_follow_commit_order() {
    let (s, db) = setup().await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let mut w = streaming(&s, &["--stream-memory", "1"]);
    w.wait_ready().await;
    exec(&db, "INSERT INTO t VALUES (1, 'small')").await;
    let l1 = open_txn(&s).await;
    exec(&l1, &format!("BEGIN; {}", insert(100_001, 110_000))).await;
    exec(&l1, "UPDATE t SET payload = 'l1' WHERE id = 1").await;
    let l2 = open_txn(&s).await;
    exec(&l2, &format!("BEGIN; {}", insert(200_001, 210_000))).await;
    wait_streamed(&db, 2).await;
    exec(&db, "INSERT INTO t VALUES (2, 'small')").await;
    exec(&l2, "COMMIT").await;
    exec(&db, "UPDATE t SET payload = 'small again' WHERE id = 2").await;
    exec(&l1, "UPDATE t SET payload = 'l1' WHERE id = 2; COMMIT").await;
    let got = collector.until(2 + 10_000 + 1 + 10_002, WAIT).await;
    let want: Vec<i64> = [1, 2]
        .into_iter()
        .chain(200_001..=210_000)
        .chain([2])
        .chain(100_001..=110_000)
        .chain([1, 2])
        .collect();
    assert_eq!(ids(got), want, "envelopes in commit order");
    let mut sequences: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (_, e, _) in got {
        sequences.entry(&e.key).or_default().push(e.sequence);
    }
    assert_eq!(sequences["public.t:1"], vec![1, 2]);
    assert_eq!(sequences["public.t:2"], vec![1, 2, 3]);
    assert!(sequences
        .values()
        .all(|s| s.iter().copied().eq(1..=s.len() as u64)));
    assert_eq!(slot_stats(&db).await.0, 0, "PostgreSQL spilled to its disk");
    w.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_publishes_each_change_once_at_commit() {
    let (s, db) = setup().await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let mut w = streaming(&s, &[]);
    w.wait_ready().await;
    let big = open_txn(&s).await;
    exec(&big, &format!("BEGIN; {}", insert(1, 10_000))).await;
    wait_streamed(&db, 1).await;
    exec(&db, "INSERT INTO t VALUES (900001, 'small')").await;
    collector.until(1, WAIT).await;
    w.child.kill().await.unwrap();
    let _ = w.child.wait().await;
    exec(&big, &insert(10_001, 20_000)).await;
    exec(&db, "INSERT INTO t VALUES (900002, 'small')").await;
    let mut w = streaming(&s, &[]);
    w.wait_ready().await;
    collector
        .until_with("the second small insert", WAIT, |got| {
            ids(got).contains(&900_002)
        })
        .await;
    assert!(
        ids(&collector.received).iter().all(|&id| id >= 900_000),
        "nothing of the open transaction before its commit"
    );
    exec(&big, "COMMIT").await;
    collector
        .until_with("every row of the large transaction", WAIT, |got| {
            ids(got).contains(&20_000)
        })
        .await;
    collector.collect_for(Duration::from_secs(2)).await;
    let mut by_key: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for ((_, e, _), id) in collector.received.iter().zip(ids(&collector.received)) {
        by_key.entry(id).or_default().push(e.sequence);
    }
    let want: Vec<i64> = (1..=20_000).chain([900_001, 900_002]).collect();
    assert_eq!(by_key.keys().copied().collect::<Vec<_>>(), want, "no holes");
    assert!(
        by_key.values().all(|s| s.iter().all(|&q| q == 1)),
        "each key's one change, sequence 1 (a republished copy keeps it)"
    );
    w.assert_running();
}

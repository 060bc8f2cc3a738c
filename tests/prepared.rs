//! Two-phase commit against a real PostgreSQL (max_prepared_transactions > 0): a
//! prepared transaction is published once, at COMMIT PREPARED (also when walcast
//! restarted between PREPARE and COMMIT, and when it is large enough to be streamed),
//! never at ROLLBACK PREPARED.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use walcast::testing::PgOptions;

const WAIT: Duration = Duration::from_secs(90);

fn ids(got: &[(String, walcast::wire::codec::Envelope, Vec<u8>)]) -> Vec<i64> {
    got.iter()
        .map(|(_, e, _)| e.key.rsplit(':').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_publish_once_at_commit_prepared_across_a_restart() {
    let opts = PgOptions {
        extra_conf: vec![
            "logical_decoding_work_mem = '64kB'".into(),
            "max_prepared_transactions = 10".into(),
        ],
        ..PgOptions::default()
    };
    let (s, db) = with_sql(
        servers_with(opts),
        "CREATE TABLE t (id int PRIMARY KEY, payload text);
         CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let args = ["--stream-large-transactions"];
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&args)).await;
    let rows = |from: i64, to: i64| {
        format!("INSERT INTO t SELECT g, repeat('x', 40) FROM generate_series({from}, {to}) g;")
    };
    // A large one (streamed while in progress), a small one, one rolled back later.
    exec(
        &db,
        &format!("BEGIN; {} PREPARE TRANSACTION 'big'", rows(1, 3_000)),
    )
    .await;
    exec(
        &db,
        &format!("BEGIN; {} PREPARE TRANSACTION 'small'", rows(5_000, 5_000)),
    )
    .await;
    exec(
        &db,
        &format!("BEGIN; {} PREPARE TRANSACTION 'gone'", rows(6_000, 6_100)),
    )
    .await;
    exec(&db, "INSERT INTO t VALUES (7000, 'marker')").await;
    collector.until(1, WAIT).await;
    collector.assert_quiet(Duration::from_secs(2)).await;
    assert_eq!(ids(&collector.received), vec![7000], "nothing at PREPARE");
    // walcast stops between PREPARE and COMMIT PREPARED.
    w.child.kill().await.unwrap();
    let _ = w.child.wait().await;
    for sql in [
        "COMMIT PREPARED 'big'",
        "COMMIT PREPARED 'small'",
        "ROLLBACK PREPARED 'gone'",
    ] {
        exec(&db, sql).await;
    }
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&args)).await;
    exec(&db, "INSERT INTO t VALUES (7001, 'marker')").await;
    collector
        .until_with("the second marker", WAIT, |got| ids(got).contains(&7001))
        .await;
    collector.collect_for(Duration::from_secs(2)).await;
    let got = ids(&collector.received);
    let mut by_key: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for ((_, e, _), id) in collector.received.iter().zip(&got) {
        by_key.entry(*id).or_default().push(e.sequence);
    }
    let want: Vec<i64> = (1..=3_000).chain([5_000, 7_000, 7_001]).collect();
    assert_eq!(
        by_key.keys().copied().collect::<Vec<_>>(),
        want,
        "nothing of 'gone'"
    );
    assert!(
        by_key.values().all(|s| s.iter().all(|&q| q == 1)),
        "each once"
    );
    let first = |id: i64| got.iter().position(|&g| g == id).unwrap();
    assert!(
        first(3_000) < first(5_000) && first(5_000) < first(7_001),
        "commit order"
    );
}

//! What the metrics count: row changes as PostgreSQL reports them (a key change once,
//! a truncate under its own op), and the process's CPU time to the millisecond.

mod common;

use std::time::Duration;

use common::*;
use walcast::testing::PgOptions;

/// The value of `walcast_changes_total` for `table` and `op` (`None`: no such line).
fn changes(metrics: &str, table: &str, op: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("walcast_changes_total{"))
        .find(|l| l.contains(&format!("op=\"{op}\"")) && l.contains(&format!("table=\"{table}\"")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// An insert, an update that changes the primary key (published as a delete of the
/// old key and an insert of the new one) and a truncate: one change each, under its
/// own op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_counts_once_and_a_truncate_under_truncate() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.t.>").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "INSERT INTO t VALUES (1)").await;
    exec(&db, "UPDATE t SET id = 2 WHERE id = 1").await;
    exec(&db, "TRUNCATE t").await;
    let got = collector.until(4, Duration::from_secs(30)).await;
    let ops: Vec<&str> = got.iter().map(|(_, e, _)| e.op.as_str()).collect();
    assert_eq!(ops, ["insert", "delete", "insert", "truncate"]);
    wait_caught_up(&db, &w, Duration::from_secs(30)).await;
    let (_, metrics) = w.http_get("/metrics").await.expect("metrics");
    let count = |op| changes(&metrics, "public.t", op);
    assert_eq!(count("insert"), Some(1.0), "{metrics}");
    assert_eq!(
        count("update"),
        Some(1.0),
        "a key change is one update: {metrics}"
    );
    assert_eq!(count("delete").unwrap_or(0.0), 0.0, "{metrics}");
    assert_eq!(count("truncate"), Some(1.0), "{metrics}");
}

/// `process_cpu_seconds_total` is the CPU time the process used, not that time cut
/// down to whole seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cpu_seconds_are_exact() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "INSERT INTO t SELECT generate_series(1, 2000)").await;
    wait_caught_up(&db, &w, Duration::from_secs(30)).await;
    let pid = w.child.id().expect("walcast runs");
    // /proc counts in clock ticks (10 ms), each of user and system time rounded down.
    let before = walcast::testing::cpu_seconds(pid);
    let reported = w
        .metric("process_cpu_seconds_total")
        .await
        .expect("the metric");
    let after = walcast::testing::cpu_seconds(pid);
    assert!(before > 0.0, "walcast used no CPU time? {before}");
    assert!(
        reported >= before - 0.001 && reported <= after + 0.03,
        "process_cpu_seconds_total {reported}, /proc says {before}..{after}"
    );
}

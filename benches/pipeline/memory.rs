//! Memory: walcast (JetStream, tracked sequences) through one 1,000,000-row
//! transaction that touches 1,000,000 distinct keys once each, and through the
//! snapshot of a 1,000,000-row table; RSS sampled from /proc by the slot watch.

use walcast::wire::Lsn;

use crate::contenders::{Job, RunResult, WalcastSpec};
use crate::setup::Bench;

fn jetstream() -> WalcastSpec {
    WalcastSpec {
        jetstream: true,
        ..Default::default()
    }
}

pub async fn run(b: &Bench) -> serde_json::Value {
    let big = b.settings.rows(1_000_000.0);
    b.make_slots(&["mem_big".to_string()], "pgoutput").await;
    b.exec(&format!(
        "INSERT INTO bench_big SELECT g, 0 FROM generate_series(1, {big}) g"
    ))
    .await;
    let job = Job {
        slot: "mem_big".into(),
        publication: "bench_big".into(),
        endpos: b.current_lsn().await,
        expected: big,
        tag: "membig".into(),
        pacing: b.settings.sweep[0],
    };
    let keys = crate::walcast_run::run(b, jetstream(), &job).await;
    b.wait_slot_free("mem_big").await;
    b.drop_slot("mem_big").await;
    report("1M-row transaction", big, &keys);
    let snapshot = snapshot_run(b, big).await;
    serde_json::json!({
        "distinct_keys": big,
        "one_transaction": keys,
        "one_transaction_rss_peak_kib": keys.peak_rss_kib,
        "snapshot_rows": big,
        "snapshot": snapshot,
        "snapshot_rss_peak_kib": snapshot.peak_rss_kib,
        "snapshot_rows_per_s": big as f64 / snapshot.seconds,
    })
}

/// A snapshot of a 1,000,000-row table: walcast creates the slot, so it snapshots
/// first; nothing streams after it (timed from the slot's start, like every run).
async fn snapshot_run(b: &Bench, big: u64) -> RunResult {
    b.exec(&format!(
        "CREATE TABLE bench_snap (id int PRIMARY KEY, v int NOT NULL, pad text);
         INSERT INTO bench_snap SELECT g, g, 'row ' || g FROM generate_series(1, {big}) g;
         ANALYZE bench_snap;
         CREATE PUBLICATION bench_snap FOR TABLE bench_snap;"
    ))
    .await;
    let job = Job {
        slot: "mem_snap".into(),
        publication: "bench_snap".into(),
        endpos: Lsn(0),
        expected: 0,
        tag: "memsnap".into(),
        pacing: b.settings.sweep[0],
    };
    let spec = WalcastSpec {
        snapshot: true,
        ..jetstream()
    };
    let result = crate::walcast_run::run(b, spec, &job).await;
    b.wait_slot_free("mem_snap").await;
    b.drop_slot("mem_snap").await;
    report("1M-row snapshot", big, &result);
    result
}

fn report(what: &str, rows: u64, r: &RunResult) {
    println!(
        "{what} ({rows} rows, {rows} distinct keys): {:.1} s, {:.0} rows/s, RSS peak {:.1} MiB{}",
        r.seconds,
        rows as f64 / r.seconds,
        r.peak_rss_kib as f64 / 1024.0,
        if r.complete { "" } else { " — INCOMPLETE" }
    );
}

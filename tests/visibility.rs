//! A commit the replication stream carries before other sessions can see it.
//!
//! PostgreSQL flushes a commit record, and may hand it to walcast, before the
//! committing backend has made the transaction visible (a synchronous standby that has
//! not answered holds it in between; a busy machine can too, for a moment). A read
//! walcast makes of the table in that gap sees the row as it was before the change it
//! has already published. These tests open the gap on purpose — a synchronous standby
//! that does not exist — and check that walcast's reads wait for the change instead of
//! publishing the older row after the newer one.

mod common;

use std::time::Duration;

use common::*;
use walcast::testing::PgOptions;
use walcast::wire::{Envelope, Op, UNAVAILABLE_KEY};

const WAIT: Duration = Duration::from_secs(60);

/// Commits wait for a synchronous standby that never comes: each is flushed (and
/// streamed) but stays invisible until [`release_commits`].
async fn hold_commits(db: &tokio_postgres::Client) {
    exec(
        db,
        "ALTER SYSTEM SET synchronous_standby_names = 'walcast_test_nobody'",
    )
    .await;
    exec(db, "SELECT pg_reload_conf()").await;
    // The checkpointer takes the new setting on its own schedule.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The held commits become visible.
async fn release_commits(db: &tokio_postgres::Client) {
    exec(db, "ALTER SYSTEM RESET synchronous_standby_names").await;
    exec(db, "SELECT pg_reload_conf()").await;
}

/// `sql` run on a connection of its own, which waits for the absent standby: its
/// commit is in the WAL, not yet visible. Fails unless it is still waiting after a
/// moment (the hold did not take).
async fn commit_held(url: &str, sql: &str) -> tokio::task::JoinHandle<()> {
    let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let sql = sql.to_string();
    let writing = tokio::spawn(async move { exec(&db, &sql).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writing.is_finished(),
        "the commit should wait for the synchronous standby"
    );
    writing
}

fn big(c: char) -> String {
    std::iter::repeat_n(c, 5000).collect()
}

fn version(e: &Envelope) -> Option<i64> {
    e.column("version").and_then(|v| v.as_i64())
}

/// An update that leaves a TOASTed value unchanged, streamed before it is visible:
/// walcast's read of the row waits for it and publishes the exact value, not the
/// unavailable marker.
#[tokio::test]
async fn unchanged_toast_waits_for_its_change_to_become_visible() {
    let (s, db) = toast_table(PgOptions::default()).await;
    let w = Walcast::start(toast_read_from_table(&s)).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    exec(&db, &format!("INSERT INTO t VALUES (1, 0, '{}')", big('C'))).await;
    c.until(1, WAIT).await;

    hold_commits(&db).await;
    let writing = commit_held(&s.pg.url(), "UPDATE t SET small = 1 WHERE id = 1").await;
    release_commits(&db).await;
    writing.await.unwrap();

    let got = c.until(2, WAIT).await;
    let update = &got[1].1;
    assert_eq!(update.column("small").and_then(|v| v.as_i64()), Some(1));
    let unavailable = update
        .column("big")
        .and_then(|v| v.as_map())
        .is_some_and(|m| m.iter().any(|(k, _)| k.as_str() == Some(UNAVAILABLE_KEY)));
    assert!(!unavailable, "{}", w.with_log("published the marker"));
    assert_eq!(
        update.column("big").and_then(|v| v.as_str()),
        Some(big('C').as_str())
    );
}

/// A re-snapshot whose chunk is read while a change walcast already published is not
/// yet visible: the chunk waits for it, and no key goes back to its older row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resnapshot_never_publishes_a_row_older_than_its_last_change() {
    let (s, db) = with_sql(
        servers_with(PgOptions::default()),
        "CREATE TABLE s (id bigint PRIMARY KEY, version bigint NOT NULL);
         INSERT INTO s SELECT g, 0 FROM generate_series(1, 100) g;
         CREATE PUBLICATION walcast FOR TABLE s;",
    )
    .await;
    let args = RunArgs::new(&s, "walcast", "walcast").args(&["--status-interval", "0.2"]);
    let w = Walcast::start(args).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.s.*").await;

    hold_commits(&db).await;
    let writing = commit_held(&s.pg.url(), "UPDATE s SET version = 1 WHERE id = 7").await;
    // walcast publishes the change (its commit is in the WAL)...
    c.until_with("the update of key 7", WAIT, |got| {
        got.iter()
            .any(|(_, e, _)| e.key == "public.s:7" && version(e) == Some(1))
    })
    .await;
    // ...and is asked to read the table again while the change is still invisible.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args(["snapshot", "public.s", "--nats-url", &s.nats.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    release_commits(&db).await;
    writing.await.unwrap();
    w.wait_for_log("snapshot complete", 2, WAIT).await;
    c.collect_for(Duration::from_secs(1)).await;

    let key7: Vec<(Op, Option<i64>)> = c
        .received
        .iter()
        .filter(|(_, e, _)| e.key == "public.s:7")
        .map(|(_, e, _)| (e.op, version(e)))
        .collect();
    assert_eq!(
        key7,
        vec![(Op::Update, Some(1))],
        "{}",
        w.with_log("key 7 after the re-snapshot")
    );
    let row = db
        .query_one("SELECT version FROM s WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
}

/// Rows the stream changes while the initial snapshot is still on its way to them:
/// their chunk, read after the change, is not published again (the stream carries
/// the row's value already), so no key gets a snapshot envelope repeating the value
/// of its previous envelope, and every key ends equal to the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_stream_changed_before_their_chunk_are_not_published_twice() {
    let (rows, updated_from) = (20_000, 15_001);
    let (s, db) = with_sql(
        servers_with(PgOptions::default()),
        &format!(
            "CREATE TABLE s (id bigint PRIMARY KEY, version bigint NOT NULL);
             INSERT INTO s SELECT g, 0 FROM generate_series(1, {rows}) g;
             CREATE PUBLICATION walcast FOR TABLE s;"
        ),
    )
    .await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.s.*").await;
    let args = RunArgs::new(&s, "walcast", "walcast").args(&["--snapshot-chunk-rows", "500"]);
    let w = Walcast::start(args).await;
    exec(
        &db,
        &format!("UPDATE s SET version = 1 WHERE id >= {updated_from}"),
    )
    .await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    wait_caught_up(&db, &w, WAIT).await;
    c.collect_for(Duration::from_secs(1)).await;

    let mut last: std::collections::HashMap<&str, &Envelope> = Default::default();
    let mut repeated = 0;
    for (_, e, _) in &c.received {
        if let Some(before) = last.insert(&e.key, e) {
            if e.op == Op::Snapshot && before.value == e.value {
                repeated += 1;
            }
        }
    }
    assert_eq!(
        repeated, 0,
        "snapshot envelopes repeating the stream's value"
    );
    assert_eq!(last.len(), rows as usize);
    for (key, e) in &last {
        let id: i64 = key.rsplit(':').next().unwrap().parse().unwrap();
        let want = i64::from(id >= updated_from);
        assert_eq!(version(e), Some(want), "{key}");
    }
}

//! Exactness after a crash (issue 15): unchanged TOAST values, key changes, DDL made
//! while walcast is down, and the options no other test walks.

mod common;

use std::time::Duration;

use common::*;
use walcast::testing::PgOptions;
use walcast::wire::{Envelope, Op, UNAVAILABLE_KEY};

const WAIT: Duration = Duration::from_secs(60);

fn big(c: char) -> String {
    std::iter::repeat_n(c, 5000).collect()
}

fn column_str(e: &Envelope, name: &str) -> Option<String> {
    e.column(name).and_then(|v| v.as_str()).map(str::to_string)
}

fn is_unavailable(e: &Envelope, name: &str) -> bool {
    e.column(name)
        .and_then(|v| v.as_map())
        .is_some_and(|m| m.iter().any(|(k, _)| k.as_str() == Some(UNAVAILABLE_KEY)))
}

/// Before a crash: the initial snapshot (of no rows) recorded complete, and the flush
/// position past the inserts.
async fn settle(db: &tokio_postgres::Client, w: &Walcast) {
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    wait_caught_up(db, w, WAIT).await;
}

/// The reproduction: rows written, walcast killed, unchanged-TOAST updates and
/// a delete while it is down, walcast started again.
async fn crash_with_toast_updates(extra: &[&str]) -> Vec<Envelope> {
    let (s, db) = toast_table(PgOptions::default()).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let args = || RunArgs::new(&s, "walcast", "walcast").args(extra);
    let mut w = Walcast::start(args()).await;
    exec(
        &db,
        &format!(
            "INSERT INTO t VALUES (1, 0, '{a}'), (2, 0, '{a}')",
            a = big('A')
        ),
    )
    .await;
    c.until(2, WAIT).await;
    settle(&db, &w).await;
    w.child.start_kill().unwrap();
    w.wait_exit(WAIT).await;
    // One transaction each, as the reproduction runs them.
    for sql in [
        "UPDATE t SET small = 1 WHERE id = 1".to_string(),
        format!("UPDATE t SET big = '{}' WHERE id = 1", big('B')),
        "UPDATE t SET small = 1 WHERE id = 2".to_string(),
        "DELETE FROM t WHERE id = 2".to_string(),
    ] {
        exec(&db, &sql).await;
    }
    let w = Walcast::start(args()).await;
    let got = c.until(6, WAIT).await;
    // In commit order: key 1's two updates, key 2's update and delete.
    let after: Vec<Envelope> = got[2..].iter().map(|(_, e, _)| e.clone()).collect();
    let order: Vec<(&str, Op)> = after.iter().map(|e| (e.key.as_str(), e.op)).collect();
    assert_eq!(
        order,
        [
            ("public.t:1", Op::Update),
            ("public.t:1", Op::Update),
            ("public.t:2", Op::Update),
            ("public.t:2", Op::Delete)
        ]
    );
    drop(w);
    after
}

#[tokio::test]
async fn unchanged_toast_after_a_crash_is_the_value_it_had() {
    let e = crash_with_toast_updates(&[]).await;
    assert_eq!(
        (e[0].op, column_str(&e[0], "small").is_none()),
        (Op::Update, true)
    );
    assert_eq!(e[0].column("small").and_then(|v| v.as_i64()), Some(1));
    assert_eq!(column_str(&e[0], "big"), Some(big('A')), "key 1 #2");
    assert_eq!(column_str(&e[1], "big"), Some(big('B')), "key 1 #3");
    assert_eq!(
        column_str(&e[2], "big"),
        Some(big('A')),
        "key 2 #2: not nil"
    );
    assert_eq!(e[3].op, Op::Delete);
}

#[tokio::test]
async fn unchanged_toast_without_an_exact_source_is_marked_unavailable() {
    let e = crash_with_toast_updates(&["--delivery", "core", "--volatile-sequences"]).await;
    // The row changed (key 1) or went (key 2) since: never a later value, never nil.
    assert!(is_unavailable(&e[0], "big"), "{:?}", e[0].column("big"));
    assert_eq!(column_str(&e[1], "big"), Some(big('B')));
    assert!(is_unavailable(&e[2], "big"), "{:?}", e[2].column("big"));
}

/// Core mode, live: the row is still the version of the change, so the value read
/// from the table is exact; a tiny TOAST cache forces the read every time.
#[tokio::test]
async fn unchanged_toast_read_from_the_table_while_it_is_current() {
    let (s, db) = toast_table(PgOptions::default()).await;
    let w = Walcast::start(toast_read_from_table(&s)).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    exec(&db, &format!("INSERT INTO t VALUES (1, 0, '{}')", big('C'))).await;
    c.until(1, WAIT).await;
    for i in 1..=3 {
        exec(&db, &format!("UPDATE t SET small = {i} WHERE id = 1")).await;
        let got = c.until(1 + i, WAIT).await;
        let last = &got.last().unwrap().1;
        assert_eq!(column_str(last, "big"), Some(big('C')), "update {i}");
    }
    assert!(w.metric("walcast_toast_fetches_total").await.unwrap() >= 3.0);
}

/// An UPDATE that changes the primary key: a delete of the old key and an insert of
/// the new one, the unchanged TOAST value carried over, also after a crash.
#[tokio::test]
async fn key_change_carries_unchanged_toast_over() {
    let (s, db) = toast_table(PgOptions::default()).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, &format!("INSERT INTO t VALUES (1, 0, '{}')", big('K'))).await;
    c.until(1, WAIT).await;
    settle(&db, &w).await;
    w.child.start_kill().unwrap();
    w.wait_exit(WAIT).await;
    exec(&db, "UPDATE t SET id = 10 WHERE id = 1").await;
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let got = c.until(3, WAIT).await;
    let (old, new) = (&got[1].1, &got[2].1);
    assert_eq!(
        (old.key.as_str(), old.op, old.sequence),
        ("public.t:1", Op::Delete, 2)
    );
    assert_eq!(
        (new.key.as_str(), new.op, new.sequence),
        ("public.t:10", Op::Insert, 1)
    );
    assert_eq!(column_str(new, "big"), Some(big('K')));
}

/// DDL while walcast is down, replayed: every change gets the schema version it had.
#[tokio::test]
async fn ddl_while_down_keeps_each_change_at_its_schema_version() {
    ddl_while_down(true).await;
}

/// The same, killed while the initial snapshot is still unfinished: the resumed
/// snapshot describes the table from the catalog (its shape now), which must not
/// number the versions of the changes replayed before it.
#[tokio::test]
async fn ddl_while_down_during_the_snapshot_keeps_each_change_at_its_version() {
    ddl_while_down(false).await;
}

/// Rows written, walcast killed (once its snapshot is stored, or before), columns added, dropped and
/// retyped while it is down, walcast started again: each change at its version.
async fn ddl_while_down(snapshot_stored: bool) {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE d (id int PRIMARY KEY, a int, b text); CREATE PUBLICATION walcast FOR TABLE d;",
    )
    .await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.d.*").await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "INSERT INTO d VALUES (1, 1, 'x')").await;
    c.until(1, WAIT).await;
    if snapshot_stored {
        settle(&db, &w).await;
    } else {
        // Killed before the snapshot's completion is stored: it resumes at restart.
        wait_caught_up(&db, &w, WAIT).await;
    }
    w.child.start_kill().unwrap();
    w.wait_exit(WAIT).await;
    for sql in [
        "UPDATE d SET a = 2 WHERE id = 1",
        "ALTER TABLE d ADD COLUMN c int DEFAULT 7",
        "UPDATE d SET a = 3 WHERE id = 1",
        "ALTER TABLE d DROP COLUMN b",
        "UPDATE d SET a = 4 WHERE id = 1",
        "ALTER TABLE d ALTER COLUMN a TYPE bigint",
        "UPDATE d SET a = 5 WHERE id = 1",
    ] {
        exec(&db, sql).await;
    }
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let got = c.until(5, WAIT).await;
    let seen: Vec<(u64, i64, String, bool, bool)> = got
        .iter()
        .map(|(_, e, _)| {
            (
                e.sequence,
                e.column("a").and_then(|v| v.as_i64()).unwrap(),
                e.schema_version.clone(),
                e.column("b").is_some(),
                e.column("c").is_some(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, 1, "1.0".into(), true, false),
            (2, 2, "1.0".into(), true, false),
            (3, 3, "1.1".into(), true, true),
            (4, 4, "2.0".into(), false, true),
            (5, 5, "3.0".into(), false, true),
        ]
    );
    drop(w);
}

/// `--volatile-sequences`: sequences from memory, restarting at 1 on every start.
#[tokio::test]
async fn volatile_sequences_restart_at_one() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let args = || {
        RunArgs::new(&s, "walcast", "walcast").args(&["--delivery", "core", "--volatile-sequences"])
    };
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let mut w = Walcast::start(args()).await;
    exec(
        &db,
        "INSERT INTO t VALUES (1); DELETE FROM t WHERE id = 1; INSERT INTO t VALUES (1)",
    )
    .await;
    c.until(3, WAIT).await;
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success());
    let w = Walcast::start(args()).await;
    exec(&db, "DELETE FROM t WHERE id = 1").await;
    let got = c.until(4, WAIT).await;
    let seqs: Vec<(Op, u64)> = got.iter().map(|(_, e, _)| (e.op, e.sequence)).collect();
    assert_eq!(
        seqs,
        vec![
            (Op::Insert, 1),
            (Op::Delete, 2),
            (Op::Insert, 3),
            (Op::Delete, 1)
        ]
    );
    drop(w);
}

/// `--duplicate-window` reaches the stream walcast creates.
#[tokio::test]
async fn duplicate_window_is_the_streams() {
    let (s, _db) = servers_with_table(PgOptions::default()).await;
    let w =
        Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&["--duplicate-window", "37"]))
            .await;
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    let mut stream = js.get_stream("WALCAST").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(37));
    drop(w);
}

/// The subject filter: after a restart, keys never published need no load from the
/// stream, keys published before do, and their sequences go on.
#[tokio::test]
async fn subject_filter_spares_loads_for_new_keys_across_restarts() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "INSERT INTO t SELECT g FROM generate_series(1, 20) g").await;
    c.until(20, WAIT).await;
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success());
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(
        &db,
        "INSERT INTO t SELECT g FROM generate_series(21, 120) g",
    )
    .await;
    c.until(120, WAIT).await;
    assert_eq!(
        w.metric("walcast_key_state_loads_total").await,
        Some(0.0),
        "new keys were loaded from the stream"
    );
    exec(&db, "DELETE FROM t WHERE id <= 5").await;
    let got = c.until(125, WAIT).await;
    for (_, e, _) in &got[120..] {
        assert_eq!((e.op, e.sequence), (Op::Delete, 2), "{}", e.key);
    }
    assert_eq!(w.metric("walcast_key_state_loads_total").await, Some(5.0));
}

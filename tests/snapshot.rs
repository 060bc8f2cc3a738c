//! Existing rows (issue 11): the initial snapshot hands off to the live stream with no
//! change lost, doubled or going backwards, while a writer runs; it resumes after
//! kill -9; `--snapshot only` and `never`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use walcast::wire::{codec, Envelope, Op};

const WAIT: Duration = Duration::from_secs(120);

/// A table of `rows` rows with a per-row version, and the publication.
async fn table_with_rows(rows: i64) -> (Servers, tokio_postgres::Client) {
    table_in(servers(), rows).await
}

/// [`table_with_rows`] on these servers.
async fn table_in(s: Servers, rows: i64) -> (Servers, tokio_postgres::Client) {
    with_sql(
        s,
        &format!(
            "CREATE TABLE s (id bigint PRIMARY KEY, version bigint NOT NULL, pad text);
             INSERT INTO s SELECT g, 0, 'row ' || g FROM generate_series(1, {rows}) g;
             ANALYZE s;
             CREATE PUBLICATION walcast FOR TABLE s;"
        ),
    )
    .await
}

/// About `per_s` changes a second until `stop`: version bumps of random rows, new
/// rows above `rows`, a few deletes. Counts the changes written in `written`, and
/// returns their number.
async fn writer(
    url: String,
    rows: i64,
    per_s: u64,
    stop: tokio::sync::watch::Receiver<bool>,
    written: Arc<AtomicU64>,
) -> u64 {
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_new = rows + 1;
    let pause = Duration::from_micros(1_000_000 / per_s.max(1));
    while !*stop.borrow() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = (x % rows as u64) as i64 + 1;
        let sql = match x % 20 {
            0 => {
                next_new += 1;
                format!("INSERT INTO s VALUES ({next_new}, 0, 'new')")
            }
            1 => format!("DELETE FROM s WHERE id = {id}"),
            _ => format!("UPDATE s SET version = version + 1 WHERE id = {id}"),
        };
        db.batch_execute(&sql).await.unwrap();
        written.fetch_add(1, Ordering::SeqCst);
        // The rate is the point.
        tokio::time::sleep(pause).await;
    }
    written.load(Ordering::SeqCst)
}

/// Wait until the writer has written `more` changes after the `now`th.
async fn wait_writes(written: &AtomicU64, now: u64, more: u64) -> u64 {
    poll_until(
        format!("{more} more changes from the writer"),
        WAIT,
        || async {
            let n = written.load(Ordering::SeqCst);
            (n >= now + more).then_some(n).ok_or(n)
        },
    )
    .await
}

/// Every envelope in the stream, in stream order: any other message fails the test.
async fn stream_envelopes(nats_url: &str) -> Vec<Envelope> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
    let mut stream = js.get_stream("WALCAST").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in (state.first_sequence..=state.last_sequence).filter(|_| state.messages > 0) {
        let msg = stream
            .get_raw_message(seq)
            .await
            .expect("a message of the stream");
        let env = codec::decode(&msg.payload).map_err(|e| (seq, msg.subject, e));
        out.push(env.expect("an envelope"));
    }
    out
}

/// What a consumer replaying the stream sees, checked against the database: every key
/// dense from 1, versions never going backwards along a key, the last envelope equal
/// to the row (or a delete), every row present. Returns (envelopes, snapshot
/// envelopes, keys whose snapshot value was published twice).
async fn check_against_db(nats_url: &str, db: &tokio_postgres::Client) -> (usize, usize, usize) {
    let all = stream_envelopes(nats_url).await;
    let mut per_key: BTreeMap<String, Vec<&Envelope>> = BTreeMap::new();
    for e in &all {
        per_key.entry(e.key.clone()).or_default().push(e);
    }
    let mut doubled = 0;
    for (key, list) in &per_key {
        let seqs: Vec<u64> = list.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{key}");
        let versions: Vec<i64> = list
            .iter()
            .filter_map(|e| e.column("version").and_then(|v| v.as_i64()))
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{key} went backwards: {versions:?}"
        );
        let snapshots: Vec<&&Envelope> = list.iter().filter(|e| e.op == Op::Snapshot).collect();
        if snapshots.windows(2).any(|w| w[0].value == w[1].value) {
            doubled += 1;
        }
    }
    let rows = db.query("SELECT id, version FROM s", &[]).await.unwrap();
    let in_db: HashMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                format!("public.s:{}", r.get::<_, i64>(0)),
                r.get::<_, i64>(1),
            )
        })
        .collect();
    for (key, version) in &in_db {
        let list = per_key
            .get(key)
            .unwrap_or_else(|| panic!("{key} is in the database, never published"));
        let last = list.last().unwrap();
        assert_ne!(last.op, Op::Delete, "{key}");
        assert_eq!(
            last.column("version").and_then(|v| v.as_i64()),
            Some(*version),
            "{key}"
        );
    }
    for (key, list) in &per_key {
        if !in_db.contains_key(key) {
            assert_eq!(list.last().unwrap().op, Op::Delete, "{key} is gone");
        }
    }
    let snapshots = all.iter().filter(|e| e.op == Op::Snapshot).count();
    (all.len(), snapshots, doubled)
}

fn args(s: &Servers, extra: &[&str]) -> RunArgs<'static> {
    RunArgs::new(s, "walcast", "walcast")
        .args(&["--stream-history", "1000000", "--status-interval", "0.2"])
        .args(extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_snapshot_hands_off_to_the_stream_while_writing() {
    let rows = 20_000;
    let (s, db) = table_with_rows(rows).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let count = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(writer(s.pg.url(), rows, 1000, stopped, count.clone()));
    wait_writes(&count, 0, 300).await; // writes before the slot exists
    let w = Walcast::start(args(&s, &["--snapshot-chunk-rows", "1000"])).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    let handed_off = count.load(Ordering::SeqCst);
    wait_writes(&count, handed_off, 500).await; // writes after the hand-off
    stop.send(true).unwrap();
    let written = writing.await.unwrap();
    wait_caught_up(&db, &w, WAIT).await;
    let (checked, snapshots, doubled) = check_against_db(&s.nats.url(), &db).await;
    println!("snapshot under writes: {written} changes, {checked} envelopes, {snapshots} snapshot envelopes");
    assert!(
        snapshots as i64 >= rows - (written as i64),
        "{snapshots} snapshot envelopes"
    );
    assert_eq!(doubled, 0);
    let (_, metrics) = w.http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("walcast_snapshot_rows_total{table=\"public.s\"}"),
        "{metrics}"
    );
    assert!(w.log().contains("snapshot of public.s done"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_snapshot_resumes_without_missing_or_doubling() {
    let rows = 30_000;
    let (s, db) = table_with_rows(rows).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let count = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(writer(s.pg.url(), rows, 300, stopped, count));
    let mut w = Walcast::start(args(&s, &["--snapshot-chunk-rows", "500"])).await;
    // Kill once part of the table is out.
    let done = w
        .wait_metric(
            "walcast_snapshot_rows_total{table=\"public.s\"}",
            3000.0,
            WAIT,
        )
        .await;
    assert!(done < rows as f64, "the snapshot finished before the kill");
    w.child.start_kill().unwrap();
    w.wait_exit(WAIT).await;
    let w = Walcast::start(args(&s, &["--snapshot-chunk-rows", "500"])).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    assert!(w.log().contains("resumed=true"), "{}", w.log());
    stop.send(true).unwrap();
    writing.await.unwrap();
    wait_caught_up(&db, &w, WAIT).await;
    let (checked, snapshots, doubled) = check_against_db(&s.nats.url(), &db).await;
    println!("snapshot resumed after kill -9: {checked} envelopes, {snapshots} snapshot envelopes, {doubled} doubled");
    assert_eq!(doubled, 0, "keys published twice with the same value");
}

#[tokio::test]
async fn snapshot_only_exits_and_never_publishes_no_existing_row() {
    let (s, _db) = table_with_rows(100).await;
    let mut w = Walcast::spawn(args(&s, &["--snapshot", "only"]));
    let status = w.wait_exit(WAIT).await;
    assert!(status.success(), "{}", w.log());
    let all = stream_envelopes(&s.nats.url()).await;
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|e| e.op == Op::Snapshot && e.sequence == 1));
    // A second run: the snapshot is complete, nothing to do.
    let mut w = Walcast::spawn(args(&s, &["--snapshot", "only"]));
    assert!(w.wait_exit(WAIT).await.success());
    assert!(w.log().contains("nothing to do"), "{}", w.log());

    let (s, db) = table_with_rows(50).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.s.*").await;
    let _w = Walcast::start(args(&s, &["--snapshot", "never"])).await;
    exec(&db, "UPDATE s SET version = 1 WHERE id = 7").await;
    let got = c.until(1, WAIT).await;
    assert_eq!((got[0].1.op, got[0].1.sequence), (Op::Update, 1));
    c.assert_quiet(Duration::from_millis(500)).await;
}

/// The heartbeat comes back through the stream: its age stays small and moves.
#[tokio::test]
async fn heartbeat_age_moves() {
    let (s, _db) = table_with_rows(1).await;
    let w = Walcast::start(args(&s, &["--heartbeat-interval", "0.5"])).await;
    let age = || w.metric("walcast_heartbeat_age_seconds");
    let first = poll_until(
        w.with_log("a heartbeat"),
        Duration::from_secs(30),
        || async { age().await.filter(|a| *a > 0.0) },
    )
    .await;
    let later = poll_until(
        w.with_log(format!("the heartbeat age to move from {first}")),
        Duration::from_millis(1300),
        || async {
            match age().await {
                Some(later) if later != first => Ok(later),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(first < 5.0 && later < 5.0, "{first} {later}");
}

/// A slot walcast streamed from, dropped while it was stopped: a clear error, not a
/// silent new slot; `--recreate-slot` creates it and snapshots again: rows changed
/// meanwhile are published, rows deleted meanwhile get a delete, unchanged rows are
/// not published again.
#[tokio::test]
async fn a_lost_slot_is_an_error_until_recreated() {
    let (s, db) = table_with_rows(10).await;
    let mut w = Walcast::start(args(&s, &[])).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success());
    exec(&db, "SELECT pg_drop_replication_slot('walcast')").await;
    // Changes no slot records.
    exec(
        &db,
        "DELETE FROM s WHERE id <= 3; UPDATE s SET version = 5 WHERE id = 4;
         INSERT INTO s VALUES (11, 0, 'new')",
    )
    .await;
    let mut w = Walcast::spawn(args(&s, &[]));
    let status = w.wait_exit(WAIT).await;
    assert!(!status.success());
    let log = w.log();
    assert!(
        log.contains("replication slot \"walcast\" no longer exists"),
        "{log}"
    );
    assert!(log.contains("--recreate-slot"), "{log}");
    let w = Walcast::start(args(&s, &["--recreate-slot"])).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    wait_caught_up(&db, &w, WAIT).await;
    check_against_db(&s.nats.url(), &db).await;
    let all = stream_envelopes(&s.nats.url()).await;
    let of = |key: &str| -> Vec<(Op, u64)> {
        all.iter()
            .filter(|e| e.key == key)
            .map(|e| (e.op, e.sequence))
            .collect()
    };
    assert_eq!(of("public.s:1"), [(Op::Snapshot, 1), (Op::Delete, 2)]);
    assert_eq!(of("public.s:4"), [(Op::Snapshot, 1), (Op::Snapshot, 2)]);
    assert_eq!(
        of("public.s:5"),
        [(Op::Snapshot, 1)],
        "unchanged: not again"
    );
    assert_eq!(of("public.s:11"), [(Op::Snapshot, 1)]);
    assert_eq!(
        w.metric("walcast_snapshot_deletes_total{table=\"public.s\"}")
            .await,
        Some(3.0)
    );
}

/// `walcast snapshot` re-reads a table while walcast streams and a writer runs: the
/// changes the stream never carried (made while the table was out of the
/// publication) are repaired — rows published, vanished keys deleted — and every key
/// stays dense, never goes backwards and ends equal to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resnapshot_while_writing_repairs_what_the_stream_missed() {
    let rows = 5_000;
    let (s, db) = table_with_rows(rows).await;
    let w = Walcast::start(args(&s, &["--snapshot-chunk-rows", "700"])).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let count = Arc::new(AtomicU64::new(0));
    let writing = tokio::spawn(writer(s.pg.url(), rows, 500, stopped, count.clone()));
    let n = wait_writes(&count, 0, 100).await;
    exec(&db, "ALTER PUBLICATION walcast DROP TABLE s").await;
    exec(
        &db,
        "DELETE FROM s WHERE id BETWEEN 1 AND 20;
         UPDATE s SET version = version + 100 WHERE id BETWEEN 21 AND 40;",
    )
    .await;
    // Writes the stream never carries, too.
    wait_writes(&count, n, 100).await;
    exec(&db, "ALTER PUBLICATION walcast ADD TABLE s").await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args([
            "snapshot",
            "public.s",
            "public.nope",
            "--nats-url",
            &s.nats.url(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "an unknown table fails the command");
    assert!(stdout.contains("queued   public.s"), "{stdout}");
    assert!(stdout.contains("unknown  public.nope"), "{stdout}");
    w.wait_for_log("snapshot complete", 2, WAIT).await;
    // Writes after the re-snapshot.
    wait_writes(&count, count.load(Ordering::SeqCst), 200).await;
    stop.send(true).unwrap();
    let written = writing.await.unwrap();
    wait_caught_up(&db, &w, WAIT).await;
    let (checked, snapshots, doubled) = check_against_db(&s.nats.url(), &db).await;
    let deletes = w
        .metric("walcast_snapshot_deletes_total{table=\"public.s\"}")
        .await
        .unwrap_or(0.0);
    println!("re-snapshot under writes: {written} changes, {checked} envelopes, {snapshots} snapshot envelopes, {deletes} vanished keys deleted");
    assert_eq!(doubled, 0);
    assert!(deletes >= 20.0, "{deletes}");
    // Only rows that differ from their last envelope are published again.
    assert!(
        (snapshots as i64) < rows + 1_000,
        "{snapshots} snapshot envelopes for {rows} rows"
    );
}

/// A slot PostgreSQL invalidated (it fell behind `max_slot_wal_keep_size` while walcast
/// was stopped): a clear error naming the way out; `--recreate-slot` recovers, and a
/// row deleted meanwhile gets its delete.
#[tokio::test]
async fn an_invalidated_slot_is_an_error_until_recreated() {
    let (s, db) = table_in(
        servers_with(walcast::testing::PgOptions {
            extra_conf: vec!["max_slot_wal_keep_size = '1MB'".into()],
            ..Default::default()
        }),
        10,
    )
    .await;
    let mut w = Walcast::start(args(&s, &[])).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success());
    // While walcast is stopped: a delete the slot will lose, and WAL enough to
    // invalidate it.
    exec(&db, "DELETE FROM s WHERE id = 1").await;
    poll_until("the slot to be invalidated", WAIT, || async {
        exec(
            &db,
            "CREATE TABLE IF NOT EXISTS filler (g int, x text);
             INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g;
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await;
        let status: Option<String> = db
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walcast'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    let mut w = Walcast::spawn(args(&s, &[]));
    assert!(!w.wait_exit(WAIT).await.success());
    let log = w.log();
    assert!(log.contains("lost WAL it needs"), "{log}");
    assert!(log.contains("--recreate-slot"), "{log}");
    let w = Walcast::start(args(&s, &["--recreate-slot"])).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    wait_caught_up(&db, &w, WAIT).await;
    check_against_db(&s.nats.url(), &db).await;
    let all = stream_envelopes(&s.nats.url()).await;
    let one: Vec<(Op, u64)> = all
        .iter()
        .filter(|e| e.key == "public.s:1")
        .map(|e| (e.op, e.sequence))
        .collect();
    assert_eq!(one, [(Op::Snapshot, 1), (Op::Delete, 2)]);
}

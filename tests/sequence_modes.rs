//! Where sequences come from: column mode (with and without JetStream), tracked mode
//! across restarts, schema versions across restarts, and byte-identical envelopes
//! for the same change.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use walcast::testing::{NatsServer, PgOptions, PgServer};
use walcast::wire::codec::Op;

const WAIT: Duration = Duration::from_secs(30);

async fn restart(w: &mut Walcast, args: RunArgs<'_>) -> Walcast {
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success(), "{}", w.log());
    let next = Walcast::start(args).await;
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_mode_works_on_core_nats_and_tracked_mode_refuses_without_jetstream() {
    let pg = PgServer::start(PgOptions::default()).unwrap();
    let nats = NatsServer::start_with(false).unwrap();
    let s = Servers { pg, nats };
    let db = s.pg.client().await;
    install_sequence_helper(&db).await;
    exec(
        &db,
        "CREATE TABLE acct (id int PRIMARY KEY, balance int);
         SELECT walcast_install_sequence('acct');
         CREATE TABLE other (id int PRIMARY KEY);
         CREATE PUBLICATION colpub FOR TABLE acct;
         CREATE PUBLICATION mixed FOR TABLE acct, other;",
    )
    .await;

    // A tracked table without JetStream: refused, naming the table and the ways out.
    let args = RunArgs::new(&s, "mixed", "s_mixed")
        .args(&["--column-sequence", "public.acct=walcast_seq"]);
    let mut refused = Walcast::spawn(args);
    let status = refused.wait_exit(WAIT).await;
    assert!(!status.success());
    let log = refused.log();
    let last = log
        .lines()
        .find(|l| l.starts_with("walcast: error:"))
        .unwrap_or_default();
    assert!(
        last.contains("has no JetStream") && last.contains("public.other"),
        "{log}"
    );

    let mut collector = Collector::new(&s.nats.url(), "walcast.public.acct.*").await;
    let args =
        RunArgs::new(&s, "colpub", "s_col").args(&["--column-sequence", "public.acct=walcast_seq"]);
    let mut w = Walcast::start(args).await;
    exec(&db, "INSERT INTO acct VALUES (1, 10)").await;
    exec(&db, "UPDATE acct SET balance = 20 WHERE id = 1").await;
    exec(&db, "UPDATE acct SET balance = 30 WHERE id = 1").await;
    exec(&db, "DELETE FROM acct WHERE id = 1").await;
    let got = collector.until(4, WAIT).await;
    let seqs: Vec<(Op, u64)> = got.iter().map(|(_, e, _)| (e.op, e.sequence)).collect();
    assert_eq!(
        seqs,
        [
            (Op::Insert, 1),
            (Op::Update, 2),
            (Op::Update, 3),
            (Op::Delete, 4)
        ]
    );
    // The sequence is the row's own column: a refetch is a plain SELECT.
    assert_eq!(
        got[2].1.column("walcast_seq").and_then(|v| v.as_u64()),
        Some(3)
    );
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracked_sequences_and_schema_versions_survive_restarts() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE t (id int PRIMARY KEY, a text);
         CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "INSERT INTO t VALUES (1, 'x'), (2, 'y')").await;
    exec(&db, "UPDATE t SET a = 'x2' WHERE id = 1").await;
    exec(&db, "ALTER TABLE t ADD COLUMN b int").await;
    exec(&db, "UPDATE t SET b = 1 WHERE id = 1").await;
    collector.until(4, WAIT).await;

    let mut w = restart(&mut w, RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "UPDATE t SET b = 2 WHERE id = 1").await;
    exec(&db, "ALTER TABLE t DROP COLUMN a").await;
    exec(&db, "UPDATE t SET b = 3 WHERE id = 2").await;
    collector.until(6, WAIT).await;

    let mut w = restart(&mut w, RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "UPDATE t SET b = 4 WHERE id = 1").await;
    let got = collector.until(7, WAIT).await;
    let seen: Vec<(String, u64, String)> = got
        .iter()
        .map(|(_, e, _)| (e.key.clone(), e.sequence, e.schema_version.clone()))
        .collect();
    let k = |i: u32, seq: u64, v: &str| (format!("public.t:{i}"), seq, v.to_string());
    assert_eq!(
        seen,
        [
            k(1, 1, "1.0"),
            k(2, 1, "1.0"),
            k(1, 2, "1.0"),
            k(1, 3, "1.1"),
            k(1, 4, "1.1"),
            k(2, 2, "2.0"),
            k(1, 5, "2.0"),
        ],
        "{}",
        w.log()
    );
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_change_always_encodes_to_the_same_bytes() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric, j jsonb, ts timestamptz);
         CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    for slot in ["first", "second"] {
        exec(
            &db,
            &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
        )
        .await;
    }
    for i in 0..50 {
        exec(
            &db,
            &format!("INSERT INTO t VALUES ({i}, 'v{i}', {i}.5, '{{\"i\": {i}}}', now()) ON CONFLICT (id) DO UPDATE SET v = excluded.v || 'u'"),
        )
        .await;
        exec(&db, &format!("UPDATE t SET n = n + 1 WHERE id = {}", i / 2)).await;
    }
    // Two independent walcasts replay the same WAL from slots made at the same point,
    // into two streams: every envelope must be byte-for-byte the same.
    let mut a_sub = Collector::new(&s.nats.url(), "first.>").await;
    let mut b_sub = Collector::new(&s.nats.url(), "second.>").await;
    let mut runs = Vec::new();
    for name in ["first", "second"] {
        let args = RunArgs::new(&s, "walcast", name).args(&[
            "--subject-prefix",
            name,
            "--stream",
            &name.to_uppercase(),
        ]);
        runs.push(Walcast::start(args).await);
    }
    let a = a_sub.until(100, WAIT).await.to_vec();
    let b = b_sub.until(100, WAIT).await.to_vec();
    let index =
        |v: &[(String, walcast::wire::codec::Envelope, Vec<u8>)]| -> BTreeMap<(String, u64), Vec<u8>> {
            v.iter()
                .map(|(_, e, bytes)| ((e.key.clone(), e.sequence), bytes.clone()))
                .collect()
        };
    let (ia, ib) = (index(&a), index(&b));
    assert_eq!(ia.len(), 100);
    assert_eq!(ia, ib);
}

/// `--delete-ttl` in column mode: a key's `delete` leaves the stream after its TTL
/// (the subject then has no message), the key's other envelopes and other keys stay,
/// and walcast publishes on after it (a re-inserted key starts at its column's 1).
/// For a tracked table it is refused at start, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_mode_deletes_expire_and_tracked_tables_refuse_delete_ttl() {
    let s = servers();
    let db = s.pg.client().await;
    install_sequence_helper(&db).await;
    exec(
        &db,
        "CREATE TABLE acct (id int PRIMARY KEY, balance int);
         SELECT walcast_install_sequence('acct');
         CREATE TABLE other (id int PRIMARY KEY);
         CREATE PUBLICATION colpub FOR TABLE acct;
         CREATE PUBLICATION mixed FOR TABLE acct, other;",
    )
    .await;
    let column = ["--column-sequence", "public.acct=walcast_seq"];

    let args = RunArgs::new(&s, "mixed", "s_mixed")
        .args(&column)
        .args(&["--delete-ttl", "public.other=1"]);
    let mut refused = Walcast::spawn(args);
    assert!(!refused.wait_exit(WAIT).await.success());
    let log = refused.log();
    let error = log.lines().find(|l| l.starts_with("walcast: error:"));
    let error = error.unwrap_or_default();
    assert!(
        error.contains("--delete-ttl public.other: refused")
            && error.contains("tracked mode")
            && error.contains("reuse"),
        "{log}"
    );

    let mut collector = Collector::new(&s.nats.url(), "walcast.public.acct.*").await;
    let args = RunArgs::new(&s, "colpub", "s_col")
        .args(&column)
        .args(&["--delete-ttl", "public.acct=2"]);
    let mut w = Walcast::start(args).await;
    exec(&db, "INSERT INTO acct VALUES (1, 10), (2, 20)").await;
    exec(&db, "DELETE FROM acct WHERE id = 1").await;
    exec(&db, "UPDATE acct SET balance = 21 WHERE id = 2").await;
    collector.until(4, WAIT).await;
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("WALCAST").await.unwrap();
    assert!(stream.cached_info().config.allow_message_ttl);
    let last = |subject: &'static str| {
        let stream = stream.clone();
        async move {
            stream
                .direct_get_last_for_subject(subject)
                .await
                .ok()
                .map(|m| walcast::wire::decode(&m.payload).unwrap())
        }
    };
    // Without a TTL the delete would be the subject's last message for good.
    poll_until("the delete to expire", WAIT, || async {
        last("walcast.public.acct.1").await.is_none()
    })
    .await;
    let kept = last("walcast.public.acct.2")
        .await
        .expect("an update has no TTL");
    assert_eq!((kept.op, kept.sequence), (Op::Update, 2));
    w.assert_running();

    exec(&db, "INSERT INTO acct VALUES (1, 5)").await;
    let got = collector.until(5, WAIT).await;
    assert_eq!((got[4].1.op, got[4].1.sequence), (Op::Insert, 1));
    poll_until("the new insert in the stream", WAIT, || async {
        last("walcast.public.acct.1").await.is_some()
    })
    .await;
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success(), "{}", w.log());
}

/// Column mode on JetStream: a key deleted and inserted again repeats its sequences
/// (1 again), and the stream keeps the new insert, not the delete: the message id
/// names the commit, so the duplicate window does not take the insert for a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_mode_keeps_a_key_inserted_again_after_its_delete() {
    let s = servers();
    let db = s.pg.client().await;
    install_sequence_helper(&db).await;
    exec(
        &db,
        "CREATE TABLE acct (id int PRIMARY KEY, balance int);
         SELECT walcast_install_sequence('acct');
         CREATE PUBLICATION walcast FOR TABLE acct;",
    )
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.public.acct.*").await;
    let args = RunArgs::new(&s, "walcast", "walcast")
        .args(&["--column-sequence", "public.acct=walcast_seq"]);
    let w = Walcast::start(args).await;
    exec(&db, "INSERT INTO acct VALUES (1, 10)").await;
    exec(&db, "DELETE FROM acct WHERE id = 1").await;
    exec(&db, "INSERT INTO acct VALUES (1, 5)").await;
    collector.until(3, WAIT).await;
    wait_caught_up(&db, &w, WAIT).await;
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream("WALCAST")
        .await
        .unwrap();
    let msg = stream
        .direct_get_last_for_subject("walcast.public.acct.1")
        .await
        .unwrap();
    let last = walcast::wire::decode(&msg.payload).unwrap();
    assert_eq!((last.op, last.sequence), (Op::Insert, 1), "{last:?}");
    assert_eq!(last.column("balance").and_then(|v| v.as_i64()), Some(5));
}

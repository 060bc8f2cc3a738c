//! Delivery guarantees under NATS and PostgreSQL faults, keepalives, authentication
//! methods, and bad input (each a clear one-line error and a non-zero exit).

mod common;

use std::time::Duration;

use common::*;
use walcast::testing::{free_port, PgOptions};
use walcast::testing::{ConnectParams, ReplicationConnection, SourceError};
use walcast::wire::Lsn;

const WAIT: Duration = Duration::from_secs(30);

/// `t (id int PRIMARY KEY, v int)` in the publication `walcast`.
const T_ID_V: &str =
    "CREATE TABLE t (id int PRIMARY KEY, v int); CREATE PUBLICATION walcast FOR TABLE t;";

/// The end LSN of the one transaction (of the publication `walcast`) that the
/// throwaway slot `probe` has seen: the end LSN field of pgoutput's Commit message,
/// what walcast receives for the transaction and reports as flushed once it is
/// confirmed. Exact: unlike `pg_current_wal_lsn()` read after the commit, WAL written
/// after it (a heartbeat) does not move it, so a flush position at or past it means
/// the transaction was reported flushed.
async fn commit_end_lsn(db: &tokio_postgres::Client, probe: &str) -> Lsn {
    let row = db
        .query_one(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                 'proto_version', '1', 'publication_names', 'walcast')
             WHERE get_byte(data, 0) = ascii('C')",
            &[&probe],
        )
        .await
        .expect("one commit in the probe slot");
    // Commit: 'C', flags (1 byte), commit LSN (8), end LSN (8), time (8).
    let data: Vec<u8> = row.get(0);
    Lsn(u64::from_be_bytes(data[10..18].try_into().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_lsn_advances_only_after_nats_confirmed() {
    let (mut s, db) = with_sql(
        servers(),
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    let w =
        Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&["--confirm-timeout", "1"]))
            .await;
    exec(&db, "INSERT INTO t VALUES (1, 'before')").await;
    let lsn_before_outage = wait_caught_up(&db, &w, WAIT).await;

    s.nats.kill();
    exec(
        &db,
        "SELECT pg_create_logical_replication_slot('probe', 'pgoutput')",
    )
    .await;
    exec(&db, "INSERT INTO t VALUES (2, 'during outage')").await;
    let commit_end = commit_end_lsn(&db, "probe").await;
    exec(&db, "SELECT pg_drop_replication_slot('probe')").await;
    // For several confirmation timeouts, the slot must not move past the change: the
    // time is the point here.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let flushed = confirmed_flush(&db, "walcast").await;
        assert!(
            flushed < commit_end,
            "flush {flushed} reached the commit's end {commit_end} while NATS was down"
        );
    }
    assert!(confirmed_flush(&db, "walcast").await >= lsn_before_outage);

    s.nats.start_again().unwrap();
    wait_confirmed(&db, &w, commit_end, WAIT).await;
    // What the slot confirmed did reach NATS: walcast's stream holds it.
    let nats = async_nats::connect(s.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream = js.get_stream("WALCAST").await.unwrap();
    let msg = stream
        .get_last_raw_message_by_subject("walcast.public.t.2")
        .await
        .expect("the change made during the outage is in the stream");
    let env = walcast::wire::codec::decode(&msg.payload).unwrap();
    assert_eq!(
        env.column("v").and_then(|v| v.as_str()),
        Some("during outage")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_survives_wal_sender_timeout() {
    let (s, db) = servers_with_table(PgOptions {
        wal_sender_timeout: "2s".into(),
        ..Default::default()
    })
    .await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.>").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    // Idle for several wal_sender_timeouts: the time is the point.
    tokio::time::sleep(Duration::from_secs(7)).await;
    exec(&db, "INSERT INTO t VALUES (1)").await;
    collector.until(1, WAIT).await;
    assert_eq!(
        w.metric("walcast_reconnects_total").await,
        Some(0.0),
        "{}",
        w.log()
    );
    assert!(!w.log().contains("reconnecting"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_by_itself_when_postgres_restarts() {
    let (mut s, db) = with_sql(servers(), T_ID_V).await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.>").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "INSERT INTO t VALUES (1, 1)").await;
    collector.until(1, WAIT).await;
    s.pg.crash();
    s.pg.start_again().unwrap();
    let db = s.pg.client().await;
    exec(
        &db,
        "INSERT INTO t VALUES (2, 2); UPDATE t SET v = 10 WHERE id = 1",
    )
    .await;
    collector.until(3, WAIT).await;
    let seqs: Vec<(String, u64)> = collector
        .received
        .iter()
        .map(|(_, e, _)| (e.key.clone(), e.sequence))
        .collect();
    assert_eq!(
        seqs,
        [
            ("public.t:1".into(), 1),
            ("public.t:2".into(), 1),
            ("public.t:1".into(), 2)
        ]
    );
    collector.assert_quiet(Duration::from_secs(1)).await;
    assert!(w.metric("walcast_reconnects_total").await.unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_scram_md5_cleartext_and_unix_sockets() {
    let (s, _db) = with_sql(
        servers(),
        "CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'pw-scram';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'pw-md5';
         RESET password_encryption;
         CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'pw-clear';",
    )
    .await;
    for (user, pw) in [
        ("scram_user", "pw-scram"),
        ("md5_user", "pw-md5"),
        ("clear_user", "pw-clear"),
    ] {
        let params = ConnectParams::from_url(&s.pg.url_for(user, Some(pw), "postgres")).unwrap();
        let mut conn = ReplicationConnection::connect(&params)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let sys = conn.identify_system().await.unwrap();
        assert_eq!(sys.dbname.as_deref(), Some("postgres"), "{user}");
        let bad = ConnectParams::from_url(&s.pg.url_for(user, Some("wrong"), "postgres")).unwrap();
        let err = ReplicationConnection::connect(&bad)
            .await
            .err()
            .expect("wrong password accepted");
        assert!(matches!(err, SourceError::Auth(_)), "{user}: {err}");
    }
    let unix = format!(
        "host={} port={} user=postgres dbname=postgres",
        s.pg.socket_dir().display(),
        s.pg.port
    );
    let mut conn = ReplicationConnection::connect(&ConnectParams::from_url(&unix).unwrap())
        .await
        .unwrap();
    assert!(conn.identify_system().await.unwrap().xlog_pos > Lsn(0));
}

/// The last line of stderr: the error walcast reports.
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("walcast: error:"))
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_one_line_error_and_a_non_zero_exit() {
    let (s, db) = with_sql(
        servers(),
        "CREATE ROLE pw_user LOGIN REPLICATION PASSWORD 'right';
         CREATE TABLE keyed (id int PRIMARY KEY);
         CREATE TABLE nokey (a int, b text);
         CREATE PUBLICATION good FOR TABLE keyed;
         CREATE PUBLICATION bad FOR TABLE keyed, nokey;",
    )
    .await;
    let nats = s.nats.url();
    let metrics = format!("127.0.0.1:{}", free_port());
    let run = |url: String, publication: &'static str| {
        let (nats, metrics) = (nats.clone(), metrics.clone());
        async move {
            run_to_exit(&[
                "run",
                "--postgres-url",
                &url,
                "--nats-url",
                &nats,
                "--publication",
                publication,
                "--metrics-addr",
                &metrics,
                "--connect-timeout",
                "3",
            ])
            .await
        }
    };

    let (code, err) = run(s.pg.url_for("pw_user", Some("wrong"), "postgres"), "good").await;
    assert_ne!(code, 0);
    assert!(
        error_line(&err).contains("password authentication failed"),
        "{err}"
    );

    let closed = free_port();
    let (code, err) = run(
        format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
        "good",
    )
    .await;
    assert_ne!(code, 0);
    assert!(error_line(&err).contains("onnect"), "{err}");
    assert!(error_line(&err).contains("refused"), "{err}");

    let (code, err) = run(s.pg.url(), "missing_pub").await;
    assert_ne!(code, 0);
    assert!(
        error_line(&err).contains("publication \"missing_pub\" does not exist"),
        "{err}"
    );

    let (code, err) = run(s.pg.url(), "bad").await;
    assert_ne!(code, 0);
    assert!(error_line(&err).contains("public.nokey"), "{err}");
    assert!(error_line(&err).contains("no primary key"), "{err}");

    let (code, err) = run_to_exit(&[
        "run",
        "--postgres-url",
        &s.pg.url(),
        "--nats-url",
        "nats://127.0.0.1:1",
        "--publication",
        "good",
        "--metrics-addr",
        &metrics,
        "--connect-timeout",
        "2",
    ])
    .await;
    assert_ne!(code, 0);
    assert!(error_line(&err).contains("cannot connect to NATS"), "{err}");

    let (code, err) =
        run_to_exit(&["run", "--postgres-url", &s.pg.url(), "--slot", "Bad-Name"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("not a valid slot name"), "{err}");

    // No slot was left behind by the failed starts.
    let slots: i64 = db
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_logical_wal_level_is_refused() {
    let (s, _db) = servers_with_table(PgOptions {
        wal_level: "replica".into(),
        ..Default::default()
    })
    .await;
    let (code, err) = run_to_exit(&[
        "run",
        "--postgres-url",
        &s.pg.url(),
        "--nats-url",
        &s.nats.url(),
        "--metrics-addr",
        &format!("127.0.0.1:{}", free_port()),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(error_line(&err).contains("wal_level is 'replica'"), "{err}");
    assert!(error_line(&err).starts_with("walcast: error:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_walcast_waits_for_the_slot_and_takes_over() {
    let (s, db) = with_sql(servers(), T_ID_V).await;
    let mut collector = Collector::new(&s.nats.url(), "walcast.>").await;
    let mut active = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let mut standby = Walcast::spawn(RunArgs::new(&s, "walcast", "walcast"));
    // The standby is alive but not ready, and says why.
    standby.wait_standing_by(WAIT).await;
    exec(&db, "INSERT INTO t VALUES (1, 1)").await;
    collector.until(1, WAIT).await;
    active.child.start_kill().unwrap();
    active.wait_exit(WAIT).await;
    exec(&db, "INSERT INTO t VALUES (2, 2)").await;
    standby.wait_ready().await;
    // At-least-once: the standby may replay what the killed one published but had not
    // yet reported as flushed; a replay is byte-identical, never a different change.
    collector
        .until_with("public.t:2 from the standby", WAIT, |got| {
            got.iter().any(|(_, e, _)| e.key == "public.t:2")
        })
        .await;
    let mut seen: std::collections::HashMap<(String, u64), Vec<u8>> = Default::default();
    for (_, env, bytes) in &collector.received {
        let prev = seen
            .entry((env.key.clone(), env.sequence))
            .or_insert_with(|| bytes.clone());
        assert_eq!(
            prev, bytes,
            "two different envelopes for {} #{}",
            env.key, env.sequence
        );
    }
    assert_eq!(seen.len(), 2);
}

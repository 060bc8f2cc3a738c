//! Operator commands under hardening: metrics host names, tail patterns and replays, a
//! setting's column dropped while running, teardown of a non-default slot (split from
//! hardening.rs).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use walcast::testing::{free_port, PgOptions};

/// Defect 12: a host name in `--metrics-addr`, and invalid `tail` patterns.
#[tokio::test]
async fn metrics_host_names_and_tail_patterns() {
    let (s, _db) = servers_with_table(PgOptions::default()).await;
    let port = free_port();
    let mut w = Walcast::spawn(
        RunArgs::new(&s, "walcast", "walcast")
            .args(&["--metrics-addr", &format!("localhost:{port}")]),
    );
    w.metrics_port = port;
    w.wait_ready().await;
    for bad in ["walcast.>.x", "walcast..t", "walcast. t", ""] {
        let (code, err) = run_to_exit(&["tail", bad, "--nats-url", &s.nats.url()]).await;
        assert_ne!(code, 0, "{bad:?} accepted");
        assert!(err.contains("subject"), "{bad:?}: {err}");
    }
}

/// A column that include/exclude settings name, dropped while walcast runs: a warning
/// and a metric, the stream goes on.
#[tokio::test]
async fn a_setting_column_dropped_while_running_is_a_warning() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE users (id int PRIMARY KEY, email text, name text); CREATE PUBLICATION walcast FOR TABLE users;",
    )
    .await;
    let mut w = Walcast::start(
        RunArgs::new(&s, "walcast", "walcast").args(&["--exclude-column", "public.users=email"]),
    )
    .await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.users.*").await;
    exec(&db, "INSERT INTO users VALUES (1, 'a@b', 'ada')").await;
    let got = c.until(1, Duration::from_secs(30)).await;
    assert!(
        got[0].1.column("email").is_none(),
        "excluded column published"
    );
    exec(
        &db,
        "ALTER TABLE users DROP COLUMN email; INSERT INTO users VALUES (2, 'bob')",
    )
    .await;
    let got = c.until(2, Duration::from_secs(30)).await;
    assert_eq!(
        got[1].1.column("name").and_then(|v| v.as_str()),
        Some("bob")
    );
    assert!(w.child.try_wait().unwrap().is_none(), "{}", w.log());
    let (_, metrics) = w.http_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("walcast_setting_columns_missing_total{table=\"public.users\"} 1")),
        "{metrics}"
    );
    assert!(w.log().contains("no longer has columns"), "{}", w.log());
}

/// `walcast teardown` lists, then removes the slot, the streams and (asked for) the
/// publication of a non-default slot.
#[tokio::test]
async fn teardown_removes_the_slot_streams_and_publication() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "trial_slot")).await;
    w.sigterm();
    assert!(w.wait_exit(Duration::from_secs(30)).await.success());
    let base = [
        "teardown",
        "--postgres-url",
        &s.pg.url(),
        "--nats-url",
        &s.nats.url(),
        "--slot",
        "trial_slot",
        "--drop-publication",
    ];
    let run = |extra: &'static [&'static str]| {
        let mut args: Vec<String> = base.iter().map(|a| a.to_string()).collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
                .args(&args)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let listed = run(&["--dry-run"]).await;
    for what in [
        "would remove replication slot trial_slot",
        "would remove publication walcast",
        "would remove stream WALCAST",
        "would remove stream WALCAST_META",
    ] {
        assert!(listed.contains(what), "{listed}");
    }
    let count = db
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(count, 1, "a dry run removes nothing");
    let removed = run(&[]).await;
    assert!(
        removed.contains("removed replication slot trial_slot"),
        "{removed}"
    );
    let count = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(count, 0, "slot and publication remain");
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    assert!(js.get_stream("WALCAST").await.is_err(), "stream remains");
    assert!(run(&[]).await.contains("no replication slot trial_slot"));
}

/// `walcast tail` drops a replay (same key, sequence not above the last shown).
#[tokio::test]
async fn tail_drops_replays() {
    let s = servers();
    let before = subscriptions_to(&s.nats, "walcast.>").await;
    let tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args([
            "tail",
            "walcast.>",
            "--nats-url",
            &s.nats.url(),
            "--count",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_subscribed(&s.nats, "walcast.>", before + 1).await;
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let env = |seq: u64| walcast::wire::Envelope {
        key: "public.t:1".into(),
        op: walcast::wire::Op::Update,
        value: rmpv::Value::Map(vec![("id".into(), 1.into())]),
        schema_version: "1.0".into(),
        sequence: seq,
        lsn: 1,
        commit_ts: walcast::wire::Timestamp {
            seconds: 1,
            nanos: 0,
        },
        xid: None,
        tx_index: None,
        before: None,
        compression: None,
        key_id: None,
    };
    for seq in [1, 1, 1, 2] {
        client
            .publish("walcast.public.t.1", env(seq).to_bytes().into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), tail.wait_with_output())
        .await
        .expect("tail did not print two envelopes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seqs: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("seq=")))
        .collect();
    assert_eq!(seqs, ["seq=1", "seq=2"], "{stdout}");
}

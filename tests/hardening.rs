//! Production hardening: what a new user hit in the first hour (issue 10), each
//! against real PostgreSQL and nats-server instances.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use walcast::testing::{free_port, NatsServer, PgOptions};

const NATS_SECRET: &str = "Nats-S3cret-4410";

fn ids(received: &[(String, walcast::wire::Envelope, Vec<u8>)]) -> BTreeSet<i64> {
    received
        .iter()
        .filter_map(|(_, e, _)| e.column("id").and_then(|v| v.as_i64()))
        .collect()
}

/// Defect 1: a clean (`-m fast`) PostgreSQL restart is a transient condition.
#[tokio::test]
async fn clean_postgres_restart_mid_stream_loses_nothing() {
    let (mut s, db) = servers_with_table(PgOptions::default()).await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    insert_range(&db, 1, 50).await;
    c.until(50, Duration::from_secs(30)).await;
    drop(db);
    // A fast shutdown (SIGINT); PostgreSQL comes back once walcast has seen it gone.
    s.pg.stop();
    w.wait_metric("walcast_reconnects_total", 1.0, Duration::from_secs(30))
        .await;
    s.pg.start_again().unwrap();
    let db = s.pg.client().await;
    insert_range(&db, 51, 100).await;
    let got = c.until(100, Duration::from_secs(60)).await;
    assert_eq!(ids(got), (1..=100).collect::<BTreeSet<_>>());
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "walcast exited after a clean restart:\n{}",
        w.log()
    );
    w.wait_ready().await;
}

/// Defect 2: credentials in the NATS URL (user/password and token) are used; a wrong
/// password is a clear error at start.
#[tokio::test]
async fn nats_credentials_in_the_url_are_used() {
    for (conf, user_info) in [
        (
            format!("authorization {{ user: walcast, password: \"{NATS_SECRET}\" }}"),
            format!("walcast:{NATS_SECRET}"),
        ),
        (
            format!("authorization {{ token: \"{NATS_SECRET}\" }}"),
            NATS_SECRET.to_string(),
        ),
    ] {
        let (mut s, db) = servers_with_table(PgOptions::default()).await;
        s.nats = NatsServer::start_with_config(&conf).unwrap();
        let url = format!("nats://{user_info}@127.0.0.1:{}", s.nats.port);
        let mut args = RunArgs::new(&s, "walcast", "walcast");
        args.nats_url = url.clone();
        let w = Walcast::start(args).await;
        let mut c = Collector::new(&url, "walcast.public.t.*").await;
        insert_range(&db, 1, 3).await;
        assert_eq!(ids(c.until(3, Duration::from_secs(30)).await).len(), 3);
        assert!(!w.log().contains(NATS_SECRET), "{}", w.log());
    }

    let (mut s, _db) = servers_with_table(PgOptions::default()).await;
    s.nats = NatsServer::start_with_config(&format!(
        "authorization {{ user: walcast, password: \"{NATS_SECRET}\" }}"
    ))
    .unwrap();
    let wrong = format!(
        "nats://walcast:wrong-{NATS_SECRET}@127.0.0.1:{}",
        s.nats.port
    );
    let started = Instant::now();
    let (code, err) = run_to_exit(&[
        "run",
        "--postgres-url",
        &s.pg.url(),
        "--nats-url",
        &wrong,
        "--metrics-addr",
        &format!("127.0.0.1:{}", free_port()),
    ])
    .await;
    assert_ne!(code, 0, "{err}");
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    assert!(!err.contains(NATS_SECRET), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused credentials are not retried"
    );
}

/// Defect 3: `/readyz` follows the NATS connection.
#[tokio::test]
async fn readiness_follows_nats() {
    let (mut s, _db) = servers_with_table(PgOptions::default()).await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    s.nats.kill();
    let body = poll_until(
        "/readyz to answer 503 after NATS died",
        Duration::from_secs(5),
        || async {
            match w.http_get("/readyz").await {
                Some((503, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(body.contains("NATS"), "{body}");
    s.nats.start_again().unwrap();
    w.wait_ready().await;
}

/// Defect 5: per-table settings naming a table or column that does not exist.
#[tokio::test]
async fn table_setting_typos_are_refused() {
    let (s, _db) = with_sql(
        servers(),
        "CREATE TABLE users (id int PRIMARY KEY, email text); CREATE PUBLICATION walcast FOR TABLE users;",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    for (toml, named) in [
        (
            "[tables.\"public.users\"]\nexclude_columns = [\"emial\"]\n",
            "emial",
        ),
        (
            "[tables.\"public.userz\"]\nops = [\"insert\"]\n",
            "public.userz",
        ),
        (
            "[tables.\"public.users\"]\nsequence_column = \"seq\"\n",
            "seq",
        ),
    ] {
        let file = dir.path().join("walcast.toml");
        std::fs::write(&file, toml).unwrap();
        let file = file.to_string_lossy().into_owned();
        let metrics = format!("127.0.0.1:{}", free_port());
        let common = [
            "--postgres-url",
            &s.pg.url(),
            "--nats-url",
            &s.nats.url(),
            "--config",
            &file,
        ];
        let mut run = vec!["run", "--metrics-addr", &metrics];
        run.extend(common);
        let (code, err) = run_to_exit(&run).await;
        assert_ne!(code, 0, "{toml}: {err}");
        assert!(err.contains(named), "{toml}: {err}");
        let mut check = vec!["check"];
        check.extend(common);
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(&check)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success());
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains(named)),
            "{toml}: {stdout}"
        );
    }
}

/// Defect 6: a keyless table added to the publication while walcast runs is refused
/// on its own; the other tables go on streaming.
#[tokio::test]
async fn keyless_table_added_mid_stream_does_not_stop_the_others() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    exec(
        &db,
        "CREATE TABLE nokey (v int); ALTER PUBLICATION walcast ADD TABLE nokey; INSERT INTO nokey VALUES (1);",
    )
    .await;
    insert_range(&db, 1, 5).await;
    assert_eq!(ids(c.until(5, Duration::from_secs(30)).await).len(), 5);
    assert!(w.child.try_wait().unwrap().is_none(), "{}", w.log());
    let (_, metrics) = w.http_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("walcast_keyless_changes_skipped_total{table=\"public.nokey\"} 1")),
        "{metrics}"
    );
    let (code, body) = w.http_get("/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("public.nokey"), "{body}");
    assert!(w.log().contains("public.nokey"), "{}", w.log());
    // The fix as the log gives it: the table leaves the publication; later changes
    // of it are not streamed, the others are.
    exec(
        &db,
        "ALTER PUBLICATION walcast DROP TABLE nokey; INSERT INTO nokey VALUES (2);",
    )
    .await;
    insert_range(&db, 6, 6).await;
    c.until(6, Duration::from_secs(30)).await;
    let (_, metrics) = w.http_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("walcast_keyless_changes_skipped_total{table=\"public.nokey\"} 1")),
        "{metrics}"
    );
}

/// Defect 7: with PostgreSQL and NATS down at start, walcast waits for them.
#[tokio::test]
async fn startup_waits_for_postgres_and_nats() {
    let (mut s, db) = servers_with_table(PgOptions::default()).await;
    drop(db);
    s.pg.stop();
    s.nats.kill();
    let mut w =
        Walcast::spawn(RunArgs::new(&s, "walcast", "walcast").args(&["--connect-timeout", "30"]));
    // Still waiting after 5 s without either, and 5 s without NATS: the time is the
    // point.
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.assert_running();
    s.pg.start_again().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.assert_running();
    s.nats.start_again().unwrap();
    w.wait_ready().await;
    let log = w.log();
    assert!(log.contains("waiting for PostgreSQL"), "{log}");
    assert!(log.contains("waiting for NATS"), "{log}");
}

/// Defect 8: shutdown during a NATS outage ends within its budget and fails.
#[tokio::test]
async fn shutdown_during_a_nats_outage_is_bounded_and_fails() {
    let (mut s, db) = servers_with_table(PgOptions::default()).await;
    let mut w =
        Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&["--shutdown-timeout", "4"]))
            .await;
    // Its start-up work done (the initial snapshot needs NATS too).
    w.wait_for_log("snapshot complete", 1, Duration::from_secs(30))
        .await;
    s.nats.kill();
    insert_range(&db, 1, 100).await;
    // The changes are in walcast, unconfirmed.
    w.wait_metric("walcast_transactions_total", 1.0, Duration::from_secs(30))
        .await;
    w.sigterm();
    let started = Instant::now();
    let status = w.wait_exit(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert!(
        !status.success(),
        "exit 0 with unconfirmed changes:\n{}",
        w.log()
    );
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?}:\n{}",
        w.log()
    );
    assert!(w.log().contains("safe in the slot"), "{}", w.log());
    // Safe indeed: with NATS and walcast back, all 100 rows arrive.
    s.nats.start_again().unwrap();
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    let _w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    let got = c
        .until_with("rows 1..=100", Duration::from_secs(60), |got| {
            ids(got) == (1..=100).collect()
        })
        .await;
    assert!(got
        .iter()
        .all(|(_, e, _)| e.op == walcast::wire::Op::Insert));
}

/// Defect 9: a message in walcast's stream that walcast did not publish.
#[tokio::test]
async fn a_foreign_message_in_the_stream_is_a_clear_error() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let mut w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    w.sigterm();
    w.wait_exit(Duration::from_secs(30)).await;
    let client = async_nats::connect(s.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("walcast.public.t.1", "not an envelope".into())
        .await
        .unwrap()
        .await
        .unwrap();
    insert_range(&db, 1, 1).await;
    let mut w = Walcast::spawn(RunArgs::new(&s, "walcast", "walcast"));
    let status = w.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success());
    let log = w.log();
    assert!(log.contains("walcast.public.t.1"), "{log}");
    assert!(log.contains("not published by walcast"), "{log}");
    assert!(!log.contains("reconnecting"), "{log}");
}

/// Defect 10: logs are JSON line by line in JSON mode, and never coloured when not a
/// terminal.
#[tokio::test]
async fn logs_are_plain_or_json_line_by_line() {
    let (s, _db) = servers_with_table(PgOptions::default()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let base = [
        "--postgres-url",
        &s.pg.url(),
        "--nats-url",
        &s.nats.url(),
        "--publication",
        "nosuch",
        "--metrics-addr",
        &metrics,
    ];
    let mut json = vec!["--log-format", "json", "run"];
    json.extend(base);
    let (code, err) = run_to_exit(&json).await;
    assert_ne!(code, 0);
    assert!(err.lines().count() >= 1, "{err}");
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
    assert!(err.contains("nosuch"), "{err}");
    let mut text = vec!["run"];
    text.extend(base);
    let (_, err) = run_to_exit(&text).await;
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in redirected output: {err:?}"
    );
    assert_eq!(
        err.matches("does not exist").count(),
        1,
        "the cause once: {err}"
    );
}

/// Defect 11: progress while busy.
#[tokio::test]
async fn progress_is_logged_while_busy() {
    let (s, db) = servers_with_table(PgOptions::default()).await;
    let w =
        Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&["--progress-interval", "1"]))
            .await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.t.*").await;
    insert_range(&db, 1, 2000).await;
    c.until(2000, Duration::from_secs(60)).await;
    let line = poll_until(
        w.with_log("a progress line"),
        Duration::from_secs(10),
        || async {
            w.log()
                .lines()
                .find(|l| l.contains("progress"))
                .map(str::to_string)
        },
    )
    .await;
    assert!(line.contains("changes_per_s"), "{line}");
    assert!(line.contains("lag"), "{line}");
}

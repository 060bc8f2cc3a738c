//! An existing stream's window (issue 26): `--stream-max-age` / `--stream-max-bytes`
//! that differ from the window the stream was created with are applied at start
//! (JetStream updates them in place) with a log line saying from what to what; a
//! window added to a stream without one that holds tracked tables' key states (their
//! sequences) is refused, and the stream is left as it was.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(120);

/// The envelope stream's (max_age, max_bytes).
async fn window(s: &Servers) -> (Duration, i64) {
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    let mut stream = js.get_stream("WALCAST").await.unwrap();
    let c = stream.info().await.unwrap().config.clone();
    (c.max_age, c.max_bytes)
}

/// Run walcast with `args` until it published what is there, then stop it.
async fn run_once(s: &Servers, db: &tokio_postgres::Client, args: &[&str]) -> String {
    let mut w = Walcast::start(RunArgs::new(s, "walcast", "walcast").args(args)).await;
    wait_caught_up(db, &w, WAIT).await;
    w.sigterm();
    assert!(w.wait_exit(WAIT).await.success(), "{}", w.log());
    w.log()
}

/// `walcast check`'s report with `args`.
async fn check(s: &Servers, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args([
            "check",
            "--postgres-url",
            &s.pg.url(),
            "--nats-url",
            &s.nats.url(),
        ])
        .args(["--publication", "walcast"])
        .args(args)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_window_is_applied_to_the_existing_stream_and_logged() {
    let s = servers();
    let db = s.pg.client().await;
    install_sequence_helper(&db).await;
    exec(
        &db,
        "CREATE TABLE acct (id int PRIMARY KEY, pad text);
         SELECT walcast_install_sequence('acct');
         CREATE PUBLICATION walcast FOR TABLE acct;",
    )
    .await;
    let column = ["--column-sequence", "public.acct=walcast_seq"];
    let with = |extra: &[&'static str]| [&column[..], extra].concat();

    run_once(&s, &db, &with(&["--stream-max-bytes", "65536"])).await;
    assert_eq!(window(&s).await, (Duration::ZERO, 65536));

    // `walcast check` says what start will do.
    let report = check(
        &s,
        &with(&["--stream-max-age", "3600", "--stream-max-bytes", "1048576"]),
    )
    .await;
    assert!(
        report.contains("walcast changes its window from max_age none / max_bytes 65536 bytes to max_age 3600 s / max_bytes 1048576 bytes at start"),
        "{report}"
    );

    // Another window: applied, and said from what to what.
    exec(
        &db,
        "INSERT INTO acct SELECT g, 'x' FROM generate_series(1, 10) g",
    )
    .await;
    let log = run_once(
        &s,
        &db,
        &with(&["--stream-max-age", "3600", "--stream-max-bytes", "1048576"]),
    )
    .await;
    assert_eq!(window(&s).await, (Duration::from_secs(3600), 1_048_576));
    assert!(
        log.contains("changing the stream's window")
            && log.contains("max_age none / max_bytes 65536 bytes")
            && log.contains("max_age 3600 s / max_bytes 1048576 bytes"),
        "{log}"
    );

    // No window any more: applied (nothing can be dropped by keeping more).
    exec(&db, "UPDATE acct SET pad = 'y'").await;
    run_once(&s, &db, &column).await;
    assert_eq!(window(&s).await, (Duration::ZERO, -1));

    // A window again on a stream without one: its only table is in column mode, so
    // no key state depends on what the window lets go.
    exec(&db, "UPDATE acct SET pad = 'z'").await;
    let log = run_once(&s, &db, &with(&["--stream-max-age", "60"])).await;
    assert_eq!(window(&s).await, (Duration::from_secs(60), -1));
    assert!(log.contains("changing the stream's window"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_over_tracked_key_states_is_refused_and_the_stream_kept() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE kv (id int PRIMARY KEY, v int);
         CREATE PUBLICATION walcast FOR TABLE kv;
         INSERT INTO kv SELECT g, 0 FROM generate_series(1, 20) g;",
    )
    .await;
    run_once(&s, &db, &[]).await;
    assert_eq!(window(&s).await, (Duration::ZERO, -1));

    let mut refused =
        Walcast::spawn(RunArgs::new(&s, "walcast", "walcast").args(&["--stream-max-age", "3600"]));
    assert!(
        !refused.wait_exit(WAIT).await.success(),
        "{}",
        refused.log()
    );
    let log = refused.log();
    assert!(
        log.contains("may hold the last envelopes of tracked tables (public.kv)")
            && log.contains("will not change its window to max_age 3600 s / max_bytes none"),
        "{log}"
    );
    assert_eq!(
        window(&s).await,
        (Duration::ZERO, -1),
        "the stream is as it was"
    );
}

//! Failover slots (PostgreSQL 17+): `--failover-slot` creates the slot with FAILOVER
//! true (or makes an existing one so), `walcast check` reports it and whether the
//! primary waits for a standby; an older server refuses the flag with a clear error.

mod common;

use std::time::Duration;

use common::*;

/// `walcast check` with these flags: (exit code, stdout).
async fn check(s: &Servers, extra: &[&str]) -> (i32, String) {
    let (url, nats) = (s.pg.url(), s.nats.url());
    let mut args = vec!["check", "--postgres-url", &url, "--nats-url", &nats];
    args.extend_from_slice(extra);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("walcast check did not exit within 60 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), stdout)
}

fn line<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(&format!(" {name}: ")))
        .unwrap_or_else(|| panic!("no {name} line in:\n{report}"))
}

async fn is_failover(db: &tokio_postgres::Client, slot: &str) -> bool {
    db.query_one(
        "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

async fn stop(mut w: Walcast) {
    w.sigterm();
    assert!(w.wait_exit(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_slots_are_made_and_reported_on_17_and_refused_before() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION walcast FOR TABLE t;",
    )
    .await;
    let version: i32 = db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    let flag = ["--failover-slot"];
    if version < 170_000 {
        let (code, err) = run_to_exit(&[
            "run",
            "--postgres-url",
            &s.pg.url(),
            "--nats-url",
            &s.nats.url(),
            "--failover-slot",
        ])
        .await;
        assert_ne!(code, 0, "{err}");
        assert!(
            err.contains("--failover-slot needs PostgreSQL 17 or later"),
            "{err}"
        );
        return;
    }
    // Created as a failover slot.
    let w = Walcast::start(RunArgs::new(&s, "walcast", "fresh").args(&flag)).await;
    assert!(is_failover(&db, "fresh").await);
    stop(w).await;
    // An existing ordinary slot: reported, then made a failover slot at start.
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    stop(w).await;
    assert!(!is_failover(&db, "walcast").await);
    let (_, report) = check(&s, &[]).await;
    assert!(
        line(&report, "failover slot").contains("FAILOVER false"),
        "{report}"
    );
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&flag)).await;
    stop(w).await;
    assert!(is_failover(&db, "walcast").await);
    let (_, report) = check(&s, &flag).await;
    let l = line(&report, "failover slot");
    assert!(
        l.starts_with("warn") && l.contains("synchronized_standby_slots is empty"),
        "{l}"
    );
    // The primary waits for the standby's physical slot: reported as such.
    for sql in [
        "SELECT pg_create_physical_replication_slot('standby1')",
        "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'",
        "SELECT pg_reload_conf()",
    ] {
        exec(&db, sql).await;
    }
    let report = poll_until(
        "check to see the standby slot",
        Duration::from_secs(30),
        || async {
            let (_, report) = check(&s, &flag).await;
            if line(&report, "failover slot").contains("standby slot(s) standby1") {
                Ok(report)
            } else {
                Err(report)
            }
        },
    )
    .await;
    assert!(line(&report, "failover slot").starts_with("ok"), "{report}");
}

//! `sql/setup.sql` and `sql/teardown.sql` run through psql against a real server, and
//! walcast streams under the least-privilege role they create.

mod common;

use std::time::Duration;

use common::*;

fn psql(s: &Servers, file: &str, vars: &[(&str, &str)]) -> std::process::Output {
    let bin = walcast::testing::postgres_bin_dir().unwrap().join("psql");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(s.pg.url())
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-f", file]);
    for (k, v) in vars {
        cmd.arg("-v").arg(format!("{k}={v}"));
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_runs_walcast_least_privilege_and_teardown_removes_the_slot() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE users (id int PRIMARY KEY, name text);
         CREATE TABLE secrets (id int PRIMARY KEY, token text);",
    )
    .await;
    let out = psql(
        &s,
        "sql/setup.sql",
        &[
            ("walcast_password", "'pw-setup'"),
            ("tables", "public.users"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = db
        .query_one(
            "SELECT rolsuper, rolreplication, has_table_privilege('walcast', 'public.users', 'SELECT'),
                    has_table_privilege('walcast', 'public.secrets', 'SELECT')
             FROM pg_roles WHERE rolname = 'walcast'",
            &[],
        )
        .await
        .unwrap();
    let (sup, repl, users, secrets): (bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(!sup && repl && users && !secrets);

    let mut collector = Collector::new(&s.nats.url(), "walcast.public.users.*").await;
    let mut args = RunArgs::new(&s, "walcast", "walcast");
    args.pg_url = s.pg.url_for("walcast", Some("pw-setup"), "postgres");
    let mut w = Walcast::start(args).await;
    exec(&db, "INSERT INTO users VALUES (1, 'least privilege')").await;
    let got = collector.until(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].1.key, "public.users:1");
    w.sigterm();
    assert!(w.wait_exit(Duration::from_secs(30)).await.success());

    let out = psql(&s, "sql/teardown.sql", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)
                  + (SELECT count(*) FROM pg_roles WHERE rolname = 'walcast')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

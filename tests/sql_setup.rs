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

/// The role `cdc` and the publication `cdc_pub` (0, 1 or 2 of them).
const CREATED: &str = "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = 'cdc')
                            + (SELECT count(*) FROM pg_publication WHERE pubname = 'cdc_pub')";
const NAMES: [(&str, &str); 2] = [("role", "cdc"), ("publication", "cdc_pub")];

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// A table without a key is refused before anything is created: PostgreSQL would
/// refuse its UPDATEs and DELETEs once it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refuses_a_keyless_table_before_creating_anything() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE users (id int PRIMARY KEY); CREATE TABLE events (at timestamptz, what text);",
    )
    .await;
    let tables = ("tables", "public.users, public.events");
    let refused = psql(&s, "sql/setup.sql", &[NAMES[0], NAMES[1], tables]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("public.events cannot be published"),
        "{stderr}"
    );
    assert_eq!(count(&db, CREATED).await, 0, "nothing is created");
}

/// Role and publication names are psql variables (for `sql/teardown.sql` too); the
/// partitions of a partitioned table are granted; without `walcast_password` the role
/// gets none (set with `\password`, never on a command line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_and_teardown_take_their_names_from_variables() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE users (id int PRIMARY KEY);
         CREATE TABLE orders (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');",
    )
    .await;
    let tables = ("tables", "public.users, public.orders");
    let out = psql(&s, "sql/setup.sql", &[NAMES[0], NAMES[1], tables]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\\password cdc"));
    assert_eq!(count(&db, CREATED).await, 2);
    let row = db
        .query_one(
            "SELECT rolreplication, rolpassword IS NULL,
                    has_table_privilege('cdc', 'public.orders_eu', 'SELECT')
             FROM pg_authid WHERE rolname = 'cdc'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get(0), row.get(1), row.get(2)), (true, true, true));

    let out = psql(
        &s,
        "sql/teardown.sql",
        &[NAMES[0], NAMES[1], ("slot", "cdc")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        count(&db, CREATED).await,
        0,
        "role and publication are dropped"
    );
}

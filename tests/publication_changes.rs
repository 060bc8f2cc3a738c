//! A publication that changes while walcast runs (issue 27): tables added are
//! snapshotted and answered for, tables dropped are forgotten (also by `/readyz`),
//! `publish_via_partition_root` moves a partitioned table's keys to its root; a table
//! walcast may not read stops the first start before any slot is made; an oversize
//! row's snapshot marker is counted and not published again by a re-snapshot.

mod common;

use std::time::Duration;

use common::*;
use walcast::wire::Op;

const WAIT: Duration = Duration::from_secs(60);

/// `walcast snapshot <tables>` against the running instance: (exit status, stdout).
fn snapshot_request(s: &Servers, tables: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .arg("snapshot")
        .args(tables)
        .args(["--nats-url", &s.nats.url()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_while_running_is_snapshotted_and_known() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE products (id int PRIMARY KEY, name text);
         INSERT INTO products SELECT g, 'p' || g FROM generate_series(1, 50) g;
         CREATE PUBLICATION walcast FOR TABLE a;",
    )
    .await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.products.*").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    exec(&db, "ALTER PUBLICATION walcast ADD TABLE products").await;
    // Its rows that existed before are published without a restart...
    let got = c.until(50, WAIT).await;
    assert!(got.iter().all(|(_, e, _)| e.op == Op::Snapshot), "{got:?}");
    w.wait_for_log("the publication changed", 1, WAIT).await;
    // ...and the running instance knows the table.
    let (ok, out) = snapshot_request(&s, &["public.products"]);
    assert!(ok, "{out}");
    assert!(!out.contains("unknown"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_table_dropped_from_the_publication_leaves_readyz() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE a (id int PRIMARY KEY); CREATE PUBLICATION walcast FOR TABLE a;
         CREATE TABLE events (at timestamptz, what text);",
    )
    .await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    exec(&db, "ALTER PUBLICATION walcast ADD TABLE events").await;
    exec(&db, "ALTER TABLE events REPLICA IDENTITY FULL").await;
    exec(&db, "INSERT INTO events VALUES (now(), 'x')").await;
    poll_until("/readyz names the keyless table", WAIT, || async {
        let (_, body) = w.http_get("/readyz").await.unwrap_or_default();
        body.contains("public.events has no key")
    })
    .await;
    exec(&db, "ALTER PUBLICATION walcast DROP TABLE events").await;
    poll_until(
        w.with_log("/readyz forgets the dropped table"),
        WAIT,
        || async {
            let (code, body) = w.http_get("/readyz").await.unwrap_or_default();
            (code == 200 && !body.contains("public.events"))
                .then_some(())
                .ok_or(body)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_via_partition_root_moves_keys_to_the_root() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE orders (id int, region text, total int, PRIMARY KEY (id, region))
           PARTITION BY LIST (region);
         CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
         CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
         INSERT INTO orders VALUES (1, 'eu', 10), (2, 'us', 20);
         CREATE PUBLICATION walcast FOR TABLE orders;",
    )
    .await;
    let mut root = Collector::new(&s.nats.url(), "walcast.public.orders.*").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast")).await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    exec(
        &db,
        "ALTER PUBLICATION walcast SET (publish_via_partition_root = true)",
    )
    .await;
    w.wait_for_log("the publication changed", 1, WAIT).await;
    let (ok, out) = snapshot_request(&s, &["public.orders"]);
    assert!(ok && out.contains("public.orders"), "{out}");
    let (_, out) = snapshot_request(&s, &["public.orders_eu"]);
    assert!(out.contains("unknown  public.orders_eu"), "{out}");
    exec(&db, "UPDATE orders SET total = 11 WHERE id = 1").await;
    let got = root.until(3, WAIT).await;
    let keys: Vec<&str> = got.iter().map(|(_, e, _)| e.key.as_str()).collect();
    assert!(keys.contains(&"public.orders:1,eu"), "{keys:?}");
}

#[tokio::test]
async fn a_table_walcast_may_not_read_stops_the_first_start_before_a_slot_is_made() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE orders (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
         CREATE PUBLICATION walcast FOR TABLE orders;
         CREATE ROLE cdc LOGIN REPLICATION PASSWORD 'pw';
         GRANT SELECT ON orders TO cdc;",
    )
    .await;
    let url = s.pg.url_for("cdc", Some("pw"), "postgres");
    let (code, err) = run_to_exit(&[
        "run",
        "--postgres-url",
        &url,
        "--nats-url",
        &s.nats.url(),
        "--metrics-addr",
        &format!("127.0.0.1:{}", walcast::testing::free_port()),
    ])
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("public.orders_eu"), "{err}");
    assert!(
        err.contains("GRANT SELECT ON public.orders_eu TO cdc"),
        "{err}"
    );
    let slots: i64 = db
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "a slot was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_snapshot_row_is_counted_and_not_published_again() {
    let (s, db) = with_sql(
        servers(),
        "CREATE TABLE big (id int PRIMARY KEY, doc text);
         INSERT INTO big VALUES (1, repeat('x', 2000000)), (2, 'small');
         CREATE PUBLICATION walcast FOR TABLE big;",
    )
    .await;
    let mut c = Collector::new(&s.nats.url(), "walcast.public.big.*").await;
    let w = Walcast::start(RunArgs::new(&s, "walcast", "walcast").args(&["--oversize", "marker"]))
        .await;
    w.wait_for_log("snapshot complete", 1, WAIT).await;
    c.until(2, WAIT).await;
    assert_eq!(
        w.metric("walcast_oversize_markers_total").await,
        Some(1.0),
        "{}",
        w.log()
    );
    assert!(w.log().contains("too-large marker"), "{}", w.log());
    let (ok, out) = snapshot_request(&s, &["public.big"]);
    assert!(ok, "{out}");
    w.wait_for_log("snapshot complete", 2, WAIT).await;
    wait_caught_up(&db, &w, WAIT).await;
    c.assert_quiet(Duration::from_millis(1500)).await;
    assert_eq!(
        c.received.len(),
        2,
        "a re-snapshot published the marker again"
    );
}

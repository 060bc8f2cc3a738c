//! walcast on a 3-node JetStream cluster (`make test-cluster`): R3 streams whose
//! leader's server is killed -9 under a steady write workload; two instances over
//! disjoint publications read through one wildcard; a hot standby taking over while a
//! NATS node is down. A consumer reading the stream sees every change, per-key
//! sequences dense from 1, the final state equal to the database. `flush`: the
//! JetStream store rolled back under walcast, with and without `--flush-delay`.

#[path = "durability/checks.rs"]
mod checks;
mod common;
#[path = "cluster/flush.rs"]
mod flush;
#[path = "durability/workload.rs"]
mod workload;

use std::time::Duration;

use checks::{drain_collector, inspect, Target};
use common::*;
use walcast::testing::{NatsCluster, NatsServer, PgOptions, PgServer, CLUSTER_NAME};
use workload::workload_on;

const WAIT: Duration = Duration::from_secs(90);

/// PostgreSQL with a `kv`-shaped table and a publication over it for each name.
async fn pg_with_tables(tables: &[&str]) -> (PgServer, tokio_postgres::Client) {
    let pg = PgServer::start(PgOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let db = pg.client().await;
    for t in tables {
        exec(
            &db,
            &format!(
                "CREATE TABLE {t} (id bigint PRIMARY KEY, v bigint NOT NULL, pad text);
                 CREATE PUBLICATION pub_{t} FOR TABLE {t};"
            ),
        )
        .await;
    }
    (pg, db)
}

fn cluster() -> NatsCluster {
    NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"))
}

/// `walcast run` over publication `pub_<table>` on the cluster, R3, with subjects
/// under `prefix` (its stream: the prefix in upper case).
fn args<'a>(pg: &PgServer, c: &NatsCluster, table: &'a str, prefix: &str) -> RunArgs<'a> {
    let publication: &'static str = Box::leak(format!("pub_{table}").into_boxed_str());
    let slot: &'static str = Box::leak(format!("slot_{table}").into_boxed_str());
    RunArgs {
        pg_url: pg.url(),
        nats_url: c.urls(),
        publication,
        slot,
        extra: vec![],
    }
    .args(&[
        "--subject-prefix",
        prefix,
        "--stream-replicas",
        "3",
        "--stream-cluster",
        CLUSTER_NAME,
        "--stream-history",
        "100000",
        "--status-interval",
        "0.2",
    ])
}

/// The node whose server leads `stream` now (from the stream info's cluster leader),
/// asked through any running node.
async fn stream_leader(c: &NatsCluster, stream: &str) -> usize {
    stream_leader_of(c, stream, 3).await
}

/// [`stream_leader`] once `stream` has `replicas` replicas.
async fn stream_leader_of(c: &NatsCluster, stream: &str, replicas: usize) -> usize {
    let url = c
        .nodes
        .iter()
        .filter(|n| n.is_running())
        .map(|n| n.url())
        .collect::<Vec<_>>()
        .join(",");
    let js = async_nats::jetstream::new(walcast::client::connect(&url).await.unwrap());
    poll_until(format!("a leader of {stream}"), WAIT, || async {
        let mut s = js.get_stream(stream).await.map_err(|e| e.to_string())?;
        let info = s.info().await.map_err(|e| e.to_string())?;
        let cluster = info.cluster.clone().ok_or("no cluster info")?;
        let found = info.config.num_replicas;
        let leader = cluster.leader.ok_or("no leader")?;
        let i = c
            .index_of(&leader)
            .ok_or(format!("unknown server {leader}"))?;
        if found != replicas {
            return Err(format!("{found} replicas"));
        }
        Ok::<usize, String>(i)
    })
    .await
}

/// Wait until slot `slot` has confirmed everything written so far.
async fn caught_up(db: &tokio_postgres::Client, slot: &str, w: &Walcast) {
    let target = walcast::testing::current_wal_lsn(db).await;
    poll_until(
        w.with_log(format!("{slot} to confirm {target}")),
        WAIT,
        || async {
            let flushed = confirmed_flush(db, slot).await;
            if flushed >= target {
                Ok(())
            } else {
                Err(flushed)
            }
        },
    )
    .await;
}

/// A running node's URL (to read the stream through).
fn live_url(c: &NatsCluster) -> String {
    c.nodes.iter().find(|n| n.is_running()).unwrap().url()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_leader_killed_under_load_loses_nothing_and_heals() {
    let (pg, db) = pg_with_tables(&["kv"]).await;
    let mut c = cluster();
    let mut w = Walcast::start(args(&pg, &c, "kv", "walcast")).await;
    let writer = tokio::spawn(workload_on(
        "kv",
        pg.url(),
        15_000,
        0..300,
        0x5EED,
        Duration::from_millis(4),
    ));
    w.wait_metric("walcast_published_total", 1000.0, WAIT).await;
    let leader = stream_leader(&c, "WALCAST").await;
    c.kill(leader);
    // The stream elects another leader among the two left, and walcast publishes on.
    let next = stream_leader(&c, "WALCAST").await;
    assert_ne!(next, leader, "the leader did not move");
    let published = w.metric("walcast_published_total").await.unwrap();
    w.wait_metric("walcast_published_total", published + 1000.0, WAIT)
        .await;
    c.start_again(leader).unwrap();
    let written = writer.await.unwrap();
    w.assert_running();
    caught_up(&db, "slot_kv", &w).await;
    let r = inspect(&live_url(&c), &db, &written, &checks::KV).await;
    println!(
        "R3 leader n{leader} killed, n{next} took over: changes {}, {r:?}",
        written.total
    );
    assert!(r.checked >= written.total, "{r:?}");
    assert_eq!((r.short, r.holes, r.wrong), (0, 0, 0), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_over_disjoint_publications_read_through_one_wildcard() {
    let (pg, db) = pg_with_tables(&["ta", "tb"]).await;
    let c = cluster();
    let mut live = Collector::new(&c.urls(), "cdc.*.public.>").await;
    let a = Walcast::start(args(&pg, &c, "ta", "cdc.a")).await;
    let b = Walcast::start(args(&pg, &c, "tb", "cdc.b")).await;
    let (wa, wb) = tokio::join!(
        workload_on("ta", pg.url(), 4_000, 0..100, 0xA, Duration::from_millis(2)),
        workload_on("tb", pg.url(), 4_000, 0..100, 0xB, Duration::from_millis(2)),
    );
    caught_up(&db, "slot_ta", &a).await;
    caught_up(&db, "slot_tb", &b).await;
    drain_collector(&mut live, Duration::from_millis(500)).await;
    for (t, written) in [
        (
            Target {
                stream: "CDC_A",
                prefix: "cdc.a",
                table: "ta",
            },
            &wa,
        ),
        (
            Target {
                stream: "CDC_B",
                prefix: "cdc.b",
                table: "tb",
            },
            &wb,
        ),
    ] {
        let r = inspect(&c.urls(), &db, written, &t).await;
        println!("instance {}: changes {}, {r:?}", t.prefix, written.total);
        assert!(r.checked >= written.total, "{r:?}");
        assert_eq!(
            (r.short, r.holes, r.wrong),
            (0, 0, 0),
            "{}: {r:?}",
            t.prefix
        );
    }
    // The wildcard got every change of both, each on its own instance's subjects.
    let crossed: Vec<&(String, _, _)> = live
        .received
        .iter()
        .filter(|(subject, e, _)| {
            let table = if subject.starts_with("cdc.a.") {
                "ta"
            } else {
                "tb"
            };
            !e.key.starts_with(&format!("public.{table}:"))
        })
        .collect();
    assert!(
        crossed.is_empty(),
        "{} crossed: {:?}",
        crossed.len(),
        &crossed[..1]
    );
    let of = |p: &str| {
        live.received
            .iter()
            .filter(|(s, _, _)| s.starts_with(p))
            .count()
    };
    println!(
        "wildcard: {} from cdc.a, {} from cdc.b",
        of("cdc.a."),
        of("cdc.b.")
    );
    assert!(of("cdc.a.") >= wa.total && of("cdc.b.") >= wb.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_takes_over_while_a_nats_node_is_down() {
    let (pg, db) = pg_with_tables(&["kv"]).await;
    let mut c = cluster();
    let mut active = Walcast::start(args(&pg, &c, "kv", "walcast")).await;
    let mut standby = Walcast::spawn(args(&pg, &c, "kv", "walcast"));
    standby.wait_standing_by(WAIT).await;
    let writer = tokio::spawn(workload_on(
        "kv",
        pg.url(),
        8_000,
        0..200,
        0xFACE,
        Duration::from_millis(2),
    ));
    active
        .wait_metric("walcast_published_total", 500.0, WAIT)
        .await;
    let down = (stream_leader(&c, "WALCAST").await + 1) % 3;
    c.kill(down);
    active.child.start_kill().unwrap();
    active.wait_exit(WAIT).await;
    standby.wait_ready().await;
    let written = writer.await.unwrap();
    caught_up(&db, "slot_kv", &standby).await;
    c.start_again(down).unwrap();
    let r = inspect(&c.urls(), &db, &written, &checks::KV).await;
    println!(
        "standby took over with n{down} down: changes {}, {r:?}",
        written.total
    );
    assert!(r.checked >= written.total, "{r:?}");
    assert_eq!((r.short, r.holes, r.wrong), (0, 0, 0), "{r:?}");
}

/// Placement tags reach JetStream (`node:2`: only n2 may hold the stream), and a
/// stream created with one replica is scaled when walcast starts with three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_is_passed_through_and_an_existing_stream_is_scaled() {
    let (pg, db) = pg_with_tables(&["kv"]).await;
    let c = cluster();
    let run = |replicas: &str, tag: Option<&str>| {
        let mut a = RunArgs {
            pg_url: pg.url(),
            nats_url: c.urls(),
            publication: "pub_kv",
            slot: if tag.is_some() { "placed" } else { "walcast" },
            extra: vec![],
        }
        .args(&["--stream-replicas", replicas, "--status-interval", "0.2"]);
        if let Some(tag) = tag {
            a = a.args(&["--stream-tag", tag, "--subject-prefix", "placed"]);
        }
        a
    };
    let mut placed = Walcast::start(run("1", Some("node:2"))).await;
    assert_eq!(
        stream_leader_of(&c, "PLACED", 1).await,
        2,
        "not on the tagged server"
    );
    placed.sigterm();
    placed.wait_exit(WAIT).await;
    let mut w = Walcast::start(run("1", None)).await;
    exec(
        &db,
        "INSERT INTO kv SELECT g, 0 FROM generate_series(1, 100) g",
    )
    .await;
    wait_caught_up(&db, &w, WAIT).await;
    stream_leader_of(&c, "WALCAST", 1).await;
    w.sigterm();
    w.wait_exit(WAIT).await;
    let w = Walcast::start(run("3", None)).await;
    stream_leader_of(&c, "WALCAST", 3).await;
    exec(
        &db,
        "INSERT INTO kv SELECT g, 0 FROM generate_series(101, 200) g",
    )
    .await;
    wait_caught_up(&db, &w, WAIT).await;
    let meta = stream_leader_of(&c, "WALCAST_META", 3).await;
    println!("scaled to R3; meta stream led by n{meta}");
}

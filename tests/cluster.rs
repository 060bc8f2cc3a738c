//! walcast on a 3-node JetStream cluster (`make test-cluster`): R3 streams whose
//! leader's server is killed -9 under a steady write workload; two instances over
//! disjoint publications read through one wildcard; a hot standby taking over while a
//! NATS node is down. A consumer reading the stream sees every change, per-key
//! sequences dense from 1, the final state equal to the database.

#[path = "durability/checks.rs"]
mod checks;
mod common;
#[path = "durability/workload.rs"]
mod workload;

use std::time::Duration;

use checks::inspect;
use common::*;
use walcast::testing::{NatsCluster, PgOptions, PgServer, CLUSTER_NAME};
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
        let replicas = info.config.num_replicas;
        let leader = cluster.leader.ok_or("no leader")?;
        let i = c
            .index_of(&leader)
            .ok_or(format!("unknown server {leader}"))?;
        if replicas != 3 {
            return Err(format!("{replicas} replicas"));
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

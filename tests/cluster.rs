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

/// What a host crash of the NATS server leaves when its store had not synced: the
/// store as it was `lag` earlier. Under a steady workload: copy the JetStream store,
/// let the writer run `lag` more, kill -9 nats-server, put the copy back, start it
/// again. walcast stops on seeing the stream go back and is started again (as its
/// supervisor would); returns what a consumer reading the stream then finds.
async fn store_rolled_back(flush_delay: &str) -> (checks::Report, usize) {
    let (pg, db) = pg_with_tables(&["kv"]).await;
    let mut nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let nats_url = nats.url();
    let args = || {
        RunArgs {
            pg_url: pg.url(),
            nats_url: nats_url.clone(),
            publication: "pub_kv",
            slot: "walcast",
            extra: vec![],
        }
        .args(&[
            "--flush-delay",
            flush_delay,
            "--stream-history",
            "100000",
            "--status-interval",
            "0.2",
        ])
    };
    let mut w = Walcast::start(args()).await;
    let writer = tokio::spawn(workload_on(
        "kv",
        pg.url(),
        20_000,
        0..300,
        0xD15C,
        Duration::from_millis(4),
    ));
    w.wait_metric("walcast_published_total", 2000.0, WAIT).await;
    let store = nats.store_dir();
    let copy = store.with_file_name("store-copy");
    copy_dir(&store, &copy);
    // The unsynced stretch a crash loses: the time is the point.
    tokio::time::sleep(Duration::from_secs(5)).await;
    nats.kill();
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::rename(&copy, &store).unwrap();
    nats.start_again().unwrap();
    let status = w.wait_exit(WAIT).await;
    assert!(
        !status.success(),
        "walcast went on after the stream went back"
    );
    assert!(w.log().contains("went back from sequence"), "{}", w.log());
    let mut w = Walcast::start(args()).await;
    let written = writer.await.unwrap();
    caught_up(&db, "walcast", &w).await;
    w.assert_running();
    let report = inspect(&nats.url(), &db, &written, &checks::KV).await;
    println!(
        "store rolled back 5 s, --flush-delay {flush_delay}: changes {}, {report:?}",
        written.total
    );
    (report, written.total)
}

/// `cp -a from to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a {from:?} {to:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_rolled_back_with_a_flush_delay_heals_every_chain() {
    let (r, written) = store_rolled_back("15").await;
    assert!(r.checked >= written, "{r:?}");
    assert_eq!((r.short, r.holes, r.wrong), (0, 0, 0), "{r:?}");
}

/// The same without the delay: PostgreSQL released the WAL of what the store lost,
/// and the hole shows (the test above can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_rolled_back_without_a_flush_delay_leaves_a_hole() {
    let (r, _) = store_rolled_back("0").await;
    assert!(r.short > 0 || r.holes > 0, "nothing lost: {r:?}");
}

/// `walcast check`'s line on what an acknowledgement survives, from the server's
/// `sync_interval` read through its monitoring endpoint.
async fn acknowledgement_line(pg: &PgServer, nats: &NatsServer, extra: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_walcast"))
        .args([
            "check",
            "--postgres-url",
            &pg.url(),
            "--nats-url",
            &nats.url(),
        ])
        .args([
            "--publication",
            "pub_kv",
            "--nats-monitor-url",
            &nats.monitor_url(),
        ])
        .args(extra)
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    report
        .lines()
        .find(|l| l.contains(" acknowledgement: "))
        .unwrap_or_else(|| panic!("no acknowledgement line in:\n{report}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_which_guarantee_an_acknowledgement_carries() {
    let (pg, _db) = pg_with_tables(&["kv"]).await;
    let nats = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
    let line = acknowledgement_line(&pg, &nats, &["--flush-delay", "0"]).await;
    assert!(
        line.starts_with("warn") && line.contains("up to 120 s of acknowledged changes"),
        "{line}"
    );
    let line = acknowledgement_line(&pg, &nats, &[]).await;
    assert!(
        line.starts_with("ok") && line.contains("held 120 s"),
        "auto: {line}"
    );
    let always = NatsServer::start_with_config("jetstream { sync_interval: always }\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let line = acknowledgement_line(&pg, &always, &["--flush-delay", "0"]).await;
    assert!(
        line.starts_with("ok") && line.contains("syncs every write"),
        "{line}"
    );
}

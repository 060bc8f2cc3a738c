//! The flush horizon: a JetStream store rolled back under walcast (what a NATS host
//! crash with unsynced pages leaves) heals with `--flush-delay` and leaves a hole
//! without; `walcast check` says which guarantee an acknowledgement carries.

use std::time::Duration;

use super::*;

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

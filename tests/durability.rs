//! Crash and outage tests with a multi-key workload: kill -9 walcast again and again,
//! take NATS away for seconds, and check what a consumer of the stream sees: per key,
//! sequences 1..n dense, at least as many as the changes written to it, one value per
//! (key, sequence), final values equal to the database; replays byte-identical;
//! memory bounded.

#[path = "durability/checks.rs"]
mod checks;
mod common;
#[path = "durability/workload.rs"]
mod workload;

use std::time::{Duration, Instant};

use checks::{check_stream_against_db, drain_collector, duplicates};
use common::*;
use walcast::testing::rss_kib;
use workload::{workload, Rng};

const WAIT: Duration = Duration::from_secs(60);

/// Servers with the workload's table and publication.
async fn kv_servers() -> (Servers, tokio_postgres::Client) {
    with_sql(
        servers(),
        "CREATE TABLE kv (id bigint PRIMARY KEY, v bigint NOT NULL, pad text);
         CREATE PUBLICATION walcast FOR TABLE kv;",
    )
    .await
}

fn kv_args(s: &Servers) -> RunArgs<'static> {
    RunArgs::new(s, "walcast", "walcast").args(&[
        "--stream-history",
        "100000",
        "--status-interval",
        "0.2",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_nothing_and_reuses_no_sequence() {
    kill_9_loop(&[], 20_000, 10).await;
}

/// The same through the per-message publisher (one PubAck each: an older
/// nats-server, or `--publish-mode per-message`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_per_message_pubacks_loses_nothing() {
    kill_9_loop(&["--publish-mode", "per-message"], 8_000, 5).await;
}

/// The same with a key cache far smaller than the keys: states are evicted and
/// reloaded from the stream all the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_tiny_key_cache_reloads_states_exactly() {
    let loads = kill_9_loop(&["--key-cache", "10"], 8_000, 5).await;
    assert!(
        loads > 300.0,
        "only {loads} key states loaded: the cache never missed"
    );
}

/// kill -9 walcast `kills` times while `changes` changes are written over 300 keys;
/// returns the key-state loads of the last process.
async fn kill_9_loop(extra: &[&str], changes: usize, kills_wanted: usize) -> f64 {
    let (s, db) = kv_servers().await;
    let args = || kv_args(&s).args(extra);
    let mut live = Collector::new(&s.nats.url(), "walcast.public.kv.*").await;
    let mut w = Walcast::start(args()).await;

    let writer = tokio::spawn(workload(
        s.pg.url(),
        changes,
        0..300,
        0x5EED,
        Duration::from_millis(2),
    ));
    let mut rng = Rng(0xC0FFEE);
    let mut kills = 0;
    // Key states loaded, summed over the instances (each killed one's count is read
    // just before the kill).
    let mut loads = 0.0;
    while kills < kills_wanted {
        // A random point in time to kill at: the time is the point.
        tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
        loads += w
            .metric("walcast_key_state_loads_total")
            .await
            .unwrap_or(0.0);
        w.child.start_kill().unwrap();
        w.wait_exit(WAIT).await;
        kills += 1;
        w = Walcast::spawn(args());
        // Collect what the live subscriber got so far, to keep its buffer small.
        live.collect_for(Duration::from_millis(10)).await;
    }
    let written = writer
        .await
        .unwrap_or_else(|e| panic!("the writer failed: {e}"));
    assert!(written.total >= changes);
    w.wait_ready().await;
    wait_caught_up(&db, &w, WAIT).await;
    let (checked, holes) = check_stream_against_db(&s.nats.url(), &db, &written).await;
    drain_collector(&mut live, Duration::from_millis(500)).await;
    let dups = duplicates(&live.received);
    println!(
        "kill -9: kills survived {kills}, changes written {}, envelopes checked {checked}, duplicates seen live {dups}, holes {holes}, replays recognised {}",
        written.total,
        w.metric("walcast_replayed_changes_skipped_total").await.unwrap_or(0.0)
    );
    assert_eq!(holes, 0, "keys with holes or rebinds");
    loads
        + w.metric("walcast_key_state_loads_total")
            .await
            .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_with_writes_continuing_loses_nothing_and_memory_stays_bounded() {
    const WINDOW: f64 = 500.0;
    let (mut s, db) = kv_servers().await;
    let mut w = Walcast::start(kv_args(&s).args(&["--max-inflight", "500"])).await;
    let pid = w.child.id().unwrap();
    // Ten times what fits in the window and the channel, written through the outage.
    let writer = tokio::spawn(workload(
        s.pg.url(),
        120_000,
        0..500,
        0xBEEF,
        Duration::from_micros(500),
    ));
    w.wait_metric("walcast_published_total", 2000.0, WAIT).await;
    let rss_before = rss_kib(pid);
    s.nats.kill();
    let mut rss_max = rss_before;
    let mut rss_half = 0;
    let mut inflight_max: f64 = 0.0;
    // Sample for 12 s of outage: the time is the point.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(12) {
        rss_max = rss_max.max(rss_kib(pid));
        if rss_half == 0 && outage.elapsed() > Duration::from_secs(6) {
            rss_half = rss_max;
        }
        if let Some(v) = w.metric("walcast_inflight_envelopes").await {
            inflight_max = inflight_max.max(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rss_end = rss_max;
    assert!(
        inflight_max <= WINDOW + 1024.0,
        "{inflight_max} envelopes in flight with a window of {WINDOW} (+ one batch)"
    );
    assert!(
        rss_end < rss_half + 16 * 1024,
        "RSS still growing in the second half of the outage: {} -> {} MiB",
        rss_half / 1024,
        rss_end / 1024
    );
    s.nats.start_again().unwrap();
    let written = writer
        .await
        .unwrap_or_else(|e| panic!("the writer failed: {e}"));
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "walcast exited during the outage:\n{}",
        w.log()
    );
    wait_caught_up(&db, &w, WAIT).await;
    rss_max = rss_max.max(rss_kib(pid));
    let (checked, holes) = check_stream_against_db(&s.nats.url(), &db, &written).await;
    println!(
        "NATS outage 12 s: changes written {}, envelopes checked {checked}, holes {holes}, in flight at most {inflight_max}, RSS before {} MiB, mid-outage {} MiB, max {} MiB",
        written.total,
        rss_before / 1024,
        rss_half / 1024,
        rss_max / 1024
    );
    assert_eq!(holes, 0);
    assert!(rss_max < 200 * 1024, "RSS grew to {} MiB", rss_max / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_standby_takes_over_under_load() {
    let (s, db) = kv_servers().await;
    let mut live = Collector::new(&s.nats.url(), "walcast.public.kv.*").await;
    let mut active = Walcast::start(kv_args(&s)).await;
    let mut standby = Walcast::spawn(kv_args(&s));
    let writer = tokio::spawn(workload(
        s.pg.url(),
        8_000,
        0..200,
        0xFACE,
        Duration::from_millis(2),
    ));
    // Under load, with the standby up and waiting for the slot.
    active
        .wait_metric("walcast_published_total", 500.0, WAIT)
        .await;
    standby.wait_standing_by(WAIT).await;
    active.child.start_kill().unwrap();
    active.wait_exit(WAIT).await;
    standby.wait_ready().await;
    let written = writer
        .await
        .unwrap_or_else(|e| panic!("the writer failed: {e}"));
    wait_caught_up(&db, &standby, WAIT).await;
    let (checked, holes) = check_stream_against_db(&s.nats.url(), &db, &written).await;
    drain_collector(&mut live, Duration::from_millis(500)).await;
    let dups = duplicates(&live.received);
    println!("hot standby: changes {}, envelopes checked {checked}, duplicates live {dups}, holes {holes}", written.total);
    assert_eq!(holes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_under_load_resumes_from_the_right_position() {
    let (mut s, _db) = kv_servers().await;
    let w = Walcast::start(kv_args(&s)).await;
    // Crash (immediate shutdown) while the writer runs and walcast streams, then
    // more writes.
    let writer = tokio::spawn(workload(
        s.pg.url(),
        1_000_000,
        0..200,
        0xAB,
        Duration::ZERO,
    ));
    w.wait_metric("walcast_published_total", 1000.0, WAIT).await;
    s.pg.crash();
    let first = writer.await.unwrap();
    assert!(
        first.total > 0 && first.total < 1_000_000,
        "the crash came mid-workload"
    );
    // PostgreSQL comes back once walcast has seen it gone.
    w.wait_metric("walcast_reconnects_total", 1.0, WAIT).await;
    s.pg.start_again().unwrap();
    let db = s.pg.client().await;
    let written = first.and(workload(s.pg.url(), 3_000, 200..400, 0xCD, Duration::ZERO).await);
    wait_caught_up(&db, &w, WAIT).await;
    let (checked, holes) = check_stream_against_db(&s.nats.url(), &db, &written).await;
    println!(
        "postgres crash: changes {}, envelopes checked {checked}, holes {holes}, reconnects {}",
        written.total,
        w.metric("walcast_reconnects_total").await.unwrap_or(0.0)
    );
    assert_eq!(holes, 0);
    assert!(w.metric("walcast_reconnects_total").await.unwrap() >= 1.0);
}

//! One 1,000,000-row transaction with `logical_decoding_work_mem = 64kB`, walcast
//! running while it is written: pgoutput protocol 1 (PostgreSQL decodes it to its own
//! spill files and sends it after the commit) against `--stream-large-transactions`
//! (sent while it runs, held by walcast). For each: seconds from the COMMIT to the
//! last envelope the subscriber got, walcast's peak RSS (VmHWM), PostgreSQL's
//! `spill_bytes` for the slot and the bytes walcast spilled; then both again through
//! core NATS (`--delivery core`), which shows how much of the wait is JetStream's
//! publishing. `BENCH_ONLY=big` runs it alone.

use std::time::{Duration, Instant};

use walcast::testing::free_port;

use crate::setup::Bench;
use crate::walcast_run::{names, scrape, spawn, stop};
use crate::watch::Counter;

const DEADLINE: Duration = Duration::from_secs(1800);

pub async fn run(b: &Bench) -> serde_json::Value {
    let rows = b.settings.rows(1_000_000.0);
    b.exec(
        "CREATE TABLE bench_large (id int PRIMARY KEY, v int NOT NULL);
         CREATE PUBLICATION bench_large FOR TABLE bench_large;",
    )
    .await;
    // ALTER SYSTEM runs outside a transaction block: one statement per call.
    b.exec("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
        .await;
    b.exec("SELECT pg_reload_conf()").await;
    let plain = one(b, (false, Delivery::JetStream), 1, rows).await;
    let streamed = one(b, (true, Delivery::JetStream), rows + 1, rows).await;
    // The same through core NATS: how much of the wait is JetStream's publishing.
    let plain_core = one(b, (false, Delivery::Core), 2 * rows + 1, rows).await;
    let streamed_core = one(b, (true, Delivery::Core), 3 * rows + 1, rows).await;
    b.exec("ALTER SYSTEM RESET logical_decoding_work_mem").await;
    b.exec("SELECT pg_reload_conf()").await;
    let ratio = plain["commit_to_last_s"].as_f64().unwrap_or(f64::NAN)
        / streamed["commit_to_last_s"].as_f64().unwrap_or(f64::NAN);
    println!("1M-row transaction: commit to last envelope {ratio:.1}x shorter streamed");
    serde_json::json!({
        "rows": rows,
        "logical_decoding_work_mem": "64kB",
        "protocol_1": plain,
        "streaming": streamed,
        "commit_to_last_ratio": ratio,
        "protocol_1_core": plain_core,
        "streaming_core": streamed_core,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Delivery {
    JetStream,
    Core,
}

/// One run: walcast on a slot of its own, then the transaction, then the wait.
async fn one(
    b: &Bench,
    (streaming, delivery): (bool, Delivery),
    from: u64,
    rows: u64,
) -> serde_json::Value {
    let tag = match (streaming, delivery) {
        (true, Delivery::JetStream) => "bigstream",
        (false, Delivery::JetStream) => "bigplain",
        (true, Delivery::Core) => "bigstreamcore",
        (false, Delivery::Core) => "bigplaincore",
    };
    let (prefix, stream) = names(tag);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = [
        "run",
        "--postgres-url",
        &b.pg.url(),
        "--nats-url",
        &b.nats.url(),
        "--publication",
        "bench_large",
        "--slot",
        tag,
        "--subject-prefix",
        &prefix,
        "--stream",
        &stream,
        "--metrics-addr",
        &metrics,
        "--snapshot",
        "never",
    ]
    .map(String::from)
    .to_vec();
    if streaming {
        args.push("--stream-large-transactions".into());
    }
    if delivery == Delivery::Core {
        args.extend(["--delivery", "core", "--volatile-sequences"].map(String::from));
    }
    let counter = Counter::start(b.nats.url(), format!("{prefix}.>")).await;
    let child = spawn(b, &args);
    let pid = child.id();
    wait_streaming(&metrics).await;
    b.exec(&format!(
        "INSERT INTO bench_large SELECT g, 0 FROM generate_series({from}, {}) g",
        from + rows - 1
    ))
    .await;
    let committed = Instant::now();
    let deadline = committed + DEADLINE;
    let mut first = None;
    while counter.count() < rows && Instant::now() < deadline {
        if first.is_none() && counter.count() > 0 {
            first = Some(committed.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = counter.last_at().unwrap_or(committed);
    let peak_rss_kib = peak_rss_kib(pid);
    let walcast_spilled = metric(
        &scrape(&metrics).await,
        "walcast_stream_spilled_bytes_total",
    );
    let delivered = counter.count();
    let pg_spill: i64 =
        b.db.query_opt(
            "SELECT spill_bytes FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&tag],
        )
        .await
        .ok()
        .flatten()
        .map_or(0, |r| r.get(0));
    stop(child).await;
    counter.stop();
    b.wait_slot_free(tag).await;
    b.drop_slot(tag).await;
    b.delete_streams(&[format!("{stream}_META"), stream]).await;
    let seconds = last.saturating_duration_since(committed).as_secs_f64();
    let first = first.unwrap_or(seconds);
    println!(
        "1M-row transaction, {tag}: commit to first envelope {first:.2} s, to last {seconds:.2} s, RSS peak {:.1} MiB, PostgreSQL spilled {pg_spill} B, walcast spilled {walcast_spilled} B",
        peak_rss_kib as f64 / 1024.0
    );
    serde_json::json!({
        "delivered": delivered,
        "complete": delivered >= rows,
        "commit_to_first_s": first,
        "commit_to_last_s": seconds,
        "peak_rss_kib": peak_rss_kib,
        "postgres_spill_bytes": pg_spill,
        "walcast_spilled_bytes": walcast_spilled,
    })
}

/// A metric's value in a scrape (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Until walcast streams from its slot (its metric says so).
async fn wait_streaming(metrics: &str) {
    for _ in 0..3000 {
        if metric(&scrape(metrics).await, "walcast_replication_streaming") == 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("walcast did not start streaming");
}

/// The process's peak resident set (VmHWM), KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

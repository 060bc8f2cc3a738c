//! Commit → subscriber latency under a steady writer (4 connections,
//! `synchronous_commit = on`, single-row transactions), walcast (JetStream, its
//! defaults, `--snapshot never`) against a bare `pg_recvlogical` on its own slot in
//! the same run (`consumer`): on a busy machine an absolute p99 measures the machine,
//! the difference measures walcast. 1,000/s and 5,000/s interleaved, `BENCH_RUNS`
//! times each (`lat`); one run at 5,000/s with `--publish-linger 0` (`linger`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use walcast::testing::{cpu_seconds, free_port};

use crate::consumer::{self, now_micros};
use crate::machine::MachineCpu;
use crate::report::median;
use crate::setup::Bench;
use crate::walcast_run;

/// A delivery slower than this counts as slow.
const SLOW_MS: f64 = 5.0;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    Stats {
        n: v.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: at(1.0),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyRun {
    pub rate_per_s: u64,
    pub run: usize,
    pub walcast_args: String,
    pub seconds: u64,
    pub written: u64,
    pub walcast: Stats,
    pub bare_consumer: Stats,
    /// walcast's p50 and p99 minus the bare consumer's.
    pub p50_added_ms: f64,
    pub p99_added_ms: f64,
    pub machine_busy: f64,
    pub machine_steal: f64,
    pub walcast_cpu_seconds: f64,
    pub nats_server_cpu_seconds: f64,
    pub slow_deliveries: usize,
    pub slow_at_bare_consumer_too: usize,
}

pub struct Latency {
    pub runs: Vec<LatencyRun>,
}

pub async fn all(b: &Bench) -> Latency {
    let mut runs = Vec::new();
    for run in 0..b.settings.runs {
        for rate in [1000, 5000].into_iter().filter(|_| b.settings.want("lat")) {
            runs.push(one(b, rate, run, &[]).await);
        }
    }
    if b.settings.want("linger") {
        runs.push(one(b, 5000, 0, &["--publish-linger", "0"]).await);
    }
    Latency { runs }
}

impl Latency {
    /// The default runs at `rate`: (p50 added, p99 added) each.
    pub fn added(&self, rate: u64) -> Vec<(f64, f64)> {
        self.runs
            .iter()
            .filter(|r| r.rate_per_s == rate && r.walcast_args.is_empty())
            .map(|r| (r.p50_added_ms, r.p99_added_ms))
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::to_value(&self.runs).unwrap_or_default()
    }

    pub fn table(&self) -> String {
        let mut out = String::from("| rate | run | walcast flags | walcast p50 / p99 / p99.9 ms | bare consumer p50 / p99 ms | added p50 / p99 ms | deliveries > 5 ms (slow at the bare consumer too) | machine busy | walcast CPU s | nats-server CPU s |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.runs {
            out.push_str(&format!(
                "| {}/s | {} | {} | {:.2} / {:.2} / {:.1} | {:.2} / {:.2} | **{:+.2} / {:+.2}** | {} ({}) | {:.0} % | {:.1} | {:.1} |\n",
                r.rate_per_s,
                r.run + 1,
                if r.walcast_args.is_empty() { "defaults" } else { &r.walcast_args },
                r.walcast.p50_ms,
                r.walcast.p99_ms,
                r.walcast.p999_ms,
                r.bare_consumer.p50_ms,
                r.bare_consumer.p99_ms,
                r.p50_added_ms,
                r.p99_added_ms,
                r.slow_deliveries,
                r.slow_at_bare_consumer_too,
                r.machine_busy * 100.0,
                r.walcast_cpu_seconds,
                r.nats_server_cpu_seconds,
            ));
        }
        for rate in [1000, 5000] {
            let added = self.added(rate);
            if !added.is_empty() {
                out.push_str(&format!(
                    "\nAt {rate}/s, median of {} runs: walcast adds {:+.2} ms at p50 and {:+.2} ms at p99 over the bare consumer.",
                    added.len(),
                    median(added.iter().map(|a| a.0).collect()),
                    median(added.iter().map(|a| a.1).collect()),
                ));
            }
        }
        out
    }
}

/// One run: walcast and the bare consumer on their own slots, a subscriber, writers.
async fn one(b: &Bench, rate: u64, run: usize, extra: &[&str]) -> LatencyRun {
    let suffix = format!("{rate}_{run}{}", if extra.is_empty() { "" } else { "_x" });
    let (slot, prefix, stream) = (
        format!("lat_{suffix}"),
        format!("lat{suffix}"),
        format!("LAT{suffix}"),
    );
    let writing = Arc::new(AtomicBool::new(true));
    let deliveries = subscribe(b, &prefix, writing.clone()).await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = vec!["run".into()];
    for (flag, value) in [
        ("--postgres-url", b.pg.url()),
        ("--nats-url", b.nats.url()),
        ("--publication", "bench_narrow".into()),
        ("--slot", slot.clone()),
        ("--subject-prefix", prefix),
        ("--stream", stream.clone()),
        ("--metrics-addr", metrics_addr),
        ("--snapshot", "never".into()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = walcast_run::spawn(b, &args);
    wait_streaming(b, &slot).await;
    let bare_slot = format!("latd_{suffix}");
    b.make_slots(std::slice::from_ref(&bare_slot), "test_decoding")
        .await;
    let bare = consumer::start(b, &bare_slot);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (MachineCpu::now(), cpu_seconds(child.id()), b.nats_cpu());
    let written = write_steadily(b, rate, b.settings.latency_secs).await;
    let after = (MachineCpu::now(), cpu_seconds(child.id()), b.nats_cpu());
    writing.store(false, Ordering::Relaxed);
    let delivered = deliveries.await.unwrap_or_default();
    let at_bare = bare.stop().await;
    walcast_run::stop(child).await;
    b.delete_streams(&[format!("{stream}_META"), stream]).await;
    b.drop_slot(&slot).await;
    b.drop_slot(&bare_slot).await;
    let (busy, steal) = after.0.since(&before.0);
    let mut r = summarise(rate, run, extra, written, &delivered, &at_bare);
    (r.machine_busy, r.machine_steal) = (busy, steal);
    r.seconds = b.settings.latency_secs;
    r.walcast_cpu_seconds = after.1 - before.1;
    r.nats_server_cpu_seconds = after.2 - before.2;
    println!(
        "latency at {rate}/s {}: {}",
        extra.join(" "),
        serde_json::to_string(&r).unwrap_or_default()
    );
    r
}

fn summarise(
    rate: u64,
    run: usize,
    extra: &[&str],
    written: u64,
    delivered: &[(i64, f64)],
    at_bare: &BTreeMap<i64, f64>,
) -> LatencyRun {
    let walcast = stats(delivered.iter().map(|(_, ms)| *ms).collect());
    let bare = stats(at_bare.values().copied().collect());
    let slow: Vec<_> = delivered.iter().filter(|(_, ms)| *ms > SLOW_MS).collect();
    let slow_upstream = slow
        .iter()
        .filter(|(ts, _)| at_bare.get(ts).is_some_and(|ms| *ms > SLOW_MS))
        .count();
    LatencyRun {
        rate_per_s: rate,
        run,
        walcast_args: extra.join(" "),
        seconds: 0,
        written,
        p50_added_ms: walcast.p50_ms - bare.p50_ms,
        p99_added_ms: walcast.p99_ms - bare.p99_ms,
        walcast,
        bare_consumer: bare,
        machine_busy: 0.0,
        machine_steal: 0.0,
        walcast_cpu_seconds: 0.0,
        nats_server_cpu_seconds: 0.0,
        slow_deliveries: slow.len(),
        slow_at_bare_consumer_too: slow_upstream,
    }
}

/// Until walcast's walsender holds its slot (walcast creates it).
async fn wait_streaming(b: &Bench, slot: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let active =
            b.db.query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .ok()
            .flatten();
        if active.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("walcast did not start streaming from {slot}");
}

/// A subscriber decoding walcast's envelopes: (commit µs, ms to arrive) each, until
/// the writers are done and nothing came for 2 s.
async fn subscribe(
    b: &Bench,
    prefix: &str,
    writing: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(i64, f64)>> {
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(b.nats.url())
        .await
        .unwrap();
    let mut sub = client.subscribe(format!("{prefix}.>")).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        let _client = client;
        let (mut out, mut last) = (Vec::new(), Instant::now());
        loop {
            match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Ok(Some(msg)) => {
                    let now = now_micros();
                    last = Instant::now();
                    if let Ok(env) = walcast::wire::codec::decode(&msg.payload) {
                        let micros = env.commit_ts.seconds * 1_000_000
                            + i64::from(env.commit_ts.nanos / 1000);
                        out.push((micros, (now - micros) as f64 / 1000.0));
                    }
                }
                Ok(None) => break,
                Err(_)
                    if !writing.load(Ordering::Relaxed)
                        && last.elapsed() > Duration::from_secs(2) =>
                {
                    break
                }
                Err(_) => {}
            }
        }
        out
    })
}

/// 4 connections, each paced to rate/4 single-row transactions per second, for `secs`.
async fn write_steadily(b: &Bench, rate: u64, secs: u64) -> u64 {
    let writers = 4u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = b.pg.url();
        tasks.push(tokio::spawn(async move {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            db.batch_execute("SET synchronous_commit = on")
                .await
                .unwrap();
            let stmt = db
                .prepare("UPDATE bench_narrow SET v = v + 1 WHERE id = $1")
                .await
                .unwrap();
            let per = rate / writers;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in 0..per * secs {
                tick.tick().await;
                let id = ((w * 1_000_003 + i * 7919) % 10_000) as i32 + 1;
                db.execute(&stmt, &[&id]).await.unwrap();
            }
            per * secs
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    written
}

//! Subscribe/unsubscribe churn through the client's local fan-out
//! (`walcast::client::NatsTransport`), part of `BENCH_ONLY=scale`.
//!
//! Paced: every 10 ms, 100 new keys are subscribed (one local subscriber each: the
//! first subscriber of a key makes the shared NATS subscription and its reader task)
//! and, once 10,000 are live, the 100 oldest unsubscribed (the last subscriber
//! leaving tears the NATS subscription down: the subscriber GC) — 10,000 keys/s in
//! and 10,000 keys/s out for [`PACED_SECS`]. Then the same loop unpaced for
//! [`UNPACED_SECS`]: the ceiling. Each subscribe and unsubscribe is timed; the bench
//! process's CPU (nothing else runs in it then) and nats-server's are sampled; at the
//! end the server's subscription count must come back to what it was.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;
use walcast::client::{NatsTransport, Subscription, Transport};
use walcast::testing::{cpu_seconds, monitor_json};

use crate::setup::Bench;

const PACED_SECS: u64 = 20;
const UNPACED_SECS: u64 = 5;
const LIVE: usize = 10_000;
const PER_TICK: usize = 100;
const TICK: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Percentiles of a sample (NaN when empty).
pub fn stats(mut v: Vec<f64>) -> Stats {
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
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn server_subscriptions(b: &Bench) -> u64 {
    monitor_json(b.nats.monitor_port, "/subsz")
        .and_then(|v| v["num_subscriptions"].as_u64())
        .unwrap_or(0)
}

pub async fn run(b: &Bench) -> serde_json::Value {
    let client = async_nats::connect(b.nats.url()).await.expect("connecting");
    client.flush().await.expect("flush");
    let baseline = server_subscriptions(b);
    let transport = NatsTransport::new(client.clone(), "churn", 16);
    let paced = churn(b, &transport, Some(TICK), PACED_SECS).await;
    println!("churn, paced at 10,000 keys/s in and out: {paced}");
    let unpaced = churn(b, &transport, None, UNPACED_SECS).await;
    println!("churn, unpaced: {unpaced}");
    client.flush().await.expect("flush");
    let mut after = server_subscriptions(b);
    for _ in 0..100 {
        if after <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = server_subscriptions(b);
    }
    println!("server subscriptions: {baseline} before, {after} after every key left");
    json!({
        "paced_10k_keys_per_s": paced,
        "unpaced": unpaced,
        "server_subscriptions_before": baseline,
        "server_subscriptions_after": after,
        "transport_keys_after": transport.key_count(),
    })
}

/// One churn loop: `tick` paced (100 in and 100 out per tick) or as fast as it goes;
/// every key left at the end.
async fn churn(
    b: &Bench,
    transport: &NatsTransport,
    tick: Option<Duration>,
    secs: u64,
) -> serde_json::Value {
    let me = std::process::id();
    let (cpu, nats_cpu) = (cpu_seconds(me), b.nats_cpu());
    let mut live: VecDeque<Subscription> = VecDeque::with_capacity(LIVE + PER_TICK);
    let (mut sub_ms, mut unsub_ms) = (Vec::new(), Vec::new());
    let (start, mut next_key, mut ticks) = (Instant::now(), 0u64, 0u32);
    let mut behind_ms: f64 = 0.0;
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..PER_TICK {
            let key = format!("public.churn:{next_key}");
            next_key += 1;
            let t = Instant::now();
            live.push_back(transport.subscribe(&key).await.expect("subscribe"));
            sub_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        while live.len() > LIVE {
            let mut oldest = live.pop_front().expect("live");
            let t = Instant::now();
            oldest.unsubscribe();
            drop(oldest);
            unsub_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ticks += 1;
        if let Some(tick) = tick {
            let due = start + tick * ticks;
            let now = Instant::now();
            behind_ms = behind_ms.max(now.saturating_duration_since(due).as_secs_f64() * 1e3);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let (subscribed, unsubscribed) = (sub_ms.len(), unsub_ms.len());
    let live_keys = transport.key_count();
    live.clear();
    json!({
        "seconds": seconds,
        "subscribed": subscribed,
        "unsubscribed": unsubscribed,
        "subscribes_per_s": subscribed as f64 / seconds,
        "unsubscribes_per_s": unsubscribed as f64 / seconds,
        "live_keys_at_end": live_keys,
        "most_behind_schedule_ms": behind_ms,
        "subscribe_ms": stats(sub_ms),
        "unsubscribe_ms": stats(unsub_ms),
        "bench_process_cpu_s": cpu_seconds(me) - cpu,
        "nats_cpu_s": b.nats_cpu() - nats_cpu,
    })
}

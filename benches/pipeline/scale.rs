//! `BENCH_ONLY=scale` (in the default list; 2.5 minutes at full scale on 2 cores):
//! 1,000,000 keys in walcast's stream (tracked mode, one subject per key; `BENCH_SCALE`
//! multiplies the count, `BENCH_RUNS` does not apply: one run of each).
//!
//! 1. The fill: walcast (JetStream, its defaults) streams a 1,000,000-row insert into
//!    a new stream, which it keeps. nats-server's VmRSS and VmHWM (/proc) before and
//!    after, with the stream's messages, subjects and bytes.
//! 2. Direct gets on that stream: the last message of random keys'
//!    subjects, sequential, as a held stream handle asks it and as the client's
//!    `refetch_from_stream` (a replica's refetch) asks it; then 32 in flight.
//! 3. The key-state load: a backlog that updates every key once (100 transactions of
//!    10,000 rows) drained by walcast restarted on the filled stream (every key's
//!    state is loaded from it, in batches) and by walcast on a new stream (the same
//!    backlog, nothing to load), one after the other, each timed by `watch`'s rule.
//! 4. Subscribe/unsubscribe churn through the client's fan-out (`churn`).

use serde_json::json;
use walcast::testing::monitor_json;
use walcast::wire::key::{make_key, subject_for_key};
use walcast::wire::Lsn;

use crate::contenders::{Job, RunResult, WalcastSpec, JETSTREAM};
use crate::setup::Bench;
use crate::walcast_run::{self, names};

/// The table of the 1M keys and its publication.
const TABLE: &str = "bench_keys";

/// nats-server's memory from /proc/<pid>/status: (VmRSS, VmHWM) in KiB.
pub fn nats_memory(pid: u32) -> serde_json::Value {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    json!({ "vm_rss_kib": field("VmRSS:"), "vm_hwm_kib": field("VmHWM:") })
}

/// The stream's state as `/jsz?streams=true` shows it (messages, subjects, bytes).
fn stream_state(b: &Bench, stream: &str) -> serde_json::Value {
    let jsz = monitor_json(b.nats.monitor_port, "/jsz?streams=true").unwrap_or_default();
    let found = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == stream);
    found.map_or(serde_json::Value::Null, |s| s["state"].clone())
}

fn spec(keep_stream: bool) -> WalcastSpec {
    WalcastSpec {
        keep_stream,
        patient: true,
        ..JETSTREAM
    }
}

/// One walcast run over `slot` up to `endpos`, its slot dropped after.
async fn drain(b: &Bench, slot: &str, tag: &str, endpos: Lsn, keys: u64, keep: bool) -> RunResult {
    let job = Job {
        slot: slot.into(),
        publication: TABLE.into(),
        endpos,
        expected: keys,
        tag: tag.into(),
        pacing: b.settings.sweep[0],
    };
    let result = walcast_run::run(b, spec(keep), &job).await;
    b.wait_slot_free(slot).await;
    b.drop_slot(slot).await;
    result
}

fn print(what: &str, keys: u64, r: &RunResult) {
    let c = |n: &str| r.counters.get(n).copied().unwrap_or(0.0);
    println!(
        "{what}: {:.1} s, {:.0} changes/s, walcast CPU {:.1} s, RSS peak {:.0} MiB, nats-server CPU {:.1} s, key-state loads {} (requests {}){}",
        r.seconds,
        keys as f64 / r.seconds,
        r.cpu_seconds,
        r.peak_rss_kib as f64 / 1024.0,
        r.nats_cpu_seconds,
        c("walcast_key_state_loads_total"),
        c("walcast_key_state_requests_total"),
        if r.complete { "" } else { " — INCOMPLETE" }
    );
}

fn key_of(id: u64) -> String {
    make_key("public", TABLE, [id.to_string().as_str()])
}

fn subject_of(prefix: &str, id: u64) -> String {
    subject_for_key(prefix, &key_of(id)).expect("a valid key")
}

pub async fn run(b: &Bench) -> serde_json::Value {
    let keys = b.settings.rows(1_000_000.0);
    let pid = b.nats_pid();
    let before = nats_memory(pid);
    b.exec(&format!(
        "CREATE TABLE {TABLE} (id int PRIMARY KEY, v int NOT NULL);
         CREATE PUBLICATION {TABLE} FOR TABLE {TABLE};"
    ))
    .await;
    b.make_slots(&["scale_fill".to_string()], "pgoutput").await;
    b.exec(&format!(
        "INSERT INTO {TABLE} SELECT g, 0 FROM generate_series(1, {keys}) g"
    ))
    .await;
    let fill_end = b.current_lsn().await;
    let fill = drain(b, "scale_fill", "scalewarm", fill_end, keys, true).await;
    print(&format!("fill ({keys} inserts, new stream)"), keys, &fill);
    let (prefix, stream) = names("scalewarm");
    let filled = nats_memory(pid);
    let state = stream_state(b, &stream);
    println!("nats-server before {before}, with {keys} keys {filled}; stream {state}");
    let gets = direct_gets(b, &prefix, &stream, keys).await;
    let listing = list_subjects(b, &prefix, &stream).await;
    let (warm, new) = restart(b, keys).await;
    let after = nats_memory(pid);
    b.delete_streams(&[format!("{stream}_META"), stream]).await;
    json!({
        "keys": keys,
        "nats_memory_before": before,
        "nats_memory_with_keys": filled,
        "nats_memory_after_restart_runs": after,
        "stream_state_with_keys": state,
        "fill_new_stream": fill,
        "direct_get": gets,
        "subject_listing": listing,
        "backlog_restart_on_filled_stream": warm,
        "backlog_new_stream": new,
        "key_state_load_seconds": warm.seconds - new.seconds,
    })
}

/// The backlog touching every key once, drained by walcast restarted on the filled
/// stream and by walcast on a new stream: (warm, new).
async fn restart(b: &Bench, keys: u64) -> (RunResult, RunResult) {
    b.make_slots(
        &["scale_warm".to_string(), "scale_new".to_string()],
        "pgoutput",
    )
    .await;
    let chunk = keys.div_ceil(100);
    let t = std::time::Instant::now();
    b.exec(&format!(
        "DO $$ BEGIN FOR i IN 0..99 LOOP
           UPDATE {TABLE} SET v = v + 1 WHERE id > i * {chunk} AND id <= (i + 1) * {chunk};
           COMMIT;
         END LOOP; END $$"
    ))
    .await;
    let end = b.current_lsn().await;
    eprintln!(
        "scale: the backlog ({keys} updates, 100 transactions) written in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let warm = drain(b, "scale_warm", "scalewarm", end, keys, true).await;
    print(
        "backlog, walcast restarted on the filled stream",
        keys,
        &warm,
    );
    let new = drain(b, "scale_new", "scalenew", end, keys, false).await;
    print("backlog, walcast on a new stream", keys, &new);
    (warm, new)
}

/// How long listing every subject of the stream takes (what walcast does first when
/// it starts on a stream: `info_with_subjects`, page by page), with nats-server's CPU
/// and memory peak after it.
async fn list_subjects(b: &Bench, prefix: &str, stream: &str) -> serde_json::Value {
    use futures::TryStreamExt;
    let client = async_nats::connect(b.nats.url()).await.expect("connecting");
    let js = async_nats::jetstream::new(client);
    let handle = js.get_stream(stream).await.expect("the filled stream");
    let (cpu, t) = (b.nats_cpu(), std::time::Instant::now());
    let mut subjects = handle
        .info_with_subjects(format!("{prefix}.>"))
        .await
        .expect("listing subjects");
    let mut n = 0u64;
    while subjects.try_next().await.expect("a page").is_some() {
        n += 1;
    }
    let out = json!({
        "subjects": n,
        "seconds": t.elapsed().as_secs_f64(),
        "nats_cpu_s": b.nats_cpu() - cpu,
        "nats_memory_after": nats_memory(b.nats_pid()),
    });
    println!("listing the stream's subjects: {out}");
    out
}

/// Latency of the last message of random keys' subjects.
async fn direct_gets(b: &Bench, prefix: &str, stream: &str, keys: u64) -> serde_json::Value {
    let client = async_nats::connect(b.nats.url()).await.expect("connecting");
    let js = async_nats::jetstream::new(client);
    let handle = js.get_stream(stream).await.expect("the filled stream");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let cpu = b.nats_cpu();
    let mut held = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let subject = subject_of(prefix, rng.below(keys) + 1);
        let t = std::time::Instant::now();
        handle
            .direct_get_last_for_subject(subject)
            .await
            .expect("a direct get");
        held.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let held_cpu = b.nats_cpu() - cpu;
    let mut refetch = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let key = key_of(rng.below(keys) + 1);
        let t = std::time::Instant::now();
        walcast::client::refetch_from_stream(&js, stream, prefix, &key)
            .await
            .expect("a refetch");
        refetch.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let concurrent = concurrent_gets(b, &handle, prefix, keys, &mut rng).await;
    let out = json!({
        "held_stream_handle_ms": crate::churn::stats(held),
        "held_stream_handle_nats_cpu_s_per_10k": held_cpu,
        "refetch_from_stream_ms": crate::churn::stats(refetch),
        "concurrent_32": concurrent,
    });
    println!("direct get with {keys} keys in the stream: {out}");
    out
}

/// 20,000 direct gets, 32 in flight: gets per second and nats-server CPU.
async fn concurrent_gets(
    b: &Bench,
    handle: &async_nats::jetstream::stream::Stream,
    prefix: &str,
    keys: u64,
    rng: &mut XorShift,
) -> serde_json::Value {
    use futures::StreamExt;
    let n = 20_000;
    let subjects: Vec<String> = (0..n)
        .map(|_| subject_of(prefix, rng.below(keys) + 1))
        .collect();
    let (cpu, t) = (b.nats_cpu(), std::time::Instant::now());
    let ok = futures::stream::iter(subjects)
        .map(|s| async move { handle.direct_get_last_for_subject(s).await.is_ok() })
        .buffer_unordered(32)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let seconds = t.elapsed().as_secs_f64();
    json!({
        "gets": n,
        "found": ok,
        "seconds": seconds,
        "gets_per_s": n as f64 / seconds,
        "nats_cpu_s": b.nats_cpu() - cpu,
    })
}

/// A small deterministic generator (no dependency for random keys).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

//! walcast as a contender: its command line, one run to the end (every envelope
//! counted by a subscriber, the slot confirmed at the end, and with `--snapshot
//! initial` the snapshot complete and everything walcast published counted), the
//! counters it reports (key-state loads and requests, TOAST reads), and the
//! warm-stream fill that a restart scenario starts from.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use walcast::testing::free_port;

use crate::contenders::{await_delivery, Job, RunResult, WalcastSpec, DEADLINE, QUIET};
use crate::setup::Bench;
use crate::watch::{Counter, Pids, SlotWatch};

/// walcast's counters the report shows (summed over their labels).
pub const COUNTERS: &[&str] = &[
    "walcast_key_state_loads_total",
    "walcast_key_state_requests_total",
    "walcast_toast_fetches_total",
    "walcast_toast_fetch_queries_total",
    "walcast_toast_stream_loads_total",
    "walcast_toast_repairs_total",
    "walcast_toast_unavailable_total",
    "walcast_snapshot_rows_total",
    "walcast_snapshot_tables_remaining",
    "walcast_snapshot_duration_seconds",
    "walcast_published_total",
    "walcast_publish_retries_total",
];

/// Subject prefix and stream of a run.
pub fn names(tag: &str) -> (String, String) {
    (format!("b{tag}"), format!("B{}", tag.to_uppercase()))
}

fn args(b: &Bench, spec: WalcastSpec, job: &Job, metrics_addr: &str) -> Vec<String> {
    let (prefix, stream) = names(&job.tag);
    let mut args: Vec<String> = vec!["run".into()];
    for (flag, value) in [
        ("--postgres-url", b.pg.url()),
        ("--nats-url", b.nats_url(spec.replicas)),
        ("--publication", job.publication.clone()),
        ("--slot", job.slot.clone()),
        ("--subject-prefix", prefix),
        ("--stream", stream),
        ("--metrics-addr", metrics_addr.to_string()),
        (
            "--snapshot",
            if spec.snapshot { "initial" } else { "never" }.into(),
        ),
    ] {
        args.extend([flag.to_string(), value]);
    }
    if !spec.jetstream {
        args.extend(["--delivery", "core", "--volatile-sequences"].map(String::from));
    }
    if spec.replicas > 0 {
        args.extend(["--stream-replicas".to_string(), spec.replicas.to_string()]);
    }
    if let Some(n) = spec.key_cache {
        args.extend(["--key-cache".to_string(), n.to_string()]);
    }
    args.extend(crate::seal::args(spec.seal));
    args
}

/// Start walcast (under `BENCH_WALCAST_WRAPPER` if set, e.g. a profiler).
pub fn spawn(b: &Bench, args: &[String]) -> std::process::Child {
    let wrapper: Vec<String> = std::env::var("BENCH_WALCAST_WRAPPER")
        .map(|w| w.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let mut full: Vec<String> = wrapper.iter().skip(1).cloned().collect();
    if !wrapper.is_empty() {
        full.push(b.walcast_bin.clone());
    }
    full.extend(args.iter().cloned());
    let program = wrapper.first().unwrap_or(&b.walcast_bin);
    // BENCH_WALCAST_LOG=warn or info: more of walcast's own log (it logs every
    // unavailable TOAST value at warn).
    let log = std::env::var("BENCH_WALCAST_LOG").unwrap_or_else(|_| "error".into());
    std::process::Command::new(program)
        .args(&full)
        .env("WALCAST_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting walcast")
}

/// SIGTERM, then wait for the exit.
pub async fn stop(mut child: std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// One walcast run over `job`.
pub async fn run(b: &Bench, spec: WalcastSpec, job: &Job) -> RunResult {
    let (prefix, stream) = names(&job.tag);
    let url = b.nats_url(spec.replicas);
    let counter = Counter::start(
        url.split(',').next().unwrap_or(&url).into(),
        format!("{prefix}.>"),
    )
    .await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let child = spawn(b, &args(b, spec, job, &metrics_addr));
    let pids = Pids {
        contender: child.id(),
        nats: b.nats_pid_for(spec.replicas),
    };
    let watch = SlotWatch::start(b.watch_db.clone(), &job.slot, job.endpos, pids);
    let (delivered, expected) = if spec.snapshot {
        await_snapshot(&watch, &counter, &metrics_addr, job.expected).await
    } else {
        let done = await_delivery(&watch, &counter, job.expected, spec.patient).await;
        (done, job.expected)
    };
    let watched = watch.finish().await;
    let counters = counters(&scrape(&metrics_addr).await);
    stop(child).await;
    let mut result = RunResult::new(&watched, counter.last_at(), expected);
    result.delivered = Some(counter.count());
    result.mean_payload_bytes = counter.mean_payload();
    result.payload_bytes = counter.bytes();
    result.complete &= delivered;
    result.counters = counters;
    counter.stop();
    if spec.jetstream {
        if spec.replicas == 0 {
            (result.stored_bytes, result.disk_bytes) = stored(b, &stream).await;
        }
        if !spec.keep_stream {
            b.delete_streams_at(&url, &[format!("{stream}_META"), stream])
                .await;
        }
    }
    result
}

/// The stream's `state.bytes` and the size of its files in the store directory.
async fn stored(b: &Bench, stream: &str) -> (Option<u64>, Option<u64>) {
    let Ok(client) = async_nats::connect(b.nats.url()).await else {
        return (None, None);
    };
    let js = async_nats::jetstream::new(client);
    let Ok(mut s) = js.get_stream(stream).await else {
        return (None, None);
    };
    let bytes = s.info().await.ok().map(|i| i.state.bytes);
    let dir = b.nats.store_dir().join("jetstream/$G/streams").join(stream);
    (bytes, Some(crate::seal::dir_bytes(&dir)))
}

/// With a snapshot the envelope count is known at the end only: wait for the slot at
/// the end, the snapshot complete, and the subscriber at what walcast says it
/// published. Returns (complete, envelopes expected).
async fn await_snapshot(
    watch: &SlotWatch,
    counter: &Counter,
    metrics_addr: &str,
    changes: u64,
) -> (bool, u64) {
    let deadline = Instant::now() + DEADLINE;
    let mut published = 0.0;
    loop {
        if watch.confirmed() && counter.count() >= changes {
            let m = counters(&scrape(metrics_addr).await);
            published = m["walcast_published_total"];
            let remaining = m["walcast_snapshot_tables_remaining"];
            if published > 0.0 && remaining == 0.0 && counter.count() as f64 >= published {
                return (true, published as u64);
            }
        }
        if Instant::now() > deadline || (watch.started() && counter.quiet_for(QUIET)) {
            return (false, (published as u64).max(changes));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text of a metrics endpoint (empty when it does not answer).
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut body = String::new();
    if conn.write_all(request.as_bytes()).await.is_ok() {
        let _ = conn.read_to_string(&mut body).await;
    }
    body
}

/// The counters of [`COUNTERS`] in a scrape, each summed over its labels (0 when
/// absent).
pub fn counters(text: &str) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = COUNTERS.iter().map(|c| (c.to_string(), 0.0)).collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(sum), Some(v)) = (out.get_mut(name), value) {
            *sum += v;
        }
    }
    out
}

/// Fill the stream of `tag` with every key of the narrow table, as walcast left it:
/// walcast with its own new slot snapshots the table into it, then stops. The slot
/// is dropped; the run that follows streams a backlog generated after it.
pub async fn fill_warm(b: &Bench, tag: &str) {
    let (prefix, stream) = names(tag);
    let slot = format!("fill_{tag}");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<String> = vec!["run".into()];
    for (flag, value) in [
        ("--postgres-url", b.pg.url()),
        ("--nats-url", b.nats.url()),
        ("--publication", "bench_narrow".into()),
        ("--slot", slot.clone()),
        ("--subject-prefix", prefix),
        ("--stream", stream),
        ("--metrics-addr", metrics_addr.clone()),
    ] {
        args.extend([flag.to_string(), value]);
    }
    let child = spawn(b, &args);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let m = counters(&scrape(&metrics_addr).await);
        if m["walcast_snapshot_duration_seconds"] > 0.0 && m["walcast_published_total"] >= 10_000.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the warm stream {tag} was not filled: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(child).await;
    b.wait_slot_free(&slot).await;
    b.drop_slot(&slot).await;
}

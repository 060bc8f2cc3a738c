//! Bare JetStream publishers: what the same nats-server accepts from a program that
//! does nothing but publish messages of the size walcast produced, over 10,000
//! subjects, into a stream set up like walcast's, with a subscriber counting them
//! (as walcast's runs have one) — per-message PubAcks, one fast-ingest batch, and
//! atomic batches. They read no WAL, so they are timed from their first message to
//! the subscriber's last, and not held to the limit.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::contenders::RunResult;
use crate::setup::Bench;
use crate::watch::Counter;

pub const PER_MESSAGE: &str = "bare js, per-message PubAcks";
pub const FAST_BATCH: &str = "bare js, fast batch";
pub const ATOMIC: &str = "bare js, atomic batches";
pub const ALL: [&str; 3] = [PER_MESSAGE, FAST_BATCH, ATOMIC];

/// Messages kept unacknowledged at most (as walcast's default window, doubled).
const IN_FLIGHT: u64 = 20_000;
/// Subjects the messages go to.
const KEYS: u64 = 10_000;

/// One run of the bare publisher `which`: `n` messages of `size` bytes.
pub async fn run(b: &Bench, which: &str, n: u64, size: usize, tag: &str) -> RunResult {
    let client = async_nats::connect(b.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let (name, prefix) = (format!("CEIL_{}", tag.to_uppercase()), format!("ceil{tag}"));
    stream_like_walcast(&b.nats.url(), &name, &prefix).await;
    let counter = Counter::start(b.nats.url(), format!("{prefix}.>")).await;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    // Timed from the first message (connection and stream set-up are before it, as
    // they are before a walcast run's start).
    let (started, nats_before) = (Instant::now(), b.nats_cpu());
    match which {
        FAST_BATCH => fast_batch(&client, &prefix, n, payload).await,
        ATOMIC => {
            let mut config = js
                .get_stream(&name)
                .await
                .unwrap()
                .cached_info()
                .config
                .clone();
            config.allow_atomic_publish = true;
            js.update_stream(config).await.unwrap();
            atomic(&client, &prefix, n, payload).await;
        }
        _ => per_message(client, &prefix, n, payload).await,
    }
    while counter.count() < n && !counter.quiet_for(Duration::from_secs(2)) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let end = counter.last_at().unwrap_or_else(Instant::now);
    let result = RunResult {
        seconds: end.duration_since(started).as_secs_f64(),
        cpu_seconds: f64::NAN,
        nats_cpu_seconds: b.nats_cpu() - nats_before,
        expected: n,
        delivered: Some(counter.count()),
        complete: counter.count() >= n,
        mean_payload_bytes: size as f64,
        ..Default::default()
    };
    counter.stop();
    let _ = js.delete_stream(&name).await;
    result
}

/// A stream set up like walcast's (one message per subject, direct gets, the
/// duplicate window, fast-ingest batches allowed).
pub async fn stream_like_walcast(url: &str, name: &str, prefix: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{prefix}.>")],
        max_messages_per_subject: 1,
        allow_direct: true,
        allow_batch_publish: true,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// An async publisher with `Nats-Msg-Id`, PubAcks awaited with `IN_FLIGHT` pending.
async fn per_message(client: async_nats::Client, prefix: &str, n: u64, payload: bytes::Bytes) {
    use async_nats::jetstream::message::PublishMessage as Publish;
    use futures::stream::FuturesUnordered;
    let js = async_nats::jetstream::ContextBuilder::new()
        .max_ack_inflight(IN_FLIGHT as usize)
        .backpressure_on_inflight(true)
        .build(client);
    let mut acks = FuturesUnordered::new();
    for i in 0..n {
        let key = i % KEYS;
        let message = Publish::build()
            .payload(payload.clone())
            .message_id(format!("{key}:{i}"));
        let ack = js
            .send_publish(format!("{prefix}.k.{key}"), message)
            .await
            .unwrap();
        acks.push(std::future::IntoFuture::into_future(ack));
        while acks.len() >= IN_FLIGHT as usize {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
}

/// One fast-ingest batch (flow acks every 500) with walcast's three headers per
/// message (`Nats-Msg-Id`, a position header, the `Nats-Expected-Last-Sequence`
/// chain), committed at the end.
async fn fast_batch(client: &async_nats::Client, prefix: &str, n: u64, payload: bytes::Bytes) {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(format!("{inbox}.>")).await.unwrap();
    let mut acked = 0u64;
    for i in 1..=n {
        let key = i % KEYS;
        let op = match i {
            1 => 0,
            _ if i == n => 2,
            _ => 1,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{key}:{i}").as_str());
        headers.insert("Walcast-Position", format!("0/{i:X}:0").as_str());
        headers.insert("Nats-Expected-Last-Sequence", (i - 1).to_string().as_str());
        let reply = format!("{inbox}.b.500.fail.{i}.{op}.$FI");
        client
            .publish_with_reply_and_headers(
                format!("{prefix}.k.{key}"),
                reply,
                headers,
                payload.clone(),
            )
            .await
            .unwrap();
        while i - acked >= IN_FLIGHT {
            acked = acked.max(ack_count(&replies.next().await.unwrap().payload));
        }
    }
    while acked < n {
        acked = acked.max(ack_count(&replies.next().await.unwrap().payload));
    }
}

/// Atomic batches (`allow_atomic`) of 1,000 messages (the server's limit), the same
/// headers (the expected sequence on each batch's first message, the only one the
/// server lets carry it), only the commit with a reply subject, 40 batches in flight
/// (the server allows 50 per stream).
async fn atomic(client: &async_nats::Client, prefix: &str, n: u64, payload: bytes::Bytes) {
    const BATCH: u64 = 1000;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(format!("{inbox}.>")).await.unwrap();
    let (mut committed, mut stored) = (0u64, 0u64);
    for i in 1..=n {
        let (seq, batch) = ((i - 1) % BATCH + 1, (i - 1) / BATCH);
        let headers = atomic_headers(i, seq, batch);
        let subject = format!("{prefix}.k.{}", i % KEYS);
        if seq == BATCH || i == n {
            let mut headers = headers;
            headers.insert("Nats-Batch-Commit", "1");
            let reply = format!("{inbox}.{batch}");
            client
                .publish_with_reply_and_headers(subject, reply, headers, payload.clone())
                .await
                .unwrap();
            committed += 1;
        } else {
            client
                .publish_with_headers(subject, headers, payload.clone())
                .await
                .unwrap();
        }
        while committed - stored >= 40 {
            ack_count(&replies.next().await.unwrap().payload);
            stored += 1;
        }
    }
    while stored < committed {
        ack_count(&replies.next().await.unwrap().payload);
        stored += 1;
    }
}

fn atomic_headers(i: u64, seq: u64, batch: u64) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Batch-Id", format!("b{batch}").as_str());
    headers.insert("Nats-Batch-Sequence", seq.to_string().as_str());
    headers.insert("Nats-Msg-Id", format!("{}:{i}", i % KEYS).as_str());
    headers.insert("Walcast-Position", format!("0/{i:X}:0").as_str());
    if seq == 1 {
        headers.insert("Nats-Expected-Last-Sequence", (i - 1).to_string().as_str());
    }
    headers
}

/// The batch sequence a fast-batch reply acknowledges (a flow ack's `seq`, a PubAck's
/// `count`); panics on an error reply.
fn ack_count(payload: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert!(
        v.get("error").is_none() && v["type"] != "err" && v["type"] != "gap",
        "{v}"
    );
    v.get("count")
        .or(v.get("seq"))
        .and_then(|x| x.as_u64())
        .unwrap_or(0)
}

/// `BENCH_ONLY=ceil`: the bare publishers alone, msgs/s by protocol and size.
pub async fn alone(b: &Bench) {
    for size in [60usize, 400] {
        let n = b.settings.rows(200_000.0);
        for which in ALL {
            let r = run(b, which, n, size, &format!("alone{size}")).await;
            println!(
                "bare publisher {which}, {n} x {size} B: {:.0} msgs/s (nats-server CPU {:.2} s)",
                n as f64 / r.seconds,
                r.nats_cpu_seconds
            );
        }
    }
}

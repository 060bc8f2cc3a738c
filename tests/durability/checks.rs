//! What a consumer reading walcast's stream checks after a crash test: every change
//! written received, per-key sequences dense from 1, final values equal to the
//! database, a live subscriber's duplicates byte-identical.
#![allow(dead_code)] // shared by tests/durability.rs and tests/cluster.rs

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::common::Collector;
use super::workload::Written;
use walcast::wire::codec::{self, Envelope, Op};

/// Which stream and table a check reads: walcast's stream `stream`, envelope
/// subjects under `prefix.`, keys of `public.<table>` (ids `bigint`, a column `v`).
pub struct Target<'a> {
    pub stream: &'a str,
    pub prefix: &'a str,
    pub table: &'a str,
}

/// The durability tests' default: `walcast run` with its defaults over table `kv`.
pub const KV: Target<'static> = Target {
    stream: "WALCAST",
    prefix: "walcast",
    table: "kv",
};

/// Every envelope in stream `t.stream` under `t.prefix`, in stream order.
pub async fn read_stream(nats_url: &str, t: &Target<'_>) -> Vec<Envelope> {
    let client = walcast::client::connect(nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(t.stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::with_capacity(state.messages as usize);
    let prefix = format!("{}.", t.prefix);
    for seq in state.first_sequence..=state.last_sequence {
        let msg = match stream.get_raw_message(seq).await {
            Ok(msg) => msg,
            // A sequence the store lost (the rolled-back store): nothing to read.
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                continue
            }
            Err(e) => panic!("reading #{seq} of {}: {e}", t.stream),
        };
        if msg.subject.starts_with(&prefix) {
            out.push(codec::decode(&msg.payload).unwrap());
        }
    }
    out
}

/// What a consumer reading the stream found against the database.
#[derive(Debug, Default)]
pub struct Report {
    /// Envelopes read.
    pub checked: usize,
    /// Keys whose sequences are not dense 1..n in stream order.
    pub holes: usize,
    /// Keys with fewer distinct sequences than changes written to them.
    pub short: usize,
    /// Keys whose last envelope differs from the database (or of another table).
    pub wrong: usize,
}

/// The checks of a consumer reading the stream, counted, not asserted: the caller
/// asserts what it expects.
pub async fn inspect(
    nats_url: &str,
    db: &tokio_postgres::Client,
    written: &Written,
    t: &Target<'_>,
) -> Report {
    let envelopes = read_stream(nats_url, t).await;
    let mut per_key: BTreeMap<String, Vec<&Envelope>> = BTreeMap::new();
    for e in &envelopes {
        per_key.entry(e.key.clone()).or_default().push(e);
    }
    let mut report = Report {
        checked: envelopes.len(),
        short: count_short(&per_key, written, t),
        ..Report::default()
    };
    for (key, list) in &per_key {
        let seqs: Vec<u64> = list.iter().map(|e| e.sequence).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        if seqs != expected {
            if report.holes < 5 {
                println!("{key}: sequences {seqs:?} are not dense and in order");
            }
            report.holes += 1;
        }
    }
    report.wrong = count_wrong(&per_key, db, t).await;
    report
}

/// Keys whose last envelope disagrees with the database, or in the database and never
/// published, or of another table than `t.table`.
async fn count_wrong(
    per_key: &BTreeMap<String, Vec<&Envelope>>,
    db: &tokio_postgres::Client,
    t: &Target<'_>,
) -> usize {
    let rows = db
        .query(&format!("SELECT id, v FROM {}", t.table), &[])
        .await
        .unwrap();
    let in_db: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                format!("public.{}:{}", t.table, r.get::<_, i64>(0)),
                r.get::<_, i64>(1),
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for (key, list) in per_key {
        let last = list.last().unwrap();
        let ok = match in_db.get(key) {
            Some(v) => {
                last.op != Op::Delete && last.column("v").and_then(|x| x.as_i64()) == Some(*v)
            }
            None => last.op == Op::Delete && key.starts_with(&format!("public.{}:", t.table)),
        };
        if !ok {
            wrong.push(format!(
                "{key}: last {:?} {:?}, database {:?}",
                last.op,
                last.column("v"),
                in_db.get(key)
            ));
        }
    }
    wrong.extend(
        in_db
            .keys()
            .filter(|k| !per_key.contains_key(*k))
            .map(|k| format!("{k}: in the database, never published")),
    );
    for w in wrong.iter().take(5) {
        println!("{w}");
    }
    wrong.len()
}

/// The checks of a consumer reading walcast's default stream over `kv`; returns
/// (envelopes checked, keys whose sequences are not dense 1..n in stream order). The
/// caller asserts the count. Every change `written` is there, and the last envelope
/// of every key equals the database (asserted here).
pub async fn check_stream_against_db(
    nats_url: &str,
    db: &tokio_postgres::Client,
    written: &Written,
) -> (usize, usize) {
    let r = inspect(nats_url, db, written, &KV).await;
    assert_eq!(r.short, 0, "keys got fewer envelopes than changes written");
    assert_eq!(
        r.wrong, 0,
        "keys whose last envelope differs from the database"
    );
    (r.checked, r.holes)
}

/// Keys with fewer distinct sequences in the stream than changes written.
fn count_short(
    per_key: &BTreeMap<String, Vec<&Envelope>>,
    written: &Written,
    t: &Target<'_>,
) -> usize {
    let short: Vec<(u64, usize, usize)> = written
        .per_key
        .iter()
        .filter_map(|(&k, &n)| {
            let list = per_key.get(&format!("public.{}:{k}", t.table));
            let got: std::collections::HashSet<u64> =
                list.into_iter().flatten().map(|e| e.sequence).collect();
            (got.len() < n).then_some((k, n, got.len()))
        })
        .collect();
    if !short.is_empty() {
        println!(
            "{} keys got fewer envelopes than changes written, (id, written, received): {:?}",
            short.len(),
            &short[..short.len().min(5)]
        );
    }
    short.len()
}

/// Same (key, sequence) seen twice by a live subscriber: must be the same bytes.
pub fn duplicates(received: &[(String, Envelope, Vec<u8>)]) -> usize {
    let mut seen: HashMap<(String, u64), &Vec<u8>> = HashMap::new();
    let mut dups = 0;
    for (_, e, bytes) in received {
        match seen.get(&(e.key.clone(), e.sequence)) {
            Some(prev) => {
                assert_eq!(
                    *prev, bytes,
                    "two different envelopes for {} #{}",
                    e.key, e.sequence
                );
                dups += 1;
            }
            None => {
                seen.insert((e.key.clone(), e.sequence), bytes);
            }
        }
    }
    dups
}

/// Collect until nothing arrives for `quiet` (the quiet window is the point).
pub async fn drain_collector(c: &mut Collector, quiet: Duration) {
    loop {
        let before = c.received.len();
        let _ =
            tokio::time::timeout(quiet, c.until(before + 1, quiet + Duration::from_secs(1))).await;
        if c.received.len() == before {
            return;
        }
    }
}

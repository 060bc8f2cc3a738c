//! `BENCH_ONLY=r3` (opt-in: it starts a 3-node JetStream cluster): walcast JetStream
//! into an R1 stream against an R3 stream (`--stream-replicas 3`), both on the same
//! 3-node cluster on 127.0.0.1 (`walcast::testing::NatsCluster`), on two scenarios of
//! the throughput part: `kv`, scenario (a) (200k updates of a two-column row over
//! 10k keys, 2000-row transactions) and `wide`, scenario (c) (50k mixed changes over
//! the narrow table and a wide one with a 4 kB TOASTed column, 10-row transactions).
//! Each runs like any scenario (`scenarios::run`: one slot per contender and
//! repetition, the backlog once, `BENCH_RUNS` interleaved repetitions, the limit's
//! drain beside them, the same timing rule).

use serde_json::json;

use crate::contenders::{walcast, Contender, WalcastSpec, DRAIN, JETSTREAM};
use crate::report::median;
use crate::scenarios::{self, Outcome, Scenario};
use crate::setup::Bench;

pub const CLUSTER_R1: &str = "walcast jetstream, cluster, R1";
pub const CLUSTER_R3: &str = "walcast jetstream, cluster, R3";

fn contenders() -> Vec<Contender> {
    let limit = Contender::standard()
        .into_iter()
        .filter(|c| c.name == DRAIN);
    let on = |replicas| WalcastSpec {
        replicas,
        ..JETSTREAM
    };
    limit
        .chain([walcast(CLUSTER_R1, on(1)), walcast(CLUSTER_R3, on(3))])
        .collect()
}

/// `kv` and `wide`: scenarios (a) and (c) with the cluster contenders.
fn chosen(b: &Bench) -> Vec<Scenario> {
    scenarios::all(&b.settings)
        .into_iter()
        .filter_map(|sc| {
            let part = match sc.part {
                "a" => "r3kv",
                "c" => "r3wide",
                _ => return None,
            };
            Some(Scenario {
                part,
                contenders: contenders(),
                ..sc
            })
        })
        .collect()
}

pub async fn run(b: &Bench) -> serde_json::Value {
    let mut out = Vec::new();
    for sc in chosen(b) {
        let outcome = scenarios::run(b, &sc).await;
        let summary = summarize(&outcome);
        println!("{}: {summary}", sc.name);
        out.push(json!({
            "scenario": sc.name,
            "bench_only": sc.part,
            "summary": summary,
            "runs": outcome.results.iter().filter(|r| !r.runs.is_empty()).collect::<Vec<_>>(),
        }));
    }
    serde_json::Value::Array(out)
}

/// Median rows/s and walcast CPU of each contender, and R3 over R1.
fn summarize(o: &Outcome) -> serde_json::Value {
    let of = |name: &str| o.results.iter().find(|r| r.contender == name);
    let row = |name: &str| {
        of(name).map_or(serde_json::Value::Null, |r| {
            json!({
                "median_rows_per_s": r.median_rate(),
                "median_cpu_s": median(r.runs.iter().map(|x| x.cpu_seconds).collect()),
                "all_complete": r.runs.iter().all(|x| x.complete),
                "runs": r.runs.len(),
            })
        })
    };
    let rate = |name: &str| of(name).map_or(f64::NAN, |r| r.median_rate());
    json!({
        "rows": o.rows,
        "limit": row(DRAIN),
        "r1": row(CLUSTER_R1),
        "r3": row(CLUSTER_R3),
        "r3_over_r1": rate(CLUSTER_R3) / rate(CLUSTER_R1),
    })
}

//! The throughput table: medians and spreads, the ratio to the limit measured in the
//! same scenario, the ratios the targets name, CPU of each contender, of its walsender
//! and of nats-server, what was delivered, and walcast's key-state and TOAST counters;
//! and the limit's check: a contender faster than the limit, in a repetition or in
//! the medians, is listed and printed loudly.

use crate::bare;
use crate::contenders::{self as c, RunResult};
use crate::scenarios::{Outcome, Runs};
use crate::seal;

/// Every scenario's runs.
pub struct Throughput {
    pub outcomes: Vec<Outcome>,
}

/// A contender faster than the limit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    pub scenario: String,
    pub contender: String,
    /// The repetition, or None for the medians.
    pub repetition: Option<usize>,
    pub rows_per_s: f64,
    pub limit_rows_per_s: f64,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rate(r: &Runs, run: &RunResult) -> f64 {
    r.rows as f64 / run.seconds
}

impl Runs {
    pub fn rates(&self) -> Vec<f64> {
        self.runs.iter().map(|x| rate(self, x)).collect()
    }
    pub fn median_rate(&self) -> f64 {
        median(self.rates())
    }
    fn per_100k(&self, f: fn(&RunResult) -> f64) -> f64 {
        median(self.runs.iter().map(f).collect()) / (self.rows as f64 / 100_000.0)
    }
    fn counter(&self, name: &str) -> f64 {
        median(
            self.runs
                .iter()
                .filter_map(|r| r.counters.get(name).copied())
                .collect(),
        )
    }
}

impl Outcome {
    pub fn find(&self, contender: &str) -> Option<&Runs> {
        self.results
            .iter()
            .find(|r| r.contender == contender && !r.runs.is_empty())
    }
    pub fn rate(&self, contender: &str) -> f64 {
        self.find(contender).map_or(f64::NAN, Runs::median_rate)
    }
    fn best(&self, names: &[&str]) -> f64 {
        names
            .iter()
            .map(|n| self.rate(n))
            .filter(|x| x.is_finite())
            .fold(f64::NAN, f64::max)
    }
    /// The fastest single run of `pg_recvlogical` or the drain in the scenario: how
    /// fast this machine drained the stream when nothing else was in the way. (Per
    /// repetition, the walsender's own CPU time for the same WAL varied up to 2.6×,
    /// so a repetition's drain was no bound on that repetition's contenders.)
    pub fn limit(&self) -> f64 {
        [c::PG_RECVLOGICAL, c::DRAIN]
            .iter()
            .filter_map(|n| self.find(n))
            .flat_map(Runs::rates)
            .filter(|x| x.is_finite())
            .fold(f64::NAN, f64::max)
    }
    /// The ratios a contender's row names (targets and comparisons).
    fn ratios(&self, r: &Runs) -> String {
        let me = r.median_rate();
        let of = |what: &str, other: f64| {
            (other.is_finite()).then(|| format!("{:.2} of {what}", me / other))
        };
        let parts: Vec<Option<String>> = match r.contender.as_str() {
            c::WALCAST_CORE => vec![
                of("best core peer", self.best(&[c::PYTHON_PEER, c::NODE_PEER])),
                of("rows seen before", self.rate(c::CORE_SEEN)),
            ],
            c::WALCAST_JETSTREAM => vec![
                of("best bare publisher", self.best(&bare::ALL)),
                of("JetStream peer", self.rate(c::NODE_PEER_JETSTREAM)),
            ],
            c::WARM | c::WARM_SMALL_CACHE => {
                vec![of("new stream", self.rate(c::WALCAST_JETSTREAM))]
            }
            c::CORE_SNAPSHOT => vec![of("walcast core", self.rate(c::WALCAST_CORE))],
            c::JETSTREAM_SNAPSHOT => vec![of("walcast jetstream", self.rate(c::WALCAST_JETSTREAM))],
            seal::ZSTD | seal::AES | seal::BOTH | seal::S2 => {
                vec![of("plain", self.rate(seal::PLAIN))]
            }
            _ => vec![],
        };
        let text: Vec<String> = parts.into_iter().flatten().collect();
        if text.is_empty() {
            "—".into()
        } else {
            text.join("; ")
        }
    }

    fn row(&self, r: &Runs) -> String {
        let rates = r.rates();
        let lo = rates
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(f64::INFINITY, f64::min);
        let hi = rates
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(0.0, f64::max);
        let incomplete = r.runs.iter().filter(|x| !x.complete).count();
        let delivered = match (incomplete, r.runs.iter().filter_map(|x| x.delivered).min()) {
            (0, Some(_)) => "all".to_string(),
            (0, None) => "slot at end".to_string(),
            (n, d) => format!("**{n} run(s) incomplete** (min {})", d.unwrap_or(0)),
        };
        let walcast = r.runs.iter().any(|x| !x.counters.is_empty());
        let counter = |names: &[&str]| {
            let v: Vec<String> = names
                .iter()
                .map(|n| format!("{:.0}", r.counter(n)))
                .collect();
            if walcast {
                v.join(" / ")
            } else {
                "—".into()
            }
        };
        let rss = r.runs.iter().map(|x| x.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        format!(
            "| {} | {} | {:.0} | {:.0}–{:.0} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} |\n",
            self.scenario,
            r.contender,
            r.median_rate(),
            lo,
            hi,
            r.median_rate() / self.limit(),
            self.ratios(r),
            r.per_100k(|x| x.cpu_seconds),
            r.per_100k(|x| x.walsender_cpu_seconds),
            r.per_100k(|x| x.nats_cpu_seconds),
            rss,
            delivered,
            counter(&["walcast_key_state_loads_total", "walcast_key_state_requests_total"]),
            counter(&["walcast_toast_fetches_total", "walcast_toast_fetch_queries_total", "walcast_toast_stream_loads_total"]),
            counter(&["walcast_snapshot_rows_total", "walcast_toast_repairs_total", "walcast_toast_unavailable_total"]),
        )
    }

    /// Contenders faster than the limit: per repetition and in the medians. The bare
    /// publishers read no WAL and are not held to it.
    fn violations(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let limit = self.limit();
        let held = self.results.iter().filter(|r| {
            !bare::ALL.contains(&r.contender.as_str())
                && r.contender != c::PG_RECVLOGICAL
                && r.contender != c::DRAIN
        });
        for r in held {
            for (rep, x) in r.rates().into_iter().enumerate() {
                if x > limit {
                    out.push(self.violation(r, Some(rep), x, limit));
                }
            }
        }
        out
    }

    fn violation(&self, r: &Runs, repetition: Option<usize>, x: f64, limit: f64) -> Violation {
        Violation {
            scenario: self.scenario.clone(),
            contender: r.contender.clone(),
            repetition,
            rows_per_s: x,
            limit_rows_per_s: limit,
        }
    }
}

const HEADER: &str = "| scenario | contender | rows/s (median) | min–max rows/s | ratio to limit | ratios the targets name | CPU s / 100k | walsender CPU s / 100k | nats-server CPU s / 100k | peak RSS MiB | delivered | key-state loads / requests | TOAST fetches / fetch queries / stream loads | snapshot rows / repairs / markers |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

impl Throughput {
    pub fn new(outcomes: Vec<Outcome>) -> Self {
        Throughput { outcomes }
    }

    pub fn find(&self, part: &str) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|o| o.scenario.starts_with(&format!("({part})")))
    }

    pub fn table(&self) -> String {
        let mut out = HEADER.to_string();
        for o in &self.outcomes {
            for r in o.results.iter().filter(|r| !r.runs.is_empty()) {
                out.push_str(&o.row(r));
            }
        }
        out.push_str("\nThe drain's pacing (swept, best kept), and the limit per scenario:\n\n");
        for o in &self.outcomes {
            let best = o
                .sweep
                .iter()
                .map(|p| p.seconds)
                .fold(f64::INFINITY, f64::min);
            out.push_str(&format!(
                "- {}: {}; limit {:.0} rows/s (sweep: {} points, fastest {:.3} s)\n",
                o.scenario,
                o.pacing.label(),
                o.limit(),
                o.sweep.len(),
                best
            ));
        }
        out
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.outcomes.iter().flat_map(Outcome::violations).collect()
    }

    /// Loud when the limit did not hold.
    pub fn violations_text(&self) -> String {
        let v = self.violations();
        if v.is_empty() {
            return "The limit held: no contender was faster than it in any repetition.".into();
        }
        let mut out =
            String::from("!!!!!!!! THE LIMIT IS NOT A LIMIT: contenders faster than it !!!!!!!!\n");
        for x in &v {
            let when = x
                .repetition
                .map_or("medians".to_string(), |r| format!("repetition {r}"));
            out.push_str(&format!(
                "!!! {} / {} ({when}): {:.0} rows/s against the limit's {:.0}\n",
                x.scenario, x.contender, x.rows_per_s, x.limit_rows_per_s
            ));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let scenarios: Vec<serde_json::Value> = self
            .outcomes
            .iter()
            .map(|o| {
                serde_json::json!({
                    "scenario": o.scenario,
                    "rows": o.rows,
                    "wal_bytes": o.wal_bytes,
                    "limit_rows_per_s": o.limit(),
                    "drain_pacing": o.pacing,
                    "drain_sweep": o.sweep,
                    "contenders": o.results.iter().filter(|r| !r.runs.is_empty()).map(|r| serde_json::json!({
                        "contender": r.contender,
                        "rows": r.rows,
                        "median_rows_per_s": r.median_rate(),
                        "ratio_to_limit": r.median_rate() / o.limit(),
                        "ratios": o.ratios(r),
                        "runs": r.runs,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::Value::Array(scenarios)
    }
}

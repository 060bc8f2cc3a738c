//! The targets (issues 21 and 22, and the earlier throughput and memory targets),
//! judged from this run's figures only: each with the figures it rests on and met,
//! not met, or not measured in this run.

use crate::contenders as c;
use crate::latency::Latency;
use crate::report::Throughput;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    pub target: String,
    pub result: String,
    /// None: not measured in this run.
    pub met: Option<bool>,
}

fn target(name: &str, parts: Vec<(String, bool)>) -> Target {
    let met = (!parts.is_empty()).then(|| parts.iter().all(|(_, ok)| *ok));
    let result = if parts.is_empty() {
        "not measured in this run".to_string()
    } else {
        parts
            .iter()
            .map(|(t, _)| t.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    Target {
        target: name.into(),
        result,
        met,
    }
}

/// `ratio` of `a` to `b` in each of `scenarios`, at least `min`.
fn ratio_at_least(
    t: &Throughput,
    scenarios: &str,
    a: &str,
    b: Option<&str>,
    min: f64,
) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for part in scenarios.chars() {
        let Some(o) = t.find(&part.to_string()) else {
            continue;
        };
        let base = b.map_or(o.limit(), |b| o.rate(b));
        let x = o.rate(a) / base;
        if x.is_finite() {
            out.push((format!("({part}) {x:.2}"), x >= min));
        }
    }
    out
}

pub fn all(t: &Throughput, lat: &Latency, mem: &serde_json::Value) -> Vec<Target> {
    let violations = t.violations();
    let limit = if t.outcomes.is_empty() {
        vec![]
    } else {
        vec![(
            format!(
                "{} contender runs or medians faster than the limit",
                violations.len()
            ),
            violations.is_empty(),
        )]
    };
    let best_peer = |part: char| -> Vec<(String, bool)> {
        let Some(o) = t.find(&part.to_string()) else {
            return vec![];
        };
        let peer = o.rate(c::PYTHON_PEER).max(o.rate(c::NODE_PEER));
        let x = o.rate(c::WALCAST_CORE) / peer;
        if x.is_finite() {
            vec![(format!("({part}) {x:.2}× the better peer"), x > 1.0)]
        } else {
            vec![]
        }
    };
    vec![
        target("the limit is at least as fast as every contender (issue 22)", limit),
        target("warm-stream JetStream ≥ 0.9× the same backlog into a new stream (issue 21)", ratio_at_least(t, "ab", c::WARM, Some(c::WALCAST_JETSTREAM), 0.9)),
        target("the same with --key-cache 1000, smaller than the 10,000 keys (issue 21)", ratio_at_least(t, "ab", c::WARM_SMALL_CACHE, Some(c::WALCAST_JETSTREAM), 0.9)),
        target("rows that predate the slot: walcast core ahead of both peers (issue 21)", best_peer('d')),
        target("rows that predate the slot: core ≥ 0.8× its rate with the rows seen before (issue 21)", ratio_at_least(t, "d", c::WALCAST_CORE, Some(c::CORE_SEEN), 0.8)),
        target("rows that predate the slot: JetStream ≥ 0.5× the limit (issue 21)", ratio_at_least(t, "d", c::WALCAST_JETSTREAM, None, 0.5)),
        target("RSS < 50 MiB with 1,000,000 distinct keys touched once each (issue 21)", rss(mem, "one_transaction_rss_peak_kib")),
        target("RSS < 50 MiB through a 1,000,000-row snapshot", rss(mem, "snapshot_rss_peak_kib")),
        target("latency: walcast adds ≤ 1 ms at p50 over the bare consumer, 1,000/s and 5,000/s, three runs (issue 22)", added(lat, 0, 1.0)),
        target("latency: walcast adds ≤ 2 ms at p99 over the bare consumer, 1,000/s and 5,000/s, three runs (issue 22)", added(lat, 1, 2.0)),
        target("JetStream ≥ 0.5× the limit in every scenario", ratio_at_least(t, "abcd", c::WALCAST_JETSTREAM, None, 0.5)),
        target("JetStream ≥ 0.9× the best bare publisher", bare_ratio(t)),
        target("core ≥ 0.9× the limit in every scenario", ratio_at_least(t, "abcd", c::WALCAST_CORE, None, 0.9)),
        target("core ahead of both peers in every scenario", "abcd".chars().flat_map(best_peer).collect()),
        target("JetStream CPU per change ≤ 1.5× core's", cpu_ratio(t)),
    ]
}

fn rss(mem: &serde_json::Value, key: &str) -> Vec<(String, bool)> {
    mem.get(key)
        .and_then(|v| v.as_f64())
        .map(|kib| vec![(format!("{:.1} MiB", kib / 1024.0), kib < 50.0 * 1024.0)])
        .unwrap_or_default()
}

/// Each default latency run's added p50 (`which` 0) or p99 (1), per rate.
fn added(lat: &Latency, which: usize, max_ms: f64) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for rate in [1000, 5000] {
        let runs = lat.added(rate);
        if runs.is_empty() {
            continue;
        }
        let figures: Vec<f64> = runs
            .iter()
            .map(|r| if which == 0 { r.0 } else { r.1 })
            .collect();
        let text: Vec<String> = figures.iter().map(|x| format!("{x:+.2}")).collect();
        let ok = figures.len() >= 3 && figures.iter().all(|x| *x <= max_ms);
        out.push((format!("{rate}/s: {} ms", text.join(", ")), ok));
    }
    out
}

fn bare_ratio(t: &Throughput) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for o in &t.outcomes {
        let best = crate::bare::ALL
            .iter()
            .map(|n| o.rate(n))
            .filter(|x| x.is_finite())
            .fold(f64::NAN, f64::max);
        let x = o.rate(c::WALCAST_JETSTREAM) / best;
        if x.is_finite() {
            out.push((format!("{} {x:.2}", &o.scenario[..3]), x >= 0.9));
        }
    }
    out
}

fn cpu_ratio(t: &Throughput) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for o in &t.outcomes {
        let cpu = |name: &str| {
            o.find(name).map_or(f64::NAN, |r| {
                crate::report::median(r.runs.iter().map(|x| x.cpu_seconds).collect())
                    / r.rows as f64
            })
        };
        let x = cpu(c::WALCAST_JETSTREAM) / cpu(c::WALCAST_CORE);
        if x.is_finite() {
            out.push((format!("{} {x:.2}×", &o.scenario[..3]), x <= 1.5));
        }
    }
    out
}

pub fn table(targets: &[Target]) -> String {
    let mut out = String::from("| target | this run | met |\n|---|---|---|\n");
    for t in targets {
        let met = match t.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "—",
        };
        out.push_str(&format!("| {} | {} | {met} |\n", t.target, t.result));
    }
    out
}

//! The throughput scenarios and how one is run: warm streams filled first (if a
//! contender needs one), slots made before the pre-existing rows for the contenders
//! that see them inserted, then the pre-existing rows, one slot per contender and
//! repetition, the backlog, the drain's pacing sweep, and the repetitions — each runs
//! every contender once, interleaved (the order rotates from one repetition to the
//! next), then the bare publishers with the envelope size walcast produced.

use walcast::wire::Lsn;

use crate::bare;
use crate::contenders::{self, Contender, Job, RunResult, WALCAST_JETSTREAM};
use crate::drain::{self, Pacing, SweepPoint};
use crate::setup::Bench;
use crate::walcast_run::fill_warm;
use crate::Settings;

/// One backlog and the contenders that drain it.
pub struct Scenario {
    /// `BENCH_ONLY` name, also the first letter of its slots and subjects.
    pub part: &'static str,
    pub name: &'static str,
    pub publication: &'static str,
    /// Rows that exist before the slots are made: (SQL, rows).
    pub prelude: Option<(String, u64)>,
    pub generate: String,
    /// Row changes the backlog holds.
    pub rows: u64,
    pub contenders: Vec<Contender>,
    /// The bare publishers run too, with walcast JetStream's envelope size.
    pub bare: bool,
}

pub fn all(s: &Settings) -> Vec<Scenario> {
    let (a, b, c, d) = (
        s.rows(200_000.0),
        s.rows(200_000.0),
        s.rows(50_000.0),
        s.rows(50_000.0),
    );
    let with = |extra: Vec<Contender>| [Contender::standard(), extra].concat();
    vec![
        Scenario {
            part: "a",
            name: "(a) 200k updates, 10k keys, 2000-row txs",
            publication: "bench_narrow",
            prelude: None,
            generate: format!("CALL updates({a}, 2000)"),
            rows: a,
            contenders: with(Contender::warm()),
            bare: true,
        },
        Scenario {
            part: "b",
            name: "(b) 200k updates, 10k keys, 1-row txs",
            publication: "bench_narrow",
            prelude: None,
            generate: format!("CALL updates({b}, 1)"),
            rows: b,
            contenders: with(Contender::warm()),
            bare: true,
        },
        Scenario {
            part: "c",
            name: "(c) 50k mixed narrow + wide (new rows)",
            publication: "bench_mixed",
            prelude: None,
            generate: format!("CALL mixed({c})"),
            rows: c,
            contenders: Contender::standard(),
            bare: true,
        },
        Scenario {
            part: "d",
            name: "(d) 50k mixed narrow + wide, 1,000 rows predate the slot",
            publication: "bench_existing",
            prelude: Some((
                "INSERT INTO bench_old SELECT (wide_row(g, 0)).* FROM generate_series(0, 999) g"
                    .into(),
                1000,
            )),
            generate: format!("CALL existing({d})"),
            rows: d,
            contenders: with(Contender::existing_rows()),
            bare: true,
        },
        crate::seal::scenario(c),
    ]
}

/// One contender's runs in a scenario, in repetition order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Runs {
    pub contender: String,
    /// Row changes in its backlog (the scenario's, plus the pre-existing rows' inserts
    /// for a slot made before them); snapshot envelopes are not counted here.
    pub rows: u64,
    pub runs: Vec<RunResult>,
}

/// A scenario's runs.
pub struct Outcome {
    pub scenario: String,
    pub rows: u64,
    pub wal_bytes: u64,
    pub results: Vec<Runs>,
    pub pacing: Pacing,
    pub sweep: Vec<SweepPoint>,
}

fn tag(sc: &Scenario, index: usize, rep: usize) -> String {
    format!("{}{index}r{rep}", sc.part)
}

/// The contenders `BENCH_CONTENDERS` asks for (the limit always), with their index.
fn chosen(b: &Bench, sc: &Scenario) -> Vec<(usize, Contender)> {
    let filter = b.settings.contenders.as_deref();
    sc.contenders
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, c)| {
            c.is_limit() || filter.is_none_or(|f| f.split(',').any(|x| c.name.contains(x.trim())))
        })
        .collect()
}

fn early(c: &Contender) -> bool {
    c.walcast_spec().is_some_and(|s| s.early_slot)
}

/// Make the slots (early ones before the pre-existing rows), generate the backlog;
/// returns (start, end).
async fn prepare(b: &Bench, sc: &Scenario, list: &[(usize, Contender)]) -> (Lsn, Lsn) {
    let runs = b.settings.runs;
    for (i, c) in list {
        if c.walcast_spec().is_some_and(|s| s.warm) {
            for r in 0..runs {
                fill_warm(b, &tag(sc, *i, r)).await;
            }
        }
    }
    let slots = |want_early: bool| -> Vec<String> {
        list.iter()
            .filter(|(_, c)| early(c) == want_early)
            .flat_map(|(i, c)| {
                let second = c.kind_is_drain();
                (0..runs).flat_map(move |r| {
                    let slot = format!("s_{}", tag(sc, *i, r));
                    let again = second.then(|| format!("{slot}{AGAIN}"));
                    std::iter::once(slot).chain(again)
                })
            })
            .collect()
    };
    b.make_slots(&slots(true), "pgoutput").await;
    if let Some((sql, _)) = &sc.prelude {
        b.exec(sql).await;
    }
    let sweep_slot = format!("s_{}_sweep", sc.part);
    b.make_slots(&[slots(false), vec![sweep_slot]].concat(), "pgoutput")
        .await;
    let start = b.current_lsn().await;
    let t = std::time::Instant::now();
    b.exec(&sc.generate).await;
    let end = b.current_lsn().await;
    eprintln!(
        "{}: generated {} changes, {:.1} MB of WAL in {:.1} s",
        sc.name,
        sc.rows,
        (end.0 - start.0) as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    (start, end)
}

pub async fn run(b: &Bench, sc: &Scenario) -> Outcome {
    let list = chosen(b, sc);
    let (start, endpos) = prepare(b, sc, &list).await;
    let sweep_slot = format!("s_{}_sweep", sc.part);
    let (pacing, sweep) = drain::sweep(b, &sweep_slot, sc.publication, endpos).await;
    b.wait_slot_free(&sweep_slot).await;
    b.drop_slot(&sweep_slot).await;
    eprintln!("  the drain's pacing: {}", pacing.label());
    let rows_of = |c: &Contender| {
        sc.rows
            + if early(c) {
                sc.prelude.as_ref().map_or(0, |p| p.1)
            } else {
                0
            }
    };
    let runs = |contender: &str, rows: u64| Runs {
        contender: contender.into(),
        rows,
        runs: Vec::new(),
    };
    let mut results: Vec<Runs> = list
        .iter()
        .map(|(_, c)| runs(c.name, rows_of(c)))
        .chain(bare::ALL.iter().map(|n| runs(n, sc.rows)))
        .collect();
    for rep in 0..b.settings.runs {
        let job = |i: usize, c: &Contender, again: &str| Job {
            slot: format!("s_{}{again}", tag(sc, i, rep)),
            publication: sc.publication.into(),
            endpos,
            expected: rows_of(c),
            tag: tag(sc, i, rep),
            pacing,
        };
        for k in 0..list.len() {
            let at = (k + rep) % list.len();
            let (i, c) = list[at];
            let result = run_one(b, &c, &job(i, &c, ""), rep).await;
            results[at].runs.push(result);
        }
        // The drain again, after every other contender of the repetition: the
        // repetition's limit is the faster of its two runs.
        for (at, (i, c)) in list
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| c.kind_is_drain())
        {
            let again = run_one(b, c, &job(*i, c, AGAIN), rep).await;
            let first = results[at].runs.last_mut().expect("ran");
            if again.seconds < first.seconds || first.seconds.is_nan() {
                *first = again;
            }
        }
        if sc.bare {
            run_bare(b, sc, rep, &mut results).await;
        }
    }
    Outcome {
        scenario: sc.name.into(),
        rows: sc.rows,
        wal_bytes: endpos.0 - start.0,
        results,
        pacing,
        sweep,
    }
}

/// The suffix of the drain's second slot in a repetition.
const AGAIN: &str = "_again";

/// One run of a contender on its slot, printed; the slot dropped after.
async fn run_one(b: &Bench, c: &Contender, job: &Job, rep: usize) -> RunResult {
    let result = contenders::run(b, c, job).await;
    print_run(c.name, rep, &result);
    b.wait_slot_free(&job.slot).await;
    b.drop_slot(&job.slot).await;
    result
}

/// The bare publishers of one repetition, with the envelope size walcast JetStream
/// produced so far in this scenario.
async fn run_bare(b: &Bench, sc: &Scenario, rep: usize, results: &mut [Runs]) {
    let sizes: Vec<f64> = results
        .iter()
        .filter(|r| r.contender == WALCAST_JETSTREAM)
        .flat_map(|r| r.runs.iter().map(|x| x.mean_payload_bytes))
        .filter(|s| *s > 0.0)
        .collect();
    let Some(size) = sizes.last().map(|s| s.round() as usize) else {
        return;
    };
    for which in bare::ALL {
        let result = bare::run(b, which, sc.rows, size, &format!("{}r{rep}", sc.part)).await;
        print_run(which, rep, &result);
        if let Some(r) = results.iter_mut().find(|r| r.contender == which) {
            r.runs.push(result);
        }
    }
}

fn print_run(name: &str, rep: usize, r: &RunResult) {
    let delivered = r.delivered.map_or(String::new(), |d| {
        format!(", delivered {d} of {}", r.expected)
    });
    eprintln!(
        "  {name} run {rep}: {:.3} s, {:.0} rows/s, CPU {:.2} s, walsender CPU {:.2} s, nats-server CPU {:.2} s{delivered}{}{}",
        r.seconds,
        r.expected as f64 / r.seconds,
        r.cpu_seconds,
        r.walsender_cpu_seconds,
        r.nats_cpu_seconds,
        if r.complete { "" } else { " — INCOMPLETE" },
        if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) },
    );
}

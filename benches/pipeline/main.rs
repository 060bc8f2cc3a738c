//! `make bench`: walcast against the limit, bare JetStream publishers and the Python
//! and Node peers, side by side in one run, plus latency against a bare consumer and
//! memory.
//!
//! Starts its own PostgreSQL and nats-server (the test fixtures). Each scenario's
//! backlog is generated once after one slot per contender and repetition was created
//! at the same LSN; every repetition then runs every contender once, one after the
//! other (interleaved, the order rotating), each on its own slot. Every contender is
//! timed by one rule (`watch`): from the moment its walsender holds the slot (the
//! first byte asked for) to the moment the slot's confirmed position reached the
//! backlog's end and, for a publisher, its subscriber counted everything; interpreter
//! and process start-up are outside. **The limit** is the fastest single run of
//! `pg_recvlogical` and of a minimal drain (`drain`) whose read pacing is swept first
//! and the best kept; the drain runs twice in each repetition (at its turn in the
//! rotation and again after every other contender). A limit is an upper bound, so it
//! is the best of all those draws: the walsender's own CPU time for the same WAL
//! varies from one run to the next (up to 2.6× in (b)), and a contender that ran
//! while it was cheap must not beat a drain that ran while it was dear. A contender
//! run faster than the limit is reported loudly.
//!
//! Files: `large_txn` (one 1,000,000-row transaction, protocol 1 against streaming),
//! `setup` (servers, schema, the bench's handles), `scenarios` (what is
//! drained, in which order), `contenders` (one run of each kind), `walcast_run`,
//! `drain` (the limit's drain and its sweep), `watch` (the timing rule), `bare` (bare
//! JetStream publishers), `report` (table, ratios, the limit's check), `targets`, `latency` and `consumer`
//! (walcast against a bare `pg_recvlogical` in the same run), `memory`, `machine`,
//! `scale` and `churn` (1,000,000 keys in the stream: nats-server memory, key-state
//! load, direct gets; the client's subscribe/unsubscribe churn), `replicas` (R1
//! against R3 on a 3-node cluster).
//!
//! `scale` is in the default list (2.5 minutes at full scale in its run of
//! 2026-12-03 on 2 shared cores). `r3` is opt-in: its 3-node cluster is started with
//! the bench's servers and would run beside every other part (about 1.5 minutes):
//! `BENCH_ONLY=r3 BENCH_OUT=/tmp/r3.json cargo bench --bench pipeline`; the scale
//! part alone: `BENCH_ONLY=scale BENCH_OUT=/tmp/scale.json cargo bench --bench
//! pipeline`. docs/scaling.md quotes both.
//!
//! `seal` (issue 26): walcast JetStream plain, `--compress`, `--encrypt`, both and
//! `--stream-compression s2` on the wide-mixed backlog, with bytes on the wire and
//! stored; not in the default set (run it alone: `BENCH_ONLY=seal`).
//!
//! Environment: `BENCH_RUNS` (3), `BENCH_SCALE` (1.0, multiplies the row counts),
//! `BENCH_LATENCY_SECS` (30), `BENCH_OUT` (docs/benchmarks.json), `BENCH_ONLY`
//! (`a,b,c,d,lat,linger,mem,big,scale`; also `ceil`, `r3`, `seal`), `BENCH_CONTENDERS` (substrings of
//! contender names; the limit always runs), `BENCH_DRAIN_SWEEP`
//! (`nap_us:floor:below,...`), `BENCH_COMMAND` (recorded in the JSON after the `BENCH_*`
//! variables set; `make bench` sets it),
//! `BENCH_WALCAST_WRAPPER` (e.g. `valgrind --tool=callgrind`), `BENCH_WALCAST_LOG`
//! (`error`), `BENCH_WALCAST_BIN` (another walcast build, to compare commits).

mod bare;
mod churn;
mod consumer;
mod contenders;
mod drain;
mod large_txn;
mod latency;
mod machine;
mod memory;
mod replicas;
mod report;
mod scale;
mod scenarios;
mod seal;
mod setup;
mod targets;
mod walcast_run;
mod watch;

type DynError = Box<dyn std::error::Error + Send + Sync>;

/// What the environment asks of this run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runs: usize,
    pub scale: f64,
    pub latency_secs: u64,
    only: String,
    pub contenders: Option<String>,
    pub sweep: Vec<drain::Pacing>,
    pub out: String,
    pub command: String,
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The command that made this run: the `BENCH_*` variables set, then `BENCH_COMMAND`
/// (`make bench` sets it) or `cargo bench --bench pipeline`.
fn command() -> String {
    let base =
        std::env::var("BENCH_COMMAND").unwrap_or_else(|_| "cargo bench --bench pipeline".into());
    let mut vars: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BENCH_") && k != "BENCH_COMMAND")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vars.sort();
    vars.push(base);
    vars.join(" ")
}

impl Settings {
    fn from_env() -> Settings {
        let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.json").to_string()
        });
        Settings {
            runs: (env_f64("BENCH_RUNS", 3.0) as usize).max(1),
            scale: env_f64("BENCH_SCALE", 1.0),
            latency_secs: env_f64("BENCH_LATENCY_SECS", 30.0) as u64,
            only: std::env::var("BENCH_ONLY")
                .unwrap_or_else(|_| "a,b,c,d,lat,linger,mem,big,scale".into()),
            contenders: std::env::var("BENCH_CONTENDERS").ok(),
            sweep: drain::Pacing::sweep_from_env(),
            out,
            command: command(),
        }
    }

    /// Whether `BENCH_ONLY` asks for this part.
    pub fn want(&self, part: &str) -> bool {
        self.only.split(',').any(|o| o.trim() == part)
    }

    /// A row count at this run's scale.
    pub fn rows(&self, at_scale_one: f64) -> u64 {
        ((at_scale_one * self.scale).round() as u64).max(1)
    }
}

fn main() -> Result<(), DynError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("drain") {
        return drain::child_main(&args[2..]);
    }
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("the benchmark runs under `cargo bench --bench pipeline` (make bench)");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(Settings::from_env()))
}

async fn bench(settings: Settings) -> Result<(), DynError> {
    let started = std::time::Instant::now();
    let b = setup::Bench::start(settings.clone()).await?;
    let mut outcomes = Vec::new();
    for scenario in scenarios::all(&settings) {
        if settings.want(scenario.part) {
            outcomes.push(scenarios::run(&b, &scenario).await);
        }
    }
    if settings.want("ceil") {
        bare::alone(&b).await;
    }
    let throughput = report::Throughput::new(outcomes);
    println!("\n{}", throughput.table());
    let (seal_table, seal) = throughput
        .find("seal")
        .map_or((String::new(), serde_json::Value::Null), seal::report);
    println!("{seal_table}");
    println!("{}", throughput.violations_text());
    let latency = latency::all(&b).await;
    let memory = if settings.want("mem") {
        memory::run(&b).await
    } else {
        serde_json::Value::Null
    };
    let large_transaction = if settings.want("big") {
        large_txn::run(&b).await
    } else {
        serde_json::Value::Null
    };
    let (scale, replication) = past_one_machine(&b).await;
    let targets = targets::all(&throughput, &latency, &memory);
    println!("\n{}", targets::table(&targets));
    let report = serde_json::json!({
        "machine": machine::describe(),
        "command": settings.command,
        "commit": machine::commit(),
        "date": machine::today(),
        "duration_seconds": started.elapsed().as_secs_f64(),
        "runs": settings.runs,
        "scale": settings.scale,
        "only": settings.only,
        "contenders_filter": settings.contenders,
        "throughput": throughput.json(),
        "limit_violations": throughput.violations(),
        "latency": latency.json(),
        "memory": memory,
        "large_transaction": large_transaction,
        "seal": seal,
        "scale": scale,
        "replication": replication,
        "targets": targets,
        "tables_markdown": {
            "throughput": throughput.table(),
            "latency": latency.table(),
            "targets": targets::table(&targets),
        },
    });
    std::fs::write(&settings.out, serde_json::to_string_pretty(&report)?)?;
    println!("raw numbers written to {}", settings.out);
    Ok(())
}

/// The figures of docs/scaling.md: `scale` (with the churn) and `r3`, null when
/// `BENCH_ONLY` does not name them.
async fn past_one_machine(b: &setup::Bench) -> (serde_json::Value, serde_json::Value) {
    let scale = opt_in(&b.settings, "scale", || async {
        let mut v = scale::run(b).await;
        v["churn"] = churn::run(b).await;
        v
    })
    .await;
    (scale, opt_in(&b.settings, "r3", || replicas::run(b)).await)
}

/// A part's figures, or null when `BENCH_ONLY` does not name it.
async fn opt_in<F, Fut>(settings: &Settings, part: &str, run: F) -> serde_json::Value
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    if settings.want(part) {
        run().await
    } else {
        serde_json::Value::Null
    }
}

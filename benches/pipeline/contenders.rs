//! The contenders and one run of each kind: `pg_recvlogical` and the drain (the
//! limit), the Python and Node peers (`bench/peers`), and walcast (`walcast_run`).
//! Every run is timed by `watch`'s rule and checked for completeness: the slot
//! confirmed at the end, and for a publisher every change counted by a subscriber
//! (a peer also says how many it published).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use walcast::testing::postgres_bin_dir;
use walcast::wire::Lsn;

use crate::drain::Pacing;
use crate::setup::Bench;
use crate::watch::{self, Counter, Pids, SlotWatch, Watched, POLL};

pub const PG_RECVLOGICAL: &str = "pg_recvlogical";
pub const DRAIN: &str = "rust drain";
pub const WALCAST_CORE: &str = "walcast core";
pub const WALCAST_JETSTREAM: &str = "walcast jetstream";
pub const WARM: &str = "walcast jetstream, warm stream";
pub const WARM_SMALL_CACHE: &str = "walcast jetstream, warm stream, --key-cache 1000";
pub const CORE_SEEN: &str = "walcast core, rows seen before";
pub const CORE_SNAPSHOT: &str = "walcast core, initial snapshot";
pub const JETSTREAM_SNAPSHOT: &str = "walcast jetstream, initial snapshot";
pub const PYTHON_PEER: &str = "python peer";
pub const NODE_PEER: &str = "node peer";
pub const NODE_PEER_JETSTREAM: &str = "node peer, jetstream";

/// How walcast runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalcastSpec {
    pub jetstream: bool,
    /// Into a stream that already holds every key of the narrow table.
    pub warm: bool,
    pub key_cache: Option<u32>,
    /// `--snapshot initial` (the default) instead of `never`.
    pub snapshot: bool,
    /// Its slot is made before the scenario's pre-existing rows: it sees them inserted.
    pub early_slot: bool,
    /// `--compress`, `--encrypt`, `--stream-compression` (the `seal` part).
    pub seal: crate::seal::Seal,
    /// Its stream stays after the run (the next run restarts on it).
    pub keep_stream: bool,
    /// 0: the bench's single server; N ≥ 1: the 3-node cluster with
    /// `--stream-replicas N`.
    pub replicas: u8,
    /// Silence before the first envelope is not a stall (a restart on a stream of
    /// 1,000,000 keys lists their subjects first): only the deadline ends it.
    pub patient: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PeerKind {
    Python,
    Node,
    NodeJetStream,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    PgRecvlogical,
    Drain,
    Walcast(WalcastSpec),
    Peer(PeerKind),
}

#[derive(Debug, Clone, Copy)]
pub struct Contender {
    pub name: &'static str,
    pub kind: Kind,
}

pub const fn walcast(name: &'static str, spec: WalcastSpec) -> Contender {
    Contender {
        name,
        kind: Kind::Walcast(spec),
    }
}

const CORE: WalcastSpec = WalcastSpec {
    jetstream: false,
    warm: false,
    key_cache: None,
    snapshot: false,
    early_slot: false,
    seal: crate::seal::Seal::NONE,
    keep_stream: false,
    replicas: 0,
    patient: false,
};
pub const JETSTREAM: WalcastSpec = WalcastSpec {
    jetstream: true,
    ..CORE
};

impl Contender {
    /// The limit: `pg_recvlogical` and the drain.
    pub fn limits() -> Vec<Contender> {
        vec![
            Contender {
                name: PG_RECVLOGICAL,
                kind: Kind::PgRecvlogical,
            },
            Contender {
                name: DRAIN,
                kind: Kind::Drain,
            },
        ]
    }

    /// The limit, walcast in both modes and the three peers.
    pub fn standard() -> Vec<Contender> {
        let others = vec![
            walcast(WALCAST_CORE, CORE),
            walcast(WALCAST_JETSTREAM, JETSTREAM),
            Contender {
                name: PYTHON_PEER,
                kind: Kind::Peer(PeerKind::Python),
            },
            Contender {
                name: NODE_PEER,
                kind: Kind::Peer(PeerKind::Node),
            },
            Contender {
                name: NODE_PEER_JETSTREAM,
                kind: Kind::Peer(PeerKind::NodeJetStream),
            },
        ];
        [Contender::limits(), others].concat()
    }

    /// A restart on a warm stream, with the default key cache and a small one.
    pub fn warm() -> Vec<Contender> {
        let warm = WalcastSpec {
            warm: true,
            ..JETSTREAM
        };
        let small = WalcastSpec {
            key_cache: Some(1000),
            ..warm
        };
        vec![walcast(WARM, warm), walcast(WARM_SMALL_CACHE, small)]
    }

    /// Rows seen before (core), and the initial snapshot of an operator's slot.
    pub fn existing_rows() -> Vec<Contender> {
        vec![
            walcast(
                CORE_SEEN,
                WalcastSpec {
                    early_slot: true,
                    ..CORE
                },
            ),
            walcast(
                CORE_SNAPSHOT,
                WalcastSpec {
                    snapshot: true,
                    ..CORE
                },
            ),
            walcast(
                JETSTREAM_SNAPSHOT,
                WalcastSpec {
                    snapshot: true,
                    ..JETSTREAM
                },
            ),
        ]
    }

    /// The limit's drain: run twice a repetition, the faster kept.
    pub fn kind_is_drain(&self) -> bool {
        matches!(self.kind, Kind::Drain)
    }

    pub fn is_limit(&self) -> bool {
        matches!(self.kind, Kind::PgRecvlogical | Kind::Drain)
    }

    pub fn walcast_spec(&self) -> Option<WalcastSpec> {
        match self.kind {
            Kind::Walcast(spec) => Some(spec),
            _ => None,
        }
    }
}

/// One run's task.
#[derive(Debug, Clone)]
pub struct Job {
    pub slot: String,
    pub publication: String,
    pub endpos: Lsn,
    /// Changes in this slot's backlog (envelopes a publisher must deliver).
    pub expected: u64,
    /// Unique per scenario, contender and repetition (subjects, streams).
    pub tag: String,
    pub pacing: Pacing,
}

/// What one run cost and delivered.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunResult {
    /// By the rule in `watch` (NaN: it never ended).
    pub seconds: f64,
    /// The contender's process, between start and end.
    pub cpu_seconds: f64,
    pub walsender_cpu_seconds: f64,
    pub nats_cpu_seconds: f64,
    pub peak_rss_kib: u64,
    pub expected: u64,
    /// What its subscriber counted (none for the drains).
    pub delivered: Option<u64>,
    /// Confirmed at the end, and everything delivered.
    pub complete: bool,
    pub mean_payload_bytes: f64,
    /// Payload bytes the subscriber received (what went over the wire).
    pub payload_bytes: u64,
    /// walcast JetStream: the stream's `state.bytes` at the end, and the size of its
    /// files in the server's store directory.
    pub stored_bytes: Option<u64>,
    pub disk_bytes: Option<u64>,
    /// walcast's counters at the end of the run.
    pub counters: BTreeMap<String, f64>,
    pub note: String,
}

impl RunResult {
    pub fn new(w: &Watched, last_message: Option<Instant>, expected: u64) -> RunResult {
        RunResult {
            seconds: watch::seconds(w, last_message),
            cpu_seconds: w.contender_cpu,
            walsender_cpu_seconds: w.walsender_cpu,
            nats_cpu_seconds: w.nats_cpu,
            peak_rss_kib: w.peak_rss_kib,
            expected,
            complete: w.confirmed_at.is_some(),
            ..Default::default()
        }
    }
}

/// A run gives up this long after its last progress.
pub const QUIET: Duration = Duration::from_secs(10);
/// And after this long in all.
pub const DEADLINE: Duration = Duration::from_secs(1200);

pub async fn run(b: &Bench, c: &Contender, job: &Job) -> RunResult {
    match c.kind {
        Kind::PgRecvlogical => run_limit(b, job, pg_recvlogical(b, job)).await,
        Kind::Drain => {
            let cmd = job
                .pacing
                .command(b.pg.port, &job.slot, &job.publication, job.endpos, true);
            run_limit(b, job, cmd).await
        }
        Kind::Peer(kind) => run_peer(b, kind, job).await,
        Kind::Walcast(spec) => crate::walcast_run::run(b, spec, job).await,
    }
}

fn pg_recvlogical(b: &Bench, job: &Job) -> std::process::Command {
    let mut cmd = std::process::Command::new(postgres_bin_dir().unwrap().join("pg_recvlogical"));
    cmd.args([
        "-d",
        &b.pg_kv_url(),
        "--slot",
        &job.slot,
        "--start",
        "--no-loop",
    ])
    .args(["-o", "proto_version=1", "-o"])
    .arg(format!("publication_names={}", job.publication))
    .arg(format!("--endpos={}", job.endpos))
    .args(["-f", "/dev/null"]);
    cmd
}

/// A drain of the limit: timed until its slot is confirmed at the end.
async fn run_limit(b: &Bench, job: &Job, mut cmd: std::process::Command) -> RunResult {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pids = Pids {
        contender: child.id(),
        nats: b.nats_pid(),
    };
    let watch = SlotWatch::start(b.watch_db.clone(), &job.slot, job.endpos, pids);
    let (deadline, mut exited) = (Instant::now() + DEADLINE, None);
    while !watch.confirmed() && Instant::now() < deadline {
        if exited.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "{} failed: {status}", job.tag);
                exited = Some(Instant::now());
            }
        }
        if exited.is_some_and(|t: Instant| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let watched = watch.finish().await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{} failed: {status}", job.tag);
    let mut result = RunResult::new(&watched, None, job.expected);
    if !result.complete {
        result.note = "exited without confirming the end".into();
    }
    result
}

/// Wait until the slot is confirmed at the end and the subscriber counted `expected`;
/// false when it stalls (nothing new for `QUIET`; `patient`: not before the first
/// message) or the deadline passes.
pub async fn await_delivery(
    watch: &SlotWatch,
    counter: &Counter,
    expected: u64,
    patient: bool,
) -> bool {
    let deadline = Instant::now() + DEADLINE;
    let (mut seen, mut progress_at) = (0, Instant::now());
    loop {
        let count = counter.count();
        if watch.confirmed() && count >= expected {
            return true;
        }
        if count != seen || !watch.started() || (patient && count == 0) {
            (seen, progress_at) = (count, Instant::now());
        }
        if Instant::now() > deadline || progress_at.elapsed() > QUIET {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A peer drains its slot and publishes on `p<tag>.>`; a subscriber counts.
async fn run_peer(b: &Bench, kind: PeerKind, job: &Job) -> RunResult {
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/peers");
    let (program, script) = match kind {
        PeerKind::Python => (format!("{peers}/python/.venv/bin/python"), "python/peer.py"),
        _ => ("node".to_string(), "node/peer.mjs"),
    };
    assert!(
        std::path::Path::new(&program).exists() || program == "node",
        "{program} missing: run `bash bench/peers/install.sh` (make bench does)"
    );
    let prefix = format!("p{}", job.tag);
    let stream = format!("P{}", job.tag.to_uppercase());
    let counter = Counter::start(b.nats.url(), format!("{prefix}.>")).await;
    let mut cmd = std::process::Command::new(program);
    cmd.arg(format!("{peers}/{script}"))
        .args([
            &b.pg_kv_url(),
            &job.slot,
            &job.publication,
            &job.endpos.to_string(),
        ])
        .args([&b.nats.url(), &prefix]);
    if kind == PeerKind::NodeJetStream {
        // A stream like walcast's (one message per subject).
        crate::bare::stream_like_walcast(&b.nats.url(), &stream, &prefix).await;
        cmd.arg("--jetstream");
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pids = Pids {
        contender: child.id(),
        nats: b.nats_pid(),
    };
    let watch = SlotWatch::start(b.watch_db.clone(), &job.slot, job.endpos, pids);
    let delivered = await_delivery(&watch, &counter, job.expected, false).await;
    let watched = watch.finish().await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let mut result = RunResult::new(&watched, counter.last_at(), job.expected);
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    result.delivered = Some(counter.count());
    result.mean_payload_bytes = counter.mean_payload();
    result.complete &=
        delivered && out.status.success() && said == format!("published {}", job.expected);
    result.note = said;
    counter.stop();
    b.delete_streams(&[stream]).await;
    result
}

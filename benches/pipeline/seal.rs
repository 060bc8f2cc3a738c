//! The `seal` part (issue 26): the wide-mixed backlog (scenario (c)'s procedure)
//! drained by walcast JetStream plain, with `--compress` (zstd, rows of 1,024 bytes
//! and more), with `--encrypt` (a key ring from `--encryption-keys-file`), with both,
//! and with `--stream-compression s2`, each run by the scenario machinery (the limit
//! beside them, the same timing rule). Reported per variant: rows/s, bytes on the
//! wire (payload bytes the subscriber received), bytes stored (the stream's
//! `state.bytes`, and the size of its files in the store directory), walcast's CPU
//! seconds (utime + stime of its process between the run's start and end), each
//! with its ratio to plain.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::contenders::{walcast, Contender, WalcastSpec, JETSTREAM};
use crate::report::median;
use crate::scenarios::{Outcome, Runs, Scenario};

/// What a walcast run seals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Seal {
    pub compress: bool,
    pub encrypt: bool,
    pub s2: bool,
}

impl Seal {
    pub const NONE: Seal = Seal {
        compress: false,
        encrypt: false,
        s2: false,
    };
}

pub const PLAIN: &str = "walcast jetstream, plain";
pub const ZSTD: &str = "walcast jetstream, --compress (zstd, rows ≥ 1024 B)";
pub const AES: &str = "walcast jetstream, --encrypt (AES-256-GCM)";
pub const BOTH: &str = "walcast jetstream, --compress and --encrypt";
pub const S2: &str = "walcast jetstream, --stream-compression s2";

/// The bench's tables, each compressed and encrypted in the variants that say so.
const TABLES: [&str; 2] = ["public.bench_wide", "public.bench_narrow"];
/// `--compress`'s threshold: the README's example.
const COMPRESS_MIN: usize = 1024;

/// The part's scenario: (c)'s backlog of `rows` changes, the limit and the five
/// variants. Run it alone: after (c) the wide rows exist and the same procedure
/// writes another mix.
pub fn scenario(rows: u64) -> Scenario {
    Scenario {
        part: "seal",
        name: "(seal) 50k mixed narrow + wide (new rows): --compress, --encrypt, s2",
        publication: "bench_mixed",
        prelude: None,
        generate: format!("CALL mixed({rows})"),
        rows,
        contenders: [Contender::limits(), contenders()].concat(),
        bare: false,
    }
}

/// The five walcast variants.
pub fn contenders() -> Vec<Contender> {
    let with = |seal: Seal| WalcastSpec { seal, ..JETSTREAM };
    let none = Seal::NONE;
    vec![
        walcast(PLAIN, with(none)),
        walcast(
            ZSTD,
            with(Seal {
                compress: true,
                ..none
            }),
        ),
        walcast(
            AES,
            with(Seal {
                encrypt: true,
                ..none
            }),
        ),
        walcast(
            BOTH,
            with(Seal {
                compress: true,
                encrypt: true,
                ..none
            }),
        ),
        walcast(S2, with(Seal { s2: true, ..none })),
    ]
}

/// walcast's flags for `seal`.
pub fn args(seal: Seal) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLES {
        if seal.compress {
            out.extend(["--compress".into(), format!("{table}={COMPRESS_MIN}")]);
        }
        if seal.encrypt {
            out.extend(["--encrypt".into(), table.to_string()]);
        }
    }
    if seal.encrypt {
        let file = keyring_file().display().to_string();
        out.extend(["--encryption-keys-file".into(), file]);
    }
    if seal.s2 {
        out.extend(["--stream-compression".into(), "s2".into()]);
    }
    out
}

/// A key ring for the bench (a fixed, public test key: the cost does not depend on
/// the key), written once to a temporary file.
fn keyring_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("walcast-bench-keys-{}", std::process::id()));
        let ring = "bench-1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
        std::fs::write(&path, ring).expect("writing the bench's key ring");
        path
    })
}

/// Bytes of the files under `dir` (0 when it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// One variant's medians.
struct Figures {
    rate: f64,
    wire: f64,
    stored: f64,
    disk: f64,
    cpu: f64,
}

fn figures(r: &Runs) -> Figures {
    let of = |f: fn(&crate::contenders::RunResult) -> Option<f64>| {
        median(r.runs.iter().filter_map(f).collect())
    };
    Figures {
        rate: r.median_rate(),
        wire: of(|x| Some(x.payload_bytes as f64)),
        stored: of(|x| x.stored_bytes.map(|b| b as f64)),
        disk: of(|x| x.disk_bytes.map(|b| b as f64)),
        cpu: of(|x| Some(x.cpu_seconds)),
    }
}

/// The part's table (markdown) and figures (JSON).
pub fn report(o: &Outcome) -> (String, serde_json::Value) {
    let Some(plain) = o.find(PLAIN).map(figures) else {
        return (String::new(), serde_json::Value::Null);
    };
    let mut table = String::from(
        "| walcast JetStream | rows/s | × plain | MB on the wire | × plain | MB stored (state.bytes) | × plain | MB of stream files | × plain | walcast CPU s | × plain |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    for name in [PLAIN, ZSTD, AES, BOTH, S2] {
        let Some(f) = o.find(name).map(figures) else {
            continue;
        };
        let mb = |b: f64| b / 1e6;
        table.push_str(&format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.3} | {:.2} | {:.3} | {:.2} | {:.3} | {:.2} | {:.2} |\n",
            f.rate,
            f.rate / plain.rate,
            mb(f.wire),
            f.wire / plain.wire,
            mb(f.stored),
            f.stored / plain.stored,
            mb(f.disk),
            f.disk / plain.disk,
            f.cpu,
            f.cpu / plain.cpu,
        ));
        json.push(serde_json::json!({
            "contender": name,
            "median_rows_per_s": f.rate,
            "wire_bytes": f.wire,
            "stored_bytes": f.stored,
            "stream_file_bytes": f.disk,
            "walcast_cpu_seconds": f.cpu,
            "ratio_to_plain": {
                "rows_per_s": f.rate / plain.rate,
                "wire_bytes": f.wire / plain.wire,
                "stored_bytes": f.stored / plain.stored,
                "stream_file_bytes": f.disk / plain.disk,
                "walcast_cpu_seconds": f.cpu / plain.cpu,
            },
        }));
    }
    let value = serde_json::json!({
        "scenario": o.scenario,
        "rows": o.rows,
        "limit_rows_per_s": o.limit(),
        "compress_min_bytes": COMPRESS_MIN,
        "variants": json,
        "table_markdown": table,
    });
    (table, value)
}

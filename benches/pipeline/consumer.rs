//! The bare consumer the latency runs measure walcast against: `pg_recvlogical` on
//! its own slot (`test_decoding` with commit timestamps, written to a pipe the bench
//! reads line by line), so each commit's arrival at a plain logical-replication
//! client is known in the same run, on the same machine, at the same moment.

use std::collections::BTreeMap;
use std::process::Stdio;

use tokio::io::AsyncBufReadExt;
use walcast::testing::postgres_bin_dir;

use crate::setup::Bench;

/// A running `pg_recvlogical` and the task that reads its output.
pub struct BareConsumer {
    child: tokio::process::Child,
    task: tokio::task::JoinHandle<BTreeMap<i64, f64>>,
}

/// Start it on `slot` (made with `test_decoding`).
pub fn start(b: &Bench, slot: &str) -> BareConsumer {
    let mut child =
        tokio::process::Command::new(postgres_bin_dir().unwrap().join("pg_recvlogical"))
            .args(["-d", &b.pg_kv_url(), "--slot", slot, "--start", "--no-loop"])
            .args([
                "-o",
                "include-timestamp=1",
                "-o",
                "skip-empty-xacts=1",
                "-f",
                "-",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting pg_recvlogical");
    let stdout = child.stdout.take().expect("its stdout");
    let task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut out = BTreeMap::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let now = now_micros();
            if let Some(commit) = commit_micros(&line) {
                out.insert(commit, (now - commit) as f64 / 1000.0);
            }
        }
        out
    });
    BareConsumer { child, task }
}

impl BareConsumer {
    /// Stop it; returns commit time (µs since the Unix epoch) → milliseconds to arrive.
    pub async fn stop(mut self) -> BTreeMap<i64, f64> {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        let _ = self.child.wait().await;
        self.task.await.unwrap_or_default()
    }
}

pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `COMMIT 1234 (at 2026-12-03 09:10:11.123456+00)` → the commit time in µs.
pub fn commit_micros(line: &str) -> Option<i64> {
    let rest = line.strip_prefix("COMMIT")?;
    let ts = rest.split_once("(at ")?.1.strip_suffix(')')?;
    timestamptz_micros(ts)
}

/// PostgreSQL's ISO text of a timestamptz (`YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM]`) →
/// µs since the Unix epoch.
fn timestamptz_micros(ts: &str) -> Option<i64> {
    let (date, time) = ts.split_once(' ')?;
    let sign_at = time.rfind(['+', '-'])?;
    let (clock, zone) = time.split_at(sign_at);
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let micros_frac: i64 = format!("{frac:0<6}")[..6].parse().ok()?;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let mut z = zone[1..].split(':').map(|x| x.parse::<i64>());
    let zone_secs =
        sign * (z.next()?.ok()? * 3600 + z.next().and_then(Result::ok).unwrap_or(0) * 60);
    let secs = days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 + s - zone_secs;
    Some(secs * 1_000_000 + micros_frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

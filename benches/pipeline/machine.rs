//! The machine the bench ran on: its description, the date, the commit built, and the
//! busy and stolen shares of all cores' time over an interval (a latency tail can be
//! starvation).

/// "N cores (model), M GiB RAM".
pub fn describe() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {} GiB RAM", mem_kib / 1024 / 1024)
}

/// The commit the bench was built from (`+dirty` with uncommitted changes).
pub fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    format!("{head}{}", if dirty { "+dirty" } else { "" })
}

/// Today's date (UTC), `YYYY-MM-DD`.
pub fn today() -> String {
    let days = crate::consumer::now_micros() / 86_400_000_000;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The machine's CPU time counters (`/proc/stat`, all cores, in ticks).
pub struct MachineCpu {
    busy: u64,
    steal: u64,
    total: u64,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let total: u64 = (0..8).map(at).sum();
        MachineCpu {
            busy: total - at(3) - at(4) - at(7),
            steal: at(7),
            total,
        }
    }

    /// Busy and stolen shares of all cores' time since `earlier`.
    pub fn since(&self, earlier: &MachineCpu) -> (f64, f64) {
        let total = (self.total - earlier.total).max(1) as f64;
        (
            (self.busy - earlier.busy) as f64 / total,
            (self.steal - earlier.steal) as f64 / total,
        )
    }
}

//! The `process_*` metrics: those of the prometheus crate's process collector, except
//! `process_cpu_seconds_total`, which it truncates to whole seconds (a process that
//! used 0.28 s reads 0): walcast's is the user and system time `getrusage` reports,
//! in microseconds.

use prometheus::core::{Collector, Desc};
use prometheus::{proto, Counter};

const CPU_SECONDS: &str = "process_cpu_seconds_total";

/// Collects the `process_*` family.
pub(super) struct ProcessMetrics {
    #[cfg(target_os = "linux")]
    others: prometheus::process_collector::ProcessCollector,
    cpu: Counter,
}

impl ProcessMetrics {
    pub(super) fn new() -> Self {
        ProcessMetrics {
            #[cfg(target_os = "linux")]
            others: prometheus::process_collector::ProcessCollector::for_self(),
            cpu: Counter::new(
                CPU_SECONDS,
                "Total user and system CPU time spent in seconds.",
            )
            .expect("valid metric"),
        }
    }

    /// The crate's families without its CPU time.
    fn others(&self) -> Vec<proto::MetricFamily> {
        #[cfg(target_os = "linux")]
        return self
            .others
            .collect()
            .into_iter()
            .filter(|f| f.name() != CPU_SECONDS)
            .collect();
        #[cfg(not(target_os = "linux"))]
        Vec::new()
    }
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        #[cfg(target_os = "linux")]
        let others = self.others.desc().into_iter();
        #[cfg(not(target_os = "linux"))]
        let others = std::iter::empty();
        others
            .filter(|d| d.fq_name != CPU_SECONDS)
            .chain(self.cpu.desc())
            .collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut families = self.others();
        let used = cpu_seconds() - self.cpu.get();
        if used > 0.0 {
            self.cpu.inc_by(used);
        }
        families.extend(self.cpu.collect());
        families
    }
}

/// User and system CPU time of the whole process so far, in seconds.
pub(super) fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given, which points
    // to one; RUSAGE_SELF is always a valid `who`.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_not_truncated_to_whole_seconds() {
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let metrics = ProcessMetrics::new();
        let cpu = metrics
            .collect()
            .into_iter()
            .find(|f| f.name() == CPU_SECONDS)
            .expect("the CPU family");
        let value = cpu.get_metric()[0].counter.value();
        assert!(value > 0.0 && value < cpu_seconds() + 1e-3, "{value}");
    }
}

//! Prometheus metrics, grouped by the stage that updates them, and the readiness
//! state behind `/readyz`.
//!
//! Labels are bounded: `table` (the publication's tables), `op` and `status`, never a
//! key. The names and help texts are in `names`, in one place.

mod names;
#[cfg(unix)]
mod process;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use names::Metric;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Every metric walcast exports.
pub struct Metrics {
    pub registry: Registry,
    pub source: SourceMetrics,
    pub envelope: EnvelopeMetrics,
    pub sink: SinkMetrics,
    /// Why the process is not ready, when it is not.
    not_ready_reason: Mutex<String>,
    /// Streaming from PostgreSQL.
    ready: AtomicBool,
    /// Connected to NATS.
    nats_up: AtomicBool,
    /// Problems that do not stop the stream (tables refused on their own), shown by
    /// `/readyz`.
    degraded: Mutex<Vec<String>>,
    /// What the process is doing besides streaming (a snapshot), shown by `/readyz`.
    note: Mutex<String>,
}

/// The replication connection and the slot.
pub struct SourceMetrics {
    pub bytes_received: IntCounter,
    pub stream_spilled_bytes: IntCounter,
    pub keepalives: IntCounter,
    pub reconnects: IntCounter,
    pub streaming: IntGauge,
    pub received_lsn: IntGauge,
    pub confirmed_lsn: IntGauge,
    pub lag_bytes: IntGauge,
    pub lag_seconds: Gauge,
    pub slot_active: IntGauge,
    pub slot_wal_status: IntGaugeVec,
    pub slot_safe_wal_size: IntGauge,
    pub slot_retained_wal: IntGauge,
    pub heartbeat_age: Gauge,
}

/// Changes turned into envelopes, and the state loaded for them.
pub struct EnvelopeMetrics {
    /// Row changes as PostgreSQL reports them, not envelopes: an update that changes
    /// the key counts once under `update`, a truncate once per table.
    pub changes: IntCounterVec,
    pub transactions: IntCounter,
    pub last_commit_timestamp: IntGauge,
    pub schema_changes: IntCounterVec,
    pub toast_fetches: IntCounter,
    pub toast_repairs: IntCounter,
    pub toast_fetch_queries: IntCounter,
    pub replays_skipped: IntCounter,
    pub key_state_loads: IntCounter,
    pub key_state_requests: IntCounter,
    pub keyless_skipped: IntCounterVec,
    pub snapshot_rows: IntCounterVec,
    pub snapshot_deletes: IntCounterVec,
    pub snapshot_tables_remaining: IntGauge,
    pub snapshot_seconds: Gauge,
    pub oversize_markers: IntCounter,
    pub toast_stream_loads: IntCounter,
    pub toast_unavailable: IntCounterVec,
    pub missing_setting_columns: IntCounterVec,
}

/// Publishing to NATS.
pub struct SinkMetrics {
    pub published: IntCounter,
    pub publish_retries: IntCounter,
    pub publish_seconds: Histogram,
    pub commit_to_publish_seconds: Histogram,
    pub inflight_envelopes: IntGauge,
    pub nats_connected: IntGauge,
}

/// Creates metrics and registers them.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("unique metric");
        c
    }
    fn counter(&self, m: &Metric) -> IntCounter {
        self.add(IntCounter::new(m.name, m.help).expect("valid metric"))
    }
    fn gauge(&self, m: &Metric) -> IntGauge {
        self.add(IntGauge::new(m.name, m.help).expect("valid metric"))
    }
    fn float_gauge(&self, m: &Metric) -> Gauge {
        self.add(Gauge::new(m.name, m.help).expect("valid metric"))
    }
    fn counter_vec(&self, m: &Metric, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(m.name, m.help), labels).expect("valid metric"))
    }
    fn gauge_vec(&self, m: &Metric, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(m.name, m.help), labels).expect("valid metric"))
    }
    fn histogram(&self, m: &Metric, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(m.name, m.help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }
}

impl SourceMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        SourceMetrics {
            bytes_received: r.counter(&names::BYTES_RECEIVED),
            stream_spilled_bytes: r.counter(&names::STREAM_SPILLED_BYTES),
            keepalives: r.counter(&names::KEEPALIVES),
            reconnects: r.counter(&names::RECONNECTS),
            streaming: r.gauge(&names::STREAMING),
            received_lsn: r.gauge(&names::RECEIVED_LSN),
            confirmed_lsn: r.gauge(&names::CONFIRMED_LSN),
            lag_bytes: r.gauge(&names::LAG_BYTES),
            lag_seconds: r.float_gauge(&names::LAG_SECONDS),
            slot_active: r.gauge(&names::SLOT_ACTIVE),
            slot_wal_status: r.gauge_vec(&names::SLOT_WAL_STATUS, &["status"]),
            slot_safe_wal_size: r.gauge(&names::SLOT_SAFE_WAL_SIZE),
            heartbeat_age: r.float_gauge(&names::HEARTBEAT_AGE),
            slot_retained_wal: r.gauge(&names::SLOT_RETAINED_WAL),
        }
    }
}

impl EnvelopeMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        EnvelopeMetrics {
            changes: r.counter_vec(&names::CHANGES, &["table", "op"]),
            transactions: r.counter(&names::TRANSACTIONS),
            last_commit_timestamp: r.gauge(&names::LAST_COMMIT_TIMESTAMP),
            schema_changes: r.counter_vec(&names::SCHEMA_CHANGES, &["table"]),
            toast_fetches: r.counter(&names::TOAST_FETCHES),
            toast_repairs: r.counter(&names::TOAST_REPAIRS),
            toast_fetch_queries: r.counter(&names::TOAST_FETCH_QUERIES),
            replays_skipped: r.counter(&names::REPLAYS_SKIPPED),
            key_state_loads: r.counter(&names::KEY_STATE_LOADS),
            key_state_requests: r.counter(&names::KEY_STATE_REQUESTS),
            toast_stream_loads: r.counter(&names::TOAST_STREAM_LOADS),
            toast_unavailable: r.counter_vec(&names::TOAST_UNAVAILABLE, &["table"]),
            oversize_markers: r.counter(&names::OVERSIZE_MARKERS),
            snapshot_rows: r.counter_vec(&names::SNAPSHOT_ROWS, &["table"]),
            snapshot_deletes: r.counter_vec(&names::SNAPSHOT_DELETES, &["table"]),
            snapshot_tables_remaining: r.gauge(&names::SNAPSHOT_TABLES_REMAINING),
            snapshot_seconds: r.float_gauge(&names::SNAPSHOT_SECONDS),
            keyless_skipped: r.counter_vec(&names::KEYLESS_SKIPPED, &["table"]),
            missing_setting_columns: r.counter_vec(&names::MISSING_SETTING_COLUMNS, &["table"]),
        }
    }
}

impl SinkMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        SinkMetrics {
            published: r.counter(&names::PUBLISHED),
            publish_retries: r.counter(&names::PUBLISH_RETRIES),
            publish_seconds: r.histogram(
                &names::PUBLISH_SECONDS,
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ],
            ),
            commit_to_publish_seconds: r.histogram(
                &names::COMMIT_TO_PUBLISH_SECONDS,
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ],
            ),
            inflight_envelopes: r.gauge(&names::INFLIGHT_ENVELOPES),
            nats_connected: r.gauge(&names::NATS_CONNECTED),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let r = Registrar(&registry);
        #[cfg(unix)]
        registry
            .register(Box::new(process::ProcessMetrics::new()))
            .expect("unique metric");
        Arc::new(Metrics {
            source: SourceMetrics::new(&r),
            envelope: EnvelopeMetrics::new(&r),
            sink: SinkMetrics::new(&r),
            not_ready_reason: Mutex::new("starting".into()),
            ready: AtomicBool::new(false),
            nats_up: AtomicBool::new(false),
            degraded: Mutex::new(Vec::new()),
            note: Mutex::new(String::new()),
            registry,
        })
    }

    pub fn set_ready(&self, ready: bool, reason: &str) {
        self.ready.store(ready, Ordering::SeqCst);
        *self.not_ready_reason.lock().unwrap() = reason.to_string();
    }

    /// Whether NATS is connected (readiness needs it too).
    pub fn set_nats_connected(&self, up: bool) {
        self.nats_up.store(up, Ordering::SeqCst);
        self.sink.nats_connected.set(i64::from(up));
    }

    /// A problem that leaves the stream running (once per text).
    pub fn add_degraded(&self, problem: String) {
        let mut d = self.degraded.lock().unwrap();
        if !d.contains(&problem) {
            d.push(problem);
        }
    }

    /// Forget the problems of tables no longer published (each problem's text starts
    /// with its table's name).
    pub fn forget_degraded_unless(&self, published: impl Fn(&str) -> bool) {
        self.degraded
            .lock()
            .unwrap()
            .retain(|p| published(p.split(' ').next().unwrap_or_default()));
    }

    /// What the process is doing besides streaming (empty: nothing).
    pub fn set_note(&self, note: String) {
        *self.note.lock().unwrap() = note;
    }

    /// Ready: streaming from PostgreSQL and connected to NATS. The text says why
    /// not, or what is degraded while ready.
    pub fn is_ready(&self) -> (bool, String) {
        if !self.ready.load(Ordering::SeqCst) {
            return (false, self.not_ready_reason.lock().unwrap().clone());
        }
        if !self.nats_up.load(Ordering::SeqCst) {
            return (false, "NATS disconnected".into());
        }
        let mut said = self.degraded.lock().unwrap().clone();
        let note = self.note.lock().unwrap().clone();
        if !note.is_empty() {
            said.push(note);
        }
        (true, said.join("; "))
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics to memory");
        String::from_utf8(buf).expect("metrics are UTF-8")
    }
}

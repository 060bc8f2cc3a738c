//! Prometheus metrics, grouped by the stage that updates them, and the readiness
//! state behind `/readyz`.
//!
//! Labels are bounded: `table` (the publication's tables), `op` and `status`, never a
//! key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

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
    pub changes: IntCounterVec,
    pub transactions: IntCounter,
    pub last_commit_timestamp: IntGauge,
    pub schema_changes: IntCounterVec,
    pub toast_fetches: IntCounter,
    pub replays_skipped: IntCounter,
    pub key_state_loads: IntCounter,
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
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("valid metric"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }
    fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::new(name, help).expect("valid metric"))
    }
    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }
    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }
}

impl SourceMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        SourceMetrics {
            bytes_received: r.counter(
                "walcast_received_bytes_total",
                "pgoutput bytes received from PostgreSQL",
            ),
            keepalives: r.counter(
                "walcast_keepalives_total",
                "Keepalive messages received from PostgreSQL",
            ),
            reconnects: r.counter(
                "walcast_reconnects_total",
                "Replication connections re-established after a failure",
            ),
            streaming: r.gauge(
                "walcast_replication_streaming",
                "1 while the replication stream is open",
            ),
            received_lsn: r.gauge("walcast_received_lsn", "Highest WAL position received"),
            confirmed_lsn: r.gauge(
                "walcast_confirmed_flush_lsn",
                "WAL position reported to PostgreSQL as flushed",
            ),
            lag_bytes: r.gauge(
                "walcast_replication_lag_bytes",
                "Server WAL position received minus the position confirmed as flushed",
            ),
            lag_seconds: r.float_gauge(
                "walcast_replication_lag_seconds",
                "Age of the oldest transaction handed to the sink and not yet confirmed (0 when caught up)",
            ),
            slot_active: r.gauge(
                "walcast_slot_active",
                "1 while the replication slot is in use by a walsender",
            ),
            slot_wal_status: r.gauge_vec(
                "walcast_slot_wal_status",
                "1 for the replication slot's current wal_status (reserved, extended, unreserved, lost)",
                &["status"],
            ),
            slot_safe_wal_size: r.gauge(
                "walcast_slot_safe_wal_size_bytes",
                "WAL that can still be written before the slot is in danger of losing required WAL (-1: unlimited)",
            ),
            heartbeat_age: r.float_gauge(
                "walcast_heartbeat_age_seconds",
                "Age of the last heartbeat seen coming back through the replication stream (end-to-end freshness)",
            ),
            slot_retained_wal: r.gauge(
                "walcast_slot_retained_wal_bytes",
                "WAL retained by the slot (current WAL position minus the slot's restart_lsn)",
            ),
        }
    }
}

impl EnvelopeMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        EnvelopeMetrics {
            changes: r.counter_vec(
                "walcast_changes_total",
                "Row changes turned into envelopes, by table and op",
                &["table", "op"],
            ),
            transactions: r.counter("walcast_transactions_total", "Transactions decoded"),
            last_commit_timestamp: r.gauge(
                "walcast_last_commit_timestamp_seconds",
                "Commit time of the last transaction handed to the sink (Unix seconds)",
            ),
            schema_changes: r.counter_vec(
                "walcast_schema_version_changes_total",
                "Schema version bumps, by table",
                &["table"],
            ),
            toast_fetches: r.counter(
                "walcast_toast_fetches_total",
                "Unchanged TOAST values fetched from the table (no FULL replica identity, not cached)",
            ),
            replays_skipped: r.counter(
                "walcast_replayed_changes_skipped_total",
                "Changes recognised after a restart as already published (no new sequence)",
            ),
            key_state_loads: r.counter(
                "walcast_key_state_loads_total",
                "Per-key sequence states loaded from the stream (cache misses)",
            ),
            toast_stream_loads: r.counter(
                "walcast_toast_stream_loads_total",
                "Unchanged TOAST values read from the key's last envelope in the stream (tracked mode, not cached)",
            ),
            toast_unavailable: r.counter_vec(
                "walcast_toast_unavailable_total",
                "Unchanged TOAST values published as unavailable (no exact source), by table",
                &["table"],
            ),
            oversize_markers: r.counter(
                "walcast_oversize_markers_total",
                "Envelopes above the NATS server's max_payload published as a too-large marker (--oversize marker)",
            ),
            snapshot_rows: r.counter_vec(
                "walcast_snapshot_rows_total",
                "Existing rows published as snapshot envelopes, by table",
                &["table"],
            ),
            snapshot_deletes: r.counter_vec(
                "walcast_snapshot_deletes_total",
                "Keys the stream held that a re-snapshot found without a row: deletes published, by table",
                &["table"],
            ),
            snapshot_tables_remaining: r.gauge(
                "walcast_snapshot_tables_remaining",
                "Tables the running snapshot has still to read (0: none running)",
            ),
            snapshot_seconds: r.float_gauge(
                "walcast_snapshot_duration_seconds",
                "How long the last completed snapshot took",
            ),
            keyless_skipped: r.counter_vec(
                "walcast_keyless_changes_skipped_total",
                "Changes not published because their table has no primary key or replica identity index, by table",
                &["table"],
            ),
            missing_setting_columns: r.counter_vec(
                "walcast_setting_columns_missing_total",
                "Columns named by per-table settings that the table no longer has (dropped while running), by table",
                &["table"],
            ),
        }
    }
}

impl SinkMetrics {
    fn new(r: &Registrar<'_>) -> Self {
        SinkMetrics {
            published: r.counter(
                "walcast_published_total",
                "Envelopes published and confirmed by NATS",
            ),
            publish_retries: r.counter(
                "walcast_publish_retries_total",
                "Groups of envelopes published again because NATS did not confirm them",
            ),
            publish_seconds: r.histogram(
                "walcast_publish_duration_seconds",
                "Time from writing a group of envelopes to NATS until NATS confirmed them",
                &[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ],
            ),
            commit_to_publish_seconds: r.histogram(
                "walcast_commit_to_publish_seconds",
                "Time from a transaction's commit in PostgreSQL until NATS confirmed all its envelopes",
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ],
            ),
            inflight_envelopes: r.gauge(
                "walcast_inflight_envelopes",
                "Envelopes published but not yet confirmed",
            ),
            nats_connected: r.gauge("walcast_nats_connected", "1 while connected to NATS"),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let r = Registrar(&registry);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
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

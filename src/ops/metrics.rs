//! Prometheus metrics: every metric walcast exports, and the readiness state.
//!
//! Labels are bounded: `table` (the publication's tables) and `op`, never a key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric walcast exports.
pub struct Metrics {
    pub registry: Registry,
    pub changes: IntCounterVec,
    pub transactions: IntCounter,
    pub bytes_received: IntCounter,
    pub published: IntCounter,
    pub publish_retries: IntCounter,
    pub publish_seconds: Histogram,
    pub commit_to_publish_seconds: Histogram,
    pub lag_bytes: IntGauge,
    pub lag_seconds: prometheus::Gauge,
    pub slot_active: IntGauge,
    pub slot_wal_status: prometheus::IntGaugeVec,
    pub slot_safe_wal_size: IntGauge,
    pub slot_retained_wal: IntGauge,
    pub inflight_envelopes: IntGauge,
    pub received_lsn: IntGauge,
    pub confirmed_lsn: IntGauge,
    pub last_commit_timestamp: IntGauge,
    pub schema_changes: IntCounterVec,
    pub keepalives: IntCounter,
    pub reconnects: IntCounter,
    pub toast_fetches: IntCounter,
    pub replays_skipped: IntCounter,
    pub key_state_loads: IntCounter,
    pub streaming: IntGauge,
    pub nats_connected: IntGauge,
    /// Why the process is not ready, when it is not.
    pub not_ready_reason: Mutex<String>,
    ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let publish_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "walcast_publish_duration_seconds",
                "Time from writing a group of envelopes to NATS until NATS confirmed them",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(publish_seconds.clone()))
            .expect("unique metric");
        let commit_to_publish_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "walcast_commit_to_publish_seconds",
                "Time from a transaction's commit in PostgreSQL until NATS confirmed all its envelopes",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(commit_to_publish_seconds.clone()))
            .expect("unique metric");
        let lag_seconds = prometheus::Gauge::new(
            "walcast_replication_lag_seconds",
            "Age of the oldest transaction handed to the sink and not yet confirmed (0 when caught up)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lag_seconds.clone()))
            .expect("unique metric");
        let slot_wal_status = prometheus::IntGaugeVec::new(
            Opts::new(
                "walcast_slot_wal_status",
                "1 for the replication slot's current wal_status (reserved, extended, unreserved, lost)",
            ),
            &["status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(slot_wal_status.clone()))
            .expect("unique metric");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        Arc::new(Metrics {
            changes: counter_vec(
                "walcast_changes_total",
                "Row changes turned into envelopes, by table and op",
                &["table", "op"],
            ),
            transactions: counter("walcast_transactions_total", "Transactions decoded"),
            bytes_received: counter(
                "walcast_received_bytes_total",
                "pgoutput bytes received from PostgreSQL",
            ),
            published: counter(
                "walcast_published_total",
                "Envelopes published and confirmed by NATS",
            ),
            publish_retries: counter(
                "walcast_publish_retries_total",
                "Groups of envelopes published again because NATS did not confirm them",
            ),
            publish_seconds,
            commit_to_publish_seconds,
            lag_bytes: gauge(
                "walcast_replication_lag_bytes",
                "Server WAL position received minus the position confirmed as flushed",
            ),
            lag_seconds,
            slot_active: gauge(
                "walcast_slot_active",
                "1 while the replication slot is in use by a walsender",
            ),
            slot_wal_status,
            slot_safe_wal_size: gauge(
                "walcast_slot_safe_wal_size_bytes",
                "WAL that can still be written before the slot is in danger of losing required WAL (-1: unlimited)",
            ),
            slot_retained_wal: gauge(
                "walcast_slot_retained_wal_bytes",
                "WAL retained by the slot (current WAL position minus the slot's restart_lsn)",
            ),
            inflight_envelopes: gauge(
                "walcast_inflight_envelopes",
                "Envelopes published but not yet confirmed",
            ),
            received_lsn: gauge("walcast_received_lsn", "Highest WAL position received"),
            confirmed_lsn: gauge(
                "walcast_confirmed_flush_lsn",
                "WAL position reported to PostgreSQL as flushed",
            ),
            last_commit_timestamp: gauge(
                "walcast_last_commit_timestamp_seconds",
                "Commit time of the last transaction handed to the sink (Unix seconds)",
            ),
            schema_changes: counter_vec(
                "walcast_schema_version_changes_total",
                "Schema version bumps, by table",
                &["table"],
            ),
            keepalives: counter(
                "walcast_keepalives_total",
                "Keepalive messages received from PostgreSQL",
            ),
            reconnects: counter(
                "walcast_reconnects_total",
                "Replication connections re-established after a failure",
            ),
            toast_fetches: counter(
                "walcast_toast_fetches_total",
                "Unchanged TOAST values fetched from the table (no FULL replica identity, not cached)",
            ),
            replays_skipped: counter(
                "walcast_replayed_changes_skipped_total",
                "Changes recognised after a restart as already published (no new sequence)",
            ),
            key_state_loads: counter(
                "walcast_key_state_loads_total",
                "Per-key sequence states loaded from the stream (cache misses)",
            ),
            streaming: gauge(
                "walcast_replication_streaming",
                "1 while the replication stream is open",
            ),
            nats_connected: gauge("walcast_nats_connected", "1 while connected to NATS"),
            not_ready_reason: Mutex::new("starting".into()),
            ready: AtomicBool::new(false),
            registry,
        })
    }

    pub fn set_ready(&self, ready: bool, reason: &str) {
        self.ready.store(ready, Ordering::SeqCst);
        *self.not_ready_reason.lock().unwrap() = reason.to_string();
    }

    pub fn is_ready(&self) -> (bool, String) {
        (
            self.ready.load(Ordering::SeqCst),
            self.not_ready_reason.lock().unwrap().clone(),
        )
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

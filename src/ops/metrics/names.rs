//! Every metric's name and help text, in one place.
//!
//! The names are a public interface: the tests, `deploy/grafana/dashboards/walcast.json`
//! and `deploy/prometheus/alerts.yml` use them. Change one only together with those.

/// A metric's name and help text.
pub(super) struct Metric {
    pub name: &'static str,
    pub help: &'static str,
}

// The replication connection and the slot (`SourceMetrics`).
pub(super) const BYTES_RECEIVED: Metric = Metric {
    name: "walcast_received_bytes_total",
    help: "pgoutput bytes received from PostgreSQL",
};
pub(super) const STREAM_SPILLED_BYTES: Metric = Metric {
    name: "walcast_stream_spilled_bytes_total",
    help: "bytes of streamed, uncommitted transactions written to --stream-spill-dir",
};
pub(super) const KEEPALIVES: Metric = Metric {
    name: "walcast_keepalives_total",
    help: "Keepalive messages received from PostgreSQL",
};
pub(super) const RECONNECTS: Metric = Metric {
    name: "walcast_reconnects_total",
    help: "Replication connections re-established after a failure",
};
pub(super) const STREAMING: Metric = Metric {
    name: "walcast_replication_streaming",
    help: "1 while the replication stream is open",
};
pub(super) const RECEIVED_LSN: Metric = Metric {
    name: "walcast_received_lsn",
    help: "Highest WAL position received",
};
pub(super) const CONFIRMED_LSN: Metric = Metric {
    name: "walcast_confirmed_flush_lsn",
    help: "WAL position reported to PostgreSQL as flushed",
};
pub(super) const LAG_BYTES: Metric = Metric {
    name: "walcast_replication_lag_bytes",
    help: "Server WAL position received minus the position confirmed as flushed",
};
pub(super) const LAG_SECONDS: Metric = Metric {
    name: "walcast_replication_lag_seconds",
    help:
        "Age of the oldest transaction handed to the sink and not yet confirmed (0 when caught up)",
};
pub(super) const SLOT_ACTIVE: Metric = Metric {
    name: "walcast_slot_active",
    help: "1 while the replication slot is in use by a walsender",
};
pub(super) const SLOT_WAL_STATUS: Metric = Metric {
    name: "walcast_slot_wal_status",
    help: "1 for the replication slot's current wal_status (reserved, extended, unreserved, lost)",
};
pub(super) const SLOT_SAFE_WAL_SIZE: Metric = Metric {
    name: "walcast_slot_safe_wal_size_bytes",
    help: "WAL that can still be written before the slot is in danger of losing required WAL (-1: unlimited)",
};
pub(super) const HEARTBEAT_AGE: Metric = Metric {
    name: "walcast_heartbeat_age_seconds",
    help: "Age of the last heartbeat seen coming back through the replication stream (end-to-end freshness)",
};
pub(super) const SLOT_RETAINED_WAL: Metric = Metric {
    name: "walcast_slot_retained_wal_bytes",
    help: "WAL retained by the slot (current WAL position minus the slot's restart_lsn)",
};

// Changes turned into envelopes (`EnvelopeMetrics`).
pub(super) const CHANGES: Metric = Metric {
    name: "walcast_changes_total",
    help: "Row changes published, by table and op (insert, update, delete, truncate): one per change PostgreSQL reports (an update that changes the primary key counts once, under update, though it publishes a delete of the old key and an update of the new one; a TRUNCATE once per table)",
};
pub(super) const TRANSACTIONS: Metric = Metric {
    name: "walcast_transactions_total",
    help: "Transactions decoded",
};
pub(super) const LAST_COMMIT_TIMESTAMP: Metric = Metric {
    name: "walcast_last_commit_timestamp_seconds",
    help: "Commit time of the last transaction handed to the sink (Unix seconds)",
};
pub(super) const SCHEMA_CHANGES: Metric = Metric {
    name: "walcast_schema_version_changes_total",
    help: "Schema version bumps, by table",
};
pub(super) const TOAST_FETCHES: Metric = Metric {
    name: "walcast_toast_fetches_total",
    help: "Unchanged TOAST values fetched from the table (no FULL replica identity, not cached)",
};
pub(super) const TOAST_FETCH_QUERIES: Metric = Metric {
    name: "walcast_toast_fetch_queries_total",
    help: "Queries that fetched unchanged TOAST values from a table (one reads many keys)",
};
pub(super) const TOAST_REPAIRS: Metric = Metric {
    name: "walcast_toast_repairs_total",
    help: "Keys published with an unavailable TOAST value, then read again and published exact",
};
pub(super) const REPLAYS_SKIPPED: Metric = Metric {
    name: "walcast_replayed_changes_skipped_total",
    help: "Changes recognised after a restart as already published (no new sequence)",
};
pub(super) const KEY_STATE_LOADS: Metric = Metric {
    name: "walcast_key_state_loads_total",
    help: "Per-key sequence states loaded from the stream (cache misses)",
};
pub(super) const KEY_STATE_REQUESTS: Metric = Metric {
    name: "walcast_key_state_requests_total",
    help: "Requests to the stream that loaded key states (a batched get loads many)",
};
pub(super) const TOAST_STREAM_LOADS: Metric = Metric {
    name: "walcast_toast_stream_loads_total",
    help: "Unchanged TOAST values read from the key's last envelope in the stream (tracked mode, not cached)",
};
pub(super) const TOAST_UNAVAILABLE: Metric = Metric {
    name: "walcast_toast_unavailable_total",
    help: "Unchanged TOAST values published as unavailable (no exact source), by table",
};
pub(super) const OVERSIZE_MARKERS: Metric = Metric {
    name: "walcast_oversize_markers_total",
    help: "Envelopes above the NATS server's max_payload published as a too-large marker (--oversize marker)",
};
pub(super) const SNAPSHOT_ROWS: Metric = Metric {
    name: "walcast_snapshot_rows_total",
    help: "Existing rows published as snapshot envelopes, by table",
};
pub(super) const SNAPSHOT_DELETES: Metric = Metric {
    name: "walcast_snapshot_deletes_total",
    help:
        "Keys the stream held that a re-snapshot found without a row: deletes published, by table",
};
pub(super) const SNAPSHOT_TABLES_REMAINING: Metric = Metric {
    name: "walcast_snapshot_tables_remaining",
    help: "Tables the running snapshot has still to read (0: none running)",
};
pub(super) const SNAPSHOT_SECONDS: Metric = Metric {
    name: "walcast_snapshot_duration_seconds",
    help: "How long the last completed snapshot took",
};
pub(super) const KEYLESS_SKIPPED: Metric = Metric {
    name: "walcast_keyless_changes_skipped_total",
    help: "Changes not published because their table has no primary key or replica identity index, by table",
};
pub(super) const MISSING_SETTING_COLUMNS: Metric = Metric {
    name: "walcast_setting_columns_missing_total",
    help: "Columns named by per-table settings that the table no longer has (dropped while running), by table",
};

// Publishing to NATS (`SinkMetrics`).
pub(super) const PUBLISHED: Metric = Metric {
    name: "walcast_published_total",
    help: "Envelopes published and confirmed by NATS",
};
pub(super) const PUBLISH_RETRIES: Metric = Metric {
    name: "walcast_publish_retries_total",
    help: "Groups of envelopes published again because NATS did not confirm them",
};
pub(super) const PUBLISH_SECONDS: Metric = Metric {
    name: "walcast_publish_duration_seconds",
    help: "Time from writing a group of envelopes to NATS until NATS confirmed them",
};
pub(super) const COMMIT_TO_PUBLISH_SECONDS: Metric = Metric {
    name: "walcast_commit_to_publish_seconds",
    help: "Time from a transaction's commit in PostgreSQL until NATS confirmed all its envelopes",
};
pub(super) const INFLIGHT_ENVELOPES: Metric = Metric {
    name: "walcast_inflight_envelopes",
    help: "Envelopes published but not yet confirmed",
};
pub(super) const NATS_CONNECTED: Metric = Metric {
    name: "walcast_nats_connected",
    help: "1 while connected to NATS",
};

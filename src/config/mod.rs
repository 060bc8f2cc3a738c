//! Command-line flags, `WALCAST_*` environment variables and an optional TOML file:
//! a flag wins over its variable, which wins over the file, which wins over the
//! default. The flags are resolved once into per-stage settings ([`settings`]).
//!
//! - this file: the command line (`Cli`, one `Args` struct per command);
//! - [`parse`]: the value parsers with their error messages;
//! - [`file`]: the TOML file, as defaults of the command line;
//! - [`names`]: "did you mean" for misspelled names, unknown `WALCAST_*` variables;
//! - [`tables`]: the per-table settings, gathered into one map and checked;
//! - [`settings`]: `RunConfig` resolved into each stage's settings.

use std::net::SocketAddr;
use std::time::Duration;

mod file;
mod keys;
pub mod names;
mod parse;
pub mod settings;
pub mod tables;

pub use crate::envelope::Oversize;
pub use crate::pipeline::snapshot::SnapshotMode;
pub use crate::sink::delivery::{Delivery, PublishMode};
pub use crate::sink::sync::FlushDelay;
pub use file::{parse_command_line, ConfigFileError};
pub use keys::{KeyRingArgs, SecretText};
pub use settings::RunSettings;
pub use tables::TableSettingsMap;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::wire::Op;
use parse::{
    parse_listen_addr, parse_millis, parse_prefix, parse_seconds, parse_seconds_or_off,
    parse_slot_name, parse_subject_pattern, parse_table_bytes, parse_table_name, parse_table_ops,
    parse_table_seconds, parse_table_value,
};

/// walcast: PostgreSQL logical replication to per-key MessagePack envelopes on NATS.
#[derive(Debug, Parser)]
#[command(name = "walcast", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Optional TOML configuration file (flag > environment > file > default).
    #[arg(long, global = true, env = "WALCAST_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Log format.
    #[arg(long, global = true, env = "WALCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Stream changes from PostgreSQL to NATS until SIGINT/SIGTERM.
    Run(RunConfig),
    /// Subscribe to a subject pattern and print the envelopes received, decoded.
    Tail(TailConfig),
    /// Check PostgreSQL and NATS for everything `run` needs; one line per check, with
    /// the fix when it fails; non-zero exit status on any failure.
    Check(RunConfig),
    /// Remove what walcast made: its replication slot (it retains WAL while it
    /// exists), its JetStream streams and, with --drop-publication, the publication.
    /// Lists what it would remove with --dry-run.
    Teardown(TeardownConfig),
    /// Ask a running walcast (over NATS) to snapshot tables again while it streams:
    /// rows that differ from their key's last envelope are published, keys without a
    /// row any more get a delete; progress shows in its log, metrics and /readyz.
    Snapshot(SnapshotConfig),
    /// Compare every row of the tables with its key's last envelope in walcast's
    /// stream, key by key, read-only: keys equal, differing, missing on the bus, on the
    /// bus but gone from the table, and markers, per table. Exit status 1 when anything
    /// differs, 2 on an error; --repair asks the running instance to re-snapshot what
    /// differs.
    Verify(VerifyConfig),
}

/// Settings of `walcast verify`: those of `run` (give it the running instance's flags
/// or file: the per-table column settings shape the compared values), plus what to
/// verify and how.
#[derive(Debug, Clone, Args)]
pub struct VerifyConfig {
    /// Tables to verify, as `schema.table` (none: every table of the publication).
    pub tables: Vec<String>,
    #[command(flatten)]
    pub run: RunConfig,
    /// Print one JSON object per table (one line each) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Ask the running instance (over NATS, `<prefix>_snapshot`) to re-snapshot the
    /// keys that differ (the whole table when a snapshot is under way or too many
    /// keys differ).
    #[arg(long)]
    pub repair: bool,
    /// Rows read and compared per chunk.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_rows: u32,
}

/// Settings of `walcast snapshot`.
#[derive(Debug, Clone, Args)]
pub struct SnapshotConfig {
    /// Tables to snapshot again, as `schema.table` (a bare name is in `public`).
    #[arg(required = true)]
    pub tables: Vec<String>,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// The running instance's subject prefix.
    #[arg(long, env = "WALCAST_SUBJECT_PREFIX", default_value = "walcast", value_parser = parse_prefix)]
    pub subject_prefix: String,
    /// Seconds to wait for the running instance's answer.
    #[arg(long, default_value = "15", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// Settings of `walcast teardown`: those of `run`, plus what to remove.
#[derive(Debug, Clone, Args)]
pub struct TeardownConfig {
    #[command(flatten)]
    pub run: RunConfig,
    /// Drop the publication too (it may be shared with other consumers).
    #[arg(long)]
    pub drop_publication: bool,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the JetStream streams (their envelopes stay refetchable).
    #[arg(long)]
    pub keep_streams: bool,
}

/// Settings of `walcast run`.
#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// PostgreSQL connection URL (libpq style), e.g. postgres://walcast:pw@db:5432/app.
    #[arg(long, env = "WALCAST_POSTGRES_URL")]
    pub postgres_url: String,
    /// A file holding the PostgreSQL password (a mounted secret), used when neither
    /// the URL, PGPASSWORD nor a password file (PGPASSFILE, ~/.pgpass) gives one.
    #[arg(long, env = "WALCAST_POSTGRES_PASSWORD_FILE")]
    pub postgres_password_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Publication to stream (it must exist: see sql/setup.sql).
    #[arg(long, env = "WALCAST_PUBLICATION", default_value = "walcast")]
    pub publication: String,
    /// Logical replication slot (created when missing; a permanent slot).
    #[arg(long, env = "WALCAST_SLOT", default_value = "walcast", value_parser = parse_slot_name)]
    pub slot: String,
    /// Subject prefix: envelopes go to <prefix>.<schema>.<table>.<key token>.
    #[arg(long, env = "WALCAST_SUBJECT_PREFIX", default_value = "walcast", value_parser = parse_prefix)]
    pub subject_prefix: String,
    /// Address of the /metrics, /healthz and /readyz endpoints (`host:port`).
    #[arg(long, env = "WALCAST_METRICS_ADDR", default_value = "127.0.0.1:8187", value_parser = parse_listen_addr)]
    pub metrics_addr: SocketAddr,
    /// Seconds between standby status updates sent to PostgreSQL.
    #[arg(long, env = "WALCAST_STATUS_INTERVAL", default_value = "1", value_parser = parse_seconds)]
    pub status_interval: Duration,
    /// Seconds to wait for a connection to PostgreSQL or NATS.
    #[arg(long, env = "WALCAST_CONNECT_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub connect_timeout: Duration,
    /// Seconds a shutdown may take in all to drain what NATS has not confirmed; what
    /// is left stays in the slot (exit status 1).
    #[arg(long, env = "WALCAST_SHUTDOWN_TIMEOUT", default_value = "20", value_parser = parse_seconds)]
    pub shutdown_timeout: Duration,
    /// Create the slot again when it is missing or invalidated although walcast
    /// streamed from it before (changes may be lost: every table is snapshotted again).
    #[arg(long, env = "WALCAST_RECREATE_SLOT")]
    pub recreate_slot: bool,
    /// Create the slot with FAILOVER true (or make the existing one so) so that a
    /// standby with sync_replication_slots keeps it, and walcast goes on from the
    /// promoted standby (PostgreSQL 17+; refused on older servers).
    #[arg(long, env = "WALCAST_FAILOVER_SLOT")]
    pub failover_slot: bool,
    /// Ask PostgreSQL to stream transactions larger than its logical_decoding_work_mem
    /// while they are in progress (pgoutput protocol 2 on 14, 3 on 15, 4 on 16+)
    /// instead of spilling them to its disk until they commit; walcast holds them
    /// (--stream-memory, then --stream-spill-dir) and publishes them at commit.
    #[arg(long, env = "WALCAST_STREAM_LARGE_TRANSACTIONS")]
    pub stream_large_transactions: bool,
    /// MiB of streamed, uncommitted changes walcast holds in memory over all open
    /// transactions; beyond, they go to files in --stream-spill-dir.
    #[arg(long, env = "WALCAST_STREAM_MEMORY", default_value_t = 4)]
    pub stream_memory: usize,
    /// Directory of the spill files of streamed transactions (unnamed files, gone when
    /// walcast exits, crashes included); default: $TMPDIR, else /tmp.
    #[arg(long, env = "WALCAST_STREAM_SPILL_DIR")]
    pub stream_spill_dir: Option<std::path::PathBuf>,
    /// Seconds between heartbeats (a logical decoding message walcast writes and
    /// recognises when it comes back: `walcast_heartbeat_age_seconds`); 0: off (a
    /// role without EXECUTE on pg_logical_emit_message).
    #[arg(long, env = "WALCAST_HEARTBEAT_INTERVAL", default_value = "10", value_parser = parse_seconds_or_off)]
    pub heartbeat_interval: Duration,
    /// Seconds between progress lines in the log while changes flow.
    #[arg(long, env = "WALCAST_PROGRESS_INTERVAL", default_value = "10", value_parser = parse_seconds)]
    pub progress_interval: Duration,
    /// Seconds to wait for NATS to confirm published envelopes before publishing again.
    #[arg(long, env = "WALCAST_CONFIRM_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub confirm_timeout: Duration,
    /// Milliseconds a completed transaction may wait for the next ones to travel with it
    /// to NATS, when the previous hand-over was less than four times this ago (a dense
    /// stream of small transactions; sparser ones go at once). One publish burst and one
    /// confirmation then serve several: less CPU for walcast and nats-server, and a
    /// shorter tail (docs/benchmarks.md). 0: hand each over at once.
    #[arg(long, env = "WALCAST_PUBLISH_LINGER", default_value = "1", value_parser = parse_millis)]
    pub publish_linger: Duration,
    /// Envelopes published but not yet confirmed, at most (back-pressure beyond).
    #[arg(long, env = "WALCAST_MAX_INFLIGHT", default_value_t = 10_000)]
    pub max_inflight: usize,
    /// Delivery: `jetstream` (durable per-key state, PubAck-gated), `core` (plain NATS),
    /// or `auto` (JetStream when the server has it).
    #[arg(long, env = "WALCAST_DELIVERY", value_enum, default_value_t = Delivery::Auto)]
    pub delivery: Delivery,
    /// JetStream publishing: `batched` (fast-ingest batches, acknowledged every few
    /// hundred messages, when the server offers them) or `per-message` (one PubAck each).
    #[arg(long, env = "WALCAST_PUBLISH_MODE", value_enum, default_value_t = PublishMode::Batched)]
    pub publish_mode: PublishMode,
    /// JetStream stream holding every key's last envelope (created when missing);
    /// default: the subject prefix in upper case, other characters as `_`
    /// (`walcast` → `WALCAST`).
    #[arg(long, env = "WALCAST_STREAM")]
    pub stream: Option<String>,
    /// Messages the stream keeps per subject (1: each key's last state).
    #[arg(long, env = "WALCAST_STREAM_HISTORY", default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    pub stream_history: i64,
    /// Seconds the stream keeps an envelope (0: for good). A window for catch-up;
    /// column-mode tables only (a tracked table's last envelope is its key's sequence).
    #[arg(long, env = "WALCAST_STREAM_MAX_AGE", default_value = "0", value_parser = parse_seconds_or_off)]
    pub stream_max_age: Duration,
    /// Bytes the stream keeps, the oldest envelopes leaving first (0: no limit).
    /// Column-mode tables only, as `--stream-max-age`.
    #[arg(long, env = "WALCAST_STREAM_MAX_BYTES", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub stream_max_bytes: i64,
    /// Seconds in which JetStream drops a re-published envelope as a duplicate.
    #[arg(long, env = "WALCAST_DUPLICATE_WINDOW", default_value = "120", value_parser = parse_seconds)]
    pub duplicate_window: Duration,
    /// Servers the envelope and meta streams are replicated on when walcast creates
    /// them (a JetStream cluster: 3 survives one server; an existing stream is scaled
    /// to it).
    #[arg(long, env = "WALCAST_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// JetStream cluster the streams are placed in (placement `cluster`).
    #[arg(long, env = "WALCAST_STREAM_CLUSTER")]
    pub stream_cluster: Option<String>,
    /// Server tags the streams are placed on (placement `tags`, comma-separated).
    #[arg(
        long = "stream-tag",
        env = "WALCAST_STREAM_TAGS",
        value_delimiter = ','
    )]
    pub stream_tags: Vec<String>,
    /// Seconds a WAL position waits, once NATS acknowledged everything before it,
    /// before walcast reports it to PostgreSQL as flushed, or `auto`: the servers'
    /// `sync_interval` read from --nats-monitor-url (0 with `sync_interval: always`, 0
    /// when no monitoring URL is given). A NATS host crash that loses acknowledged,
    /// unsynced envelopes then heals: they are published again from the slot (the
    /// cost: that much more WAL kept).
    #[arg(long, env = "WALCAST_FLUSH_DELAY", default_value = "auto", value_parser = |s: &str| s.parse::<FlushDelay>())]
    pub flush_delay: FlushDelay,
    /// A NATS server's monitoring endpoint (`http://host:8222`), where --flush-delay
    /// auto reads the servers' `sync_interval` (`/varz`).
    #[arg(long, env = "WALCAST_NATS_MONITOR_URL")]
    pub nats_monitor_url: Option<String>,
    /// Per-key sequence states kept in memory (misses are loaded from the stream).
    #[arg(long, env = "WALCAST_KEY_CACHE", default_value_t = 100_000)]
    pub key_cache: usize,
    /// Tables whose sequence is a column kept by sql/sequence_column.sql, as
    /// `schema.table=column` (repeatable, or comma-separated in the variable).
    #[arg(long = "column-sequence", env = "WALCAST_COLUMN_SEQUENCE", value_delimiter = ',', value_parser = parse_table_value)]
    pub column_sequences: Vec<(String, String)>,
    /// Column-mode tables whose `delete` envelopes leave the stream after this many
    /// seconds, as `schema.table=seconds` (repeatable; nats-server 2.11+ per-message
    /// TTL). Refused for tracked tables: their last envelope is the key's sequence.
    #[arg(long = "delete-ttl", env = "WALCAST_DELETE_TTL", value_delimiter = ',', value_parser = parse_table_seconds)]
    pub delete_ttls: Vec<(String, Duration)>,
    /// Compress a table's rows (zstd) whose encoding is at least this many bytes, as
    /// `schema.table=bytes` (repeatable); the envelope says so (`compression`).
    #[arg(long = "compress", env = "WALCAST_COMPRESS", value_delimiter = ',', value_parser = parse_table_bytes)]
    pub compress: Vec<(String, usize)>,
    /// Encrypt a table's rows end to end (AES-256-GCM) under the newest key of the
    /// key ring, as `schema.table` (repeatable); key, subject, op and sequence stay
    /// clear (docs/encryption.md).
    #[arg(long = "encrypt", env = "WALCAST_ENCRYPT", value_delimiter = ',', value_parser = parse_table_name)]
    pub encrypt: Vec<String>,
    /// Encrypt only this column of a table, as `schema.table=column` (repeatable): each
    /// chosen column's value is sealed on its own; the rest of the row stays clear.
    #[arg(long = "encrypt-column", env = "WALCAST_ENCRYPT_COLUMN", value_delimiter = ',', value_parser = parse_table_value)]
    pub encrypt_columns: Vec<(String, String)>,
    #[command(flatten)]
    pub keyring: KeyRingArgs,
    /// JetStream's own compression of the stream's files: `none` or `s2` (applies when
    /// walcast creates or updates the stream).
    #[arg(long, env = "WALCAST_STREAM_COMPRESSION", value_enum, default_value_t = StreamCompression::None)]
    pub stream_compression: StreamCompression,
    /// Publish only these columns of a table, as `schema.table=column` (repeatable).
    #[arg(long = "include-column", env = "WALCAST_INCLUDE_COLUMN", value_delimiter = ',', value_parser = parse_table_value)]
    pub include_columns: Vec<(String, String)>,
    /// Never publish these columns of a table, as `schema.table=column` (repeatable).
    #[arg(long = "exclude-column", env = "WALCAST_EXCLUDE_COLUMN", value_delimiter = ',', value_parser = parse_table_value)]
    pub exclude_columns: Vec<(String, String)>,
    /// Publish only these ops of a table, as `schema.table=insert+update` (ops:
    /// insert, update, delete, truncate); filtered changes get no sequence.
    #[arg(long = "ops", env = "WALCAST_OPS", value_delimiter = ',', value_parser = parse_table_ops)]
    pub ops: Vec<(String, Vec<Op>)>,
    /// Without JetStream, let walcast assign sequences from memory: they restart at 1
    /// on every start, so consumers cannot trust them across restarts.
    #[arg(long, env = "WALCAST_VOLATILE_SEQUENCES")]
    pub volatile_sequences: bool,
    /// Existing rows: `initial` (published as `snapshot` envelopes when the slot is new,
    /// while streaming), `never`, or `only` (snapshot, then exit).
    #[arg(long, env = "WALCAST_SNAPSHOT", value_enum, default_value_t = SnapshotMode::Initial)]
    pub snapshot: SnapshotMode,
    /// Rows read per snapshot chunk (memory is bounded by one chunk).
    #[arg(long, env = "WALCAST_SNAPSHOT_CHUNK_ROWS", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshot_chunk_rows: u32,
    /// An envelope above NATS's max_payload: `fail` (stop, naming the key) or `marker`
    /// (publish `{"$walcast_too_large": <bytes>}` as its value).
    #[arg(long, env = "WALCAST_OVERSIZE", value_enum, default_value_t = Oversize::Fail)]
    pub oversize: Oversize,
    /// Bytes kept for unchanged-TOAST columns of tables without REPLICA IDENTITY FULL.
    #[arg(long, env = "WALCAST_TOAST_CACHE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub toast_cache_bytes: usize,
}

/// JetStream's compression of the stream's files (`--stream-compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamCompression {
    None,
    S2,
}

/// How to reach NATS: the URL(s) and what authenticates beyond them.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated for a cluster; `nats://user:pw@host`,
    /// `nats://token@host`, `tls://host` (TLS required).
    #[arg(
        long = "nats-url",
        env = "WALCAST_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(long = "nats-creds", env = "WALCAST_NATS_CREDS")]
    pub creds: Option<std::path::PathBuf>,
    /// A file holding a NATS user NKey seed.
    #[arg(long = "nats-nkey-seed", env = "WALCAST_NATS_NKEY_SEED")]
    pub nkey_seed: Option<std::path::PathBuf>,
    /// CA certificate(s) (PEM) the NATS server's certificate must chain to.
    #[arg(long = "nats-tls-ca", env = "WALCAST_NATS_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    #[arg(long = "nats-tls-cert", env = "WALCAST_NATS_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long = "nats-tls-key", env = "WALCAST_NATS_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Refuse to talk to NATS without TLS.
    #[arg(long = "nats-tls-required", env = "WALCAST_NATS_TLS_REQUIRED")]
    pub tls_required: bool,
}

impl NatsArgs {
    /// What authenticates beyond the URL.
    pub fn auth(&self) -> crate::client::NatsAuth {
        crate::client::NatsAuth {
            creds_file: self.creds.clone(),
            nkey_seed_file: self.nkey_seed.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_required: self.tls_required,
        }
    }
}

/// Settings of `walcast tail`.
#[derive(Debug, Clone, Args)]
pub struct TailConfig {
    /// Subject pattern, e.g. 'walcast.public.users.>' or 'walcast.>'.
    #[arg(value_parser = parse_subject_pattern)]
    pub pattern: String,
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Print one JSON object per line instead of a human-readable line.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many envelopes.
    #[arg(long)]
    pub count: Option<u64>,
    /// Print what the stream holds (the last envelope of each matching subject, read
    /// from JetStream) and exit, instead of following new envelopes.
    #[arg(long)]
    pub stored: bool,
    /// The encryption key ring, to show encrypted tables' rows (as `run` takes it).
    #[command(flatten)]
    pub keyring: KeyRingArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "walcast",
            "run",
            "--postgres-url",
            "postgres://u@h/db",
            "--slot",
            "s1",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.slot, "s1");
        assert_eq!(run.publication, "walcast");
    }
}

//! The source stage: reading PostgreSQL's logical replication stream.
//!
//! Where and as whom to connect:
//! - [`params`]: [`ConnectParams`], read once from a connection string;
//! - [`connection_string`]: the libpq URL and key/value forms, keyword by keyword;
//! - [`password`]: where the password comes from (string, `PGPASSWORD`, `.pgpass`,
//!   `--postgres-password-file`);
//! - [`tls`]: `sslmode` and the rustls configuration it makes.
//!
//! The replication connection, spoken over the wire protocol:
//! - [`conn`]: [`ReplicationConnection`], from a socket to ready-for-query (startup);
//! - [`socket`]: TCP or Unix socket, SSLRequest and the TLS handshake;
//! - [`auth`]: the authentication exchange (cleartext, MD5, SCRAM-SHA-256, channel
//!   binding);
//! - [`frames`]: framing and socket I/O (zero-copy frames, read pacing);
//! - [`commands`]: simple queries and the replication commands;
//! - [`stream`]: the CopyBoth stream of XLogData and keepalives, status updates back;
//! - [`slot`]: the slot: created when missing, validated, where streaming starts.
//!
//! Ordinary SQL over `tokio-postgres`:
//! - [`catalog`]: the [`Catalog`](catalog::Catalog) connection; key columns, types,
//!   slots, rows;
//! - [`preflight`]: what must hold before streaming (server, role, publication, tables);
//! - [`chunks`]: a table read in key-ordered chunks (snapshots);
//! - [`monitor`]: the slot's health as metrics, and the heartbeat.
//!
//! And [`error`] ([`SourceError`]), [`settings`] (what the stage is configured with).

mod auth;
pub mod catalog;
pub mod chunks;
mod commands;
pub mod conn;
mod connection_string;
mod error;
mod frames;
pub mod monitor;
pub mod params;
mod password;
mod preflight;
mod settings;
pub mod slot;
mod socket;
pub mod stream;
pub mod tls;
pub mod visibility;

pub use conn::ReplicationConnection;
pub use error::SourceError;
pub use params::ConnectParams;
pub use settings::SourceSettings;
pub use stream::{ReplicationEvent, ReplicationStream};

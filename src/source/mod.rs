//! The source stage: reading PostgreSQL's logical replication stream.
//!
//! - [`params`]: where and as whom to connect (libpq URL or key/value string);
//! - [`conn`]: the replication connection spoken over the wire protocol (startup,
//!   authentication, framing, replication commands);
//! - [`stream`]: the CopyBoth stream of XLogData and keepalives, status updates back;
//! - [`slot`]: the slot: created when missing, validated, where streaming starts;
//! - [`catalog`]: ordinary SQL questions over `tokio-postgres` (preflight, key columns,
//!   types, slots, rows);
//! - [`monitor`]: the slot's health as metrics, and the heartbeat;
//! - [`settings`]: what the stage is configured with.

pub mod catalog;
pub mod chunks;
pub mod conn;
mod error;
pub mod monitor;
pub mod params;
mod settings;
pub mod slot;
pub mod stream;
pub mod tls;

pub use conn::ReplicationConnection;
pub use error::SourceError;
pub use params::ConnectParams;
pub use settings::SourceSettings;
pub use stream::{ReplicationEvent, ReplicationStream};
